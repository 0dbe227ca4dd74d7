//! [`RecordIndex`]: where the records between the log's head and tail are,
//! and the highest slot each accepted, so that a truncation finds the dead
//! prefix of the log without reading it; and [`truncation_facts`], the
//! small entries a record must carry before the head may move past the
//! records that came before it.
//!
//! See the storage module docs ("Truncation advances the head") for why
//! replaying from the new head rebuilds the same state.

use std::collections::VecDeque;

use paxos_core::{DurableState, PersistEntry, Slot};

/// The index keeps at most about this many runs: a record joins the last
/// run while that run spans fewer than `capacity / INDEX_RUNS` bytes, so
/// every run but the last spans at least that many and the runs of a full
/// log number at most `INDEX_RUNS + 1` (64 KiB of memory), whatever the
/// record sizes. The price is precision: the head stops at the start of a
/// run, keeping up to `capacity / INDEX_RUNS` dead bytes (192 KiB of a
/// 768 MiB region) longer than needed.
pub const INDEX_RUNS: u64 = 4096;

/// A run of consecutive records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RecordRun {
    /// Log position of the run's first record.
    pos: u64,
    /// No record in the run holds an accepted entry above this slot
    /// (`Slot::ZERO`: none holds any).
    max_slot: Slot,
}

/// The records from the head to the tentative tail, in runs, each with the
/// highest slot its records accepted. O(1) per append, O(runs dropped) per
/// truncation.
#[derive(Debug)]
pub struct RecordIndex {
    runs: VecDeque<RecordRun>,
    /// A record joins the last run while that run spans fewer bytes.
    granule: u64,
}

impl RecordIndex {
    /// An empty index for a log of `capacity` bytes.
    pub fn new(capacity: u64) -> RecordIndex {
        RecordIndex {
            runs: VecDeque::new(),
            granule: (capacity / INDEX_RUNS).max(1),
        }
    }

    /// Notes a record appended at `pos` (past every record noted so far)
    /// whose accepted entries are all at or below `max_slot`.
    pub fn push(&mut self, pos: u64, max_slot: Slot) {
        match self.runs.back_mut() {
            Some(last) if pos.saturating_sub(last.pos) < self.granule => {
                assert!(pos >= last.pos, "records are noted in log order");
                last.max_slot = last.max_slot.max(max_slot);
            }
            _ => self.runs.push_back(RecordRun { pos, max_slot }),
        }
    }

    /// Forgets every record: the log now starts with the one at `pos`
    /// (a snapshot whose accepted slots are at or below `max_slot`).
    pub fn reset(&mut self, pos: u64, max_slot: Slot) {
        self.runs.clear();
        self.runs.push_back(RecordRun { pos, max_slot });
    }

    /// Forgets the leading runs whose accepted entries are all at or
    /// below `truncated_through` and returns where the first run left
    /// starts: how far the head may advance once the log is truncated
    /// through it. `None` if every run is dead (the head may pass them
    /// all). O(runs dropped).
    pub fn drop_dead_prefix(&mut self, truncated_through: Slot) -> Option<u64> {
        while self
            .runs
            .front()
            .is_some_and(|r| r.max_slot <= truncated_through)
        {
            self.runs.pop_front();
        }
        self.runs.front().map(|r| r.pos)
    }

    /// Forgets the records before `head` (the head moved there; `head` is
    /// a record boundary at or before the tail). A run that starts before
    /// it now starts at it: its highest slot still bounds what it holds.
    pub fn trim_front(&mut self, head: u64) {
        while self.runs.get(1).is_some_and(|next| next.pos <= head) {
            self.runs.pop_front();
        }
        if let Some(first) = self.runs.front_mut() {
            first.pos = first.pos.max(head);
        }
    }

    /// Position of the first record noted (the head, when the index is
    /// in step with the log).
    pub fn first_pos(&self) -> Option<u64> {
        self.runs.front().map(|r| r.pos)
    }

    /// Number of runs (bounded by about [`INDEX_RUNS`]).
    pub fn runs(&self) -> usize {
        self.runs.len()
    }
}

/// The highest slot `entries` accept (`Slot::ZERO` if none).
pub fn max_accepted_slot(entries: &[PersistEntry]) -> Slot {
    entries
        .iter()
        .filter_map(|e| match e {
            PersistEntry::Accept(a) => Some(a.slot),
            _ => None,
        })
        .max()
        .unwrap_or(Slot::ZERO)
}

/// The highest slot `state` holds accepted (`Slot::ZERO` if none): what a
/// snapshot record of it holds.
pub fn max_snapshot_slot(state: &DurableState) -> Slot {
    state
        .accepted
        .last_key_value()
        .map_or(Slot::ZERO, |(slot, _)| *slot)
}

