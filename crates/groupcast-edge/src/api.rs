//! Server HTTP API, compatible with Centrifugo's (`cent` works unchanged).
//!
//! `POST /api/<method>`, key in `X-API-Key: KEY` or `Authorization: apikey KEY`.
//! HTTP statuses: 401 for a missing or wrong key (nothing happens), 404 for an
//! unknown method, 400 for a body that is not valid JSON of the method's
//! shape, 413 over `api.max_body_bytes`, 405 for non-POST. Everything else is
//! HTTP 200 with `{"result":{...}}` or `{"error":{"code":..,"message":..}}`;
//! `batch` answers `{"replies":[...]}`. `docs/api.md` has every method.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use bytes::Bytes;
use groupcast_core::broker::{BrokerError, HistoryQuery, PublishOptions};
use groupcast_core::hub::SubscriberKind;
use groupcast_core::{Payload, Publication, StreamPosition};
use groupcast_proto::api::{self, ApiError};
use groupcast_proto::{DisconnectCode, ErrorCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::conn::{Control, MAX_CLOSE_REASON};
use crate::metrics::Metrics;
use crate::state::EdgeState;

/// Methods served under `/api/`.
pub const METHODS: &[&str] = &[
    "publish",
    "broadcast",
    "subscribe",
    "unsubscribe",
    "disconnect",
    "refresh",
    "presence",
    "presence_stats",
    "history",
    "history_remove",
    "channels",
    "info",
    "user_status",
    "batch",
    "relay_send",
    "relay_close",
    "relay_transfer",
    "relay_target_gone",
];

/// Most commands in one `batch` (`api_batch_max_commands`).
pub const MAX_BATCH_COMMANDS: usize = 1000;
/// Most channels in one `broadcast` (`api_broadcast_max_channels`).
pub const MAX_BROADCAST_CHANNELS: usize = 10_000;
/// Most channels one `channels` call lists (the membership service's
/// per-query limit).
pub const MAX_CHANNELS: u32 = groupcast_membership::state::MAX_CHANNELS_PER_QUERY;

/// An API action on connections, by user and/or client id: carried out on
/// this node's connections, and (see [`crate::cluster::fan_out`]) on the
/// other nodes holding that user or client.
pub(crate) enum ConnAction {
    Subscribe(api::SubscribeRequest),
    Unsubscribe(api::UnsubscribeRequest),
    Disconnect(api::DisconnectRequest, u16, String),
    Refresh(api::RefreshRequest),
    /// A frame to a relay connection: bytes, binary.
    RelaySend(String, Bytes, bool),
    RelayClose(String, u16, String),
    RelayTransfer(String, String, Option<Arc<RawValue>>),
    /// Every edge's connections bound to this target.
    RelayTargetGone(String),
}

/// The user and client id an action is for; both empty: every connection
/// (only `relay_target_gone`, which picks its connections by target).
pub(crate) struct Target<'a> {
    pub user: &'a str,
    pub client: &'a str,
}

