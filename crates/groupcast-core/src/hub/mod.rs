//! The local hub: channel -> this node's subscribers, and the fan-out.
//!
//! A publication is encoded at most once per channel and per protocol (the
//! JSON push, the raw relay frame), lazily, and the resulting `Bytes` are
//! shared by every subscriber ([`PreparedPush`]). Fan-out holds the channel's
//! lock, so all local subscribers see a channel's messages in the same order.
//!
//! # Delta compression
//! A subscription that negotiated delta compression (`delta: "fossil"`)
//! gets each publication as a Fossil delta against the previous one of the
//! channel when it received that previous one live in this subscription;
//! else (its first live publication, after a gap) in full. The hub keeps
//! the data of each channel's latest publication as the base of the next
//! one's delta, computed once per publication for all such subscribers.
//! Over JSON such a subscription's data is always a JSON string: the JSON
//! text, or (`delta: true`) the delta.
//!
//! # Recovery merge (invariant 2)
//! A subscription that must start at a stream position is added in the
//! *buffering* phase: live pushes are kept aside while the session reads
//! history. [`Hub::finish_buffering`] then, under the channel lock, lets the
//! session enqueue its subscribe reply (with the recovered publications),
//! delivers the buffered pushes whose offset is past the position it
//! reported, and switches to *live*. In the live phase any push with an
//! offset at or below the last delivered one is dropped, so a publication is
//! never delivered twice. The buffer is bounded by
//! [`MAX_RECOVERY_BUFFER`]; on overflow the subscription must be restarted.
//!
//! # Layout
//! * this file: [`Hub`], its channels and subscribers, the fan-out;
//! * `push`: [`PreparedPush`], one message encoded at most once per
//!   encoding (JSON, protobuf, relay frame) and per delta form.

use std::collections::HashMap;
use std::sync::Arc;

use groupcast_proto::client::{ClientInfo, RawJson};
use parking_lot::{Mutex, RwLock};

use crate::broker::BrokerHandler;
use crate::publication::Publication;

mod push;

use push::PushKind;
pub use push::{PreparedPush, PushType, SioPub, TAG_SIO_EVENT};

/// Live pushes held per subscription while it recovers (`recovery_buffer_max`).
pub const MAX_RECOVERY_BUFFER: usize = 10_000;

/// Which wire format a subscriber wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriberKind {
    /// Centrifugo client protocol (JSON pushes, join/leave).
    Protocol,
    /// Raw relay: the publication's data as one frame; no join/leave.
    Relay,
    /// Socket.IO: publications as events ([`SioPub`]); no join/leave.
    SocketIo,
}

/// A local connection subscribed to channels. Implemented by edge sessions.
pub trait Subscriber: Send + Sync + 'static {
    /// Connection id, unique on this node.
    fn id(&self) -> u64;
    /// Client id (as in the protocol), for publications that leave one
    /// client out; "" when the subscriber has none.
    fn client(&self) -> &str {
        ""
    }
    fn kind(&self) -> SubscriberKind;
    /// Enqueue a push. Must not block; a connection that cannot take it
    /// closes itself (slow consumer) rather than stall the fan-out.
    fn push(&self, push: &PreparedPush);
    /// Enqueue a publication for a subscription with delta compression:
    /// as a delta against the previous one (`delta`), or in full. A
    /// subscriber without delta support takes it as [`Subscriber::push`].
    fn push_delta(&self, push: &PreparedPush, delta: bool) {
        let _ = delta;
        self.push(push);
    }
    /// The broker lost publications of `channel` it cannot read back: the
    /// subscriber should be unsubscribed with "insufficient state" so that
    /// it resubscribes and recovers. Must not block.
    fn insufficient_state(&self, channel: &str);
}
enum Phase {
    Live {
        last_offset: u64,
    },
    Buffering {
        items: Vec<Arc<PreparedPush>>,
        overflow: bool,
    },
}

struct Entry {
    sub: Arc<dyn Subscriber>,
    phase: Phase,
    /// Delta compression negotiated for this subscription.
    delta: bool,
    /// It received a publication live (its base for the next delta).
    delta_ready: bool,
}

