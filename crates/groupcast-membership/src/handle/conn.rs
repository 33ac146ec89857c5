//! [`Conn`]: requests to the leader, whichever replica that is. `NotLeader`
//! answers are followed, dead replicas skipped, each try bounded; and
//! [`Conn::local_query`], a read from the replicas' own state when no
//! leader answers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use parking_lot::Mutex;

use super::MembershipClientError;
use crate::certs::{self, TlsFiles};
use crate::transport::{resolve, Peers, Reply, Request, Status};
use crate::types::{Query, QueryResult};

/// Requests to the leader, whichever replica that is.
pub struct Conn {
    pub(super) seeds: Vec<String>,
    peers: Peers,
    leader: Mutex<Option<String>>,
    next_seed: AtomicUsize,
    /// Replicas that did not answer lately (address → when), skipped by
    /// seed rotation and redirects for [`SUSPECT_FOR`].
    suspects: Mutex<HashMap<String, Instant>>,
}

/// Longest wait for one replica before trying another.
const PER_TRY: Duration = Duration::from_secs(1);

/// How long a replica that did not answer is passed over (unless every
/// replica is): a killed leader is still named leader by its followers
/// until they elect another.
const SUSPECT_FOR: Duration = Duration::from_secs(2);

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
            suspects: Mutex::new(HashMap::new()),
        })
    }

    /// The next seed in turn that is not suspect (any, when all are).
    fn next_seed(&self) -> String {
        let mut first = None;
        for _ in 0..self.seeds.len() {
            let i = self.next_seed.fetch_add(1, Ordering::Relaxed);
            let addr = &self.seeds[i % self.seeds.len()];
            if !self.is_suspect(addr) {
                return addr.clone();
            }
            first.get_or_insert_with(|| addr.clone());
        }
        first.unwrap_or_else(|| self.seeds[0].clone())
    }

    fn is_suspect(&self, addr: &str) -> bool {
        let mut s = self.suspects.lock();
        match s.get(addr) {
            Some(t) if t.elapsed() < SUSPECT_FOR => true,
            Some(_) => {
                s.remove(addr);
                false
            }
            None => false,
        }
    }

    fn suspect(&self, addr: &str, yes: bool) {
        let mut s = self.suspects.lock();
        if yes {
            s.insert(addr.to_string(), Instant::now());
        } else {
            s.remove(addr);
        }
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
            let reply = self.peers.get(&target).call(req, left.min(PER_TRY)).await;
            self.suspect(&target, reply.is_err());
            match reply {
                Ok(Reply::NotLeader { leader: Some(addr) })
                    if addr != target && !self.is_suspect(&addr) =>
                {
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

    /// `q` answered from the replicas' own applied state
    /// ([`Request::LocalQuery`]), for when no leader answers: every seed is
    /// asked at once, each within `within`; once a majority of them (or
    /// all that will) answered, the answer of the replica that applied the
    /// most wins.
    pub async fn local_query(
        &self,
        q: &Query,
        within: Duration,
    ) -> Result<QueryResult, MembershipClientError> {
        let req = Request::LocalQuery(q.clone());
        let mut asks: FuturesUnordered<_> = self
            .seeds
            .iter()
            .map(|addr| {
                let peer = self.peers.get(addr);
                let req = &req;
                async move { (addr, peer.call(req, within).await) }
            })
            .collect();
        let majority = self.seeds.len() / 2 + 1;
        let mut best: Option<(u64, QueryResult)> = None;
        let mut answered = 0;
        let mut last = String::from("no replica answered");
        while let Some((addr, r)) = asks.next().await {
            self.suspect(addr, r.is_err());
            match r {
                Ok(Reply::LocalQuery {
                    result,
                    applied_index,
                    ..
                }) => {
                    answered += 1;
                    if best.as_ref().is_none_or(|(i, _)| applied_index > *i) {
                        best = Some((applied_index, result));
                    }
                    if answered >= majority {
                        break;
                    }
                }
                Ok(other) => last = format!("{addr}: {other:?}"),
                Err(e) => last = e.to_string(),
            }
        }
        best.map(|(_, r)| r)
            .ok_or(MembershipClientError::Service(last))
    }

    pub async fn status(&self, timeout: Duration) -> Result<Status, MembershipClientError> {
        match self.call(&Request::Status, timeout).await? {
            Reply::Status(s) => Ok(s),
            other => Err(MembershipClientError::Service(format!(
                "unexpected reply {other:?}"
            ))),
        }
    }

    /// `req` sent to the replica at `addr` alone: its own answer, no
    /// redirect followed (the leader this handle knows is untouched).
    pub async fn call_one(
        &self,
        addr: &str,
        req: &Request,
        timeout: Duration,
    ) -> Result<Reply, MembershipClientError> {
        Ok(self.peers.get(addr).call(req, timeout).await?)
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
