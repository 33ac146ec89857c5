//! `[socketio]`: the Socket.IO server (Engine.IO v4, Socket.IO v5) and its namespaces
//! (docs/socketio.md).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Most namespaces (a session keeps which it connected in 64 bits).
pub const MAX_NAMESPACES: usize = 64;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SocketIoConfig {
    /// Serve Socket.IO at `path` (404 when off).
    pub enabled: bool,
    /// Where: `socket.io-client`'s `path` option (default `/socket.io/`).
    pub path: String,
    /// The server's heartbeat: a ping this often (Socket.IO's `pingInterval`).
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// A client that does not answer a ping within this is gone ("ping timeout").
    #[serde(with = "humantime_serde")]
    pub ping_timeout: Duration,
    /// Largest HTTP long-polling body and WebSocket message, in bytes (`maxHttpBufferSize`):
    /// a larger POST gets 413, a larger WebSocket message closes the session.
    pub max_http_buffer_size: usize,
    /// Bytes read from a WebSocket at a time, allocated for the life of the session. Socket.IO
    /// clients send small packets: a larger one (a binary attachment) takes more reads.
    pub read_buffer_size: usize,
    /// How long a client may take to finish an upgrade from polling to WebSocket.
    #[serde(with = "humantime_serde")]
    pub upgrade_timeout: Duration,
    /// A session that has connected no namespace this long after its handshake is closed
    /// (Socket.IO's `connectTimeout`).
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// The namespaces served (`[[socketio.namespaces]]`); a CONNECT to any other one gets
    /// CONNECT_ERROR "Invalid namespace". Default: `/` alone.
    pub namespaces: Vec<SioNamespaceConfig>,
    /// Key of the connection-state recovery tokens (`pid` and offsets), the same on every edge
    /// so that a client recovers on any of them. Empty: derived from `nats.cluster_secret`;
    /// without that either, a random key per process (recovery on the same edge only).
    pub recovery_secret: String,
}

impl Default for SocketIoConfig {
    fn default() -> Self {
        SocketIoConfig {
            enabled: false,
            path: "/socket.io/".into(),
            ping_interval: Duration::from_secs(25),
            ping_timeout: Duration::from_secs(20),
            max_http_buffer_size: 1_000_000,
            read_buffer_size: 1024,
            upgrade_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(45),
            namespaces: vec![SioNamespaceConfig::default()],
            recovery_secret: String::new(),
        }
    }
}

/// One `[[socketio.namespaces]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SioNamespaceConfig {
    /// The Socket.IO namespace: `/`, `/admin`.
    pub name: String,
    /// Room `R` of this namespace is the Groupcast channel `<channel_prefix>R`: `""` for the
    /// channels without a namespace, `"chat:"` for the `chat` namespace's. Each Socket.IO
    /// namespace needs its own prefix.
    pub channel_prefix: String,
    /// The backend target that gets the sockets' events (`connect`, `event`, `ack`,
    /// `disconnect`): an HTTP target of `[[relay.http_targets]]`, or a NATS subject. Empty: no
    /// backend; events from clients are dropped (counted: a client waiting for an ack gets its
    /// own timeout).
    pub target: String,
    /// `[[proxies]]` entry asked at each CONNECT (with `auth`, the query and the forwarded
    /// headers); it may set the user, `meta`, `target` and rooms, or refuse with
    /// CONNECT_ERROR. Without it, `auth.token` is checked as a connection JWT.
    pub connect_proxy: String,
    /// Without a connect proxy: refuse a CONNECT without `auth.token` (otherwise anonymous,
    /// where `client.allow_anonymous_connect_without_token` allows it).
    pub require_token: bool,
    /// The event a publication without a `sio_event` tag is emitted as (its data the one
    /// argument): a Centrifugo client's or a raw relay's publication on a room's channel.
    pub default_event: String,
    /// Connection-state recovery (Socket.IO's `connectionStateRecovery`): each event of a room
    /// carries an offset as its last argument, and a client that reconnects, to any edge, with
    /// its `pid` and last offset gets its socket id, its rooms and the events it missed back
    /// from the rooms' channel history. Needs history and `allow_recovery` on the rooms'
    /// channels.
    pub recovery: bool,
}

impl Default for SioNamespaceConfig {
    fn default() -> Self {
        SioNamespaceConfig {
            name: "/".into(),
            channel_prefix: String::new(),
            target: String::new(),
            connect_proxy: String::new(),
            require_token: false,
            default_event: "message".into(),
            recovery: false,
        }
    }
}

impl SocketIoConfig {
    /// Checks beyond types; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        if !self.enabled {
            return Ok(());
        }
        if !self.path.starts_with('/') || !self.path.ends_with('/') || self.path.len() < 3 {
            return Err("socketio.path: must start and end with / (e.g. /socket.io/)".into());
        }
        if self.ping_interval.is_zero() || self.ping_timeout.is_zero() {
            return Err("socketio.ping_interval, socketio.ping_timeout: must be above 0".into());
        }
        if self.max_http_buffer_size < 1024 {
            return Err("socketio.max_http_buffer_size: must be at least 1024".into());
        }
        if !(256..=1 << 20).contains(&self.read_buffer_size) {
            return Err("socketio.read_buffer_size: must be between 256 and 1048576".into());
        }
        if self.upgrade_timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(
                "socketio.upgrade_timeout, socketio.connect_timeout: must be above 0".into(),
            );
        }
        if self.namespaces.len() > MAX_NAMESPACES {
            return Err(format!("socketio.namespaces: at most {MAX_NAMESPACES}"));
        }
        let mut names = std::collections::HashSet::new();
        let mut prefixes = std::collections::HashSet::new();
        for (i, n) in self.namespaces.iter().enumerate() {
            let key = format!("socketio.namespaces[{i}]");
            if !n.name.starts_with('/') || n.name.len() > 256 || n.name.contains(',') {
                return Err(format!(
                    "{key}.name: must start with / (at most 256 bytes, no comma)"
                ));
            }
            if !names.insert(n.name.as_str()) {
                return Err(format!("{key}.name: {} is listed twice", n.name));
            }
            if !prefixes.insert(n.channel_prefix.as_str()) {
                return Err(format!(
                    "{key}.channel_prefix: {:?} is another namespace's too; each needs its own",
                    n.channel_prefix
                ));
            }
            if n.default_event.is_empty() {
                return Err(format!("{key}.default_event: must not be empty"));
            }
        }
        // A room's channel must lead back to its namespace: with prefixes `chat:` and
        // `chat:vip:`, room `vip:x` of the first would be a room of the second.
        for a in &self.namespaces {
            for b in &self.namespaces {
                let (p, q) = (&a.channel_prefix, &b.channel_prefix);
                if !p.is_empty() && p != q && q.starts_with(p.as_str()) {
                    return Err(format!(
                        "socketio.namespaces: channel_prefix {q:?} ({}) starts with {p:?} ({}): a room of {} could name a channel of {}",
                        b.name, a.name, a.name, b.name
                    ));
                }
            }
        }
        Ok(())
    }
}
