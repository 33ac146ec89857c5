//! One membership replica (`groupcast membership`): Raft over QUIC, the
//! edge-facing API on the same endpoint, lease expiry on the leader, and an
//! HTTP listener for `/readyz`, `/status` and `/metrics`.

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
use openraft::{BasicNode, ChangeMembers, ServerState};
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
    pub heartbeat: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
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
            election_timeout_min: Duration::from_millis(500),
            election_timeout_max: Duration::from_millis(1000),
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
        });
        let cancel = CancellationToken::new();
        let mut tasks = vec![
            tokio::spawn(accept_loop(inner.clone(), cancel.clone())),
            tokio::spawn(lease_loop(inner.clone(), cancel.clone())),
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
            Request::AppendEntries(r) => Reply::AppendEntries(self.raft.append_entries(r).await),
            Request::Vote(r) => Reply::Vote(self.raft.vote(r).await),
            Request::InstallSnapshot(r) => {
                Reply::InstallSnapshot(self.raft.install_snapshot(r).await)
            }
            Request::Write(cmd) => self.write(cmd).await,
            Request::Renew(edge) => self.renew(edge),
            Request::Query(q) => self.query(q).await,
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
        match self.raft.client_write(cmd).await {
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
        "groupcast_membership_leaves_total",
        "presence entries removed with their edge (each gets a leave)"
    );
}
