//! In-process broker with in-memory history: the embedded default.
//!
//! One map from channel to stream; each stream is a ring of publications
//! bounded by size and age, its top offset and its epoch (random per stream).
//! Publishing takes the channel's lock, appends, and calls the handler while
//! still holding it, which gives the ordering the contract asks for.
//!
//! Bounded: a stream holds at most `history_size` publications; streams whose
//! newest publication is older than `meta_ttl` are dropped by [`MemoryBroker::sweep`]
//! (run periodically by the node), which also forgets their epoch.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use groupcast_proto::client::ClientInfo;
use parking_lot::{Mutex, RwLock};

use super::{Broker, BrokerError, BrokerHandler, HistoryQuery, HistoryResult, PublishOptions};
use crate::publication::{Publication, StreamPosition};

/// Default time a stream's position (epoch and offset) is kept after its last
/// publication.
pub const DEFAULT_META_TTL: Duration = Duration::from_secs(24 * 3600);

struct Stream {
    epoch: String,
    top: u64,
    items: VecDeque<(Arc<Publication>, Instant)>,
    last_publish: Instant,
}

impl Stream {
    fn new() -> Stream {
        Stream {
            epoch: new_epoch(),
            top: 0,
            items: VecDeque::new(),
            last_publish: Instant::now(),
        }
    }

    fn trim(&mut self, now: Instant, size: usize) {
        while self.items.len() > size {
            self.items.pop_front();
        }
        while matches!(self.items.front(), Some((_, exp)) if *exp <= now) {
            self.items.pop_front();
        }
    }

    fn position(&self) -> StreamPosition {
        StreamPosition {
            offset: self.top,
            epoch: self.epoch.clone(),
        }
    }
}

fn new_epoch() -> String {
    let n: u64 = rand::random();
    format!("{:08x}", n as u32)
}

/// The in-memory broker. Cheap to share behind an `Arc`.
pub struct MemoryBroker {
    handler: OnceLock<Arc<dyn BrokerHandler>>,
    subscribed: RwLock<HashSet<String>>,
    streams: RwLock<HashMap<String, Arc<Mutex<Stream>>>>,
    /// Serializes delivery for channels without history (ordering contract).
    plain_locks: Vec<Mutex<()>>,
    meta_ttl: Duration,
}

impl Default for MemoryBroker {
    fn default() -> Self {
        Self::new(DEFAULT_META_TTL)
    }
}

impl MemoryBroker {
    /// Whether the broker has the node's interest in `channel` (it delivers the channel's
    /// publications to its handler only then).
    pub fn is_subscribed(&self, channel: &str) -> bool {
        self.subscribed.read().contains(channel)
    }

    pub fn new(meta_ttl: Duration) -> MemoryBroker {
        MemoryBroker {
            handler: OnceLock::new(),
            subscribed: RwLock::new(HashSet::new()),
            streams: RwLock::new(HashMap::new()),
            plain_locks: (0..64).map(|_| Mutex::new(())).collect(),
            meta_ttl,
        }
    }

    fn stream(&self, channel: &str) -> Arc<Mutex<Stream>> {
        if let Some(s) = self.streams.read().get(channel) {
            return s.clone();
        }
        self.streams
            .write()
            .entry(channel.to_string())
            .or_insert_with(|| Arc::new(Mutex::new(Stream::new())))
            .clone()
    }

    fn deliver(&self, channel: &str, f: impl FnOnce(&dyn BrokerHandler)) {
        if !self.subscribed.read().contains(channel) {
            return;
        }
        if let Some(h) = self.handler.get() {
            f(h.as_ref());
        }
    }

