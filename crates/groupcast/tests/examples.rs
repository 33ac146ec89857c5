//! The examples (`examples/*/`, issue 21): each seed system started by its one command,
//! `examples/NAME/run.sh`, on `groupcast dev` and on the local cluster (nginx in front of three
//! edges), and driven by the seed's own client code: browser pages in Chromium, the seed's
//! Python clients and backends. The scripts that drive them are in `tests/sdk/`
//! (`example_<name>.mjs`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use groupcast_testkit::example::{repo_root, Example, Mode};

const BIN: &str = env!("CARGO_BIN_EXE_groupcast");

// Port offsets of the cluster tests, which may run side by side: a local cluster listens on
// 4222 to 8224 plus its offset (docs: deploy/local/README.md), so offsets are at least 4,003
// apart, and every port stays below the ephemeral range (32768 on) where the other tests' free
// ports come from.
const OFFSET_RELAY: u16 = 5000;
const OFFSET_BACKEND_RELAY: u16 = 9100;
const OFFSET_MUD: u16 = 13200;
const OFFSET_CHAT: u16 = 17300;
const OFFSET_EVENT_DAEMON: u16 = 21400;
const INSTALL_HINT: &str = "run scripts/test.sh, which installs the test tools \
     (tests/sdk/node_modules, .tools/venv, Chromium, nginx)";

fn sdk_dir() -> PathBuf {
    repo_root().join("tests").join("sdk")
}

fn python() -> PathBuf {
    let p = repo_root().join(".tools/venv/bin/python");
    assert!(p.is_file(), "{} is missing: {INSTALL_HINT}", p.display());
    p
}

