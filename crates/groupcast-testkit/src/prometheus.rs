//! A real Prometheus (Debian's package) scraping given targets every
//! second, with its own config and TSDB in a temp dir; killed on drop.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::process::Process;

pub struct Prometheus {
    pub addr: SocketAddr,
    dir: PathBuf,
    process: Process,
}

impl Prometheus {
    /// Start Prometheus scraping `targets` (job name, address of a
    /// `/metrics`) every second and wait until it is ready (30 s).
    pub async fn start(targets: &[(&str, SocketAddr)]) -> Prometheus {
        let port = crate::process::free_tcp_port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let dir = std::env::temp_dir().join(format!(
            "groupcast-prometheus-{}-{port}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("prometheus dir");
        let mut jobs: Vec<(&str, Vec<String>)> = Vec::new();
        for (job, a) in targets {
            match jobs.iter_mut().find(|(j, _)| j == job) {
                Some((_, list)) => list.push(a.to_string()),
                None => jobs.push((job, vec![a.to_string()])),
            }
        }
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n",
        );
        for (job, list) in &jobs {
            let quoted: Vec<String> = list.iter().map(|a| format!("'{a}'")).collect();
            config.push_str(&format!(
                "  - job_name: '{job}'\n    static_configs:\n      - targets: [{}]\n",
                quoted.join(", ")
            ));
        }
        std::fs::write(dir.join("prometheus.yml"), config).expect("prometheus.yml");
        let mut cmd = Command::new(crate::debian_binary("prometheus", "prometheus"));
        cmd.arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .arg("--log.level=warn");
        let mut process = Process::spawn("prometheus", cmd, &dir.join("prometheus.log"));
        process
            .wait_ready(|| async move {
                TcpStream::connect(addr).is_ok()
                    && crate::try_http_request(addr, "GET", "/-/ready", "", b"")
                        .await
                        .is_ok_and(|(s, _)| s == 200)
            })
            .await;
        Prometheus { addr, dir, process }
    }

    /// An instant query; the `data.result` array (empty when no series).
    pub async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let path = format!("/api/v1/query?query={}", urlencode(expr));
        let (status, body) = crate::try_http_request(self.addr, "GET", &path, "", b"")
            .await
            .map_err(|e| e.to_string())?;
        let v: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        if status != 200 || v["status"] != "success" {
            return Err(format!("{expr}: HTTP {status}: {v}"));
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// Waits (bounded by `within`) until `expr` returns at least one
    /// series; the series, or the last error.
    pub async fn wait_for(&self, expr: &str, within: Duration) -> Result<Vec<Value>, String> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.query(expr).await;
            match &got {
                Ok(r) if !r.is_empty() => return got,
                _ if Instant::now() >= deadline => {
                    return Err(format!("{expr}: no data within {within:?} ({got:?})"))
                }
                _ => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.process.kill();
        if std::thread::panicking() {
            eprintln!("prometheus files kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Percent-encode a query string value.
fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
