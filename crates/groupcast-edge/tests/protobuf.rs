//! The protobuf encoding (subprotocol `centrifuge-protobuf`) answers the
//! same inputs as JSON alike: one script of commands (connect, subscribe,
//! publish and its push, presence, history, recovery, errors) is run over
//! both encodings on one server, and the answers, reduced to what a client
//! acts on, must be equal. Also: the subprotocol is negotiated, a text frame
//! on a protobuf connection and a bad protobuf frame close with 3501.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use groupcast_proto::protobuf as pb;
use groupcast_testkit::TestServer;
use prost::Message as _;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const T: Duration = Duration::from_secs(5);

/// One step of the script, in both encodings' terms.
enum Step {
    Connect,
    Subscribe {
        channel: String,
        kind: i32,
    },
    SubscribeRecover {
        channel: String,
        offset: u64,
    },
    Publish {
        channel: String,
        data: Value,
    },
    Unsubscribe {
        channel: String,
    },
    Presence {
        channel: String,
    },
    History {
        channel: String,
        since_epoch: Option<String>,
    },
    Rpc,
}

/// What a client acts on: the answer's id, error code (0: none) and the
/// facts of its result; or a push's channel and data.
#[derive(Debug, PartialEq)]
struct Seen(String);

async fn open(server: &TestServer, protobuf: bool) -> Ws {
    let mut req = server.ws_url().into_client_request().unwrap();
    if protobuf {
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            "centrifuge-protobuf".parse().unwrap(),
        );
    }
    let (ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    let chosen = resp
        .headers()
        .get("Sec-WebSocket-Protocol")
        .map(|v| v.to_str().unwrap().to_string());
    assert_eq!(
        chosen.as_deref(),
        protobuf.then_some("centrifuge-protobuf"),
        "negotiated subprotocol"
    );
    ws
}

fn json_command(id: u32, step: &Step) -> Value {
    match step {
        Step::Connect => json!({"id": id, "connect": {"name": "parity"}}),
        Step::Subscribe { channel, kind } => {
            json!({"id": id, "subscribe": {"channel": channel, "type": kind}})
        }
        Step::SubscribeRecover { channel, offset } => json!({"id": id, "subscribe": {
            "channel": channel, "recover": true, "offset": offset, "epoch": ""}}),
        Step::Publish { channel, data } => {
            json!({"id": id, "publish": {"channel": channel, "data": data}})
        }
        Step::Presence { channel } => json!({"id": id, "presence": {"channel": channel}}),
        Step::Unsubscribe { channel } => json!({"id": id, "unsubscribe": {"channel": channel}}),
        Step::History {
            channel,
            since_epoch,
        } => match since_epoch {
            Some(e) => json!({"id": id, "history": {"channel": channel, "limit": 10,
                "since": {"offset": 1, "epoch": e}}}),
            None => json!({"id": id, "history": {"channel": channel, "limit": 10}}),
        },
        Step::Rpc => json!({"id": id, "rpc": {"method": "m", "data": {}}}),
    }
}

fn pb_command(id: u32, step: &Step) -> pb::Command {
    let mut c = pb::Command {
        id,
        ..Default::default()
    };
    match step {
        Step::Connect => {
            c.connect = Some(pb::ConnectRequest {
                name: "parity".into(),
                ..Default::default()
            })
        }
        Step::Subscribe { channel, kind } => {
            c.subscribe = Some(pb::SubscribeRequest {
                channel: channel.clone(),
                kind: *kind,
                ..Default::default()
            })
        }
        Step::SubscribeRecover { channel, offset } => {
            c.subscribe = Some(pb::SubscribeRequest {
                channel: channel.clone(),
                recover: true,
                offset: *offset,
                ..Default::default()
            })
        }
        Step::Publish { channel, data } => {
            c.publish = Some(pb::PublishRequest {
                channel: channel.clone(),
                data: data.to_string().into_bytes(),
                ..Default::default()
            })
        }
        Step::Presence { channel } => {
            c.presence = Some(pb::PresenceRequest {
                channel: channel.clone(),
            })
        }
        Step::Unsubscribe { channel } => {
            c.unsubscribe = Some(pb::UnsubscribeRequest {
                channel: channel.clone(),
            })
        }
        Step::History {
            channel,
            since_epoch,
        } => {
            c.history = Some(pb::HistoryRequest {
                channel: channel.clone(),
                limit: 10,
                since: since_epoch.as_ref().map(|e| pb::StreamPosition {
                    offset: 1,
                    epoch: e.clone(),
                }),
                ..Default::default()
            })
        }
        Step::Rpc => {
            c.rpc = Some(pb::RpcRequest {
                method: "m".into(),
                data: b"{}".to_vec(),
            })
        }
    }
    c
}

