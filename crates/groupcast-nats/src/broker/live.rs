//! Live fan-out on core NATS: one subscription per channel with local
//! subscribers, each delivered by its own task in arrival (= stored) order.
//! History channels carry their offset in `Nats-Sequence` and the previous
//! one in `Nats-Last-Sequence`: a jump is a gap, repaired from JetStream
//! before delivering (or the subscribers are told to recover), and after a
//! reconnect each history channel compares with its stream's top.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::StreamExt;
use groupcast_core::broker::BrokerError;
use tokio_util::sync::CancellationToken;

use super::streams::StreamState;
use super::{header_u64, unavailable, Inner};
use crate::envelope::{self, Envelope};
use crate::signing::{count_rejected, Domain};
use crate::subjects::namespace_of;

/// A channel's subscription: its delivery task and how to stop it.
pub(super) struct LiveSub {
    pub(super) cancel: CancellationToken,
    pub(super) task: tokio::task::JoinHandle<()>,
}

/// When a publication was accepted (microseconds since the Unix epoch), for
/// the delivery-latency metric. A header, not part of the envelope, so
/// edges that do not know it still read the message.
const PUBLISHED_AT_HEADER: &str = "Groupcast-Published-Us";

/// The headers a publication travels with: when it was accepted, if known.
pub(super) fn published_at_headers(published_at_us: u64) -> HeaderMap {
    let mut h = HeaderMap::new();
    if published_at_us > 0 {
        h.insert(PUBLISHED_AT_HEADER, published_at_us.to_string().as_str());
    }
    h
}

impl Inner {
    /// [`Broker::subscribe`](groupcast_core::Broker::subscribe): subscribe
    /// to the channel's live subject and start its delivery task, which
    /// begins after the stream's current top (history channels).
    pub(super) async fn subscribe(self: &Arc<Self>, channel: &str) -> Result<(), BrokerError> {
        if self.subs.lock().contains_key(channel) {
            return Ok(());
        }
        self.check_connected()?;
        let stream = self.stream(namespace_of(channel)).await?;
        let sub = self
            .client
            .subscribe(self.subjects.live(channel))
            .await
            .map_err(|e| BrokerError::Unavailable(format!("NATS subscribe: {e}")))?;
        // The server has the interest once the flush returns: everything
        // stored after this point reaches the subscription.
        let ready = async {
            self.client.flush().await.map_err(unavailable)?;
            match &stream {
                Some(s) => self
                    .last_offset(s, &self.subjects.history(channel))
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
        let task = tokio::spawn(self.clone().run_subscription(
            channel.to_string(),
            sub,
            cancel.clone(),
            stream,
            last,
        ));
        let mut subs = self.subs.lock();
        subs.insert(channel.to_string(), LiveSub { cancel, task });
        metrics::gauge!("groupcast_nats_subscriptions").set(subs.len() as f64);
        Ok(())
    }

    /// [`Broker::unsubscribe`](groupcast_core::Broker::unsubscribe): end
    /// the channel's delivery task and wait for it.
    pub(super) async fn unsubscribe(&self, channel: &str) -> Result<(), BrokerError> {
        let live = {
            let mut subs = self.subs.lock();
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

    /// Core NATS publish on the live subject (at-most-once).
    pub(super) async fn publish_live(
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

    fn deliver(&self, channel: &str, env: Envelope) {
        let Some(h) = self.handler() else { return };
        match env {
            Envelope::Pub(p) => h.on_publication(channel, Arc::new(p)),
            Envelope::Join(i) => h.on_join(channel, i),
            Envelope::Leave(i) => h.on_leave(channel, i),
        }
    }

    /// Deliver the stored publications after `last` up to `to`, or tell
    /// subscribers to recover. `stored`: an offset of the channel known to
    /// be stored (the live message being repaired up to, or the stream's
    /// top after a reconnect): a read that ends before it came from a
    /// replica behind the leader.
    async fn repair(&self, channel: &str, stream: &StreamState, last: u64, to: u64, stored: u64) {
        let subject = self.subjects.history(channel);
        match self
            .read_after(stream, &subject, last, to, Some(stored))
            .await
        {
            Ok((pubs, true)) => {
                self.gaps_repaired.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("groupcast_nats_gaps_total", "outcome" => "repaired")
                    .increment(1);
                tracing::debug!(
                    channel,
                    last,
                    to,
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
                tracing::warn!(channel, last, to, error = ?other.err(), "gap not repairable: subscribers must recover");
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
                                self.repair(&channel, stream, l, top, top).await;
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
            if let Err(why) = self.signer.check(
                msg.headers.as_ref(),
                Domain::Channel,
                &channel,
                &msg.payload,
            ) {
                count_rejected(why, Domain::Channel);
                tracing::debug!(
                    channel,
                    reason = why.reason(),
                    "dropping a message not signed by this cluster"
                );
                continue;
            }
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
                            self.repair(&channel, stream, l, seq - 1, seq).await;
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
