//! Occupancy (a channel's first subscriber anywhere, its last) and online
//! (a user's first connection anywhere, their last) events, kept in a
//! bounded log for the edges to announce; within a batch only net changes
//! count, and what a resync turned off waits for its end marker.

use super::{State, MAX_EVENTS_KEPT};
use crate::types::{Event, EventKind};

impl State {
    /// A channel's (`user` false) or a user's occupancy turned `on` or off
    /// through `edge`'s change.
    pub(super) fn record_event(&mut self, edge: &str, user: bool, name: &str, on: bool) {
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
    pub(super) fn resync_resolves(&mut self, key: &(bool, String)) -> bool {
        let mut found = false;
        self.resyncing.retain(|_, pending| {
            found |= pending.remove(key);
            !pending.is_empty()
        });
        found
    }

    /// The edge's resync is over (or the edge is gone): what it turned off
    /// and is still off is announced now.
    pub(super) fn finish_resync(&mut self, edge: &str) {
        for (user, name) in self.resyncing.remove(edge).unwrap_or_default() {
            if !self.is_on(user, &name) {
                self.record_event(edge, user, &name, false);
            }
        }
    }

    /// Whether a channel has subscribers, or a user connections, anywhere.
    pub(super) fn is_on(&self, user: bool, name: &str) -> bool {
        if user {
            self.users.contains_key(name)
        } else {
            self.channels
                .get(name)
                .is_some_and(|c| !c.subscribers.is_empty())
        }
    }
}
