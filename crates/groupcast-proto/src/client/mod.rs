//! Centrifugo client protocol v2, JSON encoding.
//!
//! A WebSocket frame carries one or more JSON objects separated by `\n`.
//! Client to server: [`Command`]s; an empty object `{}` is a pong.
//! Server to client: [`Reply`]s (with the command's `id`), pushes
//! (`{"push":{...}}`, no id) and the empty ping `{}`.
//!
//! `data` fields are embedded JSON: they are kept as [`RawValue`] and never
//! re-parsed. Unknown fields sent by newer SDKs are ignored, never rejected.
//! Publication pushes are encoded by hand in [`encode_pub_push`] so a fan-out
//! encodes once per channel and shares the bytes with every subscriber.
//!
//! # Layout
//! Every public item is re-exported here, so `groupcast_proto::client::X`
//! is the path to use; the files only split the concerns.
//! * `command`: client to server: [`decode_commands`], [`Command`] and
//!   each method's request.
//! * `reply`: server to client answers: [`Reply`] and each method's
//!   result, with the shapes they carry ([`ClientInfo`],
//!   [`PublicationOut`]).
//! * `push`: the push encoders ([`encode_pub_push`] and the others).
//! * `portable`: [`json_is_portable`], the check on JSON data that strict
//!   decoders must be able to read.
//! * `object`: the serde helper that reads a struct only from a JSON object.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

mod command;
mod object;
mod portable;
mod push;
mod reply;

pub use command::{
    decode_commands, ChannelRequest, Command, ConnectRequest, HistoryRequest, PublishRequest,
    RefreshRequest, RpcRequest, SendRequest, StreamPosition, SubRefreshRequest, SubscribeRequest,
    UnsubscribeRequest, DELTA_FOSSIL, FLAG_REJECT_UNRECOVERED, MAX_COMMANDS_PER_FRAME, METHODS,
    TOO_MANY_COMMANDS,
};
pub use portable::json_is_portable;
pub use push::{
    encode_join_push, encode_leave_push, encode_pub_push, encode_subscribe_push,
    encode_unsubscribe_push, PubView,
};
pub use reply::{
    ClientInfo, ConnectResult, HistoryResult, PresenceResult, PresenceStatsResult, PublicationOut,
    RefreshResult, Reply, RpcResult, SubRefreshResult, SubscribeResult,
};

/// Raw JSON shared between a publication and every frame that carries it.
pub type RawJson = Arc<RawValue>;

/// An object whose fields we do not read (`ping`, results without fields).
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct Empty {}

fn is_false(b: &bool) -> bool {
    !*b
}
fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}
pub(crate) fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

/// Deserialize optional raw JSON into an `Arc` (serde has no direct impl).
pub(crate) mod raw_opt {
    use super::*;
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<RawJson>, D::Error> {
        let b: Option<Box<RawValue>> = Option::deserialize(d)?;
        Ok(b.map(Arc::from))
    }
}
