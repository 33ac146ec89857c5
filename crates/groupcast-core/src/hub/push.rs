//! [`PreparedPush`]: one message for a channel, encoded lazily at most once
//! per encoding (JSON push, protobuf push, raw relay frame) and per delta
//! form, and shared by every subscriber of the channel on this node.
//! A [`JoinLeaveBatch`] is a channel's gathered joins and leaves, encoded
//! once as one frame; a subscriber that came in during the gathering gets
//! the frame's tail (a slice of the same bytes) from its own join on.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use groupcast_proto::client::{
    encode_join_push, encode_leave_push, encode_pub_push, ClientInfo, PubView, RawJson,
};

use crate::publication::{json_string, Publication, TAG_ENCODING};

/// What a [`PreparedPush`] carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushType {
    Pub,
    Join,
    Leave,
    /// Joins and leaves gathered into one frame (coalescing): how many of
    /// each.
    JoinLeave {
        joins: u32,
        leaves: u32,
    },
}

pub(super) enum PushKind {
    Pub(Arc<Publication>),
    Join(Arc<ClientInfo>),
    Leave(Arc<ClientInfo>),
    /// The gathered joins and leaves from the `skip`-th on.
    Batch {
        batch: Arc<JoinLeaveBatch>,
        skip: usize,
    },
}

/// A channel's joins and leaves gathered while coalescing, in order
/// ([`PushKind::Join`] and [`PushKind::Leave`] only), encoded at most once
/// per encoding as one frame: JSON pushes separated by `\n`, protobuf ones
/// (length-prefixed) one after the other, as the protocol batches them.
pub(super) struct JoinLeaveBatch {
    pub(super) events: Vec<PushKind>,
    /// The frame and where each event's push starts in it.
    json: OnceLock<(Bytes, Vec<usize>)>,
    protobuf: OnceLock<(Bytes, Vec<usize>)>,
}

impl JoinLeaveBatch {
    pub(super) fn new(events: Vec<PushKind>) -> JoinLeaveBatch {
        JoinLeaveBatch {
            events,
            json: OnceLock::new(),
            protobuf: OnceLock::new(),
        }
    }

    /// The frame from event `skip` on (a slice of the shared bytes).
    fn frame(&self, channel: &str, skip: usize, protobuf: bool) -> Bytes {
        let cell = if protobuf { &self.protobuf } else { &self.json };
        let (frame, starts) = cell.get_or_init(|| {
            let mut buf = Vec::new();
            let mut starts = Vec::with_capacity(self.events.len());
            for e in &self.events {
                if !protobuf && !buf.is_empty() {
                    buf.push(b'\n');
                }
                starts.push(buf.len());
                buf.extend_from_slice(&encode_join_leave(channel, e, protobuf));
            }
            (Bytes::from(buf), starts)
        });
        match starts.get(skip) {
            Some(&at) => frame.slice(at..),
            None => Bytes::new(),
        }
    }
}

/// One join or leave push; empty for anything else.
fn encode_join_leave(channel: &str, kind: &PushKind, protobuf: bool) -> Vec<u8> {
    use groupcast_proto::protobuf as pb;
    match kind {
        PushKind::Join(info) if protobuf => pb::encode_join_push(channel, info),
        PushKind::Join(info) => encode_join_push(channel, info),
        PushKind::Leave(info) if protobuf => pb::encode_leave_push(channel, info),
        PushKind::Leave(info) => encode_leave_push(channel, info),
        _ => Vec::new(),
    }
}

/// One message for a channel, encoded lazily and shared by all subscribers.
pub struct PreparedPush {
    pub(super) channel: Arc<str>,
    pub(super) kind: PushKind,
    pub(super) json: OnceLock<Bytes>,
    pub(super) protobuf: OnceLock<Bytes>,
    pub(super) relay: OnceLock<(Bytes, bool)>,
    socketio: OnceLock<Arc<SioPub>>,
    /// The previous publication of the channel (offset, data; no data when
    /// it was binary): the base of this one's delta.
    pub(super) base: Option<(u64, Option<RawJson>)>,
    /// For delta subscriptions: the full data as a JSON string (JSON).
    json_full_string: OnceLock<Bytes>,
    /// The Fossil delta against `base`: `None` when there is no base, or
    /// the delta would not be smaller, or (JSON) not valid UTF-8.
    pub(super) delta: OnceLock<Option<Vec<u8>>>,
    json_delta: OnceLock<Option<Bytes>>,
    protobuf_delta: OnceLock<Option<Bytes>>,
}

