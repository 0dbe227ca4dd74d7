//! paxos-log (being built; see ARCHITECTURE.md).
pub mod storage;
pub use storage::{ReplicaStorage, StorageError};
