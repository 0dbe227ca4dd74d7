//! Multi-process membership change: a real cluster of `paxos-kv node`
//! processes walks the member sets ABC → BCD → CDE → ADE (RSL's own
//! reconfiguration scenario) with the operator commands, under continuous
//! load from several clients. A is whoever leads at the start, so the first
//! removal removes the leader. The history must be linearizable, no
//! acknowledged write may be lost, and INFO must report the peers.

use paxos_kv::admin;
use paxos_kv::client::{info_field, Client};
use paxos_kv::config::{StorageKind, Tuning};
use paxos_kv::lincheck::{self, Verdict};
use paxos_kv::procs::LocalCluster;
use paxos_kv::resp::Frame;
use paxos_kv::workload::{self, Shared};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

const CLIENTS: u32 = 4;
const CALL_TIMEOUT: Duration = Duration::from_secs(40);

async fn call(cluster: &LocalCluster, via: usize, parts: &[&str]) -> String {
    let args: Vec<&[u8]> = parts.iter().map(|p| p.as_bytes()).collect();
    match admin::call(cluster.client_addr(via), &args, CALL_TIMEOUT).await {
        Ok(reply) => reply,
        Err(e) => panic!(
            "{parts:?} via node {}: {e:#}; logs in {}",
            via + 1,
            cluster.dir().display()
        ),
    }
}

async fn info(cluster: &LocalCluster, i: usize) -> String {
    cluster
        .info(i, Duration::from_secs(2))
        .await
        .unwrap_or_else(|| panic!("node {} does not answer INFO", i + 1))
}

/// The voters a node reports, as replica ids.
fn voters(info: &str) -> Vec<u32> {
    let m = info_field(info, "membership").unwrap_or_default();
    let v = m
        .split_whitespace()
        .find_map(|p| p.strip_prefix("voters="))
        .unwrap_or_default();
    v.split(',').filter_map(|x| x.parse().ok()).collect()
}

