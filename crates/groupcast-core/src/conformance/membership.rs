//! The conformance suite every [`Membership`] implementation passes: the
//! in-memory one in its unit tests, the Raft-backed edge handle against a
//! real three-replica cluster in `groupcast-membership`'s tests.
//!
//! Call [`run_all`] with a factory returning a fresh handle configured with
//! a presence limit of [`MAX_CLIENTS`] per channel. Each check uses its own
//! channels and users, so handles may share one cluster. Counts fed through
//! `subscribers_changed` / `connections_changed` are eventually consistent:
//! the checks wait for them (bounded: [`SETTLE`]).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use groupcast_proto::client::ClientInfo;

use crate::membership::{ClusterEventKind, Membership, MembershipError, PresenceStats};

/// The presence limit per channel the factory's handles must have.
pub const MAX_CLIENTS: u32 = 3;

/// Longest wait for an eventually consistent count.
pub const SETTLE: Duration = Duration::from_secs(5);

fn unique(prefix: &str) -> String {
    format!("conf-{prefix}-{:x}", rand::random::<u64>())
}

fn info(user: &str, client: &str, conn_info: Option<&str>) -> ClientInfo {
    ClientInfo {
        user: user.into(),
        client: client.into(),
        conn_info: conn_info.map(|j| {
            serde_json::value::RawValue::from_string(j.to_string())
                .expect("valid JSON")
                .into()
        }),
        chan_info: None,
    }
}

