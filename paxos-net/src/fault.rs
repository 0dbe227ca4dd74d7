//! Fault injection: a [`Transport`] wrapper that drops, delays and
//! partitions messages, switchable at run time through a [`FaultHandle`].
//!
//! - **Drop** (outbound): each message is lost with probability `p`
//!   (a seeded generator, so a seed reproduces the pattern of one sender).
//! - **Delay** (outbound): messages wait in a bounded FIFO delay line for the
//!   configured time before reaching the inner transport. Changing the delay
//!   while messages wait does not reorder them (the line is FIFO).
//! - **Partition** (both directions): messages to and from the listed peers
//!   are lost. Set the same partition on both sides for a clean cut, or on
//!   one side only for an asymmetric one.
//!
//! Injected losses return `Ok` from `send`, as real network loss would;
//! they are counted in [`FaultStats`] and in the wrapper's
//! [`PeerStats::dropped`](crate::PeerStats::dropped).
//!
//! For multi-process tests, [`FaultCommand::parse`] reads a one-line text
//! command (`drop 0.1`, `delay 20ms`, `partition 2 3`, `heal`) that a test
//! harness can send to a node's admin interface.

use crate::transport::{Inbound, SendError, Transport, TransportStats};
use bytes::Bytes;
use paxos_contracts::requires;
use paxos_core::ReplicaId;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Capacity of the delay line; when full, further delayed messages are dropped.
pub const DELAY_LINE_CAPACITY: usize = 4096;

/// Counters of injected faults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// Outbound messages dropped by the drop rate.
    pub dropped_random: u64,
    /// Messages (either direction) dropped by the partition.
    pub dropped_partition: u64,
    /// Outbound messages dropped because the delay line was full.
    pub dropped_delay_full: u64,
    /// Outbound messages that went through the delay line.
    pub delayed: u64,
}

#[derive(Debug)]
struct FaultState {
    /// Drop probability as parts per 2^32 (so the check is one compare).
    drop_threshold: AtomicU64,
    delay_micros: AtomicU64,
    partitioned: RwLock<BTreeSet<ReplicaId>>,
    rng: AtomicU64,
    dropped_random: AtomicU64,
    dropped_partition: AtomicU64,
    dropped_delay_full: AtomicU64,
    delayed: AtomicU64,
}

impl FaultState {
    fn is_partitioned(&self, peer: ReplicaId) -> bool {
        self.partitioned
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&peer)
    }

    /// A uniform u32 from a lock-free splitmix64 sequence.
    fn next_random(&self) -> u64 {
        let mut z = self
            .rng
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) >> 32
    }
}

/// Switches faults of one [`FaultyTransport`] at run time. Cheap to clone.
#[derive(Debug, Clone)]
pub struct FaultHandle {
    state: Arc<FaultState>,
}

impl FaultHandle {
    /// Sets the outbound drop probability, in `[0, 1]`.
    pub fn set_drop_rate(&self, probability: f64) {
        requires!(
            (0.0..=1.0).contains(&probability),
            "drop rate {probability} outside [0, 1]"
        );
        let threshold = (probability.clamp(0.0, 1.0) * (1u64 << 32) as f64) as u64;
        self.state
            .drop_threshold
            .store(threshold, Ordering::Relaxed);
    }

    /// Sets the outbound delay (zero sends directly).
    pub fn set_delay(&self, delay: Duration) {
        let micros = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        self.state.delay_micros.store(micros, Ordering::Relaxed);
    }

    /// Cuts this endpoint off from `peers`, replacing any earlier partition.
    pub fn set_partition(&self, peers: impl IntoIterator<Item = ReplicaId>) {
        let peers: BTreeSet<ReplicaId> = peers.into_iter().collect();
        *self
            .state
            .partitioned
            .write()
            .unwrap_or_else(PoisonError::into_inner) = peers;
    }

    /// Removes every fault: no drops, no delay, no partition.
    pub fn heal(&self) {
        self.set_drop_rate(0.0);
        self.set_delay(Duration::ZERO);
        self.set_partition([]);
    }

