//! [`KeyMap`]: the KV store's table, laid out for cache misses, not generality,
//! and sharded copy-on-write so a checkpoint can freeze it in microseconds.
//!
//! Why not `HashMap<Bytes, Bytes>`: every replica applies every SET, and on
//! the bench (256K keys, 100 B values) a SET there cost four dependent cache
//! misses — the control bytes, the 64-byte `(Bytes, Bytes)` bucket, the key's
//! own allocation for the equality check, the value's allocation — on a 32 MiB
//! table. It was the largest single item in a follower's profile.
//!
//! Here a bucket is 40 bytes: keys of up to [`INLINE_KEY`] bytes live inside
//! it, so the equality check reads the bucket just loaded, and the value is a
//! 16-byte [`StoredValue`] — a reference-counted buffer (a large one framed,
//! so a GET's reply can send it without a copy) — overwritten in place when
//! the size is unchanged and no frozen view shares it (the common SET). That is
//! three misses per SET on a table 40% smaller. Keys are
//! hashed with std's `RandomState` (SipHash with a per-process random key),
//! so clients cannot choose keys that collide.
//!
//! # Shards, and why
//!
//! A checkpoint needs a frozen view of the whole table while the node keeps
//! applying writes. Copying or encoding the table on the event loop took
//! longer than an election timeout at a million keys, so the table is split
//! into [`SHARDS`] independent hash tables, each behind an `Arc`.
//! [`KeyMap::freeze`] clones the `Arc`s (O(shards), no entry is touched) and
//! the [`FrozenKeyMap`] goes to a background thread. A write goes through
//! `Arc::make_mut`: while a frozen view still holds the shard, the first
//! write to it copies that one shard (its buckets and the long keys in it;
//! the values are shared, a count bump each), and later writes to it are
//! ordinary in-place writes. So during a checkpoint a write costs at most
//! one shard's copy, and the extra memory is at most the buckets of the
//! shards written meanwhile, plus the old versions of values overwritten
//! meanwhile (the frozen originals are freed when the checkpoint is
//! written). Outside a
//! checkpoint every shard is unshared and `make_mut` is one uncontended
//! atomic check on the shard's header. Growing is per shard too: a table
//! never rehashes more than one shard's entries at once.
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
//! # Deadlines (expiry)
//!
//! A key may carry a deadline (a time in ms; what the time means is the
//! caller's business). Deadlines live beside the table, not in its buckets:
//! each shard has a `BTreeMap` of its keys that have one (empty, and so
//! free, when no key has a TTL; a key without one pays nothing in the
//! bucket), shared copy-on-write with the shard so a frozen view keeps
//! them; and the map keeps a `(deadline, key)` index over all shards, not
//! shared with frozen views, so the caller can reclaim the keys that are
//! due in deadline order without scanning. The map never looks at a
//! clock: whether a key is *expired* is decided by the caller.

use crate::stored_value::StoredValue;
use bytes::Bytes;
use hashbrown::HashTable;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

/// Longest key stored inside its bucket.
pub const INLINE_KEY: usize = 22;

/// log2 of [`SHARDS`].
const SHARD_BITS: u32 = 12;

/// Number of shards. 4096 balances the two costs that pull apart:
/// [`KeyMap::freeze`] clones one `Arc` per shard (4096 uncontended atomic
/// increments, some microseconds, plus a 32 KiB vector), and the first
/// write to a shard during a checkpoint copies the whole shard (about 250
/// entries at a million keys: tens of microseconds, far below an election
/// timeout even at ten million keys). An empty map costs 4096 small
/// allocations (about 200 KiB).
pub const SHARDS: usize = 1 << SHARD_BITS;

/// The key's CRC32C: it picks the key's shard (its top 12
/// bits) and leads the order [`FrozenKeyMap::entries`] writes entries in.
/// Deterministic on every replica, unlike the in-shard SipHash.
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

#[derive(Clone)]
enum Key {
    Inline { len: u8, bytes: [u8; INLINE_KEY] },
    Heap(Box<[u8]>),
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
            Key::Heap(key.into())
        }
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            Key::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Key::Heap(b) => b,
        }
    }
}

#[derive(Clone)]
struct Entry {
    key: Key,
    value: StoredValue,
}

// The layout argument above relies on this (64-bit targets).
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<Entry>() == 40);

