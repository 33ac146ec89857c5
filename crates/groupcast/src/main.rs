//! `groupcast`: the one binary. Thin: parse flags, load and check the
//! config, call a role's library entry point (`groupcast_edge::run`,
//! `groupcast_membership`'s server). Roles: `dev` (all-in-one, no external
//! services; `--nats` to use a real NATS), `edge` (production edge on a NATS
//! backbone), `membership` (a Raft replica of the membership service, and
//! its admin commands), `certs` (the membership cluster's CA and
//! certificates), `token` (mint a connection token), `probe` (an end-to-end
//! check of a deployment). Its tests in `tests/` start these as processes.
//!
//! # Layout
//! * this file: the command line, `dev`, `edge` and `token`, logging and
//!   signals.
//! * `membership`: `groupcast membership ...` and `groupcast certs ...`:
//!   flags to `groupcast_membership` calls.
//! * `probe`: `groupcast probe`.

mod membership;
mod probe;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use groupcast_edge::auth::{mint_hs256, now_unix};
use groupcast_edge::backbone::{self, Backbone};
use groupcast_edge::Config;
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "groupcast",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("BUILT_FROM_COMMIT"), ")"),
    about = "Clustered real-time broker (Centrifugo protocol, raw relay, server API)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the all-in-one broker: one process, in-memory bus, history and presence.
    Dev(DevArgs),
    /// Run a production edge: WebSocket clients, relay and server API, with
    /// channels shared with every other edge over NATS and presence kept by
    /// the membership service (needs `nats.urls` and `membership.seeds`).
    Edge(EdgeArgs),
    /// Run a membership replica (openraft over QUIC), or with `status`,
    /// `add`, `remove`: inspect and change the membership cluster.
    Membership(Box<membership::MembershipArgs>),
    /// Create the membership cluster's CA and node certificates.
    Certs(membership::CertsArgs),
    /// Mint a connection token (HS256) from the configured HMAC secret.
    Token(TokenArgs),
    /// Check a deployment end to end: a client connects at --url and
    /// subscribes, a publication made through the server API there reaches it.
    Probe(probe::ProbeArgs),
}

#[derive(Args)]
struct DevArgs {
    /// Listen address for HTTP and WebSocket.
    #[arg(long)]
    listen: Option<String>,
    /// Server API key (default: random, printed at start).
    #[arg(long)]
    api_key: Option<String>,
    /// HMAC secret for connection tokens (default: random, printed at start).
    #[arg(long)]
    token_hmac_secret: Option<String>,
    /// TOML configuration file; repeat to layer several (a later file's
    /// keys win). `GROUPCAST_*` variables override them, flags override all.
    #[arg(long = "config")]
    config: Vec<PathBuf>,
    /// Use this NATS server (JetStream enabled) instead of the in-memory bus;
    /// repeat for a NATS cluster.
    #[arg(long = "nats")]
    nats: Vec<String>,
}

#[derive(Args)]
struct EdgeArgs {
    /// Listen address for HTTP and WebSocket (`listen`).
    #[arg(long)]
    listen: Option<String>,
    /// Node name, also the NATS connection name (`name`).
    #[arg(long)]
    name: Option<String>,
    /// NATS server URL (`nats.urls`); repeat for a NATS cluster.
    #[arg(long = "nats")]
    nats: Vec<String>,
    /// Membership replica QUIC address, `host:port` (`membership.seeds`);
    /// repeat for each replica.
    #[arg(long = "membership")]
    membership: Vec<String>,
    /// Directory with the cluster CA and this edge's certificate
    /// (`membership.certs`), made with `groupcast certs`.
    #[arg(long = "membership-certs")]
    membership_certs: Option<PathBuf>,
    /// TOML configuration file; repeat to layer several (a later file's
    /// keys win). `GROUPCAST_*` variables override them, flags override all.
    #[arg(long = "config")]
    config: Vec<PathBuf>,
}

