//! [`NvmStorage`]: the persistent-memory log as a [`ReplicaStorage`] backend.
//!
//! Each `append` encodes its entries as one framed record and appends it
//! tentatively. By default (`max_group_appends == 1`) it commits before
//! returning, so `durable_seq` equals the last returned sequence number at
//! all times; the entries of one `append` share one commit (two fences).
//!
//! With group commit (`max_group_appends = n > 1`) up to `n` appends stay
//! pending and are committed together, by one metadata swap, when the
//! `n`-th arrives, when `wait_durable` asks for one of them, or on
//! [`NvmStorage::commit_pending`]. Pending appends are lost in a crash (or
//! when the storage is dropped) exactly like an unflushed write; they are
//! never reported durable before their commit.
//!
//! # Truncation advances the head
//!
//! Accepted entries at or below the truncation point are dead (a checkpoint
//! covers them); promises, commit indexes and truncation points are small
//! facts that only move forward. So a truncation frees space by moving the
//! head, not by copying what is live:
//!
//! 1. An append that raises the truncation point to `T` is written as a
//!    *head-advance* record ([`Payload::HeadAdvance`]): its entries, then
//!    the state's facts after them (`Promise(promised)`,
//!    `Commit(commit_index)`, `Truncate(T)`), and the position `h` the
//!    head moves to: the first record still holding an accepted slot above
//!    `T`, or this record if none does. A small index of the records from
//!    head to tail ([`RecordIndex`]: runs of records, each with the highest
//!    slot it accepted, at most about 4096 runs) finds `h` in O(runs
//!    dropped) without reading the log.
//! 2. The record is committed at once (with any appends group commit was
//!    holding), then the head moves to `h` (`advance_head`, one metadata
//!    swap). Nothing is copied: the event loop pays O(records dropped)
//!    bookkeeping plus one small append and two metadata swaps. (Dropping
//!    the truncated values from the in-memory state costs O(values
//!    dropped), as it always did: a few ms for a 128 MiB checkpoint
//!    interval, see docs/BENCHMARKS.md.)
//!
//! **Why replaying from `h` rebuilds the same state.** Let `F` be the
//! head-advance record. Replaying from the old head and from `h` differ
//! only in the records before `h`, which hold accepted entries at or below
//! `T` only (that is how `h` was chosen), and whatever facts they carry.
//!
//! - Accepted slots above `T`: every record accepting one is at or after
//!   `h`, so both replays apply the same accepts (and snapshots) to it in
//!   the same order; truncations (all at or below `T`) never touch it.
//!   Re-accepts of a slot at higher ballots come later in the log than the
//!   accept they replace, so order is all that matters. A snapshot before
//!   `h` holds no slot above `T` either (it is a record before `h`), so
//!   at `h` neither replay holds a slot above `T`.
//! - Slots at or below `T`: the final state holds none of them; `F`'s
//!   `Truncate(T)` removes any the replay from `h` inserted (before `F`
//!   its truncation point may still be lower), and any later accept of one
//!   is ignored by both replays.
//! - Promise, commit index and truncation point only move forward, and
//!   `F` carries their values as of `F`; records before `h` carry values
//!   at or below those, so dropping them changes nothing.
//!
//! Until `F`, the replay from `h` is **not** a state the appends built
//! (it misses the facts). Recovery therefore knows where the replay
//! becomes exact: from the first record if the head never moved (position
//! 0), else from a snapshot, or from a head-advance record naming the head
//! as its `h`. A crash cannot stop a replay before that point (`F` is
//! committed before the head moves); damage can, and then salvage keeps
//! nothing (it formats the region anew and reports the loss) rather than
//! a state no prefix of the appends built. A crash between `F`'s commit
//! and the head's move leaves the old head: recovery replays from it
//! (exact, since whatever set it is still in the log) and finishes the
//! move. Only the log's crash-safe primitives are used (`append_record`,
//! `commit`, `advance_head`).
//!
//! # Compaction, the fallback
//!
//! A record holding an accepted slot above the truncation point *pins* the
//! head: it cannot move past it (counted in [`NvmStats::head_pinned`]).
//! That happens when a slot far above the others was accepted (a replica
//! that accepted ahead of a gap, a leader's pipeline window) and lasts
//! until a truncation passes that slot, normally the next checkpoint's.
//! If the log from the head reaches half the capacity meanwhile, or
//! checkpoints stop and nothing is truncated, the storage compacts:
//!
//! 1. appends a snapshot record holding the whole [`DurableState`] and
//!    commits it (recovery replays old records, then the snapshot replaces
//!    their state with an equal one), then
//! 2. advances the head to the snapshot (recovery starts at the snapshot;
//!    after a crash between the two steps, recovery finishes the move).
//!
//! That copies the live log (at most half the region) on the appending
//! thread, so it is the exception: with truncations that keep the log
//! from the head under half the region it never runs
//! ([`NvmStats::compactions`] counts it). A compaction leaves the head at
//! the snapshot, which pins it until a truncation passes the snapshot's
//! highest slot. While a pin lasts, each compaction is followed by at least
//! half the region less the live log of appends before the next, so the
//! copying is amortised as before this change (and at the 4x default
//! sizing, the live log is at most a quarter of the region).
//!
//! Compacting at half the capacity guarantees the snapshot fits (it is no
//! larger than the live log plus a small header, and every live entry is
//! in a record from the head on, encoded at least as large), so the log
//! cannot wedge with no room to compact; recovery finishing an interrupted
//! move of the head keeps that true after a crash between the two steps.
//! If a record does not fit even after compaction, the state *after* the
//! append is written as the snapshot instead (a `Truncate` shrinks it, so a
//! full log can always be truncated); if that does not fit either,
//! `append` returns [`StorageError::Full`] and changes nothing. Size the
//! region at several times the live state (truncation after checkpoints
//! keeps it bounded).
//!
//! # Full
//!
//! So that the replica never gets that far, [`ReplicaStorage::space`]
//! reports [`LogSpace::Full`] once the live log (the snapshot a compaction
//! would write, whose size the storage keeps exact at every append)
//! passes [`full_at`] (7/16 of the capacity), and room again once a
//! truncation brings it to at most [`resume_at`] (1/4). Appends keep
//! succeeding meanwhile: the sixteenth below half the capacity is for the
//! decrees already in flight. These limits are on the live log, not on the
//! bytes from head to tail, because the live log is what must fit (in the
//! fallback compaction) and what only a truncation shrinks; the head
//! advance does not change them. What it changes is how often the
//! fallback runs: the bytes from head to tail are the live log plus record
//! framing, commit-only records and superseded accepts, and the fallback
//! runs only if those pass half the region.
//!
//! # Sequence numbers
//!
//! Every record carries the sequence number of its append (a snapshot: of
//! the last append it covers), so sequence numbers continue across
//! restarts: after recovery `durable_seq()` is the last recovered append,
//! as with paxos-log's file log. Recovery checks that they follow on.
//!
//! # Recovery and damage
//!
//! Recovery reads the metadata ([`PmLog::recover`], which recovers around a
//! damaged CDB or active metadata copy from the twin copy), then replays the
//! records from the head; a record that fails its CRC (which covers its
//! position and sequence number), does not decode, breaks the sequence, or
//! cannot be read is damage (after one more read: a transient fault passes).
//! A crash is never damage here: committed bytes were fenced before their
//! commit. With [`CorruptionPolicy::Refuse`] damage fails `open` with
//! [`StorageError::Corrupt`]; with [`CorruptionPolicy::Salvage`] recovery
//!
//! 1. sets the damaged bytes aside: [`NvmStorage::open`] copies the region
//!    file to `<file>.damaged` (`<file>.<k>.damaged` if that exists);
//!    [`NvmStorage::open_region`] has no file, so the region itself is the
//!    only copy until the damaged bytes are overwritten;
//! 2. records the damage in the region's damage record (see
//!    [`crate::layout`]), durably, merged with any damage recorded earlier
//!    and not cleared: every later open reports it again until
//!    [`ReplicaStorage::clear_damage`], so a crash before the replica
//!    repaired itself cannot make it forget that it may have lost promises
//!    and votes;
//! 3. cuts the log back to the end of the last good record
//!    ([`PmLog::discard_after`]), or, if the global metadata or both
//!    metadata copies are damaged, formats the region anew (keeping the
//!    damage record);
//! 4. mirrors the metadata into both copies (as every open does).
//!
//! and reports what it found as [`Damage`]s
//! ([`ReplicaStorage::recovery_damage`]).

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::Bytes;
use paxos_contracts::{ensures, invariant, requires};
use paxos_core::{Accepted, DurableState, PersistEntry, Slot};
use paxos_log::{CorruptionPolicy, Damage, LogSpace, ReplicaStorage, StorageError};

use crate::codec::{self, Payload};
use crate::layout::{DamageRecord, DAMAGE_OFFSET};
use crate::log::{
    read_damage_mark, write_damage_mark, DamageMark, LogError, MetadataDamage, PmLog, Recovery,
};
use crate::record::{self, RecordError};
use crate::record_index::{self, RecordIndex};
use crate::region::{FileBackend, FileRegion, PmRegion, RegionKind, VolatileRegion};

/// Which region backs the storage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backend {
    /// Persistent memory if the file is on a DAX file system (MAP_SYNC),
    /// else an msync-backed file mapping. The environment variable
    /// `PMEM_IS_PMEM_FORCE` overrides the fallback as in PMDK (see
    /// [`PMEM_IS_PMEM_FORCE`]): `1` means [`Backend::EmulatedPm`], `0`
    /// means [`Backend::MsyncFile`].
    #[default]
    Auto,
    /// An msync-backed file mapping even on DAX.
    MsyncFile,
    /// Persistent memory if the file is on DAX, else *emulated* persistent
    /// memory: a plain shared mapping flushed with `clwb`/`clflushopt` +
    /// `sfence` and never msynced, so only as durable as the memory behind
    /// it (a file on `/dev/shm` survives `kill -9`, not a power loss). See
    /// [`RegionKind::EmulatedPersistentMemory`]. Opening fails if the CPU
    /// has no flush instruction.
    EmulatedPm,
    /// Anonymous memory: **NOT durable**; the path is ignored. For
    /// benchmarks only.
    Volatile,
}

