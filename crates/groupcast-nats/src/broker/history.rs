//! Stored publications: a history publish waits for JetStream's
//! acknowledgement (its stream sequence is the publication's **offset**);
//! reads use the stream's direct get, in batches, by channel subject. The
//! live path reads here too, to repair gaps.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::context::{PublishAckFuture, PublishError, PublishErrorKind};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::StreamExt;
use groupcast_core::broker::{
    BrokerError, HistoryQuery, HistoryResult, PendingPublish, PublishOptions,
};
use groupcast_core::{Publication, StreamPosition};
use serde::Deserialize;

use super::streams::StreamState;
use super::{header_u64, unavailable, Inner};
use crate::envelope::{self, Envelope};
use crate::signing::{count_rejected, Domain};
use crate::subjects::{encode_token, namespace_of};

/// Messages asked for per batched direct-get request.
pub(super) const READ_BATCH: usize = 256;

/// A history read answered by a replica behind the leader is read again
/// this many times, this long apart (see `Inner::read_range`).
const STALE_READ_RETRIES: u32 = 10;
const STALE_READ_PAUSE: Duration = Duration::from_millis(20);

/// Pause before sending a history publish again after "no responders"
/// (see `Inner::publish_stored`).
const NO_RESPONDERS_RETRY: Duration = Duration::from_millis(100);

