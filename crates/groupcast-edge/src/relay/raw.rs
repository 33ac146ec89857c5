//! The raw relay: `/ws/relay/{channel}` for a plain `new WebSocket(url)`.
//!
//! Every text or binary frame a connection sends is published, verbatim, to
//! the channel; every publication of the channel reaches the connection as
//! one frame, except the connection's own frames. Relay channels are
//! ordinary channels: the namespace's options apply (history, presence,
//! who may publish), API publications arrive as raw frames, and relay frames
//! reach Centrifugo-protocol subscribers as publications (see
//! [`groupcast_core::Payload`] for how text, JSON and binary map).
//!
//! Authentication is optional: `?token=JWT` (a connection token) sets the
//! user; without it the connection is anonymous. The upgrade is refused with
//! 403 when the user may not subscribe to the channel by the namespace's
//! rules. Keepalive uses WebSocket pings (browsers answer them); at each
//! ping tick, a peer silent for more than `ping_interval + pong_timeout` is
//! closed with 3012 (so a dead peer is noticed within about two ping
//! intervals).
//!
//! In a namespace with a `subscribe_proxy`, the backend is asked too, once
//! the socket is open and before the connection is subscribed (invariant 8;
//! a relay connection has no subscription token to show instead), with the
//! fields the publish proxy gets (below) and the `channel`. As for a refused
//! frame, its error closes the connection with 3507 and the reason
//! `<message> (<code>)`, its disconnect with its own code, a proxy that
//! fails with 3004; each answer is counted in
//! `groupcast_proxy_requests_total{proxy="subscribe", outcome}`. Of an
//! answer that lets it in, `info` is the connection's channel info (in its
//! publications and presence) and `expire_at` closes it with 3006 at that
//! time (the `sub_refresh_proxy` is not asked: the client reconnects and the
//! subscribe proxy is asked again); `data` (the relay has no subscribe reply
//! to carry it) and anything else are not used.
//!
//! Every frame passes the same gate as a protocol client's publish
//! (`crate::publish_gate`): the namespace's size limit, then its
//! `publish_proxy`, asked with `"protocol": "relay", "encoding": "raw"`,
//! the token's user (`""` when anonymous), the connection's client id and
//! the upgrade request's headers the proxy forwards. The relay has no error
//! reply, so a refusal closes the connection (docs/protocol.md §3.2): the
//! backend's error with 3507 and the reason `<message> (<code>)`, its
//! disconnect with its own code, data the proxy cannot take (not JSON, and
//! the proxy lacks `binary`) with 3501, a proxy that fails with 3004.

use std::borrow::Cow;
use std::sync::Arc;

use axum::extract::ws::WebSocket;
use axum::http::HeaderMap;
use futures_util::StreamExt;
use groupcast_core::broker::PublishOptions;
use groupcast_core::hub::SubscriberKind;
use groupcast_core::{ChannelOptions, Payload, Publication};
use groupcast_proto::client::ClientInfo;
use groupcast_proto::{DisconnectCode, ErrorCode};

use crate::auth::now_unix;
use crate::conn::Inbound;
use crate::keepalive::Keepalive;
use crate::limits::ConnRates;
use crate::metrics::Metrics;
use crate::proxy::Answer;
use crate::publish_gate::{self, Passed, Publisher, Refusal};
use crate::state::EdgeState;

/// Who a relay connection is, decided before the upgrade.
pub struct RelayAuth {
    pub channel: String,
    pub user: String,
    pub conn_info: Option<Arc<serde_json::value::RawValue>>,
    pub can_publish: bool,
    /// The channel's namespace options.
    pub opts: ChannelOptions,
    /// What the event proxies forward of the upgrade request.
    pub headers: HeaderMap,
}

/// What the namespace's subscribe proxy let in (everything, without one).
#[derive(Default)]
struct Admitted {
    /// The answer's `info`: channel info in the connection's publications
    /// and presence.
    chan_info: Option<Arc<serde_json::value::RawValue>>,
    /// The answer's `expire_at` (Unix seconds): the connection ends then.
    expires_at: Option<i64>,
}