/// The environment variable PMDK reads to force its answer to "is this
/// mapping persistent memory?". [`Backend::Auto`] honours it the same way:
/// `1` flushes a mapping that is not DAX with the cache-line instructions
/// anyway ([`Backend::EmulatedPm`]), `0` always msyncs
/// ([`Backend::MsyncFile`]); unset or empty changes nothing, and any other
/// value fails opening.
pub const PMEM_IS_PMEM_FORCE: &str = "PMEM_IS_PMEM_FORCE";

impl Backend {
    /// What `self` means given the value of [`PMEM_IS_PMEM_FORCE`] (only
    /// [`Backend::Auto`] is overridden: an explicit choice wins).
    pub fn with_pmdk_force(self, force: Option<&str>) -> std::io::Result<Backend> {
        match (self, force.map(str::trim)) {
            (Backend::Auto, Some("1")) => Ok(Backend::EmulatedPm),
            (Backend::Auto, Some("0")) => Ok(Backend::MsyncFile),
            (Backend::Auto, Some("") | None) => Ok(Backend::Auto),
            (Backend::Auto, Some(other)) => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{PMEM_IS_PMEM_FORCE}={other:?}: expected 1 or 0"),
            )),
            (explicit, _) => Ok(explicit),
        }
    }
}

/// Options for [`NvmStorage::open`].
#[derive(Clone, Debug)]
pub struct NvmOptions {
    /// Size of the region file when it is created (an existing file keeps
    /// its size). At least 64 KiB.
    pub region_bytes: u64,
    /// Which region backs the storage.
    pub backend: Backend,
    /// The log id to create with and to expect on open. `None` creates
    /// with a fresh id and accepts any id on open.
    pub log_id: Option<u128>,
    /// Largest encoded payload of one `append`; larger appends fail with
    /// [`StorageError::Full`]. Capped at a quarter of the log capacity.
    pub max_append_bytes: usize,
    /// Group commit: appends are committed once this many are pending, or
    /// when `wait_durable`/[`NvmStorage::commit_pending`] asks. `1` (the
    /// default) commits every append before it returns. Capped at
    /// [`MAX_GROUP_APPENDS`].
    pub max_group_appends: usize,
    /// What recovery does with damage: refuse to open (the default), or
    /// salvage the longest valid prefix and report the loss (see the module
    /// documentation).
    pub on_corruption: CorruptionPolicy,
}

impl NvmOptions {
    /// Checks the options; `open` refuses invalid ones with an
    /// `InvalidInput` I/O error naming the field.
    pub fn validate(&self) -> std::io::Result<()> {
        let invalid = |m: String| Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, m));
        if self.region_bytes < MIN_REGION_BYTES {
            return invalid(format!(
                "region_bytes {} is below the minimum {MIN_REGION_BYTES}",
                self.region_bytes
            ));
        }
        if self.max_append_bytes == 0 {
            return invalid("max_append_bytes must be positive".into());
        }
        if self.max_group_appends == 0 || self.max_group_appends > MAX_GROUP_APPENDS {
            return invalid(format!(
                "max_group_appends {} outside 1..={MAX_GROUP_APPENDS}",
                self.max_group_appends
            ));
        }
        Ok(())
    }
}

/// The most appends one group commit may cover.
pub const MAX_GROUP_APPENDS: usize = 1024;

impl Default for NvmOptions {
    fn default() -> Self {
        NvmOptions {
            region_bytes: 64 << 20,
            backend: Backend::Auto,
            log_id: None,
            max_append_bytes: 4 << 20,
            max_group_appends: 1,
            on_corruption: CorruptionPolicy::Refuse,
        }
    }
}

/// The smallest region [`NvmStorage`] accepts.
pub const MIN_REGION_BYTES: u64 = 64 << 10;

/// Counters and positions, for monitoring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NvmStats {
    /// How the region is made durable.
    pub region_kind: RegionKind,
    /// Virtual position of the log head.
    pub head: u64,
    /// Virtual position of the committed tail.
    pub tail: u64,
    /// Log area capacity in bytes.
    pub capacity: u64,
    /// Commits since open (each makes one append durable).
    pub commits: u64,
    /// Compactions (snapshots of the whole live log) since open: the
    /// fallback when truncation cannot advance the head far enough.
    pub compactions: u64,
    /// Truncations since open that moved the head past dead records.
    pub head_advances: u64,
    /// Bytes those head advances dropped from the log.
    pub head_advanced_bytes: u64,
    /// Truncations since open that could not move the head: the record at
    /// the head still held a slot above the truncation point.
    pub head_pinned: u64,
    /// Framed bytes of the live log: the snapshot a compaction would write.
    pub live_bytes: u64,
    /// Whether the log reports itself full ([`LogSpace::Full`]).
    pub full: bool,
}

struct Inner {
    log: PmLog<Box<dyn PmRegion>>,
    /// State after every successful append (durable or pending commit).
    state: DurableState,
    last_seq: u64,
    /// Every append up to this sequence number is committed.
    committed_seq: u64,
    /// Appends are committed once this many are pending (1: at once).
    max_group_appends: usize,
    /// Framed bytes of the most recent snapshot record (0 if none).
    snapshot_bytes: u64,
    /// Bytes appended after that snapshot (or since the head).
    since_snapshot: u64,
    max_append_bytes: usize,
    encode_buf: Vec<u8>,
    commits: u64,
    compactions: u64,
    head_advances: u64,
    head_advanced_bytes: u64,
    head_pinned: u64,
    /// The records from the head to the tentative tail and the highest
    /// slot each accepted: where a truncation may move the head.
    index: RecordIndex,
    failed: Option<String>,
    warned_big_state: bool,
    /// Snapshot-encoded bytes of `state.accepted` (kept exact at every
    /// apply, so the live log's size is known without compacting).
    accepted_bytes: u64,
    /// The live log passed [`full_at`], and no truncation has brought it to
    /// [`resume_at`] or below since: see [`LogSpace`].
    full: bool,
    /// Damage reported at open and not cleared yet.
    damage: Vec<Damage>,
}

/// Upper bound on a snapshot's size beyond the live log it replaces: the
/// snapshot header (33 bytes) and record framing (8 bytes), rounded up.
const SNAPSHOT_MARGIN: u64 = 64;

/// Live bytes above which the log reports [`LogSpace::Full`]: seven
/// sixteenths of the capacity.
///
/// Compaction fits only while the live log is under half the capacity
/// (see the module docs, "Compaction"); past that, appends fail with
/// [`StorageError::Full`]. Reporting full a sixteenth of the capacity
/// earlier leaves room for the decrees already in flight when the replica
/// stops proposing (a pipeline window of batches; 48 MiB of a 768 MiB
/// region).
pub fn full_at(capacity: u64) -> u64 {
    capacity / 16 * 7
}

/// Live bytes at or below which a full log has room again: a quarter of
/// the capacity. The gap to [`full_at`] keeps the replica from stopping
/// and resuming at every append near the limit.
pub fn resume_at(capacity: u64) -> u64 {
    capacity / 4
}

/// Applies `entry` to `state`, keeping `accepted_bytes` (the snapshot
/// encoding's bytes of `state.accepted`) exact: O(1) per accept, and per
/// truncation O(the entries it drops), which the truncation costs anyway.
fn apply_counted(state: &mut DurableState, accepted_bytes: &mut u64, entry: &PersistEntry) {
    match entry {
        PersistEntry::Accept(a) if a.slot > state.truncated_through => {
            *accepted_bytes += codec::accepted_len(a);
            if let Some(old) = state.accepted.get(&a.slot) {
                *accepted_bytes -= codec::accepted_len(old);
            }
        }
        PersistEntry::Truncate(t) if *t > state.truncated_through => {
            let dropped: u64 = state
                .accepted
                .range(..=*t)
                .map(|(_, a)| codec::accepted_len(a))
                .sum();
            *accepted_bytes -= dropped;
        }
        _ => {}
    }
    state.apply(entry);
}

/// `(since_snapshot, snapshot_bytes)` once the head moved to `head` in a
/// log whose (tentative) tail is `tail`: bytes past the snapshot, or since
/// the head if the head passed the snapshot (then it is gone: no snapshot
/// bytes, and everything left could be folded into one).
fn after_head_moved(since_snapshot: u64, snapshot_bytes: u64, tail: u64, head: u64) -> (u64, u64) {
    let snapshot_start = tail - since_snapshot - snapshot_bytes;
    if snapshot_bytes > 0 && snapshot_start >= head {
        (since_snapshot, snapshot_bytes)
    } else {
        (since_snapshot.min(tail - head), 0)
    }
}

/// Snapshot-encoded bytes of `state.accepted`, counted once (at open).
fn accepted_bytes_of(state: &DurableState) -> u64 {
    state.accepted.values().map(codec::accepted_len).sum()
}

/// A replica's durable state in a crash-consistent persistent-memory log.
///
/// `append` is durable on return. All methods take `&self`; appends are
/// serialised by an internal mutex.
pub struct NvmStorage {
    inner: Mutex<Inner>,
    durable: AtomicU64,
    kind: RegionKind,
    name: String,
}

fn storage_err(name: &str, e: LogError) -> StorageError {
    match e {
        LogError::OutOfSpace { needed, available } => {
            StorageError::Full(format!("{name}: {needed} bytes needed, {available} free"))
        }
        LogError::RegionTooSmall(n) => {
            StorageError::Full(format!("{name}: region of {n} bytes is too small"))
        }
        LogError::Region(r) => StorageError::Io {
            context: r.context,
            source: r.source,
        },
        LogError::Failed(reason) => StorageError::Closed(format!("{name}: {reason}")),
        other => StorageError::Corrupt {
            file: name.to_string(),
            offset: 0,
            reason: other.to_string(),
        },
    }
}

fn record_err(name: &str, e: RecordError) -> StorageError {
    match e {
        RecordError::Log(l) => storage_err(name, l),
        RecordError::Corrupt { pos, reason } => StorageError::Corrupt {
            file: name.to_string(),
            offset: pos,
            reason: format!("log position {pos}: {reason}"),
        },
    }
}

fn io_err(context: String) -> impl FnOnce(std::io::Error) -> StorageError {
    move |source| StorageError::Io { context, source }
}

