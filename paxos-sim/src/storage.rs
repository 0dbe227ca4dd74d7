//! A simulated replica's storage: paxos-log's real [`FileLog`] and
//! checkpoint store, on that replica's own simulated disk ([`SimFs`]).
//!
//! Nothing here re-implements storage: appends, syncs, recovery after a
//! crash, checkpoints and their verification are the production code; the
//! disk under them is simulated, loses what was not synced when it crashes,
//! and can be told to tear writes.

use paxos_core::{DurableState, PersistEntry};
use paxos_log::checkpoint::CheckpointStore;
use paxos_log::fs::SharedFs;
use paxos_log::sim_fs::SimFs;
use paxos_log::{FileLog, LogOptions, ReplicaStorage, StorageError, WriterMode};
use std::path::Path;
use std::sync::Arc;

/// Where the log lives on each simulated disk.
pub const LOG_DIR: &str = "/replica/log";
/// Where checkpoints live on each simulated disk.
pub const CHECKPOINT_DIR: &str = "/replica/checkpoints";

/// Checkpoint block size on simulated disks.
const CHECKPOINT_BLOCK_BYTES: u32 = 512;

/// Small segments, so that segment rolling and reclaiming happen in short
/// runs too.
const SEGMENT_BYTES: u64 = 64 * 1024;

/// The log of one running replica incarnation.
#[derive(Debug)]
pub struct SimLog {
    log: FileLog,
}

impl SimLog {
    /// Opens (recovers) the log on `fs`; returns it with the state it
    /// recovered.
    pub fn open(fs: &SimFs) -> Result<(SimLog, DurableState), StorageError> {
        let shared: SharedFs = Arc::new(fs.clone());
        let options = LogOptions {
            segment_bytes: SEGMENT_BYTES,
            // No writer thread, no clock: the simulator decides when the
            // queued appends are written and synced.
            writer: WriterMode::Inline,
            ..LogOptions::default()
        };
        let (log, state) = FileLog::open_with(shared, Path::new(LOG_DIR), options)?;
        Ok((SimLog { log }, state))
    }

    /// Queues one persist's entries; returns its sequence number.
    pub fn append(&self, entries: &[PersistEntry]) -> Result<u64, StorageError> {
        self.log.append(entries)
    }

    /// Writes and syncs everything appended so far (one group commit, the
    /// production code path); returns the durable sequence number.
    pub fn sync(&self) -> Result<u64, StorageError> {
        self.log.sync_queued()
    }

    /// The state as of every append (durable or not): what a core restarted
    /// in place must start from.
    pub fn state(&self) -> DurableState {
        self.log.state()
    }
}

/// Opens the checkpoint store on `fs`.
pub fn open_checkpoints(fs: &SimFs) -> Result<CheckpointStore, StorageError> {
    let shared: SharedFs = Arc::new(fs.clone());
    // Small blocks, so that multi-block checkpoints and chunked transfers
    // happen with a small simulated state.
    CheckpointStore::with_fs(
        shared,
        Path::new(CHECKPOINT_DIR),
        paxos_node::storage::CHECKPOINTS_KEPT,
        CHECKPOINT_BLOCK_BYTES,
    )
}
