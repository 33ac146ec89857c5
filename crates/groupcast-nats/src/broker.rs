//! [`NatsBroker`]: the Broker contract over core NATS and JetStream.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::{self, stream};
use async_nats::{Client, ConnectOptions, Event, HeaderMap};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use groupcast_core::broker::{
    BackboneStatus, Broker, BrokerError, BrokerHandler, HistoryQuery, HistoryResult, PublishOptions,
};
use groupcast_core::{BackendBus, NodeBus, NodeHandler, Publication, StreamPosition};
use groupcast_proto::client::ClientInfo;
use parking_lot::{Mutex, RwLock};
use serde::Deserialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::envelope::{self, Envelope};
use crate::subjects::{encode_token, namespace_of, Subjects};
use crate::NatsConfig;

/// Messages asked for per batched direct-get request.
const READ_BATCH: usize = 256;

/// Where a namespace keeps its history: the JetStream stream's limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSpec {
    /// `max_msgs_per_subject`: publications kept per channel.
    pub history_size: usize,
    /// `max_age`.
    pub history_ttl: Duration,
    /// Stream replicas (1 to 5; 3 in a NATS cluster survives a server loss).
    pub replicas: usize,
    /// `file` (survives a NATS restart) or `memory`.
    pub memory_storage: bool,
}

/// A stream this broker made sure exists.
struct StreamState {
    name: String,
    epoch: String,
    spec: StreamSpec,
}

struct LiveSub {
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

struct Inner {
    client: Client,
    /// `nats.urls`, for the dashboard.
    urls: Vec<String>,
    js: jetstream::Context,
    subjects: Subjects,
    specs: HashMap<String, StreamSpec>,
    streams: RwLock<HashMap<String, Arc<StreamState>>>,
    handler: OnceLock<Arc<dyn BrokerHandler>>,
    /// Channel subscriptions. The node never subscribes and unsubscribes
    /// one channel concurrently (its per-channel lock), so this lock is
    /// held only for map updates, never across network calls.
    subs: Mutex<HashMap<String, LiveSub>>,
    connected: Arc<AtomicBool>,
    /// Bumped on every reconnect: history subscriptions then look for gaps.
    reconnects: watch::Receiver<u64>,
    request_timeout: Duration,
    /// Messages asked for per direct-get request: the reply subscription
    /// must hold a whole batch (`nats.subscription_capacity`).
    read_batch: usize,
    gaps_repaired: AtomicU64,
    gaps_insufficient: AtomicU64,
}

/// Counters of what the live path had to mend (also exported as metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GapStats {
    /// Gaps filled from JetStream before delivering.
    pub repaired: u64,
    /// Gaps JetStream no longer had: subscribers told to recover.
    pub insufficient: u64,
}

/// The NATS broker. Cheap to clone; all clones share one connection.
#[derive(Clone)]
pub struct NatsBroker {
    inner: Arc<Inner>,
}

fn unavailable(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
}

/// Count a failed publish (publications, joins and leaves).
/// Pause before sending a history publish again after "no responders"
/// (see `Inner::publish_stored`).
const NO_RESPONDERS_RETRY: Duration = Duration::from_millis(100);

fn counted<T>(r: Result<T, BrokerError>) -> Result<T, BrokerError> {
    if r.is_err() {
        metrics::counter!("groupcast_nats_publish_errors_total").increment(1);
    }
    r
}

fn header_u64(h: Option<&HeaderMap>, name: &str) -> Option<u64> {
    h?.get(name)?.as_str().parse().ok()
}

/// When a publication was accepted (microseconds since the Unix epoch), for
/// the delivery-latency metric. A header, not part of the envelope, so
/// edges that do not know it still read the message.
const PUBLISHED_AT_HEADER: &str = "Groupcast-Published-Us";

fn published_at_headers(published_at_us: u64) -> HeaderMap {
    let mut h = HeaderMap::new();
    if published_at_us > 0 {
        h.insert(PUBLISHED_AT_HEADER, published_at_us.to_string().as_str());
    }
    h
}

fn event_name(e: &Event) -> &'static str {
    match e {
        Event::Connected => "connected",
        Event::Disconnected => "disconnected",
        Event::LameDuckMode => "lame_duck",
        Event::Draining => "draining",
        Event::Closed => "closed",
        Event::SlowConsumer(_) => "slow_consumer",
        Event::ServerError(_) => "server_error",
        Event::ClientError(_) => "client_error",
    }
}

