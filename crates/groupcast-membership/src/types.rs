//! Raft type configuration, the replicated commands and the queries.

use std::collections::BTreeMap;
use std::io::Cursor;

use groupcast_proto::client::ClientInfo;
use serde::{Deserialize, Serialize};

/// Raft node id of a membership replica.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// openraft type configuration of the membership service.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        SnapshotData = Cursor<Vec<u8>>,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;

/// One edge process: its configured name and a random number drawn at start,
/// so a restarted edge replaces (and cleans up) its previous life.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EdgeId {
    pub name: String,
    pub incarnation: u64,
}

/// A presence entry as replicated. `conn_info` / `chan_info` are JSON text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    pub client: String,
    pub user: String,
    pub conn_info: Option<String>,
    pub chan_info: Option<String>,
}

impl From<&ClientInfo> for Presence {
    fn from(i: &ClientInfo) -> Self {
        Presence {
            client: i.client.clone(),
            user: i.user.clone(),
            conn_info: i.conn_info.as_ref().map(|r| r.get().to_string()),
            chan_info: i.chan_info.as_ref().map(|r| r.get().to_string()),
        }
    }
}

impl Presence {
    /// Back to the protocol type. Stored JSON was valid when it was written;
    /// if it somehow is not, the field is dropped rather than failing a query.
    pub fn to_client_info(&self) -> ClientInfo {
        let raw = |s: &Option<String>| {
            s.as_ref()
                .and_then(|s| serde_json::value::RawValue::from_string(s.clone()).ok())
                .map(Into::into)
        };
        ClientInfo {
            user: self.user.clone(),
            client: self.client.clone(),
            conn_info: raw(&self.conn_info),
            chan_info: raw(&self.chan_info),
        }
    }
}

/// One change an edge reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Delta {
    /// Local subscriber count of `channel` on this edge changed by `delta`.
    Subscribers { channel: String, delta: i64 },
    /// Local connection count of `user` on this edge changed by `delta`.
    Connections { user: String, delta: i64 },
    /// A client joined `channel`'s presence. Refused when the channel already
    /// holds `max_clients` other entries (`presence_max_clients`).
    Join {
        channel: String,
        presence: Presence,
        max_clients: u32,
    },
    /// A client left `channel`'s presence.
    Leave { channel: String, client: String },
    /// A connection of `user` opened or closed on this edge at `unix_ms`
    /// (the edge's clock): the user's "last seen". Added after the first
    /// release: replicas must be upgraded before the edges that send it.
    Seen { user: String, unix_ms: u64 },
    /// Ends a resync (the state after a `reset`, which may span several
    /// batches): channels and users the reset turned off that did not come
    /// back are announced vacated/offline only now. Added after the first
    /// release, like `Seen`.
    ResyncDone,
}

/// A replicated command (the Raft log's application data).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// An edge announces itself. An earlier incarnation of the same name is
    /// removed first (its entries leave).
    Register {
        edge: EdgeId,
        addr: String,
        ttl_ms: u64,
        /// The edge's version and start time (Unix seconds), for `info`.
        version: String,
        started_unix: u64,
    },
    /// Deltas from one edge. `seq` increases by one per batch of that edge
    /// incarnation; a batch whose `seq` was already applied is not applied
    /// again (retries are idempotent). `reset` first drops everything the
    /// edge held (a full resync after the edge lost track).
    Batch {
        edge: EdgeId,
        seq: u64,
        reset: bool,
        deltas: Vec<Delta>,
    },
    /// Removes an edge and everything it held: its lease expired (committed by
    /// the leader) or it left gracefully.
    Remove { edge: EdgeId, reason: RemoveReason },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RemoveReason {
    LeaseExpired,
    Left,
}

/// A presence entry that left because its edge was removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leave {
    pub channel: String,
    pub presence: Presence,
}

/// What applying a [`Command`] produced.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// Membership-change and blank entries.
    #[default]
    None,
    Registered {
        /// Entries of a replaced earlier incarnation.
        leaves: Vec<Leave>,
    },
    Batch {
        /// False when this `seq` had already been applied (a retry).
        applied: bool,
        /// Indices of `Join` deltas refused by `max_clients`.
        refused: Vec<u32>,
    },
    /// The edge (this incarnation) is not registered: register and resync.
    UnknownEdge,
    Removed {
        leaves: Vec<Leave>,
    },
}

/// A read against the state machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Query {
    Presence {
        channel: String,
    },
    PresenceStats {
        channel: String,
    },
    /// Channels with at least one subscriber anywhere, with total counts.
    Channels {
        prefix: String,
        limit: u32,
    },
    /// Edges holding connections of `user`.
    UserNodes {
        user: String,
    },
    /// Registered edges.
    Edges,
    /// Edge removals (with their presence entries) after sequence number
    /// `after`; the leader answers from its own state (not linearizable: an
    /// edge polls this and only needs to see each removal once, in order).
    Removals {
        after: u64,
    },
    /// Connection counts and last-seen times of these users.
    UserStatus {
        users: Vec<String>,
    },
    /// Occupancy and online events after sequence number `after` (answered
    /// like `Removals`).
    Events {
        after: u64,
    },
}

/// A user as the membership service knows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserStatus {
    pub user: String,
    /// Open connections on every edge.
    pub connections: u64,
    /// When a connection of theirs last opened or closed (Unix ms, by the
    /// edge's clock); 0 when never recorded (or forgotten).
    pub last_seen_ms: u64,
}

/// What changed, cluster-wide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// A channel got its first subscriber on any edge.
    Occupied,
    /// A channel lost its last subscriber on every edge.
    Vacated,
    /// A user got their first connection on any edge.
    Online,
    /// A user lost their last connection on every edge.
    Offline,
}

/// One occupancy or online change, in commit order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Increases by one per event.
    pub seq: u64,
    pub kind: EventKind,
    /// The channel or the user.
    pub name: String,
    /// The edge whose change caused it (for a removed edge: that edge).
    pub edge: String,
}

/// One edge removal kept for the other edges to announce its leaves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removal {
    /// Increases by one per removal with entries.
    pub seq: u64,
    pub edge: String,
    pub leaves: Vec<Leave>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeInfo {
    pub edge: EdgeId,
    pub addr: String,
    pub ttl_ms: u64,
    pub version: String,
    pub started_unix: u64,
    /// Local subscriptions (sum over channels) and channels with any.
    pub subscriptions: u64,
    pub channels: u64,
    /// Connections of identified users (sum) and distinct users.
    pub connections: u64,
    pub users: u64,
    pub presence: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueryResult {
    Presence(Vec<Presence>),
    PresenceStats {
        num_clients: u32,
        num_users: u32,
    },
    Channels(BTreeMap<String, u64>),
    UserNodes(Vec<String>),
    Edges(Vec<EdgeInfo>),
    Removals {
        /// Sequence number of the newest removal (0: none yet).
        latest: u64,
        /// Removals after the asked-for sequence number, oldest first.
        removals: Vec<Removal>,
        /// False when some removals after it were already forgotten
        /// (`state_machine::MAX_REMOVALS_KEPT`).
        complete: bool,
    },
    UserStatus(Vec<UserStatus>),
    Events {
        /// Sequence number of the newest event (0: none yet).
        latest: u64,
        /// Events after the asked-for sequence number, oldest first.
        events: Vec<Event>,
        /// False when some events after it were already forgotten
        /// (`state_machine::MAX_EVENTS_KEPT`).
        complete: bool,
    },
}
