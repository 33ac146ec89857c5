//! Event proxies against a real application backend: a Python HTTP server
//! written for Centrifugo's proxy format (`tests/backends/proxy_backend.py`),
//! and `groupcast dev` configured to ask it. Each proxy's result, error and
//! disconnect, the forwarded session cookie, and each way the backend can
//! fail (slow, 500, not JSON, down), with its code and its metric.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use groupcast_testkit::dev::DevServer;
use groupcast_testkit::{http_request, Client};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_groupcast");

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

/// Kills the child on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a backend, reads stdout until a line contains `ready`; the line,
/// and the process (its stdout drained in a thread from then on).
fn start(mut cmd: Command, ready: &str) -> (Running, String) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = Running(cmd.spawn().expect("start"));
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let ready = ready.to_string();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains(&ready) {
                let _ = tx.send(line);
            }
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("process did not start");
    (child, line)
}

/// `groupcast dev` on `listen` with the configuration file `config`.
fn dev(listen: &str, config: &Path) -> DevServer {
    let config = config.to_str().unwrap();
    DevServer::start(
        BIN,
        &["--listen", listen, "--api-key", "k", "--config", config],
        &[],
    )
}

fn python() -> PathBuf {
    let venv = repo_file(".tools/venv/bin/python");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

struct Setup {
    _backend: Running,
    backend_port: u16,
    _server: DevServer,
    addr: std::net::SocketAddr,
    config: PathBuf,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config);
    }
}

impl Setup {
    /// The backend, and `groupcast dev` with proxies to it (or to
    /// `backend_port` when given: a port nothing listens on).
    fn start(dead_backend: Option<u16>) -> Setup {
        let mut cmd = Command::new(python());
        cmd.arg(repo_file("tests/backends/proxy_backend.py"));
        let (backend, line) = start(cmd, "listening");
        let live_port: u16 = line.rsplit(' ').next().unwrap().parse().unwrap();
        let port = dead_backend.unwrap_or(live_port);
        let config = std::env::temp_dir().join(format!(
            "gc-backends-{}-{:?}.toml",
            std::process::id(),
            std::thread::current().id()
        ));
        let proxy = |name: &str, timeout: &str| {
            format!(
                "[[proxies]]\nname = \"{name}\"\nendpoint = \"http://127.0.0.1:{port}/{name}\"\n\
                 timeout = \"{timeout}\"\nhttp_headers = [\"Cookie\"]\n\n"
            )
        };
        let toml = format!(
            "[client]\nconnect_proxy = \"connect\"\nrpc_proxy = \"rpc\"\nsend_proxy = \"send\"\n\
             refresh_proxy = \"refresh\"\n\
             allowed_origins = [\"*\"]\n\n\
             [[namespaces]]\nname = \"rooms\"\nsubscribe_proxy = \"subscribe\"\n\
             publish_proxy = \"publish\"\nsub_refresh_proxy = \"sub_refresh\"\n\
             history_size = 10\nhistory_ttl = \"1m\"\nallow_history_for_subscriber = true\n\n\
             {}{}{}{}{}{}{}",
            proxy("connect", "500ms"),
            proxy("subscribe", "1s"),
            proxy("publish", "1s"),
            proxy("rpc", "1s"),
            proxy("send", "1s"),
            proxy("refresh", "1s"),
            proxy("sub_refresh", "1s"),
        );
        std::fs::write(&config, toml).unwrap();
        let listen = format!("127.0.0.1:{}", groupcast_testkit::free_tcp_port());
        let server = dev(&listen, &config);
        Setup {
            _backend: backend,
            backend_port: live_port,
            _server: server,
            addr: listen.parse().unwrap(),
            config,
        }
    }

    fn ws(&self) -> String {
        format!("ws://{}/connection/websocket", self.addr)
    }

    async fn client(&self, session: &str) -> (Client, Value) {
        let cookie = format!("theme=dark; session={session}");
        let mut c = Client::open_with_headers(&self.ws(), &[("Cookie", &cookie)])
            .await
            .unwrap();
        let reply = c.command("connect", json!({"name": "test"})).await;
        (c, reply.unwrap_or(Value::Null))
    }

    async fn backend_log(&self) -> Vec<Value> {
        let addr = format!("127.0.0.1:{}", self.backend_port).parse().unwrap();
        let (_, body) = http_request(addr, "GET", "/log", "", b"").await;
        serde_json::from_slice(&body).unwrap()
    }