/// Adds replica `id` (index `id - 1`) and removes `gone`, checking the
/// outcome on the leader; returns whether `gone` was the leader.
async fn step(cluster: &mut LocalCluster, add: u32, gone: u32, via: usize) -> bool {
    let i = (add - 1) as usize;
    let peer = cluster.peer_addr(i).to_string();
    let client = cluster.client_addr(i).to_string();
    let reply = call(
        cluster,
        via,
        &["PAXOS.ADDNODE", &add.to_string(), &peer, &client],
    )
    .await;
    assert_eq!(reply, "OK");
    let leader = cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .unwrap();
    let was_leader = leader == (gone - 1) as usize;
    let reply = call(cluster, via, &["PAXOS.REMOVENODE", &gone.to_string()]).await;
    assert_eq!(reply, "OK");
    was_leader
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_sets_abc_bcd_cde_ade_under_load_lose_no_acknowledged_write() {
    let dir = tempfile::Builder::new()
        .prefix("paxos-kv-membership-")
        .tempdir()
        .unwrap();
    // Frequent checkpoints and a short retained log: the cluster state goes
    // through checkpoints, and joining replicas catch up by checkpoint
    // transfer rather than from the log.
    let tuning = Tuning {
        checkpoint_every_decrees: 100,
        compact_retain_decrees: 20,
        ..Tuning::default()
    };
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_paxos-kv"));
    let mut cluster = LocalCluster::start(bin, dir.path(), 3, StorageKind::File, &tuning).unwrap();
    let first = cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .unwrap();
    // A is the first leader, B and C the others; D and E are new (4, 5).
    let a = first as u32 + 1;
    let others: Vec<u32> = (1..=3).filter(|&x| x != a).collect();
    let (b, c) = (others[0], others[1]);
    let (d, e) = (4u32, 5u32);
    cluster.provision(d).unwrap();
    cluster.provision(e).unwrap();
    let addrs: Vec<SocketAddr> = (0..cluster.len()).map(|i| cluster.client_addr(i)).collect();

    let shared = Shared::new();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| {
            tokio::spawn(workload::client_task(
                Arc::clone(&shared),
                addrs.clone(),
                id,
                u64::from(id) * 7919,
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(800)).await;

    // ABC -> BCD: add D, remove A (the leader).
    cluster.spawn((d - 1) as usize).unwrap();
    let mut removed_leader = step(&mut cluster, d, a, (b - 1) as usize).await;
    // A keeps running, knows it was removed, and answers with redirects or
    // errors instead of serving.
    let ai = (a - 1) as usize;
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let a_info = info(&cluster, ai).await;
        assert_ne!(info_field(&a_info, "role"), Some("leader"), "{a_info}");
        if info_field(&a_info, "removed") == Some("1") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{a_info}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut ac = Client::connect(cluster.client_addr(ai), Duration::from_secs(2))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        match ac.cmd(&[b"SET", b"via-removed", b"x"]).await.unwrap() {
            // It sends clients to a member once it noticed nobody tells it
            // who leads any more (on its next timer).
            Frame::Error(e) if e.starts_with(b"MOVED") => break,
            Frame::Error(e) if std::time::Instant::now() < deadline => {
                assert!(e.starts_with(b"CLUSTERDOWN"), "{e:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => panic!("a removed node answered a write with {other:?}"),
        }
    }
    cluster.terminate(ai);

    // BCD -> CDE: add E, remove B.
    cluster.spawn((e - 1) as usize).unwrap();
    removed_leader |= step(&mut cluster, e, b, (c - 1) as usize).await;
    cluster.terminate((b - 1) as usize);

    // CDE -> ADE: A rejoins with empty state, C leaves.
    cluster.provision(a).unwrap();
    cluster.spawn(ai).unwrap();
    removed_leader |= step(&mut cluster, a, c, (d - 1) as usize).await;
    cluster.terminate((c - 1) as usize);

    // Load goes on for a moment in the final membership.
    tokio::time::sleep(Duration::from_secs(1)).await;
    shared.stop.store(true, Ordering::Relaxed);
    for task in clients {
        task.await.unwrap();
    }
    assert!(removed_leader, "no step removed the leader");

    // Every member agrees on ADE, and the leader's INFO reports its peers.
    let leader = cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .unwrap();
    let mut ade = vec![a, d, e];
    ade.sort_unstable();
    for i in [a, d, e].map(|x| (x - 1) as usize) {
        let text = info(&cluster, i).await;
        assert_eq!(voters(&text), ade, "node {}: {text}", i + 1);
    }
    let text = info(&cluster, leader).await;
    assert_eq!(info_field(&text, "peers"), Some("2"), "{text}");
    for id in [a, d, e].into_iter().filter(|&x| x as usize != leader + 1) {
        let line = info_field(&text, &format!("peer_{id}")).unwrap_or_else(|| panic!("{text}"));
        assert!(line.contains("role=voter"), "{line}");
        assert!(line.contains("connected=1"), "{line}");
        assert!(line.contains("lag="), "{line}");
    }
    let members = call(&cluster, leader, &["PAXOS.MEMBERS"]).await;
    assert!(members.contains(&format!("member:{d} voter")), "{members}");

    // Bad operator input gets clear errors, on the leader and elsewhere.
    let follower = [a, d, e]
        .map(|x| (x - 1) as usize)
        .into_iter()
        .find(|&i| i != leader)
        .unwrap();
    let mut lc = Client::connect(cluster.client_addr(leader), Duration::from_secs(5))
        .await
        .unwrap();
    let mut fc = Client::connect(cluster.client_addr(follower), Duration::from_secs(5))
        .await
        .unwrap();
    let error_text = |f: Frame| match f {
        Frame::Error(e) => String::from_utf8_lossy(&e).into_owned(),
        other => panic!("expected an error, got {other:?}"),
    };
    let t = error_text(lc.cmd(&[b"PAXOS.REMOVENODE", b"42"]).await.unwrap());
    assert!(t.starts_with("ERR replica 42 is not a member"), "{t}");
    let t = error_text(
        lc.cmd(&[b"PAXOS.ADDNODE", b"6", b"nowhere", b"127.0.0.1:1"])
            .await
            .unwrap(),
    );
    assert!(t.starts_with("ERR invalid peer address"), "{t}");
    let taken = cluster.peer_addr(leader).to_string();
    let t = error_text(
        lc.cmd(&[b"PAXOS.ADDNODE", b"6", taken.as_bytes(), b"127.0.0.1:1"])
            .await
            .unwrap(),
    );
    assert!(t.starts_with("ERR address already used by replica"), "{t}");
    let t = error_text(fc.cmd(&[b"PAXOS.REMOVENODE", b"42"]).await.unwrap());
    assert!(t.starts_with("MOVED 0 "), "a follower redirects: {t}");
    let t = error_text(lc.cmd(&[b"PAXOS.TRANSFERLEADER", b"42"]).await.unwrap());
    assert!(t.starts_with("ERR replica 42 cannot take over"), "{t}");
    let t = error_text(lc.cmd(&[b"PAXOS.ABANDONCHANGE"]).await.unwrap());
    assert!(t.starts_with("ERR no membership change in progress"), "{t}");

    // Hand leadership to a named voter.
    let successor = [a, d, e]
        .into_iter()
        .find(|&x| x as usize != leader + 1)
        .unwrap();
    let reply = call(
        &cluster,
        leader,
        &["PAXOS.TRANSFERLEADER", &successor.to_string()],
    )
    .await;
    assert_eq!(reply, "OK", "transfer to {successor}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let t = info(&cluster, (successor - 1) as usize).await;
        if info_field(&t, "role") == Some("leader") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "replica {successor} did not take over: {t}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Restart every member: each recovers the membership ADE (from its
    // checkpoint, or by replaying its log), not its config file's members.
    for i in [a, d, e].map(|x| (x - 1) as usize) {
        cluster.terminate(i);
        cluster.spawn(i).unwrap();
    }
    cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .unwrap();
    let slot_before = info_field(&text, "membership_slot").unwrap().to_owned();
    for i in [a, d, e].map(|x| (x - 1) as usize) {
        let after = info(&cluster, i).await;
        assert_eq!(voters(&after), ade, "node {} after restart: {after}", i + 1);
        assert_eq!(
            info_field(&after, "membership_slot"),
            Some(slot_before.as_str()),
            "node {} after restart: {after}",
            i + 1
        );
    }

    // Acknowledged writes are all there, after the changes and the restart.
    let verdicts = workload::final_reads(&shared, addrs).await;
    let completed = verdicts.history.iter().filter(|o| o.ret.is_some()).count();
    println!(
        "history: {} operations ({completed} completed), {} acknowledged unique writes",
        verdicts.history.len(),
        verdicts.acked
    );
    assert!(
        verdicts.lost.is_empty(),
        "acknowledged writes lost: {:?}",
        verdicts.lost
    );
    assert!(completed >= 100, "too little progress: {completed}");
    assert!(verdicts.acked >= 10, "too few acknowledged writes");
    match lincheck::check(&verdicts.history, 20_000_000) {
        Verdict::Linearizable => {}
        other => {
            let _ = dir.keep();
            panic!("not linearizable: {other:?}");
        }
    }
    cluster.stop_all();
    if std::env::var_os("PAXOS_KV_KEEP").is_some() {
        println!("node logs kept in {}", dir.keep().display());
    }
}