    /// Applies a parsed command.
    pub fn apply(&self, command: &FaultCommand) {
        match command {
            FaultCommand::DropRate(p) => self.set_drop_rate(*p),
            FaultCommand::Delay(d) => self.set_delay(*d),
            FaultCommand::Partition(peers) => self.set_partition(peers.iter().copied()),
            FaultCommand::Heal => self.heal(),
        }
    }

    /// Counters of injected faults so far.
    pub fn stats(&self) -> FaultStats {
        let s = &self.state;
        FaultStats {
            dropped_random: s.dropped_random.load(Ordering::Relaxed),
            dropped_partition: s.dropped_partition.load(Ordering::Relaxed),
            dropped_delay_full: s.dropped_delay_full.load(Ordering::Relaxed),
            delayed: s.delayed.load(Ordering::Relaxed),
        }
    }
}

/// A fault-switching command, as text for multi-process test harnesses.
#[derive(Debug, Clone, PartialEq)]
pub enum FaultCommand {
    /// `drop <p>`: outbound drop probability.
    DropRate(f64),
    /// `delay <n>ms` / `delay <n>us` / `delay <n>s`: outbound delay.
    Delay(Duration),
    /// `partition <id> <id> ...`: cut off these peers (none: heal the partition).
    Partition(Vec<ReplicaId>),
    /// `heal`: remove every fault.
    Heal,
}

