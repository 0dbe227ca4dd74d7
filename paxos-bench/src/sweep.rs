//! A throughput sweep's results as data: one point per concurrency, saved as
//! JSON beside its plot so that sweeps from separate runs (file, nvm,
//! memory storage, etcd) can be drawn on one chart later
//! (`paxos-bench plot --from a.json,b.json`).

use crate::cpu::CpuReport;
use crate::etcd::EtcdPoint;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One measurement point of a sweep.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SweepPoint {
    /// Concurrent client connections.
    pub clients: usize,
    /// Requests in flight per connection (1 for etcd's clients).
    pub depth: usize,
    /// Completed operations per second.
    pub ops_per_sec: f64,
    /// Median latency, microseconds.
    pub p50_us: u64,
    /// 99th percentile latency, microseconds.
    pub p99_us: u64,
    /// 99.9th percentile latency, microseconds.
    pub p999_us: u64,
    /// Error replies (not counted in `ops_per_sec`).
    #[serde(default)]
    pub errors: u64,
    /// CPU per operation, when it was measured.
    #[serde(default)]
    pub cpu: Option<CpuPerOp>,
    /// The machine's 1-minute load average when the point ended: the host
    /// is shared, so a point is only comparable with the load beside it.
    #[serde(default)]
    pub load_average: Option<f64>,
}

impl SweepPoint {
    /// Requests in flight over all connections.
    pub fn in_flight(&self) -> usize {
        self.clients * self.depth
    }

    /// The concurrency as written on the plot and in tables: `64×16`, or
    /// `256` for one request per connection.
    pub fn concurrency_label(&self) -> String {
        if self.depth == 1 {
            self.clients.to_string()
        } else {
            format!("{}×{}", self.clients, self.depth)
        }
    }

    /// An etcd point (one request in flight per client; CPU not measured).
    pub fn from_etcd(p: &EtcdPoint, load_average: Option<f64>) -> Self {
        SweepPoint {
            clients: p.clients,
            depth: 1,
            ops_per_sec: p.ops_per_sec,
            p50_us: p.p50_us,
            p99_us: p.p99_us,
            p999_us: p.p999_us,
            errors: 0,
            cpu: None,
            load_average,
        }
    }
}

/// CPU microseconds per operation over one point, summarised from a
/// [`CpuReport`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CpuPerOp {
    /// The leader node.
    pub leader: Option<f64>,
    /// The other nodes, in node order.
    pub followers: Vec<f64>,
    /// The load generator.
    pub loadgen: Option<f64>,
    /// Every node and the load generator together.
    pub total: f64,
    /// Fraction of the whole machine's CPU that was busy (any process).
    pub machine_busy: Option<f64>,
}

impl CpuPerOp {
    /// The summary of `report`.
    pub fn from_report(report: &CpuReport) -> Self {
        let leader = report
            .leader
            .and_then(|i| report.nodes.get(i).copied().flatten());
        let followers = report
            .nodes
            .iter()
            .enumerate()
            .filter(|&(i, _)| Some(i) != report.leader)
            .filter_map(|(_, v)| *v)
            .collect();
        CpuPerOp {
            leader,
            followers,
            loadgen: report.loadgen,
            total: report.total(),
            machine_busy: report.machine_busy,
        }
    }
}

/// A whole sweep of one system and configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sweep {
    /// The name of its series on a plot, e.g. `paxos-kv file`.
    pub label: String,
    /// `paxos-kv` or `etcd`.
    pub system: String,
    /// Storage: `file`, `nvm (emulated-pm)`, `memory`, or the peer's own.
    pub storage: String,
    /// Value size in bytes.
    pub value_bytes: usize,
    /// Percentage of writes.
    pub write_percent: u8,
    /// Seconds measured per point.
    pub seconds_per_point: u64,
    /// When the sweep ended, seconds since the Unix epoch (for the record).
    #[serde(default)]
    pub finished_unix_s: Option<u64>,
    /// The points, in the order measured.
    pub points: Vec<SweepPoint>,
}

impl Sweep {
    /// The point with the most ops/s.
    pub fn peak(&self) -> Option<&SweepPoint> {
        self.points
            .iter()
            .max_by(|a, b| a.ops_per_sec.total_cmp(&b.ops_per_sec))
    }

    /// The point with exactly `in_flight` requests in flight.
    pub fn at_in_flight(&self, in_flight: usize) -> Option<&SweepPoint> {
        self.points.iter().find(|p| p.in_flight() == in_flight)
    }

    /// Checks what a plot relies on, so a hand-edited or truncated file is
    /// reported by name rather than drawn wrongly.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.label.is_empty(), "the sweep has an empty label");
        anyhow::ensure!(
            !self.points.is_empty(),
            "sweep `{}` has no points",
            self.label
        );
        for p in &self.points {
            anyhow::ensure!(
                p.clients > 0 && p.depth > 0,
                "sweep `{}`: a point has {} clients x depth {}; both must be positive",
                self.label,
                p.clients,
                p.depth
            );
            anyhow::ensure!(
                p.ops_per_sec.is_finite() && p.ops_per_sec >= 0.0,
                "sweep `{}` at {}: ops/s {} is not a finite non-negative number",
                self.label,
                p.concurrency_label(),
                p.ops_per_sec
            );
            anyhow::ensure!(
                p.p50_us <= p.p99_us,
                "sweep `{}` at {}: p50 {} us is above p99 {} us",
                self.label,
                p.concurrency_label(),
                p.p50_us,
                p.p99_us
            );
        }
        Ok(())
    }

    /// Writes the sweep as pretty JSON.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let json = serde_json::to_string_pretty(self)?;
        std::fs::write(path, json + "\n")
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))
    }

    /// Reads and validates a sweep written by [`Sweep::save`].
    pub fn load(path: &Path) -> anyhow::Result<Sweep> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading sweep {}: {e}", path.display()))?;
        let sweep: Sweep = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{} is not a saved sweep: {e}", path.display()))?;
        sweep
            .validate()
            .map_err(|e| anyhow::anyhow!("{}: {e:#}", path.display()))?;
        Ok(sweep)
    }
}

