//! Pre-vote and leader stickiness: a voter whose election timer ran out
//! first asks every voter whether it could win (`PreVote`), and raises a
//! ballot (`start_election`) only once a quorum said yes. Nothing is
//! persisted and no promise changes for a pre-vote, on either side.
//!
//! Why: in Paxos a higher ballot always wins, so without this any voter
//! that stops hearing the leader for a moment (a restart, a slow link, a
//! timer that fires while the new leader's first heartbeat is in flight)
//! deposes a healthy leader, and its clients' in-flight requests end with
//! an unknown outcome. With it, a voter campaigns only if a quorum agrees
//! that:
//!
//! - **no live leader**: none of them heard, within its minimum election
//!   timeout, from a leader or a candidate other than the asker (*leader
//!   stickiness*); a leader or a candidate never grants. Granting also
//!   counts as such contact: a voter grants at most one asker per minimum
//!   election timeout, so two replicas whose timers fire close together do
//!   not both get a quorum and depose each other one after the other (the
//!   cold-start churn of issue #17);
//! - **not behind**: the asker's commit index is at least the voter's, and
//!   the voter still holds every slot above it (`log_start <= commit + 1`),
//!   so the asker could complete phase 1 from its commit index with this
//!   voter's promise (the `peer_log_start > from_slot` case of
//!   `on_promise` cannot happen with it).
//!
//! Maintains no safety invariant (it only withholds candidacies; ballots,
//! promises and phase 1 are unchanged). Liveness: once no voter of some
//! quorum hears a leader, the quorum's most caught-up eligible voter is
//! granted by all of it (ties broken by the randomized timers, as split
//! votes are in Raft); an asker that is denied because it is behind
//! catches up from the voter that said so and stops standing in the way
//! of others.
//!
//! A replica that needs a snapshot may pre-vote if its log has no gap
//! (its state machine holds everything up to its commit index): a quorum
//! granting it proves that nobody live leads and that phase 1 can recover
//! the slots it lacks from the voters' logs (F17 in paxos-sim/FINDINGS.md).
//! Leadership transfer (`TimeoutNow`) skips the pre-vote, as Raft's does:
//! the leader itself asked for the election.

use super::{Replica, RoleState};
use crate::msg::{self, Message};
use crate::types::{Ballot, ReplicaId, Time};
use paxos_contracts::{ensures, requires};

/// A pre-vote round this replica started.
#[derive(Debug)]
pub(super) struct PreVoteState {
    /// The ballot it would campaign in; replies echo it.
    pub(super) ballot: Ballot,
    /// Voters that granted (this replica included).
    pub(super) granted: Vec<ReplicaId>,
}

impl Replica {
    /// Whether this replica may start phase 1 now (on a timeout, after a
    /// won pre-vote, or when told to by `TimeoutNow`): it is a voter, not
    /// vetoed, not repairing, and if it needs a snapshot its log has no
    /// gap (every slot up to its commit index is applied).
    pub(super) fn may_campaign(&self) -> bool {
        self.can_become_primary
            && self.is_voter(self.id)
            && !self.repairing()
            && (!self.needs_snapshot
                || (self.truncated_through <= self.applied_index
                    && self.applied_index == self.commit_index))
    }

