//! Webhooks: what happens to clients, POSTed to the application's URLs,
//! signed, batched and retried (docs/backends.md); and the sender they
//! share with HTTP relay targets (`routes`).
//!
//! Events: `client_connected`, `client_disconnected` (with the close code
//! and reason), `member_added`, `member_removed` (presence, in namespaces
//! with `presence`): each happens on exactly one edge (the one that holds
//! the connection), so a cluster sends each once. `channel_occupied` and
//! `channel_vacated`: the membership service hands each to one edge
//! (`control::events`). Every event has an `id`: a batch retried after a
//! lost answer can arrive twice, and the receiver drops what it has seen.
//!
//! A `[[webhooks]]` entry has its own queue ([`queue`]: `queue_max` events
//! and `queue_max_bytes`, shared out per client, per channel for channel
//! events) and task; an event that finds no room is dropped and counted,
//! never blocks a connection. A batch (up to `batch_max` events and
//! [`MAX_BATCH_BYTES`], or what came within `batch_interval`) is POSTed as
//! `{"events": [...]}` with `X-Groupcast-Timestamp: <unix seconds>` and
//! `X-Groupcast-Signature: sha256=<hex HMAC-SHA256 of "<purpose>.<timestamp>.<body>">`
//! keyed with the entry's `secret`, where the purpose is `webhook` (or
//! `relay` for an HTTP relay target), so a batch signed for one is refused
//! by the other even under the same secret; anything but a 2xx answer is
//! retried with exponential backoff (`max_retries` times), then the batch
//! is dropped and counted.

pub(crate) mod queue;

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::config::WebhookConfig;
use queue::{Eviction, Item, Next, Queue, QueueHandle};

/// Largest POST body a batch grows to (a larger single event goes alone);
/// at most a quarter of the queue's bytes, so a batch being retried leaves
/// room for the others.
pub const MAX_BATCH_BYTES: usize = 1 << 20;

/// What a sender's POSTs are for: named in the signed string, so that a
/// batch signed for one purpose does not verify as the other's.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Purpose {
    /// First part of the signed string.
    pub name: &'static str,
    /// Counter of POSTs by outcome.
    pub requests_metric: &'static str,
    /// Counter of events by `event` and `outcome` (drops: `dropped`).
    pub events_metric: &'static str,
}

/// `[[webhooks]]`.
pub(crate) const WEBHOOK: Purpose = Purpose {
    name: "webhook",
    requests_metric: "groupcast_webhook_requests_total",
    events_metric: "groupcast_webhook_events_total",
};

/// `[[relay.http_targets]]`.
pub(crate) const RELAY: Purpose = Purpose {
    name: "relay",
    requests_metric: "groupcast_relay_http_requests_total",
    events_metric: "groupcast_relay_backend_events_total",
};

