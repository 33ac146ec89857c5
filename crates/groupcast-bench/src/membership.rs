//! `membership`: committed presence changes per second through edge
//! handles, and presence query latency, against a running membership
//! cluster (`benches/membership.sh` starts one).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use groupcast_core::membership::Membership;
use groupcast_membership::certs::TlsFiles;
use groupcast_membership::{MembershipClient, MembershipClientConfig};
use groupcast_proto::client::ClientInfo;

#[derive(clap::Args)]
pub struct Params {
    /// Replica QUIC addresses (comma-separated or repeated).
    #[arg(long, value_delimiter = ',', required = true)]
    seeds: Vec<String>,
    /// Directory with ca.pem and the client certificate.
    #[arg(long)]
    certs: std::path::PathBuf,
    #[arg(long, default_value = "edge")]
    cert_name: String,
    /// Edge handles (each a separate edge registration).
    #[arg(long, default_value_t = 4)]
    edges: usize,
    /// Concurrent join/leave loops per edge handle.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    #[arg(long, default_value = "10")]
    secs: u64,
}

pub async fn run(p: Params) -> anyhow::Result<()> {
    let tls = TlsFiles::in_dir(&p.certs, &p.cert_name);
    let mut handles = Vec::new();
    for e in 0..p.edges {
        let cfg =
            MembershipClientConfig::new(p.seeds.clone(), tls.clone(), format!("bench-edge-{e}"));
        let h = MembershipClient::start(cfg).await?;
        anyhow::ensure!(
            h.wait_available(Duration::from_secs(10)).await,
            "edge handle {e} could not register"
        );
        handles.push(h);
    }
    let committed = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs(p.secs);
    let mut tasks = Vec::new();
    for (e, h) in handles.iter().enumerate() {
        for t in 0..p.concurrency {
            let (h, committed, failed) = (h.clone(), committed.clone(), failed.clone());
            tasks.push(tokio::spawn(async move {
                // Each task joins and leaves one of 100 channels in turn.
                let client = format!("e{e}-t{t}");
                let channel = format!("bench-{}", t % 100);
                let info = ClientInfo {
                    user: format!("u{t}"),
                    client: client.clone(),
                    ..Default::default()
                };
                while Instant::now() < stop {
                    for ok in [
                        h.add_presence(&channel, info.clone()).await.is_ok(),
                        h.remove_presence(&channel, &client).await.is_ok(),
                    ] {
                        if ok && h.is_available() {
                            committed.fetch_add(1, Ordering::Relaxed);
                        } else {
                            failed.fetch_add(1, Ordering::Relaxed);
                            // Unavailable: the calls return at once; do not
                            // spin (it would starve the handle's own tasks).
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
            }));
        }
    }
    // A steady presence reader on a channel the writers use.
    let reader = handles[0].clone();
    let queries = tokio::spawn(async move {
        let mut lat = Vec::new();
        let mut sizes = 0usize;
        while Instant::now() < stop {
            let t = Instant::now();
            match reader.presence("bench-0").await {
                Ok(p) => {
                    lat.push(t.elapsed().as_micros() as u64);
                    sizes += p.len();
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
        (lat, sizes)
    });
    let started = Instant::now();
    for t in tasks {
        t.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (mut lat, sizes) = queries.await?;
    lat.sort_unstable();
    let n = committed.load(Ordering::Relaxed);
    println!(
        "membership: {} edges x {} concurrent joins/leaves, {:.1}s",
        p.edges, p.concurrency, elapsed
    );
    println!(
        "committed presence changes: {n} ({:.0}/s), not committed: {}",
        n as f64 / elapsed,
        failed.load(Ordering::Relaxed)
    );
    if !lat.is_empty() {
        println!(
            "presence query (linearizable, ~{} entries): {} queries, p50 {:.2} ms, p99 {:.2} ms",
            sizes / lat.len(),
            lat.len(),
            crate::percentile(&lat, 0.50) as f64 / 1000.0,
            crate::percentile(&lat, 0.99) as f64 / 1000.0
        );
    }
    for h in handles {
        let _ = h.close().await;
    }
    Ok(())
}
