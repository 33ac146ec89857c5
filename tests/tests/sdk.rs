//! The real Centrifugo SDKs against a live in-process server:
//! `centrifuge` (npm, centrifuge-js) for the client protocol and recovery,
//! `cent` (PyPI) for the server HTTP API, and centrifuge-python's own test
//! suite (PyPI sdist, downloaded and checksummed at test time).
//!
//! The scripts live in `tests/sdk/`; their dependencies are pinned in
//! `tests/sdk/package.json` (+ lock) and `tests/sdk/requirements.txt` and are
//! installed by `scripts/test.sh` into `tests/sdk/node_modules` and
//! `.tools/venv`. A missing install fails these tests (they never skip).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use groupcast_testkit::{TestServer, API_KEY};
use serde_json::json;
use tokio::process::Command;

const SCRIPT_TIMEOUT: Duration = Duration::from_secs(60);
const INSTALL_HINT: &str =
    "run scripts/test.sh, which installs the SDK test dependencies (and Chromium) \
     (npm ci in tests/sdk, and .tools/venv with tests/sdk/requirements.txt)";

/// Repository root: the parent of this crate's manifest directory (`tests/`).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn sdk_dir() -> PathBuf {
    repo_root().join("tests").join("sdk")
}

/// Run `program args…` in `cwd` with a timeout; panic with its output unless
/// it exits with success. Returns stdout.
async fn run_script(what: &str, program: &Path, args: &[String], cwd: &Path) -> String {
    run_script_within(what, program, args, cwd, SCRIPT_TIMEOUT).await
}

/// [`run_script`] with another time limit.
async fn run_script_within(
    what: &str,
    program: &Path,
    args: &[String],
    cwd: &Path,
    timeout: Duration,
) -> String {
    let child = Command::new(program)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "{what}: cannot start {}: {e}; {INSTALL_HINT}",
                program.display()
            )
        });
    let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => panic!("{what}: waiting for {} failed: {e}", program.display()),
        Err(_) => panic!(
            "{what}: {} did not finish within {timeout:?} (killed)",
            program.display()
        ),
    };
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}).\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        out.status
    );
    eprintln!("{what}: {}", stdout.trim());
    stdout
}

/// `node`, checked to exist, with `tests/sdk/node_modules` installed.
fn node_with_sdk() -> PathBuf {
    let modules = sdk_dir().join("node_modules");
    for pkg in ["centrifuge", "ws"] {
        assert!(
            modules.join(pkg).join("package.json").is_file(),
            "{} is missing: {INSTALL_HINT}",
            modules.join(pkg).display()
        );
    }
    PathBuf::from("node")
}

