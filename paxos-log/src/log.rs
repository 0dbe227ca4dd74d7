//! [`FileLog`]: the segmented file log with group commit.

use crate::codec::{self, StateSummary};
use crate::fs::{OsFs, SharedFs, WritableFile};
use crate::histogram::{Log2Histogram, Log2Snapshot};
use crate::recovery::{self, AcceptBlock, RecoveryReport, SegmentMeta, SEGMENT_TMP_SUFFIX};
use crate::spare::{self, Spares};
use crate::storage::{
    CorruptionPolicy, Damage, DurabilityEvent, DurabilityListener, ReplicaStorage, StorageError,
};
use paxos_contracts::{ensures, invariant, requires, snapshot};
use paxos_core::{Accepted, Ballot, DurableState, PersistEntry, Slot};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

/// Who writes and syncs the queued appends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WriterMode {
    /// A dedicated writer thread takes everything queued, writes it and
    /// syncs it (group commit), paced by `min_sync_interval`. Appenders
    /// block while the queue is full. Production.
    #[default]
    Thread,
    /// No thread: appends only queue (and fail with `StorageError::Full`
    /// rather than block when the queue is full), and the caller writes and
    /// syncs the queue with [`FileLog::sync_queued`] (which
    /// `wait_durable` also calls) on its own thread, through the same code
    /// the writer thread runs. No clock is read and no pacing applies, so a
    /// deterministic simulator can run the real log and decide when syncs
    /// happen and how long they take. Dropping the log without
    /// [`FileLog::close`] loses what is queued, like a process crash.
    Inline,
}

/// Tuning and safety options of a [`FileLog`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogOptions {
    /// A new segment starts once the current one would pass this size. One
    /// append larger than this gets a segment of its own.
    pub segment_bytes: u64,
    /// Largest encoded payload of one entry; larger appends fail with
    /// `StorageError::Full`.
    pub max_record_bytes: usize,
    /// Most appends queued for the writer; further appenders block
    /// (backpressure).
    pub max_queued_appends: usize,
    /// Most encoded bytes queued for the writer; further appenders block.
    /// Also the largest single append.
    pub max_queued_bytes: usize,
    /// Most bytes the writer takes into one write + `fdatasync`.
    pub max_flush_bytes: usize,
    /// Bound on the in-memory index of live accepted decrees (approximate
    /// bytes: payload plus 64 per entry). An append of accepts that would
    /// pass it fails with `StorageError::Full` until a checkpoint lets the
    /// replica truncate.
    pub max_index_bytes: usize,
    /// What recovery does with damage (a checksum failure or unreadable
    /// sector anywhere but a torn, never-synced tail): refuse to start (the
    /// default), or salvage the longest valid prefix and report the loss
    /// ([`FileLog::recovery_report`], [`ReplicaStorage::recovery_damage`]);
    /// what was lost must then come from other replicas.
    pub on_corruption: CorruptionPolicy,
    /// Writer thread (production) or inline writes on the caller's thread
    /// (deterministic simulation).
    pub writer: WriterMode,
    /// Group commit pacing under load: once appends pile up behind syncs (a
    /// sync carried more than one append), the next `fdatasync` starts no
    /// sooner than this after the previous one started, and carries all
    /// that queued meanwhile. A lone append is always synced at once, so
    /// light load pays nothing. Zero: sync as soon as anything is queued.
    /// Fewer, larger syncs cost less CPU and I/O per write; on virtual
    /// machines whose host charges block I/O to the guest's CPU quota,
    /// back-to-back syncs by several replicas on one disk freeze every
    /// thread for the rest of the quota period (see docs/BENCHMARKS.md).
    /// Ignored by [`WriterMode::Inline`], where the caller decides when to
    /// sync.
    pub min_sync_interval: std::time::Duration,
    /// Create each new segment at its full size (`segment_bytes`), its
    /// blocks allocated and zero-filled and synced ahead of time, so that
    /// an append writes in place and its `fdatasync` has no file size or
    /// block allocation to journal. The next segment is prepared off the
    /// append path (by a thread of its own, or in [`WriterMode::Inline`]
    /// by the writer right after a group commit is durable); the format is
    /// segment version 2 (the crate documentation says how recovery tells
    /// the zeros after the data from damage). Off by default: see
    /// docs/BENCHMARKS.md for what it measured on this project's disk.
    pub preallocate_segments: bool,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            segment_bytes: 64 << 20,
            max_record_bytes: 16 << 20,
            max_queued_appends: 4096,
            max_queued_bytes: 64 << 20,
            max_flush_bytes: 8 << 20,
            max_index_bytes: 1 << 30,
            on_corruption: CorruptionPolicy::Refuse,
            writer: WriterMode::Thread,
            min_sync_interval: std::time::Duration::ZERO,
            preallocate_segments: false,
        }
    }
}

impl LogOptions {
    fn validate(&self) -> Result<(), StorageError> {
        let bad = |what: &str| {
            Err(StorageError::OutOfRange(format!(
                "invalid LogOptions: {what}"
            )))
        };
        if self.segment_bytes < 4096 {
            return bad("segment_bytes must be at least 4096");
        }
        if self.max_record_bytes == 0 || self.max_record_bytes > recovery::MAX_RECORD_PAYLOAD {
            return bad("max_record_bytes must be in 1..=1 GiB");
        }
        if self.max_queued_appends == 0 || self.max_queued_bytes == 0 || self.max_flush_bytes == 0 {
            return bad("queue and flush limits must be positive");
        }
        if self.min_sync_interval > std::time::Duration::from_secs(1) {
            return bad("min_sync_interval must be at most 1 s");
        }
        Ok(())
    }
}

/// What one queued append changes, for the writer's bookkeeping.
#[derive(Clone, Copy, Debug, Default)]
struct BatchMeta {
    max_accept_slot: Slot,
    /// `Slot::MAX` if the append holds no accept.
    min_accept_slot: Slot,
    promised: Option<Ballot>,
    commit: Option<Slot>,
    truncate: Option<Slot>,
}

impl BatchMeta {
    fn of(entries: &[PersistEntry]) -> BatchMeta {
        let mut m = BatchMeta {
            min_accept_slot: Slot::MAX,
            ..BatchMeta::default()
        };
        for e in entries {
            match e {
                PersistEntry::Accept(a) => {
                    m.max_accept_slot = m.max_accept_slot.max(a.slot);
                    m.min_accept_slot = m.min_accept_slot.min(a.slot);
                }
                PersistEntry::Promise(b) => m.promised = m.promised.max(Some(*b)),
                PersistEntry::Commit(s) => m.commit = m.commit.max(Some(*s)),
                PersistEntry::Truncate(s) => m.truncate = m.truncate.max(Some(*s)),
            }
        }
        m
    }

