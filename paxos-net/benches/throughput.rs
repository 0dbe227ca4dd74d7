//! Throughput of `QuicTransport` between two endpoints on loopback, for
//! 100-byte and 64 KiB messages: messages/s and bytes/s, one direction.
//!
//! Each iteration sends one message; the sender keeps up to `WINDOW`
//! messages outstanding (sent but not yet received) so the bounded queue
//! never overflows and nothing is dropped.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use paxos_core::ReplicaId;
use paxos_net::certs::generate_in_memory;
use paxos_net::{QuicConfig, QuicTransport, Transport};
use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

fn throughput(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (_, identities) = generate_in_memory(&[ReplicaId(1), ReplicaId(2)]).unwrap();
    let sockets = [
        UdpSocket::bind("127.0.0.1:0").unwrap(),
        UdpSocket::bind("127.0.0.1:0").unwrap(),
    ];
    let addrs: Vec<_> = sockets.iter().map(|s| s.local_addr().unwrap()).collect();
    let [s1, s2] = sockets;
    let config = |i: usize| {
        let peer = ReplicaId(2 - i as u32);
        let mut config = QuicConfig::new(
            identities[i].clone(),
            BTreeMap::from([(peer, addrs[1 - i])]),
        );
        config.send_queue_messages = 16_384;
        config.send_queue_bytes = 512 << 20;
        config.inbound_capacity = 16_384;
        config
    };
    let (sender, _sender_in, receiver, mut receiver_in) = runtime.block_on(async {
        let (a, a_in) = QuicTransport::start(config(0), s1).unwrap();
        let (b, mut b_in) = QuicTransport::start(config(1), s2).unwrap();
        // Wait for the connection.
        loop {
            let _ = a.send(ReplicaId(2), Bytes::from_static(b"warm-up"));
            if tokio::time::timeout(Duration::from_millis(100), b_in.recv())
                .await
                .is_ok()
            {
                break;
            }
        }
        (a, a_in, b, b_in)
    });

    let mut group = c.benchmark_group("quic_loopback");
    for (size, window) in [(100usize, 8192u64), (64 * 1024, 512)] {
        let message = Bytes::from(vec![0xA5u8; size]);
        for (unit, tp) in [
            ("msgs", Throughput::Elements(1)),
            ("bytes", Throughput::Bytes(size as u64)),
        ] {
            group.throughput(tp);
            group.bench_function(BenchmarkId::new(unit, size), |b| {
                b.iter_custom(|iters| {
                    runtime.block_on(async {
                        let start = Instant::now();
                        let (mut sent, mut received) = (0u64, 0u64);
                        while received < iters {
                            while sent < iters && sent - received < window {
                                if sender.send(ReplicaId(2), message.clone()).is_err() {
                                    break;
                                }
                                sent += 1;
                            }
                            // Drain whatever has arrived, waiting for at least one.
                            let (from, payload) = receiver_in.recv().await.unwrap();
                            debug_assert_eq!((from, payload.len()), (ReplicaId(1), size));
                            received += 1;
                            while received < sent {
                                match receiver_in.try_recv() {
                                    Ok(_) => received += 1,
                                    Err(_) => break,
                                }
                            }
                        }
                        start.elapsed()
                    })
                })
            });
        }
    }
    group.finish();
    let stats = sender.stats();
    assert_eq!(
        stats.peer(ReplicaId(2)).unwrap().dropped,
        0,
        "the window must keep the queue from overflowing"
    );
    drop(receiver);
}

criterion_group!(benches, throughput);
criterion_main!(benches);
