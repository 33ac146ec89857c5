//! `groupcast certs ...` and `groupcast membership ...`: flags to
//! `groupcast_membership` calls, nothing more.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use groupcast_membership::certs::{self, TlsFiles};
use groupcast_membership::client::Conn;
use groupcast_membership::server::{MembershipServer, ServerConfig};
use groupcast_membership::transport::{Reply, Request};

#[derive(Args)]
pub struct CertsArgs {
    #[command(subcommand)]
    action: CertsAction,
}

#[derive(Subcommand)]
enum CertsAction {
    /// Create the cluster CA (`ca.pem`, `ca-key.pem`) and an `admin`
    /// certificate for `groupcast membership status|add|remove`.
    Init {
        /// Directory for the files.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Overwrite an existing CA.
        #[arg(long)]
        force: bool,
    },
    /// Issue `NAME.pem` / `NAME-key.pem` signed by the CA in `--dir`.
    Issue {
        name: String,
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Extra subject alternative name (DNS name or IP); repeatable.
        /// NAME, localhost, 127.0.0.1 and ::1 are always included.
        #[arg(long = "san")]
        sans: Vec<String>,
    },
}

pub fn certs_cmd(args: CertsArgs) -> anyhow::Result<()> {
    match args.action {
        CertsAction::Init { dir, force } => {
            let ca = certs::init(&dir, force)?;
            let admin = certs::issue(&dir, "admin", &[])?;
            println!("{}\n{}", ca.display(), admin.cert.display());
        }
        CertsAction::Issue { name, dir, sans } => {
            let files = certs::issue(&dir, &name, &sans)?;
            println!("{}\n{}", files.cert.display(), files.key.display());
        }
    }
    Ok(())
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct MembershipArgs {
    #[command(subcommand)]
    action: Option<MembershipAction>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args)]
struct RunArgs {
    /// Raft node id (unique, > 0).
    #[arg(long, env = "GROUPCAST_MEMBERSHIP_ID")]
    id: Option<u64>,
    /// UDP address for QUIC (Raft and the edge API).
    #[arg(long, env = "GROUPCAST_MEMBERSHIP_LISTEN")]
    listen: Option<SocketAddr>,
    /// Address others reach this replica at (default: --listen).
    #[arg(long, env = "GROUPCAST_MEMBERSHIP_ADVERTISE")]
    advertise: Option<String>,
    /// Initial voters as ID=HOST:PORT, comma-separated or repeated, this
    /// replica included. Leave out to start empty and be added later.
    #[arg(long, env = "GROUPCAST_MEMBERSHIP_PEERS", value_delimiter = ',')]
    peers: Vec<String>,
    /// Data directory (the Raft log and snapshots).
    #[arg(
        long,
        env = "GROUPCAST_MEMBERSHIP_DATA",
        default_value = "data/membership"
    )]
    data: PathBuf,
    /// Directory with ca.pem and this replica's certificate.
    #[arg(long, env = "GROUPCAST_MEMBERSHIP_CERTS", default_value = "certs")]
    certs: PathBuf,
    /// Certificate name in --certs (default: node-ID).
    #[arg(long, env = "GROUPCAST_MEMBERSHIP_CERT_NAME")]
    cert_name: Option<String>,
    /// HTTP address for /healthz, /readyz, /status and /metrics.
    #[arg(long, env = "GROUPCAST_MEMBERSHIP_HTTP")]
    http: Option<SocketAddr>,
    /// Build a snapshot and compact the log every this many entries.
    #[arg(long, default_value_t = 20_000)]
    snapshot_every: u64,
    /// Entries kept behind a snapshot for followers that lag a little.
    #[arg(long, default_value_t = 1_000)]
    keep_after_snapshot: u64,
}

#[derive(Args)]
struct AdminArgs {
    /// Any replica's address; repeatable.
    #[arg(long = "via", required = true, value_delimiter = ',')]
    via: Vec<String>,
    #[arg(long, default_value = "certs")]
    certs: PathBuf,
    /// Certificate name in --certs.
    #[arg(long, default_value = "admin")]
    cert_name: String,
}

