//! Membership change (`change_configuration`, `Value::Reconfigure`) and the
//! per-peer health report.

use super::harness::*;
use crate::Slot;
use crate::{msg, Membership, Message, ProposeError, ReplicaId, Role};

fn voters(ids: &[u32]) -> Membership {
    Membership::with_voters(ids.iter().copied().map(id).collect())
}

/// What a fresh node is started with when it joins: the current voters,
/// itself a learner.
fn joining(current: &[u32], me: u32) -> Membership {
    Membership {
        voters: current.iter().copied().map(id).collect(),
        learners: vec![id(me)],
    }
}

/// Runs until every up replica in `members` reports `target` in force.
fn wait_for_membership(c: &mut Cluster, members: &[ReplicaId], target: &Membership) {
    let ms = members.to_vec();
    let t = target.clone();
    assert!(
        c.run_until(3_000_000, |c| ms
            .iter()
            .all(|r| !c.is_up(*r) || c.status(*r).membership == t)),
        "membership {target:?} not in force on {members:?}: {:?}",
        members
            .iter()
            .filter(|r| c.is_up(**r))
            .map(|r| (r, c.status(*r).membership))
            .collect::<Vec<_>>()
    );
}

/// Changes the membership through whoever leads, retrying while a leader
/// is being elected (a change re-elects), and waits until it is in force.
///
/// A leader may lose its leadership before the change is chosen (the change
/// is then abandoned): like an operator, ask again.
fn change(c: &mut Cluster, target: &Membership) {
    let everyone: Vec<ReplicaId> = target.all().collect();
    for _ in 0..100 {
        let leader = c.elect_any();
        let now = c.now;
        match c.replica(leader).change_configuration(now, target.clone()) {
            Ok(()) => {}
            Err(ProposeError::ConfigChangeInFlight | ProposeError::NotLeader { .. }) => {}
            Err(e) => panic!("change_configuration: {e}"),
        }
        let t = target.clone();
        let ms = everyone.clone();
        if c.run_until(500_000, |c| {
            ms.iter()
                .all(|r| !c.is_up(*r) || c.status(*r).membership == t)
        }) {
            return;
        }
    }
    wait_for_membership(c, &everyone, target);
}

#[test]
fn a_new_replica_joins_as_learner_then_is_promoted() {
    let mut c = Cluster::new(3, |_| {});
    let leader = c.elect_any();
    for i in 0..5 {
        c.commit(req(&format!("before-{i}")));
    }
    c.add_node(id(4), joining(&[1, 2, 3], 4));
    let now = c.now;
    let target = voters(&[1, 2, 3, 4]);
    c.replica(leader)
        .change_configuration(now, target.clone())
        .unwrap();
    c.pump();
    // Step 1 is a learner-only change: same voters, 4 as learner.
    let step1 = Membership {
        voters: vec![id(1), id(2), id(3)],
        learners: vec![id(4)],
    };
    assert!(
        c.nodes[&leader]
            .applied
            .iter()
            .any(|(_, v)| *v == reconfigure(Slot::ZERO, step1.clone()))
            || c.run_until(1_000_000, |c| c.nodes[&leader]
                .applied
                .iter()
                .any(|(_, v)| *v == reconfigure(Slot::ZERO, step1.clone()))),
        "the learner step was not chosen"
    );
    wait_for_membership(&mut c, &[id(1), id(2), id(3), id(4)], &target);
    c.commit(req("after"));
    // The newcomer holds the whole history, in the same order.
    assert_eq!(c.applied_values(id(4)), c.applied_values(id(1)));
    assert!(c.status(id(4)).membership.is_voter(id(4)));
    // Its vote now counts: with one of the old three down, nothing commits
    // without it (3 of 4).
    c.crash(id(1));
    let slot = c.propose_retrying(req("with-4"));
    assert!(c.run_until(3_000_000, |c| c.all_applied(slot)));
}

