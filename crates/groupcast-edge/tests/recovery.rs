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

/// An SDK without a saved position resubscribes with `recover: true,
/// epoch: "", offset: 0`: as in Centrifugo, the empty epoch matches the
/// stream's, and the client gets what history holds after the offset, with
/// `recovered: true`. `history` with `since: {offset, epoch: ""}` reads from
/// the offset too (it used to answer 112).
#[tokio::test]
async fn an_empty_epoch_recovers_from_the_offset() {
    let s = TestServer::start().await;
    for n in 1..=3 {
        publish(&s, "fresh", n).await;
    }
    let mut c = s.client("a").await;
    let r = c
        .command(
            "subscribe",
            json!({"channel":"fresh","recover":true,"offset":0,"epoch":""}),
        )
        .await
        .unwrap();
    let sub = &r["subscribe"];
    assert_eq!(sub["recovered"], true, "{r}");
    assert_eq!(sub["was_recovering"], true, "{r}");
    assert!(
        !sub["epoch"].as_str().unwrap().is_empty(),
        "the real epoch: {r}"
    );
    let ns: Vec<u64> = sub["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["data"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(ns, [1, 2, 3], "{r}");
    let r = c
        .command(
            "history",
            json!({"channel":"fresh","since":{"offset":1,"epoch":""},"limit":-1}),
        )
        .await
        .unwrap();
    let ns: Vec<u64> = r["history"]["publications"]
        .as_array()
        .unwrap_or_else(|| panic!("{r}"))
        .iter()
        .map(|p| p["data"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(ns, [2, 3], "{r}");
}

/// `flag` with the reject-unrecovered bit (2, centrifuge-js sets it when the
/// app gives `getState`): a recovery that fails answers 112 and does not
/// subscribe, so the SDK reloads its state; without the bit the client is
/// subscribed with `recovered: false`, as before.
#[tokio::test]
async fn reject_unrecovered_answers_112_instead_of_subscribing() {
    let s = TestServer::start().await;
    publish(&s, "strict", 1).await;
    let mut c = s.client("a").await;
    let lost = json!({"channel":"strict","recover":true,"offset":1,"epoch":"gone","flag":3});
    let r = c.command("subscribe", lost.clone()).await.unwrap();
    assert_eq!(r["error"]["code"], 112, "{r}");
    // Not subscribed: a plain subscribe works (not "already subscribed").
    let r = c
        .command("subscribe", json!({"channel":"strict"}))
        .await
        .unwrap();
    assert!(r["subscribe"].is_object(), "{r}");
    // The bit alone does not refuse a recovery that works.
    let epoch = r["subscribe"]["epoch"].clone();
    let mut d = s.client("b").await;
    let ok = json!({"channel":"strict","recover":true,"offset":0,"epoch":epoch,"flag":2});
    let r = d.command("subscribe", ok).await.unwrap();
    assert_eq!(r["subscribe"]["recovered"], true, "{r}");
    // Without the bit: subscribed, not recovered.
    let mut e = s.client("c").await;
    let mut lenient = lost;
    lenient["flag"] = json!(1);
    let r = e.command("subscribe", lenient).await.unwrap();
    assert!(r["subscribe"].is_object(), "{r}");
    assert_eq!(r["subscribe"]["was_recovering"], true, "{r}");
    assert_ne!(r["subscribe"]["recovered"], true, "{r}");
}

/// Map (`type` 1) and shared-poll (`type` 4) subscriptions are not
/// implemented: refused with 108 rather than served as a plain stream that
/// would never deliver what the SDK waits for.
#[tokio::test]
async fn subscription_types_we_do_not_implement_are_refused() {
    let s = TestServer::start().await;
    let mut c = s.client("a").await;
    for kind in [1, 4, 7] {
        let r = c
            .command("subscribe", json!({"channel":"typed","type":kind}))
            .await
            .unwrap();
        assert_eq!(r["error"]["code"], 108, "type {kind}: {r}");
    }
    let r = c
        .command("subscribe", json!({"channel":"typed","type":0}))
        .await
        .unwrap();
    assert!(r["subscribe"].is_object(), "type 0 is a stream: {r}");
}
