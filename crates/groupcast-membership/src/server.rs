//! One membership replica (`groupcast membership`): Raft over QUIC, the
//! edge-facing API on the same endpoint, lease expiry on the leader, and an
//! HTTP listener for `/readyz`, `/status` and `/metrics`.
//!
//! Two guards openraft 0.9 lacks, both in this file (see
//! `docs/failover.md`, "A membership replica partitioned in the minority"):
//!
//! * **Check-quorum** (`step_down_loop`): a leader that has had no
//!   acknowledgement from a majority for `election_timeout_min` plus its
//!   followers' leader lease (`election_timeout_max`), the earliest moment
//!   the majority can elect another leader, steps down, so two replicas
//!   never both report `Leader` for longer than that. openraft has no
//!   step-down call; the replica grants itself a vote request of the next
//!   term (for another voter), which makes its engine a follower without a
//!   leader. Its writes are then refused (`NotLeader`, no leader known).
//! * **Elections only with a majority in reach** (`reach_loop`): a replica
//!   campaigns only while it can reach a majority of the voters (a
//!   `Status` probe every two heartbeats), so a partitioned replica does
//!   not raise its term while cut off, and rejoins after the heal as a
//!   follower without deposing the leader (no pre-vote in openraft 0.9).
//!   A replica that cannot reach a majority could not win an election
//!   anyway. When the majority is back it waits for a leader's
//!   AppendEntries (or, if none comes, three step-down periods) before it
//!   may campaign again.
//!
//! Reads during an election: [`Request::LocalQuery`] answers from this
//! replica's applied state while it heard from a leader (or, leading, from
//! a majority) within `stale_read_max`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State as AxState;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use openraft::error::{CheckIsLeaderError, ClientWriteError, InitializeError, RaftError};
use openraft::raft::{AppendEntriesResponse, VoteRequest};
use openraft::{BasicNode, ChangeMembers, RaftMetrics, ServerState, Vote};
use parking_lot::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::certs::{self, TlsFiles};
use crate::network::Network;
use crate::store::{self, StateMachineStore};
use crate::transport::{serve_stream, Peers, Reply, Request, Status};
use crate::types::{Command, CommandResult, EdgeId, Leave, NodeId, Query, Raft, RemoveReason};

/// How often the leader looks for expired leases.
const LEASE_CHECK: Duration = Duration::from_millis(200);

/// Longest a write waits for its commit (a leader that lost its majority
/// holds writes until it steps down; the lease loop must not hang on one).
const WRITE_WAIT: Duration = Duration::from_secs(5);

/// Called on the leader with the presence entries of an edge it removed
/// (lease expired, left, or replaced by a new incarnation), once per removal.
/// The edge wiring publishes a `leave` for each entry.
pub type LeaveHook = Arc<dyn Fn(&str, &[Leave]) + Send + Sync>;

/// Renders the process's Prometheus metrics for `/metrics`.
pub type MetricsRender = Arc<dyn Fn() -> String + Send + Sync>;

/// Settings of one replica. See `docs/configuration.md` (membership).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Raft node id, unique in the cluster.
    pub id: NodeId,
    /// UDP address for QUIC (Raft and the edge API).
    pub listen: SocketAddr,
    /// Address the others use to reach this replica (default: `listen`).
    pub advertise: String,
    /// Initial voters, id → address, this replica included. The lowest id
    /// initialises the cluster once; empty: start empty and wait to be added.
    pub peers: BTreeMap<NodeId, String>,
    /// Where the redb file lives.
    pub data_dir: PathBuf,
    pub tls: TlsFiles,
    /// HTTP address for `/healthz`, `/readyz`, `/status`, `/metrics`.
    pub http: Option<SocketAddr>,
    /// Leader heartbeat period.
    pub heartbeat: Duration,
    /// A follower that heard nothing from the leader for its lease
    /// (`election_timeout_max`) plus a random time in `[min, max)` starts an
    /// election; a leader that heard from no majority for `min` plus `max`
    /// steps down.
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// [`Request::LocalQuery`] is answered while this replica heard from a
    /// leader (leading: from a majority) within this long.
    pub stale_read_max: Duration,
    /// Build a snapshot (and compact the log) after this many entries.
    pub snapshot_every: u64,
    /// Entries kept in the log behind a snapshot (for slow followers).
    pub keep_after_snapshot: u64,
    /// `/readyz` on a follower: applied index at most this far behind the
    /// leader's commit index.
    pub ready_lag: u64,
}

