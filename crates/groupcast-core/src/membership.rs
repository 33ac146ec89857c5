//! The `Membership` trait: who is present in which channel, which node holds
//! which subscriptions and users, and which nodes are alive — cluster-wide.
//!
//! # Contract
//! * `add_presence` completes before the node publishes the matching `join`,
//!   and `remove_presence` before the `leave`; so a client that saw `join`
//!   for X and then asks for presence sees X until X leaves (invariant 3).
//!   A completed `add_presence` is visible to `presence` on every node.
//! * Entries are keyed by (channel, client id); adding twice replaces.
//! * `subscribers_changed` and `connections_changed` never block: the counts
//!   they feed (`channels`, `user_nodes`, `nodes`) are eventually consistent
//!   (the clustered handle sends them in batches, within tens of ms).
//! * When a node dies, its presence entries leave within its lease TTL, and
//!   every other node is told through [`Membership::set_leave_handler`]'s
//!   handler, once per entry, so it can push `leave` to its local
//!   subscribers. A node is never told about its own entries.
//! * When the service cannot be reached, queries fail with
//!   [`MembershipError::Unavailable`] (clients get 108 "not available").
//!
//! [`memory::MemoryMembership`] is the single-node implementation
//! (`groupcast dev`); the Raft-backed handle lives in `groupcast-membership`.
//! Both pass [`crate::conformance::membership`].

pub mod memory;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use groupcast_proto::api::NodeInfo;
use groupcast_proto::client::ClientInfo;
use serde::Serialize;
use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum MembershipError {
    #[error("membership unavailable: {0}")]
    Unavailable(String),
    /// A named limit was hit (e.g. presence entries per channel).
    #[error("membership limit exceeded: {0}")]
    LimitExceeded(&'static str),
}

/// Counts for `presence_stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PresenceStats {
    pub num_clients: u32,
    pub num_users: u32,
}

/// One replica of a replicated membership service as it answered just now
/// (the operator dashboard, [`Membership::replicas`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReplicaStatus {
    /// Its id; `None` for a configured address that never answered (the
    /// service's member list was not reachable either).
    pub id: Option<u64>,
    /// Its address (`host:port`) as the service's member list has it.
    pub address: String,
    /// It answered within the time limit.
    pub reachable: bool,
    /// Why it did not answer.
    pub error: Option<String>,
    /// The replica's own role: `Leader`, `Follower`, `Candidate`,
    /// `Learner`; empty when unreachable.
    pub state: String,
    /// It is the leader (of the highest term among the answers).
    pub leader: bool,
    /// A voter, rather than a learner catching up.
    pub voter: bool,
    pub term: Option<u64>,
    pub last_log_index: Option<u64>,
    pub commit_index: Option<u64>,
    pub applied_index: Option<u64>,
    /// Entries behind: the leader's last log index minus this replica's
    /// applied index; `None` when no leader answered or this replica did not.
    pub lag: Option<u64>,
}

/// Told about presence entries that left because their node died (or was
/// replaced by a restart): `(channel, entry)`.
pub type LeaveHandler = Arc<dyn Fn(&str, ClientInfo) + Send + Sync>;

/// Told the name of another node the service removed with presence entries
/// (its lease expired, or it left), after its entries went to the
/// [`LeaveHandler`].
pub type RemovalHandler = Arc<dyn Fn(&str) + Send + Sync>;

/// A user as the service knows them (API `user_status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserStatus {
    pub user: String,
    /// Open connections on every node.
    pub connections: u64,
    /// When a connection of theirs last opened or closed (Unix ms); 0:
    /// unknown.
    pub last_seen_ms: u64,
}

/// A cluster-wide change, announced once (by one node) per change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterEvent {
    pub kind: ClusterEventKind,
    /// The channel or the user.
    pub name: String,
    /// Increases with every event of the cluster (of the node, in memory):
    /// events announced by different nodes can arrive out of order, and
    /// this orders them.
    pub seq: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterEventKind {
    /// A channel got its first subscriber on any node.
    ChannelOccupied,
    /// A channel lost its last subscriber on every node.
    ChannelVacated,
    /// A user got their first connection on any node.
    UserOnline,
    /// A user lost their last connection on every node.
    UserOffline,
}

