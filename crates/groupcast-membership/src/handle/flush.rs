//! The flush task: registers the edge, sends the queue in batches (one in
//! flight, each retried with its sequence number until committed) and
//! resends the edge's whole state when a resync is due; answers the
//! callers waiting for their deltas.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use groupcast_core::membership::MembershipError;

use super::queue::Waiter;
use super::Shared;
use crate::transport::{Reply, Request};
use crate::types::{Command, CommandResult, Delta};

impl Shared {
    /// Sends `cmd` until a replica commits it. The service counts as
    /// unavailable once a try outlasts `request_timeout`. None: cancelled.
    async fn commit(&self, req: &Request) -> Option<CommandResult> {
        let started = Instant::now();
        loop {
            let r = tokio::select! {
                _ = self.cancel.cancelled() => return None,
                r = self.conn.call(req, self.cfg.request_timeout) => r,
            };
            match r {
                Ok(Reply::Written(result)) => {
                    self.set_available(true);
                    return Some(result);
                }
                Ok(other) => tracing::debug!(reply = ?other, "membership write not committed"),
                Err(e) => tracing::debug!(error = %e, "membership write failed"),
            }
            if started.elapsed() >= self.cfg.request_timeout {
                self.set_available(false);
            }
            tokio::select! {
                _ = self.cancel.cancelled() => return None,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }

    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Registers this incarnation; afterwards the whole state is resent.
    async fn register(&self) -> bool {
        let cmd = Command::Register {
            edge: self.edge.clone(),
            addr: self.cfg.edge_addr.clone(),
            ttl_ms: self.cfg.lease_ttl.as_millis() as u64,
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_unix: self.started_unix,
        };
        match self.commit(&Request::Write(cmd)).await {
            Some(_) => {
                let mut q = self.queue.lock();
                q.register = false;
                q.resync = true;
                true
            }
            None => false,
        }
    }

    /// Sends one batch; resolves waiters; on `UnknownEdge` schedules a
    /// re-registration and resync. False: cancelled.
    async fn send(&self, reset: bool, items: Vec<(Delta, Option<Waiter>)>) -> bool {
        let (deltas, waiters): (Vec<Delta>, Vec<Option<Waiter>>) = items.into_iter().unzip();
        let req = Request::Write(Command::Batch {
            edge: self.edge.clone(),
            seq: self.next_seq(),
            reset,
            deltas,
        });
        let Some(result) = self.commit(&req).await else {
            return false;
        };
        let Request::Write(Command::Batch { deltas, .. }) = req else {
            unreachable!("built above")
        };
        metrics::counter!("groupcast_membership_client_deltas_total")
            .increment(deltas.len() as u64);
        match result {
            CommandResult::Batch { refused, .. } => {
                let mut waiters = waiters;
                if !refused.is_empty() {
                    let mut q = self.queue.lock();
                    for i in refused {
                        let i = i as usize;
                        if let Some(Delta::Join {
                            channel, presence, ..
                        }) = deltas.get(i)
                        {
                            q.local.apply(&Delta::Leave {
                                channel: channel.clone(),
                                client: presence.client.clone(),
                            });
                        }
                        if let Some(w) = waiters.get_mut(i).and_then(Option::take) {
                            let _ =
                                w.send(Err(MembershipError::LimitExceeded("presence_max_clients")));
                        }
                    }
                }
                for w in waiters.into_iter().flatten() {
                    let _ = w.send(Ok(()));
                }
            }
            _ => {
                // Not registered (lease expired): register again, resend all.
                let mut q = self.queue.lock();
                q.register = true;
                q.resync = true;
                for w in waiters.into_iter().flatten() {
                    let _ = w.send(Ok(()));
                }
            }
        }
        true
    }
}

impl Shared {
    /// Replaces the edge's state at the service with `state`, in batches of
    /// `batch_max` (the first resets), then answers `waiting`: a join the
    /// service refused fails with the limit, the rest succeed. False:
    /// cancelled.
    async fn resync(&self, mut state: Vec<Delta>, waiting: Vec<(Delta, Waiter)>) -> bool {
        // The service announces what the reset dropped for good only at the
        // end marker (a resync's drop-and-re-add is no change).
        state.push(Delta::ResyncDone);
        let mut chunks = state
            .chunks(self.cfg.batch_max.max(1))
            .map(<[Delta]>::to_vec);
        let first = chunks.next().unwrap_or_default();
        for (i, chunk) in std::iter::once(first).chain(chunks).enumerate() {
            let items = chunk.into_iter().map(|d| (d, None)).collect();
            if !self.send(i == 0, items).await {
                return false;
            }
        }
        let q = self.queue.lock();
        for (d, w) in waiting {
            let refused = matches!(&d, Delta::Join { channel, presence, .. }
                if !q.local.presence.contains_key(&(channel.clone(), presence.client.clone())));
            let _ = w.send(if refused {
                Err(MembershipError::LimitExceeded("presence_max_clients"))
            } else {
                Ok(())
            });
        }
        true
    }
}

pub(super) async fn flush_loop(s: Arc<Shared>) {
    loop {
        // Wait for work.
        loop {
            {
                let q = s.queue.lock();
                if q.register || q.resync || !q.deltas.is_empty() {
                    break;
                }
            }
            tokio::select! {
                _ = s.cancel.cancelled() => return,
                _ = s.wake.notified() => {}
            }
        }
        if s.queue.lock().register && !s.register().await {
            return;
        }
        // Let a batch fill: up to `flush_interval` or `batch_max` deltas.
        let deadline = tokio::time::Instant::now() + s.cfg.flush_interval;
        loop {
            {
                let q = s.queue.lock();
                if q.resync || q.register || q.deltas.len() >= s.cfg.batch_max {
                    break;
                }
            }
            tokio::select! {
                _ = s.cancel.cancelled() => return,
                _ = s.wake.notified() => {}
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        let work = {
            let mut q = s.queue.lock();
            if q.register {
                continue;
            }
            if q.resync {
                q.resync = false;
                // The local view already includes every queued delta; their
                // waiters are answered once the resync is committed.
                let waiting = q
                    .deltas
                    .drain(..)
                    .filter_map(|(d, w)| Some((d, w?)))
                    .collect();
                Work::Resync(q.local.deltas(), waiting)
            } else {
                let n = q.deltas.len().min(s.cfg.batch_max);
                Work::Batch(q.deltas.drain(..n).collect())
            }
        };
        metrics::gauge!("groupcast_membership_client_pending")
            .set(s.queue.lock().deltas.len() as f64);
        let sent = match work {
            Work::Batch(items) => s.send(false, items).await,
            Work::Resync(state, waiting) => s.resync(state, waiting).await,
        };
        if !sent {
            return;
        }
    }
}

/// What the flush task sends next.
enum Work {
    Batch(Vec<(Delta, Option<Waiter>)>),
    /// The edge's whole state, and the waiters of the queued deltas it covers.
    Resync(Vec<Delta>, Vec<(Delta, Waiter)>),
}
