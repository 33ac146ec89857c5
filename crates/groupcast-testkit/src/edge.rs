//! `groupcast edge` as a separate process on a free loopback port, with a
//! given TOML configuration; killed on drop.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use crate::netfault::{NetFaults, Port};
use crate::process::Process;
use crate::{http_request, API_KEY, SECRET};

/// A dev-like configuration for an edge on NATS: the default namespace
/// keeps 1,000 publications for 5 minutes with recovery, presence,
/// join/leave and client publish; namespace `plain` has no history (core
/// NATS only). `{listen}`, `{name}` and `{nats}` are filled in by
/// [`EdgeProcess::start`]; append more sections as needed.
pub const EDGE_CONFIG: &str = r#"
listen = "{listen}"
name = "{name}"
[api]
key = "{api_key}"
[client]
token_hmac_secret = "{secret}"
allow_anonymous_connect_without_token = true
allowed_origins = ["*"]
[channel]
history_size = 1000
history_ttl = "5m"
allow_recovery = true
presence = true
join_leave = true
allow_publish_for_client = true
allow_presence_for_subscriber = true
allow_history_for_subscriber = true
allow_anonymous = true
[[namespaces]]
name = "plain"
allow_publish_for_client = true
allow_anonymous = true
[nats]
urls = {nats}
"#;

/// A running `groupcast edge` process.
pub struct EdgeProcess {
    pub name: String,
    pub addr: SocketAddr,
    process: Process,
    bin: PathBuf,
    env: Vec<(String, String)>,
    config_file: PathBuf,
    log_file: PathBuf,
    /// Where the edge is placed (its group), if anywhere.
    placed: Option<(NetFaults, String)>,
}

impl EdgeProcess {
    /// Start `bin edge` with `config` (see [`EDGE_CONFIG`]) and wait until
    /// `/readyz` answers 200 (bounded: 30 s). `env` is added to its
    /// environment (e.g. `GROUPCAST_CLIENT__COMMAND_RATE=0`).
    pub async fn start(
        bin: &Path,
        name: &str,
        nats_urls: &[String],
        config: &str,
        env: &[(&str, &str)],
    ) -> EdgeProcess {
        Self::start_with(bin, name, nats_urls, config, env, None).await
    }

    /// [`Self::start`] with the edge in group `group` of `faults`, its
    /// listening port the group's port (see
    /// `MembershipCluster::start_placed`): a partition of the group cuts
    /// what it sends to the other side (e.g. to membership replicas) and
    /// what the other side sends to its port. Sockets it opens keep the
    /// group on a restart too.
    pub async fn start_placed(
        bin: &Path,
        name: &str,
        nats_urls: &[String],
        config: &str,
        env: &[(&str, &str)],
        faults: &NetFaults,
        group: &str,
    ) -> EdgeProcess {
        let placed = Some((faults.clone(), group.to_string()));
        Self::start_with(bin, name, nats_urls, config, env, placed).await
    }

    async fn start_with(
        bin: &Path,
        name: &str,
        nats_urls: &[String],
        config: &str,
        env: &[(&str, &str)],
        placed: Option<(NetFaults, String)>,
    ) -> EdgeProcess {
        let port = crate::process::free_tcp_port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let text = config
            .replace("{listen}", &addr.to_string())
            .replace("{name}", name)
            .replace("{api_key}", API_KEY)
            .replace("{secret}", SECRET)
            .replace("{nats}", &json!(nats_urls).to_string());
        let stem = format!("groupcast-edge-{}-{name}-{port}", std::process::id());
        let config_file = std::env::temp_dir().join(format!("{stem}.toml"));
        let log_file = std::env::temp_dir().join(format!("{stem}.log"));
        std::fs::write(&config_file, text).expect("write edge config");
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let process = spawn_ready(
            bin,
            name,
            addr,
            &config_file,
            &log_file,
            &env,
            placed.as_ref(),
        )
        .await;
        EdgeProcess {
            name: name.into(),
            addr,
            process,
            bin: bin.to_path_buf(),
            env,
            config_file,
            log_file,
            placed,
        }
    }

