//! Event proxies: client events sent to the application backend over HTTP,
//! in Centrifugo's proxy format, so a backend written for Centrifugo's
//! proxy works unchanged (docs/backends.md).
//!
//! A proxy is a named `[[proxies]]` entry (endpoint, timeout, headers to
//! forward). `client.connect_proxy`, `refresh_proxy`, `rpc_proxy`,
//! `send_proxy` and each namespace's `subscribe_proxy`, `sub_refresh_proxy`
//! and `publish_proxy` name the entry an event goes to. The backend answers one of:
//!
//! * `{"result": {...}}`: the event goes ahead, shaped by the result;
//! * `{"error": {"code": N, "message": "..."}}`: the client's command gets
//!   that error (N in 400–1999, the application's range, as Centrifugo
//!   requires);
//! * `{"disconnect": {"code": N, "reason": "..."}}`: the connection closes
//!   with that code (3000–4999).
//!
//! A backend that is slow (past the proxy's `timeout`), unreachable, or
//! answers anything but 200 with one of those objects fails the event with
//! error 100 "internal" (the SDKs retry); nothing hangs. Every call is
//! counted in `groupcast_proxy_requests_total{proxy, outcome}` and timed in
//! `groupcast_proxy_duration_seconds{proxy}`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderName};
use serde::Deserialize;
use serde_json::Value;

use crate::config::ProxyConfig;

/// Largest proxy answer read, in bytes: a backend cannot make the edge
/// buffer more.
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// What the backend decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Result(Value),
    Error { code: u32, message: String },
    Disconnect { code: u16, reason: String },
}

/// Why there is no decision (the client gets 100 "internal").
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProxyError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("unreachable: {0}")]
    Unreachable(String),
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("bad answer: {0}")]
    BadAnswer(String),
}

impl ProxyError {
    fn outcome(&self) -> &'static str {
        match self {
            ProxyError::Timeout(_) => "timeout",
            ProxyError::Unreachable(_) => "unreachable",
            ProxyError::Status(_) => "bad_status",
            ProxyError::BadAnswer(_) => "bad_answer",
        }
    }
}

#[derive(Deserialize)]
struct Envelope {
    result: Option<Value>,
    error: Option<ErrorObject>,
    disconnect: Option<DisconnectObject>,
}

#[derive(Deserialize)]
struct ErrorObject {
    code: u32,
    #[serde(default)]
    message: String,
    // Centrifugo's `temporary`: accepted, not used.
    #[serde(default, rename = "temporary")]
    _temporary: bool,
}

#[derive(Deserialize)]
struct DisconnectObject {
    code: u32,
    #[serde(default)]
    reason: String,
    // Older Centrifugo versions: accepted, the code decides.
    #[serde(default, rename = "reconnect")]
    _reconnect: bool,
}

/// Reads a backend's answer (the body of a 200).
pub fn parse_answer(body: &[u8]) -> Result<Answer, ProxyError> {
    let bad = |why: String| ProxyError::BadAnswer(why);
    let env: Envelope =
        serde_json::from_slice(body).map_err(|e| bad(format!("not a proxy answer: {e}")))?;
    match (env.result, env.error, env.disconnect) {
        (_, _, Some(d)) => {
            let code = u16::try_from(d.code)
                .ok()
                .filter(|c| (3000..=4999).contains(c))
                .ok_or_else(|| bad(format!("disconnect code {} not in 3000..=4999", d.code)))?;
            let reason = if d.reason.is_empty() {
                "disconnect".to_string()
            } else {
                d.reason
            };
            // A close frame holds 123 bytes of reason; keep well within.
            let reason = crate::conn::cut_reason(reason, 100);
            Ok(Answer::Disconnect { code, reason })
        }
        (_, Some(e), None) if (400..=1999).contains(&e.code) => Ok(Answer::Error {
            code: e.code,
            message: e.message,
        }),
        (_, Some(e), None) => Err(bad(format!("error code {} not in 400..=1999", e.code))),
        (Some(r), None, None) if r.is_object() => Ok(Answer::Result(r)),
        (Some(_), None, None) => Err(bad("result is not an object".into())),
        (None, None, None) => Err(bad("none of result, error, disconnect".into())),
    }
}

/// One configured backend endpoint.
pub struct Proxy {
    pub config: ProxyConfig,
    http_headers: Vec<HeaderName>,
    client: reqwest::Client,
}

