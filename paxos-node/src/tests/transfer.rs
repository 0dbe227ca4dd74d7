//! State transfer: a replica behind everything its peers retain fetches a
//! checkpoint chunk by chunk, installs it and catches up; stalls are
//! retried, corrupt chunks dropped.

use super::harness::{id, inc, Sim};
use crate::effect::TransferOp;
use crate::xfer::{self, XferMessage};
use bytes::Bytes;
use paxos_core::{ReplicaId, Slot};
use std::cell::{Cell, RefCell};
use std::rc::Rc;

const STALL_US: u64 = 1_000_000;

/// A cluster whose replica `lagger` missed 40 decrees (about 1 MiB of
/// history, so the checkpoint spans several transfer chunks) that its peers
/// no longer keep in memory. Returns `(sim, leader, lagger)`; the lagger is
/// still cut off.
fn lagging_cluster() -> (Sim, ReplicaId, ReplicaId) {
    lagging_cluster_with(|_| {})
}

/// [`lagging_cluster`] with every node's configuration changed by `tweak`.
fn lagging_cluster_with(tweak: impl Fn(&mut crate::NodeConfig)) -> (Sim, ReplicaId, ReplicaId) {
    let mut sim = Sim::with(3, |c| {
        c.checkpoints = true;
        c.checkpoint_every = 8;
        c.compact_retain = 0;
        c.core.retain_decrees = 4;
        c.transfer_stall_us = STALL_US;
        tweak(c);
    });
    let leader = sim.elect();
    let lagger = sim.hosts.keys().copied().find(|r| *r != leader).unwrap();
    sim.isolate(lagger);
    for k in 1..=40 {
        let ids = sim.submit(leader, (0..3).map(|_| inc(k, 8 * 1024)).collect());
        assert!(sim.run_until(1_000_000, |s| s.outcomes.get(ids[2]).is_some()));
        sim.outcomes.total(ids[2]);
    }
    (sim, leader, lagger)
}

/// `(offset, len)` of every chunk written by `TransferOp::Write`.
fn writes(ops: &[TransferOp]) -> Vec<(u64, usize)> {
    ops.iter()
        .filter_map(|op| match op {
            TransferOp::Write { chunk, .. } => Some((chunk.offset, chunk.data.len())),
            _ => None,
        })
        .collect()
}

/// Runs until `lagger` installed a checkpoint and applied as far as every
/// other node, then checks it holds the same state and takes part again.
fn caught_up(sim: &mut Sim, lagger: ReplicaId) {
    assert!(sim.run_until(10_000_000, |s| {
        let most = s.hosts.values().map(|h| h.node.applied()).max();
        !s.host(lagger).installed.is_empty() && Some(s.node(lagger).applied()) == most
    }));
    let leader = sim.elect();
    assert_eq!(sim.counter(lagger), sim.counter(leader));
    let status = sim.node(lagger).status();
    assert_eq!(status.checkpoints_installed, 1);
    assert!(!status.needs_snapshot);
    assert!(sim.host(lagger).install_errors.is_empty());

    let more = sim.submit(leader, vec![inc(1, 0)]);
    assert!(sim.run_until(1_000_000, |s| s.outcomes.get(more[0]).is_some()));
    let total = sim.outcomes.total(more[0]);
    assert!(sim.run_until(1_000_000, |s| s.counter(lagger).total == total));
    sim.check_agreement().unwrap();
}

#[test]
fn a_replica_behind_every_peers_log_installs_a_checkpoint_and_catches_up() {
    let (mut sim, _, lagger) = lagging_cluster();
    // Hold transfer messages back until the lagger has found out that only
    // a checkpoint helps.
    let holding = Rc::new(Cell::new(true));
    let hold = Rc::clone(&holding);
    sim.drop_rule = Some(Box::new(move |_, _, bytes| {
        hold.get() && xfer::is_xfer(bytes)
    }));
    sim.heal();
    assert!(sim.run_until(5_000_000, |s| s.node(lagger).status().needs_snapshot));
    assert!(sim.host(lagger).transfer_ops.is_empty());
    holding.set(false);
    caught_up(&mut sim, lagger);

    let host = sim.host(lagger);
    let chunks = writes(&host.transfer_ops);
    assert!(chunks.len() >= 3, "chunk by chunk: {chunks:?}");
    let mut offset = 0;
    for (at, len) in &chunks {
        assert_eq!(*at, offset, "chunks continue each other");
        assert!(*len <= xfer::CHUNK_BYTES);
        offset += *len as u64;
    }
    assert_eq!(
        host.transfer_ops.last(),
        Some(&TransferOp::Finish {
            slot: host.installed[0]
        })
    );
}

