//! The queues a client can fill on the way to the application's backend,
//! each bounded with a share per client (docs/backends.md, "Queues and
//! their bounds"), and the signatures of what leaves them:
//!
//! * an HTTP relay target's queue (events and bytes): a connection that
//!   holds more than its share of a full queue is closed with 3013 and its
//!   queued events dropped when another connection needs the room, so one
//!   anonymous client cannot cut everyone else off a target whose backend
//!   does not answer (issue 25, item 4);
//! * a webhook's queue: a client that floods it loses its own events, not
//!   the other clients';
//! * the signature covers the purpose (`relay` or `webhook`): a batch
//!   signed for one is refused by the other, even with the same secret.
//!
//! The backend here is an HTTP server in the test that records every POST
//! and answers only once released, as a backend that has stopped
//! answering. Every wait is bounded and waits for a positive signal.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use futures_util::{SinkExt, StreamExt};
use groupcast_edge::config::{HttpTargetConfig, RouteConfig, WebhookConfig};
use groupcast_testkit::raw::Ws;
use groupcast_testkit::TestServer;
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

/// Every bounded wait below.
const WAIT: Duration = Duration::from_secs(10);

/// One POST as the backend got it.
#[derive(Clone, Debug)]
struct Post {
    timestamp: String,
    signature: String,
    body: String,
}

#[derive(Clone)]
struct Shared {
    posts: Arc<Mutex<Vec<Post>>>,
    released: watch::Receiver<bool>,
}

/// An HTTP backend that records every POST at once and answers it (200)
/// only after [`Backend::release`].
struct Backend {
    url: String,
    posts: Arc<Mutex<Vec<Post>>>,
    release: watch::Sender<bool>,
}

async fn take(State(s): State<Shared>, headers: HeaderMap, body: String) -> &'static str {
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    s.posts.lock().push(Post {
        timestamp: header("X-Groupcast-Timestamp"),
        signature: header("X-Groupcast-Signature"),
        body,
    });
    let mut released = s.released.clone();
    let _ = released.wait_for(|r| *r).await;
    "{}"
}

