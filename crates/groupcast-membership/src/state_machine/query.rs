//! Queries answered from one replica's state (the leader's, for a
//! linearizable read): presence, channels, users, edges, and the entries of
//! the bounded removal and event logs after a mark.

use std::collections::{BTreeSet, VecDeque};

use groupcast_core::membership::MAX_CHANNELS_PER_QUERY;

use super::{State, MAX_USERS_PER_QUERY};
use crate::types::{EdgeId, EdgeInfo, Query, QueryResult, UserStatus};

impl State {
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