#[test]
fn chunks_are_fetched_a_window_at_a_time_and_written_in_order_whatever_order_they_arrive_in() {
    let (mut sim, _, lagger) = lagging_cluster_with(|c| c.transfer_chunk_bytes = 64 * 1024);
    let window = sim.host(lagger).config.transfer_window;
    assert!(window > 1);
    // Hold back every chunk after the first, and note the offsets asked for.
    let holding = Rc::new(Cell::new(true));
    let held: Rc<RefCell<Vec<(ReplicaId, Bytes)>>> = Rc::default();
    let requested: Rc<RefCell<Vec<u64>>> = Rc::default();
    let (hold, held_in, asked) = (Rc::clone(&holding), Rc::clone(&held), Rc::clone(&requested));
    sim.drop_rule = Some(Box::new(move |from, to, bytes| {
        match xfer::decode(bytes.clone()) {
            Ok(XferMessage::Chunk { chunk, .. })
                if to == lagger && chunk.offset > 0 && hold.get() =>
            {
                held_in.borrow_mut().push((from, bytes.clone()));
                return true;
            }
            Ok(XferMessage::Request { offset, .. }) if from == lagger => {
                asked.borrow_mut().push(offset)
            }
            _ => {}
        }
        false
    }));
    sim.heal();
    assert!(sim.run_until(5_000_000, |_| held.borrow().len() >= window));
    sim.run_for(STALL_US / 4);
    // The first chunk, then a whole window asked for at once, no more.
    assert_eq!(held.borrow().len(), window, "a window of chunks in flight");
    let asked: Vec<u64> = requested.borrow().clone();
    let chunk = 64 * 1024;
    let expected: Vec<u64> = (0..=window as u64).map(|i| i * chunk).collect();
    assert_eq!(asked, expected);
    assert_eq!(
        writes(&sim.host(lagger).transfer_ops),
        vec![(0, chunk as usize)]
    );
    // Delivered last to first, they are still written first to last: each
    // waits for the ones before it.
    let arrivals: Vec<(ReplicaId, Bytes)> = held.borrow_mut().drain(..).rev().collect();
    for (from, bytes) in arrivals {
        sim.deliver(from, lagger, bytes);
    }
    let written = writes(&sim.host(lagger).transfer_ops);
    assert_eq!(written.len(), 1 + window);
    let mut offset = 0;
    for (at, len) in &written {
        assert_eq!(*at, offset, "chunks continue each other: {written:?}");
        offset += *len as u64;
    }
    holding.set(false);
    caught_up(&mut sim, lagger);
}

#[test]
fn a_stalled_transfer_is_retried_after_transfer_stall_us_and_corrupt_chunks_are_dropped() {
    let (mut sim, _, lagger) = lagging_cluster();
    // Let the first chunk through, then lose the others while `stalling`.
    let stalling = Rc::new(Cell::new(true));
    let chunks_seen = Rc::new(Cell::new(0));
    let lost: Rc<RefCell<Vec<(ReplicaId, Bytes)>>> = Rc::default();
    let fresh_requests = Rc::new(Cell::new(0));
    let (stall, seen, lost_in, fresh) = (
        Rc::clone(&stalling),
        Rc::clone(&chunks_seen),
        Rc::clone(&lost),
        Rc::clone(&fresh_requests),
    );
    sim.drop_rule = Some(Box::new(move |from, to, bytes| {
        match xfer::decode(bytes.clone()) {
            Ok(XferMessage::Chunk { .. }) if to == lagger => {
                seen.set(seen.get() + 1);
                if stall.get() && seen.get() > 1 {
                    lost_in.borrow_mut().push((from, bytes.clone()));
                    return true;
                }
            }
            Ok(XferMessage::Request {
                slot: Slot::ZERO,
                offset: 0,
                ..
            }) if from == lagger => fresh.set(fresh.get() + 1),
            _ => {}
        }
        false
    }));
    sim.heal();
    assert!(
        sim.run_until(5_000_000, |s| !writes(&s.host(lagger).transfer_ops)
            .is_empty())
    );
    let started = sim.now;
    assert_eq!(fresh_requests.get(), 1);

    // A chunk that fails its checksum is not written.
    assert!(sim.run_until(STALL_US / 2, |_| !lost.borrow().is_empty()));
    let (peer, chunk) = lost.borrow()[0].clone();
    let mut corrupt = chunk.to_vec();
    *corrupt.last_mut().unwrap() ^= 0xFF;
    let ops_before = sim.host(lagger).transfer_ops.len();
    sim.deliver(peer, lagger, Bytes::from(corrupt));
    assert_eq!(sim.host(lagger).transfer_ops.len(), ops_before);

    // No progress: nothing happens until `transfer_stall_us` has passed...
    let until = STALL_US - 1 - sim.now.micros_since(started);
    sim.run_for(until);
    assert_eq!(fresh_requests.get(), 1);
    assert!(!sim.host(lagger).transfer_ops.contains(&TransferOp::Abandon));
    // ... then the partial file is dropped and the transfer starts over.
    sim.run_for(2);
    assert!(sim.host(lagger).transfer_ops.contains(&TransferOp::Abandon));
    assert_eq!(fresh_requests.get(), 2);

    stalling.set(false);
    caught_up(&mut sim, lagger);
}

