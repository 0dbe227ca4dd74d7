//! On-disk encoding of segment headers and log records.
//!
//! All integers are little-endian. See the crate documentation for the
//! layout; this module is the only place that knows it. Decoding never
//! panics: every length is checked against the bytes actually present, and
//! whatever does not parse is reported as a [`FrameError`] that the caller
//! turns into a torn tail or a corruption error.

use bytes::Bytes;
use paxos_core::{
    Accepted, Ballot, Membership, PersistEntry, Reconfiguration, ReplicaId, Slot, Value,
};

/// Magic at the start of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"PXLOGSG1";
/// Segment format version of a segment that ends where its data ends.
pub const SEGMENT_VERSION: u32 = 1;
/// Segment format version of a preallocated segment: the file was created
/// at its full size, zero-filled, and the zeros after the last record are
/// the end of its data (see the crate documentation). Older readers refuse
/// it as an unknown version instead of taking the zeros for damage.
pub const SEGMENT_VERSION_PREALLOCATED: u32 = 2;
/// Bytes in a segment header.
pub const SEGMENT_HEADER_LEN: usize = 32;
/// Bytes in a record header (before the payload).
pub const RECORD_HEADER_LEN: usize = 24;
/// Bytes in the payload of a `State` record.
pub const STATE_PAYLOAD_LEN: usize = 28;
/// Flag bit: this record is the last of its append (batch).
pub const FLAG_END_OF_BATCH: u8 = 1;

/// The type of a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    /// `PersistEntry::Promise`.
    Promise = 1,
    /// `PersistEntry::Accept`.
    Accept = 2,
    /// `PersistEntry::Commit`.
    Commit = 3,
    /// `PersistEntry::Truncate`.
    Truncate = 4,
    /// Summary of promise, commit and truncation points, written first in
    /// every segment so older segments can be deleted.
    State = 5,
    /// An append with no entries (keeps sequence numbers contiguous).
    Empty = 6,
}

impl RecordKind {
    fn from_u8(v: u8) -> Option<RecordKind> {
        Some(match v {
            1 => RecordKind::Promise,
            2 => RecordKind::Accept,
            3 => RecordKind::Commit,
            4 => RecordKind::Truncate,
            5 => RecordKind::State,
            6 => RecordKind::Empty,
            _ => return None,
        })
    }
}

/// The promise, commit and truncation points at a segment boundary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StateSummary {
    /// Highest promised ballot.
    pub promised: Ballot,
    /// Commit index.
    pub commit_index: Slot,
    /// Truncation point.
    pub truncated_through: Slot,
}

impl StateSummary {
    /// The entries that reproduce this summary through `DurableState::apply`.
    pub fn entries(&self) -> [PersistEntry; 3] {
        [
            PersistEntry::Promise(self.promised),
            PersistEntry::Commit(self.commit_index),
            PersistEntry::Truncate(self.truncated_through),
        ]
    }

    /// Folds one entry in (points only move forward).
    pub fn absorb(&mut self, entry: &PersistEntry) {
        match entry {
            PersistEntry::Promise(b) => self.promised = self.promised.max(*b),
            PersistEntry::Commit(s) => self.commit_index = self.commit_index.max(*s),
            PersistEntry::Truncate(s) => self.truncated_through = self.truncated_through.max(*s),
            PersistEntry::Accept(_) => {}
        }
    }
}

/// A decoded record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// One persisted entry.
    Entry(PersistEntry),
    /// A segment-start summary.
    State(StateSummary),
    /// An empty append.
    Empty,
}

/// A decoded record frame with its position data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The record.
    pub record: Record,
    /// The append sequence number the record belongs to.
    pub lsn: u64,
    /// Whether this is the last record of its append.
    pub end_of_batch: bool,
    /// Total bytes of the frame (header + payload).
    pub len: usize,
}

/// Why a frame could not be decoded at some offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Fewer bytes remain than the header (or the payload it announces)
    /// needs: what a write cut short by a crash leaves.
    Incomplete,
    /// The bytes are all there but do not check out.
    Bad(String),
}

/// A decoded segment header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Sequence number of the first append the segment may hold.
    pub first_lsn: u64,
    /// Version 2: the file is preallocated, and zeros end its data.
    pub preallocated: bool,
}

/// Encodes a segment header.
pub fn encode_segment_header(first_lsn: u64, preallocated: bool) -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    let version = if preallocated {
        SEGMENT_VERSION_PREALLOCATED
    } else {
        SEGMENT_VERSION
    };
    h[0..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&version.to_le_bytes());
    h[16..24].copy_from_slice(&first_lsn.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..28]);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Decodes a segment header.
