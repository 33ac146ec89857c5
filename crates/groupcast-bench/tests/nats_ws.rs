//! `groupcast-bench --protocol nats-ws` against a real nats-server's
//! WebSocket listener (what `benches/peers.sh` compares Groupcast with):
//! each scenario runs briefly and its report must show every connection
//! subscribed and every publication delivered. Small counts, a few seconds
//! each; the server is stopped on drop.

use std::time::Duration;

use groupcast_testkit::nats::NatsServer;

/// Run the bench binary against `127.0.0.1:port`; its report (stdout).
async fn bench(port: u16, args: &[&str]) -> String {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_groupcast-bench"))
            .arg("--server")
            .arg(format!("127.0.0.1:{port}"))
            .args(["--protocol", "nats-ws"])
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("groupcast-bench finished within 60 s")
    .expect("run groupcast-bench");
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "groupcast-bench {args:?} failed: {report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    report
}

/// The number before `what` on the line starting with `prefix`.
fn figure(report: &str, prefix: &str) -> u64 {
    let line = report
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line in {report}"));
    line[prefix.len()..]
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no figure in {line:?}"))
}

#[tokio::test]
async fn every_scenario_runs_over_nats_websocket() {
    let (_nats, ws) = NatsServer::start_with_websocket().await;

    // Fan-out at a fixed rate: all acknowledged (+OK), all delivered.
    let r = bench(
        ws,
        &[
            "fanout",
            "--subscribers",
            "5",
            "--rate",
            "50",
            "--secs",
            "1",
        ],
    )
    .await;
    let published = figure(&r, "published (acknowledged): ");
    assert!(published >= 40, "{r}");
    assert_eq!(figure(&r, "delivered: "), published * 5, "{r}");
    assert!(r.contains("(100.0%)"), "{r}");
    assert!(!r.contains("(sampled 0)"), "latency measured: {r}");

    // Rooms: each publication reaches its room's members only.
    let r = bench(
        ws,
        &[
            "rooms",
            "--rooms",
            "4",
            "--members",
            "3",
            "--rate",
            "40",
            "--secs",
            "1",
        ],
    )
    .await;
    assert_eq!(
        figure(&r, "delivered: "),
        figure(&r, "published (acknowledged): ") * 3,
        "{r}"
    );

    // JetStream: the stream is created, each publication acknowledged by
    // JetStream (a reply on the publisher's inbox) and delivered.
    let r = bench(
        ws,
        &[
            "--nats-jetstream",
            "fanout",
            "--subscribers",
            "1",
            "--secs",
            "1",
            "--window",
            "16",
            "--channel",
            "hist",
        ],
    )
    .await;
    let stored = figure(&r, "published (acknowledged): ");
    assert!(stored > 0, "{r}");
    assert!(!r.contains("refused"), "{r}");
    assert_eq!(figure(&r, "delivered: "), stored, "{r}");

    // Idle connections and a join storm: every one subscribed.
    let r = bench(ws, &["idle", "--connections", "50", "--settle-secs", "0"]).await;
    assert_eq!(figure(&r, "idle connections: "), 50, "{r}");
    let r = bench(
        ws,
        &[
            "join-storm",
            "--subscribers",
            "50",
            "--concurrency",
            "8",
            "--settle-secs",
            "0",
        ],
    )
    .await;
    assert_eq!(figure(&r, "subscribed: "), 50, "{r}");
}
