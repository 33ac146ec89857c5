//! Centrifugo client protocol v2, JSON encoding.
//!
//! A WebSocket frame carries one or more JSON objects separated by `\n`.
//! Client to server: [`Command`]s; an empty object `{}` is a pong.
//! Server to client: [`Reply`]s (with the command's `id`), pushes
//! (`{"push":{...}}`, no id) and the empty ping `{}`.
//!
//! `data` fields are embedded JSON: they are kept as [`RawValue`] and never
//! re-parsed. Unknown fields sent by newer SDKs are ignored, never rejected.
//! Publication pushes are encoded by hand in [`encode_pub_push`] so a fan-out
//! encodes once per channel and shares the bytes with every subscriber.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::codes::ErrorCode;

/// Raw JSON shared between a publication and every frame that carries it.
pub type RawJson = Arc<RawValue>;

fn is_false(b: &bool) -> bool {
    !*b
}
fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}
fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

/// Deserialize optional raw JSON into an `Arc` (serde has no direct impl).
pub(crate) mod raw_opt {
    use super::*;
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<RawJson>, D::Error> {
        let b: Option<Box<RawValue>> = Option::deserialize(d)?;
        Ok(b.map(Arc::from))
    }
}

/// Whether a (syntactically valid) JSON text is one that strict decoders
/// accept too: every number fits a finite double, and every `\\u` escape
/// forms valid UTF-16 (no lone surrogates). The JSON grammar allows `1e999`
/// and `"\\udbbb"`, but Go's and Rust's decoders refuse a document that
/// contains them, so such data would break every subscriber that decodes the
/// push. Both were found by fuzzing the relay path. Iterative, O(n), no
/// nesting limit.
pub fn json_is_portable(json: &str) -> bool {
    let bytes = json.as_bytes();
    let hex4 = |at: usize| -> Option<u16> {
        let h = json.get(at..at + 4)?;
        u16::from_str_radix(h, 16).ok()
    };
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    if bytes[i] != b'\\' {
                        i += 1;
                        continue;
                    }
                    if bytes.get(i + 1) != Some(&b'u') {
                        i += 2;
                        continue;
                    }
                    let Some(unit) = hex4(i + 2) else {
                        return false;
                    };
                    i += 6;
                    match unit {
                        0xD800..=0xDBFF => {
                            // A high surrogate must be followed by a low one.
                            let low = (bytes.get(i) == Some(&b'\\')
                                && bytes.get(i + 1) == Some(&b'u'))
                            .then(|| hex4(i + 2))
                            .flatten();
                            match low {
                                Some(0xDC00..=0xDFFF) => i += 6,
                                _ => return false,
                            }
                        }
                        0xDC00..=0xDFFF => return false,
                        _ => {}
                    }
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < bytes.len()
                    && matches!(bytes[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                match json[start..i].parse::<f64>() {
                    Ok(n) if n.is_finite() => {}
                    _ => return false,
                }
            }
            _ => i += 1,
        }
    }
    true
}

/// Struct-typed fields that accept only a JSON object: serde's derived
/// `Deserialize` also reads a struct from a JSON array (by position), which
/// would let `{"id":1,"connect":["token"]}` connect. A method's params that
/// are not an object are answered 107 ([`decode_commands`]); a nested one
/// (`connect.subs` values, `history.since`) is a field of the wrong type and
/// fails the whole frame like any other (close 3501, docs/protocol.md §8).
mod object {
    use std::collections::BTreeMap;
    use std::marker::PhantomData;

    use serde::de::{MapAccess, Visitor};
    use serde::{Deserialize, Deserializer};

    /// `T`, read only from a JSON object.
    struct Obj<T>(T);

    impl<'de, T: Deserialize<'de>> Deserialize<'de> for Obj<T> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V<T>(PhantomData<T>);
            impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
                type Value = Obj<T>;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Obj<T>, A::Error> {
                    T::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Obj)
                }
            }
            d.deserialize_map(V(PhantomData))
        }
    }

    /// An optional object: `null` or absent is `None`.
    pub fn opt<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de>,
    {
        Ok(Option::<Obj<T>>::deserialize(d)?.map(|o| o.0))
    }

    /// A map whose values are objects.
    pub fn map<'de, D, T>(d: D) -> Result<BTreeMap<String, T>, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de>,
    {
        let m = BTreeMap::<String, Obj<T>>::deserialize(d)?;
        Ok(m.into_iter().map(|(k, v)| (k, v.0)).collect())
    }
}