fn refused(name: &str, offset: u64, reason: &str) -> StorageError {
    StorageError::Corrupt {
        file: name.to_string(),
        offset,
        reason: format!(
            "{reason} (the replica refuses to start from this region; with \
             NvmOptions::on_corruption = CorruptionPolicy::Salvage it keeps what is intact, \
             reports the damage, and the replica must repair the rest from its peers)"
        ),
    }
}

/// The damage an earlier salvage recorded and nobody cleared, if any.
fn pending_damage(name: &str, mark: &DamageMark) -> Option<Damage> {
    match mark {
        DamageMark::None => None,
        DamageMark::Recorded(r) => Some(Damage {
            location: name.to_string(),
            offset: r.position,
            reason: "damage salvaged by an earlier recovery and not cleared yet".into(),
            last_kept_seq: Some(r.last_kept_seq),
            may_have_lost_acknowledged: r.may_have_lost_acknowledged,
            set_aside: Vec::new(),
        }),
        DamageMark::Unknown(why) => Some(Damage {
            location: name.to_string(),
            offset: DAMAGE_OFFSET,
            reason: format!(
                "the damage record is itself damaged ({why}); earlier damage is pending"
            ),
            last_kept_seq: None,
            may_have_lost_acknowledged: true,
            set_aside: Vec::new(),
        }),
    }
}

/// The damage record covering what `mark` recorded and `found` adds.
fn merged_record(mark: &DamageMark, found: &[Damage]) -> DamageRecord {
    let (earlier_kept, earlier_lost) = match mark {
        DamageMark::None => (None, false),
        DamageMark::Recorded(r) => (Some(r.last_kept_seq), r.may_have_lost_acknowledged),
        DamageMark::Unknown(_) => (None, true),
    };
    DamageRecord {
        last_kept_seq: found
            .iter()
            .filter_map(|d| d.last_kept_seq)
            .chain(earlier_kept)
            .min()
            .unwrap_or(0),
        position: found.first().map_or(0, |d| d.offset),
        may_have_lost_acknowledged: earlier_lost
            || found.iter().any(|d| d.may_have_lost_acknowledged),
    }
}

/// Copies `region` to `<path>.damaged` (or `<path>.<k>.damaged`), durably,
/// before salvage changes it. Unreadable words are copied as zeros.
fn copy_aside(region: &dyn PmRegion, path: &Path) -> Result<String, StorageError> {
    let base = path.as_os_str().to_string_lossy().into_owned();
    let aside = std::iter::once(format!("{base}.damaged"))
        .chain((1u64..).map(|k| format!("{base}.{k}.damaged")))
        .map(PathBuf::from)
        .find(|p| !p.exists())
        .unwrap_or_else(|| PathBuf::from(format!("{base}.damaged")));
    let name = aside.display().to_string();
    let mut out = File::create(&aside).map_err(io_err(format!("creating {name}")))?;
    let len = region.len();
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    while off < len {
        let n = (len - off).min(buf.len() as u64) as usize;
        let chunk = &mut buf[..n];
        if region.read(off, chunk).is_err() {
            for (i, word) in chunk.chunks_mut(8).enumerate() {
                if region.read(off + 8 * i as u64, word).is_err() {
                    word.fill(0);
                }
            }
        }
        std::io::Write::write_all(&mut out, chunk).map_err(io_err(format!("writing {name}")))?;
        off += n as u64;
    }
    out.sync_all().map_err(io_err(format!("fsync {name}")))?;
    if let Some(dir) = aside.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(format!("fsync directory {}", dir.display())))?;
    }
    Ok(name)
}

/// Copies a region aside before salvage changes it; returns where (`None`:
/// nowhere, the region has no file).
type SetAside<'a> = dyn FnMut(&dyn PmRegion) -> Result<Option<String>, StorageError> + 'a;

/// What replaying the records found.
#[derive(Debug)]
struct Replay {
    state: DurableState,
    /// Sequence number of the last good record (0 if none).
    last_seq: u64,
    /// Log position after the last good record.
    end: u64,
    snapshot_bytes: u64,
    since_snapshot: u64,
    /// The good records.
    index: RecordIndex,
    /// Whether `state` is the state after append `last_seq` (see the
    /// module docs, "Truncation advances the head"): from the start of a
    /// log whose head never moved, else from a snapshot or a head advance
    /// to the head on. Only damage can stop a replay before that.
    exact: bool,
    /// Where the last snapshot or head advance replayed moved the head (the
    /// head itself if none did, or a crash left the move undone).
    resume_head: u64,
    /// The first bad record: its position and what was wrong.
    damage: Option<(u64, String)>,
}

impl Replay {
    /// Nothing to replay: an empty log of `capacity` bytes whose head is
    /// at `head`.
    fn empty(head: u64, capacity: u64) -> Replay {
        Replay {
            state: DurableState::default(),
            last_seq: 0,
            end: head,
            snapshot_bytes: 0,
            since_snapshot: 0,
            index: RecordIndex::new(capacity),
            exact: head == 0,
            resume_head: head,
            damage: None,
        }
    }
}

/// Replays the committed records from the head, stopping at the first one
/// that fails a check.
fn replay(log: &PmLog<Box<dyn PmRegion>>, name: &str) -> Result<Replay, StorageError> {
    let htc = log.head_tail_capacity();
    let mut out = Replay::empty(htc.head, htc.capacity);
    let mut cured = 0;
    let mut prev: Option<u64> = None;
    for rec in record::read_records(log, &mut cured) {
        let r = match rec {
            Ok(r) => r,
            Err(RecordError::Corrupt { pos, reason }) => {
                out.damage = Some((pos, reason));
                break;
            }
            Err(e) => return Err(record_err(name, e)),
        };
        let framed = record::framed_len(r.payload.len());
        let payload = match codec::decode(Bytes::from(r.payload)) {
            Ok(p) => p,
            Err(e) => {
                let why = format!("record passed its CRC but does not decode: {e}");
                out.damage = Some((r.pos, why));
                break;
            }
        };
        // A batch follows on; a snapshot covers what came before it, or
        // that and the one append it was folded with.
        let follows = match (&payload, prev) {
            (_, None) => true,
            (Payload::Batch(_) | Payload::HeadAdvance { .. }, Some(p)) => {
                Some(r.seq) == p.checked_add(1)
            }
            (Payload::Snapshot(_), Some(p)) => r.seq == p || Some(r.seq) == p.checked_add(1),
        };
        if !follows {
            let why = format!("record has sequence {} after {prev:?}", r.seq);
            out.damage = Some((r.pos, why));
            break;
        }
        match payload {
            Payload::Batch(entries) => {
                out.index
                    .push(r.pos, record_index::max_accepted_slot(&entries));
                entries.iter().for_each(|e| out.state.apply(e));
                out.since_snapshot += framed;
            }
            Payload::HeadAdvance { head, entries } => {
                out.index
                    .push(r.pos, record_index::max_accepted_slot(&entries));
                entries.iter().for_each(|e| out.state.apply(e));
                out.since_snapshot += framed;
                // The records before the head are dead, and their facts are
                // here: the state is exact from this record on.
                out.exact |= head == htc.head;
                out.resume_head = out.resume_head.max(head);
            }
            Payload::Snapshot(s) => {
                out.index.push(r.pos, record_index::max_snapshot_slot(&s));
                out.exact = true;
                out.resume_head = r.pos;
                out.state = s;
                out.snapshot_bytes = framed;
                out.since_snapshot = 0;
            }
        }
        prev = Some(r.seq);
        out.last_seq = r.seq;
        out.end = r.pos + framed;
    }
    if cured > 0 {
        tracing::warn!(
            region = name,
            cured,
            "records failed their checks once and passed when read again"
        );
    }
    Ok(out)
}

fn fresh_log_id() -> u128 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    nanos ^ (u128::from(std::process::id()) << 96)
}

impl std::fmt::Debug for NvmStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmStorage")
            .field("region", &self.name)
            .field("kind", &self.kind)
            .field("durable_seq", &self.durable_seq())
            .finish()
    }
}

impl NvmStorage {
    /// Opens the region file at `path`, creating and formatting it if it
    /// does not exist (or is empty), and returns the storage with the
    /// recovered state.
    ///
    /// Creation is atomic: the region is formatted in `<path>.creating`,
    /// synced and renamed into place. Damage (metadata or a committed
    /// record that fails its checks) fails opening with
    /// [`StorageError::Corrupt`] under [`CorruptionPolicy::Refuse`], or is
    /// salvaged and reported under [`CorruptionPolicy::Salvage`] (the file
    /// is first copied to `<path>.damaged`); corrupt data is never served.
    /// A region of another layout version, log id or size is always
    /// refused. Opening fails with [`StorageError::Io`] if the file cannot
    /// be mapped or is in use by another process.
    pub fn open(
        path: &Path,
        options: NvmOptions,
    ) -> Result<(NvmStorage, DurableState), StorageError> {
        let name = path.display().to_string();
        options
            .validate()
            .map_err(io_err(format!("options for {name}")))?;
        let force = std::env::var(PMEM_IS_PMEM_FORCE).ok();
        let backend = options
            .backend
            .with_pmdk_force(force.as_deref())
            .map_err(io_err(format!("backend for {name}")))?;
        let file_backend = match backend {
            Backend::Volatile => {
                tracing::warn!(path = %name, "paxos-nvm storage is VOLATILE: nothing survives a crash");
                let region = usize::try_from(options.region_bytes)
                    .ok()
                    .and_then(VolatileRegion::try_new)
                    .ok_or_else(|| {
                        StorageError::Full(format!(
                            "cannot allocate {} bytes of volatile region",
                            options.region_bytes
                        ))
                    })?;
                return Self::format_region(Box::new(region), &options, "volatile".into());
            }
            Backend::Auto => FileBackend::Auto,
            Backend::MsyncFile => FileBackend::MsyncOnly,
            Backend::EmulatedPm => FileBackend::EmulatedPm,
        };
        let exists_nonempty = match std::fs::metadata(path) {
            Ok(m) => m.len() > 0,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(io_err(format!("stat {name}"))(e)),
        };
        if !exists_nonempty {
            // Formatting is a one-off: emulated PM formats through msync,
            // so the fresh format reaches the file's medium whatever it is
            // and the emulation warning is logged once, at the open below.
            let format_backend = match file_backend {
                FileBackend::EmulatedPm => FileBackend::MsyncOnly,
                other => other,
            };
            Self::create_file(path, &options, format_backend)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_err(format!("opening {name}")))?;
        let region = FileRegion::open(file, path, file_backend).map_err(|e| StorageError::Io {
            context: e.context,
            source: e.source,
        })?;
        let mut set_aside = |region: &dyn PmRegion| copy_aside(region, path).map(Some);
        Self::recover(Box::new(region), &options, name, &mut set_aside)
    }

