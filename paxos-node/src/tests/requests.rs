//! Proposals to completions: election, replies, redirects, size limits,
//! the pipeline window, and what a deposed leader tells its clients.

use super::harness::{inc, Outcome, Sim};
use crate::effect::AbortReason;
use crate::framing;
use bytes::Bytes;
use paxos_core::batch::BatchLimits;
use paxos_core::msg;
use paxos_core::{codec, Message, Slot, Value};
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;

/// The (slot, value) of every Accept among `messages`.
fn accepts(messages: &[Bytes]) -> Vec<(Slot, Value)> {
    messages
        .iter()
        .filter_map(|b| match codec::decode(b.clone()) {
            Ok(Message::Accept(msg::Accept { slot, value, .. })) => Some((slot, value)),
            _ => None,
        })
        .collect()
}

#[test]
fn three_nodes_elect_a_leader_and_every_node_applies_the_same_decrees() {
    let mut sim = Sim::new(3);
    let leader = sim.elect();
    assert_eq!(sim.leaders(), vec![leader], "exactly one leader");

    // Four `propose_requests` calls of five requests each: four decrees.
    let mut ids = Vec::new();
    for round in 0..4u64 {
        let requests = (1..=5).map(|k| inc(round * 5 + k, 0)).collect();
        ids.extend(sim.submit(leader, requests));
    }
    assert!(sim.run_until(1_000_000, |s| ids
        .iter()
        .all(|i| s.outcomes.get(*i).is_some())));

    // The replies are the state machine's: running totals, in order.
    let mut total = 0;
    for (k, request) in ids.iter().enumerate() {
        total += k as u64 + 1;
        assert_eq!(sim.outcomes.total(*request), total);
    }
    assert!(sim.run_until(1_000_000, |s| s
        .hosts
        .values()
        .all(|h| h.counter().total == total)));
    let reference = sim.counter(leader).clone();
    let slots: BTreeSet<Slot> = reference.history.iter().map(|e| e.slot).collect();
    assert_eq!(slots.len(), 4, "one decree per call: {slots:?}");
    assert!(reference.history.iter().all(|e| e.proposer == leader));
    for (r, h) in &sim.hosts {
        assert_eq!(h.counter(), &reference, "{r} applied other decrees");
        assert_eq!(h.node.applied(), sim.node(leader).applied());
    }
    sim.check_agreement().unwrap();
}

#[test]
fn a_request_completes_only_once_a_quorum_made_its_decree_durable() {
    let mut sim = Sim::new(3);
    let leader = sim.elect();
    for h in sim.hosts.values_mut() {
        h.persist_at_once = false;
    }
    let ids = sim.submit(leader, vec![inc(1, 0)]);
    sim.run_for(100_000);
    assert!(sim.outcomes.get(ids[0]).is_none(), "nothing durable yet");
    sim.flush_persists(leader);
    sim.run_for(100_000);
    assert!(
        sim.outcomes.get(ids[0]).is_none(),
        "the leader's own vote is no quorum"
    );
    let follower = sim.others(leader)[0];
    sim.flush_persists(follower);
    assert!(sim.run_until(100_000, |s| s.outcomes.get(ids[0]).is_some()));
    assert_eq!(sim.outcomes.total(ids[0]), 1);
}

#[test]
fn followers_redirect_and_oversize_requests_are_refused_each_request_once() {
    let mut sim = Sim::with(3, |c| {
        c.core.batch_limits = BatchLimits {
            max_requests: 64,
            max_bytes: 4096,
        }
    });
    let leader = sim.elect();
    for follower in sim.others(leader) {
        // Refused at once, naming the leader: never proposed.
        let ids = sim.submit(follower, vec![inc(1, 0), inc(2, 0)]);
        let dir = sim.submit_directory(follower, Bytes::from_static(b"cmd"));
        for request in ids.into_iter().chain([dir]) {
            assert_eq!(
                sim.outcomes.abort(request),
                AbortReason::NotPrimary {
                    leader: Some(leader)
                }
            );
        }
    }

    // `drain_limits` counts 4 bytes of framing per request: the largest
    // request it allows fits one decree; a byte more never can.
    let (_, max_bytes) = sim.node(leader).drain_limits();
    let largest = max_bytes - 4;
    let ids = sim.submit(
        leader,
        vec![
            inc(1, 0),
            inc(100, largest + 1 - 8),
            inc(2, 0),
            inc(3, largest - 8),
        ],
    );
    let dir = sim.submit_directory(leader, Bytes::from(vec![0u8; largest + 1]));
    assert_eq!(sim.outcomes.abort(ids[1]), AbortReason::TooLarge);
    assert_eq!(sim.outcomes.abort(dir), AbortReason::TooLarge);
    assert!(sim.run_until(1_000_000, |s| ids
        .iter()
        .all(|i| s.outcomes.get(*i).is_some())));
    assert_eq!(sim.outcomes.total(ids[0]), 1);
    assert_eq!(sim.outcomes.total(ids[2]), 3);
    assert_eq!(sim.outcomes.total(ids[3]), 6);

    // Every request settled (the harness fails on a second outcome).
    sim.run_for(1_000_000);
    assert_eq!(sim.outcomes.len(), 2 * 3 + 5);
    sim.check_agreement().unwrap();
}

