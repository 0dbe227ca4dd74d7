//! What a write pays while a checkpoint holds a frozen view of a large
//! table (issue #16): loads N keys of 100-byte values into a `KeyMap`, then
//! for each round freezes it (as `KvStore::snapshot` does), applies batches
//! of 2,000 random SETs (about one decree under load) while the view is
//! alive, drops the view, and prints the freeze time, the first batches,
//! the worst batch and RSS. Usage:
//!
//! ```text
//! cargo run --release -p paxos-kv --example checkpoint_stall -- [keys] [rounds] [batches]
//! ```
//!
//! `MXFAST0=1` turns glibc's fastbins off (`mallopt(M_MXFAST, 0)`), to see
//! how much of a stall is the allocator's. Results: docs/BENCHMARKS.md.
use paxos_kv::keymap::KeyMap;
use std::time::{Duration, Instant};
/// This process's resident memory in MB (0 if /proc cannot say).
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
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
    for round in 0..rounds {
        let t = Instant::now();
        let f = m.freeze();
        let freeze = t.elapsed();
        let mut worst = Duration::ZERO;
        let mut total = Duration::ZERO;
        let mut first = Vec::new();
        for b in 0..batches {
            let e = batch(&mut m);
            total += e;
            worst = worst.max(e);
            if b < 3 {
                first.push(e);
            }
        }
        let t = Instant::now();
        drop(f);
        let dropped = t.elapsed();
        let after = batch(&mut m);
        println!(
            "round {round}: freeze {freeze:?}; {batches} batches of 2000 sets: first {first:?} total {total:?} worst {worst:?}; rss {} MB; drop view {dropped:?}; batch after {after:?}",
            rss()
        );
    }
}
