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
    /// its connections); `Timeout`: no answer within `timeout`;
    /// `Unavailable`: the backbone is down.
    async fn request(
        &self,
        node: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Option<Bytes>, BrokerError>;
}

/// The backbone between relay connections and the application's backend
/// processes (docs/backends.md, "Relay to a backend"): each backend target
/// has a subject its processes subscribe to (queue groups share the work),
/// and backends send commands (send a frame, close, transfer) on one
/// subject that every edge serves in a queue group. Only NATS has one; on
/// the in-memory bus relay targets are HTTP only.
#[async_trait]
pub trait BackendBus: Send + Sync + 'static {
    /// Publish one event to `target`'s subject. Events of one caller keep
    /// their order.
    async fn publish_event(&self, target: &str, payload: Bytes) -> Result<(), BrokerError>;
    /// Ask `target`'s subject: `Ok(None)` when nothing subscribes to it
    /// (the target is gone).
    async fn request_event(
        &self,
        target: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Option<Bytes>, BrokerError>;
    /// Take backend commands from now on, on the shared subject (one edge
    /// of the queue group takes each) and on `node`'s own (for its own
    /// connections: no forwarding). Each message is handed to `handler`,
    /// and its answer is sent when the message has a reply subject
    /// (request-reply); a plain publish gets none. Returns `node`'s own
    /// command subject.
    async fn serve_commands(&self, node: &str, handler: NodeHandler)
        -> Result<String, BrokerError>;
}

/// Longest backend target name.
pub const MAX_TARGET_LEN: usize = 128;

/// A backend target name: dot-separated tokens of ASCII letters, digits,
/// `_` and `-` (`chat`, `chat.room-42`), at most [`MAX_TARGET_LEN`] bytes.
/// On NATS its events go to `{prefix}.relay.{target}`, so the dots make
/// subject hierarchies a backend can subscribe to with wildcards.
pub fn valid_target(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= MAX_TARGET_LEN
        && t.split('.').all(|tok| {
            !tok.is_empty()
                && tok
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    #[test]
    fn target_names_are_subject_tokens_without_wildcards() {
        for ok in ["chat", "chat.room-42", "a_b.C9"] {
            assert!(super::valid_target(ok), "{ok}");
        }
        let long = "x".repeat(super::MAX_TARGET_LEN + 1);
        for bad in [
            "",
            ".",
            "a.",
            ".a",
            "a..b",
            "a.*",
            "a.>",
            "a b",
            "é",
            long.as_str(),
        ] {
            assert!(!super::valid_target(bad), "{bad:?}");
        }
    }
}
