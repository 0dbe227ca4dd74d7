//! [`KeyMap`]: the KV store's table, laid out for cache misses, not generality,
//! and sharded copy-on-write so a checkpoint can freeze it in about a
//! millisecond and a write during the checkpoint pays microseconds for it.
//!
//! Why not `HashMap<Bytes, Bytes>`: every replica applies every SET, and on
//! the bench (256K keys, 100 B values) a SET there cost four dependent cache
//! misses — the control bytes, the 64-byte `(Bytes, Bytes)` bucket, the key's
//! own allocation for the equality check, the value's allocation — on a 32 MiB
//! table. It was the largest single item in a follower's profile.
//!
//! Here a bucket is 32 bytes: keys of up to [`INLINE_KEY`] bytes live inside
//! it, so the equality check reads the bucket just loaded, and the value is
//! an 8-byte `StoredValue` handle, overwritten in place when the size is
//! unchanged and no frozen view may share it (the common SET). That is
//! three misses per SET. Keys are hashed with std's `RandomState` (SipHash
//! with a per-process random key), so clients cannot choose keys that
//! collide.
//!
//! # Shards, and why
//!
//! A checkpoint needs a frozen view of the whole table while the node keeps
//! applying writes. Copying or encoding the table on the event loop took
//! longer than an election timeout at a million keys, so the table is split
//! into [`SHARDS`] independent hash tables, each behind an `Arc`.
//! [`KeyMap::freeze`] clones the `Arc`s (O(shards), no entry is touched) and
//! the [`FrozenKeyMap`] goes to a background thread. The first write to a
//! shard a frozen view still holds copies that shard's buckets (bitwise: a
//! bucket is plain data, see below), and later writes to it are ordinary
//! in-place writes. Outside a checkpoint every shard is unshared and the
//! check is one uncontended atomic load on the shard's header. Growing is
//! per shard too: a table never rehashes more than one shard's entries at
//! once.
//!
//! 65,536 shards: what a write pays during a checkpoint is the copy of the
//! shards it is the first to touch. A decree of 2,000 random SETs touches
//! about 2,000 shards right after a freeze; at ten million keys a shard is
//! ~150 entries, an 8 KiB bucket array, so that decree copies ~16 MB (a few
//! milliseconds) where 4,096 shards had it copy ~270 MB. The price is
//! O(shards) per freeze (65,536 reference counts and a 512 KiB vector, about a
//! millisecond) and ~100 bytes per non-empty shard (6.5 MB when all are).
//! An empty shard is `None`, so a small map costs one vector, not 65,536
//! allocations, and freezing it touches no counts.
//!
//! A key's shard is a fixed function of its bytes — the top bits of its
//! CRC32C ([`key_digest`]) — the same on every replica and every run, so a
//! frozen map can be written in an order that depends only on its contents
//! ([`FrozenKeyMap::entries`]). CRC32C is not keyed, so a client can aim
//! all its keys at one shard; that only costs the sharding (a write during a
//! checkpoint copies that big shard once), not the collision resistance:
//! within a shard keys are still placed by the keyed SipHash.
//!
//! Invariant: a key is stored inline exactly when it is at most
//! [`INLINE_KEY`] bytes long, so equal keys always have equal representations.
//!
//! # Who owns the keys and values (the `unsafe` in this module)
//!
//! A bucket (`Entry`) is `Copy`: a long key and every value are raw
//! handles, so a shard copy shares them with the frozen original without
//! touching them. (They used to be `Arc`s, and the reference count bumps
//! made the first decree after a freeze at ten million keys take 0.5–0.9 s.)
//! Instead of reference counts, three rules say who frees a block (a long
//! key's bytes or a value):
//!
//! 1. **The live map owns every block its shards reach.** A shard the map
//!    has copied for writing gives up its blocks: its `owns_blocks` turns
//!    false before the map lets go of it, so when the last frozen view
//!    drops it, it frees nothing. A shard that is not shared frees its
//!    blocks when dropped (through rule 3).
//! 2. **A copy marks every entry it starts with** (`StoredValue::is_marked`)
//!    and keeps weak references to its *origins*: the shard it was copied
//!    from, and that shard's own origins that are still alive. A marked
//!    entry's blocks may also be reachable from a frozen view through an
//!    origin that is alive (held by a view), so a marked block is never
//!    written in place while any origin of its shard is alive. An entry
//!    inserted after the copy, or whose value was replaced, is unmarked and
//!    is the map's alone (a long key keeps its entry marked: the key is
//!    still shared).
//! 3. **A block the map drops is freed only if no frozen view can reach
//!    it**: an unmarked block, or a marked one whose shard has no live
//!    origin, is freed at once; otherwise it is *deferred* to the nearest
//!    live origin, and freed when that origin is dropped, or handed on to
//!    that origin's own nearest live origin (a block marked in a copy may
//!    have been marked, and so shared, in the origin too).
//!
//! An origin dies when the last view holding it lets go of it, and a
//! checkpoint lets go of each shard as soon as it has written it
//! ([`FrozenKeyMap::drain`]). So what a checkpoint's view kept alive is
//! given back shard by shard while the checkpoint runs, on its thread, and
//! not all at once when it ends (a burst of frees that glibc then sorted
//! during the loop's next large malloc: the 100 ms writes at the end of a
//! checkpoint at ten million keys); and a write to a shard the checkpoint
//! has already written finds it unshared and copies nothing, so a
//! checkpoint holds a copy of only the shards written before it got to
//! them.
//!
//! So every block a frozen view can reach stays alive and unchanged until
//! the view has let go of the shards that reach it, and every block is freed
//! exactly once: by the live map, by the last shard holding it that still
//! owns blocks, or by the origin it was deferred to. Whether an origin is
//! alive is decided by `Weak::upgrade`, which takes a strong reference, so a
//! view dropping the origin on another thread at the same moment cannot
//! slip between the check and the deferral: the writer's reference is then
//! the last, and it frees the origin (on the loop: one shard's buckets and
//! what was deferred to it). The model tests below check contents against
//! `HashMap`s across freezes, partial drains, drops in every order and
//! overlapping views; the leak and double-free side is checked by the
//! counting tests (`blocks_live`).
//!
//! # Deadlines (expiry)
//!
//! A key may carry a deadline (a time in ms; what the time means is the
//! caller's business). Deadlines live beside the table, not in its buckets:
//! each shard has a `BTreeMap` of its keys that have one (empty, and so
//! free, when no key has a TTL; a key without one pays nothing in the
//! bucket), copied with the shard so a frozen view keeps them; and the map
//! keeps a `(deadline, key)` index over all shards, not shared with frozen
//! views, so the caller can reclaim the keys that are due in deadline order
//! without scanning. The map never looks at a clock: whether a key is
//! *expired* is decided by the caller.

use crate::stored_value::StoredValue;
use bytes::Bytes;
use hashbrown::HashTable;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{BuildHasher, RandomState};
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

/// Longest key stored inside its bucket.
pub const INLINE_KEY: usize = 22;

/// log2 of [`SHARDS`].
const SHARD_BITS: u32 = 16;

/// Number of shards (see the module docs for why this many).
pub const SHARDS: usize = 1 << SHARD_BITS;

/// The key's CRC32C: it picks the key's shard (its top
/// `SHARD_BITS` bits) and leads the order [`FrozenKeyMap::entries`]
/// writes entries in. Deterministic on every replica, unlike the in-shard
/// SipHash.
pub fn key_digest(key: &[u8]) -> u32 {
    crc32c::crc32c(key)
}

fn shard_of_digest(digest: u32) -> usize {
    (digest >> (32 - SHARD_BITS)) as usize
}

