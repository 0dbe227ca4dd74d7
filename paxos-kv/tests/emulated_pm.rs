//! Multi-process test of storage = "nvm" with `nvm_backend = "emulated-pm"`:
//! three `paxos-kv node` processes keep their regions in files on
//! `/dev/shm`, flushed with the cache-line instructions and never msynced.
//! Under concurrent writes the leader and then a follower are killed with
//! SIGKILL and restarted, and finally all three are killed together and
//! restarted, so every acknowledged write must come back out of the
//! regions themselves (no replica kept a copy in memory). The history must
//! stay linearizable.

use paxos_kv::config::{NvmBackend, StorageKind, Tuning};
use paxos_kv::lincheck::{self, Verdict};
use paxos_kv::procs::LocalCluster;
use paxos_kv::workload::{self, Shared};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

const CLIENTS: u32 = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulated_pm_on_dev_shm_keeps_every_acknowledged_write_across_kill9() {
    let dir = paxos_kv::procs::memory_backed_tempdir("paxos-kv-emulated-pm-").unwrap();
    let tuning = Tuning {
        nvm_backend: NvmBackend::EmulatedPm,
        nvm_region_mb: 32,
        // The region must hold 3x the log kept between checkpoints.
        checkpoint_every_mb: 4,
        log_memory_mb: 4,
        // Restarts then recover from a checkpoint plus the region's tail.
        checkpoint_every_decrees: 300,
        ..Tuning::default()
    };
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_paxos-kv"));
    let mut cluster = LocalCluster::start(bin, dir.path(), 3, StorageKind::Nvm, &tuning).unwrap();
    cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .unwrap();
    for i in 0..cluster.len() {
        let log = std::fs::read_to_string(dir.path().join(format!("node{}.log", i + 1)))
            .unwrap_or_default();
        assert!(
            log.contains("EMULATED persistent memory"),
            "node {} did not say its region is emulated persistent memory:\n{log}",
            i + 1
        );
    }
    let addrs: Vec<SocketAddr> = (0..cluster.len()).map(|i| cluster.client_addr(i)).collect();
    let shared = Shared::new();
    let seed = u64::from(std::process::id());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| {
            tokio::spawn(workload::client_task(
                Arc::clone(&shared),
                addrs.clone(),
                id,
                seed,
            ))
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let leader = cluster
        .wait_for_leader(Duration::from_secs(10))
        .await
        .unwrap();
    cluster.kill9(leader);
    tokio::time::sleep(Duration::from_millis(800)).await;
    cluster.spawn(leader).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let leader = cluster
        .wait_for_leader(Duration::from_secs(10))
        .await
        .unwrap();
    let follower = (leader + 1) % cluster.len();
    cluster.kill9(follower);
    tokio::time::sleep(Duration::from_millis(800)).await;
    cluster.spawn(follower).unwrap();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    // All at once, writes in flight: only the regions remember anything.
    let acked_before_kill_all = shared
        .acked_unique
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .len();
    for i in 0..cluster.len() {
        cluster.kill9(i);
    }
    for i in 0..cluster.len() {
        cluster.spawn(i).unwrap();
    }
    cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    shared.stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }

    cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .unwrap();
    let verdicts = workload::final_reads(&shared, addrs).await;
    println!(
        "{} acknowledged unique writes ({acked_before_kill_all} before every node was killed), {} operations",
        verdicts.acked,
        verdicts.history.len()
    );
    assert!(
        verdicts.lost.is_empty(),
        "acknowledged writes lost: {:?}\n{}",
        verdicts.lost,
        cluster.events()
    );
    assert!(
        acked_before_kill_all >= 20,
        "too few acknowledged writes before the kill of every node: {acked_before_kill_all}"
    );
    assert!(
        verdicts.acked > acked_before_kill_all,
        "no progress after the restart"
    );
    match lincheck::check(&verdicts.history, 20_000_000) {
        Verdict::Linearizable => {}
        other => panic!("history not shown linearizable: {other:?}"),
    }
    cluster.stop_all();
}
