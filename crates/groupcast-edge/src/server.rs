//! The HTTP + WebSocket listener: routes, origin checks, metrics, health.
//!
//! | route | what |
//! |---|---|
//! | `GET /connection/websocket` | Centrifugo client protocol v2 (JSON; protobuf with the `centrifuge-protobuf` subprotocol) |
//! | `POST /connection/http_stream`, `GET /connection/sse`, `POST /emulation` | the same protocol (JSON) over HTTP streaming and SSE, see `session::stream` |
//! | `GET /ws/relay/{channel}` (and `/ws/relay/`) | raw relay |
//! | `POST /api/{method}` | server API |
//! | `GET /metrics` | Prometheus text format |
//! | `GET /healthz` | 200 while the process serves |
//! | `GET /readyz` | 200 while accepting clients; 503 once shutting down or while the backbone (NATS) is unreachable. An unreachable membership service keeps it 200 (pub/sub, history and recovery still work; presence answers 108) and says so in the body |
//! | `GET /` | a relay demo page (two tabs talk to each other) |
//! | `GET /dashboard` | the operator dashboard page; `GET /dashboard/data`: its data (API key), see `control::dashboard` |
//! | `GET` a `[[relay.routes]]` path | relay to a backend, see [`crate::relay::route`] |

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use groupcast_core::Node;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use std::future::IntoFuture;
use std::net::SocketAddr;

use groupcast_proto::DisconnectCode;

use crate::config::Config;
use crate::control::{api, dashboard};
use crate::metrics::Metrics;
use crate::origin::{origin_allowed, route_origin_allowed};
use crate::state::EdgeState;
use crate::tls::{CertStore, ClientAddr, EdgeListener};
use crate::{relay, session};

/// Serve `config` on `listener` until `shutdown` is cancelled, then drain.
///
/// At the signal `/readyz` answers 503; clients are still served for
/// `shutdown.delay` (load balancers that follow readiness stop sending new
/// ones meanwhile). Then the drain, all within `shutdown.grace_period`: the
/// listener stops accepting; open connections are told "shutdown"
/// (3001, reconnect) in batches of `shutdown.drain_batch_size` every
/// `shutdown.drain_batch_interval` (or, with `shutdown.drain_window`, in batches
/// sized to spread them over the window), each after its queued output is written;
/// then their tasks are awaited. What is still open at the deadline is
/// closed without waiting. Returns when done.
pub async fn run(
    config: Config,
    listener: TcpListener,
    node: Arc<Node>,
    shutdown: CancellationToken,
) -> Result<(), crate::EdgeError> {
    let state = EdgeState::new(config, node, shutdown).map_err(crate::EdgeError::Config)?;
    // From here on `shutdown` is the drain: `shutdown.delay` after the signal.
    let shutdown = state.shutdown.clone();
    Metrics::get();
    metrics::gauge!("groupcast_drain_connections_left").set(0.0);
    tokio::spawn(crate::fence::watch(state.clone()));
    crate::control::start(&state)
        .await
        .map_err(crate::EdgeError::Cluster)?;
    let sio = crate::socketio::start(&state)
        .await
        .map_err(crate::EdgeError::Cluster)?;
    let http_transports = session::http_transports(&state)
        .await
        .map_err(crate::EdgeError::Cluster)?;
    let app = router(state.clone(), sio).merge(http_transports);
    let stop = shutdown.clone();
    let app = app.into_make_service_with_connect_info::<ClientAddr>();
    let tls = match state.config.tls.enabled() {
        false => None,
        true => {
            let t = &state.config.tls;
            let store = Arc::new(
                CertStore::open(t.cert_file.as_ref(), t.key_file.as_ref())
                    .map_err(crate::EdgeError::Config)?,
            );
            tokio::spawn(store.clone().watch(t.reload_every(), shutdown.clone()));
            Some(store.server_config())
        }
    };
    let limits = crate::request_deadlines::HeadLimits {
        first_byte: state.config.client.first_byte_timeout,
        request_head: state.config.client.request_head_timeout,
    };
    let listener = EdgeListener::new(listener, tls, limits, shutdown.clone())?;
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .into_future();
    // The drain starts at the signal, not when plain HTTP requests finish.
    let drained = async {
        shutdown.cancelled().await;
        drain(&state).await;
    };
    let (served, ()) = tokio::join!(served, drained);
    served.map_err(crate::EdgeError::Io)
}

