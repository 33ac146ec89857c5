//! Issue 25, item 2: edge-to-edge traffic cannot be forged by a NATS client
//! that is not an edge, even on a NATS server without permissions, once the
//! edges share `nats.cluster_secret`.
//!
//! The attacks, each by a plain NATS client on the edges' NATS server:
//! a hand-built publication envelope with a forged `info` on the live
//! subject and on the history subject (stored by JetStream, republished,
//! and read back by `history`), a forged `join`, and a forged request on
//! the edge's node subject asking it to disconnect a user. A control test
//! sends the same forgeries to a cluster without a secret, where they land:
//! the forged messages are well-formed, so the signature is what stops them.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use groupcast_core::{Payload, Publication};
use groupcast_edge::auth::{mint_hs256, now_unix};
use groupcast_nats::envelope;
use groupcast_nats::subjects::Subjects;
use groupcast_proto::client::ClientInfo;
use groupcast_testkit::edge::{EdgeProcess, EDGE_CONFIG};
use groupcast_testkit::membership::MembershipCluster;
use groupcast_testkit::nats::NatsServer;
use groupcast_testkit::{Client, SECRET};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_groupcast");
const T: Duration = Duration::from_secs(10);
const CHANNEL: &str = "news";
const CLUSTER_SECRET: &str = "a cluster secret for the forgery test";

struct Cluster {
    nats: NatsServer,
    _membership: MembershipCluster,
    edge: EdgeProcess,
}

async fn cluster(secret: Option<&str>) -> Cluster {
    let (nats, membership) = tokio::join!(
        NatsServer::start(),
        MembershipCluster::start(Path::new(BIN), 1, &[])
    );
    let config = format!("{EDGE_CONFIG}{}", membership.edge_section());
    let mut env = vec![("GROUPCAST_CLIENT__COMMAND_RATE", "0")];
    if let Some(s) = secret {
        env.push(("GROUPCAST_NATS__CLUSTER_SECRET", s));
    }
    let edge = EdgeProcess::start(Path::new(BIN), "edge-a", &[nats.url()], &config, &env).await;
    Cluster {
        nats,
        _membership: membership,
        edge,
    }
}

/// alice, connected to the edge and subscribed to [`CHANNEL`].
async fn alice(edge: &EdgeProcess) -> Client {
    let token = mint_hs256(SECRET, &json!({ "sub": "alice", "exp": now_unix() + 3600 }));
    let (mut c, _) = Client::connect(&edge.ws_url(), &token)
        .await
        .expect("connect");
    let r = c
        .command("subscribe", json!({ "channel": CHANNEL }))
        .await
        .unwrap();
    assert!(r["subscribe"].is_object(), "{r}");
    c
}

fn forged_publication() -> bytes::Bytes {
    let mut p = Publication::new(
        Payload::json(Arc::from(
            serde_json::value::to_raw_value(&json!({"text": "forged"})).unwrap(),
        ))
        .unwrap(),
    );
    p.info = Some(Arc::new(ClientInfo {
        user: "support-admin".into(),
        client: "forged-client".into(),
        conn_info: None,
        chan_info: None,
    }));
    envelope::encode_pub(&p)
}

/// Everything the attacker sends, on a NATS connection of its own.
async fn forge(nats_url: &str, edge_name: &str) {
    let attacker = async_nats::connect(nats_url)
        .await
        .expect("attacker connects");
    let subjects = Subjects::new("gc");
    // A live publication with a forged `info`.
    attacker
        .publish(subjects.live(CHANNEL), forged_publication())
        .await
        .unwrap();
    // A forged join.
    let join = envelope::encode_join(&ClientInfo {
        user: "support-admin".into(),
        client: "forged-join".into(),
        conn_info: None,
        chan_info: None,
    });
    attacker
        .publish(subjects.live(CHANNEL), join)
        .await
        .unwrap();
    // The same publication on the history subject: JetStream stores it.
    attacker
        .publish(subjects.history(CHANNEL), forged_publication())
        .await
        .unwrap();
    attacker.flush().await.unwrap();
    // A request on the edge's node subject: disconnect alice. Signed
    // edges do not answer it (the request times out); others carry it out.
    let ask = json!({ "method": "disconnect", "body": { "user": "alice" } });
    let _ = tokio::time::timeout(
        Duration::from_secs(3),
        attacker.request(subjects.node(edge_name), ask.to_string().into()),
    )
    .await;
}

/// Publishes a marker through the API, then collects alice's pushes up to
/// it: the pushes, and whether the marker came (`false`: alice was
/// disconnected first).
async fn pushes_until_marker(c: &mut Client, edge: &EdgeProcess) -> (Vec<Value>, bool) {
    let (status, r) = edge
        .api(
            "publish",
            json!({ "channel": CHANNEL, "data": { "text": "marker" } }),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    let mut got = Vec::new();
    loop {
        let Ok(p) = c.push(T).await else {
            return (got, false);
        };
        if p["pub"]["data"]["text"] == "marker" {
            return (got, true);
        }
        got.push(p);
    }
}

/// The pushes that carry the attacker's forged identity.
fn forged(pushes: &[Value]) -> Vec<&Value> {
    pushes
        .iter()
        .filter(|p| {
            p["pub"]["info"]["user"] == "support-admin"
                || p["join"]["info"]["user"] == "support-admin"
        })
        .collect()
}

async fn history_texts(c: &mut Client) -> Vec<String> {
    let r = c
        .command("history", json!({ "channel": CHANNEL, "limit": -1 }))
        .await
        .unwrap();
    r["history"]["publications"]
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .map(|p| p["data"]["text"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_cluster_secret_forged_backbone_messages_are_dropped() {
    let c = cluster(Some(CLUSTER_SECRET)).await;
    let mut a = alice(&c.edge).await;
    forge(&c.nats.url(), "edge-a").await;
    // Everything the attacker sent went before the marker: none of it
    // reached alice, and she is still connected (the forged disconnect was
    // not carried out).
    let (before, marker) = pushes_until_marker(&mut a, &c.edge).await;
    assert!(
        marker,
        "alice was disconnected by a forged node-bus request"
    );
    assert!(
        forged(&before).is_empty(),
        "forgeries reached alice: {before:?}"
    );
    // The stored forgery is not served from history either.
    let texts = history_texts(&mut a).await;
    assert_eq!(texts, ["marker"], "history holds a forgery: {texts:?}");
    // Each was counted.
    let rejected = c.edge.metrics().await;
    let count = |kind: &str| -> f64 {
        rejected
            .lines()
            .filter(|l| {
                l.starts_with("groupcast_backbone_rejected_total{")
                    && l.contains(&format!("kind=\"{kind}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    // Live publication, join, the republished stored one, and the history read.
    assert!(count("pub") >= 3.0, "pub rejections: {}", count("pub"));
    assert!(count("node") >= 1.0, "node rejections: {}", count("node"));
    // Publications between edges still flow: the marker came through NATS.
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_cluster_secret_the_same_forgeries_land() {
    // The control: the forged messages are well-formed, so in a cluster
    // without a secret (NATS permissions are then the only defence) they
    // reach alice.
    let c = cluster(None).await;
    let mut a = alice(&c.edge).await;
    forge(&c.nats.url(), "edge-a").await;
    let (before, marker) = pushes_until_marker(&mut a, &c.edge).await;
    assert!(
        !forged(&before).is_empty(),
        "no forged publication or join landed without a secret: {before:?}"
    );
    assert!(
        !marker,
        "the forged disconnect was not carried out without a secret"
    );
}
