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
//! * [`client`]: client protocol, JSON encoding; one folder, re-exported
//!   at `client::X`:
//!   * `client/command.rs`: frame decoding, [`client::Command`] and each
//!     method's request;
//!   * `client/reply.rs`: [`client::Reply`] and each method's result;
//!   * `client/push.rs`: the push encoders;
//!   * `client/portable.rs`: [`client::json_is_portable`];
//!   * `client/object.rs`: read a struct only from a JSON object.
//! * [`protobuf`]: the same protocol in its protobuf encoding; one folder,
//!   re-exported at `protobuf::X`:
//!   * `protobuf/messages.rs`: the hand-written mirror of `client.proto`
//!     (its module doc says why not generated);
//!   * `protobuf/decode.rs`: commands to the JSON model;
//!   * `protobuf/encode.rs`: replies and pushes from the JSON model;
//!   * `protobuf/tests/`: tests, with bytes written from the schema.
//! * [`api`]: server HTTP API request and response bodies; its errors are
//!   the [`codes`] table's, and bodies of the same shape as the client
//!   protocol's are those types.
//! * [`socketio`]: Engine.IO v4 and Socket.IO v5 packets (the codec the
//!   edge's Socket.IO server runs on).

pub mod api;
pub mod client;
pub mod codes;
pub mod protobuf;
pub mod socketio;

pub use codes::{DisconnectCode, ErrorCode};
