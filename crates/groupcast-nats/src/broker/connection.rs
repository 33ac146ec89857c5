//! Connecting: [`NatsBroker::connect`] turns the `[nats]` settings into
//! connection options (credentials, TLS, timeouts), follows the
//! connection's events (the `groupcast_nats_connected` gauge, a reconnect
//! counter the live subscriptions watch for gaps) and makes sure the
//! history streams exist before the edge starts serving.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use async_nats::jetstream;
use async_nats::{ConnectOptions, Event};
use groupcast_core::broker::BrokerError;
use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;

use super::history::READ_BATCH;
use super::{quorum, Inner, NatsBroker, StreamSpec};
use crate::signing::Signer;
use crate::subjects::Subjects;
use crate::NatsConfig;

/// The `event` label of `groupcast_nats_events_total`.
fn event_name(e: &Event) -> &'static str {
    match e {
        Event::Connected => "connected",
        Event::Disconnected => "disconnected",
        Event::LameDuckMode => "lame_duck",
        Event::Draining => "draining",
        Event::Closed => "closed",
        Event::SlowConsumer(_) => "slow_consumer",
        Event::ServerError(_) => "server_error",
        Event::ClientError(_) => "client_error",
    }
}

impl NatsBroker {
    /// Connect to NATS and make sure the history streams of `specs`
    /// (namespace → limits; `""` is the default namespace) exist with those
    /// limits. Fails when NATS cannot be reached within
    /// `config.connect_timeout` or JetStream refuses a stream.
    pub async fn connect(
        config: &NatsConfig,
        specs: HashMap<String, StreamSpec>,
    ) -> Result<NatsBroker, BrokerError> {
        config.validate().map_err(BrokerError::Internal)?;
        if config.urls.is_empty() {
            return Err(BrokerError::Internal("nats.urls is empty".into()));
        }
        let connected = Arc::new(AtomicBool::new(false));
        let (reconnect_tx, reconnects) = watch::channel(0u64);
        let flag = connected.clone();
        let mut opts = ConnectOptions::new()
            .subscription_capacity(config.subscription_capacity)
            .request_timeout(Some(config.request_timeout))
            .connection_timeout(config.connect_timeout)
            .ping_interval(config.ping_interval)
            .max_reconnects(None)
            .event_callback(move |event| {
                let flag = flag.clone();
                let reconnect_tx = reconnect_tx.clone();
                async move {
                    metrics::counter!("groupcast_nats_events_total", "event" => event_name(&event))
                        .increment(1);
                    match &event {
                        Event::Connected => {
                            flag.store(true, Ordering::SeqCst);
                            metrics::gauge!("groupcast_nats_connected").set(1.0);
                            reconnect_tx.send_modify(|n| *n += 1);
                            tracing::info!("NATS connected");
                        }
                        Event::Disconnected | Event::Closed => {
                            flag.store(false, Ordering::SeqCst);
                            metrics::gauge!("groupcast_nats_connected").set(0.0);
                            tracing::warn!("NATS {event}");
                        }
                        _ => tracing::warn!("NATS {event}"),
                    }
                }
            });
        if !config.name.is_empty() {
            opts = opts.name(&config.name);
        }
        if let Some(path) = &config.credentials_file {
            opts = opts.credentials_file(path).await.map_err(|e| {
                BrokerError::Internal(format!("nats.credentials_file {}: {e}", path.display()))
            })?;
        }
        if !config.user.is_empty() {
            opts = opts.user_and_password(config.user.clone(), config.password.clone());
        }
        if !config.token.is_empty() {
            opts = opts.token(config.token.clone());
        }
        if let Some(ca) = &config.tls_ca_file {
            opts = opts.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let (Some(cert), Some(key)) = (&config.tls_cert_file, &config.tls_key_file) {
            opts = opts.add_client_certificate(cert.clone(), key.clone());
        }
        if config.tls_required {
            opts = opts.require_tls(true);
        }
        let urls: Vec<async_nats::ServerAddr> = config
            .urls
            .iter()
            .map(|u| {
                u.parse()
                    .map_err(|e| BrokerError::Internal(format!("nats.urls: {u:?}: {e}")))
            })
            .collect::<Result<_, _>>()?;
        let client = opts.connect(urls).await.map_err(|e| {
            BrokerError::Unavailable(format!("cannot connect to NATS {:?}: {e}", config.urls))
        })?;
        connected.store(true, Ordering::SeqCst);
        metrics::gauge!("groupcast_nats_connected").set(1.0);
        let specs_empty = specs.is_empty();
        // The connection name (the node's), else one of this process alone.
        let heartbeat_name = if config.name.is_empty() {
            let inbox = client.new_inbox();
            inbox.rsplit('.').next().unwrap_or("edge").to_string()
        } else {
            config.name.clone()
        };
        let mut js = jetstream::new(client.clone());
        js.set_timeout(config.request_timeout);
        let broker = NatsBroker {
            inner: Arc::new(Inner {
                client,
                urls: config.urls.clone(),
                js,
                subjects: Subjects::new(&config.prefix),
                specs,
                streams: RwLock::new(HashMap::new()),
                handler: OnceLock::new(),
                subs: Mutex::new(HashMap::new()),
                connected,
                reconnects,
                request_timeout: config.request_timeout,
                read_batch: READ_BATCH.min(config.subscription_capacity / 2).max(1),
                gaps_repaired: AtomicU64::new(0),
                gaps_insufficient: AtomicU64::new(0),
                signer: Signer::new(&config.cluster_secret, config.accept_unsigned),
                quorum: (!specs_empty && !config.quorum_lost_after.is_zero())
                    .then(|| quorum::Probe::new(config.quorum_lost_after)),
                heartbeat_subject: Subjects::new(&config.prefix).heartbeat(&heartbeat_name),
            }),
        };
        let namespaces: Vec<String> = broker.inner.specs.keys().cloned().collect();
        for ns in namespaces {
            broker
                .inner
                .stream_at_start(&ns, config.startup_timeout)
                .await?;
        }
        quorum::start(&broker.inner, config.ping_interval);
        Ok(broker)
    }
}