/// Polls `check` until it returns true (bounded by [`SETTLE`]).
async fn settles<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + SETTLE;
    while !check().await {
        assert!(Instant::now() < deadline, "{what} (not within {SETTLE:?})");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Run every check, each on a fresh handle from `make`.
pub async fn run_all<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Membership>>,
{
    presence_entries(make().await).await;
    presence_limit(make().await).await;
    subscriber_counts(make().await).await;
    user_connections(make().await).await;
    node_list(make().await).await;
    user_status(make().await).await;
    cluster_events(make().await).await;
}

/// Added entries are listed at once with their info; adding again replaces;
/// removing takes them out; stats count clients and distinct users.
pub async fn presence_entries(m: Arc<dyn Membership>) {
    let ch = unique("presence");
    let other = unique("presence-other");
    m.add_presence(&ch, info("u1", "c1", None)).await.unwrap();
    m.add_presence(&ch, info("u1", "c2", None)).await.unwrap();
    m.add_presence(&ch, info("u2", "c3", Some(r#"{"n":1}"#)))
        .await
        .unwrap();
    m.add_presence(&other, info("u9", "c9", None))
        .await
        .unwrap();
    let p = m.presence(&ch).await.unwrap();
    assert_eq!(
        p.keys().cloned().collect::<Vec<_>>(),
        ["c1", "c2", "c3"],
        "presence lists exactly the channel's entries"
    );
    assert_eq!(p["c3"].user, "u2");
    assert_eq!(
        p["c3"].conn_info.as_ref().map(|r| r.get().to_string()),
        Some(r#"{"n":1}"#.to_string()),
        "conn_info comes back verbatim"
    );
    assert_eq!(
        m.presence_stats(&ch).await.unwrap(),
        PresenceStats {
            num_clients: 3,
            num_users: 2
        }
    );
    m.add_presence(&ch, info("u1", "c1", Some("[2]")))
        .await
        .unwrap();
    let p = m.presence(&ch).await.unwrap();
    assert_eq!(p.len(), 3, "adding an entry again replaces it");
    assert_eq!(
        p["c1"].conn_info.as_ref().map(|r| r.get().to_string()),
        Some("[2]".to_string())
    );
    m.remove_presence(&ch, "c2").await.unwrap();
    m.remove_presence(&ch, "never-there").await.unwrap();
    let p = m.presence(&ch).await.unwrap();
    assert_eq!(p.keys().cloned().collect::<Vec<_>>(), ["c1", "c3"]);
    m.remove_presence(&ch, "c1").await.unwrap();
    m.remove_presence(&ch, "c3").await.unwrap();
    assert!(m.presence(&ch).await.unwrap().is_empty());
    assert_eq!(
        m.presence_stats(&ch).await.unwrap(),
        PresenceStats::default()
    );
    assert_eq!(m.presence(&other).await.unwrap().len(), 1);
    m.remove_presence(&other, "c9").await.unwrap();
}

/// The per-channel limit refuses a new entry with the limit's name; an
/// existing entry can still be replaced, and a freed place can be taken.
pub async fn presence_limit(m: Arc<dyn Membership>) {
    let ch = unique("limit");
    for i in 0..MAX_CLIENTS {
        m.add_presence(&ch, info("u", &format!("c{i}"), None))
            .await
            .unwrap();
    }
    assert_eq!(
        m.add_presence(&ch, info("u", "extra", None)).await,
        Err(MembershipError::LimitExceeded("presence_max_clients")),
        "one over the limit is refused, naming the limit"
    );
    assert_eq!(
        m.presence(&ch).await.unwrap().len(),
        MAX_CLIENTS as usize,
        "the refused entry is not there"
    );
    m.add_presence(&ch, info("u", "c0", None)).await.unwrap();
    m.remove_presence(&ch, "c0").await.unwrap();
    m.add_presence(&ch, info("u", "extra", None)).await.unwrap();
    for c in ["c1", "c2", "extra"] {
        m.remove_presence(&ch, c).await.unwrap();
    }
}

/// Subscriber counts add up per channel, are listed by prefix and limit,
/// and a channel whose count reaches zero is no longer listed.
pub async fn subscriber_counts(m: Arc<dyn Membership>) {
    let prefix = unique("subs");
    let (a, b) = (format!("{prefix}:a"), format!("{prefix}:b"));
    m.subscribers_changed(&a, 2);
    m.subscribers_changed(&b, 1);
    m.subscribers_changed(&a, 1);
    m.subscribers_changed(&a, -1);
    settles(
        "channels() shows both channels with their counts",
        || async {
            let c = m.channels(&prefix, 100).await.unwrap_or_default();
            c.get(&a) == Some(&2) && c.get(&b) == Some(&1) && c.len() == 2
        },
    )
    .await;
    assert_eq!(m.channels(&prefix, 1).await.unwrap().len(), 1, "limit");
    assert!(
        m.channels(&format!("{prefix}:a"), 100)
            .await
            .unwrap()
            .keys()
            .all(|k| k == &a),
        "prefix filter"
    );
    m.subscribers_changed(&a, -2);
    m.subscribers_changed(&b, -5);
    settles("channels at zero are no longer listed", || async {
        m.channels(&prefix, 100)
            .await
            .map(|c| c.is_empty())
            .unwrap_or(false)
    })
    .await;
}

/// A user with connections here is found on this node, and no longer once
/// they are gone.
pub async fn user_connections(m: Arc<dyn Membership>) {
    let user = unique("user");
    let here = m.local_node().map(|(name, _)| name).unwrap_or_default();
    assert!(m.user_nodes(&user).await.unwrap().is_empty());
    m.connections_changed(&user, 1);
    m.connections_changed(&user, 1);
    settles("user_nodes() names this node", || async {
        m.user_nodes(&user).await.unwrap_or_default() == [here.clone()]
    })
    .await;
    m.connections_changed(&user, -1);
    // Counts are applied in order: once a later marker shows, the decrement
    // has been applied too.
    let marker = unique("marker");
    m.subscribers_changed(&marker, 1);
    settles("a later change is applied", || async {
        m.channels(&marker, 1)
            .await
            .is_ok_and(|c| c.contains_key(&marker))
    })
    .await;
    m.subscribers_changed(&marker, -1);
    assert_eq!(
        m.user_nodes(&user).await.unwrap(),
        std::slice::from_ref(&here),
        "one connection is left"
    );
    m.connections_changed(&user, -1);
    settles("a user without connections is on no node", || async {
        m.user_nodes(&user)
            .await
            .map(|n| n.is_empty())
            .unwrap_or(false)
    })
    .await;
}

/// This node is listed with exactly its counts (a fresh handle has no
/// others).
pub async fn node_list(m: Arc<dyn Membership>) {
    let ch = unique("node");
    let user = unique("node-user");
    let here = m.local_node().map(|(name, _)| name).unwrap_or_default();
    m.subscribers_changed(&ch, 3);
    m.connections_changed(&user, 2);
    settles("nodes() lists this node with its counts", || async {
        let nodes = m.nodes().await.unwrap_or_default();
        nodes.iter().any(|n| {
            n.name == here
                && n.num_subs == 3
                && n.num_channels == 1
                && n.num_clients == 2
                && n.num_users == 1
                && !n.version.is_empty()
        })
    })
    .await;
    m.subscribers_changed(&ch, -3);
    m.connections_changed(&user, -2);
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A user's connections are counted and the last time one opened or closed
/// is kept after they are gone; unknown users are offline, never seen.
pub async fn user_status(m: Arc<dyn Membership>) {
    let (user, nobody) = (unique("status"), unique("nobody"));
    let before = unix_ms();
    m.connections_changed(&user, 1);
    m.connections_changed(&user, 1);
    let asked = [user.clone(), nobody.clone()];
    settles("user_status counts both connections", || async {
        m.user_status(&asked)
            .await
            .is_ok_and(|s| s.len() == 2 && s[0].connections == 2)
    })
    .await;
    let s = m.user_status(&asked).await.unwrap();
    assert_eq!(s[0].user, user);
    assert!(s[0].last_seen_ms >= before, "{s:?}");
    assert_eq!(
        (s[1].user.as_str(), s[1].connections, s[1].last_seen_ms),
        (nobody.as_str(), 0, 0)
    );
    let connected_at = s[0].last_seen_ms;
    tokio::time::sleep(Duration::from_millis(5)).await;
    m.connections_changed(&user, -2);
    settles("offline, seen when the last connection closed", || async {
        m.user_status(std::slice::from_ref(&user))
            .await
            .is_ok_and(|s| s[0].connections == 0 && s[0].last_seen_ms > connected_at)
    })
    .await;
}

/// This node's own transitions are announced to its handler, each once:
/// a channel's first subscriber and its last, a user's first connection and
/// their last. Changes that do not turn a channel or user on or off are not.
pub async fn cluster_events(m: Arc<dyn Membership>) {
    let got = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let sink = got.clone();
    m.set_event_handler(Arc::new(move |e| sink.lock().push(e)));
    // Let a replicated handle start watching before the changes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ch, user) = (unique("occupied"), unique("online"));
    m.subscribers_changed(&ch, 1);
    m.subscribers_changed(&ch, 1);
    m.connections_changed(&user, 1);
    let mine = |got: &[crate::ClusterEvent]| -> Vec<(ClusterEventKind, String, u64)> {
        got.iter()
            .filter(|e| e.name == ch || e.name == user)
            .map(|e| (e.kind, e.name.clone(), e.seq))
            .collect()
    };
    settles("occupied and online announced", || async {
        mine(&got.lock()).len() >= 2
    })
    .await;
    m.subscribers_changed(&ch, -1);
    m.subscribers_changed(&ch, -1);
    m.connections_changed(&user, -1);
    settles("vacated and offline announced", || async {
        mine(&got.lock()).len() >= 4
    })
    .await;
    // Nothing more comes (a duplicate would show now).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = mine(&got.lock());
    let kinds: Vec<(ClusterEventKind, String)> =
        seen.iter().map(|(k, n, _)| (*k, n.clone())).collect();
    assert_eq!(
        kinds,
        [
            (ClusterEventKind::ChannelOccupied, ch.clone()),
            (ClusterEventKind::UserOnline, user.clone()),
            (ClusterEventKind::ChannelVacated, ch.clone()),
            (ClusterEventKind::UserOffline, user.clone()),
        ]
    );
    assert!(
        seen.windows(2).all(|w| w[0].2 < w[1].2),
        "sequence numbers increase: {seen:?}"
    );
}
