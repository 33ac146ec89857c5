//! Which broker and membership a node runs on: the in-memory ones (no
//! `nats.urls`, no `membership.seeds`: `groupcast dev`), NATS with
//! JetStream (`nats.urls`: `groupcast edge`, `groupcast dev --nats`) and the
//! Raft-replicated membership service (`membership.seeds`: `groupcast
//! edge`). On NATS the node also answers other nodes' requests on its own
//! subject ([`groupcast_core::NodeBus`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use groupcast_core::broker::memory::MemoryBroker;
use groupcast_core::membership::memory::MemoryMembership;
use groupcast_core::{ChannelOptions, HistoryStorage, Membership, Node};
use groupcast_membership::certs::TlsFiles;
use groupcast_membership::{MembershipClient, MembershipClientConfig};
use groupcast_nats::{NatsBroker, StreamSpec};
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// How often the in-memory broker drops idle streams.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// A node and the backbone under it.
pub struct Backbone {
    pub node: Arc<Node>,
    nats: Option<NatsBroker>,
    membership: Option<MembershipClient>,
}

impl Backbone {
    /// Whether the node publishes over NATS.
    pub fn is_nats(&self) -> bool {
        self.nats.is_some()
    }

    /// Close the backbone after the drain: leave the membership service
    /// (whatever presence the drain did not already remove leaves at once),
    /// then flush and close NATS.
    pub async fn close(self) {
        if let Some(m) = self.membership {
            match m.close().await {
                Ok(()) => tracing::info!("left the membership service"),
                Err(e) => {
                    tracing::warn!(error = %e, "could not leave the membership service; the lease will expire")
                }
            }
        }
        if let Some(n) = self.nats {
            n.close().await;
        }
    }
}

/// Start the edge's membership handle and wait (up to
/// `membership.start_timeout`) for its registration.
async fn membership(config: &Config) -> Result<MembershipClient, String> {
    let m = &config.membership;
    let cert_name = if m.cert_name.is_empty() {
        &config.name
    } else {
        &m.cert_name
    };
    let mut cfg = MembershipClientConfig::new(
        m.seeds.clone(),
        TlsFiles::in_dir(m.certs.as_ref(), cert_name).with_server_name(Some(m.server_name.clone())),
        config.name.clone(),
    );
    cfg.edge_addr = config.listen.to_string();
    cfg.lease_ttl = m.lease_ttl;
    cfg.renew_every = m.renew_interval;
    cfg.request_timeout = m.request_timeout;
    cfg.buffer_max = m.buffer_max;
    cfg.presence_max_clients = m.presence_max_clients;
    let client = MembershipClient::start(cfg)
        .await
        .map_err(|e| format!("membership: {e}"))?;
    if !client.wait_available(m.start_timeout).await {
        tracing::warn!(
            seeds = ?m.seeds,
            "membership service not reachable within membership.start_timeout; serving without presence until it is"
        );
    }
    Ok(client)
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
    // NATS first: an unreachable NATS is fatal, an unreachable membership
    // service is not (the edge serves without presence until it answers).
    let nats = if config.nats.urls.is_empty() {
        None
    } else {
        let mut nats = config.nats.clone();
        if nats.name.is_empty() {
            nats.name = config.name.clone();
        }
        let broker = NatsBroker::connect(&nats, stream_specs(config))
            .await
            .map_err(|e| e.to_string())?;
        Some(broker)
    };
    let (membership, client): (Arc<dyn Membership>, _) = if config.membership.is_clustered() {
        let c = membership(config).await?;
        (Arc::new(c.clone()), Some(c))
    } else {
        let max = config.membership.presence_max_clients as usize;
        (Arc::new(MemoryMembership::new(max)), None)
    };
    let node = match &nats {
        Some(broker) => {
            let node = Node::new(Arc::new(broker.clone()), membership);
            node.set_interest_linger(config.nats.interest_linger);
            node.set_bus(Arc::new(broker.clone()));
            node.set_backend_bus(Arc::new(broker.clone()));
            node
        }
        None => {
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
            Node::new(broker, membership)
        }
    };
    Ok(Backbone {
        node,
        nats,
        membership: client,
    })
}
