//! The scale scenario (`cargo xtask bench --keys N`, issue #16): loads N
//! keys into a 3-replica cluster, keeps writing while the nodes checkpoint,
//! wipes one follower so that it catches up by checkpoint transfer, kill -9s
//! and restarts another, and reports write latency (overall and the longest
//! stall across a checkpoint), leader changes, RSS per node against the raw
//! data size, checkpoint duration and size, transfer rate and
//! restart-to-serving time, with an SVG plot of latency over time.
//!
//! Times come from two clocks: the writers time every SET on this
//! process's monotonic clock (relative to the steady phase's origin), and
//! the node logs carry wall-clock timestamps; the origin's wall-clock time
//! puts the logged checkpoints on the writers' axis (same machine, so the
//! skew is the few microseconds between the two clock reads).

use crate::cluster::Cluster;
use crate::keyload::{self, Keys, WriterReport};
use crate::nodelog::{self, Event, EventKind};
use crate::plot::{self, Marker, Shade};
use crate::procmem;
use crate::timeline::{self, Quantiles, Sample, Window};
use anyhow::Context;
use paxos_kv::client::{info_field, info_number, Client};
use paxos_kv::resp::Frame;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What to run.
#[derive(Clone, Debug)]
pub struct ScaleSpec {
    /// Keys to load (`key:0`..`key:<n-1>`).
    pub keys: u64,
    /// Value size, bytes.
    pub value_size: usize,
    /// Seconds of steady writing before the follower is wiped.
    pub steady: Duration,
    /// Loader connections and their pipeline depth.
    pub load_clients: usize,
    /// SETs in flight per loader connection.
    pub load_depth: usize,
    /// Steady-phase writer connections.
    pub writers: usize,
    /// SETs in flight per writer.
    pub writer_depth: usize,
    /// Where the plot goes.
    pub out_dir: PathBuf,
    /// How long a wiped or restarted node may take to catch up.
    pub catch_up_timeout: Duration,
}

/// INFO fields of one node that the monitor follows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// `leader`, `follower`, ...
    pub role: String,
    /// The ballot round it is in.
    pub ballot_round: u64,
    /// Highest chosen slot it knows.
    pub commit_index: u64,
    /// Highest slot it applied.
    pub applied_index: u64,
}

/// Parses the INFO fields [`NodeInfo`] needs; `None` if one is missing.
pub fn parse_info(info: &str) -> Option<NodeInfo> {
    let num = |k: &str| info_number(info, k);
    Some(NodeInfo {
        role: info_field(info, "role")?.to_string(),
        ballot_round: num("ballot_round")?,
        commit_index: num("commit_index")?,
        applied_index: num("applied_index")?,
    })
}

async fn node_info(addr: SocketAddr) -> Option<NodeInfo> {
    let timeout = Duration::from_millis(500);
    let mut c = Client::connect(addr, timeout).await.ok()?;
    match tokio::time::timeout(timeout, c.cmd(&[b"INFO"])).await {
        Ok(Ok(Frame::Bulk(Some(b)))) => parse_info(&String::from_utf8_lossy(&b)),
        _ => None,
    }
}

/// Who leads, as seen by polling: the node reporting `role:leader` with the
/// highest ballot round.
fn observed_leader(infos: &[Option<NodeInfo>]) -> Option<(usize, u64)> {
    infos
        .iter()
        .enumerate()
        .filter_map(|(i, n)| Some((i, n.as_ref()?)))
        .filter(|(_, n)| n.role == "leader")
        .map(|(i, n)| (i, n.ballot_round))
        .max_by_key(|&(_, b)| b)
}

/// Leader changes seen by polling every node's INFO every 100 ms.
#[derive(Debug, Default)]
struct Monitor {
    leader: Option<(usize, u64)>,
    changes: Vec<(usize, u64)>,
}

