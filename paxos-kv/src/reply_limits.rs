//! How much reply memory clients may make a node hold, and what happens
//! past it: the decisions only, taking `now` and byte counts and returning
//! verdicts, so they are tested without sockets (the connection tasks in
//! [`crate::server`] and the sweeper in [`crate::client_registry`] act on
//! them).
//!
//! Every reply a connection owes is counted in bytes from the moment it is
//! produced until the socket took it (Redis's output buffer). Replies not
//! produced yet cannot be sized; they are bounded by the number of requests
//! a connection may have in consensus ([`pipelining_window`]) and counted
//! when they complete.
//!
//! - **Per client** (Redis's `client-output-buffer-limit <hard> <soft>
//!   <seconds>`): past the soft limit the node stops reading the client's
//!   requests, so a client that does not read its replies stops its own
//!   requests; past the hard limit, or past the soft one for longer than
//!   the soft period, it is disconnected ([`OutputLimits::check`]).
//! - **Per node** (Redis's `maxmemory-clients`): past the total the node
//!   stops reading from every client (the total cannot grow by more than
//!   what is already in consensus) and disconnects the clients holding the
//!   most reply bytes until it is below the limit again ([`shed_victims`]).
//!   Pausing alone would keep every client waiting until the soft period
//!   of the clients that caused it ran out; shedding alone would act only
//!   at the next sweep. Shedding the largest rather than, say, the newest
//!   picks the non-reading clients: a client that reads holds little.

use std::time::{Duration, Instant};

/// Per-client output limits (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutputLimits {
    /// Disconnect past this many unwritten bytes.
    pub hard_bytes: usize,
    /// Stop reading requests past this many unwritten bytes ...
    pub soft_bytes: usize,
    /// ... and disconnect if that lasts longer than this.
    pub soft_for: Duration,
}

/// What to do with a connection after its unwritten bytes changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputVerdict {
    /// Keep it; if `recheck_at` is set, it is past the soft limit and must
    /// be checked again then (it is disconnected if still past it).
    Keep {
        /// When the soft period runs out.
        recheck_at: Option<Instant>,
    },
    /// Disconnect it.
    Disconnect(LimitExceeded),
}

/// Which limit a disconnected client exceeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitExceeded {
    /// The hard limit.
    Hard,
    /// The soft limit, for longer than its period.
    Soft,
}

impl OutputLimits {
    /// Judges a connection holding `unwritten` reply bytes; `now` is read
    /// only past the soft limit (this runs per reply). `over_soft_since` is
    /// the connection's record of when it went past the soft limit (kept
    /// and cleared here).
    pub fn check(
        &self,
        unwritten: usize,
        over_soft_since: &mut Option<Instant>,
        now: impl FnOnce() -> Instant,
    ) -> OutputVerdict {
        if unwritten > self.hard_bytes {
            return OutputVerdict::Disconnect(LimitExceeded::Hard);
        }
        if unwritten <= self.soft_bytes {
            *over_soft_since = None;
            return OutputVerdict::Keep { recheck_at: None };
        }
        let now = now();
        let since = *over_soft_since.get_or_insert(now);
        let deadline = since + self.soft_for;
        if now >= deadline {
            OutputVerdict::Disconnect(LimitExceeded::Soft)
        } else {
            OutputVerdict::Keep {
                recheck_at: Some(deadline),
            }
        }
    }

    /// Whether a connection holding `unwritten` bytes may have more
    /// requests read (the backpressure threshold).
    pub fn may_read(&self, unwritten: usize) -> bool {
        unwritten < self.soft_bytes
    }
}

/// How many requests a connection may have waiting for replies, given the
/// largest reply it got recently: as many as fit under the soft limit at
/// that size, at least one, at most the configured `max_pipelined`. A client
/// pipelining reads of large values thus holds about the soft limit in
/// replies not yet produced, not `max_pipelined` times the value.
pub fn pipelining_window(
    soft_bytes: usize,
    recent_largest_reply: usize,
    max_pipelined: usize,
) -> usize {
    (soft_bytes / recent_largest_reply.max(1)).clamp(1, max_pipelined.max(1))
}

/// Requests a new connection may have waiting before any reply told how
/// large its replies are: its window starts here and opens up as small
/// replies come back (slow start), so a new client pipelining reads of
/// large values cannot put `max_pipelined` of them in flight at once.
pub const INITIAL_WINDOW: usize = 16;

/// The "largest recent reply" a new connection starts with: the size that
/// gives it [`INITIAL_WINDOW`] under the soft limit.
pub fn initial_largest(soft_bytes: usize) -> usize {
    soft_bytes / INITIAL_WINDOW
}

/// The running "largest recent reply" after a reply of `len` bytes: the
/// maximum, decaying by 1/64 per reply, so a connection that read one large
/// value gets its full window back after a few hundred small replies.
pub fn decayed_largest(previous: usize, len: usize) -> usize {
    len.max(previous - previous / 64)
}

/// The connections to disconnect, largest first, so that the node's total
/// of unwritten reply bytes drops to at most `limit`. `clients` holds
/// `(unwritten bytes, connection id)` and is reordered.
pub fn shed_victims(clients: &mut [(usize, u64)], total: usize, limit: usize) -> Vec<u64> {
    let mut victims = Vec::new();
    if total <= limit {
        return victims;
    }
    clients.sort_unstable_by_key(|c| std::cmp::Reverse(c.0));
    let mut remaining = total;
    for &(bytes, id) in clients.iter() {
        if remaining <= limit || bytes == 0 {
            break;
        }
        victims.push(id);
        remaining = remaining.saturating_sub(bytes);
    }
    victims
}

