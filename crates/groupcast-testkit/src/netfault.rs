//! Network faults between a test's processes, without touching anything
//! outside the test: the whole test runs in a private network namespace
//! ([`isolated`]), each faulted process in its own cgroup v2 leaf
//! ([`NetFaults::place`]), and a partition is a set of iptables rules in the
//! test's own chains that drop what one side sends to the other
//! ([`NetFaults::partition`]). Needs root, `unshare` and `ip` (util-linux,
//! iproute2) and `iptables` (Debian's package; `scripts/test.sh` installs
//! it).
//!
//! How a packet is matched: `iptables -m cgroup --path` recognises the
//! *sending* socket's cgroup (a socket keeps the cgroup of the process that
//! created it, so a process is placed in its leaf before it execs). On
//! loopback the sender is only known on the way out, so the test's chain in
//! `mangle OUTPUT` marks each packet with its sender's group, and the chain
//! in `filter INPUT` drops marked packets bound for the other side's
//! listening ports. Dropping on the way in is silent, like a real network;
//! dropping in `OUTPUT` would fail the sender's `sendmsg` with `EPERM`
//! instead.
//!
//! What a cut covers: everything a process of side A sends to a listening
//! port of side B, and the reverse. A process that talks from its listening
//! socket (a membership replica's QUIC endpoint serves and dials from one
//! port) is cut both ways by that alone; a client on an ephemeral port
//! loses its requests, so its connection dies too.
//!
//! Clean-up: [`NetFaults`] removes its rules, chains and cgroup leaves on
//! drop (a process still in a leaf is killed through `cgroup.kill`: only
//! processes this test placed there). The namespace goes away with the
//! test's last process; the parent of [`isolated`] checks that no cgroup of
//! the test is left behind. A test the runner kills (timeout) skips its
//! clean-up, but its processes die with the runner's process group, and
//! the next fault test removes its cgroups.
//!
//! Other processes: [`NetFaults::place`] takes any `Command` (the
//! membership cluster's use, `MembershipCluster::start_placed`, is the
//! pattern for edges and NATS servers).
//!
//! ```ignore
//! #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
//! async fn leader_partitioned() {
//!     if !netfault::isolated("leader_partitioned") {
//!         return; // the test ran in its namespace, in a child process
//!     }
//!     let faults = NetFaults::start();
//!     let cluster = MembershipCluster::start_placed(bin, 3, &[], &faults).await;
//!     faults.partition(&["membership-1"], &["membership-2", "membership-3"]);
//!     // ...
//!     faults.heal();
//! }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where cgroup v2 is mounted on this kernel (a hybrid hierarchy).
pub const CGROUP2_ROOT: &str = "/sys/fs/cgroup/unified";

/// Set in the child that runs inside the namespace: the test's tag.
pub(crate) const ENV_TAG: &str = "GROUPCAST_NETFAULT_TAG";

/// The test's cgroup directory is this followed by the parent's PID.
const TAG_PREFIX: &str = "gcnf-";

/// Removes the cgroups of fault tests whose parent process is gone (a test
/// killed by the runner's timeout skips its clean-up), with whatever they
/// still hold: only processes such a test placed there.
fn remove_orphans() {
    let Ok(entries) = std::fs::read_dir(CGROUP2_ROOT) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(TAG_PREFIX) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            eprintln!("netfault: removing {name}, left by a test that is gone");
            remove_tree(&e.path());
        }
    }
}

/// Longest a test in its namespace may run before the parent kills it.
const ISOLATED_WITHIN: Duration = Duration::from_secs(240);

