//! State shared by every connection and API call of one edge.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use groupcast_core::{ChannelName, ChannelOptions, Namespaces, Node};
use groupcast_proto::ErrorCode;
use parking_lot::{Mutex, RwLock};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Verifier;
use axum::extract::ws::WebSocket;
use futures_util::stream::SplitStream;
use futures_util::StreamExt;
use groupcast_core::hub::SubscriberKind;

use crate::config::Config;
use crate::conn::{Conn, Writer};
use crate::limits::IpRateLimiter;
use crate::metrics::Metrics;

/// Connected clients by client id and by user, for server API actions.
#[derive(Default)]
pub struct Registry {
    inner: RwLock<RegistryInner>,
}

#[derive(Default)]
struct RegistryInner {
    clients: HashMap<String, (Arc<Conn>, String)>,
    users: HashMap<String, HashSet<String>>,
}

impl Registry {
    pub fn add(&self, conn: Arc<Conn>, user: &str) {
        let mut r = self.inner.write();
        r.users
            .entry(user.to_string())
            .or_default()
            .insert(conn.client.clone());
        r.clients
            .insert(conn.client.clone(), (conn, user.to_string()));
    }

    pub fn remove(&self, client: &str) {
        let mut r = self.inner.write();
        if let Some((_, user)) = r.clients.remove(client) {
            if let Some(set) = r.users.get_mut(&user) {
                set.remove(client);
                if set.is_empty() {
                    r.users.remove(&user);
                }
            }
        }
    }