    async fn metric(&self, series: &str) -> f64 {
        let (_, body) = http_request(self.addr, "GET", "/metrics", "", b"").await;
        String::from_utf8_lossy(&body)
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_proxy_decides_as_the_backend_says() {
    let s = Setup::start(None);

    // connect: the session cookie authenticates; user, info, data and the
    // server-side channels come from the backend.
    let (mut alice, reply) = s.client("alice").await;
    let c = &reply["connect"];
    assert_eq!(c["data"], json!({"welcome": "alice"}), "{reply}");
    assert!(c["subs"].get("news").is_some(), "{reply}");
    let log = s.backend_log().await;
    let first = &log[0];
    assert_eq!(first["path"], "/connect");
    assert_eq!(first["cookie"], "theme=dark; session=alice");
    assert_eq!(first["content_type"], "application/json");
    let body = &first["body"];
    assert_eq!(body["transport"], "websocket");
    assert_eq!(body["protocol"], "json");
    assert_eq!(body["name"], "test");
    assert_eq!(body["client"], c["client"]);

    // connect error and disconnect.
    let (_, reply) = s.client("").await;
    assert_eq!(
        reply["error"],
        json!({"code": 1001, "message": "login required"})
    );
    let (mut banned, reply) = s.client("banned").await;
    assert_eq!(reply, Value::Null, "no reply: closed");
    let closed = banned.closed(Duration::from_secs(5)).await.unwrap();
    assert_eq!(closed, Some((4403, "banned".to_string())));

    // subscribe: the backend decides per channel and adds info and data.
    let r = alice
        .command(
            "subscribe",
            json!({"channel": "rooms:42", "data": {"x": 1}}),
        )
        .await
        .unwrap();
    assert_eq!(r["subscribe"]["data"], json!({"topic": "rooms:42"}), "{r}");
    let (mut bob, _) = s.client("bob").await;
    let r = bob
        .command("subscribe", json!({"channel": "rooms:42"}))
        .await
        .unwrap();
    assert_eq!(r["error"], json!({"code": 1003, "message": "not a member"}));

    // publish: escaped by the backend before anyone sees it; refused;
    // skip_history.
    let r = alice
        .command(
            "publish",
            json!({"channel": "rooms:42", "data": {"text": "<script>x</script>"}}),
        )
        .await
        .unwrap();
    assert!(r.get("error").is_none(), "{r}");
    let p = alice.publication(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        p["pub"]["data"],
        json!({"text": "&lt;script&gt;x&lt;/script&gt;", "by": "alice"})
    );
    assert_eq!(p["pub"]["info"]["chan_info"], json!({"role": "member"}));
    let r = alice
        .command(
            "publish",
            json!({"channel": "rooms:42", "data": {"text": "forbidden"}}),
        )
        .await
        .unwrap();
    assert_eq!(r["error"], json!({"code": 1403, "message": "moderated"}));
    alice
        .command(
            "publish",
            json!({"channel": "rooms:42", "data": {"text": "quiet"}}),
        )
        .await
        .unwrap();
    let quiet = alice.publication(Duration::from_secs(5)).await.unwrap();
    assert_eq!(quiet["pub"]["data"]["text"], "quiet");
    let h = alice
        .command("history", json!({"channel": "rooms:42", "limit": -1}))
        .await
        .unwrap();
    let stored: Vec<&Value> = h["history"]["publications"]
        .as_array()
        .map(|a| a.iter().map(|p| &p["data"]["text"]).collect())
        .unwrap_or_default();
    assert_eq!(stored, vec!["&lt;script&gt;x&lt;/script&gt;"], "{h}");

    // rpc and send.
    let r = alice
        .command("rpc", json!({"method": "whoami", "data": {}}))
        .await
        .unwrap();
    assert_eq!(r["rpc"]["data"], json!({"user": "alice"}));
    let r = alice
        .command("rpc", json!({"method": "nope"}))
        .await
        .unwrap();
    assert_eq!(
        r["error"],
        json!({"code": 1404, "message": "unknown method"})
    );
    alice
        .send_text(r#"{"send":{"data":{"typing":true}}}"#)
        .await
        .unwrap();
    alice.command("ping", json!({})).await.unwrap();
    let sent: Vec<Value> = s
        .backend_log()
        .await
        .into_iter()
        .filter(|e| e["path"] == "/send")
        .collect();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0]["body"]["data"], json!({"typing": true}));
    assert_eq!(sent[0]["body"]["user"], "alice");

    assert!(
        s.metric("groupcast_proxy_requests_total{proxy=\"connect\",outcome=\"ok\"}")
            .await
            >= 2.0
    );
    assert_eq!(
        s.metric("groupcast_proxy_requests_total{proxy=\"connect\",outcome=\"disconnect\"}")
            .await,
        1.0
    );
}

/// The backend slow, failing, answering garbage or down: the client gets
/// 100 "internal" (the SDKs retry) within the proxy's timeout, never a
/// hang, and the edge counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_backend_gives_a_clear_error_and_is_counted() {
    let s = Setup::start(None);
    let internal = json!({"code": 100, "message": "internal server error", "temporary": true});
    for (session, outcome) in [
        ("slow", "timeout"),
        ("broken", "bad_status"),
        ("garbage", "bad_answer"),
        // Over the 1 MiB an answer may have (proxy::MAX_RESPONSE_BYTES).
        ("huge", "bad_answer"),
    ] {
        let started = std::time::Instant::now();
        let (_, reply) = s.client(session).await;
        assert_eq!(reply["error"], internal, "{session}: {reply}");
        // Given up at the proxy's timeout (500 ms), not waiting for the
        // backend: the slow one answers only after 4 s.
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{session}: {:?}",
            started.elapsed()
        );
        let series =
            format!("groupcast_proxy_requests_total{{proxy=\"connect\",outcome=\"{outcome}\"}}");
        let want = if session == "huge" { 2.0 } else { 1.0 };
        assert_eq!(s.metric(&series).await, want, "{series}");
    }
    // The edge goes on serving the others.
    let (_, reply) = s.client("alice").await;
    assert!(reply.get("connect").is_some(), "{reply}");

    let down = Setup::start(Some(groupcast_testkit::free_tcp_port()));
    let (_, reply) = down.client("alice").await;
    assert_eq!(reply["error"], internal, "{reply}");
    assert_eq!(
        down.metric("groupcast_proxy_requests_total{proxy=\"connect\",outcome=\"unreachable\"}")
            .await,
        1.0
    );
}

