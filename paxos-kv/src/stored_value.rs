//! [`StoredValue`]: how the KV table holds one value. Every value is
//! reference-counted: a copy-on-write shard copy made during a checkpoint
//! shares it, and a large one is stored framed so that a reply that sends
//! it holds a reference, not a copy.
//!
//! Why: a GET's reply used to be a copy of the value (its RESP framing
//! around it), so a client that pipelined N GETs of a 500 KiB value made
//! the node hold N copies until it read them. A value of at least
//! [`SHARED_VALUE_MIN`] bytes is now stored already framed as a RESP bulk
//! string (`$<len>\r\n<value>\r\n`) behind an `Arc`, and
//! [`StoredValue::shared_bulk_reply`] hands out that buffer itself as the
//! reply's `Bytes` (`Bytes::from_owner` keeps the `Arc` alive). The reply
//! chain queues a large reply as its own segment and `writev`s it from
//! there, so from the table to the socket the value is never copied, and N
//! pending replies cost N reference counts (and N small `Bytes` headers).
//! Storing the framing with the value is what lets the reply stay one
//! `Bytes`, the type every state-machine output is; it costs about a dozen
//! bytes per large value.
//!
//! Memory: the handle is 16 bytes in both forms, so a table bucket stays
//! 40 bytes. The enum needs no tag word: the compiler marks one form with
//! the other's null pointer (asserted below), so this is plain safe Rust,
//! with no `unsafe` to review.
//!
//! Copy-on-write, and why small values are counted too: cloning a
//! [`StoredValue`] is what a table shard does when a frozen checkpoint
//! view still shares it. Small values used to be boxed slices, copied by
//! that clone; writes spread over the keys touch every shard within a few
//! thousand writes, so each checkpoint copied nearly every value — about
//! 150 bytes per key of 100-byte values, for as long as the checkpoint ran
//! (seconds at ten million keys, and checkpoints follow each other under
//! load), and the loop paid an allocation and a copy per value of each
//! shard it first wrote. Now a clone bumps a count: a shard copy costs its
//! buckets. The price is the count's 16 bytes in every small value's
//! allocation (the scale benchmark's numbers are in docs/BENCHMARKS.md).

use bytes::Bytes;
use std::io::Write;
use std::sync::Arc;

/// Values at least this long are stored framed as a RESP reply; shorter
/// ones are stored bare (both behind an `Arc`).
///
/// 4 KiB: below it, copying the value into its reply costs about as much
/// as the sharing itself (a reference count, a small `Bytes` owner
/// allocation per reply, two allocations per stored value and ~40 bytes of
/// headers), and the reply chain coalesces replies under 1 KiB into one
/// buffer anyway; from it up, the extra bytes are at most 1% of the value,
/// and a copy per pending reply is what made a pipelining client's replies
/// cost the node gigabytes. Small values, the common case (issue #16's
/// 100-byte values), keep their exact old layout.
pub const SHARED_VALUE_MIN: usize = 4096;

/// One stored value. Its length alone decides its form:
/// `Small` below [`SHARED_VALUE_MIN`] bytes, `Shared` from it up.
#[derive(Clone)]
pub enum StoredValue {
    /// A small value, shared with frozen checkpoint views.
    Small(Arc<[u8]>),
    /// A large value, framed as a RESP bulk string, shared by the table,
    /// frozen checkpoint views and pending replies.
    Shared(Arc<FramedValue>),
}

// The memory argument above relies on this (64-bit targets): the shared
// form fits beside the small form's niche, so the enum is no larger than a
// `Box<[u8]>`.
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<StoredValue>() == 16);

/// A large value inside its RESP bulk-string framing.
pub struct FramedValue {
    /// `$<len>\r\n<value>\r\n`.
    framed: Box<[u8]>,
    /// Length of the `$<len>\r\n` header.
    header_len: usize,
}

impl FramedValue {
    fn new(value: &[u8]) -> FramedValue {
        // Exactly "$" + the length's digits + "\r\n" + value + "\r\n", so
        // that `into_boxed_slice` has no spare capacity to give back.
        let digits = value.len().checked_ilog10().map_or(1, |d| d as usize + 1);
        let header_len = 1 + digits + 2;
        let mut framed = Vec::with_capacity(header_len + value.len() + 2);
        // Writing to a Vec cannot fail.
        let _ = write!(framed, "${}\r\n", value.len());
        assert_eq!(framed.len(), header_len);
        framed.extend_from_slice(value);
        framed.extend_from_slice(b"\r\n");
        FramedValue {
            framed: framed.into_boxed_slice(),
            header_len,
        }
    }

