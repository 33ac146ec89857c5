//! Server HTTP API bodies, compatible with Centrifugo's server API.
//!
//! `POST /api/<method>` with a JSON request body; the answer is
//! `{"result":{...}}` or `{"error":{"code":..,"message":..}}` with HTTP 200.
//! `POST /api/batch` takes `{"commands":[{"<method>":{...}}, ...]}` and
//! answers `{"replies":[{"<method>":{...}} | {"error":{...}}, ...]}`.
//!
//! Where an API method shares a name with a client protocol method, the
//! bodies usually differ (the API names a target user or client, and has
//! extra fields), so `api::SubscribeRequest` and `client::SubscribeRequest`
//! are different types. Bodies of the very same shape are the client
//! protocol's types, re-exported here: [`ChannelRequest`],
//! [`PresenceResult`], [`HistoryResult`]. Error codes and messages come
//! from the client protocol's table ([`ApiError::of`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::client::{is_zero_u64, raw_opt, RawJson, StreamPosition};
use crate::codes::ErrorCode;

/// The same bodies as the client protocol's, so the same types.
pub use crate::client::{ChannelRequest, HistoryResult, PresenceResult};

/// An API error: the `error` object of an answer, `{"code":..,"message":..}`.
///
/// The codes and messages are the client protocol's, from the one table
/// ([`ErrorCode`]); each constant here is built from its namesake there.
/// The API's error object has no `temporary` field, so this type drops it
/// (e.g. `INTERNAL` is temporary in the client protocol, not here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ApiError {
    pub code: u32,
    pub message: &'static str,
}

impl ApiError {
    /// The API form of a client protocol error: its code and message.
    pub const fn of(e: ErrorCode) -> ApiError {
        ApiError {
            code: e.code,
            message: e.message,
        }
    }

    pub const INTERNAL: ApiError = ApiError::of(ErrorCode::INTERNAL);
    pub const UNAUTHORIZED: ApiError = ApiError::of(ErrorCode::UNAUTHORIZED);
    pub const UNKNOWN_CHANNEL: ApiError = ApiError::of(ErrorCode::UNKNOWN_CHANNEL);
    pub const METHOD_NOT_FOUND: ApiError = ApiError::of(ErrorCode::METHOD_NOT_FOUND);
    pub const LIMIT_EXCEEDED: ApiError = ApiError::of(ErrorCode::LIMIT_EXCEEDED);
    pub const BAD_REQUEST: ApiError = ApiError::of(ErrorCode::BAD_REQUEST);
    pub const NOT_AVAILABLE: ApiError = ApiError::of(ErrorCode::NOT_AVAILABLE);
    pub const UNRECOVERABLE_POSITION: ApiError = ApiError::of(ErrorCode::UNRECOVERABLE_POSITION);
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

/// `sio_emit`: emit a Socket.IO event, to one socket (`client`) or to a room of a namespace
/// (`room`: a publication on the room's channel, tagged with the event). Bytes in `args` are
/// written `{"$binary": "<base64>"}` and go as binary attachments.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SioEmitRequest {
    pub client: String,
    pub room: String,
    pub namespace: Option<String>,
    pub event: String,
    pub args: Vec<serde_json::Value>,
    /// With `client`: the id the client acknowledges the event with (the backend then gets an
    /// `ack` event with this id).
    pub ack: Option<u64>,
    /// With `room`: a client id left out (Socket.IO's `socket.to(room).emit`).
    pub except: String,
}

/// `sio_ack`: answer a client's event that asked for an acknowledgement.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SioAckRequest {
    pub client: String,
    pub namespace: Option<String>,
    pub id: u64,
    pub args: Vec<serde_json::Value>,
}

/// `sio_join`, `sio_leave`: a socket joins or leaves a room; `sio_disconnect`: the server
/// ends a socket (`room` unused).
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SioSocketRequest {
    pub client: String,
    pub namespace: Option<String>,
    pub room: String,
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

/// `history`. The same fields as [`crate::client::HistoryRequest`] but its
/// own type: `since` is read by serde's default here, which also takes a
/// `[offset, epoch]` array by position, while the client protocol reads
/// only an object there. One type for both would change what one of them
/// accepts.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_are_the_client_table_without_temporary() {
        // The code and message of each, as the API has always answered.
        for (api, code, message) in [
            (ApiError::INTERNAL, 100, "internal server error"),
            (ApiError::UNAUTHORIZED, 101, "unauthorized"),
            (ApiError::UNKNOWN_CHANNEL, 102, "unknown channel"),
            (ApiError::METHOD_NOT_FOUND, 104, "method not found"),
            (ApiError::LIMIT_EXCEEDED, 106, "limit exceeded"),
            (ApiError::BAD_REQUEST, 107, "bad request"),
            (ApiError::NOT_AVAILABLE, 108, "not available"),
            (
                ApiError::UNRECOVERABLE_POSITION,
                112,
                "unrecoverable position",
            ),
        ] {
            assert_eq!((api.code, api.message), (code, message));
            let client = ErrorCode::ALL.iter().find(|e| e.code == code).unwrap();
            assert_eq!(api, ApiError::of(*client));
        }
        // The wire form: code and message only, also for a temporary error.
        assert_eq!(
            serde_json::to_value(ApiError::INTERNAL).unwrap(),
            serde_json::json!({"code":100,"message":"internal server error"})
        );
        assert_eq!(
            serde_json::to_value(ApiError::UNRECOVERABLE_POSITION).unwrap(),
            serde_json::json!({"code":112,"message":"unrecoverable position"})
        );
    }
}
