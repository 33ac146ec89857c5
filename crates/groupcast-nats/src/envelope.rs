//! The bytes Groupcast puts in a NATS message: one envelope format for live
//! and stored publications, joins and leaves. Binary, versioned, and
//! checked on decode (a NATS subject is reachable by any NATS client, so a
//! malformed message is dropped and counted, never trusted).
//!
//! ```text
//! byte 0      version (1)
//! byte 1      kind: 1 JSON publication, 2 text, 3 binary, 4 join, 5 leave
//! publications:
//!   byte 2    flags: 1 origin, 2 info, 4 tags, 8 excluded client
//!   u64 BE    origin (relay connection), when flagged
//!   u32 BE n, n bytes of ClientInfo JSON, when flagged
//!   u32 BE n, n bytes of tags JSON (object of strings), when flagged
//!   u32 BE n, n bytes of the excluded client id (UTF-8), when flagged
//!   rest      data (JSON text, UTF-8 text or raw bytes)
//! join/leave:
//!   rest      ClientInfo JSON
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use groupcast_core::{Payload, Publication};
use groupcast_proto::client::ClientInfo;
use thiserror::Error;

const VERSION: u8 = 1;
const KIND_JSON: u8 = 1;
const KIND_TEXT: u8 = 2;
const KIND_BINARY: u8 = 3;
const KIND_JOIN: u8 = 4;
const KIND_LEAVE: u8 = 5;
const F_ORIGIN: u8 = 1;
const F_INFO: u8 = 2;
const F_TAGS: u8 = 4;
const F_EXCLUDE: u8 = 8;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("envelope too short")]
    Truncated,
    #[error("unknown envelope version {0}")]
    Version(u8),
    #[error("unknown envelope kind {0}")]
    Kind(u8),
    #[error("invalid {0} in envelope")]
    Invalid(&'static str),
}

/// A decoded envelope.
#[derive(Debug)]
pub enum Envelope {
    Pub(Publication),
    Join(Arc<ClientInfo>),
    Leave(Arc<ClientInfo>),
}

/// Encode a publication (its offset is not part of it: the stream assigns it).
pub fn encode_pub(p: &Publication) -> Bytes {
    let (kind, data): (u8, &[u8]) = match &p.data {
        Payload::Json(r) => (KIND_JSON, r.get().as_bytes()),
        Payload::Text(t) => (KIND_TEXT, t.as_bytes()),
        Payload::Binary(b) => (KIND_BINARY, b),
    };
    let info = p
        .info
        .as_ref()
        .map(|i| serde_json::to_vec(i).expect("ClientInfo serializes"));
    let tags = (!p.tags.is_empty()).then(|| serde_json::to_vec(&p.tags).expect("tags serialize"));
    let mut flags = 0;
    if p.origin.is_some() {
        flags |= F_ORIGIN;
    }
    if info.is_some() {
        flags |= F_INFO;
    }
    if tags.is_some() {
        flags |= F_TAGS;
    }
    let exclude = p.exclude_client.as_ref().map(|c| c.as_bytes().to_vec());
    if exclude.is_some() {
        flags |= F_EXCLUDE;
    }
    let extra = [&info, &tags, &exclude]
        .iter()
        .map(|v| v.as_ref().map_or(0, |v| v.len() + 4))
        .sum::<usize>();
    let mut b = BytesMut::with_capacity(3 + 8 + extra + data.len());
    b.put_u8(VERSION);
    b.put_u8(kind);
    b.put_u8(flags);
    if let Some(o) = p.origin {
        b.put_u64(o);
    }
    for part in [&info, &tags, &exclude].into_iter().flatten() {
        b.put_u32(part.len() as u32);
        b.put_slice(part);
    }
    b.put_slice(data);
    b.freeze()
}

fn encode_presence(kind: u8, info: &ClientInfo) -> Bytes {
    let mut b = vec![VERSION, kind];
    serde_json::to_writer(&mut b, info).expect("ClientInfo serializes");
    Bytes::from(b)
}

pub fn encode_join(info: &ClientInfo) -> Bytes {
    encode_presence(KIND_JOIN, info)
}

pub fn encode_leave(info: &ClientInfo) -> Bytes {
    encode_presence(KIND_LEAVE, info)
}

struct Reader {
    b: Bytes,
}

impl Reader {
    fn take(&mut self, n: usize) -> Result<Bytes, EnvelopeError> {
        if self.b.len() < n {
            return Err(EnvelopeError::Truncated);
        }
        Ok(self.b.split_to(n))
    }
    fn u8(&mut self) -> Result<u8, EnvelopeError> {
        Ok(self.take(1)?[0])
    }
    fn u64(&mut self) -> Result<u64, EnvelopeError> {
        let b = self.take(8)?;
        Ok(u64::from_be_bytes(b[..].try_into().expect("8 bytes")))
    }
    fn chunk(&mut self) -> Result<Bytes, EnvelopeError> {
        let n = self.take(4)?;
        let n = u32::from_be_bytes(n[..].try_into().expect("4 bytes"));
        self.take(n as usize)
    }
}

fn info_from(b: &[u8]) -> Result<Arc<ClientInfo>, EnvelopeError> {
    serde_json::from_slice(b)
        .map(Arc::new)
        .map_err(|_| EnvelopeError::Invalid("client info"))
}