impl PreparedPush {
    pub(super) fn new(channel: &str, kind: PushKind) -> PreparedPush {
        PreparedPush {
            channel: Arc::from(channel),
            kind,
            json: OnceLock::new(),
            protobuf: OnceLock::new(),
            relay: OnceLock::new(),
            socketio: OnceLock::new(),
            base: None,
            json_full_string: OnceLock::new(),
            delta: OnceLock::new(),
            json_delta: OnceLock::new(),
            protobuf_delta: OnceLock::new(),
        }
    }

    /// The channel this push is for.
    pub fn channel(&self) -> &Arc<str> {
        &self.channel
    }

    pub fn push_type(&self) -> PushType {
        match &self.kind {
            PushKind::Pub(_) => PushType::Pub,
            PushKind::Join(_) => PushType::Join,
            PushKind::Leave(_) => PushType::Leave,
            PushKind::Batch { batch, skip } => {
                let events = batch.events.get(*skip..).unwrap_or_default();
                let joins = events
                    .iter()
                    .filter(|e| matches!(e, PushKind::Join(_)))
                    .count() as u32;
                PushType::JoinLeave {
                    joins,
                    leaves: events.len() as u32 - joins,
                }
            }
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
            PushKind::Batch { batch, skip } => return batch.frame(&self.channel, *skip, protobuf),
            join_or_leave => encode_join_leave(&self.channel, join_or_leave, protobuf),
        })
    }

    /// Offset of the publication this one's delta is against.
    pub fn base_offset(&self) -> Option<u64> {
        self.base.as_ref().map(|(o, _)| *o)
    }

    pub(super) fn publication(&self) -> Option<&Arc<Publication>> {
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

    /// The delta push, when there is one (computed once, from the channel's previous publication).
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

    /// The publication as a Socket.IO event ([`SioPub`]); `None` for join/leave.
    pub fn socketio(&self) -> Option<&Arc<SioPub>> {
        match &self.kind {
            PushKind::Pub(p) => Some(
                self.socketio
                    .get_or_init(|| Arc::new(SioPub::of(self.channel.clone(), p))),
            ),
            _ => None,
        }
    }

    /// The raw relay frame `(bytes, is_binary)`; `None` for join/leave.
    pub fn relay(&self) -> Option<&(Bytes, bool)> {
        match &self.kind {
            PushKind::Pub(p) => Some(self.relay.get_or_init(|| p.data.to_relay())),
            _ => None,
        }
    }
}

/// Tag of a publication that names the Socket.IO event it is emitted as (API `sio_emit` sets
/// it); its data is then the JSON array of the event's arguments.
pub const TAG_SIO_EVENT: &str = "sio_event";

/// A publication as a Socket.IO event, shared by every socket of the channel: each socket's
/// session writes `42<namespace>,["<event>",<args>]` around it, or takes `frame`.
#[derive(Debug)]
pub struct SioPub {
    /// The channel it was published on (its room).
    pub channel: Arc<str>,
    /// The event ([`TAG_SIO_EVENT`]); `None`: the namespace's default event.
    pub event: Option<Arc<str>>,
    /// The arguments as JSON, comma-separated, without the brackets (may be empty).
    pub args: Bytes,
    /// The arguments hold `{"$binary": "<base64>"}` values, which go as binary attachments.
    pub binary: bool,
    /// The publication's position in its channel's stream (0 without history): what
    /// connection-state recovery remembers of the room.
    pub offset: u64,
    /// The event as one text packet, the same for every socket of the channel (all in one
    /// namespace) that needs no offset: written by the first socket's session, taken by the
    /// others.
    pub frame: OnceLock<Bytes>,
}

impl SioPub {
    /// The publication of `channel` as an event (also for publications read back from
    /// history).
    pub fn of(channel: Arc<str>, p: &Publication) -> SioPub {
        use base64::Engine as _;
        let named = p
            .tags
            .get(TAG_SIO_EVENT)
            .map(|e| Arc::<str>::from(e.as_str()));
        match &p.data {
            crate::Payload::Binary(b) => {
                let b64 = base64::engine::general_purpose::STANDARD.encode(b);
                SioPub {
                    channel,
                    event: named,
                    args: Bytes::from(format!("{{\"$binary\":\"{b64}\"}}")),
                    binary: true,
                    offset: p.offset,
                    frame: OnceLock::new(),
                }
            }
            data => {
                let json = data.to_json();
                let text = json.get().trim();
                // A named event's data is its argument list; anything else is one argument.
                let args = match (
                    &named,
                    text.strip_prefix('[').and_then(|t| t.strip_suffix(']')),
                ) {
                    (Some(_), Some(inner)) => inner,
                    _ => text,
                };
                SioPub {
                    channel,
                    binary: args.contains("\"$binary\""),
                    args: Bytes::copy_from_slice(args.as_bytes()),
                    event: named,
                    offset: p.offset,
                    frame: OnceLock::new(),
                }
            }
        }
    }
}
