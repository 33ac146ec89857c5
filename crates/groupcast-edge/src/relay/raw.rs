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
//! 403 when the user may not subscribe to the channel. Keepalive uses
//! WebSocket pings (browsers answer them); at each ping tick, a peer silent
//! for more than `ping_interval + pong_timeout` is closed with 3012 (so a
//! dead peer is noticed within about two ping intervals).

use std::sync::Arc;

use axum::extract::ws::WebSocket;
use futures_util::StreamExt;
use groupcast_core::broker::PublishOptions;
use groupcast_core::hub::SubscriberKind;
use groupcast_core::{ChannelOptions, Payload, Publication};
use groupcast_proto::client::ClientInfo;
use groupcast_proto::{DisconnectCode, ErrorCode};

use crate::conn::Inbound;
use crate::keepalive::Keepalive;
use crate::limits::ConnRates;
use crate::metrics::Metrics;
use crate::state::EdgeState;

/// Who a relay connection is, decided before the upgrade.
pub struct RelayAuth {
    pub channel: String,
    pub user: String,
    pub conn_info: Option<Arc<serde_json::value::RawValue>>,
    pub can_publish: bool,
    /// The channel's namespace options.
    pub opts: ChannelOptions,
}

/// Check a relay request before upgrading: channel, token, permissions.
pub fn authorize(
    state: &EdgeState,
    channel: &str,
    token: Option<&str>,
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
    let can_publish = opts.allow_publish_for_client || opts.allow_publish_for_subscriber;
    Ok(RelayAuth {
        channel: channel.to_string(),
        user,
        conn_info,
        can_publish,
        opts: opts.clone(),
    })
}

pub async fn serve(state: Arc<EdgeState>, socket: WebSocket, auth: RelayAuth) {
    let (opened, mut stream) = state.open(socket, SubscriberKind::Relay);
    let conn = opened.conn.clone();
    let m = Metrics::get();
    let channel = auth.channel.as_str();
    let opts = &auth.opts;
    let info = Arc::new(ClientInfo {
        user: auth.user.clone(),
        client: conn.client.clone(),
        conn_info: auth.conn_info.clone(),
        chan_info: None,
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
    let cfg = &state.config.client;
    let mut keepalive = Keepalive::new(cfg);
    let mut rates = ConnRates::new(cfg);
    while !conn.is_closed() {
        tokio::select! {
            _ = conn.cancelled() => break,
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
                // Over the namespace's publication size: 1009, as for a
                // frame over the global limit (the relay has no error reply).
                if !state.check_publication_size(opts, data.len()) {
                    conn.close(DisconnectCode::MESSAGE_TOO_BIG);
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
                let mut p = Publication::new(data);
                p.origin = Some(conn.id);
                p.info = Some(info.clone());
                if node.publish(channel, p, &publish_opts).await.is_err() {
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
