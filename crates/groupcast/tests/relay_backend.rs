//! Relay to a backend over NATS (seed 004): plain WebSocket connections on
//! `[[relay.routes]]`, two `groupcast edge` processes, a NATS server, the
//! membership service, and a backend written here against the documented
//! protocol (docs/backends.md): it subscribes to `gc.relay.<target>`
//! subjects and answers through the API over NATS (`gc.api`, and the
//! edge's own subject from the `join` event) and over HTTP.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use groupcast_testkit::edge::{EdgeProcess, EDGE_CONFIG};
use groupcast_testkit::membership::MembershipCluster;
use groupcast_testkit::nats::NatsServer;
use groupcast_testkit::raw::{closed, frame, open};
use groupcast_testkit::API_KEY;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

const BIN: &str = env!("CARGO_BIN_EXE_groupcast");
const T: Duration = Duration::from_secs(10);

const ROUTES: &str = r#"
[[relay.routes]]
path = "/ws/echo/{room}/"
target = "echo.{room}"
channels = ["plain:{room}"]
heartbeat_interval = "200ms"

[[relay.routes]]
path = "/ws/nobody/"
target = "nobody"
"#;

async fn backbone() -> (NatsServer, MembershipCluster) {
    tokio::join!(
        NatsServer::start(),
        MembershipCluster::start(Path::new(BIN), 1, &[])
    )
}

async fn edge(
    name: &str,
    nats: &NatsServer,
    m: &MembershipCluster,
    env: &[(&str, &str)],
) -> EdgeProcess {
    let config = format!("{EDGE_CONFIG}{}{ROUTES}", m.edge_section());
    // Backends answer through the API over NATS, which is off unless set.
    let mut all = vec![
        ("GROUPCAST_CLIENT__COMMAND_RATE", "0"),
        ("GROUPCAST_API__OVER_NATS", "true"),
    ];
    all.extend_from_slice(env);
    EdgeProcess::start(Path::new(BIN), name, &[nats.url()], &config, &all).await
}

fn route_url(e: &EdgeProcess, path: &str) -> String {
    format!("ws://{}{path}", e.addr)
}

/// A backend process: every event it gets on `subject`, in arrival order.
/// It answers `join`/`heartbeat` requests, and acts on text frames:
/// `echo:X` sends X back (API `relay_send` over NATS request-reply on
/// `gc.api`), `close` closes the connection with 4001 "bye" (on the edge's
/// own command subject, from its `join`).
struct Backend {
    events: Arc<Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    async fn start(nats: &NatsServer, subject: &str) -> Backend {
        let client = async_nats::connect(nats.url()).await.expect("nats");
        let mut sub = client.subscribe(subject.to_string()).await.unwrap();
        // The server holds the interest once a message this client sends
        // after the subscription comes back on it (a flush only empties
        // the socket: on a busy machine the server may read an edge's
        // first event before this subscription).
        let probe = match subject.strip_suffix('>') {
            Some(prefix) => format!("{prefix}probe"),
            None => subject.to_string(),
        };
        client.publish(probe.clone(), "{}".into()).await.unwrap();
        loop {
            let m = tokio::time::timeout(T, sub.next())
                .await
                .expect("the probe within 10 s")
                .expect("subscription open");
            if m.subject.as_str() == probe {
                break;
            }
        }
        let events = Arc::new(Mutex::new(Vec::new()));
        let ev = events.clone();
        let task = tokio::spawn(async move {
            let mut commands = std::collections::HashMap::<String, String>::new();
            while let Some(msg) = sub.next().await {
                let e: Value = serde_json::from_slice(&msg.payload).expect("event is JSON");
                if let Some(reply) = msg.reply.clone() {
                    client.publish(reply, "{}".into()).await.unwrap();
                }
                let c = e["client"].as_str().unwrap_or_default().to_string();
                if e["type"] == "join" {
                    if let Some(s) = e["commands"].as_str() {
                        commands.insert(c.clone(), s.to_string());
                    }
                }
                let text = e["data"].as_str().unwrap_or_default().to_string();
                ev.lock().unwrap().push(e);
                if let Some(x) = text.strip_prefix("echo:") {
                    let cmd = json!({"method": "relay_send", "api_key": API_KEY,
                        "params": {"client": c, "text": x}});
                    let r = client
                        .request("gc.api", cmd.to_string().into())
                        .await
                        .expect("an edge answers");
                    let r: Value = serde_json::from_slice(&r.payload).unwrap();
                    assert_eq!(r, json!({"result": {}}), "relay_send answer");
                } else if text == "close" {
                    // A last frame, then the close, back to back: the frame
                    // arrives before the close.
                    let subject = commands.get(&c).cloned().expect("join told the subject");
                    let last = json!({"method": "relay_send", "api_key": API_KEY,
                        "params": {"client": c, "text": "last words"}});
                    client
                        .publish(subject.clone(), last.to_string().into())
                        .await
                        .unwrap();
                    let cmd = json!({"method": "relay_close", "api_key": API_KEY,
                        "params": {"client": c, "code": 4001, "reason": "bye"}});
                    client
                        .publish(subject, cmd.to_string().into())
                        .await
                        .unwrap();
                }
            }
        });
        Backend { events, task }
    }

