//! Multi-process fault test: a real 3-replica cluster of `paxos-kv node`
//! processes on loopback, concurrent clients, and a nemesis that kill -9s
//! and restarts replicas and SIGSTOPs / SIGCONTs them. The recorded history
//! must be linearizable and no acknowledged write may be lost.

use bytes::Bytes;
use paxos_kv::config::{StorageKind, Tuning};
use paxos_kv::lincheck::{self, OpKind, OpOutcome, Verdict};
use paxos_kv::procs::LocalCluster;
use paxos_kv::workload::{self, Shared};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

const CLIENTS: usize = 5;
const LOAD: Duration = Duration::from_secs(16);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linearizable_and_no_acked_write_lost_under_kill9_and_sigstop() {
    let seed: u64 = std::env::var("PAXOS_KV_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            t.as_nanos() as u64 ^ u64::from(std::process::id())
        });
    println!("fault test seed {seed} (set PAXOS_KV_FAULT_SEED to replay the nemesis schedule)");
    let dir = tempfile::Builder::new()
        .prefix("paxos-kv-fault-")
        .tempdir()
        .unwrap();
    // Frequent checkpoints so restarts exercise checkpoint + log-tail recovery.
    let tuning = Tuning {
        checkpoint_every_decrees: 300,
        ..Tuning::default()
    };
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_paxos-kv"));
    let mut cluster = LocalCluster::start(bin, dir.path(), 3, StorageKind::File, &tuning).unwrap();
    cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .unwrap();
    let addrs: Vec<SocketAddr> = (0..cluster.len()).map(|i| cluster.client_addr(i)).collect();

    let shared = Shared::new();
    let clients: Vec<_> = (0..CLIENTS as u32)
        .map(|id| {
            tokio::spawn(workload::client_task(
                Arc::clone(&shared),
                addrs.clone(),
                id,
                seed,
            ))
        })
        .collect();

    // Nemesis: one fault at a time, so a majority is always there to make
    // progress; the leader is the favourite victim.
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut faults = Vec::new();
    let load_end = Instant::now() + LOAD;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    while Instant::now() + Duration::from_secs(3) < load_end {
        let leader = cluster.wait_for_leader(Duration::from_secs(10)).await.ok();
        let victim = match leader {
            Some(l) if rng.gen_bool(0.7) => l,
            _ => rng.gen_range(0..cluster.len()),
        };
        if rng.gen_bool(0.5) {
            faults.push(format!("kill -9 r{}", victim + 1));
            cluster.kill9(victim);
            tokio::time::sleep(Duration::from_millis(rng.gen_range(300..1200))).await;
            cluster.spawn(victim).unwrap();
        } else {
            faults.push(format!("SIGSTOP r{}", victim + 1));
            cluster.pause(victim);
            tokio::time::sleep(Duration::from_millis(rng.gen_range(500..1500))).await;
            cluster.resume(victim);
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(500..1500))).await;
    }
    let remaining = load_end.saturating_duration_since(Instant::now());
    tokio::time::sleep(remaining).await;
    shared.stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    println!("nemesis: {}", faults.join(", "));

    // Healed cluster: final reads of every key join the history, and every
    // acknowledged unique write must read back its value.
    cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .unwrap();
    let verdicts = workload::final_reads(&shared, addrs.clone()).await;
    let (lost, acked) = (verdicts.lost, verdicts.acked);

    let history = verdicts.history;
    let completed = history.iter().filter(|o| o.ret.is_some()).count();
    let unknown = history.len() - completed;
    println!(
        "history: {} operations ({completed} completed, {unknown} unknown outcome), {} acknowledged unique writes",
        history.len(),
        acked
    );
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    assert!(
        completed >= 200,
        "too little progress under faults: {completed} completed operations"
    );
    assert!(acked >= 20, "too few acknowledged unique writes: {acked}");
    let verdict = lincheck::check(&history, 20_000_000);
    if verdict != Verdict::Linearizable {
        let _ = dir.keep();
    }
    match verdict {
        Verdict::Linearizable => {}
        Verdict::NotLinearizable { key, operations } => {
            panic!(
                "history of {key:?} is not linearizable (seed {seed}); operations: {operations:#?}"
            )
        }
        Verdict::Inconclusive { key } => {
            panic!("checker ran out of budget on {key:?} (seed {seed})")
        }
    }

    // The checker has teeth on this very history: one stale or invented
    // read must be caught.
    let mut tampered = history.clone();
    let victim = tampered
        .iter()
        .position(|o| {
            o.kind == OpKind::Read
                && matches!(o.outcome, OpOutcome::Read(Some(_)))
                && o.ret.is_some()
        })
        .expect("history has a completed read of a present key");
    tampered[victim].outcome = OpOutcome::Read(Some(Bytes::from_static(b"never written")));
    assert!(
        matches!(
            lincheck::check(&tampered, 20_000_000),
            Verdict::NotLinearizable { .. }
        ),
        "the checker missed an invented read"
    );
    cluster.stop_all();
}
