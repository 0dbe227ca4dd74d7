//! Proposer (leader): proposing values in the pipeline window, re-proposing
//! the window recovered by phase 1, counting votes into the commit index,
//! heartbeats, retransmission, and stepping down when the quorum is lost.
//!
//! Maintains, of the invariants in the module above:
//! - 2 (one value per slot and ballot): each slot is proposed once per
//!   ballot, in order (asserted in `propose_at`).
//! - 3 (durability before acknowledgement): the leader's own vote counts only
//!   once its persist completed (it is a self-addressed durable `Accepted`).
//! - 4: the leader is announced only when the recovered window is chosen.
//! - 6 (learning): the commit index advances over the contiguous prefix of
//!   slots with a quorum of `Accepted` in this ballot.
//! - 9 (bounds): at most `pipeline_window` slots in flight.
//! - 10 (reconfiguration): nothing is proposed above an unchosen
//!   `Reconfigure` (asserted in `propose_at`).

use super::reconfig::check_membership;
use super::{ProposeError, Replica, RoleState};
use crate::msg::{self, Message};
use crate::types::{Accepted, Ballot, PersistEntry, ReplicaId, Slot, Time, Value};
use std::collections::BTreeMap;

/// A slot this leader proposed and whose commit it has not yet passed.
#[derive(Debug)]
pub(super) struct InFlight {
    pub(super) value: Value,
    /// Voters (bit = index in `membership.voters`) whose durable `Accepted`
    /// arrived (this replica included, once its own persist completed).
    pub(super) acks: u128,
    pub(super) chosen: bool,
    pub(super) sent_at: Time,
}

#[derive(Debug)]
pub(super) struct LeaderState {
    pub(super) ballot: Ballot,
    /// Recovered slots still to re-propose: `recover_next ..= recover_through`.
    pub(super) recover_next: Slot,
    pub(super) recover_through: Slot,
    /// Values found in phase 1 for the recovered slots.
    pub(super) recovered: BTreeMap<Slot, Accepted>,
    /// The next slot to propose.
    pub(super) next_slot: Slot,
    /// Every slot in `commit_index + 1 .. next_slot`.
    pub(super) in_flight: BTreeMap<Slot, InFlight>,
    /// Whether the recovered window is chosen and `Leader` was reported.
    pub(super) announced: bool,
    /// The slot of a `Reconfigure` this leader proposed (or re-proposed) and
    /// whose commit it has not yet passed. Nothing above it is proposed
    /// until it is chosen: the decree decides the membership of every
    /// later slot.
    pub(super) reconfig_slot: Option<Slot>,
    /// When each voter last acknowledged this ballot.
    pub(super) last_ack: BTreeMap<ReplicaId, Time>,
    /// The voters whose quorum granted this ballot's phase 1: a leader
    /// leads only while they are the voters in force.
    pub(super) phase1_voters: Vec<ReplicaId>,
    pub(super) elected_at: Time,
    /// Heartbeat rounds confirming reads, and the lease (`reads`).
    pub(super) reads: super::reads::ReadRounds,
}

impl Replica {
    pub(super) fn propose_inner(&mut self, now: Time, value: Value) -> Result<Slot, ProposeError> {
        let window = self.config.pipeline_window as u64;
        let max_bytes = self.config.batch_limits.max_bytes;
        let commit = self.commit_index;
        let leader = self.leader;
        let RoleState::Leader(l) = &self.role else {
            return Err(ProposeError::NotLeader { leader });
        };
        if !l.announced {
            return Err(ProposeError::NotLeader { leader: None });
        }
        if l.reconfig_slot.is_some() && !planted!(self, propose_above_unchosen_reconfigure) {
            return Err(ProposeError::ConfigChangeInFlight);
        }
        if let Value::Reconfigure(r) = &value {
            check_membership(&r.membership)?;
            if !r.applies_to(self.membership_slot) {
                return Err(ProposeError::BadMembership {
                    why: "based on a membership that is no longer in force",
                });
            }
        }
        let len = value.payload_len();
        if len > max_bytes {
            return Err(ProposeError::TooLarge {
                len,
                max: max_bytes,
            });
        }
        if l.next_slot.prev().distance_since(commit) >= window {
            return Err(ProposeError::WindowFull);
        }
        let slot = l.next_slot;
        self.propose_at(now, slot, value);
        Ok(slot)
    }

