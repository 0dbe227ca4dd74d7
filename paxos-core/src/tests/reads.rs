//! Reads that skip the log: ReadIndex rounds, their batching, and leases
//! (issue #17).

use super::harness::*;
use crate::{msg, Action, Message, ProposeError, ReadLease, Role, Slot};
use proptest::prelude::*;

/// Longer than an election in these clusters (50-100 ms timeouts), so a
/// new leader is elected while the old lease still holds.
const LEASE: ReadLease = ReadLease {
    duration_us: 300_000,
    max_drift_ppm: 100_000,
};

fn with_lease(c: &mut crate::Config) {
    c.read_lease = Some(LEASE);
}

/// The heartbeat rounds `r` has sent since its actions were last drained.
fn rounds_sent(acts: &[Action]) -> Vec<u64> {
    let mut rounds: Vec<u64> = acts
        .iter()
        .filter_map(|a| match a {
            Action::Send {
                msg: Message::Heartbeat(msg::Heartbeat { read_round, .. }),
                ..
            } => Some(*read_round),
            _ => None,
        })
        .collect();
    rounds.dedup();
    rounds
}

#[test]
fn a_read_is_confirmed_by_one_round_to_a_quorum_and_names_the_commit_index() {
    let mut c = Cluster::new(3, |_| {});
    let leader = c.elect_any();
    let slot = c.commit(req("x"));
    let now = c.now;
    let (_, before) = c.replica(leader).read_confirmed().unwrap();
    let ticket = c.replica(leader).read_index(now).unwrap();
    assert_eq!(ticket.read_index, slot);
    assert_eq!(ticket.ballot, c.status(leader).ballot);
    assert!(
        ticket.round > before,
        "a round sent before the read covers it"
    );
    // Its round is out, not yet acknowledged by anyone else.
    let (_, confirmed) = c.replica(leader).read_confirmed().unwrap();
    assert!(confirmed < ticket.round);
    c.pump();
    let (ballot, confirmed) = c.replica(leader).read_confirmed().unwrap();
    assert_eq!(ballot, ticket.ballot);
    assert!(confirmed >= ticket.round);
}

#[test]
fn reads_during_an_outstanding_round_share_the_next_one() {
    let mut c = Cluster::new(3, |_| {});
    let leader = c.elect_any();
    c.commit(req("x"));
    let now = c.now;
    let first = c.replica(leader).read_index(now).unwrap();
    let mut acts = Vec::new();
    while let Some(a) = c.replica(leader).poll_action() {
        acts.push(a);
    }
    assert_eq!(
        rounds_sent(&acts),
        vec![first.round],
        "the first read starts a round"
    );
    for a in acts {
        if let Action::Send { to, msg } = a {
            c.net.push_back((leader, to, msg));
        }
    }
    // Two more reads while that round is out: neither may be covered by it
    // (it was sent before they arrived), both share the next one, and no
    // round is sent for them yet.
    let second = c.replica(leader).read_index(now).unwrap();
    let third = c.replica(leader).read_index(now).unwrap();
    assert_eq!(second.round, first.round + 1);
    assert_eq!(third.round, second.round);
    let mut acts = Vec::new();
    while let Some(a) = c.replica(leader).poll_action() {
        acts.push(a);
    }
    assert!(
        rounds_sent(&acts).is_empty(),
        "a second round went out at once"
    );
    for a in acts {
        if let Action::Send { to, msg } = a {
            c.net.push_back((leader, to, msg));
        }
    }
    // The first round's confirmation starts the next, which confirms both.
    c.pump();
    let (_, confirmed) = c.replica(leader).read_confirmed().unwrap();
    assert_eq!(confirmed, second.round);
}

#[test]
fn a_leader_cut_off_from_its_quorum_confirms_nothing_and_then_steps_down() {
    let mut c = Cluster::new(3, |_| {});
    let leader = c.elect_any();
    c.commit(req("x"));
    c.isolate(leader);
    let now = c.now;
    let ticket = c.replica(leader).read_index(now).unwrap();
    c.advance(20_000);
    let (_, confirmed) = c.replica(leader).read_confirmed().unwrap();
    assert!(confirmed < ticket.round, "confirmed without a quorum");
    c.advance(200_000);
    assert!(
        c.replica(leader).read_confirmed().is_none(),
        "a deposed leader still reports confirmations"
    );
}