/// Reduce a JSON reply or push to what a client acts on.
fn seen_json(v: &Value) -> Seen {
    if let Some(p) = v.get("push") {
        let ch = p["channel"].as_str().unwrap_or("");
        return Seen(match (p.get("pub"), p.get("join"), p.get("leave")) {
            (Some(publication), ..) => format!("push {ch} pub {}", publication["data"]),
            (_, Some(j), _) => format!("push {ch} join {}", !j["info"]["client"].is_null()),
            (_, _, Some(l)) => format!("push {ch} leave {}", !l["info"]["client"].is_null()),
            _ => format!("push {ch} other"),
        });
    }
    let id = v["id"].as_u64().unwrap_or(0);
    if let Some(e) = v.get("error") {
        return Seen(format!("{id} error {}", e["code"]));
    }
    let r = v.as_object().unwrap();
    let (kind, body) = r.iter().find(|(k, _)| *k != "id").unwrap();
    let facts = match kind.as_str() {
        "connect" => format!(
            "client:{}",
            !body["client"].as_str().unwrap_or("").is_empty()
        ),
        "subscribe" => format!(
            "recoverable:{} offset:{} pubs:{:?} recovered:{}",
            body["recoverable"].as_bool().unwrap_or(false),
            body["offset"].as_u64().unwrap_or(0),
            body["publications"]
                .as_array()
                .map(|a| a.iter().map(|p| p["data"].to_string()).collect::<Vec<_>>())
                .unwrap_or_default(),
            body["recovered"].as_bool().unwrap_or(false),
        ),
        "presence" => format!(
            "clients:{}",
            body["presence"].as_object().map_or(0, |p| p.len())
        ),
        "history" => format!(
            "pubs:{:?} offset:{}",
            body["publications"]
                .as_array()
                .map(|a| a.iter().map(|p| p["data"].to_string()).collect::<Vec<_>>())
                .unwrap_or_default(),
            body["offset"].as_u64().unwrap_or(0)
        ),
        _ => body.to_string(),
    };
    Seen(format!("{id} {kind} {facts}"))
}

fn data_text(b: &[u8]) -> String {
    let v: Value = serde_json::from_slice(b).unwrap_or(Value::Null);
    v.to_string()
}

fn seen_pb(r: &pb::Reply) -> Seen {
    if let Some(p) = &r.push {
        let ch = &p.channel;
        return Seen(match (&p.publication, &p.join, &p.leave) {
            (Some(publication), ..) => format!("push {ch} pub {}", data_text(&publication.data)),
            (_, Some(j), _) => format!("push {ch} join {}", j.info.is_some()),
            (_, _, Some(l)) => format!("push {ch} leave {}", l.info.is_some()),
            _ => format!("push {ch} other"),
        });
    }
    let id = r.id;
    if let Some(e) = &r.error {
        return Seen(format!("{id} error {}", e.code));
    }
    let pubs = |p: &[pb::Publication]| p.iter().map(|p| data_text(&p.data)).collect::<Vec<_>>();
    let facts = if let Some(c) = &r.connect {
        format!("connect client:{}", !c.client.is_empty())
    } else if let Some(s) = &r.subscribe {
        format!(
            "subscribe recoverable:{} offset:{} pubs:{:?} recovered:{}",
            s.recoverable,
            s.offset,
            pubs(&s.publications),
            s.recovered
        )
    } else if let Some(p) = &r.presence {
        format!("presence clients:{}", p.presence.len())
    } else if let Some(h) = &r.history {
        format!(
            "history pubs:{:?} offset:{}",
            pubs(&h.publications),
            h.offset
        )
    } else if r.publish.is_some() {
        "publish {}".into()
    } else if r.unsubscribe.is_some() {
        "unsubscribe {}".into()
    } else {
        format!("{r:?}")
    };
    Seen(format!("{id} {facts}"))
}