/// Expiring connections and subscriptions are refreshed by the backend,
/// server-side: the client is not told to refresh; the backend extends
/// (new info) or ends them (3005; unsubscribe 2501 for a subscription).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_refreshes_expiring_connections_and_subscriptions() {
    let s = Setup::start(None);
    let (mut brief, reply) = s.client("brief").await;
    let c = &reply["connect"];
    assert!(c.get("client").is_some(), "{reply}");
    assert!(c.get("expires").is_none(), "server-side refresh: {reply}");
    let code = brief.closed(Duration::from_secs(20)).await.unwrap();
    assert_eq!(code.map(|c| c.0), Some(3005));
    let client = c["client"].as_str().unwrap();
    let refreshes = s
        .backend_log()
        .await
        .into_iter()
        .filter(|e| e["path"] == "/refresh" && e["body"]["client"] == client)
        .count();
    assert_eq!(refreshes, 2, "extended once, then expired");

    let (mut alice, _) = s.client("alice").await;
    let r = alice
        .command("subscribe", json!({"channel": "rooms:brief"}))
        .await
        .unwrap();
    assert!(r["subscribe"].get("expires").is_none(), "{r}");
    // (Joins on `news`, her server-side channel, may come first.)
    let push = loop {
        let p = alice.push(Duration::from_secs(20)).await.unwrap();
        if p.get("unsubscribe").is_some() {
            break p;
        }
    };
    assert_eq!(push["channel"], "rooms:brief", "{push}");
    assert_eq!(push["unsubscribe"]["code"], 2501, "{push}");
    let asked = s
        .backend_log()
        .await
        .into_iter()
        .any(|e| e["path"] == "/sub_refresh" && e["body"]["channel"] == "rooms:brief");
    assert!(asked);
}