#[test]
fn walk_abc_bcd_cde_ade_under_load_loses_nothing() {
    // RSL's own scenario: replace one replica at a time, with proposals in
    // flight across every change.
    let mut c = Cluster::new(3, |_| {});
    c.elect_any();
    let mut submitted = Vec::new();
    let mut next = 0;
    let mut submit_some = |c: &mut Cluster, n: usize| {
        for _ in 0..n {
            let v = req(&format!("w{next}"));
            next += 1;
            c.propose_retrying(v.clone());
            submitted.push(v);
        }
    };
    submit_some(&mut c, 10);
    c.add_node(id(4), joining(&[1, 2, 3], 4));
    submit_some(&mut c, 5);
    change(&mut c, &voters(&[2, 3, 4]));
    submit_some(&mut c, 10);
    c.add_node(id(5), joining(&[2, 3, 4], 5));
    change(&mut c, &voters(&[3, 4, 5]));
    submit_some(&mut c, 10);
    // A returns: it was removed, so it joins again like a new replica would
    // (its old state is still there; it catches up from it).
    change(&mut c, &voters(&[1, 4, 5]));
    submit_some(&mut c, 10);
    let leader = c.elect_any();
    assert!(voters(&[1, 4, 5]).is_voter(leader));
    // Every proposal is applied exactly once, in some order, on every
    // replica of the final membership (values may repeat only if submitted
    // twice, which they were not).
    let last = c.status(leader).commit_index;
    assert!(c.run_until(3_000_000, |c| [1, 4, 5]
        .iter()
        .all(|r| c.status(id(*r)).applied_index >= last)));
    for r in [1, 4, 5] {
        let applied = c.applied_values(id(r));
        for v in &submitted {
            let n = applied.iter().filter(|a| *a == v).count();
            // Replica 1 restarted nothing, so it applied everything once.
            assert!(n <= 1, "{v:?} applied {n} times on {r}");
        }
    }
    let applied = c.applied_values(id(5));
    assert_eq!(
        c.nodes[&id(5)].applied.first().map(|(s, _)| *s),
        Some(Slot(1)),
        "5 caught up from slot 1"
    );
    for v in &submitted {
        assert!(applied.contains(v), "acknowledged write {v:?} lost");
    }
}

#[test]
fn removing_the_leader_hands_over_without_an_election_timeout() {
    let mut c = Cluster::new(3, |_| {});
    let old = c.elect_any();
    c.commit(req("a"));
    c.advance(30_000); // acks tell the leader who is caught up
    let rest: Vec<u32> = (1..=3).filter(|r| id(*r) != old).collect();
    let target = voters(&rest);
    let now = c.now;
    c.replica(old)
        .change_configuration(now, target.clone())
        .unwrap();
    c.pump();
    // Chosen, handed over, and a new leader in well under an election
    // timeout (50-100 ms here).
    assert!(
        c.run_until(40_000, |c| c
            .leader()
            .is_some_and(|l| l != old && c.status(l).membership == target)),
        "no new leader shortly after the leader removed itself"
    );
    assert_ne!(c.status(old).role, Role::Leader);
    assert!(!c.status(old).membership.is_voter(old));
    // The removed replica is not sent anything any more.
    let members: Vec<ReplicaId> = target.voters.clone();
    c.commit_on(&members, req("b"));
    // The removed replica never leads again, even after timeouts.
    c.advance(1_000_000);
    assert_ne!(c.status(old).role, Role::Leader);
    assert_ne!(c.status(old).role, Role::Candidate);
}