/// Asks the namespace's `subscribe_proxy`, when it has one, whether the
/// connection may read the channel. Refused as a frame the publish proxy
/// refuses is (the same [`Refusal`]s, closed by [`refuse`]).
async fn admit(
    state: &EdgeState,
    conn: &crate::conn::Conn,
    auth: &RelayAuth,
) -> Result<Admitted, Refusal> {
    let Some(proxy) = state.proxies.get(&auth.opts.subscribe_proxy) else {
        return Ok(Admitted::default());
    };
    let body = serde_json::json!({
        "client": conn.client,
        "transport": "websocket",
        "protocol": "relay",
        "encoding": "raw",
        "user": auth.user,
        "channel": auth.channel,
    });
    let result = match proxy.call("subscribe", &body, &auth.headers).await {
        Ok(Answer::Result(r)) => r,
        Ok(Answer::Error { code, message }) => return Err(Refusal::Backend { code, message }),
        Ok(Answer::Disconnect { code, reason }) => {
            return Err(Refusal::Disconnect { code, reason })
        }
        Err(_) => return Err(Refusal::Failed),
    };
    Ok(Admitted {
        chan_info: result
            .get("info")
            .filter(|v| !v.is_null())
            .and_then(|v| serde_json::value::to_raw_value(v).ok())
            .map(Arc::from),
        expires_at: result
            .get("expire_at")
            .and_then(serde_json::Value::as_i64)
            .filter(|&at| at > 0),
    })
}

/// When a subscription that expires at `at` (Unix seconds) ends; `None`:
/// never (so far ahead that the clock cannot hold it).
fn deadline(at: Option<i64>) -> Option<tokio::time::Instant> {
    let left = u64::try_from(at? - now_unix()).unwrap_or(0);
    tokio::time::Instant::now().checked_add(std::time::Duration::from_secs(left))
}

/// Check a relay request before upgrading: channel, token, permissions.
/// `headers`: the upgrade request's (the publish proxy gets those it
/// forwards).
pub fn authorize(
    state: &EdgeState,
    channel: &str,
    token: Option<&str>,
    headers: &HeaderMap,
) -> Result<RelayAuth, ErrorCode> {
    let (ch, opts) = state.channel(channel)?;
    let (user, conn_info) = match token {
        Some(t) if !t.is_empty() => {
            let claims = state.verifier.verify_connect(t).map_err(|e| match e {
                crate::auth::TokenError::Expired => ErrorCode::TOKEN_EXPIRED,
                crate::auth::TokenError::Invalid(_) => ErrorCode::UNAUTHORIZED,
            })?;
            (claims.sub, claims.info.map(Arc::from))
        }
        _ => (String::new(), None),
    };
    if !state.can_subscribe(&ch, opts, &user) {
        return Err(ErrorCode::PERMISSION_DENIED);
    }
    // With a publish proxy the backend decides each frame instead of the
    // namespace's allow_publish_* (as for protocol clients).
    let can_publish = opts.allow_publish_for_client
        || opts.allow_publish_for_subscriber
        || !opts.publish_proxy.is_empty();
    Ok(RelayAuth {
        channel: channel.to_string(),
        user,
        conn_info,
        can_publish,
        opts: opts.clone(),
        headers: state.proxies.keep_headers(headers),
    })
}

