//! The leader-stability checker: counts leader changes and fails the run on
//! an *unforced* one (issue #17).
//!
//! # Definition
//!
//! A **leader change** is a replica reporting `Leader` under a ballot above
//! that of the leader reported last (the same replica re-elected in a higher
//! ballot counts too). With `W` = twice the maximum election timeout, the
//! change at time `t` from previous leader `P` is **forced** if any of
//! these held at some moment of `[s - W, t]`, where `s` is when `P` stopped
//! reporting `Leader` (or `t`, if it still did):
//!
//! - `P` had no *steady quorum*: fewer than a majority of the voters of the
//!   newest membership (`P` included) were each, throughout the window,
//!   running (not crashed or restarted), not paused, not repairing, and
//!   connected to `P` in both directions (no partition, isolation or
//!   one-way cut between them). `P` itself must be all of that too, and a
//!   voter.
//! - The network weather was lossy or slow (`loss > 0` or
//!   `slow_message > 0`): heartbeats may have been lost or late everywhere.
//! - Old messages were replayed, the leader was asked to relinquish, or a
//!   membership change was in progress (these change leaders on purpose or
//!   may legitimately restart phase 1).
//!
//! Every other change is **unforced**: the previous leader was alive,
//! connected to a quorum and slowed by no fault for the last election
//! timeout, yet lost its role. Pre-vote and leader stickiness exist to make
//! that impossible; the `SkipPreVote` planted bug shows that this checker
//! sees it (`tests/teeth.rs`). A follower's crash, restart, pause or cut
//! does not force anything while `P` keeps a steady quorum without it.
//!
//! `W` is twice the longest timeout, so that a fault just before a timer
//! was armed, and the pre-vote and phase 1 that follow it, all fall inside.

use paxos_core::{Ballot, Time};
use std::collections::BTreeMap;

/// What the checker remembers between leader reports.
#[derive(Debug)]
pub(crate) struct Stability {
    /// The window `W` in microseconds.
    window_us: u64,
    /// The leader reported last: (replica index, ballot, when it stopped
    /// reporting `Leader`, if it did).
    current: Option<(usize, Ballot, Option<Time>)>,
    /// Per replica: the last moment it was down, restarting, paused or
    /// repairing (`Time(0)`-based; `None`: never).
    unsteady_at: Vec<Option<Time>>,
    /// Per ordered pair of replicas: the last moment the link was cut.
    cut_at: BTreeMap<(usize, usize), Time>,
    /// The last moment of a cluster-wide excuse (lossy or slow weather,
    /// replay, relinquish, membership change).
    excused_at: Option<Time>,
    /// Leader changes seen.
    pub(crate) changes: u64,
}

impl Stability {
    pub(crate) fn new(replicas: usize, election_max_us: u64) -> Stability {
        Stability {
            window_us: 2 * election_max_us,
            current: None,
            unsteady_at: vec![None; replicas],
            cut_at: BTreeMap::new(),
            excused_at: None,
            changes: 0,
        }
    }

    /// Replica `i` is (or was, until `until`) down, restarting, paused or
    /// repairing.
    pub(crate) fn unsteady(&mut self, i: usize, until: Time) {
        if i >= self.unsteady_at.len() {
            self.unsteady_at.resize(i + 1, None);
        }
        let at = &mut self.unsteady_at[i];
        *at = Some(at.map_or(until, |t| t.max(until)));
    }

    /// The link `from -> to` is (or was, at `now`) cut.
    pub(crate) fn cut(&mut self, from: usize, to: usize, now: Time) {
        self.cut_at.insert((from, to), now);
    }

    /// Something at `now` may legitimately change the leader anywhere.
    pub(crate) fn excuse(&mut self, now: Time) {
        self.excused_at = Some(now);
    }

    /// Replica `i` reported a role other than `Leader` at `now`.
    pub(crate) fn not_leader(&mut self, i: usize, now: Time) {
        if let Some((p, _, stopped @ None)) = &mut self.current {
            if *p == i {
                *stopped = Some(now);
            }
        }
    }

    /// Whether `at` falls in the window that starts `W` before `since`.
    fn within(&self, at: Option<Time>, since: Time) -> bool {
        at.is_some_and(|t| t.plus_micros(self.window_us) > since)
    }

    /// Replica `leader` reported `Leader` under `ballot` at `now`. `voters`
    /// are the indexes of the newest membership's voters. Returns the
    /// previous leader if this is an unforced change.
    pub(crate) fn on_leader(
        &mut self,
        leader: usize,
        ballot: Ballot,
        now: Time,
        voters: &[usize],
    ) -> Option<(usize, Ballot)> {
        let previous = self.current;
        match previous {
            Some((p, b, _)) if ballot <= b => {
                if p == leader && ballot == b {
                    // Still (or again) reporting its own leadership.
                    self.current = Some((p, b, None));
                }
                return None;
            }
            None => {
                self.current = Some((leader, ballot, None));
                return None;
            }
            Some(_) => {}
        }
        self.current = Some((leader, ballot, None));
        self.changes += 1;
        let (p, old, stopped) = previous?;
        let since = stopped.unwrap_or(now).min(now);
        if self.within(self.excused_at, since) || !voters.contains(&p) {
            return None;
        }
        let steady = |r: usize| {
            !self.within(self.unsteady_at.get(r).copied().flatten(), since)
                && !self.within(self.cut_at.get(&(p, r)).copied(), since)
                && !self.within(self.cut_at.get(&(r, p)).copied(), since)
        };
        if !steady(p) {
            return None;
        }
        let quorum = voters.len() / 2 + 1;
        let steady_quorum = voters.iter().filter(|v| steady(**v)).count() >= quorum;
        steady_quorum.then_some((p, old))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use paxos_core::ReplicaId;

    fn b(round: u64, leader: u32) -> Ballot {
        Ballot::new(round, ReplicaId(leader))
    }

    #[test]
    fn a_change_with_a_steady_quorum_is_unforced_and_faults_excuse_it() {
        let voters = [0, 1, 2];
        let mut s = Stability::new(3, 100);
        assert_eq!(s.on_leader(0, b(1, 1), Time(1_000), &voters), None);
        // Replica 2 was restarted recently: the leader kept a steady
        // quorum (0 and 1), so the change is unforced.
        s.unsteady(2, Time(900));
        assert_eq!(
            s.on_leader(1, b(2, 2), Time(1_000), &voters),
            Some((0, b(1, 1)))
        );
        assert_eq!(s.changes, 1);
        // The leader's link to 0 was cut: forced.
        s.cut(0, 1, Time(950));
        assert_eq!(s.on_leader(2, b(3, 3), Time(1_000), &voters), None);
        // Long after every fault: unforced again.
        assert_eq!(
            s.on_leader(0, b(4, 1), Time(2_000), &voters),
            Some((2, b(3, 3)))
        );
        // A cluster-wide excuse within the window.
        s.excuse(Time(1_900));
        assert_eq!(s.on_leader(1, b(5, 2), Time(2_050), &voters), None);
        // A stale report of a lower ballot is no change.
        assert_eq!(s.on_leader(0, b(4, 1), Time(5_000), &voters), None);
        assert_eq!(s.changes, 4);
        // The leader was cut off at 4 900 and stepped down at 5 000; nobody
        // led until 9 000: the window reaches back to the step-down.
        s.cut(1, 0, Time(4_900));
        s.cut(1, 2, Time(4_900));
        s.not_leader(1, Time(5_000));
        assert_eq!(s.on_leader(2, b(6, 3), Time(9_000), &voters), None);
        assert_eq!(s.changes, 5);
    }
}
