//! What the NATS broker does beyond the shared conformance suite, against a
//! real `nats-server`: gap repair, "insufficient state" when the gap is no
//! longer stored, idempotent publishes, pipelined publishes (`publish_begin`),
//! hostile messages on our subjects.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use groupcast_core::broker::{Broker, BrokerError, BrokerHandler, HistoryQuery, PublishOptions};
use groupcast_core::conformance::{Event, Recorder};
use groupcast_core::{Payload, Publication};
use groupcast_nats::{GapStats, NatsBroker, NatsConfig, StreamSpec};
use groupcast_proto::client::ClientInfo;
use groupcast_testkit::nats::NatsServer;

fn opts(size: usize) -> PublishOptions {
    PublishOptions {
        history_size: size,
        history_ttl: Duration::from_secs(60),
        ..Default::default()
    }
}

async fn broker(url: &str, history_size: usize, capacity: usize) -> NatsBroker {
    let config = NatsConfig {
        urls: vec![url.to_string()],
        prefix: format!("t{:x}", rand::random::<u32>()),
        subscription_capacity: capacity,
        ..Default::default()
    };
    broker_with(config, history_size).await
}

async fn broker_with(config: NatsConfig, history_size: usize) -> NatsBroker {
    let spec = StreamSpec {
        history_size,
        history_ttl: Duration::from_secs(60),
        replicas: 1,
        memory_storage: true,
    };
    NatsBroker::connect(&config, HashMap::from([(String::new(), spec)]))
        .await
        .expect("connect")
}

fn text(n: u64) -> Publication {
    Publication::new(Payload::from_text(&n.to_string()))
}

/// Blocks its delivery task on the first publication until released, so
/// that NATS drops what overflows the (tiny) subscription buffer meanwhile:
/// a real slow consumer, not a simulated one.
struct Stalling {
    rec: Recorder,
    stalled: AtomicBool,
    released: AtomicBool,
}

impl BrokerHandler for Stalling {
    fn on_publication(&self, channel: &str, p: Arc<Publication>) {
        if !self.stalled.swap(true, Ordering::SeqCst) {
            // Until the test published the rest (bounded, in case it
            // failed). `block_in_place`: the runtime's other tasks (the NATS
            // connection's among them) move to another thread instead of
            // waiting behind this one.
            let until = std::time::Instant::now() + Duration::from_secs(30);
            tokio::task::block_in_place(|| {
                while !self.released.load(Ordering::SeqCst) && std::time::Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(5));
                }
            });
        }
        self.rec.on_publication(channel, p);
    }
    fn on_join(&self, channel: &str, info: Arc<ClientInfo>) {
        self.rec.on_join(channel, info);
    }
    fn on_leave(&self, channel: &str, info: Arc<ClientInfo>) {
        self.rec.on_leave(channel, info);
    }
    fn on_insufficient_state(&self, channel: &str) {
        self.rec.on_insufficient_state(channel);
    }
}

/// A message this client sends to itself comes back once the server
/// processed everything the client sent before, and after everything the
/// server had sent the client before.
async fn round_trip(c: &async_nats::Client) {
    use futures_util::StreamExt;
    let subject = format!("probe.{:x}", rand::random::<u64>());
    let mut sub = c.subscribe(subject.clone()).await.unwrap();
    c.publish(subject, "probe".into()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), sub.next())
        .await
        .expect("a round trip within 20 s")
        .expect("subscription open");
}

