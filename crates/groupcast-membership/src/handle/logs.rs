//! The tasks that follow the leader's bounded logs: edge removals (the
//! leaves of dead edges' presence entries, for the leave handler) and
//! cluster events (occupancy and online changes, for the event handler).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use groupcast_core::membership::{ClusterEvent, ClusterEventKind};

use super::Shared;
use crate::transport::{Reply, Request};
use crate::types::{EventKind, Query, QueryResult};

/// Polls the leader for one of its bounded logs (edge removals, cluster
/// events) every `removal_poll`: from this handle's first answer on (what
/// came before is not this edge's to announce), each answer with the mark
/// it was asked after.
struct LogPoll {
    s: Arc<Shared>,
    tick: tokio::time::Interval,
    /// None until the first answer.
    seen: Option<u64>,
}

impl LogPoll {
    fn new(s: Arc<Shared>) -> LogPoll {
        let mut tick = tokio::time::interval(s.cfg.removal_poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        LogPoll {
            s,
            tick,
            seen: None,
        }
    }

    /// The next answer to `query(after)`, with `after`; `None` once the
    /// handle stopped.
    async fn next(&mut self, query: fn(u64) -> Query) -> Option<(u64, QueryResult)> {
        let s = self.s.clone();
        loop {
            tokio::select! {
                _ = s.cancel.cancelled() => return None,
                _ = self.tick.tick() => {}
            }
            if !s.available.load(Ordering::Relaxed) {
                continue;
            }
            let req = Request::Query(query(self.seen.unwrap_or(u64::MAX)));
            let reply = tokio::select! {
                _ = s.cancel.cancelled() => return None,
                r = s.conn.call(&req, s.cfg.request_timeout) => r,
            };
            let Ok(Reply::Query(answer)) = reply else {
                continue;
            };
            let latest = match &answer {
                QueryResult::Removals { latest, .. } | QueryResult::Events { latest, .. } => {
                    *latest
                }
                _ => continue,
            };
            let Some(after) = self.seen else {
                self.seen = Some(latest);
                continue;
            };
            return Some((after, answer));
        }
    }

    /// The entries up to `latest` are handled. `latest` can be below
    /// `after` when a new leader's state is behind the old one's by a few
    /// entries: the higher mark is kept.
    fn done(&mut self, after: u64, latest: u64) {
        self.seen = Some(after.max(latest));
    }
}

/// Hands the entries of removed edges (other than this one) to the leave
/// handler, each once, in removal order, then the edge's name to the
/// removal handler.
pub(super) async fn removal_loop(s: Arc<Shared>) {
    let mut poll = LogPoll::new(s.clone());
    while let Some((after, answer)) = poll.next(|after| Query::Removals { after }).await {
        let QueryResult::Removals {
            latest,
            removals,
            complete,
        } = answer
        else {
            continue;
        };
        if !complete {
            tracing::warn!(
                after,
                latest,
                "membership: some edge removals were missed; their leaves are not announced here"
            );
            metrics::counter!("groupcast_membership_client_removals_missed_total").increment(1);
        }
        // The leader answers only removals after `after`.
        for r in &removals {
            if r.edge == s.edge.name {
                continue;
            }
            tracing::info!(edge = %r.edge, entries = r.leaves.len(), "edge removed; announcing its leaves");
            if let Some(h) = s.leave_handler.get() {
                for l in &r.leaves {
                    h(&l.channel, l.presence.to_client_info());
                }
            }
            if let Some(h) = s.removal_handler.get() {
                h(&r.edge);
            }
        }
        poll.done(after, latest);
    }
}

/// Hands this edge's share of the cluster events to the event handler,
/// each once, in commit order: the events its own changes caused, and,
/// when it is the live edge with the smallest name, those of edges that
/// are no longer registered (a dead edge's channels vacated, its users
/// offline). Polls every `removal_poll` once a handler is set.
pub(super) async fn events_loop(s: Arc<Shared>) {
    tokio::select! {
        _ = s.cancel.cancelled() => return,
        _ = s.events_wanted.notified() => {}
    }
    let mut poll = LogPoll::new(s.clone());
    while let Some((after, answer)) = poll.next(|after| Query::Events { after }).await {
        let QueryResult::Events {
            latest,
            events,
            complete,
        } = answer
        else {
            continue;
        };
        if !complete {
            tracing::warn!(after, latest, "membership: some cluster events were missed");
            metrics::counter!("groupcast_membership_client_events_missed_total").increment(1);
        }
        // Other edges' events: announced here only when their edge is gone
        // and this is the first live edge by name.
        let mut live: Option<Vec<String>> = None;
        if events.iter().any(|e| e.edge != s.edge.name) {
            let req = Request::Query(Query::Edges);
            if let Ok(Reply::Query(QueryResult::Edges(edges))) =
                s.conn.call(&req, s.cfg.request_timeout).await
            {
                live = Some(edges.into_iter().map(|e| e.edge.name).collect());
            } else {
                // Ask again next time, from the same point.
                continue;
            }
        }
        let first_live = live
            .as_ref()
            .and_then(|l| l.iter().min().cloned())
            .unwrap_or_default();
        for e in &events {
            let mine = e.edge == s.edge.name
                || (first_live == s.edge.name
                    && live.as_ref().is_some_and(|l| !l.contains(&e.edge)));
            if !mine {
                continue;
            }
            let kind = match e.kind {
                EventKind::Occupied => ClusterEventKind::ChannelOccupied,
                EventKind::Vacated => ClusterEventKind::ChannelVacated,
                EventKind::Online => ClusterEventKind::UserOnline,
                EventKind::Offline => ClusterEventKind::UserOffline,
            };
            let event = ClusterEvent {
                kind,
                name: e.name.clone(),
                seq: e.seq,
            };
            if let Some(h) = s.event_handler.get() {
                h(event);
            }
        }
        poll.done(after, latest);
    }
}
