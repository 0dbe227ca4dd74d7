//! Catch-up: a lagging replica fetches chosen decrees in chunks from any
//! peer that still holds them, and reports when nobody does.

use super::harness::*;
use crate::Slot;
use crate::{Message, Role};

#[test]
fn a_lagging_follower_catches_up_in_chunks() {
    let mut c = Cluster::new(3, |cfg| cfg.catchup_chunk_decrees = 4);
    let leader = c.elect_any();
    let lagger = (1..=3).map(id).find(|r| *r != leader).unwrap();
    c.isolate(lagger);
    let others: Vec<_> = (1..=3).map(id).filter(|r| *r != lagger).collect();
    for i in 0..30 {
        let now = c.now;
        loop {
            match c.replica(leader).propose(now, req(&format!("{i}"))) {
                Ok(_) => break,
                Err(crate::ProposeError::WindowFull) => c.advance(1_000),
                Err(e) => panic!("{e}"),
            }
        }
        c.pump();
    }
    assert!(c.run_until(1_000_000, |c| others
        .iter()
        .all(|r| c.status(*r).commit_index >= Slot(30))));
    assert_eq!(c.status(lagger).commit_index, Slot::ZERO);
    let fetches_before = c.delivered.get("decrees").copied().unwrap_or(0);
    c.heal();
    assert!(c.run_until(1_000_000, |c| c.all_applied(Slot(30))));
    let replies = c.delivered["decrees"] - fetches_before;
    assert!(replies >= 30 / 4, "expected chunked replies, got {replies}");
    assert_eq!(c.applied_values(lagger), c.applied_values(leader));
}

#[test]
fn needs_snapshot_when_every_peer_dropped_the_missing_decrees() {
    let mut c = Cluster::new(3, |cfg| {
        cfg.retain_decrees = 4;
        cfg.catchup_chunk_decrees = 4;
    });
    let leader = c.elect_any();
    let followers: Vec<_> = (1..=3).map(id).filter(|r| *r != leader).collect();
    let (helper, lagger) = (followers[0], followers[1]);
    c.isolate(lagger);
    for i in 0..5 {
        c.commit_on(&[leader, helper], req(&format!("{i}")));
    }
    // The leader checkpoints and compacts everything; the helper keeps its
    // retained decrees (retain 4 keeps slots 2..=5) and a checkpoint
    // truncated slot 1 from its storage.
    c.replica(leader).compact(Slot(5));
    c.replica(helper).compact(Slot(1));
    c.pump();
    c.heal();
    // The lagger needs slot 1, which neither holds anymore: it must report
    // needs_snapshot rather than spin.
    assert!(c.run_until(1_000_000, |c| c.status(lagger).needs_snapshot));
    assert_ne!(c.status(lagger).role, Role::Leader);
}

#[test]
fn catch_up_is_served_by_a_follower() {
    let mut c = Cluster::new(3, |cfg| {
        cfg.retain_decrees = 100;
        cfg.catchup_chunk_decrees = 2;
    });
    let leader = c.elect_any();
    let followers: Vec<_> = (1..=3).map(id).filter(|r| *r != leader).collect();
    let (helper, lagger) = (followers[0], followers[1]);
    c.isolate(lagger);
    for i in 0..6 {
        c.commit_on(&[leader, helper], req(&format!("{i}")));
    }
    // The leader compacted; the helper still holds everything.
    c.replica(leader).compact(Slot(6));
    c.pump();
    c.heal();
    assert!(c.run_until(1_000_000, |c| c.status(lagger).applied_index >= Slot(6)));
    assert!(!c.status(lagger).needs_snapshot);
    assert_eq!(c.applied_values(lagger), c.applied_values(helper));
}

