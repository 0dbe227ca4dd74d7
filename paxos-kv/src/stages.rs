//! Per-stage latency breakdown of the write path, off by default.
//!
//! A write passes these points on the leader:
//!
//! ```text
//! received → queued → batched → accept sent → durable (local) → quorum → applied → replied
//! ```
//!
//! The node stamps each point with [`StageClock::now`](crate::stages::StageClock::now) and records the gap
//! between consecutive points with [`StageRecorder::record`](crate::stages::StageRecorder::record). Recording is a
//! single relaxed load when the recorder is disabled, so production pays
//! nothing; when enabled (`PAXOS_KV_STAGE_TIMING=1` or the `stage_timing`
//! config knob) every sample lands in a per-stage histogram behind a mutex
//! that is only contended by the event loop and the client tasks.
//!
//! `INFO latency` prints one line per stage in the form
//! `stage_<from>-><to>:p50=..,p99=..,p999=..,count=..` (microseconds), which
//! `cargo xtask bench` reads to name the biggest contributor.

use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// A point on the write path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(usize)]
pub enum Point {
    /// The request was parsed from the client connection.
    Received = 0,
    /// It entered the submit queue.
    Queued,
    /// The event loop drained it into a decree's batch.
    Batched,
    /// The leader sent the decree's Accept to the followers.
    AcceptSent,
    /// The leader's own log made the decree durable.
    Durable,
    /// A quorum accepted: the decree is chosen.
    Quorum,
    /// The state machine applied it.
    Applied,
    /// The reply was written to the client.
    Replied,
}

impl Point {
    /// All points in path order.
    pub const ALL: [Point; 8] = [
        Point::Received,
        Point::Queued,
        Point::Batched,
        Point::AcceptSent,
        Point::Durable,
        Point::Quorum,
        Point::Applied,
        Point::Replied,
    ];

    /// The point's name in `INFO latency`.
    pub fn name(self) -> &'static str {
        match self {
            Point::Received => "received",
            Point::Queued => "queued",
            Point::Batched => "batched",
            Point::AcceptSent => "accept_sent",
            Point::Durable => "durable",
            Point::Quorum => "quorum",
            Point::Applied => "applied",
            Point::Replied => "replied",
        }
    }
}

/// Monotonic microsecond timestamps relative to the recorder's creation.
#[derive(Clone, Copy, Debug)]
pub struct StageClock {
    origin: Instant,
}

impl StageClock {
    /// A clock starting now.
    pub fn new() -> Self {
        StageClock {
            origin: Instant::now(),
        }
    }

    /// Microseconds since the clock started.
    pub fn now(&self) -> u64 {
        self.origin.elapsed().as_micros() as u64
    }
}

impl Default for StageClock {
    fn default() -> Self {
        Self::new()
    }
}

/// Histograms of the gap between consecutive points, plus the total.
pub struct StageRecorder {
    enabled: AtomicBool,
    clock: StageClock,
    /// Index `i` holds the gap from `Point::ALL[i]` to `Point::ALL[i + 1]`;
    /// the last entry holds received → replied.
    histograms: Mutex<Vec<Histogram<u64>>>,
}

impl std::fmt::Debug for StageRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StageRecorder")
            .field("enabled", &self.is_enabled())
            .finish()
    }
}

fn histogram() -> Histogram<u64> {
    // 1 µs .. 100 s at 3 significant digits: the bounds are constants.
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("constant histogram bounds are valid")
}

impl StageRecorder {
    /// A recorder, enabled or not.
    pub fn new(enabled: bool) -> Self {
        StageRecorder {
            enabled: AtomicBool::new(enabled),
            clock: StageClock::new(),
            histograms: Mutex::new((0..Point::ALL.len()).map(|_| histogram()).collect()),
        }
    }