    /// Proposes `value` at `slot` (the leader's next slot) in its ballot.
    pub(super) fn propose_at(&mut self, now: Time, slot: Slot, value: Value) {
        let commit_index = self.commit_index;
        let RoleState::Leader(l) = &mut self.role else {
            return;
        };
        assert_eq!(
            slot, l.next_slot,
            "a leader proposes slots in order, each once per ballot"
        );
        assert!(
            l.reconfig_slot.is_none() || planted!(self, propose_above_unchosen_reconfigure),
            "nothing is proposed above an unchosen Reconfigure"
        );
        let ballot = l.ballot;
        l.next_slot = slot.next();
        if matches!(value, Value::Reconfigure(_)) {
            l.reconfig_slot = Some(slot);
        }
        l.in_flight.insert(
            slot,
            InFlight {
                value: value.clone(),
                acks: 0,
                chosen: false,
                sent_at: now,
            },
        );
        // Our own vote: recorded now, counted when its persist completes.
        if self.accept_entry(slot, ballot, value.clone()) {
            self.send_durable(
                self.id,
                Message::Accepted(msg::Accepted {
                    ballot,
                    slot,
                    commit_index,
                }),
            );
        }
        for i in 0..self.peer_ids.len() {
            let p = self.peer_ids[i];
            self.send(
                p,
                Message::Accept(msg::Accept {
                    ballot,
                    slot,
                    value: value.clone(),
                    commit_index,
                }),
            );
        }
    }

    /// Re-proposes recovered slots while the window has room. With leases
    /// on, a new leader proposes nothing, not even the recovered window,
    /// until any lease an old leader may hold ran out (see `reads`).
    pub(super) fn drain_recovery(&mut self, now: Time) {
        if !self.lease_waited(now) {
            return;
        }
        let window = self.config.pipeline_window as u64;
        loop {
            let commit = self.commit_index;
            let RoleState::Leader(l) = &mut self.role else {
                return;
            };
            if l.recover_next > l.recover_through
                || l.next_slot.prev().distance_since(commit) >= window
                || l.reconfig_slot.is_some()
            {
                return;
            }
            let slot = l.recover_next;
            l.recover_next = l.recover_next.next();
            let value = l.recovered.remove(&slot).map_or(Value::Noop, |e| e.value);
            self.propose_at(now, slot, value);
        }
    }

    pub(super) fn maybe_announce(&mut self, now: Time) {
        let commit = self.commit_index;
        if let RoleState::Leader(l) = &mut self.role {
            if l.reconfig_slot.is_some_and(|s| s <= commit) {
                l.reconfig_slot = None;
            }
        }
        self.announce_if_recovered(now);
    }

    /// Announces the leader once its recovered window is chosen (invariant
    /// 4) and, with leases on, once any lease an old leader may hold ran
    /// out (see `reads`).
    pub(super) fn announce_if_recovered(&mut self, now: Time) {
        let commit = self.commit_index;
        let waited = self.lease_waited(now);
        if let RoleState::Leader(l) = &mut self.role {
            if !l.announced
                && waited
                && l.recover_next > l.recover_through
                && commit >= l.recover_through
            {
                l.announced = true;
            }
        }
    }

    pub(super) fn on_accepted(&mut self, now: Time, from: ReplicaId, m: msg::Accepted) {
        let msg::Accepted {
            ballot,
            slot,
            commit_index: peer_commit,
        } = m;
        self.observe(ballot);
        if from != self.id {
            self.note_peer(now, from, peer_commit, None);
        }
        let quorum = self.quorum();
        let Ok(voter_index) = self.membership.voters.binary_search(&from) else {
            return;
        };
        let RoleState::Leader(l) = &mut self.role else {
            return;
        };
        if l.ballot != ballot {
            return;
        }
        l.last_ack.insert(from, now);
        if let Some(f) = l.in_flight.get_mut(&slot) {
            f.acks |= 1u128 << voter_index;
            if f.acks.count_ones() as usize >= quorum {
                f.chosen = true;
            }
        }
        self.advance_leader_commit(now);
    }

