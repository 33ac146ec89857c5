//! The raw relay asks a namespace's `subscribe_proxy` before it subscribes
//! a connection (invariant 8 in `docs/architecture.md`; found during issue
//! 25): a user the backend refuses cannot open `/ws/relay/rooms:secret`
//! and read what is published there, even where the namespace's own rules
//! would let them in.
//!
//! The backend's error closes the connection with 3507 and the reason
//! `<message> (<code>)`, its `disconnect` with its own code, a proxy that
//! fails with 3004; an allowed connection carries the answer's `info` as
//! channel info and ends, with 3006, at its `expire_at`. The proxy here is
//! scripted (see [`answer`]).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use groupcast_core::{ChannelOptions, NamespaceConfig};
use groupcast_edge::config::ProxyConfig;
use groupcast_testkit::{Frame, RelayClient, TestServer};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(5);

/// The scripted answer to a subscribe request, by its `user`: `alice` is
/// let in with channel info (and `data`, which the relay has no reply to
/// carry); `brief` for three seconds (at least two: the expiry is in
/// whole seconds); `stale` with an expiry already past;
/// `banned` gets a disconnect; anyone else (anonymous too) error 1003.
fn answer(req: &Value) -> Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    match req["user"].as_str().unwrap_or_default() {
        "alice" => json!({"result": {"info": {"role": "member"}, "data": {"topic": "secret"}}}),
        "brief" => json!({"result": {"expire_at": now + 3}}),
        "stale" => json!({"result": {"expire_at": now - 60}}),
        "banned" => json!({"disconnect": {"code": 4403, "reason": "banned"}}),
        _ => json!({"error": {"code": 1003, "message": "not a member"}}),
    }
}

/// One request the proxy got: its body and its `Cookie` header.
#[derive(Clone, Debug)]
struct Asked {
    body: Value,
    cookie: Option<String>,
}

/// A subscribe proxy answering [`answer`], keeping every request. Stops
/// with the test's runtime.
struct ScriptedProxy {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<Asked>>>,
}

