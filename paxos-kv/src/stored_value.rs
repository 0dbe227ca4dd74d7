//! `StoredValue`: how the KV table holds one value, as an 8-byte handle
//! the table owns by hand.
//!
//! # Why a raw handle
//!
//! A value is a plain 8-byte pointer, not an `Arc`: every small value
//! would carry a count's 16 bytes (pushing a 100-byte value from a
//! 112-byte malloc chunk into a 128-byte one), and a frozen view needs no
//! count either. Who frees a value is decided by the table's ownership
//! rules (in [`crate::keymap`]): each block has exactly one owner, the
//! table's shard or, for a value the map replaced or removed while a
//! checkpoint's frozen view still needs it, that key's saved state (the
//! block is moved there, not copied). Nothing here frees or writes a value
//! on its own; each `unsafe fn` states what its caller must guarantee.
//!
//! # Forms
//!
//! - **Small** (below [`SHARED_VALUE_MIN`] bytes): one allocation, a
//!   4-byte length then the bytes (100-byte values: 104 bytes, a 112-byte
//!   glibc chunk). Copied into its reply.
//! - **Large** (from [`SHARED_VALUE_MIN`] up): an `Arc` of the value
//!   already framed as a RESP bulk string (`$<len>\r\n<value>\r\n`), so a
//!   GET's reply is that buffer itself (`Bytes::from_owner` holds one
//!   reference): N pending replies of a 500 KiB value cost N counts, not N
//!   copies. The table's own reference is the one the handle stands for.
//!
//! The handle's low bit is a tag (both forms are at least 4-byte
//! aligned): `LARGE_TAG` marks the form.

use bytes::Bytes;
use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use std::io::Write;
use std::mem::ManuallyDrop;
use std::ptr::NonNull;
use std::sync::Arc;

/// Values at least this long are stored framed as a RESP reply and
/// reference-counted; shorter ones are stored bare.
///
/// 4 KiB: below it, copying the value into its reply costs about as much
/// as the sharing itself (a reference count, a small `Bytes` owner
/// allocation per reply, two allocations per stored value and ~40 bytes of
/// headers), and the reply chain coalesces replies under 1 KiB into one
/// buffer anyway; from it up, the extra bytes are at most 1% of the value,
/// and a copy per pending reply is what made a pipelining client's replies
/// cost the node gigabytes.
pub const SHARED_VALUE_MIN: usize = 4096;

/// Tag bit: the handle is an `Arc<FramedValue>`, not a small block.
const LARGE_TAG: usize = 1;
const TAGS: usize = LARGE_TAG;

/// Bytes before a small value's data: its length.
const SMALL_HEADER: usize = 4;

/// One stored value: a tagged pointer to a small block or to a large
/// framed value. `Copy`: see the module docs for who owns what.
#[derive(Clone, Copy)]
pub(crate) struct StoredValue(NonNull<u8>);

// The bucket layout in `keymap` relies on this.
const _: () = assert!(std::mem::size_of::<StoredValue>() == 8);
// A frozen view reads values on a checkpoint thread while the live table
// runs on the loop. The bytes a view can reach are never written or freed
// while it can (the ownership rules in `keymap`); a handle is otherwise a
// pointer to immutable bytes.
unsafe impl Send for StoredValue {}
unsafe impl Sync for StoredValue {}

/// A large value inside its RESP bulk-string framing.
pub(crate) struct FramedValue {
    /// `$<len>\r\n<value>\r\n`.
    framed: Box<[u8]>,
    /// Length of the `$<len>\r\n` header.
    header_len: usize,
}

// `Arc::into_raw` points at the `FramedValue`, which must leave both tag
// bits free.
const _: () = assert!(std::mem::align_of::<FramedValue>() >= 4);

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

/// Test-only accounting of the blocks the table owns by hand (values and
/// long keys), per thread, so the ownership tests can prove that every
/// block is freed exactly once (a leak leaves the count above zero, a
/// double free takes it below).
#[cfg(test)]
pub(crate) mod block_count {
    use std::cell::Cell;