impl NatsBroker {
    /// Connect to NATS and make sure the history streams of `specs`
    /// (namespace → limits; `""` is the default namespace) exist with those
    /// limits. Fails when NATS cannot be reached within
    /// `config.connect_timeout` or JetStream refuses a stream.
    pub async fn connect(
        config: &NatsConfig,
        specs: HashMap<String, StreamSpec>,
    ) -> Result<NatsBroker, BrokerError> {
        config.validate().map_err(BrokerError::Internal)?;
        if config.urls.is_empty() {
            return Err(BrokerError::Internal("nats.urls is empty".into()));
        }
        let connected = Arc::new(AtomicBool::new(false));
        let (reconnect_tx, reconnects) = watch::channel(0u64);
        let flag = connected.clone();
        let mut opts = ConnectOptions::new()
            .subscription_capacity(config.subscription_capacity)
            .request_timeout(Some(config.request_timeout))
            .connection_timeout(config.connect_timeout)
            .max_reconnects(None)
            .event_callback(move |event| {
                let flag = flag.clone();
                let reconnect_tx = reconnect_tx.clone();
                async move {
                    metrics::counter!("groupcast_nats_events_total", "event" => event_name(&event))
                        .increment(1);
                    match &event {
                        Event::Connected => {
                            flag.store(true, Ordering::SeqCst);
                            metrics::gauge!("groupcast_nats_connected").set(1.0);
                            reconnect_tx.send_modify(|n| *n += 1);
                            tracing::info!("NATS connected");
                        }
                        Event::Disconnected | Event::Closed => {
                            flag.store(false, Ordering::SeqCst);
                            metrics::gauge!("groupcast_nats_connected").set(0.0);
                            tracing::warn!("NATS {event}");
                        }
                        _ => tracing::warn!("NATS {event}"),
                    }
                }
            });
        if !config.name.is_empty() {
            opts = opts.name(&config.name);
        }
        if let Some(path) = &config.credentials_file {
            opts = opts.credentials_file(path).await.map_err(|e| {
                BrokerError::Internal(format!("nats.credentials_file {}: {e}", path.display()))
            })?;
        }
        if !config.user.is_empty() {
            opts = opts.user_and_password(config.user.clone(), config.password.clone());
        }
        if !config.token.is_empty() {
            opts = opts.token(config.token.clone());
        }
        if let Some(ca) = &config.tls_ca_file {
            opts = opts.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let (Some(cert), Some(key)) = (&config.tls_cert_file, &config.tls_key_file) {
            opts = opts.add_client_certificate(cert.clone(), key.clone());
        }
        if config.tls_required {
            opts = opts.require_tls(true);
        }
        let urls: Vec<async_nats::ServerAddr> = config
            .urls
            .iter()
            .map(|u| {
                u.parse()
                    .map_err(|e| BrokerError::Internal(format!("nats.urls: {u:?}: {e}")))
            })
            .collect::<Result<_, _>>()?;
        let client = opts.connect(urls).await.map_err(|e| {
            BrokerError::Unavailable(format!("cannot connect to NATS {:?}: {e}", config.urls))
        })?;
        connected.store(true, Ordering::SeqCst);
        metrics::gauge!("groupcast_nats_connected").set(1.0);
        let mut js = jetstream::new(client.clone());
        js.set_timeout(config.request_timeout);
        let broker = NatsBroker {
            inner: Arc::new(Inner {
                client,
                urls: config.urls.clone(),
                js,
                subjects: Subjects::new(&config.prefix),
                specs,
                streams: RwLock::new(HashMap::new()),
                handler: OnceLock::new(),
                subs: Mutex::new(HashMap::new()),
                connected,
                reconnects,
                request_timeout: config.request_timeout,
                read_batch: READ_BATCH.min(config.subscription_capacity / 2).max(1),
                gaps_repaired: AtomicU64::new(0),
                gaps_insufficient: AtomicU64::new(0),
            }),
        };
        let namespaces: Vec<String> = broker.inner.specs.keys().cloned().collect();
        for ns in namespaces {
            broker
                .inner
                .stream_at_start(&ns, config.startup_timeout)
                .await?;
        }
        Ok(broker)
    }

    /// Gaps seen on live subjects since start.
    pub fn gap_stats(&self) -> GapStats {
        GapStats {
            repaired: self.inner.gaps_repaired.load(Ordering::Relaxed),
            insufficient: self.inner.gaps_insufficient.load(Ordering::Relaxed),
        }
    }

    /// The underlying NATS client (for tests and tools).
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// The NATS subject a channel's live traffic travels on.
    pub fn live_subject(&self, channel: &str) -> String {
        self.inner.subjects.live(channel)
    }

    /// End every channel subscription, flush and close the connection (at
    /// shutdown, after the last publish).
    pub async fn close(&self) {
        let live: Vec<LiveSub> = self.inner.subs.lock().drain().map(|(_, l)| l).collect();
        for l in live {
            l.cancel.cancel();
            let _ = l.task.await;
        }
        let _ = self.inner.client.flush().await;
        let _ = self.inner.client.drain().await;
    }
}

/// Requests between nodes on core NATS: each node answers on its own
/// subject ([`Subjects::node`]).
#[async_trait]
impl NodeBus for NatsBroker {
    /// Answers on `node`'s own subject until the connection closes.
    async fn serve(&self, node: &str, handler: NodeHandler) -> Result<(), BrokerError> {
        let subject = self.inner.subjects.node(node);
        let mut sub = self
            .inner
            .client
            .subscribe(subject.clone())
            .await
            .map_err(|e| BrokerError::Unavailable(format!("subscribe {subject}: {e}")))?;
        // Serving once this returns: the server has the interest, so a
        // request made right after is not answered "no responders" (which
        // callers read as "that node is gone").
        self.inner
            .client
            .flush()
            .await
            .map_err(|e| BrokerError::Unavailable(format!("subscribe {subject}: {e}")))?;
        let client = self.inner.client.clone();
        tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                let Some(reply) = msg.reply.clone() else {
                    continue;
                };
                let (client, handler) = (client.clone(), handler.clone());
                tokio::spawn(async move {
                    let answer = handler(msg.payload).await;
                    let _ = client.publish(reply, answer).await;
                });
            }
        });
        Ok(())
    }

    /// A node that does not listen is NATS's "no responders" (`Ok(None)`);
    /// `Unavailable` for a timeout or NATS down.
    async fn request(
        &self,
        node: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Option<Bytes>, BrokerError> {
        let subject = self.inner.subjects.node(node);
        self.inner
            .request(subject, payload, timeout, &format!("node {node}"))
            .await
    }
}

