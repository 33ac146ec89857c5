//! Join/leave at scale (issue 22) against a live in-process server:
//! coalesced joins and leaves arrive complete and in order; above a
//! namespace's `join_leave_max_subscribers` none are pushed, the metric
//! counts them, presence still answers exactly, and pushes come back once
//! the channel is down to half the ceiling. (Metrics are read as
//! differences, or are touched by one test only.)

use std::time::Duration;

use groupcast_core::{ChannelOptions, NamespaceConfig};
use groupcast_testkit::{Client, TestServer};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(5);

fn server_with(name: &str, options: ChannelOptions) -> groupcast_edge::Config {
    let mut config = TestServer::dev_config();
    config.namespaces = vec![NamespaceConfig {
        name: name.into(),
        options,
    }];
    config
}

async fn subscribe(c: &mut Client, channel: &str) {
    let r = c
        .command("subscribe", json!({ "channel": channel }))
        .await
        .unwrap();
    assert!(r.get("subscribe").is_some(), "subscribe {channel}: {r}");
}

/// `join:<user>` or `leave:<user>` for a join/leave push, else the push.
fn event(p: &Value) -> String {
    if let Some(j) = p.get("join") {
        format!("join:{}", j["info"]["user"].as_str().unwrap())
    } else if let Some(l) = p.get("leave") {
        format!("leave:{}", l["info"]["user"].as_str().unwrap())
    } else {
        p.to_string()
    }
}