    fn create_file(
        path: &Path,
        options: &NvmOptions,
        backend: FileBackend,
    ) -> Result<(), StorageError> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".creating");
        let tmp = PathBuf::from(tmp);
        let tmp_name = tmp.display().to_string();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io_err(format!("creating {tmp_name}")))?;
        file.set_len(options.region_bytes)
            .map_err(io_err(format!("sizing {tmp_name}")))?;
        let keep = file
            .try_clone()
            .map_err(io_err(format!("dup {tmp_name}")))?;
        let region = FileRegion::open(file, &tmp, backend).map_err(|e| StorageError::Io {
            context: e.context,
            source: e.source,
        })?;
        let mut region = region;
        write_damage_mark(&mut region, None).map_err(|e| StorageError::Io {
            context: e.context,
            source: e.source,
        })?;
        let log = PmLog::setup(region, options.log_id.unwrap_or_else(fresh_log_id))
            .map_err(|e| storage_err(&tmp_name, e))?;
        drop(log);
        keep.sync_all()
            .map_err(io_err(format!("fsync {tmp_name}")))?;
        drop(keep);
        std::fs::rename(&tmp, path).map_err(io_err(format!("renaming {tmp_name}")))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err(format!("fsync directory {}", dir.display())))?;
        }
        tracing::info!(path = %path.display(), bytes = options.region_bytes, "paxos-nvm region created");
        Ok(())
    }

    /// Formats `region` as an empty log and returns storage over it (for
    /// volatile benchmarks, crash tests over recorded regions, and the
    /// simulator's first start). For a deterministic run pass
    /// `options.log_id`: without one a fresh id is derived from the clock.
    pub fn format_region(
        mut region: Box<dyn PmRegion>,
        options: &NvmOptions,
        name: String,
    ) -> Result<(NvmStorage, DurableState), StorageError> {
        write_damage_mark(&mut region, None).map_err(|e| StorageError::Io {
            context: e.context,
            source: e.source,
        })?;
        let log = PmLog::setup(region, options.log_id.unwrap_or_else(fresh_log_id))
            .map_err(|e| storage_err(&name, e))?;
        let capacity = log.head_tail_capacity().capacity;
        Self::build(log, options, name, Replay::empty(0, capacity), Vec::new())
    }

    /// Recovers storage from a region formatted earlier (the simulator
    /// reopens a [`crate::sim_region::SimRegion`] this way after a crash).
    /// Damage is refused or salvaged as `options.on_corruption` says; there
    /// is no file to copy aside, so salvage leaves the damaged bytes in the
    /// region until they are overwritten.
    pub fn open_region(
        region: Box<dyn PmRegion>,
        options: &NvmOptions,
        name: String,
    ) -> Result<(NvmStorage, DurableState), StorageError> {
        Self::recover(region, options, name, &mut |_| Ok(None))
    }

    fn recover(
        region: Box<dyn PmRegion>,
        options: &NvmOptions,
        name: String,
        set_aside: &mut SetAside<'_>,
    ) -> Result<(NvmStorage, DurableState), StorageError> {
        let refuse = options.on_corruption == CorruptionPolicy::Refuse;
        let recovery = PmLog::recover(region, options.log_id).map_err(|e| match e {
            // An existing region too small to be a log is not ours.
            LogError::RegionTooSmall(_) => StorageError::Corrupt {
                file: name.clone(),
                offset: 0,
                reason: e.to_string(),
            },
            other => storage_err(&name, other),
        })?;
        let (mut log, metadata_damage) = match recovery {
            Recovery::Started { log, damage } => (log, damage),
            Recovery::Unusable { region, damage } => {
                if refuse {
                    return Err(refused(&name, damage.offset, &damage.reason));
                }
                return Self::reformat(region, options, name, damage, set_aside);
            }
        };
        let mark = log.damage_mark();
        let replay = replay(&log, &name)?;
        if let (Some((pos, reason)), false) = (&replay.damage, replay.exact) {
            // The good records before the damage follow a head advance
            // whose facts record they do not reach: they do not make the
            // state after any append on their own, so none can be kept.
            if refuse {
                return Err(refused(
                    &name,
                    *pos,
                    &format!("log position {pos}: {reason}"),
                ));
            }
            let damage = MetadataDamage {
                offset: *pos,
                reason: format!(
                    "log position {pos}: {reason}; the records before it follow a head advance \
                     whose facts they do not reach, so none is kept"
                ),
                may_have_lost_acknowledged: true,
            };
            return Self::reformat(log.into_region(), options, name, damage, set_aside);
        }
        let mut found = Vec::new();
        if let Some(d) = metadata_damage {
            found.push(Damage {
                location: name.clone(),
                offset: d.offset,
                reason: d.reason,
                last_kept_seq: Some(replay.last_seq),
                may_have_lost_acknowledged: d.may_have_lost_acknowledged,
                set_aside: Vec::new(),
            });
        }
        if let Some((pos, reason)) = &replay.damage {
            found.push(Damage {
                location: name.clone(),
                offset: *pos,
                reason: format!("log position {pos}: {reason}"),
                last_kept_seq: Some(replay.last_seq),
                may_have_lost_acknowledged: true,
                set_aside: Vec::new(),
            });
        }
        if let Some(first) = found.first_mut() {
            if refuse {
                return Err(refused(&name, first.offset, &first.reason));
            }
            first.set_aside.extend(set_aside(&**log.region())?);
            let record = merged_record(&mark, &found);
            log.set_damage_mark(Some(&record))
                .map_err(|e| storage_err(&name, e))?;
            if replay.damage.is_some() {
                log.discard_after(replay.end)
                    .map_err(|e| storage_err(&name, e))?;
            }
            for d in &found {
                tracing::error!(damage = %d, "salvaged the NVM log around damage");
            }
        }
        log.mirror_metadata().map_err(|e| storage_err(&name, e))?;
        let mut replay = replay;
        let head = log.head_tail_capacity().head;
        if replay.resume_head > head && replay.resume_head <= replay.end {
            // A crash came between a compaction's or a head advance's
            // commit and the move of the head: finish it, or the dead
            // records it leaves could keep the next compaction from fitting.
            log.advance_head(replay.resume_head)
                .map_err(|e| storage_err(&name, e))?;
            replay.index.trim_front(replay.resume_head);
            (replay.since_snapshot, replay.snapshot_bytes) = after_head_moved(
                replay.since_snapshot,
                replay.snapshot_bytes,
                replay.end,
                replay.resume_head,
            );
            tracing::info!(region = %name, from = head, to = replay.resume_head,
                "paxos-nvm finished moving the head, which a crash interrupted");
        }
        let damage = pending_damage(&name, &mark)
            .into_iter()
            .chain(found)
            .collect();
        Self::build(log, options, name, replay, damage)
    }

    /// Salvage of a region whose metadata locates nothing: set it aside,
    /// record the damage, format it anew.
    fn reformat(
        mut region: Box<dyn PmRegion>,
        options: &NvmOptions,
        name: String,
        damage: MetadataDamage,
        set_aside: &mut SetAside<'_>,
    ) -> Result<(NvmStorage, DurableState), StorageError> {
        let aside = set_aside(&*region)?;
        let mark = read_damage_mark(&*region);
        let found = Damage {
            location: name.clone(),
            offset: damage.offset,
            reason: format!("{}; the region was formatted anew", damage.reason),
            last_kept_seq: Some(0),
            may_have_lost_acknowledged: true,
            set_aside: aside.into_iter().collect(),
        };
        tracing::error!(damage = %found, "salvaged the NVM log: nothing could be located");
        // The record goes first: formatting does not touch it, so a crash
        // while formatting still reports the damage.
        let record = merged_record(&mark, std::slice::from_ref(&found));
        write_damage_mark(&mut *region, Some(&record)).map_err(|e| StorageError::Io {
            context: e.context,
            source: e.source,
        })?;
        let log = PmLog::setup(region, options.log_id.unwrap_or_else(fresh_log_id))
            .map_err(|e| storage_err(&name, e))?;
        let damage = pending_damage(&name, &mark)
            .into_iter()
            .chain(std::iter::once(found))
            .collect();
        let capacity = log.head_tail_capacity().capacity;
        Self::build(log, options, name, Replay::empty(0, capacity), damage)
    }

    fn build(
        log: PmLog<Box<dyn PmRegion>>,
        options: &NvmOptions,
        name: String,
        replay: Replay,
        damage: Vec<Damage>,
    ) -> Result<(NvmStorage, DurableState), StorageError> {
        let kind = log.region().kind();
        let state = replay.state;
        let htc = log.head_tail_capacity();
        let max_append_bytes = options.max_append_bytes.min((htc.capacity / 4) as usize);
        tracing::info!(
            region = %name, backend = %kind, head = htc.head, tail = htc.tail,
            capacity = htc.capacity, accepted = state.accepted.len(), seq = replay.last_seq,
            "paxos-nvm storage opened"
        );
        let storage = NvmStorage {
            inner: Mutex::new(Inner {
                log,
                state: state.clone(),
                last_seq: replay.last_seq,
                committed_seq: replay.last_seq,
                max_group_appends: options.max_group_appends.clamp(1, MAX_GROUP_APPENDS),
                snapshot_bytes: replay.snapshot_bytes,
                since_snapshot: replay.since_snapshot,
                max_append_bytes,
                encode_buf: Vec::with_capacity(4096),
                commits: 0,
                compactions: 0,
                head_advances: 0,
                head_advanced_bytes: 0,
                head_pinned: 0,
                index: replay.index,
                failed: None,
                warned_big_state: false,
                accepted_bytes: accepted_bytes_of(&state),
                full: false,
                damage,
            }),
            durable: AtomicU64::new(replay.last_seq),
            kind,
            name,
        };
        Ok((storage, state))
    }

    /// How the region is made durable (chosen at open).
    pub fn region_kind(&self) -> RegionKind {
        self.kind
    }

    /// Positions and counters.
    pub fn stats(&self) -> NvmStats {
        let inner = self.lock();
        let htc = inner.log.head_tail_capacity();
        NvmStats {
            region_kind: self.kind,
            head: htc.head,
            tail: htc.tail,
            capacity: htc.capacity,
            commits: inner.commits,
            compactions: inner.compactions,
            head_advances: inner.head_advances,
            head_advanced_bytes: inner.head_advanced_bytes,
            head_pinned: inner.head_pinned,
            live_bytes: inner.live_bytes(),
            full: inner.full,
        }
    }

    /// A copy of the current durable state.
    pub fn state(&self) -> DurableState {
        self.lock().state.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock (a contract failure) leaves `Inner`
        // consistent or `failed`; keep serving reads.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Commits every pending append (group commit) and returns the durable
    /// sequence number. With `max_group_appends == 1` nothing is ever
    /// pending and this only reports.
    pub fn commit_pending(&self) -> Result<u64, StorageError> {
        let mut inner = self.lock();
        if inner.committed_seq < inner.last_seq {
            inner.commit_pending(&self.name)?;
            self.durable.store(inner.committed_seq, Ordering::Release);
        }
        ensures!(inner.committed_seq == inner.last_seq);
        Ok(inner.committed_seq)
    }

    /// Durably forgets the damage recovery reported (see
    /// [`ReplicaStorage::clear_damage`]): clears the region's damage record.
    /// Call it once the replica has repaired what was lost.
    pub fn clear_damage(&self) -> Result<(), StorageError> {
        let mut inner = self.lock();
        if let Some(reason) = &inner.failed {
            return Err(StorageError::Closed(format!("{}: {reason}", self.name)));
        }
        inner
            .log
            .set_damage_mark(None)
            .map_err(|e| inner.fail(&self.name, e))?;
        inner.damage.clear();
        Ok(())
    }

    /// Consumes the storage and returns its region (tests reopen it).
    pub fn into_region(self) -> Box<dyn PmRegion> {
        let inner = self.inner.into_inner().unwrap_or_else(|p| p.into_inner());
        inner.log.into_region()
    }
}

