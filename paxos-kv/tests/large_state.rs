//! Multi-process: checkpoints of a state large enough to have stalled the
//! old node do not cost the leader its leadership.
//!
//! Before frozen views of the KV (issue #16), a checkpoint serialized the
//! whole state on the event loop: about 360K keys stalled the leader for
//! 0.55 s, past the election timeout, and the followers elected another.
//! Here three `paxos-kv node` processes take a checkpoint every 300 decrees
//! while 400K keys of 100 bytes are loaded and then overwritten; a probe
//! SET every 5 ms measures the longest wait. No leader may change, and
//! every node must have taken checkpoints of the full state.

use paxos_kv::client::{info_field, info_number, Client};
use paxos_kv::config::{StorageKind, Tuning};
use paxos_kv::procs::LocalCluster;
use paxos_kv::resp::Frame;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const KEYS: usize = 400_000;
const PIPELINE: usize = 1000;
const LOADERS: usize = 4;

/// Writes `key:<n>` for every `n` in `range` with 100-byte values, in
/// pipelines of `PIPELINE`; the first reply that is not OK is the error.
async fn load(
    addr: std::net::SocketAddr,
    range: std::ops::Range<usize>,
    round: u8,
) -> Result<(), String> {
    let mut client = Client::connect(addr, Duration::from_secs(30))
        .await
        .map_err(|e| e.to_string())?;
    let value = [b'a' + round; 100];
    let keys: Vec<Vec<u8>> = range.map(|n| format!("key:{n}").into_bytes()).collect();
    for chunk in keys.chunks(PIPELINE) {
        let commands: Vec<[&[u8]; 3]> =
            chunk.iter().map(|k| [b"SET", &k[..], &value[..]]).collect();
        let replies = client
            .pipeline(commands.iter().map(|c| &c[..]))
            .await
            .map_err(|e| e.to_string())?;
        if let Some(bad) = replies.iter().find(|r| **r != Frame::Simple("OK".into())) {
            return Err(format!("a SET got {bad:?}"));
        }
    }
    Ok(())
}

fn field(info: &str, name: &str) -> u64 {
    info_number(info, name).unwrap_or_else(|| panic!("INFO has no numeric {name}:\n{info}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_of_a_large_state_cause_no_leader_change() {
    let dir = tempfile::Builder::new()
        .prefix("paxos-kv-large-")
        .tempdir()
        .unwrap();
    let tuning = Tuning {
        checkpoint_every_decrees: 300,
        ..Tuning::default()
    };
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_paxos-kv"));
    let cluster = LocalCluster::start(bin, dir.path(), 3, StorageKind::File, &tuning).unwrap();
    // Start once a leader has kept its ballot for two election timeouts
    // (the longest default one is 600 ms) and served a write.
    let (leader, ballot) = cluster
        .stable_leader(Duration::from_millis(1500), Duration::from_secs(30))
        .await
        .unwrap();
    let addr = cluster.client_addr(leader);
    let mut probe = Client::connect(addr, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        probe.cmd(&[b"SET", b"probe", b"0"]).await.unwrap(),
        Frame::Simple("OK".into()),
        "the stable leader serves a write"
    );

    let done = Arc::new(AtomicBool::new(false));
    let probe_task = {
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            let mut longest = Duration::ZERO;
            while !done.load(Ordering::Relaxed) {
                let started = Instant::now();
                let reply = probe.cmd(&[b"SET", b"probe", b"1"]).await;
                if !matches!(&reply, Ok(Frame::Simple(ok)) if ok == "OK") {
                    return Err(format!("the probe SET got {reply:?}"));
                }
                longest = longest.max(started.elapsed());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok(longest)
        })
    };

    let started = Instant::now();
    for round in 0..2u8 {
        let per = KEYS / LOADERS;
        let loaders: Vec<_> = (0..LOADERS)
            .map(|i| tokio::spawn(load(addr, i * per..(i + 1) * per, round)))
            .collect();
        for l in loaders {
            if let Err(e) = l.await.unwrap() {
                panic!("loading: {e}; node events:\n{}", cluster.events());
            }
        }
    }
    let load_time = started.elapsed();
    let loaded_through = field(
        &cluster.info(leader, Duration::from_secs(5)).await.unwrap(),
        "applied_index",
    );
    // One more interval, so that every node checkpoints the full state.
    let mut tail = Client::connect(addr, Duration::from_secs(10))
        .await
        .unwrap();
    for n in 0..350 {
        let key = format!("tail:{n}");
        tail.cmd(&[b"SET", key.as_bytes(), b"x"]).await.unwrap();
    }
    done.store(true, Ordering::Relaxed);
    let longest = probe_task
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}; node events:\n{}", cluster.events()));
    println!(
        "{} SETs in {load_time:?}; longest probe SET {longest:?}",
        2 * KEYS
    );

    let deadline = Instant::now() + Duration::from_secs(20);
    for i in 0..cluster.len() {
        loop {
            let info = cluster.info(i, Duration::from_secs(5)).await.unwrap();
            assert_eq!(
                field(&info, "ballot_round"),
                ballot,
                "node {i}: the ballot moved, a leader change happened during checkpoints; node events:\n{}",
                cluster.events()
            );
            assert_eq!(
                info_field(&info, "role"),
                Some(if i == leader { "leader" } else { "follower" }),
                "node {i} changed role"
            );
            if field(&info, "checkpoint_slot") > loaded_through {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {i} took no checkpoint of the full state:\n{info}"
            );
            // A checkpoint is taken as decrees are applied: keep some coming.
            tail.cmd(&[b"SET", b"tail", b"y"]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
