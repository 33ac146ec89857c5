//! The local hub: channel -> this node's subscribers, and the fan-out.
//!
//! A publication is encoded at most once per channel and per protocol (the
//! JSON push, the raw relay frame), lazily, and the resulting `Bytes` are
//! shared by every subscriber ([`PreparedPush`]). Fan-out holds the channel's
//! lock, so all local subscribers see a channel's messages in the same order,
//! and goes to them in the order they subscribed (a removal moves the last
//! one into its place): in a hash order a 1,000-socket fan-out reached its
//! median client about 1 ms later (`docs/benchmarks.md`, Socket.IO).
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
//! When the broker reports publications it lost and cannot read back
//! ([`BrokerHandler::on_insufficient_state`]), a buffering subscription
//! must restart its recovery, and a live one that will recover is *held*:
//! it is handed nothing more of the channel, so no publication after the
//! hole reaches the client before it is told to resubscribe (its position
//! would move past the hole, and recovering from there would skip what was
//! lost). A held subscription ends with its removal.
//!
//! # Joins and leaves at scale
//! Every join is pushed to every subscriber: a channel that N clients
//! join costs N² pushes. Two limits per namespace ([`JoinLeaveLimits`],
//! set through [`Hub::set_join_leave_limits`]) bound that on each node:
//! * **Coalescing.** While a channel has at least `coalesce_from` local
//!   subscribers, its joins and leaves are gathered for `coalesce` and go
//!   to every subscriber as one frame ([`JoinLeaveBatch`], encoded once).
//!   Each subscriber still gets every join and leave, in order: a
//!   publication of the channel sends what was gathered first, and a
//!   subscriber added during the gathering gets the frame from the events
//!   that came after it was added, as it would have live. At most
//!   [`MAX_COALESCED`] events wait: then they go at once. The delay is a
//!   tokio timer; outside a runtime they go at once.
//! * **Ceiling.** When a channel gets more than `max_subscribers` local
//!   subscribers, what was gathered goes out, and from then on its joins
//!   and leaves are counted in `groupcast_join_leave_suppressed_total`
//!   and not pushed, until it is back to `max_subscribers / 2` (not at
//!   the ceiling, so a channel at the ceiling does not flap). The
//!   channels above it are the gauge
//!   `groupcast_join_leave_suppressed_channels`. Presence is not the
//!   hub's: queries answer as before.
//!
//! Below `coalesce_from` (the default limits: always) each join and leave
//! is fanned out at once, as a publication is.
//!
//! # Layout
//! * this file: [`Hub`], its channels and subscribers, the fan-out;
//! * `push`: [`PreparedPush`], one message encoded at most once per
//!   encoding (JSON, protobuf, relay frame) and per delta form.

use std::collections::HashMap;

use indexmap::IndexMap;
use std::sync::{Arc, OnceLock};

use groupcast_proto::client::{ClientInfo, RawJson};
use parking_lot::{Mutex, RwLock};

use crate::broker::BrokerHandler;
use crate::namespace::JoinLeaveLimits;
use crate::publication::Publication;

mod push;

use push::{JoinLeaveBatch, PushKind};
pub use push::{PreparedPush, PushType, SioPub, TAG_SIO_EVENT};

/// Live pushes held per subscription while it recovers (`recovery_buffer_max`).
pub const MAX_RECOVERY_BUFFER: usize = 10_000;

/// Joins and leaves of a channel gathered at most before they go out
/// (`join_leave_coalesce_max`): one frame holds at most this many.
pub const MAX_COALESCED: usize = 256;

/// A channel's join/leave limits, from its name ([`Hub::set_join_leave_limits`]).
pub type JoinLeaveLimitsFn = Arc<dyn Fn(&str) -> JoinLeaveLimits + Send + Sync>;

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
    ///
    /// Returns whether the subscription stops here: the hub then hands it
    /// nothing more of the channel (a publication after the hole would move
    /// the client's position past it, and its recovery would skip the lost
    /// ones) until it is removed or [`Hub::resume`]d. A subscriber that goes
    /// on at most once (raw relay) returns false and stays live.
    fn insufficient_state(&self, channel: &str) -> bool;
}
enum Phase {
    Live {
        last_offset: u64,
    },
    Buffering {
        items: Vec<Arc<PreparedPush>>,
        overflow: bool,
    },
    /// Told "insufficient state" and stopped: gets nothing until removed
    /// (or [`Hub::resume`]d).
    Held,
}

struct Entry {
    sub: Arc<dyn Subscriber>,
    phase: Phase,
    /// Delta compression negotiated for this subscription.
    delta: bool,
    /// It received a publication live (its base for the next delta).
    delta_ready: bool,
    /// The channel's join/leave count when it was added: it gets the
    /// gathered ones from this one on ([`JoinLeave::seq`]).
    joins_from: u64,
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
            Phase::Held => {}
        }
    }
}

/// One channel's joins and leaves (see the module doc).
#[derive(Default)]
struct JoinLeave {
    limits: JoinLeaveLimits,
    /// Joins and leaves this channel has had on this node.
    seq: u64,
    /// Gathered, not yet sent; the first is number `seq - pending.len()`.
    pending: Vec<PushKind>,
    /// A timer will send `pending`.
    timer: bool,
    /// Above the ceiling: none are pushed.
    off: bool,
}

/// One channel's local subscriptions and its delta state.
#[derive(Default)]
struct ChannelState {
    /// The channel's name.
    name: Arc<str>,
    /// In the order they were added (a removal moves the last one into its
    /// place): the fan-out serves the longest-standing subscribers first.
    subs: IndexMap<u64, Entry>,
    joins: JoinLeave,
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
    /// Join/leave limits by channel; unset: [`JoinLeaveLimits::default`].
    limits: OnceLock<JoinLeaveLimitsFn>,
}

