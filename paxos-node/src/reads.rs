//! Reads that skip the log: what a read asks for ([`ReadConsistency`]),
//! how a node confirms linearizable ones ([`ReadMode`]), and the bounded
//! queue of reads waiting for a confirmation or for the state machine to
//! catch up.
//!
//! # What each kind of read guarantees
//!
//! - [`ReadConsistency::Linearizable`] is answered only by the announced
//!   leader, and reflects every write that completed (anywhere) before the
//!   read arrived:
//!   - with [`ReadMode::ReadIndex`], once one heartbeat round to a quorum,
//!     started after the read arrived, confirmed this replica still leads
//!     (paxos-core's `Replica::read_index`), and the state machine applied
//!     the commit index recorded on arrival. Assumes nothing about clocks.
//!   - with [`ReadMode::Lease`], at once (once applied through the commit
//!     index) while the leader's lease holds, falling back to a round
//!     otherwise. Assumes every replica's clock *rate* is within
//!     `max_drift_ppm` of real time; beyond that bound a deposed leader may
//!     serve a stale read.
//! - [`ReadConsistency::AtLeast`]`(slot)` is RSL-style bounded staleness:
//!   any replica that applied `slot` answers from its own state, without
//!   the leader. The answer reflects every decree up to `slot` (and maybe
//!   later ones); it is not linearizable. A client that wrote at slot `s`
//!   (the slot of its `Complete`) reads its own write with `AtLeast(s)`.
//!
//! # Reads in order with writes
//!
//! A request handed to [`crate::Node::propose_requests`] as a
//! [`RequestKind::Read`] is a linearizable read that keeps its place among
//! the writes handed in with it, as a pipelined client expects (`SET k v;
//! GET k` reads `v`; `GET k; SET k w` does not read `w`). It rides in the
//! batch that is open when it arrives, at the position it arrived in, and
//! is answered when that batch is applied, between the writes before it
//! and those after it; it adds no byte to the decree, and followers never
//! see it. A read that comes ahead of any write waits for the next batch
//! the leader opens, at its front, while a batch of the leader's is in
//! flight; otherwise (and once none is left) the leader proposes a batch
//! for such reads alone, a decree of no requests (a header), so reads never
//! wait for a write that may not come, and a stream of reads with a few
//! writes among them costs about one decree per write.
//!
//! Why that is linearizable, with no leadership check: the batch is a
//! value created after the read arrived. If it is chosen at slot `s`, slot
//! `s` was not chosen before the read arrived, and a write is acknowledged
//! only once every slot up to its own is chosen and applied; so every
//! write that completed before the read arrived is at a slot below `s`,
//! and is in the state the read sees. Every write the read sees was chosen
//! before the read was answered. If the batch is not chosen (leadership
//! lost), the read is aborted with `NotPrimary`: it never executed.
//!
//! A read never executes through the log and never changes the state
//! machine ([`crate::StateMachine::query`]). So a read that is aborted has
//! certainly not taken effect: it is always safe to retry, and there is no
//! "unknown outcome" for a read. Reads whose leadership confirmation is
//! lost (the node stops leading before the round is confirmed) end with
//! `NotPrimary`; reads beyond the queue's bounds, and follower reads whose
//! slot is not applied within `NodeConfig::read_wait_us`, with `Refused`.

use bytes::Bytes;
use paxos_core::{Ballot, Slot, Time};
use std::collections::{BTreeMap, VecDeque};

/// What a read asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadConsistency {
    /// A linearizable read, confirmed as the node's [`ReadMode`] says.
    Linearizable,
    /// Bounded staleness: any replica that applied this slot may answer.
    AtLeast(Slot),
}

/// What a request handed to [`crate::Node::propose_requests`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    /// A command for the state machine, proposed in a decree.
    Write,
    /// A linearizable read-only request answered by
    /// [`crate::StateMachine::query`] at its place among the writes handed
    /// in with it (see the module docs); it is not written to the log.
    Read,
}

