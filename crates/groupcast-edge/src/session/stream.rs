//! The Centrifugo protocol over HTTP, for clients that cannot open a WebSocket (JSON only):
//!
//! * `POST /connection/http_stream`: the body is the client's first frame (its `connect`
//!   command); the response streams the replies and pushes, one JSON message per line.
//! * `GET /connection/sse?cf_connect=<the connect command, URL-encoded>`: the same as an
//!   event stream (`text/event-stream`), one `data:` line (one event) per message.
//!
//! Either is one connection with the same [`Session`](super::Session) as a WebSocket: the
//! session's writer writes into the response body instead of a socket, and the client's later
//! commands reach it through the emulation endpoint ([`super::emulation`]), named by the
//! `session` id of the connect reply. That id names this edge ([`crate::holder`]), so an
//! emulation request that a load balancer sends to another edge is forwarded here over the
//! node bus: no sticky sessions. Where a WebSocket gets a close frame, these get a
//! `disconnect` push, then the end of the body. A client that goes away (the response body is
//! dropped) ends the session at once.
//!
//! Refusals before the stream starts (counted in
//! `groupcast_stream_refused_total{transport, reason}`): 400 a missing or malformed connect
//! frame, 413 one over `client.max_message_size`, 415 protobuf (`application/octet-stream`),
//! 403 an origin not in `client.allowed_origins`; then the WebSocket's admission (503 shutting
//! down or `client.max_connections`, 429 `client.connection_rate_per_ip`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::ws::{Message, Utf8Bytes};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use groupcast_core::hub::SubscriberKind;
use groupcast_proto::client as proto;
use parking_lot::RwLock;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::holder;
use crate::metrics::Metrics;
use crate::origin::origin_allowed;
use crate::state::EdgeState;
use crate::tls::ClientAddr;

use super::{serve_on, Transport};

/// Emulation requests waiting for one session's task (`emulation_queue_max`; each at most
/// `client.max_message_size`): one more is answered 429.
pub const EMULATION_QUEUE: usize = 16;
/// Response body chunks between a session's writer and the HTTP response; the writer waits
/// beyond that, and its connection's queue (`client.max_queue_bytes`) takes the rest.
const BODY_CHUNKS: usize = 8;

/// The HTTP-transport sessions of this edge, by session id.
pub struct Streams {
    pub(super) edge: Arc<EdgeState>,
    sessions: RwLock<HashMap<String, mpsc::Sender<Utf8Bytes>>>,
    /// This edge's node on the node bus (session ids name it), when there is a bus.
    pub(super) me: Option<String>,
}

/// What became of a frame for a local session.
pub(super) enum Delivery {
    Delivered,
    Unknown,
    /// Its queue ([`EMULATION_QUEUE`]) is full.
    Busy,
}

impl Streams {
    /// Hands `frame` (commands, as the client sent them) to session `id` of this edge.
    pub(super) fn deliver(&self, id: &str, frame: Utf8Bytes) -> Delivery {
        let Some(tx) = self.sessions.read().get(id).cloned() else {
            return Delivery::Unknown;
        };
        match tx.try_send(frame) {
            Ok(()) => Delivery::Delivered,
            Err(mpsc::error::TrySendError::Full(_)) => Delivery::Busy,
            Err(mpsc::error::TrySendError::Closed(_)) => Delivery::Unknown,
        }
    }
}

/// The HTTP transports' sessions of `edge` (none yet).
pub(super) fn start(edge: &Arc<EdgeState>) -> Arc<Streams> {
    // Ids name this edge only where another edge could forward to it.
    let me = edge
        .node
        .bus()
        .and_then(|_| edge.node.local_node())
        .map(|(node, _)| node);
    Arc::new(Streams {
        edge: edge.clone(),
        sessions: RwLock::new(HashMap::new()),
        me,
    })
}

/// The routes of the transports that are on.
pub(super) fn router(streams: Arc<Streams>) -> Router {
    let c = &streams.edge.config.client;
    let mut r = Router::new();
    if c.http_stream {
        r = r.route("/connection/http_stream", post(http_stream));
    }
    if c.sse {
        r = r.route("/connection/sse", get(sse));
    }
    r.with_state(streams)
}

/// Why a request did not open a stream.
fn refuse(
    transport: Transport,
    status: StatusCode,
    reason: &'static str,
    text: &'static str,
) -> Response {
    metrics::counter!("groupcast_stream_refused_total", "transport" => transport.name(), "reason" => reason)
        .increment(1);
    (status, text).into_response()
}