#[test]
fn a_full_window_stalls_batches_which_are_proposed_later_never_failed() {
    let window = 2;
    let mut sim = Sim::with(3, |c| {
        c.core.pipeline_window = window;
        // A header and one request per decree.
        c.core.batch_limits.max_requests = 2;
    });
    let leader = sim.elect();
    assert!(sim.node(leader).wants_requests());

    // Six decrees' worth in one call, with no message delivered yet.
    let ids = sim.submit(leader, (1..=6).map(|k| inc(k, 0)).collect());
    assert_eq!(sim.node(leader).status().in_flight, window);
    assert!(!sim.node(leader).wants_requests(), "window full");
    assert_eq!(sim.outcomes.len(), 0, "stalled, not failed");
    let follower = sim.others(leader)[0];
    let proposed: BTreeSet<Slot> = accepts(&sim.in_flight(leader, follower))
        .into_iter()
        .map(|(slot, _)| slot)
        .collect();
    assert_eq!(proposed.len(), window, "only the window is proposed");

    // Requests handed in behind stalled batches queue up behind them.
    let late = sim.submit(leader, vec![inc(7, 0)]);
    assert_eq!(sim.outcomes.len(), 0);

    // As decrees are chosen the stalled ones go out, in order.
    let all: Vec<u64> = ids.iter().chain(&late).copied().collect();
    let mut most_in_flight = 0;
    assert!(sim.run_until(1_000_000, |s| {
        most_in_flight = most_in_flight.max(s.node(leader).status().in_flight);
        all.iter().all(|i| s.outcomes.get(*i).is_some())
    }));
    assert!(most_in_flight <= window);
    let mut total = 0;
    for (k, request) in all.iter().enumerate() {
        total += k as u64 + 1;
        assert_eq!(sim.outcomes.total(*request), total);
    }
    assert_eq!(sim.node(leader).status().proposed_batches, 7);
    assert!(sim.node(leader).wants_requests());
}

#[test]
fn a_leader_cut_off_steps_down_and_settles_what_it_holds() {
    let mut sim = Sim::with(3, |c| {
        c.core.pipeline_window = 1;
        c.core.batch_limits.max_requests = 2;
    });
    let old = sim.elect();
    sim.isolate(old);
    // One decree in flight, two stalled behind the window.
    let ids = sim.submit(old, vec![inc(1, 0), inc(2, 0), inc(4, 0)]);
    let rest = sim.others(old);
    let new = sim.elect_among(&rest);
    assert!(sim.run_until(5_000_000, |s| !s.node(old).is_leader()));
    // Proposed: may or may not execute. Stalled: certainly never will.
    assert_eq!(sim.outcomes.abort(ids[0]), AbortReason::OutcomeUnknown);
    for stalled in &ids[1..] {
        assert!(matches!(
            sim.outcomes.abort(*stalled),
            AbortReason::NotPrimary { .. }
        ));
    }

    let fresh = sim.submit(new, vec![inc(8, 0)]);
    assert!(sim.run_until(1_000_000, |s| s.outcomes.get(fresh[0]).is_some()));
    assert_eq!(sim.outcomes.total(fresh[0]), 8, "the old proposal was lost");
    sim.heal();
    assert!(sim.run_until(2_000_000, |s| s.counter(old).total == 8));
    assert_eq!(sim.counter(old), sim.counter(new));
    sim.check_agreement().unwrap();
}

#[test]
fn a_deposed_leader_never_completes_a_request_whose_slot_another_leader_filled() {
    let mut sim = Sim::new(3);
    let old = sim.elect();
    // The old leader is paused (its lease does not run out) and cut off.
    sim.frozen.insert(old);
    sim.isolate(old);
    let mine = sim.submit(old, vec![inc(7, 0)]);
    let rest = sim.others(old);
    let my_slot = accepts(&sim.in_flight(old, rest[0]))[0].0;
    let new = sim.elect_among(&rest);
    let theirs = sim.submit(new, vec![inc(7, 0)]);
    assert!(sim.run_until(1_000_000, |s| s.outcomes.get(theirs[0]).is_some()));
    assert_eq!(sim.outcomes.total(theirs[0]), 7);
    assert!(sim.outcomes.get(mine[0]).is_none());

    // Back: the old leader hears the new ballot, steps down, and learns
    // what its slot holds.
    sim.frozen.clear();
    sim.heal();
    assert!(sim.run_until(2_000_000, |s| s.node(old).applied()
        == s.node(new).applied()));
    assert_eq!(sim.outcomes.abort(mine[0]), AbortReason::OutcomeUnknown);
    let at_my_slot: Vec<_> = sim
        .counter(old)
        .history
        .iter()
        .filter(|e| e.slot == my_slot)
        .collect();
    assert!(
        at_my_slot.iter().all(|e| e.proposer == new),
        "slot {my_slot} holds the new leader's decree: {at_my_slot:?}"
    );
    assert_eq!(sim.counter(old).total, 7, "executed once, the new leader's");
    sim.check_agreement().unwrap();
}

