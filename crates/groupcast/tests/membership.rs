//! The membership service as three `groupcast membership` processes on
//! loopback: leader failure under load, snapshot catch-up, a paused leader,
//! and an edge handle riding out an outage.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use groupcast_core::membership::{Membership, MembershipError};
use groupcast_membership::certs::TlsFiles;
use groupcast_membership::transport::{Reply, Request};
use groupcast_membership::types::{
    Command, CommandResult, Delta, EdgeId, Presence, Query, QueryResult,
};
use groupcast_membership::{Conn, MembershipClient, MembershipClientConfig};
use groupcast_proto::client::ClientInfo;
use groupcast_testkit::membership::MembershipCluster;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_groupcast"))
}

/// Writes batches from one edge id as a client that retries each batch
/// (same sequence number) until it is acknowledged.
struct Writer {
    conn: Conn,
    edge: EdgeId,
    seq: u64,
}

const PER_BATCH: u64 = 10;

impl Writer {
    async fn new_unregistered(
        cluster: &MembershipCluster,
        seeds: Vec<String>,
        name: &str,
    ) -> Writer {
        let tls = TlsFiles::in_dir(&cluster.certs_dir(), "edge");
        Writer {
            conn: Conn::connect(seeds, &tls).await.unwrap(),
            edge: EdgeId {
                name: name.into(),
                incarnation: 1,
            },
            seq: 0,
        }
    }

    async fn new(cluster: &MembershipCluster, seeds: Vec<String>, name: &str) -> Writer {
        let w = Self::new_unregistered(cluster, seeds, name).await;
        w.write(Command::Register {
            edge: w.edge.clone(),
            addr: String::new(),
            ttl_ms: 600_000,
            version: String::new(),
            started_unix: 0,
        })
        .await
        .expect("register");
        w
    }

    async fn write(&self, cmd: Command) -> Option<CommandResult> {
        match self
            .conn
            .call(&Request::Write(cmd), Duration::from_secs(3))
            .await
        {
            Ok(Reply::Written(r)) => Some(r),
            _ => None,
        }
    }

    /// One batch: `PER_BATCH` joins in channel `load` and +1 subscriber on
    /// `count` (a duplicate application would over-count). Retried until
    /// acknowledged or `give_up`.
    async fn batch(&mut self, give_up: Instant) -> bool {
        self.seq += 1;
        let deltas: Vec<Delta> = (0..PER_BATCH)
            .map(|i| Delta::Join {
                channel: "load".into(),
                presence: Presence {
                    client: format!("{}-{}-{i}", self.edge.name, self.seq),
                    user: "u".into(),
                    conn_info: None,
                    chan_info: None,
                },
                max_clients: u32::MAX,
            })
            .chain([Delta::Subscribers {
                channel: "count".into(),
                delta: 1,
            }])
            .collect();
        let cmd = Command::Batch {
            edge: self.edge.clone(),
            seq: self.seq,
            reset: false,
            deltas,
        };
        while Instant::now() < give_up {
            if let Some(CommandResult::Batch { .. }) = self.write(cmd.clone()).await {
                return true;
            }
        }
        false
    }

    async fn query(&self, q: Query) -> QueryResult {
        match self
            .conn
            .call(&Request::Query(q), Duration::from_secs(10))
            .await
        {
            Ok(Reply::Query(r)) => r,
            other => panic!("query failed: {other:?}"),
        }
    }

    async fn clients(&self) -> BTreeSet<String> {
        match self
            .query(Query::Presence {
                channel: "load".into(),
            })
            .await
        {
            QueryResult::Presence(p) => p.into_iter().map(|p| p.client).collect(),
            other => panic!("{other:?}"),
        }
    }

    async fn count(&self) -> u64 {
        match self
            .query(Query::Channels {
                prefix: "count".into(),
                limit: 1,
            })
            .await
        {
            QueryResult::Channels(c) => c.get("count").copied().unwrap_or(0),
            other => panic!("{other:?}"),
        }
    }
}

