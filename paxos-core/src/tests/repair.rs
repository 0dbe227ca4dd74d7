//! Protocol-aware recovery (invariant 11): a replica whose storage lost
//! votes it had acknowledged must not vote until it is repaired, and the
//! repair needs every voter.

use super::harness::{id, req, Cluster};
use crate::{Ballot, DurableState, PersistEntry, Slot, Value};

/// `r` loses, on a crash, every vote and commit record above `keep`: what
/// salvage leaves of a log whose tail was corrupted.
fn lose_votes_above(c: &mut Cluster, r: crate::ReplicaId, keep: Slot) {
    c.crash(r);
    let node = c.nodes.get_mut(&r).unwrap();
    let mut durable = DurableState {
        promised: Ballot::ZERO,
        ..DurableState::default()
    };
    for a in node.durable.accepted.values().filter(|a| a.slot <= keep) {
        durable.apply(&PersistEntry::Accept(a.clone()));
    }
    durable.apply(&PersistEntry::Commit(keep.min(node.durable.commit_index)));
    node.durable = durable;
    node.applied_through = Slot::ZERO;
    node.applied.clear();
}

/// The scenario where a forgotten vote would lose a chosen value: with
/// replica 3 cut off, 1 and 2 choose `v`; leader 1 goes down; 2 loses its
/// vote for `v`; 3 comes back. Returns the slot of `v`.
fn a_vote_is_lost(c: &mut Cluster, repair: bool) -> (Slot, Value) {
    let leader = c.elect_any();
    let (other, cut_off) = if leader == id(1) {
        (id(2), id(3))
    } else if leader == id(2) {
        (id(1), id(3))
    } else {
        (id(1), id(2))
    };
    c.commit(req("before"));
    c.isolate(cut_off);
    let v = req("chosen by the two of them");
    let slot = c.commit_on(&[leader, other], v.clone());
    assert_eq!(c.chosen[&slot], v);
    c.crash(leader);
    lose_votes_above(c, other, slot.prev());
    c.nodes.get_mut(&other).unwrap().config.repair = repair;
    c.heal();
    c.isolate(leader);
    c.restart(other, false);
    (slot, v)
}

#[test]
fn a_replica_that_forgot_a_vote_lets_a_chosen_value_be_lost_without_repair() {
    // The hazard the repair exists for: without it, the survivors elect a
    // leader whose phase 1 misses the chosen value and overwrite it. The
    // harness's agreement check catches that.
    let outcome = std::panic::catch_unwind(|| {
        let mut c = Cluster::new(3, |_| {});
        a_vote_is_lost(&mut c, false);
        // The survivors elect a leader whose phase 1 did not see `v`; its
        // next proposal takes `v`'s slot.
        c.propose_retrying(req("a newer value"));
        c.run_until(3_000_000, |_| false);
    });
    let message = outcome
        .expect_err("a forgotten vote must cost the chosen value")
        .downcast::<String>()
        .map(|s| *s)
        .unwrap_or_default();
    assert!(message.contains("SAFETY: two values applied"), "{message}");
}

#[test]
fn a_repairing_replica_does_not_vote_until_every_voter_answered() {
    let mut c = Cluster::new(3, |_| {});
    let (slot, v) = a_vote_is_lost(&mut c, true);
    let damaged = c
        .nodes
        .iter()
        .find(|(_, n)| n.config.repair)
        .map(|(r, _)| *r)
        .unwrap();
    let down = c
        .nodes
        .iter()
        .find(|(_, n)| n.replica.is_none())
        .map(|(r, _)| *r)
        .unwrap();
    // One voter is down: the damaged replica cannot fence, so it never
    // promises, and the third cannot form a quorum. Nothing is chosen at
    // the slot, certainly not something other than `v`.
    c.run_until(2_000_000, |_| false);
    let progress = c.status(damaged).repair.expect("still repairing");
    assert_eq!(progress.waiting_for, vec![down]);
    assert_eq!(progress.catching_up_to, None);
    assert!(
        c.leader().is_none(),
        "no quorum without the damaged replica"
    );
    assert!(c.chosen.get(&slot).is_none_or(|x| *x == v));

    // The voter comes back: it answers, the repaired replica learns `v`
    // and votes again; `v` survives everywhere.
    c.restart(down, false);
    c.heal();
    assert!(
        c.run_until(5_000_000, |c| c.status(damaged).repair.is_none()),
        "the repair finishes once every voter answered"
    );
    assert!(c.status(damaged).commit_index >= slot);
    let after = c.commit(req("after the repair"));
    assert!(c.all_applied(after));
    for r in [id(1), id(2), id(3)] {
        assert!(
            c.applied_values(r).contains(&v),
            "{r} lost the chosen value"
        );
    }
}

#[test]
fn answers_from_replicas_that_repair_themselves_do_not_count() {
    let mut c = Cluster::new(3, |_| {});
    c.elect_any();
    let slot = c.commit(req("x"));
    // Two replicas lose their logs at once: a majority is damaged. Each
    // waits for the other's trusted answer; the status says why.
    for r in [id(2), id(3)] {
        lose_votes_above(&mut c, r, Slot::ZERO);
        c.nodes.get_mut(&r).unwrap().config.repair = true;
    }
    c.restart(id(2), false);
    c.restart(id(3), false);
    c.run_until(2_000_000, |_| false);
    for (r, other) in [(id(2), id(3)), (id(3), id(2))] {
        let progress = c.status(r).repair.expect("still repairing");
        assert_eq!(progress.untrusted, vec![other], "{r}: {progress:?}");
        assert!(progress.waiting_for.is_empty(), "{r}: {progress:?}");
    }
    // Nothing was chosen anew without them.
    assert_eq!(c.chosen.keys().next_back(), Some(&slot));
}

#[test]
fn the_fence_raises_the_promise_to_the_highest_any_voter_holds() {
    let mut c = Cluster::new(3, |_| {});
    let leader = c.elect_any();
    c.commit(req("x"));
    let promised = c.status(leader).ballot;
    let damaged = if leader == id(1) { id(2) } else { id(1) };
    lose_votes_above(&mut c, damaged, Slot::ZERO);
    c.nodes.get_mut(&damaged).unwrap().config.repair = true;
    c.restart(damaged, false);
    assert!(c.run_until(3_000_000, |c| c.status(damaged).repair.is_none()));
    let node = &c.nodes[&damaged];
    assert!(
        node.durable.promised >= promised,
        "the raised promise is durable: {} < {promised}",
        node.durable.promised
    );
    assert_eq!(
        c.status(leader).ballot,
        promised,
        "the leader was not disturbed"
    );
}
