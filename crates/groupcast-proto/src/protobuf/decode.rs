//! Commands: a binary frame of `Command` messages to the JSON model.
//!
//! [`decode_commands`] yields the same [`client::Command`]s the JSON
//! decoder does (the rules are in the module doc of `crate::protobuf`);
//! every refusal is a [`ProtoError`] that fails the whole frame.

use std::sync::Arc;

use prost::Message as _;
use serde_json::value::RawValue;

use super::messages::{Command, SubscribeRequest};
use crate::client::{self, json_is_portable, RawJson};

/// Why a frame of commands was refused. Every error fails the whole frame,
/// as an undecodable JSON frame does (the session closes it with 3501).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtoError {
    /// The length prefix of the message at byte `at` is not a valid varint,
    /// or declares more bytes than the frame has left.
    Length { at: usize },
    /// The message at byte `at` is not a valid `Command`.
    Message {
        at: usize,
        error: prost::DecodeError,
    },
    /// A `data` field (`field`, e.g. `"publish.data"`) of the message at
    /// byte `at` is not JSON that [`json_is_portable`] accepts (only a
    /// publication may be binary).
    NonJsonData { at: usize, field: &'static str },
    /// More than [`client::MAX_COMMANDS_PER_FRAME`] messages in the frame.
    TooManyCommands,
}

impl std::fmt::Display for ProtoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProtoError::Length { at } => {
                write!(f, "bad or oversized length prefix at byte {at}")
            }
            ProtoError::Message { at, error } => {
                write!(f, "invalid command at byte {at}: {error}")
            }
            ProtoError::NonJsonData { at, field } => {
                write!(f, "{field} of the command at byte {at} is not JSON (binary data is not supported there)")
            }
            ProtoError::TooManyCommands => f.write_str(client::TOO_MANY_COMMANDS),
        }
    }
}

impl std::error::Error for ProtoError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ProtoError::Message { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// Decode every command in one binary frame (varint-length-prefixed
/// `Command` messages).
///
/// Same contract as [`client::decode_commands`]: any message that is not a
/// valid command fails the whole frame, and an empty frame holds no
/// commands. A length prefix is checked against the bytes left in the frame
/// before anything is read, so nothing is allocated for a declared length.
/// Every message takes at least one byte (the pong is `0x00`), so a frame
/// of n bytes yields at most n commands: the frame size limit bounds both.
pub fn decode_commands(frame: &[u8]) -> Result<Vec<client::Command>, ProtoError> {
    let mut out = Vec::new();
    let mut rest = frame;
    while !rest.is_empty() {
        if out.len() == client::MAX_COMMANDS_PER_FRAME {
            return Err(ProtoError::TooManyCommands);
        }
        let at = frame.len() - rest.len();
        let len =
            prost::decode_length_delimiter(&mut rest).map_err(|_| ProtoError::Length { at })?;
        if len > rest.len() {
            return Err(ProtoError::Length { at });
        }
        let (message, tail) = rest.split_at(len);
        rest = tail;
        let command =
            Command::decode(message).map_err(|error| ProtoError::Message { at, error })?;
        let command =
            command_to_model(command).map_err(|field| ProtoError::NonJsonData { at, field })?;
        out.push(command);
    }
    Ok(out)
}

/// `data` bytes as the JSON model has them; `Err(field)` when they are not
/// portable JSON. Empty bytes and `null` are absent (see the module doc).
fn json_data(bytes: &[u8], field: &'static str) -> Result<Option<RawJson>, &'static str> {
    if bytes.is_empty() {
        return Ok(None);
    }
    let raw: Box<RawValue> = serde_json::from_slice(bytes).map_err(|_| field)?;
    if !json_is_portable(raw.get()) {
        return Err(field);
    }
    Ok((raw.get() != "null").then(|| Arc::from(raw)))
}

fn subscribe_to_model(
    s: SubscribeRequest,
    field: &'static str,
) -> Result<client::SubscribeRequest, &'static str> {
    Ok(client::SubscribeRequest {
        data: json_data(&s.data, field)?,
        channel: s.channel,
        token: s.token,
        recover: s.recover,
        epoch: s.epoch,
        offset: s.offset,
        positioned: s.positioned,
        recoverable: s.recoverable,
        join_leave: s.join_leave,
        flag: s.flag,
        kind: s.kind,
        delta: s.delta,
    })
}

fn command_to_model(c: Command) -> Result<client::Command, &'static str> {
    let connect = match c.connect {
        None => None,
        Some(r) => Some(client::ConnectRequest {
            data: json_data(&r.data, "connect.data")?,
            subs: r
                .subs
                .into_iter()
                .map(|(k, s)| Ok((k, subscribe_to_model(s, "connect.subs.data")?)))
                .collect::<Result<_, &'static str>>()?,
            token: r.token,
            name: r.name,
            version: r.version,
        }),
    };
    let subscribe = c
        .subscribe
        .map(|s| subscribe_to_model(s, "subscribe.data"))
        .transpose()?;
    let publish = match c.publish {
        None => None,
        // Data that is not JSON is published as binary (the other fields'
        // data must be JSON).
        Some(p) => Some(match json_data(&p.data, "publish.data") {
            Ok(data) => client::PublishRequest {
                data,
                channel: p.channel,
                exclude_self: false,
                binary: None,
            },
            Err(_) => client::PublishRequest {
                data: None,
                channel: p.channel,
                exclude_self: false,
                binary: Some(bytes::Bytes::from(p.data)),
            },
        }),
    };
    let send = match c.send {
        None => None,
        Some(s) => Some(client::SendRequest {
            data: json_data(&s.data, "send.data")?,
        }),
    };
    let rpc = match c.rpc {
        None => None,
        Some(r) => Some(client::RpcRequest {
            data: json_data(&r.data, "rpc.data")?,
            method: r.method,
        }),
    };
    Ok(client::Command {
        id: c.id,
        connect,
        subscribe,
        unsubscribe: c
            .unsubscribe
            .map(|u| client::UnsubscribeRequest { channel: u.channel }),
        publish,
        presence: c
            .presence
            .map(|p| client::ChannelRequest { channel: p.channel }),
        presence_stats: c
            .presence_stats
            .map(|p| client::ChannelRequest { channel: p.channel }),
        history: c.history.map(|h| client::HistoryRequest {
            channel: h.channel,
            limit: h.limit,
            since: h.since.map(|s| client::StreamPosition {
                offset: s.offset,
                epoch: s.epoch,
            }),
            reverse: h.reverse,
        }),
        ping: c.ping.map(|_| client::Empty {}),
        send,
        rpc,
        refresh: c.refresh.map(|r| client::RefreshRequest { token: r.token }),
        sub_refresh: c.sub_refresh.map(|r| client::SubRefreshRequest {
            channel: r.channel,
            token: r.token,
        }),
        params_not_object: None,
    })
}