    /// A recorder enabled by `PAXOS_KV_STAGE_TIMING=1` (or `true`).
    pub fn from_env() -> Self {
        let on = std::env::var("PAXOS_KV_STAGE_TIMING")
            .is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
        Self::new(on)
    }

    /// Whether samples are kept.
    #[inline]
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Turns recording on or off at run time.
    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
    }

    /// The current timestamp, or 0 when disabled (no clock read).
    #[inline]
    pub fn stamp(&self) -> u64 {
        if self.is_enabled() {
            self.clock.now().max(1)
        } else {
            0
        }
    }

    /// Records the gap between two consecutive points. Stamps of 0 (taken
    /// while disabled) are skipped, so toggling never records garbage.
    #[inline]
    pub fn record(&self, from: Point, from_us: u64, to_us: u64) {
        self.record_n(from, from_us, to_us, 1);
    }

    /// [`StageRecorder::record`] for `count` requests that share both
    /// stamps (a unit of requests submitted together), under one lock.
    #[inline]
    pub fn record_n(&self, from: Point, from_us: u64, to_us: u64, count: u64) {
        if !self.is_enabled() || from_us == 0 || to_us == 0 || from == Point::Replied || count == 0
        {
            return;
        }
        let gap = to_us.saturating_sub(from_us).max(1);
        if let Ok(mut h) = self.histograms.lock() {
            h[from as usize].saturating_record_n(gap, count);
        }
    }

    /// Records a decree's batch-level gaps (batched → accept sent → durable
    /// → quorum → applied) for its `count` requests under one lock.
    pub fn record_decree(&self, stamps: [u64; 5], count: u64) {
        if !self.is_enabled() || count == 0 || stamps.contains(&0) {
            return;
        }
        if let Ok(mut h) = self.histograms.lock() {
            for (i, w) in stamps.windows(2).enumerate() {
                let hist = &mut h[Point::Batched as usize + i];
                hist.saturating_record_n(w[1].saturating_sub(w[0]).max(1), count);
            }
        }
    }

    /// Records the last stage (applied → replied) and the request's total
    /// under one lock.
    #[inline]
    pub fn record_replied(&self, received_us: u64, applied_us: u64, replied_us: u64) {
        if !self.is_enabled() || received_us == 0 || replied_us == 0 {
            return;
        }
        if let Ok(mut h) = self.histograms.lock() {
            if applied_us != 0 {
                h[Point::Applied as usize]
                    .saturating_record(replied_us.saturating_sub(applied_us).max(1));
            }
            let last = Point::ALL.len() - 1;
            h[last].saturating_record(replied_us.saturating_sub(received_us).max(1));
        }
    }

    /// Runs `f` with a recorder that records many samples under one lock
    /// (nothing is recorded while disabled).
    pub fn with_batch(&self, f: impl FnOnce(&mut BatchRecorder<'_>)) {
        if !self.is_enabled() {
            f(&mut BatchRecorder { histograms: None });
            return;
        }
        let mut guard = self.histograms.lock().ok();
        f(&mut BatchRecorder {
            histograms: guard.as_deref_mut(),
        });
    }

    /// Records a whole request's time from received to replied.
    #[inline]
    pub fn record_total(&self, received_us: u64, replied_us: u64) {
        if !self.is_enabled() || received_us == 0 || replied_us == 0 {
            return;
        }
        if let Ok(mut h) = self.histograms.lock() {
            let last = Point::ALL.len() - 1;
            h[last].saturating_record(replied_us.saturating_sub(received_us).max(1));
        }
    }

    /// Clears every histogram.
    pub fn reset(&self) {
        if let Ok(mut h) = self.histograms.lock() {
            h.iter_mut().for_each(Histogram::reset);
        }
    }

    /// The name of histogram `i` (`received->queued`, ..., `total`).
    pub fn stage_name(i: usize) -> String {
        if i + 1 < Point::ALL.len() {
            format!("{}->{}", Point::ALL[i].name(), Point::ALL[i + 1].name())
        } else {
            "total".to_string()
        }
    }

    /// Each stage's samples counted into the buckets `bounds_us` (ascending
    /// upper bounds; a last bucket takes the rest), for the metrics endpoint.
    /// One pass over each non-empty histogram under one lock acquisition, so
    /// a scrape holds the lock the loop records under for well under a
    /// millisecond; nothing is cloned.
    pub fn bucket_counts(&self, bounds_us: &[u64]) -> Vec<StageBuckets> {
        let Ok(h) = self.histograms.lock() else {
            return Vec::new();
        };
        h.iter()
            .enumerate()
            .map(|(stage, hist)| {
                let mut buckets = vec![0u64; bounds_us.len() + 1];
                let mut sum_us = 0u64;
                if !hist.is_empty() {
                    for v in hist.iter_recorded() {
                        let value = v.value_iterated_to();
                        let n = v.count_at_value();
                        let slot = bounds_us.partition_point(|&b| b < value);
                        buckets[slot] += n;
                        sum_us = sum_us.saturating_add(value.saturating_mul(n));
                    }
                }
                StageBuckets {
                    stage,
                    count: hist.len(),
                    sum_us,
                    buckets,
                }
            })
            .collect()
    }

    /// The `INFO latency` text: one line per stage with samples, then the total.
    pub fn render(&self) -> String {
        let mut out = String::from("# Latency\r\n");
        out.push_str(&format!(
            "stage_timing:{}\r\n",
            if self.is_enabled() { "on" } else { "off" }
        ));
        let Ok(h) = self.histograms.lock() else {
            return out;
        };
        for (i, hist) in h.iter().enumerate() {
            if hist.is_empty() {
                continue;
            }
            let name = Self::stage_name(i);
            out.push_str(&format!(
                "stage_{name}:p50={},p99={},p999={},count={}\r\n",
                hist.value_at_quantile(0.5),
                hist.value_at_quantile(0.99),
                hist.value_at_quantile(0.999),
                hist.len()
            ));
        }
        out
    }
}

