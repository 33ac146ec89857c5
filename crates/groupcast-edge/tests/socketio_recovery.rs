//! Socket.IO connection-state recovery on one edge, in Engine.IO's own words (raw HTTP
//! long-polling): the pid of the CONNECT answer, the offset as each event's last argument, a
//! CONNECT with both getting the same socket back with what it missed; forged or foreign
//! tokens getting a new socket. And a poll that a load balancer retries (the same `t`) getting
//! the answer its first attempt lost; a socket in its rooms' presence. Across edges:
//! crates/groupcast/tests/socketio_recovery.rs.

use std::time::Duration;

use groupcast_edge::auth::mint_hs256;
use groupcast_testkit::{TestServer, SECRET};
use serde_json::{json, Value};

const BASE: &str = "/socket.io/?EIO=4&transport=polling";

fn recovering() -> groupcast_edge::Config {
    let mut c = TestServer::dev_config();
    c.socketio.enabled = true;
    c.socketio.namespaces[0].recovery = true;
    c.channel.history_size = 100;
    c.channel.history_ttl = Duration::from_secs(300);
    c.channel.allow_recovery = true;
    c
}

async fn handshake(server: &TestServer) -> String {
    let (status, body) = server.http_raw("GET", BASE, "", b"").await;
    let body = String::from_utf8(body).unwrap();
    assert_eq!(status, 200, "{body}");
    let open: Value = serde_json::from_str(body.strip_prefix('0').unwrap()).unwrap();
    open["sid"].as_str().unwrap().to_string()
}

async fn post(server: &TestServer, sid: &str, body: &str) {
    let path = format!("{BASE}&sid={sid}");
    let (status, answer) = server.http_raw("POST", &path, "", body.as_bytes()).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
}