impl ConnAction {
    /// Checks the request as the API does (same errors on every node).
    pub(crate) fn parse(state: &EdgeState, method: &str, body: Value) -> Result<Self, Failure> {
        let action = match method {
            "subscribe" => {
                let r: api::SubscribeRequest = parse(body)?;
                state.channel(&r.channel).map_err(channel_error)?;
                ConnAction::Subscribe(r)
            }
            "unsubscribe" => {
                let r: api::UnsubscribeRequest = parse(body)?;
                state.channel(&r.channel).map_err(channel_error)?;
                ConnAction::Unsubscribe(r)
            }
            "disconnect" => {
                let r: api::DisconnectRequest = parse(body)?;
                let (code, reason) = disconnect_code(r.disconnect.as_ref())?;
                ConnAction::Disconnect(r, code, reason)
            }
            "refresh" => ConnAction::Refresh(parse(body)?),
            "relay_send" => {
                let r: api::RelaySendRequest = parse(body)?;
                let (bytes, binary) = match (r.text, r.b64data.is_empty()) {
                    (Some(t), true) => (Bytes::from(t), false),
                    (None, false) => (
                        base64::engine::general_purpose::STANDARD
                            .decode(&r.b64data)
                            .map(Bytes::from)
                            .map_err(|_| ApiError::BAD_REQUEST)?,
                        true,
                    ),
                    _ => return Err(ApiError::BAD_REQUEST.into()),
                };
                if bytes.len() > state.config.client.max_message_size {
                    Metrics::limit_hit("max_message_size");
                    return Err(ApiError::LIMIT_EXCEEDED.into());
                }
                ConnAction::RelaySend(r.client, bytes, binary)
            }
            "relay_close" => {
                let r: api::RelayCloseRequest = parse(body)?;
                let code = match r.code {
                    0 => 1000,
                    c @ (1000 | 3000..=4999) => c as u16,
                    _ => return Err(ApiError::BAD_REQUEST.into()),
                };
                if r.reason.len() > MAX_CLOSE_REASON {
                    return Err(ApiError::BAD_REQUEST.into());
                }
                ConnAction::RelayClose(r.client, code, r.reason)
            }
            "relay_transfer" => {
                let r: api::RelayTransferRequest = parse(body)?;
                if !groupcast_core::valid_target(&r.target) {
                    return Err(ApiError::BAD_REQUEST.into());
                }
                // Every edge has the same targets: one this edge cannot
                // reach (no HTTP target by that name, no NATS) is refused
                // here rather than ignored where the connection is.
                if !state.can_reach(&r.target) {
                    return Err(ApiError::NOT_AVAILABLE.into());
                }
                ConnAction::RelayTransfer(r.client, r.target, r.meta.map(Arc::from))
            }
            "relay_target_gone" => {
                let r: api::RelayTargetGoneRequest = parse(body)?;
                if !groupcast_core::valid_target(&r.target) {
                    return Err(ApiError::BAD_REQUEST.into());
                }
                return Ok(ConnAction::RelayTargetGone(r.target));
            }
            _ => return Err(ApiError::METHOD_NOT_FOUND.into()),
        };
        let t = action.target();
        if t.user.is_empty() && t.client.is_empty() {
            return Err(ApiError::BAD_REQUEST.into());
        }
        Ok(action)
    }

    pub(crate) fn target(&self) -> Target<'_> {
        let (user, client) = match self {
            ConnAction::Subscribe(r) => (r.user.as_str(), r.client.as_str()),
            ConnAction::Unsubscribe(r) => (r.user.as_str(), r.client.as_str()),
            ConnAction::Disconnect(r, ..) => (r.user.as_str(), r.client.as_str()),
            ConnAction::Refresh(r) => (r.user.as_str(), r.client.as_str()),
            ConnAction::RelaySend(c, ..)
            | ConnAction::RelayClose(c, ..)
            | ConnAction::RelayTransfer(c, ..) => ("", c.as_str()),
            ConnAction::RelayTargetGone(_) => ("", ""),
        };
        Target { user, client }
    }

    /// Acts on this node's matching connections; returns how many.
    pub(crate) fn apply_local(&self, state: &EdgeState) -> usize {
        let t = self.target();
        let conns = state.registry.find(t.user, t.client);
        for conn in &conns {
            match self {
                ConnAction::Subscribe(r) => {
                    conn.control(Control::Subscribe {
                        channel: r.channel.clone(),
                        data: r.data.clone(),
                    });
                }
                ConnAction::Unsubscribe(r) => {
                    conn.control(Control::Unsubscribe {
                        channel: r.channel.clone(),
                        code: groupcast_proto::codes::UnsubscribeCode::SERVER,
                    });
                }
                ConnAction::Disconnect(r, code, reason) => {
                    if !r.whitelist.contains(&conn.client) {
                        conn.control(Control::Disconnect {
                            code: *code,
                            reason: reason.clone(),
                        });
                    }
                }
                ConnAction::Refresh(r) => {
                    conn.control(Control::Refresh {
                        expired: r.expired,
                        expire_at: r.expire_at,
                    });
                }
                // Frames and closes only for relay connections (a frame
                // would break a protocol client's stream).
                ConnAction::RelaySend(_, bytes, binary) => {
                    if conn.kind == SubscriberKind::Relay {
                        conn.send_frame(bytes.clone(), *binary);
                    }
                }
                ConnAction::RelayClose(_, code, reason) => {
                    // After the frames already queued (a backend's last
                    // `relay_send` before its close arrives first).
                    if conn.kind == SubscriberKind::Relay {
                        conn.drain_with(*code, reason.clone().into());
                    }
                }
                ConnAction::RelayTransfer(_, target, meta) => {
                    conn.control(Control::Transfer {
                        target: target.clone(),
                        meta: meta.clone(),
                    });
                }
                ConnAction::RelayTargetGone(target) => {
                    if conn.kind == SubscriberKind::Relay {
                        conn.control(Control::TargetGone {
                            target: target.clone(),
                        });
                    }
                }
            }
        }
        conns.len()
    }
}

