//! Hot-path micro-benchmarks: RESP parsing of pipelined commands, command
//! encoding, applying a batch of requests to the KV state machine, and
//! taking a checkpoint snapshot of it.

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use paxos_kv::kv::{encode_command, KvStore};
use paxos_kv::resp::{self, command_args, RespLimits};
use paxos_node::StateMachine;

fn pipelined_sets(n: usize) -> BytesMut {
    let mut wire = BytesMut::new();
    for i in 0..n {
        let key = format!("key:{i:08}");
        resp::encode_command(
            [&b"SET"[..], key.as_bytes(), &[b'v'; 64][..]].into_iter(),
            &mut wire,
        );
    }
    wire
}

fn bench_resp(c: &mut Criterion) {
    let wire = pipelined_sets(1000);
    let mut g = c.benchmark_group("resp");
    g.throughput(Throughput::Elements(1000));
    g.bench_function("parse_1000_pipelined_sets", |b| {
        let limits = RespLimits::default();
        b.iter_batched(
            || wire.clone(),
            |mut buf| {
                let mut n = 0;
                while let Ok(Some(frame)) = resp::parse(&mut buf, &limits) {
                    n += command_args(frame).map_or(0, |a| a.len());
                }
                n
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("parse_and_encode_request_1000_sets", |b| {
        let limits = RespLimits::default();
        b.iter_batched(
            || (wire.clone(), BytesMut::with_capacity(128 * 1024)),
            |(mut buf, mut out)| {
                while let Ok(Some(frame)) = resp::parse(&mut buf, &limits) {
                    if let Some(args) = command_args(frame) {
                        let _ = encode_command(&args, &mut out);
                        let _request = out.split().freeze();
                    }
                }
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn bench_apply(c: &mut Criterion) {
    let mut requests = Vec::new();
    for i in 0..1000 {
        let args = [
            Bytes::from_static(b"SET"),
            Bytes::from(format!("key:{:08}", i % 10_000)),
            Bytes::from(vec![b'v'; 64]),
        ];
        let mut out = BytesMut::new();
        encode_command(&args, &mut out).unwrap();
        requests.push(out.freeze());
    }
    let mut g = c.benchmark_group("kv");
    g.throughput(Throughput::Elements(1000));
    g.bench_function("apply_batch_of_1000_sets", |b| {
        let mut store = KvStore::new();
        let mut outputs = Vec::with_capacity(1000);
        b.iter(|| {
            outputs.clear();
            outputs.extend(requests.iter().map(|r| store.execute(r)));
            outputs.len()
        })
    });
    g.finish();
    let mut store = KvStore::new();
    for r in &requests {
        store.execute(r);
    }
    // Taking the snapshot and encoding it, as a checkpoint does (the
    // encoding on the checkpoint thread).
    c.bench_function("kv/snapshot_and_write_1000_keys", |b| {
        b.iter(|| {
            let mut snapshot = store.snapshot();
            paxos_node::Snapshot::write_to(&mut snapshot, &mut std::io::sink())
        })
    });
}

/// `snapshot()` alone at a million keys: the part that runs on the node's
/// event loop, which must not grow with the number of keys.
fn bench_snapshot_1m(c: &mut Criterion) {
    let mut store = KvStore::new();
    let mut request = BytesMut::new();
    for i in 0..1_000_000u32 {
        let args = [
            Bytes::from_static(b"SET"),
            Bytes::from(format!("key:{i:08}")),
            Bytes::from_static(&[b'v'; 64]),
        ];
        encode_command(&args, &mut request).unwrap();
        store.execute(&request.split());
    }
    c.bench_function("kv/snapshot_1m_keys", |b| b.iter(|| store.snapshot()));
}

criterion_group!(benches, bench_resp, bench_apply, bench_snapshot_1m);
criterion_main!(benches);
