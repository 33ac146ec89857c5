//! `POST /emulation`: the client's commands for a session of an HTTP transport
//! ([`super::stream`]), as centrifuge-js sends them: `{"session": "...", "node": "...",
//! "data": "<commands, newline-separated JSON>"}` (JSON protocol: `data` is the frame as a
//! string). The session id names the edge holding it ([`crate::holder`]); `node` is not
//! needed and not trusted. A request for another edge's session is forwarded there over the
//! node bus (signed, as every edge-to-edge message is), as Socket.IO's polling requests are.
//!
//! Answers (each counted in `groupcast_emulation_requests_total{outcome}`):
//!
//! | status | outcome | when |
//! |---|---|---|
//! | 200 | `delivered`, `forwarded` | the frame is queued for the session, here or on its edge, behind the ones before it |
//! | 400 | `malformed` | not that JSON object, `data` not a string, or an unreadable body |
//! | 403 | `forbidden` | an `Origin` not in `client.allowed_origins` |
//! | 404 | `unknown_session` | no such session (ended, or its edge is gone): the client reconnects |
//! | 413 | `too_large` | a body over `client.max_message_size` |
//! | 415 | `protobuf` | an `application/octet-stream` body: these transports speak JSON only |
//! | 429 | `busy` | the session already has [`EMULATION_QUEUE`](super::stream::EMULATION_QUEUE) requests waiting |
//! | 502 | `unavailable` | the edge holding the session did not answer (within 5 s) |
//!
//! The frame itself is the session's business: a command it cannot decode closes that one
//! connection with 3501, as on a WebSocket, and nobody else.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ws::Utf8Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::holder;
use crate::metrics::Metrics;
use crate::origin::origin_allowed;

use super::stream::{is_protobuf, read_body, BodyError, Delivery, Streams};

/// The node-bus service of forwarded emulation requests.
const SERVICE: &str = "emulation";
/// How long a forwarded request waits for the holder's answer.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// The request centrifuge-js sends.
#[derive(Deserialize)]
struct Request {
    session: String,
    /// The frame: commands as the JSON protocol writes them.
    data: serde_json::Value,
}

/// A request forwarded to the edge holding its session.
#[derive(Serialize, Deserialize)]
struct Forwarded {
    session: String,
    data: String,
}

/// The holder's answer: the status the request gets.
#[derive(Serialize, Deserialize)]
struct Answer {
    status: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Delivered,
    Forwarded,
    Malformed,
    Forbidden,
    UnknownSession,
    TooLarge,
    Protobuf,
    Busy,
    Unavailable,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Forwarded => "forwarded",
            Outcome::Malformed => "malformed",
            Outcome::Forbidden => "forbidden",
            Outcome::UnknownSession => "unknown_session",
            Outcome::TooLarge => "too_large",
            Outcome::Protobuf => "protobuf",
            Outcome::Busy => "busy",
            Outcome::Unavailable => "unavailable",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            Outcome::Delivered | Outcome::Forwarded => StatusCode::OK,
            Outcome::Malformed => StatusCode::BAD_REQUEST,
            Outcome::Forbidden => StatusCode::FORBIDDEN,
            Outcome::UnknownSession => StatusCode::NOT_FOUND,
            Outcome::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Outcome::Protobuf => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Outcome::Busy => StatusCode::TOO_MANY_REQUESTS,
            Outcome::Unavailable => StatusCode::BAD_GATEWAY,
        }
    }

    fn text(self) -> &'static str {
        match self {
            Outcome::Delivered | Outcome::Forwarded => "",
            Outcome::Malformed => {
                "malformed emulation request: want {\"session\": string, \"data\": string}"
            }
            Outcome::Forbidden => "origin not allowed",
            Outcome::UnknownSession => "unknown session",
            Outcome::TooLarge => "body over client.max_message_size",
            Outcome::Protobuf => "the protobuf protocol is not served over emulation: use JSON",
            Outcome::Busy => "too many requests waiting for this session",
            Outcome::Unavailable => "the edge holding this session did not answer",
        }
    }

    /// The outcome the holder's status stands for (on the forwarding edge).
    fn of_status(status: u16) -> Outcome {
        match status {
            200 => Outcome::Forwarded,
            404 => Outcome::UnknownSession,
            429 => Outcome::Busy,
            400 => Outcome::Malformed,
            _ => Outcome::Unavailable,
        }
    }

    fn response(self) -> Response {
        metrics::counter!("groupcast_emulation_requests_total", "outcome" => self.label())
            .increment(1);
        (self.status(), self.text()).into_response()
    }
}

