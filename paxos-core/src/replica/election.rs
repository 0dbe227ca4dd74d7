//! Election and phase 1: election timers, campaigning (`Prepare` to every
//! voter), collecting promise chunks, and becoming leader; stepping down
//! and following.
//!
//! Maintains, of the invariants in the module above:
//! - 2 (one leader per ballot): a candidate persists `Promise(b)` before
//!   any `Prepare(b)` leaves, so a crashed candidate never reuses `b`.
//! - 4 (phase 1 covers every unchosen slot): promises are usable only if
//!   complete from the candidate's commit index on; the leader re-proposes
//!   the highest-ballot value per slot (or `Noop`), and learns chosen the
//!   slots a usable promise reports committed.
//! - 10 (reconfiguration), phase 1's part: promises are used only for the
//!   slots governed by the voters that made them (learning stops at the
//!   first `Reconfigure`, re-proposing at the first one that changes the
//!   voters), and a candidate whose voters changed starts over.
//!
//! Phase 1 starts after a won pre-vote (`prevote`), or at once on
//! `TimeoutNow`.
//!
//! Liveness: a candidacy lasts until the candidate's election deadline,
//! which only phase 1 progress pushes back. While it lasts, the candidate
//! sends every voter a `Prepare` each heartbeat interval (the missing chunk,
//! or an empty re-query once a voter sent its last one), and a voter resets
//! its election timer on each `Prepare` it accepts: the voters that promised
//! a live candidate do not campaign against it, however many chunks its
//! phase 1 takes. At the deadline the candidate gives up and asks for a
//! pre-vote again (a stalled candidacy must not hold the voters forever).

use super::catchup::FetchState;
use super::proposer::LeaderState;
use super::{Replica, RoleState};
use crate::msg::{self, Message};
use crate::types::{Accepted, Ballot, PersistEntry, ReplicaId, Slot, Time, Value};
use paxos_contracts::{invariant, requires};
use rand::Rng;
use std::collections::BTreeMap;

/// Phase 1 progress with one acceptor.
#[derive(Clone, Copy, Debug)]
pub(super) struct PromiseProgress {
    /// The `from_slot` of the next chunk expected; once `complete`, the
    /// slot after the last entry the acceptor reported (a `Prepare` from
    /// there is answered with an empty last chunk).
    pub(super) expect_from: Slot,
    /// All chunks received.
    pub(super) complete: bool,
}

#[derive(Debug)]
pub(super) struct CandidateState {
    pub(super) ballot: Ballot,
    /// First slot phase 1 covers (commit index + 1 when it started).
    pub(super) from_slot: Slot,
    pub(super) progress: BTreeMap<ReplicaId, PromiseProgress>,
    /// Highest-ballot entry reported per slot.
    pub(super) merged: BTreeMap<Slot, Accepted>,
    /// Highest commit index reported in a usable promise chunk: every slot
    /// up to it is chosen.
    pub(super) max_usable_commit: Slot,
}

impl Replica {
    pub(super) fn reset_election_timer(&mut self, now: Time) {
        let lo = self.config.election_timeout_min_us;
        let hi = self.config.election_timeout_max_us;
        self.election_deadline = now.plus_micros(self.rng.gen_range(lo..hi));
    }

    pub(super) fn step_down(&mut self, now: Time) {
        // A change an operator asked this leader for dies with its
        // leadership (it must not resume if this replica leads again).
        self.pending_target = None;
        self.role = RoleState::Follower;
        self.leader = None;
        self.reset_election_timer(now);
        self.request_fetch(now);
    }

    /// A valid message from the leader of `ballot` (== promised) arrived.
    pub(super) fn follow(&mut self, now: Time, from: ReplicaId, ballot: Ballot) {
        if from == self.id || ballot.leader != from {
            return;
        }
        if !matches!(self.role, RoleState::Follower) {
            self.role = RoleState::Follower;
        }
        self.leader = Some(from);
        self.last_contact = Some((from, now));
        self.pre_vote = None;
        self.reset_election_timer(now);
    }

