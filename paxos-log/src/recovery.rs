//! Rebuilding a replica's [`DurableState`] from the segment files.
//!
//! Rules (see the crate documentation for why they are safe):
//!
//! - Segments are read in order of their first sequence number. Each starts
//!   with a valid header and a `State` record whose sequence number is one
//!   below the segment's first; it must equal the last sequence number of
//!   the previous segment, so a missing segment is a gap, not a skip.
//! - Records are applied one append (batch) at a time, through
//!   `DurableState::apply`, only once the batch's last record is read.
//! - In the last segment, an incomplete record or batch at the end, or an
//!   all-zero remainder, is a torn tail: the file is cut back to the end of
//!   the last complete batch. That is not damage: those bytes were never
//!   synced, so never acknowledged.
//! - A preallocated segment (header version 2) ends its data with zeros:
//!   an all-zero remainder after a complete batch is its clean end, in any
//!   segment. In the last one, a record that fails its checks and has a
//!   piece in a sector reading as zeros from there to the sector's end is a
//!   torn in-place write (that sector never landed); the torn bytes are
//!   overwritten with zeros and synced instead of cut, so the file keeps
//!   its preallocated length.
//! - Anything else that does not check out (a checksum mismatch, a read
//!   that fails with EIO, a bad sequence number, a short sealed segment, a
//!   gap) is damage. A segment with damage is read a second time first: a
//!   transient fault (a bit flipped on the bus, a read error that passes
//!   on retry) is cured by the re-read and only counted
//!   ([`RecoveryReport::transient_faults_cured`]).
//! - What happens to damage that stays is the [`CorruptionPolicy`]:
//!   [`CorruptionPolicy::Refuse`] fails with [`StorageError::Corrupt`]
//!   naming the file and offset and changes nothing;
//!   [`CorruptionPolicy::Salvage`] keeps the longest valid prefix of
//!   appends (everything before the first damaged append), sets the rest
//!   aside and reports a [`Damage`].
//!
//! # Salvage, step by step
//!
//! 1. The damage is recorded durably in the log directory's damage report
//!    ([`DAMAGE_REPORT`], written to a temporary file, synced and renamed),
//!    together with any damage reported earlier and not yet cleared. Every
//!    later recovery reports it again until the node clears it
//!    ([`crate::FileLog::clear_damage`]) once it has repaired itself from
//!    its peers. So neither a crash during salvage nor a crash during the
//!    repair loses the signal that acknowledged data may be gone.
//! 2. Segments after the damaged one are renamed to `<name>.damaged`
//!    (`<name>.<k>.damaged` if that exists), newest first, with a directory
//!    sync after each, so the live segments stay a contiguous run.
//! 3. The damaged segment is copied to `<name>.damaged` (as far as it could
//!    be read) and cut back to the end of its last good append; if it holds
//!    no usable prefix (its header or state record is damaged) it is
//!    renamed aside instead.
//!
//! A crash anywhere in these steps leaves the damage in place or the cut
//! done, so the next recovery redoes or finishes the same salvage, and the
//! report from step 1 says what happened. Files named `*.damaged` are
//! ignored by recovery; an operator may inspect and delete them.

use crate::codec::{self, FrameError, Record, StateSummary};
use crate::fs::{self, SharedFs};
use crate::storage::{CorruptionPolicy, Damage};
use crate::StorageError;
use paxos_contracts::ensures;
use paxos_core::{DurableState, PersistEntry, Slot};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Hard cap on the payload length a record header may announce. Larger
/// announcements are corruption, whatever the current options say (so
/// lowering `LogOptions::max_record_bytes` never makes old logs unreadable).
pub const MAX_RECORD_PAYLOAD: usize = 1 << 30;

/// Suffix of segment files.
pub const SEGMENT_SUFFIX: &str = ".log";
/// Suffix of segment files being created.
pub const SEGMENT_TMP_SUFFIX: &str = ".log.tmp";
/// Suffix of files set aside by salvage.
pub const DAMAGED_SUFFIX: &str = ".damaged";
/// The log directory's durable record of damage not yet cleared.
pub const DAMAGE_REPORT: &str = "damage.report";
const DAMAGE_REPORT_TMP: &str = "damage.report.tmp";
const DAMAGE_REPORT_MAGIC: &str = "paxos-log damage report v1";

/// Bytes of a segment that holds its header and state record and nothing
/// else (no append was ever written to it).
const EMPTY_SEGMENT_LEN: u64 =
    (codec::SEGMENT_HEADER_LEN + codec::RECORD_HEADER_LEN + codec::STATE_PAYLOAD_LEN) as u64;

