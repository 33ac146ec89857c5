//! The operators' view: a real Prometheus (Debian's package) scrapes a
//! running cluster (a NATS server, three membership replicas, two edges)
//! while clients do what users do; then every panel query of the Grafana
//! dashboard (`deploy/grafana/groupcast.json`) must return data, and the
//! example alert rules (`deploy/prometheus/alerts.yml`) must pass
//! `promtool check rules` and evaluate without error.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use groupcast_edge::auth::{mint_hs256, now_unix};
use groupcast_testkit::edge::{EdgeProcess, EDGE_CONFIG};
use groupcast_testkit::membership::MembershipCluster;
use groupcast_testkit::nats::NatsServer;
use groupcast_testkit::prometheus::Prometheus;
use groupcast_testkit::{Client, SECRET};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_groupcast");

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

/// Every `expr` of every panel target, with its panel's title.
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo_file("deploy/grafana/groupcast.json")).unwrap();
    let dash: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert_eq!(dash["uid"], "groupcast");
    let vars = dash["templating"]["list"].as_array().unwrap();
    assert!(
        vars.iter()
            .any(|v| v["name"] == "datasource" && v["type"] == "datasource"),
        "the data source is chosen at import"
    );
    let mut out = Vec::new();
    let mut ids = std::collections::HashSet::new();
    for p in dash["panels"].as_array().unwrap() {
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "panel ids are unique"
        );
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{} has a query", p["title"]);
        for t in targets {
            out.push((
                p["title"].as_str().unwrap().to_string(),
                t["expr"].as_str().unwrap().to_string(),
            ));
        }
    }
    out
}

fn token(user: &str) -> String {
    mint_hs256(SECRET, &json!({ "sub": user, "exp": now_unix() + 3600 }))
}

