//! In-process cluster tests: three replica drivers over paxos-net's
//! in-memory transport and in-memory storage, exercising the embedding API
//! (replicate, read, status, relinquish_primary) and the RESP server
//! (pipelining, redirects, isolation of bad clients).

use bytes::{Bytes, BytesMut};
use paxos_core::batch::BatchLimits;
use paxos_core::{DurableState, Membership, ReplicaId, Slot};
use paxos_kv::client::{moved_to, Client};
use paxos_kv::kv::{encode_command, KvStore};
use paxos_kv::memstore::MemoryStorage;
use paxos_kv::node::{self, DriverParts, Replica, ReplicateError};
use paxos_kv::resp::{self, Frame, RespLimits};
use paxos_kv::server::{self, ServerConfig};
use paxos_kv::stages::StageRecorder;
use paxos_net::fault::{FaultHandle, FaultyTransport};
use paxos_net::MemoryNetwork;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn request(parts: &[&str]) -> Bytes {
    let args: Vec<Bytes> = parts
        .iter()
        .map(|p| Bytes::copy_from_slice(p.as_bytes()))
        .collect();
    let mut out = BytesMut::new();
    encode_command(&args, &mut out).unwrap();
    out.freeze()
}

async fn start_cluster(n: u32) -> Vec<Replica> {
    let net = MemoryNetwork::new(4096, 8 << 20);
    let ids: Vec<ReplicaId> = (1..=n).map(ReplicaId).collect();
    let mut replicas = Vec::new();
    for &id in &ids {
        let (transport, inbound) = net.join(id);
        let mut core = paxos_core::Config::new(id, Membership::with_voters(ids.clone()));
        core.heartbeat_interval_us = 20_000;
        core.election_timeout_min_us = 100_000;
        core.election_timeout_max_us = 200_000;
        let limits = BatchLimits {
            max_requests: 256,
            max_bytes: 256 * 1024,
        };
        core.batch_limits = limits;
        core.pipeline_window = 8;
        let mut config = paxos_node::NodeConfig::new(core);
        config.seed = u64::from(id.0) * 7919;
        config.boot_nonce = config.seed;
        let parts = DriverParts {
            node: config,
            recovery: paxos_node::Recovery {
                durable: DurableState::default(),
                state_machine: KvStore::new(),
                checkpoint: None,
                damaged: false,
            },
            storage: Arc::new(MemoryStorage::new()),
            transport: Arc::new(transport),
            inbound,
            checkpoints: None,
            submit_queue: 1024,
            stages: Arc::new(StageRecorder::new(true)),
            reload_durable: None,
        };
        let (replica, _join) = node::start(parts, None).unwrap();
        replicas.push(replica);
    }
    replicas
}

