//! Named limits: connections per node and per user, new connections per
//! client address (with a trusted proxy header), command and publish rates
//! (and the disconnect for a client that ignores them), the per-namespace
//! publication size.
//! Each refusal has its documented answer and is counted in
//! `groupcast_limit_hits_total{limit=...}`.

use std::time::Duration;

use groupcast_testkit::{Client, RelayClient, TestServer};
use serde_json::json;

const UPGRADE: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

async fn upgrade_status(s: &TestServer, path: &str, extra: &str) -> u16 {
    s.http_raw("GET", path, &format!("{UPGRADE}{extra}"), b"")
        .await
        .0
}

async fn limit_hits(s: &TestServer, limit: &str) -> f64 {
    let (_, body) = s.http_raw("GET", "/metrics", "", b"").await;
    let text = String::from_utf8(body).unwrap();
    let prefix = format!("groupcast_limit_hits_total{{limit=\"{limit}\"}}");
    text.lines()
        .find(|l| l.starts_with(&prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn connections_per_node() {
    let mut config = TestServer::dev_config();
    config.client.max_connections = 3;
    let s = TestServer::start_with(config).await;
    let _a = s.client("a").await;
    let _b = RelayClient::open(&s.relay_url("relay")).await.unwrap();
    let c = s.client("c").await;
    assert_eq!(upgrade_status(&s, "/connection/websocket", "").await, 503);
    assert_eq!(upgrade_status(&s, "/ws/relay/relay", "").await, 503);
    assert!(limit_hits(&s, "max_connections").await >= 2.0);
    // A slot frees when a connection leaves: the server notices the close
    // on its own time, so a new client is refused (503) until then, and
    // accepted after.
    c.close().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let _d = loop {
        match Client::connect(&s.ws_url(), &s.token("d", json!({}))).await {
            Ok((d, reply)) => {
                assert!(reply.get("connect").is_some(), "{reply}");
                break d;
            }
            Err(groupcast_client::ClientError::Ws(
                tokio_tungstenite::tungstenite::Error::Http(r),
            )) if r.status() == 503 => {}
            Err(e) => panic!("while the slot frees: {e}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no slot 20 s after a connection left"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
}

#[tokio::test]
async fn connections_per_user() {
    let mut config = TestServer::dev_config();
    config.client.max_connections_per_user = 2;
    let s = TestServer::start_with(config).await;
    let _a1 = s.client("alice").await;
    let _a2 = s.client("alice").await;
    let mut a3 = Client::open(&s.ws_url()).await.unwrap();
    let err = a3
        .command("connect", json!({"token": s.token("alice", json!({}))}))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, groupcast_client::ClientError::Closed(Some((3504, _)))),
        "third connection of alice: {err}"
    );
    let _bob = s.client("bob").await;
    for _ in 0..3 {
        let (_c, r) = Client::connect(&s.ws_url(), "").await.unwrap();
        assert!(
            r.get("connect").is_some(),
            "anonymous connections are not per-user limited"
        );
    }
    assert!(limit_hits(&s, "max_connections_per_user").await >= 1.0);
}

#[tokio::test]
async fn new_connections_per_client_address() {
    let mut config = TestServer::dev_config();
    config.client.connection_rate_per_ip = 0.001;
    config.client.connection_burst_per_ip = 3.0;
    let s = TestServer::start_with(config).await;
    for _ in 0..3 {
        assert_eq!(upgrade_status(&s, "/connection/websocket", "").await, 101);
    }
    assert_eq!(upgrade_status(&s, "/connection/websocket", "").await, 429);
    assert_eq!(upgrade_status(&s, "/ws/relay/relay", "").await, 429);
    assert!(limit_hits(&s, "connection_rate_per_ip").await >= 2.0);

    // Behind a proxy: the configured header names the client.
    let mut config = TestServer::dev_config();
    config.client.connection_rate_per_ip = 0.001;
    config.client.connection_burst_per_ip = 1.0;
    config.client.client_ip_header = "X-Forwarded-For".into();
    let s = TestServer::start_with(config).await;
    let from = |ip: &str| format!("X-Forwarded-For: 198.51.100.7, {ip}\r\n");
    assert_eq!(
        upgrade_status(&s, "/connection/websocket", &from("203.0.113.1")).await,
        101
    );
    assert_eq!(
        upgrade_status(&s, "/connection/websocket", &from("203.0.113.2")).await,
        101
    );
    assert_eq!(
        upgrade_status(&s, "/connection/websocket", &from("203.0.113.1")).await,
        429,
        "the right-most address (added by the proxy) is the client"
    );
}

#[tokio::test]
async fn command_and_publish_rates() {
    let mut config = TestServer::dev_config();
    config.client.command_rate = 0.001;
    config.client.command_burst = 6.0;
    config.client.publish_rate = 0.001;
    config.client.publish_burst = 2.0;
    let s = TestServer::start_with(config).await;
    let mut c = s.client("a").await; // connect: 1 command
    for n in 0..2 {
        let r = c
            .command("publish", json!({"channel":"x","data":n}))
            .await
            .unwrap();
        assert!(r.get("error").is_none(), "{r}");
    }
    let r = c
        .command("publish", json!({"channel":"x","data":3}))
        .await
        .unwrap();
    assert_eq!(r["error"]["code"], 111, "publish burst spent: {r}");
    assert_eq!(r["error"]["temporary"], true);
    // Commands so far: connect, 3 publishes (the refused one counts too).
    for _ in 0..2 {
        let r = c.command("ping", json!({})).await.unwrap();
        assert_eq!(r["ping"], json!({}), "other commands still pass: {r}");
    }
    let r = c.command("ping", json!({})).await.unwrap();
    assert_eq!(r["error"]["code"], 111, "command burst (6) spent: {r}");
    assert!(limit_hits(&s, "publish_rate").await >= 1.0);
    assert!(limit_hits(&s, "command_rate").await >= 1.0);
}

#[tokio::test]
async fn a_client_that_keeps_exceeding_the_rate_is_disconnected_with_3013() {
    let mut config = TestServer::dev_config();
    config.client.command_rate = 0.001;
    config.client.command_burst = 2.0;
    config.client.rate_refusals_max = 3;
    config.client.rate_refusals_window = Duration::from_secs(60);
    let s = TestServer::start_with(config.clone()).await;
    let mut c = s.client("a").await; // connect: the first token
    let r = c.command("ping", json!({})).await.unwrap();
    assert_eq!(r["ping"], json!({}), "{r}");
    // Three warnings: 111, and the connection stays.
    for _ in 0..3 {
        let r = c.command("ping", json!({})).await.unwrap();
        assert_eq!(r["error"]["code"], 111, "{r}");
    }
    // The fourth refusal within the window: 3013, no reply.
    c.send_text(r#"{"id":99,"ping":{}}"#).await.unwrap();
    let code = c.closed(Duration::from_secs(5)).await.unwrap();
    assert_eq!(code.map(|c| c.0), Some(3013), "kept going after 3 warnings");
    assert!(limit_hits(&s, "rate_refusals_max").await >= 1.0);
    // Another client of the same user is unaffected.
    let mut d = s.client("a").await;
    let r = d.command("ping", json!({})).await.unwrap();
    assert_eq!(r["ping"], json!({}), "{r}");

    // rate_refusals_max = 0: warnings only, never a disconnect.
    config.client.rate_refusals_max = 0;
    let s = TestServer::start_with(config).await;
    let mut c = s.client("a").await;
    let _ = c.command("ping", json!({})).await.unwrap();
    for _ in 0..20 {
        let r = c.command("ping", json!({})).await.unwrap();
        assert_eq!(r["error"]["code"], 111, "{r}");
    }
}

#[tokio::test]
async fn a_namespace_caps_its_publication_size() {
    let mut config = TestServer::dev_config();
    config.client.command_rate = 0.0;
    let mut small = groupcast_core::namespace::ChannelOptions::dev();
    small.max_publication_size = 100;
    config
        .namespaces
        .push(groupcast_core::namespace::NamespaceConfig {
            name: "small".into(),
            options: small,
        });
    config.validate().unwrap();
    let s = TestServer::start_with(config).await;
    let mut c = s.client("a").await;
    let r = c
        .command("subscribe", json!({"channel":"small:x"}))
        .await
        .unwrap();
    assert!(r.get("error").is_none(), "{r}");
    // JSON data of exactly `n` bytes: a string of n - 2 characters.
    fn data(n: usize) -> serde_json::Value {
        json!("x".repeat(n - 2))
    }
    async fn publish(c: &mut Client, ch: &str, n: usize) -> serde_json::Value {
        let body = json!({"channel": ch, "data": data(n)});
        c.command("publish", body).await.unwrap()
    }
    let r = publish(&mut c, "small:x", 100).await;
    assert!(r.get("error").is_none(), "at the limit: {r}");
    // (Join pushes come too: the dev namespace has join/leave.)
    let p = c.publication(Duration::from_secs(5)).await.unwrap();
    assert_eq!(p["pub"]["data"], data(100));
    let r = publish(&mut c, "small:x", 101).await;
    assert_eq!(r["error"]["code"], 106, "over the namespace's limit: {r}");
    // The default namespace keeps the global limit.
    let r = publish(&mut c, "x", 5_000).await;
    assert!(r.get("error").is_none(), "{r}");
    // The API answers 106 too, and nothing over the limit was delivered:
    // the next publication the subscriber gets is one made after (in
    // order on the channel).
    let (_, r) = s
        .api("publish", json!({"channel":"small:x","data": data(101)}))
        .await;
    assert_eq!(r["error"]["code"], 106, "{r}");
    let (_, r) = s
        .api("publish", json!({"channel":"small:x","data": "marker"}))
        .await;
    assert!(r.get("error").is_none(), "{r}");
    let p = c.publication(Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        p["pub"]["data"], "marker",
        "no publication over the limit reaches the subscriber: {p}"
    );
    assert!(limit_hits(&s, "max_publication_size").await >= 2.0);
    // A relay frame over it closes that relay connection with 1009.
    let mut relay = RelayClient::open(&s.relay_url("small:r")).await.unwrap();
    relay.send_text(&"y".repeat(101)).await.unwrap();
    loop {
        match relay.recv(Duration::from_secs(5)).await.unwrap() {
            groupcast_testkit::Frame::Close(code) => {
                assert_eq!(code.map(|c| c.0), Some(1009));
                break;
            }
            _ => continue,
        }
    }
    // The subscriber is still served.
    let r = publish(&mut c, "small:x", 10).await;
    assert!(r.get("error").is_none(), "{r}");
}

#[tokio::test]
async fn relay_frames_are_rate_limited() {
    let mut config = TestServer::dev_config();
    config.client.command_rate = 0.001;
    config.client.command_burst = 3.0;
    let s = TestServer::start_with(config).await;
    let mut a = RelayClient::open(&s.relay_url("relay")).await.unwrap();
    for _ in 0..4 {
        if a.send_text("x").await.is_err() {
            break;
        }
    }
    loop {
        match a.recv(Duration::from_secs(5)).await.unwrap() {
            groupcast_testkit::Frame::Close(code) => {
                assert_eq!(
                    code.map(|c| c.0),
                    Some(3013),
                    "over the rate: too many requests"
                );
                break;
            }
            _ => continue,
        }
    }
    assert!(limit_hits(&s, "command_rate").await >= 1.0);
}

#[tokio::test]
async fn presence_entries_per_channel() {
    use groupcast_core::broker::memory::MemoryBroker;
    use groupcast_core::membership::memory::MemoryMembership;
    use std::sync::Arc;
    let node = groupcast_core::Node::new(
        Arc::new(MemoryBroker::default()),
        Arc::new(MemoryMembership::new(2)),
    );
    let s = TestServer::start_with_node(TestServer::dev_config(), node).await;
    let mut clients = Vec::new();
    for user in ["a", "b"] {
        let mut c = s.client(user).await;
        let r = c
            .command("subscribe", json!({"channel":"room"}))
            .await
            .unwrap();
        assert!(r.get("subscribe").is_some(), "{r}");
        clients.push(c);
    }
    let mut third = s.client("c").await;
    let r = third
        .command("subscribe", json!({"channel":"room"}))
        .await
        .unwrap();
    assert_eq!(r["error"]["code"], 106, "presence full: {r}");
    // The refused subscriber got nothing and holds nothing.
    let (_, stats) = s.api("presence_stats", json!({"channel":"room"})).await;
    assert_eq!(stats["result"]["num_clients"], 2);
    assert!(limit_hits(&s, "presence_max_clients").await >= 1.0);
}
