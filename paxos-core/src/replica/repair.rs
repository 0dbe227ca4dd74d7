//! Protocol-aware recovery: a replica whose storage lost data it may have
//! acknowledged (a corrupt log cut back by salvage, an unreadable sector,
//! a misdirected write) rejoins without voting until it can vouch for its
//! state again, and never loses or changes anything that was chosen.
//!
//! # What was lost, and why it matters
//!
//! The lost suffix of the log may have held (a) a promise for some ballot
//! `b` and (b) votes (accepted entries) at some slots. Forgetting either is
//! unsafe:
//!
//! - With (a) forgotten, the replica could accept a proposal of a ballot
//!   below `b` after a candidate of `b` used its promise in phase 1: the
//!   candidate would not see that vote and could choose another value.
//! - With (b) forgotten, the replica's next `Promise` would omit a vote that
//!   was part of the quorum that chose a value; a candidate whose phase-1
//!   quorum meets that choosing quorum only in this replica would miss the
//!   chosen value.
//!
//! # The repair (invariant 11)
//!
//! While repairing, the replica sends no `Promise` and no `Accepted`, never
//! campaigns, and takes no leadership hand-off; it follows leaders' commit
//! indices and fetches chosen decrees like a learner (learning chosen values
//! is always safe: they are facts).
//!
//! 1. **Fence.** It asks *every* voter of every membership it learns of
//!    ([`msg::RepairQuery`]); each answers its promised ballot, the highest
//!    slot it holds, its commit index and the voters it knows
//!    ([`msg::RepairAnswer`]). Answers from replicas that are themselves
//!    repairing do not count (their own state is incomplete). Once every
//!    voter answered, it raises its promise to the highest promised ballot
//!    reported, durably. Any candidate `c` that holds a lost promise of this
//!    replica for ballot `b` persisted `Promise(b)` itself before asking
//!    (invariant 2), and `c` is one of the voters that answered, so the new
//!    promise is at least `b`: no ballot below a lost promise is ever
//!    accepted again. (Asking a majority would not do: `c` might not be in
//!    it and the majority might not know `b` yet.)
//! 2. **Catch-up.** Let `H` be the highest slot and commit index any voter
//!    reported. Any value chosen with a lost vote of this replica was chosen
//!    by a quorum whose other members are voters that answered, and they
//!    hold a vote at that slot, so it lies at or below `H`. The replica stays
//!    a non-voter until its commit index reaches `H`: then every slot it may
//!    have voted on is chosen and its log holds the chosen value there
//!    (invariant 5), so its promises are complete again. Above `H` it never
//!    voted for anything that was chosen, and its lost votes there can no
//!    longer be counted by anyone.
//! 3. **Done.** The core reports `Status::repair == None`; the driver then
//!    tells its storage to forget the damage (which it kept durably, so a
//!    crash during repair repairs again).
//!
//! If a voter is down, or repairing too (for example, a majority of the
//! disks is damaged), the repair waits and [`crate::RepairProgress`] says
//! for whom; the rest of the cluster goes on without this replica if a
//! quorum of healthy voters remains.

use super::Replica;
use crate::msg::{self, Message};
use crate::types::{Ballot, PersistEntry, ReplicaId, Slot, Value};
use std::collections::{BTreeMap, BTreeSet};

/// How far a repair got.
#[derive(Debug)]
pub(super) struct RepairState {
    /// Every voter that must answer: the voters of this replica's
    /// membership and of every membership an answer names.
    must_answer: BTreeSet<ReplicaId>,
    /// The latest answer of each.
    answers: BTreeMap<ReplicaId, msg::RepairAnswer>,
    /// Once every voter answered: the slot up to which this replica must
    /// learn the chosen values, and the persist token of its raised promise.
    fenced: Option<Fenced>,
}

#[derive(Clone, Copy, Debug)]
struct Fenced {
    catch_up_to: Slot,
    /// The promise is durable once this token is.
    promise_token: u64,
}

/// A repair in progress, as [`crate::Status`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepairProgress {
    /// Voters that have not answered yet (down, or unreachable).
    pub waiting_for: Vec<ReplicaId>,
    /// Voters that answered but are repairing themselves: their answers
    /// cannot be trusted until they are done.
    pub untrusted: Vec<ReplicaId>,
    /// After the fence: the slot the commit index must reach.
    pub catching_up_to: Option<Slot>,
}

impl RepairState {
    pub(super) fn new(voters: impl Iterator<Item = ReplicaId>) -> RepairState {
        RepairState {
            must_answer: voters.collect(),
            answers: BTreeMap::new(),
            fenced: None,
        }
    }
}

