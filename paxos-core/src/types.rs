//! Vocabulary shared by every paxos crate: slots, ballots, replica ids,
//! values, membership, simulated-or-real time, and the durable state a
//! replica persists.
//!
//! These types are the contract between paxos-core and the storage crates
//! (paxos-log, paxos-nvm), the simulator and paxos-kv. Change them with care.

use bytes::Bytes;
use std::collections::BTreeMap;

/// A log position. Slots are numbered from 1; [`Slot::ZERO`] means "none"
/// (nothing chosen, applied, truncated or installed yet).
///
/// A newtype so a slot cannot be mixed up with a count, a byte offset or a
/// ballot round. Arithmetic goes through named methods that say what is
/// computed (the next slot, a slot some decrees later, the number of slots
/// between two); there are deliberately no `Add`/`Sub` operators. Ranges
/// of slots are [`Slot::through`] (or `BTreeMap::range` with `Slot` bounds).
///
/// The wire and storage formats encode a slot as its number, the `u64`
/// inside.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Slot(pub u64);

impl Slot {
    /// "No slot": below every slot that can hold a decree.
    pub const ZERO: Slot = Slot(0);
    /// The first slot that can hold a decree.
    pub const FIRST: Slot = Slot(1);
    /// The highest slot; an upper bound meaning "no limit".
    pub const MAX: Slot = Slot(u64::MAX);

    /// The slot after this one.
    ///
    /// Overflows (a panic with overflow checks on) only at [`Slot::MAX`],
    /// which no log reaches.
    pub const fn next(self) -> Slot {
        Slot(self.0 + 1)
    }

    /// The slot before this one.
    ///
    /// Requires `self > Slot::ZERO` (a panic with overflow checks on);
    /// use [`Slot::saturating_sub`] where `ZERO` is possible.
    pub const fn prev(self) -> Slot {
        Slot(self.0 - 1)
    }

    /// The slot `n` after this one (overflow as [`Slot::next`]).
    pub const fn plus(self, n: u64) -> Slot {
        Slot(self.0 + n)
    }

    /// The slot `n` after this one, or [`Slot::MAX`].
    pub const fn saturating_add(self, n: u64) -> Slot {
        Slot(self.0.saturating_add(n))
    }

    /// The slot `n` before this one, or [`Slot::ZERO`].
    pub const fn saturating_sub(self, n: u64) -> Slot {
        Slot(self.0.saturating_sub(n))
    }

    /// How many slots `self` is past `earlier`, or 0 if `earlier` is not
    /// below it.
    pub const fn distance_since(self, earlier: Slot) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    /// The slots from `self` through `last`, both included, in order
    /// (empty if `last < self`).
    pub fn through(self, last: Slot) -> impl DoubleEndedIterator<Item = Slot> + Clone {
        (self.0..=last.0).map(Slot)
    }
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

/// The identity of one replica in the cluster. Stable across restarts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReplicaId(pub u32);

impl std::fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "r{}", self.0)
    }
}

/// A Paxos ballot: a round number, made unique by the id of the replica that
/// leads it. Ordered by `round`, then `leader`.
///
/// `Ballot::ZERO` is below every ballot a replica can start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ballot {
    /// The round; a replica starting phase 1 picks a round above any it has seen.
    pub round: u64,
    /// The replica that leads this ballot.
    pub leader: ReplicaId,
}

impl Ballot {
    /// The ballot below all others: nothing promised, nothing accepted.
    pub const ZERO: Ballot = Ballot {
        round: 0,
        leader: ReplicaId(0),
    };

    /// Creates a ballot.
    pub const fn new(round: u64, leader: ReplicaId) -> Self {
        Ballot { round, leader }
    }
}

impl std::fmt::Display for Ballot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.round, self.leader.0)
    }
}

/// Logical time, in microseconds since an arbitrary epoch chosen by the
/// driver. paxos-core never reads a clock: the simulator advances this
/// by hand and production drivers convert a monotonic clock into it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(pub u64);

impl Time {
    /// Time plus a number of microseconds (saturating).
    pub const fn plus_micros(self, micros: u64) -> Time {
        Time(self.0.saturating_add(micros))
    }

