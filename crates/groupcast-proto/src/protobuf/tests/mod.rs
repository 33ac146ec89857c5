//! Tests of the protobuf encoding: shared helpers, and a protobuf writer
//! with the schema's field numbers typed in again ([`wire`]).
//!
//! * `cases`: one command of every method, in JSON, as prost values and
//!   as hand-written bytes.
//! * `decode`: commands (frames, lengths, data, garbage).
//! * `encode`: replies and pushes.
//! * `schema_numbers`: every result field Groupcast sets, against the
//!   schema's field numbers.

use std::sync::Arc;

use serde_json::value::RawValue;

use super::decode_commands;
use crate::client::{self, RawJson};

mod cases;
mod decode;
mod encode;
mod schema_numbers;

fn raw(s: &str) -> RawJson {
    Arc::from(RawValue::from_string(s.to_owned()).unwrap())
}

/// A hand-written protobuf writer with the schema's field numbers typed
/// in again: it checks the derive attributes, which a round trip through
/// the same types could not.
pub mod wire {
    pub fn varint(mut v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return out;
            }
            out.push(b | 0x80);
        }
    }
    /// A varint field (uint32, uint64, int32, int64, bool).
    pub fn uint(field: u32, v: u64) -> Vec<u8> {
        [varint(u64::from(field) << 3), varint(v)].concat()
    }
    /// A length-delimited field (string, bytes, message, map entry).
    pub fn bytes(field: u32, b: &[u8]) -> Vec<u8> {
        [
            varint((u64::from(field) << 3) | 2),
            varint(b.len() as u64),
            b.to_vec(),
        ]
        .concat()
    }
    pub fn str(field: u32, s: &str) -> Vec<u8> {
        bytes(field, s.as_bytes())
    }
    /// A `map<string, string>` entry.
    pub fn entry(field: u32, k: &str, v: &str) -> Vec<u8> {
        bytes(field, &[str(1, k), str(2, v)].concat())
    }
    /// One message with its varint length prefix.
    pub fn frame(message: &[u8]) -> Vec<u8> {
        [varint(message.len() as u64), message.to_vec()].concat()
    }
}

/// The model has no `PartialEq` (`RawValue` has none): compare the
/// derived `Debug` output, which shows every field.
fn same(a: &client::Command, b: &client::Command) {
    assert_eq!(format!("{a:#?}"), format!("{b:#?}"));
}

fn decode_one(frame: &[u8]) -> client::Command {
    let mut cmds = decode_commands(frame).unwrap();
    assert_eq!(cmds.len(), 1);
    cmds.pop().unwrap()
}
