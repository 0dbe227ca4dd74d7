//! What a write pays while a checkpoint holds a frozen view of a large
//! table (issue #16): loads N keys of 100-byte values into a `KeyMap`, then
//! for each round freezes it (as `KvStore::snapshot` does), walks the view
//! on another thread at a disk's pace as a checkpoint does (letting go of
//! each shard once walked, or with `HOLD=1` holding the whole view until the
//! end, as before), applies batches of 2,000 random SETs (about one decree
//! under load) every 20 ms meanwhile, and prints the freeze time, the first
//! batches, the worst batch and RSS. Usage:
//!
//! ```text
//! cargo run --release -p paxos-kv --example checkpoint_stall -- [keys] [rounds] [min batches]
//! ```
//!
//! `FORK=1` measures the alternative of Redis's `BGSAVE` instead: no
//! freeze; `fork()`, and the child walks the map at the same pace while the
//! parent applies the batches (the kernel copies each page the parent
//! writes, 2 MiB at a time where the heap has huge pages).
//!
//! `MXFAST0=1` turns glibc's fastbins off (`mallopt(M_MXFAST, 0)`), to see
//! how much of a stall is the allocator's. Results: docs/BENCHMARKS.md.
use paxos_kv::keymap::KeyMap;
use std::time::{Duration, Instant};
/// This process's resident memory in MB (0 if /proc cannot say).
fn rss() -> u64 {
    proc_field_mb("/proc/self/status", "VmRSS:")
}

/// The kB figure after `field` in the /proc file at `path`, in MB (0 if
/// /proc cannot say).
fn proc_field_mb(path: &str, field: &str) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

/// The `index`th argument as a number, or `default` when absent.
fn arg(index: usize, default: u64) -> u64 {
    match std::env::args().nth(index) {
        None => default,
        Some(a) => a.parse().unwrap_or_else(|_| {
            eprintln!("argument {index} must be a number, got {a:?}");
            std::process::exit(2)
        }),
    }
}

fn main() {
    let n = arg(1, 10_000_000).max(1);
    let rounds = arg(2, 3) as usize;
    let batches = arg(3, 50) as usize;
    if std::env::var_os("MXFAST0").is_some() {
        // SAFETY: mallopt has no preconditions. M_MXFAST is 1.
        unsafe { libc::mallopt(1, 0) };
        println!("fastbins off");
    }
    let mut m = KeyMap::default();
    let v = [7u8; 100];
    let t = Instant::now();
    for i in 0..n {
        m.set(format!("key:{i}").as_bytes(), &v);
    }
    println!(
        "load {:?} rss {} MB ({} B/key)",
        t.elapsed(),
        rss(),
        rss() * 1_000_000 / n
    );
    let mut x: u64 = 12345;
    let mut batch = |m: &mut KeyMap| {
        let t = Instant::now();
        for _ in 0..2000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let k = (x >> 33) % n;
            m.set(format!("key:{k}").as_bytes(), &v);
        }
        t.elapsed()
    };
    if std::env::var_os("FORK").is_some() {
        for round in 0..rounds {
            fork_round(round, &mut m, &mut batch, batches);
        }
        return;
    }
    for round in 0..rounds {
        let t = Instant::now();
        let mut f = m.freeze();
        let freeze = t.elapsed();
        // The checkpoint thread: walks the view as `KvSnapshot::write_to`
        // does, at the pace of a disk write (`PACE_MB` MB/s, default 250),
        // and either lets go of each shard as it goes (the node) or, with
        // `HOLD=1`, keeps the whole view until it has walked all of it.
        let hold = std::env::var_os("HOLD").is_some();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done_there = std::sync::Arc::clone(&done);
        let walker = std::thread::spawn(move || {
            let t = Instant::now();
            let mut pacer = Pacer::from_env();
            let mut step = |k: &[u8], v: &[u8], _| {
                pacer.walked(k, v);
                Ok::<(), ()>(())
            };
            if hold {
                let _ = f.visit(&mut step);
            } else {
                while f.drain(256, &mut step).unwrap_or(false) {}
            }
            let walked = t.elapsed();
            let t = Instant::now();
            drop(f);
            done_there.store(true, std::sync::atomic::Ordering::Release);
            (walked, t.elapsed())
        });
        let mut worst = Duration::ZERO;
        let mut total = Duration::ZERO;
        let mut first = Vec::new();
        let mut b = 0;
        let peak = {
            let mut peak = 0;
            while !done.load(std::sync::atomic::Ordering::Acquire) || b < batches {
                let e = batch(&mut m);
                total += e;
                worst = worst.max(e);
                if b < 3 {
                    first.push(e);
                }
                b += 1;
                if b % 10 == 0 {
                    peak = peak.max(rss());
                }
                // About the node's pace under load: 2,000 writes per 20 ms.
                std::thread::sleep(Duration::from_millis(20).saturating_sub(e));
            }
            peak
        };
        let (walked, dropped) = walker.join().expect("walker");
        let after = batch(&mut m);
        println!(
            "round {round} ({}): freeze {freeze:?}; walk {walked:?}; {b} batches of 2000 sets: first {first:?} total {total:?} worst {worst:?}; peak rss {peak} MB, now {} MB; drop view {dropped:?}; batch after {after:?}",
            if hold { "hold" } else { "drain" },
            rss()
        );
    }
}