#[test]
fn a_transfer_finishing_in_the_background_leaves_no_timer_due() {
    let (mut sim, _, lagger) = lagging_cluster();
    sim.host_mut(lagger).finish_at_once = false;
    sim.heal();
    assert!(sim.run_until(5_000_000, |s| s.host(lagger).held_finish.is_some()));
    // The finish (verify, fsync, rename) takes longer than the stall
    // timeout: the node must neither restart the transfer nor leave a
    // deadline in the past that would make its driver spin.
    let spun = sim.run_until(3 * STALL_US, |s| {
        s.node(lagger).next_timer().is_some_and(|t| t <= s.now)
    });
    assert!(!spun, "a timer stayed due at {:?}", sim.now);
    assert!(!sim.host(lagger).transfer_ops.contains(&TransferOp::Abandon));
    sim.finish_transfer(lagger);
    caught_up(&mut sim, lagger);
}

#[test]
fn a_transfer_no_longer_needed_is_dropped_when_it_stalls() {
    // Replica 3 keeps its whole log (and never leads); 1 and 2 compact.
    let mut sim = Sim::with(3, |c| {
        if c.core.id != id(3) {
            c.checkpoints = true;
            c.checkpoint_every = 8;
            c.compact_retain = 0;
            c.core.retain_decrees = 4;
        }
        c.transfer_stall_us = STALL_US;
    });
    let now = sim.now;
    sim.host_mut(id(3)).node.set_can_become_primary(now, false);
    let leader = sim.elect();
    let lagger = [id(1), id(2)].into_iter().find(|r| *r != leader).unwrap();
    sim.isolate(lagger);
    for k in 1..=20 {
        let ids = sim.submit(leader, vec![inc(k, 0)]);
        assert!(sim.run_until(1_000_000, |s| s.outcomes.get(ids[0]).is_some()));
    }
    // Back, but unable to reach the one replica that still has the log, and
    // losing every checkpoint chunk: it needs a checkpoint and cannot get one.
    sim.heal();
    let keeper_link: Rc<Cell<bool>> = Rc::new(Cell::new(false));
    let link = Rc::clone(&keeper_link);
    sim.drop_rule = Some(Box::new(move |from, to, bytes| {
        let chunk = matches!(xfer::decode(bytes.clone()), Ok(XferMessage::Chunk { .. }));
        let keeper = (from == lagger && to == id(3)) || (from == id(3) && to == lagger);
        (to == lagger && chunk) || (keeper && !link.get())
    }));
    assert!(sim.run_until(5_000_000, |s| s.node(lagger).status().needs_snapshot));
    // The keeper comes back: the lagger catches up from its log, and the
    // stalled transfer it no longer needs must not leave its timer due.
    keeper_link.set(true);
    let spun = sim.run_until(3 * STALL_US, |s| {
        s.node(lagger).next_timer().is_some_and(|t| t <= s.now)
    });
    assert!(!spun, "a timer stayed due at {:?}", sim.now);
    assert!(!sim.node(lagger).status().needs_snapshot);
    assert_eq!(sim.node(lagger).applied(), sim.node(leader).applied());
    assert!(sim.host(lagger).installed.is_empty());
    assert_eq!(sim.counter(lagger), sim.counter(leader));
}

