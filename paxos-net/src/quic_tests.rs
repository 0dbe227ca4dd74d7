//! Loopback tests of [`QuicTransport`]: exchange, certificates, reconnect,
//! ordering, backpressure, malformed input.

use crate::certs::{generate_in_memory, NodeIdentity};
use crate::frame::{self, FrameHeader, FRAME_MAGIC, FRAME_VERSION};
use crate::quic::test_support::dial_raw;
use crate::{Inbound, NetError, QuicConfig, QuicTransport, SendError, Transport};
use bytes::{Bytes, BytesMut};
use paxos_core::ReplicaId;
use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{timeout, Instant};
use zerocopy::IntoBytes;

const WAIT: Duration = Duration::from_secs(10);

fn r(id: u32) -> ReplicaId {
    ReplicaId(id)
}

fn bind_local() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").unwrap()
}

/// Binds `addr` again after a restart, retrying while the old socket closes.
async fn rebind(addr: SocketAddr) -> UdpSocket {
    let deadline = Instant::now() + WAIT;
    loop {
        match UdpSocket::bind(addr) {
            Ok(socket) => return socket,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("could not rebind {addr}: {e}"),
        }
    }
}

/// A configuration with short timers, so failures are detected quickly.
fn test_config(identity: NodeIdentity, peers: BTreeMap<ReplicaId, SocketAddr>) -> QuicConfig {
    let mut config = QuicConfig::new(identity, peers);
    config.reconnect_initial = Duration::from_millis(20);
    config.reconnect_max = Duration::from_millis(200);
    config.handshake_timeout = Duration::from_secs(2);
    config.idle_timeout = Duration::from_secs(2);
    config
}

fn peers_of(
    me: ReplicaId,
    addrs: &BTreeMap<ReplicaId, SocketAddr>,
) -> BTreeMap<ReplicaId, SocketAddr> {
    addrs
        .iter()
        .filter(|(id, _)| **id != me)
        .map(|(id, a)| (*id, *a))
        .collect()
}

struct Cluster {
    identities: Vec<NodeIdentity>,
    addrs: BTreeMap<ReplicaId, SocketAddr>,
    nodes: Vec<(QuicTransport, Inbound)>,
}

/// Starts replicas 1..=n on loopback, all with the same CA.
fn start_cluster(n: u32, tweak: impl Fn(&mut QuicConfig)) -> Cluster {
    let ids: Vec<ReplicaId> = (1..=n).map(ReplicaId).collect();
    let (_, identities) = generate_in_memory(&ids).unwrap();
    let sockets: Vec<UdpSocket> = ids.iter().map(|_| bind_local()).collect();
    let addrs: BTreeMap<ReplicaId, SocketAddr> = ids
        .iter()
        .zip(&sockets)
        .map(|(id, s)| (*id, s.local_addr().unwrap()))
        .collect();
    let nodes = identities
        .iter()
        .zip(sockets)
        .map(|(identity, socket)| {
            let mut config = test_config(identity.clone(), peers_of(identity.id, &addrs));
            tweak(&mut config);
            QuicTransport::start(config, socket).unwrap()
        })
        .collect();
    Cluster {
        identities,
        addrs,
        nodes,
    }
}

async fn recv(inbound: &mut Inbound) -> (ReplicaId, Bytes) {
    timeout(WAIT, inbound.recv())
        .await
        .expect("timed out waiting for a message")
        .expect("inbound closed")
}

/// Sends `message` until one copy arrives (the connection may still be coming
/// up, and a restarted peer loses what was in flight).
async fn send_until_received(
    from: &impl Transport,
    to: ReplicaId,
    inbound: &mut Inbound,
    message: &'static [u8],
) {
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "{to} never received {message:?}");
        let _ = from.send(to, Bytes::from_static(message));
        if let Ok(Some((sender, got))) = timeout(Duration::from_millis(100), inbound.recv()).await {
            if got.as_ref() == message {
                assert_eq!(sender, from.local_id());
                return;
            }
        }
    }
}

/// `send_until_received` may leave extra copies in flight; wait for them
/// and throw them away so later checks see only new messages.
async fn drain_late_copies(inboxes: &mut [Inbound]) {
    tokio::time::sleep(Duration::from_millis(150)).await;
    for inbox in inboxes {
        while inbox.try_recv().is_ok() {}
    }
}