#[test]
fn nothing_is_proposed_above_an_unchosen_reconfigure() {
    let mut c = Cluster::new(3, |_| {});
    let leader = c.elect_any();
    c.commit(req("a"));
    let now = c.now;
    let s = c
        .replica(leader)
        .propose(now, reconfigure(Slot::ZERO, voters(&[1, 2, 3, 4])))
        .unwrap();
    // Not pumped yet: the decree is in flight.
    assert_eq!(
        c.replica(leader).propose(now, req("b")),
        Err(ProposeError::ConfigChangeInFlight)
    );
    assert_eq!(
        c.replica(leader).change_configuration(now, voters(&[1, 2])),
        Err(ProposeError::ConfigChangeInFlight)
    );
    assert_eq!(c.status(leader).in_flight, 1);
    c.pump();
    assert!(c.all_applied(s));
    // Voters changed (4 is a voter that has not started): the leader runs
    // phase 1 again; 1-3 are still a quorum of four.
    let slot = c.propose_retrying(req("b"));
    assert_eq!(slot, s.next());
    let now = c.now;
    let leader = c.elect_any();
    assert!(matches!(
        c.replica(leader)
            .change_configuration(now, Membership::with_voters(vec![])),
        Err(ProposeError::BadMembership { .. })
    ));
    let follower = (1..=3).map(id).find(|r| *r != leader).unwrap();
    assert!(matches!(
        c.replica(follower)
            .change_configuration(now, voters(&[1, 2, 3])),
        Err(ProposeError::NotLeader { .. })
    ));
}

#[test]
fn a_reconfigure_found_in_phase_1_is_finished_before_anything_above_it() {
    // The leader proposes a Reconfigure that only one follower accepts, then
    // crashes. The next leader re-proposes it (it may be chosen) and
    // proposes nothing above it in the old membership.
    let mut c = Cluster::new(3, |_| {});
    let old = c.elect_any();
    c.commit(req("a"));
    let others: Vec<ReplicaId> = (1..=3).map(id).filter(|r| *r != old).collect();
    c.cut.insert((old, others[1]));
    let now = c.now;
    let target = voters(&[others[0].0, others[1].0]);
    let s = c
        .replica(old)
        .propose(now, reconfigure(Slot::ZERO, target.clone()))
        .unwrap();
    // Deliver the accept to others[0] only, then crash the leader before
    // the Accepted comes back.
    c.drain_actions();
    let mut kept = std::collections::VecDeque::new();
    while let Some((from, to, msg)) = c.net.pop_front() {
        if from == old && to == others[0] {
            let now = c.now;
            c.replica(to).handle_message(now, from, msg);
        } else {
            kept.push_back((from, to, msg));
        }
    }
    c.net = kept;
    c.crash(old);
    c.heal();
    c.drain_actions();
    c.net.retain(|(_, to, _)| *to != old);
    let leader = c.elect_any();
    assert!(target.is_voter(leader));
    // Whoever won found the Reconfigure only if others[0] was in its
    // quorum; either way the slot is decided once and identically.
    let slot = c.commit(req("b"));
    assert!(slot > s || c.chosen[&s] != reconfigure(Slot::ZERO, target.clone()));
    let m = c.status(leader).membership;
    if c.chosen.get(&s) == Some(&reconfigure(Slot::ZERO, target.clone())) {
        assert_eq!(m, target);
    }
}

#[test]
fn restart_recovers_the_membership_from_log_and_checkpoint() {
    let mut c = Cluster::new(3, |_| {});
    c.elect_any();
    c.commit(req("a"));
    c.add_node(id(4), joining(&[1, 2, 3], 4));
    let target = voters(&[1, 2, 3, 4]);
    change(&mut c, &target);
    c.commit(req("b"));
    // From the log: no checkpoint, the state machine restarts empty.
    c.crash(id(2));
    c.restart(id(2), false);
    assert_eq!(c.status(id(2)).membership, target);
    // From a checkpoint that covers the Reconfigure, with the log truncated.
    c.checkpoint_and_compact(id(3));
    c.crash(id(3));
    c.restart(id(3), false);
    assert_eq!(c.status(id(3)).membership, target);
    // A replica that installs a snapshot past the change gets it too.
    c.crash(id(4));
    c.install_snapshot(id(4));
    assert_eq!(c.status(id(4)).membership, target);
    c.commit(req("c"));
}

