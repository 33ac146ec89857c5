//! The edge's part in the cluster, beyond pub/sub over the broker:
//!
//! * **API actions on connections held elsewhere.** `disconnect`,
//!   `subscribe`, `unsubscribe` and `refresh` by user (or by client id) act
//!   on this edge's connections, then on every other edge that holds the
//!   user (the membership service knows which; a client id alone is asked of
//!   every live edge unless it is here). Each edge answers on its own
//!   subject of the [`NodeBus`]; the API call answers once all of them have
//!   acknowledged, or 108 "not available" when one did not within
//!   [`ACK_TIMEOUT`] (the actions can be repeated safely).
//! * **Leaves of dead edges.** When an edge dies its lease expires and the
//!   membership service drops its presence entries; this edge is told about
//!   each and pushes `leave` to its local subscribers of that channel (when
//!   the namespace has `join_leave`).
//! * **Backend commands over NATS** (`api.over_nats`): the server API on
//!   `{nats.prefix}.api` (one edge of the queue group takes each) and on
//!   this edge's own `{nats.prefix}.api.{name}` ([`crate::backend`]).
//! * **Cluster events** (when a webhook wants `channel_occupied` or
//!   `channel_vacated`, or `client.user_status_channel` is set): the
//!   membership service tells exactly one edge of each channel occupied or
//!   vacated, each user online or offline, and that edge sends the webhook
//!   or publishes the status ([`announce`]).
//! * **`info`**: every live edge with its counts.
//! * **Dashboard reports.** The dashboard asks every other live edge, on the
//!   same subject, for its own report ([`crate::dashboard`]), within
//!   [`crate::dashboard::PART_TIMEOUT`].
//!
//! [`NodeBus`]: groupcast_core::NodeBus

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use groupcast_core::{BrokerHandler, ClusterEvent, ClusterEventKind};
use groupcast_proto::api::{self, ApiError};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::api::{ConnAction, Failure, Target};
use crate::metrics::Metrics;
use crate::state::EdgeState;

/// How long an API call waits for the other edges to acknowledge.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(3);

/// An API action forwarded to another edge.
#[derive(Serialize, Deserialize)]
struct Forwarded {
    method: String,
    body: Value,
}

/// The `method` of a forwarded request that asks for the edge's dashboard
/// report instead of an action.
const REPORT: &str = "dashboard";

/// Its acknowledgement: done, or the API error code it refused it with.
#[derive(Serialize, Deserialize)]
struct Ack {
    #[serde(default)]
    error: Option<u32>,
}

