//! The `NodeBus`: requests from one node to another, by node name.
//!
//! The server API acts on connections (disconnect, subscribe, unsubscribe,
//! refresh a user or a client) wherever they are: the node that takes the
//! call asks the nodes holding them (the membership service knows which)
//! and answers once they acknowledged. On NATS each node answers on its own
//! subject (`<prefix>.n.<name>`); a single node has no bus.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::broker::BrokerError;

/// Answers one request (the payload and the answer are opaque bytes).
pub type NodeHandler =
    Arc<dyn Fn(Bytes) -> Pin<Box<dyn Future<Output = Bytes> + Send>> + Send + Sync>;

#[async_trait]
pub trait NodeBus: Send + Sync + 'static {
    /// Answer requests addressed to `node` with `handler` (each in its own
    /// task) from now on.
    async fn serve(&self, node: &str, handler: NodeHandler) -> Result<(), BrokerError>;
    /// Ask `node`. `Ok(None)`: no such node listens (it is gone, and so are
    /// its connections); `Unavailable`: no answer within `timeout`.
    async fn request(
        &self,
        node: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Option<Bytes>, BrokerError>;
}
