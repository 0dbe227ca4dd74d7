//! Teeth: each planted bug really breaks safety, and the random fault
//! schedules of `props` find it. (The simulator in paxos-sim has its own
//! teeth tests; these keep the bugs faithful at the source.)

use super::props::{fault, run_schedule};
use crate::{PlantedBug, Replica};
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;

thread_local! {
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Searches deterministic random schedules until one makes the cluster
/// violate safety with `bug` planted in every replica. Returns how many
/// schedules it took.
fn schedules_until_safety_violation(bug: PlantedBug, max: usize) -> Option<usize> {
    // Keep the expected panics of this search out of the test output; other
    // tests' panics (they run on other threads) still print.
    QUIET.with(|q| q.set(true));
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !QUIET.with(|q| q.get()) {
            default_hook(info);
        }
    }));
    let mut runner = TestRunner::deterministic();
    let strategy = proptest::collection::vec(fault(), 50..300);
    let mut found = None;
    for i in 0..max {
        let schedule = strategy.new_tree(&mut runner).expect("strategy").current();
        let result = std::panic::catch_unwind(|| {
            run_schedule(&schedule, |r: &mut Replica| r.plant_bug(bug));
        });
        if let Err(payload) = result {
            let msg = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            let safety = ["SAFETY", "two values", "committed slot", "disagrees"];
            if safety.iter().any(|s| msg.contains(s)) {
                found = Some(i + 1);
                break;
            }
        }
    }
    QUIET.with(|q| q.set(false));
    found
}

#[test]
fn quorum_half_is_caught() {
    let n = schedules_until_safety_violation(PlantedBug::QuorumHalf, 3000);
    eprintln!("{:?}: {n:?}", PlantedBug::QuorumHalf);
    assert!(n.is_some());
}

#[test]
fn skip_adopt_highest_accepted_is_caught() {
    let n = schedules_until_safety_violation(PlantedBug::SkipAdoptHighestAccepted, 3000);
    eprintln!("{:?}: {n:?}", PlantedBug::SkipAdoptHighestAccepted);
    assert!(n.is_some());
}

#[test]
fn ack_before_persist_is_caught() {
    let n = schedules_until_safety_violation(PlantedBug::AckBeforePersist, 3000);
    eprintln!("{:?}: {n:?}", PlantedBug::AckBeforePersist);
    assert!(n.is_some());
}

#[test]
fn apply_unchecked_ballot_is_caught() {
    let n = schedules_until_safety_violation(PlantedBug::ApplyUncheckedBallot, 3000);
    eprintln!("{:?}: {n:?}", PlantedBug::ApplyUncheckedBallot);
    assert!(n.is_some());
}

#[test]
fn propose_above_unchosen_reconfigure_is_caught() {
    let n = schedules_until_safety_violation(PlantedBug::ProposeAboveUnchosenReconfigure, 3000);
    eprintln!("{:?}: {n:?}", PlantedBug::ProposeAboveUnchosenReconfigure);
    assert!(n.is_some());
}

/// A wrong chunk read back from storage reaches a lagging peer, and the
/// cluster's check that no two replicas apply different values at one slot
/// catches it.
#[test]
fn disk_chunk_off_by_one_is_caught() {
    let (mut c, [leader, helper, lagger], _) = super::catchup::lagging_behind_the_retained_log();
    c.replica(leader).plant_bug(PlantedBug::DiskChunkOffByOne);
    c.replica(helper).plant_bug(PlantedBug::DiskChunkOffByOne);
    c.heal();
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        c.run_until(1_000_000, |c| {
            c.status(lagger).applied_index >= crate::Slot(40)
        })
    }));
    let msg = caught
        .err()
        .and_then(|p| p.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    assert!(msg.contains("two values applied"), "not caught: {msg:?}");
}
