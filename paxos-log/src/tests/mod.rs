//! Tests of the file log: recovery, group commit, backpressure, truncation,
//! torn tails, corruption, and crash-at-every-point fault injection.
//! [`inline`] tests the thread-free writer mode, [`faults`] the fault
//! injection, salvage and the randomized crash-and-fault model check.

mod faults;
mod inline;
mod prealloc;

use crate::codec::tests::arb_entry;
use crate::fs::{OsFs, SharedFs};
use crate::sim_fs::{CrashPolicy, SimFs};
use crate::{FileLog, LogOptions, ReplicaStorage, StorageError};
use bytes::Bytes;
use paxos_core::{Accepted, Ballot, DurableState, PersistEntry, ReplicaId, Slot, Value};
use proptest::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub(crate) fn ballot(r: u64) -> Ballot {
    Ballot::new(r, ReplicaId(1))
}

pub(crate) fn accept(slot: Slot, round: u64, len: usize) -> PersistEntry {
    let body: Vec<u8> = (0..len).map(|i| (i as u8) ^ (slot.0 as u8) | 1).collect();
    PersistEntry::Accept(Accepted {
        slot,
        ballot: ballot(round),
        value: Value::Requests(Bytes::from(body)),
    })
}

pub(crate) fn apply_all<'a>(
    batches: impl IntoIterator<Item = &'a Vec<PersistEntry>>,
) -> DurableState {
    let mut s = DurableState::default();
    for b in batches {
        for e in b {
            s.apply(e);
        }
    }
    s
}

pub(crate) fn salvage() -> LogOptions {
    LogOptions {
        on_corruption: crate::CorruptionPolicy::Salvage,
        ..LogOptions::default()
    }
}

pub(crate) fn small_segments() -> LogOptions {
    LogOptions {
        segment_bytes: 4096,
        ..LogOptions::default()
    }
}

pub(crate) fn segment_paths(fs: &SimFs, dir: &Path) -> Vec<PathBuf> {
    fs.paths()
        .into_iter()
        .filter(|p| p.parent() == Some(dir) && p.extension().is_some_and(|e| e == "log"))
        .collect()
}

fn shared_fs(fs: &SimFs) -> SharedFs {
    Arc::new(fs.clone())
}

pub(crate) fn sim() -> (SimFs, SharedFs, PathBuf) {
    let fs = SimFs::new();
    let shared: SharedFs = Arc::new(fs.clone());
    (fs, shared, PathBuf::from("/log"))
}

#[test]
fn reopen_recovers_exactly_what_was_appended() {
    let dir = tempfile::tempdir().unwrap();
    let batches = vec![
        vec![PersistEntry::Promise(ballot(3))],
        vec![
            accept(Slot(1), 3, 100),
            accept(Slot(2), 3, 0),
            PersistEntry::Commit(Slot(1)),
        ],
        vec![],
        vec![PersistEntry::Accept(Accepted {
            slot: Slot(3),
            ballot: ballot(3),
            value: Value::Reconfigure(paxos_core::Reconfiguration {
                base: Slot(7),
                membership: paxos_core::Membership::with_voters(vec![ReplicaId(1), ReplicaId(2)]),
            }),
        })],
        vec![PersistEntry::Accept(Accepted {
            slot: Slot(4),
            ballot: ballot(3),
            value: Value::Noop,
        })],
        vec![accept(Slot(2), 4, 10), PersistEntry::Commit(Slot(3))],
    ];
    let (log, state) = FileLog::open(dir.path(), LogOptions::default()).unwrap();
    assert_eq!(state, DurableState::default());
    let mut last = 0;
    for (i, b) in batches.iter().enumerate() {
        last = log.append(b).unwrap();
        assert_eq!(
            last,
            i as u64 + 1,
            "sequence numbers start at 1 and count appends"
        );
    }
    log.wait_durable(last).unwrap();
    assert_eq!(log.durable_seq(), last);
    assert_eq!(log.state(), apply_all(&batches));
    log.close().unwrap();

    let (log, state) = FileLog::open(dir.path(), LogOptions::default()).unwrap();
    assert_eq!(state, apply_all(&batches));
    assert_eq!(
        log.durable_seq(),
        last,
        "sequence numbers continue across restarts"
    );
    assert_eq!(
        log.append(&[PersistEntry::Commit(Slot(4))]).unwrap(),
        last + 1
    );
    assert_eq!(log.recovery_report().appends, batches.len() as u64);
}

#[test]
fn appends_without_waiting_are_flushed_on_close() {
    let (_fs, shared, dir) = sim();
    let (log, _) = FileLog::open_with(shared.clone(), &dir, LogOptions::default()).unwrap();
    let batches: Vec<Vec<PersistEntry>> = (1..=50).map(|s| vec![accept(Slot(s), 1, 20)]).collect();
    for b in &batches {
        log.append(b).unwrap();
    }
    log.close().unwrap();
    let (log, state) = FileLog::open_with(shared, &dir, LogOptions::default()).unwrap();
    assert_eq!(state, apply_all(&batches));
    assert_eq!(log.durable_seq(), 50);
}

#[test]
fn group_commit_shares_fsyncs_between_appends() {
    let (fs, shared, dir) = sim();
    let (log, _) = FileLog::open_with(shared, &dir, LogOptions::default()).unwrap();
    let log = Arc::new(log);
    let syncs_before = fs.data_syncs();
    // Hold the writer in its first fsync so the other appends pile up.
    fs.pause_syncs(true);
    let first = log.append(&[accept(Slot(1), 1, 10)]).unwrap();
    let mut last = first;
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut seqs = Vec::new();
                for i in 0..25u64 {
                    seqs.push(log.append(&[accept(Slot(2 + t * 25 + i), 1, 10)]).unwrap());
                }
                seqs
            })
        })
        .collect();
    let mut all = vec![first];
    for t in threads {
        let seqs = t.join().unwrap();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "one appender's sequence numbers increase"
        );
        last = last.max(*seqs.last().unwrap());
        all.extend(seqs);
    }
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 201, "every append got its own sequence number");
    fs.pause_syncs(false);
    log.wait_durable(last).unwrap();
    let syncs = fs.data_syncs() - syncs_before;
    assert!(
        syncs <= 3,
        "201 appends took {syncs} fsyncs; group commit should need about 2"
    );
    let stats = log.stats();
    assert_eq!(stats.appends, 201);
    assert!(stats.flushes >= 1 && stats.flushes <= 3, "{stats:?}");
    // The histograms saw every group commit: its size, and its fsync (a
    // segment roll would add fsyncs, never remove one).
    assert_eq!(stats.appends_per_flush.count(), stats.flushes);
    assert_eq!(stats.appends_per_flush.sum, 201);
    assert!(
        stats.appends_per_flush.counts[7..].iter().sum::<u64>() >= 1,
        "a group commit of 65+ appends (the 200 queued behind the paused fsync): {stats:?}"
    );
    assert!(stats.fsync_micros.count() >= stats.flushes, "{stats:?}");
}

