//! The Centrifugo protocol over HTTP streaming and SSE (issue 20, point 5b) with the real
//! client: centrifuge-js in Node (`tests/sdk/centrifuge_recovery.mjs`) with only the
//! `http_stream` transport, then only `sse` (Node's EventSource), against three edges behind
//! nginx balancing round-robin with no stickiness: the stream stays on one edge, and each
//! emulation request (subscribe, publish, pongs) may reach another edge, which forwards it to
//! the holder over the node bus. Connect, subscribe, live publications, recovery after a
//! client-side reconnect and after a server-forced one (3011), a client publish.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use groupcast_edge::auth::{mint_hs256, now_unix};
use groupcast_testkit::edge::{EdgeProcess, EDGE_CONFIG};
use groupcast_testkit::membership::MembershipCluster;
use groupcast_testkit::nats::NatsServer;
use groupcast_testkit::nginx::Nginx;
use groupcast_testkit::{API_KEY, SECRET};
use serde_json::{json, Value};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_groupcast");
const INSTALL_HINT: &str = "run scripts/test.sh, which installs the test tools \
     (npm ci in tests/sdk, nginx)";

fn sdk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/sdk")
        .canonicalize()
        .expect("tests/sdk")
}

/// Runs `centrifuge_recovery.mjs` over `transport` at `base` (the balancer); its summary.
async fn centrifuge_js(base: &str, transport: &str) -> Value {
    assert!(
        sdk_dir()
            .join("node_modules/centrifuge/package.json")
            .is_file(),
        "centrifuge is missing: {INSTALL_HINT}"
    );
    let token = mint_hs256(
        SECRET,
        &json!({"sub": "sdk-user", "exp": now_unix() + 3600}),
    );
    let mut args = Vec::new();
    if transport == "sse" {
        // Node 20's EventSource (undici's), what centrifuge-js's SSE transport takes.
        args.push("--experimental-eventsource".to_string());
    }
    args.extend([
        sdk_dir()
            .join("centrifuge_recovery.mjs")
            .display()
            .to_string(),
        format!("ws://{base}/connection/websocket"),
        format!("http://{base}/api"),
        API_KEY.to_string(),
        token,
        "json".to_string(),
        transport.to_string(),
    ]);
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
        .expect("centrifuge_recovery.mjs within 60 s")
        .expect("node ran");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("\"ok\":true"),
        "centrifuge_recovery.mjs ({transport}) failed:\n{stdout}\n{stderr}"
    );
    serde_json::from_str(stdout.trim().lines().last().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn centrifuge_js_over_http_stream_and_sse_through_a_round_robin_balancer() {
    let (nats, membership) = tokio::join!(
        NatsServer::start(),
        MembershipCluster::start(Path::new(BIN), 1, &[])
    );
    let config = format!("{EDGE_CONFIG}{}", membership.edge_section());
    let urls = [nats.url()];
    let (a, b, c) = tokio::join!(
        EdgeProcess::start(Path::new(BIN), "edge-a", &urls, &config, &[]),
        EdgeProcess::start(Path::new(BIN), "edge-b", &urls, &config, &[]),
        EdgeProcess::start(Path::new(BIN), "edge-c", &urls, &config, &[]),
    );
    let nginx = Nginx::start_round_robin(&[a.addr, b.addr, c.addr]).await;
    let base = nginx.addr.to_string();
    let edges = [&a, &b, &c];
    let forwarded = || async {
        let mut n = 0.0;
        for e in edges {
            n += e
                .metric("groupcast_emulation_requests_total{outcome=\"forwarded\"}")
                .await;
        }
        n
    };
    for transport in ["http_stream", "sse"] {
        let before = forwarded().await;
        let started = Instant::now();
        let summary = centrifuge_js(&base, transport).await;
        assert_eq!(summary["transport"], transport, "{summary}");
        assert_eq!(
            summary["publications"],
            json!([1, 2, 3, 4, 5, 6]),
            "{summary}"
        );
        assert_eq!(summary["recovered_after_disconnect"], true, "{summary}");
        assert_eq!(summary["forced_reconnect"]["recovered"], true, "{summary}");
        let after = forwarded().await;
        assert!(
            after > before,
            "{transport}: no emulation request was forwarded between edges: was the balancer sticky?"
        );
        eprintln!(
            "{transport}: {:?}, {} emulation requests forwarded",
            started.elapsed(),
            after - before
        );
    }
    // The streams ended with the client: no connection left on any edge.
    for e in edges {
        for transport in ["http_stream", "sse"] {
            let series = format!(
                "groupcast_connections{{protocol=\"centrifugo\",transport=\"{transport}\"}}"
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            while e.metric(&series).await != 0.0 {
                assert!(
                    Instant::now() < deadline,
                    "{}: {series} stays above 0",
                    e.name
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
