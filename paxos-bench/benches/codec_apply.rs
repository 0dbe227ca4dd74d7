//! Criterion micro-benchmarks of the two per-decree CPU costs on the write
//! path: encoding/decoding a replica message (paxos-core's codec),
//! applying a decree's batch to the KV state machine (paxos-kv), and turning
//! pipelined RESP commands into requests (the server's parse path).
//!
//! Run: `cargo bench -p paxos-bench --bench codec_apply`.

use bytes::{Buf, Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use paxos_core::{batch, codec, msg, Ballot, Message, ReplicaId, Slot, Value};
use paxos_kv::kv::{encode_command, KvStore};
use paxos_kv::resp::{self, RespLimits};

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

/// What the node does with a chosen batch: execute every request, in order,
/// collecting the replies.
fn apply(kv: &mut KvStore, value: &Value, outputs: &mut Vec<Bytes>) {
    if let Value::Requests(b) = value {
        for request in batch::iter(b).expect("a valid batch") {
            outputs.push(kv.execute(&request));
        }
    }
}

fn codec_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    for n in [1usize, 64, 1024] {
        let msg = Message::Accept(msg::Accept {
            ballot: Ballot::new(7, ReplicaId(1)),
            slot: Slot(123_456),
            value: Value::Requests(set_batch(n)),
            commit_index: Slot(123_400),
        });
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
                    apply(&mut kv, &value, &mut outputs);
                    assert_eq!(outputs.len(), n);
                    outputs.len()
                },
                BatchSize::SmallInput,
            )
        });
    }
    // The cluster benchmark's steady state: every SET overwrites one of the
    // keys already in a store of 256K keys (256 clients × 1000 keys).
    let value = Value::Requests(set_batch(1024));
    let mut kv = KvStore::new();
    let mut outputs = Vec::with_capacity(1024);
    for chunk in 0..256 {
        let mut buf = BytesMut::new();
        let requests: Vec<Bytes> = (0..1000)
            .map(|i| {
                let args = [
                    Bytes::from_static(b"SET"),
                    Bytes::from(format!("key:{}", chunk * 1000 + i)),
                    Bytes::from_static(&[b'v'; 100]),
                ];
                encode_command(&args, &mut buf).expect("valid SET");
                buf.split().freeze()
            })
            .collect();
        outputs.clear();
        apply(
            &mut kv,
            &Value::Requests(batch::encode(requests.iter().map(|r| r.as_ref()))),
            &mut outputs,
        );
    }
    g.throughput(Throughput::Elements(1024));
    g.bench_function("apply_set_batch_1024_overwrite_in_256k_keys", |b| {
        b.iter(|| {
            outputs.clear();
            apply(&mut kv, &value, &mut outputs);
            outputs.len()
        })
    });
    g.finish();
}

fn resp_benches(c: &mut Criterion) {
    // 1024 pipelined `SET key:i <100 B>` commands as a client sends them.
    let mut wire = BytesMut::new();
    for i in 0..1024 {
        resp::encode_command(
            [&b"SET"[..], format!("key:{i}").as_bytes(), &[b'v'; 100]].into_iter(),
            &mut wire,
        );
    }
    let wire = wire.freeze();
    let limits = RespLimits::default();
    let mut g = c.benchmark_group("resp_to_request");
    g.throughput(Throughput::Elements(1024));
    // What the server did before: a Frame tree, a Vec of argument Bytes.
    g.bench_function("parse_frame_then_encode_1024_sets", |b| {
        let mut out = BytesMut::with_capacity(256 * 1024);
        b.iter(|| {
            let mut buf = BytesMut::from(&wire[..]);
            out.clear();
            while let Ok(Some(frame)) = resp::parse(&mut buf, &limits) {
                if let Some(args) = resp::command_args(frame) {
                    let _ = encode_command(&args, &mut out);
                }
            }
            out.len()
        })
    });
    // What the server does now: argument ranges borrowed from the buffer.
    g.bench_function("parse_command_then_encode_1024_sets", |b| {
        let mut out = BytesMut::with_capacity(256 * 1024);
        let mut ranges = Vec::with_capacity(8);
        b.iter(|| {
            let mut buf = BytesMut::from(&wire[..]);
            out.clear();
            while let Ok(Some(resp::Command::Args { len })) =
                resp::parse_command(&buf, &limits, &mut ranges)
            {
                let mut args: [&[u8]; 8] = [&[]; 8];
                for (arg, r) in args.iter_mut().zip(&ranges) {
                    *arg = &buf[r.clone()];
                }
                let _ = encode_command(&args[..ranges.len()], &mut out);
                buf.advance(len);
            }
            out.len()
        })
    });
    g.finish();
}

criterion_group!(benches, codec_benches, apply_benches, resp_benches);
criterion_main!(benches);