/// `.tools/venv/bin/python`, checked to have `cent` installed.
fn python_with_cent() -> PathBuf {
    let python = repo_root()
        .join(".tools")
        .join("venv")
        .join("bin")
        .join("python");
    assert!(
        python.is_file(),
        "{} is missing: {INSTALL_HINT}",
        python.display()
    );
    let has_cent = std::process::Command::new(&python)
        .args(["-c", "import cent"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        has_cent,
        "`cent` is not installed in {}: {INSTALL_HINT}",
        python.display()
    );
    python
}

/// Run `centrifuge_recovery.mjs` (centrifuge-js in Node) against `server`:
/// connect, subscribe, miss publications, reconnect and recover, then a
/// server-forced reconnect, then a client publish. It must see exactly
/// 1..=6. `encoding`: `json`, or `protobuf` (the SDK's protobuf build).
async fn centrifuge_recovery(server: &TestServer, encoding: &str) {
    let node = node_with_sdk();
    let token = server.token("sdk-user", json!({}));
    let script = sdk_dir().join("centrifuge_recovery.mjs");
    let args = [
        script.display().to_string(),
        server.ws_url(),
        server.api_url(),
        API_KEY.to_string(),
        token,
        encoding.to_string(),
    ];
    let out = run_script("centrifuge_recovery.mjs", &node, &args, &sdk_dir()).await;
    let summary: serde_json::Value = serde_json::from_str(out.trim().lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("centrifuge_recovery.mjs summary is not JSON ({e}): {out}"));
    assert_eq!(summary["ok"], true, "{summary}");
    assert_eq!(summary["encoding"], encoding, "{summary}");
    assert_eq!(
        summary["publications"],
        json!([1, 2, 3, 4, 5, 6]),
        "{summary}"
    );
}

/// The same with the SDK's protobuf build (subprotocol
/// `centrifuge-protobuf`, binary frames): what the mobile SDKs speak.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn centrifuge_js_protobuf_connects_subscribes_publishes_and_recovers() {
    centrifuge_recovery(&TestServer::start().await, "protobuf").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn centrifuge_js_connects_subscribes_and_recovers() {
    centrifuge_recovery(&TestServer::start().await, "json").await;
}

/// The same SDK run against an edge on a real NATS backbone: offsets are
/// JetStream sequences there (increasing, not consecutive), and recovery
/// reads JetStream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn centrifuge_js_recovers_on_a_nats_backed_edge() {
    let nats = groupcast_testkit::nats::NatsServer::start().await;
    let mut config = TestServer::dev_config();
    config.nats.urls = vec![nats.url()];
    let backbone = groupcast_edge::backbone::build(&config, Default::default())
        .await
        .expect("NATS backbone");
    centrifuge_recovery(
        &TestServer::start_with_node(config, backbone.node.clone()).await,
        "json",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cent_python_server_api() {
    let python = python_with_cent();
    let server = TestServer::start().await;
    let token = server.token("sdk-user", json!({}));
    let script = sdk_dir().join("cent_api.py");
    let args = [
        script.display().to_string(),
        server.api_url(),
        API_KEY.to_string(),
        token,
        server.ws_url(),
    ];
    let out = run_script("cent_api.py", &python, &args, &sdk_dir()).await;
    let summary: serde_json::Value = serde_json::from_str(out.trim().lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("cent_api.py summary is not JSON ({e}): {out}"));
    assert_eq!(summary["ok"], true, "{summary}");
}

/// The seed's plain `new WebSocket(url)` relay snippet, with Node's
/// browser-compatible WebSocket, in two "tabs".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_relay_snippet_with_a_browser_websocket() {
    let server = TestServer::start().await;
    let script = sdk_dir().join("relay_snippet.mjs");
    let args = [
        "--experimental-websocket".to_string(),
        script.display().to_string(),
        server.relay_url("relay"),
        server.api_url(),
        API_KEY.to_string(),
    ];
    let out = run_script("relay_snippet.mjs", Path::new("node"), &args, &sdk_dir()).await;
    let summary: serde_json::Value = serde_json::from_str(out.trim().lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("relay_snippet.mjs summary is not JSON ({e}): {out}"));
    assert_eq!(summary["ok"], true, "{summary}");
}

/// The relay demo page (`GET /`) in a real browser (Debian's Chromium via
/// playwright-core): two tabs exchange messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_page_relays_between_two_browser_tabs() {
    let _node = node_with_sdk();
    assert!(
        Path::new("/usr/bin/chromium").is_file() || std::env::var_os("CHROMIUM").is_some(),
        "chromium is missing: {INSTALL_HINT}"
    );
    let server = TestServer::start().await;
    let script = sdk_dir().join("demo_page.mjs");
    let args = [
        script.display().to_string(),
        format!("http://{}/", server.addr),
        API_KEY.to_string(),
    ];
    let out = run_script("demo_page.mjs", Path::new("node"), &args, &sdk_dir()).await;
    assert!(out.contains("\"ok\":true"), "{out}");
}

/// The operator dashboard (`GET /dashboard`) in a real browser (Debian's
/// Chromium via playwright-core): a wrong API key is refused on the page,
/// the right one shows this node and a channel with its subscribers, and
/// the page fetches nothing from elsewhere. `DASHBOARD_SCREENSHOT=path.png`
/// (passed through to the script) also writes a screenshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_page_shows_the_node_in_a_browser() {
    let _node = node_with_sdk();
    assert!(
        Path::new("/usr/bin/chromium").is_file() || std::env::var_os("CHROMIUM").is_some(),
        "chromium is missing: {INSTALL_HINT}"
    );
    let server = TestServer::start().await;
    let mut clients = Vec::new();
    for user in ["ann", "ben", "cat"] {
        let mut c = server.client(user).await;
        let r = c
            .command("subscribe", json!({"channel": "news"}))
            .await
            .unwrap();
        assert!(r["subscribe"].is_object(), "{r}");
        clients.push(c);
    }
    let script = sdk_dir().join("dashboard_page.mjs");
    let args = [
        script.display().to_string(),
        format!("http://{}/dashboard", server.addr),
        API_KEY.to_string(),
        "news".to_string(),
        "1".to_string(),
    ];
    let out = run_script("dashboard_page.mjs", Path::new("node"), &args, &sdk_dir()).await;
    let summary: serde_json::Value = serde_json::from_str(out.trim().lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("dashboard_page.mjs summary is not JSON ({e}): {out}"));
    assert_eq!(summary["ok"], true, "{summary}");
    assert_eq!(summary["edges"], json!([server.config.name]), "{summary}");
    assert_eq!(summary["subscribers"], 3, "{summary}");
}

