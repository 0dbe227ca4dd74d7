//! Reads that skip the log, in the simulator: which read path a seed uses,
//! each replica's drifting clock, and the bounded-staleness checker of
//! follower reads.
//!
//! - **Read path** ([`SimReadMode`]): `GET`s go through the log (as before
//!   issue #17), through `Node::submit_read` with the node in ReadIndex
//!   or lease mode, or handed in with the writes (`RequestKind::Read`),
//!   each answered at its place in a batch the leader proposes, as a
//!   pipelined client's reads are. Linearizable reads enter the clients' history and are
//!   checked for linearizability with everything else. In the modes that
//!   skip the log, a share of `GET`s are **follower reads**
//!   (`ReadConsistency::AtLeast(s)`, `s` the highest slot the client has
//!   seen) sent to a random replica; they are not linearizable and are
//!   checked for **bounded staleness** instead ([`ReadReference`]): the
//!   value read is the key's value after some slot at or above `s` (the
//!   slot the node says it answered at).
//! - **Clocks**: every replica's clock runs at its own rate, `1 + ppm/10^6`
//!   of simulated time. [`ClockDrift::WithinBound`] keeps every rate within
//!   the `max_drift_ppm` the nodes are configured with (no stale read is
//!   allowed, in any mode); [`ClockDrift::BeyondBound`] draws rates far
//!   outside it, where lease mode is expected to serve stale reads in some
//!   seeds (the test that the checker sees them is in `tests/reads.rs`).

use crate::checker::{Failure, FailureKind};
use bytes::Bytes;
use paxos_core::{Slot, Time, Value};
use paxos_kv::kv::KvStore;
use paxos_kv::lincheck::OpOutcome;
use paxos_node::framing::{self, DecreeKind};
use paxos_node::{Decree, ReadMode, StateMachine};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;

/// How the simulated clients' `GET`s are served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SimReadMode {
    /// Ordered through the log, like writes.
    Log,
    /// `submit_read`, nodes in ReadIndex mode.
    ReadIndex,
    /// `submit_read`, nodes in lease mode.
    Lease,
    /// Handed in with the writes (`RequestKind::Read`), each answered at its
    /// place in a batch of the leader's (nodes in ReadIndex mode).
    InOrder,
}

impl SimReadMode {
    /// The node's read mode for this path.
    pub fn node_mode(self, max_drift_ppm: u32) -> ReadMode {
        match self {
            SimReadMode::Log | SimReadMode::ReadIndex | SimReadMode::InOrder => ReadMode::ReadIndex,
            SimReadMode::Lease => ReadMode::Lease { max_drift_ppm },
        }
    }
}

/// Whether the replicas' clocks keep to the drift bound they are
/// configured with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClockDrift {
    /// Every clock's rate is within the configured bound.
    #[default]
    WithinBound,
    /// Clocks run up to 90% fast or slow while the nodes assume 0.1%.
    BeyondBound,
}

/// The configured drift bound when clocks break it.
const BEYOND_CONFIGURED_PPM: u32 = 1_000;
/// How far clocks stray when they break it.
const BEYOND_ACTUAL_PPM: i64 = 900_000;

/// One seed's read path and clocks.
#[derive(Clone, Debug, PartialEq)]
pub struct ReadParams {
    /// How `GET`s are served.
    pub mode: SimReadMode,
    /// The drift bound the nodes are configured with.
    pub max_drift_ppm: u32,
    /// Each replica's clock rate error (index = replica index).
    pub rates_ppm: Vec<i64>,
    /// Share of `GET`s sent as follower reads (0 when reads use the log).
    pub follower_reads: f64,
}

