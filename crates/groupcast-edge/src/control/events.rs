//! What the membership service tells this edge:
//!
//! * **Leaves of dead edges.** When an edge dies its lease expires and the
//!   membership service drops its presence entries; this edge is told about
//!   each and pushes `leave` to its local subscribers of that channel (when
//!   the namespace has `join_leave`), then tells the removed edge, which
//!   may only be cut off from the service (`crate::fence`).
//! * **Cluster events** (when a webhook wants `channel_occupied` or
//!   `channel_vacated`, or `client.user_status_channel` is set): the
//!   membership service tells exactly one edge of each channel occupied or
//!   vacated, each user online or offline, and that edge sends the webhook
//!   or publishes the status ([`announce`]). User statuses wait in
//!   [`Statuses`]: at most [`STATUS_QUEUE`] users, one place each.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use groupcast_core::{ClusterEvent, ClusterEventKind, Payload, Publication, PublishOptions};
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::metrics::Metrics;
use crate::state::EdgeState;

/// Sets the membership service's handlers: leaves of dead edges, and this
/// edge's share of the cluster events when something wants them.
pub(super) fn start(state: &Arc<EdgeState>) {
    let weak = Arc::downgrade(state);
    state
        .node
        .set_leave_handler(Arc::new(move |channel: &str, info| {
            let Some(state) = weak.upgrade() else { return };
            let Ok((_, opts)) = state.channel(channel) else {
                return;
            };
            if opts.join_leave {
                Metrics::get().dead_node_leaves.increment(1);
                state.node.push_leave_locally(channel, Arc::new(info));
            }
        }));
    // Then it tells that edge its lease expired: cut off from the service,
    // it cannot learn it otherwise (`crate::fence::lease_expired`).
    let weak = Arc::downgrade(state);
    state.node.set_removal_handler(Arc::new(move |edge: &str| {
        if let Some(state) = weak.upgrade() {
            super::forward::tell_lease_expired(&state, edge);
        }
    }));
    let status_channel = !state.config.client.user_status_channel.is_empty();
    if status_channel
        || state.webhooks.wants("channel_occupied")
        || state.webhooks.wants("channel_vacated")
    {
        // User statuses are published by one task, in the order the
        // service gave them (bounded: beyond, dropped and counted).
        let statuses = Arc::new(Statuses::default());
        if status_channel {
            tokio::spawn(publish_statuses(Arc::downgrade(state), statuses.clone()));
        }
        let tx = StatusSender(statuses);
        let weak = Arc::downgrade(state);
        state.node.set_event_handler(Arc::new(move |event| {
            if let Some(state) = weak.upgrade() {
                announce(&state, event, &tx);
            }
        }));
    }
}

/// Users whose status change waits to be published.
const STATUS_QUEUE: usize = 10_000;

/// User status changes waiting to be published, in the order they came,
/// one place per user: a newer change of a user whose change still waits
/// replaces it (subscribers keep the highest `seq` per user anyway), so
/// one user coming and going cannot fill the queue. Bounded by
/// [`STATUS_QUEUE`] users; beyond, a change is dropped and counted.
#[derive(Default)]
struct Statuses {
    waiting: Mutex<Waiting>,
    notify: Notify,
}

#[derive(Default)]
struct Waiting {
    order: VecDeque<String>,
    latest: HashMap<String, (&'static str, u64)>,
    closed: bool,
}

impl Statuses {
    /// Queue `user`'s change; false when dropped (the queue is full).
    fn offer(&self, user: String, status: &'static str, seq: u64) -> bool {
        let mut w = self.waiting.lock();
        if let Some(slot) = w.latest.get_mut(&user) {
            if seq >= slot.1 {
                *slot = (status, seq);
            }
            return true;
        }
        if w.order.len() >= STATUS_QUEUE {
            return false;
        }
        w.order.push_back(user.clone());
        w.latest.insert(user, (status, seq));
        drop(w);
        self.notify.notify_one();
        true
    }

    /// The next change, waiting for one; `None` once the sender is gone
    /// and nothing waits.
    async fn next(&self) -> Option<(String, &'static str, u64)> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut w = self.waiting.lock();
                if let Some(user) = w.order.pop_front() {
                    let (status, seq) = w.latest.remove(&user).unwrap_or(("", 0));
                    return Some((user, status, seq));
                }
                if w.closed {
                    return None;
                }
            }
            notified.await;
        }
    }
}

/// The event handler's end of [`Statuses`]: dropping it ends the
/// publishing task once the queue is empty.
struct StatusSender(Arc<Statuses>);

