//! Running many seeds, in parallel, and summarising them.

use crate::reads::{ClockDrift, SimReadMode};
use crate::sim::{run, FaultCounts, NodeHook, RunReport, SimConfig, DEFAULT_STEPS};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Which seeds to run and how.
#[derive(Clone)]
pub struct RunOptions {
    /// First seed.
    pub start_seed: u64,
    /// Number of seeds (`start_seed .. start_seed + seeds`).
    pub seeds: u64,
    /// Fixed cluster size, or `None` to let each seed choose 3 or 5.
    pub replicas: Option<usize>,
    /// Events in the fault phase of each run.
    pub steps: u64,
    /// Worker threads.
    pub jobs: usize,
    /// Print every event (useful with one seed).
    pub verbose: bool,
    /// Applied to every replica the simulator creates.
    pub hook: Option<NodeHook>,
    /// Stop handing out seeds after the first failure.
    pub stop_on_failure: bool,
    /// Membership changes in every seed (`Some(true)`), in none
    /// (`Some(false)`), or as each seed draws (`None`).
    pub reconfigure: Option<bool>,
    /// How `GET`s are served in every seed, or as each seed draws (`None`).
    pub reads: Option<SimReadMode>,
    /// Whether clocks keep to their configured drift bound.
    pub clock_drift: ClockDrift,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            start_seed: 0,
            seeds: 1,
            replicas: None,
            steps: DEFAULT_STEPS,
            jobs: 2,
            verbose: false,
            hook: None,
            stop_on_failure: false,
            reconfigure: None,
            reads: None,
            clock_drift: ClockDrift::WithinBound,
        }
    }
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("start_seed", &self.start_seed)
            .field("seeds", &self.seeds)
            .field("replicas", &self.replicas)
            .field("steps", &self.steps)
            .field("jobs", &self.jobs)
            .finish()
    }
}

impl RunOptions {
    /// The configuration of one seed.
    pub fn config(&self, seed: u64) -> SimConfig {
        let mut cfg = SimConfig::new(seed);
        cfg.replicas = self.replicas;
        cfg.steps = self.steps;
        cfg.verbose = self.verbose;
        cfg.hook = self.hook.clone();
        cfg.reconfigure = self.reconfigure;
        cfg.reads = self.reads;
        cfg.clock_drift = self.clock_drift;
        cfg
    }

    /// The command that reruns `seed` alone with these options.
    pub fn repro_command(&self, seed: u64) -> String {
        let mut cmd = format!("cargo xtask sim --seed {seed}");
        if let Some(n) = self.replicas {
            cmd.push_str(&format!(" --replicas {n}"));
        }
        if self.steps != DEFAULT_STEPS {
            cmd.push_str(&format!(" --steps {}", self.steps));
        }
        match self.reconfigure {
            Some(true) => cmd.push_str(" --reconfigure always"),
            Some(false) => cmd.push_str(" --reconfigure never"),
            None => {}
        }
        if let Some(mode) = self.reads {
            cmd.push_str(&format!(" --reads {}", read_mode_name(mode)));
        }
        if self.clock_drift == ClockDrift::BeyondBound {
            cmd.push_str(" --clock-drift beyond");
        }
        cmd
    }
}

/// The CLI name of a read path (`--reads`).
pub fn read_mode_name(mode: SimReadMode) -> &'static str {
    match mode {
        SimReadMode::Log => "log",
        SimReadMode::ReadIndex => "read-index",
        SimReadMode::Lease => "lease",
        SimReadMode::InOrder => "in-order",
    }
}

/// Totals over many runs.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// Seeds run.
    pub seeds_run: u64,
    /// Events processed.
    pub steps: u64,
    /// Slots chosen (summed over runs).
    pub commits: u64,
    /// Requests acknowledged (summed over runs).
    pub acked_requests: u64,
    /// Faults injected.
    pub faults: FaultCounts,
    /// Failing runs, by seed.
    pub failures: Vec<RunReport>,
}

impl Summary {
    /// The one-line summary printed at the end.
    pub fn line(&self) -> String {
        format!(
            "paxos-sim: {} seeds, {} steps, {} commits, {} acknowledged requests, {} operations checked for linearizability, {} faults injected ({} crashes, {} torn syncs, {} partitions/isolations/cuts, {} messages dropped, {} replayed, {} checkpoints, {} state transfers, {} catch-up chunks served from disk, {} starts on persistent memory, {} media corruptions, {} damaged starts, {} repairs, {} of {} membership changes completed ({} pending at the heal), {} spares started, {} unrequested changes), {} leader changes ({} unforced), {} linearizable reads without the log, {} follower reads checked for bounded staleness, {} reads refused or redirected, {} failures",
            self.seeds_run,
            self.steps,
            self.commits,
            self.acked_requests,
            self.faults.operations_checked,
            self.faults.total(),
            self.faults.crashes,
            self.faults.torn_persists,
            self.faults.partitions + self.faults.leader_isolations + self.faults.one_way_cuts,
            self.faults.messages_dropped,
            self.faults.messages_replayed,
            self.faults.checkpoints,
            self.faults.state_transfers,
            self.faults.fetches_served_from_disk,
            self.faults.pm_log_starts,
            self.faults.media_corruptions,
            self.faults.damaged_starts,
            self.faults.repairs_completed,
            self.faults.reconfigurations_completed,
            self.faults.reconfigurations_requested,
            self.faults.changes_pending_at_heal,
            self.faults.spares_started,
            self.faults.unrequested_membership_changes,
            self.faults.leader_changes,
            self.faults.unforced_leader_changes,
            self.faults.log_free_reads,
            self.faults.follower_reads,
            self.faults.reads_refused,
            self.failures.len()
        )
    }
}

/// Runs the seeds on `opts.jobs` threads. `on_report` sees every report as
/// it completes (from the worker threads, in completion order); the summary
/// lists failures in seed order.
pub fn run_many(opts: &RunOptions, on_report: &(dyn Fn(&RunReport) + Sync)) -> Summary {
    let next = AtomicU64::new(0);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let reports: Mutex<BTreeMap<u64, RunReport>> = Mutex::new(BTreeMap::new());
    let jobs = opts.jobs.max(1);
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| loop {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= opts.seeds {
                    return;
                }
                let seed = opts.start_seed.wrapping_add(i);
                let report = run(&opts.config(seed));
                on_report(&report);
                if report.failure.is_some() && opts.stop_on_failure {
                    stop.store(true, Ordering::Relaxed);
                }
                reports
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(seed, report);
            });
        }
    });
    let reports = reports.into_inner().unwrap_or_else(|e| e.into_inner());
    let mut summary = Summary::default();
    for (_, r) in reports {
        summary.seeds_run += 1;
        summary.steps += r.steps;
        summary.commits += r.commits;
        summary.acked_requests += r.acked_requests;
        summary.faults.add(&r.faults);
        if r.failure.is_some() {
            summary.failures.push(r);
        }
    }
    summary
}
