//! Relinquishing leadership to the most caught-up follower.

use super::harness::*;
use crate::{ProposeError, Role};

#[test]
fn relinquish_hands_leadership_to_a_caught_up_follower() {
    let mut c = Cluster::new(3, |_| {});
    let old = c.elect_any();
    c.commit(req("before"));
    c.advance(30_000); // heartbeat acks tell the leader who is caught up
    let now = c.now;
    c.replica(old).relinquish_primary(now).unwrap();
    assert_ne!(c.status(old).role, Role::Leader);
    c.pump();
    // The successor starts phase 1 at once: no election timeout needed.
    assert!(
        c.run_until(20_000, |c| c.leader().is_some()),
        "handoff waited for a timeout"
    );
    let new = c.leader().unwrap();
    assert_ne!(new, old);
    c.commit(req("after"));
    assert_eq!(c.applied_values(old), vec![req("before"), req("after")]);
}

#[test]
fn relinquish_skips_vetoed_followers() {
    let mut c = Cluster::new(3, |_| {});
    let old = c.elect_any();
    let others: Vec<_> = (1..=3).map(id).filter(|r| *r != old).collect();
    c.replica(others[0]).set_can_become_primary(false);
    c.advance(30_000);
    let now = c.now;
    c.replica(old).relinquish_primary(now).unwrap();
    c.pump();
    assert!(c.run_until(20_000, |c| c.leader().is_some()));
    assert_eq!(c.leader(), Some(others[1]));
}

#[test]
fn relinquish_with_no_eligible_successor_is_an_error() {
    let mut c = Cluster::new(3, |_| {});
    let old = c.elect_any();
    for r in (1..=3).map(id).filter(|r| *r != old) {
        c.replica(r).set_can_become_primary(false);
    }
    c.advance(30_000);
    let now = c.now;
    assert_eq!(
        c.replica(old).relinquish_primary(now),
        Err(ProposeError::NoSuccessor)
    );
    assert_eq!(
        c.status(old).role,
        Role::Leader,
        "a failed relinquish keeps leading"
    );
}

#[test]
fn relinquish_on_a_follower_is_not_leader() {
    let mut c = Cluster::new(3, |_| {});
    let leader = c.elect_any();
    c.advance(30_000);
    let f = (1..=3).map(id).find(|r| *r != leader).unwrap();
    let now = c.now;
    assert_eq!(
        c.replica(f).relinquish_primary(now),
        Err(ProposeError::NotLeader {
            leader: Some(leader)
        })
    );
}

#[test]
fn relinquish_skips_followers_not_heard_from_recently() {
    let mut c = Cluster::new(3, |_| {});
    let old = c.elect_any();
    let others: Vec<_> = (1..=3).map(id).filter(|r| *r != old).collect();
    c.advance(30_000);
    c.crash(others[0]);
    c.advance(200_000); // longer than election_timeout_min: others[0] is stale
    let now = c.now;
    c.replica(old).relinquish_primary(now).unwrap();
    c.pump();
    assert!(c.run_until(20_000, |c| c.leader().is_some()));
    assert_eq!(c.leader(), Some(others[1]));
}
