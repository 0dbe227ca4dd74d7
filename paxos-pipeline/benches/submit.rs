//! Submits per second through the lock-free queue against a
//! `Mutex<VecDeque>` + `Condvar` bounded queue, with 1, 2 and 8 producer
//! threads and one consumer draining in batches; plus the per-request cost of
//! the completion path (one `Arc` cell per request).
//!
//! Both queues block the same way: producers wait for room, the consumer waits
//! for work (no spinning), so the numbers include wake-ups.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use paxos_pipeline::{bounded, pipeline, DrainLimits, Readiness};

const ITEMS: u64 = 40_000;
const CAPACITY: usize = 1024;
const BATCH: usize = 256;
const LIMITS: DrainLimits = DrainLimits {
    max_count: BATCH,
    max_bytes: usize::MAX,
    per_item_overhead: 0,
};

fn ring_run(producers: u64) -> Duration {
    let (producer, mut consumer) = bounded::<u64>(CAPACITY).unwrap();
    let start = Instant::now();
    std::thread::scope(|s| {
        for p in 0..producers {
            let producer = producer.clone();
            s.spawn(move || {
                for i in 0..ITEMS / producers {
                    producer.push_blocking(p << 32 | i).unwrap();
                }
            });
        }
        drop(producer);
        let mut sum = 0u64;
        while consumer.ready_blocking() == Readiness::Items {
            consumer.drain_batch_by(LIMITS, |_| 8, |v| sum = sum.wrapping_add(v));
        }
        std::hint::black_box(sum);
    });
    start.elapsed()
}

/// The classic bounded queue: one mutex, two condition variables.
struct MutexQueue {
    state: Mutex<(VecDeque<u64>, usize)>, // (items, live producers)
    not_full: Condvar,
    not_empty: Condvar,
}

fn mutex_run(producers: u64) -> Duration {
    let queue = MutexQueue {
        state: Mutex::new((VecDeque::with_capacity(CAPACITY), producers as usize)),
        not_full: Condvar::new(),
        not_empty: Condvar::new(),
    };
    let start = Instant::now();
    std::thread::scope(|s| {
        for p in 0..producers {
            let queue = &queue;
            s.spawn(move || {
                for i in 0..ITEMS / producers {
                    let mut state = queue.state.lock().unwrap();
                    while state.0.len() == CAPACITY {
                        state = queue.not_full.wait(state).unwrap();
                    }
                    state.0.push_back(p << 32 | i);
                    drop(state);
                    queue.not_empty.notify_one();
                }
                queue.state.lock().unwrap().1 -= 1;
                queue.not_empty.notify_one();
            });
        }
        let mut sum = 0u64;
        loop {
            let mut state = queue.state.lock().unwrap();
            while state.0.is_empty() && state.1 > 0 {
                state = queue.not_empty.wait(state).unwrap();
            }
            if state.0.is_empty() {
                break;
            }
            let n = state.0.len().min(BATCH);
            for v in state.0.drain(..n) {
                sum = sum.wrapping_add(v);
            }
            drop(state);
            queue.not_full.notify_all();
        }
        std::hint::black_box(sum);
    });
    start.elapsed()
}

fn submit_throughput(c: &mut Criterion) {
    let mut group = c.benchmark_group("submit");
    group.throughput(Throughput::Elements(ITEMS));
    group.sample_size(10);
    for producers in [1u64, 2, 8] {
        group.bench_with_input(
            BenchmarkId::new("lock_free_ring", producers),
            &producers,
            |b, &p| b.iter_custom(|iters| (0..iters).map(|_| ring_run(p)).sum()),
        );
        group.bench_with_input(
            BenchmarkId::new("mutex_vecdeque", producers),
            &producers,
            |b, &p| b.iter_custom(|iters| (0..iters).map(|_| mutex_run(p)).sum()),
        );
    }
    group.finish();
}

/// One thread: submit a batch, drain it, complete every request, take every
/// outcome. Against the same loop on the bare queue, this is the cost of the
/// completion path per request.
fn completion_roundtrip(c: &mut Criterion) {
    let mut group = c.benchmark_group("roundtrip");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("pipeline_submit_complete", |b| {
        let (submitter, mut consumer) = pipeline::<u64, u64>(BATCH).unwrap();
        let mut handles = Vec::with_capacity(BATCH);
        let mut completers = Vec::with_capacity(BATCH);
        b.iter(|| {
            for i in 0..BATCH as u64 {
                handles.push(submitter.try_submit(i).unwrap());
            }
            consumer.drain_batch_by(LIMITS, |_| 8, |r| completers.push(r));
            for r in completers.drain(..) {
                r.completer.complete(r.payload);
            }
            let mut sum = 0u64;
            for mut h in handles.drain(..) {
                if let Some(paxos_pipeline::Outcome::Completed(v)) = h.try_take() {
                    sum += v;
                }
            }
            std::hint::black_box(sum)
        });
    });
    group.bench_function("queue_only", |b| {
        let (producer, mut consumer) = bounded::<u64>(BATCH).unwrap();
        b.iter(|| {
            for i in 0..BATCH as u64 {
                producer.try_push(i).unwrap();
            }
            let mut sum = 0u64;
            consumer.drain_batch_by(LIMITS, |_| 8, |v| sum += v);
            std::hint::black_box(sum)
        });
    });
    group.finish();
}

criterion_group!(benches, submit_throughput, completion_roundtrip);
criterion_main!(benches);