impl Inner {
    fn check_invariants(&self) {
        let htc = self.log.head_tail_capacity();
        invariant!(
            self.committed_seq < self.last_seq || self.log.tentative_tail() == htc.tail,
            "tentative bytes only while appends are pending"
        );
        invariant!(self.committed_seq <= self.last_seq);
        invariant!(
            self.since_snapshot <= self.log.tentative_tail() - htc.head,
            "appended bytes are in the log"
        );
        invariant!(
            self.index.first_pos().is_none_or(|p| p == htc.head),
            "the index starts at the head"
        );
        // Recounting is O(state): checked while the state is small (tests).
        invariant!(
            self.state.accepted.len() > 1024
                || self.accepted_bytes == accepted_bytes_of(&self.state),
            "the live size is counted exactly"
        );
    }

    fn fail(&mut self, name: &str, e: LogError) -> StorageError {
        let err = storage_err(name, e);
        if matches!(err, StorageError::Io { .. } | StorageError::Closed(_)) {
            self.failed.get_or_insert_with(|| err.to_string());
        }
        err
    }

    /// Writes a snapshot of `state` and moves the head to it: one commit
    /// makes the snapshot durable (recovery replays the old records, then
    /// the snapshot replaces their state), a second drops the old records.
    /// `seq`: the sequence number of the last append `state` covers.
    fn write_snapshot(
        &mut self,
        state: &DurableState,
        seq: u64,
        name: &str,
    ) -> Result<(), StorageError> {
        let mut buf = std::mem::take(&mut self.encode_buf);
        buf.clear();
        codec::encode_snapshot(state, &mut buf);
        let framed = record::framed_len(buf.len());
        let result = (|| {
            let pos = record::append_record(&mut self.log, seq, &buf)?;
            self.log.commit()?;
            self.log.advance_head(pos)?;
            Ok(pos)
        })();
        self.encode_buf = buf;
        // `append_record` is all or nothing, so an OutOfSpace left nothing
        // tentative behind; any other failure poisoned the log.
        let pos = match result {
            Ok(pos) => pos,
            Err(e) => {
                return Err(match e {
                    LogError::OutOfSpace { needed, available } => StorageError::Full(format!(
                        "{name}: live state needs {needed} bytes, only {available} free; region too small"
                    )),
                    other => self.fail(name, other),
                })
            }
        };
        self.index
            .reset(pos, record_index::max_snapshot_slot(state));
        self.snapshot_bytes = framed;
        self.since_snapshot = 0;
        self.compactions += 1;
        tracing::debug!(snapshot_bytes = framed, "paxos-nvm compacted");
        Ok(())
    }

    /// The live log's size: the framed bytes a snapshot of the current
    /// state would take (what a compaction must fit).
    fn live_bytes(&self) -> u64 {
        record::framed_len((codec::SNAPSHOT_HEADER_LEN + self.accepted_bytes) as usize)
    }

    /// Decides whether the log is full after an append: full once the live
    /// log passes [`full_at`], room again once a truncation brings it to
    /// [`resume_at`] or below.
    fn update_full(&mut self, name: &str) {
        let capacity = self.log.head_tail_capacity().capacity;
        let was_full = self.full;
        let live = self.live_bytes();
        self.full = if was_full {
            live > resume_at(capacity)
        } else {
            live > full_at(capacity)
        };
        if self.full != was_full {
            tracing::info!(
                region = name,
                live_bytes = live,
                capacity,
                "paxos-nvm log {}",
                if self.full {
                    "is full: its live part passed 7/16 of the region"
                } else {
                    "has room again after a truncation"
                }
            );
        }
    }

    /// Compacts the current state.
    fn compact(&mut self, name: &str) -> Result<(), StorageError> {
        let state = std::mem::take(&mut self.state);
        let result = self.write_snapshot(&state, self.last_seq, name);
        self.state = state;
        result
    }

    /// Makes room for a record of `needed` framed bytes.
    ///
    /// Compacts once the live log plus the record would pass half the
    /// capacity (less [`SNAPSHOT_MARGIN`]). That threshold is what makes
    /// compaction always fit: a snapshot is at most the live log plus
    /// `SNAPSHOT_MARGIN` (every accepted entry it holds is in the live log,
    /// encoded at least as large), so while the live log stays under half
    /// the capacity the free half holds the snapshot. Waiting longer (say,
    /// until the log is full) could leave no room to compact at all.
    fn make_room(&mut self, needed: u64, name: &str) -> Result<(), StorageError> {
        let capacity = self.log.head_tail_capacity().capacity;
        let used = capacity - self.log.free_space();
        if used + needed + SNAPSHOT_MARGIN > capacity / 2 && self.since_snapshot > 0 {
            self.compact(name)?;
            if self.snapshot_bytes > capacity / 4 && !self.warned_big_state {
                self.warned_big_state = true;
                tracing::warn!(
                    region = name,
                    snapshot_bytes = self.snapshot_bytes,
                    capacity,
                    "paxos-nvm live state exceeds a quarter of the region: compactions \
                     become frequent; truncate more often or use a bigger region"
                );
            }
        }
        if needed > self.log.free_space() {
            return Err(StorageError::Full(format!(
                "{name}: append of {needed} bytes does not fit ({} free after compaction)",
                self.log.free_space()
            )));
        }
        Ok(())
    }

    fn append(&mut self, entries: &[PersistEntry], name: &str) -> Result<u64, StorageError> {
        if let Some(reason) = &self.failed {
            return Err(StorageError::Closed(format!("{name}: {reason}")));
        }
        if let Some(big) = entries.iter().find_map(|e| match e {
            PersistEntry::Accept(a) if a.value.payload_len() > codec::MAX_VALUE_BYTES => {
                Some(a.slot)
            }
            _ => None,
        }) {
            return Err(StorageError::Full(format!(
                "{name}: value of slot {big} exceeds 4 GiB"
            )));
        }
        // A record that raises the truncation point also carries the facts
        // that let the head move past the records it makes dead (the head
        // it moves to is filled in once compaction, if any, is done).
        let facts = record_index::truncation_facts(&self.state, entries);
        let mut buf = std::mem::take(&mut self.encode_buf);
        buf.clear();
        match &facts {
            Some(facts) => codec::encode_head_advance(entries, facts, 0, &mut buf),
            None => codec::encode_batch(entries, &mut buf),
        }
        if buf.len() > self.max_append_bytes {
            let len = buf.len();
            self.encode_buf = buf;
            return Err(StorageError::Full(format!(
                "{name}: append of {len} bytes exceeds the limit of {}",
                self.max_append_bytes
            )));
        }
        let max_slot = record_index::max_accepted_slot(entries);
        let truncates_to = facts.as_ref().map(|_| {
            entries
                .iter()
                .fold(self.state.truncated_through, |t, e| match e {
                    PersistEntry::Truncate(s) => t.max(*s),
                    _ => t,
                })
        });
        let result = self.append_encoded(&mut buf, self.last_seq + 1, max_slot, truncates_to, name);
        self.encode_buf = buf;
        let mut head_target = None;
        match result {
            Ok(target) => {
                head_target = target;
                for e in entries {
                    apply_counted(&mut self.state, &mut self.accepted_bytes, e);
                }
            }
            Err(StorageError::Full(reason)) if self.failed.is_none() => {
                // The record does not fit even after compacting the current
                // state. The state *after* the append may be smaller (a
                // Truncate shrinks it): write that as the snapshot instead,
                // so a full log can always be truncated.
                let mut next = self.state.clone();
                let mut next_bytes = self.accepted_bytes;
                for e in entries {
                    apply_counted(&mut next, &mut next_bytes, e);
                }
                self.write_snapshot(&next, self.last_seq + 1, name)
                    .map_err(|e| match e {
                        StorageError::Full(_) => StorageError::Full(reason),
                        other => other,
                    })?;
                self.state = next;
                self.accepted_bytes = next_bytes;
            }
            Err(e) => return Err(e),
        }
        self.last_seq += 1;
        self.update_full(name);
        let pending = self.last_seq - self.committed_seq;
        // The head may pass dead records only once the facts are durable,
        // so a truncating append commits at once (with any pending ones:
        // durable early is still durable). Truncations come once per
        // checkpoint; group commit is untouched in between.
        if pending >= self.max_group_appends as u64 || head_target.is_some() {
            self.commit_pending(name)?;
        } else if self.log.tentative_tail() == self.log.head_tail_capacity().tail {
            // A compaction (or a folded snapshot) committed everything.
            self.committed_seq = self.last_seq;
        }
        if let Some(target) = head_target {
            self.advance_head_to(target, name)?;
        }
        self.check_invariants();
        Ok(self.last_seq)
    }

