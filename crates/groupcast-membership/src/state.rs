//! The replicated state: edges with leases, subscriptions, presence and
//! users. Pure and deterministic: `apply` is called with committed commands
//! in log order on every replica and must give the same result everywhere.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::types::{
    Command, CommandResult, Delta, EdgeId, EdgeInfo, Leave, Presence, Query, QueryResult, Removal,
};

/// Most channels one `Channels` query returns.
pub const MAX_CHANNELS_PER_QUERY: u32 = 10_000;

/// Edge removals (with their presence entries) kept for the other edges to
/// announce the leaves (`Query::Removals`). An edge polls several times a
/// second, so it only misses some when more edges than this die at once.
pub const MAX_REMOVALS_KEPT: usize = 64;

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
}

fn add_count(map: &mut BTreeMap<String, u64>, key: &str, delta: i64) -> i64 {
    let old = map.get(key).copied().unwrap_or(0);
    let new = (old as i64).saturating_add(delta).max(0) as u64;
    if new == 0 {
        map.remove(key);
    } else {
        map.insert(key.to_string(), new);
    }
    new as i64 - old as i64
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
                if *reset {
                    self.clear_edge(&edge.name);
                }
                let mut refused = Vec::new();
                for (i, d) in deltas.iter().enumerate() {
                    if !self.apply_delta(&edge.name, d) {
                        refused.push(i as u32);
                    }
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

    /// Keeps a removal's entries for the other edges (bounded).
    fn record_removal(&mut self, edge: &str, leaves: &[Leave]) {
        if leaves.is_empty() {
            return;
        }
        self.removal_seq += 1;
        self.removals.push_back(Removal {
            seq: self.removal_seq,
            edge: edge.to_string(),
            leaves: leaves.to_vec(),
        });
        while self.removals.len() > MAX_REMOVALS_KEPT {
            self.removals.pop_front();
        }
    }

    pub fn is_registered(&self, edge: &EdgeId) -> bool {
        self.edges
            .get(&edge.name)
            .is_some_and(|e| e.incarnation == edge.incarnation)
    }

    /// Registered edges with their lease TTL.
    pub fn edges(&self) -> impl Iterator<Item = (EdgeId, u64)> + '_ {
        self.edges.iter().map(|(name, e)| {
            (
                EdgeId {
                    name: name.clone(),
                    incarnation: e.incarnation,
                },
                e.ttl_ms,
            )
        })
    }

    /// Returns false when a `Join` was refused by its limit.
    fn apply_delta(&mut self, edge: &str, d: &Delta) -> bool {
        let e = self.edges.get_mut(edge).expect("caller checked");
        match d {
            Delta::Subscribers { channel, delta } => {
                let change = add_count(&mut e.subscriptions, channel, *delta);
                if change != 0 {
                    let ch = self.channels.entry(channel.clone()).or_default();
                    add_count(&mut ch.subscribers, edge, change);
                    if ch.is_empty() {
                        self.channels.remove(channel);
                    }
                }
            }
            Delta::Connections { user, delta } => {
                let change = add_count(&mut e.connections, user, *delta);
                if change != 0 {
                    let u = self.users.entry(user.clone()).or_default();
                    add_count(u, edge, change);
                    if u.is_empty() {
                        self.users.remove(user);
                    }
                }
            }
            Delta::Join {
                channel,
                presence,
                max_clients,
            } => {
                let ch = self.channels.entry(channel.clone()).or_default();
                if !ch.presence.contains_key(&presence.client)
                    && ch.presence.len() >= *max_clients as usize
                {
                    if ch.is_empty() {
                        self.channels.remove(channel);
                    }
                    return false;
                }
                if let Some((owner, _)) = ch.presence.insert(
                    presence.client.clone(),
                    (edge.to_string(), presence.clone()),
                ) {
                    if owner != edge {
                        if let Some(o) = self.edges.get_mut(&owner) {
                            o.presence
                                .remove(&(channel.clone(), presence.client.clone()));
                        }
                    }
                }
                self.edges
                    .get_mut(edge)
                    .expect("caller checked")
                    .presence
                    .insert((channel.clone(), presence.client.clone()));
            }
            Delta::Leave { channel, client } => {
                if e.presence.remove(&(channel.clone(), client.clone())) {
                    if let Some(ch) = self.channels.get_mut(channel) {
                        ch.presence.remove(client);
                        if ch.is_empty() {
                            self.channels.remove(channel);
                        }
                    }
                }
            }
        }
        true
    }

    /// Drops everything the edge holds; returns its presence entries.
    fn clear_edge(&mut self, name: &str) -> Vec<Leave> {
        let Some(e) = self.edges.get_mut(name) else {
            return Vec::new();
        };
        let subs = std::mem::take(&mut e.subscriptions);
        let conns = std::mem::take(&mut e.connections);
        let presence = std::mem::take(&mut e.presence);
        for channel in subs.keys() {
            if let Some(ch) = self.channels.get_mut(channel) {
                ch.subscribers.remove(name);
                if ch.is_empty() {
                    self.channels.remove(channel);
                }
            }
        }
        for user in conns.keys() {
            if let Some(u) = self.users.get_mut(user) {
                u.remove(name);
                if u.is_empty() {
                    self.users.remove(user);
                }
            }
        }
        let mut leaves = Vec::with_capacity(presence.len());
        for (channel, client) in presence {
            if let Some(ch) = self.channels.get_mut(&channel) {
                if let Some((_, p)) = ch.presence.remove(&client) {
                    leaves.push(Leave {
                        channel: channel.clone(),
                        presence: p,
                    });
                }
                if ch.is_empty() {
                    self.channels.remove(&channel);
                }
            }
        }
        leaves
    }

    fn remove_edge(&mut self, edge: &EdgeId) -> Vec<Leave> {
        let leaves = self.clear_edge(&edge.name);
        self.edges.remove(&edge.name);
        leaves
    }

    /// Answers a query from this replica's state.
    pub fn query(&self, q: &Query) -> QueryResult {
        match q {
            Query::Presence { channel } => QueryResult::Presence(
                self.channels
                    .get(channel)
                    .map(|c| c.presence.values().map(|(_, p)| p.clone()).collect())
                    .unwrap_or_default(),
            ),
            Query::PresenceStats { channel } => {
                let (clients, users) = self
                    .channels
                    .get(channel)
                    .map(|c| {
                        let users: BTreeSet<&str> =
                            c.presence.values().map(|(_, p)| p.user.as_str()).collect();
                        (c.presence.len(), users.len())
                    })
                    .unwrap_or((0, 0));
                QueryResult::PresenceStats {
                    num_clients: clients as u32,
                    num_users: users as u32,
                }
            }
            Query::Channels { prefix, limit } => QueryResult::Channels(
                self.channels
                    .range(prefix.clone()..)
                    .take_while(|(name, _)| name.starts_with(prefix.as_str()))
                    .filter(|(_, c)| !c.subscribers.is_empty())
                    .take((*limit).min(MAX_CHANNELS_PER_QUERY) as usize)
                    .map(|(name, c)| (name.clone(), c.subscribers.values().sum()))
                    .collect(),
            ),
            Query::UserNodes { user } => QueryResult::UserNodes(
                self.users
                    .get(user)
                    .map(|u| u.keys().cloned().collect())
                    .unwrap_or_default(),
            ),
            Query::Edges => QueryResult::Edges(
                self.edges
                    .iter()
                    .map(|(name, e)| EdgeInfo {
                        edge: EdgeId {
                            name: name.clone(),
                            incarnation: e.incarnation,
                        },
                        addr: e.addr.clone(),
                        ttl_ms: e.ttl_ms,
                        version: e.version.clone(),
                        started_unix: e.started_unix,
                        subscriptions: e.subscriptions.values().sum(),
                        channels: e.subscriptions.len() as u64,
                        connections: e.connections.values().sum(),
                        users: e.connections.len() as u64,
                        presence: e.presence.len() as u64,
                    })
                    .collect(),
            ),
            Query::Removals { after } => {
                let oldest = self.removals.front().map(|r| r.seq);
                QueryResult::Removals {
                    latest: self.removal_seq,
                    removals: self
                        .removals
                        .iter()
                        .filter(|r| r.seq > *after)
                        .cloned()
                        .collect(),
                    complete: *after >= self.removal_seq || oldest.is_some_and(|o| o <= after + 1),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::RemoveReason;

    fn edge(name: &str, inc: u64) -> EdgeId {
        EdgeId {
            name: name.into(),
            incarnation: inc,
        }
    }

    fn register(s: &mut State, e: &EdgeId) -> CommandResult {
        s.apply(&Command::Register {
            edge: e.clone(),
            addr: "a".into(),
            ttl_ms: 5000,
            version: String::new(),
            started_unix: 0,
        })
    }

    fn join(channel: &str, client: &str, user: &str, max: u32) -> Delta {
        Delta::Join {
            channel: channel.into(),
            presence: Presence {
                client: client.into(),
                user: user.into(),
                conn_info: None,
                chan_info: Some("{\"x\":1}".into()),
            },
            max_clients: max,
        }
    }

    fn batch(e: &EdgeId, seq: u64, deltas: Vec<Delta>) -> Command {
        Command::Batch {
            edge: e.clone(),
            seq,
            reset: false,
            deltas,
        }
    }

    fn presence_clients(s: &State, channel: &str) -> Vec<String> {
        match s.query(&Query::Presence {
            channel: channel.into(),
        }) {
            QueryResult::Presence(p) => p.into_iter().map(|p| p.client).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_retried_batch_is_applied_once() {
        let mut s = State::default();
        let a = edge("a", 1);
        register(&mut s, &a);
        let b1 = batch(
            &a,
            1,
            vec![Delta::Subscribers {
                channel: "c".into(),
                delta: 1,
            }],
        );
        assert_eq!(
            s.apply(&b1),
            CommandResult::Batch {
                applied: true,
                refused: vec![]
            }
        );
        let after_first = s.clone();
        assert_eq!(
            s.apply(&b1),
            CommandResult::Batch {
                applied: false,
                refused: vec![]
            }
        );
        assert_eq!(s, after_first, "the retry changed nothing");
        assert_eq!(
            s.query(&Query::Channels {
                prefix: String::new(),
                limit: 10
            }),
            QueryResult::Channels([("c".to_string(), 1)].into())
        );
    }

    #[test]
    fn limits_refuse_and_a_retry_reports_the_same_refusals() {
        let mut s = State::default();
        let a = edge("a", 1);
        register(&mut s, &a);
        let b = batch(
            &a,
            1,
            vec![
                join("c", "1", "u", 2),
                join("c", "2", "u", 2),
                join("c", "3", "v", 2),
                join("c", "1", "u", 2),
            ],
        );
        let first = s.apply(&b);
        assert_eq!(
            first,
            CommandResult::Batch {
                applied: true,
                refused: vec![2]
            },
            "the third client is over the limit, re-adding an existing one is not"
        );
        assert_eq!(
            s.apply(&b),
            CommandResult::Batch {
                applied: false,
                refused: vec![2]
            }
        );
        assert_eq!(presence_clients(&s, "c"), ["1", "2"]);
    }

    fn removals(s: &State, after: u64) -> (u64, Vec<(u64, String)>, bool) {
        match s.query(&Query::Removals { after }) {
            QueryResult::Removals {
                latest,
                removals,
                complete,
            } => (
                latest,
                removals.into_iter().map(|r| (r.seq, r.edge)).collect(),
                complete,
            ),
            other => panic!("{other:?}"),
        }
    }

    /// Removals with entries are kept for the other edges, at most
    /// MAX_REMOVALS_KEPT; a poll from before the oldest kept one is told it
    /// missed some. Removals without entries and restarts without entries
    /// are not recorded; a restart that replaces entries is.
    #[test]
    fn removals_are_kept_for_the_other_edges_up_to_the_limit() {
        let mut s = State::default();
        assert_eq!(removals(&s, 0), (0, vec![], true));
        let empty = edge("empty", 1);
        register(&mut s, &empty);
        s.apply(&Command::Remove {
            edge: empty,
            reason: RemoveReason::Left,
        });
        assert_eq!(removals(&s, 0), (0, vec![], true), "no entries, no record");
        let total = MAX_REMOVALS_KEPT as u64 + 6;
        for i in 0..total {
            let e = edge(&format!("e{i}"), 1);
            register(&mut s, &e);
            s.apply(&batch(&e, 1, vec![join("c", &format!("k{i}"), "u", 1000)]));
            if i == 0 {
                // A restart (new incarnation) replaces the old entries.
                register(&mut s, &edge("e0", 2));
                continue;
            }
            s.apply(&Command::Remove {
                edge: e,
                reason: RemoveReason::LeaseExpired,
            });
        }
        let (latest, kept, complete) = removals(&s, 0);
        assert_eq!(latest, total);
        assert_eq!(kept.len(), MAX_REMOVALS_KEPT);
        assert_eq!(
            kept[0].0,
            total - MAX_REMOVALS_KEPT as u64 + 1,
            "oldest dropped"
        );
        assert!(!complete, "a poll from 0 missed the dropped ones");
        let oldest_kept = kept[0].0;
        assert!(
            removals(&s, oldest_kept - 1).2,
            "nothing missed from just before the oldest"
        );
        let (_, tail, complete) = removals(&s, total - 2);
        assert!(complete);
        assert_eq!(
            tail,
            [
                (total - 1, format!("e{}", total - 2)),
                (total, format!("e{}", total - 1))
            ]
        );
        assert_eq!(removals(&s, total), (total, vec![], true));
        assert_eq!(removals(&s, u64::MAX), (total, vec![], true));
    }

    #[test]
    fn removing_an_edge_drops_everything_and_reports_each_leave() {
        let mut s = State::default();
        let (a, b) = (edge("a", 1), edge("b", 1));
        register(&mut s, &a);
        register(&mut s, &b);
        s.apply(&batch(
            &a,
            1,
            vec![
                join("c1", "1", "u", 10),
                join("c2", "2", "u", 10),
                Delta::Subscribers {
                    channel: "c1".into(),
                    delta: 3,
                },
                Delta::Connections {
                    user: "u".into(),
                    delta: 2,
                },
            ],
        ));
        s.apply(&batch(
            &b,
            1,
            vec![
                join("c1", "3", "w", 10),
                Delta::Subscribers {
                    channel: "c1".into(),
                    delta: 1,
                },
                Delta::Connections {
                    user: "u".into(),
                    delta: 1,
                },
            ],
        ));
        assert_eq!(
            s.query(&Query::UserNodes { user: "u".into() }),
            QueryResult::UserNodes(vec!["a".into(), "b".into()])
        );
        let CommandResult::Removed { leaves } = s.apply(&Command::Remove {
            edge: a.clone(),
            reason: RemoveReason::LeaseExpired,
        }) else {
            panic!()
        };
        let mut left: Vec<_> = leaves
            .iter()
            .map(|l| (l.channel.as_str(), l.presence.client.as_str()))
            .collect();
        left.sort();
        assert_eq!(left, [("c1", "1"), ("c2", "2")]);
        assert_eq!(presence_clients(&s, "c1"), ["3"]);
        assert_eq!(presence_clients(&s, "c2"), Vec::<String>::new());
        assert_eq!(
            s.query(&Query::Channels {
                prefix: "c".into(),
                limit: 10
            }),
            QueryResult::Channels([("c1".to_string(), 1)].into())
        );
        assert_eq!(
            s.query(&Query::UserNodes { user: "u".into() }),
            QueryResult::UserNodes(vec!["b".into()])
        );
        // A batch from the removed edge is refused so it re-registers.
        assert_eq!(s.apply(&batch(&a, 2, vec![])), CommandResult::UnknownEdge);
    }

    #[test]
    fn a_channels_query_returns_at_most_the_named_limit() {
        let mut s = State::default();
        let a = edge("a", 1);
        register(&mut s, &a);
        let n = MAX_CHANNELS_PER_QUERY as usize + 5;
        let deltas = (0..n)
            .map(|i| Delta::Subscribers {
                channel: format!("c{i:06}"),
                delta: 1,
            })
            .collect();
        s.apply(&batch(&a, 1, deltas));
        let count = |prefix: &str, limit| match s.query(&Query::Channels {
            prefix: prefix.into(),
            limit,
        }) {
            QueryResult::Channels(c) => c.len(),
            other => panic!("{other:?}"),
        };
        assert_eq!(count("", u32::MAX), MAX_CHANNELS_PER_QUERY as usize);
        assert_eq!(count("", 3), 3);
        assert_eq!(count("c00001", 100), 10, "prefix c00001x");
    }

    #[test]
    fn a_new_incarnation_replaces_the_old_one() {
        let mut s = State::default();
        let old = edge("a", 1);
        register(&mut s, &old);
        s.apply(&batch(&old, 1, vec![join("c", "1", "u", 10)]));
        let CommandResult::Registered { leaves } = register(&mut s, &edge("a", 2)) else {
            panic!()
        };
        assert_eq!(leaves.len(), 1);
        assert!(presence_clients(&s, "c").is_empty());
        assert_eq!(s.apply(&batch(&old, 2, vec![])), CommandResult::UnknownEdge);
        // The new incarnation starts its own sequence.
        assert!(matches!(
            s.apply(&batch(&edge("a", 2), 1, vec![])),
            CommandResult::Batch { applied: true, .. }
        ));
    }

    #[test]
    fn reset_replaces_the_edges_state_and_counts_never_go_negative() {
        let mut s = State::default();
        let a = edge("a", 1);
        register(&mut s, &a);
        s.apply(&batch(
            &a,
            1,
            vec![
                join("c", "1", "u", 10),
                Delta::Subscribers {
                    channel: "c".into(),
                    delta: -5,
                },
            ],
        ));
        assert_eq!(
            s.query(&Query::Channels {
                prefix: String::new(),
                limit: 10
            }),
            QueryResult::Channels(BTreeMap::new())
        );
        s.apply(&Command::Batch {
            edge: a.clone(),
            seq: 2,
            reset: true,
            deltas: vec![join("d", "2", "u", 10)],
        });
        assert!(presence_clients(&s, "c").is_empty());
        assert_eq!(presence_clients(&s, "d"), ["2"]);
    }
}
