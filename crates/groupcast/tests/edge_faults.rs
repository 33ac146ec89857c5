//! Edge faults beyond `kill -9` (issue 24, item 2, `docs/failover.md`, "An
//! edge cut off from the membership service"): an edge that loses every
//! membership replica but keeps NATS. The service expires its lease and
//! drops its clients from presence; the other edges tell it over the node
//! bus, and it closes its clients with 3017 (`membership lease lost`) and
//! refuses new ones until the service answers again. Presence (through
//! another edge's API) must equal the live clients within 6 s of the fault
//! and within 6 s of the heal.
//!
//! Runs in a private network namespace with the replicas and the edges in
//! cgroup leaves and iptables rules of their own
//! ([`groupcast_testkit::netfault`]): it needs root, as CI runs it. It
//! prints its figures; `docs/failover.md` records runs of
//! `cargo nextest run -p groupcast --test edge_faults --no-capture`.
//! Run with `GROUPCAST_MEMBERSHIP__LEASE_FENCE=false` (the edges inherit
//! it) it shows the behaviour without the fence, and fails.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use groupcast_edge::auth::{mint_hs256, now_unix};
use groupcast_testkit::edge::{EdgeProcess, EDGE_CONFIG};
use groupcast_testkit::membership::MembershipCluster;
use groupcast_testkit::nats::NatsServer;
use groupcast_testkit::netfault::{self, NetFaults};
use groupcast_testkit::{Client, SECRET};
use serde_json::json;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_groupcast"))
}

/// The promise: presence equals the live clients within this long after
/// the fault and after the heal.
const EXACT_WITHIN: Duration = Duration::from_secs(6);
/// How long the edge stays cut off (its lease expires after 4–5 s).
const CUT_FOR: Duration = Duration::from_secs(9);
/// Bound for everything else waited for.
const WAIT: Duration = Duration::from_secs(20);

/// A client of `user` at `url`, subscribed to `room`; its client id.
async fn member(url: &str, user: &str) -> Result<(Client, String), String> {
    let token = mint_hs256(SECRET, &json!({ "sub": user, "exp": now_unix() + 3600 }));
    let (mut c, reply) = Client::connect(url, &token)
        .await
        .map_err(|e| e.to_string())?;
    let id = reply["connect"]["client"]
        .as_str()
        .ok_or(format!("connect: {reply}"))?
        .to_string();
    let r = c
        .command("subscribe", json!({ "channel": "room" }))
        .await
        .map_err(|e| e.to_string())?;
    if !r["subscribe"].is_object() {
        return Err(format!("subscribe: {r}"));
    }
    Ok((c, id))
}

/// Presence of `room` through `e`'s API: the client ids, or the error.
async fn api_presence(e: &EdgeProcess) -> Result<BTreeSet<String>, String> {
    let (status, v) = e.api("presence", json!({ "channel": "room" })).await;
    match v["result"]["presence"].as_object() {
        Some(p) if status == 200 => Ok(p.keys().cloned().collect()),
        _ => Err(format!("{status} {v}")),
    }
}