/// One round of the `FORK=1` alternative: the child process walks the
/// table as a checkpoint would and exits; the parent applies batches until
/// it has, and prints the fork's own time, the batches, and how much memory
/// the kernel copied for the parent's writes (the child's private dirty
/// pages: it writes nothing itself, so every such page is a copy).
fn fork_round(
    round: usize,
    m: &mut KeyMap,
    batch: &mut impl FnMut(&mut KeyMap) -> Duration,
    batches: usize,
) {
    let t = Instant::now();
    // SAFETY: this process has one thread here (the walkers of earlier
    // rounds were joined), so the child inherits no lock held elsewhere.
    let pid = unsafe { libc::fork() };
    let forked = t.elapsed();
    if pid == 0 {
        let mut pacer = Pacer::from_env();
        for (k, v) in m.iter() {
            pacer.walked(k, v);
        }
        // SAFETY: leave without running the parent's destructors.
        unsafe { libc::_exit(0) };
    }
    assert!(pid > 0, "fork failed");
    let (mut worst, mut total, mut first, mut b, mut copied_mb) =
        (Duration::ZERO, Duration::ZERO, Vec::new(), 0, 0u64);
    loop {
        let mut status = 0;
        // SAFETY: waits for our own child without blocking.
        let done = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid;
        if done && b >= batches {
            break;
        }
        if !done && b % 10 == 0 {
            copied_mb = copied_mb.max(private_dirty_mb(pid));
        }
        let e = batch(m);
        total += e;
        worst = worst.max(e);
        if b < 3 {
            first.push(e);
        }
        b += 1;
        std::thread::sleep(Duration::from_millis(20).saturating_sub(e));
    }
    println!(
        "round {round} (fork): fork {forked:?}; walk {:?}; {b} batches of 2000 sets: first {first:?} total {total:?} worst {worst:?}; copied for the parent's writes (child's private dirty) up to {copied_mb} MB; parent rss {} MB",
        t.elapsed(),
        rss()
    );
}

/// A process's private dirty memory in MB (0 if /proc cannot say).
fn private_dirty_mb(pid: i32) -> u64 {
    proc_field_mb(&format!("/proc/{pid}/smaps_rollup"), "Private_Dirty:")
}

/// Keeps a walk of the table at a disk's pace: `PACE_MB` MB/s (default
/// 250) of encoded entries, checked every MiB.
struct Pacer {
    started: Instant,
    /// Bytes per microsecond (= MB/s).
    pace: u64,
    bytes: u64,
    next_pause: u64,
}

impl Pacer {
    fn from_env() -> Pacer {
        let pace = std::env::var("PACE_MB")
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(250u64)
            .max(1);
        Pacer {
            started: Instant::now(),
            pace,
            bytes: 0,
            next_pause: 1 << 20,
        }
    }

    /// Counts one entry as a checkpoint encodes it, sleeping when ahead.
    fn walked(&mut self, key: &[u8], value: &[u8]) {
        self.bytes += (16 + key.len() + value.len()) as u64;
        if self.bytes >= self.next_pause {
            self.next_pause += 1 << 20;
            let due = Duration::from_micros(self.bytes / self.pace);
            if let Some(wait) = due.checked_sub(self.started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
}
