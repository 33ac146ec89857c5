//! A membership cluster of `groupcast membership` processes on loopback:
//! its own certificate directory (made with `groupcast certs`), data
//! directories and free ports; kill -9, restart, SIGSTOP/SIGCONT by PID;
//! every process killed on drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::http_request;
use crate::netfault::{NetFaults, Port};
use crate::process::{free_tcp_port, Process};

/// One replica.
pub struct MembershipNode {
    pub id: u64,
    /// QUIC address (`host:port`).
    pub addr: String,
    pub http: SocketAddr,
    args: Vec<String>,
    process: Option<Process>,
    log_file: PathBuf,
    /// Its own binary, when not the cluster's ([`MembershipCluster::restart_as`]).
    bin: Option<PathBuf>,
}

/// A cluster of replicas started from one static peer list.
pub struct MembershipCluster {
    bin: PathBuf,
    dir: PathBuf,
    pub nodes: Vec<MembershipNode>,
    /// Where replicas are placed (group `membership-ID` each), if anywhere.
    faults: Option<NetFaults>,
}

fn free_udp() -> u16 {
    crate::process::free_udp_port()
}

/// GET `path`; None when nothing listens or no answer within 2 s (a
/// SIGSTOPped replica accepts TCP but never answers).
async fn get(addr: SocketAddr, path: &str) -> Option<(u16, Vec<u8>)> {
    std::net::TcpStream::connect(addr).ok()?;
    tokio::time::timeout(
        Duration::from_secs(2),
        http_request(addr, "GET", path, "", b""),
    )
    .await
    .ok()
}

