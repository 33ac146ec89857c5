//! QUIC transport: one request per bidirectional stream, each side writes one
//! codec-encoded frame and finishes its half. Raft RPCs between replicas and
//! the edge-facing API share the endpoint; both sides authenticate with the
//! cluster CA (see [`crate::certs`]).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::types::{Command, CommandResult, EdgeId, NodeId, Query, QueryResult, TypeConfig};

/// Largest frame either side accepts (`MAX_FRAME_BYTES`): a snapshot chunk
/// or an append-entries batch stays well below it.
pub const MAX_FRAME_BYTES: usize = 64 << 20;

/// A request on the membership transport.
#[derive(Debug, Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)]
pub enum Request {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// Commit a command (leader only).
    Write(Command),
    /// Renew an edge's lease (leader only; not replicated).
    Renew(EdgeId),
    /// A linearizable read (leader only).
    Query(Query),
    Status,
    /// Add a replica as a voter (leader only).
    AddMember {
        id: NodeId,
        addr: String,
    },
    /// Remove a voter (leader only).
    RemoveMember {
        id: NodeId,
    },
    /// A read from this replica's own applied state, for when no leader
    /// answers (an election): answered while the replica heard from a
    /// leader (or, leading, from a majority) within the server's
    /// `stale_read_max`, else [`Reply::Failed`].
    LocalQuery(Query),
}

/// A replica's view of the cluster (`groupcast membership status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub id: NodeId,
    /// Leader, Follower, Candidate or Learner.
    pub state: String,
    pub leader: Option<NodeId>,
    pub leader_addr: Option<String>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub commit_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    /// Log entries up to here are compacted away (only a snapshot has them).
    pub purged_index: Option<u64>,
    pub voters: BTreeMap<NodeId, String>,
    pub learners: BTreeMap<NodeId, String>,
    pub edges: u64,
}

/// The answer to a [`Request`].
#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    Written(CommandResult),
    /// False: this edge incarnation is not registered (register again).
    Renewed(bool),
    Query(QueryResult),
    Status(Status),
    MemberChanged(Status),
    /// Ask the leader instead (its address when known).
    NotLeader {
        leader: Option<String>,
    },
    /// The request could not be served (the reason).
    Failed(String),
    /// The answer to [`Request::LocalQuery`]: the replica's applied index
    /// and how long ago it last heard from a leader (or a majority).
    LocalQuery {
        result: QueryResult,
        applied_index: u64,
        age_ms: u64,
    },
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    #[error("cannot resolve {0}")]
    Resolve(String),
    #[error("connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("{addr}: {reason}")]
    Stream { addr: String, reason: String },
    #[error("{addr}: no answer within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    #[error("{addr}: bad frame: {reason}")]
    Codec { addr: String, reason: String },
}

/// Splits `host:port` (or `[v6]:port`) into the TLS server name and resolves it.
pub async fn resolve(addr: &str) -> Result<(SocketAddr, String), TransportError> {
    let host = match addr.rsplit_once(':') {
        Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']').to_string(),
        None => return Err(TransportError::Resolve(addr.to_string())),
    };
    let sock = tokio::net::lookup_host(addr)
        .await
        .map_err(|_| TransportError::Resolve(addr.to_string()))?
        .next()
        .ok_or_else(|| TransportError::Resolve(addr.to_string()))?;
    Ok((sock, host))
}

/// A client of one remote address: keeps one QUIC connection and
/// reconnects on the next call after it broke.
pub struct Peer {
    endpoint: quinn::Endpoint,
    addr: String,
    /// Checked against the remote certificate instead of the host in `addr`.
    server_name: Option<Arc<str>>,
    conn: tokio::sync::Mutex<Option<quinn::Connection>>,
}

impl Peer {
    pub fn new(endpoint: quinn::Endpoint, addr: String, server_name: Option<Arc<str>>) -> Peer {
        Peer {
            endpoint,
            addr,
            server_name,
            conn: tokio::sync::Mutex::new(None),
        }
    }