/// The name of the segment whose first append has sequence number `first_lsn`.
pub fn segment_name(first_lsn: u64) -> String {
    format!("{first_lsn:020}{SEGMENT_SUFFIX}")
}

/// The first sequence number encoded in a segment file name.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(SEGMENT_SUFFIX)?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// A name for setting `name` aside that no file in `taken` has:
/// `<name>.damaged`, else `<name>.<k>.damaged` for the smallest free `k`.
pub(crate) fn set_aside_name(name: &str, taken: &BTreeSet<String>) -> String {
    let first = format!("{name}{DAMAGED_SUFFIX}");
    if !taken.contains(&first) {
        return first;
    }
    (1u64..)
        .map(|k| format!("{name}.{k}{DAMAGED_SUFFIX}"))
        .find(|n| !taken.contains(n))
        .unwrap_or(first)
}

/// What the writer needs to know about one segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentMeta {
    /// Sequence number of the first append it may hold.
    pub first_lsn: u64,
    /// The file.
    pub path: PathBuf,
    /// Bytes in the file.
    pub len: u64,
    /// The highest slot of any accept record in it (0 if none). Once the
    /// truncation point reaches this, the segment holds nothing live.
    pub max_accept_slot: Slot,
    /// The lowest slot of any accept record in it (`Slot::MAX` if none):
    /// with `max_accept_slot`, which segments a read of a slot range from
    /// disk must look at.
    pub min_accept_slot: Slot,
    /// Where in the file the accept slots lie, block by block, for bytes
    /// from `blocks_from` on (written since open; recovery indexes none:
    /// a read scans what lies before `blocks_from` whole).
    pub accept_blocks: Vec<AcceptBlock>,
    /// The offset from which `accept_blocks` covers the file.
    pub blocks_from: u64,
}

/// A run of whole appends in a segment, from `offset` up to the next
/// block's offset (or the segment's end), whose accept records all have
/// slots in `min_slot ..= max_slot`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcceptBlock {
    /// Where the block's first append starts.
    pub offset: u64,
    /// The lowest accept slot in it.
    pub min_slot: Slot,
    /// The highest accept slot in it.
    pub max_slot: Slot,
}

/// What recovery found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments read.
    pub segments: usize,
    /// Complete appends replayed.
    pub appends: u64,
    /// Bytes of torn tail cut off the last segment (overwritten with zeros
    /// in a preallocated one, which keeps its length).
    pub torn_bytes_cut: u64,
    /// Leftover temporary segment files removed.
    pub temp_files_removed: usize,
    /// Reads that failed (a checksum or EIO) and passed when repeated:
    /// transient faults, cured, but a sign of a failing disk or bus.
    pub transient_faults_cured: u64,
    /// Damage salvaged around, by this recovery or by an earlier one whose
    /// report was not cleared yet, oldest first. Empty: the log is intact
    /// (or every damage was repaired and cleared). Only
    /// [`CorruptionPolicy::Salvage`] recovers from new damage; under
    /// [`CorruptionPolicy::Refuse`] this lists damage salvaged earlier.
    pub damage: Vec<Damage>,
}

/// The result of recovery.
#[derive(Debug)]
pub struct Recovered {
    /// The state the log holds.
    pub state: DurableState,
    /// Promise, commit and truncation points of `state`.
    pub summary: StateSummary,
    /// Sequence number of the last complete append (0 if none).
    pub last_lsn: u64,
    /// Surviving segments, in order (empty if none).
    pub segments: Vec<SegmentMeta>,
    /// What happened.
    pub report: RecoveryReport,
}

/// How the scan of one segment ended.
#[derive(Clone, Debug, PartialEq, Eq)]
enum ScanEnd {
    /// Every byte checked out.
    Clean,
    /// The last segment ends in an incomplete record or append, or zeros.
    Torn,
    /// Damage at `offset`.
    Damaged { offset: u64, reason: String },
}

/// What one segment holds, as far as it checks out. Nothing is applied to
/// the recovered state until the scan is accepted, so a damaged segment can
/// be read and scanned again.
#[derive(Debug)]
struct Scan {
    /// The segment's state record, if it was read.
    summary: Option<StateSummary>,
    /// Complete appends, in order.
    batches: Vec<Vec<PersistEntry>>,
    /// Sequence number of the last complete append (the segment's base if none).
    last_lsn: u64,
    /// End of the last complete append; 0 if the state record was not read
    /// (the segment has no usable prefix).
    good_end: u64,
    /// Highest accept slot in the good part.
    max_accept_slot: Slot,
    /// Lowest accept slot in the good part (`Slot::MAX` if none).
    min_accept_slot: Slot,
    /// The header says the segment is preallocated (zeros end its data).
    preallocated: bool,
    end: ScanEnd,
}