/// Does the request carry the API key (`X-API-Key: KEY` or
/// `Authorization: apikey KEY`)? Never with no key configured.
pub(crate) fn key_ok(state: &EdgeState, headers: &HeaderMap) -> bool {
    let expected = state.config.api.key.as_bytes();
    if expected.is_empty() {
        return false;
    }
    let given = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("apikey "))
        })
        .unwrap_or("");
    constant_time_eq(given.as_bytes(), expected)
}

/// Compare `given` with `expected` in time that depends only on the length
/// of `expected` (not on where they differ, nor on `given`'s length).
fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    let mut diff = given.len() ^ expected.len();
    for (i, e) in expected.iter().enumerate() {
        diff |= usize::from(given.get(i).copied().unwrap_or(0) ^ e);
    }
    diff == 0
}

/// axum handler for `POST /api/{method}`.
pub async fn handle(
    State(state): State<Arc<EdgeState>>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !key_ok(&state, &headers) {
        Metrics::api_call("unauthorized", "unauthorized");
        return StatusCode::UNAUTHORIZED.into_response();
    }
    if !METHODS.contains(&method.as_str()) {
        Metrics::api_call("unknown", "not_found");
        return (StatusCode::NOT_FOUND, "method not found").into_response();
    }
    if body.len() > state.config.api.max_body_bytes {
        Metrics::api_call(&method, "too_large");
        Metrics::limit_hit("api.max_body_bytes");
        return StatusCode::PAYLOAD_TOO_LARGE.into_response();
    }
    let value: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            Metrics::api_call(&method, "bad_request");
            return (StatusCode::BAD_REQUEST, "Bad Request").into_response();
        }
    };
    let started = Instant::now();
    match respond(&state, &method, value).await {
        Ok((body, outcome)) => {
            Metrics::api_call(&method, outcome);
            Metrics::api_duration(&method, started.elapsed());
            (
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response()
        }
        Err(()) => {
            Metrics::api_call(&method, "bad_request");
            (StatusCode::BAD_REQUEST, "Bad Request").into_response()
        }
    }
}

/// The answer's body and outcome (for metrics); `Err` for a body that is
/// not a request of `method`.
async fn respond(
    state: &EdgeState,
    method: &str,
    value: Value,
) -> Result<(String, &'static str), ()> {
    if method == "batch" {
        batch(state, value).await
    } else {
        match call(state, method, value).await {
            Ok(result) => Ok((encode(&Reply::result(&result)), "ok")),
            Err(Failure::Api(e)) => Ok((encode(&Reply::error(e)), "error")),
            Err(Failure::BadBody) => Err(()),
        }
    }
}

