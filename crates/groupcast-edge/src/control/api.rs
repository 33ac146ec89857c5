//! Server HTTP API, compatible with Centrifugo's (`cent` works unchanged).
//!
//! `POST /api/<method>`, key in `X-API-Key: KEY` or `Authorization: apikey KEY`.
//! HTTP statuses: 401 for a missing or wrong key (nothing happens), 404 for an
//! unknown method, 400 for a body that is not valid JSON of the method's
//! shape, 413 over `api.max_body_bytes`, 405 for non-POST. Everything else is
//! HTTP 200 with `{"result":{...}}` or `{"error":{"code":..,"message":..}}`;
//! `batch` answers `{"replies":[...]}`. `docs/api.md` has every method.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use bytes::Bytes;
use futures_util::stream::FuturesOrdered;
use futures_util::StreamExt;
use groupcast_core::broker::{BrokerError, HistoryQuery, PublishOptions};
use groupcast_core::{Payload, Publication, StreamPosition};
use groupcast_proto::api::{self, ApiError};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::action::{
    channel_error, check_sio_args, event_name_ok, parse, sio_room_channel, ApiFailure, ConnAction,
};
use super::forward::fan_out;
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
    "sio_emit",
    "sio_ack",
    "sio_join",
    "sio_leave",
    "sio_disconnect",
];

/// Most commands in one `batch` (`api_batch_max_commands`).
pub const MAX_BATCH_COMMANDS: usize = 1000;
/// Most channels in one `broadcast` (`api_broadcast_max_channels`).
pub const MAX_BROADCAST_CHANNELS: usize = 10_000;
/// Most channels one `channels` call lists (the membership service's
/// per-query limit).
pub const MAX_CHANNELS: u32 = groupcast_core::membership::MAX_CHANNELS_PER_QUERY;

/// axum handler for `POST /api/{method}`.
pub async fn handle(
    State(state): State<Arc<EdgeState>>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !crate::auth::api_key_ok(&state.config.api.key, &headers) {
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
            Err(ApiFailure::Api(e)) => Ok((encode(&Reply::error(e)), "error")),
            Err(ApiFailure::BadBody) => Err(()),
        }
    }
}

/// A command from a backend over NATS (`{nats.prefix}.api`):
/// `{"method": "<API method>", "params": {...}, "api_key": "<api.key>"}`,
/// answered (when asked with a reply subject) with the HTTP API's body:
/// `{"result": ...}` or `{"error": {...}}` (101 for a missing or wrong
/// key, before anything else is looked at; 107 for a message that is not
/// such a command, 104 for an unknown method).
pub(crate) async fn over_nats(state: &EdgeState, payload: &[u8]) -> Bytes {
    #[derive(serde::Deserialize)]
    struct Command {
        method: String,
        #[serde(default)]
        params: Option<Value>,
        #[serde(default)]
        api_key: String,
    }
    let started = Instant::now();
    let (body, method, outcome) = match serde_json::from_slice::<Command>(payload) {
        Ok(c) if !crate::auth::api_key_matches(&state.config.api.key, &c.api_key) => (
            encode(&Reply::error(ApiError::UNAUTHORIZED)),
            "unknown".to_string(),
            "unauthorized",
        ),
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

fn broker_error(e: BrokerError) -> ApiError {
    match e {
        BrokerError::Unavailable(_) | BrokerError::Timeout(_) => ApiError::NOT_AVAILABLE,
        BrokerError::UnrecoverablePosition => ApiError::UNRECOVERABLE_POSITION,
        BrokerError::Internal(_) => ApiError::INTERNAL,
        BrokerError::TooLarge(_) => {
            Metrics::limit_hit("nats_max_payload");
            ApiError::LIMIT_EXCEEDED
        }
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
            Err(ApiFailure::Api(e)) => error(e),
            Err(ApiFailure::BadBody) => error(ApiError::BAD_REQUEST),
        }
    };
    let replies: Vec<String> = if req.parallel {
        futures_util::future::join_all(req.commands.into_iter().map(run)).await
    } else {
        // In order: publishes are sent one after another without waiting
        // for each answer (at most `client.max_publishes_in_flight` wait),
        // so they are stored in command order; any other command runs once
        // the publishes before it are answered.
        let most = state.config.client.max_publishes_in_flight;
        let mut out = Vec::with_capacity(req.commands.len());
        let mut waiting: FuturesOrdered<Pin<Box<dyn Future<Output = String> + Send>>> =
            FuturesOrdered::new();
        for cmd in req.commands {
            let publish = match (cmd.len(), cmd.get("publish")) {
                (1, Some(body)) => Some(body.clone()),
                _ => None,
            };
            let Some(body) = publish else {
                while let Some(reply) = waiting.next().await {
                    out.push(reply);
                }
                out.push(run(cmd).await);
                continue;
            };
            while waiting.len() >= most {
                out.extend(waiting.next().await);
            }
            waiting.push_back(match publish_begin_body(state, body).await {
                Ok(answer) => Box::pin(async move {
                    match answer.await {
                        Ok(result) => format!("{{\"publish\":{}}}", encode(&result)),
                        Err(e) => error(e),
                    }
                }),
                Err(e) => Box::pin(std::future::ready(error(e))),
            });
        }
        while let Some(reply) = waiting.next().await {
            out.push(reply);
        }
        out
    };
    Ok((format!("{{\"replies\":[{}]}}", replies.join(",")), "ok"))
}

/// A batch's `publish` command: checked and sent, answered by the returned
/// future (107 for a body that is not a publish request).
async fn publish_begin_body(state: &EdgeState, body: Value) -> Result<PendingApiPublish, ApiError> {
    let r: api::PublishRequest = match parse(body) {
        Ok(r) => r,
        Err(ApiFailure::Api(e)) => return Err(e),
        Err(ApiFailure::BadBody) => return Err(ApiError::BAD_REQUEST),
    };
    publish_request(state, r).await
}

/// Check and send the publication of an API `publish` request.
async fn publish_request(
    state: &EdgeState,
    r: api::PublishRequest,
) -> Result<PendingApiPublish, ApiError> {
    let data = payload(r.data, &r.b64data)?;
    publish_begin(
        state,
        &r.channel,
        data,
        r.skip_history,
        &r.tags,
        &r.idempotency_key,
        &r.exclude_client,
    )
    .await
}

/// The answer to a publish already sent.
type PendingApiPublish = Pin<Box<dyn Future<Output = Result<api::PublishResult, ApiError>> + Send>>;

async fn publish_one(
    state: &EdgeState,
    channel: &str,
    data: Payload,
    skip_history: bool,
    tags: &std::collections::BTreeMap<String, String>,
    idempotency_key: &str,
    exclude_client: &str,
) -> Result<api::PublishResult, ApiError> {
    publish_begin(
        state,
        channel,
        data,
        skip_history,
        tags,
        idempotency_key,
        exclude_client,
    )
    .await?
    .await
}

/// Check and send one publication; the returned future answers it.
async fn publish_begin(
    state: &EdgeState,
    channel: &str,
    data: Payload,
    skip_history: bool,
    tags: &std::collections::BTreeMap<String, String>,
    idempotency_key: &str,
    exclude_client: &str,
) -> Result<PendingApiPublish, ApiError> {
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
            idempotency_key: (!idempotency_key.is_empty()).then(|| idempotency_key.to_string()),
            ..PublishOptions::for_channel(opts)
        }
    };
    let mut p = Publication::new(data);
    p.tags = tags.clone();
    p.exclude_client = (!exclude_client.is_empty()).then(|| Arc::from(exclude_client));
    let answer = state
        .node
        .publish_begin(ch.as_str(), p, &po)
        .await
        .map_err(broker_error)?;
    Ok(Box::pin(async move {
        let pos = answer.await.map_err(broker_error)?;
        Ok(api::PublishResult {
            offset: pos.offset,
            epoch: pos.epoch,
        })
    }))
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

