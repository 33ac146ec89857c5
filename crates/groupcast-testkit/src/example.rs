//! `examples/<name>/run.sh` as a user runs it: one command that starts Groupcast (`groupcast dev`
//! or the local cluster, `deploy/local/cluster.sh`) and the example's own processes, then prints
//! a `ready: key=value ...` line. Ports, logs and the cluster's state directory are the test's
//! own; on drop the script gets SIGTERM (it stops what it started), then SIGKILL, and a cluster
//! is brought down by its state directory whatever happened.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::free_tcp_port;

/// How an example is started: on `groupcast dev` or on the local cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Dev,
    /// The local cluster with every port moved by this offset (keep each test's apart, and the
    /// ports 4222..8224 + offset below the ephemeral range).
    Cluster {
        port_offset: u16,
    },
}

/// A running example (stopped on drop).
pub struct Example {
    child: Option<Child>,
    root: PathBuf,
    scratch: PathBuf,
    mode: Mode,
    /// The `ready:` line's fields (`page`, `ws`, `api`, `key`, `edges`, and the example's own).
    pub fields: HashMap<String, String>,
    /// What the script printed up to its `ready:` line.
    pub output: Vec<String>,
}

/// The repository root (two levels above this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("crates/groupcast-testkit is two levels deep")
        .to_path_buf()
}

impl Example {
    /// Runs `examples/NAME/run.sh` (`dev` or `cluster`) with the `groupcast` binary `bin`, and
    /// waits for its `ready:` line (`within`). `env` is added to the script's environment.
    pub fn start(
        name: &str,
        mode: Mode,
        bin: &str,
        env: &[(&str, &str)],
        within: Duration,
    ) -> Example {
        let root = repo_root();
        static STARTED: AtomicU32 = AtomicU32::new(0);
        let scratch = std::env::temp_dir().join(format!(
            "gc-example-{name}-{}-{}",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(scratch.join("logs")).expect("scratch directory");
        let script = root.join("examples").join(name).join("run.sh");
        let mut cmd = Command::new("bash");
        cmd.arg(&script)
            .arg(match mode {
                Mode::Dev => "dev",
                Mode::Cluster { .. } => "cluster",
            })
            .current_dir(&root)
            .env("GROUPCAST_BIN", bin)
            .env("EXAMPLE_LOG_DIR", scratch.join("logs"))
            .env("EXAMPLE_PAGE_PORT", free_tcp_port().to_string())
            .env("EXAMPLE_BACKEND_PORT", free_port_run(4).to_string())
            .env("EXAMPLE_PORT", free_tcp_port().to_string())
            .env("GROUPCAST_LOCAL_DIR", scratch.join("cluster"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Mode::Cluster { port_offset } = mode {
            cmd.env("GROUPCAST_LOCAL_PORT_OFFSET", port_offset.to_string());
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", script.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        // Read to the end: a closed pipe would fail the script's next line.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                eprintln!("[run.sh] {line}");
                if tx.send(line).is_err() {
                    continue;
                }
            }
        });
        let mut example = Example {
            child: Some(child),
            root,
            scratch,
            mode,
            fields: HashMap::new(),
            output: Vec::new(),
        };
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let ready = line.strip_prefix("ready: ").map(str::to_string);
                    example.output.push(line);
                    if let Some(fields) = ready {
                        example.fields = parse_fields(&fields);
                        return example;
                    }
                }
                Err(_) => panic!(
                    "examples/{name}/run.sh printed no ready line within {within:?}:\n{}\n{}",
                    example.output.join("\n"),
                    example.logs()
                ),
            }
        }
    }

    /// A field of the `ready:` line.
    pub fn field(&self, key: &str) -> &str {
        self.fields
            .get(key)
            .unwrap_or_else(|| panic!("no {key} in the ready line: {:?}", self.fields))
    }

    /// The edges' `http://host:port` (one on dev, three on the cluster).
    pub fn edges(&self) -> Vec<String> {
        self.field("edges").split(',').map(str::to_string).collect()
    }

    /// The environment that points `deploy/local/cluster.sh` at this example's cluster.
    pub fn cluster_env(&self) -> Vec<(String, String)> {
        let Mode::Cluster { port_offset } = self.mode else {
            panic!("not a cluster example");
        };
        vec![
            (
                "GROUPCAST_LOCAL_DIR".into(),
                self.scratch.join("cluster").display().to_string(),
            ),
            (
                "GROUPCAST_LOCAL_PORT_OFFSET".into(),
                port_offset.to_string(),
            ),
        ]
    }

    /// `deploy/local/cluster.sh ARGS` on this example's cluster (kill, restart, status).
    pub fn cluster(&self, args: &[&str]) -> std::process::Output {
        Command::new(self.root.join("deploy/local/cluster.sh"))
            .args(args)
            .envs(self.cluster_env())
            .output()
            .expect("run deploy/local/cluster.sh")
    }

    /// The last lines of every log of the run, for a failure message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        let mut dirs = vec![self.scratch.join("logs"), self.scratch.join("cluster/logs")];
        while let Some(dir) = dirs.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    dirs.push(p);
                    continue;
                }
                if p.extension().is_none_or(|e| e != "log") {
                    continue;
                }
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                out.push_str(&format!("--- {} ---\n", p.display()));
                for l in tail.iter().rev() {
                    out.push_str(l);
                    out.push('\n');
                }
            }
        }
        out
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if matches!(self.mode, Mode::Cluster { .. }) && self.scratch.join("cluster").exists() {
            let _ = self.cluster(&["down", "--purge"]);
        }
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

/// `a=1 b=two` → {a: 1, b: two}.
fn parse_fields(line: &str) -> HashMap<String, String> {
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The first of `n` consecutive loopback ports that were all free a moment ago.
/// (After a test that made many short connections most ports may still be in
/// TIME_WAIT: it looks long enough to find a run.)
fn free_port_run(n: u16) -> u16 {
    for _ in 0..2_000 {
        let first = free_tcp_port();
        if first > u16::MAX - n {
            continue;
        }
        let free = (1..n).all(|i| std::net::TcpListener::bind(("127.0.0.1", first + i)).is_ok());
        if free {
            return first;
        }
    }
    panic!("no {n} consecutive free loopback ports");
}
