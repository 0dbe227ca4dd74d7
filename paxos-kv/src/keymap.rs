//! [`KeyMap`]: the KV store's table, laid out for cache misses, not generality,
//! and sharded so a checkpoint can freeze it in O(1) and a write during the
//! checkpoint saves, at most, the one key it changes.
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
//! unchanged and no frozen view needs the old bytes (the common SET). That
//! is three misses per SET. Keys are hashed with std's `RandomState`
//! (SipHash with a per-process random key), so clients cannot choose keys
//! that collide.
//!
//! # Frozen views: the state at the freeze, saved key by key
//!
//! A checkpoint needs the whole table as it was at one slot while the node
//! keeps applying writes. [`KeyMap::freeze`] is O(1): it starts a new view
//! *epoch* and hands out a [`FrozenKeyMap`] that shares the table. The view
//! walks the table one shard at a time on the checkpoint's thread
//! ([`FrozenKeyMap::drain`]); a shard it has not walked yet is *pending*.
//! The first write to a key of a pending shard first *saves* that key's
//! state at the freeze (its value, or that it was absent, and its deadline)
//! beside the shard; the view lists the shard's entries that were not
//! saved, and the saved states of those that were. Once the view has walked
//! a shard it frees what was saved there and marks the shard done, and the
//! map writes to it as if no view existed.
//!
//! What that replaced, and why: shards used to be shared copy-on-write, and
//! the first write to a shard after a freeze copied the whole shard (an 8
//! KiB bucket array at ten million keys). Random writes touch every one of
//! the 65,536 shards within seconds of a freeze, so every checkpoint began
//! with a storm of copies — event-loop turns of 20–49 ms on every replica
//! at once, writes of up to 189 ms — and the copies were 0.4× of the data
//! in RSS. Saving one key costs one small allocation for the value the
//! write replaces anyway (the old block is moved to the saved state, not
//! copied) and one insert into the shard's small saved table, and memory
//! grows by the saved values only (docs/BENCHMARKS.md).
//!
//! # Shards, and who touches them
//!
//! 65,536 shards: the view holds a shard's lock while it copies that
//! shard's entries out (the loop waits for it only if it writes to that very
//! shard meanwhile), and a table never rehashes more than one shard's
//! entries at once; at ten million keys a shard is ~150 entries. An empty
//! shard is `None`, so a small map costs one vector of cells (32 bytes
//! each), not 65,536 tables.
//!
//! A key's shard is a fixed function of its bytes — the top bits of its
//! CRC32C ([`key_digest`]) — the same on every replica and every run, so a
//! frozen map can be written in an order that depends only on its contents
//! ([`FrozenKeyMap::visit`]). CRC32C is not keyed, so a client can aim all
//! its keys at one shard; that only costs the sharding (a big shard to copy
//! out under its lock), not the collision resistance: within a shard keys
//! are still placed by the keyed SipHash.
//!
//! Only the map (the event loop, through `&mut KeyMap`) writes a shard's
//! table; a view only reads it, under the shard's lock, and only while the
//! shard is pending for it. So:
//! - the map reads every shard without a lock (a view's concurrent reads
//!   are reads);
//! - the map writes a pending shard under its lock (the view may be reading
//!   it), and a shard that is not pending without one (no view will read it
//!   again: a view never goes back to a shard it has marked done, and a new
//!   view is only made by the map itself);
//! - the saved states are behind the lock, and only ever touched while the
//!   shard is pending.
//!
//! There is one lazy view at a time, which is all a node needs (it runs one
//! checkpoint at a time). A freeze while another lazy view is alive, or a
//! clone of a view, makes an *eager* view instead: an owned, sorted copy of
//! the state, O(state) in time and memory, for tests and tools.
//!
//! Invariant: a key is stored inline exactly when it is at most
//! [`INLINE_KEY`] bytes long, so equal keys always have equal representations.
//!
//! # Who owns the keys and values (the `unsafe` in this module)
//!
//! A bucket (`Entry`) is plain data: a long key and every value are raw
//! handles. The shard owns the blocks its entries reach; a saved state owns
//! its own key (a copy) and the value it holds; so every block has exactly
//! one owner, which frees it: the map when it overwrites or removes an entry
//! of a shard that is not pending (or whose key it has already saved), the
//! view when it is done with a shard's saved states, and whoever drops the
//! table last (the map, or a view that outlived it) for the rest. A value a
//! frozen view may read is never written in place: the first write to a key
//! of a pending shard moves the old value into the saved state and gives
//! the entry a new block.
//!
//! # Deadlines (expiry)
//!
//! A key may carry a deadline (a time in ms; what the time means is the
//! caller's business). Deadlines live beside the table, not in its buckets:
//! each shard has a `BTreeMap` of its keys that have one (empty, and so
//! free, when no key has a TTL; a key without one pays nothing in the
//! bucket), saved with the key's state for a frozen view; and the map keeps
//! a `(deadline, key)` index over all shards, not shared with frozen views,
//! so the caller can reclaim the keys that are due in deadline order
//! without scanning. The map never looks at a clock: whether a key is
//! *expired* is decided by the caller.

use crate::stored_value::StoredValue;
use bytes::Bytes;
use hashbrown::HashTable;
use std::cell::UnsafeCell;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{BuildHasher, RandomState};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Longest key stored inside its bucket.
pub const INLINE_KEY: usize = 22;

/// log2 of [`SHARDS`].
const SHARD_BITS: u32 = 16;

/// Number of shards (see the module docs for why this many).
pub const SHARDS: usize = 1 << SHARD_BITS;