#[test]
fn a_peer_that_never_serves_is_passed_over_for_the_next_member() {
    let (mut sim, leader, lagger) = lagging_cluster();
    let third = sim
        .hosts
        .keys()
        .copied()
        .find(|r| *r != leader && *r != lagger)
        .unwrap();
    // The leader (asked first) never answers a transfer request: the
    // lagger must move on to the third member rather than retry the same
    // peer forever.
    let served_by: Rc<RefCell<Vec<ReplicaId>>> = Rc::default();
    let served = Rc::clone(&served_by);
    sim.drop_rule = Some(Box::new(move |from, to, bytes| {
        if from == leader {
            return xfer::is_xfer(bytes);
        }
        if to == lagger && matches!(xfer::decode(bytes.clone()), Ok(XferMessage::Chunk { .. })) {
            served.borrow_mut().push(from);
        }
        false
    }));
    sim.heal();
    caught_up(&mut sim, lagger);
    let served = served_by.borrow();
    assert!(!served.is_empty());
    assert!(served.iter().all(|&p| p == third), "{served:?}");
    assert_eq!(sim.node(lagger).status().checkpoints_installed, 1);
}

#[test]
fn a_checkpoint_found_damaged_while_serving_is_set_aside_and_retaken() {
    let (mut sim, leader, lagger) = lagging_cluster();
    // Every checkpoint the leader holds becomes unreadable on its disk.
    let host = sim.host(leader);
    let damaged = *host.store.list().unwrap().last().unwrap();
    for path in host.fs.paths() {
        let len = host.fs.file_len(&path).unwrap();
        host.fs.make_unreadable(&path, 0, len).unwrap();
    }
    let requested_before = host.checkpoints_requested.len();
    let refused: Rc<Cell<usize>> = Rc::default();
    let refusals = Rc::clone(&refused);
    sim.drop_rule = Some(Box::new(move |from, to, bytes| {
        if from == leader
            && to == lagger
            && matches!(xfer::decode(bytes.clone()), Ok(XferMessage::None { .. }))
        {
            refusals.set(refusals.get() + 1);
        }
        false
    }));
    sim.heal();
    // The leader refuses (it cannot read the checkpoint), sets it aside
    // and takes a fresh one; the lagger catches up from someone.
    caught_up(&mut sim, lagger);
    assert!(refused.get() >= 1, "the leader was asked and refused");
    let host = sim.host(leader);
    assert!(
        host.checkpoints_requested.len() > requested_before,
        "a fresh checkpoint was taken"
    );
    let now_held = host.store.list().unwrap();
    assert!(
        now_held.last().is_some_and(|&s| s >= damaged),
        "a readable checkpoint at least as new as {damaged}: {now_held:?}"
    );
    // The newest is the fresh one (the older, also damaged, stays until a
    // restore or a request for it finds it out).
    let newest = *now_held.last().unwrap();
    assert!(host.store.open(newest).is_ok(), "checkpoint {newest} reads");
}

/// Counts the fresh checkpoint requests (`Request` for the newest, from
/// offset 0) `lagger` sends, with the peer each went to.
fn count_fresh_requests(sim: &mut Sim, lagger: ReplicaId) -> Rc<RefCell<Vec<ReplicaId>>> {
    let asked: Rc<RefCell<Vec<ReplicaId>>> = Rc::default();
    let record = Rc::clone(&asked);
    sim.drop_rule = Some(Box::new(move |from, to, bytes| {
        if let Ok(XferMessage::Request {
            slot: Slot::ZERO,
            offset: 0,
            ..
        }) = xfer::decode(bytes.clone())
        {
            if from == lagger {
                record.borrow_mut().push(to);
            }
        }
        false
    }));
    asked
}

/// A lagging cluster whose lagger fetched a checkpoint and holds its
/// install (the restore "runs off the loop" until the test reports it),
/// with the fresh checkpoint requests the lagger sends counted.
fn install_held() -> (Sim, ReplicaId, ReplicaId, Rc<RefCell<Vec<ReplicaId>>>) {
    let (mut sim, leader, lagger) = lagging_cluster();
    sim.host_mut(lagger).install_at_once = false;
    let asked = count_fresh_requests(&mut sim, lagger);
    sim.heal();
    assert!(sim.run_until(5_000_000, |s| s.host(lagger).held_install.is_some()));
    (sim, leader, lagger, asked)
}