/// Asserts that presence through each of `edges` equals `live`.
async fn assert_exact(edges: &[&EdgeProcess], live: &BTreeSet<String>, when: &str) {
    for e in edges {
        let p = api_presence(e).await;
        let Ok(p) = p else {
            panic!("{when}: presence through {} failed: {p:?}", e.name);
        };
        assert!(
            &p == live,
            "{when}: presence through {} is not the live clients: missing {:?}, extra {:?}",
            e.name,
            live.difference(&p).collect::<Vec<_>>(),
            p.difference(live).collect::<Vec<_>>(),
        );
    }
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_cut_off_from_membership_fences_its_clients_and_presence_stays_exact() {
    if !netfault::isolated(
        "an_edge_cut_off_from_membership_fences_its_clients_and_presence_stays_exact",
    ) {
        return;
    }
    let faults = NetFaults::start();
    let (nats, cluster) = tokio::join!(
        NatsServer::start(),
        MembershipCluster::start_placed(bin(), 3, &[], &faults)
    );
    let config = format!("{EDGE_CONFIG}{}", cluster.edge_section());
    let urls = [nats.url()];
    // The clients here answer no pings while they wait: no ping in the test.
    let env = [("GROUPCAST_CLIENT__PING_INTERVAL", "300s")];
    let (a, b, c) = tokio::join!(
        EdgeProcess::start_placed(bin(), "edge-a", &urls, &config, &env, &faults, "edge-a"),
        EdgeProcess::start_placed(bin(), "edge-b", &urls, &config, &env, &faults, "edge-b"),
        EdgeProcess::start_placed(bin(), "edge-c", &urls, &config, &env, &faults, "edge-c"),
    );
    // Two clients on each edge.
    let live = Arc::new(Mutex::new(BTreeSet::new()));
    let mut kept = Vec::new();
    let mut on_c = Vec::new();
    for (e, tag) in [(&a, "a"), (&b, "b"), (&c, "c")] {
        for n in 0..2 {
            let user = format!("{tag}{n}");
            let (client, id) = member(&e.ws_url(), &user).await.expect("member");
            live.lock().unwrap().insert(id.clone());
            if tag == "c" {
                on_c.push((client, id, user));
            } else {
                kept.push(client);
            }
        }
    }
    let c_ids: BTreeSet<String> = on_c.iter().map(|(_, id, _)| id.clone()).collect();
    let deadline = Instant::now() + WAIT;
    while api_presence(&a).await.as_ref() != Ok(&live.lock().unwrap().clone()) {
        assert!(Instant::now() < deadline, "presence never complete");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The cut: edge-c loses every replica; it keeps NATS and its clients.
    let replicas: Vec<String> = (0..cluster.nodes.len()).map(|i| cluster.group(i)).collect();
    let replicas: Vec<&str> = replicas.iter().map(String::as_str).collect();
    let fault = Instant::now();
    faults.partition(&["edge-c"], &replicas);

    // Each client of edge-c: closed with 3017, reconnects to another edge
    // (as a load balancer would send it), enters presence there.
    let mut movers = Vec::new();
    for (i, (mut client, id, user)) in on_c.into_iter().enumerate() {
        let live = live.clone();
        let url = [&a, &b][i % 2].ws_url();
        movers.push(tokio::spawn(async move {
            let closed = client.closed(CUT_FOR).await;
            let closed_at = fault.elapsed();
            if !matches!(&closed, Ok(Some((3017, reason))) if reason == "membership lease lost") {
                return Err(format!(
                    "{id} on edge-c: {closed:?} at {closed_at:?} (expected 3017)"
                ));
            }
            live.lock().unwrap().remove(&id);
            let (client, new_id) = member(&url, &user).await?;
            live.lock().unwrap().insert(new_id);
            Ok((client, closed_at, fault.elapsed()))
        }));
    }

    // Presence through edge-a until the promise's bound.
    let mut samples: Vec<(Duration, Result<BTreeSet<String>, String>)> = Vec::new();
    while fault.elapsed() < EXACT_WITHIN {
        let t = fault.elapsed();
        samples.push((t, api_presence(&a).await));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let live_then = live.lock().unwrap().clone();
    assert_exact(&[&a, &b], &live_then, "6 s after the fault").await;
    let mut reconnected = Vec::new();
    for m in movers {
        reconnected.push(m.await.unwrap().unwrap_or_else(|e| panic!("{e}")));
    }
    let dropped = samples
        .iter()
        .find(|(_, r)| r.as_ref().is_ok_and(|p| p.is_disjoint(&c_ids)))
        .map(|(t, _)| *t)
        .expect("edge-c's clients never left presence: did its lease expire?");
    let exact = samples
        .iter()
        .find(|(t, r)| *t >= dropped && r.as_ref() == Ok(&live_then))
        .map(|(t, _)| *t)
        .expect("presence was exact at 6 s, so a sample was");
    let closed_first = reconnected.iter().map(|r| r.1).min().unwrap();
    let closed_last = reconnected.iter().map(|r| r.1).max().unwrap();
    let moved = reconnected.iter().map(|r| r.2).max().unwrap();
    println!(
        "edge cut off from membership: its clients left presence at {}, were closed (3017) at \
         {}–{}, were subscribed on other edges by {}; presence exact from {} after the fault",
        secs(dropped),
        secs(closed_first),
        secs(closed_last),
        secs(moved),
        secs(exact)
    );
    // While fenced, edge-c refuses new WebSockets (a load balancer tries
    // the next edge).
    let refused = Client::open(&c.ws_url()).await;
    assert!(
        matches!(&refused, Err(e) if e.to_string().contains("503")),
        "a new WebSocket on the fenced edge: {:?}",
        refused.as_ref().map(|_| "accepted")
    );
    let (code, body) = groupcast_testkit::http_request(c.addr, "GET", "/readyz", "", b"").await;
    assert_eq!(code, 503, "{}", String::from_utf8_lossy(&body));
    assert_eq!(c.metric("groupcast_membership_lease_fenced").await, 1.0);
    assert_eq!(
        c.metric("groupcast_membership_lease_fences_total").await,
        1.0
    );
    for e in [&a, &b] {
        assert_eq!(
            e.metric("groupcast_membership_lease_fences_total").await,
            0.0,
            "{} (its lease is valid) fenced",
            e.name
        );
    }

    // The heal: edge-c registers again and takes clients again.
    let rest = CUT_FOR.saturating_sub(fault.elapsed());
    tokio::time::sleep(rest).await;
    let healed = Instant::now();
    faults.heal();
    let (back, back_id) = loop {
        match member(&c.ws_url(), "c-new").await {
            Ok(m) => break m,
            Err(e) => assert!(
                healed.elapsed() < EXACT_WITHIN,
                "edge-c still refuses clients {EXACT_WITHIN:?} after the heal: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let accepting = healed.elapsed();
    live.lock().unwrap().insert(back_id.clone());
    let live_after = live.lock().unwrap().clone();
    let mut exact_after = None;
    while healed.elapsed() < EXACT_WITHIN {
        let t = healed.elapsed();
        let ok = api_presence(&a).await.as_ref() == Ok(&live_after);
        if ok && exact_after.is_none() {
            exact_after = Some(t);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_exact(&[&a, &b, &c], &live_after, "6 s after the heal").await;
    assert_eq!(c.metric("groupcast_membership_lease_fenced").await, 0.0);
    let (code, body) = groupcast_testkit::http_request(c.addr, "GET", "/readyz", "", b"").await;
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    println!(
        "after the heal: edge-c took a client again at {}, presence exact from {}",
        secs(accepting),
        secs(exact_after.expect("exact at 6 s after the heal, so a sample was"))
    );
    drop((back, kept, reconnected));
    drop((a, b, c, cluster, nats));
    drop(faults);
}
