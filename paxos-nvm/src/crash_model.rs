//! A model of what persistent memory may hold after a crash, for testing.
//!
//! [`RecordingRegion`] is a [`PmRegion`] that records every store, flush
//! and fence in a [`Trace`]. [`PmState`] replays a prefix of such a trace
//! and yields the crash images the PM model allows at that point:
//!
//! - a word (aligned 8 bytes) written since it was last made durable may
//!   hold its durable value **or any value written to it since** (caches
//!   evict lines at will, so intermediate values may persist);
//! - each word is all or nothing: no image mixes bytes of two stores of
//!   one word;
//! - a `flush` of a word followed by a `fence` makes the value it had at
//!   the flush durable.
//!
//! Recovering from every such image, at every prefix, and checking the
//! result is the last committed state (or the one whose CDB flip was
//! stored) is the crash-consistency test of this crate. The model is pure
//! Rust over byte vectors: it needs no mmap and would run under Miri.

use paxos_contracts::requires;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::region::{PmRegion, RegionError, RegionKind, VolatileRegion};
use paxos_log::sim_fs::CrashPolicy;

/// One primitive operation on a region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PmEvent {
    /// A store of `data` at `offset`.
    Write {
        /// Region offset.
        offset: u64,
        /// Bytes stored.
        data: Vec<u8>,
    },
    /// A write-back of `offset..offset + len`.
    Flush {
        /// Region offset.
        offset: u64,
        /// Bytes.
        len: u64,
    },
    /// A fence: flushed words are durable.
    Fence,
}

/// The shared, growing list of events a [`RecordingRegion`] performed.
#[derive(Clone, Default)]
pub struct Trace(Arc<Mutex<Vec<PmEvent>>>);

impl Trace {
    /// How many events have been recorded.
    pub fn len(&self) -> usize {
        self.0.lock().map_or(0, |t| t.len())
    }

    /// Whether no event has been recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy of the events so far.
    pub fn events(&self) -> Vec<PmEvent> {
        self.0
            .lock()
            .map_or_else(|p| p.into_inner().clone(), |t| t.clone())
    }

    fn push(&self, e: PmEvent) {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        t.push(e);
    }
}

/// A volatile region that records its stores, flushes and fences.
pub struct RecordingRegion {
    inner: VolatileRegion,
    trace: Trace,
}

impl RecordingRegion {
    /// A region starting from `image`, and the trace it records into.
    pub fn new(image: Vec<u8>) -> (RecordingRegion, Trace) {
        let trace = Trace::default();
        (
            RecordingRegion {
                inner: VolatileRegion::from_bytes(image),
                trace: trace.clone(),
            },
            trace,
        )
    }
}

impl PmRegion for RecordingRegion {
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), RegionError> {
        self.inner.read(offset, buf)
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.inner.write(offset, data);
        self.trace.push(PmEvent::Write {
            offset,
            data: data.to_vec(),
        });
    }
    fn flush(&mut self, offset: u64, len: u64) -> Result<(), RegionError> {
        self.trace.push(PmEvent::Flush { offset, len });
        Ok(())
    }
    fn fence(&mut self) -> Result<(), RegionError> {
        self.trace.push(PmEvent::Fence);
        Ok(())
    }
    fn kind(&self) -> RegionKind {
        RegionKind::Volatile
    }
}

#[derive(Clone, Debug, Default)]
struct WordHistory {
    /// Values the word took since its durable value, oldest first.
    values: Vec<u64>,
    /// How many of `values` a flush has covered (awaiting a fence).
    flushed: usize,
}

/// Durable content plus the outstanding stores, per 8-byte word.
#[derive(Clone, Debug)]
pub struct PmState {
    /// Region length; the vectors are padded to whole words.
    len: usize,
    durable: Vec<u8>,
    current: Vec<u8>,
    pending: BTreeMap<usize, WordHistory>,
}

fn word(bytes: &[u8], w: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[w * 8..w * 8 + 8]);
    u64::from_le_bytes(b)
}

fn set_word(bytes: &mut [u8], w: usize, v: u64) {
    bytes[w * 8..w * 8 + 8].copy_from_slice(&v.to_le_bytes());
}

fn words_of(offset: u64, len: u64) -> std::ops::Range<usize> {
    if len == 0 {
        return 0..0;
    }
    (offset / 8) as usize..(offset + len).div_ceil(8) as usize
}

/// SplitMix64: a tiny deterministic generator for sampling crash images.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

impl PmState {
    /// A fully durable region holding `image`.
    pub fn new(mut image: Vec<u8>) -> PmState {
        let len = image.len();
        image.resize(len.div_ceil(8) * 8, 0);
        PmState {
            len,
            current: image.clone(),
            durable: image,
            pending: BTreeMap::new(),
        }
    }

