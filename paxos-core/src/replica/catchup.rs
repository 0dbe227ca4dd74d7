//! Catch-up: fetching chosen decrees a replica missed (`Fetch` /
//! `Decrees`), in chunks, from the leader or any peer that has them;
//! detecting that only a snapshot can help; and catching up across
//! membership views (from or for replicas whose messages this one does not
//! otherwise take, and a non-voter probing for news).
//!
//! Maintains, of the invariants in the module above:
//! - 5/6: only decrees a peer reports chosen (at or below its commit index),
//!   contiguous from this replica's commit index, are learned; chosen
//!   decrees are facts, served to and taken from anyone.
//! - 9 (bounds): one outstanding fetch, chunks bounded like promise chunks.

use super::{Replica, RoleState};
use crate::msg::{self, Message};
use crate::types::{PersistEntry, ReplicaId, Slot, Time};

/// Catch-up progress.
#[derive(Debug, Default)]
pub(super) struct FetchState {
    /// `(peer, from_slot, sent_at)` of the outstanding fetch.
    pub(super) outstanding: Option<(ReplicaId, Slot, Time)>,
    /// When to start a fetch (a short delay lets in-flight accepts land).
    pub(super) due: Option<Time>,
    /// Peers that answered that they cannot serve `commit_index + 1`: they
    /// compacted it or are behind themselves.
    pub(super) unable: Vec<ReplicaId>,
    /// Whether one of `unable` compacted it (rather than being behind).
    pub(super) any_compacted: bool,
    /// Round-robin cursor over peers.
    pub(super) cursor: usize,
}

impl Replica {
    /// Starts a catch-up fetch soon, if behind and none is running.
    pub(super) fn request_fetch(&mut self, now: Time) {
        if self.commit_index >= self.known_commit
            || self.fetch.outstanding.is_some()
            || self.fetch.due.is_some()
            || matches!(self.role, RoleState::Leader(_))
        {
            return;
        }
        // A short delay lets accepts still in flight arrive first.
        let delay = if self.known_commit.distance_since(self.commit_index)
            > self.config.pipeline_window as u64
        {
            0
        } else {
            self.config.heartbeat_interval_us / 2
        };
        self.fetch.due = Some(now.plus_micros(delay));
    }

    /// Sends a fetch for `commit_index + 1` to `preferred`, or to the next
    /// peer that may hold it.
    pub(super) fn start_fetch(&mut self, now: Time, preferred: Option<ReplicaId>) {
        self.fetch.outstanding = None;
        if self.commit_index >= self.known_commit || matches!(self.role, RoleState::Leader(_)) {
            return;
        }
        let others = self.peer_ids.clone();
        if others.is_empty() {
            return;
        }
        let usable = |r: &ReplicaId, me: &Replica| !me.fetch.unable.contains(r);
        let mut target = preferred.filter(|p| usable(p, self));
        if target.is_none() {
            let ahead_or_unknown = |l: &ReplicaId, me: &Replica| {
                me.peers
                    .get(l)
                    .is_none_or(|p| p.commit_index > me.commit_index)
            };
            target = self
                .leader
                .filter(|l| *l != self.id && usable(l, self) && ahead_or_unknown(l, self));
        }
        if target.is_none() {
            // Round-robin, preferring peers known to be ahead.
            for pass in 0..2 {
                for i in 0..others.len() {
                    let r = others[(self.fetch.cursor + i) % others.len()];
                    let ahead = self
                        .peers
                        .get(&r)
                        .is_some_and(|p| p.commit_index > self.commit_index);
                    if usable(&r, self) && (ahead || pass == 1) {
                        target = Some(r);
                        self.fetch.cursor = (self.fetch.cursor + i + 1) % others.len();
                        break;
                    }
                }
                if target.is_some() {
                    break;
                }
            }
        }
        match target {
            Some(peer) => {
                let from_slot = self.commit_index.next();
                self.fetch.outstanding = Some((peer, from_slot, now));
                self.send(peer, Message::Fetch(msg::Fetch { from_slot }));
            }
            None => {
                // No peer can serve the next slot. If one compacted it, only a
                // snapshot helps; ask everyone again later in case a peer
                // that was behind caught up meanwhile.
                if self.fetch.any_compacted {
                    self.needs_snapshot = true;
                }
                self.fetch.unable.clear();
                self.fetch.any_compacted = false;
                self.fetch.due = Some(now.plus_micros(self.config.election_timeout_max_us));
            }
        }
    }

    pub(super) fn on_fetch(&mut self, from: ReplicaId, m: msg::Fetch) {
        let msg::Fetch { from_slot } = m;
        let from_slot = from_slot.max(Slot::FIRST);
        let (decrees, _) = if from_slot < self.log_start {
            (Vec::new(), None)
        } else {
            self.chunk(from_slot, self.commit_index)
        };
        let msg = Message::Decrees(msg::Decrees {
            from_slot,
            commit_index: self.commit_index,
            log_start: self.log_start,
            decrees,
        });
        // Chosen decrees are facts; they need no durability of this replica.
        self.send(from, msg);
    }