/// Relay connections and backend processes on core NATS (subjects in
/// [`Subjects::relay_target`] and [`Subjects::commands`]).
#[async_trait]
impl BackendBus for NatsBroker {
    async fn publish_event(&self, target: &str, payload: Bytes) -> Result<(), BrokerError> {
        let subject = self.inner.subjects.relay_target(target);
        self.inner
            .client
            .publish(subject, payload)
            .await
            .map_err(|e| BrokerError::Unavailable(format!("relay target {target}: {e}")))
    }

    async fn request_event(
        &self,
        target: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Option<Bytes>, BrokerError> {
        let subject = self.inner.subjects.relay_target(target);
        self.inner
            .request(subject, payload, timeout, &format!("relay target {target}"))
            .await
    }

    async fn serve_commands(
        &self,
        node: &str,
        handler: NodeHandler,
    ) -> Result<String, BrokerError> {
        let (shared, own) = (
            self.inner.subjects.commands(),
            self.inner.subjects.node_commands(node),
        );
        let client = &self.inner.client;
        let failed = |e: &dyn std::fmt::Display| {
            BrokerError::Unavailable(format!("subscribe {shared}: {e}"))
        };
        let queue = client
            .queue_subscribe(shared.clone(), self.inner.subjects.commands_group())
            .await
            .map_err(|e| failed(&e))?;
        let mine = client
            .subscribe(own.clone())
            .await
            .map_err(|e| failed(&e))?;
        client.flush().await.map_err(|e| failed(&e))?;
        for mut sub in [queue, mine] {
            let (client, handler) = (client.clone(), handler.clone());
            tokio::spawn(async move {
                // In arrival order, one at a time: a backend's commands to
                // one client (frames, then a close) take effect in the
                // order sent.
                while let Some(msg) = sub.next().await {
                    let answer = handler(msg.payload).await;
                    if let Some(reply) = msg.reply {
                        let _ = client.publish(reply, answer).await;
                    }
                }
            });
        }
        Ok(own)
    }
}

impl Inner {
    /// A core NATS request: `Ok(None)` when nothing listens on `subject`
    /// ("no responders"), `Timeout` for no answer in time, `Unavailable`
    /// otherwise (`what` names the peer in errors).
    async fn request(
        &self,
        subject: String,
        payload: Bytes,
        timeout: Duration,
        what: &str,
    ) -> Result<Option<Bytes>, BrokerError> {
        let request = async_nats::Request::new()
            .payload(payload)
            .timeout(Some(timeout));
        match self.client.send_request(subject, request).await {
            Ok(m) => Ok(Some(m.payload)),
            Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => Ok(None),
            Err(e) if e.kind() == async_nats::RequestErrorKind::TimedOut => {
                Err(BrokerError::Timeout(format!("{what}: {e}")))
            }
            Err(e) => Err(BrokerError::Unavailable(format!("{what}: {e}"))),
        }
    }

