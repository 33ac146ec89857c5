//! `soak`: long mixed traffic against one edge, sampling its resident
//! memory, open file descriptors and task count every few seconds into a
//! CSV, to show that nothing grows: `benches/soak.sh` runs it for 20
//! minutes and plots the CSV (docs/benchmarks.md).
//!
//! The traffic, all at once:
//! * resident connections subscribed to a history and a plain channel,
//!   reading everything;
//! * API publishes at a steady rate into those channels;
//! * one connection asking `presence`, `presence_stats` and `history` in a
//!   loop;
//! * churn: every cycle, CHURN connections connect and subscribe, stay a
//!   third of the cycle, and disconnect; the rest of the cycle is idle (the
//!   samples there are compared with the first idle ones);
//! * a slow consumer every cycle: a connection on a firehose channel that
//!   never reads, which the edge must cut (3008) while everyone else goes
//!   on.
//!
//! Unexpected errors (an error reply, a resident connection lost, a
//! publish refused) are counted and must stay 0.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use groupcast_client::{Client, ClientError};
use serde_json::{json, Value};

#[derive(clap::Args)]
pub struct Params {
    /// How long to run.
    #[arg(long, default_value = "1200")]
    secs: u64,
    /// The edge's process id (memory and file descriptors from /proc).
    #[arg(long)]
    server_pid: u32,
    #[arg(long)]
    api_key: String,
    /// Where to write the samples (CSV).
    #[arg(long)]
    csv: PathBuf,
    /// Connections that stay for the whole run.
    #[arg(long, default_value_t = 200)]
    resident: usize,
    /// Connections that come and go each cycle.
    #[arg(long, default_value_t = 500)]
    churn: usize,
    /// Churn cycle (one slow consumer per cycle too).
    #[arg(long, default_value = "60")]
    cycle_secs: u64,
    /// API publishes per second.
    #[arg(long, default_value_t = 100)]
    publish_rate: u64,
    /// Seconds between samples.
    #[arg(long, default_value = "10")]
    sample_secs: u64,
}

/// What went wrong that should not have.
#[derive(Default)]
struct Errors {
    count: AtomicU64,
    first: Mutex<Vec<String>>,
}

impl Errors {
    fn add(&self, what: String) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut f = self.first.lock().expect("errors");
        if f.len() < 10 {
            f.push(what);
        }
    }
}

struct Shared {
    url: String,
    token: String,
    server: SocketAddr,
    api_key: String,
    stop: AtomicBool,
    errors: Errors,
    delivered: AtomicU64,
    published: AtomicU64,
    /// Churn connections are open (the sampler tags its samples).
    churning: AtomicBool,
    /// Slow consumers started, and cut by the edge.
    slow_runs: AtomicU64,
    slow_cut: AtomicU64,
}

impl Shared {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    async fn connect(&self, channels: &[String]) -> anyhow::Result<Client> {
        let (mut c, reply) = Client::connect(&self.url, &self.token).await?;
        anyhow::ensure!(reply["connect"].is_object(), "connect: {reply}");
        for ch in channels {
            let r = c.command("subscribe", json!({ "channel": ch })).await?;
            anyhow::ensure!(r["subscribe"].is_object(), "subscribe {ch}: {r}");
        }
        Ok(c)
    }

    async fn api(&self, method: &str, body: &Value) -> anyhow::Result<Value> {
        crate::http::api(self.server, &self.api_key, method, body).await
    }
}

/// A resident connection: reads everything until the end of the run.
async fn resident(sh: Arc<Shared>, i: usize) {
    let channels = [
        format!("soak-h{}", i % 10),
        format!("plain:soak-p{}", i % 10),
    ];
    let mut c = match sh.connect(&channels).await {
        Ok(c) => c,
        Err(e) => return sh.errors.add(format!("resident {i}: {e}")),
    };
    while !sh.stopped() {
        match c.push(Duration::from_secs(1)).await {
            Ok(p) if p["pub"].is_object() => {
                sh.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) | Err(ClientError::Timeout) => {}
            Err(e) => return sh.errors.add(format!("resident {i} lost: {e}")),
        }
    }
    c.close().await;
}

