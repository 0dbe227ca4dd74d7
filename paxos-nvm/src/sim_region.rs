//! [`SimRegion`]: simulated persistent memory with crashes and media faults,
//! deterministic from a seed, for the deterministic simulator and the fault
//! tests. One per simulated replica.
//!
//! Crash semantics are those of [`crate::crash_model`]: a store is certain
//! to survive a crash only once a `flush` covering it was followed by a
//! `fence`; until then each aligned 8-byte word may keep its durable value
//! or any value stored to it since, all or nothing. [`SimRegion::crash`]
//! picks one such image (by [`CrashPolicy`]) and returns a handle for the
//! next incarnation; handles from before the crash are dead (their reads,
//! flushes and fences fail, their stores are dropped), so storage that
//! survived the crash in memory cannot write behind the new incarnation's
//! back. [`SimRegion::crash_after`] crashes in the middle of an operation:
//! at the `n`-th store, flush or fence from now.
//!
//! Faults, as in paxos-log's `SimFs` (one seed, counted in
//! [`SimRegionCounters`], none by default):
//!
//! | fault | how | transient or latent |
//! |---|---|---|
//! | bit flip on read | [`SimRegionFaults::read_bit_flip_per_million`] per word read | transient: the medium is intact, a re-read returns good bytes |
//! | unreadable (poisoned) word | [`SimRegionFaults::unreadable_word_per_million`] per word read, or [`SimRegion::make_unreadable`] | latent: every read touching it fails until a store covers it (which clears the poison, as writing a poisoned line does on real PM) |
//! | media bit flip (bit rot) | [`SimRegion::flip_bit`] | latent: until the word is written back over |
//! | lost or torn stores | [`SimRegion::crash`], [`SimRegion::crash_after`] | at the crash |
//! | latency | [`SimRegion::latency_us`] | — |
//!
//! Nothing here reads a clock or spawns a thread.

use crate::crash_model::{PmEvent, PmState};
use crate::region::{range, PmRegion, RegionError, RegionKind};
use paxos_log::sim_fs::{CrashPolicy, DiskOp, LatencyModel};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};

/// The fault knobs of one simulated region. The default injects nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimRegionFaults {
    /// Seed of every fault choice (and of latency outliers).
    pub seed: u64,
    /// Probability (per million 8-byte words read) that a read returns the
    /// word with one bit flipped. Transient.
    pub read_bit_flip_per_million: u32,
    /// Probability (per million words read) that the word turns out
    /// poisoned: the read fails, and so does every later read of it until a
    /// store covers it. Latent.
    pub unreadable_word_per_million: u32,
    /// Latency: `read_us` per read, `write_us` per store, `sync_us` per
    /// fence, plus `nanos_per_kib` for the bytes read, stored, or flushed
    /// before a fence. (`metadata_us` is unused.)
    pub latency: LatencyModel,
}

impl Default for SimRegionFaults {
    fn default() -> Self {
        SimRegionFaults {
            seed: 0,
            read_bit_flip_per_million: 0,
            unreadable_word_per_million: 0,
            // Optane-class persistent memory, in whole microseconds.
            latency: LatencyModel {
                read_us: 1,
                write_us: 0,
                sync_us: 1,
                metadata_us: 0,
                nanos_per_kib: 150,
                outlier_per_million: 0,
                outlier_max_us: 1_000,
            },
        }
    }
}

/// What a [`SimRegion`] injected so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimRegionCounters {
    /// Words returned with a flipped bit (transient).
    pub read_bit_flips: u64,
    /// Words that became unreadable (latent), randomly or by
    /// [`SimRegion::make_unreadable`].
    pub unreadable_words: u64,
    /// Reads that failed on an unreadable word.
    pub unreadable_reads: u64,
    /// Bits flipped on the medium by [`SimRegion::flip_bit`].
    pub media_bit_flips: u64,
    /// Crashes ([`SimRegion::crash`] calls).
    pub crashes: u64,
}