impl From<Delivery> for Outcome {
    fn from(d: Delivery) -> Outcome {
        match d {
            Delivery::Delivered => Outcome::Delivered,
            Delivery::Unknown => Outcome::UnknownSession,
            Delivery::Busy => Outcome::Busy,
        }
    }
}

/// On a cluster, answers the emulation requests other edges forward to this one.
pub(super) async fn serve_forwarded(streams: &Arc<Streams>) -> Result<(), String> {
    let (Some(bus), Some(me)) = (streams.edge.node.bus(), streams.me.as_deref()) else {
        return Ok(());
    };
    let weak = Arc::downgrade(streams);
    bus.serve(
        &holder::bus_address(me, SERVICE),
        Arc::new(move |payload| {
            let streams = weak.upgrade();
            Box::pin(async move { answer(streams.as_deref(), &payload) })
        }),
    )
    .await
    .map_err(|e| format!("cannot serve emulation forwarding: {e}"))
}

/// `POST /emulation`.
pub(super) fn router(streams: Arc<Streams>) -> Router {
    Router::new()
        .route("/emulation", post(handle))
        .with_state(streams)
}

async fn handle(State(s): State<Arc<Streams>>, headers: HeaderMap, body: Body) -> Response {
    if !origin_allowed(&s.edge.config.client.allowed_origins, &headers) {
        return Outcome::Forbidden.response();
    }
    if is_protobuf(&headers) {
        return Outcome::Protobuf.response();
    }
    let body = match read_body(&headers, body, s.edge.config.client.max_message_size).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => {
            Metrics::limit_hit("max_message_size");
            return Outcome::TooLarge.response();
        }
        Err(BodyError::Unreadable) => return Outcome::Malformed.response(),
    };
    let Ok(Request {
        session,
        data: serde_json::Value::String(data),
    }) = serde_json::from_slice::<Request>(&body)
    else {
        return Outcome::Malformed.response();
    };
    let outcome = match holder::node_of(&session).filter(|n| Some(n) != s.me.as_ref()) {
        Some(node) if s.me.is_some() => forward(&s, &node, session, data).await,
        _ => s.deliver(&session, Utf8Bytes::from(data)).into(),
    };
    outcome.response()
}

/// Asks `node` to deliver `data` to its session.
async fn forward(s: &Streams, node: &str, session: String, data: String) -> Outcome {
    let Some(bus) = s.edge.node.bus() else {
        return Outcome::UnknownSession;
    };
    let payload = Bytes::from(serde_json::to_vec(&Forwarded { session, data }).unwrap_or_default());
    let address = holder::bus_address(node, SERVICE);
    match bus.request(&address, payload, FORWARD_TIMEOUT).await {
        Ok(Some(reply)) => match serde_json::from_slice::<Answer>(&reply) {
            Ok(a) => Outcome::of_status(a.status),
            Err(_) => Outcome::Unavailable,
        },
        // No such edge listens: it is gone, and its sessions with it.
        Ok(None) => Outcome::UnknownSession,
        Err(e) => {
            tracing::warn!(%node, error = %e, "forwarding an emulation request failed");
            Outcome::Unavailable
        }
    }
}

/// Answers a request another edge forwarded (`None`: this edge's transports are gone).
fn answer(s: Option<&Streams>, payload: &[u8]) -> Bytes {
    let outcome = match (s, serde_json::from_slice::<Forwarded>(payload)) {
        (_, Err(_)) => Outcome::Malformed,
        (None, Ok(_)) => Outcome::UnknownSession,
        (Some(s), Ok(f)) => s.deliver(&f.session, Utf8Bytes::from(f.data)).into(),
    };
    let status = outcome.status().as_u16();
    Bytes::from(serde_json::to_vec(&Answer { status }).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_holders_answer_keeps_its_meaning() {
        for o in [
            Outcome::Delivered,
            Outcome::UnknownSession,
            Outcome::Busy,
            Outcome::Malformed,
        ] {
            let back = Outcome::of_status(o.status().as_u16());
            let want = if o == Outcome::Delivered {
                Outcome::Forwarded
            } else {
                o
            };
            assert_eq!(back, want);
        }
        assert_eq!(Outcome::of_status(500), Outcome::Unavailable);
    }
}
