//! `groupcast-nats`: the [`Broker`](groupcast_core::Broker) over NATS. It
//! owns everything Groupcast does on NATS: the connection, live fan-out on
//! core subjects, history in JetStream streams, the requests between nodes
//! ([`NodeBus`](groupcast_core::NodeBus)) and to backends
//! ([`BackendBus`](groupcast_core::BackendBus)), every subject name, and the
//! bytes of every message.
//!
//! # Layout
//!
//! * `config`: [`NatsConfig`], the `[nats]` settings.
//! * `broker`: [`NatsBroker`], one cloneable handle on one connection, and
//!   the [`Broker`](groupcast_core::Broker) implementation; by concern:
//!   * `broker::connection`: connecting, connection events, the streams
//!     made at start;
//!   * `broker::streams`: one JetStream stream per history namespace
//!     ([`StreamSpec`]);
//!   * `broker::history`: storing publications and reading them back;
//!   * `broker::live`: channel subscriptions, delivery, gap repair
//!     ([`GapStats`]);
//!   * `broker::node_bus`: requests between nodes;
//!   * `broker::backend_bus`: relay targets and backend commands.
//! * [`subjects`]: every subject and stream name, built in one place.
//! * [`envelope`]: the binary format of every message.
//! * [`signing`]: the HMAC-SHA256 tag (`nats.cluster_secret`) on what edges
//!   publish to each other, checked on receipt and on history reads.
//!
//! # How it works
//!
//! * **Live fan-out** on core NATS: one subject per channel
//!   ([`subjects::Subjects::live`]). An edge subscribes to a channel's subject
//!   only while it has local subscribers (the node calls
//!   `subscribe`/`unsubscribe` on the first/last one), so an edge receives
//!   none of the traffic of channels nobody on it watches.
//! * **History** on JetStream: one stream per history namespace, limits from
//!   the namespace ([`StreamSpec`]). A publish stores the message and waits
//!   for JetStream's acknowledgement; its stream sequence is the
//!   publication's **offset**. The stream's RePublish sends the stored message
//!   to the live subject with `Nats-Sequence` (the offset) and
//!   `Nats-Last-Sequence` (the previous offset of that channel). The stream's
//!   creation time is the **epoch**.
//! * **Gaps** (a republished message whose `Nats-Last-Sequence` is not the
//!   last offset this edge delivered: lost in transport, a slow consumer, a
//!   reconnect) are **repaired** from JetStream before delivering; when the
//!   missing publications are no longer stored the local subscribers are
//!   told to resubscribe and recover (`insufficient state`). After a NATS
//!   reconnect every history channel is checked the same way.
//! * Namespaces without history use core NATS only: at-most-once.
//! * **A server cut from its cluster** still answers the edge's pings; the
//!   quorum probe (`broker::quorum`) notices that JetStream commits nothing
//!   through it and reports the backbone lost (`nats.quorum_lost_after`).
//!
//! See `docs/operations.md` (NATS backbone) for configuration and metrics.

mod broker;
mod config;
pub mod envelope;
pub mod signing;
pub mod subjects;

pub use broker::{GapStats, NatsBroker, StreamSpec};
pub use config::NatsConfig;

/// Describe the backbone's metrics (call once after installing a recorder).
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge};
    describe_gauge!(
        "groupcast_nats_connected",
        "1 while the edge is connected to NATS"
    );
    describe_counter!(
        "groupcast_nats_events_total",
        "NATS connection events by kind (connected, disconnected, lame_duck, slow_consumer, server_error, client_error, closed)"
    );
    describe_gauge!(
        "groupcast_nats_subscriptions",
        "Channel subjects this edge is subscribed to (channels with local subscribers)"
    );
    describe_counter!(
        "groupcast_nats_messages_received_total",
        "Messages received from NATS channel subjects"
    );
    describe_counter!(
        "groupcast_nats_invalid_messages_total",
        "Messages on Groupcast subjects that were not valid envelopes (dropped)"
    );
    describe_counter!(
        "groupcast_nats_gaps_total",
        "Gaps in a channel's offsets seen on the live subject, by outcome (repaired from JetStream, or insufficient: subscribers told to recover)"
    );
    describe_counter!(
        "groupcast_backbone_rejected_total",
        "Backbone messages dropped for their signature (reason: unsigned, bad_signature; kind: pub, node): forged or from an edge with another cluster_secret"
    );
    describe_gauge!(
        "groupcast_nats_quorum_lost",
        "1 while no JetStream heartbeat of this edge has been acknowledged for nats.quorum_lost_after (its NATS server may be cut from its cluster)"
    );
    describe_counter!(
        "groupcast_nats_quorum_losses_total",
        "Times the quorum probe found JetStream committing nothing through this edge's server for nats.quorum_lost_after"
    );
    describe_counter!(
        "groupcast_nats_publish_errors_total",
        "Publishes that failed (NATS unreachable, no JetStream acknowledgement)"
    );
}