#[test]
fn a_fetch_to_a_silent_peer_moves_on_to_another() {
    let mut c = Cluster::new(3, |cfg| cfg.catchup_chunk_decrees = 4);
    let leader = c.elect_any();
    let followers: Vec<_> = (1..=3).map(id).filter(|r| *r != leader).collect();
    let (helper, lagger) = (followers[0], followers[1]);
    c.isolate(lagger);
    for i in 0..6 {
        c.commit_on(&[leader, helper], req(&format!("{i}")));
    }
    // The lagger hears the leader's heartbeats but the leader never answers
    // its fetches (one-way cut); the helper does.
    c.heal();
    c.cut.insert((leader, lagger));
    c.advance(1);
    c.cut.remove(&(leader, lagger));
    c.cut.insert((lagger, leader));
    assert!(c.run_until(2_000_000, |c| c.status(lagger).applied_index >= Slot(6)));
    assert_eq!(c.applied_values(lagger), c.applied_values(helper));
}

/// Three replicas whose memory holds about ten 1,000-byte decrees; a
/// lagger isolated while the others commit 40 of them.
pub(super) fn lagging_behind_the_retained_log() -> (Cluster, [crate::ReplicaId; 3], usize) {
    const VALUE: usize = 1000;
    let mut c = Cluster::new(3, |cfg| {
        cfg.retain_decrees = 4096;
        cfg.retain_bytes = 10 * VALUE;
        cfg.catchup_chunk_decrees = 4;
    });
    let leader = c.elect_any();
    let followers: Vec<_> = (1..=3).map(id).filter(|r| *r != leader).collect();
    let (helper, lagger) = (followers[0], followers[1]);
    c.isolate(lagger);
    let mut max_bytes = 0;
    for i in 0..40 {
        c.commit_on(&[leader, helper], req(&format!("{i:0VALUE$}")));
        for r in [leader, helper] {
            max_bytes = max_bytes.max(c.status(r).log_bytes);
        }
    }
    assert!(c.run_until(1_000_000, |c| c.status(helper).applied_index >= Slot(40)));
    // A few decrees' worth (the batch framing adds bytes to each value),
    // never the 40 the decree bound would keep.
    assert!(
        max_bytes <= 12 * (VALUE + 64),
        "memory log grew to {max_bytes} bytes"
    );
    assert!(c.status(leader).log_bytes >= 9 * VALUE);
    assert!(c.status(leader).retained_from > Slot(20));
    (c, [leader, helper, lagger], max_bytes)
}

/// `retain_bytes` bounds the memory the log keeps for catch-up, whatever
/// `retain_decrees` allows: applied decrees are dropped oldest first once
/// their payload exceeds it. A replica that needs them gets them read back
/// from its peers' storage (`Action::ReadDecrees`), in chunks, without a
/// snapshot.
#[test]
fn a_fetch_below_the_retained_log_is_served_from_storage() {
    let (mut c, [leader, helper, lagger], _) = lagging_behind_the_retained_log();
    c.heal();
    assert!(c.run_until(1_000_000, |c| c.status(lagger).applied_index >= Slot(40)));
    assert!(c
        .nodes
        .get(&lagger)
        .unwrap()
        .statuses
        .iter()
        .all(|s| !s.needs_snapshot));
    let served = c.replica(leader).served_from_storage() + c.replica(helper).served_from_storage();
    assert!(served >= 20 / 4, "chunks of 4 read from storage: {served}");
    assert_eq!(c.applied_values(lagger), c.applied_values(leader));
}

/// What a checkpoint truncated from storage is not served from it: the
/// lagger is told to get a snapshot.
#[test]
fn a_fetch_below_the_last_truncation_answers_compacted() {
    let (mut c, [leader, helper, lagger], _) = lagging_behind_the_retained_log();
    c.replica(leader).compact(Slot(20));
    c.replica(helper).compact(Slot(20));
    c.pump();
    c.heal();
    assert!(c.run_until(1_000_000, |c| c.status(lagger).needs_snapshot));
    assert_eq!(c.status(lagger).applied_index, Slot::ZERO);
    assert_eq!(c.replica(leader).served_from_storage(), 0);
    assert_eq!(c.replica(helper).served_from_storage(), 0);
}