    /// Microseconds from `earlier` to `self`, or 0 if `earlier` is later.
    pub const fn micros_since(self, earlier: Time) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

/// The replica set. Voters form quorums; learners receive decrees but do not
/// vote (a new replica catches up as a learner before it is promoted).
///
/// Both lists are kept sorted and free of duplicates, and a replica is never in
/// both.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Membership {
    /// Replicas whose votes count toward quorums.
    pub voters: Vec<ReplicaId>,
    /// Replicas that receive decrees but do not vote.
    pub learners: Vec<ReplicaId>,
}

impl Membership {
    /// A membership of voters only.
    pub fn with_voters(mut voters: Vec<ReplicaId>) -> Self {
        voters.sort_unstable();
        voters.dedup();
        Membership {
            voters,
            learners: Vec::new(),
        }
    }

    /// The number of votes that make a majority quorum of the voters.
    pub fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    /// Whether `id` votes in this membership.
    pub fn is_voter(&self, id: ReplicaId) -> bool {
        self.voters.binary_search(&id).is_ok()
    }

    /// Whether `id` is a voter or a learner.
    pub fn contains(&self, id: ReplicaId) -> bool {
        self.is_voter(id) || self.learners.binary_search(&id).is_ok()
    }

    /// Voters and learners, in order.
    pub fn all(&self) -> impl Iterator<Item = ReplicaId> + '_ {
        self.voters.iter().chain(self.learners.iter()).copied()
    }

    /// Whether the lists are sorted, duplicate-free and disjoint.
    pub fn is_well_formed(&self) -> bool {
        let sorted = |v: &[ReplicaId]| v.windows(2).all(|w| w[0] < w[1]);
        sorted(&self.voters)
            && sorted(&self.learners)
            && !self.voters.is_empty()
            && self.learners.iter().all(|l| !self.is_voter(*l))
    }
}

/// The value of one decree (one slot).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Value {
    /// Fills a gap found in phase 1; applying it does nothing.
    Noop,
    /// A batch of client requests, encoded by [`crate::batch`].
    Requests(Bytes),
    /// A new replica set. Never batched with requests.
    Reconfigure(Reconfiguration),
}

impl Value {
    /// Payload bytes this value carries (for batch and message limits).
    pub fn payload_len(&self) -> usize {
        match self {
            Value::Noop => 0,
            Value::Requests(b) => b.len(),
            Value::Reconfigure(r) => {
                8 + 4 * (r.membership.voters.len() + r.membership.learners.len())
            }
        }
    }
}

/// A membership change, as decided in the log.
///
/// It names the membership it replaces by `base`: the slot of the
/// `Reconfigure` that installed that membership (0 for the one a cluster
/// started with). Chosen at slot `s`, it takes effect for the slots above
/// `s` only if `base` is still the membership in force there; otherwise a
/// later change was chosen since it was proposed, and it is a no-op. So a
/// change an old leader proposed, that nobody chose then, cannot come back
/// after a later change and silently revert it (paxos-sim FINDINGS F6).
/// Every replica decides this from the same log, hence identically; state
/// machines that record the membership must use [`Reconfiguration::applies_to`]
/// too.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reconfiguration {
    /// The slot of the `Reconfigure` that installed the membership this one
    /// replaces (0: the initial membership).
    pub base: Slot,
    /// The new membership.
    pub membership: Membership,
}

impl Reconfiguration {
    /// Whether, chosen while the membership installed at `membership_slot`
    /// is in force, this change takes effect (else it is a no-op).
    pub fn applies_to(&self, membership_slot: Slot) -> bool {
        self.base == membership_slot
    }
}

/// A value accepted at a slot under a ballot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// The slot.
    pub slot: Slot,
    /// The ballot under which the value was accepted.
    pub ballot: Ballot,
    /// The value.
    pub value: Value,
}

/// One record a replica asks its storage to make durable.
///
/// Storage applies entries of one persist action in order and reports the
/// whole action durable at once (see `Action::Persist` and
/// `Replica::on_persisted`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PersistEntry {
    /// The promised ballot rose to this value.
    Promise(Ballot),
    /// A value was accepted at a slot. Replaces any earlier entry of that slot.
    Accept(Accepted),
    /// Every slot up to and including this one is chosen.
    Commit(Slot),
    /// Every slot up to and including this one is covered by a checkpoint;
    /// storage may drop accepted entries of those slots.
    Truncate(Slot),
}