async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn two_endpoints_exchange_small_and_large_messages() {
    let Cluster { mut nodes, .. } = start_cluster(2, |_| {});
    let (b, mut b_in) = nodes.pop().unwrap();
    let (a, mut a_in) = nodes.pop().unwrap();
    a.send(r(2), Bytes::from_static(b"ping")).unwrap();
    assert_eq!(recv(&mut b_in).await, (r(1), Bytes::from_static(b"ping")));
    b.send(r(1), Bytes::from_static(b"pong")).unwrap();
    assert_eq!(recv(&mut a_in).await, (r(2), Bytes::from_static(b"pong")));

    let large: Bytes = (0..1_000_000u32)
        .map(|i| i as u8)
        .collect::<Vec<u8>>()
        .into();
    b.send(r(1), large.clone()).unwrap();
    assert_eq!(recv(&mut a_in).await, (r(2), large));

    assert_eq!(
        a.send(r(2), Bytes::from(vec![0; a.max_message_size() + 1])),
        Err(SendError::TooLarge {
            len: a.max_message_size() + 1,
            max: a.max_message_size()
        })
    );
    assert_eq!(
        a.send(r(9), Bytes::new()),
        Err(SendError::UnknownPeer(r(9)))
    );
    let stats = a.stats();
    assert_eq!(stats.peer(r(2)).unwrap().received, 2);
    assert!(stats.peer(r(2)).unwrap().connected);
    assert_eq!(stats.rejected_connections, 0);
}

#[tokio::test]
async fn three_endpoints_all_pairs_exchange() {
    let Cluster { mut nodes, .. } = start_cluster(3, |_| {});
    for (transport, _) in &nodes {
        let id = transport.local_id().0;
        assert_eq!(
            transport.broadcast(Bytes::from(id.to_le_bytes().to_vec())),
            2
        );
    }
    for (transport, inbound) in &mut nodes {
        let me = transport.local_id();
        let mut from = Vec::new();
        for _ in 0..2 {
            let (sender, message) = recv(inbound).await;
            assert_eq!(message.as_ref(), &sender.0.to_le_bytes());
            from.push(sender);
        }
        from.sort();
        let expected: Vec<ReplicaId> = (1..=3).map(ReplicaId).filter(|id| *id != me).collect();
        assert_eq!(from, expected);
    }
}

#[tokio::test]
async fn per_peer_order_is_preserved_across_batches() {
    let Cluster { mut nodes, .. } = start_cluster(2, |c| c.send_queue_messages = 8192);
    let (_b, mut b_in) = nodes.pop().unwrap();
    let (a, _a_in) = nodes.pop().unwrap();
    const COUNT: u32 = 4000;
    for seq in 0..COUNT {
        // Every 97th message is large, to mix the coalesced and zero-copy paths.
        let len = if seq % 97 == 0 { 10_000 } else { 40 };
        let mut message = vec![0u8; len];
        message[..4].copy_from_slice(&seq.to_le_bytes());
        a.send(r(2), Bytes::from(message)).unwrap();
    }
    for expected in 0..COUNT {
        let (_, message) = recv(&mut b_in).await;
        let seq = u32::from_le_bytes(message[..4].try_into().unwrap());
        assert_eq!(seq, expected, "messages out of order");
        assert_eq!(message.len(), if seq % 97 == 0 { 10_000 } else { 40 });
    }
    assert_eq!(a.stats().peer(r(2)).unwrap().dropped, 0);
}

