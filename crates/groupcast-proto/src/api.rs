//! Server HTTP API bodies, compatible with Centrifugo's server API.
//!
//! `POST /api/<method>` with a JSON request body; the answer is
//! `{"result":{...}}` or `{"error":{"code":..,"message":..}}` with HTTP 200.
//! `POST /api/batch` takes `{"commands":[{"<method>":{...}}, ...]}` and
//! answers `{"replies":[{"<method>":{...}} | {"error":{...}}, ...]}`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::client::{raw_opt, ClientInfo, PublicationOut, RawJson, StreamPosition};

/// API-level error codes (Centrifugo's server API table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ApiError {
    pub code: u32,
    pub message: &'static str,
}

impl ApiError {
    pub const INTERNAL: ApiError = ApiError {
        code: 100,
        message: "internal server error",
    };
    pub const UNAUTHORIZED: ApiError = ApiError {
        code: 101,
        message: "unauthorized",
    };
    pub const UNKNOWN_CHANNEL: ApiError = ApiError {
        code: 102,
        message: "unknown channel",
    };
    pub const METHOD_NOT_FOUND: ApiError = ApiError {
        code: 104,
        message: "method not found",
    };
    pub const LIMIT_EXCEEDED: ApiError = ApiError {
        code: 106,
        message: "limit exceeded",
    };
    pub const BAD_REQUEST: ApiError = ApiError {
        code: 107,
        message: "bad request",
    };
    pub const NOT_AVAILABLE: ApiError = ApiError {
        code: 108,
        message: "not available",
    };
    pub const UNRECOVERABLE_POSITION: ApiError = ApiError {
        code: 112,
        message: "unrecoverable position",
    };
}

#[derive(Debug, Deserialize)]
pub struct PublishRequest {
    #[serde(default)]
    pub channel: String,
    #[serde(default, deserialize_with = "raw_opt::deserialize")]
    pub data: Option<RawJson>,
    /// Binary data, base64 encoded (used instead of `data`).
    #[serde(default)]
    pub b64data: String,
    #[serde(default)]
    pub skip_history: bool,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default)]
    pub idempotency_key: String,
    /// Client id left out of the fan-out (Pusher's `socket_id`).
    #[serde(default)]
    pub exclude_client: String,
}

#[derive(Debug, Deserialize)]
pub struct BroadcastRequest {
    #[serde(default)]
    pub channels: Vec<String>,
    #[serde(default, deserialize_with = "raw_opt::deserialize")]
    pub data: Option<RawJson>,
    #[serde(default)]
    pub b64data: String,
    #[serde(default)]
    pub skip_history: bool,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default)]
    pub idempotency_key: String,
    /// Client id left out of the fan-out (Pusher's `socket_id`).
    #[serde(default)]
    pub exclude_client: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct SubscribeRequest {
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub channel: String,
    #[serde(default)]
    pub client: String,
    #[serde(default)]
    pub session: String,
    #[serde(default, deserialize_with = "raw_opt::deserialize")]
    pub info: Option<RawJson>,
    #[serde(default, deserialize_with = "raw_opt::deserialize")]
    pub data: Option<RawJson>,
}

#[derive(Debug, Default, Deserialize)]
pub struct UnsubscribeRequest {
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub channel: String,
    #[serde(default)]
    pub client: String,
    #[serde(default)]
    pub session: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct DisconnectObject {
    #[serde(default)]
    pub code: u32,
    #[serde(default)]
    pub reason: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct DisconnectRequest {
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub client: String,
    #[serde(default)]
    pub session: String,
    #[serde(default)]
    pub whitelist: Vec<String>,
    pub disconnect: Option<DisconnectObject>,
}

/// `user_status`: users' connection counts and last-seen times.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct UserStatusRequest {
    pub users: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct UserStatusResult {
    pub statuses: Vec<UserStatusEntry>,
}

#[derive(Debug, Serialize)]
pub struct UserStatusEntry {
    pub user: String,
    /// At least one connection on some edge.
    pub online: bool,
    /// Connections on every edge.
    pub connections: u64,
    /// Unix seconds when a connection of theirs last opened or closed; 0
    /// when not known.
    pub last_seen: u64,
}

/// `relay_send`: a frame to one relay connection, by client id (text from
/// `text`, binary from `b64data`; exactly one).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RelaySendRequest {
    pub client: String,
    pub text: Option<String>,
    pub b64data: String,
}

/// `relay_close`: close one relay connection (code 1000 or 3000..=4999).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RelayCloseRequest {
    pub client: String,
    pub code: u32,
    pub reason: String,
}

/// `relay_transfer`: bind one relay connection to another backend target
/// (the old one gets `leave`, the new one `join`), optionally with new
/// metadata.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RelayTransferRequest {
    pub client: String,
    pub target: String,
    pub meta: Option<Box<RawValue>>,
}

/// `relay_target_gone`: the backend target is gone; every relay connection
/// bound to it, on every edge, closes with 3015.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RelayTargetGoneRequest {
    pub target: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct RefreshRequest {
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub client: String,
    #[serde(default)]
    pub session: String,
    #[serde(default)]
    pub expired: bool,
    /// Unix seconds when the connection expires (0: never).
    #[serde(default)]
    pub expire_at: i64,
}

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
    pub since: Option<StreamPosition>,
    #[serde(default)]
    pub reverse: bool,
}

#[derive(Debug, Default, Deserialize)]
pub struct ChannelsRequest {
    /// Glob-like filter (`*` matches any run of characters); empty: all.
    #[serde(default)]
    pub pattern: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct BatchRequest {
    #[serde(default)]
    pub commands: Vec<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    pub parallel: bool,
}

#[derive(Debug, Default, Serialize)]
pub struct PublishResult {
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub offset: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub epoch: String,
}

fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

/// One entry of a broadcast result: a publish result or an error.
#[derive(Debug, Serialize)]
pub struct BroadcastEntry {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<PublishResult>,
}

#[derive(Debug, Serialize)]
pub struct BroadcastResult {
    pub responses: Vec<BroadcastEntry>,
}

#[derive(Debug, Default, Serialize)]
pub struct PresenceResult {
    pub presence: BTreeMap<String, ClientInfo>,
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
pub struct ChannelInfo {
    pub num_clients: u32,
}

#[derive(Debug, Default, Serialize)]
pub struct ChannelsResult {
    pub channels: BTreeMap<String, ChannelInfo>,
}

#[derive(Debug, Default, Serialize)]
pub struct NodeInfo {
    pub uid: String,
    pub name: String,
    pub version: String,
    pub num_clients: u32,
    pub num_users: u32,
    pub num_channels: u32,
    pub num_subs: u32,
    pub uptime: u32,
}

#[derive(Debug, Default, Serialize)]
pub struct InfoResult {
    pub nodes: Vec<NodeInfo>,
}
