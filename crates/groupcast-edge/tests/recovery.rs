//! Recovery (DESIGN.md invariant 2): a client that resubscribes with its
//! `{offset, epoch}` inside the history window gets every missed publication
//! exactly once, then the live stream, with no gap and no duplicate.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use groupcast_core::broker::memory::MemoryBroker;
use groupcast_core::broker::{
    BrokerError, BrokerHandler, HistoryQuery, HistoryResult, PublishOptions,
};
use groupcast_core::membership::memory::MemoryMembership;
use groupcast_core::{Broker, ChannelOptions, NamespaceConfig, Node, Publication, StreamPosition};
use groupcast_proto::client::ClientInfo;
use groupcast_testkit::{Client, TestServer};
use proptest::prelude::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(5);

/// A subscriber that remembers its stream position and every offset it saw.
struct Tracker {
    channel: String,
    epoch: String,
    offset: u64,
    seen: Vec<u64>,
    recovered: Vec<bool>,
}

impl Tracker {
    fn new(channel: &str) -> Tracker {
        Tracker {
            channel: channel.into(),
            epoch: String::new(),
            offset: 0,
            seen: Vec::new(),
            recovered: Vec::new(),
        }
    }

    /// Subscribe (recovering when we have a position) and take the reply.
    async fn subscribe(&mut self, c: &mut Client) {
        let mut body = json!({ "channel": self.channel });
        if !self.epoch.is_empty() {
            body["recover"] = json!(true);
            body["offset"] = json!(self.offset);
            body["epoch"] = json!(self.epoch);
        }
        let r = c.command("subscribe", body).await.unwrap();
        let s = &r["subscribe"];
        assert!(s.is_object(), "subscribe failed: {r}");
        if !self.epoch.is_empty() {
            self.recovered.push(s["recovered"] == true);
            assert_eq!(s["was_recovering"], true);
        }
        for p in s["publications"].as_array().cloned().unwrap_or_default() {
            self.take(p["offset"].as_u64().unwrap());
        }
        self.epoch = s["epoch"].as_str().unwrap().to_string();
        self.offset = self.offset.max(s["offset"].as_u64().unwrap_or(0));
    }

    fn take(&mut self, offset: u64) {
        self.seen.push(offset);
        self.offset = offset;
    }

    /// Read pushes until `offset` has been seen (or time runs out).
    async fn read_until(&mut self, c: &mut Client, offset: u64) {
        while self.offset < offset {
            let p: Value = c.push(T).await.unwrap();
            if p["channel"] == self.channel.as_str() && p.get("pub").is_some() {
                self.take(p["pub"]["offset"].as_u64().unwrap());
            }
        }
    }
}

async fn publish(s: &TestServer, channel: &str, n: u64) -> u64 {
    let (status, r) = s
        .api("publish", json!({"channel": channel, "data": {"n": n}}))
        .await;
    assert_eq!(status, 200, "{r}");
    r["result"]["offset"].as_u64().unwrap()
}

#[tokio::test]
async fn missed_publications_are_recovered_then_live() {
    let s = TestServer::start().await;
    let mut t = Tracker::new("news");
    let mut c = s.client("a").await;
    t.subscribe(&mut c).await;
    for n in 1..=3 {
        publish(&s, "news", n).await;
    }
    t.read_until(&mut c, 3).await;
    c.close().await;
    for n in 4..=7 {
        publish(&s, "news", n).await;
    }
    let mut c = s.client("a").await;
    t.subscribe(&mut c).await;
    assert_eq!(t.recovered, [true]);
    assert_eq!(
        t.seen,
        [1, 2, 3, 4, 5, 6, 7],
        "missed 4..7 recovered in the reply"
    );
    publish(&s, "news", 8).await;
    t.read_until(&mut c, 8).await;
    assert_eq!(t.seen, (1..=8).collect::<Vec<_>>());
}

#[tokio::test]
async fn outside_the_window_is_not_recovered() {
    let mut config = TestServer::dev_config();
    config.namespaces = vec![NamespaceConfig {
        name: "small".into(),
        options: ChannelOptions {
            history_size: 3,
            ..ChannelOptions::dev()
        },
    }];
    let s = TestServer::start_with(config).await;
    let mut c = s.client("a").await;
    let r = c
        .command("subscribe", json!({"channel":"small:x"}))
        .await
        .unwrap();
    let epoch = r["subscribe"]["epoch"].as_str().unwrap().to_string();
    c.close().await;
    for n in 1..=10 {
        publish(&s, "small:x", n).await;
    }
    let mut c = s.client("a").await;
    let r = c
        .command(
            "subscribe",
            json!({"channel":"small:x","recover":true,"offset":0,"epoch":epoch}),
        )
        .await
        .unwrap();
    let sub = &r["subscribe"];
    assert_eq!(sub["was_recovering"], true);
    assert!(
        sub.get("recovered").is_none(),
        "7 of 10 fell out of a 3-message window: {r}"
    );
    assert!(
        sub.get("publications").is_none(),
        "no partial history when not recovered: {r}"
    );
    assert_eq!(sub["offset"], 10, "the current position is returned");
    // A foreign epoch is not recovered either.
    let r = c
        .command(
            "subscribe",
            json!({"channel":"news","recover":true,"offset":1,"epoch":"other"}),
        )
        .await
        .unwrap();
    assert!(r["subscribe"].get("recovered").is_none(), "{r}");
}

