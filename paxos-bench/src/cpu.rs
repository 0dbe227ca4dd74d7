//! CPU time per operation, read from `/proc`.
//!
//! On a machine shared with other work, ops/s moves with whatever else runs,
//! but the CPU time the cluster and the load generator spend per operation
//! barely does. Each measurement point therefore also reports microseconds
//! of CPU per operation for every node process and the load generator, and
//! how busy the whole machine was, so a run disturbed by other processes can
//! be recognised as such.

use std::path::Path;

/// Clock ticks per second of `/proc` CPU counters (USER_HZ; 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

/// CPU ticks (user + system, all threads) a process has used so far, from
/// `/proc/<pid>/stat`; `None` if it is gone or unreadable.
pub fn process_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after it do not.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the full line, so 11 and 12
    // after the state field (field 3 is rest[0]).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Machine-wide (busy, total) ticks from the first line of `/proc/stat`.
pub fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    // idle + iowait
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// The pid of the running `paxos-kv node` whose command line names `config`.
pub fn pid_of_config(config: &Path) -> Option<String> {
    let needle = config.to_string_lossy().into_owned();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if cmdline
            .split(|&b| b == 0)
            .any(|arg| arg == needle.as_bytes())
        {
            return Some(name);
        }
    }
    None
}

/// A snapshot of the counters of the processes under measurement.
#[derive(Clone, Debug)]
pub struct CpuSnapshot {
    nodes: Vec<Option<u64>>,
    loadgen: Option<u64>,
    machine: Option<(u64, u64)>,
}

impl CpuSnapshot {
    /// Reads the counters of `node_pids` (index = node index), this process
    /// (the load generator) and the machine.
    pub fn take(node_pids: &[Option<String>]) -> Self {
        CpuSnapshot {
            nodes: node_pids
                .iter()
                .map(|p| p.as_deref().and_then(process_ticks))
                .collect(),
            loadgen: process_ticks("self"),
            machine: machine_ticks(),
        }
    }

    /// What was used between `self` (earlier) and `later`, per operation.
    pub fn per_op(&self, later: &CpuSnapshot, ops: u64, leader: Option<usize>) -> CpuReport {
        let us = |ticks: u64| ticks as f64 / TICKS_PER_SEC * 1e6 / ops.max(1) as f64;
        let nodes: Vec<Option<f64>> = self
            .nodes
            .iter()
            .zip(&later.nodes)
            .map(|(a, b)| Some(us(b.as_ref()?.saturating_sub(*a.as_ref()?))))
            .collect();
        let loadgen = match (self.loadgen, later.loadgen) {
            (Some(a), Some(b)) => Some(us(b.saturating_sub(a))),
            _ => None,
        };
        let machine_busy = match (self.machine, later.machine) {
            (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
                Some((b1 - b0) as f64 / (t1 - t0) as f64)
            }
            _ => None,
        };
        CpuReport {
            nodes,
            leader,
            loadgen,
            machine_busy,
            ops,
        }
    }
}

/// CPU microseconds per operation over one measurement point.
#[derive(Clone, Debug)]
pub struct CpuReport {
    /// Per node (index = node index); `None` if its counters were unreadable.
    pub nodes: Vec<Option<f64>>,
    /// Index of the leader node.
    pub leader: Option<usize>,
    /// The load generator (this process).
    pub loadgen: Option<f64>,
    /// Fraction of the whole machine's CPU that was busy (any process).
    pub machine_busy: Option<f64>,
    /// Operations completed.
    pub ops: u64,
}

impl CpuReport {
    /// CPU µs per op of the cluster and the load generator together.
    pub fn total(&self) -> f64 {
        self.nodes.iter().flatten().sum::<f64>() + self.loadgen.unwrap_or(0.0)
    }

    /// One line for the benchmark's output.
    pub fn line(&self) -> String {
        let mut out = String::from("cpu us/op:");
        for (i, n) in self.nodes.iter().enumerate() {
            let role = if Some(i) == self.leader {
                "leader"
            } else {
                "node"
            };
            match n {
                Some(v) => out.push_str(&format!(" {role}{}={v:.2}", i + 1)),
                None => out.push_str(&format!(" {role}{}=?", i + 1)),
            }
        }
        if let Some(l) = self.loadgen {
            out.push_str(&format!(" loadgen={l:.2}"));
        }
        out.push_str(&format!(" total={:.2}", self.total()));
        if let Some(busy) = self.machine_busy {
            out.push_str(&format!(" machine_busy={:.0}%", busy * 100.0));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process_and_the_machine() {
        let before = process_ticks("self").expect("own /proc/self/stat");
        // Burn a little CPU so the counter can move.
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let after = process_ticks("self").expect("own /proc/self/stat");
        assert!(after >= before);
        let (busy, total) = machine_ticks().expect("/proc/stat");
        assert!(busy <= total && total > 0);
    }

    #[test]
    fn per_op_divides_ticks_by_operations() {
        let a = CpuSnapshot {
            nodes: vec![Some(100), Some(50), None],
            loadgen: Some(10),
            machine: Some((1000, 2000)),
        };
        let b = CpuSnapshot {
            nodes: vec![Some(200), Some(100), Some(7)],
            loadgen: Some(30),
            machine: Some((1400, 2400)),
        };
        // 100 ticks = 1 s = 1e6 µs over 1e5 ops = 10 µs/op.
        let r = a.per_op(&b, 100_000, Some(0));
        assert_eq!(r.nodes, vec![Some(10.0), Some(5.0), None]);
        assert_eq!(r.loadgen, Some(2.0));
        assert_eq!(r.total(), 17.0);
        assert_eq!(r.machine_busy, Some(1.0));
        let line = r.line();
        assert!(
            line.contains("leader1=10.00") && line.contains("node3=?"),
            "{line}"
        );
    }
}
