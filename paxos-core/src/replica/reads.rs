//! Reads that skip the log: ReadIndex (leadership confirmed by one
//! heartbeat round to a quorum) and leader leases.
//!
//! # ReadIndex
//!
//! A leader numbers its heartbeat rounds within its ballot (`read_round`
//! in `Heartbeat`, echoed by `HeartbeatAck`). A read that arrives when the
//! last round started is `r` gets a [`ReadTicket`] for round `r + 1` and
//! the commit index of that moment. Once a quorum of voters (the leader
//! included) acknowledged a round `>= r + 1` in this ballot, the read may
//! be served from any state that applied the ticket's slot:
//!
//! - Each acknowledging voter had not promised a higher ballot when it
//!   answered (it rejects heartbeats below its promise, invariant 1), and it
//!   answered after the read arrived (the round started after it). So no
//!   phase 1 of a higher ballot had a quorum before the read arrived: no
//!   higher ballot chose anything, and no other leader completed a write,
//!   before the read arrived.
//! - Every write this leader completed is at or below its commit index.
//! - Every value chosen in an earlier ballot is at or below its commit index
//!   too, because tickets are handed out only once the leader is
//!   *announced*: phase 1 asked a quorum for every slot above the leader's
//!   commit index and the recovered window is chosen in this ballot (the
//!   Paxos counterpart of Raft's "commit an entry of your own term first";
//!   until then a new leader may not know every chosen slot).
//!
//! Rounds batch: while a round is outstanding, reads that arrive wait for
//! the next one, which starts when the outstanding one is confirmed (or at
//! the next heartbeat): every read waiting at that moment shares it, and a
//! round already sent never covers a read that arrived after it was sent.
//!
//! # Leases (`Config::read_lease`)
//!
//! When round `r`, started at `t` on the leader's clock, is confirmed, the
//! leader holds a lease until `t + duration * (1 - ρ)` (its clock): at most
//! `duration` of real time after the round started, whatever its clock's
//! rate within the bound. Meanwhile it serves reads at its commit index
//! without a round. The design chosen is the *new leader waits*: a leader
//! elected with leases on proposes nothing (not even the window phase 1
//! recovered) and so announces itself, proposes client values and serves
//! reads, only `duration * (1 + ρ)` after its phase 1 completed, on its
//! clock, which is at least `duration` of real time. Nothing is chosen in
//! its ballot while an old lease may hold, so a value the old leader's
//! lease reads miss is never chosen before they end (a recovered write,
//! re-proposed at once, would be: chosen, so visible to every later read
//! of the new leader, while the old one still answers without it). Any round an old
//! lease counts from was acknowledged by a voter of the new phase 1's
//! quorum before that voter promised the new ballot (quorums intersect,
//! and after promising it rejects the old ballot), so it started before
//! phase 1 completed, and the old lease ran out before the new leader
//! commits or serves anything a stale read could miss. (The alternative,
//! voters refusing to promise while a lease they granted runs, puts the
//! clock assumption and state on every acceptor; this keeps it in one
//! place, the only role that serves lease reads.)
//!
//! Maintains no safety invariant of the log: it only decides when a read
//! may be answered. Planted bug `lease_no_wait` (the new leader does not
//! wait out the old lease) breaks the lease argument above.

use super::{ProposeError, Replica, RoleState};
use crate::config::ReadLease;
use crate::types::{Ballot, ReplicaId, Slot, Time};
use paxos_contracts::{ensures, requires};
use std::collections::{BTreeMap, VecDeque};

/// Rounds kept with their start time for lease computation. A round older
/// than the newest this many is forgotten (its confirmation then extends
/// no lease, which is only conservative).
const MAX_ROUNDS_REMEMBERED: usize = 64;

/// What a linearizable read waits for: `round` confirmed in `ballot`, then
/// the state machine applied through `read_index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadTicket {
    /// The leader's ballot when the read arrived.
    pub ballot: Ballot,
    /// The heartbeat round that must be confirmed
    /// ([`Replica::read_confirmed`]).
    pub round: u64,
    /// The commit index when the read arrived: serve the read from a state
    /// that applied at least this slot.
    pub read_index: Slot,
}

/// A leader's heartbeat rounds, their confirmations and its lease.
#[derive(Debug)]
pub(super) struct ReadRounds {
    /// The last round started in this ballot (0: none yet).
    pub(super) sent: u64,
    /// Start times of the rounds not yet confirmed, oldest first (bounded).
    pub(super) started_at: VecDeque<(u64, Time)>,
    /// Highest round each other voter acknowledged in this ballot.
    pub(super) acked: BTreeMap<ReplicaId, u64>,
    /// Highest round a quorum acknowledged.
    pub(super) confirmed: u64,
    /// A read waits for a round that is not started yet.
    pub(super) wanted: bool,
    /// Lease reads may be served until then (this replica's clock).
    pub(super) lease_until: Option<Time>,
    /// With leases on, the leader proposes nothing and does not announce
    /// itself before this.
    pub(super) announce_after: Time,
    /// `announce_after` was seen passed (or, with the planted bug, ignored).
    pub(super) waited: bool,
}