/// Wire this edge into the cluster: the leave handler, and (on a bus) the
/// answering of other edges' requests.
pub async fn start(state: &Arc<EdgeState>) -> Result<(), String> {
    let weak = Arc::downgrade(state);
    state
        .node
        .membership
        .set_leave_handler(Arc::new(move |channel: &str, info| {
            let Some(state) = weak.upgrade() else { return };
            let Ok((_, opts)) = state.channel(channel) else {
                return;
            };
            if opts.join_leave {
                Metrics::get().dead_node_leaves.increment(1);
                state.node.hub.on_leave(channel, Arc::new(info));
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
        state
            .node
            .membership
            .set_event_handler(Arc::new(move |event| {
                if let Some(state) = weak.upgrade() {
                    announce(&state, event, &tx);
                }
            }));
    }
    if let (true, Some(backends)) = (state.config.api.over_nats, state.node.backend_bus()) {
        let weak = Arc::downgrade(state);
        let own = backends
            .serve_commands(
                &state.config.name,
                Arc::new(move |payload: Bytes| {
                    let state = weak.upgrade();
                    Box::pin(async move {
                        match state {
                            Some(state) => crate::api::over_nats(&state, &payload).await,
                            None => Bytes::new(),
                        }
                    })
                }),
            )
            .await
            .map_err(|e| format!("cannot serve backend commands: {e}"))?;
        let _ = state.backend_commands.set(own);
    }
    let (Some(bus), Some((me, _))) = (state.node.bus(), state.node.membership.local_node()) else {
        return Ok(());
    };
    let weak = Arc::downgrade(state);
    bus.serve(
        &me,
        Arc::new(move |payload: Bytes| {
            let state = weak.upgrade();
            Box::pin(async move {
                let error = match state {
                    Some(state) => match answer(&state, &payload) {
                        Ok(Some(report)) => return report,
                        Ok(None) => None,
                        Err(e) => Some(e),
                    },
                    None => Some(ApiError::NOT_AVAILABLE),
                };
                let ack = Ack {
                    error: error.map(|e| e.code),
                };
                Bytes::from(serde_json::to_vec(&ack).unwrap_or_default())
            })
        }),
    )
    .await
    .map_err(|e| format!("cannot serve this node's subject: {e}"))
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
        let last_seen = match state
            .node
            .membership
            .user_status(std::slice::from_ref(&user))
            .await
        {
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
        if let Err(e) = crate::api::publish_status(&state, &channel, payload).await {
            tracing::warn!(%channel, %user, error = ?e, "user status not published");
        }
    }
}

/// Carries out a forwarded action on this edge's connections, or answers
/// a dashboard report (`Some`: the answer to send as it is).
fn answer(state: &EdgeState, payload: &[u8]) -> Result<Option<Bytes>, ApiError> {
    let f = serde_json::from_slice::<Forwarded>(payload).map_err(|_| ApiError::BAD_REQUEST)?;
    if f.method == REPORT {
        let report = crate::dashboard::report(state);
        return serde_json::to_vec(&report)
            .map(|b| Some(Bytes::from(b)))
            .map_err(|_| ApiError::INTERNAL);
    }
    match ConnAction::parse(state, &f.method, f.body) {
        Ok(action) => {
            action.apply_local(state);
            Ok(None)
        }
        Err(Failure::Api(e)) => Err(e),
        Err(Failure::BadBody) => Err(ApiError::BAD_REQUEST),
    }
}

/// Forwards an action already carried out here to the other edges holding
/// its target; `found_here`: connections it matched on this edge.
pub(crate) async fn fan_out(
    state: &EdgeState,
    method: &str,
    body: Value,
    target: Target<'_>,
    found_here: usize,
) -> Result<(), Failure> {
    let node = &state.node;
    let (Some(bus), Some((me, _))) = (node.bus(), node.membership.local_node()) else {
        return Ok(());
    };
    let unavailable = |_| Failure::Api(ApiError::NOT_AVAILABLE);
    let nodes: Vec<String> = if !target.user.is_empty() {
        node.membership
            .user_nodes(target.user)
            .await
            .map_err(unavailable)?
    } else if !target.client.is_empty() && found_here > 0 {
        // A client id lives on one edge: this one. (No user and no client:
        // every connection, so every edge.)
        return Ok(());
    } else {
        node.membership
            .nodes()
            .await
            .map_err(unavailable)?
            .into_iter()
            .map(|n| n.name)
            .collect()
    };
    let payload = Bytes::from(
        serde_json::to_vec(&Forwarded {
            method: method.to_string(),
            body,
        })
        .map_err(|_| Failure::Api(ApiError::INTERNAL))?,
    );
    let others: Vec<&String> = nodes.iter().filter(|n| **n != me).collect();
    let answers = join_all(
        others
            .iter()
            .map(|n| bus.request(n, payload.clone(), ACK_TIMEOUT)),
    )
    .await;
    for (name, answer) in others.into_iter().zip(answers) {
        let error = match answer {
            // Gone: so are its connections.
            Ok(None) => continue,
            Ok(Some(bytes)) => match serde_json::from_slice::<Ack>(&bytes) {
                Ok(Ack { error: None }) => continue,
                Ok(Ack { error: Some(code) }) => format!("refused with {code}"),
                Err(e) => format!("unreadable acknowledgement: {e}"),
            },
            Err(e) => {
                tracing::warn!(node = %name, error = %e, method, "another edge did not acknowledge an API action");
                Metrics::get().forward_failures.increment(1);
                return Err(Failure::Api(ApiError::NOT_AVAILABLE));
            }
        };
        // Every edge checks the action alike; a refusal means the edges'
        // configurations differ (e.g. a namespace missing on one).
        tracing::error!(node = %name, method, %error, "another edge refused a forwarded API action");
        return Err(Failure::Api(ApiError::INTERNAL));
    }
    Ok(())
}

/// This edge with its exact counts.
pub(crate) fn this_node(state: &EdgeState) -> api::NodeInfo {
    let hub = &state.node.hub;
    api::NodeInfo {
        uid: state.uid.clone(),
        name: state.config.name.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        num_clients: state.registry.num_clients() as u32,
        num_users: state.registry.num_users() as u32,
        num_channels: hub.num_channels() as u32,
        num_subs: hub.channels().iter().map(|(_, n)| *n as u32).sum(),
        uptime: state.started.elapsed().as_secs() as u32,
    }
}

/// Asks each of `nodes` (other edges, by name) for its dashboard report,
/// in parallel, each within `timeout`: its answer (JSON), or why there is
/// none. Empty on a single node (no bus).
pub(crate) async fn reports(
    state: &EdgeState,
    nodes: &[String],
    timeout: Duration,
) -> Vec<Result<Bytes, String>> {
    let Some(bus) = state.node.bus() else {
        return nodes.iter().map(|_| Err("no node bus".into())).collect();
    };
    let payload = Bytes::from(
        serde_json::to_vec(&Forwarded {
            method: REPORT.into(),
            body: Value::Null,
        })
        .unwrap_or_default(),
    );
    join_all(
        nodes
            .iter()
            .map(|n| bus.request(n, payload.clone(), timeout)),
    )
    .await
    .into_iter()
    .map(|answer| match answer {
        Ok(Some(bytes)) => Ok(bytes),
        Ok(None) => Err("gone (nothing answers on its subject)".into()),
        Err(e) => Err(e.to_string()),
    })
    .collect()
}

/// `info`: this edge with its exact counts, then every other live edge as
/// the membership service counts it (this edge alone when the service is
/// unreachable).
pub(crate) async fn nodes(state: &EdgeState) -> Result<Vec<api::NodeInfo>, ApiError> {
    let mut nodes = vec![this_node(state)];
    let m = &state.node.membership;
    let Some((me, _)) = m.local_node() else {
        return Ok(nodes);
    };
    match m.nodes().await {
        Ok(others) => nodes.extend(others.into_iter().filter(|n| n.name != me)),
        Err(e) => tracing::debug!(error = %e, "info: membership unavailable; this edge only"),
    }
    Ok(nodes)
}
