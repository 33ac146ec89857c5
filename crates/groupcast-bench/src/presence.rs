//! `presence`: presence joins and leaves per second through edges (real
//! Centrifugo connections subscribing and unsubscribing on presence
//! channels, e.g. through nginx in front of three edges), the rate the
//! membership service committed them at, and `presence` query latency
//! through an edge meanwhile. `benches/cluster.sh` runs it against the
//! local cluster.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use groupcast_client::Client;
use serde_json::json;

#[derive(clap::Args)]
pub struct Params {
    /// Connections, each subscribing to its own presence channel and
    /// unsubscribing again in a loop (one join and one leave per round).
    #[arg(long, default_value_t = 600)]
    connections: usize,
    #[arg(long, default_value = "10")]
    secs: u64,
    /// Channel name prefix: `PREFIX0`, `PREFIX1`, ... and `PREFIXq` for the
    /// query connection. Its namespace needs presence.
    #[arg(long, default_value = "churn-")]
    prefix: String,
    /// Channels the connections share (connection i uses channel
    /// i % CHANNELS); default: one per connection.
    #[arg(long)]
    channels: Option<usize>,
    /// Server API key (the API `channels` call shows when every leave is
    /// committed).
    #[arg(long)]
    api_key: String,
    /// Edges whose `/metrics` give the membership deltas they committed
    /// (repeat; optional).
    #[arg(long = "edge")]
    edges: Vec<SocketAddr>,
    /// Connect the churning connections straight to the `--edge`s, round
    /// robin, instead of through `--server` (e.g. nginx).
    #[arg(long)]
    direct: bool,
}

pub async fn run(server: SocketAddr, token: &str, p: Params) -> anyhow::Result<()> {
    let url = format!("ws://{server}/connection/websocket");
    anyhow::ensure!(!p.direct || !p.edges.is_empty(), "--direct needs --edge");
    let mut clients = Vec::with_capacity(p.connections);
    let connecting = Instant::now();
    for i in 0..p.connections {
        let url = match p.direct {
            true => format!("ws://{}/connection/websocket", p.edges[i % p.edges.len()]),
            false => url.clone(),
        };
        let (c, reply) = Client::connect(&url, token)
            .await
            .with_context(|| format!("connection {i}"))?;
        anyhow::ensure!(reply.get("error").is_none(), "connect refused: {reply}");
        clients.push(c);
    }
    println!(
        "{} connections {} in {:.1} s",
        p.connections,
        match p.direct {
            true => format!("straight to {} edges", p.edges.len()),
            false => format!("through {server}"),
        },
        connecting.elapsed().as_secs_f64()
    );
    let deltas_before = committed_deltas(&p.edges).await?;
    let (mut reader, _) = Client::connect(&url, token).await?;
    let query_channel = format!("{}q", p.prefix);
    let r = reader
        .command("subscribe", json!({ "channel": query_channel }))
        .await?;
    anyhow::ensure!(r["subscribe"].is_object(), "reader subscribe: {r}");

    let started = Instant::now();
    let stop = started + Duration::from_secs(p.secs);
    let answered = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let channels = p.channels.unwrap_or(p.connections).max(1);
    for (i, mut c) in clients.into_iter().enumerate() {
        let channel = format!("{}{}", p.prefix, i % channels);
        let (answered, failed) = (answered.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < stop {
                for method in ["subscribe", "unsubscribe"] {
                    match c.command(method, json!({ "channel": channel })).await {
                        Ok(r) if r.get("error").is_none() => {
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
            }
            c
        }));
    }
    let latencies: Arc<Mutex<Vec<u64>>> = Arc::default();
    let query_errors = Arc::new(AtomicU64::new(0));
    let querying = tokio::spawn({
        let (latencies, query_errors) = (latencies.clone(), query_errors.clone());
        let channel = query_channel.clone();
        async move {
            while Instant::now() < stop {
                let t = Instant::now();
                match reader
                    .command("presence", json!({ "channel": channel }))
                    .await
                {
                    Ok(r) if r["presence"].is_object() => latencies
                        .lock()
                        .expect("latencies")
                        .push(t.elapsed().as_micros() as u64),
                    _ => {
                        query_errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            reader
        }
    });
    let mut open = Vec::new();
    for t in tasks {
        open.push(t.await?);
    }
    let ran = started.elapsed();
    let reader = querying.await?;
    // Every round ended with a leave: once `channels` lists none of the
    // churn channels, the membership service has committed them all.
    let drained_within = Duration::from_secs(60);
    loop {
        let listed = churn_channels_listed(server, &p.api_key, &p.prefix, &query_channel).await?;
        if listed == 0 {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < ran + drained_within,
            "{listed} churn channels still listed {drained_within:?} after the run"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let committed_at = started.elapsed();
    let deltas_after = committed_deltas(&p.edges).await?;

    let n = answered.load(Ordering::Relaxed);
    println!(
        "joins + leaves answered: {n} in {:.1} s = {:.0}/s ({} failed)",
        ran.as_secs_f64(),
        n as f64 / ran.as_secs_f64(),
        failed.load(Ordering::Relaxed)
    );
    println!(
        "all committed {:.2} s after the run ended: {:.0} joins + leaves/s committed",
        (committed_at - ran).as_secs_f64(),
        n as f64 / committed_at.as_secs_f64()
    );
    if let (Some(b), Some(a)) = (deltas_before, deltas_after) {
        println!(
            "membership deltas committed by the edges: {} ({:.0}/s; presence entries and subscriber counts)",
            a - b,
            (a - b) as f64 / committed_at.as_secs_f64()
        );
    }
    let mut l = std::mem::take(&mut *latencies.lock().expect("latencies"));
    l.sort_unstable();
    println!(
        "presence query through an edge: {} queries, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} errors)",
        l.len(),
        crate::percentile(&l, 0.50) as f64 / 1000.0,
        crate::percentile(&l, 0.99) as f64 / 1000.0,
        l.last().copied().unwrap_or(0) as f64 / 1000.0,
        query_errors.load(Ordering::Relaxed)
    );
    for c in open {
        c.close().await;
    }
    reader.close().await;
    Ok(())
}

/// Sum of `groupcast_membership_client_deltas_total` over `edges`; None
/// when no edge was given.
async fn committed_deltas(edges: &[SocketAddr]) -> anyhow::Result<Option<u64>> {
    if edges.is_empty() {
        return Ok(None);
    }
    let mut sum = 0.0;
    for e in edges {
        sum += crate::http::metric(*e, "groupcast_membership_client_deltas_total")
            .await
            .with_context(|| format!("{e}/metrics does not answer"))?;
    }
    Ok(Some(sum as u64))
}

/// How many channels starting with `prefix` (other than `except`) the API
/// `channels` call lists.
async fn churn_channels_listed(
    server: SocketAddr,
    key: &str,
    prefix: &str,
    except: &str,
) -> anyhow::Result<usize> {
    let body = json!({ "pattern": format!("{prefix}*") });
    let v = crate::http::api(server, key, "channels", &body).await?;
    let channels = v["result"]["channels"]
        .as_object()
        .context("API channels: no result.channels")?;
    Ok(channels.keys().filter(|k| k.as_str() != except).count())
}