/// Whether a request's body is protobuf (which these transports do not speak).
pub(super) fn is_protobuf(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/octet-stream"))
}

/// A request body that is too large or could not be read.
pub(super) enum BodyError {
    TooLarge,
    Unreadable,
}

/// The whole body, when it is at most `limit` bytes (not read further once over).
pub(super) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, BodyError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge);
    }
    let mut out = BytesMut::new();
    let mut chunks = body.into_data_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|_| BodyError::Unreadable)?;
        if out.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge);
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.freeze())
}

/// The connect frame, when it decodes as commands (else 400, before anything is opened).
fn connect_frame(bytes: Bytes) -> Option<Utf8Bytes> {
    proto::decode_commands(&bytes).ok()?;
    Utf8Bytes::try_from(bytes).ok()
}

/// A new stream's admission: the origin, then what every connection passes.
fn admit(
    edge: &EdgeState,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<(), (StatusCode, &'static str)> {
    if !origin_allowed(&edge.config.client.allowed_origins, headers) {
        return Err((StatusCode::FORBIDDEN, "origin not allowed"));
    }
    edge.admit_connection(headers, peer)
}

async fn http_stream(
    State(s): State<Arc<Streams>>,
    ConnectInfo(ClientAddr(peer)): ConnectInfo<ClientAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    const T: Transport = Transport::HttpStream;
    if is_protobuf(&headers) {
        return refuse(
            T,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "protobuf",
            "the protobuf protocol is not served over HTTP streaming: use JSON or a WebSocket",
        );
    }
    let limit = s.edge.config.client.max_message_size;
    let frame = match read_body(&headers, body, limit).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => {
            Metrics::limit_hit("max_message_size");
            return refuse(
                T,
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                "connect frame over client.max_message_size",
            );
        }
        Err(BodyError::Unreadable) => {
            return refuse(
                T,
                StatusCode::BAD_REQUEST,
                "unreadable",
                "request body unreadable",
            )
        }
    };
    let Some(frame) = connect_frame(frame) else {
        return refuse(
            T,
            StatusCode::BAD_REQUEST,
            "malformed",
            "the body must be the connect command (JSON)",
        );
    };
    if let Err((status, text)) = admit(&s.edge, &headers, peer) {
        return refuse(T, status, "admission", text);
    }
    open(&s, T, frame, &headers)
}

#[derive(Deserialize)]
struct SseQuery {
    cf_connect: Option<String>,
}

async fn sse(
    State(s): State<Arc<Streams>>,
    ConnectInfo(ClientAddr(peer)): ConnectInfo<ClientAddr>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    const T: Transport = Transport::Sse;
    let connect = match Query::<SseQuery>::try_from_uri(&uri) {
        Ok(Query(SseQuery {
            cf_connect: Some(c),
        })) => c,
        _ => {
            return refuse(
                T,
                StatusCode::BAD_REQUEST,
                "malformed",
                "cf_connect (the connect command, JSON) is missing",
            )
        }
    };
    if connect.len() > s.edge.config.client.max_message_size {
        Metrics::limit_hit("max_message_size");
        return refuse(
            T,
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "connect frame over client.max_message_size",
        );
    }
    let Some(frame) = connect_frame(Bytes::from(connect)) else {
        return refuse(
            T,
            StatusCode::BAD_REQUEST,
            "malformed",
            "cf_connect must be the connect command (JSON)",
        );
    };
    if let Err((status, text)) = admit(&s.edge, &headers, peer) {
        return refuse(T, status, "admission", text);
    }
    open(&s, T, frame, &headers)
}

/// The response body went away: its stream failed.
#[derive(Debug)]
struct ResponseGone;

