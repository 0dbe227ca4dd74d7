//! Preallocated segments ([`LogOptions::preallocate_segments`]): recovery
//! of segments with zero-filled tails, torn in-place writes, crashes while
//! the next segment is prepared, and damage that must still be found.

use super::{accept, apply_all, one_accept_per_slot, segment_paths, sim, write_segments};
use crate::codec::{self, StateSummary};
use crate::sim_fs::{CrashPolicy, SimFs};
use crate::{FileLog, LogOptions, ReplicaStorage, StorageError, WriterMode};
use paxos_core::{PersistEntry, Slot};
use std::path::{Path, PathBuf};

const SEGMENT: u64 = 8192;

pub(crate) fn preallocated() -> LogOptions {
    LogOptions {
        segment_bytes: SEGMENT,
        preallocate_segments: true,
        ..LogOptions::default()
    }
}

fn preallocated_inline() -> LogOptions {
    LogOptions {
        writer: WriterMode::Inline,
        ..preallocated()
    }
}

/// Where the data of `path` ends: after its last non-zero byte.
fn data_end(fs: &SimFs, path: &Path) -> usize {
    let bytes = fs.raw_contents(path).unwrap();
    bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1)
}

fn spares(fs: &SimFs, dir: &Path) -> Vec<PathBuf> {
    fs.paths()
        .into_iter()
        .filter(|p| {
            p.parent() == Some(dir)
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("spare-") && n.ends_with(".log.tmp"))
        })
        .collect()
}

/// The frames of one append of `entries` with sequence number `lsn`.
fn sealed(entries: &[PersistEntry], lsn: u64) -> Vec<u8> {
    let mut buf = Vec::new();
    let offs = codec::encode_entries(entries, &mut buf);
    for (i, at) in offs.iter().enumerate() {
        codec::seal_frame(&mut buf, *at, lsn, i + 1 == offs.len());
    }
    buf
}

#[test]
fn a_preallocated_segment_recovers_with_no_one_or_many_appends() {
    for n in [0u64, 1, 40] {
        let (fs, shared, dir) = sim();
        let batches: Vec<Vec<PersistEntry>> =
            (1..=n).map(|s| vec![accept(Slot(s), 1, 60)]).collect();
        let (log, _) = FileLog::open_with(shared.clone(), &dir, preallocated()).unwrap();
        for b in &batches {
            log.append(b).unwrap();
        }
        log.close().unwrap();
        let segs = segment_paths(&fs, &dir);
        assert_eq!(segs.len(), 1, "{n} appends fit one segment");
        let seg = &segs[0];
        assert_eq!(
            fs.file_len(seg),
            Some(SEGMENT),
            "created at full size, written in place"
        );
        let raw = fs.raw_contents(seg).unwrap();
        assert!(codec::decode_segment_header(&raw).unwrap().preallocated);
        let (log, state) = FileLog::open_with(shared.clone(), &dir, preallocated()).unwrap();
        assert_eq!(state, apply_all(&batches), "{n} appends");
        assert_eq!(log.durable_seq(), n);
        let report = log.recovery_report();
        assert_eq!(report.torn_bytes_cut, 0, "the zeros are the end, not torn");
        assert!(report.damage.is_empty());
        assert_eq!(report.appends, n);
        // Reopened in the middle of the preallocated file: appends go on
        // right after the data, in place.
        let more = vec![accept(Slot(n + 1), 2, 30)];
        assert_eq!(log.append(&more).unwrap(), n + 1);
        log.close().unwrap();
        assert_eq!(fs.file_len(seg), Some(SEGMENT));
        let (log, state) = FileLog::open_with(shared, &dir, preallocated()).unwrap();
        let mut all = batches.clone();
        all.push(more);
        assert_eq!(state, apply_all(&all));
        assert_eq!(log.durable_seq(), n + 1);
    }
}

