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
//! * Degradation: when no replica answers within `request_timeout` the
//!   handle reports itself unavailable ([`MembershipClient::is_available`]).
//!   Presence queries then fail at once with
//!   [`MembershipError::Unavailable`] (the protocol's 108 "not available"),
//!   joins and leaves return at once, and deltas are kept — up to
//!   `buffer_max`; past that the queue is dropped and the edge's whole state
//!   (which the handle always knows) is resent instead. When the service is
//!   back the queue is replayed, and after a lease expiry the edge
//!   registers again and resends its whole state.
//!
//! * Leaves of dead edges: every `removal_poll` (250 ms) the handle asks the
//!   leader for edge removals it has not seen yet and hands each presence
//!   entry of another edge to the leave handler (the edge pushes `leave` to
//!   its local subscribers), once.
//!
//! Dropping every clone stops the handle without deregistering, exactly
//! like a crashed edge; call [`MembershipClient::close`] to leave.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::future::join_all;
use groupcast_core::membership::{
    ClusterEvent, ClusterEventKind, EventHandler, LeaveHandler, Membership, MembershipError,
    PresenceStats, ReplicaStatus, UserStatus, MAX_USER_STATUS,
};
use groupcast_proto::api::NodeInfo;
use groupcast_proto::client::ClientInfo;
use parking_lot::Mutex;
use tokio::sync::{oneshot, Notify};
use tokio_util::sync::CancellationToken;

use crate::certs::{self, TlsFiles};
use crate::transport::{resolve, Peers, Reply, Request, Status, TransportError};
use crate::types::{
    Command, CommandResult, Delta, EdgeId, EdgeInfo, EventKind, NodeId, Presence, Query,
    QueryResult, RemoveReason,
};

/// Settings of the edge handle (`[membership]` in the edge's config).
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Replica addresses (`host:port`); any of them, the leader is found.
    pub seeds: Vec<String>,
    pub tls: TlsFiles,
    /// This edge's name (unique in the cluster).
    pub edge_name: String,
    /// This edge's advertised address (informational).
    pub edge_addr: String,
    pub lease_ttl: Duration,
    pub renew_every: Duration,
    pub flush_interval: Duration,
    /// Most deltas per batch.
    pub batch_max: usize,
    /// Most deltas kept while the service is unreachable.
    pub buffer_max: usize,
    /// How long a request may take before the service counts as unavailable.
    pub request_timeout: Duration,
    /// `presence_max_clients`: most presence entries per channel.
    pub presence_max_clients: u32,
    /// How often to ask for removed edges whose entries left.
    pub removal_poll: Duration,
}

impl ClientConfig {
    pub fn new(seeds: Vec<String>, tls: TlsFiles, edge_name: impl Into<String>) -> ClientConfig {
        ClientConfig {
            seeds,
            tls,
            edge_name: edge_name.into(),
            edge_addr: String::new(),
            lease_ttl: Duration::from_secs(5),
            renew_every: Duration::from_secs(1),
            flush_interval: Duration::from_millis(20),
            batch_max: 1024,
            buffer_max: 100_000,
            request_timeout: Duration::from_secs(2),
            presence_max_clients: groupcast_core::membership::memory::DEFAULT_MAX_PER_CHANNEL
                as u32,
            removal_poll: Duration::from_millis(250),
        }
    }

