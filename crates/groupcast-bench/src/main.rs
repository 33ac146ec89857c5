//! `groupcast-bench`: load scenarios against a running Groupcast.
//!
//! * `idle`: open N idle Centrifugo connections (connect + one subscription
//!   each), spread over source addresses 127.0.0.x, and report the server's
//!   resident memory per connection (from `/proc/PID/status` of `--server-pid`).
//! * `fanout`: S subscribers on one channel, one publisher sending
//!   fixed-size publications as fast as a bounded in-flight window allows
//!   (or at `--rate` a second);
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
//! `--protocol nats-ws` runs `fanout`, `rooms`, `idle` and `join-storm`
//! against a nats-server WebSocket listener instead (the NATS text
//! protocol; a channel is a subject), with the same code for everything but
//! the wire (`wire`): the side-by-side runs of `benches/peers.sh`.
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
//! * `wire`: the per-protocol parts (subscribe, publish commands, reading
//!   deliveries and replies) and the NATS operation parser.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
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
mod wire;

use wire::{Event, Protocol, Role, Wire};

#[derive(Parser)]
#[command(name = "groupcast-bench", about = "Groupcast load scenarios")]
struct Cli {
    /// Server address (host:port of `groupcast dev` or an edge).
    #[arg(long, default_value = "127.0.0.1:8000", global = true)]
    server: SocketAddr,
    /// Connection token (empty: anonymous, as `groupcast dev` allows).
    #[arg(long, default_value = "", global = true)]
    token: String,
    /// The wire protocol of `fanout`, `rooms`, `idle` and `join-storm`:
    /// Groupcast's, or NATS over a nats-server WebSocket listener.
    #[arg(long, value_enum, default_value_t = Protocol::Centrifugo, global = true)]
    protocol: Protocol,
    /// With `--protocol nats-ws`: publications are stored by JetStream
    /// (`fanout` creates a file stream on the channel's subject, 1 replica,
    /// 100 messages a subject, and awaits JetStream's reply to each).
    #[arg(long, global = true)]
    nats_jetstream: bool,
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
        /// Publications per second (0: as fast as `--window` allows).
        #[arg(long, default_value_t = 0)]
        rate: u64,
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

/// Open a Centrifugo WebSocket from source address 127.0.0.(2 + i % n).
async fn open(server: SocketAddr, i: usize, source_ips: u8) -> anyhow::Result<Ws> {
    open_at(server, "/connection/websocket", i, source_ips).await
}

/// Open a WebSocket to `path` from source address 127.0.0.(2 + i % n).
async fn open_at(server: SocketAddr, path: &str, i: usize, source_ips: u8) -> anyhow::Result<Ws> {
    let src = Ipv4Addr::new(127, 0, 0, 2 + (i % source_ips.max(1) as usize) as u8);
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(IpAddr::V4(src), 0))?;
    let stream = sock.connect(server).await?;
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let url = format!("ws://{server}{path}");
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config)).await?;
    Ok(ws)
}

/// Open connection `i` and subscribe it to `channel`, waiting for the
/// answers.
async fn subscribe(
    wire: Wire,
    server: SocketAddr,
    i: usize,
    source_ips: u8,
    token: &str,
    channel: &str,
    role: Role,
) -> anyhow::Result<Ws> {
    let mut ws = open_at(server, wire.path(), i, source_ips).await?;
    wire.handshake(&mut ws, role, token, channel, |_| {}, || {})
        .await?;
    Ok(ws)
}

/// Latency samples: one of every `.1` publications a connection receives.
type Samples = (Arc<std::sync::Mutex<Vec<u64>>>, u64);

/// Keep a connection alive: answer pings, count publications.
async fn drain(
    wire: Wire,
    mut ws: Ws,
    delivered: Arc<AtomicU64>,
    latencies: Option<Samples>,
    t0: Instant,
) {
    let mut reader = wire.reader();
    let mut n: u64 = 0;
    while let Some(Ok(msg)) = ws.next().await {
        let (mut pubs, mut ping) = (0, false);
        let read = reader.feed(&msg, |e| match e {
            Event::Ping => ping = true,
            Event::Publication(data) => {
                pubs += 1;
                n += 1;
                if let Some((l, _)) = latencies
                    .as_ref()
                    .filter(|(_, every)| n.is_multiple_of(*every))
                {
                    if let Some(sent) = sent_at(data) {
                        let now = t0.elapsed().as_micros() as u64;
                        l.lock()
                            .expect("latency lock")
                            .push(now.saturating_sub(sent));
                    }
                }
            }
            _ => {}
        });
        delivered.fetch_add(pubs, Ordering::Relaxed);
        if read.is_err() {
            break;
        }
        if ping {
            let _ = ws.send(wire.pong()).await;
        }
    }
}