#[test]
fn a_removed_replica_cannot_disrupt_the_new_membership() {
    let mut c = Cluster::new(3, |_| {});
    c.elect_any();
    c.commit(req("a"));
    // Isolate 3, then remove it while it cannot hear about it.
    c.isolate(id(3));
    change(&mut c, &voters(&[1, 2]));
    let leader = c.elect_any();
    let ballot = c.status(leader).ballot;
    // 3 times out again and again; nobody answers its pre-votes, so it
    // raises no ballot (it would campaign in ever higher ones without).
    let ballot_3 = c.status(id(3)).ballot;
    c.advance(1_000_000);
    assert_eq!(c.status(id(3)).ballot, ballot_3);
    assert_eq!(c.status(id(3)).role, Role::Follower);
    c.heal();
    c.advance(500_000);
    assert_eq!(
        c.leader(),
        Some(leader),
        "the removed replica deposed the leader"
    );
    assert_eq!(c.status(leader).ballot, ballot);
    c.commit_on(&[id(1), id(2)], req("b"));
}

#[test]
fn peer_status_reports_lag_and_connectivity() {
    let mut c = Cluster::new(3, |_| {});
    let leader = c.elect_any();
    c.commit(req("a"));
    c.advance(30_000);
    let now = c.now;
    let peers = c.replica(leader).peer_status(now);
    assert_eq!(peers.len(), 2);
    for p in &peers {
        assert!(p.voter && p.connected, "{p:?}");
        assert_eq!(p.lag, Some(0), "{p:?}");
        assert!(p.last_heard_us_ago.unwrap() < 20_000);
    }
    let lagging = peers[0].id;
    c.isolate(lagging);
    for i in 0..4 {
        c.commit_on(
            &(1..=3)
                .map(id)
                .filter(|r| *r != lagging)
                .collect::<Vec<_>>(),
            req(&format!("x{i}")),
        );
    }
    c.advance(200_000);
    let leader = c.elect_any();
    let now = c.now;
    let peers = c.replica(leader).peer_status(now);
    let p = peers.iter().find(|p| p.id == lagging).unwrap();
    assert!(!p.connected, "{p:?}");
    assert!(p.lag.unwrap() >= 4, "{p:?}");
    assert!(p.last_heard_us_ago.unwrap() >= 200_000, "{p:?}");
    c.heal();
    assert!(c.run_until(1_000_000, |c| c.status(lagging).applied_index
        == c.status(leader).commit_index));
    c.advance(30_000);
    let now = c.now;
    let p = c
        .replica(leader)
        .peer_status(now)
        .into_iter()
        .find(|p| p.id == lagging)
        .unwrap();
    assert!(p.connected && p.lag == Some(0), "{p:?}");
}

/// The applied index a peer reports on its heartbeat acks: the leader's
/// view of it follows the peer (and stays behind while the peer is cut
/// off); a follower, acked by nobody, knows none.
#[test]
fn the_leaders_view_of_a_peers_applied_index_advances() {
    let mut c = Cluster::new(3, |_| {});
    let leader = c.elect_any();
    let followers: Vec<_> = (1..=3).map(id).filter(|r| *r != leader).collect();
    let first = c.commit(req("a"));
    c.advance(30_000);
    let now = c.now;
    for p in c.replica(leader).peer_status(now) {
        assert_eq!(p.applied_index, Some(first), "{p:?}");
        assert!(p.applied_index <= p.commit_index, "{p:?}");
    }
    let of_leader = c.replica(followers[0]).peer_status(now);
    let of_leader = of_leader.iter().find(|p| p.id == leader).unwrap();
    assert!(of_leader.commit_index.is_some(), "{of_leader:?}");
    assert_eq!(of_leader.applied_index, None, "only acks report it");

    let (lagging, live) = (followers[0], followers[1]);
    c.isolate(lagging);
    let mut last = first;
    for i in 0..4 {
        last = c.commit_on(&[leader, live], req(&format!("x{i}")));
    }
    c.advance(30_000);
    let applied_of = |c: &mut Cluster, peer| {
        let now = c.now;
        c.replica(leader)
            .peer_status(now)
            .into_iter()
            .find(|p| p.id == peer)
            .unwrap()
            .applied_index
    };
    assert_eq!(applied_of(&mut c, live), Some(last));
    assert_eq!(applied_of(&mut c, lagging), Some(first));
    c.heal();
    assert!(c.run_until(1_000_000, |c| c.status(lagging).applied_index == last));
    c.advance(30_000);
    assert_eq!(applied_of(&mut c, lagging), Some(last));
}

