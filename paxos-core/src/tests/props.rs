//! Property tests: random message sequences against a single acceptor, and
//! random fault schedules (loss, duplication, reordering, slow storage,
//! crashes, partitions) against a small cluster. Contracts are on; the
//! cluster harness checks that no two replicas apply different values at a
//! slot and that applies are contiguous.

use super::harness::*;
use crate::Slot;
use crate::{
    msg, Accepted, Action, Ballot, Config, DurableState, Membership, Message, PersistEntry,
    Replica, Time, Value,
};
use proptest::prelude::*;
use std::collections::VecDeque;

/// Values depend on the slot only, so that random inputs never ask an
/// acceptor for two values at one (slot, ballot) (a hard assertion that
/// would only show that the input was not Paxos).
fn value_for(slot: Slot) -> Value {
    req(&format!("slot-{slot}"))
}

#[derive(Clone, Debug)]
enum AcceptorInput {
    Prepare {
        round: u64,
        leader: u32,
        from: Slot,
    },
    Accept {
        round: u64,
        leader: u32,
        slot: Slot,
        commit: Slot,
    },
    Heartbeat {
        round: u64,
        leader: u32,
        commit: Slot,
    },
    Fetch {
        from: Slot,
    },
    Decrees {
        from: Slot,
        count: u64,
        round: u64,
    },
    Persisted,
    Tick {
        micros: u64,
    },
    Compact,
}

