//! `relay-backend`: relay connections bound to a backend target on NATS
//! (docs/backends.md, "Relay to a backend"), with a backend in this tool
//! that answers every frame: client frame → edge → NATS
//! (`{prefix}.relay.<target>`) → backend → `relay_send` over NATS (the
//! edge's own command subject from `join`) → edge → frame back to the
//! client. Reports round trips per second and their latency p50/p99.
//!
//! The edge needs a route such as
//! `[[relay.routes]] path = "/ws/bench/{room}/"  target = "bench.{room}"`.
//! The backend is one task (commands of one subject are applied in order,
//! so frames come back in the order sent).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;

#[derive(clap::Args)]
pub struct Params {
    /// NATS server the edge uses.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// The edge's `nats.prefix`.
    #[arg(long, default_value = "gc")]
    prefix: String,
    /// The edge's `api.key`: commands over NATS carry it.
    #[arg(long, default_value = "")]
    api_key: String,
    /// The route's path with `{i}` for the connection's room (0..rooms).
    #[arg(long, default_value = "/ws/bench/{i}/")]
    path: String,
    /// The targets' common prefix (the backend subscribes to `<it>.>`).
    #[arg(long, default_value = "bench")]
    target_prefix: String,
    #[arg(long, default_value_t = 100)]
    connections: usize,
    #[arg(long, default_value_t = 4)]
    rooms: usize,
    /// Frames each connection keeps in flight.
    #[arg(long, default_value_t = 8)]
    window: usize,
    /// Frame size in bytes (at least 24).
    #[arg(long, default_value_t = 64)]
    size: usize,
    #[arg(long, default_value = "10")]
    secs: u64,
    #[arg(long, default_value_t = 4)]
    source_ips: u8,
}

/// The backend: echo every text frame back to its sender.
async fn backend(
    client: async_nats::Client,
    subject: String,
    api_key: String,
) -> anyhow::Result<()> {
    let mut sub = client.subscribe(subject).await?;
    client.flush().await?;
    tokio::spawn(async move {
        let mut commands: HashMap<String, String> = HashMap::new();
        while let Some(msg) = sub.next().await {
            let Ok(e) = serde_json::from_slice::<Value>(&msg.payload) else {
                continue;
            };
            let c = e["client"].as_str().unwrap_or_default().to_string();
            match e["type"].as_str() {
                Some("join") => {
                    if let Some(s) = e["commands"].as_str() {
                        commands.insert(c, s.to_string());
                    }
                }
                Some("leave") => {
                    commands.remove(&c);
                }
                Some("message") => {
                    let Some(subject) = commands.get(&c) else {
                        continue;
                    };
                    let cmd = json!({"method": "relay_send", "api_key": api_key,
                        "params": {"client": c, "text": e["data"]}});
                    let _ = client
                        .publish(subject.clone(), cmd.to_string().into())
                        .await;
                }
                _ => {}
            }
        }
    });
    Ok(())
}

pub async fn run(server: SocketAddr, p: Params) -> anyhow::Result<()> {
    if p.size < 24 {
        bail!("--size must be at least 24");
    }
    let nats = async_nats::connect(&p.nats)
        .await
        .with_context(|| format!("NATS at {}", p.nats))?;
    backend(
        nats.clone(),
        format!("{}.relay.{}.>", p.prefix, p.target_prefix),
        p.api_key.clone(),
    )
    .await?;
    let done = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let t0 = Instant::now();
    let stop = t0 + Duration::from_secs(p.secs) + Duration::from_secs(2);
    let measure_from = t0 + Duration::from_secs(2); // after everyone joined
    let mut tasks = Vec::new();
    for i in 0..p.connections {
        let path = p.path.replace("{i}", &(i % p.rooms.max(1)).to_string());
        let (done, latencies) = (done.clone(), latencies.clone());
        let (window, size, ips) = (p.window.max(1), p.size, p.source_ips);
        tasks.push(tokio::spawn(async move {
            let src = std::net::Ipv4Addr::new(127, 0, 0, 2 + (i % ips.max(1) as usize) as u8);
            let sock = TcpSocket::new_v4()?;
            sock.bind(SocketAddr::new(src.into(), 0))?;
            let stream = sock.connect(server).await?;
            let (mut ws, _) =
                tokio_tungstenite::client_async(format!("ws://{server}{path}"), stream).await?;
            let frame = |t0: Instant| {
                let mut s = format!("{:020}", t0.elapsed().as_micros());
                s.push_str(&"x".repeat(size - 20));
                Message::text(s)
            };
            for _ in 0..window {
                ws.send(frame(t0)).await?;
            }
            let mut mine = Vec::new();
            while Instant::now() < stop {
                let m = match tokio::time::timeout_at(stop.into(), ws.next()).await {
                    Err(_) => break,
                    Ok(None) => bail!("closed"),
                    Ok(Some(m)) => m?,
                };
                match m {
                    Message::Text(t) => {
                        let sent: u128 = t.get(..20).and_then(|d| d.parse().ok()).unwrap_or(0);
                        let now = Instant::now();
                        if now >= measure_from {
                            done.fetch_add(1, Ordering::Relaxed);
                            mine.push((t0.elapsed().as_micros() - sent) as u64);
                        }
                        ws.send(frame(t0)).await?;
                    }
                    Message::Close(f) => bail!("closed: {f:?}"),
                    _ => {}
                }
            }
            latencies.lock().expect("latencies").extend(mine);
            let _ = ws.close(None).await;
            anyhow::Ok(())
        }));
    }
    let mut failed = 0;
    for t in tasks {
        if !matches!(t.await, Ok(Ok(()))) {
            failed += 1;
        }
    }
    let n = done.load(Ordering::Relaxed);
    let mut l = latencies.lock().expect("latencies").clone();
    l.sort_unstable();
    println!(
        "relay to a NATS backend: {} connections x {} in flight, {} B frames, {} s",
        p.connections, p.window, p.size, p.secs
    );
    println!(
        "round trips: {n} ({:.0}/s); failed connections: {failed}",
        n as f64 / p.secs as f64
    );
    println!(
        "latency client frame -> backend -> frame back: p50 {:.2} ms, p99 {:.2} ms",
        crate::percentile(&l, 0.50) as f64 / 1000.0,
        crate::percentile(&l, 0.99) as f64 / 1000.0
    );
    if failed > 0 {
        bail!("{failed} connections failed");
    }
    Ok(())
}
