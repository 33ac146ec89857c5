//! The replicated state: edges with leases, subscriptions, presence and
//! users. Pure and deterministic: `apply` is called with committed commands
//! in log order on every replica and must give the same result everywhere.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::types::{
    Command, CommandResult, Delta, EdgeId, EdgeInfo, Event, EventKind, Leave, Presence, Query,
    QueryResult, Removal, UserStatus,
};

/// Most channels one `Channels` query returns.
pub const MAX_CHANNELS_PER_QUERY: u32 = 10_000;

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

/// The state as the first release stored it in snapshots (the fields of
/// [`State`] up to `removal_seq`): a snapshot taken by an older replica is
/// read into the current state with the newer fields empty.
#[derive(Deserialize)]
struct StateV1 {
    edges: BTreeMap<String, EdgeState>,
    channels: BTreeMap<String, ChannelState>,
    users: BTreeMap<String, BTreeMap<String, u64>>,
    removals: VecDeque<Removal>,
    removal_seq: u64,
}

impl State {
    /// Reads a snapshot, current or from the first release.
    pub fn decode_snapshot(bytes: &[u8]) -> Result<State, crate::codec::CodecError> {
        crate::codec::decode::<State>(bytes).or_else(|e| {
            let v1: StateV1 = crate::codec::decode(bytes).map_err(|_| e)?;
            Ok(State {
                edges: v1.edges,
                channels: v1.channels,
                users: v1.users,
                removals: v1.removals,
                removal_seq: v1.removal_seq,
                ..State::default()
            })
        })
    }

    /// A channel's (`user` false) or a user's occupancy turned `on` or off
    /// through `edge`'s change.
    fn record_event(&mut self, edge: &str, user: bool, name: &str, on: bool) {
        if let Some(changes) = &mut self.batch_changes {
            changes.entry((user, name.to_string())).or_insert(!on);
            return;
        }
        let kind = match (user, on) {
            (false, true) => EventKind::Occupied,
            (false, false) => EventKind::Vacated,
            (true, true) => EventKind::Online,
            (true, false) => EventKind::Offline,
        };
        self.event_seq += 1;
        self.events.push_back(Event {
            seq: self.event_seq,
            kind,
            name: name.to_string(),
            edge: edge.to_string(),
        });
        while self.events.len() > MAX_EVENTS_KEPT {
            self.events.pop_front();
        }
    }

    /// An item turned back on: if an unfinished resync had turned it off,
    /// that is no change (forget it there).
    fn resync_resolves(&mut self, key: &(bool, String)) -> bool {
        let mut found = false;
        self.resyncing.retain(|_, pending| {
            found |= pending.remove(key);
            !pending.is_empty()
        });
        found
    }

    /// The edge's resync is over (or the edge is gone): what it turned off
    /// and is still off is announced now.
    fn finish_resync(&mut self, edge: &str) {
        for (user, name) in self.resyncing.remove(edge).unwrap_or_default() {
            if !self.is_on(user, &name) {
                self.record_event(edge, user, &name, false);
            }
        }
    }

    /// Whether a channel has subscribers, or a user connections, anywhere.
    fn is_on(&self, user: bool, name: &str) -> bool {
        if user {
            self.users.contains_key(name)
        } else {
            self.channels
                .get(name)
                .is_some_and(|c| !c.subscribers.is_empty())
        }
    }

