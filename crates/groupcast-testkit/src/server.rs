//! [`TestServer`]: the edge in this process (`groupcast_edge::run`) with
//! the in-memory broker and membership, on `127.0.0.1:0`, with the dev
//! profile (or a given config); stopped when dropped. It knows its API key
//! and token secret, mints tokens and calls the server API.
//!
//! Only with the `edge` feature: it is what makes the testkit depend on
//! `groupcast-edge`.

use std::net::SocketAddr;
use std::sync::Arc;

use groupcast_core::broker::memory::MemoryBroker;
use groupcast_core::membership::memory::MemoryMembership;
use groupcast_core::Node;
use groupcast_edge::auth::{mint_hs256, now_unix};
use groupcast_edge::Config;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::{http_request, Client, API_KEY, SECRET};

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

    /// One HTTP request (`headers` as `Name: value\r\n` lines, see
    /// [`http_request`]): `(status, JSON body or Null)`.
    pub async fn http(&self, method: &str, path: &str, headers: &str, body: &[u8]) -> (u16, Value) {
        let (status, body) = self.http_raw(method, path, headers, body).await;
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    /// One HTTP request (see [`http_request`]): `(status, body bytes)`.
    /// The value of one series on `/metrics` (the line starting with
    /// `series`, e.g. `groupcast_x_total{a="b"}`); 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        let (_, body) = self.http_raw("GET", "/metrics", "", b"").await;
        String::from_utf8_lossy(&body)
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Waits (bounded: 20 s, then panics) until `channel` has `n`
    /// subscribers, as the API's `channels` counts them: a relay
    /// connection subscribes once its WebSocket is open, on the server's
    /// own time.
    pub async fn wait_subscribers(&self, channel: &str, n: u64) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let (_, r) = self
                .api("channels", serde_json::json!({ "pattern": channel }))
                .await;
            let now = r["result"]["channels"][channel]["num_clients"]
                .as_u64()
                .unwrap_or(0);
            if now == n {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{channel}: not {n} subscribers within 20 s: {r}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

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
