//! Membership changes under faults: they happen, complete, and known
//! failing schedules stay fixed.

use paxos_sim::{run, run_many, RunOptions, SimConfig};

#[test]
fn seeds_with_reconfiguration_change_membership_and_pass() {
    let opts = RunOptions {
        start_seed: 500,
        seeds: 40,
        steps: 4_000,
        jobs: 2,
        reconfigure: Some(true),
        ..RunOptions::default()
    };
    let summary = run_many(&opts, &|_| {});
    let failures: Vec<String> = summary
        .failures
        .iter()
        .map(|r| format!("{}: {:?}", opts.repro_command(r.seed), r.failure))
        .collect();
    assert!(failures.is_empty(), "{failures:#?}");
    let f = summary.faults;
    assert!(f.reconfigurations_completed > 0, "{}", summary.line());
    assert!(f.spares_started > 0, "{}", summary.line());
    assert!(f.reconfiguration_calls >= f.reconfigurations_requested);
}

#[test]
fn seeds_without_reconfiguration_never_start_spares() {
    let mut cfg = SimConfig::new(52);
    cfg.steps = 2_000;
    cfg.reconfigure = Some(false);
    let r = run(&cfg);
    assert!(r.failure.is_none(), "{:?}", r.failure);
    assert_eq!(r.pool, r.replicas);
    assert_eq!(r.faults.reconfigurations_requested, 0);
}

#[test]
fn f5_learner_step_found_in_phase_1_stays_fixed() {
    // FINDINGS F5: seed 52 (reconfiguration drawn on) once made a new
    // leader propose over a chosen slot above a learner-only Reconfigure.
    let r = run(&SimConfig::new(52));
    assert!(r.failure.is_none(), "{:?}", r.failure);
    assert!(r.faults.reconfigurations_completed > 0);
    assert_eq!(r.pool, r.replicas + 2);
}