    pub(super) fn on_decrees(&mut self, now: Time, from: ReplicaId, m: msg::Decrees) {
        let msg::Decrees {
            from_slot,
            commit_index: peer_commit,
            log_start: peer_log_start,
            decrees,
        } = m;
        self.note_peer(now, from, peer_commit, None);
        self.known_commit = self.known_commit.max(peer_commit);
        if self
            .fetch
            .outstanding
            .is_some_and(|(p, s, _)| p == from && s == from_slot)
        {
            self.fetch.outstanding = None;
        }
        if matches!(self.role, RoleState::Leader(_)) {
            return;
        }
        let before = self.commit_index;
        for d in decrees {
            if d.slot <= self.commit_index {
                continue;
            }
            if d.slot != self.commit_index.next() || d.slot > peer_commit {
                break;
            }
            self.learn_chosen(d.slot, d.ballot, d.value);
            self.commit_index = d.slot;
        }
        if self.commit_index > before {
            self.persist(PersistEntry::Commit(self.commit_index));
            self.adopt_chosen_configs(now);
            self.apply_committed();
            self.fetch.unable.clear();
            self.fetch.any_compacted = false;
            if self.truncated_through <= self.applied_index {
                self.needs_snapshot = false;
            }
        } else if from_slot == self.commit_index.next() && !self.fetch.unable.contains(&from) {
            if peer_log_start > from_slot {
                self.fetch.unable.push(from);
                self.fetch.any_compacted = true;
            } else if peer_commit < from_slot {
                self.fetch.unable.push(from);
            }
        }
        if self.commit_index < self.known_commit && self.fetch.outstanding.is_none() {
            if self.commit_index > before {
                // Progress: keep pulling from the same peer.
                self.start_fetch(now, Some(from));
            } else if self.fetch.due.is_none() {
                // No progress: try the next peer after a pause, so that
                // replicas that lack the decrees are not asked in a tight loop.
                self.fetch.due = Some(now.plus_micros(self.config.heartbeat_interval_us / 2));
            }
        }
    }

    /// A non-voter heard from no leader for an election timeout. It cannot
    /// campaign, and the voters may all believe it is someone else's job to
    /// tell it what happened (each replica learns a membership change at its
    /// own time). Ask the next replica it knows for the decrees after its
    /// commit index; an answer that carries a `Reconfigure` may make it a
    /// voter.
    pub(super) fn probe_for_progress(&mut self, now: Time) {
        self.reset_election_timer(now);
        if self.fetch.outstanding.is_some() || self.known_replicas.is_empty() {
            return;
        }
        let i = self.probe_cursor % self.known_replicas.len();
        self.probe_cursor = self.probe_cursor.wrapping_add(1);
        if let Some(peer) = self.known_replicas.iter().nth(i).copied() {
            let from_slot = self.commit_index.next();
            self.fetch.outstanding = Some((peer, from_slot, now));
            self.send(peer, Message::Fetch(msg::Fetch { from_slot }));
        }
    }

    /// A Prepare this replica does not answer (it does not vote, or the
    /// candidate does not vote in its view). One side is probably behind:
    /// a candidate asks from `from_slot`, so it has every slot below it
    /// chosen; help whichever side lacks decrees.
    pub(super) fn on_foreign_prepare(&mut self, now: Time, from: ReplicaId, from_slot: Slot) {
        if from_slot > self.commit_index.next() {
            // Perhaps the candidate votes in a membership this replica has
            // not learned yet: catch up from it, then answer its retry.
            self.on_foreign_progress(now, from, from_slot.prev());
        } else if from_slot >= Slot::FIRST && from_slot <= self.commit_index {
            // The candidate is behind (perhaps it was removed, or runs for a
            // membership already replaced): send it what it misses, so that
            // it learns the membership in force.
            self.on_fetch(from, msg::Fetch { from_slot });
        }
    }

    /// `from`, whose messages this replica does not otherwise take, has
    /// every slot through `peer_commit` chosen: fetch from it if behind.
    pub(super) fn on_foreign_progress(&mut self, now: Time, from: ReplicaId, peer_commit: Slot) {
        if peer_commit <= self.commit_index {
            return;
        }
        self.known_commit = self.known_commit.max(peer_commit);
        if self.fetch.outstanding.is_none() && !matches!(self.role, RoleState::Leader(_)) {
            self.fetch.due = None;
            self.start_fetch(now, Some(from));
        }
    }

    /// Retries a fetch that got no answer within two heartbeat intervals.
    pub(super) fn retry_unanswered_fetch(&mut self, now: Time) {
        if let Some((peer, _, sent_at)) = self.fetch.outstanding {
            if now.micros_since(sent_at) >= 2 * self.config.heartbeat_interval_us {
                // Unanswered: try another peer (the silent one becomes
                // eligible again once every peer was tried).
                self.fetch.outstanding = None;
                if !self.fetch.unable.contains(&peer) {
                    self.fetch.unable.push(peer);
                }
                self.start_fetch(now, None);
            }
        }
    }
}