/// If `entries` raise the truncation point of `state`, the facts the
/// state has after them apart from its accepted values: its promise,
/// commit index and truncation point, as entries. Appended to the same
/// record, they let the head move past every record before it whose
/// accepted entries are truncated (their promise, commit and truncation
/// entries are all at or below these). Applying them after `entries`
/// changes nothing (each only moves its point forward to where `entries`
/// already moved it).
pub fn truncation_facts(
    state: &DurableState,
    entries: &[PersistEntry],
) -> Option<[PersistEntry; 3]> {
    let mut promised = state.promised;
    let mut commit_index = state.commit_index;
    let mut truncated_through = state.truncated_through;
    for entry in entries {
        match entry {
            PersistEntry::Promise(b) => promised = promised.max(*b),
            PersistEntry::Commit(s) => commit_index = commit_index.max(*s),
            PersistEntry::Truncate(s) => truncated_through = truncated_through.max(*s),
            PersistEntry::Accept(_) => {}
        }
    }
    (truncated_through > state.truncated_through).then_some([
        PersistEntry::Promise(promised),
        PersistEntry::Commit(commit_index),
        PersistEntry::Truncate(truncated_through),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use paxos_core::{Accepted, Ballot, ReplicaId, Value};

    fn accept(slot: u64) -> PersistEntry {
        PersistEntry::Accept(Accepted {
            slot: Slot(slot),
            ballot: Ballot::new(1, ReplicaId(1)),
            value: Value::Noop,
        })
    }

    #[test]
    fn the_dead_prefix_ends_at_the_first_run_holding_a_live_slot() {
        let mut index = RecordIndex::new(INDEX_RUNS); // granule 1: a run per record
        for (pos, slot) in [(0, 1), (10, 2), (20, 9), (30, 3), (40, 0)] {
            index.push(pos, Slot(slot));
        }
        assert_eq!(index.runs(), 5);
        assert_eq!(index.drop_dead_prefix(Slot(0)), Some(0));
        assert_eq!(index.drop_dead_prefix(Slot(2)), Some(20));
        // Slot 9 pins the head although the records after it are dead.
        assert_eq!(index.drop_dead_prefix(Slot(8)), Some(20));
        assert_eq!(index.runs(), 3);
        assert_eq!(index.drop_dead_prefix(Slot(9)), None, "all dead");
        assert_eq!(index.runs(), 0);
        index.push(50, Slot(11));
        assert_eq!(index.first_pos(), Some(50));
        index.push(60, Slot(12));
        index.push(70, Slot(13));
        index.trim_front(65);
        assert_eq!(
            index.first_pos(),
            Some(65),
            "the run at 60 now starts at 65"
        );
        assert_eq!(index.runs(), 2);
        index.trim_front(70);
        assert_eq!((index.first_pos(), index.runs()), (Some(70), 1));
        index.reset(60, Slot(7));
        assert_eq!(index.first_pos(), Some(60));
        assert_eq!(index.drop_dead_prefix(Slot(6)), Some(60));
    }

    #[test]
    fn small_records_share_a_run_and_keep_its_highest_slot() {
        let mut index = RecordIndex::new(INDEX_RUNS * 100); // granule 100
        for (pos, slot) in [(0, 5), (40, 1), (99, 2), (100, 3), (150, 0), (230, 6)] {
            index.push(pos, Slot(slot));
        }
        assert_eq!(index.runs(), 3, "runs start at 0, 100 and 230");
        assert_eq!(index.drop_dead_prefix(Slot(4)), Some(0), "slot 5 at 0 pins");
        assert_eq!(index.drop_dead_prefix(Slot(5)), Some(230));
    }

    #[test]
    fn facts_come_only_with_a_truncation_that_moves_forward() {
        let mut state = DurableState::default();
        state.apply(&PersistEntry::Truncate(Slot(5)));
        state.apply(&PersistEntry::Commit(Slot(7)));
        assert_eq!(truncation_facts(&state, &[accept(8)]), None);
        assert_eq!(
            truncation_facts(&state, &[PersistEntry::Truncate(Slot(5))]),
            None
        );
        let b = Ballot::new(4, ReplicaId(2));
        let entries = [
            PersistEntry::Promise(b),
            PersistEntry::Truncate(Slot(6)),
            PersistEntry::Commit(Slot(3)),
        ];
        assert_eq!(
            truncation_facts(&state, &entries),
            Some([
                PersistEntry::Promise(b),
                PersistEntry::Commit(Slot(7)),
                PersistEntry::Truncate(Slot(6)),
            ])
        );
        assert_eq!(
            max_accepted_slot(&[accept(3), accept(9), accept(4)]),
            Slot(9)
        );
        assert_eq!(max_accepted_slot(&entries), Slot::ZERO);
    }
}
