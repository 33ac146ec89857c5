//! One delta from one edge applied to the state: subscriber and
//! connection counts (never below zero), presence joins (refused past the
//! channel's limit) and leaves, and users' last-seen times (bounded).

use std::collections::BTreeMap;

use super::{State, MAX_LAST_SEEN_USERS};
use crate::types::Delta;

impl State {
    /// Returns false when a `Join` was refused by its limit.
    pub(super) fn apply_delta(&mut self, edge: &str, d: &Delta) -> bool {
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
