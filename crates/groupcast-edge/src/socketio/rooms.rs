//! Socket.IO namespaces and their rooms as Groupcast channels: room `R` of namespace `N` is the
//! channel `<channel_prefix of N>R`, and a channel belongs to the namespace with the longest
//! matching prefix (docs/socketio.md, The mapping).

use crate::config::socketio::MAX_NAMESPACES;
use crate::config::{SioNamespaceConfig, SocketIoConfig};

/// A configured namespace.
pub(crate) struct Ns {
    pub index: u32,
    pub config: SioNamespaceConfig,
}

/// The namespaces, and the mapping between their rooms and channels.
pub(crate) struct NsMap {
    list: Vec<Ns>,
    /// Indices by prefix length, longest first.
    by_prefix: Vec<usize>,
}

impl NsMap {
    pub fn new(cfg: &SocketIoConfig) -> NsMap {
        let list: Vec<Ns> = cfg
            .namespaces
            .iter()
            .take(MAX_NAMESPACES)
            .enumerate()
            .map(|(i, c)| Ns {
                index: i as u32,
                config: c.clone(),
            })
            .collect();
        let mut by_prefix: Vec<usize> = (0..list.len()).collect();
        by_prefix.sort_by_key(|i| std::cmp::Reverse(list[*i].config.channel_prefix.len()));
        NsMap { list, by_prefix }
    }

    /// The namespace at `index` (its place in `[[socketio.namespaces]]`).
    pub fn at(&self, index: u32) -> &Ns {
        &self.list[index as usize]
    }

    pub fn by_name(&self, nsp: &str) -> Option<&Ns> {
        self.list.iter().find(|n| n.config.name == nsp)
    }

    /// The namespace whose rooms a channel is (the longest matching prefix).
    pub fn of_channel(&self, channel: &str) -> Option<&Ns> {
        self.by_prefix
            .iter()
            .map(|i| &self.list[*i])
            .find(|n| channel.starts_with(n.config.channel_prefix.as_str()))
    }

    /// The channel of room `room` of `ns`; `None` when that channel would be another
    /// namespace's (a room of `/`, prefix `""`, named `chat:x` while `/chat` has `chat:`).
    pub fn room_channel(&self, ns: &Ns, room: &str) -> Option<String> {
        let channel = format!("{}{room}", ns.config.channel_prefix);
        (!room.is_empty() && self.of_channel(&channel).map(|n| n.index) == Some(ns.index))
            .then_some(channel)
    }
}
