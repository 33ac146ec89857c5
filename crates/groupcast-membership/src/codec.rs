//! The project's one binary codec (bincode 2 with serde), used for Raft log
//! entries, snapshots, the vote and every QUIC frame.
//!
//! bincode is kept behind these two functions so it can be swapped (the crate
//! is flagged unmaintained). Note: bincode cannot decode serde types that need
//! `deserialize_any` (untagged enums, `flatten`, `skip_serializing_if`), so
//! types sent through here use plain derives.

use serde::{de::DeserializeOwned, Serialize};

/// Encoding or decoding failed.
#[derive(Debug, thiserror::Error)]
#[error("codec: {0}")]
pub struct CodecError(String);

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Encodes `value`.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(value, config()).map_err(|e| CodecError(e.to_string()))
}

/// Decodes one value that must span all of `bytes`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, used) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| CodecError(e.to_string()))?;
    if used != bytes.len() {
        return Err(CodecError(format!(
            "{} trailing bytes after the value",
            bytes.len() - used
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects_junk() {
        let v = (7u64, "x".to_string(), vec![Some(1u8), None]);
        let bytes = encode(&v).unwrap();
        assert_eq!(decode::<(u64, String, Vec<Option<u8>>)>(&bytes).unwrap(), v);
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode::<(u64, String, Vec<Option<u8>>)>(&longer).is_err());
        assert!(decode::<(u64, String, Vec<Option<u8>>)>(&bytes[..bytes.len() - 1]).is_err());
    }
}