    fn absorb_into(&self, s: &mut StateSummary) {
        if let Some(b) = self.promised {
            s.absorb(&PersistEntry::Promise(b));
        }
        if let Some(c) = self.commit {
            s.absorb(&PersistEntry::Commit(c));
        }
        if let Some(t) = self.truncate {
            s.absorb(&PersistEntry::Truncate(t));
        }
    }
}

struct Queued {
    lsn: u64,
    bytes: Vec<u8>,
    meta: BatchMeta,
}

/// State shared by appenders, waiters and the writer, under one mutex.
struct Inner {
    /// Sequence number the next append gets.
    next_lsn: u64,
    /// Highest sequence number known durable.
    durable_lsn: u64,
    queue: VecDeque<Queued>,
    queued_bytes: usize,
    /// The state as of every queued append (the durable state plus the queue).
    state: DurableState,
    index_bytes: usize,
    /// Accepted values of slots at or below this are not kept in `state`
    /// (they stay on disk): see [`FileLog::release_memory_through`].
    memory_floor: Slot,
    /// The live segments as the writer last published them (complete
    /// appends only), for reads of released values from disk.
    spans: Vec<SegmentSpan>,
    /// Why the log stopped accepting appends, if it did.
    failed: Option<String>,
    shutting_down: bool,
}

/// Counters of a [`FileLog`]'s I/O since it was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Appends accepted.
    pub appends: u64,
    /// Group commits (write + `fdatasync`) completed.
    pub flushes: u64,
    /// Bytes written to segments (records only).
    pub bytes_written: u64,
    /// Total time spent in segment writes and syncs, in microseconds (0 in
    /// [`WriterMode::Inline`], which reads no clock).
    pub flush_micros: u64,
    /// Segments created.
    pub segments_created: u64,
    /// Segments deleted by truncation.
    pub segments_deleted: u64,
    /// Rolls onto a preallocated segment that was not prepared yet, so the
    /// writer waited while it was zero-filled (0 when preparation keeps
    /// ahead of the writer, or preallocation is off).
    pub spare_waits: u64,
    /// Latency of each `fdatasync` of a segment, in microseconds (empty in
    /// [`WriterMode::Inline`], which reads no clock).
    pub fsync_micros: Log2Snapshot,
    /// Appends written by each group commit.
    pub appends_per_flush: Log2Snapshot,
}

#[derive(Default)]
struct Counters {
    appends: AtomicU64,
    flushes: AtomicU64,
    bytes_written: AtomicU64,
    flush_micros: AtomicU64,
    segments_created: AtomicU64,
    segments_deleted: AtomicU64,
    spare_waits: AtomicU64,
    fsync_micros: Log2Histogram,
    appends_per_flush: Log2Histogram,
}

struct Shared {
    counters: Counters,
    inner: Mutex<Inner>,
    /// Signalled when the queue gains an append or shutdown starts.
    work: Condvar,
    /// Signalled when the queue loses appends (room for blocked appenders).
    space: Condvar,
    /// Signalled when `durable_lsn` moves or the writer fails.
    durable: Condvar,
    durable_lsn: AtomicU64,
    options: LogOptions,
    /// Told of every move of `durable_lsn` and of a failure, besides the
    /// `durable` condvar (thread mode only).
    listener: std::sync::OnceLock<DurabilityListener>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The lock is never held across code that can panic on bad input; a
        // poisoned lock means a bug already reported by the panic.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tells the listener, then wakes every waiter, after `durable_lsn`
    /// moved or the log failed (so a waiter that returns knows the
    /// listener heard). Called with the lock released.
    fn announce(&self, event: DurabilityEvent) {
        if let Some(listener) = self.listener.get() {
            listener(event);
        }
        self.durable.notify_all();
    }
}

/// What a reader of released values needs to know about one live segment.
#[derive(Clone, Debug, PartialEq, Eq)]
struct SegmentSpan {
    first_lsn: u64,
    path: PathBuf,
    /// Bytes of complete, written appends.
    len: u64,
    /// The accept slots it holds lie in `min_accept_slot ..= max_accept_slot`
    /// (`MAX ..= ZERO`: none).
    min_accept_slot: Slot,
    max_accept_slot: Slot,
    /// See [`SegmentMeta::accept_blocks`] (only ever appended to).
    blocks: Vec<AcceptBlock>,
    blocks_from: u64,
}

/// Appends written since open are indexed in blocks of about this many
/// bytes: a read from disk reads the blocks that may hold its slots, not
/// whole segments (24 bytes of index per MiB of log).
const ACCEPT_BLOCK_BYTES: u64 = 1 << 20;

impl SegmentSpan {
    fn of(meta: &SegmentMeta) -> SegmentSpan {
        SegmentSpan {
            first_lsn: meta.first_lsn,
            path: meta.path.clone(),
            len: meta.len,
            min_accept_slot: meta.min_accept_slot,
            max_accept_slot: meta.max_accept_slot,
            blocks: meta.accept_blocks.clone(),
            blocks_from: meta.blocks_from,
        }
    }

    /// The byte ranges of the file a read of slots `from ..= through` must
    /// scan: whatever the block index does not cover, and the blocks whose
    /// slots may be among them.
    fn ranges_to_read(&self, from: Slot, through: Slot) -> Vec<(u64, u64)> {
        let mut ranges = Vec::new();
        let unindexed_end = self.blocks_from.min(self.len);
        if unindexed_end > codec::SEGMENT_HEADER_LEN as u64 {
            ranges.push((0, unindexed_end));
        }
        for (i, b) in self.blocks.iter().enumerate() {
            let end = self.blocks.get(i + 1).map_or(self.len, |n| n.offset);
            if b.min_slot <= through && b.max_slot >= from && b.offset < end.min(self.len) {
                ranges.push((b.offset, end.min(self.len)));
            }
        }
        ranges
    }

    fn may_hold(&self, from: Slot, through: Slot) -> bool {
        self.min_accept_slot <= through && self.max_accept_slot >= from
    }
}

fn accepted_cost(a: &Accepted) -> usize {
    64 + a.value.payload_len()
}

