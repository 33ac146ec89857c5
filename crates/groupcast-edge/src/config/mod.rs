//! Edge configuration: one TOML file, `GROUPCAST_*` variables, CLI flags.
//!
//! Layering, lowest first: built-in defaults (production-safe, or the dev
//! profile for `groupcast dev`), the TOML file, environment variables
//! (`GROUPCAST_LISTEN`, nested keys with `__`: `GROUPCAST_CLIENT__PING_INTERVAL`),
//! then flags. Unknown keys are errors. [`Config::validate`] checks what types
//! cannot; every error names the key. `docs/configuration.md` lists every field.
//!
//! This module is the bottom of the edge: it imports nothing else of the
//! crate. Checks that need another part (token keys parsed, TLS files read,
//! proxies' header names, relay route templates) run where the edge's state
//! is built (`state::check_config`).
//!
//! # Layout
//! * this file: [`Config`], the small sections, layering and validation;
//! * [`client`]: `[client]` ([`ClientConfig`]);
//! * [`relay`]: `[relay]`, `[[relay.routes]]`, `[[relay.http_targets]]`;
//! * [`hooks`]: `[[proxies]]` and `[[webhooks]]`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use groupcast_core::{ChannelOptions, NamespaceConfig, Namespaces};
use groupcast_nats::NatsConfig;
use serde::{Deserialize, Serialize};

pub mod client;
pub mod hooks;
pub mod relay;
pub mod socketio;

pub use client::ClientConfig;
pub use hooks::{ProxyConfig, WebhookConfig, WEBHOOK_EVENTS};
pub use relay::{HttpTargetConfig, RelayConfig, RouteConfig};
pub use socketio::{SioNamespaceConfig, SocketIoConfig};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address of the HTTP + WebSocket listener.
    pub listen: SocketAddr,
    /// Node name shown in the API's `info`.
    #[serde(deserialize_with = "lenient::string")]
    pub name: String,
    /// Server HTTP API.
    pub api: ApiConfig,
    /// Client connections and their authentication.
    pub client: ClientConfig,
    /// Options of the default namespace (channels without `ns:`).
    pub channel: ChannelOptions,
    /// Named namespaces (`[[namespaces]]`).
    pub namespaces: Vec<NamespaceConfig>,
    /// Raw WebSocket relay at `/ws/relay/{channel}`.
    pub relay: RelayConfig,
    /// The Socket.IO server (`[socketio]`, docs/socketio.md).
    pub socketio: SocketIoConfig,
    /// Graceful shutdown (SIGTERM, SIGINT).
    pub shutdown: ShutdownConfig,
    /// TLS on the listener (WebSocket and HTTP API alike).
    pub tls: TlsConfig,
    /// The NATS backbone (`groupcast edge`; `groupcast dev --nats`). Without
    /// URLs the node uses the in-memory broker.
    pub nats: NatsConfig,
    /// The membership service (`groupcast edge`). Without seeds the node
    /// keeps presence in memory, for itself alone (`groupcast dev`).
    pub membership: MembershipConfig,
    /// The built-in operator dashboard at `/dashboard`.
    pub dashboard: DashboardConfig,
    /// Event proxies to the application backend (`[[proxies]]`), named by
    /// `client.*_proxy` and the namespaces' `*_proxy` (docs/backends.md).
    pub proxies: Vec<ProxyConfig>,
    /// Signed, batched event POSTs to the application (`[[webhooks]]`).
    pub webhooks: Vec<WebhookConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DashboardConfig {
    /// Serve `/dashboard` and `/dashboard/data` (404 when off). The data
    /// always needs the API key (`api.key`): with none configured it
    /// answers 401 to everyone.
    pub enabled: bool,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        DashboardConfig { enabled: true }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MembershipConfig {
    /// Membership replica QUIC addresses (`host:port`), any number of them:
    /// the leader is found. Empty: in-memory membership (one node only).
    pub seeds: Vec<String>,
    /// Directory holding `ca.pem` and this edge's certificate
    /// (`<cert_name>.pem`, `<cert_name>-key.pem`), made by `groupcast certs`.
    #[serde(deserialize_with = "lenient::string")]
    pub certs: String,
    /// Certificate name; empty: the node name (`name`).
    #[serde(deserialize_with = "lenient::string")]
    pub cert_name: String,
    /// The name replicas' certificates must hold; empty: the host part of
    /// each seed address.
    #[serde(deserialize_with = "lenient::string")]
    pub server_name: String,
    /// The service removes this edge (its clients leave) when it has not
    /// renewed its lease for this long.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// How often the lease is renewed (below `lease_ttl`).
    #[serde(with = "humantime_serde")]
    pub renew_interval: Duration,
    /// A request unanswered for this long marks the service unavailable
    /// (presence answers 108; changes are kept and replayed).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Changes kept while the service is unavailable; past this the queue
    /// is dropped and the edge's whole state is resent when it is back.
    pub buffer_max: usize,
    /// Most presence entries per channel, cluster-wide (beyond: 106 on
    /// subscribe).
    pub presence_max_clients: u32,
    /// How long start-up waits for the first registration before serving
    /// anyway (presence answers 108 until the service answers).
    #[serde(with = "humantime_serde")]
    pub start_timeout: Duration,
    /// When another edge reports that the service expired this edge's
    /// lease while this edge cannot reach the service, close every client
    /// with 3017 (`membership lease lost`, reconnect) and refuse new ones
    /// with HTTP 503 until the service answers again: their presence
    /// entries are gone, so they reconnect to an edge that holds a lease.
    /// `false`: keep them (invisible in presence until the service is
    /// back and this edge resends its entries).
    pub lease_fence: bool,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        MembershipConfig {
            seeds: Vec::new(),
            certs: String::new(),
            cert_name: String::new(),
            server_name: String::new(),
            lease_ttl: Duration::from_secs(5),
            renew_interval: Duration::from_secs(1),
            request_timeout: Duration::from_secs(2),
            buffer_max: 100_000,
            presence_max_clients: groupcast_core::membership::memory::DEFAULT_MAX_PER_CHANNEL
                as u32,
            start_timeout: Duration::from_secs(10),
            lease_fence: true,
        }
    }
}