    /// Applies one event.
    pub fn apply(&mut self, event: &PmEvent) {
        match event {
            PmEvent::Write { offset, data } => {
                let start = *offset as usize;
                self.current[start..start + data.len()].copy_from_slice(data);
                for w in words_of(*offset, data.len() as u64) {
                    let v = word(&self.current, w);
                    self.pending.entry(w).or_default().values.push(v);
                }
            }
            PmEvent::Flush { offset, len } => {
                for w in words_of(*offset, *len) {
                    if let Some(h) = self.pending.get_mut(&w) {
                        h.flushed = h.values.len();
                    }
                }
            }
            PmEvent::Fence => {
                let durable = &mut self.durable;
                self.pending.retain(|&w, h| {
                    if h.flushed > 0 {
                        set_word(durable, w, h.values[h.flushed - 1]);
                        h.values.drain(..h.flushed);
                        h.flushed = 0;
                    }
                    !h.values.is_empty()
                });
            }
        }
    }

    /// What reads see now (every store applied).
    pub fn current(&self) -> &[u8] {
        &self.current[..self.len]
    }

    /// The one crash image `policy` picks: [`CrashPolicy::LoseUnsynced`]
    /// keeps only what is durable, [`CrashPolicy::KeepUnsynced`] every
    /// store, and [`CrashPolicy::Torn`] gives each uncertain word one of the
    /// values the model allows it (its durable value or any stored since),
    /// drawn from the seed.
    pub fn crash_image(&self, policy: CrashPolicy) -> Vec<u8> {
        let mut img = self.durable.clone();
        let mut rng = match policy {
            CrashPolicy::Torn { seed } => Some(SplitMix(seed)),
            _ => None,
        };
        for (&w, h) in &self.pending {
            let v = match (&mut rng, policy) {
                (_, CrashPolicy::LoseUnsynced) => continue,
                (_, CrashPolicy::KeepUnsynced) => word(&self.current, w),
                (Some(rng), _) => match (rng.next() % (h.values.len() as u64 + 1)) as usize {
                    0 => continue,
                    i => h.values[i - 1],
                },
                (None, _) => continue,
            };
            set_word(&mut img, w, v);
        }
        img.truncate(self.len);
        img
    }

    /// Flips bit `bit` of the medium (bit rot): the durable value changes,
    /// and so do reads unless the word is dirty in the cache (whose value
    /// will overwrite the medium when written back).
    pub fn flip_media_bit(&mut self, bit: u64) {
        let byte = (bit / 8) as usize;
        requires!(byte < self.len, "bit {bit} outside the region");
        let mask = 1u8 << (bit % 8);
        self.durable[byte] ^= mask;
        if !self.pending.contains_key(&(byte / 8)) {
            self.current[byte] ^= mask;
        }
    }

    /// Words whose content after a crash is uncertain.
    pub fn uncertain_words(&self) -> usize {
        self.pending.len()
    }

    /// How many distinct crash images the model allows (saturating).
    pub fn crash_image_count(&self) -> u64 {
        self.pending
            .values()
            .fold(1u64, |n, h| n.saturating_mul(h.values.len() as u64 + 1))
    }

