//! History streams: one JetStream stream per history namespace, created
//! or updated to the namespace's limits ([`StreamSpec`]) on first use and
//! remembered ([`StreamState`]). The stream's creation time is the
//! **epoch** of every channel in it; its RePublish sends each stored
//! message on to the channel's live subject.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::stream;
use groupcast_core::broker::BrokerError;

use super::Inner;

/// Where a namespace keeps its history: the JetStream stream's limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSpec {
    /// `max_msgs_per_subject`: publications kept per channel.
    pub history_size: usize,
    /// `max_age`.
    pub history_ttl: Duration,
    /// Stream replicas (1 to 5; 3 in a NATS cluster survives a server loss).
    pub replicas: usize,
    /// `file` (survives a NATS restart) or `memory`.
    pub memory_storage: bool,
}

/// A stream this broker made sure exists.
pub(super) struct StreamState {
    pub(super) name: String,
    pub(super) epoch: String,
    pub(super) spec: StreamSpec,
}

impl Inner {
    /// The history stream of a namespace, created or updated to its spec on
    /// first use. `Ok(None)` when the namespace keeps no history.
    pub(super) async fn stream(&self, ns: &str) -> Result<Option<Arc<StreamState>>, BrokerError> {
        if let Some(s) = self.streams.read().get(ns) {
            return Ok(Some(s.clone()));
        }
        let Some(spec) = self.specs.get(ns).cloned() else {
            return Ok(None);
        };
        let name = self.subjects.stream(ns);
        let config = stream::Config {
            name: name.clone(),
            description: Some(format!("Groupcast history of namespace {ns:?}")),
            subjects: vec![self.subjects.stream_subjects(ns)],
            max_messages_per_subject: spec.history_size as i64,
            max_age: spec.history_ttl,
            num_replicas: spec.replicas,
            storage: if spec.memory_storage {
                stream::StorageType::Memory
            } else {
                stream::StorageType::File
            },
            discard: stream::DiscardPolicy::Old,
            allow_direct: true,
            republish: Some(stream::Republish {
                source: self.subjects.stream_subjects(ns),
                destination: self.subjects.republish_destination(ns),
                headers_only: false,
            }),
            ..Default::default()
        };
        let info = self
            .js
            .create_or_update_stream(config)
            .await
            .map_err(|e| BrokerError::Unavailable(format!("JetStream stream {name}: {e}")))?;
        let epoch = format!("{:x}", info.created.unix_timestamp_nanos() as u64);
        let state = Arc::new(StreamState { name, epoch, spec });
        self.streams.write().insert(ns.to_string(), state.clone());
        Ok(Some(state))
    }

    /// [`Self::stream`] at start: a JetStream that just formed (a new NATS
    /// cluster still electing its meta leader) times out or answers "no
    /// responders" for a while, so failures are retried with backoff for up
    /// to `within` (`nats.startup_timeout`) before giving up.
    pub(super) async fn stream_at_start(
        &self,
        ns: &str,
        within: Duration,
    ) -> Result<(), BrokerError> {
        let deadline = tokio::time::Instant::now() + within;
        let mut pause = Duration::from_millis(100);
        loop {
            let e = match self.stream(ns).await {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            // The last try is at the deadline, not a backoff before it.
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(e);
            }
            tracing::warn!(namespace = ns, error = %e, "JetStream not ready; retrying");
            metrics::counter!("groupcast_nats_stream_retries_total").increment(1);
            tokio::time::sleep(pause.min(left)).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }

    /// Forget a stream JetStream no longer has; the next use creates it
    /// again (with a new epoch).
    pub(super) fn forget_stream(&self, ns: &str) {
        self.streams.write().remove(ns);
    }
}
