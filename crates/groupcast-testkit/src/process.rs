//! A child process of a test: output to a log file, readiness polling with
//! a bound, SIGKILL and reap on drop.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A loopback TCP port that was free a moment ago (the OS picks it).
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
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
