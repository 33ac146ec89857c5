//! `examples/chat/` (seed 002, issue 21): the Django Channels chat, notifications and user
//! status on Groupcast's relay routes with the example's backend (`examples/chat/backend.py`),
//! started by `examples/chat/run.sh` on `groupcast dev` and on the local cluster, and driven by
//! the seed's browser code in Chromium (`tests/sdk/example_chat.mjs`): two users in a room
//! (on two edges of the cluster), typing, an edit and a delete, a notification that reaches only
//! its user, a status change, a file, the rate and size limits and the bad-token answer in the
//! seed's error shape, a foreign origin refused, and a user going offline when they leave.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use groupcast_testkit::example::{repo_root, Example, Mode};

const BIN: &str = env!("CARGO_BIN_EXE_groupcast");
const INSTALL_HINT: &str = "run scripts/test.sh, which installs the test tools \
     (tests/sdk/node_modules, .tools/venv, Chromium, nginx)";

fn sdk_dir() -> PathBuf {
    repo_root().join("tests").join("sdk")
}

fn tools_ready() {
    let python = repo_root().join(".tools/venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: {INSTALL_HINT}",
        python.display()
    );
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

/// Runs `node tests/sdk/example_chat.mjs ARGS` (bounded by `within`); panics with its output and
/// the example's logs unless its last line is `{"ok":true}`.
async fn drive(example: &Example, args: &[String], within: Duration) {
    let child = tokio::process::Command::new("node")
        .arg(sdk_dir().join("example_chat.mjs"))
        .args(args)
        .current_dir(sdk_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start node: {e}; {INSTALL_HINT}"));
    let out = match tokio::time::timeout(within, child.wait_with_output()).await {
        Ok(out) => out.expect("wait for node"),
        Err(_) => panic!(
            "example_chat.mjs did not finish within {within:?}\n{}",
            example.logs()
        ),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stdout.trim().lines().last().unwrap_or("");
    assert!(
        out.status.success() && last.starts_with("{\"ok\":true"),
        "example_chat.mjs failed ({}).\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}\n--- logs ---\n{}",
        out.status,
        example.logs()
    );
}

async fn chat(mode: Mode) {
    tools_ready();
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
    drive(&example, &args, Duration::from_secs(160)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_example_on_groupcast_dev() {
    chat(Mode::Dev).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_example_on_the_local_cluster_across_two_edges() {
    chat(Mode::Cluster { port_offset: 14000 }).await;
}