/// What the leader records of a peer's applied index is the highest it
/// reported, never above the commit index recorded for that peer, even
/// from an ack built in memory that claims more (the codec refuses such a
/// frame) or one that arrives late.
#[test]
fn a_peers_recorded_applied_index_never_exceeds_its_commit_index_or_goes_back() {
    let mut c = Cluster::new(3, |_| {});
    let leader = c.elect_any();
    let peer = (1..=3).map(id).find(|r| *r != leader).unwrap();
    let ballot = c.status(leader).ballot;
    let ack = |c: &mut Cluster, commit: u64, applied: u64| {
        let now = c.now;
        c.replica(leader).handle_message(
            now,
            peer,
            Message::HeartbeatAck(msg::HeartbeatAck {
                ballot,
                commit_index: Slot(commit),
                applied_index: Slot(applied),
                can_become_primary: true,
                read_round: 0,
            }),
        );
        let p = c
            .replica(leader)
            .peer_status(now)
            .into_iter()
            .find(|p| p.id == peer)
            .unwrap();
        (p.commit_index, p.applied_index)
    };
    assert_eq!(ack(&mut c, 40, 30), (Some(Slot(40)), Some(Slot(30))));
    assert_eq!(ack(&mut c, 40, 50), (Some(Slot(40)), Some(Slot(40))));
    assert_eq!(
        ack(&mut c, 35, 20),
        (Some(Slot(40)), Some(Slot(40))),
        "a late ack moves nothing back"
    );
}

#[test]
fn slots_above_a_learner_step_found_in_phase_1_are_recovered() {
    // Regression (paxos-sim seed 52): a new leader found, in phase 1, an
    // unchosen learner-only Reconfigure at slot s and a value chosen above
    // it at s + 1. It re-proposed up to s only, expecting the election that
    // follows a change of voters to recover the rest; but a learner step
    // keeps the voters, so no election followed, and the leader proposed a
    // fresh value at s + 1 over the chosen one.
    let mut c = Cluster::new(3, |_| {});
    let old = c.elect_any();
    c.commit(req("a"));
    let others: Vec<ReplicaId> = (1..=3).map(id).filter(|r| *r != old).collect();
    let (o1, o2) = (others[0], others[1]);
    // o2 misses slot g (chosen by old and o1), so its commit index stays
    // below g: its promise will not let the next leader learn what follows.
    c.cut.insert((old, o2));
    let now = c.now;
    let g = c.replica(old).propose(now, req("g")).unwrap();
    c.pump();
    c.cut.clear();
    // o1 hears nothing more: the learner step at s and x at s + 1 are
    // chosen by old and o2.
    c.cut.insert((old, o1));
    let step = Membership {
        voters: vec![id(1), id(2), id(3)],
        learners: vec![id(4)],
    };
    let now = c.now;
    let s = c
        .replica(old)
        .propose(now, reconfigure(Slot::ZERO, step.clone()))
        .unwrap();
    assert_eq!(s, g.next());
    c.pump();
    assert_eq!(c.status(old).commit_index, s);
    let now = c.now;
    let x = c.replica(old).propose(now, req("x")).unwrap();
    c.pump();
    assert_eq!(c.status(old).commit_index, x, "x is chosen");
    assert_eq!(c.chosen.get(&x), Some(&req("x")));
    assert!(c.status(o2).commit_index < g);
    c.crash(old);
    c.heal();
    // Whoever leads now must recover x at s + 1; the harness panics if a
    // replica applies anything else there.
    let y = c.commit(req("y"));
    assert!(y > x);
    assert!(c.all_applied(y));
    assert_eq!(c.chosen.get(&x), Some(&req("x")));
    assert_eq!(c.chosen.get(&s), Some(&reconfigure(Slot::ZERO, step)));
}