/// Publish one, and once its delivery is stalled 29 more; release the
/// subscriber once NATS sent all 30 to it (two fit its buffer, NATS drops
/// the rest: one gap, however fast or slow the machine), and once it
/// delivered what the buffer held, publish one more (its
/// `Nats-Last-Sequence` shows the gap).
async fn stall_and_publish(
    b: &NatsBroker,
    url: &str,
    history_size: usize,
) -> (Arc<Stalling>, Vec<u64>) {
    use futures_util::StreamExt;
    let h = Arc::new(Stalling {
        rec: Recorder::default(),
        stalled: AtomicBool::new(false),
        released: AtomicBool::new(false),
    });
    b.set_handler(h.clone());
    b.subscribe("gappy").await.unwrap();
    // Sees what the server sends on the channel's live subject.
    let observer = async_nats::connect(url).await.unwrap();
    let mut seen = observer.subscribe(b.live_subject("gappy")).await.unwrap();
    round_trip(&observer).await;
    let publish = |n: u64| async move {
        b.publish("gappy", text(n), &opts(history_size))
            .await
            .unwrap()
            .offset
    };
    let mut offsets = vec![publish(1).await];
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !h.stalled.load(Ordering::SeqCst) {
        assert!(
            std::time::Instant::now() < deadline,
            "the first publication never delivered"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for n in 2..=30 {
        offsets.push(publish(n).await);
    }
    // The server republishes stored messages on its own time: once the
    // observer has the 30th, the server sent it to the broker's connection
    // too, and a round trip on that connection comes after it.
    for _ in 1..=30 {
        tokio::time::timeout(Duration::from_secs(20), seen.next())
            .await
            .expect("the live copies within 20 s")
            .expect("subscription open");
    }
    round_trip(b.client()).await;
    h.released.store(true, Ordering::SeqCst);
    events_until(&h.rec, "the publications the buffer held", |e| {
        pub_offsets(e).len() >= 3
    })
    .await;
    offsets.push(publish(31).await);
    (h, offsets)
}

/// The recorder's events once `done` holds for them (bounded: 20 s).
async fn events_until(rec: &Recorder, what: &str, done: impl Fn(&[Event]) -> bool) -> Vec<Event> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let events = rec.events();
        if done(&events) {
            return events;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what} within 20 s: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn pub_offsets(events: &[Event]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Pub { offset, .. } => Some(*offset),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_is_repaired_from_jetstream_before_delivering() {
    let server = NatsServer::start().await;
    let b = broker(&server.url(), 100, 2).await;
    let (h, offsets) = stall_and_publish(&b, &server.url(), 100).await;
    let events = events_until(&h.rec, "31 publications", |e| pub_offsets(e).len() >= 31).await;
    assert_eq!(
        pub_offsets(&events),
        offsets,
        "every publication, in order, once"
    );
    assert!(!events
        .iter()
        .any(|e| matches!(e, Event::Insufficient { .. })));
    let stats = b.gap_stats();
    assert!(
        stats.repaired >= 1,
        "NATS dropped for the slow consumer and the gap was repaired: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_no_longer_stored_makes_subscribers_recover() {
    let server = NatsServer::start().await;
    let b = broker(&server.url(), 3, 2).await;
    let (h, offsets) = stall_and_publish(&b, &server.url(), 3).await;
    // The last publication comes after the gap in any case (live).
    let events = events_until(&h.rec, "the last publication", |e| {
        pub_offsets(e).last() == offsets.last()
    })
    .await;
    assert!(
        events.contains(&Event::Insufficient {
            channel: "gappy".into()
        }),
        "subscribers are told to recover: {events:?}"
    );
    let got = pub_offsets(&events);
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "never out of order: {got:?}"
    );
    assert_eq!(
        b.gap_stats(),
        GapStats {
            repaired: 0,
            insufficient: 1
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_stores_a_publication_once() {
    let server = NatsServer::start().await;
    let b = broker(&server.url(), 10, 1024).await;
    let keyed = |k: &str| PublishOptions {
        idempotency_key: Some(k.into()),
        ..opts(10)
    };
    let first = b.publish("idem", text(1), &keyed("k1")).await.unwrap();
    let again = b.publish("idem", text(1), &keyed("k1")).await.unwrap();
    assert_eq!(first, again, "a retry answers the first position");
    // The same key on another channel of the namespace is another message.
    let other = b.publish("idem2", text(1), &keyed("k1")).await.unwrap();
    assert!(other.offset > first.offset);
    let h = b.history("idem", HistoryQuery::default()).await.unwrap();
    assert_eq!(h.publications.len(), 1);
}

/// A publication larger than the NATS server's `max_payload` (1 MiB by default) is refused
/// as too large (106 to clients), not as the backbone being unavailable (108); stored or live,
/// and the broker goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publication_over_max_payload_is_too_large_not_unavailable() {
    let server = NatsServer::start().await;
    let b = broker(&server.url(), 10, 1024).await;
    let big = || Publication::new(Payload::from_text(&"x".repeat(1_100_000)));
    for size in [10, 0] {
        match b.publish("big", big(), &opts(size)).await {
            Err(BrokerError::TooLarge(why)) => assert!(why.contains("max_payload"), "{why}"),
            other => panic!("history {size}: {other:?}"),
        }
    }
    b.publish("big", text(1), &opts(10))
        .await
        .expect("a small one goes");
}

/// "No responders" on a history publish is retried within
/// `nats.request_timeout` (what a stream-leader election looks like, see
/// the chaos tests); a stream that is really gone answers 108 at the bound
/// and the next publish creates it again, with a new epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_stream_fails_one_publish_at_the_bound_then_is_created_again() {
    let server = NatsServer::start().await;
    let prefix = format!("t{:x}", rand::random::<u32>());
    let timeout = Duration::from_millis(800);
    let config = NatsConfig {
        urls: vec![server.url()],
        prefix: prefix.clone(),
        request_timeout: timeout,
        ..Default::default()
    };
    let b = broker_with(config, 10).await;
    let first = b.publish("gone", text(1), &opts(10)).await.unwrap();
    let nc = async_nats::connect(server.url()).await.unwrap();
    async_nats::jetstream::new(nc)
        .delete_stream(format!("{prefix}_h_~"))
        .await
        .expect("delete the stream");

    let asked = std::time::Instant::now();
    let failed = b.publish("gone", text(2), &opts(10)).await;
    assert!(
        matches!(
            failed,
            Err(groupcast_core::broker::BrokerError::Unavailable(_))
        ),
        "{failed:?}"
    );
    // Retried up to the bound (the last pause would end past it), not
    // failed at once.
    assert!(
        asked.elapsed() >= timeout / 2 && asked.elapsed() <= timeout * 3,
        "retried until about nats.request_timeout ({timeout:?}), failed after {:?}",
        asked.elapsed()
    );
    let again = b.publish("gone", text(3), &opts(10)).await.unwrap();
    assert_eq!(again.offset, 1, "a new stream");
    assert_ne!(again.epoch, first.epoch, "a new stream has a new epoch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_a_channel_subject_is_dropped_and_counted() {
    let server = NatsServer::start().await;
    let b = broker(&server.url(), 10, 1024).await;
    let rec = Arc::new(Recorder::default());
    b.set_handler(rec.clone());
    b.subscribe("open").await.unwrap();
    // Any NATS client can publish on the subject: junk must not reach clients.
    b.client()
        .publish(b.live_subject("open"), "not an envelope".into())
        .await
        .unwrap();
    b.publish("open", text(7), &opts(10)).await.unwrap();
    // And one more after: once it arrived, anything the junk could have
    // become would have arrived before it.
    b.publish("open", text(8), &opts(10)).await.unwrap();
    let events = events_until(&rec, "two publications", |e| {
        e.iter()
            .any(|e| matches!(e, Event::Pub { data, .. } if data == "8"))
    })
    .await;
    assert_eq!(events.len(), 2, "only the real publications: {events:?}");
    assert!(matches!(&events[0], Event::Pub { data, .. } if data == "7"));
    assert!(matches!(&events[1], Event::Pub { data, .. } if data == "8"));
}

/// Keeps the accept time of every publication it is handed.
#[derive(Default)]
struct AcceptTimes(parking_lot::Mutex<Vec<u64>>);

impl BrokerHandler for AcceptTimes {
    fn on_publication(&self, _: &str, p: Arc<Publication>) {
        self.0.lock().push(p.published_at_us);
    }
    fn on_join(&self, _: &str, _: Arc<ClientInfo>) {}
    fn on_leave(&self, _: &str, _: Arc<ClientInfo>) {}
    fn on_insufficient_state(&self, _: &str) {}
}

/// The time a publication was accepted reaches the other nodes with it
/// (a NATS header: `groupcast_delivery_latency_seconds` measures from it),
/// on plain and history channels alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_accept_time_travels_with_live_and_stored_publications() {
    let server = NatsServer::start().await;
    for history_size in [0, 10] {
        let config = NatsConfig {
            urls: vec![server.url()],
            prefix: format!("t{:x}", rand::random::<u32>()),
            ..Default::default()
        };
        let publisher = broker_with(config.clone(), history_size).await;
        let receiver = broker_with(config, history_size).await;
        let times = Arc::new(AcceptTimes::default());
        receiver.set_handler(times.clone());
        receiver.subscribe("clock").await.unwrap();
        let mut p = text(1);
        p.published_at_us = 1_234_567;
        publisher
            .publish("clock", p, &opts(history_size))
            .await
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while times.0.lock().is_empty() {
            assert!(std::time::Instant::now() < deadline, "nothing delivered");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            *times.0.lock(),
            vec![1_234_567],
            "history_size {history_size}"
        );
    }
}

/// `publish_begin`: many history publications sent before any answer is
/// awaited are stored in the order they were begun, each answer is its own
/// (strictly increasing offsets; a repeated idempotency key answers the
/// first one's offset), and one refused in the middle (over `max_payload`)
/// leaves the others as they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn begun_publishes_are_stored_in_order_each_with_its_own_answer() {
    let server = NatsServer::start().await;
    let b = broker(&server.url(), 1000, 1024).await;
    let mut pending = Vec::new();
    for n in 1..=300u64 {
        let p = if n == 150 {
            Publication::new(Payload::from_text(&"x".repeat(1_100_000)))
        } else {
            text(n)
        };
        let key = if n == 201 { 200 } else { n };
        let o = PublishOptions {
            idempotency_key: Some(format!("k{key}")),
            ..opts(1000)
        };
        pending.push((n, b.publish_begin("piped", p, &o).await));
    }
    let mut offsets = Vec::new();
    for (n, begun) in pending {
        match (n, begun) {
            (150, Err(BrokerError::TooLarge(_))) => {}
            (150, other) => panic!("150: {:?}", other.map(|_| ())),
            (n, Ok(answer)) => offsets.push((n, answer.await.expect("stored").offset)),
            (n, Err(e)) => panic!("{n}: {e:?}"),
        }
    }
    let o200 = offsets.iter().find(|(n, _)| *n == 200).unwrap().1;
    let o201 = offsets.iter().find(|(n, _)| *n == 201).unwrap().1;
    assert_eq!(o200, o201, "a repeated key answers the first offset");
    offsets.retain(|(n, _)| *n != 201);
    assert!(
        offsets.windows(2).all(|w| w[0].1 < w[1].1),
        "offsets increase in the order begun"
    );
    let h = b.history("piped", HistoryQuery::default()).await.unwrap();
    let stored: Vec<(u64, u64)> = h
        .publications
        .iter()
        .map(|p| {
            let Payload::Json(raw) = &p.data else {
                panic!("json")
            };
            (raw.get().parse().unwrap(), p.offset)
        })
        .collect();
    assert_eq!(
        stored, offsets,
        "stored in the order begun, at the answered offsets"
    );
}