/// The proposal tag, not the request bytes, says whose batch a decree is:
/// a leader that learns, in the very call that deposes it, that its slot
/// was chosen with another leader's byte-identical batch must not answer
/// its client with that batch's reply.
#[test]
fn a_byte_identical_batch_of_another_leader_is_not_taken_for_ours() {
    let mut sim = Sim::new(3);
    let old = sim.elect();
    let rest = sim.others(old);
    // Record what the new leader sends the old one, and lose it.
    let to_old: Rc<RefCell<Vec<Bytes>>> = Rc::default();
    let tap = Rc::clone(&to_old);
    sim.drop_rule = Some(Box::new(move |from, to, bytes| {
        if to == old {
            tap.borrow_mut().push(bytes.clone());
        }
        from == old || to == old
    }));
    sim.frozen.insert(old);
    let request = inc(7, 0);
    let mine = sim.submit(old, vec![request.clone()]);
    let (my_slot, my_value) = accepts(&sim.in_flight(old, rest[0])).remove(0);
    let new = sim.elect_among(&rest);
    let theirs = sim.submit(new, vec![request.clone()]);
    assert!(sim.run_until(1_000_000, |s| s.outcomes.get(theirs[0]).is_some()));

    // Their decree at our slot: the same requests, another tag.
    let (their_value, ballot) = to_old
        .borrow()
        .iter()
        .find_map(|b| match codec::decode(b.clone()) {
            Ok(Message::Accept(msg::Accept {
                slot,
                value,
                ballot,
                ..
            })) if slot == my_slot => Some((value, ballot)),
            _ => None,
        })
        .expect("the new leader proposed at the old leader's slot");
    let (Value::Requests(mine_bytes), Value::Requests(their_bytes)) = (&my_value, &their_value)
    else {
        panic!("client decrees expected");
    };
    let (my_header, my_requests) = framing::parse(mine_bytes).unwrap();
    let (their_header, their_requests) = framing::parse(their_bytes).unwrap();
    assert_eq!(
        my_requests.collect::<Vec<_>>(),
        their_requests.collect::<Vec<_>>()
    );
    assert_ne!(my_header.tag, their_header.tag);
    assert_eq!(their_header.tag.proposer, new);

    // One message tells the old leader both that a higher ballot leads and
    // that the slot is chosen (an Accept retransmitted after the commit), so
    // it applies the slot before it notices it was deposed.
    let commit_index = sim.node(new).status().commit_index;
    assert!(commit_index >= my_slot);
    let retransmission = codec::encode_to_bytes(&Message::Accept(msg::Accept {
        ballot,
        slot: my_slot,
        value: their_value,
        commit_index,
    }));
    sim.drop_rule = None;
    sim.deliver(new, old, retransmission);
    assert_eq!(sim.node(old).applied(), my_slot);
    assert_eq!(sim.outcomes.abort(mine[0]), AbortReason::OutcomeUnknown);
    assert!(!sim.node(old).is_leader());
    let executed = &sim.counter(old).history;
    assert_eq!(executed.len(), 1);
    assert_eq!(executed[0].proposer, new);

    sim.frozen.clear();
    assert!(sim.run_until(2_000_000, |s| s.node(old).applied()
        == s.node(new).applied()));
    assert!(!matches!(
        sim.outcomes.get(mine[0]),
        Some(Outcome::Complete(_))
    ));
    sim.check_agreement().unwrap();
}

#[test]
fn shutdown_ends_every_request_the_node_holds() {
    let mut sim = Sim::with(3, |c| {
        c.core.pipeline_window = 1;
        c.core.batch_limits.max_requests = 2;
    });
    let leader = sim.elect();
    let ids = sim.submit(leader, vec![inc(1, 0), inc(2, 0)]);
    sim.host_mut(leader).node.shutdown();
    sim.drain(leader);
    // Proposed: fate unknown. Stalled: never proposed.
    assert_eq!(sim.outcomes.abort(ids[0]), AbortReason::ShuttingDown);
    assert!(matches!(
        sim.outcomes.abort(ids[1]),
        AbortReason::NotPrimary { .. }
    ));
    assert_eq!(sim.node(leader).status().in_flight, 0);
    // The decree may still be chosen and applied; nobody is told twice.
    sim.run_for(1_000_000);
    assert_eq!(sim.outcomes.len(), 2);
}