fn acceptor_input() -> impl Strategy<Value = AcceptorInput> {
    prop_oneof![
        (0u64..6, 1u32..4, 0u64..12).prop_map(|(round, leader, from)| AcceptorInput::Prepare {
            round,
            leader,
            from: Slot(from)
        }),
        (0u64..6, 1u32..4, 0u64..12, 0u64..8).prop_map(|(round, leader, slot, commit)| {
            AcceptorInput::Accept {
                round,
                leader,
                slot: Slot(slot),
                commit: Slot(commit),
            }
        }),
        (0u64..6, 1u32..4, 0u64..10).prop_map(|(round, leader, commit)| AcceptorInput::Heartbeat {
            round,
            leader,
            commit: Slot(commit)
        }),
        (0u64..12).prop_map(|from| AcceptorInput::Fetch { from: Slot(from) }),
        (1u64..10, 0u64..4, 0u64..6).prop_map(|(from, count, round)| AcceptorInput::Decrees {
            from: Slot(from),
            count,
            round
        }),
        Just(AcceptorInput::Persisted),
        Just(AcceptorInput::Persisted),
        (0u64..200_000).prop_map(|micros| AcceptorInput::Tick { micros }),
        Just(AcceptorInput::Compact),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, .. ProptestConfig::default() })]

    /// A single acceptor under arbitrary (Paxos-shaped) input: its promise
    /// never goes down, and every Promise/Accepted it sends is backed by
    /// state that storage already made durable.
    #[test]
    fn a_single_acceptor_keeps_its_contracts(inputs in proptest::collection::vec(acceptor_input(), 1..80)) {
        let m = Membership::with_voters(vec![id(1), id(2), id(3)]);
        let mut cfg = Config::new(id(2), m);
        cfg.catchup_chunk_decrees = 3;
        cfg.retain_decrees = 4;
        cfg.pipeline_window = 4;
        cfg.max_accept_ahead = 6;
        let mut r = Replica::new(cfg, DurableState::default(), Slot::ZERO, 11, Time(0));
        let mut now = Time(0);
        let mut durable = DurableState::default();
        let mut pending: VecDeque<(crate::PersistToken, Vec<PersistEntry>)> = VecDeque::new();
        let mut last_promised = Ballot::ZERO;
        let mut applied = Slot::ZERO;
        for input in inputs {
            match input {
                AcceptorInput::Prepare { round, leader, from } => r.handle_message(
                    now, id(leader), Message::Prepare(msg::Prepare { ballot: Ballot::new(round, id(leader)), from_slot: from })),
                AcceptorInput::Accept { round, leader, slot, commit } => r.handle_message(
                    now, id(leader), Message::Accept(msg::Accept {
                        ballot: Ballot::new(round, id(leader)), slot, value: value_for(slot), commit_index: commit })),
                AcceptorInput::Heartbeat { round, leader, commit } => r.handle_message(
                    now, id(leader), Message::Heartbeat(msg::Heartbeat { ballot: Ballot::new(round, id(leader)), commit_index: commit, read_round: 1 })),
                AcceptorInput::Fetch { from } => r.handle_message(now, id(1), Message::Fetch(msg::Fetch { from_slot: from })),
                AcceptorInput::Decrees { from, count, round } => {
                    let decrees = (0..count)
                        .map(|i| from.plus(i))
                        .map(|slot| Accepted { slot, ballot: Ballot::new(round, id(1)), value: value_for(slot) })
                        .collect();
                    r.handle_message(now, id(1), Message::Decrees(msg::Decrees {
                        from_slot: from, commit_index: from.plus(count), log_start: Slot(1), decrees }))
                }
                AcceptorInput::Persisted => {
                    if let Some((token, entries)) = pending.pop_front() {
                        for e in &entries { durable.apply(e); }
                        r.on_persisted(now, token);
                    }
                }
                AcceptorInput::Tick { micros } => {
                    now = now.plus_micros(micros);
                    r.handle_tick(now);
                }
                AcceptorInput::Compact => {
                    let through = Slot(r.status().applied_index.0 / 2);
                    r.compact(through);
                }
            }
            while let Some(a) = r.poll_action() {
                match a {
                    Action::Persist { token, entries } => pending.push_back((token, entries)),
                    Action::Send { msg: Message::Promise(msg::Promise { ballot, entries, .. }), .. } => {
                        prop_assert!(durable.promised >= ballot, "promise of {ballot} sent before it was durable");
                        for e in entries {
                            prop_assert!(e.ballot <= ballot || e.slot <= r.status().commit_index);
                        }
                    }
                    Action::Send { msg: Message::Accepted(msg::Accepted { ballot, slot, .. }), .. } => {
                        let e = durable.accepted.get(&slot);
                        prop_assert!(
                            // Or a "virtual vote" for a chosen slot this
                            // acceptor no longer holds in memory.
                            e.is_some_and(|e| e.ballot >= ballot)
                                || slot <= durable.truncated_through
                                || slot <= r.status().commit_index,
                            "accepted ({slot}, {ballot}) sent before it was durable"
                        );
                    }
                    Action::Apply { slot, value, .. } => {
                        prop_assert_eq!(slot, applied.next());
                        prop_assert_eq!(value, value_for(slot));
                        applied = slot;
                    }
                    _ => {}
                }
            }
            let s = r.status();
            prop_assert!(s.ballot >= last_promised, "promise went backwards");
            last_promised = s.ballot;
            prop_assert!(s.applied_index <= s.commit_index);
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) enum Fault {
    DeliverOne(usize),
    DropOne(usize),
    DuplicateOne(usize),
    Advance(u64),
    Propose,
    Persist(u32),
    Crash(u32),
    Restart(u32, bool),
    Isolate(u32),
    Heal,
    Relinquish,
    /// A calm moment: storage catches up and the network delivers everything.
    Calm,
    /// The replica's state machine checkpoints and the replica compacts.
    Compact(u32),
    /// The leader is asked to change the voters to this subset (a bit mask
    /// over the replicas, taken modulo the non-empty subsets).
    Reconfigure(u32),
}

pub(crate) fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        20 => any::<usize>().prop_map(Fault::DeliverOne),
        2 => any::<usize>().prop_map(Fault::DropOne),
        2 => any::<usize>().prop_map(Fault::DuplicateOne),
        6 => (1u64..30_000).prop_map(Fault::Advance),
        8 => Just(Fault::Propose),
        10 => (0u32..5).prop_map(Fault::Persist),
        1 => (0u32..5).prop_map(Fault::Crash),
        2 => (0u32..5, any::<bool>()).prop_map(|(r, k)| Fault::Restart(r, k)),
        1 => (0u32..5).prop_map(Fault::Isolate),
        2 => Just(Fault::Heal),
        1 => Just(Fault::Relinquish),
        4 => Just(Fault::Calm),
        1 => (0u32..5).prop_map(Fault::Compact),
        1 => any::<u32>().prop_map(Fault::Reconfigure),
    ]
}

/// Runs a random fault schedule on a 3-replica cluster, then heals
/// everything and checks that the cluster converges and still commits.
/// Returns the cluster for further checks.
pub(crate) fn run_schedule(schedule: &[Fault], plant: impl Fn(&mut Replica)) -> Cluster {
    run_schedule_on(3, schedule, plant)
}

