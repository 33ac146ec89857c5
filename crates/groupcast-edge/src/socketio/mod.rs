//! The Socket.IO server: Engine.IO v4 (HTTP long-polling, WebSocket, the upgrade from one to
//! the other) and Socket.IO v5 (namespaces, events, acknowledgements, binary attachments) at
//! `[socketio] path` (docs/socketio.md).
//!
//! * Each Engine.IO session (`sid`) is one [`Conn`] of kind `SocketIo`: registered by user and
//!   client id (so the API's actions by client reach it, on any edge), subscribed to the
//!   channels of its sockets' rooms, and bounded by `client.max_queue_bytes` like any other
//!   connection. A session task ([`socket`]) runs the Socket.IO side; the transports
//!   ([`engine`]) move its queue to the client and the client's packets to it.
//! * A room `R` of namespace `N` is the channel `<channel_prefix of N>R`: a publication there,
//!   from anywhere (the API, a Centrifugo client, a raw relay, another edge), reaches the socket
//!   as an event (the `sio_event` tag's, else the namespace's `default_event`).
//! * The sockets' events go to the namespace's backend target, as relay routes' do
//!   (docs/backends.md); the backend answers with the API's `sio_*` commands by client id.
//!
//! The HTTP errors are Engine.IO's (`{"code", "message"}`, 400): 0 unknown transport, 1 unknown
//! session, 2 a handshake that is not a GET, 3 a bad request (an overlapping poll, a malformed
//! payload), 5 an unsupported protocol version (`EIO=3`); 413 for a body over
//! `max_http_buffer_size`. Each is counted in `groupcast_socketio_http_errors_total{code}`.

pub(crate) mod engine;
mod forward;
mod recovery;
mod rooms;
pub(crate) mod socket;

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, FromRequestParts, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use groupcast_proto::socketio::engineio::HttpError;
use parking_lot::RwLock;

use crate::origin::origin_allowed;
use crate::state::EdgeState;
use crate::tls::ClientAddr;

/// This edge's Engine.IO sessions by sid.
#[derive(Default)]
pub struct Sessions {
    by_sid: RwLock<HashMap<String, Arc<engine::Session>>>,
}

impl Sessions {
    fn get(&self, sid: &str) -> Option<Arc<engine::Session>> {
        self.by_sid.read().get(sid).cloned()
    }

    fn insert(&self, s: Arc<engine::Session>) {
        self.by_sid.write().insert(s.sid.clone(), s);
    }

    pub(crate) fn remove(&self, sid: &str) {
        self.by_sid.write().remove(sid);
    }
}

/// What the Socket.IO handlers share.
pub struct SioState {
    pub edge: Arc<EdgeState>,
    pub sessions: Sessions,
    pub(crate) ns: Arc<rooms::NsMap>,
    /// This edge's node on the node bus (sids carry it), when there is a bus.
    pub(crate) me: Option<String>,
    /// Signs and checks connection-state recovery tokens.
    pub(crate) key: Arc<recovery::Key>,
    /// The Socket.IO side of a new session (`socket::run`), which the transports start: given
    /// here so that the transports (`engine`) do not import the session logic above them.
    pub(crate) session_task: engine::SessionTask,
}

/// The node-bus address of an edge's Socket.IO requests.
fn bus_node(node: &str) -> String {
    crate::holder::bus_address(node, "socketio")
}

/// Sets up Socket.IO when it is on: its state, and on a cluster the answering of the polling
/// requests other edges forward to this one (the sid names the edge that holds a session, so
/// a load balancer need not be sticky).
pub async fn start(edge: &Arc<EdgeState>) -> Result<Option<Arc<SioState>>, String> {
    if !edge.config.socketio.enabled {
        return Ok(None);
    }
    let me = edge.node.local_node().map(|(node, _)| node);
    let sio = Arc::new(SioState {
        ns: Arc::new(rooms::NsMap::new(&edge.config.socketio)),
        session_task: |sio, session, detached, inbound, hs| {
            Box::pin(socket::run(sio, session, detached, inbound, hs))
        },
        edge: edge.clone(),
        sessions: Sessions::default(),
        me: me.clone(),
        key: Arc::new(recovery::Key::new(
            &edge.config.socketio.recovery_secret,
            &edge.config.nats.cluster_secret,
        )),
    });
    if let (Some(bus), Some(me)) = (edge.node.bus(), me) {
        let weak = Arc::downgrade(&sio);
        bus.serve(
            &bus_node(&me),
            Arc::new(move |payload| {
                let sio = weak.upgrade();
                Box::pin(async move {
                    match sio {
                        Some(sio) => forward::answer(&sio, &payload).await,
                        None => forward::gone(),
                    }
                })
            }),
        )
        .await
        .map_err(|e| format!("cannot serve Socket.IO forwarding: {e}"))?;
    }
    Ok(Some(sio))
}

/// The routes at `[socketio] path` (none when Socket.IO is off).
pub fn router(sio: Option<Arc<SioState>>) -> Router {
    let Some(sio) = sio else {
        return Router::new();
    };
    let path = sio.edge.config.socketio.path.clone();
    Router::new().route(&path, any(handle)).with_state(sio)
}

fn http_error(e: HttpError, cors: &HeaderMap) -> Response {
    metrics::counter!("groupcast_socketio_http_errors_total", "code" => e.code().to_string())
        .increment(1);
    let mut r = (
        StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST),
        [(header::CONTENT_TYPE, "application/json")],
        e.body(),
    )
        .into_response();
    r.headers_mut().extend(cors.clone());
    r
}

