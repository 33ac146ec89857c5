//! `groupcast dev` as a child process, the way a user runs it: started with
//! flags and environment, ready once its banner is printed, killed on drop.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A running `groupcast dev` (killed on drop).
pub struct DevServer {
    child: Child,
    /// The banner, through its `metrics:` line.
    pub banner: Vec<String>,
}

impl DevServer {
    /// Starts `bin dev ARGS` with `env` added and waits (20 s at most) for
    /// its banner. Its stdout (banner, then logs) is read to the end in a
    /// thread: a closed pipe would fail the server's next log line.
    pub fn start(bin: &str, args: &[&str], env: &[(&str, &str)]) -> DevServer {
        let mut cmd = Command::new(bin);
        cmd.arg("dev")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start groupcast dev");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut banner = Vec::new();
            let mut sent = false;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sent {
                    continue;
                }
                let done = line.contains("metrics:");
                banner.push(line);
                if done {
                    let _ = tx.send(std::mem::take(&mut banner));
                    sent = true;
                }
            }
        });
        let mut server = DevServer {
            child,
            banner: Vec::new(),
        };
        server.banner = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("groupcast dev printed no banner");
        server
    }

    /// The last word of the banner line containing `label` (a URL, a key).
    pub fn field(&self, label: &str) -> String {
        let line = self
            .banner
            .iter()
            .find(|l| l.contains(label))
            .unwrap_or_else(|| panic!("no {label:?} in {:?}", self.banner));
        line.rsplit(' ').next().unwrap_or_default().to_string()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit (after a signal), at most `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for DevServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