fn chromium_ready() {
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

/// Runs `node tests/sdk/SCRIPT ARGS` (bounded by `within`) and returns its last line, which
/// must be `{"ok":true...}`; panics with its output and the example's logs otherwise.
async fn node_script(
    example: &Example,
    script: &str,
    args: &[String],
    env: &[(String, String)],
    within: Duration,
) -> String {
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(sdk_dir().join(script))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(sdk_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start node {script}: {e}; {INSTALL_HINT}"));
    let out = match tokio::time::timeout(within, child.wait_with_output()).await {
        Ok(out) => out.expect("wait for node"),
        Err(_) => panic!(
            "{script} did not finish within {within:?}\n{}",
            example.logs()
        ),
    };
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let last = stdout.trim().lines().last().unwrap_or("").to_string();
    assert!(
        out.status.success() && last.starts_with("{\"ok\":true"),
        "{script} failed ({}).\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}\n--- logs ---\n{}",
        out.status,
        example.logs()
    );
    last
}

/// Seed 000: the test page in two tabs (on two edges of the cluster) and the Python client,
/// named and interactive.
async fn relay(mode: Mode) {
    chromium_ready();
    let within = Duration::from_secs(if mode == Mode::Dev { 30 } else { 120 });
    let example = Example::start("relay", mode, BIN, &[], within);
    let edges = example.edges();
    let ws = |http: &str| format!("{}/ws/relay/", http.replacen("http:", "ws:", 1));
    let args = [
        example.field("page").to_string(),
        ws(&edges[0]),
        ws(edges.get(1).unwrap_or(&edges[0])),
        format!("{}/ws/relay/", example.field("ws")),
        example.field("api").to_string(),
        example.field("key").to_string(),
        python().display().to_string(),
        repo_root()
            .join("examples/relay/test_websocket_relay.py")
            .display()
            .to_string(),
    ];
    node_script(
        &example,
        "example_relay.mjs",
        &args,
        &[],
        Duration::from_secs(110),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_example_on_groupcast_dev() {
    relay(Mode::Dev).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_example_on_the_local_cluster_across_two_edges() {
    relay(Mode::Cluster {
        port_offset: OFFSET_RELAY,
    })
    .await;
}

/// Seed 004: two tabs bound to backend processes through the gateway's connect proxy; the
/// processes answer by id, broadcast, transfer, close, and their death closes their connections.
async fn backend_relay(mode: Mode) {
    chromium_ready();
    let within = Duration::from_secs(if mode == Mode::Dev { 30 } else { 120 });
    let example = Example::start("backend-relay", mode, BIN, &[], within);
    let edges = example.edges();
    let ws = |http: &str| format!("{}/ws/", http.replacen("http:", "ws:", 1));
    let args = [
        example.field("page").to_string(),
        ws(&edges[0]),
        ws(edges.get(1).unwrap_or(&edges[0])),
        example.field("gateway").to_string(),
    ];
    node_script(
        &example,
        "example_backend_relay.mjs",
        &args,
        &[],
        Duration::from_secs(110),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_relay_example_on_groupcast_dev() {
    backend_relay(Mode::Dev).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_relay_example_on_the_local_cluster_across_two_edges() {
    backend_relay(Mode::Cluster {
        port_offset: OFFSET_BACKEND_RELAY,
    })
    .await;
}

/// Seed 003: bot players running the page's own client module (and one person in Chromium)
/// play for a while; on the cluster an edge is killed halfway. At the end every bot is back in
/// its room and its view, built from deltas, equals the game loop's world.
async fn mud(mode: Mode, bots: u32, seconds: u32) {
    chromium_ready();
    let within = Duration::from_secs(if mode == Mode::Dev { 30 } else { 120 });
    let example = Example::start("mud", mode, BIN, &[], within);
    let mut args = vec![
        example.field("page").to_string(),
        example.field("ws").to_string(),
        example.field("game").to_string(),
        bots.to_string(),
        seconds.to_string(),
    ];
    let mut env = Vec::new();
    if let Mode::Cluster { .. } = mode {
        let cluster = repo_root().join("deploy/local/cluster.sh");
        args.push(format!("{} kill edge-2", cluster.display()));
        env = example.cluster_env();
    }
    let limit = Duration::from_secs(u64::from(seconds) + 160);
    let summary = node_script(&example, "example_mud.mjs", &args, &env, limit).await;
    eprintln!("mud: {summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mud_example_on_groupcast_dev() {
    mud(Mode::Dev, 24, 8).await;
}

/// The figure: 200 bots for 60 s across the cluster's edges, one edge killed midway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mud_example_on_the_local_cluster_with_an_edge_killed() {
    mud(
        Mode::Cluster {
            port_offset: OFFSET_MUD,
        },
        200,
        60,
    )
    .await;
}

/// Seed 001: LQDOJ's pages (socket.io-client in Chromium) and its poster (python-socketio) on
/// Groupcast's Socket.IO server: acks and ids, each error code, the catch-up of a new channel,
/// the capacity limit, and a reconnect (on the cluster: the edge holding the page's session
/// killed) after which every message posted meanwhile arrives, once.
async fn event_daemon(mode: Mode) {
    chromium_ready();
    let within = Duration::from_secs(if mode == Mode::Dev { 60 } else { 150 });
    let capacity = if mode == Mode::Dev { "3" } else { "10000" };
    let env = [("EVENT_DAEMON_MAX_CLIENTS", capacity)];
    let example = Example::start("event-daemon", mode, BIN, &env, within);
    let entry = example.field("api").trim_end_matches("/api").to_string();
    let (how, env) = match mode {
        Mode::Dev => ("dev".to_string(), Vec::new()),
        Mode::Cluster { .. } => {
            let cluster = repo_root().join("deploy/local/cluster.sh");
            (
                format!("cluster={}", cluster.display()),
                example.cluster_env(),
            )
        }
    };
    let args = [
        example.field("page").to_string(),
        entry,
        python().display().to_string(),
        repo_root()
            .join("examples/event-daemon")
            .display()
            .to_string(),
        example.field("event_daemon_key").to_string(),
        example.field("daemon").to_string(),
        how,
    ];
    let summary = node_script(
        &example,
        "example_event_daemon.mjs",
        &args,
        &env,
        Duration::from_secs(160),
    )
    .await;
    eprintln!("event-daemon: {summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_daemon_example_on_groupcast_dev() {
    event_daemon(Mode::Dev).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_daemon_example_on_the_local_cluster_with_the_session_s_edge_killed() {
    event_daemon(Mode::Cluster {
        port_offset: OFFSET_EVENT_DAEMON,
    })
    .await;
}

/// Seed 002: the Django Channels chat, notifications and user status on relay routes with the
/// example's backend (`examples/chat/backend.py`), driven by the seed's browser code in
/// Chromium (`tests/sdk/example_chat.mjs`): two users in a room (on two edges of the cluster),
/// typing, an edit and a delete, a notification that reaches only its user, a status change, a
/// file, the rate and size limits and the bad-token answer in the seed's error shape, a foreign
/// origin refused, and a user going offline when they leave.
async fn chat(mode: Mode) {
    chromium_ready();
    python();
    let within = Duration::from_secs(if mode == Mode::Dev { 30 } else { 120 });
    let example = Example::start("chat", mode, BIN, &[], within);
    let edges = example.edges();
    let ws = |http: &str| http.replacen("http:", "ws:", 1);
    let args = [
        example.field("page").to_string(),
        ws(&edges[0]),
        ws(edges.get(1).unwrap_or(&edges[0])),
        example.field("ws").to_string(),
        example.field("api").to_string(),
        example.field("key").to_string(),
        example.field("backend").to_string(),
    ];
    node_script(
        &example,
        "example_chat.mjs",
        &args,
        &[],
        Duration::from_secs(160),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_example_on_groupcast_dev() {
    chat(Mode::Dev).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_example_on_the_local_cluster_across_two_edges() {
    chat(Mode::Cluster {
        port_offset: OFFSET_CHAT,
    })
    .await;
}
