//! Encoding of the storage payloads: a batch of [`PersistEntry`] (one per
//! `append`) or a snapshot of the whole [`DurableState`] (written by
//! compaction).
//!
//! ```text
//! payload  := 1 u32:count entry*            (a batch)
//!           | 2 ballot u64:commit u64:truncated u32:count accepted*   (a snapshot)
//!           | 3 u64:head u32:count entry*   (a head advance: a batch ending
//!                                            with the state's facts)
//! entry    := 1 ballot | 2 accepted | 3 u64:slot | 4 u64:slot
//! ballot   := u64:round u32:leader
//! accepted := u64:slot ballot value
//! value    := 0 | 1 u32:len bytes | 2 u32:n u32*n u32:m u32*m
//! ```
//!
//! Decoding never trusts a count or a length: each is checked against the
//! bytes left before anything is allocated, and request bytes are zero-copy
//! slices of the payload.

use bytes::{BufMut, Bytes};
use paxos_core::{
    Accepted, Ballot, DurableState, Membership, PersistEntry, Reconfiguration, ReplicaId, Slot,
    Value,
};

const KIND_BATCH: u8 = 1;
const KIND_SNAPSHOT: u8 = 2;
const KIND_HEAD_ADVANCE: u8 = 3;

/// A decoded payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    /// The entries of one append, applied in order.
    Batch(Vec<PersistEntry>),
    /// The complete state at a compaction point; replaces the state built so far.
    Snapshot(DurableState),
    /// The entries of an append that raised the truncation point, followed
    /// by the state's promise, commit index and truncation point after
    /// them; the storage then moved the log head to `head` (every record
    /// before it holds only truncated accepted entries). See the storage
    /// module docs, "Truncation advances the head".
    HeadAdvance {
        /// Where the head moves once this record is committed.
        head: u64,
        /// The append's entries, then the facts.
        entries: Vec<PersistEntry>,
    },
}

fn put_slot(out: &mut Vec<u8>, s: Slot) {
    out.put_u64_le(s.0);
}

fn put_ballot(out: &mut Vec<u8>, b: &Ballot) {
    out.put_u64_le(b.round);
    out.put_u32_le(b.leader.0);
}

/// Bytes [`encode_snapshot`] spends on `a` (what `put_accepted` writes).
pub fn accepted_len(a: &Accepted) -> u64 {
    let value = match &a.value {
        Value::Noop => 1,
        Value::Requests(bytes) => 1 + 4 + bytes.len() as u64,
        Value::Reconfigure(r) => {
            1 + 8 + 4 * (2 + r.membership.voters.len() + r.membership.learners.len()) as u64
        }
    };
    8 + 12 + value
}

/// Bytes of a snapshot's payload besides its accepted values.
pub const SNAPSHOT_HEADER_LEN: u64 = 1 + 12 + 8 + 8 + 4;

fn put_accepted(out: &mut Vec<u8>, a: &Accepted) {
    put_slot(out, a.slot);
    put_ballot(out, &a.ballot);
    match &a.value {
        Value::Noop => out.put_u8(0),
        Value::Requests(bytes) => {
            out.put_u8(1);
            out.put_u32_le(bytes.len() as u32);
            out.extend_from_slice(bytes);
        }
        Value::Reconfigure(r) => {
            // Tag 3 carries the base slot (tag 2, without it, is no longer
            // written).
            out.put_u8(3);
            put_slot(out, r.base);
            let m = &r.membership;
            for list in [&m.voters, &m.learners] {
                out.put_u32_le(list.len() as u32);
                for id in list.iter() {
                    out.put_u32_le(id.0);
                }
            }
        }
    }
}

/// The largest request batch one entry may carry (the length is a u32).
pub const MAX_VALUE_BYTES: usize = u32::MAX as usize;

/// Encodes the entries of one append. The caller bounds the size; values
/// above [`MAX_VALUE_BYTES`] are refused there.
pub fn encode_batch(entries: &[PersistEntry], out: &mut Vec<u8>) {
    out.put_u8(KIND_BATCH);
    put_entries(out, entries, &[]);
}

/// Encodes a head advance: `entries` followed by `facts`, moving the head
/// to `head` (which [`set_head_advance_target`] may fill in later: the
/// size does not depend on it).
pub fn encode_head_advance(
    entries: &[PersistEntry],
    facts: &[PersistEntry],
    head: u64,
    out: &mut Vec<u8>,
) {
    out.put_u8(KIND_HEAD_ADVANCE);
    out.put_u64_le(head);
    put_entries(out, entries, facts);
}

/// Sets the head of a payload [`encode_head_advance`] wrote.
pub fn set_head_advance_target(payload: &mut [u8], head: u64) {
    assert_eq!(
        payload.first(),
        Some(&KIND_HEAD_ADVANCE),
        "not a head advance"
    );
    payload[1..9].copy_from_slice(&head.to_le_bytes());
}

