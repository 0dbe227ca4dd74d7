//! Reads that skip the log (`Node::submit_read`): ReadIndex confirmation,
//! leases, follower reads, leadership loss and the bounds.

use super::harness::{inc, total_of, Outcome, Sim};
use crate::effect::AbortReason;
use crate::{ReadConsistency, ReadMode};
use paxos_core::Slot;

fn write(sim: &mut Sim, leader: paxos_core::ReplicaId, n: u64) -> u64 {
    let id = sim.submit(leader, vec![inc(n, 0)])[0];
    assert!(sim.run_until(1_000_000, |s| s.outcomes.get(id).is_some()));
    sim.outcomes.total(id)
}

fn reply_total(sim: &Sim, id: u64) -> u64 {
    match sim.outcomes.get(id) {
        Some(Outcome::Complete(reply)) => total_of(reply),
        other => panic!("read {id} did not complete: {other:?}"),
    }
}

#[test]
fn a_linearizable_read_waits_for_one_round_and_sees_every_completed_write() {
    let mut sim = Sim::new(3);
    let leader = sim.elect();
    let total = write(&mut sim, leader, 5);
    let writes_before = sim.counter(leader).history.len();
    let read = sim.submit_read(leader, ReadConsistency::Linearizable);
    assert!(
        sim.outcomes.get(read).is_none(),
        "answered before a quorum confirmed the leadership"
    );
    sim.deliver_all();
    assert_eq!(reply_total(&sim, read), total);
    assert_eq!(
        sim.counter(leader).history.len(),
        writes_before,
        "the read went through the log"
    );
    assert_eq!(sim.host(leader).node.status().reads_served, 1);
}

/// The confirmed read round of `leader`'s core.
fn confirmed_round(sim: &Sim, leader: paxos_core::ReplicaId) -> u64 {
    sim.host(leader)
        .node
        .core()
        .read_confirmed()
        .expect("the leader confirms reads")
        .1
}

/// Reads handed in together share one heartbeat round; handed in one by
/// one, every read after the first waits for the round after it.
#[test]
fn reads_handed_in_together_share_one_round() {
    let mut sim = Sim::new(3);
    let leader = sim.elect();
    let total = write(&mut sim, leader, 3);

    let before = confirmed_round(&sim, leader);
    let together = sim.submit_reads(leader, 3);
    sim.settle(&together);
    for id in &together {
        assert_eq!(reply_total(&sim, *id), total);
    }
    assert_eq!(confirmed_round(&sim, leader), before + 1, "one round");

    let before = confirmed_round(&sim, leader);
    let one_by_one: Vec<u64> = (0..3)
        .map(|_| sim.submit_read(leader, ReadConsistency::Linearizable))
        .collect();
    sim.settle(&one_by_one);
    assert_eq!(
        confirmed_round(&sim, leader),
        before + 2,
        "the first round, then one more"
    );
}

#[test]
fn a_linearizable_read_on_a_follower_is_redirected() {
    let mut sim = Sim::new(3);
    let leader = sim.elect();
    write(&mut sim, leader, 1);
    let follower = sim.others(leader)[0];
    let read = sim.submit_read(follower, ReadConsistency::Linearizable);
    assert_eq!(
        sim.outcomes.abort(read),
        AbortReason::NotPrimary {
            leader: Some(leader)
        }
    );
}

#[test]
fn a_leader_cut_off_fails_its_waiting_reads_when_it_steps_down() {
    let mut sim = Sim::new(3);
    let leader = sim.elect();
    write(&mut sim, leader, 1);
    sim.isolate(leader);
    let read = sim.submit_read(leader, ReadConsistency::Linearizable);
    sim.run_for(20_000);
    assert!(
        sim.outcomes.get(read).is_none(),
        "confirmed without a quorum"
    );
    assert!(sim.run_until(3_000_000, |s| s.outcomes.get(read).is_some()));
    assert!(matches!(
        sim.outcomes.abort(read),
        AbortReason::NotPrimary { .. }
    ));
    assert_eq!(sim.host(leader).node.status().pending_reads, 0);
}

