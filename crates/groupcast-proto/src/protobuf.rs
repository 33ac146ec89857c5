//! Centrifugo client protocol v2, protobuf encoding (WebSocket subprotocol
//! `centrifuge-protobuf`, binary frames).
//!
//! # Framing
//! A binary frame holds one or more messages, each prefixed by its length
//! as a varint (a length-delimited stream). The client sends [`Command`]s;
//! an empty `Command` (the single byte `0x00` once framed) is the pong. The
//! server sends [`Reply`]s: answers carry the command's `id`, pushes have id
//! 0 and [`Reply::push`] set, and the ping is an empty `Reply`
//! ([`encode_ping`]). Every `encode_*` function here returns one framed
//! message, so a frame of several is their concatenation.
//!
//! # Schema
//! The message types are written by hand after Centrifugo's `client.proto`
//! (package `centrifugal.centrifuge.protocol`) with prost's derive: the same
//! messages, field numbers and types, each message with all of its fields
//! (also those the JSON model, [`crate::client`], has no place for).
//! Reserved numbers and `EmulationRequest` (not part of a WebSocket
//! connection) are left out. Rust
//! names differ where the schema's are keywords or acronyms: `Push.pub` is
//! [`Push::publication`], `type` is `kind`, `RPCRequest`/`RPCResult` are
//! [`RpcRequest`]/[`RpcResult`]. Maps are `BTreeMap`s, so an encoding is the
//! same bytes every time.
//!
//! # Commands: mapping to the JSON model
//! [`decode_commands`] yields the same [`client::Command`] the JSON decoder
//! does, so a session handles both encodings with one code path.
//! * `data` fields are bytes in protobuf and JSON in Groupcast's model. Bytes
//!   that are a JSON text [`client::json_is_portable`] accepts become
//!   [`client::RawJson`]. Any other bytes (binary, text that is not JSON,
//!   JSON with `1e999` or a lone surrogate escape) are a binary publication
//!   in `publish` ([`client::PublishRequest::binary`]) and fail the whole
//!   frame with [`ProtoError::NonJsonData`] in any other command. Empty
//!   bytes are an absent `data` (proto3 cannot tell them apart), and the
//!   text `null` is absent too, as `"data":null` is for the JSON decoder.
//! * Fields the model has no place for are read and dropped, as the JSON
//!   decoder ignores fields it does not know: `ConnectRequest.headers`,
//!   `flag`, `dict`, `profile`; `SubscribeRequest.delta`, `tf`, `phase`,
//!   `cursor`, `limit`, `asc`; `PublishRequest.type`, `key`, `removed`;
//!   `SubRefreshRequest.type`, `track`, `untrack`. Unknown field numbers are
//!   skipped.
//! * `PublishRequest` has no field for Groupcast's `exclude_self` extension:
//!   it is always false over protobuf.
//! * A method's params always have the method's type here, so
//!   [`client::Command::params_not_object`] is never set; a field of the
//!   wrong wire type fails the frame ([`ProtoError::Message`]).
//! * Like the JSON decoder, one bad message fails the whole frame, and a
//!   frame with no messages at all (0 bytes) decodes to no commands.
//!
//! # Replies and pushes
//! JSON `data` is written as its bytes (the JSON text); absent data is
//! empty bytes. Fields the model does not have keep their zero value
//! (`Publication.delta`, `time`, `channel`, ..., `ConnectResult.time`,
//! `flag`, `dict`, `SubscribeResult.delta`, `id`, `type`, ...). The schema's
//! `Subscribe` push has only `recoverable`, `epoch`, `offset`, `positioned`
//! and `data`: [`encode_subscribe_push`] drops the other fields of the
//! [`client::SubscribeResult`] (the JSON push carries them all).
//!
//! # Not supported
//! Binary (non-JSON) data; dictionary compression (`ConnectResult.dict` is
//! never set, so frames never start with a codec marker byte); numeric
//! channel ids (`Push.id`, `SubscribeResult.id`); delta compression; map
//! subscriptions and `sub_refresh` tracking; pushes the JSON side has no
//! encoder for (`message`, `connect`, `disconnect`, `refresh`: their types
//! are here).

use std::collections::BTreeMap;
use std::sync::Arc;

use prost::Message as _;
use serde_json::value::RawValue;

use crate::client::{self, json_is_portable, RawJson};

// ---------------------------------------------------------------------------
// Schema types.
// ---------------------------------------------------------------------------

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct Error {
    #[prost(uint32, tag = "1")]
    pub code: u32,
    #[prost(string, tag = "2")]
    pub message: String,
    #[prost(bool, tag = "3")]
    pub temporary: bool,
}

/// Client to server. At most one request field is set; none is a pong
/// (id 0) or an unknown method.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct Command {
    #[prost(uint32, tag = "1")]
    pub id: u32,
    #[prost(message, optional, tag = "4")]
    pub connect: Option<ConnectRequest>,
    #[prost(message, optional, tag = "5")]
    pub subscribe: Option<SubscribeRequest>,
    #[prost(message, optional, tag = "6")]
    pub unsubscribe: Option<UnsubscribeRequest>,
    #[prost(message, optional, tag = "7")]
    pub publish: Option<PublishRequest>,
    #[prost(message, optional, tag = "8")]
    pub presence: Option<PresenceRequest>,
    #[prost(message, optional, tag = "9")]
    pub presence_stats: Option<PresenceStatsRequest>,
    #[prost(message, optional, tag = "10")]
    pub history: Option<HistoryRequest>,
    #[prost(message, optional, tag = "11")]
    pub ping: Option<PingRequest>,
    #[prost(message, optional, tag = "12")]
    pub send: Option<SendRequest>,
    #[prost(message, optional, tag = "13")]
    pub rpc: Option<RpcRequest>,
    #[prost(message, optional, tag = "14")]
    pub refresh: Option<RefreshRequest>,
    #[prost(message, optional, tag = "15")]
    pub sub_refresh: Option<SubRefreshRequest>,
}

/// Server to client: an answer (id > 0), a push (id 0, `push` set) or the
/// ping (empty).
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct Reply {
    #[prost(uint32, tag = "1")]
    pub id: u32,
    #[prost(message, optional, tag = "2")]
    pub error: Option<Error>,
    #[prost(message, optional, tag = "4")]
    pub push: Option<Push>,
    #[prost(message, optional, tag = "5")]
    pub connect: Option<ConnectResult>,
    #[prost(message, optional, tag = "6")]
    pub subscribe: Option<SubscribeResult>,
    #[prost(message, optional, tag = "7")]
    pub unsubscribe: Option<UnsubscribeResult>,
    #[prost(message, optional, tag = "8")]
    pub publish: Option<PublishResult>,
    #[prost(message, optional, tag = "9")]
    pub presence: Option<PresenceResult>,
    #[prost(message, optional, tag = "10")]
    pub presence_stats: Option<PresenceStatsResult>,
    #[prost(message, optional, tag = "11")]
    pub history: Option<HistoryResult>,
    #[prost(message, optional, tag = "12")]
    pub ping: Option<PingResult>,
    #[prost(message, optional, tag = "13")]
    pub rpc: Option<RpcResult>,
    #[prost(message, optional, tag = "14")]
    pub refresh: Option<RefreshResult>,
    #[prost(message, optional, tag = "15")]
    pub sub_refresh: Option<SubRefreshResult>,
}

/// An asynchronous message in a channel (or, for `connect`, `disconnect`
/// and `refresh`, about the connection).
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct Push {
    /// Numeric channel id (never sent by Groupcast).
    #[prost(int64, tag = "1")]
    pub id: i64,
    #[prost(string, tag = "2")]
    pub channel: String,
    /// The schema's `pub`.
    #[prost(message, optional, tag = "4")]
    pub publication: Option<Publication>,
    #[prost(message, optional, tag = "5")]
    pub join: Option<Join>,
    #[prost(message, optional, tag = "6")]
    pub leave: Option<Leave>,
    #[prost(message, optional, tag = "7")]
    pub unsubscribe: Option<Unsubscribe>,
    #[prost(message, optional, tag = "8")]
    pub message: Option<Message>,
    #[prost(message, optional, tag = "9")]
    pub subscribe: Option<Subscribe>,
    #[prost(message, optional, tag = "10")]
    pub connect: Option<Connect>,
    #[prost(message, optional, tag = "11")]
    pub disconnect: Option<Disconnect>,
    #[prost(message, optional, tag = "12")]
    pub refresh: Option<Refresh>,
}

