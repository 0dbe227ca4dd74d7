//! Reconfiguration: the operator's membership change (learners first, then
//! promotion), and switching to a membership once its `Reconfigure` decree
//! is chosen.
//!
//! Maintains invariant 10 of the module above: a `Reconfigure` chosen at
//! slot `s` governs exactly the slots above `s` (adopted in slot order as
//! the commit index passes it, and only if it is based on the membership in
//! force, else it is a no-op); a leader whose voters changed stops leading
//! in its ballot and runs phase 1 among the new voters in a higher ballot
//! (every election in the new membership runs above the ballot `s` is held
//! under); a removed leader hands over.

use super::{ProposeError, Replica, RoleState, MAX_KNOWN_REPLICAS};
use crate::msg::{self, Message};
use crate::types::{Ballot, Membership, Reconfiguration, ReplicaId, Slot, Time, Value};
use paxos_contracts::{ensures, invariant, requires};

impl Replica {
    pub(super) fn change_configuration_inner(
        &mut self,
        now: Time,
        target: Membership,
    ) -> Result<(), ProposeError> {
        check_membership(&target)?;
        let leader = self.leader;
        let RoleState::Leader(l) = &self.role else {
            return Err(ProposeError::NotLeader { leader });
        };
        if !l.announced {
            return Err(ProposeError::NotLeader { leader: None });
        }
        if l.reconfig_slot.is_some() || self.pending_target.is_some() {
            return Err(ProposeError::ConfigChangeInFlight);
        }
        if target == self.membership {
            return Ok(());
        }
        self.pending_target = Some(target);
        self.advance_pending_target(now);
        Ok(())
    }

    /// Proposes the next step towards `pending_target` if one is due: new
    /// voters join as learners first, and the target itself is proposed once
    /// they caught up.
    pub(super) fn advance_pending_target(&mut self, now: Time) {
        let Some(target) = self.pending_target.clone() else {
            return;
        };
        let RoleState::Leader(l) = &self.role else {
            return;
        };
        if !l.announced || l.reconfig_slot.is_some() {
            return;
        }
        if target == self.membership {
            self.pending_target = None;
            return;
        }
        let current = &self.membership;
        let newcomers: Vec<ReplicaId> = target
            .voters
            .iter()
            .copied()
            .filter(|r| !current.is_voter(*r))
            .collect();
        let step = if newcomers.iter().any(|r| !current.contains(*r)) {
            // Step 1: same voters, newcomers as learners.
            let mut learners: Vec<ReplicaId> = current
                .learners
                .iter()
                .copied()
                .chain(newcomers.iter().copied())
                .collect();
            learners.sort_unstable();
            learners.dedup();
            Membership {
                voters: current.voters.clone(),
                learners,
            }
        } else if newcomers.iter().all(|r| self.caught_up(now, *r)) {
            target
        } else {
            return; // wait for the learners to catch up
        };
        let step = Reconfiguration {
            base: self.membership_slot,
            membership: step,
        };
        match self.propose_inner(now, Value::Reconfigure(step)) {
            Ok(_) => {}
            // Retried from the timer once the window drains.
            Err(ProposeError::WindowFull) => {}
            Err(e) => {
                // Cannot happen for a leader that checked the target; give
                // up rather than retry forever.
                debug_assert!(false, "reconfiguration step refused: {e}");
                self.pending_target = None;
            }
        }
    }

    /// Whether learner `r` is close enough to be promoted without stalling
    /// the new quorum.
    pub(super) fn caught_up(&self, now: Time, r: ReplicaId) -> bool {
        self.peers.get(&r).is_some_and(|p| {
            p.commit_index
                .saturating_add(self.config.pipeline_window as u64)
                >= self.commit_index
                && now.micros_since(p.last_heard) < self.config.election_timeout_min_us
        })
    }

    /// Adopts every `Reconfigure` chosen at the slots committed since the
    /// last call, in slot order. Must run before `apply_committed` trims the
    /// entries from memory.
    pub(super) fn adopt_chosen_configs(&mut self, now: Time) {
        if self.config_scanned_through >= self.commit_index {
            return;
        }
        let from = self.config_scanned_through.next().max(self.log_start);
        if from > self.commit_index {
            // Everything newly committed was compacted (covered by the
            // checkpoint, whose membership the driver passed in).
            self.config_scanned_through = self.commit_index;
            return;
        }
        let found: Vec<(Slot, Ballot, Reconfiguration)> = self
            .log
            .range(from..=self.commit_index)
            .filter_map(|(slot, e)| match &e.value {
                Value::Reconfigure(r) => Some((*slot, e.ballot, r.clone())),
                _ => None,
            })
            .collect();
        self.config_scanned_through = self.commit_index;
        for (slot, ballot, r) in found {
            // One proposed on top of a membership since replaced is a no-op.
            if r.applies_to(self.membership_slot) {
                self.switch_membership(now, slot, ballot, r.membership);
            }
        }
        ensures!(self.membership_slot <= self.commit_index);
    }

