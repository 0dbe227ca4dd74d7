//! Acceptor: answers `Prepare` with a (durable) `Promise`, votes on `Accept`
//! with a (durable) `Accepted`, and admits a leader's `Heartbeat`.
//!
//! Maintains, of the invariants in the module above:
//! - 1 (promise monotonicity): `raise_promise` is the only place the
//!   promise rises, and asserts that it does; lower ballots get `Reject`.
//! - 2 (one value per slot and ballot): `accept_entry` asserts it.
//! - 3 (durability before acknowledgement): `Promise` and `Accepted` leave
//!   through `send_durable`.
//! - 5 (chosen entries): a vote never replaces one with a higher ballot, and
//!   a committed slot's value never changes (asserted).
//! - 8 (compacted slots): the "virtual vote" of `accept_entry`.
//! - 9 (bounds), the acceptor's part: the accept horizon and the size of
//!   promise (and catch-up) chunks.

use super::{Replica, RoleState};
use crate::codec::accepted_len_hint;
use crate::msg::{self, Message};
use crate::types::{Accepted, Ballot, PersistEntry, ReplicaId, Slot, Time, Value};
use paxos_contracts::{ensures, invariant, requires};

/// Room left in a message for its own fields besides the entries it carries.
const MESSAGE_HEADER_ROOM: usize = 1024;

impl Replica {
    /// Promises a higher ballot (durably) and steps down from any role held
    /// under a lower one.
    pub(super) fn raise_promise(&mut self, now: Time, ballot: Ballot) {
        assert!(
            ballot > self.promised,
            "promise must only rise: {} -> {}",
            self.promised,
            ballot
        );
        self.promised = ballot;
        self.observe(ballot);
        self.persist(PersistEntry::Promise(ballot));
        if ballot.leader != self.id {
            // Another replica leads now: an operator's change in progress
            // here is abandoned (the caller sees it never completed).
            self.pending_target = None;
        }
        let demoted = match &self.role {
            RoleState::Candidate(c) => c.ballot < ballot,
            RoleState::Leader(l) => l.ballot < ballot,
            RoleState::Follower => false,
        };
        if demoted {
            self.step_down(now);
        }
    }

    pub(super) fn on_prepare(&mut self, now: Time, from: ReplicaId, m: msg::Prepare) {
        let msg::Prepare { ballot, from_slot } = m;
        self.observe(ballot);
        if ballot < self.promised {
            self.send(
                from,
                Message::Reject(msg::Reject {
                    promised: self.promised,
                }),
            );
            return;
        }
        if !self.is_voter(self.id) || !self.is_voter(from) {
            // Only a Prepare to itself gets here unrouted: one released
            // after the membership changed under its candidacy. Stale.
            return;
        }
        if ballot > self.promised {
            self.raise_promise(now, ballot);
            if from != self.id {
                self.leader = None;
            }
        }
        if from != self.id {
            // A live candidate: deny others' pre-votes while it runs.
            self.last_contact = Some((from, now));
            self.pre_vote = None;
            // Give the candidate time to finish phase 1 (also while it pulls
            // further chunks from others: it re-queries every voter each
            // heartbeat, see `resend_prepares`), rather than competing with it.
            self.reset_election_timer(now);
        }
        let from_slot = from_slot.max(Slot::FIRST);
        let (entries, next_from) = if from_slot < self.log_start {
            (Vec::new(), None)
        } else {
            self.chunk(from_slot, Slot::MAX, self.message_room())
        };
        let msg = Message::Promise(msg::Promise {
            ballot,
            from_slot,
            commit_index: self.commit_index,
            log_start: self.log_start,
            entries,
            next_from,
        });
        self.send_durable(from, msg);
        ensures!(self.promised == ballot);
    }

    /// Most bytes of entries in one message: `max_message_bytes` less room
    /// for the message's own fields.
    pub(super) fn message_room(&self) -> usize {
        self.config
            .max_message_bytes
            .saturating_sub(MESSAGE_HEADER_ROOM)
    }

    /// Most bytes of decrees in one catch-up reply (see
    /// `Config::catchup_chunk_bytes`).
    pub(super) fn catchup_room(&self) -> usize {
        self.config.catchup_chunk_bytes.min(self.message_room())
    }

