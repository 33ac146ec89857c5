//! The HTTP + WebSocket listener: routes, origin checks, metrics, health.
//!
//! | route | what |
//! |---|---|
//! | `GET /connection/websocket` | Centrifugo client protocol v2 (JSON) |
//! | `GET /ws/relay/{channel}` (and `/ws/relay/`) | raw relay |
//! | `POST /api/{method}` | server API |
//! | `GET /metrics` | Prometheus text format |
//! | `GET /healthz` | 200 while the process serves |
//! | `GET /readyz` | 200 while accepting clients, 503 once shutting down |
//! | `GET /` | a relay demo page (two tabs talk to each other) |

use std::sync::Arc;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use groupcast_core::Node;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::state::EdgeState;
use crate::{api, relay, session};

/// Serve `config` on `listener` until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    listener: TcpListener,
    node: Arc<Node>,
    shutdown: CancellationToken,
) -> Result<(), crate::EdgeError> {
    let state = EdgeState::new(config, node, shutdown.clone()).map_err(crate::EdgeError::Config)?;
    Metrics::get();
    let app = router(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .map_err(crate::EdgeError::Io)
}

pub fn router(state: Arc<EdgeState>) -> Router {
    let body_limit = state.config.api.max_body_bytes + 1;
    Router::new()
        .route("/connection/websocket", get(websocket))
        .route("/ws/relay/", get(relay_default))
        .route("/ws/relay/{channel}", get(relay_channel))
        .route("/api/{method}", post(api::handle))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/", get(|| async { Html(include_str!("relay_demo.html")) }))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// Is the browser origin allowed? Requests without `Origin` are not from a
/// browser page and are allowed.
pub fn origin_allowed(allowed: &[String], headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    allowed
        .iter()
        .any(|p| p == "*" || api::glob_match(&p.to_ascii_lowercase(), &origin.to_ascii_lowercase()))
}

fn configure(ws: WebSocketUpgrade, state: &EdgeState) -> WebSocketUpgrade {
    let c = &state.config.client;
    ws.read_buffer_size(c.read_buffer_size)
        .write_buffer_size(0)
        .max_write_buffer_size(c.max_queue_bytes.saturating_mul(2))
        .max_message_size(c.max_message_size)
        .max_frame_size(c.max_message_size)
}

async fn websocket(
    State(state): State<Arc<EdgeState>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if !origin_allowed(&state.config.client.allowed_origins, &headers) {
        return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
    }
    if state.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    let st = state.clone();
    configure(ws, &state).on_upgrade(move |socket| session::serve(st, socket))
}

#[derive(Deserialize)]
struct RelayQuery {
    token: Option<String>,
}

async fn relay_default(
    State(state): State<Arc<EdgeState>>,
    headers: HeaderMap,
    Query(q): Query<RelayQuery>,
    ws: WebSocketUpgrade,
) -> Response {
    let channel = state.config.relay.default_channel.clone();
    relay_upgrade(state, headers, channel, q, ws)
}

async fn relay_channel(
    State(state): State<Arc<EdgeState>>,
    headers: HeaderMap,
    Path(channel): Path<String>,
    Query(q): Query<RelayQuery>,
    ws: WebSocketUpgrade,
) -> Response {
    relay_upgrade(state, headers, channel, q, ws)
}

fn relay_upgrade(
    state: Arc<EdgeState>,
    headers: HeaderMap,
    channel: String,
    q: RelayQuery,
    ws: WebSocketUpgrade,
) -> Response {
    if !state.config.relay.enabled {
        return (StatusCode::NOT_FOUND, "relay disabled").into_response();
    }
    if !origin_allowed(&state.config.client.allowed_origins, &headers) {
        return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
    }
    if state.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    let auth = match relay::authorize(&state, &channel, q.token.as_deref()) {
        Ok(a) => a,
        Err(e) => {
            let status = match e.code {
                102 | 107 => StatusCode::BAD_REQUEST,
                101 | 109 => StatusCode::UNAUTHORIZED,
                _ => StatusCode::FORBIDDEN,
            };
            return (status, e.message).into_response();
        }
    };
    let st = state.clone();
    configure(ws, &state).on_upgrade(move |socket| relay::serve(st, socket, auth))
}

async fn metrics(State(state): State<Arc<EdgeState>>) -> Response {
    let m = Metrics::get();
    m.channels.set(state.node.hub.num_channels() as f64);
    let body = crate::metrics::install().render();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

async fn readyz(State(state): State<Arc<EdgeState>>) -> Response {
    if state.shutdown.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response()
    } else {
        "ready".into_response()
    }
}