impl ReadParams {
    /// Draws a seed's read path and clocks, from their own random stream
    /// (so the rest of the seed's run is drawn as before).
    pub fn draw(
        seed: u64,
        replicas: usize,
        mode: Option<SimReadMode>,
        drift: ClockDrift,
    ) -> ReadParams {
        let mut rng = SmallRng::seed_from_u64(seed ^ 0x7265_6164_735f_636c);
        let drawn = [
            SimReadMode::Log,
            SimReadMode::ReadIndex,
            SimReadMode::Lease,
            SimReadMode::InOrder,
        ][rng.gen_range(0..4)];
        let mode = mode.unwrap_or(drawn);
        let (max_drift_ppm, actual) = match drift {
            ClockDrift::WithinBound => {
                let bound = [0u32, 100, 1_000, 20_000, 50_000][rng.gen_range(0..5)];
                (bound, i64::from(bound))
            }
            ClockDrift::BeyondBound => (BEYOND_CONFIGURED_PPM, BEYOND_ACTUAL_PPM),
        };
        let rates_ppm = (0..replicas)
            .map(|_| rng.gen_range(-actual..=actual))
            .collect();
        let follower_reads = match mode {
            // Follower reads go through `submit_read`: not in these modes.
            SimReadMode::Log | SimReadMode::InOrder => 0.0,
            _ => [0.0, 0.2, 0.5][rng.gen_range(0..3)],
        };
        ReadParams {
            mode,
            max_drift_ppm,
            rates_ppm,
            follower_reads,
        }
    }
}

/// A replica's clock: it read `since_local` at simulated time
/// `since_global` and has run at `1 + ppm/10^6` since. Beyond the bound,
/// rates change during a run (a clock that ran fast while its replica was
/// elected may crawl while it leads).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Clock {
    since_global: Time,
    since_local: Time,
    ppm: i64,
}

impl Clock {
    /// A clock reading 0 at time 0, running at `1 + ppm/10^6`.
    pub fn new(ppm: i64) -> Clock {
        Clock {
            since_global: Time(0),
            since_local: Time(0),
            ppm,
        }
    }

    /// Its reading at simulated time `global` (not before the last rate
    /// change).
    pub fn local(&self, global: Time) -> Time {
        let elapsed = global.0.saturating_sub(self.since_global.0);
        Time(self.since_local.0 + local_time(Time(elapsed), self.ppm).0)
    }

    /// The earliest simulated time at which it reads `local`, at its
    /// current rate.
    pub fn global(&self, local: Time) -> Time {
        let ahead = local.0.saturating_sub(self.since_local.0);
        Time(self.since_global.0 + global_time(Time(ahead), self.ppm).0)
    }

    /// From `now` on, runs at `1 + ppm/10^6` (the reading never jumps).
    pub fn set_rate(&mut self, now: Time, ppm: i64) {
        self.since_local = self.local(now);
        self.since_global = now;
        self.ppm = ppm;
    }
}

/// How far a clock beyond the bound strays, drawn anew at each change.
pub fn beyond_bound_rate(rng: &mut SmallRng) -> i64 {
    rng.gen_range(-BEYOND_ACTUAL_PPM..=BEYOND_ACTUAL_PPM)
}

/// A replica's clock at simulated time `global`, running at `1 + ppm/10^6`.
pub fn local_time(global: Time, ppm: i64) -> Time {
    let g = i128::from(global.0);
    let local = g + g * i128::from(ppm) / 1_000_000;
    Time(u64::try_from(local.max(0)).unwrap_or(u64::MAX))
}

/// The earliest simulated time at which a clock running at `1 + ppm/10^6`
/// shows at least `local`.
pub fn global_time(local: Time, ppm: i64) -> Time {
    let l = i128::from(local.0);
    let mut g = (l * 1_000_000 / (1_000_000 + i128::from(ppm))).max(0);
    let at = |g: i128| local_time(Time(u64::try_from(g).unwrap_or(u64::MAX)), ppm).0;
    while at(g) < local.0 {
        g += 1;
    }
    while g > 0 && at(g - 1) >= local.0 {
        g -= 1;
    }
    Time(u64::try_from(g).unwrap_or(u64::MAX))
}

