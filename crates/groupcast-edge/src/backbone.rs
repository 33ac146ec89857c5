//! Which broker a node runs on: the in-memory one (no `nats.urls`: `groupcast
//! dev`) or NATS with JetStream (`groupcast edge`, `groupcast dev --nats`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use groupcast_core::broker::memory::MemoryBroker;
use groupcast_core::membership::memory::MemoryMembership;
use groupcast_core::{ChannelOptions, HistoryStorage, Node};
use groupcast_nats::{NatsBroker, StreamSpec};
use tokio_util::sync::CancellationToken;

use crate::Config;

/// How often the in-memory broker drops idle streams.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// A node and the backbone under it.
pub struct Backbone {
    pub node: Arc<Node>,
    nats: Option<NatsBroker>,
}

impl Backbone {
    /// Whether the node publishes over NATS.
    pub fn is_nats(&self) -> bool {
        self.nats.is_some()
    }

    /// Close the backbone (after the drain: flushes what is pending).
    pub async fn close(self) {
        if let Some(n) = self.nats {
            n.close().await;
        }
    }
}

/// The JetStream stream limits of every namespace with history (`""` is the
/// default namespace).
pub fn stream_specs(config: &Config) -> HashMap<String, StreamSpec> {
    let spec = |o: &ChannelOptions| StreamSpec {
        history_size: o.history_size,
        history_ttl: o.history_ttl,
        replicas: o.history_replicas,
        memory_storage: o.history_storage == HistoryStorage::Memory,
    };
    let mut specs = HashMap::new();
    if config.channel.has_history() {
        specs.insert(String::new(), spec(&config.channel));
    }
    for ns in &config.namespaces {
        if ns.options.has_history() {
            specs.insert(ns.name.clone(), spec(&ns.options));
        }
    }
    specs
}

/// Build the node: NATS when `nats.urls` is set, else the in-memory broker
/// (whose idle streams are swept until `shutdown`).
pub async fn build(config: &Config, shutdown: CancellationToken) -> Result<Backbone, String> {
    crate::metrics::install();
    let membership = Arc::new(MemoryMembership::default());
    if config.nats.urls.is_empty() {
        let broker = Arc::new(MemoryBroker::default());
        let sweeper = broker.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_INTERVAL);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => { sweeper.sweep(); }
                }
            }
        });
        return Ok(Backbone {
            node: Node::new(broker, membership),
            nats: None,
        });
    }
    let mut nats = config.nats.clone();
    if nats.name.is_empty() {
        nats.name = config.name.clone();
    }
    let broker = NatsBroker::connect(&nats, stream_specs(config))
        .await
        .map_err(|e| e.to_string())?;
    Ok(Backbone {
        node: Node::new(Arc::new(broker.clone()), membership),
        nats: Some(broker),
    })
}