/// Users doing what users do, on both edges: subscribe (presence), publish
/// from a client and the API, reconnect with recovery, make mistakes
/// (unknown namespace, a history limit over the maximum), and one is
/// disconnected through the API.
async fn traffic(a: &EdgeProcess, b: &EdgeProcess) {
    let mut clients = Vec::new();
    for (i, e) in [a, b, a, b].into_iter().enumerate() {
        let (mut c, _) = Client::connect(&e.ws_url(), &token(&format!("u{i}")))
            .await
            .unwrap();
        let r = c
            .command("subscribe", json!({"channel":"room"}))
            .await
            .unwrap();
        assert!(r["subscribe"].is_object(), "{r}");
        clients.push(c);
    }
    for n in 0..20 {
        let (status, r) = a
            .api("publish", json!({"channel":"room","data":{"n":n}}))
            .await;
        assert_eq!(status, 200, "{r}");
        let r = clients[1]
            .command("publish", json!({"channel":"room","data":{"c":n}}))
            .await
            .unwrap();
        assert!(r.get("error").is_none(), "{r}");
    }
    let r = clients[0]
        .command("presence", json!({"channel":"room"}))
        .await
        .unwrap();
    assert_eq!(r["presence"]["presence"].as_object().unwrap().len(), 4);
    // Mistakes: error replies and a limit hit.
    let r = clients[0]
        .command("subscribe", json!({"channel":"nope:x"}))
        .await
        .unwrap();
    assert_eq!(r["error"]["code"], 102);
    let r = clients[0]
        .command("history", json!({"channel":"room","limit":100000}))
        .await
        .unwrap();
    assert_eq!(r["error"]["code"], 106);
    // A reconnect that recovers.
    let (mut c, _) = Client::connect(&b.ws_url(), &token("u9")).await.unwrap();
    let r = c
        .command("subscribe", json!({"channel":"room"}))
        .await
        .unwrap();
    let (offset, epoch) = (
        r["subscribe"]["offset"].clone(),
        r["subscribe"]["epoch"].clone(),
    );
    c.close().await;
    a.api("publish", json!({"channel":"room","data":"missed"}))
        .await;
    let (mut c, _) = Client::connect(&a.ws_url(), &token("u9")).await.unwrap();
    let r = c
        .command(
            "subscribe",
            json!({"channel":"room","recover":true,"offset":offset,"epoch":epoch}),
        )
        .await
        .unwrap();
    assert_eq!(r["subscribe"]["recovered"], true, "{r}");
    // A slow consumer: subscribed, never reading, while 16 MB is published
    // to its channel; the edge cuts it with 3008.
    let (mut slow, _) = Client::connect(&b.ws_url(), &token("slow")).await.unwrap();
    slow.auto_pong = false;
    let r = slow
        .command("subscribe", json!({"channel":"firehose"}))
        .await
        .unwrap();
    assert!(r["subscribe"].is_object(), "{r}");
    let big = "x".repeat(60_000);
    for _ in 0..280 {
        if b.metric("groupcast_disconnects_total{code=\"3008\"}").await > 0.0 {
            break;
        }
        let (status, r) = a
            .api("publish", json!({"channel":"firehose","data":big}))
            .await;
        assert_eq!(status, 200, "{r}");
    }
    assert!(
        b.metric("groupcast_disconnects_total{code=\"3008\"}").await > 0.0,
        "the slow consumer was cut"
    );
    drop(slow);
    // A disconnect by the server.
    let (status, r) = a
        .api(
            "disconnect",
            json!({"user":"u9","disconnect":{"code":4001,"reason":"bye"}}),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    for c in clients {
        c.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    let queries = dashboard_queries();
    let (nats, m) = tokio::join!(
        NatsServer::start(),
        MembershipCluster::start(Path::new(BIN), 3, &[])
    );
    let config = format!("{EDGE_CONFIG}{}", m.edge_section());
    let bin = Path::new(BIN);
    let env = [("GROUPCAST_CLIENT__COMMAND_RATE", "0")];
    let urls = [nats.url()];
    let (a, b) = tokio::join!(
        EdgeProcess::start(bin, "a", &urls, &config, &env),
        EdgeProcess::start(bin, "b", &urls, &config, &env),
    );
    let mut targets: Vec<(&str, SocketAddr)> =
        vec![("groupcast-edge", a.addr), ("groupcast-edge", b.addr)];
    for n in &m.nodes {
        targets.push(("groupcast-membership", n.http));
    }
    let prom = Prometheus::start(&targets).await;
    // Scraped before and after the traffic, so that rates have two samples.
    prom.wait_for("up{job=\"groupcast-edge\"} == 1", Duration::from_secs(20))
        .await
        .unwrap();
    traffic(&a, &b).await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    // A panel that falls back to `or vector(0)` always answers: its own
    // series must show here, unless it counts a failure this scenario does
    // not provoke (NATS refusing publishes).
    const NOT_PROVOKED: [&str; 2] = [
        "groupcast_nats_publish_errors_total",
        "groupcast_nats_publish_retries_total",
    ];
    let mut missing = Vec::new();
    for (title, expr) in &queries {
        let expr = match expr.strip_suffix(" or vector(0)") {
            Some(own) if !NOT_PROVOKED.iter().any(|m| own.contains(m)) => own,
            _ => expr.as_str(),
        };
        match prom.wait_for(expr, Duration::from_secs(15)).await {
            Ok(series) => eprintln!("{title}: {expr} -> {} series", series.len()),
            Err(e) => missing.push(format!("{title}: {e}")),
        }
    }
    assert!(
        missing.is_empty(),
        "panels without data:\n{}",
        missing.join("\n")
    );
    // Some panels are only meaningful with both kinds of targets.
    // (A scrape can fail on a busy machine: the next one counts.)
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let up = prom.query("up == 1").await.unwrap();
        if up.len() == 5 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "two edges and three replicas scraped: {up:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The example alerts: valid for promtool, and each expression runs.
    let rules = repo_file("deploy/prometheus/alerts.yml");
    let out =
        std::process::Command::new(groupcast_testkit::debian_binary("prometheus", "promtool"))
            .arg("check")
            .arg("rules")
            .arg(&rules)
            .output()
            .unwrap();
    assert!(
        out.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&rules).unwrap();
    let exprs: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr: "))
        .collect();
    assert!(exprs.len() >= 10, "{exprs:?}");
    for e in exprs {
        prom.query(e)
            .await
            .unwrap_or_else(|err| panic!("alert expression {e}: {err}"));
    }
}
