//! Client to server: a frame's [`Command`]s and each method's request.
//!
//! [`decode_commands`] reads one WebSocket text frame (newline-separated
//! JSON objects) into [`Command`]s, the model both encodings decode to
//! (the protobuf decoder, `crate::protobuf`, yields the same values). Each
//! method's params are a struct here, named after the method
//! (`ConnectRequest`, `SubscribeRequest`, ...); fields a newer SDK sends
//! that Groupcast does not implement are ignored, never rejected.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{object, raw_opt, Empty, RawJson};

/// Decode every command in one frame (newline-separated JSON objects).
///
/// Blank lines are skipped. Any line that is not a valid command makes the
/// whole frame invalid: the protocol answers that with a bad-request
/// disconnect, so partial processing would only hide the error.
pub fn decode_commands(frame: &[u8]) -> Result<Vec<Command>, serde_json::Error> {
    let mut out = Vec::new();
    for line in frame.split(|b| *b == b'\n') {
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        if out.len() == MAX_COMMANDS_PER_FRAME {
            return Err(serde::de::Error::custom(TOO_MANY_COMMANDS));
        }
        match serde_json::from_slice(line) {
            Ok(cmd) => out.push(cmd),
            // Only on the error path: is it a command whose params are not
            // an object? That one is answered 107 rather than breaking the
            // whole frame.
            Err(e) => out.push(params_not_an_object(line).ok_or(e)?),
        }
    }
    Ok(out)
}

/// Most commands one frame may carry (either encoding): a frame of tiny
/// commands (`{}` pongs, empty protobuf messages) would otherwise decode
/// into far more memory than its size. A connection that sends more is
/// closed with 3501 (`max_commands_per_frame` in the limit metric). SDKs
/// send a connect and their pending subscribes in one frame: this is above
/// any `client.max_channels_per_connection` worth using.
pub const MAX_COMMANDS_PER_FRAME: usize = 4096;

/// The decode error of a frame over [`MAX_COMMANDS_PER_FRAME`].
pub const TOO_MANY_COMMANDS: &str = "too many commands in one frame";

/// The method names, as in [`Command`].
pub const METHODS: [&str; 12] = [
    "connect",
    "subscribe",
    "unsubscribe",
    "publish",
    "presence",
    "presence_stats",
    "history",
    "ping",
    "send",
    "rpc",
    "refresh",
    "sub_refresh",
];

/// A line that is a JSON object with a valid `id` and a method whose params
/// are not an object (`"connect":["token"]`): a [`Command`] with only `id`
/// and [`Command::params_not_object`] set. `None` for anything else.
fn params_not_an_object(line: &[u8]) -> Option<Command> {
    let serde_json::Value::Object(map) = serde_json::from_slice(line).ok()? else {
        return None;
    };
    let id = match map.get("id") {
        None => 0,
        Some(v) => u32::try_from(v.as_u64()?).ok()?,
    };
    let method = METHODS
        .into_iter()
        .find(|m| map.get(*m).is_some_and(|v| !v.is_object() && !v.is_null()))?;
    Some(Command {
        id,
        params_not_object: Some(method),
        ..Default::default()
    })
}

/// One client command. Exactly one method field is set; none set means pong
/// (when `id` is 0) or an unknown method (when `id` is set).
///
/// Every method's params must be a JSON object (or `null`, read as absent):
/// serde would otherwise read a struct from an array (`"connect":[...]`),
/// see `object.rs`. Such a command is answered 107 (see [`decode_commands`]).
#[derive(Debug, Default, Deserialize)]
pub struct Command {
    #[serde(default)]
    pub id: u32,
    #[serde(default, deserialize_with = "object::opt")]
    pub connect: Option<ConnectRequest>,
    #[serde(default, deserialize_with = "object::opt")]
    pub subscribe: Option<SubscribeRequest>,
    #[serde(default, deserialize_with = "object::opt")]
    pub unsubscribe: Option<UnsubscribeRequest>,
    #[serde(default, deserialize_with = "object::opt")]
    pub publish: Option<PublishRequest>,
    #[serde(default, deserialize_with = "object::opt")]
    pub presence: Option<ChannelRequest>,
    #[serde(default, deserialize_with = "object::opt")]
    pub presence_stats: Option<ChannelRequest>,
    #[serde(default, deserialize_with = "object::opt")]
    pub history: Option<HistoryRequest>,
    #[serde(default, deserialize_with = "object::opt")]
    pub ping: Option<Empty>,
    #[serde(default, deserialize_with = "object::opt")]
    pub send: Option<SendRequest>,
    #[serde(default, deserialize_with = "object::opt")]
    pub rpc: Option<RpcRequest>,
    #[serde(default, deserialize_with = "object::opt")]
    pub refresh: Option<RefreshRequest>,
    #[serde(default, deserialize_with = "object::opt")]
    pub sub_refresh: Option<SubRefreshRequest>,
    /// Set by [`decode_commands`] (never by the JSON): this method's params
    /// were not a JSON object; answered 107.
    #[serde(skip)]
    pub params_not_object: Option<&'static str>,
}

