//! [`BackendBus`] over core NATS: events to relay targets (subjects from
//! [`Subjects::relay_target`](crate::subjects::Subjects::relay_target))
//! and the backend commands every node serves, on a queue group shared by
//! all nodes and on the node's own subject
//! ([`Subjects::commands`](crate::subjects::Subjects::commands)).

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use groupcast_core::broker::BrokerError;
use groupcast_core::{BackendBus, NodeHandler};

use super::NatsBroker;

/// Relay connections and backend processes on core NATS (subjects in
/// [`Subjects::relay_target`](crate::subjects::Subjects::relay_target) and
/// [`Subjects::commands`](crate::subjects::Subjects::commands)).
#[async_trait]
impl BackendBus for NatsBroker {
    async fn publish_event(&self, target: &str, payload: Bytes) -> Result<(), BrokerError> {
        let subject = self.inner.subjects.relay_target(target);
        self.inner
            .client
            .publish(subject, payload)
            .await
            .map_err(|e| BrokerError::Unavailable(format!("relay target {target}: {e}")))
    }

    async fn request_event(
        &self,
        target: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Option<Bytes>, BrokerError> {
        let subject = self.inner.subjects.relay_target(target);
        self.inner
            .request(
                subject,
                payload,
                None,
                timeout,
                &format!("relay target {target}"),
            )
            .await
    }

    async fn serve_commands(
        &self,
        node: &str,
        handler: NodeHandler,
    ) -> Result<String, BrokerError> {
        let (shared, own) = (
            self.inner.subjects.commands(),
            self.inner.subjects.node_commands(node),
        );
        let client = &self.inner.client;
        let failed = |e: &dyn std::fmt::Display| {
            BrokerError::Unavailable(format!("subscribe {shared}: {e}"))
        };
        let queue = client
            .queue_subscribe(shared.clone(), self.inner.subjects.commands_group())
            .await
            .map_err(|e| failed(&e))?;
        let mine = client
            .subscribe(own.clone())
            .await
            .map_err(|e| failed(&e))?;
        client.flush().await.map_err(|e| failed(&e))?;
        for mut sub in [queue, mine] {
            let (client, handler) = (client.clone(), handler.clone());
            tokio::spawn(async move {
                // In arrival order, one at a time: a backend's commands to
                // one client (frames, then a close) take effect in the
                // order sent.
                while let Some(msg) = sub.next().await {
                    let answer = handler(msg.payload).await;
                    if let Some(reply) = msg.reply {
                        let _ = client.publish(reply, answer).await;
                    }
                }
            });
        }
        Ok(own)
    }
}
