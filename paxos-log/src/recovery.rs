//! Rebuilding a replica's [`DurableState`] from the segment files.
//!
//! Rules (see the crate documentation for why they are safe):
//!
//! - Segments are read in order of their first sequence number. Each starts
//!   with a valid header and a `State` record whose sequence number is one
//!   below the segment's first; it must equal the last sequence number of
//!   the previous segment, so a missing segment is a gap and an error.
//! - Records are applied one append (batch) at a time, through
//!   `DurableState::apply`, only once the batch's last record is read.
//! - In the last segment, an incomplete record or batch at the end, or an
//!   all-zero remainder, is a torn tail: the file is cut back to the end of
//!   the last complete batch.
//! - Anything else that does not check out (a checksum mismatch, a bad
//!   sequence number, a short sealed segment) is corruption: an error naming
//!   the file and offset. With `discard_corrupt_suffix`, the log is cut back
//!   to the last good batch before it and every later segment is deleted, so
//!   the replica starts from a shorter, consistent log and must rebuild the
//!   rest from a peer.

use crate::codec::{self, FrameError, Record, StateSummary};
use crate::fs::SharedFs;
use crate::StorageError;
use paxos_core::{DurableState, PersistEntry, Slot};
use std::path::{Path, PathBuf};

/// Hard cap on the payload length a record header may announce. Larger
/// announcements are corruption, whatever the current options say (so
/// lowering `LogOptions::max_record_bytes` never makes old logs unreadable).
pub const MAX_RECORD_PAYLOAD: usize = 1 << 30;

/// Suffix of segment files.
pub const SEGMENT_SUFFIX: &str = ".log";
/// Suffix of segment files being created.
pub const SEGMENT_TMP_SUFFIX: &str = ".log.tmp";

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
}

/// What recovery found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments read.
    pub segments: usize,
    /// Complete appends replayed.
    pub appends: u64,
    /// Bytes of torn tail cut off the last segment.
    pub torn_bytes_cut: u64,
    /// Leftover temporary segment files removed.
    pub temp_files_removed: usize,
    /// The corruption that `discard_corrupt_suffix` discarded the log from,
    /// if any. The replica must rebuild what followed it from a peer.
    pub discarded_corruption: Option<String>,
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

struct Corruption {
    offset: u64,
    reason: String,
    /// End of the last complete batch before the corruption (0 if the
    /// segment itself is unusable).
    good_end: u64,
    /// Highest accept slot in the good part.
    max_accept_slot: Slot,
    /// Sequence number of the last complete batch in the good part.
    last_lsn: u64,
}

struct ScanOk {
    last_lsn: u64,
    good_end: u64,
    torn: bool,
    max_accept_slot: Slot,
    appends: u64,
}

fn io_err(context: String) -> impl FnOnce(std::io::Error) -> StorageError {
    move |source| StorageError::Io { context, source }
}

