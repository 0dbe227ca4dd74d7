//! Write latencies over time, and the worst of them around checkpoints.
//!
//! Every write is one [`Sample`]: when it was sent and how long its reply
//! took, both in microseconds from the run's origin. A checkpoint is a
//! [`Window`] on the same clock. A write *overlaps* a window when the span
//! from its send to its reply intersects it: that is the write a checkpoint
//! could have held up, and the longest such latency is the stall reported
//! for checkpoints.

/// One write: sent at `sent_us` (from the origin), answered `latency_us` later.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    /// Send time, microseconds from the origin.
    pub sent_us: u64,
    /// Latency, microseconds.
    pub latency_us: u64,
}

impl Sample {
    /// When the reply arrived, microseconds from the origin.
    pub fn done_us(&self) -> u64 {
        self.sent_us + self.latency_us
    }
}

/// A span of time on the samples' clock, e.g. a checkpoint being written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Start, microseconds from the origin.
    pub start_us: u64,
    /// End (inclusive), microseconds from the origin.
    pub end_us: u64,
}

impl Window {
    /// Whether the write's send-to-reply span intersects this window.
    pub fn overlaps(&self, s: &Sample) -> bool {
        s.sent_us <= self.end_us && s.done_us() >= self.start_us
    }
}

/// Latency quantiles of a set of samples, microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Quantiles {
    /// Writes counted.
    pub count: usize,
    /// Median.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// Largest.
    pub max_us: u64,
}

/// Quantiles of the samples sent in `[from_us, to_us)` (nearest rank).
pub fn quantiles(samples: &[Sample], from_us: u64, to_us: u64) -> Quantiles {
    let mut lat: Vec<u64> = samples
        .iter()
        .filter(|s| s.sent_us >= from_us && s.sent_us < to_us)
        .map(|s| s.latency_us)
        .collect();
    if lat.is_empty() {
        return Quantiles::default();
    }
    lat.sort_unstable();
    let rank = |q: f64| lat[((q * lat.len() as f64).ceil() as usize).clamp(1, lat.len()) - 1];
    Quantiles {
        count: lat.len(),
        p50_us: rank(0.5),
        p99_us: rank(0.99),
        max_us: lat[lat.len() - 1],
    }
}

/// The longest latency of a write overlapping any of `windows`, with the
/// window it overlapped; `None` if no write overlaps one.
pub fn longest_stall(samples: &[Sample], windows: &[Window]) -> Option<(Sample, Window)> {
    let mut best: Option<(Sample, Window)> = None;
    for s in samples {
        for w in windows.iter().filter(|w| w.overlaps(s)) {
            if best.is_none_or(|(b, _)| s.latency_us > b.latency_us) {
                best = Some((*s, *w));
            }
        }
    }
    best
}

/// `unix_us` as a UTC time of day, `hh:mm:ss.mmm` (what node logs print),
/// to find a write in the logs.
pub fn utc_time_of_day(unix_us: u64) -> String {
    let ms = unix_us / 1_000;
    let s = ms / 1_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        (s / 3_600) % 24,
        (s / 60) % 60,
        s % 60,
        ms % 1_000
    )
}

/// The longest latency of a write overlapping none of `windows` (the
/// baseline the checkpoint stall is compared with).
pub fn longest_outside(samples: &[Sample], windows: &[Window]) -> u64 {
    samples
        .iter()
        .filter(|s| !windows.iter().any(|w| w.overlaps(s)))
        .map(|s| s.latency_us)
        .max()
        .unwrap_or(0)
}

/// The worst latency per `bucket_us` of send time: the series the plot
/// draws (a million points would make an unreadable SVG; the maximum keeps
/// every stall visible). Buckets without writes are left out.
pub fn max_per_bucket(samples: &[Sample], bucket_us: u64) -> Vec<(u64, u64)> {
    let bucket_us = bucket_us.max(1);
    let mut out: std::collections::BTreeMap<u64, u64> = std::collections::BTreeMap::new();
    for s in samples {
        let slot = out.entry(s.sent_us / bucket_us * bucket_us).or_insert(0);
        *slot = (*slot).max(s.latency_us);
    }
    out.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(sent_us: u64, latency_us: u64) -> Sample {
        Sample {
            sent_us,
            latency_us,
        }
    }

    #[test]
    fn times_of_day_are_utc_with_milliseconds() {
        // 2026-12-07T22:43:14.866063Z
        assert_eq!(utc_time_of_day(1_796_683_394_866_063), "22:43:14.866");
        assert_eq!(utc_time_of_day(0), "00:00:00.000");
    }

    #[test]
    fn a_write_overlaps_a_window_it_spans_into() {
        let w = Window {
            start_us: 100,
            end_us: 200,
        };
        assert!(w.overlaps(&s(50, 50)), "answered at the window's start");
        assert!(w.overlaps(&s(150, 1)), "inside");
        assert!(w.overlaps(&s(10, 1000)), "spans the whole window");
        assert!(w.overlaps(&s(200, 5)), "sent at its end");
        assert!(!w.overlaps(&s(10, 89)), "answered before it");
        assert!(!w.overlaps(&s(201, 1)), "sent after it");
    }

    #[test]
    fn the_stall_is_the_longest_write_overlapping_a_checkpoint() {
        let samples = [s(0, 900), s(100, 40), s(1000, 70), s(5000, 300)];
        let windows = [
            Window {
                start_us: 90,
                end_us: 120,
            },
            Window {
                start_us: 1050,
                end_us: 1100,
            },
        ];
        // The 900 µs write (0..900) overlaps the first window; 300 µs at
        // 5000 is outside every window.
        assert_eq!(
            longest_stall(&samples, &windows).map(|(s, w)| (s.latency_us, w)),
            Some((900, windows[0]))
        );
        assert_eq!(longest_outside(&samples, &windows), 300);
        assert_eq!(longest_stall(&samples, &[]), None);
        assert_eq!(longest_outside(&samples, &[]), 900);
    }

    #[test]
    fn quantiles_use_the_nearest_rank_in_the_interval() {
        let samples: Vec<Sample> = (1..=100).map(|i| s(i, i * 10)).collect();
        let q = quantiles(&samples, 0, 1000);
        assert_eq!(
            q,
            Quantiles {
                count: 100,
                p50_us: 500,
                p99_us: 990,
                max_us: 1000
            }
        );
        let q = quantiles(&samples, 1, 3);
        assert_eq!((q.count, q.max_us), (2, 20), "sent at 1 and 2 only");
        assert_eq!(quantiles(&samples, 500, 600), Quantiles::default());
    }

    #[test]
    fn buckets_keep_the_worst_latency() {
        let samples = [s(0, 5), s(99, 50), s(100, 7), s(350, 1)];
        assert_eq!(
            max_per_bucket(&samples, 100),
            vec![(0, 50), (100, 7), (300, 1)]
        );
    }
}