impl ReadRounds {
    pub(super) fn new(now: Time, lease: Option<ReadLease>) -> ReadRounds {
        ReadRounds {
            sent: 0,
            started_at: VecDeque::new(),
            acked: BTreeMap::new(),
            confirmed: 0,
            wanted: false,
            lease_until: None,
            announce_after: lease.map_or(now, |l| now.plus_micros(l.successor_wait_us())),
            waited: lease.is_none(),
        }
    }

    /// Starts the next round at `now`; returns its number.
    pub(super) fn start(&mut self, now: Time) -> u64 {
        self.sent += 1;
        self.wanted = false;
        if self.started_at.len() == MAX_ROUNDS_REMEMBERED {
            self.started_at.pop_front();
        }
        self.started_at.push_back((self.sent, now));
        self.sent
    }
}

impl Replica {
    /// A ticket for a linearizable read (see the module docs), or
    /// `NotLeader` if this replica is not the announced leader. Starts a
    /// heartbeat round unless one is outstanding, in which case the read
    /// shares the next round with every read that arrives until then.
    pub(super) fn read_index_inner(&mut self, now: Time) -> Result<ReadTicket, ProposeError> {
        let leader = self.leader;
        let commit_index = self.commit_index;
        let RoleState::Leader(l) = &mut self.role else {
            return Err(ProposeError::NotLeader { leader });
        };
        if !l.announced {
            return Err(ProposeError::NotLeader { leader: None });
        }
        let ticket = ReadTicket {
            ballot: l.ballot,
            round: l.reads.sent + 1,
            read_index: commit_index,
        };
        if l.reads.confirmed >= l.reads.sent {
            self.broadcast_heartbeat(now);
        } else {
            l.reads.wanted = true;
        }
        ensures!(
            matches!(&self.role, RoleState::Leader(l) if l.reads.sent >= ticket.round || l.reads.wanted)
        );
        Ok(ticket)
    }

    /// The announced leader's ballot and highest confirmed round.
    pub(super) fn read_confirmed_inner(&self) -> Option<(Ballot, u64)> {
        match &self.role {
            RoleState::Leader(l) if l.announced => Some((l.ballot, l.reads.confirmed)),
            _ => None,
        }
    }

    /// The slot a lease read may be served at (the commit index), if this
    /// replica is the announced leader and holds a lease at `now`.
    pub(super) fn lease_read_index_inner(&self, now: Time) -> Option<Slot> {
        self.config.read_lease?;
        match &self.role {
            RoleState::Leader(l) if l.announced && l.reads.lease_until.is_some_and(|t| now < t) => {
                Some(self.commit_index)
            }
            _ => None,
        }
    }

    /// A voter acknowledged round `round` of this leader's ballot: confirm
    /// what a quorum acknowledged, extend the lease, and start the round
    /// waiting reads need.
    pub(super) fn on_read_round_ack(&mut self, now: Time, from: ReplicaId, round: u64) {
        let quorum = self.quorum();
        let me = self.id;
        let lease = self.config.read_lease;
        let RoleState::Leader(l) = &mut self.role else {
            return;
        };
        // A round this ballot never started is a bad or replayed message:
        // it proves nothing.
        if round > l.reads.sent {
            return;
        }
        let before = l.reads.confirmed;
        let acked = l.reads.acked.entry(from).or_insert(0);
        *acked = (*acked).max(round);
        let mut rounds: Vec<u64> = self
            .membership
            .voters
            .iter()
            .map(|v| {
                if *v == me {
                    l.reads.sent
                } else {
                    l.reads.acked.get(v).copied().unwrap_or(0)
                }
            })
            .collect();
        rounds.sort_unstable_by(|a, b| b.cmp(a));
        let confirmed = rounds.get(quorum.saturating_sub(1)).copied().unwrap_or(0);
        if confirmed <= before {
            return;
        }
        l.reads.confirmed = confirmed;
        let mut lease_from = None;
        while let Some(&(r, at)) = l.reads.started_at.front() {
            if r > confirmed {
                break;
            }
            lease_from = Some(at);
            l.reads.started_at.pop_front();
        }
        if let (Some(lease), Some(at)) = (lease, lease_from) {
            let until = at.plus_micros(lease.leader_local_us());
            l.reads.lease_until = Some(l.reads.lease_until.map_or(until, |u| u.max(until)));
        }
        let wanted = l.reads.wanted;
        ensures!(matches!(&self.role, RoleState::Leader(l) if l.reads.confirmed <= l.reads.sent));
        if wanted {
            self.broadcast_heartbeat(now);
        }
    }

    /// Whether this leader has waited out any lease an old one may hold
    /// (see the module docs; always true with leases off). Remembers it.
    pub(super) fn lease_waited(&mut self, now: Time) -> bool {
        let skip = planted!(self, lease_no_wait);
        match &mut self.role {
            RoleState::Leader(l) => {
                if !l.reads.waited && (now >= l.reads.announce_after || skip) {
                    l.reads.waited = true;
                }
                l.reads.waited
            }
            _ => false,
        }
    }

    /// Confirms this leader's round immediately when it is a quorum alone
    /// (a single voter).
    pub(super) fn confirm_own_round(&mut self, now: Time) {
        requires!(matches!(self.role, RoleState::Leader(_)));
        let me = self.id;
        let round = match &self.role {
            RoleState::Leader(l) => l.reads.sent,
            _ => return,
        };
        self.on_read_round_ack(now, me, round);
    }
}