/// The key's CRC32C: it picks the key's shard (its top
/// `SHARD_BITS` bits) and leads the order [`FrozenKeyMap::visit`]
/// lists entries in. Deterministic on every replica, unlike the in-shard
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

    /// # Safety
    /// A heap key is not freed while the returned slice is in use.
    unsafe fn as_slice(&self) -> &[u8] {
        match self {
            Key::Inline { len, bytes } => &bytes[..usize::from(*len)],
            // SAFETY: caller's guarantee; the block is a leaked Box<[u8]>.
            Key::Heap(b) => unsafe { b.as_ref() },
        }
    }

    /// Frees a heap key's block (an inline key has none).
    ///
    /// # Safety
    /// The caller owns the block, nobody reaches it again, and it is freed
    /// once.
    unsafe fn free(self) {
        if let Key::Heap(block) = self {
            #[cfg(test)]
            crate::stored_value::block_count::freed();
            // SAFETY: caller's guarantee; a leaked Box<[u8]> from `new`.
            drop(unsafe { Box::from_raw(block.as_ptr()) });
        }
    }
}

/// One bucket: plain data (see the module docs for who owns its blocks).
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
    /// blocks outlive the entry (module docs).
    fn key(&self) -> &[u8] {
        // SAFETY: see above.
        unsafe { self.key.as_slice() }
    }

    /// The value, on the same grounds as [`Entry::key`].
    fn value(&self) -> &[u8] {
        // SAFETY: see above.
        unsafe { self.value.as_slice() }
    }

    /// Frees the entry's blocks.
    ///
    /// # Safety
    /// The caller owns them and removed the entry from its table.
    unsafe fn free(self) {
        // SAFETY: caller's guarantee.
        unsafe {
            self.value.release();
            self.key.free();
        }
    }
}

/// One shard: a hash table of the keys whose digest has its index in the
/// top bits.
struct Shard {
    table: HashTable<Entry>,
    /// The deadline of each key of this shard that has one.
    deadlines: BTreeMap<Box<[u8]>, u64>,
}

impl Shard {
    fn new(table: HashTable<Entry>) -> Shard {
        Shard {
            table,
            deadlines: BTreeMap::new(),
        }
    }

    /// `key`'s deadline, if it has one (most shards have none: no lookup).
    fn deadline_of(&self, key: &[u8]) -> Option<u64> {
        if self.deadlines.is_empty() {
            return None;
        }
        self.deadlines.get(key).copied()
    }

    fn find(&self, hash: u64, key: &[u8]) -> Option<&Entry> {
        self.table.find(hash, |e| e.key() == key)
    }
}

/// A key's state when the live view was frozen, saved by the first write
/// to it after the freeze. Owns its key (a copy) and its value.
struct SavedKey {
    key: Key,
    /// `None`: the key was absent at the freeze.
    value: Option<StoredValue>,
    deadline: Option<u64>,
}

impl SavedKey {
    fn key(&self) -> &[u8] {
        // SAFETY: the saved state owns its key, alive while it is.
        unsafe { self.key.as_slice() }
    }

    /// # Safety
    /// Nobody reads this saved state again.
    unsafe fn free(self) {
        // SAFETY: the saved state owns both (caller's guarantee).
        unsafe {
            self.key.free();
            if let Some(value) = self.value {
                value.release();
            }
        }
    }
}

/// The keys of one pending shard saved since the freeze.
type Saved = HashTable<SavedKey>;

/// Bit of [`ShardCell::state`] set once the map has made the cell's shard
/// or saved a key there; never cleared. A view finishes a cell without it
/// with one compare-exchange instead of taking its lock (most of the
/// 65,536 cells of a small map), and the map sets it, under the lock,
/// before it decides that a view still needs the cell: so either the view
/// sees it and takes the lock, or the map sees the cell done.
const TOUCHED: u64 = 1 << 63;

/// One shard and what the live view needs of it.
struct ShardCell {
    /// The epoch of the newest view done with this shard, and [`TOUCHED`]:
    /// the shard is pending while the epoch is below the map's. Written
    /// under `saved`'s lock, except by a view finishing an untouched cell
    /// and by the map setting `TOUCHED` on a cell no view needs.
    state: AtomicU64,
    /// The keys saved for the pending view; also the shard's lock.
    saved: Mutex<Option<Box<Saved>>>,
    /// `None` for a shard that never had a key. Written by the map only
    /// (module docs: under the lock while pending).
    shard: UnsafeCell<Option<Box<Shard>>>,
}