impl MembershipConfig {
    pub fn is_clustered(&self) -> bool {
        !self.seeds.is_empty()
    }

    fn validate(&self) -> Result<(), String> {
        if self.presence_max_clients == 0 {
            return Err("membership.presence_max_clients: must be above 0".into());
        }
        if !self.is_clustered() {
            return Ok(());
        }
        for (i, s) in self.seeds.iter().enumerate() {
            if s.rsplit_once(':').is_none() {
                return Err(format!("membership.seeds[{i}]: {s:?} is not host:port"));
            }
        }
        if self.certs.is_empty() {
            return Err(
                "membership.certs: the certificate directory is required with membership.seeds"
                    .into(),
            );
        }
        if self.lease_ttl < Duration::from_secs(1) {
            return Err("membership.lease_ttl: must be at least 1s".into());
        }
        if self.renew_interval.is_zero() || self.renew_interval * 2 > self.lease_ttl {
            return Err(
                "membership.renew_interval: must be above 0 and at most half of membership.lease_ttl"
                    .into(),
            );
        }
        if self.request_timeout.is_zero() {
            return Err("membership.request_timeout: must be above 0".into());
        }
        if self.buffer_max == 0 {
            return Err("membership.buffer_max: must be above 0".into());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain. Empty (with `key_file`): plain TCP.
    pub cert_file: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: String,
    /// How often to check the files for changes (reloaded without a
    /// restart; SIGHUP reloads at once). Default 10s.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Option<Duration>,
}

impl TlsConfig {
    pub fn enabled(&self) -> bool {
        !self.cert_file.is_empty() || !self.key_file.is_empty()
    }

    pub fn reload_every(&self) -> Duration {
        self.reload_interval.unwrap_or(Duration::from_secs(10))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// After the stop signal, keep serving (and accepting) for this long
    /// with `/readyz` answering 503, so a load balancer that follows
    /// readiness stops sending new clients before the drain; then drain.
    /// 0: drain at once. The Helm chart sets 5 s (in place of a `preStop`
    /// sleep, which the shell-less image cannot run).
    #[serde(with = "humantime_serde")]
    pub delay: Duration,
    /// The whole drain must finish within this; then the process exits.
    /// Keep it below the orchestrator's kill timeout (Kubernetes: 30 s).
    #[serde(with = "humantime_serde")]
    pub grace_period: Duration,
    /// Connections told to reconnect per batch ("shutdown", 3001), so
    /// clients do not all reconnect to the other nodes at once.
    pub drain_batch_size: usize,
    /// Pause between batches.
    #[serde(with = "humantime_serde")]
    pub drain_batch_interval: Duration,
    /// Spread the drain over this window whatever the number of connections: the
    /// connections are shared evenly among the batches (one every
    /// `drain_batch_interval`) from the start to the end of the window, and
    /// `drain_batch_size` is not used. 0 (the
    /// default): batches of `drain_batch_size`. Must be below `grace_period`, with room
    /// for the clients to leave.
    #[serde(with = "humantime_serde")]
    pub drain_window: Duration,
}

impl ShutdownConfig {
    /// The drain's batches for `n` open connections, one every `drain_batch_interval`:
    /// their sizes, in order. Without a `drain_window`, batches of `drain_batch_size`;
    /// with one, the `n` spread evenly over a batch at 0, one every interval, and one at
    /// the window's end (some may be empty when `n` is small).
    pub fn drain_batches(&self, n: usize) -> Vec<usize> {
        if self.drain_window.is_zero() {
            let size = self.drain_batch_size.max(1);
            return (0..n.div_ceil(size))
                .map(|i| size.min(n - i * size))
                .collect();
        }
        let interval = self.drain_batch_interval.max(Duration::from_millis(1));
        let batches = (self.drain_window.as_millis() / interval.as_millis()) as usize + 1;
        (0..batches)
            .map(|j| (j + 1) * n / batches - j * n / batches)
            .collect()
    }
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            delay: Duration::ZERO,
            grace_period: Duration::from_secs(25),
            drain_batch_size: 1000,
            drain_batch_interval: Duration::from_millis(100),
            drain_window: Duration::ZERO,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Key for `/api/*` (`X-API-Key: KEY` or `Authorization: apikey KEY`).
    /// Empty: the API answers 401 to every call.
    #[serde(deserialize_with = "lenient::string")]
    pub key: String,
    /// Largest accepted API request body in bytes.
    pub max_body_bytes: usize,
    /// On NATS, serve the API to backends on `{nats.prefix}.api` (and each
    /// edge's `{nats.prefix}.api.{name}`). Off unless set: each command
    /// must carry the API key (`"api_key"`), and NATS permissions decide who
    /// may publish there at all (docs/backends.md, docs/security.md).
    pub over_nats: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8000".parse().expect("valid address"),
            name: "groupcast".into(),
            api: ApiConfig::default(),
            client: ClientConfig::default(),
            channel: ChannelOptions::default(),
            namespaces: Vec::new(),
            relay: RelayConfig::default(),
            socketio: SocketIoConfig::default(),
            shutdown: ShutdownConfig::default(),
            tls: TlsConfig::default(),
            nats: NatsConfig::default(),
            membership: MembershipConfig::default(),
            dashboard: DashboardConfig::default(),
            proxies: Vec::new(),
            webhooks: Vec::new(),
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            key: String::new(),
            max_body_bytes: 1 << 20,
            over_nats: false,
        }
    }
}

impl Config {
    /// The `groupcast dev` profile: every feature on, any origin, anonymous OK.
    pub fn dev() -> Config {
        let defaults = Config::default();
        Config {
            channel: ChannelOptions::dev(),
            client: ClientConfig {
                allow_anonymous_connect_without_token: true,
                allowed_origins: vec!["*".into()],
                ..defaults.client.clone()
            },
            socketio: SocketIoConfig {
                enabled: true,
                ..defaults.socketio.clone()
            },
            ..defaults
        }
    }

