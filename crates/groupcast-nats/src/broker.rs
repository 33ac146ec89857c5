//! [`NatsBroker`]: the Broker contract over core NATS and JetStream.
//!
//! One cloneable handle over one NATS connection plays three roles: the
//! [`Broker`] (channels: live fan-out, history), the [`NodeBus`](groupcast_core::NodeBus)
//! (requests between nodes) and the [`BackendBus`](groupcast_core::BackendBus)
//! (relay targets and backend commands). This file holds the shared state
//! ([`Inner`]) and the [`Broker`] implementation, which hands each call to
//! the submodule of its concern:
//!
//! * [`connection`]: connecting (options, credentials, TLS, events) and the
//!   streams made at start.
//! * [`streams`]: one JetStream stream per history namespace, created or
//!   updated on first use; its creation time is the epoch.
//! * [`history`]: storing a publication (offset = stream sequence) and
//!   reading stored ones back (history queries, gap repair).
//! * [`live`]: channel subscriptions on core NATS, delivery in offset order
//!   and gap repair.
//! * [`node_bus`], [`backend_bus`]: the other two roles, plain core NATS
//!   requests and subscriptions.
//! * [`quorum`]: the quorum probe, a JetStream heartbeat that tells an
//!   edge its server was cut from the NATS cluster.

mod backend_bus;
mod connection;
mod history;
mod live;
mod node_bus;
mod quorum;
mod streams;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::jetstream;
use async_nats::{Client, HeaderMap};
use async_trait::async_trait;
use groupcast_core::broker::{
    answered, BackboneStatus, Broker, BrokerError, BrokerHandler, HistoryQuery, HistoryResult,
    PendingPublish, PublishOptions,
};
use groupcast_core::{Publication, StreamPosition};
use groupcast_proto::client::ClientInfo;
use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;

use crate::envelope;
use crate::signing::{Domain, Signer};
use crate::subjects::Subjects;
use live::{published_at_headers, LiveSub};
use streams::StreamState;

pub use streams::StreamSpec;

/// What every clone of a [`NatsBroker`] shares: the connection, the history
/// streams made so far, the channel subscriptions and the gap counters.
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
    /// Signs what this edge publishes to the others and checks what it
    /// receives (`nats.cluster_secret`).
    signer: Signer,
    /// The quorum probe (`nats.quorum_lost_after`); `None` when off or
    /// without history namespaces.
    quorum: Option<quorum::Probe>,
    /// Where this edge's heartbeats are stored.
    heartbeat_subject: String,
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
fn counted<T>(r: Result<T, BrokerError>) -> Result<T, BrokerError> {
    if r.is_err() {
        metrics::counter!("groupcast_nats_publish_errors_total").increment(1);
    }
    r
}

/// A numeric NATS header (`Nats-Sequence`, ...); `None` when absent or not
/// a number.
fn header_u64(h: Option<&HeaderMap>, name: &str) -> Option<u64> {
    h?.get(name)?.as_str().parse().ok()
}

impl NatsBroker {
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

impl Inner {
    fn handler(&self) -> Option<&Arc<dyn BrokerHandler>> {
        self.handler.get()
    }

    fn check_connected(&self) -> Result<(), BrokerError> {
        if self.connected.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(unavailable("NATS is not connected"))
        }
    }
}

#[async_trait]
impl Broker for NatsBroker {
    fn set_handler(&self, handler: Arc<dyn BrokerHandler>) {
        let _ = self.inner.handler.set(handler);
    }

    async fn subscribe(&self, channel: &str) -> Result<(), BrokerError> {
        self.inner.subscribe(channel).await
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), BrokerError> {
        self.inner.unsubscribe(channel).await
    }

    async fn publish(
        &self,
        channel: &str,
        publication: Publication,
        opts: &PublishOptions,
    ) -> Result<StreamPosition, BrokerError> {
        match self.publish_begin(channel, publication, opts).await {
            Ok(pending) => pending.await,
            Err(e) => Err(e),
        }
    }

    /// Sends now; a history publication's answer waits for JetStream's
    /// acknowledgement (see `Inner::publish_stored`). Publications begun one
    /// after another go out in that order on the one NATS connection, so
    /// JetStream stores them in that order.
    async fn publish_begin(
        &self,
        channel: &str,
        publication: Publication,
        opts: &PublishOptions,
    ) -> Result<PendingPublish, BrokerError> {
        let payload = envelope::encode_pub(&publication);
        // NATS refuses a message over its server's max_payload: say so (106 to the client),
        // not "unavailable".
        let max = self.inner.client.server_info().max_payload;
        if max > 0 && payload.len() > max {
            metrics::counter!("groupcast_nats_publish_too_large_total").increment(1);
            return Err(BrokerError::TooLarge(format!(
                "{} bytes over the NATS server's max_payload of {max}",
                payload.len()
            )));
        }
        let mut headers = published_at_headers(publication.published_at_us);
        self.inner
            .signer
            .sign(&mut headers, Domain::Channel, channel, &payload);
        if opts.history_size == 0 || opts.history_ttl.is_zero() {
            return counted(
                self.inner
                    .publish_live(channel, payload, Some(headers))
                    .await,
            )
            .map(|()| answered(Ok(StreamPosition::default())));
        }
        let pending = counted(
            self.inner
                .publish_stored(channel, payload, headers, opts)
                .await,
        )?;
        Ok(Box::pin(async move { counted(pending.await) }))
    }

    async fn publish_join(&self, channel: &str, info: Arc<ClientInfo>) -> Result<(), BrokerError> {
        let payload = envelope::encode_join(&info);
        let headers = self
            .inner
            .signer
            .headers(Domain::Channel, channel, &payload);
        counted(self.inner.publish_live(channel, payload, headers).await)
    }

    async fn publish_leave(&self, channel: &str, info: Arc<ClientInfo>) -> Result<(), BrokerError> {
        let payload = envelope::encode_leave(&info);
        let headers = self
            .inner
            .signer
            .headers(Domain::Channel, channel, &payload);
        counted(self.inner.publish_live(channel, payload, headers).await)
    }

    async fn history(
        &self,
        channel: &str,
        query: HistoryQuery,
    ) -> Result<HistoryResult, BrokerError> {
        self.inner.history(channel, query).await
    }

    async fn remove_history(&self, channel: &str) -> Result<(), BrokerError> {
        self.inner.remove_history(channel).await
    }

    fn health(&self) -> Result<(), String> {
        if !self.inner.connected.load(Ordering::SeqCst) {
            return Err("NATS backbone disconnected".into());
        }
        if let Some(lost) = self.inner.quorum.as_ref().and_then(|q| q.lost_for()) {
            return Err(format!(
                "JetStream has committed nothing through this NATS server for {} s \
                 (nats.quorum_lost_after): cut from its cluster?",
                lost.as_secs()
            ));
        }
        Ok(())
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
