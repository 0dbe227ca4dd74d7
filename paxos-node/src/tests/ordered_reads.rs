//! Reads handed in with writes (`RequestKind::Read`): each is answered at
//! its place in a batch of the leader's, between the writes around it,
//! and is never written to the log.

use super::harness::{inc, Outcome, Sim};
use crate::effect::AbortReason;
use crate::RequestKind::{Read, Write};
use bytes::Bytes;
use paxos_core::ReplicaId;

fn read() -> (Bytes, crate::RequestKind) {
    (Bytes::from_static(b"read"), Read)
}

fn write(n: u64) -> (Bytes, crate::RequestKind) {
    (inc(n, 0), Write)
}

/// A three-node cluster whose leader has applied one write of `total`.
fn cluster_at(total: u64) -> (Sim, ReplicaId) {
    let mut sim = Sim::new(3);
    let leader = sim.elect();
    let base = sim.submit(leader, vec![inc(total, 0)])[0];
    sim.settle(&[base]);
    assert_eq!(sim.outcomes.total(base), total);
    (sim, leader)
}

#[test]
fn reads_are_answered_between_the_writes_around_them_and_never_logged() {
    let start = 10;
    let (mut sim, leader) = cluster_at(start);
    let executed_before = sim.counter(leader).history.len();
    let proposed_before = sim.host(leader).node.status().proposed_requests;

    let ids = sim.submit_kinds(leader, vec![read(), write(1), read(), write(2), read()]);
    assert!(
        ids.iter().all(|id| sim.outcomes.get(*id).is_none()),
        "answered before the batch was chosen"
    );
    sim.settle(&ids);
    let totals: Vec<u64> = ids.iter().map(|id| sim.outcomes.total(*id)).collect();
    assert_eq!(
        totals,
        vec![start, start + 1, start + 1, start + 3, start + 3],
        "each read sees exactly the writes handed in before it"
    );
    let status = sim.host(leader).node.status();
    assert_eq!(
        status.proposed_requests,
        proposed_before + 2,
        "reads proposed"
    );
    assert_eq!(
        sim.counter(leader).history.len(),
        executed_before + 2,
        "a read was executed as a command"
    );
    assert_eq!(status.reads_served, 3);
    for f in sim.others(leader) {
        assert_eq!(sim.host(f).node.status().reads_served, 0);
    }
}

#[test]
fn reads_alone_ride_a_decree_of_no_requests() {
    let (mut sim, leader) = cluster_at(7);
    let before = sim.host(leader).node.status();
    let executed_before = sim.counter(leader).history.len();

    let ids = sim.submit_kinds(leader, vec![read(), read()]);
    sim.settle(&ids);
    for id in &ids {
        assert_eq!(sim.outcomes.total(*id), 7);
    }
    let after = sim.host(leader).node.status();
    assert_eq!(after.proposed_batches, before.proposed_batches + 1);
    assert_eq!(after.proposed_requests, before.proposed_requests);
    assert_eq!(sim.counter(leader).history.len(), executed_before);
}

#[test]
fn reads_on_a_follower_are_redirected() {
    let mut sim = Sim::new(3);
    let leader = sim.elect();
    let follower = sim.others(leader)[0];
    let ids = sim.submit_kinds(follower, vec![read(), write(1)]);
    for id in ids {
        assert_eq!(
            sim.outcomes.abort(id),
            AbortReason::NotPrimary {
                leader: Some(leader)
            }
        );
    }
}

/// A batch that is never chosen ends its writes as "unknown" and its reads
/// as `NotPrimary`: a read never executed, so it is always safe to retry.
#[test]
fn reads_in_a_batch_of_a_deposed_leader_are_refused_not_unknown() {
    let (mut sim, leader) = cluster_at(1);
    sim.isolate(leader);
    let mut ids = sim.submit_kinds(leader, vec![write(5), read()]);
    // And one waiting for the next batch (none comes).
    ids.extend(sim.submit_kinds(leader, vec![read()]));
    sim.settle(&ids);
    assert_eq!(sim.outcomes.abort(ids[0]), AbortReason::OutcomeUnknown);
    for read in &ids[1..] {
        assert!(
            matches!(
                sim.outcomes.get(*read),
                Some(Outcome::Abort(AbortReason::NotPrimary { .. }))
            ),
            "{:?}",
            sim.outcomes.get(*read)
        );
    }
}

