//! What the membership service tells this edge:
//!
//! * **Leaves of dead edges.** When an edge dies its lease expires and the
//!   membership service drops its presence entries; this edge is told about
//!   each and pushes `leave` to its local subscribers of that channel (when
//!   the namespace has `join_leave`).
//! * **Cluster events** (when a webhook wants `channel_occupied` or
//!   `channel_vacated`, or `client.user_status_channel` is set): the
//!   membership service tells exactly one edge of each channel occupied or
//!   vacated, each user online or offline, and that edge sends the webhook
//!   or publishes the status ([`announce`]).

use std::sync::Arc;

use groupcast_core::{ClusterEvent, ClusterEventKind, Payload, Publication, PublishOptions};

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
    let status_channel = !state.config.client.user_status_channel.is_empty();
    if status_channel
        || state.webhooks.wants("channel_occupied")
        || state.webhooks.wants("channel_vacated")
    {
        // User statuses are published by one task, in the order the
        // service gave them (bounded: beyond, dropped and counted).
        let (tx, rx) = tokio::sync::mpsc::channel(STATUS_QUEUE);
        if status_channel {
            tokio::spawn(publish_statuses(Arc::downgrade(state), rx));
        }
        let weak = Arc::downgrade(state);
        state.node.set_event_handler(Arc::new(move |event| {
            if let Some(state) = weak.upgrade() {
                announce(&state, event, &tx);
            }
        }));
    }
}

/// User status changes waiting to be published.
const STATUS_QUEUE: usize = 10_000;

/// One cluster event this edge is to announce: a webhook for channels, a
/// publication on `client.user_status_channel` for users (queued for
/// [`publish_statuses`]). Never waits.
fn announce(
    state: &Arc<EdgeState>,
    event: ClusterEvent,
    statuses: &tokio::sync::mpsc::Sender<(String, &'static str, u64)>,
) {
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
        && statuses.try_send((event.name, status, event.seq)).is_err()
    {
        metrics::counter!("groupcast_user_status_dropped_total").increment(1);
    }
}

/// Publishes user status changes on `client.user_status_channel`, one at
/// a time, in order.
async fn publish_statuses(
    state: std::sync::Weak<EdgeState>,
    mut rx: tokio::sync::mpsc::Receiver<(String, &'static str, u64)>,
) {
    while let Some((user, kind, seq)) = rx.recv().await {
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
