//! Acceptor: promises, votes, durability order, bounds.

use super::harness::*;
use crate::Slot;
use crate::{
    msg, Accepted, Action, Ballot, Config, DurableState, Membership, Message, PersistEntry,
    PersistToken, Replica, Time,
};

fn acceptor_with(tweak: impl Fn(&mut Config)) -> Replica {
    let m = Membership::with_voters(vec![id(1), id(2), id(3)]);
    let mut cfg = Config::new(id(2), m);
    tweak(&mut cfg);
    let mut r = Replica::new(cfg, DurableState::default(), Slot::ZERO, 3, Time(0));
    while r.poll_action().is_some() {}
    r
}

fn drain(r: &mut Replica) -> Vec<Action> {
    std::iter::from_fn(|| r.poll_action()).collect()
}

fn sends(actions: &[Action]) -> Vec<Message> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { msg, .. } => Some(msg.clone()),
            _ => None,
        })
        .collect()
}

fn last_token(actions: &[Action]) -> Option<PersistToken> {
    actions.iter().rev().find_map(|a| match a {
        Action::Persist { token, .. } => Some(*token),
        _ => None,
    })
}

#[test]
fn a_promise_leaves_only_after_its_persist_completes() {
    let mut a = acceptor_with(|_| {});
    let b = Ballot::new(1, id(1));
    a.handle_message(
        Time(1),
        id(1),
        Message::Prepare(msg::Prepare {
            ballot: b,
            from_slot: Slot(1),
        }),
    );
    let acts = drain(&mut a);
    assert!(
        sends(&acts).is_empty(),
        "promise sent before persist: {acts:?}"
    );
    let token = last_token(&acts).expect("promise persisted");
    assert!(acts.iter().any(|x| matches!(x, Action::Persist { entries, .. } if entries == &vec![PersistEntry::Promise(b)])));
    a.on_persisted(Time(2), token);
    let msgs = sends(&drain(&mut a));
    assert!(
        matches!(msgs.as_slice(), [Message::Promise(msg::Promise { ballot, next_from: None, .. })] if *ballot == b)
    );
}

#[test]
fn accepted_leaves_only_after_its_persist_completes() {
    let mut a = acceptor_with(|_| {});
    let b = Ballot::new(1, id(1));
    a.handle_message(
        Time(1),
        id(1),
        Message::Accept(msg::Accept {
            ballot: b,
            slot: Slot(1),
            value: req("v"),
            commit_index: Slot::ZERO,
        }),
    );
    let acts = drain(&mut a);
    assert!(sends(&acts).is_empty());
    let token = last_token(&acts).unwrap();
    // A second accept while the first persist is pending waits too, even
    // for the newer token.
    a.handle_message(
        Time(1),
        id(1),
        Message::Accept(msg::Accept {
            ballot: b,
            slot: Slot(2),
            value: req("w"),
            commit_index: Slot::ZERO,
        }),
    );
    let acts2 = drain(&mut a);
    let token2 = last_token(&acts2).unwrap();
    assert!(token2 > token);
    a.on_persisted(Time(2), token);
    let msgs = sends(&drain(&mut a));
    assert_eq!(
        msgs,
        vec![Message::Accepted(msg::Accepted {
            ballot: b,
            slot: Slot(1),
            commit_index: Slot::ZERO
        })]
    );
    a.on_persisted(Time(3), token2);
    let msgs = sends(&drain(&mut a));
    assert_eq!(
        msgs,
        vec![Message::Accepted(msg::Accepted {
            ballot: b,
            slot: Slot(2),
            commit_index: Slot::ZERO
        })]
    );
}

#[test]
fn lower_ballots_are_rejected_and_change_nothing() {
    let mut a = acceptor_with(|_| {});
    let high = Ballot::new(3, id(3));
    a.handle_message(
        Time(1),
        id(3),
        Message::Prepare(msg::Prepare {
            ballot: high,
            from_slot: Slot(1),
        }),
    );
    let t = last_token(&drain(&mut a)).unwrap();
    a.on_persisted(Time(1), t);
    let _ = drain(&mut a);
    let low = Ballot::new(2, id(1));
    for msg in [
        Message::Prepare(msg::Prepare {
            ballot: low,
            from_slot: Slot(1),
        }),
        Message::Accept(msg::Accept {
            ballot: low,
            slot: Slot(1),
            value: req("x"),
            commit_index: Slot::ZERO,
        }),
        Message::Heartbeat(msg::Heartbeat {
            ballot: low,
            commit_index: Slot::ZERO,
            read_round: 1,
        }),
    ] {
        a.handle_message(Time(2), id(1), msg);
        let acts = drain(&mut a);
        assert_eq!(
            sends(&acts),
            vec![Message::Reject(msg::Reject { promised: high })]
        );
        assert!(
            last_token(&acts).is_none(),
            "a rejected message persisted something"
        );
    }
    assert_eq!(a.status().ballot, high);
}

