//! The encoding of a batch of client requests inside one decree
//! ([`Value::Requests`](crate::Value::Requests)).
//!
//! Layout, all integers little-endian:
//!
//! ```text
//! u32 count | count × (u32 len | len bytes)
//! ```
//!
//! Decoding never panics: a batch that arrived over the network or from disk
//! and does not parse is a [`BatchError`]. Iteration hands out [`Bytes`]
//! slices of the batch buffer, so reading requests copies nothing.

use bytes::{BufMut, Bytes, BytesMut};
use paxos_contracts::{ensures, invariant};

/// Limits on one batch. A decree never exceeds either.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchLimits {
    /// Most requests in one batch.
    pub max_requests: usize,
    /// Most encoded bytes in one batch, header included.
    pub max_bytes: usize,
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits {
            max_requests: 4096,
            max_bytes: 1 << 20,
        }
    }
}

/// Why a batch could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// The buffer ended inside a header or a request.
    #[error("batch truncated at byte {offset}")]
    Truncated {
        /// Where the missing bytes should have started.
        offset: usize,
    },
    /// Bytes were left after the last request.
    #[error("{extra} trailing bytes after the last request")]
    TrailingBytes {
        /// How many.
        extra: usize,
    },
}

/// Size of one [`BatchArena`] chunk.
pub const ARENA_CHUNK: usize = 64 * 1024;

/// A [`BatchArena`] with less room than this left starts a new chunk for
/// the next batch (so at most this much of a chunk is never used).
const ARENA_MIN_ROOM: usize = 8 * 1024;

/// Memory that consecutive batches are carved from, so that a decree holds
/// only its own bytes.
///
/// Why: a decree outlives its building by a long way (the core keeps it for
/// catch-up until `retain_bytes` pushes it out, and the log's index until
/// the next checkpoint). A batch built in a buffer of its own kept that
/// buffer's whole capacity alive: 64 KiB behind a 2 KiB decree, which made
/// the leader's retained log many times its counted payload. Here a batch
/// is split off the front of a shared 64 KiB chunk and the rest of the
/// chunk goes to the next batch; a chunk is freed when every decree cut
/// from it is. Decrees are dropped roughly in slot order, so what a chunk
/// pins beyond live decrees is at most its unused tail
/// (`ARENA_MIN_ROOM`) and the decrees' neighbours awaiting the same
/// compaction. No byte is copied to get this.
#[derive(Debug, Default)]
pub struct BatchArena {
    /// What is left of the current chunk (empty, capacity = room).
    spare: BytesMut,
}

impl BatchArena {
    /// An arena with no chunk yet (the first batch allocates one).
    pub fn new() -> BatchArena {
        BatchArena::default()
    }

    /// Room left in the current chunk.
    pub fn room(&self) -> usize {
        self.spare.capacity()
    }
}

/// Builds one batch up to its limits.
#[derive(Debug)]
pub struct BatchBuilder {
    buf: BytesMut,
    count: u32,
    limits: BatchLimits,
}

impl BatchBuilder {
    /// An empty batch with these limits.
    pub fn new(limits: BatchLimits) -> Self {
        let mut buf = BytesMut::with_capacity(limits.max_bytes.min(64 * 1024));
        buf.put_u32_le(0);
        BatchBuilder {
            buf,
            count: 0,
            limits,
        }
    }

    /// An empty batch carved from `arena`'s current chunk (or a new one
    /// when little room is left). Finish it with
    /// [`BatchBuilder::finish_in`] to hand the rest of the chunk back.
    pub fn new_in(limits: BatchLimits, arena: &mut BatchArena) -> Self {
        let mut buf = std::mem::take(&mut arena.spare);
        if buf.capacity() < ARENA_MIN_ROOM.min(limits.max_bytes) {
            // The old chunk stays alive only through the decrees cut from
            // it; `reserve` on the shared tail allocates a fresh chunk.
            buf = BytesMut::with_capacity(ARENA_CHUNK.min(limits.max_bytes));
        }
        invariant!(buf.is_empty(), "an arena's spare room holds no bytes");
        buf.put_u32_le(0);
        BatchBuilder {
            buf,
            count: 0,
            limits,
        }
    }

