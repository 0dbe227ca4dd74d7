//! Group-commit throughput of `FileLog` and the raw fsync rate of the same
//! disk (the physical limit group commit amortises).
//!
//! Each measured operation is one `append` of a single accept record
//! followed by `wait_durable` on its sequence number, issued concurrently
//! by 1, 16 or 256 appender threads. Throughput is reported in appends/s;
//! multiply by the record size for MB/s (the frame adds 45 bytes of header).

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use paxos_core::{Accepted, Ballot, PersistEntry, ReplicaId, Slot, Value};
use paxos_log::{FileLog, LogOptions, ReplicaStorage};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn entry(n: u64, value: &Bytes) -> PersistEntry {
    PersistEntry::Accept(Accepted {
        // Reuse 1024 slots so the in-memory index stays small.
        slot: Slot(n % 1024 + 1),
        ballot: Ballot::new(1, ReplicaId(1)),
        value: Value::Requests(value.clone()),
    })
}

fn group_commit(c: &mut Criterion) {
    let mut group = c.benchmark_group("group_commit");
    group.sample_size(10);
    for size in [100usize, 4096] {
        let value = Bytes::from(vec![0xA5u8; size]);
        for appenders in [1u64, 16, 256] {
            group.throughput(Throughput::Elements(1));
            group.bench_function(BenchmarkId::new(format!("{size}B"), appenders), |b| {
                let dir = tempfile::tempdir().unwrap();
                let (log, _) = FileLog::open(dir.path(), LogOptions::default()).unwrap();
                let next_slot = AtomicU64::new(0);
                b.iter_custom(|iters| {
                    let per_thread = iters.div_ceil(appenders);
                    let start = Instant::now();
                    std::thread::scope(|s| {
                        for _ in 0..appenders {
                            s.spawn(|| {
                                for _ in 0..per_thread {
                                    let slot = next_slot.fetch_add(1, Ordering::Relaxed);
                                    let seq = log.append(&[entry(slot, &value)]).unwrap();
                                    log.wait_durable(seq).unwrap();
                                }
                            });
                        }
                    });
                    let elapsed = start.elapsed();
                    // Scale to exactly `iters` operations.
                    elapsed.mul_f64(iters as f64 / (per_thread * appenders) as f64)
                });
                let stats = log.stats();
                eprintln!(
                    "{size}B x {appenders}: {} appends in {} flushes = {:.1} appends/fsync",
                    stats.appends,
                    stats.flushes,
                    stats.appends as f64 / stats.flushes.max(1) as f64
                );
                log.close().unwrap();
            });
        }
    }
    group.finish();
}

fn raw_fsync(c: &mut Criterion) {
    let mut group = c.benchmark_group("raw_fdatasync");
    group.sample_size(10);
    for size in [100usize, 4096] {
        group.throughput(Throughput::Elements(1));
        group.bench_function(BenchmarkId::from_parameter(format!("{size}B")), |b| {
            let dir = tempfile::tempdir().unwrap();
            let mut f = std::fs::File::create(dir.path().join("raw")).unwrap();
            let buf = vec![0x5Au8; size];
            b.iter(|| {
                f.write_all(&buf).unwrap();
                f.sync_data().unwrap();
            });
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = raw_fsync, group_commit
}
criterion_main!(benches);
