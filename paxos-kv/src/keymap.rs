//! [`KeyMap`]: the KV store's table, laid out for cache misses, not generality.
//!
//! Why not `HashMap<Bytes, Bytes>`: every replica applies every SET, and on
//! the bench (256K keys, 100 B values) a SET there cost four dependent cache
//! misses — the control bytes, the 64-byte `(Bytes, Bytes)` bucket, the key's
//! own allocation for the equality check, the value's allocation — on a 32 MiB
//! table. It was the largest single item in a follower's profile.
//!
//! Here a bucket is 40 bytes: keys of up to [`INLINE_KEY`] bytes live inside
//! it, so the equality check reads the bucket just loaded, and the value is a
//! plain boxed slice overwritten in place when the size is unchanged (the
//! common SET). That is three misses per SET on a table 40% smaller. Keys are
//! hashed with std's `RandomState` (SipHash with a per-process random key),
//! so clients cannot choose keys that collide.
//!
//! Invariant: a key is stored inline exactly when it is at most
//! [`INLINE_KEY`] bytes long, so equal keys always have equal representations.

use hashbrown::HashTable;
use std::hash::{BuildHasher, RandomState};

/// Longest key stored inside its bucket.
pub const INLINE_KEY: usize = 22;

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

struct Entry {
    key: Key,
    value: Box<[u8]>,
}

// The layout argument above relies on this (64-bit targets).
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<Entry>() == 40);

/// A map from byte-string keys to byte-string values.
pub struct KeyMap {
    table: HashTable<Entry>,
    hasher: RandomState,
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
    /// An empty map with room for `capacity` keys.
    pub fn with_capacity(capacity: usize) -> Self {
        KeyMap {
            table: HashTable::with_capacity(capacity),
            hasher: RandomState::new(),
        }
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// True when there are no keys.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The value of `key`.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.table
            .find(self.hash(key), |e| e.key.as_slice() == key)
            .map(|e| &e.value[..])
    }

    /// True when `key` has a value.
    pub fn contains_key(&self, key: &[u8]) -> bool {
        self.get(key).is_some()
    }

    /// Sets `key` to `value`, reusing the old value's allocation when the
    /// size is unchanged.
    pub fn set(&mut self, key: &[u8], value: &[u8]) {
        let hash = self.hash(key);
        if let Some(e) = self.table.find_mut(hash, |e| e.key.as_slice() == key) {
            if e.value.len() == value.len() {
                e.value.copy_from_slice(value);
            } else {
                e.value = value.into();
            }
            return;
        }
        let hasher = &self.hasher;
        self.table.insert_unique(
            hash,
            Entry {
                key: Key::new(key),
                value: value.into(),
            },
            |e| hasher.hash_one(e.key.as_slice()),
        );
        paxos_contracts::ensures!(self.get(key) == Some(value));
    }

    /// Removes `key`; true if it had a value.
    pub fn remove(&mut self, key: &[u8]) -> bool {
        let hash = self.hash(key);
        match self.table.find_entry(hash, |e| e.key.as_slice() == key) {
            Ok(entry) => {
                entry.remove();
                true
            }
            Err(_) => false,
        }
    }

    /// Every (key, value), in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.table.iter().map(|e| (e.key.as_slice(), &e.value[..]))
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
        let value = proptest::collection::vec(any::<u8>(), 0..8);
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
    }
}
