//! The broker's model, independent of sockets and of any backbone.
//!
//! `groupcast-core` owns what a channel *is* (names, namespaces and their
//! options), what a publication is, the [`Broker`] and [`Membership`] traits
//! with their contracts, the local [`Hub`] that fans publications out to this
//! node's subscribers, the [`Node`] that wires the three together, and the
//! in-memory implementations used by `groupcast dev` and by unit tests. The
//! [`conformance`] module is the suite every `Broker` implementation passes.
//!
//! # Layout
//! * [`channel`]: channel name validation, namespace split, user-limited channels.
//! * [`namespace`]: per-namespace options and their lookup.
//! * [`publication`]: publications, payload kinds, stream positions.
//! * [`broker`]: the `Broker` trait; [`broker::memory`] the in-process bus with history.
//! * [`membership`]: the `Membership` trait (presence, counts, nodes); [`membership::memory`].
//! * [`bus`]: the `NodeBus` trait: requests to another node by name.
//! * [`hub`]: local channel -> subscriber fan-out, recovery buffering, dedupe.
//! * [`node`]: ties Broker, Membership and Hub; per-channel interest.
//! * [`conformance`]: shared test suites for `Broker` and `Membership` implementations.

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
    BackboneStatus, Broker, BrokerError, BrokerHandler, HistoryQuery, HistoryResult, PublishOptions,
};
pub use bus::{valid_target, BackendBus, NodeBus, NodeHandler};
pub use channel::{ChannelError, ChannelName};
pub use hub::{Hub, PreparedPush, PushType, Subscriber, SubscriberKind};
pub use membership::{
    ClusterEvent, ClusterEventKind, Membership, MembershipError, ReplicaStatus, UserStatus,
};
pub use namespace::{ChannelOptions, HistoryStorage, NamespaceConfig, Namespaces};
pub use node::Node;
pub use publication::{Payload, Publication, StreamPosition};
