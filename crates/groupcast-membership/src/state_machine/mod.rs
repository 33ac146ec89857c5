//! The replicated state: edges with leases, subscriptions, presence and
//! users. Pure and deterministic: `apply` is called with committed commands
//! in log order on every replica and must give the same result everywhere.
//!
//! This file holds the data, the limits and [`State::apply`] (one committed
//! command); the rest, by concern:
//!
//! * `deltas`: one edge's delta (counts, presence, last seen) applied.
//! * `edges`: edges registered, cleared and removed, and the removal log.
//! * `events`: occupancy and online events, and resyncs that defer them.
//! * `query`: answers to queries, reads of the bounded logs.
//! * `snapshot`: reading a snapshot, current or from the first release.

mod deltas;
mod edges;
mod events;
mod query;
mod snapshot;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::types::{Command, CommandResult, Delta, EdgeId, Event, Presence, Removal};

// The most channels one `Channels` query returns is part of the
// `Membership::channels` contract:
// `groupcast_core::membership::MAX_CHANNELS_PER_QUERY` (see `query`).

/// Edge removals (with their presence entries) kept for the other edges to
/// announce the leaves (`Query::Removals`). An edge polls several times a
/// second, so it only misses some when more edges than this die at once.
pub const MAX_REMOVALS_KEPT: usize = 64;

/// Occupancy and online events kept for the edges to announce
/// (`Query::Events`, polled several times a second).
pub const MAX_EVENTS_KEPT: usize = 10_000;

/// Users whose last-seen time is kept. Beyond it, the oldest tenth is
/// forgotten at once (their status says 0: unknown).
pub const MAX_LAST_SEEN_USERS: usize = 100_000;

/// Most users one `UserStatus` query asks about.
pub const MAX_USERS_PER_QUERY: usize = 1_000;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct EdgeState {
    incarnation: u64,
    addr: String,
    ttl_ms: u64,
    version: String,
    started_unix: u64,
    /// Last applied batch and what it refused, answered again to a retry.
    last_seq: u64,
    last_refused: Vec<u32>,
    subscriptions: BTreeMap<String, u64>,
    connections: BTreeMap<String, u64>,
    /// (channel, client) entries this edge added.
    presence: BTreeSet<(String, String)>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct ChannelState {
    /// edge name → local subscriber count.
    subscribers: BTreeMap<String, u64>,
    /// client id → (edge name, entry).
    presence: BTreeMap<String, (String, Presence)>,
}

impl ChannelState {
    fn is_empty(&self) -> bool {
        self.subscribers.is_empty() && self.presence.is_empty()
    }
}

/// The membership state machine's data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    edges: BTreeMap<String, EdgeState>,
    channels: BTreeMap<String, ChannelState>,
    /// user → edge name → connection count.
    users: BTreeMap<String, BTreeMap<String, u64>>,
    /// The latest removals with entries, oldest first (bounded).
    removals: VecDeque<Removal>,
    removal_seq: u64,
    /// user → last connection opened or closed (Unix ms; bounded by
    /// [`MAX_LAST_SEEN_USERS`]).
    last_seen: BTreeMap<String, u64>,
    /// The latest occupancy and online events, oldest first (bounded).
    events: VecDeque<Event>,
    event_seq: u64,
    /// Edge → what its unfinished resync turned off (is a user, name): said
    /// only at its `ResyncDone` (or when the edge is removed), unless it came
    /// back on meanwhile.
    resyncing: BTreeMap<String, BTreeSet<(bool, String)>>,
    /// While a batch applies: (is a user, name) → on before the batch, for
    /// the channels and users that changed during it (only net changes are
    /// recorded: a resync's drop-and-re-add is none). Not stored.
    #[serde(skip)]
    batch_changes: Option<BTreeMap<(bool, String), bool>>,
}

impl State {
    /// Applies one committed command.
    pub fn apply(&mut self, cmd: &Command) -> CommandResult {
        match cmd {
            Command::Register {
                edge,
                addr,
                ttl_ms,
                version,
                started_unix,
            } => {
                let leaves = match self.edges.get(&edge.name) {
                    Some(e) if e.incarnation != edge.incarnation => {
                        let old = EdgeId {
                            name: edge.name.clone(),
                            incarnation: e.incarnation,
                        };
                        self.remove_edge(&old)
                    }
                    _ => Vec::new(),
                };
                let e = self.edges.entry(edge.name.clone()).or_default();
                e.incarnation = edge.incarnation;
                e.addr = addr.clone();
                e.ttl_ms = *ttl_ms;
                e.version = version.clone();
                e.started_unix = *started_unix;
                self.record_removal(&edge.name, &leaves);
                CommandResult::Registered { leaves }
            }
            Command::Batch {
                edge,
                seq,
                reset,
                deltas,
            } => {
                if !self.is_registered(edge) {
                    return CommandResult::UnknownEdge;
                }
                let e = &self.edges[&edge.name];
                if *seq <= e.last_seq {
                    let refused = if *seq == e.last_seq {
                        e.last_refused.clone()
                    } else {
                        Vec::new()
                    };
                    return CommandResult::Batch {
                        applied: false,
                        refused,
                    };
                }
                self.batch_changes = Some(BTreeMap::new());
                if *reset {
                    self.clear_edge(&edge.name);
                }
                let mut refused = Vec::new();
                for (i, d) in deltas.iter().enumerate() {
                    if !self.apply_delta(&edge.name, d) {
                        refused.push(i as u32);
                    }
                }
                for ((user, name), before) in self.batch_changes.take().unwrap_or_default() {
                    let now = self.is_on(user, &name);
                    if now == before {
                        continue;
                    }
                    let key = (user, name);
                    if now && self.resync_resolves(&key) {
                        // Dropped by a resync and back: no change.
                        continue;
                    }
                    if !now && *reset {
                        self.resyncing
                            .entry(edge.name.clone())
                            .or_default()
                            .insert(key);
                        continue;
                    }
                    self.record_event(&edge.name, key.0, &key.1, now);
                }
                if deltas.iter().any(|d| matches!(d, Delta::ResyncDone)) {
                    self.finish_resync(&edge.name);
                }
                let e = self.edges.get_mut(&edge.name).expect("registered above");
                e.last_seq = *seq;
                e.last_refused = refused.clone();
                CommandResult::Batch {
                    applied: true,
                    refused,
                }
            }
            Command::Remove { edge, reason: _ } => {
                if !self.is_registered(edge) {
                    return CommandResult::UnknownEdge;
                }
                let leaves = self.remove_edge(edge);
                self.record_removal(&edge.name, &leaves);
                CommandResult::Removed { leaves }
            }
        }
    }
}
