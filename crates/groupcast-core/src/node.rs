//! `Node`: one edge's view of the system, and the only door to it.
//!
//! Like the `Node` of centrifuge's Go library, it is the façade the
//! protocols and the API use: `publish`, `join`, `leave`, presence,
//! history, local subscribers, and the cluster queries. Its broker,
//! membership and hub are private: callers never reach around it, so what
//! a publication or a join *means* (history options from the namespace,
//! presence before `join`, `leave` after the entry is gone) is decided in
//! one place.
//!
//! Adding the first local subscriber of a channel subscribes the node on the
//! broker before the caller reads history; removing the last unsubscribes,
//! after the interest linger ([`Node::set_interest_linger`]) when one is set: a
//! subscriber that comes back within it finds the interest still there, so a
//! client flapping on a channel costs the backbone nothing. Both steps run
//! under a per-channel (striped) async lock so a concurrent subscribe can
//! never read history before the node's broker interest exists.
//! Every added and removed local subscriber is counted in [`Membership`]
//! (cluster-wide subscriber counts for the API's `channels` and `info`).

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use groupcast_proto::api::NodeInfo;
use groupcast_proto::client::ClientInfo;

use crate::broker::{
    BackboneStatus, Broker, BrokerError, BrokerHandler, HistoryQuery, HistoryResult,
    PendingPublish, PublishOptions,
};
use crate::bus::{BackendBus, NodeBus};
use crate::hub::{AddOutcome, BufferOverflow, Hub, RemoveOutcome, Subscriber};
use crate::membership::{
    EventHandler, LeaveHandler, Membership, MembershipError, PresenceStats, RemovalHandler,
    ReplicaStatus, UserStatus,
};
use crate::publication::{Publication, StreamPosition};

const LOCK_STRIPES: usize = 128;

pub struct Node {
    broker: Arc<dyn Broker>,
    membership: Arc<dyn Membership>,
    hub: Arc<Hub>,
    /// Requests to other nodes (none on a single node).
    bus: OnceLock<Arc<dyn NodeBus>>,
    /// Relay connections' backend processes (NATS only).
    backend: OnceLock<Arc<dyn BackendBus>>,
    stripes: Vec<tokio::sync::Mutex<()>>,
    /// How long the broker interest of a channel outlives its last local subscriber
    /// (milliseconds; 0: not at all).
    linger_ms: AtomicU64,
    /// Channels without local subscribers whose broker interest is kept for the linger,
    /// with the number of the departure that started it (a later one starts its own).
    lingering: parking_lot::Mutex<HashMap<String, u64>>,
    departures: AtomicU64,
    me: Weak<Node>,
}