/// Decode every command in one frame (newline-separated JSON objects).
///
/// Blank lines are skipped. Any line that is not a valid command makes the
/// whole frame invalid: the protocol answers that with a bad-request
/// disconnect, so partial processing would only hide the error.
pub fn decode_commands(frame: &[u8]) -> Result<Vec<Command>, serde_json::Error> {
    let mut out = Vec::new();
    for line in frame.split(|b| *b == b'\n') {
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        if out.len() == MAX_COMMANDS_PER_FRAME {
            return Err(serde::de::Error::custom(TOO_MANY_COMMANDS));
        }
        match serde_json::from_slice(line) {
            Ok(cmd) => out.push(cmd),
            // Only on the error path: is it a command whose params are not
            // an object? That one is answered 107 rather than breaking the
            // whole frame.
            Err(e) => out.push(params_not_an_object(line).ok_or(e)?),
        }
    }
    Ok(out)
}

/// Most commands one frame may carry (either encoding): a frame of tiny
/// commands (`{}` pongs, empty protobuf messages) would otherwise decode
/// into far more memory than its size. A connection that sends more is
/// closed with 3501 (`max_commands_per_frame` in the limit metric). SDKs
/// send a connect and their pending subscribes in one frame: this is above
/// any `client.max_channels_per_connection` worth using.
pub const MAX_COMMANDS_PER_FRAME: usize = 4096;

/// The decode error of a frame over [`MAX_COMMANDS_PER_FRAME`].
pub const TOO_MANY_COMMANDS: &str = "too many commands in one frame";

/// The method names, as in [`Command`].
pub const METHODS: [&str; 12] = [
    "connect",
    "subscribe",
    "unsubscribe",
    "publish",
    "presence",
    "presence_stats",
    "history",
    "ping",
    "send",
    "rpc",
    "refresh",
    "sub_refresh",
];

/// A line that is a JSON object with a valid `id` and a method whose params
/// are not an object (`"connect":["token"]`): a [`Command`] with only `id`
/// and [`Command::params_not_object`] set. `None` for anything else.
fn params_not_an_object(line: &[u8]) -> Option<Command> {
    let serde_json::Value::Object(map) = serde_json::from_slice(line).ok()? else {
        return None;
    };
    let id = match map.get("id") {
        None => 0,
        Some(v) => u32::try_from(v.as_u64()?).ok()?,
    };
    let method = METHODS
        .into_iter()
        .find(|m| map.get(*m).is_some_and(|v| !v.is_object() && !v.is_null()))?;
    Some(Command {
        id,
        params_not_object: Some(method),
        ..Default::default()
    })
}

/// One client command. Exactly one method field is set; none set means pong
/// (when `id` is 0) or an unknown method (when `id` is set).
///
/// Every method's params must be a JSON object (or `null`, read as absent):
/// serde would otherwise read a struct from an array (`"connect":[...]`),
/// see [`object`]. Such a command is answered 107 (see [`decode_commands`]).
#[derive(Debug, Default, Deserialize)]
pub struct Command {
    #[serde(default)]
    pub id: u32,
    #[serde(default, deserialize_with = "object::opt")]
    pub connect: Option<ConnectRequest>,
    #[serde(default, deserialize_with = "object::opt")]
    pub subscribe: Option<SubscribeRequest>,
    #[serde(default, deserialize_with = "object::opt")]
    pub unsubscribe: Option<UnsubscribeRequest>,
    #[serde(default, deserialize_with = "object::opt")]
    pub publish: Option<PublishRequest>,
    #[serde(default, deserialize_with = "object::opt")]
    pub presence: Option<ChannelRequest>,
    #[serde(default, deserialize_with = "object::opt")]
    pub presence_stats: Option<ChannelRequest>,
    #[serde(default, deserialize_with = "object::opt")]
    pub history: Option<HistoryRequest>,
    #[serde(default, deserialize_with = "object::opt")]
    pub ping: Option<Empty>,
    #[serde(default, deserialize_with = "object::opt")]
    pub send: Option<SendRequest>,
    #[serde(default, deserialize_with = "object::opt")]
    pub rpc: Option<RpcRequest>,
    #[serde(default, deserialize_with = "object::opt")]
    pub refresh: Option<RefreshRequest>,
    #[serde(default, deserialize_with = "object::opt")]
    pub sub_refresh: Option<SubRefreshRequest>,
    /// Set by [`decode_commands`] (never by the JSON): this method's params
    /// were not a JSON object; answered 107.
    #[serde(skip)]
    pub params_not_object: Option<&'static str>,
}

