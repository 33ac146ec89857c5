//! The raw relay: plain WebSockets relaying frames to each other, and to and
//! from Centrifugo-protocol subscribers and the server API.

use std::time::Duration;

use groupcast_testkit::{Frame, RelayClient, TestServer};
use serde_json::json;

const T: Duration = Duration::from_secs(5);

/// The next frame `c` gets is `marker` (sent after whatever must not
/// arrive: the channel keeps its order).
async fn next_is(c: &mut RelayClient, marker: &str) {
    assert_eq!(
        c.recv(T).await.unwrap(),
        Frame::Text(marker.into()),
        "expected nothing before the marker"
    );
}

#[tokio::test]
async fn frames_reach_the_other_relay_clients_verbatim() {
    let s = TestServer::start().await;
    let mut a = RelayClient::open(&s.relay_url("relay")).await.unwrap();
    let mut b = RelayClient::open(&s.relay_url("relay")).await.unwrap();
    let mut c = RelayClient::open(&s.relay_url("relay")).await.unwrap();
    let mut other = RelayClient::open(&s.relay_url("elsewhere")).await.unwrap();
    s.wait_subscribers("relay", 3).await;
    s.wait_subscribers("elsewhere", 1).await;
    // The seed's message, byte for byte (note the spacing: not re-encoded).
    let msg = r#"{"type": "message", "text": "Hello from client", "timestamp": "2025-10-30T19:00:00.000Z"}"#;
    a.send_text(msg).await.unwrap();
    assert_eq!(b.recv(T).await.unwrap(), Frame::Text(msg.into()));
    assert_eq!(c.recv(T).await.unwrap(), Frame::Text(msg.into()));
    a.send_text("not json at all").await.unwrap();
    assert_eq!(
        b.recv(T).await.unwrap(),
        Frame::Text("not json at all".into())
    );
    a.send_binary(&[0, 159, 255]).await.unwrap();
    assert_eq!(b.recv(T).await.unwrap(), Frame::Binary(vec![0, 159, 255]));
    // No echo to the sender: b's answer, sent after a's frames reached it,
    // is the first frame a gets.
    b.send_text("marker from b").await.unwrap();
    next_is(&mut a, "marker from b").await;
    // Other channels see nothing: a publication made on `elsewhere` after
    // a's frames is the first frame there.
    s.api("publish", json!({"channel":"elsewhere","data":"marker"}))
        .await;
    next_is(&mut other, r#""marker""#).await;
}

#[tokio::test]
async fn relay_and_protocol_clients_share_channels() {
    let s = TestServer::start().await;
    let mut relay = RelayClient::open(&s.relay_url("relay")).await.unwrap();
    let mut proto = s.client("alice").await;
    let r = proto
        .command("subscribe", json!({"channel":"relay"}))
        .await
        .unwrap();
    assert!(r.get("subscribe").is_some());

    // Relay frame -> protocol publication.
    relay.send_text(r#"{"text":"from relay"}"#).await.unwrap();
    let p = proto.publication(T).await.unwrap();
    assert_eq!(p["pub"]["data"], json!({"text":"from relay"}));
    relay.send_text("plain").await.unwrap();
    let p = proto.publication(T).await.unwrap();
    assert_eq!(
        p["pub"]["data"],
        json!("plain"),
        "non-JSON text arrives as a JSON string"
    );
    // JSON with a number no decoder can hold is carried as a string too
    // (found by the relay_payload fuzzer).
    relay.send_text("6E6666").await.unwrap();
    let p = proto.publication(T).await.unwrap();
    assert_eq!(p["pub"]["data"], json!("6E6666"));
    relay.send_binary(&[1, 2, 3]).await.unwrap();
    let p = proto.publication(T).await.unwrap();
    assert_eq!(p["pub"]["data"], json!("AQID"));
    assert_eq!(p["pub"]["tags"]["encoding"], "base64");

    // Protocol publication and API publication -> relay frames.
    proto
        .command(
            "publish",
            json!({"channel":"relay","data":{"text":"from sdk"}}),
        )
        .await
        .unwrap();
    assert_eq!(
        relay.recv(T).await.unwrap(),
        Frame::Text(r#"{"text":"from sdk"}"#.into())
    );
    s.api(
        "publish",
        json!({"channel":"relay","data":{"text":"from api"}}),
    )
    .await;
    assert_eq!(
        relay.recv(T).await.unwrap(),
        Frame::Text(r#"{"text":"from api"}"#.into())
    );
    s.api("publish", json!({"channel":"relay","b64data":"AAEC"}))
        .await;
    assert_eq!(relay.recv(T).await.unwrap(), Frame::Binary(vec![0, 1, 2]));
}

#[tokio::test]
async fn default_channel_and_rejections() {
    let mut config = TestServer::dev_config();
    config.client.allowed_origins = vec!["https://*.example.com".into()];
    let s = TestServer::start_with(config).await;
    // `/ws/relay/` uses relay.default_channel ("relay").
    let mut a = RelayClient::open(&format!("ws://{}/ws/relay/", s.addr))
        .await
        .unwrap();
    let mut b = RelayClient::open(&s.relay_url("relay")).await.unwrap();
    s.wait_subscribers("relay", 2).await;
    a.send_text("hi").await.unwrap();
    assert_eq!(b.recv(T).await.unwrap(), Frame::Text("hi".into()));

    let upgrade = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let get = |path: &'static str, extra: &'static str| {
        let headers = format!("{upgrade}{extra}");
        let s = &s;
        async move { s.http_raw("GET", path, &headers, b"").await.0 }
    };
    assert_eq!(get("/ws/relay/nope:x", "").await, 400, "unknown namespace");
    assert_eq!(get("/ws/relay/$private", "").await, 403, "private channel");
    assert_eq!(
        get("/ws/relay/relay", "Origin: https://evil.test\r\n").await,
        403,
        "foreign origin"
    );
    assert_eq!(
        get("/ws/relay/relay", "Origin: https://app.example.com\r\n").await,
        101,
        "allowed origin"
    );
    assert_eq!(
        get("/connection/websocket", "Origin: https://evil.test\r\n").await,
        403,
        "foreign origin"
    );
    assert_eq!(get("/ws/relay/relay?token=bad", "").await, 401, "bad token");
}

#[tokio::test]
async fn oversized_relay_frame_closes_with_1009() {
    let s = TestServer::start().await;
    let mut a = RelayClient::open(&s.relay_url("relay")).await.unwrap();
    a.send_text(&"x".repeat(70_000)).await.unwrap();
    match a.recv(T).await.unwrap() {
        Frame::Close(Some((code, _))) => assert_eq!(code, 1009),
        other => panic!("expected close 1009, got {other:?}"),
    }
}

#[tokio::test]
async fn silent_relay_peer_is_closed_with_no_pong() {
    let mut config = TestServer::dev_config();
    config.client.ping_interval = Duration::from_secs(1);
    config.client.pong_timeout = Duration::from_millis(500);
    let s = TestServer::start_with(config).await;
    // Never reads (so never answers the server's WebSocket pings) until
    // the server counted a 3012 disconnect; then reads up to its close.
    let mut a = RelayClient::open(&s.relay_url("relay")).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, m) = s.http_raw("GET", "/metrics", "", b"").await;
        if String::from_utf8_lossy(&m)
            .lines()
            .any(|l| l.starts_with(r#"groupcast_disconnects_total{code="3012"}"#))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a silent peer was not closed within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    loop {
        match a.recv(T).await.unwrap() {
            Frame::Close(code) => {
                assert_eq!(code.map(|c| c.0), Some(3012));
                break;
            }
            _ => continue,
        }
    }
}

#[tokio::test]
async fn relay_frames_need_publish_permission() {
    let mut config = TestServer::dev_config();
    config.namespaces = vec![groupcast_core::NamespaceConfig {
        name: "feed".into(),
        options: groupcast_core::ChannelOptions {
            allow_anonymous: true,
            ..Default::default()
        },
    }];
    let s = TestServer::start_with(config).await;
    // Receiving works: API publications arrive.
    let mut r = RelayClient::open(&s.relay_url("feed:news")).await.unwrap();
    let mut other = RelayClient::open(&s.relay_url("feed:news")).await.unwrap();
    s.wait_subscribers("feed:news", 2).await;
    s.api("publish", json!({"channel":"feed:news","data":{"n":1}}))
        .await;
    assert_eq!(r.recv(T).await.unwrap(), Frame::Text(r#"{"n":1}"#.into()));
    assert_eq!(
        other.recv(T).await.unwrap(),
        Frame::Text(r#"{"n":1}"#.into())
    );
    // Sending does not: the namespace does not let clients publish.
    r.send_text("hello").await.unwrap();
    match r.recv(T).await.unwrap() {
        Frame::Close(Some((code, _))) => assert_eq!(code, 3507),
        other => panic!("expected close 3507, got {other:?}"),
    }
    // The frame was not relayed: the next frame `other` gets is a
    // publication made after the refusal.
    s.api("publish", json!({"channel":"feed:news","data":{"n":2}}))
        .await;
    next_is(&mut other, r#"{"n":2}"#).await;
}
