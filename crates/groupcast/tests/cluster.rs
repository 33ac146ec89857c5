//! Several `groupcast edge` processes on a real NATS backbone: shared
//! channels in order, relay across edges, recovery on another edge,
//! interest-based subscriptions, a NATS server killed under load, and NATS
//! unreachable.
//!
//! These live with the binary (they need `CARGO_BIN_EXE_groupcast`); the
//! helpers are in `groupcast_testkit::{edge, nats}`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use groupcast_testkit::edge::{EdgeProcess, EDGE_CONFIG};
use groupcast_testkit::membership::MembershipCluster;
use groupcast_testkit::nats::{NatsCluster, NatsServer};
use groupcast_testkit::{http_request, Client, Frame, RelayClient};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_groupcast");
const T: Duration = Duration::from_secs(10);

/// A one-replica membership service: these tests are about the NATS
/// backbone (the membership tests use three replicas).
async fn membership() -> MembershipCluster {
    MembershipCluster::start(Path::new(BIN), 1, &[]).await
}

async fn edge(name: &str, urls: &[String], m: &MembershipCluster) -> EdgeProcess {
    edge_env(name, urls, m, &[]).await
}

async fn edge_env(
    name: &str,
    urls: &[String],
    m: &MembershipCluster,
    env: &[(&str, &str)],
) -> EdgeProcess {
    let mut all = vec![("GROUPCAST_CLIENT__COMMAND_RATE", "0")];
    all.extend_from_slice(env);
    let config = format!("{EDGE_CONFIG}{}", m.edge_section());
    EdgeProcess::start(Path::new(BIN), name, urls, &config, &all).await
}

async fn client(e: &EdgeProcess) -> Client {
    let (c, reply) = Client::connect(&e.ws_url(), "").await.expect("connect");
    assert!(reply["connect"].is_object(), "{reply}");
    c
}

async fn subscribe(c: &mut Client, channel: &str) -> Value {
    let r = c
        .command("subscribe", json!({ "channel": channel }))
        .await
        .unwrap();
    assert!(r["subscribe"].is_object(), "subscribe {channel}: {r}");
    r["subscribe"].clone()
}

/// The next `n` publications of `channel` as (data, offset).
async fn pubs(c: &mut Client, channel: &str, n: usize) -> Vec<(Value, u64)> {
    let mut out = Vec::new();
    while out.len() < n {
        let p = c
            .push(T)
            .await
            .unwrap_or_else(|e| panic!("after {} of {n}: {e:?}", out.len()));
        if p["channel"] == channel && p.get("pub").is_some() {
            out.push((
                p["pub"]["data"].clone(),
                p["pub"]["offset"].as_u64().unwrap_or(0),
            ));
        }
    }
    out
}

/// The names of the NATS connections (the edges) that hold `subject`.
fn holders(connz: &Value, subject: &str) -> Vec<String> {
    let mut names: Vec<String> = connz["connections"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|conn| {
            conn["subscriptions_list"]
                .as_array()
                .is_some_and(|l| l.iter().any(|s| s == subject))
        })
        .map(|conn| conn["name"].as_str().unwrap_or("").to_string())
        .collect();
    names.sort();
    names
}

