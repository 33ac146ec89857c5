//! `connect-rate`: how many Centrifugo connections per second an edge
//! accepts (WebSocket upgrade + `connect` + its reply, then close), with
//! `concurrency` connections in flight, and the connect latency p50/p99.
//! Against an edge with `client.connect_proxy`, every connect is one
//! request to the backend; `proxy-backend` is a minimal one.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[derive(clap::Args)]
pub struct Params {
    /// Connections to make in all.
    #[arg(long, default_value_t = 20_000)]
    connections: usize,
    /// Connections in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    #[arg(long, default_value_t = 4)]
    source_ips: u8,
}

pub async fn run(server: SocketAddr, token: &str, p: Params) -> anyhow::Result<()> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..p.concurrency.max(1) {
        let next = next.clone();
        let token = token.to_string();
        let (total, ips) = (p.connections, p.source_ips);
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let t = Instant::now();
                one(server, i, ips, &token)
                    .await
                    .with_context(|| format!("connection {i}"))?;
                lat.push(t.elapsed().as_micros() as u64);
            }
            anyhow::Ok(lat)
        }));
    }
    let mut lat = Vec::with_capacity(p.connections);
    for w in workers {
        lat.extend(w.await??);
    }
    let secs = started.elapsed().as_secs_f64();
    lat.sort_unstable();
    println!(
        "connects: {} in {secs:.2}s = {:.0}/s (concurrency {})",
        lat.len(),
        lat.len() as f64 / secs,
        p.concurrency
    );
    println!(
        "connect latency: p50 {:.2} ms, p99 {:.2} ms",
        crate::percentile(&lat, 0.5) as f64 / 1000.0,
        crate::percentile(&lat, 0.99) as f64 / 1000.0
    );
    Ok(())
}

async fn one(server: SocketAddr, i: usize, ips: u8, token: &str) -> anyhow::Result<()> {
    let mut ws = crate::open(server, i, ips).await?;
    ws.send(Message::text(
        json!({"id":1,"connect":{"token":token,"name":"bench"}}).to_string(),
    ))
    .await?;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Err(_) => bail!("no connect reply in 10 s"),
            Ok(Some(Ok(Message::Text(t)))) => {
                if t.contains("\"error\"") {
                    bail!("refused: {t}");
                }
                if t.contains("\"connect\"") {
                    break;
                }
            }
            Ok(Some(Ok(Message::Close(f)))) => bail!("closed: {f:?}"),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => return Err(e.into()),
            Ok(None) => bail!("closed before the reply"),
        }
    }
    let _ = ws.close(None).await;
    Ok(())
}

/// A minimal connect-proxy backend: every connect is user `bench-N`.
pub async fn backend(listen: SocketAddr) -> anyhow::Result<()> {
    use axum::routing::post;
    let n = Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new().route(
        "/connect",
        post(move || {
            let n = n.fetch_add(1, Ordering::Relaxed);
            async move { axum::Json(json!({"result": {"user": format!("bench-{n}")}})) }
        }),
    );
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("proxy backend on http://{}/connect", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