/// A read in flight that skips the log, as the simulator checks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFreeRead {
    /// Linearizable: checked with the clients' whole history, and first
    /// for freshness ([`check_fresh`]).
    Linearizable {
        /// The highest slot applied anywhere when the read was called.
        applied_at_call: Slot,
    },
    /// A follower read at or above `asked` ([`ReadReference::check`]).
    Follower {
        /// The slot the client asked for.
        asked: Slot,
    },
}

/// A linearizable read must be answered from a state that holds every slot
/// applied anywhere before it was called: a slot is applied only once it
/// is chosen, and a chosen write is visible to every later read (the
/// linearizability check assumes as much of writes whose outcome the
/// client never learned). This catches a deposed leader answering from
/// an old state whatever keys the reads and writes touch; the history
/// check catches it only when they collide.
pub fn check_fresh(key: &Bytes, applied_at_call: Slot, answered: Slot) -> Result<(), Failure> {
    if answered >= applied_at_call {
        return Ok(());
    }
    Err(Failure::new(
        FailureKind::Linearizability,
        format!(
            "stale read of {}: answered from the state after slot {answered}, but slot {applied_at_call} was applied before the read was called",
            String::from_utf8_lossy(key)
        ),
    ))
}

/// The key-value state after every chosen slot, kept apart from the
/// replicas, for checking follower reads: it executes every decree the
/// first time any replica applies it (slots are first applied in order)
/// and records, per key the clients write, its value after each slot that
/// wrote it.
#[derive(Default)]
pub struct ReadReference {
    store: KvStore,
    through: Slot,
    /// Write request encoding -> the key it writes.
    writes: HashMap<Bytes, Bytes>,
    /// Key -> (slot, value after that slot), in slot order.
    values: HashMap<Bytes, Vec<(Slot, Option<Bytes>)>>,
}

impl ReadReference {
    /// The highest slot applied anywhere so far.
    pub fn through(&self) -> Slot {
        self.through
    }

    /// A client issued a write of `key` encoded as `request`.
    pub fn note_write(&mut self, request: Bytes, key: Bytes) {
        self.writes.insert(request, key);
    }

    /// A replica applied `slot` (holding `value`). Only a slot's first
    /// application anywhere is executed.
    pub fn on_apply(&mut self, slot: Slot, value: &Value) -> Result<(), Failure> {
        if slot <= self.through {
            return Ok(());
        }
        if slot != self.through.next() {
            return Err(Failure::new(
                FailureKind::ApiContract,
                format!(
                    "slot {slot} was applied before slot {} was applied anywhere",
                    self.through.next()
                ),
            ));
        }
        self.through = slot;
        let Value::Requests(bytes) = value else {
            return Ok(());
        };
        let Ok((header, requests)) = framing::parse(bytes) else {
            return Ok(());
        };
        if header.kind != DecreeKind::Client {
            return Ok(());
        }
        let decree = Decree {
            slot,
            proposer: header.tag.proposer,
            time_us: header.time_us,
        };
        for request in requests {
            StateMachine::execute(&mut self.store, &decree, &request);
            if let Some(key) = self.writes.get(&request[..]) {
                let now = self.store.get(key).map(Bytes::copy_from_slice);
                self.values
                    .entry(key.clone())
                    .or_default()
                    .push((slot, now));
            }
        }
        Ok(())
    }

