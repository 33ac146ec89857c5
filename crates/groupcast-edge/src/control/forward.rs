//! Requests between edges on the node bus: API actions on connections
//! held elsewhere, dashboard reports, `info`, and the notice to an edge
//! that the membership service expired its lease ([`tell_lease_expired`]).
//!
//! `disconnect`, `subscribe`, `unsubscribe`, `refresh` and the `relay_*`
//! commands by user (or by client id) act on this edge's connections, then
//! on every other edge that holds the user (the membership service knows
//! which; a client id alone is asked of every live edge unless it is
//! here). Each edge answers on its own subject of the [`NodeBus`]; the API
//! call answers once all of them have acknowledged, or 108 "not available"
//! when one did not within [`ACK_TIMEOUT`] (the actions can be repeated
//! safely). The dashboard asks every other live edge, on the same subject,
//! for its own report ([`reports`]). The answering side is
//! [`super::start`].
//!
//! [`NodeBus`]: groupcast_core::NodeBus

use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use groupcast_proto::api::{self, ApiError};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::action::{ApiFailure, Target};
use crate::metrics::Metrics;
use crate::state::EdgeState;

/// How long an API call waits for the other edges to acknowledge.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(3);

/// An API action forwarded to another edge.
#[derive(Serialize, Deserialize)]
pub(super) struct Forwarded {
    pub method: String,
    pub body: Value,
}

/// The `method` of a forwarded request that asks for the edge's dashboard
/// report instead of an action.
pub(super) const REPORT: &str = "dashboard";

/// The `method` of a forwarded request that tells the edge the membership
/// service removed it (its lease expired): [`crate::fence::lease_expired`].
pub(super) const LEASE_EXPIRED: &str = "lease_expired";

/// Tells `edge`, which the membership service just removed with presence
/// entries, that its lease expired: an edge cut off from the service
/// cannot learn it otherwise (every live edge sends it; the receiver acts
/// once). In the background; an edge that is gone does not answer.
pub(crate) fn tell_lease_expired(state: &EdgeState, edge: &str) {
    let Some(bus) = state.node.bus().cloned() else {
        return;
    };
    let Ok(payload) = serde_json::to_vec(&Forwarded {
        method: LEASE_EXPIRED.to_string(),
        body: Value::Null,
    }) else {
        return;
    };
    let edge = edge.to_string();
    tokio::spawn(async move {
        match bus.request(&edge, Bytes::from(payload), ACK_TIMEOUT).await {
            Ok(Some(_)) => tracing::info!(%edge, "told a removed edge that its lease expired"),
            Ok(None) => tracing::debug!(%edge, "a removed edge is gone"),
            Err(e) => tracing::debug!(%edge, error = %e, "a removed edge was not told"),
        }
    });
}

/// Its acknowledgement: done, or the API error code it refused it with.
#[derive(Serialize, Deserialize)]
pub(super) struct Ack {
    #[serde(default)]
    pub error: Option<u32>,
}

/// Forwards an action already carried out here to the other edges holding
/// its target; `found_here`: connections it matched on this edge.
pub(crate) async fn fan_out(
    state: &EdgeState,
    method: &str,
    body: Value,
    target: Target<'_>,
    found_here: usize,
) -> Result<(), ApiFailure> {
    let node = &state.node;
    let (Some(bus), Some((me, _))) = (node.bus(), node.local_node()) else {
        return Ok(());
    };
    let unavailable = |_| ApiFailure::Api(ApiError::NOT_AVAILABLE);
    let nodes: Vec<String> = if !target.user.is_empty() {
        node.user_nodes(target.user).await.map_err(unavailable)?
    } else if !target.client.is_empty() && found_here > 0 {
        // A client id lives on one edge: this one. (No user and no client:
        // every connection, so every edge.)
        return Ok(());
    } else {
        node.nodes()
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
        .map_err(|_| ApiFailure::Api(ApiError::INTERNAL))?,
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
                return Err(ApiFailure::Api(ApiError::NOT_AVAILABLE));
            }
        };
        // Every edge checks the action alike; a refusal means the edges'
        // configurations differ (e.g. a namespace missing on one).
        tracing::error!(node = %name, method, %error, "another edge refused a forwarded API action");
        return Err(ApiFailure::Api(ApiError::INTERNAL));
    }
    Ok(())
}

/// This edge with its exact counts.
pub(crate) fn this_node(state: &EdgeState) -> api::NodeInfo {
    let node = &state.node;
    api::NodeInfo {
        uid: state.uid.clone(),
        name: state.config.name.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        num_clients: state.registry.num_clients() as u32,
        num_users: state.registry.num_users() as u32,
        num_channels: node.num_local_channels() as u32,
        num_subs: node.local_channels().iter().map(|(_, n)| *n as u32).sum(),
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
    let m = &state.node;
    let Some((me, _)) = m.local_node() else {
        return Ok(nodes);
    };
    match m.nodes().await {
        Ok(others) => nodes.extend(others.into_iter().filter(|n| n.name != me)),
        Err(e) => tracing::debug!(error = %e, "info: membership unavailable; this edge only"),
    }
    Ok(nodes)
}
