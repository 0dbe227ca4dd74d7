//! Appends + commit per second for 100-byte records, per flush backend
//! available on this machine:
//!
//! - `msync-file`: an ordinary file mapping (msync per flush): durable;
//! - `dram-clwb`: PM instructions (clwb/clflushopt/clflush + sfence) on
//!   DRAM: NOT durable, shows the CPU cost of the PM path without PM;
//! - `volatile`: no flushing at all: NOT durable, the code-path floor.
//!
//! Layers: the raw log (one framed 100-byte record per commit),
//! `NvmStorage::append` (one Accept entry with a 100-byte value per call,
//! committed before it returns), and the same with group commit (16
//! appends per commit; throughput counted in appends).

use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use paxos_core::{Accepted, Ballot, PersistEntry, ReplicaId, Slot, Value};
use paxos_log::ReplicaStorage;
use paxos_nvm::layout::LOG_AREA_OFFSET;
use paxos_nvm::region::{FileBackend, FileRegion};
use paxos_nvm::{NvmOptions, NvmStorage, PmLog, PmRegion, VolatileRegion};

const REGION_BYTES: u64 = 16 << 20;
const RECORD: [u8; 100] = [0x5a; 100];

fn file_region(dir: &tempfile::TempDir, name: &str) -> FileRegion {
    let path = dir.path().join(name);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    file.set_len(REGION_BYTES).unwrap();
    FileRegion::open(file, &path, FileBackend::Auto).unwrap()
}

fn regions(dir: &tempfile::TempDir, name: &str) -> Vec<(&'static str, Box<dyn PmRegion>)> {
    let mut out: Vec<(&'static str, Box<dyn PmRegion>)> = vec![];
    let file = file_region(dir, name);
    let label =
        if file.kind().is_durable() && matches!(file.kind(), paxos_nvm::RegionKind::MsyncFile) {
            "msync-file"
        } else {
            "pm-dax"
        };
    out.push((label, Box::new(file)));
    if let Some(r) = VolatileRegion::with_cache_flush(REGION_BYTES as usize) {
        out.push(("dram-clwb", Box::new(r)));
    }
    out.push((
        "volatile",
        Box::new(VolatileRegion::new(REGION_BYTES as usize)),
    ));
    out
}

fn log_append_commit(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut group = c.benchmark_group("log_append_commit_100B");
    group.throughput(Throughput::Elements(1));
    group.sample_size(20);
    for (label, region) in regions(&dir, "log.region") {
        let mut log = PmLog::setup(region, 1).unwrap();
        let capacity = REGION_BYTES - LOG_AREA_OFFSET;
        let mut seq = 0u64;
        group.bench_function(BenchmarkId::from_parameter(label), |b| {
            b.iter(|| {
                seq += 1;
                let pos = paxos_nvm::record::append_record(&mut log, seq, &RECORD).unwrap();
                log.commit().unwrap();
                // Keep the circular log from filling: drop the older half.
                let htc = log.head_tail_capacity();
                if htc.tail - htc.head > capacity / 2 {
                    log.advance_head(pos).unwrap();
                }
            })
        });
    }
    group.finish();
}

fn storage_append(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut group = c.benchmark_group("storage_append_100B");
    group.throughput(Throughput::Elements(1));
    group.sample_size(20);
    for (label, region) in regions(&dir, "storage.region") {
        let opts = NvmOptions {
            log_id: Some(1),
            ..NvmOptions::default()
        };
        let (storage, _) = NvmStorage::format_region(region, &opts, label.into()).unwrap();
        let ballot = Ballot::new(1, ReplicaId(1));
        let value = Bytes::from_static(&RECORD);
        let mut n = 0u64;
        group.bench_function(BenchmarkId::from_parameter(label), |b| {
            b.iter(|| {
                n += 1;
                let slot = Slot(n);
                let accept = PersistEntry::Accept(Accepted {
                    slot,
                    ballot,
                    value: Value::Requests(value.clone()),
                });
                if n % 1000 == 0 {
                    // A checkpoint every 1000 slots keeps the live state bounded.
                    storage
                        .append(&[
                            accept,
                            PersistEntry::Commit(slot),
                            PersistEntry::Truncate(slot.saturating_sub(100)),
                        ])
                        .unwrap();
                } else {
                    storage.append(&[accept]).unwrap();
                }
            })
        });
    }
    group.finish();
}

/// Group commit: 16 appends per commit, measured per append.
fn storage_group_append(c: &mut Criterion) {
    const GROUP: usize = 16;
    let dir = tempfile::tempdir().unwrap();
    let mut group = c.benchmark_group("storage_append_100B_group16");
    group.throughput(Throughput::Elements(GROUP as u64));
    group.sample_size(20);
    for (label, region) in regions(&dir, "group.region") {
        let opts = NvmOptions {
            log_id: Some(1),
            max_group_appends: GROUP,
            ..NvmOptions::default()
        };
        let (storage, _) = NvmStorage::format_region(region, &opts, label.into()).unwrap();
        let ballot = Ballot::new(1, ReplicaId(1));
        let value = Bytes::from_static(&RECORD);
        let mut n = 0u64;
        group.bench_function(BenchmarkId::from_parameter(label), |b| {
            b.iter(|| {
                for _ in 0..GROUP {
                    n += 1;
                    let slot = Slot(n);
                    let accept = PersistEntry::Accept(Accepted {
                        slot,
                        ballot,
                        value: Value::Requests(value.clone()),
                    });
                    if n % 1000 == 0 {
                        storage
                            .append(&[
                                accept,
                                PersistEntry::Commit(slot),
                                PersistEntry::Truncate(slot.saturating_sub(100)),
                            ])
                            .unwrap();
                    } else {
                        storage.append(&[accept]).unwrap();
                    }
                }
                assert_eq!(
                    storage.durable_seq(),
                    n,
                    "the 16th append commits the group"
                );
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = log_append_commit, storage_append, storage_group_append
}
criterion_main!(benches);
