//! Multi-process: a persistent-memory region that fills up holds writes
//! back instead of dropping clients.
//!
//! Three `paxos-kv node` processes run `storage = "nvm"` with an 8 MiB
//! region (the smallest the checkpoint settings allow is 6 MiB). Clients
//! write continuously to the leader. The leader's checkpoint directory is
//! then made unusable, so its checkpoints fail and its log cannot be
//! truncated: the live log grows until the region reports itself full. The
//! leader must stop proposing (clients wait; no connection is dropped, no
//! write fails), and once checkpoints work again it must truncate and go
//! on. Every acknowledged write must then be readable.
//!
//! Before the fix, the region ran out of room, the append failed and the
//! leader process exited: every client connection to it was dropped.

use paxos_kv::client::Client;
use paxos_kv::config::{StorageKind, Tuning};
use paxos_kv::procs::LocalCluster;
use paxos_kv::resp::Frame;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WRITERS: usize = 4;
const PIPELINE: usize = 32;
const VALUE_BYTES: usize = 1024;

/// The value written to `key`.
fn value_of(key: &str) -> Vec<u8> {
    let mut v = key.as_bytes().to_vec();
    v.resize(VALUE_BYTES, b'.');
    v
}

/// Writes `w<writer>:<n>` for n = 0, 1, ... in pipelines over one
/// connection until `stop`; counts every acknowledged SET in `acked`.
/// Any failure (a dropped connection, a timeout, a reply other than OK) is
/// the error: writes may wait, never fail.
async fn writer(
    addr: std::net::SocketAddr,
    writer: usize,
    acked: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> Result<u64, String> {
    // Writes wait while the log is full: far longer than any healthy
    // write, but finite, so that a stuck node fails the test.
    let mut client = Client::connect(addr, Duration::from_secs(60))
        .await
        .map_err(|e| format!("writer {writer}: connect: {e}"))?;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let keys: Vec<String> = (n..n + PIPELINE as u64)
            .map(|i| format!("w{writer}:{i}"))
            .collect();
        let values: Vec<Vec<u8>> = keys.iter().map(|k| value_of(k)).collect();
        let commands: Vec<[&[u8]; 3]> = keys
            .iter()
            .zip(&values)
            .map(|(k, v)| [&b"SET"[..], k.as_bytes(), &v[..]])
            .collect();
        let replies = client
            .pipeline(commands.iter().map(|c| &c[..]))
            .await
            .map_err(|e| format!("writer {writer}: after {n} writes: {e}"))?;
        if let Some(bad) = replies.iter().find(|r| **r != Frame::Simple("OK".into())) {
            return Err(format!("writer {writer}: a SET got {bad:?}"));
        }
        n += PIPELINE as u64;
        acked.fetch_add(PIPELINE as u64, Ordering::Relaxed);
    }
    Ok(n)
}

type Writers = Vec<tokio::task::JoinHandle<Result<u64, String>>>;

/// Panics with the writer's error if one ended (writers end only when
/// stopped, or when a write failed).
async fn no_writer_failed(writers: &mut Writers, cluster: &LocalCluster) {
    if let Some(i) = writers.iter().position(|w| w.is_finished()) {
        let ended = writers.remove(i).await.unwrap();
        panic!(
            "a writer ended while writing: {ended:?}; node events:\n{}",
            cluster.events()
        );
    }
}

/// Waits until node `i`'s log contains `needle`, failing at once if a
/// writer failed meanwhile.
async fn wait_for_log(
    cluster: &LocalCluster,
    writers: &mut Writers,
    i: usize,
    needle: &str,
    timeout: Duration,
) {
    let path = cluster.dir().join(format!("node{}.log", i + 1));
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        no_writer_failed(writers, cluster).await;
        if std::fs::read_to_string(&path).is_ok_and(|log| log.contains(needle)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "node {} never logged {needle:?}; node events:\n{}",
        i + 1,
        cluster.events()
    );
}

/// Makes node `i`'s checkpoint directory unusable (a file in its place);
/// returns where the directory was moved.
fn break_checkpoints(data_dir: &Path) -> PathBuf {
    let dir = data_dir.join("checkpoints");
    let held = data_dir.join("checkpoints.held");
    std::fs::rename(&dir, &held).unwrap();
    std::fs::write(&dir, b"not a directory").unwrap();
    held
}