/// Decode an envelope. The payload is shared, not copied, for binary data.
pub fn decode(payload: Bytes) -> Result<Envelope, EnvelopeError> {
    let mut r = Reader { b: payload };
    let version = r.u8()?;
    if version != VERSION {
        return Err(EnvelopeError::Version(version));
    }
    let kind = r.u8()?;
    match kind {
        KIND_JOIN => return Ok(Envelope::Join(info_from(&r.b)?)),
        KIND_LEAVE => return Ok(Envelope::Leave(info_from(&r.b)?)),
        KIND_JSON | KIND_TEXT | KIND_BINARY => {}
        other => return Err(EnvelopeError::Kind(other)),
    }
    let flags = r.u8()?;
    let origin = if flags & F_ORIGIN != 0 {
        Some(r.u64()?)
    } else {
        None
    };
    let info = if flags & F_INFO != 0 {
        Some(info_from(&r.chunk()?)?)
    } else {
        None
    };
    let tags: BTreeMap<String, String> = if flags & F_TAGS != 0 {
        serde_json::from_slice(&r.chunk()?).map_err(|_| EnvelopeError::Invalid("tags"))?
    } else {
        BTreeMap::new()
    };
    let exclude_client = if flags & F_EXCLUDE != 0 {
        let c = r.chunk()?;
        let c = std::str::from_utf8(&c).map_err(|_| EnvelopeError::Invalid("excluded client"))?;
        Some(Arc::from(c))
    } else {
        None
    };
    let data = r.b;
    let data = match kind {
        KIND_JSON => {
            let raw: Box<serde_json::value::RawValue> =
                serde_json::from_slice(&data).map_err(|_| EnvelopeError::Invalid("JSON data"))?;
            Payload::json(Arc::from(raw)).ok_or(EnvelopeError::Invalid("JSON data"))?
        }
        KIND_TEXT => {
            let t = std::str::from_utf8(&data).map_err(|_| EnvelopeError::Invalid("text data"))?;
            Payload::Text(Arc::from(t))
        }
        _ => Payload::Binary(data),
    };
    Ok(Envelope::Pub(Publication {
        offset: 0,
        data,
        info,
        tags,
        origin,
        exclude_client,
        // Carried in a NATS header (PUBLISHED_AT_HEADER), not here.
        published_at_us: 0,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(p: &Publication) -> Publication {
        match decode(encode_pub(p)).unwrap() {
            Envelope::Pub(q) => q,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn publications_round_trip() {
        let mut p = Publication::new(Payload::from_text(r#"{"a":[1,2]}"#));
        assert_eq!(roundtrip(&p).data.to_json().get(), r#"{"a":[1,2]}"#);
        p.origin = Some(u64::MAX - 3);
        p.tags.insert("k".into(), "v é".into());
        p.info = Some(Arc::new(ClientInfo {
            user: "u".into(),
            client: "c".into(),
            ..Default::default()
        }));
        p.exclude_client = Some(Arc::from("client-é"));
        let q = roundtrip(&p);
        assert_eq!(q.origin, p.origin);
        assert_eq!(q.tags, p.tags);
        assert_eq!(q.info.unwrap().client, "c");
        assert_eq!(q.exclude_client.as_deref(), Some("client-é"));
        assert_eq!(
            roundtrip(&Publication::new(Payload::from_text("1"))).exclude_client,
            None
        );
        let t = roundtrip(&Publication::new(Payload::Text("not json".into())));
        assert!(matches!(t.data, Payload::Text(ref s) if &**s == "not json"));
        let bin = Bytes::from_static(&[0, 255, 1]);
        let b = roundtrip(&Publication::new(Payload::Binary(bin.clone())));
        assert!(matches!(b.data, Payload::Binary(ref x) if *x == bin));
    }

    #[test]
    fn join_and_leave_round_trip() {
        let info = ClientInfo {
            user: "u".into(),
            client: "c1".into(),
            ..Default::default()
        };
        assert!(matches!(decode(encode_join(&info)), Ok(Envelope::Join(i)) if i.client == "c1"));
        assert!(matches!(decode(encode_leave(&info)), Ok(Envelope::Leave(i)) if i.user == "u"));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let good = encode_pub(&Publication::new(Payload::from_text("1")));
        let cases: Vec<(Vec<u8>, EnvelopeError)> = vec![
            (vec![], EnvelopeError::Truncated),
            (vec![2, 1, 0], EnvelopeError::Version(2)),
            (vec![1, 9], EnvelopeError::Kind(9)),
            (vec![1, 1, F_ORIGIN, 0, 0], EnvelopeError::Truncated),
            (
                vec![1, 1, F_INFO, 0, 0, 0, 9, b'{'],
                EnvelopeError::Truncated,
            ),
            (vec![1, 1, 0, b'{'], EnvelopeError::Invalid("JSON data")),
            (vec![1, 2, 0, 0xff], EnvelopeError::Invalid("text data")),
            (vec![1, 4, b'x'], EnvelopeError::Invalid("client info")),
        ];
        for (bytes, want) in cases {
            assert_eq!(
                decode(Bytes::from(bytes.clone())).unwrap_err(),
                want,
                "{bytes:?}"
            );
        }
        for n in 0..good.len() {
            let _ = decode(good.slice(..n));
        }
    }
}