    fn record_seen(&mut self, user: &str, unix_ms: u64) {
        let t = self.last_seen.entry(user.to_string()).or_insert(0);
        *t = (*t).max(unix_ms);
        if self.last_seen.len() > MAX_LAST_SEEN_USERS {
            // Forget the oldest tenth (ties by name: the same everywhere).
            let mut by_age: Vec<(u64, String)> = self
                .last_seen
                .iter()
                .map(|(u, t)| (*t, u.clone()))
                .collect();
            by_age.sort_unstable();
            for (_, u) in by_age.into_iter().take(MAX_LAST_SEEN_USERS / 10) {
                self.last_seen.remove(&u);
            }
        }
    }
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
                    let was_empty = ch.subscribers.is_empty();
                    add_count(&mut ch.subscribers, edge, change);
                    let is_empty = ch.subscribers.is_empty();
                    if ch.is_empty() {
                        self.channels.remove(channel);
                    }
                    if was_empty != is_empty {
                        self.record_event(edge, false, channel, was_empty);
                    }
                }
            }
            Delta::Seen { user, unix_ms } => self.record_seen(user, *unix_ms),
            // Handled by the batch, after its deltas.
            Delta::ResyncDone => {}
            Delta::Connections { user, delta } => {
                let change = add_count(&mut e.connections, user, *delta);
                if change != 0 {
                    let u = self.users.entry(user.clone()).or_default();
                    let was_empty = u.is_empty();
                    add_count(u, edge, change);
                    let is_empty = u.is_empty();
                    if is_empty {
                        self.users.remove(user);
                    }
                    if was_empty != is_empty {
                        self.record_event(edge, true, user, was_empty);
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
        let mut vacated = Vec::new();
        for channel in subs.keys() {
            if let Some(ch) = self.channels.get_mut(channel) {
                if ch.subscribers.remove(name).is_some() && ch.subscribers.is_empty() {
                    vacated.push(channel.clone());
                }
                if ch.is_empty() {
                    self.channels.remove(channel);
                }
            }
        }
        for channel in vacated {
            self.record_event(name, false, &channel, false);
        }
        let mut offline = Vec::new();
        for user in conns.keys() {
            if let Some(u) = self.users.get_mut(user) {
                u.remove(name);
                if u.is_empty() {
                    self.users.remove(user);
                    offline.push(user.clone());
                }
            }
        }
        for user in offline {
            self.record_event(name, true, &user, false);
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
        // A resync it did not finish: what it dropped is gone for good.
        self.finish_resync(&edge.name);
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
            Query::UserStatus { users } => QueryResult::UserStatus(
                users
                    .iter()
                    .take(MAX_USERS_PER_QUERY)
                    .map(|u| UserStatus {
                        user: u.clone(),
                        connections: self.users.get(u).map(|e| e.values().sum()).unwrap_or(0),
                        last_seen_ms: self.last_seen.get(u).copied().unwrap_or(0),
                    })
                    .collect(),
            ),
            Query::Events { after } => {
                let (events, complete) = after_in(&self.events, |e| e.seq, self.event_seq, *after);
                QueryResult::Events {
                    latest: self.event_seq,
                    events,
                    complete,
                }
            }
            Query::Removals { after } => {
                let (removals, complete) =
                    after_in(&self.removals, |r| r.seq, self.removal_seq, *after);
                QueryResult::Removals {
                    latest: self.removal_seq,
                    removals,
                    complete,
                }
            }
        }
    }
}

/// The entries of a bounded log (removals, events) after sequence number
/// `after`, and whether none after it were already forgotten.
fn after_in<T: Clone>(
    log: &VecDeque<T>,
    seq: impl Fn(&T) -> u64,
    latest: u64,
    after: u64,
) -> (Vec<T>, bool) {
    let oldest = log.front().map(&seq);
    let entries = log.iter().filter(|e| seq(e) > after).cloned().collect();
    (
        entries,
        after >= latest || oldest.is_some_and(|o| o <= after + 1),
    )
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

    fn subs(channel: &str, delta: i64) -> Delta {
        Delta::Subscribers {
            channel: channel.into(),
            delta,
        }
    }

    fn channel_events(s: &State, after: u64) -> Vec<(String, bool)> {
        events(s, after)
            .into_iter()
            .filter_map(|(kind, name, _)| match kind {
                EventKind::Occupied => Some((name, true)),
                EventKind::Vacated => Some((name, false)),
                _ => None,
            })
            .collect()
    }

    fn events(s: &State, after: u64) -> Vec<(EventKind, String, String)> {
        match s.query(&Query::Events { after }) {
            QueryResult::Events { events, .. } => events
                .into_iter()
                .map(|e| (e.kind, e.name, e.edge))
                .collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_channel_is_occupied_by_its_first_subscriber_anywhere_and_vacated_by_its_last() {
        let mut s = State::default();
        let (a, b) = (edge("a", 1), edge("b", 1));
        register(&mut s, &a);
        register(&mut s, &b);
        s.apply(&batch(&a, 1, vec![subs("c", 1)]));
        s.apply(&batch(&b, 1, vec![subs("c", 2)]));
        s.apply(&batch(&a, 2, vec![subs("c", -1)]));
        assert_eq!(channel_events(&s, 0), [("c".to_string(), true)]);
        s.apply(&batch(&b, 2, vec![subs("c", -2)]));
        assert_eq!(channel_events(&s, 1), [("c".to_string(), false)]);
        // Within one batch only the net change counts: on and off again is
        // nothing.
        s.apply(&batch(&a, 3, vec![subs("d", 1), subs("d", -1)]));
        assert!(channel_events(&s, 2).is_empty());
        // A resync (reset) that drops and re-adds what the edge held: none.
        s.apply(&batch(&a, 4, vec![subs("e", 1)]));
        assert_eq!(channel_events(&s, 2), [("e".to_string(), true)]);
        s.apply(&Command::Batch {
            edge: a.clone(),
            seq: 5,
            reset: true,
            deltas: vec![subs("e", 1), Delta::ResyncDone],
        });
        assert!(channel_events(&s, 3).is_empty());
        // A resync over several batches: what the first one drops and a
        // later one brings back is no change; what never comes back is
        // vacated at the end marker.
        s.apply(&batch(&a, 6, vec![subs("f", 1)]));
        assert_eq!(channel_events(&s, 3), [("f".to_string(), true)]);
        s.apply(&Command::Batch {
            edge: a.clone(),
            seq: 7,
            reset: true,
            deltas: vec![subs("e", 1)],
        });
        assert!(channel_events(&s, 4).is_empty(), "f waits for the end");
        s.apply(&batch(&a, 8, vec![subs("f", 1)]));
        s.apply(&Command::Batch {
            edge: a.clone(),
            seq: 9,
            reset: true,
            deltas: vec![subs("e", 1), subs("f", 1)],
        });
        s.apply(&batch(&a, 10, vec![Delta::ResyncDone]));
        assert!(channel_events(&s, 4).is_empty(), "f came back: nothing");
        s.apply(&Command::Batch {
            edge: a.clone(),
            seq: 11,
            reset: true,
            deltas: vec![subs("e", 1)],
        });
        s.apply(&batch(&a, 12, vec![Delta::ResyncDone]));
        assert_eq!(channel_events(&s, 4), [("f".to_string(), false)]);
        // An edge removed with the only subscribers: vacated.
        s.apply(&Command::Remove {
            edge: a.clone(),
            reason: RemoveReason::LeaseExpired,
        });
        assert_eq!(channel_events(&s, 5), [("e".to_string(), false)]);
        // The answer says what was missed; each event names its edge.
        match s.query(&Query::Events { after: 0 }) {
            QueryResult::Events {
                latest, complete, ..
            } => assert_eq!((latest, complete), (6, true)),
            other => panic!("{other:?}"),
        }
        let edges: Vec<String> = events(&s, 0).into_iter().map(|e| e.2).collect();
        assert_eq!(edges, ["a", "b", "a", "a", "a", "a"]);
    }

    #[test]
    fn the_event_log_keeps_the_last_max_events_kept_and_says_what_was_missed() {
        let mut s = State::default();
        let a = edge("a", 1);
        register(&mut s, &a);
        // Each delta turns a channel on: one event each.
        let deltas: Vec<Delta> = (0..MAX_EVENTS_KEPT + 5)
            .map(|i| subs(&format!("c{i}"), 1))
            .collect();
        s.apply(&batch(&a, 1, deltas));
        match s.query(&Query::Events { after: 0 }) {
            QueryResult::Events {
                latest,
                events,
                complete,
            } => {
                assert_eq!(latest, (MAX_EVENTS_KEPT + 5) as u64);
                assert_eq!(events.len(), MAX_EVENTS_KEPT);
                assert_eq!(events[0].seq, 6, "the oldest five forgotten");
                assert!(!complete, "a poller after 0 missed some");
            }
            other => panic!("{other:?}"),
        }
        match s.query(&Query::Events { after: 5 }) {
            QueryResult::Events { complete, .. } => assert!(complete, "after 5: nothing missed"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn user_status_counts_connections_everywhere_and_keeps_the_last_seen_time() {
        let mut s = State::default();
        let (a, b) = (edge("a", 1), edge("b", 1));
        register(&mut s, &a);
        register(&mut s, &b);
        let conns = |user: &str, delta| Delta::Connections {
            user: user.into(),
            delta,
        };
        let seen = |user: &str, unix_ms| Delta::Seen {
            user: user.into(),
            unix_ms,
        };
        s.apply(&batch(&a, 1, vec![conns("u", 1), seen("u", 1000)]));
        s.apply(&batch(&b, 1, vec![conns("u", 2), seen("u", 2000)]));
        assert_eq!(events(&s, 0), [(EventKind::Online, "u".into(), "a".into())]);
        // An edge whose clock is behind does not move it back.
        s.apply(&batch(&a, 2, vec![conns("u", -1), seen("u", 1500)]));
        let status = |s: &State, users: &[&str]| match s.query(&Query::UserStatus {
            users: users.iter().map(|u| u.to_string()).collect(),
        }) {
            QueryResult::UserStatus(v) => v
                .into_iter()
                .map(|u| (u.user, u.connections, u.last_seen_ms))
                .collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            status(&s, &["u", "nobody"]),
            [("u".into(), 2, 2000), ("nobody".into(), 0, 0)]
        );
        // The other edge dies: offline, the last-seen time stays.
        s.apply(&Command::Remove {
            edge: b.clone(),
            reason: RemoveReason::LeaseExpired,
        });
        assert_eq!(status(&s, &["u"]), [("u".into(), 0, 2000)]);
        assert_eq!(
            events(&s, 1),
            [(EventKind::Offline, "u".into(), "b".into())]
        );
        // Bounded: past MAX_LAST_SEEN_USERS the oldest tenth is forgotten.
        let many: Vec<Delta> = (0..MAX_LAST_SEEN_USERS as u64)
            .map(|i| seen(&format!("user-{i}"), 10_000 + i))
            .collect();
        s.apply(&batch(&a, 3, many));
        assert_eq!(
            s.last_seen.len(),
            MAX_LAST_SEEN_USERS + 1 - MAX_LAST_SEEN_USERS / 10
        );
        assert_eq!(
            status(&s, &["u"]),
            [("u".into(), 0, 0)],
            "the oldest: forgotten"
        );
        let newest = format!("user-{}", MAX_LAST_SEEN_USERS - 1);
        assert_ne!(status(&s, &[newest.as_str()])[0].2, 0);
        // A query asks about at most MAX_USERS_PER_QUERY users.
        let asked: Vec<String> = (0..MAX_USERS_PER_QUERY + 5)
            .map(|i| i.to_string())
            .collect();
        match s.query(&Query::UserStatus { users: asked }) {
            QueryResult::UserStatus(v) => assert_eq!(v.len(), MAX_USERS_PER_QUERY),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_snapshot_from_the_first_release_is_read_with_the_new_fields_empty() {
        #[derive(Serialize)]
        struct V1<'a> {
            edges: &'a BTreeMap<String, EdgeState>,
            channels: &'a BTreeMap<String, ChannelState>,
            users: &'a BTreeMap<String, BTreeMap<String, u64>>,
            removals: &'a VecDeque<Removal>,
            removal_seq: u64,
        }
        let mut s = State::default();
        let a = edge("a", 1);
        register(&mut s, &a);
        s.apply(&batch(
            &a,
            1,
            vec![
                subs("c", 1),
                Delta::Connections {
                    user: "u".into(),
                    delta: 1,
                },
                join("c", "1", "u", 10),
            ],
        ));
        let old = crate::codec::encode(&V1 {
            edges: &s.edges,
            channels: &s.channels,
            users: &s.users,
            removals: &s.removals,
            removal_seq: s.removal_seq,
        })
        .unwrap();
        let read = State::decode_snapshot(&old).unwrap();
        assert_eq!(read.edges, s.edges);
        assert_eq!(read.channels, s.channels);
        assert_eq!(read.users, s.users);
        assert!(read.last_seen.is_empty() && read.events.is_empty());
        // And the current format round-trips as itself.
        let now = crate::codec::encode(&s).unwrap();
        assert_eq!(State::decode_snapshot(&now).unwrap(), s);
        assert!(State::decode_snapshot(b"garbage").is_err());
    }
}