    /// Whether a request of `len` bytes would still fit.
    pub fn fits(&self, len: usize) -> bool {
        (self.count as usize) < self.limits.max_requests
            && self.buf.len() + 4 + len <= self.limits.max_bytes
    }

    /// Adds a request if it fits; returns whether it was added.
    ///
    /// A single request larger than the byte limit is accepted into an empty
    /// batch, so that no request can be stuck forever; callers bound request
    /// size separately.
    pub fn push(&mut self, request: &[u8]) -> bool {
        if !(self.fits(request.len()) || self.count == 0) {
            return false;
        }
        self.buf.put_u32_le(request.len() as u32);
        self.buf.put_slice(request);
        self.count += 1;
        true
    }

    /// Number of requests so far.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether no request was added.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Encoded size so far.
    pub fn encoded_len(&self) -> usize {
        self.buf.len()
    }

    /// Finishes the batch.
    pub fn finish(mut self) -> Bytes {
        self.buf[..4].copy_from_slice(&self.count.to_le_bytes());
        self.buf.freeze()
    }

    /// Finishes a batch started with [`BatchBuilder::new_in`]: the batch
    /// is split off its chunk and the chunk's remaining room goes back to
    /// `arena` for the next batch.
    pub fn finish_in(mut self, arena: &mut BatchArena) -> Bytes {
        self.buf[..4].copy_from_slice(&self.count.to_le_bytes());
        let encoded = self.buf.len();
        let batch = self.buf.split().freeze();
        arena.spare = self.buf;
        ensures!(
            batch.len() == encoded && arena.spare.is_empty(),
            "the batch holds exactly its bytes and the room handed back none"
        );
        batch
    }
}

/// Encodes requests as one batch, ignoring limits (tests and tools).
pub fn encode<'a>(requests: impl IntoIterator<Item = &'a [u8]>) -> Bytes {
    let mut b = BatchBuilder::new(BatchLimits {
        max_requests: usize::MAX,
        max_bytes: usize::MAX,
    });
    for r in requests {
        let added = b.push(r);
        debug_assert!(added);
    }
    b.finish()
}

/// Decodes a batch into zero-copy request slices, checking its whole framing
/// first.
pub fn decode(batch: &Bytes) -> Result<Vec<Bytes>, BatchError> {
    let mut out = Vec::new();
    for r in iter(batch)? {
        out.push(r);
    }
    Ok(out)
}

/// Checks a batch's framing and returns an iterator over its requests.
pub fn iter(batch: &Bytes) -> Result<BatchIter, BatchError> {
    let count = read_u32(batch, 0)? as usize;
    let mut offset = 4;
    for _ in 0..count {
        let len = read_u32(batch, offset)? as usize;
        offset += 4;
        if batch.len() - offset < len {
            return Err(BatchError::Truncated { offset });
        }
        offset += len;
    }
    if offset != batch.len() {
        return Err(BatchError::TrailingBytes {
            extra: batch.len() - offset,
        });
    }
    Ok(BatchIter {
        batch: batch.clone(),
        offset: 4,
        remaining: count,
    })
}

