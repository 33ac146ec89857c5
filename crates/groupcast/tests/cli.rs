//! The `groupcast` binary as a user runs it: `groupcast dev` (banner,
//! configuration layering and errors, serving, SIGTERM) and `groupcast token`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use groupcast_testkit::dev::DevServer;
use groupcast_testkit::{http_request, Client};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_groupcast");

/// Kills the child on drop (a failed test must not leave a server behind).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn temp_file(content: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!(
        "gc-cli-{}-{:?}.toml",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::write(&p, content).unwrap();
    p
}

fn run(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run groupcast")
}

#[test]
fn edge_without_nats_or_membership_or_a_reachable_nats_fails_at_start() {
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("nats://127.0.0.1:{closed}");
    let edge_fails = |extra: &[&str], needle: &str| {
        let mut args = vec!["edge", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let out = run(&args, &[("GROUPCAST_NATS__CONNECT_TIMEOUT", "500ms")]);
        assert!(!out.status.success(), "{args:?} started");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    };
    edge_fails(&[], "groupcast edge needs NATS (nats.urls)");
    edge_fails(
        &["--nats", &url],
        "needs the membership service (membership.seeds)",
    );
    let with_membership = ["--nats", &url, "--membership", "127.0.0.1:1"];
    edge_fails(&with_membership, "membership.certs");
    // Both configured, NATS unreachable: the edge exits instead of serving.
    let mut both = with_membership.to_vec();
    both.extend_from_slice(&["--membership-certs", "/nonexistent"]);
    edge_fails(
        &both,
        "backbone: broker unavailable: cannot connect to NATS",
    );
}

#[test]
fn invalid_configuration_fails_at_start_naming_the_key() {
    let file = temp_file("[client]\nping_interval = 5\n");
    let out = run(
        &[
            "dev",
            "--listen",
            "127.0.0.1:0",
            "--config",
            file.to_str().unwrap(),
        ],
        &[],
    );
    let _ = std::fs::remove_file(&file);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ping_interval"), "{err}");

    let out = run(
        &["dev", "--listen", "127.0.0.1:0"],
        &[("GROUPCAST_CLIENT__PONG_TIMEOUT", "60s")],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("client.pong_timeout"), "{err}");

    let out = run(
        &["dev", "--listen", "127.0.0.1:0"],
        &[("GROUPCAST_NO_SUCH_KEY", "1")],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no_such_key"));
}

/// Kubernetes puts service-link variables for every Service of the
/// namespace into each pod; a Service named `groupcast` (or
/// `groupcast-membership`) gives `GROUPCAST_*` variables that are not
/// configuration. The binary starts and serves with them; a misspelled
/// key is still refused.
#[test]
fn kubernetes_service_link_variables_are_ignored() {
    let links = [
        ("GROUPCAST_PORT", "tcp://10.0.0.1:8000"),
        ("GROUPCAST_SERVICE_HOST", "10.0.0.1"),
        ("GROUPCAST_SERVICE_PORT", "8000"),
        ("GROUPCAST_SERVICE_PORT_HTTP", "8000"),
        ("GROUPCAST_PORT_8000_TCP", "tcp://10.0.0.1:8000"),
        ("GROUPCAST_PORT_8000_TCP_PROTO", "tcp"),
        ("GROUPCAST_PORT_8000_TCP_PORT", "8000"),
        ("GROUPCAST_PORT_8000_TCP_ADDR", "10.0.0.1"),
        ("GROUPCAST_MEMBERSHIP_PORT", "udp://10.0.0.2:7501"),
        ("GROUPCAST_MEMBERSHIP_SERVICE_HOST", "10.0.0.2"),
        ("GROUPCAST_MEMBERSHIP_PORT_7501_UDP_ADDR", "10.0.0.2"),
    ];
    let mut cmd = Command::new(BIN);
    cmd.args(["dev", "--listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in links {
        cmd.env(k, v);
    }
    let mut server = Running(cmd.spawn().unwrap());
    let stdout = server.0.stdout.take().unwrap();
    let serving = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|l| l.contains("client URL"));
    assert!(
        serving,
        "groupcast dev did not start with service links set"
    );
    drop(server);

    let mut env = links.to_vec();
    env.push(("GROUPCAST_CLIENT__PING_INTERVALL", "5s"));
    let out = run(&["dev", "--listen", "127.0.0.1:0"], &env);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ping_intervall"), "{err}");
}

fn jwt_claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("JWT has three parts");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[test]
fn token_mints_the_requested_claims() {
    let out = run(
        &[
            "token",
            "--user",
            "42",
            "--ttl",
            "2h",
            "--channel",
            "a",
            "--channel",
            "b",
            "--info",
            r#"{"name":"Ann"}"#,
        ],
        &[("GROUPCAST_CLIENT__TOKEN_HMAC_SECRET", "s3cret")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let c = jwt_claims(&token);
    assert_eq!(c["sub"], "42");
    assert_eq!(c["channels"], json!(["a", "b"]));
    assert_eq!(c["info"], json!({"name":"Ann"}));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let exp = c["exp"].as_i64().unwrap();
    assert!((exp - now - 7200).abs() < 60, "exp {exp} vs now {now}");
    // The token verifies with that secret.
    let cfg = groupcast_edge::config::ClientConfig {
        token_hmac_secret: "s3cret".into(),
        ..Default::default()
    };
    let v = groupcast_edge::auth::Verifier::from_config(&cfg).unwrap();
    assert_eq!(v.verify_connect(&token).unwrap().sub, "42");

    let out = run(&["token", "--user", "42"], &[]);
    assert!(!out.status.success(), "no secret configured");
    assert!(String::from_utf8_lossy(&out.stderr).contains("secret"));
    let out = run(
        &[
            "token",
            "--user",
            "1",
            "--token-hmac-secret",
            "s",
            "--info",
            "{not json",
        ],
        &[],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--info"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_prints_what_a_user_needs_serves_it_and_stops_on_sigterm() {
    // Any setting can come from the environment: keep 3 messages.
    let mut server = DevServer::start(
        BIN,
        &["--listen", "127.0.0.1:0", "--api-key", "the-key"],
        &[("GROUPCAST_CHANNEL__HISTORY_SIZE", "3")],
    );
    let field = |label: &str| server.field(label);
    let ws_url = field("client URL");
    let api_url = field("server API URL");
    assert_eq!(field("API key:"), "the-key");
    let token = field("connection token");
    assert!(!field("token HMAC secret").is_empty());
    let addr: std::net::SocketAddr = api_url
        .trim_start_matches("http://")
        .trim_end_matches("/api")
        .parse()
        .unwrap();

    // The printed token and URL work; the printed API key publishes.
    let (mut c, reply) = Client::connect(&ws_url, &token).await.unwrap();
    assert!(reply.get("connect").is_some(), "{reply}");
    c.command("subscribe", json!({"channel":"news"}))
        .await
        .unwrap();
    for n in 1..=5 {
        let body = json!({"channel":"news","data":{"n":n}}).to_string();
        let (status, _) = http_request(
            addr,
            "POST",
            "/api/publish",
            "X-API-Key: the-key\r\n",
            body.as_bytes(),
        )
        .await;
        assert_eq!(status, 200);
    }
    let p = c.publication(Duration::from_secs(5)).await.unwrap();
    assert_eq!(p["pub"]["data"], json!({"n":1}));
    let body = json!({"channel":"news","limit":-1}).to_string();
    let (_, history) = http_request(
        addr,
        "POST",
        "/api/history",
        "X-API-Key: the-key\r\n",
        body.as_bytes(),
    )
    .await;
    let history: Value = serde_json::from_slice(&history).unwrap();
    assert_eq!(
        history["result"]["publications"].as_array().unwrap().len(),
        3,
        "history_size from the environment"
    );
    let (status, _) = http_request(addr, "GET", "/readyz", "", b"").await;
    assert_eq!(status, 200);

    // SIGTERM: clients are told to reconnect (3001) and the process exits 0.
    let pid = server.pid().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let code = c.closed(Duration::from_secs(5)).await.unwrap();
    assert_eq!(code.map(|c| c.0), Some(3001));
    let status = tokio::task::spawn_blocking(move || server.wait(Duration::from_secs(10)));
    let status = status.await.unwrap().expect("exited");
    assert!(status.success(), "exit status {status}");
}

#[test]
fn membership_and_certs_flags_are_checked_with_clear_errors() {
    let dir = std::env::temp_dir().join(format!("groupcast-cli-certs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_str().unwrap();
    let fails = |args: &[&str], needle: &str| {
        let out = run(args, &[]);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    };
    assert!(run(&["certs", "init", "--dir", d], &[]).status.success());
    fails(&["certs", "init", "--dir", d], "--force");
    fails(
        &["certs", "issue", "../x", "--dir", d],
        "invalid certificate name",
    );
    assert!(run(&["certs", "issue", "node-1", "--dir", d], &[])
        .status
        .success());
    for f in [
        "ca.pem",
        "ca-key.pem",
        "admin.pem",
        "node-1.pem",
        "node-1-key.pem",
    ] {
        assert!(dir.join(f).exists(), "{f}");
    }

    // Every run gets a data directory inside the temp dir: the default
    // (`data/membership`) would land in the work tree.
    let data = dir.join("data");
    let data = data.to_str().unwrap();
    let m = |extra: &[&str]| {
        let mut a = vec![
            "membership",
            "--id",
            "1",
            "--listen",
            "127.0.0.1:0",
            "--certs",
            d,
            "--data",
            data,
        ];
        a.extend_from_slice(extra);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let check = |extra: &[&str], needle: &str| {
        let a = m(extra);
        fails(&a.iter().map(String::as_str).collect::<Vec<_>>(), needle);
    };
    check(&["--peers", "1:127.0.0.1:1"], "not ID=HOST:PORT");
    check(
        &["--peers", "1=127.0.0.1:1,1=127.0.0.1:2"],
        "names id 1 twice",
    );
    check(&["--peers", "2=127.0.0.1:1"], "must include this replica");
    check(&["--cert-name", "nobody"], "nobody.pem");
    fails(
        &["membership", "--listen", "127.0.0.1:0"],
        "--id is required",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `groupcast probe` (what `helm test` runs): passes against a serving
/// broker, and says what failed otherwise.
#[test]
fn probe_checks_subscribe_and_api_publish_end_to_end() {
    let port = groupcast_testkit::free_tcp_port();
    let listen = format!("127.0.0.1:{port}");
    let server = DevServer::start(
        BIN,
        &["--listen", &listen, "--api-key", "probe-key"],
        &[("GROUPCAST_CLIENT__TOKEN_HMAC_SECRET", "probe-secret")],
    );
    let url = format!("http://{listen}");
    let probe = |key: &str| {
        run(
            &["probe", "--url", &url, "--api-key", key, "--timeout", "10s"],
            &[("GROUPCAST_CLIENT__TOKEN_HMAC_SECRET", "probe-secret")],
        )
    };
    let ok = probe("probe-key");
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{out} {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(
        out.starts_with("ok: client ") && out.contains("received API publish #1"),
        "{out}"
    );

    let bad = probe("wrong-key");
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("API publish answered 401"), "{err}");

    drop(server);
    let down = probe("probe-key");
    assert!(!down.status.success());
    let err = String::from_utf8_lossy(&down.stderr);
    assert!(
        err.contains("probe of http://") && err.contains("WebSocket"),
        "{err}"
    );
}

/// `shutdown.delay` (what the Helm chart uses instead of a preStop sleep):
/// at SIGTERM `/readyz` turns 503 at once, but clients are still served and
/// new ones accepted until the delay ends; then the drain (3001) as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_delay_keeps_serving_while_not_ready_then_drains() {
    let port = groupcast_testkit::free_tcp_port();
    let listen = format!("127.0.0.1:{port}");
    let mut server = DevServer::start(
        BIN,
        &["--listen", &listen],
        &[("GROUPCAST_SHUTDOWN__DELAY", "10s")],
    );
    let addr: std::net::SocketAddr = listen.parse().unwrap();
    let ws = format!("ws://{listen}/connection/websocket");
    let (mut before, _) = Client::connect(&ws, "").await.unwrap();
    assert_eq!(http_request(addr, "GET", "/readyz", "", b"").await.0, 200);

    let pid = server.pid().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    // Not ready at once (well within the delay)...
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while http_request(addr, "GET", "/readyz", "", b"").await.0 != 503 {
        assert!(std::time::Instant::now() < deadline, "/readyz still 200");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ...but still serving: a new client connects and subscribes, the old
    // one still gets its answers and was not told to go (a close would
    // have come before the answer).
    let (mut during, reply) = Client::connect(&ws, "").await.unwrap();
    assert!(reply.get("connect").is_some(), "{reply}");
    let sub = during
        .command("subscribe", json!({"channel":"news"}))
        .await
        .unwrap();
    assert!(sub.get("error").is_none(), "{sub}");
    let r = before.command("ping", json!({})).await.unwrap();
    assert_eq!(r["ping"], json!({}), "still served during the delay: {r}");
    // Then the drain: both are told to reconnect elsewhere (3001).
    for c in [&mut before, &mut during] {
        let code = c.closed(Duration::from_secs(20)).await.unwrap();
        assert_eq!(code.map(|c| c.0), Some(3001));
    }
    let status = tokio::task::spawn_blocking(move || server.wait(Duration::from_secs(10)));
    let status = status.await.unwrap().expect("exited");
    assert!(status.success(), "exit status {status}");
}

/// Stopping must not depend on logging: with stdout and stderr gone (a
/// closed pipe, `groupcast dev | head`), SIGTERM still stops the server.
#[test]
fn sigterm_stops_the_server_when_its_output_is_gone() {
    let mut child = Running(
        Command::new(BIN)
            .args(["dev", "--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let banner_done = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|l| l.contains("metrics:"));
    assert!(banner_done);
    // Both pipes are closed from here on (the readers are dropped).
    drop(child.0.stderr.take());
    let pid = child.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        if child.0.try_wait().unwrap().is_some() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "groupcast dev still running 15 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `groupcast --version` names the release and the commit it was built from
/// (what an operator compares across a cluster during a rolling upgrade).
#[test]
fn version_names_the_release_and_the_commit() {
    let out = run(&["--version"], &[]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let rest = text
        .strip_prefix(&format!("groupcast {} (", env!("CARGO_PKG_VERSION")))
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("unexpected --version: {text:?}"));
    let commit = rest.strip_suffix("-dirty").unwrap_or(rest);
    // This test runs from a git checkout: a commit, not `unknown`.
    assert!(
        commit.len() == 12 && commit.chars().all(|c| c.is_ascii_hexdigit()),
        "not a commit: {text:?}"
    );
}
