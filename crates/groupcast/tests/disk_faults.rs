//! A full disk (issue 24, `docs/failover.md`, "A full disk"):
//!
//! * a membership replica whose data directory fills up (a follower, then
//!   the leader): the majority keeps committing, the replica exits with a
//!   clear error instead of running on without a working log, its log on
//!   disk stays intact, and once space is back it starts from that log and
//!   catches up with the leader;
//! * a NATS server whose JetStream store is full: at its limit
//!   (`max_file_store`) a history publication is refused at once with 108
//!   and the edge logs the cause, and it is stored again once space is freed
//!   (`history_remove`); on a full disk it answers 108 after
//!   `nats.request_timeout`, and is stored again once nats-server is
//!   restarted with space. Either way nothing stored is lost and live
//!   channels keep delivering.
//!
//! The disks are small tmpfs mounts (`groupcast_testkit::diskfault`) in a
//! mount namespace of the test's own (`netfault::isolated`): those tests
//! need root, as CI runs them. Each prints its figures; `docs/failover.md`
//! records a run of
//! `cargo nextest run -p groupcast --test disk_faults --no-capture`.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use groupcast_core::membership::Membership;
use groupcast_edge::auth::{mint_hs256, now_unix};
use groupcast_membership::certs::TlsFiles;
use groupcast_membership::{MembershipClient, MembershipClientConfig};
use groupcast_proto::client::ClientInfo;
use groupcast_testkit::diskfault::SmallDisk;
use groupcast_testkit::edge::{EdgeProcess, EDGE_CONFIG};
use groupcast_testkit::membership::MembershipCluster;
use groupcast_testkit::nats::NatsServer;
use groupcast_testkit::netfault;
use groupcast_testkit::{Client, SECRET};
use serde_json::{json, Value};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_groupcast"))
}

/// Size of each replica's disk.
const DISK: u64 = 16 << 20;
/// Bound for everything waited for.
const WAIT: Duration = Duration::from_secs(20);
/// Most presence writes made, and longest waited, for a full disk to stop
/// its replica (each entry carries `PAD` bytes, so the log must grow).
const MAX_WRITES: usize = 300;
const EXIT_WITHIN: Duration = Duration::from_secs(10);
const PAD: usize = 2048;

fn info(client: &str) -> ClientInfo {
    let pad = format!("\"{}\"", "x".repeat(PAD));
    ClientInfo {
        user: "u".into(),
        client: client.into(),
        conn_info: Some(Arc::from(
            serde_json::value::RawValue::from_string(pad).unwrap(),
        )),
        ..Default::default()
    }
}

async fn handle(cluster: &MembershipCluster, name: &str) -> MembershipClient {
    let tls = TlsFiles::in_dir(&cluster.certs_dir(), "edge");
    let c = MembershipClient::start(MembershipClientConfig::new(cluster.seeds(), tls, name))
        .await
        .unwrap();
    assert!(c.wait_available(WAIT).await, "{name} never registered");
    c
}

async fn presence(c: &MembershipClient) -> BTreeSet<String> {
    c.presence("room").await.unwrap().into_keys().collect()
}

fn field(s: &serde_json::Value, k: &str) -> Option<u64> {
    s[k].as_u64()
}