/// A command from a backend over NATS (`{nats.prefix}.api`):
/// `{"method": "<API method>", "params": {...}}`, answered (when asked
/// with a reply subject) with the HTTP API's body: `{"result": ...}` or
/// `{"error": {...}}` (107 for a message that is not such a command, 104
/// for an unknown method).
pub(crate) async fn over_nats(state: &EdgeState, payload: &[u8]) -> Bytes {
    #[derive(serde::Deserialize)]
    struct Command {
        method: String,
        #[serde(default)]
        params: Option<Value>,
    }
    let started = Instant::now();
    let (body, method, outcome) = match serde_json::from_slice::<Command>(payload) {
        Err(_) => (
            encode(&Reply::error(ApiError::BAD_REQUEST)),
            "unknown".to_string(),
            "bad_request",
        ),
        Ok(c) if !METHODS.contains(&c.method.as_str()) => (
            encode(&Reply::error(ApiError::METHOD_NOT_FOUND)),
            "unknown".to_string(),
            "not_found",
        ),
        Ok(_) if payload.len() > state.config.api.max_body_bytes => {
            Metrics::limit_hit("api.max_body_bytes");
            (
                encode(&Reply::error(ApiError::LIMIT_EXCEEDED)),
                "unknown".to_string(),
                "too_large",
            )
        }
        Ok(c) => {
            let params = match c.params {
                None => Value::Object(Default::default()),
                Some(v) => v,
            };
            let out = if params.is_object() {
                respond(state, &c.method, params).await
            } else {
                Err(())
            };
            match out {
                Ok((body, outcome)) => (body, c.method, outcome),
                Err(()) => (
                    encode(&Reply::error(ApiError::BAD_REQUEST)),
                    c.method,
                    "bad_request",
                ),
            }
        }
    };
    Metrics::api_call(&method, outcome);
    Metrics::api_duration(&method, started.elapsed());
    Bytes::from(body)
}

/// `{"result":..}` or `{"error":..}`. Results are carried as raw JSON text:
/// publication data is embedded verbatim and never re-parsed (a `Value`
/// round trip would hit serde_json's nesting limit on deep client data).
#[derive(Serialize)]
struct Reply<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ApiError>,
}

impl<'a> Reply<'a> {
    fn result(r: &'a RawValue) -> Self {
        Reply {
            result: Some(r),
            error: None,
        }
    }
    fn error(e: ApiError) -> Self {
        Reply {
            result: None,
            error: Some(e),
        }
    }
}

fn encode<T: Serialize>(t: &T) -> String {
    serde_json::to_string(t).expect("API reply types always serialize")
}

pub(crate) enum Failure {
    /// The body does not have the method's shape: HTTP 400.
    BadBody,
    /// A Centrifugo API error: HTTP 200 with `error`.
    Api(ApiError),
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        Failure::Api(e)
    }
}

/// A method's params: a JSON object only (serde would also read a struct
/// from an array, e.g. a `batch` command `{"publish":["ch",{}]}`).
fn parse<T: DeserializeOwned>(v: Value) -> Result<T, Failure> {
    if !v.is_object() {
        return Err(Failure::BadBody);
    }
    serde_json::from_value(v).map_err(|_| Failure::BadBody)
}

fn channel_error(e: ErrorCode) -> ApiError {
    match e {
        ErrorCode::UNKNOWN_CHANNEL => ApiError::UNKNOWN_CHANNEL,
        _ => ApiError::BAD_REQUEST,
    }
}

fn broker_error(e: BrokerError) -> ApiError {
    match e {
        BrokerError::Unavailable(_) | BrokerError::Timeout(_) => ApiError::NOT_AVAILABLE,
        BrokerError::UnrecoverablePosition => ApiError::UNRECOVERABLE_POSITION,
        BrokerError::Internal(_) => ApiError::INTERNAL,
    }
}