    fn of(&self, client: &str) -> Vec<Value> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e["client"] == client)
            .cloned()
            .collect()
    }

    /// Waits for an event matching `pred`; returns it.
    async fn wait(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let until = Instant::now() + T;
        loop {
            if let Some(e) = self.events.lock().unwrap().iter().find(|e| pred(e)) {
                return e.clone();
            }
            assert!(
                Instant::now() < until,
                "no {what} within {T:?}; events: {:?}",
                self.events.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_connections_reach_a_nats_backend_and_back_across_edges() {
    let (nats, m) = backbone().await;
    // Edge b asks for join and heartbeats: nothing listening means gone.
    let (a, b) = tokio::join!(
        // A small API body limit on a: over NATS too.
        edge("a", &nats, &m, &[("GROUPCAST_API__MAX_BODY_BYTES", "2000")]),
        edge(
            "b",
            &nats,
            &m,
            &[("GROUPCAST_RELAY__TARGET_GONE_ON_NO_RESPONDERS", "true")]
        )
    );
    let backend = Backend::start(&nats, "gc.relay.echo.>").await;

    // Join: client id, target, the path's parameters, the commands subject.
    let mut ws1 = open(&route_url(&a, "/ws/echo/lobby/"), None).await.unwrap();
    let join = backend
        .wait("join", |e| {
            e["type"] == "join" && e["target"] == "echo.lobby"
        })
        .await;
    let c1 = join["client"].as_str().unwrap().to_string();
    assert_eq!(join["seq"], 0, "{join}");
    assert_eq!(join["node"], "a", "{join}");
    assert_eq!(join["params"], json!({"room": "lobby"}), "{join}");
    assert_eq!(join["path"], "/ws/echo/lobby/", "{join}");
    assert!(
        join["commands"].as_str().unwrap().starts_with("gc.api."),
        "{join}"
    );

    // A text frame goes to the backend, its answer comes back as a frame.
    ws1.send(Message::text("echo:hello")).await.unwrap();
    assert_eq!(frame(&mut ws1).await, Message::text("hello"));
    // A binary frame arrives base64-encoded.
    ws1.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    let bin = backend
        .wait("binary message", |e| {
            e["frame"] == "binary" && e["client"] == c1
        })
        .await;
    assert_eq!(bin["b64data"], "AQID", "{bin}");
    // Heartbeats count the frames so far.
    let beat = backend
        .wait("heartbeat", |e| {
            e["type"] == "heartbeat" && e["client"] == c1 && e["messages"] == 2
        })
        .await;
    assert!(beat["uptime_ms"].as_u64().unwrap() >= 200, "{beat}");

    // The route's channel: an API publish on the other edge arrives raw.
    let (_, r) = b
        .api(
            "publish",
            json!({"channel": "plain:lobby", "data": {"x": 1}}),
        )
        .await;
    assert!(r["result"].is_object(), "{r}");
    assert_eq!(frame(&mut ws1).await, Message::text(r#"{"x":1}"#));
    // relay_send over HTTP on the other edge: forwarded to the holder.
    let (_, r) = b
        .api("relay_send", json!({"client": c1, "b64data": "AAE="}))
        .await;
    assert_eq!(r, json!({"result": {}}));
    assert_eq!(frame(&mut ws1).await, Message::binary(vec![0u8, 1]));
    // Bad commands: a clear error, nothing sent.
    let (_, r) = b
        .api(
            "relay_send",
            json!({"client": c1, "text": "x", "b64data": "AA=="}),
        )
        .await;
    assert_eq!(r["error"]["code"], 107, "text and b64data: {r}");
    let (_, r) = b
        .api("relay_close", json!({"client": c1, "code": 2000}))
        .await;
    assert_eq!(
        r["error"]["code"], 107,
        "code outside 1000, 3000..=4999: {r}"
    );
    let (_, r) = b
        .api("relay_transfer", json!({"client": c1, "target": "a.*"}))
        .await;
    assert_eq!(r["error"]["code"], 107, "wildcard target: {r}");
    let (_, r) = b
        .api(
            "relay_close",
            json!({"client": c1, "reason": "x".repeat(124)}),
        )
        .await;
    assert_eq!(r["error"]["code"], 107, "reason over 123 bytes: {r}");
    // A frame over client.max_message_size (64 KiB): 106, nothing sent.
    use base64::Engine as _;
    let big = base64::engine::general_purpose::STANDARD.encode(vec![7u8; 65_537]);
    let (_, r) = b
        .api("relay_send", json!({"client": c1, "b64data": big}))
        .await;
    assert_eq!(r["error"]["code"], 106, "frame over the message limit");
    // A command over api.max_body_bytes, over NATS: 106.
    let nc = async_nats::connect(nats.url()).await.unwrap();
    let cmd = json!({"method": "info", "api_key": API_KEY, "params": {"pad": "x".repeat(3000)}});
    let answer = nc
        .request(
            join["commands"].as_str().unwrap().to_string(),
            cmd.to_string().into(),
        )
        .await
        .unwrap();
    let r: Value = serde_json::from_slice(&answer.payload).unwrap();
    assert_eq!(r["error"]["code"], 106, "over api.max_body_bytes: {r}");
    // Without the API key, or with a wrong one, nothing is done: 101.
    for cmd in [
        json!({"method": "relay_close", "params": {"client": c1, "code": 4001}}),
        json!({"method": "relay_close", "api_key": "guess", "params": {"client": c1, "code": 4001}}),
    ] {
        for subject in [
            "gc.api".to_string(),
            join["commands"].as_str().unwrap().to_string(),
        ] {
            let answer = nc
                .request(subject.clone(), cmd.to_string().into())
                .await
                .unwrap();
            let r: Value = serde_json::from_slice(&answer.payload).unwrap();
            assert_eq!(r["error"]["code"], 101, "{subject} {cmd}: {r}");
        }
    }

    // A second connection, on edge b (which asks for its join: answered).
    let mut ws2 = open(&route_url(&b, "/ws/echo/lobby/"), None).await.unwrap();
    ws2.send(Message::text("echo:two")).await.unwrap();
    assert_eq!(frame(&mut ws2).await, Message::text("two"));

    // Transfer: leave on the old target, join on the new, seq goes on.
    let (_, r) = a
        .api(
            "relay_transfer",
            json!({"client": c1, "target": "echo.elsewhere"}),
        )
        .await;
    assert_eq!(r, json!({"result": {}}));
    let rejoin = backend
        .wait("join after transfer", |e| {
            e["type"] == "join" && e["client"] == c1 && e["target"] == "echo.elsewhere"
        })
        .await;
    let left = backend
        .wait("leave on transfer", |e| {
            e["type"] == "leave" && e["client"] == c1 && e["target"] == "echo.lobby"
        })
        .await;
    assert_eq!(left["reason"], "transferred", "{left}");
    assert_eq!(
        rejoin["seq"].as_u64().unwrap(),
        left["seq"].as_u64().unwrap() + 1,
        "{left} {rejoin}"
    );

    // The old target is declared gone: its connections close with 3015 on
    // every edge; the transferred one stays.
    let (_, r) = a
        .api("relay_target_gone", json!({"target": "echo.lobby"}))
        .await;
    assert_eq!(r, json!({"result": {}}));
    assert_eq!(closed(&mut ws2).await, (3015, "backend target gone".into()));
    ws1.send(Message::text("echo:still")).await.unwrap();
    assert_eq!(frame(&mut ws1).await, Message::text("still"));

    // The backend closes the connection on the edge's own subject; the
    // leave carries the code and reason.
    ws1.send(Message::text("close")).await.unwrap();
    assert_eq!(frame(&mut ws1).await, Message::text("last words"));
    assert_eq!(closed(&mut ws1).await, (4001, "bye".into()));
    let leave = backend
        .wait("leave", |e| {
            e["type"] == "leave" && e["client"] == c1 && e["code"] == 4001
        })
        .await;
    assert_eq!(leave["reason"], "bye", "{leave}");

    // Per connection, events are in order and numbered without gaps.
    let seqs: Vec<u64> = backend
        .of(&c1)
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>());

    // Nothing listens on `nobody`: edge b, which asks, closes with 3015;
    // edge a, which does not, keeps the connection.
    let mut ws3 = open(&route_url(&b, "/ws/nobody/"), None).await.unwrap();
    assert_eq!(closed(&mut ws3).await.0, 3015);
    let mut ws4 = open(&route_url(&a, "/ws/nobody/"), None).await.unwrap();
    ws4.send(Message::text("into the void")).await.unwrap();
    // The edge reads a connection's frames one at a time: the answer to a
    // ping sent after the frame comes once the frame was handled, and
    // nothing (no close) comes before it.
    ws4.send(Message::Ping(b"still there?".to_vec().into()))
        .await
        .unwrap();
    loop {
        match tokio::time::timeout(T, ws4.next()).await {
            Ok(Some(Ok(Message::Pong(p)))) if p.as_ref() == b"still there?" => break,
            // The server's own keepalive pings.
            Ok(Some(Ok(Message::Ping(_)))) => continue,
            other => panic!("edge a keeps it open: {other:?}"),
        }
    }

    // Origins: none configured on the route means same origin only.
    let same = format!("http://{}", a.addr);
    assert!(open(&route_url(&a, "/ws/echo/o/"), Some(&same))
        .await
        .is_ok());
    match open(&route_url(&a, "/ws/echo/o/"), Some("http://evil.example")).await {
        Err(WsError::Http(r)) => assert_eq!(r.status(), 403),
        other => panic!("foreign origin: {other:?}"),
    }
    // A bad token: 3500 with the reason.
    let mut bad = open(&route_url(&a, "/ws/echo/t/?token=garbage"), None)
        .await
        .unwrap();
    let (code, reason) = closed(&mut bad).await;
    assert_eq!(code, 3500);
    assert!(
        reason.starts_with("invalid token") && !reason.contains("invalid token: invalid token"),
        "{reason}"
    );
    // A parameter that could change the channel's meaning: no route.
    match open(&route_url(&a, "/ws/echo/%23bob/"), None).await {
        Err(WsError::Http(r)) => assert_eq!(r.status(), 404),
        other => panic!("'#' in a parameter: {other:?}"),
    }
    // A path no route serves.
    match open(&route_url(&a, "/ws/other/"), None).await {
        Err(WsError::Http(r)) => assert_eq!(r.status(), 404),
        other => panic!("unknown path: {other:?}"),
    }
    let m = a.metrics().await;
    assert!(
        m.contains(r#"groupcast_relay_backend_events_total{event="message",outcome="sent"}"#),
        "{m}"
    );
}

/// Many connections sending at once: each connection's events reach the
/// backend in the order sent, numbered without gaps, join first and leave
/// last; nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_events_keep_their_order_per_connection_under_load() {
    const CONNS: usize = 20;
    const MSGS: usize = 300;
    let (nats, m) = backbone().await;
    let a = edge("a", &nats, &m, &[]).await;
    let backend = Backend::start(&nats, "gc.relay.echo.>").await;
    let mut tasks = Vec::new();
    for i in 0..CONNS {
        let url = route_url(&a, &format!("/ws/echo/r{}/", i % 4));
        tasks.push(tokio::spawn(async move {
            let mut ws = open(&url, None).await.unwrap();
            for n in 0..MSGS {
                ws.send(Message::text(format!("{i}:{n}"))).await.unwrap();
            }
            ws.close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "done".into(),
            }))
            .await
            .unwrap();
            // Until the server's close answer.
            while let Some(Ok(_)) = ws.next().await {}
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let leaves = backend
            .events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "leave")
            .count();
        if leaves == CONNS {
            break;
        }
        assert!(Instant::now() < until, "{leaves} of {CONNS} leaves");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let events = backend.events.lock().unwrap().clone();
    let mut clients: Vec<String> = events
        .iter()
        .filter(|e| e["type"] == "join")
        .map(|e| e["client"].as_str().unwrap().to_string())
        .collect();
    clients.sort();
    clients.dedup();
    assert_eq!(clients.len(), CONNS);
    for c in clients {
        let mine: Vec<&Value> = events.iter().filter(|e| e["client"] == c).collect();
        // Every event of the connection, heartbeats included, numbered in
        // order without a gap.
        for (n, e) in mine.iter().enumerate() {
            assert_eq!(e["seq"], n as u64, "{e}");
        }
        // The route has heartbeat_interval = 200ms: a connection that lives
        // longer (a busy machine) also gets heartbeats, between the other
        // events. Each counts the frames before it; the rest is exactly
        // join, the frames in the order sent, and leave last.
        let mut frames_so_far = 0;
        let mut rest = Vec::new();
        for e in &mine {
            match e["type"].as_str() {
                Some("heartbeat") => assert_eq!(e["messages"], frames_so_far, "{e}"),
                Some("message") => {
                    frames_so_far += 1;
                    rest.push(*e);
                }
                _ => rest.push(*e),
            }
        }
        assert_eq!(rest.len(), MSGS + 2, "join, {MSGS} messages, leave");
        assert_eq!(mine[0]["type"], "join", "join first");
        assert_eq!(mine[mine.len() - 1]["type"], "leave", "leave last");
        assert_eq!(rest[0]["type"], "join");
        assert_eq!(rest[MSGS + 1]["type"], "leave");
        assert_eq!(rest[MSGS + 1]["code"], 1000, "the client's close code");
        assert_eq!(rest[MSGS + 1]["reason"], "done");
        let prefix = rest[1]["data"].as_str().unwrap().split(':').next().unwrap();
        for (n, e) in rest.iter().enumerate().take(MSGS + 1).skip(1) {
            assert_eq!(e["type"], "message", "{e}");
            assert_eq!(e["data"], format!("{prefix}:{}", n - 1), "{e}");
        }
    }
}