    /// Entries from `from_slot` through `through`, cut at
    /// `catchup_chunk_decrees` entries and `max_bytes` bytes of them, with
    /// at least one entry (if any is in range) and the slot to go on from.
    pub(super) fn chunk(
        &self,
        from_slot: Slot,
        through: Slot,
        max_bytes: usize,
    ) -> (Vec<Accepted>, Option<Slot>) {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        if from_slot > through {
            return (out, None);
        }
        for (slot, entry) in self.log.range(from_slot..=through) {
            let size = accepted_len_hint(entry);
            if !out.is_empty()
                && (out.len() >= self.config.catchup_chunk_decrees || bytes + size > max_bytes)
            {
                return (out, Some(*slot));
            }
            bytes += size;
            out.push(entry.clone());
        }
        (out, None)
    }

    pub(super) fn on_accept(&mut self, now: Time, from: ReplicaId, m: msg::Accept) {
        let msg::Accept {
            ballot,
            slot,
            value,
            commit_index: leader_commit,
        } = m;
        if !self.admit_leader_message(now, from, ballot) {
            return;
        }
        let accepted = self.accept_entry(slot, ballot, value);
        self.learn_commit(now, ballot, leader_commit);
        if accepted {
            let msg = Message::Accepted(msg::Accepted {
                ballot,
                slot,
                commit_index: self.commit_index,
            });
            self.send_durable(from, msg);
        }
    }

    /// Records a vote for `(slot, ballot, value)` if the acceptor may cast
    /// it; returns whether it holds that vote now.
    pub(super) fn accept_entry(&mut self, slot: Slot, ballot: Ballot, value: Value) -> bool {
        requires!(ballot == self.promised);
        if slot == Slot::ZERO {
            return false;
        }
        if slot < self.log_start {
            // The slot is chosen and its entry compacted. Acknowledge without
            // recording (a "virtual vote"), so that a recovering leader that
            // re-proposes it is not stuck. Safe: the slot's first chosen
            // quorum Q voted for real; a proposal in a ballot above Q's
            // carries the chosen value anyway, and one in a lower ballot
            // cannot gather a quorum, because every quorum meets Q, whose
            // members promised Q's ballot and reject it (the `< promised`
            // check runs before this one).
            return true;
        }
        if slot
            > self
                .commit_index
                .saturating_add(self.config.max_accept_ahead as u64)
        {
            // Too far ahead: catch up first (bounds uncommitted entries).
            return false;
        }
        match self.log.get(&slot) {
            Some(existing) if existing.ballot == ballot => {
                assert!(
                    existing.value == value,
                    "acceptor asked to accept two values at slot {slot} in ballot {ballot}"
                );
                true
            }
            // A chosen entry injected under a higher ballot: never go down.
            Some(existing) if existing.ballot > ballot => false,
            existing => {
                if let Some(e) = existing {
                    assert!(
                        slot > self.commit_index || e.value == value,
                        "committed slot {slot} would change value in ballot {ballot}"
                    );
                }
                let entry = Accepted {
                    slot,
                    ballot,
                    value,
                };
                self.log.insert(entry.clone());
                self.persist(PersistEntry::Accept(entry));
                true
            }
        }
    }

    /// Common start of a message from the leader of `ballot` (Accept,
    /// Heartbeat): a ballot below the promise is rejected and the message
    /// dropped (`false`); a higher one is promised durably; the sender is
    /// followed as leader.
    pub(super) fn admit_leader_message(
        &mut self,
        now: Time,
        from: ReplicaId,
        ballot: Ballot,
    ) -> bool {
        self.observe(ballot);
        if ballot < self.promised {
            self.send(
                from,
                Message::Reject(msg::Reject {
                    promised: self.promised,
                }),
            );
            return false;
        }
        if ballot > self.promised {
            self.raise_promise(now, ballot);
        }
        self.follow(now, from, ballot);
        ensures!(self.promised == ballot);
        true
    }

    pub(super) fn on_heartbeat(&mut self, now: Time, from: ReplicaId, m: msg::Heartbeat) {
        let msg::Heartbeat {
            ballot,
            commit_index: leader_commit,
            read_round,
        } = m;
        if !self.admit_leader_message(now, from, ballot) {
            return;
        }
        self.note_peer(now, from, leader_commit, None);
        self.learn_commit(now, ballot, leader_commit);
        // The codec refuses an ack that claims more applied than committed.
        invariant!(
            self.applied_index <= self.commit_index,
            "a replica applies only what it knows chosen"
        );
        let msg = Message::HeartbeatAck(msg::HeartbeatAck {
            ballot,
            commit_index: self.commit_index,
            applied_index: self.applied_index,
            can_become_primary: self.can_become_primary
                && self.is_voter(self.id)
                && !self.repairing(),
            read_round,
        });
        self.send(from, msg);
    }
}
