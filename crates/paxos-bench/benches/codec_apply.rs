//! Criterion micro-benchmarks of the two per-decree CPU costs on the write
//! path: encoding/decoding a replica message (paxos-core's codec) and
//! applying a decree's batch to the KV state machine (paxos-kv).
//!
//! Run: `cargo bench -p paxos-bench --bench codec_apply`.

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use paxos_core::{batch, codec, Ballot, Message, ReplicaId, Value};
use paxos_kv::kv::{encode_command, KvStore, StateMachine};

/// A batch of `n` SET requests with 100-byte values, as the leader builds it.
fn set_batch(n: usize) -> Bytes {
    let value = Bytes::from(vec![b'v'; 100]);
    let mut requests = Vec::with_capacity(n);
    let mut buf = BytesMut::new();
    for i in 0..n {
        let args = [
            Bytes::from_static(b"SET"),
            Bytes::from(format!("key:{i}")),
            value.clone(),
        ];
        encode_command(&args, &mut buf).expect("valid SET");
        requests.push(buf.split().freeze());
    }
    batch::encode(requests.iter().map(|r| r.as_ref()))
}

fn codec_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    for n in [1usize, 64, 1024] {
        let msg = Message::Accept {
            ballot: Ballot::new(7, ReplicaId(1)),
            slot: 123_456,
            value: Value::Requests(set_batch(n)),
            commit_index: 123_400,
        };
        let encoded = codec::encode_to_bytes(&msg);
        g.throughput(Throughput::Bytes(encoded.len() as u64));
        g.bench_function(format!("encode_accept_{n}_requests"), |b| {
            let mut out = BytesMut::with_capacity(encoded.len());
            b.iter(|| {
                out.clear();
                codec::encode(&msg, &mut out);
                out.len()
            })
        });
        g.bench_function(format!("decode_accept_{n}_requests"), |b| {
            b.iter(|| codec::decode(encoded.clone()).expect("valid message"))
        });
    }
    g.finish();
}

fn apply_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("kv_apply");
    for n in [64usize, 1024] {
        let value = Value::Requests(set_batch(n));
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("apply_set_batch_{n}"), |b| {
            b.iter_batched(
                || (KvStore::new(), Vec::with_capacity(n)),
                |(mut kv, mut outputs)| {
                    kv.apply(1, &value, &mut outputs);
                    assert_eq!(outputs.len(), n);
                    outputs.len()
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, codec_benches, apply_benches);
criterion_main!(benches);