impl Proxy {
    /// POSTs `body` for event `event` (`connect`, `subscribe`, ...) with the
    /// allowed headers of the client's upgrade request.
    pub async fn call(
        &self,
        event: &'static str,
        body: &Value,
        upgrade_headers: &HeaderMap,
    ) -> Result<Answer, ProxyError> {
        let started = Instant::now();
        let outcome = self.exchange(body, upgrade_headers).await;
        let label = match &outcome {
            Ok(Answer::Result(_)) => "ok",
            Ok(Answer::Error { .. }) => "error",
            Ok(Answer::Disconnect { .. }) => "disconnect",
            Err(f) => f.outcome(),
        };
        metrics::counter!("groupcast_proxy_requests_total", "proxy" => event, "outcome" => label)
            .increment(1);
        metrics::histogram!("groupcast_proxy_duration_seconds", "proxy" => event)
            .record(started.elapsed().as_secs_f64());
        if let Err(f) = &outcome {
            tracing::warn!(proxy = %self.config.name, event, endpoint = %self.config.endpoint, error = %f, "event proxy failed");
        }
        outcome
    }

    async fn exchange(
        &self,
        body: &Value,
        upgrade_headers: &HeaderMap,
    ) -> Result<Answer, ProxyError> {
        let mut req = self
            .client
            .post(&self.config.endpoint)
            .header("Content-Type", "application/json")
            .body(body.to_string());
        for name in &self.http_headers {
            for v in upgrade_headers.get_all(name) {
                req = req.header(name.clone(), v.clone());
            }
        }
        let timeout = self.config.timeout;
        let exchange = async {
            let mut resp = req.send().await.map_err(|e| {
                ProxyError::Unreachable(
                    std::error::Error::source(&e)
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| e.to_string()),
                )
            })?;
            let status = resp.status().as_u16();
            if status != 200 {
                return Err(ProxyError::Status(status));
            }
            let mut body = Vec::new();
            while let Some(chunk) = resp
                .chunk()
                .await
                .map_err(|e| ProxyError::BadAnswer(e.to_string()))?
            {
                if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                    return Err(ProxyError::BadAnswer(format!(
                        "answer over {MAX_RESPONSE_BYTES} bytes"
                    )));
                }
                body.extend_from_slice(&chunk);
            }
            parse_answer(&body)
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ProxyError::Timeout(timeout))?
    }
}

/// Every `[[proxies]]` entry by name, sharing one HTTP client (keep-alive
/// connections to the backends).
#[derive(Default)]
pub struct Proxies {
    by_name: HashMap<String, Arc<Proxy>>,
    /// Union of the entries' `http_headers`: what a session keeps of its
    /// upgrade request.
    forwarded: Vec<HeaderName>,
}

impl Proxies {
    /// Builds the entries; `Err` names the bad setting.
    pub fn new(configs: &[ProxyConfig]) -> Result<Proxies, String> {
        let headers = check(configs)?;
        if configs.is_empty() {
            return Ok(Proxies::default());
        }
        let client = http_client()?;
        let mut by_name = HashMap::new();
        let mut forwarded: Vec<HeaderName> = Vec::new();
        for (c, names) in configs.iter().zip(headers) {
            for n in &names {
                if !forwarded.contains(n) {
                    forwarded.push(n.clone());
                }
            }
            let proxy = Proxy {
                config: c.clone(),
                http_headers: names,
                client: client.clone(),
            };
            by_name.insert(c.name.clone(), Arc::new(proxy));
        }
        Ok(Proxies { by_name, forwarded })
    }

    /// The entry called `name`; `None` for the empty name (no proxy).
    pub fn get(&self, name: &str) -> Option<Arc<Proxy>> {
        if name.is_empty() {
            return None;
        }
        self.by_name.get(name).cloned()
    }

    /// The headers of an upgrade request some proxy forwards.
    pub fn keep_headers(&self, headers: &HeaderMap) -> HeaderMap {
        let mut kept = HeaderMap::new();
        for name in &self.forwarded {
            for v in headers.get_all(name) {
                kept.append(name.clone(), v.clone());
            }
        }
        kept
    }
}

/// The HTTP client for backends (proxies, webhooks): keep-alive
/// connections, TLS through rustls with ring and the system's roots.
pub fn http_client() -> Result<reqwest::Client, String> {
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("backend TLS: {e}"))?
    .with_root_certificates(native_roots())
    .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .pool_idle_timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| format!("backend HTTP client: {e}"))
}