impl ServerConfig {
    /// Defaults for everything but identity, addresses and files.
    pub fn new(id: NodeId, listen: SocketAddr, data_dir: PathBuf, tls: TlsFiles) -> ServerConfig {
        ServerConfig {
            id,
            listen,
            advertise: listen.to_string(),
            peers: BTreeMap::new(),
            data_dir,
            tls,
            http: None,
            heartbeat: Duration::from_millis(100),
            election_timeout_min: Duration::from_millis(300),
            election_timeout_max: Duration::from_millis(500),
            stale_read_max: Duration::from_secs(3),
            snapshot_every: 20_000,
            keep_after_snapshot: 1_000,
            ready_lag: 1_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Certs(#[from] certs::CertError),
    #[error("data directory {path}: {reason}")]
    Data { path: PathBuf, reason: String },
    #[error("raft: {0}")]
    Raft(String),
    #[error("listen on {addr}: {reason}")]
    Listen { addr: SocketAddr, reason: String },
}

struct Inner {
    id: NodeId,
    raft: Raft,
    sm: StateMachineStore,
    endpoint: quinn::Endpoint,
    /// Connections to the other replicas (Raft, readiness, bootstrap).
    peers: Peers,
    /// Leader only: when each edge last renewed (not replicated).
    leases: Mutex<HashMap<EdgeId, Instant>>,
    hook: LeaveHook,
    ready_lag: u64,
    /// QUIC connections accepted since start.
    accepted: AtomicU64,
    /// When this replica last heard from a leader (a follower: an accepted
    /// AppendEntries; the leader: the last majority acknowledgement).
    last_contact: Mutex<Option<Instant>>,
    stale_read_max: Duration,
}

/// A running replica. Dropping it stops its tasks (call
/// [`MembershipServer::shutdown`] for an orderly stop).
pub struct MembershipServer {
    inner: Arc<Inner>,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    http_addr: Option<SocketAddr>,
}

fn log_leaves(edge: &str, leaves: &[Leave]) {
    if leaves.is_empty() {
        return;
    }
    tracing::info!(
        edge,
        entries = leaves.len(),
        "edge removed; its presence left"
    );
}

impl MembershipServer {
    /// Opens the store, starts Raft, the QUIC endpoint, lease expiry, the
    /// HTTP listener and (on the lowest peer id, once) cluster initialisation.
    pub async fn start(
        cfg: ServerConfig,
        hook: Option<LeaveHook>,
        metrics: Option<MetricsRender>,
    ) -> Result<MembershipServer, ServerError> {
        describe_metrics();
        std::fs::create_dir_all(&cfg.data_dir).map_err(|e| ServerError::Data {
            path: cfg.data_dir.clone(),
            reason: e.to_string(),
        })?;
        let db = cfg.data_dir.join("raft.redb");
        let (log, sm) = store::open(&db).map_err(|e| ServerError::Data {
            path: db.clone(),
            reason: e.to_string(),
        })?;
        let server_tls = certs::quic_server(&cfg.tls)?;
        let client_tls = certs::quic_client(&cfg.tls)?;
        let mut endpoint =
            quinn::Endpoint::server(server_tls, cfg.listen).map_err(|e| ServerError::Listen {
                addr: cfg.listen,
                reason: e.to_string(),
            })?;
        endpoint.set_default_client_config(client_tls);

        let peers = Peers::new(endpoint.clone(), cfg.tls.server_name.as_deref());
        let raft_config = openraft::Config {
            cluster_name: "groupcast-membership".into(),
            heartbeat_interval: cfg.heartbeat.as_millis() as u64,
            election_timeout_min: cfg.election_timeout_min.as_millis() as u64,
            election_timeout_max: cfg.election_timeout_max.as_millis() as u64,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(cfg.snapshot_every),
            max_in_snapshot_log_to_keep: cfg.keep_after_snapshot,
            ..Default::default()
        }
        .validate()
        .map_err(|e| ServerError::Raft(e.to_string()))?;
        let raft = Raft::new(
            cfg.id,
            Arc::new(raft_config),
            Network::new(peers.clone()),
            log,
            sm.clone(),
        )
        .await
        .map_err(|e| ServerError::Raft(e.to_string()))?;

        let inner = Arc::new(Inner {
            id: cfg.id,
            raft,
            sm,
            endpoint,
            peers,
            leases: Mutex::new(HashMap::new()),
            hook: hook.unwrap_or_else(|| Arc::new(log_leaves)),
            ready_lag: cfg.ready_lag,
            accepted: AtomicU64::new(0),
            last_contact: Mutex::new(None),
            stale_read_max: cfg.stale_read_max,
        });
        let cancel = CancellationToken::new();
        let step_down_after = cfg.election_timeout_min + cfg.election_timeout_max;
        let mut tasks = vec![
            tokio::spawn(accept_loop(inner.clone(), cancel.clone())),
            tokio::spawn(lease_loop(inner.clone(), cancel.clone())),
            tokio::spawn(step_down_loop(
                inner.clone(),
                cancel.clone(),
                cfg.heartbeat,
                step_down_after,
            )),
            tokio::spawn(reach_loop(
                inner.clone(),
                cancel.clone(),
                cfg.heartbeat * 2,
                cfg.election_timeout_min,
                step_down_after * 3,
            )),
        ];
        let mut http_addr = None;
        if let Some(addr) = cfg.http {
            let listener =
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| ServerError::Listen {
                        addr,
                        reason: e.to_string(),
                    })?;
            http_addr = listener.local_addr().ok();
            let app = axum::Router::new()
                .route("/healthz", get(|| async { "ok" }))
                .route("/readyz", get(readyz))
                .route("/status", get(status_json))
                .route(
                    "/metrics",
                    get(move || {
                        let body = metrics.as_ref().map(|m| m()).unwrap_or_default();
                        async move { body }
                    }),
                )
                .with_state(inner.clone());
            let c = cancel.clone();
            tasks.push(tokio::spawn(async move {
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(c.cancelled_owned())
                    .await;
            }));
        }
        if !cfg.peers.is_empty() {
            tasks.push(tokio::spawn(bootstrap(inner.clone(), cfg.peers.clone())));
        }
        Ok(MembershipServer {
            inner,
            cancel,
            tasks,
            http_addr,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.inner.endpoint.local_addr().expect("bound endpoint")
    }

    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    pub async fn status(&self) -> Status {
        self.inner.status().await
    }

    /// Resolves when Raft stopped by itself, with the reason: a storage
    /// failure (a log append, vote or snapshot the disk refused, e.g. it is
    /// full) ends openraft's core, and a replica without it can neither vote
    /// nor accept entries. `groupcast membership` then exits with that error
    /// so its supervisor restarts it from the log on disk, which a refused
    /// write leaves as it was (`docs/failover.md`, "A full disk").
    pub async fn raft_stopped(&self) -> String {
        let mut rx = self.inner.raft.metrics();
        loop {
            if let Err(e) = &rx.borrow_and_update().running_state {
                return e.to_string();
            }
            if rx.changed().await.is_err() {
                return "Raft stopped".into();
            }
        }
    }

    /// QUIC connections this replica accepted since it started.
    pub fn connections_accepted(&self) -> u64 {
        self.inner.accepted.load(Ordering::Relaxed)
    }

    /// Stops Raft, the endpoint and the HTTP listener.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        let _ = self.inner.raft.shutdown().await;
        self.inner.endpoint.close(0u32.into(), b"shutdown");
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

impl Drop for MembershipServer {
    fn drop(&mut self) {
        self.cancel.cancel();
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Inner {
    fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    fn leader_addr(&self) -> Option<String> {
        let m = self.raft.metrics().borrow().clone();
        let leader = m.current_leader?;
        m.membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.addr.clone())
    }

    fn not_leader(&self) -> Reply {
        Reply::NotLeader {
            leader: self.leader_addr(),
        }
    }

    async fn status(&self) -> Status {
        let m = self.raft.metrics().borrow().clone();
        let commit_index = self
            .raft
            .with_raft_state(|st| st.committed.map(|l| l.index))
            .await
            .ok()
            .flatten();
        let membership = m.membership_config.membership();
        let addr = |id: NodeId| {
            membership
                .get_node(&id)
                .map(|n| n.addr.clone())
                .unwrap_or_default()
        };
        let leader_addr = m
            .current_leader
            .and_then(|l| membership.get_node(&l).map(|n| n.addr.clone()));
        Status {
            id: self.id,
            state: format!("{:?}", m.state),
            leader: m.current_leader,
            leader_addr,
            term: m.current_term,
            last_log_index: m.last_log_index,
            commit_index,
            applied_index: m.last_applied.map(|l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
            voters: membership.voter_ids().map(|id| (id, addr(id))).collect(),
            learners: membership.learner_ids().map(|id| (id, addr(id))).collect(),
            edges: self.sm.read(|s| s.edges().count() as u64),
        }
    }

    async fn handle(self: Arc<Self>, req: Request) -> Reply {
        match req {
            Request::AppendEntries(r) => {
                let res = self.raft.append_entries(r).await;
                if matches!(&res, Ok(a) if !matches!(a, AppendEntriesResponse::HigherVote(_))) {
                    // Only a current leader's AppendEntries is accepted.
                    *self.last_contact.lock() = Some(Instant::now());
                }
                Reply::AppendEntries(res)
            }
            Request::Vote(r) => Reply::Vote(self.raft.vote(r).await),
            Request::InstallSnapshot(r) => {
                Reply::InstallSnapshot(self.raft.install_snapshot(r).await)
            }
            Request::Write(cmd) => self.write(cmd).await,
            Request::Renew(edge) => self.renew(edge),
            Request::Query(q) => self.query(q).await,
            Request::LocalQuery(q) => self.local_query(q),
            Request::Status => Reply::Status(self.status().await),
            Request::AddMember { id, addr } => {
                // Catch up as a learner first, then become a voter.
                if let Err(e) = self.raft.add_learner(id, BasicNode { addr }, true).await {
                    return self.write_error(e);
                }
                let voters = ChangeMembers::AddVoterIds(BTreeSet::from([id]));
                match self.raft.change_membership(voters, false).await {
                    Ok(_) => Reply::MemberChanged(self.status().await),
                    Err(e) => self.write_error(e),
                }
            }
            Request::RemoveMember { id } => {
                match self
                    .raft
                    .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                    .await
                {
                    Ok(_) => Reply::MemberChanged(self.status().await),
                    Err(e) => self.write_error(e),
                }
            }
        }
    }

    fn write_error(&self, e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> Reply {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => Reply::NotLeader {
                leader: f.leader_node.map(|n| n.addr),
            },
            other => Reply::Failed(other.to_string()),
        }
    }

    /// Commits `cmd`; runs the leave hook for entries it removed.
    async fn write(&self, cmd: Command) -> Reply {
        let registering = match &cmd {
            Command::Register { edge, .. } => Some(edge.clone()),
            _ => None,
        };
        let edge_name = match &cmd {
            Command::Register { edge, .. } | Command::Batch { edge, .. } => edge.name.clone(),
            Command::Remove { edge, reason } => {
                let reason = match reason {
                    RemoveReason::LeaseExpired => "lease_expired",
                    RemoveReason::Left => "left",
                };
                metrics::counter!("groupcast_membership_edges_removed_total", "reason" => reason)
                    .increment(1);
                edge.name.clone()
            }
        };
        let written = match tokio::time::timeout(WRITE_WAIT, self.raft.client_write(cmd)).await {
            Ok(w) => w,
            Err(_) => return Reply::Failed(format!("not committed within {WRITE_WAIT:?}")),
        };
        match written {
            Ok(resp) => {
                if let Some(edge) = registering {
                    self.leases.lock().insert(edge, Instant::now());
                }
                match &resp.data {
                    CommandResult::Registered { leaves } | CommandResult::Removed { leaves } => {
                        self.emit_leaves(&edge_name, leaves)
                    }
                    CommandResult::Batch { applied, .. } => {
                        let result = if *applied { "applied" } else { "duplicate" };
                        metrics::counter!("groupcast_membership_batches_total", "result" => result)
                            .increment(1);
                    }
                    _ => {}
                }
                Reply::Written(resp.data)
            }
            Err(e) => self.write_error(e),
        }
    }

    fn emit_leaves(&self, edge: &str, leaves: &[Leave]) {
        metrics::counter!("groupcast_membership_leaves_total").increment(leaves.len() as u64);
        (self.hook)(edge, leaves);
    }

    fn renew(&self, edge: EdgeId) -> Reply {
        if !self.is_leader() {
            return self.not_leader();
        }
        if !self.sm.read(|s| s.is_registered(&edge)) {
            return Reply::Renewed(false);
        }
        self.leases.lock().insert(edge, Instant::now());
        Reply::Renewed(true)
    }

    /// Linearizable: the leader confirms its leadership with a quorum and
    /// waits until its state machine has applied everything committed.
    async fn query(&self, q: Query) -> Reply {
        if matches!(q, Query::Removals { .. } | Query::Events { .. }) {
            // Polled several times a second by every edge; the leader's own
            // applied state is enough (see `Query::Removals`).
            if !self.is_leader() {
                return self.not_leader();
            }
            return Reply::Query(self.sm.read(|s| s.query(&q)));
        }
        match self.raft.ensure_linearizable().await {
            Ok(_) => Reply::Query(self.sm.read(|s| s.query(&q))),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => Reply::NotLeader {
                leader: f.leader_node.map(|n| n.addr),
            },
            Err(e) => Reply::Failed(e.to_string()),
        }
    }

    /// A read from this replica's applied state, while it heard from a
    /// leader (or, leading, from a majority) within `stale_read_max`.
    fn local_query(&self, q: Query) -> Reply {
        let age = self.last_contact.lock().map(|t| t.elapsed());
        match age {
            Some(age) if age <= self.stale_read_max => {
                let applied_index = self
                    .raft
                    .metrics()
                    .borrow()
                    .last_applied
                    .map(|l| l.index)
                    .unwrap_or(0);
                metrics::counter!("groupcast_membership_local_reads_total").increment(1);
                Reply::LocalQuery {
                    result: self.sm.read(|s| s.query(&q)),
                    applied_index,
                    age_ms: age.as_millis() as u64,
                }
            }
            Some(age) => Reply::Failed(format!(
                "no leader heard from for {} ms (stale_read_max {} ms)",
                age.as_millis(),
                self.stale_read_max.as_millis()
            )),
            None => Reply::Failed("no leader heard from since start".into()),
        }
    }

    /// Steps down from leadership: grants a vote request of the next term
    /// (for `other`, another voter), which turns this leader's engine into a
    /// follower with no leader known. The first request, with no log,
    /// is refused and tells this replica's last log id; the second carries
    /// it. True once granted.
    async fn step_down(&self, m: &RaftMetrics<NodeId, BasicNode>, other: NodeId) -> bool {
        let vote = Vote::new(m.current_term + 1, other);
        let probe = match self.raft.vote(VoteRequest::new(vote, None)).await {
            Ok(r) => r,
            Err(_) => return false,
        };
        if probe.vote_granted {
            return true;
        }
        match self
            .raft
            .vote(VoteRequest::new(vote, probe.last_log_id))
            .await
        {
            Ok(r) => r.vote_granted,
            Err(_) => false,
        }
    }

    /// Ready: a leader is known and this replica has applied the leader's
    /// commit index (within `ready_lag`).
    async fn readiness(&self) -> Result<(), String> {
        let own = self.status().await;
        let Some(leader) = own.leader else {
            return Err("no leader known".into());
        };
        if leader == self.id {
            return Ok(());
        }
        let Some(addr) = own.leader_addr.clone() else {
            return Err("leader address unknown".into());
        };
        let peer = self.peers.get(&addr);
        let leader_status = match peer.call(&Request::Status, Duration::from_secs(1)).await {
            Ok(Reply::Status(s)) => s,
            Ok(other) => return Err(format!("leader {addr} answered {other:?}")),
            Err(e) => return Err(format!("leader unreachable: {e}")),
        };
        let target = leader_status.commit_index.unwrap_or(0);
        let applied = own.applied_index.unwrap_or(0);
        if applied + self.ready_lag < target {
            return Err(format!(
                "catching up: applied {applied}, leader committed {target}"
            ));
        }
        Ok(())
    }
}

async fn readyz(AxState(inner): AxState<Arc<Inner>>) -> impl IntoResponse {
    match inner.readiness().await {
        Ok(()) => (StatusCode::OK, "ready".to_string()),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason),
    }
}

/// The replica's [`Status`] plus `state_digest` (see
/// [`StateMachineStore::digest`]) at `digest_index`, to compare replicas.
async fn status_json(AxState(inner): AxState<Arc<Inner>>) -> impl IntoResponse {
    let status = inner.status().await;
    let (digest_index, digest) = inner.sm.digest();
    let mut v = serde_json::to_value(status).unwrap_or_default();
    v["state_digest"] = digest.into();
    v["digest_index"] = digest_index.into();
    axum::Json(v)
}

async fn accept_loop(inner: Arc<Inner>, cancel: CancellationToken) {
    loop {
        let incoming = tokio::select! {
            _ = cancel.cancelled() => return,
            i = inner.endpoint.accept() => match i {
                Some(i) => i,
                None => return,
            },
        };
        let inner = inner.clone();
        tokio::spawn(async move {
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "membership: handshake failed");
                    metrics::counter!("groupcast_membership_connections_total", "result" => "refused")
                        .increment(1);
                    return;
                }
            };
            inner.accepted.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("groupcast_membership_connections_total", "result" => "accepted")
                .increment(1);
            while let Ok((send, recv)) = conn.accept_bi().await {
                let inner = inner.clone();
                tokio::spawn(serve_stream(send, recv, move |req| inner.handle(req)));
            }
        });
    }
}

/// On the lowest peer id only, and only when neither this replica nor any
/// reachable peer already belongs to a cluster: initialise with `peers`.
async fn bootstrap(inner: Arc<Inner>, peers: BTreeMap<NodeId, String>) {
    if peers.keys().next() != Some(&inner.id) {
        return;
    }
    if inner.raft.is_initialized().await.unwrap_or(true) {
        return;
    }
    for (id, addr) in &peers {
        if *id == inner.id {
            continue;
        }
        let peer = inner.peers.get(addr);
        if let Ok(Reply::Status(s)) = peer.call(&Request::Status, Duration::from_secs(1)).await {
            if !s.voters.is_empty() {
                tracing::info!(
                    peer = id,
                    "membership: cluster already exists; not initialising"
                );
                return;
            }
        }
    }
    let members: BTreeMap<NodeId, BasicNode> = peers
        .into_iter()
        .map(|(id, addr)| (id, BasicNode { addr }))
        .collect();
    match inner.raft.initialize(members).await {
        Ok(()) => tracing::info!("membership: cluster initialised"),
        Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
        Err(e) => tracing::error!(error = %e, "membership: initialisation failed"),
    }
}

/// Leader only: expire edges whose lease ran out. A replica that just became
/// leader first gives every edge a full fresh TTL.
async fn lease_loop(inner: Arc<Inner>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(LEASE_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_leader = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let m = inner.raft.metrics().borrow().clone();
        metrics::gauge!("groupcast_membership_is_leader").set(if m.state == ServerState::Leader {
            1.0
        } else {
            0.0
        });
        metrics::gauge!("groupcast_membership_term").set(m.current_term as f64);
        if let Some(l) = m.last_applied {
            metrics::gauge!("groupcast_membership_applied_index").set(l.index as f64);
        }
        let edges: Vec<(EdgeId, u64)> = inner.sm.read(|s| s.edges().collect());
        metrics::gauge!("groupcast_membership_edges").set(edges.len() as f64);
        if m.state != ServerState::Leader {
            was_leader = false;
            continue;
        }
        if !was_leader {
            was_leader = true;
            tracing::info!(
                edges = edges.len(),
                "membership: leader; every edge gets a fresh lease"
            );
            inner.leases.lock().clear();
        }
        let now = Instant::now();
        let expired: Vec<EdgeId> = {
            let mut leases = inner.leases.lock();
            let live: BTreeSet<&EdgeId> = edges.iter().map(|(e, _)| e).collect();
            leases.retain(|e, _| live.contains(e));
            edges
                .iter()
                .filter(|(e, ttl)| {
                    // An edge this leader has not heard from yet (it just
                    // became leader, or the edge just registered) starts
                    // its TTL now.
                    let last = *leases.entry(e.clone()).or_insert(now);
                    now.duration_since(last) > Duration::from_millis(*ttl)
                })
                .map(|(e, _)| e.clone())
                .collect()
        };
        for edge in expired {
            tracing::warn!(edge = %edge.name, "membership: lease expired; removing the edge");
            inner
                .write(Command::Remove {
                    edge,
                    reason: RemoveReason::LeaseExpired,
                })
                .await;
        }
    }
}

/// Check-quorum: a leader that heard from no majority for `after` steps
/// down (see the module docs). Also keeps `last_contact` on the leader.
async fn step_down_loop(
    inner: Arc<Inner>,
    cancel: CancellationToken,
    every: Duration,
    after: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut leading_since: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let m = inner.raft.metrics().borrow().clone();
        if m.state != ServerState::Leader {
            leading_since = None;
            continue;
        }
        let now = Instant::now();
        let since = *leading_since.get_or_insert(now);
        // openraft's own clock: when a majority last acknowledged this
        // leader (None: not yet, since it was elected).
        let unacked = match m.millis_since_quorum_ack {
            Some(ms) => Duration::from_millis(ms),
            None => now.duration_since(since),
        };
        let membership = m.membership_config.membership();
        let other = membership.voter_ids().find(|v| *v != inner.id);
        let Some(other) = other else {
            // The only voter: it is its own majority.
            *inner.last_contact.lock() = Some(now);
            continue;
        };
        if let Some(acked) = now.checked_sub(unacked) {
            *inner.last_contact.lock() = Some(acked);
        }
        if unacked <= after {
            continue;
        }
        if inner.step_down(&m, other).await {
            metrics::counter!("groupcast_membership_step_downs_total").increment(1);
            tracing::warn!(
                term = m.current_term,
                unacked_ms = unacked.as_millis() as u64,
                "membership: no majority acknowledged this leader; stepped down"
            );
        }
    }
}

/// Lets this replica campaign only while it reaches a majority of the
/// voters, itself included (a `Status` probe of each other voter every
/// `every`, each bounded by `within`). Once a majority is back in reach
/// after it was lost, a replica that has heard from a leader before
/// resumes elections when a leader has contacted it since (it follows that
/// leader, nothing to elect), or after `grace` (none did: there may be no
/// leader): its last heartbeat is old, so it would otherwise campaign at
/// once, before the leader's heartbeats get through again, and depose it.
async fn reach_loop(
    inner: Arc<Inner>,
    cancel: CancellationToken,
    every: Duration,
    within: Duration,
    grace: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut allowed = true;
    // Since when a majority is back in reach, while elections stay off.
    let mut back_since: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let m = inner.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: Vec<(NodeId, String)> = membership
            .voter_ids()
            .filter_map(|id| membership.get_node(&id).map(|n| (id, n.addr.clone())))
            .collect();
        if voters.len() <= 1 || !voters.iter().any(|(id, _)| *id == inner.id) {
            continue;
        }
        let probes = voters
            .iter()
            .filter(|(id, _)| *id != inner.id)
            .map(|(_, addr)| {
                let peer = inner.peers.get(addr);
                async move {
                    matches!(
                        peer.call(&Request::Status, within).await,
                        Ok(Reply::Status(_))
                    )
                }
            });
        let reached = 1 + futures_util::future::join_all(probes)
            .await
            .into_iter()
            .filter(|ok| *ok)
            .count();
        let mut majority = reached * 2 > voters.len();
        let last_contact = *inner.last_contact.lock();
        // A replica that never heard from a leader (a new cluster) has no
        // leader to wait for.
        if majority && !allowed && last_contact.is_some() {
            let since = *back_since.get_or_insert_with(Instant::now);
            let contacted = last_contact.is_some_and(|t| t >= since);
            majority = contacted || since.elapsed() >= grace;
        }
        if majority != allowed {
            allowed = majority;
            back_since = None;
            inner.raft.runtime_config().elect(majority);
            if majority {
                tracing::info!(reached, "membership: a majority is in reach; elections on");
            } else {
                tracing::warn!(
                    reached,
                    voters = voters.len(),
                    "membership: no majority in reach; this replica does not campaign"
                );
            }
        }
    }
}

/// Registers descriptions of the membership metrics (see
/// `docs/operations.md`).
pub fn describe_metrics() {
    metrics::describe_gauge!("groupcast_membership_is_leader", "1 on the Raft leader");
    metrics::describe_gauge!("groupcast_membership_term", "current Raft term");
    metrics::describe_gauge!(
        "groupcast_membership_applied_index",
        "last applied log index"
    );
    metrics::describe_gauge!("groupcast_membership_edges", "registered edges");
    metrics::describe_counter!(
        "groupcast_membership_storage_write_errors_total",
        "writes to the replica's Raft store that failed (e.g. the disk is full); \
         the replica then exits for its supervisor to restart it"
    );
    metrics::describe_counter!(
        "groupcast_membership_connections_total",
        "QUIC connections by result: accepted, or refused (handshake failed, e.g. unknown CA)"
    );
    metrics::describe_counter!(
        "groupcast_membership_batches_total",
        "edge delta batches committed, by result (applied|duplicate)"
    );
    metrics::describe_counter!(
        "groupcast_membership_edges_removed_total",
        "edge removals committed or attempted, by reason (lease_expired|left)"
    );
    metrics::describe_counter!(
        "groupcast_membership_step_downs_total",
        "times this replica stepped down as leader because no majority acknowledged it"
    );
    metrics::describe_counter!(
        "groupcast_membership_local_reads_total",
        "reads answered from this replica's own state (during a leader change)"
    );
    metrics::describe_counter!(
        "groupcast_membership_leaves_total",
        "presence entries removed with their edge (each gets a leave)"
    );
}
