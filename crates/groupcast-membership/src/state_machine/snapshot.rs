//! Reading a snapshot: the current format, or the one the first release
//! wrote (read with the newer fields empty).

use std::collections::{BTreeMap, VecDeque};

use serde::Deserialize;

use super::{ChannelState, EdgeState, State};
use crate::types::Removal;

/// The state as the first release stored it in snapshots (the fields of
/// [`State`] up to `removal_seq`): a snapshot taken by an older replica is
/// read into the current state with the newer fields empty.
#[derive(Deserialize)]
struct StateV1 {
    edges: BTreeMap<String, EdgeState>,
    channels: BTreeMap<String, ChannelState>,
    users: BTreeMap<String, BTreeMap<String, u64>>,
    removals: VecDeque<Removal>,
    removal_seq: u64,
}

impl State {
    /// Reads a snapshot, current or from the first release.
    pub fn decode_snapshot(bytes: &[u8]) -> Result<State, crate::codec::CodecError> {
        crate::codec::decode::<State>(bytes).or_else(|e| {
            let v1: StateV1 = crate::codec::decode(bytes).map_err(|_| e)?;
            Ok(State {
                edges: v1.edges,
                channels: v1.channels,
                users: v1.users,
                removals: v1.removals,
                removal_seq: v1.removal_seq,
                ..State::default()
            })
        })
    }
}