/// Opens a connection whose session's output is the response body, and whose input is
/// `first` and then what the emulation endpoint delivers.
fn open(s: &Arc<Streams>, transport: Transport, first: Utf8Bytes, headers: &HeaderMap) -> Response {
    let edge = s.edge.clone();
    let (body_tx, body_rx) = mpsc::channel::<Bytes>(BODY_CHUNKS);
    let sink = Box::pin(futures_util::sink::unfold(
        body_tx,
        move |tx, msg: Message| async move {
            if let Some(chunk) = encode(transport, msg) {
                tx.send(chunk).await.map_err(|_| ResponseGone)?;
            }
            Ok::<_, ResponseGone>(tx)
        },
    ));
    let m = Metrics::get();
    let gauge = match transport {
        Transport::Sse => &m.connections_sse,
        _ => &m.connections_http_stream,
    };
    let opened = edge.open_with(sink, SubscriberKind::Protocol, gauge);
    let id = holder::new_id(s.me.as_deref());
    let (tx, rx) = mpsc::channel(EMULATION_QUEUE);
    s.sessions.write().insert(id.clone(), tx);
    // Cancelled when the response body is dropped: the client is gone.
    let gone = CancellationToken::new();
    let input = inbound(first, rx, gone.clone());
    let kept = edge.proxies.keep_headers(headers);
    let st = s.clone();
    tokio::spawn(edge.tasks.track_future(async move {
        serve_on(
            st.edge.clone(),
            opened,
            input,
            kept,
            transport,
            Some(id.clone()),
        )
        .await;
        st.sessions.write().remove(&id);
    }));
    let guard = gone.drop_guard();
    let body = futures_util::stream::unfold((body_rx, guard), |(mut rx, guard)| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, Infallible>(chunk), (rx, guard)))
    });
    let content_type = match transport {
        Transport::Sse => "text/event-stream",
        _ => "application/x-ndjson",
    };
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache, no-store"),
            // nginx: pass each chunk on at once, whatever `proxy_buffering` says.
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

type Inbound = Pin<Box<dyn Stream<Item = Result<Message, axum::Error>> + Send>>;

/// The session's input: `first`, then each delivered frame, until the client is gone.
fn inbound(first: Utf8Bytes, rx: mpsc::Receiver<Utf8Bytes>, gone: CancellationToken) -> Inbound {
    let rest = futures_util::stream::unfold((rx, gone), |(mut rx, gone)| async move {
        let frame = tokio::select! {
            biased;
            _ = gone.cancelled() => None,
            frame = rx.recv() => frame,
        };
        frame.map(|f| (Ok(Message::Text(f)), (rx, gone)))
    });
    Box::pin(futures_util::stream::once(async move { Ok(Message::Text(first)) }).chain(rest))
}

/// A message of the session's writer as bytes of the response body: a frame (messages
/// separated by `\n`) as lines, or as one event per message; the close frame as a
/// `disconnect` push. Nothing for the rest (pings are the protocol's `{}` messages).
fn encode(transport: Transport, msg: Message) -> Option<Bytes> {
    let frame: Bytes = match msg {
        Message::Text(t) => Bytes::from(t),
        Message::Close(Some(close)) => {
            Bytes::from(disconnect_push(close.code, close.reason.as_str()))
        }
        _ => return None,
    };
    let mut out = BytesMut::with_capacity(frame.len() + 16);
    match transport {
        Transport::Sse => {
            // serde_json output: a message holds no raw newline.
            for message in frame.split(|&b| b == b'\n') {
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(message);
                out.extend_from_slice(b"\n\n");
            }
        }
        _ => {
            out.extend_from_slice(&frame);
            out.extend_from_slice(b"\n");
        }
    }
    Some(out.freeze())
}

/// The `disconnect` push that ends an HTTP transport (a WebSocket gets a close frame).
fn disconnect_push(code: u16, reason: &str) -> Vec<u8> {
    // Codes 3500..=3999 and 4500..=4999 are terminal (the protocol's convention).
    let reconnect = !matches!(code, 3500..=3999 | 4500..=4999);
    serde_json::json!({"push": {"disconnect": {"code": code, "reason": reason, "reconnect": reconnect}}})
        .to_string()
        .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::ws::CloseFrame;

    #[test]
    fn frames_become_lines_or_events() {
        let frame = || Message::Text(Utf8Bytes::from_static("{\"id\":1}\n{}"));
        let lines = encode(Transport::HttpStream, frame()).unwrap();
        assert_eq!(&lines[..], b"{\"id\":1}\n{}\n");
        let events = encode(Transport::Sse, frame()).unwrap();
        assert_eq!(&events[..], b"data: {\"id\":1}\n\ndata: {}\n\n");
        assert!(encode(Transport::Sse, Message::Close(None)).is_none());
        let close = Message::Close(Some(CloseFrame {
            code: 3001,
            reason: Utf8Bytes::from_static("shutdown"),
        }));
        let end = encode(Transport::HttpStream, close).unwrap();
        let v: serde_json::Value = serde_json::from_slice(end.trim_ascii_end()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"push": {"disconnect": {"code": 3001, "reason": "shutdown", "reconnect": true}}})
        );
        let terminal: serde_json::Value =
            serde_json::from_slice(&disconnect_push(3501, "bad request")).unwrap();
        assert_eq!(terminal["push"]["disconnect"]["reconnect"], false);
    }
}