    /// The crash images allowed now: all of them if there are at most
    /// `limit`, otherwise the all-durable image, the all-latest image and
    /// `limit - 2` random ones drawn with `seed`.
    pub fn crash_images(&self, limit: usize, seed: u64) -> Vec<Vec<u8>> {
        let words: Vec<(usize, Vec<u64>)> = self
            .pending
            .iter()
            .map(|(&w, h)| {
                let mut choices = vec![word(&self.durable, w)];
                choices.extend_from_slice(&h.values);
                (w, choices)
            })
            .collect();
        let build = |pick: &mut dyn FnMut(usize, usize) -> usize| {
            let mut img = self.durable.clone();
            for (i, (w, choices)) in words.iter().enumerate() {
                set_word(&mut img, *w, choices[pick(i, choices.len())]);
            }
            img.truncate(self.len);
            img
        };
        let total = self.crash_image_count();
        if total <= limit as u64 {
            // Mixed-radix counting over every word's choices.
            (0..total)
                .map(|mut n| {
                    build(&mut |_, radix| {
                        let d = (n % radix as u64) as usize;
                        n /= radix as u64;
                        d
                    })
                })
                .collect()
        } else {
            let mut rng = SplitMix(seed);
            let mut out = vec![build(&mut |_, _| 0), build(&mut |_, radix| radix - 1)];
            while out.len() < limit.max(2) {
                out.push(build(&mut |_, radix| (rng.next() % radix as u64) as usize));
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unflushed_store_may_or_may_not_persist() {
        let mut s = PmState::new(vec![0u8; 16]);
        s.apply(&PmEvent::Write {
            offset: 0,
            data: vec![1u8; 16],
        });
        let images = s.crash_images(100, 0);
        assert_eq!(images.len(), 4, "two words, each old or new");
        assert!(images.contains(&vec![0u8; 16]) && images.contains(&vec![1u8; 16]));
        for img in &images {
            assert!(
                img[..8].iter().all(|b| *b == img[0]),
                "a word is all or nothing"
            );
        }
    }

    #[test]
    fn flush_without_fence_is_still_uncertain_and_fence_makes_durable() {
        let mut s = PmState::new(vec![0u8; 8]);
        s.apply(&PmEvent::Write {
            offset: 0,
            data: vec![5u8; 8],
        });
        s.apply(&PmEvent::Flush { offset: 0, len: 8 });
        assert_eq!(s.crash_images(10, 0).len(), 2);
        s.apply(&PmEvent::Fence);
        assert_eq!(s.crash_images(10, 0), vec![vec![5u8; 8]]);
    }

    #[test]
    fn intermediate_values_of_a_word_may_persist() {
        let mut s = PmState::new(vec![0u8; 8]);
        s.apply(&PmEvent::Write {
            offset: 0,
            data: vec![1u8; 8],
        });
        s.apply(&PmEvent::Write {
            offset: 2,
            data: vec![2u8; 2],
        });
        let images = s.crash_images(10, 0);
        assert_eq!(images.len(), 3);
        assert!(images.contains(&vec![1u8; 8]));
        assert!(images.contains(&vec![1, 1, 2, 2, 1, 1, 1, 1]));
    }

    #[test]
    fn a_write_after_a_flush_stays_uncertain_after_the_fence() {
        let mut s = PmState::new(vec![0u8; 8]);
        s.apply(&PmEvent::Write {
            offset: 0,
            data: vec![1u8; 8],
        });
        s.apply(&PmEvent::Flush { offset: 0, len: 8 });
        s.apply(&PmEvent::Write {
            offset: 0,
            data: vec![2u8; 8],
        });
        s.apply(&PmEvent::Fence);
        let mut images = s.crash_images(10, 0);
        images.sort();
        assert_eq!(images, vec![vec![1u8; 8], vec![2u8; 8]]);
    }

    #[test]
    fn sampling_is_bounded_and_keeps_the_extremes() {
        let mut s = PmState::new(vec![0u8; 800]);
        s.apply(&PmEvent::Write {
            offset: 0,
            data: vec![9u8; 800],
        });
        assert_eq!(s.crash_image_count(), u64::MAX, "2^100 saturates");
        let images = s.crash_images(16, 7);
        assert_eq!(images.len(), 16);
        assert_eq!(images[0], vec![0u8; 800]);
        assert_eq!(images[1], vec![9u8; 800]);
    }

    #[test]
    fn regions_of_any_length_are_modelled() {
        let mut s = PmState::new(vec![0u8; 13]);
        s.apply(&PmEvent::Write {
            offset: 10,
            data: vec![3u8; 3],
        });
        let images = s.crash_images(10, 0);
        assert_eq!(images.len(), 2);
        assert!(images.iter().all(|i| i.len() == 13));
        assert_eq!(s.current()[10..], [3, 3, 3]);
    }

    #[test]
    fn a_crash_image_follows_its_policy() {
        let mut s = PmState::new(vec![0u8; 64]);
        s.apply(&PmEvent::Write {
            offset: 0,
            data: vec![1u8; 64],
        });
        s.apply(&PmEvent::Flush { offset: 0, len: 8 });
        s.apply(&PmEvent::Fence);
        assert_eq!(
            s.crash_image(CrashPolicy::LoseUnsynced)[..16],
            [[1u8; 8], [0u8; 8]].concat()
        );
        assert_eq!(s.crash_image(CrashPolicy::KeepUnsynced), vec![1u8; 64]);
        let torn: Vec<Vec<u8>> = (0..32)
            .map(|seed| s.crash_image(CrashPolicy::Torn { seed }))
            .collect();
        for img in &torn {
            assert_eq!(img[..8], [1u8; 8], "the fenced word is durable");
            for w in img.chunks(8) {
                assert!(w == [0u8; 8] || w == [1u8; 8], "words are all or nothing");
            }
        }
        assert!(torn
            .iter()
            .any(|i| i[8..] != [1u8; 56] && i[8..] != [0u8; 56]));
    }

    #[test]
    fn a_media_bit_flip_is_durable_unless_the_cache_overwrites_it() {
        let mut s = PmState::new(vec![0u8; 16]);
        s.flip_media_bit(3);
        assert_eq!(s.current()[0], 8);
        assert_eq!(s.crash_image(CrashPolicy::LoseUnsynced)[0], 8);
        s.apply(&PmEvent::Write {
            offset: 8,
            data: vec![5u8; 8],
        });
        s.flip_media_bit(64);
        assert_eq!(s.current()[8], 5, "reads see the dirty cache line");
        assert_eq!(s.crash_image(CrashPolicy::LoseUnsynced)[8], 1);
        s.apply(&PmEvent::Flush { offset: 8, len: 8 });
        s.apply(&PmEvent::Fence);
        assert_eq!(
            s.crash_image(CrashPolicy::LoseUnsynced)[8],
            5,
            "written back over it"
        );
    }

    #[test]
    fn the_recording_region_records_in_order() {
        let (mut r, trace) = RecordingRegion::new(vec![0u8; 64]);
        r.write(8, b"abc");
        r.flush(8, 3).unwrap();
        r.fence().unwrap();
        assert_eq!(
            trace.events(),
            vec![
                PmEvent::Write {
                    offset: 8,
                    data: b"abc".to_vec()
                },
                PmEvent::Flush { offset: 8, len: 3 },
                PmEvent::Fence
            ]
        );
    }
}