/// Applies `entry` to the queued view, keeping `index_bytes` current. An
/// accepted value at or below `memory_floor` is written but not indexed.
fn apply_indexed(
    state: &mut DurableState,
    index_bytes: &mut usize,
    memory_floor: Slot,
    entry: &PersistEntry,
) {
    match entry {
        PersistEntry::Accept(a) if a.slot <= memory_floor => return,
        PersistEntry::Accept(a) if a.slot > state.truncated_through => {
            if let Some(old) = state.accepted.get(&a.slot) {
                *index_bytes -= accepted_cost(old);
            }
            *index_bytes += accepted_cost(a);
        }
        PersistEntry::Truncate(t) if *t > state.truncated_through => {
            let dropped: usize = state
                .accepted
                .range(..=*t)
                .map(|(_, a)| accepted_cost(a))
                .sum();
            *index_bytes -= dropped;
        }
        _ => {}
    }
    state.apply(entry);
}

/// Reads one segment's written appends and collects into `found` its accept
/// records of slots `from ..= through`, a later record of a slot replacing
/// an earlier one (a vote is only ever replaced by a higher one). Records
/// of other slots are skipped after checking their header only.
fn read_span_accepts(
    fs: &SharedFs,
    span: &SegmentSpan,
    from: Slot,
    through: Slot,
    found: &mut std::collections::BTreeMap<Slot, Accepted>,
) -> Result<(), StorageError> {
    let path = &span.path;
    let file = fs.open_read(path).map_err(io_err(format!(
        "opening {} to serve catch-up",
        path.display()
    )))?;
    let corrupt = |offset: u64, reason: String| StorageError::Corrupt {
        file: path.display().to_string(),
        offset,
        reason,
    };
    let mut bytes = Vec::new();
    // In file order, so a later record of a slot replaces an earlier one.
    for (start, end) in span.ranges_to_read(from, through) {
        bytes.resize((end - start) as usize, 0);
        file.read_exact_at(&mut bytes, start)
            .map_err(io_err(format!(
                "reading {} to serve catch-up",
                path.display()
            )))?;
        // The unindexed range starts with the segment header; a block
        // starts at an append.
        let mut at = if start == 0 {
            codec::SEGMENT_HEADER_LEN.min(bytes.len())
        } else {
            0
        };
        while at < bytes.len() {
            let offset = start + at as u64;
            let rest = &bytes[at..];
            let (len, slot) = codec::peek_accept_slot(rest, recovery::MAX_RECORD_PAYLOAD)
                .map_err(|e| corrupt(offset, format!("{e:?}")))?;
            if slot.is_some_and(|s| s >= from && s <= through) {
                match codec::decode_frame(rest, recovery::MAX_RECORD_PAYLOAD) {
                    Ok(codec::Frame {
                        record: codec::Record::Entry(PersistEntry::Accept(a)),
                        ..
                    }) => {
                        found.insert(a.slot, a);
                    }
                    Ok(_) => return Err(corrupt(offset, "accept header, other record".into())),
                    Err(e) => return Err(corrupt(offset, format!("{e:?}"))),
                }
            }
            at += len;
        }
    }
    Ok(())
}

/// Where the writer runs.
enum WriterHandle {
    /// On its own thread (`None` once stopped).
    Thread(Option<JoinHandle<()>>),
    /// On the threads that call `sync_queued`, one at a time.
    Inline(Mutex<Writer>),
}

/// A durable, segmented, append-only log of a replica's persisted state.
///
/// See the crate documentation for the format and the durability argument.
pub struct FileLog {
    shared: Arc<Shared>,
    writer: WriterHandle,
    fs: SharedFs,
    dir: PathBuf,
    report: RecoveryReport,
    /// Damage reported at open and not cleared yet.
    damage: Mutex<Vec<Damage>>,
}

impl std::fmt::Debug for FileLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileLog")
            .field("dir", &self.dir)
            .field("durable_seq", &self.durable_seq())
            .finish()
    }
}

fn io_err(context: String) -> impl FnOnce(std::io::Error) -> StorageError {
    move |source| StorageError::Io { context, source }
}

impl FileLog {
    /// Opens (or creates) the log in `dir` on the real file system and
    /// returns it with the state it recovered.
    pub fn open(
        dir: impl AsRef<Path>,
        options: LogOptions,
    ) -> Result<(FileLog, DurableState), StorageError> {
        FileLog::open_with(OsFs::shared(), dir, options)
    }

    /// [`FileLog::open`] over any [`crate::fs::FileSystem`] (tests use the
    /// simulated one).
    pub fn open_with(
        fs: SharedFs,
        dir: impl AsRef<Path>,
        options: LogOptions,
    ) -> Result<(FileLog, DurableState), StorageError> {
        options.validate()?;
        let dir = dir.as_ref().to_path_buf();
        let rec = recovery::recover(&fs, &dir, options.on_corruption)?;
        if rec.last_lsn == u64::MAX {
            return Err(StorageError::Corrupt {
                file: dir.display().to_string(),
                offset: 0,
                reason: "the log's sequence numbers are exhausted".into(),
            });
        }
        let mut segments = rec.segments;
        let mode = options.writer;
        let mut spares = if options.preallocate_segments {
            Spares::start(&fs, &dir, options.segment_bytes, mode == WriterMode::Thread)?
        } else {
            Spares::Off
        };
        let active = match segments.last() {
            // Right after the last complete append: the end of the file, or
            // the start of the zeros of a preallocated one.
            Some(last) => fs
                .open_write_at(&last.path, last.len)
                .map_err(io_err(format!("opening {}", last.path.display())))?,
            None => {
                let (file, meta) = if spares.enabled() {
                    let (spare, _) = spares.take()?;
                    spare::install(&fs, &dir, spare, rec.last_lsn + 1, &rec.summary)?
                } else {
                    create_segment(&fs, &dir, rec.last_lsn + 1, &rec.summary)?
                };
                segments.push(meta);
                file
            }
        };
        let mut index_bytes = 0;
        for a in rec.state.accepted.values() {
            index_bytes += accepted_cost(a);
        }
        let shared = Arc::new(Shared {
            counters: Counters::default(),
            inner: Mutex::new(Inner {
                next_lsn: rec.last_lsn + 1,
                durable_lsn: rec.last_lsn,
                queue: VecDeque::new(),
                queued_bytes: 0,
                state: rec.state.clone(),
                index_bytes,
                memory_floor: Slot::ZERO,
                spans: segments.iter().map(SegmentSpan::of).collect(),
                failed: None,
                shutting_down: false,
            }),
            work: Condvar::new(),
            space: Condvar::new(),
            durable: Condvar::new(),
            durable_lsn: AtomicU64::new(rec.last_lsn),
            options,
            listener: std::sync::OnceLock::new(),
        });
        let writer = Writer {
            fs: fs.clone(),
            dir: dir.clone(),
            segments,
            active,
            written: rec.summary,
            last_written: rec.last_lsn,
            wbuf: Vec::new(),
            shared: shared.clone(),
            timed: mode == WriterMode::Thread,
            spares,
        };
        let writer = match mode {
            WriterMode::Inline => WriterHandle::Inline(Mutex::new(writer)),
            WriterMode::Thread => {
                let handle = std::thread::Builder::new()
                    .name("paxos-log-writer".into())
                    .spawn(move || {
                        let shared = writer.shared.clone();
                        let run = std::panic::AssertUnwindSafe(move || writer.run());
                        if std::panic::catch_unwind(run).is_err() {
                            // Waiters must not hang on a writer that is gone.
                            let mut g = shared.lock();
                            let why = "the log writer thread panicked".to_string();
                            g.failed = Some(why.clone());
                            g.queue.clear();
                            g.queued_bytes = 0;
                            drop(g);
                            shared.announce(DurabilityEvent::Failed(why));
                            shared.space.notify_all();
                        }
                    })
                    .map_err(io_err("spawning the log writer thread".into()))?;
                WriterHandle::Thread(Some(handle))
            }
        };
        let damage = Mutex::new(rec.report.damage.clone());
        let log = FileLog {
            shared,
            writer,
            fs,
            dir,
            report: rec.report,
            damage,
        };
        Ok((log, rec.state))
    }

