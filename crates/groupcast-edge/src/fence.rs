//! Fences: an edge that can no longer serve its clients properly stops
//! holding them. It closes every client connection with a reconnect code
//! and refuses new ones with HTTP 503 (a load balancer tries the next edge)
//! until the cause is gone; the clients reconnect elsewhere. Two causes:
//!
//! * **Backbone** (NATS): an edge that has lost NATS for longer than
//!   `nats.fence_after` no longer receives publications; its clients are
//!   closed with 3016 (`backbone unavailable`) and recover from history on
//!   another edge. `/readyz` answers 503 from the moment NATS is lost
//!   (`Node::backbone_health`). NATS is "lost" when the connection is down,
//!   including a link that went silent: the client pings every
//!   `nats.ping_interval` and gives the connection up after three
//!   unanswered pings (docs/failover.md). Also "lost": a server whose
//!   connection answers but through which JetStream has committed nothing
//!   for `nats.quorum_lost_after` (cut from its NATS cluster; the quorum
//!   probe of `groupcast-nats`).
//! * **Membership lease**: another edge saw the membership service remove
//!   this edge with presence entries (its lease expired) and told it over
//!   the node bus ([`lease_expired`]), while this edge cannot reach the
//!   service itself: its clients are no longer in presence and cannot be
//!   put back until the service answers again, so they are closed with
//!   3017 (`membership lease lost`) and enter presence again on another
//!   edge. Lifted as soon as the service answers (the edge registers
//!   again and resends its entries). An edge that reaches the service
//!   registers again by itself and is not fenced; when the whole service
//!   is down no lease expires, nobody is told, and nothing is fenced
//!   (presence answers 108, pub/sub goes on).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use groupcast_proto::DisconnectCode;
use tokio::time::Instant;

use crate::state::EdgeState;

/// How often the backbone's and the membership service's state is looked
/// at.
const CHECK_EVERY: Duration = Duration::from_millis(200);

/// Watches the backbone until the edge shuts down; fences the edge while NATS
/// is lost past `nats.fence_after` (not with `fence_after = 0s`), and lifts
/// the lease fence once the membership service answers. Does nothing on the
/// in-process backbone (`groupcast dev`).
pub async fn watch(state: Arc<EdgeState>) {
    if state.node.backbone().is_none() {
        return;
    }
    let after = state.config.nats.fence_after;
    metrics::gauge!("groupcast_backbone_fenced").set(0.0);
    metrics::gauge!("groupcast_membership_lease_fenced").set(0.0);
    let mut lost_since: Option<Instant> = None;
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if state.node.membership_available() && lift(&state.lease_fenced) {
            metrics::gauge!("groupcast_membership_lease_fenced").set(0.0);
            tracing::info!("membership service reachable again: accepting clients again");
        }
        if after.is_zero() {
            continue;
        }
        match state.node.backbone_health() {
            Ok(()) => {
                lost_since = None;
                if lift(&state.fenced) {
                    metrics::gauge!("groupcast_backbone_fenced").set(0.0);
                    tracing::info!("NATS is back: accepting clients again");
                }
            }
            Err(why) => {
                let since = *lost_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= after {
                    if raise(&state.fenced) {
                        metrics::counter!("groupcast_backbone_fences_total").increment(1);
                        metrics::gauge!("groupcast_backbone_fenced").set(1.0);
                        tracing::warn!(
                            connections = state.num_connections(),
                            why,
                            "NATS lost for longer than nats.fence_after: closing every client \
                             connection (3016) and refusing new ones until it is back"
                        );
                    }
                    close_all(&state, DisconnectCode::BACKBONE_UNAVAILABLE);
                }
            }
        }
    }
}

/// Another edge saw the membership service remove this edge with presence
/// entries (its lease expired). Fences the edge when it cannot reach the
/// service itself (and `membership.lease_fence` is on): closes every client
/// with 3017; [`watch`] lifts the fence once the service answers.
pub fn lease_expired(state: &EdgeState) {
    if state.node.membership_available() {
        // It reaches the service: its next renewal finds the lease gone,
        // and it registers again and resends every entry.
        tracing::info!("another edge saw this edge's lease expire; the service answers here, so it registers again");
        return;
    }
    if !state.config.membership.lease_fence {
        tracing::warn!(
            connections = state.num_connections(),
            "the membership service expired this edge's lease: its clients are missing from \
             presence until the service answers again (membership.lease_fence is off)"
        );
        return;
    }
    if raise(&state.lease_fenced) {
        metrics::counter!("groupcast_membership_lease_fences_total").increment(1);
        metrics::gauge!("groupcast_membership_lease_fenced").set(1.0);
        tracing::warn!(
            connections = state.num_connections(),
            "the membership service expired this edge's lease and does not answer here: closing \
             every client connection (3017) and refusing new ones until it answers"
        );
    }
    close_all(state, DisconnectCode::LEASE_LOST);
}

/// Sets a fence flag; true when it was not set (the start of an outage).
fn raise(flag: &AtomicBool) -> bool {
    !flag.swap(true, Ordering::AcqRel)
}

/// Clears a fence flag; true when it was set.
fn lift(flag: &AtomicBool) -> bool {
    flag.load(Ordering::Acquire) && flag.swap(false, Ordering::AcqRel)
}

/// Closes every open client connection with `code`. Connections admitted
/// just before the fence was raised are closed by the next call.
fn close_all(state: &EdgeState, code: DisconnectCode) {
    for conn in state.open_connections() {
        if !conn.is_closed() {
            conn.close(code);
        }
    }
}