async fn call(state: &EdgeState, method: &str, body: Value) -> Result<Box<RawValue>, ApiFailure> {
    match method {
        "publish" => {
            let r: api::PublishRequest = parse(body)?;
            Ok(to_value(publish_request(state, r).await?.await?))
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
        "sio_emit"
            if body
                .get("room")
                .and_then(Value::as_str)
                .is_some_and(|r| !r.is_empty()) =>
        {
            // To a room: a publication on its channel, tagged with the event, from which
            // every socket in the room, on every edge, gets it.
            let r: api::SioEmitRequest = parse(body)?;
            let channel = sio_room_channel(state, r.namespace.as_deref(), &r.room)?;
            if !event_name_ok(&r.event) || !r.client.is_empty() || r.ack.is_some() {
                return Err(ApiError::BAD_REQUEST.into());
            }
            check_sio_args(state, &r.args)?;
            let data = serde_json::value::to_raw_value(&r.args)
                .map_err(|_| ApiFailure::Api(ApiError::BAD_REQUEST))?;
            let data = Payload::json(Arc::from(data)).ok_or(ApiError::BAD_REQUEST)?;
            let tags = std::collections::BTreeMap::from([(
                groupcast_core::hub::TAG_SIO_EVENT.to_string(),
                r.event,
            )]);
            Ok(to_value(
                publish_one(state, &channel, data, false, &tags, "", &r.except).await?,
            ))
        }
        "subscribe" | "unsubscribe" | "disconnect" | "refresh" | "relay_send" | "relay_close"
        | "relay_transfer" | "relay_target_gone" | "sio_emit" | "sio_ack" | "sio_join"
        | "sio_leave" | "sio_disconnect" => {
            let action = ConnAction::parse(state, method, body.clone())?;
            let found_here = action.apply_local(state);
            fan_out(state, method, body, action.target(), found_here).await?;
            Ok(empty())
        }
        "presence" | "presence_stats" => {
            let r: api::ChannelRequest = parse(body)?;
            let (ch, opts) = state.channel(&r.channel).map_err(channel_error)?;
            if !opts.presence {
                return Err(ApiError::NOT_AVAILABLE.into());
            }
            let m = &state.node;
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
                .channels(prefix, MAX_CHANNELS)
                .await
                .map_err(|_| ApiError::NOT_AVAILABLE)?
                .into_iter()
                .filter(|(name, _)| crate::glob::glob_match(&r.pattern, name))
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
                nodes: super::forward::nodes(state).await?,
            }))
        }
        _ => Err(ApiError::METHOD_NOT_FOUND.into()),
    }
}
