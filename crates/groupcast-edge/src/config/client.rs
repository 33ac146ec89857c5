//! `[client]`: what a connection may do, its limits, tokens and proxies.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::lenient;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientConfig {
    /// HMAC secret for HS256/384/512 connection and subscription tokens.
    #[serde(deserialize_with = "lenient::string")]
    pub token_hmac_secret: String,
    /// PEM public key for RS256/384/512 tokens (inline PEM text).
    pub token_rsa_public_key: String,
    /// PEM public key for ES256/384 tokens (inline PEM text).
    pub token_ecdsa_public_key: String,
    /// Required `aud` claim, when set.
    #[serde(deserialize_with = "lenient::string")]
    pub token_audience: String,
    /// Required `iss` claim, when set.
    #[serde(deserialize_with = "lenient::string")]
    pub token_issuer: String,
    /// Accept `connect` without a token (user is empty: anonymous).
    pub allow_anonymous_connect_without_token: bool,
    /// Browser origins allowed to open WebSockets (`*` wildcards; `["*"]`: any).
    /// Requests without an `Origin` header (non-browsers) are always allowed.
    pub allowed_origins: Vec<String>,
    /// A socket that has not sent a successful `connect` within this is
    /// closed with 3502 "stale" (a socket that opens and says nothing).
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Every connection to the listener (WebSocket, relay, API, metrics)
    /// must send its first byte within this of being accepted (the TLS
    /// ClientHello with TLS), or it is closed.
    #[serde(with = "humantime_serde")]
    pub first_byte_timeout: Duration,
    /// ... and its whole first HTTP request head, TLS handshake included,
    /// within this (a slowloris sending a byte every few seconds).
    #[serde(with = "humantime_serde")]
    pub request_head_timeout: Duration,
    /// Server ping interval (`{}`); clients answer with `{}`.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// How long to wait for the pong before disconnecting with 3012 "no pong".
    #[serde(with = "humantime_serde")]
    pub pong_timeout: Duration,
    /// Largest incoming WebSocket message (and frame) in bytes; larger ones
    /// close the connection with 1009.
    pub max_message_size: usize,
    /// Outgoing queue per connection in bytes; a client that falls further
    /// behind is disconnected with 3008 "slow".
    pub max_queue_bytes: usize,
    /// Longest channel name in bytes.
    pub channel_max_length: usize,
    /// Initial read buffer per connection in bytes (grows for larger messages).
    pub read_buffer_size: usize,
    /// Most publications a `history` command may ask for at once.
    pub history_max_limit: usize,
    /// Most channels one connection may subscribe to (106 beyond).
    pub max_channels_per_connection: usize,
    /// Most open connections on this node (protocol and relay); beyond it
    /// upgrades answer HTTP 503 and clients retry (elsewhere, behind a LB).
    pub max_connections: usize,
    /// Most connections of one user on this node (0: unlimited); beyond it
    /// `connect` closes with 3504 "connection limit". Anonymous is exempt.
    pub max_connections_per_user: usize,
    /// New connections per second per client address (0: off); beyond the
    /// burst, upgrades answer HTTP 429.
    pub connection_rate_per_ip: f64,
    /// Burst for `connection_rate_per_ip`.
    pub connection_burst_per_ip: f64,
    /// Header carrying the client address, set by a trusted load balancer
    /// (e.g. `X-Forwarded-For`: the right-most address is used). Empty: the
    /// TCP peer address. Only set it when every request passes the proxy.
    #[serde(deserialize_with = "lenient::string")]
    pub client_ip_header: String,
    /// Commands per second per connection (0: off); beyond the burst a
    /// command answers 111 "too many requests".
    pub command_rate: f64,
    /// Burst for `command_rate`.
    pub command_burst: f64,
    /// Publishes per second per connection, on top of `command_rate` (0: off).
    pub publish_rate: f64,
    /// Burst for `publish_rate`.
    pub publish_burst: f64,
    /// A connection whose commands were refused (111) more than this many
    /// times within `rate_refusals_window` is closed with 3013 "too many
    /// requests" (0: never; it keeps getting 111).
    pub rate_refusals_max: u32,
    /// The window for `rate_refusals_max`, from the first refusal.
    #[serde(with = "humantime_serde")]
    pub rate_refusals_window: Duration,
    /// Subscribe every authenticated connection to its user's personal
    /// channel at connect, server-side (Centrifugo's
    /// `user_subscribe_to_personal`): `#<user>`, or
    /// `<personal_channel_namespace>:#<user>`. Its result is in the connect
    /// reply's `subs`; anonymous connections get none.
    pub subscribe_to_personal: bool,
    /// Namespace of the personal channel ("" : the default namespace).
    #[serde(deserialize_with = "lenient::string")]
    pub personal_channel_namespace: String,
    /// Channel that gets a publication each time a user comes online (first
    /// connection anywhere in the cluster) or goes offline (last one
    /// closed): `{"type":"user_status","user":..,"status":"online"|"offline",
    /// "last_seen":<unix s>}`. Empty: none.
    #[serde(deserialize_with = "lenient::string")]
    pub user_status_channel: String,
    /// `[[proxies]]` entry that authenticates connections without a token
    /// (the backend returns the user); empty: none. A token, when given,
    /// is still checked as a JWT.
    #[serde(deserialize_with = "lenient::string")]
    pub connect_proxy: String,
    /// `[[proxies]]` entry that answers client `rpc` commands; empty: `rpc`
    /// answers 108.
    #[serde(deserialize_with = "lenient::string")]
    pub rpc_proxy: String,
    /// `[[proxies]]` entry asked when a connection with an expiry expires:
    /// the backend extends it or ends it (3005), server-side, and clients
    /// are not told to `refresh`. Empty: clients refresh with a new token.
    #[serde(deserialize_with = "lenient::string")]
    pub refresh_proxy: String,
    /// `[[proxies]]` entry that receives client `send` messages (fire and
    /// forget); empty: `send` answers 108 (dropped when sent without id).
    #[serde(deserialize_with = "lenient::string")]
    pub send_proxy: String,
    /// Grace after a connection token's expiry for the client to `refresh`
    /// before it is closed with 3005 "connection expired".
    #[serde(with = "humantime_serde")]
    pub expired_close_delay: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            token_hmac_secret: String::new(),
            token_rsa_public_key: String::new(),
            token_ecdsa_public_key: String::new(),
            token_audience: String::new(),
            token_issuer: String::new(),
            allow_anonymous_connect_without_token: false,
            allowed_origins: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            first_byte_timeout: Duration::from_secs(5),
            request_head_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(25),
            pong_timeout: Duration::from_secs(8),
            max_message_size: 65_536,
            max_queue_bytes: 1 << 20,
            channel_max_length: groupcast_core::channel::DEFAULT_MAX_LENGTH,
            read_buffer_size: 4096,
            history_max_limit: 1000,
            max_channels_per_connection: 128,
            expired_close_delay: Duration::from_secs(25),
            max_connections: 100_000,
            max_connections_per_user: 0,
            connection_rate_per_ip: 0.0,
            connection_burst_per_ip: 50.0,
            client_ip_header: String::new(),
            command_rate: 100.0,
            command_burst: 200.0,
            subscribe_to_personal: false,
            personal_channel_namespace: String::new(),
            user_status_channel: String::new(),
            connect_proxy: String::new(),
            rpc_proxy: String::new(),
            refresh_proxy: String::new(),
            send_proxy: String::new(),
            rate_refusals_max: 100,
            rate_refusals_window: Duration::from_secs(10),
            publish_rate: 0.0,
            publish_burst: 50.0,
        }
    }
}
