//! nginx in front of three edges, with the local cluster's own
//! configuration (`deploy/local/nginx.conf.tmpl`: WebSocket upgrade
//! headers, least connections, passive failover), so the chaos tests run
//! through exactly what `deploy/local/cluster.sh` deploys.
//!
//! nginx runs in the foreground as one process (`master_process off`), so
//! the SIGKILL on drop leaves no worker behind.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;

use crate::process::Process;

const TEMPLATE: &str = include_str!("../../../deploy/local/nginx.conf.tmpl");

/// A running nginx load-balancing a loopback port over three edges.
pub struct Nginx {
    pub addr: SocketAddr,
    dir: PathBuf,
    process: Process,
}

impl Nginx {
    /// Start nginx on a free loopback port in front of `edges` (exactly
    /// three, the template's upstream) and wait until it accepts (30 s).
    pub async fn start(edges: &[SocketAddr]) -> Nginx {
        Self::start_with(edges, false, None).await
    }

    /// [`Nginx::start`] holding up to `connections` connections (the template's
    /// `worker_connections` is 4096: a proxied WebSocket takes two, one to the client and
    /// one to the edge), with the open-file limit raised to match. One nginx process is
    /// under the process's open-file hard limit: a test with more clients than one can
    /// hold starts several, as a deployment runs several load balancers.
    pub async fn start_sized(edges: &[SocketAddr], connections: usize) -> Nginx {
        Self::start_with(edges, false, Some(connections)).await
    }

    /// [`Nginx::start`] with plain round-robin instead of the template's `least_conn`:
    /// consecutive requests of one client go to different edges (what "no sticky sessions"
    /// must survive).
    pub async fn start_round_robin(edges: &[SocketAddr]) -> Nginx {
        Self::start_with(edges, true, None).await
    }

    async fn start_with(
        edges: &[SocketAddr],
        round_robin: bool,
        connections: Option<usize>,
    ) -> Nginx {
        assert_eq!(edges.len(), 3, "the local cluster's nginx has three edges");
        let port = crate::process::free_tcp_port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let dir =
            std::env::temp_dir().join(format!("groupcast-nginx-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("logs")).expect("nginx dir");
        std::fs::create_dir_all(dir.join("temp")).expect("nginx dir");
        let mut conf = TEMPLATE
            .replace("@PREFIX@", dir.to_str().expect("utf-8 temp dir"))
            .replace("@LB_PORT@", &port.to_string());
        for (i, e) in edges.iter().enumerate() {
            assert_eq!(e.ip().to_string(), "127.0.0.1", "edges listen on 127.0.0.1");
            conf = conf.replace(&format!("@EDGE_PORT_{}@", i + 1), &e.port().to_string());
        }
        assert!(
            !conf.contains('@'),
            "unfilled placeholder in nginx.conf.tmpl"
        );
        if round_robin {
            assert!(
                conf.contains("least_conn;"),
                "nginx.conf.tmpl balances least_conn"
            );
            conf = conf.replace("least_conn;", "");
        }
        if let Some(n) = connections {
            assert!(
                conf.contains("worker_connections 4096;"),
                "nginx.conf.tmpl holds 4096 connections"
            );
            conf = conf.replace(
                "worker_connections 4096;",
                &format!("worker_connections {n};"),
            );
            conf = conf.replace(
                "events {",
                &format!("worker_rlimit_nofile {};\nevents {{", n + 100),
            );
        }
        let conf_file = dir.join("nginx.conf");
        std::fs::write(&conf_file, conf).expect("write nginx.conf");
        let mut cmd = Command::new(crate::debian_binary("nginx", "nginx"));
        cmd.arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&conf_file)
            .arg("-g")
            .arg("daemon off; master_process off;");
        let mut process = Process::spawn("nginx", cmd, &dir.join("stdout.log"));
        process
            .wait_ready(|| async move { TcpStream::connect(addr).is_ok() })
            .await;
        Nginx { addr, dir, process }
    }

    /// nginx's error log so far (e.g. to look for "Too many open files").
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("logs/error.log")).unwrap_or_default()
    }

    /// The Centrifugo-protocol WebSocket URL through nginx.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/connection/websocket", self.addr)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.process.kill();
        if std::thread::panicking() {
            eprintln!("nginx logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