async fn poll_t(server: &TestServer, sid: &str, t: &str) -> (u16, String) {
    let path = format!("{BASE}&sid={sid}&t={t}");
    let (status, body) = server.http_raw("GET", &path, "", b"").await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The packets of the next poll (records split).
async fn packets(server: &TestServer, sid: &str) -> Vec<String> {
    let t = rand_t();
    let (status, body) = poll_t(server, sid, &t).await;
    assert_eq!(status, 200, "{body}");
    body.split('\u{1e}').map(String::from).collect()
}

fn rand_t() -> String {
    format!("{:x}", rand::random::<u64>())
}

/// A session connected to `/` with `auth`: its sid, the CONNECT answer, and the events
/// that came with it.
async fn connect_with_events(server: &TestServer, auth: Value) -> (String, Value, Vec<u64>) {
    let sid = handshake(server).await;
    post(server, &sid, &format!("40{auth}")).await;
    let p = packets(server, &sid).await;
    let answer = p[0].strip_prefix("40").unwrap_or_else(|| panic!("{p:?}"));
    let rest = events(&p[1..]).into_iter().map(|e| e.0).collect();
    (sid, serde_json::from_str(answer).unwrap(), rest)
}

async fn connect(server: &TestServer, auth: Value) -> (String, Value) {
    let (sid, answer, _) = connect_with_events(server, auth).await;
    (sid, answer)
}

/// The `n` and the offset of each event in `packets`.
fn events(packets: &[String]) -> Vec<(u64, String)> {
    packets
        .iter()
        .filter_map(|p| p.strip_prefix("42"))
        .map(|e| {
            let v: Value = serde_json::from_str(e).unwrap();
            assert_eq!(v[0], "message", "{v}");
            let offset = v[2].as_str().unwrap_or_else(|| panic!("an offset: {v}"));
            (v[1]["n"].as_u64().unwrap(), offset.to_string())
        })
        .collect()
}

/// Events until `n` of them came.
async fn next_events(server: &TestServer, sid: &str, n: usize) -> Vec<(u64, String)> {
    let mut got = Vec::new();
    while got.len() < n {
        got.extend(events(&packets(server, sid).await));
    }
    got
}

async fn publish(server: &TestServer, channel: &str, n: u64) {
    let (status, r) = server
        .api("publish", json!({"channel": channel, "data": {"n": n}}))
        .await;
    assert!(status == 200 && r.get("error").is_none(), "{r}");
}

fn token(user: &str, channels: &[&str]) -> String {
    mint_hs256(SECRET, &json!({"sub": user, "channels": channels}))
}

#[tokio::test]
async fn a_socket_gets_its_id_rooms_and_missed_events_back_with_its_pid_and_offset() {
    let server = TestServer::start_with(recovering()).await;
    let auth = json!({"token": token("u1", &["r1", "r2"])});
    let (sid, answer) = connect(&server, auth.clone()).await;
    let (id, pid) = (answer["sid"].clone(), answer["pid"].clone());
    assert!(
        pid.is_string(),
        "a pid when the namespace recovers: {answer}"
    );

    publish(&server, "r1", 1).await;
    let got = next_events(&server, &sid, 1).await;
    assert_eq!(got[0].0, 1);
    let offset = got[0].1.clone();
    // The transport closes; while the client is away, both rooms get publications.
    post(&server, &sid, "1").await;
    for n in 2..=4 {
        publish(&server, if n % 2 == 0 { "r2" } else { "r1" }, n).await;
    }

    let mut back = auth.clone();
    back["pid"] = pid.clone();
    back["offset"] = json!(offset);
    let (sid2, answer, mut missed) = connect_with_events(&server, back).await;
    assert_ne!(sid2, sid, "a new Engine.IO session");
    assert_eq!(
        (answer["sid"].clone(), answer["pid"].clone()),
        (id.clone(), pid.clone()),
        "the same socket id and pid (socket.recovered on the client)"
    );
    let more = next_events(&server, &sid2, 3 - missed.len()).await;
    missed.extend(more.iter().map(|e| e.0));
    missed.sort();
    assert_eq!(missed, [2, 3, 4], "each missed event once");
    // Both rooms are live again.
    publish(&server, "r2", 5).await;
    publish(&server, "r1", 6).await;
    let live: Vec<u64> = next_events(&server, &sid2, 2)
        .await
        .iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(live, [5, 6]);
    assert_eq!(
        server
            .metric("groupcast_socketio_recoveries_total{outcome=\"recovered\"}")
            .await,
        1.0
    );

    // No event since the CONNECT: the pid alone says where the rooms stood.
    let auth = json!({"token": token("u2", &["r3"])});
    let (sid, answer) = connect(&server, auth.clone()).await;
    post(&server, &sid, "1").await;
    publish(&server, "r3", 7).await;
    let mut back = auth;
    back["pid"] = answer["pid"].clone();
    let (sid, again, mut missed) = connect_with_events(&server, back).await;
    assert_eq!(again["sid"], answer["sid"]);
    if missed.is_empty() {
        missed.push(next_events(&server, &sid, 1).await[0].0);
    }
    assert_eq!(missed, [7]);
}

#[tokio::test]
async fn a_socket_whose_missed_events_left_history_is_not_recovered() {
    let mut c = recovering();
    c.channel.history_size = 2;
    let server = TestServer::start_with(c).await;
    let auth = json!({"token": token("u1", &["r1"])});
    let (sid, answer) = connect(&server, auth.clone()).await;
    post(&server, &sid, "1").await;
    // Three publications while away: the first falls out of a history of 2.
    for n in 1..=3 {
        publish(&server, "r1", n).await;
    }
    let mut back = auth;
    back["pid"] = answer["pid"].clone();
    let (_, again) = connect(&server, back).await;
    assert_ne!(again["sid"], answer["sid"], "a new socket: {again}");
    assert_ne!(again["pid"], answer["pid"]);
    assert_eq!(
        server
            .metric("groupcast_socketio_recoveries_total{outcome=\"not_recovered\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_forged_or_foreign_pid_or_offset_gets_a_new_socket() {
    let server = TestServer::start_with(recovering()).await;
    let auth = json!({"token": token("u1", &["r1"])});
    let (sid_a, a) = connect(&server, auth.clone()).await;
    let (sid_b, _) = connect(&server, json!({"token": token("u1", &["r2"])})).await;
    publish(&server, "r2", 1).await;
    let b_offset = next_events(&server, &sid_b, 1).await[0].1.clone();
    publish(&server, "r1", 2).await;
    let a_offset = next_events(&server, &sid_a, 1).await[0].1.clone();

    let pid = a["pid"].as_str().unwrap();
    let (body, tag) = pid.split_once('.').unwrap();
    let cases = [
        ("bad_pid", json!("not-a-pid"), json!(a_offset)),
        // Another body under the same tag.
        ("bad_pid", json!(format!("{body}x.{tag}")), json!(a_offset)),
        // An offset is not a pid.
        ("bad_pid", json!(a_offset), json!(a_offset)),
        // Another socket's offset (its rooms are not this socket's).
        ("bad_offset", a["pid"].clone(), json!(b_offset)),
        ("bad_offset", a["pid"].clone(), json!("garbage")),
    ];
    for (outcome, pid, offset) in cases {
        let mut forged = auth.clone();
        forged["pid"] = pid.clone();
        forged["offset"] = offset;
        let (_, answer) = connect(&server, forged).await;
        assert_ne!(answer["sid"], a["sid"], "{outcome}: {pid}: not restored");
        assert_ne!(answer["pid"], a["pid"], "{outcome}: {pid}: a new pid");
        assert!(answer["pid"].is_string(), "{answer}");
    }
    assert_eq!(
        server
            .metric("groupcast_socketio_recoveries_total{outcome=\"bad_pid\"}")
            .await,
        3.0
    );
    assert_eq!(
        server
            .metric("groupcast_socketio_recoveries_total{outcome=\"bad_offset\"}")
            .await,
        2.0
    );
    // The real pid and offset still restore the socket.
    let mut real = auth;
    real["pid"] = a["pid"].clone();
    real["offset"] = json!(a_offset);
    let (_, answer) = connect(&server, real).await;
    assert_eq!(answer["sid"], a["sid"]);
}

#[tokio::test]
async fn a_poll_retried_with_the_same_t_gets_the_answer_its_first_attempt_lost() {
    let server = TestServer::start_with(recovering()).await;
    let (sid, _) = connect(&server, json!({"token": token("u1", &["r1"])})).await;
    publish(&server, "r1", 1).await;
    let (status, first) = poll_t(&server, &sid, "t1").await;
    assert_eq!(status, 200);
    assert!(first.contains("\"n\":1"), "{first}");
    // The balancer sends the same request again (its answer was lost on the way).
    assert_eq!(poll_t(&server, &sid, "t1").await, (200, first.clone()));
    // The client's next request: what came since.
    publish(&server, "r1", 2).await;
    let (_, next) = poll_t(&server, &sid, "t2").await;
    assert!(
        next.contains("\"n\":2") && !next.contains("\"n\":1"),
        "{next}"
    );

    // Two attempts of a poll that waits, in either order (the dead edge's forward may reach
    // the holder after the retry): both get the same answer, so whichever still has its asker
    // delivers it. The session goes on.
    let attempt = |t: &'static str| {
        let (addr, sid) = (server.addr, sid.clone());
        tokio::spawn(async move {
            let path = format!("{BASE}&sid={sid}&t={t}");
            groupcast_testkit::http_request(addr, "GET", &path, "", b"").await
        })
    };
    let first = attempt("t3");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = attempt("t3");
    tokio::time::sleep(Duration::from_millis(300)).await;
    publish(&server, "r1", 3).await;
    for (which, attempt) in [("first", first), ("second", second)] {
        let (status, body) = tokio::time::timeout(Duration::from_secs(10), attempt)
            .await
            .unwrap_or_else(|_| panic!("the {which} attempt answers"))
            .unwrap();
        let body = String::from_utf8_lossy(&body);
        assert_eq!(status, 200, "{which}: {body}");
        assert!(body.contains("\"n\":3"), "{which} attempt: {body}");
    }
    // The client's next poll goes on from there.
    publish(&server, "r1", 4).await;
    let (status, next) = poll_t(&server, &sid, "t4").await;
    assert_eq!(status, 200);
    assert!(
        next.contains("\"n\":4") && !next.contains("\"n\":3"),
        "{next}"
    );
    assert_eq!(
        server
            .metric("groupcast_socketio_polls_retried_total{outcome=\"answered_again\"}")
            .await,
        1.0
    );
    assert_eq!(
        server
            .metric("groupcast_socketio_polls_retried_total{outcome=\"joined\"}")
            .await,
        1.0
    );

    // An attempt whose request goes away while another waits with it: the other still
    // answers (it takes the queue, or shares the answer).
    let gone = attempt("t5");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let kept = attempt("t5");
    tokio::time::sleep(Duration::from_millis(300)).await;
    gone.abort();
    tokio::time::sleep(Duration::from_millis(300)).await;
    publish(&server, "r1", 5).await;
    let (status, body) = tokio::time::timeout(Duration::from_secs(10), kept)
        .await
        .expect("the attempt left answers")
        .unwrap();
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"n\":5"), "{body}");
    publish(&server, "r1", 6).await;
    let (status, next) = poll_t(&server, &sid, "t6").await;
    assert_eq!(status, 200, "the session goes on: {next}");
    assert!(
        next.contains("\"n\":6") && !next.contains("\"n\":5"),
        "{next}"
    );
}

