//! openraft's network over the QUIC transport.

use std::sync::Arc;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, BasicNode};

use crate::transport::{Peer, Peers, Reply, Request, TransportError};
use crate::types::{NodeId, TypeConfig};

/// Creates one [`PeerClient`] per target replica.
#[derive(Clone)]
pub struct Network {
    peers: Peers,
}

impl Network {
    pub fn new(peers: Peers) -> Network {
        Network { peers }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        PeerClient {
            target,
            peer: self.peers.get(&node.addr),
        }
    }
}

/// Raft RPCs to one replica.
pub struct PeerClient {
    target: NodeId,
    peer: Arc<Peer>,
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
        let reply = self
            .peer
            .call(&req, option.hard_ttl())
            .await
            .map_err(|e| match e {
                TransportError::Resolve(_) | TransportError::Connect { .. } => {
                    RPCError::Unreachable(Unreachable::new(&e))
                }
                _ => RPCError::Network(NetworkError::new(&e)),
            })?;
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