    /// What recovery found when this log was opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.report
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The state as of every append so far (durable or queued), except
    /// the accepted values at or below the memory floor
    /// ([`FileLog::release_memory_through`]): those are on disk only, and a
    /// core restarted from this state must start above the floor (a node
    /// installing a checkpoint does: it installs one beyond what it has
    /// applied, and the floor never passes what it has applied).
    pub fn state(&self) -> DurableState {
        self.shared.lock().state.clone()
    }

    /// Stops keeping in memory the accepted values of slots up to and
    /// including `through` (they stay on disk until truncated, and a
    /// restart recovers them from there).
    ///
    /// Why: the in-memory index of accepted values exists to serve
    /// [`ReplicaStorage::read_accepted`] and to restart a core in place,
    /// and it grew to every decree since the last truncation — the whole
    /// checkpoint interval, far more than the core keeps for catch-up
    /// (`retain_bytes`). The node calls this with the core's own memory
    /// bound, so the log holds in memory no value the core has let go of;
    /// catch-up beyond that is served by a checkpoint.
    ///
    /// The floor only rises. Later accepted values at or below it are
    /// written but not indexed, and [`ReplicaStorage::read_accepted`] from
    /// at or below it answers `OutOfRange`.
    pub fn release_memory_through(&self, through: Slot) {
        let mut g = self.shared.lock();
        if through <= g.memory_floor {
            return;
        }
        g.memory_floor = through;
        let inner = &mut *g;
        let kept = inner.state.accepted.split_off(&through.next());
        let released: usize = inner.state.accepted.values().map(accepted_cost).sum();
        inner.state.accepted = kept;
        inner.index_bytes -= released;
        ensures!(
            g.state.accepted.keys().next().is_none_or(|s| *s > through),
            "no value at or below the floor stays in memory"
        );
    }