    /// Checks a follower read of `key` that asked for slot `asked` and was
    /// answered at slot `answered` with `outcome`.
    pub fn check(
        &self,
        key: &Bytes,
        asked: Slot,
        answered: Slot,
        outcome: &OpOutcome,
    ) -> Result<(), Failure> {
        let stale = |why: String| {
            Err(Failure::new(
                FailureKind::BoundedStaleness,
                format!(
                    "follower read of {} at or above slot {asked}, answered at slot {answered}: {why}",
                    String::from_utf8_lossy(key)
                ),
            ))
        };
        if answered < asked {
            return stale("answered below the slot asked for".into());
        }
        if answered > self.through {
            return stale(format!("no replica applied slot {answered} yet"));
        }
        let expected = self
            .values
            .get(key)
            .and_then(|v| {
                let at = v.partition_point(|(s, _)| *s <= answered);
                at.checked_sub(1).map(|i| v[i].1.clone())
            })
            .flatten();
        match outcome {
            OpOutcome::Read(got) if *got == expected => Ok(()),
            other => stale(format!(
                "read {other:?}, but the value after slot {answered} is {:?}",
                expected.as_deref().map(String::from_utf8_lossy)
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_conversions_are_inverse_and_monotonic() {
        for ppm in [-600_000i64, -50_000, -1, 0, 1, 1_000, 600_000] {
            let mut last = Time(0);
            for g in (0..2_000_000u64).step_by(977) {
                let l = local_time(Time(g), ppm);
                assert!(l >= last, "ppm {ppm}: clock went back at {g}");
                last = l;
                let back = global_time(l, ppm);
                assert!(back <= Time(g), "ppm {ppm}: {g} -> {l:?} -> {back:?}");
                assert!(local_time(back, ppm) >= l);
            }
        }
        assert_eq!(local_time(Time(1_000_000), 100_000), Time(1_100_000));
        // A rate change neither jumps the reading nor breaks the inverse.
        let mut c = Clock::new(500_000);
        assert_eq!(c.local(Time(1_000)), Time(1_500));
        c.set_rate(Time(1_000), -500_000);
        assert_eq!(c.local(Time(1_000)), Time(1_500));
        assert_eq!(c.local(Time(3_000)), Time(2_500));
        assert_eq!(c.global(Time(2_500)), Time(2_999));
        assert_eq!(c.local(Time(2_999)), Time(2_500));
        assert_eq!(
            c.global(Time(1_000)),
            Time(1_000),
            "a reading already passed"
        );
        assert_eq!(local_time(Time(1_000_000), -100_000), Time(900_000));
    }

    #[test]
    fn a_follower_read_must_show_the_value_after_its_slot() {
        let mut r = ReadReference::default();
        let key = Bytes::from_static(b"r1");
        let set = |v: &str| {
            let mut out = bytes::BytesMut::new();
            paxos_kv::kv::encode_command(
                &["SET".into(), "r1".into(), Bytes::from(v.to_string())],
                &mut out,
            )
            .unwrap();
            out.freeze()
        };
        let (a, b) = (set("a"), set("b"));
        r.note_write(a.clone(), key.clone());
        r.note_write(b.clone(), key.clone());
        let decree = |slot: u64, req: &Bytes| {
            let header = framing::Header {
                kind: DecreeKind::Client,
                tag: framing::ProposalTag {
                    proposer: paxos_core::ReplicaId(1),
                    nonce: 0,
                    counter: slot,
                },
                time_us: 0,
            };
            let mut fb =
                framing::FramedBuilder::new(paxos_core::batch::BatchLimits::default(), &header);
            assert!(fb.push(req));
            Value::Requests(fb.finish())
        };
        r.on_apply(Slot(1), &decree(1, &a)).unwrap();
        r.on_apply(Slot(2), &Value::Noop).unwrap();
        r.on_apply(Slot(3), &decree(3, &b)).unwrap();
        assert!(r.on_apply(Slot(5), &Value::Noop).is_err(), "a gap");
        let read =
            |v: Option<&'static str>| OpOutcome::Read(v.map(|s| Bytes::from_static(s.as_bytes())));
        r.check(&key, Slot(1), Slot(2), &read(Some("a"))).unwrap();
        r.check(&key, Slot(0), Slot(0), &read(None)).unwrap();
        r.check(&key, Slot(3), Slot(3), &read(Some("b"))).unwrap();
        // Stale: the value before the slot asked for.
        let e = r
            .check(&key, Slot(3), Slot(3), &read(Some("a")))
            .unwrap_err();
        assert_eq!(e.kind, FailureKind::BoundedStaleness);
        // Answered below the slot asked for.
        assert!(r.check(&key, Slot(3), Slot(2), &read(Some("a"))).is_err());
        // Answered at a slot nobody applied.
        assert!(r.check(&key, Slot(3), Slot(9), &read(Some("b"))).is_err());
    }
}