#[test]
fn follower_reads_answer_once_the_slot_is_applied_and_refuse_after_the_wait() {
    let mut sim = Sim::new(3);
    let leader = sim.elect();
    let total = write(&mut sim, leader, 7);
    let follower = sim.others(leader)[0];
    assert!(sim.run_until(1_000_000, |s| s.counter(follower).total == total));
    let applied = sim.host(follower).node.applied();
    // Applied already: answered at once, from the follower's own state.
    let now = sim.submit_read(follower, ReadConsistency::AtLeast(applied));
    assert_eq!(reply_total(&sim, now), total);
    // A slot still to come: answered once it is applied there.
    let next = sim.submit_read(follower, ReadConsistency::AtLeast(applied.next()));
    assert!(sim.outcomes.get(next).is_none());
    let total = write(&mut sim, leader, 3);
    assert!(sim.run_until(1_000_000, |s| s.outcomes.get(next).is_some()));
    assert_eq!(reply_total(&sim, next), total);
    // A slot that never comes: refused after `read_wait_us`.
    let never = sim.submit_read(follower, ReadConsistency::AtLeast(Slot(1_000_000)));
    assert!(sim.run_until(3_000_000, |s| s.outcomes.get(never).is_some()));
    assert_eq!(sim.outcomes.abort(never), AbortReason::Refused);
}

/// The leader's cluster view tells a client where to read: the applied
/// index each follower reported (over the wire, on its heartbeat acks)
/// reaches the last write, and a follower read at that slot is answered
/// there at once.
#[test]
fn the_leaders_cluster_view_shows_each_followers_applied_index() {
    let mut sim = Sim::new(3);
    let leader = sim.elect();
    let total = write(&mut sim, leader, 4);
    let last = sim.host(leader).node.applied();
    let followers = sim.others(leader);
    let reported = |s: &Sim, peer| {
        s.host(leader)
            .node
            .cluster_view(s.now)
            .peers
            .iter()
            .find(|p| p.id == peer)
            .and_then(|p| p.applied_index)
    };
    assert!(sim.run_until(1_000_000, |s| followers
        .iter()
        .all(|f| reported(s, *f) == Some(last))));
    for f in followers {
        assert_eq!(sim.host(f).node.applied(), last);
        let read = sim.submit_read(f, ReadConsistency::AtLeast(last));
        assert_eq!(reply_total(&sim, read), total);
    }
}

/// On an isolated leader (no read is confirmed), the two reads that fit
/// the bound set by `bound` wait and the third is refused; once the
/// waiting ones are answered or failed, the room is back.
fn third_read_is_refused(bound: impl Fn(&mut crate::NodeConfig)) {
    let mut sim = Sim::with(3, |c| bound(c));
    let leader = sim.elect();
    write(&mut sim, leader, 1);
    sim.isolate(leader);
    let waiting: Vec<u64> = (0..2)
        .map(|_| sim.submit_read(leader, ReadConsistency::Linearizable))
        .collect();
    let refused = sim.submit_read(leader, ReadConsistency::Linearizable);
    assert_eq!(sim.outcomes.abort(refused), AbortReason::Refused);
    assert!(waiting.iter().all(|r| sim.outcomes.get(*r).is_none()));
    assert_eq!(sim.host(leader).node.status().pending_reads, 2);
    assert!(sim.run_until(3_000_000, |s| waiting
        .iter()
        .all(|r| s.outcomes.get(*r).is_some())));
    assert_eq!(sim.host(leader).node.status().pending_reads, 0);
}

#[test]
fn reads_beyond_the_bound_are_refused() {
    third_read_is_refused(|c| c.max_pending_reads = 2);
}

#[test]
fn read_bytes_beyond_the_bound_are_refused() {
    // Each test read is 4 bytes: room for two.
    third_read_is_refused(|c| c.max_pending_read_bytes = 9);
}

#[test]
fn with_a_lease_the_leader_answers_without_a_round() {
    let mut sim = Sim::with(3, |c| {
        c.read_mode = ReadMode::Lease {
            max_drift_ppm: 1_000,
        }
    });
    let leader = sim.elect();
    let total = write(&mut sim, leader, 9);
    // Heartbeats renew the lease.
    sim.run_for(100_000);
    assert_eq!(sim.in_flight_len(), 0);
    let read = sim.submit_read(leader, ReadConsistency::Linearizable);
    assert_eq!(reply_total(&sim, read), total);
    assert_eq!(sim.in_flight_len(), 0, "a lease read sent a message");
    assert_eq!(
        sim.host(leader).node.status().read_mode,
        ReadMode::Lease {
            max_drift_ppm: 1_000
        }
    );
}

#[test]
fn without_a_lease_every_read_batch_sends_a_round() {
    let mut sim = Sim::new(3);
    let leader = sim.elect();
    write(&mut sim, leader, 9);
    sim.run_for(100_000);
    sim.deliver_all();
    let read = sim.submit_read(leader, ReadConsistency::Linearizable);
    assert!(sim.outcomes.get(read).is_none());
    assert_eq!(sim.in_flight_len(), 2, "one heartbeat to each follower");
    sim.deliver_all();
    assert!(sim.outcomes.get(read).is_some());
}