#[tokio::test]
async fn dead_peer_queue_stays_bounded_while_others_flow() {
    // Replica 3 is configured but silent: its address is a socket nobody reads.
    let ids = [r(1), r(2), r(3)];
    let (_, identities) = generate_in_memory(&ids).unwrap();
    let sockets = [bind_local(), bind_local(), bind_local()];
    let addrs: BTreeMap<ReplicaId, SocketAddr> = ids
        .iter()
        .zip(&sockets)
        .map(|(id, s)| (*id, s.local_addr().unwrap()))
        .collect();
    let [s1, s2, _black_hole] = sockets;
    let mut c1 = test_config(identities[0].clone(), peers_of(r(1), &addrs));
    c1.send_queue_messages = 64;
    let (a, _a_in) = QuicTransport::start(c1, s1).unwrap();
    let (_b, mut b_in) = QuicTransport::start(
        test_config(identities[1].clone(), peers_of(r(2), &addrs)),
        s2,
    )
    .unwrap();

    let mut refused = 0;
    for round in 0..20u32 {
        for i in 0..50u32 {
            let seq = round * 50 + i;
            if let Err(e) = a.send(r(3), Bytes::from(seq.to_le_bytes().to_vec())) {
                assert_eq!(e, SendError::QueueFull { peer: r(3) });
                refused += 1;
            }
            a.send(r(2), Bytes::from(seq.to_le_bytes().to_vec()))
                .unwrap();
        }
        for i in 0..50u32 {
            let (_, message) = recv(&mut b_in).await;
            assert_eq!(message.as_ref(), &(round * 50 + i).to_le_bytes());
        }
        let dead = a.stats().peer(r(3)).cloned().unwrap();
        assert!(
            dead.queued <= 64,
            "dead peer's queue grew to {}",
            dead.queued
        );
        assert!(!dead.connected);
    }
    let stats = a.stats();
    let dead = stats.peer(r(3)).unwrap();
    assert_eq!(refused, 1000 - 64);
    assert_eq!(dead.dropped, refused);
    assert_eq!(dead.queued, 64);
    assert_eq!(stats.peer(r(2)).unwrap().sent, 1000);
}

#[tokio::test]
async fn byte_limit_bounds_the_queue_too() {
    let Cluster { mut nodes, .. } = start_cluster(2, |c| {
        c.max_message_size = 1024;
        c.send_queue_bytes = 4096;
    });
    // With replica 2 stopped nothing drains replica 1's queue, so only the
    // byte limit (4 x 1 KiB) decides what is queued.
    let (b, _b_in) = nodes.pop().unwrap();
    b.shutdown().await;
    let (a, _a_in) = nodes.pop().unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut accepted = 0;
    for _ in 0..10 {
        if a.send(r(2), Bytes::from(vec![0; 1024])).is_ok() {
            accepted += 1;
        }
    }
    assert_eq!(
        accepted, 4,
        "the 4 KiB byte limit admits exactly four 1 KiB messages"
    );
    let stats = a.stats();
    assert_eq!(stats.peer(r(2)).unwrap().queued_bytes, 4096);
    assert_eq!(stats.peer(r(2)).unwrap().dropped, 6);
}

#[tokio::test]
async fn reconnects_after_either_peer_restarts() {
    let Cluster {
        identities,
        addrs,
        mut nodes,
    } = start_cluster(2, |_| {});
    let (b, mut b_in) = nodes.pop().unwrap();
    let (a, mut a_in) = nodes.pop().unwrap();
    send_until_received(&a, r(2), &mut b_in, b"before").await;

    // Restart the acceptor (2): the dialer must notice and redial.
    b.shutdown().await;
    drop((b, b_in));
    let socket = rebind(addrs[&r(2)]).await;
    let (b, mut b_in) = QuicTransport::start(
        test_config(identities[1].clone(), peers_of(r(2), &addrs)),
        socket,
    )
    .unwrap();
    send_until_received(&a, r(2), &mut b_in, b"after acceptor restart").await;
    send_until_received(&b, r(1), &mut a_in, b"reply from restarted acceptor").await;

    // Restart the dialer (1): the acceptor must take the new connection.
    a.shutdown().await;
    drop((a, a_in));
    let socket = rebind(addrs[&r(1)]).await;
    let (a, mut a_in) = QuicTransport::start(
        test_config(identities[0].clone(), peers_of(r(1), &addrs)),
        socket,
    )
    .unwrap();
    send_until_received(&a, r(2), &mut b_in, b"after dialer restart").await;
    send_until_received(&b, r(1), &mut a_in, b"reply to restarted dialer").await;
    assert!(b.stats().peer(r(1)).unwrap().connections >= 2);
}

/// A UDP relay between one client and `target` that can be switched to a
/// black hole, to make a peer vanish without its close reaching anyone (as
/// when a process is killed).
struct Relay {
    front: SocketAddr,
    black_hole: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(target: SocketAddr) -> Relay {
        let front = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let back = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let black_hole = Arc::new(AtomicBool::new(false));
        let front_addr = front.local_addr().unwrap();
        let cut = black_hole.clone();
        let task = tokio::spawn(async move {
            let (mut up, mut down) = (vec![0u8; 65536], vec![0u8; 65536]);
            let mut client = None;
            loop {
                tokio::select! {
                    Ok((n, from)) = front.recv_from(&mut up) => {
                        client = Some(from);
                        if !cut.load(Ordering::Relaxed) {
                            let _ = back.send_to(&up[..n], target).await;
                        }
                    }
                    Ok((n, _)) = back.recv_from(&mut down) => {
                        if let (Some(client), false) = (client, cut.load(Ordering::Relaxed)) {
                            let _ = front.send_to(&down[..n], client).await;
                        }
                    }
                }
            }
        });
        Relay {
            front: front_addr,
            black_hole,
            task,
        }
    }
}