#[test]
fn preallocated_segments_roll_onto_prepared_spares_and_mix_with_plain_ones() {
    let (fs, shared, dir) = sim();
    let mut batches: Vec<Vec<PersistEntry>> = Vec::new();
    // Plain segments first, then preallocated ones, then plain again: each
    // segment says in its header which it is.
    for (round, opts) in [
        LogOptions {
            segment_bytes: SEGMENT,
            ..LogOptions::default()
        },
        preallocated(),
        preallocated_inline(),
        LogOptions {
            segment_bytes: SEGMENT,
            ..LogOptions::default()
        },
    ]
    .into_iter()
    .enumerate()
    {
        let (log, state) = FileLog::open_with(shared.clone(), &dir, opts.clone()).unwrap();
        assert_eq!(state, apply_all(&batches), "round {round}");
        for _ in 0..60 {
            let slot = batches.len() as u64 + 1;
            let b = vec![accept(Slot(slot), 1, 300)];
            let seq = log.append(&b).unwrap();
            log.wait_durable(seq).unwrap();
            batches.push(b);
        }
        if opts.preallocate_segments {
            let stats = log.stats();
            assert!(stats.segments_created >= 2, "round {round} rolls");
            if opts.writer == WriterMode::Inline {
                assert_eq!(
                    stats.spare_waits, 0,
                    "inline: each group commit prepares the next spare"
                );
            }
        }
        log.close().unwrap();
    }
    let segs = segment_paths(&fs, &dir);
    let kinds: Vec<bool> = segs
        .iter()
        .map(|p| {
            codec::decode_segment_header(&fs.raw_contents(p).unwrap())
                .unwrap()
                .preallocated
        })
        .collect();
    assert!(kinds.contains(&true) && kinds.contains(&false), "{kinds:?}");
    for (p, pre) in segs.iter().zip(&kinds) {
        if *pre {
            assert!(fs.file_len(p).unwrap() >= SEGMENT, "{}", p.display());
        }
    }
    let (log, state) = FileLog::open_with(shared, &dir, preallocated()).unwrap();
    assert_eq!(state, apply_all(&batches));
    assert_eq!(log.durable_seq(), batches.len() as u64);
    assert_eq!(
        log.recovery_report().temp_files_removed,
        0,
        "the plain round found the inline round's spare and removed it"
    );
    log.close().unwrap();
    assert!(
        spares(&fs, &dir).is_empty(),
        "the preparing thread removes the spare it made on close"
    );
}

/// Appends `batches` to a fresh preallocated log, closes it, and returns
/// its one segment with the offset where its data ends.
fn one_preallocated_segment(
    fs: &SimFs,
    shared: &crate::fs::SharedFs,
    dir: &Path,
    batches: &[Vec<PersistEntry>],
) -> (PathBuf, u64) {
    let (log, _) = FileLog::open_with(shared.clone(), dir, preallocated()).unwrap();
    for b in batches {
        log.append(b).unwrap();
    }
    log.close().unwrap();
    let segs = segment_paths(fs, dir);
    assert_eq!(segs.len(), 1);
    let end = data_end(fs, &segs[0]) as u64;
    (segs[0].clone(), end)
}

#[test]
fn a_torn_write_into_the_zeros_is_dropped_and_zeroed_not_damage() {
    let batches: Vec<Vec<PersistEntry>> = (1..=5).map(|s| vec![accept(Slot(s), 1, 50)]).collect();
    // The next three appends, 1,200 bytes of frames from the end of the
    // data, reach the disk with one sector missing: the first, one in the
    // middle, or the last (sectors land whole, in any order).
    let next: Vec<u8> = (6..=8u64)
        .flat_map(|s| sealed(&[accept(Slot(s), 1, 380)], s))
        .collect();
    for missing in 0..3u64 {
        let (fs, shared, dir) = sim();
        let (seg, end) = one_preallocated_segment(&fs, &shared, &dir, &batches);
        let mut torn = next.clone();
        // Bytes of the write before the first sector boundary it crosses.
        let head = ((end / 512 + 1) * 512 - end) as usize;
        let lost = match missing {
            0 => 0..head,
            k => head + (k as usize - 1) * 512..head + k as usize * 512,
        };
        for b in &mut torn[lost.start..lost.end.min(next.len())] {
            *b = 0;
        }
        let mut f = shared.open_write_at(&seg, end).unwrap();
        f.write_all(&torn).unwrap();
        f.sync_data().unwrap();
        let (log, state) = FileLog::open_with(shared.clone(), &dir, preallocated())
            .unwrap_or_else(|e| panic!("sector {missing} missing: {e}"));
        let kept = log.durable_seq() as usize;
        assert!(
            (5..8).contains(&kept),
            "sector {missing} missing: kept {kept}"
        );
        let mut all = batches.clone();
        all.extend((6..=8u64).map(|s| vec![accept(Slot(s), 1, 380)]));
        assert_eq!(state, apply_all(&all[..kept]));
        assert!(
            log.recovery_damage().is_empty(),
            "a torn write is not damage"
        );
        assert!(log.recovery_report().torn_bytes_cut > 0);
        assert_eq!(fs.file_len(&seg), Some(SEGMENT), "zeroed, not cut");
        // Zeroed durably: after another crash that loses nothing synced,
        // the data still ends at the kept appends.
        fs.crash(CrashPolicy::LoseUnsynced);
        drop(log);
        let (log, _) = FileLog::open_with(shared.clone(), &dir, preallocated()).unwrap();
        assert_eq!(log.durable_seq() as usize, kept);
        assert_eq!(log.recovery_report().torn_bytes_cut, 0);
        let extra = vec![PersistEntry::Commit(Slot(2))];
        log.append(&extra).unwrap();
        log.close().unwrap();
        let (log, state) = FileLog::open_with(shared, &dir, preallocated()).unwrap();
        let mut want = apply_all(&all[..kept]);
        want.apply(&extra[0]);
        assert_eq!(state, want);
        assert_eq!(log.durable_seq() as usize, kept + 1);
    }
}

