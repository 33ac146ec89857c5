//! The `Membership` trait: who is present in which channel, cluster-wide.
//!
//! # Contract
//! * `add_presence` completes before the node publishes the matching `join`,
//!   and `remove_presence` before the `leave`; so a client that saw `join`
//!   for X and then asks for presence sees X until X leaves (invariant 3).
//! * Entries are keyed by (channel, client id); adding twice replaces.
//! * When the service cannot be reached, calls fail with
//!   [`MembershipError::Unavailable`] (clients get "not available").

pub mod memory;

use std::collections::BTreeMap;

use async_trait::async_trait;
use groupcast_proto::client::ClientInfo;
use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum MembershipError {
    #[error("membership unavailable: {0}")]
    Unavailable(String),
    /// A named limit was hit (e.g. presence entries per channel).
    #[error("membership limit exceeded: {0}")]
    LimitExceeded(&'static str),
}

/// Counts for `presence_stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PresenceStats {
    pub num_clients: u32,
    pub num_users: u32,
}

#[async_trait]
pub trait Membership: Send + Sync + 'static {
    async fn add_presence(&self, channel: &str, info: ClientInfo) -> Result<(), MembershipError>;
    async fn remove_presence(&self, channel: &str, client: &str) -> Result<(), MembershipError>;
    /// Present clients of a channel, keyed by client id.
    async fn presence(
        &self,
        channel: &str,
    ) -> Result<BTreeMap<String, ClientInfo>, MembershipError>;
    async fn presence_stats(&self, channel: &str) -> Result<PresenceStats, MembershipError>;
}