/// Found by `random_fault_schedules_on_five_replicas` (20,000 cases).
#[test]
fn regression_five_replica_schedule_with_two_changes() {
    use super::props::{run_schedule_on, Fault::*};
    let schedule = [
        DeliverOne(0),
        DeliverOne(0),
        Advance(13944),
        Advance(27679),
        Advance(9867),
        Calm,
        Reconfigure(2320030811),
        DeliverOne(0),
        DeliverOne(0),
        Calm,
        DeliverOne(0),
        DeliverOne(0),
        Propose,
        DropOne(1828216096639011936),
        Reconfigure(4202503),
        Calm,
        Isolate(1),
        Propose,
        Calm,
        Relinquish,
        DeliverOne(0),
        Restart(0, false),
    ];
    run_schedule_on(5, &schedule, |_| {});
}

#[test]
fn a_stale_reconfigure_recovered_after_a_later_change_is_a_no_op() {
    // paxos-sim FINDINGS F6: an old leader's Reconfigure that nobody chose
    // then is found by phase 1 after a later change took effect, and is
    // chosen. It names the membership it was based on, which is no longer
    // in force, so it changes nothing.
    let mut c = Cluster::new(5, |_| {});
    let old = c.elect_any();
    c.commit(req("a"));
    let others: Vec<ReplicaId> = (1..=5).map(id).filter(|r| *r != old).collect();
    let (f, x) = (others[0], others[1]);
    // Only `f` hears the old leader from now on.
    for r in &others[1..] {
        c.cut.insert((old, *r));
    }
    let now = c.now;
    let b = c.replica(old).propose(now, req("b")).unwrap();
    let stale = Membership {
        voters: (1..=5).map(id).collect(),
        learners: vec![id(6)],
    };
    let z = c
        .replica(old)
        .propose(now, reconfigure(Slot::ZERO, stale.clone()))
        .unwrap();
    assert_eq!(z, b.next());
    c.pump();
    assert!(c.status(f).commit_index < b, "nothing new is chosen yet");
    c.crash(old);
    c.isolate(f);
    // The other three remove the old leader: T is chosen at slot b, above
    // which the zombie sits on f.
    let target = Membership::with_voters(others.clone());
    let leader = c.elect_any();
    assert_ne!(leader, f);
    let now = c.now;
    c.replica(leader)
        .change_configuration(now, target.clone())
        .unwrap();
    assert!(c.run_until(1_000_000, |c| c.status(leader).membership == target));
    let t_slot = c.status(leader).membership_slot;
    assert!(t_slot >= b && t_slot < z);
    // f comes back and x goes away, so every phase-1 quorum of T includes
    // f and reports the zombie, which gets re-proposed and chosen.
    c.heal();
    c.crash(old);
    // Pre-vote keeps the healed f from deposing the leader by itself, so
    // hand leadership to f: its phase 1 reports the zombie.
    c.advance(50_000);
    let l = c.leader().expect("a leader");
    if l != f {
        let now = c.now;
        c.replica(l).relinquish_primary_to(now, f).unwrap();
    }
    c.isolate(x);
    let members: Vec<ReplicaId> = others.iter().copied().filter(|r| *r != x).collect();
    c.commit_on(&members, req("after"));
    assert_eq!(c.chosen.get(&z), Some(&reconfigure(Slot::ZERO, stale)));
    for r in &members {
        assert_eq!(c.status(*r).membership, target, "{r} was reverted");
        assert_eq!(c.status(*r).membership_slot, t_slot);
    }
}