fn read_u32(buf: &[u8], offset: usize) -> Result<u32, BatchError> {
    buf.get(offset..offset + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(BatchError::Truncated { offset })
}

/// Iterates the requests of a batch whose framing was checked by [`iter`].
#[derive(Debug, Clone)]
pub struct BatchIter {
    batch: Bytes,
    offset: usize,
    remaining: usize,
}

impl Iterator for BatchIter {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        if self.remaining == 0 {
            return None;
        }
        // Framing was validated in `iter`, so these reads are in bounds.
        let len = read_u32(&self.batch, self.offset).ok()? as usize;
        let start = self.offset + 4;
        self.offset = start + len;
        self.remaining -= 1;
        Some(self.batch.slice(start..start + len))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl ExactSizeIterator for BatchIter {}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn builder_respects_limits() {
        let mut b = BatchBuilder::new(BatchLimits {
            max_requests: 3,
            max_bytes: 64,
        });
        assert!(b.push(b"a"));
        assert!(b.push(b"bb"));
        assert!(!b.push(&[0u8; 60]), "byte limit");
        assert!(b.push(b"c"));
        assert!(!b.push(b"d"), "count limit");
        let bytes = b.finish();
        let reqs = decode(&bytes).unwrap();
        assert_eq!(
            reqs,
            vec![
                Bytes::from_static(b"a"),
                Bytes::from_static(b"bb"),
                Bytes::from_static(b"c")
            ]
        );
    }

    #[test]
    fn arena_batches_share_a_chunk_and_hold_only_their_own_bytes() {
        let limits = BatchLimits::default();
        let mut arena = BatchArena::new();
        let mut batches = Vec::new();
        for i in 0..200u32 {
            let mut b = BatchBuilder::new_in(limits, &mut arena);
            let request = vec![i as u8; 1000];
            assert!(b.push(&request));
            assert!(b.push(&i.to_le_bytes()));
            let batch = b.finish_in(&mut arena);
            assert_eq!(batch.len(), 4 + 4 + 1000 + 4 + 4, "exactly its own bytes");
            assert!(arena.room() < ARENA_CHUNK);
            batches.push(batch);
        }
        // A batch that does not start where the previous one ended opened
        // a new chunk. 1,016-byte batches, a new 64 KiB chunk whenever
        // under 8 KiB is left: 57 batches per chunk, so 200 take 4 chunks.
        let chunks = 1 + batches
            .windows(2)
            .filter(|w| w[1].as_ptr() as usize != w[0].as_ptr() as usize + w[0].len())
            .count();
        assert_eq!(chunks, 4);
        for (i, batch) in batches.iter().enumerate() {
            let reqs = decode(batch).unwrap();
            assert_eq!(reqs[0], vec![i as u8; 1000]);
            assert_eq!(reqs[1], (i as u32).to_le_bytes().to_vec());
        }
        // Dropping the early batches leaves the later ones intact.
        batches.drain(..100);
        for (i, batch) in batches.iter().enumerate() {
            assert_eq!(decode(batch).unwrap()[0], vec![(i + 100) as u8; 1000]);
        }
    }

    #[test]
    fn a_batch_larger_than_a_chunk_grows_and_the_arena_goes_on() {
        let limits = BatchLimits::default();
        let mut arena = BatchArena::new();
        let mut b = BatchBuilder::new_in(limits, &mut arena);
        for _ in 0..100 {
            assert!(b.push(&[7u8; 1000]));
        }
        let big = b.finish_in(&mut arena);
        assert_eq!(decode(&big).unwrap().len(), 100);
        let mut b = BatchBuilder::new_in(limits, &mut arena);
        assert!(b.push(b"next"));
        let next = b.finish_in(&mut arena);
        assert_eq!(decode(&next).unwrap(), vec![Bytes::from_static(b"next")]);
        assert_eq!(decode(&big).unwrap().len(), 100);
    }

    #[test]
    fn oversized_request_goes_alone() {
        let mut b = BatchBuilder::new(BatchLimits {
            max_requests: 8,
            max_bytes: 16,
        });
        assert!(b.push(&[1u8; 100]));
        assert!(!b.push(b"x"));
        assert_eq!(decode(&b.finish()).unwrap().len(), 1);
    }

    #[test]
    fn corrupt_batches_are_errors() {
        assert_eq!(
            decode(&Bytes::from_static(&[1, 0])),
            Err(BatchError::Truncated { offset: 0 })
        );
        assert!(matches!(
            decode(&Bytes::from_static(&[1, 0, 0, 0, 9, 0, 0, 0, 1])),
            Err(BatchError::Truncated { .. })
        ));
        assert_eq!(
            decode(&Bytes::from_static(&[0, 0, 0, 0, 7])),
            Err(BatchError::TrailingBytes { extra: 1 })
        );
        // A huge count with no data must fail fast, not allocate.
        assert!(decode(&Bytes::from_static(&[255, 255, 255, 255])).is_err());
    }

    proptest! {
        #[test]
        fn roundtrip(reqs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..20)) {
            let bytes = encode(reqs.iter().map(|r| r.as_slice()));
            let back = decode(&bytes).unwrap();
            prop_assert_eq!(back.iter().map(|b| b.to_vec()).collect::<Vec<_>>(), reqs);
        }

        #[test]
        fn arbitrary_bytes_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&Bytes::from(raw));
        }
    }
}