impl ChannelState {
    /// Send the gathered joins and leaves: one frame, shared, to every
    /// subscriber (from the first it had not been added for).
    fn flush_joins(&mut self) {
        if self.joins.pending.is_empty() {
            return;
        }
        let events = std::mem::take(&mut self.joins.pending);
        let first = self.joins.seq - events.len() as u64;
        let n = events.len();
        let batch = Arc::new(JoinLeaveBatch::new(events));
        let mut tails: HashMap<usize, Arc<PreparedPush>> = HashMap::new();
        for entry in self.subs.values_mut() {
            let skip = entry.joins_from.saturating_sub(first) as usize;
            if skip >= n {
                continue;
            }
            let push = tails.entry(skip).or_insert_with(|| {
                Arc::new(PreparedPush::new(
                    &self.name,
                    PushKind::Batch {
                        batch: batch.clone(),
                        skip,
                    },
                ))
            });
            entry.deliver(push);
        }
        metrics::counter!("groupcast_join_leave_frames_total").increment(1);
    }
}

impl Hub {
    /// Where the hub finds each channel's join/leave limits (set once,
    /// by the edge, before serving; read when a channel gets its first
    /// local subscriber).
    pub fn set_join_leave_limits(&self, limits: JoinLeaveLimitsFn) {
        let _ = self.limits.set(limits);
    }

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
        let ch = map
            .entry(channel.to_string())
            .or_insert_with(|| {
                let mut state = ChannelState {
                    name: Arc::from(channel),
                    ..ChannelState::default()
                };
                if let Some(limits) = self.limits.get() {
                    state.joins.limits = limits(channel);
                }
                Arc::new(Mutex::new(state))
            })
            .clone();
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
        let joins_from = ch.joins.seq;
        ch.subs.insert(
            id,
            Entry {
                sub,
                phase,
                delta,
                delta_ready: false,
                joins_from,
            },
        );
        if !ch.joins.off && ch.subs.len() > ch.joins.limits.max_subscribers {
            // What was gathered below the ceiling still goes out.
            ch.flush_joins();
            ch.joins.off = true;
            metrics::gauge!("groupcast_join_leave_suppressed_channels").increment(1.0);
        }
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
            Phase::Live { .. } | Phase::Held => Vec::new(),
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
        let Some(gone) = ch.subs.swap_remove(&id) else {
            return RemoveOutcome::NotSubscribed;
        };
        if gone.delta {
            ch.delta_subs -= 1;
            if ch.delta_subs == 0 {
                // No delta subscription left: no base to keep.
                ch.base = None;
            }
        }
        if ch.joins.off && ch.subs.len() <= ch.joins.limits.max_subscribers / 2 {
            ch.joins.off = false;
            metrics::gauge!("groupcast_join_leave_suppressed_channels").decrement(1.0);
        }
        if ch.subs.is_empty() {
            map.remove(channel);
            RemoveOutcome::Last
        } else {
            RemoveOutcome::Removed
        }
    }

    /// A subscription held after "insufficient state"
    /// ([`Subscriber::insufficient_state`]) that goes on without recovering
    /// (it accepts the loss) is live again from the next push; false when
    /// `id` is not held on `channel`.
    pub fn resume(&self, channel: &str, id: u64) -> bool {
        let Some(ch) = self.get(channel) else {
            return false;
        };
        let mut ch = ch.lock();
        match ch.subs.get_mut(&id) {
            Some(entry) if matches!(entry.phase, Phase::Held) => {
                entry.phase = Phase::Live { last_offset: 0 };
                true
            }
            _ => false,
        }
    }

    /// Deliver one push to every local subscriber of its channel.
    /// Returns the number of subscribers it was handed to.
    pub fn fan_out(&self, mut push: PreparedPush) -> usize {
        let Some(ch) = self.get(&push.channel) else {
            return 0;
        };
        let mut ch = ch.lock();
        // Whatever was gathered came first.
        ch.flush_joins();
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

    /// A join or leave: at once, gathered, or not at all (module doc).
    fn join_or_leave(&self, channel: &str, kind: PushKind) {
        let Some(ch) = self.get(channel) else {
            return;
        };
        let mut st = ch.lock();
        if st.joins.off {
            metrics::counter!("groupcast_join_leave_suppressed_total").increment(1);
            return;
        }
        let limits = st.joins.limits;
        st.joins.seq += 1;
        let gather = !limits.coalesce.is_zero()
            && (st.subs.len() >= limits.coalesce_from || !st.joins.pending.is_empty());
        if !gather {
            let push = Arc::new(PreparedPush::new(channel, kind));
            for entry in st.subs.values_mut() {
                entry.deliver(&push);
            }
            return;
        }
        st.joins.pending.push(kind);
        if st.joins.pending.len() >= MAX_COALESCED {
            st.flush_joins();
        } else if !st.joins.timer {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    st.joins.timer = true;
                    let ch = ch.clone();
                    rt.spawn(async move {
                        tokio::time::sleep(limits.coalesce).await;
                        let mut st = ch.lock();
                        st.joins.timer = false;
                        st.flush_joins();
                    });
                }
                Err(_) => st.flush_joins(),
            }
        }
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
        self.join_or_leave(channel, PushKind::Join(info));
    }
    fn on_leave(&self, channel: &str, info: Arc<ClientInfo>) {
        self.join_or_leave(channel, PushKind::Leave(info));
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
                Phase::Live { .. } => {
                    if entry.sub.insufficient_state(channel) {
                        entry.phase = Phase::Held;
                    }
                }
                Phase::Held => {}
            }
        }
    }
}

#[cfg(test)]
mod tests;
