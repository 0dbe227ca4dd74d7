//! `paxos-kv demo`: a local 3-replica cluster, a write-heavy closed-loop
//! workload, a leader kill -9, and a check that no acknowledged write was
//! lost.

use crate::client::{info_field, moved_to, Client};
use crate::config::{StorageKind, Tuning};
use crate::procs::LocalCluster;
use crate::resp::Frame;
use anyhow::Context;
use hdrhistogram::Histogram;
use paxos_core::Slot;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Demo parameters.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Seconds of load before the kill.
    pub seconds: u64,
    /// Concurrent clients.
    pub clients: usize,
    /// Log backend.
    pub storage: StorageKind,
    /// Keep the data directory.
    pub keep: bool,
}

/// What one client did.
struct ClientRun {
    acked: Vec<(u64, u64)>,
    latency: Histogram<u64>,
}

/// Runs the demo; every child process is stopped before this returns,
/// including on error and on Ctrl-C.
pub async fn run(options: DemoOptions) -> anyhow::Result<()> {
    let tmp = tempfile::Builder::new()
        .prefix("paxos-kv-demo-")
        .tempdir()?;
    let dir = tmp.path().to_owned();
    let bin = std::env::current_exe().context("locating the paxos-kv binary")?;
    let tuning = Tuning {
        checkpoint_every_decrees: 2_000,
        ..Tuning::default()
    };
    println!(
        "paxos-kv demo: 3 replicas on loopback, {:?} storage, data in {}",
        options.storage,
        dir.display()
    );
    let mut cluster = LocalCluster::start(&bin, &dir, 3, options.storage, &tuning)?;
    let result = tokio::select! {
        r = demo_body(&mut cluster, &options) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    cluster.stop_all();
    drop(cluster);
    if options.keep {
        let kept = tmp.keep();
        println!("data kept in {}", kept.display());
    }
    if let Err(e) = &result {
        eprintln!("demo failed: {e:#}");
    }
    result
}

async fn demo_body(cluster: &mut LocalCluster, options: &DemoOptions) -> anyhow::Result<()> {
    let started = Instant::now();
    let leader = cluster.wait_for_leader(Duration::from_secs(15)).await?;
    println!(
        "leader elected: r{} ({}) after {:?}",
        leader + 1,
        cluster.client_addr(leader),
        started.elapsed()
    );

    // Closed-loop write-heavy load on the leader.
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let leader_addr = cluster.client_addr(leader);
    let mut tasks = Vec::new();
    for c in 0..options.clients {
        let (done, stop) = (Arc::clone(&done), Arc::clone(&stop));
        tasks.push(tokio::spawn(client_loop(c as u64, leader_addr, done, stop)));
    }
    let load_start = Instant::now();
    let mut last = 0;
    for s in 1..=options.seconds {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = done.load(Ordering::Relaxed);
        print!(
            "\r  t={s:>2}s  acked writes: {now:>9}  rate: {:>8} ops/s",
            now - last
        );
        let _ = std::io::stdout().flush();
        last = now;
    }
    stop.store(true, Ordering::Relaxed);
    let elapsed = load_start.elapsed();
    let mut latency = Histogram::<u64>::new(3)?;
    let mut acked: Vec<(u64, u64)> = Vec::new();
    for t in tasks {
        let run = t.await??;
        latency.add(&run.latency)?;
        acked.extend(run.acked);
    }
    println!();
    let total = acked.len() as f64;
    println!(
        "load: {} acked writes in {:.1}s = {:.0} ops/s; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        acked.len(),
        elapsed.as_secs_f64(),
        total / elapsed.as_secs_f64(),
        latency.value_at_quantile(0.5) as f64 / 1000.0,
        latency.value_at_quantile(0.99) as f64 / 1000.0,
        latency.max() as f64 / 1000.0,
    );

    // Leadership may have moved during the load: kill whoever leads now,
    // with SIGKILL (no clean shutdown, no flush).
    let leader = cluster.wait_for_leader(Duration::from_secs(15)).await?;
    println!("kill -9 the leader r{} ...", leader + 1);
    let killed_at = Instant::now();
    cluster.kill9(leader);
    let new_leader = cluster.wait_for_leader(Duration::from_secs(15)).await?;
    println!(
        "new leader: r{} after {:?}",
        new_leader + 1,
        killed_at.elapsed()
    );

    // Every acknowledged write must be there.
    let lost = verify(cluster.client_addr(new_leader), &acked).await?;
    if lost > 0 {
        anyhow::bail!(
            "{lost} of {} acknowledged writes are missing on the new leader",
            acked.len()
        );
    }
    println!(
        "verified: all {} acknowledged writes are readable on the new leader, 0 lost",
        acked.len()
    );

    if options.storage == StorageKind::Memory {
        println!(
            "storage = memory is not durable and takes no checkpoints: a restarted replica would \
             come back empty with nothing to catch up from, so the restart step is skipped"
        );
        println!("demo finished OK; stopping the cluster");
        return Ok(());
    }
    // Bring the old leader back and watch it catch up.
    let restarted = Instant::now();
    cluster.spawn(leader)?;
    let target = leader_commit(cluster, new_leader)
        .await
        .unwrap_or(Slot::ZERO);
    loop {
        if let Some(info) = cluster.info(leader, Duration::from_millis(300)).await {
            let applied = info_field(&info, "applied_index")
                .and_then(|v| v.parse().ok())
                .map_or(Slot::ZERO, Slot);
            if applied >= target {
                println!(
                    "restarted r{} recovered from its log and caught up to slot {applied} in {:?}",
                    leader + 1,
                    restarted.elapsed()
                );
                break;
            }
        }
        if restarted.elapsed() > Duration::from_secs(20) {
            anyhow::bail!(
                "restarted r{} did not catch up within 20 s (see {})",
                leader + 1,
                cluster.dir().display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("demo finished OK; stopping the cluster");
    Ok(())
}

async fn leader_commit(cluster: &LocalCluster, leader: usize) -> Option<Slot> {
    let info = cluster.info(leader, Duration::from_secs(1)).await?;
    info_field(&info, "commit_index")?.parse().ok().map(Slot)
}

fn key_of(client: u64, n: u64) -> String {
    format!("demo:{client}:{n}")
}

async fn client_loop(
    id: u64,
    mut addr: SocketAddr,
    done: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<ClientRun> {
    let mut run = ClientRun {
        acked: Vec::new(),
        latency: Histogram::new(3)?,
    };
    let mut client: Option<Client> = None;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let c = match client.as_mut() {
            Some(c) => c,
            None => match Client::connect(addr, Duration::from_secs(2)).await {
                Ok(c) => client.insert(c),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        n += 1;
        let key = key_of(id, n);
        let value = n.to_string();
        let t0 = Instant::now();
        match c.cmd(&[b"SET", key.as_bytes(), value.as_bytes()]).await {
            Ok(Frame::Simple(s)) if &s[..] == b"OK" => {
                run.latency.record(t0.elapsed().as_micros() as u64).ok();
                run.acked.push((id, n));
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok(f) => {
                if let Some(to) = moved_to(&f) {
                    addr = to;
                    client = None;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(_) => client = None,
        }
    }
    Ok(run)
}

/// Reads every acked key back (MGET in chunks); returns how many are wrong.
async fn verify(addr: SocketAddr, acked: &[(u64, u64)]) -> anyhow::Result<usize> {
    let mut client = Client::connect(addr, Duration::from_secs(5)).await?;
    let mut lost = 0;
    for chunk in acked.chunks(256) {
        let keys: Vec<String> = chunk.iter().map(|&(c, n)| key_of(c, n)).collect();
        let mut parts: Vec<&[u8]> = vec![b"MGET"];
        parts.extend(keys.iter().map(|k| k.as_bytes()));
        // A fresh leader may still be settling: retry a few times.
        let mut reply = None;
        for _ in 0..50 {
            match client.cmd(&parts).await {
                Ok(Frame::Array(Some(items))) => {
                    reply = Some(items);
                    break;
                }
                Ok(_) | Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    client = Client::connect(addr, Duration::from_secs(5)).await?;
                }
            }
        }
        let items = reply.context("the new leader did not answer MGET")?;
        for (item, &(_, n)) in items.iter().zip(chunk) {
            let ok = matches!(item, Frame::Bulk(Some(v)) if v[..] == *n.to_string().as_bytes());
            lost += usize::from(!ok);
        }
    }
    Ok(lost)
}
