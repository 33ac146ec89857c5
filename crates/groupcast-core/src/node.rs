//! `Node`: one edge's view of the system: broker, membership and hub.
//!
//! Adding the first local subscriber of a channel subscribes the node on the
//! broker before the caller reads history; removing the last unsubscribes.
//! Both steps run under a per-channel (striped) async lock so a concurrent
//! subscribe can never read history before the node's broker interest exists.
//! Every added and removed local subscriber is counted in [`Membership`]
//! (cluster-wide subscriber counts for the API's `channels` and `info`).

use std::hash::{Hash, Hasher};
use std::sync::{Arc, OnceLock};

use crate::broker::{Broker, BrokerError};
use crate::bus::{BackendBus, NodeBus};
use crate::hub::{AddOutcome, Hub, RemoveOutcome, Subscriber};
use crate::membership::Membership;

const LOCK_STRIPES: usize = 128;

pub struct Node {
    pub broker: Arc<dyn Broker>,
    pub membership: Arc<dyn Membership>,
    pub hub: Arc<Hub>,
    /// Requests to other nodes (none on a single node).
    bus: OnceLock<Arc<dyn NodeBus>>,
    /// Relay connections' backend processes (NATS only).
    backend: OnceLock<Arc<dyn BackendBus>>,
    stripes: Vec<tokio::sync::Mutex<()>>,
}

impl Node {
    pub fn new(broker: Arc<dyn Broker>, membership: Arc<dyn Membership>) -> Arc<Node> {
        let hub = Arc::new(Hub::default());
        broker.set_handler(hub.clone());
        Arc::new(Node {
            broker,
            membership,
            hub,
            bus: OnceLock::new(),
            backend: OnceLock::new(),
            stripes: (0..LOCK_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        })
    }

    /// Connect the node to the other nodes (once, before serving).
    pub fn set_bus(&self, bus: Arc<dyn NodeBus>) {
        let _ = self.bus.set(bus);
    }

    /// The bus to other nodes; `None` on a single node.
    pub fn bus(&self) -> Option<&Arc<dyn NodeBus>> {
        self.bus.get()
    }

    /// Connect the node to backend processes (once, before serving).
    pub fn set_backend_bus(&self, bus: Arc<dyn BackendBus>) {
        let _ = self.backend.set(bus);
    }

    /// The bus to backend processes; `None` without NATS.
    pub fn backend_bus(&self) -> Option<&Arc<dyn BackendBus>> {
        self.backend.get()
    }

    fn stripe(&self, channel: &str) -> &tokio::sync::Mutex<()> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        channel.hash(&mut h);
        &self.stripes[(h.finish() as usize) % LOCK_STRIPES]
    }

    /// Add a local subscriber, subscribing on the broker if it is the first.
    pub async fn add_subscriber(
        &self,
        channel: &str,
        sub: Arc<dyn Subscriber>,
        buffering: bool,
    ) -> Result<AddOutcome, BrokerError> {
        self.add_subscriber_with_delta(channel, sub, buffering, false)
            .await
    }

    /// [`Node::add_subscriber`]; `delta`: the subscription negotiated
    /// delta compression ([`crate::hub`]).
    pub async fn add_subscriber_with_delta(
        &self,
        channel: &str,
        sub: Arc<dyn Subscriber>,
        buffering: bool,
        delta: bool,
    ) -> Result<AddOutcome, BrokerError> {
        let _g = self.stripe(channel).lock().await;
        let id = sub.id();
        let outcome = self.hub.add_with_delta(channel, sub, buffering, delta);
        if outcome == AddOutcome::First {
            if let Err(e) = self.broker.subscribe(channel).await {
                self.hub.remove(channel, id);
                return Err(e);
            }
        }
        if outcome != AddOutcome::AlreadySubscribed {
            self.membership.subscribers_changed(channel, 1);
        }
        Ok(outcome)
    }

    /// Remove a local subscriber, unsubscribing on the broker after the last.
    pub async fn remove_subscriber(&self, channel: &str, id: u64) {
        let _g = self.stripe(channel).lock().await;
        let outcome = self.hub.remove(channel, id);
        if outcome != RemoveOutcome::NotSubscribed {
            self.membership.subscribers_changed(channel, -1);
        }
        if outcome == RemoveOutcome::Last {
            if let Err(e) = self.broker.unsubscribe(channel).await {
                // Interest stays on the broker: extra traffic, not lost messages.
                let _ = e;
            }
        }
    }
}
