//! Catch-up: fetching chosen decrees a replica missed (`Fetch` /
//! `Decrees`), in chunks, from the leader or any peer that has them;
//! detecting that only a snapshot can help; and catching up across
//! membership views (from or for replicas whose messages this one does not
//! otherwise take, and a non-voter probing for news).
//!
//! Serving a fetch: slots still in memory (`log_start` on) are answered at
//! once. Slots below `log_start` that storage still holds (above
//! `truncated_through`: the memory bound let go of them, no checkpoint
//! truncated them yet) are read back from storage: the replica emits
//! `Action::ReadDecrees` for one bounded chunk and answers the peer when the
//! driver hands the decrees back (`on_decrees_read`), after checking them.
//! Only slots at or below `truncated_through` are answered "compacted",
//! which sends the peer to a checkpoint.
//!
//! Maintains, of the invariants in the module above:
//! - 5/6: only decrees a peer reports chosen (at or below its commit index),
//!   contiguous from this replica's commit index, are learned; chosen
//!   decrees are facts, served to and taken from anyone. Decrees read back
//!   from storage are served only if contiguous from the slot asked, within
//!   the slots asked and at or below the commit index (every entry storage
//!   holds at a committed slot is its chosen value: the last vote written
//!   for a slot is its highest, and invariant 5).
//! - 9 (bounds): one outstanding fetch, chunks bounded like promise chunks
//!   and also by `catchup_chunk_bytes` (the peer applies a reply in one
//!   go); at most one storage read outstanding per peer, each one chunk.

use super::{Action, Replica, RoleState};
use crate::codec::accepted_len_hint;
use crate::msg::{self, Message};
use crate::types::{Accepted, PersistEntry, ReplicaId, Slot, Time};

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
    /// Serving side: storage reads outstanding for peers' fetches (at most
    /// one per peer).
    pub(super) storage_reads: Vec<StorageRead>,
    /// Serving side: chunks served from storage since start.
    pub(super) served_from_storage: u64,
}

/// One outstanding `Action::ReadDecrees`.
#[derive(Clone, Copy, Debug)]
pub(super) struct StorageRead {
    pub(super) peer: ReplicaId,
    pub(super) from: Slot,
    pub(super) through: Slot,
    pub(super) max_decrees: usize,
    pub(super) max_bytes: usize,
    pub(super) asked_at: Time,
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

    pub(super) fn on_fetch(&mut self, now: Time, from: ReplicaId, m: msg::Fetch) {
        let msg::Fetch { from_slot } = m;
        let from_slot = from_slot.max(Slot::FIRST);
        if from_slot < self.log_start
            && from_slot > self.truncated_through
            && from_slot <= self.commit_index
        {
            // Dropped from memory but still in storage: read it back.
            self.read_from_storage(now, from, from_slot);
            return;
        }
        let (decrees, _) = if from_slot < self.log_start {
            (Vec::new(), None)
        } else {
            self.chunk(from_slot, self.commit_index, self.catchup_room())
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

    /// Asks the driver for one chunk of the decrees from `from_slot` on
    /// (all below `log_start`), for `peer`; unless a read for `peer` is
    /// already outstanding (its answer serves the peer's retry), and not
    /// abandoned: one older than an election timeout is taken as lost.
    fn read_from_storage(&mut self, now: Time, peer: ReplicaId, from_slot: Slot) {
        let stale_after = self.config.election_timeout_max_us;
        if let Some(i) = self.fetch.storage_reads.iter().position(|r| r.peer == peer) {
            if now.micros_since(self.fetch.storage_reads[i].asked_at) < stale_after {
                return;
            }
            self.fetch.storage_reads.swap_remove(i);
        } else if self.fetch.storage_reads.len() >= super::MAX_KNOWN_REPLICAS {
            return; // a bound on reads in flight; the peer retries
        }
        let read = StorageRead {
            peer,
            from: from_slot,
            through: self.log_start.prev().min(self.commit_index),
            max_decrees: self.config.catchup_chunk_decrees,
            max_bytes: self.catchup_room(),
            asked_at: now,
        };
        self.fetch.storage_reads.push(read);
        self.actions.push_back(Action::ReadDecrees {
            peer,
            from: read.from,
            through: read.through,
            max_decrees: read.max_decrees,
            max_bytes: read.max_bytes,
        });
    }

    /// See [`Replica::on_decrees_read`].
    pub(super) fn on_decrees_read_inner(
        &mut self,
        peer: ReplicaId,
        from: Slot,
        decrees: Option<Vec<Accepted>>,
    ) {
        let Some(i) = self
            .fetch
            .storage_reads
            .iter()
            .position(|r| r.peer == peer && r.from == from)
        else {
            return; // answers no outstanding read (replaced, or never asked)
        };
        let read = self.fetch.storage_reads.swap_remove(i);
        let served = decrees.and_then(|d| self.checked_storage_chunk(&read, d));
        let msg = match served {
            Some(mut decrees) => {
                if planted!(self, disk_chunk_off_by_one) {
                    // A read that started one slot late: each decree carries
                    // the value of the slot after it.
                    for i in 1..decrees.len() {
                        decrees[i - 1].value = decrees[i].value.clone();
                    }
                    decrees.pop();
                }
                self.fetch.served_from_storage += 1;
                msg::Decrees {
                    from_slot: from,
                    commit_index: self.commit_index,
                    // The lowest slot this replica can still serve.
                    log_start: self.truncated_through.next(),
                    decrees,
                }
            }
            // Storage could not serve them (truncated meanwhile, damaged,
            // or a backend that cannot read back): as if compacted.
            None => msg::Decrees {
                from_slot: from,
                commit_index: self.commit_index,
                log_start: self.log_start.max(from.next()),
                decrees: Vec::new(),
            },
        };
        self.send(peer, Message::Decrees(msg));
    }

    /// The chunk storage read for `read`, cut to its byte bound, if it is
    /// what was asked for: non-empty, contiguous from `read.from`, within
    /// `read.through` (so at or below the commit index) and `max_decrees`.
    fn checked_storage_chunk(
        &self,
        read: &StorageRead,
        mut decrees: Vec<Accepted>,
    ) -> Option<Vec<Accepted>> {
        let contiguous = decrees
            .iter()
            .enumerate()
            .all(|(i, d)| d.slot == read.from.saturating_add(i as u64));
        let last = decrees.last()?.slot;
        if !contiguous || last > read.through || decrees.len() > read.max_decrees {
            return None;
        }
        assert!(last <= self.commit_index, "asked only for chosen slots");
        let mut bytes = 0usize;
        let keep = decrees
            .iter()
            .take_while(|d| {
                bytes += accepted_len_hint(d);
                d.slot == read.from || bytes <= read.max_bytes
            })
            .count();
        decrees.truncate(keep);
        Some(decrees)
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
            self.on_fetch(now, from, msg::Fetch { from_slot });
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