#[test]
fn relinquish_to_a_named_voter_and_abandon_a_pending_change() {
    let mut c = Cluster::new(3, |_| {});
    let old = c.elect_any();
    c.commit(req("a"));
    c.advance(30_000);
    let others: Vec<ReplicaId> = (1..=3).map(id).filter(|r| *r != old).collect();
    let now = c.now;
    // Not a voter, itself, or unknown: refused, and it keeps leading.
    for bad in [old, id(9)] {
        assert_eq!(
            c.replica(old).relinquish_primary_to(now, bad),
            Err(ProposeError::NoSuccessor)
        );
    }
    assert_eq!(c.status(old).role, Role::Leader);
    c.replica(old)
        .relinquish_primary_to(now, others[1])
        .unwrap();
    c.pump();
    assert!(c.run_until(20_000, |c| c.leader() == Some(others[1])));
    // A change waiting for a learner that never catches up can be dropped.
    let leader = others[1];
    let now = c.now;
    let target = voters(&[1, 2, 3, 4]);
    c.replica(leader)
        .change_configuration(now, target.clone())
        .unwrap();
    c.advance(200_000);
    assert_eq!(c.replica(leader).pending_configuration(), Some(&target));
    let now = c.now;
    assert_eq!(
        c.replica(leader).change_configuration(now, voters(&[1, 2])),
        Err(ProposeError::ConfigChangeInFlight)
    );
    assert_eq!(
        c.replica(leader).abandon_configuration_change(),
        Some(target)
    );
    assert_eq!(c.replica(leader).pending_configuration(), None);
    let now = c.now;
    let rest: Vec<u32> = (1..=3).filter(|r| id(*r) != old).collect();
    c.replica(leader)
        .change_configuration(now, voters(&rest))
        .unwrap();
    assert!(c.run_until(1_000_000, |c| c.status(leader).membership == voters(&rest)));
}

#[test]
fn a_vetoed_leader_stops_leading_when_the_voters_change() {
    // paxos-sim seed 234 (with base slots): a leader whose CanBecomePrimary
    // was off kept leading the new voters in its old ballot, whose phase 1
    // asked the old ones, and overwrote a slot the new voters had chosen.
    let mut c = Cluster::new(3, |_| {});
    let leader = c.elect_any();
    c.commit(req("a"));
    let ballot = c.status(leader).ballot;
    c.replica(leader).set_can_become_primary(false);
    c.add_node(id(4), joining(&[1, 2, 3], 4));
    let target = voters(&[1, 2, 3, 4]);
    let now = c.now;
    c.replica(leader)
        .change_configuration(now, target.clone())
        .unwrap();
    assert!(c.run_until(2_000_000, |c| c.status(leader).membership == target));
    assert!(
        c.status(leader).role != Role::Leader || c.status(leader).ballot > ballot,
        "still leading the new voters in the old ballot"
    );
    let new = c.elect_any();
    assert_ne!(new, leader, "a vetoed replica was elected");
    c.commit(req("b"));
}

/// Found by `random_fault_schedules_keep_safety_and_converge`: the only
/// voter restarts from an empty state machine and must still lead.
#[test]
fn regression_sole_voter_restarted_without_checkpoint() {
    use super::props::{run_schedule, Fault::*};
    let schedule = [
        Advance(7166),
        Advance(28957),
        Advance(28359),
        Calm,
        Reconfigure(1198206822),
        Calm,
        Propose,
        Persist(1),
        Crash(1),
        Restart(1, true),
        Calm,
        Crash(1),
        Restart(1, false),
    ];
    run_schedule(&schedule, |_| {});
}