    /// Starts phase 1 in a new ballot (after a won pre-vote, or at once
    /// when the leader hands over with `TimeoutNow`), unless this replica
    /// may not campaign (`may_campaign`: vetoed, not a voter, repairing, or
    /// in need of a snapshot with a gap in its log).
    /// A candidate that may not campaign again steps down here:
    /// staying a candidate, its re-queries (`resend_prepares`) would keep
    /// the voters that promised it from ever campaigning themselves.
    pub(super) fn start_election(&mut self, now: Time) {
        self.reset_election_timer(now);
        self.pre_vote = None;
        if !self.may_campaign() {
            if matches!(self.role, RoleState::Candidate(_)) {
                self.role = RoleState::Follower;
            }
            return;
        }
        let round = self.promised.round.max(self.max_seen_round) + 1;
        let ballot = Ballot::new(round, self.id);
        // Persisted before any Prepare leaves (send_durable), so that a crash
        // never lets this replica lead the same ballot twice.
        self.raise_promise(now, ballot);
        let from_slot = self.commit_index.next();
        self.last_contact = Some((self.id, now));
        self.role = RoleState::Candidate(CandidateState {
            ballot,
            from_slot,
            progress: BTreeMap::new(),
            merged: BTreeMap::new(),
            max_usable_commit: Slot::ZERO,
        });
        self.leader = None;
        let voters = self.membership.voters.clone();
        for v in voters {
            self.send_durable(v, Message::Prepare(msg::Prepare { ballot, from_slot }));
        }
    }

    pub(super) fn on_promise(&mut self, now: Time, from: ReplicaId, m: msg::Promise) {
        let msg::Promise {
            ballot,
            from_slot,
            commit_index: peer_commit,
            log_start: peer_log_start,
            entries,
            next_from,
        } = m;
        self.observe(ballot);
        if from != self.id {
            self.note_peer(now, from, peer_commit, None);
        }
        let voter = self.is_voter(from);
        let quorum = self.quorum();
        let RoleState::Candidate(c) = &mut self.role else {
            return;
        };
        if c.ballot != ballot || !voter {
            return;
        }
        let start = c.from_slot;
        let progress = c.progress.entry(from).or_insert(PromiseProgress {
            expect_from: start,
            complete: false,
        });
        if progress.complete || progress.expect_from != from_slot {
            return; // duplicate or out of order
        }
        if peer_log_start > from_slot {
            // The acceptor dropped entries phase 1 needs: this candidate is
            // behind. Catch up from it; the election retries later.
            self.known_commit = self.known_commit.max(peer_commit);
            self.request_fetch(now);
            return;
        }
        c.max_usable_commit = c.max_usable_commit.max(peer_commit);
        let limit = next_from.unwrap_or(Slot::MAX);
        let in_chunk = |e: &Accepted| e.slot >= from_slot && e.slot < limit;
        let mut ask_next = None;
        match next_from {
            Some(n) if n > from_slot => {
                progress.expect_from = n;
                ask_next = Some(n);
            }
            Some(_) => {} // a chunk that does not advance: wait for the retry
            None => {
                progress.complete = true;
                progress.expect_from = entries
                    .iter()
                    .filter(|e| in_chunk(e))
                    .map(|e| e.slot.saturating_add(1))
                    .max()
                    .unwrap_or(from_slot);
            }
        }
        for e in entries {
            if !in_chunk(&e) {
                continue; // malformed chunk: ignore the stray entry
            }
            match c.merged.get(&e.slot) {
                Some(m) if m.ballot >= e.ballot => {
                    invariant!(
                        m.ballot != e.ballot || m.value == e.value,
                        "two values at one slot and ballot"
                    );
                }
                _ => {
                    c.merged.insert(e.slot, e);
                }
            }
        }
        let complete = c.progress.values().filter(|p| p.complete).count();
        self.known_commit = self.known_commit.max(peer_commit);
        // Phase 1 is making progress: do not restart it on the election
        // timeout while chunks keep arriving (a long unchosen tail takes
        // many chunks).
        self.reset_election_timer(now);
        if let Some(n) = ask_next {
            // Our promise of `ballot` is durable: the first Prepare left.
            self.send(
                from,
                Message::Prepare(msg::Prepare {
                    ballot,
                    from_slot: n,
                }),
            );
        }
        if complete >= quorum {
            self.become_leader(now);
        }
    }

