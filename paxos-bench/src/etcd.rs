//! Runs etcd side by side, with the scripts in `../shared/peers/etcd/`, and
//! parses their result lines.

use std::path::{Path, PathBuf};
use std::process::Command;

/// One etcd measurement point.
#[derive(Debug, Clone, PartialEq)]
pub struct EtcdPoint {
    /// Concurrent clients (one request in flight each).
    pub clients: usize,
    /// Operations per second.
    pub ops_per_sec: f64,
    /// Median latency, microseconds.
    pub p50_us: u64,
    /// 99th percentile latency, microseconds.
    pub p99_us: u64,
    /// 99.9th percentile latency, microseconds.
    pub p999_us: u64,
}

/// Where the etcd peer scripts are expected, relative to the workspace root.
pub fn default_peer_dir(workspace_root: &Path) -> PathBuf {
    workspace_root.join("../shared/peers/etcd")
}

/// Parses a line such as
/// `etcd clients=64 value=100B writes=100% ops/s=8900 p50=6620us p99=19200us p999=30200us`.
pub fn parse_line(line: &str) -> Option<EtcdPoint> {
    if !line.starts_with("etcd ") {
        return None;
    }
    let field = |name: &str| -> Option<&str> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name).and_then(|r| r.strip_prefix('=')))
    };
    let us = |name: &str| -> Option<u64> { field(name)?.trim_end_matches("us").parse().ok() };
    Some(EtcdPoint {
        clients: field("clients")?.parse().ok()?,
        ops_per_sec: field("ops/s")?.parse().ok()?,
        p50_us: us("p50")?,
        p99_us: us("p99")?,
        p999_us: us("p999")?,
    })
}

/// Runs `bench.sh` for the given client counts and seconds per point.
///
/// Fails with instructions when the peer scripts are missing.
pub fn run(
    peer_dir: &Path,
    clients: &[usize],
    seconds: u64,
    value_bytes: usize,
) -> anyhow::Result<Vec<EtcdPoint>> {
    let script = peer_dir.join("bench.sh");
    if !script.exists() {
        anyhow::bail!(
            "etcd peer scripts not found at {}. Get them by placing the shared peers folder next to the \
             checkout (../shared/peers/etcd/bench.sh), or install etcd yourself (apt-get install etcd-server \
             etcd-client) and run its benchmark with the same workload: 100 B puts, closed loop.",
            script.display()
        );
    }
    let list: Vec<String> = clients.iter().map(|c| c.to_string()).collect();
    let out = Command::new("bash")
        .arg(&script)
        .arg(seconds.to_string())
        .env("CLIENTS", list.join(" "))
        .env("VALUE_BYTES", value_bytes.to_string())
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        anyhow::bail!(
            "etcd bench failed ({}): {}{}",
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let points: Vec<EtcdPoint> = stdout.lines().filter_map(parse_line).collect();
    anyhow::ensure!(
        !points.is_empty(),
        "etcd bench printed no result lines: {stdout}"
    );
    Ok(points)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_loadgen_line() {
        let p = parse_line(
            "etcd clients=64 value=100B writes=100% ops/s=8900 p50=6620us p99=19200us p999=30200us",
        )
        .unwrap();
        assert_eq!(
            p,
            EtcdPoint {
                clients: 64,
                ops_per_sec: 8900.0,
                p50_us: 6620,
                p99_us: 19200,
                p999_us: 30200
            }
        );
        assert_eq!(parse_line("something else"), None);
        assert_eq!(parse_line("etcd clients=x"), None);
    }
}
