//! What the cluster fault tests share (`chaos.rs`, `storm.rs`): the whole local
//! cluster behind nginx ([`Cluster`]), numbered publications through its API
//! ([`Publisher`]), and reconnect-time percentiles.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use groupcast_testkit::edge::{EdgeProcess, EDGE_CONFIG};
use groupcast_testkit::membership::MembershipCluster;
use groupcast_testkit::nats::NatsCluster;
use groupcast_testkit::nginx::Nginx;
use groupcast_testkit::slowlink::SlowLinks;
use groupcast_testkit::{try_http_request, API_KEY};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

pub const BIN: &str = env!("CARGO_BIN_EXE_groupcast");
/// Bound for what the cluster helpers wait for.
pub const WAIT: Duration = Duration::from_secs(30);

/// Numbered publications through nginx's API at a steady rate, each
/// retried with its idempotency key until it is accepted.
pub struct Publisher {
    pub acked: Arc<Vec<AtomicU64>>,
    pub stats: Arc<Mutex<PublishStats>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default, Debug)]
pub struct PublishStats {
    pub accepted: u64,
    /// Failed attempts (later retried), by HTTP status or API error code.
    pub failed: BTreeMap<String, u64>,
    /// How long each failed attempt took to fail, in ms.
    pub failed_after_ms: Vec<u128>,
    /// Longest time from the first attempt to acceptance.
    pub max_latency: Duration,
    /// Each accepted publication: when, and how long it took from its first
    /// attempt.
    pub accepted_at: Vec<(Instant, Duration)>,
}

/// Milliseconds since the Unix epoch (the publications' `data.t`).
pub fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Publisher {
    /// One publish every `every`, the channels in turn (`data.n`: 1, 2, ...
    /// per channel, `data.t`: when it was first sent, Unix ms; `acked[i]` the
    /// last accepted on `channels[i]`). Each channel has its own publisher,
    /// every `every × channels`, waiting for its publication's
    /// acknowledgement before the next: a slow backbone slows each channel,
    /// not all of them behind one. Gives up on a publication (the test fails)
    /// after `patience` of failed attempts: [`WAIT`], or an outage the test
    /// makes on purpose.
    pub fn start(
        lb: SocketAddr,
        channels: Vec<String>,
        every: Duration,
        patience: Duration,
    ) -> Publisher {
        let acked: Arc<Vec<AtomicU64>> =
            Arc::new(channels.iter().map(|_| AtomicU64::new(0)).collect());
        let stats: Arc<Mutex<PublishStats>> = Arc::default();
        let stop = CancellationToken::new();
        let start = tokio::time::Instant::now();
        let period = every * channels.len() as u32;
        let channels = Arc::new(channels);
        let loops: Vec<_> = (0..channels.len())
            .map(|ch| {
                let (acked, stats, stop) = (acked.clone(), stats.clone(), stop.clone());
                let channels = channels.clone();
                async move {
                    let mut tick = tokio::time::interval_at(start + every * ch as u32, period);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tick.tick() => {}
                        }
                        let n = acked[ch].load(Ordering::SeqCst) + 1;
                        let body = json!({
                            "channel": channels[ch],
                            "data": { "n": n, "t": now_millis() },
                            "idempotency_key": format!("p{n}"),
                        })
                        .to_string();
                        let started = Instant::now();
                        loop {
                            let attempt = Instant::now();
                            let answer = tokio::time::timeout(
                                Duration::from_secs(15),
                                try_http_request(
                                    lb,
                                    "POST",
                                    "/api/publish",
                                    &format!("X-API-Key: {API_KEY}\r\n"),
                                    body.as_bytes(),
                                ),
                            )
                            .await;
                            let failure = match answer {
                                Ok(Ok((200, b))) => {
                                    let v: Value = serde_json::from_slice(&b).unwrap_or_default();
                                    match v.get("error") {
                                        None => break,
                                        Some(e) => format!("error {} {}", e["code"], e["message"]),
                                    }
                                }
                                Ok(Ok((status, _))) => format!("HTTP {status}"),
                                Ok(Err(e)) => format!("I/O {}", e.kind()),
                                Err(_) => "no answer in 15 s".into(),
                            };
                            {
                                let mut s = stats.lock().unwrap();
                                *s.failed.entry(failure).or_default() += 1;
                                s.failed_after_ms.push(attempt.elapsed().as_millis());
                            }
                            assert!(
                                started.elapsed() < patience,
                                "publish {n} to {} not accepted within {patience:?}: {:?}",
                                channels[ch],
                                stats.lock().unwrap()
                            );
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        acked[ch].store(n, Ordering::SeqCst);
                        let mut s = stats.lock().unwrap();
                        s.accepted += 1;
                        s.max_latency = s.max_latency.max(started.elapsed());
                        s.accepted_at.push((Instant::now(), started.elapsed()));
                    }
                }
            })
            .collect();
        let task = tokio::spawn(async move {
            futures_util::future::join_all(loops).await;
        });
        Publisher {
            acked,
            stats,
            stop,
            task,
        }
    }

    /// Stops publishing; panics if the publisher gave up.
    pub async fn stop(self) -> (Arc<Vec<AtomicU64>>, PublishStats) {
        self.stop.cancel();
        self.task.await.expect("publisher");
        let stats = std::mem::take(&mut *self.stats.lock().unwrap());
        (self.acked, stats)
    }
}