/// Checks every entry (names unique, endpoint, timeout, header names)
/// without building anything; each entry's forwarded header names.
pub fn check(configs: &[ProxyConfig]) -> Result<Vec<Vec<HeaderName>>, String> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(configs.len());
    for c in configs {
        let field = |f: &str| format!("proxies[{:?}].{f}", c.name);
        if c.name.is_empty() {
            return Err("proxies: every entry needs a name".into());
        }
        if !seen.insert(c.name.as_str()) {
            return Err(format!("proxies: name {:?} used twice", c.name));
        }
        let url =
            reqwest::Url::parse(&c.endpoint).map_err(|e| format!("{}: {e}", field("endpoint")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("{}: use http:// or https://", field("endpoint")));
        }
        if c.timeout.is_zero() || c.timeout > Duration::from_secs(60) {
            return Err(format!("{}: between 1ms and 60s", field("timeout")));
        }
        let names = c
            .http_headers
            .iter()
            .map(|h| {
                HeaderName::try_from(h.as_str())
                    .map_err(|_| format!("{}: {h:?} is not a header name", field("http_headers")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        out.push(names);
    }
    Ok(out)
}

fn native_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    roots
}

/// What a connect proxy's `result` grants a plain-WebSocket connection (a relay route's, a
/// Socket.IO namespace's): `user`, `meta`, `target` and the string list under `key`
/// (`channels`, `rooms`). Absent or mistyped fields grant nothing.
pub struct Granted {
    pub user: String,
    pub meta: Option<std::sync::Arc<serde_json::value::RawValue>>,
    pub target: Option<String>,
}

impl Granted {
    pub fn of(result: &Value) -> Granted {
        Granted {
            user: result
                .get("user")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            meta: raw_json(result.get("meta")),
            target: result
                .get("target")
                .and_then(Value::as_str)
                .map(String::from),
        }
    }
}

/// The strings of the array under `key` of a proxy's result (others are skipped).
pub fn strings(result: &Value, key: &str) -> Vec<String> {
    result
        .get(key)
        .and_then(Value::as_array)
        .map(|v| {
            v.iter()
                .filter_map(|c| c.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// `v` as shared raw JSON (metadata sent with every event); `None` for absent or `null`.
pub fn raw_json(v: Option<&Value>) -> Option<std::sync::Arc<serde_json::value::RawValue>> {
    v.filter(|v| !v.is_null())
        .and_then(|v| serde_json::value::to_raw_value(v).ok())
        .map(std::sync::Arc::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_as_centrifugo_defines_them() {
        let r = parse_answer(br#"{"result":{"user":"42"}}"#).unwrap();
        assert_eq!(r, Answer::Result(serde_json::json!({"user":"42"})));
        let e = parse_answer(br#"{"error":{"code":1000,"message":"no","temporary":true}}"#);
        assert_eq!(
            e.unwrap(),
            Answer::Error {
                code: 1000,
                message: "no".into()
            }
        );
        let d = parse_answer(br#"{"disconnect":{"code":4500,"reason":"banned"}}"#).unwrap();
        assert_eq!(
            d,
            Answer::Disconnect {
                code: 4500,
                reason: "banned".into()
            }
        );
        for bad in [
            &b"not json"[..],
            br#"{}"#,
            br#"{"result":[1]}"#,
            br#"{"disconnect":{"code":1000}}"#,
            br#"{"error":{"code":109,"message":"token expired"}}"#,
        ] {
            assert!(
                matches!(parse_answer(bad), Err(ProxyError::BadAnswer(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_long_disconnect_reason_is_cut_to_fit_a_close_frame_on_a_char_boundary() {
        // 99 ASCII bytes, then 'é' (2 bytes) across the 100-byte mark.
        let reason = format!("{}é and more", "r".repeat(99));
        let body = serde_json::json!({"disconnect": {"code": 4001, "reason": reason}});
        match parse_answer(body.to_string().as_bytes()).unwrap() {
            Answer::Disconnect { code, reason } => {
                assert_eq!(code, 4001);
                assert_eq!(reason, "r".repeat(99), "cut before the character");
            }
            other => panic!("{other:?}"),
        }
        let body = serde_json::json!({"disconnect": {"code": 4001}});
        assert_eq!(
            parse_answer(body.to_string().as_bytes()).unwrap(),
            Answer::Disconnect {
                code: 4001,
                reason: "disconnect".into()
            },
            "an empty reason gets one (clients treat empty as terminal)"
        );
    }

    #[test]
    fn bad_entries_are_refused_naming_the_setting() {
        let entry = |name: &str, endpoint: &str| ProxyConfig {
            name: name.into(),
            endpoint: endpoint.into(),
            ..Default::default()
        };
        let err = |c: Vec<ProxyConfig>| Proxies::new(&c).err().unwrap();
        assert!(err(vec![entry("", "http://a")]).contains("needs a name"));
        assert!(err(vec![entry("a", "ftp://a")]).contains("proxies[\"a\"].endpoint"));
        assert!(err(vec![entry("a", "nonsense")]).contains("endpoint"));
        assert!(err(vec![entry("a", "http://a"), entry("a", "http://b")]).contains("twice"));
        let mut slow = entry("a", "http://a");
        slow.timeout = Duration::ZERO;
        assert!(err(vec![slow]).contains("timeout"));
        let mut hdr = entry("a", "http://a");
        hdr.http_headers = vec!["bad header".into()];
        assert!(err(vec![hdr]).contains("http_headers"));
    }
}
