//! [`NodeBus`] over core NATS: each node answers requests on its own
//! subject ([`Subjects::node`](crate::subjects::Subjects::node)); a node
//! nobody serves is NATS's "no responders". [`Inner::request`] is the
//! request both buses use.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use groupcast_core::broker::BrokerError;
use groupcast_core::{NodeBus, NodeHandler};

use super::{Inner, NatsBroker};
use crate::signing::{count_rejected, Domain};

/// Requests between nodes on core NATS: each node answers on its own
/// subject ([`Subjects::node`](crate::subjects::Subjects::node)).
#[async_trait]
impl NodeBus for NatsBroker {
    /// Answers on `node`'s own subject until the connection closes.
    async fn serve(&self, node: &str, handler: NodeHandler) -> Result<(), BrokerError> {
        let subject = self.inner.subjects.node(node);
        let mut sub = self
            .inner
            .client
            .subscribe(subject.clone())
            .await
            .map_err(|e| BrokerError::Unavailable(format!("subscribe {subject}: {e}")))?;
        // Serving once this returns: the server has the interest, so a
        // request made right after is not answered "no responders" (which
        // callers read as "that node is gone"). A flush only empties the
        // socket; a message this connection publishes after the SUB coming
        // back on it proves the server processed the SUB. Requests that
        // arrive before it are kept and answered first.
        let probe = Bytes::from(self.inner.client.new_inbox());
        self.inner
            .client
            .publish(subject.clone(), probe.clone())
            .await
            .map_err(|e| BrokerError::Unavailable(format!("subscribe {subject}: {e}")))?;
        let mut early = Vec::new();
        let confirmed = tokio::time::timeout(self.inner.request_timeout, async {
            while let Some(msg) = sub.next().await {
                if msg.reply.is_none() && msg.payload == probe {
                    return true;
                }
                early.push(msg);
            }
            false
        })
        .await;
        if confirmed != Ok(true) {
            return Err(BrokerError::Unavailable(format!(
                "subscribe {subject}: the server did not confirm the subscription"
            )));
        }
        let client = self.inner.client.clone();
        let signer = self.inner.signer.clone();
        let me = node.to_string();
        tokio::spawn(async move {
            let mut early = early.into_iter();
            loop {
                let msg = match early.next() {
                    Some(m) => m,
                    None => match sub.next().await {
                        Some(m) => m,
                        None => break,
                    },
                };
                let Some(reply) = msg.reply.clone() else {
                    continue;
                };
                // Only edges (holders of the cluster secret) may ask: a
                // forged request gets no answer at all.
                if let Err(why) =
                    signer.check(msg.headers.as_ref(), Domain::Node, &me, &msg.payload)
                {
                    count_rejected(why, Domain::Node);
                    tracing::warn!(node = %me, reason = why.reason(), "refused a node-bus request not signed by this cluster");
                    continue;
                }
                let (client, handler) = (client.clone(), handler.clone());
                tokio::spawn(async move {
                    let answer = handler(msg.payload).await;
                    let _ = client.publish(reply, answer).await;
                });
            }
        });
        Ok(())
    }

    /// A node that does not listen is NATS's "no responders" (`Ok(None)`);
    /// `Unavailable` for a timeout or NATS down.
    async fn request(
        &self,
        node: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Option<Bytes>, BrokerError> {
        let subject = self.inner.subjects.node(node);
        let headers = self.inner.signer.headers(Domain::Node, node, &payload);
        self.inner
            .request(subject, payload, headers, timeout, &format!("node {node}"))
            .await
    }
}

impl Inner {
    /// A core NATS request: `Ok(None)` when nothing listens on `subject`
    /// ("no responders"), `Timeout` for no answer in time, `Unavailable`
    /// otherwise (`what` names the peer in errors).
    pub(super) async fn request(
        &self,
        subject: String,
        payload: Bytes,
        headers: Option<async_nats::HeaderMap>,
        timeout: Duration,
        what: &str,
    ) -> Result<Option<Bytes>, BrokerError> {
        let mut request = async_nats::Request::new()
            .payload(payload)
            .timeout(Some(timeout));
        if let Some(h) = headers {
            request = request.headers(h);
        }
        match self.client.send_request(subject, request).await {
            Ok(m) => Ok(Some(m.payload)),
            Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => Ok(None),
            Err(e) if e.kind() == async_nats::RequestErrorKind::TimedOut => {
                Err(BrokerError::Timeout(format!("{what}: {e}")))
            }
            Err(e) => Err(BrokerError::Unavailable(format!("{what}: {e}"))),
        }
    }
}