#[derive(Args)]
struct TokenArgs {
    /// User id (`sub` claim).
    #[arg(long)]
    user: String,
    /// Lifetime, e.g. 30m, 1h, 7d.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// Server-side subscription (`channels` claim); repeat for several.
    #[arg(long = "channel")]
    channels: Vec<String>,
    /// Connection info (`info` claim), as JSON.
    #[arg(long)]
    info: Option<String>,
    /// HMAC secret (default: `client.token_hmac_secret` from config/env).
    #[arg(long)]
    token_hmac_secret: Option<String>,
    /// TOML configuration file to read the secret from.
    #[arg(long)]
    config: Option<PathBuf>,
}

/// 32 random hex digits (a v4 UUID's 122 random bits) per `words`.
fn random_hex(words: usize) -> String {
    (0..words)
        .map(|_| uuid::Uuid::new_v4().simple().to_string())
        .collect()
}

fn overrides(pairs: &[(&str, Option<Value>)]) -> figment::providers::Serialized<Value> {
    let mut root = Map::new();
    for (path, value) in pairs {
        let Some(value) = value else { continue };
        let mut keys: Vec<&str> = path.split('.').collect();
        let last = keys.pop().expect("non-empty key");
        let mut node = &mut root;
        for k in keys {
            node = node
                .entry(k.to_string())
                .or_insert_with(|| Value::Object(Map::new()))
                .as_object_mut()
                .expect("object");
        }
        node.insert(last.to_string(), value.clone());
    }
    figment::providers::Serialized::defaults(Value::Object(root))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Dev(args) => dev(args),
        Command::Edge(args) => edge(args),
        Command::Token(args) => token(args),
        Command::Probe(args) => probe::probe_cmd(args),
        Command::Membership(args) => membership::membership_cmd(*args),
        Command::Certs(args) => membership::certs_cmd(args),
    }
}

fn token(args: TokenArgs) -> anyhow::Result<()> {
    let config = Config::load(
        Config::default(),
        args.config.as_deref(),
        overrides(&[(
            "client.token_hmac_secret",
            args.token_hmac_secret.map(Value::String),
        )]),
    )
    .map_err(anyhow::Error::msg)?;
    groupcast_edge::check_config(&config).map_err(anyhow::Error::msg)?;
    let secret = &config.client.token_hmac_secret;
    if secret.is_empty() {
        bail!("no HMAC secret: pass --token-hmac-secret, set GROUPCAST_CLIENT__TOKEN_HMAC_SECRET, or client.token_hmac_secret in --config");
    }
    let mut claims = json!({ "sub": args.user, "exp": now_unix() + args.ttl.as_secs() as i64 });
    if !args.channels.is_empty() {
        claims["channels"] = json!(args.channels);
    }
    if let Some(info) = args.info {
        claims["info"] = serde_json::from_str(&info).context("--info must be valid JSON")?;
    }
    println!("{}", mint_hs256(secret, &claims));
    Ok(())
}

pub(crate) fn init_tracing() {
    init_tracing_with("info");
}

/// Logs per `RUST_LOG`, else per `default`.
pub(crate) fn init_tracing_with(default: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default.into()),
        )
        .init();
}

fn list(v: Vec<String>) -> Option<Value> {
    (!v.is_empty()).then(|| Value::from(v))
}

fn edge(args: EdgeArgs) -> anyhow::Result<()> {
    init_tracing();
    let config = Config::load_files(
        Config::default(),
        &args.config,
        overrides(&[
            ("listen", args.listen.map(Value::String)),
            ("name", args.name.map(Value::String)),
            ("nats.urls", list(args.nats)),
            ("membership.seeds", list(args.membership)),
            (
                "membership.certs",
                args.membership_certs
                    .map(|p| Value::String(p.to_string_lossy().into_owned())),
            ),
        ]),
    )
    .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    groupcast_edge::check_config(&config)
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    if config.nats.urls.is_empty() {
        bail!("groupcast edge needs NATS (nats.urls): pass --nats URL, set GROUPCAST_NATS__URLS or nats.urls in --config (groupcast dev runs without)");
    }
    if !config.membership.is_clustered() {
        bail!("groupcast edge needs the membership service (membership.seeds): pass --membership HOST:PORT (and --membership-certs DIR), set GROUPCAST_MEMBERSHIP__SEEDS or membership.seeds in --config (groupcast dev runs without)");
    }
    if config.api.key.is_empty() {
        tracing::warn!("api.key is empty: the server API refuses every call");
    }
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let listener = listen(config.listen, config.client.listen_backlog)
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let shutdown = CancellationToken::new();
        let backbone = backbone::build(&config, shutdown.clone())
            .await
            .map_err(|e| anyhow::anyhow!("backbone: {e}"))?;
        tracing::info!(
            name = %config.name,
            listen = %listener.local_addr()?,
            nats = ?config.nats.urls,
            membership = ?config.membership.seeds,
            "Groupcast {} ({}) edge started",
            env!("CARGO_PKG_VERSION"),
            env!("BUILT_FROM_COMMIT")
        );
        serve(config, listener, backbone, shutdown).await
    })
}