/// The whole cluster behind nginx.
pub struct Cluster {
    pub nats: NatsCluster,
    pub membership: MembershipCluster,
    pub edges: Vec<EdgeProcess>,
    pub lb: Nginx,
}

/// How [`Cluster::start_opts`] differs from the local cluster.
pub struct Options {
    /// Edge `i` on the NATS servers `urls_of(all, i)`.
    pub urls_of: fn(&[String], usize) -> Vec<String>,
    /// Environment added to edge `i` (e.g. `GROUPCAST_CLIENT__MAX_CONNECTIONS`).
    pub edge_env: [Vec<(&'static str, String)>; 3],
    /// nginx's connections ([`Nginx::start_sized`]); None: the template's.
    pub lb_connections: Option<usize>,
    /// The binary of the replicas and edges; None: this tree's.
    pub bin: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            urls_of: |urls, _| urls.to_vec(),
            edge_env: Default::default(),
            lb_connections: None,
            bin: None,
        }
    }
}

impl Cluster {
    pub async fn start() -> Cluster {
        Cluster::start_opts(Options::default()).await
    }

    /// The cluster with edge `i` on the NATS servers `urls_of(all, i)`.
    pub async fn start_with(urls_of: fn(&[String], usize) -> Vec<String>) -> Cluster {
        Cluster::start_opts(Options {
            urls_of,
            ..Options::default()
        })
        .await
    }

    pub async fn start_opts(opts: Options) -> Cluster {
        let bin = opts.bin.clone().unwrap_or_else(|| BIN.into());
        // NATS with the local cluster's users and permissions
        // (deploy/local/nats-auth.conf.tmpl); the edges connect as `edge`.
        let (nats, membership) = tokio::join!(
            NatsCluster::start_with_permissions(),
            MembershipCluster::start(&bin, 3, &[])
        );
        let urls = nats.urls();
        Cluster::assemble(nats, membership, &urls, opts).await
    }

    /// The cluster with every NATS route and every edge's NATS connection
    /// through a proxy of `links` (a slow, lossy backbone).
    pub async fn start_slow(links: &SlowLinks) -> Cluster {
        let (nats, membership) = tokio::join!(
            NatsCluster::start_slow(links),
            MembershipCluster::start(Path::new(BIN), 3, &[])
        );
        let urls = nats.slow_urls();
        Cluster::assemble(nats, membership, &urls, Options::default()).await
    }

    /// The edges on `nats` (edge `i` given `opts.urls_of(urls, i)`), and
    /// nginx.
    async fn assemble(
        nats: NatsCluster,
        membership: MembershipCluster,
        urls: &[String],
        opts: Options,
    ) -> Cluster {
        let urls_of = opts.urls_of;
        let bin = opts.bin.clone().unwrap_or_else(|| BIN.into());
        let bin = bin.as_path();
        let config = format!("{EDGE_CONFIG}{}", membership.edge_section());
        let credentials = nats.users().expect("with permissions").edge_env();
        let mut env: Vec<(&str, &str)> =
            credentials.iter().map(|(k, v)| (*k, v.as_str())).collect();
        env.extend([
            ("GROUPCAST_CLIENT__COMMAND_RATE", "0"),
            ("GROUPCAST_CHANNEL__HISTORY_REPLICAS", "3"),
        ]);
        let (urls_a, urls_b, urls_c) = (urls_of(urls, 0), urls_of(urls, 1), urls_of(urls, 2));
        let env_of = |i: usize| {
            let mut e = env.clone();
            e.extend(opts.edge_env[i].iter().map(|(k, v)| (*k, v.as_str())));
            e
        };
        let (env_a, env_b, env_c) = (env_of(0), env_of(1), env_of(2));
        let (a, b, c) = tokio::join!(
            EdgeProcess::start(bin, "edge-a", &urls_a, &config, &env_a),
            EdgeProcess::start(bin, "edge-b", &urls_b, &config, &env_b),
            EdgeProcess::start(bin, "edge-c", &urls_c, &config, &env_c),
        );
        let edges = vec![a, b, c];
        let lb = match opts.lb_connections {
            None => Nginx::start(&self_addrs(&edges)).await,
            Some(n) => Nginx::start_sized(&self_addrs(&edges), n).await,
        };
        Cluster {
            nats,
            membership,
            edges,
            lb,
        }
    }

