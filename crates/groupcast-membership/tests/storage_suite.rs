//! openraft's storage conformance suite on the redb log store and state
//! machine.

use groupcast_membership::store::{self, LogStore, StateMachineStore};
use groupcast_membership::types::{StorageError, TypeConfig};
use openraft::testing::{StoreBuilder, Suite};

struct RedbBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for RedbBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let (log, sm) = store::open(&dir.path().join("raft.redb"))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(RedbBuilder).unwrap();
}
