//! Durable Raft storage on redb: the log store (log entries, vote, committed
//! index, purge point) and the state machine with its latest snapshot.
//!
//! One redb file per replica. Every log append, truncation, purge, vote and
//! snapshot is an fsynced redb transaction, so vote and log survive a crash;
//! only the committed index (an optimisation openraft may lose) is written
//! without fsync. The state machine lives in memory and is rebuilt at start
//! from the stored snapshot plus the committed log after it.

// openraft's traits fix the error type (`StorageError`, over 200 bytes);
// boxing it in our helpers would only add conversions at every trait method.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, OptionalSend, RaftLogId, RaftLogReader, RaftSnapshotBuilder,
    SnapshotMeta, StorageIOError, Vote,
};
use parking_lot::{Mutex, RwLock};
use redb::{Database, Durability, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::state_machine::State;
use crate::types::{CommandResult, LogId, NodeId, StorageError, StoredMembership, TypeConfig};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_PURGED: &str = "last_purged";
const KEY_SNAPSHOT: &str = "snapshot";

fn any(e: impl std::fmt::Display) -> AnyError {
    AnyError::error(e.to_string())
}

fn read_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::read(any(e)).into()
}

/// A write the store could not make (e.g. `No space left on device`):
/// logged and counted here, once per failure. redb commits a transaction
/// whole or not at all, so the log on disk stays as it was.
fn write_failed(e: impl std::fmt::Display) -> AnyError {
    tracing::error!(error = %e, "membership: a write to the Raft store failed");
    metrics::counter!("groupcast_membership_storage_write_errors_total").increment(1);
    any(e)
}

fn write_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write(write_failed(e)).into()
}

fn logs_read_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::read_logs(any(e)).into()
}

fn logs_write_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_logs(write_failed(e)).into()
}

/// Opens (creating if needed) the replica's redb file and returns its log
/// store and state machine.
pub fn open(path: &Path) -> Result<(LogStore, StateMachineStore), StorageError> {
    let db = Arc::new(Database::create(path).map_err(write_err)?);
    {
        let tx = db.begin_write().map_err(write_err)?;
        tx.open_table(LOG).map_err(write_err)?;
        tx.open_table(META).map_err(write_err)?;
        tx.commit().map_err(write_err)?;
    }
    let log = LogStore { db: db.clone() };
    let sm = StateMachineStore::open(db)?;
    Ok((log, sm))
}

fn get_meta<T: for<'de> Deserialize<'de>>(
    db: &Database,
    key: &str,
) -> Result<Option<T>, StorageError> {
    let tx = db.begin_read().map_err(read_err)?;
    let table = tx.open_table(META).map_err(read_err)?;
    match table.get(key).map_err(read_err)? {
        Some(v) => Ok(Some(codec::decode(v.value()).map_err(read_err)?)),
        None => Ok(None),
    }
}

fn put_meta<T: Serialize>(
    db: &Database,
    key: &str,
    value: &T,
    durability: Durability,
) -> Result<(), StorageError> {
    let bytes = codec::encode(value).map_err(write_err)?;
    let mut tx = db.begin_write().map_err(write_err)?;
    tx.set_durability(durability);
    {
        let mut table = tx.open_table(META).map_err(write_err)?;
        table.insert(key, bytes.as_slice()).map_err(write_err)?;
    }
    tx.commit().map_err(write_err)
}

