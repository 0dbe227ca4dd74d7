//! Checkpoint scheduling, compaction, and the checkpoint format written
//! and restored with `storage`.

use super::harness::{addrs, id, inc, voters, Counter, Sim};
use crate::directory::encode_register;
use crate::storage;
use paxos_core::{ReplicaId, Slot};

/// Submits one single-request decree to `leader` and waits for its reply.
fn one_decree(sim: &mut Sim, leader: ReplicaId, n: u64) {
    let ids = sim.submit(leader, vec![inc(n, 0)]);
    assert!(sim.run_until(1_000_000, |s| s.outcomes.get(ids[0]).is_some()));
    sim.outcomes.total(ids[0]);
}

#[test]
fn a_checkpoint_every_n_decrees_never_two_at_once_compaction_once_durable() {
    let (every, retain) = (4, 2);
    let mut sim = Sim::with(3, |c| {
        c.checkpoints = true;
        c.checkpoint_every = every;
        c.compact_retain = retain;
    });
    for h in sim.hosts.values_mut() {
        h.save_at_once = false;
    }
    let leader = sim.elect();
    // Nothing was applied before: checkpoints fall on multiples of `every`.
    let first = Slot(every);
    while sim.node(leader).applied() < first {
        assert!(sim.host_mut(leader).checkpoints_requested.is_empty());
        one_decree(&mut sim, leader, 1);
    }
    assert_eq!(sim.host_mut(leader).checkpoints_requested, vec![first]);

    // While that one is being written, no other is asked for.
    while sim.node(leader).applied() < Slot(3 * every) {
        one_decree(&mut sim, leader, 1);
    }
    assert_eq!(sim.host_mut(leader).checkpoints_requested, vec![first]);
    assert_eq!(sim.host_mut(leader).durable.truncated_through, Slot::ZERO);
    assert_eq!(sim.node(leader).status().checkpoint_slot, Slot::ZERO);

    // Durable: the core compacts below it, keeping `retain` decrees.
    assert_eq!(sim.save_held_checkpoint(leader), first);
    assert_eq!(
        sim.host_mut(leader).durable.truncated_through,
        first.saturating_sub(retain)
    );
    let status = sim.node(leader).status();
    assert_eq!(
        (status.checkpoint_slot, status.checkpoints_saved),
        (first, 1)
    );
    assert_eq!(sim.host_mut(leader).store.list().unwrap(), vec![first]);

    // The one that came due while the first was written is asked for as
    // soon as the first is durable, without waiting for another decree.
    let next = sim.node(leader).applied();
    assert!(next >= first.plus(every));
    assert_eq!(
        sim.host_mut(leader).checkpoints_requested,
        vec![first, next]
    );

    // A failed save compacts nothing; one is asked for again an interval on.
    sim.host_mut(leader).held_jobs.clear();
    let now = sim.now;
    sim.host_mut(leader)
        .node
        .on_checkpoint_saved(now, Err("disk full".into()));
    sim.drain(leader);
    assert_eq!(
        sim.host_mut(leader).durable.truncated_through,
        first.saturating_sub(retain)
    );
    while sim.node(leader).applied() < next.plus(every) {
        one_decree(&mut sim, leader, 1);
    }
    assert_eq!(
        sim.host_mut(leader).checkpoints_requested,
        vec![first, next, next.plus(every)]
    );
    // Followers schedule their own, on the same slots.
    let follower = sim.hosts.keys().copied().find(|r| *r != leader).unwrap();
    assert_eq!(sim.host_mut(follower).checkpoints_requested[0], first);
}

#[test]
fn a_written_checkpoint_restores_an_equal_state_machine_and_directory() {
    let mut sim = Sim::with(3, |c| {
        c.checkpoints = true;
        c.checkpoint_every = 6;
    });
    let leader = sim.elect();
    let register = sim.submit_directory(leader, encode_register(id(4), addrs(id(4))));
    assert!(sim.run_until(1_000_000, |s| s.outcomes.get(register).is_some()));
    for n in 1..=8 {
        one_decree(&mut sim, leader, n);
    }
    assert!(sim.run_until(1_000_000, |s| s
        .hosts
        .values()
        .all(|h| h.counter().total == 36)));

    for (r, host) in &sim.hosts {
        let slot = *host.store.list().unwrap().last().expect("a checkpoint");
        let mut restored_sm = Counter::default();
        let restored = storage::restore_newest(&host.store, &mut restored_sm)
            .unwrap()
            .expect("a checkpoint to restore");
        assert_eq!(restored.meta.last_applied, slot);
        assert!(restored.skipped.is_empty());
        assert_eq!(
            restored_sm,
            host.counter().as_of(slot),
            "{r} at slot {slot}"
        );
        assert_eq!(restored.directory.book(), host.node.directory().book());
        assert_eq!(restored.directory.book()[&id(4)], addrs(id(4)));
        assert_eq!(
            restored.directory.last_reconfigure(),
            host.node.directory().last_reconfigure()
        );
        assert_eq!(restored.meta.membership, voters(3));
    }
}

