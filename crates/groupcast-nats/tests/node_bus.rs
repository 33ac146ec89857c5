//! Against a real `nats-server`: requests between nodes by name (the
//! `NodeBus` the API uses for actions on other edges' connections), and
//! stream creation at start retried while JetStream is not there yet.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use groupcast_core::{BrokerError, NodeBus, NodeHandler};
use groupcast_nats::{NatsBroker, NatsConfig, StreamSpec};
use groupcast_testkit::nats::NatsServer;

fn config(url: &str) -> NatsConfig {
    NatsConfig {
        urls: vec![url.to_string()],
        prefix: format!("t{:x}", rand::random::<u32>()),
        ..Default::default()
    }
}

fn history() -> HashMap<String, StreamSpec> {
    HashMap::from([(
        String::new(),
        StreamSpec {
            history_size: 10,
            history_ttl: Duration::from_secs(60),
            replicas: 1,
            memory_storage: true,
        },
    )])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_answers_requests_by_name_and_a_missing_or_slow_one_is_told_apart() {
    let nats = NatsServer::start().await;
    let cfg = config(&nats.url());
    let a = NatsBroker::connect(&cfg, HashMap::new()).await.unwrap();
    let b = NatsBroker::connect(&cfg, HashMap::new()).await.unwrap();
    let echo: NodeHandler = Arc::new(|payload: Bytes| {
        Box::pin(async move {
            let mut out = b"b got ".to_vec();
            out.extend_from_slice(&payload);
            Bytes::from(out)
        })
    });
    b.serve("edge.b", echo).await.unwrap();
    let slow: NodeHandler = Arc::new(|_| {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Bytes::new()
        })
    });
    b.serve("slow", slow).await.unwrap();
    let t = Duration::from_secs(2);

    let answer = a.request("edge.b", Bytes::from("hi"), t).await.unwrap();
    assert_eq!(answer.as_deref(), Some(&b"b got hi"[..]));
    // A name with a dot is its own node, not a subject hierarchy.
    assert_eq!(a.request("edge", Bytes::new(), t).await.unwrap(), None);
    // Nobody serves it: gone (its connections with it), told at once.
    let asked = Instant::now();
    assert_eq!(a.request("gone", Bytes::new(), t).await.unwrap(), None);
    assert!(asked.elapsed() < t, "no responders is answered at once");
    // Serving but not answering in time: a timeout.
    let asked = Instant::now();
    let slow = a
        .request("slow", Bytes::new(), Duration::from_millis(300))
        .await;
    assert!(matches!(slow, Err(BrokerError::Timeout(_))), "{slow:?}");
    assert!(asked.elapsed() >= Duration::from_millis(300));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_created_once_jetstream_appears_within_the_startup_timeout() {
    let mut nats = NatsServer::start_without_jetstream().await;
    let url = nats.url();

    // It does not come: the start fails after nats.startup_timeout, not at
    // the first refusal, and names the stream.
    let mut cfg = config(&url);
    cfg.startup_timeout = Duration::from_millis(1500);
    let started = Instant::now();
    let err = match NatsBroker::connect(&cfg, history()).await {
        Ok(_) => panic!("a stream was created without JetStream"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("JetStream stream"), "{err}");
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "gave up after {:?}",
        started.elapsed()
    );

    // It comes a second into the start: the start succeeds.
    let mut cfg = config(&url);
    cfg.startup_timeout = Duration::from_secs(20);
    let connecting = tokio::spawn(async move { NatsBroker::connect(&cfg, history()).await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!connecting.is_finished(), "still retrying");
    nats.kill();
    nats.restart_with_jetstream().await;
    let broker = tokio::time::timeout(Duration::from_secs(20), connecting)
        .await
        .expect("start finished within the startup timeout")
        .unwrap()
        .expect("the stream is created once JetStream is there");
    broker.close().await;
}
