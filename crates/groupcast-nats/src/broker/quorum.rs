//! The quorum probe: can JetStream still commit through this edge's NATS
//! server?
//!
//! An edge whose server is cut from the rest of its NATS cluster keeps a
//! connection that answers pings, so nothing at the connection level says
//! anything is wrong, yet it receives none of what the majority side
//! stores and republishes (docs/failover.md, "A NATS server partitioned
//! from its cluster"). What such a server can no longer do is get a
//! JetStream write committed: that takes a quorum of the stream's replicas,
//! and the quorum is on the other side.
//!
//! So an edge with history namespaces stores a heartbeat every
//! `nats.ping_interval` in a small stream of its own (`<prefix>_hb`,
//! in memory, as many replicas as the most replicated history stream, one
//! message kept per edge) and waits for the acknowledgement. While none has
//! been acknowledged for `nats.quorum_lost_after`, the backbone counts as
//! lost ([`Probe::lost_for`], read by the broker's `health`): `/readyz`
//! answers 503 and, after `nats.fence_after` more, the edge fences itself
//! (3016), as when the connection itself is lost. The probe also asks the
//! NATS client to reconnect then (and again each `quorum_lost_after` while
//! it lasts): another server of the cluster, on the majority side, ends it.
//!
//! A leader election of the heartbeat stream (a server died) stops the
//! acknowledgements for a few seconds on every edge: `quorum_lost_after`
//! is chosen above that (10 s; elections took 4.3–7.4 s on this machine,
//! and NATS's Raft election timeout is 4–9 s).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_nats::jetstream::stream;
use bytes::Bytes;
use tokio::time::Instant;

use super::Inner;

/// The probe's state, shared by the probe task and `health`.
pub(super) struct Probe {
    /// When the probe started: the origin of `last_ok`.
    origin: Instant,
    /// Milliseconds after `origin` of the last acknowledged heartbeat (the
    /// start counts as one: an edge that just connected is given the
    /// benefit of the doubt).
    last_ok: AtomicU64,
    /// `nats.quorum_lost_after`.
    lost_after: Duration,
    /// The heartbeat stream was created (or found) on this connection.
    stream_ready: AtomicBool,
}

impl Probe {
    pub(super) fn new(lost_after: Duration) -> Probe {
        Probe {
            origin: Instant::now(),
            last_ok: AtomicU64::new(0),
            lost_after,
            stream_ready: AtomicBool::new(false),
        }
    }

    fn since_ok(&self) -> Duration {
        let last = Duration::from_millis(self.last_ok.load(Ordering::Acquire));
        self.origin.elapsed().saturating_sub(last)
    }

    /// How long nothing has been committed, once that is
    /// `quorum_lost_after` or more.
    pub(super) fn lost_for(&self) -> Option<Duration> {
        let since = self.since_ok();
        (since >= self.lost_after).then_some(since)
    }

    fn ok(&self) {
        let now = self.origin.elapsed().as_millis() as u64;
        self.last_ok.store(now, Ordering::Release);
    }
}

/// Runs the probe until the broker is dropped: one heartbeat per `every`,
/// each bounded by `timeout`.
pub(super) async fn run(inner: Weak<Inner>, every: Duration, timeout: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // When the client was last asked to reconnect because of it.
    let mut reconnected_at: Option<Instant> = None;
    let mut lost = false;
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let Some(probe) = inner.quorum.as_ref() else {
            return;
        };
        if !inner.connected.load(Ordering::SeqCst) {
            // The connection's own loss is reported as such.
            continue;
        }
        let committed = tokio::time::timeout(timeout, inner.heartbeat(probe)).await;
        match committed {
            Ok(Ok(())) => {
                probe.ok();
                if lost {
                    lost = false;
                    metrics::gauge!("groupcast_nats_quorum_lost").set(0.0);
                    tracing::info!("JetStream commits through this NATS server again");
                }
                reconnected_at = None;
            }
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e,
                    _ => format!("no acknowledgement within {timeout:?}"),
                };
                tracing::debug!(error = %why, "JetStream heartbeat not committed");
                let Some(for_) = probe.lost_for() else {
                    continue;
                };
                if !lost {
                    lost = true;
                    metrics::counter!("groupcast_nats_quorum_losses_total").increment(1);
                    metrics::gauge!("groupcast_nats_quorum_lost").set(1.0);
                    tracing::warn!(
                        server = %inner.client.server_info().server_name,
                        error = %why,
                        "JetStream has committed nothing through this NATS server for {:.1} s \
                         (nats.quorum_lost_after): it may be cut from its cluster; the backbone \
                         counts as lost, and the client tries another server",
                        for_.as_secs_f64()
                    );
                }
                if reconnected_at.is_none_or(|t| t.elapsed() >= probe.lost_after) {
                    reconnected_at = Some(Instant::now());
                    // The stream is looked up again on the next connection.
                    probe.stream_ready.store(false, Ordering::Release);
                    if let Err(e) = inner.client.force_reconnect().await {
                        tracing::debug!(error = %e, "NATS reconnect not started");
                    }
                }
            }
        }
    }
}

impl Inner {
    /// Store one heartbeat and wait for its acknowledgement (creating the
    /// heartbeat stream first when needed).
    async fn heartbeat(&self, probe: &Probe) -> Result<(), String> {
        if !probe.stream_ready.load(Ordering::Acquire) {
            let replicas = self.specs.values().map(|s| s.replicas).max().unwrap_or(1);
            let config = stream::Config {
                name: self.subjects.heartbeat_stream(),
                description: Some(
                    "Groupcast edges' heartbeats: JetStream commits through each edge's server"
                        .into(),
                ),
                subjects: vec![self.subjects.heartbeat_subjects()],
                max_messages_per_subject: 1,
                max_age: Duration::from_secs(60),
                num_replicas: replicas,
                storage: stream::StorageType::Memory,
                discard: stream::DiscardPolicy::Old,
                ..Default::default()
            };
            self.js
                .create_or_update_stream(config)
                .await
                .map_err(|e| format!("heartbeat stream: {e}"))?;
            probe.stream_ready.store(true, Ordering::Release);
        }
        let ack = self
            .js
            .publish(self.heartbeat_subject.clone(), Bytes::new())
            .await
            .map_err(|e| format!("heartbeat: {e}"))?;
        ack.await.map_err(|e| {
            if matches!(
                e.kind(),
                async_nats::jetstream::context::PublishErrorKind::StreamNotFound
            ) {
                probe.stream_ready.store(false, Ordering::Release);
            }
            format!("heartbeat: {e}")
        })?;
        Ok(())
    }
}

/// The probe for a broker with history namespaces (none without:
/// `lost_after` zero, or no JetStream in use).
pub(super) fn start(inner: &Arc<Inner>, every: Duration) {
    if inner.quorum.is_none() {
        return;
    }
    // An acknowledgement later than two intervals counts as missing, but
    // never sooner than 1 s after the heartbeat was sent.
    let timeout = (every * 2).max(Duration::from_secs(1));
    tokio::spawn(run(Arc::downgrade(inner), every, timeout));
}