impl Node {
    pub fn new(broker: Arc<dyn Broker>, membership: Arc<dyn Membership>) -> Arc<Node> {
        let hub = Arc::new(Hub::default());
        broker.set_handler(hub.clone());
        Arc::new_cyclic(|me| Node {
            broker,
            membership,
            hub,
            bus: OnceLock::new(),
            backend: OnceLock::new(),
            stripes: (0..LOCK_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            linger_ms: AtomicU64::new(0),
            lingering: Default::default(),
            departures: AtomicU64::new(0),
            me: me.clone(),
        })
    }

    /// Keep a channel's broker interest for `linger` after its last local subscriber left
    /// (zero, the default: drop it at once). Publications that arrive meanwhile reach
    /// nobody here, as without the interest; the backbone is spared a subscribe and an
    /// unsubscribe for every client that leaves a channel and comes back.
    pub fn set_interest_linger(&self, linger: Duration) {
        self.linger_ms
            .store(linger.as_millis() as u64, Ordering::Relaxed);
    }

    /// Channels whose broker interest outlives their last local subscriber now.
    pub fn lingering_channels(&self) -> usize {
        self.lingering.lock().len()
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
            if self.lingering.lock().remove(channel).is_some() {
                // The interest is still there: nothing to ask the broker.
                metrics::counter!("groupcast_interest_linger_total", "outcome" => "reused")
                    .increment(1);
            } else if let Err(e) = self.broker.subscribe(channel).await {
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
            let linger = Duration::from_millis(self.linger_ms.load(Ordering::Relaxed));
            if linger.is_zero() {
                self.unsubscribe_broker(channel).await;
                return;
            }
            let departure = self.departures.fetch_add(1, Ordering::Relaxed) + 1;
            self.lingering.lock().insert(channel.to_string(), departure);
            let (me, channel) = (self.me.clone(), channel.to_string());
            tokio::spawn(async move {
                tokio::time::sleep(linger).await;
                if let Some(node) = me.upgrade() {
                    node.end_linger(&channel, departure).await;
                }
            });
        }
    }

    /// The linger that `departure` started is over: drop the interest, unless a subscriber
    /// came back meanwhile (and perhaps left again, starting a linger of its own).
    async fn end_linger(&self, channel: &str, departure: u64) {
        let _g = self.stripe(channel).lock().await;
        {
            let mut lingering = self.lingering.lock();
            if lingering.get(channel) != Some(&departure) {
                return;
            }
            lingering.remove(channel);
        }
        metrics::counter!("groupcast_interest_linger_total", "outcome" => "expired").increment(1);
        self.unsubscribe_broker(channel).await;
    }

    async fn unsubscribe_broker(&self, channel: &str) {
        if let Err(e) = self.broker.unsubscribe(channel).await {
            // Interest stays on the broker: extra traffic, not lost messages.
            let _ = e;
        }
    }

    // Publications and history.

    /// Publish to `channel`, stored as `opts` says (see
    /// [`PublishOptions::for_channel`]); answers the publication's position.
    pub async fn publish(
        &self,
        channel: &str,
        publication: Publication,
        opts: &PublishOptions,
    ) -> Result<StreamPosition, BrokerError> {
        self.broker.publish(channel, publication, opts).await
    }

    /// Send a publication and return its answer to await later
    /// ([`Broker::publish_begin`]): publications begun one after another
    /// by one caller are stored in that order.
    pub async fn publish_begin(
        &self,
        channel: &str,
        publication: Publication,
        opts: &PublishOptions,
    ) -> Result<PendingPublish, BrokerError> {
        self.broker.publish_begin(channel, publication, opts).await
    }

    /// Read a channel's history.
    pub async fn history(
        &self,
        channel: &str,
        query: HistoryQuery,
    ) -> Result<HistoryResult, BrokerError> {
        self.broker.history(channel, query).await
    }

    /// Drop a channel's stored publications (the epoch is kept).
    pub async fn remove_history(&self, channel: &str) -> Result<(), BrokerError> {
        self.broker.remove_history(channel).await
    }

    /// Ends a subscriber's recovery buffering ([`Hub::finish_buffering`]):
    /// `before` runs first (the subscribe reply), then the buffered
    /// publications above `position` go out.
    pub fn finish_buffering(
        &self,
        channel: &str,
        id: u64,
        position: u64,
        before: impl FnOnce(),
    ) -> Result<(), BufferOverflow> {
        self.hub.finish_buffering(channel, id, position, before)
    }

    // Presence, join and leave.

    /// A client joins `channel`: its presence entry when `presence` (an
    /// error refuses the join), then the `join` push when `announce`. The
    /// entry is written before the push goes out, so whoever saw the `join`
    /// finds the client in presence (invariant 3).
    pub async fn join(
        &self,
        channel: &str,
        info: Arc<ClientInfo>,
        presence: bool,
        announce: bool,
    ) -> Result<(), MembershipError> {
        if presence {
            self.membership
                .add_presence(channel, (*info).clone())
                .await?;
        }
        if announce {
            // Best effort: a lost `join` push loses nothing stored.
            let _ = self.broker.publish_join(channel, info).await;
        }
        Ok(())
    }

    /// The `join` push alone, for a join whose presence entry was written
    /// earlier (a subscription that recovered first).
    pub async fn announce_join(&self, channel: &str, info: Arc<ClientInfo>) {
        let _ = self.broker.publish_join(channel, info).await;
    }

    /// A client leaves `channel`: its presence entry goes when `presence`,
    /// then the `leave` push when `announce` (only after a `join` went out).
    pub async fn leave(
        &self,
        channel: &str,
        info: Arc<ClientInfo>,
        presence: bool,
        announce: bool,
    ) {
        if presence {
            let _ = self.membership.remove_presence(channel, &info.client).await;
        }
        if announce {
            let _ = self.broker.publish_leave(channel, info).await;
        }
    }

    /// Present clients of a channel, keyed by client id, cluster-wide.
    pub async fn presence(
        &self,
        channel: &str,
    ) -> Result<BTreeMap<String, ClientInfo>, MembershipError> {
        self.membership.presence(channel).await
    }

    pub async fn presence_stats(&self, channel: &str) -> Result<PresenceStats, MembershipError> {
        self.membership.presence_stats(channel).await
    }

    /// Where the hub finds a channel's join/leave limits (coalescing and
    /// ceiling, [`crate::hub`]); set once before serving. Unset: every
    /// join and leave goes out at once.
    pub fn set_join_leave_limits(&self, limits: crate::hub::JoinLeaveLimitsFn) {
        self.hub.set_join_leave_limits(limits);
    }

    /// A subscription held after "insufficient state" goes on live without
    /// recovering ([`Hub::resume`]).
    pub fn resume_subscriber(&self, channel: &str, id: u64) -> bool {
        self.hub.resume(channel, id)
    }

    /// Pushes `leave` to this node's subscribers of `channel` only (for the
    /// entries of a dead node, which can no longer publish its own).
    pub fn push_leave_locally(&self, channel: &str, info: Arc<ClientInfo>) {
        self.hub.on_leave(channel, info);
    }

    // This node and the cluster.

    /// This node's connection count of `user` changed by `delta`.
    pub fn connections_changed(&self, user: &str, delta: i64) {
        self.membership.connections_changed(user, delta);
    }

    /// Channels with subscribers anywhere whose name starts with `prefix`,
    /// with cluster-wide counts; at most `limit`
    /// ([`crate::membership::MAX_CHANNELS_PER_QUERY`]).
    pub async fn channels(
        &self,
        prefix: &str,
        limit: u32,
    ) -> Result<BTreeMap<String, u64>, MembershipError> {
        self.membership.channels(prefix, limit).await
    }

    /// Names of the nodes holding connections of `user`.
    pub async fn user_nodes(&self, user: &str) -> Result<Vec<String>, MembershipError> {
        self.membership.user_nodes(user).await
    }

    /// Connection counts and last-seen times of `users`.
    pub async fn user_status(&self, users: &[String]) -> Result<Vec<UserStatus>, MembershipError> {
        self.membership.user_status(users).await
    }

    /// Every live node, this one included.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, MembershipError> {
        self.membership.nodes().await
    }

