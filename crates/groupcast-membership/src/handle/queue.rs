//! The delta queue: deltas wait here (with their callers, when they wait
//! for the commit) until the flush task sends them, bounded by
//! `buffer_max`; beside it the edge's own view, always current, which a
//! resync sends instead of the queue.

use std::collections::{BTreeMap, HashMap, VecDeque};

use groupcast_core::membership::MembershipError;
use tokio::sync::oneshot;

use super::MembershipClient;
use crate::types::Delta;

pub(super) type Waiter = oneshot::Sender<Result<(), MembershipError>>;

/// The edge's own state, always current: what a resync sends.
#[derive(Default)]
pub(super) struct LocalView {
    subscribers: HashMap<String, i64>,
    pub(super) connections: HashMap<String, i64>,
    pub(super) presence: BTreeMap<(String, String), Delta>,
}

impl LocalView {
    pub(super) fn apply(&mut self, d: &Delta) {
        let bump = |m: &mut HashMap<String, i64>, k: &str, delta: i64| {
            let v = m.entry(k.to_string()).or_insert(0);
            *v = (*v + delta).max(0);
            if *v == 0 {
                m.remove(k);
            }
        };
        match d {
            Delta::Subscribers { channel, delta } => bump(&mut self.subscribers, channel, *delta),
            Delta::Connections { user, delta } => bump(&mut self.connections, user, *delta),
            Delta::Join {
                channel, presence, ..
            } => {
                self.presence
                    .insert((channel.clone(), presence.client.clone()), d.clone());
            }
            Delta::Leave { channel, client } => {
                self.presence.remove(&(channel.clone(), client.clone()));
            }
            // A moment, not state: a resync does not resend it.
            Delta::Seen { .. } | Delta::ResyncDone => {}
        }
    }

    pub(super) fn deltas(&self) -> Vec<Delta> {
        let mut out: Vec<Delta> = self
            .subscribers
            .iter()
            .map(|(c, n)| Delta::Subscribers {
                channel: c.clone(),
                delta: *n,
            })
            .collect();
        out.extend(self.connections.iter().map(|(u, n)| Delta::Connections {
            user: u.clone(),
            delta: *n,
        }));
        out.extend(self.presence.values().cloned());
        out
    }
}

#[derive(Default)]
pub(super) struct Queue {
    pub(super) deltas: VecDeque<(Delta, Option<Waiter>)>,
    pub(super) local: LocalView,
    /// Register (again) before the next batch.
    pub(super) register: bool,
    /// Send the whole local view (reset) before the queue.
    pub(super) resync: bool,
}

impl MembershipClient {
    /// Queues a delta; with `wait`, returns a receiver answered once it is
    /// committed (none while the service is unavailable: the delta is kept).
    pub(super) fn enqueue(
        &self,
        delta: Delta,
        wait: bool,
    ) -> Option<oneshot::Receiver<Result<(), MembershipError>>> {
        let s = &self.shared;
        let (tx, rx) = if wait && self.is_available() {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let mut q = s.queue.lock();
        q.local.apply(&delta);
        if q.deltas.len() >= s.cfg.buffer_max {
            // Past the bound: forget the queue, resend the whole state.
            for (_, w) in q.deltas.drain(..) {
                if let Some(w) = w {
                    let _ = w.send(Ok(()));
                }
            }
            q.resync = true;
            metrics::counter!("groupcast_membership_client_overflows_total").increment(1);
        } else if !q.resync {
            q.deltas.push_back((delta, tx));
        } else if let Some(tx) = tx {
            // A resync is pending and will carry this delta.
            let _ = tx.send(Ok(()));
        }
        if q.deltas.len() >= s.cfg.batch_max || q.deltas.len() == 1 || q.resync {
            s.wake.notify_one();
        }
        rx
    }

    /// Queues a delta and waits until it is committed (or returns at once
    /// when the service is unavailable, the delta kept).
    pub(super) async fn push(&self, delta: Delta) -> Result<(), MembershipError> {
        match self.enqueue(delta, true) {
            Some(rx) => match tokio::time::timeout(self.shared.cfg.request_timeout, rx).await {
                Ok(Ok(r)) => r,
                // Not committed in time: the delta stays queued.
                _ => Ok(()),
            },
            None => {
                // Returning at once would let a caller that loops on us
                // never yield, starving this handle's own renewals (issue
                // 10: every edge lost its lease after a failover).
                tokio::task::yield_now().await;
                Ok(())
            }
        }
    }
}