/// Serialize a result to raw JSON text (no re-parse of embedded data).
fn to_value<T: Serialize>(t: T) -> Box<RawValue> {
    RawValue::from_string(encode(&t)).expect("serde_json output is valid JSON")
}

fn empty() -> Box<RawValue> {
    RawValue::from_string("{}".into()).expect("valid JSON")
}

async fn batch(state: &EdgeState, value: Value) -> Result<(String, &'static str), ()> {
    let req: api::BatchRequest = serde_json::from_value(value).map_err(|_| ())?;
    if req.commands.len() > MAX_BATCH_COMMANDS {
        Metrics::limit_hit("api_batch_max_commands");
        return Ok((encode(&Reply::error(ApiError::LIMIT_EXCEEDED)), "error"));
    }
    let error = |e: ApiError| encode(&json!({ "error": e }));
    let run = |cmd: serde_json::Map<String, Value>| async move {
        let mut it = cmd.into_iter();
        let (Some((method, body)), None) = (it.next(), it.next()) else {
            return error(ApiError::BAD_REQUEST);
        };
        if method == "batch" || !METHODS.contains(&method.as_str()) {
            return error(ApiError::METHOD_NOT_FOUND);
        }
        match call(state, &method, body).await {
            Ok(result) => format!("{{{}:{}}}", encode(&method), result.get()),
            Err(Failure::Api(e)) => error(e),
            Err(Failure::BadBody) => error(ApiError::BAD_REQUEST),
        }
    };
    let replies: Vec<String> = if req.parallel {
        futures_util::future::join_all(req.commands.into_iter().map(run)).await
    } else {
        let mut out = Vec::with_capacity(req.commands.len());
        for cmd in req.commands {
            out.push(run(cmd).await);
        }
        out
    };
    Ok((format!("{{\"replies\":[{}]}}", replies.join(",")), "ok"))
}

async fn publish_one(
    state: &EdgeState,
    channel: &str,
    data: Payload,
    skip_history: bool,
    tags: &std::collections::BTreeMap<String, String>,
    idempotency_key: &str,
    exclude_client: &str,
) -> Result<api::PublishResult, ApiError> {
    let (ch, opts) = state.channel(channel).map_err(channel_error)?;
    // Publications reach clients in one frame: the client message limit
    // applies (and keeps one publication below a reader's queue limit), or
    // the namespace's smaller one.
    if !state.check_publication_size(opts, data.len()) {
        return Err(ApiError::LIMIT_EXCEEDED);
    }
    let po = if skip_history {
        PublishOptions::default()
    } else {
        PublishOptions {
            history_size: opts.history_size,
            history_ttl: opts.history_ttl,
            idempotency_key: (!idempotency_key.is_empty()).then(|| idempotency_key.to_string()),
        }
    };
    let mut p = Publication::new(data);
    p.tags = tags.clone();
    p.exclude_client = (!exclude_client.is_empty()).then(|| Arc::from(exclude_client));
    let pos = state
        .node
        .broker
        .publish(ch.as_str(), p, &po)
        .await
        .map_err(broker_error)?;
    Ok(api::PublishResult {
        offset: pos.offset,
        epoch: pos.epoch,
    })
}

/// A user status publication (`client.user_status_channel`).
pub(crate) async fn publish_status(
    state: &EdgeState,
    channel: &str,
    data: Payload,
) -> Result<api::PublishResult, ApiError> {
    publish_one(state, channel, data, false, &Default::default(), "", "").await
}

fn payload(data: Option<groupcast_proto::client::RawJson>, b64: &str) -> Result<Payload, ApiError> {
    match (data, b64.is_empty()) {
        (Some(d), true) => Payload::json(d).ok_or(ApiError::BAD_REQUEST),
        (None, false) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map(|b| Payload::Binary(Bytes::from(b)))
            .map_err(|_| ApiError::BAD_REQUEST),
        _ => Err(ApiError::BAD_REQUEST),
    }
}