impl Entry {
    fn deliver(&mut self, push: &Arc<PreparedPush>) {
        if push.origin() == Some(self.sub.id()) {
            return;
        }
        if push
            .exclude_client()
            .is_some_and(|c| !c.is_empty() && c == self.sub.client())
        {
            return;
        }
        // Checked without `relay()`, which would encode the relay frame even
        // when no relay connection is subscribed.
        if self.sub.kind() == SubscriberKind::Relay && !push.is_pub() {
            return;
        }
        match &mut self.phase {
            Phase::Live { last_offset } => {
                let off = push.offset();
                let previous = *last_offset;
                if off > 0 {
                    if off <= *last_offset {
                        return;
                    }
                    *last_offset = off;
                }
                if self.delta && push.is_pub() {
                    // A delta only against what this subscription has.
                    let delta = self.delta_ready && push.base_offset() == Some(previous);
                    self.delta_ready = true;
                    self.sub.push_delta(push, delta);
                } else {
                    self.sub.push(push);
                }
            }
            Phase::Buffering { items, overflow } => {
                if items.len() >= MAX_RECOVERY_BUFFER {
                    *overflow = true;
                    items.clear();
                } else if !*overflow {
                    items.push(push.clone());
                }
            }
        }
    }
}

/// One channel's local subscriptions and its delta state.
#[derive(Default)]
struct ChannelState {
    subs: HashMap<u64, Entry>,
    /// Subscriptions that negotiated delta compression.
    delta_subs: usize,
    /// The latest publication (offset, data; no data when binary): the
    /// next one's delta base, kept only while `delta_subs > 0`.
    base: Option<(u64, Option<RawJson>)>,
}

type Channel = Arc<Mutex<ChannelState>>;

/// Outcome of [`Hub::add`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddOutcome {
    /// First local subscriber: the node must subscribe on the broker.
    First,
    Added,
    AlreadySubscribed,
}

/// Outcome of [`Hub::remove`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoveOutcome {
    /// It was the last local subscriber: the node must unsubscribe on the broker.
    Last,
    Removed,
    NotSubscribed,
}

/// The recovery buffer overflowed; the subscription was removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferOverflow;

#[derive(Default)]
pub struct Hub {
    channels: RwLock<HashMap<String, Channel>>,
}

impl Hub {
    fn get(&self, channel: &str) -> Option<Channel> {
        self.channels.read().get(channel).cloned()
    }

    /// Add a subscriber; `buffering` starts it in the recovery phase.
    pub fn add(&self, channel: &str, sub: Arc<dyn Subscriber>, buffering: bool) -> AddOutcome {
        self.add_with_delta(channel, sub, buffering, false)
    }

    /// [`Hub::add`]; `delta`: the subscription negotiated delta compression.
    pub fn add_with_delta(
        &self,
        channel: &str,
        sub: Arc<dyn Subscriber>,
        buffering: bool,
        delta: bool,
    ) -> AddOutcome {
        let mut map = self.channels.write();
        let first = !map.contains_key(channel);
        let ch = map.entry(channel.to_string()).or_default().clone();
        let mut ch = ch.lock();
        let id = sub.id();
        if ch.subs.contains_key(&id) {
            return AddOutcome::AlreadySubscribed;
        }
        let phase = if buffering {
            Phase::Buffering {
                items: Vec::new(),
                overflow: false,
            }
        } else {
            Phase::Live { last_offset: 0 }
        };
        ch.delta_subs += usize::from(delta);
        ch.subs.insert(
            id,
            Entry {
                sub,
                phase,
                delta,
                delta_ready: false,
            },
        );
        if first {
            AddOutcome::First
        } else {
            AddOutcome::Added
        }
    }

    /// End the buffering phase of `id` on `channel` (see the module doc).
    ///
    /// Under the channel lock: runs `before` (the session enqueues its
    /// subscribe reply there), delivers buffered pushes with offsets past
    /// `position`, and switches to live. On overflow nothing is delivered,
    /// `before` is not run, and the caller must remove and restart the sub.
    pub fn finish_buffering(
        &self,
        channel: &str,
        id: u64,
        position: u64,
        before: impl FnOnce(),
    ) -> Result<(), BufferOverflow> {
        let Some(ch) = self.get(channel) else {
            return Err(BufferOverflow);
        };
        let mut ch = ch.lock();
        let Some(entry) = ch.subs.get_mut(&id) else {
            return Err(BufferOverflow);
        };
        let items = match std::mem::replace(
            &mut entry.phase,
            Phase::Live {
                last_offset: position,
            },
        ) {
            Phase::Buffering { overflow: true, .. } => return Err(BufferOverflow),
            Phase::Buffering { items, .. } => items,
            Phase::Live { .. } => Vec::new(),
        };
        before();
        for push in &items {
            entry.deliver(push);
        }
        Ok(())
    }