#[tokio::test]
async fn killed_peer_is_detected_at_once_by_stateless_reset() {
    // Replica 1 reaches replica 2 through a relay. Replica 2 "dies" silently
    // (its close is swallowed) and restarts on the same port with the same
    // key. The idle timeout is 30 s, so a reconnect within the 10 s WAIT can
    // only come from the restarted endpoint's stateless reset, which works
    // because the reset key is derived from the node's private key.
    let (_, identities) = generate_in_memory(&[r(1), r(2)]).unwrap();
    let (s1, s2) = (bind_local(), bind_local());
    let (a1, a2) = (s1.local_addr().unwrap(), s2.local_addr().unwrap());
    let relay = Relay::start(a2).await;
    let slow_idle = |identity: &NodeIdentity, peer, addr| {
        let mut config = test_config(identity.clone(), [(peer, addr)].into());
        config.idle_timeout = Duration::from_secs(30);
        config
    };
    let (a, _a_in) =
        QuicTransport::start(slow_idle(&identities[0], r(2), relay.front), s1).unwrap();
    let (b, mut b_in) = QuicTransport::start(slow_idle(&identities[1], r(1), a1), s2).unwrap();
    send_until_received(&a, r(2), &mut b_in, b"before").await;

    relay.black_hole.store(true, Ordering::Relaxed);
    b.shutdown().await;
    drop((b, b_in));
    let socket = rebind(a2).await;
    let (_b, mut b_in) = QuicTransport::start(slow_idle(&identities[1], r(1), a1), socket).unwrap();
    relay.black_hole.store(false, Ordering::Relaxed);
    send_until_received(&a, r(2), &mut b_in, b"after a silent crash").await;
    assert!(a.stats().peer(r(2)).unwrap().connections >= 2);
    relay.task.abort();
}

#[tokio::test]
async fn good_certificates_are_accepted_on_the_raw_path() {
    // Positive control for the rejection tests below: the same raw client,
    // honest this time, gets its message through.
    let Cluster {
        identities,
        addrs,
        mut nodes,
    } = start_cluster(2, |_| {});
    let (b, mut b_in) = nodes.pop().unwrap();
    drop(nodes); // Replica 1's own transport would compete for the slot.
    let mut frame = BytesMut::new();
    frame::encode_frame(&mut frame, 0, b"honest", false);
    let _connection = dial_raw(&identities[0], addrs[&r(2)], r(2), r(1), &frame)
        .await
        .unwrap();
    assert_eq!(recv(&mut b_in).await, (r(1), Bytes::from_static(b"honest")));
    assert_eq!(b.stats().rejected_connections, 0);
}

#[tokio::test]
async fn wrong_ca_is_rejected_in_both_directions() {
    // Replicas 1 and 2 from different clusters cannot talk.
    let (_, cluster_a) = generate_in_memory(&[r(1), r(2)]).unwrap();
    let (_, cluster_b) = generate_in_memory(&[r(1), r(2)]).unwrap();
    let (s1, s2) = (bind_local(), bind_local());
    let addrs: BTreeMap<ReplicaId, SocketAddr> = [
        (r(1), s1.local_addr().unwrap()),
        (r(2), s2.local_addr().unwrap()),
    ]
    .into();
    let (a, mut a_in) = QuicTransport::start(
        test_config(cluster_a[0].clone(), peers_of(r(1), &addrs)),
        s1,
    )
    .unwrap();
    let (b, mut b_in) = QuicTransport::start(
        test_config(cluster_b[1].clone(), peers_of(r(2), &addrs)),
        s2,
    )
    .unwrap();
    let _ = a.send(r(2), Bytes::from_static(b"from a"));
    let _ = b.send(r(1), Bytes::from_static(b"from b"));
    eventually("both sides reject", || {
        a.stats().rejected_connections >= 1 && b.stats().rejected_connections >= 1
    })
    .await;

    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(a_in.try_recv().is_err(), "a message crossed clusters");
    assert!(b_in.try_recv().is_err(), "a message crossed clusters");
    assert_eq!(a.stats().peer(r(2)).unwrap().received, 0);
    assert_eq!(b.stats().peer(r(1)).unwrap().received, 0);
}