#[test]
fn recovery_needs_history_and_allow_recovery_on_the_rooms_channels() {
    for change in [
        // Channels without history at all.
        |c: &mut groupcast_edge::Config| c.channel = Default::default(),
        |c: &mut groupcast_edge::Config| c.channel.allow_recovery = false,
    ] {
        let mut c = recovering();
        change(&mut c);
        let e = groupcast_edge::check_config(&c).unwrap_err();
        assert!(e.contains("socketio.namespaces[0].recovery"), "{e}");
    }
    groupcast_edge::check_config(&recovering()).expect("valid");
}

#[tokio::test]
async fn a_socket_is_in_its_rooms_presence_while_it_is_there() {
    let server = TestServer::start_with(recovering()).await;
    let (sid, _) = connect(&server, json!({"token": token("u1", &["r1"])})).await;
    let presence = || async {
        let (status, r) = server.api("presence", json!({"channel": "r1"})).await;
        assert_eq!(status, 200, "{r}");
        r["result"]["presence"].clone()
    };
    let entries = presence().await;
    let entries = entries.as_object().expect("presence entries");
    assert_eq!(entries.len(), 1, "{entries:?}");
    let entry = entries.values().next().unwrap();
    assert_eq!(entry["user"], "u1", "{entry}");
    // The socket leaves (its session ends): so does its presence entry.
    post(&server, &sid, "1").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while presence().await.as_object().is_some_and(|p| !p.is_empty()) {
        assert!(tokio::time::Instant::now() < deadline, "still present");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