impl Inner {
    /// Offset of the newest stored publication of `subject` (0: none).
    pub(super) async fn last_offset(
        &self,
        stream: &StreamState,
        subject: &str,
    ) -> Result<u64, BrokerError> {
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
    ///
    /// A direct get may be answered by a replica that has not yet stored the
    /// newest messages (the stream's leader acknowledged them). `reach`:
    /// an offset of `subject` known to be stored (its newest, from the
    /// leader, or the live message being repaired up to); a read that ends
    /// before it came from such a replica, and is read again from where it
    /// stopped, a few times, then fails (`Unavailable`) rather than
    /// answering with a hole.
    pub(super) async fn read_range(
        &self,
        stream: &StreamState,
        subject: &str,
        from: u64,
        to: u64,
        reach: Option<u64>,
    ) -> Result<Vec<Publication>, BrokerError> {
        let mut out = Vec::new();
        let mut next = from.max(1);
        let mut seen = 0u64;
        let mut behind = 0u32;
        // Read on to `reach` (not kept when past `to`) to see it is there.
        let until = reach.map_or(to, |r| r.max(to));
        let api = format!("$JS.API.DIRECT.GET.{}", stream.name);
        // Stored publications are checked again as they are read back: one
        // published on the stream's subject by a NATS client that is not an
        // edge is skipped (its offset stays unused).
        let channel = self.subjects.channel_of(subject).unwrap_or_default();
        // A channel holds at most `history_size` publications: bound the
        // loop by that (plus one batch of slack for concurrent publishes).
        let max = stream.spec.history_size + self.read_batch;
        'read: loop {
            while next <= until && out.len() < max {
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
                    seen = seen.max(seq);
                    if seq > to {
                        done = true;
                        continue;
                    }
                    if let Err(why) = self.signer.check(
                        msg.headers.as_ref(),
                        Domain::Channel,
                        &channel,
                        &msg.payload,
                    ) {
                        count_rejected(why, Domain::Channel);
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
            match reach {
                Some(r) if seen < r && out.len() < max => {
                    behind += 1;
                    if behind > STALE_READ_RETRIES {
                        metrics::counter!("groupcast_nats_stale_reads_total", "outcome" => "gave_up")
                        .increment(1);
                        return Err(BrokerError::Unavailable(format!(
                            "JetStream replica behind: {subject} read up to {seen}, {r} is stored"
                        )));
                    }
                    metrics::counter!("groupcast_nats_stale_reads_total", "outcome" => "read_again")
                    .increment(1);
                    tokio::time::sleep(STALE_READ_PAUSE).await;
                    continue 'read;
                }
                _ => break 'read,
            }
        }
        Ok(out)
    }

    /// Read the publications after offset `after` up to `to` and say whether
    /// they are provably all of them: the stored publication at `after` is
    /// still there (trimming is oldest first), or `after` is 0 and nothing
    /// was ever trimmed from this channel as far as the count shows.
    pub(super) async fn read_after(
        &self,
        stream: &StreamState,
        subject: &str,
        after: u64,
        to: u64,
        reach: Option<u64>,
    ) -> Result<(Vec<Publication>, bool), BrokerError> {
        let mut pubs = self.read_range(stream, subject, after, to, reach).await?;
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

    /// Store in JetStream: send now, and answer (the returned future) once
    /// the acknowledgement comes; its sequence is the offset. The stream
    /// republishes it to the live subject. Sends of one caller, each begun
    /// after the previous one returned, reach JetStream in that order (one
    /// NATS connection), which stores them in that order.
    ///
    /// Fails at once while NATS is not connected. Otherwise bounded by
    /// `nats.request_timeout` in all (counted from the send), within which it
    /// rides out "no responders" while JetStream elects a new leader for the
    /// stream (nobody received the message, so sending it again cannot store
    /// it twice). The answer is the position, or `Unavailable` (108) once the
    /// bound is reached. A publication sent again that way goes out after
    /// whatever the caller sent meanwhile: during such an election, a
    /// connection's publications that were in flight together may be stored
    /// out of order (see `docs/failover.md`).
    pub(super) async fn publish_stored(
        self: &Arc<Self>,
        channel: &str,
        payload: Bytes,
        mut headers: HeaderMap,
        opts: &PublishOptions,
    ) -> Result<PendingPublish, BrokerError> {
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        if let Some(key) = &opts.idempotency_key {
            // JetStream deduplicates per stream (namespace): scope the key
            // to the channel.
            let id = format!("{}:{}", encode_token(channel), encode_token(key));
            headers.insert("Nats-Msg-Id", id.as_str());
        }
        let (stream, sent) = self.send_stored(channel, &headers, &payload).await?;
        let this = self.clone();
        let channel = channel.to_string();
        Ok(Box::pin(async move {
            this.await_stored(channel, payload, headers, deadline, stream, sent)
                .await
        }))
    }

    /// One send of a history publication: the stream it goes to and the
    /// acknowledgement to wait for.
    async fn send_stored(
        &self,
        channel: &str,
        headers: &HeaderMap,
        payload: &Bytes,
    ) -> Result<(Arc<StreamState>, Result<PublishAckFuture, PublishError>), BrokerError> {
        self.check_connected()?;
        let ns = namespace_of(channel);
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
        Ok((stream, sent))
    }

    /// Wait for the acknowledgement of a send; after "no responders" send
    /// again until `deadline` (see [`Self::publish_stored`]).
    async fn await_stored(
        &self,
        channel: String,
        payload: Bytes,
        headers: HeaderMap,
        deadline: tokio::time::Instant,
        mut stream: Arc<StreamState>,
        mut sent: Result<PublishAckFuture, PublishError>,
    ) -> Result<StreamPosition, BrokerError> {
        let ns = namespace_of(&channel);
        // Set once JetStream answered "no responders": if the bound is then reached another
        // way (the last attempt's ack outlived it), the stream may be gone all the same.
        let mut no_responders = false;
        loop {
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
            if matches!(e.kind(), PublishErrorKind::Other) {
                // JetStream answered and refused to store it: e.g. its
                // store is full ("insufficient resources", 10023). Such a
                // refusal lasts until an operator acts: say so, at most
                // once per `REFUSED_LOG_EVERY` (every one is counted).
                refused_warning(&channel, &e);
            }
            if !matches!(e.kind(), PublishErrorKind::StreamNotFound) {
                if no_responders {
                    self.forget_stream(ns);
                }
                return Err(unavailable(e));
            }
            no_responders = true;
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
            (stream, sent) = self.send_stored(&channel, &headers, &payload).await?;
        }
    }

    /// [`Broker::history`](groupcast_core::Broker::history): the stored
    /// publications `query` asks for, read with batched direct gets.
    pub(super) async fn history(
        &self,
        channel: &str,
        query: HistoryQuery,
    ) -> Result<HistoryResult, BrokerError> {
        let Some(stream) = self.stream(namespace_of(channel)).await? else {
            return Ok(HistoryResult::default());
        };
        if let Some(since) = &query.since {
            if !since.epoch_matches(&stream.epoch) {
                return Err(BrokerError::UnrecoverablePosition);
            }
        }
        let subject = self.subjects.history(channel);
        let top = self.last_offset(&stream, &subject).await?;
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
                let (pubs, complete) = self
                    .read_after(&stream, &subject, after, top, Some(top))
                    .await?;
                result.complete = complete && query.limit.is_none();
                pubs
            }
            (true, Some(before)) => {
                let to = before.saturating_sub(1).min(top);
                self.read_range(&stream, &subject, 1, to, None).await?
            }
            (_, None) => {
                self.read_range(&stream, &subject, 1, top, Some(top))
                    .await?
            }
        };
        let pubs = pubs.into_iter().map(Arc::new);
        result.publications = if query.reverse {
            pubs.rev().take(limit).collect()
        } else {
            pubs.take(limit).collect()
        };
        Ok(result)
    }

    /// [`Broker::remove_history`](groupcast_core::Broker::remove_history):
    /// purge one channel's subject from its stream.
    pub(super) async fn remove_history(&self, channel: &str) -> Result<(), BrokerError> {
        let Some(stream) = self.stream(namespace_of(channel)).await? else {
            return Ok(());
        };
        let s = self
            .js
            .get_stream(&stream.name)
            .await
            .map_err(|e| BrokerError::Unavailable(format!("JetStream: {e}")))?;
        s.purge()
            .filter(self.subjects.history(channel))
            .await
            .map_err(|e| BrokerError::Unavailable(format!("JetStream purge: {e}")))?;
        Ok(())
    }
}

/// How often at most [`refused_warning`] logs.
const REFUSED_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Logs (as a warning, at most once per [`REFUSED_LOG_EVERY`] per process)
/// that JetStream refused to store a publication, with its reason; the
/// caller answers 108 and `groupcast_nats_publish_errors_total` counts it.
fn refused_warning(channel: &str, e: &PublishError) {
    static LAST: parking_lot::Mutex<Option<std::time::Instant>> = parking_lot::Mutex::new(None);
    let now = std::time::Instant::now();
    let mut last = LAST.lock();
    if last.is_some_and(|t| now.duration_since(t) < REFUSED_LOG_EVERY) {
        return;
    }
    *last = Some(now);
    tracing::warn!(
        channel,
        error = %e,
        "JetStream refused to store a publication (e.g. its store is full); answered 108"
    );
}
