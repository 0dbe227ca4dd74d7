//! The simulator has teeth: each bug planted in paxos-core (feature
//! `planted-bugs`, enabled by this crate's dev-dependency) is caught within
//! a bounded number of seeds, and the failing seed passes without the bug,
//! so the failure is the planted bug's doing.

use paxos_core::PlantedBug;
use paxos_sim::{run, Failure, FailureKind, SimConfig, SimReadMode, StateMachineBug};
use std::sync::Arc;

/// Seeds tried per bug before the test gives up. A hunt stops at the first
/// seed that catches its bug, so the bound costs nothing when the checkers
/// work; it only has to leave room for scenarios to shift (pre-vote moved
/// the reconfiguration bug's first catch from below 300 to seed 331).
const MAX_SEEDS: u64 = 1000;
/// Fault-phase steps per seed (short runs keep the debug-mode test fast).
const STEPS: u64 = 1_500;

/// Every planted bug. The match is exhaustive, so a new variant does not
/// compile until it is listed here (and therefore hunted).
fn every_bug_is_listed(bug: PlantedBug) -> &'static str {
    match bug {
        PlantedBug::SkipAdoptHighestAccepted => "SkipAdoptHighestAccepted",
        PlantedBug::AckBeforePersist => "AckBeforePersist",
        PlantedBug::QuorumHalf => "QuorumHalf",
        PlantedBug::ApplyUncheckedBallot => "ApplyUncheckedBallot",
        PlantedBug::ProposeAboveUnchosenReconfigure => "ProposeAboveUnchosenReconfigure",
        PlantedBug::SkipPreVote => "SkipPreVote",
        PlantedBug::LeaseNoWait => "LeaseNoWait",
        PlantedBug::DiskChunkOffByOne => "DiskChunkOffByOne",
        PlantedBug::ReadsAtOnce => "ReadsAtOnce",
    }
}

fn config(seed: u64, bug: Option<PlantedBug>) -> SimConfig {
    let mut cfg = SimConfig::new(seed);
    cfg.steps = STEPS;
    if bug == Some(PlantedBug::ProposeAboveUnchosenReconfigure) {
        // A membership-change bug needs membership changes in every seed
        // (without the bug too, so that the clean rerun is the same run).
        cfg.reconfigure = Some(true);
    }
    if bug == Some(PlantedBug::LeaseNoWait) {
        // A lease bug needs lease reads (clocks within their bound).
        cfg.reads = Some(SimReadMode::Lease);
    }
    if bug == Some(PlantedBug::ReadsAtOnce) {
        // Reads handed in with the writes.
        cfg.reads = Some(SimReadMode::InOrder);
    }
    if let Some(bug) = bug {
        cfg.hook = Some(Arc::new(move |n: &mut paxos_sim::SimNode| {
            n.plant_core_bug(bug)
        }));
    }
    cfg
}

/// The first seed at which the planted bug makes a safety check fail while
/// the same seed passes without it.
fn hunt(bug: PlantedBug) -> (u64, Failure) {
    let name = every_bug_is_listed(bug);
    let mut fails_without_bug = Vec::new();
    for seed in 0..MAX_SEEDS {
        let Some((failure, _)) = run(&config(seed, Some(bug))).failure else {
            continue;
        };
        if matches!(
            failure.kind,
            FailureKind::Liveness | FailureKind::UnforcedLeaderChange
        ) {
            // Every planted bug is a safety bug: demand that a safety
            // checker (or an assertion in the core) catches it.
            continue;
        }
        match run(&config(seed, None)).failure {
            None => {
                println!("{name}: caught at seed {seed} by {failure}");
                return (seed, failure);
            }
            Some((clean, _)) => fails_without_bug.push(format!("seed {seed}: {clean}")),
        }
    }
    panic!(
        "planted bug {name} was not caught within {MAX_SEEDS} seeds; seeds that failed even without it: {fails_without_bug:?}"
    );
}

#[test]
fn catches_skip_adopt_highest_accepted() {
    hunt(PlantedBug::SkipAdoptHighestAccepted);
}

#[test]
fn catches_ack_before_persist() {
    hunt(PlantedBug::AckBeforePersist);
}

#[test]
fn catches_quorum_half() {
    hunt(PlantedBug::QuorumHalf);
}

#[test]
fn catches_apply_unchecked_ballot() {
    hunt(PlantedBug::ApplyUncheckedBallot);
}

#[test]
fn catches_propose_above_unchosen_reconfigure() {
    let (_, failure) = hunt(PlantedBug::ProposeAboveUnchosenReconfigure);
    // The configuration-aware checker is what catches it: old voters'
    // votes decided a slot that the new voters govern.
    assert_eq!(failure.kind, FailureKind::Quorum, "{failure}");
}