    pub(super) fn advance_leader_commit(&mut self, now: Time) {
        let before = self.commit_index;
        loop {
            let RoleState::Leader(l) = &mut self.role else {
                return;
            };
            let ballot = l.ballot;
            let Some(first) = l.in_flight.first_entry() else {
                break;
            };
            if !first.get().chosen {
                break;
            }
            let slot = *first.key();
            let f = first.remove();
            assert_eq!(
                slot,
                self.commit_index.next(),
                "in-flight slots are contiguous above the commit index"
            );
            self.learn_chosen(slot, ballot, f.value);
            self.commit_index = slot;
        }
        if self.commit_index > before {
            self.known_commit = self.known_commit.max(self.commit_index);
            self.persist(PersistEntry::Commit(self.commit_index));
            // May re-elect (voters changed) or hand over (removed).
            self.adopt_chosen_configs(now);
            self.apply_committed();
            self.maybe_announce(now);
            self.drain_recovery(now);
            self.maybe_announce(now);
            self.advance_pending_target(now);
        }
    }

    pub(super) fn on_heartbeat_ack(&mut self, now: Time, from: ReplicaId, m: msg::HeartbeatAck) {
        let msg::HeartbeatAck {
            ballot,
            commit_index: peer_commit,
            applied_index: peer_applied,
            can_become_primary: can,
            read_round,
        } = m;
        self.observe(ballot);
        self.note_peer(now, from, peer_commit, Some(can));
        self.note_peer_applied(from, peer_applied);
        let voter = self.is_voter(from);
        let mut ours = false;
        if let RoleState::Leader(l) = &mut self.role {
            if l.ballot == ballot && voter {
                l.last_ack.insert(from, now);
                ours = true;
            }
        }
        if ours {
            self.on_read_round_ack(now, from, read_round);
        }
    }

    /// Starts a new heartbeat round (see `reads`) and sends it to every
    /// peer.
    pub(super) fn broadcast_heartbeat(&mut self, now: Time) {
        let RoleState::Leader(l) = &mut self.role else {
            return;
        };
        let read_round = l.reads.start(now);
        let msg = Message::Heartbeat(msg::Heartbeat {
            ballot: l.ballot,
            commit_index: self.commit_index,
            read_round,
        });
        for i in 0..self.peer_ids.len() {
            let p = self.peer_ids[i];
            self.send(p, msg.clone());
        }
        self.confirm_own_round(now);
    }

    /// The current round, for heartbeats sent outside a broadcast (hand-over,
    /// reconfiguration): they start no round, and an acknowledgement of
    /// them proves what one of the round does.
    pub(super) fn current_read_round(&self) -> u64 {
        match &self.role {
            RoleState::Leader(l) => l.reads.sent,
            _ => 0,
        }
    }

    pub(super) fn leader_periodic(&mut self, now: Time) {
        self.broadcast_heartbeat(now);
        // A new leader with leases on may have waited out the old lease:
        // it re-proposes the recovered window, then announces itself.
        self.drain_recovery(now);
        self.maybe_announce(now);
        let quorum = self.quorum();
        let hb = self.config.heartbeat_interval_us;
        let lease = self.config.election_timeout_max_us;
        let commit_index = self.commit_index;
        let me = self.id;
        let voters = self.membership.voters.clone();
        let RoleState::Leader(l) = &mut self.role else {
            return;
        };
        // Retransmit accepts that some voter has not acknowledged.
        let ballot = l.ballot;
        let mut resend = Vec::new();
        for (slot, f) in l.in_flight.iter_mut() {
            if f.chosen || now.micros_since(f.sent_at) < hb {
                continue;
            }
            f.sent_at = now;
            for (i, v) in voters.iter().enumerate() {
                if *v != me && f.acks & (1u128 << i) == 0 {
                    resend.push((
                        *v,
                        Message::Accept(msg::Accept {
                            ballot,
                            slot: *slot,
                            value: f.value.clone(),
                            commit_index,
                        }),
                    ));
                }
            }
        }
        // Step down if a quorum has not been heard from for a whole
        // election timeout: proposals could not commit anyway, and clients
        // should look for the new leader.
        let heard = voters
            .iter()
            .filter(|v| {
                **v == me
                    || l.last_ack
                        .get(v)
                        .is_some_and(|t| now.micros_since(*t) < lease)
            })
            .count();
        let lost_quorum = now.micros_since(l.elected_at) >= lease && heard < quorum;
        for (to, msg) in resend {
            self.send(to, msg);
        }
        if lost_quorum {
            self.step_down(now);
        } else {
            self.advance_pending_target(now);
        }
    }
}
