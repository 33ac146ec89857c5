//! Encoding replies and pushes: each result and push decoded back, and
//! the bytes compared with ones written from the schema's field numbers.

use std::collections::BTreeMap;

use prost::Message as _;

use super::{raw, wire};
use crate::client::{self, PubView, PublicationOut};
use crate::codes::ErrorCode;
use crate::protobuf::*;

fn decode_replies(frame: &[u8]) -> Vec<Reply> {
    let mut rest = frame;
    let mut out = Vec::new();
    while !rest.is_empty() {
        out.push(Reply::decode_length_delimited(&mut rest).unwrap());
    }
    out
}

fn one_reply(frame: &[u8]) -> Reply {
    let mut replies = decode_replies(frame);
    assert_eq!(replies.len(), 1);
    replies.pop().unwrap()
}

pub(super) fn info() -> client::ClientInfo {
    client::ClientInfo {
        user: "u".into(),
        client: "c1".into(),
        conn_info: Some(raw(r#"{"n":1}"#)),
        chan_info: Some(raw("[2]")),
    }
}

pub(super) fn publication_out(offset: u64) -> PublicationOut {
    PublicationOut {
        data: raw(r#"{"x":1}"#),
        info: Some(info()),
        offset,
        tags: [("k".to_string(), "v".to_string())].into(),
    }
}

fn check_info(i: &ClientInfo) {
    assert_eq!(i.user, "u");
    assert_eq!(i.client, "c1");
    assert_eq!(i.conn_info, br#"{"n":1}"#);
    assert_eq!(i.chan_info, b"[2]");
}

fn check_publication(p: &Publication, offset: u64) {
    assert_eq!(p.data, br#"{"x":1}"#);
    check_info(p.info.as_ref().unwrap());
    assert_eq!(p.offset, offset);
    assert_eq!(p.tags, [("k".to_string(), "v".to_string())].into());
    assert_eq!(
        Publication {
            data: Vec::new(),
            info: None,
            offset: 0,
            tags: BTreeMap::new(),
            ..p.clone()
        },
        Publication::default(),
        "nothing else set"
    );
}

pub(super) fn subscribe_result() -> client::SubscribeResult {
    client::SubscribeResult {
        expires: true,
        ttl: 30,
        recoverable: true,
        epoch: "ep".into(),
        publications: vec![publication_out(8), publication_out(9)],
        recovered: true,
        offset: 9,
        positioned: true,
        data: Some(raw(r#"{"d":true}"#)),
        was_recovering: true,
        delta: true,
    }
}

fn check_subscribe_result(s: &SubscribeResult) {
    assert!(s.expires && s.recoverable && s.recovered && s.positioned && s.was_recovering);
    assert!(s.delta, "delta negotiated");
    assert_eq!(s.ttl, 30);
    assert_eq!(s.epoch, "ep");
    assert_eq!(s.offset, 9);
    assert_eq!(s.data, br#"{"d":true}"#);
    assert_eq!(s.publications.len(), 2);
    check_publication(&s.publications[0], 8);
    check_publication(&s.publications[1], 9);
    assert!(s.id == 0 && s.kind == 0 && s.state.is_empty());
}

/// Only the named result is set, with the command's id and no error.
fn only(r: &Reply, id: u32, name: &str) {
    assert_eq!(r.id, id);
    let set = [
        ("error", r.error.is_some()),
        ("push", r.push.is_some()),
        ("connect", r.connect.is_some()),
        ("subscribe", r.subscribe.is_some()),
        ("unsubscribe", r.unsubscribe.is_some()),
        ("publish", r.publish.is_some()),
        ("presence", r.presence.is_some()),
        ("presence_stats", r.presence_stats.is_some()),
        ("history", r.history.is_some()),
        ("ping", r.ping.is_some()),
        ("rpc", r.rpc.is_some()),
        ("refresh", r.refresh.is_some()),
        ("sub_refresh", r.sub_refresh.is_some()),
    ];
    let set: Vec<_> = set.iter().filter(|s| s.1).map(|s| s.0).collect();
    assert_eq!(set, [name]);
}

#[test]
fn connect_reply() {
    let reply = client::Reply {
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
    let r = one_reply(&encode_reply(&reply));
    only(&r, 1, "connect");
    let c = r.connect.unwrap();
    assert_eq!(
        (c.client.as_str(), c.version.as_str(), c.expires, c.ttl),
        ("cid", "0.1", true, 60)
    );
    assert_eq!(c.data, br#"{"hello":"world"}"#);
    assert_eq!(c.subs.len(), 1);
    check_subscribe_result(&c.subs["srv"]);
    assert_eq!((c.ping, c.pong), (25, true));
    assert_eq!((c.session.as_str(), c.node.as_str()), ("s", "n"));
    assert_eq!((c.time, c.flag, c.dict), (0, 0, None));
}

#[test]
fn subscribe_reply() {
    let reply = client::Reply {
        id: 2,
        subscribe: Some(subscribe_result()),
        ..Default::default()
    };
    let r = one_reply(&encode_reply(&reply));
    only(&r, 2, "subscribe");
    check_subscribe_result(r.subscribe.as_ref().unwrap());
    // An empty result is still a result: the field is present.
    let empty = client::Reply {
        id: 3,
        subscribe: Some(client::SubscribeResult::default()),
        ..Default::default()
    };
    let r = one_reply(&encode_reply(&empty));
    only(&r, 3, "subscribe");
    assert_eq!(r.subscribe.unwrap(), SubscribeResult::default());
}

#[test]
fn replies_without_fields() {
    let cases: [(client::Reply, &str); 3] = [
        (
            client::Reply {
                id: 4,
                unsubscribe: Some(client::Empty {}),
                ..Default::default()
            },
            "unsubscribe",
        ),
        (
            client::Reply {
                id: 4,
                publish: Some(client::Empty {}),
                ..Default::default()
            },
            "publish",
        ),
        (
            client::Reply {
                id: 4,
                ping: Some(client::Empty {}),
                ..Default::default()
            },
            "ping",
        ),
    ];
    for (reply, name) in cases {
        only(&one_reply(&encode_reply(&reply)), 4, name);
    }
    // Field 8 (publish), empty: the bytes are known.
    let publish = client::Reply {
        id: 4,
        publish: Some(client::Empty {}),
        ..Default::default()
    };
    assert_eq!(encode_reply(&publish), [4, 0x08, 4, 0x42, 0]);
}

#[test]
fn presence_replies() {
    let mut other = info();
    other.conn_info = None;
    other.chan_info = None;
    other.client = "c2".into();
    let reply = client::Reply {
        id: 5,
        presence: Some(client::PresenceResult {
            presence: [("c1".to_string(), info()), ("c2".to_string(), other)].into(),
        }),
        ..Default::default()
    };
    let r = one_reply(&encode_reply(&reply));
    only(&r, 5, "presence");
    let p = r.presence.unwrap().presence;
    assert_eq!(p.len(), 2);
    check_info(&p["c1"]);
    assert_eq!(
        p["c2"],
        ClientInfo {
            user: "u".into(),
            client: "c2".into(),
            conn_info: Vec::new(),
            chan_info: Vec::new(),
        }
    );

    let stats = client::Reply {
        id: 6,
        presence_stats: Some(client::PresenceStatsResult {
            num_clients: 3,
            num_users: 2,
        }),
        ..Default::default()
    };
    let bytes = encode_reply(&stats);
    let r = one_reply(&bytes);
    only(&r, 6, "presence_stats");
    assert_eq!(
        r.presence_stats.unwrap(),
        PresenceStatsResult {
            num_clients: 3,
            num_users: 2
        }
    );
    let hand = [
        wire::uint(1, 6),
        wire::bytes(10, &[wire::uint(1, 3), wire::uint(2, 2)].concat()),
    ]
    .concat();
    assert_eq!(bytes, wire::frame(&hand));
}

#[test]
fn history_reply() {
    let reply = client::Reply {
        id: 7,
        history: Some(client::HistoryResult {
            publications: vec![publication_out(1), publication_out(2)],
            epoch: "ep".into(),
            offset: 2,
        }),
        ..Default::default()
    };
    let r = one_reply(&encode_reply(&reply));
    only(&r, 7, "history");
    let h = r.history.unwrap();
    assert_eq!(h.publications.len(), 2);
    check_publication(&h.publications[0], 1);
    check_publication(&h.publications[1], 2);
    assert_eq!((h.epoch.as_str(), h.offset), ("ep", 2));
}

#[test]
fn rpc_and_refresh_replies() {
    let rpc = client::Reply {
        id: 8,
        rpc: Some(client::RpcResult {
            data: Some(raw(r#"{"r":[1]}"#)),
        }),
        ..Default::default()
    };
    let r = one_reply(&encode_reply(&rpc));
    only(&r, 8, "rpc");
    assert_eq!(r.rpc.unwrap().data, br#"{"r":[1]}"#);
    let rpc = client::Reply {
        id: 8,
        rpc: Some(client::RpcResult { data: None }),
        ..Default::default()
    };
    assert!(one_reply(&encode_reply(&rpc)).rpc.unwrap().data.is_empty());

    let refresh = client::Reply {
        id: 9,
        refresh: Some(client::RefreshResult {
            client: "cid".into(),
            version: "0.1".into(),
            expires: true,
            ttl: 120,
        }),
        ..Default::default()
    };
    let r = one_reply(&encode_reply(&refresh));
    only(&r, 9, "refresh");
    assert_eq!(
        r.refresh.unwrap(),
        RefreshResult {
            client: "cid".into(),
            version: "0.1".into(),
            expires: true,
            ttl: 120
        }
    );

    let sub_refresh = client::Reply {
        id: 10,
        sub_refresh: Some(client::SubRefreshResult {
            expires: true,
            ttl: 7,
        }),
        ..Default::default()
    };
    let r = one_reply(&encode_reply(&sub_refresh));
    only(&r, 10, "sub_refresh");
    assert_eq!(
        r.sub_refresh.unwrap(),
        SubRefreshResult {
            expires: true,
            ttl: 7,
            items: Vec::new()
        }
    );
}

#[test]
fn error_replies() {
    for code in ErrorCode::ALL {
        let r = one_reply(&encode_reply(&client::Reply::error(11, code)));
        only(&r, 11, "error");
        assert_eq!(
            r.error.unwrap(),
            Error {
                code: code.code,
                message: code.message.into(),
                temporary: code.temporary,
            }
        );
    }
    let bytes = encode_reply(&client::Reply::error(1, ErrorCode::INTERNAL));
    let error = [
        wire::uint(1, 100),
        wire::str(2, "internal server error"),
        wire::uint(3, 1),
    ]
    .concat();
    let hand = [wire::uint(1, 1), wire::bytes(2, &error)].concat();
    assert_eq!(bytes, wire::frame(&hand));
}

#[test]
fn ping_is_an_empty_reply() {
    assert_eq!(encode_ping(), [0]);
    assert_eq!(one_reply(&encode_ping()), Reply::default());
}

/// A push: id 0, no error, no result; returns the push.
fn push_of(frame: &[u8]) -> Push {
    let r = one_reply(frame);
    only(&r, 0, "push");
    r.push.unwrap()
}

#[test]
fn pub_push() {
    let tags = [("k".to_string(), "v".to_string())].into();
    let data = raw(r#"{"x":1}"#);
    let info = info();
    let bytes = encode_pub_push(
        "news",
        PubView {
            data: &data,
            offset: 4,
            info: Some(&info),
            tags: &tags,
            delta: false,
        },
    );
    let p = push_of(&bytes);
    assert_eq!(p.channel, "news");
    assert_eq!(p.id, 0);
    check_publication(p.publication.as_ref().unwrap(), 4);
    assert_eq!(
        Push {
            channel: String::new(),
            publication: None,
            ..p
        },
        Push::default(),
        "only the channel and the publication"
    );
    // The same, written by hand from the schema's numbers.
    let info = [
        wire::str(1, "u"),
        wire::str(2, "c1"),
        wire::bytes(3, br#"{"n":1}"#),
        wire::bytes(4, b"[2]"),
    ]
    .concat();
    let publication = [
        wire::bytes(4, br#"{"x":1}"#),
        wire::bytes(5, &info),
        wire::uint(6, 4),
        wire::entry(7, "k", "v"),
    ]
    .concat();
    let push = [wire::str(2, "news"), wire::bytes(4, &publication)].concat();
    assert_eq!(bytes, wire::frame(&wire::bytes(4, &push)));

    // No info, no tags, offset 0: only the data.
    let empty = BTreeMap::new();
    let bytes = encode_pub_push(
        "news",
        PubView {
            data: &data,
            offset: 0,
            info: None,
            tags: &empty,
            delta: false,
        },
    );
    let p = push_of(&bytes).publication.unwrap();
    assert_eq!(
        p,
        Publication {
            data: br#"{"x":1}"#.to_vec(),
            ..Default::default()
        }
    );
}

#[test]
fn join_and_leave_pushes() {
    let info = info();
    let join = push_of(&encode_join_push("room", &info));
    assert_eq!(join.channel, "room");
    check_info(join.join.as_ref().unwrap().info.as_ref().unwrap());
    assert!(join.leave.is_none() && join.publication.is_none());
    let leave = push_of(&encode_leave_push("room", &info));
    assert_eq!(leave.channel, "room");
    check_info(leave.leave.as_ref().unwrap().info.as_ref().unwrap());
    assert!(leave.join.is_none());

    let mut bare = info.clone();
    bare.conn_info = None;
    bare.chan_info = None;
    let info = [wire::str(1, "u"), wire::str(2, "c1")].concat();
    for (bytes, field) in [
        (encode_join_push("room", &bare), 5),
        (encode_leave_push("room", &bare), 6),
    ] {
        let push = [
            wire::str(2, "room"),
            wire::bytes(field, &wire::bytes(1, &info)),
        ]
        .concat();
        assert_eq!(bytes, wire::frame(&wire::bytes(4, &push)));
    }
}

#[test]
fn unsubscribe_push() {
    let bytes = encode_unsubscribe_push("room", 2000, "server unsubscribe");
    let p = push_of(&bytes);
    assert_eq!(p.channel, "room");
    assert_eq!(
        p.unsubscribe.unwrap(),
        Unsubscribe {
            code: 2000,
            reason: "server unsubscribe".into()
        }
    );
    let unsub = [wire::uint(2, 2000), wire::str(3, "server unsubscribe")].concat();
    let push = [wire::str(2, "room"), wire::bytes(7, &unsub)].concat();
    assert_eq!(bytes, wire::frame(&wire::bytes(4, &push)));
}

#[test]
fn subscribe_push() {
    let bytes = encode_subscribe_push("srv", &subscribe_result());
    let p = push_of(&bytes);
    assert_eq!(p.channel, "srv");
    assert_eq!(
        p.subscribe.unwrap(),
        Subscribe {
            recoverable: true,
            epoch: "ep".into(),
            offset: 9,
            positioned: true,
            data: br#"{"d":true}"#.to_vec(),
        }
    );
    let sub = [
        wire::uint(1, 1),
        wire::str(4, "ep"),
        wire::uint(5, 9),
        wire::uint(6, 1),
        wire::bytes(7, br#"{"d":true}"#),
    ]
    .concat();
    let push = [wire::str(2, "srv"), wire::bytes(9, &sub)].concat();
    assert_eq!(bytes, wire::frame(&wire::bytes(4, &push)));
}

#[test]
fn several_replies_in_one_frame() {
    let info = info();
    let tags = BTreeMap::new();
    let data = raw("1");
    let frame = [
        encode_reply(&client::Reply::error(3, ErrorCode::BAD_REQUEST)),
        encode_pub_push(
            "a",
            PubView {
                data: &data,
                offset: 1,
                info: None,
                tags: &tags,
                delta: false,
            },
        ),
        encode_ping(),
        encode_join_push("a", &info),
    ]
    .concat();
    let replies = decode_replies(&frame);
    assert_eq!(replies.len(), 4);
    assert_eq!(replies[0].error.as_ref().unwrap().code, 107);
    assert_eq!(
        replies[1]
            .push
            .as_ref()
            .unwrap()
            .publication
            .as_ref()
            .unwrap()
            .data,
        b"1"
    );
    assert_eq!(replies[2], Reply::default());
    assert_eq!(replies[3].push.as_ref().unwrap().channel, "a");
}