    /// I/O counters since open (for monitoring, like RSL's statistics snapshot).
    pub fn stats(&self) -> LogStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        LogStats {
            appends: get(&c.appends),
            flushes: get(&c.flushes),
            bytes_written: get(&c.bytes_written),
            flush_micros: get(&c.flush_micros),
            segments_created: get(&c.segments_created),
            segments_deleted: get(&c.segments_deleted),
            spare_waits: get(&c.spare_waits),
            fsync_micros: c.fsync_micros.snapshot(),
            appends_per_flush: c.appends_per_flush.snapshot(),
        }
    }

    /// Appends waiting in the writer queue (for tests of backpressure).
    #[cfg(test)]
    pub(crate) fn shared_queue_len(&self) -> usize {
        self.shared.lock().queue.len()
    }

    /// Writes and syncs every append queued so far (group commit) and
    /// returns the durable sequence number, which then covers them all.
    ///
    /// In [`WriterMode::Inline`] this is where all writing happens, on the
    /// calling thread, through the same code the writer thread runs: one
    /// write per segment and one `fdatasync` per `max_flush_bytes` taken
    /// from the queue, segment rolls and the reclaiming of truncated
    /// segments. In [`WriterMode::Thread`] it waits for the writer thread
    /// to get there. A failed write or sync stops the log for good, as in
    /// the writer thread.
    pub fn sync_queued(&self) -> Result<u64, StorageError> {
        let writer = match &self.writer {
            WriterHandle::Inline(w) => w,
            WriterHandle::Thread(_) => {
                let last = self.shared.lock().next_lsn - 1;
                if last > 0 {
                    self.wait_durable(last)?;
                }
                return Ok(self.durable_seq());
            }
        };
        // Lock order: the writer, then the shared state (inside).
        let mut writer = writer.lock().unwrap_or_else(|p| p.into_inner());
        let target = self.shared.lock().next_lsn - 1;
        let max_flush = self.shared.options.max_flush_bytes;
        loop {
            let batch = {
                let mut g = self.shared.lock();
                if let Some(why) = &g.failed {
                    return Err(StorageError::Closed(why.clone()));
                }
                take_batch(&mut g, max_flush)
            };
            if batch.is_empty() {
                break;
            }
            writer.commit_batch(batch, None)?;
        }
        let durable = self.durable_seq();
        ensures!(
            durable >= target,
            "every append issued before the call is durable"
        );
        Ok(durable)
    }

    /// Durably forgets the damage recovery reported (see
    /// [`ReplicaStorage::clear_damage`]): removes the log directory's damage
    /// report. Call it once the replica has repaired what was lost.
    pub fn clear_damage(&self) -> Result<(), StorageError> {
        let mut damage = self.damage.lock().unwrap_or_else(|p| p.into_inner());
        recovery::clear_damage_report(&self.fs, &self.dir)?;
        damage.clear();
        Ok(())
    }

    /// Flushes every queued append, stops the writer (if it has a thread)
    /// and reports whether everything appended became durable.
    pub fn close(mut self) -> Result<(), StorageError> {
        if matches!(self.writer, WriterHandle::Inline(_)) {
            // The error is also recorded as `failed`, reported below.
            let _ = self.sync_queued();
        }
        self.stop_writer();
        let g = self.shared.lock();
        match &g.failed {
            Some(why) => Err(StorageError::Closed(why.clone())),
            None => Ok(()),
        }
    }

    fn stop_writer(&mut self) {
        if let WriterHandle::Thread(handle) = &mut self.writer {
            if let Some(h) = handle.take() {
                self.shared.lock().shutting_down = true;
                self.shared.work.notify_all();
                self.shared.space.notify_all();
                if h.join().is_err() {
                    self.shared.lock().failed = Some("the log writer thread panicked".into());
                }
            }
        }
    }

    fn append_inner(&self, entries: &[PersistEntry]) -> Result<u64, StorageError> {
        let opts = &self.shared.options;
        for e in entries {
            let len = codec::entry_payload_len(e);
            if len > opts.max_record_bytes {
                return Err(StorageError::Full(format!(
                    "entry of {len} bytes exceeds max_record_bytes {}",
                    opts.max_record_bytes
                )));
            }
            if let PersistEntry::Accept(a) = e {
                if a.slot == Slot::ZERO {
                    return Err(StorageError::OutOfRange("accept for slot 0".into()));
                }
            }
        }
        // Encode and checksum payloads before taking the lock.
        let mut bytes = Vec::with_capacity(
            entries
                .iter()
                .map(|e| codec::entry_payload_len(e) + codec::RECORD_HEADER_LEN)
                .sum::<usize>()
                .max(codec::RECORD_HEADER_LEN),
        );
        let frames = codec::encode_entries(entries, &mut bytes);
        if bytes.len() > opts.max_queued_bytes {
            return Err(StorageError::Full(format!(
                "append of {} bytes exceeds max_queued_bytes {}",
                bytes.len(),
                opts.max_queued_bytes
            )));
        }
        let meta = BatchMeta::of(entries);
        let mut g = self.shared.lock();
        // Values at or below the memory floor are written, not indexed.
        let added_index: usize = entries
            .iter()
            .map(|e| match e {
                PersistEntry::Accept(a) if a.slot > g.memory_floor => accepted_cost(a),
                _ => 0,
            })
            .sum();
        loop {
            if let Some(why) = &g.failed {
                return Err(StorageError::Closed(why.clone()));
            }
            if g.shutting_down {
                return Err(StorageError::Closed("the log is closing".into()));
            }
            let fits = g.queue.len() < opts.max_queued_appends
                && g.queued_bytes + bytes.len() <= opts.max_queued_bytes;
            if fits {
                break;
            }
            if opts.writer == WriterMode::Inline {
                // Nobody else drains the queue: blocking would hang.
                return Err(StorageError::Full(format!(
                    "the write queue holds {} appends and {} bytes (limits {} and {}); \
                     call sync_queued",
                    g.queue.len(),
                    g.queued_bytes,
                    opts.max_queued_appends,
                    opts.max_queued_bytes
                )));
            }
            g = self.shared.space.wait(g).unwrap_or_else(|p| p.into_inner());
        }
        if meta.truncate.is_none() && g.index_bytes + added_index > opts.max_index_bytes {
            return Err(StorageError::Full(format!(
                "in-memory accepted index would hold {} bytes, over max_index_bytes {}; \
                 take a checkpoint and truncate",
                g.index_bytes + added_index,
                opts.max_index_bytes
            )));
        }
        let lsn = g.next_lsn;
        g.next_lsn += 1;
        for (i, at) in frames.iter().enumerate() {
            codec::seal_frame(&mut bytes, *at, lsn, i + 1 == frames.len());
        }
        let inner = &mut *g;
        for e in entries {
            apply_indexed(
                &mut inner.state,
                &mut inner.index_bytes,
                inner.memory_floor,
                e,
            );
        }
        invariant!(
            inner
                .state
                .accepted
                .keys()
                .next()
                .is_none_or(|s| *s > inner.state.truncated_through),
            "the index holds no truncated slot"
        );
        inner.queued_bytes += bytes.len();
        inner.queue.push_back(Queued { lsn, bytes, meta });
        drop(g);
        self.shared.counters.appends.fetch_add(1, Ordering::Relaxed);
        self.shared.work.notify_one();
        Ok(lsn)
    }
}

impl Drop for FileLog {
    /// Thread mode: flushes what is queued and stops the writer. Inline
    /// mode: does nothing, so what is queued is lost, as in a crash.
    fn drop(&mut self) {
        self.stop_writer();
    }
}

impl ReplicaStorage for FileLog {
    fn append(&self, entries: &[PersistEntry]) -> Result<u64, StorageError> {
        let old_next = snapshot!(self.shared.lock().next_lsn);
        let result = self.append_inner(entries);
        ensures!(
            match &result {
                Ok(lsn) => old_next.is_none_or(|old| *lsn >= old),
                Err(_) => true,
            },
            "an append gets a fresh sequence number above every durable one"
        );
        result
    }

    fn durable_seq(&self) -> u64 {
        self.shared.durable_lsn.load(Ordering::Acquire)
    }

    fn wait_durable(&self, seq: u64) -> Result<(), StorageError> {
        let mut g = self.shared.lock();
        if seq >= g.next_lsn {
            return Err(StorageError::OutOfRange(format!(
                "sequence {seq} was never issued (next is {})",
                g.next_lsn
            )));
        }
        if matches!(self.writer, WriterHandle::Inline(_)) && g.durable_lsn < seq {
            drop(g);
            self.sync_queued()?;
            ensures!(self.shared.durable_lsn.load(Ordering::Acquire) >= seq);
            return Ok(());
        }
        while g.durable_lsn < seq {
            if let Some(why) = &g.failed {
                return Err(StorageError::Closed(why.clone()));
            }
            g = self
                .shared
                .durable
                .wait(g)
                .unwrap_or_else(|p| p.into_inner());
        }
        ensures!(self.shared.durable_lsn.load(Ordering::Acquire) >= seq);
        Ok(())
    }