    /// Refuses settings the handle cannot work with, naming the field.
    pub fn validate(&self) -> Result<(), ClientError> {
        let bad = |field: &str, why: &str| Err(ClientError::Config(format!("{field}: {why}")));
        if self.seeds.is_empty() {
            return Err(ClientError::NoSeeds);
        }
        if self.edge_name.is_empty() {
            return bad("edge_name", "must not be empty");
        }
        if self.batch_max == 0 {
            return bad("batch_max", "must be at least 1");
        }
        if self.buffer_max == 0 {
            return bad("buffer_max", "must be at least 1");
        }
        if self.flush_interval.is_zero() || self.request_timeout.is_zero() {
            return bad("flush_interval / request_timeout", "must be above zero");
        }
        if self.removal_poll.is_zero() {
            return bad("removal_poll", "must be above zero");
        }
        if self.renew_every.is_zero() || self.renew_every >= self.lease_ttl {
            return bad("renew_every", "must be above zero and below lease_ttl");
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Certs(#[from] certs::CertError),
    #[error("no membership seed addresses")]
    NoSeeds,
    #[error("membership client configuration: {0}")]
    Config(String),
    #[error("{0}")]
    Endpoint(String),
    #[error(transparent)]
    Transport(#[from] crate::transport::TransportError),
    #[error("membership: {0}")]
    Service(String),
}

/// Requests to the leader, whichever replica that is.
pub struct Conn {
    seeds: Vec<String>,
    peers: Peers,
    leader: Mutex<Option<String>>,
    next_seed: AtomicUsize,
}

/// Longest wait for one replica before trying another.
const PER_TRY: Duration = Duration::from_secs(1);

impl Conn {
    /// A client-only QUIC endpoint with our certificate.
    pub async fn connect(seeds: Vec<String>, tls: &TlsFiles) -> Result<Conn, ClientError> {
        let first = seeds.first().ok_or(ClientError::NoSeeds)?;
        let (sock, _) = resolve(first).await?;
        let bind: std::net::SocketAddr = if sock.is_ipv4() {
            "0.0.0.0:0".parse().expect("literal")
        } else {
            "[::]:0".parse().expect("literal")
        };
        let mut endpoint =
            quinn::Endpoint::client(bind).map_err(|e| ClientError::Endpoint(e.to_string()))?;
        endpoint.set_default_client_config(certs::quic_client(tls)?);
        Ok(Conn {
            peers: Peers::new(endpoint, tls.server_name.as_deref()),
            seeds,
            leader: Mutex::new(None),
            next_seed: AtomicUsize::new(0),
        })
    }

    fn next_seed(&self) -> String {
        let i = self.next_seed.fetch_add(1, Ordering::Relaxed);
        self.seeds[i % self.seeds.len()].clone()
    }

    /// Sends `req` to the leader, following redirects, until an answer or
    /// `timeout`.
    pub async fn call(&self, req: &Request, timeout: Duration) -> Result<Reply, ClientError> {
        let deadline = Instant::now() + timeout;
        let mut target = self
            .leader
            .lock()
            .clone()
            .unwrap_or_else(|| self.next_seed());
        let mut last = String::from("no replica answered");
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ClientError::Service(last));
            }
            match self.peers.get(&target).call(req, left.min(PER_TRY)).await {
                Ok(Reply::NotLeader { leader: Some(addr) }) if addr != target => {
                    *self.leader.lock() = Some(addr.clone());
                    target = addr;
                }
                Ok(Reply::NotLeader { .. }) => {
                    last = format!("{target}: no leader");
                    *self.leader.lock() = None;
                    target = self.next_seed();
                    tokio::time::sleep(Duration::from_millis(50).min(left)).await;
                }
                Ok(reply) => {
                    *self.leader.lock() = Some(target);
                    return Ok(reply);
                }
                Err(e) => {
                    last = e.to_string();
                    *self.leader.lock() = None;
                    target = self.next_seed();
                    tokio::time::sleep(Duration::from_millis(20).min(left)).await;
                }
            }
        }
    }

    pub async fn status(&self, timeout: Duration) -> Result<Status, ClientError> {
        match self.call(&Request::Status, timeout).await? {
            Reply::Status(s) => Ok(s),
            other => Err(ClientError::Service(format!("unexpected reply {other:?}"))),
        }
    }

    /// The status of the replica at `addr`, asked of that replica itself
    /// (no leader following; the leader this handle knows is untouched).
    pub async fn status_of(&self, addr: &str, timeout: Duration) -> Result<Status, ClientError> {
        match self.peers.get(addr).call(&Request::Status, timeout).await? {
            Reply::Status(s) => Ok(s),
            other => Err(ClientError::Service(format!("unexpected reply {other:?}"))),
        }
    }

    /// Every replica's own status (what `groupcast membership status --via`
    /// prints for one), within `timeout` in all: the seeds are asked in
    /// parallel, then, in parallel again, the members (voters and learners)
    /// of the newest configuration they report that no seed address
    /// reached. A member that did not answer is listed unreachable; when no
    /// seed answered, the seeds are. Lag is measured against the leader of
    /// the highest term that answered.
    pub async fn replicas(&self, timeout: Duration) -> Vec<ReplicaStatus> {
        let deadline = Instant::now() + timeout;
        let ask = |addrs: Vec<String>| {
            join_all(addrs.into_iter().map(move |addr| async move {
                let left = deadline.saturating_duration_since(Instant::now());
                let r = match self.status_of(&addr, left).await {
                    // Said with the limit asked for, not what was left of it.
                    Err(ClientError::Transport(TransportError::Timeout { .. })) => {
                        Err(format!("{addr}: no answer within {timeout:?}"))
                    }
                    r => r.map_err(|e| e.to_string()),
                };
                (addr, r)
            }))
        };
        // Answers by replica id; errors by address asked.
        let mut answers: BTreeMap<NodeId, Status> = BTreeMap::new();
        let mut failed: BTreeMap<String, String> = BTreeMap::new();
        let take = |results: Vec<(String, Result<Status, String>)>,
                    answers: &mut BTreeMap<NodeId, Status>,
                    failed: &mut BTreeMap<String, String>| {
            for (addr, r) in results {
                match r {
                    Ok(s) => {
                        answers.insert(s.id, s);
                    }
                    Err(e) => {
                        failed.insert(addr, e);
                    }
                }
            }
        };
        take(ask(self.seeds.clone()).await, &mut answers, &mut failed);
        // The member list of the answer with the newest view.
        let newest = answers
            .values()
            .max_by_key(|s| (s.term, s.state == "Leader"))
            .cloned();
        let Some(newest) = newest else {
            return self
                .seeds
                .iter()
                .map(|addr| ReplicaStatus {
                    address: addr.clone(),
                    error: failed.get(addr).cloned(),
                    ..Default::default()
                })
                .collect();
        };
        let members: Vec<(NodeId, String, bool)> = newest
            .voters
            .iter()
            .map(|(id, a)| (*id, a.clone(), true))
            .chain(
                newest
                    .learners
                    .iter()
                    .map(|(id, a)| (*id, a.clone(), false)),
            )
            .collect();
        let missing: Vec<String> = members
            .iter()
            .filter(|(id, addr, _)| !answers.contains_key(id) && !failed.contains_key(addr))
            .map(|(_, addr, _)| addr.clone())
            .collect();
        if !missing.is_empty() {
            take(ask(missing).await, &mut answers, &mut failed);
        }
        let leader = answers
            .values()
            .filter(|s| s.state == "Leader")
            .max_by_key(|s| s.term)
            .map(|s| (s.id, s.last_log_index.unwrap_or(0)));
        members
            .into_iter()
            .map(|(id, addr, voter)| match answers.get(&id) {
                Some(s) => ReplicaStatus {
                    id: Some(id),
                    address: addr,
                    reachable: true,
                    error: None,
                    state: s.state.clone(),
                    leader: leader.is_some_and(|(l, _)| l == id),
                    voter,
                    term: Some(s.term),
                    last_log_index: s.last_log_index,
                    commit_index: s.commit_index,
                    applied_index: s.applied_index,
                    lag: leader.map(|(_, last)| last.saturating_sub(s.applied_index.unwrap_or(0))),
                },
                None => ReplicaStatus {
                    id: Some(id),
                    error: Some(
                        failed
                            .get(&addr)
                            .cloned()
                            .unwrap_or_else(|| "no answer from this replica".into()),
                    ),
                    address: addr,
                    voter,
                    ..Default::default()
                },
            })
            .collect()
    }
}

type Waiter = oneshot::Sender<Result<(), MembershipError>>;

/// The edge's own state, always current: what a resync sends.
#[derive(Default)]
struct LocalView {
    subscribers: HashMap<String, i64>,
    connections: HashMap<String, i64>,
    presence: BTreeMap<(String, String), Delta>,
}

impl LocalView {
    fn apply(&mut self, d: &Delta) {
        let bump = |m: &mut HashMap<String, i64>, k: &str, delta: i64| {
            let v = m.entry(k.to_string()).or_insert(0);
            *v = (*v + delta).max(0);
            if *v == 0 {
                m.remove(k);
            }
        };
        match d {
            Delta::Subscribers { channel, delta } => bump(&mut self.subscribers, channel, *delta),
            Delta::Connections { user, delta } => bump(&mut self.connections, user, *delta),
            Delta::Join {
                channel, presence, ..
            } => {
                self.presence
                    .insert((channel.clone(), presence.client.clone()), d.clone());
            }
            Delta::Leave { channel, client } => {
                self.presence.remove(&(channel.clone(), client.clone()));
            }
            // A moment, not state: a resync does not resend it.
            Delta::Seen { .. } | Delta::ResyncDone => {}
        }
    }

