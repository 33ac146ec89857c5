//! The control plane: what acts on connections and the cluster from
//! outside a session.
//!
//! * [`api`]: the server HTTP API (and the same API over NATS).
//! * [`action`]: API actions on connections by user or client id.
//! * [`forward`]: requests between edges (actions held elsewhere,
//!   dashboard reports, `info`).
//! * [`events`]: leaves of dead edges, cluster events (webhooks, user
//!   status publications).
//! * [`dashboard`]: the operator dashboard and its cache.
//!
//! [`start`] wires them to the node: the membership service's handlers,
//! the API over NATS, and the answers to other edges' requests. Sessions
//! never import this floor; it reaches them through the registry's
//! control inboxes ([`crate::conn::Control`]).

pub mod action;
pub mod api;
pub mod dashboard;
pub mod events;
pub mod forward;

use std::sync::Arc;

use bytes::Bytes;
use groupcast_proto::api::ApiError;

use crate::state::EdgeState;
use action::{ApiFailure, ConnAction};
use forward::Ack;

/// Wire this edge into the cluster: the membership service's handlers,
/// the API over NATS, and (on a bus) the answering of other edges'
/// requests.
pub async fn start(state: &Arc<EdgeState>) -> Result<(), String> {
    events::start(state);
    if let (true, Some(backends)) = (state.config.api.over_nats, state.node.backend_bus()) {
        let weak = Arc::downgrade(state);
        let own = backends
            .serve_commands(
                &state.config.name,
                Arc::new(move |payload: Bytes| {
                    let state = weak.upgrade();
                    Box::pin(async move {
                        match state {
                            Some(state) => api::over_nats(&state, &payload).await,
                            None => Bytes::new(),
                        }
                    })
                }),
            )
            .await
            .map_err(|e| format!("cannot serve backend commands: {e}"))?;
        let _ = state.backend_commands.set(own);
    }
    let (Some(bus), Some((me, _))) = (state.node.bus(), state.node.local_node()) else {
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

/// Carries out a forwarded action on this edge's connections, answers a
/// dashboard report (`Some`: the answer to send as it is), or takes the
/// notice that the membership service expired this edge's lease.
fn answer(state: &EdgeState, payload: &[u8]) -> Result<Option<Bytes>, ApiError> {
    let f =
        serde_json::from_slice::<forward::Forwarded>(payload).map_err(|_| ApiError::BAD_REQUEST)?;
    if f.method == forward::LEASE_EXPIRED {
        crate::fence::lease_expired(state);
        return Ok(None);
    }
    if f.method == forward::REPORT {
        let report = dashboard::report(state);
        return serde_json::to_vec(&report)
            .map(|b| Some(Bytes::from(b)))
            .map_err(|_| ApiError::INTERNAL);
    }
    match ConnAction::parse(state, &f.method, f.body) {
        Ok(action) => {
            action.apply_local(state);
            Ok(None)
        }
        Err(ApiFailure::Api(e)) => Err(e),
        Err(ApiFailure::BadBody) => Err(ApiError::BAD_REQUEST),
    }
}