    thread_local! {
        static LIVE: Cell<isize> = const { Cell::new(0) };
    }

    pub(crate) fn made() {
        LIVE.with(|c| c.set(c.get() + 1));
    }

    pub(crate) fn freed() {
        LIVE.with(|c| c.set(c.get() - 1));
    }

    /// Blocks made minus blocks freed on this thread.
    pub(crate) fn live() -> isize {
        LIVE.with(Cell::get)
    }
}

fn small_layout(len: usize) -> Layout {
    // Cannot fail: len < SHARED_VALUE_MIN.
    Layout::from_size_align(SMALL_HEADER + len, 4).expect("small value layout")
}

impl StoredValue {
    /// A new value holding a copy of `value`, in the form its length calls
    /// for. The caller owns it: it must [`StoredValue::release`]
    /// it (or hand it to someone who will) exactly once.
    pub(crate) fn new(value: &[u8]) -> StoredValue {
        #[cfg(test)]
        block_count::made();
        if value.len() >= SHARED_VALUE_MIN {
            let raw = Arc::into_raw(Arc::new(FramedValue::new(value))) as *mut u8;
            // Non-null: it came from an Arc.
            let ptr = NonNull::new(raw).expect("Arc pointer");
            StoredValue(ptr.map_addr(|a| a | LARGE_TAG))
        } else {
            let layout = small_layout(value.len());
            // SAFETY: the layout is at least SMALL_HEADER bytes, not zero.
            let raw = unsafe { alloc(layout) };
            let Some(ptr) = NonNull::new(raw) else {
                handle_alloc_error(layout)
            };
            // SAFETY: the block is SMALL_HEADER + len bytes, 4-aligned, and
            // ours alone.
            unsafe {
                ptr.cast::<u32>().write(value.len() as u32);
                std::ptr::copy_nonoverlapping(
                    value.as_ptr(),
                    ptr.as_ptr().add(SMALL_HEADER),
                    value.len(),
                );
            }
            StoredValue(ptr)
        }
    }

    fn untagged(self) -> NonNull<u8> {
        self.0.map_addr(|a| {
            // The tags sit in alignment bits, so the address stays non-zero.
            std::num::NonZeroUsize::new(a.get() & !TAGS).expect("aligned pointer")
        })
    }

    fn is_large(self) -> bool {
        self.0.addr().get() & LARGE_TAG != 0
    }

    /// The `Arc` this large handle stands for, borrowed (not dropped).
    ///
    /// # Safety
    /// The handle is large and its value not released.
    unsafe fn framed(self) -> ManuallyDrop<Arc<FramedValue>> {
        debug_assert!(self.is_large());
        // SAFETY: the untagged pointer is what `Arc::into_raw` returned.
        ManuallyDrop::new(unsafe { Arc::from_raw(self.untagged().as_ptr() as *const FramedValue) })
    }

    /// The value's bytes.
    ///
    /// # Safety
    /// The value is not released, nor written, for as long as `'a`.
    pub(crate) unsafe fn as_slice<'a>(self) -> &'a [u8] {
        let ptr = self.untagged().as_ptr();
        if self.is_large() {
            // SAFETY: a live `FramedValue` (caller's guarantee).
            unsafe { (*(ptr as *const FramedValue)).value() }
        } else {
            // SAFETY: a live small block: its length, then that many bytes.
            unsafe {
                let len = (ptr as *const u32).read() as usize;
                std::slice::from_raw_parts(ptr.add(SMALL_HEADER), len)
            }
        }
    }

