//! The backbone fence: an edge that has lost NATS for longer than
//! `nats.fence_after` no longer receives publications, so it stops holding
//! clients that would silently miss them. It closes every client connection
//! with 3016 (`backbone unavailable`, reconnect) and refuses new ones with
//! HTTP 503 (a load balancer tries the next edge) until NATS is back; the
//! clients reconnect elsewhere and recover from history. `/readyz` answers
//! 503 from the moment NATS is lost (`Node::backbone_health`).
//!
//! NATS is "lost" when the connection is down, including a link that went
//! silent: the client pings every `nats.ping_interval` and gives the
//! connection up after three unanswered pings (docs/failover.md).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use groupcast_proto::DisconnectCode;
use tokio::time::Instant;

use crate::state::EdgeState;

/// How often the backbone's state is looked at.
const CHECK_EVERY: Duration = Duration::from_millis(200);

/// Watches the backbone until the edge shuts down; fences the edge while NATS
/// is lost past `nats.fence_after`. Does nothing on the in-process backbone
/// (`groupcast dev`) or with `fence_after = 0s`.
pub async fn watch(state: Arc<EdgeState>) {
    let after = state.config.nats.fence_after;
    if after.is_zero() || state.node.backbone().is_none() {
        return;
    }
    metrics::gauge!("groupcast_backbone_fenced").set(0.0);
    let mut lost_since: Option<Instant> = None;
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match state.node.backbone_health() {
            Ok(()) => {
                lost_since = None;
                if state.fenced.swap(false, Ordering::AcqRel) {
                    metrics::gauge!("groupcast_backbone_fenced").set(0.0);
                    tracing::info!("NATS is back: accepting clients again");
                }
            }
            Err(why) => {
                let since = *lost_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= after {
                    fence(&state, &why);
                }
            }
        }
    }
}

/// Closes every client connection with 3016; the first call of an outage
/// counts it and says so. Connections admitted while the outage was not yet
/// past `fence_after` are closed on the next check.
fn fence(state: &EdgeState, why: &str) {
    if !state.fenced.swap(true, Ordering::AcqRel) {
        metrics::counter!("groupcast_backbone_fences_total").increment(1);
        metrics::gauge!("groupcast_backbone_fenced").set(1.0);
        tracing::warn!(
            connections = state.num_connections(),
            why,
            "NATS lost for longer than nats.fence_after: closing every client connection (3016) \
             and refusing new ones until it is back"
        );
    }
    for conn in state.open_connections() {
        if !conn.is_closed() {
            conn.close(DisconnectCode::BACKBONE_UNAVAILABLE);
        }
    }
}
