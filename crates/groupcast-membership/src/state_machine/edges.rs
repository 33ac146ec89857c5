//! Edges: which are registered, what clearing one (a reset) or removing
//! one (lease expired, left, replaced by a new incarnation) drops, and the
//! bounded log of removals whose presence entries the other edges announce
//! as leaves.

use super::{State, MAX_REMOVALS_KEPT};
use crate::types::{EdgeId, Leave, Removal};

impl State {
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

    /// Keeps a removal's entries for the other edges (bounded).
    pub(super) fn record_removal(&mut self, edge: &str, leaves: &[Leave]) {
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

    /// Drops everything the edge holds; returns its presence entries.
    pub(super) fn clear_edge(&mut self, name: &str) -> Vec<Leave> {
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

    pub(super) fn remove_edge(&mut self, edge: &EdgeId) -> Vec<Leave> {
        let leaves = self.clear_edge(&edge.name);
        self.edges.remove(&edge.name);
        // A resync it did not finish: what it dropped is gone for good.
        self.finish_resync(&edge.name);
        leaves
    }
}