fn dev(args: DevArgs) -> anyhow::Result<()> {
    init_tracing();
    let mut config = Config::load_files(
        Config::dev(),
        &args.config,
        overrides(&[
            ("listen", args.listen.map(Value::String)),
            ("api.key", args.api_key.map(Value::String)),
            (
                "client.token_hmac_secret",
                args.token_hmac_secret.map(Value::String),
            ),
            ("nats.urls", list(args.nats)),
        ]),
    )
    .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    if config.api.key.is_empty() {
        config.api.key = random_hex(1);
    }
    if config.client.token_hmac_secret.is_empty() {
        config.client.token_hmac_secret = random_hex(2);
    }
    groupcast_edge::check_config(&config)
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let listener = listen(config.listen, config.client.listen_backlog)
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let backbone = backbone::build(&config, shutdown.clone())
            .await
            .map_err(|e| anyhow::anyhow!("backbone: {e}"))?;
        let bus = if backbone.is_nats() {
            format!("NATS backbone {}", config.nats.urls.join(","))
        } else {
            "all-in-one, in-memory, no external services".to_string()
        };
        let token = mint_hs256(
            &config.client.token_hmac_secret,
            &json!({ "sub": "dev", "exp": now_unix() + 24 * 3600 }),
        );
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "Groupcast {} ({}) (dev: {bus})",
            env!("CARGO_PKG_VERSION"),
            env!("BUILT_FROM_COMMIT")
        )?;
        writeln!(out, "  client URL (Centrifugo protocol): ws://{addr}/connection/websocket")?;
        writeln!(out, "  relay URL (plain WebSocket):      ws://{addr}/ws/relay/<channel>")?;
        writeln!(out, "  relay demo page:                  http://{addr}/")?;
        writeln!(out, "  server API URL:                   http://{addr}/api")?;
        if config.dashboard.enabled {
            writeln!(out, "  dashboard (needs the API key):    http://{addr}/dashboard")?;
        }
        writeln!(out, "  API key:                          {}", config.api.key)?;
        writeln!(out, "  token HMAC secret:                {}", config.client.token_hmac_secret)?;
        writeln!(out, "  connection token (user \"dev\", 24h): {token}")?;
        writeln!(out, "  metrics: http://{addr}/metrics   health: http://{addr}/healthz   ready: http://{addr}/readyz")?;
        out.flush()?;
        drop(out);

        serve(config, listener, backbone, shutdown).await
    })
}

/// Run the edge until SIGTERM/SIGINT, then drain and close the backbone.
async fn serve(
    config: Config,
    listener: tokio::net::TcpListener,
    backbone: Backbone,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    {
        let node = backbone.node.clone();
        let signals = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            // Cancel first: logging panics when stdout and stderr are both
            // gone (a closed pipe), and the stop must not depend on it.
            signals.cancel();
            tracing::info!("shutting down");
        });
        // Returns once the drain is done (within shutdown.grace_period).
        groupcast_edge::run(config, listener, node, shutdown).await?;
    }
    backbone.close().await;
    tracing::info!("stopped");
    Ok(())
}

pub(crate) async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// A listening socket on `addr` whose queue of not yet accepted connections holds `backlog`
/// (`client.listen_backlog`; the kernel caps it at `net.core.somaxconn`).
fn listen(addr: std::net::SocketAddr, backlog: u32) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // As std's bind: a restarted edge can take its port back from TIME_WAIT connections.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}
