//! The `Broker`: how publications travel between nodes and are stored.
//!
//! # Contract
//! * **Interest.** A node calls [`Broker::subscribe`] for a channel when it
//!   gets its first local subscriber and [`Broker::unsubscribe`] after the last
//!   leaves. The broker delivers a channel's messages to the node's
//!   [`BrokerHandler`] only while the node is subscribed.
//! * **Order.** For one channel, the handler is called in the order the broker
//!   stored the publications (offset order when the channel has history), and
//!   never concurrently for the same channel.
//! * **History.** With `history_size > 0` and a non-zero TTL, a publish stores
//!   the publication, assigns it an offset and returns the stream position;
//!   `history` reads it back. Offsets of one channel strictly increase and
//!   start above 0, but need not be consecutive (the in-memory broker counts
//!   1, 2, 3...; JetStream uses its stream sequence, shared by a namespace).
//!   The epoch names the stream: when it changes, offsets from the old epoch
//!   mean nothing.
//! * **Completeness.** A forward `history` read from a position says whether
//!   it provably returned *every* publication after that position
//!   ([`HistoryResult::complete`]); recovery is reported only then.
//! * **Repair.** When a broker finds it lost live publications of a
//!   subscribed channel and cannot read them back, it calls
//!   [`BrokerHandler::on_insufficient_state`]: local subscribers must
//!   resubscribe (and recover) rather than silently miss them.
//! * **Pipelining.** [`Broker::publish_begin`] sends a publication and
//!   returns its answer as a [`PendingPublish`] to await later, so one caller
//!   may have several in flight. Publications one caller begins one after
//!   another (each `publish_begin` awaited before the next starts) are
//!   stored in that order, and each pending answer is its own publication's
//!   (offset or error). An implementation without pipelining answers from
//!   `publish_begin` itself (the default).
//! * **Join/leave** are delivered like publications but are not stored.
//! * **Handler calls must not block**: they enqueue and return.

pub mod memory;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use groupcast_proto::client::ClientInfo;
use serde::Serialize;
use thiserror::Error;

use crate::namespace::ChannelOptions;
use crate::publication::{Publication, StreamPosition};

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum BrokerError {
    /// The backbone cannot be reached; the operation did not happen.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The requested history position belongs to another epoch.
    #[error("unrecoverable position")]
    UnrecoverablePosition,
    #[error("broker internal error: {0}")]
    Internal(String),
    /// A request got no answer in time (it may still be acted on).
    #[error("no answer in time: {0}")]
    Timeout(String),
    /// The message is larger than the backbone carries (NATS `max_payload`); nothing was
    /// sent. The client's limit is above the backbone's: raise one or lower the other.
    #[error("too large for the backbone: {0}")]
    TooLarge(String),
}

/// How to store one publication.
#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    /// Publications kept per channel; 0 disables history for this publish.
    pub history_size: usize,
    /// How long they are kept.
    pub history_ttl: Duration,
    /// The API's `idempotency_key`: a publish repeated with the same key on
    /// the same channel within the backbone's window (JetStream's duplicate
    /// window, 2 minutes) is stored once and answers the first position.
    /// Honoured for history publishes on NATS; ignored otherwise.
    pub idempotency_key: Option<String>,
}

impl PublishOptions {
    /// How a publication to a channel with `opts` is stored: its
    /// namespace's history size and TTL. The one place a namespace's
    /// options become publish options.
    pub fn for_channel(opts: &ChannelOptions) -> PublishOptions {
        PublishOptions {
            history_size: opts.history_size,
            history_ttl: opts.history_ttl,
            idempotency_key: None,
        }
    }
}

/// The answer to a publication already sent ([`Broker::publish_begin`]):
/// await it for its position or error. Dropping it drops only the answer.
pub type PendingPublish = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<StreamPosition, BrokerError>> + Send>,
>;

/// A [`PendingPublish`] that is already answered.
pub fn answered(r: Result<StreamPosition, BrokerError>) -> PendingPublish {
    Box::pin(std::future::ready(r))
}

