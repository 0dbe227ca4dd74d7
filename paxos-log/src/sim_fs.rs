//! A simulated file system for fault injection, one per simulated disk.
//!
//! It models what a real disk guarantees and no more:
//!
//! - File data written but not yet `sync_data`-ed may be lost on a crash,
//!   wholly or in part: a torn append keeps a prefix of the unsynced
//!   bytes; a torn write in place (inside a preallocated file) keeps each
//!   changed 512-byte sector old or new on its own, in any combination, as
//!   page-cache writeback does, and a write cut short by a crash in place
//!   stops on a sector boundary (sectors are written whole).
//! - Directory changes (create, rename, remove) not yet made durable with
//!   `sync_dir` may be lost on a crash; they are journalled in order, so a
//!   crash keeps some prefix of them.
//! - A crash can be scheduled at any mutating operation: that operation
//!   fails (a write is cut short: part of its buffer lands, unsynced) and
//!   every later operation fails until [`SimFs::crash`] "reboots" the disk.
//!
//! On top of that it injects the faults real disks have, deterministically
//! from [`SimFaults::seed`] and the order of operations (so one seed replays
//! one run), and counts them ([`FaultCounters`]):
//!
//! | fault | how | transient or latent |
//! |---|---|---|
//! | bit flip on read | [`SimFaults::read_bit_flip_per_million`] per sector read | transient: the medium is intact, a re-read returns good bytes (a bus, DMA or controller fault) |
//! | read error (EIO) | [`SimFaults::read_error_per_million`] per sector read | transient: a re-read may succeed |
//! | latent sector error | [`SimFaults::latent_sector_error_per_million`] per sector read, or [`SimFs::make_unreadable`] | latent: every read of the sector fails with EIO until a write touches it (the drive remaps it) or the file is cut below it |
//! | media bit flip (bit rot) | [`SimFs::flip_bit`] | latent: the medium holds the flipped bit until overwritten |
//! | misdirected write | [`SimFaults::misdirected_write_per_million`] per write | latent: the intended place keeps its old (stale) bytes and another place (an earlier offset of the same file, or another file) is clobbered with the data |
//! | torn write, lost unsynced data | [`SimFs::crash`], [`SimFs::crash_after`] | at the crash |
//! | latency | [`SimFs::latency_us`] (base + per byte + rare outliers) | — |
//!
//! A media error is reported as `EIO` ([`crate::fs::is_media_error`]), as a
//! real disk does; a disk that is down after a crash fails with a different
//! error, which recovery does not mistake for damage.
//!
//! The intended place of a misdirected write (an append, or a write in
//! place) reads back as stale, non-zero garbage. (A never-written block that reads as zeros would look
//! exactly like the zeros a crash leaves past the end of a file on xfs,
//! which recovery cuts as a torn tail: the log cannot tell the two apart
//! without redundant metadata, see the crate documentation.)
//!
//! [`SimFaults::default`] injects nothing. Tests run the real
//! [`crate::FileLog`] and [`crate::checkpoint`] code on it, crash at every
//! point of a write sequence, inject faults, and check that what was
//! acknowledged survives or that the loss is reported.

use crate::fs::{FileSystem, ReadableFile, WritableFile, EIO};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// What happens to unsynced data on a crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashPolicy {
    /// Every unsynced byte and directory change is lost.
    LoseUnsynced,
    /// Every unsynced byte and directory change happens to survive.
    KeepUnsynced,
    /// Each file keeps a pseudo-random prefix of its unsynced bytes and the
    /// directory keeps a pseudo-random prefix of its unsynced changes.
    Torn {
        /// Seed for the choices.
        seed: u64,
    },
}

/// Kinds of disk operation, for the latency model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskOp {
    /// A read.
    Read,
    /// A write (into the page cache: cheap until synced).
    Write,
    /// `fdatasync`, a directory fsync, or a truncate (which syncs): the
    /// bytes are what the sync writes back.
    Sync,
    /// A create, rename or remove (journalled, not yet synced).
    Metadata,
}

/// How long disk operations take, in simulated microseconds.
///
/// `latency = base(op) + bytes * nanos_per_kib / 1024 / 1000`, plus, with
/// probability `outlier_per_million`, a slow outlier of up to
/// `outlier_max_us` more (a drive's garbage collection, a firmware hiccup).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LatencyModel {
    /// Base cost of a read.
    pub read_us: u64,
    /// Base cost of a write.
    pub write_us: u64,
    /// Base cost of a sync.
    pub sync_us: u64,
    /// Base cost of a metadata operation.
    pub metadata_us: u64,
    /// Transfer time per KiB, in nanoseconds.
    pub nanos_per_kib: u64,
    /// Probability (per million operations) of a slow outlier.
    pub outlier_per_million: u32,
    /// An outlier adds a uniformly drawn `1..=outlier_max_us`.
    pub outlier_max_us: u64,
}

impl Default for LatencyModel {
    /// A datacenter NVMe SSD without outliers.
    fn default() -> Self {
        LatencyModel {
            read_us: 60,
            write_us: 5,
            sync_us: 250,
            metadata_us: 20,
            nanos_per_kib: 400,
            outlier_per_million: 0,
            outlier_max_us: 20_000,
        }
    }
}