async fn drain(state: &EdgeState) {
    let cfg = &state.config.shutdown;
    let deadline = tokio::time::Instant::now() + cfg.grace_period;
    let conns = state.open_connections();
    tracing::info!(connections = conns.len(), "draining");
    // Connections not yet told to go (0 when not draining).
    let left = metrics::gauge!("groupcast_drain_connections_left");
    left.set(conns.len() as f64);
    let batches = cfg.drain_batches(conns.len());
    tracing::info!(
        batches = batches.len(),
        interval_ms = cfg.drain_batch_interval.as_millis() as u64,
        "drain batches"
    );
    let mut rest = &conns[..];
    for (i, size) in batches.into_iter().enumerate() {
        if i > 0 {
            tokio::time::sleep_until(
                deadline.min(tokio::time::Instant::now() + cfg.drain_batch_interval),
            )
            .await;
        }
        let (batch, after) = rest.split_at(size.min(rest.len()));
        rest = after;
        for conn in batch {
            conn.drain(DisconnectCode::SHUTDOWN);
        }
        left.decrement(batch.len() as f64);
    }
    // Upgrades that slipped in while the listener closed.
    for conn in state.open_connections() {
        conn.drain(DisconnectCode::SHUTDOWN);
    }
    state.tasks.close();
    if tokio::time::timeout_at(deadline, state.tasks.wait())
        .await
        .is_err()
    {
        let left = state.open_connections();
        tracing::warn!(
            connections = left.len(),
            "grace period over: closing the rest"
        );
        for conn in left {
            conn.close(DisconnectCode::SHUTDOWN);
        }
        // Closing is immediate; give the tasks a moment to finish cleanup.
        let _ =
            tokio::time::timeout(std::time::Duration::from_millis(500), state.tasks.wait()).await;
    }
}

pub fn router(state: Arc<EdgeState>, sio: Option<Arc<crate::socketio::SioState>>) -> Router {
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
        // `[[relay.routes]]`: matched here rather than as axum routes, so
        // a configured path can never clash with the edge's own.
        .fallback(backend_route)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state.clone())
        .merge(crate::socketio::router(sio))
        .merge(dashboard::router(state))
}

/// The WebSocket subprotocol of the Centrifugo protocol's protobuf encoding.
pub const PROTOBUF_SUBPROTOCOL: &str = "centrifuge-protobuf";

fn configure(ws: WebSocketUpgrade, state: &EdgeState) -> WebSocketUpgrade {
    let c = &state.config.client;
    ws.read_buffer_size(c.read_buffer_size)
        .write_buffer_size(0)
        .max_write_buffer_size(c.max_queue_bytes.saturating_mul(2))
        .max_message_size(c.max_message_size)
        .max_frame_size(c.max_message_size)
}

