//! The Broker conformance suite against a real `nats-server` with JetStream.

use std::collections::HashMap;
use std::sync::Arc;

use groupcast_core::conformance::{self, HISTORY_SIZE};
use groupcast_core::Broker;
use groupcast_nats::{NatsBroker, NatsConfig, StreamSpec};
use groupcast_testkit::nats::NatsServer;

/// A broker on `url` with its own prefix (so its streams are fresh) and the
/// suite's history limits for the default namespace.
pub async fn broker(url: &str) -> NatsBroker {
    let config = NatsConfig {
        urls: vec![url.to_string()],
        prefix: format!("t{:x}", rand::random::<u32>()),
        ..Default::default()
    };
    let spec = StreamSpec {
        history_size: HISTORY_SIZE,
        history_ttl: conformance::history_options().history_ttl,
        replicas: 1,
        memory_storage: true,
    };
    NatsBroker::connect(&config, HashMap::from([(String::new(), spec)]))
        .await
        .expect("connect to nats-server")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_broker_passes_the_conformance_suite() {
    let server = NatsServer::start().await;
    let url = server.url();
    conformance::run_all(|| {
        let url = url.clone();
        async move { Arc::new(broker(&url).await) as Arc<dyn Broker> }
    })
    .await;
}
