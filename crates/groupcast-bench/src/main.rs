//! `groupcast-bench`: load scenarios against a running Groupcast.
//!
//! * `idle`: open N idle Centrifugo connections (connect + one subscription
//!   each), spread over source addresses 127.0.0.x, and report the server's
//!   resident memory per connection (from `/proc/PID/status` of `--server-pid`).
//! * `fanout`: S subscribers on one channel, one publisher sending
//!   fixed-size publications as fast as a bounded in-flight window allows;
//!   reports published and delivered messages per second and the
//!   publish-to-delivery latency (p50/p99) from sampled messages.
//!   `--edge` (repeated) spreads the subscribers over several edges of a
//!   NATS-backed cluster; the publisher stays on `--server`.
//! * `membership`: committed presence changes per second through edge
//!   handles against a membership cluster, and presence query p50/p99.
//! * `soak`: long mixed traffic against one edge (churn, publishes,
//!   queries, slow consumers), sampling its memory, file descriptors and
//!   tasks into a CSV.
//! * `presence`: joins and leaves per second through edges (connections
//!   subscribing and unsubscribing), how fast the membership service
//!   committed them, and presence query p50/p99 through an edge.
//!
//! * `connect-rate`: connections per second an edge accepts (upgrade,
//!   `connect`, reply, close) and connect latency; with the edge's
//!   `client.connect_proxy` pointed at `proxy-backend` (a minimal backend
//!   in this tool), the cost of the connect proxy.
//!
//! * `rooms`: R rooms of M subscribers, one publisher at a steady total
//!   rate over the rooms in turn: delivered per second, latency p50/p99.
//!
//! * `relay-backend`: relay connections bound to a NATS backend target
//!   (a backend in this tool echoes every frame through `relay_send`):
//!   round trips per second and latency p50/p99.
//!
//! * `join-storm`: N connections subscribing to one channel: how long
//!   until all are subscribed, and the join/leave pushes they received
//!   (join/leave at scale, issue 22).
//!
//! Every scenario is bounded in connections and time and exits by itself.
//! `docs/benchmarks.md` records results with the exact commands.
//!
//! # Layout
//! * this file: the command line, `idle` and `fanout`, and the shared
//!   connection and latency helpers.
//! * `connect`: `connect-rate` and its `proxy-backend`.
//! * `membership`: `membership`.
//! * `presence`: `presence`.
//! * `rooms`: `rooms`.
//! * `join_storm`: `join-storm`.
//! * `relay_backend`: `relay-backend` and its echoing backend.
//! * `soak`: `soak`.
//! * `http`: the server API and `/metrics` calls the scenarios make.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

mod connect;
mod http;
mod join_storm;
mod membership;
mod presence;
mod relay_backend;
mod rooms;
mod soak;

#[derive(Parser)]
#[command(name = "groupcast-bench", about = "Groupcast load scenarios")]
struct Cli {
    /// Server address (host:port of `groupcast dev` or an edge).
    #[arg(long, default_value = "127.0.0.1:8000", global = true)]
    server: SocketAddr,
    /// Connection token (empty: anonymous, as `groupcast dev` allows).
    #[arg(long, default_value = "", global = true)]
    token: String,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Idle connections: server memory per connection.
    Idle {
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// PID of the server process, to read its resident memory.
        #[arg(long)]
        server_pid: Option<u32>,
        /// Source addresses used round-robin: 127.0.0.2 .. 127.0.0.(1+N).
        #[arg(long, default_value_t = 4)]
        source_ips: u8,
        /// How long to hold the connections before measuring.
        #[arg(long, default_value = "3")]
        settle_secs: u64,
    },
    /// One channel, many subscribers: delivered messages per second.
    Fanout {
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        /// Publication data size in bytes.
        #[arg(long, default_value_t = 128)]
        size: usize,
        #[arg(long, default_value = "10")]
        secs: u64,
        /// Most publish commands awaiting their reply.
        #[arg(long, default_value_t = 256)]
        window: usize,
        #[arg(long, default_value = "bench")]
        channel: String,
        #[arg(long, default_value_t = 4)]
        source_ips: u8,
        /// Edges the subscribers connect to, round-robin (repeat; default:
        /// `--server`). The publisher always uses `--server`.
        #[arg(long = "edge")]
        edges: Vec<SocketAddr>,
    },
    /// Membership cluster: committed presence changes/s and query latency.
    Membership(membership::Params),
    /// Through edges: presence joins/leaves per second and query latency.
    Presence(presence::Params),
    /// Long mixed traffic against one edge, sampling its memory, file
    /// descriptors and tasks (CSV).
    Soak(soak::Params),
    /// Connections per second (upgrade + connect + reply) and latency.
    ConnectRate(connect::Params),
    /// Many small channels (rooms) at a steady rate: delivered/s, latency.
    Rooms(rooms::Params),
    /// N subscribers into one channel: time until all are subscribed.
    JoinStorm(join_storm::Params),
    /// Relay connections to a NATS backend (echo): round trips/s, latency.
    RelayBackend(relay_backend::Params),
    /// A minimal connect-proxy backend for `connect-rate` (runs until
    /// killed).
    ProxyBackend {
        #[arg(long, default_value = "127.0.0.1:9100")]
        listen: SocketAddr,
    },
}

