//! The handle an edge uses to talk to the membership service.
//!
//! * Deltas (subscriber counts, connections, presence joins and leaves) are
//!   queued and sent in batches: a batch leaves at most `flush_interval`
//!   (20 ms) after its first delta, or at once when `batch_max` deltas wait.
//!   One batch is in flight at a time, so batches commit in order.
//! * Each batch carries the edge's next sequence number and is retried with
//!   the same number until the leader answers, so a retried batch is applied
//!   once.
//! * The lease is renewed every `renew_every` (1 s); the service removes the
//!   edge when no renewal arrived for `lease_ttl` (5 s).
//! * Requests go to the leader; `NotLeader` answers are followed, dead
//!   replicas are skipped.
//! * Reads (presence, counts, users, nodes) are linearizable reads on the
//!   leader; when no leader answers within 500 ms (an election) or the
//!   service counts as unavailable, they are answered from the replicas'
//!   own applied state (the freshest of a majority of them, each answering
//!   only while it heard from a leader within its `stale_read_max`): see
//!   `docs/failover.md` for the staleness bound.
//! * Degradation: when no replica answers within `request_timeout` the
//!   handle reports itself unavailable ([`MembershipClient::is_available`]).
//!   Presence queries then fail with [`MembershipError::Unavailable`] (the
//!   protocol's 108 "not available") unless a replica still answers from
//!   its own state; joins and leaves return at once, and deltas are kept — up to
//!   `buffer_max`; past that the queue is dropped and the edge's whole state
//!   (which the handle always knows) is resent instead. When the service is
//!   back the queue is replayed, and after a lease expiry the edge
//!   registers again and resends its whole state.
//!
//! * Leaves of dead edges: every `removal_poll` (250 ms) the handle asks the
//!   leader for edge removals it has not seen yet and hands each presence
//!   entry of another edge to the leave handler (the edge pushes `leave` to
//!   its local subscribers), once; then the removed edge's name goes to
//!   the removal handler (the edge tells that edge its lease expired:
//!   `docs/failover.md`, "An edge cut off from the membership service").
//!
//! Dropping every clone stops the handle without deregistering, exactly
//! like a crashed edge; call [`MembershipClient::close`] to leave.
//!
//! # Layout
//!
//! * `config`: [`MembershipClientConfig`] and [`MembershipClientError`].
//! * `conn`: [`Conn`], requests to the leader whichever replica that is.
//! * `replicas`: every replica's own status ([`Conn::replicas`]).
//! * `queue`: the delta queue and the edge's own view (what a resync sends).
//! * `flush`: the task that sends the queue in batches, registers and
//!   resyncs.
//! * `lease`: the task that renews the lease.
//! * `logs`: the tasks that follow the leader's removal and event logs.
//! * `membership`: the [`groupcast_core::Membership`] implementation.
//!
//! This file holds the handle itself: its shared state, start, close and
//! queries.

mod config;
mod conn;
mod flush;
mod lease;
mod logs;
mod membership;
mod queue;
mod replicas;

pub use config::{MembershipClientConfig, MembershipClientError};
pub use conn::Conn;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use groupcast_core::membership::{EventHandler, LeaveHandler, MembershipError, RemovalHandler};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::transport::{Reply, Request};
use crate::types::{Command, EdgeId, EdgeInfo, Query, QueryResult, RemoveReason};
use queue::Queue;

/// How long a read waits for the leader before it asks the replicas' own
/// state (at most `request_timeout`).
const LEADER_READ_WAIT: Duration = Duration::from_millis(500);

/// How long a read from the replicas' own state waits for answers.
const LOCAL_READ_WAIT: Duration = Duration::from_millis(500);

/// What the handle's clones and its background tasks share.
struct Shared {
    edge: EdgeId,
    cfg: MembershipClientConfig,
    conn: Conn,
    queue: Mutex<Queue>,
    wake: Notify,
    available: AtomicBool,
    cancel: CancellationToken,
    /// Last batch sequence number used (only the flush task sends).
    seq: AtomicU64,
    /// Where leaves of other edges' removed entries go.
    leave_handler: OnceLock<LeaveHandler>,
    /// Where the names of other removed edges go (after their leaves).
    removal_handler: OnceLock<RemovalHandler>,
    /// Where this edge's share of the cluster events goes.
    event_handler: OnceLock<EventHandler>,
    /// Set with the event handler: the events loop starts watching.
    events_wanted: Notify,
    /// When this handle started (Unix seconds), for `info`'s uptime.
    started_unix: u64,
}

/// The edge's membership handle. Cheap to clone.
#[derive(Clone)]
pub struct MembershipClient {
    shared: Arc<Shared>,
    _guard: Arc<DropGuard>,
}

struct DropGuard(CancellationToken);

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