#[test]
fn a_half_written_append_in_the_zeros_is_dropped_whole() {
    let (fs, shared, dir) = sim();
    let batches: Vec<Vec<PersistEntry>> = (1..=3).map(|s| vec![accept(Slot(s), 1, 50)]).collect();
    let (seg, end) = one_preallocated_segment(&fs, &shared, &dir, &batches);
    // Two of the three records of append 4 landed, the third did not.
    let frames = sealed(
        &[
            accept(Slot(4), 1, 10),
            accept(Slot(5), 1, 10),
            accept(Slot(6), 1, 10),
        ],
        4,
    );
    let third = frames.len() - (codec::RECORD_HEADER_LEN + 21 + 10);
    let mut f = shared.open_write_at(&seg, end).unwrap();
    f.write_all(&frames[..third]).unwrap();
    f.sync_data().unwrap();
    let (log, state) = FileLog::open_with(shared, &dir, preallocated()).unwrap();
    assert_eq!(
        state,
        apply_all(&batches),
        "a partial append is never applied"
    );
    assert_eq!(log.recovery_report().torn_bytes_cut, third as u64);
    assert!(log.recovery_damage().is_empty());
}

#[test]
fn damage_in_a_preallocated_segment_is_still_damage() {
    let batches: Vec<Vec<PersistEntry>> = (1..=6).map(|s| vec![accept(Slot(s), 1, 50)]).collect();
    let frame = (codec::RECORD_HEADER_LEN + 21 + 50) as u64;
    // A flipped bit inside the last record (no sector of it reads as
    // zeros), and garbage right after the data where zeros belong.
    for case in 0..2 {
        let (fs, shared, dir) = sim();
        let (seg, end) = one_preallocated_segment(&fs, &shared, &dir, &batches);
        let at = match case {
            0 => end - frame / 2,
            _ => end + 3,
        };
        fs.flip_bit(&seg, at * 8 + 1).unwrap();
        match FileLog::open_with(shared, &dir, preallocated()) {
            Err(StorageError::Corrupt { file, .. }) => assert_eq!(file, seg.display().to_string()),
            Err(e) => panic!("case {case}: {e}"),
            Ok(_) => panic!("case {case}: damage at {at} went unnoticed"),
        }
    }
}