#[test]
fn a_full_queue_blocks_appenders_until_the_writer_drains_it() {
    let (fs, shared, dir) = sim();
    let opts = LogOptions {
        max_queued_appends: 4,
        ..LogOptions::default()
    };
    let (log, _) = FileLog::open_with(shared, &dir, opts).unwrap();
    let log = Arc::new(log);
    fs.pause_syncs(true);
    // The writer takes the first append and blocks in fsync; four more fill the queue.
    let first = log.append(&[PersistEntry::Commit(Slot(1))]).unwrap();
    while log.shared_queue_len() != 0 {
        std::thread::yield_now();
    }
    for c in 2..=5 {
        log.append(&[PersistEntry::Commit(Slot(c))]).unwrap();
    }
    assert_eq!(log.shared_queue_len(), 4);
    let (tx, rx) = std::sync::mpsc::channel();
    let blocked = {
        let log = log.clone();
        std::thread::spawn(move || {
            let r = log.append(&[PersistEntry::Commit(Slot(6))]);
            tx.send(()).unwrap();
            r
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert!(
        rx.try_recv().is_err(),
        "an append into a full queue must block"
    );
    assert_eq!(
        log.shared_queue_len(),
        4,
        "the queue never grows past its bound"
    );
    fs.pause_syncs(false);
    let seq = blocked.join().unwrap().unwrap();
    log.wait_durable(seq).unwrap();
    assert!(log.durable_seq() >= first);
}

#[test]
fn segments_roll_and_truncation_deletes_covered_segments_but_keeps_state() {
    let (fs, shared, dir) = sim();
    let mut batches = vec![vec![
        PersistEntry::Promise(ballot(7)),
        PersistEntry::Commit(Slot::ZERO),
    ]];
    let (log, _) = FileLog::open_with(shared.clone(), &dir, small_segments()).unwrap();
    log.append(&batches[0]).unwrap();
    for slot in Slot(1).through(Slot(100)) {
        let b = vec![accept(slot, 7, 200), PersistEntry::Commit(slot.prev())];
        log.append(&b).unwrap();
        batches.push(b);
    }
    let seq = log.append(&[]).unwrap();
    batches.push(vec![]);
    log.wait_durable(seq).unwrap();
    let before = segment_paths(&fs, &dir).len();
    assert!(
        before >= 5,
        "4 KiB segments should have rolled, got {before}"
    );
    let seq = log.truncate_through(Slot(80)).unwrap();
    batches.push(vec![PersistEntry::Truncate(Slot(80))]);
    log.wait_durable(seq).unwrap();
    log.close().unwrap();
    let after = segment_paths(&fs, &dir).len();
    assert!(
        after < before,
        "truncation should delete segments ({before} -> {after})"
    );
    let (log, state) = FileLog::open_with(shared, &dir, small_segments()).unwrap();
    let want = apply_all(&batches);
    assert_eq!(state, want);
    assert_eq!(
        state.promised,
        ballot(7),
        "the promise survives deletion of its segment"
    );
    assert_eq!(state.commit_index, Slot(99));
    assert_eq!(state.accepted.keys().next(), Some(&Slot(81)));
    assert_eq!(log.durable_seq(), batches.len() as u64);
}

#[test]
fn truncating_everything_live_rolls_and_reclaims_the_active_segment() {
    let (fs, shared, dir) = sim();
    let opts = LogOptions {
        segment_bytes: 64 << 10,
        ..LogOptions::default()
    };
    let (log, _) = FileLog::open_with(shared.clone(), &dir, opts.clone()).unwrap();
    for slot in 1..=100 {
        log.append(&[accept(Slot(slot), 1, 200)]).unwrap();
    }
    let seq = log.truncate_through(Slot(100)).unwrap();
    log.wait_durable(seq).unwrap();
    log.close().unwrap();
    let segs = segment_paths(&fs, &dir);
    assert_eq!(segs.len(), 1);
    assert!(
        fs.file_len(&segs[0]).unwrap() < 1024,
        "the dead active segment was replaced"
    );
    let (_log, state) = FileLog::open_with(shared, &dir, opts).unwrap();
    assert_eq!(state.truncated_through, Slot(100));
    assert!(state.accepted.is_empty());
}

#[test]
fn read_accepted_serves_live_decrees_in_slot_order_and_refuses_truncated_ones() {
    let (_fs, shared, dir) = sim();
    let (log, _) = FileLog::open_with(shared, &dir, LogOptions::default()).unwrap();
    for slot in [5, 1, 3, 2, 4] {
        log.append(&[accept(Slot(slot), 1, 8)]).unwrap();
    }
    let got: Vec<Slot> = log
        .read_accepted(Slot(2), 3)
        .unwrap()
        .iter()
        .map(|a| a.slot)
        .collect();
    assert_eq!(got, vec![Slot(2), Slot(3), Slot(4)]);
    log.truncate_through(Slot(2)).unwrap();
    assert!(matches!(
        log.read_accepted(Slot(1), 10),
        Err(StorageError::OutOfRange(_))
    ));
    let got: Vec<Slot> = log
        .read_accepted(Slot(3), 10)
        .unwrap()
        .iter()
        .map(|a| a.slot)
        .collect();
    assert_eq!(got, vec![Slot(3), Slot(4), Slot(5)]);
    assert!(log.read_accepted(Slot(6), 10).unwrap().is_empty());
}

#[test]
fn released_values_leave_memory_but_stay_durable() {
    let (_fs, shared, dir) = sim();
    // Room in the index for about four 1,000-byte values (64 bytes of
    // overhead each).
    let options = LogOptions {
        max_index_bytes: 4 * 1064 + 100,
        ..LogOptions::default()
    };
    let (log, _) = FileLog::open_with(shared.clone(), &dir, options.clone()).unwrap();
    for slot in 1..=4 {
        log.append(&[accept(Slot(slot), 1, 1000)]).unwrap();
    }
    assert!(
        matches!(
            log.append(&[accept(Slot(5), 1, 1000)]),
            Err(StorageError::Full(_))
        ),
        "the index bound holds before anything is released"
    );
    log.release_memory_through(Slot(3));
    let held: Vec<Slot> = log.state().accepted.keys().copied().collect();
    assert_eq!(held, vec![Slot(4)]);
    for slot in 5..=7 {
        log.append(&[accept(Slot(slot), 1, 1000)]).unwrap();
    }
    // A later vote at or below the floor is written, not indexed.
    log.append(&[accept(Slot(2), 2, 1000)]).unwrap();
    assert!(!log.state().accepted.contains_key(&Slot(2)));
    assert!(matches!(
        log.read_accepted(Slot(3), 10),
        Err(StorageError::OutOfRange(_))
    ));
    let served: Vec<Slot> = log
        .read_accepted(Slot(4), 10)
        .unwrap()
        .iter()
        .map(|a| a.slot)
        .collect();
    assert_eq!(served, vec![Slot(4), Slot(5), Slot(6), Slot(7)]);
    // The floor only rises.
    log.release_memory_through(Slot(1));
    assert!(log.read_accepted(Slot(4), 1).is_ok());
    log.close().unwrap();
    // Everything released is still on disk: a restart recovers every
    // vote, the newer ballot of slot 2 included.
    let (_log, recovered) = FileLog::open_with(
        shared,
        &dir,
        LogOptions {
            max_index_bytes: 1 << 20,
            ..options
        },
    )
    .unwrap();
    let slots: Vec<Slot> = recovered.accepted.keys().copied().collect();
    assert_eq!(slots, (1..=7).map(Slot).collect::<Vec<_>>());
    assert_eq!(recovered.accepted[&Slot(2)].ballot, ballot(2));
}

/// The slots and ballot rounds `read_decrees` serves.
fn served(log: &FileLog, from: u64, through: u64, max: usize, bytes: usize) -> Vec<(u64, u64)> {
    log.read_decrees(Slot(from), Slot(through), max, bytes)
        .unwrap()
        .iter()
        .map(|a| (a.slot.0, a.ballot.round))
        .collect()
}

#[test]
fn released_values_are_read_back_from_disk_in_bounded_chunks() {
    let (fs, shared, dir) = sim();
    let (log, _) = FileLog::open_with(shared, &dir, small_segments()).unwrap();
    for slot in 1..=12 {
        log.append(&[accept(Slot(slot), 1, 1000)]).unwrap();
    }
    // A higher vote for slot 3 in a later segment replaces the first one.
    let last = log.append(&[accept(Slot(3), 2, 1000)]).unwrap();
    log.wait_durable(last).unwrap();
    assert!(segment_paths(&fs, &dir).len() > 2, "values span segments");
    log.release_memory_through(Slot(8));
    assert!(log.state().accepted.keys().all(|s| *s > Slot(8)));

    // From disk: the chunk stops at the memory floor, the newest vote wins.
    let want: Vec<(u64, u64)> = (2..=8).map(|s| (s, if s == 3 { 2 } else { 1 })).collect();
    assert_eq!(served(&log, 2, 100, 100, 1 << 20), want);
    // Bounded by count, by the slot asked through, and by bytes (at least one).
    assert_eq!(served(&log, 2, 100, 3, 1 << 20), want[..3].to_vec());
    assert_eq!(served(&log, 2, 4, 100, 1 << 20), want[..3].to_vec());
    assert_eq!(served(&log, 2, 100, 100, 2100), want[..2].to_vec());
    assert_eq!(served(&log, 2, 100, 100, 10), want[..1].to_vec());
    // Above the floor: from memory, as before.
    assert_eq!(
        served(&log, 9, 100, 100, 1 << 20),
        (9..=12).map(|s| (s, 1)).collect::<Vec<_>>()
    );
    // What a checkpoint truncated is gone; what is left is still served.
    let t = log.truncate_through(Slot(4)).unwrap();
    log.wait_durable(t).unwrap();
    assert!(matches!(
        log.read_decrees(Slot(4), Slot(8), 10, 1 << 20),
        Err(StorageError::OutOfRange(_))
    ));
    assert_eq!(served(&log, 5, 8, 10, 1 << 20), want[3..].to_vec());
    // After a restart (segments recovered, not indexed in blocks) the same.
    log.close().unwrap();
    let (log, _) = FileLog::open_with(shared_fs(&fs), &dir, small_segments()).unwrap();
    log.release_memory_through(Slot(8));
    assert_eq!(served(&log, 5, 8, 10, 1 << 20), want[3..].to_vec());
}

/// Reads from disk of appends written since open go through the block
/// index (a block per MiB of log): every slot comes back right whichever
/// block it is in, the newest vote winning across blocks.
#[test]
fn reads_from_disk_find_slots_in_any_block() {
    let (_fs, shared, dir) = sim();
    let (log, _) = FileLog::open_with(shared, &dir, LogOptions::default()).unwrap();
    let mut last = 0;
    for slot in 1..=3000 {
        last = log.append(&[accept(Slot(slot), 1, 1000)]).unwrap();
    }
    // A newer vote for slot 10, two blocks later.
    log.append(&[accept(Slot(10), 3, 1000)]).unwrap();
    log.wait_durable(last + 1).unwrap();
    log.release_memory_through(Slot(3000));
    for from in [1u64, 9, 1040, 2047, 2999] {
        let got = served(&log, from, 3000, 4, 1 << 20);
        let want: Vec<(u64, u64)> = (from..(from + 4).min(3001))
            .map(|s| (s, if s == 10 { 3 } else { 1 }))
            .collect();
        assert_eq!(got, want, "from {from}");
    }
    let values = log
        .read_decrees(Slot(1500), Slot(1500), 1, 1 << 20)
        .unwrap();
    assert_eq!(
        Some(&values[0]),
        match &accept(Slot(1500), 1, 1000) {
            PersistEntry::Accept(a) => Some(a),
            _ => None,
        }
    );
}

#[test]
fn limits_are_errors_not_panics() {
    let (_fs, shared, dir) = sim();
    let opts = LogOptions {
        max_record_bytes: 1000,
        max_index_bytes: 2000,
        ..LogOptions::default()
    };
    let (log, _) = FileLog::open_with(shared.clone(), &dir, opts).unwrap();
    assert!(matches!(
        log.append(&[accept(Slot(1), 1, 2000)]),
        Err(StorageError::Full(_))
    ));
    assert!(matches!(
        log.append(&[PersistEntry::Accept(Accepted {
            slot: Slot::ZERO,
            ballot: ballot(1),
            value: Value::Noop
        })]),
        Err(StorageError::OutOfRange(_))
    ));
    for slot in 1..=2 {
        log.append(&[accept(Slot(slot), 1, 800)]).unwrap();
    }
    assert!(
        matches!(
            log.append(&[accept(Slot(3), 1, 800)]),
            Err(StorageError::Full(_))
        ),
        "index bound"
    );
    log.append(&[PersistEntry::Truncate(Slot(2)), accept(Slot(3), 1, 800)])
        .unwrap();
    assert!(matches!(
        log.wait_durable(1000),
        Err(StorageError::OutOfRange(_))
    ));
    let bad = LogOptions {
        segment_bytes: 10,
        ..LogOptions::default()
    };
    assert!(FileLog::open_with(shared, "/other", bad).is_err());
}

#[test]
fn a_failed_write_closes_the_log_and_fails_waiters() {
    let (fs, shared, dir) = sim();
    let (log, _) = FileLog::open_with(shared, &dir, LogOptions::default()).unwrap();
    let ok = log.append(&[PersistEntry::Commit(Slot(1))]).unwrap();
    log.wait_durable(ok).unwrap();
    fs.crash_after(0);
    let seq = log.append(&[PersistEntry::Commit(Slot(2))]).unwrap();
    assert!(matches!(
        log.wait_durable(seq),
        Err(StorageError::Closed(_))
    ));
    assert!(matches!(
        log.append(&[PersistEntry::Commit(Slot(3))]),
        Err(StorageError::Closed(_))
    ));
    assert_eq!(log.durable_seq(), ok);
    assert!(log.close().is_err());
}

/// Appends `batches`, closes, and returns the one segment path.
/// One batch per slot of `slots`, each a single accept in round `round`
/// with `len` payload bytes.
pub(crate) fn one_accept_per_slot(
    slots: std::ops::RangeInclusive<u64>,
    round: u64,
    len: usize,
) -> Vec<Vec<PersistEntry>> {
    slots.map(|s| vec![accept(Slot(s), round, len)]).collect()
}

/// Opens a log in `dir` with `options`, appends `batches`, closes it, and
/// returns its segment files in order.
pub(crate) fn write_segments(
    fs: &SimFs,
    shared: &SharedFs,
    dir: &Path,
    options: LogOptions,
    batches: &[Vec<PersistEntry>],
) -> Vec<PathBuf> {
    let (log, _) = FileLog::open_with(shared.clone(), dir, options).unwrap();
    for b in batches {
        log.append(b).unwrap();
    }
    log.close().unwrap();
    segment_paths(fs, dir)
}

fn write_one_segment(
    fs: &SimFs,
    shared: &SharedFs,
    dir: &Path,
    batches: &[Vec<PersistEntry>],
) -> PathBuf {
    let segs = write_segments(fs, shared, dir, LogOptions::default(), batches);
    assert_eq!(segs.len(), 1);
    segs[0].clone()
}

#[test]
fn a_torn_tail_is_cut_off_and_the_log_continues() {
    let (fs, shared, dir) = sim();
    let batches: Vec<Vec<PersistEntry>> = (1..=5).map(|s| vec![accept(Slot(s), 1, 50)]).collect();
    let seg = write_one_segment(&fs, &shared, &dir, &batches);
    let good_len = fs.file_len(&seg).unwrap();
    // A crash in the middle of writing the next record.
    let mut f = shared.open_append(&seg).unwrap();
    let mut frame = Vec::new();
    let offs = crate::codec::encode_entries(&[accept(Slot(6), 1, 50)], &mut frame);
    crate::codec::seal_frame(&mut frame, offs[0], 6, true);
    f.write_all(&frame[..frame.len() - 7]).unwrap();
    f.sync_data().unwrap();
    let (log, state) = FileLog::open_with(shared.clone(), &dir, LogOptions::default()).unwrap();
    assert_eq!(state, apply_all(&batches));
    assert_eq!(log.recovery_report().torn_bytes_cut, frame.len() as u64 - 7);
    assert!(
        log.recovery_damage().is_empty(),
        "a torn tail is not damage"
    );
    assert_eq!(fs.file_len(&seg), Some(good_len));
    let seq = log.append(&[accept(Slot(6), 1, 50)]).unwrap();
    assert_eq!(seq, 6);
    log.close().unwrap();
    let (_log, state) = FileLog::open_with(shared, &dir, LogOptions::default()).unwrap();
    assert_eq!(state.accepted.len(), 6);
}

#[test]
fn a_zero_filled_tail_is_torn_and_an_unfinished_append_is_dropped_whole() {
    let (fs, shared, dir) = sim();
    let batches: Vec<Vec<PersistEntry>> = (1..=3).map(|s| vec![accept(Slot(s), 1, 50)]).collect();
    let seg = write_one_segment(&fs, &shared, &dir, &batches);
    let mut f = shared.open_append(&seg).unwrap();
    // The first two records of a three-record append, then zeros.
    let mut frames = Vec::new();
    let entries = [
        accept(Slot(4), 1, 10),
        accept(Slot(5), 1, 10),
        accept(Slot(6), 1, 10),
    ];
    let offs = crate::codec::encode_entries(&entries, &mut frames);
    for (i, at) in offs.iter().enumerate() {
        crate::codec::seal_frame(&mut frames, *at, 4, i == 2);
    }
    f.write_all(&frames[..offs[2]]).unwrap();
    f.write_all(&[0u8; 100]).unwrap();
    f.sync_data().unwrap();
    let (_log, state) = FileLog::open_with(shared, &dir, LogOptions::default()).unwrap();
    assert_eq!(
        state,
        apply_all(&batches),
        "a partial append is never applied"
    );
}

#[test]
fn a_bad_checksum_mid_log_is_an_error_naming_file_and_offset() {
    let (fs, shared, dir) = sim();
    let batches: Vec<Vec<PersistEntry>> = (1..=6).map(|s| vec![accept(Slot(s), 1, 50)]).collect();
    let seg = write_one_segment(&fs, &shared, &dir, &batches);
    let frame_len = (crate::codec::RECORD_HEADER_LEN + 21 + 50) as u64;
    let state_len = (crate::codec::RECORD_HEADER_LEN + 28) as u64;
    let third = crate::codec::SEGMENT_HEADER_LEN as u64 + state_len + 2 * frame_len;
    fs.flip_bit(&seg, (third + 40) * 8 + 3).unwrap();
    match FileLog::open_with(shared.clone(), &dir, LogOptions::default()) {
        Err(StorageError::Corrupt {
            file,
            offset,
            reason,
        }) => {
            assert_eq!(file, seg.display().to_string());
            assert_eq!(offset, third);
            assert!(reason.contains("on_corruption"), "{reason}");
        }
        other => panic!("expected corruption, got {other:?}"),
    }
    assert!(
        fs.paths()
            .iter()
            .all(|p| !p.to_string_lossy().contains("damage")),
        "refusing changes nothing"
    );
    // Salvage ("rebuild from a peer"): keep the good prefix only.
    let (log, state) = FileLog::open_with(shared.clone(), &dir, salvage()).unwrap();
    assert_eq!(state, apply_all(&batches[..2]));
    let damage = log.recovery_damage();
    assert_eq!(damage.len(), 1, "{damage:?}");
    let d = &damage[0];
    assert_eq!(d.location, seg.display().to_string());
    assert_eq!(d.offset, third);
    assert_eq!(d.last_kept_seq, Some(2));
    assert!(d.may_have_lost_acknowledged);
    assert!(d.reason.contains("checksum"), "{}", d.reason);
    assert_eq!(d.set_aside, vec![format!("{}.damaged", seg.display())]);
    assert_eq!(log.recovery_report().damage, damage);
    // The damaged file is kept whole for inspection, the live one is cut.
    let aside = PathBuf::from(&d.set_aside[0]);
    assert_eq!(
        fs.file_len(&aside),
        Some(crate::codec::SEGMENT_HEADER_LEN as u64 + state_len + 6 * frame_len)
    );
    assert_eq!(
        fs.file_len(&seg),
        Some(crate::codec::SEGMENT_HEADER_LEN as u64 + state_len + 2 * frame_len)
    );
    assert_eq!(log.append(&[PersistEntry::Commit(Slot(1))]).unwrap(), 3);
    log.close().unwrap();
    // The damage stays reported, across restarts and under either policy,
    // until the node clears it.
    let (log, state) = FileLog::open_with(shared.clone(), &dir, LogOptions::default()).unwrap();
    assert_eq!(state.commit_index, Slot(1));
    assert_eq!(state.accepted.len(), 2);
    assert_eq!(log.recovery_damage(), damage);
    log.clear_damage().unwrap();
    assert!(log.recovery_damage().is_empty());
    drop(log);
    let (log, _) = FileLog::open_with(shared, &dir, LogOptions::default()).unwrap();
    assert!(log.recovery_damage().is_empty(), "cleared durably");
    assert!(
        fs.file_len(&aside).is_some(),
        "set-aside files stay for the operator"
    );
}

#[test]
fn corruption_in_a_sealed_segment_is_an_error_even_at_its_end() {
    let (fs, shared, dir) = sim();
    let batches = one_accept_per_slot(1..=40, 1, 200);
    let segs = write_segments(&fs, &shared, &dir, small_segments(), &batches);
    assert!(segs.len() >= 2);
    let len = fs.file_len(&segs[0]).unwrap();
    fs.flip_bit(&segs[0], (len - 1) * 8).unwrap();
    match FileLog::open_with(shared.clone(), &dir, small_segments()) {
        Err(StorageError::Corrupt { file, .. }) => assert_eq!(file, segs[0].display().to_string()),
        other => panic!("expected corruption, got {other:?}"),
    }
    // A missing middle segment is a gap, not a silent skip.
    let (fs2, shared2, dir2) = sim();
    let batches = one_accept_per_slot(1..=60, 1, 200);
    let segs = write_segments(&fs2, &shared2, &dir2, small_segments(), &batches);
    assert!(segs.len() >= 3);
    shared2.remove_file(&segs[1]).unwrap();
    match FileLog::open_with(shared2, &dir2, small_segments()) {
        Err(StorageError::Corrupt { reason, .. }) => assert!(reason.contains("gap"), "{reason}"),
        other => panic!("expected a gap error, got {other:?}"),
    }
}

#[test]
fn leftover_temp_segments_are_removed_and_unknown_files_ignored() {
    let (fs, shared, dir) = sim();
    let seg = write_one_segment(&fs, &shared, &dir, &[vec![PersistEntry::Commit(Slot(4))]]);
    let tmp = dir.join("00000000000000000002.log.tmp");
    fs.put_durable(&tmp, vec![1, 2, 3]);
    fs.put_durable(&dir.join("notes.txt"), b"operator notes".to_vec());
    let (log, state) = FileLog::open_with(shared, &dir, LogOptions::default()).unwrap();
    assert_eq!(state.commit_index, Slot(4));
    assert_eq!(log.recovery_report().temp_files_removed, 1);
    assert!(fs.file_len(&tmp).is_none());
    assert!(fs.file_len(&dir.join("notes.txt")).is_some());
    assert!(fs.file_len(&seg).is_some());
}

#[test]
fn salvaging_from_a_corrupt_first_segment_header_starts_an_empty_log() {
    let (fs, shared, dir) = sim();
    let seg = write_one_segment(&fs, &shared, &dir, &[vec![PersistEntry::Commit(Slot(4))]]);
    fs.flip_bit(&seg, 5).unwrap();
    assert!(matches!(
        FileLog::open_with(shared.clone(), &dir, LogOptions::default()),
        Err(StorageError::Corrupt { offset: 0, .. })
    ));
    let (log, state) = FileLog::open_with(shared.clone(), &dir, salvage()).unwrap();
    assert_eq!(state, DurableState::default());
    assert_eq!(log.durable_seq(), 0);
    let damage = log.recovery_damage();
    assert_eq!(damage.len(), 1);
    assert_eq!(damage[0].last_kept_seq, Some(0));
    assert!(damage[0].may_have_lost_acknowledged, "an append was in it");
    // Renamed aside whole: nothing usable was in it.
    assert!(fs.file_len(&seg.with_extension("log.damaged")).is_some());
    assert_eq!(log.append(&[]).unwrap(), 1);
    log.close().unwrap();
    let (log, _) = FileLog::open_with(shared, &dir, salvage()).unwrap();
    assert_eq!(log.durable_seq(), 1);
    assert_eq!(log.recovery_damage(), damage, "reported once, not twice");
}

/// A damaged segment that never held an append (a fresh segment after a
/// roll) loses nothing: the damage is reported, but as harmless.
#[test]
fn damage_in_a_segment_that_held_no_append_loses_nothing() {
    let (fs, shared, dir) = sim();
    let opts = LogOptions {
        segment_bytes: 4096,
        ..salvage()
    };
    let batches = one_accept_per_slot(1..=30, 1, 200);
    write_segments(&fs, &shared, &dir, opts.clone(), &batches);
    // Start a fresh, empty segment after the last one, as a roll does.
    let next = batches.len() as u64 + 1;
    let (mut file, _) = super::log::create_segment_for_tests(
        &shared,
        &dir,
        next,
        &crate::codec::StateSummary::default(),
    );
    file.sync_data().unwrap();
    drop(file);
    let fresh = dir.join(crate::recovery::segment_name(next));
    fs.flip_bit(&fresh, 8 * 40).unwrap();
    let (log, state) = FileLog::open_with(shared, &dir, opts).unwrap();
    assert_eq!(state, apply_all(&batches));
    let damage = log.recovery_damage();
    assert_eq!(damage.len(), 1);
    assert!(!damage[0].may_have_lost_acknowledged, "{}", damage[0]);
    assert_eq!(damage[0].last_kept_seq, Some(30));
}

#[test]
fn works_on_the_real_file_system_with_rolls_and_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = FileLog::open(dir.path(), small_segments()).unwrap();
    let mut batches = one_accept_per_slot(1..=60, 2, 150);
    for b in &batches {
        log.append(b).unwrap();
    }
    batches.push(vec![PersistEntry::Truncate(Slot(50))]);
    let seq = log.truncate_through(Slot(50)).unwrap();
    log.wait_durable(seq).unwrap();
    drop(log);
    let (_log, state) = FileLog::open(dir.path(), small_segments()).unwrap();
    assert_eq!(state, apply_all(&batches));
    let _ = OsFs;
}

// ---------------------------------------------------------------------------
// Crash at every point.

fn workload() -> Vec<Vec<PersistEntry>> {
    let mut w = vec![vec![PersistEntry::Promise(ballot(2))]];
    for slot in 1..=24u64 {
        let mut b = vec![accept(Slot(slot), 2, 300)];
        if slot % 4 == 0 {
            b.push(PersistEntry::Commit(Slot(slot - 2)));
        }
        if slot == 9 {
            b.insert(0, PersistEntry::Promise(ballot(3)));
        }
        if slot == 16 || slot == 22 {
            b.push(PersistEntry::Truncate(Slot(slot - 3)));
        }
        if slot == 12 {
            w.push(vec![]);
        }
        w.push(b);
    }
    w
}

struct RunResult {
    acked: u64,
    issued: u64,
}

/// The options of the crash-at-every-point runs: small segments, plain or
/// preallocated.
fn crash_options(preallocate: bool) -> LogOptions {
    LogOptions {
        preallocate_segments: preallocate,
        ..small_segments()
    }
}

/// Runs the workload until the disk "crashes"; returns what was acknowledged.
fn run_workload(
    shared: &SharedFs,
    dir: &Path,
    work: &[Vec<PersistEntry>],
    preallocate: bool,
) -> RunResult {
    let mut res = RunResult {
        acked: 0,
        issued: 0,
    };
    // Inline: the writes and syncs happen exactly at `wait_durable`, so
    // every run of the workload makes the same file-system operations and
    // "crash after op N" means the same point in each (a writer thread
    // batches by timing, and a run that batched more than the counting run
    // would end before the crash point).
    let options = LogOptions {
        writer: crate::WriterMode::Inline,
        ..crash_options(preallocate)
    };
    let Ok((log, _)) = FileLog::open_with(shared.clone(), dir, options) else {
        return res;
    };
    for (i, b) in work.iter().enumerate() {
        let Ok(seq) = log.append(b) else { break };
        res.issued = seq;
        if i % 3 == 2 || i + 1 == work.len() {
            match log.wait_durable(seq) {
                Ok(()) => res.acked = seq,
                Err(_) => break,
            }
        }
    }
    res.acked = res.acked.max(log.durable_seq());
    drop(log);
    res
}

fn check_recovery(
    shared: &SharedFs,
    dir: &Path,
    work: &[Vec<PersistEntry>],
    run: &RunResult,
    preallocate: bool,
    what: &str,
) {
    let (log, state) = FileLog::open_with(shared.clone(), dir, crash_options(preallocate))
        .unwrap_or_else(|e| panic!("{what}: recovery failed: {e}"));
    assert!(
        log.recovery_damage().is_empty(),
        "{what}: a crash is not damage"
    );
    let m = log.durable_seq();
    assert!(
        m >= run.acked,
        "{what}: acknowledged append {} lost (recovered through {m})",
        run.acked
    );
    assert!(
        m <= run.issued.max(run.acked),
        "{what}: recovered {m} appends, only {} issued",
        run.issued
    );
    assert_eq!(
        state,
        apply_all(&work[..m as usize]),
        "{what}: state is not the prefix of {m} appends"
    );
    // The recovered log takes new appends and recovers them.
    let extra = vec![PersistEntry::Commit(Slot(1000))];
    let seq = log.append(&extra).unwrap();
    assert_eq!(seq, m + 1, "{what}");
    log.wait_durable(seq).unwrap();
    drop(log);
    let (log, state) = FileLog::open_with(shared.clone(), dir, crash_options(preallocate)).unwrap();
    let mut want = apply_all(&work[..m as usize]);
    want.apply(&extra[0]);
    assert_eq!(state, want, "{what}: second recovery");
    assert_eq!(log.durable_seq(), m + 1);
}

#[test]
fn crash_at_every_point_of_a_write_sequence_loses_nothing_acknowledged() {
    crash_at_every_point(false);
}

/// The same with preallocated segments: crashes fall inside in-place writes
/// (torn sector by sector), inside the preparation of spares, and inside
/// the installing of a spare as the next segment.
#[test]
fn crash_at_every_point_with_preallocated_segments_loses_nothing_acknowledged() {
    crash_at_every_point(true);
}

fn crash_at_every_point(preallocate: bool) {
    let work = workload();
    // Count the operations of a crash-free run.
    let (fs, shared, dir) = sim();
    let full = run_workload(&shared, &dir, &work, preallocate);
    assert_eq!(full.acked, work.len() as u64);
    let total_ops = fs.mutating_ops();
    assert!(
        total_ops > 30,
        "the workload should roll segments and truncate ({total_ops} ops)"
    );
    let segs = segment_paths(&fs, &dir);
    assert!(segs.len() >= 2, "the workload rolls segments");
    assert!(
        !segs.contains(&dir.join(crate::recovery::segment_name(1))),
        "the workload's truncations delete the first segment"
    );
    let policies = [
        CrashPolicy::LoseUnsynced,
        CrashPolicy::KeepUnsynced,
        CrashPolicy::Torn { seed: 1 },
        CrashPolicy::Torn { seed: 7 },
    ];
    let mut crashed_runs = 0;
    let mut spares_left = 0;
    for at in 0..total_ops + 2 {
        for policy in policies {
            let (fs, shared, dir) = sim();
            fs.crash_after(at);
            let run = run_workload(&shared, &dir, &work, preallocate);
            if fs.is_down() {
                crashed_runs += 1;
            }
            fs.crash(policy);
            spares_left += fs
                .paths()
                .iter()
                .filter(|p| p.to_string_lossy().contains("spare-"))
                .count();
            check_recovery(
                &shared,
                &dir,
                &work,
                &run,
                preallocate,
                &format!("crash at op {at} with {policy:?}"),
            );
        }
    }
    assert!(
        crashed_runs as u64 >= total_ops * 3,
        "most runs should actually crash ({crashed_runs})"
    );
    assert_eq!(
        spares_left > 0,
        preallocate,
        "crashes left spares being prepared or waiting"
    );
}

#[test]
fn a_crash_during_recovery_is_recovered_from() {
    let work = workload();
    for at in 0..12 {
        let (fs, shared, dir) = sim();
        let run = run_workload(&shared, &dir, &work, false);
        // Leave a torn tail so recovery has to truncate.
        let seg = segment_paths(&fs, &dir).pop().unwrap();
        let mut f = shared.open_append(&seg).unwrap();
        f.write_all(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]).unwrap();
        f.sync_data().unwrap();
        fs.crash_after(at);
        let _ = FileLog::open_with(shared.clone(), &dir, small_segments());
        fs.crash(CrashPolicy::Torn { seed: at });
        check_recovery(
            &shared,
            &dir,
            &work,
            &run,
            false,
            &format!("crash at recovery op {at}"),
        );
    }
}

// ---------------------------------------------------------------------------
// Properties.

#[derive(Clone, Debug)]
enum Op {
    Append(Vec<PersistEntry>),
    Wait,
    Crash { after: u64, policy: CrashPolicy },
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => proptest::collection::vec(arb_entry(), 0..4).prop_map(Op::Append),
        2 => Just(Op::Wait),
        1 => (0u64..12, prop_oneof![
            Just(CrashPolicy::LoseUnsynced),
            Just(CrashPolicy::KeepUnsynced),
            any::<u64>().prop_map(|seed| CrashPolicy::Torn { seed }),
        ]).prop_map(|(after, policy)| Op::Crash { after, policy }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Random append / sync / crash / recover sequences: after every
    /// recovery the log holds exactly a prefix of what was appended that
    /// includes everything acknowledged.
    #[test]
    fn random_crashes_keep_the_log_an_acknowledged_prefix(
        ops in proptest::collection::vec(arb_op(), 1..40),
        preallocate in any::<bool>(),
        inline in any::<bool>(),
    ) {
        let (fs, shared, dir) = sim();
        let writer = if inline { crate::WriterMode::Inline } else { crate::WriterMode::Thread };
        let opts = LogOptions {
            segment_bytes: 4096,
            preallocate_segments: preallocate,
            writer,
            ..LogOptions::default()
        };
        let mut issued: Vec<Vec<PersistEntry>> = Vec::new();
        let mut acked = 0u64;
        let (mut log, _) = FileLog::open_with(shared.clone(), &dir, opts.clone()).unwrap();
        for op in ops {
            match op {
                Op::Append(b) => {
                    if let Ok(seq) = log.append(&b) {
                        prop_assert_eq!(seq, issued.len() as u64 + 1);
                        issued.push(b);
                    }
                }
                Op::Wait => {
                    if log.wait_durable(issued.len() as u64).is_ok() {
                        acked = issued.len() as u64;
                    }
                }
                Op::Crash { after, policy } => {
                    fs.crash_after(after);
                    // Keep working until the disk goes down or work runs out.
                    for slot in 1..=5u64 {
                        let b = vec![PersistEntry::Commit(Slot(slot))];
                        if let Ok(seq) = log.append(&b) {
                            issued.push(b);
                            if log.wait_durable(seq).is_ok() { acked = seq; }
                        }
                    }
                    acked = acked.max(log.durable_seq());
                    drop(log);
                    fs.crash(policy);
                    // Recovery itself may crash too: try once with the same
                    // crash point, then reboot and recover for real.
                    fs.crash_after(after);
                    if let Ok((l, _)) = FileLog::open_with(shared.clone(), &dir, opts.clone()) {
                        drop(l);
                    }
                    fs.crash(policy);
                    let (l, state) = FileLog::open_with(shared.clone(), &dir, opts.clone()).unwrap();
                    acked = log_len_check(&l, &state, &mut issued, acked)?;
                    log = l;
                }
            }
        }
        drop(log);
        let (l, state) = FileLog::open_with(shared, &dir, opts).unwrap();
        log_len_check(&l, &state, &mut issued, acked)?;
    }
}

/// Checks a recovered log against the model and trims the model to it.
fn log_len_check(
    log: &FileLog,
    state: &DurableState,
    issued: &mut Vec<Vec<PersistEntry>>,
    acked: u64,
) -> Result<u64, TestCaseError> {
    let m = log.durable_seq();
    prop_assert!(
        m >= acked,
        "acknowledged append {} lost; recovered {}",
        acked,
        m
    );
    prop_assert!(
        m as usize <= issued.len(),
        "recovered {} of {} issued",
        m,
        issued.len()
    );
    issued.truncate(m as usize);
    prop_assert_eq!(state, &apply_all(issued.iter()));
    Ok(m)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Any single bit flip in any segment file is reported as corruption
    /// (never cut off as a torn tail, never skipped).
    #[test]
    fn any_bit_flip_in_a_segment_is_detected(
        batches in proptest::collection::vec(proptest::collection::vec(arb_entry(), 0..3), 1..30),
        which in any::<usize>(),
        bit in any::<u64>(),
    ) {
        let (fs, shared, dir) = sim();
        let opts = LogOptions { segment_bytes: 4096, ..LogOptions::default() };
        let (log, _) = FileLog::open_with(shared.clone(), &dir, opts.clone()).unwrap();
        for b in &batches {
            log.append(b).unwrap();
        }
        log.close().unwrap();
        let segs = segment_paths(&fs, &dir);
        let seg = &segs[which % segs.len()];
        let bit = bit % (fs.file_len(seg).unwrap() * 8);
        fs.flip_bit(seg, bit).unwrap();
        match FileLog::open_with(shared, &dir, opts) {
            Err(StorageError::Corrupt { file, .. }) => prop_assert_eq!(file, seg.display().to_string()),
            Err(e) => prop_assert!(false, "flip of bit {} gave {}", bit, e),
            Ok(_) => prop_assert!(false, "flip of bit {} in {} went unnoticed", bit, seg.display()),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// The same for preallocated segments: a bit flipped anywhere in a
    /// sealed segment (its zeros included) or in the data of the last one
    /// is corruption, never taken for the zeros that end the data. (A flip
    /// in the zeros of the last segment, past its data, looks like a write
    /// a crash tore; the crate documentation states that limit.) The last
    /// append has no zero byte, so no piece of it can read as unwritten.
    #[test]
    fn any_bit_flip_in_the_data_of_a_preallocated_segment_is_detected(
        batches in proptest::collection::vec(proptest::collection::vec(arb_entry(), 0..3), 1..30),
        which in any::<usize>(),
        bit in any::<u64>(),
    ) {
        let (fs, shared, dir) = sim();
        let opts = LogOptions {
            segment_bytes: 4096,
            preallocate_segments: true,
            ..LogOptions::default()
        };
        let (log, _) = FileLog::open_with(shared.clone(), &dir, opts.clone()).unwrap();
        for b in &batches {
            log.append(b).unwrap();
        }
        log.append(&[PersistEntry::Commit(Slot(0x0101_0101_0101_0101))]).unwrap();
        log.close().unwrap();
        let segs = segment_paths(&fs, &dir);
        let i = which % segs.len();
        let seg = &segs[i];
        let len = if i + 1 == segs.len() {
            let raw = fs.raw_contents(seg).unwrap();
            raw.iter().rposition(|b| *b != 0).map_or(0, |p| p + 1) as u64
        } else {
            fs.file_len(seg).unwrap()
        };
        let bit = bit % (len * 8);
        fs.flip_bit(seg, bit).unwrap();
        match FileLog::open_with(shared, &dir, opts) {
            Err(StorageError::Corrupt { file, .. }) => prop_assert_eq!(file, seg.display().to_string()),
            Err(e) => prop_assert!(false, "flip of bit {} gave {}", bit, e),
            Ok(_) => prop_assert!(false, "flip of bit {} in {} went unnoticed", bit, seg.display()),
        }
    }
}

fn paced(interval: std::time::Duration) -> LogOptions {
    LogOptions {
        min_sync_interval: interval,
        ..LogOptions::default()
    }
}

/// Under sustained appends, syncs are paced: at most one per interval (plus
/// one unpaced one after a lone append). Appends come in bursts of ten a
/// millisecond apart; the SimFs syncs instantly, so without pacing every
/// burst would get at least one sync of its own (300 or more).
#[test]
fn paced_group_commit_syncs_at_most_once_per_interval_under_load() {
    let (_fs, shared, dir) = sim();
    let interval = std::time::Duration::from_millis(20);
    let (log, _) = FileLog::open_with(shared, &dir, paced(interval)).unwrap();
    let flushes_before = log.stats().flushes;
    let started = std::time::Instant::now();
    let mut last = 0;
    let appends = 3000u64;
    for c in 1..=appends {
        last = log.append(&[PersistEntry::Commit(Slot(c))]).unwrap();
        if c % 10 == 0 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    log.wait_durable(last).unwrap();
    let elapsed = started.elapsed();
    let flushes = log.stats().flushes - flushes_before;
    // A sync whose batch was a lone append is not paced, so each interval
    // holds at most a paced sync and an unpaced one (a loaded machine
    // makes lone batches common); without pacing there would be one per
    // burst, 300 or more.
    let bound = 2 * (elapsed.as_millis() as u64 / interval.as_millis() as u64) + 5;
    assert!(
        (1..=bound).contains(&flushes),
        "{flushes} syncs for {appends} appends in {elapsed:?}; pacing allows at most {bound}"
    );
    assert_eq!(log.state().commit_index, Slot(appends));
}

/// A lone append is synced at once even with a long interval: light load
/// pays no pacing delay.
#[test]
fn paced_group_commit_syncs_a_lone_append_at_once() {
    let (_fs, shared, dir) = sim();
    let interval = std::time::Duration::from_secs(1);
    let (log, _) = FileLog::open_with(shared, &dir, paced(interval)).unwrap();
    let started = std::time::Instant::now();
    for c in 1..=3 {
        let seq = log.append(&[PersistEntry::Commit(Slot(c))]).unwrap();
        log.wait_durable(seq).unwrap();
    }
    assert!(
        started.elapsed() < interval / 2,
        "lone appends waited for pacing: {:?}",
        started.elapsed()
    );
}

#[test]
fn sync_interval_over_a_second_is_refused() {
    let (_fs, shared, dir) = sim();
    let err =
        FileLog::open_with(shared, &dir, paced(std::time::Duration::from_secs(2))).unwrap_err();
    assert!(err.to_string().contains("min_sync_interval"), "{err}");
}

/// Events a durability listener heard, and a listener recording them.
fn recording_listener() -> (
    Arc<std::sync::Mutex<Vec<crate::DurabilityEvent>>>,
    crate::DurabilityListener,
) {
    let heard = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = heard.clone();
    let listener: crate::DurabilityListener =
        Arc::new(move |event| sink.lock().unwrap().push(event));
    (heard, listener)
}

/// The writer thread tells a listener of every sync (no thread has to
/// block in `wait_durable` for it), and of its failure.
#[test]
fn the_writer_thread_tells_a_durability_listener_of_syncs_and_failure() {
    use crate::DurabilityEvent;
    let (fs, shared, dir) = sim();
    let (log, _) = FileLog::open_with(shared, &dir, LogOptions::default()).unwrap();
    let (heard, listener) = recording_listener();
    assert!(log.set_durability_listener(listener.clone()));
    assert!(
        !log.set_durability_listener(listener),
        "a second listener is refused, not silently dropped"
    );
    let first = log.append(&[accept(Slot(1), 1, 10)]).unwrap();
    log.wait_durable(first).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !heard
        .lock()
        .unwrap()
        .contains(&DurabilityEvent::Durable(first))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "never told of the sync"
        );
        std::thread::yield_now();
    }
    fs.crash_after(0);
    let lost = log.append(&[accept(Slot(2), 1, 10)]).unwrap();
    assert!(log.wait_durable(lost).is_err());
    // The listener hears before waiters wake; a spurious wake-up could
    // still return first, so wait for it.
    let failed = |events: &[DurabilityEvent]| {
        events
            .iter()
            .any(|e| matches!(e, DurabilityEvent::Failed(_)))
    };
    while !failed(&heard.lock().unwrap()) {
        assert!(
            std::time::Instant::now() < deadline,
            "never told of the failure"
        );
        std::thread::yield_now();
    }
    let events = heard.lock().unwrap().clone();
    assert!(
        matches!(events.last(), Some(DurabilityEvent::Failed(why)) if why.contains("log writer failed")),
        "{events:?}"
    );
    assert!(
        !events.contains(&DurabilityEvent::Durable(lost)),
        "a failed append was reported durable: {events:?}"
    );
}

/// An inline log has no thread to call back from: its callers sync it.
#[test]
fn an_inline_log_takes_no_durability_listener() {
    let (_fs, shared, dir) = sim();
    let options = LogOptions {
        writer: crate::WriterMode::Inline,
        ..LogOptions::default()
    };
    let (log, _) = FileLog::open_with(shared, &dir, options).unwrap();
    let (_heard, listener) = recording_listener();
    assert!(!log.set_durability_listener(listener));
}