impl Scan {
    fn damaged(mut self, offset: usize, reason: impl Into<String>) -> Scan {
        self.end = ScanEnd::Damaged {
            offset: offset as u64,
            reason: reason.into(),
        };
        self
    }

    fn is_damaged(&self) -> bool {
        matches!(self.end, ScanEnd::Damaged { .. })
    }
}

fn io_err(context: String) -> impl FnOnce(std::io::Error) -> StorageError {
    move |source| StorageError::Io { context, source }
}

/// Scans one segment. `unreadable_at`: `bytes` ends there because the rest
/// could not be read.
fn scan_segment(
    bytes: &[u8],
    name_first_lsn: u64,
    prev_last_lsn: Option<u64>,
    is_last: bool,
    unreadable_at: Option<u64>,
) -> Scan {
    let scan = scan_bytes(bytes, name_first_lsn, prev_last_lsn, is_last);
    match (unreadable_at, &scan.end) {
        (Some(at), ScanEnd::Damaged { offset, .. }) if *offset < at => scan,
        (Some(at), _) => scan.damaged(
            at as usize,
            "unreadable (EIO), also when read again".to_string(),
        ),
        (None, _) => scan,
    }
}

fn scan_bytes(
    bytes: &[u8],
    name_first_lsn: u64,
    prev_last_lsn: Option<u64>,
    is_last: bool,
) -> Scan {
    let mut scan = Scan {
        summary: None,
        batches: Vec::new(),
        last_lsn: 0,
        good_end: 0,
        max_accept_slot: Slot::ZERO,
        min_accept_slot: Slot::MAX,
        preallocated: false,
        end: ScanEnd::Clean,
    };
    let header = match codec::decode_segment_header(bytes) {
        Ok(h) => h,
        Err(FrameError::Incomplete) => return scan.damaged(0, "segment shorter than its header"),
        Err(FrameError::Bad(r)) => return scan.damaged(0, r),
    };
    scan.preallocated = header.preallocated;
    let header_first = header.first_lsn;
    if header_first != name_first_lsn || header_first == 0 {
        return scan.damaged(
            0,
            format!("header names first sequence {header_first}, file name {name_first_lsn}"),
        );
    }
    let base = header_first - 1;
    if let Some(prev) = prev_last_lsn {
        if prev != base {
            return scan.damaged(
                0,
                format!(
                    "gap: previous segments end at sequence {prev}, this one starts at {header_first}"
                ),
            );
        }
    }
    scan.last_lsn = base;
    let mut offset = codec::SEGMENT_HEADER_LEN;
    let mut pending: Vec<PersistEntry> = Vec::new();
    let mut pending_lsn: Option<u64> = None;
    let mut batch_start = offset;
    let mut pending_max_accept: Slot = Slot::ZERO;
    let mut pending_min_accept: Slot = Slot::MAX;
    while offset < bytes.len() {
        let seen_state = scan.summary.is_some();
        let rest = &bytes[offset..];
        let frame = match codec::decode_frame(rest, MAX_RECORD_PAYLOAD) {
            Ok(f) => f,
            Err(_) if scan.preallocated && seen_state && rest.iter().all(|b| *b == 0) => {
                // The zero-filled rest of a preallocated segment: the end
                // of its data (an append cut short before it is handled
                // below, as at the end of any segment).
                break;
            }
            Err(_)
                if scan.preallocated && is_last && seen_state && unlanded_sector(bytes, offset) =>
            {
                // A write into the zero-filled rest that did not fully
                // land before a crash.
                scan.end = ScanEnd::Torn;
                return scan;
            }
            Err(FrameError::Incomplete) if is_last && seen_state => {
                scan.end = ScanEnd::Torn;
                return scan;
            }
            Err(FrameError::Bad(_)) if is_last && seen_state && rest.iter().all(|b| *b == 0) => {
                // A file extended with zeros by a crash: nothing was there.
                scan.end = ScanEnd::Torn;
                return scan;
            }
            Err(FrameError::Incomplete) => {
                let why = if seen_state {
                    "record cut short in a sealed segment"
                } else {
                    "segment state record cut short"
                };
                return scan.damaged(offset, why);
            }
            Err(FrameError::Bad(r)) => return scan.damaged(offset, r),
        };
        if !seen_state {
            match frame.record {
                Record::State(s) if frame.lsn == base && frame.end_of_batch => {
                    scan.summary = Some(s);
                }
                _ => {
                    return scan.damaged(
                        offset,
                        format!("segment does not start with a state record for sequence {base}"),
                    )
                }
            }
            offset += frame.len;
            scan.good_end = offset as u64;
            batch_start = offset;
            continue;
        }
        // Wrapping: a crafted u64::MAX sequence then fails the check instead of overflowing.
        let want = pending_lsn.unwrap_or(scan.last_lsn.wrapping_add(1));
        if frame.lsn != want {
            return scan.damaged(
                offset,
                format!("record has sequence {}, expected {want}", frame.lsn),
            );
        }
        pending_lsn = Some(want);
        match frame.record {
            Record::State(_) => {
                return scan.damaged(offset, "state record in the middle of a segment")
            }
            Record::Empty => {}
            Record::Entry(e) => {
                if let PersistEntry::Accept(a) = &e {
                    pending_max_accept = pending_max_accept.max(a.slot);
                    pending_min_accept = pending_min_accept.min(a.slot);
                }
                pending.push(e);
            }
        }
        offset += frame.len;
        if frame.end_of_batch {
            scan.batches.push(std::mem::take(&mut pending));
            scan.last_lsn = want;
            pending_lsn = None;
            scan.max_accept_slot = scan.max_accept_slot.max(pending_max_accept);
            scan.min_accept_slot = scan.min_accept_slot.min(pending_min_accept);
            scan.good_end = offset as u64;
            batch_start = offset;
        }
    }
    if scan.summary.is_none() {
        return scan.damaged(offset, "segment has no state record");
    }
    if pending_lsn.is_some() {
        if is_last {
            scan.end = ScanEnd::Torn;
            return scan;
        }
        return scan.damaged(batch_start, "append cut short in a sealed segment");
    }
    scan
}