async fn wait_for_primary(replicas: &[Replica]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(i) = replicas.iter().position(|r| r.is_primary()) {
            return i;
        }
        assert!(Instant::now() < deadline, "no primary elected");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicate_read_redirect_and_relinquish() {
    let replicas = start_cluster(3).await;
    let p = wait_for_primary(&replicas).await;
    let leader = &replicas[p];
    assert_eq!(
        &leader.replicate(request(&["SET", "a", "1"])).await.unwrap()[..],
        b"+OK\r\n"
    );
    assert_eq!(
        &leader.read(request(&["GET", "a"])).await.unwrap()[..],
        b"$1\r\n1\r\n"
    );

    // A follower refuses without proposing and names the leader.
    let f = (p + 1) % 3;
    let err = replicas[f]
        .replicate(request(&["SET", "a", "2"]))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        ReplicateError::NotPrimary {
            leader: Some(ReplicaId(p as u32 + 1))
        }
    );

    // Many concurrent increments: each completes exactly once with a distinct value.
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let r = leader.clone();
        tasks.push(tokio::spawn(async move {
            r.replicate(request(&["INCR", "n"])).await
        }));
    }
    let mut seen = Vec::new();
    for t in tasks {
        let reply = t.await.unwrap().unwrap();
        let text = std::str::from_utf8(&reply).unwrap();
        seen.push(
            text.trim_start_matches(':')
                .trim_end()
                .parse::<i64>()
                .unwrap(),
        );
    }
    seen.sort_unstable();
    assert_eq!(seen, (1..=200).collect::<Vec<_>>());
    let status = leader.status();
    assert!(
        status.proposed_batches < 200,
        "concurrent requests were batched: {status:?}"
    );

    // Followers apply the same decrees.
    let target = leader.status().applied_index;
    let deadline = Instant::now() + Duration::from_secs(5);
    while replicas.iter().any(|r| r.status().applied_index < target) {
        assert!(Instant::now() < deadline, "followers did not catch up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Hand leadership over; the old leader stops accepting.
    leader.relinquish_primary().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let new_p = loop {
        if let Some(i) = replicas.iter().position(|r| r.is_primary()) {
            if i != p {
                break i;
            }
        }
        assert!(Instant::now() < deadline, "leadership was not handed over");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(
        &replicas[new_p].read(request(&["GET", "n"])).await.unwrap()[..],
        b"$3\r\n200\r\n"
    );
    assert!(matches!(
        leader.replicate(request(&["SET", "x", "1"])).await,
        Err(ReplicateError::NotPrimary { .. })
    ));
    for r in &replicas {
        r.shutdown().await;
    }
}

async fn start_server(replica: Replica, members: Vec<(ReplicaId, String)>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = ServerConfig {
        limits: RespLimits::default(),
        max_clients: 8,
        max_pipelined: 64,
        members,
        clients: server::ClientLimits::default(),
    };
    tokio::spawn(server::serve(listener, replica, config));
    addr
}

async fn read_frames(stream: &mut tokio::net::TcpStream, n: usize) -> Vec<Frame> {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let limits = RespLimits::default();
    while frames.len() < n {
        while let Some(f) = resp::parse(&mut buf, &limits).unwrap() {
            frames.push(f);
        }
        if frames.len() >= n {
            break;
        }
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_buf(&mut buf))
            .await
            .unwrap()
            .unwrap();
        if read == 0 {
            break;
        }
    }
    frames
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp_server_pipelines_redirects_and_isolates_bad_clients() {
    let replicas = start_cluster(3).await;
    let p = wait_for_primary(&replicas).await;
    let f = (p + 1) % 3;
    let follower_addr = "127.0.0.1:1".to_string();
    let mut members: Vec<(ReplicaId, String)> = Vec::new();
    let leader_addr = start_server(replicas[p].clone(), Vec::new()).await;
    members.push((ReplicaId(p as u32 + 1), leader_addr.to_string()));
    members.push((ReplicaId(f as u32 + 1), follower_addr));
    let follower_server = start_server(replicas[f].clone(), members).await;

    // 100 pipelined commands in one write come back in order.
    let mut s = tokio::net::TcpStream::connect(leader_addr).await.unwrap();
    let mut wire = BytesMut::new();
    for i in 0..100 {
        let v = i.to_string();
        resp::encode_command([&b"SET"[..], b"p", v.as_bytes()].into_iter(), &mut wire);
        resp::encode_command([&b"GET"[..], b"p"].into_iter(), &mut wire);
    }
    resp::encode_command([&b"NOSUCH"[..]].into_iter(), &mut wire);
    resp::encode_command([&b"PING"[..]].into_iter(), &mut wire);
    s.write_all(&wire).await.unwrap();
    let frames = read_frames(&mut s, 202).await;
    assert_eq!(frames.len(), 202);
    for i in 0..100 {
        assert_eq!(frames[2 * i], Frame::Simple(Bytes::from_static(b"OK")));
        assert_eq!(
            frames[2 * i + 1],
            Frame::Bulk(Some(Bytes::from(i.to_string()))),
            "read your write, in order"
        );
    }
    assert!(matches!(&frames[200], Frame::Error(e) if e.starts_with(b"ERR unknown command")));
    assert_eq!(
        frames[201],
        Frame::Simple(Bytes::from_static(b"PONG")),
        "a bad command does not end the connection"
    );

    // Broken framing: an error, then that connection (only) is closed.
    let mut bad = tokio::net::TcpStream::connect(leader_addr).await.unwrap();
    bad.write_all(b"*1\r\n$abc\r\n").await.unwrap();
    let frames = read_frames(&mut bad, 2).await;
    assert_eq!(frames.len(), 1, "closed after the error");
    assert!(matches!(&frames[0], Frame::Error(e) if e.starts_with(b"Protocol error")));
    let mut good = Client::connect(leader_addr, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        good.cmd(&[b"GET", b"p"]).await.unwrap(),
        Frame::Bulk(Some(Bytes::from_static(b"99")))
    );

    // The follower redirects writes and reads to the leader's client address.
    let mut c = Client::connect(follower_server, Duration::from_secs(5))
        .await
        .unwrap();
    let reply = c.cmd(&[b"SET", b"k", b"v"]).await.unwrap();
    assert_eq!(moved_to(&reply), Some(leader_addr), "{reply:?}");
    // Pipelined: the requests of one read are refused together (as one
    // unit) and still each get their own redirect, in order, with the
    // server's own replies in between in their place.
    let mut s = tokio::net::TcpStream::connect(follower_server)
        .await
        .unwrap();
    let mut wire = BytesMut::new();
    for i in 0..150 {
        let v = i.to_string();
        resp::encode_command([&b"SET"[..], b"q", v.as_bytes()].into_iter(), &mut wire);
        resp::encode_command([&b"GET"[..], b"q"].into_iter(), &mut wire);
        if i == 70 {
            resp::encode_command([&b"PING"[..]].into_iter(), &mut wire);
        }
    }
    s.write_all(&wire).await.unwrap();
    let frames = read_frames(&mut s, 301).await;
    assert_eq!(frames.len(), 301);
    for (n, frame) in frames.iter().enumerate() {
        if n == 142 {
            assert_eq!(*frame, Frame::Simple(Bytes::from_static(b"PONG")));
        } else {
            assert_eq!(moved_to(frame), Some(leader_addr), "reply {n}: {frame:?}");
        }
    }
    let info = match c.cmd(&[b"INFO"]).await.unwrap() {
        Frame::Bulk(Some(b)) => String::from_utf8(b.to_vec()).unwrap(),
        other => panic!("INFO reply {other:?}"),
    };
    assert!(info.contains("role:follower"), "{info}");
    assert!(
        info.contains(&format!("leader_addr:{leader_addr}")),
        "{info}"
    );
    for r in &replicas {
        r.shutdown().await;
    }
}

/// Starts one driver with checkpoints in `dir`, compacting right up to each
/// checkpoint, so a replica that missed those decrees needs a transfer.
fn start_checkpointing_replica(
    net: &MemoryNetwork,
    id: ReplicaId,
    ids: &[ReplicaId],
    dir: &std::path::Path,
) -> Replica {
    let (transport, inbound) = net.join(id);
    start_checkpointing_replica_on(Arc::new(transport), inbound, id, ids, dir, None)
}

/// [`start_checkpointing_replica`] behind a fault-injecting transport.
fn start_faulty_checkpointing_replica(
    net: &MemoryNetwork,
    id: ReplicaId,
    ids: &[ReplicaId],
    dir: &std::path::Path,
) -> (Replica, FaultHandle) {
    let (transport, inbound) = net.join(id);
    let (faulty, inbound, handle) = FaultyTransport::wrap(transport, inbound, u64::from(id.0));
    let replica = start_checkpointing_replica_on(Arc::new(faulty), inbound, id, ids, dir, None);
    (replica, handle)
}

/// `file_log`: keep the log in a paxos-log `FileLog` there, and take no
/// checkpoints (so storage keeps every decree the core lets go of);
/// otherwise in memory, checkpointing every 20 decrees.
fn start_checkpointing_replica_on(
    transport: Arc<dyn paxos_net::Transport>,
    inbound: paxos_net::Inbound,
    id: ReplicaId,
    ids: &[ReplicaId],
    dir: &std::path::Path,
    file_log: Option<&std::path::Path>,
) -> Replica {
    let mut core = paxos_core::Config::new(id, Membership::with_voters(ids.to_vec()));
    core.heartbeat_interval_us = 20_000;
    core.election_timeout_min_us = 100_000;
    core.election_timeout_max_us = 200_000;
    core.retain_decrees = 8;
    core.catchup_chunk_decrees = 8;
    let limits = BatchLimits {
        max_requests: 16,
        max_bytes: 64 * 1024,
    };
    core.batch_limits = limits;
    core.pipeline_window = 4;
    let (storage, reload): (Arc<dyn paxos_log::ReplicaStorage>, node::DurableReloader) =
        match file_log {
            Some(log_dir) => {
                let (log, _) =
                    paxos_log::FileLog::open(log_dir, paxos_log::LogOptions::default()).unwrap();
                let log = Arc::new(log);
                let reload_from = Arc::clone(&log);
                let reload: node::DurableReloader = Arc::new(move || {
                    reload_from.sync_queued()?;
                    Ok(reload_from.state())
                });
                (log, reload)
            }
            None => {
                let storage = Arc::new(MemoryStorage::new());
                let reload_from = Arc::clone(&storage);
                (storage, Arc::new(move || Ok(reload_from.state())))
            }
        };
    let mut config = paxos_node::NodeConfig::new(core);
    config.checkpoint_every = if file_log.is_some() { 0 } else { 20 };
    config.compact_retain = 0;
    config.seed = u64::from(id.0) * 31;
    config.boot_nonce = config.seed;
    let parts = DriverParts {
        node: config,
        recovery: paxos_node::Recovery {
            durable: DurableState::default(),
            state_machine: KvStore::new(),
            checkpoint: None,
            damaged: false,
        },
        storage,
        transport,
        inbound,
        checkpoints: Some(paxos_node::storage::open_checkpoints(dir).unwrap()),
        submit_queue: 1024,
        stages: Arc::new(StageRecorder::new(false)),
        reload_durable: Some(reload),
    };
    node::start(parts, None).unwrap().0
}

/// Writes `SET k<i % keys> value(i)` through `replicas[p]`, at least
/// `min_writes` times and until every replica took a checkpoint past slot
/// 100 (a checkpoint is triggered by applies, so keep applying until then).
async fn write_until_checkpointed(
    replicas: &[Replica],
    p: usize,
    min_writes: u64,
    keys: u64,
    value: impl Fn(u64) -> String,
    within_secs: u64,
) {
    let deadline = Instant::now() + Duration::from_secs(within_secs);
    let mut i = 0u64;
    while i < min_writes
        || replicas
            .iter()
            .any(|r| r.status().checkpoint_slot < Slot(100))
    {
        assert!(
            Instant::now() < deadline,
            "no checkpoints taken: {:?}",
            replicas[p].status()
        );
        replicas[p]
            .replicate(request(&["SET", &format!("k{}", i % keys), &value(i)]))
            .await
            .unwrap();
        i += 1;
    }
}

/// Waits until `replica` applied through `target`, failing with `what`.
async fn wait_applied(replica: &Replica, target: Slot, within_secs: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(within_secs);
    while replica.status().applied_index < target {
        assert!(Instant::now() < deadline, "{what}: {:?}", replica.status());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A write through `primary` reaches `follower` too.
async fn follows_new_writes(primary: &Replica, follower: &Replica) {
    primary
        .replicate(request(&["SET", "after", "1"]))
        .await
        .unwrap();
    let target = primary.status().applied_index;
    wait_applied(follower, target, 10, "the replica stopped following").await;
}

/// A three-replica cluster's data dirs, network and ids, with replicas 1
/// and 2 started (checkpointing often) and replica 3 left for the test to
/// start behind them.
fn start_two_of_three() -> (
    Vec<tempfile::TempDir>,
    MemoryNetwork,
    Vec<ReplicaId>,
    Vec<Replica>,
) {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let net = MemoryNetwork::new(4096, 8 << 20);
    let ids = vec![ReplicaId(1), ReplicaId(2), ReplicaId(3)];
    let replicas = (0..2)
        .map(|i| start_checkpointing_replica(&net, ids[i], &ids, dirs[i].path()))
        .collect();
    (dirs, net, ids, replicas)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_behind_every_peers_log_installs_a_checkpoint_from_a_peer() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("paxos_kv=info")
        .with_test_writer()
        .try_init();
    // Two replicas make progress without the third.
    let (dirs, net, ids, mut replicas) = start_two_of_three();
    let p = wait_for_primary(&replicas).await;
    write_until_checkpointed(&replicas, p, 300, 50, |i| i.to_string(), 20).await;
    // The third starts empty: its peers compacted the early decrees away.
    replicas.push(start_checkpointing_replica(
        &net,
        ids[2],
        &ids,
        dirs[2].path(),
    ));
    let target = replicas[p].status().applied_index;
    wait_applied(&replicas[2], target, 20, "third replica did not catch up").await;
    assert!(
        replicas[2].status().checkpoint_slot > Slot::ZERO,
        "caught up through a transferred checkpoint"
    );
    // And it keeps up with new writes.
    follows_new_writes(&replicas[p], &replicas[2]).await;
    for r in &replicas {
        r.shutdown().await;
    }
}

/// A replica that fell behind its peers' in-memory logs (they keep 8
/// decrees) but not behind what their storage holds (no checkpoint
/// truncated it) catches up from the decrees its peers read back from
/// their file logs on disk, without a checkpoint transfer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_behind_the_in_memory_log_catches_up_from_a_peers_disk() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let net = MemoryNetwork::new(4096, 8 << 20);
    let ids = vec![ReplicaId(1), ReplicaId(2), ReplicaId(3)];
    let start = |i: usize| {
        let (transport, inbound) = net.join(ids[i]);
        let dir = dirs[i].path();
        let log_dir = dir.join("log");
        start_checkpointing_replica_on(
            Arc::new(transport),
            inbound,
            ids[i],
            &ids,
            &dir.join("checkpoints"),
            Some(&log_dir),
        )
    };
    let mut replicas: Vec<Replica> = (0..2).map(start).collect();
    let p = wait_for_primary(&replicas).await;
    for i in 0..200u64 {
        replicas[p]
            .replicate(request(&["SET", &format!("k{}", i % 50), &i.to_string()]))
            .await
            .unwrap();
    }
    // The third starts empty, far behind what its peers keep in memory.
    replicas.push(start(2));
    let target = replicas[p].status().applied_index;
    assert!(target >= Slot(200));
    wait_applied(&replicas[2], target, 30, "third replica did not catch up").await;
    let third = replicas[2].status();
    assert_eq!(third.checkpoints_installed, 0, "no checkpoint transfer");
    assert_eq!(third.checkpoint_slot, Slot::ZERO);
    let from_disk: u64 = replicas
        .iter()
        .map(|r| r.status().fetches_served_from_disk)
        .sum();
    // 200 decrees in chunks of at most 8, all but the last few from disk.
    assert!(from_disk >= 20, "chunks served from disk: {from_disk}");
    follows_new_writes(&replicas[p], &replicas[2]).await;
    for r in &replicas {
        r.shutdown().await;
    }
}

/// Whether `dir` holds a checkpoint being received (`*.ckpt.tmp`).
fn has_partial_checkpoint(dir: &std::path::Path) -> bool {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(".ckpt.tmp"))
        })
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_checkpoint_transfer_restarts_cleanly() {
    // Two replicas make progress without the third.
    let (dirs, net, ids, mut replicas) = start_two_of_three();
    let p = wait_for_primary(&replicas).await;
    // About 1.5 MB of state, so the checkpoint takes several chunks.
    write_until_checkpointed(&replicas, p, 400, 400, |_| "v".repeat(4096), 30).await;
    // The third starts empty, on a slow link (each message waits 150 ms),
    // so the transfer spans several round trips we can interrupt.
    let (third, faults) = start_faulty_checkpointing_replica(&net, ids[2], &ids, dirs[2].path());
    faults.set_delay(Duration::from_millis(150));
    replicas.push(third);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !has_partial_checkpoint(dirs[2].path()) {
        assert!(Instant::now() < deadline, "the transfer never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Cut it off from everyone mid-transfer, for longer than the stall
    // timeout, then heal: the transfer must start over and finish.
    faults.set_partition([ids[0], ids[1]]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        has_partial_checkpoint(dirs[2].path()),
        "the transfer finished before the partition: nothing was interrupted"
    );
    tokio::time::sleep(Duration::from_millis(2700)).await;
    faults.heal();
    faults.set_delay(Duration::ZERO);
    let target = replicas[p].status().applied_index;
    wait_applied(
        &replicas[2],
        target,
        30,
        "third replica did not catch up after the interruption",
    )
    .await;
    assert!(replicas[2].status().checkpoint_slot > Slot::ZERO);
    assert!(
        !has_partial_checkpoint(dirs[2].path()),
        "the abandoned partial checkpoint was left behind"
    );
    assert!(
        faults.stats().dropped_partition > 0,
        "the partition dropped nothing: the test did not interrupt anything"
    );
    // It follows new writes on top of the installed checkpoint.
    follows_new_writes(&replicas[p], &replicas[2]).await;
    for r in &replicas {
        r.shutdown().await;
    }
}

/// Reads skip the log, yet requests pipelined on one connection take
/// effect in the order sent: reads before a write do not see it (the write
/// waits for them), reads after it do (they go through the log behind it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_reads_and_writes_take_effect_in_the_order_sent() {
    let replicas = start_cluster(3).await;
    let p = wait_for_primary(&replicas).await;
    let addr = start_server(replicas[p].clone(), Vec::new()).await;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let value = |r: usize| Frame::Bulk((r > 0).then(|| Bytes::from((r - 1).to_string())));
    for round in 0..20usize {
        // Nothing of this connection is in flight when a round starts.
        let mut wire = BytesMut::new();
        for _ in 0..4 {
            resp::encode_command([&b"GET"[..], b"o"].into_iter(), &mut wire);
        }
        let v = round.to_string();
        resp::encode_command([&b"SET"[..], b"o", v.as_bytes()].into_iter(), &mut wire);
        resp::encode_command([&b"GET"[..], b"o"].into_iter(), &mut wire);
        s.write_all(&wire).await.unwrap();
        let frames = read_frames(&mut s, 6).await;
        for f in &frames[..4] {
            assert_eq!(*f, value(round), "round {round}: a read saw a later write");
        }
        assert_eq!(frames[4], Frame::Simple(Bytes::from_static(b"OK")));
        assert_eq!(
            frames[5],
            value(round + 1),
            "round {round}: read your write"
        );
    }
    // A pipeline that interleaves writes and reads: every read sees the
    // writes sent before it and none after it, and no read is proposed
    // (each rides in a batch of writes instead).
    let before = replicas[p].status();
    let mut wire = BytesMut::new();
    for i in 0..30usize {
        let v = (100 + i).to_string();
        resp::encode_command([&b"SET"[..], b"o", v.as_bytes()].into_iter(), &mut wire);
        resp::encode_command([&b"GET"[..], b"o"].into_iter(), &mut wire);
        resp::encode_command([&b"GET"[..], b"o"].into_iter(), &mut wire);
    }
    s.write_all(&wire).await.unwrap();
    let frames = read_frames(&mut s, 90).await;
    for (i, f) in frames.chunks(3).enumerate() {
        let v = Frame::Bulk(Some(Bytes::from((100 + i).to_string())));
        assert_eq!(f, [Frame::Simple(Bytes::from_static(b"OK")), v.clone(), v]);
    }
    let after = replicas[p].status();
    assert_eq!(
        after.proposed_requests - before.proposed_requests,
        30,
        "a mixed pipeline's reads were proposed"
    );
    // Leave `o` as the read-only pipeline below expects it.
    let mut wire = BytesMut::new();
    resp::encode_command([&b"SET"[..], b"o", b"19"].into_iter(), &mut wire);
    s.write_all(&wire).await.unwrap();
    read_frames(&mut s, 1).await;

    let before = replicas[p].status();
    let mut wire = BytesMut::new();
    for _ in 0..50 {
        resp::encode_command([&b"GET"[..], b"o"].into_iter(), &mut wire);
    }
    s.write_all(&wire).await.unwrap();
    for f in read_frames(&mut s, 50).await {
        assert_eq!(f, value(20));
    }
    let after = replicas[p].status();
    assert_eq!(
        after.proposed_requests, before.proposed_requests,
        "a read-only pipeline proposed decrees"
    );
}

/// Reads that skip the log, pipelined: the leader's GET-only pipeline and
/// a follower's `READONLY` pipeline go to the node as units of reads (more
/// than one unit each here), and every read still gets its own correct
/// reply, in the order sent, with the server's own replies in their place
/// and none proposed. Without `READONLY` the follower refuses such a unit
/// and each read still gets its own redirect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_off_log_reads_are_answered_in_order_on_the_leader_and_a_readonly_follower() {
    let replicas = start_cluster(3).await;
    let p = wait_for_primary(&replicas).await;
    let f = (p + 1) % 3;
    const KEYS: usize = 150;
    for i in 0..KEYS {
        let (k, v) = (format!("r{i}"), format!("v{i}"));
        replicas[p]
            .replicate(request(&["SET", &k, &v]))
            .await
            .unwrap();
    }
    let written = replicas[p].status().applied_index;
    wait_applied(&replicas[f], written, 10, "the follower stopped following").await;
    let leader_addr = start_server(replicas[p].clone(), Vec::new()).await;
    let members = vec![(ReplicaId(p as u32 + 1), leader_addr.to_string())];
    let follower_addr = start_server(replicas[f].clone(), members).await;

    // GET r0 .. r149, a missing key after r9 and a PING after r99.
    let pipeline = |readonly: bool| {
        let mut wire = BytesMut::new();
        if readonly {
            resp::encode_command([&b"READONLY"[..]].into_iter(), &mut wire);
        }
        for i in 0..KEYS {
            let k = format!("r{i}");
            resp::encode_command([&b"GET"[..], k.as_bytes()].into_iter(), &mut wire);
            if i == 9 {
                resp::encode_command([&b"GET"[..], b"missing"].into_iter(), &mut wire);
            }
            if i == 99 {
                resp::encode_command([&b"PING"[..]].into_iter(), &mut wire);
            }
        }
        wire
    };
    let expected: Vec<Frame> = (0..KEYS)
        .flat_map(|i| {
            let mut replies = vec![Frame::Bulk(Some(Bytes::from(format!("v{i}"))))];
            if i == 9 {
                replies.push(Frame::Bulk(None));
            }
            if i == 99 {
                replies.push(Frame::Simple(Bytes::from_static(b"PONG")));
            }
            replies
        })
        .collect();

    for (name, replica, addr, readonly) in [
        ("leader", &replicas[p], leader_addr, false),
        ("readonly follower", &replicas[f], follower_addr, true),
    ] {
        let before = replica.status();
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        for round in 0..3 {
            s.write_all(&pipeline(readonly && round == 0))
                .await
                .unwrap();
            let mut frames =
                read_frames(&mut s, expected.len() + usize::from(readonly && round == 0)).await;
            if readonly && round == 0 {
                assert_eq!(frames.remove(0), Frame::Simple(Bytes::from_static(b"OK")));
            }
            assert_eq!(frames.len(), expected.len(), "{name}, round {round}");
            for (n, (got, want)) in frames.iter().zip(&expected).enumerate() {
                assert_eq!(got, want, "{name}, round {round}, reply {n}");
            }
        }
        let after = replica.status();
        assert_eq!(
            after.proposed_requests, before.proposed_requests,
            "{name}: reads that skip the log were proposed"
        );
        assert!(
            after.reads_served >= before.reads_served + 3 * (KEYS as u64 + 1),
            "{name}: {} reads served",
            after.reads_served - before.reads_served
        );
    }

    // The follower without READONLY: every read its own redirect, in order,
    // the PING answered in its place.
    let mut s = tokio::net::TcpStream::connect(follower_addr).await.unwrap();
    s.write_all(&pipeline(false)).await.unwrap();
    let frames = read_frames(&mut s, expected.len()).await;
    assert_eq!(frames.len(), expected.len());
    for (n, (got, want)) in frames.iter().zip(&expected).enumerate() {
        if matches!(want, Frame::Simple(_)) {
            assert_eq!(got, want, "reply {n}");
        } else {
            assert_eq!(moved_to(got), Some(leader_addr), "reply {n}: {got:?}");
        }
    }
    for r in &replicas {
        r.shutdown().await;
    }
}