#[derive(Debug)]
struct Medium {
    pm: PmState,
    len: u64,
    faults: SimRegionFaults,
    draws: u64,
    latency_draws: u64,
    busy_us: u64,
    /// Latent unreadable words (indices).
    poisoned: BTreeSet<u64>,
    /// Incremented by every crash; handles of older generations are dead.
    generation: u64,
    /// Stores, flushes and fences before the scheduled crash.
    crash_in: Option<u64>,
    down: bool,
    flushed_since_fence: u64,
    counters: SimRegionCounters,
}

/// Splitmix64, for the fault and latency streams.
fn mix(seed: u64, n: u64) -> u64 {
    let mut z = seed.wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const LATENCY_STREAM: u64 = 0x706d_6c61_7465_6e63;

fn region_error(what: &str) -> RegionError {
    RegionError {
        context: "simulated region".into(),
        source: std::io::Error::other(what.to_string()),
    }
}

impl Medium {
    fn draw(&mut self) -> u64 {
        self.draws += 1;
        mix(self.faults.seed, self.draws)
    }

    fn roll(&mut self, per_million: u32) -> bool {
        per_million > 0 && self.draw() % 1_000_000 < u64::from(per_million)
    }

    fn latency(&mut self, op: DiskOp, bytes: u64) -> u64 {
        let m = self.faults.latency;
        let base = match op {
            DiskOp::Read => m.read_us,
            DiskOp::Write => m.write_us,
            DiskOp::Sync => m.sync_us,
            DiskOp::Metadata => m.metadata_us,
        };
        let mut us = base.saturating_add(bytes.saturating_mul(m.nanos_per_kib) / 1024 / 1000);
        if m.outlier_per_million > 0 {
            self.latency_draws += 1;
            let r = mix(self.faults.seed ^ LATENCY_STREAM, self.latency_draws);
            if r % 1_000_000 < u64::from(m.outlier_per_million) {
                us = us.saturating_add(1 + (r >> 20) % m.outlier_max_us.max(1));
            }
        }
        us
    }

    fn spend(&mut self, op: DiskOp, bytes: u64) {
        let us = self.latency(op, bytes);
        self.busy_us = self.busy_us.saturating_add(us);
    }

    fn alive(&self, generation: u64) -> Result<(), RegionError> {
        if generation != self.generation {
            Err(region_error("handle from before a crash"))
        } else if self.down {
            Err(region_error("simulated crash: the region is down"))
        } else {
            Ok(())
        }
    }

    /// Counts a store, flush or fence; `true` if the scheduled crash
    /// happens now (the operation does not take effect).
    fn tick(&mut self) -> bool {
        match self.crash_in {
            Some(0) => {
                self.crash_in = None;
                self.down = true;
                true
            }
            Some(n) => {
                self.crash_in = Some(n - 1);
                false
            }
            None => false,
        }
    }
}

/// Simulated persistent memory. Clones share one medium; see the module
/// documentation.
#[derive(Clone, Debug)]
pub struct SimRegion {
    medium: Arc<Mutex<Medium>>,
    generation: u64,
    len: u64,
}

impl SimRegion {
    /// A zeroed region of `len` bytes injecting `faults`.
    pub fn new(len: usize, faults: SimRegionFaults) -> SimRegion {
        SimRegion::from_image(vec![0u8; len], faults)
    }

    /// A region whose medium durably holds `image`.
    pub fn from_image(image: Vec<u8>, faults: SimRegionFaults) -> SimRegion {
        let len = image.len() as u64;
        SimRegion {
            medium: Arc::new(Mutex::new(Medium {
                pm: PmState::new(image),
                len,
                faults,
                draws: 0,
                latency_draws: 0,
                busy_us: 0,
                poisoned: BTreeSet::new(),
                generation: 0,
                crash_in: None,
                down: false,
                flushed_since_fence: 0,
                counters: SimRegionCounters::default(),
            })),
            generation: 0,
            len,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Medium> {
        // A panic while holding this lock is a test failure already.
        self.medium.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Crashes now and reboots: each word not yet durable keeps its durable
    /// value or a later store, as `policy` picks (see
    /// [`crate::crash_model::PmState::crash_image`]). Latent faults stay.
    /// Returns the handle of the next incarnation; every older handle is
    /// dead from now on.
    pub fn crash(&self, policy: CrashPolicy) -> SimRegion {
        let mut m = self.lock();
        let image = m.pm.crash_image(policy);
        m.pm = PmState::new(image);
        m.generation += 1;
        m.down = false;
        m.crash_in = None;
        m.flushed_since_fence = 0;
        m.counters.crashes += 1;
        SimRegion {
            medium: self.medium.clone(),
            generation: m.generation,
            len: self.len,
        }
    }

    /// Schedules a crash at the `n`-th store, flush or fence from now (0:
    /// the next one): it and everything after fail (stores are dropped)
    /// until [`SimRegion::crash`].
    pub fn crash_after(&self, n: u64) {
        self.lock().crash_in = Some(n);
    }

    /// Whether the scheduled crash has happened.
    pub fn is_down(&self) -> bool {
        self.lock().down
    }

    /// Replaces the fault knobs; the fault stream continues.
    pub fn set_faults(&self, faults: SimRegionFaults) {
        self.lock().faults = faults;
    }

    /// The fault knobs in force.
    pub fn faults(&self) -> SimRegionFaults {
        self.lock().faults
    }

    /// What was injected so far.
    pub fn counters(&self) -> SimRegionCounters {
        self.lock().counters
    }

    /// How long an operation of `op` on `bytes` bytes takes (seeded; see
    /// [`SimRegionFaults::latency`]). Drawing never changes which faults
    /// happen.
    pub fn latency_us(&self, op: DiskOp, bytes: usize) -> u64 {
        self.lock().latency(op, bytes as u64)
    }

    /// Simulated time the operations since the last call took, and resets it.
    pub fn take_busy_us(&self) -> u64 {
        std::mem::take(&mut self.lock().busy_us)
    }

    /// Flips bit `bit` of the medium (bit rot). Latent.
    pub fn flip_bit(&self, bit: u64) -> Result<(), RegionError> {
        let mut m = self.lock();
        if bit / 8 >= m.len {
            return Err(region_error("bit outside the region"));
        }
        m.pm.flip_media_bit(bit);
        m.counters.media_bit_flips += 1;
        Ok(())
    }

    /// Poisons every word overlapping `offset..offset + len`: reads touching
    /// them fail until a store covers them. Latent.
    pub fn make_unreadable(&self, offset: u64, len: u64) -> Result<(), RegionError> {
        let mut m = self.lock();
        let end = offset.saturating_add(len).min(m.len);
        if len == 0 || offset >= end {
            return Err(region_error("range outside the region"));
        }
        for w in offset / 8..end.div_ceil(8) {
            if m.poisoned.insert(w) {
                m.counters.unreadable_words += 1;
            }
        }
        Ok(())
    }

    /// What the medium holds durably now (what a crash losing every
    /// unflushed store would leave), bypassing the fault model.
    pub fn durable_image(&self) -> Vec<u8> {
        self.lock().pm.crash_image(CrashPolicy::LoseUnsynced)
    }
}

impl PmRegion for SimRegion {
    fn len(&self) -> u64 {
        self.len
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), RegionError> {
        let r = range(offset, buf.len(), self.len as usize);
        let mut m = self.lock();
        m.alive(self.generation)?;
        m.spend(DiskOp::Read, buf.len() as u64);
        if buf.is_empty() {
            return Ok(());
        }
        let words = offset / 8..(offset + buf.len() as u64).div_ceil(8);
        if m.poisoned.range(words.clone()).next().is_some() {
            m.counters.unreadable_reads += 1;
            return Err(region_error("unreadable (poisoned) word"));
        }
        let f = m.faults;
        for w in words.clone() {
            if m.roll(f.unreadable_word_per_million) {
                m.poisoned.insert(w);
                m.counters.unreadable_words += 1;
                m.counters.unreadable_reads += 1;
                return Err(region_error("word became unreadable"));
            }
        }
        buf.copy_from_slice(&m.pm.current()[r.clone()]);
        for w in words {
            if m.roll(f.read_bit_flip_per_million) {
                let lo = (w * 8).max(offset);
                let hi = (w * 8 + 8).min(r.end as u64);
                let bit = m.draw() % ((hi - lo) * 8);
                let byte = (lo - offset + bit / 8) as usize;
                buf[byte] ^= 1 << (bit % 8);
                m.counters.read_bit_flips += 1;
            }
        }
        Ok(())
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        range(offset, data.len(), self.len as usize);
        let mut m = self.lock();
        // A dead handle's stores go nowhere; its next flush fails.
        if m.alive(self.generation).is_err() || m.tick() {
            return;
        }
        m.spend(DiskOp::Write, data.len() as u64);
        if !data.is_empty() {
            let words = offset / 8..(offset + data.len() as u64).div_ceil(8);
            let cleared: Vec<u64> = m.poisoned.range(words).copied().collect();
            for w in cleared {
                m.poisoned.remove(&w);
            }
        }
        m.pm.apply(&PmEvent::Write {
            offset,
            data: data.to_vec(),
        });
    }

    fn flush(&mut self, offset: u64, len: u64) -> Result<(), RegionError> {
        range(offset, len as usize, self.len as usize);
        let mut m = self.lock();
        m.alive(self.generation)?;
        if m.tick() {
            return Err(region_error("simulated crash during a flush"));
        }
        m.flushed_since_fence = m.flushed_since_fence.saturating_add(len);
        m.pm.apply(&PmEvent::Flush { offset, len });
        Ok(())
    }

    fn fence(&mut self) -> Result<(), RegionError> {
        let mut m = self.lock();
        m.alive(self.generation)?;
        if m.tick() {
            return Err(region_error("simulated crash during a fence"));
        }
        let flushed = std::mem::take(&mut m.flushed_since_fence);
        m.spend(DiskOp::Sync, flushed);
        m.pm.apply(&PmEvent::Fence);
        Ok(())
    }

    fn kind(&self) -> RegionKind {
        RegionKind::Simulated
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(r: &SimRegion, offset: u64, len: usize) -> Result<Vec<u8>, RegionError> {
        let mut buf = vec![0u8; len];
        r.read(offset, &mut buf).map(|()| buf)
    }

    #[test]
    fn only_flushed_and_fenced_stores_are_certain_to_survive() {
        for seed in 0..20 {
            let mut r = SimRegion::new(64, SimRegionFaults::default());
            r.write(0, &[1u8; 16]);
            r.flush(0, 8).unwrap();
            r.fence().unwrap();
            let next = r.crash(CrashPolicy::Torn { seed });
            let got = read(&next, 0, 16).unwrap();
            assert_eq!(got[..8], [1u8; 8]);
            assert!(
                got[8..] == [0u8; 8] || got[8..] == [1u8; 8],
                "all or nothing"
            );
        }
        let mut r = SimRegion::new(64, SimRegionFaults::default());
        r.write(0, &[2u8; 8]);
        assert_eq!(
            read(&r.crash(CrashPolicy::LoseUnsynced), 0, 8).unwrap(),
            [0u8; 8]
        );
    }

    #[test]
    fn handles_from_before_a_crash_are_dead() {
        let mut old = SimRegion::new(64, SimRegionFaults::default());
        let mut new = old.crash(CrashPolicy::KeepUnsynced);
        old.write(0, &[9u8; 8]);
        assert!(old.flush(0, 8).is_err() && old.fence().is_err());
        assert!(read(&old, 0, 8).is_err());
        assert_eq!(
            read(&new, 0, 8).unwrap(),
            [0u8; 8],
            "the dead store went nowhere"
        );
        new.write(0, &[3u8; 8]);
        new.flush(0, 8).unwrap();
        new.fence().unwrap();
        assert_eq!(new.durable_image()[..8], [3u8; 8]);
    }

    #[test]
    fn a_scheduled_crash_stops_the_region_mid_operation() {
        let mut r = SimRegion::new(64, SimRegionFaults::default());
        r.crash_after(1);
        r.write(0, &[1u8; 8]);
        assert!(r.flush(0, 8).is_err());
        assert!(r.is_down());
        r.write(8, &[1u8; 8]);
        assert!(r.fence().is_err());
        let next = r.crash(CrashPolicy::KeepUnsynced);
        assert_eq!(read(&next, 0, 16).unwrap(), [[1u8; 8], [0u8; 8]].concat());
    }

    #[test]
    fn read_bit_flips_are_transient_and_poison_is_latent() {
        let r = SimRegion::from_image(
            vec![7u8; 256],
            SimRegionFaults {
                read_bit_flip_per_million: 1_000_000,
                ..SimRegionFaults::default()
            },
        );
        let got = read(&r, 0, 256).unwrap();
        let flips: u32 = got.iter().map(|b| (b ^ 7).count_ones()).sum();
        assert_eq!(flips, 32, "one per word");
        r.set_faults(SimRegionFaults {
            unreadable_word_per_million: 1_000_000,
            ..SimRegionFaults::default()
        });
        assert!(read(&r, 20, 1).is_err());
        r.set_faults(SimRegionFaults::default());
        assert_eq!(
            read(&r, 0, 16).unwrap(),
            vec![7u8; 16],
            "the medium was intact"
        );
        assert!(
            read(&r, 16, 8).is_err(),
            "the poisoned word stays unreadable"
        );
        let mut next = r.crash(CrashPolicy::LoseUnsynced);
        assert!(read(&next, 16, 8).is_err(), "across a crash");
        next.write(16, &[1u8; 8]);
        assert_eq!(
            read(&next, 16, 8).unwrap(),
            vec![1u8; 8],
            "a store clears it"
        );
        next.make_unreadable(100, 10).unwrap();
        assert!(read(&next, 96, 8).is_err() && read(&next, 104, 8).is_err());
        assert!(read(&next, 112, 8).is_ok());
        next.flip_bit(8 * 200).unwrap();
        assert_eq!(read(&next, 200, 1).unwrap(), [6u8]);
        assert!(next.flip_bit(8 * 256).is_err() && next.make_unreadable(256, 1).is_err());
        let c = next.counters();
        assert_eq!(
            (
                c.read_bit_flips,
                c.unreadable_words,
                c.media_bit_flips,
                c.crashes
            ),
            (32, 3, 1, 1)
        );
    }

    #[test]
    fn latency_is_seeded_and_accumulated() {
        let faults = SimRegionFaults {
            seed: 4,
            latency: LatencyModel {
                outlier_per_million: 200_000,
                ..SimRegionFaults::default().latency
            },
            ..SimRegionFaults::default()
        };
        let a = SimRegion::new(64, faults);
        let b = SimRegion::new(64, faults);
        let draw = |r: &SimRegion| -> Vec<u64> {
            (0..500).map(|_| r.latency_us(DiskOp::Sync, 64)).collect()
        };
        let da = draw(&a);
        assert_eq!(da, draw(&b));
        assert!(da.iter().any(|l| *l > 1) && da.contains(&1));
        let mut plain = SimRegion::new(64, SimRegionFaults::default());
        plain.write(0, &[1u8; 8]);
        plain.flush(0, 8).unwrap();
        plain.fence().unwrap();
        read(&plain, 0, 8).unwrap();
        assert_eq!(plain.take_busy_us(), 2, "one fence and one read");
        assert_eq!(plain.take_busy_us(), 0);
    }
}