/// CORS headers for a browser on another origin that `client.allowed_origins` allows (the
/// long-polling requests are plain XHR/fetch); none for requests without `Origin`.
fn cors(state: &EdgeState, headers: &HeaderMap) -> Result<HeaderMap, ()> {
    let mut out = HeaderMap::new();
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(out);
    };
    if !origin_allowed(&state.config.client.allowed_origins, headers) {
        return Err(());
    }
    out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    out.insert(
        header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
        HeaderValue::from_static("true"),
    );
    out.insert(header::VARY, HeaderValue::from_static("Origin"));
    Ok(out)
}

async fn handle(
    State(sio): State<Arc<SioState>>,
    ConnectInfo(ClientAddr(peer)): ConnectInfo<ClientAddr>,
    method: Method,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    request: axum::extract::Request,
) -> Response {
    let state = &sio.edge;
    let Ok(cors) = cors(state, &headers) else {
        return http_error(HttpError::Forbidden, &HeaderMap::new());
    };
    if method == Method::OPTIONS {
        let mut r = StatusCode::NO_CONTENT.into_response();
        r.headers_mut().extend(cors);
        r.headers_mut().insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST"),
        );
        r.headers_mut().insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("content-type"),
        );
        return r;
    }
    match q.get("EIO").map(String::as_str) {
        Some("4") => {}
        // Engine.IO 3 (socket.io-client 2.x) and anything else.
        _ => return http_error(HttpError::UnsupportedProtocolVersion, &cors),
    }
    let websocket = match q.get("transport").map(String::as_str) {
        Some("polling") => false,
        Some("websocket") => true,
        _ => return http_error(HttpError::TransportUnknown, &cors),
    };
    let (mut parts, body) = request.into_parts();
    if websocket {
        if method != Method::GET {
            return http_error(HttpError::BadRequest, &cors);
        }
        let ws = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
            Ok(ws) => ws,
            Err(_) => return http_error(HttpError::BadRequest, &cors),
        };
        return match q.get("sid").cloned() {
            None => engine::websocket_handshake(sio.clone(), ws, peer, headers, q).await,
            Some(sid) => match sio.sessions.get(&sid) {
                Some(s) if s.can_upgrade() => engine::websocket_upgrade(sio.clone(), s, ws),
                // Upgraded already, or an upgrade under way.
                Some(_) => http_error(HttpError::BadRequest, &cors),
                // A session of another edge cannot move its transport here: the client keeps
                // polling (through any edge).
                None if forward::elsewhere(&sio, &sid).is_some() => {
                    metrics::counter!("groupcast_socketio_upgrades_refused_total", "reason" => "other_edge")
                        .increment(1);
                    http_error(HttpError::BadRequest, &cors)
                }
                None => http_error(HttpError::UnknownSid, &cors),
            },
        };
    }
    let Some(sid) = q.get("sid").cloned() else {
        if method != Method::GET {
            return http_error(HttpError::BadHandshakeMethod, &cors);
        }
        return respond(
            engine::polling_handshake(&sio, peer, &headers, q).await,
            cors,
        );
    };
    let body = if method == Method::POST {
        let limit = state.config.socketio.max_http_buffer_size;
        match axum::body::to_bytes(body, limit).await {
            Ok(b) => Some(b),
            Err(_) => {
                metrics::counter!("groupcast_socketio_http_errors_total", "code" => "413")
                    .increment(1);
                crate::metrics::Metrics::limit_hit("socketio_max_http_buffer_size");
                match forward::elsewhere(&sio, &sid) {
                    Some(node) => forward::close_too_big(&sio, &node, &sid).await,
                    None => {
                        if let Some(s) = sio.sessions.get(&sid) {
                            s.conn
                                .close(groupcast_proto::DisconnectCode::MESSAGE_TOO_BIG);
                        }
                    }
                }
                let refused = engine::Refusal::Status(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "Payload Too Large".into(),
                );
                return respond(Err(refused), cors);
            }
        }
    } else if method == Method::GET {
        None
    } else {
        let refused =
            engine::Refusal::Status(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed".into());
        return respond(Err(refused), cors);
    };
    // Engine.IO clients make each request unique with `t`: a poll that comes again with the
    // same `t` is the balancer retrying it.
    let t = q.get("t").map(String::as_str);
    let result = match forward::elsewhere(&sio, &sid) {
        Some(node) => forward::request(&sio, &node, &sid, body, t).await,
        None => local(&sio, &sid, body, t).await,
    };
    respond(result, cors)
}

/// A polling request (`GET` without a body, `POST` with one) for a session of this edge.
pub(crate) async fn local(
    sio: &SioState,
    sid: &str,
    body: Option<axum::body::Bytes>,
    t: Option<&str>,
) -> Result<String, engine::Refusal> {
    let Some(s) = sio.sessions.get(sid) else {
        return Err(HttpError::UnknownSid.into());
    };
    match body {
        None => engine::poll(&s, t).await,
        Some(b) => engine::post(&s, b).await,
    }
}

fn respond(result: Result<String, engine::Refusal>, cors: HeaderMap) -> Response {
    match result {
        Ok(body) => {
            let mut r =
                ([(header::CONTENT_TYPE, "text/plain; charset=UTF-8")], body).into_response();
            r.headers_mut().extend(cors);
            r
        }
        Err(engine::Refusal::Eio(e)) => http_error(e, &cors),
        Err(engine::Refusal::Status(status, text)) => {
            let mut r = (status, text).into_response();
            r.headers_mut().extend(cors);
            r
        }
    }
}
