//! `groupcast certs ...` and `groupcast membership ...`: flags to
//! `groupcast_membership` calls, nothing more.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use groupcast_membership::admin::AdminRequest;
use groupcast_membership::certs::{self, TlsFiles};
use groupcast_membership::server::{MembershipServer, ServerConfig};
use groupcast_membership::Conn;

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
    /// Raft node id (unique, > 0), or `ordinal`: one more than the number
    /// that ends the host name (a StatefulSet pod `NAME-2` is id 3).
    #[arg(long, env = "GROUPCAST_MEMBERSHIP_ID")]
    id: Option<String>,
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
    /// The name other replicas' certificates must hold (default: the host
    /// part of each peer address).
    #[arg(long, env = "GROUPCAST_MEMBERSHIP_SERVER_NAME")]
    server_name: Option<String>,
    /// HTTP address for /healthz, /readyz, /status and /metrics.
    #[arg(long, env = "GROUPCAST_MEMBERSHIP_HTTP")]
    http: Option<SocketAddr>,
    /// Build a snapshot and compact the log every this many entries.
    #[arg(long, default_value_t = 20_000)]
    snapshot_every: u64,
    /// Entries kept behind a snapshot for followers that lag a little.
    #[arg(long, default_value_t = 1_000)]
    keep_after_snapshot: u64,
    /// Leader heartbeat period, in milliseconds.
    #[arg(long, default_value_t = 100)]
    heartbeat_ms: u64,
    /// Election timeout range MIN-MAX in milliseconds: a follower that heard
    /// no heartbeat for MAX plus a random time in [MIN, MAX) campaigns; a
    /// leader that heard from no majority for MIN+MAX steps down.
    #[arg(long, default_value = "300-500")]
    election_timeout_ms: String,
    /// Reads from this replica's own state during a leader change are
    /// answered while it heard from a leader within this many milliseconds.
    #[arg(long, default_value_t = 3_000)]
    stale_read_max_ms: u64,
}

