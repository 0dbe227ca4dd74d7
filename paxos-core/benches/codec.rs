//! Codec and replica hot-path benchmarks.
//!
//! `cargo bench -p paxos-core --bench codec -- --warm-up-time 1 --measurement-time 3`

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use paxos_core::{
    codec, msg, Accepted, Action, Ballot, Config, DurableState, Membership, Message, Replica,
    ReplicaId, Role, Slot, Time, Value,
};

fn accept_with_payload(len: usize) -> Message {
    Message::Accept(msg::Accept {
        ballot: Ballot::new(7, ReplicaId(1)),
        slot: Slot(123_456),
        value: Value::Requests(Bytes::from(vec![0xab; len])),
        commit_index: Slot(123_400),
    })
}

fn bench_codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    for len in [64usize, 4096, 65536] {
        let msg = accept_with_payload(len);
        let frame = codec::encode_to_bytes(&msg);
        g.throughput(Throughput::Bytes(frame.len() as u64));
        g.bench_function(format!("encode_accept_{len}B"), |b| {
            let mut out = BytesMut::with_capacity(len + 128);
            b.iter(|| {
                out.clear();
                codec::encode(black_box(&msg), &mut out);
                black_box(out.len())
            })
        });
        g.bench_function(format!("decode_accept_{len}B"), |b| {
            b.iter(|| codec::decode(black_box(frame.clone())).unwrap())
        });
    }
    let accepted = Message::Accepted(msg::Accepted {
        ballot: Ballot::new(7, ReplicaId(1)),
        slot: Slot(123_456),
        commit_index: Slot(123_400),
    });
    let frame = codec::encode_to_bytes(&accepted);
    g.throughput(Throughput::Elements(1));
    g.bench_function("decode_accepted", |b| {
        b.iter(|| codec::decode(black_box(frame.clone())).unwrap())
    });
    let decrees = Message::Decrees(msg::Decrees {
        from_slot: Slot(1),
        commit_index: Slot(256),
        log_start: Slot(1),
        decrees: Slot(1)
            .through(Slot(256))
            .map(|slot| Accepted {
                slot,
                ballot: Ballot::new(3, ReplicaId(2)),
                value: Value::Requests(Bytes::from(vec![1u8; 256])),
            })
            .collect(),
    });
    let frame = codec::encode_to_bytes(&decrees);
    g.throughput(Throughput::Bytes(frame.len() as u64));
    g.bench_function("decode_decrees_256x256B", |b| {
        b.iter(|| codec::decode(black_box(frame.clone())).unwrap())
    });
    g.finish();
}

/// Decrees per second through a 3-replica cluster driven synchronously
/// (instant storage and network): the protocol's own CPU cost per decree.
fn bench_replica(c: &mut Criterion) {
    let members = Membership::with_voters(vec![ReplicaId(1), ReplicaId(2), ReplicaId(3)]);
    let mut replicas: Vec<Replica> = (1..=3)
        .map(|i| {
            Replica::new(
                Config::new(ReplicaId(i), members.clone()),
                DurableState::default(),
                Slot::ZERO,
                i as u64,
                Time(0),
            )
        })
        .collect();
    let mut now = Time(0);
    let mut net = std::collections::VecDeque::new();
    let pump =
        |replicas: &mut Vec<Replica>,
         now: Time,
         net: &mut std::collections::VecDeque<(ReplicaId, ReplicaId, Message)>| {
            let mut applied = 0u64;
            loop {
                for (i, replica) in replicas.iter_mut().enumerate() {
                    let me = ReplicaId(i as u32 + 1);
                    while let Some(a) = replica.poll_action() {
                        match a {
                            Action::Send { to, msg } => net.push_back((me, to, msg)),
                            Action::Persist { token, .. } => replica.on_persisted(now, token),
                            Action::Apply { .. } => applied += 1,
                            Action::StatusChanged(_) => {}
                            // No storage behind this benchmark: as if compacted.
                            Action::ReadDecrees { peer, from, .. } => {
                                replica.on_decrees_read(now, peer, from, None)
                            }
                        }
                    }
                }
                match net.pop_front() {
                    Some((from, to, msg)) => {
                        replicas[(to.0 - 1) as usize].handle_message(now, from, msg)
                    }
                    None => return applied,
                }
            }
        };
    let leader = loop {
        now = now.plus_micros(10_000);
        for r in replicas.iter_mut() {
            if r.next_timer().is_some_and(|t| t <= now) {
                r.handle_tick(now);
            }
        }
        pump(&mut replicas, now, &mut net);
        if let Some(i) = replicas
            .iter()
            .position(|r| r.status().role == Role::Leader)
        {
            break i;
        }
    };
    let batch = paxos_core::batch::encode(std::iter::repeat_n(&[7u8; 64][..], 16));
    let mut g = c.benchmark_group("replica");
    g.throughput(Throughput::Elements(1));
    g.bench_function("3_replicas_decree_16x64B", |b| {
        b.iter(|| {
            replicas[leader]
                .propose(now, Value::Requests(batch.clone()))
                .unwrap();
            pump(&mut replicas, now, &mut net)
        })
    });
    g.finish();
}

criterion_group!(benches, bench_codec, bench_replica);
criterion_main!(benches);
