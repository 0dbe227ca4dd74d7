//! [`WriterMode::Inline`]: no thread, no clock; appends queue, and
//! `sync_queued` (or `wait_durable`) writes and syncs them on the caller's
//! thread through the writer thread's code.

use super::{accept, apply_all, segment_paths, sim};
use crate::sim_fs::{CrashPolicy, DiskOp, LatencyModel, SimFaults, SimFs};
use crate::{FileLog, LogOptions, ReplicaStorage, StorageError, WriterMode};
use paxos_core::{PersistEntry, Slot};
use std::path::Path;
use std::sync::Arc;

fn inline() -> LogOptions {
    LogOptions {
        writer: WriterMode::Inline,
        ..LogOptions::default()
    }
}

fn inline_small() -> LogOptions {
    LogOptions {
        segment_bytes: 4096,
        ..inline()
    }
}

#[test]
fn appends_only_queue_until_sync_queued_writes_them_in_one_group_commit() {
    let (fs, shared, dir) = sim();
    let (log, _) = FileLog::open_with(shared.clone(), &dir, inline()).unwrap();
    let syncs = fs.data_syncs();
    let ops = fs.mutating_ops();
    let batches: Vec<Vec<PersistEntry>> = (1..=10).map(|s| vec![accept(Slot(s), 1, 40)]).collect();
    for b in &batches {
        log.append(b).unwrap();
    }
    // A writer thread, were there one, would have written by now.
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert_eq!(fs.mutating_ops(), ops, "appending wrote nothing");
    assert_eq!(log.durable_seq(), 0);
    assert_eq!(
        log.read_accepted(Slot(1), 100).unwrap().len(),
        10,
        "queued appends are served"
    );
    assert_eq!(log.sync_queued().unwrap(), 10);
    assert_eq!(log.durable_seq(), 10);
    assert_eq!(fs.data_syncs(), syncs + 1, "one fdatasync for all ten");
    assert_eq!(log.stats().flushes, 1);
    assert_eq!(log.stats().flush_micros, 0, "inline mode reads no clock");
    assert_eq!(log.stats().fsync_micros.count(), 0, "nor times fsyncs");
    assert_eq!(log.stats().appends_per_flush.sum, 10);
    assert_eq!(
        log.stats().appends_per_flush.counts[4],
        1,
        "one batch of 9..=16"
    );
    assert_eq!(
        log.sync_queued().unwrap(),
        10,
        "nothing queued: nothing to do"
    );
    assert_eq!(fs.data_syncs(), syncs + 1);
    log.close().unwrap();
    let (log, state) = FileLog::open_with(shared, &dir, inline()).unwrap();
    assert_eq!(state, apply_all(&batches));
    assert_eq!(log.durable_seq(), 10);
}

#[test]
fn wait_durable_syncs_and_a_full_queue_is_an_error_not_a_block() {
    let (_fs, shared, dir) = sim();
    let opts = LogOptions {
        max_queued_appends: 4,
        ..inline()
    };
    let (log, _) = FileLog::open_with(shared, &dir, opts).unwrap();
    for c in 1..=4 {
        log.append(&[PersistEntry::Commit(Slot(c))]).unwrap();
    }
    match log.append(&[PersistEntry::Commit(Slot(5))]) {
        Err(StorageError::Full(why)) => assert!(why.contains("sync_queued"), "{why}"),
        other => panic!("expected Full, got {other:?}"),
    }
    assert_eq!(
        log.state().commit_index,
        Slot(4),
        "the refused append changed nothing"
    );
    log.wait_durable(2).unwrap();
    assert_eq!(log.durable_seq(), 4, "one sync covered the whole queue");
    assert_eq!(log.append(&[PersistEntry::Commit(Slot(5))]).unwrap(), 5);
    assert!(matches!(
        log.wait_durable(6),
        Err(StorageError::OutOfRange(_))
    ));
    log.wait_durable(4).unwrap();
    assert_eq!(
        log.durable_seq(),
        4,
        "waiting for a durable append syncs nothing"
    );
}

#[test]
fn a_large_queue_is_written_in_flushes_of_max_flush_bytes() {
    let (fs, shared, dir) = sim();
    let opts = LogOptions {
        max_flush_bytes: 1000,
        ..inline()
    };
    let (log, _) = FileLog::open_with(shared, &dir, opts).unwrap();
    let syncs = fs.data_syncs();
    for s in 1..=20 {
        log.append(&[accept(Slot(s), 1, 200)]).unwrap();
    }
    assert_eq!(log.sync_queued().unwrap(), 20);
    let flushes = fs.data_syncs() - syncs;
    assert!((5..=20).contains(&flushes), "{flushes} flushes");
}