/// Checks every WebSocket upgrade passes before it is accepted.
fn admit(
    state: &EdgeState,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<(), (StatusCode, &'static str)> {
    let c = &state.config.client;
    if !origin_allowed(&c.allowed_origins, headers) {
        return Err((StatusCode::FORBIDDEN, "origin not allowed"));
    }
    admit_origin_checked(state, headers, peer)
}

/// [`admit`] once the origin was checked (relay routes have their own
/// allowed origins).
fn admit_origin_checked(
    state: &EdgeState,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<(), (StatusCode, &'static str)> {
    state.admit_connection(headers, peer)
}

async fn websocket(
    State(state): State<Arc<EdgeState>>,
    ConnectInfo(ClientAddr(peer)): ConnectInfo<ClientAddr>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if let Err(refused) = admit(&state, &headers, peer) {
        return refused.into_response();
    }
    let st = state.clone();
    // What the event proxies forward of the upgrade request (cookies...).
    let kept = state.proxies.keep_headers(&headers);
    // The protobuf encoding when the client asks for it (Centrifugo's
    // SDKs do by subprotocol); JSON otherwise.
    let ws = ws.protocols([PROTOBUF_SUBPROTOCOL]);
    let protobuf = ws
        .selected_protocol()
        .is_some_and(|p| p == PROTOBUF_SUBPROTOCOL);
    configure(ws, &state).on_upgrade(move |socket| {
        state
            .tasks
            .track_future(session::serve(st, socket, kept, protobuf))
    })
}

#[derive(Deserialize)]
struct RelayQuery {
    token: Option<String>,
}

async fn relay_default(
    State(state): State<Arc<EdgeState>>,
    ConnectInfo(ClientAddr(peer)): ConnectInfo<ClientAddr>,
    headers: HeaderMap,
    Query(q): Query<RelayQuery>,
    ws: WebSocketUpgrade,
) -> Response {
    let channel = state.config.relay.default_channel.clone();
    relay_upgrade(state, peer, headers, channel, q, ws)
}

async fn relay_channel(
    State(state): State<Arc<EdgeState>>,
    ConnectInfo(ClientAddr(peer)): ConnectInfo<ClientAddr>,
    headers: HeaderMap,
    Path(channel): Path<String>,
    Query(q): Query<RelayQuery>,
    ws: WebSocketUpgrade,
) -> Response {
    relay_upgrade(state, peer, headers, channel, q, ws)
}

fn relay_upgrade(
    state: Arc<EdgeState>,
    peer: SocketAddr,
    headers: HeaderMap,
    channel: String,
    q: RelayQuery,
    ws: WebSocketUpgrade,
) -> Response {
    if !state.config.relay.enabled {
        return (StatusCode::NOT_FOUND, "relay disabled").into_response();
    }
    if let Err(refused) = admit(&state, &headers, peer) {
        return refused.into_response();
    }
    let auth = match relay::raw::authorize(&state, &channel, q.token.as_deref(), &headers) {
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
    configure(ws, &state).on_upgrade(move |socket| {
        state
            .tasks
            .track_future(relay::raw::serve(st, socket, auth))
    })
}

/// A `[[relay.routes]]` path (anything else: 404).
async fn backend_route(
    State(state): State<Arc<EdgeState>>,
    ConnectInfo(ClientAddr(peer)): ConnectInfo<ClientAddr>,
    uri: Uri,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let Some((route, params)) = state.routes.route(uri.path()) else {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(refused) => return refused.into_response(),
    };
    let Ok(Query(query)) = Query::<BTreeMap<String, String>>::try_from_uri(&uri) else {
        return (StatusCode::BAD_REQUEST, "bad query string").into_response();
    };
    let cfg = &state.routes.routes[route].config;
    if !route_origin_allowed(
        &cfg.allowed_origins,
        &state.config.client.public_origins,
        state.config.tls.enabled(),
        &headers,
        &uri,
    ) {
        return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
    }
    if let Err(refused) = admit_origin_checked(&state, &headers, peer) {
        return refused.into_response();
    }
    let req = crate::relay::route::Request {
        route,
        path: uri.path().to_string(),
        params,
        query,
        headers: state.proxies.keep_headers(&headers),
    };
    let st = state.clone();
    configure(ws, &state).on_upgrade(move |socket| {
        state
            .tasks
            .track_future(crate::relay::route::serve(st, socket, req))
    })
}

async fn metrics(State(state): State<Arc<EdgeState>>) -> Response {
    let m = Metrics::get();
    m.channels.set(state.node.num_local_channels() as f64);
    // Tasks alive in this runtime (sessions, their writers, background
    // loops): a leak shows as growth with a steady connection count.
    metrics::gauge!("groupcast_runtime_tasks").set(
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks() as f64,
    );
    let body = crate::metrics::install().render();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

async fn readyz(State(state): State<Arc<EdgeState>>) -> Response {
    if state.stopping.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response()
    } else if let Err(why) = state.node.backbone_health() {
        (StatusCode::SERVICE_UNAVAILABLE, why).into_response()
    } else if !state.node.membership_available()
        && state
            .lease_fenced
            .load(std::sync::atomic::Ordering::Acquire)
    {
        // The service expired this edge's lease (`crate::fence`): only this
        // edge is cut off, the others take its clients.
        (StatusCode::SERVICE_UNAVAILABLE, "membership lease lost").into_response()
    } else if !state.node.membership_available() {
        // Every edge loses the service together: taking them all out of
        // the load balancer would stop pub/sub too, for nothing.
        "ready (membership unavailable: presence answers 108)".into_response()
    } else {
        "ready".into_response()
    }
}