    /// This node's name and uid in the cluster; `None` on a single node.
    pub fn local_node(&self) -> Option<(String, String)> {
        self.membership.local_node()
    }

    /// Where leaves of dead nodes' presence entries go (set once).
    pub fn set_leave_handler(&self, handler: LeaveHandler) {
        self.membership.set_leave_handler(handler);
    }

    /// Where the names of other nodes removed with presence entries go
    /// (set once).
    pub fn set_removal_handler(&self, handler: RemovalHandler) {
        self.membership.set_removal_handler(handler);
    }

    /// Where this node's share of the cluster events goes (set once).
    pub fn set_event_handler(&self, handler: EventHandler) {
        self.membership.set_event_handler(handler);
    }

    /// Whether the backbone is usable now (`/readyz`); `Err` says why not.
    pub fn backbone_health(&self) -> Result<(), String> {
        self.broker.health()
    }

    /// The external backbone's state (dashboard); `None` in process.
    pub fn backbone(&self) -> Option<BackboneStatus> {
        self.broker.backbone()
    }

    /// Whether the membership service answers now.
    pub fn membership_available(&self) -> bool {
        self.membership.is_available()
    }

    /// Every membership replica's own status, within `timeout` in all.
    pub async fn replicas(&self, timeout: Duration) -> Option<Vec<ReplicaStatus>> {
        self.membership.replicas(timeout).await
    }