    fn plain_lock(&self, channel: &str) -> &Mutex<()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        channel.hash(&mut h);
        &self.plain_locks[(h.finish() as usize) % self.plain_locks.len()]
    }

    /// Drop expired publications and forget streams idle longer than the meta
    /// TTL. Returns the number of streams left.
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        let mut streams = self.streams.write();
        streams.retain(|_, s| {
            let mut s = s.lock();
            while matches!(s.items.front(), Some((_, exp)) if *exp <= now) {
                s.items.pop_front();
            }
            now.duration_since(s.last_publish) < self.meta_ttl
        });
        streams.len()
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    fn set_handler(&self, handler: Arc<dyn BrokerHandler>) {
        let _ = self.handler.set(handler);
    }

    async fn subscribe(&self, channel: &str) -> Result<(), BrokerError> {
        self.subscribed.write().insert(channel.to_string());
        Ok(())
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), BrokerError> {
        self.subscribed.write().remove(channel);
        Ok(())
    }

    async fn publish(
        &self,
        channel: &str,
        mut publication: Publication,
        opts: &PublishOptions,
    ) -> Result<StreamPosition, BrokerError> {
        if opts.history_size == 0 || opts.history_ttl.is_zero() {
            publication.offset = 0;
            let p = Arc::new(publication);
            let _order = self.plain_lock(channel).lock();
            self.deliver(channel, |h| h.on_publication(channel, p));
            return Ok(StreamPosition::default());
        }
        let stream = self.stream(channel);
        let mut s = stream.lock();
        let now = Instant::now();
        s.top += 1;
        s.last_publish = now;
        publication.offset = s.top;
        let p = Arc::new(publication);
        s.items.push_back((p.clone(), now + opts.history_ttl));
        s.trim(now, opts.history_size);
        let position = s.position();
        self.deliver(channel, |h| h.on_publication(channel, p));
        Ok(position)
    }

    async fn publish_join(&self, channel: &str, info: Arc<ClientInfo>) -> Result<(), BrokerError> {
        let _order = self.plain_lock(channel).lock();
        self.deliver(channel, |h| h.on_join(channel, info));
        Ok(())
    }

    async fn publish_leave(&self, channel: &str, info: Arc<ClientInfo>) -> Result<(), BrokerError> {
        let _order = self.plain_lock(channel).lock();
        self.deliver(channel, |h| h.on_leave(channel, info));
        Ok(())
    }

    async fn history(
        &self,
        channel: &str,
        query: HistoryQuery,
    ) -> Result<HistoryResult, BrokerError> {
        let stream = self.stream(channel);
        let mut s = stream.lock();
        s.trim(Instant::now(), usize::MAX);
        let position = s.position();
        let since = match &query.since {
            Some(since) if !since.epoch_matches(&s.epoch) => {
                return Err(BrokerError::UnrecoverablePosition)
            }
            Some(since) => Some(since.offset),
            None => None,
        };
        let limit = query.limit.unwrap_or(usize::MAX);
        // Offsets are consecutive here, so a read from `since` is complete
        // when it starts right after it (or nothing came after it).
        let complete = match since {
            Some(since) if !query.reverse && query.limit.is_none() => match s.items.front() {
                _ if since == s.top => true,
                Some((first, _)) => first.offset <= since + 1 && since <= s.top,
                None => false,
            },
            _ => false,
        };
        let items = s.items.iter().map(|(p, _)| p);
        let publications: Vec<_> = match (query.reverse, since) {
            (false, since) => {
                let after = since.unwrap_or(0);
                items
                    .filter(|p| p.offset > after)
                    .take(limit)
                    .cloned()
                    .collect()
            }
            (true, None) => items.rev().take(limit).cloned().collect(),
            (true, Some(before)) => items
                .rev()
                .filter(|p| p.offset < before)
                .take(limit)
                .cloned()
                .collect(),
        };
        Ok(HistoryResult {
            publications,
            position,
            complete,
        })
    }

    async fn remove_history(&self, channel: &str) -> Result<(), BrokerError> {
        if let Some(s) = self.streams.read().get(channel) {
            s.lock().items.clear();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passes_the_conformance_suite() {
        crate::conformance::run_all(|| async {
            Arc::new(MemoryBroker::default()) as Arc<dyn Broker>
        })
        .await;
    }

    #[tokio::test]
    async fn history_expires_by_ttl_and_keeps_the_position() {
        let b = MemoryBroker::default();
        let opts = PublishOptions {
            history_size: 10,
            history_ttl: Duration::from_millis(50),
            ..Default::default()
        };
        let text = || Publication::new(crate::Payload::Text("x".into()));
        b.publish("c", text(), &opts).await.unwrap();
        b.publish("c", text(), &opts).await.unwrap();
        let h = b.history("c", HistoryQuery::default()).await.unwrap();
        assert_eq!(h.publications.len(), 2);
        tokio::time::sleep(Duration::from_millis(80)).await;
        let pos = b.publish("c", text(), &opts).await.unwrap();
        let h = b.history("c", HistoryQuery::default()).await.unwrap();
        let offs: Vec<u64> = h.publications.iter().map(|p| p.offset).collect();
        assert_eq!(offs, [3], "the two older publications aged out");
        assert_eq!(h.position, pos, "offsets and epoch survive expiry");
    }

    #[tokio::test]
    async fn sweep_forgets_idle_streams() {
        let b = MemoryBroker::new(Duration::from_millis(20));
        let opts = PublishOptions {
            history_size: 10,
            history_ttl: Duration::from_millis(10),
            ..Default::default()
        };
        b.publish(
            "a",
            Publication::new(crate::Payload::Text("x".into())),
            &opts,
        )
        .await
        .unwrap();
        assert_eq!(b.sweep(), 1);
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert_eq!(b.sweep(), 0);
    }
}