    pub(super) fn become_leader(&mut self, now: Time) {
        let RoleState::Candidate(c) = std::mem::replace(&mut self.role, RoleState::Follower) else {
            return;
        };
        requires!(c.ballot == self.promised);
        let mut recovered = c.merged;
        #[cfg(feature = "planted-bugs")]
        if self.bugs.skip_adopt_highest_accepted {
            // Planted bug: forget what the promises reported (but keep the
            // window's extent, so slots get overwritten with Noop).
            for e in recovered.values_mut() {
                e.value = Value::Noop;
            }
        }
        // Slots up to a usable promise's commit index are chosen, and the
        // highest-ballot entry a complete quorum reported for such a slot is
        // its chosen value (every vote at or above the choosing ballot
        // carries it, and the quorum meets the choosing one): learn them
        // instead of re-proposing them.
        //
        // This holds only for slots governed by the membership the promises
        // came from: learning stops right after a `Reconfigure`, since the
        // slots above it are decided by the new voters' quorums.
        let before = self.commit_index;
        while self.commit_index < c.max_usable_commit {
            let slot = self.commit_index.next();
            let Some(e) = recovered.get(&slot) else { break };
            let (ballot, value) = (e.ballot, e.value.clone());
            let is_reconfig = matches!(value, Value::Reconfigure(_));
            self.learn_chosen(slot, ballot, value);
            self.commit_index = slot;
            if is_reconfig {
                break;
            }
        }
        if self.commit_index > before {
            self.known_commit = self.known_commit.max(self.commit_index);
            self.persist(PersistEntry::Commit(self.commit_index));
            let voters_before = self.membership.voters.clone();
            self.adopt_chosen_configs(now);
            self.apply_committed();
            if self.membership.voters != voters_before {
                // Phase 1 ran with the old voters; it says nothing about
                // the slots the new ones govern. Start over with them.
                self.start_election(now);
                return;
            }
        }
        recovered = recovered.split_off(&self.commit_index.next());
        // Re-propose up to the first `Reconfigure` that changes the voters
        // at most: the slots above it belong to the voters it installs, whose
        // quorums this phase 1 did not ask. They are recovered by the
        // election that follows once it is chosen. A `Reconfigure` that
        // keeps the voters (a learner step) leaves the slots above it to the
        // voters this phase 1 asked, so they are re-proposed like any other:
        // dropping them would let this leader propose fresh values over
        // slots that may be chosen (found by paxos-sim seed 52).
        // `drain_recovery` proposes nothing above it until it is chosen.
        // A `Reconfigure` whose base will not be in force where it lands is
        // a no-op (see `Reconfiguration`), so it is followed like any value.
        let mut voters = self.membership.voters.clone();
        let mut in_force_slot = self.membership_slot;
        let mut cut = None;
        for e in recovered.values() {
            let Value::Reconfigure(r) = &e.value else {
                continue;
            };
            if !r.applies_to(in_force_slot) {
                continue;
            }
            if r.membership.voters != voters {
                cut = Some(e.slot);
                break;
            }
            voters = r.membership.voters.clone();
            in_force_slot = e.slot;
        }
        if let Some(s) = cut {
            recovered.split_off(&s.next());
        }
        let recover_next = self.commit_index.next();
        let recover_through = recovered
            .keys()
            .next_back()
            .copied()
            .unwrap_or(Slot::ZERO)
            .max(self.commit_index);
        self.fetch = FetchState::default();
        self.leader = None;
        self.role = RoleState::Leader(LeaderState {
            ballot: c.ballot,
            recover_next,
            recover_through,
            recovered,
            next_slot: recover_next,
            in_flight: BTreeMap::new(),
            announced: false,
            reconfig_slot: None,
            last_ack: BTreeMap::new(),
            phase1_voters: self.membership.voters.clone(),
            elected_at: now,
            reads: super::reads::ReadRounds::new(now, self.config.read_lease),
        });
        self.drain_recovery(now);
        self.maybe_announce(now);
        // Tell everyone at once (also stops their elections).
        self.broadcast_heartbeat(now);
    }

    pub(super) fn on_reject(&mut self, now: Time, m: msg::Reject) {
        let msg::Reject { promised } = m;
        self.observe(promised);
        let stale = match &self.role {
            RoleState::Candidate(c) => c.ballot < promised,
            RoleState::Leader(l) => l.ballot < promised,
            RoleState::Follower => false,
        };
        if stale {
            self.step_down(now);
        }
    }

    /// The candidate's heartbeat timer. Re-asks the voters whose promise
    /// chunks are missing, and re-queries those that sent their last chunk,
    /// from past what they reported: having promised this ballot, they
    /// accepted nothing since, so they answer with an empty last chunk.
    ///
    /// That re-query is the candidacy's sign of life. A voter resets its
    /// election timer on every `Prepare` it accepts, and phase 1 pulls a
    /// long unchosen tail in chunks, a round trip each, so it may outlast
    /// the election timeout. A voter that had nothing to report used to hear
    /// nothing more after its first chunk, time out and campaign itself,
    /// and two such voters preempted each other forever (paxos-sim seed 706,
    /// FINDINGS F2). The candidacy ends at the candidate's own election
    /// deadline, which only phase 1 progress pushes back.
    pub(super) fn resend_prepares(&mut self) {
        let RoleState::Candidate(c) = &self.role else {
            return;
        };
        let ballot = c.ballot;
        let mut resend = Vec::new();
        for v in &self.membership.voters {
            match c.progress.get(v) {
                Some(p) if p.complete && *v == self.id => {}
                Some(p) => resend.push((*v, p.expect_from)),
                None => resend.push((*v, c.from_slot)),
            }
        }
        for (v, from_slot) in resend {
            self.send_durable(v, Message::Prepare(msg::Prepare { ballot, from_slot }));
        }
    }
}