impl Command {
    /// The method name, for metrics and logs; `None` for a pong or unknown method.
    pub fn method(&self) -> Option<&'static str> {
        Some(if self.connect.is_some() {
            "connect"
        } else if self.subscribe.is_some() {
            "subscribe"
        } else if self.unsubscribe.is_some() {
            "unsubscribe"
        } else if self.publish.is_some() {
            "publish"
        } else if self.presence.is_some() {
            "presence"
        } else if self.presence_stats.is_some() {
            "presence_stats"
        } else if self.history.is_some() {
            "history"
        } else if self.ping.is_some() {
            "ping"
        } else if self.send.is_some() {
            "send"
        } else if self.rpc.is_some() {
            "rpc"
        } else if self.refresh.is_some() {
            "refresh"
        } else if self.sub_refresh.is_some() {
            "sub_refresh"
        } else {
            return None;
        })
    }
}

/// An object whose fields we do not read (`ping`, results without fields).
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct Empty {}

#[derive(Debug, Default, Deserialize)]
pub struct ConnectRequest {
    #[serde(default)]
    pub token: String,
    #[serde(default, deserialize_with = "raw_opt::deserialize")]
    pub data: Option<RawJson>,
    /// Channels the client wants to recover after a reconnect (server-side subs).
    #[serde(default, deserialize_with = "object::map")]
    pub subs: BTreeMap<String, SubscribeRequest>,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub version: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct SubscribeRequest {
    #[serde(default)]
    pub channel: String,
    #[serde(default)]
    pub token: String,
    #[serde(default)]
    pub recover: bool,
    #[serde(default)]
    pub epoch: String,
    #[serde(default)]
    pub offset: u64,
    #[serde(default, deserialize_with = "raw_opt::deserialize")]
    pub data: Option<RawJson>,
    #[serde(default)]
    pub positioned: bool,
    #[serde(default)]
    pub recoverable: bool,
    #[serde(default)]
    pub join_leave: bool,
    /// Bit flags (the SDKs' `subscriptionFlags`): see [`FLAG_REJECT_UNRECOVERED`].
    /// Bit 1 (`channelCompaction`) is accepted and ignored: pushes always
    /// carry the channel name, which every SDK reads.
    #[serde(default)]
    pub flag: i64,
    /// Subscription type: 0 (a stream) is the only one implemented; map
    /// (1) and shared poll (4) subscriptions answer 108 "not available".
    #[serde(default, rename = "type")]
    pub kind: i32,
    /// Delta compression asked for: `fossil` is the only type.
    #[serde(default)]
    pub delta: String,
}

/// The delta compression type Groupcast implements (Fossil's delta format).
pub const DELTA_FOSSIL: &str = "fossil";

/// `flag` bit: when recovery was asked for and fails, answer 112
/// "unrecoverable position" instead of subscribing without the missed
/// publications (the SDK then reloads its state and subscribes again).
pub const FLAG_REJECT_UNRECOVERED: i64 = 2;

#[derive(Debug, Default, Deserialize)]
pub struct UnsubscribeRequest {
    #[serde(default)]
    pub channel: String,
}

#[derive(Debug, Deserialize)]
pub struct PublishRequest {
    #[serde(default)]
    pub channel: String,
    #[serde(default, deserialize_with = "raw_opt::deserialize")]
    pub data: Option<RawJson>,
    /// Groupcast extension: leave the publisher itself out of the fan-out
    /// (Phoenix's `broadcast_from`).
    #[serde(default)]
    pub exclude_self: bool,
    /// Protobuf only: `data` bytes that are not JSON, published as binary
    /// (then `data` is `None`).
    #[serde(skip)]
    pub binary: Option<bytes::Bytes>,
}

/// Request that names only a channel (`presence`, `presence_stats`).
#[derive(Debug, Default, Deserialize)]
pub struct ChannelRequest {
    #[serde(default)]
    pub channel: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct HistoryRequest {
    #[serde(default)]
    pub channel: String,
    #[serde(default)]
    pub limit: i32,
    #[serde(default, deserialize_with = "object::opt")]
    pub since: Option<StreamPosition>,
    #[serde(default)]
    pub reverse: bool,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct StreamPosition {
    #[serde(default)]
    pub offset: u64,
    #[serde(default)]
    pub epoch: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct SendRequest {
    #[serde(default, deserialize_with = "raw_opt::deserialize")]
    pub data: Option<RawJson>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RpcRequest {
    #[serde(default, deserialize_with = "raw_opt::deserialize")]
    pub data: Option<RawJson>,
    #[serde(default)]
    pub method: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct RefreshRequest {
    #[serde(default)]
    pub token: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct SubRefreshRequest {
    #[serde(default)]
    pub channel: String,
    #[serde(default)]
    pub token: String,
}

/// A reply to one command. Exactly one of `error` or a result is set.
#[derive(Debug, Default, Serialize)]
pub struct Reply {
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub id: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorCode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect: Option<ConnectResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscribe: Option<SubscribeResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unsubscribe: Option<Empty>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish: Option<Empty>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence: Option<PresenceResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence_stats: Option<PresenceStatsResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<HistoryResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ping: Option<Empty>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpc: Option<RpcResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh: Option<RefreshResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub_refresh: Option<SubRefreshResult>,
}

impl Reply {
    pub fn error(id: u32, error: ErrorCode) -> Reply {
        Reply {
            id,
            error: Some(error),
            ..Default::default()
        }
    }

    /// Encode to one JSON line (no trailing newline).
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("reply types always serialize")
    }
}

#[derive(Debug, Default, Serialize)]
pub struct ConnectResult {
    pub client: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub version: String,
    #[serde(skip_serializing_if = "is_false")]
    pub expires: bool,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub ttl: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<RawJson>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub subs: BTreeMap<String, SubscribeResult>,
    /// Server ping interval in seconds (0: the server does not ping).
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub ping: u32,
    /// Whether the client must answer pings with `{}`.
    #[serde(skip_serializing_if = "is_false")]
    pub pong: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub session: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub node: String,
}

#[derive(Debug, Default, Serialize)]
pub struct SubscribeResult {
    #[serde(skip_serializing_if = "is_false")]
    pub expires: bool,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub ttl: u32,
    #[serde(skip_serializing_if = "is_false")]
    pub recoverable: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub epoch: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub publications: Vec<PublicationOut>,
    #[serde(skip_serializing_if = "is_false")]
    pub recovered: bool,
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub offset: u64,
    #[serde(skip_serializing_if = "is_false")]
    pub positioned: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<RawJson>,
    #[serde(skip_serializing_if = "is_false")]
    pub was_recovering: bool,
    /// Delta compression negotiated: every publication's `data` of this
    /// subscription comes as a JSON string (the JSON text, or with
    /// `delta: true` a Fossil delta against the previous one).
    #[serde(skip_serializing_if = "is_false")]
    pub delta: bool,
}

/// Client information attached to publications, presence, join and leave.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClientInfo {
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub client: String,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "raw_opt::deserialize"
    )]
    pub conn_info: Option<RawJson>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "raw_opt::deserialize"
    )]
    pub chan_info: Option<RawJson>,
}

/// A publication as it appears in history results and subscribe results.
#[derive(Debug, Clone, Serialize)]
pub struct PublicationOut {
    pub data: RawJson,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<ClientInfo>,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub offset: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, Default, Serialize)]