/// Scans one segment, applying complete batches to `state` as it goes.
fn scan_segment(
    bytes: &[u8],
    name_first_lsn: u64,
    prev_last_lsn: Option<u64>,
    is_last: bool,
    state: &mut DurableState,
    summary: &mut StateSummary,
) -> Result<ScanOk, Corruption> {
    let corrupt =
        |offset: usize, reason: String, good_end: usize, max: Slot, last: u64| Corruption {
            offset: offset as u64,
            reason,
            good_end: good_end as u64,
            max_accept_slot: max,
            last_lsn: last,
        };
    let header_first = match codec::decode_segment_header(bytes) {
        Ok(f) => f,
        Err(FrameError::Incomplete) => {
            return Err(corrupt(
                0,
                "segment shorter than its header".into(),
                0,
                0,
                0,
            ))
        }
        Err(FrameError::Bad(r)) => return Err(corrupt(0, r, 0, 0, 0)),
    };
    if header_first != name_first_lsn || header_first == 0 {
        return Err(corrupt(
            0,
            format!("header names first sequence {header_first}, file name {name_first_lsn}"),
            0,
            0,
            0,
        ));
    }
    let base = header_first - 1;
    if let Some(prev) = prev_last_lsn {
        if prev != base {
            return Err(corrupt(
                0,
                format!("gap: previous segments end at sequence {prev}, this one starts at {header_first}"),
                0,
                0,
                0,
            ));
        }
    }
    let mut offset = codec::SEGMENT_HEADER_LEN;
    let mut good_end = 0usize; // no usable prefix until the State record is read
    let mut last_lsn = base;
    let mut seen_state = false;
    let mut pending: Vec<PersistEntry> = Vec::new();
    let mut pending_lsn: Option<u64> = None;
    let mut batch_start = offset;
    let mut max_accept: Slot = 0;
    let mut pending_max_accept: Slot = 0;
    let mut appends = 0u64;
    while offset < bytes.len() {
        let rest = &bytes[offset..];
        let frame = match codec::decode_frame(rest, MAX_RECORD_PAYLOAD) {
            Ok(f) => f,
            Err(FrameError::Incomplete) if is_last && seen_state => {
                return Ok(ScanOk {
                    last_lsn,
                    good_end: good_end as u64,
                    torn: true,
                    max_accept_slot: max_accept,
                    appends,
                })
            }
            Err(FrameError::Bad(_)) if is_last && seen_state && rest.iter().all(|b| *b == 0) => {
                // A file extended with zeros by a crash: nothing was there.
                return Ok(ScanOk {
                    last_lsn,
                    good_end: good_end as u64,
                    torn: true,
                    max_accept_slot: max_accept,
                    appends,
                });
            }
            Err(FrameError::Incomplete) => {
                let why = if seen_state {
                    "record cut short in a sealed segment"
                } else {
                    "segment state record cut short"
                };
                return Err(corrupt(offset, why.into(), good_end, max_accept, last_lsn));
            }
            Err(FrameError::Bad(r)) => {
                return Err(corrupt(offset, r, good_end, max_accept, last_lsn))
            }
        };
        if !seen_state {
            match frame.record {
                Record::State(s) if frame.lsn == base && frame.end_of_batch => {
                    for e in s.entries() {
                        state.apply(&e);
                        summary.absorb(&e);
                    }
                    seen_state = true;
                }
                _ => {
                    return Err(corrupt(
                        offset,
                        format!("segment does not start with a state record for sequence {base}"),
                        good_end,
                        max_accept,
                        last_lsn,
                    ))
                }
            }
            offset += frame.len;
            good_end = offset;
            batch_start = offset;
            continue;
        }
        // Wrapping: a crafted u64::MAX sequence then fails the check instead of overflowing.
        let want = pending_lsn.unwrap_or(last_lsn.wrapping_add(1));
        if frame.lsn != want {
            return Err(corrupt(
                offset,
                format!("record has sequence {}, expected {want}", frame.lsn),
                good_end,
                max_accept,
                last_lsn,
            ));
        }
        pending_lsn = Some(want);
        match frame.record {
            Record::State(_) => {
                return Err(corrupt(
                    offset,
                    "state record in the middle of a segment".into(),
                    good_end,
                    max_accept,
                    last_lsn,
                ))
            }
            Record::Empty => {}
            Record::Entry(e) => {
                if let PersistEntry::Accept(a) = &e {
                    pending_max_accept = pending_max_accept.max(a.slot);
                }
                pending.push(e);
            }
        }
        offset += frame.len;
        if frame.end_of_batch {
            for e in pending.drain(..) {
                state.apply(&e);
                summary.absorb(&e);
            }
            last_lsn = want;
            pending_lsn = None;
            max_accept = max_accept.max(pending_max_accept);
            good_end = offset;
            batch_start = offset;
            appends += 1;
        }
    }
    if !seen_state {
        return Err(corrupt(
            offset,
            "segment has no state record".into(),
            0,
            0,
            0,
        ));
    }
    if pending_lsn.is_some() {
        if is_last {
            return Ok(ScanOk {
                last_lsn,
                good_end: good_end as u64,
                torn: true,
                max_accept_slot: max_accept,
                appends,
            });
        }
        return Err(corrupt(
            batch_start,
            "append cut short in a sealed segment".into(),
            good_end,
            max_accept,
            last_lsn,
        ));
    }
    Ok(ScanOk {
        last_lsn,
        good_end: good_end as u64,
        torn: false,
        max_accept_slot: max_accept,
        appends,
    })
}