    fn read_accepted(&self, from: Slot, max: usize) -> Result<Vec<Accepted>, StorageError> {
        let g = self.shared.lock();
        if from <= g.state.truncated_through && g.state.truncated_through > Slot::ZERO {
            return Err(StorageError::OutOfRange(format!(
                "slots through {} are truncated (covered by a checkpoint); asked from {from}",
                g.state.truncated_through
            )));
        }
        if from <= g.memory_floor {
            return Err(StorageError::OutOfRange(format!(
                "values of slots through {} are no longer kept in memory (serve a \
                 checkpoint instead); asked from {from}",
                g.memory_floor
            )));
        }
        let out: Vec<Accepted> = g
            .state
            .accepted
            .range(from..)
            .take(max)
            .map(|(_, a)| a.clone())
            .collect();
        ensures!(out.len() <= max && out.windows(2).all(|w| w[0].slot < w[1].slot));
        Ok(out)
    }

    fn release_memory_through(&self, through: Slot) {
        FileLog::release_memory_through(self, through)
    }

    /// Values above the memory floor come from memory; those at or below it
    /// are read back from the segments that may hold them (by their accept
    /// slot range), the last record of a slot winning as in recovery. The
    /// work is one bounded chunk: at most `max_decrees` slots are looked
    /// for, in the few segments whose slot range covers them.
    fn read_decrees(
        &self,
        from: Slot,
        through: Slot,
        max_decrees: usize,
        max_bytes: usize,
    ) -> Result<Vec<Accepted>, StorageError> {
        if from > through || max_decrees == 0 {
            return Ok(Vec::new());
        }
        let (floor, spans) = {
            let g = self.shared.lock();
            if from <= g.state.truncated_through && g.state.truncated_through > Slot::ZERO {
                return Err(StorageError::OutOfRange(format!(
                    "slots through {} are truncated (covered by a checkpoint); asked from {from}",
                    g.state.truncated_through
                )));
            }
            if from > g.memory_floor {
                let mut out: Vec<Accepted> = g
                    .state
                    .accepted
                    .range(from..)
                    .take(max_decrees)
                    .map(|(_, a)| a.clone())
                    .collect();
                drop(g);
                crate::storage::trim_to_chunk(&mut out, from, through, max_bytes);
                return Ok(out);
            }
            let last = through
                .min(g.memory_floor)
                .min(from.saturating_add(max_decrees as u64 - 1));
            let spans: Vec<SegmentSpan> = g
                .spans
                .iter()
                .filter(|s| s.may_hold(from, last))
                .cloned()
                .collect();
            (last, spans)
        };
        let mut found = std::collections::BTreeMap::new();
        for span in &spans {
            read_span_accepts(&self.fs, span, from, floor, &mut found)?;
        }
        let mut out: Vec<Accepted> = found.into_values().collect();
        crate::storage::trim_to_chunk(&mut out, from, floor, max_bytes);
        if out.is_empty() {
            return Err(StorageError::OutOfRange(format!(
                "slot {from} is not in the written log (not written yet, or not held)"
            )));
        }
        ensures!(out.len() <= max_decrees);
        ensures!(out
            .iter()
            .enumerate()
            .all(|(i, a)| a.slot == from.saturating_add(i as u64)));
        Ok(out)
    }

    fn truncate_through(&self, through: Slot) -> Result<u64, StorageError> {
        let lsn = self.append(&[PersistEntry::Truncate(through)])?;
        ensures!(
            self.shared
                .lock()
                .state
                .accepted
                .keys()
                .next()
                .is_none_or(|s| *s > through),
            "no accepted decree at or below the truncation point stays readable"
        );
        Ok(lsn)
    }