    fn handler(&self) -> Option<&Arc<dyn BrokerHandler>> {
        self.handler.get()
    }

    /// The history stream of a namespace, created or updated to its spec on
    /// first use. `Ok(None)` when the namespace keeps no history.
    async fn stream(&self, ns: &str) -> Result<Option<Arc<StreamState>>, BrokerError> {
        if let Some(s) = self.streams.read().get(ns) {
            return Ok(Some(s.clone()));
        }
        let Some(spec) = self.specs.get(ns).cloned() else {
            return Ok(None);
        };
        let name = self.subjects.stream(ns);
        let config = stream::Config {
            name: name.clone(),
            description: Some(format!("Groupcast history of namespace {ns:?}")),
            subjects: vec![self.subjects.stream_subjects(ns)],
            max_messages_per_subject: spec.history_size as i64,
            max_age: spec.history_ttl,
            num_replicas: spec.replicas,
            storage: if spec.memory_storage {
                stream::StorageType::Memory
            } else {
                stream::StorageType::File
            },
            discard: stream::DiscardPolicy::Old,
            allow_direct: true,
            republish: Some(stream::Republish {
                source: self.subjects.stream_subjects(ns),
                destination: self.subjects.republish_destination(ns),
                headers_only: false,
            }),
            ..Default::default()
        };
        let info = self
            .js
            .create_or_update_stream(config)
            .await
            .map_err(|e| BrokerError::Unavailable(format!("JetStream stream {name}: {e}")))?;
        let epoch = format!("{:x}", info.created.unix_timestamp_nanos() as u64);
        let state = Arc::new(StreamState { name, epoch, spec });
        self.streams.write().insert(ns.to_string(), state.clone());
        Ok(Some(state))
    }

    /// [`Self::stream`] at start: a JetStream that just formed (a new NATS
    /// cluster still electing its meta leader) times out or answers "no
    /// responders" for a while, so failures are retried with backoff for up
    /// to `within` (`nats.startup_timeout`) before giving up.
    async fn stream_at_start(&self, ns: &str, within: Duration) -> Result<(), BrokerError> {
        let deadline = tokio::time::Instant::now() + within;
        let mut pause = Duration::from_millis(100);
        loop {
            let e = match self.stream(ns).await {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            // The last try is at the deadline, not a backoff before it.
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(e);
            }
            tracing::warn!(namespace = ns, error = %e, "JetStream not ready; retrying");
            metrics::counter!("groupcast_nats_stream_retries_total").increment(1);
            tokio::time::sleep(pause.min(left)).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }

    /// Forget a stream JetStream no longer has; the next use creates it
    /// again (with a new epoch).
    fn forget_stream(&self, ns: &str) {
        self.streams.write().remove(ns);
    }

    fn check_connected(&self) -> Result<(), BrokerError> {
        if self.connected.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(unavailable("NATS is not connected"))
        }
    }

    /// Offset of the newest stored publication of `subject` (0: none).
    async fn last_offset(&self, stream: &StreamState, subject: &str) -> Result<u64, BrokerError> {
        #[derive(Deserialize)]
        struct Msg {
            seq: u64,
        }
        #[derive(Deserialize)]
        struct ApiErr {
            code: u16,
            description: Option<String>,
        }
        #[derive(Deserialize)]
        struct Resp {
            message: Option<Msg>,
            error: Option<ApiErr>,
        }
        let body = serde_json::to_vec(&serde_json::json!({ "last_by_subj": subject }))
            .expect("serializes");
        let api = format!("$JS.API.STREAM.MSG.GET.{}", stream.name);
        let reply = self
            .client
            .request(api, body.into())
            .await
            .map_err(|e| BrokerError::Unavailable(format!("JetStream: {e}")))?;
        let resp: Resp = serde_json::from_slice(&reply.payload)
            .map_err(|e| BrokerError::Internal(format!("JetStream reply: {e}")))?;
        match (resp.message, resp.error) {
            (Some(m), _) => Ok(m.seq),
            (None, Some(e)) if e.code == 404 => Ok(0),
            (None, e) => Err(BrokerError::Unavailable(format!(
                "JetStream: {}",
                e.and_then(|e| e.description).unwrap_or_default()
            ))),
        }
    }

