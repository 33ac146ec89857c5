//! Socket.IO (issue 20) with the real clients: `socket.io-client` 4.8 (npm) in Node, on each
//! transport (polling then the upgrade, WebSocket only, polling only), against an edge whose
//! namespace `/` sends its sockets' events to a backend on NATS, and that backend answering
//! with the API's `sio_*` commands over NATS, as a real one would.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use futures_util::StreamExt;
use groupcast_edge::config::SioNamespaceConfig;
use groupcast_testkit::{TestServer, API_KEY};
use serde_json::{json, Value};
use tokio::process::Command;

const INSTALL_HINT: &str =
    "run scripts/test.sh, which installs the test tools (npm ci in tests/sdk)";

fn sdk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sdk")
}

/// The backend of namespace `/`: a NATS subscriber of its target's subject that answers
/// through the API over NATS.
async fn backend(nats_url: String) -> tokio::task::JoinHandle<()> {
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
                    call(
                        "sio_emit",
                        json!({"room": "lobby", "event": "chat", "args": args}),
                    )
                    .await;
                }
                ("event", Some("add")) => {
                    let sum = e["args"][0].as_i64().unwrap() + e["args"][1].as_i64().unwrap();
                    let ack = json!({"client": client_id, "id": e["ack"], "args": [sum]});
                    call("sio_ack", ack).await;
                }
                ("event", Some("reverse")) => {
                    let b64 = e["args"][0]["$binary"].as_str().unwrap();
                    let mut bytes = base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .unwrap();
                    bytes.reverse();
                    let back = base64::engine::general_purpose::STANDARD.encode(bytes);
                    let ack =
                        json!({"client": client_id, "id": e["ack"], "args": [{"$binary": back}]});
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
                _ => {}
            }
        }
    })
}

async fn run_client(transports: &str) {
    assert!(
        sdk_dir()
            .join("node_modules/socket.io-client/package.json")
            .is_file(),
        "socket.io-client is missing: {INSTALL_HINT}"
    );
    let nats = groupcast_testkit::nats::NatsServer::start().await;
    let mut config = TestServer::dev_config();
    config.nats.urls = vec![nats.url()];
    config.api.over_nats = true;
    config.socketio.enabled = true;
    config.socketio.namespaces = vec![SioNamespaceConfig {
        name: "/".into(),
        target: "sio".into(),
        ..Default::default()
    }];
    let backbone = groupcast_edge::backbone::build(&config, Default::default())
        .await
        .expect("NATS backbone");
    let server = TestServer::start_with_node(config, backbone.node.clone()).await;
    let backend = backend(nats.url()).await;
    let args = [
        sdk_dir().join("socketio_client.mjs").display().to_string(),
        format!("http://{}", server.addr),
        server.api_url(),
        API_KEY.to_string(),
        server.token("alice", json!({})),
        "not-a-token".to_string(),
        transports.to_string(),
    ];
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
        .expect("socketio_client.mjs within 60 s")
        .expect("node ran");
    backend.abort();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("\"ok\":true"),
        "socketio_client.mjs ({transports}) failed:\n{stdout}\n{stderr}"
    );
    let summary: Value = serde_json::from_str(stdout.trim().lines().last().unwrap()).unwrap();
    let expected = if transports == "polling" {
        "polling"
    } else {
        "websocket"
    };
    assert_eq!(summary["transport"], expected, "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_io_client_polling_then_upgrade() {
    run_client("default").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_io_client_websocket_only() {
    run_client("websocket").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_io_client_polling_only() {
    run_client("polling").await;
}