/// A fault command that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad fault command {input:?}: {reason}")]
pub struct FaultCommandError {
    /// The input line.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl FaultCommand {
    /// Parses one command line.
    pub fn parse(line: &str) -> Result<FaultCommand, FaultCommandError> {
        let err = |reason| FaultCommandError {
            input: line.to_owned(),
            reason,
        };
        let mut words = line.split_whitespace();
        let command = match words.next() {
            Some("drop") => {
                let p: f64 = words
                    .next()
                    .ok_or(err("drop needs a probability"))?
                    .parse()
                    .map_err(|_| err("not a number"))?;
                if !(0.0..=1.0).contains(&p) {
                    return Err(err("probability must be in [0, 1]"));
                }
                FaultCommand::DropRate(p)
            }
            Some("delay") => {
                let word = words.next().ok_or(err("delay needs a duration"))?;
                let (digits, unit) = word.split_at(
                    word.find(|c: char| !c.is_ascii_digit())
                        .unwrap_or(word.len()),
                );
                let n: u64 = digits
                    .parse()
                    .map_err(|_| err("duration must start with digits"))?;
                FaultCommand::Delay(match unit {
                    "us" => Duration::from_micros(n),
                    "ms" => Duration::from_millis(n),
                    "s" => Duration::from_secs(n),
                    _ => return Err(err("duration unit must be us, ms or s")),
                })
            }
            Some("partition") => {
                let peers = words
                    .by_ref()
                    .map(|w| {
                        w.parse()
                            .map(ReplicaId)
                            .map_err(|_| err("peer ids must be integers"))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                FaultCommand::Partition(peers)
            }
            Some("heal") => FaultCommand::Heal,
            Some(_) => return Err(err("unknown command")),
            None => return Err(err("empty command")),
        };
        if words.next().is_some() {
            return Err(err("trailing words"));
        }
        Ok(command)
    }
}

/// A [`Transport`] that injects faults before handing messages to `inner`.
#[derive(Debug)]
pub struct FaultyTransport<T> {
    inner: Arc<T>,
    state: Arc<FaultState>,
    delay_line: mpsc::Sender<(Instant, ReplicaId, Bytes)>,
}

impl<T: Transport> FaultyTransport<T> {
    /// Wraps `inner` and its inbound receiver. Returns the wrapper, the
    /// filtered inbound receiver (same capacity) and the control handle.
    ///
    /// Spawns two tokio tasks (inbound filter, delay line) that end when the
    /// wrapper and the inner inbound channel are gone: call from a runtime.
    pub fn wrap(inner: T, mut inbound: Inbound, seed: u64) -> (Self, Inbound, FaultHandle) {
        let state = Arc::new(FaultState {
            drop_threshold: AtomicU64::new(0),
            delay_micros: AtomicU64::new(0),
            partitioned: RwLock::new(BTreeSet::new()),
            rng: AtomicU64::new(seed),
            dropped_random: AtomicU64::new(0),
            dropped_partition: AtomicU64::new(0),
            dropped_delay_full: AtomicU64::new(0),
            delayed: AtomicU64::new(0),
        });
        let inner = Arc::new(inner);

        let (filtered_tx, filtered_rx) = mpsc::channel(inbound.max_capacity());
        let filter_state = state.clone();
        tokio::spawn(async move {
            while let Some((from, message)) = inbound.recv().await {
                if filter_state.is_partitioned(from) {
                    filter_state
                        .dropped_partition
                        .fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                if filtered_tx.send((from, message)).await.is_err() {
                    return;
                }
            }
        });

        let (delay_tx, mut delay_rx) =
            mpsc::channel::<(Instant, ReplicaId, Bytes)>(DELAY_LINE_CAPACITY);
        let delay_inner = inner.clone();
        tokio::spawn(async move {
            while let Some((due, to, message)) = delay_rx.recv().await {
                tokio::time::sleep_until(due).await;
                // Loss here is the inner transport's own, counted there.
                let _ = delay_inner.send(to, message);
            }
        });

        let handle = FaultHandle {
            state: state.clone(),
        };
        (
            FaultyTransport {
                inner,
                state,
                delay_line: delay_tx,
            },
            filtered_rx,
            handle,
        )
    }

    /// The wrapped transport.
    pub fn inner(&self) -> &T {
        &self.inner
    }
}

impl<T: Transport> Transport for FaultyTransport<T> {
    fn local_id(&self) -> ReplicaId {
        self.inner.local_id()
    }

    fn peers(&self) -> Vec<ReplicaId> {
        self.inner.peers()
    }

    fn max_message_size(&self) -> usize {
        self.inner.max_message_size()
    }

    fn send(&self, to: ReplicaId, message: Bytes) -> Result<(), SendError> {
        // Caller errors are reported whatever the faults.
        let max = self.inner.max_message_size();
        if message.len() > max {
            return Err(SendError::TooLarge {
                len: message.len(),
                max,
            });
        }
        if !self.inner.peers().contains(&to) {
            return Err(SendError::UnknownPeer(to));
        }
        let state = &self.state;
        if state.is_partitioned(to) {
            state.dropped_partition.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let threshold = state.drop_threshold.load(Ordering::Relaxed);
        if threshold > 0 && state.next_random() < threshold {
            state.dropped_random.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let delay = state.delay_micros.load(Ordering::Relaxed);
        if delay == 0 {
            return self.inner.send(to, message);
        }
        let due = Instant::now() + Duration::from_micros(delay);
        match self.delay_line.try_send((due, to, message)) {
            Ok(()) => {
                state.delayed.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                state.dropped_delay_full.fetch_add(1, Ordering::Relaxed);
                Err(SendError::QueueFull { peer: to })
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(SendError::Closed),
        }
    }

    fn stats(&self) -> TransportStats {
        self.inner.stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryNetwork;

    fn pair() -> (
        FaultyTransport<crate::MemoryTransport>,
        Inbound,
        FaultHandle,
        crate::MemoryTransport,
        Inbound,
    ) {
        let net = MemoryNetwork::new(10_000, 1024);
        let (a, a_in) = net.join(ReplicaId(1));
        let (b, b_in) = net.join(ReplicaId(2));
        let (fa, fa_in, handle) = FaultyTransport::wrap(a, a_in, 42);
        (fa, fa_in, handle, b, b_in)
    }

    #[tokio::test]
    async fn drop_rate_loses_about_that_fraction() {
        let (a, _a_in, handle, _b, mut b_in) = pair();
        handle.set_drop_rate(0.3);
        for _ in 0..2000 {
            a.send(ReplicaId(2), Bytes::from_static(b"m")).unwrap();
        }
        let mut received = 0;
        while b_in.try_recv().is_ok() {
            received += 1;
        }
        let dropped = handle.stats().dropped_random as usize;
        assert_eq!(received + dropped, 2000);
        assert!(
            (450..750).contains(&dropped),
            "dropped {dropped} of 2000 at p = 0.3"
        );
        handle.set_drop_rate(1.0);
        a.send(ReplicaId(2), Bytes::from_static(b"m")).unwrap();
        assert!(b_in.try_recv().is_err(), "p = 1 drops everything");
    }

    #[tokio::test]
    async fn partition_cuts_both_directions_and_heals() {
        let (a, mut a_in, handle, b, mut b_in) = pair();
        handle.set_partition([ReplicaId(2)]);
        a.send(ReplicaId(2), Bytes::from_static(b"out")).unwrap();
        b.send(ReplicaId(1), Bytes::from_static(b"in")).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(b_in.try_recv().is_err());
        assert!(a_in.try_recv().is_err());
        assert_eq!(handle.stats().dropped_partition, 2);

        handle.heal();
        a.send(ReplicaId(2), Bytes::from_static(b"out")).unwrap();
        b.send(ReplicaId(1), Bytes::from_static(b"in")).unwrap();
        assert_eq!(b_in.recv().await.unwrap().1.as_ref(), b"out");
        assert_eq!(
            a_in.recv().await.unwrap(),
            (ReplicaId(2), Bytes::from_static(b"in"))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn delay_holds_messages_in_order() {
        let (a, _a_in, handle, _b, mut b_in) = pair();
        handle.set_delay(Duration::from_millis(50));
        for i in 0..5u8 {
            a.send(ReplicaId(2), Bytes::from(vec![i])).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert!(b_in.try_recv().is_err(), "nothing before the delay");
        tokio::time::sleep(Duration::from_millis(20)).await;
        for i in 0..5u8 {
            assert_eq!(b_in.recv().await.unwrap().1.as_ref(), &[i]);
        }
        assert_eq!(handle.stats().delayed, 5);
    }

    #[tokio::test]
    async fn caller_errors_pass_through_faults() {
        let (a, _a_in, handle, _b, _b_in) = pair();
        handle.set_drop_rate(1.0);
        assert_eq!(
            a.send(ReplicaId(9), Bytes::new()),
            Err(SendError::UnknownPeer(ReplicaId(9)))
        );
        assert!(matches!(
            a.send(ReplicaId(2), Bytes::from(vec![0; 2000])),
            Err(SendError::TooLarge { .. })
        ));
    }

    #[test]
    fn commands_parse_and_reject_garbage() {
        assert_eq!(
            FaultCommand::parse("drop 0.25"),
            Ok(FaultCommand::DropRate(0.25))
        );
        assert_eq!(
            FaultCommand::parse("delay 20ms"),
            Ok(FaultCommand::Delay(Duration::from_millis(20)))
        );
        assert_eq!(
            FaultCommand::parse("delay 7us"),
            Ok(FaultCommand::Delay(Duration::from_micros(7)))
        );
        assert_eq!(
            FaultCommand::parse(" partition 2 3 "),
            Ok(FaultCommand::Partition(vec![ReplicaId(2), ReplicaId(3)]))
        );
        assert_eq!(
            FaultCommand::parse("partition"),
            Ok(FaultCommand::Partition(vec![]))
        );
        assert_eq!(FaultCommand::parse("heal"), Ok(FaultCommand::Heal));
        for bad in [
            "",
            "drop",
            "drop 1.5",
            "drop x",
            "delay",
            "delay 5",
            "delay ms",
            "partition a",
            "heal now",
            "boom",
        ] {
            assert!(
                FaultCommand::parse(bad).is_err(),
                "{bad:?} should not parse"
            );
        }
    }
}