/// The Raft log, vote and committed index. Cheap to clone (it is also its
/// own log reader).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError> {
        let tx = self.db.begin_read().map_err(logs_read_err)?;
        let table = tx.open_table(LOG).map_err(logs_read_err)?;
        let start = match range.start_bound() {
            Bound::Included(i) => Bound::Included(*i),
            Bound::Excluded(i) => Bound::Excluded(*i),
            Bound::Unbounded => Bound::Unbounded,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Bound::Included(*i),
            Bound::Excluded(i) => Bound::Excluded(*i),
            Bound::Unbounded => Bound::Unbounded,
        };
        let mut out = Vec::new();
        for item in table.range::<u64>((start, end)).map_err(logs_read_err)? {
            let (_, v) = item.map_err(logs_read_err)?;
            out.push(codec::decode(v.value()).map_err(logs_read_err)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId> = get_meta(&self.db, KEY_PURGED)?;
        let tx = self.db.begin_read().map_err(logs_read_err)?;
        let table = tx.open_table(LOG).map_err(logs_read_err)?;
        let last = match table.last().map_err(logs_read_err)? {
            Some((_, v)) => {
                let e: Entry<TypeConfig> = codec::decode(v.value()).map_err(logs_read_err)?;
                Some(*e.get_log_id())
            }
            None => last_purged,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        put_meta(&self.db, KEY_VOTE, vote, Durability::Immediate)
            .map_err(|e| StorageIOError::write_vote(any(e)).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        get_meta(&self.db, KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Losing the latest committed index in a crash is allowed: openraft
        // then re-learns it from the leader. So no fsync here.
        put_meta(&self.db, KEY_COMMITTED, &committed, Durability::None)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(get_meta::<Option<LogId>>(&self.db, KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let result = (|| {
            let tx = self.db.begin_write().map_err(logs_write_err)?;
            {
                let mut table = tx.open_table(LOG).map_err(logs_write_err)?;
                for entry in entries {
                    let bytes = codec::encode(&entry).map_err(logs_write_err)?;
                    table
                        .insert(entry.get_log_id().index, bytes.as_slice())
                        .map_err(logs_write_err)?;
                }
            }
            tx.commit().map_err(logs_write_err)
        })();
        match &result {
            Ok(()) => callback.log_io_completed(Ok(())),
            Err(e) => callback.log_io_completed(Err(std::io::Error::other(e.to_string()))),
        }
        result
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let tx = self.db.begin_write().map_err(logs_write_err)?;
        {
            let mut table = tx.open_table(LOG).map_err(logs_write_err)?;
            table
                .retain_in(log_id.index.., |_, _| false)
                .map_err(logs_write_err)?;
        }
        tx.commit().map_err(logs_write_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let bytes = codec::encode(&log_id).map_err(logs_write_err)?;
        let tx = self.db.begin_write().map_err(logs_write_err)?;
        {
            let mut meta = tx.open_table(META).map_err(logs_write_err)?;
            meta.insert(KEY_PURGED, bytes.as_slice())
                .map_err(logs_write_err)?;
            let mut table = tx.open_table(LOG).map_err(logs_write_err)?;
            table
                .retain_in(..=log_id.index, |_, _| false)
                .map_err(logs_write_err)?;
        }
        tx.commit().map_err(logs_write_err)
    }
}

/// What the state machine holds besides the data.
#[derive(Debug, Clone, Default)]
struct Applied {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    state: State,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, openraft::BasicNode>,
    data: Vec<u8>,
}

struct SmInner {
    db: Arc<Database>,
    applied: RwLock<Applied>,
    snapshot: Mutex<Option<StoredSnapshot>>,
    snapshots_built: Mutex<u64>,
}

/// The state machine. Cheap to clone; the server reads it for queries.
#[derive(Clone)]
pub struct StateMachineStore {
    inner: Arc<SmInner>,
}

impl StateMachineStore {
    fn open(db: Arc<Database>) -> Result<Self, StorageError> {
        let snapshot: Option<StoredSnapshot> = get_meta(&db, KEY_SNAPSHOT)?;
        let applied = match &snapshot {
            Some(s) => Applied {
                last_applied: s.meta.last_log_id,
                membership: s.meta.last_membership.clone(),
                state: State::decode_snapshot(&s.data)
                    .map_err(|e| StorageIOError::read_snapshot(Some(s.meta.signature()), any(e)))?,
            },
            None => Applied::default(),
        };
        Ok(StateMachineStore {
            inner: Arc::new(SmInner {
                db,
                applied: RwLock::new(applied),
                snapshot: Mutex::new(snapshot),
                snapshots_built: Mutex::new(0),
            }),
        })
    }

    /// Runs `f` on the current state (as applied on this replica).
    pub(crate) fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.inner.applied.read().state)
    }

    /// The applied index and a digest of the state at that index: replicas
    /// that applied the same index must report the same digest.
    pub fn digest(&self) -> (Option<u64>, u64) {
        use std::hash::{Hash, Hasher};
        let a = self.inner.applied.read();
        let bytes = codec::encode(&a.state).unwrap_or_default();
        // SipHash with fixed keys: the same in every process of one build.
        let mut h = std::hash::DefaultHasher::new();
        bytes.hash(&mut h);
        (a.last_applied.map(|l| l.index), h.finish())
    }

    fn save_snapshot(&self, s: StoredSnapshot) -> Result<(), StorageError> {
        put_meta(&self.inner.db, KEY_SNAPSHOT, &s, Durability::Immediate)
            .map_err(|e| StorageIOError::write_snapshot(Some(s.meta.signature()), any(e)))?;
        *self.inner.snapshot.lock() = Some(s);
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (last_applied, membership, data) = {
            let a = self.inner.applied.read();
            let data =
                codec::encode(&a.state).map_err(|e| StorageIOError::read_state_machine(any(e)))?;
            (a.last_applied, a.membership.clone(), data)
        };
        let n = {
            let mut n = self.inner.snapshots_built.lock();
            *n += 1;
            *n
        };
        let snapshot_id = match last_applied {
            Some(l) => format!("{}-{}-{n}", l.leader_id, l.index),
            None => format!("--{n}"),
        };
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: membership,
            snapshot_id,
        };
        self.save_snapshot(StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        })?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let a = self.inner.applied.read();
        Ok((a.last_applied, a.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut a = self.inner.applied.write();
        let mut results = Vec::new();
        for entry in entries {
            a.last_applied = Some(entry.log_id);
            results.push(match entry.payload {
                EntryPayload::Blank => CommandResult::None,
                EntryPayload::Normal(cmd) => a.state.apply(&cmd),
                EntryPayload::Membership(m) => {
                    a.membership = StoredMembership::new(Some(entry.log_id), m);
                    CommandResult::None
                }
            });
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let state = State::decode_snapshot(&data)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), any(e)))?;
        {
            let mut a = self.inner.applied.write();
            a.last_applied = meta.last_log_id;
            a.membership = meta.last_membership.clone();
            a.state = state;
        }
        self.save_snapshot(StoredSnapshot {
            meta: meta.clone(),
            data,
        })
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(self.inner.snapshot.lock().clone().map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}
