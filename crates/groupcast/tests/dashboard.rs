//! The operator dashboard's data (`/dashboard/data`) from real processes:
//! `groupcast dev` (this node alone, membership and NATS not in use), and
//! a cluster (a NATS server, three `groupcast membership` replicas, two
//! `groupcast edge`s) where any edge lists every edge with its own counts,
//! every replica with the leader and its lag, the NATS connection, the
//! cluster's top channels and the errors of every edge by code; and still
//! answers in time, showing what is down, when a replica or an edge dies.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use groupcast_testkit::dev::DevServer;
use groupcast_testkit::edge::{EdgeProcess, EDGE_CONFIG};
use groupcast_testkit::membership::MembershipCluster;
use groupcast_testkit::nats::NatsServer;
use groupcast_testkit::{http_request, Client, API_KEY};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_groupcast");
const T: Duration = Duration::from_secs(15);
/// An answer comes within this even with a replica or an edge down
/// (`dashboard::PART_TIMEOUT` is 1 s; a build waits for two parts at most:
/// 2 s, and 4 s more for a busy machine; a part waited for without its
/// timeout would take a dead peer's connection timeout).
const ANSWER_WITHIN: Duration = Duration::from_secs(6);

/// `GET /dashboard/data` with `headers`: (status, JSON).
async fn data(addr: SocketAddr, headers: &str) -> (u16, Value) {
    let started = Instant::now();
    let (status, body) = http_request(addr, "GET", "/dashboard/data", headers, b"").await;
    assert!(
        started.elapsed() < ANSWER_WITHIN,
        "the dashboard data took {:?}",
        started.elapsed()
    );
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// The data with the key, polled until `ok` holds (bounded: `T`).
async fn data_until(addr: SocketAddr, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + T;
    loop {
        let (status, d) = data(addr, &format!("X-API-Key: {API_KEY}\r\n")).await;
        assert_eq!(status, 200, "{d}");
        if ok(&d) {
            return d;
        }
        assert!(Instant::now() < deadline, "{what}: {d:#}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn edge_names(d: &Value) -> Vec<String> {
    d["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect()
}

/// Total of error `code` across the cluster's edges.
fn error_total(d: &Value, code: u64) -> u64 {
    d["errors"]["codes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "error" && c["code"] == code)
        .map(|c| c["total"].as_u64().unwrap())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groupcast_dev_serves_the_dashboard_of_its_one_node() {
    let server = DevServer::start(
        BIN,
        &["--listen", "127.0.0.1:0", "--api-key", "dash-key"],
        &[],
    );
    let url = server.field("dashboard");
    let addr: SocketAddr = url
        .trim_start_matches("http://")
        .trim_end_matches("/dashboard")
        .parse()
        .unwrap();
    let (status, page) = http_request(addr, "GET", "/dashboard", "", b"").await;
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&page).contains("Groupcast dashboard"));
    let (status, d) = data(addr, "").await;
    assert_eq!((status, &d["error"]), (401, &json!("unauthorized")), "{d}");

    let (mut c, _) = Client::connect(&format!("ws://{addr}/connection/websocket"), "")
        .await
        .unwrap();
    let r = c
        .command("subscribe", json!({"channel": "news"}))
        .await
        .unwrap();
    assert!(r["subscribe"].is_object(), "{r}");
    let deadline = Instant::now() + T;
    let d = loop {
        let (status, d) = data(addr, "Authorization: apikey dash-key\r\n").await;
        assert_eq!(status, 200, "{d}");
        if d["channels"]["top"][0] == json!({"channel": "news", "subscribers": 1}) {
            break d;
        }
        assert!(Instant::now() < deadline, "{d:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(edge_names(&d), ["groupcast"], "{d:#}");
    assert_eq!(d["edges"][0]["connections"], 1);
    assert_eq!(d["membership"]["in_use"], false, "{d:#}");
    assert_eq!(d["nats"]["in_use"], false, "{d:#}");
}

async fn edge(name: &str, nats: &NatsServer, m: &MembershipCluster) -> EdgeProcess {
    let config = format!("{EDGE_CONFIG}{}", m.edge_section());
    let env = [("GROUPCAST_CLIENT__COMMAND_RATE", "0")];
    EdgeProcess::start(Path::new(BIN), name, &[nats.url()], &config, &env).await
}

async fn subscriber(e: &EdgeProcess, channel: &str) -> Client {
    let (mut c, reply) = Client::connect(&e.ws_url(), "").await.expect("connect");
    assert!(reply["connect"].is_object(), "{reply}");
    let r = c
        .command("subscribe", json!({ "channel": channel }))
        .await
        .unwrap();
    assert!(r["subscribe"].is_object(), "{r}");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_edge_shows_the_whole_cluster_and_what_is_down() {
    let (nats, mut m) = tokio::join!(
        NatsServer::start(),
        MembershipCluster::start(Path::new(BIN), 3, &[])
    );
    let (a, mut b) = tokio::join!(edge("a", &nats, &m), edge("b", &nats, &m));
    let (status, d) = data(a.addr, "X-API-Key: wrong\r\n").await;
    assert_eq!((status, &d["error"]), (401, &json!("unauthorized")), "{d}");

    let _alice = subscriber(&a, "room").await;
    let mut bob = subscriber(&b, "room").await;
    let _carol = subscriber(&b, "lobby").await;

    // Every edge, with its own report; cluster-wide channel counts.
    let d = data_until(a.addr, "both edges reporting, room with 2", |d| {
        d["edges"].as_array().unwrap().len() == 2
            && d["edges"]
                .as_array()
                .unwrap()
                .iter()
                .all(|e| e["reported"] == true)
            && d["channels"]["top"][0] == json!({"channel": "room", "subscribers": 2})
    })
    .await;
    assert_eq!(edge_names(&d), ["a", "b"], "this edge first: {d:#}");
    let (ea, eb) = (&d["edges"][0], &d["edges"][1]);
    assert_eq!(
        (ea["this"].clone(), eb["this"].clone()),
        (json!(true), json!(false))
    );
    assert_eq!(ea["address"], a.addr.to_string());
    assert_eq!(eb["address"], b.addr.to_string());
    assert_eq!(
        (ea["connections"].clone(), eb["connections"].clone()),
        (json!(1), json!(2))
    );
    assert_eq!(eb["subscriptions"], 2, "{d:#}");
    assert_eq!(d["channels"]["scope"], "cluster");
    assert_eq!(
        d["channels"]["top"][1],
        json!({"channel": "lobby", "subscribers": 1})
    );
    assert_eq!(d["edges_error"], Value::Null);

    // Every replica, one leader (the one the replicas name), lags measured.
    let replicas = d["membership"]["replicas"].as_array().unwrap();
    assert_eq!(d["membership"]["in_use"], true);
    assert_eq!(d["membership"]["available"], true);
    let mut ids: Vec<u64> = replicas.iter().map(|r| r["id"].as_u64().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, [1, 2, 3], "{d:#}");
    let leaders: Vec<&Value> = replicas.iter().filter(|r| r["leader"] == true).collect();
    assert_eq!(leaders.len(), 1, "{d:#}");
    let leader = m.leader(T, &[]).await.expect("a leader");
    assert_eq!(leaders[0]["id"], m.nodes[leader].id, "{d:#}");
    assert_eq!(leaders[0]["state"], "Leader");
    for r in replicas {
        assert_eq!(r["reachable"], true, "{r}");
        assert_eq!(r["voter"], true, "{r}");
        assert!(r["lag"].is_u64(), "{r}");
        assert!(r["applied_index"].as_u64().unwrap() > 0, "{r}");
        assert_eq!(r["term"], leaders[0]["term"], "{r}");
        let addr = &m.nodes.iter().find(|n| n.id == r["id"]).unwrap().addr;
        assert_eq!(&r["address"], addr);
    }

    // NATS, as this edge's connection sees it.
    let n = &d["nats"];
    assert_eq!(n["in_use"], true, "{d:#}");
    assert_eq!(n["connected"], true, "{d:#}");
    assert_eq!(n["jetstream"], true, "{d:#}");
    assert_eq!(n["kind"], "NATS");
    assert_eq!(n["urls"], json!([nats.url()]));
    assert_eq!(n["subscriptions"], 1, "edge a holds room only: {d:#}");

    // An error on edge b shows in edge a's data, by code.
    let before = error_total(&d, 102);
    let r = bob
        .command("subscribe", json!({"channel": "nope:x"}))
        .await
        .unwrap();
    assert_eq!(r["error"]["code"], 102, "{r}");
    let d = data_until(a.addr, "edge b's 102 error", |d| {
        error_total(d, 102) > before
    })
    .await;
    assert_eq!(d["errors"]["edges"], 2, "{d:#}");
    // Messages went through b since its first sample: a rate.
    data_until(a.addr, "edge b's message rates", |d| {
        d["edges"][1]["messages_in_per_second"].is_f64()
            && d["edges"][1]["messages_out_per_second"].is_f64()
    })
    .await;

    // A follower dies: still an answer in time, listing it unreachable.
    let follower = (0..3).find(|i| *i != leader).unwrap();
    let dead = m.nodes[follower].id;
    m.kill(follower);
    let d = data_until(a.addr, "the killed replica unreachable", |d| {
        d["membership"]["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == dead && r["reachable"] == false)
    })
    .await;
    let replicas = d["membership"]["replicas"].as_array().unwrap();
    assert_eq!(replicas.len(), 3, "{d:#}");
    for r in replicas.iter().filter(|r| r["id"] != dead) {
        assert_eq!(r["reachable"], true, "{r}");
    }
    let down = replicas.iter().find(|r| r["id"] == dead).unwrap();
    assert!(down["error"].is_string(), "{down}");
    assert_eq!(down["lag"], Value::Null, "{down}");
    assert_eq!(
        replicas.iter().filter(|r| r["leader"] == true).count(),
        1,
        "{d:#}"
    );

    // An edge dies: until its lease runs out it is listed, as not
    // reporting (the membership service's counts); then it is gone.
    b.kill();
    let d = data_until(a.addr, "edge b not reporting, or gone", |d| {
        let e = d["edges"].as_array().unwrap();
        e.len() == 1 || e[1]["reported"] == false
    })
    .await;
    if d["edges"].as_array().unwrap().len() == 2 {
        assert!(d["edges"][1]["error"].is_string(), "{d:#}");
    }
    let d = data_until(a.addr, "edge b gone after its lease", |d| {
        d["edges"].as_array().unwrap().len() == 1
    })
    .await;
    assert_eq!(edge_names(&d), ["a"]);
}