/// Bytes per sector for telling a torn in-place write: the smallest unit a
/// disk writes whole.
const SECTOR_BYTES: usize = 512;

/// Whether the frame at `offset`, which failed its checks, holds a piece
/// that never reached the disk: a piece lying in one 512-byte sector of the
/// file, from which the sector reads as zeros to its end (or to the end of
/// the file). Sectors of an in-place write reach a preallocated, zeroed
/// file whole and in any order, so a crash mid-write leaves exactly that;
/// a written record that is damaged (a flipped bit, garbage) leaves none,
/// unless its last piece is legitimately zero and nothing follows it (the
/// documented limit: zeros at the very end of the log are its end).
fn unlanded_sector(bytes: &[u8], offset: usize) -> bool {
    let rest = &bytes[offset..];
    // The frame's extent as its header announces it when the header checks
    // out; otherwise the header alone.
    let len = match codec::peek_accept_slot(rest, MAX_RECORD_PAYLOAD) {
        Ok((total, _)) => total,
        Err(_) => codec::RECORD_HEADER_LEN,
    };
    let end = offset.saturating_add(len).min(bytes.len());
    let mut at = offset;
    while at < end {
        let sector_end = ((at / SECTOR_BYTES + 1) * SECTOR_BYTES).min(bytes.len());
        if bytes[at..sector_end].iter().all(|b| *b == 0) {
            return true;
        }
        at = sector_end;
    }
    false
}

/// Recovers the log in `dir`.
pub fn recover(
    fs: &SharedFs,
    dir: &Path,
    policy: CorruptionPolicy,
) -> Result<Recovered, StorageError> {
    paxos_contracts::checked(
        || recover_inner(fs, dir, policy),
        |r| match r {
            Ok(rec) => {
                rec.state
                    .accepted
                    .iter()
                    .all(|(s, a)| *s == a.slot && *s > rec.state.truncated_through)
                    && rec.state.promised == rec.summary.promised
                    && rec.state.commit_index == rec.summary.commit_index
                    && rec.state.truncated_through == rec.summary.truncated_through
                    && rec
                        .segments
                        .windows(2)
                        .all(|w| w[0].first_lsn < w[1].first_lsn)
                    && rec
                        .segments
                        .last()
                        .is_none_or(|s| s.first_lsn <= rec.last_lsn.saturating_add(1))
            }
            Err(_) => true,
        },
        "recovery yields a well-formed state and ordered segments",
    )
}