    /// Writes `value` over the old bytes if it has their length and no
    /// pending reply holds them; false (nothing written) otherwise.
    ///
    /// # Safety
    /// The caller owns the value and nobody else can read it (no frozen
    /// view may share it).
    pub(crate) unsafe fn overwrite_in_place(self, value: &[u8]) -> bool {
        if self.is_large() {
            // SAFETY: caller's guarantee; get_mut refuses if a reply
            // shares the Arc.
            let mut arc = unsafe { self.framed() };
            match Arc::get_mut(&mut arc) {
                Some(framed) if framed.value().len() == value.len() => {
                    framed.value_mut().copy_from_slice(value);
                    true
                }
                _ => false,
            }
        } else {
            // SAFETY: a live small block only the caller can reach.
            unsafe {
                let ptr = self.untagged().as_ptr();
                if (ptr as *const u32).read() as usize != value.len() {
                    return false;
                }
                std::ptr::copy_nonoverlapping(value.as_ptr(), ptr.add(SMALL_HEADER), value.len());
            }
            true
        }
    }

    /// Frees the value (a large one: drops the table's reference; pending
    /// replies keep theirs).
    ///
    /// # Safety
    /// The caller owns the value, nobody will read it through this or any
    /// copy of the handle again, and it is released only once.
    pub(crate) unsafe fn release(self) {
        #[cfg(test)]
        block_count::freed();
        if self.is_large() {
            // SAFETY: the caller's ownership of the table's reference.
            drop(ManuallyDrop::into_inner(unsafe { self.framed() }));
        } else {
            // SAFETY: a small block allocated by `new` with this layout.
            unsafe {
                let ptr = self.untagged().as_ptr();
                let len = (ptr as *const u32).read() as usize;
                dealloc(ptr, small_layout(len));
            }
        }
    }

    /// For a large value: its whole RESP bulk-string reply, as a `Bytes`
    /// over the stored buffer itself (no copy; it keeps the value alive
    /// after an overwrite or removal). `None` for a small value, whose
    /// reply is built by copying.
    ///
    /// # Safety
    /// The value is not released.
    pub(crate) unsafe fn shared_bulk_reply(self) -> Option<Bytes> {
        if !self.is_large() {
            return None;
        }
        // SAFETY: caller's guarantee.
        let arc = unsafe { self.framed() };
        Some(Bytes::from_owner(BulkReplyOwner(Arc::clone(&arc))))
    }

    /// How many references a large value has (the table's plus one per
    /// pending reply); 1 for a small one. For tests and accounting.
    ///
    /// # Safety
    /// The value is not released.
    #[cfg(test)]
    pub(crate) unsafe fn holders(self) -> usize {
        if self.is_large() {
            // SAFETY: caller's guarantee.
            Arc::strong_count(&*unsafe { self.framed() })
        } else {
            1
        }
    }
}