/// Seed 004's relay flow, end to end: a plain `new WebSocket(url)` in two
/// Chromium tabs, a relay route on an edge on NATS, and a backend process
/// on NATS that keeps its clients from `join`/`leave`, broadcasts to them
/// through `relay_send` (API over NATS) and closes one with `relay_close`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_004_relay_flow_with_browser_websockets_and_a_nats_backend() {
    use futures_util::StreamExt;
    let _node = node_with_sdk();
    assert!(
        Path::new("/usr/bin/chromium").is_file() || std::env::var_os("CHROMIUM").is_some(),
        "chromium is missing: {INSTALL_HINT}"
    );
    let nats = groupcast_testkit::nats::NatsServer::start().await;
    let mut config = TestServer::dev_config();
    config.nats.urls = vec![nats.url()];
    // The backend answers through the API over NATS (off unless set).
    config.api.over_nats = true;
    config
        .relay
        .routes
        .push(groupcast_edge::config::RouteConfig {
            path: "/ws/app/{room}/".into(),
            target: "app.{room}".into(),
            ..Default::default()
        });
    let backbone = groupcast_edge::backbone::build(&config, Default::default())
        .await
        .expect("NATS backbone");
    let server = TestServer::start_with_node(config, backbone.node.clone()).await;

    // The backend process: one target, the seed's broadcasting pattern.
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut events = client.subscribe("gc.relay.app.lobby").await.unwrap();
    // The server holds the interest once a message this client sends after
    // the subscription comes back on it (a flush only empties the socket).
    client
        .publish("gc.relay.app.lobby", "{}".into())
        .await
        .unwrap();
    let probe = tokio::time::timeout(Duration::from_secs(20), events.next())
        .await
        .expect("the probe within 20 s")
        .expect("subscription open");
    assert_eq!(probe.payload.as_ref(), b"{}");
    let backend = tokio::spawn(async move {
        let mut clients: Vec<String> = Vec::new();
        let call = |method: &str, params: serde_json::Value| {
            let cmd = json!({ "method": method, "params": params, "api_key": API_KEY }).to_string();
            let client = client.clone();
            async move {
                let r = client.request("gc.api", cmd.into()).await.unwrap();
                let r: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
                assert!(r["result"].is_object(), "{r}");
            }
        };
        let text = |v: serde_json::Value| v.to_string();
        while let Some(msg) = events.next().await {
            let e: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
            let me = e["client"].as_str().unwrap().to_string();
            match e["type"].as_str().unwrap() {
                "join" => {
                    clients.push(me.clone());
                    let hi = text(json!({ "event": "welcome", "client": me }));
                    call("relay_send", json!({ "client": me, "text": hi })).await;
                }
                "leave" => {
                    clients.retain(|c| *c != me);
                    for c in &clients {
                        let left = text(json!({ "event": "left", "client": me }));
                        call("relay_send", json!({ "client": c, "text": left })).await;
                    }
                }
                "message" if e["frame"] == "binary" => {
                    let n = e["b64data"].as_str().unwrap().len() / 4 * 3
                        - e["b64data"].as_str().unwrap().matches('=').count();
                    let reply = text(json!({ "event": "bytes", "length": n }));
                    call("relay_send", json!({ "client": me, "text": reply })).await;
                }
                "message" => {
                    let m: serde_json::Value =
                        serde_json::from_str(e["data"].as_str().unwrap()).unwrap();
                    if m["type"] == "say" {
                        let said = text(json!({ "event": "said", "text": m["text"] }));
                        for c in &clients {
                            call("relay_send", json!({ "client": c, "text": said })).await;
                        }
                    } else if m["type"] == "bye" {
                        let params =
                            json!({ "client": me, "code": 4000, "reason": "Session ended" });
                        call("relay_close", params).await;
                    }
                }
                _ => {}
            }
        }
    });

    let script = sdk_dir().join("relay_backend_page.mjs");
    let args = [
        script.display().to_string(),
        format!("http://{}/", server.addr),
        "/ws/app/lobby/".to_string(),
    ];
    let out = run_script(
        "relay_backend_page.mjs",
        Path::new("node"),
        &args,
        &sdk_dir(),
    )
    .await;
    backend.abort();
    let summary: serde_json::Value = serde_json::from_str(out.trim().lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("relay_backend_page.mjs summary is not JSON ({e}): {out}"));
    assert_eq!(summary["ok"], true, "{summary}");
}

