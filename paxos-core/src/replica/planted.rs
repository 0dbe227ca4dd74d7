//! Deliberate protocol bugs, so that the simulator (paxos-sim's teeth
//! tests, `paxos-sim --features planted-bugs --plant-bug NAME`) and this
//! crate's fault-schedule tests can show that their checkers catch each one.
//!
//! This module exists only with the `planted-bugs` feature. Without it the
//! `Replica::bugs` field, this module and `plant_bug` are not compiled, and
//! every `planted!(..)` check in the protocol code is the constant `false`,
//! so a build without the feature holds no trace of them (see the crate
//! docs for how a production binary makes sure it is such a build).
//!
//! Maintains no protocol invariant: each bug breaks one on purpose. A bug is
//! off until `plant_bug` turns it on, so merely compiling this module
//! changes no behaviour.

use super::Replica;

/// A deliberate protocol bug (feature `planted-bugs` only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PlantedBug {
    /// Phase 1 ignores the values reported in promises and fills the recovered
    /// window with Noop.
    SkipAdoptHighestAccepted,
    /// Promise and Accepted are sent before the persist they depend on completed.
    AckBeforePersist,
    /// A quorum is `N/2` votes instead of `N/2 + 1`.
    QuorumHalf,
    /// A follower applies whatever it accepted at a committed slot, without
    /// checking that it was accepted in the ballot the leader named.
    ApplyUncheckedBallot,
    /// A leader keeps proposing above a `Reconfigure` it has not seen chosen
    /// (no drain), so votes of the old voters decide slots the new ones
    /// govern.
    ProposeAboveUnchosenReconfigure,
    /// A voter whose election timer runs out campaigns at once, without a
    /// pre-vote: a liveness (stability) bug, not a safety one. Voters that
    /// hear a live leader are deposed by any replica that does not.
    SkipPreVote,
    /// With leases on, a new leader announces itself (serves and commits
    /// client values) at once, without waiting out a lease an old leader
    /// may still hold: the old one serves stale lease reads.
    LeaseNoWait,
    /// Catch-up served from storage hands out each decree with the value
    /// of the slot after it (a read that started one slot late): the peer
    /// learns wrong values.
    DiskChunkOffByOne,
    /// Planted in paxos-node, not here: a leader answers a read handed in
    /// with writes (`RequestKind::Read`) at once, from its state as it
    /// stands, instead of at its place in a batch that is then chosen; a
    /// deposed leader serves stale reads.
    ReadsAtOnce,
}

/// Which planted bugs are on in one replica (all off until `plant_bug`).
/// The protocol code reads the fields through `planted!(self, field)`.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Bugs {
    pub(super) skip_adopt_highest_accepted: bool,
    pub(super) ack_before_persist: bool,
    pub(super) quorum_half: bool,
    pub(super) apply_unchecked_ballot: bool,
    pub(super) propose_above_unchosen_reconfigure: bool,
    pub(super) skip_pre_vote: bool,
    pub(super) lease_no_wait: bool,
    pub(super) disk_chunk_off_by_one: bool,
}

impl Replica {
    /// Plants a deliberate protocol bug (simulator teeth tests only; the
    /// method exists only with the `planted-bugs` feature).
    pub fn plant_bug(&mut self, bug: PlantedBug) {
        let bugs = &mut self.bugs;
        match bug {
            PlantedBug::SkipAdoptHighestAccepted => bugs.skip_adopt_highest_accepted = true,
            PlantedBug::AckBeforePersist => bugs.ack_before_persist = true,
            PlantedBug::QuorumHalf => bugs.quorum_half = true,
            PlantedBug::ApplyUncheckedBallot => bugs.apply_unchecked_ballot = true,
            PlantedBug::ProposeAboveUnchosenReconfigure => {
                bugs.propose_above_unchosen_reconfigure = true
            }
            PlantedBug::SkipPreVote => bugs.skip_pre_vote = true,
            PlantedBug::LeaseNoWait => bugs.lease_no_wait = true,
            PlantedBug::DiskChunkOffByOne => bugs.disk_chunk_off_by_one = true,
            // paxos-node reads its own flag for it.
            PlantedBug::ReadsAtOnce => {}
        }
    }
}
