//! Decoding commands: every method against its JSON twin, frames of
//! several, truncated, oversized and garbage frames, and `data` rules.

use prost::Message as _;

use super::cases::cases;
use super::{decode_one, same, wire};
use crate::client;
use crate::protobuf::*;

#[test]
fn every_command_decodes_as_its_json_twin() {
    let cases = cases();
    assert_eq!(cases.len(), 15);
    let mut methods: Vec<_> = cases.iter().filter_map(|c| c.0).collect();
    methods.sort_unstable();
    methods.dedup();
    let mut all = client::METHODS.to_vec();
    all.sort_unstable();
    assert_eq!(methods, all, "every method of the model is covered");
    for (method, json, pb, hand) in cases {
        let from_json = client::decode_commands(json.as_bytes()).unwrap();
        assert_eq!(from_json.len(), 1, "{json}");
        let from_pb = decode_one(&pb.encode_length_delimited_to_vec());
        let from_hand = decode_one(&wire::frame(&hand));
        assert_eq!(from_pb.method(), method, "{json}");
        same(&from_pb, &from_json[0]);
        same(&from_hand, &from_json[0]);
        // The hand-written bytes are what prost writes, and decode back.
        assert_eq!(pb.encode_to_vec(), hand, "{json}");
        assert_eq!(Command::decode(&hand[..]).unwrap(), pb);
    }
}

