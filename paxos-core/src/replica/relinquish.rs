//! Relinquishing the primary role: a leader picks (or is given) a caught-up
//! successor that may become primary, brings it up to date and tells it to
//! start phase 1 at once (`TimeoutNow`); the successor honours that only
//! from the leader it follows.
//!
//! Maintains: a hand-off never targets a replica that is not a voter, is
//! vetoed (`can_become_primary`), or was not heard from recently; the
//! successor campaigns in a ballot above the old leader's (invariant 1), so
//! nothing about safety depends on the hand-off.

use super::{ProposeError, Replica, RoleState};
use crate::msg::{self, Message};
use crate::types::{Ballot, ReplicaId, Time};

impl Replica {
    /// Hands over to `successor`, or (if `None`) to the most caught-up
    /// eligible voter.
    pub(super) fn relinquish_inner(
        &mut self,
        now: Time,
        successor: Option<ReplicaId>,
    ) -> Result<(), ProposeError> {
        let RoleState::Leader(l) = &self.role else {
            return Err(ProposeError::NotLeader {
                leader: self.leader,
            });
        };
        if !l.announced {
            return Err(ProposeError::NotLeader { leader: None });
        }
        let ballot = l.ballot;
        let successor = match successor {
            Some(r) => Some(r).filter(|r| self.may_succeed(now, *r)),
            None => self.pick_successor(now),
        }
        .ok_or(ProposeError::NoSuccessor)?;
        self.pending_target = None;
        self.hand_over(now, ballot, successor);
        Ok(())
    }

    /// Whether `r` may take over from this replica now: another voter that
    /// may lead and was heard from recently (a hand-off to a dead replica
    /// would leave the cluster leaderless until an election timeout).
    pub(super) fn may_succeed(&self, now: Time, r: ReplicaId) -> bool {
        r != self.id
            && self.is_voter(r)
            && self.peers.get(&r).is_some_and(|p| {
                p.can_become_primary
                    && now.micros_since(p.last_heard) < self.config.election_timeout_min_us
            })
    }

    /// The most caught-up voter that `may_succeed`.
    pub(super) fn pick_successor(&self, now: Time) -> Option<ReplicaId> {
        self.membership
            .voters
            .iter()
            .copied()
            .filter(|v| self.may_succeed(now, *v))
            .max_by_key(|v| (self.peers[v].commit_index, std::cmp::Reverse(*v)))
    }

    /// Steps down in favour of `successor`: it is brought up to date and told
    /// to start phase 1 at once.
    pub(super) fn hand_over(&mut self, now: Time, ballot: Ballot, successor: ReplicaId) {
        let msg = Message::Heartbeat(msg::Heartbeat {
            ballot,
            commit_index: self.commit_index,
            read_round: self.current_read_round(),
        });
        self.send(successor, msg);
        self.send(successor, Message::TimeoutNow(msg::TimeoutNow { ballot }));
        self.step_down(now);
        // Do not compete with the successor right away.
        self.election_deadline = self
            .election_deadline
            .plus_micros(self.config.election_timeout_max_us);
    }

    pub(super) fn on_timeout_now(&mut self, now: Time, from: ReplicaId, m: msg::TimeoutNow) {
        let msg::TimeoutNow { ballot } = m;
        self.observe(ballot);
        if ballot == self.promised
            && ballot.leader == from
            && matches!(self.role, RoleState::Follower)
        {
            self.start_election(now);
        }
    }
}