#[test]
fn only_the_announced_leader_hands_out_tickets() {
    let mut c = Cluster::new(3, |_| {});
    let leader = c.elect_any();
    c.commit(req("x"));
    let follower = (1..=3).map(id).find(|r| *r != leader).unwrap();
    let now = c.now;
    assert_eq!(
        c.replica(follower).read_index(now),
        Err(ProposeError::NotLeader {
            leader: Some(leader)
        })
    );
    assert!(c.replica(follower).read_confirmed().is_none());
    assert!(c.replica(follower).lease_read_index(now).is_none());
}

#[test]
fn an_acknowledgement_of_a_round_never_sent_confirms_nothing() {
    let mut c = Cluster::new(3, |_| {});
    let leader = c.elect_any();
    let ballot = c.status(leader).ballot;
    let (_, before) = c.replica(leader).read_confirmed().unwrap();
    let now = c.now;
    for from in (1..=3).map(id).filter(|r| *r != leader) {
        c.replica(leader).handle_message(
            now,
            from,
            Message::HeartbeatAck(msg::HeartbeatAck {
                ballot,
                commit_index: Slot::ZERO,
                applied_index: Slot::ZERO,
                can_become_primary: true,
                read_round: before + 1_000,
            }),
        );
    }
    let (_, after) = c.replica(leader).read_confirmed().unwrap();
    assert_eq!(after, before);
}

#[test]
fn a_single_voter_confirms_its_own_rounds() {
    let mut c = Cluster::new(1, |_| {});
    let leader = c.elect_any();
    let now = c.now;
    let ticket = c.replica(leader).read_index(now).unwrap();
    let (_, confirmed) = c.replica(leader).read_confirmed().unwrap();
    assert!(confirmed >= ticket.round);
}

#[test]
fn with_leases_a_new_leader_waits_out_the_old_lease_before_it_announces() {
    let mut c = Cluster::new(3, with_lease);
    let first = c.elect_any();
    c.commit(req("x"));
    let now = c.now;
    assert!(c.replica(first).lease_read_index(now).is_some());
    // Depose the leader: the others elect a new one, which must not
    // announce itself until the old lease ran out on its clock.
    c.isolate(first);
    let lease_until = c.now.plus_micros(LEASE.leader_local_us());
    let phase1_done = c.run_until(2_000_000, |c| {
        (1..=3)
            .map(id)
            .filter(|r| *r != first)
            .any(|r| c.status(r).ballot > c.status(first).ballot && c.status(r).ballot.leader == r)
    });
    assert!(phase1_done);
    let mut announced_at = None;
    let deadline = c.now.plus_micros(2_000_000);
    while c.now < deadline && announced_at.is_none() {
        c.advance(1_000);
        announced_at = (1..=3)
            .map(id)
            .filter(|r| *r != first)
            .find(|r| c.status(*r).role == Role::Leader)
            .map(|_| c.now);
    }
    let announced_at = announced_at.expect("no new leader");
    assert!(
        announced_at >= lease_until,
        "a new leader announced at {announced_at:?} while the old lease held until {lease_until:?}"
    );
    // The isolated leader's lease has run out by then.
    assert!(c.replica(first).lease_read_index(announced_at).is_none());
}

#[test]
fn a_lease_lasts_from_when_the_round_was_sent_shortened_by_the_drift() {
    let mut c = Cluster::new(3, with_lease);
    let leader = c.elect_any();
    c.commit(req("x"));
    c.latency_us = 5_000;
    // Let heartbeats renew the lease, then cut the leader off right after
    // a round went out: that round's acks never arrive.
    c.advance(50_000);
    let now = c.now;
    let _ = c.replica(leader).read_index(now).unwrap();
    c.advance(c.latency_us * 2 + 1);
    let confirmed_at = c.now;
    c.isolate(leader);
    // The last confirmed round started no later than `now` (its acks took
    // two latencies): the lease ends within `leader_local_us` of its start.
    let until = now.plus_micros(LEASE.leader_local_us());
    assert!(c.replica(leader).lease_read_index(confirmed_at).is_some());
    assert!(c.replica(leader).lease_read_index(until).is_none());
    assert!(LEASE.leader_local_us() < LEASE.duration_us);
    assert!(LEASE.successor_wait_us() > LEASE.duration_us);
}