pub struct PresenceResult {
    pub presence: BTreeMap<String, ClientInfo>,
}

#[derive(Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PresenceStatsResult {
    pub num_clients: u32,
    pub num_users: u32,
}

#[derive(Debug, Default, Serialize)]
pub struct HistoryResult {
    pub publications: Vec<PublicationOut>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub epoch: String,
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub offset: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct RpcResult {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<RawJson>,
}

#[derive(Debug, Default, Serialize)]
pub struct RefreshResult {
    pub client: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub version: String,
    #[serde(skip_serializing_if = "is_false")]
    pub expires: bool,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub ttl: u32,
}

#[derive(Debug, Default, Serialize)]
pub struct SubRefreshResult {
    #[serde(skip_serializing_if = "is_false")]
    pub expires: bool,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub ttl: u32,
}

/// Push envelope: `{"push":{"channel":..,<kind>:{..}}}`.
#[derive(Debug, Serialize)]
struct PushEnvelope<'a, T: Serialize> {
    push: PushBody<'a, T>,
}

#[derive(Debug, Serialize)]
struct PushBody<'a, T: Serialize> {
    #[serde(skip_serializing_if = "str::is_empty")]
    channel: &'a str,
    #[serde(flatten)]
    body: T,
}

fn encode_push<T: Serialize>(channel: &str, body: T) -> Vec<u8> {
    serde_json::to_vec(&PushEnvelope {
        push: PushBody { channel, body },
    })
    .expect("push types always serialize")
}