    /// Stored publications of `subject` with offsets in `from..=to`, oldest
    /// first, read with batched direct gets.
    async fn read_range(
        &self,
        stream: &StreamState,
        subject: &str,
        from: u64,
        to: u64,
    ) -> Result<Vec<Publication>, BrokerError> {
        let mut out = Vec::new();
        let mut next = from.max(1);
        let api = format!("$JS.API.DIRECT.GET.{}", stream.name);
        // A channel holds at most `history_size` publications: bound the
        // loop by that (plus one batch of slack for concurrent publishes).
        let max = stream.spec.history_size + self.read_batch;
        while next <= to && out.len() < max {
            let inbox = self.client.new_inbox();
            let mut replies = self
                .client
                .subscribe(inbox.clone())
                .await
                .map_err(|e| BrokerError::Unavailable(format!("NATS: {e}")))?;
            let req = serde_json::json!({ "seq": next, "next_by_subj": subject, "batch": self.read_batch });
            self.client
                .publish_with_reply(
                    api.clone(),
                    inbox,
                    serde_json::to_vec(&req).expect("json").into(),
                )
                .await
                .map_err(|e| BrokerError::Unavailable(format!("NATS: {e}")))?;
            let mut got = 0;
            let mut done = false;
            loop {
                let msg = tokio::time::timeout(self.request_timeout, replies.next())
                    .await
                    .map_err(|_| BrokerError::Unavailable("JetStream read timed out".into()))?
                    .ok_or_else(|| BrokerError::Unavailable("NATS connection closed".into()))?;
                if let Some(status) = msg.status {
                    // 204: end of batch; 404: nothing (more) for this subject.
                    match status.as_u16() {
                        204 => break,
                        404 => {
                            done = true;
                            break;
                        }
                        code => {
                            return Err(BrokerError::Unavailable(format!(
                                "JetStream direct get: {code} {}",
                                msg.description.unwrap_or_default()
                            )))
                        }
                    }
                }
                let Some(seq) = header_u64(msg.headers.as_ref(), "Nats-Sequence") else {
                    return Err(BrokerError::Internal(
                        "direct get without Nats-Sequence".into(),
                    ));
                };
                got += 1;
                next = seq + 1;
                if seq > to {
                    done = true;
                    continue;
                }
                match envelope::decode(msg.payload) {
                    Ok(Envelope::Pub(mut p)) => {
                        p.offset = seq;
                        out.push(p);
                    }
                    _ => {
                        metrics::counter!("groupcast_nats_invalid_messages_total").increment(1);
                    }
                }
            }
            let _ = replies.unsubscribe().await;
            if done || got < self.read_batch {
                break;
            }
        }
        Ok(out)
    }

    /// Read the publications after offset `after` up to `to` and say whether
    /// they are provably all of them: the stored publication at `after` is
    /// still there (trimming is oldest first), or `after` is 0 and nothing
    /// was ever trimmed from this channel as far as the count shows.
    async fn read_after(
        &self,
        stream: &StreamState,
        subject: &str,
        after: u64,
        to: u64,
    ) -> Result<(Vec<Publication>, bool), BrokerError> {
        let mut pubs = self.read_range(stream, subject, after, to).await?;
        let complete = if after == 0 {
            pubs.len() < stream.spec.history_size
        } else if pubs.first().map(|p| p.offset) == Some(after) {
            pubs.remove(0);
            true
        } else {
            false
        };
        Ok((pubs, complete))
    }

    /// Core NATS publish on the live subject (at-most-once).
    async fn publish_live(
        &self,
        channel: &str,
        payload: Bytes,
        headers: Option<HeaderMap>,
    ) -> Result<(), BrokerError> {
        self.check_connected()?;
        let subject = self.subjects.live(channel);
        match headers {
            Some(h) => self.client.publish_with_headers(subject, h, payload).await,
            None => self.client.publish(subject, payload).await,
        }
        .map_err(unavailable)
    }