impl Drop for StatusSender {
    fn drop(&mut self) {
        self.0.waiting.lock().closed = true;
        self.0.notify.notify_one();
    }
}

/// One cluster event this edge is to announce: a webhook for channels, a
/// publication on `client.user_status_channel` for users (queued for
/// [`publish_statuses`]). Never waits.
fn announce(state: &Arc<EdgeState>, event: ClusterEvent, statuses: &StatusSender) {
    let (webhook, status) = match event.kind {
        ClusterEventKind::ChannelOccupied => ("channel_occupied", ""),
        ClusterEventKind::ChannelVacated => ("channel_vacated", ""),
        ClusterEventKind::UserOnline => ("", "online"),
        ClusterEventKind::UserOffline => ("", "offline"),
    };
    if !webhook.is_empty() {
        let fields = serde_json::json!({ "channel": event.name, "seq": event.seq });
        state.webhooks.emit(webhook, fields);
    } else if !state.config.client.user_status_channel.is_empty()
        && !statuses.0.offer(event.name, status, event.seq)
    {
        metrics::counter!("groupcast_user_status_dropped_total").increment(1);
    }
}

/// Publishes user status changes on `client.user_status_channel`, one at
/// a time, in order.
async fn publish_statuses(state: std::sync::Weak<EdgeState>, statuses: Arc<Statuses>) {
    while let Some((user, kind, seq)) = statuses.next().await {
        let Some(state) = state.upgrade() else { return };
        let channel = state.config.client.user_status_channel.clone();
        let last_seen = match state.node.user_status(std::slice::from_ref(&user)).await {
            Ok(s) => s.first().map(|s| s.last_seen_ms / 1000).unwrap_or(0),
            Err(_) => 0,
        };
        let data = serde_json::json!({
            "type": "user_status",
            "user": user,
            "status": kind,
            "last_seen": last_seen,
            "seq": seq,
        });
        let Some(payload) = serde_json::value::to_raw_value(&data)
            .ok()
            .and_then(|r| groupcast_core::Payload::json(std::sync::Arc::from(r)))
        else {
            continue;
        };
        if let Err(e) = publish_status(&state, &channel, payload).await {
            tracing::warn!(%channel, %user, error = ?e, "user status not published");
        }
    }
}

/// A user status publication: stored as the channel's namespace says.
async fn publish_status(state: &EdgeState, channel: &str, data: Payload) -> Result<(), String> {
    let (ch, opts) = state.channel(channel).map_err(|e| format!("{e:?}"))?;
    if !state.check_publication_size(opts, data.len()) {
        return Err("over the channel's publication size".into());
    }
    state
        .node
        .publish(
            ch.as_str(),
            Publication::new(data),
            &PublishOptions::for_channel(opts),
        )
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_user_takes_one_place_whatever_its_changes() {
        let q = Arc::new(Statuses::default());
        let tx = StatusSender(q.clone());
        // One user coming and going: one place, its latest change.
        for seq in 1..=1000 {
            let status = if seq % 2 == 1 { "online" } else { "offline" };
            assert!(tx.0.offer("churn".into(), status, seq));
        }
        assert!(tx.0.offer("other".into(), "online", 1001));
        // An older change does not replace a newer one.
        assert!(tx.0.offer("churn".into(), "online", 999));
        assert_eq!(q.next().await, Some(("churn".into(), "offline", 1000)));
        assert_eq!(q.next().await, Some(("other".into(), "online", 1001)));
        // Taken: the user's next change queues again.
        assert!(tx.0.offer("churn".into(), "online", 1002));
        assert_eq!(q.next().await, Some(("churn".into(), "online", 1002)));
    }

    #[tokio::test]
    async fn bounded_in_users_and_ends_with_its_sender() {
        let q = Arc::new(Statuses::default());
        let tx = StatusSender(q.clone());
        for i in 0..STATUS_QUEUE {
            assert!(tx.0.offer(format!("u{i}"), "online", i as u64));
        }
        assert!(!tx.0.offer("one-too-many".into(), "online", 0), "full");
        assert!(
            tx.0.offer("u7".into(), "offline", 99_999),
            "a waiting user is updated"
        );
        drop(tx);
        let mut n = 0;
        while let Some((user, status, _)) = q.next().await {
            if user == "u7" {
                assert_eq!(status, "offline");
            }
            n += 1;
        }
        assert_eq!(n, STATUS_QUEUE, "what waited is still published");
    }
}