/// Delta compression with centrifuge-js (`delta: 'fossil'`), JSON and its
/// protobuf build: 40 large, slowly changing publications (live, recovered
/// after a reconnect, live again) decode to exactly what was published,
/// most of them sent as deltas.
async fn centrifuge_delta(encoding: &str) {
    let node = node_with_sdk();
    let server = TestServer::start().await;
    let token = server.token("delta-user", json!({}));
    let script = sdk_dir().join("centrifuge_delta.mjs");
    let args = [
        script.display().to_string(),
        server.ws_url(),
        server.api_url(),
        API_KEY.to_string(),
        token,
        encoding.to_string(),
    ];
    let out = run_script("centrifuge_delta.mjs", &node, &args, &sdk_dir()).await;
    let summary: serde_json::Value = serde_json::from_str(out.trim().lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("centrifuge_delta.mjs summary is not JSON ({e}): {out}"));
    assert_eq!(summary["ok"], true, "{summary}");
    assert_eq!(summary["publications"], 40, "{summary}");
    let stats = &summary["stats"];
    let deltas = stats["numDeltaPayloads"].as_u64().unwrap_or(0);
    assert!(deltas >= 30, "most publications as deltas: {summary}");
    let ratio = stats["compressionRatio"].as_f64().unwrap_or(0.0);
    assert!(ratio > 0.5, "deltas are much smaller: {summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn centrifuge_js_decodes_fossil_deltas_over_json() {
    centrifuge_delta("json").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn centrifuge_js_decodes_fossil_deltas_over_protobuf() {
    centrifuge_delta("protobuf").await;
}

/// centrifuge-python's own test suite (its 185 `unittest` tests, from the
/// pinned sdist of PyPI centrifuge-python 0.7.0), run by
/// `tests/sdk/centrifuge_python_suite.py` against a server configured like
/// the Centrifugo of the SDK's docker-compose.yml
/// (`tests/sdk/centrifuge_python.toml`, loaded as `groupcast dev --config`
/// loads it). Each test runs with a time limit; the runner's skip list names
/// the tests that fail because of a Groupcast gap, and one of them passing
/// fails this test too (docs/sdks.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn centrifuge_python_sdk_test_suite() {
    let python = python_with_cent();
    let has_deps = std::process::Command::new(&python)
        .args(["-c", "import websockets, google.protobuf"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        has_deps,
        "`websockets` and `protobuf` are not installed in {}: {INSTALL_HINT}",
        python.display()
    );
    let toml = sdk_dir().join("centrifuge_python.toml");
    let config = groupcast_edge::Config::load(
        TestServer::dev_config(),
        Some(toml.as_path()),
        figment::providers::Serialized::defaults(json!({})),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", toml.display()));
    let server = TestServer::start_with(config).await;
    let script = sdk_dir().join("centrifuge_python_suite.py");
    // A healthy run takes about 40 s; its budget ends it with a summary
    // (tests left count as failed) before nextest's 2-minute kill.
    let args = [
        script.display().to_string(),
        server.ws_url(),
        server.config.client.token_hmac_secret.clone(),
        "--timeout".to_string(),
        "20".to_string(),
        // A bound against a hung run, not a speed check: on a machine
        // whose cores are busy with other work the 185 tests take minutes
        // (.config/nextest.toml runs this test alone, killed after 5 min).
        "--budget".to_string(),
        "240".to_string(),
    ];
    let out = run_script_within(
        "centrifuge_python_suite.py",
        &python,
        &args,
        &sdk_dir(),
        Duration::from_secs(270),
    )
    .await;
    let summary: serde_json::Value = serde_json::from_str(out.trim().lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("centrifuge_python_suite.py summary is not JSON ({e}): {out}"));
    assert_eq!(summary["ok"], true, "{summary}");
    assert_eq!(summary["failed"], json!([]), "{summary}");
}
