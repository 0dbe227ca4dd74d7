//! What one `write` + `fdatasync` of a log append costs on this machine's
//! disk, in a file that grows with each append (the plain segment), in a
//! file whose blocks were only `fallocate`d (unwritten extents), and in a
//! file zero-filled ahead of time (a preallocated segment); and what
//! zero-filling a segment costs, with and without `fallocate` first.
//!
//! ```text
//! cargo run --release -p paxos-log --example prealloc_fsync -- [DIR] [APPENDS] [ROUNDS]
//! ```
//!
//! DIR (default: a temporary directory under the current one, so on the
//! disk the log would use), APPENDS per file and size (default 1000),
//! ROUNDS of every variant, interleaved (default 3).

use paxos_log::fs::{FileSystem, OsFs, WritableFile};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Bytes per segment file.
const SEGMENT: u64 = 64 << 20;

#[derive(Clone, Copy, Debug)]
enum Layout {
    /// Created empty; each append extends it.
    Grow,
    /// `fallocate`d to full size (unwritten extents), appends in place.
    Fallocated,
    /// Zero-filled (fallocate, then zeros written) and synced, appends in place.
    Zeroed,
}

fn open(path: &Path, layout: Layout) -> Box<dyn WritableFile> {
    let fs = OsFs;
    let mut file = fs.create(path).expect("create");
    match layout {
        Layout::Grow => {}
        Layout::Fallocated => {
            use std::os::fd::AsRawFd;
            let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
            // SAFETY: a plain syscall on a descriptor owned here.
            let r = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, SEGMENT as i64) };
            assert_eq!(r, 0, "fallocate: {}", std::io::Error::last_os_error());
            f.sync_all().unwrap();
        }
        Layout::Zeroed => {
            file.zero_fill_to(SEGMENT).expect("zero fill");
            file.sync_data().expect("sync");
        }
    }
    file
}

/// Microseconds of each write + fdatasync of `appends` appends of `size`.
fn run(path: &Path, layout: Layout, appends: usize, size: usize) -> Vec<u64> {
    let mut file = open(path, layout);
    let buf = vec![0xA5u8; size];
    let mut micros = Vec::with_capacity(appends);
    for _ in 0..appends {
        let t = Instant::now();
        file.write_all(&buf).unwrap();
        file.sync_data().unwrap();
        micros.push(t.elapsed().as_micros() as u64);
    }
    drop(file);
    std::fs::remove_file(path).unwrap();
    micros
}

/// Milliseconds to make a zero-filled, synced segment: through
/// `zero_fill_to` (fallocate, then zeros), or zeros written alone.
fn prepare(path: &Path, fallocate_first: bool) -> f64 {
    let t = Instant::now();
    if fallocate_first {
        let mut f = OsFs.create(path).unwrap();
        f.zero_fill_to(SEGMENT).unwrap();
        f.sync_data().unwrap();
    } else {
        let mut f = OsFs.create(path).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..SEGMENT / (1 << 20) {
            f.write_all(&zeros).unwrap();
        }
        f.sync_data().unwrap();
    }
    let ms = t.elapsed().as_secs_f64() * 1e3;
    std::fs::remove_file(path).unwrap();
    ms
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let base = args
        .first()
        .map(PathBuf::from)
        .unwrap_or_else(|| ".".into());
    let appends: usize = args.get(1).map_or(1000, |a| a.parse().expect("APPENDS"));
    let rounds: usize = args.get(2).map_or(3, |a| a.parse().expect("ROUNDS"));
    let dir = tempfile::Builder::new()
        .prefix("prealloc-fsync")
        .tempdir_in(&base)
        .expect("temp dir");
    let path = dir.path().join("segment");
    println!(
        "{:<10} {:>6} {:>5} {:>8} {:>8} {:>8} {:>8}",
        "layout", "bytes", "round", "mean_us", "p50_us", "p99_us", "max_us"
    );
    for round in 1..=rounds {
        for size in [256usize, 4096] {
            for layout in [Layout::Grow, Layout::Fallocated, Layout::Zeroed] {
                let mut m = run(&path, layout, appends, size);
                let mean = m.iter().sum::<u64>() / m.len() as u64;
                m.sort_unstable();
                println!(
                    "{:<10} {:>6} {:>5} {:>8} {:>8} {:>8} {:>8}",
                    format!("{layout:?}"),
                    size,
                    round,
                    mean,
                    pct(&m, 0.5),
                    pct(&m, 0.99),
                    m[m.len() - 1]
                );
            }
        }
        let with = prepare(&path, true);
        let without = prepare(&path, false);
        println!(
            "prepare a 64 MiB segment, round {round}: fallocate + zeros {with:.0} ms, zeros only {without:.0} ms"
        );
    }
}