fn put_entries(out: &mut Vec<u8>, entries: &[PersistEntry], then: &[PersistEntry]) {
    out.put_u32_le((entries.len() + then.len()) as u32);
    for e in entries.iter().chain(then) {
        match e {
            PersistEntry::Promise(b) => {
                out.put_u8(1);
                put_ballot(out, b);
            }
            PersistEntry::Accept(a) => {
                out.put_u8(2);
                put_accepted(out, a);
            }
            PersistEntry::Commit(s) => {
                out.put_u8(3);
                put_slot(out, *s);
            }
            PersistEntry::Truncate(s) => {
                out.put_u8(4);
                put_slot(out, *s);
            }
        }
    }
}

/// Encodes a snapshot of `state`.
pub fn encode_snapshot(state: &DurableState, out: &mut Vec<u8>) {
    out.put_u8(KIND_SNAPSHOT);
    put_ballot(out, &state.promised);
    put_slot(out, state.commit_index);
    put_slot(out, state.truncated_through);
    out.put_u32_le(state.accepted.len() as u32);
    for a in state.accepted.values() {
        put_accepted(out, a);
    }
}

/// Why a payload failed to decode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("payload byte {at}: {reason}")]
pub struct CodecError {
    /// Offset in the payload where decoding failed.
    pub at: usize,
    /// What was wrong.
    pub reason: String,
}

struct Reader {
    buf: Bytes,
    at: usize,
}

impl Reader {
    fn fail<T>(&self, reason: impl Into<String>) -> Result<T, CodecError> {
        Err(CodecError {
            at: self.at,
            reason: reason.into(),
        })
    }
    fn take(&mut self, n: usize) -> Result<Bytes, CodecError> {
        if self.buf.len() - self.at < n {
            return self.fail(format!(
                "needs {n} bytes, {} left",
                self.buf.len() - self.at
            ));
        }
        let b = self.buf.slice(self.at..self.at + n);
        self.at += n;
        Ok(b)
    }
    fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, CodecError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, CodecError> {
        let b = self.take(8)?;
        let mut w = [0u8; 8];
        w.copy_from_slice(&b);
        Ok(u64::from_le_bytes(w))
    }
    fn slot(&mut self) -> Result<Slot, CodecError> {
        self.u64().map(Slot)
    }
    /// A count, then that many tagged entries.
    fn entries(&mut self) -> Result<Vec<PersistEntry>, CodecError> {
        let n = self.count(9)?;
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            entries.push(match self.u8()? {
                1 => PersistEntry::Promise(self.ballot()?),
                2 => PersistEntry::Accept(self.accepted()?),
                3 => PersistEntry::Commit(self.slot()?),
                4 => PersistEntry::Truncate(self.slot()?),
                t => return self.fail(format!("unknown entry tag {t}")),
            });
        }
        Ok(entries)
    }

    /// A count of items of at least `min_item` bytes each, checked against
    /// the bytes left so a corrupt count cannot cause a huge allocation.
    fn count(&mut self, min_item: usize) -> Result<usize, CodecError> {
        let n = self.u32()? as usize;
        let left = self.buf.len() - self.at;
        if n.saturating_mul(min_item) > left {
            return self.fail(format!("count {n} cannot fit in {left} bytes"));
        }
        Ok(n)
    }
    fn ballot(&mut self) -> Result<Ballot, CodecError> {
        Ok(Ballot {
            round: self.u64()?,
            leader: ReplicaId(self.u32()?),
        })
    }
    fn ids(&mut self) -> Result<Vec<ReplicaId>, CodecError> {
        let n = self.count(4)?;
        (0..n).map(|_| Ok(ReplicaId(self.u32()?))).collect()
    }
    fn accepted(&mut self) -> Result<Accepted, CodecError> {
        let slot = self.slot()?;
        let ballot = self.ballot()?;
        let value = match self.u8()? {
            0 => Value::Noop,
            1 => {
                let len = self.u32()? as usize;
                Value::Requests(self.take(len)?)
            }
            3 => {
                let base = self.slot()?;
                let voters = self.ids()?;
                let learners = self.ids()?;
                Value::Reconfigure(Reconfiguration {
                    base,
                    membership: Membership { voters, learners },
                })
            }
            t => return self.fail(format!("unknown value tag {t}")),
        };
        Ok(Accepted {
            slot,
            ballot,
            value,
        })
    }
}

