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
