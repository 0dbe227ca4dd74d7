//! An in-memory [`ReplicaStorage`] for benchmarks (`storage = "memory"`).
//!
//! **Not durable.** Appends are "durable" the moment they are queued,
//! because nothing is ever written anywhere: a crashed replica restarts
//! empty, as a brand-new acceptor that has forgotten its promises and
//! accepted values. That breaks Paxos's safety argument as soon as a replica
//! crashes, so use it only to measure the rest of the stack.

use paxos_core::{Accepted, DurableState, PersistEntry, Slot};
use paxos_log::{ReplicaStorage, StorageError};
use std::sync::Mutex;

/// Keeps the replica's durable state in memory.
#[derive(Debug, Default)]
pub struct MemoryStorage {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    state: DurableState,
    seq: u64,
}

impl MemoryStorage {
    /// An empty store (what a replica "recovers" from it is empty too).
    pub fn new() -> Self {
        MemoryStorage::default()
    }

    /// The current state.
    pub fn state(&self) -> DurableState {
        self.lock().state.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave `Inner` half-updated
        // in a way that matters for a non-durable store; keep going.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl ReplicaStorage for MemoryStorage {
    fn append(&self, entries: &[PersistEntry]) -> Result<u64, StorageError> {
        let mut inner = self.lock();
        for e in entries {
            inner.state.apply(e);
        }
        inner.seq += 1;
        Ok(inner.seq)
    }

    fn durable_seq(&self) -> u64 {
        self.lock().seq
    }

    fn wait_durable(&self, seq: u64) -> Result<(), StorageError> {
        let have = self.lock().seq;
        if seq > have {
            return Err(StorageError::OutOfRange(format!(
                "sequence {seq} was never appended (last {have})"
            )));
        }
        Ok(())
    }

    fn read_accepted(&self, from: Slot, max: usize) -> Result<Vec<Accepted>, StorageError> {
        let inner = self.lock();
        Ok(inner
            .state
            .accepted
            .range(from..)
            .take(max)
            .map(|(_, a)| a.clone())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use paxos_core::{Ballot, ReplicaId, Value};

    #[test]
    fn appends_are_visible_and_sequenced() {
        let s = MemoryStorage::new();
        let b = Ballot::new(1, ReplicaId(1));
        let acc = |slot| {
            PersistEntry::Accept(Accepted {
                slot,
                ballot: b,
                value: Value::Noop,
            })
        };
        assert_eq!(
            s.append(&[PersistEntry::Promise(b), acc(Slot(1)), acc(Slot(2))])
                .unwrap(),
            1
        );
        assert_eq!(
            s.append(&[acc(Slot(3)), PersistEntry::Commit(Slot(2))])
                .unwrap(),
            2
        );
        s.wait_durable(2).unwrap();
        assert!(s.wait_durable(3).is_err());
        assert_eq!(
            s.read_accepted(Slot(2), 10)
                .unwrap()
                .iter()
                .map(|a| a.slot)
                .collect::<Vec<_>>(),
            vec![Slot(2), Slot(3)]
        );
        s.truncate_through(Slot(2)).unwrap();
        assert_eq!(s.read_accepted(Slot::ZERO, 10).unwrap().len(), 1);
        assert_eq!(s.state().commit_index, Slot(2));
        assert_eq!(s.durable_seq(), 3);
    }
}
