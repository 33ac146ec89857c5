//! Test helpers: in-process Groupcast servers on free loopback ports.
//!
//! [`TestServer::start`] runs the edge with the in-memory broker and
//! membership on `127.0.0.1:0` with the dev profile (or a given config), and
//! stops it when dropped. It knows its API key and token secret, mints
//! tokens, and calls the server API over plain HTTP/1.1 ([`TestServer::api`]).

pub mod dev;
pub mod edge;
pub mod membership;
pub mod nats;
pub mod nginx;
mod process;
pub mod prometheus;
pub mod raw;

use std::net::SocketAddr;
use std::sync::Arc;

use groupcast_core::broker::memory::MemoryBroker;
use groupcast_core::membership::memory::MemoryMembership;
use groupcast_core::Node;
use groupcast_edge::auth::{mint_hs256, now_unix};
use groupcast_edge::Config;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

pub use groupcast_client::{Client, ClientError, Frame, Incoming, RawFrame, RelayClient};
pub use process::free_tcp_port;

pub const API_KEY: &str = "test-api-key";
pub const SECRET: &str = "test-secret";

/// A running in-process server; stopped on drop.
pub struct TestServer {
    pub addr: SocketAddr,
    pub config: Config,
    pub node: Arc<Node>,
    shutdown: CancellationToken,
    stopped: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    /// The dev profile with a known API key and HMAC secret.
    pub fn dev_config() -> Config {
        let mut c = Config::dev();
        c.api.key = API_KEY.into();
        c.client.token_hmac_secret = SECRET.into();
        c
    }

    pub async fn start() -> TestServer {
        Self::start_with(Self::dev_config()).await
    }

    pub async fn start_with(config: Config) -> TestServer {
        let node = Node::new(
            Arc::new(MemoryBroker::default()),
            Arc::new(MemoryMembership::default()),
        );
        Self::start_with_node(config, node).await
    }

    /// Start on a given node (e.g. a broker wrapped to inject latency).
    pub async fn start_with_node(mut config: Config, node: Arc<Node>) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        config.listen = addr;
        let shutdown = CancellationToken::new();
        let (c, n, s) = (config.clone(), node.clone(), shutdown.clone());
        let stopped = tokio::spawn(async move {
            if let Err(e) = groupcast_edge::run(c, listener, n, s).await {
                panic!("test server failed: {e}");
            }
        });
        TestServer {
            addr,
            config,
            node,
            shutdown,
            stopped: Some(stopped),
        }
    }

    /// Start the graceful shutdown (what SIGTERM does in the binary).
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Wait until `run` returned (the drain is over); false on timeout.
    pub async fn stopped(&mut self, timeout: std::time::Duration) -> bool {
        match self.stopped.take() {
            Some(handle) => tokio::time::timeout(timeout, handle).await.is_ok(),
            None => true,
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/connection/websocket", self.addr)
    }

    pub fn relay_url(&self, channel: &str) -> String {
        format!("ws://{}/ws/relay/{channel}", self.addr)
    }

    pub fn api_url(&self) -> String {
        format!("http://{}/api", self.addr)
    }

    /// Connection token for `user` valid one hour, with extra claims merged in.
    pub fn token(&self, user: &str, extra: Value) -> String {
        let mut claims = json!({ "sub": user, "exp": now_unix() + 3600 });
        if let Value::Object(m) = extra {
            for (k, v) in m {
                claims[k] = v;
            }
        }
        mint_hs256(&self.config.client.token_hmac_secret, &claims)
    }

    /// Subscription token for `user` on `channel`, with extra claims.
    pub fn sub_token(&self, user: &str, channel: &str, extra: Value) -> String {
        self.token(user, {
            let mut e = json!({ "channel": channel });
            if let Value::Object(m) = extra {
                for (k, v) in m {
                    e[k] = v;
                }
            }
            e
        })
    }

    /// Connect a protocol client with a token for `user`.
    pub async fn client(&self, user: &str) -> Client {
        let (c, reply) = Client::connect(&self.ws_url(), &self.token(user, json!({})))
            .await
            .expect("connect");
        assert!(reply.get("connect").is_some(), "connect failed: {reply}");
        c
    }

    /// Call the server API with the right key: `(HTTP status, JSON body or Null)`.
    pub async fn api(&self, method: &str, body: Value) -> (u16, Value) {
        let headers = format!("X-API-Key: {}\r\n", self.config.api.key);
        self.http(
            "POST",
            &format!("/api/{method}"),
            &headers,
            body.to_string().as_bytes(),
        )
        .await
    }

    /// A raw HTTP/1.1 request: `(status, JSON body or Null)`.
    pub async fn http(&self, method: &str, path: &str, headers: &str, body: &[u8]) -> (u16, Value) {
        let (status, body) = self.http_raw(method, path, headers, body).await;
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    /// A raw HTTP/1.1 request: `(status, body bytes)`.
    pub async fn http_raw(
        &self,
        method: &str,
        path: &str,
        headers: &str,
        body: &[u8],
    ) -> (u16, Vec<u8>) {
        http_request(self.addr, method, path, headers, body).await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

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

/// Minimal HTTP/1.1 client (`Connection: close`), enough for API tests;
/// panics on an I/O error (see [`try_http_request`]).
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &[u8],
) -> (u16, Vec<u8>) {
    try_http_request(addr, method, path, headers, body)
        .await
        .unwrap_or_else(|e| panic!("{method} {path} on {addr}: {e}"))
}

/// [`http_request`] that reports an I/O error instead of panicking (for
/// callers that expect servers to fail under them).
pub async fn try_http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &[u8],
) -> std::io::Result<(u16, Vec<u8>)> {
    use std::io::{Error, ErrorKind};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    // The caller may set its own Connection header (an upgrade request).
    let connection = if headers.to_ascii_lowercase().contains("connection:") {
        ""
    } else {
        "Connection: close\r\n"
    };
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{connection}Content-Type: application/json\r\nContent-Length: {}\r\n{headers}\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(body).await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let text_end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(Error::new(
                ErrorKind::UnexpectedEof,
                "connection closed before the response head",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    // A 101 keeps the connection open (WebSocket): the head is the answer.
    if buf.starts_with(b"HTTP/1.1 101") {
        return Ok((101, Vec::new()));
    }
    let head = String::from_utf8_lossy(&buf[..text_end]).to_ascii_lowercase();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::new(ErrorKind::InvalidData, "no status code"))?;
    let content_length: Option<usize> = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok());
    let chunked = head.contains("transfer-encoding: chunked");
    // Read the body by its framing: the connection may stay open.
    loop {
        let body = &buf[text_end + 4..];
        let complete = if chunked {
            body.ends_with(b"0\r\n\r\n")
        } else {
            content_length.is_some_and(|n| body.len() >= n)
        };
        if complete {
            break;
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let mut body = buf[text_end + 4..].to_vec();
    if chunked {
        body = dechunk(&body);
    }
    Ok((status, body))
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(pos) = data.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&data[..pos]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = pos + 2;
        out.extend_from_slice(&data[start..start + size]);
        data = &data[start + size + 2..];
    }
    out
}
