//! NATS faults beyond `kill -9` (issue 24, items 1 and 4, `docs/failover.md`,
//! "A NATS server partitioned from its cluster"): the NATS server leading
//! the history stream (JetStream, three replicas) loses its routes to the
//! other two for 22 s; the edges still reach every server. Publications
//! through the edges of the majority keep being acknowledged; no client of
//! the cut server's edge stays connected while missing an acknowledged
//! publication for more than 10 s (the edge's quorum probe notices that
//! JetStream commits nothing through its server, `nats.quorum_lost_after`,
//! and the edge moves to another server or fences itself); after the heal
//! every client holds every acknowledged publication exactly once, in
//! order, and the three stream replicas hold the same messages, as many as
//! were acknowledged.
//!
//! Three `nats-server`s in cgroup leaves of their own
//! ([`NatsCluster::start_placed`], [`groupcast_testkit::netfault`]), three
//! membership replicas, three edges, edge `i` configured with server `i`
//! only; 20 clients on each edge over three history channels, numbered API
//! publications through the majority's edges, each retried with its
//! idempotency key. Needs root, as CI runs it. It prints its figures;
//! `docs/failover.md` records runs of
//! `cargo nextest run -p groupcast --test nats_faults --no-capture`.
//! With `NATS_FAULTS_INJECT_DUPLICATE=1` the publisher stores one
//! publication twice after the heal (as a retry without its idempotency
//! key would), and the test fails. With `NATS_FAULTS_NO_QUORUM_PROBE=1`
//! the edges run without the probe (`nats.quorum_lost_after = 0s`), and
//! the test fails on the 10 s bound.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::next_publication;
use groupcast_edge::auth::{mint_hs256, now_unix};
use groupcast_testkit::edge::{EdgeProcess, EDGE_CONFIG};
use groupcast_testkit::membership::MembershipCluster;
use groupcast_testkit::nats::{NatsCluster, NatsServer};
use groupcast_testkit::netfault::{self, NetFaults};
use groupcast_testkit::{try_http_request, Client, ClientError, API_KEY, SECRET};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const BIN: &str = env!("CARGO_BIN_EXE_groupcast");
const EDGES: usize = 3;
const PER_EDGE: usize = 20;
const CLIENTS: usize = EDGES * PER_EDGE;
const CHANNELS: usize = 3;
/// One API publish every 30 ms, round robin over the channels.
const PUBLISH_EVERY: Duration = Duration::from_millis(30);
/// How long the server stays cut from its cluster: long enough that an
/// edge that never notices keeps its clients missing publications for
/// longer than [`SILENT_AT_MOST`] (the first acknowledgement on the
/// majority side comes 4–10 s into the cut).
const CUT_FOR: Duration = Duration::from_secs(22);
/// What the clients of the cut server's edge are promised: none stays
/// connected while missing an acknowledged publication for longer.
const SILENT_AT_MOST: Duration = Duration::from_secs(10);
/// Bound for everything else waited for.
const WAIT: Duration = Duration::from_secs(30);
/// The default namespace's history stream (every channel of the test).
const STREAM: &str = "gc_h_~";

fn channel(i: usize) -> String {
    format!("part{}", i % CHANNELS)
}

/// The edge client `i` connects to first (and stays on while it can).
fn home(i: usize) -> usize {
    i / PER_EDGE
}

#[derive(Default)]
struct ClientState {
    /// Client id of the current connection; empty while disconnected.
    id: String,
    /// Last publication number received (in order) on its channel.
    last: u64,
    /// Gaps, duplicates, failed recoveries.
    errors: Vec<String>,
    /// Close codes seen (None: dropped without one).
    closes: Vec<Option<u16>>,
    failure: String,
}

struct Clients {
    states: Arc<Vec<Mutex<ClientState>>>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Clients {
    async fn start(urls: Vec<String>) -> Clients {
        let states: Arc<Vec<Mutex<ClientState>>> =
            Arc::new((0..CLIENTS).map(|_| Mutex::default()).collect());
        let stop = CancellationToken::new();
        let tasks = (0..CLIENTS)
            .map(|i| tokio::spawn(run_client(states.clone(), stop.clone(), i, urls.clone())))
            .collect();
        let clients = Clients {
            states,
            stop,
            tasks,
        };
        clients.wait_all_connected().await;
        clients
    }

    fn state(&self, i: usize) -> std::sync::MutexGuard<'_, ClientState> {
        self.states[i].lock().unwrap()
    }