/// The signature header's value for `body` sent at `timestamp` for
/// `purpose` (`webhook`, `relay`): `sha256=` and the hex HMAC-SHA256 of
/// `<purpose>.<timestamp>.<body>`.
pub fn signature(secret: &str, purpose: &str, timestamp: u64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(purpose.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    let bytes = mac.finalize().into_bytes();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

struct Sink {
    events: Option<HashSet<String>>,
    queue: QueueHandle,
}

/// Starts the task that POSTs what is queued on the returned queue to
/// `c.url`, batched, signed for `purpose` and retried as described above,
/// in order. The task ends once the handle is dropped and the queue is
/// empty.
pub(crate) fn spawn_sender(
    c: WebhookConfig,
    client: reqwest::Client,
    purpose: Purpose,
    eviction: Eviction,
) -> QueueHandle {
    let queue = Arc::new(Queue::new(
        c.queue_max,
        c.queue_max_bytes,
        eviction,
        purpose.events_metric,
    ));
    tokio::spawn(send_loop(c, client, queue.clone(), purpose));
    QueueHandle(queue)
}

/// Every configured webhook, fed by [`Webhooks::emit`].
#[derive(Default)]
pub struct Webhooks {
    sinks: Vec<Sink>,
    node: String,
}

/// Whose share of a webhook's queue an event takes: its client's, else
/// its channel's (channel events).
fn owner_of(fields: &Value) -> queue::OwnerId {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    match (fields.get("client"), fields.get("channel")) {
        (Some(Value::String(c)), _) => ("client", c).hash(&mut h),
        (_, Some(Value::String(c))) => ("channel", c).hash(&mut h),
        _ => "".hash(&mut h),
    }
    h.finish()
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
            let queue = spawn_sender(c.clone(), client.clone(), WEBHOOK, Eviction::Newest);
            sinks.push(Sink {
                events: (!c.events.is_empty()).then(|| c.events.iter().cloned().collect()),
                queue,
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
    /// never waits (no room: dropped, counted).
    pub fn emit(&self, kind: &'static str, fields: Value) {
        if self.sinks.is_empty() {
            return;
        }
        let owner = owner_of(&fields);
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
            let item = Item {
                owner,
                kind,
                keep: false,
                event: event.clone(),
            };
            let outcome = match sink.queue.offer(item, None) {
                Ok(()) => "queued",
                Err(_) => "dropped",
            };
            metrics::counter!(WEBHOOK.events_metric, "event" => kind, "outcome" => outcome)
                .increment(1);
        }
    }
}

async fn send_loop(c: WebhookConfig, client: reqwest::Client, queue: Arc<Queue>, purpose: Purpose) {
    let batch_bytes = (c.queue_max_bytes / 4).clamp(1, MAX_BATCH_BYTES);
    loop {
        let first = match queue.next(usize::MAX).await {
            Next::Item(i) => i,
            Next::TooLarge | Next::Closed => return,
        };
        let mut size = first.bytes();
        let mut batch = vec![first];
        let until = tokio::time::Instant::now() + c.batch_interval;
        while batch.len() < c.batch_max && size < batch_bytes {
            match tokio::time::timeout_at(until, queue.next(batch_bytes - size)).await {
                Ok(Next::Item(e)) => {
                    size += e.bytes();
                    batch.push(e);
                }
                Ok(Next::TooLarge | Next::Closed) | Err(_) => break,
            }
        }
        let mut body = String::with_capacity(size + batch.len() + 12);
        body.push_str("{\"events\":[");
        for (i, e) in batch.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(e.event.get());
        }
        body.push_str("]}");
        post(&c, &client, purpose, &body, batch.len()).await;
        queue.done(&batch);
    }
}

/// POSTs `body` until a 2xx answer or `max_retries` retries.
async fn post(
    c: &WebhookConfig,
    client: &reqwest::Client,
    purpose: Purpose,
    body: &str,
    events: usize,
) {
    let requests_metric = purpose.requests_metric;
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
            .header(
                "X-Groupcast-Signature",
                signature(&c.secret, purpose.name, ts, body),
            )
            .timeout(c.timeout)
            .body(body.to_string())
            .send()
            .await;
        let ok = matches!(&sent, Ok(r) if r.status().is_success());
        if ok {
            metrics::counter!(requests_metric, "outcome" => "ok").increment(1);
            return;
        }
        if attempt >= c.max_retries {
            metrics::counter!(requests_metric, "outcome" => "failed").increment(1);
            tracing::warn!(url = %c.url, events, metric = requests_metric, "batch dropped after {attempt} retries");
            return;
        }
        metrics::counter!(requests_metric, "outcome" => "retried").increment(1);
        attempt += 1;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(8));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_purpose_timestamp_body() {
        // Keyed, and bound to the purpose, the timestamp and the body.
        let a = signature("k", "webhook", 1, "{}");
        assert!(a.starts_with("sha256=") && a.len() == 7 + 64, "{a}");
        assert_eq!(a, signature("k", "webhook", 1, "{}"));
        assert_ne!(a, signature("k2", "webhook", 1, "{}"));
        assert_ne!(a, signature("k", "relay", 1, "{}"));
        assert_ne!(a, signature("k", "webhook", 2, "{}"));
        assert_ne!(a, signature("k", "webhook", 1, "{ }"));
        // The signed string is "<purpose>.<timestamp>.<body>".
        let mut mac = Hmac::<Sha256>::new_from_slice(b"k").unwrap();
        mac.update(b"webhook.1.{}");
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(a, format!("sha256={hex}"));
    }

    #[test]
    fn webhook_events_are_shared_out_per_client_then_per_channel() {
        let a = owner_of(&json!({"client": "c1", "channel": "x"}));
        assert_eq!(a, owner_of(&json!({"client": "c1", "user": "u"})));
        assert_ne!(a, owner_of(&json!({"client": "c2", "channel": "x"})));
        let x = owner_of(&json!({"channel": "x", "seq": 1}));
        assert_eq!(x, owner_of(&json!({"channel": "x", "seq": 2})));
        assert_ne!(x, owner_of(&json!({"channel": "c1"})));
        assert_ne!(owner_of(&json!({"client": "x"})), x);
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
        assert!(bad(&|c| c.queue_max_bytes = 0).contains("queue_max_bytes"));
    }
}
