//! `rooms`: many small channels at once, the chat-room shape (500 rooms of
//! 10 by default). Every member of room `r` subscribes to `rooms-<r>`; one
//! publisher connection sends fixed-size publications to the rooms in
//! turn at a steady total rate. Reports publications acknowledged and
//! delivered per second, the delivered share, and the publish-to-delivery
//! latency (p50/p99) sampled from the deliveries.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::SinkExt;

use crate::wire::{Role, Wire};
use crate::{drain, percentile, publisher, subscribe};

#[derive(clap::Args)]
pub struct Params {
    /// Number of rooms (channels).
    #[arg(long, default_value_t = 500)]
    rooms: usize,
    /// Subscribers per room (one connection each).
    #[arg(long, default_value_t = 10)]
    members: usize,
    /// Publications per second, over all rooms together.
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    /// Publication data size in bytes.
    #[arg(long, default_value_t = 128)]
    size: usize,
    #[arg(long, default_value = "10")]
    secs: u64,
    #[arg(long, default_value_t = 4)]
    source_ips: u8,
}

pub async fn run(wire: Wire, server: SocketAddr, token: &str, p: Params) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let delivered = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    let connections = p.rooms * p.members;
    for i in 0..connections {
        let channel = format!("rooms-{}", i % p.rooms);
        let ws = subscribe(
            wire,
            server,
            i,
            p.source_ips,
            token,
            &channel,
            Role::Subscriber,
        )
        .await?;
        tasks.push(tokio::spawn(drain(
            wire,
            ws,
            delivered.clone(),
            // Each member gets rate/rooms publications a second: sample
            // every 4th so a 10 s run holds thousands of samples.
            Some((latencies.clone(), 4)),
            t0,
        )));
    }
    let (mut tx, acks, reader) = publisher(
        wire,
        server,
        connections,
        p.source_ips,
        token,
        "rooms-publisher",
    )
    .await?;
    let pad = |t: u64| {
        let base = format!("{{\"t\":{t},\"p\":\"\"}}");
        let fill = p.size.saturating_sub(base.len());
        format!("{{\"t\":{t},\"p\":\"{}\"}}", "x".repeat(fill))
    };
    let start_delivered = delivered.load(Ordering::Relaxed);
    let start = Instant::now();
    let deadline = start + Duration::from_secs(p.secs);
    // Paced in ticks of 10 ms: each tick sends what the rate owes so far.
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let (mut sent, mut id, mut room) = (0u64, 10u64, 0usize);
    while Instant::now() < deadline {
        tick.tick().await;
        let owed = (start.elapsed().as_secs_f64() * p.rate as f64) as u64;
        let mut frame = String::new();
        while sent < owed {
            id += 1;
            sent += 1;
            let data = pad(t0.elapsed().as_micros() as u64);
            wire.push_publish(&mut frame, id, &format!("rooms-{room}"), &data);
            room = (room + 1) % p.rooms;
        }
        if !frame.is_empty() {
            tx.send(wire.message(frame)).await?;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = delivered.load(Ordering::Relaxed) - start_delivered;
    let acked_n = acks.acked.load(Ordering::Relaxed);
    let mut l = latencies.lock().expect("latency lock").clone();
    l.sort_unstable();
    println!(
        "rooms: {} rooms x {} members ({connections} connections), {} publications/s asked, {}-byte publications, {}s",
        p.rooms, p.members, p.rate, p.size, p.secs
    );
    println!(
        "published (acknowledged): {acked_n} ({:.0}/s), refused {}",
        acked_n as f64 / elapsed,
        acks.refused.load(Ordering::Relaxed)
    );
    let expected = acked_n * p.members as u64;
    println!(
        "delivered: {got} ({:.0}/s), expected {expected} ({:.1}%)",
        got as f64 / elapsed,
        100.0 * got as f64 / expected.max(1) as f64
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
    Ok(())
}