/// The smallest digest of the shard after `shard`, if there is one.
fn next_shard_start(shard: usize) -> Option<u32> {
    (shard + 1 < SHARDS).then(|| ((shard + 1) as u32) << (32 - SHARD_BITS))
}

/// A key: inline, or a raw handle to its own allocation (owned by the
/// rules in the module docs).
#[derive(Clone, Copy)]
enum Key {
    Inline { len: u8, bytes: [u8; INLINE_KEY] },
    Heap(NonNull<[u8]>),
}

impl Key {
    fn new(key: &[u8]) -> Key {
        if key.len() <= INLINE_KEY {
            let mut bytes = [0u8; INLINE_KEY];
            bytes[..key.len()].copy_from_slice(key);
            Key::Inline {
                len: key.len() as u8,
                bytes,
            }
        } else {
            #[cfg(test)]
            crate::stored_value::block_count::made();
            Key::Heap(NonNull::from(Box::leak(Box::<[u8]>::from(key))))
        }
    }

    fn is_heap(&self) -> bool {
        matches!(self, Key::Heap(_))
    }

    /// # Safety
    /// A heap key is not freed while the returned slice is in use.
    unsafe fn as_slice(&self) -> &[u8] {
        match self {
            Key::Inline { len, bytes } => &bytes[..usize::from(*len)],
            // SAFETY: caller's guarantee; the block is a leaked Box<[u8]>.
            Key::Heap(b) => unsafe { b.as_ref() },
        }
    }
}

/// Frees a heap key's block.
///
/// # Safety
/// The block came from [`Key::new`], nobody reaches it again, and it is
/// freed once.
unsafe fn free_key_block(block: NonNull<[u8]>) {
    #[cfg(test)]
    crate::stored_value::block_count::freed();
    // SAFETY: caller's guarantee.
    drop(unsafe { Box::from_raw(block.as_ptr()) });
}

/// One bucket: plain data, copied bitwise when a shard is copied.
#[derive(Clone, Copy)]
struct Entry {
    key: Key,
    value: StoredValue,
}

// The layout argument above relies on this (64-bit targets).
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<Entry>() == 32);

impl Entry {
    /// The key. Sound for any entry of a shard the caller can reach: its
    /// blocks outlive every shard that reaches them (module docs).
    fn key(&self) -> &[u8] {
        // SAFETY: see above.
        unsafe { self.key.as_slice() }
    }

    /// The value, on the same grounds as [`Entry::key`].
    fn value(&self) -> &[u8] {
        // SAFETY: see above.
        unsafe { self.value.as_slice() }
    }

    /// Drops the entry's blocks (rule 3): frees them, or defers them to
    /// the nearest live one of `origins` if the entry is marked.
    ///
    /// # Safety
    /// The caller owns the entry's blocks (rule 1) and removed the entry
    /// from the only shard that owned it; `origins` are that shard's.
    unsafe fn release(self, origins: &[Weak<Shard>]) {
        let value = Deferred::Value(self.value.marked(false));
        let heap_key = match self.key {
            Key::Heap(block) => Some(Deferred::Key(block)),
            Key::Inline { .. } => None,
        };
        let blocks = std::iter::once(value).chain(heap_key);
        if self.value.is_marked() {
            // SAFETY: caller's guarantee.
            unsafe { defer_or_free(origins, blocks) };
        } else {
            for block in blocks {
                // SAFETY: caller's guarantee, and unmarked: no view
                // reaches it.
                unsafe { block.free() };
            }
        }
    }
}

/// A block whose freeing waits for a frozen view to let go of a shard.
enum Deferred {
    Value(StoredValue),
    Key(NonNull<[u8]>),
}

// Deferred blocks are freed by whichever thread drops their origin.
unsafe impl Send for Deferred {}

impl Deferred {
    /// # Safety
    /// As [`Entry::release`]: owned, unreachable, freed once.
    unsafe fn free(self) {
        // SAFETY: caller's guarantee.
        unsafe {
            match self {
                Deferred::Value(v) => v.release(),
                Deferred::Key(k) => free_key_block(k),
            }
        }
    }
}

/// Rule 3: hands `blocks` to the nearest of `origins` that is alive (it
/// frees them, or hands them on, when it is dropped), or frees them if none
/// is.
///
/// # Safety
/// The caller owns `blocks` (they are unreachable from the live map and
/// freed by nobody else), and any view that may reach them reaches them
/// through one of `origins` (nearest first).
unsafe fn defer_or_free(origins: &[Weak<Shard>], blocks: impl Iterator<Item = Deferred>) {
    for origin in origins {
        // `upgrade` takes a strong reference, so the origin cannot be
        // dropped between this check and the push. If a view lets go of
        // it meanwhile, this reference is the last one and dropping it
        // below frees what was just deferred: still exactly once.
        if let Some(origin) = origin.upgrade() {
            origin.deferred().extend(blocks);
            return;
        }
    }
    // No origin is alive, and one that died never comes back: no view
    // reaches these any more. (The acquire pairs with the release of the
    // views' last decrements, so their reads come before the frees.)
    fence(Ordering::Acquire);
    for block in blocks {
        // SAFETY: caller's guarantee, and unreachable.
        unsafe { block.free() };
    }
}

/// One shard: a hash table of the keys whose digest has its index in the
/// top bits.
struct Shard {
    table: HashTable<Entry>,
    /// The deadline of each key of this shard that has one.
    deadlines: BTreeMap<Box<[u8]>, u64>,
    /// Rule 1: true while the live map may still own this shard; set false
    /// (for good) when the map copies it for writing.
    owns_blocks: AtomicBool,
    /// Rule 2: the shards this one was copied from that frozen views may
    /// still hold, nearest first (empty: no entry is shared, or the shard
    /// was never copied). At most one per frozen view alive when the copy
    /// was made, and pruned as they die.
    origins: Vec<Weak<Shard>>,
    /// Rule 3: blocks the live map dropped from a copy of this shard while
    /// this shard could still reach them. Only ever filled while a view
    /// holds this shard, and freed (or handed on) when it is dropped.
    deferred: Mutex<Vec<Deferred>>,
}

// SAFETY: a shard is read concurrently (a frozen view on a checkpoint
// thread, the live map on the loop) only through `&Shard`, which reads
// blocks that rules 1–3 keep alive and unwritten (the deferred list is
// behind its mutex); it is written only through `&mut Shard`, which
// `Arc::get_mut` hands out to the live map alone, and then writes in place
// only blocks no view can reach.
unsafe impl Send for Shard {}
unsafe impl Sync for Shard {}

impl Shard {
    fn new(table: HashTable<Entry>) -> Shard {
        Shard {
            table,
            deadlines: BTreeMap::new(),
            owns_blocks: AtomicBool::new(true),
            origins: Vec::new(),
            deferred: Mutex::new(Vec::new()),
        }
    }

    /// `key`'s deadline, if it has one (most shards have none: no lookup).
    fn deadline_of(&self, key: &[u8]) -> Option<u64> {
        if self.deadlines.is_empty() {
            return None;
        }
        self.deadlines.get(key).copied()
    }

    /// The copy the live map writes to while frozen views keep `this`.
    /// Bitwise for the buckets, so O(buckets) with no per-value work.
    fn copy_for_writing(this: &Arc<Shard>) -> Shard {
        let mut table = this.table.clone();
        for entry in table.iter_mut() {
            entry.value = entry.value.marked(true);
        }
        let mut origins = Vec::with_capacity(1 + this.origins.len());
        origins.push(Arc::downgrade(this));
        origins.extend(
            this.origins
                .iter()
                .filter(|o| o.strong_count() > 0)
                .cloned(),
        );
        Shard {
            table,
            deadlines: this.deadlines.clone(),
            owns_blocks: AtomicBool::new(true),
            origins,
            deferred: Mutex::new(Vec::new()),
        }
    }