impl Backend {
    async fn start() -> Backend {
        let (release, released) = watch::channel(false);
        let posts = Arc::new(Mutex::new(Vec::new()));
        let app = axum::Router::new()
            .route("/events", axum::routing::post(take))
            .with_state(Shared {
                posts: posts.clone(),
                released,
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/events", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Backend {
            url,
            posts,
            release,
        }
    }

    /// From now on every POST, waiting or new, is answered 200.
    fn release(&self) {
        let _ = self.release.send(true);
    }

    fn posts(&self) -> Vec<Post> {
        self.posts.lock().clone()
    }

    /// Every event of every POST so far, in arrival order.
    fn events(&self) -> Vec<Value> {
        self.posts()
            .iter()
            .flat_map(|p| {
                let v: Value = serde_json::from_str(&p.body).expect("a JSON batch");
                v["events"].as_array().expect("events").clone()
            })
            .collect()
    }

    /// Waits (bounded) until an event matches `want`; all events then.
    async fn wait_event(&self, what: &str, want: impl Fn(&Value) -> bool) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let events = self.events();
            if events.iter().any(&want) {
                return events;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not at the backend within {WAIT:?}; it got {} events",
                events.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// `sha256=<hex HMAC-SHA256(secret, message)>`, as a receiver computes it.
fn hmac_hex(secret: &str, message: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(message.as_bytes());
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

/// Waits (bounded) until `series` is at least `n`.
async fn metric_reaches(s: &TestServer, series: &str, n: f64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let v = s.metric(series).await;
        if v >= n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} is {v}, not {n}, after {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads `ws` until the server's close frame (bounded): code and reason.
async fn close_frame(ws: &mut futures_util::stream::SplitStream<Ws>) -> (u16, String) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let next = tokio::time::timeout_at(deadline, ws.next())
            .await
            .unwrap_or_else(|_| panic!("no close frame within {WAIT:?}"));
        match next {
            Some(Ok(Message::Close(Some(f)))) => return (u16::from(f.code), f.reason.to_string()),
            Some(Ok(Message::Close(None))) => return (1005, String::new()),
            Some(Ok(_)) => {}
            other => panic!("the connection ended without a close frame: {other:?}"),
        }
    }
}

/// A route `/ws/q/` bound to the HTTP target `q` at `url`. Its queue
/// holds 45 events and the default 16 MiB (about 43 of the offender's
/// events below); one event per POST, so what the unanswered POST holds is
/// known; the default `timeout` (5 s), for the POST and for a connection
/// waiting for room.
fn relay_config(url: &str) -> groupcast_edge::Config {
    let mut config = TestServer::dev_config();
    config.relay.routes = vec![RouteConfig {
        path: "/ws/q/".into(),
        target: "q".into(),
        ..Default::default()
    }];
    config.relay.http_targets = vec![HttpTargetConfig {
        name: "q".into(),
        url: url.into(),
        secret: "shared-secret".into(),
        queue_max: 45,
        batch_max: 1,
        ..Default::default()
    }];
    config
}

/// Issue 25, item 4: frames of `\x01` become events six times larger
/// (JSON escaping). One anonymous client sending them to a target whose
/// backend does not answer used to fill the whole queue, and a user
/// connecting afterwards waited for room, then was closed (3004). Now the
/// offender is closed with 3013 and its queued events dropped, the
/// newcomer's events are queued at once and reach the backend when it
/// answers, and both are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_filling_an_http_target_queue_is_closed_and_a_newcomer_gets_through() {
    let backend = Backend::start().await;
    let s = TestServer::start_with(relay_config(&backend.url)).await;
    let url = format!("ws://{}/ws/q/", s.addr);

    // The offender: 120 frames of 65,000 bytes of \x01, each an event of
    // about 390 KB: more than the queue holds in events or in bytes.
    let (offender, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let (mut offender_tx, mut offender_rx) = offender.split();
    let frame = "\u{1}".repeat(65_000);
    let flood = tokio::spawn(async move {
        for _ in 0..120 {
            if offender_tx
                .send(Message::text(frame.clone()))
                .await
                .is_err()
            {
                break;
            }
        }
        offender_tx
    });
    // The first POST (the join) is at the backend, unanswered; the queue
    // fills up behind it.
    backend
        .wait_event("the offender's join", |e| e["type"] == "join")
        .await;
    let sent = r#"groupcast_relay_backend_events_total{event="message",outcome="sent"}"#;
    metric_reaches(&s, sent, 40.0).await;

    // A well-behaved user connects afterwards, says hello, and goes on
    // talking (a frame every 20 ms) until the offender is closed: once the
    // offender holds the whole queue, the newcomer's next event takes its
    // room.
    let (newcomer, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let (mut newcomer_tx, mut newcomer_rx) = newcomer.split();
    newcomer_tx.send(Message::text("hello")).await.unwrap();
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let talk = tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_millis(20));
        let mut n = 0;
        loop {
            tokio::select! {
                _ = &mut stopped => return (newcomer_tx, n),
                _ = every.tick() => {
                    newcomer_tx.send(Message::text(format!("tick {n}"))).await.unwrap();
                    n += 1;
                }
            }
        }
    });

    // Its join is queued: the offender does not hold all the room.
    let joins = r#"groupcast_relay_backend_events_total{event="join",outcome="sent"}"#;
    metric_reaches(&s, joins, 2.0).await;
    // The offender is closed, with 3013 and why.
    let (code, reason) = close_frame(&mut offender_rx).await;
    assert_eq!(code, 3013, "{reason}");
    assert!(reason.contains("share"), "{reason}");
    let _ = stop.send(());
    let (mut newcomer_tx, ticks) = talk.await.unwrap();

    // The backend answers again: every event of the newcomer arrives, in
    // order, none missing; its connection is still open.
    backend.release();
    newcomer_tx.send(Message::text("still here")).await.unwrap();
    let events = backend
        .wait_event("the newcomer's last frame", |e| e["data"] == "still here")
        .await;
    let hello = events.iter().find(|e| e["data"] == "hello").unwrap();
    let newcomer_client = hello["client"].as_str().unwrap().to_string();
    let mine: Vec<&Value> = events
        .iter()
        .filter(|e| e["client"] == newcomer_client.as_str())
        .collect();
    let mut want = vec![json!(null), json!("hello")];
    want.extend((0..ticks).map(|n| json!(format!("tick {n}"))));
    want.push(json!("still here"));
    let got: Vec<Value> = mine.iter().map(|e| e["data"].clone()).collect();
    assert_eq!(got, want, "the newcomer's events, in order, none dropped");
    assert_eq!(mine[0]["type"], "join");
    for (i, e) in mine.iter().enumerate() {
        assert_eq!(e["seq"], i as u64, "{e}");
    }
    // The offender's leave says why it was closed; the events it had
    // queued were dropped, so its `seq` has a gap before the leave.
    let events = backend
        .wait_event("the offender's leave", |e| e["type"] == "leave")
        .await;
    let leave = events.iter().find(|e| e["type"] == "leave").unwrap();
    assert_eq!(leave["code"], 3013, "{leave}");
    let offender_seqs: Vec<u64> = events
        .iter()
        .filter(|e| e["client"] == leave["client"])
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert!(
        offender_seqs.len() < 122,
        "queued events were dropped: {offender_seqs:?}"
    );

    // Counted: the closure, the dropped events, the disconnect code.
    let evicted = r#"groupcast_relay_http_evictions_total{target="q"}"#;
    assert_eq!(s.metric(evicted).await, 1.0);
    let dropped = r#"groupcast_relay_backend_events_total{event="message",outcome="dropped"}"#;
    assert!(s.metric(dropped).await >= 1.0);
    let closed = r#"groupcast_disconnects_total{code="3013"}"#;
    assert_eq!(s.metric(closed).await, 1.0);

    // The newcomer was never closed: its socket still answers.
    newcomer_tx.send(Message::Ping("p".into())).await.unwrap();
    let pong = tokio::time::timeout(WAIT, newcomer_rx.next())
        .await
        .expect("an answer within 10 s");
    assert!(
        matches!(pong, Some(Ok(Message::Pong(_)))),
        "the newcomer is open: {pong:?}"
    );
    flood.abort();
}

/// A client that makes many webhook events (subscribe, unsubscribe: one
/// `member_added` and one `member_removed` each) while the receiver does
/// not answer fills the webhook's queue; another client's
/// `client_connected`, coming afterwards, still takes a place (the
/// flooder's newest event gives it up) and reaches the receiver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_flooding_a_webhook_queue_loses_its_own_events_not_the_others() {
    let receiver = Backend::start().await;
    let mut config = TestServer::dev_config();
    config.webhooks = vec![WebhookConfig {
        url: receiver.url.clone(),
        secret: "whsec".into(),
        queue_max: 20,
        batch_max: 1,
        timeout: Duration::from_secs(30),
        ..Default::default()
    }];
    let s = TestServer::start_with(config).await;