#[tokio::test]
async fn client_certificate_from_another_ca_is_rejected_by_the_server() {
    let Cluster {
        identities,
        addrs,
        mut nodes,
    } = start_cluster(2, |_| {});
    let (b, mut b_in) = nodes.pop().unwrap();
    drop(nodes);
    let (_, foreign) = generate_in_memory(&[r(1)]).unwrap();
    // Foreign certificate and key, but trusting our CA so the client side
    // of the handshake succeeds: only the server's check can stop it.
    let impostor = NodeIdentity {
        id: r(1),
        cert_chain: foreign[0].cert_chain.clone(),
        key: foreign[0].key.clone_key(),
        ca: identities[0].ca.clone(),
    };
    let mut frame = BytesMut::new();
    frame::encode_frame(&mut frame, 0, b"sneaky", false);
    let _ = dial_raw(&impostor, addrs[&r(2)], r(2), r(1), &frame).await;
    eventually("server rejects the foreign client certificate", || {
        b.stats().rejected_connections >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(b_in.try_recv().is_err());
}

#[tokio::test]
async fn server_with_the_wrong_id_is_rejected_by_the_dialer() {
    // Replica 1 expects replica 2 at an address where replica 3 (same CA)
    // listens.
    let (_, identities) = generate_in_memory(&[r(1), r(2), r(3)]).unwrap();
    let (s1, s3) = (bind_local(), bind_local());
    let (a1, a3) = (s1.local_addr().unwrap(), s3.local_addr().unwrap());
    let (a, _a_in) =
        QuicTransport::start(test_config(identities[0].clone(), [(r(2), a3)].into()), s1).unwrap();
    let (c, mut c_in) =
        QuicTransport::start(test_config(identities[2].clone(), [(r(1), a1)].into()), s3).unwrap();
    let _ = a.send(r(2), Bytes::from_static(b"for 2 only"));
    eventually("dialer rejects the wrong server", || {
        a.stats().rejected_connections >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        c_in.try_recv().is_err(),
        "replica 3 received a message meant for 2"
    );
    assert!(!a.stats().peer(r(2)).unwrap().connected);
    assert_eq!(c.stats().peer(r(1)).unwrap().received, 0);
}

#[tokio::test]
async fn client_claiming_another_id_is_rejected_by_the_acceptor() {
    let Cluster {
        identities,
        addrs,
        mut nodes,
    } = start_cluster(3, |_| {});
    let (c, mut c_in) = nodes.pop().unwrap();
    drop(nodes);
    let mut frame = BytesMut::new();
    frame::encode_frame(&mut frame, 0, b"forged", false);
    // Replica 2's valid certificate, but a hello claiming to be replica 1.
    let connection = dial_raw(&identities[1], addrs[&r(3)], r(3), r(1), &frame)
        .await
        .unwrap();
    let reason = timeout(WAIT, connection.closed()).await.unwrap();
    assert!(
        reason.to_string().contains("certificate does not name"),
        "{reason}"
    );
    // A hello claiming an id that is not a peer at all.
    let connection = dial_raw(&identities[1], addrs[&r(3)], r(3), r(7), &frame)
        .await
        .unwrap();
    let reason = timeout(WAIT, connection.closed()).await.unwrap();
    assert!(reason.to_string().contains("not a peer"), "{reason}");
    assert!(c.stats().rejected_connections >= 2);
    assert!(c_in.try_recv().is_err(), "a forged message was delivered");
}

#[tokio::test]
async fn malformed_frames_close_the_connection_and_the_node_recovers() {
    let Cluster {
        identities,
        addrs,
        mut nodes,
    } = start_cluster(2, |c| c.max_message_size = 1024);
    let (b, mut b_in) = nodes.pop().unwrap();
    drop(nodes);
    let oversized = FrameHeader {
        magic: FRAME_MAGIC,
        version: FRAME_VERSION,
        flags: 0,
        length: 2048u32.into(),
        crc32c: 0u32.into(),
    };
    let bad_version = FrameHeader {
        version: 9,
        length: 0u32.into(),
        ..oversized
    };
    let mut truncated = BytesMut::new();
    frame::encode_frame(&mut truncated, 0, b"cut short", false);
    truncated.truncate(truncated.len() - 3);
    let cases: [(&str, Vec<u8>); 4] = [
        ("bad magic", b"GET / HTTP/1.1\r\n".to_vec()),
        ("oversized", oversized.as_bytes().to_vec()),
        ("bad version", bad_version.as_bytes().to_vec()),
        ("truncated", truncated.to_vec()),
    ];
    for (i, (name, bytes)) in cases.iter().enumerate() {
        let connection = dial_raw(&identities[0], addrs[&r(2)], r(2), r(1), bytes)
            .await
            .unwrap();
        let reason = timeout(WAIT, connection.closed()).await.unwrap();
        assert!(reason.to_string().contains("bad frame"), "{name}: {reason}");
        assert_eq!(b.stats().frame_errors, i as u64 + 1, "{name}");
    }
    assert!(b_in.try_recv().is_err());
    // The node still serves an honest peer.
    let mut frame = BytesMut::new();
    frame::encode_frame(&mut frame, 0, b"fine", false);
    let _connection = dial_raw(&identities[0], addrs[&r(2)], r(2), r(1), &frame)
        .await
        .unwrap();
    assert_eq!(recv(&mut b_in).await, (r(1), Bytes::from_static(b"fine")));
}

#[tokio::test]
async fn inconsistent_configurations_are_refused() {
    let (_, identities) = generate_in_memory(&[r(1), r(2)]).unwrap();
    let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let mut config = test_config(identities[0].clone(), [(r(2), addr)].into());
    config.local_id = r(2);
    assert!(matches!(
        QuicTransport::start(config, bind_local()),
        Err(NetError::Config(_))
    ));
    let config = test_config(identities[0].clone(), [(r(1), addr)].into());
    assert!(matches!(
        QuicTransport::start(config, bind_local()),
        Err(NetError::Config(_))
    ));
    let mut config = test_config(identities[0].clone(), [(r(2), addr)].into());
    config.max_message_size = usize::MAX;
    assert!(matches!(
        QuicTransport::start(config, bind_local()),
        Err(NetError::Config(_))
    ));
    let mut config = test_config(identities[0].clone(), [(r(2), addr)].into());
    config.send_queue_bytes = 10;
    assert!(matches!(
        QuicTransport::start(config, bind_local()),
        Err(NetError::Config(_))
    ));
    let mut config = test_config(identities[0].clone(), [(r(2), addr)].into());
    config.max_udp_payload = 1199;
    assert!(matches!(
        QuicTransport::start(config, bind_local()),
        Err(NetError::Config(m)) if m.contains("max_udp_payload")
    ));
}

#[tokio::test]
async fn fault_layer_partitions_and_heals_a_quic_cluster() {
    use crate::{FaultCommand, FaultyTransport};
    let Cluster { nodes, .. } = start_cluster(3, |_| {});
    let (mut nets, mut inbox, mut faults) = (Vec::new(), Vec::new(), Vec::new());
    for (seed, (transport, inbound)) in nodes.into_iter().enumerate() {
        let (net, inbound, handle) = FaultyTransport::wrap(transport, inbound, seed as u64);
        nets.push(net);
        inbox.push(inbound);
        faults.push(handle);
    }
    // Let every link come up.
    for i in 0..3 {
        for j in (0..3).filter(|&j| j != i) {
            send_until_received(&nets[i], nets[j].local_id(), &mut inbox[j], b"up").await;
        }
    }
    drain_late_copies(&mut inbox).await;
    // Isolate replica 3, from its own side only: both directions are cut.
    faults[2].set_partition([r(1), r(2)]);
    nets[0].send(r(3), Bytes::from_static(b"to 3")).unwrap();
    nets[2].send(r(1), Bytes::from_static(b"from 3")).unwrap();
    nets[0].send(r(2), Bytes::from_static(b"1 to 2")).unwrap();
    assert_eq!(
        recv(&mut inbox[1]).await,
        (r(1), Bytes::from_static(b"1 to 2"))
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(inbox[2].try_recv().is_err(), "partitioned replica received");
    assert!(
        inbox[0].try_recv().is_err(),
        "partitioned replica's message arrived"
    );
    assert_eq!(faults[2].stats().dropped_partition, 2);

    // Heal: traffic flows again over the same connections.
    faults[2].apply(&FaultCommand::parse("heal").unwrap());
    nets[0].send(r(3), Bytes::from_static(b"healed")).unwrap();
    assert_eq!(
        recv(&mut inbox[2]).await,
        (r(1), Bytes::from_static(b"healed"))
    );

    // Lossy link: with a 50% drop rate some, not all, of 200 messages arrive,
    // and the survivors arrive in order.
    faults[0].set_drop_rate(0.5);
    for i in 0..200u32 {
        nets[0]
            .send(r(2), Bytes::from(i.to_le_bytes().to_vec()))
            .unwrap();
    }
    let dropped = faults[0].stats().dropped_random;
    assert!(
        (40..160).contains(&dropped),
        "dropped {dropped} of 200 at p = 0.5"
    );
    let mut last = None;
    for _ in 0..(200 - dropped) {
        let (from, message) = recv(&mut inbox[1]).await;
        assert_eq!(from, r(1));
        let seq = u32::from_le_bytes(message[..].try_into().unwrap());
        assert!(
            last.is_none_or(|last| seq > last),
            "reordered: {seq} after {last:?}"
        );
        last = Some(seq);
    }
}

#[tokio::test]
async fn peers_can_be_added_and_removed_at_run_time() {
    let (_, identities) = generate_in_memory(&[r(1), r(2), r(3)]).unwrap();
    let sockets = [bind_local(), bind_local(), bind_local()];
    let addrs: BTreeMap<ReplicaId, SocketAddr> = [r(1), r(2), r(3)]
        .into_iter()
        .zip(sockets.iter().map(|s| s.local_addr().unwrap()))
        .collect();
    let [s1, s2, s3] = sockets;
    // 1 and 2 start as a pair; 3 joins later, knowing both.
    let (a, mut a_in) = QuicTransport::start(
        test_config(identities[0].clone(), [(r(2), addrs[&r(2)])].into()),
        s1,
    )
    .unwrap();
    let (b, mut b_in) = QuicTransport::start(
        test_config(identities[1].clone(), [(r(1), addrs[&r(1)])].into()),
        s2,
    )
    .unwrap();
    send_until_received(&a, r(2), &mut b_in, b"pair").await;
    assert_eq!(
        a.send(r(3), Bytes::new()),
        Err(SendError::UnknownPeer(r(3)))
    );

    let (c, mut c_in) = QuicTransport::start(
        test_config(identities[2].clone(), peers_of(r(3), &addrs)),
        s3,
    )
    .unwrap();
    a.add_peer(r(3), addrs[&r(3)]).unwrap();
    b.add_peer(r(3), addrs[&r(3)]).unwrap();
    assert!(matches!(
        a.add_peer(r(3), addrs[&r(3)]),
        Err(NetError::Config(_))
    ));
    assert!(matches!(
        a.add_peer(r(1), addrs[&r(1)]),
        Err(NetError::Config(_))
    ));
    send_until_received(&a, r(3), &mut c_in, b"1 to new 3").await;
    send_until_received(&c, r(2), &mut b_in, b"new 3 to 2").await;
    send_until_received(&c, r(1), &mut a_in, b"new 3 to 1").await;

    drain_late_copies(std::slice::from_mut(&mut c_in)).await;
    // 3 removes 1: no more traffic either way, and 1's redials are refused.
    assert!(c.remove_peer(r(1)));
    assert!(!c.remove_peer(r(1)));
    assert_eq!(
        c.send(r(1), Bytes::new()),
        Err(SendError::UnknownPeer(r(1)))
    );
    assert_eq!(c.peers(), vec![r(2)]);
    eventually("1 sees its connection to 3 drop", || {
        !a.stats().peer(r(3)).unwrap().connected
    })
    .await;
    let rejected_before = c.stats().rejected_connections;
    let _ = a.send(r(3), Bytes::from_static(b"after removal"));
    eventually("3 refuses 1's redial", || {
        c.stats().rejected_connections > rejected_before
    })
    .await;
    assert!(
        c_in.try_recv().is_err(),
        "a removed peer's message was delivered"
    );
    // 1 keeps redialling, but with backoff (20 ms doubling to 200 ms here),
    // not in a tight loop: about 1 s / 200 ms + the ramp, far below what
    // back-to-back handshakes would produce.
    let before = c.stats().rejected_connections;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let redials = c.stats().rejected_connections - before;
    assert!(
        redials <= 15,
        "{redials} refused redials in 1 s: no backoff"
    );
    // 3 and 2 still talk.
    send_until_received(&c, r(2), &mut b_in, b"still here").await;
}