/// [`run_schedule`] on an `n`-replica cluster (fault targets are taken
/// modulo `n`).
pub(crate) fn run_schedule_on(n: u32, schedule: &[Fault], plant: impl Fn(&mut Replica)) -> Cluster {
    let pick = |r: u32| id(r % n + 1);
    let mut c = Cluster::new(n, |cfg| {
        cfg.pipeline_window = 3;
        cfg.max_accept_ahead = 6;
        cfg.catchup_chunk_decrees = 2;
        cfg.retain_decrees = 8;
    });
    for r in 1..=n {
        c.nodes.get_mut(&id(r)).unwrap().auto_persist = false;
        plant(c.replica(id(r)));
    }
    let mut proposals = 0u32;
    for f in schedule {
        match f {
            Fault::DeliverOne(i) => {
                if !c.net.is_empty() {
                    let (from, to, msg) = c.net.remove(i % c.net.len()).unwrap();
                    if !c.cut.contains(&(from, to)) && c.is_up(to) {
                        let now = c.now;
                        c.replica(to).handle_message(now, from, msg);
                    }
                }
            }
            Fault::DropOne(i) => {
                if !c.net.is_empty() {
                    let n = c.net.len();
                    c.net.remove(i % n);
                }
            }
            Fault::DuplicateOne(i) => {
                if !c.net.is_empty() && c.net.len() < 500 {
                    let m = c.net[i % c.net.len()].clone();
                    c.net.push_back(m);
                }
            }
            Fault::Advance(us) => {
                c.now = c.now.plus_micros(*us);
                let now = c.now;
                for r in 1..=n {
                    if c.is_up(id(r)) && c.replica(id(r)).next_timer().is_some_and(|t| t <= now) {
                        c.replica(id(r)).handle_tick(now);
                    }
                }
            }
            Fault::Propose => {
                let now = c.now;
                for r in 1..=n {
                    if c.is_up(id(r)) && c.status(id(r)).role == crate::Role::Leader {
                        proposals += 1;
                        let _ = c.replica(id(r)).propose(now, req(&format!("p{proposals}")));
                    }
                }
            }
            Fault::Persist(r) => {
                if c.is_up(pick(*r)) {
                    c.complete_persists(pick(*r));
                }
            }
            Fault::Crash(r) => {
                if c.is_up(pick(*r)) {
                    c.crash(pick(*r));
                }
            }
            Fault::Restart(r, keep) => {
                if !c.is_up(pick(*r)) {
                    let now = c.now;
                    let node = c.nodes.get_mut(&pick(*r)).unwrap();
                    node.seed += 1000;
                    if *keep {
                        node.applied_through = node
                            .applied
                            .last()
                            .map_or(node.applied_through, |(s, _)| *s);
                        // A state machine that keeps what it applied across
                        // a restart made it durable: that is a checkpoint
                        // (the core may truncate its log up to it).
                        node.checkpoint = node.applied_through;
                        node.checkpoint_membership = node.sm_membership.clone();
                    } else {
                        node.applied_through = node.checkpoint;
                    }
                    if !*keep {
                        node.sm_membership = node.checkpoint_membership.clone();
                    }
                    node.applied.clear();
                    let mut rep = Replica::new(
                        node.restart_config(&node.sm_membership),
                        node.durable.clone(),
                        node.applied_through,
                        node.seed,
                        now,
                    );
                    plant(&mut rep);
                    node.replica = Some(rep);
                }
            }
            Fault::Calm => {
                for _ in 0..8 {
                    for r in 1..=n {
                        if c.is_up(id(r)) {
                            c.complete_persists(id(r));
                        }
                    }
                    c.drain_actions();
                    let batch: Vec<_> = c.net.drain(..).collect();
                    for (from, to, msg) in batch {
                        if !c.cut.contains(&(from, to)) && c.is_up(to) {
                            let now = c.now;
                            c.replica(to).handle_message(now, from, msg);
                        }
                    }
                }
            }
            Fault::Compact(r) => c.checkpoint_and_compact(pick(*r)),
            Fault::Isolate(r) => c.isolate(pick(*r)),
            Fault::Heal => c.heal(),
            Fault::Reconfigure(mask) => {
                let mask = mask % ((1u32 << n) - 1) + 1;
                let target = Membership::with_voters(
                    (1..=n)
                        .filter(|r| mask & (1 << (r - 1)) != 0)
                        .map(id)
                        .collect(),
                );
                let now = c.now;
                for r in 1..=n {
                    if c.is_up(id(r)) && c.status(id(r)).role == crate::Role::Leader {
                        let _ = c.replica(id(r)).change_configuration(now, target.clone());
                    }
                }
            }
            Fault::Relinquish => {
                let now = c.now;
                for r in 1..=n {
                    if c.is_up(id(r)) && c.status(id(r)).role == crate::Role::Leader {
                        let _ = c.replica(id(r)).relinquish_primary(now);
                    }
                }
            }
        }
        c.drain_actions();
    }
    // Liveness phase: heal, restart, fast storage; the cluster must converge.
    c.heal();
    for r in 1..=n {
        if !c.is_up(id(r)) {
            c.restart(id(r), true);
        }
        c.nodes.get_mut(&id(r)).unwrap().auto_persist = true;
        c.complete_persists(id(r));
    }
    c.pump();
    let deadline = c.now.plus_micros(10_000_000);
    let mut final_slot = None;
    loop {
        for r in 1..=n {
            if c.status(id(r)).needs_snapshot {
                c.install_snapshot(id(r));
            }
        }
        if let Some(l) = c.leader() {
            // (Re-)propose under every new leader until one gets through: a
            // proposal of a deposed leader may never be chosen.
            let ballot = c.status(l).ballot;
            if final_slot.is_none_or(|(_, b)| b != ballot) {
                let now = c.now;
                if let Ok(s) = c.replica(l).propose(now, req("final")) {
                    final_slot = Some((s, ballot));
                }
            }
        }
        // Replicas removed from the membership are not kept up to date.
        if final_slot.is_some_and(|(s, _)| c.members_applied(s)) {
            break;
        }
        assert!(
            c.now < deadline,
            "cluster did not converge: {:?}",
            (1..=n).map(|r| c.status(id(r))).collect::<Vec<_>>()
        );
        c.advance(5_000);
    }
    c
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, .. ProptestConfig::default() })]

    /// Safety under random faults, and liveness once they stop.
    #[test]
    fn random_fault_schedules_keep_safety_and_converge(schedule in proptest::collection::vec(fault(), 1..250)) {
        let c = run_schedule(&schedule, |_| {});
        // Every replica agrees on the applied prefix it holds.
        let reference = c.chosen.clone();
        for node in c.nodes.values() {
            for (slot, v) in &node.applied {
                prop_assert_eq!(reference.get(slot), Some(v));
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    /// The same on five replicas (quorums of three; two may be down).
    #[test]
    fn random_fault_schedules_on_five_replicas(schedule in proptest::collection::vec(fault(), 1..300)) {
        let c = run_schedule_on(5, &schedule, |_| {});
        for node in c.nodes.values() {
            for (slot, v) in &node.applied {
                prop_assert_eq!(c.chosen.get(slot), Some(v));
            }
        }
    }
}

#[derive(Clone, Debug)]
enum ProposerInput {
    Propose,
    Accepted {
        from: u32,
        slot: Slot,
        own_ballot: bool,
    },
    Reject {
        round: u64,
    },
    HeartbeatAck {
        from: u32,
        commit: Slot,
    },
    Persisted,
    Tick {
        micros: u64,
    },
}

fn proposer_input() -> impl Strategy<Value = ProposerInput> {
    prop_oneof![
        3 => Just(ProposerInput::Propose),
        6 => (2u32..4, 1u64..12, proptest::bool::weighted(0.9))
            .prop_map(|(from, slot, own_ballot)| ProposerInput::Accepted { from, slot: Slot(slot), own_ballot }),
        1 => (0u64..4).prop_map(|round| ProposerInput::Reject { round }),
        1 => (2u32..4, 0u64..12).prop_map(|(from, commit)| ProposerInput::HeartbeatAck { from, commit: Slot(commit) }),
        4 => Just(ProposerInput::Persisted),
        1 => (0u64..100_000).prop_map(|micros| ProposerInput::Tick { micros }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, .. ProptestConfig::default() })]

    /// A single leader under arbitrary acknowledgements: it commits a slot
    /// only with a quorum of votes in its ballot, its own counting only once
    /// durable; it applies exactly what it proposed, in order; it keeps the
    /// window.
    #[test]
    fn a_single_proposer_commits_only_with_a_durable_quorum(inputs in proptest::collection::vec(proposer_input(), 1..120)) {
        let m = Membership::with_voters(vec![id(1), id(2), id(3)]);
        let mut cfg = Config::new(id(1), m);
        cfg.pipeline_window = 4;
        cfg.max_accept_ahead = 8;
        let mut r = Replica::new(cfg, DurableState::default(), Slot::ZERO, 5, Time(0));
        let mut durable = DurableState::default();
        let mut pending: VecDeque<(crate::PersistToken, Vec<PersistEntry>)> = VecDeque::new();
        let mut now = Time(600_000); // past any election timeout
        // Elect replica 1: time out, persist, collect r2's promise.
        r.handle_tick(now);
        let mut ballot = None;
        for _ in 0..4 {
            let mut sent = Vec::new();
            while let Some(a) = r.poll_action() {
                match a {
                    Action::Persist { token, entries } => pending.push_back((token, entries)),
                    Action::Send { msg: Message::Prepare(msg::Prepare { ballot: b, .. }), .. } => ballot = Some(b),
                    Action::Send { to, msg } => sent.push((to, msg)),
                    _ => {}
                }
            }
            grant_pre_votes(&mut r, now, &sent);
            if let Some((t, entries)) = pending.pop_front() {
                for e in &entries { durable.apply(e); }
                r.on_persisted(now, t);
            }
        }
        let ballot = ballot.expect("campaigned");
        r.handle_message(now, id(2), Message::Promise(msg::Promise {
            ballot, from_slot: Slot(1), commit_index: Slot::ZERO, log_start: Slot(1), entries: vec![], next_from: None }));
        prop_assert_eq!(r.status().role, crate::Role::Leader);

        let mut proposed: std::collections::BTreeMap<Slot, Value> = Default::default();
        let mut peer_acks: std::collections::BTreeMap<Slot, std::collections::BTreeSet<u32>> = Default::default();
        let mut applied = Slot::ZERO;
        let mut n = 0u32;
        for input in inputs {
            match input {
                ProposerInput::Propose => {
                    n += 1;
                    let v = req(&format!("v{n}"));
                    if let Ok(slot) = r.propose(now, v.clone()) {
                        prop_assert!(proposed.insert(slot, v).is_none(), "slot {} proposed twice", slot);
                    }
                }
                ProposerInput::Accepted { from, slot, own_ballot } => {
                    let b = if own_ballot { ballot } else { Ballot::new(ballot.round.saturating_sub(1), id(from)) };
                    if own_ballot && proposed.contains_key(&slot) && r.status().role == crate::Role::Leader {
                        peer_acks.entry(slot).or_default().insert(from);
                    }
                    r.handle_message(now, id(from), Message::Accepted(msg::Accepted { ballot: b, slot, commit_index: Slot::ZERO }));
                }
                ProposerInput::Reject { round } => {
                    r.handle_message(now, id(2), Message::Reject(msg::Reject { promised: Ballot::new(round, id(3)) }));
                }
                ProposerInput::HeartbeatAck { from, commit } => {
                    r.handle_message(now, id(from), Message::HeartbeatAck(msg::HeartbeatAck { ballot, commit_index: commit, applied_index: commit, can_become_primary: true, read_round: 1 }));
                }
                ProposerInput::Persisted => {
                    if let Some((t, entries)) = pending.pop_front() {
                        for e in &entries { durable.apply(e); }
                        r.on_persisted(now, t);
                    }
                }
                ProposerInput::Tick { micros } => {
                    now = now.plus_micros(micros);
                    r.handle_tick(now);
                }
            }
            while let Some(a) = r.poll_action() {
                match a {
                    Action::Persist { token, entries } => pending.push_back((token, entries)),
                    Action::Apply { slot, value, .. } => {
                        prop_assert_eq!(slot, applied.next());
                        prop_assert_eq!(Some(&value), proposed.get(&slot), "applied what was not proposed");
                        let own = durable.accepted.get(&slot).is_some_and(|e| e.ballot == ballot) as usize;
                        let peers = peer_acks.get(&slot).map_or(0, |s| s.len());
                        prop_assert!(own + peers >= 2, "slot {} committed with {} durable own + {} peer votes", slot, own, peers);
                        applied = slot;
                    }
                    _ => {}
                }
            }
            let s = r.status();
            prop_assert!(s.in_flight <= 4);
            prop_assert!(s.commit_index == applied);
        }
    }
}