impl MembershipClient {
    /// Starts the handle: registers the edge, then flushes and renews in the
    /// background. Returns at once; [`Self::wait_available`] waits for the
    /// first successful registration.
    pub async fn start(
        cfg: MembershipClientConfig,
    ) -> Result<MembershipClient, MembershipClientError> {
        cfg.validate()?;
        let conn = Conn::connect(cfg.seeds.clone(), &cfg.tls).await?;
        let edge = EdgeId {
            name: cfg.edge_name.clone(),
            incarnation: rand::random(),
        };
        let cancel = CancellationToken::new();
        let shared = Arc::new(Shared {
            edge,
            cfg,
            conn,
            queue: Mutex::new(Queue {
                register: true,
                ..Default::default()
            }),
            wake: Notify::new(),
            available: AtomicBool::new(false),
            cancel: cancel.clone(),
            seq: AtomicU64::new(0),
            leave_handler: OnceLock::new(),
            removal_handler: OnceLock::new(),
            event_handler: OnceLock::new(),
            events_wanted: Notify::new(),
            started_unix: unix_now(),
        });
        metrics::gauge!("groupcast_membership_client_available").set(0.0);
        tokio::spawn(flush::flush_loop(shared.clone()));
        tokio::spawn(lease::renew_loop(shared.clone()));
        tokio::spawn(logs::removal_loop(shared.clone()));
        tokio::spawn(logs::events_loop(shared.clone()));
        shared.wake.notify_one();
        Ok(MembershipClient {
            shared,
            _guard: Arc::new(DropGuard(cancel)),
        })
    }

    pub fn edge(&self) -> &EdgeId {
        &self.shared.edge
    }

    /// False while the service is unreachable (see the module docs).
    pub fn is_available(&self) -> bool {
        self.shared.available.load(Ordering::Relaxed)
    }

    /// Waits until the edge is registered and the service answers.
    pub async fn wait_available(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.is_available() && !self.shared.queue.lock().register {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Deltas waiting to be sent.
    pub fn pending(&self) -> usize {
        self.shared.queue.lock().deltas.len()
    }

    /// A linearizable read from the leader; when no leader answers within
    /// [`LEADER_READ_WAIT`] (an election, a dead or cut-off leader), or the
    /// service counts as unavailable, a read from the replicas' own state
    /// ([`Conn::local_query`]; its staleness bound is in
    /// `docs/failover.md`). Fails only when no replica answers either.
    async fn query(&self, q: Query) -> Result<QueryResult, MembershipError> {
        let s = &self.shared;
        if self.is_available() {
            let wait = s.cfg.request_timeout.min(LEADER_READ_WAIT);
            match s.conn.call(&Request::Query(q.clone()), wait).await {
                Ok(Reply::Query(r)) => return Ok(r),
                Ok(other) => tracing::debug!(reply = ?other, "leader read refused"),
                Err(e) => tracing::debug!(error = %e, "no leader answered a read"),
            }
        }
        match s.conn.local_query(&q, LOCAL_READ_WAIT).await {
            Ok(r) => {
                metrics::counter!("groupcast_membership_client_local_reads_total").increment(1);
                Ok(r)
            }
            Err(e) => {
                // No replica answered: as good a sign as a failed renewal
                // (the next renewal that succeeds marks it available again).
                s.set_available(false);
                Err(MembershipError::Unavailable(e.to_string()))
            }
        }
    }

    /// Registered edges.
    pub async fn edges(&self) -> Result<Vec<EdgeInfo>, MembershipError> {
        match self.query(Query::Edges).await? {
            QueryResult::Edges(e) => Ok(e),
            other => Err(MembershipError::Unavailable(format!("{other:?}"))),
        }
    }

    /// Leaves the cluster: the service drops this edge's entries (leaves are
    /// emitted) and the handle stops.
    pub async fn close(self) -> Result<(), MembershipClientError> {
        let s = &self.shared;
        s.cancel.cancel();
        let cmd = Command::Remove {
            edge: s.edge.clone(),
            reason: RemoveReason::Left,
        };
        s.conn
            .call(&Request::Write(cmd), s.cfg.request_timeout)
            .await
            .map(|_| ())
    }
}

impl Shared {
    fn set_available(&self, up: bool) {
        if self.available.swap(up, Ordering::Relaxed) != up {
            if up {
                tracing::info!("membership service reachable");
            } else {
                tracing::warn!("membership service unreachable; deltas are kept");
            }
            metrics::gauge!("groupcast_membership_client_available").set(if up {
                1.0
            } else {
                0.0
            });
        }
    }
}

/// Seconds since the Unix epoch (edges' start times, for `info`'s uptime).
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// An edge incarnation as the API's node `uid`.
fn uid(incarnation: u64) -> String {
    format!("{incarnation:016x}")
}

/// Milliseconds since the Unix epoch (users' last-seen times).
fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
