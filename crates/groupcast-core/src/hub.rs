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

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use groupcast_proto::client::{
    encode_join_push, encode_leave_push, encode_pub_push, ClientInfo, PubView, RawJson,
};
use parking_lot::{Mutex, RwLock};

use crate::broker::BrokerHandler;
use crate::publication::{json_string, Publication, TAG_ENCODING};

/// Live pushes held per subscription while it recovers (`recovery_buffer_max`).
pub const MAX_RECOVERY_BUFFER: usize = 10_000;

/// Which wire format a subscriber wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriberKind {
    /// Centrifugo client protocol (JSON pushes, join/leave).
    Protocol,
    /// Raw relay: the publication's data as one frame; no join/leave.
    Relay,
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

/// What a [`PreparedPush`] carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushType {
    Pub,
    Join,
    Leave,
}

enum PushKind {
    Pub(Arc<Publication>),
    Join(Arc<ClientInfo>),
    Leave(Arc<ClientInfo>),
}

/// One message for a channel, encoded lazily and shared by all subscribers.
pub struct PreparedPush {
    channel: Arc<str>,
    kind: PushKind,
    json: OnceLock<Bytes>,
    protobuf: OnceLock<Bytes>,
    relay: OnceLock<(Bytes, bool)>,
    /// The previous publication of the channel (offset, data; no data when
    /// it was binary): the base of this one's delta.
    base: Option<(u64, Option<RawJson>)>,
    /// For delta subscriptions: the full data as a JSON string (JSON).
    json_full_string: OnceLock<Bytes>,
    /// The Fossil delta against `base`: `None` when there is no base, or
    /// the delta would not be smaller, or (JSON) not valid UTF-8.
    delta: OnceLock<Option<Vec<u8>>>,
    json_delta: OnceLock<Option<Bytes>>,
    protobuf_delta: OnceLock<Option<Bytes>>,
}

impl PreparedPush {
    fn new(channel: &str, kind: PushKind) -> PreparedPush {
        PreparedPush {
            channel: Arc::from(channel),
            kind,
            json: OnceLock::new(),
            protobuf: OnceLock::new(),
            relay: OnceLock::new(),
            base: None,
            json_full_string: OnceLock::new(),
            delta: OnceLock::new(),
            json_delta: OnceLock::new(),
            protobuf_delta: OnceLock::new(),
        }
    }

    pub fn push_type(&self) -> PushType {
        match &self.kind {
            PushKind::Pub(_) => PushType::Pub,
            PushKind::Join(_) => PushType::Join,
            PushKind::Leave(_) => PushType::Leave,
        }
    }

    /// Stream offset of a publication (0 for join/leave and plain channels).
    pub fn offset(&self) -> u64 {
        match &self.kind {
            PushKind::Pub(p) => p.offset,
            _ => 0,
        }
    }

    /// A publication (relay connections get only these; join and leave
    /// have no relay frame).
    pub fn is_pub(&self) -> bool {
        matches!(self.kind, PushKind::Pub(_))
    }

    /// The client this publication leaves out, if any.
    pub fn exclude_client(&self) -> Option<&str> {
        match &self.kind {
            PushKind::Pub(p) => p.exclude_client.as_deref(),
            _ => None,
        }
    }

    /// The relay connection that published this, if any.
    pub fn origin(&self) -> Option<u64> {
        match &self.kind {
            PushKind::Pub(p) => p.origin,
            _ => None,
        }
    }

    /// The Centrifugo JSON push, encoded on first use.
    pub fn json(&self) -> &Bytes {
        self.json.get_or_init(|| self.encode(false))
    }

    /// The same push in the protobuf encoding (one length-prefixed
    /// `Reply`), encoded on first use. Its data is the same as the JSON
    /// push's (binary data as base64 with the `encoding` tag).
    pub fn protobuf(&self) -> &Bytes {
        self.protobuf.get_or_init(|| self.encode(true))
    }