impl ScriptedProxy {
    async fn start() -> ScriptedProxy {
        let log = Arc::new(Mutex::new(Vec::new()));
        let kept = log.clone();
        let app = axum::Router::new().route(
            "/subscribe",
            axum::routing::post(
                move |headers: axum::http::HeaderMap, axum::Json(body): axum::Json<Value>| {
                    let kept = kept.clone();
                    async move {
                        let a = answer(&body);
                        let cookie = headers
                            .get("cookie")
                            .and_then(|v| v.to_str().ok())
                            .map(String::from);
                        kept.lock().unwrap().push(Asked { body, cookie });
                        axum::Json(a)
                    }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        ScriptedProxy { addr, log }
    }

    fn url(&self) -> String {
        format!("http://{}/subscribe", self.addr)
    }

    /// The requests about `user`.
    fn asked_about(&self, user: &str) -> Vec<Asked> {
        let log = self.log.lock().unwrap();
        log.iter()
            .filter(|a| a.body["user"] == user)
            .cloned()
            .collect()
    }
}

/// A `[[proxies]]` entry, read as the configuration file would be.
fn proxy(name: &str, endpoint: String, extra: Value) -> ProxyConfig {
    let mut entry = json!({"name": name, "endpoint": endpoint, "timeout": "3s"});
    if let Value::Object(m) = extra {
        for (k, v) in m {
            entry[k] = v;
        }
    }
    serde_json::from_value(entry).unwrap_or_else(|e| panic!("[[proxies]] {name:?}: {e}"))
}

/// A namespace with the dev profile's options (anyone may subscribe by
/// the namespace's rules) and the subscribe proxy `proxy`.
fn namespace(name: &str, proxy: &str) -> NamespaceConfig {
    let mut options = ChannelOptions::dev();
    options.subscribe_proxy = proxy.into();
    NamespaceConfig {
        name: name.into(),
        options,
    }
}

/// An address nothing listens on.
async fn closed_port() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// `groupcast dev`'s profile with namespace `rooms` asking `backend`
/// (which gets the upgrade's `Cookie`) and namespace `down` asking a proxy
/// that is not there.
async fn server(backend: &ScriptedProxy) -> TestServer {
    let mut config = TestServer::dev_config();
    let nowhere = format!("http://{}/subscribe", closed_port().await);
    config.proxies = vec![
        proxy("sub", backend.url(), json!({"http_headers": ["Cookie"]})),
        proxy("down", nowhere, json!({})),
    ];
    config.namespaces.push(namespace("rooms", "sub"));
    config.namespaces.push(namespace("down", "down"));
    TestServer::start_with(config).await
}

/// Publishes `{"n": i}` on `channel` through the API every 100 ms until
/// `c` gets a frame (bounded): the first frame it gets, whether it was
/// subscribed at once or later.
async fn first_frame(s: &TestServer, channel: &str, c: &mut RelayClient) -> Frame {
    let deadline = tokio::time::Instant::now() + T;
    for i in 0.. {
        s.api("publish", json!({"channel": channel, "data": {"n": i}}))
            .await;
        match c.recv(Duration::from_millis(100)).await {
            Ok(f) => return f,
            Err(_) => assert!(
                tokio::time::Instant::now() < deadline,
                "no frame on {channel} within {T:?}"
            ),
        }
    }
    unreachable!()
}

fn relay_url(s: &TestServer, channel: &str, user: Option<&str>) -> String {
    let url = s.relay_url(channel);
    match user {
        Some(u) => format!("{url}?token={}", s.token(u, json!({}))),
        None => url,
    }
}

const REFUSED: &str = r#"groupcast_proxy_requests_total{proxy="subscribe",outcome="error"}"#;

#[tokio::test]
async fn a_user_the_subscribe_proxy_refuses_reads_nothing_over_the_raw_relay() {
    let backend = ScriptedProxy::start().await;
    let s = server(&backend).await;
    let refused_before = s.metric(REFUSED).await;

    // The namespace's rules let anyone in; the backend refuses bob, and
    // the anonymous: the first frame either gets is the close, never a
    // publication.
    let not_a_member = Frame::Close(Some((3507, "not a member (1003)".into())));
    for user in [Some("bob"), None] {
        let mut c = RelayClient::open(&relay_url(&s, "rooms:secret", user))
            .await
            .unwrap();
        let first = first_frame(&s, "rooms:secret", &mut c).await;
        assert_eq!(
            first, not_a_member,
            "{user:?}, refused by the subscribe proxy, read the channel over the raw relay"
        );
    }
    s.wait_subscribers("rooms:secret", 0).await;

    // The backend was asked as for the publish proxy of the raw relay: the
    // client id, the token's user (`""` when anonymous), the channel and
    // the upgrade's headers it forwards.
    let mut req = s.relay_url("rooms:secret").into_client_request().unwrap();
    req.headers_mut()
        .insert("Cookie", "session=mallory".parse().unwrap());
    let (mut ws, _) = tokio::time::timeout(T, tokio_tungstenite::connect_async(req))
        .await
        .expect("handshake within 5 s")
        .unwrap();
    let close = tokio::time::timeout(T, ws.next())
        .await
        .expect("closed within 5 s");
    match close {
        Some(Ok(Message::Close(Some(f)))) => {
            assert_eq!(
                (u16::from(f.code), f.reason.as_str()),
                (3507, "not a member (1003)")
            )
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
    let bob = backend.asked_about("bob");
    let body = &bob.last().expect("the backend was asked about bob").body;
    assert_eq!(body["channel"], "rooms:secret");
    assert!(
        body["client"].as_str().is_some_and(|c| !c.is_empty()),
        "{body}"
    );
    assert_eq!(
        (&body["transport"], &body["protocol"], &body["encoding"]),
        (&json!("websocket"), &json!("relay"), &json!("raw"))
    );
    let anonymous = backend.asked_about("");
    assert_eq!(anonymous.len(), 2, "{anonymous:?}");
    assert_eq!(anonymous[0].cookie, None);
    assert_eq!(anonymous[1].cookie.as_deref(), Some("session=mallory"));

    assert!(s.metric(REFUSED).await >= refused_before + 3.0);
}

#[tokio::test]
async fn a_user_the_subscribe_proxy_allows_reads_the_channel_with_its_channel_info() {
    let backend = ScriptedProxy::start().await;
    let s = server(&backend).await;
    let mut alice = RelayClient::open(&relay_url(&s, "rooms:secret", Some("alice")))
        .await
        .unwrap();
    // The first frame is a publication: the answer's `data` is not sent
    // (the relay has no subscribe reply to carry it).
    match first_frame(&s, "rooms:secret", &mut alice).await {
        Frame::Text(t) => assert!(t.starts_with(r#"{"n":"#), "{t}"),
        other => panic!("alice, allowed, got {other:?}"),
    }
    s.wait_subscribers("rooms:secret", 1).await;
    assert_eq!(backend.asked_about("alice").len(), 1);

    // The answer's `info` is the connection's channel info: in its
    // presence entry and its publications.
    let (_, r) = s.api("presence", json!({"channel": "rooms:secret"})).await;
    let entries: Vec<&Value> = r["result"]["presence"]
        .as_object()
        .unwrap()
        .values()
        .collect();
    assert_eq!(entries.len(), 1, "{r}");
    assert_eq!(entries[0]["user"], "alice");
    assert_eq!(entries[0]["chan_info"], json!({"role": "member"}), "{r}");
    let mut reader = s.client("alice").await;
    let r = reader
        .command("subscribe", json!({"channel": "rooms:secret"}))
        .await
        .unwrap();
    assert!(r.get("subscribe").is_some(), "{r}");
    alice.send_text(r#"{"text":"hi"}"#).await.unwrap();
    let p = reader.publication(T).await.unwrap();
    assert_eq!(p["pub"]["data"], json!({"text": "hi"}));
    assert_eq!(p["pub"]["info"]["user"], "alice");
    assert_eq!(p["pub"]["info"]["chan_info"], json!({"role": "member"}));
}

#[tokio::test]
async fn a_proxy_disconnect_closes_with_its_code_and_a_proxy_that_is_down_with_3004() {
    let backend = ScriptedProxy::start().await;
    let s = server(&backend).await;
    let failed_before = s
        .metric(r#"groupcast_proxy_requests_total{proxy="subscribe",outcome="unreachable"}"#)
        .await;

    let mut banned = RelayClient::open(&relay_url(&s, "rooms:secret", Some("banned")))
        .await
        .unwrap();
    assert_eq!(
        first_frame(&s, "rooms:secret", &mut banned).await,
        Frame::Close(Some((4403, "banned".into()))),
        "the proxy's disconnect"
    );
    let mut anyone = RelayClient::open(&relay_url(&s, "down:x", Some("alice")))
        .await
        .unwrap();
    assert_eq!(
        first_frame(&s, "down:x", &mut anyone).await,
        Frame::Close(Some((3004, "internal server error".into()))),
        "a subscribe proxy that is down"
    );
    s.wait_subscribers("rooms:secret", 0).await;
    s.wait_subscribers("down:x", 0).await;
    assert!(
        s.metric(r#"groupcast_proxy_requests_total{proxy="subscribe",outcome="unreachable"}"#)
            .await
            >= failed_before + 1.0
    );
}

#[tokio::test]
async fn a_subscription_the_proxy_gave_an_expiry_ends_there_with_3006() {
    let backend = ScriptedProxy::start().await;
    let s = server(&backend).await;
    let expired = Frame::Close(Some((3006, "subscription expired".into())));

    // Already past: closed, never subscribed.
    let mut stale = RelayClient::open(&relay_url(&s, "rooms:secret", Some("stale")))
        .await
        .unwrap();
    assert_eq!(first_frame(&s, "rooms:secret", &mut stale).await, expired);

    // Three seconds: reads until then, then is closed.
    let mut brief = RelayClient::open(&relay_url(&s, "rooms:secret", Some("brief")))
        .await
        .unwrap();
    assert!(
        matches!(
            first_frame(&s, "rooms:secret", &mut brief).await,
            Frame::Text(_)
        ),
        "brief reads before the expiry"
    );
    let deadline = tokio::time::Instant::now() + T;
    loop {
        match brief.recv(T).await.expect("closed within 5 s") {
            Frame::Text(_) => {}
            f => {
                assert_eq!(f, expired);
                break;
            }
        }
        assert!(tokio::time::Instant::now() < deadline);
    }
    s.wait_subscribers("rooms:secret", 0).await;
}
