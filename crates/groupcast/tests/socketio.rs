//! Socket.IO (issue 20) with the real clients: `socket.io-client` 4.8 in Node
//! (`tests/sdk/socketio_client.mjs`, the npm package) and in headless Chromium
//! (`tests/sdk/socketio_browser.mjs`, its browser bundle in a page), both running the one
//! scenario of `tests/sdk/socketio_scenario.mjs` and checked against the same outcomes, against
//! `groupcast dev` on each transport (polling then the upgrade, WebSocket only, polling only);
//! `python-socketio`; and Node's run against three edges behind nginx balancing
//! round-robin, with no stickiness: each polling request may reach another edge, which
//! forwards it to the edge holding the session. Namespace `/` sends its sockets' events to a
//! backend on NATS, which answers with the API's `sio_*` commands over NATS, as a real one
//! would.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use futures_util::StreamExt;
use groupcast_edge::auth::{mint_hs256, now_unix};
use groupcast_testkit::dev::DevServer;
use groupcast_testkit::edge::{EdgeProcess, EDGE_CONFIG};
use groupcast_testkit::membership::MembershipCluster;
use groupcast_testkit::nats::NatsServer;
use groupcast_testkit::nginx::Nginx;
use groupcast_testkit::{free_tcp_port, API_KEY, SECRET};
use serde_json::{json, Value};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_groupcast");
const INSTALL_HINT: &str = "run scripts/test.sh, which installs the test tools \
     (npm ci in tests/sdk, .tools/venv with python-socketio, nginx)";

/// Namespace `/` with its events to target `sio` (a NATS subject).
const SOCKETIO: &str = r#"
[socketio]
enabled = true
[[socketio.namespaces]]
name = "/"
target = "sio"
"#;

fn sdk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/sdk")
        .canonicalize()
        .expect("tests/sdk")
}

/// The backend of namespace `/`: a NATS subscriber of its target's subject that answers
/// through the API over NATS. On connect it puts the socket in room "lobby" and says so; it
/// tells the room what a socket says ("chat"), answers "add" and "reverse" (bytes) with acks,
/// asks a question with an ack ("ask-me") and reports the answer, disconnects a socket that
/// emits "kick" (`sio_disconnect`) and ends the whole session of one that emits "bye" (API
/// `disconnect`).
async fn backend(nats_url: &str) -> tokio::task::JoinHandle<()> {
    let client = async_nats::connect(nats_url).await.unwrap();
    let mut events = client.subscribe("gc.relay.sio").await.unwrap();
    // The server holds the interest once a message sent after the SUB comes back.
    client.publish("gc.relay.sio", "{}".into()).await.unwrap();
    let probe = tokio::time::timeout(Duration::from_secs(20), events.next())
        .await
        .expect("the probe within 20 s")
        .expect("subscription open");
    assert_eq!(probe.payload.as_ref(), b"{}");
    tokio::spawn(async move {
        let call = |method: &'static str, params: Value| {
            let client = client.clone();
            async move {
                let cmd = json!({"method": method, "params": params, "api_key": API_KEY});
                let r = client
                    .request("gc.api", cmd.to_string().into())
                    .await
                    .unwrap();
                let r: Value = serde_json::from_slice(&r.payload).unwrap();
                assert!(r.get("error").is_none(), "{method}: {r}");
            }
        };
        let b64 = base64::engine::general_purpose::STANDARD;
        while let Some(msg) = events.next().await {
            let e: Value = serde_json::from_slice(&msg.payload).unwrap();
            let client_id = e["client"].as_str().unwrap_or_default().to_string();
            match (e["type"].as_str().unwrap_or_default(), e["event"].as_str()) {
                ("connect", _) => {
                    assert_eq!(e["namespace"], "/", "{e}");
                    call("sio_join", json!({"client": client_id, "room": "lobby"})).await;
                    let hi = json!({"client": client_id, "event": "joined", "args": ["lobby"]});
                    call("sio_emit", hi).await;
                }
                ("event", Some("chat")) => {
                    let mut args = vec![e["user"].clone()];
                    args.extend(e["args"].as_array().unwrap().iter().cloned());
                    let chat = json!({"room": "lobby", "event": "chat", "args": args});
                    call("sio_emit", chat).await;
                }
                ("event", Some("add")) => {
                    let sum = e["args"][0].as_i64().unwrap() + e["args"][1].as_i64().unwrap();
                    let ack = json!({"client": client_id, "id": e["ack"], "args": [sum]});
                    call("sio_ack", ack).await;
                }
                ("event", Some("reverse")) => {
                    let mut bytes = b64
                        .decode(e["args"][0]["$binary"].as_str().unwrap())
                        .unwrap();
                    bytes.reverse();
                    let back = json!([{"$binary": b64.encode(bytes)}]);
                    let ack = json!({"client": client_id, "id": e["ack"], "args": back});
                    call("sio_ack", ack).await;
                }
                ("event", Some("ask-me")) => {
                    let q = json!({"client": client_id, "event": "question", "args": ["ready"], "ack": 42});
                    call("sio_emit", q).await;
                }
                ("ack", _) if e["id"] == 42 => {
                    let said =
                        json!({"client": client_id, "event": "answered", "args": [e["args"][0]]});
                    call("sio_emit", said).await;
                }
                ("event", Some("kick")) => {
                    call("sio_disconnect", json!({"client": client_id})).await;
                }
                ("event", Some("bye")) => {
                    call("disconnect", json!({"client": client_id})).await;
                }
                _ => {}
            }
        }
    })
}