/// Waits (bounded: 20 s) until exactly the edges `want` hold `subject` on
/// `nats`.
async fn held_by(nats: &NatsServer, subject: &str, want: &[&str]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let got = holders(&nats.monitor("/connz?subs=1").await, subject);
        if got == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{subject} held by {got:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Publishes `data` on `channel` through `e`, retrying a refused publish
/// (with the same idempotency key) for at most 30 s.
async fn api_publish_retried(e: &EdgeProcess, channel: &str, data: Value, key: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let body = json!({ "channel": channel, "data": data, "idempotency_key": key });
        let (status, reply) = e.api("publish", body).await;
        if status == 200 && reply.get("error").is_none() {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "publish: {reply}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn numbers(v: &[(Value, u64)]) -> Vec<u64> {
    v.iter().map(|(d, _)| d["n"].as_u64().unwrap()).collect()
}

async fn api_publish(e: &EdgeProcess, channel: &str, data: Value) -> Value {
    let (status, body) = e
        .api("publish", json!({ "channel": channel, "data": data }))
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_edges_share_channels_in_order() {
    let (nats, m) = tokio::join!(NatsServer::start(), membership());
    let urls = vec![nats.url()];
    let (a, b, c) = tokio::join!(
        edge("a", &urls, &m),
        edge("b", &urls, &m),
        edge("c", &urls, &m)
    );

    // Subscribers on B and C (one client per channel: `pubs` skips other
    // channels' pushes); publications from a client and the API on A.
    let mut subs = Vec::new();
    for e in [&b, &c] {
        let mut s = client(e).await;
        subscribe(&mut s, "news").await;
        let mut p = client(e).await;
        subscribe(&mut p, "plain:news").await;
        subs.push((s, p));
    }
    let mut publisher = client(&a).await;
    for n in 1..=20 {
        let r = publisher
            .command("publish", json!({ "channel": "news", "data": { "n": n } }))
            .await
            .unwrap();
        assert!(r.get("error").is_none(), "{r}");
        let r = publisher
            .command(
                "publish",
                json!({ "channel": "plain:news", "data": { "n": n } }),
            )
            .await
            .unwrap();
        assert!(r.get("error").is_none(), "{r}");
    }
    for n in 21..=40 {
        let body = api_publish(&a, "news", json!({ "n": n })).await;
        assert!(body["result"]["offset"].as_u64().unwrap() > 0, "{body}");
        api_publish(&a, "plain:news", json!({ "n": n })).await;
    }
    for (s, p) in &mut subs {
        let got = pubs(s, "news", 40).await;
        assert_eq!(
            numbers(&got),
            (1..=40).collect::<Vec<_>>(),
            "history channel in order"
        );
        let offs: Vec<u64> = got.iter().map(|(_, o)| *o).collect();
        assert!(
            offs.windows(2).all(|w| w[0] < w[1]),
            "offsets increase: {offs:?}"
        );
        let got = pubs(p, "plain:news", 40).await;
        assert_eq!(
            numbers(&got),
            (1..=40).collect::<Vec<_>>(),
            "plain channel in order"
        );
        assert!(
            got.iter().all(|(_, o)| *o == 0),
            "no offsets without history"
        );
    }

    // Relay clients on different edges relay to each other, and a protocol
    // subscriber on a third edge sees both frames.
    let mut watcher = client(&b).await;
    subscribe(&mut watcher, "room").await;
    let mut ra = RelayClient::open(&a.relay_url("room")).await.unwrap();
    let mut rc = RelayClient::open(&c.relay_url("room")).await.unwrap();
    // A relay connection subscribes once it is open, on the edge's own
    // time: wait until NATS shows the three edges' interest.
    held_by(&nats, "gc.g.~.room", &["a", "b", "c"]).await;
    ra.send_text("from-a").await.unwrap();
    assert!(matches!(rc.recv(T).await.unwrap(), Frame::Text(t) if t == "from-a"));
    rc.send_text("from-c").await.unwrap();
    assert!(matches!(ra.recv(T).await.unwrap(), Frame::Text(t) if t == "from-c"));
    let seen = pubs(&mut watcher, "room", 2).await;
    assert_eq!(seen[0].0, json!("from-a"));
    assert_eq!(seen[1].0, json!("from-c"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_without_subscribers_receives_none_of_a_channels_traffic() {
    let (nats, m) = tokio::join!(NatsServer::start(), membership());
    let urls = vec![nats.url()];
    let (a, b, c) = tokio::join!(
        edge("a", &urls, &m),
        edge("b", &urls, &m),
        edge("c", &urls, &m)
    );
    let mut on_b = client(&b).await;
    subscribe(&mut on_b, "lonely").await;
    let received = "groupcast_nats_messages_received_total";
    let (b0, c0) = (b.metric(received).await, c.metric(received).await);
    for n in 1..=50 {
        api_publish(&a, "lonely", json!({ "n": n })).await;
    }
    assert_eq!(
        numbers(&pubs(&mut on_b, "lonely", 50).await),
        (1..=50).collect::<Vec<_>>()
    );
    let (b1, c1) = (b.metric(received).await, c.metric(received).await);
    assert!(b1 - b0 >= 50.0, "B received the channel: {b0} -> {b1}");
    assert_eq!(
        c1, c0,
        "C has no subscriber of the channel and received none of it"
    );

    // NATS itself shows the interest: only B's connection holds the subject.
    let subject = "gc.g.~.lonely";
    assert_eq!(
        holders(&nats.monitor("/connz?subs=1").await, subject),
        ["b"]
    );
    // After B's last subscriber leaves, B drops the subject too.
    let r = on_b
        .command("unsubscribe", json!({ "channel": "lonely" }))
        .await
        .unwrap();
    assert!(r.get("error").is_none(), "{r}");
    held_by(&nats, subject, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_recovers_on_another_edge() {
    let (nats, m) = tokio::join!(NatsServer::start(), membership());
    let urls = vec![nats.url()];
    let (a, b, c) = tokio::join!(
        edge("a", &urls, &m),
        edge("b", &urls, &m),
        edge("c", &urls, &m)
    );
    let mut x = client(&a).await;
    let sub = subscribe(&mut x, "feed").await;
    let epoch = sub["epoch"].as_str().unwrap().to_string();

    // A steady numbered stream through C's API while X moves from A to B.
    let c = Arc::new(c);
    let published = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let publisher = {
        let (c, published) = (c.clone(), published.clone());
        tokio::spawn(async move {
            for n in 1..=60 {
                api_publish(&c, "feed", json!({ "n": n })).await;
                published.store(n, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let first = pubs(&mut x, "feed", 10).await;
    let last_offset = first.last().unwrap().1;
    x.close().await;
    // Away until at least two more were published (whatever the pace).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while published.load(std::sync::atomic::Ordering::SeqCst) < 12 {
        assert!(
            std::time::Instant::now() < deadline,
            "the publisher stalled"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let mut y = client(&b).await;
    let r = y
        .command(
            "subscribe",
            json!({ "channel": "feed", "recover": true, "offset": last_offset, "epoch": epoch }),
        )
        .await
        .unwrap();
    let s = &r["subscribe"];
    assert_eq!(s["recovered"], true, "{r}");
    let mut got: Vec<u64> = numbers(&first);
    let recovered: Vec<u64> = s["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["data"]["n"].as_u64().unwrap())
        .collect();
    assert!(
        !recovered.is_empty(),
        "publications flowed while X was away"
    );
    got.extend(&recovered);
    let rest = 60 - got.len();
    got.extend(numbers(&pubs(&mut y, "feed", rest).await));
    publisher.await.unwrap();
    assert_eq!(
        got,
        (1..=60).collect::<Vec<_>>(),
        "exactly the missed ones, then live"
    );
    // Nothing twice: the next publication is one made after.
    api_publish(&c, "feed", json!({ "n": 61 })).await;
    assert_eq!(
        numbers(&pubs(&mut y, "feed", 1).await),
        [61],
        "nothing twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_nats_server_loses_and_duplicates_nothing() {
    let (cluster, m) = tokio::join!(NatsCluster::start(), membership());
    let urls = cluster.urls();
    let env = [("GROUPCAST_CHANNEL__HISTORY_REPLICAS", "3")];
    let a = edge_env("a", &urls, &m, &env).await;
    let b = edge_env("b", &urls, &m, &env).await;
    let mut subs = Vec::new();
    for e in [&a, &b, &b] {
        let mut s = client(e).await;
        subscribe(&mut s, "ticks").await;
        subs.push(s);
    }
    let a = Arc::new(a);
    const N: u64 = 300;
    // A steady numbered stream; a publish that fails while NATS fails over
    // is retried with the same idempotency key, so it is stored once.
    let publisher = {
        let a = a.clone();
        tokio::spawn(async move {
            let mut retries = 0;
            for n in 1..=N {
                loop {
                    let body = json!({ "channel": "ticks", "data": { "n": n }, "idempotency_key": format!("t{n}") });
                    let (status, reply) = a.api("publish", body).await;
                    if status == 200 && reply.get("error").is_none() {
                        break;
                    }
                    retries += 1;
                    assert!(retries < 2000, "publishing never recovered: {reply}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            retries
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut cluster = cluster;
    // kill -9 the first server: some edge connection and stream replica
    // lives there (edges pick a random server from the list).
    cluster.servers[0].kill();
    let retries = publisher.await.unwrap();
    // One more after the stream: each subscriber's next publication after
    // the N is this one (nothing twice).
    api_publish_retried(&a, "ticks", json!({ "n": N + 1 }), &format!("t{}", N + 1)).await;
    for (i, s) in subs.iter_mut().enumerate() {
        let got = numbers(&pubs(s, "ticks", N as usize + 1).await);
        assert_eq!(
            got,
            (1..=N + 1).collect::<Vec<_>>(),
            "subscriber {i}: complete, in order, nothing twice"
        );
    }
    for e in [&*a, &b] {
        let m = e.metrics().await;
        let lines: Vec<&str> = m
            .lines()
            .filter(|l| {
                l.starts_with("groupcast_nats_gaps_total")
                    || l.starts_with("groupcast_nats_events_total")
            })
            .collect();
        eprintln!("edge {}: {lines:?}", e.name);
    }
    eprintln!("publish retries during the failover: {retries}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_unreachable_is_a_clear_error_and_not_ready() {
    let (mut nats, m) = tokio::join!(NatsServer::start(), membership());
    let urls = vec![nats.url()];
    let a = edge("a", &urls, &m).await;
    api_publish(&a, "news", json!({ "n": 1 })).await;
    nats.kill();
    // The edge notices the lost connection.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut ready;
    loop {
        ready = http_request(a.addr, "GET", "/readyz", "", b"").await.0;
        if ready == 503 || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(ready, 503, "/readyz reports the backbone");
    let (status, body) = a
        .api("publish", json!({ "channel": "news", "data": { "n": 2 } }))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        body["error"]["code"], 108,
        "history publish fails clearly: {body}"
    );
    let mut c = client(&a).await;
    let r = c
        .command("publish", json!({ "channel": "news", "data": { "n": 3 } }))
        .await
        .unwrap();
    assert_eq!(r["error"]["code"], 108, "{r}");
    assert!(a.metric("groupcast_nats_connected").await == 0.0);
    assert!(
        a.metric("groupcast_nats_publish_errors_total").await >= 2.0,
        "both refused publishes are counted"
    );

    nats.restart().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        ready = http_request(a.addr, "GET", "/readyz", "", b"").await.0;
        if ready == 200 || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(ready, 200, "ready again after NATS returns");
    let body = api_publish(&a, "news", json!({ "n": 4 })).await;
    assert!(body.get("error").is_none(), "{body}");
}

/// Data of a publish too large for NATS (`max_payload`, 1 MiB) but within
/// the client limit these pipelining tests set (2 MiB): refused by the
/// broker with 106, in the middle of other publishes.
fn over_max_payload() -> Value {
    json!({ "big": "x".repeat(1_100_000) })
}

/// Settings for the pipelining tests: a small in-flight bound (so it is
/// reached), and a client limit above NATS's `max_payload`.
const PIPELINE_ENV: &[(&str, &str)] = &[
    ("GROUPCAST_CLIENT__MAX_PUBLISHES_IN_FLIGHT", "8"),
    ("GROUPCAST_CLIENT__MAX_MESSAGE_SIZE", "2097152"),
    ("GROUPCAST_CLIENT__MAX_QUEUE_BYTES", "8388608"),
    ("GROUPCAST_API__MAX_BODY_BYTES", "4194304"),
];

/// The stored publications of `channel` (read through the API), as
/// (data `n`, offset), oldest first.
async fn stored(e: &EdgeProcess, channel: &str) -> Vec<(u64, u64)> {
    let (status, body) = e
        .api("history", json!({ "channel": channel, "limit": 1000 }))
        .await;
    assert_eq!(status, 200, "{body}");
    body["result"]["publications"]
        .as_array()
        .unwrap_or_else(|| panic!("{body}"))
        .iter()
        .map(|p| {
            (
                p["data"]["n"].as_u64().unwrap(),
                p["offset"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_pipelines_history_publishes_in_command_order() {
    let (nats, m) = tokio::join!(NatsServer::start(), membership());
    let e = edge_env("a", &[nats.url()], &m, PIPELINE_ENV).await;
    let mut c = client(&e).await;
    // 200 publishes in frames of 10, none waiting for a reply; the 77th is
    // refused by the broker (over NATS's max_payload) and a `presence` of a
    // channel without presence (108) comes in the middle of a frame.
    let (first_id, n_pubs, bad, read_at) = (1000u32, 200u32, 77u32, 133u32);
    let mut frame = Vec::new();
    for i in 1..=n_pubs {
        let id = first_id + i;
        let data = if i == bad {
            over_max_payload()
        } else {
            json!({ "n": i })
        };
        frame.push(json!({ "id": id, "publish": { "channel": "pipe", "data": data } }).to_string());
        if i == read_at {
            frame.push(
                json!({ "id": first_id + n_pubs + 1, "presence": { "channel": "plain:x" } })
                    .to_string(),
            );
        }
        if frame.len() >= 10 {
            c.send_text(frame.join("\n")).await.unwrap();
            frame.clear();
        }
    }
    if !frame.is_empty() {
        c.send_text(frame.join("\n")).await.unwrap();
    }
    // Every reply, in command order.
    let mut want: Vec<u32> = (1..=n_pubs).map(|i| first_id + i).collect();
    want.insert(read_at as usize, first_id + n_pubs + 1);
    let mut got = Vec::new();
    while got.len() < want.len() {
        match c.next(T).await.unwrap() {
            groupcast_testkit::Incoming::Reply(r) => got.push(r),
            groupcast_testkit::Incoming::Close(code) => panic!("closed: {code:?}"),
            _ => {}
        }
    }
    let ids: Vec<u32> = got
        .iter()
        .map(|r| r["id"].as_u64().unwrap() as u32)
        .collect();
    assert_eq!(ids, want, "replies in command order");
    for r in &got {
        let id = r["id"].as_u64().unwrap() as u32;
        if id == first_id + bad {
            assert_eq!(r["error"]["code"], 106, "too large for NATS: {r}");
        } else if id == first_id + n_pubs + 1 {
            assert!(r["error"]["code"].is_number(), "presence refused: {r}");
        } else {
            assert!(r["publish"].is_object(), "{r}");
        }
    }
    // Stored in command order, with strictly increasing offsets.
    let history = stored(&e, "pipe").await;
    let numbers: Vec<u64> = history.iter().map(|(n, _)| *n).collect();
    let want: Vec<u64> = (1..=n_pubs as u64).filter(|n| *n != bad as u64).collect();
    assert_eq!(numbers, want, "history in command order");
    assert!(
        history.windows(2).all(|w| w[0].1 < w[1].1),
        "offsets increase: {history:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_batch_pipelines_publishes_in_command_order() {
    let (nats, m) = tokio::join!(NatsServer::start(), membership());
    let e = edge_env("a", &[nats.url()], &m, PIPELINE_ENV).await;
    // 60 publishes with an idempotency key each; the 23rd is refused by the
    // broker, the 41st repeats the 40th's key (stored once, same offset),
    // and a history read sits in the middle.
    let mut commands = Vec::new();
    for i in 1..=60u64 {
        let key = if i == 41 {
            "k40".to_string()
        } else {
            format!("k{i}")
        };
        let data = if i == 23 {
            over_max_payload()
        } else {
            json!({ "n": i })
        };
        commands.push(
            json!({ "publish": { "channel": "batch", "data": data, "idempotency_key": key } }),
        );
        if i == 30 {
            commands.push(json!({ "history": { "channel": "batch", "limit": 1000 } }));
        }
    }
    let (status, body) = e.api("batch", json!({ "commands": commands })).await;
    assert_eq!(status, 200, "{body}");
    let replies = body["replies"]
        .as_array()
        .unwrap_or_else(|| panic!("{body}"));
    assert_eq!(replies.len(), 61, "{body}");
    let mut offsets = Vec::new();
    let mut i = 0u64;
    for (k, r) in replies.iter().enumerate() {
        if k == 30 {
            // The read runs after the 29 publishes before it were stored.
            let n = r["history"]["publications"].as_array().unwrap().len();
            assert_eq!(n, 29, "{r}");
            continue;
        }
        i += 1;
        if i == 23 {
            assert_eq!(r["error"]["code"], 106, "{r}");
            continue;
        }
        offsets.push((
            i,
            r["publish"]["offset"]
                .as_u64()
                .unwrap_or_else(|| panic!("{r}")),
        ));
    }
    let (o40, o41) = (offsets[38].1, offsets[39].1);
    assert_eq!((offsets[38].0, offsets[39].0), (40, 41));
    assert_eq!(o40, o41, "the repeated key answers the first offset");
    offsets.remove(39);
    assert!(
        offsets.windows(2).all(|w| w[0].1 < w[1].1),
        "offsets increase in command order: {offsets:?}"
    );
    let history = stored(&e, "batch").await;
    assert_eq!(
        history, offsets,
        "stored in command order, at the offsets the replies said"
    );
}