/// The leader-stability checker has teeth: without pre-vote, some seed
/// elects a new leader while the old one had a steady quorum and no fault
/// (an unforced leader change), and that seed passes with pre-vote.
#[test]
fn catches_skip_pre_vote_as_an_unforced_leader_change() {
    let bug = PlantedBug::SkipPreVote;
    for seed in 0..MAX_SEEDS {
        let Some((failure, _)) = run(&config(seed, Some(bug))).failure else {
            continue;
        };
        if failure.kind != FailureKind::UnforcedLeaderChange {
            continue;
        }
        if let Some((clean, _)) = run(&config(seed, None)).failure {
            panic!("seed {seed} fails with pre-vote too: {clean}");
        }
        println!(
            "{}: caught at seed {seed} by {failure}",
            every_bug_is_listed(bug)
        );
        return;
    }
    panic!("no unforced leader change without pre-vote within {MAX_SEEDS} seeds");
}

/// A new leader that does not wait out the old leader's lease lets the old
/// one answer lease reads that miss what the new one committed: caught as
/// a stale read, and the same seed passes with the wait.
#[test]
fn catches_lease_no_wait() {
    let (_, failure) = hunt(PlantedBug::LeaseNoWait);
    assert_eq!(failure.kind, FailureKind::Linearizability, "{failure}");
}

/// A leader that answers a read handed in with writes from its state as
/// it stands, instead of at its place in a batch that is then chosen,
/// answers stale reads once deposed: caught, and the same seed passes
/// with the reads in place.
#[test]
fn catches_reads_at_once() {
    let (_, failure) = hunt(PlantedBug::ReadsAtOnce);
    assert_eq!(failure.kind, FailureKind::Linearizability, "{failure}");
}

/// A wrong chunk of decrees read back from storage for a lagging peer's
/// catch-up is caught: the peer applies values no quorum voted for at
/// those slots (and no other replica applied there).
#[test]
fn catches_disk_chunk_off_by_one() {
    let (_, failure) = hunt(PlantedBug::DiskChunkOffByOne);
    assert!(
        matches!(
            failure.kind,
            FailureKind::Quorum
                | FailureKind::Agreement
                | FailureKind::StateDivergence
                | FailureKind::Panic
        ),
        "{failure}"
    );
}

#[test]
fn a_caught_seed_reproduces() {
    // Rerunning the catching seed fails the same way: the repro command works.
    let (seed, failure) = hunt(PlantedBug::QuorumHalf);
    let again = run(&config(seed, Some(PlantedBug::QuorumHalf)));
    assert_eq!(again.failure.map(|(f, _)| f), Some(failure));
}

/// The first seed at which the state machine bug `bug` fails the run with
/// `expected`, while the same seed passes without it.
fn hunt_state_machine_bug(bug: StateMachineBug, expected: &[FailureKind]) -> u64 {
    for seed in 0..MAX_SEEDS {
        let mut cfg = SimConfig::new(seed);
        cfg.steps = STEPS;
        cfg.state_machine_bug = Some(bug);
        let Some((failure, _)) = run(&cfg).failure else {
            continue;
        };
        assert!(
            expected.contains(&failure.kind),
            "{bug:?} at seed {seed}: {failure}"
        );
        cfg.state_machine_bug = None;
        if run(&cfg).failure.is_none() {
            println!("{bug:?}: caught at seed {seed} by {failure}");
            return seed;
        }
    }
    panic!("state machine bug {bug:?} was not caught within {MAX_SEEDS} seeds");
}

#[test]
fn stale_reads_fail_the_linearizability_check() {
    // A follower read of a stale value fails its bounded-staleness check
    // first (seeds whose reads skip the log send some to followers).
    hunt_state_machine_bug(
        StateMachineBug::StaleReads,
        &[FailureKind::Linearizability, FailureKind::BoundedStaleness],
    );
}

#[test]
fn a_diverging_replica_fails_the_state_digest_check() {
    hunt_state_machine_bug(
        StateMachineBug::DivergeOnReplica1,
        &[FailureKind::StateDivergence],
    );
}

/// Protocol-aware recovery has teeth: with the repair skipped (a driver that
/// starts a replica whose storage lost acknowledged data as if nothing was
/// lost), the faulty replica's disk faults make a safety checker fail
/// within a bounded number of seeds, and each such seed passes with the
/// repair.
#[test]
fn skipping_the_repair_after_disk_damage_is_caught() {
    let mut caught = Vec::new();
    for seed in 0..2 * MAX_SEEDS {
        let mut cfg = SimConfig::new(seed);
        cfg.steps = 4 * STEPS;
        cfg.ignore_storage_damage = true;
        let Some((failure, _)) = run(&cfg).failure else {
            continue;
        };
        if failure.kind == FailureKind::Liveness {
            continue;
        }
        cfg.ignore_storage_damage = false;
        if let Some((clean, _)) = run(&cfg).failure {
            panic!("seed {seed} fails with the repair too: {clean}");
        }
        println!("skipped repair caught at seed {seed} by {failure}");
        caught.push(seed);
        if caught.len() >= 2 {
            return;
        }
    }
    panic!("skipping the repair was never caught (caught at {caught:?})");
}