/// The publisher embeds `"t":<micros since start>` in every publication.
fn sent_at(data: &[u8]) -> Option<u64> {
    let i = data.windows(4).position(|w| w == b"\"t\":")? + 4;
    let digits: Vec<u8> = data[i..]
        .iter()
        .copied()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

/// The publisher's acknowledgements, counted by its reader task.
#[derive(Default)]
struct Acks {
    acked: AtomicU64,
    refused: AtomicU64,
    first_refusal: std::sync::Mutex<Option<String>>,
}

impl Acks {
    fn answered(&self) -> u64 {
        self.acked.load(Ordering::Relaxed) + self.refused.load(Ordering::Relaxed)
    }
}

type Sink = futures_util::stream::SplitSink<Ws, Message>;

/// Open the publisher (subscribed to `channel` too: where only subscribers
/// may publish it must be; it ignores its own copies) and a task counting
/// its acknowledgements.
async fn publisher(
    wire: Wire,
    server: SocketAddr,
    i: usize,
    source_ips: u8,
    token: &str,
    channel: &str,
) -> anyhow::Result<(Sink, Arc<Acks>, tokio::task::JoinHandle<()>)> {
    let ws = subscribe(wire, server, i, source_ips, token, channel, Role::Publisher).await?;
    let (tx, mut rx) = ws.split();
    let acks = Arc::new(Acks::default());
    let counts = acks.clone();
    let task = tokio::spawn(async move {
        let mut reader = wire.reader();
        while let Some(Ok(msg)) = rx.next().await {
            let read = reader.feed(&msg, |e| match e {
                Event::Reply(Ok(())) => {
                    counts.acked.fetch_add(1, Ordering::Relaxed);
                }
                Event::Reply(Err(why)) => {
                    counts.refused.fetch_add(1, Ordering::Relaxed);
                    counts
                        .first_refusal
                        .lock()
                        .expect("refusal lock")
                        .get_or_insert(why);
                }
                _ => {}
            });
            if read.is_err() {
                break;
            }
        }
    });
    Ok((tx, acks, task))
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
    let wire = Wire {
        protocol: cli.protocol,
        jetstream: cli.nats_jetstream,
    };
    let wire_scenario = matches!(
        cli.scenario,
        Scenario::Idle { .. }
            | Scenario::Fanout { .. }
            | Scenario::Rooms(_)
            | Scenario::JoinStorm(_)
    );
    if cli.protocol != Protocol::Centrifugo && !wire_scenario {
        bail!("--protocol nats-ws: only fanout, rooms, idle and join-storm");
    }
    match cli.scenario {
        Scenario::Membership(params) => membership::run(params).await?,
        Scenario::Presence(params) => presence::run(cli.server, &cli.token, params).await?,
        Scenario::Soak(params) => soak::run(cli.server, &cli.token, params).await?,
        Scenario::ConnectRate(params) => connect::run(cli.server, &cli.token, params).await?,
        Scenario::ProxyBackend { listen } => connect::backend(listen).await?,
        Scenario::RelayBackend(params) => relay_backend::run(cli.server, params).await?,
        Scenario::Rooms(params) => rooms::run(wire, cli.server, &cli.token, params).await?,
        Scenario::JoinStorm(params) => {
            join_storm::run(wire, cli.server, &cli.token, params).await?
        }
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
                let channel = format!("idle-{}", i % 100);
                let ws = subscribe(
                    wire,
                    cli.server,
                    i,
                    source_ips,
                    &cli.token,
                    &channel,
                    Role::Subscriber,
                )
                .await
                .with_context(|| format!("connection {i}"))?;
                tasks.push(tokio::spawn(drain(
                    wire,
                    ws,
                    delivered.clone(),
                    None,
                    started,
                )));
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
            rate,
            channel,
            source_ips,
            edges,
        } => {
            let edges = if edges.is_empty() {
                vec![cli.server]
            } else {
                edges
            };
            if wire.protocol == Protocol::NatsWs && wire.jetstream {
                wire::create_stream(cli.server, &channel).await?;
            }
            let t0 = Instant::now();
            let delivered = Arc::new(AtomicU64::new(0));
            let latencies = Arc::new(std::sync::Mutex::new(Vec::new()));
            let mut tasks = Vec::new();
            for i in 0..subscribers {
                let ws = subscribe(
                    wire,
                    edges[i % edges.len()],
                    i,
                    source_ips,
                    &cli.token,
                    &channel,
                    Role::Subscriber,
                )
                .await
                .with_context(|| format!("subscriber {i}"))?;
                tasks.push(tokio::spawn(drain(
                    wire,
                    ws,
                    delivered.clone(),
                    // About 100 samples a publication at most (1 of 97
                    // deliveries at 1,000 subscribers), all at 1 to 10.
                    Some((latencies.clone(), (subscribers as u64 / 10).clamp(1, 97))),
                    t0,
                )));
            }
            let (mut tx, acks, reader) = publisher(
                wire,
                cli.server,
                subscribers,
                source_ips,
                &cli.token,
                &channel,
            )
            .await?;
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
                let room = (window as u64).saturating_sub(sent - acks.answered());
                let owed = if rate == 0 {
                    16
                } else {
                    ((start.elapsed().as_secs_f64() * rate as f64) as u64).saturating_sub(sent)
                };
                let batch = owed.min(room).min(64);
                if batch == 0 {
                    let nap = if rate == 0 { 200 } else { 1000 };
                    tokio::time::sleep(Duration::from_micros(nap)).await;
                    continue;
                }
                let mut frame = String::new();
                for _ in 0..batch {
                    id += 1;
                    wire.push_publish(
                        &mut frame,
                        id,
                        &channel,
                        &pad(t0.elapsed().as_micros() as u64),
                    );
                }
                tx.send(wire.message(frame)).await?;
                sent += batch;
            }
            let elapsed = start.elapsed().as_secs_f64();
            // Let in-flight deliveries land, then measure.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let got = delivered.load(Ordering::Relaxed) - start_delivered;
            let acked_n = acks.acked.load(Ordering::Relaxed);
            let mut l = latencies.lock().expect("latency lock").clone();
            l.sort_unstable();
            println!(
                "fan-out: {subscribers} subscribers through {} address(es), channel {channel:?}, {size}-byte publications, {secs}s{}",
                edges.len(),
                if rate > 0 { format!(", {rate} publications/s asked") } else { String::new() }
            );
            println!(
                "published (acknowledged): {acked_n} ({:.0}/s)",
                acked_n as f64 / elapsed
            );
            let refused_n = acks.refused.load(Ordering::Relaxed);
            if refused_n > 0 {
                println!(
                    "publishes refused: {refused_n}, the first: {}",
                    acks.first_refusal
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
