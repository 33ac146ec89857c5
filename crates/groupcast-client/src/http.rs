//! The little HTTP the tools and tests need (the server API, `/metrics`,
//! readiness and monitoring endpoints), over reqwest: plain `http://`, one
//! connection per request (`Connection: close`, no pool, so nothing
//! outlives the caller's runtime), no system proxy.
//!
//! Headers are given the way they appear on the wire, `Name: value\r\n`
//! lines, so callers can pass what a test is about verbatim. A request
//! without a `Content-Type` says `application/json`.

use std::io::{Error, ErrorKind};
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_TYPE};
use reqwest::{Method, StatusCode};

/// One request to `addr` (`host:port`); the status and the body as text,
/// bounded by `timeout` in all.
pub async fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    let (status, body) = send(
        addr,
        method,
        path,
        headers,
        body.as_bytes().to_vec(),
        Some(timeout),
    )
    .await?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// One request to `addr` (`host:port`); the status and the body bytes
/// (chunked answers decoded). A `101 Switching Protocols` ends the exchange
/// at its head: `(101, [])`. `timeout` bounds the whole exchange; `None`
/// waits as long as the server takes.
pub async fn send(
    addr: &str,
    method: &str,
    path: &str,
    headers: &str,
    body: Vec<u8>,
    timeout: Option<Duration>,
) -> std::io::Result<(u16, Vec<u8>)> {
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|e| invalid(format!("method {method:?}: {e}")))?;
    let headers = parse_headers(headers)?;
    let client = reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .pool_max_idle_per_host(0)
        .tls_built_in_root_certs(false)
        .build()
        .map_err(|e| Error::other(format!("HTTP client: {e}")))?;
    let url = format!("http://{addr}{path}");
    let exchange = async {
        let response = client
            .request(method, &url)
            .headers(headers)
            .body(body)
            .send()
            .await
            .map_err(|e| failed(&url, e))?;
        let status = response.status();
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Ok((status.as_u16(), Vec::new()));
        }
        let body = response.bytes().await.map_err(|e| failed(&url, e))?;
        Ok((status.as_u16(), body.to_vec()))
    };
    match timeout {
        None => exchange.await,
        Some(t) => tokio::time::timeout(t, exchange)
            .await
            .map_err(|_| Error::new(ErrorKind::TimedOut, format!("HTTP: no answer in {t:?}")))?,
    }
}

/// `Name: value\r\n` lines as a header map, plus the defaults
/// (`Content-Type: application/json`, `Connection: close`) the caller did
/// not set.
fn parse_headers(text: &str) -> std::io::Result<HeaderMap> {
    let mut map = HeaderMap::new();
    for line in text.split("\r\n").filter(|l| !l.is_empty()) {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| invalid(format!("header line {line:?} has no `:`")))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|e| invalid(format!("header name {name:?}: {e}")))?;
        let value = HeaderValue::from_str(value.trim())
            .map_err(|e| invalid(format!("header {name} value {value:?}: {e}")))?;
        map.append(name, value);
    }
    if !map.contains_key(CONTENT_TYPE) {
        map.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    if !map.contains_key(CONNECTION) {
        map.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    Ok(map)
}

fn invalid(what: String) -> Error {
    Error::new(ErrorKind::InvalidInput, format!("HTTP: {what}"))
}

/// A reqwest error as an I/O error: a timeout stays a timeout, a refused
/// connection stays refused.
fn failed(url: &str, e: reqwest::Error) -> Error {
    let kind = if e.is_timeout() {
        ErrorKind::TimedOut
    } else if e.is_connect() {
        ErrorKind::ConnectionRefused
    } else {
        ErrorKind::Other
    };
    // reqwest's Display stops at the outermost error; the cause says why.
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    Error::new(kind, format!("HTTP {url}: {text}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_lines_parse_and_defaults_fill_in() {
        let map = parse_headers("X-API-Key: k\r\nAuthorization: apikey \r\n").unwrap();
        assert_eq!(map["x-api-key"], "k");
        assert_eq!(map["authorization"], "apikey");
        assert_eq!(map[CONTENT_TYPE], "application/json");
        assert_eq!(map[CONNECTION], "close");

        let map = parse_headers("Connection: Upgrade\r\nContent-Type: text/plain\r\n").unwrap();
        assert_eq!(map[CONNECTION], "Upgrade");
        assert_eq!(map[CONTENT_TYPE], "text/plain");

        assert_eq!(
            parse_headers("no colon\r\n").unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
    }

    #[tokio::test]
    async fn answers_and_refusals() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            s.write_all(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            )
            .await
            .unwrap();
        });
        let answer = request(&addr, "GET", "/x", "", "", Duration::from_secs(5)).await;
        assert_eq!(answer.unwrap(), (200, "ok".to_string()));
        server.await.unwrap();
        // Nothing listens there any more (the listener is dropped).
        let err = request(&addr, "GET", "/x", "", "", Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    }
}
