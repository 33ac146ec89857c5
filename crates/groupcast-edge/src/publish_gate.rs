//! The gate every client publication passes, whatever path it takes (the
//! Centrifugo session in JSON or protobuf, the raw relay): the publication
//! size limit, then the namespace's `publish_proxy` (invariant 8 in
//! `docs/architecture.md`). Both sessions call [`check`], so they cannot
//! drift. The server API is the backend itself and does not pass here, as
//! in Centrifugo. `docs/backends.md` ("publish") is the user's account.
//!
//! With a publish proxy, the backend decides instead of the namespace's
//! `allow_publish_*`:
//!
//! * Data that is portable JSON goes to it as `data`. Anything else (a
//!   protobuf client's binary data, a relay binary frame, relay text that
//!   is not JSON or that strict decoders refuse) goes as `b64data`, and
//!   only to a proxy configured with `binary = true`: a backend that reads
//!   `data` alone would answer `{}` to it and let it through unread (issue
//!   25: HTML in JSON with a lone surrogate escape went out unescaped).
//!   Without `binary`, such a publish is refused, [`Refusal::NotJson`]
//!   (107; the relay closes with 3501), unasked.
//! * The answer's `data` replaces the publication with that JSON, its
//!   `b64data` with those bytes, whatever the original was (relay text
//!   answered with UTF-8 `b64data` stays text). Both at once, `b64data`
//!   that is not base64, or `data` that strict decoders refuse is an answer
//!   the edge cannot use: [`Refusal::Failed`] (100). `"b64data": ""` and
//!   `"data": null` count as absent. The replacement meets the size limit
//!   again.
//!
//! Refusals made here are counted in
//! `groupcast_publish_proxy_refusals_total{reason}` (`binary_not_accepted`,
//! `unusable_answer`); the proxy's own answers and failures in
//! `groupcast_proxy_requests_total{proxy="publish"}`, over-size data in
//! `groupcast_limit_hits_total`.

use axum::http::HeaderMap;
use base64::Engine as _;
use groupcast_core::{ChannelOptions, Payload};
use serde_json::Value;

use crate::proxy::{Answer, Proxy};
use crate::state::EdgeState;

/// Who publishes, as the proxy is told (the fields every proxy request
/// starts with).
pub struct Publisher<'a> {
    /// The connection's client id.
    pub client: &'a str,
    /// `websocket`, `http_stream` or `sse`.
    pub transport: &'static str,
    /// The user id; `""` for an anonymous connection.
    pub user: &'a str,
    /// `json`, `protobuf` or `relay`.
    pub protocol: &'static str,
    /// `json`, `binary` or `raw`.
    pub encoding: &'static str,
    /// What the proxies forward of the connection's upgrade request.
    pub headers: &'a HeaderMap,
}

/// A publication that may go out.
#[derive(Debug)]
pub enum Passed {
    /// No publish proxy: the namespace's `allow_publish_*` decide (the
    /// caller's check, which differs between sessions).
    Unproxied(Payload),
    /// The backend accepted: `data` is the client's, or its replacement.
    Proxied { data: Payload, skip_history: bool },
}

/// Why a publication may not go out.
#[derive(Debug, PartialEq)]
pub enum Refusal {
    /// Over the namespace's publication size (106; relay: 1009).
    TooBig,
    /// Not JSON, and the proxy does not take `b64data` (107; relay: 3501).
    NotJson,
    /// The backend's `error` (as is; relay: 3507 "<message> (<code>)").
    Backend { code: u32, message: String },
    /// The backend's `disconnect` (its code and reason, on every path).
    Disconnect { code: u16, reason: String },
    /// No usable answer: the proxy failed, or answered what the edge
    /// cannot use (100; relay: 3004).
    Failed,
}