async fn monitor(addrs: Vec<SocketAddr>, stop: Arc<AtomicBool>, seen: Arc<Mutex<Monitor>>) {
    while !stop.load(Ordering::Relaxed) {
        let mut infos = Vec::with_capacity(addrs.len());
        for &a in &addrs {
            infos.push(node_info(a).await);
        }
        if let Some(now) = observed_leader(&infos) {
            let mut m = seen.lock().unwrap_or_else(|p| p.into_inner());
            match m.leader {
                Some(before) if before != now => m.changes.push(now),
                _ => {}
            }
            m.leader = Some(now);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls node `addr` until it answers INFO with `applied_index >= target`;
/// returns when it first answered and when it caught up.
async fn wait_caught_up(
    addr: SocketAddr,
    target: u64,
    timeout: Duration,
) -> anyhow::Result<(Duration, Duration)> {
    let start = Instant::now();
    let mut first_answer = None;
    while start.elapsed() < timeout {
        if let Some(info) = node_info(addr).await {
            first_answer.get_or_insert(start.elapsed());
            if info.applied_index >= target {
                return Ok((first_answer.unwrap_or_default(), start.elapsed()));
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    anyhow::bail!("{addr} did not apply slot {target} within {timeout:?}")
}

fn unix_us(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_micros() as u64
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Size of the newest `*.ckpt` file in `dir`, with its slot.
fn newest_checkpoint(dir: &Path) -> Option<(u64, u64)> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let slot = name.strip_suffix(".ckpt")?.parse::<u64>().ok()?;
            Some((slot, e.metadata().ok()?.len()))
        })
        .max()
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// Checkpoint windows on the writers' axis (µs from the origin), per node.
pub fn checkpoint_windows(events: &[Event], origin_unix_us: u64) -> Vec<Window> {
    events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::CheckpointDurable { duration_ms, .. } => {
                let end = e.at_unix_us.checked_sub(origin_unix_us)?;
                Some(Window {
                    start_us: end.saturating_sub(duration_ms * 1000),
                    end_us: end,
                })
            }
            _ => None,
        })
        .collect()
}

/// Runs the scenario on a started cluster and prints its report.
pub async fn run(cluster: &mut Cluster, spec: &ScaleSpec) -> anyhow::Result<()> {
    let n = cluster.procs().len();
    anyhow::ensure!(n >= 3, "the scale scenario needs 3 replicas or more");
    println!("load average at start: {}", load_average());
    let leader_addr = cluster.wait_for_leader(Duration::from_secs(60)).await?;
    let leader = cluster
        .index_of(leader_addr)
        .context("the leader is not one of ours")?;
    let addrs: Vec<SocketAddr> = (0..n).map(|i| cluster.procs().client_addr(i)).collect();
    let monitor_start_us = unix_us(SystemTime::now());
    let monitor_stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Monitor::default()));
    let monitor_task = tokio::spawn(monitor(
        addrs.clone(),
        Arc::clone(&monitor_stop),
        Arc::clone(&seen),
    ));
    println!("stable leader: node{}", leader + 1);

    // Load.
    let start = Instant::now();
    let never = Arc::new(AtomicBool::new(false));
    let loaders: Vec<_> = (0..spec.load_clients as u64)
        .map(|c| {
            let keys = Keys::Stride {
                next: c,
                stride: spec.load_clients as u64,
                end: spec.keys,
            };
            tokio::spawn(keyload::write_keys(
                leader_addr,
                keys,
                spec.load_depth,
                spec.value_size,
                Arc::clone(&never),
                None,
            ))
        })
        .collect();
    let mut loaded = WriterReport::default();
    for l in loaders {
        loaded.absorb(l.await?);
    }
    let load_secs = start.elapsed().as_secs_f64();
    println!(
        "loaded {} keys in {load_secs:.1} s: {:.0} SET/s, errors={}{}",
        loaded.ok,
        loaded.ok as f64 / load_secs,
        loaded.errors,
        loaded
            .first_error
            .as_deref()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
    anyhow::ensure!(
        loaded.ok == spec.keys,
        "only {} of {} keys loaded",
        loaded.ok,
        spec.keys
    );

    // Steady writers, on until the faults below are over.
    let origin = Instant::now();
    let origin_unix_us = unix_us(SystemTime::now());
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..spec.writers as u64)
        .map(|w| {
            let keys = Keys::Random {
                n: spec.keys,
                state: 0x9e37_79b9_7f4a_7c15 ^ (w + 1).wrapping_mul(0x2545_f491_4f6c_dd1d),
            };
            tokio::spawn(keyload::write_keys(
                leader_addr,
                keys,
                spec.writer_depth,
                spec.value_size,
                Arc::clone(&stop),
                Some(origin),
            ))
        })
        .collect();
    tokio::time::sleep(spec.steady).await;
    let steady_end_us = origin.elapsed().as_micros() as u64;

    // RSS against the raw data.
    let raw = procmem::raw_key_value_bytes(spec.keys, spec.value_size as u64);
    let rss: Vec<Option<u64>> = cluster
        .node_pids()
        .iter()
        .map(|p| p.as_deref().and_then(procmem::rss_bytes))
        .collect();

    // Wipe one follower: it must catch up by checkpoint transfer. The
    // leader is looked up again: it may have changed since the start.
    let leader_addr = cluster.wait_for_leader(Duration::from_secs(60)).await?;
    let leader = cluster
        .index_of(leader_addr)
        .context("the leader is not one of ours")?;
    let followers: Vec<usize> = (0..n).filter(|&i| i != leader).collect();
    let (wiped, restarted) = (followers[0], followers[1]);
    let mut markers = Vec::new();
    let target = node_info(leader_addr)
        .await
        .context("leader INFO")?
        .commit_index;
    let wipe_at = Instant::now();
    markers.push(Marker {
        at_us: origin.elapsed().as_micros() as u64,
        label: format!("wipe node{}", wiped + 1),
    });
    let wipe_unix_us = unix_us(SystemTime::now());
    cluster.procs_mut().kill9(wiped);
    let data = cluster.dir.join(format!("node{}", wiped + 1));
    if data.exists() {
        std::fs::remove_dir_all(&data).with_context(|| format!("wiping {}", data.display()))?;
    }
    cluster.procs_mut().spawn(wiped)?;
    let (_, wipe_catch_up) = wait_caught_up(
        addrs[wiped],
        target,
        spec.catch_up_timeout + wipe_at.elapsed(),
    )
    .await?;
    markers.push(Marker {
        at_us: origin.elapsed().as_micros() as u64,
        label: format!("node{} caught up", wiped + 1),
    });

    // Kill -9 and restart another follower: restart-to-serving.
    let target = node_info(leader_addr)
        .await
        .context("leader INFO")?
        .commit_index;
    markers.push(Marker {
        at_us: origin.elapsed().as_micros() as u64,
        label: format!("kill -9 node{}", restarted + 1),
    });
    cluster.procs_mut().kill9(restarted);
    cluster.procs_mut().spawn(restarted)?;
    let (restart_answer, restart_serving) =
        wait_caught_up(addrs[restarted], target, spec.catch_up_timeout).await?;

    // A little more steady writing, then stop everything.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let mut written = WriterReport::default();
    for w in writers {
        written.absorb(w.await?);
    }
    let WriterReport {
        ok,
        errors,
        first_error,
        mut samples,
    } = written;
    let end_us = origin.elapsed().as_micros() as u64;
    monitor_stop.store(true, Ordering::Relaxed);
    monitor_task.await?;
    samples.sort_unstable_by_key(|s| s.sent_us);

    // What the nodes logged.
    std::fs::create_dir_all(&spec.out_dir)
        .with_context(|| format!("creating {}", spec.out_dir.display()))?;
    let logs: Vec<Vec<Event>> = (0..n)
        .map(|i| {
            let text = std::fs::read_to_string(cluster.dir.join(format!("node{}.log", i + 1)))
                .unwrap_or_default();
            // Kept beside the report: the cluster directory is removed
            // when the run ends.
            let kept = spec
                .out_dir
                .join(format!("scale-{}-node{}.log", spec.keys, i + 1));
            if let Err(e) = std::fs::write(&kept, &text) {
                eprintln!("could not keep {}: {e}", kept.display());
            }
            nodelog::parse_log(&text)
        })
        .collect();
    let windows: Vec<Vec<Window>> = logs
        .iter()
        .map(|l| checkpoint_windows(l, origin_unix_us))
        .collect();
    let all_windows: Vec<Window> = windows.iter().flatten().copied().collect();
    let logged_leader_changes = logs
        .iter()
        .flatten()
        .filter(|e| e.at_unix_us > monitor_start_us)
        .filter(|e| matches!(e.kind, EventKind::PrimaryChanged { .. }))
        .count();
    let polled_leader_changes = seen.lock().unwrap_or_else(|p| p.into_inner()).changes.len();

    // Report.
    let steady = timeline::quantiles(&samples, 0, steady_end_us);
    let faults = timeline::quantiles(&samples, steady_end_us, end_us);
    let steady_samples: Vec<Sample> = samples
        .iter()
        .filter(|s| s.sent_us < steady_end_us)
        .copied()
        .collect();
    let steady_windows: Vec<Window> = all_windows
        .iter()
        .filter(|w| w.start_us < steady_end_us)
        .copied()
        .collect();
    let print_q = |name: &str, q: Quantiles| {
        println!(
            "{name}: {} writes, p50={:.2} ms p99={:.2} ms max={:.2} ms",
            q.count,
            q.p50_us as f64 / 1e3,
            q.p99_us as f64 / 1e3,
            q.max_us as f64 / 1e3
        )
    };
    println!(
        "steady writers: {} connections x depth {}, {ok} SETs ok, errors={errors}{}",
        spec.writers,
        spec.writer_depth,
        first_error
            .as_deref()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
    print_q(
        &format!("steady phase ({:.0} s)", spec.steady.as_secs_f64()),
        steady,
    );
    print_q("during wipe and restart", faults);
    println!(
        "checkpoints during the steady phase: {} (leader: {})",
        steady_windows.len(),
        windows[leader]
            .iter()
            .filter(|w| w.start_us < steady_end_us)
            .count()
    );
    match timeline::longest_stall(&steady_samples, &steady_windows) {
        Some((stall, w)) => println!(
            "longest write during a checkpoint: {:.2} ms, sent at {:.2} s ({} UTC) (checkpoint {:.2}-{:.2} s); longest outside checkpoints: {:.2} ms [target < 50 ms]",
            stall.latency_us as f64 / 1e3,
            stall.sent_us as f64 / 1e6,
            timeline::utc_time_of_day(origin_unix_us + stall.sent_us),
            w.start_us as f64 / 1e6,
            w.end_us as f64 / 1e6,
            timeline::longest_outside(&steady_samples, &steady_windows) as f64 / 1e3
        ),
        None => println!("longest write during a checkpoint: no checkpoint overlapped a write"),
    }
    if let Some((stall, _)) = timeline::longest_stall(&steady_samples, &windows[leader]) {
        println!(
            "longest write during a leader checkpoint: {:.2} ms",
            stall.latency_us as f64 / 1e3
        );
    }
    println!(
        "leader changes after the stable leader: {polled_leader_changes} by INFO polling, {logged_leader_changes} in the node logs [target 0]"
    );
    // Each change with what the nodes were doing then: a change inside a
    // checkpoint window points at the checkpoint, one outside at something
    // else (loading, the wipe, the host).
    let since_monitor: Vec<Vec<Window>> = logs
        .iter()
        .map(|l| checkpoint_windows(l, monitor_start_us))
        .collect();
    for (i, l) in logs.iter().enumerate() {
        for e in l.iter().filter(|e| e.at_unix_us > monitor_start_us) {
            let EventKind::PrimaryChanged { leader } = e.kind else {
                continue;
            };
            let at = e.at_unix_us - monitor_start_us;
            let checkpointing: Vec<String> = since_monitor
                .iter()
                .enumerate()
                .filter(|(_, w)| w.iter().any(|w| w.start_us <= at && at <= w.end_us))
                .map(|(j, _)| format!("node{}", j + 1))
                .collect();
            println!(
                "  node{} {} at {:.1} s after the stable leader (loading ended at {:.1} s); checkpoints running then: {}",
                i + 1,
                if leader { "became leader" } else { "stopped leading" },
                at as f64 / 1e6,
                origin_unix_us.saturating_sub(monitor_start_us) as f64 / 1e6,
                if checkpointing.is_empty() {
                    "none".to_string()
                } else {
                    checkpointing.join(", ")
                }
            );
        }
    }
    for (i, l) in logs.iter().enumerate() {
        let durations: Vec<u64> = l
            .iter()
            .filter(|e| e.at_unix_us > origin_unix_us.saturating_sub((load_secs * 1e6) as u64))
            .filter_map(|e| match e.kind {
                EventKind::CheckpointDurable { duration_ms, .. } => Some(duration_ms),
                _ => None,
            })
            .collect();
        let newest = newest_checkpoint(&cluster.dir.join(format!("node{}/checkpoints", i + 1)));
        println!(
            "node{}: checkpoints since load began: {}, duration ms min/max {}/{}, newest file {}",
            i + 1,
            durations.len(),
            durations.iter().min().copied().unwrap_or(0),
            durations.iter().max().copied().unwrap_or(0),
            newest
                .map(|(slot, b)| format!("slot {slot}: {:.1} MB", mb(b)))
                .unwrap_or_else(|| "none".into())
        );
    }
    let raw_mb = mb(raw);
    for (i, r) in rss.iter().enumerate() {
        match r {
            Some(b) => println!(
                "node{} RSS after the steady phase: {:.0} MB = {:.2}x the raw {raw_mb:.0} MB of keys+values ({:.0} B/key) [target <= 2x]",
                i + 1,
                mb(*b),
                *b as f64 / raw as f64,
                *b as f64 / spec.keys as f64
            ),
            None => println!("node{} RSS: process not found", i + 1),
        }
    }
    println!(
        "wiped node{}: caught up to slot {} in {:.2} s",
        wiped + 1,
        target,
        wipe_catch_up.as_secs_f64()
    );
    for e in logs[wiped].iter().filter(|e| e.at_unix_us > wipe_unix_us) {
        if let EventKind::CheckpointReceived {
            slot,
            bytes,
            duration_ms,
        } = e.kind
        {
            println!(
                "  checkpoint transfer: slot {slot}, {:.1} MB in {duration_ms} ms = {:.0} MB/s [target >= 200 MB/s]",
                mb(bytes),
                mb(bytes) / (duration_ms.max(1) as f64 / 1e3)
            );
        }
    }
    println!(
        "restarted node{} (kill -9): answered INFO after {:.2} s, serving (applied >= leader's commit at the kill) after {:.2} s",
        restarted + 1,
        restart_answer.as_secs_f64(),
        restart_serving.as_secs_f64()
    );
    for e in logs[restarted].iter().rev() {
        if let EventKind::Recovered {
            checkpoint,
            accepted,
        } = e.kind
        {
            println!("  it recovered from checkpoint {checkpoint} with {accepted} accepted decrees in its log");
            break;
        }
    }
    println!("load average at end: {}", load_average());

    std::fs::create_dir_all(&spec.out_dir)?;
    let svg = spec.out_dir.join(format!("scale-{}.svg", spec.keys));
    let shades: Vec<Shade> = windows
        .iter()
        .enumerate()
        .flat_map(|(node, ws)| ws.iter().map(move |&window| Shade { window, node }))
        .collect();
    plot::write_svg(
        &svg,
        &format!(
            "paxos-kv, {} keys x {} B: worst SET latency per 100 ms, checkpoints shaded",
            spec.keys, spec.value_size
        ),
        &timeline::max_per_bucket(&samples, 100_000),
        &shades,
        &markers,
    )?;
    println!("plot: {}", svg.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_fields_parse() {
        let info = "# Replication\r\nrole:leader\r\nballot_round:7\r\ncommit_index:120\r\napplied_index:119\r\ncheckpoint_slot:100\r\n";
        assert_eq!(
            parse_info(info),
            Some(NodeInfo {
                role: "leader".into(),
                ballot_round: 7,
                commit_index: 120,
                applied_index: 119
            })
        );
        assert_eq!(parse_info("role:leader\r\nballot_round:x\r\n"), None);
    }

    #[test]
    fn the_leader_is_the_highest_ballot_claiming_it() {
        let node = |role: &str, ballot_round| {
            Some(NodeInfo {
                role: role.into(),
                ballot_round,
                commit_index: 0,
                applied_index: 0,
            })
        };
        // A deposed leader that has not heard yet still says leader.
        let infos = [
            node("leader", 3),
            None,
            node("leader", 5),
            node("follower", 9),
        ];
        assert_eq!(observed_leader(&infos), Some((2, 5)));
        assert_eq!(observed_leader(&[None, node("follower", 1)]), None);
    }

    #[test]
    fn checkpoint_windows_end_at_the_log_line_and_skip_earlier_ones() {
        let ev = |at_unix_us, duration_ms| Event {
            at_unix_us,
            kind: EventKind::CheckpointDurable {
                slot: 1,
                duration_ms,
            },
        };
        let events = [
            ev(500, 0),
            ev(1_000_000 + 3_000_000, 250),
            Event {
                at_unix_us: 2_000_000,
                kind: EventKind::PrimaryChanged { leader: true },
            },
            ev(1_000_000 + 100_000, 900),
        ];
        assert_eq!(
            checkpoint_windows(&events, 1_000_000),
            vec![
                Window {
                    start_us: 2_750_000,
                    end_us: 3_000_000
                },
                // Began before the origin: clipped to it.
                Window {
                    start_us: 0,
                    end_us: 100_000
                },
            ]
        );
    }
}