pub fn decode_segment_header(bytes: &[u8]) -> Result<SegmentHeader, FrameError> {
    if bytes.len() < SEGMENT_HEADER_LEN {
        return Err(FrameError::Incomplete);
    }
    let h = &bytes[..SEGMENT_HEADER_LEN];
    let crc = u32_at(h, 28);
    if crc32c::crc32c(&h[0..28]) != crc {
        return Err(FrameError::Bad("segment header checksum mismatch".into()));
    }
    if h[0..8] != SEGMENT_MAGIC {
        return Err(FrameError::Bad("bad segment magic".into()));
    }
    let version = u32_at(h, 8);
    if version != SEGMENT_VERSION && version != SEGMENT_VERSION_PREALLOCATED {
        return Err(FrameError::Bad(format!(
            "unsupported segment version {version}"
        )));
    }
    Ok(SegmentHeader {
        first_lsn: u64_at(h, 16),
        preallocated: version == SEGMENT_VERSION_PREALLOCATED,
    })
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn slot_at(b: &[u8], at: usize) -> Slot {
    Slot(u64_at(b, at))
}

/// Appends one frame to `out` with `lsn` 0 and no header checksum yet;
/// [`seal_frame`] fills both in once the sequence number is known (so the
/// costly payload copy and checksum happen outside the append lock).
/// Returns the frame's offset in `out`.
fn push_frame(out: &mut Vec<u8>, kind: RecordKind, payload: impl FnOnce(&mut Vec<u8>)) -> usize {
    let start = out.len();
    out.resize(start + RECORD_HEADER_LEN, 0);
    payload(out);
    let payload_len = out.len() - start - RECORD_HEADER_LEN;
    let payload_crc = crc32c::crc32c(&out[start + RECORD_HEADER_LEN..]);
    let h = &mut out[start..start + RECORD_HEADER_LEN];
    h[4..8].copy_from_slice(&(payload_len as u32).to_le_bytes());
    h[8] = kind as u8;
    h[20..24].copy_from_slice(&payload_crc.to_le_bytes());
    start
}

/// Sets the sequence number and end-of-batch flag of the frame at `at` and
/// computes its header checksum.
pub fn seal_frame(buf: &mut [u8], at: usize, lsn: u64, end_of_batch: bool) {
    let h = &mut buf[at..at + RECORD_HEADER_LEN];
    h[9] = if end_of_batch { FLAG_END_OF_BATCH } else { 0 };
    h[12..20].copy_from_slice(&lsn.to_le_bytes());
    let crc = crc32c::crc32c(&h[4..RECORD_HEADER_LEN]);
    h[0..4].copy_from_slice(&crc.to_le_bytes());
}

fn put_slot(out: &mut Vec<u8>, s: Slot) {
    out.extend_from_slice(&s.0.to_le_bytes());
}

fn put_ballot(out: &mut Vec<u8>, b: Ballot) {
    out.extend_from_slice(&b.round.to_le_bytes());
    out.extend_from_slice(&b.leader.0.to_le_bytes());
}

/// Bytes the payload of `entry` takes (for size limits before encoding).
pub fn entry_payload_len(entry: &PersistEntry) -> usize {
    match entry {
        PersistEntry::Promise(_) => 12,
        PersistEntry::Commit(_) | PersistEntry::Truncate(_) => 8,
        PersistEntry::Accept(a) => {
            21 + match &a.value {
                Value::Noop => 0,
                Value::Requests(b) => b.len(),
                Value::Reconfigure(r) => {
                    16 + 4 * (r.membership.voters.len() + r.membership.learners.len())
                }
            }
        }
    }
}

/// Encodes the entries of one append as unsealed frames into `out`;
/// returns each frame's offset. An empty append becomes one `Empty` frame.
pub fn encode_entries(entries: &[PersistEntry], out: &mut Vec<u8>) -> Vec<usize> {
    let mut offsets = Vec::with_capacity(entries.len().max(1));
    if entries.is_empty() {
        offsets.push(push_frame(out, RecordKind::Empty, |_| {}));
    }
    for entry in entries {
        let at = match entry {
            PersistEntry::Promise(b) => push_frame(out, RecordKind::Promise, |o| put_ballot(o, *b)),
            PersistEntry::Commit(s) => push_frame(out, RecordKind::Commit, |o| put_slot(o, *s)),
            PersistEntry::Truncate(s) => push_frame(out, RecordKind::Truncate, |o| put_slot(o, *s)),
            PersistEntry::Accept(a) => push_frame(out, RecordKind::Accept, |o| {
                put_slot(o, a.slot);
                put_ballot(o, a.ballot);
                match &a.value {
                    Value::Noop => o.push(0),
                    Value::Requests(b) => {
                        o.push(1);
                        o.extend_from_slice(b);
                    }
                    Value::Reconfigure(r) => {
                        // Tag 3: with the base slot (tag 2, without it, is
                        // no longer written).
                        o.push(3);
                        put_slot(o, r.base);
                        let m = &r.membership;
                        o.extend_from_slice(&(m.voters.len() as u32).to_le_bytes());
                        o.extend_from_slice(&(m.learners.len() as u32).to_le_bytes());
                        for id in m.voters.iter().chain(m.learners.iter()) {
                            o.extend_from_slice(&id.0.to_le_bytes());
                        }
                    }
                }
            }),
        };
        offsets.push(at);
    }
    offsets
}

/// Encodes a sealed `State` frame (a batch of its own).
pub fn encode_state(summary: &StateSummary, lsn: u64, out: &mut Vec<u8>) {
    let at = push_frame(out, RecordKind::State, |o| {
        put_ballot(o, summary.promised);
        put_slot(o, summary.commit_index);
        put_slot(o, summary.truncated_through);
    });
    seal_frame(out, at, lsn, true);
}

/// Decodes the frame at the start of `bytes`. `max_payload` bounds the
/// payload length a header may announce.
pub fn decode_frame(bytes: &[u8], max_payload: usize) -> Result<Frame, FrameError> {
    if bytes.len() < RECORD_HEADER_LEN {
        return Err(FrameError::Incomplete);
    }
    let h = &bytes[..RECORD_HEADER_LEN];
    if h.iter().all(|b| *b == 0) {
        // Never a record, whatever the checksum function gives for zeros:
        // the zero-filled end of a preallocated segment reads like this.
        return Err(FrameError::Bad("record header is all zeros".into()));
    }
    if crc32c::crc32c(&h[4..RECORD_HEADER_LEN]) != u32_at(h, 0) {
        return Err(FrameError::Bad("record header checksum mismatch".into()));
    }
    let payload_len = u32_at(h, 4) as usize;
    let kind = RecordKind::from_u8(h[8])
        .ok_or_else(|| FrameError::Bad(format!("unknown record type {}", h[8])))?;
    let flags = h[9];
    if flags & !FLAG_END_OF_BATCH != 0 || h[10] != 0 || h[11] != 0 {
        return Err(FrameError::Bad(format!("unknown record flags {flags:#x}")));
    }
    if payload_len > max_payload {
        return Err(FrameError::Bad(format!(
            "record payload of {payload_len} bytes exceeds the limit of {max_payload}"
        )));
    }
    let lsn = u64_at(h, 12);
    let total = RECORD_HEADER_LEN + payload_len;
    if bytes.len() < total {
        return Err(FrameError::Incomplete);
    }
    let payload = &bytes[RECORD_HEADER_LEN..total];
    if !payload_checksum_ok(payload, u32_at(h, 20)) {
        return Err(FrameError::Bad("record payload checksum mismatch".into()));
    }
    let record = decode_payload(kind, payload)?;
    Ok(Frame {
        record,
        lsn,
        end_of_batch: flags & FLAG_END_OF_BATCH != 0,
        len: total,
    })
}

/// The total length of the frame at the start of `bytes` and, if it is an
/// accept record, its slot: read from a header whose checksum is verified,
/// without checking or copying the payload. Lets a reader looking for a few
/// slots skip every other record cheaply; a record it wants is decoded in
/// full (payload checksum included) by [`decode_frame`].
pub fn peek_accept_slot(
    bytes: &[u8],
    max_payload: usize,
) -> Result<(usize, Option<Slot>), FrameError> {
    if bytes.len() < RECORD_HEADER_LEN {
        return Err(FrameError::Incomplete);
    }
    let h = &bytes[..RECORD_HEADER_LEN];
    if h.iter().all(|b| *b == 0) {
        return Err(FrameError::Bad("record header is all zeros".into()));
    }
    if crc32c::crc32c(&h[4..RECORD_HEADER_LEN]) != u32_at(h, 0) {
        return Err(FrameError::Bad("record header checksum mismatch".into()));
    }
    let payload_len = u32_at(h, 4) as usize;
    if payload_len > max_payload {
        return Err(FrameError::Bad(format!(
            "record payload of {payload_len} bytes exceeds the limit of {max_payload}"
        )));
    }
    let total = RECORD_HEADER_LEN + payload_len;
    if bytes.len() < total {
        return Err(FrameError::Incomplete);
    }
    let slot = (h[8] == RecordKind::Accept as u8 && payload_len >= 8)
        .then(|| slot_at(bytes, RECORD_HEADER_LEN));
    Ok((total, slot))
}

#[cfg(test)]
thread_local! {
    /// Planted defect for the fault tests: while set on a thread, decoding
    /// on that thread skips the payload checksum, so damaged payloads can
    /// slip through. Tests set it to prove their checkers catch that.
    pub(crate) static SKIP_PAYLOAD_CHECKSUM: std::cell::Cell<bool> =
        const { std::cell::Cell::new(false) };
}

fn payload_checksum_ok(payload: &[u8], stored: u32) -> bool {
    #[cfg(test)]
    if SKIP_PAYLOAD_CHECKSUM.with(|s| s.get()) {
        return true;
    }
    crc32c::crc32c(payload) == stored
}

fn bad_len(kind: RecordKind, len: usize) -> FrameError {
    FrameError::Bad(format!("{kind:?} record with a payload of {len} bytes"))
}

fn ballot_at(p: &[u8], at: usize) -> Ballot {
    Ballot::new(u64_at(p, at), ReplicaId(u32_at(p, at + 8)))
}

fn decode_payload(kind: RecordKind, p: &[u8]) -> Result<Record, FrameError> {
    let fixed = |n: usize| {
        if p.len() == n {
            Ok(())
        } else {
            Err(bad_len(kind, p.len()))
        }
    };
    Ok(match kind {
        RecordKind::Promise => {
            fixed(12)?;
            Record::Entry(PersistEntry::Promise(ballot_at(p, 0)))
        }
        RecordKind::Commit => {
            fixed(8)?;
            Record::Entry(PersistEntry::Commit(slot_at(p, 0)))
        }
        RecordKind::Truncate => {
            fixed(8)?;
            Record::Entry(PersistEntry::Truncate(slot_at(p, 0)))
        }
        RecordKind::Empty => {
            fixed(0)?;
            Record::Empty
        }
        RecordKind::State => {
            fixed(STATE_PAYLOAD_LEN)?;
            Record::State(StateSummary {
                promised: ballot_at(p, 0),
                commit_index: slot_at(p, 12),
                truncated_through: slot_at(p, 20),
            })
        }
        RecordKind::Accept => {
            if p.len() < 21 {
                return Err(bad_len(kind, p.len()));
            }
            let slot = slot_at(p, 0);
            let ballot = ballot_at(p, 8);
            let body = &p[21..];
            let value = match p[20] {
                0 if body.is_empty() => Value::Noop,
                1 => Value::Requests(Bytes::copy_from_slice(body)),
                3 if body.len() >= 16 => {
                    let base = slot_at(body, 0);
                    let body = &body[8..];
                    let voters = u32_at(body, 0) as usize;
                    let learners = u32_at(body, 4) as usize;
                    let ids = &body[8..];
                    // Checked arithmetic: counts come from disk.
                    let want = voters.checked_add(learners).and_then(|n| n.checked_mul(4));
                    if want != Some(ids.len()) {
                        return Err(FrameError::Bad(format!(
                            "membership of {voters}+{learners} ids in {} bytes",
                            ids.len()
                        )));
                    }
                    let mut all = ids.chunks_exact(4).map(|c| ReplicaId(u32_at(c, 0)));
                    let v: Vec<ReplicaId> = all.by_ref().take(voters).collect();
                    let l: Vec<ReplicaId> = all.collect();
                    Value::Reconfigure(Reconfiguration {
                        base,
                        membership: Membership {
                            voters: v,
                            learners: l,
                        },
                    })
                }
                tag => {
                    return Err(FrameError::Bad(format!(
                        "bad value tag {tag} with {} body bytes",
                        body.len()
                    )))
                }
            };
            if slot == Slot::ZERO {
                return Err(FrameError::Bad("accept record for slot 0".into()));
            }
            Record::Entry(PersistEntry::Accept(Accepted {
                slot,
                ballot,
                value,
            }))
        }
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sealed(entries: &[PersistEntry], lsn: u64) -> Vec<u8> {
        let mut buf = Vec::new();
        let offs = encode_entries(entries, &mut buf);
        for (i, at) in offs.iter().enumerate() {
            seal_frame(&mut buf, *at, lsn, i + 1 == offs.len());
        }
        buf
    }

    pub(crate) fn arb_entry() -> impl Strategy<Value = PersistEntry> {
        let ballot = (0u64..5, 0u32..4).prop_map(|(r, l)| Ballot::new(r, ReplicaId(l)));
        let value = prop_oneof![
            Just(Value::Noop),
            proptest::collection::vec(any::<u8>(), 0..64)
                .prop_map(|v| Value::Requests(Bytes::from(v))),
            (
                any::<u64>().prop_map(Slot),
                proptest::collection::vec(0u32..9, 1..4),
                proptest::collection::vec(0u32..9, 0..3)
            )
                .prop_map(|(base, v, l)| Value::Reconfigure(Reconfiguration {
                    base,
                    membership: Membership {
                        voters: v.into_iter().map(ReplicaId).collect(),
                        learners: l.into_iter().map(ReplicaId).collect(),
                    },
                })),
        ];
        prop_oneof![
            ballot.clone().prop_map(PersistEntry::Promise),
            ((1u64..50).prop_map(Slot), ballot, value).prop_map(|(slot, ballot, value)| {
                PersistEntry::Accept(Accepted {
                    slot,
                    ballot,
                    value,
                })
            }),
            (0u64..50).prop_map(|s| PersistEntry::Commit(Slot(s))),
            (0u64..50).prop_map(|s| PersistEntry::Truncate(Slot(s))),
        ]
    }

    proptest! {
        #[test]
        fn entries_round_trip(entries in proptest::collection::vec(arb_entry(), 0..6), lsn in 1u64..1000) {
            let buf = sealed(&entries, lsn);
            let mut at = 0;
            let mut got = Vec::new();
            while at < buf.len() {
                let f = decode_frame(&buf[at..], 1 << 20).unwrap();
                prop_assert_eq!(f.lsn, lsn);
                prop_assert_eq!(f.end_of_batch, at + f.len == buf.len());
                if let Record::Entry(e) = f.record { got.push(e) }
                at += f.len;
            }
            prop_assert_eq!(got, entries);
        }

        #[test]
        fn any_bit_flip_in_a_frame_is_detected(entries in proptest::collection::vec(arb_entry(), 1..4), bit in any::<usize>()) {
            let mut buf = sealed(&entries, 7);
            let bit = bit % (buf.len() * 8);
            buf[bit / 8] ^= 1 << (bit % 8);
            let mut at = 0;
            let mut failed = false;
            while at < buf.len() {
                match decode_frame(&buf[at..], 1 << 20) {
                    Ok(f) => at += f.len,
                    Err(_) => { failed = true; break; }
                }
            }
            prop_assert!(failed, "flip of bit {} went unnoticed", bit);
        }

        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_frame(&bytes, 1 << 20);
            let _ = decode_segment_header(&bytes);
        }
    }

    #[test]
    fn truncated_frames_are_incomplete_not_bad() {
        let buf = sealed(&[PersistEntry::Commit(Slot(3))], 1);
        for cut in 0..buf.len() {
            assert_eq!(
                decode_frame(&buf[..cut], 1 << 20),
                Err(FrameError::Incomplete),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn segment_header_round_trips_and_rejects_flips() {
        for preallocated in [false, true] {
            let h = encode_segment_header(42, preallocated);
            assert_eq!(
                decode_segment_header(&h),
                Ok(SegmentHeader {
                    first_lsn: 42,
                    preallocated
                })
            );
            for bit in 0..SEGMENT_HEADER_LEN * 8 {
                let mut b = h;
                b[bit / 8] ^= 1 << (bit % 8);
                assert!(decode_segment_header(&b).is_err(), "bit {bit}");
            }
        }
        assert!(decode_segment_header(&[0u8; SEGMENT_HEADER_LEN]).is_err());
    }

    #[test]
    fn an_all_zero_record_header_is_never_a_record() {
        for tail in [0usize, 1, 8, 100] {
            let zeros = vec![0u8; RECORD_HEADER_LEN + tail];
            assert!(matches!(
                decode_frame(&zeros, 1 << 20),
                Err(FrameError::Bad(r)) if r.contains("all zeros")
            ));
            assert!(peek_accept_slot(&zeros, 1 << 20).is_err());
        }
    }

    #[test]
    fn oversized_payload_announcement_is_bad() {
        let buf = sealed(&[PersistEntry::Commit(Slot(3))], 1);
        assert!(matches!(decode_frame(&buf, 4), Err(FrameError::Bad(_))));
    }
}