/// One shard: a hash table of the keys whose digest has its index in the
/// top bits. Cloned only by `Arc::make_mut`, when a frozen view shares it.
#[derive(Clone, Default)]
struct Shard {
    table: HashTable<Entry>,
    /// The deadline of each key of this shard that has one.
    deadlines: BTreeMap<Box<[u8]>, u64>,
}

/// A map from byte-string keys to byte-string values.
pub struct KeyMap {
    /// Always [`SHARDS`] long.
    shards: Vec<Arc<Shard>>,
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
        // Without a capacity of at least one key per shard, every shard
        // starts as the same empty shard:
        // one allocation instead of 4096 (stores are made on every restart
        // and restore), and the first write to a shard "copies" an empty
        // table, which allocates nothing more than an unshared one would.
        let empty = Arc::new(Shard::default());
        KeyMap {
            shards: (0..SHARDS)
                .map(|_| {
                    if per_shard == 0 {
                        Arc::clone(&empty)
                    } else {
                        Arc::new(Shard {
                            table: HashTable::with_capacity(per_shard),
                            deadlines: BTreeMap::new(),
                        })
                    }
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

    fn shard(&self, key: &[u8]) -> &Shard {
        &self.shards[shard_of_digest(key_digest(key))]
    }

    /// The value of `key`.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.shard(key)
            .table
            .find(self.hash(key), |e| e.key.as_slice() == key)
            .map(|e| e.value.as_slice())
    }

    /// The value of `key` as stored, for callers that can use a large
    /// value's shared form ([`StoredValue::shared_bulk_reply`]).
    pub fn get_stored(&self, key: &[u8]) -> Option<&StoredValue> {
        self.shard(key)
            .table
            .find(self.hash(key), |e| e.key.as_slice() == key)
            .map(|e| &e.value)
    }

    /// A large value's RESP bulk reply without a copy (see
    /// [`StoredValue::shared_bulk_reply`]); `None` if `key` is absent or
    /// its value small.
    pub fn shared_bulk_reply(&self, key: &[u8]) -> Option<Bytes> {
        self.get_stored(key)
            .and_then(StoredValue::shared_bulk_reply)
    }

    /// True when `key` has a value.
    pub fn contains_key(&self, key: &[u8]) -> bool {
        self.get(key).is_some()
    }

    /// Sets `key` to `value`, reusing the old value's allocation when the
    /// size is unchanged and nothing else holds it (see
    /// [`StoredValue::overwrite`]). Copies the key's shard first if a
    /// frozen view still shares it. Keeps the key's deadline, if it has one.
    pub fn set(&mut self, key: &[u8], value: &[u8]) {
        let hash = self.hash(key);
        if let Some(sum) = self.content_digest {
            let old = self.get(key).map_or(0, |old| entry_digest(key, old));
            self.content_digest =
                Some(sum.wrapping_sub(old).wrapping_add(entry_digest(key, value)));
        }
        let shard = Arc::make_mut(&mut self.shards[shard_of_digest(key_digest(key))]);
        if let Some(e) = shard.table.find_mut(hash, |e| e.key.as_slice() == key) {
            e.value.overwrite(value);
            return;
        }
        let hasher = &self.hasher;
        shard.table.insert_unique(
            hash,
            Entry {
                key: Key::new(key),
                value: StoredValue::new(value),
            },
            |e| hasher.hash_one(e.key.as_slice()),
        );
        self.len += 1;
        paxos_contracts::ensures!(self.get(key) == Some(value));
    }

    /// Removes `key`; true if it had a value. A shard shared with a frozen
    /// view is copied only when the key is in it.
    pub fn remove(&mut self, key: &[u8]) -> bool {
        let hash = self.hash(key);
        let index = shard_of_digest(key_digest(key));
        let eq = |e: &Entry| e.key.as_slice() == key;
        if self.shards[index].table.find(hash, eq).is_none() {
            return false;
        }
        let shard = Arc::make_mut(&mut self.shards[index]);
        match shard.table.find_entry(hash, eq) {
            Ok(entry) => {
                let (removed, _) = entry.remove();
                self.len -= 1;
                self.content_digest = self
                    .content_digest
                    .map(|sum| sum.wrapping_sub(entry_digest(key, removed.value.as_slice())));
                if let Some(deadline) = shard.deadlines.remove(key) {
                    self.by_deadline.remove(&(deadline, Box::from(key)));
                    self.content_digest = self
                        .content_digest
                        .map(|sum| sum.wrapping_sub(deadline_digest(key, deadline)));
                }
                true
            }
            Err(_) => false,
        }
    }

    /// Every (key, value), in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.shards
            .iter()
            .flat_map(|s| s.table.iter())
            .map(|e| (e.key.as_slice(), e.value.as_slice()))
    }

    /// The deadline of `key`, if it exists and has one.
    pub fn deadline(&self, key: &[u8]) -> Option<u64> {
        let shard = self.shard(key);
        if shard.deadlines.is_empty() {
            return None;
        }
        shard.deadlines.get(key).copied()
    }

    /// Gives `key` the deadline `deadline` (`None`: none) and returns the
    /// one it had. Does nothing to a key that does not exist.
    pub fn set_deadline(&mut self, key: &[u8], deadline: Option<u64>) -> Option<u64> {
        let old = self.deadline(key);
        if old == deadline || !self.contains_key(key) {
            return old;
        }
        let shard = Arc::make_mut(&mut self.shards[shard_of_digest(key_digest(key))]);
        let mut digest = self.content_digest;
        if let Some(old) = old {
            shard.deadlines.remove(key);
            self.by_deadline.remove(&(old, Box::from(key)));
            digest = digest.map(|sum| sum.wrapping_sub(deadline_digest(key, old)));
        }
        if let Some(new) = deadline {
            shard.deadlines.insert(key.into(), new);
            self.by_deadline.insert((new, key.into()));
            digest = digest.map(|sum| sum.wrapping_add(deadline_digest(key, new)));
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
            sorted.clear();
            sorted.extend(
                shard
                    .table
                    .iter()
                    .map(|e| (key_digest(e.key.as_slice()), e))
                    .filter(|(d, _)| *d >= from),
            );
            sorted
                .sort_unstable_by(|a, b| (a.0, a.1.key.as_slice()).cmp(&(b.0, b.1.key.as_slice())));
            for (i, &(digest, e)) in sorted.iter().enumerate() {
                let key = e.key.as_slice();
                let deadline = if shard.deadlines.is_empty() {
                    None
                } else {
                    shard.deadlines.get(key).copied()
                };
                visit(key, e.value.as_slice(), deadline);
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

    /// A view of the map as it is now, unaffected by later writes. O(shards):
    /// it shares the shards, and a later write to the map copies the shard
    /// it touches (once) instead of changing the view.
    pub fn freeze(&self) -> FrozenKeyMap {
        FrozenKeyMap {
            shards: self.shards.clone(),
            len: self.len,
            deadlines: self.by_deadline.len(),
        }
    }
}

/// An immutable view of a [`KeyMap`] taken by [`KeyMap::freeze`]. `Send`,
/// so it can be written out on another thread.
#[derive(Clone)]
pub struct FrozenKeyMap {
    shards: Vec<Arc<Shard>>,
    len: usize,
    /// Keys with a deadline.
    deadlines: usize,
}

impl std::fmt::Debug for FrozenKeyMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrozenKeyMap")
            .field("len", &self.len)
            .finish()
    }
}

impl Default for FrozenKeyMap {
    fn default() -> Self {
        KeyMap::default().freeze()
    }
}

impl FrozenKeyMap {
    /// Number of keys.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when there are no keys.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many keys have a deadline.
    pub fn deadlines_len(&self) -> usize {
        self.deadlines
    }

    /// Every (key, value), in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.shards
            .iter()
            .flat_map(|s| s.table.iter())
            .map(|e| (e.key.as_slice(), e.value.as_slice()))
    }

    /// Every (key, value) in ascending `(key_digest(key), key)` order: an
    /// order that depends only on the contents, so equal maps (on any
    /// replica, whatever their insertion order and hash seed) list equal
    /// sequences. It does not depend on [`SHARDS`] either: a shard holds a
    /// range of digests, so it is enough to sort one shard at a time (a
    /// vector of references, bounded by the largest shard).
    pub fn entries(&self) -> impl Iterator<Item = (&[u8], &[u8], Option<u64>)> {
        self.shards.iter().flat_map(|shard| {
            let mut sorted: Vec<(u32, &[u8], &[u8])> = shard
                .table
                .iter()
                .map(|e| {
                    let key = e.key.as_slice();
                    (key_digest(key), key, e.value.as_slice())
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
        })
    }

    /// How many of this view's shards `map` still shares (has not copied
    /// since): for tests that check a freeze copies nothing.
    #[cfg(test)]
    pub(crate) fn shards_shared_with(&self, map: &KeyMap) -> usize {
        self.shards
            .iter()
            .zip(&map.shards)
            .filter(|(a, b)| Arc::ptr_eq(a, b))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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

    #[test]
    fn freeze_copies_nothing_and_a_write_copies_only_its_shard() {
        let mut m = KeyMap::default();
        for k in spread_keys(10_000) {
            m.set(&k, b"old");
        }
        let frozen = m.freeze();
        assert_eq!(frozen.len(), 10_000);
        assert_eq!(frozen.shards_shared_with(&m), SHARDS);
        // (Shards no key landed in are still the one shared empty shard.)
        assert!(frozen
            .shards
            .iter()
            .all(|s| Arc::strong_count(s) == 2 || s.table.is_empty()));

        // Neither a read nor removing an absent key copies a shard.
        assert_eq!(m.get(b"key:7"), Some(&b"old"[..]));
        assert!(!m.remove(b"no such key"));
        assert_eq!(frozen.shards_shared_with(&m), SHARDS);

        m.set(b"key:7", b"new");
        assert_eq!(frozen.shards_shared_with(&m), SHARDS - 1);
        m.set(b"key:7", b"newer");
        assert_eq!(
            frozen.shards_shared_with(&m),
            SHARDS - 1,
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
        assert!(m
            .shards
            .iter()
            .all(|s| Arc::strong_count(s) == 1 || s.table.is_empty()));
    }

    #[test]
    fn a_shard_copied_for_a_frozen_view_shares_its_large_values() {
        use crate::stored_value::SHARED_VALUE_MIN;
        let mut m = KeyMap::default();
        let large = vec![b'L'; SHARED_VALUE_MIN];
        m.set(b"large", &large);
        m.set(b"small", b"s");
        let frozen = m.freeze();
        // Copy the shard holding "large" (and write beside it).
        let shard = shard_of_digest(key_digest(b"large"));
        let neighbour = spread_keys(100_000)
            .into_iter()
            .find(|k| shard_of_digest(key_digest(k)) == shard)
            .expect("some key shares the shard");
        m.set(&neighbour, b"n");
        assert!(!Arc::ptr_eq(&frozen.shards[shard], &m.shards[shard]));
        // The copy holds the same large bytes as the frozen view.
        let in_view = frozen
            .entries()
            .find(|(k, _, _)| *k == b"large")
            .map(|(_, v, _)| v.as_ptr());
        assert_eq!(in_view, m.get(b"large").map(<[u8]>::as_ptr));
        assert_eq!(m.get_stored(b"large").map(StoredValue::holders), Some(2));
        // An overwrite of the same size must not write into the frozen
        // view's bytes: it makes new ones.
        m.set(b"large", &vec![b'M'; SHARED_VALUE_MIN]);
        let in_view = frozen.entries().find(|(k, _, _)| *k == b"large");
        assert_eq!(in_view.map(|(_, v, _)| v), Some(&large[..]));
        assert_eq!(m.get(b"large"), Some(&vec![b'M'; SHARED_VALUE_MIN][..]));
        drop(frozen);
        assert_eq!(m.get_stored(b"large").map(StoredValue::holders), Some(1));
    }

    #[test]
    fn an_empty_map_shares_one_empty_shard_until_written() {
        let mut m = KeyMap::default();
        assert!(m.shards.iter().all(|s| Arc::ptr_eq(s, &m.shards[0])));
        m.set(b"k", b"v");
        let written = shard_of_digest(key_digest(b"k"));
        let shared = m.shards.iter().filter(|s| Arc::strong_count(s) > 1).count();
        assert_eq!(shared, SHARDS - 1, "only the written shard was split off");
        assert_eq!(Arc::strong_count(&m.shards[written]), 1);
        assert_eq!(m.get(b"k"), Some(&b"v"[..]));
        assert_eq!(m.get(b"other"), None);
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
