//! openraft's network over the QUIC transport.
//!
//! openraft retries replication to a dead replica every heartbeat and logs
//! each failure (three lines per 100 ms); the binary silences those, and
//! [`PeerHealth`] logs instead one line when a replica stops answering, a
//! reminder every [`REMINDER_EVERY`] while it stays down, and one line when
//! it answers again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, BasicNode};
use parking_lot::Mutex;

use crate::transport::{Peer, Peers, Reply, Request, TransportError};
use crate::types::{NodeId, TypeConfig};

/// How often a replica that stays unreachable is logged again.
pub const REMINDER_EVERY: Duration = Duration::from_secs(30);

/// A replica that has not answered for this long is called on a new
/// connection (each try), so it is reached again as soon as the network
/// lets it (after a partition).
const FRESH_CONNECTION_AFTER: Duration = Duration::from_secs(1);

/// Whether each other replica answers, for operator-friendly logs.
#[derive(Default)]
pub struct PeerHealth {
    /// target → (down since, last logged).
    down: Mutex<HashMap<NodeId, (Instant, Instant)>>,
}

/// What [`PeerHealth`] logged about one RPC outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Logged {
    Nothing,
    Down,
    StillDown,
    BackUp,
}

impl PeerHealth {
    fn failed(&self, target: NodeId, error: &dyn std::fmt::Display, now: Instant) -> Logged {
        let mut down = self.down.lock();
        match down.get_mut(&target) {
            None => {
                down.insert(target, (now, now));
                metrics::gauge!("groupcast_membership_peer_up", "peer" => target.to_string())
                    .set(0.0);
                tracing::warn!(peer = target, %error, "membership: replica unreachable");
                Logged::Down
            }
            Some((since, logged)) if now.duration_since(*logged) >= REMINDER_EVERY => {
                *logged = now;
                tracing::warn!(
                    peer = target,
                    down_for_s = now.duration_since(*since).as_secs(),
                    %error,
                    "membership: replica still unreachable"
                );
                Logged::StillDown
            }
            Some(_) => Logged::Nothing,
        }
    }

    /// How long `target` has not answered (zero while it does).
    fn down_for(&self, target: NodeId) -> Duration {
        self.down
            .lock()
            .get(&target)
            .map(|(since, _)| since.elapsed())
            .unwrap_or_default()
    }

    fn answered(&self, target: NodeId, now: Instant) -> Logged {
        let Some((since, _)) = self.down.lock().remove(&target) else {
            return Logged::Nothing;
        };
        metrics::gauge!("groupcast_membership_peer_up", "peer" => target.to_string()).set(1.0);
        tracing::info!(
            peer = target,
            down_for_s = now.duration_since(since).as_secs(),
            "membership: replica reachable again"
        );
        Logged::BackUp
    }
}

/// Creates one [`PeerClient`] per target replica.
#[derive(Clone)]
pub struct Network {
    peers: Peers,
    health: Arc<PeerHealth>,
}

impl Network {
    pub fn new(peers: Peers) -> Network {
        Network {
            peers,
            health: Arc::default(),
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        PeerClient {
            target,
            peer: self.peers.get(&node.addr),
            health: self.health.clone(),
        }
    }
}

/// Raft RPCs to one replica.
pub struct PeerClient {
    target: NodeId,
    peer: Arc<Peer>,
    health: Arc<PeerHealth>,
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

impl PeerClient {
    async fn rpc<T, E>(
        &self,
        req: Request,
        option: &RPCOption,
        unpack: impl FnOnce(Reply) -> Option<Result<T, RaftError<NodeId, E>>>,
    ) -> RpcResult<T, E>
    where
        E: std::error::Error,
    {
        let reply = match self.peer.call(&req, option.hard_ttl()).await {
            Ok(r) => {
                self.health.answered(self.target, Instant::now());
                r
            }
            Err(e) => {
                self.health.failed(self.target, &e, Instant::now());
                if self.health.down_for(self.target) >= FRESH_CONNECTION_AFTER {
                    // A QUIC connection that lost every packet for a while
                    // backs its retransmissions off for seconds; a fresh
                    // one answers as soon as the replica is reachable.
                    self.peer.forget().await;
                }
                return Err(match e {
                    TransportError::Resolve(_) | TransportError::Connect { .. } => {
                        RPCError::Unreachable(Unreachable::new(&e))
                    }
                    _ => RPCError::Network(NetworkError::new(&e)),
                });
            }
        };
        match reply {
            Reply::Failed(reason) => Err(RPCError::Network(NetworkError::new(&AnyError::error(
                reason,
            )))),
            other => match unpack(other) {
                Some(Ok(v)) => Ok(v),
                Some(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
                None => Err(RPCError::Network(NetworkError::new(&AnyError::error(
                    "unexpected reply kind",
                )))),
            },
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        self.rpc(Request::AppendEntries(rpc), &option, |r| match r {
            Reply::AppendEntries(r) => Some(r),
            _ => None,
        })
        .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.rpc(Request::InstallSnapshot(rpc), &option, |r| match r {
            Reply::InstallSnapshot(r) => Some(r),
            _ => None,
        })
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, openraft::error::Infallible> {
        self.rpc(Request::Vote(rpc), &option, |r| match r {
            Reply::Vote(r) => Some(r),
            _ => None,
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A replica that stays down for a minute under 100 ms retries is
    /// logged once, then once per reminder period, then once when back.
    #[test]
    fn a_dead_replica_is_logged_once_with_reminders_and_once_back() {
        let h = PeerHealth::default();
        let t0 = Instant::now();
        let mut logged = Vec::new();
        for i in 0..600u32 {
            let at = t0 + Duration::from_millis(100) * i;
            match h.failed(2, &"no answer", at) {
                Logged::Nothing => {}
                other => logged.push(other),
            }
        }
        assert_eq!(logged, [Logged::Down, Logged::StillDown]);
        assert_eq!(h.failed(3, &"no answer", t0), Logged::Down, "per replica");
        let back = t0 + Duration::from_secs(61);
        assert_eq!(h.answered(2, back), Logged::BackUp);
        assert_eq!(h.answered(2, back), Logged::Nothing, "once");
        assert_eq!(h.answered(1, back), Logged::Nothing, "never down");
    }
}