async fn call(state: &EdgeState, method: &str, body: Value) -> Result<Box<RawValue>, Failure> {
    match method {
        "publish" => {
            let r: api::PublishRequest = parse(body)?;
            let data = payload(r.data, &r.b64data)?;
            Ok(to_value(
                publish_one(
                    state,
                    &r.channel,
                    data,
                    r.skip_history,
                    &r.tags,
                    &r.idempotency_key,
                    &r.exclude_client,
                )
                .await?,
            ))
        }
        "broadcast" => {
            let r: api::BroadcastRequest = parse(body)?;
            if r.channels.len() > MAX_BROADCAST_CHANNELS {
                Metrics::limit_hit("api_broadcast_max_channels");
                return Err(ApiError::LIMIT_EXCEEDED.into());
            }
            let data = payload(r.data, &r.b64data)?;
            let mut responses = Vec::with_capacity(r.channels.len());
            for channel in &r.channels {
                responses.push(
                    match publish_one(
                        state,
                        channel,
                        data.clone(),
                        r.skip_history,
                        &r.tags,
                        &r.idempotency_key,
                        &r.exclude_client,
                    )
                    .await
                    {
                        Ok(res) => api::BroadcastEntry {
                            error: None,
                            result: Some(res),
                        },
                        Err(e) => api::BroadcastEntry {
                            error: Some(e),
                            result: None,
                        },
                    },
                );
            }
            Ok(to_value(api::BroadcastResult { responses }))
        }
        "subscribe" | "unsubscribe" | "disconnect" | "refresh" | "relay_send" | "relay_close"
        | "relay_transfer" | "relay_target_gone" => {
            let action = ConnAction::parse(state, method, body.clone())?;
            let found_here = action.apply_local(state);
            crate::cluster::fan_out(state, method, body, action.target(), found_here).await?;
            Ok(empty())
        }
        "presence" | "presence_stats" => {
            let r: api::ChannelRequest = parse(body)?;
            let (ch, opts) = state.channel(&r.channel).map_err(channel_error)?;
            if !opts.presence {
                return Err(ApiError::NOT_AVAILABLE.into());
            }
            let m = &state.node.membership;
            if method == "presence" {
                let presence = m
                    .presence(ch.as_str())
                    .await
                    .map_err(|_| ApiError::NOT_AVAILABLE)?;
                Ok(to_value(api::PresenceResult { presence }))
            } else {
                let s = m
                    .presence_stats(ch.as_str())
                    .await
                    .map_err(|_| ApiError::NOT_AVAILABLE)?;
                Ok(to_value(
                    json!({ "num_clients": s.num_clients, "num_users": s.num_users }),
                ))
            }
        }
        "history" => {
            let r: api::HistoryRequest = parse(body)?;
            let (ch, opts) = state.channel(&r.channel).map_err(channel_error)?;
            if !opts.has_history() {
                return Err(ApiError::NOT_AVAILABLE.into());
            }
            let limit = state
                .history_limit(r.limit)
                .ok_or(ApiError::LIMIT_EXCEEDED)?;
            let q = HistoryQuery {
                since: r.since.map(|s| StreamPosition {
                    offset: s.offset,
                    epoch: s.epoch,
                }),
                limit: Some(limit),
                reverse: r.reverse,
            };
            let h = state
                .node
                .broker
                .history(ch.as_str(), q)
                .await
                .map_err(broker_error)?;
            Ok(to_value(api::HistoryResult {
                publications: h.publications.iter().map(|p| p.to_out()).collect(),
                epoch: h.position.epoch,
                offset: h.position.offset,
            }))
        }
        "history_remove" => {
            let r: api::ChannelRequest = parse(body)?;
            let (ch, _) = state.channel(&r.channel).map_err(channel_error)?;
            state
                .node
                .broker
                .remove_history(ch.as_str())
                .await
                .map_err(broker_error)?;
            Ok(empty())
        }
        "channels" => {
            let r: api::ChannelsRequest = parse(body)?;
            // Counts are cluster-wide (the membership service adds up every
            // node's local subscribers); the pattern's literal start narrows
            // the query, the glob does the rest.
            let prefix = r.pattern.split('*').next().unwrap_or("");
            let channels = state
                .node
                .membership
                .channels(prefix, MAX_CHANNELS)
                .await
                .map_err(|_| ApiError::NOT_AVAILABLE)?
                .into_iter()
                .filter(|(name, _)| glob_match(&r.pattern, name))
                .map(|(name, n)| {
                    (
                        name,
                        api::ChannelInfo {
                            num_clients: n as u32,
                        },
                    )
                })
                .collect();
            Ok(to_value(api::ChannelsResult { channels }))
        }
        "user_status" => {
            let r: api::UserStatusRequest = parse(body)?;
            if r.users.len() > groupcast_core::membership::MAX_USER_STATUS {
                Metrics::limit_hit("api_user_status_max_users");
                return Err(ApiError::LIMIT_EXCEEDED.into());
            }
            let statuses = state
                .node
                .membership
                .user_status(&r.users)
                .await
                .map_err(|_| ApiError::NOT_AVAILABLE)?
                .into_iter()
                .map(|u| api::UserStatusEntry {
                    online: u.connections > 0,
                    connections: u.connections,
                    last_seen: u.last_seen_ms / 1000,
                    user: u.user,
                })
                .collect();
            Ok(to_value(api::UserStatusResult { statuses }))
        }
        "info" => {
            let _: api::ChannelsRequest = parse(body)?;
            Ok(to_value(api::InfoResult {
                nodes: crate::cluster::nodes(state).await?,
            }))
        }
        _ => Err(ApiError::METHOD_NOT_FOUND.into()),
    }
}