fn mend_checkpoints(data_dir: &Path, held: &Path) {
    let dir = data_dir.join("checkpoints");
    std::fs::remove_file(&dir).unwrap();
    std::fs::rename(held, &dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_nvm_region_holds_writes_back_and_drops_no_client() {
    let dir = paxos_kv::procs::memory_backed_tempdir("paxos-kv-nvm-full-").unwrap();
    let tuning = Tuning {
        nvm_region_mb: 8,
        checkpoint_every_mb: 1,
        log_memory_mb: 1,
        ..Tuning::default()
    };
    assert_eq!(tuning.live_log_mb(), Some(2), "the minimum region is 6 MiB");
    let bin = Path::new(env!("CARGO_BIN_EXE_paxos-kv"));
    let cluster = LocalCluster::start(bin, dir.path(), 3, StorageKind::Nvm, &tuning).unwrap();
    let (leader, _) = cluster
        .stable_leader(Duration::from_millis(1500), Duration::from_secs(30))
        .await
        .unwrap();
    let addr = cluster.client_addr(leader);
    let data_dir = dir.path().join(format!("node{}", leader + 1));

    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers: Writers = (0..WRITERS)
        .map(|w| tokio::spawn(writer(addr, w, Arc::clone(&acked), Arc::clone(&stop))))
        .collect();
    let wait_for_acks = |at_least: u64, timeout: Duration| {
        let acked = Arc::clone(&acked);
        async move {
            let deadline = Instant::now() + timeout;
            while Instant::now() < deadline {
                if acked.load(Ordering::Relaxed) >= at_least {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            false
        }
    };
    // Writes flow (and checkpoints truncate) before anything breaks.
    assert!(
        wait_for_acks(2_000, Duration::from_secs(10)).await,
        "no progress at all; node events:\n{}",
        cluster.events()
    );

    // The leader's checkpoints fail from now on: its log fills.
    let held = break_checkpoints(&data_dir);
    let log_full = "the log is full";
    wait_for_log(
        &cluster,
        &mut writers,
        leader,
        log_full,
        Duration::from_secs(10),
    )
    .await;
    // Writes wait: almost nothing is acknowledged while the log is full
    // (at most the decrees already in flight when it filled).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let held_at = acked.load(Ordering::Relaxed);
    let still_waiting = "writes still wait for room in the full log";
    wait_for_log(
        &cluster,
        &mut writers,
        leader,
        still_waiting,
        Duration::from_secs(7),
    )
    .await;
    let during = acked.load(Ordering::Relaxed) - held_at;
    assert!(
        during <= (WRITERS * PIPELINE) as u64,
        "{during} writes acknowledged while the log was full"
    );
    no_writer_failed(&mut writers, &cluster).await;

    // Checkpoints work again: the leader truncates and writes go on.
    mend_checkpoints(&data_dir, &held);
    let resumed = "proposing resumes";
    wait_for_log(
        &cluster,
        &mut writers,
        leader,
        resumed,
        Duration::from_secs(5),
    )
    .await;
    let resumed_at = acked.load(Ordering::Relaxed);
    assert!(
        wait_for_acks(resumed_at + 2_000, Duration::from_secs(10)).await,
        "no progress after the log had room again; node events:\n{}",
        cluster.events()
    );
    stop.store(true, Ordering::Relaxed);
    let mut written = Vec::new();
    for w in writers {
        match w.await.unwrap() {
            Ok(n) => written.push(n),
            Err(e) => panic!("{e}; node events:\n{}", cluster.events()),
        }
    }

    // Every acknowledged write is there.
    let mut reader = Client::connect(addr, Duration::from_secs(30))
        .await
        .unwrap();
    for (w, n) in written.iter().enumerate() {
        let keys: Vec<String> = (0..*n).map(|i| format!("w{w}:{i}")).collect();
        for chunk in keys.chunks(500) {
            let commands: Vec<[&[u8]; 2]> =
                chunk.iter().map(|k| [&b"GET"[..], k.as_bytes()]).collect();
            let replies = reader
                .pipeline(commands.iter().map(|c| &c[..]))
                .await
                .unwrap();
            for (key, reply) in chunk.iter().zip(replies) {
                assert_eq!(
                    reply,
                    Frame::Bulk(Some(value_of(key).into())),
                    "acknowledged write of {key} lost"
                );
            }
        }
    }
}