type Ws = WebSocketStream<tokio::net::TcpStream>;

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS line")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("no value")?
        .parse()?)
}

/// Open a WebSocket from source address 127.0.0.(2 + i % n).
async fn open(server: SocketAddr, i: usize, source_ips: u8) -> anyhow::Result<Ws> {
    let src = Ipv4Addr::new(127, 0, 0, 2 + (i % source_ips.max(1) as usize) as u8);
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(IpAddr::V4(src), 0))?;
    let stream = sock.connect(server).await?;
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let url = format!("ws://{server}/connection/websocket");
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config)).await?;
    Ok(ws)
}

/// connect + subscribe, waiting for both replies.
async fn handshake(ws: &mut Ws, token: &str, channel: &str) -> anyhow::Result<()> {
    handshake_with(ws, token, channel, |_| {}).await
}

/// [`handshake`], handing every text frame read meanwhile (replies and the
/// pushes that came with them) to `on_frame`.
async fn handshake_with(
    ws: &mut Ws,
    token: &str,
    channel: &str,
    mut on_frame: impl FnMut(&str),
) -> anyhow::Result<()> {
    let frame = format!(
        "{}\n{}",
        json!({"id":1,"connect":{"token":token,"name":"bench"}}),
        json!({"id":2,"subscribe":{"channel":channel}})
    );
    ws.send(Message::text(frame)).await?;
    let mut got = 0;
    while got < 2 {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                for line in t.split('\n') {
                    if line.starts_with("{\"id\":") {
                        if line.contains("\"error\"") {
                            bail!("server refused: {line}");
                        }
                        got += 1;
                    }
                }
                on_frame(&t);
            }
            Some(Ok(Message::Close(f))) => bail!("closed: {f:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("closed during handshake"),
        }
    }
    Ok(())
}

/// Latency samples: one of every `.1` publications a connection receives.
type Samples = (Arc<std::sync::Mutex<Vec<u64>>>, u64);

/// Keep a connection alive: answer pings, count publications.
async fn drain(mut ws: Ws, delivered: Arc<AtomicU64>, latencies: Option<Samples>, t0: Instant) {
    let mut n: u64 = 0;
    while let Some(Ok(msg)) = ws.next().await {
        let Message::Text(t) = msg else { continue };
        let mut pubs = 0;
        for line in t.split('\n') {
            if line == "{}" {
                let _ = ws.send(Message::text("{}")).await;
            } else if line.contains("\"pub\":") {
                pubs += 1;
                n += 1;
                if let Some((l, _)) = latencies
                    .as_ref()
                    .filter(|(_, every)| n.is_multiple_of(*every))
                {
                    if let Some(sent) = sent_at(line) {
                        let now = t0.elapsed().as_micros() as u64;
                        l.lock()
                            .expect("latency lock")
                            .push(now.saturating_sub(sent));
                    }
                }
            }
        }
        delivered.fetch_add(pubs, Ordering::Relaxed);
    }
}