/// Waits (bounded) until replica `i` applied what the leader `leader`
/// applied and every running replica holds the same state.
async fn caught_up(cluster: &MembershipCluster, i: usize, leader: usize) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (me, lead) = (cluster.status(i).await, cluster.status(leader).await);
        let done = match (&me, &lead) {
            (Some(me), Some(lead)) => {
                field(me, "applied_index").is_some()
                    && field(me, "applied_index") == field(lead, "applied_index")
                    && field(me, "digest_index") == field(lead, "digest_index")
                    && me["state_digest"] == lead["state_digest"]
            }
            _ => false,
        };
        if done {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "replica {i} did not catch up: {me:?} vs the leader's {lead:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Fills replica `full`'s disk and writes presence through `a` until the
/// replica exits; every write must succeed unless `full` is the leader.
/// Returns the clients written (acknowledged) and the time to the exit.
async fn fill_until_exit(
    cluster: &mut MembershipCluster,
    disks: &[SmallDisk],
    full: usize,
    a: &MembershipClient,
    acked: &mut BTreeSet<String>,
    tried: &mut BTreeSet<String>,
) -> Duration {
    let filled = disks[full].fill();
    let t = Instant::now();
    let leader = cluster.leader(WAIT, &[]).await == Some(full);
    let (mut failed, mut longest) = (0, Duration::ZERO);
    for n in 0..MAX_WRITES {
        if t.elapsed() > EXIT_WITHIN {
            break;
        }
        let client = format!("w-{n}");
        tried.insert(client.clone());
        let one = Instant::now();
        let r = a.add_presence("room", info(&client)).await;
        longest = longest.max(one.elapsed());
        match r {
            Ok(()) => {
                acked.insert(client);
            }
            Err(e) => {
                assert!(leader, "a write failed with a follower's disk full: {e}");
                failed += 1;
            }
        }
        if let Some(status) = cluster.wait_exit(full, Duration::ZERO).await {
            let log = cluster.log(full);
            eprintln!(
                "disk full ({filled} bytes of filler): replica {} exited within {} ms, \
                 {} writes later ({failed} of them failed, the longest took {} ms): {status}",
                cluster.nodes[full].id,
                t.elapsed().as_millis(),
                n + 1,
                longest.as_millis()
            );
            assert!(!status.success(), "it exited with {status}");
            assert!(
                log.contains("No space left on device") && log.contains("Raft stopped"),
                "no clear reason in its log:\n{log}"
            );
            return t.elapsed();
        }
    }
    panic!(
        "replica {} still runs {:?} after its disk filled (at most {MAX_WRITES} writes):\n{}",
        cluster.nodes[full].id,
        t.elapsed(),
        cluster.log(full)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_disk_fills_exits_with_its_log_intact_and_catches_up() {
    if !netfault::isolated("a_replica_whose_disk_fills_exits_with_its_log_intact_and_catches_up") {
        return;
    }
    let disks: Vec<SmallDisk> = (1..=3)
        .map(|i| SmallDisk::mount(&format!("membership-{i}"), DISK))
        .collect();
    let paths: Vec<&Path> = disks.iter().map(SmallDisk::path).collect();
    let mut cluster = MembershipCluster::start_on(bin(), &[], &paths).await;
    let leader = cluster.leader(WAIT, &[]).await.expect("leader");
    let f = (0..3).find(|i| *i != leader).unwrap();
    let a = handle(&cluster, "a").await;
    let mut acked = BTreeSet::new();
    a.add_presence("room", info("first")).await.unwrap();
    acked.insert("first".to_string());
    caught_up(&cluster, f, leader).await;
    let before = field(&cluster.status(f).await.unwrap(), "last_log_index").unwrap();

    let mut tried = BTreeSet::new();
    let _ = fill_until_exit(&mut cluster, &disks, f, &a, &mut acked, &mut tried).await;
    // The majority goes on, under the same leader.
    for n in 0..20 {
        let client = format!("after-{n}");
        a.add_presence("room", info(&client)).await.unwrap();
        acked.insert(client);
    }
    assert_eq!(cluster.leader(WAIT, &[f]).await, Some(leader));
    assert_eq!(presence(&a).await, acked);

    // Started again on the full disk: it says why, and stops again.
    cluster.restart(f);
    let t = Instant::now();
    let again = cluster.wait_exit(f, WAIT).await;
    eprintln!(
        "restarted on the full disk: {again:?} after {} ms",
        t.elapsed().as_millis()
    );
    assert!(
        again.is_some_and(|s| !s.success()),
        "a replica started on a full disk ran on: {again:?}"
    );
    for l in cluster
        .log(f)
        .lines()
        .filter(|l| l.contains("ERROR") || l.contains("Error"))
    {
        eprintln!("  log: {l}");
    }

    // Space back: it starts from its own log and catches up.
    disks[f].free();
    if !cluster.is_running(f) {
        cluster.restart(f);
    }
    let t = Instant::now();
    cluster.wait_ready(f).await;
    let ready = t.elapsed();
    let first = cluster.status(f).await.expect("status");
    caught_up(&cluster, f, leader).await;
    eprintln!(
        "space freed: replica {} ready in {} ms, caught up with the leader in {} ms \
         (its log ended at {} before the disk filled, at {:?} when it started)",
        cluster.nodes[f].id,
        ready.as_millis(),
        t.elapsed().as_millis(),
        before,
        field(&first, "last_log_index"),
    );
    assert!(field(&first, "last_log_index").unwrap_or(0) >= before);
    assert_eq!(presence(&a).await, acked);
    drop(a);
    drop(cluster);
    drop(disks);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_disk_fills_exits_and_the_majority_elects_and_goes_on() {
    if !netfault::isolated("a_leader_whose_disk_fills_exits_and_the_majority_elects_and_goes_on") {
        return;
    }
    let disks: Vec<SmallDisk> = (1..=3)
        .map(|i| SmallDisk::mount(&format!("membership-{i}"), DISK))
        .collect();
    let paths: Vec<&Path> = disks.iter().map(SmallDisk::path).collect();
    let mut cluster = MembershipCluster::start_on(bin(), &[], &paths).await;
    let old = cluster.leader(WAIT, &[]).await.expect("leader");
    let a = handle(&cluster, "a").await;
    let (mut acked, mut tried) = (BTreeSet::new(), BTreeSet::new());
    a.add_presence("room", info("first")).await.unwrap();
    acked.insert("first".to_string());

    let exited = fill_until_exit(&mut cluster, &disks, old, &a, &mut acked, &mut tried).await;
    // The majority elects a leader and takes writes again.
    let t = Instant::now();
    let new = cluster.leader(WAIT, &[old]).await.expect("no new leader");
    let elected = t.elapsed();
    let deadline = Instant::now() + WAIT;
    let mut n = 0;
    loop {
        let client = format!("after-{n}");
        n += 1;
        tried.insert(client.clone());
        if a.add_presence("room", info(&client)).await.is_ok() {
            acked.insert(client);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no write succeeded after the leader's exit"
        );
    }
    let writable = t.elapsed();
    eprintln!(
        "leader's disk full: it exited {} ms after the disk filled; replica {} leader {} ms \
         after that, the first write accepted after {} ms",
        exited.as_millis(),
        cluster.nodes[new].id,
        elected.as_millis(),
        writable.as_millis()
    );
    // Every acknowledged write is there; nothing that was never sent.
    let seen = presence(&a).await;
    assert!(
        acked.is_subset(&seen),
        "acknowledged writes lost: {:?}",
        acked.difference(&seen)
    );
    tried.insert("first".into());
    assert!(seen.is_subset(&tried), "{seen:?}");

    // Space back: the old leader starts from its log and follows.
    disks[old].free();
    cluster.restart(old);
    let t = Instant::now();
    cluster.wait_ready(old).await;
    caught_up(&cluster, old, new).await;
    eprintln!(
        "space freed: the old leader caught up with replica {} in {} ms",
        cluster.nodes[new].id,
        t.elapsed().as_millis()
    );
    assert_eq!(
        cluster.leader(WAIT, &[]).await,
        Some(new),
        "the restart deposed the leader"
    );
    assert_eq!(presence(&a).await, seen);
    drop(a);
    drop(cluster);
    drop(disks);
}

/// The NATS server's JetStream file store limit (`max_file_store`).
const STORE: u64 = 256 << 10;
/// Size of each history publication's padding, and most sent to fill the
/// store.
const PUB_PAD: usize = 4096;
const MAX_PUBS: usize = 400;

async fn api_publish(edge: &EdgeProcess, channel: &str, n: usize) -> Value {
    let data = json!({ "n": n, "pad": "x".repeat(PUB_PAD) });
    let (status, body) = edge
        .api("publish", json!({ "channel": channel, "data": data }))
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn stored(edge: &EdgeProcess, channel: &str) -> Vec<u64> {
    let (status, body) = edge
        .api("history", json!({ "channel": channel, "limit": -1 }))
        .await;
    assert_eq!(status, 200, "{body}");
    body["result"]["publications"]
        .as_array()
        .unwrap_or_else(|| panic!("{body}"))
        .iter()
        .map(|p| p["data"]["n"].as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_jetstream_store_refuses_history_publications_and_keeps_what_it_holds() {
    let (nats, membership) = tokio::join!(
        NatsServer::start_with_store_limit(STORE),
        MembershipCluster::start(bin(), 1, &[])
    );
    let config = format!("{EDGE_CONFIG}{}", membership.edge_section());
    let env = [("GROUPCAST_CLIENT__COMMAND_RATE", "0")];
    let edge = EdgeProcess::start(bin(), "edge-a", &[nats.url()], &config, &env).await;
    let token = mint_hs256(SECRET, &json!({ "sub": "u", "exp": now_unix() + 3600 }));
    // A subscriber of a live channel (namespace `plain` keeps no history).
    let (mut live, _) = Client::connect(&edge.ws_url(), &token).await.unwrap();
    let r = live
        .command("subscribe", json!({ "channel": "plain:live" }))
        .await
        .unwrap();
    assert!(r["subscribe"].is_object(), "{r}");

    // Fill the store through the API.
    let t = Instant::now();
    let mut acked = Vec::new();
    let (refused, took) = loop {
        let n = acked.len();
        let one = Instant::now();
        let body = api_publish(&edge, "full", n).await;
        if body.get("error").is_some() {
            break (body, one.elapsed());
        }
        acked.push(n as u64);
        assert!(
            n < MAX_PUBS,
            "{MAX_PUBS} publications stored in a {STORE}-byte store"
        );
    };
    eprintln!(
        "JetStream store of {STORE} bytes: full after {} publications of {PUB_PAD} bytes \
         ({} ms); the next one answered {refused} in {} ms",
        acked.len(),
        t.elapsed().as_millis(),
        took.as_millis()
    );
    assert_eq!(refused["error"]["code"], 108, "{refused}");
    assert!(!acked.is_empty());
    // A client's publication to a history channel: refused the same way.
    let (mut writer, _) = Client::connect(&edge.ws_url(), &token).await.unwrap();
    let r = writer
        .command(
            "publish",
            json!({ "channel": "full", "data": { "n": 9999, "pad": "x".repeat(PUB_PAD) } }),
        )
        .await
        .unwrap();
    assert_eq!(r["error"]["code"], 108, "{r}");
    // The edge says why, and counts it.
    let log = edge.log();
    let warning = log.lines().find(|l| l.contains("insufficient resources"));
    eprintln!("the edge's log: {warning:?}");
    assert!(
        warning.is_some(),
        "the edge's log does not name the cause:\n{log}"
    );
    assert!(edge.metric("groupcast_nats_publish_errors_total").await >= 2.0);
    // Live channels deliver as before.
    live_delivers(&edge, &mut live, 1).await;
    // Nothing stored is lost.
    assert_eq!(stored(&edge, "full").await, acked);

    // Space freed (the channel's history removed): stored again.
    let (status, body) = edge
        .api("history_remove", json!({ "channel": "full" }))
        .await;
    assert!(status == 200 && body.get("error").is_none(), "{body}");
    let t = Instant::now();
    let body = api_publish(&edge, "full", 10_000).await;
    assert!(body.get("error").is_none(), "after history_remove: {body}");
    eprintln!(
        "history removed: the next publication stored in {} ms",
        t.elapsed().as_millis()
    );
    assert_eq!(stored(&edge, "full").await, vec![10_000]);
    live.close().await;
    writer.close().await;
    drop(edge);
    drop((nats, membership));
}

/// A live (no history) publication through `edge`'s API must reach `live`.
async fn live_delivers(edge: &EdgeProcess, live: &mut Client, n: u64) {
    let (status, body) = edge
        .api(
            "publish",
            json!({ "channel": "plain:live", "data": { "live": n } }),
        )
        .await;
    assert!(status == 200 && body.get("error").is_none(), "{body}");
    let p = live.publication(WAIT).await.unwrap();
    assert_eq!(p["pub"]["data"]["live"], n, "{p}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_server_whose_disk_fills_refuses_history_and_stores_again_after_a_restart() {
    if !netfault::isolated(
        "a_nats_server_whose_disk_fills_refuses_history_and_stores_again_after_a_restart",
    ) {
        return;
    }
    let disk = SmallDisk::mount("nats", 8 << 20);
    let (mut nats, membership) = tokio::join!(
        NatsServer::start_with_store_in(disk.path()),
        MembershipCluster::start(bin(), 1, &[])
    );
    let config = format!("{EDGE_CONFIG}{}", membership.edge_section());
    let env = [("GROUPCAST_CLIENT__COMMAND_RATE", "0")];
    let edge = EdgeProcess::start(bin(), "edge-a", &[nats.url()], &config, &env).await;
    let token = mint_hs256(SECRET, &json!({ "sub": "u", "exp": now_unix() + 3600 }));
    let (mut live, _) = Client::connect(&edge.ws_url(), &token).await.unwrap();
    let r = live
        .command("subscribe", json!({ "channel": "plain:live" }))
        .await
        .unwrap();
    assert!(r["subscribe"].is_object(), "{r}");
    let mut acked = Vec::new();
    let mut epoch = Value::Null;
    for n in 0..5 {
        let body = api_publish(&edge, "full", n).await;
        assert!(body.get("error").is_none(), "{body}");
        epoch = body["result"]["epoch"].clone();
        acked.push(n as u64);
    }

    // Another tenant of the disk fills it.
    let filled = disk.fill();
    let t = Instant::now();
    let body = api_publish(&edge, "full", 100).await;
    let refused_after = t.elapsed();
    eprintln!(
        "NATS store's disk full ({filled} bytes of filler): a history publication answered \
         {body} after {} ms",
        refused_after.as_millis()
    );
    assert_eq!(body["error"]["code"], 108, "{body}");
    assert!(
        nats.log().contains("no space left on device"),
        "nats-server did not report the full disk"
    );
    live_delivers(&edge, &mut live, 1).await;
    assert_eq!(
        stored(&edge, "full").await,
        acked,
        "the stored history changed"
    );

    // Space back: nats-server keeps the stream refused after its write
    // error (2.15); restarted, it stores again.
    disk.free();
    let body = api_publish(&edge, "full", 101).await;
    eprintln!("space freed, nats-server not restarted: {body}");
    if body.get("error").is_none() {
        acked.push(101);
    }
    nats.kill();
    nats.restart().await;
    let t = Instant::now();
    let deadline = Instant::now() + WAIT;
    let body = loop {
        let body = api_publish(&edge, "full", 102).await;
        if body.get("error").is_none() {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "not stored after the restart: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    acked.push(102);
    eprintln!(
        "nats-server restarted: a history publication stored {} ms after it was ready: {body}",
        t.elapsed().as_millis()
    );
    assert_eq!(body["result"]["epoch"], epoch, "the stream was made anew");
    assert_eq!(body["result"]["offset"], acked.len() as u64, "{body}");
    assert_eq!(stored(&edge, "full").await, acked);
    live_delivers(&edge, &mut live, 2).await;
    live.close().await;
    drop(edge);
    drop((nats, membership));
    drop(disk);
}