impl std::fmt::Debug for StoredValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredValue")
            .field("large", &self.is_large())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    /// A value the test owns, released when dropped.
    struct Owned(StoredValue);

    impl Owned {
        fn new(value: &[u8]) -> Owned {
            Owned(StoredValue::new(value))
        }
        fn bytes(&self) -> &[u8] {
            // SAFETY: owned by `self`, released only in drop.
            unsafe { self.0.as_slice() }
        }
        fn reply(&self) -> Option<Bytes> {
            // SAFETY: as above.
            unsafe { self.0.shared_bulk_reply() }
        }
        fn holders(&self) -> usize {
            // SAFETY: as above.
            unsafe { self.0.holders() }
        }
        /// What the table does on a SET: in place if it can, else a new
        /// value and the old one released.
        fn overwrite(&mut self, value: &[u8]) {
            // SAFETY: owned by `self` alone.
            if !unsafe { self.0.overwrite_in_place(value) } {
                let old = std::mem::replace(&mut self.0, StoredValue::new(value));
                // SAFETY: replaced above, so nobody reaches it again.
                unsafe { old.release() };
            }
        }
    }

    impl Drop for Owned {
        fn drop(&mut self) {
            // SAFETY: owned by `self`, released once.
            unsafe { self.0.release() }
        }
    }

    fn bulk(value: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        crate::resp::write_bulk(&mut out, Some(value));
        out.to_vec()
    }

    #[test]
    fn the_length_alone_picks_the_form() {
        for len in [0, 1, 100, SHARED_VALUE_MIN - 1] {
            let v = Owned::new(&vec![7u8; len]);
            assert!(!v.0.is_large(), "{len}");
            assert_eq!(v.bytes(), &vec![7u8; len][..]);
            assert!(v.reply().is_none());
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
            let v = Owned::new(&vec![9u8; len]);
            assert!(v.0.is_large(), "{len}");
            assert_eq!(v.bytes(), &vec![9u8; len][..]);
            assert_eq!(&v.reply().unwrap()[..], &bulk(v.bytes())[..]);
        }
    }

    #[test]
    fn a_shared_reply_is_the_resp_bulk_string_over_the_stored_bytes() {
        let value: Vec<u8> = (0..SHARED_VALUE_MIN * 3).map(|i| i as u8).collect();
        let v = Owned::new(&value);
        let reply = v.reply().expect("large values are shared");
        assert_eq!(&reply[..], &bulk(&value)[..]);
        // The reply points into the stored buffer: nothing was copied.
        let header = format!("${}\r\n", value.len()).len();
        assert_eq!(reply[header..].as_ptr(), v.bytes().as_ptr());
        assert_eq!(v.holders(), 2);
        let more: Vec<Bytes> = (0..100).map(|_| v.reply().unwrap()).collect();
        assert_eq!(v.holders(), 102);
        drop(more);
        drop(reply);
        assert_eq!(v.holders(), 1);
    }

    #[test]
    fn overwrite_in_place_only_when_the_size_matches_and_no_reply_holds_it() {
        // Small, same size: in place.
        let mut v = Owned::new(b"abc");
        let before = v.bytes().as_ptr();
        v.overwrite(b"xyz");
        assert_eq!((v.bytes(), v.bytes().as_ptr()), (&b"xyz"[..], before));
        v.overwrite(b"longer");
        assert_eq!(v.bytes(), b"longer");

        // Large, same size, no reply: in place.
        let mut v = Owned::new(&[1u8; SHARED_VALUE_MIN]);
        let before = v.bytes().as_ptr();
        v.overwrite(&[2u8; SHARED_VALUE_MIN]);
        assert_eq!(v.bytes().as_ptr(), before);
        assert_eq!(v.bytes(), &[2u8; SHARED_VALUE_MIN][..]);

        // Large, same size, but a pending reply holds it: the reply keeps
        // the old bytes, the table gets new ones.
        let pending = v.reply().unwrap();
        v.overwrite(&[3u8; SHARED_VALUE_MIN]);
        assert_ne!(v.bytes().as_ptr(), before);
        assert_eq!(v.bytes(), &[3u8; SHARED_VALUE_MIN][..]);
        assert_eq!(&pending[..], &bulk(&[2u8; SHARED_VALUE_MIN])[..]);
        assert_eq!(v.holders(), 1);
    }

    #[test]
    fn a_value_crossing_the_threshold_changes_form_both_ways() {
        let mut v = Owned::new(&[5u8; SHARED_VALUE_MIN - 1]);
        assert!(!v.0.is_large());
        v.overwrite(&[6u8; SHARED_VALUE_MIN]);
        assert!(v.0.is_large());
        assert_eq!(v.bytes(), &[6u8; SHARED_VALUE_MIN][..]);
        let pending = v.reply().unwrap();
        v.overwrite(b"tiny");
        assert!(!v.0.is_large());
        assert_eq!(v.bytes(), b"tiny");
        assert_eq!(&pending[..], &bulk(&[6u8; SHARED_VALUE_MIN])[..]);
        v.overwrite(&[]);
        assert_eq!(v.bytes(), b"");
    }

    #[test]
    fn a_reply_outlives_the_value_it_was_taken_from() {
        let v = Owned::new(&[4u8; SHARED_VALUE_MIN + 10]);
        let reply = v.reply().unwrap();
        drop(v);
        assert_eq!(&reply[..], &bulk(&[4u8; SHARED_VALUE_MIN + 10])[..]);
        let sliced = reply.slice(3..);
        drop(reply);
        assert_eq!(sliced.len(), bulk(&[4u8; SHARED_VALUE_MIN + 10]).len() - 3);
    }
}
