//! paxos-nvm: a crash-consistent persistent-memory log in the style of
//! PoWER (OSDI'25), and [`NvmStorage`], a replica storage backend on it.
//!
//! # Layers
//!
//! - [`region`]: a byte region with PM semantics (`read`, `write`,
//!   `flush(range)`, `fence`). Backends: real persistent memory (DAX,
//!   `MAP_SYNC`, `clwb`/`clflushopt`/`clflush` + `sfence`), an ordinary
//!   file (msync), emulated persistent memory on request (an ordinary
//!   shared mapping flushed like PM, never msynced; see below), or volatile
//!   memory (NOT durable; benchmarks). The choice is detected at open,
//!   logged, and exposed as [`RegionKind`].
//! - [`sim_region`]: [`SimRegion`], simulated persistent memory with the
//!   crash model below and media faults, deterministic from a seed, for the
//!   simulator and the fault tests.
//! - [`log`]: [`PmLog`], the circular log: `setup`, `start` (recover),
//!   `recover` (around damaged metadata), `tentative_append`, `commit`,
//!   `advance_head`, `read`, `head_tail_capacity`.
//! - [`record`]: framing above the log (`len | crc32c | seq | payload`,
//!   the CRC also covering the record's position and sequence number): the
//!   log checks its metadata only; records check their own data.
//! - [`codec`]: `PersistEntry` batches, head advances and state snapshots
//!   as payloads.
//! - [`record_index`]: where the records between head and tail are and
//!   the highest slot each accepted, so a truncation finds how far the
//!   head may move without reading the log.
//! - [`storage`]: [`NvmStorage`], implementing
//!   [`paxos_log::ReplicaStorage`]: truncation advances the head;
//!   compaction by snapshot is the fallback.
//! - [`crash_model`]: a recording region and the PM crash model used by
//!   the crash-state exploration tests.
//!
//! # Using it as replica storage
//!
//! ```
//! use paxos_log::ReplicaStorage;
//! use paxos_nvm::{Backend, NvmOptions, NvmStorage};
//! # let dir = tempfile::tempdir().unwrap();
//! # let path = dir.path().join("replica.nvm");
//! let options = NvmOptions {
//!     region_bytes: 64 << 20,  // fixed at creation; an existing file keeps its size
//!     backend: Backend::Auto,  // PM if the file is on DAX, else msync
//!     ..NvmOptions::default()  // commits every append before it returns
//! };
//! let (storage, recovered) = NvmStorage::open(&path, options).unwrap();
//! // `recovered` is the DurableState to start paxos-core from.
//! assert_eq!(recovered, Default::default());
//! let seq = storage.append(&[paxos_core::PersistEntry::Commit(paxos_core::Slot::ZERO)]).unwrap();
//! assert_eq!(storage.durable_seq(), seq);
//! println!("durability: {}", storage.region_kind());
//! ```
//!
//! The region is one file, locked while open. Size it at several times the
//! live state (accepted decrees above the last truncation): truncations
//! keep the log bounded by moving its head (compaction by snapshot is the
//! fallback), and an append that cannot fit even after compaction fails
//! with `StorageError::Full`. Before that, once the live
//! log passes 7/16 of the region, `ReplicaStorage::space` reports
//! `LogSpace::Full` (appends still succeed) until a truncation brings it
//! to a quarter: the replica stops proposing and makes a checkpoint so it
//! can truncate (paxos-node's `Node::on_log_space`). Any `Io` or `Closed` error
//! from `append` means the durable state is unknown: stop the replica and
//! reopen. Group commit (`max_group_appends > 1`) defers the flush to
//! `wait_durable`/`commit_pending` or the n-th pending append.
//!
//! # Backends and emulated persistent memory
//!
//! [`Backend::Auto`] (the default) maps the file with `MAP_SYNC` whenever
//! the kernel allows it (a DAX file system) and the CPU has a flush
//! instruction, and then runs the real PM path: stores, `clwb` (else
//! `clflushopt`, else `clflush`) per cache line, `sfence`; no system call
//! on the commit path. Anywhere else it falls back to msync, which is
//! durable on every file system. [`Backend::MsyncFile`] forces msync.
//!
//! [`Backend::EmulatedPm`] is the PM path without persistent memory, like
//! PMDK under `PMEM_IS_PMEM_FORCE=1`: off DAX it maps the file shared
//! (tmpfs and disk file systems refuse `MAP_SYNC`), flushes with the same
//! instructions and never msyncs. It is **only as durable as the memory
//! behind the mapping**: on a file in `/dev/shm` every flushed store
//! survives the process being killed (`kill -9`; the pages belong to the
//! file), which `tests/kill_recovery.rs` checks, but nothing survives a
//! power loss or a reboot; on a disk file system the kernel writes the
//! pages back when it likes, in no order. It is chosen only when asked
//! (the option, or `PMEM_IS_PMEM_FORCE=1` with `Auto`, see
//! [`storage::PMEM_IS_PMEM_FORCE`]), is logged as a warning at every open,
//! reports [`RegionKind::is_durable`] false, and is refused on a CPU with
//! no flush instruction. It measures what the log costs on persistent
//! memory, and suits replicas that never lose power together.
//!
//! # Layout (see [`layout`])
//!
//! ```text
//!   0..64    global metadata: magic, version, region length, log-area
//!            offset, capacity, log id (u128), CRC64
//!  64..72    CDB: one aligned word, CDB_FALSE -> copy 0, CDB_TRUE -> copy 1
//!  72..112   damage record: damage salvaged and not cleared yet (all zero: none)
//! 128..160   log metadata copy 0: head (u128 virtual position), length, CRC64
//! 192..224   log metadata copy 1
//! 256..      log area, circular: virtual position p at 256 + p mod capacity
//! ```
//!
//! # Crash model
//!
//! After a crash, any subset of the stores not yet made durable (by a
//! flush of their range followed by a fence) may have persisted, and each
//! aligned 8-byte word is all or nothing. (An msync-backed file gives at
//! least this: msync returns once the pages are on disk, and an aligned
//! word never straddles a sector.)
//!
//! # Why recovery always finds the last commit
//!
//! A commit (or `advance_head`) (1) flushes the appended bytes, (2) writes
//! the new head and length into the *inactive* metadata copy and flushes
//! it, (3) fences, (4) stores the CDB word selecting that copy, flushes and
//! fences. Recovery reads the copy the CDB selects.
//!
//! - Until the CDB store persists, the CDB selects the old copy, which no
//!   step wrote, and the old committed bytes, which no step overwrote
//!   (appends go only past the committed tail and before the committed
//!   head plus capacity). Recovery yields the previous commit.
//! - The CDB store is one aligned word, so it persists whole or not at all.
//!   Once it has persisted, the copy it selects and the bytes that copy
//!   covers were made durable by the fence in (3), before the store was
//!   issued. Recovery yields the new commit.
//! - A torn or partial write can therefore only hit the inactive copy or
//!   bytes past the committed tail, which recovery never reads.
//!
//! The crash-state tests (`tests/crash_states.rs`) check exactly this:
//! they record every store, flush and fence, and recover from every (small
//! cases) or a sample of (larger cases) the images the model allows at
//! every prefix of random operation sequences, for the raw log and for
//! `NvmStorage` (head advances, compactions and group commits included). A test with the
//! fences removed shows the exploration does find torn states.
//! `tests/kill_recovery.rs` SIGKILLs real appending processes on a file
//! region (msync, and emulated PM on `/dev/shm`) and checks every
//! acknowledged append survives.
//!
//! Every open then *mirrors* the active metadata into the other copy (and
//! stores the CDB word again), so the inactive copy is never a leftover of
//! an earlier run describing bytes this run may overwrite; that is what
//! makes falling back to it safe when the active copy is damaged.
//!
//! # Recovery rules
//!
//! A crash is never damage: everything recovery reads was fenced before
//! the commit that covers it. Damage is a metadata or record check that
//! fails (CRC, an impossible value, a sequence number that does not follow
//! on, a word that cannot be read); each failing read is tried once more
//! first, since a transient fault passes. Then `NvmOptions::on_corruption`
//! decides: `Refuse` fails `open` with `StorageError::Corrupt`;
//! `Salvage` recovers around it and reports a `paxos_log::Damage`:
//!
//! - damaged CDB: the newer of the two copies that check out (nothing lost
//!   if both do); damaged active copy: its twin, the previous commit;
//! - damaged global metadata or both copies: nothing can be located; the
//!   region is formatted anew (everything is lost locally);
//! - a damaged record: the log is cut back to the end of the last good one.
//!
//! Before changing anything, salvage copies a file region aside
//! (`<file>.damaged`) and writes the damage record, which every later open
//! reports until the replica clears it after repairing from its peers.
//! See [`storage`].
//!
//! # Fault injection
//!
//! [`SimRegion`] (one per simulated replica) applies the crash model above
//! at [`SimRegion::crash`] (or mid-operation, [`SimRegion::crash_after`]),
//! and injects transient bit flips on read, latent unreadable (poisoned)
//! words, and media bit flips, with latency and counters, from one seed
//! ([`SimRegionFaults`], which by default injects nothing). `NvmStorage`
//! runs on it deterministically: it spawns no thread and reads no clock
//! (pass `NvmOptions::log_id`, or formatting draws an id from the clock).
//! The fault tests show each fault detected and salvaged or reported, and
//! run a randomized model check with a planted defect.
//!
//! # Storage on top of the log
//!
//! One append is one record (`len | crc32c | seq | batch of PersistEntry`). The
//! log never wraps over live data. An append that raises the truncation
//! point also carries the state's promise, commit index and truncation
//! point; once it is committed the head moves past every record whose
//! accepted entries are all truncated (a metadata swap: nothing is copied
//! on the replica's event loop). Only if a record holding a live slot
//! pins the head while the log passes half the capacity does the storage
//! write a snapshot record of the whole `DurableState`, commit it, and
//! advance the head to it. Every step is an append, a commit or a head
//! move, so a crash anywhere recovers the same state. See [`storage`].
//!
//! # Invariants
//!
//! - `head <= committed tail <= tentative tail <= head + capacity`: appends
//!   never overwrite live bytes.
//! - Positions only grow (except when salvage cuts the tail back to the end
//!   of the last good record); the active metadata copy is never written.
//! - Global metadata, CDB and active metadata are checked (magic, version,
//!   id, CRC64, sizes) on start; a mismatch is refused or salvaged and
//!   reported, never repaired silently. Committed records carry a crc32c
//!   (over position, sequence number, length and payload) checked on
//!   recovery.
//! - A failed flush poisons the log (the durable state is unknown) until it
//!   is reopened.
//! - `NvmStorage::append` is durable on return (without group commit);
//!   recovery rebuilds exactly the state the successful appends built, or,
//!   with damage reported, the state after a prefix of them.
//!
//! # Unsafe code
//!
//! Only in [`region`] (mmap with `MAP_SYNC`, raw slices over it, flush
//! instructions, `flock`), each block with a `// SAFETY:` comment. Miri is
//! not available here; everything else (layout, log, records, codec,
//! crash model, storage over [`region::VolatileRegion`]) is safe code over
//! byte vectors and is what the tests exercise without mmap.

pub mod codec;
pub mod crash_model;
pub mod layout;
pub mod log;
pub mod record;
pub mod record_index;
pub mod region;
pub mod sim_region;
pub mod storage;

#[cfg(test)]
mod fault_tests;

pub use log::{HeadTailCapacity, LogError, PmLog};
pub use record::RecordError;
pub use region::{FileRegion, PmRegion, RegionError, RegionKind, VolatileRegion};
pub use sim_region::{SimRegion, SimRegionCounters, SimRegionFaults};
pub use storage::{Backend, NvmOptions, NvmStats, NvmStorage};