    /// Whether `entry`'s blocks may be reachable from a frozen view. When
    /// this says no, it stays no: a dead origin never comes back.
    fn shares(&self, entry: &Entry) -> bool {
        if !entry.value.is_marked() {
            return false;
        }
        if self.origins.iter().any(|o| o.strong_count() > 0) {
            return true;
        }
        // The views' last reads come before the caller's writes in place
        // (pairs with the release of their decrements).
        fence(Ordering::Acquire);
        false
    }

    /// Forgets origins that died (a write calls it, so a shard whose views
    /// are gone stops checking them).
    fn prune_origins(&mut self) {
        if !self.origins.is_empty() {
            self.origins.retain(|o| o.strong_count() > 0);
        }
    }

    fn deferred(&self) -> std::sync::MutexGuard<'_, Vec<Deferred>> {
        // A panic elsewhere cannot leave the list half-written: every
        // critical section is a push, an extend or a take.
        self.deferred.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Shard {
    fn drop(&mut self) {
        let deferred = std::mem::take(
            self.deferred
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner),
        );
        if !deferred.is_empty() {
            // SAFETY: deferred to this shard (rule 3), which nobody reaches
            // any more; a view may still reach them through this shard's own
            // origins.
            unsafe { defer_or_free(&self.origins, deferred.into_iter()) };
        }
        if !self.owns_blocks.load(Ordering::Acquire) {
            return;
        }
        let origins = std::mem::take(&mut self.origins);
        for entry in self.table.drain() {
            // SAFETY: this shard owns its blocks (rule 1) and is going away.
            unsafe { entry.release(&origins) };
        }
    }
}

/// A map from byte-string keys to byte-string values.
pub struct KeyMap {
    /// Always [`SHARDS`] long; `None` for a shard that never had a key.
    shards: Vec<Option<Arc<Shard>>>,
    /// Keys in all shards, kept so `len` is O(1).
    len: usize,
    /// One key for every shard's table: the shards' tables are private, so
    /// nothing gains from separate keys.
    hasher: RandomState,
    /// With [`KeyMap::track_content_digest`]: the wrapping sum of
    /// [`entry_digest`] over every entry, kept up to date by each write, so
    /// that a checker can compare contents after every step without walking
    /// every shard. `None` (the default, and production) costs one branch
    /// per write.
    content_digest: Option<u64>,
    /// Every key with a deadline, by `(deadline, key)`: what is due first
    /// is first. Exactly the union of the shards' `deadlines`.
    by_deadline: BTreeSet<(u64, Box<[u8]>)>,
}

/// One deadline's share of a content digest (as [`entry_digest`]).
pub fn deadline_digest(key: &[u8], deadline: u64) -> u64 {
    let key_crc = crc32c::crc32c_append(0x7E5D_11E5, key);
    let h = (u64::from(key_crc) << 32)
        | u64::from(crc32c::crc32c_append(key_crc, &deadline.to_le_bytes()));
    h.wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
}

/// One entry's share of a content digest: order-independent when summed.
pub fn entry_digest(key: &[u8], value: &[u8]) -> u64 {
    let key_crc = crc32c::crc32c(key);
    let h = (u64::from(key_crc) << 32) | u64::from(crc32c::crc32c_append(key_crc, value));
    h.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// A key found by [`KeyMap::find`]: its value, and its deadline if it has
/// one (the caller decides whether it is still live).
pub struct Found<'a> {
    entry: &'a Entry,
    /// The key's deadline, if it has one.
    pub deadline: Option<u64>,
}

impl<'a> Found<'a> {
    /// The value.
    pub fn value(&self) -> &'a [u8] {
        self.entry.value()
    }

    /// A large value's RESP bulk reply without a copy (as
    /// [`KeyMap::shared_bulk_reply`]); `None` for a small one.
    pub fn shared_bulk_reply(&self) -> Option<Bytes> {
        // SAFETY: the entry is borrowed from the map, so its value is alive.
        unsafe { self.entry.value.shared_bulk_reply() }
    }
}

impl Default for KeyMap {
    fn default() -> Self {
        KeyMap::with_capacity(0)
    }
}

impl std::fmt::Debug for KeyMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyMap").field("len", &self.len()).finish()
    }
}

impl KeyMap {
    /// An empty map with room for about `capacity` keys (spread evenly over
    /// the shards; a shard that gets more than its share grows alone).
    pub fn with_capacity(capacity: usize) -> Self {
        let per_shard = capacity / SHARDS;
        KeyMap {
            // Below a key per shard, every shard starts empty (`None`): a
            // store is made on every restart and restore.
            shards: (0..SHARDS)
                .map(|_| {
                    (per_shard > 0)
                        .then(|| Arc::new(Shard::new(HashTable::with_capacity(per_shard))))
                })
                .collect(),
            len: 0,
            hasher: RandomState::new(),
            content_digest: None,
            by_deadline: BTreeSet::new(),
        }
    }

    /// Keeps [`KeyMap::content_digest`] up to date from now on (O(state)
    /// once, then O(1) per write).
    pub fn track_content_digest(&mut self) {
        self.content_digest = Some(self.walked_content_digest());
    }

    /// What [`KeyMap::content_digest`] tracks, computed by walking every
    /// entry and deadline (O(state)).
    pub fn walked_content_digest(&self) -> u64 {
        let entries = self
            .iter()
            .fold(0u64, |acc, (k, v)| acc.wrapping_add(entry_digest(k, v)));
        self.by_deadline.iter().fold(entries, |acc, (d, k)| {
            acc.wrapping_add(deadline_digest(k, *d))
        })
    }

    /// The wrapping sum of [`entry_digest`] over every entry and of
    /// [`deadline_digest`] over every deadline, if tracked.
    pub fn content_digest(&self) -> Option<u64> {
        self.content_digest
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when there are no keys.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    fn shard(&self, key: &[u8]) -> Option<&Shard> {
        self.shards[shard_of_digest(key_digest(key))].as_deref()
    }

    fn entry(&self, key: &[u8]) -> Option<&Entry> {
        self.shard(key)?
            .table
            .find(self.hash(key), |e| e.key() == key)
    }

    /// The shard at `index`, ready for writing: made if it was empty,
    /// copied first if a frozen view still holds it (rules 1 and 2).
    /// (Borrows only the shards, so the caller can use the other fields.)
    fn shard_mut(shards: &mut [Option<Arc<Shard>>], index: usize) -> &mut Shard {
        let slot = &mut shards[index];
        let shard = slot.get_or_insert_with(|| Arc::new(Shard::new(HashTable::new())));
        if Arc::get_mut(shard).is_none() {
            // Only frozen views share a shard.
            let copy = Shard::copy_for_writing(shard);
            // Rule 1: from here only frozen views hold the original, and
            // its blocks are the copy's. (Release: the view that drops it
            // last reads this after its Arc decrement's acquire.)
            shard.owns_blocks.store(false, Ordering::Release);
            *shard = Arc::new(copy);
        }
        let shard = Arc::get_mut(shard).expect("unshared after the copy");
        shard.prune_origins();
        shard
    }

    /// The value of `key`.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.entry(key).map(Entry::value)
    }