#[test]
fn fields_decoded_are_the_ones_sent() {
    // A spot check on values, beside the comparison with JSON above.
    let cases = cases();
    let connect = decode_one(&cases[0].2.encode_length_delimited_to_vec());
    let c = connect.connect.as_ref().unwrap();
    assert_eq!(c.data.as_ref().unwrap().get(), r#"{"a":1}"#);
    let s = &c.subs["chat:1"];
    assert_eq!(
        (s.offset, s.flag, s.kind, s.join_leave),
        (9_007_199_254_740_993, 3, 1, true)
    );
    assert_eq!(s.data.as_ref().unwrap().get(), r#"{"x":"y"}"#);
    let history = decode_one(&cases[6].2.encode_length_delimited_to_vec());
    let h = history.history.unwrap();
    assert_eq!(h.limit, -1);
    assert_eq!(
        h.since,
        Some(client::StreamPosition {
            offset: 3,
            epoch: "e".into()
        })
    );
    let publish = decode_one(&cases[3].2.encode_length_delimited_to_vec());
    let p = publish.publish.unwrap();
    assert_eq!(
        p.data.unwrap().get(),
        r#"{"b":1, "a":[1,2]}"#,
        "kept verbatim"
    );
    assert!(!p.exclude_self);
}

#[test]
fn the_docs_example_is_a_subscribe() {
    // centrifugal.dev's client protocol page: {"id":2,"subscribe":
    // {"channel":"chat:42"}} is these 13 bytes in protobuf.
    let message = b"\x08\x02\x2a\x09\x0a\x07chat:42";
    let pb = Command {
        id: 2,
        subscribe: Some(SubscribeRequest {
            channel: "chat:42".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!(pb.encode_to_vec(), message);
    let mut frame = vec![13];
    frame.extend_from_slice(message);
    let cmd = decode_one(&frame);
    assert_eq!(cmd.id, 2);
    assert_eq!(cmd.subscribe.unwrap().channel, "chat:42");
}

#[test]
fn fields_the_model_lacks_and_unknown_fields_are_skipped() {
    let pb = Command {
        id: 1,
        connect: Some(ConnectRequest {
            token: "t".into(),
            headers: [("h".to_string(), "v".to_string())].into(),
            flag: 5,
            dict: "d".into(),
            profile: "p".into(),
            subs: [(
                "a".to_string(),
                SubscribeRequest {
                    channel: "a".into(),
                    delta: "fossil".into(),
                    tf: Some(FilterNode {
                        op: "and".into(),
                        nodes: vec![FilterNode {
                            key: "k".into(),
                            cmp: "eq".into(),
                            val: "v".into(),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                    phase: 1,
                    cursor: "c".into(),
                    limit: 5,
                    asc: true,
                    ..Default::default()
                },
            )]
            .into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut message = pb.encode_to_vec();
    // Field 99, varint 7; field 100, bytes "xy": not in the schema.
    message.extend([0x98, 0x06, 0x07, 0xa2, 0x06, 0x02, b'x', b'y']);
    let cmd = decode_one(&wire::frame(&message));
    let json = client::decode_commands(
        br#"{"id":1,"connect":{"token":"t","headers":{"h":"v"},"subs":{"a":{"channel":"a","delta":"fossil"}}}}"#,
    )
    .unwrap();
    same(&cmd, &json[0]);

    let publish = Command {
        id: 2,
        publish: Some(PublishRequest {
            channel: "m".into(),
            data: b"1".to_vec(),
            kind: 1,
            key: "k".into(),
            removed: true,
        }),
        ..Default::default()
    };
    let json = client::decode_commands(br#"{"id":2,"publish":{"channel":"m","data":1}}"#);
    same(
        &decode_one(&publish.encode_length_delimited_to_vec()),
        &json.unwrap()[0],
    );

    let track = Command {
        id: 3,
        sub_refresh: Some(SubRefreshRequest {
            channel: "m".into(),
            kind: 1,
            track: vec![TrackBatch {
                signature: "s".into(),
                items: vec![KeyedItem {
                    key: "k".into(),
                    version: 2,
                }],
            }],
            untrack: vec!["u".into()],
            ..Default::default()
        }),
        ..Default::default()
    };
    let json = client::decode_commands(br#"{"id":3,"sub_refresh":{"channel":"m"}}"#);
    same(
        &decode_one(&track.encode_length_delimited_to_vec()),
        &json.unwrap()[0],
    );
}

#[test]
fn several_commands_in_one_frame() {
    let cases = cases();
    let mut frame = Vec::new();
    let mut json = Vec::new();
    for (_, j, pb, _) in &cases {
        frame.extend(pb.encode_length_delimited_to_vec());
        json.extend_from_slice(j.as_bytes());
        json.push(b'\n');
    }
    let from_pb = decode_commands(&frame).unwrap();
    let from_json = client::decode_commands(&json).unwrap();
    assert_eq!(from_pb.len(), cases.len());
    assert_eq!(from_json.len(), cases.len());
    for (a, b) in from_pb.iter().zip(&from_json) {
        same(a, b);
    }
    assert_eq!(from_pb[0].id, 1);
    assert_eq!(from_pb[13].method(), None, "the pong keeps its place");
    // Three pongs: three empty messages.
    let pongs = decode_commands(&[0, 0, 0]).unwrap();
    assert_eq!(pongs.len(), 3);
    assert!(pongs.iter().all(|c| c.id == 0 && c.method().is_none()));
}

#[test]
fn an_empty_frame_holds_no_commands_as_in_json() {
    assert!(decode_commands(b"").unwrap().is_empty());
    assert!(client::decode_commands(b"").unwrap().is_empty());
}

fn two_commands() -> (Vec<u8>, usize) {
    let cases = cases();
    let first = cases[0].2.encode_length_delimited_to_vec();
    let second = cases[3].2.encode_length_delimited_to_vec();
    let boundary = first.len();
    ([first, second].concat(), boundary)
}

#[test]
fn truncated_frames_are_errors() {
    let (frame, boundary) = two_commands();
    assert_eq!(decode_commands(&frame).unwrap().len(), 2);
    for cut in 1..frame.len() {
        let got = decode_commands(&frame[..cut]);
        if cut == boundary {
            assert_eq!(got.unwrap().len(), 1);
        } else {
            let at = if cut < boundary { 0 } else { boundary };
            assert_eq!(got.unwrap_err(), ProtoError::Length { at }, "cut at {cut}");
        }
    }
}

#[test]
fn oversized_and_malformed_lengths_are_errors() {
    let length = |frame: &[u8]| decode_commands(frame).unwrap_err();
    assert_eq!(length(&[5, 0x08, 0x01]), ProtoError::Length { at: 0 });
    // u64::MAX as a length.
    let huge = wire::varint(u64::MAX);
    assert_eq!(huge.len(), 10);
    assert_eq!(length(&huge), ProtoError::Length { at: 0 });
    // A varint that never ends, and one over ten bytes.
    assert_eq!(length(&[0x80]), ProtoError::Length { at: 0 });
    assert_eq!(length(&[0xff; 11]), ProtoError::Length { at: 0 });
    // 2^32 + 2 would be 2 if the length were cut to 32 bits.
    let mut frame = wire::varint((1 << 32) + 2);
    frame.extend([0x08, 0x01]);
    assert_eq!(length(&frame), ProtoError::Length { at: 0 });
    // A valid command, then a length beyond the frame.
    let (valid, boundary) = two_commands();
    let mut frame = valid[..boundary].to_vec();
    frame.extend([100, 0x08]);
    assert_eq!(length(&frame), ProtoError::Length { at: boundary });
}

#[test]
fn garbage_messages_are_errors() {
    let message_error = |frame: &[u8]| match decode_commands(frame) {
        Err(ProtoError::Message { at, .. }) => at,
        other => panic!("{frame:?}: {other:?}"),
    };
    // Wire type 7 does not exist.
    assert_eq!(message_error(&[1, 0x0f]), 0);
    // `id` (a varint) sent as bytes.
    assert_eq!(message_error(&[3, 0x0a, 0x01, 0x00]), 0);
    // `subscribe` (a message) sent as a varint.
    assert_eq!(message_error(&[2, 0x28, 0x01]), 0);
    // A channel that is not UTF-8.
    let bad = wire::frame(&wire::bytes(5, &wire::bytes(1, &[0xff, 0xfe])));
    assert_eq!(message_error(&bad), 0);
    // A nested length beyond its message.
    assert_eq!(message_error(&[3, 0x2a, 0x05, 0x0a]), 0);
    // Field number 0.
    assert_eq!(message_error(&[2, 0x00, 0x01]), 0);
    // A bad second message fails the whole frame.
    let (valid, boundary) = two_commands();
    let mut frame = valid[..boundary].to_vec();
    frame.extend([1, 0x0f]);
    assert_eq!(message_error(&frame), boundary);
    // A tag filter nested past prost's recursion limit: an error, not
    // a stack overflow.
    let mut node = wire::str(1, "not");
    for _ in 0..200 {
        node = [wire::str(1, "not"), wire::bytes(6, &node)].concat();
    }
    let sub = [wire::str(1, "a"), wire::bytes(13, &node)].concat();
    let frame = wire::frame(&wire::bytes(5, &sub));
    assert_eq!(message_error(&frame), 0);
}

/// xorshift64: deterministic noise without a dependency.
fn noise(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

#[test]
fn random_and_mutated_frames_never_panic() {
    let mut seed = 0x9e37_79b9_7f4a_7c15;
    let mut errors = 0;
    for _ in 0..20_000 {
        let len = (noise(&mut seed) % 48) as usize;
        let frame: Vec<u8> = (0..len).map(|_| noise(&mut seed) as u8).collect();
        errors += usize::from(decode_commands(&frame).is_err());
    }
    assert!(errors > 10_000, "random bytes are mostly refused: {errors}");
    // Every single-byte change of a valid frame.
    let (valid, _) = two_commands();
    for i in 0..valid.len() {
        for b in [0x00, 0x01, 0x7f, 0x80, 0xff, valid[i] ^ 0x08] {
            let mut frame = valid.clone();
            frame[i] = b;
            let _ = decode_commands(&frame);
        }
    }
}

#[test]
fn publish_data_that_is_not_portable_json_is_binary() {
    let publish = |data: &[u8]| Command {
        id: 1,
        publish: Some(PublishRequest {
            channel: "c".into(),
            data: data.to_vec(),
            ..Default::default()
        }),
        ..Default::default()
    };
    for data in [
        &b"\x00\x01\x02\xff"[..],
        b"plain text",
        b"{\"a\":1} trailing",
        b"{\"a\":",
        b"\xff\xfe{}",
        // Valid JSON grammar, refused by strict decoders.
        b"1e999",
        br#"{"s":"\udbbb"}"#,
    ] {
        let c = decode_commands(&publish(data).encode_length_delimited_to_vec()).unwrap();
        let p = c[0].publish.as_ref().unwrap();
        assert!(p.data.is_none(), "{data:?}");
        assert_eq!(p.binary.as_deref(), Some(data), "{data:?}");
    }
    // JSON stays JSON.
    let c = decode_commands(&publish(b"{\"a\":1}").encode_length_delimited_to_vec()).unwrap();
    let p = c[0].publish.as_ref().unwrap();
    assert_eq!(p.data.as_ref().unwrap().get(), "{\"a\":1}");
    assert!(p.binary.is_none());
}

#[test]
fn other_data_that_is_not_portable_json_is_its_own_error() {
    // Every data field of a command.
    let binary = b"\x89PNG".to_vec();
    let cases: [(Command, &str); 5] = [
        (
            Command {
                connect: Some(ConnectRequest {
                    data: binary.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            "connect.data",
        ),
        (
            Command {
                connect: Some(ConnectRequest {
                    subs: [(
                        "a".to_string(),
                        SubscribeRequest {
                            data: binary.clone(),
                            ..Default::default()
                        },
                    )]
                    .into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            "connect.subs.data",
        ),
        (
            Command {
                subscribe: Some(SubscribeRequest {
                    data: binary.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            "subscribe.data",
        ),
        (
            Command {
                send: Some(SendRequest {
                    data: binary.clone(),
                }),
                ..Default::default()
            },
            "send.data",
        ),
        (
            Command {
                rpc: Some(RpcRequest {
                    data: binary.clone(),
                    method: "m".into(),
                }),
                ..Default::default()
            },
            "rpc.data",
        ),
    ];
    for (cmd, field) in cases {
        // Second in its frame: `at` is where its length prefix starts.
        let frame = [vec![0], cmd.encode_length_delimited_to_vec()].concat();
        let err = decode_commands(&frame).unwrap_err();
        assert_eq!(err, ProtoError::NonJsonData { at: 1, field });
        assert!(err.to_string().contains("binary data is not supported"));
    }
}

#[test]
fn accepted_data_is_what_the_json_decoder_makes() {
    let publish = |data: &[u8]| {
        decode_one(
            &Command {
                id: 1,
                publish: Some(PublishRequest {
                    channel: "c".into(),
                    data: data.to_vec(),
                    ..Default::default()
                }),
                ..Default::default()
            }
            .encode_length_delimited_to_vec(),
        )
    };
    let json = |data: &str| {
        let line = format!(r#"{{"id":1,"publish":{{"channel":"c","data":{data}}}}}"#);
        client::decode_commands(line.as_bytes()).unwrap().remove(0)
    };
    for data in [
        r#"{"a":1}"#,
        " {\"a\" : [1, 2.5e3, \"\\ud83d\\ude00\"]}\t",
        "null",
        "\"text\"",
        "-0",
        "[]",
    ] {
        same(&publish(data.as_bytes()), &json(data));
    }
    // Empty bytes and `null` are an absent `data`, as in JSON.
    assert!(publish(b"").publish.unwrap().data.is_none());
    assert!(publish(b"null").publish.unwrap().data.is_none());
    same(&publish(b""), &decode_one(&publish_frame_without_data()));
}

fn publish_frame_without_data() -> Vec<u8> {
    wire::frame(&[wire::uint(1, 1), wire::bytes(7, &wire::str(1, "c"))].concat())
}

#[test]
fn deep_data_decodes_without_recursion() {
    std::thread::Builder::new()
        .stack_size(128 * 1024)
        .spawn(|| {
            let depth = 30_000;
            let data = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            let frame = Command {
                id: 1,
                publish: Some(PublishRequest {
                    channel: "a".into(),
                    data: data.into_bytes(),
                    ..Default::default()
                }),
                ..Default::default()
            }
            .encode_length_delimited_to_vec();
            let cmd = decode_one(&frame);
            let data = cmd.publish.unwrap().data.unwrap();
            assert_eq!(data.get().len(), 2 * depth);
        })
        .unwrap()
        .join()
        .unwrap();
}