impl Replica {
    /// Whether this replica is repairing (and must not vote).
    pub(super) fn repairing(&self) -> bool {
        self.repair.is_some()
    }

    /// The repair's progress (also in [`crate::Status`], which is only
    /// re-reported when the repair starts or ends; this is always current).
    pub fn repair_progress(&self) -> Option<RepairProgress> {
        let r = self.repair.as_ref()?;
        let trusted = |id: &ReplicaId| r.answers.get(id).is_some_and(|a| !a.suspect);
        Some(RepairProgress {
            waiting_for: r
                .must_answer
                .iter()
                .filter(|id| !r.answers.contains_key(id))
                .copied()
                .collect(),
            untrusted: r
                .must_answer
                .iter()
                .filter(|id| r.answers.contains_key(id) && !trusted(id))
                .copied()
                .collect(),
            catching_up_to: r.fenced.map(|f| f.catch_up_to),
        })
    }

    /// Asks every voter that has not given a trusted answer yet (at start
    /// and on every heartbeat interval until the fence is up).
    pub(super) fn repair_query(&mut self) {
        let Some(r) = &self.repair else {
            return;
        };
        if r.fenced.is_some() {
            return;
        }
        let ask: Vec<ReplicaId> = r
            .must_answer
            .iter()
            .filter(|id| r.answers.get(id).is_none_or(|a| a.suspect))
            .copied()
            .collect();
        let commit_index = self.commit_index;
        for to in ask {
            self.send(to, Message::RepairQuery(msg::RepairQuery { commit_index }));
        }
    }

    /// Answers a repairing peer: what this replica promised and holds. Not
    /// gated on durability: reporting more than is durable only makes the
    /// asker more careful.
    pub(super) fn on_repair_query(&mut self, from: ReplicaId, _m: msg::RepairQuery) {
        let mut voters: BTreeSet<ReplicaId> = self.membership.voters.iter().copied().collect();
        let mut max_slot = self.commit_index;
        for (slot, a) in self.log.range(self.commit_index.next()..) {
            max_slot = max_slot.max(*slot);
            if let Value::Reconfigure(r) = &a.value {
                voters.extend(r.membership.voters.iter().copied());
            }
        }
        let answer = msg::RepairAnswer {
            promised: self.promised,
            max_slot,
            commit_index: self.commit_index,
            voters: voters.into_iter().collect(),
            suspect: self.repairing(),
        };
        self.send(from, Message::RepairAnswer(answer));
    }

    /// Takes a voter's answer; raises the fence once every voter answered.
    pub(super) fn on_repair_answer(&mut self, from: ReplicaId, m: msg::RepairAnswer) {
        let me = self.id;
        let Some(r) = self.repair.as_mut() else {
            return;
        };
        if r.fenced.is_some() {
            return;
        }
        // Voters of every membership this voter knows must answer too (a
        // candidate of a membership this replica lost track of may hold one
        // of its lost promises).
        r.must_answer
            .extend(m.voters.iter().copied().filter(|v| *v != me));
        if !r.must_answer.contains(&from) {
            return;
        }
        r.answers.insert(from, m);
        let all_trusted = r
            .must_answer
            .iter()
            .all(|id| r.answers.get(id).is_some_and(|a| !a.suspect));
        if !all_trusted {
            return;
        }
        let fence: Ballot = r
            .answers
            .values()
            .map(|a| a.promised)
            .max()
            .unwrap_or(Ballot::ZERO);
        let catch_up_to = r
            .answers
            .values()
            .map(|a| a.max_slot.max(a.commit_index))
            .max()
            .unwrap_or(Slot::ZERO);
        self.observe(fence);
        if fence > self.promised {
            self.promised = fence;
            self.persist(PersistEntry::Promise(fence));
        }
        // The raised promise (or the current one) is durable once everything
        // buffered so far is.
        let promise_token = if self.persist_buf.is_empty() {
            self.next_token - 1
        } else {
            self.next_token
        };
        if let Some(r) = self.repair.as_mut() {
            r.fenced = Some(Fenced {
                catch_up_to,
                promise_token,
            });
        }
    }

    /// Ends the repair once the fence is durable and every slot this
    /// replica may have voted on is chosen and known here.
    pub(super) fn check_repaired(&mut self) {
        let Some(f) = self.repair.as_ref().and_then(|r| r.fenced) else {
            return;
        };
        if self.durable_token >= f.promise_token && self.commit_index >= f.catch_up_to {
            self.repair = None;
        }
    }
}