    fn deltas(&self) -> Vec<Delta> {
        let mut out: Vec<Delta> = self
            .subscribers
            .iter()
            .map(|(c, n)| Delta::Subscribers {
                channel: c.clone(),
                delta: *n,
            })
            .collect();
        out.extend(self.connections.iter().map(|(u, n)| Delta::Connections {
            user: u.clone(),
            delta: *n,
        }));
        out.extend(self.presence.values().cloned());
        out
    }
}

#[derive(Default)]
struct Queue {
    deltas: VecDeque<(Delta, Option<Waiter>)>,
    local: LocalView,
    /// Register (again) before the next batch.
    register: bool,
    /// Send the whole local view (reset) before the queue.
    resync: bool,
}

struct Shared {
    edge: EdgeId,
    cfg: ClientConfig,
    conn: Conn,
    queue: Mutex<Queue>,
    wake: Notify,
    available: AtomicBool,
    cancel: CancellationToken,
    /// Last batch sequence number used (only the flush task sends).
    seq: AtomicU64,
    /// Where leaves of other edges' removed entries go.
    leave_handler: OnceLock<LeaveHandler>,
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
    pub async fn start(cfg: ClientConfig) -> Result<MembershipClient, ClientError> {
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
            event_handler: OnceLock::new(),
            events_wanted: Notify::new(),
            started_unix: unix_now(),
        });
        metrics::gauge!("groupcast_membership_client_available").set(0.0);
        tokio::spawn(flush_loop(shared.clone()));
        tokio::spawn(renew_loop(shared.clone()));
        tokio::spawn(removal_loop(shared.clone()));
        tokio::spawn(events_loop(shared.clone()));
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

