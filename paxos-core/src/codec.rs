//! Compact, versioned binary encoding of [`Message`].
//!
//! Layout: `u8 version (=3) | u8 tag | fields`. Integers are LEB128 varints
//! (at most 10 bytes, overflow rejected); a ballot is `round, leader`; a value
//! is `u8 kind | payload` (`Requests`: varint length then the bytes);
//! sequences are a varint count then the items; an `Option<Slot>` is
//! `u8 0` or `u8 1, slot`. Trailing bytes are an error.
//!
//! Versioning: a frame has no room for fields a reader does not know
//! (trailing bytes are an error), so adding or changing a field bumps
//! [`VERSION`], and a replica drops (and logs) frames of any other version:
//! replicas of different versions do not talk to each other. Upgrade a
//! cluster by restarting every replica on the new version.
//!
//! Decoding never panics and never allocates more than the input justifies:
//! every count is checked against the bytes that remain (each item takes at
//! least one byte) and against [`MAX_ENTRIES`] before anything is reserved.
//! Request payloads are zero-copy [`Bytes`] slices of the input frame.

use crate::msg::{self, Message};
use crate::types::{Accepted, Ballot, Membership, Reconfiguration, ReplicaId, Slot, Value};
use bytes::{BufMut, Bytes, BytesMut};

/// The encoding version written by [`encode`] and accepted by [`decode`].
/// Version 2 added the read round to `Heartbeat` and `HeartbeatAck`;
/// version 3 the follower's applied index to `HeartbeatAck`.
pub const VERSION: u8 = 3;

/// Most entries (decrees or replica ids) one message may carry.
pub const MAX_ENTRIES: usize = 1 << 20;

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The frame ended early.
    #[error("message truncated at byte {offset}")]
    Truncated {
        /// Where more bytes were needed.
        offset: usize,
    },
    /// The frame was written by an encoding version we do not speak.
    #[error("unsupported message encoding version {0}")]
    Version(u8),
    /// An unknown message, value or flag tag.
    #[error("unknown {what} tag {tag}")]
    UnknownTag {
        /// Which tag.
        what: &'static str,
        /// Its value.
        tag: u8,
    },
    /// A varint longer than 10 bytes or above the field's range.
    #[error("integer overflow at byte {offset}")]
    Overflow {
        /// Where the integer started.
        offset: usize,
    },
    /// A count or length above the limit or above the bytes left.
    #[error("length {len} at byte {offset} exceeds the limit")]
    TooLong {
        /// The claimed length.
        len: u64,
        /// Where it was read.
        offset: usize,
    },
    /// A membership list that is not sorted, unique and disjoint.
    #[error("malformed membership")]
    BadMembership,
    /// Fields that no correct sender writes together.
    #[error("inconsistent message: {0}")]
    Inconsistent(&'static str),
    /// Bytes left after the message.
    #[error("{0} trailing bytes")]
    TrailingBytes(usize),
}

mod tag {
    pub const PREPARE: u8 = 1;
    pub const PROMISE: u8 = 2;
    pub const ACCEPT: u8 = 3;
    pub const ACCEPTED: u8 = 4;
    pub const HEARTBEAT: u8 = 5;
    pub const HEARTBEAT_ACK: u8 = 6;
    pub const REJECT: u8 = 7;
    pub const FETCH: u8 = 8;
    pub const DECREES: u8 = 9;
    pub const TIMEOUT_NOW: u8 = 10;
    pub const REPAIR_QUERY: u8 = 11;
    pub const REPAIR_ANSWER: u8 = 12;
    pub const PRE_VOTE: u8 = 13;
    pub const PRE_VOTE_REPLY: u8 = 14;

    pub const VALUE_NOOP: u8 = 0;
    pub const VALUE_REQUESTS: u8 = 1;
    pub const VALUE_RECONFIGURE: u8 = 2;
}