#[test]
fn without_leases_no_lease_reads() {
    let mut c = Cluster::new(3, |_| {});
    let leader = c.elect_any();
    c.commit(req("x"));
    let now = c.now;
    assert!(c.replica(leader).lease_read_index(now).is_none());
}

#[cfg(feature = "planted-bugs")]
#[test]
fn planted_lease_no_wait_announces_a_new_leader_during_the_old_lease() {
    let mut c = Cluster::new(3, with_lease);
    for r in 1..=3 {
        c.replica(id(r)).plant_bug(crate::PlantedBug::LeaseNoWait);
    }
    let first = c.elect_any();
    c.commit(req("x"));
    c.isolate(first);
    let lease_until = c.now.plus_micros(LEASE.leader_local_us());
    let elected = c.run_until(2_000_000, |c| {
        (1..=3)
            .map(id)
            .any(|r| r != first && c.status(r).role == Role::Leader)
    });
    assert!(elected);
    assert!(
        c.now < lease_until,
        "the bug should let the new leader announce while the old lease holds"
    );
    let now = c.now;
    assert!(c.replica(first).lease_read_index(now).is_some());
}

#[test]
fn lease_arithmetic_rounds_towards_safety() {
    let l = ReadLease {
        duration_us: 1_000_001,
        max_drift_ppm: 1,
    };
    assert_eq!(l.leader_local_us(), 999_999);
    assert_eq!(l.successor_wait_us(), 1_000_003);
    let exact = ReadLease {
        duration_us: 1_000_000,
        max_drift_ppm: 0,
    };
    assert_eq!(exact.leader_local_us(), 1_000_000);
    assert_eq!(exact.successor_wait_us(), 1_000_000);
}

proptest! {
    /// Whatever order, duplication and garbage acknowledgements arrive in,
    /// the confirmed round is the highest round that a quorum (the leader
    /// included) acknowledged, rounds never sent are ignored, and it never
    /// goes down.
    #[test]
    fn confirmed_round_is_the_quorum_acknowledged_round(
        acks in proptest::collection::vec((0usize..4, 0u64..8), 0..40),
    ) {
        let mut c = Cluster::new(5, |_| {});
        let leader = c.elect_any();
        let ballot = c.status(leader).ballot;
        let now = c.now;
        let (_, base) = c.replica(leader).read_confirmed().unwrap();
        // Nothing is delivered from here on: only the acks below arrive.
        c.cut = (1..=5).flat_map(|a| (1..=5).map(move |b| (id(a), id(b)))).collect();
        let sent = c.replica(leader).read_index(now).unwrap().round;
        c.pump();
        let others: Vec<_> = (1..=5).map(id).filter(|r| *r != leader).collect();
        let mut best = [0u64; 4];
        let mut last = base;
        for (who, offset) in acks {
            let round = base + offset;
            c.replica(leader).handle_message(now, others[who], Message::HeartbeatAck(msg::HeartbeatAck {
                ballot, commit_index: Slot::ZERO, applied_index: Slot::ZERO, can_become_primary: true, read_round: round,
            }));
            if round <= sent {
                best[who] = best[who].max(round);
            }
            let (_, confirmed) = c.replica(leader).read_confirmed().unwrap();
            let mut sorted = best;
            sorted.sort_unstable_by(|a, b| b.cmp(a));
            // A quorum of 5 is 3: the leader (at `sent`) and the best two others.
            prop_assert_eq!(confirmed, sorted[1].max(base));
            prop_assert!(confirmed >= last && confirmed <= sent);
            last = confirmed;
        }
    }
}
