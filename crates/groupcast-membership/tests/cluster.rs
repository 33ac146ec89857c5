//! Three replicas in this process (real Raft, real QUIC with mutual TLS on
//! loopback, redb in temp dirs) and edge handles against them.

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use groupcast_core::membership::{ClusterEventKind, Membership};
use groupcast_membership::certs::{self, TlsFiles};
use groupcast_membership::server::{LeaveHook, MembershipServer, ServerConfig};
use groupcast_membership::transport::{Reply, Request};
use groupcast_membership::types::{Command, CommandResult, Delta, EdgeId, Leave};
use groupcast_membership::{Conn, MembershipClient, MembershipClientConfig};
use groupcast_proto::client::ClientInfo;
use parking_lot::Mutex;

struct Cluster {
    dir: tempfile::TempDir,
    servers: Vec<MembershipServer>,
    leaves: Arc<Mutex<Vec<(String, Leave)>>>,
}

fn free_udp() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

impl Cluster {
    async fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        certs::init(dir.path(), false).unwrap();
        certs::issue(dir.path(), "edge", &[]).unwrap();
        let addrs: Vec<SocketAddr> = (0..3).map(|_| free_udp()).collect();
        let peers: BTreeMap<u64, String> = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| (i as u64 + 1, a.to_string()))
            .collect();
        let leaves: Arc<Mutex<Vec<(String, Leave)>>> = Arc::default();
        let mut servers = Vec::new();
        for (i, addr) in addrs.iter().enumerate() {
            let id = i as u64 + 1;
            let name = format!("node-{id}");
            let tls = certs::issue(dir.path(), &name, &[]).unwrap();
            let mut cfg = ServerConfig::new(id, *addr, dir.path().join(&name), tls);
            cfg.peers = peers.clone();
            let sink = leaves.clone();
            let hook: LeaveHook = Arc::new(move |edge: &str, l: &[Leave]| {
                sink.lock()
                    .extend(l.iter().map(|l| (edge.to_string(), l.clone())));
            });
            servers.push(
                MembershipServer::start(cfg, Some(hook), None)
                    .await
                    .unwrap(),
            );
        }
        let c = Cluster {
            dir,
            servers,
            leaves,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut leader = None;
            for s in &c.servers {
                leader = leader.or(s.status().await.leader);
            }
            if leader.is_some() {
                break;
            }
            assert!(Instant::now() < deadline, "no leader elected");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        c
    }

    fn seeds(&self) -> Vec<String> {
        self.servers
            .iter()
            .map(|s| s.local_addr().to_string())
            .collect()
    }

    fn tls(&self) -> TlsFiles {
        TlsFiles::in_dir(self.dir.path(), "edge")
    }

    /// A raw request stream to replica 0 with the cluster's edge certificate
    /// (the endpoint must outlive the stream).
    async fn raw_stream(&self) -> (quinn::Endpoint, quinn::SendStream, quinn::RecvStream) {
        let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        ep.set_default_client_config(certs::quic_client(&self.tls()).unwrap());
        let qc = ep
            .connect(self.servers[0].local_addr(), "127.0.0.1")
            .unwrap()
            .await
            .unwrap();
        let (send, recv) = qc.open_bi().await.unwrap();
        (ep, send, recv)
    }

    /// The reason of the `Failed` reply on `recv`; panics on any other reply.
    async fn failed_reason(mut recv: quinn::RecvStream) -> String {
        let bytes = recv.read_to_end(1 << 20).await.unwrap();
        match groupcast_membership::codec::decode::<Reply>(&bytes).unwrap() {
            Reply::Failed(reason) => reason,
            other => panic!("{other:?}"),
        }
    }

    /// The replicas still answer: three voters.
    async fn assert_serving(&self) {
        let ok = Conn::connect(self.seeds(), &self.tls()).await.unwrap();
        let status = ok.status(Duration::from_secs(5)).await.unwrap();
        assert_eq!(status.voters.len(), 3);
    }

    async fn client(&self, name: &str) -> MembershipClient {
        let c =
            MembershipClient::start(MembershipClientConfig::new(self.seeds(), self.tls(), name))
                .await
                .unwrap();
        assert!(
            c.wait_available(Duration::from_secs(10)).await,
            "edge {name} not registered"
        );
        c
    }
}