/// Runs the calling test again in a private network namespace (loopback
/// up, nothing else) and mount namespace, and returns false once that run passed; returns true
/// in that run, where the test goes on. `test` is the test's name as
/// `cargo test`/nextest address it (`--exact`).
///
/// The child is the test binary itself under `unshare --net --mount`; it is killed
/// (by its PID) if it outlives 240 s. The parent fails when the child
/// failed, or when a cgroup of the test is left behind.
pub fn isolated(test: &str) -> bool {
    if std::env::var_os(ENV_TAG).is_some() {
        return true;
    }
    assert!(
        is_root(),
        "{test} needs root (a network namespace, cgroups, iptables): run it as \
         scripts/test.sh does in CI"
    );
    remove_orphans();
    let tag = format!("{TAG_PREFIX}{}", std::process::id());
    let exe = std::env::current_exe().expect("the test binary");
    let mut child = Command::new("unshare")
        .args([
            "--net",
            // A mount namespace too (mounts private to it): a test's small
            // disks (`diskfault::SmallDisk`) go away with it.
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            "ip link set lo up && exec \"$0\" \"$@\"",
        ])
        .arg(&exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(ENV_TAG, &tag)
        .spawn()
        .expect("run unshare (util-linux)");
    let deadline = Instant::now() + ISOLATED_WITHIN;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for the isolated test") {
            break Some(s);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let left = remove_tree(&Path::new(CGROUP2_ROOT).join(&tag));
    let status = status.unwrap_or_else(|| panic!("{test}: not done within {ISOLATED_WITHIN:?}"));
    assert!(status.success(), "{test} failed in its namespace: {status}");
    assert!(!left, "{test} left its cgroup {tag} behind (removed now)");
    false
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// Kills what is left in `dir`'s leaves (`cgroup.kill`) and removes them
/// and `dir`; true when there was something to remove.
fn remove_tree(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    for e in entries.flatten() {
        if e.path().is_dir() {
            remove_leaf(&e.path());
        }
    }
    remove_leaf(dir);
    true
}

/// Removes one cgroup, killing what is still in it; says so when it cannot
/// (no panic: this runs in `Drop`, maybe while unwinding; the parent of
/// [`isolated`] fails the test when something is left).
fn remove_leaf(dir: &Path) {
    for _ in 0..100 {
        match std::fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(_) => {
                // Busy: a process is still in it (one this test placed).
                let _ = std::fs::write(dir.join("cgroup.kill"), "1");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    eprintln!("netfault: cannot remove cgroup {}", dir.display());
}

/// A listening port of a group, for the rules that cut it off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Port {
    Udp(u16),
    Tcp(u16),
}

#[derive(Debug)]
struct Group {
    /// The packet mark of this group's senders.
    mark: u32,
    ports: Vec<Port>,
}

struct Inner {
    /// The test's cgroup directory (its leaves below).
    dir: PathBuf,
    /// The name of both chains (mangle and filter).
    chain: String,
    groups: Mutex<BTreeMap<String, Group>>,
    next_mark: AtomicU32,
}

/// The test's fault harness: cgroup leaves, chains and rules, removed on
/// drop (of the last clone). Cheap to clone. Only inside [`isolated`], one
/// per test.
#[derive(Clone)]
pub struct NetFaults(Arc<Inner>);

fn iptables(args: &[&str]) {
    let out = Command::new(crate::debian_binary("iptables", "iptables"))
        .args(args)
        .output()
        .expect("run iptables");
    assert!(
        out.status.success(),
        "iptables {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NetFaults {
    /// Makes the test's cgroup directory and its two empty chains, hooked
    /// into `mangle OUTPUT` and `filter INPUT`. Panics outside [`isolated`]
    /// (it never adds a rule to a namespace it did not make).
    pub fn start() -> NetFaults {
        let tag = std::env::var(ENV_TAG)
            .expect("NetFaults only inside netfault::isolated (a namespace of the test's own)");
        let dir = Path::new(CGROUP2_ROOT).join(&tag);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("make cgroup {}: {e}", dir.display()));
        let chain = "GC-FAULTS".to_string();
        iptables(&["-t", "mangle", "-N", &chain]);
        iptables(&["-t", "mangle", "-A", "OUTPUT", "-j", &chain]);
        iptables(&["-N", &chain]);
        iptables(&["-A", "INPUT", "-j", &chain]);
        NetFaults(Arc::new(Inner {
            dir,
            chain,
            groups: Mutex::new(BTreeMap::new()),
            next_mark: AtomicU32::new(1),
        }))
    }

    /// `cmd`, to be started in the leaf of group `name` (made now) before
    /// it execs, so every socket it opens belongs to the group. `ports`:
    /// the group's listening ports (what a cut drops).
    pub fn place(&self, name: &str, ports: &[Port], cmd: &Command) -> Command {
        let leaf = self.0.dir.join(name);
        let mut groups = self.0.groups.lock().expect("groups");
        if !groups.contains_key(name) {
            std::fs::create_dir(&leaf)
                .unwrap_or_else(|e| panic!("make cgroup {}: {e}", leaf.display()));
            let mark = self.0.next_mark.fetch_add(1, Ordering::Relaxed);
            let path = self.cgroup_path(name);
            iptables(&[
                "-t",
                "mangle",
                "-A",
                &self.0.chain,
                "-m",
                "cgroup",
                "--path",
                &path,
                "-j",
                "MARK",
                "--set-mark",
                &mark.to_string(),
            ]);
            groups.insert(
                name.to_string(),
                Group {
                    mark,
                    ports: ports.to_vec(),
                },
            );
        }
        // `sh` moves itself into the leaf, then becomes the program.
        let mut placed = Command::new("sh");
        placed
            .arg("-c")
            .arg("echo $$ > \"$0/cgroup.procs\" && exec \"$@\"")
            .arg(&leaf)
            .arg(cmd.get_program())
            .args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => placed.env(k, v),
                None => placed.env_remove(k),
            };
        }
        if let Some(d) = cmd.get_current_dir() {
            placed.current_dir(d);
        }
        // The test's tag is the test's own: a `groupcast edge` reads every
        // `GROUPCAST_*` variable as configuration and refuses unknown ones.
        placed.env_remove(ENV_TAG);
        placed
    }

    /// Runs `fut` with this whole process in group `name` (placed by
    /// [`Self::place`] before), then moves it back: the sockets `fut`
    /// opens stay on that side of a cut (e.g. a client of the minority).
    /// Sockets other tasks open meanwhile join the group too.
    pub async fn within<F: std::future::Future>(&self, name: &str, fut: F) -> F::Output {
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("0::").map(|p| p.trim().to_string()))
            })
            .expect("this process's cgroup v2 path");
        let home = Path::new(CGROUP2_ROOT).join(own.trim_start_matches('/'));
        let pid = std::process::id().to_string();
        let leaf = self.0.dir.join(name);
        std::fs::write(leaf.join("cgroup.procs"), &pid)
            .unwrap_or_else(|e| panic!("move into {}: {e}", leaf.display()));
        let out = fut.await;
        std::fs::write(home.join("cgroup.procs"), &pid)
            .unwrap_or_else(|e| panic!("move back to {}: {e}", home.display()));
        out
    }

    /// The leaf's path as `-m cgroup --path` takes it (from the v2 root).
    fn cgroup_path(&self, name: &str) -> String {
        self.0
            .dir
            .join(name)
            .strip_prefix(CGROUP2_ROOT)
            .expect("under the cgroup2 root")
            .to_string_lossy()
            .into_owned()
    }

    /// Cuts every group in `a` off from every group in `b`, both ways (in
    /// addition to any cut already made). Processes outside any group (the
    /// test itself) still reach everyone.
    pub fn partition(&self, a: &[&str], b: &[&str]) {
        let groups = self.0.groups.lock().expect("groups");
        let get = |n: &str| {
            groups
                .get(n)
                .unwrap_or_else(|| panic!("no group {n} (place a process in it first)"))
        };
        for (from, to) in a
            .iter()
            .flat_map(|x| b.iter().map(move |y| (*x, *y)))
            .chain(b.iter().flat_map(|y| a.iter().map(move |x| (*y, *x))))
        {
            let mark = get(from).mark.to_string();
            for port in &get(to).ports {
                let (proto, port) = match port {
                    Port::Udp(p) => ("udp", p),
                    Port::Tcp(p) => ("tcp", p),
                };
                iptables(&[
                    "-A",
                    &self.0.chain,
                    "-m",
                    "mark",
                    "--mark",
                    &mark,
                    "-p",
                    proto,
                    "--dport",
                    &port.to_string(),
                    "-j",
                    "DROP",
                ]);
            }
        }
    }

    /// Drops a share `probability` (0 to 1) of the TCP packets to and from
    /// each of `ports`, at random (iptables `statistic`), until
    /// [`Self::heal`]; TCP retransmits them, as on a lossy network. With
    /// [`crate::slowlink`]'s proxies: a slow, lossy link.
    pub fn lossy(&self, ports: &[u16], probability: f64) {
        let p = format!("{probability:.4}");
        for port in ports {
            for way in ["--dport", "--sport"] {
                iptables(&[
                    "-A",
                    &self.0.chain,
                    "-p",
                    "tcp",
                    way,
                    &port.to_string(),
                    "-m",
                    "statistic",
                    "--mode",
                    "random",
                    "--probability",
                    &p,
                    "-j",
                    "DROP",
                ]);
            }
        }
    }

    /// Removes every cut and every loss rule (the marking rules stay).
    pub fn heal(&self) {
        iptables(&["-F", &self.0.chain]);
    }

    /// The cut rules now in force, as `iptables -S` prints them.
    pub fn rules(&self) -> Vec<String> {
        let out = Command::new(crate::debian_binary("iptables", "iptables"))
            .args(["-S", &self.0.chain])
            .output()
            .expect("run iptables");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("-A"))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let quiet = |args: &[&str]| {
            let _ = Command::new(crate::debian_binary("iptables", "iptables"))
                .args(args)
                .output();
        };
        quiet(&["-D", "INPUT", "-j", &self.chain]);
        quiet(&["-F", &self.chain]);
        quiet(&["-X", &self.chain]);
        quiet(&["-t", "mangle", "-D", "OUTPUT", "-j", &self.chain]);
        quiet(&["-t", "mangle", "-F", &self.chain]);
        quiet(&["-t", "mangle", "-X", &self.chain]);
        remove_tree(&self.dir);
    }
}