/// One stage's histogram in fixed buckets (see [`StageRecorder::bucket_counts`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StageBuckets {
    /// Index of the stage (see [`StageRecorder::stage_name`]).
    pub stage: usize,
    /// Samples.
    pub count: u64,
    /// Their sum in microseconds (each sample rounded up to its hdr bucket).
    pub sum_us: u64,
    /// Samples per bucket (not cumulative); the last one is above every bound.
    pub buckets: Vec<u64>,
}

/// Records samples under a lock taken once (see [`StageRecorder::with_batch`]).
pub struct BatchRecorder<'a> {
    histograms: Option<&'a mut Vec<Histogram<u64>>>,
}

impl BatchRecorder<'_> {
    /// Like [`StageRecorder::record`], without taking the lock again.
    #[inline]
    pub fn record(&mut self, from: Point, from_us: u64, to_us: u64) {
        self.record_n(from, from_us, to_us, 1);
    }

    /// Like [`StageRecorder::record_n`], without taking the lock again.
    #[inline]
    pub fn record_n(&mut self, from: Point, from_us: u64, to_us: u64, count: u64) {
        if from_us == 0 || to_us == 0 || from == Point::Replied || count == 0 {
            return;
        }
        if let Some(h) = self.histograms.as_deref_mut() {
            h[from as usize].saturating_record_n(to_us.saturating_sub(from_us).max(1), count);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_recorder_keeps_nothing_and_reads_no_clock() {
        let r = StageRecorder::new(false);
        assert_eq!(r.stamp(), 0);
        r.record(Point::Received, 1, 10);
        r.record_total(1, 10);
        assert!(!r.render().contains("stage_received"));
        assert!(r.render().contains("stage_timing:off"));
    }

    #[test]
    fn enabled_recorder_reports_each_stage_and_total() {
        let r = StageRecorder::new(true);
        for i in 0..100u64 {
            r.record(Point::Received, 10, 20 + i % 3);
            r.record(Point::Quorum, 100, 600);
            r.record_total(10, 1000);
        }
        let text = r.render();
        assert!(text.contains("stage_received->queued:p50=11,"), "{text}");
        assert!(text.contains("stage_quorum->applied:p50=500,"), "{text}");
        assert!(text.contains("stage_total:p50=990,"), "{text}");
        assert!(text.contains("count=100"), "{text}");
        r.reset();
        assert!(!r.render().contains("stage_total"));
    }

    #[test]
    fn batched_recording_matches_per_sample_recording() {
        let one = StageRecorder::new(true);
        let many = StageRecorder::new(true);
        for _ in 0..7 {
            one.record(Point::Batched, 100, 150);
            one.record(Point::AcceptSent, 150, 400);
            one.record(Point::Durable, 400, 900);
            one.record(Point::Quorum, 900, 1000);
            one.record(Point::Queued, 10, 100);
            one.record(Point::Applied, 1000, 1200);
            one.record_total(5, 1200);
            one.record(Point::Received, 3, 10);
        }
        many.record_decree([100, 150, 400, 900, 1000], 7);
        many.with_batch(|b| {
            b.record_n(Point::Queued, 10, 100, 4);
            (0..3).for_each(|_| b.record(Point::Queued, 10, 100));
        });
        (0..7).for_each(|_| many.record_replied(5, 1000, 1200));
        many.record_n(Point::Received, 3, 10, 7);
        assert_eq!(one.render(), many.render());
        many.record_n(Point::Received, 3, 10, 0);
        many.with_batch(|b| b.record_n(Point::Queued, 10, 100, 0));
        assert_eq!(one.render(), many.render(), "a count of 0 records nothing");
        assert!(many.render().contains("stage_durable->quorum:p50=500,"));
        many.record_decree([100, 0, 400, 900, 1000], 3);
        assert_eq!(one.render(), many.render(), "a zero stamp records nothing");
        let off = StageRecorder::new(false);
        off.record_decree([1, 2, 3, 4, 5], 3);
        off.with_batch(|b| b.record(Point::Queued, 1, 2));
        off.record_n(Point::Received, 1, 2, 3);
        off.record_replied(1, 2, 3);
        assert!(!off.render().contains("->"), "{}", off.render());
        assert!(!off.render().contains("stage_total"), "{}", off.render());
    }

    #[test]
    fn bucket_counts_place_each_sample_under_its_bound() {
        let r = StageRecorder::new(true);
        r.record(Point::Received, 10, 15); // 5 µs
        r.record(Point::Received, 10, 110); // 100 µs: on the bound
        r.record(Point::Received, 10, 5_010); // 5 ms
        r.record_total(1, 2_000_001); // 2 s: above every bound
        let b = r.bucket_counts(&[10, 100, 1_000]);
        assert_eq!(b.len(), Point::ALL.len());
        assert_eq!(StageRecorder::stage_name(b[0].stage), "received->queued");
        assert_eq!(b[0].buckets, vec![1, 1, 0, 1]);
        assert_eq!(b[0].count, 3);
        let sum = b[0].sum_us as f64;
        assert!((sum - 5_105.0).abs() / 5_105.0 < 0.01, "{sum}");
        let total = &b[Point::ALL.len() - 1];
        assert_eq!(StageRecorder::stage_name(total.stage), "total");
        assert_eq!(total.buckets, vec![0, 0, 0, 1]);
        assert_eq!(b[1].count, 0);
        assert_eq!(b[1].buckets, vec![0; 4]);
    }

    #[test]
    fn stamps_taken_while_disabled_are_skipped() {
        let r = StageRecorder::new(true);
        r.record(Point::Batched, 0, 50);
        r.record(Point::Batched, 50, 0);
        assert!(!r.render().contains("stage_batched"));
        assert!(r.stamp() >= 1);
    }
}