    /// Moves the head to `target`, past records whose accepted entries are
    /// all truncated, once the head-advance record carrying the facts is
    /// committed: one metadata swap, nothing copied (see the module docs,
    /// "Truncation advances the head").
    fn advance_head_to(&mut self, target: u64, name: &str) -> Result<(), StorageError> {
        requires!(
            self.log.tentative_tail() == self.log.head_tail_capacity().tail,
            "the head-advance record is committed"
        );
        let head = self.log.head_tail_capacity().head;
        assert!(target >= head, "the head only moves forward");
        if target == head {
            // Pinned: the first record still holds a live slot.
            self.head_pinned += 1;
            return Ok(());
        }
        self.log
            .advance_head(target)
            .map_err(|e| self.fail(name, e))?;
        self.head_advances += 1;
        self.head_advanced_bytes += target - head;
        (self.since_snapshot, self.snapshot_bytes) = after_head_moved(
            self.since_snapshot,
            self.snapshot_bytes,
            self.log.tentative_tail(),
            target,
        );
        Ok(())
    }

    /// Commits every pending append (one metadata swap for all of them).
    fn commit_pending(&mut self, name: &str) -> Result<(), StorageError> {
        if let Some(reason) = &self.failed {
            return Err(StorageError::Closed(format!("{name}: {reason}")));
        }
        self.log.commit().map_err(|e| self.fail(name, e))?;
        if self.committed_seq < self.last_seq {
            self.commits += 1;
        }
        self.committed_seq = self.last_seq;
        ensures!(self.log.tentative_tail() == self.log.head_tail_capacity().tail);
        Ok(())
    }

    /// Appends one record (whose accepted slots are at most `max_slot`),
    /// compacting first if it would pass half the capacity. For a head
    /// advance (`truncates_to`: the truncation point after it), fills in
    /// and returns where the head moves once the record is committed: the
    /// first record still holding an accepted slot above that point, or
    /// this record if none does.
    fn append_encoded(
        &mut self,
        payload: &mut [u8],
        seq: u64,
        max_slot: Slot,
        truncates_to: Option<Slot>,
        name: &str,
    ) -> Result<Option<u64>, StorageError> {
        let needed = record::framed_len(payload.len());
        self.make_room(needed, name)?;
        let target = truncates_to.map(|t| {
            let target = self
                .index
                .drop_dead_prefix(t)
                .unwrap_or_else(|| self.log.tentative_tail());
            codec::set_head_advance_target(payload, target);
            target
        });
        let pos =
            record::append_record(&mut self.log, seq, payload).map_err(|e| self.fail(name, e))?;
        self.index.push(pos, max_slot);
        self.since_snapshot += needed;
        Ok(target)
    }
}

impl ReplicaStorage for NvmStorage {
    /// Appends the entries as one record; durable on return unless group
    /// commit is on (see the module docs).
    fn append(&self, entries: &[PersistEntry]) -> Result<u64, StorageError> {
        let mut inner = self.lock();
        let old_seq = inner.last_seq;
        let result = inner.append(entries, &self.name);
        // Publish after the commit: durable_seq never runs ahead.
        self.durable.store(inner.committed_seq, Ordering::Release);
        if let Ok(seq) = result {
            ensures!(seq == old_seq + 1, "sequence numbers are consecutive");
        } else if inner.failed.is_none() {
            ensures!(inner.last_seq == old_seq, "a failed append changes nothing");
        }
        result
    }