    /// SIGKILL the edge and reap it: no drain, no deregistration (its
    /// lease runs out).
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Start the edge again, same name, address and configuration (after
    /// [`kill`](Self::kill) or [`terminate`](Self::terminate)), and wait
    /// until it is ready. Its log goes on in the same file.
    pub async fn restart(&mut self) {
        self.process = spawn_ready(
            &self.bin,
            &self.name,
            self.addr,
            &self.config_file,
            &self.log_file,
            &self.env,
            self.placed.as_ref(),
        )
        .await;
    }

    /// [`restart`](Self::restart) from another binary (a rolling upgrade,
    /// or a rollback): the same name, address, configuration and log.
    pub async fn restart_as(&mut self, bin: &Path) {
        self.bin = bin.to_path_buf();
        self.restart().await;
    }

    /// The binary the edge runs (or ran last).
    pub fn binary(&self) -> &Path {
        &self.bin
    }

    pub fn log(&self) -> String {
        self.process.log()
    }

    /// The edge's process id (e.g. to sample `/proc/PID/stat`).
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// SIGSTOP (`stop = true`) or SIGCONT the edge.
    pub fn pause(&self, stop: bool) {
        self.process.signal(if stop { "STOP" } else { "CONT" });
    }

    /// SIGTERM (the drain) and wait (bounded by `within`) for the exit;
    /// true when it exited successfully.
    pub async fn terminate(&mut self, within: std::time::Duration) -> bool {
        self.process.signal("TERM");
        self.process
            .wait_exit(within)
            .await
            .is_some_and(|s| s.success())
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/connection/websocket", self.addr)
    }

    pub fn relay_url(&self, channel: &str) -> String {
        format!("ws://{}/ws/relay/{channel}", self.addr)
    }

    /// Call the server API; returns (HTTP status, JSON body).
    pub async fn api(&self, method: &str, body: Value) -> (u16, Value) {
        let (status, body) = http_request(
            self.addr,
            "POST",
            &format!("/api/{method}"),
            &format!("X-API-Key: {API_KEY}\r\n"),
            body.to_string().as_bytes(),
        )
        .await;
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    /// `/metrics` text.
    pub async fn metrics(&self) -> String {
        let (_, body) = http_request(self.addr, "GET", "/metrics", "", b"").await;
        String::from_utf8_lossy(&body).into_owned()
    }

    /// The value of one metric line (exact name with labels), 0 when absent.
    pub async fn metric(&self, name: &str) -> f64 {
        self.metrics()
            .await
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(0.0)
    }
}

/// Spawn `bin edge --config config_file` (in its group of the faults, when
/// placed) and wait until `/readyz` answers 200 on `addr` (bounded: 30 s).
async fn spawn_ready(
    bin: &Path,
    name: &str,
    addr: SocketAddr,
    config_file: &Path,
    log_file: &Path,
    env: &[(String, String)],
    placed: Option<&(NetFaults, String)>,
) -> Process {
    let mut cmd = Command::new(bin);
    cmd.arg("edge")
        .arg("--config")
        .arg(config_file)
        .env("RUST_LOG", "info")
        // The fault test's own tag, in an edge it did not place: an edge
        // reads every `GROUPCAST_*` variable as configuration.
        .env_remove(crate::netfault::ENV_TAG)
        .envs(env.iter().map(|(k, v)| (k, v)));
    if let Some((faults, group)) = placed {
        cmd = faults.place(group, &[Port::Tcp(addr.port())], &cmd);
    }
    let mut process = Process::spawn(&format!("edge {name}"), cmd, log_file);
    process
        .wait_ready(|| async move {
            TcpStream::connect(addr).is_ok()
                && http_request(addr, "GET", "/readyz", "", b"").await.0 == 200
        })
        .await;
    process
}

impl Drop for EdgeProcess {
    fn drop(&mut self) {
        // The process itself is killed when `process` drops.
        let _ = std::fs::remove_file(&self.config_file);
        if std::thread::panicking() {
            eprintln!("edge {} log kept in {}", self.name, self.log_file.display());
        } else {
            let _ = std::fs::remove_file(&self.log_file);
        }
    }
}
