//! A child process of a test: output to a log file, readiness polling with
//! a bound, SIGKILL and reap on drop.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A loopback port that was free a moment ago, for TCP and UDP both,
/// chosen at random *below* the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`, 32768-60999 here). A port the kernel
/// picks (`bind` to port 0) is one of that range, which it also hands to
/// outgoing connections: a connection made between the pick and the
/// listener's `bind` could take it, and the server failed with "Address
/// already in use" (a membership replica in CI, while the NATS servers
/// beside it connected their routes). Below the range only another test's
/// pick can collide, and a taken port is passed over.
pub fn free_tcp_port() -> u16 {
    let lowest_ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    if lowest_ephemeral > 12_000 {
        let span = u64::from(lowest_ephemeral - 10_000);
        for _ in 0..1_000 {
            let port = 10_000 + (random() % span) as u16;
            let free = std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
                && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok();
            if free {
                return port;
            }
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A loopback UDP port that was free a moment ago ([`free_tcp_port`]: free
/// for both).
pub fn free_udp_port() -> u16 {
    free_tcp_port()
}

/// A random number (no generator dependency: the standard library's
/// randomly seeded hasher).
pub(crate) fn random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// How long a process may take to become ready.
const READY_WITHIN: Duration = Duration::from_secs(30);

pub(crate) struct Process {
    what: String,
    child: Child,
    log_file: PathBuf,
}

impl Process {
    /// Spawn `cmd` with stdout and stderr appended to `log_file`.
    pub(crate) fn spawn(what: &str, mut cmd: Command, log_file: &Path) -> Process {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_file)
            .expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what} ({e})"));
        Process {
            what: what.into(),
            child,
            log_file: log_file.into(),
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (e.g. `STOP`, `CONT`) to this child, by PID.
    pub(crate) fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .arg("-s")
            .arg(signal)
            .arg(self.pid().to_string())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -s {signal} {} failed", self.pid());
    }

    /// Waits (polling, bounded by `within`) for the child to exit by
    /// itself; its exit status, or None when it is still running.
    pub(crate) async fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log_file).unwrap_or_default()
    }

    /// Poll `ready` every 50 ms until it says yes; panic with the log if the
    /// process exits or is not ready within 30 s.
    pub(crate) async fn wait_ready<F, Fut>(&mut self, mut ready: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited with {status}:\n{}", self.what, self.log());
            }
            if ready().await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready in {READY_WITHIN:?}:\n{}",
                self.what,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Process {
    /// SIGKILL and reap (also what drop does).
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}