#[test]
fn garbage_in_the_zeros_of_a_sealed_segment_is_damage() {
    let (fs, shared, dir) = sim();
    let batches = one_accept_per_slot(1..=60, 1, 300);
    let segs = write_segments(&fs, &shared, &dir, preallocated(), &batches);
    assert!(segs.len() >= 2);
    let sealed_seg = &segs[0];
    let far = SEGMENT - 10;
    assert!(data_end(&fs, sealed_seg) < far as usize);
    fs.flip_bit(sealed_seg, far * 8).unwrap();
    match FileLog::open_with(shared, &dir, preallocated()) {
        Err(StorageError::Corrupt { file, offset, .. }) => {
            assert_eq!(file, sealed_seg.display().to_string());
            assert!(offset < far);
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
}

#[test]
fn a_crash_while_the_next_segment_is_prepared_leaves_only_a_temp_file() {
    let (fs, shared, dir) = sim();
    let (log, _) = FileLog::open_with(shared.clone(), &dir, preallocated_inline()).unwrap();
    let batches = one_accept_per_slot(1..=3, 1, 100);
    for b in &batches {
        log.append(b).unwrap();
    }
    // The group commit makes the batch durable, then prepares the next
    // spare: crash in the middle of its zero-fill.
    let ops = fs.mutating_ops();
    fs.crash_after(3);
    let synced = log.sync_queued();
    assert!(synced.is_err(), "the crash fell in the spare's preparation");
    assert!(fs.mutating_ops() > ops + 2);
    assert_eq!(
        log.durable_seq(),
        3,
        "the batch was durable before the spare was started"
    );
    drop(log);
    fs.crash(CrashPolicy::KeepUnsynced);
    assert_eq!(spares(&fs, &dir).len(), 1, "a half-made spare is left");
    let (log, state) = FileLog::open_with(shared.clone(), &dir, preallocated_inline()).unwrap();
    assert_eq!(state, apply_all(&batches));
    assert_eq!(log.recovery_report().temp_files_removed, 1);
    assert!(log.recovery_damage().is_empty());
    assert!(spares(&fs, &dir).is_empty());
    // A spare never renamed into place holds nothing that is replayed.
    let spare = dir.join("spare-0.log.tmp");
    let mut junk = codec::encode_segment_header(4, true).to_vec();
    codec::encode_state(&StateSummary::default(), 3, &mut junk);
    junk.resize(SEGMENT as usize, 0);
    fs.put_durable(&spare, junk);
    drop(log);
    let (log, state) = FileLog::open_with(shared, &dir, preallocated_inline()).unwrap();
    assert_eq!(state, apply_all(&batches));
    assert_eq!(log.recovery_report().temp_files_removed, 1);
    assert_eq!(log.durable_seq(), 3);
}

#[test]
fn a_preallocated_segment_damaged_before_its_first_append_loses_nothing() {
    let (fs, shared, dir) = sim();
    let opts = LogOptions {
        on_corruption: crate::CorruptionPolicy::Salvage,
        ..preallocated()
    };
    let batches = one_accept_per_slot(1..=60, 1, 300);
    let last = write_segments(&fs, &shared, &dir, opts.clone(), &batches)
        .pop()
        .unwrap();
    // Put a fresh, never-appended preallocated segment after it.
    let first = batches.len() as u64 + 1;
    let mut bytes = codec::encode_segment_header(first, true).to_vec();
    codec::encode_state(&StateSummary::default(), first - 1, &mut bytes);
    bytes.resize(SEGMENT as usize, 0);
    let fresh = dir.join(crate::recovery::segment_name(first));
    assert!(fresh > last);
    fs.put_durable(&fresh, bytes);
    fs.flip_bit(&fresh, 8 * 40).unwrap();
    let (log, state) = FileLog::open_with(shared, &dir, opts).unwrap();
    assert_eq!(state, apply_all(&batches));
    let damage = log.recovery_damage();
    assert_eq!(damage.len(), 1);
    assert!(!damage[0].may_have_lost_acknowledged, "{}", damage[0]);
}

#[test]
fn works_on_the_real_file_system_with_preallocation() {
    let dir = tempfile::tempdir().unwrap();
    let opts = LogOptions {
        segment_bytes: 64 << 10,
        ..preallocated()
    };
    let (log, _) = FileLog::open(dir.path(), opts.clone()).unwrap();
    let mut batches = Vec::new();
    for slot in 1..=300u64 {
        let mut b = vec![accept(Slot(slot), 1, 500)];
        if slot % 100 == 0 {
            b.push(PersistEntry::Truncate(Slot(slot - 50)));
        }
        let seq = log.append(&b).unwrap();
        batches.push(b);
        if slot % 7 == 0 {
            log.wait_durable(seq).unwrap();
        }
    }
    log.sync_queued().unwrap();
    let stats = log.stats();
    assert!(stats.segments_created >= 2 && stats.segments_deleted >= 1);
    log.close().unwrap();
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    for name in names.iter().filter(|n| n.ends_with(".log")) {
        let len = std::fs::metadata(dir.path().join(name)).unwrap().len();
        assert_eq!(len, 64 << 10, "{name} was made at full size");
    }
    let (log, state) = FileLog::open(dir.path(), opts).unwrap();
    assert_eq!(state, apply_all(&batches));
    assert_eq!(log.durable_seq(), 300);
    assert!(log.recovery_report().damage.is_empty());
    assert_eq!(log.recovery_report().torn_bytes_cut, 0);
}
