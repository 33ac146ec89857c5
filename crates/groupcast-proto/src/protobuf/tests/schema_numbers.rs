//! The result and push fields Groupcast sets, byte for byte against
//! the schema's field numbers (typed in from `client.proto`, not taken
//! from the derive attributes they check).

use std::collections::BTreeMap;

use super::encode::{info, publication_out, subscribe_result};
use super::{raw, wire};
use crate::client;
use crate::protobuf::*;

/// Each result field Groupcast sets, written by hand from the schema's
/// field numbers: the tests above decode replies with the same derived
/// types, which a wrong number in a derive attribute would pass.
#[test]
fn result_fields_have_the_schemas_numbers() {
    use wire::{bytes, entry, frame, str, uint};
    // ClientInfo: user 1, client 2, conn_info 3, chan_info 4.
    let info_bytes = [
        str(1, "u"),
        str(2, "c1"),
        bytes(3, br#"{"n":1}"#),
        bytes(4, b"[2]"),
    ]
    .concat();
    // Publication: data 4, info 5, offset 6, tags 7.
    let publication = |offset: u64| {
        [
            bytes(4, br#"{"x":1}"#),
            bytes(5, &info_bytes),
            uint(6, offset),
            entry(7, "k", "v"),
        ]
        .concat()
    };
    // SubscribeResult: expires 1, ttl 2, recoverable 3, epoch 6,
    // publications 7, recovered 8, offset 9, positioned 10, data 11,
    // was_recovering 12, delta 13.
    let sub = [
        uint(1, 1),
        uint(2, 30),
        uint(3, 1),
        str(6, "ep"),
        bytes(7, &publication(8)),
        bytes(7, &publication(9)),
        uint(8, 1),
        uint(9, 9),
        uint(10, 1),
        bytes(11, br#"{"d":true}"#),
        uint(12, 1),
        uint(13, 1),
    ]
    .concat();
    let reply = |id: u32, field: u32, result: &[u8]| {
        frame(&[uint(1, id.into()), bytes(field, result)].concat())
    };

    // Reply.connect 5. ConnectResult: client 1, version 2, expires 3,
    // ttl 4, data 5, subs 6 (map entry: key 1, value 2), ping 7, pong 8,
    // session 9, node 10.
    let connect = client::Reply {
        id: 1,
        connect: Some(client::ConnectResult {
            client: "cid".into(),
            version: "0.1".into(),
            expires: true,
            ttl: 60,
            data: Some(raw(r#"{"hello":"world"}"#)),
            subs: [("srv".to_string(), subscribe_result())].into(),
            ping: 25,
            pong: true,
            session: "s".into(),
            node: "n".into(),
        }),
        ..Default::default()
    };
    let connect_hand = [
        str(1, "cid"),
        str(2, "0.1"),
        uint(3, 1),
        uint(4, 60),
        bytes(5, br#"{"hello":"world"}"#),
        bytes(6, &[str(1, "srv"), bytes(2, &sub)].concat()),
        uint(7, 25),
        uint(8, 1),
        str(9, "s"),
        str(10, "n"),
    ]
    .concat();
    assert_eq!(encode_reply(&connect), reply(1, 5, &connect_hand));

    // Reply.subscribe 6.
    let subscribe = client::Reply {
        id: 2,
        subscribe: Some(subscribe_result()),
        ..Default::default()
    };
    assert_eq!(encode_reply(&subscribe), reply(2, 6, &sub));

    // Reply.presence 9. PresenceResult: presence 1 (map<string, ClientInfo>).
    let presence = client::Reply {
        id: 3,
        presence: Some(client::PresenceResult {
            presence: [("c1".to_string(), info())].into(),
        }),
        ..Default::default()
    };
    let presence_hand = bytes(1, &[str(1, "c1"), bytes(2, &info_bytes)].concat());
    assert_eq!(encode_reply(&presence), reply(3, 9, &presence_hand));

    // Reply.history 11. HistoryResult: publications 1, epoch 2, offset 3.
    let history = client::Reply {
        id: 4,
        history: Some(client::HistoryResult {
            publications: vec![publication_out(1)],
            epoch: "ep".into(),
            offset: 1,
        }),
        ..Default::default()
    };
    let history_hand = [bytes(1, &publication(1)), str(2, "ep"), uint(3, 1)].concat();
    assert_eq!(encode_reply(&history), reply(4, 11, &history_hand));

    // Reply.rpc 13. RPCResult: data 1.
    let rpc = client::Reply {
        id: 5,
        rpc: Some(client::RpcResult {
            data: Some(raw("[1]")),
        }),
        ..Default::default()
    };
    assert_eq!(encode_reply(&rpc), reply(5, 13, &bytes(1, b"[1]")));

    // Reply.refresh 14. RefreshResult: client 1, version 2, expires 3,
    // ttl 4.
    let refresh = client::Reply {
        id: 6,
        refresh: Some(client::RefreshResult {
            client: "cid".into(),
            version: "0.1".into(),
            expires: true,
            ttl: 120,
        }),
        ..Default::default()
    };
    let refresh_hand = [str(1, "cid"), str(2, "0.1"), uint(3, 1), uint(4, 120)].concat();
    assert_eq!(encode_reply(&refresh), reply(6, 14, &refresh_hand));

    // Reply.sub_refresh 15. SubRefreshResult: expires 1, ttl 2.
    let sub_refresh = client::Reply {
        id: 7,
        sub_refresh: Some(client::SubRefreshResult {
            expires: true,
            ttl: 7,
        }),
        ..Default::default()
    };
    let sub_refresh_hand = [uint(1, 1), uint(2, 7)].concat();
    assert_eq!(encode_reply(&sub_refresh), reply(7, 15, &sub_refresh_hand));

    // Push.pub 4 with Publication.delta 8.
    let delta = encode_pub_push_bytes("news", b"d", true, 4, None, &BTreeMap::new());
    let publication = [bytes(4, b"d"), uint(6, 4), uint(8, 1)].concat();
    let push = [str(2, "news"), bytes(4, &publication)].concat();
    assert_eq!(delta, frame(&bytes(4, &push)));
}