/// The damage `dir`'s report lists (empty if it has none). A report that
/// cannot be read or fails its checksum still means damage is pending: it
/// is returned as one damage with the details lost.
fn read_damage_report(fs: &SharedFs, dir: &Path) -> Result<Vec<Damage>, StorageError> {
    let path = dir.join(DAMAGE_REPORT);
    let read = match fs::read_carefully(fs, &path) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(format!("reading {}", path.display()))(e)),
    };
    let unknown = |why: String| Damage {
        location: path.display().to_string(),
        offset: 0,
        reason: format!("the damage report is itself damaged ({why}); earlier damage is pending"),
        last_kept_seq: None,
        may_have_lost_acknowledged: true,
        set_aside: Vec::new(),
    };
    if read.unreadable_at.is_some() {
        return Ok(vec![unknown("unreadable".into())]);
    }
    match decode_damage_report(&read.bytes) {
        Some(list) => Ok(list),
        None => Ok(vec![unknown("checksum or format".into())]),
    }
}

fn clean_field(s: &str) -> String {
    s.replace(['\t', '\n', '|'], " ")
}

fn encode_damage_report(list: &[Damage]) -> Vec<u8> {
    let mut text = format!("{DAMAGE_REPORT_MAGIC}\n");
    for d in list {
        let kept = d
            .last_kept_seq
            .map_or_else(|| "-".to_string(), |k| k.to_string());
        let aside: Vec<String> = d.set_aside.iter().map(|s| clean_field(s)).collect();
        text.push_str(&format!(
            "{}\t{}\t{}\t{}\t{}\t{}\n",
            clean_field(&d.location),
            d.offset,
            clean_field(&d.reason),
            kept,
            u8::from(d.may_have_lost_acknowledged),
            aside.join("|")
        ));
    }
    let crc = crc32c::crc32c(text.as_bytes());
    text.push_str(&format!("crc32c {crc:08x}\n"));
    text.into_bytes()
}

fn decode_damage_report(bytes: &[u8]) -> Option<Vec<Damage>> {
    let text = std::str::from_utf8(bytes).ok()?;
    let body_end = text.trim_end_matches('\n').rfind('\n')? + 1;
    let (body, crc_line) = text.split_at(body_end);
    let crc = u32::from_str_radix(crc_line.trim().strip_prefix("crc32c ")?, 16).ok()?;
    if crc32c::crc32c(body.as_bytes()) != crc {
        return None;
    }
    let mut lines = body.lines();
    if lines.next()? != DAMAGE_REPORT_MAGIC {
        return None;
    }
    lines
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            if f.len() != 6 {
                return None;
            }
            Some(Damage {
                location: f[0].to_string(),
                offset: f[1].parse().ok()?,
                reason: f[2].to_string(),
                last_kept_seq: match f[3] {
                    "-" => None,
                    k => Some(k.parse().ok()?),
                },
                may_have_lost_acknowledged: f[4] == "1",
                set_aside: f[5]
                    .split('|')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect(),
            })
        })
        .collect()
}

/// Durably replaces `dir`'s damage report with `list` (temporary file,
/// sync, rename, directory sync).
fn write_damage_report(fs: &SharedFs, dir: &Path, list: &[Damage]) -> Result<(), StorageError> {
    let tmp = dir.join(DAMAGE_REPORT_TMP);
    let path = dir.join(DAMAGE_REPORT);
    let mut file = fs
        .create(&tmp)
        .map_err(io_err(format!("creating {}", tmp.display())))?;
    file.write_all(&encode_damage_report(list))
        .map_err(io_err(format!("writing {}", tmp.display())))?;
    file.sync_data()
        .map_err(io_err(format!("syncing {}", tmp.display())))?;
    fs.rename(&tmp, &path)
        .map_err(io_err(format!("renaming {} into place", tmp.display())))?;
    fs.sync_dir(dir)
        .map_err(io_err(format!("syncing directory {}", dir.display())))
}