    fn durable_seq(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    fn wait_durable(&self, seq: u64) -> Result<(), StorageError> {
        if seq <= self.durable_seq() {
            return Ok(());
        }
        let mut inner = self.lock();
        if seq > inner.last_seq {
            return Err(StorageError::OutOfRange(format!(
                "{}: sequence {seq} was never issued (last is {})",
                self.name, inner.last_seq
            )));
        }
        if inner.committed_seq < seq {
            inner.commit_pending(&self.name)?;
            self.durable.store(inner.committed_seq, Ordering::Release);
        }
        ensures!(self.durable_seq() >= seq);
        Ok(())
    }

    fn read_accepted(&self, from: Slot, max: usize) -> Result<Vec<Accepted>, StorageError> {
        let inner = self.lock();
        let out: Vec<Accepted> = inner
            .state
            .accepted
            .range(from..)
            .take(max)
            .map(|(_, a)| a.clone())
            .collect();
        ensures!(out.len() <= max && out.windows(2).all(|w| w[0].slot < w[1].slot));
        Ok(out)
    }

    fn recovery_damage(&self) -> Vec<Damage> {
        self.lock().damage.clone()
    }

    /// [`LogSpace::Full`] once the live log passed [`full_at`] (7/16 of
    /// the capacity), until a truncation leaves at most [`resume_at`]
    /// (1/4).
    fn space(&self) -> LogSpace {
        let inner = self.lock();
        if !inner.full {
            return LogSpace::Available;
        }
        LogSpace::Full {
            live_bytes: inner.live_bytes(),
            limit_bytes: full_at(inner.log.head_tail_capacity().capacity),
        }
    }

    fn clear_damage(&self) -> Result<(), StorageError> {
        NvmStorage::clear_damage(self)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::codec::tests::arb_entry;
    use crate::layout::LOG_AREA_OFFSET;
    use paxos_core::{Ballot, ReplicaId, Value};
    use proptest::prelude::*;

    fn small_opts() -> NvmOptions {
        NvmOptions {
            region_bytes: 4096,
            max_append_bytes: 1 << 20,
            log_id: Some(9),
            ..Default::default()
        }
    }

    fn volatile(bytes: usize) -> (NvmStorage, DurableState) {
        NvmStorage::format_region(
            Box::new(VolatileRegion::new(bytes)),
            &small_opts(),
            "test".into(),
        )
        .unwrap()
    }

    fn reopen(s: NvmStorage) -> (NvmStorage, DurableState) {
        NvmStorage::open_region(s.into_region(), &small_opts(), "test".into()).unwrap()
    }

    fn accept(slot: Slot, payload: &[u8]) -> PersistEntry {
        PersistEntry::Accept(Accepted {
            slot,
            ballot: Ballot::new(1, ReplicaId(1)),
            value: Value::Requests(Bytes::copy_from_slice(payload)),
        })
    }

    #[test]
    fn appends_are_durable_on_return_and_recovered() {
        let (s, initial) = volatile(4096);
        assert_eq!(initial, DurableState::default());
        let b = Ballot::new(3, ReplicaId(2));
        assert_eq!(s.append(&[PersistEntry::Promise(b)]).unwrap(), 1);
        assert_eq!(
            s.append(&[
                accept(Slot(1), b"x"),
                accept(Slot(2), b"y"),
                PersistEntry::Commit(Slot(1))
            ])
            .unwrap(),
            2
        );
        assert_eq!(s.durable_seq(), 2);
        s.wait_durable(2).unwrap();
        assert!(matches!(
            s.wait_durable(3),
            Err(StorageError::OutOfRange(_))
        ));
        let expected = s.state();
        let (s2, recovered) = reopen(s);
        assert_eq!(recovered, expected);
        assert_eq!(recovered.promised, b);
        assert_eq!(s2.read_accepted(Slot(2), 10).unwrap().len(), 1);
        assert_eq!(s2.read_accepted(Slot::ZERO, 1).unwrap()[0].slot, Slot(1));
    }

    /// The replica's steady state: accept, commit, and now and then a
    /// truncation through an older slot. Every truncation moves the head
    /// past the dead records without copying anything: the region wraps
    /// many times and never compacts, and every reopen (after each
    /// truncation) recovers exactly the state in memory.
    #[test]
    fn periodic_truncations_advance_the_head_and_never_compact() {
        let (mut s, _) = volatile(4096);
        let (mut advances, mut compactions) = (0, 0);
        let promise = Ballot::new(4, ReplicaId(3));
        s.append(&[PersistEntry::Promise(promise)]).unwrap();
        for slot in 1..=400u64 {
            s.append(&[accept(Slot(slot), &[slot as u8; 50])]).unwrap();
            if slot % 10 == 0 {
                let head = s.stats().head;
                s.append(&[
                    PersistEntry::Commit(Slot(slot)),
                    PersistEntry::Truncate(Slot(slot - 5)),
                ])
                .unwrap();
                let stats = s.stats();
                assert!(stats.head > head, "{stats:?}");
                assert_eq!(stats.head_pinned, 0, "{stats:?}");
                advances += stats.head_advances;
                compactions += stats.compactions;
                let expected = s.state();
                let (reopened, recovered) = reopen(s);
                assert_eq!(recovered, expected, "after the truncation at {slot}");
                s = reopened;
            }
        }
        let stats = s.stats();
        assert_eq!((advances, compactions), (40, 0), "{stats:?}");
        assert!(
            stats.tail > 10 * stats.capacity,
            "wrapped many times: {stats:?}"
        );
        let expected = s.state();
        assert_eq!(expected.accepted.len(), 5);
        assert_eq!(
            expected.promised, promise,
            "the promise outlived its record"
        );
        assert_eq!(expected.commit_index, Slot(400));
        let (_, recovered) = reopen(s);
        assert_eq!(recovered, expected);
    }

    /// The same workload without reopening: the counters add up, the head
    /// always sits on the first record that still holds a live slot.
    #[test]
    fn head_advances_drop_exactly_the_dead_prefix() {
        let (s, _) = volatile(4096);
        for slot in 1..=200u64 {
            s.append(&[accept(Slot(slot), &[slot as u8; 40])]).unwrap();
            if slot % 10 == 0 {
                s.append(&[PersistEntry::Truncate(Slot(slot - 3))]).unwrap();
                // The head is the record accepting slot - 2: replaying from
                // it needs nothing older.
                let stats = s.stats();
                let region = s.lock();
                let first = record::read_records(&region.log, &mut 0)
                    .next()
                    .unwrap()
                    .unwrap();
                assert_eq!(first.pos, stats.head);
                let Ok(Payload::Batch(entries)) = codec::decode(Bytes::from(first.payload)) else {
                    panic!("the head is the accept of slot {}", slot - 2)
                };
                assert_eq!(record_index::max_accepted_slot(&entries), Slot(slot - 2));
            }
        }
        let stats = s.stats();
        assert_eq!(
            (stats.head_advances, stats.compactions),
            (20, 0),
            "{stats:?}"
        );
        assert_eq!(stats.head_advanced_bytes, stats.head, "{stats:?}");
        let expected = s.state();
        assert_eq!(reopen(s).1, expected);
    }

    /// An accepted slot far above the truncation point pins the head to
    /// its record: truncations cannot move the head, and the fallback
    /// compaction keeps the log bounded. Once a truncation passes that
    /// slot, the head moves again and compaction stops.
    #[test]
    fn a_pinned_head_falls_back_to_compaction_until_the_pin_is_truncated() {
        let (s, _) = volatile(4096);
        s.append(&[accept(Slot(1_000), b"far ahead")]).unwrap();
        for slot in 1..=200u64 {
            s.append(&[accept(Slot(slot), &[1u8; 50])]).unwrap();
            if slot % 10 == 0 {
                s.append(&[PersistEntry::Truncate(Slot(slot - 5))]).unwrap();
            }
        }
        let pinned = s.stats();
        assert!(pinned.head_pinned > 0, "{pinned:?}");
        assert!(pinned.compactions > 0, "the fallback ran: {pinned:?}");
        assert!(
            pinned.tail - pinned.head <= pinned.capacity / 2 + 200,
            "{pinned:?}"
        );
        let expected = s.state();
        assert!(expected.accepted.contains_key(&Slot(1_000)));
        let (s, recovered) = reopen(s);
        assert_eq!(recovered, expected);
        // Truncating past the pin frees the head again.
        s.append(&[PersistEntry::Truncate(Slot(1_000))]).unwrap();
        for slot in 1_001..=1_200u64 {
            s.append(&[accept(Slot(slot), &[2u8; 50])]).unwrap();
            if slot % 10 == 0 {
                s.append(&[PersistEntry::Truncate(Slot(slot - 5))]).unwrap();
            }
        }
        let freed = s.stats();
        assert_eq!(freed.compactions, 0, "{freed:?}");
        assert!(freed.head_advances >= 20, "{freed:?}");
        let expected = s.state();
        assert!(!expected.accepted.contains_key(&Slot(1_000)));
        assert_eq!(reopen(s).1, expected);
    }

    /// With group commit, a truncating append commits at once (with the
    /// appends pending before it) so the head can move; the ones after it
    /// are grouped again.
    #[test]
    fn a_truncation_commits_the_pending_group_and_advances_the_head() {
        let opts = NvmOptions {
            max_group_appends: 8,
            ..small_opts()
        };
        let (s, _) =
            NvmStorage::format_region(Box::new(VolatileRegion::new(4096)), &opts, "g".into())
                .unwrap();
        for slot in 1..=5u64 {
            s.append(&[accept(Slot(slot), b"v")]).unwrap();
        }
        assert_eq!(s.durable_seq(), 0);
        let seq = s.append(&[PersistEntry::Truncate(Slot(3))]).unwrap();
        assert_eq!(s.durable_seq(), seq, "the truncation committed the group");
        assert_eq!(s.stats().head_advances, 1);
        s.append(&[accept(Slot(6), b"v")]).unwrap();
        assert_eq!(s.durable_seq(), seq, "grouping resumes");
        s.commit_pending().unwrap();
        let expected = s.state();
        let (_, recovered) = NvmStorage::open_region(s.into_region(), &opts, "g".into()).unwrap();
        assert_eq!(recovered, expected);
    }

    /// Damage between the head and the head-advance record whose facts the
    /// records there need: what precedes the damage is not the state after
    /// any append, so salvage keeps none of it (and says so); refusal
    /// refuses.
    #[test]
    fn damage_before_the_facts_of_a_head_advance_keeps_nothing() {
        let (s, _) = volatile(4096);
        s.append(&[PersistEntry::Promise(Ballot::new(2, ReplicaId(1)))])
            .unwrap();
        for slot in 1..=6u64 {
            s.append(&[accept(Slot(slot), &[slot as u8; 30])]).unwrap();
        }
        // The head moves to the accept of slot 5; the facts are after 6.
        s.append(&[PersistEntry::Truncate(Slot(4))]).unwrap();
        let stats = s.stats();
        assert_eq!(stats.head_advances, 1);
        let mut bytes = vec![0u8; 4096];
        s.into_region().read(0, &mut bytes).unwrap();
        // Flip a payload byte of the second record after the head (slot 6).
        let at = |pos: u64| (LOG_AREA_OFFSET + pos % stats.capacity) as usize;
        let first_len = u32::from_le_bytes(bytes[at(stats.head)..][..4].try_into().unwrap());
        bytes[at(stats.head + record::framed_len(first_len as usize)) + 20] ^= 1;
        let refused = NvmStorage::open_region(
            Box::new(VolatileRegion::from_bytes(bytes.clone())),
            &small_opts(),
            "t".into(),
        );
        assert!(matches!(refused, Err(StorageError::Corrupt { .. })));
        let salvage = NvmOptions {
            on_corruption: CorruptionPolicy::Salvage,
            ..small_opts()
        };
        let (s, state) = NvmStorage::open_region(
            Box::new(VolatileRegion::from_bytes(bytes)),
            &salvage,
            "t".into(),
        )
        .unwrap();
        assert_eq!(state, DurableState::default(), "nothing is kept");
        let damage = s.recovery_damage();
        assert_eq!(damage.len(), 1, "{damage:?}");
        assert!(damage[0].may_have_lost_acknowledged);
        assert!(damage[0].reason.contains("head advance"), "{}", damage[0]);
    }

    #[test]
    fn a_live_state_too_big_for_the_region_fails_cleanly() {
        let (s, _) = volatile(4096);
        let mut last_ok = DurableState::default();
        let mut full = false;
        for slot in 1..=200u64 {
            match s.append(&[accept(Slot(slot), &[1u8; 60])]) {
                Ok(_) => last_ok = s.state(),
                Err(StorageError::Full(_)) => {
                    full = true;
                    break;
                }
                Err(e) => panic!("unexpected {e}"),
            }
        }
        assert!(
            full,
            "a region of 4 KiB cannot hold 200 x 60 bytes of live state"
        );
        assert_eq!(s.state(), last_ok, "the failed append changed nothing");
        // Truncation frees the space again.
        s.append(&[PersistEntry::Truncate(Slot(1000))]).unwrap();
        s.append(&[accept(Slot(1001), &[1u8; 60])]).unwrap();
        let expected = s.state();
        assert_eq!(reopen(s).1, expected);
    }

    /// The log says it is full while appends still fit, keeps taking the
    /// decrees in flight after that, and has room again once a truncation
    /// drops the live log.
    #[test]
    fn the_log_reports_full_before_appends_fail_and_recovers_after_truncation() {
        let (s, _) = volatile(65536);
        let capacity = s.stats().capacity;
        let mut slot = 0u64;
        while !s.space().is_full() {
            slot += 1;
            assert!(slot < 10_000, "never reported full: {:?}", s.stats());
            s.append(&[accept(Slot(slot), &[7u8; 60])])
                .expect("no append fails before the log reports full");
        }
        let LogSpace::Full {
            live_bytes,
            limit_bytes,
        } = s.space()
        else {
            unreachable!()
        };
        assert_eq!(limit_bytes, full_at(capacity));
        assert!(live_bytes > limit_bytes, "{live_bytes} <= {limit_bytes}");
        assert!(s.stats().full);
        // Room remains for decrees already in flight: a sixteenth of the
        // capacity, here 4 KiB, more than a dozen accepts of 60 bytes
        // (about 100 framed).
        for _ in 0..12 {
            slot += 1;
            s.append(&[accept(Slot(slot), &[8u8; 60])])
                .expect("a full log still takes the decrees in flight");
            assert!(s.space().is_full(), "no truncation, no room");
        }
        // A checkpoint covers all but the last two: the truncation frees
        // the room at once, not at the next compaction.
        s.append(&[PersistEntry::Truncate(Slot(slot - 2))]).unwrap();
        assert_eq!(s.space(), LogSpace::Available, "{:?}", s.stats());
        assert!(s.stats().live_bytes <= resume_at(capacity));
        let expected = s.state();
        assert_eq!(expected.accepted.len(), 2);
        slot += 1;
        s.append(&[accept(Slot(slot), &[9u8; 60])]).unwrap();
        let expected_after = s.state();
        assert_ne!(expected, expected_after);
        let (s2, recovered) = reopen(s);
        assert_eq!(recovered, expected_after);
        assert_eq!(s2.space(), LogSpace::Available);
    }

    /// A truncation that leaves the live log above a quarter of the region
    /// does not clear the condition (the gap keeps the replica from
    /// stopping and resuming at every append).
    #[test]
    fn a_truncation_that_frees_too_little_keeps_the_log_full() {
        let (s, _) = volatile(4096);
        let mut slot = 0u64;
        while !s.space().is_full() {
            slot += 1;
            s.append(&[accept(Slot(slot), &[7u8; 60])]).unwrap();
        }
        s.append(&[PersistEntry::Truncate(Slot(2))]).unwrap();
        assert!(s.space().is_full(), "{:?}", s.stats());
        s.append(&[PersistEntry::Truncate(Slot(slot))]).unwrap();
        assert!(!s.space().is_full(), "{:?}", s.stats());
    }

    #[test]
    fn oversized_appends_are_refused() {
        let (s, _) = volatile(4096);
        assert!(matches!(
            s.append(&[accept(Slot(1), &[0u8; 2000])]),
            Err(StorageError::Full(_))
        ));
        assert_eq!(s.durable_seq(), 0);
    }

    /// A temporary directory in memory (`/dev/shm`) where there is one, as
    /// an emulated persistent-memory region would be placed.
    pub(crate) fn shm_tempdir() -> tempfile::TempDir {
        let shm = std::path::Path::new("/dev/shm");
        if shm.is_dir() {
            tempfile::tempdir_in(shm).unwrap()
        } else {
            tempfile::tempdir().unwrap()
        }
    }

    #[test]
    fn open_creates_then_recovers_a_file_region() {
        let dir = tempfile::tempdir().unwrap();
        open_creates_then_recovers(&dir, Backend::Auto, RegionKind::MsyncFile);
    }

    #[test]
    fn open_creates_then_recovers_an_emulated_pm_region() {
        let Some((flush, _)) = crate::region::CacheFlush::detect() else {
            return; // Refusal without a flush instruction: region.rs tests.
        };
        let dir = shm_tempdir();
        open_creates_then_recovers(
            &dir,
            Backend::EmulatedPm,
            RegionKind::EmulatedPersistentMemory { flush },
        );
    }

    fn open_creates_then_recovers(dir: &tempfile::TempDir, backend: Backend, kind: RegionKind) {
        let path = dir.path().join("replica.nvm");
        let opts = NvmOptions {
            region_bytes: MIN_REGION_BYTES,
            log_id: Some(5),
            backend,
            ..Default::default()
        };
        let (s, st) = NvmStorage::open(&path, opts.clone()).unwrap();
        assert_eq!(st, DurableState::default());
        assert_eq!(s.region_kind(), kind);
        s.append(&[accept(Slot(7), b"seven"), PersistEntry::Commit(Slot(7))])
            .unwrap();
        let expected = s.state();
        assert!(
            NvmStorage::open(&path, opts.clone()).is_err(),
            "locked while open"
        );
        drop(s);
        assert!(!dir.path().join("replica.nvm.creating").exists());
        let (_, recovered) = NvmStorage::open(&path, opts.clone()).unwrap();
        assert_eq!(recovered, expected);
        let wrong_id = NvmOptions {
            log_id: Some(6),
            ..opts
        };
        assert!(matches!(
            NvmStorage::open(&path, wrong_id),
            Err(StorageError::Corrupt { .. })
        ));
    }

    #[test]
    fn pmem_is_pmem_force_overrides_only_auto_like_pmdk() {
        assert_eq!(
            Backend::Auto.with_pmdk_force(Some("1")).unwrap(),
            Backend::EmulatedPm
        );
        assert_eq!(
            Backend::Auto.with_pmdk_force(Some("0")).unwrap(),
            Backend::MsyncFile
        );
        assert_eq!(Backend::Auto.with_pmdk_force(None).unwrap(), Backend::Auto);
        assert_eq!(
            Backend::Auto.with_pmdk_force(Some("")).unwrap(),
            Backend::Auto
        );
        assert_eq!(
            Backend::MsyncFile.with_pmdk_force(Some("1")).unwrap(),
            Backend::MsyncFile
        );
        assert_eq!(
            Backend::EmulatedPm.with_pmdk_force(Some("0")).unwrap(),
            Backend::EmulatedPm
        );
        let e = Backend::Auto.with_pmdk_force(Some("yes")).unwrap_err();
        assert!(e.to_string().contains("PMEM_IS_PMEM_FORCE"), "{e}");
    }

    /// The replica's event loop appends while a durability waiter calls
    /// `wait_durable` from another thread: every awaited append is durable,
    /// and durable_seq never passes the last issued sequence number.
    #[test]
    fn concurrent_appender_and_durability_waiter() {
        let opts = NvmOptions {
            max_group_appends: 8,
            ..small_opts()
        };
        let (s, _) =
            NvmStorage::format_region(Box::new(VolatileRegion::new(16384)), &opts, "c".into())
                .unwrap();
        let s = std::sync::Arc::new(s);
        let (tx, rx) = std::sync::mpsc::sync_channel::<u64>(64);
        let waiter = {
            let s = s.clone();
            std::thread::spawn(move || {
                let mut waited = 0;
                while let Ok(seq) = rx.recv() {
                    s.wait_durable(seq).unwrap();
                    assert!(s.durable_seq() >= seq);
                    waited += 1;
                }
                waited
            })
        };
        for slot in 1..=500u64 {
            let mut batch = vec![accept(Slot(slot), &[slot as u8; 30])];
            if slot % 50 == 0 {
                batch.push(PersistEntry::Truncate(Slot(slot - 10)));
            }
            let seq = s.append(&batch).unwrap();
            assert!(s.durable_seq() <= seq);
            if slot % 3 == 0 {
                tx.send(seq).unwrap();
            }
        }
        drop(tx);
        assert_eq!(waiter.join().unwrap(), 166);
        assert_eq!(s.commit_pending().unwrap(), 500);
        let expected = s.state();
        let s = std::sync::Arc::into_inner(s).unwrap();
        let (_, recovered) = NvmStorage::open_region(s.into_region(), &opts, "c".into()).unwrap();
        assert_eq!(recovered, expected);
    }

    #[test]
    fn invalid_options_and_tiny_files_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r");
        for bad in [
            NvmOptions {
                region_bytes: 10,
                ..Default::default()
            },
            NvmOptions {
                max_append_bytes: 0,
                ..Default::default()
            },
            NvmOptions {
                max_group_appends: 0,
                ..Default::default()
            },
            NvmOptions {
                max_group_appends: MAX_GROUP_APPENDS + 1,
                ..Default::default()
            },
        ] {
            assert!(matches!(
                NvmStorage::open(&path, bad),
                Err(StorageError::Io { .. })
            ));
        }
        std::fs::write(&path, [1u8; 100]).unwrap();
        let r = NvmStorage::open(&path, NvmOptions::default());
        assert!(
            matches!(r, Err(StorageError::Corrupt { .. })),
            "{:?}",
            r.err()
        );
        let huge = NvmOptions {
            region_bytes: u64::MAX / 2,
            backend: Backend::Volatile,
            ..Default::default()
        };
        assert!(matches!(
            NvmStorage::open(&path, huge),
            Err(StorageError::Full(_))
        ));
    }

    #[test]
    fn open_reports_a_garbage_file_as_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("garbage");
        std::fs::write(&path, vec![0xabu8; 100_000]).unwrap();
        let r = NvmStorage::open(&path, NvmOptions::default());
        assert!(
            matches!(r, Err(StorageError::Corrupt { .. })),
            "{:?}",
            r.err()
        );
    }