impl Command {
    /// The method name, for metrics and logs; `None` for a pong or unknown method.
    pub fn method(&self) -> Option<&'static str> {
        Some(if self.connect.is_some() {
            "connect"
        } else if self.subscribe.is_some() {
            "subscribe"
        } else if self.unsubscribe.is_some() {
            "unsubscribe"
        } else if self.publish.is_some() {
            "publish"
        } else if self.presence.is_some() {
            "presence"
        } else if self.presence_stats.is_some() {
            "presence_stats"
        } else if self.history.is_some() {
            "history"
        } else if self.ping.is_some() {
            "ping"
        } else if self.send.is_some() {
            "send"
        } else if self.rpc.is_some() {
            "rpc"
        } else if self.refresh.is_some() {
            "refresh"
        } else if self.sub_refresh.is_some() {
            "sub_refresh"
        } else {
            return None;
        })
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct ConnectRequest {
    #[serde(default)]
    pub token: String,
    #[serde(default, deserialize_with = "raw_opt::deserialize")]
    pub data: Option<RawJson>,
    /// Channels the client wants to recover after a reconnect (server-side subs).
    #[serde(default, deserialize_with = "object::map")]
    pub subs: BTreeMap<String, SubscribeRequest>,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub version: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct SubscribeRequest {
    #[serde(default)]
    pub channel: String,
    #[serde(default)]
    pub token: String,
    #[serde(default)]
    pub recover: bool,
    #[serde(default)]
    pub epoch: String,
    #[serde(default)]
    pub offset: u64,
    #[serde(default, deserialize_with = "raw_opt::deserialize")]
    pub data: Option<RawJson>,
    #[serde(default)]
    pub positioned: bool,
    #[serde(default)]
    pub recoverable: bool,
    #[serde(default)]
    pub join_leave: bool,
    /// Bit flags (the SDKs' `subscriptionFlags`): see [`FLAG_REJECT_UNRECOVERED`].
    /// Bit 1 (`channelCompaction`) is accepted and ignored: pushes always
    /// carry the channel name, which every SDK reads.
    #[serde(default)]
    pub flag: i64,
    /// Subscription type: 0 (a stream) is the only one implemented; map
    /// (1) and shared poll (4) subscriptions answer 108 "not available".
    #[serde(default, rename = "type")]
    pub kind: i32,
    /// Delta compression asked for: `fossil` is the only type.
    #[serde(default)]
    pub delta: String,
}

/// The delta compression type Groupcast implements (Fossil's delta format).
pub const DELTA_FOSSIL: &str = "fossil";

/// `flag` bit: when recovery was asked for and fails, answer 112
/// "unrecoverable position" instead of subscribing without the missed
/// publications (the SDK then reloads its state and subscribes again).
pub const FLAG_REJECT_UNRECOVERED: i64 = 2;

#[derive(Debug, Default, Deserialize)]
pub struct UnsubscribeRequest {
    #[serde(default)]
    pub channel: String,
}

#[derive(Debug, Deserialize)]
pub struct PublishRequest {
    #[serde(default)]
    pub channel: String,
    #[serde(default, deserialize_with = "raw_opt::deserialize")]
    pub data: Option<RawJson>,
    /// Groupcast extension: leave the publisher itself out of the fan-out
    /// (Phoenix's `broadcast_from`).
    #[serde(default)]
    pub exclude_self: bool,
    /// Protobuf only: `data` bytes that are not JSON, published as binary
    /// (then `data` is `None`).
    #[serde(skip)]
    pub binary: Option<bytes::Bytes>,
}

/// Request that names only a channel (`presence`, `presence_stats`). The
/// server API's `presence`, `presence_stats` and `history_remove` bodies
/// have the same shape and use this type (`crate::api::ChannelRequest`).
#[derive(Debug, Default, Deserialize)]
pub struct ChannelRequest {
    #[serde(default)]
    pub channel: String,
}

/// `history` params. The server API's body, `crate::api::HistoryRequest`,
/// has the same fields but is its own type: there `since` is read by serde's
/// default, which also takes a `[offset, epoch]` array by position, while
/// here only an object is read (a wrong shape fails the frame, see
/// `object`). One type for both would change what one of them accepts.
#[derive(Debug, Default, Deserialize)]
pub struct HistoryRequest {
    #[serde(default)]
    pub channel: String,
    #[serde(default)]
    pub limit: i32,
    #[serde(default, deserialize_with = "object::opt")]
    pub since: Option<StreamPosition>,
    #[serde(default)]
    pub reverse: bool,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct StreamPosition {
    #[serde(default)]
    pub offset: u64,
    #[serde(default)]
    pub epoch: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct SendRequest {
    #[serde(default, deserialize_with = "raw_opt::deserialize")]
    pub data: Option<RawJson>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RpcRequest {
    #[serde(default, deserialize_with = "raw_opt::deserialize")]
    pub data: Option<RawJson>,
    #[serde(default)]
    pub method: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct RefreshRequest {
    #[serde(default)]
    pub token: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct SubRefreshRequest {
    #[serde(default)]
    pub channel: String,
    #[serde(default)]
    pub token: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_holds_at_most_max_commands_per_frame() {
        let frame = |n: usize| vec!["{}"; n].join("\n");
        assert_eq!(
            decode_commands(frame(MAX_COMMANDS_PER_FRAME).as_bytes())
                .unwrap()
                .len(),
            MAX_COMMANDS_PER_FRAME
        );
        let e = decode_commands(frame(MAX_COMMANDS_PER_FRAME + 1).as_bytes()).unwrap_err();
        assert!(e.to_string().contains(TOO_MANY_COMMANDS), "{e}");
        // Protobuf: empty messages (one byte each) count alike.
        let pb = vec![0u8; MAX_COMMANDS_PER_FRAME];
        assert_eq!(
            crate::protobuf::decode_commands(&pb).unwrap().len(),
            MAX_COMMANDS_PER_FRAME
        );
        let pb = vec![0u8; MAX_COMMANDS_PER_FRAME + 1];
        assert!(matches!(
            crate::protobuf::decode_commands(&pb),
            Err(crate::protobuf::ProtoError::TooManyCommands)
        ));
    }

    #[test]
    fn decodes_batched_commands_and_ignores_unknown_fields() {
        let frame = br#"{"id":1,"connect":{"token":"t","name":"js","flag":7,"headers":{"a":"b"}}}
{"id":2,"subscribe":{"channel":"chat:1","recover":true,"offset":5,"epoch":"e"}}

{}"#;
        let cmds = decode_commands(frame).unwrap();
        assert_eq!(cmds.len(), 3);
        assert_eq!(cmds[0].method(), Some("connect"));
        assert_eq!(cmds[0].connect.as_ref().unwrap().token, "t");
        let s = cmds[1].subscribe.as_ref().unwrap();
        assert_eq!(
            (s.channel.as_str(), s.recover, s.offset),
            ("chat:1", true, 5)
        );
        assert_eq!(cmds[2].id, 0);
        assert_eq!(cmds[2].method(), None);
    }

    #[test]
    fn wrong_types_and_garbage_are_errors() {
        assert!(decode_commands(br#"{"id":1,"subscribe":{"channel":5}}"#).is_err());
        assert!(decode_commands(br#"{"id":"x"}"#).is_err());
        assert!(decode_commands(b"not json").is_err());
        assert!(decode_commands(br#"{"id":1}"#).is_ok());
        assert!(decode_commands(br#"[1,2]"#).is_err());
    }

    #[test]
    fn params_that_are_not_objects_are_marked_not_read_by_position() {
        for (frame, method) in [
            (&br#"{"id":4,"connect":["token"]}"#[..], "connect"),
            (br#"{"id":4,"subscribe":"room"}"#, "subscribe"),
            (br#"{"id":4,"ping":[]}"#, "ping"),
            (br#"{"id":4,"publish":5,"x":1}"#, "publish"),
        ] {
            let cmds = decode_commands(frame).unwrap();
            assert_eq!(cmds.len(), 1);
            assert_eq!(cmds[0].id, 4);
            assert_eq!(cmds[0].params_not_object, Some(method));
            assert_eq!(cmds[0].method(), None, "nothing to run");
            assert!(cmds[0].connect.is_none(), "not connected by position");
        }
        // `null` is absent, as before.
        let cmds = decode_commands(br#"{"id":4,"ping":null}"#).unwrap();
        assert_eq!(cmds[0].params_not_object, None);
        // A bad id, or a wrong type below the params, still fails the frame.
        assert!(decode_commands(br#"{"id":"x","connect":[]}"#).is_err());
        assert!(decode_commands(br#"{"id":1,"history":{"channel":"a","since":[1,"e"]}}"#).is_err());
        assert!(decode_commands(br#"{"id":1,"connect":{"subs":{"a":[true]}}}"#).is_err());
    }

    #[test]
    fn publish_data_stays_raw() {
        let cmds =
            decode_commands(br#"{"id":3,"publish":{"channel":"c","data":{"b":1, "a":[1,2]}}}"#)
                .unwrap();
        let p = cmds[0].publish.as_ref().unwrap();
        assert_eq!(p.data.as_ref().unwrap().get(), r#"{"b":1, "a":[1,2]}"#);
    }
}

#[cfg(test)]
mod nesting {
    /// Embedded data is skipped iteratively: 30,000 levels decode on a
    /// 128 KiB stack (a recursive parser would overflow it).
    #[test]
    fn deep_data_decodes_without_recursion() {
        std::thread::Builder::new()
            .stack_size(128 * 1024)
            .spawn(|| {
                let depth = 30_000;
                let frame = format!(
                    "{{\"id\":1,\"publish\":{{\"channel\":\"a\",\"data\":{}{}}}}}",
                    "[".repeat(depth),
                    "]".repeat(depth)
                );
                let cmds = super::decode_commands(frame.as_bytes()).unwrap();
                let data = cmds[0].publish.as_ref().unwrap().data.as_ref().unwrap();
                assert_eq!(data.get().len(), 2 * depth);
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
