//! Keepalive of a plain WebSocket (raw relay, relay routes): WebSocket
//! pings, and a close with 3012 for a silent peer.

use std::time::Instant;

use groupcast_proto::DisconnectCode;

use crate::config::ClientConfig;
use crate::conn::Conn;

/// Keepalive of a raw WebSocket (the relay, relay routes): a WebSocket
/// ping every `client.ping_interval`; a peer silent for more than
/// `ping_interval + pong_timeout` at a tick is closed with 3012.
pub struct Keepalive {
    ping: tokio::time::Interval,
    silent_limit: std::time::Duration,
    last_seen: Instant,
}

impl Keepalive {
    pub fn new(cfg: &ClientConfig) -> Keepalive {
        Keepalive {
            ping: tokio::time::interval_at(
                tokio::time::Instant::now() + cfg.ping_interval,
                cfg.ping_interval,
            ),
            silent_limit: cfg.ping_interval + cfg.pong_timeout,
            last_seen: Instant::now(),
        }
    }

    /// The peer sent something (any frame counts).
    pub fn heard(&mut self) {
        self.last_seen = Instant::now();
    }

    /// Waits for the next tick, then pings; `false` when the peer was
    /// silent too long and the connection is closed.
    pub async fn tick(&mut self, conn: &Conn) -> bool {
        self.ping.tick().await;
        if self.last_seen.elapsed() > self.silent_limit {
            conn.close(DisconnectCode::NO_PONG);
            return false;
        }
        conn.send_ws_ping();
        true
    }
}