/// Join and leave pushes (of this connection's own subscriptions) arrive
/// around the replies at times that vary: left out of the comparison.
fn is_presence_push(v: &Value) -> bool {
    v.get("push")
        .is_some_and(|p| p.get("join").is_some() || p.get("leave").is_some())
}

/// Run the script on one connection; every reply and publication push, in
/// order.
async fn run(server: &TestServer, protobuf: bool, channel: &str) -> Vec<Seen> {
    let steps = vec![
        Step::Connect,
        Step::Subscribe {
            channel: channel.into(),
            kind: 0,
        },
        Step::Publish {
            channel: channel.into(),
            data: json!({"text": "hello", "n": 1}),
        },
        Step::Presence {
            channel: channel.into(),
        },
        Step::History {
            channel: channel.into(),
            since_epoch: None,
        },
        // Another epoch: unrecoverable (112).
        Step::History {
            channel: channel.into(),
            since_epoch: Some("not-the-epoch".into()),
        },
        // Map subscriptions are not implemented (108).
        Step::Subscribe {
            channel: format!("{channel}-map"),
            kind: 1,
        },
        // A namespace that does not exist (102).
        Step::Subscribe {
            channel: "nowhere:x".into(),
            kind: 0,
        },
        // No rpc proxy (108).
        Step::Rpc,
        // Recovery from offset 0 with an empty epoch (any epoch): the
        // publication comes back.
        Step::Unsubscribe {
            channel: channel.into(),
        },
        Step::SubscribeRecover {
            channel: channel.into(),
            offset: 0,
        },
    ];
    let mut ws = open(server, protobuf).await;
    let mut seen = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        let id = i as u32 + 1;
        if protobuf {
            let frame = pb_command(id, step).encode_length_delimited_to_vec();
            ws.send(Message::binary(frame)).await.unwrap();
        } else {
            ws.send(Message::text(json_command(id, step).to_string()))
                .await
                .unwrap();
        }
        // Until this step's answer (pushes before it are kept too).
        loop {
            let m = tokio::time::timeout(T, ws.next())
                .await
                .expect("an answer")
                .expect("open")
                .unwrap();
            let mut got_answer = false;
            match m {
                Message::Text(t) => {
                    assert!(!protobuf, "a text frame on a protobuf connection");
                    for line in t.as_str().split('\n') {
                        let v: Value = serde_json::from_str(line).unwrap();
                        if v == json!({}) {
                            continue;
                        }
                        got_answer |= v["id"] == id;
                        if !is_presence_push(&v) {
                            seen.push(seen_json(&v));
                        }
                    }
                }
                Message::Binary(b) => {
                    assert!(protobuf, "a binary frame on a JSON connection");
                    let mut rest = &b[..];
                    while !rest.is_empty() {
                        let r = pb::Reply::decode_length_delimited(&mut rest).unwrap();
                        if r == pb::Reply::default() {
                            continue;
                        }
                        got_answer |= r.id == id;
                        let presence = r
                            .push
                            .as_ref()
                            .is_some_and(|p| p.join.is_some() || p.leave.is_some());
                        if !presence {
                            seen.push(seen_pb(&r));
                        }
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
            if got_answer {
                break;
            }
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_encodings_answer_the_same_script_alike() {
    let server = TestServer::start().await;
    let json = run(&server, false, "parity").await;
    let protobuf = run(&server, true, "parity-pb").await;
    let json: Vec<String> = json
        .into_iter()
        .map(|s| s.0.replace("parity", "CH"))
        .collect();
    let protobuf: Vec<String> = protobuf
        .into_iter()
        .map(|s| s.0.replace("parity-pb", "CH"))
        .collect();
    assert_eq!(json, protobuf);
    // And the script is not trivial: it saw results, pushes and errors.
    let all = json.join("\n");
    for needle in [
        "1 connect client:true",
        "push CH pub {\"n\":1,\"text\":\"hello\"}",
        "recovered:true",
        "error 112",
        "error 108",
        "error 102",
        "presence clients:1",
    ] {
        assert!(all.contains(needle), "{needle} in\n{all}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_of_the_other_encoding_or_a_bad_frame_closes_with_3501() {
    let server = TestServer::start().await;
    for frame in [
        Message::text("{\"id\":1,\"connect\":{}}"),
        Message::binary(vec![0x05, 0x01]), // declares 5 bytes, has 1
    ] {
        let mut ws = open(&server, true).await;
        ws.send(frame).await.unwrap();
        let code = loop {
            match tokio::time::timeout(T, ws.next()).await.expect("closed") {
                Some(Ok(Message::Close(Some(f)))) => break u16::from(f.code),
                Some(Ok(_)) => continue,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(code, 3501);
    }
    // A binary frame on a JSON connection too.
    let mut ws = open(&server, false).await;
    ws.send(Message::binary(vec![0u8])).await.unwrap();
    match tokio::time::timeout(T, ws.next()).await.expect("closed") {
        Some(Ok(Message::Close(Some(f)))) => assert_eq!(u16::from(f.code), 3501),
        other => panic!("{other:?}"),
    }
}

/// Delta negotiation: `fossil` where the namespace allows it, the
/// subscription without delta where it does not, 107 for an unknown type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_is_negotiated_where_the_namespace_allows_it() {
    let mut config = TestServer::dev_config();
    let mut plain = groupcast_core::ChannelOptions::dev();
    plain.allowed_delta_types.clear();
    config.namespaces.push(groupcast_core::NamespaceConfig {
        name: "plain".into(),
        options: plain,
    });
    let server = TestServer::start_with(config).await;
    let mut ws = open(&server, false).await;
    let ask = |id: u32, cmd: Value| {
        let mut cmd = cmd;
        cmd["id"] = json!(id);
        Message::text(cmd.to_string())
    };
    let steps = [
        ask(1, json!({"connect": {}})),
        ask(2, json!({"subscribe": {"channel": "d", "delta": "fossil"}})),
        ask(
            3,
            json!({"subscribe": {"channel": "plain:d", "delta": "fossil"}}),
        ),
        ask(4, json!({"subscribe": {"channel": "x", "delta": "xdelta"}})),
    ];
    let mut answers = std::collections::HashMap::new();
    for step in steps {
        ws.send(step).await.unwrap();
    }
    while answers.len() < 4 {
        let m = tokio::time::timeout(T, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Message::Text(t) = m {
            for line in t.as_str().split('\n') {
                let v: Value = serde_json::from_str(line).unwrap();
                if let Some(id) = v["id"].as_u64() {
                    answers.insert(id, v);
                }
            }
        }
    }
    assert_eq!(answers[&2]["subscribe"]["delta"], true, "{}", answers[&2]);
    assert!(answers[&3]["subscribe"].is_object(), "{}", answers[&3]);
    assert!(
        answers[&3]["subscribe"].get("delta").is_none(),
        "{}",
        answers[&3]
    );
    assert_eq!(answers[&4]["error"]["code"], 107, "{}", answers[&4]);
}

/// Binary data from a protobuf client: protobuf subscribers get the bytes
/// (live and from history), JSON subscribers the same publication as base64
/// tagged `encoding: base64`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_data_from_a_protobuf_client_reaches_both_encodings() {
    let server = TestServer::start().await;
    let bytes = vec![0xffu8, 0x00, 0x01, 0x89, b'P', b'N', b'G'];
    // A JSON subscriber.
    let mut json_ws = open(&server, false).await;
    json_ws
        .send(Message::text(
            r#"{"id":1,"connect":{}}
{"id":2,"subscribe":{"channel":"bin"}}"#,
        ))
        .await
        .unwrap();
    // A protobuf client: subscribe, publish the bytes, read history.
    let mut pb_ws = open(&server, true).await;
    let mut frame = Vec::new();
    for (id, step) in [
        (1, Step::Connect),
        (
            2,
            Step::Subscribe {
                channel: "bin".into(),
                kind: 0,
            },
        ),
    ] {
        frame.extend(pb_command(id, &step).encode_length_delimited_to_vec());
    }
    pb_ws.send(Message::binary(frame)).await.unwrap();
    // Wait for both subscribe replies before publishing.
    let mut json_seen = Vec::new();
    while !json_seen.iter().any(|v: &Value| v["id"] == 2) {
        if let Message::Text(t) = tokio::time::timeout(T, json_ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            json_seen.extend(
                t.as_str()
                    .split('\n')
                    .map(|l| serde_json::from_str::<Value>(l).unwrap()),
            );
        }
    }
    let mut pb_seen: Vec<pb::Reply> = Vec::new();
    let read_pb =
        async |ws: &mut Ws, seen: &mut Vec<pb::Reply>, until: &dyn Fn(&pb::Reply) -> bool| {
            while !seen.iter().any(until) {
                if let Message::Binary(b) = tokio::time::timeout(T, ws.next())
                    .await
                    .unwrap()
                    .unwrap()
                    .unwrap()
                {
                    let mut rest = &b[..];
                    while !rest.is_empty() {
                        seen.push(pb::Reply::decode_length_delimited(&mut rest).unwrap());
                    }
                }
            }
        };
    read_pb(&mut pb_ws, &mut pb_seen, &|r| r.id == 2).await;
    let publish = pb::Command {
        id: 3,
        publish: Some(pb::PublishRequest {
            channel: "bin".into(),
            data: bytes.clone(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let history = pb::Command {
        id: 4,
        history: Some(pb::HistoryRequest {
            channel: "bin".into(),
            limit: 10,
            ..Default::default()
        }),
        ..Default::default()
    };
    pb_ws
        .send(Message::binary(publish.encode_length_delimited_to_vec()))
        .await
        .unwrap();
    read_pb(&mut pb_ws, &mut pb_seen, &|r| {
        r.push.as_ref().is_some_and(|p| p.publication.is_some())
    })
    .await;
    pb_ws
        .send(Message::binary(history.encode_length_delimited_to_vec()))
        .await
        .unwrap();
    read_pb(&mut pb_ws, &mut pb_seen, &|r| r.id == 4).await;
    let live = pb_seen
        .iter()
        .find_map(|r| r.push.as_ref()?.publication.clone())
        .unwrap();
    assert_eq!(live.data, bytes, "protobuf: the bytes, live");
    assert!(live.tags.is_empty(), "no encoding tag: {:?}", live.tags);
    let h = pb_seen.iter().find(|r| r.id == 4).unwrap();
    let stored = &h.history.as_ref().unwrap().publications[0];
    assert_eq!(stored.data, bytes, "protobuf: the bytes, from history");
    assert!(stored.tags.is_empty());
    // JSON: base64 with the tag.
    while !json_seen
        .iter()
        .any(|v| v.get("push").is_some_and(|p| p.get("pub").is_some()))
    {
        if let Message::Text(t) = tokio::time::timeout(T, json_ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            json_seen.extend(
                t.as_str()
                    .split('\n')
                    .map(|l| serde_json::from_str::<Value>(l).unwrap()),
            );
        }
    }
    let p = json_seen
        .iter()
        .find_map(|v| v["push"].get("pub").cloned())
        .unwrap();
    assert_eq!(p["data"], "/wABiVBORw==");
    assert_eq!(p["tags"], json!({"encoding": "base64"}));
}