    /// `key`'s value and deadline with one hash of the key and one probe
    /// (a read needs both: [`KeyMap::get`] and [`KeyMap::deadline`] would
    /// each find the shard again); `None` if `key` is absent.
    pub fn find(&self, key: &[u8]) -> Option<Found<'_>> {
        let shard = self.shard(key)?;
        let entry = shard.table.find(self.hash(key), |e| e.key() == key)?;
        Some(Found {
            entry,
            deadline: shard.deadline_of(key),
        })
    }

    /// How many holders a value has (the table, and one per pending reply
    /// of a large value). For tests.
    #[cfg(test)]
    pub(crate) fn value_holders(&self, key: &[u8]) -> Option<usize> {
        // SAFETY: a value the map reaches is alive.
        self.entry(key).map(|e| unsafe { e.value.holders() })
    }

    /// A large value's RESP bulk reply without a copy (see
    /// [`crate::stored_value`]); `None` if `key` is absent or its value
    /// small.
    pub fn shared_bulk_reply(&self, key: &[u8]) -> Option<Bytes> {
        // SAFETY: a value the map reaches is alive.
        self.entry(key)
            .and_then(|e| unsafe { e.value.shared_bulk_reply() })
    }

    /// True when `key` has a value.
    pub fn contains_key(&self, key: &[u8]) -> bool {
        self.entry(key).is_some()
    }

    /// Sets `key` to `value`, writing over the old value when the size is
    /// unchanged and no frozen view or pending reply may hold it. Copies
    /// the key's shard first if a frozen view still shares it. Keeps the
    /// key's deadline, if it has one.
    pub fn set(&mut self, key: &[u8], value: &[u8]) {
        let hash = self.hash(key);
        if let Some(sum) = self.content_digest {
            let old = self.get(key).map_or(0, |old| entry_digest(key, old));
            self.content_digest =
                Some(sum.wrapping_sub(old).wrapping_add(entry_digest(key, value)));
        }
        let shard = Self::shard_mut(&mut self.shards, shard_of_digest(key_digest(key)));
        if let Some(e) = shard.table.find(hash, |e| e.key() == key) {
            let (old, heap_key) = (e.value, e.key.is_heap());
            let shared = shard.shares(e);
            let e = shard
                .table
                .find_mut(hash, |e| e.key() == key)
                .expect("found above");
            if !shared {
                // Ours alone (rule 2): a stale mark, of origins no view
                // holds any more, is dropped.
                e.value = old.marked(false);
                // SAFETY: unmarked or no origin alive: nobody else reads it.
                if unsafe { e.value.overwrite_in_place(value) } {
                    return;
                }
                e.value = StoredValue::new(value);
                // SAFETY: replaced above; owned (rule 1), unreachable.
                unsafe { old.marked(false).release() };
                return;
            }
            // A frozen view may read the old value: replace it and defer
            // the old one (rule 3). A long key stays shared, so its entry
            // stays marked.
            e.value = StoredValue::new(value).marked(heap_key);
            // SAFETY: replaced above, so the map no longer reaches it, and
            // owned (rule 1); a view reaches it only through an origin.
            unsafe {
                defer_or_free(
                    &shard.origins,
                    std::iter::once(Deferred::Value(old.marked(false))),
                )
            };
            return;
        }
        let hasher = &self.hasher;
        shard.table.insert_unique(
            hash,
            Entry {
                key: Key::new(key),
                value: StoredValue::new(value),
            },
            |e| hasher.hash_one(e.key()),
        );
        self.len += 1;
        paxos_contracts::ensures!(self.get(key) == Some(value));
    }

    /// Removes `key`; true if it had a value. A shard shared with a frozen
    /// view is copied only when the key is in it.
    pub fn remove(&mut self, key: &[u8]) -> bool {
        if !self.contains_key(key) {
            return false;
        }
        let hash = self.hash(key);
        let shard = Self::shard_mut(&mut self.shards, shard_of_digest(key_digest(key)));
        let Ok(entry) = shard.table.find_entry(hash, |e| e.key() == key) else {
            return false;
        };
        let (removed, _) = entry.remove();
        self.content_digest = self
            .content_digest
            .map(|sum| sum.wrapping_sub(entry_digest(key, removed.value())));
        // SAFETY: taken out of the live map, which owned it (rule 1).
        unsafe { removed.release(&shard.origins) };
        if let Some(deadline) = shard.deadlines.remove(key) {
            self.by_deadline.remove(&(deadline, Box::from(key)));
            self.content_digest = self
                .content_digest
                .map(|sum| sum.wrapping_sub(deadline_digest(key, deadline)));
        }
        self.len -= 1;
        true
    }

    /// Every (key, value), in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.shards
            .iter()
            .flatten()
            .flat_map(|s| s.table.iter())
            .map(|e| (e.key(), e.value()))
    }

    /// The deadline of `key`, if it exists and has one.
    pub fn deadline(&self, key: &[u8]) -> Option<u64> {
        self.shard(key)?.deadline_of(key)
    }

    /// Gives `key` the deadline `deadline` (`None`: none) and returns the
    /// one it had. Does nothing to a key that does not exist.
    pub fn set_deadline(&mut self, key: &[u8], deadline: Option<u64>) -> Option<u64> {
        let old = self.deadline(key);
        if old == deadline || !self.contains_key(key) {
            return old;
        }
        let mut digest = self.content_digest;
        let shard = Self::shard_mut(&mut self.shards, shard_of_digest(key_digest(key)));
        let mut by_deadline_changes = (None, None);
        if let Some(old) = old {
            shard.deadlines.remove(key);
            by_deadline_changes.0 = Some(old);
            digest = digest.map(|sum| sum.wrapping_sub(deadline_digest(key, old)));
        }
        if let Some(new) = deadline {
            shard.deadlines.insert(key.into(), new);
            by_deadline_changes.1 = Some(new);
            digest = digest.map(|sum| sum.wrapping_add(deadline_digest(key, new)));
        }
        if let Some(old) = by_deadline_changes.0 {
            self.by_deadline.remove(&(old, Box::from(key)));
        }
        if let Some(new) = by_deadline_changes.1 {
            self.by_deadline.insert((new, key.into()));
        }
        self.content_digest = digest;
        paxos_contracts::ensures!(self.deadline(key) == deadline);
        old
    }

    /// The key with the earliest deadline, and that deadline (ties: the
    /// smallest key), if any key has one.
    pub fn first_deadline(&self) -> Option<(u64, &[u8])> {
        self.by_deadline.first().map(|(d, k)| (*d, &k[..]))
    }

    /// How many keys have a deadline.
    pub fn deadlines_len(&self) -> usize {
        self.by_deadline.len()
    }

    /// Visits keys in ascending `(key_digest(key), key)` order, starting at
    /// the first key whose digest is at least `from`, until at least
    /// `count` keys were visited (the keys of one digest are never split
    /// across calls: CRC32C collisions are rare, so that is a handful at
    /// most). Returns the digest to resume from, or `None` when the walk
    /// reached the end. Each call sorts the keys of the shards it visits
    /// (a shard at a time) and steps over at most every empty shard.
    ///
    /// Because the order depends only on the keys, a walk from `0` that is
    /// resumed until `None` visits every key present for the whole walk
    /// exactly once, whatever was written between the calls; a key added or
    /// removed meanwhile may or may not be visited.
    pub fn scan<'a>(
        &'a self,
        from: u32,
        count: usize,
        mut visit: impl FnMut(&'a [u8], &'a [u8], Option<u64>),
    ) -> Option<u32> {
        let mut visited = 0usize;
        let mut sorted: Vec<(u32, &'a Entry)> = Vec::new();
        for (index, shard) in self.shards.iter().enumerate().skip(shard_of_digest(from)) {
            let Some(shard) = shard.as_deref() else {
                continue;
            };
            sorted.clear();
            sorted.extend(
                shard
                    .table
                    .iter()
                    .map(|e| (key_digest(e.key()), e))
                    .filter(|(d, _)| *d >= from),
            );
            sorted.sort_unstable_by(|a, b| (a.0, a.1.key()).cmp(&(b.0, b.1.key())));
            for (i, &(digest, e)) in sorted.iter().enumerate() {
                let key = e.key();
                let deadline = if shard.deadlines.is_empty() {
                    None
                } else {
                    shard.deadlines.get(key).copied()
                };
                visit(key, e.value(), deadline);
                visited += 1;
                let next_digest = sorted.get(i + 1).map(|n| n.0);
                if visited >= count && next_digest != Some(digest) {
                    // Resume after this digest: within this shard if keys
                    // remain, else at the next shard's first digest.
                    return match next_digest {
                        Some(d) => Some(d),
                        None => next_shard_start(index),
                    };
                }
            }
        }
        None
    }

    /// A view of the map as it is now, unaffected by later writes.
    /// O(shards): it shares the shards, and a later write to the map copies
    /// the shard it touches (once) instead of changing the view, unless the
    /// view has already let go of that shard ([`FrozenKeyMap::drain`]).
    pub fn freeze(&mut self) -> FrozenKeyMap {
        FrozenKeyMap {
            shards: self.shards.clone(),
            next_shard: 0,
            len: self.len,
            deadlines: self.by_deadline.len(),
        }
    }
}