/// The fault-injection knobs of one simulated disk. The default injects
/// nothing (and models an SSD's latency without outliers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimFaults {
    /// Seed of every fault choice (and of latency outliers).
    pub seed: u64,
    /// Bytes per sector: the unit of read faults. Zero counts as 512.
    pub sector_bytes: u32,
    /// Probability (per million sectors read) that a read returns the
    /// sector with one bit flipped. Transient.
    pub read_bit_flip_per_million: u32,
    /// Probability (per million sectors read) that a read fails with EIO.
    /// Transient.
    pub read_error_per_million: u32,
    /// Probability (per million sectors read) that the sector turns out
    /// unreadable: the read fails with EIO, and so does every later read of
    /// it until a write touches it. Latent.
    pub latent_sector_error_per_million: u32,
    /// Probability (per million writes) that a write lands in the wrong
    /// place. Latent.
    pub misdirected_write_per_million: u32,
    /// Latency of each operation.
    pub latency: LatencyModel,
}

impl Default for SimFaults {
    fn default() -> Self {
        SimFaults {
            seed: 0,
            sector_bytes: 512,
            read_bit_flip_per_million: 0,
            read_error_per_million: 0,
            latent_sector_error_per_million: 0,
            misdirected_write_per_million: 0,
            latency: LatencyModel::default(),
        }
    }
}

impl SimFaults {
    fn sector(&self) -> u64 {
        if self.sector_bytes == 0 {
            512
        } else {
            u64::from(self.sector_bytes)
        }
    }
}

/// What a [`SimFs`] injected so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCounters {
    /// Sectors returned with a flipped bit (transient).
    pub read_bit_flips: u64,
    /// Reads failed with a transient EIO.
    pub transient_read_errors: u64,
    /// Sectors that became unreadable (latent), randomly or by
    /// [`SimFs::make_unreadable`].
    pub latent_sector_errors: u64,
    /// Reads failed because they touched a latent unreadable sector.
    pub latent_read_failures: u64,
    /// Bits flipped on the medium by [`SimFs::flip_bit`].
    pub media_bit_flips: u64,
    /// Writes that landed in the wrong place.
    pub misdirected_writes: u64,
    /// Crashes ([`SimFs::crash`] calls).
    pub crashes: u64,
}

#[derive(Clone, Debug, Default)]
struct Inode {
    data: Vec<u8>,
    durable: Vec<u8>,
    /// Latent unreadable sectors (indices), on the medium.
    bad_sectors: BTreeSet<u64>,
}

impl Inode {
    /// Writes `buf` at `at`, zero-filling any gap and growing the file.
    fn put(&mut self, at: u64, buf: &[u8]) {
        let at = at as usize;
        let end = at + buf.len();
        if self.data.len() < end {
            self.data.resize(end, 0);
        }
        self.data[at..end].copy_from_slice(buf);
    }

    /// Bytes written since the last sync: past the durable length, or
    /// different from the durable bytes (an in-place write).
    fn dirty_bytes(&self) -> usize {
        let common = self.data.len().min(self.durable.len());
        let changed = self.data[..common]
            .iter()
            .zip(&self.durable[..common])
            .filter(|(a, b)| a != b)
            .count();
        changed + self.data.len().saturating_sub(self.durable.len())
    }

    /// A write remaps the sectors it touches: they are readable again.
    fn clear_bad(&mut self, range: std::ops::Range<u64>, sector: u64) {
        if self.bad_sectors.is_empty() || range.is_empty() {
            return;
        }
        let touched: Vec<u64> = self
            .bad_sectors
            .range(range.start / sector..=(range.end - 1) / sector)
            .copied()
            .collect();
        for s in touched {
            self.bad_sectors.remove(&s);
        }
    }

    /// Sectors wholly past the end of the file are gone.
    fn drop_bad_past_end(&mut self, sector: u64) {
        let len = self.data.len() as u64;
        self.bad_sectors.retain(|s| s * sector < len);
    }
}

#[derive(Clone, Debug)]
enum DirOp {
    Link(PathBuf, u64),
    Unlink(PathBuf),
}

impl DirOp {
    fn dir(&self) -> Option<&Path> {
        match self {
            DirOp::Link(p, _) | DirOp::Unlink(p) => p.parent(),
        }
    }
    fn apply(&self, names: &mut BTreeMap<PathBuf, u64>) {
        match self {
            DirOp::Link(p, ino) => {
                names.insert(p.clone(), *ino);
            }
            DirOp::Unlink(p) => {
                names.remove(p);
            }
        }
    }
}

#[derive(Debug, Default)]
struct State {
    inodes: HashMap<u64, Inode>,
    names: BTreeMap<PathBuf, u64>,
    durable_names: BTreeMap<PathBuf, u64>,
    pending: Vec<DirOp>,
    next_inode: u64,
    /// Mutating operations before the scheduled crash (0: the next one).
    crash_in: Option<u64>,
    crashed: bool,
    mutating_ops: u64,
    data_syncs: u64,
    syncs_paused: bool,
    faults: SimFaults,
    /// Position in the fault stream.
    fault_draws: u64,
    /// Position in the latency stream (separate, so that asking for
    /// latencies never changes which faults happen).
    latency_draws: u64,
    /// Simulated time spent in operations since [`SimFs::take_busy_us`].
    busy_us: u64,
    counters: FaultCounters,
}

