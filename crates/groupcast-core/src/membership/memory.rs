//! In-memory presence for a single node (`groupcast dev`, unit tests).

use std::collections::{BTreeMap, HashMap, HashSet};

use async_trait::async_trait;
use groupcast_proto::client::ClientInfo;
use parking_lot::Mutex;

use super::{Membership, MembershipError, PresenceStats};

/// Default maximum presence entries per channel (`presence_max_clients`).
pub const DEFAULT_MAX_PER_CHANNEL: usize = 100_000;

pub struct MemoryMembership {
    channels: Mutex<HashMap<String, BTreeMap<String, ClientInfo>>>,
    max_per_channel: usize,
}

impl Default for MemoryMembership {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_PER_CHANNEL)
    }
}

impl MemoryMembership {
    pub fn new(max_per_channel: usize) -> Self {
        MemoryMembership {
            channels: Mutex::new(HashMap::new()),
            max_per_channel,
        }
    }
}

#[async_trait]
impl Membership for MemoryMembership {
    async fn add_presence(&self, channel: &str, info: ClientInfo) -> Result<(), MembershipError> {
        let mut map = self.channels.lock();
        let entries = map.entry(channel.to_string()).or_default();
        if entries.len() >= self.max_per_channel && !entries.contains_key(&info.client) {
            return Err(MembershipError::LimitExceeded("presence_max_clients"));
        }
        entries.insert(info.client.clone(), info);
        Ok(())
    }

    async fn remove_presence(&self, channel: &str, client: &str) -> Result<(), MembershipError> {
        let mut map = self.channels.lock();
        if let Some(entries) = map.get_mut(channel) {
            entries.remove(client);
            if entries.is_empty() {
                map.remove(channel);
            }
        }
        Ok(())
    }

    async fn presence(
        &self,
        channel: &str,
    ) -> Result<BTreeMap<String, ClientInfo>, MembershipError> {
        Ok(self
            .channels
            .lock()
            .get(channel)
            .cloned()
            .unwrap_or_default())
    }

    async fn presence_stats(&self, channel: &str) -> Result<PresenceStats, MembershipError> {
        let map = self.channels.lock();
        let Some(entries) = map.get(channel) else {
            return Ok(PresenceStats::default());
        };
        let users: HashSet<&str> = entries.values().map(|i| i.user.as_str()).collect();
        Ok(PresenceStats {
            num_clients: entries.len() as u32,
            num_users: users.len() as u32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(user: &str, client: &str) -> ClientInfo {
        ClientInfo {
            user: user.into(),
            client: client.into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn add_remove_and_stats() {
        let m = MemoryMembership::new(3);
        m.add_presence("c", info("u1", "a")).await.unwrap();
        m.add_presence("c", info("u1", "b")).await.unwrap();
        m.add_presence("c", info("u2", "d")).await.unwrap();
        assert_eq!(
            m.presence_stats("c").await.unwrap(),
            PresenceStats {
                num_clients: 3,
                num_users: 2
            }
        );
        assert_eq!(
            m.add_presence("c", info("u3", "e")).await,
            Err(MembershipError::LimitExceeded("presence_max_clients"))
        );
        m.add_presence("c", info("u1", "a")).await.unwrap();
        m.remove_presence("c", "b").await.unwrap();
        let p = m.presence("c").await.unwrap();
        assert_eq!(p.keys().cloned().collect::<Vec<_>>(), ["a", "d"]);
        m.remove_presence("c", "a").await.unwrap();
        m.remove_presence("c", "d").await.unwrap();
        assert!(m.channels.lock().is_empty(), "empty channels are forgotten");
    }
}
