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
    /// Browser origins allowed to open WebSockets on `/connection/websocket`
    /// and `/ws/relay/`: patterns over the whole origin `scheme://host[:port]`
    /// (`*` matches any run of characters; `["*"]`: any origin, `null`
    /// included). Each pattern must start with its scheme (checked at
    /// start, see [`origin_pattern`]). Empty: every browser is refused.
    /// Requests without an `Origin` header (non-browsers) are always allowed.
    pub allowed_origins: Vec<String>,
    /// The origins this deployment's pages are served from, as browsers
    /// write them (`https://chat.example.com`, `http://10.0.0.5:8000`):
    /// what "same origin" means on relay routes without `allowed_origins`.
    /// An `Origin` is the same origin when it equals one of them (scheme,
    /// host and port). Empty: when its scheme is the listener's (`https`
    /// with `[tls]`, else `http`), its host and port are those of the
    /// `Host` header, and that host is an IP address or `localhost` (a DNS
    /// name in both headers may be another site's, rebound to this
    /// server's address). Behind a proxy that terminates TLS, or served at
    /// a DNS name, list the public origins here.
    pub public_origins: Vec<String>,
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
    /// Serve the Centrifugo protocol (JSON) over HTTP streaming,
    /// `POST /connection/http_stream`, with the emulation endpoint `POST /emulation`
    /// for the client's later commands.
    pub http_stream: bool,
    /// Serve the Centrifugo protocol (JSON) over Server-Sent Events,
    /// `GET /connection/sse`, with the emulation endpoint `POST /emulation`.
    pub sse: bool,
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
    /// Most publishes of one connection waiting for the backbone's answer
    /// at once (JetStream acknowledgements, 1 to 10000): a connection's
    /// publishes are sent in command order without waiting for each answer
    /// and answered in that order; at the bound, the connection reads its
    /// next command only after the oldest is answered. The API's `batch`
    /// pipelines its publishes the same way, with the same bound. 1: one
    /// round trip per publish.
    pub max_publishes_in_flight: usize,
    /// Longest channel name in bytes.
    pub channel_max_length: usize,
    /// Bytes read from a WebSocket at a time: tungstenite allocates this much per connection
    /// for its life (a larger message grows it). Clients send small commands, so a small
    /// buffer costs a few more reads for a large one and saves memory on every idle one.
    pub read_buffer_size: usize,
    /// Most publications a `history` command may ask for at once.
    pub history_max_limit: usize,
    /// Most channels one connection may subscribe to (106 beyond).
    pub max_channels_per_connection: usize,
    /// Most open connections on this node (protocol and relay); beyond it
    /// upgrades answer HTTP 503 and clients retry (elsewhere, behind a LB).
    pub max_connections: usize,
    /// Length of the listening socket's queue of connections the kernel has
    /// completed but the edge has not accepted yet (the kernel caps it at
    /// `net.core.somaxconn`). A reconnect storm (an edge's clients all coming
    /// at once) waits there instead of having its SYNs dropped.
    pub listen_backlog: u32,
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
            public_origins: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            first_byte_timeout: Duration::from_secs(5),
            request_head_timeout: Duration::from_secs(10),
            http_stream: true,
            sse: true,
            ping_interval: Duration::from_secs(25),
            pong_timeout: Duration::from_secs(8),
            max_message_size: 65_536,
            max_queue_bytes: 1 << 20,
            max_publishes_in_flight: 64,
            channel_max_length: groupcast_core::channel::DEFAULT_MAX_LENGTH,
            read_buffer_size: 512,
            history_max_limit: 1000,
            max_channels_per_connection: 128,
            expired_close_delay: Duration::from_secs(25),
            max_connections: 100_000,
            listen_backlog: 4096,
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

/// A browser origin (RFC 6454 §6.2, what browsers send in `Origin`):
/// `scheme://host[:port]`, nothing else (no path, user or query). The
/// scheme and host are lowercased and the port is always known (the
/// scheme's default when the text has none: 80 for `http`/`ws`, 443 for
/// `https`/`wss`), so two origins are the same exactly when they are equal.
/// `null`, a missing scheme, an empty host, a port that is not 1 to 65535
/// or any other character are malformed.
///
/// Hand-written rather than `url::Url`: the grammar is one line, and a URL
/// parser accepts (and rewrites) paths, credentials and escapes that an
/// origin never has, which a check should refuse instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebOrigin {
    /// Lowercase: `[a-z][a-z0-9+.-]*`.
    pub scheme: String,
    /// Lowercase; an IPv6 address keeps its brackets (`[::1]`).
    pub host: String,
    /// Given, or the scheme's default; `None` only for a scheme without a
    /// default port written without one.
    pub port: Option<u16>,
}

impl WebOrigin {
    /// Parse `text` strictly (see [`WebOrigin`]); the error says what is wrong.
    pub fn parse(text: &str) -> Result<WebOrigin, &'static str> {
        let (scheme, rest) = text.split_once("://").ok_or("not scheme://host[:port]")?;
        if !valid_scheme(scheme) {
            return Err("bad scheme");
        }
        let scheme = scheme.to_ascii_lowercase();
        let (host, port) = if rest.starts_with('[') {
            let end = rest.find(']').ok_or("unclosed [ in the host")?;
            let inner = &rest[1..end];
            if !inner.contains(':')
                || !inner
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
            {
                return Err("bad IPv6 host");
            }
            let after = &rest[end + 1..];
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or("bad text after the IPv6 host")?),
            };
            (&rest[..=end], port)
        } else {
            let (host, port) = match rest.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            };
            if host.is_empty()
                || !host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
            {
                return Err("bad host (scheme://host[:port], no path)");
            }
            (host, port)
        };
        let port = match port {
            None => default_port(&scheme),
            Some(p) => {
                if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err("bad port");
                }
                match p.parse::<u16>() {
                    Ok(0) | Err(_) => return Err("port out of range"),
                    Ok(n) => Some(n),
                }
            }
        };
        Ok(WebOrigin {
            host: host.to_ascii_lowercase(),
            port,
            scheme,
        })
    }
}

