//! Socket.IO connection-state recovery across edges (issue 20): 300 `socket.io-client` 4.8
//! sockets (`tests/sdk/socketio_recovery.mjs`; a third each on polling only, WebSocket only
//! and the default polling-then-upgrade) in ten rooms, through nginx balancing round-robin
//! over three edges of a cluster (three NATS servers with JetStream R3 and the local cluster's
//! permissions, three membership replicas, the edges signing with one `nats.cluster_secret`).
//! Numbered publications go to the rooms through nginx's API at a steady rate; one edge is
//! killed with `kill -9`. Asserted: every socket that lost its session reconnects through
//! nginx to another edge with `socket.recovered === true`, and every socket holds every
//! publication of its room exactly once and in order.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use groupcast_edge::auth::{mint_hs256, now_unix};
use groupcast_testkit::edge::{EdgeProcess, EDGE_CONFIG};
use groupcast_testkit::membership::MembershipCluster;
use groupcast_testkit::nats::NatsCluster;
use groupcast_testkit::nginx::Nginx;
use groupcast_testkit::{try_http_request, API_KEY, SECRET};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio_util::sync::CancellationToken;

const BIN: &str = env!("CARGO_BIN_EXE_groupcast");
const INSTALL_HINT: &str = "run scripts/test.sh, which installs the test tools \
     (npm ci in tests/sdk, nginx)";
const SOCKETS: usize = 300;
const ROOMS: usize = 10;
/// One publication every 50 ms, round robin over the rooms: 2/s per room.
const PUBLISH_EVERY: Duration = Duration::from_millis(50);
/// Bound for what we wait for (reconnects, catching up).
const WAIT: Duration = Duration::from_secs(40);

const SOCKETIO: &str = r#"
[socketio]
enabled = true
[[socketio.namespaces]]
name = "/"
recovery = true
"#;

fn room(i: usize) -> String {
    format!("sio{}", i % ROOMS)
}

fn sdk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/sdk")
        .canonicalize()
        .expect("tests/sdk")
}

