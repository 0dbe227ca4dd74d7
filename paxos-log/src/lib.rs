//! paxos-log: durable storage for replicas without persistent memory.
//!
//! This crate provides [`ReplicaStorage`] (the trait paxos-core's persist
//! actions map onto), [`FileLog`] (a segmented, append-only file log with
//! group commit, prefix truncation and crash recovery) and
//! [`checkpoint`] (state-machine snapshots with per-block checksums).
//!
//! # On-disk format of the log
//!
//! All integers are little-endian. The log directory holds segment files
//! named `<first sequence number, 20 digits>.log`:
//!
//! ```text
//! segment header (32 B): magic "PXLOGSG1" | version u32 | 0 u32 | first_lsn u64 | 0 u32 | crc32c u32 (of bytes 0..28)
//! record (24 B header + payload):
//!   header_crc u32 (crc32c of header bytes 4..24) | payload_len u32 | kind u8 | flags u8 | 0 u16
//!   | lsn u64 | payload_crc u32 (crc32c of the payload) | payload
//! ```
//!
//! Kinds: 1 Promise (ballot), 2 Accept (slot, ballot, value), 3 Commit
//! (slot), 4 Truncate (slot), 5 State (promised ballot, commit index,
//! truncation point), 6 Empty. Each record carries its own slot and ballot.
//! One call to [`ReplicaStorage::append`] is one *append*: its entries become
//! records sharing the append's sequence number (lsn), the last one flagged
//! end-of-batch. Recovery applies an append only once its last record is
//! read, so an append is all or nothing.
//!
//! Every segment starts with a State record whose lsn is `first_lsn - 1`
//! summarising the promised ballot, commit index and truncation point as of
//! every earlier append. That is what lets whole old segments be deleted.
//!
//! # Durability argument
//!
//! - An append is reported durable (`durable_seq`, `wait_durable`) only
//!   after the writer thread wrote it and `fdatasync`ed the segment holding
//!   it, and after every earlier append was made durable the same way
//!   (appends are written in lsn order by one thread).
//! - On open, the parent of the log directory is fsynced, so the directory
//!   entry itself is durable before anything in it is relied on.
//! - A segment is created as `<name>.log.tmp` holding its header and State
//!   record, synced, renamed into place, and the directory synced, before
//!   any append is written to it. So a segment name that survives a crash
//!   names a complete header and State record, and the name survives.
//! - Before a new segment is created the previous one is synced, so every
//!   segment but the last is complete: only the last can have a torn tail.
//! - A segment is deleted only when it is not the last and every accept in
//!   it is at or below a truncation point that is already durable; its
//!   promises and commits are covered by the next segment's State record.
//!   Deletions go oldest first with a directory sync after each, so the
//!   surviving segments are always a contiguous run of lsns.
//! - A failed write or fsync stops the log for good (appends and waits
//!   return [`StorageError::Closed`]): after a failed fsync the kernel may
//!   have dropped the dirty pages, and retrying would report data durable
//!   that is not.
//!
//! # Recovery rules
//!
//! See [`recovery`]. In short: segments are replayed in order and must be
//! contiguous; an incomplete record or append (or an all-zero remainder) at
//! the end of the last segment is a torn tail and is cut off (truncate +
//! fsync); every other failed check — a checksum mismatch anywhere, a
//! short sealed segment, a gap, a bad sequence number — is
//! [`StorageError::Corrupt`] naming the file and offset, and the replica
//! refuses to start unless [`LogOptions::discard_corrupt_suffix`] ("rebuild
//! from a peer") is set. Recovery relies on the file system not exposing
//! garbage inside a record whose header reached the disk (ext4 data=ordered,
//! xfs); a payload that fails its checksum is always reported, never cut.
//!
//! # Invariants
//!
//! - An append reported durable survives any crash; recovery yields the
//!   state of some prefix of the appends that includes every durable one
//!   (never a hole, never a partial append).
//! - Sequence numbers are strictly increasing and continue across restarts:
//!   after recovery `durable_seq()` is the last recovered append.
//! - Corruption is never served or skipped silently.
//! - Memory is bounded: the writer queue by `max_queued_appends` and
//!   `max_queued_bytes` (appenders block), each flush by `max_flush_bytes`,
//!   the in-memory index of live accepted decrees (for `read_accepted`) by
//!   `max_index_bytes` (appends fail with `Full` until the replica
//!   truncates). The index shares the callers' `Bytes`, it does not copy
//!   values.
//!
//! # Using it in a node
//!
//! 1. On start, load the newest verified checkpoint
//!    ([`checkpoint::CheckpointStore::latest`]), then [`FileLog::open`] the
//!    log and hand the [`paxos_core::DurableState`] to paxos-core. The log's
//!    `truncated_through` never exceeds the newest finished checkpoint's
//!    slot if the node follows step 3; if it does (the newest checkpoint was
//!    lost or is corrupt), state must come from a peer.
//! 2. Map each `Action::Persist` to [`ReplicaStorage::append`] and report
//!    it persisted once [`ReplicaStorage::wait_durable`] returns (or
//!    `durable_seq()` passes its sequence number). `append` blocks only
//!    when the writer queue is full (backpressure).
//! 3. To checkpoint at slot S: snapshot the state machine, stream it into a
//!    [`checkpoint::CheckpointWriter`] on a background thread, and only
//!    after `finish` returns call [`ReplicaStorage::truncate_through`]`(S)`.
//! 4. Catch-up: serve [`ReplicaStorage::read_accepted`]; when it answers
//!    `OutOfRange` (the slots are truncated) stream the checkpoint with
//!    [`checkpoint::CheckpointStore::read_chunk`] instead.
//!
//! Only one process may open a log directory at a time; the crate does not
//! lock it, the node must (e.g. its own pid/lock file).
//!
//! # Group commit
//!
//! Appenders encode and checksum their records outside any lock, then take
//! a sequence number and queue the bytes under one short mutex. One writer
//! thread takes everything queued (up to `max_flush_bytes`), writes it with
//! one `write` per segment and one `fdatasync`, and publishes the new
//! `durable_seq`, waking every waiter whose append it covered. So N
//! concurrent appenders pay about one fsync per round, not N.
//! [`FileLog::stats`] counts appends, flushes, bytes and time in I/O.
//!
//! Fault injection: [`sim_fs::SimFs`] implements [`fs::FileSystem`] with a
//! disk that loses unsynced data and directory changes on a crash.

pub mod checkpoint;
pub mod codec;
pub mod fs;
mod log;
pub mod recovery;
pub mod sim_fs;
pub mod storage;

pub use log::{FileLog, LogOptions, LogStats, WriterMode};
pub use recovery::RecoveryReport;
pub use storage::{CorruptionPolicy, Damage, ReplicaStorage, StorageError};

#[cfg(test)]
mod tests;
