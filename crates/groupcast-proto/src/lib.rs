//! Wire types shared by every Groupcast component, with no runtime attached.
//!
//! This crate owns the *shape of bytes on the wire*: the Centrifugo client
//! protocol v2 in its JSON encoding (commands, replies, pushes) and its
//! protobuf encoding, the Centrifugo-compatible server HTTP API bodies, and
//! the error / disconnect code tables. It depends on serde, bytes and prost
//! only: no tokio, no NATS, no raft.
//!
//! # Layout
//! * [`codes`]: the client error table and the disconnect table (one place).
//! * [`client`]: client protocol commands, replies and push encoders.
//! * [`protobuf`]: the same protocol in its protobuf encoding.
//! * [`api`]: server HTTP API request and response bodies.

pub mod api;
pub mod client;
pub mod codes;
pub mod protobuf;

pub use codes::{DisconnectCode, ErrorCode};