/// Told about [`ClusterEvent`]s this node is to announce.
pub type EventHandler = Arc<dyn Fn(ClusterEvent) + Send + Sync>;

/// Most users one `user_status` call asks about.
pub const MAX_USER_STATUS: usize = 1000;

/// Most channels one [`Membership::channels`] call is answered with: the
/// clustered service caps every answer here whatever `limit` says, so a
/// caller that wants the same answer from every implementation asks for
/// at most this many.
pub const MAX_CHANNELS_PER_QUERY: u32 = 10_000;

#[async_trait]
pub trait Membership: Send + Sync + 'static {
    async fn add_presence(&self, channel: &str, info: ClientInfo) -> Result<(), MembershipError>;
    async fn remove_presence(&self, channel: &str, client: &str) -> Result<(), MembershipError>;
    /// Present clients of a channel, keyed by client id.
    async fn presence(
        &self,
        channel: &str,
    ) -> Result<BTreeMap<String, ClientInfo>, MembershipError>;
    async fn presence_stats(&self, channel: &str) -> Result<PresenceStats, MembershipError>;

    /// This node's local subscriber count of `channel` changed by `delta`.
    fn subscribers_changed(&self, channel: &str, delta: i64);
    /// This node's connection count of `user` changed by `delta`.
    fn connections_changed(&self, user: &str, delta: i64);
    /// Channels with at least one subscriber on any node whose name starts
    /// with `prefix`, with cluster-wide subscriber counts; at most `limit`,
    /// which callers keep at or below [`MAX_CHANNELS_PER_QUERY`] (the
    /// clustered handle never answers with more).
    async fn channels(
        &self,
        prefix: &str,
        limit: u32,
    ) -> Result<BTreeMap<String, u64>, MembershipError>;
    /// Names of the nodes holding connections of `user` (a single-node
    /// implementation, which has no name, answers `""` for itself).
    async fn user_nodes(&self, user: &str) -> Result<Vec<String>, MembershipError>;
    /// Every live node, this one included, with its counts as the service
    /// knows them (the API's `info`; `uptime` counts from registration).
    async fn nodes(&self) -> Result<Vec<NodeInfo>, MembershipError>;
    /// This node's name and uid as the service knows them; `None` for a
    /// single-node implementation that has none of its own.
    fn local_node(&self) -> Option<(String, String)>;
    /// Where leaves of dead nodes' entries go (set once, by the edge).
    fn set_leave_handler(&self, handler: LeaveHandler);
    /// Where the names of other nodes removed with presence entries go (set
    /// once, by the edge: it tells a node whose lease expired that it is no
    /// longer in presence). A single node's membership has no others.
    fn set_removal_handler(&self, handler: RemovalHandler) {
        let _ = handler;
    }
    /// Connection counts and last-seen times of `users` (at most
    /// [`MAX_USER_STATUS`]), in the order asked.
    async fn user_status(&self, users: &[String]) -> Result<Vec<UserStatus>, MembershipError>;
    /// Where this node's share of the cluster events goes (set once, by the
    /// edge): each event reaches exactly one node's handler, normally the
    /// node whose change caused it (another live node for a dead node's),
    /// within a fraction of a second. Until it is set, none are watched.
    fn set_event_handler(&self, handler: EventHandler);
    /// Whether the service answers now (`/readyz`, dashboard).
    fn is_available(&self) -> bool {
        true
    }
    /// Every replica of the service behind this handle, each asked for its
    /// own status, within `timeout` in all (one that does not answer in
    /// time is listed as unreachable). `None`: no replicated service (a
    /// single node's in-memory membership). For the operator dashboard;
    /// the caller bounds how often it asks.
    async fn replicas(&self, timeout: Duration) -> Option<Vec<ReplicaStatus>> {
        let _ = timeout;
        None
    }
}
