//! Slow links: TCP proxies in the test process that hold every chunk they
//! forward for a set delay, in both directions, keeping its order. The
//! kernel here has no `netem`, so a delayed link is a proxy in the path
//! (the edges' NATS connections, the routes between NATS servers:
//! [`crate::nats::NatsCluster::start_slow`]); loss is packet loss on the
//! proxies' ports ([`crate::netfault::NetFaults::lossy`], iptables
//! `statistic`), which TCP retransmits, as on a real lossy network.
//!
//! Every proxy of one [`SlowLinks`] shares its delay ([`SlowLinks::set_delay`],
//! 0 at first); its tasks end when it is dropped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Proxies sharing one delay. Dropping it ends every proxy and the
/// connections through them.
#[derive(Default)]
pub struct SlowLinks {
    /// The delay, in microseconds.
    delay_us: Arc<AtomicU64>,
    tasks: Mutex<JoinSet<()>>,
    ports: Mutex<Vec<u16>>,
}

impl SlowLinks {
    pub fn new() -> SlowLinks {
        SlowLinks::default()
    }

    /// A proxy to `target` on a free loopback port, which it returns.
    pub async fn proxy(&self, target: SocketAddr) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a proxy port");
        let port = listener.local_addr().expect("its address").port();
        let delay = self.delay_us.clone();
        self.tasks
            .lock()
            .expect("tasks")
            .spawn(accept(listener, target, delay));
        self.ports.lock().expect("ports").push(port);
        port
    }

    /// Hold what passes every proxy for `d` from now on (each chunk is
    /// held from when it was read; what was read earlier keeps its delay
    /// and its place in line).
    pub fn set_delay(&self, d: Duration) {
        self.delay_us.store(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// The proxies' listening ports (for loss rules on them).
    pub fn ports(&self) -> Vec<u16> {
        self.ports.lock().expect("ports").clone()
    }
}

async fn accept(listener: TcpListener, target: SocketAddr, delay: Arc<AtomicU64>) {
    // The connections end with this task (dropped with the JoinSet).
    let mut conns = JoinSet::new();
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            continue;
        };
        let delay = delay.clone();
        conns.spawn(async move {
            let Ok(outbound) = TcpStream::connect(target).await else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let (ri, wi) = inbound.into_split();
            let (ro, wo) = outbound.into_split();
            tokio::join!(pump(ri, wo, delay.clone()), pump(ro, wi, delay),);
        });
        // Reap the finished ones.
        while conns.try_join_next().is_some() {}
    }
}

/// One direction: read, hold each chunk for the delay, write in order.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Arc<AtomicU64>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let due = Instant::now() + Duration::from_micros(delay.load(Ordering::Relaxed));
                    if tx.send((due, buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
        // Dropping `tx` ends the writer after what is queued.
    };
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}