/// `groupcast dev` with `toml` as its configuration; its address.
fn dev_with(toml: &str) -> (DevServer, std::net::SocketAddr, PathBuf) {
    let config = std::env::temp_dir().join(format!(
        "gc-webhooks-{}-{:?}.toml",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::write(&config, toml).unwrap();
    let listen = format!("127.0.0.1:{}", groupcast_testkit::free_tcp_port());
    let server = dev(&listen, &config);
    (server, listen.parse().unwrap(), config)
}

async fn get_json(addr: std::net::SocketAddr, path: &str) -> Value {
    let (_, body) = http_request(addr, "GET", path, "", b"").await;
    serde_json::from_slice(&body).unwrap()
}

/// Webhooks arrive signed, once each, after the receiver failed the first
/// attempt (retried); a webhook that cannot keep up drops events, counted,
/// and never holds a client back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_arrive_signed_once_each_and_a_full_queue_drops() {
    let mut cmd = Command::new(python());
    cmd.arg(repo_file("tests/backends/webhook_receiver.py"))
        .args(["whsec-test", "1"]);
    let (_receiver, line) = start(cmd, "listening");
    let port: u16 = line.rsplit(' ').next().unwrap().parse().unwrap();
    let receiver: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (_server, addr, config) = dev_with(&format!(
        "[[webhooks]]\nurl = \"http://{receiver}/hooks\"\nsecret = \"whsec-test\"\n\
         batch_interval = \"50ms\"\n"
    ));
    let ws = format!("ws://{addr}/connection/websocket");
    let (mut c, reply) = Client::connect(&ws, "").await.unwrap();
    let client = reply["connect"]["client"].as_str().unwrap().to_string();
    c.command("subscribe", json!({"channel": "news"}))
        .await
        .unwrap();
    c.command("unsubscribe", json!({"channel": "news"}))
        .await
        .unwrap();
    c.close().await;

    let of_client = |events: &Value, client: &str| -> Vec<Value> {
        events
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["client"] == client)
            .cloned()
            .collect()
    };
    let of_channel = |events: &Value| -> Vec<(String, String)> {
        events
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["channel"] == "news" && e.get("client").is_none())
            .map(|e| {
                (
                    e["type"].as_str().unwrap().into(),
                    e["channel"].as_str().unwrap().into(),
                )
            })
            .collect()
    };
    // This client's four events and the channel's two; then a marker: a
    // second client that connects and leaves. Its events come after (one
    // queue, sent in order), so once its last one is in, a repeat of any
    // earlier event would be too.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let events = get_json(receiver, "/events").await;
        if of_client(&events, &client).len() >= 4 && of_channel(&events).len() >= 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{events}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (m, reply) = Client::connect(&ws, "").await.unwrap();
    let marker = reply["connect"]["client"].as_str().unwrap().to_string();
    m.close().await;
    let all = loop {
        let events = get_json(receiver, "/events").await;
        if of_client(&events, &marker)
            .iter()
            .any(|e| e["type"] == "client_disconnected")
        {
            break events;
        }
        assert!(std::time::Instant::now() < deadline, "{events}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let events = of_client(&all, &client);
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "client_connected",
            "member_added",
            "member_removed",
            "client_disconnected"
        ],
        "{events:?}"
    );
    assert_eq!(events[1]["channel"], "news");
    assert_eq!(
        events[3]["code"],
        Value::Null,
        "the client left: {}",
        events[3]
    );
    let ids: std::collections::HashSet<&str> =
        events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 4, "once each");
    // The channel was occupied by its first subscriber and vacated by its
    // last: once each.
    assert_eq!(
        of_channel(&all),
        [
            ("channel_occupied".into(), "news".into()),
            ("channel_vacated".into(), "news".into())
        ]
    );
    let stats = get_json(receiver, "/stats").await;
    assert_eq!(stats["failed_on_purpose"], 1, "{stats}");
    assert_eq!(stats["bad_signatures"], 0, "{stats}");
    let (_, metrics) = http_request(addr, "GET", "/metrics", "", b"").await;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains("groupcast_webhook_requests_total{outcome=\"retried\"} 1"),
        "{metrics}"
    );
    let _ = std::fs::remove_file(config);

    // A receiver that is down, one event in flight and a queue of one:
    // connections go on, events beyond the queue are dropped and counted.
    let dead = groupcast_testkit::free_tcp_port();
    let (_server, addr, config) = dev_with(&format!(
        "[[webhooks]]\nurl = \"http://127.0.0.1:{dead}/hooks\"\nsecret = \"s\"\nqueue_max = 1\nbatch_max = 1\n\
         events = [\"client_connected\"]\n"
    ));
    let ws = format!("ws://{addr}/connection/websocket");
    for _ in 0..6 {
        let (c, reply) = Client::connect(&ws, "").await.unwrap();
        assert!(reply.get("connect").is_some());
        c.close().await;
    }
    let (_, metrics) = http_request(addr, "GET", "/metrics", "", b"").await;
    let metrics = String::from_utf8_lossy(&metrics);
    let dropped: f64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "groupcast_webhook_events_total{event=\"client_connected\",outcome=\"dropped\"} ",
            )?
            .parse()
            .ok()
        })
        .unwrap_or(0.0);
    assert!(dropped >= 1.0, "{metrics}");

    assert!(
        !metrics.contains("event=\"client_disconnected\""),
        "only the events asked for"
    );
    let _ = std::fs::remove_file(config);

    // With no retries, a POST the receiver does not take is given up at
    // once: counted as failed, and the connections go on.
    let (_server, addr, config) = dev_with(&format!(
        "[[webhooks]]\nurl = \"http://127.0.0.1:{dead}/hooks\"\nsecret = \"s\"\nmax_retries = 0\n"
    ));
    let ws = format!("ws://{addr}/connection/websocket");
    let (c, reply) = Client::connect(&ws, "").await.unwrap();
    assert!(reply.get("connect").is_some());
    c.close().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, metrics) = http_request(addr, "GET", "/metrics", "", b"").await;
        let metrics = String::from_utf8_lossy(&metrics).into_owned();
        if metrics.contains("groupcast_webhook_requests_total{outcome=\"failed\"}") {
            assert!(!metrics.contains("outcome=\"retried\""), "{metrics}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = std::fs::remove_file(config);
}

/// Seed 002's three endpoints, unchanged for the browser, on relay routes
/// whose backend is an HTTP target (`tests/backends/chat_backend.py`,
/// written like the seed's Django consumers): the connect proxy reads the
/// `?token=`, binds the connection to the target and subscribes it to its
/// room, personal or status channel; every frame reaches the backend as a
/// signed event; the backend answers by publishing to the channels
/// (escaped, validated) and by `relay_send` to one client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_002_endpoints_run_on_relay_routes_with_an_http_backend() {
    use groupcast_testkit::raw::{closed, json as next_json, open};
    use tokio_tungstenite::tungstenite::Message;

    let listen = format!("127.0.0.1:{}", groupcast_testkit::free_tcp_port());
    let mut cmd = Command::new(python());
    cmd.arg(repo_file("tests/backends/chat_backend.py"))
        .arg(format!("http://{listen}"))
        .arg("k")
        .arg("s3cret");
    let (_backend, line) = start(cmd, "listening");
    let port: u16 = line.rsplit(' ').next().unwrap().parse().unwrap();
    let config = std::env::temp_dir().join(format!("gc-seed002-{}.toml", std::process::id()));
    let toml = format!(
        r#"
[[namespaces]]
name = "chat"
[[namespaces]]
name = "notify"

[[proxies]]
name = "django_connect"
endpoint = "http://127.0.0.1:{port}/connect"

[[relay.routes]]
path = "/ws/chat/{{room}}/"
connect_proxy = "django_connect"
[[relay.routes]]
path = "/ws/notifications/"
connect_proxy = "django_connect"
[[relay.routes]]
path = "/ws/status/"
connect_proxy = "django_connect"
allowed_origins = ["https://app.example.com"]

[[relay.http_targets]]
name = "django"
url = "http://127.0.0.1:{port}/events"
secret = "s3cret"
"#
    );
    std::fs::write(&config, toml).unwrap();
    let server = DevServer::start(
        BIN,
        &[
            "--listen",
            &listen,
            "--api-key",
            "k",
            "--config",
            config.to_str().unwrap(),
        ],
        &[("GROUPCAST_CLIENT__MAX_CONNECTIONS_PER_USER", "3")],
    );
    let _ = std::fs::remove_file(&config);
    let ws = |path: &str| format!("ws://{listen}{path}");

    // Chat: two users in a room; a message is escaped by the backend and
    // reaches both as the seed's `chat_message`.
    let mut alice = open(&ws("/ws/chat/lobby/?token=tok-alice"), None)
        .await
        .unwrap();
    let mut bob = open(&ws("/ws/chat/lobby/?token=tok-bob"), None)
        .await
        .unwrap();
    // Both are bound and subscribed once the backend saw their joins.
    let stats = || async {
        let addr = format!("127.0.0.1:{port}").parse().unwrap();
        let (_, body) = http_request(addr, "GET", "/stats", "", b"").await;
        serde_json::from_slice::<Value>(&body).unwrap()
    };
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while stats().await["types"]["join"] != 2 {
        assert!(std::time::Instant::now() < until, "{}", stats().await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let send = |m: Value| Message::text(m.to_string());
    use futures_util::SinkExt;
    alice
        .send(send(
            json!({"type": "chat_message", "message": "<b>hi</b>", "channel_id": 123}),
        ))
        .await
        .unwrap();
    for c in [&mut alice, &mut bob] {
        let m = next_json(c).await;
        assert_eq!(m["type"], "chat_message", "{m}");
        assert_eq!(m["message"]["content"], "&lt;b&gt;hi&lt;/b&gt;", "{m}");
        assert_eq!(m["message"]["author"]["username"], "alice", "{m}");
        assert_eq!(m["message"]["channel_id"], 123, "{m}");
    }
    // Typing reaches the others, not the typist (exclude_client).
    alice
        .send(send(
            json!({"type": "typing", "channel_id": 123, "is_typing": true}),
        ))
        .await
        .unwrap();
    let t = next_json(&mut bob).await;
    assert_eq!(
        t,
        json!({"type": "typing", "user": "alice", "is_typing": true})
    );
    // Edits are validated by the backend: bob may not edit alice's message.
    bob.send(send(
        json!({"type": "edit_message", "message_id": 1, "new_content": "x"}),
    ))
    .await
    .unwrap();
    assert_eq!(
        next_json(&mut bob).await,
        json!({"type": "error", "message": "not your message"})
    );
    alice
        .send(send(
            json!({"type": "edit_message", "message_id": 1, "new_content": "hey"}),
        ))
        .await
        .unwrap();
    for c in [&mut alice, &mut bob] {
        let m = next_json(c).await;
        assert_eq!(m["type"], "edit_message", "{m}");
        assert_eq!(m["new_content"], "hey", "{m}");
    }
    // Not JSON: an error to the sender only.
    bob.send(Message::text("{oops")).await.unwrap();
    assert_eq!(
        next_json(&mut bob).await,
        json!({"type": "error", "message": "invalid JSON"})
    );

    // Notifications: the personal channel; the application publishes.
    let mut notes = open(&ws("/ws/notifications/?token=tok-bob"), None)
        .await
        .unwrap();
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while stats().await["types"]["join"] != 3 {
        assert!(std::time::Instant::now() < until, "{}", stats().await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let note = json!({"type": "notification", "notification": {"id": 789, "title": "New Task"}});
    let addr = listen.parse().unwrap();
    let (status, _) = http_request(
        addr,
        "POST",
        "/api/publish",
        "X-API-Key: k\r\n",
        json!({"channel": "notify:#bob", "data": note})
            .to_string()
            .as_bytes(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(next_json(&mut notes).await, note);
    notes
        .send(send(json!({"type": "mark_read", "notification_id": 789})))
        .await
        .unwrap();
    assert_eq!(
        next_json(&mut notes).await,
        json!({"type": "marked_read", "notification_id": 789})
    );

    // Status: its route allows one origin only; a status update reaches
    // every status watcher as `user_status`.
    use tokio_tungstenite::tungstenite::Error as WsError;
    match open(
        &ws("/ws/status/?token=tok-bob"),
        Some("https://evil.example"),
    )
    .await
    {
        Err(WsError::Http(r)) => assert_eq!(r.status(), 403),
        other => panic!("foreign origin: {other:?}"),
    }
    let app = Some("https://app.example.com");
    let mut watcher = open(&ws("/ws/status/?token=tok-bob"), app).await.unwrap();
    let mut carol = open(&ws("/ws/status/?token=tok-carol"), app).await.unwrap();
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while stats().await["types"]["join"] != 5 {
        assert!(std::time::Instant::now() < until, "{}", stats().await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // client.max_connections_per_user (3 here) holds on relay routes: bob's
    // fourth connection is closed with 3504.
    let mut fourth = open(&ws("/ws/status/?token=tok-bob"), app).await.unwrap();
    assert_eq!(closed(&mut fourth).await.0, 3504);
    // A transfer to a target this edge cannot reach (no NATS here, no HTTP
    // target by that name) is refused, not ignored.
    let (status, body) = http_request(
        addr,
        "POST",
        "/api/relay_transfer",
        "X-API-Key: k\r\n",
        json!({"client": "anyone", "target": "elsewhere"})
            .to_string()
            .as_bytes(),
    )
    .await;
    assert_eq!(status, 200);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"]["code"], 108, "{body}");
    carol
        .send(send(json!({"type": "status_update", "status": "away"})))
        .await
        .unwrap();
    let s = next_json(&mut watcher).await;
    assert_eq!(s["type"], "user_status", "{s}");
    assert_eq!(s["user_id"], "carol", "{s}");
    assert_eq!(s["status"], "away", "{s}");

    // No token: the connect proxy's error closes with 3507 and its message.
    let mut anon = open(&ws("/ws/chat/lobby/"), None).await.unwrap();
    let (code, reason) = closed(&mut anon).await;
    assert_eq!(code, 3507);
    assert_eq!(reason, "login required (1001)");

    // Every batch was signed; nothing was refused.
    let st = stats().await;
    assert_eq!(st["bad_signatures"], 0, "{st}");
    drop((alice, bob, notes, watcher, carol));
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while stats().await["types"]["leave"] != 5 {
        assert!(std::time::Instant::now() < until, "{}", stats().await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(server);
}

/// In a cluster (two edges, NATS, the membership service), each channel
/// occupied/vacated webhook is sent once, not once per edge; a user's status
/// (`user_status`) counts their connections on every edge and keeps the
/// last-seen time; `client.user_status_channel` gets at most one
/// publication per online/offline change, and always the latest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_cluster_channel_webhooks_and_user_status_come_once() {
    use groupcast_testkit::edge::{EdgeProcess, EDGE_CONFIG};
    use groupcast_testkit::membership::MembershipCluster;
    use groupcast_testkit::nats::NatsServer;
    use groupcast_testkit::SECRET;

    let mut cmd = Command::new(python());
    cmd.arg(repo_file("tests/backends/webhook_receiver.py"))
        .args(["whsec-cluster"]);
    let (_receiver, line) = start(cmd, "listening");
    let port: u16 = line.rsplit(' ').next().unwrap().parse().unwrap();
    let receiver: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (nats, m) = tokio::join!(
        NatsServer::start(),
        MembershipCluster::start(Path::new(BIN), 1, &[])
    );
    let config = format!(
        "{EDGE_CONFIG}{}\n[[webhooks]]\nurl = \"http://{receiver}/hooks\"\nsecret = \"whsec-cluster\"\n\
         batch_interval = \"20ms\"\nevents = [\"channel_occupied\", \"channel_vacated\"]\n",
        m.edge_section()
    );
    // The status channel is in namespace `plain` (no history, no presence).
    let env = [("GROUPCAST_CLIENT__USER_STATUS_CHANNEL", "plain:status")];
    let urls = [nats.url()];
    let (a, b) = tokio::join!(
        EdgeProcess::start(Path::new(BIN), "a", &urls, &config, &env),
        EdgeProcess::start(Path::new(BIN), "b", &urls, &config, &env)
    );
    let token = |user: &str| {
        groupcast_edge::auth::mint_hs256(
            SECRET,
            &json!({"sub": user, "exp": groupcast_edge::auth::now_unix() + 3600}),
        )
    };
    // A watcher of the status channel, anonymous (not a status change).
    let (mut watcher, _) = Client::connect(&a.ws_url(), "").await.unwrap();
    let r = watcher
        .command("subscribe", json!({"channel": "plain:status"}))
        .await
        .unwrap();
    assert!(r["subscribe"].is_object(), "{r}");

    // Ann connects on both edges and subscribes to one channel on each.
    let (mut ann_a, _) = Client::connect(&a.ws_url(), &token("ann")).await.unwrap();
    let (mut ann_b, _) = Client::connect(&b.ws_url(), &token("ann")).await.unwrap();
    for c in [&mut ann_a, &mut ann_b] {
        let r = c
            .command("subscribe", json!({"channel": "plain:room"}))
            .await
            .unwrap();
        assert!(r["subscribe"].is_object(), "{r}");
    }
    let status = || async {
        let (_, r) = b
            .api("user_status", json!({"users": ["ann", "nobody"]}))
            .await;
        r
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let online = loop {
        let r = status().await;
        if r["result"]["statuses"][0]["connections"] == 2 {
            break r;
        }
        assert!(std::time::Instant::now() < deadline, "{r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let s = &online["result"]["statuses"];
    assert_eq!(s[0]["online"], true, "{online}");
    let connected_at = s[0]["last_seen"].as_u64().unwrap();
    assert!(connected_at > 1_700_000_000, "{online}");
    assert_eq!(
        s[1],
        json!({"user": "nobody", "online": false, "connections": 0, "last_seen": 0})
    );
    let (_, r) = a
        .api("user_status", json!({"users": vec!["x"; 1001]}))
        .await;
    assert_eq!(r["error"]["code"], 106, "over 1000 users: {r}");

    // Both leave: offline, last seen kept.
    ann_a.close().await;
    ann_b.close().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = status().await;
        if r["result"]["statuses"][0]["online"] == false {
            assert!(r["result"]["statuses"][0]["last_seen"].as_u64().unwrap() >= connected_at);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The watcher sees ann's status publications after the markers below
    // (read there). Each edge publishes its share in order, but a change
    // still waiting on an edge is replaced by the user's newer one (only
    // the latest is published, docs/backends.md), so whether `online` was
    // published depends on how fast that edge was; `offline`, the latest,
    // always is.

    // A marker on each edge: a user who connects, subscribes to a channel
    // of their own and, once its occupied webhook came (a change undone
    // within one membership batch is no change), leaves. Each edge
    // announces its cluster events in commit order, and its webhooks and
    // publications go out in order, so once both markers' vacated came,
    // anything more about ann or plain:room would have come first.
    let mut markers = Vec::new();
    for (e, user) in [(&a, "mark-a"), (&b, "mark-b")] {
        let (mut c, _) = Client::connect(&e.ws_url(), &token(user)).await.unwrap();
        let r = c
            .command("subscribe", json!({"channel": format!("plain:{user}")}))
            .await
            .unwrap();
        assert!(r["subscribe"].is_object(), "{r}");
        markers.push(c);
    }
    let seen = |events: &Value, channel: &str, kind: &str| {
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["channel"] == channel && e["type"] == kind)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let events = get_json(receiver, "/events").await;
        if seen(&events, "plain:mark-a", "channel_occupied")
            && seen(&events, "plain:mark-b", "channel_occupied")
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{events}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for c in markers {
        c.close().await;
    }

    // One occupied and one vacated for the channel, though both edges had
    // subscribers; nothing more comes.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    // Sent by the edge that caused each, so in either order: `seq` orders.
    let room = |events: &Value| -> Vec<String> {
        let mut mine: Vec<(u64, String)> = events
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["channel"] == "plain:room")
            .map(|e| {
                (
                    e["seq"].as_u64().unwrap(),
                    e["type"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        mine.sort();
        mine.into_iter().map(|(_, t)| t).collect()
    };
    let events = loop {
        let events = get_json(receiver, "/events").await;
        if seen(&events, "plain:mark-a", "channel_vacated")
            && seen(&events, "plain:mark-b", "channel_vacated")
        {
            break events;
        }
        assert!(std::time::Instant::now() < deadline, "{events}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        room(&events),
        ["channel_occupied", "channel_vacated"],
        "{events}"
    );
    // Ann's status publications, up to both markers' offline: once each at
    // most, in `seq` order `online` (unless replaced) then `offline`, the
    // latest; nothing more about ann. (The two edges that caused them
    // publish each, so they may arrive in either order: `seq` orders them.)
    let mut statuses = Vec::new();
    let mut offline = Vec::new();
    while offline.len() < 2 {
        let p = watcher
            .publication(Duration::from_secs(20))
            .await
            .unwrap_or_else(|e| panic!("status publications ({e:?}), so far ann's {statuses:?}"));
        let d = &p["pub"]["data"];
        assert_eq!(d["type"], "user_status", "{p}");
        match d["user"].as_str().unwrap() {
            "ann" => statuses.push((
                d["seq"].as_u64().unwrap(),
                d["status"].as_str().unwrap().to_string(),
            )),
            user if d["status"] == "offline" => offline.push(user.to_string()),
            _ => {}
        }
    }
    offline.sort();
    assert_eq!(offline, ["mark-a", "mark-b"]);
    statuses.sort();
    let order: Vec<&str> = statuses.iter().map(|(_, s)| s.as_str()).collect();
    assert!(
        order == ["online", "offline"] || order == ["offline"],
        "ann's status publications: {statuses:?}"
    );
}

/// An HTTP relay target that does not keep up: its queue (`queue_max`) is
/// full, the connection waits up to the target's `timeout` for room, then
/// closes with 3004 — events are never dropped for a full queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_route_waits_for_a_full_http_target_queue_then_closes_with_3004() {
    use futures_util::SinkExt;
    use groupcast_testkit::raw::{closed, open};
    use tokio_tungstenite::tungstenite::Message;

    let dead = groupcast_testkit::free_tcp_port();
    let (_server, addr, config) = dev_with(&format!(
        "[[relay.routes]]\npath = \"/ws/slow/\"\ntarget = \"slow\"\n\n\
         [[relay.http_targets]]\nname = \"slow\"\nurl = \"http://127.0.0.1:{dead}/events\"\n\
         secret = \"s\"\nqueue_max = 1\nbatch_max = 1\ntimeout = \"200ms\"\n"
    ));
    let mut ws = open(&format!("ws://{addr}/ws/slow/"), None).await.unwrap();
    // The join is being retried; one event fits the queue; the next waits.
    for i in 0..3 {
        if ws.send(Message::text(format!("frame {i}"))).await.is_err() {
            break;
        }
    }
    let (code, _) = closed(&mut ws).await;
    assert_eq!(code, 3004);
    let (_, metrics) = http_request(addr, "GET", "/metrics", "", b"").await;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains(
            r#"groupcast_relay_backend_events_total{event="message",outcome="failed"} 1"#
        ),
        "{metrics}"
    );
    let _ = std::fs::remove_file(config);
}