    /// Store in JetStream and wait for the acknowledgement; its sequence is
    /// the offset. The stream republishes it to the live subject.
    ///
    /// Fails at once while NATS is not connected. Otherwise bounded by
    /// `nats.request_timeout` in all, within which it rides out "no
    /// responders" while JetStream elects a new leader for the stream
    /// (nobody received the message, so sending it again cannot store it
    /// twice). The answer is the position, or `Unavailable` (108) once the
    /// bound is reached.
    async fn publish_stored(
        &self,
        channel: &str,
        payload: Bytes,
        mut headers: HeaderMap,
        opts: &PublishOptions,
    ) -> Result<StreamPosition, BrokerError> {
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        let ns = namespace_of(channel);
        if let Some(key) = &opts.idempotency_key {
            // JetStream deduplicates per stream (namespace): scope the key
            // to the channel.
            let id = format!("{}:{}", encode_token(channel), encode_token(key));
            headers.insert("Nats-Msg-Id", id.as_str());
        }
        loop {
            self.check_connected()?;
            let Some(stream) = self.stream(ns).await? else {
                return Err(BrokerError::Internal(format!(
                    "namespace {ns:?} has no history stream configured"
                )));
            };
            let sent = self
                .js
                .publish_with_headers(
                    self.subjects.history(channel),
                    headers.clone(),
                    payload.clone(),
                )
                .await;
            let ack = match sent {
                Ok(ack) => match tokio::time::timeout_at(deadline, ack).await {
                    Ok(ack) => ack,
                    Err(_) => Err(PublishErrorKind::TimedOut.into()),
                },
                Err(e) => Err(e),
            };
            let e = match ack {
                Ok(ack) => {
                    return Ok(StreamPosition {
                        offset: ack.sequence,
                        epoch: stream.epoch.clone(),
                    })
                }
                Err(e) => e,
            };
            tracing::debug!(channel, error = %e, "JetStream publish failed");
            if !matches!(e.kind(), PublishErrorKind::StreamNotFound) {
                return Err(unavailable(e));
            }
            // "No responders": no server holds the stream's subject right
            // now (a leader election) or the stream was deleted.
            let retry_at = tokio::time::Instant::now() + NO_RESPONDERS_RETRY;
            if retry_at >= deadline {
                // Still nobody at the bound: if it was deleted, the next
                // publish creates it again (with a new epoch).
                self.forget_stream(ns);
                metrics::counter!("groupcast_nats_publish_retries_total", "outcome" => "gave_up")
                    .increment(1);
                return Err(unavailable(e));
            }
            metrics::counter!("groupcast_nats_publish_retries_total", "outcome" => "retried")
                .increment(1);
            tokio::time::sleep_until(retry_at).await;
        }
    }

    fn deliver(&self, channel: &str, env: Envelope) {
        let Some(h) = self.handler() else { return };
        match env {
            Envelope::Pub(p) => h.on_publication(channel, Arc::new(p)),
            Envelope::Join(i) => h.on_join(channel, i),
            Envelope::Leave(i) => h.on_leave(channel, i),
        }
    }

    /// Deliver the stored publications between `last` and `upto` (exclusive)
    /// before the live one at `upto`, or tell subscribers to recover.
    async fn repair(&self, channel: &str, stream: &StreamState, last: u64, upto: u64) {
        let subject = self.subjects.history(channel);
        match self.read_after(stream, &subject, last, upto - 1).await {
            Ok((pubs, true)) => {
                self.gaps_repaired.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("groupcast_nats_gaps_total", "outcome" => "repaired")
                    .increment(1);
                tracing::debug!(
                    channel,
                    last,
                    upto,
                    n = pubs.len(),
                    "gap repaired from JetStream"
                );
                for p in pubs {
                    self.deliver(channel, Envelope::Pub(p));
                }
            }
            other => {
                self.gaps_insufficient.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("groupcast_nats_gaps_total", "outcome" => "insufficient")
                    .increment(1);
                tracing::warn!(channel, last, upto, error = ?other.err(), "gap not repairable: subscribers must recover");
                if let Some(h) = self.handler() {
                    h.on_insufficient_state(channel);
                }
            }
        }
    }