    async fn wait_all_connected(&self) {
        let deadline = Instant::now() + WAIT;
        loop {
            let down: Vec<String> = (0..CLIENTS)
                .filter(|&i| self.state(i).id.is_empty())
                .map(|i| self.state(i).failure.clone())
                .collect();
            if down.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} clients not connected after {WAIT:?}: {:?}",
                down.len(),
                &down[..down.len().min(3)]
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits (bounded) until every client holds publication `acked` of its
    /// channel, then asserts nobody saw a gap, a duplicate or a failed
    /// recovery.
    async fn assert_complete(&self, acked: &[AtomicU64]) {
        let deadline = Instant::now() + WAIT;
        loop {
            let behind: Vec<(usize, u64, u64)> = (0..CLIENTS)
                .filter_map(|i| {
                    let want = acked[i % CHANNELS].load(Ordering::SeqCst);
                    let last = self.state(i).last;
                    (last < want).then_some((i, last, want))
                })
                .collect();
            if behind.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} clients behind after {WAIT:?}, e.g. (client, has, acknowledged) {:?}; errors: {:?}",
                behind.len(),
                &behind[..behind.len().min(5)],
                self.errors()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let errors = self.errors();
        assert!(errors.is_empty(), "clients saw: {errors:?}");
    }

    fn errors(&self) -> Vec<String> {
        (0..CLIENTS)
            .flat_map(|i| {
                self.state(i)
                    .errors
                    .iter()
                    .map(|e| format!("client {i}: {e}"))
                    .collect::<Vec<_>>()
            })
            .take(20)
            .collect()
    }

    async fn stop(self) {
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// One client as the SDKs behave (as in the chaos tests): connect,
/// subscribe with `recover` from its last offset and epoch after the first
/// time, check every publication's number, reconnect after a lost
/// connection (to its home edge, to the next one after a failed attempt).
async fn run_client(
    states: Arc<Vec<Mutex<ClientState>>>,
    stop: CancellationToken,
    i: usize,
    urls: Vec<String>,
) {
    let ch = channel(i);
    let token = mint_hs256(
        SECRET,
        &json!({ "sub": format!("user{i}"), "exp": now_unix() + 3600 }),
    );
    let mut position: Option<(u64, String)> = None;
    let mut lost = false;
    let mut edge = home(i);
    let state = &states[i];
    let note = |e: String| state.lock().unwrap().errors.push(e);
    let failed = |why: String| state.lock().unwrap().failure = why;
    let check = |p: &Value, position: &mut Option<(u64, String)>| {
        let mut s = state.lock().unwrap();
        if let Err(e) = next_publication(p, &mut s.last, position) {
            s.errors.push(e);
        }
    };
    while !stop.is_cancelled() {
        if lost {
            tokio::time::sleep(Duration::from_millis(50 + (i as u64 * 37) % 200)).await;
        }
        let url = &urls[edge];
        let attempt =
            tokio::time::timeout(Duration::from_secs(5), Client::connect(url, &token)).await;
        let (mut c, reply) = match attempt {
            Ok(Ok(c)) => c,
            other => {
                failed(format!("connect: {:?}", other.map(|r| r.map(|_| ()))));
                lost = true;
                edge = (edge + 1) % EDGES;
                continue;
            }
        };
        let Some(id) = reply["connect"]["client"].as_str().map(str::to_string) else {
            failed(format!("connect refused: {reply}"));
            lost = true;
            edge = (edge + 1) % EDGES;
            continue;
        };
        let mut sub = json!({ "channel": ch });
        if let Some((offset, epoch)) = &position {
            sub["recover"] = json!(true);
            sub["offset"] = json!(offset);
            sub["epoch"] = json!(epoch);
        }
        let r = match c.command("subscribe", sub).await {
            Ok(r) if r["subscribe"].is_object() => r,
            other => {
                failed(format!("subscribe: {other:?}"));
                c.close().await;
                lost = true;
                edge = (edge + 1) % EDGES;
                continue;
            }
        };
        let s = &r["subscribe"];
        let epoch = s["epoch"].as_str().unwrap_or_default().to_string();
        if position.is_some() && s["recovered"] != true {
            note(format!("not recovered on reconnect: {s}"));
        }
        position = Some((s["offset"].as_u64().unwrap_or(0), epoch));
        if let Some(pubs) = s["publications"].as_array() {
            for p in pubs {
                check(p, &mut position);
            }
        }
        state.lock().unwrap().id = id;
        loop {
            let push = tokio::select! {
                _ = stop.cancelled() => {
                    c.close().await;
                    return;
                }
                p = c.push(Duration::from_secs(1)) => p,
            };
            match push {
                Ok(p) if p["pub"].is_object() => check(&p["pub"], &mut position),
                Ok(p) if p["unsubscribe"]["code"] == 2500 => {
                    // Insufficient state (the edge lost publications it could
                    // not read back): the SDKs subscribe again with `recover`;
                    // this client does it on a new connection.
                    lost = true;
                    {
                        let mut st = state.lock().unwrap();
                        st.id.clear();
                        st.closes.push(Some(2500));
                    }
                    c.close().await;
                    break;
                }
                Ok(p) if p["unsubscribe"].is_object() => {
                    note(format!("unsubscribed by the server: {p}"));
                }
                Ok(_) | Err(ClientError::Timeout) => {}
                Err(e) => {
                    lost = true;
                    let mut st = state.lock().unwrap();
                    st.id.clear();
                    st.closes.push(match e {
                        ClientError::Closed(Some((code, _))) => Some(code),
                        _ => None,
                    });
                    break;
                }
            }
        }
    }
}

#[derive(Default, Debug)]
struct PublishStats {
    accepted: u64,
    /// Failed attempts (later retried), by HTTP status or API error code.
    failed: BTreeMap<String, u64>,
    /// When each publication was acknowledged, per channel (index n - 1).
    acked_at: Vec<Vec<Instant>>,
}

/// Numbered publications through the API of `via` (round robin), each
/// retried with its idempotency key until it is accepted.
struct Publisher {
    acked: Arc<Vec<AtomicU64>>,
    stats: Arc<Mutex<PublishStats>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

async fn api_publish(edge: SocketAddr, body: &str) -> Result<Value, String> {
    let answer = tokio::time::timeout(
        Duration::from_secs(15),
        try_http_request(
            edge,
            "POST",
            "/api/publish",
            &format!("X-API-Key: {API_KEY}\r\n"),
            body.as_bytes(),
        ),
    )
    .await;
    match answer {
        Ok(Ok((200, b))) => {
            let v: Value = serde_json::from_slice(&b).unwrap_or_default();
            match v.get("error") {
                None => Ok(v),
                Some(e) => Err(format!("error {} {}", e["code"], e["message"])),
            }
        }
        Ok(Ok((status, _))) => Err(format!("HTTP {status}")),
        Ok(Err(e)) => Err(format!("I/O {}", e.kind())),
        Err(_) => Err("no answer in 15 s".into()),
    }
}

impl Publisher {
    fn start(via: Vec<SocketAddr>) -> Publisher {
        let acked: Arc<Vec<AtomicU64>> =
            Arc::new((0..CHANNELS).map(|_| AtomicU64::new(0)).collect());
        let stats = Arc::new(Mutex::new(PublishStats {
            acked_at: vec![Vec::new(); CHANNELS],
            ..PublishStats::default()
        }));
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let (acked, stats, stop) = (acked.clone(), stats.clone(), stop.clone());
            async move {
                let mut tick = tokio::time::interval(PUBLISH_EVERY);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                for k in 0.. {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tick.tick() => {}
                    }
                    let ch = k % CHANNELS;
                    let n = acked[ch].load(Ordering::SeqCst) + 1;
                    let body = json!({
                        "channel": channel(ch),
                        "data": { "n": n },
                        "idempotency_key": format!("p{n}"),
                    })
                    .to_string();
                    let started = Instant::now();
                    let mut attempt = k;
                    while let Err(why) = api_publish(via[attempt % via.len()], &body).await {
                        *stats.lock().unwrap().failed.entry(why).or_default() += 1;
                        assert!(
                            started.elapsed() < WAIT,
                            "publish {n} to {} not accepted within {WAIT:?}: {:?}",
                            channel(ch),
                            stats.lock().unwrap().failed
                        );
                        attempt += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    acked[ch].store(n, Ordering::SeqCst);
                    let mut s = stats.lock().unwrap();
                    s.accepted += 1;
                    s.acked_at[ch].push(Instant::now());
                }
            }
        });
        Publisher {
            acked,
            stats,
            stop,
            task,
        }
    }

    fn accepted(&self) -> u64 {
        self.stats.lock().unwrap().accepted
    }

    async fn stop(self) -> (Arc<Vec<AtomicU64>>, PublishStats) {
        self.stop.cancel();
        self.task.await.expect("publisher");
        let stats = std::mem::take(&mut *self.stats.lock().unwrap());
        (self.acked, stats)
    }
}

/// The stream's entry in `server`'s `/jsz?streams=true` (None while it
/// does not answer or has no replica).
async fn stream(server: &NatsServer) -> Option<Value> {
    let jsz = server.try_monitor("/jsz?streams=true").await?;
    jsz["account_details"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|a| a["stream_detail"].as_array().into_iter().flatten())
        .find(|s| s["name"] == STREAM)
        .cloned()
}

async fn stream_leader(server: &NatsServer) -> Option<String> {
    stream(server).await?["cluster"]["leader"]
        .as_str()
        .map(str::to_string)
}

/// (messages, first_seq, last_seq) of each server's replica.
async fn replica_states(nats: &NatsCluster) -> Vec<Option<(u64, u64, u64)>> {
    let mut out = Vec::new();
    for s in &nats.servers {
        out.push(stream(s).await.map(|st| {
            let state = &st["state"];
            (
                state["messages"].as_u64().unwrap_or(0),
                state["first_seq"].as_u64().unwrap_or(0),
                state["last_seq"].as_u64().unwrap_or(0),
            )
        }));
    }
    out
}

/// Waits (bounded) until the three replicas report the same state; that
/// state.
async fn replicas_agree(nats: &NatsCluster, since: Instant) -> (u64, u64, u64) {
    loop {
        let states = replica_states(nats).await;
        if let Some(Some(first)) = states.first() {
            if states.iter().all(|s| s.as_ref() == Some(first)) {
                return *first;
            }
        }
        assert!(
            since.elapsed() < WAIT,
            "the stream's replicas still disagree after {WAIT:?}: {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_server_cut_from_its_cluster_loses_and_duplicates_nothing() {
    if !netfault::isolated("a_nats_server_cut_from_its_cluster_loses_and_duplicates_nothing") {
        return;
    }
    let faults = NetFaults::start();
    let (nats, membership) = tokio::join!(
        NatsCluster::start_placed(&faults),
        MembershipCluster::start(Path::new(BIN), 3, &[])
    );
    let urls = nats.urls();
    let config = format!("{EDGE_CONFIG}{}", membership.edge_section());
    let mut env = vec![
        ("GROUPCAST_CLIENT__COMMAND_RATE", "0"),
        ("GROUPCAST_CHANNEL__HISTORY_REPLICAS", "3"),
    ];
    if std::env::var_os("NATS_FAULTS_NO_QUORUM_PROBE").is_some() {
        env.push(("GROUPCAST_NATS__QUORUM_LOST_AFTER", "0s"));
    }
    let bin = Path::new(BIN);
    // Edge i is configured with server i only (it may learn the others
    // from the cluster, as NATS clients do).
    let (a, b, c) = tokio::join!(
        EdgeProcess::start(bin, "edge-0", &urls[0..1], &config, &env),
        EdgeProcess::start(bin, "edge-1", &urls[1..2], &config, &env),
        EdgeProcess::start(bin, "edge-2", &urls[2..3], &config, &env),
    );
    let edges = [a, b, c];
    // A first publication makes sure the stream exists; then its leader.
    let warm = json!({ "channel": "partwarm", "data": {}, "idempotency_key": "warm" }).to_string();
    let deadline = Instant::now() + WAIT;
    while let Err(why) = api_publish(edges[0].addr, &warm).await {
        assert!(Instant::now() < deadline, "first publish: {why}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let leader = loop {
        if let Some(l) = stream_leader(&nats.servers[0]).await {
            break l;
        }
        assert!(Instant::now() < deadline, "no leader for {STREAM}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let cut = nats
        .servers
        .iter()
        .position(|s| s.name == leader)
        .expect("the leader is one of ours");
    let majority: Vec<usize> = (0..EDGES).filter(|&i| i != cut).collect();
    let ws: Vec<String> = edges.iter().map(EdgeProcess::ws_url).collect();
    let clients = Clients::start(ws).await;
    let publisher = Publisher::start(majority.iter().map(|&i| edges[i].addr).collect());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let on_cut: Vec<usize> = (0..CLIENTS).filter(|&i| home(i) == cut).collect();
    let closes_before: Vec<usize> = (0..CLIENTS)
        .map(|i| clients.state(i).closes.len())
        .collect();

    // The cut: server `cut` loses its routes; every edge still reaches it.
    let accepted_before = publisher.accepted();
    let fault = Instant::now();
    let groups: Vec<String> = (0..3).map(|i| nats.group(i)).collect();
    let others: Vec<&str> = majority.iter().map(|&i| groups[i].as_str()).collect();
    faults.partition(&[groups[cut].as_str()], &others);
    let survivor = &nats.servers[majority[0]];
    // The minority's edge: a publish through it (its own channel, so the
    // numbered ones stay in order), and what its clients see.
    let probe = tokio::spawn({
        let addr = edges[cut].addr;
        async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let body = json!({ "channel": "partprobe", "data": {}, "idempotency_key": "probe" })
                .to_string();
            let t = Instant::now();
            let r = api_publish(addr, &body).await;
            (r.map(|_| ()), t.elapsed())
        }
    });
    let mut elected = None;
    // Longest a client of the cut server's edge stayed connected missing an
    // acknowledged publication.
    let mut silent_max = Duration::ZERO;
    // For each client of the cut server's edge still on its first
    // connection: since when it misses an acknowledged publication (the
    // acknowledgement of the first one it does not hold).
    let mut missing_since: BTreeMap<usize, Instant> = BTreeMap::new();
    while fault.elapsed() < CUT_FOR {
        if elected.is_none() {
            if let Some(new) = stream_leader(survivor).await {
                if new != leader {
                    elected = Some((fault.elapsed(), new));
                }
            }
        }
        {
            let st = publisher.stats.lock().unwrap();
            for &i in &on_cut {
                let s = clients.state(i);
                if s.id.is_empty() || s.closes.len() != closes_before[i] {
                    // Told (closed, or 2500) or gone: no longer silent.
                    if let Some(since) = missing_since.remove(&i) {
                        silent_max = silent_max.max(since.elapsed());
                    }
                    continue;
                }
                match st.acked_at[i % CHANNELS].get(s.last as usize) {
                    Some(&at) => {
                        missing_since.entry(i).or_insert(at);
                    }
                    None => {
                        // Holds everything acknowledged (its edge caught up).
                        if let Some(since) = missing_since.remove(&i) {
                            silent_max = silent_max.max(since.elapsed());
                        }
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let accepted_during = publisher.accepted() - accepted_before;
    let behind_at_heal = on_cut
        .iter()
        .filter(|&&i| clients.state(i).last < publisher.acked[i % CHANNELS].load(Ordering::SeqCst))
        .count();
    let closed_during: usize = on_cut
        .iter()
        .map(|&i| clients.state(i).closes.len() - closes_before[i])
        .sum();
    let due: Vec<u64> = publisher
        .acked
        .iter()
        .map(|a| a.load(Ordering::SeqCst))
        .collect();
    let top = stream(survivor).await.expect("the stream on the majority")["state"]["last_seq"]
        .as_u64()
        .unwrap_or(0);
    let healed = Instant::now();
    faults.heal();
    // The cut server's replica catches up; its edge's clients get what
    // they missed (a gap repaired from JetStream at the next publication).
    let (mut replica_at, mut clients_at) = (None, None);
    while replica_at.is_none() || clients_at.is_none() {
        assert!(
            healed.elapsed() < WAIT,
            "{WAIT:?} after the heal: the cut replica caught up {replica_at:?}, its edge's \
             clients {clients_at:?}"
        );
        if replica_at.is_none() {
            let seq = stream(&nats.servers[cut])
                .await
                .map(|s| s["state"]["last_seq"].clone());
            if seq.and_then(|v| v.as_u64()).is_some_and(|s| s >= top) {
                replica_at = Some(healed.elapsed());
            }
        }
        for &i in &on_cut {
            if clients.state(i).last >= due[i % CHANNELS] {
                if let Some(since) = missing_since.remove(&i) {
                    silent_max = silent_max.max(since.elapsed());
                }
            }
        }
        if clients_at.is_none()
            && on_cut
                .iter()
                .all(|&i| clients.state(i).last >= due[i % CHANNELS])
        {
            clients_at = Some(healed.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (replica_at, clients_at) = (replica_at.unwrap(), clients_at.unwrap());
    let (probe, probe_took) = probe.await.expect("probe");

    // After the heal: the replicas agree, publishing goes on 2 s, then
    // everybody holds everything once, in order.
    tokio::time::sleep(Duration::from_secs(2)).await;
    if std::env::var_os("NATS_FAULTS_INJECT_DUPLICATE").is_some() {
        // What a retry without its idempotency key stores: the last
        // publication of channel 0 a second time.
        let n = publisher.acked[0].load(Ordering::SeqCst);
        let body = json!({ "channel": channel(0), "data": { "n": n } }).to_string();
        api_publish(edges[majority[0]].addr, &body)
            .await
            .expect("the duplicate");
    }
    let (acked, stats) = publisher.stop().await;
    clients.assert_complete(&acked).await;
    let state = replicas_agree(&nats, Instant::now()).await;
    let published: u64 = acked.iter().map(|a| a.load(Ordering::SeqCst)).sum();
    // Every message of the stream: the first one, the numbered ones, and
    // the probe if it was stored (it answered OK, or was kept anyway).
    let probe_stored = match &probe {
        Ok(()) => 1,
        Err(_) => state.0.saturating_sub(1 + published).min(1),
    };
    assert_eq!(
        state.0,
        1 + published + probe_stored,
        "the stream holds {} messages for {published} acknowledged publications \
         (+1 first, +{probe_stored} probe): lost or duplicated",
        state.0
    );
    assert!(
        accepted_during > 0,
        "no publication acknowledged through the majority during the cut"
    );
    // Longest time without an acknowledgement during the cut.
    let mut times: Vec<Instant> = stats
        .acked_at
        .iter()
        .flatten()
        .copied()
        .filter(|t| *t > fault && *t < healed)
        .collect();
    times.push(fault);
    times.push(healed);
    times.sort();
    let stall = times
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    let (elected_after, new_leader) = elected.expect("no new stream leader during the cut");
    let log = edges[cut].log();
    let fenced = log.contains("closing every client connection");
    let quorum_lost = log.contains("committed nothing through this NATS server");
    println!(
        "NATS server {leader} (stream leader) cut from its cluster for {}: new leader {new_leader} \
         after {}; {accepted_during} publications acknowledged through the majority's edges \
         during the cut; longest gap between acknowledgements {}; failed attempts (retried) {:?}",
        secs(CUT_FOR),
        secs(elected_after),
        secs(stall),
        stats.failed
    );
    println!(
        "the cut server's edge ({}): a publish through it answered {probe:?} after {}; its {} \
         clients: {behind_at_heal} missing acknowledged publications at the heal, \
         {closed_during} closes during the cut, quorum lost noticed: {quorum_lost}, fenced: \
         {fenced}; they held everything {} after the heal; longest a client stayed connected \
         missing an acknowledged publication: {}",
        edges[cut].name,
        secs(probe_took),
        on_cut.len(),
        secs(clients_at),
        secs(silent_max)
    );
    assert!(
        silent_max <= SILENT_AT_MOST,
        "a client of the cut server's edge stayed connected for {} missing acknowledged \
         publications (at most {}); the edge noticed the lost quorum: {quorum_lost}",
        secs(silent_max),
        secs(SILENT_AT_MOST)
    );
    println!(
        "after the heal: the cut replica caught up after {}; at the end the three replicas \
         agree ({} messages, seq {}..{}); {published} publications, every client holds its \
         channel's once, in order",
        secs(replica_at),
        state.0,
        state.1,
        state.2
    );
    clients.stop().await;
    drop(edges);
    drop((membership, nats));
    drop(faults);
}
