//! The acceptor's in-memory entries, with their payload bytes counted.
//!
//! Memory for the log is bounded twice: in decrees (`retain_decrees`) and in
//! bytes (`retain_bytes`). A decree holds up to a whole batch, so a bound in
//! decrees alone lets the retained log grow to `retain_decrees` times the
//! largest batch: 4096 decrees of 100 KiB batches is 400 MiB of memory that
//! only serves catch-up. The byte count is kept exact on every insert and
//! removal, so trimming by bytes costs nothing per decree.
//!
//! Reads go through `Deref` to the ordered map; every change goes through a
//! method here, which is what keeps `payload_bytes` true.

use crate::types::{Accepted, Slot};
use paxos_contracts::{ensures, invariant};
use std::collections::BTreeMap;
use std::ops::Deref;

/// Every accepted entry the acceptor holds in memory, by slot.
#[derive(Debug, Default)]
pub(super) struct AcceptedLog {
    entries: BTreeMap<Slot, Accepted>,
    /// Sum of `value.payload_len()` over `entries`.
    payload_bytes: usize,
}

impl Deref for AcceptedLog {
    type Target = BTreeMap<Slot, Accepted>;

    fn deref(&self) -> &Self::Target {
        &self.entries
    }
}

impl AcceptedLog {
    pub(super) fn new(entries: BTreeMap<Slot, Accepted>) -> AcceptedLog {
        let payload_bytes = entries.values().map(|e| e.value.payload_len()).sum();
        AcceptedLog {
            entries,
            payload_bytes,
        }
    }

    /// Payload bytes of every entry held.
    pub(super) fn payload_bytes(&self) -> usize {
        self.payload_bytes
    }

    /// Records `entry` at its slot, replacing what was there.
    pub(super) fn insert(&mut self, entry: Accepted) {
        let slot = entry.slot;
        self.payload_bytes += entry.value.payload_len();
        if let Some(old) = self.entries.insert(entry.slot, entry) {
            self.payload_bytes -= old.value.payload_len();
        }
        ensures!(self.entries.contains_key(&slot));
        self.check_byte_count();
    }

    /// Drops every entry at a slot `<= through`.
    pub(super) fn drop_through(&mut self, through: Slot) {
        let kept = self.entries.split_off(&through.next());
        let dropped = std::mem::replace(&mut self.entries, kept);
        self.payload_bytes -= dropped
            .values()
            .map(|e| e.value.payload_len())
            .sum::<usize>();
        ensures!(self.entries.keys().next().is_none_or(|s| *s > through));
        self.check_byte_count();
    }

    /// Drops the lowest entry while `drop(entry, payload_bytes)` says so.
    pub(super) fn drop_front_while(&mut self, mut drop: impl FnMut(&Accepted, usize) -> bool) {
        while let Some(first) = self.entries.first_entry() {
            if !drop(first.get(), self.payload_bytes) {
                break;
            }
            self.payload_bytes -= first.remove().value.payload_len();
        }
        self.check_byte_count();
    }

    /// The kept count equals the entries' bytes (a walk: contracts only).
    fn check_byte_count(&self) {
        invariant!(
            self.payload_bytes
                == self
                    .entries
                    .values()
                    .map(|e| e.value.payload_len())
                    .sum::<usize>(),
            "payload byte count out of step with the entries"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Ballot, ReplicaId, Value};
    use bytes::Bytes;
    use proptest::prelude::*;

    fn entry(slot: u64, len: usize) -> Accepted {
        Accepted {
            slot: Slot(slot),
            ballot: Ballot::new(1, ReplicaId(1)),
            value: if len == 0 {
                Value::Noop
            } else {
                Value::Requests(Bytes::from(vec![0u8; len]))
            },
        }
    }

    fn walked(log: &AcceptedLog) -> usize {
        log.values().map(|e| e.value.payload_len()).sum()
    }

    proptest! {
        /// Whatever the sequence of changes, the counted bytes equal the
        /// bytes of the entries held.
        #[test]
        fn the_byte_count_matches_the_entries(ops in proptest::collection::vec((0u8..3, 1u64..40, 0usize..300), 0..80)) {
            let mut log = AcceptedLog::new(BTreeMap::from([(Slot(5), entry(5, 7))]));
            prop_assert_eq!(log.payload_bytes(), 7);
            for (op, slot, len) in ops {
                match op {
                    0 => log.insert(entry(slot, len)),
                    1 => log.drop_through(Slot(slot)),
                    _ => log.drop_front_while(|e, bytes| e.slot.0 < slot && bytes > len),
                }
                prop_assert_eq!(log.payload_bytes(), walked(&log));
            }
        }
    }

    #[test]
    fn dropping_from_the_front_stops_at_the_first_entry_to_keep() {
        let mut log = AcceptedLog::default();
        for s in 1..=4 {
            log.insert(entry(s, 10));
        }
        log.drop_front_while(|_, bytes| bytes > 25);
        assert_eq!(log.keys().copied().collect::<Vec<_>>(), [Slot(3), Slot(4)]);
        assert_eq!(log.payload_bytes(), 20);
    }
}
