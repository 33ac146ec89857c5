//! Push encoders: `{"push":{"channel":..,<kind>:{..}}}`, no id.
//!
//! Each returns the encoded JSON object, so a fan-out encodes once per
//! channel and shares the bytes with every subscriber ([`encode_pub_push`]
//! borrows the publication through [`PubView`], copying nothing).

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::value::RawValue;

use super::{is_false, is_zero_u64, ClientInfo, SubscribeResult};

/// Push envelope: `{"push":{"channel":..,<kind>:{..}}}`.
#[derive(Debug, Serialize)]
struct PushEnvelope<'a, T: Serialize> {
    push: PushBody<'a, T>,
}

#[derive(Debug, Serialize)]
struct PushBody<'a, T: Serialize> {
    #[serde(skip_serializing_if = "str::is_empty")]
    channel: &'a str,
    #[serde(flatten)]
    body: T,
}

fn encode_push<T: Serialize>(channel: &str, body: T) -> Vec<u8> {
    serde_json::to_vec(&PushEnvelope {
        push: PushBody { channel, body },
    })
    .expect("push types always serialize")
}

/// Borrowed view of a publication, for encoding without copies.
#[derive(Debug, Clone, Copy)]
pub struct PubView<'a> {
    /// Raw JSON of the data (already validated when it entered the system).
    pub data: &'a RawValue,
    pub offset: u64,
    pub info: Option<&'a ClientInfo>,
    pub tags: &'a BTreeMap<String, String>,
    /// `data` is a Fossil delta (a JSON string of it) against the
    /// subscription's previous publication.
    pub delta: bool,
}

#[derive(Serialize)]
struct PubRef<'a> {
    data: &'a RawValue,
    #[serde(skip_serializing_if = "is_false")]
    delta: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    info: Option<&'a ClientInfo>,
    #[serde(skip_serializing_if = "is_zero_u64")]
    offset: u64,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    tags: &'a BTreeMap<String, String>,
}

#[derive(Serialize)]
struct PubKind<'a> {
    #[serde(rename = "pub")]
    publication: PubRef<'a>,
}

/// Encode `{"push":{"channel":C,"pub":{...}}}` once for a whole fan-out.
pub fn encode_pub_push(channel: &str, p: PubView<'_>) -> Vec<u8> {
    encode_push(
        channel,
        PubKind {
            publication: PubRef {
                data: p.data,
                delta: p.delta,
                info: p.info,
                offset: p.offset,
                tags: p.tags,
            },
        },
    )
}

#[derive(Serialize)]
struct InfoWrap<'a> {
    info: &'a ClientInfo,
}
#[derive(Serialize)]
struct JoinKind<'a> {
    join: InfoWrap<'a>,
}
#[derive(Serialize)]
struct LeaveKind<'a> {
    leave: InfoWrap<'a>,
}

/// `{"push":{"channel":C,"join":{"info":{...}}}}`
pub fn encode_join_push(channel: &str, info: &ClientInfo) -> Vec<u8> {
    encode_push(
        channel,
        JoinKind {
            join: InfoWrap { info },
        },
    )
}

/// `{"push":{"channel":C,"leave":{"info":{...}}}}`
pub fn encode_leave_push(channel: &str, info: &ClientInfo) -> Vec<u8> {
    encode_push(
        channel,
        LeaveKind {
            leave: InfoWrap { info },
        },
    )
}

#[derive(Serialize)]
struct CodeReason<'a> {
    code: u32,
    reason: &'a str,
}
#[derive(Serialize)]
struct UnsubKind<'a> {
    unsubscribe: CodeReason<'a>,
}

/// `{"push":{"channel":C,"unsubscribe":{"code":..,"reason":..}}}`
pub fn encode_unsubscribe_push(channel: &str, code: u32, reason: &str) -> Vec<u8> {
    encode_push(
        channel,
        UnsubKind {
            unsubscribe: CodeReason { code, reason },
        },
    )
}

#[derive(Serialize)]
struct SubscribeKind<'a> {
    subscribe: &'a SubscribeResult,
}

/// `{"push":{"channel":C,"subscribe":{...}}}`: a server-side subscription.
pub fn encode_subscribe_push(channel: &str, result: &SubscribeResult) -> Vec<u8> {
    encode_push(channel, SubscribeKind { subscribe: result })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::client::RawJson;
    use serde_json::json;

    fn raw(s: &str) -> RawJson {
        Arc::from(RawValue::from_string(s.to_string()).unwrap())
    }

    #[test]
    fn pushes_have_the_protocol_shape() {
        let tags = BTreeMap::new();
        let info = ClientInfo {
            user: "u".into(),
            client: "c".into(),
            conn_info: Some(raw(r#"{"n":1}"#)),
            chan_info: None,
        };
        let data = raw(r#"{"x":1}"#);
        let p = encode_pub_push(
            "news",
            PubView {
                data: &data,
                offset: 4,
                info: Some(&info),
                tags: &tags,
                delta: false,
            },
        );
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&p).unwrap(),
            json!({"push":{"channel":"news","pub":{"data":{"x":1},"offset":4,"info":{"user":"u","client":"c","conn_info":{"n":1}}}}})
        );
        let j = encode_join_push("news", &info);
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&j).unwrap()["push"]["join"]["info"]
                ["user"],
            "u"
        );
        let u = encode_unsubscribe_push("news", 2000, "server unsubscribe");
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&u).unwrap(),
            json!({"push":{"channel":"news","unsubscribe":{"code":2000,"reason":"server unsubscribe"}}})
        );
    }
}