impl State {
    /// Counts a mutating operation; `Err` if the disk is down or this is the
    /// scheduled crash point (then `crashed` is set and the caller applies
    /// any partial effect first via the returned flag).
    fn tick(&mut self) -> Result<bool, io::Error> {
        if self.crashed {
            return Err(crashed());
        }
        self.mutating_ops += 1;
        match self.crash_in {
            Some(0) => {
                self.crash_in = None;
                self.crashed = true;
                Ok(true)
            }
            Some(n) => {
                self.crash_in = Some(n - 1);
                Ok(false)
            }
            None => Ok(false),
        }
    }

    fn alive(&self) -> io::Result<()> {
        if self.crashed {
            Err(crashed())
        } else {
            Ok(())
        }
    }

    fn lookup(&self, path: &Path) -> io::Result<u64> {
        self.names.get(path).copied().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} not found", path.display()),
            )
        })
    }

    /// The next value of the fault stream.
    fn draw(&mut self) -> u64 {
        self.fault_draws += 1;
        mix(self.faults.seed, self.fault_draws)
    }

    /// True with probability `per_million` / 1e6 (drawing nothing at 0).
    fn roll(&mut self, per_million: u32) -> bool {
        per_million > 0 && self.draw() % 1_000_000 < u64::from(per_million)
    }

    fn latency(&mut self, op: DiskOp, bytes: usize) -> u64 {
        let m = self.faults.latency;
        let base = match op {
            DiskOp::Read => m.read_us,
            DiskOp::Write => m.write_us,
            DiskOp::Sync => m.sync_us,
            DiskOp::Metadata => m.metadata_us,
        };
        let transfer = (bytes as u64).saturating_mul(m.nanos_per_kib) / 1024 / 1000;
        let mut us = base.saturating_add(transfer);
        if m.outlier_per_million > 0 {
            self.latency_draws += 1;
            let r = mix(self.faults.seed ^ LATENCY_STREAM, self.latency_draws);
            if r % 1_000_000 < u64::from(m.outlier_per_million) {
                us = us.saturating_add(1 + (r >> 20) % m.outlier_max_us.max(1));
            }
        }
        us
    }

    fn spend(&mut self, op: DiskOp, bytes: usize) {
        let us = self.latency(op, bytes);
        self.busy_us = self.busy_us.saturating_add(us);
    }

    /// Reads `len` bytes at `offset` of `ino` through the fault model.
    fn read_range(&mut self, ino: u64, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        self.alive()?;
        self.spend(DiskOp::Read, len);
        let sector = self.faults.sector();
        let Some(inode) = self.inodes.get(&ino) else {
            return Err(crashed());
        };
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let end = start.checked_add(len).ok_or(io::ErrorKind::UnexpectedEof)?;
        let mut out = inode
            .data
            .get(start..end)
            .ok_or(io::ErrorKind::UnexpectedEof)?
            .to_vec();
        if len == 0 {
            return Ok(out);
        }
        let first = offset / sector;
        let last = (end as u64 - 1) / sector;
        let has_bad = inode.bad_sectors.range(first..=last).next().is_some();
        if has_bad {
            self.counters.latent_read_failures += 1;
            return Err(media_error());
        }
        let f = self.faults;
        for s in first..=last {
            if self.roll(f.latent_sector_error_per_million) {
                if let Some(inode) = self.inodes.get_mut(&ino) {
                    inode.bad_sectors.insert(s);
                }
                self.counters.latent_sector_errors += 1;
                self.counters.latent_read_failures += 1;
                return Err(media_error());
            }
            if self.roll(f.read_error_per_million) {
                self.counters.transient_read_errors += 1;
                return Err(media_error());
            }
        }
        for s in first..=last {
            if self.roll(f.read_bit_flip_per_million) {
                // Flip a bit of this sector's part of the returned bytes.
                let lo = (s * sector).max(offset) - offset;
                let hi = ((s + 1) * sector).min(end as u64) - offset;
                let bit = self.draw() % ((hi - lo) * 8);
                let byte = (lo + bit / 8) as usize;
                out[byte] ^= 1 << (bit % 8);
                self.counters.read_bit_flips += 1;
            }
        }
        Ok(out)
    }

    /// Writes `buf` into `ino` at `at` (in place, growing the file if it
    /// passes the end), possibly misdirected.
    fn write_at(&mut self, ino: u64, at: u64, buf: &[u8]) -> io::Result<()> {
        let sector = self.faults.sector();
        self.spend(DiskOp::Write, buf.len());
        let misdirect = !buf.is_empty() && self.roll(self.faults.misdirected_write_per_million);
        let inode = self.inodes.get_mut(&ino).ok_or_else(crashed)?;
        if !misdirect {
            inode.put(at, buf);
            inode.clear_bad(at..at + buf.len() as u64, sector);
            return Ok(());
        }
        // The file system believes the write happened (the file grows if
        // it passed the end), but the intended place holds whatever its
        // blocks held before: stale, non-zero garbage (see the module
        // documentation for why never zeros).
        let stale_seed = self.draw();
        let stale: Vec<u8> = (0..buf.len() as u64)
            .map(|i| (mix(stale_seed, i) as u8) | 1)
            .collect();
        let inode = self.inodes.get_mut(&ino).ok_or_else(crashed)?;
        inode.put(at, &stale);
        self.counters.misdirected_writes += 1;
        // The data lands on another file's bytes or earlier in this one.
        let mut victims: Vec<u64> = self
            .names
            .values()
            .copied()
            .filter(|v| if *v == ino { at > 0 } else { true })
            .filter(|v| self.inodes.get(v).is_some_and(|i| !i.data.is_empty()))
            .collect();
        victims.sort_unstable();
        victims.dedup();
        if victims.is_empty() {
            return Ok(());
        }
        let victim = victims[(self.draw() % victims.len() as u64) as usize];
        let pick = self.draw();
        let v = self.inodes.get_mut(&victim).ok_or_else(crashed)?;
        // An append's own new bytes are not "another place".
        let room = if victim == ino {
            at
        } else {
            v.data.len() as u64
        };
        if room == 0 {
            return Ok(());
        }
        let n = (buf.len() as u64).min(room);
        let off = pick % (room - n + 1);
        let (o, n) = (off as usize, n as usize);
        v.data[o..o + n].copy_from_slice(&buf[..n]);
        let durable_end = v.durable.len().min(o + n);
        if durable_end > o {
            v.durable[o..durable_end].copy_from_slice(&buf[..durable_end - o]);
        }
        v.clear_bad(off..off + n as u64, sector);
        Ok(())
    }
}

