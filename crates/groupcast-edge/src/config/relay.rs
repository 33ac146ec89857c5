//! `[relay]`: the raw relay, relay routes to backends and their HTTP targets.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::hooks::WebhookConfig;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    /// Serve `/ws/relay/{channel}`.
    pub enabled: bool,
    /// Channel used by `/ws/relay/` (no channel in the path).
    pub default_channel: String,
    /// Relay routes bound to backend targets (`[[relay.routes]]`,
    /// docs/backends.md).
    pub routes: Vec<RouteConfig>,
    /// Backend targets reached over HTTP (`[[relay.http_targets]]`); any
    /// other target is a NATS subject.
    pub http_targets: Vec<HttpTargetConfig>,
    /// On NATS, send `join` and heartbeats as requests: a target with
    /// nothing subscribed ("no responders") is gone, and the connection
    /// closes with 3015. Backends then answer them (any payload).
    pub target_gone_on_no_responders: bool,
    /// How long such a request waits for its answer (no answer in time is
    /// not "gone": the backend may be busy).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            enabled: true,
            default_channel: "relay".into(),
            routes: Vec::new(),
            http_targets: Vec::new(),
            target_gone_on_no_responders: false,
            request_timeout: Duration::from_secs(2),
        }
    }
}

/// One `[[relay.routes]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouteConfig {
    /// The path served, `/`-separated; a whole segment `{name}` is a
    /// parameter (`/ws/chat/{room}/`), usable as `{name}` in `target` and
    /// `channels`.
    pub path: String,
    /// The backend target of the route's connections, unless the connect
    /// proxy or the token names one.
    pub target: String,
    /// `[[proxies]]` entry that authenticates each connection and may set
    /// its user, info, `meta`, `target` and `channels`.
    pub connect_proxy: String,
    /// Channels each connection is subscribed to (publications arrive as
    /// raw frames), beside those of the proxy or token.
    pub channels: Vec<String>,
    /// Browser origins allowed: patterns as `client.allowed_origins`
    /// (which routes do not use). Empty: the same origin only, as
    /// `client.public_origins` defines it.
    pub allowed_origins: Vec<String>,
    /// A `heartbeat` event per connection this often; 0: none.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Without a connect proxy: refuse connections with no `?token=`.
    pub require_token: bool,
}

impl Default for RouteConfig {
    fn default() -> Self {
        RouteConfig {
            path: String::new(),
            target: String::new(),
            connect_proxy: String::new(),
            channels: Vec::new(),
            allowed_origins: Vec::new(),
            heartbeat_interval: Duration::ZERO,
            require_token: false,
        }
    }
}

/// One `[[relay.http_targets]]` entry: a target reached by HTTP POST.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpTargetConfig {
    /// The target name routes, proxies and tokens use.
    pub name: String,
    /// `http://` or `https://` URL the batches are POSTed to.
    pub url: String,
    /// HMAC-SHA256 key of the signature header (required).
    pub secret: String,
    /// Most events per POST.
    pub batch_max: usize,
    /// How long the first event of a batch waits for others.
    #[serde(with = "humantime_serde")]
    pub batch_interval: Duration,
    /// Events waiting while the backend is slow; when full, a connection
    /// waits up to `timeout`, then closes with 3004. A batch the backend
    /// refuses `max_retries` times is dropped (counted).
    pub queue_max: usize,
    /// Bytes of events' JSON held (queued, or in a POST not yet answered),
    /// on this edge. When the queue is full (events or bytes), a
    /// connection within its share (each bound divided by the connections
    /// holding events) takes the room of the one most over its share,
    /// which is closed with 3013 and its queued events dropped (counted);
    /// otherwise it waits as for `queue_max`.
    pub queue_max_bytes: usize,
    /// Each POST must be answered within this.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Retries of a failed POST (backoff 250 ms, doubling, at most 8 s).
    pub max_retries: u32,
}

impl Default for HttpTargetConfig {
    fn default() -> Self {
        let w = WebhookConfig::default();
        HttpTargetConfig {
            name: String::new(),
            url: String::new(),
            secret: String::new(),
            batch_max: w.batch_max,
            batch_interval: Duration::from_millis(5),
            queue_max: w.queue_max,
            queue_max_bytes: w.queue_max_bytes,
            timeout: w.timeout,
            max_retries: w.max_retries,
        }
    }
}

impl HttpTargetConfig {
    /// The batched, signed sender its events go through (the webhooks').
    pub fn sender(&self) -> WebhookConfig {
        WebhookConfig {
            url: self.url.clone(),
            secret: self.secret.clone(),
            events: Vec::new(),
            batch_max: self.batch_max,
            batch_interval: self.batch_interval,
            queue_max: self.queue_max,
            queue_max_bytes: self.queue_max_bytes,
            timeout: self.timeout,
            max_retries: self.max_retries,
        }
    }
}