/// The publisher embeds `"t":<micros since start>` in every publication.
fn sent_at(line: &str) -> Option<u64> {
    let i = line.find("\"t\":")? + 4;
    let digits: String = line[i..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.scenario {
        Scenario::Membership(params) => membership::run(params).await?,
        Scenario::Presence(params) => presence::run(cli.server, &cli.token, params).await?,
        Scenario::Soak(params) => soak::run(cli.server, &cli.token, params).await?,
        Scenario::ConnectRate(params) => connect::run(cli.server, &cli.token, params).await?,
        Scenario::ProxyBackend { listen } => connect::backend(listen).await?,
        Scenario::RelayBackend(params) => relay_backend::run(cli.server, params).await?,
        Scenario::Rooms(params) => rooms::run(cli.server, &cli.token, params).await?,
        Scenario::JoinStorm(params) => join_storm::run(cli.server, &cli.token, params).await?,
        Scenario::Idle {
            connections,
            server_pid,
            source_ips,
            settle_secs,
        } => {
            let before = server_pid.map(rss_kib).transpose()?;
            let started = Instant::now();
            let mut tasks = Vec::with_capacity(connections);
            let delivered = Arc::new(AtomicU64::new(0));
            for i in 0..connections {
                let mut ws = open(cli.server, i, source_ips)
                    .await
                    .with_context(|| format!("connection {i}"))?;
                handshake(&mut ws, &cli.token, &format!("idle-{}", i % 100)).await?;
                tasks.push(tokio::spawn(drain(ws, delivered.clone(), None, started)));
            }
            let opened = started.elapsed();
            tokio::time::sleep(Duration::from_secs(settle_secs)).await;
            let after = server_pid.map(rss_kib).transpose()?;
            println!(
                "idle connections: {connections} (opened in {:.1}s)",
                opened.as_secs_f64()
            );
            if let (Some(b), Some(a)) = (before, after) {
                let per = (a.saturating_sub(b)) as f64 * 1024.0 / connections as f64;
                println!("server RSS: {b} KiB before, {a} KiB after");
                println!(
                    "server memory per idle connection: {:.0} bytes ({:.1} KiB)",
                    per,
                    per / 1024.0
                );
            }
            for t in tasks {
                t.abort();
            }
        }
        Scenario::Fanout {
            subscribers,
            size,
            secs,
            window,
            channel,
            source_ips,
            edges,
        } => {
            let edges = if edges.is_empty() {
                vec![cli.server]
            } else {
                edges
            };
            let t0 = Instant::now();
            let delivered = Arc::new(AtomicU64::new(0));
            let latencies = Arc::new(std::sync::Mutex::new(Vec::new()));
            let mut tasks = Vec::new();
            for i in 0..subscribers {
                let mut ws = open(edges[i % edges.len()], i, source_ips).await?;
                handshake(&mut ws, &cli.token, &channel).await?;
                tasks.push(tokio::spawn(drain(
                    ws,
                    delivered.clone(),
                    Some((latencies.clone(), 97)),
                    t0,
                )));
            }
            let mut publisher = open(cli.server, subscribers, source_ips).await?;
            // Subscribed to the channel itself: where only subscribers may
            // publish (`allow_publish_for_subscriber`, the local cluster) it
            // must be; it ignores its own copies.
            handshake(&mut publisher, &cli.token, &channel).await?;
            let (mut tx, mut rx) = publisher.split();
            let acked = Arc::new(AtomicU64::new(0));
            let refused = Arc::new(AtomicU64::new(0));
            let first_refusal: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
            let (acks, refusals, first) = (acked.clone(), refused.clone(), first_refusal.clone());
            let reader = tokio::spawn(async move {
                while let Some(Ok(Message::Text(t))) = rx.next().await {
                    for line in t.split('\n') {
                        if line.contains("\"publish\"") {
                            acks.fetch_add(1, Ordering::Relaxed);
                        } else if line.starts_with("{\"id\":") && line.contains("\"error\"") {
                            refusals.fetch_add(1, Ordering::Relaxed);
                            first
                                .lock()
                                .expect("refusal lock")
                                .get_or_insert_with(|| line.to_string());
                        }
                    }
                }
            });
            let answered = || acked.load(Ordering::Relaxed) + refused.load(Ordering::Relaxed);
            // Pad the data so the whole JSON value is `size` bytes.
            let pad = |t: u64| {
                let base = format!("{{\"t\":{t},\"p\":\"\"}}");
                let fill = size.saturating_sub(base.len());
                format!("{{\"t\":{t},\"p\":\"{}\"}}", "x".repeat(fill))
            };
            let start_delivered = delivered.load(Ordering::Relaxed);
            let start = Instant::now();
            let deadline = start + Duration::from_secs(secs);
            let mut sent: u64 = 0;
            let mut id: u64 = 10;
            while Instant::now() < deadline {
                if sent - answered() >= window as u64 {
                    tokio::time::sleep(Duration::from_micros(200)).await;
                    continue;
                }
                let batch = 16.min(window as u64 - (sent - answered())).max(1);
                let mut frame = String::new();
                for _ in 0..batch {
                    id += 1;
                    let data = pad(t0.elapsed().as_micros() as u64);
                    if !frame.is_empty() {
                        frame.push('\n');
                    }
                    frame.push_str(&format!(
                        "{{\"id\":{id},\"publish\":{{\"channel\":\"{channel}\",\"data\":{data}}}}}"
                    ));
                }
                tx.send(Message::text(frame)).await?;
                sent += batch;
            }
            let elapsed = start.elapsed().as_secs_f64();
            // Let in-flight deliveries land, then measure.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let got = delivered.load(Ordering::Relaxed) - start_delivered;
            let acked_n = acked.load(Ordering::Relaxed);
            let mut l = latencies.lock().expect("latency lock").clone();
            l.sort_unstable();
            println!(
                "fan-out: {subscribers} subscribers through {} address(es), channel {channel:?}, {size}-byte publications, {secs}s",
                edges.len()
            );
            println!(
                "published (acknowledged): {acked_n} ({:.0}/s)",
                acked_n as f64 / elapsed
            );
            let refused_n = refused.load(Ordering::Relaxed);
            if refused_n > 0 {
                println!(
                    "publishes refused: {refused_n}, the first: {}",
                    first_refusal
                        .lock()
                        .expect("refusal lock")
                        .clone()
                        .unwrap_or_default()
                );
            }
            println!(
                "delivered: {got} ({:.0}/s), expected {} ({:.1}%)",
                got as f64 / elapsed,
                acked_n * subscribers as u64,
                100.0 * got as f64 / (acked_n.max(1) * subscribers as u64) as f64
            );
            println!(
                "latency publish->delivery (sampled {}): p50 {:.2} ms, p99 {:.2} ms",
                l.len(),
                percentile(&l, 0.50) as f64 / 1000.0,
                percentile(&l, 0.99) as f64 / 1000.0
            );
            reader.abort();
            for t in tasks {
                t.abort();
            }
        }
    }
    Ok(())
}