/// Reads handed in ahead of any write while a batch is in flight wait for
/// the next batch the leader opens, at its front, instead of taking a
/// decree of their own.
#[test]
fn reads_ahead_of_writes_ride_the_next_batch() {
    let (mut sim, leader) = cluster_at(5);
    let batches_before = sim.host(leader).node.status().proposed_batches;
    let first = sim.submit_kinds(leader, vec![write(1)]);
    let reads = sim.submit_kinds(leader, vec![read(), read()]);
    assert_eq!(
        sim.host(leader).node.status().proposed_batches,
        batches_before + 1,
        "the reads took a decree of their own"
    );
    let second = sim.submit_kinds(leader, vec![write(2)]);
    let all: Vec<u64> = first.iter().chain(&reads).chain(&second).copied().collect();
    sim.settle(&all);
    assert_eq!(sim.outcomes.total(first[0]), 6);
    for id in &reads {
        assert_eq!(sim.outcomes.total(*id), 6, "a read saw a later write");
    }
    assert_eq!(sim.outcomes.total(second[0]), 8);
    assert_eq!(
        sim.host(leader).node.status().proposed_batches,
        batches_before + 2
    );
}

/// Reads waiting for a next batch that does not come are proposed on
/// their own once the batch in flight is applied.
#[test]
fn reads_waiting_for_a_batch_that_does_not_come_get_their_own() {
    let (mut sim, leader) = cluster_at(5);
    let batches_before = sim.host(leader).node.status().proposed_batches;
    let first = sim.submit_kinds(leader, vec![write(1)]);
    let reads = sim.submit_kinds(leader, vec![read()]);
    let all: Vec<u64> = first.iter().chain(&reads).copied().collect();
    sim.settle(&all);
    assert_eq!(sim.outcomes.total(reads[0]), 6);
    assert_eq!(
        sim.host(leader).node.status().proposed_batches,
        batches_before + 2,
        "the write's batch, then the reads' own"
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Any mix of writes and reads, handed in over any number of drains
    /// with any time between them, in batches of any size: every read
    /// reports the total of exactly the writes handed in before it, and
    /// every write the total through itself (the order requests were
    /// handed in is the order they take effect, whether a read rode in an
    /// open batch, waited for the next one or was flushed alone).
    #[test]
    fn every_request_takes_effect_in_the_order_handed_in(
        drains in proptest::collection::vec(
            proptest::collection::vec(proptest::option::weighted(0.4, 1u64..100), 1..12),
            1..10,
        ),
        pauses in proptest::collection::vec(0u64..4_000, 10),
        max_requests in 2usize..6,
    ) {
        let mut sim = Sim::with(3, |c| c.core.batch_limits.max_requests = max_requests);
        let leader = sim.elect();
        let mut total = 0;
        let mut expected = Vec::new();
        for (drain, pause) in drains.iter().zip(pauses.iter().cycle()) {
            let kinds = drain
                .iter()
                .map(|op| op.map_or_else(read, write))
                .collect();
            let ids = sim.submit_kinds(leader, kinds);
            for (op, id) in drain.iter().zip(ids) {
                total += op.unwrap_or(0);
                expected.push((id, total));
            }
            sim.run_for(*pause);
        }
        let ids: Vec<u64> = expected.iter().map(|(id, _)| *id).collect();
        sim.settle(&ids);
        for (id, want) in expected {
            proptest::prop_assert_eq!(sim.outcomes.total(id), want, "request {}", id);
        }
    }
}