    fn encode(&self, protobuf: bool) -> Bytes {
        use groupcast_proto::protobuf as pb;
        Bytes::from(match &self.kind {
            // Protobuf carries binary data as it is (no base64, no tag).
            PushKind::Pub(p) if protobuf && matches!(p.data, crate::Payload::Binary(_)) => {
                let crate::Payload::Binary(b) = &p.data else {
                    unreachable!("matched above")
                };
                pb::encode_pub_push_bytes(
                    &self.channel,
                    b,
                    false,
                    p.offset,
                    p.info.as_deref(),
                    &p.tags,
                )
            }
            PushKind::Pub(p) => {
                let data = p.data.to_json();
                let mut tagged;
                let tags = if matches!(p.data, crate::Payload::Binary(_)) {
                    tagged = p.tags.clone();
                    tagged.insert(TAG_ENCODING.into(), "base64".into());
                    &tagged
                } else {
                    &p.tags
                };
                let view = PubView {
                    data: &data,
                    offset: p.offset,
                    info: p.info.as_deref(),
                    tags,
                    delta: false,
                };
                if protobuf {
                    pb::encode_pub_push(&self.channel, view)
                } else {
                    encode_pub_push(&self.channel, view)
                }
            }
            PushKind::Join(info) if protobuf => pb::encode_join_push(&self.channel, info),
            PushKind::Join(info) => encode_join_push(&self.channel, info),
            PushKind::Leave(info) if protobuf => pb::encode_leave_push(&self.channel, info),
            PushKind::Leave(info) => encode_leave_push(&self.channel, info),
        })
    }

    /// Offset of the publication this one's delta is against.
    pub fn base_offset(&self) -> Option<u64> {
        self.base.as_ref().map(|(o, _)| *o)
    }

    fn publication(&self) -> Option<&Arc<Publication>> {
        match &self.kind {
            PushKind::Pub(p) => Some(p),
            _ => None,
        }
    }

    /// The data's JSON text, the bytes deltas are computed on (a binary
    /// payload: its base64 JSON string, as JSON clients see it).
    fn data_text(&self) -> Option<RawJson> {
        self.publication().map(|p| p.data.to_json())
    }

    /// The Fossil delta from the base's data to this one's. None for
    /// binary data on either side (protobuf clients hold it as bytes, JSON
    /// clients as base64 text: one delta cannot serve both).
    fn delta_bytes(&self) -> Option<&Vec<u8>> {
        self.delta
            .get_or_init(|| {
                let (_, Some(base)) = self.base.as_ref()? else {
                    return None;
                };
                if self
                    .publication()
                    .is_some_and(|p| matches!(p.data, crate::Payload::Binary(_)))
                {
                    return None;
                }
                let target = self.data_text()?;
                let (source, target) = (base.get().as_bytes(), target.get().as_bytes());
                let d = fossil_delta::delta(target, source);
                (d.len() < target.len()).then_some(d)
            })
            .as_ref()
    }

    /// A publication push for a delta subscription, full: over JSON the
    /// data is a JSON string holding the JSON text; over protobuf the
    /// plain push.
    pub fn full_for_delta(&self, protobuf: bool) -> &Bytes {
        if protobuf {
            return self.protobuf();
        }
        self.json_full_string.get_or_init(|| {
            let Some(p) = self.publication() else {
                return self.json().clone();
            };
            let text = p.data.to_json();
            let quoted = json_string(text.get());
            self.encode_pub(&quoted, false, false)
        })
    }

    /// The delta push, when there is one (see [`PreparedPush::delta_bytes`]).
    pub fn delta_push(&self, protobuf: bool) -> Option<&Bytes> {
        if protobuf {
            return self
                .protobuf_delta
                .get_or_init(|| {
                    let d = self.delta_bytes()?;
                    let p = self.publication()?;
                    let tags = self.tags_of(p);
                    Some(Bytes::from(
                        groupcast_proto::protobuf::encode_pub_push_bytes(
                            &self.channel,
                            d,
                            true,
                            p.offset,
                            p.info.as_deref(),
                            &tags,
                        ),
                    ))
                })
                .as_ref();
        }
        self.json_delta
            .get_or_init(|| {
                let d = std::str::from_utf8(self.delta_bytes()?).ok()?;
                let quoted = json_string(d);
                Some(self.encode_pub(&quoted, true, false))
            })
            .as_ref()
    }

    fn tags_of(&self, p: &Publication) -> std::collections::BTreeMap<String, String> {
        let mut tags = p.tags.clone();
        if matches!(p.data, crate::Payload::Binary(_)) {
            tags.insert(TAG_ENCODING.into(), "base64".into());
        }
        tags
    }