/// Borrowed view of a publication, for encoding without copies.
#[derive(Debug, Clone, Copy)]
pub struct PubView<'a> {
    /// Raw JSON of the data (already validated when it entered the system).
    pub data: &'a RawValue,
    pub offset: u64,
    pub info: Option<&'a ClientInfo>,
    pub tags: &'a BTreeMap<String, String>,
    /// `data` is a Fossil delta (a JSON string of it) against the
    /// subscription's previous publication.
    pub delta: bool,
}

#[derive(Serialize)]
struct PubRef<'a> {
    data: &'a RawValue,
    #[serde(skip_serializing_if = "is_false")]
    delta: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    info: Option<&'a ClientInfo>,
    #[serde(skip_serializing_if = "is_zero_u64")]
    offset: u64,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    tags: &'a BTreeMap<String, String>,
}

#[derive(Serialize)]
struct PubKind<'a> {
    #[serde(rename = "pub")]
    publication: PubRef<'a>,
}

/// Encode `{"push":{"channel":C,"pub":{...}}}` once for a whole fan-out.
pub fn encode_pub_push(channel: &str, p: PubView<'_>) -> Vec<u8> {
    encode_push(
        channel,
        PubKind {
            publication: PubRef {
                data: p.data,
                delta: p.delta,
                info: p.info,
                offset: p.offset,
                tags: p.tags,
            },
        },
    )
}

#[derive(Serialize)]
struct InfoWrap<'a> {
    info: &'a ClientInfo,
}
#[derive(Serialize)]
struct JoinKind<'a> {
    join: InfoWrap<'a>,
}
#[derive(Serialize)]
struct LeaveKind<'a> {
    leave: InfoWrap<'a>,
}

/// `{"push":{"channel":C,"join":{"info":{...}}}}`
pub fn encode_join_push(channel: &str, info: &ClientInfo) -> Vec<u8> {
    encode_push(
        channel,
        JoinKind {
            join: InfoWrap { info },
        },
    )
}

/// `{"push":{"channel":C,"leave":{"info":{...}}}}`
pub fn encode_leave_push(channel: &str, info: &ClientInfo) -> Vec<u8> {
    encode_push(
        channel,
        LeaveKind {
            leave: InfoWrap { info },
        },
    )
}

#[derive(Serialize)]
struct CodeReason<'a> {
    code: u32,
    reason: &'a str,
}
#[derive(Serialize)]
struct UnsubKind<'a> {
    unsubscribe: CodeReason<'a>,
}

/// `{"push":{"channel":C,"unsubscribe":{"code":..,"reason":..}}}`
pub fn encode_unsubscribe_push(channel: &str, code: u32, reason: &str) -> Vec<u8> {
    encode_push(
        channel,
        UnsubKind {
            unsubscribe: CodeReason { code, reason },
        },
    )
}

#[derive(Serialize)]
struct SubscribeKind<'a> {
    subscribe: &'a SubscribeResult,
}

