//! The broker's model, independent of sockets and of any backbone.
//!
//! `groupcast-core` owns what a channel *is* (names, namespaces and their
//! options), what a publication is, the [`Broker`] and [`Membership`] traits
//! with their contracts, the [`NodeBus`] and [`BackendBus`] traits, the
//! local [`Hub`] that fans publications out to this node's subscribers, the
//! [`Node`] façade that wires them together (the only door the edge uses:
//! publish, join, leave, presence, history, cluster queries), and the
//! in-memory implementations used by `groupcast dev` and by unit tests. The
//! [`conformance`] module holds the suites every `Broker` and `Membership`
//! implementation passes.
//!
//! # Layout
//! * [`channel`]: channel name validation, namespace split, user-limited channels.
//! * [`namespace`]: per-namespace options and their lookup.
//! * [`publication`]: publications, payload kinds, stream positions.
//! * [`broker`]: the `Broker` trait and its contract, [`PublishOptions::for_channel`].
//!   * [`broker::memory`]: the in-process broker with history.
//! * [`membership`]: the `Membership` trait (presence, counts, nodes, events).
//!   * [`membership::memory`]: single-node membership.
//! * [`bus`]: the `NodeBus` (requests to another node by name) and
//!   `BackendBus` (relay connections' backend targets) traits.
//! * [`hub`]: local channel -> subscriber fan-out, recovery merge, delta base.
//!   * `hub::push`: [`PreparedPush`], encoded at most once per encoding.
//!   * `hub::tests`: the hub's unit tests.
//! * [`node`]: [`Node`], the façade over Broker, Membership and Hub.
//! * [`conformance`]: the shared suite for `Broker` implementations.
//!   * [`conformance::membership`]: the suite for `Membership` implementations.

pub mod broker;
pub mod bus;
pub mod channel;
pub mod conformance;
pub mod hub;
pub mod membership;
pub mod namespace;
pub mod node;
pub mod publication;

pub use broker::{
    BackboneStatus, Broker, BrokerError, BrokerHandler, HistoryQuery, HistoryResult,
    PendingPublish, PublishOptions,
};
pub use bus::{valid_target, BackendBus, NodeBus, NodeHandler};
pub use channel::{ChannelError, ChannelName};
pub use hub::{Hub, PreparedPush, PushType, Subscriber, SubscriberKind};
pub use membership::{
    ClusterEvent, ClusterEventKind, Membership, MembershipError, ReplicaStatus, UserStatus,
};
pub use namespace::{ChannelOptions, HistoryStorage, JoinLeaveLimits, NamespaceConfig, Namespaces};
pub use node::Node;
pub use publication::{Payload, Publication, StreamPosition};