/// What a torn crash leaves of a file written in place since its last sync
/// (`new` at least as long as `old`): each sector that changed is old or
/// new, chosen from `seed`; of the growth past `old`'s end a prefix stays.
fn torn_in_place(old: &[u8], new: &[u8], sector: u64, seed: u64, ino: u64) -> Vec<u8> {
    let sector = sector as usize;
    let mut out = old.to_vec();
    for (i, (o, n)) in out.chunks_mut(sector).zip(new.chunks(sector)).enumerate() {
        let salt = (ino + 2).wrapping_mul(1 << 32).wrapping_add(i as u64);
        if o != n && mix(seed, salt) % 2 == 1 {
            o.copy_from_slice(&n[..o.len()]);
        }
    }
    let extra = new.len() - old.len();
    let keep = (mix(seed, ino + 2) % (extra as u64 + 1)) as usize;
    out.extend_from_slice(&new[old.len()..old.len() + keep]);
    out
}

fn crashed() -> io::Error {
    io::Error::other("simulated crash: disk is down")
}

/// A media error exactly as a real disk reports it (EIO, no more detail:
/// [`FaultCounters`] say which fault it was).
fn media_error() -> io::Error {
    io::Error::from_raw_os_error(EIO)
}

/// Salt separating the latency stream from the fault stream.
const LATENCY_STREAM: u64 = 0x6c61_7465_6e63_7921;