/// Recovers the log in `dir`.
pub fn recover(
    fs: &SharedFs,
    dir: &Path,
    discard_corrupt_suffix: bool,
) -> Result<Recovered, StorageError> {
    paxos_contracts::checked(
        || recover_inner(fs, dir, discard_corrupt_suffix),
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

fn recover_inner(fs: &SharedFs, dir: &Path, discard: bool) -> Result<Recovered, StorageError> {
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
    for name in names {
        let path = dir.join(&name);
        if name.ends_with(SEGMENT_TMP_SUFFIX) {
            // A segment whose creation never completed (it is renamed into
            // place only after it is durable): it holds nothing acknowledged.
            fs.remove_file(&path)
                .map_err(io_err(format!("removing {}", path.display())))?;
            report.temp_files_removed += 1;
        } else if let Some(first) = parse_segment_name(&name) {
            segs.push((first, path));
        }
    }
    if report.temp_files_removed > 0 {
        fs.sync_dir(dir)
            .map_err(io_err(format!("syncing {}", dir.display())))?;
    }
    segs.sort();
    let mut state = DurableState::default();
    let mut summary = StateSummary::default();
    let mut last_lsn: Option<u64> = None;
    let mut metas: Vec<SegmentMeta> = Vec::new();
    let count = segs.len();
    for (i, (first, path)) in segs.iter().enumerate() {
        let is_last = i + 1 == count;
        let bytes = fs
            .read_all(path)
            .map_err(io_err(format!("reading {}", path.display())))?;
        report.segments += 1;
        match scan_segment(&bytes, *first, last_lsn, is_last, &mut state, &mut summary) {
            Ok(scan) => {
                if scan.torn && scan.good_end < bytes.len() as u64 {
                    fs.truncate(path, scan.good_end).map_err(io_err(format!(
                        "cutting the torn tail of {}",
                        path.display()
                    )))?;
                    report.torn_bytes_cut = bytes.len() as u64 - scan.good_end;
                    tracing::warn!(
                        file = %path.display(),
                        offset = scan.good_end,
                        bytes = report.torn_bytes_cut,
                        "cut a torn tail off the log"
                    );
                }
                report.appends += scan.appends;
                last_lsn = Some(scan.last_lsn);
                metas.push(SegmentMeta {
                    first_lsn: *first,
                    path: path.clone(),
                    len: scan.good_end,
                    max_accept_slot: scan.max_accept_slot,
                });
            }
            Err(c) => {
                let description = format!(
                    "corruption in {} at offset {}: {}",
                    path.display(),
                    c.offset,
                    c.reason
                );
                if !discard {
                    return Err(StorageError::Corrupt {
                        file: path.display().to_string(),
                        offset: c.offset,
                        reason: format!(
                            "{} (the replica refuses to start from this log; set \
                             LogOptions::discard_corrupt_suffix to cut the log here and \
                             rebuild the rest from a peer)",
                            c.reason
                        ),
                    });
                }
                tracing::error!(%description, "discarding the log from a corruption on");
                report.discarded_corruption = Some(description);
                // Delete later segments newest first, so a crash part-way
                // leaves a contiguous prefix.
                for (_, later) in segs[i + 1..].iter().rev() {
                    fs.remove_file(later)
                        .map_err(io_err(format!("removing {}", later.display())))?;
                    fs.sync_dir(dir)
                        .map_err(io_err(format!("syncing {}", dir.display())))?;
                }
                if c.good_end == 0 {
                    fs.remove_file(path)
                        .map_err(io_err(format!("removing {}", path.display())))?;
                    fs.sync_dir(dir)
                        .map_err(io_err(format!("syncing {}", dir.display())))?;
                } else {
                    // The scan applied exactly the batches before good_end.
                    fs.truncate(path, c.good_end).map_err(io_err(format!(
                        "cutting {} after corruption",
                        path.display()
                    )))?;
                    let good_end = c.good_end;
                    last_lsn = Some(c.last_lsn);
                    metas.push(SegmentMeta {
                        first_lsn: *first,
                        path: path.clone(),
                        len: good_end,
                        max_accept_slot: c.max_accept_slot,
                    });
                }
                break;
            }
        }
    }
    Ok(Recovered {
        state,
        summary,
        last_lsn: last_lsn.unwrap_or(0),
        segments: metas,
        report,
    })
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
    }
}