    /// A publication push with `data` (JSON) as given.
    fn encode_pub(&self, data: &RawJson, delta: bool, protobuf: bool) -> Bytes {
        let Some(p) = self.publication() else {
            return Bytes::new();
        };
        let tags = self.tags_of(p);
        let view = PubView {
            data,
            offset: p.offset,
            info: p.info.as_deref(),
            tags: &tags,
            delta,
        };
        Bytes::from(if protobuf {
            groupcast_proto::protobuf::encode_pub_push(&self.channel, view)
        } else {
            encode_pub_push(&self.channel, view)
        })
    }

    /// The raw relay frame `(bytes, is_binary)`; `None` for join/leave.
    pub fn relay(&self) -> Option<&(Bytes, bool)> {
        match &self.kind {
            PushKind::Pub(p) => Some(self.relay.get_or_init(|| p.data.to_relay())),
            _ => None,
        }
    }
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
mod tests {
    use super::*;
    use crate::publication::Payload;

    struct Sink {
        id: u64,
        kind: SubscriberKind,
        got: Mutex<Vec<Bytes>>,
        /// Whether the relay frame was already encoded when pushed.
        relay_encoded: Mutex<Vec<bool>>,
        insufficient: Mutex<Vec<String>>,
    }
    impl Subscriber for Sink {
        fn id(&self) -> u64 {
            self.id
        }
        fn client(&self) -> &str {
            match self.id {
                1 => "client-1",
                _ => "client-other",
            }
        }
        fn kind(&self) -> SubscriberKind {
            self.kind
        }
        fn push(&self, push: &PreparedPush) {
            self.relay_encoded.lock().push(push.relay.get().is_some());
            let b = match self.kind {
                SubscriberKind::Protocol => push.json().clone(),
                SubscriberKind::Relay => push.relay().unwrap().0.clone(),
            };
            self.got.lock().push(b);
        }
        fn insufficient_state(&self, channel: &str) {
            self.insufficient.lock().push(channel.to_string());
        }
    }
    fn sink(id: u64, kind: SubscriberKind) -> Arc<Sink> {
        Arc::new(Sink {
            id,
            kind,
            got: Mutex::new(Vec::new()),
            relay_encoded: Mutex::new(Vec::new()),
            insufficient: Mutex::new(Vec::new()),
        })
    }
    fn publication(offset: u64, text: &str, origin: Option<u64>) -> Arc<Publication> {
        let mut p = Publication::new(Payload::from_text(text));
        p.offset = offset;
        p.origin = origin;
        Arc::new(p)
    }

    /// Records what a delta subscription is handed: (delta?, push bytes).
    struct DeltaSink {
        id: u64,
        got: Mutex<Vec<(bool, Bytes)>>,
    }
    impl Subscriber for DeltaSink {
        fn id(&self) -> u64 {
            self.id
        }
        fn kind(&self) -> SubscriberKind {
            SubscriberKind::Protocol
        }
        fn push(&self, push: &PreparedPush) {
            self.got.lock().push((false, push.json().clone()));
        }
        fn push_delta(&self, push: &PreparedPush, delta: bool) {
            let b = match delta.then(|| push.delta_push(false)).flatten() {
                Some(d) => (true, d.clone()),
                None => (false, push.full_for_delta(false).clone()),
            };
            self.got.lock().push(b);
        }
        fn insufficient_state(&self, _: &str) {}
    }

    /// The `pub.data` of a JSON push, and its `delta` flag.
    fn pub_data(b: &[u8]) -> (serde_json::Value, bool) {
        let v: serde_json::Value = serde_json::from_slice(b).unwrap();
        let p = &v["push"]["pub"];
        (p["data"].clone(), p["delta"] == true)
    }