/// Every voter needs a snapshot that nobody can serve: the leader compacted
/// its log behind a checkpoint the followers lack, and then lost that
/// checkpoint (found by the simulator, seed 103821). The followers still
/// hold votes for the missing slots and their logs have no gap, so one of
/// them wins a pre-vote (nobody leads, and the other follower can answer
/// its phase 1 from its commit index), re-chooses those slots with their
/// original values and carries on; the replica whose log has a gap never
/// leads. F17 in paxos-sim/FINDINGS.md.
#[test]
fn voters_that_all_need_a_snapshot_nobody_has_elect_from_their_logs() {
    let mut c = Cluster::new(3, |cfg| cfg.retain_decrees = 2);
    let leader = c.elect_any();
    let followers: Vec<_> = (1..=3).map(id).filter(|r| *r != leader).collect();
    for i in 1..=5 {
        c.commit(req(&format!("a{i}")));
    }
    for r in (1..=3).map(id) {
        c.checkpoint_and_compact(r);
    }
    for i in 6..=10 {
        c.commit(req(&format!("b{i}")));
    }
    c.checkpoint_and_compact(leader);
    c.pump();
    // Every replica restarts. The followers lost their Commit records for
    // 6..=10 (commit records are written lazily) and start from checkpoint
    // 5; the leader's checkpoint 10 went bad, so it starts from checkpoint
    // 5 with a log that begins at 11.
    for r in (1..=3).map(id) {
        c.crash(r);
    }
    for &f in &followers {
        let node = c.nodes.get_mut(&f).unwrap();
        node.durable.commit_index = Slot(5);
        assert_eq!(node.durable.accepted.len(), 5, "votes for 6..=10 kept");
    }
    c.nodes.get_mut(&leader).unwrap().checkpoint = Slot(5);
    // While no candidate can win (the followers' promises to each other
    // are lost), each follower learns from the old leader's answers to its
    // pre-votes and prepares that 6..=10 are chosen, and by fetching that nobody holds them chosen:
    // both come to need a snapshot.
    // (Pre-votes to the first follower are lost too: granting the other's
    // pre-votes would keep it from ever timing out and asking the old
    // leader itself.)
    let first = followers[0];
    c.drop_rule = Some(Box::new(move |from, to, m| {
        (from != leader && matches!(m, Message::Promise(_)))
            || (to == first && matches!(m, Message::PreVote(_)))
    }));
    for r in (1..=3).map(id) {
        c.restart(r, false);
    }
    assert!(c.status(leader).needs_snapshot);
    let restarted = c.nodes[&leader].statuses.len();
    assert!(
        c.run_until(5_000_000, |c| followers
            .iter()
            .all(|f| c.status(*f).needs_snapshot)),
        "{:?}",
        (1..=3).map(|r| c.status(id(r))).collect::<Vec<_>>()
    );
    // A candidacy started before the need is not the point: veto both
    // until neither is a candidate, so that only a candidacy started while
    // needing a snapshot can recover.
    for &f in &followers {
        c.replica(f).set_can_become_primary(false);
    }
    assert!(c.run_until(1_000_000, |c| followers
        .iter()
        .all(|f| c.status(*f).role == Role::Follower)));
    for &f in &followers {
        c.replica(f).set_can_become_primary(true);
        assert!(c.status(f).needs_snapshot);
    }
    c.drop_rule = None;

    assert!(
        c.run_until(10_000_000, |c| c
            .leader()
            .is_some_and(|l| followers.contains(&l))),
        "no follower campaigned"
    );
    let next = c.propose_retrying(req("c11"));
    assert_eq!(next, Slot(11));
    assert!(c.run_until(2_000_000, |c| followers
        .iter()
        .all(|f| c.status(*f).applied_index >= Slot(11))));
    let expected: Vec<_> = (6..=10)
        .map(|i| req(&format!("b{i}")))
        .chain([req("c11")])
        .collect();
    for &f in &followers {
        assert_eq!(c.applied_values(f), expected, "replica {f}");
        assert!(!c.status(f).needs_snapshot, "caught up without one");
    }
    assert!(c.nodes[&leader].statuses[restarted..]
        .iter()
        .all(|s| s.role != Role::Leader));
    assert!(c.status(leader).needs_snapshot, "it still lacks 6..=10");
}