/// The Node process holding the sockets.
struct Sockets {
    _child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Sockets {
    async fn start(url: &str) -> Sockets {
        assert!(
            sdk_dir()
                .join("node_modules/socket.io-client/package.json")
                .is_file(),
            "socket.io-client is missing: {INSTALL_HINT}"
        );
        let sockets: Vec<Value> = (0..SOCKETS)
            .map(|i| {
                let claims = json!({"sub": format!("u{i}"), "exp": now_unix() + 3600,
                                    "channels": [room(i)]});
                let transports = ["polling", "websocket", "default"][i % 3];
                json!({"token": mint_hs256(SECRET, &claims), "transports": transports})
            })
            .collect();
        let mut child = Command::new("node")
            .arg(sdk_dir().join("socketio_recovery.mjs"))
            .current_dir(sdk_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start node: {e}; {INSTALL_HINT}"));
        let mut stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let config = json!({"url": url, "sockets": sockets});
        stdin
            .write_all(format!("{config}\n").as_bytes())
            .await
            .unwrap();
        let mut s = Sockets {
            _child: child,
            stdin,
            stdout,
        };
        let ready = s.line(Duration::from_secs(90)).await;
        assert_eq!(ready["ready"], SOCKETS, "{ready}");
        s
    }

    async fn line(&mut self, within: Duration) -> Value {
        let line = tokio::time::timeout(within, self.stdout.next_line())
            .await
            .expect("an answer from socketio_recovery.mjs")
            .unwrap()
            .expect("socketio_recovery.mjs ended");
        serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"))
    }

    async fn ask(&mut self, cmd: &str) -> Value {
        self.stdin
            .write_all(format!("{cmd}\n").as_bytes())
            .await
            .unwrap();
        self.line(Duration::from_secs(20)).await
    }
}

/// Numbered publications to the rooms through nginx's API, each retried with its
/// idempotency key until accepted.
struct Publisher {
    acked: Arc<Vec<AtomicU64>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<u64>,
}

impl Publisher {
    fn start(lb: SocketAddr) -> Publisher {
        let acked: Arc<Vec<AtomicU64>> = Arc::new((0..ROOMS).map(|_| AtomicU64::new(0)).collect());
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let (acked, stop) = (acked.clone(), stop.clone());
            async move {
                let mut failed = 0;
                let mut tick = tokio::time::interval(PUBLISH_EVERY);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                for k in 0.. {
                    tokio::select! {
                        _ = stop.cancelled() => return failed,
                        _ = tick.tick() => {}
                    }
                    let r = k % ROOMS;
                    let n = acked[r].load(Ordering::SeqCst) + 1;
                    let body = json!({"channel": room(r), "data": {"n": n},
                                      "idempotency_key": format!("p{n}")})
                    .to_string();
                    let started = Instant::now();
                    loop {
                        let answer = tokio::time::timeout(
                            Duration::from_secs(15),
                            try_http_request(
                                lb,
                                "POST",
                                "/api/publish",
                                &format!("X-API-Key: {API_KEY}\r\n"),
                                body.as_bytes(),
                            ),
                        )
                        .await;
                        if let Ok(Ok((200, b))) = answer {
                            let v: Value = serde_json::from_slice(&b).unwrap_or_default();
                            if v.get("error").is_none() {
                                break;
                            }
                        }
                        failed += 1;
                        assert!(
                            started.elapsed() < WAIT,
                            "publish {n} to {} not accepted within {WAIT:?}",
                            room(r)
                        );
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    acked[r].store(n, Ordering::SeqCst);
                }
                failed
            }
        });
        Publisher { acked, stop, task }
    }

    async fn stop(self) -> (Arc<Vec<AtomicU64>>, u64) {
        self.stop.cancel();
        let failed = self.task.await.expect("publisher");
        (self.acked, failed)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_io_recovery_after_kill_9_of_an_edge_behind_round_robin() {
    let (nats, membership) = tokio::join!(
        NatsCluster::start_with_permissions(),
        MembershipCluster::start(Path::new(BIN), 3, &[])
    );
    let urls = nats.urls();
    let config = format!("{EDGE_CONFIG}{}{SOCKETIO}", membership.edge_section());
    let credentials = nats.users().expect("with permissions").edge_env();
    let mut env: Vec<(&str, &str)> = credentials.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.extend([
        ("GROUPCAST_CLIENT__COMMAND_RATE", "0"),
        ("GROUPCAST_CHANNEL__HISTORY_REPLICAS", "3"),
        // The recovery tokens' key derives from it: the same on every edge.
        (
            "GROUPCAST_NATS__CLUSTER_SECRET",
            "recovery-test-cluster-secret",
        ),
    ]);
    let bin = Path::new(BIN);
    let (a, b, c) = tokio::join!(
        EdgeProcess::start(bin, "edge-a", &urls, &config, &env),
        EdgeProcess::start(bin, "edge-b", &urls, &config, &env),
        EdgeProcess::start(bin, "edge-c", &urls, &config, &env),
    );
    let mut edges = [a, b, c];
    let lb = Nginx::start_round_robin(&edges.iter().map(|e| e.addr).collect::<Vec<_>>()).await;

    let mut sockets = Sockets::start(&format!("http://{}", lb.addr)).await;
    let on_a = edges[0]
        .metric("groupcast_connections{protocol=\"socketio\"}")
        .await;
    let publisher = Publisher::start(lb.addr);
    tokio::time::sleep(Duration::from_secs(3)).await;

    let fault = Instant::now();
    edges[0].kill();
    // Every socket that lost its session is back, recovered.
    let status = loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let s = sockets.ask("status").await["status"].clone();
        let disconnects = s["disconnects"].as_u64().unwrap();
        if disconnects > 0
            && s["connected"] == SOCKETS
            && s["reconnects"].as_u64() == Some(disconnects)
        {
            break s;
        }
        assert!(
            fault.elapsed() < WAIT,
            "not every socket reconnected within {WAIT:?}: {s}"
        );
    };
    let back_after = fault.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (acked, failed_publishes) = publisher.stop().await;
    let acked: Vec<u64> = acked.iter().map(|a| a.load(Ordering::SeqCst)).collect();

    // Everything acknowledged arrives, once and in order.
    let expected: u64 = acked.iter().sum::<u64>() * (SOCKETS / ROOMS) as u64;
    let caught_up = Instant::now();
    loop {
        let s = sockets.ask("status").await["status"].clone();
        if s["received"].as_u64() >= Some(expected) || caught_up.elapsed() > WAIT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let report = sockets.ask("report").await["report"].clone();
    let mut recovered = 0;
    for (i, s) in report.as_array().unwrap().iter().enumerate() {
        let got: Vec<u64> = s["got"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_u64().unwrap())
            .collect();
        let want: Vec<u64> = (1..=acked[i % ROOMS]).collect();
        assert_eq!(
            got,
            want,
            "socket {i} ({}, room {}): every publication of its room exactly once, in order; {s}",
            ["polling", "websocket", "default"][i % 3],
            room(i)
        );
        let connects = s["connects"].as_u64().unwrap();
        assert_eq!(
            s["recovered"].as_u64().unwrap(),
            connects - 1,
            "socket {i}: every reconnect recovered; {s}"
        );
        recovered += connects - 1;
    }
    assert!(
        recovered as f64 >= on_a,
        "the {on_a} sessions of the killed edge all came back recovered ({recovered} did): {status}"
    );
    let mut retried = 0.0;
    for e in &edges[1..] {
        for outcome in ["answered_again", "joined"] {
            retried += e
                .metric(&format!(
                    "groupcast_socketio_polls_retried_total{{outcome=\"{outcome}\"}}"
                ))
                .await;
        }
    }
    eprintln!(
        "socket.io recovery: {SOCKETS} sockets, {on_a} on the killed edge, all back and recovered \
         in {} ms; {} publications ({recovered} recoveries), each to {} sockets, all delivered once \
         in order; {failed_publishes} publish attempts failed and were retried; {retried} polls \
         retried by nginx answered by their session",
        back_after.as_millis(),
        acked.iter().sum::<u64>(),
        SOCKETS / ROOMS,
    );
    drop(lb);
    drop(nats);
}