/// The in-memory broker with history reads slowed down, as a networked
/// backbone's are: publications made while a subscribe reads history land in
/// the hub's recovery buffer, which is what the merge must get right.
struct SlowHistory {
    inner: MemoryBroker,
    delay: Duration,
}

#[async_trait]
impl Broker for SlowHistory {
    fn set_handler(&self, handler: Arc<dyn BrokerHandler>) {
        self.inner.set_handler(handler)
    }
    async fn subscribe(&self, channel: &str) -> Result<(), BrokerError> {
        self.inner.subscribe(channel).await
    }
    async fn unsubscribe(&self, channel: &str) -> Result<(), BrokerError> {
        self.inner.unsubscribe(channel).await
    }
    async fn publish(
        &self,
        channel: &str,
        p: Publication,
        opts: &PublishOptions,
    ) -> Result<StreamPosition, BrokerError> {
        self.inner.publish(channel, p, opts).await
    }
    async fn publish_join(&self, channel: &str, info: Arc<ClientInfo>) -> Result<(), BrokerError> {
        self.inner.publish_join(channel, info).await
    }
    async fn publish_leave(&self, channel: &str, info: Arc<ClientInfo>) -> Result<(), BrokerError> {
        self.inner.publish_leave(channel, info).await
    }
    async fn history(
        &self,
        channel: &str,
        query: HistoryQuery,
    ) -> Result<HistoryResult, BrokerError> {
        // Half the delay before reading, half after: publications land both
        // before the read (also in history: duplicates) and after (gap unless merged).
        tokio::time::sleep(self.delay / 2).await;
        let r = self.inner.history(channel, query).await;
        tokio::time::sleep(self.delay / 2).await;
        r
    }
    async fn remove_history(&self, channel: &str) -> Result<(), BrokerError> {
        self.inner.remove_history(channel).await
    }
}

/// Reconnect-and-recover cycles while a publisher runs concurrently.
async fn recover_under_load(
    total: u64,
    cycles: Vec<(u64, u64)>,
    pause_ms: u64,
) -> Result<(), TestCaseError> {
    let broker = SlowHistory {
        inner: MemoryBroker::default(),
        delay: Duration::from_millis(20),
    };
    let node = Node::new(Arc::new(broker), Arc::new(MemoryMembership::default()));
    let s = TestServer::start_with_node(TestServer::dev_config(), node).await;
    let channel = "prop";
    let mut t = Tracker::new(channel);
    let mut c = s.client("p").await;
    t.subscribe(&mut c).await;

    let addr = s.addr;
    let publisher = tokio::spawn(async move {
        for n in 1..=total {
            let body = json!({"channel": channel, "data": {"n": n}}).to_string();
            let headers = format!("X-API-Key: {}\r\n", groupcast_testkit::API_KEY);
            let (status, _) = groupcast_testkit::http_request(
                addr,
                "POST",
                "/api/publish",
                &headers,
                body.as_bytes(),
            )
            .await;
            assert_eq!(status, 200);
            if pause_ms > 0 {
                tokio::time::sleep(Duration::from_millis(pause_ms)).await;
            }
        }
    });
    for (read_ms, away_ms) in cycles {
        // Read live for a while, then drop the connection and come back.
        let until = tokio::time::Instant::now() + Duration::from_millis(read_ms);
        while tokio::time::Instant::now() < until {
            match c.push(Duration::from_millis(20)).await {
                Ok(p) if p.get("pub").is_some() => t.take(p["pub"]["offset"].as_u64().unwrap()),
                _ => {}
            }
        }
        c.close().await;
        tokio::time::sleep(Duration::from_millis(away_ms)).await;
        c = s.client("p").await;
        t.subscribe(&mut c).await;
    }
    publisher.await.unwrap();
    t.read_until(&mut c, total).await;
    prop_assert!(
        t.recovered.iter().all(|r| *r),
        "every resubscribe recovered: {:?}",
        t.recovered
    );
    prop_assert_eq!(
        t.seen,
        (1..=total).collect::<Vec<_>>(),
        "no gap, no duplicate, in order"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, max_shrink_iters: 8, ..ProptestConfig::default() })]
    #[test]
    fn recovery_has_no_gap_and_no_duplicate(
        total in 20u64..90,
        cycles in prop::collection::vec((0u64..60, 0u64..40), 1..5),
        pause_ms in 0u64..3,
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(recover_under_load(total, cycles, pause_ms))?;
    }
}