    fn recovery_damage(&self) -> Vec<Damage> {
        self.damage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn clear_damage(&self) -> Result<(), StorageError> {
        FileLog::clear_damage(self)
    }

    /// Thread mode only: the writer thread calls `listener` after each
    /// sync (and on failure). An inline log is synced by its callers, who
    /// know when they did it. Only the first listener is kept.
    fn set_durability_listener(&self, listener: DurabilityListener) -> bool {
        matches!(self.writer, WriterHandle::Thread(_)) && self.shared.listener.set(listener).is_ok()
    }
}

/// Creates a segment durably: header and state record go to a temporary
/// file, which is synced, renamed into place, and the directory synced.
/// Returns the open file (positioned at its end) and its metadata.
fn create_segment(
    fs: &SharedFs,
    dir: &Path,
    first_lsn: u64,
    summary: &StateSummary,
) -> Result<(Box<dyn WritableFile>, SegmentMeta), StorageError> {
    requires!(first_lsn >= 1);
    let tmp = dir.join(format!("{first_lsn:020}{SEGMENT_TMP_SUFFIX}"));
    let file = fs
        .create(&tmp)
        .map_err(io_err(format!("creating {}", tmp.display())))?;
    seal_segment(fs, dir, &tmp, file, first_lsn, false, summary)
}

/// Makes the temporary file `tmp` (open as `file`, positioned at its
/// start) the segment whose first append is `first_lsn`: writes its header
/// (`preallocated`: format version 2) and state record, syncs it, renames
/// it into place and syncs the directory, so a segment name that survives
/// a crash names a complete header and state record. Returns the file,
/// positioned after the state record, and its metadata.
pub(crate) fn seal_segment(
    fs: &SharedFs,
    dir: &Path,
    tmp: &Path,
    mut file: Box<dyn WritableFile>,
    first_lsn: u64,
    preallocated: bool,
    summary: &StateSummary,
) -> Result<(Box<dyn WritableFile>, SegmentMeta), StorageError> {
    requires!(first_lsn >= 1);
    let path = dir.join(recovery::segment_name(first_lsn));
    let mut buf = codec::encode_segment_header(first_lsn, preallocated).to_vec();
    codec::encode_state(summary, first_lsn - 1, &mut buf);
    file.write_all(&buf)
        .map_err(io_err(format!("writing {}", tmp.display())))?;
    file.sync_data()
        .map_err(io_err(format!("syncing {}", tmp.display())))?;
    fs.rename(tmp, &path)
        .map_err(io_err(format!("renaming {} into place", tmp.display())))?;
    fs.sync_dir(dir)
        .map_err(io_err(format!("syncing directory {}", dir.display())))?;
    let meta = SegmentMeta {
        first_lsn,
        path,
        len: buf.len() as u64,
        max_accept_slot: Slot::ZERO,
        min_accept_slot: Slot::MAX,
        accept_blocks: Vec::new(),
        blocks_from: buf.len() as u64,
    };
    Ok((file, meta))
}

/// [`create_segment`] for tests that build damaged logs by hand.
#[cfg(test)]
pub(crate) fn create_segment_for_tests(
    fs: &SharedFs,
    dir: &Path,
    first_lsn: u64,
    summary: &StateSummary,
) -> (Box<dyn WritableFile>, SegmentMeta) {
    create_segment(fs, dir, first_lsn, summary).expect("creating a test segment")
}

/// The writer's state: the thread's in [`WriterMode::Thread`], behind a
/// mutex in [`WriterMode::Inline`]. Only the writer touches segment files
/// after open.
struct Writer {
    fs: SharedFs,
    dir: PathBuf,
    /// Live segments in order; the last one is `active`.
    segments: Vec<SegmentMeta>,
    active: Box<dyn WritableFile>,
    /// Promise, commit and truncation points as of the last written append.
    written: StateSummary,
    /// Sequence number of the last append written and synced.
    last_written: u64,
    wbuf: Vec<u8>,
    shared: Arc<Shared>,
    /// Whether it may read the clock (to time fsyncs): not in
    /// [`WriterMode::Inline`], whose runs must not depend on time.
    timed: bool,
    /// Preallocated segments to roll onto (or `Off`).
    spares: Spares,
}

/// How long the writer lets appends gather before its next sync. A sync
/// whose batch was a lone append is followed by no wait, so a lightly
/// loaded log syncs each append at once; once appends pile up behind syncs
/// (the last batch held more than one), syncs start at most every
/// `min_interval`, and each carries everything queued meanwhile.
fn pacing_delay(
    min_interval: std::time::Duration,
    last_sync_start: Option<std::time::Instant>,
    last_batch_appends: usize,
) -> std::time::Duration {
    match last_sync_start {
        Some(start) if last_batch_appends > 1 => min_interval.saturating_sub(start.elapsed()),
        _ => std::time::Duration::ZERO,
    }
}

/// Takes queued appends off the front of the queue, up to `max_flush_bytes`
/// (at least one), for one group commit. Empty if nothing is queued.
fn take_batch(g: &mut Inner, max_flush_bytes: usize) -> Vec<Queued> {
    let mut taken = Vec::new();
    let mut bytes = 0usize;
    while let Some(front) = g.queue.front() {
        if !taken.is_empty() && bytes + front.bytes.len() > max_flush_bytes {
            break;
        }
        bytes += front.bytes.len();
        taken.extend(g.queue.pop_front());
    }
    g.queued_bytes -= bytes;
    taken
}

impl Writer {
    /// The writer thread: waits for appends, paces syncs under load, and
    /// runs one group commit after another until shutdown or a failure.
    fn run(mut self) {
        let min_interval = self.shared.options.min_sync_interval;
        let max_flush = self.shared.options.max_flush_bytes;
        let mut last_sync: Option<std::time::Instant> = None;
        let mut last_batch_appends = 0usize;
        loop {
            let batch = {
                let mut g = self.shared.lock();
                while g.queue.is_empty() && !g.shutting_down && g.failed.is_none() {
                    g = self.shared.work.wait(g).unwrap_or_else(|p| p.into_inner());
                }
                // Not when shutting down, so close stays prompt.
                let wait = pacing_delay(min_interval, last_sync, last_batch_appends);
                if !wait.is_zero() && !g.shutting_down {
                    drop(g);
                    std::thread::sleep(wait);
                    g = self.shared.lock();
                }
                if g.queue.is_empty() || g.failed.is_some() {
                    break;
                }
                take_batch(&mut g, max_flush)
            };
            let started = std::time::Instant::now();
            last_sync = Some(started);
            last_batch_appends = batch.len();
            if self.commit_batch(batch, Some(started)).is_err() {
                break;
            }
        }
    }

    /// One group commit, the same in both writer modes: writes `batch`
    /// (rolling segments as needed), syncs it, publishes the new durable
    /// sequence number and reclaims segments a truncation freed. A failure
    /// stops the log for good. `started`: when the flush started, for the
    /// I/O time counter (`None`: no clock is read).
    fn commit_batch(
        &mut self,
        batch: Vec<Queued>,
        started: Option<std::time::Instant>,
    ) -> Result<u64, StorageError> {
        // The batch left the queue: blocked appenders may add more while
        // this one is written.
        self.shared.space.notify_all();
        let truncated_before = self.written.truncated_through;
        let result = self.write_and_sync(&batch).and_then(|last| {
            let c = &self.shared.counters;
            c.flushes.fetch_add(1, Ordering::Relaxed);
            c.appends_per_flush.record(batch.len() as u64);
            if let Some(started) = started {
                c.flush_micros
                    .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
            }
            self.publish_durable(last);
            if self.written.truncated_through > truncated_before {
                self.reclaim()?;
                self.sync_spans(&mut self.shared.lock());
            }
            // Inline mode: the next preallocated segment is made here,
            // after the batch is durable and published, not while a later
            // batch waits for its roll.
            self.spares.refill()?;
            Ok(last)
        });
        if let Err(e) = &result {
            tracing::error!(error = %e, "log writer failed; the log accepts no more appends");
            let mut g = self.shared.lock();
            // Never retry a failed fsync: the kernel may have dropped the
            // dirty pages, so a later "successful" fsync proves nothing.
            let why = format!("log writer failed: {e}");
            g.failed = Some(why.clone());
            g.queue.clear();
            g.queued_bytes = 0;
            drop(g);
            self.shared.announce(DurabilityEvent::Failed(why));
            self.shared.space.notify_all();
        }
        result
    }

    fn publish_durable(&self, last: u64) {
        let mut g = self.shared.lock();
        invariant!(last > g.durable_lsn, "durability only moves forward");
        g.durable_lsn = last;
        // Under the same lock: whoever sees the append durable can read it.
        self.sync_spans(&mut g);
        self.shared.durable_lsn.store(last, Ordering::Release);
        drop(g);
        self.shared.announce(DurabilityEvent::Durable(last));
    }

