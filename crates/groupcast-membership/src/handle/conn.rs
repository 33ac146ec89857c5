//! [`Conn`]: requests to the leader, whichever replica that is. `NotLeader`
//! answers are followed, dead replicas skipped, each try bounded.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::MembershipClientError;
use crate::certs::{self, TlsFiles};
use crate::transport::{resolve, Peers, Reply, Request, Status};

/// Requests to the leader, whichever replica that is.
pub struct Conn {
    pub(super) seeds: Vec<String>,
    peers: Peers,
    leader: Mutex<Option<String>>,
    next_seed: AtomicUsize,
}

/// Longest wait for one replica before trying another.
const PER_TRY: Duration = Duration::from_secs(1);

impl Conn {
    /// A client-only QUIC endpoint with our certificate.
    pub async fn connect(
        seeds: Vec<String>,
        tls: &TlsFiles,
    ) -> Result<Conn, MembershipClientError> {
        let first = seeds.first().ok_or(MembershipClientError::NoSeeds)?;
        let (sock, _) = resolve(first).await?;
        let bind: std::net::SocketAddr = if sock.is_ipv4() {
            "0.0.0.0:0".parse().expect("literal")
        } else {
            "[::]:0".parse().expect("literal")
        };
        let mut endpoint = quinn::Endpoint::client(bind)
            .map_err(|e| MembershipClientError::Endpoint(e.to_string()))?;
        endpoint.set_default_client_config(certs::quic_client(tls)?);
        Ok(Conn {
            peers: Peers::new(endpoint, tls.server_name.as_deref()),
            seeds,
            leader: Mutex::new(None),
            next_seed: AtomicUsize::new(0),
        })
    }

    fn next_seed(&self) -> String {
        let i = self.next_seed.fetch_add(1, Ordering::Relaxed);
        self.seeds[i % self.seeds.len()].clone()
    }

    /// Sends `req` to the leader, following redirects, until an answer or
    /// `timeout`.
    pub async fn call(
        &self,
        req: &Request,
        timeout: Duration,
    ) -> Result<Reply, MembershipClientError> {
        let deadline = Instant::now() + timeout;
        let mut target = self
            .leader
            .lock()
            .clone()
            .unwrap_or_else(|| self.next_seed());
        let mut last = String::from("no replica answered");
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(MembershipClientError::Service(last));
            }
            match self.peers.get(&target).call(req, left.min(PER_TRY)).await {
                Ok(Reply::NotLeader { leader: Some(addr) }) if addr != target => {
                    *self.leader.lock() = Some(addr.clone());
                    target = addr;
                }
                Ok(Reply::NotLeader { .. }) => {
                    last = format!("{target}: no leader");
                    *self.leader.lock() = None;
                    target = self.next_seed();
                    tokio::time::sleep(Duration::from_millis(50).min(left)).await;
                }
                Ok(reply) => {
                    *self.leader.lock() = Some(target);
                    return Ok(reply);
                }
                Err(e) => {
                    last = e.to_string();
                    *self.leader.lock() = None;
                    target = self.next_seed();
                    tokio::time::sleep(Duration::from_millis(20).min(left)).await;
                }
            }
        }
    }

    pub async fn status(&self, timeout: Duration) -> Result<Status, MembershipClientError> {
        match self.call(&Request::Status, timeout).await? {
            Reply::Status(s) => Ok(s),
            other => Err(MembershipClientError::Service(format!(
                "unexpected reply {other:?}"
            ))),
        }
    }

    /// The status of the replica at `addr`, asked of that replica itself
    /// (no leader following; the leader this handle knows is untouched).
    pub async fn status_of(
        &self,
        addr: &str,
        timeout: Duration,
    ) -> Result<Status, MembershipClientError> {
        match self.peers.get(addr).call(&Request::Status, timeout).await? {
            Reply::Status(s) => Ok(s),
            other => Err(MembershipClientError::Service(format!(
                "unexpected reply {other:?}"
            ))),
        }
    }
}
