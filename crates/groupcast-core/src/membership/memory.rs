//! In-memory membership for a single node (`groupcast dev`, unit tests):
//! presence, subscriber and connection counts of this one process. No node
//! ever dies here, so the leave handler is never called; cluster events are
//! this node's own transitions, announced at once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::OnceLock;
use std::time::Instant;

use async_trait::async_trait;
use groupcast_proto::client::ClientInfo;
use parking_lot::Mutex;

use groupcast_proto::api::NodeInfo;

use super::{
    ClusterEvent, ClusterEventKind, EventHandler, LeaveHandler, Membership, MembershipError,
    PresenceStats, UserStatus, MAX_USER_STATUS,
};

/// Users whose last-seen time is kept (as the replicated service does).
pub const MAX_LAST_SEEN_USERS: usize = 100_000;

/// Default maximum presence entries per channel (`presence_max_clients`).
pub const DEFAULT_MAX_PER_CHANNEL: usize = 100_000;

pub struct MemoryMembership {
    channels: Mutex<HashMap<String, BTreeMap<String, ClientInfo>>>,
    /// channel → local subscribers; user → local connections.
    counts: Mutex<Counts>,
    max_per_channel: usize,
    started: Instant,
    events: OnceLock<EventHandler>,
    event_seq: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct Counts {
    subscribers: BTreeMap<String, u64>,
    connections: BTreeMap<String, u64>,
    /// user → last connection opened or closed (Unix ms).
    last_seen: BTreeMap<String, u64>,
}

/// Adds `delta` to `map[key]` (never below zero); drops keys that reach
/// zero. Returns whether the key went from absent to present (`Some(true)`)
/// or from present to absent (`Some(false)`).
fn bump(map: &mut BTreeMap<String, u64>, key: &str, delta: i64) -> Option<bool> {
    let old = map.get(key).copied().unwrap_or(0);
    let v = (old as i64).saturating_add(delta).max(0) as u64;
    if v == 0 {
        map.remove(key);
    } else {
        map.insert(key.to_string(), v);
    }
    match (old, v) {
        (0, n) if n > 0 => Some(true),
        (o, 0) if o > 0 => Some(false),
        _ => None,
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Default for MemoryMembership {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_PER_CHANNEL)
    }
}

impl MemoryMembership {
    pub fn new(max_per_channel: usize) -> Self {
        MemoryMembership {
            channels: Mutex::new(HashMap::new()),
            counts: Mutex::default(),
            max_per_channel,
            started: Instant::now(),
            events: OnceLock::new(),
            event_seq: Default::default(),
        }
    }

    fn announce(&self, kind: ClusterEventKind, name: &str) {
        let seq = self
            .event_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        if let Some(h) = self.events.get() {
            h(ClusterEvent {
                kind,
                name: name.to_string(),
                seq,
            });
        }
    }
}

#[async_trait]
impl Membership for MemoryMembership {
    async fn add_presence(&self, channel: &str, info: ClientInfo) -> Result<(), MembershipError> {
        let mut map = self.channels.lock();
        let entries = map.entry(channel.to_string()).or_default();
        if entries.len() >= self.max_per_channel && !entries.contains_key(&info.client) {
            return Err(MembershipError::LimitExceeded("presence_max_clients"));
        }
        entries.insert(info.client.clone(), info);
        Ok(())
    }

    async fn remove_presence(&self, channel: &str, client: &str) -> Result<(), MembershipError> {
        let mut map = self.channels.lock();
        if let Some(entries) = map.get_mut(channel) {
            entries.remove(client);
            if entries.is_empty() {
                map.remove(channel);
            }
        }
        Ok(())
    }

    async fn presence(
        &self,
        channel: &str,
    ) -> Result<BTreeMap<String, ClientInfo>, MembershipError> {
        Ok(self
            .channels
            .lock()
            .get(channel)
            .cloned()
            .unwrap_or_default())
    }

    async fn presence_stats(&self, channel: &str) -> Result<PresenceStats, MembershipError> {
        let map = self.channels.lock();
        let Some(entries) = map.get(channel) else {
            return Ok(PresenceStats::default());
        };
        let users: HashSet<&str> = entries.values().map(|i| i.user.as_str()).collect();
        Ok(PresenceStats {
            num_clients: entries.len() as u32,
            num_users: users.len() as u32,
        })
    }

    fn subscribers_changed(&self, channel: &str, delta: i64) {
        let turned = bump(&mut self.counts.lock().subscribers, channel, delta);
        match turned {
            Some(true) => self.announce(ClusterEventKind::ChannelOccupied, channel),
            Some(false) => self.announce(ClusterEventKind::ChannelVacated, channel),
            None => {}
        }
    }