    let mut flooder = s.client("flooder").await;
    receiver
        .wait_event("the flooder's client_connected", |e| {
            e["type"] == "client_connected"
        })
        .await;
    for _ in 0..30 {
        let r = flooder
            .command("subscribe", json!({"channel": "lobby"}))
            .await
            .unwrap();
        assert!(r.get("subscribe").is_some(), "{r}");
        let r = flooder
            .command("unsubscribe", json!({"channel": "lobby"}))
            .await
            .unwrap();
        assert!(r.get("error").is_none(), "{r}");
    }
    // The queue is full: the flooder's events beyond it were dropped.
    let dropped = r#"groupcast_webhook_events_total{event="member_removed",outcome="dropped"}"#;
    metric_reaches(&s, dropped, 1.0).await;

    let other = s.client("bystander").await;
    receiver.release();
    let events = receiver
        .wait_event("the bystander's client_connected", |e| {
            e["type"] == "client_connected" && e["user"] == "bystander"
        })
        .await;
    // The flooder's first events went before it.
    assert_eq!(events[0]["user"], "flooder", "{:?}", events[0]);
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "member_added" && e["user"] == "flooder"),
        "{events:?}"
    );
    drop((flooder, other));
}

/// The signed string names the purpose: `relay.<timestamp>.<body>` for an
/// HTTP relay target, `webhook.<timestamp>.<body>` for a webhook. With the
/// same secret, neither verifies as the other, nor as the old
/// `<timestamp>.<body>`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_cover_the_purpose() {
    let backend = Backend::start().await;
    backend.release();
    let mut config = relay_config(&backend.url);
    config.webhooks = vec![WebhookConfig {
        url: backend.url.clone(),
        secret: "shared-secret".into(),
        events: vec!["client_connected".into()],
        ..Default::default()
    }];
    let s = TestServer::start_with(config).await;
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws/q/", s.addr))
        .await
        .unwrap();
    backend
        .wait_event("the relay join", |e| e["type"] == "join")
        .await;
    backend
        .wait_event("the webhook", |e| e["type"] == "client_connected")
        .await;
    let posts = backend.posts();
    assert!(posts.len() >= 2, "{posts:?}");
    for p in &posts {
        let purpose = if p.body.contains("\"client_connected\"") {
            "webhook"
        } else {
            "relay"
        };
        let other = if purpose == "relay" {
            "webhook"
        } else {
            "relay"
        };
        let signed = |prefix: &str| {
            hmac_hex(
                "shared-secret",
                &format!("{prefix}{}.{}", p.timestamp, p.body),
            )
        };
        assert_eq!(
            p.signature,
            signed(&format!("{purpose}.")),
            "{purpose}: {p:?}"
        );
        assert_ne!(p.signature, signed(&format!("{other}.")));
        assert_ne!(p.signature, signed(""));
        let age = groupcast_edge::auth::now_unix() - p.timestamp.parse::<i64>().unwrap();
        assert!((0..60).contains(&age), "a current timestamp: {p:?}");
    }
    drop(ws);
}

