//! `join-storm`: N connections subscribe to one channel, `--concurrency`
//! at a time (connect + subscribe, both replies awaited), and every one
//! stays subscribed, reading what it is sent. Reports how long until all
//! were subscribed (or how many were by `--timeout-secs`), then, after
//! `--settle-secs`, the join and leave pushes and the frames the
//! connections received (those in the subscribe's reply frames included). On a channel whose namespace has `join_leave`
//! each subscribe is announced to the channel's subscribers: compare with
//! a namespace without it (docs/benchmarks.md, "Join/leave at scale").

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};

use crate::wire::{Event, Role, Wire};
use crate::{open_at, Ws};

#[derive(clap::Args)]
pub struct Params {
    /// Connections, each subscribing to the channel.
    #[arg(long, default_value_t = 10_000)]
    subscribers: usize,
    #[arg(long, default_value = "bench")]
    channel: String,
    /// Connections opening at once.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Give up opening more after this long (the report says how many).
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
    /// How long to keep reading after the last subscribe, before counting.
    #[arg(long, default_value_t = 2)]
    settle_secs: u64,
    #[arg(long, default_value_t = 4)]
    source_ips: u8,
}

/// What the connections received.
#[derive(Default)]
struct Counts {
    frames: AtomicU64,
    joins: AtomicU64,
    leaves: AtomicU64,
}

pub async fn run(wire: Wire, server: SocketAddr, token: &str, p: Params) -> anyhow::Result<()> {
    let counts = Arc::new(Counts::default());
    let next = Arc::new(AtomicUsize::new(0));
    let subscribed = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(p.timeout_secs);
    let mut openers = Vec::new();
    for _ in 0..p.concurrency.max(1) {
        let (next, subscribed, counts) = (next.clone(), subscribed.clone(), counts.clone());
        let (token, channel, n, ips) = (
            token.to_string(),
            p.channel.clone(),
            p.subscribers,
            p.source_ips,
        );
        openers.push(tokio::spawn(async move {
            let mut readers = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n || Instant::now() >= deadline {
                    return Ok::<_, anyhow::Error>(readers);
                }
                let mut ws = open_at(server, wire.path(), i, ips).await?;
                match tokio::time::timeout_at(
                    deadline.into(),
                    wire.handshake(
                        &mut ws,
                        Role::Subscriber,
                        &token,
                        &channel,
                        |e| count(e, &counts),
                        || {
                            counts.frames.fetch_add(1, Ordering::Relaxed);
                        },
                    ),
                )
                .await
                {
                    Ok(r) => r?,
                    Err(_) => return Ok(readers),
                }
                let k = subscribed.fetch_add(1, Ordering::Relaxed) + 1;
                if k.is_multiple_of(1000) {
                    eprintln!(
                        "progress: {k} subscribed at {:.2} s",
                        start.elapsed().as_secs_f64()
                    );
                }
                readers.push(tokio::spawn(read(wire, ws, counts.clone())));
            }
        }));
    }
    let mut readers = Vec::new();
    for o in openers {
        readers.extend(o.await??);
    }
    let took = start.elapsed().as_secs_f64();
    let n = subscribed.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(p.settle_secs)).await;
    println!(
        "join-storm: channel {:?}, {} subscribers wanted, {} at a time",
        p.channel, p.subscribers, p.concurrency
    );
    println!(
        "subscribed: {n} in {took:.2} s ({:.0}/s){}",
        n as f64 / took,
        if n < p.subscribers {
            " (timed out)"
        } else {
            ""
        }
    );
    println!(
        "received after {} s more: {} join, {} leave pushes in {} frames; load generator CPU {:.2} s",
        p.settle_secs,
        counts.joins.load(Ordering::Relaxed),
        counts.leaves.load(Ordering::Relaxed),
        counts.frames.load(Ordering::Relaxed),
        own_cpu_secs()
    );
    for r in readers {
        r.abort();
    }
    Ok(())
}

/// This process's CPU time (user + system) so far, from `/proc/self/stat`.
fn own_cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (in parentheses): utime and stime are
    // the 12th and 13th, in clock ticks (100 a second on Linux).
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / 100.0
}

/// Count a join or leave push.
fn count(e: &Event<'_>, counts: &Counts) {
    match e {
        Event::Join => counts.joins.fetch_add(1, Ordering::Relaxed),
        Event::Leave => counts.leaves.fetch_add(1, Ordering::Relaxed),
        _ => 0,
    };
}

/// Read a subscribed connection: answer pings, count frames and join/leave
/// pushes.
async fn read(wire: Wire, mut ws: Ws, counts: Arc<Counts>) {
    let mut reader = wire.reader();
    while let Some(Ok(msg)) = ws.next().await {
        if msg.is_text() || msg.is_binary() {
            counts.frames.fetch_add(1, Ordering::Relaxed);
        }
        let mut ping = false;
        let read = reader.feed(&msg, |e| {
            ping |= e == Event::Ping;
            count(&e, &counts);
        });
        if read.is_err() {
            break;
        }
        if ping {
            let _ = ws.send(wire.pong()).await;
        }
    }
}