/// The close code and reason for an API `disconnect`: none given means 3503
/// "force disconnect"; otherwise any code in 3000..=4999 (4000..4999 are
/// the application's), with the given reason or the table's. Reasons over
/// [`MAX_CLOSE_REASON`] bytes are refused (they cannot fit a close frame).
fn disconnect_code(d: Option<&api::DisconnectObject>) -> Result<(u16, String), ApiError> {
    let Some(d) = d.filter(|d| d.code != 0) else {
        let c = DisconnectCode::FORCE_NO_RECONNECT;
        return Ok((c.code, c.reason.to_string()));
    };
    let code = u16::try_from(d.code)
        .ok()
        .filter(|c| (3000..=4999).contains(c))
        .ok_or(ApiError::BAD_REQUEST)?;
    if d.reason.len() > MAX_CLOSE_REASON {
        return Err(ApiError::BAD_REQUEST);
    }
    let reason = match (d.reason.is_empty(), DisconnectCode::from_code(code)) {
        (false, _) => d.reason.clone(),
        (true, Some(known)) => known.reason.to_string(),
        // Clients treat an empty reason as "reconnect"; never send one.
        (true, None) => "disconnect".to_string(),
    };
    Ok((code, reason))
}

/// `*` matches any run of characters; empty pattern matches everything.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    if pattern.is_empty() {
        return true;
    }
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let mut rest = name;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            match rest.strip_prefix(part) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(pos) => rest = &rest[pos + part.len()..],
                None => return false,
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob() {
        assert!(glob_match("", "x"));
        assert!(glob_match("chat:*", "chat:1"));
        assert!(!glob_match("chat:*", "news:1"));
        assert!(glob_match("*:1", "chat:1"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXcYYb"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exact2"));
    }

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"ab", b"abc"));
        assert!(!constant_time_eq(b"ab\0", b"ab"));
        assert!(!constant_time_eq(b"", b"abc"));
    }
}