/// Splitmix64: small deterministic choices for torn crashes and faults.
fn mix(seed: u64, salt: u64) -> u64 {
    let mut z = seed.wrapping_add(salt.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The simulated file system. Clones share one disk.
#[derive(Clone, Debug, Default)]
pub struct SimFs {
    state: Arc<Mutex<State>>,
    unpaused: Arc<std::sync::Condvar>,
}

impl SimFs {
    /// An empty disk that injects no faults.
    pub fn new() -> SimFs {
        SimFs::default()
    }

    /// An empty disk injecting `faults`.
    pub fn with_faults(faults: SimFaults) -> SimFs {
        let fs = SimFs::default();
        fs.set_faults(faults);
        fs
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock is a test failure already; keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the fault knobs (a test turns faults on for one phase).
    /// The fault stream continues where it was.
    pub fn set_faults(&self, faults: SimFaults) {
        self.lock().faults = faults;
    }

    /// The fault knobs in force.
    pub fn faults(&self) -> SimFaults {
        self.lock().faults
    }

    /// What was injected so far.
    pub fn fault_counters(&self) -> FaultCounters {
        self.lock().counters
    }

    /// How long an operation of `op` on `bytes` bytes takes, drawn from the
    /// latency model (deterministic: the seed and the number of earlier
    /// draws decide outliers). The simulator asks this to schedule
    /// completions; drawing never changes which faults happen.
    pub fn latency_us(&self, op: DiskOp, bytes: usize) -> u64 {
        self.lock().latency(op, bytes)
    }

    /// Simulated time the operations performed since the last call took
    /// (the sum of their drawn latencies), and resets it. A simulator calls
    /// this after `FileLog::sync_queued` to learn when the sync completes.
    pub fn take_busy_us(&self) -> u64 {
        std::mem::take(&mut self.lock().busy_us)
    }

    /// Schedules a crash at the `n`-th mutating operation from now (0: the
    /// next one).
    pub fn crash_after(&self, n: u64) {
        self.lock().crash_in = Some(n);
    }

    /// Whether the scheduled crash has happened.
    pub fn is_down(&self) -> bool {
        self.lock().crashed
    }

    /// Completed `sync_data` calls so far.
    pub fn data_syncs(&self) -> u64 {
        self.lock().data_syncs
    }

    /// While paused, `sync_data` blocks (to hold the log writer mid-flush).
    pub fn pause_syncs(&self, paused: bool) {
        self.lock().syncs_paused = paused;
        self.unpaused.notify_all();
    }

    /// Mutating operations so far (writes, syncs, creates, renames, removes,
    /// truncates, directory syncs).
    pub fn mutating_ops(&self) -> u64 {
        self.lock().mutating_ops
    }

    /// Crashes now (if not crashed already) and reboots: unsynced data and
    /// directory changes are dropped or kept as `policy` says, and the disk
    /// accepts operations again. Latent faults stay on the medium.
    pub fn crash(&self, policy: CrashPolicy) {
        let mut s = self.lock();
        s.counters.crashes += 1;
        let pending = std::mem::take(&mut s.pending);
        let keep_ops = match policy {
            CrashPolicy::LoseUnsynced => 0,
            CrashPolicy::KeepUnsynced => pending.len(),
            CrashPolicy::Torn { seed } => (mix(seed, 1) % (pending.len() as u64 + 1)) as usize,
        };
        let mut names = s.durable_names.clone();
        for op in &pending[..keep_ops] {
            op.apply(&mut names);
        }
        s.durable_names = names.clone();
        s.names = names;
        let live: std::collections::HashSet<u64> = s.names.values().copied().collect();
        s.inodes.retain(|ino, _| live.contains(ino));
        let sector = s.faults.sector();
        for (ino, inode) in s.inodes.iter_mut() {
            let new = if inode.data.starts_with(&inode.durable) {
                let extra = inode.data.len() - inode.durable.len();
                let keep = match policy {
                    CrashPolicy::LoseUnsynced => 0,
                    CrashPolicy::KeepUnsynced => extra,
                    CrashPolicy::Torn { seed } => {
                        (mix(seed, *ino + 2) % (extra as u64 + 1)) as usize
                    }
                };
                inode.data[..inode.durable.len() + keep].to_vec()
            } else if inode.data.len() >= inode.durable.len() {
                // Written in place since the last sync (a preallocated
                // file): the page cache writes dirty sectors back in any
                // order, so each changed sector is old or new on its own,
                // and a prefix of any growth past the old end survives.
                match policy {
                    CrashPolicy::LoseUnsynced => inode.durable.clone(),
                    CrashPolicy::KeepUnsynced => inode.data.clone(),
                    CrashPolicy::Torn { seed } => {
                        torn_in_place(&inode.durable, &inode.data, sector, seed, *ino)
                    }
                }
            } else {
                // Cut since the last sync: either version may be what the
                // disk holds.
                match policy {
                    CrashPolicy::LoseUnsynced => inode.durable.clone(),
                    CrashPolicy::KeepUnsynced => inode.data.clone(),
                    CrashPolicy::Torn { seed } => {
                        if mix(seed, *ino + 2) % 2 == 0 {
                            inode.durable.clone()
                        } else {
                            inode.data.clone()
                        }
                    }
                }
            };
            inode.data = new.clone();
            inode.durable = new;
            inode.drop_bad_past_end(sector);
        }
        s.crashed = false;
        s.crash_in = None;
    }

    /// Flips one bit of `path`'s content, durably (media corruption, bit
    /// rot). Latent: it stays until the byte is overwritten.
    pub fn flip_bit(&self, path: &Path, bit: u64) -> io::Result<()> {
        let mut s = self.lock();
        let ino = s.lookup(path)?;
        let inode = s.inodes.get_mut(&ino).ok_or_else(crashed)?;
        let byte = (bit / 8) as usize;
        if byte >= inode.data.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "bit past end of file",
            ));
        }
        inode.data[byte] ^= 1 << (bit % 8);
        if byte < inode.durable.len() {
            inode.durable[byte] ^= 1 << (bit % 8);
        }
        s.counters.media_bit_flips += 1;
        Ok(())
    }

    /// Makes every sector overlapping `offset..offset + len` of `path`
    /// unreadable (latent sector errors): reads touching them fail with EIO
    /// until a write touches them or the file is cut below them.
    pub fn make_unreadable(&self, path: &Path, offset: u64, len: u64) -> io::Result<()> {
        let mut s = self.lock();
        let ino = s.lookup(path)?;
        let sector = s.faults.sector();
        let inode = s.inodes.get_mut(&ino).ok_or_else(crashed)?;
        let end = offset.saturating_add(len).min(inode.data.len() as u64);
        if len == 0 || offset >= end {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "range past end of file",
            ));
        }
        let mut added = 0;
        for sec in offset / sector..=(end - 1) / sector {
            if inode.bad_sectors.insert(sec) {
                added += 1;
            }
        }
        s.counters.latent_sector_errors += added;
        Ok(())
    }

    /// The length of `path`, if it exists.
    pub fn file_len(&self, path: &Path) -> Option<u64> {
        let s = self.lock();
        let ino = s.names.get(path)?;
        s.inodes.get(ino).map(|i| i.data.len() as u64)
    }

    /// Paths of the files that exist now, in order.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.lock().names.keys().cloned().collect()
    }

    /// The bytes of `path` as the medium holds them, bypassing the fault
    /// model (for tests that compare contents).
    pub fn raw_contents(&self, path: &Path) -> Option<Vec<u8>> {
        let s = self.lock();
        let ino = s.names.get(path)?;
        s.inodes.get(ino).map(|i| i.data.clone())
    }

    /// Writes `data` into `path` durably (setting up a test scenario).
    pub fn put_durable(&self, path: &Path, data: Vec<u8>) {
        let mut s = self.lock();
        let ino = s.next_inode;
        s.next_inode += 1;
        s.inodes.insert(
            ino,
            Inode {
                data: data.clone(),
                durable: data,
                bad_sectors: BTreeSet::new(),
            },
        );
        s.names.insert(path.to_path_buf(), ino);
        s.durable_names.insert(path.to_path_buf(), ino);
    }
}

struct SimWritable {
    fs: SimFs,
    ino: u64,
    /// Where the next write goes.
    pos: u64,
}