/// Checks `data` for a publication on `channel` (namespace options
/// `opts`) by `who`.
pub async fn check(
    state: &EdgeState,
    opts: &ChannelOptions,
    channel: &str,
    who: Publisher<'_>,
    data: Payload,
) -> Result<Passed, Refusal> {
    if !state.check_publication_size(opts, data.len()) {
        return Err(Refusal::TooBig);
    }
    let Some(proxy) = state.proxies.get(&opts.publish_proxy) else {
        return Ok(Passed::Unproxied(data));
    };
    let mut body = serde_json::json!({
        "client": who.client,
        "transport": who.transport,
        "protocol": who.protocol,
        "encoding": who.encoding,
        "user": who.user,
        "channel": channel,
    });
    match &data {
        Payload::Json(raw) => {
            body["data"] = serde_json::from_str::<Value>(raw.get()).map_err(|_| Refusal::Failed)?;
        }
        Payload::Text(_) | Payload::Binary(_) if !proxy.config.binary => {
            refused("binary_not_accepted");
            return Err(Refusal::NotJson);
        }
        Payload::Text(t) => body["b64data"] = b64(t.as_bytes()).into(),
        Payload::Binary(b) => body["b64data"] = b64(b).into(),
    }
    let result = ask(&proxy, body, who.headers).await?;
    let skip_history = result.get("skip_history").and_then(Value::as_bool) == Some(true);
    let data = match replacement(&result, &data) {
        Ok(Some(new)) => new,
        Ok(None) => data,
        Err(why) => {
            refused("unusable_answer");
            tracing::warn!(proxy = %proxy.config.name, channel, why, "publish proxy answer not used");
            return Err(Refusal::Failed);
        }
    };
    if !state.check_publication_size(opts, data.len()) {
        return Err(Refusal::TooBig);
    }
    Ok(Passed::Proxied { data, skip_history })
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn refused(reason: &'static str) {
    metrics::counter!("groupcast_publish_proxy_refusals_total", "reason" => reason).increment(1);
}

async fn ask(proxy: &Proxy, body: Value, headers: &HeaderMap) -> Result<Value, Refusal> {
    match proxy.call("publish", &body, headers).await {
        Ok(Answer::Result(r)) => Ok(r),
        Ok(Answer::Error { code, message }) => Err(Refusal::Backend { code, message }),
        Ok(Answer::Disconnect { code, reason }) => Err(Refusal::Disconnect { code, reason }),
        Err(_) => Err(Refusal::Failed),
    }
}

/// What the proxy's `result` puts in place of `original`: `None` to keep
/// it; `Err` says why the answer cannot be used.
fn replacement(result: &Value, original: &Payload) -> Result<Option<Payload>, &'static str> {
    let data = result.get("data").filter(|v| !v.is_null());
    let b64data = match result.get("b64data") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(_) => return Err("b64data is not a string"),
    };
    match (data, b64data) {
        (None, None) => Ok(None),
        (Some(_), Some(_)) => Err("both data and b64data"),
        (Some(d), None) => serde_json::value::to_raw_value(d)
            .ok()
            .and_then(|raw| Payload::json(raw.into()))
            .map(Some)
            .ok_or("data is not portable JSON"),
        (None, Some(s)) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(|_| "b64data is not base64")?;
            Ok(Some(match (original, String::from_utf8(bytes)) {
                // Relay text stays text (or JSON) when the backend's bytes
                // are text.
                (Payload::Text(_), Ok(text)) => Payload::from_text(&text),
                (_, Ok(text)) => Payload::Binary(text.into_bytes().into()),
                (_, Err(e)) => Payload::Binary(e.into_bytes().into()),
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn json_payload(v: Value) -> Payload {
        Payload::json(serde_json::value::to_raw_value(&v).unwrap().into()).unwrap()
    }

    fn kind(p: &Payload) -> String {
        match p {
            Payload::Json(r) => format!("json {}", r.get()),
            Payload::Text(t) => format!("text {t}"),
            Payload::Binary(b) => format!("binary {b:?}"),
        }
    }

    #[test]
    fn the_answer_s_data_or_b64data_replaces_the_publication_whatever_it_was() {
        let json_pub = json_payload(json!({"a": 1}));
        let binary_pub = Payload::Binary(vec![0xff, 0].into());
        let text_pub = Payload::Text("hi there".into());
        let ab = b64(b"ab");
        let json_ab = b64(br#"{"x":1}"#);
        for (original, result, want) in [
            (&json_pub, json!({}), None),
            (&json_pub, json!({"data": null, "b64data": ""}), None),
            (&binary_pub, json!({"skip_history": true}), None),
            (
                &json_pub,
                json!({"data": {"b": 2}}),
                Some(r#"json {"b":2}"#),
            ),
            (&binary_pub, json!({"data": "t"}), Some(r#"json "t""#)),
            (&json_pub, json!({"b64data": ab}), Some("binary b\"ab\"")),
            (&binary_pub, json!({"b64data": ab}), Some("binary b\"ab\"")),
            (&text_pub, json!({"b64data": ab}), Some("text ab")),
            (
                &text_pub,
                json!({"b64data": json_ab}),
                Some(r#"json {"x":1}"#),
            ),
            (
                &text_pub,
                json!({"b64data": b64(&[0xff])}),
                Some("binary b\"\\xff\""),
            ),
        ] {
            let got = replacement(&result, original).unwrap();
            assert_eq!(got.as_ref().map(kind).as_deref(), want, "{result}");
        }
    }

    #[test]
    fn answers_the_edge_cannot_use_are_refused() {
        let p = Payload::Binary(vec![1].into());
        for (result, why) in [
            (
                json!({"data": 1, "b64data": b64(b"x")}),
                "both data and b64data",
            ),
            (json!({"b64data": "%%%"}), "b64data is not base64"),
            (json!({"b64data": 7}), "b64data is not a string"),
        ] {
            assert_eq!(replacement(&result, &p).unwrap_err(), why, "{result}");
        }
    }
}