    /// Connections of `user`, narrowed to `client` when it is not empty;
    /// every connection when both are empty.
    pub fn find(&self, user: &str, client: &str) -> Vec<Arc<Conn>> {
        let r = self.inner.read();
        if user.is_empty() && client.is_empty() {
            return r.clients.values().map(|(c, _)| c.clone()).collect();
        }
        if !client.is_empty() {
            return r
                .clients
                .get(client)
                .filter(|(_, u)| user.is_empty() || u == user)
                .map(|(c, _)| vec![c.clone()])
                .unwrap_or_default();
        }
        r.users
            .get(user)
            .map(|set| {
                set.iter()
                    .filter_map(|c| r.clients.get(c).map(|(c, _)| c.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn num_clients(&self) -> usize {
        self.inner.read().clients.len()
    }

    pub fn num_users(&self) -> usize {
        self.inner.read().users.len()
    }
}

/// Everything a session or API handler needs.
pub struct EdgeState {
    pub config: Config,
    pub node: Arc<Node>,
    pub namespaces: Namespaces,
    pub verifier: Verifier,
    pub registry: Registry,
    pub started: Instant,
    /// Cancelled when the edge stops accepting and drains: `shutdown.delay`
    /// after the stop signal.
    pub shutdown: CancellationToken,
    /// Cancelled at the stop signal: `/readyz` answers 503 from then on,
    /// while connections are still accepted for `shutdown.delay`.
    pub stopping: CancellationToken,
    /// The event proxies (`[[proxies]]`).
    pub proxies: crate::proxy::Proxies,
    /// The webhooks (`[[webhooks]]`).
    pub webhooks: crate::webhooks::Webhooks,
    /// Relay routes to backends and their HTTP targets (`[relay]`).
    pub routes: crate::routes::Routes,
    /// This edge's own NATS subject for backend commands, once served.
    pub backend_commands: std::sync::OnceLock<String>,
    pub uid: String,
    next_id: AtomicU64,
    /// Every open connection (protocol and relay, connected or not), for
    /// the shutdown drain.
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    /// Connection tasks, awaited (within the grace period) at shutdown.
    pub tasks: TaskTracker,
    /// New connections per client address.
    pub connection_rate: IpRateLimiter,
    /// NATS lost past `nats.fence_after`: clients are closed and refused
    /// (`fence`).
    pub fenced: AtomicBool,
    /// The service expired this edge's lease while it could not reach the
    /// service: clients are closed and refused until it answers again
    /// (`fence::lease_expired`).
    pub lease_fenced: AtomicBool,
}

fn gauge(kind: SubscriberKind) -> &'static metrics::Gauge {
    let m = Metrics::get();
    match kind {
        SubscriberKind::Protocol => &m.connections_protocol,
        SubscriberKind::Relay => &m.connections_relay,
        SubscriberKind::SocketIo => &m.connections_socketio,
    }
}

/// A connection set up by [`EdgeState::open`]; [`Opened::finish`] ends it.
pub struct Opened {
    pub conn: Arc<Conn>,
    /// The writer's task, when it has one ([`EdgeState::open_single`]: none).
    writer: Option<tokio::task::JoinHandle<()>>,
    gauge: &'static metrics::Gauge,
    _guard: ConnGuard,
}

impl Opened {
    /// The session is over: let the writer send the close frame, then
    /// leave the drain list and the gauge.
    pub async fn finish(self) {
        self.conn.closed_by_peer();
        if let Some(writer) = self.writer {
            let _ = writer.await;
        }
        self.gauge.decrement(1.0);
    }
}

/// A connection set up by [`EdgeState::open_detached`]: listed and counted until dropped.
pub struct Detached {
    pub conn: Arc<Conn>,
    _guard: ConnGuard,
}

impl Drop for Detached {
    fn drop(&mut self) {
        gauge(self.conn.kind).decrement(1.0);
    }
}

/// The client's address: from `client.client_ip_header` when configured
/// (right-most entry of a comma list, the one the proxy added), else the peer.
pub fn client_ip(
    header: &str,
    headers: &axum::http::HeaderMap,
    peer: std::net::SocketAddr,
) -> std::net::IpAddr {
    if header.is_empty() {
        return peer.ip();
    }
    headers
        .get(header)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(peer.ip())
}

/// Keeps a connection in [`EdgeState`]'s list while alive.
pub struct ConnGuard {
    state: Arc<EdgeState>,
    id: u64,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.state.conns.lock().remove(&self.id);
    }
}

/// Checks everything about `config` that the edge's parts check when they
/// are built: [`Config::validate`] (the settings' own rules), then the
/// token keys, the TLS files, the proxies' header names and the relay
/// routes. [`EdgeState::new`] runs it; the binary runs it right after
/// loading, so a bad setting stops `groupcast edge` before it connects to
/// anything. Every error names its key.
pub fn check_config(config: &Config) -> Result<(), String> {
    config.validate()?;
    Verifier::from_config(&config.client).map_err(|e| e.to_string())?;
    if config.tls.enabled() {
        crate::tls::load_certified_key(
            config.tls.cert_file.as_ref(),
            config.tls.key_file.as_ref(),
        )?;
    }
    crate::proxy::check(&config.proxies)?;
    crate::routes::check(&config.relay)?;
    check_socketio(config)?;
    Ok(())
}

/// `[socketio]` against the rest: its path is not one the edge or a relay route serves, its
/// namespaces' proxies exist and their targets are target names.
fn check_socketio(config: &Config) -> Result<(), String> {
    let c = &config.socketio;
    if !c.enabled {
        return Ok(());
    }
    if crate::routes::served_by_the_edge(&c.path) {
        return Err(format!(
            "socketio.path: {:?} is a path the edge serves itself",
            c.path
        ));
    }
    if let Some(i) = crate::routes::route_matching(&config.relay, &c.path) {
        return Err(format!(
            "socketio.path: {:?} is relay.routes[{i}]'s path too",
            c.path
        ));
    }
    for (i, n) in c.namespaces.iter().enumerate() {
        if !n.connect_proxy.is_empty() && !config.proxies.iter().any(|p| p.name == n.connect_proxy)
        {
            return Err(format!(
                "socketio.namespaces[{i}].connect_proxy: no [[proxies]] entry {:?}",
                n.connect_proxy
            ));
        }
        if !n.target.is_empty() && !groupcast_core::valid_target(&n.target) {
            return Err(format!(
                "socketio.namespaces[{i}].target: {:?} is not a target name (dot-separated letters, digits, _ and -)",
                n.target
            ));
        }
    }
    Ok(())
}

impl EdgeState {
    /// `signal`: cancelled at the stop signal. The drain starts
    /// `shutdown.delay` later (at once when it is zero).
    pub fn new(
        config: Config,
        node: Arc<Node>,
        signal: CancellationToken,
    ) -> Result<Arc<EdgeState>, String> {
        check_config(&config)?;
        let namespaces = config.namespaces()?;
        // The hub coalesces and caps join/leave pushes as each channel's
        // namespace says.
        let (by_name, max_len) = (namespaces.clone(), config.client.channel_max_length);
        node.set_join_leave_limits(Arc::new(move |channel: &str| {
            ChannelName::parse(channel, max_len)
                .ok()
                .and_then(|ch| by_name.options(&ch).map(|o| o.join_leave_limits()))
                .unwrap_or_default()
        }));
        let verifier = Verifier::from_config(&config.client).map_err(|e| e.to_string())?;
        let proxies = crate::proxy::Proxies::new(&config.proxies)?;
        let webhooks = crate::webhooks::Webhooks::start(&config.webhooks, &config.name)?;
        let routes = crate::routes::Routes::start(&config.relay)?;
        let delay = config.shutdown.delay;
        let shutdown = if delay.is_zero() {
            signal.clone()
        } else {
            let later = CancellationToken::new();
            let (signal, later2) = (signal.clone(), later.clone());
            tokio::spawn(async move {
                signal.cancelled().await;
                tracing::info!(
                    ?delay,
                    "stop signal: not ready, draining after shutdown.delay"
                );
                tokio::time::sleep(delay).await;
                later2.cancel();
            });
            later
        };
        Ok(Arc::new(EdgeState {
            namespaces,
            verifier,
            registry: Registry::default(),
            started: Instant::now(),
            shutdown,
            stopping: signal,
            proxies,
            webhooks,
            routes,
            backend_commands: Default::default(),
            // The membership service's name for this run, when there is one
            // (the same `uid` in `info` on every edge).
            uid: node
                .local_node()
                .map(|(_, uid)| uid)
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            // Random start: ids double as relay origins and must not collide
            // between nodes in practice.
            next_id: AtomicU64::new(rand::random::<u64>() >> 1),
            conns: Mutex::new(HashMap::new()),
            tasks: TaskTracker::new(),
            connection_rate: IpRateLimiter::new(
                config.client.connection_rate_per_ip,
                config.client.connection_burst_per_ip,
            ),
            fenced: AtomicBool::new(false),
            lease_fenced: AtomicBool::new(false),
            config,
            node,
        }))
    }

    /// List a new connection until the guard drops. A connection that opens
    /// after the drain started is drained at once.
    fn track(self: &Arc<Self>, conn: &Arc<Conn>) -> ConnGuard {
        self.conns.lock().insert(conn.id, conn.clone());
        if self.shutdown.is_cancelled() {
            conn.drain(groupcast_proto::DisconnectCode::SHUTDOWN);
        }
        ConnGuard {
            state: self.clone(),
            id: conn.id,
        }
    }

    pub fn num_connections(&self) -> usize {
        self.conns.lock().len()
    }

    /// The `limit` of a `history` call (client or API): negative means up to
    /// `client.history_max_limit`; above it, `None` (the call answers 106).
    pub fn history_limit(&self, limit: i32) -> Option<usize> {
        let max = self.config.client.history_max_limit;
        match limit {
            l if l < 0 => Some(max),
            l if l as usize > max => {
                Metrics::limit_hit("history_max_limit");
                None
            }
            l => Some(l as usize),
        }
    }

    /// Set up a new connection on an upgraded socket: its queue and writer
    /// task, its place in the drain list, the connection gauge.
    pub fn open(
        self: &Arc<Self>,
        socket: WebSocket,
        kind: SubscriberKind,
    ) -> (Opened, SplitStream<WebSocket>) {
        let (sink, stream) = socket.split();
        (self.open_with(sink, kind, gauge(kind)), stream)
    }

    /// [`EdgeState::open`] without a writer task: the session's task writes the socket
    /// through the [`Writer`] (one task per connection).
    pub fn open_single(
        self: &Arc<Self>,
        socket: WebSocket,
        kind: SubscriberKind,
    ) -> (Opened, Writer<WebSocket>) {
        let (conn, outbox) = Conn::new(
            self.next_conn_id(),
            kind,
            self.config.client.max_queue_bytes,
        );
        let guard = self.track(&conn);
        let gauge = gauge(kind);
        gauge.increment(1.0);
        let opened = Opened {
            conn,
            writer: None,
            gauge,
            _guard: guard,
        };
        (opened, Writer::new(socket, outbox))
    }

    /// [`EdgeState::open`] on any sink that takes WebSocket messages (HTTP streaming and
    /// SSE give one that writes their response body), counted in `gauge`.
    pub fn open_with<S>(
        self: &Arc<Self>,
        sink: S,
        kind: SubscriberKind,
        gauge: &'static metrics::Gauge,
    ) -> Opened
    where
        S: futures_util::Sink<axum::extract::ws::Message> + Unpin + Send + 'static,
    {
        let (conn, outbox) = Conn::new(
            self.next_conn_id(),
            kind,
            self.config.client.max_queue_bytes,
        );
        let guard = self.track(&conn);
        let writer = tokio::spawn(conn.clone().run_writer(sink, outbox));
        gauge.increment(1.0);
        Opened {
            conn,
            writer: Some(writer),
            gauge,
            _guard: guard,
        }
    }

    /// Checks a new connection (any transport) passes once its origin was checked: not
    /// shutting down, under `client.max_connections`, within its address's connection rate.
    pub fn admit_connection(
        &self,
        headers: &axum::http::HeaderMap,
        peer: std::net::SocketAddr,
    ) -> Result<(), (axum::http::StatusCode, &'static str)> {
        use axum::http::StatusCode;
        let c = &self.config.client;
        if self.shutdown.is_cancelled() {
            return Err((StatusCode::SERVICE_UNAVAILABLE, "shutting down"));
        }
        if self.fenced.load(Ordering::Acquire) && self.node.backbone_health().is_err() {
            return Err((StatusCode::SERVICE_UNAVAILABLE, "backbone unavailable"));
        }
        if self.lease_fenced.load(Ordering::Acquire) && !self.node.membership_available() {
            return Err((StatusCode::SERVICE_UNAVAILABLE, "membership lease lost"));
        }
        if self.num_connections() >= c.max_connections {
            Metrics::limit_hit("max_connections");
            return Err((StatusCode::SERVICE_UNAVAILABLE, "connection limit"));
        }
        if !self
            .connection_rate
            .allow(client_ip(&c.client_ip_header, headers, peer))
        {
            Metrics::limit_hit("connection_rate_per_ip");
            return Err((StatusCode::TOO_MANY_REQUESTS, "too many new connections"));
        }
        Ok(())
    }

    /// A connection without a WebSocket writer (Socket.IO: its session runs the
    /// transports): listed for the drain and counted while the [`Detached`] lives.
    pub fn open_detached(
        self: &Arc<Self>,
        kind: SubscriberKind,
    ) -> (Detached, crate::conn::Outbox) {
        let (conn, outbox) = Conn::new(
            self.next_conn_id(),
            kind,
            self.config.client.max_queue_bytes,
        );
        let guard = self.track(&conn);
        gauge(kind).increment(1.0);
        (
            Detached {
                conn,
                _guard: guard,
            },
            outbox,
        )
    }

    /// Open connections right now.
    pub fn open_connections(&self) -> Vec<Arc<Conn>> {
        self.conns.lock().values().cloned().collect()
    }

    pub fn next_conn_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Validate a channel name and find its namespace options.
    pub fn channel<'a>(
        &self,
        name: &'a str,
    ) -> Result<(ChannelName<'a>, &ChannelOptions), ErrorCode> {
        let ch = ChannelName::parse(name, self.config.client.channel_max_length)
            .map_err(|_| ErrorCode::BAD_REQUEST)?;
        let opts = self
            .namespaces
            .options(&ch)
            .ok_or(ErrorCode::UNKNOWN_CHANNEL)?;
        Ok((ch, opts))
    }

    /// Largest publication data in bytes on a channel with `opts`: the
    /// namespace's `max_publication_size`, or the global
    /// `client.max_message_size` (which caps both).
    pub fn max_publication_size(&self, opts: &ChannelOptions) -> usize {
        let global = self.config.client.max_message_size;
        match opts.max_publication_size {
            0 => global,
            n => n.min(global),
        }
    }

    /// Checks `len` bytes of publication data against
    /// [`max_publication_size`](Self::max_publication_size); a refusal is
    /// counted under the limit that applied.
    pub fn check_publication_size(&self, opts: &ChannelOptions, len: usize) -> bool {
        if len <= self.max_publication_size(opts) {
            return true;
        }
        Metrics::limit_hit(match opts.max_publication_size {
            0 => "max_message_size",
            _ => "max_publication_size",
        });
        false
    }

    /// Private (`$` prefix, or a namespace without
    /// `allow_subscribe_for_client`) or user-limited (`#`): access must be
    /// proven by a subscription token or by being listed.
    pub fn is_restricted(&self, ch: &ChannelName<'_>, opts: &ChannelOptions) -> bool {
        ch.rest().starts_with('$')
            || !opts.allow_subscribe_for_client
            || ch.allowed_users().is_some()
    }

    /// May `user` subscribe to `ch` without a subscription token?
    pub fn can_subscribe(&self, ch: &ChannelName<'_>, opts: &ChannelOptions, user: &str) -> bool {
        if user.is_empty() && !opts.allow_anonymous {
            return false;
        }
        if ch.rest().starts_with('$') || !opts.allow_subscribe_for_client {
            return false;
        }
        match ch.allowed_users() {
            None => true,
            Some(mut users) => opts.allow_user_limited_channels && users.any(|u| u == user),
        }
    }
}