/// `--election-timeout-ms MIN-MAX` (MIN below MAX, above the heartbeat).
fn election_timeout(range: &str, heartbeat_ms: u64) -> anyhow::Result<(u64, u64)> {
    let (min, max) = range
        .split_once('-')
        .and_then(|(a, b)| Some((a.trim().parse::<u64>().ok()?, b.trim().parse::<u64>().ok()?)))
        .with_context(|| format!("--election-timeout-ms {range:?}: MIN-MAX in milliseconds"))?;
    if min >= max || min <= heartbeat_ms {
        bail!(
            "--election-timeout-ms {range:?}: MIN must be below MAX and above --heartbeat-ms ({heartbeat_ms})"
        );
    }
    Ok((min, max))
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
    /// The name the replicas' certificates must hold (default: the host
    /// part of each --via address).
    #[arg(long)]
    server_name: Option<String>,
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

/// `--id`: a number above 0, or `ordinal` (the host name's trailing number
/// plus one, so a StatefulSet's pods need no per-pod arguments).
fn node_id(id: &str, hostname: fn() -> std::io::Result<String>) -> anyhow::Result<u64> {
    let id = if id == "ordinal" {
        let host = hostname().context("--id ordinal: cannot read the host name")?;
        let ordinal: u64 = host
            .rsplit_once('-')
            .and_then(|(_, n)| n.parse().ok())
            .with_context(|| format!("--id ordinal: host name {host:?} does not end in -NUMBER"))?;
        ordinal + 1
    } else {
        id.parse()
            .with_context(|| format!("--id {id:?}: a number or `ordinal`"))?
    };
    if id == 0 {
        bail!("--id must be at least 1");
    }
    Ok(id)
}

/// The kernel's host name (a Kubernetes pod's name).
fn hostname() -> std::io::Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/hostname")?
        .trim()
        .to_string())
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
    let id = node_id(a.id.as_deref().context("--id is required")?, hostname)?;
    let listen = a.listen.context("--listen is required")?;
    let peers = parse_peers(&a.peers)?;
    if !peers.is_empty() && !peers.contains_key(&id) {
        bail!("--peers must include this replica (id {id})");
    }
    let name = a.cert_name.unwrap_or_else(|| format!("node-{id}"));
    let data = a.data.clone();
    let mut cfg = ServerConfig::new(
        id,
        listen,
        a.data,
        TlsFiles::in_dir(&a.certs, &name).with_server_name(a.server_name),
    );
    cfg.advertise = a
        .advertise
        .or_else(|| peers.get(&id).cloned())
        .unwrap_or_else(|| listen.to_string());
    cfg.peers = peers;
    cfg.http = a.http;
    cfg.snapshot_every = a.snapshot_every;
    cfg.keep_after_snapshot = a.keep_after_snapshot;
    if a.heartbeat_ms == 0 {
        bail!("--heartbeat-ms must be above 0");
    }
    let (min, max) = election_timeout(&a.election_timeout_ms, a.heartbeat_ms)?;
    cfg.heartbeat = Duration::from_millis(a.heartbeat_ms);
    cfg.election_timeout_min = Duration::from_millis(min);
    cfg.election_timeout_max = Duration::from_millis(max);
    cfg.stale_read_max = Duration::from_millis(a.stale_read_max_ms);
    let handle = groupcast_edge::metrics::install();
    let render: groupcast_membership::server::MetricsRender = Arc::new(move || handle.render());
    let server = MembershipServer::start(cfg, None, Some(render)).await?;
    tracing::info!(
        id,
        quic = %server.local_addr(),
        http = ?server.http_addr(),
        "membership replica started"
    );
    tokio::select! {
        _ = crate::wait_for_signal() => {
            tracing::info!("membership replica stopping");
            server.shutdown().await;
            Ok(())
        }
        reason = server.raft_stopped() => {
            // A store the disk refused (e.g. full): exit for the supervisor
            // to restart the replica from its log once it can write again.
            tracing::error!(%reason, "membership: Raft stopped; exiting");
            server.shutdown().await;
            bail!(
                "Raft stopped: {reason} (is the disk of {} full? the log on it is intact; \
                 start the replica again once it can write)",
                data.display()
            )
        }
    }
}

async fn admin(action: MembershipAction) -> anyhow::Result<()> {
    let (args, req) = match action {
        MembershipAction::Status(a) => (a, AdminRequest::Status),
        MembershipAction::Add { id, addr, admin } => (admin, AdminRequest::AddMember { id, addr }),
        MembershipAction::Remove { id, admin } => (admin, AdminRequest::RemoveMember { id }),
    };
    let tls = TlsFiles::in_dir(&args.certs, &args.cert_name).with_server_name(args.server_name);
    let conn = Conn::connect(args.via, &tls).await?;
    let status = conn.admin(req).await?;
    println!("{}", serde_json::to_string_pretty(&status)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{election_timeout, node_id};

    #[test]
    fn election_timeouts_are_a_range_above_the_heartbeat() {
        assert_eq!(election_timeout("300-500", 100).unwrap(), (300, 500));
        for bad in ["500", "500-300", "100-200", "a-b"] {
            let e = election_timeout(bad, 100).unwrap_err().to_string();
            assert!(e.contains("--election-timeout-ms"), "{e}");
        }
    }

    #[test]
    fn ids_are_numbers_or_the_statefulset_ordinal_plus_one() {
        let none = || -> std::io::Result<String> { unreachable!("no host name needed") };
        assert_eq!(node_id("3", none).unwrap(), 3);
        assert!(node_id("0", none)
            .unwrap_err()
            .to_string()
            .contains("at least 1"));
        assert!(node_id("two", none)
            .unwrap_err()
            .to_string()
            .contains("ordinal"));
        assert_eq!(
            node_id("ordinal", || Ok("gc-membership-0".into())).unwrap(),
            1
        );
        assert_eq!(
            node_id("ordinal", || Ok("gc-membership-4".into())).unwrap(),
            5
        );
        let err = node_id("ordinal", || Ok("laptop".into())).unwrap_err();
        assert!(err.to_string().contains("\"laptop\""), "{err}");
    }
}