#[test]
fn the_node_keeps_running_and_fetches_nothing_more_while_a_checkpoint_is_restored() {
    let (mut sim, leader, lagger, asked) = install_held();
    let slot = sim.host(lagger).held_install.unwrap();
    assert_eq!(sim.node(lagger).installing(), Some(slot));
    assert_eq!(asked.borrow().len(), 1);
    let state_before = sim.counter(lagger).clone();
    let ops_before = sim.host(lagger).transfer_ops.len();
    let checkpoints_before = sim.host(lagger).checkpoints_requested.len();
    // The highest slot the lagger has voted on, as its storage holds it.
    let last_vote = |sim: &Sim| {
        sim.host(lagger)
            .durable
            .accepted
            .keys()
            .next_back()
            .copied()
    };
    let voted_before = last_vote(&sim);

    // The restore takes a long while (several stall timeouts) and the
    // cluster goes on writing: the lagger's timers fire and the leader's
    // messages reach it.
    for k in 1..=10 {
        let ids = sim.submit(leader, vec![inc(k, 0)]);
        sim.settle(&ids);
        sim.outcomes.total(ids[0]);
    }
    let deadline = sim.now.plus_micros(5 * STALL_US);
    while sim.now < deadline {
        let next = sim.node(lagger).next_timer();
        assert!(
            next.is_some_and(|t| t > sim.now),
            "a timer stayed due at {:?}",
            sim.now
        );
        sim.run_for(STALL_US / 2);
    }
    let voted = last_vote(&sim);
    assert!(
        voted > voted_before,
        "the lagger voted on the leader's new decrees: {voted_before:?} -> {voted:?}"
    );
    assert!(
        sim.node(lagger).status().needs_snapshot,
        "still behind until the install"
    );
    // The node answers requests meanwhile (not primary: refused at once).
    let refused = sim.submit(lagger, vec![inc(1, 0)]);
    assert!(matches!(
        sim.outcomes.abort(refused[0]),
        crate::AbortReason::NotPrimary { .. }
    ));
    // No second transfer, no checkpoint of the state about to be replaced,
    // and that state untouched.
    assert_eq!(
        asked.borrow().len(),
        1,
        "one transfer: {:?}",
        asked.borrow()
    );
    assert_eq!(sim.host(lagger).transfer_ops.len(), ops_before);
    assert_eq!(
        sim.host(lagger).checkpoints_requested.len(),
        checkpoints_before
    );
    assert!(
        sim.counter(lagger) == &state_before,
        "the state is untouched"
    );
    assert_eq!(sim.node(lagger).installing(), Some(slot));

    // The restore reports back: installed, and the lagger catches up.
    sim.host_mut(lagger).install_at_once = true;
    assert_eq!(sim.install_held(lagger), slot);
    assert_eq!(sim.node(lagger).installing(), None);
    assert_eq!(sim.host(lagger).installed, vec![slot]);
    caught_up(&mut sim, lagger);
    assert_eq!(
        asked.borrow().len(),
        1,
        "one transfer: {:?}",
        asked.borrow()
    );
}

#[test]
fn a_restore_that_fails_off_the_loop_leaves_the_state_and_fetches_again_from_the_next_peer() {
    let (mut sim, _, lagger, asked) = install_held();
    let state_before = sim.counter(lagger).clone();
    let applied_before = sim.node(lagger).applied();

    let slot = sim.fail_held_install(lagger, "block 3 failed its checksum");
    assert!(slot > applied_before);
    assert_eq!(sim.node(lagger).installing(), None);
    assert!(
        sim.counter(lagger) == &state_before,
        "the state is untouched"
    );
    assert_eq!(sim.node(lagger).applied(), applied_before);
    // Delivering what it sent, without running any timer, shows the new
    // request went out at once.
    sim.host_mut(lagger).install_at_once = true;
    sim.deliver_all();
    // A new fetch at once, from the next peer in turn (the first one's
    // checkpoint may be what failed).
    let requests = asked.borrow().clone();
    assert_eq!(requests.len(), 2, "fetched again: {requests:?}");
    assert_ne!(requests[0], requests[1], "{requests:?}");
    caught_up(&mut sim, lagger);
}