/// Appends the encoding of `msg` to `out`.
pub fn encode(msg: &Message, out: &mut BytesMut) {
    out.reserve(encoded_len_hint(msg));
    out.put_u8(VERSION);
    match msg {
        Message::Prepare(msg::Prepare { ballot, from_slot }) => {
            out.put_u8(tag::PREPARE);
            put_ballot(out, *ballot);
            put_slot(out, *from_slot);
        }
        Message::Promise(msg::Promise {
            ballot,
            from_slot,
            commit_index,
            log_start,
            entries,
            next_from,
        }) => {
            out.put_u8(tag::PROMISE);
            put_ballot(out, *ballot);
            put_slot(out, *from_slot);
            put_slot(out, *commit_index);
            put_slot(out, *log_start);
            put_entries(out, entries);
            match next_from {
                None => out.put_u8(0),
                Some(s) => {
                    out.put_u8(1);
                    put_slot(out, *s);
                }
            }
        }
        Message::Accept(msg::Accept {
            ballot,
            slot,
            value,
            commit_index,
        }) => {
            out.put_u8(tag::ACCEPT);
            put_ballot(out, *ballot);
            put_slot(out, *slot);
            put_slot(out, *commit_index);
            put_value(out, value);
        }
        Message::Accepted(msg::Accepted {
            ballot,
            slot,
            commit_index,
        }) => {
            out.put_u8(tag::ACCEPTED);
            put_ballot(out, *ballot);
            put_slot(out, *slot);
            put_slot(out, *commit_index);
        }
        Message::Heartbeat(msg::Heartbeat {
            ballot,
            commit_index,
            read_round,
        }) => {
            out.put_u8(tag::HEARTBEAT);
            put_ballot(out, *ballot);
            put_slot(out, *commit_index);
            put_varint(out, *read_round);
        }
        Message::HeartbeatAck(msg::HeartbeatAck {
            ballot,
            commit_index,
            applied_index,
            can_become_primary,
            read_round,
        }) => {
            out.put_u8(tag::HEARTBEAT_ACK);
            put_ballot(out, *ballot);
            put_slot(out, *commit_index);
            put_slot(out, *applied_index);
            out.put_u8(u8::from(*can_become_primary));
            put_varint(out, *read_round);
        }
        Message::Reject(msg::Reject { promised }) => {
            out.put_u8(tag::REJECT);
            put_ballot(out, *promised);
        }
        Message::Fetch(msg::Fetch { from_slot }) => {
            out.put_u8(tag::FETCH);
            put_slot(out, *from_slot);
        }
        Message::Decrees(msg::Decrees {
            from_slot,
            commit_index,
            log_start,
            decrees,
        }) => {
            out.put_u8(tag::DECREES);
            put_slot(out, *from_slot);
            put_slot(out, *commit_index);
            put_slot(out, *log_start);
            put_entries(out, decrees);
        }
        Message::TimeoutNow(msg::TimeoutNow { ballot }) => {
            out.put_u8(tag::TIMEOUT_NOW);
            put_ballot(out, *ballot);
        }
        Message::RepairQuery(msg::RepairQuery { commit_index }) => {
            out.put_u8(tag::REPAIR_QUERY);
            put_slot(out, *commit_index);
        }
        Message::RepairAnswer(msg::RepairAnswer {
            promised,
            max_slot,
            commit_index,
            voters,
            suspect,
        }) => {
            out.put_u8(tag::REPAIR_ANSWER);
            put_ballot(out, *promised);
            put_slot(out, *max_slot);
            put_slot(out, *commit_index);
            put_varint(out, voters.len() as u64);
            for v in voters {
                put_varint(out, u64::from(v.0));
            }
            out.put_u8(u8::from(*suspect));
        }
        Message::PreVote(msg::PreVote {
            ballot,
            commit_index,
        }) => {
            out.put_u8(tag::PRE_VOTE);
            put_ballot(out, *ballot);
            put_slot(out, *commit_index);
        }
        Message::PreVoteReply(msg::PreVoteReply {
            ballot,
            granted,
            promised,
            commit_index,
        }) => {
            out.put_u8(tag::PRE_VOTE_REPLY);
            put_ballot(out, *ballot);
            out.put_u8(u8::from(*granted));
            put_ballot(out, *promised);
            put_slot(out, *commit_index);
        }
    }
}

/// Encodes `msg` into a fresh buffer.
pub fn encode_to_bytes(msg: &Message) -> Bytes {
    let mut out = BytesMut::new();
    encode(msg, &mut out);
    out.freeze()
}