#[test]
fn rolls_truncates_and_reclaims_segments_inline() {
    let (fs, shared, dir) = sim();
    let (log, _) = FileLog::open_with(shared.clone(), &dir, inline_small()).unwrap();
    let mut batches = Vec::new();
    for slot in 1..=60 {
        let b = vec![accept(Slot(slot), 2, 150)];
        log.append(&b).unwrap();
        batches.push(b);
        if slot % 7 == 0 {
            log.sync_queued().unwrap();
        }
    }
    log.sync_queued().unwrap();
    let before = segment_paths(&fs, &dir).len();
    assert!(before >= 3, "rolled into {before} segments");
    batches.push(vec![PersistEntry::Truncate(Slot(50))]);
    let seq = log.truncate_through(Slot(50)).unwrap();
    assert_eq!(log.sync_queued().unwrap(), seq);
    let stats = log.stats();
    assert!(stats.segments_deleted >= 2, "{stats:?}");
    assert!(segment_paths(&fs, &dir).len() < before);
    assert!(matches!(
        log.read_accepted(Slot(10), 5),
        Err(StorageError::OutOfRange(_))
    ));
    assert_eq!(log.read_accepted(Slot(51), 100).unwrap().len(), 10);
    drop(log);
    let (log, state) = FileLog::open_with(shared, &dir, inline_small()).unwrap();
    assert_eq!(state, apply_all(&batches));
    assert_eq!(log.durable_seq(), seq);
}

#[test]
fn dropping_an_inline_log_loses_what_is_queued_like_a_crash() {
    let (_fs, shared, dir) = sim();
    let (log, _) = FileLog::open_with(shared.clone(), &dir, inline()).unwrap();
    let kept: Vec<Vec<PersistEntry>> = (1..=3)
        .map(|c| vec![PersistEntry::Commit(Slot(c))])
        .collect();
    for b in &kept {
        log.append(b).unwrap();
    }
    log.sync_queued().unwrap();
    log.append(&[PersistEntry::Commit(Slot(9))]).unwrap();
    drop(log);
    let (log, state) = FileLog::open_with(shared, &dir, inline()).unwrap();
    assert_eq!(state, apply_all(&kept));
    assert_eq!(log.durable_seq(), 3);
}

#[test]
fn a_failed_inline_sync_closes_the_log() {
    let (fs, shared, dir) = sim();
    let (log, _) = FileLog::open_with(shared, &dir, inline()).unwrap();
    log.append(&[PersistEntry::Commit(Slot(1))]).unwrap();
    log.sync_queued().unwrap();
    log.append(&[PersistEntry::Commit(Slot(2))]).unwrap();
    fs.crash_after(1); // the write lands, the sync fails
    assert!(matches!(log.sync_queued(), Err(StorageError::Io { .. })));
    assert_eq!(log.durable_seq(), 1);
    assert!(matches!(
        log.append(&[PersistEntry::Commit(Slot(3))]),
        Err(StorageError::Closed(_))
    ));
    assert!(matches!(log.wait_durable(2), Err(StorageError::Closed(_))));
    assert!(matches!(log.sync_queued(), Err(StorageError::Closed(_))));
    assert!(log.close().is_err());
}

#[test]
fn sync_queued_in_thread_mode_waits_for_the_writer() {
    let (_fs, shared, dir) = sim();
    let (log, _) = FileLog::open_with(shared, &dir, LogOptions::default()).unwrap();
    assert_eq!(log.sync_queued().unwrap(), 0);
    for c in 1..=5 {
        log.append(&[PersistEntry::Commit(Slot(c))]).unwrap();
    }
    assert_eq!(log.sync_queued().unwrap(), 5);
}

/// Everything a run leaves observable.
#[derive(Debug, PartialEq)]
struct Run {
    files: Vec<(std::path::PathBuf, Vec<u8>)>,
    /// Busy time after each sync, drawn latencies, durable sequence numbers.
    trace: Vec<u64>,
    faults: String,
}

/// Runs a fixed workload with crashes on a disk with faults and latency
/// outliers.
fn deterministic_run(seed: u64) -> Run {
    let fs = SimFs::with_faults(SimFaults {
        seed,
        read_bit_flip_per_million: 20_000,
        misdirected_write_per_million: 10_000,
        latency: LatencyModel {
            outlier_per_million: 100_000,
            ..LatencyModel::default()
        },
        ..SimFaults::default()
    });
    let shared: crate::fs::SharedFs = Arc::new(fs.clone());
    let dir = Path::new("/log");
    let opts = LogOptions {
        on_corruption: crate::CorruptionPolicy::Salvage,
        ..inline_small()
    };
    let mut trace = Vec::new();
    for round in 0..4u64 {
        let (log, _) = FileLog::open_with(shared.clone(), dir, opts.clone()).unwrap();
        for slot in 1..=40 {
            let _ = log.append(&[accept(Slot(round * 100 + slot), 1, 120)]);
            if slot % 5 == 0 {
                let _ = log.sync_queued();
                trace.push(fs.take_busy_us());
                trace.push(fs.latency_us(DiskOp::Sync, 4096));
            }
        }
        trace.push(log.durable_seq());
        drop(log);
        fs.crash(CrashPolicy::Torn { seed: round });
    }
    let files = fs
        .paths()
        .into_iter()
        .map(|p| {
            let c = fs.raw_contents(&p).unwrap();
            (p, c)
        })
        .collect();
    Run {
        files,
        trace,
        faults: format!("{:?}", fs.fault_counters()),
    }
}

/// One seed is one run: same files, same latencies, same faults, byte for
/// byte; another seed differs.
#[test]
fn an_inline_log_on_a_seeded_disk_is_deterministic() {
    let a = deterministic_run(7);
    let b = deterministic_run(7);
    assert_eq!(a, b);
    assert!(!a.faults.contains("misdirected_writes: 0,"), "{}", a.faults);
    let c = deterministic_run(8);
    assert_ne!(a.trace, c.trace, "another seed draws other latencies");
}
