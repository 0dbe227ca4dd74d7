//! The costlier protocol invariants, checked at the end of every public
//! call when contracts are on (`paxos_contracts::ENABLED`); the
//! safety-critical ones are plain `assert!`s where the state changes.
//!
//! `check_invariants` checks the state as a whole: applies keep up with
//! commits (7), the in-memory log starts above the truncation point and
//! holds every recent committed slot (5, 9), gated messages wait in token
//! order (3), a leader holds the highest promise and leads only the voters
//! its phase 1 asked (10), its in-flight slots are exactly the slots above
//! the commit index and within the window (9), and it is announced only
//! once the recovered window is proposed (4). It reads the state only; it
//! never reuses the code it checks.

use super::{Replica, RoleState};
use paxos_contracts::invariant;

impl Replica {
    pub(super) fn check_invariants(&self) {
        if !paxos_contracts::ENABLED {
            return;
        }
        invariant!(
            self.needs_snapshot || self.applied_index == self.commit_index,
            "apply keeps up with commit"
        );
        invariant!(
            self.known_commit >= self.commit_index || matches!(self.role, RoleState::Leader(_))
        );
        invariant!(self.log_start > self.truncated_through);
        let reads = &self.fetch.storage_reads;
        invariant!(
            reads.len() <= super::MAX_KNOWN_REPLICAS
                && reads
                    .iter()
                    .enumerate()
                    .all(|(i, r)| reads[i + 1..].iter().all(|o| o.peer != r.peer)),
            "at most one storage read outstanding per peer"
        );
        invariant!(self.log.keys().next().is_none_or(|s| *s >= self.log_start));
        // Checked slot by slot over the most recent 4 committed slots (older
        // ones were checked when they were recent; entries leave memory only
        // from the front), so that the check stays cheap.
        let check_from = self.log_start.max(self.commit_index.saturating_sub(4));
        invariant!(
            self.needs_snapshot
                || check_from
                    .through(self.commit_index)
                    .all(|s| self.log.get(&s).is_some_and(|e| e.slot == s))
                || self.log_start > self.commit_index,
            "every committed slot in memory has its entry"
        );
        invariant!(self
            .gated
            .iter()
            .zip(self.gated.iter().skip(1))
            .all(|(a, b)| a.0 <= b.0));
        match &self.role {
            RoleState::Leader(l) => {
                invariant!(
                    l.ballot == self.promised,
                    "a leader holds the highest promise"
                );
                invariant!(l.ballot.leader == self.id);
                invariant!(
                    l.phase1_voters == self.membership.voters,
                    "a leader leads only the voters its phase 1 asked"
                );
                invariant!(
                    // Distinct sorted keys with these ends and this count
                    // are exactly the range: O(log n) instead of O(window).
                    l.next_slot == self.commit_index.plus(l.in_flight.len() as u64).next()
                        && l.in_flight
                            .first_key_value()
                            .is_none_or(|(s, _)| *s == self.commit_index.next())
                        && l.in_flight
                            .last_key_value()
                            .is_none_or(|(s, _)| *s == l.next_slot.prev()),
                    "in-flight slots are exactly commit_index+1 .. next_slot"
                );
                invariant!(
                    l.in_flight.len() <= self.config.pipeline_window,
                    "pipeline window exceeded"
                );
                invariant!(!l.announced || l.recover_next > l.recover_through);
                invariant!(
                    l.reads.confirmed <= l.reads.sent,
                    "a read round is confirmed only once sent"
                );
                invariant!(
                    self.config.read_lease.is_none()
                        || l.reads.waited
                        || (l.next_slot == l.recover_next && !l.announced),
                    "with leases, nothing is proposed before the old lease ran out"
                );
            }
            RoleState::Candidate(c) => {
                invariant!(c.ballot.leader == self.id && c.ballot <= self.promised);
            }
            RoleState::Follower => {}
        }
    }
}
