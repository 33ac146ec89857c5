//! The membership service: an openraft cluster (log on redb, transport on
//! QUIC with mutual TLS) whose state machine knows which edge holds which
//! subscriptions, who is present where, and which edges are alive (leases).
//!
//! * [`server`]: one replica (`groupcast membership`).
//! * [`client`]: the handle edges use (batched deltas, lease renewal,
//!   queries, degradation); it implements [`groupcast_core::Membership`].
//! * [`certs`]: the cluster CA and node certificates (`groupcast certs`).

pub mod certs;
pub mod client;
pub mod codec;
pub mod network;
pub mod server;
pub mod state;
pub mod store;
pub mod transport;
pub mod types;