/// How the leader confirms linearizable reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReadMode {
    /// One heartbeat round to a quorum per batch of reads (no clock
    /// assumption).
    #[default]
    ReadIndex,
    /// A leader lease renewed by the heartbeats, valid for the maximum
    /// election timeout (less the drift) from the start of the round that
    /// confirmed it; a new leader waits that long (plus the drift) after
    /// its phase 1 before it serves, so failover takes that much longer.
    /// Every replica of the cluster must use the same mode.
    Lease {
        /// The largest clock rate error of any replica, in parts per
        /// million.
        max_drift_ppm: u32,
    },
}

impl ReadMode {
    /// A short name for status pages (`read_index`, `lease`).
    pub fn name(&self) -> &'static str {
        match self {
            ReadMode::ReadIndex => "read_index",
            ReadMode::Lease { .. } => "lease",
        }
    }
}

/// One waiting read.
#[derive(Debug)]
pub(crate) struct Waiting<C> {
    pub(crate) request: Bytes,
    pub(crate) completion: C,
}

/// Reads a node holds until they may be answered, bounded in count and
/// bytes.
#[derive(Debug)]
pub(crate) struct ReadQueue<C> {
    /// Linearizable reads waiting for their round, in round order:
    /// (ballot, round, read index).
    pub(crate) confirming: VecDeque<(Ballot, u64, Slot, Waiting<C>)>,
    /// Reads whose leadership was confirmed (or leased), waiting for the
    /// state machine to apply their slot, in arrival order.
    pub(crate) applying: VecDeque<(Slot, Waiting<C>)>,
    /// Follower reads waiting for their slot: (slot, arrival number).
    pub(crate) at_least: BTreeMap<(Slot, u64), Waiting<C>>,
    /// Deadlines of the follower reads, in arrival (so deadline) order.
    pub(crate) deadlines: VecDeque<(Time, (Slot, u64))>,
    next_seq: u64,
    count: usize,
    bytes: usize,
    max_count: usize,
    max_bytes: usize,
}

impl<C> ReadQueue<C> {
    pub(crate) fn new(max_count: usize, max_bytes: usize) -> ReadQueue<C> {
        ReadQueue {
            confirming: VecDeque::new(),
            applying: VecDeque::new(),
            at_least: BTreeMap::new(),
            deadlines: VecDeque::new(),
            next_seq: 0,
            count: 0,
            bytes: 0,
            max_count,
            max_bytes,
        }
    }

    /// Whether one more read of `len` bytes fits the bounds.
    pub(crate) fn admits(&self, len: usize) -> bool {
        self.count < self.max_count && self.bytes.saturating_add(len) <= self.max_bytes
    }

    /// Reads held.
    pub(crate) fn len(&self) -> usize {
        self.count
    }

    fn add(&mut self, w: &Waiting<C>) {
        self.count += 1;
        self.bytes += w.request.len();
    }

    /// Accounts for a read leaving the queue.
    pub(crate) fn removed(&mut self, w: &Waiting<C>) {
        self.count -= 1;
        self.bytes -= w.request.len();
    }

    pub(crate) fn push_confirming(
        &mut self,
        ballot: Ballot,
        round: u64,
        index: Slot,
        w: Waiting<C>,
    ) {
        self.add(&w);
        self.confirming.push_back((ballot, round, index, w));
    }

    pub(crate) fn push_applying(&mut self, index: Slot, w: Waiting<C>) {
        self.add(&w);
        self.applying.push_back((index, w));
    }

    pub(crate) fn push_at_least(&mut self, slot: Slot, deadline: Time, w: Waiting<C>) {
        self.add(&w);
        let key = (slot, self.next_seq);
        self.next_seq += 1;
        self.at_least.insert(key, w);
        self.deadlines.push_back((deadline, key));
    }

    /// The earliest follower-read deadline recorded (possibly of a read
    /// already answered: a tick then finds nothing to do).
    pub(crate) fn next_deadline(&self) -> Option<Time> {
        self.deadlines.front().map(|(at, _)| *at)
    }

    /// Drops the deadlines of answered follower reads at the front, so the
    /// deadline queue stays about as long as the reads still waiting.
    pub(crate) fn prune_deadlines(&mut self) {
        while self
            .deadlines
            .front()
            .is_some_and(|(_, key)| !self.at_least.contains_key(key))
        {
            self.deadlines.pop_front();
        }
    }
}
