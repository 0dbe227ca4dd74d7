//! How the node frames a decree: a header naming the proposal, then the
//! requests.
//!
//! A decree's value (`Value::Requests`) is a paxos-core batch
//! ([`paxos_core::batch`]); the node makes its first entry a *header*:
//!
//! ```text
//! u8 kind (0xB0 client requests, 0xB1 directory commands)
//! | u32 proposer | u64 boot nonce | u64 counter | u64 time_us      (29 bytes)
//! ```
//!
//! and the remaining entries are the requests. The header does two jobs:
//!
//! - **Recognising one's own proposals.** `(proposer, nonce, counter)` is
//!   unique per proposal (the nonce is drawn per boot, the counter counts
//!   proposals of that boot), so when a decree is applied the proposer knows
//!   in O(1) whether the chosen value is the batch it proposed at that slot
//!   — even if another leader's batch holds byte-identical requests.
//! - **Deterministic time.** `time_us` is the proposer's clock, the same on
//!   every replica; state machines that need time (expiry) read it from
//!   [`crate::Decree`] instead of a local clock.
//!
//! Batches written before this framing existed began with a 21-byte tag
//! `0xFF | u32 proposer | u64 nonce | u64 counter`; they still parse, as
//! client batches with time 0.
//!
//! Decoding never panics: a decree that does not parse is a
//! [`FramingError`], and every replica skips it the same way.

use bytes::{BufMut, Bytes};
use paxos_core::batch::{self, BatchArena, BatchBuilder, BatchError, BatchIter, BatchLimits};
use paxos_core::ReplicaId;

/// Bytes of an encoded header.
pub const HEADER_LEN: usize = 29;
const KIND_CLIENT: u8 = 0xB0;
const KIND_DIRECTORY: u8 = 0xB1;
const LEGACY_TAG: u8 = 0xFF;
const LEGACY_TAG_LEN: usize = 21;

/// What the requests of a decree are for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DecreeKind {
    /// Client requests for the application's state machine.
    Client,
    /// Commands for the node's replicated directory (address book).
    Directory,
}

/// Identifies one proposal: unique across the cluster's history.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProposalTag {
    /// The proposing replica.
    pub proposer: ReplicaId,
    /// Drawn once per boot of the proposer.
    pub nonce: u64,
    /// Proposals of that boot so far.
    pub counter: u64,
}

/// The first entry of every framed decree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Who gets the requests.
    pub kind: DecreeKind,
    /// Which proposal this is.
    pub tag: ProposalTag,
    /// The proposer's clock (µs since the Unix epoch; 0 if unknown).
    pub time_us: u64,
}

impl Header {
    /// The encoded header.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        let mut w = &mut out[..];
        w.put_u8(match self.kind {
            DecreeKind::Client => KIND_CLIENT,
            DecreeKind::Directory => KIND_DIRECTORY,
        });
        w.put_u32_le(self.tag.proposer.0);
        w.put_u64_le(self.tag.nonce);
        w.put_u64_le(self.tag.counter);
        w.put_u64_le(self.time_us);
        out
    }

    /// Parses an encoded header (or a legacy tag).
    pub fn decode(bytes: &[u8]) -> Result<Header, FramingError> {
        let u32_at = |at: usize| {
            let mut a = [0u8; 4];
            a.copy_from_slice(&bytes[at..at + 4]);
            u32::from_le_bytes(a)
        };
        let u64_at = |at: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(a)
        };
        let kind = match (bytes.first(), bytes.len()) {
            (Some(&KIND_CLIENT), HEADER_LEN) => DecreeKind::Client,
            (Some(&KIND_DIRECTORY), HEADER_LEN) => DecreeKind::Directory,
            (Some(&LEGACY_TAG), LEGACY_TAG_LEN) => {
                return Ok(Header {
                    kind: DecreeKind::Client,
                    tag: ProposalTag {
                        proposer: ReplicaId(u32_at(1)),
                        nonce: u64_at(5),
                        counter: u64_at(13),
                    },
                    time_us: 0,
                })
            }
            _ => return Err(FramingError::BadHeader { len: bytes.len() }),
        };
        Ok(Header {
            kind,
            tag: ProposalTag {
                proposer: ReplicaId(u32_at(1)),
                nonce: u64_at(5),
                counter: u64_at(13),
            },
            time_us: u64_at(21),
        })
    }
}

/// Why a decree's value is not a framed batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// The batch itself does not decode.
    #[error("batch does not decode: {0}")]
    Batch(#[from] BatchError),
    /// The batch is empty: it has no header.
    #[error("batch has no header")]
    Empty,
    /// The first entry is not a header.
    #[error("first entry ({len} bytes) is not a decree header")]
    BadHeader {
        /// Its length.
        len: usize,
    },
}