/// Where the scenario of `tests/sdk/socketio_scenario.mjs` runs: socket.io-client's npm
/// package in Node (`socketio_client.mjs`), or its browser bundle in a page of headless Chromium
/// (`socketio_browser.mjs`). Both run the same module and give the same summary.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Runtime {
    Node,
    Chromium,
}

impl Runtime {
    fn script(self) -> &'static str {
        match self {
            Runtime::Node => "socketio_client.mjs",
            Runtime::Chromium => "socketio_browser.mjs",
        }
    }

    /// The kinds of binary value it sends, and the kind it receives bytes as.
    fn binary(self) -> (&'static [&'static str], &'static str) {
        match self {
            Runtime::Node => (&["Buffer"], "Buffer"),
            Runtime::Chromium => (&["Uint8Array", "ArrayBuffer", "Blob"], "ArrayBuffer"),
        }
    }
}

/// Runs the scenario in `runtime` against `url`; returns its summary once
/// [`assert_outcomes`] has checked it.
async fn client(runtime: Runtime, url: &str, api_url: &str, transports: &str) -> Value {
    let script = runtime.script();
    assert!(
        sdk_dir()
            .join("node_modules/socket.io-client/package.json")
            .is_file(),
        "socket.io-client is missing: {INSTALL_HINT}"
    );
    if runtime == Runtime::Chromium {
        assert!(
            sdk_dir()
                .join("node_modules/playwright-core/package.json")
                .is_file(),
            "playwright-core is missing: {INSTALL_HINT}"
        );
        assert!(
            Path::new("/usr/bin/chromium").is_file() || std::env::var_os("CHROMIUM").is_some(),
            "chromium is missing: {INSTALL_HINT}"
        );
    }
    let token = mint_hs256(SECRET, &json!({"sub": "alice", "exp": now_unix() + 3600}));
    let args = [
        sdk_dir().join(script).display().to_string(),
        url.to_string(),
        api_url.to_string(),
        API_KEY.to_string(),
        token,
        "not-a-token".to_string(),
        transports.to_string(),
    ];
    // Killed on drop: Chromium, a child of node on a pipe, goes with it. The script closes
    // the browser itself after 50 s.
    let child = Command::new("node")
        .args(&args)
        .current_dir(sdk_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start node: {e}; {INSTALL_HINT}"));
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{script} ({transports}) within 60 s"))
        .expect("node ran");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("\"ok\":true"),
        "{script} ({transports}) failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let summary: Value = serde_json::from_str(stdout.trim().lines().last().unwrap())
        .unwrap_or_else(|e| panic!("{script}: the summary: {e}\n{stdout}"));
    assert_outcomes(runtime, transports, &summary);
    summary
}

/// What the scenario must have seen, the same in Node and in Chromium (binary values aside:
/// each runtime has its own types).
fn assert_outcomes(runtime: Runtime, transports: &str, s: &Value) {
    let what = format!("{runtime:?} ({transports}): {s}");
    assert_eq!(s["ok"], true, "{what}");
    assert_eq!(s["transports"], transports, "{what}");
    // CONNECT_ERROR: a bad token, and a namespace that is not served.
    let bad = &s["bad_token"];
    assert!(
        bad["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("invalid token")),
        "{what}"
    );
    assert_eq!(bad["data"], json!({"code": 3500}), "{what}");
    assert_eq!(
        s["unknown_namespace"],
        json!({"message": "Invalid namespace", "data": null}),
        "{what}"
    );
    // Rooms joined by the backend; an emit without an ack relayed to the room; acks both ways.
    assert_eq!(s["joined"], json!(["lobby", "lobby"]), "{what}");
    assert_eq!(s["chat"], json!(["alice", "hello", {"n": 1}]), "{what}");
    assert_eq!(s["ack"], 5, "{what}");
    assert_eq!(s["server_ack"], "ready? yes", "{what}");
    // Binary: each kind the runtime sends comes back reversed in an ack; an API emit's
    // {"$binary"} arrives as bytes.
    let (sent, received) = runtime.binary();
    let binary = s["binary"].as_array().expect("binary");
    assert_eq!(binary.len(), sent.len(), "{what}");
    for (b, kind) in binary.iter().zip(sent) {
        assert_eq!(
            *b,
            json!({"sent": kind, "received": received, "bytes": [250, 3, 2, 1]}),
            "{what}"
        );
    }
    let blob = json!({"received": received, "bytes": [1, 2, 3], "tail": "tail"});
    assert_eq!(s["binary_event"], json!([blob, blob]), "{what}");
    // Publications on the room's channel: sio_emit (its event), the API's and a Centrifugo
    // client's plain publish ("message").
    let news = json!([{"title": "up"}, 7]);
    assert_eq!(s["news"], json!([news, news]), "{what}");
    let api = json!([{"text": "from the API"}]);
    assert_eq!(s["api_publication"], json!([api, api]), "{what}");
    let centrifugo = json!([{"text": "from a Centrifugo client"}]);
    assert_eq!(
        s["centrifugo_publication"],
        json!([centrifugo, centrifugo]),
        "{what}"
    );
    // Disconnect reasons: sio_disconnect, API disconnect, the client's own.
    assert_eq!(s["kick"], "io server disconnect", "{what}");
    // One reason, on every transport: on polling the DISCONNECT comes in one answer and the
    // close packet in the next, so the client handles them in that order.
    assert_eq!(
        s["session_ended"],
        json!(["io server disconnect"]),
        "{what}"
    );
    assert_eq!(s["own"], "io client disconnect", "{what}");
}

/// The scenario in `runtime` on `groupcast dev`, with `transports`.
async fn dev(runtime: Runtime, transports: &str) {
    let nats = NatsServer::start().await;
    let (server, listen) = start_dev(&nats);
    let backend = backend(&nats.url()).await;
    let url = format!("http://{listen}");
    let summary = client(runtime, &url, &format!("{url}/api"), transports).await;
    eprintln!("{runtime:?} ({transports}): {summary}");
    backend.abort();
    drop(server);
    let expected = if transports == "polling" {
        "polling"
    } else {
        "websocket"
    };
    assert_eq!(summary["transport"], expected, "{summary}");
}

/// `groupcast dev --nats URL` with [`SOCKETIO`] and the API over NATS: the server and its
/// address.
fn start_dev(nats: &NatsServer) -> (DevServer, String) {
    let config = std::env::temp_dir().join(format!(
        "gc-socketio-{}-{}.toml",
        std::process::id(),
        free_tcp_port()
    ));
    std::fs::write(&config, format!("[api]\nover_nats = true\n{SOCKETIO}")).unwrap();
    let listen = format!("127.0.0.1:{}", free_tcp_port());
    let server = DevServer::start(
        BIN,
        &[
            "--listen",
            &listen,
            "--api-key",
            API_KEY,
            "--token-hmac-secret",
            SECRET,
            "--nats",
            &nats.url(),
            "--config",
            config.to_str().unwrap(),
        ],
        &[],
    );
    let _ = std::fs::remove_file(&config);
    (server, listen)
}

/// python-socketio's client (`tests/sdk/socketio_python.py`) on one transport.
async fn python_client(transport: &str) {
    let python = sdk_dir().join("../../.tools/venv/bin/python");
    let nats = NatsServer::start().await;
    let (server, listen) = start_dev(&nats);
    let backend = backend(&nats.url()).await;
    let token = mint_hs256(SECRET, &json!({"sub": "alice", "exp": now_unix() + 3600}));
    let child = Command::new(&python)
        .arg(sdk_dir().join("socketio_python.py"))
        .args([&format!("http://{listen}"), &token, transport])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}; {INSTALL_HINT}", python.display()));
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("socketio_python.py within 60 s")
        .expect("python ran");
    backend.abort();
    drop(server);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("\"ok\": true"),
        "socketio_python.py ({transport}) failed:\n{stdout}\n{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_socketio_client_polling() {
    python_client("polling").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_socketio_client_websocket() {
    python_client("websocket").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_io_client_polling_then_upgrade() {
    dev(Runtime::Node, "default").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_io_client_websocket_only() {
    dev(Runtime::Node, "websocket").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_io_client_polling_only() {
    dev(Runtime::Node, "polling").await;
}

/// The same scenario in a page of headless Chromium: socket.io-client's browser bundle, on a
/// page of another origin (CORS), polling then the upgrade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_io_client_in_chromium_polling_then_upgrade() {
    dev(Runtime::Chromium, "default").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_io_client_in_chromium_websocket_only() {
    dev(Runtime::Chromium, "websocket").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_io_client_in_chromium_polling_only() {
    dev(Runtime::Chromium, "polling").await;
}

/// Three edges behind nginx balancing round-robin: a polling session's requests land on any
/// edge and are forwarded to the one holding it; everything the client does works as on one
/// server, with the default transports (whose upgrade succeeds only where it reaches the
/// holder), with polling only, and with WebSocket only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_io_through_a_round_robin_balancer_without_sticky_sessions() {
    let (nats, membership) = tokio::join!(
        NatsServer::start(),
        MembershipCluster::start(Path::new(BIN), 1, &[])
    );
    let config = format!("{EDGE_CONFIG}{}{SOCKETIO}", membership.edge_section());
    let env = [("GROUPCAST_API__OVER_NATS", "true")];
    let urls = [nats.url()];
    let (a, b, c) = tokio::join!(
        EdgeProcess::start(Path::new(BIN), "edge-a", &urls, &config, &env),
        EdgeProcess::start(Path::new(BIN), "edge-b", &urls, &config, &env),
        EdgeProcess::start(Path::new(BIN), "edge-c", &urls, &config, &env),
    );
    let nginx = Nginx::start_round_robin(&[a.addr, b.addr, c.addr]).await;
    let backend = backend(&nats.url()).await;
    let url = format!("http://{}", nginx.addr);
    for transports in ["polling", "default", "websocket"] {
        client(Runtime::Node, &url, &format!("{url}/api"), transports).await;
    }
    backend.abort();
    let mut forwarded = 0.0;
    for e in [&a, &b, &c] {
        forwarded += e
            .metric("groupcast_socketio_forwarded_total{op=\"poll\",outcome=\"answered\"}")
            .await;
    }
    assert!(
        forwarded > 0.0,
        "no polling request was forwarded between edges: was the balancer sticky?"
    );
}
