//! Test helpers: real processes and in-process servers on free loopback
//! ports, clients, tokens and HTTP calls, for the crates' integration tests
//! and the cluster tests.
//!
//! Most helpers start programs (`nats-server`, `groupcast` binaries, nginx,
//! Prometheus) and do not link the edge, so a lower crate's tests (e.g.
//! `groupcast-nats`) build without it. The in-process edge,
//! `TestServer`, needs the `edge` feature (a dependency on
//! `groupcast-edge`); crates testing the edge enable it.
//!
//! # Layout
//!
//! * `server` (feature `edge`): `TestServer`, the edge in this process with
//!   the in-memory broker and membership.
//! * [`edge`]: `groupcast edge` as a separate process.
//! * [`dev`]: `groupcast dev` as a child process, as a user runs it.
//! * [`example`]: `examples/<name>/run.sh`, an example started by its one command.
//! * [`membership`]: a cluster of `groupcast membership` processes.
//! * [`nats`]: real `nats-server` processes (one, or a cluster).
//! * [`netfault`]: partitions between a test's processes (a private network
//!   namespace, a cgroup leaf per process, iptables rules of the test's own).
//! * [`diskfault`]: a full disk (a small tmpfs of the test's own, filled
//!   and freed).
//! * [`nginx`]: nginx in front of edges (the local cluster's config).
//! * [`prometheus`]: a real Prometheus scraping given targets.
//! * [`raw`]: a plain WebSocket, as a browser opens one.
//! * `http`: [`http_request`] and [`try_http_request`], over
//!   [`groupcast_client::http`].
//! * `process`: child processes with logs, readiness polling, kill on drop;
//!   [`free_tcp_port`].

pub mod dev;
pub mod diskfault;
pub mod edge;
pub mod example;
mod http;
pub mod membership;
pub mod nats;
pub mod netfault;
pub mod nginx;
mod process;
pub mod prometheus;
pub mod raw;
pub mod release;
#[cfg(feature = "edge")]
mod server;
pub mod slowlink;

pub use groupcast_client::{Client, ClientError, Frame, Incoming, RawFrame, RelayClient};
pub use http::{http_request, try_http_request};
pub use process::free_tcp_port;
#[cfg(feature = "edge")]
pub use server::TestServer;

/// The server API key of `TestServer` and the test configurations.
pub const API_KEY: &str = "test-api-key";
/// The connection token HMAC secret of `TestServer` and the test
/// configurations.
pub const SECRET: &str = "test-secret";

/// A Debian tool's binary: on `PATH`, or in /usr/bin or /usr/sbin
/// (`scripts/debian-tool.sh PACKAGE BINARY`, run by the test command,
/// installs it).
pub fn debian_binary(package: &str, binary: &str) -> std::path::PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(binary))
        .find(|p| p.is_file());
    on_path
        .or_else(|| {
            ["/usr/bin", "/usr/sbin"]
                .iter()
                .map(|d| std::path::PathBuf::from(d).join(binary))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "{binary} not found: run scripts/debian-tool.sh {package} {binary} \
                 (scripts/test.sh does)"
            )
        })
}
