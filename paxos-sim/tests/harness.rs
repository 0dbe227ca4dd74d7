//! The harness itself: panics inside the core become reported failures of
//! the seed (not test-process crashes), and the CLI-facing pieces behave.

use paxos_sim::{run, FailureKind, RunOptions, SimConfig, DEFAULT_STEPS};
use std::sync::Arc;

#[test]
fn a_panic_inside_a_replica_is_reported_as_a_failure_of_the_seed() {
    let mut cfg = SimConfig::new(4);
    cfg.steps = 100;
    cfg.hook = Some(Arc::new(|_n: &mut paxos_sim::SimNode| {
        panic!("planted panic for the harness test")
    }));
    let r = run(&cfg);
    let (failure, _) = r.failure.expect("the panic must be reported");
    assert_eq!(failure.kind, FailureKind::Panic);
    assert!(
        failure
            .detail
            .contains("planted panic for the harness test"),
        "{failure}"
    );
    assert!(
        failure.detail.contains("harness.rs"),
        "the location is captured: {failure}"
    );
}

#[test]
fn repro_commands_name_every_non_default_option() {
    let opts = RunOptions::default();
    assert_eq!(opts.repro_command(17), "cargo xtask sim --seed 17");
    let opts = RunOptions {
        replicas: Some(5),
        steps: 900,
        ..RunOptions::default()
    };
    assert_eq!(
        opts.repro_command(3),
        "cargo xtask sim --seed 3 --replicas 5 --steps 900"
    );
    assert_eq!(RunOptions::default().steps, DEFAULT_STEPS);
}

#[test]
fn every_run_injects_faults_and_commits() {
    let mut cfg = SimConfig::new(21);
    cfg.steps = 3_000;
    let r = run(&cfg);
    assert!(r.failure.is_none(), "{:?}", r.failure);
    assert!(r.steps >= 3_000);
    assert!(r.commits > 0 && r.acked_requests > 0, "{r:?}");
    assert!(r.faults.total() > 0, "{r:?}");
}