#[test]
#[should_panic(expected = "two values at slot 1")]
fn accepting_a_second_value_at_one_slot_and_ballot_is_a_hard_assertion() {
    let mut a = acceptor_with(|_| {});
    let b = Ballot::new(1, id(1));
    a.handle_message(
        Time(1),
        id(1),
        Message::Accept(msg::Accept {
            ballot: b,
            slot: Slot(1),
            value: req("v"),
            commit_index: Slot::ZERO,
        }),
    );
    a.handle_message(
        Time(1),
        id(1),
        Message::Accept(msg::Accept {
            ballot: b,
            slot: Slot(1),
            value: req("w"),
            commit_index: Slot::ZERO,
        }),
    );
}

#[test]
fn slots_beyond_the_accept_horizon_are_refused() {
    let mut a = acceptor_with(|c| {
        c.pipeline_window = 4;
        c.max_accept_ahead = 4;
    });
    let b = Ballot::new(1, id(1));
    a.handle_message(
        Time(1),
        id(1),
        Message::Accept(msg::Accept {
            ballot: b,
            slot: Slot(5),
            value: req("far"),
            commit_index: Slot::ZERO,
        }),
    );
    let acts = drain(&mut a);
    assert!(!acts.iter().any(|x| matches!(x, Action::Persist { entries, .. } if entries.iter().any(|e| matches!(e, PersistEntry::Accept(_))))));
    a.handle_message(
        Time(1),
        id(1),
        Message::Accept(msg::Accept {
            ballot: b,
            slot: Slot(4),
            value: req("near"),
            commit_index: Slot::ZERO,
        }),
    );
    let acts = drain(&mut a);
    assert!(acts.iter().any(|x| matches!(x, Action::Persist { entries, .. } if entries.iter().any(|e| matches!(e, PersistEntry::Accept(_))))));
}

#[test]
fn promises_come_in_chunks_bounded_by_count_and_bytes() {
    let mut a = acceptor_with(|c| {
        c.catchup_chunk_decrees = 3;
        c.pipeline_window = 16;
        c.max_accept_ahead = 16;
    });
    let b1 = Ballot::new(1, id(1));
    for slot in Slot(1).through(Slot(8)) {
        a.handle_message(
            Time(1),
            id(1),
            Message::Accept(msg::Accept {
                ballot: b1,
                slot,
                value: req("v"),
                commit_index: Slot::ZERO,
            }),
        );
    }
    let t = last_token(&drain(&mut a)).unwrap();
    a.on_persisted(Time(1), t);
    let _ = drain(&mut a);
    let b2 = Ballot::new(2, id(3));
    let mut from = Slot(1);
    let mut got = Vec::new();
    loop {
        a.handle_message(
            Time(2),
            id(3),
            Message::Prepare(msg::Prepare {
                ballot: b2,
                from_slot: from,
            }),
        );
        let acts = drain(&mut a);
        if let Some(t) = last_token(&acts) {
            a.on_persisted(Time(2), t);
        }
        let mut msgs = sends(&acts);
        msgs.extend(sends(&drain(&mut a)));
        let Some(Message::Promise(msg::Promise {
            entries,
            next_from,
            from_slot,
            ..
        })) = msgs.pop()
        else {
            panic!("no promise")
        };
        assert_eq!(from_slot, from);
        assert!(entries.len() <= 3);
        got.extend(entries.iter().map(|e| e.slot));
        match next_from {
            Some(n) => from = n,
            None => break,
        }
    }
    assert_eq!(got, Slot(1).through(Slot(8)).collect::<Vec<_>>());
}