    /// The election timer ran out: ask every voter for a pre-vote. A
    /// candidate whose phase 1 made no progress for a whole election
    /// timeout gives it up first (its re-queries would keep the voters
    /// that promised it from granting anyone else).
    pub(super) fn on_election_timeout(&mut self, now: Time) {
        if planted!(self, skip_pre_vote) {
            self.start_election(now);
            return;
        }
        self.reset_election_timer(now);
        self.pre_vote = None;
        if matches!(self.role, RoleState::Candidate(_)) {
            self.role = RoleState::Follower;
        }
        if !self.may_campaign() {
            return;
        }
        requires!(!matches!(self.role, RoleState::Leader(_)));
        // Above any ballot seen, and above every earlier round of pre-votes
        // of this replica, so that a late or replayed grant from an earlier
        // round never counts in this one.
        let round = self
            .promised
            .round
            .max(self.max_seen_round)
            .max(self.last_pre_vote_round)
            + 1;
        self.last_pre_vote_round = round;
        let ballot = Ballot::new(round, self.id);
        self.pre_vote = Some(PreVoteState {
            ballot,
            granted: vec![self.id],
        });
        // Asking counts as contact with a candidate (itself): it grants
        // nobody else for a minimum election timeout.
        self.last_contact = Some((self.id, now));
        let m = msg::PreVote {
            ballot,
            commit_index: self.commit_index,
        };
        for v in self.membership.voters.clone() {
            if v != self.id {
                self.send(v, Message::PreVote(m.clone()));
            }
        }
        self.maybe_won_pre_vote(now);
    }

    /// Answers a pre-vote. Changes nothing durable; a grant is recorded as
    /// contact with the asker (see the module docs) and gives it a whole
    /// election timeout to win before this replica asks for itself.
    pub(super) fn on_pre_vote(&mut self, now: Time, from: ReplicaId, m: msg::PreVote) {
        let msg::PreVote {
            ballot,
            commit_index,
        } = m;
        // `ballot` names a round of pre-votes, not a ballot anyone leads:
        // it is not observed (it would push every later ballot up).
        let old_promised = self.promised;
        let sticky = self.last_contact.is_some_and(|(who, at)| {
            who != from && now.micros_since(at) < self.config.election_timeout_min_us
        });
        let granted = matches!(self.role, RoleState::Follower)
            && !sticky
            && commit_index >= self.commit_index
            && self.log_start <= commit_index.next()
            && self.is_voter(self.id)
            && self.is_voter(from)
            && !self.repairing();
        if granted {
            self.last_contact = Some((from, now));
            self.reset_election_timer(now);
        }
        self.send(
            from,
            Message::PreVoteReply(msg::PreVoteReply {
                ballot,
                granted,
                promised: self.promised,
                commit_index: self.commit_index,
            }),
        );
        ensures!(self.promised == old_promised, "a pre-vote promises nothing");
    }

    pub(super) fn on_pre_vote_reply(&mut self, now: Time, from: ReplicaId, m: msg::PreVoteReply) {
        let msg::PreVoteReply {
            ballot,
            granted,
            promised,
            commit_index,
        } = m;
        self.observe(promised);
        self.note_peer(now, from, commit_index, None);
        if commit_index > self.commit_index {
            // Behind this voter: catch up from it (it holds those slots).
            self.known_commit = self.known_commit.max(commit_index);
            self.request_fetch(now);
        }
        let voter = self.is_voter(from);
        let Some(pv) = &mut self.pre_vote else {
            return;
        };
        if pv.ballot != ballot || !voter {
            return;
        }
        if !granted {
            if commit_index > self.commit_index {
                // It cannot win until it caught up: stop standing in the
                // way of the voter that is ahead.
                self.pre_vote = None;
                if self.last_contact.is_some_and(|(who, _)| who == self.id) {
                    self.last_contact = None;
                }
            }
            return;
        }
        if !pv.granted.contains(&from) {
            pv.granted.push(from);
        }
        self.maybe_won_pre_vote(now);
    }

    /// Starts phase 1 if a quorum granted the pre-vote in progress.
    fn maybe_won_pre_vote(&mut self, now: Time) {
        let quorum = self.quorum();
        let Some(pv) = &self.pre_vote else {
            return;
        };
        let grants = pv
            .granted
            .iter()
            .filter(|v| self.membership.is_voter(**v))
            .count();
        if grants < quorum {
            return;
        }
        self.pre_vote = None;
        if matches!(self.role, RoleState::Follower) && self.may_campaign() {
            self.start_election(now);
        }
    }
}