/// `{"push":{"channel":C,"subscribe":{...}}}`: a server-side subscription.
pub fn encode_subscribe_push(channel: &str, result: &SubscribeResult) -> Vec<u8> {
    encode_push(channel, SubscribeKind { subscribe: result })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_holds_at_most_max_commands_per_frame() {
        let frame = |n: usize| vec!["{}"; n].join("\n");
        assert_eq!(
            decode_commands(frame(MAX_COMMANDS_PER_FRAME).as_bytes())
                .unwrap()
                .len(),
            MAX_COMMANDS_PER_FRAME
        );
        let e = decode_commands(frame(MAX_COMMANDS_PER_FRAME + 1).as_bytes()).unwrap_err();
        assert!(e.to_string().contains(TOO_MANY_COMMANDS), "{e}");
        // Protobuf: empty messages (one byte each) count alike.
        let pb = vec![0u8; MAX_COMMANDS_PER_FRAME];
        assert_eq!(
            crate::protobuf::decode_commands(&pb).unwrap().len(),
            MAX_COMMANDS_PER_FRAME
        );
        let pb = vec![0u8; MAX_COMMANDS_PER_FRAME + 1];
        assert!(matches!(
            crate::protobuf::decode_commands(&pb),
            Err(crate::protobuf::ProtoError::TooManyCommands)
        ));
    }
    use serde_json::json;

    fn raw(s: &str) -> RawJson {
        Arc::from(RawValue::from_string(s.to_string()).unwrap())
    }

    #[test]
    fn decodes_batched_commands_and_ignores_unknown_fields() {
        let frame = br#"{"id":1,"connect":{"token":"t","name":"js","flag":7,"headers":{"a":"b"}}}
{"id":2,"subscribe":{"channel":"chat:1","recover":true,"offset":5,"epoch":"e"}}

{}"#;
        let cmds = decode_commands(frame).unwrap();
        assert_eq!(cmds.len(), 3);
        assert_eq!(cmds[0].method(), Some("connect"));
        assert_eq!(cmds[0].connect.as_ref().unwrap().token, "t");
        let s = cmds[1].subscribe.as_ref().unwrap();
        assert_eq!(
            (s.channel.as_str(), s.recover, s.offset),
            ("chat:1", true, 5)
        );
        assert_eq!(cmds[2].id, 0);
        assert_eq!(cmds[2].method(), None);
    }

    #[test]
    fn wrong_types_and_garbage_are_errors() {
        assert!(decode_commands(br#"{"id":1,"subscribe":{"channel":5}}"#).is_err());
        assert!(decode_commands(br#"{"id":"x"}"#).is_err());
        assert!(decode_commands(b"not json").is_err());
        assert!(decode_commands(br#"{"id":1}"#).is_ok());
        assert!(decode_commands(br#"[1,2]"#).is_err());
    }

    #[test]
    fn params_that_are_not_objects_are_marked_not_read_by_position() {
        for (frame, method) in [
            (&br#"{"id":4,"connect":["token"]}"#[..], "connect"),
            (br#"{"id":4,"subscribe":"room"}"#, "subscribe"),
            (br#"{"id":4,"ping":[]}"#, "ping"),
            (br#"{"id":4,"publish":5,"x":1}"#, "publish"),
        ] {
            let cmds = decode_commands(frame).unwrap();
            assert_eq!(cmds.len(), 1);
            assert_eq!(cmds[0].id, 4);
            assert_eq!(cmds[0].params_not_object, Some(method));
            assert_eq!(cmds[0].method(), None, "nothing to run");
            assert!(cmds[0].connect.is_none(), "not connected by position");
        }
        // `null` is absent, as before.
        let cmds = decode_commands(br#"{"id":4,"ping":null}"#).unwrap();
        assert_eq!(cmds[0].params_not_object, None);
        // A bad id, or a wrong type below the params, still fails the frame.
        assert!(decode_commands(br#"{"id":"x","connect":[]}"#).is_err());
        assert!(decode_commands(br#"{"id":1,"history":{"channel":"a","since":[1,"e"]}}"#).is_err());
        assert!(decode_commands(br#"{"id":1,"connect":{"subs":{"a":[true]}}}"#).is_err());
    }

    #[test]
    fn surrogates() {
        assert!(json_is_portable(r#""\ud83d\ude00 ok""#), "a valid pair");
        assert!(json_is_portable(r#""\u00e9\n\"\\""#));
        assert!(
            !json_is_portable(r#""5\udbbb""#),
            "found by the relay_payload fuzzer"
        );
        assert!(!json_is_portable(r#""\ude00""#), "lone low surrogate");
        assert!(
            !json_is_portable(r#""\ud83d\u0041""#),
            "high surrogate then a non-surrogate"
        );
        // Each case is also what serde_json itself decides.
        for ok in [r#""\ud83d\ude00""#, r#""x""#] {
            assert!(serde_json::from_str::<serde_json::Value>(ok).is_ok());
        }
        for bad in [r#""5\udbbb""#, r#""\ude00""#] {
            assert!(serde_json::from_str::<serde_json::Value>(bad).is_err());
        }
    }

    #[test]
    fn finite_numbers() {
        assert!(json_is_portable(
            r#"{"a":[1,-2.5e10,0.1],"s":"1e999 \" 9e9999"}"#
        ));
        assert!(json_is_portable("1.7976931348623157e308"));
        assert!(!json_is_portable("6E6666"));
        assert!(!json_is_portable(r#"{"a":[1,{"b":-1e400}]}"#));
        assert!(json_is_portable(r#""just a string with 1e999 inside""#));
        assert!(json_is_portable(&format!(
            "{}1{}",
            "[".repeat(50_000),
            "]".repeat(50_000)
        )));
    }

    #[test]
    fn publish_data_stays_raw() {
        let cmds =
            decode_commands(br#"{"id":3,"publish":{"channel":"c","data":{"b":1, "a":[1,2]}}}"#)
                .unwrap();
        let p = cmds[0].publish.as_ref().unwrap();
        assert_eq!(p.data.as_ref().unwrap().get(), r#"{"b":1, "a":[1,2]}"#);
    }

    #[test]
    fn reply_omits_defaults() {
        let r = Reply {
            id: 7,
            subscribe: Some(SubscribeResult::default()),
            ..Default::default()
        };
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&r.encode()).unwrap(),
            json!({"id":7,"subscribe":{}})
        );
        let e = Reply::error(2, ErrorCode::PERMISSION_DENIED);
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&e.encode()).unwrap(),
            json!({"id":2,"error":{"code":103,"message":"permission denied"}})
        );
    }

    #[test]
    fn pushes_have_the_protocol_shape() {
        let tags = BTreeMap::new();
        let info = ClientInfo {
            user: "u".into(),
            client: "c".into(),
            conn_info: Some(raw(r#"{"n":1}"#)),
            chan_info: None,
        };
        let data = raw(r#"{"x":1}"#);
        let p = encode_pub_push(
            "news",
            PubView {
                data: &data,
                offset: 4,
                info: Some(&info),
                tags: &tags,
                delta: false,
            },
        );
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&p).unwrap(),
            json!({"push":{"channel":"news","pub":{"data":{"x":1},"offset":4,"info":{"user":"u","client":"c","conn_info":{"n":1}}}}})
        );
        let j = encode_join_push("news", &info);
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&j).unwrap()["push"]["join"]["info"]
                ["user"],
            "u"
        );
        let u = encode_unsubscribe_push("news", 2000, "server unsubscribe");
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&u).unwrap(),
            json!({"push":{"channel":"news","unsubscribe":{"code":2000,"reason":"server unsubscribe"}}})
        );
    }
}

#[cfg(test)]
mod nesting {
    /// Embedded data is skipped iteratively: 30,000 levels decode on a
    /// 128 KiB stack (a recursive parser would overflow it).
    #[test]
    fn deep_data_decodes_without_recursion() {
        std::thread::Builder::new()
            .stack_size(128 * 1024)
            .spawn(|| {
                let depth = 30_000;
                let frame = format!(
                    "{{\"id\":1,\"publish\":{{\"channel\":\"a\",\"data\":{}{}}}}}",
                    "[".repeat(depth),
                    "]".repeat(depth)
                );
                let cmds = super::decode_commands(frame.as_bytes()).unwrap();
                let data = cmds[0].publish.as_ref().unwrap().data.as_ref().unwrap();
                assert_eq!(data.get().len(), 2 * depth);
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
