//! The membership service: an openraft cluster (log on redb, transport on
//! QUIC with mutual TLS) whose state machine knows which edge holds which
//! subscriptions, who is present where, and which edges are alive (leases).
//!
//! # Layout
//!
//! * [`server`]: one replica (`groupcast membership`).
//! * [`handle`]: the handle edges use ([`MembershipClient`]: batched
//!   deltas, lease renewal, queries, degradation); it implements
//!   [`groupcast_core::Membership`]. Also [`Conn`], requests to the leader.
//! * [`admin`]: operator requests (`groupcast membership status|add|remove`).
//! * [`certs`]: the cluster CA and node certificates (`groupcast certs`).
//! * `state_machine`: the replicated state (edges, subscriptions, presence,
//!   users, events) and how a committed command changes it.
//! * [`store`]: the Raft log and the state machine's storage on redb, with
//!   snapshots.
//! * `network`: openraft's network: Raft RPCs to the other replicas, and
//!   their health.
//! * [`transport`]: the QUIC transport, one request and one reply per
//!   stream, and its messages.
//! * [`types`]: openraft's type config, commands, deltas, queries and their
//!   answers.
//! * [`codec`]: the binary encoding of frames, log entries and snapshots.

pub mod admin;
pub mod certs;
pub mod codec;
pub mod handle;
pub(crate) mod network;
pub mod server;
pub(crate) mod state_machine;
pub mod store;
pub mod transport;
pub mod types;

pub use handle::{Conn, MembershipClient, MembershipClientConfig, MembershipClientError};