    /// Channels with local subscribers here.
    pub fn num_local_channels(&self) -> usize {
        self.hub.num_channels()
    }

    /// Local channels with their local subscriber counts.
    pub fn local_channels(&self) -> Vec<(String, usize)> {
        self.hub.channels()
    }
}

#[cfg(test)]
mod linger_tests {
    use super::*;
    use crate::broker::memory::MemoryBroker;
    use crate::hub::{PreparedPush, SubscriberKind};
    use crate::membership::memory::MemoryMembership;
    use crate::publication::Payload;
    use std::sync::atomic::AtomicUsize;

    struct Counter(u64, AtomicUsize);
    impl Subscriber for Counter {
        fn id(&self) -> u64 {
            self.0
        }
        fn kind(&self) -> SubscriberKind {
            SubscriberKind::Protocol
        }
        fn push(&self, _: &PreparedPush) {
            self.1.fetch_add(1, Ordering::SeqCst);
        }
        fn insufficient_state(&self, _: &str) -> bool {
            true
        }
    }

    fn node(linger: Duration) -> (Arc<Node>, Arc<MemoryBroker>) {
        let broker = Arc::new(MemoryBroker::default());
        let node = Node::new(broker.clone(), Arc::new(MemoryMembership::default()));
        node.set_interest_linger(linger);
        (node, broker)
    }

    async fn publish(node: &Node, channel: &str) {
        let p = Publication::new(Payload::Json(
            serde_json::value::RawValue::from_string("1".into())
                .unwrap()
                .into(),
        ));
        node.publish(channel, p, &PublishOptions::default())
            .await
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn the_interest_outlives_the_last_subscriber_for_the_linger() {
        let linger = Duration::from_secs(2);
        let (node, broker) = node(linger);
        let a = Arc::new(Counter(1, AtomicUsize::new(0)));
        node.add_subscriber("ch", a.clone(), false).await.unwrap();
        assert!(broker.is_subscribed("ch"));
        node.remove_subscriber("ch", 1).await;
        // Kept for the linger.
        assert!(broker.is_subscribed("ch"));
        assert_eq!(node.lingering_channels(), 1);

        // A subscriber back within it finds the interest and gets what comes next.
        tokio::time::sleep(linger / 2).await;
        let b = Arc::new(Counter(2, AtomicUsize::new(0)));
        node.add_subscriber("ch", b.clone(), false).await.unwrap();
        assert_eq!(node.lingering_channels(), 0);
        tokio::time::sleep(linger).await;
        assert!(
            broker.is_subscribed("ch"),
            "the first linger's end leaves b's interest"
        );
        publish(&node, "ch").await;
        assert_eq!(b.1.load(Ordering::SeqCst), 1);

        // Its own departure lingers, then the interest is dropped.
        node.remove_subscriber("ch", 2).await;
        tokio::time::sleep(linger - Duration::from_millis(100)).await;
        assert!(broker.is_subscribed("ch"));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!broker.is_subscribed("ch"));
        assert_eq!(node.lingering_channels(), 0);
    }

    #[tokio::test]
    async fn without_a_linger_the_interest_goes_with_the_last_subscriber() {
        let (node, broker) = node(Duration::ZERO);
        let a = Arc::new(Counter(1, AtomicUsize::new(0)));
        node.add_subscriber("ch", a, false).await.unwrap();
        node.remove_subscriber("ch", 1).await;
        assert!(!broker.is_subscribed("ch"));
        assert_eq!(node.lingering_channels(), 0);
    }
}
