//! Namespaces with event proxies are asked on every client path (issue 25,
//! "A backbone nobody can forge"; invariant 8 in `docs/architecture.md`):
//!
//! * a protobuf client cannot slip data past a publish proxy as a binary
//!   publication (the attack: HTML in JSON with a lone surrogate escape,
//!   which strict decoders refuse and a browser's `JSON.parse` accepts);
//! * the raw relay asks the namespace's publish proxy too, and closes on
//!   its refusal;
//! * a proxy that says it takes binary data (`binary = true`) gets it as
//!   `b64data` and may answer `data` or `b64data`;
//! * history and presence reads in a namespace with a subscribe proxy need
//!   a subscription (which the proxy allowed).
//!
//! The attacks run against `tests/backends/proxy_backend.py`, the
//! HTML-escaping backend the report used; the `b64data` answers against a
//! scripted proxy in this file.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use groupcast_core::{ChannelOptions, NamespaceConfig};
use groupcast_edge::config::ProxyConfig;
use groupcast_proto::protobuf as pb;
use groupcast_testkit::{http_request, Frame, RelayClient, TestServer};
use prost::Message as _;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(5);

/// Markup a browser runs when a page inserts it.
const XSS: &str = "<img src=x onerror=alert(1)>";
/// What the backend makes of it.
const ESCAPED: &str = "&lt;img src=x onerror=alert(1)&gt;";

