//! A full log (`paxos_log::LogSpace::Full`): the node stops proposing,
//! never fails a request for it, truncates through its newest checkpoint,
//! takes a new one, resumes when storage has room again, and gives up only
//! when truncating everything it applied cannot help.

use super::harness::{inc, Sim};
use crate::LogFullError;
use paxos_core::{ReplicaId, Slot};
use paxos_log::LogSpace;

const FULL: LogSpace = LogSpace::Full {
    live_bytes: 900,
    limit_bytes: 750,
};

/// A 3-node cluster whose checkpoints run only when a full log asks for
/// one (held for the test to save when `hold_checkpoints`), after one
/// write was acknowledged; returns it and its leader.
fn one_write_acknowledged(hold_checkpoints: bool) -> (Sim, ReplicaId) {
    let mut sim = Sim::with(3, |c| {
        c.checkpoints = true;
        c.checkpoint_every = 1_000;
    });
    for h in sim.hosts.values_mut() {
        h.save_at_once = !hold_checkpoints;
    }
    let leader = sim.elect();
    let ids = sim.submit(leader, vec![inc(1, 0)]);
    assert!(sim.run_until(1_000_000, |s| s.outcomes.get(ids[0]).is_some()));
    (sim, leader)
}

/// Tells node `id` what storage says of its room, as the driver does
/// after an append, and carries out what it asks for.
fn report_space(sim: &mut Sim, id: ReplicaId, space: LogSpace) -> Result<(), LogFullError> {
    let now = sim.now;
    let result = sim.host_mut(id).node.on_log_space(now, space);
    sim.drain(id);
    result
}

#[test]
fn a_full_log_holds_writes_until_a_checkpoint_truncates_then_resumes() {
    let mut sim = Sim::with(3, |c| {
        c.checkpoints = true;
        c.checkpoint_every = 1_000; // none on schedule: only the full log asks
        c.compact_retain = 100;
    });
    for h in sim.hosts.values_mut() {
        h.save_at_once = false;
    }
    let leader = sim.elect();
    let first = sim.submit(leader, vec![inc(1, 0), inc(2, 0)]);
    assert!(sim.run_until(1_000_000, |s| first
        .iter()
        .all(|r| s.outcomes.get(*r).is_some())));
    let applied = sim.node(leader).applied();
    assert!(sim.host_mut(leader).checkpoints_requested.is_empty());

    // Full: no more requests wanted, and a checkpoint to truncate by.
    report_space(&mut sim, leader, FULL).unwrap();
    assert!(sim.node(leader).status().log_full);
    assert!(!sim.node(leader).wants_requests());
    assert_eq!(sim.host_mut(leader).checkpoints_requested, vec![applied]);

    // Requests handed in anyway wait: neither proposed nor failed.
    let proposed = sim.node(leader).status().proposed_batches;
    let waiting = sim.submit(leader, vec![inc(5, 0)]);
    sim.run_for(2_000_000);
    assert_eq!(
        sim.outcomes.get(waiting[0]),
        None,
        "a write waits, never fails"
    );
    assert_eq!(sim.node(leader).status().proposed_batches, proposed);

    // The checkpoint is durable: the node truncates through it, keeping
    // nothing below it (room comes first), but still waits for storage.
    assert_eq!(sim.save_held_checkpoint(leader), applied);
    assert_eq!(sim.host_mut(leader).durable.truncated_through, applied);
    sim.run_for(500_000);
    assert_eq!(sim.outcomes.get(waiting[0]), None);

    // Storage has room again: the waiting write goes through.
    report_space(&mut sim, leader, LogSpace::Available).unwrap();
    assert!(!sim.node(leader).status().log_full);
    assert!(sim.run_until(1_000_000, |s| s.outcomes.get(waiting[0]).is_some()));
    assert_eq!(sim.outcomes.total(waiting[0]), 8);
}

#[test]
fn a_failed_checkpoint_is_retried_while_the_log_is_full() {
    let (mut sim, leader) = one_write_acknowledged(true);
    report_space(&mut sim, leader, FULL).unwrap();
    assert_eq!(sim.host_mut(leader).checkpoints_requested.len(), 1);
    sim.host_mut(leader).held_jobs.clear();
    let now = sim.now;
    sim.host_mut(leader)
        .node
        .on_checkpoint_saved(now, Err("checkpoint disk full".into()));
    sim.drain(leader);
    // Not at once (a failing disk is not hammered), but within seconds.
    assert_eq!(sim.host_mut(leader).checkpoints_requested.len(), 1);
    assert!(sim.run_until(3_000_000, |s| s
        .hosts
        .get(&leader)
        .is_some_and(|h| h.checkpoints_requested.len() == 2)));
}

#[test]
fn a_log_still_full_with_everything_applied_truncated_is_an_error() {
    let (mut sim, leader) = one_write_acknowledged(false);
    let applied = sim.node(leader).applied();
    // The first report starts a checkpoint (saved at once here) and
    // truncates through it: the node did what it could.
    report_space(&mut sim, leader, FULL).unwrap();
    assert_eq!(sim.host_mut(leader).durable.truncated_through, applied);
    assert!(applied > Slot::ZERO);
    // Storage is still full after that truncation: waiting cannot help.
    let err = report_space(&mut sim, leader, FULL).expect_err("nothing left to truncate");
    assert_eq!(err.applied, applied);
    let text = err.to_string();
    assert!(
        text.contains("full") && text.contains("more room"),
        "{text}"
    );
}

#[test]
fn a_follower_with_a_full_log_votes_on_nothing_new_until_it_has_room() {
    let (mut sim, leader) = one_write_acknowledged(true);
    let full = *sim.hosts.keys().find(|&&h| h != leader).unwrap();
    let leader_applied = sim.node(leader).applied();
    assert!(sim.run_until(1_000_000, |s| s.node(full).applied() >= leader_applied));
    let accepted_before = sim.host(full).durable.accepted.len();

    report_space(&mut sim, full, FULL).unwrap();
    // The other follower and the leader are a quorum: writes go on, and
    // the full follower appends none of them.
    let during = sim.submit(leader, vec![inc(2, 0), inc(3, 0)]);
    assert!(sim.run_until(1_000_000, |s| during
        .iter()
        .all(|r| s.outcomes.get(*r).is_some())));
    assert_eq!(sim.outcomes.total(during[1]), 6);
    assert_eq!(
        sim.host(full).durable.accepted.len(),
        accepted_before,
        "a follower with a full log appended an accepted value"
    );
    assert!(sim.node(full).status().accepts_refused_while_full > 0);

    // Room again: it votes and catches up.
    report_space(&mut sim, full, LogSpace::Available).unwrap();
    let after = sim.submit(leader, vec![inc(4, 0)]);
    assert!(sim.run_until(2_000_000, |s| s.outcomes.get(after[0]).is_some()));
    let leader_applied = sim.node(leader).applied();
    assert!(sim.run_until(2_000_000, |s| s.node(full).applied() >= leader_applied));
    assert_eq!(sim.counter(full).total, 10);
}