fn info(user: &str, client: &str) -> ClientInfo {
    ClientInfo {
        user: user.into(),
        client: client.into(),
        conn_info: Some(
            serde_json::value::RawValue::from_string(r#"{"n":1}"#.into())
                .unwrap()
                .into(),
        ),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_handles_report_and_query_cluster_wide_state() {
    let cluster = Cluster::start().await;
    let a = cluster.client("edge-a").await;
    let b = cluster.client("edge-b").await;
    a.subscribers_changed("chat:1", 3);
    a.connections_changed("alice", 1);
    b.subscribers_changed("chat:1", 2);
    b.subscribers_changed("chat:2", 1);
    b.connections_changed("alice", 2);
    // Awaited joins commit after the deltas queued before them.
    a.add_presence("chat:1", info("alice", "c1")).await.unwrap();
    b.add_presence("chat:1", info("bob", "c2")).await.unwrap();
    b.add_presence("chat:1", info("alice", "c3")).await.unwrap();

    let p = b.presence("chat:1").await.unwrap();
    assert_eq!(p.keys().cloned().collect::<Vec<_>>(), ["c1", "c2", "c3"]);
    // Each linearizable read makes the leader check its quorum; the
    // replicas reuse their connections for that instead of dialling anew.
    let accepted = |c: &Cluster| {
        c.servers
            .iter()
            .map(|s| s.connections_accepted())
            .sum::<u64>()
    };
    let before = accepted(&cluster);
    for _ in 0..20 {
        b.presence_stats("chat:1").await.unwrap();
    }
    assert!(
        accepted(&cluster) <= before + 2,
        "20 queries opened {} connections",
        accepted(&cluster) - before
    );
    assert_eq!(p["c1"].user, "alice");
    assert_eq!(p["c1"].conn_info.as_ref().unwrap().get(), r#"{"n":1}"#);
    let stats = a.presence_stats("chat:1").await.unwrap();
    assert_eq!((stats.num_clients, stats.num_users), (3, 2));
    assert_eq!(
        a.channels("chat:", 100).await.unwrap(),
        BTreeMap::from([("chat:1".to_string(), 5), ("chat:2".to_string(), 1)])
    );
    assert_eq!(a.user_nodes("alice").await.unwrap(), ["edge-a", "edge-b"]);
    assert_eq!(a.edges().await.unwrap().len(), 2);

    a.remove_presence("chat:1", "c1").await.unwrap();
    let p = b.presence("chat:1").await.unwrap();
    assert_eq!(p.keys().cloned().collect::<Vec<_>>(), ["c2", "c3"]);

    // A graceful leave drops the edge's entries and reports them.
    b.close().await.unwrap();
    assert_eq!(a.presence_stats("chat:1").await.unwrap().num_clients, 0);
    let left: Vec<String> = cluster
        .leaves
        .lock()
        .iter()
        .map(|(_, l)| l.presence.client.clone())
        .collect();
    assert_eq!(left, ["c2", "c3"]);
    assert_eq!(a.user_nodes("alice").await.unwrap(), ["edge-a"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_raft_backed_handle_passes_the_membership_conformance_suite() {
    use groupcast_core::conformance::membership;
    let cluster = Cluster::start().await;
    let n = std::sync::atomic::AtomicUsize::new(0);
    membership::run_all(|| {
        let i = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut cfg =
            MembershipClientConfig::new(cluster.seeds(), cluster.tls(), format!("conf-{i}"));
        cfg.presence_max_clients = membership::MAX_CLIENTS;
        async move {
            let c = MembershipClient::start(cfg).await.unwrap();
            assert!(c.wait_available(Duration::from_secs(10)).await);
            Arc::new(c) as Arc<dyn Membership>
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_presence_limit_is_enforced_cluster_wide() {
    let cluster = Cluster::start().await;
    let mut cfg = MembershipClientConfig::new(cluster.seeds(), cluster.tls(), "edge-a");
    cfg.presence_max_clients = 2;
    let a = MembershipClient::start(cfg.clone()).await.unwrap();
    assert!(a.wait_available(Duration::from_secs(10)).await);
    cfg.edge_name = "edge-b".into();
    let b = MembershipClient::start(cfg).await.unwrap();
    assert!(b.wait_available(Duration::from_secs(10)).await);
    a.add_presence("room", info("u1", "1")).await.unwrap();
    b.add_presence("room", info("u2", "2")).await.unwrap();
    assert_eq!(
        b.add_presence("room", info("u3", "3")).await,
        Err(groupcast_core::MembershipError::LimitExceeded(
            "presence_max_clients"
        ))
    );
    // Re-adding a present client is not a new entry.
    a.add_presence("room", info("u1", "1")).await.unwrap();
    assert_eq!(a.presence("room").await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_batch_is_applied_once() {
    let cluster = Cluster::start().await;
    let conn = Conn::connect(cluster.seeds(), &cluster.tls())
        .await
        .unwrap();
    let edge = EdgeId {
        name: "raw".into(),
        incarnation: 7,
    };
    let write = |cmd: Command| {
        let conn = &conn;
        async move {
            match conn
                .call(&Request::Write(cmd), Duration::from_secs(5))
                .await
                .unwrap()
            {
                Reply::Written(r) => r,
                other => panic!("{other:?}"),
            }
        }
    };
    write(Command::Register {
        edge: edge.clone(),
        addr: String::new(),
        ttl_ms: 60_000,
        version: String::new(),
        started_unix: 0,
    })
    .await;
    let batch = Command::Batch {
        edge: edge.clone(),
        seq: 1,
        reset: false,
        deltas: vec![Delta::Subscribers {
            channel: "once".into(),
            delta: 1,
        }],
    };
    // The same batch three times, as a handle retrying after lost replies.
    assert_eq!(
        write(batch.clone()).await,
        CommandResult::Batch {
            applied: true,
            refused: vec![]
        }
    );
    for _ in 0..2 {
        assert_eq!(
            write(batch.clone()).await,
            CommandResult::Batch {
                applied: false,
                refused: vec![]
            }
        );
    }
    let a = cluster.client("reader").await;
    assert_eq!(
        a.channels("once", 10).await.unwrap(),
        BTreeMap::from([("once".to_string(), 1)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_that_stops_renewing_is_removed_within_ttl_and_each_entry_leaves() {
    let cluster = Cluster::start().await;
    let doomed = cluster.client("doomed").await;
    let survivor = cluster.client("survivor").await;
    // An edge that leaves later, gracefully: its leave is the marker after
    // which no more announcements of the dead edge's entries may come (named
    // after the survivor, which stays the first live edge by name, the one
    // that announces a dead edge's cluster events).
    // Its user going offline then is a cluster event of a gone edge, the
    // survivor's to announce after the dead edge's.
    let marker = cluster.client("zz-marker").await;
    marker.connections_changed("mark-user", 1);
    marker.add_presence("m", info("w", "mk")).await.unwrap();
    // The survivor announces the cluster events the dead edge caused (its
    // channels vacated, its users offline), and only those.
    let events: Arc<Mutex<Vec<(ClusterEventKind, String)>>> = Arc::default();
    let sink = events.clone();
    survivor.set_event_handler(Arc::new(move |e| sink.lock().push((e.kind, e.name))));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ttl = Duration::from_secs(5);
    for (ch, client) in [("a", "d1"), ("a", "d2"), ("b", "d3"), ("c", "d4")] {
        doomed.add_presence(ch, info("u", client)).await.unwrap();
    }
    doomed.subscribers_changed("a", 2);
    doomed.connections_changed("du", 1);
    survivor.add_presence("a", info("v", "s1")).await.unwrap();
    assert_eq!(survivor.presence("a").await.unwrap().len(), 3);
    // The surviving edge is told about each entry of the dead one (it
    // pushes the `leave`s to its own subscribers).
    let announced: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let sink = announced.clone();
    survivor.set_leave_handler(Arc::new(move |channel: &str, i: ClientInfo| {
        sink.lock().push((channel.to_string(), i.client));
    }));

    // The edge "crashes": no deregistration, no more renewals.
    drop(doomed);
    let stopped = Instant::now();
    loop {
        // (A linearizable read can be refused for a moment when a starved
        // replica misses the quorum check: asked again.)
        let answers = (
            survivor.presence("a").await,
            survivor.presence_stats("b").await,
            survivor.presence_stats("c").await,
        );
        if let (Ok(a), Ok(b), Ok(c)) = answers {
            if a.len() == 1 && b.num_clients == 0 && c.num_clients == 0 {
                assert!(a.contains_key("s1"), "the other edge's entry stays");
                break;
            }
        }
        // The lease runs out at the TTL; what follows (the leader's lease
        // check every 200 ms, a Raft commit, this query) is given 3 s more
        // on a busy machine: less than a second lease.
        assert!(
            stopped.elapsed() <= ttl + Duration::from_secs(3),
            "presence of a dead edge still there after TTL + 3 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        stopped.elapsed() >= ttl - Duration::from_millis(1100),
        "removed before its lease could have expired ({:?})",
        stopped.elapsed()
    );
    let mut left: Vec<(String, String, String)> = cluster
        .leaves
        .lock()
        .iter()
        .map(|(edge, l)| (edge.clone(), l.channel.clone(), l.presence.client.clone()))
        .collect();
    left.sort();
    let want: Vec<(String, String, String)> = [("a", "d1"), ("a", "d2"), ("b", "d3"), ("c", "d4")]
        .iter()
        .map(|(ch, c)| ("doomed".to_string(), ch.to_string(), c.to_string()))
        .collect();
    assert_eq!(left, want, "one leave per entry, from the leader only");
    // The survivor's handle polls removals every 250 ms, in removal order:
    // once it announced the marker edge's entry (removed after the dead
    // edge's were announced), a repeat would have come before it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while announced.lock().len() < 4 {
        assert!(
            Instant::now() < deadline,
            "announced within 20 s: {:?}",
            announced.lock()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    marker.close().await.unwrap();
    let mark = ("m".to_string(), "mk".to_string());
    while !announced.lock().contains(&mark) {
        assert!(
            Instant::now() < deadline,
            "the marker edge's leave announced within 20 s: {:?}",
            announced.lock()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut announced = announced.lock().clone();
    assert_eq!(announced.pop(), Some(mark), "the marker came last");
    announced.sort();
    let want: Vec<(String, String)> = [("a", "d1"), ("a", "d2"), ("b", "d3"), ("c", "d4")]
        .iter()
        .map(|(ch, c)| (ch.to_string(), c.to_string()))
        .collect();
    assert_eq!(
        announced, want,
        "the other edge hears of each entry of the dead edge, once"
    );
    assert_eq!(
        survivor.channels("", 10).await.unwrap(),
        BTreeMap::new(),
        "its subscriptions are gone too"
    );
    assert!(survivor
        .edges()
        .await
        .unwrap()
        .iter()
        .all(|e| e.edge.name != "doomed"));
    // (The marker edge's user offline comes last: nothing else before it.)
    let mark = (ClusterEventKind::UserOffline, "mark-user".to_string());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !events.lock().contains(&mark) {
        assert!(
            Instant::now() < deadline,
            "cluster events within 20 s: {:?}",
            events.lock()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        *events.lock(),
        [
            (ClusterEventKind::ChannelVacated, "a".to_string()),
            (ClusterEventKind::UserOffline, "du".to_string()),
            mark,
        ],
        "the dead edge's occupied/online were its own to announce; its vacated/offline are the survivor's"
    );
}

/// Kubernetes Service IPs are not known when the chart issues certificates:
/// every replica holds one shared name, and edges check that name instead of
/// the address they dial.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_can_be_checked_against_a_name_other_than_the_address() {
    let cluster = Cluster::start().await;
    let first = vec![cluster.seeds()[0].clone()];
    let status = |name: &str| {
        let tls = cluster.tls().with_server_name(Some(name.to_string()));
        let seeds = first.clone();
        async move {
            let conn = Conn::connect(seeds, &tls).await.unwrap();
            conn.status(Duration::from_secs(2)).await
        }
    };
    // Replica 1's certificate holds `node-1` (and 127.0.0.1), not `node-2`.
    let s = status("node-1")
        .await
        .expect("the name its certificate holds");
    assert_eq!(s.id, 1);
    assert!(status("node-2").await.is_err(), "a name it does not hold");
    // Empty: the dialled host (127.0.0.1) is checked, as before.
    assert!(status("").await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_are_refused_and_junk_frames_get_an_error() {
    let cluster = Cluster::start().await;
    // A certificate from another CA: the handshake fails.
    let other = tempfile::tempdir().unwrap();
    certs::init(other.path(), false).unwrap();
    let stranger = certs::issue(other.path(), "edge", &[]).unwrap();
    let conn = Conn::connect(cluster.seeds(), &stranger).await.unwrap();
    assert!(conn.status(Duration::from_secs(2)).await.is_err());

    // A cluster certificate but a malformed request: a clear error, and the
    // replica keeps serving.
    let (_ep, mut send, recv) = cluster.raw_stream().await;
    send.write_all(b"\xff\xff not a request").await.unwrap();
    send.finish().unwrap();
    let reason = Cluster::failed_reason(recv).await;
    assert!(reason.starts_with("bad request"), "{reason}");
    cluster.assert_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_batch_leaves_without_waiting_for_the_flush_interval() {
    let cluster = Cluster::start().await;
    let mut cfg = MembershipClientConfig::new(cluster.seeds(), cluster.tls(), "full");
    // Only the size bound can send these within the test.
    cfg.flush_interval = Duration::from_secs(3600);
    cfg.batch_max = 4;
    let a = MembershipClient::start(cfg).await.unwrap();
    assert!(a.wait_available(Duration::from_secs(10)).await);
    let joins: Vec<_> = (0..8)
        .map(|i| {
            let a = a.clone();
            tokio::spawn(async move { a.add_presence("full", info("u", &format!("c{i}"))).await })
        })
        .collect();
    for j in joins {
        j.await.unwrap().unwrap();
    }
    assert_eq!(a.presence("full").await.unwrap().len(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_the_limit_is_refused_and_the_replica_goes_on() {
    use groupcast_membership::transport::MAX_FRAME_BYTES;
    let cluster = Cluster::start().await;
    let (_ep, mut send, recv) = cluster.raw_stream().await;
    let chunk = vec![0u8; 1 << 20];
    let sender = tokio::spawn(async move {
        // The replica stops reading at the limit; the rest may be refused.
        for _ in 0..=(MAX_FRAME_BYTES >> 20) {
            if send.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = send.finish();
    });
    let reason = Cluster::failed_reason(recv).await;
    assert!(reason.contains("over MAX_FRAME_BYTES"), "{reason}");
    sender.abort();
    cluster.assert_serving().await;
}