#[test]
fn a_promise_says_when_the_acceptor_no_longer_holds_the_asked_slots() {
    let m = Membership::with_voters(vec![id(1), id(2), id(3)]);
    let cfg = Config::new(id(2), m);
    let b = Ballot::new(1, id(1));
    let mut durable = DurableState {
        promised: b,
        commit_index: Slot(5),
        truncated_through: Slot(5),
        ..DurableState::default()
    };
    durable.accepted.insert(
        Slot(6),
        Accepted {
            slot: Slot(6),
            ballot: b,
            value: req("x"),
        },
    );
    let mut a = Replica::new(cfg, durable, Slot(5), 1, Time(0));
    let _ = drain(&mut a);
    let b2 = Ballot::new(2, id(3));
    a.handle_message(
        Time(1),
        id(3),
        Message::Prepare(msg::Prepare {
            ballot: b2,
            from_slot: Slot(2),
        }),
    );
    let t = last_token(&drain(&mut a)).unwrap();
    a.on_persisted(Time(1), t);
    let msgs = sends(&drain(&mut a));
    assert!(
        matches!(msgs.as_slice(), [Message::Promise(msg::Promise { log_start: Slot(6), entries, .. })] if entries.is_empty())
    );
}

#[test]
fn learners_never_promise() {
    let m = Membership {
        voters: vec![id(1), id(2), id(3)],
        learners: vec![id(4)],
    };
    let cfg = Config::new(id(4), m);
    let mut a = Replica::new(cfg, DurableState::default(), Slot::ZERO, 1, Time(0));
    let _ = drain(&mut a);
    a.handle_message(
        Time(1),
        id(1),
        Message::Prepare(msg::Prepare {
            ballot: Ballot::new(1, id(1)),
            from_slot: Slot(1),
        }),
    );
    let acts = drain(&mut a);
    assert!(sends(&acts).is_empty());
    // Nor do they ever campaign.
    a.handle_tick(Time(10_000_000));
    assert!(!drain(&mut a).iter().any(|x| matches!(
        x,
        Action::Send {
            msg: Message::Prepare(msg::Prepare { .. }),
            ..
        }
    )));
}

#[test]
fn a_learner_replica_follows_and_applies() {
    let m = Membership {
        voters: vec![id(1), id(2), id(3)],
        learners: vec![id(4)],
    };
    let mut c = Cluster::with_membership(m, |_| {});
    c.commit(req("to-all"));
    assert_eq!(c.applied_values(id(4)), vec![req("to-all")]);
}

#[test]
fn never_issued_tokens_are_a_contract_violation() {
    let mut a = acceptor_with(|_| {});
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        a.on_persisted(Time(1), PersistToken(99))
    }));
    assert_eq!(r.is_err(), paxos_contracts::ENABLED);
}

/// A replica whose log holds `sizes.len()` committed decrees at slots 1..,
/// the one at slot `i + 1` a request batch of `sizes[i]` bytes.
fn committed_log(sizes: &[usize], tweak: impl Fn(&mut Config)) -> Replica {
    let m = Membership::with_voters(vec![id(1), id(2), id(3)]);
    let mut cfg = Config::new(id(2), m);
    tweak(&mut cfg);
    let b = Ballot::new(1, id(1));
    let mut durable = DurableState {
        promised: b,
        commit_index: Slot(sizes.len() as u64),
        ..DurableState::default()
    };
    for (i, size) in sizes.iter().enumerate() {
        let slot = Slot(i as u64 + 1);
        let value = crate::Value::Requests(bytes::Bytes::from(vec![b'x'; *size]));
        durable.accepted.insert(
            slot,
            Accepted {
                slot,
                ballot: b,
                value,
            },
        );
    }
    let mut r = Replica::new(cfg, durable, Slot::ZERO, 3, Time(0));
    let _ = drain(&mut r);
    r
}

/// The slots of each catch-up reply a peer gets fetching from slot 1 on.
fn catchup_replies(r: &mut Replica) -> Vec<Vec<u64>> {
    let mut from = Slot(1);
    let mut replies = Vec::new();
    while from <= r.status().commit_index {
        r.handle_message(
            Time(1),
            id(3),
            Message::Fetch(msg::Fetch { from_slot: from }),
        );
        let msgs = sends(&drain(r));
        let [Message::Decrees(msg::Decrees { decrees, .. })] = msgs.as_slice() else {
            panic!("expected one Decrees reply, got {msgs:?}");
        };
        assert!(!decrees.is_empty(), "a reply carries at least one decree");
        from = decrees.last().unwrap().slot.next();
        replies.push(decrees.iter().map(|d| d.slot.0).collect());
    }
    replies
}