/// The canonical text: the port is left out when it is the scheme's default.
impl std::fmt::Display for WebOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}", self.scheme, self.host)?;
        match self.port {
            Some(p) if Some(p) != default_port(&self.scheme) => write!(f, ":{p}"),
            _ => Ok(()),
        }
    }
}

fn valid_scheme(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

/// The port an origin of `scheme` has when it names none.
pub fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

/// An `allowed_origins` entry in its canonical form, the one compared with
/// an origin's canonical text ([`WebOrigin`]'s `Display`): lowercase, and
/// without the scheme's default port (`https://App.example.com:443` is
/// `https://app.example.com`). `*` alone stays `*` (any origin). Any other
/// pattern starts with a literal scheme and `://`, and has no path, query,
/// user or space; without `*` it must be a well-formed origin. The error
/// says what is wrong, for the key that holds it.
pub fn origin_pattern(pattern: &str) -> Result<String, String> {
    if pattern == "*" {
        return Ok(pattern.into());
    }
    if pattern.is_empty() {
        return Err("empty origin".into());
    }
    let Some((scheme, rest)) = pattern.split_once("://").filter(|(s, _)| valid_scheme(s)) else {
        return Err(format!(
            "{pattern:?} does not start with a scheme: patterns match whole origins, \
             scheme://host[:port] (e.g. \"https://{}\")",
            pattern.trim_start_matches("*://")
        ));
    };
    if !pattern.contains('*') {
        return WebOrigin::parse(pattern)
            .map(|o| o.to_string())
            .map_err(|e| format!("{pattern:?}: {e}"));
    }
    if rest.is_empty()
        || !rest.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':' | b'[' | b']' | b'*')
        })
    {
        return Err(format!(
            "{pattern:?}: only scheme://host[:port] with `*` (no path, query, user or space)"
        ));
    }
    let scheme = scheme.to_ascii_lowercase();
    let mut rest = rest.to_ascii_lowercase();
    if let Some(p) = default_port(&scheme) {
        if let Some(r) = rest.strip_suffix(&format!(":{p}")) {
            rest = r.to_string();
        }
    }
    Ok(format!("{scheme}://{rest}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_parse_strictly_to_one_form() {
        let canon = |s: &str| WebOrigin::parse(s).map(|o| o.to_string());
        assert_eq!(
            canon("https://App.Example.COM"),
            Ok("https://app.example.com".into())
        );
        assert_eq!(
            canon("HTTPS://a.example:443"),
            Ok("https://a.example".into())
        );
        assert_eq!(canon("http://a.example:80"), Ok("http://a.example".into()));
        assert_eq!(
            canon("http://a.example:443"),
            Ok("http://a.example:443".into())
        );
        assert_eq!(
            canon("http://127.0.0.1:8000"),
            Ok("http://127.0.0.1:8000".into())
        );
        assert_eq!(canon("http://[::1]:8000"), Ok("http://[::1]:8000".into()));
        assert_eq!(
            canon("capacitor://localhost"),
            Ok("capacitor://localhost".into())
        );
        assert_eq!(WebOrigin::parse("https://a").unwrap().port, Some(443));
        assert_eq!(
            WebOrigin::parse("capacitor://localhost").unwrap().port,
            None
        );
        for bad in [
            "null",
            "",
            "a.example",
            "://a.example",
            "1http://a",
            "https://",
            "https://a.example/",
            "https://a.example/path",
            "https://user@a.example",
            "https://a.example?x",
            "https://a.example#x",
            "https://a b",
            "https://a.example:",
            "https://a.example:0",
            "https://a.example:65536",
            "https://a.example:8443x",
            "https://a.example:+80",
            "https://evil.test:1.a.example",
            "https://[::1",
            "https://[::1]x",
            "https://[zz]",
            "https://*.a.example",
        ] {
            assert!(WebOrigin::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn patterns_need_a_scheme_and_are_canonical() {
        let ok = |p: &str| origin_pattern(p).unwrap();
        assert_eq!(ok("*"), "*");
        assert_eq!(ok("https://*.Example.com"), "https://*.example.com");
        assert_eq!(ok("https://*.example.com:443"), "https://*.example.com");
        assert_eq!(ok("http://localhost:*"), "http://localhost:*");
        assert_eq!(ok("HTTPS://App.example.com:443"), "https://app.example.com");
        for bad in [
            "",
            "app.example.com",
            "*.example.com",
            "*://app.example.com",
            "https://app.example.com/",
            "https://*.example.com/",
            "https://app.example.com:99999",
            "https://*.example.com?x",
            "null",
        ] {
            assert!(origin_pattern(bad).is_err(), "{bad:?} accepted");
        }
        assert!(origin_pattern("app.example.com")
            .unwrap_err()
            .contains("\"https://app.example.com\""));
    }
}