/// An immutable view of a [`KeyMap`] taken by [`KeyMap::freeze`]. `Send`,
/// so it can be written out on another thread, where [`FrozenKeyMap::drain`]
/// gives each shard back as soon as it is written, and dropping the view
/// gives back the rest: either frees what the map deferred to those shards.
#[derive(Clone)]
pub struct FrozenKeyMap {
    /// `None` for a shard that was empty, or that [`FrozenKeyMap::drain`]
    /// has visited and let go of.
    shards: Vec<Option<Arc<Shard>>>,
    /// Shards before this index were drained.
    next_shard: usize,
    /// Keys at the freeze (drained or not).
    len: usize,
    /// Keys with a deadline at the freeze.
    deadlines: usize,
}

impl std::fmt::Debug for FrozenKeyMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrozenKeyMap")
            .field("len", &self.len)
            .field("next_shard", &self.next_shard)
            .finish()
    }
}

impl Default for FrozenKeyMap {
    fn default() -> Self {
        KeyMap::default().freeze()
    }
}

impl FrozenKeyMap {
    /// Number of keys at the freeze (including any already drained).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when there were no keys at the freeze.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many keys had a deadline at the freeze.
    pub fn deadlines_len(&self) -> usize {
        self.deadlines
    }

    /// True once [`FrozenKeyMap::drain`] has visited every shard.
    pub fn is_drained(&self) -> bool {
        self.next_shard == SHARDS
    }

    /// Every (key, value) not yet drained, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.shards
            .iter()
            .flatten()
            .flat_map(|s| s.table.iter())
            .map(|e| (e.key(), e.value()))
    }

    /// Every (key, value) not yet drained, in ascending
    /// `(key_digest(key), key)` order: an order that depends only on the
    /// contents, so equal maps (on any replica, whatever their insertion
    /// order and hash seed) list equal sequences. It does not depend on
    /// [`SHARDS`] either: a shard holds a range of digests, so it is enough
    /// to sort one shard at a time (a vector of references, bounded by the
    /// largest shard).
    pub fn entries(&self) -> impl Iterator<Item = (&[u8], &[u8], Option<u64>)> {
        self.shards
            .iter()
            .flatten()
            .flat_map(|shard| sorted_entries(shard))
    }

    /// Visits the entries of up to `shards` more shards, in the order of
    /// [`FrozenKeyMap::entries`], and lets go of each shard once its
    /// entries are visited: a later write to it in the live map finds it
    /// unshared (no copy), and what the map deferred to it is freed now,
    /// here, rather than when the view is dropped. Returns whether shards
    /// remain. Stops at the first error `visit` returns, with the shard it
    /// was visiting kept (a retry visits it again from its start).
    pub fn drain<E>(
        &mut self,
        shards: usize,
        mut visit: impl FnMut(&[u8], &[u8], Option<u64>) -> Result<(), E>,
    ) -> Result<bool, E> {
        let end = self.next_shard.saturating_add(shards).min(SHARDS);
        while self.next_shard < end {
            if let Some(shard) = self.shards[self.next_shard].as_deref() {
                for (key, value, deadline) in sorted_entries(shard) {
                    visit(key, value, deadline)?;
                }
            }
            // Dropped here, on the caller's thread: if this view held the
            // shard last, its buckets and deferred blocks are freed now.
            self.shards[self.next_shard] = None;
            self.next_shard += 1;
        }
        Ok(!self.is_drained())
    }

    /// How many of this view's non-empty shards `map` still shares (has
    /// not copied since): for tests that check a freeze copies nothing.
    #[cfg(test)]
    pub(crate) fn shards_shared_with(&self, map: &KeyMap) -> usize {
        self.shards
            .iter()
            .zip(&map.shards)
            .filter(|(a, b)| matches!((a, b), (Some(a), Some(b)) if Arc::ptr_eq(a, b)))
            .count()
    }
}

