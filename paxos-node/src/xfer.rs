//! Checkpoint transfer between replicas, for a replica that fell behind
//! everything its peers still keep (paxos-core reports `needs_snapshot`).
//!
//! The messages share the peer transport with paxos-core's. A core message
//! starts with the codec version byte (1); a transfer message starts with
//! [`XFER_MAGIC`], so the two never collide. Layout (little-endian):
//!
//! ```text
//! request:  MAGIC | 1 | u64 slot (0: your newest) | u64 offset | u64 have (requester's applied slot)
//! chunk:    MAGIC | 4 | u64 slot | u64 round | u32 leader | u32 voters | voters × u32
//!                 | u32 learners | learners × u32 | u64 data_len | u64 offset | u32 crc32c | data
//! none:     MAGIC | 3 | u64 slot          (no such checkpoint here)
//! ```
//!
//! The receiver writes chunks into its own checkpoint store with
//! `CheckpointWriter::write_chunk`, which checks each chunk's CRC and that
//! it continues the data; `finish` verifies the whole file before it is
//! renamed into place. Decoding never panics.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use paxos_core::{Ballot, Membership, ReplicaId, Slot};
use paxos_log::checkpoint::{CheckpointMeta, Chunk};

/// First byte of every transfer message.
pub const XFER_MAGIC: u8 = 0xC7;
/// Bytes per chunk.
pub const CHUNK_BYTES: usize = 256 * 1024;
/// Most voters (and, separately, learners) a chunk header may list.
const MAX_MEMBERS: usize = 1024;

/// A checkpoint-transfer message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum XferMessage {
    /// Send me `CHUNK_BYTES` of checkpoint `slot` (0: your newest) at `offset`.
    Request {
        /// The checkpoint, or 0 for the newest.
        slot: Slot,
        /// Byte offset in its data.
        offset: u64,
        /// The requester's applied slot: a newest checkpoint not above it is
        /// useless, and the peer takes a fresh one instead.
        have: Slot,
    },
    /// A piece of a checkpoint.
    Chunk {
        /// What the checkpoint covers.
        meta: CheckpointMeta,
        /// Total data bytes.
        data_len: u64,
        /// The verified piece.
        chunk: Chunk,
    },
    /// The peer has no such checkpoint.
    None {
        /// The slot asked for.
        slot: Slot,
    },
}

/// Why a transfer message did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed checkpoint-transfer message: {0}")]
pub struct XferError(&'static str);

/// Whether a peer message is a transfer message (else it is paxos-core's).
pub fn is_xfer(bytes: &[u8]) -> bool {
    bytes.first() == Some(&XFER_MAGIC)
}

/// Encodes a message.
pub fn encode(msg: &XferMessage) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u8(XFER_MAGIC);
    match msg {
        XferMessage::Request { slot, offset, have } => {
            out.put_u8(1);
            out.put_u64_le(slot.0);
            out.put_u64_le(*offset);
            out.put_u64_le(have.0);
        }
        XferMessage::Chunk {
            meta,
            data_len,
            chunk,
        } => {
            let m = &meta.membership;
            out.reserve(64 + 4 * (m.voters.len() + m.learners.len()) + chunk.data.len());
            out.put_u8(4);
            out.put_u64_le(meta.last_applied.0);
            out.put_u64_le(meta.ballot.round);
            out.put_u32_le(meta.ballot.leader.0);
            for list in [&m.voters, &m.learners] {
                out.put_u32_le(list.len() as u32);
                for id in list {
                    out.put_u32_le(id.0);
                }
            }
            out.put_u64_le(*data_len);
            out.put_u64_le(chunk.offset);
            out.put_u32_le(chunk.crc32c);
            out.put_slice(&chunk.data);
        }
        XferMessage::None { slot } => {
            out.put_u8(3);
            out.put_u64_le(slot.0);
        }
    }
    out.freeze()
}

/// Decodes a message; the chunk data is a zero-copy slice of `bytes`.
pub fn decode(mut bytes: Bytes) -> Result<XferMessage, XferError> {
    fn need(b: &Bytes, n: usize) -> Result<(), XferError> {
        if b.remaining() < n {
            Err(XferError("truncated"))
        } else {
            Ok(())
        }
    }
    need(&bytes, 2)?;
    if bytes.get_u8() != XFER_MAGIC {
        return Err(XferError("bad magic"));
    }
    match bytes.get_u8() {
        1 => {
            need(&bytes, 24)?;
            let slot = Slot(bytes.get_u64_le());
            let offset = bytes.get_u64_le();
            let have = Slot(bytes.get_u64_le());
            Ok(XferMessage::Request { slot, offset, have })
        }
        4 => {
            need(&bytes, 24)?;
            let slot = Slot(bytes.get_u64_le());
            let round = bytes.get_u64_le();
            let leader = bytes.get_u32_le();
            let ids = |bytes: &mut Bytes| {
                need(bytes, 4)?;
                let n = bytes.get_u32_le() as usize;
                if n > MAX_MEMBERS {
                    return Err(XferError("bad member count"));
                }
                need(bytes, 4 * n)?;
                Ok((0..n)
                    .map(|_| ReplicaId(bytes.get_u32_le()))
                    .collect::<Vec<_>>())
            };
            let voters = ids(&mut bytes)?;
            let learners = ids(&mut bytes)?;
            let membership = Membership { voters, learners };
            if !membership.is_well_formed() {
                return Err(XferError("malformed membership"));
            }
            need(&bytes, 20)?;
            let data_len = bytes.get_u64_le();
            let offset = bytes.get_u64_le();
            let crc32c = bytes.get_u32_le();
            let chunk = Chunk {
                offset,
                data: bytes,
                crc32c,
            };
            let meta = CheckpointMeta {
                last_applied: slot,
                ballot: Ballot::new(round, ReplicaId(leader)),
                membership,
            };
            Ok(XferMessage::Chunk {
                meta,
                data_len,
                chunk,
            })
        }
        3 => {
            need(&bytes, 8)?;
            Ok(XferMessage::None {
                slot: Slot(bytes.get_u64_le()),
            })
        }
        _ => Err(XferError("unknown kind")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn messages_roundtrip() {
        let data = Bytes::from_static(b"some checkpoint bytes");
        let msgs = vec![
            XferMessage::Request {
                slot: Slot::ZERO,
                offset: 7,
                have: Slot(3),
            },
            XferMessage::None { slot: Slot(9) },
            XferMessage::Chunk {
                meta: CheckpointMeta {
                    last_applied: Slot(42),
                    ballot: Ballot::new(3, ReplicaId(2)),
                    membership: Membership {
                        voters: vec![ReplicaId(1), ReplicaId(2), ReplicaId(3)],
                        learners: vec![ReplicaId(4)],
                    },
                },
                data_len: 100,
                chunk: Chunk {
                    offset: 10,
                    crc32c: crc32c::crc32c(&data),
                    data,
                },
            },
        ];
        for m in msgs {
            let bytes = encode(&m);
            assert!(is_xfer(&bytes));
            assert_eq!(decode(bytes).unwrap(), m);
        }
        let mut core = BytesMut::new();
        paxos_core::codec::encode(
            &paxos_core::Message::Fetch(paxos_core::msg::Fetch { from_slot: Slot(1) }),
            &mut core,
        );
        assert!(!is_xfer(&core), "core messages are told apart");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..96)) {
            let mut b = raw.clone();
            if let Some(first) = b.first_mut() { *first = XFER_MAGIC; }
            let _ = decode(Bytes::from(b));
            let _ = decode(Bytes::from(raw));
        }
    }
}