impl ShardCell {
    fn new(shard: Option<Box<Shard>>) -> ShardCell {
        ShardCell {
            state: AtomicU64::new(if shard.is_some() { TOUCHED } else { 0 }),
            saved: Mutex::new(None),
            shard: UnsafeCell::new(shard),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<Box<Saved>>> {
        // A panic cannot leave the saved table half-written in a way that
        // matters: inserts and takes are whole.
        self.saved.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The shard, for reading.
    ///
    /// # Safety
    /// The caller is the map (nothing writes the shard meanwhile but
    /// itself, and not while this borrow lives), or a view holding the
    /// lock of a shard pending for it.
    unsafe fn shard(&self) -> Option<&Shard> {
        // SAFETY: caller's guarantee.
        unsafe { (*self.shard.get()).as_deref() }
    }

    /// The shard's slot, for writing.
    ///
    /// # Safety
    /// The caller is the map, holding `&mut KeyMap`, and either holds the
    /// lock or has seen (acquire) that no view needs the shard.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slot_mut(&self) -> &mut Option<Box<Shard>> {
        // SAFETY: caller's guarantee.
        unsafe { &mut *self.shard.get() }
    }
}

/// The table: the shards, shared by the map and its lazy view.
struct Table {
    cells: Box<[ShardCell]>,
    /// One key for every shard's table (and for the saved states): the
    /// tables are private, so nothing gains from separate keys.
    hasher: RandomState,
    /// True while a lazy view exists that has shards left to walk.
    view_alive: AtomicBool,
}

// SAFETY: the shards behind the cells' `UnsafeCell`s are written only by
// the map, on one thread at a time (it needs `&mut KeyMap`), and read
// concurrently only by the lazy view, under the cell's lock while the
// shard is pending; the map writes a pending shard only under that lock,
// and a view never reads a shard it has marked done (module docs). Blocks
// are freed by their one owner. Everything else is atomics and mutexes.
unsafe impl Send for Table {}
unsafe impl Sync for Table {}

impl Table {
    fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    /// Copies what the view of `epoch` lists of shard `index` into `out`
    /// (unsorted), under the shard's lock.
    fn collect(&self, index: usize, epoch: u64, out: &mut Collected) {
        let cell = &self.cells[index];
        let saved = cell.lock();
        assert!(
            cell.state.load(Ordering::Relaxed) & !TOUCHED < epoch,
            "a view reads only the shards it has not finished"
        );
        // SAFETY: a view holding the lock of a shard pending for it.
        if let Some(shard) = unsafe { cell.shard() } {
            for e in shard.table.iter() {
                let key = e.key();
                let was_saved = saved
                    .as_deref()
                    .is_some_and(|saved| saved.find(self.hash(key), |s| s.key() == key).is_some());
                if !was_saved {
                    out.push(key, e.value(), shard.deadline_of(key));
                }
            }
        }
        for s in saved.iter().flat_map(|saved| saved.iter()) {
            if let Some(value) = s.value {
                // SAFETY: the saved state owns the value, alive under the
                // lock.
                out.push(s.key(), unsafe { value.as_slice() }, s.deadline);
            }
        }
    }

    /// Marks shard `index` done for the view of `epoch` without its lock if
    /// the map never wrote it (so it was empty at the freeze and nothing
    /// was saved there); false if it must be walked and finished.
    fn finish_untouched(&self, index: usize, epoch: u64) -> bool {
        let cell = &self.cells[index];
        let state = cell.state.load(Ordering::Acquire);
        // Fails if the map sets TOUCHED first: then it is saving under the
        // lock, and the view must take the lock too.
        state & TOUCHED == 0
            && cell
                .state
                .compare_exchange(state, epoch, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    /// Whether the map never wrote shard `index` (it holds nothing, and
    /// held nothing at any freeze).
    fn untouched(&self, index: usize) -> bool {
        self.cells[index].state.load(Ordering::Acquire) & TOUCHED == 0
    }

    /// Marks shard `index` done for the view of `epoch` and frees what was
    /// saved there for it.
    fn finish(&self, index: usize, epoch: u64) {
        let cell = &self.cells[index];
        let mut saved = cell.lock();
        let taken = saved.take();
        // Release: the map's acquire load that sees this also sees that the
        // view's reads of the shard are over. (Under the lock of a pending
        // shard nobody else writes the state.)
        let touched = cell.state.load(Ordering::Relaxed) & TOUCHED;
        cell.state.store(epoch | touched, Ordering::Release);
        drop(saved);
        if let Some(taken) = taken {
            for s in taken.into_iter() {
                // SAFETY: unreachable: the map no longer looks at a shard's
                // saved states once it is done.
                unsafe { s.free() };
            }
        }
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        for cell in self.cells.iter_mut() {
            if *cell.state.get_mut() & TOUCHED == 0 {
                continue;
            }
            if let Some(mut shard) = cell.shard.get_mut().take() {
                for entry in shard.table.drain() {
                    // SAFETY: the last owner of the table owns its blocks.
                    unsafe { entry.free() };
                }
            }
            let saved = cell.saved.get_mut().unwrap_or_else(PoisonError::into_inner);
            for s in saved.take().into_iter().flat_map(|saved| saved.into_iter()) {
                // SAFETY: as above.
                unsafe { s.free() };
            }
        }
    }
}

/// A map from byte-string keys to byte-string values.
pub struct KeyMap {
    table: Arc<Table>,
    /// The epoch of the newest lazy view (0: none yet). A shard whose
    /// done epoch is below it is pending.
    epoch: u64,
    /// Keys in all shards, kept so `len` is O(1).
    len: usize,
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

/// How a write treats the state it changes when a view still needs it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Save {
    /// The write replaces or removes the value: move the old block into
    /// the saved state (the entry gets a new one).
    MoveValue,
    /// The write keeps the value (a deadline change): save a copy.
    CopyValue,
}

/// Write access to one shard, holding its lock if a view needs it.
struct ShardWrite<'a> {
    _lock: Option<MutexGuard<'a, Option<Box<Saved>>>>,
    shard: &'a mut Shard,
    /// The key's value block was moved into its saved state: the write must
    /// replace the entry's handle without freeing or writing the block.
    value_moved: bool,
}

impl KeyMap {
    /// An empty map with room for about `capacity` keys (spread evenly over
    /// the shards; a shard that gets more than its share grows alone).
    pub fn with_capacity(capacity: usize) -> Self {
        let per_shard = capacity / SHARDS;
        KeyMap {
            table: Arc::new(Table {
                // Below a key per shard, every shard starts empty (`None`):
                // a store is made on every restart and restore.
                cells: (0..SHARDS)
                    .map(|_| {
                        ShardCell::new(
                            (per_shard > 0)
                                .then(|| Box::new(Shard::new(HashTable::with_capacity(per_shard)))),
                        )
                    })
                    .collect(),
                hasher: RandomState::new(),
                view_alive: AtomicBool::new(false),
            }),
            epoch: 0,
            len: 0,
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
        self.table.hash(key)
    }

    /// Shard `index`, for reading.
    fn shard_at(&self, index: usize) -> Option<&Shard> {
        // SAFETY: the map reading; it writes only through `&mut self`.
        unsafe { self.table.cells[index].shard() }
    }

    fn shard(&self, key: &[u8]) -> Option<&Shard> {
        self.shard_at(shard_of_digest(key_digest(key)))
    }

    fn entry(&self, key: &[u8]) -> Option<&Entry> {
        self.shard(key)?.find(self.hash(key), key)
    }

    /// `key`'s shard, ready for writing (made if it was empty): if a view
    /// still needs the shard, with its lock held and `key`'s state at the
    /// freeze saved first (unless it already was). (Takes the fields it
    /// needs, so the caller can use the others.)
    fn shard_write<'a>(
        table: &'a Table,
        epoch: u64,
        key: &[u8],
        hash: u64,
        save: Save,
    ) -> ShardWrite<'a> {
        let cell = &table.cells[shard_of_digest(key_digest(key))];
        // Acquire: pairs with the view's release when it finished the
        // shard, so its reads of the shard come before these writes.
        let state = cell.state.load(Ordering::Acquire);
        if state & !TOUCHED >= epoch {
            if state & TOUCHED == 0 {
                // No view needs the cell, so none races this.
                cell.state.fetch_or(TOUCHED, Ordering::Relaxed);
            }
            // SAFETY: the map, no view needs the shard.
            let slot = unsafe { cell.slot_mut() };
            return ShardWrite {
                _lock: None,
                shard: slot.get_or_insert_with(|| Box::new(Shard::new(HashTable::new()))),
                value_moved: false,
            };
        }
        let mut lock = cell.lock();
        // SAFETY: the map, holding the lock.
        let slot = unsafe { cell.slot_mut() };
        let mut value_moved = false;
        // Touched before deciding: a view that has not finished the cell
        // now cannot finish it without the lock (`Table::finish_untouched`).
        // The view may have finished it since the check above.
        let state = cell.state.fetch_or(TOUCHED, Ordering::AcqRel);
        if state & !TOUCHED < epoch {
            let saved = lock.get_or_insert_with(Default::default);
            if saved.find(hash, |s| s.key() == key).is_none() {
                let shard = slot.as_deref();
                let (value, deadline) = match shard.and_then(|s| s.find(hash, key)) {
                    Some(e) => {
                        let value = match save {
                            Save::MoveValue => {
                                value_moved = true;
                                e.value
                            }
                            Save::CopyValue => StoredValue::new(e.value()),
                        };
                        (Some(value), shard.and_then(|s| s.deadline_of(key)))
                    }
                    None => (None, None),
                };
                saved.insert_unique(
                    hash,
                    SavedKey {
                        key: Key::new(key),
                        value,
                        deadline,
                    },
                    |s| table.hash(s.key()),
                );
            }
        }
        ShardWrite {
            _lock: Some(lock),
            shard: slot.get_or_insert_with(|| Box::new(Shard::new(HashTable::new()))),
            value_moved,
        }
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
        let entry = shard.find(self.hash(key), key)?;
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
    /// unchanged and no frozen view or pending reply may hold it. Keeps the
    /// key's deadline, if it has one.
    pub fn set(&mut self, key: &[u8], value: &[u8]) {
        let hash = self.hash(key);
        if let Some(sum) = self.content_digest {
            let old = self.get(key).map_or(0, |old| entry_digest(key, old));
            self.content_digest =
                Some(sum.wrapping_sub(old).wrapping_add(entry_digest(key, value)));
        }
        let table = &*self.table;
        let w = Self::shard_write(table, self.epoch, key, hash, Save::MoveValue);
        if let Some(e) = w.shard.table.find_mut(hash, |e| e.key() == key) {
            let old = e.value;
            if w.value_moved {
                // The saved state owns the old block now.
                e.value = StoredValue::new(value);
                return;
            }
            // SAFETY: the map owns it and no view reads it (not pending,
            // or already saved).
            if unsafe { old.overwrite_in_place(value) } {
                return;
            }
            e.value = StoredValue::new(value);
            // SAFETY: replaced above; owned, unreachable.
            unsafe { old.release() };
            return;
        }
        w.shard.table.insert_unique(
            hash,
            Entry {
                key: Key::new(key),
                value: StoredValue::new(value),
            },
            |e| table.hash(e.key()),
        );
        drop(w);
        self.len += 1;
        paxos_contracts::ensures!(self.get(key) == Some(value));
    }

    /// Removes `key`; true if it had a value.
    pub fn remove(&mut self, key: &[u8]) -> bool {
        if !self.contains_key(key) {
            return false;
        }
        let hash = self.hash(key);
        let w = Self::shard_write(&self.table, self.epoch, key, hash, Save::MoveValue);
        let Ok(entry) = w.shard.table.find_entry(hash, |e| e.key() == key) else {
            return false;
        };
        let (removed, _) = entry.remove();
        let deadline = w.shard.deadlines.remove(key);
        self.content_digest = self
            .content_digest
            .map(|sum| sum.wrapping_sub(entry_digest(key, removed.value())));
        // SAFETY: taken out of the table, which owned its blocks; a moved
        // value is the saved state's now (the key's block is not: the saved
        // state has its own copy).
        unsafe {
            removed.key.free();
            if !w.value_moved {
                removed.value.release();
            }
        }
        drop(w);
        if let Some(deadline) = deadline {
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
        (0..SHARDS)
            .filter_map(|i| self.shard_at(i))
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
        let hash = self.hash(key);
        let mut digest = self.content_digest;
        let w = Self::shard_write(&self.table, self.epoch, key, hash, Save::CopyValue);
        if let Some(old) = old {
            w.shard.deadlines.remove(key);
            digest = digest.map(|sum| sum.wrapping_sub(deadline_digest(key, old)));
        }
        if let Some(new) = deadline {
            w.shard.deadlines.insert(key.into(), new);
            digest = digest.map(|sum| sum.wrapping_add(deadline_digest(key, new)));
        }
        drop(w);
        if let Some(old) = old {
            self.by_deadline.remove(&(old, Box::from(key)));
        }
        if let Some(new) = deadline {
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
        for index in shard_of_digest(from)..SHARDS {
            let Some(shard) = self.shard_at(index) else {
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
                visit(key, e.value(), shard.deadline_of(key));
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

    /// A view of the map as it is now, unaffected by later writes. O(1):
    /// the view shares the table, and each later write to a key the view
    /// has not walked past saves that key's state first (module docs). If
    /// another such view is still walking the table, this one is an owned
    /// copy instead (O(state); a node never takes two at once).
    pub fn freeze(&mut self) -> FrozenKeyMap {
        let view = if self.table.view_alive.swap(true, Ordering::AcqRel) {
            View::Eager(EagerView::of_map(self))
        } else {
            // Every shard is done for the previous view (it cleared
            // `view_alive` only after finishing the last), so every one is
            // pending for this one.
            self.epoch += 1;
            View::Lazy(LazyView {
                table: Arc::clone(&self.table),
                epoch: self.epoch,
                next_shard: 0,
            })
        };
        FrozenKeyMap {
            view,
            len: self.len,
            deadlines: self.by_deadline.len(),
        }
    }
}

/// The entries of some shards, copied out for a view to visit without
/// holding a lock.
#[derive(Default)]
struct Collected {
    bytes: Vec<u8>,
    /// (digest, key start, key length, value length, deadline): the key's
    /// bytes, then the value's, from `start` in `bytes`.
    items: Vec<(u32, usize, usize, usize, Option<u64>)>,
}

impl Collected {
    fn push(&mut self, key: &[u8], value: &[u8], deadline: Option<u64>) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(key);
        self.bytes.extend_from_slice(value);
        self.items
            .push((key_digest(key), start, key.len(), value.len(), deadline));
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.items.clear();
    }

    /// Sorts the entries in `(key_digest(key), key)` order.
    fn sort(&mut self) {
        let bytes = &self.bytes;
        // Keys are unique, so the value never decides the order.
        self.items.sort_unstable_by(|a, b| {
            (a.0, &bytes[a.1..a.1 + a.2]).cmp(&(b.0, &bytes[b.1..b.1 + b.2]))
        });
    }

    fn visit<E>(
        &self,
        visit: &mut impl FnMut(&[u8], &[u8], Option<u64>) -> Result<(), E>,
    ) -> Result<(), E> {
        for &(_, start, key_len, value_len, deadline) in &self.items {
            let key = &self.bytes[start..start + key_len];
            let value = &self.bytes[start + key_len..start + key_len + value_len];
            visit(key, value, deadline)?;
        }
        Ok(())
    }
}

/// The lazy view: the shared table and how far the view has walked it.
struct LazyView {
    table: Arc<Table>,
    epoch: u64,
    /// Shards before this index are done (walked, saved states freed).
    next_shard: usize,
}

impl LazyView {
    /// Shard `index`'s entries as this view lists them, sorted, in
    /// `collected` (cleared first): copied out under the shard's lock, so
    /// the caller visits them without it (a visit may write to a disk, and
    /// the map may be waiting to write to this shard).
    fn shard_entries(&self, index: usize, collected: &mut Collected) {
        collected.clear();
        self.table.collect(index, self.epoch, collected);
        collected.sort();
    }

    /// Marks shard `next_shard` done (without its lock if the map never
    /// wrote it), freeing what was saved there, and moves on.
    fn finish_next(&mut self) {
        if !self.table.finish_untouched(self.next_shard, self.epoch) {
            self.table.finish(self.next_shard, self.epoch);
        }
        self.next_shard += 1;
        if self.next_shard == SHARDS {
            // Release: the next freeze's acquire sees every shard done.
            self.table.view_alive.store(false, Ordering::Release);
        }
    }

    /// Marks the shards from `next_shard` up to `end` done.
    fn finish_until(&mut self, end: usize) {
        while self.next_shard < end {
            self.finish_next();
        }
    }
}

impl Drop for LazyView {
    fn drop(&mut self) {
        // The shards not walked: the map stops saving keys for them.
        if self.next_shard < SHARDS {
            self.finish_until(SHARDS);
        }
    }
}

/// One entry of an eager view.
#[derive(Clone)]
struct OwnedEntry {
    key: Box<[u8]>,
    value: Box<[u8]>,
    deadline: Option<u64>,
}

/// An owned copy of a state, sorted as [`FrozenKeyMap::visit`] lists it.
#[derive(Clone, Default)]
struct EagerView {
    entries: Vec<OwnedEntry>,
    /// Entries before this index were drained.
    next: usize,
    /// Shards before this index were drained.
    next_shard: usize,
}

impl EagerView {
    fn of_map(map: &KeyMap) -> EagerView {
        let mut entries = Vec::with_capacity(map.len());
        map.scan(0, usize::MAX, |key, value, deadline| {
            entries.push(OwnedEntry {
                key: key.into(),
                value: value.into(),
                deadline,
            })
        });
        EagerView {
            entries,
            next: 0,
            next_shard: 0,
        }
    }

    fn of_collected(collected: &Collected, next_shard: usize) -> EagerView {
        let mut entries = Vec::with_capacity(collected.items.len());
        let _ = collected.visit(&mut |key, value, deadline| {
            entries.push(OwnedEntry {
                key: key.into(),
                value: value.into(),
                deadline,
            });
            Ok::<(), ()>(())
        });
        EagerView {
            entries,
            next: 0,
            next_shard,
        }
    }

    /// The entries not drained of the shards before `end`.
    fn until_shard(&self, end: usize) -> &[OwnedEntry] {
        let rest = &self.entries[self.next..];
        let n = rest.partition_point(|e| shard_of_digest(key_digest(&e.key)) < end);
        &rest[..n]
    }
}

enum View {
    Lazy(LazyView),
    Eager(EagerView),
}

/// An immutable view of a [`KeyMap`] taken by [`KeyMap::freeze`]. `Send`,
/// so it can be written out on another thread, where [`FrozenKeyMap::drain`]
/// finishes each shard as soon as it is written (the map stops saving keys
/// for it, and what it saved there is freed), and dropping the view
/// finishes the rest.
pub struct FrozenKeyMap {
    view: View,
    /// Keys at the freeze (drained or not).
    len: usize,
    /// Keys with a deadline at the freeze.
    deadlines: usize,
}

impl std::fmt::Debug for FrozenKeyMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrozenKeyMap")
            .field("len", &self.len)
            .field("next_shard", &self.next_shard())
            .field("lazy", &matches!(self.view, View::Lazy(_)))
            .finish()
    }
}

impl Default for FrozenKeyMap {
    fn default() -> Self {
        FrozenKeyMap {
            view: View::Eager(EagerView::default()),
            len: 0,
            deadlines: 0,
        }
    }
}

/// A clone is an owned copy of what the view has not drained yet (O(state)):
/// the table serves one lazy view at a time.
impl Clone for FrozenKeyMap {
    fn clone(&self) -> Self {
        let view = match &self.view {
            View::Eager(eager) => eager.clone(),
            View::Lazy(lazy) => {
                let mut collected = Collected::default();
                for index in (lazy.next_shard..SHARDS).filter(|&i| !lazy.table.untouched(i)) {
                    lazy.table.collect(index, lazy.epoch, &mut collected);
                }
                collected.sort();
                EagerView::of_collected(&collected, lazy.next_shard)
            }
        };
        FrozenKeyMap {
            view: View::Eager(view),
            len: self.len,
            deadlines: self.deadlines,
        }
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

    fn next_shard(&self) -> usize {
        match &self.view {
            View::Lazy(lazy) => lazy.next_shard,
            View::Eager(eager) => eager.next_shard,
        }
    }

    /// True once [`FrozenKeyMap::drain`] has visited every shard.
    pub fn is_drained(&self) -> bool {
        self.next_shard() == SHARDS
    }

    /// Visits every (key, value, deadline) not yet drained, in ascending
    /// `(key_digest(key), key)` order: an order that depends only on the
    /// contents, so equal maps (on any replica, whatever their insertion
    /// order and hash seed) list equal sequences. It does not depend on
    /// [`SHARDS`] either: a shard holds a range of digests, so it is enough
    /// to sort one shard at a time (a copy of one shard at a time). Stops
    /// at the first error `visit` returns. Drains nothing.
    pub fn visit<E>(
        &self,
        mut visit: impl FnMut(&[u8], &[u8], Option<u64>) -> Result<(), E>,
    ) -> Result<(), E> {
        match &self.view {
            View::Eager(eager) => {
                for e in &eager.entries[eager.next..] {
                    visit(&e.key, &e.value, e.deadline)?;
                }
                Ok(())
            }
            View::Lazy(lazy) => {
                let mut collected = Collected::default();
                // An untouched shard was empty at the freeze.
                for index in (lazy.next_shard..SHARDS).filter(|&i| !lazy.table.untouched(i)) {
                    lazy.shard_entries(index, &mut collected);
                    collected.visit(&mut visit)?;
                }
                Ok(())
            }
        }
    }

    /// Visits the entries of up to `shards` more shards, in the order of
    /// [`FrozenKeyMap::visit`], and finishes each shard once its entries
    /// are visited: the map stops saving keys for it, and what it saved
    /// there is freed now, here. Returns whether shards remain. Stops at
    /// the first error `visit` returns, with the shard it was visiting
    /// kept (a retry visits it again from its start).
    pub fn drain<E>(
        &mut self,
        shards: usize,
        mut visit: impl FnMut(&[u8], &[u8], Option<u64>) -> Result<(), E>,
    ) -> Result<bool, E> {
        let end = self.next_shard().saturating_add(shards).min(SHARDS);
        match &mut self.view {
            View::Eager(eager) => {
                let drained = eager.until_shard(end);
                for e in drained {
                    visit(&e.key, &e.value, e.deadline)?;
                }
                eager.next += drained.len();
                eager.next_shard = end;
            }
            View::Lazy(lazy) => {
                let mut collected = Collected::default();
                while lazy.next_shard < end {
                    if !lazy.table.untouched(lazy.next_shard) {
                        lazy.shard_entries(lazy.next_shard, &mut collected);
                        collected.visit(&mut visit)?;
                    }
                    lazy.finish_next();
                }
            }
        }
        Ok(!self.is_drained())
    }

    /// Whether this view shares the table (else it is an owned copy).
    #[cfg(test)]
    pub(crate) fn is_lazy(&self) -> bool {
        matches!(self.view, View::Lazy(_))
    }

    /// How many keys are saved for this view: for tests that
    /// check a freeze copies nothing and a write saves only its key.
    #[cfg(test)]
    pub(crate) fn saved_keys(&self) -> usize {
        match &self.view {
            View::Eager(_) => 0,
            View::Lazy(lazy) => lazy
                .table
                .cells
                .iter()
                .map(|c| c.lock().as_deref().map_or(0, |s| s.len()))
                .sum(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stored_value::block_count;
    use proptest::prelude::*;
    use std::collections::HashMap;

    /// A view's (key, value, deadline) entries not drained yet, in order.
    type Listed = Vec<(Vec<u8>, Vec<u8>, Option<u64>)>;

    fn listed(view: &FrozenKeyMap) -> Listed {
        let mut out = Vec::new();
        view.visit(|k, v, d| {
            out.push((k.to_vec(), v.to_vec(), d));
            Ok::<(), ()>(())
        })
        .expect("visit never fails");
        out
    }

    /// A view's (key, value) pairs not drained yet, in order.
    fn pairs(view: &FrozenKeyMap) -> Vec<(Vec<u8>, Vec<u8>)> {
        listed(view).into_iter().map(|(k, v, _)| (k, v)).collect()
    }

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
        let listed: Vec<(Vec<u8>, Option<u64>)> = listed(&frozen)
            .into_iter()
            .map(|(k, _, d)| (k, d))
            .collect();
        assert!(listed.contains(&(b"a".to_vec(), Some(50))));
        assert!(listed.contains(&(b"b".to_vec(), Some(20))));
        assert_eq!(frozen.deadlines_len(), 2);
    }

    /// Keys that land in many different shards.
    fn spread_keys(n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| format!("key:{i}").into_bytes()).collect()
    }

    fn non_empty_shards(m: &KeyMap) -> usize {
        (0..SHARDS).filter(|&i| m.shard_at(i).is_some()).count()
    }

    #[test]
    fn freeze_copies_nothing_and_a_write_saves_only_its_key() {
        let base = block_count::live();
        let mut m = KeyMap::default();
        for k in spread_keys(10_000) {
            m.set(&k, b"old");
        }
        let frozen = m.freeze();
        assert!(frozen.is_lazy());
        assert_eq!(frozen.len(), 10_000);
        assert_eq!(frozen.saved_keys(), 0);
        assert_eq!(block_count::live() - base, 10_000, "nothing copied");

        // Neither a read nor removing an absent key saves anything.
        assert_eq!(m.get(b"key:7"), Some(&b"old"[..]));
        assert!(!m.remove(b"no such key"));
        assert_eq!(frozen.saved_keys(), 0);

        m.set(b"key:7", b"new");
        assert_eq!(frozen.saved_keys(), 1);
        m.set(b"key:7", b"newer");
        m.set(b"key:7", b"newest");
        assert_eq!(frozen.saved_keys(), 1, "a key is saved once");
        m.set(b"added", b"x");
        assert_eq!(frozen.saved_keys(), 2, "so is a key absent at the freeze");
        // The saved old value is the block moved out of the table: one
        // value more than the map holds.
        assert_eq!(block_count::live() - base, 10_001 + 1);
        let at_freeze = listed(&frozen);
        let seven = at_freeze.iter().find(|(k, _, _)| k == b"key:7");
        assert_eq!(seven.map(|(_, v, _)| &v[..]), Some(&b"old"[..]));
        assert!(!at_freeze.iter().any(|(k, _, _)| k == b"added"));
        assert_eq!(at_freeze.len(), 10_000);
        assert_eq!(m.get(b"key:7"), Some(&b"newest"[..]));

        drop(frozen);
        assert_eq!(block_count::live() - base, 10_001, "the saved value freed");
        assert!(
            m.freeze().is_lazy(),
            "a dropped view leaves room for the next"
        );
    }

    /// The first write to a key a view still needs moves the old value to
    /// the key's saved state and never writes or frees the bytes the view
    /// reads, for both value forms and long keys; once the view is done
    /// with the shard, the map writes in place again.
    #[test]
    fn a_write_never_writes_or_frees_what_a_view_reads() {
        use crate::stored_value::SHARED_VALUE_MIN;
        let long_key = vec![b'k'; INLINE_KEY + 9];
        let large = vec![b'L'; SHARED_VALUE_MIN];
        let mut m = KeyMap::default();
        m.set(&long_key, b"small");
        m.set(b"large", &large);
        let large_at = m.get(b"large").unwrap().as_ptr();
        let small_at = m.get(&long_key).unwrap().as_ptr();
        let mut view = m.freeze();
        assert_eq!(m.value_holders(b"large"), Some(1), "views take no count");

        // Same-size overwrites: new blocks, the view's bytes unchanged.
        m.set(b"large", &vec![b'M'; SHARED_VALUE_MIN]);
        m.set(&long_key, b"SMALL");
        assert_ne!(m.get(b"large").unwrap().as_ptr(), large_at);
        assert_ne!(m.get(&long_key).unwrap().as_ptr(), small_at);
        let in_view = |view: &FrozenKeyMap, key: &[u8]| {
            listed(view)
                .into_iter()
                .find(|(k, _, _)| k == key)
                .map(|(_, v, _)| v)
        };
        assert_eq!(in_view(&view, b"large"), Some(large.clone()));
        assert_eq!(in_view(&view, &long_key).as_deref(), Some(&b"small"[..]));
        assert_eq!(m.get(b"large"), Some(&vec![b'M'; SHARED_VALUE_MIN][..]));
        assert_eq!(m.get(&long_key), Some(&b"SMALL"[..]));
        // Nor may a removal free them.
        assert!(m.remove(&long_key));
        assert!(m.remove(b"large"));
        assert_eq!(in_view(&view, &long_key).as_deref(), Some(&b"small"[..]));
        assert_eq!(in_view(&view, b"large"), Some(large));

        // Once drained, a same-size write is in place again.
        m.set(b"k2", b"12345");
        assert!(!view
            .drain(usize::MAX, |_, _, _| Ok::<(), ()>(()))
            .expect("visit never fails"));
        let at = m.get(b"k2").unwrap().as_ptr();
        m.set(b"k2", b"54321");
        assert_eq!(m.get(b"k2").unwrap().as_ptr(), at, "in place");
        assert_eq!(m.get(b"k2"), Some(&b"54321"[..]));
    }

    /// A second freeze while a lazy view still walks the table gives an
    /// owned copy with the same contents, and so does a clone; once the
    /// lazy view is drained (not even dropped), freezes are lazy again.
    #[test]
    fn overlapping_views_are_owned_copies() {
        let mut m = KeyMap::default();
        for k in spread_keys(3_000) {
            m.set(&k, b"one");
        }
        let mut first = m.freeze();
        m.set(b"key:1", b"two");
        let second = m.freeze();
        assert!(first.is_lazy() && !second.is_lazy());
        let clone = first.clone();
        assert!(!clone.is_lazy());
        assert_eq!(listed(&clone), listed(&first));
        assert!(listed(&first).iter().all(|(_, v, _)| v == b"one"));
        let in_second = listed(&second);
        assert_eq!(in_second.len(), 3_000);
        assert!(in_second.contains(&(b"key:1".to_vec(), b"two".to_vec(), None)));
        first
            .drain(usize::MAX, |_, _, _| Ok::<(), ()>(()))
            .expect("visit never fails");
        assert!(m.freeze().is_lazy());
        assert_eq!(listed(&clone).len(), 3_000, "the copy is the view's own");
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
            assert_eq!(pairs(&first).len(), 4_000);
            assert!(pairs(&first).iter().all(|(_, v)| v == b"v1"));
            assert_eq!(pairs(&second).len(), 3_000);
            assert_eq!(
                pairs(&second_clone)
                    .iter()
                    .filter(|(_, v)| v == b"longer value")
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
                // And writes are in place again.
                m.set(&long(0), b"v4");
                m.set(format!("s{}", 1_999).as_bytes(), b"v9");
                assert_eq!(block_count::live() - base, 1_000 + 2_500);
                drop(m);
                assert_eq!(block_count::live(), base, "all freed, none twice");
            }
        }
    }

    #[test]
    fn a_view_dropped_on_another_thread_frees_what_was_saved_for_it() {
        let mut m = KeyMap::default();
        for k in spread_keys(5_000) {
            m.set(&k, b"old value");
        }
        let frozen = m.freeze();
        let writer = std::thread::spawn(move || {
            let count = pairs(&frozen)
                .iter()
                .filter(|(_, v)| v == b"old value")
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

    /// What a checkpoint's write does: a drained shard is finished at once,
    /// so a write to it saves nothing, and what the map saved for it is
    /// freed by the drain, not when the view is dropped.
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
        // Overwrite every key with a longer value: every old value is saved
        // for the view.
        for k in &keys {
            m.set(k, b"v2, longer");
        }
        assert_eq!(block_count::live() - base, 2 * 20_000, "old values saved");
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
        // The drained half's old values are freed; the rest still saved.
        assert_eq!(block_count::live() - base, 20_000 + late.len() as isize);
        assert_eq!(view.saved_keys(), late.len());
        // A write to a drained shard saves nothing.
        for k in &keys {
            m.set(k, b"v3, longer");
        }
        assert_eq!(view.saved_keys(), late.len());
        assert_eq!(block_count::live() - base, 20_000 + late.len() as isize);
        // The late half was saved before the view got to it, so the view
        // still lists v1 there.
        let rest: Vec<Vec<u8>> = pairs(&view).into_iter().map(|(_, v)| v).collect();
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
        assert!(frozen.is_empty() && listed(&frozen).is_empty());
        m.set(b"k", b"v");
        assert_eq!(non_empty_shards(&m), 1);
        let written = shard_of_digest(key_digest(b"k"));
        assert!(m.shard_at(written).is_some());
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
        let (ea, eb) = (listed(&fa), listed(&fb));
        assert_eq!(ea.len(), keys.len());
        assert_eq!(ea, eb);
        assert!(
            ea.windows(2)
                .all(|w| (key_digest(&w[0].0), &w[0].0) < (key_digest(&w[1].0), &w[1].0)),
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
        /// what was saved for the shards it finishes), and once
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
                listed.extend(pairs(view));
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
            prop_assert_eq!(frozen.len(), at_freeze.len());
            prop_assert_eq!(pairs(&frozen), at_freeze);
            prop_assert_eq!(m.len(), model.len());
            for (k, v) in &model {
                prop_assert_eq!(m.get(k), Some(&v[..]));
            }
        }
    }
}