fn certs(bin: &Path, args: &[&str]) {
    let out = Command::new(bin)
        .arg("certs")
        .args(args)
        .output()
        .expect("run groupcast certs");
    assert!(
        out.status.success(),
        "groupcast certs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A replica's record: certificate `node-ID` issued, ports chosen, flags
/// written; not started. `extra` is appended to the flags (e.g. `--peers`).
fn node(
    bin: &Path,
    dir: &Path,
    id: u64,
    addr: String,
    extra: &[String],
    data: Option<&Path>,
) -> MembershipNode {
    let certs_dir = dir.join("certs");
    let cd = certs_dir.to_str().expect("utf-8 path");
    certs(bin, &["issue", &format!("node-{id}"), "--dir", cd]);
    let http: SocketAddr = ([127, 0, 0, 1], free_tcp_port()).into();
    let data = data.map_or_else(|| dir.join(format!("data-{id}")), Path::to_path_buf);
    let mut args: Vec<String> = [
        "membership",
        "--id",
        &id.to_string(),
        "--listen",
        &addr,
        "--data",
        data.to_str().expect("utf-8 path"),
        "--certs",
        cd,
        "--http",
        &http.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().cloned());
    MembershipNode {
        id,
        addr,
        http,
        args,
        process: None,
        log_file: dir.join(format!("node-{id}.log")),
        bin: None,
    }
}

impl MembershipCluster {
    /// Starts `n` replicas with `extra` flags each and waits until one is
    /// leader and every replica is ready (bounded: 30 s). Certificates:
    /// `node-ID` per replica, plus `edge` and `admin`.
    pub async fn start(bin: &Path, n: u64, extra: &[&str]) -> MembershipCluster {
        Self::start_with(bin, n, extra, None, &[]).await
    }

    /// [`Self::start`] with one replica per directory of `data`, each
    /// keeping its Raft store there (e.g. a `diskfault::SmallDisk`).
    pub async fn start_on(bin: &Path, extra: &[&str], data: &[&Path]) -> MembershipCluster {
        Self::start_with(bin, data.len() as u64, extra, None, data).await
    }

    /// [`Self::start`] with each replica in its own group of `faults`,
    /// named `membership-ID` (see [`Self::group`]), its QUIC and HTTP ports
    /// the group's ports.
    pub async fn start_placed(
        bin: &Path,
        n: u64,
        extra: &[&str],
        faults: &NetFaults,
    ) -> MembershipCluster {
        Self::start_with(bin, n, extra, Some(faults.clone()), &[]).await
    }

    async fn start_with(
        bin: &Path,
        n: u64,
        extra: &[&str],
        faults: Option<NetFaults>,
        data: &[&Path],
    ) -> MembershipCluster {
        let dir = std::env::temp_dir().join(format!(
            "groupcast-membership-{}-{}",
            std::process::id(),
            free_tcp_port()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("cluster dir");
        let cd = dir.join("certs");
        let cd = cd.to_str().expect("utf-8 path");
        certs(bin, &["init", "--dir", cd]);
        certs(bin, &["issue", "edge", "--dir", cd]);
        let addrs: Vec<(u64, String)> = (1..=n)
            .map(|id| (id, format!("127.0.0.1:{}", free_udp())))
            .collect();
        let peers = addrs
            .iter()
            .map(|(id, a)| format!("{id}={a}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut flags = vec!["--peers".to_string(), peers];
        flags.extend(extra.iter().map(|s| s.to_string()));
        let nodes = addrs
            .into_iter()
            .map(|(id, addr)| {
                let d = data.get(id as usize - 1).copied();
                node(bin, &dir, id, addr, &flags, d)
            })
            .collect();
        let mut cluster = MembershipCluster {
            bin: bin.to_path_buf(),
            dir,
            nodes,
            faults,
        };
        for i in 0..cluster.nodes.len() {
            cluster.spawn(i);
        }
        for i in 0..cluster.nodes.len() {
            cluster.wait_ready(i).await;
        }
        cluster
    }

    /// Starts replica `id` with no `--peers` (to be added with
    /// `groupcast membership add`); returns its index. Waits until it
    /// answers `/healthz`, not `/readyz` (it has no leader yet).
    pub async fn start_extra(&mut self, id: u64) -> usize {
        let addr = format!("127.0.0.1:{}", free_udp());
        self.nodes
            .push(node(&self.bin, &self.dir, id, addr, &[], None));
        let i = self.nodes.len() - 1;
        let http = self.nodes[i].http;
        self.spawn(i);
        self.nodes[i]
            .process
            .as_mut()
            .expect("running")
            .wait_ready(|| async move { matches!(get(http, "/healthz").await, Some((200, _))) })
            .await;
        i
    }

    fn spawn(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let mut cmd = Command::new(node.bin.as_ref().unwrap_or(&self.bin));
        cmd.args(&node.args).env(
            "RUST_LOG",
            "info,openraft=warn,openraft::replication=off,openraft::engine::handler::replication_handler=off",
        );
        if let Some(f) = &self.faults {
            let quic: SocketAddr = node.addr.parse().expect("ip:port");
            let ports = [Port::Udp(quic.port()), Port::Tcp(node.http.port())];
            cmd = f.place(&format!("membership-{}", node.id), &ports, &cmd);
        }
        node.process = Some(Process::spawn(
            &format!("membership node {}", node.id),
            cmd,
            &node.log_file,
        ));
    }

    /// Waits (bounded: 30 s) until replica `i` answers `/readyz` with 200.
    pub async fn wait_ready(&mut self, i: usize) {
        let http = self.nodes[i].http;
        self.nodes[i]
            .process
            .as_mut()
            .expect("running")
            .wait_ready(|| async move { matches!(get(http, "/readyz").await, Some((200, _))) })
            .await;
    }

    /// The fault group of replica `i` (with [`Self::start_placed`]).
    pub fn group(&self, i: usize) -> String {
        format!("membership-{}", self.nodes[i].id)
    }

    /// Directory holding `ca.pem` and the `edge` / `admin` certificates.
    pub fn certs_dir(&self) -> PathBuf {
        self.dir.join("certs")
    }

    /// The `[membership]` section of an edge's TOML configuration for this
    /// cluster (every replica as a seed, the shared `edge` certificate).
    pub fn edge_section(&self) -> String {
        format!(
            "\n[membership]\nseeds = {}\ncerts = {}\ncert_name = \"edge\"\n",
            serde_json::json!(self.seeds()),
            serde_json::json!(self.certs_dir().to_string_lossy()),
        )
    }

    /// Every replica's QUIC address.
    pub fn seeds(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr.clone()).collect()
    }

    /// `/readyz` of replica `i`: status code and reason, or None when it
    /// does not answer.
    pub async fn readyz(&self, i: usize) -> Option<(u16, String)> {
        let (code, body) = get(self.nodes[i].http, "/readyz").await?;
        Some((code, String::from_utf8_lossy(&body).into_owned()))
    }

    /// `/status` of replica `i` (with `state_digest`), or None when it does
    /// not answer.
    pub async fn status(&self, i: usize) -> Option<Value> {
        match get(self.nodes[i].http, "/status").await? {
            (200, body) => serde_json::from_slice(&body).ok(),
            _ => None,
        }
    }

    /// Index of the replica that is leader per its own status, waiting up to
    /// `within`; `skip` replicas are not asked (e.g. a stopped one).
    pub async fn leader(&self, within: Duration, skip: &[usize]) -> Option<usize> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            for i in 0..self.nodes.len() {
                if skip.contains(&i) {
                    continue;
                }
                if let Some(s) = self.status(i).await {
                    if s["state"] == "Leader" {
                        return Some(i);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    /// SIGKILL replica `i` (its data stays).
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].process = None;
    }

    /// SIGTERM replica `i` and wait (bounded by `within`) for its exit;
    /// true when it exited successfully. Its data stays.
    pub async fn terminate(&mut self, i: usize, within: Duration) -> bool {
        let Some(mut p) = self.nodes[i].process.take() else {
            return false;
        };
        p.signal("TERM");
        let status = p.wait_exit(within).await;
        status.is_some_and(|s| s.success())
    }

    /// Starts replica `i` again (after [`Self::kill`] or
    /// [`Self::terminate`]) from another binary, on the same ports and
    /// data (a rolling upgrade, or a rollback), without waiting.
    pub fn restart_as(&mut self, i: usize, bin: &Path) {
        assert!(self.nodes[i].process.is_none(), "stop it first");
        self.nodes[i].bin = Some(bin.to_path_buf());
        self.spawn(i);
    }

    /// Starts replica `i` again on the same ports and data.
    pub fn restart(&mut self, i: usize) {
        assert!(self.nodes[i].process.is_none(), "kill it first");
        self.spawn(i);
    }

    /// Waits (polling, bounded by `within`) for replica `i` to exit by
    /// itself; its exit status (the replica is then not running), or None
    /// when it still runs.
    pub async fn wait_exit(
        &mut self,
        i: usize,
        within: Duration,
    ) -> Option<std::process::ExitStatus> {
        let status = self.nodes[i]
            .process
            .as_mut()
            .expect("running")
            .wait_exit(within)
            .await;
        if status.is_some() {
            self.nodes[i].process = None;
        }
        status
    }

    /// Whether replica `i` runs (started and not seen to exit).
    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].process.is_some()
    }

    /// Replica `i`'s output, every start of it.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log_file).unwrap_or_default()
    }

    /// SIGSTOP (`stop = true`) or SIGCONT replica `i`.
    pub fn pause(&self, i: usize, stop: bool) {
        self.nodes[i]
            .process
            .as_ref()
            .expect("running")
            .signal(if stop { "STOP" } else { "CONT" });
    }
}

impl Drop for MembershipCluster {
    fn drop(&mut self) {
        // SIGKILL (Process's drop) also ends a SIGSTOPped replica.
        for n in &mut self.nodes {
            n.process = None;
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