    /// `m`, chosen at `slot` (held here under `ballot`), governs every slot
    /// above `slot` from now on.
    pub(super) fn switch_membership(
        &mut self,
        now: Time,
        slot: Slot,
        ballot: Ballot,
        m: Membership,
    ) {
        requires!(slot > self.membership_slot && slot <= self.commit_index);
        // Invariant 10: every election in `m` runs above this ballot.
        self.observe(ballot);
        if !m.is_well_formed() || m.voters.is_empty() {
            // A chosen decree is a fact: a malformed one (never proposed by
            // this code, which checks) is ignored rather than trusted.
            return;
        }
        let voters_changed = m.voters != self.membership.voters;
        let old = std::mem::replace(&mut self.membership, m);
        self.membership_slot = slot;
        self.previous_members = old
            .all()
            .filter(|r| !self.membership.contains(*r))
            .collect();
        for r in self.membership.all() {
            if r != self.id && self.known_replicas.len() < MAX_KNOWN_REPLICAS {
                self.known_replicas.insert(r);
            }
        }
        self.peer_ids = self.membership.all().filter(|r| *r != self.id).collect();
        let members = self.membership.clone();
        self.peers.retain(|r, _| members.contains(*r));
        if self.pending_target.as_ref() == Some(&self.membership) {
            self.pending_target = None;
        }
        if !voters_changed {
            return;
        }
        match &self.role {
            RoleState::Leader(l) => {
                invariant!(
                    l.in_flight.is_empty() || planted!(self, propose_above_unchosen_reconfigure),
                    "nothing is in flight above a chosen Reconfigure"
                );
                let ballot = l.ballot;
                // Tell old and new members at once that the change is
                // chosen, in the ballot their votes for it were cast in (so
                // that they can learn it without a fetch): new voters switch
                // and answer the coming Prepare, removed ones stop
                // campaigning.
                let hb = Message::Heartbeat(msg::Heartbeat {
                    ballot,
                    commit_index: self.commit_index,
                    read_round: self.current_read_round(),
                });
                let mut told: Vec<ReplicaId> = self.peer_ids.clone();
                told.extend(self.previous_members.iter().copied());
                for r in told {
                    if r != self.id {
                        self.send(r, hb.clone());
                    }
                }
                if self.is_voter(self.id) {
                    // Its ballot's phase 1 asked the old voters: it must
                    // not lead the new ones in it. Phase 1 in the new voters,
                    // in a higher ballot (unless vetoed: then another voter
                    // takes over); the change in progress (if any) continues
                    // once elected.
                    let pending = self.pending_target.take();
                    self.step_down(now);
                    self.start_election(now);
                    if matches!(self.role, RoleState::Candidate(_)) {
                        self.pending_target = pending;
                    }
                } else {
                    self.pending_target = None;
                    match self.pick_successor(now) {
                        Some(successor) => self.hand_over(now, ballot, successor),
                        None => self.step_down(now),
                    }
                }
            }
            RoleState::Candidate(_) => {
                // Its phase 1 asked the old voters.
                self.step_down(now);
                if self.is_voter(self.id) {
                    self.start_election(now);
                }
            }
            RoleState::Follower => {}
        }
    }
}

/// Why `m` cannot be proposed as a membership, if it cannot.
pub(super) fn check_membership(m: &Membership) -> Result<(), ProposeError> {
    if m.voters.is_empty() {
        return Err(ProposeError::BadMembership {
            why: "at least one voter",
        });
    }
    if m.voters.len() > crate::config::MAX_VOTERS {
        return Err(ProposeError::BadMembership {
            why: "at most 128 voters",
        });
    }
    if !m.is_well_formed() {
        return Err(ProposeError::BadMembership {
            why: "voters and learners sorted, without duplicates, disjoint",
        });
    }
    Ok(())
}