    /// Remove a subscriber; [`RemoveOutcome::Last`] when the channel has
    /// no local subscribers left (the node should unsubscribe on the broker).
    pub fn remove(&self, channel: &str, id: u64) -> RemoveOutcome {
        let mut map = self.channels.write();
        let Some(ch) = map.get(channel).cloned() else {
            return RemoveOutcome::NotSubscribed;
        };
        let mut ch = ch.lock();
        let Some(gone) = ch.subs.remove(&id) else {
            return RemoveOutcome::NotSubscribed;
        };
        if gone.delta {
            ch.delta_subs -= 1;
            if ch.delta_subs == 0 {
                // No delta subscription left: no base to keep.
                ch.base = None;
            }
        }
        if ch.subs.is_empty() {
            map.remove(channel);
            RemoveOutcome::Last
        } else {
            RemoveOutcome::Removed
        }
    }

    /// Deliver one push to every local subscriber of its channel.
    /// Returns the number of subscribers it was handed to.
    pub fn fan_out(&self, mut push: PreparedPush) -> usize {
        let Some(ch) = self.get(&push.channel) else {
            return 0;
        };
        let mut ch = ch.lock();
        // Under the channel lock: publications of a channel take their base
        // in the order they are delivered. Only channels with a delta
        // subscription keep their latest data (the next delta's base):
        // others hold no payload beyond delivery.
        if ch.delta_subs > 0 {
            if let Some(p) = push.publication().filter(|p| p.offset > 0) {
                // Binary data is no delta base (see `delta_bytes`).
                let data = match p.data {
                    crate::Payload::Binary(_) => None,
                    _ => Some(p.data.to_json()),
                };
                push.base = ch.base.replace((p.offset, data));
            }
        }
        let push = Arc::new(push);
        let n = ch.subs.len();
        for entry in ch.subs.values_mut() {
            entry.deliver(&push);
        }
        n
    }

    pub fn num_channels(&self) -> usize {
        self.channels.read().len()
    }

    /// Every channel with local subscribers and their count.
    pub fn channels(&self) -> Vec<(String, usize)> {
        let map = self.channels.read();
        map.iter()
            .map(|(k, v)| (k.clone(), v.lock().subs.len()))
            .collect()
    }
}

impl BrokerHandler for Hub {
    fn on_publication(&self, channel: &str, publication: Arc<Publication>) {
        let age = publication.age_seconds();
        let handed = self.fan_out(PreparedPush::new(channel, PushKind::Pub(publication)));
        // Once per publication per node with subscribers: from accepted
        // (API or client publish, any node) to handed to the local
        // subscribers' queues, the backbone included.
        if let (Some(age), true) = (age, handed > 0) {
            metrics::histogram!("groupcast_delivery_latency_seconds").record(age);
        }
    }
    fn on_join(&self, channel: &str, info: Arc<ClientInfo>) {
        self.fan_out(PreparedPush::new(channel, PushKind::Join(info)));
    }
    fn on_leave(&self, channel: &str, info: Arc<ClientInfo>) {
        self.fan_out(PreparedPush::new(channel, PushKind::Leave(info)));
    }
    fn on_insufficient_state(&self, channel: &str) {
        let Some(ch) = self.get(channel) else {
            return;
        };
        let mut ch = ch.lock();
        for entry in ch.subs.values_mut() {
            match &mut entry.phase {
                // Its history read may have missed the lost ones: restart it.
                Phase::Buffering { overflow, items } => {
                    *overflow = true;
                    items.clear();
                }
                Phase::Live { .. } => entry.sub.insufficient_state(channel),
            }
        }
    }
}

#[cfg(test)]
mod tests;