/// A reference receiver (`tests/backends/*.py`), killed on drop.
struct Receiver(std::process::Child, std::net::SocketAddr);

impl Receiver {
    fn start(script: &str, args: &[&str]) -> Receiver {
        use std::io::BufRead;
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let venv = root.join(".tools/venv/bin/python");
        let python = if venv.exists() {
            venv
        } else {
            "python3".into()
        };
        let mut child = std::process::Command::new(python)
            .arg(root.join("tests/backends").join(script))
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start the receiver");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line.trim().rsplit(' ').next().unwrap().parse().unwrap();
        Receiver(child, format!("127.0.0.1:{port}").parse().unwrap())
    }

    /// POSTs `body` to `path` signed with `secret` as `<prefix><ts>.<body>`
    /// at `ts`: the HTTP status.
    async fn post(&self, path: &str, secret: &str, prefix: &str, ts: i64, body: &str) -> u16 {
        let signature = hmac_hex(secret, &format!("{prefix}{ts}.{body}"));
        let headers = format!(
            "Content-Type: application/json\r\nX-Groupcast-Timestamp: {ts}\r\n\
             X-Groupcast-Signature: {signature}\r\n"
        );
        groupcast_testkit::http_request(self.1, "POST", path, &headers, body.as_bytes())
            .await
            .0
    }

    async fn stats(&self) -> Value {
        let (_, body) = groupcast_testkit::http_request(self.1, "GET", "/stats", "", b"").await;
        serde_json::from_slice(&body).unwrap()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The reference receivers verify as docs/backends.md says: the purpose
/// they expect (`webhook` for webhook_receiver.py, `relay` for
/// chat_backend.py's events), and a timestamp within 5 minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_receivers_refuse_the_other_purpose_and_old_timestamps() {
    let now = groupcast_edge::auth::now_unix();
    let hooks = Receiver::start("webhook_receiver.py", &["sec"]);
    let batch = r#"{"events":[{"type":"client_connected","id":"1"}]}"#;
    assert_eq!(hooks.post("/", "sec", "webhook.", now, batch).await, 200);
    assert_eq!(hooks.post("/", "sec", "relay.", now, batch).await, 401);
    assert_eq!(
        hooks.post("/", "sec", "", now, batch).await,
        401,
        "the old format"
    );
    assert_eq!(
        hooks.post("/", "sec", "webhook.", now - 301, batch).await,
        401
    );
    assert_eq!(
        // 320, not 301: `now` is whole seconds, and the receiver's clock
        // runs on while the posts are made.
        hooks.post("/", "sec", "webhook.", now + 320, batch).await,
        401
    );
    let stats = hooks.stats().await;
    assert_eq!(stats["bad_signatures"], 2, "{stats}");
    assert_eq!(stats["stale_timestamps"], 2, "{stats}");

    let chat = Receiver::start("chat_backend.py", &["http://127.0.0.1:1", "k", "sec"]);
    let batch = r#"{"events":[]}"#;
    assert_eq!(chat.post("/events", "sec", "relay.", now, batch).await, 200);
    assert_eq!(
        chat.post("/events", "sec", "webhook.", now, batch).await,
        401
    );
    assert_eq!(
        chat.post("/events", "sec", "relay.", now - 600, batch)
            .await,
        401
    );
    let stats = chat.stats().await;
    assert_eq!(stats["bad_signatures"], 1, "{stats}");
    assert_eq!(stats["stale_timestamps"], 1, "{stats}");
}
