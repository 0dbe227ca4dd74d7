//! The replicated directory: registered addresses reach every replica, and
//! the transport's peer set (`SetPeers`) follows the membership.

use super::harness::{addrs, config, id, voters, Outcome, Sim};
use crate::directory::{encode_register, MemberAddrs};
use bytes::Bytes;
use paxos_core::{Membership, ReplicaId};
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// Replica 4's registered addresses (not the ones `addrs` would give it).
fn four() -> MemberAddrs {
    MemberAddrs {
        peer: SocketAddr::from(([10, 0, 0, 4], 7000)),
        client: SocketAddr::from(([10, 0, 0, 4], 6000)),
    }
}

/// The peer set replica `me` should ask for in a cluster of `members`.
fn wanted(me: ReplicaId, members: &Membership) -> BTreeMap<ReplicaId, SocketAddr> {
    members
        .all()
        .filter(|m| *m != me)
        .map(|m| {
            (
                m,
                if m == id(4) {
                    four().peer
                } else {
                    addrs(m).peer
                },
            )
        })
        .collect()
}

fn last_peers(sim: &Sim, r: ReplicaId) -> BTreeMap<ReplicaId, SocketAddr> {
    sim.host(r)
        .peer_sets
        .last()
        .cloned()
        .expect("a SetPeers at start")
}

fn settle(sim: &mut Sim, request: u64) -> Bytes {
    assert!(sim.run_until(1_000_000, |s| s.outcomes.get(request).is_some()));
    match sim.outcomes.get(request) {
        Some(Outcome::Complete(reply)) => reply.clone(),
        other => panic!("directory command {request} did not complete: {other:?}"),
    }
}

fn in_force(sim: &Sim, r: ReplicaId) -> Membership {
    sim.node(r).core().status().membership
}

#[test]
fn a_registered_address_replicates_and_set_peers_follows_the_membership() {
    let mut sim = Sim::new(3);
    let three = voters(3);
    for r in three.all() {
        assert_eq!(sim.host(r).peer_sets.len(), 1);
        assert_eq!(last_peers(&sim, r), wanted(r, &three));
    }
    let leader = sim.elect();

    // Registering replica 4 replicates its addresses; it is no member yet,
    // so no transport changes.
    let register = sim.submit_directory(leader, encode_register(id(4), four()));
    assert_eq!(settle(&mut sim, register), Bytes::new());
    assert!(sim.run_until(1_000_000, |s| s.hosts.values().all(|h| h
        .node
        .directory()
        .book()
        .get(&id(4))
        == Some(&four()))));
    for r in three.all() {
        assert_eq!(sim.host(r).peer_sets.len(), 1, "{r}");
    }

    // Refused commands get their error as the reply, and change nothing.
    let taken = sim.submit_directory(leader, encode_register(id(5), four()));
    let malformed = sim.submit_directory(leader, Bytes::from_static(b"\x09"));
    assert_eq!(
        settle(&mut sim, taken),
        Bytes::from_static(b"address already registered for replica 4")
    );
    assert_eq!(
        settle(&mut sim, malformed),
        Bytes::from_static(b"malformed directory command")
    );
    assert!(sim.run_until(1_000_000, |s| s
        .hosts
        .values()
        .all(|h| h.node.applied() == s.node(leader).applied())));
    for h in sim.hosts.values() {
        assert_eq!(
            h.node.directory().book().keys().collect::<Vec<_>>(),
            [&id(4)]
        );
    }

    // Replica 4 joins: it starts outside the membership, reaching for the
    // members it was configured with.
    let mut joining = config(id(4), &three);
    joining.addresses.joining = true;
    sim.add_host(joining);
    assert_eq!(last_peers(&sim, id(4)), wanted(id(4), &three));
    let all_four = voters(4);
    sim.change_configuration(leader, all_four.clone()).unwrap();
    assert!(sim.run_until(10_000_000, |s| s
        .hosts
        .keys()
        .all(|r| in_force(s, *r) == all_four)));
    for r in all_four.all() {
        assert_eq!(last_peers(&sim, r), wanted(r, &all_four), "{r}");
    }

    // A follower is removed: the others drop it; it learns it was removed
    // and points clients at a voter.
    let gone = three.all().find(|r| *r != leader).unwrap();
    let remaining = Membership::with_voters(all_four.all().filter(|r| *r != gone).collect());
    sim.change_configuration(leader, remaining.clone()).unwrap();
    assert!(sim.run_until(10_000_000, |s| s
        .hosts
        .keys()
        .all(|r| in_force(s, *r) == remaining)));
    for r in remaining.all() {
        assert_eq!(last_peers(&sim, r), wanted(r, &remaining), "{r}");
    }
    let now = sim.now;
    assert!(sim.node(gone).cluster_view(now).removed);
    assert!(sim
        .node(gone)
        .leader_hint()
        .is_some_and(|l| remaining.is_voter(l)));
    sim.check_agreement().unwrap();
}
