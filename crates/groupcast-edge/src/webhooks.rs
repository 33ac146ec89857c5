//! Webhooks: what happens to clients, POSTed to the application's URLs,
//! signed, batched and retried (docs/backends.md).
//!
//! Events: `client_connected`, `client_disconnected` (with the close code
//! and reason), `member_added`, `member_removed` (presence, in namespaces
//! with `presence`): each happens on exactly one edge (the one that holds
//! the connection), so a cluster sends each once. `channel_occupied` and
//! `channel_vacated`: the membership service hands each to one edge
//! (`control::events`). Every event has an `id`: a batch retried after a
//! lost answer can arrive twice, and the receiver drops what it has seen.
//!
//! A `[[webhooks]]` entry has its own bounded queue and task: events past
//! `queue_max` are dropped and counted, never block a connection. A batch
//! (up to `batch_max` events, or what came within `batch_interval`) is
//! POSTed as `{"events": [...]}` with
//! `X-Groupcast-Timestamp: <unix seconds>` and
//! `X-Groupcast-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`
//! keyed with the entry's `secret`; anything but a 2xx answer is retried
//! with exponential backoff (`max_retries` times), then the batch is
//! dropped and counted.

use std::collections::HashSet;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::sync::mpsc;

use crate::config::WebhookConfig;

/// The signature header's value for `body` sent at `timestamp`.
pub fn signature(secret: &str, timestamp: u64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    let bytes = mac.finalize().into_bytes();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

struct Sink {
    events: Option<HashSet<String>>,
    tx: mpsc::Sender<Box<RawValue>>,
}

/// Starts the task that POSTs what is queued on the returned sender to
/// `c.url`, batched, signed and retried as described above, in order;
/// each POST counted in `requests_metric` by outcome.
pub(crate) fn spawn_sender(
    c: WebhookConfig,
    client: reqwest::Client,
    requests_metric: &'static str,
) -> mpsc::Sender<Box<RawValue>> {
    let (tx, rx) = mpsc::channel(c.queue_max);
    tokio::spawn(send_loop(c, client, rx, requests_metric));
    tx
}

/// Every configured webhook, fed by [`Webhooks::emit`].
#[derive(Default)]
pub struct Webhooks {
    sinks: Vec<Sink>,
    node: String,
}

impl Webhooks {
    /// Starts one sender task per entry (needs a Tokio runtime when any).
    pub fn start(configs: &[WebhookConfig], node: &str) -> Result<Webhooks, String> {
        if configs.is_empty() {
            return Ok(Webhooks::default());
        }
        let client = crate::proxy::http_client()?;
        let mut sinks = Vec::new();
        for (i, c) in configs.iter().enumerate() {
            c.validate(i)?;
            let tx = spawn_sender(
                c.clone(),
                client.clone(),
                "groupcast_webhook_requests_total",
            );
            sinks.push(Sink {
                events: (!c.events.is_empty()).then(|| c.events.iter().cloned().collect()),
                tx,
            });
        }
        Ok(Webhooks {
            sinks,
            node: node.to_string(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.sinks.is_empty()
    }

    /// Whether some webhook wants events of type `kind`.
    pub fn wants(&self, kind: &str) -> bool {
        self.sinks
            .iter()
            .any(|s| s.events.as_ref().is_none_or(|w| w.contains(kind)))
    }

    /// Queues event `kind` with `fields` for every webhook that wants it;
    /// never waits (a full queue drops it, counted).
    pub fn emit(&self, kind: &'static str, fields: Value) {
        if self.sinks.is_empty() {
            return;
        }
        let mut event = json!({
            "type": kind,
            "id": uuid::Uuid::new_v4().simple().to_string(),
            "time_ms": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            "node": self.node,
        });
        if let (Some(e), Value::Object(f)) = (event.as_object_mut(), fields) {
            e.extend(f);
        }
        let Ok(event) = serde_json::value::to_raw_value(&event) else {
            return;
        };
        for sink in &self.sinks {
            if sink.events.as_ref().is_some_and(|w| !w.contains(kind)) {
                continue;
            }
            let outcome = match sink.tx.try_send(event.clone()) {
                Ok(()) => "queued",
                Err(_) => "dropped",
            };
            metrics::counter!("groupcast_webhook_events_total", "event" => kind, "outcome" => outcome)
                .increment(1);
        }
    }
}

async fn send_loop(
    c: WebhookConfig,
    client: reqwest::Client,
    mut rx: mpsc::Receiver<Box<RawValue>>,
    requests_metric: &'static str,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let until = tokio::time::Instant::now() + c.batch_interval;
        while batch.len() < c.batch_max {
            match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(Some(e)) => batch.push(e),
                Ok(None) | Err(_) => break,
            }
        }
        let mut body = String::from("{\"events\":[");
        for (i, e) in batch.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(e.get());
        }
        body.push_str("]}");
        let mut backoff = Duration::from_millis(250);
        let mut attempt = 0;
        loop {
            let ts = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let sent = client
                .post(&c.url)
                .header("Content-Type", "application/json")
                .header("X-Groupcast-Timestamp", ts.to_string())
                .header("X-Groupcast-Signature", signature(&c.secret, ts, &body))
                .timeout(c.timeout)
                .body(body.clone())
                .send()
                .await;
            let ok = matches!(&sent, Ok(r) if r.status().is_success());
            if ok {
                metrics::counter!(requests_metric, "outcome" => "ok").increment(1);
                break;
            }
            if attempt >= c.max_retries {
                metrics::counter!(requests_metric, "outcome" => "failed").increment(1);
                tracing::warn!(url = %c.url, events = batch.len(), metric = requests_metric, "batch dropped after {attempt} retries");
                break;
            }
            metrics::counter!(requests_metric, "outcome" => "retried").increment(1);
            attempt += 1;
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(8));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // RFC 4231-style check through a second implementation would need
        // another crate; instead: deterministic, keyed, and body-bound.
        let a = signature("k", 1, "{}");
        assert!(a.starts_with("sha256=") && a.len() == 7 + 64, "{a}");
        assert_eq!(a, signature("k", 1, "{}"));
        assert_ne!(a, signature("k2", 1, "{}"));
        assert_ne!(a, signature("k", 2, "{}"));
        assert_ne!(a, signature("k", 1, "{ }"));
    }

    #[test]
    fn bad_entries_are_refused_naming_the_setting() {
        let ok = WebhookConfig {
            url: "http://127.0.0.1:1/hook".into(),
            secret: "s".into(),
            ..Default::default()
        };
        assert!(ok.validate(0).is_ok());
        let bad = |f: &dyn Fn(&mut WebhookConfig)| {
            let mut c = ok.clone();
            f(&mut c);
            c.validate(2).unwrap_err()
        };
        assert!(bad(&|c| c.url = "ftp://x".into()).contains("webhooks[2].url"));
        assert!(bad(&|c| c.secret.clear()).contains("webhooks[2].secret"));
        assert!(bad(&|c| c.events = vec!["channel_occupiedd".into()]).contains("unknown event"));
        assert!(bad(&|c| c.queue_max = 0).contains("queue_max"));
    }
}