/// Waits (bounded) until the metric line `series` is at least `at_least`.
async fn wait_metric(s: &TestServer, series: &str, at_least: f64) {
    let deadline = tokio::time::Instant::now() + T;
    while s.metric(series).await < at_least {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} did not reach {at_least}: {}",
            s.metric(series).await
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn coalesced_joins_and_leaves_arrive_complete_and_in_order() {
    // Every join and leave of `big:` is gathered (from the first
    // subscriber on) for 50 ms.
    let s = TestServer::start_with(server_with(
        "big",
        ChannelOptions {
            join_leave_coalesce_from: 1,
            join_leave_coalesce: Duration::from_millis(50),
            ..ChannelOptions::dev()
        },
    ))
    .await;
    let frames = "groupcast_join_leave_frames_total";
    let frames_before = s.metric(frames).await;
    let mut watcher = s.client("watcher").await;
    subscribe(&mut watcher, "big:room").await;
    let mut others = Vec::new();
    for i in 0..20 {
        let mut c = s.client(&format!("u{i}")).await;
        subscribe(&mut c, "big:room").await;
        others.push(c);
    }
    for (i, mut c) in others.into_iter().enumerate() {
        if i % 2 == 0 {
            c.command("unsubscribe", json!({"channel": "big:room"}))
                .await
                .unwrap();
        } else {
            c.close().await;
        }
    }
    // Its own join, then 20 joins and 20 leaves, each once, each user's
    // join before its leave.
    let mut seen = Vec::new();
    while seen.len() < 41 {
        seen.push(event(&watcher.push(T).await.unwrap()));
    }
    assert_eq!(seen[0], "join:watcher");
    for i in 0..20 {
        let (j, l) = (format!("join:u{i}"), format!("leave:u{i}"));
        let at = |e: &str| seen.iter().position(|s| s == e);
        assert!(at(&j) < at(&l) && at(&j).is_some(), "{i}: {seen:?}");
        assert_eq!(seen.iter().filter(|s| **s == j || **s == l).count(), 2);
    }
    assert!(
        watcher.push(Duration::from_millis(300)).await.is_err(),
        "nothing more"
    );
    assert!(
        s.metric(frames).await > frames_before,
        "sent as coalesced frames"
    );
}

#[tokio::test]
async fn above_the_ceiling_no_join_leave_pushes_and_presence_still_answers() {
    let s = TestServer::start_with(server_with(
        "crowd",
        ChannelOptions {
            join_leave_max_subscribers: 3,
            ..ChannelOptions::dev()
        },
    ))
    .await;
    let ch = "crowd:hall";
    let suppressed = "groupcast_join_leave_suppressed_total";
    let off = "groupcast_join_leave_suppressed_channels";
    let mut watcher = s.client("watcher").await;
    subscribe(&mut watcher, ch).await;
    assert_eq!(event(&watcher.push(T).await.unwrap()), "join:watcher");
    let mut b = s.client("b").await;
    subscribe(&mut b, ch).await;
    assert_eq!(event(&watcher.push(T).await.unwrap()), "join:b");
    let mut c = s.client("c").await;
    subscribe(&mut c, ch).await;
    assert_eq!(event(&watcher.push(T).await.unwrap()), "join:c");
    // The fourth passes the ceiling of 3: its join is counted, not pushed.
    let before = s.metric(suppressed).await;
    let mut d = s.client("d").await;
    subscribe(&mut d, ch).await;
    wait_metric(&s, suppressed, before + 1.0).await;
    assert_eq!(s.metric(off).await, 1.0);
    // Presence is exact.
    let r = watcher
        .command("presence", json!({"channel": ch}))
        .await
        .unwrap();
    let mut users: Vec<&str> = r["presence"]["presence"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v["user"].as_str().unwrap())
        .collect();
    users.sort_unstable();
    assert_eq!(users, ["b", "c", "d", "watcher"], "{r}");
    let r = watcher
        .command("presence_stats", json!({"channel": ch}))
        .await
        .unwrap();
    assert_eq!(r["presence_stats"], json!({"num_clients":4,"num_users":4}));
    // Down to 3 (not half of 3): d's leave is not pushed either.
    d.close().await;
    wait_metric(&s, suppressed, before + 2.0).await;
    // Publications still go, and nothing came before this one.
    watcher
        .command("publish", json!({"channel": ch, "data": {"n": 1}}))
        .await
        .unwrap();
    let p = watcher.push(T).await.unwrap();
    assert_eq!(p["pub"]["data"], json!({"n": 1}), "no join/leave: {p}");
    // Down to 2: b's leave is not pushed. Down to 1 (half of 3, counted
    // once c is out of the hub): on again, from c's leave on.
    b.close().await;
    wait_metric(&s, suppressed, before + 3.0).await;
    c.close().await;
    assert_eq!(event(&watcher.push(T).await.unwrap()), "leave:c");
    assert_eq!(s.metric(suppressed).await, before + 3.0);
    assert_eq!(s.metric(off).await, 0.0);
    let mut e = s.client("e").await;
    subscribe(&mut e, ch).await;
    assert_eq!(event(&watcher.push(T).await.unwrap()), "join:e");
}

#[tokio::test]
async fn coalesced_joins_reach_a_protobuf_subscriber_as_length_delimited_pushes() {
    use futures_util::{SinkExt, StreamExt};
    use groupcast_proto::protobuf as pb;
    use prost::Message as _;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;

    // From the first subscriber on, every join goes through a gathered frame.
    let s = TestServer::start_with(server_with(
        "big",
        ChannelOptions {
            join_leave_coalesce_from: 1,
            join_leave_coalesce: Duration::from_millis(50),
            ..ChannelOptions::dev()
        },
    ))
    .await;
    let frames = "groupcast_join_leave_frames_total";
    let frames_before = s.metric(frames).await;
    let mut req = s.ws_url().into_client_request().unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "centrifuge-protobuf".parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let mut first = pb::Command {
        id: 1,
        connect: Some(pb::ConnectRequest {
            token: s.token("watcher", json!({})),
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_length_delimited_to_vec();
    first.extend(
        pb::Command {
            id: 2,
            subscribe: Some(pb::SubscribeRequest {
                channel: "big:room".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_length_delimited_to_vec(),
    );
    ws.send(Message::binary(first)).await.unwrap();
    let mut others = Vec::new();
    let mut joined = Vec::new();
    let mut subscribed = false;
    while joined.len() < 6 {
        let m = tokio::time::timeout(T, ws.next())
            .await
            .expect("a frame")
            .expect("open")
            .unwrap();
        let Message::Binary(b) = m else { continue };
        let mut rest = &b[..];
        while !rest.is_empty() {
            let r = pb::Reply::decode_length_delimited(&mut rest).unwrap();
            subscribed |= r.id == 2 && r.subscribe.is_some();
            if let Some(j) = r.push.and_then(|p| p.join) {
                joined.push(j.info.unwrap().user);
            }
        }
        // The others subscribe once the watcher has its own join.
        if subscribed && joined.iter().any(|u| u == "watcher") && others.is_empty() {
            for i in 0..5 {
                let mut c = s.client(&format!("u{i}")).await;
                subscribe(&mut c, "big:room").await;
                others.push(c);
            }
        }
    }
    assert_eq!(joined[0], "watcher");
    joined.sort_unstable();
    assert_eq!(joined, ["u0", "u1", "u2", "u3", "u4", "watcher"]);
    assert!(s.metric(frames).await > frames_before);
}
