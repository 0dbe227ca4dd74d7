//! Learner: marks slots chosen from a leader's commit index, records chosen
//! decrees, and hands them to the state machine in slot order.
//!
//! Maintains, of the invariants in the module above:
//! - 5 (chosen entries): a learned decree is injected only over a lower
//!   vote, and a vote at or above the choosing ballot must agree with it
//!   (asserted); a committed slot's value never changes (asserted).
//! - 6 (learning): a follower marks slot `s` chosen only if it holds the
//!   entry accepted in the very ballot the leader names; `Commit(c)` is
//!   persisted after the entries it covers.
//! - 7 (apply): `Apply` in slot order, exactly once per slot.
//! - 9 (bounds): only the last `retain_decrees` committed decrees stay in
//!   memory, and applied ones only while the log's payload is within
//!   `retain_bytes` (the `AcceptedLog` keeps that count exact).

use super::{Action, Replica, RoleState};
use crate::types::{Accepted, Ballot, PersistEntry, Slot, Time, Value};
use paxos_contracts::ensures;

impl Replica {
    /// The leader of `ballot` says slots `<= leader_commit` are chosen.
    pub(super) fn learn_commit(&mut self, now: Time, ballot: Ballot, leader_commit: Slot) {
        self.known_commit = self.known_commit.max(leader_commit);
        if matches!(self.role, RoleState::Leader(_)) {
            return;
        }
        let before = self.commit_index;
        while self.commit_index < leader_commit {
            let next = self.commit_index.next();
            match self.log.get(&next) {
                Some(e) if e.ballot == ballot || planted!(self, apply_unchecked_ballot) => {
                    self.commit_index = next
                }
                _ => break,
            }
        }
        if self.commit_index > before {
            self.persist(PersistEntry::Commit(self.commit_index));
            self.adopt_chosen_configs(now);
            self.apply_committed();
        }
        if self.commit_index < self.known_commit {
            self.request_fetch(now);
        }
    }

    /// Records that `(slot, ballot, value)` is chosen, injecting the entry
    /// into the log if this acceptor holds no vote at least as high.
    pub(super) fn learn_chosen(&mut self, slot: Slot, ballot: Ballot, value: Value) {
        if slot < self.log_start {
            return;
        }
        match self.log.get(&slot) {
            Some(e) if e.ballot >= ballot => {
                assert!(
                    e.value == value,
                    "slot {slot}: vote at ballot {} disagrees with the value chosen at ballot {ballot}",
                    e.ballot
                );
            }
            existing => {
                if let Some(e) = existing {
                    assert!(
                        slot > self.commit_index || e.value == value,
                        "committed slot {slot} would change value"
                    );
                }
                let entry = Accepted {
                    slot,
                    ballot,
                    value,
                };
                self.log.insert(entry.clone());
                self.persist(PersistEntry::Accept(entry));
            }
        }
    }

    /// Emits `Apply` for every committed, unapplied slot, then trims memory.
    pub(super) fn apply_committed(&mut self) {
        while self.applied_index < self.commit_index {
            let slot = self.applied_index.next();
            let Some(entry) = self.log.get(&slot) else {
                // Only possible after a restart whose storage lost slots the
                // state machine lacks.
                self.needs_snapshot = true;
                break;
            };
            let action = Action::Apply {
                slot,
                ballot: entry.ballot,
                value: entry.value.clone(),
            };
            self.actions.push_back(action);
            self.applied_index = slot;
        }
        if self.needs_snapshot
            && self.truncated_through <= self.applied_index
            && self.applied_index == self.commit_index
            && self.commit_index >= self.known_commit
        {
            // Caught up without one (for example, after leading phase 1
            // over logs that held the missing slots).
            self.needs_snapshot = false;
        }
        // Keep at most `retain_decrees` committed decrees in memory, and
        // drop applied ones from the front while the log's payload exceeds
        // `retain_bytes`. Unapplied entries are never dropped here, so the
        // uncommitted window (bounded by `max_accept_ahead`) and anything
        // still to apply stay; peers that need what was dropped catch up
        // by checkpoint.
        let keep_from = self
            .commit_index
            .saturating_sub(self.config.retain_decrees as u64)
            .min(self.applied_index)
            .next();
        let applied = self.applied_index;
        let retain_bytes = self.config.retain_bytes;
        self.log.drop_front_while(|e, bytes| {
            e.slot < keep_from || (e.slot <= applied && bytes > retain_bytes)
        });
        // Every applied slot below the first entry kept is gone (all of
        // them when the byte bound dropped every entry).
        let first_kept = self.log.keys().next().copied().unwrap_or(Slot::MAX);
        let new_start = keep_from.max(first_kept.min(applied.next()));
        if new_start > self.log_start {
            self.log_start = new_start;
        }
        ensures!(self.log.keys().next().is_none_or(|s| *s >= self.log_start));
    }
}