    #[test]
    fn a_corrupt_record_fails_open_with_its_position() {
        let (s, _) = volatile(4096);
        s.append(&[accept(Slot(1), b"first")]).unwrap();
        s.append(&[accept(Slot(2), b"second")]).unwrap();
        let mut bytes = vec![0u8; 4096];
        let region = s.into_region();
        region.read(0, &mut bytes).unwrap();
        // Flip a payload byte of the second record.
        let first_len = u32::from_le_bytes(bytes[256..260].try_into().unwrap()) as usize;
        let pos = 256 + 16 + first_len + 16 + 3;
        bytes[pos] ^= 0x40;
        let r = NvmStorage::open_region(
            Box::new(VolatileRegion::from_bytes(bytes)),
            &small_opts(),
            "t".into(),
        );
        match r {
            Err(StorageError::Corrupt { offset, .. }) => {
                assert_eq!(offset, (16 + first_len) as u64)
            }
            other => panic!("expected corruption, got {:?}", other.err()),
        }
    }

    #[test]
    fn group_commit_defers_durability_until_asked() {
        let opts = NvmOptions {
            max_group_appends: 4,
            ..small_opts()
        };
        let (s, _) =
            NvmStorage::format_region(Box::new(VolatileRegion::new(4096)), &opts, "g".into())
                .unwrap();
        assert_eq!(s.append(&[accept(Slot(1), b"a")]).unwrap(), 1);
        assert_eq!(s.append(&[accept(Slot(2), b"b")]).unwrap(), 2);
        assert_eq!(s.durable_seq(), 0, "pending appends are not durable");
        assert_eq!(
            s.read_accepted(Slot::ZERO, 10).unwrap().len(),
            2,
            "but are served"
        );
        s.wait_durable(1).unwrap();
        assert_eq!(s.durable_seq(), 2, "one commit covered both");
        assert_eq!(s.stats().commits, 1);
        for slot in 3..=6 {
            s.append(&[accept(Slot(slot), b"c")]).unwrap();
        }
        assert_eq!(
            s.durable_seq(),
            6,
            "the 4th pending append commits the group"
        );
        s.append(&[accept(Slot(7), b"lost")]).unwrap();
        let durable_state = {
            let mut st = s.state();
            st.accepted.remove(&Slot(7));
            st
        };
        // Dropping with a pending append loses it, like a crash.
        let (s2, recovered) = NvmStorage::open_region(s.into_region(), &opts, "g".into()).unwrap();
        assert_eq!(recovered, durable_state);
        assert_eq!(s2.durable_seq(), 6, "sequence numbers continue");
        assert_eq!(s2.append(&[accept(Slot(7), b"kept")]).unwrap(), 7);
        assert_eq!(s2.commit_pending().unwrap(), 7);
        let (_, again) = NvmStorage::open_region(s2.into_region(), &opts, "g".into()).unwrap();
        assert_eq!(again.accepted.len(), 7);
    }

    proptest! {
        /// Recovery rebuilds exactly the state the appends built, through
        /// any number of compactions, with or without group commit.
        #[test]
        fn recovery_equals_applied_state(batches in proptest::collection::vec(
            proptest::collection::vec(arb_entry(), 1..4), 1..60),
            group in 1usize..5,
        ) {
            let opts = NvmOptions { max_group_appends: group, ..small_opts() };
            let (s, _) = NvmStorage::format_region(
                Box::new(VolatileRegion::new(8192)), &opts, "test".into()).unwrap();
            let mut model = DurableState::default();
            let mut ok_appends = 0u64;
            for b in &batches {
                match s.append(b) {
                    Ok(seq) => {
                        ok_appends += 1;
                        prop_assert_eq!(seq, ok_appends);
                        prop_assert!(s.durable_seq() + group as u64 > seq, "at most group-1 pending");
                        b.iter().for_each(|e| model.apply(e));
                    }
                    Err(StorageError::Full(_)) => {}
                    Err(e) => return Err(TestCaseError::fail(e.to_string())),
                }
                prop_assert_eq!(&s.state(), &model);
            }
            s.commit_pending().map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(s.durable_seq(), ok_appends);
            let (_, recovered) = reopen(s);
            prop_assert_eq!(recovered, model);
        }
    }
}