    fn value(&self) -> &[u8] {
        &self.framed[self.header_len..self.framed.len() - 2]
    }

    fn value_mut(&mut self) -> &mut [u8] {
        let end = self.framed.len() - 2;
        &mut self.framed[self.header_len..end]
    }
}

/// The owner `Bytes::from_owner` keeps alive for a reply: one reference to
/// the framed value.
struct BulkReplyOwner(Arc<FramedValue>);

impl AsRef<[u8]> for BulkReplyOwner {
    fn as_ref(&self) -> &[u8] {
        &self.0.framed
    }
}

impl StoredValue {
    /// A copy of `value`, in the form its length calls for.
    pub fn new(value: &[u8]) -> StoredValue {
        if value.len() >= SHARED_VALUE_MIN {
            StoredValue::Shared(Arc::new(FramedValue::new(value)))
        } else {
            StoredValue::Small(Arc::from(value))
        }
    }

    /// The value's bytes.
    pub fn as_slice(&self) -> &[u8] {
        match self {
            StoredValue::Small(b) => b,
            StoredValue::Shared(f) => f.value(),
        }
    }

    /// Replaces the value with a copy of `value`. Writes in place, allocating
    /// nothing, when the length is unchanged and nobody else holds the old
    /// bytes (no pending reply, no frozen view); otherwise the old bytes
    /// stay with whoever still holds them and a new value is made.
    pub fn overwrite(&mut self, value: &[u8]) {
        let in_place = match self {
            StoredValue::Small(b) => Arc::get_mut(b).filter(|v| v.len() == value.len()),
            StoredValue::Shared(f) => Arc::get_mut(f)
                .map(FramedValue::value_mut)
                .filter(|v| v.len() == value.len()),
        };
        match in_place {
            Some(bytes) => bytes.copy_from_slice(value),
            None => *self = StoredValue::new(value),
        }
    }

    /// For a shared value: its whole RESP bulk-string reply, as a `Bytes`
    /// over the stored buffer itself (no copy; it keeps the value alive
    /// after an overwrite or removal). `None` for a small value, whose
    /// reply is built by copying.
    pub fn shared_bulk_reply(&self) -> Option<Bytes> {
        match self {
            StoredValue::Small(_) => None,
            StoredValue::Shared(f) => Some(Bytes::from_owner(BulkReplyOwner(Arc::clone(f)))),
        }
    }

    /// How many holders share this value's bytes (the table, frozen views,
    /// pending replies of a large one). For tests and accounting.
    pub fn holders(&self) -> usize {
        match self {
            StoredValue::Small(b) => Arc::strong_count(b),
            StoredValue::Shared(f) => Arc::strong_count(f),
        }
    }
}