/// The attack's data: JSON with the markup and a lone surrogate escape, so
/// strict decoders (the edge's) refuse it while `JSON.parse` accepts it.
fn unportable_json() -> Vec<u8> {
    format!(r#"{{"text":"{XSS}","pad":"\udbbb"}}"#).into_bytes()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `tests/backends/proxy_backend.py`, killed on drop.
struct PyBackend {
    child: Child,
    port: u16,
}

impl PyBackend {
    fn start() -> PyBackend {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let venv = root.join(".tools/venv/bin/python");
        let python = if venv.exists() {
            venv
        } else {
            PathBuf::from("python3")
        };
        let mut child = Command::new(python)
            .arg(root.join("tests/backends/proxy_backend.py"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start proxy_backend.py");
        let stdout = child.stdout.take().expect("stdout");
        let mut backend = PyBackend { child, port: 0 };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("proxy_backend.py listening within 20 s");
        backend.port = line
            .strip_prefix("listening ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("not a port: {line}"));
        backend
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Every event the backend got: `{"path", "body", ...}`.
    async fn log(&self) -> Vec<Value> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let (_, body) = http_request(addr, "GET", "/log", "", b"").await;
        serde_json::from_slice(&body).expect("log is JSON")
    }
}

impl Drop for PyBackend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A publish proxy scripted by what it is sent (see [`scripted_answer`]),
/// keeping every request body. Stops with the test's runtime.
struct ScriptedProxy {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<Value>>>,
}

impl ScriptedProxy {
    async fn start() -> ScriptedProxy {
        let log = Arc::new(Mutex::new(Vec::new()));
        let kept = log.clone();
        let app = axum::Router::new().route(
            "/publish",
            axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
                let kept = kept.clone();
                async move {
                    let answer = scripted_answer(&body);
                    kept.lock().unwrap().push(body);
                    match answer {
                        Some(a) => (axum::http::StatusCode::OK, axum::Json(a)),
                        None => (
                            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                            axum::Json(json!({})),
                        ),
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        ScriptedProxy { addr, log }
    }

    fn url(&self) -> String {
        format!("http://{}/publish", self.addr)
    }

    fn last(&self) -> Value {
        self.log.lock().unwrap().last().cloned().expect("a request")
    }
}

/// Binary data ending in `swap` is replaced by other bytes, ending in
/// `to-json` by JSON; JSON `{"text": "to-binary"}` by bytes, `both` gets
/// both fields, `bad-b64` base64 that is not, `disconnect` a disconnect,
/// `fail` HTTP 500 (`None`); anything else goes as is.
fn scripted_answer(req: &Value) -> Option<Value> {
    match req["data"]["text"].as_str() {
        Some("disconnect") => return Some(json!({"disconnect": {"code": 4403, "reason": "bye"}})),
        Some("fail") => return None,
        _ => {}
    }
    let bytes = req["b64data"]
        .as_str()
        .map(|s| base64::engine::general_purpose::STANDARD.decode(s).unwrap());
    let result = match (bytes.as_deref(), req["data"]["text"].as_str()) {
        (Some(b), _) if b.ends_with(b"swap") => json!({"b64data": b64(b"\x00swapped")}),
        (Some(b), _) if b.ends_with(b"to-json") => json!({"data": {"converted": true}}),
        (_, Some("to-binary")) => json!({"b64data": b64(&[1, 2, 3])}),
        (_, Some("both")) => json!({"data": {"a": 1}, "b64data": b64(b"x")}),
        (_, Some("bad-b64")) => json!({"b64data": "%%% not base64"}),
        _ => json!({}),
    };
    Some(json!({ "result": result }))
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

/// A namespace with the dev profile's options, changed by `f`.
fn namespace(name: &str, f: impl FnOnce(&mut ChannelOptions)) -> NamespaceConfig {
    let mut options = ChannelOptions::dev();
    f(&mut options);
    NamespaceConfig {
        name: name.into(),
        options,
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A protobuf client (`centrifuge-protobuf`), as centrifuge-js's protobuf
/// build speaks it.
struct PbClient {
    ws: Ws,
    seen: VecDeque<pb::Reply>,
    next_id: u32,
}

impl PbClient {
    async fn connect(s: &TestServer, user: &str) -> PbClient {
        let mut req = s.ws_url().into_client_request().unwrap();
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            "centrifuge-protobuf".parse().unwrap(),
        );
        let (ws, _) = tokio::time::timeout(T, tokio_tungstenite::connect_async(req))
            .await
            .expect("handshake within 5 s")
            .unwrap();
        let mut c = PbClient {
            ws,
            seen: VecDeque::new(),
            next_id: 0,
        };
        let r = c
            .call(pb::Command {
                connect: Some(pb::ConnectRequest {
                    token: s.token(user, json!({})),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await;
        assert!(r.connect.is_some(), "connect: {r:?}");
        c
    }

    /// Sends `cmd` with the next id; its reply.
    async fn call(&mut self, mut cmd: pb::Command) -> pb::Reply {
        self.next_id += 1;
        cmd.id = self.next_id;
        self.ws
            .send(Message::binary(cmd.encode_length_delimited_to_vec()))
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + T;
        loop {
            if let Some(i) = self.seen.iter().position(|r| r.id == cmd.id) {
                return self.seen.remove(i).unwrap();
            }
            let m = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .expect("a reply within 5 s")
                .expect("connection open")
                .expect("read");
            match m {
                Message::Binary(b) => {
                    let mut rest = &b[..];
                    while !rest.is_empty() {
                        self.seen
                            .push_back(pb::Reply::decode_length_delimited(&mut rest).unwrap());
                    }
                }
                Message::Close(f) => panic!("closed: {f:?}"),
                _ => {}
            }
        }
    }

    async fn publish(&mut self, channel: &str, data: &[u8]) -> pb::Reply {
        self.call(pb::Command {
            publish: Some(pb::PublishRequest {
                channel: channel.into(),
                data: data.to_vec(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
    }
}

fn error_code(r: &pb::Reply) -> Option<u32> {
    r.error.as_ref().map(|e| e.code)
}

/// The close frame `c` gets (after the publications queued before it).
async fn close_of(c: &mut RelayClient) -> Option<(u16, String)> {
    loop {
        if let Frame::Close(code) = c.recv(T).await.unwrap() {
            return code;
        }
    }
}

/// A text frame, parsed.
fn text_json(f: Frame) -> Value {
    match f {
        Frame::Text(t) => serde_json::from_str(&t).unwrap_or_else(|e| panic!("{e}: {t}")),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

/// `groupcast dev`'s profile with `proxy_backend.py`'s publish proxy on
/// namespace `chat` (JSON only: no `binary`).
async fn chat_server(backend: &PyBackend) -> TestServer {
    let mut config = TestServer::dev_config();
    config.proxies = vec![proxy("publish", backend.url("/publish"), json!({}))];
    config
        .namespaces
        .push(namespace("chat", |o| o.publish_proxy = "publish".into()));
    TestServer::start_with(config).await
}

const BINARY_REFUSED: &str =
    r#"groupcast_publish_proxy_refusals_total{reason="binary_not_accepted"}"#;

#[tokio::test]
async fn a_protobuf_client_cannot_slip_unfiltered_binary_past_the_publish_proxy() {
    let backend = PyBackend::start();
    let s = chat_server(&backend).await;
    let refused_before = s.metric(BINARY_REFUSED).await;
    // A browser page on the relay, which JSON.parses every frame.
    let mut page = RelayClient::open(&s.relay_url("chat:lobby")).await.unwrap();
    s.wait_subscribers("chat:lobby", 1).await;

    let mut attacker = PbClient::connect(&s, "mallory").await;
    let refusal = attacker.publish("chat:lobby", &unportable_json()).await;

    // The same markup over JSON is escaped by the backend, and it is the
    // first frame the page gets: nothing went out before it.
    let mut alice = s.client("alice").await;
    let r = alice
        .command(
            "publish",
            json!({"channel": "chat:lobby", "data": {"text": XSS}}),
        )
        .await
        .unwrap();
    assert!(r.get("publish").is_some(), "{r}");
    let first = page.recv(T).await.unwrap();
    if let Frame::Binary(b) = &first {
        panic!(
            "the binary publication went out unfiltered; the page got {:?}",
            String::from_utf8_lossy(b)
        );
    }
    assert_eq!(text_json(first)["text"], ESCAPED);
    assert_eq!(
        error_code(&refusal),
        Some(107),
        "binary data into a namespace whose publish proxy takes JSON only: {refusal:?}"
    );

    assert!(s.metric(BINARY_REFUSED).await >= refused_before + 1.0);
    let log = backend.log().await;
    assert!(
        log.iter().all(|e| e["body"].get("b64data").is_none()),
        "a proxy without `binary` is never sent b64data: {log:?}"
    );
}

#[tokio::test]
async fn the_raw_relay_asks_the_publish_proxy_and_closes_on_its_refusal() {
    let backend = PyBackend::start();
    let s = chat_server(&backend).await;
    let refused_before = s.metric(BINARY_REFUSED).await;
    let url = s.relay_url("chat:lobby");
    let mut page = RelayClient::open(&url).await.unwrap();
    let token = s.token("alice", json!({}));
    let mut alice = RelayClient::open(&format!("{url}?token={token}"))
        .await
        .unwrap();
    let mut bob = s.client("bob").await;
    let r = bob
        .command("subscribe", json!({"channel": "chat:lobby"}))
        .await
        .unwrap();
    assert!(r.get("subscribe").is_some(), "{r}");
    s.wait_subscribers("chat:lobby", 3).await;

    // The relay's frame is the backend's to judge: escaped for everyone.
    alice
        .send_text(&json!({ "text": XSS }).to_string())
        .await
        .unwrap();
    let escaped = json!({"text": ESCAPED, "by": "alice"});
    assert_eq!(
        text_json(page.recv(T).await.unwrap()),
        escaped,
        "the relay published without asking the publish proxy"
    );
    let p = bob.publication(T).await.unwrap();
    assert_eq!(p["pub"]["data"], escaped);
    assert_eq!(p["pub"]["info"]["user"], "alice");
    let log = backend.log().await;
    let body = &log.last().expect("the backend was asked")["body"];
    assert_eq!(body["channel"], "chat:lobby");
    assert_eq!(body["data"], json!({ "text": XSS }));
    assert_eq!(body["user"], "alice", "the relay token's user");
    assert_eq!(body["client"], p["pub"]["info"]["client"]);
    assert_eq!(
        (&body["transport"], &body["protocol"], &body["encoding"]),
        (&json!("websocket"), &json!("relay"), &json!("raw"))
    );

    // An anonymous relay connection is asked about as user "".
    page.send_text(r#"{"text":"hello"}"#).await.unwrap();
    let p = bob.publication(T).await.unwrap();
    assert_eq!(p["pub"]["data"], json!({"text": "hello"}));
    let log = backend.log().await;
    assert_eq!(log.last().unwrap()["body"]["user"], "");
    // The backend's skip_history holds for relay frames too.
    page.send_text(r#"{"text":"quiet"}"#).await.unwrap();
    let p = bob.publication(T).await.unwrap();
    assert_eq!(p["pub"]["data"], json!({"text": "quiet"}));
    let r = bob
        .command("history", json!({"channel": "chat:lobby", "limit": -1}))
        .await
        .unwrap();
    let stored: Vec<&Value> = r["history"]["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["data"]["text"])
        .collect();
    assert_eq!(stored, [ESCAPED, "hello"], "{r}");

    // The backend's error closes the relay connection with 3507 and its
    // message and code.
    alice.send_text(r#"{"text":"forbidden"}"#).await.unwrap();
    assert_eq!(
        close_of(&mut alice).await,
        Some((3507, "moderated (1403)".into()))
    );
    // Data the proxy cannot read as JSON (a binary frame; text that strict
    // decoders refuse) closes with 3501, unasked.
    let mut bin = RelayClient::open(&url).await.unwrap();
    bin.send_binary(&unportable_json()).await.unwrap();
    assert_eq!(
        bin.recv(T).await.unwrap(),
        Frame::Close(Some((3501, "bad request".into())))
    );
    let mut text = RelayClient::open(&url).await.unwrap();
    text.send_text(std::str::from_utf8(&unportable_json()).unwrap())
        .await
        .unwrap();
    assert_eq!(
        text.recv(T).await.unwrap(),
        Frame::Close(Some((3501, "bad request".into())))
    );
    // None of them reached the channel: the next publication is the API's.
    s.api(
        "publish",
        json!({"channel": "chat:lobby", "data": {"text": "marker"}}),
    )
    .await;
    assert_eq!(
        bob.publication(T).await.unwrap()["pub"]["data"],
        json!({"text": "marker"})
    );
    assert!(s.metric(BINARY_REFUSED).await >= refused_before + 2.0);
}

#[tokio::test]
async fn a_proxy_that_takes_binary_gets_b64data_and_may_answer_either_kind() {
    let backend = ScriptedProxy::start().await;
    let mut config = TestServer::dev_config();
    config.proxies = vec![proxy("bin", backend.url(), json!({"binary": true}))];
    config
        .namespaces
        .push(namespace("files", |o| o.publish_proxy = "bin".into()));
    let s = TestServer::start_with(config).await;
    let unusable = r#"groupcast_publish_proxy_refusals_total{reason="unusable_answer"}"#;
    let unusable_before = s.metric(unusable).await;
    let url = s.relay_url("files:x");
    let mut page = RelayClient::open(&url).await.unwrap();
    let mut alice = s.client("alice").await;
    let r = alice
        .command("subscribe", json!({"channel": "files:x"}))
        .await
        .unwrap();
    assert!(r.get("subscribe").is_some(), "{r}");
    s.wait_subscribers("files:x", 2).await;
    let mut carol = PbClient::connect(&s, "carol").await;

    // Binary data goes to the proxy as b64data, and out as it is.
    let r = carol.publish("files:x", b"\xff\x00keep").await;
    assert!(r.publish.is_some(), "{r:?}");
    let asked = backend.last();
    assert_eq!(asked["b64data"], b64(b"\xff\x00keep"));
    assert!(asked.get("data").is_none(), "{asked}");
    assert_eq!(
        (&asked["protocol"], &asked["encoding"], &asked["user"]),
        (&json!("protobuf"), &json!("binary"), &json!("carol"))
    );
    assert_eq!(
        page.recv(T).await.unwrap(),
        Frame::Binary(b"\xff\x00keep".to_vec())
    );
    let p = alice.publication(T).await.unwrap();
    assert_eq!(p["pub"]["data"], b64(b"\xff\x00keep"));
    assert_eq!(p["pub"]["tags"]["encoding"], "base64");

    // The proxy's b64data replaces it.
    let r = carol.publish("files:x", b"\xff\x00swap").await;
    assert!(r.publish.is_some(), "{r:?}");
    assert_eq!(
        page.recv(T).await.unwrap(),
        Frame::Binary(b"\x00swapped".to_vec())
    );
    // So does its data: the publication is JSON from then on.
    let r = carol.publish("files:x", b"\xff\x00to-json").await;
    assert!(r.publish.is_some(), "{r:?}");
    assert_eq!(
        page.recv(T).await.unwrap(),
        Frame::Text(r#"{"converted":true}"#.into())
    );
    let p = alice.publication(T).await.unwrap();
    assert_eq!(p["pub"]["data"], b64(b"\x00swapped"));
    let p = alice.publication(T).await.unwrap();
    assert_eq!(p["pub"]["data"], json!({"converted": true}));
    assert!(p["pub"].get("tags").is_none(), "{p}");

    // A JSON publication the proxy answers with b64data becomes binary.
    let r = alice
        .command(
            "publish",
            json!({"channel": "files:x", "data": {"text": "to-binary"}}),
        )
        .await
        .unwrap();
    assert!(r.get("publish").is_some(), "{r}");
    assert_eq!(page.recv(T).await.unwrap(), Frame::Binary(vec![1, 2, 3]));
    let p = alice.publication(T).await.unwrap();
    assert_eq!(p["pub"]["data"], b64(&[1, 2, 3]));

    // An answer the edge cannot use fails the publish with 100, counted.
    for text in ["both", "bad-b64"] {
        let r = alice
            .command(
                "publish",
                json!({"channel": "files:x", "data": {"text": text}}),
            )
            .await
            .unwrap();
        assert_eq!(r["error"]["code"], 100, "{text}: {r}");
    }
    assert!(s.metric(unusable).await >= unusable_before + 2.0);

    // A relay text frame that is not JSON reaches the proxy as b64data and
    // goes out as the same text.
    let mut sender = RelayClient::open(&url).await.unwrap();
    sender.send_text("plain words").await.unwrap();
    assert_eq!(
        page.recv(T).await.unwrap(),
        Frame::Text("plain words".into())
    );
    let asked = backend.last();
    assert_eq!(asked["b64data"], b64(b"plain words"));
    assert_eq!(asked["protocol"], "relay");

    // The proxy's disconnect closes a relay connection with its code; a
    // proxy that fails closes it with 3004.
    sender.send_text(r#"{"text":"disconnect"}"#).await.unwrap();
    assert_eq!(close_of(&mut sender).await, Some((4403, "bye".into())));
    let mut sender = RelayClient::open(&url).await.unwrap();
    sender.send_text(r#"{"text":"fail"}"#).await.unwrap();
    assert_eq!(
        close_of(&mut sender).await,
        Some((3004, "internal server error".into()))
    );
}

#[tokio::test]
async fn history_and_presence_reads_need_a_subscription_the_subscribe_proxy_allowed() {
    let backend = PyBackend::start();
    let mut config = TestServer::dev_config();
    config.proxies = vec![proxy("subscribe", backend.url("/subscribe"), json!({}))];
    let readable = |o: &mut ChannelOptions| {
        o.allow_history_for_client = true;
        o.allow_presence_for_client = true;
    };
    config.namespaces.push(namespace("rooms", |o| {
        readable(o);
        o.subscribe_proxy = "subscribe".into();
    }));
    config.namespaces.push(namespace("open", readable));
    let s = TestServer::start_with(config).await;

    // The backend lets alice in, and refuses bob.
    let mut alice = s.client("alice").await;
    let r = alice
        .command("subscribe", json!({"channel": "rooms:secret"}))
        .await
        .unwrap();
    assert!(r.get("subscribe").is_some(), "{r}");
    s.api(
        "publish",
        json!({"channel": "rooms:secret", "data": {"text": "members only"}}),
    )
    .await;
    alice.publication(T).await.unwrap();
    let mut bob = s.client("bob").await;
    let r = bob
        .command("subscribe", json!({"channel": "rooms:secret"}))
        .await
        .unwrap();
    assert_eq!(r["error"]["code"], 1003, "{r}");

    // bob cannot read around the refusal; alice, subscribed, can.
    let reads = [
        ("history", json!({"channel": "rooms:secret", "limit": 10})),
        ("presence", json!({"channel": "rooms:secret"})),
        ("presence_stats", json!({"channel": "rooms:secret"})),
    ];
    for (method, body) in &reads {
        let r = bob.command(method, body.clone()).await.unwrap();
        assert_eq!(
            r["error"]["code"], 103,
            "{method} by a client the subscribe proxy refused: {r}"
        );
        let r = alice.command(method, body.clone()).await.unwrap();
        assert!(r.get(*method).is_some(), "{method} by a subscriber: {r}");
    }
    let r = alice
        .command("history", json!({"channel": "rooms:secret", "limit": 10}))
        .await
        .unwrap();
    assert_eq!(
        r["history"]["publications"][0]["data"],
        json!({"text": "members only"})
    );

    // Without a subscribe proxy, allow_*_for_client still reads unsubscribed.
    for (method, _) in &reads {
        let r = bob
            .command(method, json!({"channel": "open:x", "limit": 10}))
            .await
            .unwrap();
        assert!(r.get(*method).is_some(), "{method} in open:x: {r}");
    }
}