/// Decodes a payload. The request bytes of accepted values share `buf`.
pub fn decode(buf: Bytes) -> Result<Payload, CodecError> {
    let mut r = Reader { buf, at: 0 };
    let payload = match r.u8()? {
        KIND_BATCH => Payload::Batch(r.entries()?),
        KIND_HEAD_ADVANCE => {
            let head = r.slot()?.0;
            let entries = r.entries()?;
            // The facts: a promise, a commit index, a truncation point.
            let facts_at = entries.len().checked_sub(3);
            if !facts_at.is_some_and(|i| {
                matches!(
                    entries[i..],
                    [
                        PersistEntry::Promise(_),
                        PersistEntry::Commit(_),
                        PersistEntry::Truncate(_)
                    ]
                )
            }) {
                return r.fail("head advance without its facts");
            }
            Payload::HeadAdvance { head, entries }
        }
        KIND_SNAPSHOT => {
            let promised = r.ballot()?;
            let commit_index = r.slot()?;
            let truncated_through = r.slot()?;
            let n = r.count(21)?;
            let mut state = DurableState {
                promised,
                commit_index,
                truncated_through,
                ..Default::default()
            };
            for _ in 0..n {
                let a = r.accepted()?;
                if a.slot <= truncated_through || state.accepted.contains_key(&a.slot) {
                    return r.fail(format!("snapshot slot {} duplicated or truncated", a.slot));
                }
                state.accepted.insert(a.slot, a);
            }
            Payload::Snapshot(state)
        }
        k => return r.fail(format!("unknown payload kind {k}")),
    };
    if r.at != r.buf.len() {
        return r.fail(format!("{} trailing bytes", r.buf.len() - r.at));
    }
    Ok(payload)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn arb_ballot() -> impl Strategy<Value = Ballot> {
        (0u64..5, 0u32..4).prop_map(|(r, l)| Ballot::new(r, ReplicaId(l)))
    }

    pub(crate) fn arb_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Noop),
            proptest::collection::vec(any::<u8>(), 0..120)
                .prop_map(|v| Value::Requests(Bytes::from(v))),
            (1u32..6, any::<u64>()).prop_map(|(n, base)| Value::Reconfigure(Reconfiguration {
                base: Slot(base),
                membership: Membership::with_voters((1..=n).map(ReplicaId).collect()),
            })),
        ]
    }

    pub(crate) fn arb_entry() -> impl Strategy<Value = PersistEntry> {
        prop_oneof![
            1 => arb_ballot().prop_map(PersistEntry::Promise),
            4 => ((1u64..40).prop_map(Slot), arb_ballot(), arb_value())
                .prop_map(|(slot, ballot, value)| PersistEntry::Accept(Accepted { slot, ballot, value })),
            1 => (0u64..40).prop_map(|s| PersistEntry::Commit(Slot(s))),
            1 => (0u64..40).prop_map(|s| PersistEntry::Truncate(Slot(s))),
        ]
    }

    proptest! {
        #[test]
        fn batches_round_trip(entries in proptest::collection::vec(arb_entry(), 0..12)) {
            let mut buf = Vec::new();
            encode_batch(&entries, &mut buf);
            prop_assert_eq!(decode(Bytes::from(buf)), Ok(Payload::Batch(entries)));
        }

        #[test]
        fn head_advances_round_trip(
            entries in proptest::collection::vec(arb_entry(), 0..12),
            (promised, commit, truncated) in (arb_ballot(), 0u64..40, 0u64..40),
            head in any::<u64>(),
        ) {
            let facts = [
                PersistEntry::Promise(promised),
                PersistEntry::Commit(Slot(commit)),
                PersistEntry::Truncate(Slot(truncated)),
            ];
            let mut buf = Vec::new();
            encode_head_advance(&entries, &facts, 0, &mut buf);
            let len = buf.len();
            set_head_advance_target(&mut buf, head);
            prop_assert_eq!(buf.len(), len, "the head does not change the size");
            let all: Vec<_> = entries.iter().chain(&facts).cloned().collect();
            prop_assert_eq!(
                decode(Bytes::from(buf)),
                Ok(Payload::HeadAdvance { head, entries: all })
            );
            // Without its facts a head advance is refused.
            let mut short = Vec::new();
            encode_head_advance(&entries, &facts[..2], head, &mut short);
            prop_assert!(decode(Bytes::from(short)).is_err());
        }

        #[test]
        fn snapshots_round_trip(entries in proptest::collection::vec(arb_entry(), 0..30)) {
            let mut state = DurableState::default();
            entries.iter().for_each(|e| state.apply(e));
            let mut buf = Vec::new();
            encode_snapshot(&state, &mut buf);
            let predicted: u64 = state.accepted.values().map(accepted_len).sum();
            prop_assert_eq!(buf.len() as u64, SNAPSHOT_HEADER_LEN + predicted, "sizes predicted exactly");
            prop_assert_eq!(decode(Bytes::from(buf)), Ok(Payload::Snapshot(state)));
        }

        /// Arbitrary bytes never panic the decoder.
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(Bytes::from(bytes));
        }

        /// Every proper prefix of a valid payload is rejected.
        #[test]
        fn truncated_payloads_are_rejected(entries in proptest::collection::vec(arb_entry(), 1..6), cut in any::<prop::sample::Index>()) {
            let mut buf = Vec::new();
            encode_batch(&entries, &mut buf);
            let cut = cut.index(buf.len());
            prop_assert!(decode(Bytes::copy_from_slice(&buf[..cut])).is_err());
        }
    }

    #[test]
    fn huge_counts_fail_without_allocating() {
        let mut buf = vec![KIND_BATCH];
        buf.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(Bytes::from(buf)).is_err());
    }
}