/// Which part of a channel's history to read.
#[derive(Debug, Clone, Default)]
pub struct HistoryQuery {
    /// Start from this position (its epoch must match): forward reads return
    /// publications after its offset, reverse reads those before it, newest first.
    pub since: Option<StreamPosition>,
    /// Maximum publications to return; `None` for all, `Some(0)` for only the position.
    pub limit: Option<usize>,
    /// Newest first.
    pub reverse: bool,
}

/// Publications read from history and the stream's current top position.
#[derive(Debug, Clone, Default)]
pub struct HistoryResult {
    pub publications: Vec<Arc<Publication>>,
    pub position: StreamPosition,
    /// For a forward read with `since` and no limit: `publications` are
    /// provably every publication after `since` (none was trimmed in
    /// between). False for other reads.
    pub complete: bool,
}

/// What the operator dashboard shows about an external backbone
/// ([`Broker::backbone`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BackboneStatus {
    /// What it is (`NATS`).
    pub kind: String,
    /// Connected now.
    pub connected: bool,
    /// The configured server URLs.
    pub urls: Vec<String>,
    /// The server this node is (or was last) connected to, as it introduced
    /// itself: name, `host:port`, version, cluster name.
    pub server_name: String,
    pub server_address: String,
    pub server_version: String,
    pub cluster: Option<String>,
    /// The server has JetStream (history) enabled.
    pub jetstream: bool,
    /// History streams this node uses (one per history namespace).
    pub history_streams: u64,
    /// Channel subjects this node is subscribed to now.
    pub subscriptions: u64,
    /// Gaps on live subjects repaired from history, and passed to clients
    /// to recover (since start).
    pub gaps_repaired: u64,
    pub gaps_insufficient: u64,
}

/// Receives what the broker delivers for the channels this node subscribed to.
pub trait BrokerHandler: Send + Sync + 'static {
    fn on_publication(&self, channel: &str, publication: Arc<Publication>);
    fn on_join(&self, channel: &str, info: Arc<ClientInfo>);
    fn on_leave(&self, channel: &str, info: Arc<ClientInfo>);
    /// Publications of `channel` were lost on the way and cannot be read
    /// back: every local subscriber must resubscribe and recover.
    fn on_insufficient_state(&self, channel: &str);
}

#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Set the handler; called once by [`crate::Node`] before any subscribe.
    fn set_handler(&self, handler: Arc<dyn BrokerHandler>);
    async fn subscribe(&self, channel: &str) -> Result<(), BrokerError>;
    async fn unsubscribe(&self, channel: &str) -> Result<(), BrokerError>;
    /// Store (when `opts` has history) and deliver a publication.
    async fn publish(
        &self,
        channel: &str,
        publication: Publication,
        opts: &PublishOptions,
    ) -> Result<StreamPosition, BrokerError>;
    /// Send a publication as [`Broker::publish`] would and return its
    /// answer to await later (see "Pipelining" above). `Err` here is an
    /// answer too: the publication was not sent. The default publishes and
    /// answers at once.
    async fn publish_begin(
        &self,
        channel: &str,
        publication: Publication,
        opts: &PublishOptions,
    ) -> Result<PendingPublish, BrokerError> {
        Ok(answered(self.publish(channel, publication, opts).await))
    }
    async fn publish_join(&self, channel: &str, info: Arc<ClientInfo>) -> Result<(), BrokerError>;
    async fn publish_leave(&self, channel: &str, info: Arc<ClientInfo>) -> Result<(), BrokerError>;
    /// Read history. A channel that never had history answers an empty result
    /// with a fresh position (offset 0 and the epoch it will use).
    async fn history(
        &self,
        channel: &str,
        query: HistoryQuery,
    ) -> Result<HistoryResult, BrokerError>;
    /// Drop stored publications; the epoch is kept and later offsets stay
    /// above earlier ones.
    async fn remove_history(&self, channel: &str) -> Result<(), BrokerError>;
    /// Whether the backbone is usable now (`/readyz`); `Err` says why not.
    fn health(&self) -> Result<(), String> {
        Ok(())
    }
    /// The external backbone's state for the operator dashboard; `None`
    /// for an in-process broker (nothing external to show). Cheap: no I/O.
    fn backbone(&self) -> Option<BackboneStatus> {
        None
    }
}