impl std::fmt::Debug for StoredValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let form = match self {
            StoredValue::Small(_) => "Small",
            StoredValue::Shared(_) => "Shared",
        };
        f.debug_struct(form)
            .field("len", &self.as_slice().len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    fn bulk(value: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        crate::resp::write_bulk(&mut out, Some(value));
        out.to_vec()
    }

    fn is_shared(v: &StoredValue) -> bool {
        matches!(v, StoredValue::Shared(_))
    }

    #[test]
    fn the_length_alone_picks_the_form() {
        for len in [0, 1, 100, SHARED_VALUE_MIN - 1] {
            let v = StoredValue::new(&vec![7u8; len]);
            assert!(!is_shared(&v), "{len}");
            assert_eq!(v.as_slice(), &vec![7u8; len][..]);
            assert!(v.shared_bulk_reply().is_none());
        }
        // (Lengths around a new digit in the `$<len>` header too.)
        for len in [
            SHARED_VALUE_MIN,
            SHARED_VALUE_MIN + 1,
            9_999,
            10_000,
            99_999,
            100_000,
            1 << 20,
        ] {
            let v = StoredValue::new(&vec![9u8; len]);
            assert!(is_shared(&v), "{len}");
            assert_eq!(v.as_slice(), &vec![9u8; len][..]);
            assert_eq!(&v.shared_bulk_reply().unwrap()[..], &bulk(v.as_slice())[..]);
        }
    }

    #[test]
    fn a_shared_reply_is_the_resp_bulk_string_over_the_stored_bytes() {
        let value: Vec<u8> = (0..SHARED_VALUE_MIN * 3).map(|i| i as u8).collect();
        let v = StoredValue::new(&value);
        let reply = v.shared_bulk_reply().expect("large values are shared");
        assert_eq!(&reply[..], &bulk(&value)[..]);
        // The reply points into the stored buffer: nothing was copied.
        let header = format!("${}\r\n", value.len()).len();
        assert_eq!(reply[header..].as_ptr(), v.as_slice().as_ptr());
        assert_eq!(v.holders(), 2);
        let more: Vec<Bytes> = (0..100).map(|_| v.shared_bulk_reply().unwrap()).collect();
        assert_eq!(v.holders(), 102);
        drop(more);
        drop(reply);
        assert_eq!(v.holders(), 1);
    }

    #[test]
    fn clones_share_values_of_both_forms() {
        let small = StoredValue::new(b"small");
        let small_clone = small.clone();
        assert_eq!(small.as_slice().as_ptr(), small_clone.as_slice().as_ptr());
        assert_eq!(small_clone.as_slice(), b"small");
        assert_eq!(small.holders(), 2);
        // A value a frozen view still holds is replaced, not written over.
        let mut written = small_clone;
        written.overwrite(b"SMALL");
        assert_eq!(small.as_slice(), b"small");
        assert_eq!(written.as_slice(), b"SMALL");
        assert_eq!(small.holders(), 1);

        let large = StoredValue::new(&[1u8; SHARED_VALUE_MIN]);
        let large_clone = large.clone();
        assert_eq!(large.as_slice().as_ptr(), large_clone.as_slice().as_ptr());
        assert_eq!(large.holders(), 2);
        drop(large_clone);
        assert_eq!(large.holders(), 1);
    }

    #[test]
    fn overwrite_in_place_only_when_the_size_matches_and_nobody_else_holds_it() {
        // Small, same size, unshared: in place.
        let mut v = StoredValue::new(b"abc");
        let before = v.as_slice().as_ptr();
        v.overwrite(b"xyz");
        assert_eq!((v.as_slice(), v.as_slice().as_ptr()), (&b"xyz"[..], before));
        v.overwrite(b"longer");
        assert_eq!(v.as_slice(), b"longer");

        // Shared, same size, unshared: in place.
        let mut v = StoredValue::new(&[1u8; SHARED_VALUE_MIN]);
        let before = v.as_slice().as_ptr();
        v.overwrite(&[2u8; SHARED_VALUE_MIN]);
        assert_eq!(v.as_slice().as_ptr(), before);
        assert_eq!(v.as_slice(), &[2u8; SHARED_VALUE_MIN][..]);

        // Shared, same size, but a pending reply holds it: the reply keeps
        // the old bytes, the table gets new ones.
        let pending = v.shared_bulk_reply().unwrap();
        v.overwrite(&[3u8; SHARED_VALUE_MIN]);
        assert_ne!(v.as_slice().as_ptr(), before);
        assert_eq!(v.as_slice(), &[3u8; SHARED_VALUE_MIN][..]);
        assert_eq!(&pending[..], &bulk(&[2u8; SHARED_VALUE_MIN])[..]);
        assert_eq!(v.holders(), 1);
    }

    #[test]
    fn a_value_crossing_the_threshold_changes_form_both_ways() {
        let mut v = StoredValue::new(&[5u8; SHARED_VALUE_MIN - 1]);
        assert!(!is_shared(&v));
        v.overwrite(&[6u8; SHARED_VALUE_MIN]);
        assert!(is_shared(&v));
        assert_eq!(v.as_slice(), &[6u8; SHARED_VALUE_MIN][..]);
        let pending = v.shared_bulk_reply().unwrap();
        v.overwrite(b"tiny");
        assert!(!is_shared(&v));
        assert_eq!(v.as_slice(), b"tiny");
        assert_eq!(&pending[..], &bulk(&[6u8; SHARED_VALUE_MIN])[..]);
        v.overwrite(&[]);
        assert_eq!(v.as_slice(), b"");
    }

    #[test]
    fn a_reply_outlives_the_value_it_was_taken_from() {
        let v = StoredValue::new(&[4u8; SHARED_VALUE_MIN + 10]);
        let reply = v.shared_bulk_reply().unwrap();
        drop(v);
        assert_eq!(&reply[..], &bulk(&[4u8; SHARED_VALUE_MIN + 10])[..]);
        let sliced = reply.slice(3..);
        drop(reply);
        assert_eq!(sliced.len(), bulk(&[4u8; SHARED_VALUE_MIN + 10]).len() - 3);
    }
}
