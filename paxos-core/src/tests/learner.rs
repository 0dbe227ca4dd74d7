//! Learner: commit knowledge, ballot-checked application, exactly-once
//! in-order apply across restarts.

use super::harness::*;
use crate::Slot;
use crate::{
    msg, Accepted, Action, Ballot, Config, DurableState, Membership, Message, PersistEntry,
    Replica, Time, Value,
};

fn follower(id_: u32) -> Replica {
    let m = Membership::with_voters(vec![id(1), id(2), id(3)]);
    let mut cfg = Config::new(id(id_), m);
    cfg.pipeline_window = 4;
    cfg.max_accept_ahead = 16;
    Replica::new(cfg, DurableState::default(), Slot::ZERO, 7, Time(0))
}

fn drain(r: &mut Replica) -> Vec<Action> {
    std::iter::from_fn(|| r.poll_action()).collect()
}

fn applies(actions: &[Action]) -> Vec<(Slot, Value)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Apply { slot, value, .. } => Some((*slot, value.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_follower_applies_only_values_accepted_in_the_committing_ballot() {
    let mut f = follower(2);
    let old = Ballot::new(1, id(1));
    let new = Ballot::new(2, id(3));
    // Accepted "stale" at slot 1 under the old ballot...
    f.handle_message(
        Time(1),
        id(1),
        Message::Accept(msg::Accept {
            ballot: old,
            slot: Slot(1),
            value: req("stale"),
            commit_index: Slot::ZERO,
        }),
    );
    let _ = drain(&mut f);
    // ...but the new leader says slot 1 is chosen in its ballot.
    f.handle_message(
        Time(2),
        id(3),
        Message::Heartbeat(msg::Heartbeat {
            ballot: new,
            commit_index: Slot(1),
            read_round: 1,
        }),
    );
    let acts = drain(&mut f);
    assert!(
        applies(&acts).is_empty(),
        "applied a value not known to be chosen"
    );
    assert_eq!(f.status().commit_index, Slot::ZERO);
    // It fetches once the short fetch delay passes.
    f.handle_tick(Time(1_000_000));
    let acts = drain(&mut f);
    let fetch = acts.iter().find_map(|a| match a {
        Action::Send {
            to,
            msg: Message::Fetch(msg::Fetch { from_slot }),
        } => Some((*to, *from_slot)),
        _ => None,
    });
    assert_eq!(fetch, Some((id(3), Slot(1))));
    // The chosen decree arrives: applied, and the stale vote is replaced.
    let chosen = Accepted {
        slot: Slot(1),
        ballot: new,
        value: req("chosen"),
    };
    f.handle_message(
        Time(1_000_001),
        id(3),
        Message::Decrees(msg::Decrees {
            from_slot: Slot(1),
            commit_index: Slot(1),
            log_start: Slot(1),
            decrees: vec![chosen.clone()],
        }),
    );
    let acts = drain(&mut f);
    assert_eq!(applies(&acts), vec![(Slot(1), req("chosen"))]);
    let persisted: Vec<PersistEntry> = acts
        .into_iter()
        .filter_map(|a| match a {
            Action::Persist { entries, .. } => Some(entries),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(
        persisted,
        vec![PersistEntry::Accept(chosen), PersistEntry::Commit(Slot(1))]
    );
}

#[test]
fn a_follower_applies_matching_ballot_entries_on_a_heartbeat() {
    let mut f = follower(2);
    let b = Ballot::new(1, id(1));
    for slot in Slot(1).through(Slot(3)) {
        let value = req(&format!("s{slot}"));
        f.handle_message(
            Time(1),
            id(1),
            Message::Accept(msg::Accept {
                ballot: b,
                slot,
                value,
                commit_index: Slot::ZERO,
            }),
        );
    }
    let _ = drain(&mut f);
    f.handle_message(
        Time(2),
        id(1),
        Message::Heartbeat(msg::Heartbeat {
            ballot: b,
            commit_index: Slot(2),
            read_round: 1,
        }),
    );
    let acts = drain(&mut f);
    assert_eq!(
        applies(&acts),
        vec![(Slot(1), req("s1")), (Slot(2), req("s2"))]
    );
    assert_eq!(f.status().commit_index, Slot(2));
    assert!(acts.iter().any(|a| matches!(
        a,
        Action::Send {
            msg: Message::HeartbeatAck(msg::HeartbeatAck {
                commit_index: Slot(2),
                applied_index: Slot(2),
                ..
            }),
            ..
        }
    )));
}

#[test]
fn commit_knowledge_from_a_lower_ballot_is_rejected() {
    let mut f = follower(2);
    let high = Ballot::new(5, id(3));
    f.handle_message(
        Time(1),
        id(3),
        Message::Heartbeat(msg::Heartbeat {
            ballot: high,
            commit_index: Slot::ZERO,
            read_round: 1,
        }),
    );
    let _ = drain(&mut f);
    let low = Ballot::new(4, id(1));
    f.handle_message(
        Time(2),
        id(1),
        Message::Accept(msg::Accept {
            ballot: low,
            slot: Slot(1),
            value: req("x"),
            commit_index: Slot(1),
        }),
    );
    let acts = drain(&mut f);
    assert!(acts.iter().any(|a| matches!(a, Action::Send { to, msg: Message::Reject(msg::Reject { promised }) } if *to == id(1) && *promised == high)));
    assert!(applies(&acts).is_empty());
}

#[test]
fn every_replica_applies_each_slot_exactly_once_in_order() {
    let mut c = Cluster::new(3, |_| {});
    for i in 0..10 {
        c.commit(req(&format!("{i}")));
    }
    // The harness asserts contiguity on every Apply; check counts too.
    for r in 1..=3 {
        let slots: Vec<Slot> = c.nodes[&id(r)].applied.iter().map(|(s, _)| *s).collect();
        assert_eq!(slots, Slot(1).through(Slot(10)).collect::<Vec<_>>());
    }
}

#[test]
fn a_restarted_replica_reapplies_from_its_checkpoint_and_rejoins() {
    let mut c = Cluster::new(3, |_| {});
    for i in 0..6 {
        c.commit(req(&format!("{i}")));
    }
    let leader = c.leader().unwrap();
    let f = (1..=3).map(id).find(|r| *r != leader).unwrap();
    // The state machine checkpointed through slot 6; restarting must not
    // apply 1..=6 again.
    c.crash(f);
    c.restart(f, true);
    assert!(c.applied_values(f).is_empty());
    c.commit(req("7"));
    assert_eq!(
        c.nodes[&f]
            .applied
            .iter()
            .map(|(s, _)| *s)
            .collect::<Vec<_>>(),
        vec![Slot(7)]
    );
    // Without a checkpoint, it re-applies everything from its log.
    c.crash(f);
    c.restart(f, false);
    c.advance(50_000);
    assert_eq!(c.nodes[&f].applied.len(), 7);
}

#[test]
fn a_checkpoint_ahead_of_the_commit_record_truncates_untrusted_entries() {
    let m = Membership::with_voters(vec![id(1), id(2), id(3)]);
    let cfg = Config::new(id(2), m);
    let stale = Accepted {
        slot: Slot(3),
        ballot: Ballot::new(1, id(1)),
        value: req("maybe-stale"),
    };
    let mut durable = DurableState {
        promised: Ballot::new(1, id(1)),
        commit_index: Slot(1),
        ..DurableState::default()
    };
    durable.accepted.insert(Slot(3), stale);
    let mut r = Replica::new(cfg, durable, Slot(3), 1, Time(0));
    let acts = drain(&mut r);
    assert!(applies(&acts).is_empty());
    assert!(acts.iter().any(|a| matches!(a, Action::Persist { entries, .. } if entries.contains(&PersistEntry::Truncate(Slot(3))))));
    assert_eq!(r.status().commit_index, Slot(3));
    // It must not serve slot 3 to anyone.
    r.handle_message(
        Time(1),
        id(1),
        Message::Fetch(msg::Fetch { from_slot: Slot(3) }),
    );
    let acts = drain(&mut r);
    assert!(acts.iter().any(|a| matches!(a, Action::Send { msg: Message::Decrees(msg::Decrees { decrees, log_start: Slot(4), .. }), .. } if decrees.is_empty())));
}

#[test]
fn storage_that_lost_unapplied_slots_reports_needs_snapshot() {
    let m = Membership::with_voters(vec![id(1), id(2), id(3)]);
    let cfg = Config::new(id(2), m);
    let durable = DurableState {
        truncated_through: Slot(10),
        commit_index: Slot(10),
        ..DurableState::default()
    };
    let mut r = Replica::new(cfg, durable, Slot(4), 1, Time(0));
    assert!(r.status().needs_snapshot);
    let acts = drain(&mut r);
    assert!(applies(&acts).is_empty());
}