/// Found by `random_fault_schedules_on_five_replicas`: a replica whose
/// whole newly committed range was compacted scanned an empty, inverted
/// slot range for `Reconfigure` decrees (a `BTreeMap::range` panic).
#[test]
fn regression_five_replicas_compacted_commit_range() {
    use super::props::{run_schedule_on, Fault::*};
    let schedule = [
        Advance(15040),
        Advance(8432),
        Crash(1),
        Advance(10650),
        Advance(18667),
        Isolate(4),
        Advance(24005),
        Calm,
        Isolate(0),
        Advance(21106),
        Advance(19516),
        Advance(3925),
        Advance(17624),
        Advance(14905),
        Propose,
        DeliverOne(11057681362941234079),
        Heal,
        Advance(25924),
        DeliverOne(3185594468456777731),
        Calm,
        Advance(23266),
        DeliverOne(5179870238791824478),
        DeliverOne(12882050321879659299),
        Advance(12079),
        Propose,
        Advance(13168),
        Propose,
        Propose,
        DeliverOne(287503393488039311),
        DeliverOne(6055127997418202366),
        Advance(27738),
        DeliverOne(16811054251786768888),
        Advance(16179),
        Advance(10334),
        DeliverOne(3126560742732642948),
        Calm,
        Advance(6787),
        Advance(29820),
        Propose,
        DeliverOne(11517760374375474827),
        Restart(4, false),
        Persist(2),
        Calm,
        Advance(23419),
        DeliverOne(7755244671335953472),
        Advance(9533),
        DeliverOne(14010378021016922403),
        Heal,
        DropOne(3508152433996201299),
        DeliverOne(2300441595085268332),
        DeliverOne(15710837055481321736),
        Persist(2),
        Calm,
        Restart(1, true),
        DeliverOne(8331140588600414272),
        DeliverOne(12664856219111029309),
        Persist(0),
        Propose,
        DeliverOne(12577193574546179532),
        Persist(4),
        DeliverOne(4000253602832135590),
        DeliverOne(17024886181066946933),
        Advance(4318),
        Propose,
        Persist(4),
        DeliverOne(4277565896574897022),
        Reconfigure(2731615861),
        Compact(1),
        Propose,
        Propose,
        Crash(2),
        DeliverOne(17056032551070028662),
        Crash(2),
        DeliverOne(1094519881542764426),
        DeliverOne(9750890610673700314),
        Relinquish,
        Persist(1),
        DuplicateOne(18026558361651920357),
        Heal,
        DeliverOne(10588577437564433776),
        Advance(16841),
        Persist(0),
        DeliverOne(10164548447092739546),
        Heal,
        Propose,
        DeliverOne(17251872313136289466),
        DeliverOne(2469482947179176021),
        Heal,
        Advance(9644),
        DropOne(10799473123182700403),
        DeliverOne(1170887663398025476),
        Propose,
        DeliverOne(17681190907789934625),
        DeliverOne(16743386795832141536),
        Heal,
        Advance(18367),
        DeliverOne(16413977098881615941),
        Calm,
        DeliverOne(523094883412487182),
        Persist(2),
        Advance(19053),
        Restart(1, true),
        Calm,
        Advance(7967),
        Persist(2),
        Advance(22641),
        Relinquish,
        Advance(28480),
        Compact(1),
        Heal,
        Persist(4),
        Propose,
        DeliverOne(11539926008250161300),
        DeliverOne(1857123356117300125),
        Restart(2, true),
        Isolate(3),
        Propose,
        DeliverOne(11850462842543069107),
        Calm,
        Reconfigure(2417928416),
        Persist(1),
        DeliverOne(16560360324368664640),
        Propose,
        Persist(4),
        DeliverOne(3293748532219239893),
        Persist(0),
        DeliverOne(751069446035942689),
        DropOne(4341757613491555173),
        Persist(0),
        Advance(2162),
        Calm,
        DeliverOne(7407905875606078343),
        Persist(0),
        DeliverOne(17332529171402894707),
        Crash(2),
        DeliverOne(18183603129699014482),
        Persist(0),
        Reconfigure(1784613517),
        DeliverOne(2880906387745598242),
        Persist(4),
        Persist(1),
        Propose,
        DeliverOne(15515837011868958411),
        DeliverOne(3468322056312557045),
        Advance(23269),
        DeliverOne(9853488177856028711),
        DeliverOne(14927385608832523302),
        Advance(23655),
        Propose,
        DeliverOne(11872522166745795168),
        Advance(2042),
        DeliverOne(8432907979070504021),
        Advance(11757),
        Restart(2, false),
        DeliverOne(7493132778323075897),
        Calm,
        Propose,
        Crash(2),
        Persist(1),
        Persist(3),
        Persist(3),
        Advance(26914),
        Heal,
        DeliverOne(14124473832073067947),
        DeliverOne(5123389891574611094),
        DeliverOne(1461359898002192455),
        DuplicateOne(6536678053767162982),
        Propose,
        DuplicateOne(6587422097310161111),
        Heal,
        Advance(22301),
        DeliverOne(7872596466667043083),
    ];
    run_schedule_on(5, &schedule, |_| {});
}
