//! Graceful drain: every client is told to reconnect (3001 "shutdown") after
//! its queued output, in bounded batches, and the edge stops within the
//! grace period.

use std::time::{Duration, Instant};

use groupcast_testkit::{Client, Frame, Incoming, RelayClient, TestServer};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_tells_every_client_to_reconnect_after_its_output() {
    let mut config = TestServer::dev_config();
    config.shutdown.drain_batch_size = 10;
    config.shutdown.drain_batch_interval = Duration::from_millis(50);
    config.shutdown.grace_period = Duration::from_secs(10);
    let mut s = TestServer::start_with(config).await;

    let mut clients = Vec::new();
    for i in 0..35 {
        let mut c = s.client(&format!("u{i}")).await;
        c.command("subscribe", json!({"channel":"news"}))
            .await
            .unwrap();
        clients.push(c);
    }
    let mut relays = Vec::new();
    for _ in 0..3 {
        relays.push(RelayClient::open(&s.relay_url("relay")).await.unwrap());
    }
    // Opened, never sent connect.
    let mut unconnected = Client::open(&s.ws_url()).await.unwrap();
    // 200 publications queued for every subscriber, not read yet.
    for n in 0..200 {
        s.api("publish", json!({"channel":"news","data":{"n":n}}))
            .await;
    }

    let started = Instant::now();
    s.begin_shutdown();

    // Each protocol client first gets every publication, then 3001. Every
    // client reads in its own task, so close times are measured side by side.
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let mut got = 0;
                loop {
                    match c.next(Duration::from_secs(10)).await.unwrap() {
                        Incoming::Push(p) if p.get("pub").is_some() => {
                            assert_eq!(p["pub"]["data"]["n"], got, "in order, none lost");
                            got += 1;
                        }
                        Incoming::Close(code) => {
                            return (got, code.map(|c| c.0), started.elapsed())
                        }
                        _ => {}
                    }
                }
            })
        })
        .collect();
    for r in readers {
        let (got, code, _) = r.await.unwrap();
        assert_eq!(got, 200, "buffered output flushed before the close");
        assert_eq!(code, Some(3001));
    }
    for r in relays.iter_mut() {
        match r.recv(Duration::from_secs(10)).await.unwrap() {
            Frame::Close(Some((code, _))) => assert_eq!(code, 3001),
            other => panic!("relay expected close 3001, got {other:?}"),
        }
    }
    let code = unconnected.closed(Duration::from_secs(10)).await.unwrap();
    assert_eq!(code.map(|c| c.0), Some(3001));

    assert!(
        s.stopped(Duration::from_secs(12)).await,
        "run() returned within the grace period"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_ends_at_the_grace_period_even_if_clients_do_not_read() {
    let mut config = TestServer::dev_config();
    config.shutdown.grace_period = Duration::from_secs(1);
    config.shutdown.drain_batch_interval = Duration::from_millis(10);
    config.client.max_queue_bytes = 8 << 20;
    let mut s = TestServer::start_with(config).await;
    // A subscriber that never reads, with far more queued than its socket takes.
    let mut stuck = s.client("stuck").await;
    stuck
        .command("subscribe", json!({"channel":"big"}))
        .await
        .unwrap();
    let blob = "x".repeat(60_000);
    for _ in 0..100 {
        s.api("publish", json!({"channel":"big","data":blob})).await;
    }
    let started = Instant::now();
    s.begin_shutdown();
    assert!(
        s.stopped(Duration::from_secs(5)).await,
        "drain must not wait past the grace period"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "it waited for the reader: {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_goes_in_bounded_batches() {
    let mut config = TestServer::dev_config();
    config.shutdown.drain_batch_size = 10;
    config.shutdown.drain_batch_interval = Duration::from_millis(200);
    let mut s = TestServer::start_with(config).await;
    let mut clients = Vec::new();
    for i in 0..40 {
        clients.push(s.client(&format!("u{i}")).await);
    }
    let started = Instant::now();
    s.begin_shutdown();
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let code = c.closed(Duration::from_secs(10)).await.unwrap();
                (code.map(|c| c.0), started.elapsed())
            })
        })
        .collect();
    let mut last = Duration::ZERO;
    for r in readers {
        let (code, at) = r.await.unwrap();
        assert_eq!(code, Some(3001));
        last = last.max(at);
    }
    // Four batches, 200 ms apart: the last batch is told no earlier than
    // 600 ms after the drain began (load can only make it later).
    assert!(
        last >= Duration::from_millis(600),
        "all clients were told at once: last close at {last:?}"
    );
    assert!(s.stopped(Duration::from_secs(30)).await);
}