/// Waits (bounded) until every replica in `nodes` reports the same applied
/// index and state digest; returns that index.
async fn converged(cluster: &MembershipCluster, nodes: &[usize], within: Duration) -> u64 {
    let deadline = Instant::now() + within;
    loop {
        let mut seen = Vec::new();
        for &i in nodes {
            let s = cluster.status(i).await;
            seen.push(s.map(|s| (s["digest_index"].as_u64(), s["state_digest"].as_u64())));
        }
        if let Some(Some((Some(index), Some(_)))) = seen.first() {
            if seen.iter().all(|s| s == &seen[0]) {
                return *index;
            }
        }
        assert!(
            Instant::now() < deadline,
            "replicas did not converge: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_under_load_loses_no_acknowledged_batch() {
    let mut cluster = MembershipCluster::start(bin(), 3, &[]).await;
    let leader = cluster
        .leader(Duration::from_secs(10), &[])
        .await
        .expect("leader");
    let old_term = cluster.status(leader).await.unwrap()["term"]
        .as_u64()
        .unwrap();

    // Two edges write continuously; the leader dies once each has ten
    // batches acknowledged, and they write on until each has ten more
    // acknowledged by the new leader (counts, not a time: a busy machine
    // only makes it take longer).
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    let mut counts = Vec::new();
    for name in ["w1", "w2"] {
        let mut w = Writer::new(&cluster, cluster.seeds(), name).await;
        let (stop, count) = (stop.clone(), Arc::new(AtomicU64::new(0)));
        counts.push(count.clone());
        writers.push(tokio::spawn(async move {
            let mut acked = 0u64;
            while !stop.load(Ordering::SeqCst) {
                assert!(
                    w.batch(Instant::now() + Duration::from_secs(30)).await,
                    "batch never acknowledged"
                );
                acked += 1;
                count.store(acked, Ordering::SeqCst);
            }
            (w, acked)
        }));
    }
    let acked_at_least = |n: u64, what: &str| {
        let counts = counts.clone();
        let what = what.to_string();
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while counts.iter().any(|c| c.load(Ordering::SeqCst) < n) {
                assert!(Instant::now() < deadline, "{what}: {counts:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    acked_at_least(10, "ten batches each before the fault").await;
    cluster.kill(leader);
    let at_kill: Vec<u64> = counts.iter().map(|c| c.load(Ordering::SeqCst)).collect();
    let new_leader = cluster
        .leader(Duration::from_secs(15), &[leader])
        .await
        .expect("a new leader is elected");
    let status = cluster.status(new_leader).await.unwrap();
    assert!(status["term"].as_u64().unwrap() > old_term);
    // Ten more each, the last of them surely after the election (a batch
    // in flight at the kill counts one).
    acked_at_least(
        at_kill.iter().max().unwrap() + 11,
        "writing through the failover",
    )
    .await;
    stop.store(true, Ordering::SeqCst);

    let mut acked_total = 0;
    let mut expected = BTreeSet::new();
    let mut reader = None;
    for (h, before) in writers.into_iter().zip(at_kill) {
        let (w, acked) = h.await.unwrap();
        assert!(
            acked > before + 10,
            "{} kept writing through the failover",
            w.edge.name
        );
        acked_total += acked;
        for seq in 1..=acked {
            for i in 0..PER_BATCH {
                expected.insert(format!("{}-{seq}-{i}", w.edge.name));
            }
        }
        reader = Some(w);
    }
    let reader = reader.unwrap();
    let clients = reader.clients().await;
    let missing: Vec<_> = expected.difference(&clients).take(5).collect();
    assert!(
        missing.is_empty(),
        "acknowledged entries lost, e.g. {missing:?}"
    );
    assert_eq!(clients.len(), expected.len());
    assert_eq!(
        reader.count().await,
        acked_total,
        "every batch applied exactly once"
    );

    // The old leader comes back as a follower and converges.
    cluster.restart(leader);
    cluster.wait_ready(leader).await;
    converged(&cluster, &[0, 1, 2], Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_a_compacted_log_catches_up_by_snapshot() {
    let mut cluster = MembershipCluster::start(
        bin(),
        3,
        &["--snapshot-every", "100", "--keep-after-snapshot", "10"],
    )
    .await;
    let leader = cluster
        .leader(Duration::from_secs(10), &[])
        .await
        .expect("leader");
    let follower = (leader + 1) % 3;
    let behind = cluster.status(follower).await.unwrap()["last_log_index"]
        .as_u64()
        .unwrap_or(0);
    cluster.kill(follower);

    let mut w = Writer::new(&cluster, cluster.seeds(), "w").await;
    let give_up = Instant::now() + Duration::from_secs(120);
    for _ in 0..400 {
        assert!(w.batch(give_up).await);
    }
    let ls = cluster.status(leader).await.unwrap();
    let purged = ls["purged_index"]
        .as_u64()
        .expect("the leader compacted its log");
    assert!(
        purged > behind + 1,
        "the entries the follower misses ({behind}..) are only in a snapshot (purged up to {purged})"
    );

    cluster.restart(follower);
    cluster.wait_ready(follower).await;
    let index = converged(&cluster, &[0, 1, 2], Duration::from_secs(30)).await;
    let fs = cluster.status(follower).await.unwrap();
    assert!(
        fs["snapshot_index"].as_u64().unwrap() >= purged,
        "the follower installed a snapshot: {fs}"
    );
    assert!(index >= ls["commit_index"].as_u64().unwrap());
    assert_eq!(w.count().await, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_cannot_commit_and_steps_down_on_resume() {
    let cluster = MembershipCluster::start(bin(), 3, &[]).await;
    let old = cluster
        .leader(Duration::from_secs(10), &[])
        .await
        .expect("leader");
    let old_term = cluster.status(old).await.unwrap()["term"].as_u64().unwrap();
    let others: Vec<usize> = (0..3).filter(|i| *i != old).collect();
    let majority_seeds: Vec<String> = others
        .iter()
        .map(|i| cluster.nodes[*i].addr.clone())
        .collect();
    let old_addr = cluster.nodes[old].addr.clone();

    cluster.pause(old, true);
    // A write sent only to the paused leader: it is not committed while the
    // leader is paused.
    let isolated = Writer::new_unregistered(&cluster, vec![old_addr], "isolated").await;
    let stale = tokio::spawn(async move {
        isolated
            .write(Command::Register {
                edge: isolated.edge.clone(),
                addr: String::new(),
                ttl_ms: 600_000,
                version: String::new(),
                started_unix: 0,
            })
            .await
    });

    // The majority elects a leader and commits.
    let mut w = Writer::new(&cluster, majority_seeds, "majority").await;
    let give_up = Instant::now() + Duration::from_secs(30);
    for _ in 0..20 {
        assert!(w.batch(give_up).await);
    }
    let new = cluster
        .leader(Duration::from_secs(10), &[old])
        .await
        .expect("new leader");
    let new_term = cluster.status(new).await.unwrap()["term"].as_u64().unwrap();
    assert!(new_term > old_term);
    assert_eq!(
        stale.await.unwrap(),
        None,
        "the paused leader acknowledged a write"
    );

    cluster.pause(old, false);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = cluster.status(old).await.unwrap();
        if s["state"] == "Follower" && s["leader"].as_u64() == Some(cluster.nodes[new].id) {
            assert!(s["term"].as_u64().unwrap() >= new_term);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "old leader did not step down: {s}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    converged(&cluster, &[0, 1, 2], Duration::from_secs(20)).await;
    match w.query(Query::Edges).await {
        QueryResult::Edges(e) => assert!(
            e.iter().all(|e| e.edge.name != "isolated"),
            "the write sent to the paused leader was never committed"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(w.count().await, 20);
}

fn info(client: &str) -> ClientInfo {
    ClientInfo {
        user: "u".into(),
        client: client.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_handle_rides_out_an_outage_and_replays_its_deltas() {
    let cluster = MembershipCluster::start(bin(), 3, &[]).await;
    let tls = TlsFiles::in_dir(&cluster.certs_dir(), "edge");
    let mut cfg = MembershipClientConfig::new(cluster.seeds(), tls, "replay");
    cfg.request_timeout = Duration::from_millis(800);
    let replay = MembershipClient::start(cfg.clone()).await.unwrap();
    // A second edge with a tiny buffer: it overflows and resends its state.
    cfg.edge_name = "overflow".into();
    cfg.buffer_max = 5;
    let overflow = MembershipClient::start(cfg).await.unwrap();
    for c in [&replay, &overflow] {
        assert!(c.wait_available(Duration::from_secs(10)).await);
    }
    replay.add_presence("room", info("before")).await.unwrap();

    for i in 0..3 {
        cluster.pause(i, true);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while replay.is_available() || overflow.is_available() {
        assert!(Instant::now() < deadline, "the outage was not noticed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(matches!(
        replay.presence("room").await,
        Err(MembershipError::Unavailable(_))
    ));
    // Pub/sub goes on: joins and leaves return at once and are kept.
    for i in 0..3 {
        replay
            .add_presence("room", info(&format!("r{i}")))
            .await
            .unwrap();
    }
    replay.remove_presence("room", "r0").await.unwrap();
    for i in 0..20 {
        overflow
            .add_presence("big", info(&format!("o{i}")))
            .await
            .unwrap();
    }
    overflow.remove_presence("big", "o0").await.unwrap();
    assert!(replay.pending() >= 4);
    assert!(overflow.pending() <= 5, "the buffer is bounded");

    for i in 0..3 {
        cluster.pause(i, false);
    }
    for c in [&replay, &overflow] {
        assert!(c.wait_available(Duration::from_secs(20)).await);
    }
    let want_room: BTreeSet<String> = ["before", "r1", "r2"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let want_big: BTreeSet<String> = (1..20).map(|i| format!("o{i}")).collect();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let room: BTreeSet<String> = replay
            .presence("room")
            .await
            .unwrap_or_default()
            .into_keys()
            .collect();
        let big: BTreeSet<String> = replay
            .presence("big")
            .await
            .unwrap_or_default()
            .into_keys()
            .collect();
        if room == want_room && big == want_big {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "deltas not replayed: room {room:?}, big has {} of {}",
            big.len(),
            want_big.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_are_added_and_removed_with_the_admin_commands() {
    let mut cluster = MembershipCluster::start(bin(), 3, &[]).await;
    let new = cluster.start_extra(4).await;
    let certs = cluster.certs_dir();
    let via = cluster.nodes[1].addr.clone();
    let new_addr = cluster.nodes[new].addr.clone();
    let admin = |args: &[&str]| {
        let out = std::process::Command::new(bin())
            .arg("membership")
            .args(args)
            .args(["--via", &via, "--certs", certs.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    assert_eq!(
        cluster.readyz(new).await,
        Some((503, "no leader known".to_string())),
        "a replica outside the cluster is not ready"
    );
    let status = admin(&["add", "--id", "4", "--addr", &new_addr]);
    let voters: Vec<&String> = status["voters"].as_object().unwrap().keys().collect();
    assert_eq!(voters, ["1", "2", "3", "4"]);
    cluster.wait_ready(new).await;
    let s4 = cluster.status(new).await.unwrap();
    assert_eq!(s4["voters"].as_object().unwrap().len(), 4, "{s4}");

    let status = admin(&["remove", "--id", "4"]);
    let voters: Vec<&String> = status["voters"].as_object().unwrap().keys().collect();
    assert_eq!(voters, ["1", "2", "3"]);
    let status = admin(&["status"]);
    assert!(status["leader"].as_u64().is_some());
    assert_eq!(status["id"], 2, "status reports the --via replica's view");
}

/// Issue 10's report: edge handles under load across a leader failure. The
/// load loops call the handle back to back, as the benchmark did; while the
/// handle is unavailable its calls return at once, and a loop that never
/// yields starved the handle's own lease renewals on a two-thread runtime,
/// so every live edge lost its lease after the failover. The handle now
/// yields on those paths: it keeps renewing and committing across the
/// leader change, and no live edge is ever removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_handles_under_load_keep_their_leases_across_a_leader_failure() {
    let mut cluster = MembershipCluster::start(bin(), 3, &[]).await;
    let tls = TlsFiles::in_dir(&cluster.certs_dir(), "edge");
    let mut handles = Vec::new();
    for e in 0..3 {
        let mut cfg =
            MembershipClientConfig::new(cluster.seeds(), tls.clone(), format!("loaded-{e}"));
        // Short: the handles surely count the service unavailable during
        // the failover (that is when the loops spun).
        cfg.request_timeout = Duration::from_millis(500);
        let h = MembershipClient::start(cfg).await.unwrap();
        assert!(h.wait_available(Duration::from_secs(10)).await);
        handles.push(h);
    }
    let committed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    // The load runs until the test has seen what it waits for below (the
    // window is set by what happened, not by the clock).
    let stopped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let running = {
        let stopped = stopped.clone();
        move || !stopped.load(std::sync::atomic::Ordering::SeqCst)
    };
    let mut tasks = Vec::new();
    for (e, h) in handles.iter().enumerate() {
        for t in 0..16 {
            let (h, committed, running) = (h.clone(), committed.clone(), running.clone());
            tasks.push(tokio::spawn(async move {
                let client = format!("e{e}-t{t}");
                let channel = format!("load-{}", t % 4);
                let info = ClientInfo {
                    user: format!("u{t}"),
                    client: client.clone(),
                    ..Default::default()
                };
                // Back to back, no pause on failure (as the benchmark did).
                while running() {
                    let a = h.add_presence(&channel, info.clone()).await.is_ok();
                    let r = h.remove_presence(&channel, &client).await.is_ok();
                    if a && r && h.is_available() {
                        committed.fetch_add(2, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }));
        }
    }
    // A reader that also retries at once.
    let reader = handles[0].clone();
    let reading = running.clone();
    tasks.push(tokio::spawn(async move {
        while reading() {
            let _ = reader.presence("load-0").await;
        }
    }));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let old = cluster
        .leader(Duration::from_secs(5), &[])
        .await
        .expect("a leader");
    cluster.kill(old);
    let killed = Instant::now();
    let new = cluster
        .leader(Duration::from_secs(10), &[old])
        .await
        .expect("a new leader");
    let at_failover = committed.load(std::sync::atomic::Ordering::Relaxed);
    // Watched for at least two lease TTLs (and a little more) after the
    // failover, and until the handles committed 1,000 changes on the new
    // leader (bounded: 60 s).
    let mut edges_seen = Vec::new();
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        let s = cluster.status(new).await.expect("the new leader answers");
        edges_seen.push(s["edges"].as_u64().unwrap_or(0));
        let after = committed.load(std::sync::atomic::Ordering::Relaxed) - at_failover;
        if (killed.elapsed() > Duration::from_secs(11) && after > 1000) || Instant::now() > give_up
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stopped.store(true, std::sync::atomic::Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    let after = committed.load(std::sync::atomic::Ordering::Relaxed) - at_failover;
    assert!(
        killed.elapsed() > Duration::from_secs(8),
        "the load ran past two lease TTLs after the failover"
    );
    assert!(
        edges_seen.iter().all(|n| *n == 3),
        "a live edge lost its lease after the failover: registered edges over time {edges_seen:?}"
    );
    assert!(
        after > 1000,
        "the handles kept committing on the new leader (only {after} changes after the failover)"
    );
    // (Its requests time out after 500 ms: on a busy machine a handle may
    // count the service unavailable for a moment; it must come back.)
    for h in &handles {
        assert!(
            h.wait_available(Duration::from_secs(20)).await,
            "{} is available again",
            h.edge().name
        );
    }
}
