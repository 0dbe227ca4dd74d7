//! [`Log2Histogram`]: a histogram cheap enough to record into on a hot path
//! and readable from another thread without a lock.
//!
//! Buckets are fixed powers of two: bucket `i` counts the values in
//! `(2^(i-1), 2^i]` (bucket 0: 0 and 1), so a record is one
//! `leading_zeros`, two relaxed atomic adds and no allocation, and a
//! Prometheus `le` bound is exactly `2^i`. The price is resolution: a
//! bucket spans a factor of two, which is enough to tell a 100 µs fsync
//! from a 10 ms one, or batches of 1 from batches of 100. Readers get a
//! [`Log2Snapshot`]; its count is the sum of its buckets, so the two always
//! agree, while the sum is read separately and may be a record ahead or
//! behind (monitoring tolerates that).
//!
//! It lives in paxos-log because the log's writer thread records its fsync
//! latencies and group-commit sizes into it, and paxos-log is the lowest
//! crate its other user (paxos-kv's node loop, for requests per decree)
//! depends on.

use std::sync::atomic::{AtomicU64, Ordering};

/// Number of buckets: one for 0 and 1, and one for each power of two up
/// to `2^64` (which holds everything above `2^63`).
pub const LOG2_BUCKETS: usize = 65;

/// A lock-free histogram of `u64` values in power-of-two buckets.
#[derive(Debug)]
pub struct Log2Histogram {
    buckets: [AtomicU64; LOG2_BUCKETS],
    sum: AtomicU64,
}

impl Default for Log2Histogram {
    fn default() -> Self {
        Log2Histogram::new()
    }
}

impl Log2Histogram {
    /// An empty histogram.
    pub const fn new() -> Log2Histogram {
        Log2Histogram {
            buckets: [const { AtomicU64::new(0) }; LOG2_BUCKETS],
            sum: AtomicU64::new(0),
        }
    }

    /// The bucket `value` falls in: the smallest `i` with `value <= 2^i`.
    pub fn bucket_of(value: u64) -> usize {
        if value <= 1 {
            0
        } else {
            (u64::BITS - (value - 1).leading_zeros()) as usize
        }
    }

    /// Counts one `value`.
    pub fn record(&self, value: u64) {
        self.buckets[Self::bucket_of(value)].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    /// The counts so far.
    pub fn snapshot(&self) -> Log2Snapshot {
        Log2Snapshot {
            counts: std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed)),
            sum: self.sum.load(Ordering::Relaxed),
        }
    }
}

/// A copy of a [`Log2Histogram`]'s counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Log2Snapshot {
    /// Values counted per bucket (see [`Log2Histogram::bucket_of`]).
    pub counts: [u64; LOG2_BUCKETS],
    /// Sum of the values counted (wrapping).
    pub sum: u64,
}

impl Default for Log2Snapshot {
    fn default() -> Self {
        Log2Snapshot {
            counts: [0; LOG2_BUCKETS],
            sum: 0,
        }
    }
}

impl Log2Snapshot {
    /// Values counted.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Cumulative counts at the bounds `2^i` for `i` in `exponents`
    /// (ascending): `(2^i, values <= 2^i)`, as a Prometheus histogram's
    /// buckets are. Values above the last bound are only in [`Self::count`]
    /// (the `+Inf` bucket).
    pub fn cumulative(
        &self,
        exponents: std::ops::RangeInclusive<u32>,
    ) -> impl Iterator<Item = (u64, u64)> + '_ {
        let mut below = 0u64;
        let mut next = 0usize;
        exponents.map(move |e| {
            let e = (e as usize).min(LOG2_BUCKETS - 1);
            while next <= e {
                below += self.counts[next];
                next += 1;
            }
            (1u64.checked_shl(e as u32).unwrap_or(u64::MAX), below)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_value_lands_in_the_smallest_power_of_two_at_or_above_it() {
        let cases = [
            (0, 0),
            (1, 0),
            (2, 1),
            (3, 2),
            (4, 2),
            (5, 3),
            (8, 3),
            (9, 4),
            (1 << 20, 20),
            ((1 << 20) + 1, 21),
            (u64::MAX, 64),
        ];
        for (value, bucket) in cases {
            assert_eq!(Log2Histogram::bucket_of(value), bucket, "{value}");
        }
        for i in 1..64u32 {
            let bound = 1u64 << i;
            assert_eq!(Log2Histogram::bucket_of(bound), i as usize);
            assert_eq!(Log2Histogram::bucket_of(bound + 1), i as usize + 1);
        }
    }

    #[test]
    fn snapshots_count_sum_and_accumulate_at_the_bounds() {
        let h = Log2Histogram::new();
        for v in [1, 2, 3, 4, 100, 1000, 1 << 40] {
            h.record(v);
        }
        let s = h.snapshot();
        assert_eq!(s.count(), 7);
        assert_eq!(s.sum, 1 + 2 + 3 + 4 + 100 + 1000 + (1 << 40));
        let cumulative: Vec<(u64, u64)> = s.cumulative(0..=10).collect();
        assert_eq!(cumulative[0], (1, 1));
        assert_eq!(cumulative[1], (2, 2));
        assert_eq!(cumulative[2], (4, 4));
        assert_eq!(cumulative[7], (128, 5));
        assert_eq!(cumulative[10], (1024, 6));
        // A range that starts higher still counts everything below it.
        assert_eq!(s.cumulative(7..=7).next(), Some((128, 5)));
        assert_eq!(s.cumulative(64..=64).next(), Some((u64::MAX, 7)));
    }

    #[test]
    fn records_from_many_threads_are_all_counted() {
        let h = std::sync::Arc::new(Log2Histogram::new());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let h = std::sync::Arc::clone(&h);
                std::thread::spawn(move || {
                    for i in 0..10_000u64 {
                        h.record(i * t);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let s = h.snapshot();
        assert_eq!(s.count(), 40_000);
        assert_eq!(
            s.sum,
            (0..4u64).map(|t| t * (0..10_000u64).sum::<u64>()).sum()
        );
    }
}