    fn connections_changed(&self, user: &str, delta: i64) {
        let turned = {
            let mut c = self.counts.lock();
            let turned = bump(&mut c.connections, user, delta);
            // As the replicated service: on the first and the last
            // connection, never backwards.
            if turned.is_some() {
                let t = c.last_seen.entry(user.to_string()).or_insert(0);
                *t = (*t).max(unix_ms());
            }
            if c.last_seen.len() > MAX_LAST_SEEN_USERS {
                let mut by_age: Vec<(u64, String)> =
                    c.last_seen.iter().map(|(u, t)| (*t, u.clone())).collect();
                by_age.sort_unstable();
                for (_, u) in by_age.into_iter().take(MAX_LAST_SEEN_USERS / 10) {
                    c.last_seen.remove(&u);
                }
            }
            turned
        };
        match turned {
            Some(true) => self.announce(ClusterEventKind::UserOnline, user),
            Some(false) => self.announce(ClusterEventKind::UserOffline, user),
            None => {}
        }
    }

    async fn user_status(&self, users: &[String]) -> Result<Vec<UserStatus>, MembershipError> {
        let c = self.counts.lock();
        Ok(users
            .iter()
            .take(MAX_USER_STATUS)
            .map(|u| UserStatus {
                user: u.clone(),
                connections: c.connections.get(u).copied().unwrap_or(0),
                last_seen_ms: c.last_seen.get(u).copied().unwrap_or(0),
            })
            .collect())
    }

    fn set_event_handler(&self, handler: EventHandler) {
        let _ = self.events.set(handler);
    }

    async fn channels(
        &self,
        prefix: &str,
        limit: u32,
    ) -> Result<BTreeMap<String, u64>, MembershipError> {
        let c = self.counts.lock();
        Ok(c.subscribers
            .range(prefix.to_string()..)
            .take_while(|(name, _)| name.starts_with(prefix))
            .take(limit as usize)
            .map(|(k, v)| (k.clone(), *v))
            .collect())
    }

    async fn user_nodes(&self, user: &str) -> Result<Vec<String>, MembershipError> {
        let here = self.counts.lock().connections.contains_key(user);
        Ok(if here {
            vec![String::new()]
        } else {
            Vec::new()
        })
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, MembershipError> {
        let c = self.counts.lock();
        Ok(vec![NodeInfo {
            version: env!("CARGO_PKG_VERSION").into(),
            uptime: self.started.elapsed().as_secs() as u32,
            num_clients: c.connections.values().sum::<u64>() as u32,
            num_users: c.connections.len() as u32,
            num_channels: c.subscribers.len() as u32,
            num_subs: c.subscribers.values().sum::<u64>() as u32,
            ..Default::default()
        }])
    }

    fn local_node(&self) -> Option<(String, String)> {
        None
    }

    fn set_leave_handler(&self, _handler: LeaveHandler) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(user: &str, client: &str) -> ClientInfo {
        ClientInfo {
            user: user.into(),
            client: client.into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn passes_the_membership_conformance_suite() {
        crate::conformance::membership::run_all(|| async {
            std::sync::Arc::new(MemoryMembership::new(
                crate::conformance::membership::MAX_CLIENTS as usize,
            )) as std::sync::Arc<dyn Membership>
        })
        .await;
    }

    #[tokio::test]
    async fn add_remove_and_stats() {
        let m = MemoryMembership::new(3);
        m.add_presence("c", info("u1", "a")).await.unwrap();
        m.add_presence("c", info("u1", "b")).await.unwrap();
        m.add_presence("c", info("u2", "d")).await.unwrap();
        assert_eq!(
            m.presence_stats("c").await.unwrap(),
            PresenceStats {
                num_clients: 3,
                num_users: 2
            }
        );
        assert_eq!(
            m.add_presence("c", info("u3", "e")).await,
            Err(MembershipError::LimitExceeded("presence_max_clients"))
        );
        m.add_presence("c", info("u1", "a")).await.unwrap();
        m.remove_presence("c", "b").await.unwrap();
        let p = m.presence("c").await.unwrap();
        assert_eq!(p.keys().cloned().collect::<Vec<_>>(), ["a", "d"]);
        m.remove_presence("c", "a").await.unwrap();
        m.remove_presence("c", "d").await.unwrap();
        assert!(m.channels.lock().is_empty(), "empty channels are forgotten");
    }
}
