//! `[[proxies]]` and `[[webhooks]]`: calls from the edge to the
//! application's backend.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One `[[proxies]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// What namespaces and `client.*_proxy` settings call it.
    pub name: String,
    /// `http://` or `https://` URL the events are POSTed to.
    pub endpoint: String,
    /// The backend must answer within this, else the event fails (100).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Headers of the client's WebSocket upgrade request forwarded with
    /// every event (e.g. `Cookie` for a session cookie, `Authorization`,
    /// `X-Forwarded-For`). Case-insensitive.
    pub http_headers: Vec<String>,
    /// As a `publish_proxy`: the backend reads `b64data`, so publications
    /// that are not JSON (a protobuf client's binary data, a relay binary
    /// frame, relay text that is not portable JSON) are sent to it as
    /// `b64data`. Off (the default), such publications into its namespaces
    /// are refused (107; the raw relay closes with 3501) and the backend
    /// only ever sees `data`.
    pub binary: bool,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            name: String::new(),
            endpoint: String::new(),
            timeout: Duration::from_secs(1),
            http_headers: Vec::new(),
            binary: false,
        }
    }
}

/// The event types a webhook can ask for.
pub const WEBHOOK_EVENTS: &[&str] = &[
    "client_connected",
    "client_disconnected",
    "member_added",
    "member_removed",
    "channel_occupied",
    "channel_vacated",
];

/// One `[[webhooks]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://` or `https://` URL the batches are POSTed to.
    pub url: String,
    /// HMAC-SHA256 key of the signature header (required).
    pub secret: String,
    /// Event types to send (see [`WEBHOOK_EVENTS`]); empty: all.
    pub events: Vec<String>,
    /// Most events per POST.
    pub batch_max: usize,
    /// How long the first event of a batch waits for others.
    #[serde(with = "humantime_serde")]
    pub batch_interval: Duration,
    /// Events kept while the receiver is slow or down; beyond, dropped
    /// (counted).
    pub queue_max: usize,
    /// Bytes of events' JSON kept (queued, or in a POST not yet answered);
    /// beyond, dropped (counted). When the queue is full, an event of a
    /// client (or, for channel events, a channel) holding less than its
    /// share (each bound divided by the clients holding events) takes the
    /// place of the newest event of the one most over its share.
    pub queue_max_bytes: usize,
    /// Each POST must be answered within this.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Retries of a failed POST (backoff 250 ms, doubling, at most 8 s).
    pub max_retries: u32,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            url: String::new(),
            secret: String::new(),
            events: Vec::new(),
            batch_max: 100,
            batch_interval: Duration::from_millis(200),
            queue_max: 10_000,
            queue_max_bytes: 16 << 20,
            timeout: Duration::from_secs(5),
            max_retries: 5,
        }
    }
}

impl WebhookConfig {
    /// `Err` names the bad setting (`i`: the entry's index).
    pub fn validate(&self, i: usize) -> Result<(), String> {
        self.validate_as(&format!("webhooks[{i}]"))
    }

    /// As [`WebhookConfig::validate`], errors naming `key.<field>`.
    pub fn validate_as(&self, key: &str) -> Result<(), String> {
        let field = |f: &str| format!("{key}.{f}");
        let url = reqwest::Url::parse(&self.url).map_err(|e| format!("{}: {e}", field("url")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("{}: use http:// or https://", field("url")));
        }
        if self.secret.is_empty() {
            return Err(format!("{}: required (the signature key)", field("secret")));
        }
        if let Some(e) = self
            .events
            .iter()
            .find(|e| !WEBHOOK_EVENTS.contains(&e.as_str()))
        {
            return Err(format!(
                "{}: unknown event {e:?} (one of {WEBHOOK_EVENTS:?})",
                field("events")
            ));
        }
        if self.batch_max == 0 || self.queue_max == 0 {
            return Err(format!("{}: must be above 0", field("batch_max/queue_max")));
        }
        if self.queue_max_bytes == 0 {
            return Err(format!("{}: must be above 0", field("queue_max_bytes")));
        }
        if self.timeout.is_zero() || self.batch_interval.is_zero() {
            return Err(format!(
                "{}: must be above 0",
                field("timeout/batch_interval")
            ));
        }
        Ok(())
    }
}
