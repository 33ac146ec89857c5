//! Upgrading in another order than `docs/operations.md` §8.6 prescribes
//! (issue 24, item 9): the membership replicas before the edges, no
//! rollback of a replica. Between 0.1.0 and this release neither the
//! replicas' log and snapshot format nor the edges' requests changed in a
//! way the other side cannot read, so both hold, and this test holds the
//! project to it (a change that breaks it must change §8.6 and this test):
//!
//! * an edge of this release on 0.1.0 replicas: its clients are in presence,
//!   everywhere, before the replicas are upgraded;
//! * a replica of this release rolled back to 0.1.0, on the log this release
//!   wrote: it becomes ready and applies what the leader applied, and back on
//!   this release it catches up again.
//!
//! The right order under load is chaos (h) (`tests/chaos.rs`). The previous
//! release is built by `scripts/previous-release.sh` (the test command runs
//! it first).

use std::path::Path;
use std::time::{Duration, Instant};

use groupcast_edge::auth::{mint_hs256, now_unix};
use groupcast_testkit::edge::{EdgeProcess, EDGE_CONFIG};
use groupcast_testkit::membership::MembershipCluster;
use groupcast_testkit::nats::NatsServer;
use groupcast_testkit::release;
use groupcast_testkit::{Client, SECRET};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_groupcast");
const WAIT: Duration = Duration::from_secs(30);

/// The client ids in `channel`'s presence as `edge` answers it, or the
/// error it answers.
async fn presence(edge: &EdgeProcess, channel: &str) -> Result<Vec<String>, Value> {
    let (_, v) = edge.api("presence", json!({ "channel": channel })).await;
    match v["result"]["presence"].as_object() {
        Some(p) => Ok(p.keys().cloned().collect()),
        None => Err(v),
    }
}

/// A client of user `user` on `edge`, subscribed to `channel` (presence
/// on), kept open.
async fn subscriber(edge: &EdgeProcess, user: &str, channel: &str) -> (Client, String) {
    let token = mint_hs256(SECRET, &json!({ "sub": user, "exp": now_unix() + 3600 }));
    let (mut c, reply) = Client::connect(&edge.ws_url(), &token)
        .await
        .expect("connect");
    let id = reply["connect"]["client"]
        .as_str()
        .expect("a client id")
        .to_string();
    let r = c
        .command("subscribe", json!({ "channel": channel }))
        .await
        .expect("subscribe");
    assert!(r["subscribe"].is_object(), "subscribe: {r}");
    (c, id)
}

/// Polls `f` every 200 ms until it is true, at most `within`; how long it
/// took, or None.
async fn until<F, Fut>(within: Duration, mut f: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < within {
        if f().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

/// Waits (bounded) until replica `i` applied what replica `leader` did.
async fn caught_up(cluster: &MembershipCluster, i: usize, leader: usize) -> Duration {
    let start = Instant::now();
    loop {
        let (me, lead) = (cluster.status(i).await, cluster.status(leader).await);
        if let (Some(me), Some(lead)) = (&me, &lead) {
            let applied = me["applied_index"].as_u64();
            if applied.is_some() && applied == lead["applied_index"].as_u64() {
                return start.elapsed();
            }
        }
        assert!(
            start.elapsed() < WAIT,
            "replica {i} did not catch up: {me:?} vs the leader's {lead:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `ids` sorted, for comparing presence.
fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_before_the_replicas_and_a_replica_rolled_back_both_hold() {
    let previous = release::previous_binary(Path::new(BIN));
    let (old, new) = (
        release::version_of(&previous),
        release::version_of(Path::new(BIN)),
    );
    assert!(!old.is_empty() && old != new, "{old} / {new}");
    let nats = NatsServer::start().await;
    let mut membership = MembershipCluster::start(&previous, 3, &[]).await;
    let config = format!("{EDGE_CONFIG}{}", membership.edge_section());
    let env = [("GROUPCAST_CLIENT__COMMAND_RATE", "0")];
    let old_edge = EdgeProcess::start(&previous, "edge-old", &[nats.url()], &config, &env).await;
    let (_c0, id0) = subscriber(&old_edge, "u0", "room").await;

    // An edge of this release while the replicas are 0.1.0.
    let new_edge =
        EdgeProcess::start(Path::new(BIN), "edge-new", &[nats.url()], &config, &env).await;
    let (_c1, id1) = subscriber(&new_edge, "u1", "room").await;
    let want = sorted(vec![id0.clone(), id1.clone()]);
    for edge in [&old_edge, &new_edge] {
        let took = until(WAIT, || async {
            presence(edge, "room").await.map(sorted).ok() == Some(want.clone())
        })
        .await;
        eprintln!(
            "upgrade: edge {new} on replicas {old}: presence through {} complete after {took:?}",
            edge.name
        );
        assert!(
            took.is_some(),
            "presence through {} with an edge of {new} on replicas of {old}: {:?} (want {want:?})\n{}",
            edge.name,
            presence(edge, "room").await,
            new_edge.log()
        );
    }

    // The replicas, one at a time, the leader last.
    let leader = membership.leader(WAIT, &[]).await.expect("a leader");
    let order: Vec<usize> = (0..3)
        .filter(|&i| i != leader)
        .chain(std::iter::once(leader))
        .collect();
    for i in order {
        assert!(
            membership.terminate(i, WAIT).await,
            "replica {i} stops on SIGTERM"
        );
        membership.restart_as(i, Path::new(BIN));
        membership.wait_ready(i).await;
    }
    // What this release writes from now on.
    let (_c2, id2) = subscriber(&new_edge, "u2", "room").await;
    let want = sorted(vec![id0, id1, id2]);
    let took = until(WAIT, || async {
        presence(&old_edge, "room").await.map(sorted).ok() == Some(want.clone())
    })
    .await;
    assert!(took.is_some(), "presence after the replicas were upgraded");

    // A follower rolled back to 0.1.0 on this release's log.
    let leader = membership.leader(WAIT, &[]).await.expect("a leader");
    let back = (leader + 1) % 3;
    assert!(membership.terminate(back, WAIT).await);
    membership.restart_as(back, &previous);
    membership.wait_ready(back).await;
    let on_old = caught_up(&membership, back, leader).await;
    // And forward again.
    assert!(
        membership.terminate(back, WAIT).await,
        "{old} replica stops on SIGTERM"
    );
    membership.restart_as(back, Path::new(BIN));
    membership.wait_ready(back).await;
    let on_new = caught_up(&membership, back, leader).await;
    let took = until(WAIT, || async {
        presence(&new_edge, "room").await.map(sorted).ok() == Some(want.clone())
    })
    .await;
    assert!(took.is_some(), "presence after the rollback and back");
    eprintln!(
        "upgrade: replica {back} rolled back to {old}: ready and caught up after {} ms; back on \
         {new}: caught up after {} ms; presence exact",
        on_old.as_millis(),
        on_new.as_millis()
    );
}
