//! Publications and stream positions.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use groupcast_proto::client::{json_is_portable, ClientInfo, PublicationOut, RawJson};
use serde_json::value::RawValue;

/// Tag set on publications whose data arrived as a binary relay frame and is
/// carried base64-encoded in the JSON protocol.
pub const TAG_ENCODING: &str = "encoding";

/// What a publication carries. The JSON protocol needs JSON data; the raw
/// relay carries any text or binary frame. Each kind maps to both, so relay
/// and protocol clients share channels (see `docs/protocol.md`).
#[derive(Debug, Clone)]
pub enum Payload {
    /// Valid JSON (from the client protocol, the API, or a relay text frame that parses).
    Json(RawJson),
    /// A relay text frame that is not JSON: a JSON string for protocol clients.
    Text(Arc<str>),
    /// A relay binary frame or API `b64data`: base64 for protocol clients.
    Binary(Bytes),
}

impl Payload {
    /// JSON data from a client or the API, if strict decoders accept it too
    /// ([`json_is_portable`]); `None` means the caller must refuse it (or,
    /// for relay text, carry it as text), so no subscriber gets a push it
    /// cannot decode. Every JSON payload enters through here.
    pub fn json(raw: RawJson) -> Option<Payload> {
        json_is_portable(raw.get()).then_some(Payload::Json(raw))
    }

    /// Classify a relay text frame: JSON stays JSON, anything else is text
    /// (a JSON string for protocol clients). JSON that strict decoders refuse
    /// (`1e999`, lone surrogate escapes) counts as text, so it cannot break
    /// subscribers.
    pub fn from_text(text: &str) -> Payload {
        match serde_json::from_str::<Box<RawValue>>(text) {
            Ok(raw) if raw.get().len() == text.len() => {
                Payload::json(Arc::from(raw)).unwrap_or_else(|| Payload::Text(Arc::from(text)))
            }
            _ => Payload::Text(Arc::from(text)),
        }
    }

    /// Size in bytes of the carried data (for limits and metrics).
    pub fn len(&self) -> usize {
        match self {
            Payload::Json(r) => r.get().len(),
            Payload::Text(t) => t.len(),
            Payload::Binary(b) => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The data as JSON for the client protocol and the API.
    pub fn to_json(&self) -> RawJson {
        match self {
            Payload::Json(r) => r.clone(),
            Payload::Text(t) => json_string(t),
            Payload::Binary(b) => {
                use base64::Engine as _;
                json_string(&base64::engine::general_purpose::STANDARD.encode(b))
            }
        }
    }

    /// The frame a relay client receives: `(bytes, is_binary)`.
    pub fn to_relay(&self) -> (Bytes, bool) {
        match self {
            Payload::Json(r) => (Bytes::copy_from_slice(r.get().as_bytes()), false),
            Payload::Text(t) => (Bytes::copy_from_slice(t.as_bytes()), false),
            Payload::Binary(b) => (b.clone(), true),
        }
    }
}

/// `s` as a JSON string (quoted and escaped).
pub fn json_string(s: &str) -> RawJson {
    let quoted = serde_json::to_string(s).expect("strings serialize");
    Arc::from(RawValue::from_string(quoted).expect("a JSON string is valid JSON"))
}

/// One message in a channel.
#[derive(Debug, Clone)]
pub struct Publication {
    /// Position in the channel's stream; 0 when the channel keeps no history.
    pub offset: u64,
    pub data: Payload,
    /// Publisher, when a client published.
    pub info: Option<Arc<ClientInfo>>,
    pub tags: BTreeMap<String, String>,
    /// Connection that published it through the relay; that connection does
    /// not get its own frame back.
    pub origin: Option<u64>,
    /// Client id left out of the live fan-out, on every node (API
    /// `exclude_client`, client `publish` with `exclude_self`). History and
    /// recovery still return the publication to everyone, that client too.
    pub exclude_client: Option<Arc<str>>,
    /// When the publication was accepted, in microseconds since the Unix
    /// epoch, by the clock of the node that accepted it; 0 when unknown.
    /// Only for the delivery-latency metric: never sent to clients.
    pub published_at_us: u64,
}

impl Publication {
    /// A publication accepted now.
    pub fn new(data: Payload) -> Publication {
        Publication {
            offset: 0,
            data,
            info: None,
            tags: BTreeMap::new(),
            origin: None,
            exclude_client: None,
            published_at_us: now_us(),
        }
    }

    /// Seconds since it was accepted (0 if the clocks disagree), or `None`
    /// when unknown.
    pub fn age_seconds(&self) -> Option<f64> {
        (self.published_at_us > 0)
            .then(|| now_us().saturating_sub(self.published_at_us) as f64 / 1e6)
    }

    /// The JSON shape used in subscribe and history results.
    pub fn to_out(&self) -> PublicationOut {
        let mut tags = self.tags.clone();
        if matches!(self.data, Payload::Binary(_)) {
            tags.insert(TAG_ENCODING.into(), "base64".into());
        }
        PublicationOut {
            data: self.data.to_json(),
            info: self.info.as_deref().cloned(),
            offset: self.offset,
            tags,
        }
    }
}

/// A position in a channel's stream: the last offset seen and the stream's epoch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamPosition {
    pub offset: u64,
    pub epoch: String,
}

impl StreamPosition {
    /// Whether this position belongs to a stream of epoch `current`. An
    /// empty epoch matches any (Centrifugo's rule: an SDK with no saved
    /// position sends `epoch: ""`). The one place this rule lives: brokers
    /// and recovery ask here.
    pub fn epoch_matches(&self, current: &str) -> bool {
        self.epoch.is_empty() || self.epoch == current
    }
}

/// Microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_text_is_classified() {
        assert!(matches!(
            Payload::from_text(r#"{"type":"message"}"#),
            Payload::Json(_)
        ));
        assert!(matches!(Payload::from_text("hello"), Payload::Text(_)));
        assert!(
            matches!(Payload::from_text("6E6666"), Payload::Text(_)),
            "found by the relay_payload fuzzer"
        );
        assert_eq!(Payload::from_text("6E6666").to_json().get(), r#""6E6666""#);
        let lone = r#""5\udbbb""#;
        assert!(
            matches!(Payload::from_text(lone), Payload::Text(_)),
            "found by the relay_payload fuzzer"
        );
        let as_json = Payload::from_text(lone).to_json();
        assert_eq!(
            serde_json::from_str::<String>(as_json.get()).unwrap(),
            lone,
            "carried verbatim as a string"
        );
        assert_eq!(Payload::from_text("hello").to_json().get(), r#""hello""#);
        let (b, bin) = Payload::from_text(r#"{"a":1}"#).to_relay();
        assert_eq!((&b[..], bin), (&br#"{"a":1}"#[..], false));
        let p = Publication::new(Payload::Binary(Bytes::from_static(&[0, 255])));
        let out = p.to_out();
        assert_eq!(out.data.get(), r#""AP8=""#);
        assert_eq!(
            out.tags.get(TAG_ENCODING).map(String::as_str),
            Some("base64")
        );
    }
}