#[test]
fn a_restarted_node_resumes_from_its_checkpoint_and_log() {
    let mut sim = Sim::with(3, |c| {
        c.checkpoints = true;
        c.checkpoint_every = 5;
        c.compact_retain = 1;
    });
    let leader = sim.elect();
    for n in 1..=12 {
        one_decree(&mut sim, leader, n);
    }
    let follower = sim.hosts.keys().copied().find(|r| *r != leader).unwrap();
    assert!(sim.run_until(1_000_000, |s| s.counter(follower).total == 78));
    let checkpoint = *sim.host_mut(follower).store.list().unwrap().last().unwrap();
    assert!(checkpoint > Slot::ZERO && checkpoint < sim.node(follower).applied());

    sim.restart(follower);
    // It starts at the checkpoint's slot and replays its log above it.
    assert_eq!(sim.node(follower).applied(), sim.node(leader).applied());
    assert_eq!(sim.counter(follower), sim.counter(leader));
    assert!(sim.run_until(1_000_000, |s| s
        .agreed_leader(&[leader, follower])
        .is_some()));
    let more = sim.submit(leader, vec![inc(100, 0)]);
    assert!(sim.run_until(1_000_000, |s| s.counter(follower).total == 178));
    assert_eq!(sim.outcomes.total(more[0]), 178);
    sim.check_agreement().unwrap();
}

/// With the decree trigger off, the applied payload bytes alone start a
/// checkpoint: decrees that carry nothing (the no-ops of an election) do
/// not, the first client decree past the threshold does.
#[test]
fn a_checkpoint_is_taken_once_the_applied_bytes_reach_the_threshold() {
    let mut sim = Sim::with(3, |c| {
        c.checkpoints = true;
        c.checkpoint_every = 0;
        c.checkpoint_every_bytes = 1;
    });
    for h in sim.hosts.values_mut() {
        h.save_at_once = false;
    }
    let leader = sim.elect();
    assert!(sim.host_mut(leader).checkpoints_requested.is_empty());
    one_decree(&mut sim, leader, 1);
    let first = sim.node(leader).applied();
    assert_eq!(sim.host_mut(leader).checkpoints_requested, vec![first]);

    let mut sim = Sim::with(3, |c| {
        c.checkpoints = true;
        c.checkpoint_every = 0;
        c.checkpoint_every_bytes = 1 << 30;
    });
    let leader = sim.elect();
    for n in 0..20 {
        one_decree(&mut sim, leader, n);
    }
    assert!(sim.host_mut(leader).checkpoints_requested.is_empty());
}

/// Compaction keeps `compact_retain` decrees below a checkpoint only while
/// the core still holds them in memory: storage must not keep, in memory
/// or on disk, a log tail that catch-up can no longer be served from.
#[test]
fn compaction_keeps_no_more_than_the_core_retains_in_memory() {
    let mut sim = Sim::with(3, |c| {
        c.checkpoints = true;
        c.checkpoint_every = 10;
        c.compact_retain = 1000;
        c.core.retain_bytes = 1;
    });
    let leader = sim.elect();
    while sim.node(leader).status().checkpoint_slot < Slot(10) {
        one_decree(&mut sim, leader, 1);
    }
    let checkpoint = sim.node(leader).status().checkpoint_slot;
    // The core dropped every applied decree beyond one byte of payload, so
    // storage compacts through the checkpoint instead of keeping 1000.
    assert_eq!(sim.host_mut(leader).durable.truncated_through, checkpoint);
}

/// Storage is told to stop keeping in memory each value the core lets go
/// of, at once, not only at the next checkpoint: between checkpoints the
/// log's in-memory index is no bigger than the core's retained log.
#[test]
fn storage_releases_from_memory_what_the_core_let_go_of() {
    let mut sim = Sim::with(3, |c| {
        c.core.retain_bytes = 1;
    });
    let leader = sim.elect();
    for _ in 0..20 {
        one_decree(&mut sim, leader, 1);
    }
    for id in (1..=3).map(id) {
        let retained_from = sim.node(id).core().status().retained_from;
        assert!(retained_from > Slot(10), "{id} dropped its applied decrees");
        assert_eq!(
            sim.host_mut(id).log_memory_released,
            Slot(retained_from.0 - 1),
            "{id} released exactly what its core no longer holds"
        );
    }
}
