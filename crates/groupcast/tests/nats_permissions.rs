//! Who may do what on the NATS backbone (issue 25, invariant 7: reaching NATS
//! is never enough to act as an edge or to read a private channel). The NATS
//! servers here run with the users and permissions of the local cluster,
//! `deploy/local/nats-auth.conf.tmpl` (the testkit's
//! `start_with_permissions` renders that same file), and real `groupcast
//! edge` processes connect as user `edge`:
//!
//! * without credentials, or with a wrong password, there is no connection;
//! * user `backend` reads its relay targets' events and the replies to its
//!   own requests (inbox prefix `_INBOX_backend`), sends commands
//!   (`gc.api`, `gc.api.<node>`) and answers the edges' requests, and
//!   nothing else: it cannot subscribe to channels (`gc.g`, `gc.h`), the
//!   node bus (`gc.n`), everything (`gc.>`) or the edges' inboxes, nor
//!   publish a hand-built publication, a node-bus request or a JetStream
//!   read of the history; each refusal is reported by the server, and
//!   nothing refused is delivered;
//! * the edges do all their work as `edge` (live fan-out across edges,
//!   history stored and read, recovery, node-bus actions, relay events and
//!   the backend's answers, the API over NATS) and the servers log no
//!   permission violation of theirs.
//!
//! Every wait is bounded; what must not arrive is checked behind a marker
//! sent after it on the same connection (NATS keeps one publisher's order).

use std::path::Path;
use std::time::Duration;

use async_nats::{Client as Nats, ConnectOptions, Event};
use futures_util::{FutureExt, SinkExt, StreamExt};
use groupcast_edge::auth::mint_hs256;
use groupcast_testkit::edge::{EdgeProcess, EDGE_CONFIG};
use groupcast_testkit::membership::MembershipCluster;
use groupcast_testkit::nats::{NatsCluster, NatsServer, NatsUsers};
use groupcast_testkit::raw::{frame, open};
use groupcast_testkit::{Client, API_KEY, SECRET};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_groupcast");
const T: Duration = Duration::from_secs(10);

/// A relay route whose events go to NATS targets `app.<room>`.
const ROUTES: &str = r#"
[[relay.routes]]
path = "/ws/app/{room}/"
target = "app.{room}"
"#;

/// A NATS connection as `user`, with the server's error reports (refused
/// subscriptions and publishes) on the side.
struct Conn {
    nats: Nats,
    errors: mpsc::UnboundedReceiver<String>,
}

async fn connect_as(url: &str, user: &str, password: &str, inbox_prefix: Option<&str>) -> Conn {
    let (tx, errors) = mpsc::unbounded_channel();
    let mut opts = ConnectOptions::with_user_and_password(user.into(), password.into())
        .request_timeout(Some(Duration::from_secs(2)))
        .event_callback(move |e| {
            let tx = tx.clone();
            async move {
                if let Event::ServerError(e) = e {
                    let _ = tx.send(e.to_string());
                }
            }
        });
    if let Some(p) = inbox_prefix {
        opts = opts.custom_inbox_prefix(p);
    }
    let nats = opts
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect as {user}: {e}"));
    Conn { nats, errors }
}

impl Conn {
    /// Waits (bounded) for the server's `Permissions Violation for
    /// {what} to "{subject}"` (`what`: `Subscription` or `Publish`).
    async fn refused(&mut self, what: &str, subject: &str) {
        let want = format!("permissions violation for {what} to \"{subject}\"").to_lowercase();
        let wait = async {
            while let Some(e) = self.errors.recv().await {
                if e.to_lowercase().contains(&want) {
                    return;
                }
            }
            panic!("connection closed before {want}");
        };
        tokio::time::timeout(T, wait)
            .await
            .unwrap_or_else(|_| panic!("NATS did not refuse: {what} to {subject:?}"));
    }

