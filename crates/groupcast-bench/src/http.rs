//! The little HTTP the scenarios need: the server API and `/metrics`, one
//! request per connection (`Connection: close`), bounded at 10 s.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

/// One request, bounded at 10 s; the status and the body.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> anyhow::Result<(u16, String)> {
    let timeout = Duration::from_secs(10);
    Ok(
        groupcast_client::http::request(&addr.to_string(), method, path, headers, body, timeout)
            .await?,
    )
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