    async fn connection(&self) -> Result<quinn::Connection, TransportError> {
        let mut guard = self.conn.lock().await;
        if let Some(c) = guard.as_ref() {
            if c.close_reason().is_none() {
                return Ok(c.clone());
            }
        }
        let (sock, host) = resolve(&self.addr).await?;
        let host = self.server_name.as_deref().unwrap_or(&host);
        let connect_err = |reason: String| TransportError::Connect {
            addr: self.addr.clone(),
            reason,
        };
        let conn = self
            .endpoint
            .connect(sock, host)
            .map_err(|e| connect_err(e.to_string()))?
            .await
            .map_err(|e| connect_err(e.to_string()))?;
        *guard = Some(conn.clone());
        Ok(conn)
    }

    /// Sends `req` and waits up to `timeout` for the reply (connecting
    /// included).
    pub async fn call(&self, req: &Request, timeout: Duration) -> Result<Reply, TransportError> {
        let frame = codec::encode(req).map_err(|e| TransportError::Codec {
            addr: self.addr.clone(),
            reason: e.to_string(),
        })?;
        let result = tokio::time::timeout(timeout, async {
            let conn = self.connection().await?;
            exchange(&conn, &frame)
                .await
                .map_err(|reason| TransportError::Stream {
                    addr: self.addr.clone(),
                    reason,
                })
        })
        .await;
        let bytes = match result {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                self.forget().await;
                return Err(e);
            }
            Err(_) => {
                return Err(TransportError::Timeout {
                    addr: self.addr.clone(),
                    timeout,
                })
            }
        };
        codec::decode(&bytes).map_err(|e| TransportError::Codec {
            addr: self.addr.clone(),
            reason: e.to_string(),
        })
    }

    /// Closes the connection; the next call opens a new one.
    pub(crate) async fn forget(&self) {
        if let Some(c) = self.conn.lock().await.take() {
            c.close(0u32.into(), b"reconnect");
        }
    }
}

/// One [`Peer`] per address on one endpoint, made on first use, so every
/// caller to an address shares its connection.
#[derive(Clone)]
pub struct Peers {
    endpoint: quinn::Endpoint,
    server_name: Option<Arc<str>>,
    map: Arc<Mutex<HashMap<String, Arc<Peer>>>>,
}

impl Peers {
    /// `server_name`: see [`crate::certs::TlsFiles::server_name`].
    pub fn new(endpoint: quinn::Endpoint, server_name: Option<&str>) -> Peers {
        Peers {
            endpoint,
            server_name: server_name.map(Arc::from),
            map: Default::default(),
        }
    }

    pub fn get(&self, addr: &str) -> Arc<Peer> {
        self.map
            .lock()
            .entry(addr.to_string())
            .or_insert_with(|| {
                Arc::new(Peer::new(
                    self.endpoint.clone(),
                    addr.to_string(),
                    self.server_name.clone(),
                ))
            })
            .clone()
    }
}

async fn exchange(conn: &quinn::Connection, frame: &[u8]) -> Result<Vec<u8>, String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    send.write_all(frame).await.map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())?;
    recv.read_to_end(MAX_FRAME_BYTES)
        .await
        .map_err(|e| e.to_string())
}

/// Reads one request from an accepted stream, answers it with `handle`.
/// A malformed or oversized request is answered with [`Reply::Failed`].
pub async fn serve_stream<F, Fut>(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    handle: F,
) where
    F: FnOnce(Request) -> Fut,
    Fut: std::future::Future<Output = Reply>,
{
    let reply = match recv.read_to_end(MAX_FRAME_BYTES).await {
        Ok(bytes) => match codec::decode::<Request>(&bytes) {
            Ok(req) => handle(req).await,
            Err(e) => Reply::Failed(format!("bad request: {e}")),
        },
        Err(quinn::ReadToEndError::TooLong) => Reply::Failed(format!(
            "bad request: over MAX_FRAME_BYTES ({} MiB)",
            MAX_FRAME_BYTES >> 20
        )),
        Err(e) => Reply::Failed(format!("bad request: {e}")),
    };
    if let Ok(bytes) = codec::encode(&reply) {
        let _ = send.write_all(&bytes).await;
        let _ = send.finish();
    }
}