/// Splits a framed decree into its header and an iterator over its
/// requests (zero-copy slices of `value`).
pub fn parse(value: &Bytes) -> Result<(Header, BatchIter), FramingError> {
    let mut entries = batch::iter(value)?;
    let first = entries.next().ok_or(FramingError::Empty)?;
    let header = Header::decode(&first)?;
    Ok((header, entries))
}

/// Builds one framed decree up to the batch limits (the header counts
/// against them).
#[derive(Debug)]
pub struct FramedBuilder {
    inner: BatchBuilder,
}

impl FramedBuilder {
    /// A decree holding just `header`.
    pub fn new(limits: BatchLimits, header: &Header) -> FramedBuilder {
        let mut inner = BatchBuilder::new(limits);
        inner.push(&header.encode());
        FramedBuilder { inner }
    }

    /// A decree holding just `header`, carved from `arena` (see
    /// [`BatchArena`] for why); finish it with [`FramedBuilder::finish_in`].
    pub fn new_in(limits: BatchLimits, header: &Header, arena: &mut BatchArena) -> FramedBuilder {
        let mut inner = BatchBuilder::new_in(limits, arena);
        inner.push(&header.encode());
        FramedBuilder { inner }
    }

    /// Whether a request of `len` bytes still fits.
    pub fn fits(&self, len: usize) -> bool {
        self.inner.fits(len)
    }

    /// Adds a request; returns whether it fit.
    pub fn push(&mut self, request: &[u8]) -> bool {
        self.fits(request.len()) && self.inner.push(request)
    }

    /// Requests added (the header not counted).
    pub fn requests(&self) -> usize {
        self.inner.len() - 1
    }

    /// Encoded bytes so far.
    pub fn encoded_len(&self) -> usize {
        self.inner.encoded_len()
    }

    /// The encoded decree.
    pub fn finish(self) -> Bytes {
        self.inner.finish()
    }

    /// The encoded decree, split off `arena`'s chunk.
    pub fn finish_in(self, arena: &mut BatchArena) -> Bytes {
        self.inner.finish_in(arena)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header(kind: DecreeKind) -> Header {
        Header {
            kind,
            tag: ProposalTag {
                proposer: ReplicaId(7),
                nonce: 0xDEAD_BEEF,
                counter: 42,
            },
            time_us: 1_700_000_000_000_000,
        }
    }

    #[test]
    fn framed_decrees_round_trip() {
        for kind in [DecreeKind::Client, DecreeKind::Directory] {
            let mut b = FramedBuilder::new(BatchLimits::default(), &header(kind));
            assert!(b.push(b"one"));
            assert!(b.push(b""));
            assert!(b.push(b"three"));
            assert_eq!(b.requests(), 3);
            let value = b.finish();
            let (h, rest) = parse(&value).unwrap();
            assert_eq!(h, header(kind));
            let requests: Vec<Bytes> = rest.collect();
            assert_eq!(requests, vec![&b"one"[..], b"", b"three"]);
        }
    }

    #[test]
    fn legacy_tags_parse_as_client_batches() {
        let mut tag = [0u8; 21];
        tag[0] = 0xFF;
        tag[1..5].copy_from_slice(&3u32.to_le_bytes());
        tag[5..13].copy_from_slice(&9u64.to_le_bytes());
        tag[13..21].copy_from_slice(&5u64.to_le_bytes());
        let value = batch::encode([&tag[..], b"req"]);
        let (h, rest) = parse(&value).unwrap();
        assert_eq!(h.kind, DecreeKind::Client);
        assert_eq!(
            h.tag,
            ProposalTag {
                proposer: ReplicaId(3),
                nonce: 9,
                counter: 5
            }
        );
        assert_eq!(rest.count(), 1);
    }

    #[test]
    fn unframed_values_are_errors() {
        assert_eq!(
            parse(&batch::encode(std::iter::empty::<&[u8]>())).err(),
            Some(FramingError::Empty)
        );
        assert_eq!(
            parse(&batch::encode([&b"not a header"[..]])).err(),
            Some(FramingError::BadHeader { len: 12 })
        );
        assert!(matches!(
            parse(&Bytes::from_static(b"\x05")),
            Err(FramingError::Batch(_))
        ));
    }

    #[test]
    fn the_header_counts_against_the_limits() {
        let limits = BatchLimits {
            max_requests: 2,
            max_bytes: 4 + (4 + HEADER_LEN) + (4 + 10),
        };
        let mut b = FramedBuilder::new(limits, &header(DecreeKind::Client));
        assert!(!b.fits(11), "over the byte limit");
        assert!(b.push(&[1u8; 10]));
        assert!(!b.fits(0), "over the request limit");
        assert!(!b.push(b""));
    }

    proptest! {
        #[test]
        fn arbitrary_values_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..80)) {
            let value = Bytes::from(raw);
            if let Ok((_, rest)) = parse(&value) {
                for r in rest {
                    prop_assert!(r.len() <= value.len());
                }
            }
        }
    }
}