    /// No error reported so far (none queued).
    fn no_errors(&mut self) {
        let mut seen = Vec::new();
        while let Ok(e) = self.errors.try_recv() {
            seen.push(e);
        }
        assert!(seen.is_empty(), "NATS refused: {seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_credentials_there_is_no_connection() {
    let nats = NatsServer::start_with_permissions().await;
    let users = nats.users().expect("started with permissions").clone();
    let url = nats.url();

    let anonymous = ConnectOptions::new().connect(url.as_str()).await;
    let err = anonymous.expect_err("an anonymous connection is refused");
    assert!(
        err.to_string()
            .to_lowercase()
            .contains("authorization violation"),
        "anonymous: {err}"
    );
    for (user, password) in [
        (NatsUsers::EDGE, users.backend_password.as_str()),
        (NatsUsers::BACKEND, "guessed"),
        ("route", users.route_password.as_str()),
        ("admin", users.edge_password.as_str()),
    ] {
        let r = ConnectOptions::with_user_and_password(user.into(), password.into())
            .connect(url.as_str())
            .await;
        let err = r
            .err()
            .unwrap_or_else(|| panic!("user {user:?} with a wrong password is refused"));
        assert!(
            err.to_string()
                .to_lowercase()
                .contains("authorization violation"),
            "{user}: {err}"
        );
    }
    // The right passwords work (the refusals above are about them).
    for (user, password) in [
        (NatsUsers::EDGE, users.edge_password.as_str()),
        (NatsUsers::BACKEND, users.backend_password.as_str()),
    ] {
        let mut c = connect_as(&url, user, password, None).await;
        c.nats.flush().await.expect("flush");
        c.no_errors();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edges_work_and_a_backend_reaches_only_its_targets_and_the_commands() {
    let (cluster, m) = tokio::join!(
        NatsCluster::start_with_permissions(),
        MembershipCluster::start(Path::new(BIN), 1, &[])
    );
    let users = cluster.users().expect("started with permissions").clone();
    let urls = cluster.urls();
    let url = urls[0].clone();
    let edge_env = users.edge_env();
    let mut env: Vec<(&str, &str)> = edge_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.push(("GROUPCAST_CLIENT__COMMAND_RATE", "0"));
    env.push(("GROUPCAST_API__OVER_NATS", "true"));
    // As deploy/local and the chart run them: signing on too.
    env.push(("GROUPCAST_NATS__CLUSTER_SECRET", "a-cluster-secret"));
    env.push(("GROUPCAST_CHANNEL__HISTORY_REPLICAS", "3"));
    let config = format!("{EDGE_CONFIG}{}{ROUTES}", m.edge_section());
    let (a, b) = tokio::join!(
        EdgeProcess::start(Path::new(BIN), "edge-a", &urls, &config, &env),
        EdgeProcess::start(Path::new(BIN), "edge-b", &urls, &config, &env)
    );

    // ---- The edges, as `edge`: live fan-out across edges, history stored.
    let alice = mint_hs256(SECRET, &json!({"sub": "alice"}));
    let (mut x, _) = Client::connect(&a.ws_url(), &alice)
        .await
        .expect("connect x");
    let (mut y, _) = Client::connect(&b.ws_url(), "").await.expect("connect y");
    for c in [&mut x, &mut y] {
        let r = c
            .command("subscribe", json!({"channel": "secret"}))
            .await
            .unwrap();
        assert!(r["subscribe"].is_object(), "{r}");
    }
    let (status, r) = b
        .api("publish", json!({"channel": "secret", "data": {"n": 1}}))
        .await;
    assert_eq!(status, 200, "{r}");
    assert!(r["result"]["offset"].is_u64(), "stored in JetStream: {r}");
    let epoch = r["result"]["epoch"].as_str().unwrap().to_string();
    for c in [&mut x, &mut y] {
        let p = c.publication(T).await.expect("the publication");
        assert_eq!(p["pub"]["data"], json!({"n": 1}), "{p}");
    }
    // History read back through JetStream on the other edge.
    let (_, h) = a
        .api("history", json!({"channel": "secret", "limit": 10}))
        .await;
    assert_eq!(
        h["result"]["publications"][0]["data"],
        json!({"n": 1}),
        "{h}"
    );

    // ---- A backend, as `backend`, with its own inbox prefix.
    let mut backend = connect_as(
        &url,
        NatsUsers::BACKEND,
        &users.backend_password,
        Some(NatsUsers::BACKEND_INBOX_PREFIX),
    )
    .await;
    // An observer with the edges' rights, to send what the backend must not
    // get (and then a marker it must get).
    let mut observer = connect_as(&url, NatsUsers::EDGE, &users.edge_password, None).await;
    let mut events = backend.nats.subscribe("gc.relay.app.>").await.unwrap();
    // Refused subscriptions: the server says so, and they get nothing.
    let mut spies = Vec::new();
    for subject in ["gc.>", "gc.g.>", "gc.h.>", "gc.n.>", "_INBOX.>", "gc.api"] {
        spies.push((subject, backend.nats.subscribe(subject).await.unwrap()));
        backend.refused("Subscription", subject).await;
    }
    backend.nats.flush().await.unwrap();
    // (Subjects no edge serves: these messages must reach no one.)
    for subject in [
        "gc.g.spy.x",
        "gc.h.spy.x",
        "gc.n.spy",
        "_INBOX.spy.x",
        "gc.api",
    ] {
        observer
            .nats
            .publish(subject, "{\"stolen\":true}".into())
            .await
            .unwrap();
    }
    observer
        .nats
        .publish("gc.relay.app.marker", "{\"type\":\"marker\"}".into())
        .await
        .unwrap();
    observer.nats.flush().await.unwrap();
    let marker = tokio::time::timeout(T, events.next())
        .await
        .expect("the marker within 10 s")
        .expect("subscription open");
    assert_eq!(marker.subject.as_str(), "gc.relay.app.marker");
    for (subject, spy) in &mut spies {
        if let Some(Some(m)) = spy.next().now_or_never() {
            panic!("refused subscription {subject} got {:?}", m.subject);
        }
    }
    observer.no_errors();

    // Refused publishes: a hand-built publication (live and to be stored),
    // a node-bus action, JetStream reads of the history, relay events.
    let forged = json!({"data": {"n": 666}, "info": {"user": "alice", "client": "x"}});
    for subject in [
        "gc.g.~.secret",
        "gc.h.~.secret",
        "gc.n.edge-a",
        "gc.relay.app.other",
        "$JS.API.STREAM.MSG.GET.gc_h_~",
        "$JS.API.DIRECT.GET.gc_h_~",
    ] {
        backend
            .nats
            .publish(subject, forged.to_string().into())
            .await
            .unwrap();
        backend.refused("Publish", subject).await;
    }
    // Nor as a request: a direct get of the stored publication gets no answer.
    let read = backend
        .nats
        .request(
            "$JS.API.DIRECT.GET.gc_h_~",
            json!({"last_by_subj": "gc.h.~.secret"}).to_string().into(),
        )
        .await;
    assert!(read.is_err(), "a backend read the history: {read:?}");
    backend
        .refused("Publish", "$JS.API.DIRECT.GET.gc_h_~")
        .await;
    // The subscribers got none of it: their next publication is the next
    // real one.
    let (_, r) = a
        .api("publish", json!({"channel": "secret", "data": {"n": 2}}))
        .await;
    assert!(r["result"].is_object(), "{r}");
    for c in [&mut x, &mut y] {
        let p = c.publication(T).await.expect("the publication");
        assert_eq!(p["pub"]["data"], json!({"n": 2}), "nothing forged: {p}");
    }

    // ---- What a backend may do: its relay target's events (the join is a
    // request it answers), commands on gc.api with the answer in its own
    // inbox, commands on an edge's own subject.
    let mut ws = open(&format!("ws://{}/ws/app/lobby/", a.addr), None)
        .await
        .expect("relay route");
    let join = loop {
        let msg = tokio::time::timeout(T, events.next())
            .await
            .expect("the join within 10 s")
            .expect("subscription open");
        let e: Value = serde_json::from_slice(&msg.payload).expect("JSON event");
        if e["type"] == "join" {
            if let Some(reply) = msg.reply {
                backend.nats.publish(reply, "{}".into()).await.unwrap();
            }
            break e;
        }
    };
    assert_eq!(join["target"], "app.lobby", "{join}");
    let client_id = join["client"].as_str().unwrap().to_string();
    ws.send(Message::text("hi")).await.unwrap();
    let message = loop {
        let msg = tokio::time::timeout(T, events.next())
            .await
            .expect("the message within 10 s")
            .expect("subscription open");
        let e: Value = serde_json::from_slice(&msg.payload).expect("JSON event");
        if e["type"] == "message" {
            break e;
        }
    };
    assert_eq!(message["data"], "hi", "{message}");
    let cmd = json!({"method": "relay_send", "api_key": API_KEY,
        "params": {"client": client_id, "text": "hello"}});
    let answer = backend
        .nats
        .request("gc.api", cmd.to_string().into())
        .await
        .expect("an edge answers in the backend's inbox");
    assert!(
        answer
            .subject
            .as_str()
            .starts_with(NatsUsers::BACKEND_INBOX_PREFIX),
        "{:?}",
        answer.subject
    );
    let answer: Value = serde_json::from_slice(&answer.payload).unwrap();
    assert_eq!(answer, json!({"result": {}}), "relay_send over gc.api");
    assert_eq!(frame(&mut ws).await, Message::text("hello"));
    let own = join["commands"].as_str().expect("the edge's own subject");
    let cmd = json!({"method": "relay_send", "api_key": API_KEY,
        "params": {"client": client_id, "text": "again"}});
    backend
        .nats
        .publish(own.to_string(), cmd.to_string().into())
        .await
        .unwrap();
    assert_eq!(frame(&mut ws).await, Message::text("again"));
    backend.no_errors();

    // ---- A node-bus action (the API disconnect on the other edge reaches
    // x's edge over gc.n.<node>) and a recovery through JetStream.
    let (_, r) = b.api("disconnect", json!({"user": "alice"})).await;
    assert_eq!(
        r,
        json!({"result": {}}),
        "edge-a acknowledged over the node bus"
    );
    let closed = x.closed(T).await.expect("x closed");
    assert!(closed.is_some(), "x disconnected with a code: {closed:?}");
    let (mut z, _) = Client::connect(&b.ws_url(), "").await.expect("connect z");
    let r = z
        .command(
            "subscribe",
            json!({"channel": "secret", "recover": true, "offset": 0, "epoch": epoch}),
        )
        .await
        .unwrap();
    let recovered: Vec<Value> = r["subscribe"]["publications"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|p| p["data"].clone())
        .collect();
    assert_eq!(recovered, [json!({"n": 1}), json!({"n": 2})], "{r}");

    // ---- Not one permission violation by an edge (or the observer, which
    // has the edges' rights) on any server; the backend's are all there.
    let mut backend_refusals = 0;
    for s in &cluster.servers {
        let log = s.log();
        let edges: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("Violation") && l.contains("user:edge"))
            .collect();
        assert!(edges.is_empty(), "{}: edges refused: {edges:#?}", s.name);
        backend_refusals += log
            .lines()
            .filter(|l| l.contains("Violation") && l.contains("user:backend"))
            .count();
    }
    assert!(backend_refusals >= 13, "{backend_refusals} refusals logged");
}