/// One line comparing the peaks of `ours` and `peer`, and `ours` at the
/// peer's peak number of requests in flight (when it measured that point).
pub fn best_vs_best(ours: &Sweep, peer: &Sweep) -> Option<String> {
    let (a, b) = (ours.peak()?, peer.peak()?);
    let mut line = format!(
        "best vs best: {} {:.0} ops/s at {} (p50 {} us, p99 {} us) vs {} {:.0} ops/s at {} (p50 {} us, p99 {} us): {:.1}x",
        ours.label,
        a.ops_per_sec,
        a.concurrency_label(),
        a.p50_us,
        a.p99_us,
        peer.label,
        b.ops_per_sec,
        b.concurrency_label(),
        b.p50_us,
        b.p99_us,
        a.ops_per_sec / b.ops_per_sec.max(1.0)
    );
    if let Some(same) = ours.at_in_flight(b.in_flight()) {
        line.push_str(&format!(
            "; {} at the same {} in flight ({}): {:.0} ops/s, p50 {} us, p99 {} us: {:.1}x",
            ours.label,
            b.in_flight(),
            same.concurrency_label(),
            same.ops_per_sec,
            same.p50_us,
            same.p99_us,
            same.ops_per_sec / b.ops_per_sec.max(1.0)
        ));
    }
    Some(line)
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> Option<u64> {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

/// The 1-minute load average from `/proc/loadavg`.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A sweep with one point per `(clients, depth, ops/s, p50 µs, p99 µs)`.
    pub(crate) fn sweep(label: &str, points: &[(usize, usize, f64, u64, u64)]) -> Sweep {
        Sweep {
            label: label.into(),
            system: "paxos-kv".into(),
            storage: "memory".into(),
            value_bytes: 100,
            write_percent: 100,
            seconds_per_point: 5,
            finished_unix_s: None,
            points: points
                .iter()
                .map(
                    |&(clients, depth, ops_per_sec, p50_us, p99_us)| SweepPoint {
                        clients,
                        depth,
                        ops_per_sec,
                        p50_us,
                        p99_us,
                        p999_us: p99_us * 2,
                        errors: 0,
                        cpu: None,
                        load_average: Some(1.5),
                    },
                )
                .collect(),
        }
    }

    #[test]
    fn a_saved_sweep_loads_back_equal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        let mut s = sweep("paxos-kv memory", &[(1, 16, 1000.0, 500, 900)]);
        s.points[0].cpu = Some(CpuPerOp {
            leader: Some(3.0),
            followers: vec![1.0, 1.5],
            loadgen: Some(0.5),
            total: 6.0,
            machine_busy: Some(0.9),
        });
        s.save(&path).unwrap();
        assert_eq!(Sweep::load(&path).unwrap(), s);
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.json");
        let e = Sweep::load(&missing).unwrap_err().to_string();
        assert!(e.contains("missing.json"), "{e}");

        let garbage = dir.path().join("garbage.json");
        std::fs::write(&garbage, "{\"label\": 3}").unwrap();
        let e = Sweep::load(&garbage).unwrap_err().to_string();
        assert!(e.contains("is not a saved sweep"), "{e}");

        let empty = dir.path().join("empty.json");
        sweep("x", &[]).save(&empty).unwrap();
        let e = format!("{:#}", Sweep::load(&empty).unwrap_err());
        assert!(e.contains("has no points"), "{e}");

        let inverted = dir.path().join("inverted.json");
        sweep("x", &[(4, 16, 10.0, 900, 500)])
            .save(&inverted)
            .unwrap();
        let e = format!("{:#}", Sweep::load(&inverted).unwrap_err());
        assert!(e.contains("above p99"), "{e}");
    }

    #[test]
    fn best_vs_best_compares_peaks_and_the_same_in_flight() {
        let ours = sweep(
            "paxos-kv file",
            &[
                (16, 16, 50_000.0, 4000, 9000),
                (64, 16, 80_000.0, 12_000, 30_000),
            ],
        );
        let mut etcd = sweep(
            "etcd",
            &[
                (256, 1, 9_000.0, 25_000, 80_000),
                (1024, 1, 10_000.0, 90_000, 200_000),
            ],
        );
        etcd.system = "etcd".into();
        let line = best_vs_best(&ours, &etcd).unwrap();
        assert!(line.contains("80000 ops/s at 64×16"), "{line}");
        assert!(line.contains("10000 ops/s at 1024 "), "{line}");
        assert!(line.contains("8.0x"), "{line}");
        assert!(line.contains("same 1024 in flight (64×16)"), "{line}");
        // No point of ours at etcd's in-flight count: only the peaks.
        let ours_small = sweep("p", &[(1, 16, 5_000.0, 3000, 4000)]);
        let line = best_vs_best(&ours_small, &etcd).unwrap();
        assert!(!line.contains("same"), "{line}");
    }

    #[test]
    fn cpu_summary_splits_leader_and_followers() {
        let report = CpuReport {
            nodes: vec![Some(1.0), Some(4.0), None],
            leader: Some(1),
            loadgen: Some(0.5),
            machine_busy: None,
            ops: 10,
        };
        let c = CpuPerOp::from_report(&report);
        assert_eq!(c.leader, Some(4.0));
        assert_eq!(c.followers, vec![1.0]);
        assert_eq!(c.total, 5.5);
    }
}