#[derive(Subcommand)]
enum MembershipAction {
    /// Leader, term, commit index and members as seen by the --via replica.
    Status(AdminArgs),
    /// Add a replica (started with --id and --listen, no --peers) as a voter.
    Add {
        #[arg(long)]
        id: u64,
        /// Its address (its --advertise or --listen).
        #[arg(long)]
        addr: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Remove a voter.
    Remove {
        #[arg(long)]
        id: u64,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

fn parse_peers(peers: &[String]) -> anyhow::Result<BTreeMap<u64, String>> {
    let mut out = BTreeMap::new();
    for p in peers {
        let (id, addr) = p
            .split_once('=')
            .with_context(|| format!("--peers entry {p:?} is not ID=HOST:PORT"))?;
        let id: u64 = id
            .trim()
            .parse()
            .with_context(|| format!("--peers entry {p:?}: bad id"))?;
        if id == 0 {
            bail!("--peers entry {p:?}: ids start at 1");
        }
        if out.insert(id, addr.trim().to_string()).is_some() {
            bail!("--peers names id {id} twice");
        }
    }
    Ok(out)
}

pub fn membership_cmd(args: MembershipArgs) -> anyhow::Result<()> {
    // openraft logs every vote and heartbeat decision at info.
    // openraft logs every failed replication attempt to a dead replica
    // (three lines per heartbeat); the network logs peers going down and
    // coming back instead (`groupcast_membership::network`).
    crate::init_tracing_with(
        "info,openraft=warn,openraft::replication=off,openraft::engine::handler::replication_handler=off",
    );
    let runtime = tokio::runtime::Runtime::new()?;
    match args.action {
        None => runtime.block_on(run(args.run)),
        Some(action) => runtime.block_on(admin(action)),
    }
}

async fn run(a: RunArgs) -> anyhow::Result<()> {
    let id = a.id.context("--id is required")?;
    if id == 0 {
        bail!("--id must be at least 1");
    }
    let listen = a.listen.context("--listen is required")?;
    let peers = parse_peers(&a.peers)?;
    if !peers.is_empty() && !peers.contains_key(&id) {
        bail!("--peers must include this replica (id {id})");
    }
    let name = a.cert_name.unwrap_or_else(|| format!("node-{id}"));
    let mut cfg = ServerConfig::new(id, listen, a.data, TlsFiles::in_dir(&a.certs, &name));
    cfg.advertise = a
        .advertise
        .or_else(|| peers.get(&id).cloned())
        .unwrap_or_else(|| listen.to_string());
    cfg.peers = peers;
    cfg.http = a.http;
    cfg.snapshot_every = a.snapshot_every;
    cfg.keep_after_snapshot = a.keep_after_snapshot;
    let handle = groupcast_edge::metrics::install();
    let render: groupcast_membership::server::MetricsRender = Arc::new(move || handle.render());
    let server = MembershipServer::start(cfg, None, Some(render)).await?;
    tracing::info!(
        id,
        quic = %server.local_addr(),
        http = ?server.http_addr(),
        "membership replica started"
    );
    crate::wait_for_signal().await;
    tracing::info!("membership replica stopping");
    server.shutdown().await;
    Ok(())
}

async fn admin(action: MembershipAction) -> anyhow::Result<()> {
    let (args, req) = match action {
        MembershipAction::Status(a) => (a, Request::Status),
        MembershipAction::Add { id, addr, admin } => (admin, Request::AddMember { id, addr }),
        MembershipAction::Remove { id, admin } => (admin, Request::RemoveMember { id }),
    };
    let tls = TlsFiles::in_dir(&args.certs, &args.cert_name);
    let conn = Conn::connect(args.via, &tls).await?;
    let timeout = match req {
        Request::Status => Duration::from_secs(5),
        _ => Duration::from_secs(60),
    };
    match conn.call(&req, timeout).await? {
        Reply::Status(s) | Reply::MemberChanged(s) => {
            println!("{}", serde_json::to_string_pretty(&s)?);
            Ok(())
        }
        Reply::Failed(reason) => bail!("{reason}"),
        other => bail!("unexpected answer: {other:?}"),
    }
}
