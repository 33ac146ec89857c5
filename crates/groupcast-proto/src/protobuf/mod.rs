//! Centrifugo client protocol v2, protobuf encoding (WebSocket subprotocol
//! `centrifuge-protobuf`, binary frames).
//!
//! # Framing
//! A binary frame holds one or more messages, each prefixed by its length
//! as a varint (a length-delimited stream). The client sends [`Command`]s;
//! an empty `Command` (the single byte `0x00` once framed) is the pong. The
//! server sends [`Reply`]s: answers carry the command's `id`, pushes have id
//! 0 and [`Reply::push`] set, and the ping is an empty `Reply`
//! ([`encode_ping`]). Every `encode_*` function here returns one framed
//! message, so a frame of several is their concatenation.
//!
//! # Layout
//! Every public item is re-exported here: `groupcast_proto::protobuf::X`
//! is the path to use.
//! * `messages`: the schema mirror, one prost-derived struct per message.
//! * `decode`: [`decode_commands`] and [`ProtoError`], commands to the JSON
//!   model.
//! * `encode`: [`encode_reply`], the pushes and the ping, the JSON model to
//!   replies.
//! * `tests`: the tests, with a protobuf writer of their own (`wire`).
//!
//! # Schema: written by hand, checked by tests
//! The message types are written by hand after Centrifugo's `client.proto`
//! (package `centrifugal.centrifuge.protocol`) with prost's derive: the same
//! messages, field numbers and types, each message with all of its fields
//! (also those the JSON model, [`crate::client`], has no place for).
//! Reserved numbers and `EmulationRequest` (not part of a WebSocket
//! connection) are left out. Rust
//! names differ where the schema's are keywords or acronyms: `Push.pub` is
//! [`Push::publication`], `type` is `kind`, `RPCRequest`/`RPCResult` are
//! [`RpcRequest`]/[`RpcResult`]. Maps are `BTreeMap`s, so an encoding is the
//! same bytes every time.
//!
//! Generating them was weighed and not chosen. `prost-build` at build time
//! needs `protoc` (a system package on every developer's machine and in
//! CI) and a copy of `client.proto` in the repository; a checked-in
//! generated file needs that copy, a regeneration script and `protoc`
//! wherever it is regenerated. Either way the types would lose the doc
//! comments that tie them to the JSON model, and would come with raw
//! identifiers (`r#pub`, `r#type`) and `HashMap`s unless configured
//! otherwise. The schema is small (about forty messages), changes
//! rarely and only by adding fields, so reading a new version against
//! `messages` is minutes of work. What keeps the two in step is the tests:
//! they write each command field Groupcast reads, and each result and push
//! field it sets, by hand with the schema's field numbers typed in again (the
//! `wire` writer in `tests`) and compare the bytes with prost's, so a wrong
//! number or type in a derive attribute fails a test; one also checks the
//! 13-byte `subscribe` example of centrifugal.dev's protocol page. When
//! `client.proto` gains a field: add it to its message in `messages` with
//! its number and type, and to the hand-written bytes in the tests if
//! Groupcast reads or sets it.
//!
//! # Commands: mapping to the JSON model
//! [`decode_commands`] yields the same [`client::Command`] the JSON decoder
//! does, so a session handles both encodings with one code path.
//! * `data` fields are bytes in protobuf and JSON in Groupcast's model. Bytes
//!   that are a JSON text [`client::json_is_portable`] accepts become
//!   [`client::RawJson`]. Any other bytes (binary, text that is not JSON,
//!   JSON with `1e999` or a lone surrogate escape) are a binary publication
//!   in `publish` ([`client::PublishRequest::binary`]) and fail the whole
//!   frame with [`ProtoError::NonJsonData`] in any other command. Empty
//!   bytes are an absent `data` (proto3 cannot tell them apart), and the
//!   text `null` is absent too, as `"data":null` is for the JSON decoder.
//! * Fields the model has no place for are read and dropped, as the JSON
//!   decoder ignores fields it does not know: `ConnectRequest.headers`,
//!   `flag`, `dict`, `profile`; `SubscribeRequest.tf`, `phase`,
//!   `cursor`, `limit`, `asc`; `PublishRequest.type`, `key`, `removed`;
//!   `SubRefreshRequest.type`, `track`, `untrack`. Unknown field numbers are
//!   skipped.
//! * `PublishRequest` has no field for Groupcast's `exclude_self` extension:
//!   it is always false over protobuf.
//! * A method's params always have the method's type here, so
//!   [`client::Command::params_not_object`] is never set; a field of the
//!   wrong wire type fails the frame ([`ProtoError::Message`]).
//! * Like the JSON decoder, one bad message fails the whole frame, and a
//!   frame with no messages at all (0 bytes) decodes to no commands.
//!
//! # Replies and pushes
//! JSON `data` is written as its bytes (the JSON text); absent data is
//! empty bytes. Fields the model does not have keep their zero value
//! (`Publication.time`, `channel`, ..., `ConnectResult.time`, `flag`,
//! `dict`, `SubscribeResult.id`, `type`, ...). `Publication.delta` is set
//! only by [`encode_pub_push_bytes`]. The schema's
//! `Subscribe` push has only `recoverable`, `epoch`, `offset`, `positioned`
//! and `data`: [`encode_subscribe_push`] drops the other fields of the
//! [`client::SubscribeResult`] (the JSON push carries them all).
//!
//! # Not supported
//! Binary (non-JSON) data outside a publication; dictionary compression
//! (`ConnectResult.dict` is never set, so frames never start with a codec
//! marker byte); numeric channel ids (`Push.id`, `SubscribeResult.id`); map
//! subscriptions and `sub_refresh` tracking; pushes the JSON side has no
//! encoder for (`message`, `connect`, `disconnect`, `refresh`: their types
//! are here).
//!
//! [`client::Command`]: crate::client::Command
//! [`client::json_is_portable`]: crate::client::json_is_portable
//! [`client::RawJson`]: crate::client::RawJson
//! [`client::PublishRequest::binary`]: crate::client::PublishRequest::binary
//! [`client::Command::params_not_object`]: crate::client::Command::params_not_object
//! [`client::SubscribeResult`]: crate::client::SubscribeResult

mod decode;
mod encode;
mod messages;
#[cfg(test)]
mod tests;

pub use decode::{decode_commands, ProtoError};
pub use encode::{
    encode_error_reply, encode_join_push, encode_leave_push, encode_ping, encode_pub_push,
    encode_pub_push_bytes, encode_reply, encode_subscribe_push, encode_unsubscribe_push,
    ENCODING_TAG,
};
pub use messages::*;