    /// Queues a delta; with `wait`, returns a receiver answered once it is
    /// committed (none while the service is unavailable: the delta is kept).
    fn enqueue(
        &self,
        delta: Delta,
        wait: bool,
    ) -> Option<oneshot::Receiver<Result<(), MembershipError>>> {
        let s = &self.shared;
        let (tx, rx) = if wait && self.is_available() {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let mut q = s.queue.lock();
        q.local.apply(&delta);
        if q.deltas.len() >= s.cfg.buffer_max {
            // Past the bound: forget the queue, resend the whole state.
            for (_, w) in q.deltas.drain(..) {
                if let Some(w) = w {
                    let _ = w.send(Ok(()));
                }
            }
            q.resync = true;
            metrics::counter!("groupcast_membership_client_overflows_total").increment(1);
        } else if !q.resync {
            q.deltas.push_back((delta, tx));
        } else if let Some(tx) = tx {
            // A resync is pending and will carry this delta.
            let _ = tx.send(Ok(()));
        }
        if q.deltas.len() >= s.cfg.batch_max || q.deltas.len() == 1 || q.resync {
            s.wake.notify_one();
        }
        rx
    }

    /// Queues a delta and waits until it is committed (or returns at once
    /// when the service is unavailable, the delta kept).
    async fn push(&self, delta: Delta) -> Result<(), MembershipError> {
        match self.enqueue(delta, true) {
            Some(rx) => match tokio::time::timeout(self.shared.cfg.request_timeout, rx).await {
                Ok(Ok(r)) => r,
                // Not committed in time: the delta stays queued.
                _ => Ok(()),
            },
            None => {
                // Returning at once would let a caller that loops on us
                // never yield, starving this handle's own renewals (issue
                // 10: every edge lost its lease after a failover).
                tokio::task::yield_now().await;
                Ok(())
            }
        }
    }

    async fn query(&self, q: Query) -> Result<QueryResult, MembershipError> {
        if !self.is_available() {
            // See `push`: never answer without yielding.
            tokio::task::yield_now().await;
            return Err(MembershipError::Unavailable(
                "membership service unreachable".into(),
            ));
        }
        let s = &self.shared;
        match s.conn.call(&Request::Query(q), s.cfg.request_timeout).await {
            Ok(Reply::Query(r)) => Ok(r),
            Ok(other) => Err(MembershipError::Unavailable(format!("{other:?}"))),
            Err(e) => {
                // No replica answered within request_timeout: as good a
                // sign as a failed renewal (the next renewal that succeeds
                // marks it available again).
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
    pub async fn close(self) -> Result<(), ClientError> {
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

#[async_trait]
impl Membership for MembershipClient {
    async fn add_presence(&self, channel: &str, info: ClientInfo) -> Result<(), MembershipError> {
        self.push(Delta::Join {
            channel: channel.to_string(),
            presence: Presence::from(&info),
            max_clients: self.shared.cfg.presence_max_clients,
        })
        .await
    }

    async fn remove_presence(&self, channel: &str, client: &str) -> Result<(), MembershipError> {
        self.push(Delta::Leave {
            channel: channel.to_string(),
            client: client.to_string(),
        })
        .await
    }

    async fn presence(
        &self,
        channel: &str,
    ) -> Result<BTreeMap<String, ClientInfo>, MembershipError> {
        match self
            .query(Query::Presence {
                channel: channel.to_string(),
            })
            .await?
        {
            QueryResult::Presence(p) => Ok(p
                .iter()
                .map(|p| (p.client.clone(), p.to_client_info()))
                .collect()),
            other => Err(MembershipError::Unavailable(format!("{other:?}"))),
        }
    }

    async fn presence_stats(&self, channel: &str) -> Result<PresenceStats, MembershipError> {
        match self
            .query(Query::PresenceStats {
                channel: channel.to_string(),
            })
            .await?
        {
            QueryResult::PresenceStats {
                num_clients,
                num_users,
            } => Ok(PresenceStats {
                num_clients,
                num_users,
            }),
            other => Err(MembershipError::Unavailable(format!("{other:?}"))),
        }
    }

    fn subscribers_changed(&self, channel: &str, delta: i64) {
        let channel = channel.to_string();
        self.enqueue(Delta::Subscribers { channel, delta }, false);
    }

    fn connections_changed(&self, user: &str, delta: i64) {
        let before = {
            let q = self.shared.queue.lock();
            q.local.connections.get(user).copied().unwrap_or(0)
        };
        let after = (before + delta).max(0);
        self.enqueue(
            Delta::Connections {
                user: user.to_string(),
                delta,
            },
            false,
        );
        // The user's first connection here, or their last: "last seen".
        if (before == 0) != (after == 0) {
            let seen = Delta::Seen {
                user: user.to_string(),
                unix_ms: unix_now_ms(),
            };
            self.enqueue(seen, false);
        }
    }

    async fn user_status(&self, users: &[String]) -> Result<Vec<UserStatus>, MembershipError> {
        let users = users.iter().take(MAX_USER_STATUS).cloned().collect();
        match self.query(Query::UserStatus { users }).await? {
            QueryResult::UserStatus(v) => Ok(v
                .into_iter()
                .map(|u| UserStatus {
                    user: u.user,
                    connections: u.connections,
                    last_seen_ms: u.last_seen_ms,
                })
                .collect()),
            other => Err(MembershipError::Unavailable(format!("{other:?}"))),
        }
    }

    fn set_event_handler(&self, handler: EventHandler) {
        if self.shared.event_handler.set(handler).is_ok() {
            self.shared.events_wanted.notify_one();
        }
    }

    /// At most `limit` ([`crate::state::MAX_CHANNELS_PER_QUERY`]).
    async fn channels(
        &self,
        prefix: &str,
        limit: u32,
    ) -> Result<BTreeMap<String, u64>, MembershipError> {
        let prefix = prefix.to_string();
        match self.query(Query::Channels { prefix, limit }).await? {
            QueryResult::Channels(c) => Ok(c),
            other => Err(MembershipError::Unavailable(format!("{other:?}"))),
        }
    }

    async fn user_nodes(&self, user: &str) -> Result<Vec<String>, MembershipError> {
        let user = user.to_string();
        match self.query(Query::UserNodes { user }).await? {
            QueryResult::UserNodes(n) => Ok(n),
            other => Err(MembershipError::Unavailable(format!("{other:?}"))),
        }
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, MembershipError> {
        let now = unix_now();
        Ok(self
            .edges()
            .await?
            .into_iter()
            .map(|e| NodeInfo {
                uid: uid(e.edge.incarnation),
                name: e.edge.name,
                version: e.version,
                uptime: now.saturating_sub(e.started_unix) as u32,
                num_clients: e.connections as u32,
                num_users: e.users as u32,
                num_channels: e.channels as u32,
                num_subs: e.subscriptions as u32,
            })
            .collect())
    }

    fn local_node(&self) -> Option<(String, String)> {
        let e = &self.shared.edge;
        Some((e.name.clone(), uid(e.incarnation)))
    }

    fn set_leave_handler(&self, handler: LeaveHandler) {
        let _ = self.shared.leave_handler.set(handler);
    }

    fn is_available(&self) -> bool {
        MembershipClient::is_available(self)
    }

    async fn replicas(&self, timeout: Duration) -> Option<Vec<ReplicaStatus>> {
        Some(self.shared.conn.replicas(timeout).await)
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

    /// Sends `cmd` until a replica commits it. The service counts as
    /// unavailable once a try outlasts `request_timeout`. None: cancelled.
    async fn commit(&self, req: &Request) -> Option<CommandResult> {
        let started = Instant::now();
        loop {
            let r = tokio::select! {
                _ = self.cancel.cancelled() => return None,
                r = self.conn.call(req, self.cfg.request_timeout) => r,
            };
            match r {
                Ok(Reply::Written(result)) => {
                    self.set_available(true);
                    return Some(result);
                }
                Ok(other) => tracing::debug!(reply = ?other, "membership write not committed"),
                Err(e) => tracing::debug!(error = %e, "membership write failed"),
            }
            if started.elapsed() >= self.cfg.request_timeout {
                self.set_available(false);
            }
            tokio::select! {
                _ = self.cancel.cancelled() => return None,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }

    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Registers this incarnation; afterwards the whole state is resent.
    async fn register(&self) -> bool {
        let cmd = Command::Register {
            edge: self.edge.clone(),
            addr: self.cfg.edge_addr.clone(),
            ttl_ms: self.cfg.lease_ttl.as_millis() as u64,
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_unix: self.started_unix,
        };
        match self.commit(&Request::Write(cmd)).await {
            Some(_) => {
                let mut q = self.queue.lock();
                q.register = false;
                q.resync = true;
                true
            }
            None => false,
        }
    }

    /// Sends one batch; resolves waiters; on `UnknownEdge` schedules a
    /// re-registration and resync. False: cancelled.
    async fn send(&self, reset: bool, items: Vec<(Delta, Option<Waiter>)>) -> bool {
        let (deltas, waiters): (Vec<Delta>, Vec<Option<Waiter>>) = items.into_iter().unzip();
        let req = Request::Write(Command::Batch {
            edge: self.edge.clone(),
            seq: self.next_seq(),
            reset,
            deltas,
        });
        let Some(result) = self.commit(&req).await else {
            return false;
        };
        let Request::Write(Command::Batch { deltas, .. }) = req else {
            unreachable!("built above")
        };
        metrics::counter!("groupcast_membership_client_deltas_total")
            .increment(deltas.len() as u64);
        match result {
            CommandResult::Batch { refused, .. } => {
                let mut waiters = waiters;
                if !refused.is_empty() {
                    let mut q = self.queue.lock();
                    for i in refused {
                        let i = i as usize;
                        if let Some(Delta::Join {
                            channel, presence, ..
                        }) = deltas.get(i)
                        {
                            q.local.apply(&Delta::Leave {
                                channel: channel.clone(),
                                client: presence.client.clone(),
                            });
                        }
                        if let Some(w) = waiters.get_mut(i).and_then(Option::take) {
                            let _ =
                                w.send(Err(MembershipError::LimitExceeded("presence_max_clients")));
                        }
                    }
                }
                for w in waiters.into_iter().flatten() {
                    let _ = w.send(Ok(()));
                }
            }
            _ => {
                // Not registered (lease expired): register again, resend all.
                let mut q = self.queue.lock();
                q.register = true;
                q.resync = true;
                for w in waiters.into_iter().flatten() {
                    let _ = w.send(Ok(()));
                }
            }
        }
        true
    }
}

impl Shared {
    /// Replaces the edge's state at the service with `state`, in batches of
    /// `batch_max` (the first resets), then answers `waiting`: a join the
    /// service refused fails with the limit, the rest succeed. False:
    /// cancelled.
    async fn resync(&self, mut state: Vec<Delta>, waiting: Vec<(Delta, Waiter)>) -> bool {
        // The service announces what the reset dropped for good only at the
        // end marker (a resync's drop-and-re-add is no change).
        state.push(Delta::ResyncDone);
        let mut chunks = state
            .chunks(self.cfg.batch_max.max(1))
            .map(<[Delta]>::to_vec);
        let first = chunks.next().unwrap_or_default();
        for (i, chunk) in std::iter::once(first).chain(chunks).enumerate() {
            let items = chunk.into_iter().map(|d| (d, None)).collect();
            if !self.send(i == 0, items).await {
                return false;
            }
        }
        let q = self.queue.lock();
        for (d, w) in waiting {
            let refused = matches!(&d, Delta::Join { channel, presence, .. }
                if !q.local.presence.contains_key(&(channel.clone(), presence.client.clone())));
            let _ = w.send(if refused {
                Err(MembershipError::LimitExceeded("presence_max_clients"))
            } else {
                Ok(())
            });
        }
        true
    }
}

async fn flush_loop(s: Arc<Shared>) {
    loop {
        // Wait for work.
        loop {
            {
                let q = s.queue.lock();
                if q.register || q.resync || !q.deltas.is_empty() {
                    break;
                }
            }
            tokio::select! {
                _ = s.cancel.cancelled() => return,
                _ = s.wake.notified() => {}
            }
        }
        if s.queue.lock().register && !s.register().await {
            return;
        }
        // Let a batch fill: up to `flush_interval` or `batch_max` deltas.
        let deadline = tokio::time::Instant::now() + s.cfg.flush_interval;
        loop {
            {
                let q = s.queue.lock();
                if q.resync || q.register || q.deltas.len() >= s.cfg.batch_max {
                    break;
                }
            }
            tokio::select! {
                _ = s.cancel.cancelled() => return,
                _ = s.wake.notified() => {}
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        let work = {
            let mut q = s.queue.lock();
            if q.register {
                continue;
            }
            if q.resync {
                q.resync = false;
                // The local view already includes every queued delta; their
                // waiters are answered once the resync is committed.
                let waiting = q
                    .deltas
                    .drain(..)
                    .filter_map(|(d, w)| Some((d, w?)))
                    .collect();
                Work::Resync(q.local.deltas(), waiting)
            } else {
                let n = q.deltas.len().min(s.cfg.batch_max);
                Work::Batch(q.deltas.drain(..n).collect())
            }
        };
        metrics::gauge!("groupcast_membership_client_pending")
            .set(s.queue.lock().deltas.len() as f64);
        let sent = match work {
            Work::Batch(items) => s.send(false, items).await,
            Work::Resync(state, waiting) => s.resync(state, waiting).await,
        };
        if !sent {
            return;
        }
    }
}

/// What the flush task sends next.
enum Work {
    Batch(Vec<(Delta, Option<Waiter>)>),
    /// The edge's whole state, and the waiters of the queued deltas it covers.
    Resync(Vec<Delta>, Vec<(Delta, Waiter)>),
}

async fn renew_loop(s: Arc<Shared>) {
    let mut tick = tokio::time::interval(s.cfg.renew_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = s.cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if s.queue.lock().register {
            continue;
        }
        let started = Instant::now();
        match s
            .conn
            .call(&Request::Renew(s.edge.clone()), s.cfg.request_timeout)
            .await
        {
            Ok(Reply::Renewed(true)) => s.set_available(true),
            Ok(Reply::Renewed(false)) => {
                tracing::warn!("membership: lease lost; registering again");
                s.set_available(true);
                let mut q = s.queue.lock();
                q.register = true;
                q.resync = true;
                s.wake.notify_one();
            }
            Ok(other) => tracing::debug!(reply = ?other, "lease renewal not accepted"),
            Err(e) => {
                tracing::debug!(error = %e, "lease renewal failed");
                if started.elapsed() >= s.cfg.request_timeout {
                    s.set_available(false);
                }
            }
        }
    }
}

/// Polls the leader for one of its bounded logs (edge removals, cluster
/// events) every `removal_poll`: from this handle's first answer on (what
/// came before is not this edge's to announce), each answer with the mark
/// it was asked after.
struct LogPoll {
    s: Arc<Shared>,
    tick: tokio::time::Interval,
    /// None until the first answer.
    seen: Option<u64>,
}

impl LogPoll {
    fn new(s: Arc<Shared>) -> LogPoll {
        let mut tick = tokio::time::interval(s.cfg.removal_poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        LogPoll {
            s,
            tick,
            seen: None,
        }
    }

    /// The next answer to `query(after)`, with `after`; `None` once the
    /// handle stopped.
    async fn next(&mut self, query: fn(u64) -> Query) -> Option<(u64, QueryResult)> {
        let s = self.s.clone();
        loop {
            tokio::select! {
                _ = s.cancel.cancelled() => return None,
                _ = self.tick.tick() => {}
            }
            if !s.available.load(Ordering::Relaxed) {
                continue;
            }
            let req = Request::Query(query(self.seen.unwrap_or(u64::MAX)));
            let reply = tokio::select! {
                _ = s.cancel.cancelled() => return None,
                r = s.conn.call(&req, s.cfg.request_timeout) => r,
            };
            let Ok(Reply::Query(answer)) = reply else {
                continue;
            };
            let latest = match &answer {
                QueryResult::Removals { latest, .. } | QueryResult::Events { latest, .. } => {
                    *latest
                }
                _ => continue,
            };
            let Some(after) = self.seen else {
                self.seen = Some(latest);
                continue;
            };
            return Some((after, answer));
        }
    }

    /// The entries up to `latest` are handled. `latest` can be below
    /// `after` when a new leader's state is behind the old one's by a few
    /// entries: the higher mark is kept.
    fn done(&mut self, after: u64, latest: u64) {
        self.seen = Some(after.max(latest));
    }
}

/// Hands the entries of removed edges (other than this one) to the leave
/// handler, each once, in removal order.
async fn removal_loop(s: Arc<Shared>) {
    let mut poll = LogPoll::new(s.clone());
    while let Some((after, answer)) = poll.next(|after| Query::Removals { after }).await {
        let QueryResult::Removals {
            latest,
            removals,
            complete,
        } = answer
        else {
            continue;
        };
        if !complete {
            tracing::warn!(
                after,
                latest,
                "membership: some edge removals were missed; their leaves are not announced here"
            );
            metrics::counter!("groupcast_membership_client_removals_missed_total").increment(1);
        }
        // The leader answers only removals after `after`.
        for r in &removals {
            if r.edge == s.edge.name {
                continue;
            }
            tracing::info!(edge = %r.edge, entries = r.leaves.len(), "edge removed; announcing its leaves");
            if let Some(h) = s.leave_handler.get() {
                for l in &r.leaves {
                    h(&l.channel, l.presence.to_client_info());
                }
            }
        }
        poll.done(after, latest);
    }
}

fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Hands this edge's share of the cluster events to the event handler,
/// each once, in commit order: the events its own changes caused, and,
/// when it is the live edge with the smallest name, those of edges that
/// are no longer registered (a dead edge's channels vacated, its users
/// offline). Polls every `removal_poll` once a handler is set.
async fn events_loop(s: Arc<Shared>) {
    tokio::select! {
        _ = s.cancel.cancelled() => return,
        _ = s.events_wanted.notified() => {}
    }
    let mut poll = LogPoll::new(s.clone());
    while let Some((after, answer)) = poll.next(|after| Query::Events { after }).await {
        let QueryResult::Events {
            latest,
            events,
            complete,
        } = answer
        else {
            continue;
        };
        if !complete {
            tracing::warn!(after, latest, "membership: some cluster events were missed");
            metrics::counter!("groupcast_membership_client_events_missed_total").increment(1);
        }
        // Other edges' events: announced here only when their edge is gone
        // and this is the first live edge by name.
        let mut live: Option<Vec<String>> = None;
        if events.iter().any(|e| e.edge != s.edge.name) {
            let req = Request::Query(Query::Edges);
            if let Ok(Reply::Query(QueryResult::Edges(edges))) =
                s.conn.call(&req, s.cfg.request_timeout).await
            {
                live = Some(edges.into_iter().map(|e| e.edge.name).collect());
            } else {
                // Ask again next time, from the same point.
                continue;
            }
        }
        let first_live = live
            .as_ref()
            .and_then(|l| l.iter().min().cloned())
            .unwrap_or_default();
        for e in &events {
            let mine = e.edge == s.edge.name
                || (first_live == s.edge.name
                    && live.as_ref().is_some_and(|l| !l.contains(&e.edge)));
            if !mine {
                continue;
            }
            let kind = match e.kind {
                EventKind::Occupied => ClusterEventKind::ChannelOccupied,
                EventKind::Vacated => ClusterEventKind::ChannelVacated,
                EventKind::Online => ClusterEventKind::UserOnline,
                EventKind::Offline => ClusterEventKind::UserOffline,
            };
            let event = ClusterEvent {
                kind,
                name: e.name.clone(),
                seq: e.seq,
            };
            if let Some(h) = s.event_handler.get() {
                h(event);
            }
        }
        poll.done(after, latest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_it_cannot_work_with_are_refused_by_name() {
        let tls = TlsFiles::in_dir(std::path::Path::new("."), "edge");
        let ok = ClientConfig::new(vec!["127.0.0.1:1".into()], tls, "e");
        ok.validate().unwrap();
        let refused = |f: fn(&mut ClientConfig), needle: &str| {
            let mut c = ok.clone();
            f(&mut c);
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        };
        refused(|c| c.seeds.clear(), "no membership seed");
        refused(|c| c.edge_name.clear(), "edge_name");
        refused(|c| c.batch_max = 0, "batch_max");
        refused(|c| c.buffer_max = 0, "buffer_max");
        refused(|c| c.flush_interval = Duration::ZERO, "flush_interval");
        refused(|c| c.renew_every = c.lease_ttl, "renew_every");
        refused(|c| c.removal_poll = Duration::ZERO, "removal_poll");
    }
}