    /// Layer `base`, the TOML file, `GROUPCAST_*` env vars and `overrides`
    /// (already-parsed flags, as a serializable partial map).
    pub fn load(
        base: Config,
        file: Option<&Path>,
        overrides: Serialized<serde_json::Value>,
    ) -> Result<Config, String> {
        Config::load_files(base, file.as_slice(), overrides)
    }

    /// [`Config::load`] with several TOML files, each layered over the ones
    /// before it: tables merge key by key, any other value (an array of
    /// tables such as `[[namespaces]]` included) is replaced whole by the
    /// later file's.
    pub fn load_files<P: AsRef<Path>>(
        base: Config,
        files: &[P],
        overrides: Serialized<serde_json::Value>,
    ) -> Result<Config, String> {
        let mut fig = Figment::from(Serialized::defaults(base));
        for path in files {
            let path = path.as_ref();
            if !path.exists() {
                return Err(format!("config file {} does not exist", path.display()));
            }
            fig = fig.merge(Toml::file(path));
        }
        let env = Env::prefixed("GROUPCAST_")
            .filter(|key| !is_service_link(key.as_str()))
            .split("__");
        fig = fig.merge(env).merge(overrides);
        let config: Config = fig.extract().map_err(|e| {
            e.into_iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks beyond types. The error names the key.
    pub fn validate(&self) -> Result<(), String> {
        self.socketio.validate()?;
        let c = &self.client;
        if c.first_byte_timeout < Duration::from_millis(100) {
            return Err("client.first_byte_timeout: must be at least 100ms".into());
        }
        if c.request_head_timeout < c.first_byte_timeout {
            return Err(
                "client.request_head_timeout: must be at least client.first_byte_timeout".into(),
            );
        }
        if c.rate_refusals_max > 0 && c.rate_refusals_window.is_zero() {
            return Err(
                "client.rate_refusals_window: must be above 0 (or set rate_refusals_max = 0)"
                    .into(),
            );
        }
        if c.ping_interval < Duration::from_secs(1) {
            return Err("client.ping_interval: must be at least 1s".into());
        }
        if c.pong_timeout.is_zero() || c.pong_timeout >= c.ping_interval {
            return Err(
                "client.pong_timeout: must be above 0 and below client.ping_interval".into(),
            );
        }
        if c.connect_timeout < Duration::from_millis(100) {
            return Err("client.connect_timeout: must be at least 100ms".into());
        }
        if c.max_message_size < 1024 {
            return Err("client.max_message_size: must be at least 1024".into());
        }
        if !(1..=10_000).contains(&c.max_publishes_in_flight) {
            return Err("client.max_publishes_in_flight: must be 1 to 10000".into());
        }
        if c.max_queue_bytes < c.max_message_size {
            return Err("client.max_queue_bytes: must be at least client.max_message_size".into());
        }
        if c.channel_max_length == 0 {
            return Err("client.channel_max_length: must be above 0".into());
        }
        if !(256..=1 << 20).contains(&c.read_buffer_size) {
            return Err("client.read_buffer_size: must be between 256 and 1048576".into());
        }
        if !(1..=65_535).contains(&c.listen_backlog) {
            return Err("client.listen_backlog: must be 1 to 65535".into());
        }
        if c.max_connections == 0 {
            return Err("client.max_connections: must be above 0".into());
        }
        for (key, v) in [
            ("connection_rate_per_ip", c.connection_rate_per_ip),
            ("connection_burst_per_ip", c.connection_burst_per_ip),
            ("command_rate", c.command_rate),
            ("command_burst", c.command_burst),
            ("publish_rate", c.publish_rate),
            ("publish_burst", c.publish_burst),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("client.{key}: must be a number >= 0"));
            }
        }
        for (key, rate, burst) in [
            (
                "connection_burst_per_ip",
                c.connection_rate_per_ip,
                c.connection_burst_per_ip,
            ),
            ("command_burst", c.command_rate, c.command_burst),
            ("publish_burst", c.publish_rate, c.publish_burst),
        ] {
            if rate > 0.0 && burst < 1.0 {
                return Err(format!(
                    "client.{key}: must be at least 1 when the rate is on"
                ));
            }
        }
        if c.max_channels_per_connection == 0 {
            return Err("client.max_channels_per_connection: must be above 0".into());
        }
        if c.history_max_limit == 0 {
            return Err("client.history_max_limit: must be above 0".into());
        }
        for (i, o) in c.allowed_origins.iter().enumerate() {
            client::origin_pattern(o).map_err(|e| format!("client.allowed_origins[{i}]: {e}"))?;
        }
        for (i, o) in c.public_origins.iter().enumerate() {
            let key = format!("client.public_origins[{i}]");
            let origin = client::WebOrigin::parse(o).map_err(|e| format!("{key}: {o:?}: {e}"))?;
            if !matches!(origin.scheme.as_str(), "http" | "https") {
                return Err(format!("{key}: {o:?}: the scheme must be http or https"));
            }
        }
        for (i, r) in self.relay.routes.iter().enumerate() {
            for (j, o) in r.allowed_origins.iter().enumerate() {
                client::origin_pattern(o)
                    .map_err(|e| format!("relay.routes[{i}].allowed_origins[{j}]: {e}"))?;
            }
        }
        self.nats.validate()?;
        self.membership.validate()?;
        if self.name.is_empty() || self.name.len() > 64 {
            return Err("name: 1 to 64 characters".into());
        }
        if self.api.max_body_bytes < 1024 {
            return Err("api.max_body_bytes: must be at least 1024".into());
        }
        if self.tls.enabled() {
            if self.tls.cert_file.is_empty() || self.tls.key_file.is_empty() {
                return Err("tls: set both tls.cert_file and tls.key_file".into());
            }
            if self.tls.reload_every() < Duration::from_millis(100) {
                return Err("tls.reload_interval: must be at least 100ms".into());
            }
        }
        let s = &self.shutdown;
        if s.grace_period < Duration::from_secs(1) {
            return Err("shutdown.grace_period: must be at least 1s".into());
        }
        if s.delay > Duration::from_secs(300) {
            return Err("shutdown.delay: must be at most 5m".into());
        }
        if s.drain_batch_size == 0 {
            return Err("shutdown.drain_batch_size: must be above 0".into());
        }
        if s.drain_batch_interval >= s.grace_period {
            return Err(
                "shutdown.drain_batch_interval: must be below shutdown.grace_period".into(),
            );
        }
        if s.drain_window >= s.grace_period {
            return Err("shutdown.drain_window: must be below shutdown.grace_period".into());
        }
        if self.relay.enabled && self.relay.default_channel.is_empty() {
            return Err("relay.default_channel: must not be empty".into());
        }
        let namespaces = self.namespaces()?;
        if self.socketio.enabled {
            for (i, n) in self.socketio.namespaces.iter().enumerate() {
                if !n.recovery {
                    continue;
                }
                // The options of the namespace's rooms (any room name: the prefix decides).
                let room = format!("{}r", n.channel_prefix);
                let opts = groupcast_core::ChannelName::parse(&room, c.channel_max_length)
                    .ok()
                    .and_then(|ch| namespaces.options(&ch).cloned());
                if !opts.is_some_and(|o| o.allow_recovery && o.has_history()) {
                    return Err(format!(
                        "socketio.namespaces[{i}].recovery: the channels of prefix {:?} need history (history_size, history_ttl) and allow_recovery",
                        n.channel_prefix
                    ));
                }
            }
        }
        let ns = &c.personal_channel_namespace;
        if c.subscribe_to_personal
            && !ns.is_empty()
            && !self.namespaces.iter().any(|n| &n.name == ns)
        {
            return Err(format!(
                "client.personal_channel_namespace: no namespace {ns:?} in [[namespaces]]"
            ));
        }
        if !c.user_status_channel.is_empty() {
            let ch =
                groupcast_core::ChannelName::parse(&c.user_status_channel, c.channel_max_length)
                    .map_err(|e| format!("client.user_status_channel: {e}"))?;
            if self.namespaces()?.options(&ch).is_none() {
                return Err(format!(
                    "client.user_status_channel: no namespace for {:?}",
                    c.user_status_channel
                ));
            }
        }
        let sizes = std::iter::once(("channel.".to_string(), &self.channel)).chain(
            self.namespaces
                .iter()
                .map(|n| (format!("namespace {:?}: ", n.name), &n.options)),
        );
        for (i, w) in self.webhooks.iter().enumerate() {
            w.validate(i)?;
        }
        let known = |key: String, name: &str| -> Result<(), String> {
            if name.is_empty() || self.proxies.iter().any(|p| p.name == name) {
                Ok(())
            } else {
                Err(format!("{key}: no [[proxies]] entry named {name:?}"))
            }
        };
        known("client.connect_proxy".into(), &c.connect_proxy)?;
        known("client.rpc_proxy".into(), &c.rpc_proxy)?;
        known("client.refresh_proxy".into(), &c.refresh_proxy)?;
        known("client.send_proxy".into(), &c.send_proxy)?;
        for (i, r) in self.relay.routes.iter().enumerate() {
            known(format!("relay.routes[{i}].connect_proxy"), &r.connect_proxy)?;
        }
        if self.relay.request_timeout.is_zero() {
            return Err("relay.request_timeout: must be above 0".into());
        }
        for (key, opts) in sizes {
            if opts.max_publication_size > c.max_message_size {
                return Err(format!(
                    "{key}max_publication_size: {} is above client.max_message_size ({}), which caps it",
                    opts.max_publication_size, c.max_message_size
                ));
            }
            known(format!("{key}subscribe_proxy"), &opts.subscribe_proxy)?;
            known(format!("{key}publish_proxy"), &opts.publish_proxy)?;
            known(format!("{key}sub_refresh_proxy"), &opts.sub_refresh_proxy)?;
        }
        Ok(())
    }

    pub fn namespaces(&self) -> Result<Namespaces, String> {
        Namespaces::new(self.channel.clone(), &self.namespaces)
    }
}

/// Whether `key` (a `GROUPCAST_*` variable without the prefix) has the
/// shape of a Kubernetes service link: the variables Kubernetes puts in
/// every pod for each Service of the namespace, named after the Service.
/// A Service `groupcast` gives `GROUPCAST_PORT=tcp://10.0.0.1:8000`,
/// `GROUPCAST_SERVICE_HOST`, `GROUPCAST_PORT_8000_TCP_ADDR`...; a Service
/// `groupcast-membership` gives `GROUPCAST_MEMBERSHIP_SERVICE_PORT`... They
/// are not configuration and are ignored; any other unknown key is still an
/// error. Configuration keys never have these shapes: the only top-level
/// keys are `listen` and `name`, the rest are nested with `__`.
pub fn is_service_link(key: &str) -> bool {
    if key.contains("__") || key.is_empty() {
        return false;
    }
    let lower = key.to_ascii_lowercase();
    let t: Vec<&str> = lower.split('_').collect();
    let n = t.len();
    // [NAME_]SERVICE_HOST, [NAME_]SERVICE_PORT, [NAME_]SERVICE_PORT_<port name>
    if t.ends_with(&["service", "host"]) || t.windows(2).any(|w| w == ["service", "port"]) {
        return true;
    }
    // [NAME_]PORT
    if t[n - 1] == "port" && (n == 1 || t[n - 2] != "service") {
        return true;
    }
    // [NAME_]PORT_<number>_<protocol>[_PROTO|_PORT|_ADDR]
    t.iter().enumerate().any(|(i, w)| {
        *w == "port"
            && i + 2 < n
            && !t[i + 1].is_empty()
            && t[i + 1].bytes().all(|b| b.is_ascii_digit())
            && matches!(t[i + 2], "tcp" | "udp" | "sctp")
            && (i + 3 == n || (i + 4 == n && matches!(t[i + 3], "proto" | "port" | "addr")))
    })
}

/// Environment values are typed by their look (`GROUPCAST_API__KEY=123456`
/// arrives as a number); free-text settings accept any scalar as text.
pub(crate) mod lenient {
    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        S(String),
        I(i64),
        U(u64),
        F(f64),
        B(bool),
    }

    pub fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        Ok(match Scalar::deserialize(d)? {
            Scalar::S(s) => s,
            Scalar::I(i) => i.to_string(),
            Scalar::U(u) => u.to_string(),
            Scalar::F(f) => f.to_string(),
            Scalar::B(b) => b.to_string(),
        })
    }
}

#[cfg(test)]
mod tests;