impl WritableFile for SimWritable {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let mut s = self.fs.lock();
        let crash_now = s.tick()?;
        if crash_now {
            // A write cut short by the crash: part of it reached the file.
            // Inside the file (an in-place write) whole sectors land or
            // not, so the cut falls on a sector boundary; a write past the
            // end is cut anywhere (the file's length is what tears).
            let sector = s.faults.sector();
            let inode = s.inodes.get_mut(&self.ino).ok_or_else(crashed)?;
            let mut cut = self.pos + buf.len() as u64 / 2;
            if cut < inode.data.len() as u64 {
                cut = (cut / sector * sector).max(self.pos);
            }
            inode.put(self.pos, &buf[..(cut - self.pos) as usize]);
            return Err(crashed());
        }
        s.write_at(self.ino, self.pos, buf)?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn zero_fill_to(&mut self, len: u64) -> io::Result<()> {
        let mut s = self.fs.lock();
        let crash_now = s.tick()?;
        let inode = s.inodes.get(&self.ino).ok_or_else(crashed)?;
        let from = inode.data.len() as u64;
        if from >= len {
            return if crash_now { Err(crashed()) } else { Ok(()) };
        }
        // Cut short by a crash, half the zeros reached the file.
        let to = if crash_now {
            from + (len - from) / 2
        } else {
            len
        };
        s.spend(DiskOp::Write, (to - from) as usize);
        let inode = s.inodes.get_mut(&self.ino).ok_or_else(crashed)?;
        inode.data.resize(to as usize, 0);
        if crash_now {
            return Err(crashed());
        }
        Ok(())
    }

    fn sync_data(&mut self) -> io::Result<()> {
        let mut s = self.fs.lock();
        while s.syncs_paused {
            s = self.fs.unpaused.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        s.data_syncs += 1;
        if s.tick()? {
            return Err(crashed());
        }
        let dirty = s.inodes.get(&self.ino).map_or(0, Inode::dirty_bytes);
        s.spend(DiskOp::Sync, dirty);
        let inode = s.inodes.get_mut(&self.ino).ok_or_else(crashed)?;
        inode.durable = inode.data.clone();
        Ok(())
    }
}

/// A file open for reading: reads go through the fault model each time.
struct SimReadable {
    fs: SimFs,
    ino: u64,
}

impl ReadableFile for SimReadable {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let bytes = self.fs.lock().read_range(self.ino, offset, buf.len())?;
        buf.copy_from_slice(&bytes);
        Ok(())
    }
    fn file_len(&self) -> io::Result<u64> {
        let s = self.fs.lock();
        s.alive()?;
        s.inodes
            .get(&self.ino)
            .map(|i| i.data.len() as u64)
            .ok_or_else(crashed)
    }
}