pub async fn serve(state: Arc<EdgeState>, socket: WebSocket, auth: RelayAuth) {
    let (opened, mut stream) = state.open(socket, SubscriberKind::Relay);
    let conn = opened.conn.clone();
    let m = Metrics::get();
    let channel = auth.channel.as_str();
    let opts = &auth.opts;
    // Nothing of the channel reaches the connection before the backend
    // let it in.
    let admitted = match admit(&state, &conn, &auth).await {
        Ok(a) => a,
        Err(refusal) => {
            refuse(&conn, refusal);
            opened.finish().await;
            return;
        }
    };
    if admitted.expires_at.is_some_and(|at| at <= now_unix()) {
        // Let in until a time already past.
        conn.close(DisconnectCode::SUB_EXPIRED);
    }
    if conn.is_closed() {
        // Or closed (shutdown) while the backend was asked.
        opened.finish().await;
        return;
    }
    let expiry = deadline(admitted.expires_at);
    let info = Arc::new(ClientInfo {
        user: auth.user.clone(),
        client: conn.client.clone(),
        conn_info: auth.conn_info.clone(),
        chan_info: admitted.chan_info,
    });
    let node = state.node.clone();
    let subscribed = node
        .add_subscriber(channel, conn.clone(), false)
        .await
        .is_ok();
    let mut present = false;
    if !subscribed {
        conn.close(DisconnectCode::SERVER_ERROR);
    } else if opts.presence {
        present = node
            .join(channel, info.clone(), true, opts.join_leave)
            .await
            .is_ok();
    }
    let publish_opts = PublishOptions::for_channel(opts);
    let live_only = PublishOptions::default();
    let cfg = &state.config.client;
    let mut keepalive = Keepalive::new(cfg);
    let mut rates = ConnRates::new(cfg);
    let expiry = async {
        match expiry {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(expiry);
    while !conn.is_closed() {
        tokio::select! {
            _ = conn.cancelled() => break,
            // The subscribe proxy's `expire_at`: no refresh on the relay.
            _ = &mut expiry => {
                conn.close(DisconnectCode::SUB_EXPIRED);
                break;
            }
            alive = keepalive.tick(&conn) => if !alive { break },
            msg = stream.next() => {
                keepalive.heard();
                let data = match conn.inbound(msg) {
                    Inbound::End => break,
                    Inbound::Text(t) => Payload::from_text(t.as_str()),
                    Inbound::Binary(b) => Payload::Binary(b),
                    Inbound::Control => continue,
                };
                if !auth.can_publish {
                    conn.close(DisconnectCode::PERMISSION_DENIED);
                    break;
                }
                // The relay has no error reply: over the rate, it closes
                // with 3013 (the client may reconnect).
                if rates.check(true).is_err() {
                    conn.close(DisconnectCode::TOO_MANY_REQUESTS);
                    break;
                }
                m.messages_in_relay.increment(1);
                m.bytes_in.increment(data.len() as u64);
                let who = Publisher {
                    client: &conn.client,
                    transport: "websocket",
                    user: &auth.user,
                    protocol: "relay",
                    encoding: "raw",
                    headers: &auth.headers,
                };
                let gate = publish_gate::check(&state, opts, channel, who, data).await;
                // Frames waited unread while the proxy was asked: the
                // peer was not silent.
                keepalive.heard();
                let (data, skip_history) = match gate {
                    Ok(Passed::Unproxied(data)) => (data, false),
                    Ok(Passed::Proxied { data, skip_history }) => (data, skip_history),
                    Err(refusal) => {
                        refuse(&conn, refusal);
                        break;
                    }
                };
                let mut p = Publication::new(data);
                p.origin = Some(conn.id);
                p.info = Some(info.clone());
                let po = match skip_history {
                    // The backend's `skip_history`: delivered live, not stored.
                    true => &live_only,
                    false => &publish_opts,
                };
                if node.publish(channel, p, po).await.is_err() {
                    conn.close(DisconnectCode::SERVER_ERROR);
                    break;
                }
            }
        }
    }
    if subscribed {
        node.remove_subscriber(channel, conn.id).await;
    }
    if present {
        node.leave(channel, info, true, opts.join_leave).await;
    }
    opened.finish().await;
}

/// Closes the connection for a frame the gate refused, or a connection the
/// subscribe proxy refused (the relay has no error reply).
fn refuse(conn: &crate::conn::Conn, refusal: Refusal) {
    match refusal {
        // Over the namespace's publication size: 1009, as for a frame
        // over the global limit.
        Refusal::TooBig => conn.close(DisconnectCode::MESSAGE_TOO_BIG),
        // Not JSON, and the publish proxy does not take b64data: 3501, the
        // close for 107.
        Refusal::NotJson => conn.close(DisconnectCode::BAD_REQUEST),
        // The backend's error: 3507 with its message and code, as relay
        // routes close for their connect proxy's error.
        Refusal::Backend { code, message } => {
            let reason = crate::conn::cut_reason(format!("{message} ({code})"), 100);
            conn.close_with(DisconnectCode::PERMISSION_DENIED.code, Cow::Owned(reason));
        }
        Refusal::Disconnect { code, reason } => conn.close_with(code, Cow::Owned(reason)),
        Refusal::Failed => conn.close(DisconnectCode::SERVER_ERROR),
    }
}
