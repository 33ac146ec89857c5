//! Polling requests for a session that another edge holds. A sid names its edge
//! (`holder::new_id`), so a request that a load balancer sends to any edge is
//! answered: the edge that gets it asks the holder over the node bus (signed, as every
//! edge-to-edge message is) and relays the answer. A long poll waits there as it would
//! locally, so the request's timeout covers a ping interval and a ping timeout.
//!
//! A WebSocket upgrade cannot move a session between edges: one that reaches another edge is
//! refused (400) and the client keeps polling (`groupcast_socketio_upgrades_refused_total`).

use std::time::Duration;

use axum::body::Bytes;
use axum::http::StatusCode;
use base64::Engine as _;
use groupcast_proto::socketio::engineio::HttpError;
use serde::{Deserialize, Serialize};

use super::engine::Refusal;
use super::{bus_node, local, SioState};

/// A forwarded polling request: `body` (base64) for a POST, none for a GET; `probe`: only
/// "are you there" (while a long poll waits there).
#[derive(Serialize, Deserialize)]
struct Forwarded {
    sid: String,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    probe: bool,
    /// The client sent this session a body over `max_http_buffer_size` (through another
    /// edge): end it, as the holder would have.
    #[serde(default)]
    too_big: bool,
    /// The request's `t` (a retried poll has the same).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    t: Option<String>,
}

/// How often an edge waiting for a forwarded long poll checks that the holder is still there:
/// a holder that died answers nothing, and its sessions are gone.
const PROBE_EVERY: Duration = Duration::from_secs(2);

/// The holder's answer: the body, an Engine.IO error code, or another HTTP status.
#[derive(Serialize, Deserialize, Default)]
struct Answer {
    #[serde(default)]
    ok: Option<String>,
    #[serde(default)]
    eio: Option<u8>,
    #[serde(default)]
    status: Option<u16>,
    #[serde(default)]
    text: Option<String>,
}

/// The edge holding `sid` when it is not this one.
pub(super) fn elsewhere(sio: &SioState, sid: &str) -> Option<String> {
    let me = sio.me.as_deref()?;
    crate::holder::node_of(sid).filter(|n| n != me)
}

/// Asks `node` to answer a polling request for its session `sid`.
pub(super) async fn request(
    sio: &SioState,
    node: &str,
    sid: &str,
    body: Option<Bytes>,
    t: Option<&str>,
) -> Result<String, Refusal> {
    let op = if body.is_some() { "post" } else { "poll" };
    let Some(bus) = sio.edge.node.bus() else {
        return Err(HttpError::UnknownSid.into());
    };
    let f = Forwarded {
        sid: sid.to_string(),
        body: body.map(|b| base64::engine::general_purpose::STANDARD.encode(b)),
        probe: false,
        too_big: false,
        t: t.map(String::from),
    };
    let payload = Bytes::from(serde_json::to_vec(&f).unwrap_or_default());
    let c = &sio.edge.config.socketio;
    let timeout = c.ping_interval + c.ping_timeout + Duration::from_secs(5);
    let subject = bus_node(node);
    let probes = async {
        let probe = Forwarded {
            sid: sid.to_string(),
            body: None,
            probe: true,
            too_big: false,
            t: None,
        };
        let probe = Bytes::from(serde_json::to_vec(&probe).unwrap_or_default());
        loop {
            tokio::time::sleep(PROBE_EVERY).await;
            if let Ok(None) = bus.request(&subject, probe.clone(), PROBE_EVERY).await {
                return;
            }
        }
    };
    let outcome = tokio::select! {
        outcome = bus.request(&subject, payload, timeout) => outcome,
        // The holder is gone while the poll waited there.
        _ = probes => Ok(None),
    };
    let label = match &outcome {
        Ok(Some(_)) => "answered",
        Ok(None) => "gone",
        Err(_) => "failed",
    };
    metrics::counter!("groupcast_socketio_forwarded_total", "op" => op, "outcome" => label)
        .increment(1);
    match outcome {
        Ok(Some(reply)) => {
            let a: Answer = serde_json::from_slice(&reply).unwrap_or_default();
            if let Some(body) = a.ok {
                Ok(body)
            } else if let Some(code) = a.eio {
                Err(HttpError::from_code(code)
                    .unwrap_or(HttpError::BadRequest)
                    .into())
            } else {
                let status = a
                    .status
                    .and_then(|s| StatusCode::from_u16(s).ok())
                    .unwrap_or(StatusCode::BAD_GATEWAY);
                Err(Refusal::Status(status, a.text.unwrap_or_default()))
            }
        }
        // That edge is gone, and its sessions with it.
        Ok(None) => Err(HttpError::UnknownSid.into()),
        Err(e) => {
            tracing::warn!(%node, error = %e, "socket.io: forwarding a polling request failed");
            Err(Refusal::Status(
                StatusCode::BAD_GATEWAY,
                "the edge holding this session did not answer".into(),
            ))
        }
    }
}

/// Tells `node` that its session `sid` was sent a body over `max_http_buffer_size` (refused
/// here with 413): it ends the session.
pub(super) async fn close_too_big(sio: &SioState, node: &str, sid: &str) {
    let Some(bus) = sio.edge.node.bus() else {
        return;
    };
    let f = Forwarded {
        sid: sid.to_string(),
        body: None,
        probe: false,
        too_big: true,
        t: None,
    };
    let payload = Bytes::from(serde_json::to_vec(&f).unwrap_or_default());
    let _ = bus.request(&bus_node(node), payload, PROBE_EVERY).await;
}

/// Answers a polling request another edge forwarded.
pub(super) async fn answer(sio: &SioState, payload: &[u8]) -> Bytes {
    let a = match serde_json::from_slice::<Forwarded>(payload) {
        Err(_) => Answer {
            eio: Some(HttpError::BadRequest.code()),
            ..Default::default()
        },
        Ok(f) if f.probe => Answer {
            ok: Some(String::new()),
            ..Default::default()
        },
        Ok(f) if f.too_big => {
            if let Some(s) = sio.sessions.get(&f.sid) {
                crate::metrics::Metrics::limit_hit("socketio_max_http_buffer_size");
                s.conn
                    .close(groupcast_proto::DisconnectCode::MESSAGE_TOO_BIG);
            }
            Answer {
                ok: Some(String::new()),
                ..Default::default()
            }
        }
        Ok(f) => {
            let body = match f
                .body
                .map(|b| base64::engine::general_purpose::STANDARD.decode(b))
            {
                None => None,
                Some(Ok(b)) => Some(Bytes::from(b)),
                Some(Err(_)) => {
                    return reply(Answer {
                        eio: Some(HttpError::BadRequest.code()),
                        ..Default::default()
                    })
                }
            };
            match local(sio, &f.sid, body, f.t.as_deref()).await {
                Ok(body) => Answer {
                    ok: Some(body),
                    ..Default::default()
                },
                Err(Refusal::Eio(e)) => Answer {
                    eio: Some(e.code()),
                    ..Default::default()
                },
                Err(Refusal::Status(s, text)) => Answer {
                    status: Some(s.as_u16()),
                    text: Some(text),
                    ..Default::default()
                },
            }
        }
    };
    reply(a)
}

/// The answer when this edge's Socket.IO is gone (shutting down).
pub(super) fn gone() -> Bytes {
    reply(Answer {
        eio: Some(HttpError::UnknownSid.code()),
        ..Default::default()
    })
}

fn reply(a: Answer) -> Bytes {
    Bytes::from(serde_json::to_vec(&a).unwrap_or_default())
}
