//! openraft's storage conformance suite over the segment-file log store and the in-memory
//! state machine.

use bowline::raft::log_store::FileLogStore;
use bowline::raft::state_machine::StateMachineStore;
use bowline::raft::{StorageError, TypeConfig};
use openraft::testing::{StoreBuilder, Suite};

/// Builds a fresh sled database in a temp dir per suite case; the dir is the guard.
struct SledBuilder;

impl StoreBuilder<TypeConfig, FileLogStore, StateMachineStore, tempfile::TempDir> for SledBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, FileLogStore, StateMachineStore), StorageError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = sled::Config::new()
            .path(dir.path().join("db"))
            .open()
            .expect("open sled");
        let log = FileLogStore::open(&dir.path().join("raft-log"), &db, 1).expect("log store");
        let sm = StateMachineStore::open(&db, &dir.path().join("snapshots"))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn sled_stores_pass_the_openraft_storage_suite() {
    Suite::test_all(SledBuilder).expect("storage suite");
}
