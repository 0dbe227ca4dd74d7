//! Multi-process tests of protocol-aware recovery: bytes are flipped in a
//! stopped node's newest log segment and newest checkpoint, and the node is
//! restarted. It must start anyway (salvaging what it can vouch for), repair
//! from its peers before voting again, and nothing acknowledged may be lost
//! or changed. When repair is impossible (a majority damaged), the nodes say
//! exactly why, and the documented `[recovery] unsafe_skip_repair` lets an
//! operator resume.

use paxos_kv::client::{info_field, info_number};
use paxos_kv::config::{StorageKind, Tuning};
use paxos_kv::lincheck::{self, Verdict};
use paxos_kv::procs::LocalCluster;
use paxos_kv::workload::{self, Shared};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

const CLIENTS: u32 = 4;

fn tuning() -> Tuning {
    Tuning {
        // Checkpoints early and often, so a restart needs one.
        checkpoint_every_decrees: 150,
        compact_retain_decrees: 50,
        ..Tuning::default()
    }
}

/// The newest file in `dir` whose name ends with `suffix`.
fn newest(dir: &Path, suffix: &str) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .max()
}

/// Flips one byte at each of `offsets` (counted back from the end of the
/// file when negative).
fn flip(path: &Path, offsets: &[i64]) {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let len = f.metadata().unwrap().len() as i64;
    for &o in offsets {
        let at = if o < 0 { len + o } else { o };
        assert!(
            at >= 0 && at < len,
            "offset {o} outside {} ({len} bytes)",
            path.display()
        );
        f.seek(SeekFrom::Start(at as u64)).unwrap();
        let mut b = [0u8; 1];
        f.read_exact(&mut b).unwrap();
        f.seek(SeekFrom::Start(at as u64)).unwrap();
        f.write_all(&[b[0] ^ 0x5A]).unwrap();
    }
    f.sync_all().unwrap();
}

/// Damages node `i`'s newest log segment near its end (appends that were
/// synced and acknowledged) and its newest checkpoint in the middle.
fn damage(cluster: &LocalCluster, i: usize) -> (PathBuf, PathBuf) {
    let data = cluster.dir().join(format!("node{}", i + 1));
    let segment = newest(&data.join("log"), ".log").expect("a log segment");
    let checkpoint = newest(&data.join("checkpoints"), ".ckpt").expect("a checkpoint");
    flip(&segment, &[-700, -300, -40]);
    let len = std::fs::metadata(&checkpoint).unwrap().len() as i64;
    flip(&checkpoint, &[len / 2]);
    (segment, checkpoint)
}

fn start_clients(shared: &Arc<Shared>, addrs: &[SocketAddr]) -> Vec<tokio::task::JoinHandle<()>> {
    (0..CLIENTS)
        .map(|id| {
            tokio::spawn(workload::client_task(
                Arc::clone(shared),
                addrs.to_vec(),
                id,
                u64::from(id) * 7919,
            ))
        })
        .collect()
}

async fn info_of(cluster: &LocalCluster, i: usize) -> String {
    cluster
        .info(i, Duration::from_millis(500))
        .await
        .unwrap_or_default()
}

fn field(info: &str, name: &str) -> Option<u64> {
    info_number(info, name)
}

fn log_of(cluster: &LocalCluster, i: usize) -> String {
    std::fs::read_to_string(cluster.dir().join(format!("node{}.log", i + 1))).unwrap_or_default()
}

