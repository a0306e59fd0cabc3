//! openraft's storage conformance suite, run against the redb stores.

use openraft::testing::{StoreBuilder, Suite};

use crate::{LogStore, StateMachineStore, StorageError, TypeConfig};

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (log, sm) = crate::open(dir.path()).map_err(|e| {
            openraft::StorageIOError::<crate::NodeId>::read(openraft::AnyError::new(&e))
        })?;
        Ok((dir, log, sm))
    }
}

#[test]
fn passes_openraft_storage_suite() -> Result<(), StorageError> {
    Suite::test_all(Builder)
}