/// An upper bound on the encoded size of `msg` (used to reserve buffers and
/// to keep messages under `max_message_bytes`).
pub fn encoded_len_hint(msg: &Message) -> usize {
    const FIXED: usize = 2 + 5 * 10 + 16;
    match msg {
        Message::Accept(msg::Accept { value, .. }) => FIXED + value_len_hint(value),
        Message::Promise(msg::Promise { entries, .. }) => {
            FIXED + entries.iter().map(accepted_len_hint).sum::<usize>()
        }
        Message::Decrees(msg::Decrees { decrees, .. }) => {
            FIXED + decrees.iter().map(accepted_len_hint).sum::<usize>()
        }
        Message::RepairAnswer(msg::RepairAnswer { voters, .. }) => FIXED + 10 + 5 * voters.len(),
        _ => FIXED,
    }
}

/// Upper bound on the encoded size of one accepted entry.
pub fn accepted_len_hint(a: &Accepted) -> usize {
    30 + value_len_hint(&a.value)
}

fn value_len_hint(v: &Value) -> usize {
    match v {
        Value::Noop => 1,
        Value::Requests(b) => 11 + b.len(),
        Value::Reconfigure(r) => 31 + 5 * (r.membership.voters.len() + r.membership.learners.len()),
    }
}

fn put_varint(out: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        out.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

fn put_slot(out: &mut BytesMut, s: Slot) {
    put_varint(out, s.0);
}

fn put_ballot(out: &mut BytesMut, b: Ballot) {
    put_varint(out, b.round);
    put_varint(out, u64::from(b.leader.0));
}

fn put_value(out: &mut BytesMut, v: &Value) {
    match v {
        Value::Noop => out.put_u8(tag::VALUE_NOOP),
        Value::Requests(b) => {
            out.put_u8(tag::VALUE_REQUESTS);
            put_varint(out, b.len() as u64);
            out.put_slice(b);
        }
        Value::Reconfigure(r) => {
            out.put_u8(tag::VALUE_RECONFIGURE);
            put_slot(out, r.base);
            let m = &r.membership;
            for list in [&m.voters, &m.learners] {
                put_varint(out, list.len() as u64);
                for id in list {
                    put_varint(out, u64::from(id.0));
                }
            }
        }
    }
}

fn put_entries(out: &mut BytesMut, entries: &[Accepted]) {
    put_varint(out, entries.len() as u64);
    for a in entries {
        put_slot(out, a.slot);
        put_ballot(out, a.ballot);
        put_value(out, &a.value);
    }
}

/// Decodes one message from a whole frame. Never panics.
pub fn decode(buf: Bytes) -> Result<Message, CodecError> {
    let mut r = Reader { buf, pos: 0 };
    let version = r.u8()?;
    if version != VERSION {
        return Err(CodecError::Version(version));
    }
    let t = r.u8()?;
    let msg = match t {
        tag::PREPARE => Message::Prepare(msg::Prepare {
            ballot: r.ballot()?,
            from_slot: r.slot()?,
        }),
        tag::PROMISE => Message::Promise(msg::Promise {
            ballot: r.ballot()?,
            from_slot: r.slot()?,
            commit_index: r.slot()?,
            log_start: r.slot()?,
            entries: r.entries()?,
            next_from: match r.u8()? {
                0 => None,
                1 => Some(r.slot()?),
                other => {
                    return Err(CodecError::UnknownTag {
                        what: "option",
                        tag: other,
                    })
                }
            },
        }),
        tag::ACCEPT => {
            let ballot = r.ballot()?;
            let slot = r.slot()?;
            let commit_index = r.slot()?;
            Message::Accept(msg::Accept {
                ballot,
                slot,
                commit_index,
                value: r.value()?,
            })
        }
        tag::ACCEPTED => Message::Accepted(msg::Accepted {
            ballot: r.ballot()?,
            slot: r.slot()?,
            commit_index: r.slot()?,
        }),
        tag::HEARTBEAT => Message::Heartbeat(msg::Heartbeat {
            ballot: r.ballot()?,
            commit_index: r.slot()?,
            read_round: r.varint()?,
        }),
        tag::HEARTBEAT_ACK => {
            let ballot = r.ballot()?;
            let commit_index = r.slot()?;
            let applied_index = r.slot()?;
            if applied_index > commit_index {
                return Err(CodecError::Inconsistent(
                    "heartbeat ack's applied index is above its commit index",
                ));
            }
            Message::HeartbeatAck(msg::HeartbeatAck {
                ballot,
                commit_index,
                applied_index,
                can_become_primary: r.bool()?,
                read_round: r.varint()?,
            })
        }
        tag::REJECT => Message::Reject(msg::Reject {
            promised: r.ballot()?,
        }),
        tag::FETCH => Message::Fetch(msg::Fetch {
            from_slot: r.slot()?,
        }),
        tag::DECREES => Message::Decrees(msg::Decrees {
            from_slot: r.slot()?,
            commit_index: r.slot()?,
            log_start: r.slot()?,
            decrees: r.entries()?,
        }),
        tag::TIMEOUT_NOW => Message::TimeoutNow(msg::TimeoutNow {
            ballot: r.ballot()?,
        }),
        tag::REPAIR_QUERY => Message::RepairQuery(msg::RepairQuery {
            commit_index: r.slot()?,
        }),
        tag::REPAIR_ANSWER => Message::RepairAnswer(msg::RepairAnswer {
            promised: r.ballot()?,
            max_slot: r.slot()?,
            commit_index: r.slot()?,
            voters: r.ids(crate::config::MAX_VOTERS * 2)?,
            suspect: r.bool()?,
        }),
        tag::PRE_VOTE => Message::PreVote(msg::PreVote {
            ballot: r.ballot()?,
            commit_index: r.slot()?,
        }),
        tag::PRE_VOTE_REPLY => Message::PreVoteReply(msg::PreVoteReply {
            ballot: r.ballot()?,
            granted: r.bool()?,
            promised: r.ballot()?,
            commit_index: r.slot()?,
        }),
        other => {
            return Err(CodecError::UnknownTag {
                what: "message",
                tag: other,
            })
        }
    };
    let left = r.buf.len() - r.pos;
    if left != 0 {
        return Err(CodecError::TrailingBytes(left));
    }
    Ok(msg)
}

struct Reader {
    buf: Bytes,
    pos: usize,
}

impl Reader {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn u8(&mut self) -> Result<u8, CodecError> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or(CodecError::Truncated { offset: self.pos })?;
        self.pos += 1;
        Ok(b)
    }

    fn bool(&mut self) -> Result<bool, CodecError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(CodecError::UnknownTag {
                what: "bool",
                tag: other,
            }),
        }
    }

    fn varint(&mut self) -> Result<u64, CodecError> {
        let start = self.pos;
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = self.u8()?;
            let low = u64::from(b & 0x7f);
            if i == 9 && b > 1 {
                return Err(CodecError::Overflow { offset: start });
            }
            v |= low << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(CodecError::Overflow { offset: start })
    }

    fn replica_id(&mut self) -> Result<ReplicaId, CodecError> {
        let start = self.pos;
        let v = self.varint()?;
        u32::try_from(v)
            .map(ReplicaId)
            .map_err(|_| CodecError::Overflow { offset: start })
    }

    fn slot(&mut self) -> Result<Slot, CodecError> {
        self.varint().map(Slot)
    }

    fn ballot(&mut self) -> Result<Ballot, CodecError> {
        Ok(Ballot {
            round: self.varint()?,
            leader: self.replica_id()?,
        })
    }

    /// A list of at most `max` replica ids.
    fn ids(&mut self, max: usize) -> Result<Vec<ReplicaId>, CodecError> {
        let start = self.pos;
        let n = self.count()?;
        if n > max {
            return Err(CodecError::TooLong {
                len: n as u64,
                offset: start,
            });
        }
        (0..n).map(|_| self.replica_id()).collect()
    }

    /// A count of items that each take at least one byte.
    fn count(&mut self) -> Result<usize, CodecError> {
        let start = self.pos;
        let n = self.varint()?;
        if n > MAX_ENTRIES as u64 || n > self.remaining() as u64 {
            return Err(CodecError::TooLong {
                len: n,
                offset: start,
            });
        }
        Ok(n as usize)
    }

    fn value(&mut self) -> Result<Value, CodecError> {
        match self.u8()? {
            tag::VALUE_NOOP => Ok(Value::Noop),
            tag::VALUE_REQUESTS => {
                let start = self.pos;
                let len = self.varint()?;
                if len > self.remaining() as u64 {
                    return Err(CodecError::TooLong { len, offset: start });
                }
                let len = len as usize;
                let bytes = self.buf.slice(self.pos..self.pos + len);
                self.pos += len;
                Ok(Value::Requests(bytes))
            }
            tag::VALUE_RECONFIGURE => {
                let base = self.slot()?;
                let mut lists = [Vec::new(), Vec::new()];
                for list in &mut lists {
                    let n = self.count()?;
                    list.reserve(n);
                    for _ in 0..n {
                        list.push(self.replica_id()?);
                    }
                }
                let [voters, learners] = lists;
                let m = Membership { voters, learners };
                if !m.is_well_formed() {
                    return Err(CodecError::BadMembership);
                }
                Ok(Value::Reconfigure(Reconfiguration {
                    base,
                    membership: m,
                }))
            }
            other => Err(CodecError::UnknownTag {
                what: "value",
                tag: other,
            }),
        }
    }

    fn entries(&mut self) -> Result<Vec<Accepted>, CodecError> {
        let n = self.count()?;
        // Each entry takes at least 4 bytes (slot, round, leader, value kind).
        let mut out = Vec::with_capacity(n.min(self.remaining() / 4));
        for _ in 0..n {
            let slot = self.slot()?;
            let ballot = self.ballot()?;
            let value = self.value()?;
            out.push(Accepted {
                slot,
                ballot,
                value,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_slot() -> impl Strategy<Value = Slot> {
        any::<u64>().prop_map(Slot)
    }

    fn arb_ballot() -> impl Strategy<Value = Ballot> {
        (any::<u64>(), any::<u32>()).prop_map(|(r, l)| Ballot::new(r, ReplicaId(l)))
    }

    fn arb_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Noop),
            proptest::collection::vec(any::<u8>(), 0..64)
                .prop_map(|v| Value::Requests(Bytes::from(v))),
            (
                arb_slot(),
                proptest::collection::btree_set(0u32..50, 1..5),
                proptest::collection::btree_set(50u32..100, 0..3)
            )
                .prop_map(|(base, v, l)| Value::Reconfigure(Reconfiguration {
                    base,
                    membership: Membership {
                        voters: v.into_iter().map(ReplicaId).collect(),
                        learners: l.into_iter().map(ReplicaId).collect(),
                    },
                })),
        ]
    }

    fn arb_accepted() -> impl Strategy<Value = Accepted> {
        (arb_slot(), arb_ballot(), arb_value()).prop_map(|(slot, ballot, value)| Accepted {
            slot,
            ballot,
            value,
        })
    }

    fn arb_message() -> impl Strategy<Value = Message> {
        prop_oneof![
            (arb_ballot(), arb_slot()).prop_map(|(ballot, from_slot)| Message::Prepare(
                msg::Prepare { ballot, from_slot }
            )),
            (
                arb_ballot(),
                arb_slot(),
                arb_slot(),
                arb_slot(),
                proptest::collection::vec(arb_accepted(), 0..4),
                proptest::option::of(arb_slot())
            )
                .prop_map(
                    |(ballot, from_slot, commit_index, log_start, entries, next_from)| {
                        Message::Promise(msg::Promise {
                            ballot,
                            from_slot,
                            commit_index,
                            log_start,
                            entries,
                            next_from,
                        })
                    }
                ),
            (arb_ballot(), arb_slot(), arb_value(), arb_slot()).prop_map(
                |(ballot, slot, value, commit_index)| Message::Accept(msg::Accept {
                    ballot,
                    slot,
                    value,
                    commit_index
                })
            ),
            (arb_ballot(), arb_slot(), arb_slot()).prop_map(|(ballot, slot, commit_index)| {
                Message::Accepted(msg::Accepted {
                    ballot,
                    slot,
                    commit_index,
                })
            }),
            (arb_ballot(), arb_slot(), any::<u64>()).prop_map(
                |(ballot, commit_index, read_round)| Message::Heartbeat(msg::Heartbeat {
                    ballot,
                    commit_index,
                    read_round,
                })
            ),
            (
                arb_ballot(),
                arb_slot(),
                arb_slot(),
                any::<bool>(),
                any::<u64>()
            )
                .prop_map(|(ballot, a, b, can_become_primary, read_round)| {
                    // A correct follower never applies past its commit index.
                    Message::HeartbeatAck(msg::HeartbeatAck {
                        ballot,
                        commit_index: a.max(b),
                        applied_index: a.min(b),
                        can_become_primary,
                        read_round,
                    })
                }),
            arb_ballot().prop_map(|promised| Message::Reject(msg::Reject { promised })),
            arb_slot().prop_map(|from_slot| Message::Fetch(msg::Fetch { from_slot })),
            (
                arb_slot(),
                arb_slot(),
                arb_slot(),
                proptest::collection::vec(arb_accepted(), 0..4)
            )
                .prop_map(|(from_slot, commit_index, log_start, decrees)| {
                    Message::Decrees(msg::Decrees {
                        from_slot,
                        commit_index,
                        log_start,
                        decrees,
                    })
                }),
            arb_ballot().prop_map(|ballot| Message::TimeoutNow(msg::TimeoutNow { ballot })),
            arb_slot()
                .prop_map(|commit_index| Message::RepairQuery(msg::RepairQuery { commit_index })),
            (
                arb_ballot(),
                arb_slot(),
                arb_slot(),
                proptest::collection::vec(any::<u32>(), 0..8),
                any::<bool>()
            )
                .prop_map(|(promised, max_slot, commit_index, voters, suspect)| {
                    Message::RepairAnswer(msg::RepairAnswer {
                        promised,
                        max_slot,
                        commit_index,
                        voters: voters.into_iter().map(ReplicaId).collect(),
                        suspect,
                    })
                }),
            (arb_ballot(), arb_slot()).prop_map(|(ballot, commit_index)| Message::PreVote(
                msg::PreVote {
                    ballot,
                    commit_index
                }
            )),
            (arb_ballot(), any::<bool>(), arb_ballot(), arb_slot()).prop_map(
                |(ballot, granted, promised, commit_index)| {
                    Message::PreVoteReply(msg::PreVoteReply {
                        ballot,
                        granted,
                        promised,
                        commit_index,
                    })
                }
            ),
        ]
    }

    proptest! {
        #[test]
        fn roundtrip(msg in arb_message()) {
            let bytes = encode_to_bytes(&msg);
            prop_assert!(bytes.len() <= encoded_len_hint(&msg));
            prop_assert_eq!(decode(bytes).unwrap(), msg);
        }

        #[test]
        fn arbitrary_bytes_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = decode(Bytes::from(raw));
        }

        #[test]
        fn mutated_frames_never_panic(msg in arb_message(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4)) {
            let mut raw = encode_to_bytes(&msg).to_vec();
            for (at, byte) in flips {
                let i = at % raw.len();
                raw[i] = byte;
            }
            let _ = decode(Bytes::from(raw));
        }

        #[test]
        fn every_strict_prefix_is_an_error(msg in arb_message()) {
            let bytes = encode_to_bytes(&msg);
            for cut in 0..bytes.len() {
                prop_assert!(decode(bytes.slice(..cut)).is_err());
            }
        }
    }

    #[test]
    fn rejects_bad_version_tags_and_trailing_bytes() {
        assert_eq!(
            decode(Bytes::from_static(&[1, 1, 0, 0, 0])),
            Err(CodecError::Version(1))
        );
        assert!(matches!(
            decode(Bytes::from_static(&[VERSION, 99])),
            Err(CodecError::UnknownTag {
                what: "message",
                ..
            })
        ));
        assert_eq!(
            decode(Bytes::from_static(&[VERSION, tag::FETCH, 5, 0])),
            Err(CodecError::TrailingBytes(1))
        );
        assert!(matches!(
            decode(Bytes::from_static(&[])),
            Err(CodecError::Truncated { offset: 0 })
        ));
    }

    #[test]
    fn rejects_overlong_varints_and_huge_counts() {
        let mut raw = vec![VERSION, tag::FETCH];
        raw.extend_from_slice(&[0xff; 10]);
        raw.push(0);
        assert!(matches!(
            decode(Bytes::from(raw)),
            Err(CodecError::Overflow { .. })
        ));
        // u64::MAX itself still decodes.
        let mut out = BytesMut::new();
        encode(
            &Message::Fetch(msg::Fetch {
                from_slot: Slot::MAX,
            }),
            &mut out,
        );
        assert_eq!(
            decode(out.freeze()).unwrap(),
            Message::Fetch(msg::Fetch {
                from_slot: Slot::MAX
            })
        );
        // A Decrees frame claiming 2^40 entries fails before allocating.
        let mut raw = BytesMut::new();
        raw.put_u8(VERSION);
        raw.put_u8(tag::DECREES);
        put_varint(&mut raw, 1);
        put_varint(&mut raw, 1);
        put_varint(&mut raw, 1);
        put_varint(&mut raw, 1 << 40);
        assert!(matches!(
            decode(raw.freeze()),
            Err(CodecError::TooLong { .. })
        ));
        // A replica id above u32 is an overflow, not a truncation.
        let mut raw = BytesMut::new();
        raw.put_u8(VERSION);
        raw.put_u8(tag::TIMEOUT_NOW);
        put_varint(&mut raw, 1);
        put_varint(&mut raw, u64::from(u32::MAX) + 1);
        assert!(matches!(
            decode(raw.freeze()),
            Err(CodecError::Overflow { .. })
        ));
    }

    #[test]
    fn a_pre_vote_reply_with_a_bad_flag_is_an_error() {
        let mut raw = BytesMut::new();
        raw.put_u8(VERSION);
        raw.put_u8(tag::PRE_VOTE_REPLY);
        put_ballot(&mut raw, Ballot::new(2, ReplicaId(1)));
        raw.put_u8(2); // `granted` is 0 or 1
        put_ballot(&mut raw, Ballot::new(1, ReplicaId(3)));
        put_slot(&mut raw, Slot(4));
        assert!(matches!(
            decode(raw.freeze()),
            Err(CodecError::UnknownTag { what: "bool", .. })
        ));
    }

    #[test]
    fn a_heartbeat_ack_carries_the_applied_index_and_never_one_above_its_commit() {
        let ack = |commit: u64, applied: u64| {
            Message::HeartbeatAck(msg::HeartbeatAck {
                ballot: Ballot::new(4, ReplicaId(1)),
                commit_index: Slot(commit),
                applied_index: Slot(applied),
                can_become_primary: true,
                read_round: 9,
            })
        };
        for (commit, applied) in [(7, 7), (7, 3), (u64::MAX, 0), (u64::MAX, u64::MAX)] {
            let m = ack(commit, applied);
            assert_eq!(decode(encode_to_bytes(&m)).unwrap(), m);
        }
        // Hand-written: ballot, commit index, then the applied index.
        let frame = |applied: &[u8]| {
            let mut raw = BytesMut::new();
            raw.put_u8(VERSION);
            raw.put_u8(tag::HEARTBEAT_ACK);
            put_ballot(&mut raw, Ballot::new(4, ReplicaId(1)));
            put_slot(&mut raw, Slot(3));
            raw.put_slice(applied);
            raw.put_u8(1);
            put_varint(&mut raw, 9);
            raw.freeze()
        };
        assert_eq!(decode(frame(&[3])).unwrap(), ack(3, 3));
        assert_eq!(
            decode(frame(&[4])),
            Err(CodecError::Inconsistent(
                "heartbeat ack's applied index is above its commit index"
            ))
        );
        assert!(matches!(
            decode(frame(&[0xff; 11])),
            Err(CodecError::Overflow { offset: 5 })
        ));
        let whole = frame(&[3]);
        assert_eq!(
            decode(whole.slice(..5)),
            Err(CodecError::Truncated { offset: 5 }),
            "a frame that ends before the applied index"
        );
        // A version-2 ack (no applied index) is refused by its version, not
        // misread with its flag as the applied index.
        let mut old = whole.to_vec();
        old[0] = 2;
        old.remove(5);
        assert_eq!(decode(Bytes::from(old)), Err(CodecError::Version(2)));
    }

    #[test]
    fn rejects_malformed_membership() {
        let msg = Message::Accept(msg::Accept {
            ballot: Ballot::new(1, ReplicaId(1)),
            slot: Slot(1),
            commit_index: Slot::ZERO,
            value: Value::Reconfigure(Reconfiguration {
                base: Slot::ZERO,
                membership: Membership {
                    voters: vec![ReplicaId(2), ReplicaId(1)],
                    learners: vec![],
                },
            }),
        });
        assert_eq!(
            decode(encode_to_bytes(&msg)),
            Err(CodecError::BadMembership)
        );
    }

    #[test]
    fn request_payloads_are_zero_copy_slices_of_the_frame() {
        let payload = Bytes::from(vec![7u8; 1000]);
        let msg = Message::Accept(msg::Accept {
            ballot: Ballot::new(3, ReplicaId(1)),
            slot: Slot(9),
            commit_index: Slot(8),
            value: Value::Requests(payload),
        });
        let frame = encode_to_bytes(&msg);
        let range = frame.as_ptr() as usize..frame.as_ptr() as usize + frame.len();
        match decode(frame.clone()).unwrap() {
            Message::Accept(msg::Accept {
                value: Value::Requests(b),
                ..
            }) => {
                assert!(range.contains(&(b.as_ptr() as usize)), "payload was copied");
                assert_eq!(b.len(), 1000);
            }
            other => panic!("decoded to {other:?}"),
        }
    }
}