    #[test]
    fn a_delta_subscription_gets_the_first_publication_full_then_deltas_that_apply() {
        let hub = Hub::default();
        let d = Arc::new(DeltaSink {
            id: 7,
            got: Mutex::new(Vec::new()),
        });
        let plain = sink(8, SubscriberKind::Protocol);
        hub.add_with_delta("w", d.clone(), false, true);
        hub.add("w", plain.clone(), false);
        // A world state where each publication moves one entity.
        let state = |n: u64| {
            let xs: Vec<String> = (0..50u64)
                .map(|i| format!("{{\"id\":{i},\"x\":{}}}", if i == n { n * 1000 } else { i }))
                .collect();
            format!("[{}]", xs.join(","))
        };
        for n in 1..=3 {
            hub.on_publication("w", publication(n, &state(n), None));
        }
        let got = d.got.lock().clone();
        // First: full, as a JSON string holding the JSON text.
        let (data, delta) = pub_data(&got[0].1);
        assert!(!delta);
        assert_eq!(data.as_str().unwrap(), state(1));
        // Then deltas, smaller, that rebuild the data from the previous one.
        let mut prev = state(1).into_bytes();
        for (i, (is_delta, bytes)) in got.iter().enumerate().skip(1) {
            let (data, delta) = pub_data(bytes);
            assert!(*is_delta && delta, "publication {} as a delta", i + 1);
            let d = data.as_str().unwrap().as_bytes().to_vec();
            assert!(d.len() < prev.len() / 2, "a delta is small: {}", d.len());
            let next = fossil_delta::apply(&prev, &d).unwrap();
            assert_eq!(
                String::from_utf8(next.clone()).unwrap(),
                state(i as u64 + 1)
            );
            prev = next;
        }
        // The plain subscriber got plain pushes of the same publications.
        let plain_got = plain.got.lock().clone();
        assert_eq!(plain_got.len(), 3);
        assert!(pub_data(&plain_got[2]).0.is_array());
        // A subscription that joins later has no base: its first
        // publication is full, the next a delta.
        let late = Arc::new(DeltaSink {
            id: 9,
            got: Mutex::new(Vec::new()),
        });
        hub.add_with_delta("w", late.clone(), false, true);
        hub.on_publication("w", publication(4, &state(4), None));
        hub.on_publication("w", publication(5, &state(5), None));
        let got = late.got.lock().clone();
        assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), [false, true]);
        assert_eq!(pub_data(&got[0].1).0.as_str().unwrap(), state(4));
    }

    /// The offset of a channel's kept delta base.
    fn base_of(hub: &Hub, channel: &str) -> Option<u64> {
        hub.get(channel)?.lock().base.as_ref().map(|b| b.0)
    }

    #[test]
    fn only_channels_with_a_delta_subscription_keep_a_base() {
        let hub = Hub::default();
        let plain = sink(1, SubscriberKind::Protocol);
        hub.add("c", plain.clone(), false);
        hub.on_publication("c", publication(1, "{}", None));
        assert!(
            base_of(&hub, "c").is_none(),
            "no delta subscription: no payload kept"
        );
        let d = Arc::new(DeltaSink {
            id: 2,
            got: Mutex::new(Vec::new()),
        });
        hub.add_with_delta("c", d.clone(), false, true);
        hub.on_publication("c", publication(2, "{}", None));
        assert_eq!(base_of(&hub, "c"), Some(2));
        hub.remove("c", 2);
        assert!(
            base_of(&hub, "c").is_none(),
            "gone with the last delta subscription"
        );
        assert_eq!(hub.remove("c", 1), RemoveOutcome::Last);
    }

    #[test]
    fn an_excluded_client_is_left_out_of_the_fan_out_only() {
        let hub = Hub::default();
        let (a, b) = (
            sink(1, SubscriberKind::Protocol),
            sink(2, SubscriberKind::Protocol),
        );
        hub.add("c", a.clone(), false);
        hub.add("c", b.clone(), false);
        let mut p = Publication::new(Payload::from_text("{}"));
        p.offset = 1;
        p.exclude_client = Some(Arc::from("client-1"));
        hub.on_publication("c", Arc::new(p));
        hub.on_publication("c", publication(2, "{}", None));
        assert_eq!(a.got.lock().len(), 1, "client-1 got only the second");
        assert_eq!(b.got.lock().len(), 2, "the others get both");
    }

    #[test]
    fn encodes_once_and_shares_bytes() {
        let hub = Hub::default();
        let (a, b) = (
            sink(1, SubscriberKind::Protocol),
            sink(2, SubscriberKind::Protocol),
        );
        assert_eq!(hub.add("c", a.clone(), false), AddOutcome::First);
        assert_eq!(hub.add("c", b.clone(), false), AddOutcome::Added);
        assert_eq!(
            hub.add("c", b.clone(), false),
            AddOutcome::AlreadySubscribed
        );
        hub.on_publication("c", publication(1, "{}", None));
        let (ga, gb) = (a.got.lock()[0].clone(), b.got.lock()[0].clone());
        assert_eq!(
            ga.as_ptr(),
            gb.as_ptr(),
            "one encoding shared by subscribers"
        );
        assert_eq!(
            *b.relay_encoded.lock(),
            [false],
            "no relay frame is encoded for protocol subscribers"
        );
    }

    #[test]
    fn relay_origin_is_not_echoed_and_gets_no_join() {
        let hub = Hub::default();
        let (r1, r2, p) = (
            sink(1, SubscriberKind::Relay),
            sink(2, SubscriberKind::Relay),
            sink(3, SubscriberKind::Protocol),
        );
        for s in [r1.clone(), r2.clone(), p.clone()] {
            hub.add("relay", s, false);
        }
        hub.on_publication("relay", publication(0, "hello", Some(1)));
        hub.on_join("relay", Arc::new(ClientInfo::default()));
        assert!(
            r1.got.lock().is_empty(),
            "sender does not get its own frame"
        );
        assert_eq!(&r2.got.lock()[..], &[Bytes::from_static(b"hello")]);
        assert_eq!(p.got.lock().len(), 2, "protocol sub gets pub and join");
    }

    #[test]
    fn buffering_merges_without_gap_or_duplicate() {
        let hub = Hub::default();
        let s = sink(1, SubscriberKind::Relay);
        hub.add("c", s.clone(), true);
        for off in 3..=6 {
            hub.on_publication("c", publication(off, &off.to_string(), None));
        }
        // History covered up to offset 4; the reply goes first.
        hub.finish_buffering("c", 1, 4, || {
            s.got.lock().push(Bytes::from_static(b"reply"))
        })
        .unwrap();
        hub.on_publication("c", publication(6, "6", None)); // duplicate
        hub.on_publication("c", publication(7, "7", None));
        let got: Vec<_> = s
            .got
            .lock()
            .iter()
            .map(|b| String::from_utf8(b.to_vec()).unwrap())
            .collect();
        assert_eq!(got, ["reply", "5", "6", "7"]);
    }

    #[test]
    fn buffer_overflow_is_reported() {
        let hub = Hub::default();
        let s = sink(1, SubscriberKind::Relay);
        hub.add("c", s.clone(), true);
        for off in 1..=(MAX_RECOVERY_BUFFER as u64 + 1) {
            hub.on_publication("c", publication(off, "x", None));
        }
        assert_eq!(
            hub.finish_buffering("c", 1, 0, || panic!("not run")),
            Err(BufferOverflow)
        );
    }

    #[test]
    fn remove_reports_last_subscriber() {
        let hub = Hub::default();
        hub.add("c", sink(1, SubscriberKind::Relay), false);
        hub.add("c", sink(2, SubscriberKind::Relay), false);
        assert_eq!(hub.remove("c", 1), RemoveOutcome::Removed);
        assert_eq!(hub.remove("c", 1), RemoveOutcome::NotSubscribed);
        assert_eq!(hub.remove("c", 2), RemoveOutcome::Last);
        assert_eq!(hub.num_channels(), 0);
    }

    #[test]
    fn insufficient_state_restarts_live_and_recovering_subscribers() {
        let hub = Hub::default();
        let live = sink(1, SubscriberKind::Protocol);
        let recovering = sink(2, SubscriberKind::Protocol);
        let other = sink(3, SubscriberKind::Protocol);
        hub.add("c", live.clone(), false);
        hub.add("c", recovering.clone(), true);
        hub.add("d", other.clone(), false);
        hub.on_insufficient_state("c");
        assert_eq!(*live.insufficient.lock(), ["c"], "live one told once");
        assert_eq!(
            hub.finish_buffering("c", 2, 0, || panic!("not run")),
            Err(BufferOverflow),
            "a recovering one must restart its recovery"
        );
        assert!(
            other.insufficient.lock().is_empty(),
            "other channels untouched"
        );
    }
}