/// A catching-up replica applies a reply's decrees in one go, so replies
/// are cut by `catchup_chunk_bytes` as well as by count; a decree larger
/// than the bound still goes, alone. Promise chunks are not cut by it.
#[test]
fn catchup_replies_are_cut_by_bytes_promises_are_not() {
    let hint = |size: usize| {
        crate::codec::accepted_len_hint(&Accepted {
            slot: Slot(1),
            ballot: Ballot::ZERO,
            value: crate::Value::Requests(bytes::Bytes::from(vec![0; size])),
        })
    };
    // Three 100-byte decrees fit in a chunk, a fourth does not; slot 5
    // alone is larger than a chunk.
    let sizes = [100, 100, 100, 100, 2000, 100, 100, 100, 100, 100];
    let mut r = committed_log(&sizes, |c| {
        c.catchup_chunk_bytes = 3 * hint(100) + hint(100) / 2;
    });
    assert_eq!(
        catchup_replies(&mut r),
        vec![vec![1, 2, 3], vec![4], vec![5], vec![6, 7, 8], vec![9, 10]]
    );

    r.handle_message(
        Time(2),
        id(3),
        Message::Prepare(msg::Prepare {
            ballot: Ballot::new(2, id(3)),
            from_slot: Slot(1),
        }),
    );
    let t = last_token(&drain(&mut r)).unwrap();
    r.on_persisted(Time(2), t);
    let msgs = sends(&drain(&mut r));
    let [Message::Promise(msg::Promise {
        entries, next_from, ..
    })] = msgs.as_slice()
    else {
        panic!("expected one promise, got {msgs:?}");
    };
    assert_eq!(entries.len(), sizes.len());
    assert_eq!(*next_from, None);
}

/// The count bound still cuts where it is the tighter one, and a byte
/// bound above `max_message_bytes` leaves replies cut at the message bound.
#[test]
fn catchup_replies_are_cut_by_the_tighter_bound() {
    let mut r = committed_log(&[10; 7], |c| c.catchup_chunk_decrees = 3);
    assert_eq!(
        catchup_replies(&mut r),
        vec![vec![1, 2, 3], vec![4, 5, 6], vec![7]]
    );
    let mut r = committed_log(&[3000; 5], |c| {
        c.batch_limits.max_bytes = 3100;
        c.max_message_bytes = 8192;
        c.catchup_chunk_bytes = 1 << 20;
    });
    // 8192 less the header room holds two 3000-byte decrees.
    assert_eq!(
        catchup_replies(&mut r),
        vec![vec![1, 2], vec![3, 4], vec![5]]
    );
}

/// Decrees read back from storage for a peer are asked for, and served,
/// within `catchup_chunk_bytes`.
#[test]
fn catchup_reads_from_storage_ask_for_chunk_bytes() {
    let mut r = committed_log(&[100; 10], |c| {
        c.catchup_chunk_bytes = 500;
        c.retain_decrees = 2;
    });
    assert!(
        r.retained_from() > Slot(1),
        "the front was dropped from memory"
    );
    r.handle_message(
        Time(1),
        id(3),
        Message::Fetch(msg::Fetch { from_slot: Slot(1) }),
    );
    let acts = drain(&mut r);
    let asked = acts.iter().find_map(|a| match a {
        Action::ReadDecrees { max_bytes, .. } => Some(*max_bytes),
        _ => None,
    });
    assert_eq!(asked, Some(500));
    // Storage may hand back more than asked; the reply is cut to the bound
    // (three decrees of 141 bytes fit in 500).
    let stored = (1..=5)
        .map(|s| Accepted {
            slot: Slot(s),
            ballot: Ballot::new(1, id(1)),
            value: crate::Value::Requests(bytes::Bytes::from(vec![b'x'; 100])),
        })
        .collect();
    r.on_decrees_read(Time(2), id(3), Slot(1), Some(stored));
    let msgs = sends(&drain(&mut r));
    let [Message::Decrees(msg::Decrees { decrees, .. })] = msgs.as_slice() else {
        panic!("expected one Decrees reply, got {msgs:?}");
    };
    let slots: Vec<u64> = decrees.iter().map(|d| d.slot.0).collect();
    assert_eq!(slots, vec![1, 2, 3]);
}