    /// API call through nginx; None on any failure (an error reply too).
    pub async fn api(&self, method: &str, body: Value) -> Option<Value> {
        let (status, b) = try_http_request(
            self.lb.addr,
            "POST",
            &format!("/api/{method}"),
            &format!("X-API-Key: {API_KEY}\r\n"),
            body.to_string().as_bytes(),
        )
        .await
        .ok()?;
        let v: Value = serde_json::from_slice(&b).ok()?;
        (status == 200 && v.get("error").is_none()).then_some(v)
    }

    /// Asserts no running edge ever lost its membership lease, that
    /// `info` lists exactly the running edges, and that NATS never refused
    /// an edge anything (its permissions cover all an edge does).
    pub async fn assert_leases_kept(&self, running: &[usize]) {
        self.assert_leases_kept_since(running, &[0; 3]).await
    }

    /// How many times each edge's log says it lost its lease.
    pub fn leases_lost(&self) -> Vec<usize> {
        self.edges
            .iter()
            .map(|e| e.log().matches("lease lost").count())
            .collect()
    }

    /// [`Self::assert_leases_kept`], counting only the leases lost since
    /// `before` ([`Self::leases_lost`] at the fault).
    pub async fn assert_leases_kept_since(&self, running: &[usize], before: &[usize]) {
        for &i in running {
            let log = self.edges[i].log();
            assert!(
                log.matches("lease lost").count() <= before[i],
                "edge {} lost its lease:\n{log}",
                self.edges[i].name
            );
        }
        for s in &self.nats.servers {
            let log = s.log();
            let refused: Vec<&str> = log.lines().filter(|l| l.contains("Violation")).collect();
            assert!(refused.is_empty(), "NATS {} refused: {refused:#?}", s.name);
        }
        let want: BTreeSet<String> = running
            .iter()
            .map(|&i| self.edges[i].name.clone())
            .collect();
        let deadline = Instant::now() + WAIT;
        loop {
            let names: BTreeSet<String> = match self.api("info", json!({})).await {
                Some(v) => v["result"]["nodes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|n| n["name"].as_str().map(str::to_string))
                    .collect(),
                None => BTreeSet::new(),
            };
            if names == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "info lists {names:?}, running {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// One received publication (`pub`, with `data.n` and `offset`) checked
/// against the last number its client holds: in order it becomes the last;
/// a repeat or a jump is what the client reports (a jump moves `last` on, so
/// one hole is reported once). The client's recovery position takes its
/// offset either way.
pub fn next_publication(
    p: &Value,
    last: &mut u64,
    position: &mut Option<(u64, String)>,
) -> Result<(), String> {
    let n = p["data"]["n"].as_u64().unwrap_or(0);
    if let (Some(off), Some((o, _))) = (p["offset"].as_u64(), position.as_mut()) {
        *o = off;
    }
    let before = *last;
    if n == before + 1 {
        *last = n;
        Ok(())
    } else if n <= before {
        Err(format!("duplicate {n} (after {before})"))
    } else {
        *last = n;
        Err(format!("gap: {before} → {n}"))
    }
}

/// p50, p99 and max of `d`, in milliseconds.
pub fn percentiles(mut d: Vec<Duration>) -> String {
    if d.is_empty() {
        return "none".into();
    }
    d.sort();
    let at = |q: f64| d[((d.len() as f64 * q).ceil() as usize).clamp(1, d.len()) - 1].as_millis();
    format!(
        "{} reconnects: p50 {} ms, p99 {} ms, max {} ms",
        d.len(),
        at(0.50),
        at(0.99),
        at(1.0)
    )
}

/// The edges' addresses, for a load balancer in front of them.
pub fn self_addrs(edges: &[EdgeProcess]) -> Vec<SocketAddr> {
    edges.iter().map(|e| e.addr).collect()
}