/// Compression dictionary offered in a connect result (never by Groupcast).
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct Dictionary {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(bytes = "vec", tag = "2")]
    pub data: Vec<u8>,
    #[prost(string, tag = "3")]
    pub data_b64: String,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct ClientInfo {
    #[prost(string, tag = "1")]
    pub user: String,
    #[prost(string, tag = "2")]
    pub client: String,
    #[prost(bytes = "vec", tag = "3")]
    pub conn_info: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    pub chan_info: Vec<u8>,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct Publication {
    #[prost(bytes = "vec", tag = "4")]
    pub data: Vec<u8>,
    #[prost(message, optional, tag = "5")]
    pub info: Option<ClientInfo>,
    #[prost(uint64, tag = "6")]
    pub offset: u64,
    #[prost(btree_map = "string, string", tag = "7")]
    pub tags: BTreeMap<String, String>,
    #[prost(bool, tag = "8")]
    pub delta: bool,
    #[prost(int64, tag = "9")]
    pub time: i64,
    #[prost(string, tag = "10")]
    pub channel: String,
    #[prost(string, tag = "11")]
    pub key: String,
    #[prost(bool, tag = "12")]
    pub removed: bool,
    #[prost(sint64, tag = "13")]
    pub score: i64,
    #[prost(string, tag = "14")]
    pub epoch: String,
    #[prost(bytes = "vec", tag = "15")]
    pub prev_data: Vec<u8>,
    #[prost(uint64, tag = "16")]
    pub version: u64,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct Join {
    #[prost(message, optional, tag = "1")]
    pub info: Option<ClientInfo>,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct Leave {
    #[prost(message, optional, tag = "1")]
    pub info: Option<ClientInfo>,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct Unsubscribe {
    #[prost(uint32, tag = "2")]
    pub code: u32,
    #[prost(string, tag = "3")]
    pub reason: String,
}

/// Server-side subscription push.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct Subscribe {
    #[prost(bool, tag = "1")]
    pub recoverable: bool,
    #[prost(string, tag = "4")]
    pub epoch: String,
    #[prost(uint64, tag = "5")]
    pub offset: u64,
    #[prost(bool, tag = "6")]
    pub positioned: bool,
    #[prost(bytes = "vec", tag = "7")]
    pub data: Vec<u8>,
}

/// Asynchronous message push (server to client, no reply).
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct Message {
    #[prost(bytes = "vec", tag = "1")]
    pub data: Vec<u8>,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct Connect {
    #[prost(string, tag = "1")]
    pub client: String,
    #[prost(string, tag = "2")]
    pub version: String,
    #[prost(bytes = "vec", tag = "3")]
    pub data: Vec<u8>,
    #[prost(btree_map = "string, message", tag = "4")]
    pub subs: BTreeMap<String, SubscribeResult>,
    #[prost(bool, tag = "5")]
    pub expires: bool,
    #[prost(uint32, tag = "6")]
    pub ttl: u32,
    #[prost(uint32, tag = "7")]
    pub ping: u32,
    #[prost(bool, tag = "8")]
    pub pong: bool,
    #[prost(string, tag = "9")]
    pub session: String,
    #[prost(string, tag = "10")]
    pub node: String,
    #[prost(int64, tag = "11")]
    pub time: i64,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct Disconnect {
    #[prost(uint32, tag = "1")]
    pub code: u32,
    #[prost(string, tag = "2")]
    pub reason: String,
    #[prost(bool, tag = "3")]
    pub reconnect: bool,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct Refresh {
    #[prost(bool, tag = "1")]
    pub expires: bool,
    #[prost(uint32, tag = "2")]
    pub ttl: u32,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct ConnectRequest {
    #[prost(string, tag = "1")]
    pub token: String,
    #[prost(bytes = "vec", tag = "2")]
    pub data: Vec<u8>,
    #[prost(btree_map = "string, message", tag = "3")]
    pub subs: BTreeMap<String, SubscribeRequest>,
    #[prost(string, tag = "4")]
    pub name: String,
    #[prost(string, tag = "5")]
    pub version: String,
    #[prost(btree_map = "string, string", tag = "6")]
    pub headers: BTreeMap<String, String>,
    #[prost(int64, tag = "7")]
    pub flag: i64,
    #[prost(string, tag = "8")]
    pub dict: String,
    #[prost(string, tag = "9")]
    pub profile: String,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct ConnectResult {
    #[prost(string, tag = "1")]
    pub client: String,
    #[prost(string, tag = "2")]
    pub version: String,
    #[prost(bool, tag = "3")]
    pub expires: bool,
    #[prost(uint32, tag = "4")]
    pub ttl: u32,
    #[prost(bytes = "vec", tag = "5")]
    pub data: Vec<u8>,
    #[prost(btree_map = "string, message", tag = "6")]
    pub subs: BTreeMap<String, SubscribeResult>,
    #[prost(uint32, tag = "7")]
    pub ping: u32,
    #[prost(bool, tag = "8")]
    pub pong: bool,
    #[prost(string, tag = "9")]
    pub session: String,
    #[prost(string, tag = "10")]
    pub node: String,
    #[prost(int64, tag = "11")]
    pub time: i64,
    #[prost(int64, tag = "12")]
    pub flag: i64,
    #[prost(message, optional, tag = "13")]
    pub dict: Option<Dictionary>,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct RefreshRequest {
    #[prost(string, tag = "1")]
    pub token: String,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct RefreshResult {
    #[prost(string, tag = "1")]
    pub client: String,
    #[prost(string, tag = "2")]
    pub version: String,
    #[prost(bool, tag = "3")]
    pub expires: bool,
    #[prost(uint32, tag = "4")]
    pub ttl: u32,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct SubscribeRequest {
    #[prost(string, tag = "1")]
    pub channel: String,
    #[prost(string, tag = "2")]
    pub token: String,
    #[prost(bool, tag = "3")]
    pub recover: bool,
    #[prost(string, tag = "6")]
    pub epoch: String,
    #[prost(uint64, tag = "7")]
    pub offset: u64,
    #[prost(bytes = "vec", tag = "8")]
    pub data: Vec<u8>,
    #[prost(bool, tag = "9")]
    pub positioned: bool,
    #[prost(bool, tag = "10")]
    pub recoverable: bool,
    #[prost(bool, tag = "11")]
    pub join_leave: bool,
    #[prost(string, tag = "12")]
    pub delta: String,
    /// Tag filter (`tf`).
    #[prost(message, optional, tag = "13")]
    pub tf: Option<FilterNode>,
    #[prost(int64, tag = "14")]
    pub flag: i64,
    /// The schema's `type`.
    #[prost(int32, tag = "15")]
    pub kind: i32,
    #[prost(int32, tag = "16")]
    pub phase: i32,
    #[prost(string, tag = "17")]
    pub cursor: String,
    #[prost(int32, tag = "18")]
    pub limit: i32,
    #[prost(bool, tag = "19")]
    pub asc: bool,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct SubscribeResult {
    #[prost(bool, tag = "1")]
    pub expires: bool,
    #[prost(uint32, tag = "2")]
    pub ttl: u32,
    #[prost(bool, tag = "3")]
    pub recoverable: bool,
    #[prost(string, tag = "6")]
    pub epoch: String,
    #[prost(message, repeated, tag = "7")]
    pub publications: Vec<Publication>,
    #[prost(bool, tag = "8")]
    pub recovered: bool,
    #[prost(uint64, tag = "9")]
    pub offset: u64,
    #[prost(bool, tag = "10")]
    pub positioned: bool,
    #[prost(bytes = "vec", tag = "11")]
    pub data: Vec<u8>,
    #[prost(bool, tag = "12")]
    pub was_recovering: bool,
    #[prost(bool, tag = "13")]
    pub delta: bool,
    #[prost(int64, tag = "14")]
    pub id: i64,
    /// The schema's `type`.
    #[prost(int32, tag = "15")]
    pub kind: i32,
    #[prost(int32, tag = "16")]
    pub phase: i32,
    #[prost(string, tag = "17")]
    pub cursor: String,
    #[prost(message, repeated, tag = "18")]
    pub state: Vec<Publication>,
    #[prost(uint32, tag = "19")]
    pub publish_debounce: u32,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct KeyedItem {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(uint64, tag = "2")]
    pub version: u64,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct TrackBatch {
    #[prost(string, tag = "1")]
    pub signature: String,
    #[prost(message, repeated, tag = "2")]
    pub items: Vec<KeyedItem>,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct SubRefreshRequest {
    #[prost(string, tag = "1")]
    pub channel: String,
    #[prost(string, tag = "2")]
    pub token: String,
    /// The schema's `type`.
    #[prost(int32, tag = "3")]
    pub kind: i32,
    #[prost(message, repeated, tag = "4")]
    pub track: Vec<TrackBatch>,
    #[prost(string, repeated, tag = "5")]
    pub untrack: Vec<String>,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct SubRefreshResult {
    #[prost(bool, tag = "1")]
    pub expires: bool,
    #[prost(uint32, tag = "2")]
    pub ttl: u32,
    #[prost(message, repeated, tag = "3")]
    pub items: Vec<Publication>,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct UnsubscribeRequest {
    #[prost(string, tag = "1")]
    pub channel: String,
}

#[derive(Clone, Copy, PartialEq, ::prost::Message)]
pub struct UnsubscribeResult {}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct PublishRequest {
    #[prost(string, tag = "1")]
    pub channel: String,
    #[prost(bytes = "vec", tag = "2")]
    pub data: Vec<u8>,
    /// The schema's `type`.
    #[prost(int32, tag = "3")]
    pub kind: i32,
    #[prost(string, tag = "4")]
    pub key: String,
    #[prost(bool, tag = "5")]
    pub removed: bool,
}

#[derive(Clone, Copy, PartialEq, ::prost::Message)]
pub struct PublishResult {}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct PresenceRequest {
    #[prost(string, tag = "1")]
    pub channel: String,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct PresenceResult {
    #[prost(btree_map = "string, message", tag = "1")]
    pub presence: BTreeMap<String, ClientInfo>,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct PresenceStatsRequest {
    #[prost(string, tag = "1")]
    pub channel: String,
}

#[derive(Clone, Copy, PartialEq, ::prost::Message)]
pub struct PresenceStatsResult {
    #[prost(uint32, tag = "1")]
    pub num_clients: u32,
    #[prost(uint32, tag = "2")]
    pub num_users: u32,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct StreamPosition {
    #[prost(uint64, tag = "1")]
    pub offset: u64,
    #[prost(string, tag = "2")]
    pub epoch: String,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct HistoryRequest {
    #[prost(string, tag = "1")]
    pub channel: String,
    #[prost(int32, tag = "7")]
    pub limit: i32,
    #[prost(message, optional, tag = "8")]
    pub since: Option<StreamPosition>,
    #[prost(bool, tag = "9")]
    pub reverse: bool,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct HistoryResult {
    #[prost(message, repeated, tag = "1")]
    pub publications: Vec<Publication>,
    #[prost(string, tag = "2")]
    pub epoch: String,
    #[prost(uint64, tag = "3")]
    pub offset: u64,
}

#[derive(Clone, Copy, PartialEq, ::prost::Message)]
pub struct PingRequest {}

#[derive(Clone, Copy, PartialEq, ::prost::Message)]
pub struct PingResult {}

/// The schema's `RPCRequest`.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct RpcRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub data: Vec<u8>,
    #[prost(string, tag = "2")]
    pub method: String,
}

/// The schema's `RPCResult`.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct RpcResult {
    #[prost(bytes = "vec", tag = "1")]
    pub data: Vec<u8>,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct SendRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub data: Vec<u8>,
}

/// A node of a subscription's tag filter: a comparison (`op` empty) or
/// `and` / `or` / `not` over `nodes`. Read and dropped by Groupcast; prost's
/// recursion limit (100 levels) bounds how deep one may be.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct FilterNode {
    #[prost(string, tag = "1")]
    pub op: String,
    #[prost(string, tag = "2")]
    pub key: String,
    #[prost(string, tag = "3")]
    pub cmp: String,
    #[prost(string, tag = "4")]
    pub val: String,
    #[prost(string, repeated, tag = "5")]
    pub vals: Vec<String>,
    #[prost(message, repeated, tag = "6")]
    pub nodes: Vec<FilterNode>,
}

// ---------------------------------------------------------------------------
// Decoding commands.
// ---------------------------------------------------------------------------

/// Why a frame of commands was refused. Every error fails the whole frame,
/// as an undecodable JSON frame does (the session closes it with 3501).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtoError {
    /// The length prefix of the message at byte `at` is not a valid varint,
    /// or declares more bytes than the frame has left.
    Length { at: usize },
    /// The message at byte `at` is not a valid `Command`.
    Message {
        at: usize,
        error: prost::DecodeError,
    },
    /// A `data` field (`field`, e.g. `"publish.data"`) of the message at
    /// byte `at` is not JSON that [`json_is_portable`] accepts (only a
    /// publication may be binary).
    NonJsonData { at: usize, field: &'static str },
    /// More than [`client::MAX_COMMANDS_PER_FRAME`] messages in the frame.
    TooManyCommands,
}

impl std::fmt::Display for ProtoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProtoError::Length { at } => {
                write!(f, "bad or oversized length prefix at byte {at}")
            }
            ProtoError::Message { at, error } => {
                write!(f, "invalid command at byte {at}: {error}")
            }
            ProtoError::NonJsonData { at, field } => {
                write!(f, "{field} of the command at byte {at} is not JSON (binary data is not supported there)")
            }
            ProtoError::TooManyCommands => f.write_str(client::TOO_MANY_COMMANDS),
        }
    }
}

impl std::error::Error for ProtoError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ProtoError::Message { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// Decode every command in one binary frame (varint-length-prefixed
/// `Command` messages).
///
/// Same contract as [`client::decode_commands`]: any message that is not a
/// valid command fails the whole frame, and an empty frame holds no
/// commands. A length prefix is checked against the bytes left in the frame
/// before anything is read, so nothing is allocated for a declared length.
/// Every message takes at least one byte (the pong is `0x00`), so a frame
/// of n bytes yields at most n commands: the frame size limit bounds both.
pub fn decode_commands(frame: &[u8]) -> Result<Vec<client::Command>, ProtoError> {
    let mut out = Vec::new();
    let mut rest = frame;
    while !rest.is_empty() {
        if out.len() == client::MAX_COMMANDS_PER_FRAME {
            return Err(ProtoError::TooManyCommands);
        }
        let at = frame.len() - rest.len();
        let len =
            prost::decode_length_delimiter(&mut rest).map_err(|_| ProtoError::Length { at })?;
        if len > rest.len() {
            return Err(ProtoError::Length { at });
        }
        let (message, tail) = rest.split_at(len);
        rest = tail;
        let command =
            Command::decode(message).map_err(|error| ProtoError::Message { at, error })?;
        let command =
            command_to_model(command).map_err(|field| ProtoError::NonJsonData { at, field })?;
        out.push(command);
    }
    Ok(out)
}

/// `data` bytes as the JSON model has them; `Err(field)` when they are not
/// portable JSON. Empty bytes and `null` are absent (see the module doc).
fn json_data(bytes: &[u8], field: &'static str) -> Result<Option<RawJson>, &'static str> {
    if bytes.is_empty() {
        return Ok(None);
    }
    let raw: Box<RawValue> = serde_json::from_slice(bytes).map_err(|_| field)?;
    if !json_is_portable(raw.get()) {
        return Err(field);
    }
    Ok((raw.get() != "null").then(|| Arc::from(raw)))
}

fn subscribe_to_model(
    s: SubscribeRequest,
    field: &'static str,
) -> Result<client::SubscribeRequest, &'static str> {
    Ok(client::SubscribeRequest {
        data: json_data(&s.data, field)?,
        channel: s.channel,
        token: s.token,
        recover: s.recover,
        epoch: s.epoch,
        offset: s.offset,
        positioned: s.positioned,
        recoverable: s.recoverable,
        join_leave: s.join_leave,
        flag: s.flag,
        kind: s.kind,
        delta: s.delta,
    })
}

fn command_to_model(c: Command) -> Result<client::Command, &'static str> {
    let connect = match c.connect {
        None => None,
        Some(r) => Some(client::ConnectRequest {
            data: json_data(&r.data, "connect.data")?,
            subs: r
                .subs
                .into_iter()
                .map(|(k, s)| Ok((k, subscribe_to_model(s, "connect.subs.data")?)))
                .collect::<Result<_, &'static str>>()?,
            token: r.token,
            name: r.name,
            version: r.version,
        }),
    };
    let subscribe = c
        .subscribe
        .map(|s| subscribe_to_model(s, "subscribe.data"))
        .transpose()?;
    let publish = match c.publish {
        None => None,
        // Data that is not JSON is published as binary (the other fields'
        // data must be JSON).
        Some(p) => Some(match json_data(&p.data, "publish.data") {
            Ok(data) => client::PublishRequest {
                data,
                channel: p.channel,
                exclude_self: false,
                binary: None,
            },
            Err(_) => client::PublishRequest {
                data: None,
                channel: p.channel,
                exclude_self: false,
                binary: Some(bytes::Bytes::from(p.data)),
            },
        }),
    };
    let send = match c.send {
        None => None,
        Some(s) => Some(client::SendRequest {
            data: json_data(&s.data, "send.data")?,
        }),
    };
    let rpc = match c.rpc {
        None => None,
        Some(r) => Some(client::RpcRequest {
            data: json_data(&r.data, "rpc.data")?,
            method: r.method,
        }),
    };
    Ok(client::Command {
        id: c.id,
        connect,
        subscribe,
        unsubscribe: c
            .unsubscribe
            .map(|u| client::UnsubscribeRequest { channel: u.channel }),
        publish,
        presence: c
            .presence
            .map(|p| client::ChannelRequest { channel: p.channel }),
        presence_stats: c
            .presence_stats
            .map(|p| client::ChannelRequest { channel: p.channel }),
        history: c.history.map(|h| client::HistoryRequest {
            channel: h.channel,
            limit: h.limit,
            since: h.since.map(|s| client::StreamPosition {
                offset: s.offset,
                epoch: s.epoch,
            }),
            reverse: h.reverse,
        }),
        ping: c.ping.map(|_| client::Empty {}),
        send,
        rpc,
        refresh: c.refresh.map(|r| client::RefreshRequest { token: r.token }),
        sub_refresh: c.sub_refresh.map(|r| client::SubRefreshRequest {
            channel: r.channel,
            token: r.token,
        }),
        params_not_object: None,
    })
}

// ---------------------------------------------------------------------------
// Encoding replies and pushes.
// ---------------------------------------------------------------------------

fn json_bytes(raw: Option<&RawValue>) -> Vec<u8> {
    raw.map(|r| r.get().as_bytes().to_vec()).unwrap_or_default()
}

fn info_from_model(i: &client::ClientInfo) -> ClientInfo {
    ClientInfo {
        user: i.user.clone(),
        client: i.client.clone(),
        conn_info: json_bytes(i.conn_info.as_deref()),
        chan_info: json_bytes(i.chan_info.as_deref()),
    }
}

fn publication(
    data: &RawValue,
    info: Option<&client::ClientInfo>,
    offset: u64,
    tags: &BTreeMap<String, String>,
) -> Publication {
    Publication {
        data: data.get().as_bytes().to_vec(),
        info: info.map(info_from_model),
        offset,
        tags: tags.clone(),
        ..Default::default()
    }
}

/// A stored publication for a protobuf client. Binary data (a base64 JSON
/// string tagged `encoding: base64`, as JSON clients get it) goes back to its
/// bytes, without the tag, as live pushes carry it.
fn publication_from_model(p: &client::PublicationOut) -> Publication {
    if p.tags.get(ENCODING_TAG).map(String::as_str) == Some("base64") {
        let raw = serde_json::from_str::<String>(p.data.get())
            .ok()
            .and_then(|s| {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD.decode(s).ok()
            });
        if let Some(raw) = raw {
            let mut tags = p.tags.clone();
            tags.remove(ENCODING_TAG);
            return Publication {
                data: raw,
                info: p.info.as_ref().map(info_from_model),
                offset: p.offset,
                tags,
                ..Default::default()
            };
        }
    }
    publication(&p.data, p.info.as_ref(), p.offset, &p.tags)
}

/// The tag that marks binary data carried as base64 in JSON.
pub const ENCODING_TAG: &str = "encoding";

fn subscribe_result_from_model(s: &client::SubscribeResult) -> SubscribeResult {
    SubscribeResult {
        expires: s.expires,
        ttl: s.ttl,
        recoverable: s.recoverable,
        epoch: s.epoch.clone(),
        publications: s.publications.iter().map(publication_from_model).collect(),
        recovered: s.recovered,
        offset: s.offset,
        positioned: s.positioned,
        data: json_bytes(s.data.as_deref()),
        was_recovering: s.was_recovering,
        delta: s.delta,
        ..Default::default()
    }
}

fn reply_from_model(r: &client::Reply) -> Reply {
    Reply {
        id: r.id,
        error: r.error.map(|e| Error {
            code: e.code,
            message: e.message.to_owned(),
            temporary: e.temporary,
        }),
        push: None,
        connect: r.connect.as_ref().map(|c| ConnectResult {
            client: c.client.clone(),
            version: c.version.clone(),
            expires: c.expires,
            ttl: c.ttl,
            data: json_bytes(c.data.as_deref()),
            subs: c
                .subs
                .iter()
                .map(|(k, s)| (k.clone(), subscribe_result_from_model(s)))
                .collect(),
            ping: c.ping,
            pong: c.pong,
            session: c.session.clone(),
            node: c.node.clone(),
            ..Default::default()
        }),
        subscribe: r.subscribe.as_ref().map(subscribe_result_from_model),
        unsubscribe: r.unsubscribe.as_ref().map(|_| UnsubscribeResult {}),
        publish: r.publish.as_ref().map(|_| PublishResult {}),
        presence: r.presence.as_ref().map(|p| PresenceResult {
            presence: p
                .presence
                .iter()
                .map(|(k, i)| (k.clone(), info_from_model(i)))
                .collect(),
        }),
        presence_stats: r.presence_stats.as_ref().map(|s| PresenceStatsResult {
            num_clients: s.num_clients,
            num_users: s.num_users,
        }),
        history: r.history.as_ref().map(|h| HistoryResult {
            publications: h.publications.iter().map(publication_from_model).collect(),
            epoch: h.epoch.clone(),
            offset: h.offset,
        }),
        ping: r.ping.as_ref().map(|_| PingResult {}),
        rpc: r.rpc.as_ref().map(|x| RpcResult {
            data: json_bytes(x.data.as_deref()),
        }),
        refresh: r.refresh.as_ref().map(|x| RefreshResult {
            client: x.client.clone(),
            version: x.version.clone(),
            expires: x.expires,
            ttl: x.ttl,
        }),
        sub_refresh: r.sub_refresh.as_ref().map(|x| SubRefreshResult {
            expires: x.expires,
            ttl: x.ttl,
            items: Vec::new(),
        }),
    }
}

/// Encode a reply to a command (result or error), length-prefixed.
pub fn encode_reply(reply: &client::Reply) -> Vec<u8> {
    reply_from_model(reply).encode_length_delimited_to_vec()
}

/// An error reply with any code and message (a backend's error from an
/// event proxy, which [`client::Reply`]'s fixed table cannot hold).
pub fn encode_error_reply(id: u32, code: u32, message: &str) -> Vec<u8> {
    Reply {
        id,
        error: Some(Error {
            code,
            message: message.to_owned(),
            temporary: false,
        }),
        ..Default::default()
    }
    .encode_length_delimited_to_vec()
}

/// The server's ping: an empty `Reply`, length-prefixed (the byte `0x00`).
/// The client answers with an empty `Command`.
pub fn encode_ping() -> Vec<u8> {
    Reply::default().encode_length_delimited_to_vec()
}

fn encode_push(push: Push) -> Vec<u8> {
    Reply {
        push: Some(push),
        ..Default::default()
    }
    .encode_length_delimited_to_vec()
}

/// A publication push in `channel`, as [`client::encode_pub_push`]: encode
/// once per fan-out and share the bytes.
pub fn encode_pub_push(channel: &str, p: client::PubView<'_>) -> Vec<u8> {
    encode_push(Push {
        channel: channel.to_owned(),
        publication: Some(publication(p.data, p.info, p.offset, p.tags)),
        ..Default::default()
    })
}

/// A publication push whose data are `data` as they are: the full JSON
/// text, or (`delta`) a Fossil delta against the subscription's previous
/// publication's data.
pub fn encode_pub_push_bytes(
    channel: &str,
    data: &[u8],
    delta: bool,
    offset: u64,
    info: Option<&client::ClientInfo>,
    tags: &BTreeMap<String, String>,
) -> Vec<u8> {
    encode_push(Push {
        channel: channel.to_owned(),
        publication: Some(Publication {
            data: data.to_vec(),
            info: info.map(info_from_model),
            offset,
            tags: tags.clone(),
            delta,
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// A join push, as [`client::encode_join_push`].
pub fn encode_join_push(channel: &str, info: &client::ClientInfo) -> Vec<u8> {
    encode_push(Push {
        channel: channel.to_owned(),
        join: Some(Join {
            info: Some(info_from_model(info)),
        }),
        ..Default::default()
    })
}

/// A leave push, as [`client::encode_leave_push`].
pub fn encode_leave_push(channel: &str, info: &client::ClientInfo) -> Vec<u8> {
    encode_push(Push {
        channel: channel.to_owned(),
        leave: Some(Leave {
            info: Some(info_from_model(info)),
        }),
        ..Default::default()
    })
}

/// A server unsubscribe push, as [`client::encode_unsubscribe_push`].
pub fn encode_unsubscribe_push(channel: &str, code: u32, reason: &str) -> Vec<u8> {
    encode_push(Push {
        channel: channel.to_owned(),
        unsubscribe: Some(Unsubscribe {
            code,
            reason: reason.to_owned(),
        }),
        ..Default::default()
    })
}

/// A server-side subscription push, as [`client::encode_subscribe_push`].
/// The schema's `Subscribe` has no `expires`, `ttl`, `publications`,
/// `recovered` or `was_recovering`: those of `result` are not sent.
pub fn encode_subscribe_push(channel: &str, result: &client::SubscribeResult) -> Vec<u8> {
    encode_push(Push {
        channel: channel.to_owned(),
        subscribe: Some(Subscribe {
            recoverable: result.recoverable,
            epoch: result.epoch.clone(),
            offset: result.offset,
            positioned: result.positioned,
            data: json_bytes(result.data.as_deref()),
        }),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{PubView, PublicationOut};
    use crate::codes::ErrorCode;

    fn raw(s: &str) -> RawJson {
        Arc::from(RawValue::from_string(s.to_owned()).unwrap())
    }

    /// A hand-written protobuf writer with the schema's field numbers typed
    /// in again: it checks the derive attributes, which a round trip through
    /// the same types could not.
    mod wire {
        pub fn varint(mut v: u64) -> Vec<u8> {
            let mut out = Vec::new();
            loop {
                let b = (v & 0x7f) as u8;
                v >>= 7;
                if v == 0 {
                    out.push(b);
                    return out;
                }
                out.push(b | 0x80);
            }
        }
        /// A varint field (uint32, uint64, int32, int64, bool).
        pub fn uint(field: u32, v: u64) -> Vec<u8> {
            [varint(u64::from(field) << 3), varint(v)].concat()
        }
        /// A length-delimited field (string, bytes, message, map entry).
        pub fn bytes(field: u32, b: &[u8]) -> Vec<u8> {
            [
                varint((u64::from(field) << 3) | 2),
                varint(b.len() as u64),
                b.to_vec(),
            ]
            .concat()
        }
        pub fn str(field: u32, s: &str) -> Vec<u8> {
            bytes(field, s.as_bytes())
        }
        /// A `map<string, string>` entry.
        pub fn entry(field: u32, k: &str, v: &str) -> Vec<u8> {
            bytes(field, &[str(1, k), str(2, v)].concat())
        }
        /// One message with its varint length prefix.
        pub fn frame(message: &[u8]) -> Vec<u8> {
            [varint(message.len() as u64), message.to_vec()].concat()
        }
    }

    /// The model has no `PartialEq` (`RawValue` has none): compare the
    /// derived `Debug` output, which shows every field.
    fn same(a: &client::Command, b: &client::Command) {
        assert_eq!(format!("{a:#?}"), format!("{b:#?}"));
    }

    fn decode_one(frame: &[u8]) -> client::Command {
        let mut cmds = decode_commands(frame).unwrap();
        assert_eq!(cmds.len(), 1);
        cmds.pop().unwrap()
    }

    /// Every command type: the JSON decoding, the decoding of prost's
    /// encoding and the decoding of hand-written bytes are the same model.
    fn cases() -> Vec<(Option<&'static str>, String, Command, Vec<u8>)> {
        use wire::{bytes, str, uint};
        let sub_hand = |channel: &str| {
            [
                str(1, channel),
                str(2, "st"),
                uint(3, 1),
                str(6, "ep"),
                uint(7, 9_007_199_254_740_993),
                bytes(8, br#"{"x":"y"}"#),
                uint(9, 1),
                uint(10, 1),
                uint(11, 1),
                uint(14, 3),
                uint(15, 1),
            ]
            .concat()
        };
        let sub_pb = |channel: &str| SubscribeRequest {
            channel: channel.into(),
            token: "st".into(),
            recover: true,
            epoch: "ep".into(),
            offset: 9_007_199_254_740_993,
            data: br#"{"x":"y"}"#.to_vec(),
            positioned: true,
            recoverable: true,
            join_leave: true,
            flag: 3,
            kind: 1,
            ..Default::default()
        };
        let sub_json = r#""token":"st","recover":true,"epoch":"ep","offset":9007199254740993,"data":{"x":"y"},"positioned":true,"recoverable":true,"join_leave":true,"flag":3,"type":1"#;
        vec![
            (
                Some("connect"),
                r#"{"id":1,"connect":{"token":"t","data":{"a":1},"subs":{"chat:1":{"channel":"chat:1","token":"st","recover":true,"epoch":"ep","offset":9007199254740993,"data":{"x":"y"},"positioned":true,"recoverable":true,"join_leave":true,"flag":3,"type":1}},"name":"js","version":"1.0"}}"#,
                Command {
                    id: 1,
                    connect: Some(ConnectRequest {
                        token: "t".into(),
                        data: br#"{"a":1}"#.to_vec(),
                        subs: [("chat:1".to_string(), sub_pb("chat:1"))].into(),
                        name: "js".into(),
                        version: "1.0".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                [
                    uint(1, 1),
                    bytes(
                        4,
                        &[
                            str(1, "t"),
                            bytes(2, br#"{"a":1}"#),
                            bytes(3, &[str(1, "chat:1"), bytes(2, &sub_hand("chat:1"))].concat()),
                            str(4, "js"),
                            str(5, "1.0"),
                        ]
                        .concat(),
                    ),
                ]
                .concat(),
            ),
            (
                Some("subscribe"),
                // Built below from `sub_json`.
                "",
                Command {
                    id: 2,
                    subscribe: Some(sub_pb("room")),
                    ..Default::default()
                },
                [uint(1, 2), bytes(5, &sub_hand("room"))].concat(),
            ),
            (
                Some("unsubscribe"),
                r#"{"id":3,"unsubscribe":{"channel":"room"}}"#,
                Command {
                    id: 3,
                    unsubscribe: Some(UnsubscribeRequest {
                        channel: "room".into(),
                    }),
                    ..Default::default()
                },
                [uint(1, 3), bytes(6, &str(1, "room"))].concat(),
            ),
            (
                Some("publish"),
                r#"{"id":4,"publish":{"channel":"room","data":{"b":1, "a":[1,2]}}}"#,
                Command {
                    id: 4,
                    publish: Some(PublishRequest {
                        channel: "room".into(),
                        data: br#"{"b":1, "a":[1,2]}"#.to_vec(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                [
                    uint(1, 4),
                    bytes(7, &[str(1, "room"), bytes(2, br#"{"b":1, "a":[1,2]}"#)].concat()),
                ]
                .concat(),
            ),
            (
                Some("presence"),
                r#"{"id":5,"presence":{"channel":"p"}}"#,
                Command {
                    id: 5,
                    presence: Some(PresenceRequest {
                        channel: "p".into(),
                    }),
                    ..Default::default()
                },
                [uint(1, 5), bytes(8, &str(1, "p"))].concat(),
            ),
            (
                Some("presence_stats"),
                r#"{"id":6,"presence_stats":{"channel":"ps"}}"#,
                Command {
                    id: 6,
                    presence_stats: Some(PresenceStatsRequest {
                        channel: "ps".into(),
                    }),
                    ..Default::default()
                },
                [uint(1, 6), bytes(9, &str(1, "ps"))].concat(),
            ),
            (
                Some("history"),
                r#"{"id":7,"history":{"channel":"h","limit":-1,"since":{"offset":3,"epoch":"e"},"reverse":true}}"#,
                Command {
                    id: 7,
                    history: Some(HistoryRequest {
                        channel: "h".into(),
                        limit: -1,
                        since: Some(StreamPosition {
                            offset: 3,
                            epoch: "e".into(),
                        }),
                        reverse: true,
                    }),
                    ..Default::default()
                },
                [
                    uint(1, 7),
                    bytes(
                        10,
                        &[
                            str(1, "h"),
                            // int32 -1: sign-extended to ten bytes.
                            uint(7, -1i64 as u64),
                            bytes(8, &[uint(1, 3), str(2, "e")].concat()),
                            uint(9, 1),
                        ]
                        .concat(),
                    ),
                ]
                .concat(),
            ),
            (
                Some("history"),
                r#"{"id":70,"history":{"channel":"h","since":{}}}"#,
                Command {
                    id: 70,
                    history: Some(HistoryRequest {
                        channel: "h".into(),
                        since: Some(StreamPosition::default()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                [uint(1, 70), bytes(10, &[str(1, "h"), bytes(8, &[])].concat())].concat(),
            ),
            (
                Some("ping"),
                r#"{"id":8,"ping":{}}"#,
                Command {
                    id: 8,
                    ping: Some(PingRequest {}),
                    ..Default::default()
                },
                [uint(1, 8), bytes(11, &[])].concat(),
            ),
            (
                Some("send"),
                r#"{"send":{"data":"hi"}}"#,
                Command {
                    send: Some(SendRequest {
                        data: br#""hi""#.to_vec(),
                    }),
                    ..Default::default()
                },
                bytes(12, &bytes(1, br#""hi""#)),
            ),
            (
                Some("rpc"),
                r#"{"id":9,"rpc":{"data":{"q":[true,null]},"method":"m"}}"#,
                Command {
                    id: 9,
                    rpc: Some(RpcRequest {
                        data: br#"{"q":[true,null]}"#.to_vec(),
                        method: "m".into(),
                    }),
                    ..Default::default()
                },
                [
                    uint(1, 9),
                    bytes(13, &[bytes(1, br#"{"q":[true,null]}"#), str(2, "m")].concat()),
                ]
                .concat(),
            ),
            (
                Some("refresh"),
                r#"{"id":10,"refresh":{"token":"rt"}}"#,
                Command {
                    id: 10,
                    refresh: Some(RefreshRequest { token: "rt".into() }),
                    ..Default::default()
                },
                [uint(1, 10), bytes(14, &str(1, "rt"))].concat(),
            ),
            (
                Some("sub_refresh"),
                r#"{"id":11,"sub_refresh":{"channel":"room","token":"srt"}}"#,
                Command {
                    id: 11,
                    sub_refresh: Some(SubRefreshRequest {
                        channel: "room".into(),
                        token: "srt".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                [uint(1, 11), bytes(15, &[str(1, "room"), str(2, "srt")].concat())].concat(),
            ),
            // The pong, and an id without a method (answered 104).
            (None, "{}", Command::default(), Vec::new()),
            (
                None,
                r#"{"id":4294967295}"#,
                Command {
                    id: u32::MAX,
                    ..Default::default()
                },
                uint(1, u64::from(u32::MAX)),
            ),
        ]
        .into_iter()
        .map(|(m, json, pb, hand)| {
            let json = if json.is_empty() {
                format!(r#"{{"id":2,"subscribe":{{"channel":"room",{sub_json}}}}}"#)
            } else {
                json.to_owned()
            };
            (m, json, pb, hand)
        })
        .collect()
    }

    #[test]
    fn every_command_decodes_as_its_json_twin() {
        let cases = cases();
        assert_eq!(cases.len(), 15);
        let mut methods: Vec<_> = cases.iter().filter_map(|c| c.0).collect();
        methods.sort_unstable();
        methods.dedup();
        let mut all = client::METHODS.to_vec();
        all.sort_unstable();
        assert_eq!(methods, all, "every method of the model is covered");
        for (method, json, pb, hand) in cases {
            let from_json = client::decode_commands(json.as_bytes()).unwrap();
            assert_eq!(from_json.len(), 1, "{json}");
            let from_pb = decode_one(&pb.encode_length_delimited_to_vec());
            let from_hand = decode_one(&wire::frame(&hand));
            assert_eq!(from_pb.method(), method, "{json}");
            same(&from_pb, &from_json[0]);
            same(&from_hand, &from_json[0]);
            // The hand-written bytes are what prost writes, and decode back.
            assert_eq!(pb.encode_to_vec(), hand, "{json}");
            assert_eq!(Command::decode(&hand[..]).unwrap(), pb);
        }
    }

    #[test]
    fn fields_decoded_are_the_ones_sent() {
        // A spot check on values, beside the comparison with JSON above.
        let cases = cases();
        let connect = decode_one(&cases[0].2.encode_length_delimited_to_vec());
        let c = connect.connect.as_ref().unwrap();
        assert_eq!(c.data.as_ref().unwrap().get(), r#"{"a":1}"#);
        let s = &c.subs["chat:1"];
        assert_eq!(
            (s.offset, s.flag, s.kind, s.join_leave),
            (9_007_199_254_740_993, 3, 1, true)
        );
        assert_eq!(s.data.as_ref().unwrap().get(), r#"{"x":"y"}"#);
        let history = decode_one(&cases[6].2.encode_length_delimited_to_vec());
        let h = history.history.unwrap();
        assert_eq!(h.limit, -1);
        assert_eq!(
            h.since,
            Some(client::StreamPosition {
                offset: 3,
                epoch: "e".into()
            })
        );
        let publish = decode_one(&cases[3].2.encode_length_delimited_to_vec());
        let p = publish.publish.unwrap();
        assert_eq!(
            p.data.unwrap().get(),
            r#"{"b":1, "a":[1,2]}"#,
            "kept verbatim"
        );
        assert!(!p.exclude_self);
    }

    #[test]
    fn the_docs_example_is_a_subscribe() {
        // centrifugal.dev's client protocol page: {"id":2,"subscribe":
        // {"channel":"chat:42"}} is these 13 bytes in protobuf.
        let message = b"\x08\x02\x2a\x09\x0a\x07chat:42";
        let pb = Command {
            id: 2,
            subscribe: Some(SubscribeRequest {
                channel: "chat:42".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(pb.encode_to_vec(), message);
        let mut frame = vec![13];
        frame.extend_from_slice(message);
        let cmd = decode_one(&frame);
        assert_eq!(cmd.id, 2);
        assert_eq!(cmd.subscribe.unwrap().channel, "chat:42");
    }

    #[test]
    fn fields_the_model_lacks_and_unknown_fields_are_skipped() {
        let pb = Command {
            id: 1,
            connect: Some(ConnectRequest {
                token: "t".into(),
                headers: [("h".to_string(), "v".to_string())].into(),
                flag: 5,
                dict: "d".into(),
                profile: "p".into(),
                subs: [(
                    "a".to_string(),
                    SubscribeRequest {
                        channel: "a".into(),
                        delta: "fossil".into(),
                        tf: Some(FilterNode {
                            op: "and".into(),
                            nodes: vec![FilterNode {
                                key: "k".into(),
                                cmp: "eq".into(),
                                val: "v".into(),
                                ..Default::default()
                            }],
                            ..Default::default()
                        }),
                        phase: 1,
                        cursor: "c".into(),
                        limit: 5,
                        asc: true,
                        ..Default::default()
                    },
                )]
                .into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut message = pb.encode_to_vec();
        // Field 99, varint 7; field 100, bytes "xy": not in the schema.
        message.extend([0x98, 0x06, 0x07, 0xa2, 0x06, 0x02, b'x', b'y']);
        let cmd = decode_one(&wire::frame(&message));
        let json = client::decode_commands(
            br#"{"id":1,"connect":{"token":"t","headers":{"h":"v"},"subs":{"a":{"channel":"a","delta":"fossil"}}}}"#,
        )
        .unwrap();
        same(&cmd, &json[0]);

        let publish = Command {
            id: 2,
            publish: Some(PublishRequest {
                channel: "m".into(),
                data: b"1".to_vec(),
                kind: 1,
                key: "k".into(),
                removed: true,
            }),
            ..Default::default()
        };
        let json = client::decode_commands(br#"{"id":2,"publish":{"channel":"m","data":1}}"#);
        same(
            &decode_one(&publish.encode_length_delimited_to_vec()),
            &json.unwrap()[0],
        );

        let track = Command {
            id: 3,
            sub_refresh: Some(SubRefreshRequest {
                channel: "m".into(),
                kind: 1,
                track: vec![TrackBatch {
                    signature: "s".into(),
                    items: vec![KeyedItem {
                        key: "k".into(),
                        version: 2,
                    }],
                }],
                untrack: vec!["u".into()],
                ..Default::default()
            }),
            ..Default::default()
        };
        let json = client::decode_commands(br#"{"id":3,"sub_refresh":{"channel":"m"}}"#);
        same(
            &decode_one(&track.encode_length_delimited_to_vec()),
            &json.unwrap()[0],
        );
    }

    #[test]
    fn several_commands_in_one_frame() {
        let cases = cases();
        let mut frame = Vec::new();
        let mut json = Vec::new();
        for (_, j, pb, _) in &cases {
            frame.extend(pb.encode_length_delimited_to_vec());
            json.extend_from_slice(j.as_bytes());
            json.push(b'\n');
        }
        let from_pb = decode_commands(&frame).unwrap();
        let from_json = client::decode_commands(&json).unwrap();
        assert_eq!(from_pb.len(), cases.len());
        assert_eq!(from_json.len(), cases.len());
        for (a, b) in from_pb.iter().zip(&from_json) {
            same(a, b);
        }
        assert_eq!(from_pb[0].id, 1);
        assert_eq!(from_pb[13].method(), None, "the pong keeps its place");
        // Three pongs: three empty messages.
        let pongs = decode_commands(&[0, 0, 0]).unwrap();
        assert_eq!(pongs.len(), 3);
        assert!(pongs.iter().all(|c| c.id == 0 && c.method().is_none()));
    }

    #[test]
    fn an_empty_frame_holds_no_commands_as_in_json() {
        assert!(decode_commands(b"").unwrap().is_empty());
        assert!(client::decode_commands(b"").unwrap().is_empty());
    }

    fn two_commands() -> (Vec<u8>, usize) {
        let cases = cases();
        let first = cases[0].2.encode_length_delimited_to_vec();
        let second = cases[3].2.encode_length_delimited_to_vec();
        let boundary = first.len();
        ([first, second].concat(), boundary)
    }

    #[test]
    fn truncated_frames_are_errors() {
        let (frame, boundary) = two_commands();
        assert_eq!(decode_commands(&frame).unwrap().len(), 2);
        for cut in 1..frame.len() {
            let got = decode_commands(&frame[..cut]);
            if cut == boundary {
                assert_eq!(got.unwrap().len(), 1);
            } else {
                let at = if cut < boundary { 0 } else { boundary };
                assert_eq!(got.unwrap_err(), ProtoError::Length { at }, "cut at {cut}");
            }
        }
    }

    #[test]
    fn oversized_and_malformed_lengths_are_errors() {
        let length = |frame: &[u8]| decode_commands(frame).unwrap_err();
        assert_eq!(length(&[5, 0x08, 0x01]), ProtoError::Length { at: 0 });
        // u64::MAX as a length.
        let huge = wire::varint(u64::MAX);
        assert_eq!(huge.len(), 10);
        assert_eq!(length(&huge), ProtoError::Length { at: 0 });
        // A varint that never ends, and one over ten bytes.
        assert_eq!(length(&[0x80]), ProtoError::Length { at: 0 });
        assert_eq!(length(&[0xff; 11]), ProtoError::Length { at: 0 });
        // 2^32 + 2 would be 2 if the length were cut to 32 bits.
        let mut frame = wire::varint((1 << 32) + 2);
        frame.extend([0x08, 0x01]);
        assert_eq!(length(&frame), ProtoError::Length { at: 0 });
        // A valid command, then a length beyond the frame.
        let (valid, boundary) = two_commands();
        let mut frame = valid[..boundary].to_vec();
        frame.extend([100, 0x08]);
        assert_eq!(length(&frame), ProtoError::Length { at: boundary });
    }

    #[test]
    fn garbage_messages_are_errors() {
        let message_error = |frame: &[u8]| match decode_commands(frame) {
            Err(ProtoError::Message { at, .. }) => at,
            other => panic!("{frame:?}: {other:?}"),
        };
        // Wire type 7 does not exist.
        assert_eq!(message_error(&[1, 0x0f]), 0);
        // `id` (a varint) sent as bytes.
        assert_eq!(message_error(&[3, 0x0a, 0x01, 0x00]), 0);
        // `subscribe` (a message) sent as a varint.
        assert_eq!(message_error(&[2, 0x28, 0x01]), 0);
        // A channel that is not UTF-8.
        let bad = wire::frame(&wire::bytes(5, &wire::bytes(1, &[0xff, 0xfe])));
        assert_eq!(message_error(&bad), 0);
        // A nested length beyond its message.
        assert_eq!(message_error(&[3, 0x2a, 0x05, 0x0a]), 0);
        // Field number 0.
        assert_eq!(message_error(&[2, 0x00, 0x01]), 0);
        // A bad second message fails the whole frame.
        let (valid, boundary) = two_commands();
        let mut frame = valid[..boundary].to_vec();
        frame.extend([1, 0x0f]);
        assert_eq!(message_error(&frame), boundary);
        // A tag filter nested past prost's recursion limit: an error, not
        // a stack overflow.
        let mut node = wire::str(1, "not");
        for _ in 0..200 {
            node = [wire::str(1, "not"), wire::bytes(6, &node)].concat();
        }
        let sub = [wire::str(1, "a"), wire::bytes(13, &node)].concat();
        let frame = wire::frame(&wire::bytes(5, &sub));
        assert_eq!(message_error(&frame), 0);
    }

    /// xorshift64: deterministic noise without a dependency.
    fn noise(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    #[test]
    fn random_and_mutated_frames_never_panic() {
        let mut seed = 0x9e37_79b9_7f4a_7c15;
        let mut errors = 0;
        for _ in 0..20_000 {
            let len = (noise(&mut seed) % 48) as usize;
            let frame: Vec<u8> = (0..len).map(|_| noise(&mut seed) as u8).collect();
            errors += usize::from(decode_commands(&frame).is_err());
        }
        assert!(errors > 10_000, "random bytes are mostly refused: {errors}");
        // Every single-byte change of a valid frame.
        let (valid, _) = two_commands();
        for i in 0..valid.len() {
            for b in [0x00, 0x01, 0x7f, 0x80, 0xff, valid[i] ^ 0x08] {
                let mut frame = valid.clone();
                frame[i] = b;
                let _ = decode_commands(&frame);
            }
        }
    }

    #[test]
    fn publish_data_that_is_not_portable_json_is_binary() {
        let publish = |data: &[u8]| Command {
            id: 1,
            publish: Some(PublishRequest {
                channel: "c".into(),
                data: data.to_vec(),
                ..Default::default()
            }),
            ..Default::default()
        };
        for data in [
            &b"\x00\x01\x02\xff"[..],
            b"plain text",
            b"{\"a\":1} trailing",
            b"{\"a\":",
            b"\xff\xfe{}",
            // Valid JSON grammar, refused by strict decoders.
            b"1e999",
            br#"{"s":"\udbbb"}"#,
        ] {
            let c = decode_commands(&publish(data).encode_length_delimited_to_vec()).unwrap();
            let p = c[0].publish.as_ref().unwrap();
            assert!(p.data.is_none(), "{data:?}");
            assert_eq!(p.binary.as_deref(), Some(data), "{data:?}");
        }
        // JSON stays JSON.
        let c = decode_commands(&publish(b"{\"a\":1}").encode_length_delimited_to_vec()).unwrap();
        let p = c[0].publish.as_ref().unwrap();
        assert_eq!(p.data.as_ref().unwrap().get(), "{\"a\":1}");
        assert!(p.binary.is_none());
    }

    #[test]
    fn other_data_that_is_not_portable_json_is_its_own_error() {
        // Every data field of a command.
        let binary = b"\x89PNG".to_vec();
        let cases: [(Command, &str); 5] = [
            (
                Command {
                    connect: Some(ConnectRequest {
                        data: binary.clone(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                "connect.data",
            ),
            (
                Command {
                    connect: Some(ConnectRequest {
                        subs: [(
                            "a".to_string(),
                            SubscribeRequest {
                                data: binary.clone(),
                                ..Default::default()
                            },
                        )]
                        .into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                "connect.subs.data",
            ),
            (
                Command {
                    subscribe: Some(SubscribeRequest {
                        data: binary.clone(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                "subscribe.data",
            ),
            (
                Command {
                    send: Some(SendRequest {
                        data: binary.clone(),
                    }),
                    ..Default::default()
                },
                "send.data",
            ),
            (
                Command {
                    rpc: Some(RpcRequest {
                        data: binary.clone(),
                        method: "m".into(),
                    }),
                    ..Default::default()
                },
                "rpc.data",
            ),
        ];
        for (cmd, field) in cases {
            // Second in its frame: `at` is where its length prefix starts.
            let frame = [vec![0], cmd.encode_length_delimited_to_vec()].concat();
            let err = decode_commands(&frame).unwrap_err();
            assert_eq!(err, ProtoError::NonJsonData { at: 1, field });
            assert!(err.to_string().contains("binary data is not supported"));
        }
    }

    #[test]
    fn accepted_data_is_what_the_json_decoder_makes() {
        let publish = |data: &[u8]| {
            decode_one(
                &Command {
                    id: 1,
                    publish: Some(PublishRequest {
                        channel: "c".into(),
                        data: data.to_vec(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }
                .encode_length_delimited_to_vec(),
            )
        };
        let json = |data: &str| {
            let line = format!(r#"{{"id":1,"publish":{{"channel":"c","data":{data}}}}}"#);
            client::decode_commands(line.as_bytes()).unwrap().remove(0)
        };
        for data in [
            r#"{"a":1}"#,
            " {\"a\" : [1, 2.5e3, \"\\ud83d\\ude00\"]}\t",
            "null",
            "\"text\"",
            "-0",
            "[]",
        ] {
            same(&publish(data.as_bytes()), &json(data));
        }
        // Empty bytes and `null` are an absent `data`, as in JSON.
        assert!(publish(b"").publish.unwrap().data.is_none());
        assert!(publish(b"null").publish.unwrap().data.is_none());
        same(&publish(b""), &decode_one(&publish_frame_without_data()));
    }

    fn publish_frame_without_data() -> Vec<u8> {
        wire::frame(&[wire::uint(1, 1), wire::bytes(7, &wire::str(1, "c"))].concat())
    }

    #[test]
    fn deep_data_decodes_without_recursion() {
        std::thread::Builder::new()
            .stack_size(128 * 1024)
            .spawn(|| {
                let depth = 30_000;
                let data = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
                let frame = Command {
                    id: 1,
                    publish: Some(PublishRequest {
                        channel: "a".into(),
                        data: data.into_bytes(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }
                .encode_length_delimited_to_vec();
                let cmd = decode_one(&frame);
                let data = cmd.publish.unwrap().data.unwrap();
                assert_eq!(data.get().len(), 2 * depth);
            })
            .unwrap()
            .join()
            .unwrap();
    }

    // --- Replies and pushes -------------------------------------------------

    fn decode_replies(frame: &[u8]) -> Vec<Reply> {
        let mut rest = frame;
        let mut out = Vec::new();
        while !rest.is_empty() {
            out.push(Reply::decode_length_delimited(&mut rest).unwrap());
        }
        out
    }

    fn one_reply(frame: &[u8]) -> Reply {
        let mut replies = decode_replies(frame);
        assert_eq!(replies.len(), 1);
        replies.pop().unwrap()
    }

    fn info() -> client::ClientInfo {
        client::ClientInfo {
            user: "u".into(),
            client: "c1".into(),
            conn_info: Some(raw(r#"{"n":1}"#)),
            chan_info: Some(raw("[2]")),
        }
    }

    fn publication_out(offset: u64) -> PublicationOut {
        PublicationOut {
            data: raw(r#"{"x":1}"#),
            info: Some(info()),
            offset,
            tags: [("k".to_string(), "v".to_string())].into(),
        }
    }

    fn check_info(i: &ClientInfo) {
        assert_eq!(i.user, "u");
        assert_eq!(i.client, "c1");
        assert_eq!(i.conn_info, br#"{"n":1}"#);
        assert_eq!(i.chan_info, b"[2]");
    }

    fn check_publication(p: &Publication, offset: u64) {
        assert_eq!(p.data, br#"{"x":1}"#);
        check_info(p.info.as_ref().unwrap());
        assert_eq!(p.offset, offset);
        assert_eq!(p.tags, [("k".to_string(), "v".to_string())].into());
        assert_eq!(
            Publication {
                data: Vec::new(),
                info: None,
                offset: 0,
                tags: BTreeMap::new(),
                ..p.clone()
            },
            Publication::default(),
            "nothing else set"
        );
    }

    fn subscribe_result() -> client::SubscribeResult {
        client::SubscribeResult {
            expires: true,
            ttl: 30,
            recoverable: true,
            epoch: "ep".into(),
            publications: vec![publication_out(8), publication_out(9)],
            recovered: true,
            offset: 9,
            positioned: true,
            data: Some(raw(r#"{"d":true}"#)),
            was_recovering: true,
            delta: true,
        }
    }

    fn check_subscribe_result(s: &SubscribeResult) {
        assert!(s.expires && s.recoverable && s.recovered && s.positioned && s.was_recovering);
        assert!(s.delta, "delta negotiated");
        assert_eq!(s.ttl, 30);
        assert_eq!(s.epoch, "ep");
        assert_eq!(s.offset, 9);
        assert_eq!(s.data, br#"{"d":true}"#);
        assert_eq!(s.publications.len(), 2);
        check_publication(&s.publications[0], 8);
        check_publication(&s.publications[1], 9);
        assert!(s.id == 0 && s.kind == 0 && s.state.is_empty());
    }

    /// Only the named result is set, with the command's id and no error.
    fn only(r: &Reply, id: u32, name: &str) {
        assert_eq!(r.id, id);
        let set = [
            ("error", r.error.is_some()),
            ("push", r.push.is_some()),
            ("connect", r.connect.is_some()),
            ("subscribe", r.subscribe.is_some()),
            ("unsubscribe", r.unsubscribe.is_some()),
            ("publish", r.publish.is_some()),
            ("presence", r.presence.is_some()),
            ("presence_stats", r.presence_stats.is_some()),
            ("history", r.history.is_some()),
            ("ping", r.ping.is_some()),
            ("rpc", r.rpc.is_some()),
            ("refresh", r.refresh.is_some()),
            ("sub_refresh", r.sub_refresh.is_some()),
        ];
        let set: Vec<_> = set.iter().filter(|s| s.1).map(|s| s.0).collect();
        assert_eq!(set, [name]);
    }

    #[test]
    fn connect_reply() {
        let reply = client::Reply {
            id: 1,
            connect: Some(client::ConnectResult {
                client: "cid".into(),
                version: "0.1".into(),
                expires: true,
                ttl: 60,
                data: Some(raw(r#"{"hello":"world"}"#)),
                subs: [("srv".to_string(), subscribe_result())].into(),
                ping: 25,
                pong: true,
                session: "s".into(),
                node: "n".into(),
            }),
            ..Default::default()
        };
        let r = one_reply(&encode_reply(&reply));
        only(&r, 1, "connect");
        let c = r.connect.unwrap();
        assert_eq!(
            (c.client.as_str(), c.version.as_str(), c.expires, c.ttl),
            ("cid", "0.1", true, 60)
        );
        assert_eq!(c.data, br#"{"hello":"world"}"#);
        assert_eq!(c.subs.len(), 1);
        check_subscribe_result(&c.subs["srv"]);
        assert_eq!((c.ping, c.pong), (25, true));
        assert_eq!((c.session.as_str(), c.node.as_str()), ("s", "n"));
        assert_eq!((c.time, c.flag, c.dict), (0, 0, None));
    }

    #[test]
    fn subscribe_reply() {
        let reply = client::Reply {
            id: 2,
            subscribe: Some(subscribe_result()),
            ..Default::default()
        };
        let r = one_reply(&encode_reply(&reply));
        only(&r, 2, "subscribe");
        check_subscribe_result(r.subscribe.as_ref().unwrap());
        // An empty result is still a result: the field is present.
        let empty = client::Reply {
            id: 3,
            subscribe: Some(client::SubscribeResult::default()),
            ..Default::default()
        };
        let r = one_reply(&encode_reply(&empty));
        only(&r, 3, "subscribe");
        assert_eq!(r.subscribe.unwrap(), SubscribeResult::default());
    }

    #[test]
    fn replies_without_fields() {
        let cases: [(client::Reply, &str); 3] = [
            (
                client::Reply {
                    id: 4,
                    unsubscribe: Some(client::Empty {}),
                    ..Default::default()
                },
                "unsubscribe",
            ),
            (
                client::Reply {
                    id: 4,
                    publish: Some(client::Empty {}),
                    ..Default::default()
                },
                "publish",
            ),
            (
                client::Reply {
                    id: 4,
                    ping: Some(client::Empty {}),
                    ..Default::default()
                },
                "ping",
            ),
        ];
        for (reply, name) in cases {
            only(&one_reply(&encode_reply(&reply)), 4, name);
        }
        // Field 8 (publish), empty: the bytes are known.
        let publish = client::Reply {
            id: 4,
            publish: Some(client::Empty {}),
            ..Default::default()
        };
        assert_eq!(encode_reply(&publish), [4, 0x08, 4, 0x42, 0]);
    }

    #[test]
    fn presence_replies() {
        let mut other = info();
        other.conn_info = None;
        other.chan_info = None;
        other.client = "c2".into();
        let reply = client::Reply {
            id: 5,
            presence: Some(client::PresenceResult {
                presence: [("c1".to_string(), info()), ("c2".to_string(), other)].into(),
            }),
            ..Default::default()
        };
        let r = one_reply(&encode_reply(&reply));
        only(&r, 5, "presence");
        let p = r.presence.unwrap().presence;
        assert_eq!(p.len(), 2);
        check_info(&p["c1"]);
        assert_eq!(
            p["c2"],
            ClientInfo {
                user: "u".into(),
                client: "c2".into(),
                conn_info: Vec::new(),
                chan_info: Vec::new(),
            }
        );

        let stats = client::Reply {
            id: 6,
            presence_stats: Some(client::PresenceStatsResult {
                num_clients: 3,
                num_users: 2,
            }),
            ..Default::default()
        };
        let bytes = encode_reply(&stats);
        let r = one_reply(&bytes);
        only(&r, 6, "presence_stats");
        assert_eq!(
            r.presence_stats.unwrap(),
            PresenceStatsResult {
                num_clients: 3,
                num_users: 2
            }
        );
        let hand = [
            wire::uint(1, 6),
            wire::bytes(10, &[wire::uint(1, 3), wire::uint(2, 2)].concat()),
        ]
        .concat();
        assert_eq!(bytes, wire::frame(&hand));
    }

    #[test]
    fn history_reply() {
        let reply = client::Reply {
            id: 7,
            history: Some(client::HistoryResult {
                publications: vec![publication_out(1), publication_out(2)],
                epoch: "ep".into(),
                offset: 2,
            }),
            ..Default::default()
        };
        let r = one_reply(&encode_reply(&reply));
        only(&r, 7, "history");
        let h = r.history.unwrap();
        assert_eq!(h.publications.len(), 2);
        check_publication(&h.publications[0], 1);
        check_publication(&h.publications[1], 2);
        assert_eq!((h.epoch.as_str(), h.offset), ("ep", 2));
    }

    #[test]
    fn rpc_and_refresh_replies() {
        let rpc = client::Reply {
            id: 8,
            rpc: Some(client::RpcResult {
                data: Some(raw(r#"{"r":[1]}"#)),
            }),
            ..Default::default()
        };
        let r = one_reply(&encode_reply(&rpc));
        only(&r, 8, "rpc");
        assert_eq!(r.rpc.unwrap().data, br#"{"r":[1]}"#);
        let rpc = client::Reply {
            id: 8,
            rpc: Some(client::RpcResult { data: None }),
            ..Default::default()
        };
        assert!(one_reply(&encode_reply(&rpc)).rpc.unwrap().data.is_empty());

        let refresh = client::Reply {
            id: 9,
            refresh: Some(client::RefreshResult {
                client: "cid".into(),
                version: "0.1".into(),
                expires: true,
                ttl: 120,
            }),
            ..Default::default()
        };
        let r = one_reply(&encode_reply(&refresh));
        only(&r, 9, "refresh");
        assert_eq!(
            r.refresh.unwrap(),
            RefreshResult {
                client: "cid".into(),
                version: "0.1".into(),
                expires: true,
                ttl: 120
            }
        );

        let sub_refresh = client::Reply {
            id: 10,
            sub_refresh: Some(client::SubRefreshResult {
                expires: true,
                ttl: 7,
            }),
            ..Default::default()
        };
        let r = one_reply(&encode_reply(&sub_refresh));
        only(&r, 10, "sub_refresh");
        assert_eq!(
            r.sub_refresh.unwrap(),
            SubRefreshResult {
                expires: true,
                ttl: 7,
                items: Vec::new()
            }
        );
    }

    #[test]
    fn error_replies() {
        for code in ErrorCode::ALL {
            let r = one_reply(&encode_reply(&client::Reply::error(11, code)));
            only(&r, 11, "error");
            assert_eq!(
                r.error.unwrap(),
                Error {
                    code: code.code,
                    message: code.message.into(),
                    temporary: code.temporary,
                }
            );
        }
        let bytes = encode_reply(&client::Reply::error(1, ErrorCode::INTERNAL));
        let error = [
            wire::uint(1, 100),
            wire::str(2, "internal server error"),
            wire::uint(3, 1),
        ]
        .concat();
        let hand = [wire::uint(1, 1), wire::bytes(2, &error)].concat();
        assert_eq!(bytes, wire::frame(&hand));
    }

    #[test]
    fn ping_is_an_empty_reply() {
        assert_eq!(encode_ping(), [0]);
        assert_eq!(one_reply(&encode_ping()), Reply::default());
    }

    /// A push: id 0, no error, no result; returns the push.
    fn push_of(frame: &[u8]) -> Push {
        let r = one_reply(frame);
        only(&r, 0, "push");
        r.push.unwrap()
    }

    #[test]
    fn pub_push() {
        let tags = [("k".to_string(), "v".to_string())].into();
        let data = raw(r#"{"x":1}"#);
        let info = info();
        let bytes = encode_pub_push(
            "news",
            PubView {
                data: &data,
                offset: 4,
                info: Some(&info),
                tags: &tags,
                delta: false,
            },
        );
        let p = push_of(&bytes);
        assert_eq!(p.channel, "news");
        assert_eq!(p.id, 0);
        check_publication(p.publication.as_ref().unwrap(), 4);
        assert_eq!(
            Push {
                channel: String::new(),
                publication: None,
                ..p
            },
            Push::default(),
            "only the channel and the publication"
        );
        // The same, written by hand from the schema's numbers.
        let info = [
            wire::str(1, "u"),
            wire::str(2, "c1"),
            wire::bytes(3, br#"{"n":1}"#),
            wire::bytes(4, b"[2]"),
        ]
        .concat();
        let publication = [
            wire::bytes(4, br#"{"x":1}"#),
            wire::bytes(5, &info),
            wire::uint(6, 4),
            wire::entry(7, "k", "v"),
        ]
        .concat();
        let push = [wire::str(2, "news"), wire::bytes(4, &publication)].concat();
        assert_eq!(bytes, wire::frame(&wire::bytes(4, &push)));

        // No info, no tags, offset 0: only the data.
        let empty = BTreeMap::new();
        let bytes = encode_pub_push(
            "news",
            PubView {
                data: &data,
                offset: 0,
                info: None,
                tags: &empty,
                delta: false,
            },
        );
        let p = push_of(&bytes).publication.unwrap();
        assert_eq!(
            p,
            Publication {
                data: br#"{"x":1}"#.to_vec(),
                ..Default::default()
            }
        );
    }

    #[test]
    fn join_and_leave_pushes() {
        let info = info();
        let join = push_of(&encode_join_push("room", &info));
        assert_eq!(join.channel, "room");
        check_info(join.join.as_ref().unwrap().info.as_ref().unwrap());
        assert!(join.leave.is_none() && join.publication.is_none());
        let leave = push_of(&encode_leave_push("room", &info));
        assert_eq!(leave.channel, "room");
        check_info(leave.leave.as_ref().unwrap().info.as_ref().unwrap());
        assert!(leave.join.is_none());

        let mut bare = info.clone();
        bare.conn_info = None;
        bare.chan_info = None;
        let info = [wire::str(1, "u"), wire::str(2, "c1")].concat();
        for (bytes, field) in [
            (encode_join_push("room", &bare), 5),
            (encode_leave_push("room", &bare), 6),
        ] {
            let push = [
                wire::str(2, "room"),
                wire::bytes(field, &wire::bytes(1, &info)),
            ]
            .concat();
            assert_eq!(bytes, wire::frame(&wire::bytes(4, &push)));
        }
    }

    #[test]
    fn unsubscribe_push() {
        let bytes = encode_unsubscribe_push("room", 2000, "server unsubscribe");
        let p = push_of(&bytes);
        assert_eq!(p.channel, "room");
        assert_eq!(
            p.unsubscribe.unwrap(),
            Unsubscribe {
                code: 2000,
                reason: "server unsubscribe".into()
            }
        );
        let unsub = [wire::uint(2, 2000), wire::str(3, "server unsubscribe")].concat();
        let push = [wire::str(2, "room"), wire::bytes(7, &unsub)].concat();
        assert_eq!(bytes, wire::frame(&wire::bytes(4, &push)));
    }

    #[test]
    fn subscribe_push() {
        let bytes = encode_subscribe_push("srv", &subscribe_result());
        let p = push_of(&bytes);
        assert_eq!(p.channel, "srv");
        assert_eq!(
            p.subscribe.unwrap(),
            Subscribe {
                recoverable: true,
                epoch: "ep".into(),
                offset: 9,
                positioned: true,
                data: br#"{"d":true}"#.to_vec(),
            }
        );
        let sub = [
            wire::uint(1, 1),
            wire::str(4, "ep"),
            wire::uint(5, 9),
            wire::uint(6, 1),
            wire::bytes(7, br#"{"d":true}"#),
        ]
        .concat();
        let push = [wire::str(2, "srv"), wire::bytes(9, &sub)].concat();
        assert_eq!(bytes, wire::frame(&wire::bytes(4, &push)));
    }

    #[test]
    fn several_replies_in_one_frame() {
        let info = info();
        let tags = BTreeMap::new();
        let data = raw("1");
        let frame = [
            encode_reply(&client::Reply::error(3, ErrorCode::BAD_REQUEST)),
            encode_pub_push(
                "a",
                PubView {
                    data: &data,
                    offset: 1,
                    info: None,
                    tags: &tags,
                    delta: false,
                },
            ),
            encode_ping(),
            encode_join_push("a", &info),
        ]
        .concat();
        let replies = decode_replies(&frame);
        assert_eq!(replies.len(), 4);
        assert_eq!(replies[0].error.as_ref().unwrap().code, 107);
        assert_eq!(
            replies[1]
                .push
                .as_ref()
                .unwrap()
                .publication
                .as_ref()
                .unwrap()
                .data,
            b"1"
        );
        assert_eq!(replies[2], Reply::default());
        assert_eq!(replies[3].push.as_ref().unwrap().channel, "a");
    }
}