/// Stops the clients, reads every key back, and checks that no acknowledged
/// write was lost and the whole history is linearizable.
async fn judge(
    shared: &Arc<Shared>,
    clients: Vec<tokio::task::JoinHandle<()>>,
    addrs: &[SocketAddr],
) {
    shared.stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let verdicts = workload::final_reads(shared, addrs.to_vec()).await;
    assert!(
        verdicts.lost.is_empty(),
        "acknowledged writes lost: {:?}",
        verdicts.lost
    );
    assert!(
        verdicts.acked >= 20,
        "too few acknowledged writes: {}",
        verdicts.acked
    );
    match lincheck::check(&verdicts.history, 20_000_000) {
        Verdict::Linearizable => {}
        other => panic!("the history is not linearizable: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_corrupted_log_and_checkpoint_repairs_from_its_peers() {
    let dir = tempfile::Builder::new()
        .prefix("paxos-kv-corrupt-")
        .tempdir()
        .unwrap();
    let bin = Path::new(env!("CARGO_BIN_EXE_paxos-kv"));
    let mut cluster =
        LocalCluster::start(bin, dir.path(), 3, StorageKind::File, &tuning()).unwrap();
    let leader = cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .unwrap();
    let addrs: Vec<SocketAddr> = (0..cluster.len()).map(|i| cluster.client_addr(i)).collect();
    let shared = Shared::new();
    let clients = start_clients(&shared, &addrs);
    // Load until the victim has taken a checkpoint.
    let victim = (leader + 1) % 3;
    let deadline = Instant::now() + Duration::from_secs(30);
    while field(&info_of(&cluster, victim).await, "checkpoint_slot").unwrap_or(0) < 150 {
        assert!(Instant::now() < deadline, "no checkpoint on the victim");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    cluster.terminate(victim);
    let (segment, checkpoint) = damage(&cluster, victim);
    cluster.spawn(victim).unwrap();

    // It starts, repairs and catches up while the others keep serving.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info = info_of(&cluster, victim).await;
        let leader_info = info_of(
            &cluster,
            cluster
                .wait_for_leader(Duration::from_secs(10))
                .await
                .unwrap(),
        )
        .await;
        let caught_up = field(&info, "applied_index")
            >= field(&leader_info, "commit_index").map(|c| c.saturating_sub(50));
        if field(&info, "repairing") == Some(0)
            && caught_up
            && log_of(&cluster, victim).contains("repair done")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the damaged node did not repair; INFO:\n{info}\nlog:\n{}",
            log_of(&cluster, victim)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = log_of(&cluster, victim);
    assert!(
        log.contains("salvaging the log"),
        "the log damage was found:\n{log}"
    );
    assert!(log.contains("lost data it may have acknowledged"), "{log}");
    // The damaged files were set aside for an operator to inspect.
    let aside = |p: &Path| {
        std::fs::read_dir(p.parent().unwrap())
            .unwrap()
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().ends_with(".damaged"))
    };
    assert!(aside(&segment), "the damaged segment was set aside");
    assert!(aside(&checkpoint), "the damaged checkpoint was set aside");

    // More load with the repaired node voting, then the verdict.
    tokio::time::sleep(Duration::from_secs(2)).await;
    judge(&shared, clients, &addrs).await;
    cluster.stop_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_majority_says_why_it_cannot_repair_and_an_operator_can_accept_the_loss() {
    let dir = tempfile::Builder::new()
        .prefix("paxos-kv-corrupt2-")
        .tempdir()
        .unwrap();
    let bin = Path::new(env!("CARGO_BIN_EXE_paxos-kv"));
    let mut cluster =
        LocalCluster::start(bin, dir.path(), 3, StorageKind::File, &tuning()).unwrap();
    let leader = cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .unwrap();
    let addrs: Vec<SocketAddr> = (0..cluster.len()).map(|i| cluster.client_addr(i)).collect();
    let shared = Shared::new();
    let clients = start_clients(&shared, &addrs);
    tokio::time::sleep(Duration::from_secs(3)).await;
    shared.stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    // Two of three lose their newest records.
    let damaged = [(leader + 1) % 3, (leader + 2) % 3];
    for &i in &damaged {
        cluster.terminate(i);
        let data = cluster.dir().join(format!("node{}", i + 1));
        let segment = newest(&data.join("log"), ".log").unwrap();
        flip(&segment, &[-300]);
    }
    for &i in &damaged {
        cluster.spawn(i).unwrap();
    }
    // Each waits for the other, which cannot be trusted: INFO says so.
    let deadline = Instant::now() + Duration::from_secs(20);
    'wait: loop {
        let mut all = true;
        for &i in &damaged {
            let other = damaged.iter().find(|&&o| o != i).unwrap();
            let info = info_of(&cluster, i).await;
            all &= field(&info, "repairing") == Some(1)
                && info_field(&info, "repair_untrusted") == Some(&(other + 1).to_string());
        }
        if all {
            break 'wait;
        }
        if Instant::now() >= deadline {
            let mut report = String::new();
            for i in 0..3 {
                report.push_str(&format!(
                    "--- node {}\n{}\n{}\n",
                    i + 1,
                    info_of(&cluster, i).await,
                    log_of(&cluster, i)
                ));
            }
            panic!("the damaged nodes did not report why they wait:\n{report}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        cluster
            .wait_for_leader(Duration::from_secs(2))
            .await
            .is_err()
            || cluster.wait_for_leader(Duration::from_secs(1)).await.ok() == Some(leader),
        "no new leader can be elected with a damaged majority"
    );

    // The operator accepts the loss on one of them (documented key) and
    // restarts it: the cluster makes progress again.
    let i = damaged[0];
    cluster.terminate(i);
    let config = cluster.dir().join(format!("node{}.toml", i + 1));
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replace("unsafe_skip_repair = false", "unsafe_skip_repair = true");
    std::fs::write(&config, text).unwrap();
    cluster.spawn(i).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut c = paxos_kv::client::Client::connect(
            addrs[cluster
                .wait_for_leader(Duration::from_secs(20))
                .await
                .unwrap()],
            Duration::from_secs(1),
        )
        .await
        .unwrap();
        if let Ok(paxos_kv::resp::Frame::Simple(ok)) =
            c.cmd(&[b"SET", b"after", b"accepting"]).await
        {
            assert_eq!(&ok[..], b"OK");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no progress after the operator accepted the loss"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(log_of(&cluster, i).contains("unsafe_skip_repair is set"));
    cluster.stop_all();
}
