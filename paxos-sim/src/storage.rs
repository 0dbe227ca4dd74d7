//! A simulated replica's storage: paxos-log's real [`FileLog`] on that
//! replica's own simulated disk ([`SimFs`]), or paxos-nvm's real
//! [`NvmStorage`] on its own simulated persistent memory ([`SimRegion`]);
//! and paxos-log's real checkpoint store on the disk.
//!
//! Nothing here re-implements storage: appends, syncs (group commits),
//! recovery after a crash, checkpoints and their verification are the
//! production code; the media under them are simulated, lose what was not
//! synced (or flushed and fenced) when they crash, and can tear writes.

use paxos_core::{DurableState, PersistEntry, Slot};
use paxos_log::checkpoint::CheckpointStore;
use paxos_log::fs::SharedFs;
use paxos_log::sim_fs::SimFs;
use paxos_log::{
    CorruptionPolicy, Damage, FileLog, LogOptions, ReplicaStorage, StorageError, WriterMode,
};
use paxos_nvm::{NvmOptions, NvmStorage, SimRegion};
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

/// Bytes of each simulated persistent-memory region.
pub const REGION_BYTES: usize = 4 << 20;

/// The log of one running replica incarnation.
#[derive(Debug)]
pub enum SimLog {
    /// The segmented file log, in its inline (thread-free) mode.
    File(FileLog),
    /// The persistent-memory log, committing in groups.
    Nvm(NvmStorage),
}

impl SimLog {
    /// Opens (recovers) the file log on `fs`; returns it with the state it
    /// recovered.
    pub fn open(fs: &SimFs) -> Result<(SimLog, DurableState), StorageError> {
        let shared: SharedFs = Arc::new(fs.clone());
        let options = LogOptions {
            segment_bytes: SEGMENT_BYTES,
            // No writer thread, no clock: the simulator decides when the
            // queued appends are written and synced.
            writer: WriterMode::Inline,
            // Damage is salvaged and repaired from the peers, as in
            // production.
            on_corruption: CorruptionPolicy::Salvage,
            // Segments are not preallocated, as in production (the option
            // is off by default). With half the disks preallocating, 2000
            // seeds found no storage failure but moved two seeds onto
            // checker limits (an unforced leader change after a heal, a
            // linearizability search out of budget): see docs/BENCHMARKS.md.
            preallocate_segments: false,
            ..LogOptions::default()
        };
        let (log, state) = FileLog::open_with(shared, Path::new(LOG_DIR), options)?;
        Ok((SimLog::File(log), state))
    }

    /// Opens (recovers) the persistent-memory log on `region`, formatting
    /// it on first use.
    pub fn open_nvm(
        region: &SimRegion,
        formatted: bool,
    ) -> Result<(SimLog, DurableState), StorageError> {
        let options = NvmOptions {
            region_bytes: REGION_BYTES as u64,
            // A fixed id: formatting must not read the clock.
            log_id: Some(0x5157_5045_524c_4f47),
            // Appends wait for a group commit, as they do for the file log:
            // a crash can lose (or tear) what was not yet committed.
            max_group_appends: paxos_nvm::storage::MAX_GROUP_APPENDS,
            on_corruption: CorruptionPolicy::Salvage,
            ..NvmOptions::default()
        };
        let name = "simulated persistent memory".to_string();
        let region = Box::new(region.clone());
        let (log, state) = if formatted {
            NvmStorage::open_region(region, &options, name)?
        } else {
            NvmStorage::format_region(region, &options, name)?
        };
        Ok((SimLog::Nvm(log), state))
    }

    /// Queues one persist's entries; returns its sequence number.
    pub fn append(&self, entries: &[PersistEntry]) -> Result<u64, StorageError> {
        match self {
            SimLog::File(log) => log.append(entries),
            SimLog::Nvm(log) => log.append(entries),
        }
    }

    /// Whether the log has room (an nvm region nearly full says so; the
    /// file log always has room): the node holds writes while it is full.
    pub fn space(&self) -> paxos_log::LogSpace {
        match self {
            SimLog::File(log) => paxos_log::ReplicaStorage::space(log),
            SimLog::Nvm(log) => paxos_log::ReplicaStorage::space(log),
        }
    }

    /// Writes and syncs everything appended so far (one group commit, the
    /// production code path); returns the durable sequence number.
    pub fn sync(&self) -> Result<u64, StorageError> {
        match self {
            SimLog::File(log) => log.sync_queued(),
            SimLog::Nvm(log) => log.commit_pending(),
        }
    }

    /// What recovery found damaged (kept on record until cleared).
    pub fn damage(&self) -> Vec<Damage> {
        match self {
            SimLog::File(log) => log.recovery_damage(),
            SimLog::Nvm(log) => log.recovery_damage(),
        }
    }

    /// Forgets the damage record (the node repaired).
    pub fn clear_damage(&self) -> Result<(), StorageError> {
        match self {
            SimLog::File(log) => ReplicaStorage::clear_damage(log),
            SimLog::Nvm(log) => ReplicaStorage::clear_damage(log),
        }
    }

    /// Lets the log stop keeping values up to `through` in memory.
    pub fn release_memory_through(&self, through: Slot) {
        match self {
            SimLog::File(log) => log.release_memory_through(through),
            SimLog::Nvm(log) => ReplicaStorage::release_memory_through(log, through),
        }
    }

    /// One chunk of the accepted decrees `from ..= through`, read back from
    /// wherever the backend keeps them (the production read path).
    pub fn read_decrees(
        &self,
        from: Slot,
        through: Slot,
        max_decrees: usize,
        max_bytes: usize,
    ) -> Result<Vec<paxos_core::Accepted>, StorageError> {
        match self {
            SimLog::File(log) => log.read_decrees(from, through, max_decrees, max_bytes),
            SimLog::Nvm(log) => log.read_decrees(from, through, max_decrees, max_bytes),
        }
    }

    /// The state as of every append (durable or not): what a core restarted
    /// in place must start from.
    pub fn state(&self) -> DurableState {
        match self {
            SimLog::File(log) => log.state(),
            SimLog::Nvm(log) => log.state(),
        }
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