    /// One channel's subscription: delivers in arrival (= stored) order,
    /// one message at a time, repairing gaps in the offsets.
    async fn run_subscription(
        self: Arc<Self>,
        channel: String,
        mut sub: async_nats::Subscriber,
        cancel: CancellationToken,
        stream: Option<Arc<StreamState>>,
        mut last: Option<u64>,
    ) {
        let mut reconnects = self.reconnects.clone();
        reconnects.mark_unchanged();
        let received = metrics::counter!("groupcast_nats_messages_received_total");
        loop {
            let msg = tokio::select! {
                _ = cancel.cancelled() => break,
                changed = reconnects.changed() => {
                    if changed.is_err() { break; }
                    // Anything stored while we were away arrives on no
                    // subject: compare with the stream's top and repair.
                    if let (Some(stream), Some(l)) = (&stream, last) {
                        let subject = self.subjects.history(&channel);
                        if let Ok(top) = self.last_offset(stream, &subject).await {
                            if top > l {
                                // Delivers everything after `l` up to `top`.
                                self.repair(&channel, stream, l, top + 1).await;
                                last = Some(top);
                            }
                        }
                    }
                    continue;
                }
                msg = sub.next() => match msg {
                    Some(m) => m,
                    None => break,
                },
            };
            received.increment(1);
            let seq = header_u64(msg.headers.as_ref(), "Nats-Sequence");
            let prev = header_u64(msg.headers.as_ref(), "Nats-Last-Sequence").unwrap_or(0);
            let published_at = header_u64(msg.headers.as_ref(), PUBLISHED_AT_HEADER);
            let mut env = match envelope::decode(msg.payload) {
                Ok(env) => env,
                Err(e) => {
                    metrics::counter!("groupcast_nats_invalid_messages_total").increment(1);
                    tracing::debug!(channel, error = %e, "dropping an invalid NATS message");
                    continue;
                }
            };
            if let (Some(t), Envelope::Pub(p)) = (published_at, &mut env) {
                p.published_at_us = t;
            }
            if let (Some(seq), Envelope::Pub(p)) = (seq, &mut env) {
                if let Some(l) = last {
                    if seq <= l {
                        continue; // already delivered (by a repair)
                    }
                    if prev > l {
                        if let Some(stream) = &stream {
                            self.repair(&channel, stream, l, seq).await;
                        }
                    }
                }
                p.offset = seq;
                last = Some(seq);
            }
            self.deliver(&channel, env);
        }
        let _ = sub.unsubscribe().await;
    }
}

#[async_trait]
impl Broker for NatsBroker {
    fn set_handler(&self, handler: Arc<dyn BrokerHandler>) {
        let _ = self.inner.handler.set(handler);
    }

    async fn subscribe(&self, channel: &str) -> Result<(), BrokerError> {
        let inner = &self.inner;
        if inner.subs.lock().contains_key(channel) {
            return Ok(());
        }
        inner.check_connected()?;
        let stream = inner.stream(namespace_of(channel)).await?;
        let sub = inner
            .client
            .subscribe(inner.subjects.live(channel))
            .await
            .map_err(|e| BrokerError::Unavailable(format!("NATS subscribe: {e}")))?;
        // The server has the interest once the flush returns: everything
        // stored after this point reaches the subscription.
        let ready = async {
            inner.client.flush().await.map_err(unavailable)?;
            match &stream {
                Some(s) => inner
                    .last_offset(s, &inner.subjects.history(channel))
                    .await
                    .map(Some),
                None => Ok(None),
            }
        };
        let last = match ready.await {
            Ok(last) => last,
            Err(e) => {
                let mut sub = sub;
                let _ = sub.unsubscribe().await;
                return Err(e);
            }
        };
        let cancel = CancellationToken::new();
        let task = tokio::spawn(inner.clone().run_subscription(
            channel.to_string(),
            sub,
            cancel.clone(),
            stream,
            last,
        ));
        let mut subs = inner.subs.lock();
        subs.insert(channel.to_string(), LiveSub { cancel, task });
        metrics::gauge!("groupcast_nats_subscriptions").set(subs.len() as f64);
        Ok(())
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), BrokerError> {
        let live = {
            let mut subs = self.inner.subs.lock();
            let live = subs.remove(channel);
            metrics::gauge!("groupcast_nats_subscriptions").set(subs.len() as f64);
            live
        };
        if let Some(live) = live {
            live.cancel.cancel();
            // Wait for the task: no delivery of this channel may overlap a
            // later subscription's.
            let _ = live.task.await;
        }
        Ok(())
    }

