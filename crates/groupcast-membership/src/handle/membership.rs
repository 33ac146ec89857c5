//! [`groupcast_core::Membership`] for [`MembershipClient`]: joins and
//! leaves wait for their commit, counts are queued, queries go to the
//! leader.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use groupcast_core::membership::{
    EventHandler, LeaveHandler, Membership, MembershipError, PresenceStats, RemovalHandler,
    ReplicaStatus, UserStatus, MAX_USER_STATUS,
};
use groupcast_proto::api::NodeInfo;
use groupcast_proto::client::ClientInfo;

use super::{uid, unix_now, unix_now_ms, MembershipClient};
use crate::types::{Delta, Presence, Query, QueryResult};

#[async_trait]
impl Membership for MembershipClient {
    async fn add_presence(&self, channel: &str, info: ClientInfo) -> Result<(), MembershipError> {
        self.push(Delta::Join {
            channel: channel.to_string(),
            presence: Presence::from(&info),
            max_clients: self.shared.cfg.presence_max_clients,
        })
        .await
    }

    async fn remove_presence(&self, channel: &str, client: &str) -> Result<(), MembershipError> {
        self.push(Delta::Leave {
            channel: channel.to_string(),
            client: client.to_string(),
        })
        .await
    }

    async fn presence(
        &self,
        channel: &str,
    ) -> Result<BTreeMap<String, ClientInfo>, MembershipError> {
        match self
            .query(Query::Presence {
                channel: channel.to_string(),
            })
            .await?
        {
            QueryResult::Presence(p) => Ok(p
                .iter()
                .map(|p| (p.client.clone(), p.to_client_info()))
                .collect()),
            other => Err(MembershipError::Unavailable(format!("{other:?}"))),
        }
    }

    async fn presence_stats(&self, channel: &str) -> Result<PresenceStats, MembershipError> {
        match self
            .query(Query::PresenceStats {
                channel: channel.to_string(),
            })
            .await?
        {
            QueryResult::PresenceStats {
                num_clients,
                num_users,
            } => Ok(PresenceStats {
                num_clients,
                num_users,
            }),
            other => Err(MembershipError::Unavailable(format!("{other:?}"))),
        }
    }

    fn subscribers_changed(&self, channel: &str, delta: i64) {
        let channel = channel.to_string();
        self.enqueue(Delta::Subscribers { channel, delta }, false);
    }

    fn connections_changed(&self, user: &str, delta: i64) {
        let before = {
            let q = self.shared.queue.lock();
            q.local.connections.get(user).copied().unwrap_or(0)
        };
        let after = (before + delta).max(0);
        self.enqueue(
            Delta::Connections {
                user: user.to_string(),
                delta,
            },
            false,
        );
        // The user's first connection here, or their last: "last seen".
        if (before == 0) != (after == 0) {
            let seen = Delta::Seen {
                user: user.to_string(),
                unix_ms: unix_now_ms(),
            };
            self.enqueue(seen, false);
        }
    }

    async fn user_status(&self, users: &[String]) -> Result<Vec<UserStatus>, MembershipError> {
        let users = users.iter().take(MAX_USER_STATUS).cloned().collect();
        match self.query(Query::UserStatus { users }).await? {
            QueryResult::UserStatus(v) => Ok(v
                .into_iter()
                .map(|u| UserStatus {
                    user: u.user,
                    connections: u.connections,
                    last_seen_ms: u.last_seen_ms,
                })
                .collect()),
            other => Err(MembershipError::Unavailable(format!("{other:?}"))),
        }
    }

    fn set_event_handler(&self, handler: EventHandler) {
        if self.shared.event_handler.set(handler).is_ok() {
            self.shared.events_wanted.notify_one();
        }
    }

    /// At most `limit` and [`groupcast_core::membership::MAX_CHANNELS_PER_QUERY`].
    async fn channels(
        &self,
        prefix: &str,
        limit: u32,
    ) -> Result<BTreeMap<String, u64>, MembershipError> {
        let prefix = prefix.to_string();
        match self.query(Query::Channels { prefix, limit }).await? {
            QueryResult::Channels(c) => Ok(c),
            other => Err(MembershipError::Unavailable(format!("{other:?}"))),
        }
    }

    async fn user_nodes(&self, user: &str) -> Result<Vec<String>, MembershipError> {
        let user = user.to_string();
        match self.query(Query::UserNodes { user }).await? {
            QueryResult::UserNodes(n) => Ok(n),
            other => Err(MembershipError::Unavailable(format!("{other:?}"))),
        }
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, MembershipError> {
        let now = unix_now();
        Ok(self
            .edges()
            .await?
            .into_iter()
            .map(|e| NodeInfo {
                uid: uid(e.edge.incarnation),
                name: e.edge.name,
                version: e.version,
                uptime: now.saturating_sub(e.started_unix) as u32,
                num_clients: e.connections as u32,
                num_users: e.users as u32,
                num_channels: e.channels as u32,
                num_subs: e.subscriptions as u32,
            })
            .collect())
    }

    fn local_node(&self) -> Option<(String, String)> {
        let e = &self.shared.edge;
        Some((e.name.clone(), uid(e.incarnation)))
    }

    fn set_leave_handler(&self, handler: LeaveHandler) {
        let _ = self.shared.leave_handler.set(handler);
    }

    fn set_removal_handler(&self, handler: RemovalHandler) {
        let _ = self.shared.removal_handler.set(handler);
    }

    fn is_available(&self) -> bool {
        MembershipClient::is_available(self)
    }

    async fn replicas(&self, timeout: Duration) -> Option<Vec<ReplicaStatus>> {
        Some(self.shared.conn.replicas(timeout).await)
    }
}