impl FileSystem for SimFs {
    fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
        self.lock().alive()
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let s = self.lock();
        s.alive()?;
        Ok(s.names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_owned))
            .collect())
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let mut s = self.lock();
        if s.tick()? {
            return Err(crashed());
        }
        s.spend(DiskOp::Metadata, 0);
        let ino = s.next_inode;
        s.next_inode += 1;
        s.inodes.insert(ino, Inode::default());
        s.names.insert(path.to_path_buf(), ino);
        s.pending.push(DirOp::Link(path.to_path_buf(), ino));
        Ok(Box::new(SimWritable {
            fs: self.clone(),
            ino,
            pos: 0,
        }))
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let s = self.lock();
        s.alive()?;
        let ino = s.lookup(path)?;
        let pos = s.inodes.get(&ino).map_or(0, |i| i.data.len() as u64);
        Ok(Box::new(SimWritable {
            fs: self.clone(),
            ino,
            pos,
        }))
    }

    fn open_write_at(&self, path: &Path, offset: u64) -> io::Result<Box<dyn WritableFile>> {
        let s = self.lock();
        s.alive()?;
        let ino = s.lookup(path)?;
        Ok(Box::new(SimWritable {
            fs: self.clone(),
            ino,
            pos: offset,
        }))
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn ReadableFile>> {
        let s = self.lock();
        s.alive()?;
        let ino = s.lookup(path)?;
        Ok(Box::new(SimReadable {
            fs: self.clone(),
            ino,
        }))
    }

    fn read_all(&self, path: &Path) -> io::Result<Vec<u8>> {
        let mut s = self.lock();
        s.alive()?;
        let ino = s.lookup(path)?;
        let len = s.inodes.get(&ino).map_or(0, |i| i.data.len());
        s.read_range(ino, 0, len)
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let mut s = self.lock();
        let ino = s.lookup(path)?;
        // Two steps on a real disk (set_len, then fsync): a crash may fall
        // between them.
        if s.tick()? {
            return Err(crashed());
        }
        let sector = s.faults.sector();
        let inode = s.inodes.get_mut(&ino).ok_or_else(crashed)?;
        inode.data.truncate(len as usize);
        inode.drop_bad_past_end(sector);
        if s.tick()? {
            return Err(crashed());
        }
        s.spend(DiskOp::Sync, 0);
        let inode = s.inodes.get_mut(&ino).ok_or_else(crashed)?;
        inode.durable = inode.data.clone();
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.lock();
        let ino = s.lookup(from)?;
        if s.tick()? {
            return Err(crashed());
        }
        s.spend(DiskOp::Metadata, 0);
        s.names.remove(from);
        s.names.insert(to.to_path_buf(), ino);
        // Rename is atomic in the journal: one record covers both names.
        s.pending.push(DirOp::Unlink(from.to_path_buf()));
        s.pending.push(DirOp::Link(to.to_path_buf(), ino));
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.lookup(path)?;
        if s.tick()? {
            return Err(crashed());
        }
        s.spend(DiskOp::Metadata, 0);
        s.names.remove(path);
        s.pending.push(DirOp::Unlink(path.to_path_buf()));
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.lock();
        if s.tick()? {
            return Err(crashed());
        }
        s.spend(DiskOp::Sync, 0);
        let pending = std::mem::take(&mut s.pending);
        let mut rest = Vec::new();
        for op in pending {
            if op.dir() == Some(dir) {
                op.apply(&mut s.durable_names);
            } else {
                rest.push(op);
            }
        }
        s.pending = rest;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    #[test]
    fn unsynced_data_and_names_are_lost_on_crash() {
        let fs = SimFs::new();
        let mut f = fs.create(&p("/d/a")).unwrap();
        f.write_all(b"hello").unwrap();
        f.sync_data().unwrap();
        f.write_all(b" world").unwrap();
        // The name was never made durable: the file vanishes.
        fs.crash(CrashPolicy::LoseUnsynced);
        assert!(fs.read_all(&p("/d/a")).is_err());

        let mut f = fs.create(&p("/d/b")).unwrap();
        f.write_all(b"hello").unwrap();
        f.sync_data().unwrap();
        fs.sync_dir(&p("/d")).unwrap();
        f.write_all(b" world").unwrap();
        fs.crash(CrashPolicy::LoseUnsynced);
        assert_eq!(fs.read_all(&p("/d/b")).unwrap(), b"hello");
    }

    #[test]
    fn torn_crash_keeps_a_prefix_of_unsynced_bytes() {
        for seed in 0..20 {
            let fs = SimFs::new();
            let mut f = fs.create(&p("/d/a")).unwrap();
            fs.sync_dir(&p("/d")).unwrap();
            f.write_all(b"abc").unwrap();
            f.sync_data().unwrap();
            f.write_all(b"defghij").unwrap();
            fs.crash(CrashPolicy::Torn { seed });
            let got = fs.read_all(&p("/d/a")).unwrap();
            assert!(got.len() >= 3 && b"abcdefghij".starts_with(&got), "{got:?}");
        }
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + 3) as u8).collect()
    }

    /// A disk with `faults` holding `/d/a`: 2048 patterned bytes.
    fn disk(faults: SimFaults) -> SimFs {
        let fs = SimFs::with_faults(faults);
        fs.put_durable(&p("/d/a"), pattern(2048));
        fs
    }

    fn read_at(fs: &SimFs, path: &str, at: u64, len: usize) -> io::Result<Vec<u8>> {
        let f = fs.open_read(&p(path))?;
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, at)?;
        Ok(buf)
    }

    #[test]
    fn the_default_injects_nothing() {
        let fs = disk(SimFaults::default());
        for _ in 0..100 {
            assert_eq!(fs.read_all(&p("/d/a")).unwrap(), pattern(2048));
        }
        let mut f = fs.create(&p("/d/b")).unwrap();
        for _ in 0..100 {
            f.write_all(&[9u8; 100]).unwrap();
        }
        f.sync_data().unwrap();
        assert_eq!(fs.read_all(&p("/d/b")).unwrap(), vec![9u8; 10_000]);
        assert_eq!(fs.read_all(&p("/d/a")).unwrap(), pattern(2048));
        let c = fs.fault_counters();
        assert_eq!(c, FaultCounters::default());
    }

    #[test]
    fn read_bit_flips_are_transient() {
        let fs = disk(SimFaults {
            read_bit_flip_per_million: 1_000_000,
            ..SimFaults::default()
        });
        let got = fs.read_all(&p("/d/a")).unwrap();
        let flipped: u32 = got
            .iter()
            .zip(pattern(2048))
            .map(|(a, b)| (a ^ b).count_ones())
            .sum();
        assert_eq!(flipped, 4, "one bit per 512-byte sector");
        assert_eq!(fs.fault_counters().read_bit_flips, 4);
        assert_eq!(
            fs.raw_contents(&p("/d/a")).unwrap(),
            pattern(2048),
            "the medium is intact"
        );
        fs.set_faults(SimFaults::default());
        assert_eq!(
            fs.read_all(&p("/d/a")).unwrap(),
            pattern(2048),
            "a re-read is good"
        );
    }

    #[test]
    fn transient_read_errors_pass_on_a_later_read() {
        let fs = disk(SimFaults {
            read_error_per_million: 500_000,
            ..SimFaults::default()
        });
        let (mut ok, mut eio) = (0, 0);
        for _ in 0..64 {
            match read_at(&fs, "/d/a", 0, 512) {
                Ok(b) => {
                    assert_eq!(b, pattern(512));
                    ok += 1;
                }
                Err(e) => {
                    assert!(crate::fs::is_media_error(&e), "{e}");
                    eio += 1;
                }
            }
        }
        assert!(ok > 10 && eio > 10, "{ok} good reads, {eio} errors");
        let c = fs.fault_counters();
        assert_eq!(c.transient_read_errors, eio);
        assert_eq!(c.latent_sector_errors, 0);
    }

    #[test]
    fn latent_sector_errors_persist_until_rewritten_or_cut() {
        let fs = disk(SimFaults {
            latent_sector_error_per_million: 1_000_000,
            ..SimFaults::default()
        });
        assert!(read_at(&fs, "/d/a", 600, 10).is_err());
        fs.set_faults(SimFaults::default());
        // Sector 1 stays unreadable; its neighbours read fine.
        for _ in 0..3 {
            let e = read_at(&fs, "/d/a", 512, 512).unwrap_err();
            assert!(crate::fs::is_media_error(&e));
        }
        assert_eq!(read_at(&fs, "/d/a", 0, 512).unwrap(), pattern(512));
        assert_eq!(
            read_at(&fs, "/d/a", 1024, 1024).unwrap(),
            pattern(2048)[1024..]
        );
        let c = fs.fault_counters();
        assert_eq!((c.latent_sector_errors, c.latent_read_failures), (1, 4));
        // It survives a crash, and goes once the file is cut below it.
        fs.crash(CrashPolicy::LoseUnsynced);
        assert!(read_at(&fs, "/d/a", 512, 1).is_err());
        fs.truncate(&p("/d/a"), 512).unwrap();
        assert_eq!(fs.read_all(&p("/d/a")).unwrap(), pattern(512));
        // A write remaps the sectors it touches.
        let mut f = fs.open_append(&p("/d/a")).unwrap();
        f.write_all(&[7u8; 88]).unwrap();
        fs.make_unreadable(&p("/d/a"), 550, 1).unwrap();
        assert!(fs.read_all(&p("/d/a")).is_err());
        f.write_all(b"x").unwrap();
        assert_eq!(fs.read_all(&p("/d/a")).unwrap().len(), 601);
        assert!(fs.make_unreadable(&p("/d/a"), 5000, 1).is_err());
        assert_eq!(fs.fault_counters().latent_sector_errors, 2);
    }

    #[test]
    fn misdirected_writes_leave_stale_bytes_and_clobber_another_place() {
        for seed in 0..16 {
            let fs = disk(SimFaults {
                seed,
                misdirected_write_per_million: 1_000_000,
                ..SimFaults::default()
            });
            let mut f = fs.create(&p("/d/b")).unwrap();
            f.write_all(&[0x55; 100]).unwrap();
            f.sync_data().unwrap();
            fs.crash(CrashPolicy::LoseUnsynced);
            // The intended place: stale, non-zero, not the data.
            let b = fs.raw_contents(&p("/d/b"));
            if let Some(b) = b {
                assert_eq!(b.len(), 100);
                assert!(b != vec![0x55; 100] && b.iter().all(|x| *x != 0));
            }
            // Another place (the only other file): clobbered, durably.
            let a = fs.raw_contents(&p("/d/a")).unwrap();
            let at = a.windows(100).position(|w| w == [0x55; 100]);
            assert!(at.is_some(), "seed {seed}: the data landed in /d/a");
            let at = at.unwrap();
            assert_eq!(a[..at], pattern(2048)[..at]);
            assert_eq!(a[at + 100..], pattern(2048)[at + 100..]);
            assert_eq!(fs.fault_counters().misdirected_writes, 1);
        }
    }

    #[test]
    fn latency_is_seeded_and_has_outliers() {
        let model = LatencyModel {
            outlier_per_million: 100_000,
            ..LatencyModel::default()
        };
        let fs = |seed| {
            SimFs::with_faults(SimFaults {
                seed,
                latency: model,
                ..SimFaults::default()
            })
        };
        let draws = |fs: &SimFs| -> Vec<u64> {
            (0..2000)
                .map(|_| fs.latency_us(DiskOp::Sync, 4096))
                .collect()
        };
        let a = draws(&fs(1));
        assert_eq!(a, draws(&fs(1)), "one seed, one sequence");
        assert_ne!(a, draws(&fs(2)));
        let base = model.sync_us + 4096 * model.nanos_per_kib / 1024 / 1000;
        assert!(a
            .iter()
            .all(|l| *l >= base && *l <= base + model.outlier_max_us));
        let slow = a.iter().filter(|l| **l > base).count();
        assert!(
            (100..=300).contains(&slow),
            "{slow} outliers in 2000 at 10%"
        );
        // Without outliers: exactly base plus transfer time.
        let plain = SimFs::new();
        assert_eq!(plain.latency_us(DiskOp::Read, 1 << 20), 60 + 409);
        // Operations add up their latencies; asking changes no fault.
        let mut f = plain.create(&p("/d/x")).unwrap();
        f.write_all(&[1u8; 1024]).unwrap();
        f.sync_data().unwrap();
        let m = LatencyModel::default();
        assert_eq!(plain.take_busy_us(), m.metadata_us + m.write_us + m.sync_us);
        assert_eq!(plain.take_busy_us(), 0);
    }

    #[test]
    fn scheduled_crash_cuts_the_write_and_stops_the_disk() {
        let fs = SimFs::new();
        let mut f = fs.create(&p("/d/a")).unwrap();
        fs.crash_after(0);
        assert!(f.write_all(b"abcdef").is_err());
        assert!(fs.is_down());
        assert!(f.sync_data().is_err());
        assert!(fs.read_all(&p("/d/a")).is_err());
        fs.crash(CrashPolicy::KeepUnsynced);
        assert_eq!(fs.read_all(&p("/d/a")).unwrap(), b"abc");
    }
}
