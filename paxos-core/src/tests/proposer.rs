//! Proposer (leader) behaviour: proposing, pipelining, window limits,
//! retransmission, own vote counted only after its persist.

use super::harness::*;
use crate::Slot;
use crate::{msg, Action, Message, ProposeError, Role, Time, Value};

#[test]
fn single_replica_commits_a_value() {
    let mut c = Cluster::new(1, |_| {});
    let leader = c.elect_any();
    assert_eq!(leader, id(1));
    let slot = c.commit(req("x"));
    assert_eq!(slot, Slot(1));
    assert_eq!(c.applied_values(id(1)), vec![req("x")]);
}

#[test]
fn three_replicas_commit_in_order_everywhere() {
    let mut c = Cluster::new(3, |_| {});
    for i in 0..20 {
        c.commit(req(&format!("v{i}")));
    }
    let expected: Vec<Value> = (0..20).map(|i| req(&format!("v{i}"))).collect();
    for r in 1..=3 {
        assert_eq!(c.applied_values(id(r)), expected, "replica {r}");
    }
}

#[test]
fn pipeline_window_bounds_in_flight_proposals() {
    let mut c = Cluster::new(3, |cfg| cfg.pipeline_window = 4);
    let leader = c.elect_any();
    // Hold the followers' replies so nothing commits.
    for r in 1..=3 {
        if id(r) != leader {
            c.cut.insert((id(r), leader));
        }
    }
    let now = c.now;
    let mut slots = Vec::new();
    for i in 0..4 {
        slots.push(
            c.replica(leader)
                .propose(now, req(&format!("p{i}")))
                .unwrap(),
        );
    }
    assert_eq!(slots, vec![Slot(1), Slot(2), Slot(3), Slot(4)]);
    assert_eq!(
        c.replica(leader).propose(now, req("over")),
        Err(ProposeError::WindowFull)
    );
    assert_eq!(c.status(leader).in_flight, 4);
    c.pump();
    c.heal();
    // Retransmission after the heal gets them chosen; the window reopens.
    assert!(c.run_until(1_000_000, |c| c.all_applied(Slot(4))));
    let now = c.now;
    assert_eq!(c.replica(leader).propose(now, req("next")), Ok(Slot(5)));
}

#[test]
fn followers_refuse_proposals_and_name_the_leader() {
    let mut c = Cluster::new(3, |_| {});
    let leader = c.elect_any();
    c.advance(30_000); // heartbeats tell followers who leads
    let follower = if leader == id(1) { id(2) } else { id(1) };
    let now = c.now;
    assert_eq!(
        c.replica(follower).propose(now, req("x")),
        Err(ProposeError::NotLeader {
            leader: Some(leader)
        })
    );
}

#[test]
fn oversized_and_reconfigure_values_are_refused() {
    let mut c = Cluster::new(1, |cfg| {
        cfg.batch_limits.max_bytes = 64;
        cfg.max_message_bytes = 8192;
    });
    let leader = c.elect_any();
    let now = c.now;
    let big = Value::Requests(bytes::Bytes::from(vec![0u8; 65]));
    assert_eq!(
        c.replica(leader).propose(now, big),
        Err(ProposeError::TooLarge { len: 65, max: 64 })
    );
    let m = crate::Membership {
        voters: vec![id(2), id(1)],
        learners: vec![],
    };
    assert!(matches!(
        c.replica(leader).propose(now, reconfigure(Slot::ZERO, m)),
        Err(ProposeError::BadMembership { .. })
    ));
    let empty = crate::Membership::with_voters(vec![]);
    assert!(matches!(
        c.replica(leader)
            .propose(now, reconfigure(Slot::ZERO, empty)),
        Err(ProposeError::BadMembership { .. })
    ));
    // Nothing was consumed: the next proposal still gets slot 1.
    assert_eq!(c.replica(leader).propose(now, req("ok")), Ok(Slot(1)));
}

#[test]
fn lost_accepts_are_retransmitted() {
    let mut c = Cluster::new(3, |_| {});
    let leader = c.elect_any();
    let others: Vec<_> = (1..=3).map(id).filter(|r| *r != leader).collect();
    c.cut.insert((leader, others[0]));
    c.cut.insert((leader, others[1]));
    let now = c.now;
    c.replica(leader).propose(now, req("lost")).unwrap();
    c.pump();
    assert_eq!(c.status(leader).commit_index, Slot::ZERO);
    c.heal();
    assert!(c.run_until(500_000, |c| c.all_applied(Slot(1))));
    assert!(c.delivered["accept"] >= 2);
}

#[test]
fn leader_counts_its_own_vote_only_after_its_persist() {
    let mut c = Cluster::new(1, |_| {});
    let leader = c.elect_any();
    c.nodes.get_mut(&leader).unwrap().auto_persist = false;
    let now = c.now;
    c.replica(leader).propose(now, req("x")).unwrap();
    c.pump();
    assert_eq!(
        c.status(leader).commit_index,
        Slot::ZERO,
        "own vote counted before persist"
    );
    assert!(c.applied_values(leader).is_empty());
    c.complete_persists(leader);
    c.pump();
    assert_eq!(c.status(leader).commit_index, Slot(1));
    assert_eq!(c.applied_values(leader), vec![req("x")]);
}

#[test]
fn accept_messages_carry_the_commit_index_and_ballot() {
    let mut c = Cluster::new(3, |_| {});
    let leader = c.elect_any();
    c.commit(req("a"));
    let now = c.now;
    let ballot = c.status(leader).ballot;
    c.replica(leader).propose(now, req("b")).unwrap();
    let mut accepts = Vec::new();
    while let Some(a) = c.replica(leader).poll_action() {
        if let Action::Send {
            msg:
                Message::Accept(msg::Accept {
                    ballot: b,
                    slot,
                    commit_index,
                    ..
                }),
            ..
        } = a
        {
            accepts.push((b, slot, commit_index));
        }
    }
    assert_eq!(
        accepts,
        vec![(ballot, Slot(2), Slot(1)), (ballot, Slot(2), Slot(1))]
    );
    assert_eq!(c.status(leader).role, Role::Leader);
    let _ = Time(0);
}
