//! Seeds that once failed (FINDINGS.md), replayed with the options that
//! found them. A seed's schedule shifts whenever the code under it changes,
//! so a seed guards its exact interleaving only while that lasts; the unit
//! test named beside each is what keeps its fix. They stay because they are
//! cheap and, unlike random seeds, were picked by a real failure.

use paxos_sim::{run, SimConfig};

fn passes(seed: u64, steps: u64) {
    let mut cfg = SimConfig::new(seed);
    cfg.steps = steps;
    let r = run(&cfg);
    assert!(
        r.failure.is_none(),
        "cargo xtask sim --seed {seed} --steps {steps}: {:?}",
        r.failure
    );
    assert!(r.acked_requests > 0, "seed {seed} did some work: {r:?}");
}

/// F9: voters with nothing to report preempted a long chunked phase 1
/// (paxos-core
/// `regression_idle_voters_wait_for_a_phase_1_longer_than_the_election_timeout`).
#[test]
fn f9_seed_706_elects_after_the_heal() {
    passes(706, 60_000);
}

/// F10: a transfer no longer needed left a timer in the past and the
/// driver spun (paxos-node
/// `a_transfer_no_longer_needed_is_dropped_when_it_stalls`).
#[test]
fn f10_seed_1130_does_not_spin() {
    passes(1130, 6_000);
}

/// F12: damage seen twice at one place kept the milder verdict (paxos-log
/// `damage_repeated_at_one_place_keeps_the_worse_verdict`).
#[test]
fn f12_seed_1642_repairs_after_repeated_damage() {
    passes(1642, paxos_sim::DEFAULT_STEPS);
}

/// F13: a core restarted by a checkpoint install counted unsynced votes as
/// durable (the drivers now sync first; paxos-node's install contract).
#[test]
fn f13_seed_50846_acknowledges_only_durable_votes_after_an_install() {
    passes(50_846, 60_000);
}

/// F14: a sector went bad between the checkpoint survey and the restore,
/// and the replica could not start (paxos-node
/// `a_checkpoint_that_fails_while_restoring_is_set_aside_for_an_older_one`).
#[test]
fn f14_seed_50687_starts_from_an_older_checkpoint() {
    passes(50_687, 60_000);
}

/// F15/F16: a transfer never asked the third member, and the leader kept
/// offering a damaged checkpoint (paxos-node
/// `a_peer_that_never_serves_is_passed_over_for_the_next_member`,
/// `a_checkpoint_found_damaged_while_serving_is_set_aside_and_retaken`).
#[test]
fn f15_seed_105160_gets_a_checkpoint_from_another_member() {
    passes(105_160, paxos_sim::DEFAULT_STEPS);
}

/// F17: every voter needed a snapshot nobody had, and nobody campaigned
/// (paxos-core
/// `voters_that_all_need_a_snapshot_nobody_has_elect_from_their_logs`).
#[test]
fn f17_seed_103821_elects_from_the_voters_logs() {
    passes(103_821, paxos_sim::DEFAULT_STEPS);
}