    /// Tells readers of released values what the live segments hold now
    /// (segments are only added at the end and removed from the front, so
    /// this allocates only for a new segment).
    fn sync_spans(&self, g: &mut Inner) {
        let first = self.segments[0].first_lsn;
        let gone = g.spans.iter().take_while(|s| s.first_lsn < first).count();
        g.spans.drain(..gone);
        for (i, meta) in self.segments.iter().enumerate() {
            match g.spans.get_mut(i) {
                Some(span) => {
                    span.len = meta.len;
                    span.min_accept_slot = meta.min_accept_slot;
                    span.max_accept_slot = meta.max_accept_slot;
                    // Blocks are only appended, and only the last one grows.
                    let known = span.blocks.len();
                    if let Some(last) = known.checked_sub(1) {
                        span.blocks[last] = meta.accept_blocks[last];
                    }
                    span.blocks.extend_from_slice(&meta.accept_blocks[known..]);
                }
                None => g.spans.push(SegmentSpan::of(meta)),
            }
        }
        ensures!(g.spans.len() == self.segments.len());
    }

    fn active_meta(&mut self) -> &mut SegmentMeta {
        // Invariant: `segments` is never empty (open creates one).
        let last = self.segments.len() - 1;
        &mut self.segments[last]
    }

    /// Writes `batch` (rolling segments as needed) and syncs it; returns the
    /// sequence number of its last append, now durable.
    fn write_and_sync(&mut self, batch: &[Queued]) -> Result<u64, StorageError> {
        requires!(!batch.is_empty());
        requires!(
            batch.windows(2).all(|w| w[1].lsn == w[0].lsn + 1),
            "appends are written in order"
        );
        requires!(
            batch[0].lsn == self.last_written + 1,
            "no append is skipped between flushes"
        );
        let segment_bytes = self.shared.options.segment_bytes;
        let mut last = 0;
        self.wbuf.clear();
        for q in batch {
            let meta = self.active_meta();
            let base_len = meta.len;
            let holds_appends = meta.first_lsn < q.lsn;
            if holds_appends && base_len + (self.wbuf.len() + q.bytes.len()) as u64 > segment_bytes
            {
                self.flush_wbuf()?;
                self.sync_active()?;
                self.roll(q.lsn)?;
            }
            self.wbuf.extend_from_slice(&q.bytes);
            q.meta.absorb_into(&mut self.written);
            // This append's offset in the file, once what is buffered is written.
            let buffered_before = (self.wbuf.len() - q.bytes.len()) as u64;
            let meta = self.active_meta();
            meta.max_accept_slot = meta.max_accept_slot.max(q.meta.max_accept_slot);
            meta.min_accept_slot = meta.min_accept_slot.min(q.meta.min_accept_slot);
            if q.meta.min_accept_slot <= q.meta.max_accept_slot {
                // Where this append lands: after the bytes buffered so far.
                let at = meta.len + buffered_before;
                match meta.accept_blocks.last_mut() {
                    Some(b) if at - b.offset < ACCEPT_BLOCK_BYTES => {
                        b.min_slot = b.min_slot.min(q.meta.min_accept_slot);
                        b.max_slot = b.max_slot.max(q.meta.max_accept_slot);
                    }
                    _ => meta.accept_blocks.push(AcceptBlock {
                        offset: at,
                        min_slot: q.meta.min_accept_slot,
                        max_slot: q.meta.max_accept_slot,
                    }),
                }
            }
            last = q.lsn;
        }
        self.flush_wbuf()?;
        self.sync_active()?;
        self.last_written = last;
        ensures!(self.segments.last().is_some_and(|s| s.first_lsn <= last));
        Ok(last)
    }

    fn flush_wbuf(&mut self) -> Result<(), StorageError> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let path = self.active_meta().path.clone();
        self.active
            .write_all(&self.wbuf)
            .map_err(io_err(format!("writing {}", path.display())))?;
        let n = self.wbuf.len() as u64;
        self.active_meta().len += n;
        self.shared
            .counters
            .bytes_written
            .fetch_add(n, Ordering::Relaxed);
        self.wbuf.clear();
        Ok(())
    }

    fn sync_active(&mut self) -> Result<(), StorageError> {
        let path = self.active_meta().path.clone();
        let started = self.timed.then(std::time::Instant::now);
        self.active
            .sync_data()
            .map_err(io_err(format!("syncing {}", path.display())))?;
        if let Some(started) = started {
            let micros = started.elapsed().as_micros() as u64;
            self.shared.counters.fsync_micros.record(micros);
        }
        Ok(())
    }

    /// Starts a new segment whose first append is `first_lsn`. The old
    /// segment is already synced, so every non-last segment is complete.
    fn roll(&mut self, first_lsn: u64) -> Result<(), StorageError> {
        let (file, meta) = if self.spares.enabled() {
            let (spare, waited) = self.spares.take()?;
            if waited {
                self.shared
                    .counters
                    .spare_waits
                    .fetch_add(1, Ordering::Relaxed);
            }
            spare::install(&self.fs, &self.dir, spare, first_lsn, &self.written)?
        } else {
            create_segment(&self.fs, &self.dir, first_lsn, &self.written)?
        };
        self.active = file;
        self.segments.push(meta);
        self.shared
            .counters
            .segments_created
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Deletes, oldest first, segments that hold nothing live: every accept
    /// in them is at or below the (durable) truncation point, and their
    /// promise and commit records are summarised by the state record that
    /// starts the next segment. If the active segment itself is dead and
    /// large, a new segment is started first so it can go too.
    fn reclaim(&mut self) -> Result<(), StorageError> {
        let through = self.written.truncated_through;
        let active = self.active_meta().clone();
        if active.max_accept_slot <= through && active.len >= self.shared.options.segment_bytes / 4
        {
            let next = self.shared.lock().durable_lsn + 1;
            // Every queued append has a higher sequence number than the
            // durable ones, so the new segment starts right after them.
            self.roll(next)?;
        }
        while self.segments.len() > 1 && self.segments[0].max_accept_slot <= through {
            let dead = self.segments.remove(0);
            self.fs
                .remove_file(&dead.path)
                .map_err(io_err(format!("removing {}", dead.path.display())))?;
            // One directory sync per removal keeps removals in order on any
            // file system, so the survivors are always a contiguous suffix.
            self.fs
                .sync_dir(&self.dir)
                .map_err(io_err(format!("syncing directory {}", self.dir.display())))?;
            self.shared
                .counters
                .segments_deleted
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(file = %dead.path.display(), "removed a fully truncated log segment");
        }
        invariant!(self
            .segments
            .windows(2)
            .all(|w| w[0].first_lsn < w[1].first_lsn));
        Ok(())
    }
}
