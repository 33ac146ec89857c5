//! One command of every method, three ways: the JSON text, the prost
//! value and the bytes written by hand from the schema's field numbers.

use super::wire;
use crate::protobuf::*;

/// Every command type: the JSON decoding, the decoding of prost's
/// encoding and the decoding of hand-written bytes are the same model.
pub fn cases() -> Vec<(Option<&'static str>, String, Command, Vec<u8>)> {
    use wire::{bytes, str, uint};
    let sub_hand = |channel: &str| {
        [
            str(1, channel),
            str(2, "st"),
            uint(3, 1),
            str(6, "ep"),
            uint(7, 9_007_199_254_740_993),
            bytes(8, br#"{"x":"y"}"#),
            uint(9, 1),
            uint(10, 1),
            uint(11, 1),
            uint(14, 3),
            uint(15, 1),
        ]
        .concat()
    };
    let sub_pb = |channel: &str| SubscribeRequest {
        channel: channel.into(),
        token: "st".into(),
        recover: true,
        epoch: "ep".into(),
        offset: 9_007_199_254_740_993,
        data: br#"{"x":"y"}"#.to_vec(),
        positioned: true,
        recoverable: true,
        join_leave: true,
        flag: 3,
        kind: 1,
        ..Default::default()
    };
    let sub_json = r#""token":"st","recover":true,"epoch":"ep","offset":9007199254740993,"data":{"x":"y"},"positioned":true,"recoverable":true,"join_leave":true,"flag":3,"type":1"#;
    vec![
        (
            Some("connect"),
            r#"{"id":1,"connect":{"token":"t","data":{"a":1},"subs":{"chat:1":{"channel":"chat:1","token":"st","recover":true,"epoch":"ep","offset":9007199254740993,"data":{"x":"y"},"positioned":true,"recoverable":true,"join_leave":true,"flag":3,"type":1}},"name":"js","version":"1.0"}}"#,
            Command {
                id: 1,
                connect: Some(ConnectRequest {
                    token: "t".into(),
                    data: br#"{"a":1}"#.to_vec(),
                    subs: [("chat:1".to_string(), sub_pb("chat:1"))].into(),
                    name: "js".into(),
                    version: "1.0".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            [
                uint(1, 1),
                bytes(
                    4,
                    &[
                        str(1, "t"),
                        bytes(2, br#"{"a":1}"#),
                        bytes(3, &[str(1, "chat:1"), bytes(2, &sub_hand("chat:1"))].concat()),
                        str(4, "js"),
                        str(5, "1.0"),
                    ]
                    .concat(),
                ),
            ]
            .concat(),
        ),
        (
            Some("subscribe"),
            // Built below from `sub_json`.
            "",
            Command {
                id: 2,
                subscribe: Some(sub_pb("room")),
                ..Default::default()
            },
            [uint(1, 2), bytes(5, &sub_hand("room"))].concat(),
        ),
        (
            Some("unsubscribe"),
            r#"{"id":3,"unsubscribe":{"channel":"room"}}"#,
            Command {
                id: 3,
                unsubscribe: Some(UnsubscribeRequest {
                    channel: "room".into(),
                }),
                ..Default::default()
            },
            [uint(1, 3), bytes(6, &str(1, "room"))].concat(),
        ),
        (
            Some("publish"),
            r#"{"id":4,"publish":{"channel":"room","data":{"b":1, "a":[1,2]}}}"#,
            Command {
                id: 4,
                publish: Some(PublishRequest {
                    channel: "room".into(),
                    data: br#"{"b":1, "a":[1,2]}"#.to_vec(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            [
                uint(1, 4),
                bytes(7, &[str(1, "room"), bytes(2, br#"{"b":1, "a":[1,2]}"#)].concat()),
            ]
            .concat(),
        ),
        (
            Some("presence"),
            r#"{"id":5,"presence":{"channel":"p"}}"#,
            Command {
                id: 5,
                presence: Some(PresenceRequest {
                    channel: "p".into(),
                }),
                ..Default::default()
            },
            [uint(1, 5), bytes(8, &str(1, "p"))].concat(),
        ),
        (
            Some("presence_stats"),
            r#"{"id":6,"presence_stats":{"channel":"ps"}}"#,
            Command {
                id: 6,
                presence_stats: Some(PresenceStatsRequest {
                    channel: "ps".into(),
                }),
                ..Default::default()
            },
            [uint(1, 6), bytes(9, &str(1, "ps"))].concat(),
        ),
        (
            Some("history"),
            r#"{"id":7,"history":{"channel":"h","limit":-1,"since":{"offset":3,"epoch":"e"},"reverse":true}}"#,
            Command {
                id: 7,
                history: Some(HistoryRequest {
                    channel: "h".into(),
                    limit: -1,
                    since: Some(StreamPosition {
                        offset: 3,
                        epoch: "e".into(),
                    }),
                    reverse: true,
                }),
                ..Default::default()
            },
            [
                uint(1, 7),
                bytes(
                    10,
                    &[
                        str(1, "h"),
                        // int32 -1: sign-extended to ten bytes.
                        uint(7, -1i64 as u64),
                        bytes(8, &[uint(1, 3), str(2, "e")].concat()),
                        uint(9, 1),
                    ]
                    .concat(),
                ),
            ]
            .concat(),
        ),
        (
            Some("history"),
            r#"{"id":70,"history":{"channel":"h","since":{}}}"#,
            Command {
                id: 70,
                history: Some(HistoryRequest {
                    channel: "h".into(),
                    since: Some(StreamPosition::default()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            [uint(1, 70), bytes(10, &[str(1, "h"), bytes(8, &[])].concat())].concat(),
        ),
        (
            Some("ping"),
            r#"{"id":8,"ping":{}}"#,
            Command {
                id: 8,
                ping: Some(PingRequest {}),
                ..Default::default()
            },
            [uint(1, 8), bytes(11, &[])].concat(),
        ),
        (
            Some("send"),
            r#"{"send":{"data":"hi"}}"#,
            Command {
                send: Some(SendRequest {
                    data: br#""hi""#.to_vec(),
                }),
                ..Default::default()
            },
            bytes(12, &bytes(1, br#""hi""#)),
        ),
        (
            Some("rpc"),
            r#"{"id":9,"rpc":{"data":{"q":[true,null]},"method":"m"}}"#,
            Command {
                id: 9,
                rpc: Some(RpcRequest {
                    data: br#"{"q":[true,null]}"#.to_vec(),
                    method: "m".into(),
                }),
                ..Default::default()
            },
            [
                uint(1, 9),
                bytes(13, &[bytes(1, br#"{"q":[true,null]}"#), str(2, "m")].concat()),
            ]
            .concat(),
        ),
        (
            Some("refresh"),
            r#"{"id":10,"refresh":{"token":"rt"}}"#,
            Command {
                id: 10,
                refresh: Some(RefreshRequest { token: "rt".into() }),
                ..Default::default()
            },
            [uint(1, 10), bytes(14, &str(1, "rt"))].concat(),
        ),
        (
            Some("sub_refresh"),
            r#"{"id":11,"sub_refresh":{"channel":"room","token":"srt"}}"#,
            Command {
                id: 11,
                sub_refresh: Some(SubRefreshRequest {
                    channel: "room".into(),
                    token: "srt".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            [uint(1, 11), bytes(15, &[str(1, "room"), str(2, "srt")].concat())].concat(),
        ),
        // The pong, and an id without a method (answered 104).
        (None, "{}", Command::default(), Vec::new()),
        (
            None,
            r#"{"id":4294967295}"#,
            Command {
                id: u32::MAX,
                ..Default::default()
            },
            uint(1, u64::from(u32::MAX)),
        ),
    ]
    .into_iter()
    .map(|(m, json, pb, hand)| {
        let json = if json.is_empty() {
            format!(r#"{{"id":2,"subscribe":{{"channel":"room",{sub_json}}}}}"#)
        } else {
            json.to_owned()
        };
        (m, json, pb, hand)
    })
    .collect()
}