/// API publishes at `rate`/s, alternating history and plain channels.
async fn publisher(sh: Arc<Shared>, rate: u64) {
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for n in 0u64.. {
        tick.tick().await;
        if sh.stopped() {
            return;
        }
        let channel = match n % 2 {
            0 => format!("soak-h{}", (n / 2) % 10),
            _ => format!("plain:soak-p{}", (n / 2) % 10),
        };
        let body = json!({ "channel": channel, "data": { "n": n, "pad": "x".repeat(160) } });
        match sh.api("publish", &body).await {
            Ok(_) => {
                sh.published.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => sh.errors.add(format!("publish {n}: {e}")),
        }
    }
}

/// Presence, presence stats and history, five times a second.
async fn querier(sh: Arc<Shared>) {
    let (h, p) = ("soak-h0".to_string(), "plain:soak-p0".to_string());
    let mut c = match sh.connect(&[h.clone(), p.clone()]).await {
        Ok(c) => c,
        Err(e) => return sh.errors.add(format!("querier: {e}")),
    };
    let asks = [
        ("presence", json!({ "channel": h })),
        ("presence_stats", json!({ "channel": p })),
        (
            "history",
            json!({ "channel": h, "limit": 10, "reverse": true }),
        ),
    ];
    while !sh.stopped() {
        for (method, body) in &asks {
            match c.command(method, body.clone()).await {
                Ok(r) if r.get("error").is_none() => {}
                Ok(r) => sh.errors.add(format!("{method}: {r}")),
                Err(e) => return sh.errors.add(format!("querier lost: {e}")),
            }
        }
        // Pushes queue up in the client: drop them.
        while c.push(Duration::from_millis(1)).await.is_ok() {}
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    c.close().await;
}

/// One churn wave: `n` connections in, held for `hold`, out.
async fn churn_wave(sh: Arc<Shared>, n: usize, hold: Duration) {
    let mut conns = Vec::with_capacity(n);
    for j in 0..n {
        match sh.connect(&[format!("soak-c{}", j % 50)]).await {
            Ok(c) => conns.push(c),
            Err(e) => sh.errors.add(format!("churn {j}: {e}")),
        }
    }
    tokio::time::sleep(hold).await;
    for c in conns {
        c.close().await;
    }
}

/// The edge's count of slow consumers it cut.
const SLOW_CUT: &str = "groupcast_disconnects_total{code=\"3008\"}";

/// A connection on the firehose that never reads, and a firehose that
/// runs until the edge cut it (3008) or `within` passed; true when cut.
async fn slow_consumer(sh: Arc<Shared>, within: Duration) -> bool {
    let before = metric(sh.server, SLOW_CUT).await;
    let mut c = match sh.connect(&["plain:firehose".to_string()]).await {
        Ok(c) => c,
        Err(e) => {
            sh.errors.add(format!("slow consumer: {e}"));
            return false;
        }
    };
    c.auto_pong = false;
    let deadline = Instant::now() + within;
    let body = json!({ "channel": "plain:firehose", "data": "x".repeat(16 * 1024) });
    let mut cut = false;
    while Instant::now() < deadline && !sh.stopped() {
        for _ in 0..20 {
            if let Err(e) = sh.api("publish", &body).await {
                sh.errors.add(format!("firehose: {e}"));
            }
        }
        if metric(sh.server, SLOW_CUT).await > before {
            cut = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(c);
    cut
}

fn rss_kib(pid: u32) -> u64 {
    crate::rss_kib(pid).unwrap_or(0)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// One value from the edge's /metrics (NaN when it does not answer).
async fn metric(server: SocketAddr, name: &str) -> f64 {
    crate::http::metric(server, name).await.unwrap_or(f64::NAN)
}

pub async fn run(server: SocketAddr, token: &str, p: Params) -> anyhow::Result<()> {
    let sh = Arc::new(Shared {
        url: format!("ws://{server}/connection/websocket"),
        token: token.to_string(),
        server,
        api_key: p.api_key.clone(),
        stop: AtomicBool::new(false),
        errors: Errors::default(),
        delivered: AtomicU64::new(0),
        published: AtomicU64::new(0),
        churning: AtomicBool::new(false),
        slow_runs: AtomicU64::new(0),
        slow_cut: AtomicU64::new(0),
    });
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..p.resident {
        tasks.push(tokio::spawn(resident(sh.clone(), i)));
    }
    tasks.push(tokio::spawn(publisher(sh.clone(), p.publish_rate)));
    tasks.push(tokio::spawn(querier(sh.clone())));

    // Churn and slow consumers, cycle after cycle.
    let cycles = tokio::spawn({
        let sh = sh.clone();
        let (cycle, churn) = (Duration::from_secs(p.cycle_secs), p.churn);
        async move {
            // Warm-up: one idle stretch first, for the baseline.
            tokio::time::sleep(cycle / 2).await;
            while !sh.stopped() {
                let start = Instant::now();
                sh.churning.store(true, Ordering::Relaxed);
                churn_wave(sh.clone(), churn, cycle / 3).await;
                // Closed connections' tasks finish within a moment.
                tokio::time::sleep(Duration::from_secs(2)).await;
                sh.churning.store(false, Ordering::Relaxed);
                sh.slow_runs.fetch_add(1, Ordering::Relaxed);
                if slow_consumer(sh.clone(), Duration::from_secs(20)).await {
                    sh.slow_cut.fetch_add(1, Ordering::Relaxed);
                }
                let left = cycle.saturating_sub(start.elapsed());
                tokio::time::sleep(left).await;
            }
        }
    });

    let mut csv = String::from(
        "t_s,phase,rss_kib,fds,tasks,connections,published,delivered,unexpected_errors,slow_consumers_cut\n",
    );
    // Idle samples (no churn connections open): before the first churn
    // wave (`cycle` 0) and after each (`cycle` n).
    let mut idle: Vec<(u64, u64, usize, f64)> = Vec::new();
    let mut cycle: u64 = 0;
    let mut was_churning = false;
    let end = started + Duration::from_secs(p.secs);
    let every = Duration::from_secs(p.sample_secs);
    let mut next = started + every;
    while Instant::now() < end {
        tokio::time::sleep_until(next.into()).await;
        next += every;
        let phase = if sh.churning.load(Ordering::Relaxed) {
            "churn"
        } else {
            "idle"
        };
        let (rss, fds) = (rss_kib(p.server_pid), open_fds(p.server_pid));
        let tasks = metric(server, "groupcast_runtime_tasks").await;
        let conns = metric(
            server,
            "groupcast_connections{protocol=\"centrifugo\",transport=\"websocket\"}",
        )
        .await;
        let line = format!(
            "{:.0},{phase},{rss},{fds},{tasks},{conns},{},{},{},{}\n",
            started.elapsed().as_secs_f64(),
            sh.published.load(Ordering::Relaxed),
            sh.delivered.load(Ordering::Relaxed),
            sh.errors.count.load(Ordering::Relaxed),
            sh.slow_cut.load(Ordering::Relaxed),
        );
        print!("{line}");
        csv.push_str(&line);
        std::fs::write(&p.csv, &csv).context("write the CSV")?;
        if phase == "idle" {
            if was_churning {
                cycle += 1;
            }
            idle.push((cycle, rss, fds, tasks));
        }
        was_churning = phase == "churn";
    }
    sh.stop.store(true, Ordering::Relaxed);
    cycles.abort();
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }

    // The verdict: idle samples against the first idle one.
    let errors = sh.errors.count.load(Ordering::Relaxed);
    println!();
    println!(
        "ran {:.0} s: {} publishes, {} deliveries, {} slow consumers cut of {} started",
        started.elapsed().as_secs_f64(),
        sh.published.load(Ordering::Relaxed),
        sh.delivered.load(Ordering::Relaxed),
        sh.slow_cut.load(Ordering::Relaxed),
        sh.slow_runs.load(Ordering::Relaxed)
    );
    // Before any churn the allocator has not grown its arenas yet; after
    // the first wave RSS should stay flat, and fds and tasks return to the
    // same numbers after every wave.
    let before: Vec<_> = idle.iter().filter(|s| s.0 == 0).collect();
    let after: Vec<_> = idle.iter().filter(|s| s.0 > 0).collect();
    if let (Some(b), Some(first), Some(last)) = (before.first(), after.first(), after.last()) {
        let fds: Vec<usize> = after.iter().map(|s| s.2).collect();
        let tasks: Vec<f64> = after.iter().map(|s| s.3).collect();
        println!(
            "idle before any churn: RSS {} KiB, {} fds, {} tasks",
            b.1, b.2, b.3
        );
        println!(
            "idle after churn waves 1..{}: RSS {} KiB after the first, {} KiB after the last \
             ({:+} KiB), fds {}..{}, tasks {}..{}",
            last.0,
            first.1,
            last.1,
            last.1 as i64 - first.1 as i64,
            fds.iter().min().unwrap_or(&0),
            fds.iter().max().unwrap_or(&0),
            tasks.iter().copied().fold(f64::INFINITY, f64::min),
            tasks.iter().copied().fold(0.0, f64::max),
        );
    }
    println!("unexpected errors: {errors}");
    for e in sh.errors.first.lock().expect("errors").iter() {
        println!("  {e}");
    }
    Ok(())
}
