//! The little HTTP the scenarios need: the server API and `/metrics`, one
//! request per connection (`Connection: close`), bounded at 10 s.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One request; the status and the body. Chunked answers are refused (the
/// edge answers with a length).
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> anyhow::Result<(u16, String)> {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n{headers}\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        anyhow::Ok(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .context("HTTP: no answer in 10 s")??;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").context("HTTP: no head")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("HTTP: no status")?;
    anyhow::ensure!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "HTTP: chunked answers are not read here"
    );
    Ok((status, body.to_string()))
}

/// A server API call with `key`; the JSON answer, or an error for any
/// status but 200 or an `error` in the answer.
pub async fn api(addr: SocketAddr, key: &str, method: &str, body: &Value) -> anyhow::Result<Value> {
    let (status, text) = request(
        addr,
        "POST",
        &format!("/api/{method}"),
        &format!("X-API-Key: {key}\r\n"),
        &body.to_string(),
    )
    .await?;
    let v: Value = serde_json::from_str(&text).with_context(|| format!("API {method}: {text}"))?;
    anyhow::ensure!(
        status == 200 && v.get("error").is_none(),
        "API {method}: {status} {v}"
    );
    Ok(v)
}

/// One value of `/metrics` (the exact name with labels): 0 when the series
/// is absent, `None` when the server does not answer.
pub async fn metric(addr: SocketAddr, name: &str) -> Option<f64> {
    let (_, text) = request(addr, "GET", "/metrics", "", "").await.ok()?;
    Some(
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(0.0),
    )
}