/// A shard's entries with their deadlines, in `(key_digest(key), key)`
/// order (see [`FrozenKeyMap::entries`]).
fn sorted_entries(shard: &Shard) -> impl Iterator<Item = (&[u8], &[u8], Option<u64>)> {
    let mut sorted: Vec<(u32, &[u8], &[u8])> = shard
        .table
        .iter()
        .map(|e| {
            let key = e.key();
            (key_digest(key), key, e.value())
        })
        .collect();
    // Keys are unique, so the value never decides the order.
    sorted.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    let deadlines = &shard.deadlines;
    sorted.into_iter().map(move |(_, k, v)| {
        let deadline = if deadlines.is_empty() {
            None
        } else {
            deadlines.get(k).copied()
        };
        (k, v, deadline)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stored_value::block_count;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[test]
    fn inline_and_heap_keys_round_trip() {
        let mut m = KeyMap::default();
        let short = vec![b's'; INLINE_KEY];
        let long = vec![b'l'; INLINE_KEY + 1];
        m.set(&short, b"1");
        m.set(&long, b"2");
        m.set(b"", b"empty key");
        assert_eq!(m.get(&short), Some(&b"1"[..]));
        assert_eq!(m.get(&long), Some(&b"2"[..]));
        assert_eq!(m.get(b""), Some(&b"empty key"[..]));
        // A key that is a prefix of an inline key is a different key.
        assert_eq!(m.get(&short[..INLINE_KEY - 1]), None);
        assert_eq!(m.len(), 3);
        m.set(&long, b"22");
        m.set(&short, b"x");
        assert_eq!(m.get(&long), Some(&b"22"[..]));
        assert_eq!(m.get(&short), Some(&b"x"[..]));
        assert!(m.remove(&long));
        assert!(!m.remove(&long));
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn find_agrees_with_get_deadline_and_shared_reply() {
        let mut m = KeyMap::default();
        let large = vec![b'L'; 4096];
        m.set(b"small", b"v");
        m.set(b"timed", b"t");
        m.set(b"large", &large);
        m.set_deadline(b"timed", Some(77));
        for key in [&b"small"[..], b"timed", b"large", b"absent"] {
            let found = m.find(key);
            assert_eq!(found.as_ref().map(|f| f.value()), m.get(key), "{key:?}");
            assert_eq!(
                found.as_ref().and_then(|f| f.deadline),
                m.deadline(key),
                "{key:?}"
            );
            assert_eq!(
                found.as_ref().and_then(|f| f.shared_bulk_reply()),
                m.shared_bulk_reply(key),
                "{key:?}"
            );
        }
        assert_eq!(m.find(b"timed").and_then(|f| f.deadline), Some(77));
        assert!(m
            .find(b"large")
            .and_then(|f| f.shared_bulk_reply())
            .is_some());
        assert!(m.find(b"absent").is_none());
    }

    #[test]
    fn deadlines_follow_their_keys_and_frozen_views_keep_theirs() {
        let mut m = KeyMap::default();
        m.track_content_digest();
        m.set(b"a", b"1");
        m.set(b"b", b"2");
        assert_eq!(m.set_deadline(b"a", Some(50)), None);
        assert_eq!(m.set_deadline(b"b", Some(20)), None);
        assert_eq!(m.set_deadline(b"nokey", Some(5)), None);
        assert_eq!(m.deadline(b"nokey"), None, "only existing keys get one");
        assert_eq!(m.first_deadline(), Some((20, &b"b"[..])));
        let frozen = m.freeze();
        assert_eq!(m.set_deadline(b"b", Some(90)), Some(20));
        m.set(b"a", b"11");
        assert_eq!(m.deadline(b"a"), Some(50), "a set keeps the deadline");
        assert!(m.remove(b"a"));
        assert_eq!(m.deadline(b"a"), None);
        m.set(b"a", b"back");
        assert_eq!(m.deadline(b"a"), None, "a removed key's deadline is gone");
        assert_eq!(m.first_deadline(), Some((90, &b"b"[..])));
        assert_eq!(m.deadlines_len(), 1);
        assert_eq!(m.content_digest(), Some(m.walked_content_digest()));
        let listed: Vec<(Vec<u8>, Option<u64>)> =
            frozen.entries().map(|(k, _, d)| (k.to_vec(), d)).collect();
        assert!(listed.contains(&(b"a".to_vec(), Some(50))));
        assert!(listed.contains(&(b"b".to_vec(), Some(20))));
        assert_eq!(frozen.deadlines_len(), 2);
    }

    /// Keys that land in many different shards.
    fn spread_keys(n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| format!("key:{i}").into_bytes()).collect()
    }

    fn non_empty_shards(m: &KeyMap) -> usize {
        m.shards.iter().flatten().count()
    }

    #[test]
    fn freeze_copies_nothing_and_a_write_copies_only_its_shard() {
        let mut m = KeyMap::default();
        for k in spread_keys(10_000) {
            m.set(&k, b"old");
        }
        let frozen = m.freeze();
        let shards = non_empty_shards(&m);
        assert_eq!(frozen.len(), 10_000);
        assert_eq!(frozen.shards_shared_with(&m), shards);
        assert!(m.shards.iter().flatten().all(|s| Arc::strong_count(s) == 2));

        // Neither a read nor removing an absent key copies a shard.
        assert_eq!(m.get(b"key:7"), Some(&b"old"[..]));
        assert!(!m.remove(b"no such key"));
        assert_eq!(frozen.shards_shared_with(&m), shards);

        m.set(b"key:7", b"new");
        assert_eq!(frozen.shards_shared_with(&m), shards - 1);
        m.set(b"key:7", b"newer");
        assert_eq!(
            frozen.shards_shared_with(&m),
            shards - 1,
            "a second write to the copied shard copies nothing"
        );
        let seven = frozen
            .entries()
            .find(|(k, _, _)| *k == b"key:7")
            .map(|(_, v, _)| v.to_vec());
        assert_eq!(
            seven.as_deref(),
            Some(&b"old"[..]),
            "the frozen view kept the old value"
        );
        assert_eq!(m.get(b"key:7"), Some(&b"newer"[..]));

        drop(frozen);
        assert!(m.shards.iter().flatten().all(|s| Arc::strong_count(s) == 1));
    }

    /// The shard copy shares every value and long key with the frozen view
    /// (no per-value work), and a write replaces rather than overwrites
    /// what the view may read, for both value forms.
    #[test]
    fn a_shard_copy_shares_its_blocks_and_never_writes_what_a_view_reads() {
        use crate::stored_value::SHARED_VALUE_MIN;
        let long_key = vec![b'k'; INLINE_KEY + 9];
        let large = vec![b'L'; SHARED_VALUE_MIN];
        let mut m = KeyMap::default();
        m.set(&long_key, b"small");
        m.set(b"large", &large);
        let frozen = m.freeze();
        // Copy both shards with a write beside each key.
        for key in [&long_key[..], b"large"] {
            let shard = shard_of_digest(key_digest(key));
            let neighbour = spread_keys(1_000_000)
                .into_iter()
                .find(|k| shard_of_digest(key_digest(k)) == shard)
                .expect("some key shares the shard");
            m.set(&neighbour, b"n");
            let (Some(a), Some(b)) = (&frozen.shards[shard], &m.shards[shard]) else {
                panic!("both hold the shard");
            };
            assert!(!Arc::ptr_eq(a, b), "the write copied the shard");
        }
        let in_view = |key: &[u8]| {
            frozen
                .entries()
                .find(|(k, _, _)| *k == key)
                .map(|(k, v, _)| (k.as_ptr(), v.as_ptr(), v.to_vec()))
                .expect("in the view")
        };
        // Shared: the same bytes, not copies.
        assert_eq!(in_view(b"large").1, m.get(b"large").unwrap().as_ptr());
        assert_eq!(in_view(&long_key).1, m.get(&long_key).unwrap().as_ptr());
        let live_key = m.iter().find(|(k, _)| *k == &long_key[..]).unwrap().0;
        assert_eq!(in_view(&long_key).0, live_key.as_ptr());
        assert_eq!(m.value_holders(b"large"), Some(1), "views take no count");

        // Same-size overwrites must not write into the view's bytes.
        m.set(b"large", &vec![b'M'; SHARED_VALUE_MIN]);
        m.set(&long_key, b"SMALL");
        assert_eq!(in_view(b"large").2, large);
        assert_eq!(in_view(&long_key).2, b"small");
        assert_eq!(m.get(b"large"), Some(&vec![b'M'; SHARED_VALUE_MIN][..]));
        assert_eq!(m.get(&long_key), Some(&b"SMALL"[..]));
        // Nor may a removal free them.
        assert!(m.remove(&long_key));
        assert!(m.remove(b"large"));
        assert_eq!(in_view(&long_key).2, b"small");
        assert_eq!(in_view(b"large").2, large);
        drop(frozen);
        assert_eq!(m.get(b"large"), None);
    }

    #[test]
    fn blocks_are_freed_once_whichever_of_map_and_views_goes_first() {
        let base = block_count::live();
        let long = |i: usize| format!("{i:0>width$}", width = INLINE_KEY + 3).into_bytes();
        for map_first in [false, true] {
            let mut m = KeyMap::default();
            for i in 0..2_000 {
                m.set(&long(i), b"v1");
                m.set(format!("s{i}").as_bytes(), b"v1");
            }
            // 2,000 long keys, 4,000 values.
            assert_eq!(block_count::live() - base, 6_000);
            let first = m.freeze();
            for i in 0..1_000 {
                m.set(&long(i), b"v2");
                m.set(format!("s{i}").as_bytes(), b"longer value");
                assert!(m.remove(&long(i + 1_000)));
            }
            let second = m.freeze();
            let second_clone = second.clone();
            for i in 0..500 {
                m.set(&long(i), b"v3");
                m.remove(format!("s{i}").as_bytes());
            }
            // Nothing any view can reach was freed.
            assert_eq!(first.iter().count(), 4_000);
            assert!(first.iter().all(|(_, v)| v == b"v1"));
            assert_eq!(second.iter().count(), 3_000);
            assert_eq!(
                second_clone
                    .iter()
                    .filter(|(_, v)| *v == b"longer value")
                    .count(),
                1_000
            );
            if map_first {
                drop(m);
                drop(second);
                drop(first);
                drop(second_clone);
                assert_eq!(block_count::live(), base, "all freed, none twice");
            } else {
                drop(second);
                drop(first);
                drop(second_clone);
                // With no view left the map holds exactly its own blocks:
                // 1,000 long keys and 2,500 values.
                assert_eq!(block_count::live() - base, 1_000 + 2_500);
                // And stale marks do not stop in-place writes any more.
                m.set(&long(0), b"v4");
                m.set(format!("s{}", 1_999).as_bytes(), b"v9");
                assert_eq!(block_count::live() - base, 1_000 + 2_500);
                drop(m);
                assert_eq!(block_count::live(), base, "all freed, none twice");
            }
        }
    }

    #[test]
    fn a_view_dropped_on_another_thread_frees_what_was_deferred_to_it() {
        let mut m = KeyMap::default();
        for k in spread_keys(5_000) {
            m.set(&k, b"old value");
        }
        let frozen = m.freeze();
        let writer = std::thread::spawn(move || {
            let count = frozen
                .entries()
                .filter(|(_, v, _)| *v == b"old value")
                .count();
            drop(frozen);
            count
        });
        for k in spread_keys(5_000) {
            m.set(&k, b"new value, longer");
        }
        for k in spread_keys(2_500) {
            m.remove(&k);
        }
        assert_eq!(writer.join().expect("no panic"), 5_000);
        assert_eq!(m.len(), 2_500);
        assert!(m.iter().all(|(_, v)| v == b"new value, longer"));
    }

    /// What a checkpoint's write does: a drained shard is given back at
    /// once, so a write to it copies nothing, and the blocks the map
    /// deferred to it are freed by the drain, not when the view is dropped.
    #[test]
    fn draining_a_view_gives_each_shard_back_as_it_goes() {
        let base = block_count::live();
        let mut m = KeyMap::default();
        let keys = spread_keys(20_000);
        for k in &keys {
            m.set(k, b"v1");
        }
        let mut view = m.freeze();
        let half = SHARDS / 2;
        let (early, late): (Vec<&Vec<u8>>, Vec<&Vec<u8>>) = keys
            .iter()
            .partition(|k| shard_of_digest(key_digest(k)) < half);
        assert!(early.len() > 9_000 && late.len() > 9_000);
        // Overwrite every key with a longer value: each shard is copied and
        // every old value deferred to the view's shards.
        for k in &keys {
            m.set(k, b"v2, longer");
        }
        assert_eq!(
            block_count::live() - base,
            2 * 20_000,
            "old values deferred"
        );
        let mut listed = Vec::new();
        let more = view
            .drain(half, |k, v, _| {
                listed.push((k.to_vec(), v.to_vec()));
                Ok::<(), ()>(())
            })
            .expect("visit never fails");
        assert!(more && !view.is_drained());
        assert_eq!(listed.len(), early.len());
        assert!(
            listed.iter().all(|(_, v)| v == b"v1"),
            "the state at the freeze"
        );
        // The drained half's old values are freed; the rest still deferred.
        assert_eq!(block_count::live() - base, 20_000 + late.len() as isize);
        // A write to a drained shard finds it unshared: in place, no copy.
        let frozen_again = m.freeze();
        drop(frozen_again);
        let before: Vec<*const Shard> = m.shards.iter().flatten().map(Arc::as_ptr).collect();
        for k in &keys {
            m.set(k, b"v3, longer");
        }
        let after: Vec<*const Shard> = m.shards.iter().flatten().map(Arc::as_ptr).collect();
        assert_eq!(before, after, "no shard copied once no view holds it");
        // The late half was copied before the view got to it, so the view
        // still lists v1 there.
        let rest: Vec<Vec<u8>> = view.entries().map(|(_, v, _)| v.to_vec()).collect();
        assert_eq!(rest.len(), late.len());
        assert!(rest.iter().all(|v| v == b"v1"));
        assert!(!view
            .drain(usize::MAX, |_, _, _| Ok::<(), ()>(()))
            .expect("visit never fails"));
        assert!(view.is_drained());
        assert_eq!(
            block_count::live() - base,
            20_000,
            "only the map's own values"
        );
        drop(view);
        drop(m);
        assert_eq!(block_count::live(), base);
    }

    /// A view drained on another thread while the map keeps writing: the
    /// view lists the state at the freeze, the map its own, and every block
    /// is freed once (under ASan: no use after free either).
    #[test]
    fn a_view_drained_on_another_thread_while_the_map_writes() {
        let base = block_count::live();
        let mut m = KeyMap::default();
        let keys = spread_keys(30_000);
        for k in &keys {
            m.set(k, b"old value");
        }
        let mut view = m.freeze();
        let reader = std::thread::spawn(move || {
            let mut old = 0usize;
            // Small steps, so the drain and the writes interleave.
            while view
                .drain(64, |_, v, _| {
                    if v == b"old value" {
                        old += 1;
                    }
                    Ok::<(), ()>(())
                })
                .expect("visit never fails")
            {}
            // The blocks this thread freed (the count is per thread).
            (old, block_count::live())
        });
        for round in 0..3 {
            for k in &keys {
                m.set(k, format!("new value {round}").as_bytes());
            }
        }
        for k in &keys[..10_000] {
            assert!(m.remove(k));
        }
        let (old, freed_there) = reader.join().expect("no panic");
        assert_eq!(old, 30_000);
        assert_eq!(m.len(), 20_000);
        assert!(m.iter().all(|(_, v)| v == b"new value 2"));
        assert_eq!(block_count::live() + freed_there - base, 20_000);
        drop(m);
        assert_eq!(block_count::live() + freed_there, base);
    }

    #[test]
    fn an_empty_map_has_no_shards_until_written() {
        let mut m = KeyMap::default();
        assert_eq!(non_empty_shards(&m), 0);
        let frozen = m.freeze();
        assert!(frozen.is_empty() && frozen.iter().next().is_none());
        m.set(b"k", b"v");
        assert_eq!(non_empty_shards(&m), 1);
        let written = shard_of_digest(key_digest(b"k"));
        assert!(m.shards[written].is_some());
        assert_eq!(m.get(b"k"), Some(&b"v"[..]));
        assert_eq!(m.get(b"other"), None);
        assert_eq!(frozen.len(), 0);
    }

    #[test]
    fn entries_are_in_digest_then_key_order_whatever_the_insertion_order() {
        let keys = spread_keys(5_000);
        let (mut a, mut b) = (KeyMap::default(), KeyMap::with_capacity(5_000));
        for k in &keys {
            a.set(k, k);
        }
        for k in keys.iter().rev() {
            b.set(k, b"placeholder");
            b.set(k, k);
        }
        b.set(b"gone", b"x");
        assert!(b.remove(b"gone"));
        let (fa, fb) = (a.freeze(), b.freeze());
        let ea: Vec<(&[u8], &[u8], Option<u64>)> = fa.entries().collect();
        let eb: Vec<(&[u8], &[u8], Option<u64>)> = fb.entries().collect();
        assert_eq!(ea.len(), keys.len());
        assert_eq!(ea, eb);
        assert!(
            ea.windows(2)
                .all(|w| (key_digest(w[0].0), w[0].0) < (key_digest(w[1].0), w[1].0)),
            "strictly ascending (digest, key)"
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Set(Vec<u8>, Vec<u8>),
        Remove(Vec<u8>),
    }

    fn op() -> impl Strategy<Value = Op> {
        // Few distinct keys, some around the inline limit, so ops collide.
        let key = (0u8..12, 0usize..3).prop_map(|(k, size)| {
            let len = [1, INLINE_KEY, INLINE_KEY + 5][size];
            vec![k; len]
        });
        // Mostly small values, some either side of the shared-value
        // threshold, so overwrites change a value's form both ways.
        let value = prop_oneof![
            4 => proptest::collection::vec(any::<u8>(), 0..8),
            1 => (any::<u8>(), 0usize..2).prop_map(|(b, big)| {
                vec![b; crate::stored_value::SHARED_VALUE_MIN - 1 + big]
            }),
        ];
        prop_oneof![
            3 => (key.clone(), value).prop_map(|(k, v)| Op::Set(k, v)),
            1 => key.prop_map(Op::Remove),
        ]
    }

    #[derive(Debug, Clone)]
    enum Step {
        Write(Op),
        Freeze,
        DropView(prop::sample::Index),
        CloneView(prop::sample::Index),
        /// Drains this many more shards of a view (a checkpoint's write
        /// getting that far).
        Drain(prop::sample::Index, usize),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            12 => op().prop_map(Step::Write),
            1 => Just(Step::Freeze),
            1 => any::<prop::sample::Index>().prop_map(Step::DropView),
            1 => any::<prop::sample::Index>().prop_map(Step::CloneView),
            2 => (any::<prop::sample::Index>(), 0..SHARDS / 3).prop_map(|(i, n)| Step::Drain(i, n)),
        ]
    }

    /// The blocks the map owns when no view is alive: each value, and each
    /// long key.
    fn own_blocks(model: &HashMap<Vec<u8>, Vec<u8>>) -> isize {
        model
            .keys()
            .map(|k| if k.len() > INLINE_KEY { 2 } else { 1 })
            .sum()
    }

    /// A map's contents as `(key, value)` pairs.
    type Contents = Vec<(Vec<u8>, Vec<u8>)>;

    fn sorted_by_digest(model: &HashMap<Vec<u8>, Vec<u8>>) -> Contents {
        let mut v: Vec<(Vec<u8>, Vec<u8>)> = model.clone().into_iter().collect();
        v.sort_by(|a, b| (key_digest(&a.0), &a.0).cmp(&(key_digest(&b.0), &b.0)));
        v
    }

    proptest! {
        /// Any interleaving of writes, freezes (overlapping or not), view
        /// clones, partial drains and view drops: every view lists exactly
        /// the state it was taken in (what it drained, then what it has
        /// left), the map matches the model, the map owns exactly its own
        /// blocks whenever every view alive is drained (so a drain frees
        /// what was deferred to the shards it lets go of), and once
        /// everything is dropped (map first or views first) every block was
        /// freed exactly once.
        #[test]
        fn views_keep_their_state_and_every_block_is_freed_once(
            steps in proptest::collection::vec(step(), 0..300),
            map_first in any::<bool>(),
        ) {
            let base = block_count::live();
            let mut m = KeyMap::default();
            let mut model: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
            // Each view, the state it was taken in, and what it drained.
            let mut views: Vec<(FrozenKeyMap, Contents, Contents)> = Vec::new();
            for step in steps {
                match step {
                    Step::Write(Op::Set(k, v)) => {
                        m.set(&k, &v);
                        model.insert(k, v);
                    }
                    Step::Write(Op::Remove(k)) => {
                        prop_assert_eq!(m.remove(&k), model.remove(&k).is_some());
                    }
                    Step::Freeze => {
                        views.push((m.freeze(), sorted_by_digest(&model), Vec::new()))
                    }
                    Step::DropView(i) if !views.is_empty() => {
                        views.remove(i.index(views.len()));
                    }
                    Step::CloneView(i) if !views.is_empty() => {
                        let (v, snap, drained) = &views[i.index(views.len())];
                        views.push((v.clone(), snap.clone(), drained.clone()));
                    }
                    Step::Drain(i, shards) if !views.is_empty() => {
                        let index = i.index(views.len());
                        let (view, _, drained) = &mut views[index];
                        view.drain(shards, |k, v, _| {
                            drained.push((k.to_vec(), v.to_vec()));
                            Ok::<(), ()>(())
                        })
                        .expect("visit never fails");
                    }
                    Step::DropView(_) | Step::CloneView(_) | Step::Drain(..) => {}
                }
                if views.iter().all(|(view, _, _)| view.is_drained()) {
                    prop_assert_eq!(block_count::live() - base, own_blocks(&model));
                }
            }
            for (view, snapshot, drained) in &views {
                let mut listed = drained.clone();
                listed.extend(view.entries().map(|(k, v, _)| (k.to_vec(), v.to_vec())));
                prop_assert_eq!(view.len(), snapshot.len());
                prop_assert_eq!(&listed, snapshot);
            }
            prop_assert_eq!(m.len(), model.len());
            for (k, v) in &model {
                prop_assert_eq!(m.get(k), Some(&v[..]));
            }
            if map_first {
                drop(m);
                drop(views);
            } else {
                drop(views);
                prop_assert_eq!(block_count::live() - base, own_blocks(&model));
                drop(m);
            }
            prop_assert_eq!(block_count::live(), base);
        }
    }

    proptest! {
        /// The map behaves exactly like std's HashMap.
        #[test]
        fn matches_std_hashmap(ops in proptest::collection::vec(op(), 0..200)) {
            let mut m = KeyMap::default();
            let mut model: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
            for op in ops {
                match op {
                    Op::Set(k, v) => {
                        m.set(&k, &v);
                        model.insert(k, v);
                    }
                    Op::Remove(k) => {
                        prop_assert_eq!(m.remove(&k), model.remove(&k).is_some());
                    }
                }
                prop_assert_eq!(m.len(), model.len());
            }
            for (k, v) in &model {
                prop_assert_eq!(m.get(k), Some(&v[..]));
            }
            let mut seen: Vec<(Vec<u8>, Vec<u8>)> =
                m.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
            seen.sort();
            let mut want: Vec<(Vec<u8>, Vec<u8>)> = model.into_iter().collect();
            want.sort();
            prop_assert_eq!(seen, want);
        }

        /// A frozen view keeps the state it was taken in while the map
        /// goes on changing, and lists it sorted by (digest, key).
        #[test]
        fn a_frozen_view_ignores_later_writes(
            before in proptest::collection::vec(op(), 0..100),
            after in proptest::collection::vec(op(), 0..100),
        ) {
            let mut m = KeyMap::default();
            let mut model: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
            let apply = |m: &mut KeyMap, model: &mut HashMap<Vec<u8>, Vec<u8>>, ops: Vec<Op>| {
                for op in ops {
                    match op {
                        Op::Set(k, v) => {
                            m.set(&k, &v);
                            model.insert(k, v);
                        }
                        Op::Remove(k) => {
                            m.remove(&k);
                            model.remove(&k);
                        }
                    }
                }
            };
            apply(&mut m, &mut model, before);
            let frozen = m.freeze();
            let mut at_freeze: Vec<(Vec<u8>, Vec<u8>)> = model.clone().into_iter().collect();
            at_freeze.sort_by(|a, b| (key_digest(&a.0), &a.0).cmp(&(key_digest(&b.0), &b.0)));
            apply(&mut m, &mut model, after);
            let listed: Vec<(Vec<u8>, Vec<u8>)> =
                frozen.entries().map(|(k, v, _)| (k.to_vec(), v.to_vec())).collect();
            prop_assert_eq!(frozen.len(), at_freeze.len());
            prop_assert_eq!(listed, at_freeze);
            prop_assert_eq!(m.len(), model.len());
            for (k, v) in &model {
                prop_assert_eq!(m.get(k), Some(&v[..]));
            }
        }
    }
}
