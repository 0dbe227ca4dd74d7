//! paxos-log: durable storage for replicas without persistent memory.
//!
//! This crate provides [`ReplicaStorage`] (the trait paxos-core's persist
//! actions map onto), [`FileLog`] (a segmented, append-only file log with
//! group commit, prefix truncation and crash recovery that salvages around
//! damage and reports it as a [`Damage`]), [`checkpoint`] (state-machine
//! snapshots with per-block checksums), and [`sim_fs::SimFs`], a simulated
//! disk with crashes and media faults on which the deterministic simulator
//! runs the real log and checkpoints.
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
//! Version 1: the file ends where its last record ends (it grows with each
//! append). Version 2, a *preallocated* segment
//! ([`LogOptions::preallocate_segments`]): the file was made at its full
//! size, zero-filled, and appends overwrite the zeros in place; the zeros
//! after the last record are the end of its data. A record header is never
//! all zeros (its checksum is not, and a header of zeros is refused
//! whatever the checksum), so the first zero header after the data is
//! where the data ends. Readers that only know version 1 refuse version 2
//! as an unknown version rather than take its zeros for damage. A log may
//! hold segments of both versions (the option can change across restarts).
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
//! - An append is reported durable (`durable_seq`, `wait_durable`,
//!   `sync_queued`) only after the writer wrote it and `fdatasync`ed the
//!   segment holding it, and after every earlier append was made durable
//!   the same way (appends are written in lsn order by one writer: the
//!   writer thread, or in [`WriterMode::Inline`] whichever caller holds the
//!   writer's lock; both run the same group-commit code).
//! - On open, the parent of the log directory is fsynced, so the directory
//!   entry itself is durable before anything in it is relied on.
//! - A segment is created as `<name>.log.tmp` holding its header and State
//!   record, synced, renamed into place, and the directory synced, before
//!   any append is written to it. So a segment name that survives a crash
//!   names a complete header and State record, and the name survives.
//! - A preallocated segment starts as a spare, `spare-<n>.log.tmp`,
//!   zero-filled to the segment size (`fallocate`, then zeros written, so
//!   its blocks are allocated and written, not unwritten extents) and
//!   synced, ahead of time: by a thread of its own that keeps one spare
//!   ready (as etcd's WAL `filePipeline` does), or in [`WriterMode::Inline`]
//!   by the writer after a group commit is durable. At a roll the header
//!   and State record are written into the spare, synced, and the spare is
//!   renamed into place and the directory synced: the same steps and the
//!   same argument as above. Until that rename a spare is a `.log.tmp` file,
//!   which recovery removes, so a crash while a spare is made or waits
//!   loses nothing. After it, an append overwrites zeros inside the file's
//!   length, so its `fdatasync` has no size or allocation to journal.
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
//! fsync) silently: it was never synced, so never acknowledged, and a
//! crash alone never produces anything else. In a preallocated segment
//! (version 2) an all-zero remainder after the last complete append is
//! the end of its data, in any segment (a sealed one that lost appends to
//! zeros would leave a gap before the next segment's State record, which
//! is damage); an append cut short before it is torn in the last segment
//! and damage in a sealed one. A write in place is torn differently from
//! an append: sectors (512 bytes, the unit a disk writes whole on power
//! loss) of the unsynced write reach the disk in any order, so a later one
//! may have landed after an earlier one that did not. So in the last
//! preallocated segment a record that fails its checks is a torn write if
//! a piece of it lies in a sector that reads as zeros from that piece to
//! the sector's end (that sector never landed); the bytes from the end of
//! the last complete append to the last non-zero byte are then overwritten
//! with zeros and synced (not cut: the file keeps its length), so a later
//! torn write there finds only its own bytes and zeros. Every other failed
//! check — a
//! checksum mismatch anywhere, a sector that cannot be read (EIO), a short
//! sealed segment, a gap, a bad sequence number — is *damage*. A damaged
//! segment is read once more first (a transient fault passes, and is only
//! counted in [`RecoveryReport::transient_faults_cured`]). Then
//! [`LogOptions::on_corruption`] decides:
//!
//! - [`CorruptionPolicy::Refuse`] (default): `open` fails with
//!   [`StorageError::Corrupt`] naming the file and offset, changing nothing.
//! - [`CorruptionPolicy::Salvage`]: recovery keeps the longest valid prefix
//!   of appends, records the damage durably in the directory's
//!   `damage.report`, sets the damaged segment and every later one aside as
//!   `*.damaged` (ignored by later recoveries, kept for an operator), and
//!   the log continues after the prefix. The damage is reported as a
//!   [`Damage`] (where, why, the last append kept, whether acknowledged
//!   data may be lost) by [`ReplicaStorage::recovery_damage`] on this and
//!   every later open, until the replica calls
//!   [`ReplicaStorage::clear_damage`] after repairing itself from its
//!   peers: a crash during salvage or during the repair must not make the
//!   replica forget that it may have lost promises and votes.
//!
//! Recovery relies on the file system not exposing garbage inside a record
//! whose header reached the disk (ext4 data=ordered, xfs); a payload that
//! fails its checksum is always damage, never cut as torn. One limit: an
//! append whose bytes never reached their place but read back as zeros (a
//! misdirected write over never-written blocks) cannot be told from the
//! zeros a crash leaves past the end of a file, so at the very end of the
//! last segment it is cut as torn; telling them apart needs redundant
//! metadata the format does not have (TigerBeetle keeps a redundant ring of
//! headers for this). Preallocation widens that limit at the end of the
//! last segment: a lost write there always reads back as the zeros of the
//! fill; a damaged last record whose last piece is legitimately zero and
//! alone in its sector looks torn; and non-zero bytes past a torn spot are
//! taken as part of the torn write (a crash can land any sector of it), so
//! a flipped bit in the zeros of the last segment is zeroed, not reported.
//! Damage anywhere before the last complete append, in a sealed segment
//! (its zeros included), or in a record with no zero sector is still
//! damage.
//!
//! # Invariants
//!
//! - An append reported durable survives any crash; recovery yields the
//!   state of some prefix of the appends that includes every durable one
//!   (never a hole, never a partial append).
//! - Sequence numbers are strictly increasing and continue across restarts:
//!   after recovery `durable_seq()` is the last recovered append.
//! - Corruption is never served or skipped silently: it fails `open`, or
//!   is salvaged around and reported as [`Damage`] until cleared. The
//!   recovered state is always the state after some prefix of the appends
//!   (never a mix, never wrong data); only with damage reported may that
//!   prefix miss an append that was reported durable.
//! - Memory is bounded: the writer queue by `max_queued_appends` and
//!   `max_queued_bytes` (appenders block; in [`WriterMode::Inline`] they get
//!   `StorageError::Full` instead), each flush by `max_flush_bytes`,
//!   the in-memory index of live accepted decrees (for `read_accepted`) by
//!   `max_index_bytes` (appends fail with `Full` until the replica
//!   truncates). The index shares the callers' `Bytes`, it does not copy
//!   values, and it holds no value at or below the memory floor the
//!   replica sets with [`FileLog::release_memory_through`] (paxos-node
//!   sets it to what its core has let go of, so the index is never larger
//!   than the core's own retained log; the released values stay on disk
//!   until truncated, and [`ReplicaStorage::read_decrees`] reads them back
//!   from there for catch-up: one chunk of at most `max_decrees` slots,
//!   from the segments whose accept-slot range covers it).
//!
//! # Using it in a node
//!
//! 1. On start, load the newest verified checkpoint
//!    ([`checkpoint::CheckpointStore::latest`], or
//!    [`checkpoint::CheckpointStore::survey`], which never fails on damage),
//!    then [`FileLog::open`] the log and hand the
//!    [`paxos_core::DurableState`] to paxos-core. The log's
//!    `truncated_through` never exceeds the newest finished checkpoint's
//!    slot if the node follows step 3; if it does (the newest checkpoint was
//!    lost or is corrupt), state must come from a peer. If
//!    [`ReplicaStorage::recovery_damage`] reports damage that may have lost
//!    acknowledged data, the replica may have forgotten promises and votes:
//!    it must repair from its peers before it votes, then call
//!    [`ReplicaStorage::clear_damage`].
//! 2. Map each `Action::Persist` to [`ReplicaStorage::append`] and report
//!    it persisted once [`ReplicaStorage::wait_durable`] returns (or
//!    `durable_seq()` passes its sequence number). `append` blocks only
//!    when the writer queue is full (backpressure).
//! 3. To checkpoint at slot S: snapshot the state machine, stream it into a
//!    [`checkpoint::CheckpointWriter`] on a background thread, and only
//!    after `finish` returns call [`ReplicaStorage::truncate_through`]`(S)`.
//! 4. Catch-up: serve the core's `Action::ReadDecrees` with
//!    [`ReplicaStorage::read_decrees`] (one bounded chunk; the file log
//!    reads values released from memory back from the segments whose
//!    accept-slot range covers them, a slot's last record winning); when it
//!    answers `OutOfRange` (the slots are truncated) stream the checkpoint
//!    with [`checkpoint::CheckpointStore::read_chunk`] instead.
//!
//! Only one process may open a log directory at a time; the crate does not
//! lock it, the node must (e.g. its own pid/lock file).
//!
//! # Group commit
//!
//! Appenders encode and checksum their records outside any lock, then take
//! a sequence number and queue the bytes under one short mutex. The writer
//! takes everything queued (up to `max_flush_bytes`), writes it with one
//! `write` per segment and one `fdatasync`, and publishes the new
//! `durable_seq`, waking every waiter whose append it covered. So N
//! concurrent appenders pay about one fsync per round, not N.
//! [`FileLog::stats`] counts appends, flushes, bytes and time in I/O, and
//! keeps histograms ([`histogram::Log2Histogram`]) of fsync latency and of
//! appends per group commit.
//!
//! [`LogOptions::writer`] says who the writer is. [`WriterMode::Thread`]
//! (production): a dedicated thread, paced by `min_sync_interval`.
//! [`WriterMode::Inline`] (the deterministic simulator): no thread and no
//! clock; appends only queue, and [`FileLog::sync_queued`] (which
//! `wait_durable` calls when needed) runs one group commit on the calling
//! thread through the same `Writer::commit_batch` the thread runs, so the
//! simulator exercises the production write path and decides when syncs
//! happen. Dropping an inline log loses what is queued, like a crash.
//!
//! # Fault injection
//!
//! [`sim_fs::SimFs`] implements [`fs::FileSystem`] with a disk per
//! simulated replica that loses unsynced data and directory changes on a
//! crash (whole or torn), and injects, deterministically from
//! [`sim_fs::SimFaults::seed`]: bit flips on read and read errors
//! (transient: a re-read may pass), latent unreadable sectors and media bit
//! flips (latent: until overwritten), and misdirected writes (the intended
//! place keeps stale bytes, another place is clobbered). It models latency
//! ([`sim_fs::SimFs::latency_us`], [`sim_fs::SimFs::take_busy_us`]) and
//! counts what it injected ([`sim_fs::FaultCounters`]). The default injects
//! nothing. The crate's tests show each fault detected by the log's and
//! the checkpoints' checksums, never served, and run a randomized model
//! check of the log over a faulty disk (with a planted defect showing the
//! check can fail).

pub mod checkpoint;
pub mod codec;
pub mod fs;
pub mod histogram;
mod log;
pub mod recovery;
pub mod sim_fs;
mod spare;
pub mod storage;

pub use log::{FileLog, LogOptions, LogStats, WriterMode};
pub use recovery::RecoveryReport;
pub use storage::{
    CorruptionPolicy, Damage, DurabilityEvent, DurabilityListener, LogSpace, ReplicaStorage,
    StorageError,
};

#[cfg(test)]
mod tests;