    async fn publish(
        &self,
        channel: &str,
        publication: Publication,
        opts: &PublishOptions,
    ) -> Result<StreamPosition, BrokerError> {
        let payload = envelope::encode_pub(&publication);
        let headers = published_at_headers(publication.published_at_us);
        if opts.history_size == 0 || opts.history_ttl.is_zero() {
            return counted(
                self.inner
                    .publish_live(channel, payload, Some(headers))
                    .await,
            )
            .map(|()| StreamPosition::default());
        }
        counted(
            self.inner
                .publish_stored(channel, payload, headers, opts)
                .await,
        )
    }

    async fn publish_join(&self, channel: &str, info: Arc<ClientInfo>) -> Result<(), BrokerError> {
        counted(
            self.inner
                .publish_live(channel, envelope::encode_join(&info), None)
                .await,
        )
    }

    async fn publish_leave(&self, channel: &str, info: Arc<ClientInfo>) -> Result<(), BrokerError> {
        counted(
            self.inner
                .publish_live(channel, envelope::encode_leave(&info), None)
                .await,
        )
    }

    async fn history(
        &self,
        channel: &str,
        query: HistoryQuery,
    ) -> Result<HistoryResult, BrokerError> {
        let inner = &self.inner;
        let Some(stream) = inner.stream(namespace_of(channel)).await? else {
            return Ok(HistoryResult::default());
        };
        if let Some(since) = &query.since {
            if !since.epoch_matches(&stream.epoch) {
                return Err(BrokerError::UnrecoverablePosition);
            }
        }
        let subject = inner.subjects.history(channel);
        let top = inner.last_offset(&stream, &subject).await?;
        let position = StreamPosition {
            offset: top,
            epoch: stream.epoch.clone(),
        };
        let since = query.since.as_ref().map(|s| s.offset);
        let mut result = HistoryResult {
            publications: Vec::new(),
            position,
            complete: false,
        };
        if let (Some(s), false, None) = (since, query.reverse, query.limit) {
            if s >= top {
                result.complete = s == top;
                return Ok(result);
            }
        }
        if query.limit == Some(0) {
            return Ok(result);
        }
        let limit = query.limit.unwrap_or(usize::MAX);
        let pubs = match (query.reverse, since) {
            (false, Some(after)) => {
                let (pubs, complete) = inner.read_after(&stream, &subject, after, top).await?;
                result.complete = complete && query.limit.is_none();
                pubs
            }
            (true, Some(before)) => {
                let to = before.saturating_sub(1).min(top);
                inner.read_range(&stream, &subject, 1, to).await?
            }
            (_, None) => inner.read_range(&stream, &subject, 1, top).await?,
        };
        let pubs = pubs.into_iter().map(Arc::new);
        result.publications = if query.reverse {
            pubs.rev().take(limit).collect()
        } else {
            pubs.take(limit).collect()
        };
        Ok(result)
    }

    async fn remove_history(&self, channel: &str) -> Result<(), BrokerError> {
        let inner = &self.inner;
        let Some(stream) = inner.stream(namespace_of(channel)).await? else {
            return Ok(());
        };
        let s = inner
            .js
            .get_stream(&stream.name)
            .await
            .map_err(|e| BrokerError::Unavailable(format!("JetStream: {e}")))?;
        s.purge()
            .filter(inner.subjects.history(channel))
            .await
            .map_err(|e| BrokerError::Unavailable(format!("JetStream purge: {e}")))?;
        Ok(())
    }

    fn health(&self) -> Result<(), String> {
        if self.inner.connected.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err("NATS backbone disconnected".into())
        }
    }

    fn backbone(&self) -> Option<BackboneStatus> {
        let inner = &self.inner;
        // The INFO the server sent on the (last) connect: no I/O.
        let info = inner.client.server_info();
        let gaps = self.gap_stats();
        Some(BackboneStatus {
            kind: "NATS".into(),
            connected: inner.connected.load(Ordering::SeqCst),
            urls: inner.urls.clone(),
            server_address: if info.host.is_empty() {
                String::new()
            } else {
                format!("{}:{}", info.host, info.port)
            },
            server_name: info.server_name,
            server_version: info.version,
            cluster: info.cluster,
            jetstream: info.jetstream,
            history_streams: inner.specs.len() as u64,
            subscriptions: inner.subs.lock().len() as u64,
            gaps_repaired: gaps.repaired,
            gaps_insufficient: gaps.insufficient,
        })
    }
}