/// Everything a replica persists, as recovered at start-up.
///
/// Storage backends rebuild this from their records; paxos-core starts from it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DurableState {
    /// The highest ballot this replica promised.
    pub promised: Ballot,
    /// Accepted values by slot, for slots above `truncated_through`.
    pub accepted: BTreeMap<Slot, Accepted>,
    /// Every slot up to and including this one is known chosen.
    pub commit_index: Slot,
    /// Slots up to and including this one are covered by a checkpoint.
    pub truncated_through: Slot,
}

impl DurableState {
    /// Applies one persisted entry, as storage does on write and on recovery.
    ///
    /// Promise, commit and truncation points only move forward; an older
    /// entry replayed after a newer one changes nothing.
    pub fn apply(&mut self, entry: &PersistEntry) {
        match entry {
            PersistEntry::Promise(b) => {
                if *b > self.promised {
                    self.promised = *b;
                }
            }
            PersistEntry::Accept(a) => {
                if a.slot > self.truncated_through {
                    self.accepted.insert(a.slot, a.clone());
                }
            }
            PersistEntry::Commit(s) => {
                if *s > self.commit_index {
                    self.commit_index = *s;
                }
            }
            PersistEntry::Truncate(s) => {
                if *s > self.truncated_through {
                    self.truncated_through = *s;
                    self.accepted = self.accepted.split_off(&s.next());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ballots_order_by_round_then_leader() {
        let a = Ballot::new(1, ReplicaId(3));
        let b = Ballot::new(2, ReplicaId(1));
        let c = Ballot::new(2, ReplicaId(2));
        assert!(Ballot::ZERO < a && a < b && b < c);
    }

    #[test]
    fn slot_arithmetic_says_what_it_computes() {
        let s = Slot(7);
        assert_eq!(s.next(), Slot(8));
        assert_eq!(s.prev(), Slot(6));
        assert_eq!(s.plus(3), Slot(10));
        assert_eq!(Slot::MAX.saturating_add(1), Slot::MAX);
        assert_eq!(s.saturating_sub(3), Slot(4));
        assert_eq!(s.saturating_sub(9), Slot::ZERO);
        assert_eq!(s.distance_since(Slot(2)), 5);
        assert_eq!(Slot(2).distance_since(s), 0, "saturates, like Time");
        assert!(Slot::ZERO < Slot::FIRST && Slot::FIRST == Slot::ZERO.next());
    }

    #[test]
    fn slot_ranges_and_display() {
        let v: Vec<Slot> = Slot(3).through(Slot(5)).collect();
        assert_eq!(v, vec![Slot(3), Slot(4), Slot(5)]);
        assert_eq!(Slot(5).through(Slot(5)).count(), 1);
        assert_eq!(Slot(6).through(Slot(5)).count(), 0);
        assert_eq!(Slot(3).through(Slot(5)).next_back(), Some(Slot(5)));
        // Displays as the bare number, honouring width and fill, so logs and
        // file names read as they did when a slot was a `u64`.
        assert_eq!(format!("{}", Slot(42)), "42");
        assert_eq!(format!("{:>5}|{:05}", Slot(42), Slot(42)), "   42|00042");
    }

    #[test]
    fn quorum_is_a_strict_majority() {
        for n in 1..8u32 {
            let m = Membership::with_voters((1..=n).map(ReplicaId).collect());
            assert!(2 * m.quorum() > n as usize);
            assert!(2 * (m.quorum() - 1) <= n as usize);
        }
    }

    #[test]
    fn durable_state_points_only_move_forward() {
        let mut s = DurableState::default();
        let b2 = Ballot::new(2, ReplicaId(1));
        s.apply(&PersistEntry::Promise(b2));
        s.apply(&PersistEntry::Promise(Ballot::new(1, ReplicaId(1))));
        assert_eq!(s.promised, b2);
        let acc = |slot| Accepted {
            slot: Slot(slot),
            ballot: b2,
            value: Value::Noop,
        };
        for slot in 1..=5 {
            s.apply(&PersistEntry::Accept(acc(slot)));
        }
        s.apply(&PersistEntry::Commit(Slot(4)));
        s.apply(&PersistEntry::Commit(Slot(2)));
        assert_eq!(s.commit_index, Slot(4));
        s.apply(&PersistEntry::Truncate(Slot(3)));
        assert_eq!(
            s.accepted.keys().copied().collect::<Vec<_>>(),
            vec![Slot(4), Slot(5)]
        );
        s.apply(&PersistEntry::Accept(acc(2)));
        assert!(
            !s.accepted.contains_key(&Slot(2)),
            "truncated slots stay dropped"
        );
    }
}