/// Removes `dir`'s damage report durably (the node repaired itself).
pub(crate) fn clear_damage_report(fs: &SharedFs, dir: &Path) -> Result<(), StorageError> {
    let path = dir.join(DAMAGE_REPORT);
    match fs.remove_file(&path) {
        Ok(()) => fs
            .sync_dir(dir)
            .map_err(io_err(format!("syncing directory {}", dir.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(format!("removing {}", path.display()))(e)),
    }
}

/// Reads and scans one segment, reading and scanning it once more if the
/// first scan finds damage (a transient fault passes the second time).
/// Returns the better scan, the bytes it scanned, and whether a re-read
/// cured damage.
fn read_and_scan(
    fs: &SharedFs,
    path: &Path,
    first: u64,
    prev_last: Option<u64>,
    is_last: bool,
    report: &mut RecoveryReport,
) -> Result<(Scan, fs::CarefulRead), StorageError> {
    let read = |report: &mut RecoveryReport| {
        let r =
            fs::read_carefully(fs, path).map_err(io_err(format!("reading {}", path.display())))?;
        report.transient_faults_cured += r.reads_cured;
        Ok::<_, StorageError>(r)
    };
    let bytes = read(report)?;
    let scan = scan_segment(&bytes.bytes, first, prev_last, is_last, bytes.unreadable_at);
    if !scan.is_damaged() {
        return Ok((scan, bytes));
    }
    let again = read(report)?;
    let rescan = scan_segment(&again.bytes, first, prev_last, is_last, again.unreadable_at);
    if !rescan.is_damaged() {
        report.transient_faults_cured += 1;
        tracing::warn!(file = %path.display(), "a log segment failed its checks once and passed when read again");
        return Ok((rescan, again));
    }
    // Damaged both times: keep the reading that got further.
    Ok(if rescan.good_end > scan.good_end {
        (rescan, again)
    } else {
        (scan, bytes)
    })
}

fn apply_scan(scan: &Scan, state: &mut DurableState, summary: &mut StateSummary) {
    if let Some(s) = &scan.summary {
        for e in s.entries() {
            state.apply(&e);
            summary.absorb(&e);
        }
    }
    for batch in &scan.batches {
        for e in batch {
            state.apply(e);
            summary.absorb(e);
        }
    }
}

fn recover_inner(
    fs: &SharedFs,
    dir: &Path,
    policy: CorruptionPolicy,
) -> Result<Recovered, StorageError> {
    fs.create_dir_all(dir)
        .map_err(io_err(format!("creating {}", dir.display())))?;
    // The directory's own entry must be durable before anything in it is.
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs.sync_dir(&parent)
        .map_err(io_err(format!("syncing {}", parent.display())))?;
    let names = fs
        .list_dir(dir)
        .map_err(io_err(format!("listing {}", dir.display())))?;
    let mut report = RecoveryReport::default();
    let mut segs: Vec<(u64, PathBuf)> = Vec::new();
    let mut taken: BTreeSet<String> = BTreeSet::new();
    let mut removed = false;
    for name in names {
        let path = dir.join(&name);
        if name.ends_with(SEGMENT_TMP_SUFFIX) || name == DAMAGE_REPORT_TMP {
            // A segment (or report) whose creation never completed: it is
            // renamed into place only after it is durable, so it holds
            // nothing acknowledged.
            fs.remove_file(&path)
                .map_err(io_err(format!("removing {}", path.display())))?;
            report.temp_files_removed += usize::from(name.ends_with(SEGMENT_TMP_SUFFIX));
            removed = true;
            continue;
        }
        if let Some(first) = parse_segment_name(&name) {
            segs.push((first, path));
        }
        taken.insert(name);
    }
    if removed {
        fs.sync_dir(dir)
            .map_err(io_err(format!("syncing {}", dir.display())))?;
    }
    report.damage = read_damage_report(fs, dir)?;
    segs.sort();
    let mut state = DurableState::default();
    let mut summary = StateSummary::default();
    let mut last_lsn: Option<u64> = None;
    let mut metas: Vec<SegmentMeta> = Vec::new();
    let count = segs.len();
    for (i, (first, path)) in segs.iter().enumerate() {
        let is_last = i + 1 == count;
        let (scan, read) = read_and_scan(fs, path, *first, last_lsn, is_last, &mut report)?;
        report.segments += 1;
        let ScanEnd::Damaged { offset, reason } = &scan.end else {
            apply_scan(&scan, &mut state, &mut summary);
            if scan.end == ScanEnd::Torn && scan.preallocated {
                report.torn_bytes_cut = zero_torn_tail(fs, path, &read.bytes, scan.good_end)?;
                tracing::warn!(
                    file = %path.display(),
                    offset = scan.good_end,
                    bytes = report.torn_bytes_cut,
                    "zeroed a torn tail of the log"
                );
            } else if scan.end == ScanEnd::Torn && scan.good_end < read.file_len {
                fs.truncate(path, scan.good_end).map_err(io_err(format!(
                    "cutting the torn tail of {}",
                    path.display()
                )))?;
                report.torn_bytes_cut = read.file_len - scan.good_end;
                tracing::warn!(
                    file = %path.display(),
                    offset = scan.good_end,
                    bytes = report.torn_bytes_cut,
                    "cut a torn tail off the log"
                );
            }
            report.appends += scan.batches.len() as u64;
            last_lsn = Some(scan.last_lsn);
            metas.push(SegmentMeta {
                first_lsn: *first,
                path: path.clone(),
                len: scan.good_end,
                max_accept_slot: scan.max_accept_slot,
                min_accept_slot: scan.min_accept_slot,
                accept_blocks: Vec::new(),
                blocks_from: scan.good_end,
            });
            continue;
        };
        if policy == CorruptionPolicy::Refuse {
            return Err(StorageError::Corrupt {
                file: path.display().to_string(),
                offset: *offset,
                reason: format!(
                    "{reason} (the replica refuses to start from this log; with \
                     LogOptions::on_corruption = CorruptionPolicy::Salvage it keeps the appends \
                     before this point, sets the rest aside and reports the damage, and the \
                     replica must repair the rest from its peers)"
                ),
            });
        }
        // A segment holding only its header and state record, right after
        // the previous one (or the first of a new log), held no append:
        // losing it loses nothing that was ever acknowledged.
        let chains = match last_lsn {
            Some(prev) => prev.checked_add(1) == Some(*first),
            None => *first == 1,
        };
        // (A preallocated one holds zeros after its state record; no record
        // is all zeros.)
        let held_no_append = read.file_len <= EMPTY_SEGMENT_LEN
            || (read.unreadable_at.is_none()
                && read
                    .bytes
                    .get(EMPTY_SEGMENT_LEN as usize..)
                    .is_some_and(|rest| rest.iter().all(|b| *b == 0)));
        let nothing_lost = is_last && held_no_append && chains;
        let usable = scan.good_end > 0;
        let kept_lsn = if usable {
            scan.last_lsn
        } else {
            last_lsn.unwrap_or(0)
        };
        // Plan the set-aside names first: the report lists them.
        let mut moves: Vec<(PathBuf, PathBuf)> = Vec::new();
        for (_, later) in segs[i + 1..].iter().rev() {
            moves.push((later.clone(), aside_path(later, &mut taken)));
        }
        let damaged_aside = aside_path(path, &mut taken);
        let damage = Damage {
            location: path.display().to_string(),
            offset: *offset,
            reason: reason.clone(),
            last_kept_seq: Some(kept_lsn),
            may_have_lost_acknowledged: !nothing_lost,
            set_aside: std::iter::once(&damaged_aside)
                .chain(moves.iter().map(|(_, to)| to))
                .map(|p| p.display().to_string())
                .collect(),
        };
        ensures!(damage.last_kept_seq == Some(kept_lsn));
        tracing::error!(%damage, "salvaging the log: keeping the appends before the damage");
        // The same damage again (a crash interrupted its salvage): one entry.
        let same = report.damage.iter_mut().find(|d| {
            (&d.location, d.offset, &d.reason, d.last_kept_seq)
                == (
                    &damage.location,
                    damage.offset,
                    &damage.reason,
                    damage.last_kept_seq,
                )
        });
        match same {
            // A later occurrence may have lost what an earlier one did not
            // (the same place was rewritten since, then damaged again): the
            // flag is the union, never cleared by a repeat.
            Some(d) => {
                d.may_have_lost_acknowledged |= damage.may_have_lost_acknowledged;
                d.set_aside.extend(damage.set_aside);
            }
            None => report.damage.push(damage),
        }
        write_damage_report(fs, dir, &report.damage)?;
        // Newest first, so the live segments stay a contiguous run.
        for (from, to) in &moves {
            fs.rename(from, to)
                .map_err(io_err(format!("setting {} aside", from.display())))?;
            fs.sync_dir(dir)
                .map_err(io_err(format!("syncing {}", dir.display())))?;
        }
        if usable {
            let mut copy = fs
                .create(&damaged_aside)
                .map_err(io_err(format!("creating {}", damaged_aside.display())))?;
            copy.write_all(&read.bytes)
                .map_err(io_err(format!("writing {}", damaged_aside.display())))?;
            copy.sync_data()
                .map_err(io_err(format!("syncing {}", damaged_aside.display())))?;
            fs.sync_dir(dir)
                .map_err(io_err(format!("syncing {}", dir.display())))?;
            fs.truncate(path, scan.good_end).map_err(io_err(format!(
                "cutting {} after its damage",
                path.display()
            )))?;
            apply_scan(&scan, &mut state, &mut summary);
            report.appends += scan.batches.len() as u64;
            last_lsn = Some(scan.last_lsn);
            metas.push(SegmentMeta {
                first_lsn: *first,
                path: path.clone(),
                len: scan.good_end,
                max_accept_slot: scan.max_accept_slot,
                min_accept_slot: scan.min_accept_slot,
                accept_blocks: Vec::new(),
                blocks_from: scan.good_end,
            });
        } else {
            fs.rename(path, &damaged_aside)
                .map_err(io_err(format!("setting {} aside", path.display())))?;
            fs.sync_dir(dir)
                .map_err(io_err(format!("syncing {}", dir.display())))?;
        }
        break;
    }
    Ok(Recovered {
        state,
        summary,
        last_lsn: last_lsn.unwrap_or(0),
        segments: metas,
        report,
    })
}

/// Overwrites with zeros, durably, what a torn write left after `good_end`
/// in the preallocated segment `path` (read as `bytes`), so the zeros after
/// the data are whole again: an append written there later and then torn
/// by another crash must find nothing but its own bytes and zeros. The file
/// keeps its length. Returns the bytes zeroed.
fn zero_torn_tail(
    fs: &SharedFs,
    path: &Path,
    bytes: &[u8],
    good_end: u64,
) -> Result<u64, StorageError> {
    let from = good_end as usize;
    let to = bytes
        .iter()
        .rposition(|b| *b != 0)
        .map_or(from, |last| (last + 1).max(from));
    if to == from {
        return Ok(0);
    }
    let context = || format!("zeroing the torn tail of {}", path.display());
    let mut file = fs
        .open_write_at(path, good_end)
        .map_err(io_err(context()))?;
    file.write_all(&vec![0u8; to - from])
        .map_err(io_err(context()))?;
    file.sync_data().map_err(io_err(context()))?;
    Ok((to - from) as u64)
}

/// Where `path` goes when set aside, reserving the name in `taken`.
fn aside_path(path: &Path, taken: &mut BTreeSet<String>) -> PathBuf {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("segment");
    let aside = set_aside_name(name, taken);
    taken.insert(aside.clone());
    path.with_file_name(aside)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip_and_reject_others() {
        assert_eq!(parse_segment_name(&segment_name(17)), Some(17));
        assert_eq!(parse_segment_name("00000000000000000017.log.tmp"), None);
        assert_eq!(parse_segment_name("17.log"), None);
        assert_eq!(parse_segment_name("0000000000000000001x.log"), None);
        assert_eq!(parse_segment_name("00000000000000000001.ckpt"), None);
        assert_eq!(
            parse_segment_name("00000000000000000001.log.damaged"),
            None,
            "set-aside segments are never replayed"
        );
    }

    #[test]
    fn set_aside_names_never_collide() {
        let mut taken = BTreeSet::new();
        assert_eq!(set_aside_name("a.log", &taken), "a.log.damaged");
        taken.insert("a.log.damaged".to_string());
        assert_eq!(set_aside_name("a.log", &taken), "a.log.1.damaged");
        taken.insert("a.log.1.damaged".to_string());
        assert_eq!(set_aside_name("a.log", &taken), "a.log.2.damaged");
    }

    #[test]
    fn damage_reports_round_trip_and_detect_damage() {
        let list = vec![
            Damage {
                location: "/log/00000000000000000001.log".into(),
                offset: 77,
                reason: "record payload checksum mismatch\twith\ttabs".into(),
                last_kept_seq: Some(4),
                may_have_lost_acknowledged: true,
                set_aside: vec!["/log/a.damaged".into(), "/log/b.damaged".into()],
            },
            Damage {
                location: "x".into(),
                offset: 0,
                reason: "y".into(),
                last_kept_seq: None,
                may_have_lost_acknowledged: false,
                set_aside: Vec::new(),
            },
        ];
        let bytes = encode_damage_report(&list);
        let back = decode_damage_report(&bytes).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].reason, "record payload checksum mismatch with tabs");
        assert_eq!(back[0].set_aside, list[0].set_aside);
        assert_eq!(back[1], list[1]);
        assert_eq!(
            decode_damage_report(&encode_damage_report(&[])),
            Some(vec![])
        );
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x04;
            assert_ne!(
                decode_damage_report(&bad).as_ref(),
                Some(&back),
                "flip at byte {i} went unnoticed"
            );
        }
    }
}