/// When to hand freed reply memory back to the operating system: glibc's
/// malloc keeps freed heap memory for reuse (and after a flood of large
/// replies the heap is mostly free chunks between a few live ones), so the
/// node's RSS would stay at its high-water mark. The sweeper samples the
/// total and calls `malloc_trim` (off the hot path, on a blocking thread)
/// once it fell by at least [`TrimPolicy::MIN_FREED`] and by half from the
/// highest sample since the last trim.
#[derive(Clone, Debug, Default)]
pub struct TrimPolicy {
    high_water: usize,
}

impl TrimPolicy {
    /// Least drop worth a trim (a trim walks the heap: not for small change).
    pub const MIN_FREED: usize = 16 << 20;

    /// Records a sample of the total; true if memory should be trimmed now.
    pub fn sample(&mut self, total: usize) -> bool {
        self.high_water = self.high_water.max(total);
        let freed = self.high_water - total;
        if freed >= Self::MIN_FREED && total <= self.high_water / 2 {
            self.high_water = total;
            return true;
        }
        false
    }
}

/// Returns free heap memory to the operating system (glibc only; a no-op
/// elsewhere). Blocks for a while on a large heap: call it on a blocking
/// thread.
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions; it takes malloc's own locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    fn limits() -> OutputLimits {
        OutputLimits {
            hard_bytes: 64 * MIB,
            soft_bytes: 16 * MIB,
            soft_for: Duration::from_secs(10),
        }
    }

    #[test]
    fn hard_limit_disconnects_at_once() {
        let mut since = None;
        let now = Instant::now();
        assert_eq!(
            limits().check(64 * MIB + 1, &mut since, || now),
            OutputVerdict::Disconnect(LimitExceeded::Hard)
        );
        assert_eq!(
            limits().check(64 * MIB, &mut since, || now),
            OutputVerdict::Keep {
                recheck_at: Some(now + Duration::from_secs(10))
            }
        );
    }

    #[test]
    fn soft_limit_disconnects_only_after_its_period() {
        let l = limits();
        let t0 = Instant::now();
        let mut since = None;
        assert_eq!(
            l.check(MIB, &mut since, || t0),
            OutputVerdict::Keep { recheck_at: None }
        );
        let deadline = t0 + Duration::from_secs(10);
        assert_eq!(
            l.check(20 * MIB, &mut since, || t0),
            OutputVerdict::Keep {
                recheck_at: Some(deadline)
            }
        );
        // Still over later: the clock started at the first crossing.
        assert_eq!(
            l.check(17 * MIB, &mut since, || t0 + Duration::from_secs(9)),
            OutputVerdict::Keep {
                recheck_at: Some(deadline)
            }
        );
        assert_eq!(
            l.check(17 * MIB, &mut since, || deadline),
            OutputVerdict::Disconnect(LimitExceeded::Soft)
        );
        // Dropping below resets the clock.
        let mut since = Some(t0);
        assert_eq!(
            l.check(MIB, &mut since, || deadline),
            OutputVerdict::Keep { recheck_at: None }
        );
        assert_eq!(since, None);
        assert!(l.may_read(16 * MIB - 1));
        assert!(!l.may_read(16 * MIB));
    }

    #[test]
    fn window_shrinks_with_reply_size() {
        assert_eq!(pipelining_window(16 * MIB, 0, 1024), 1024);
        assert_eq!(pipelining_window(16 * MIB, 100, 1024), 1024);
        assert_eq!(pipelining_window(16 * MIB, 512 * 1024, 1024), 32);
        assert_eq!(pipelining_window(MIB, 64 * MIB, 1024), 1);
        let mut largest = decayed_largest(0, 512 * 1024);
        assert_eq!(largest, 512 * 1024);
        for _ in 0..400 {
            largest = decayed_largest(largest, 10);
        }
        assert!(largest < 16 * 1024, "decays: {largest}");
        // Slow start: 16 at first, the whole window after a few hundred
        // small replies.
        let mut largest = initial_largest(16 * MIB);
        assert_eq!(pipelining_window(16 * MIB, largest, 1024), INITIAL_WINDOW);
        for _ in 0..300 {
            largest = decayed_largest(largest, 10);
        }
        assert_eq!(pipelining_window(16 * MIB, largest, 1024), 1024);
    }

    #[test]
    fn shedding_takes_the_largest_until_under_the_limit() {
        let mut clients = vec![(10, 1), (500, 2), (5, 3), (300, 4), (0, 5)];
        assert_eq!(
            shed_victims(&mut clients.clone(), 815, 900),
            Vec::<u64>::new()
        );
        assert_eq!(shed_victims(&mut clients, 815, 400), vec![2]);
        let mut clients = vec![(10, 1), (500, 2), (5, 3), (300, 4), (0, 5)];
        assert_eq!(shed_victims(&mut clients, 815, 10), vec![2, 4, 1]);
        // Nothing left to shed: connections with no bytes are never chosen.
        let mut clients = vec![(0, 1)];
        assert_eq!(shed_victims(&mut clients, 100, 10), Vec::<u64>::new());
    }

    #[test]
    fn trims_after_a_large_drop_only() {
        let mut p = TrimPolicy::default();
        assert!(!p.sample(10 * MIB));
        assert!(!p.sample(300 * MIB));
        assert!(!p.sample(200 * MIB), "fell by a third only");
        assert!(p.sample(100 * MIB));
        // The high water was reset to 100 MiB: 60 is not half of it yet, 40 is.
        assert!(!p.sample(60 * MIB));
        assert!(p.sample(40 * MIB));
        // Small heaps are never trimmed, however much they fell.
        let mut p = TrimPolicy::default();
        assert!(!p.sample(10 * MIB));
        assert!(!p.sample(0));
    }
}
