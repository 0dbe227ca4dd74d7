//! The bounded submit queue: many [`Producer`]s, one [`Consumer`].
//!
//! Producers push without locks ([`Producer::try_push`]); when the queue is
//! full they either get the value back or wait for room without spinning
//! ([`Producer::push`]). The single consumer drains values into batches bounded
//! by count and bytes ([`Consumer::drain_batch`]) and waits for values without
//! spinning ([`Consumer::ready`]).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use paxos_contracts::ensures;

use crate::atomic_waker::AtomicWaker;
use crate::ring::{HeadState, PushError, Ring, MAX_CAPACITY};
use crate::sync::{fence, Arc, AtomicBool, AtomicUsize, Backoff, Ordering};
use crate::wait_list::{WaitKey, WaitList};

/// A bad queue or window configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The capacity is zero or above the supported maximum.
    #[error("capacity {requested} is outside 1..={max}")]
    Capacity {
        /// What was asked for.
        requested: usize,
        /// The largest accepted.
        max: usize,
    },
}

pub(crate) fn check_capacity(requested: usize) -> Result<(), ConfigError> {
    if (1..=MAX_CAPACITY).contains(&requested) {
        Ok(())
    } else {
        Err(ConfigError::Capacity {
            requested,
            max: MAX_CAPACITY,
        })
    }
}

/// Why [`Producer::try_push`] failed. The value comes back.
#[derive(PartialEq, Eq, thiserror::Error)]
pub enum TryPushError<T> {
    /// The queue is at capacity; retry later or use [`Producer::push`].
    #[error("queue full")]
    Full(T),
    /// The queue was closed; no value will enter it again.
    #[error("queue closed")]
    Closed(T),
}

impl<T> TryPushError<T> {
    /// The value that was not pushed.
    pub fn into_inner(self) -> T {
        match self {
            TryPushError::Full(value) | TryPushError::Closed(value) => value,
        }
    }
}

impl<T> fmt::Debug for TryPushError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TryPushError::Full(_) => "Full(..)",
            TryPushError::Closed(_) => "Closed(..)",
        })
    }
}

/// The queue was closed; the value that was not pushed comes back.
#[derive(PartialEq, Eq, thiserror::Error)]
#[error("queue closed")]
pub struct Closed<T>(pub T);

impl<T> fmt::Debug for Closed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Closed(..)")
    }
}

/// The size a queued value adds to a batch, for [`Consumer::drain_batch`].
pub trait ByteLen {
    /// Payload bytes of this value.
    fn byte_len(&self) -> usize;
}

impl ByteLen for Bytes {
    fn byte_len(&self) -> usize {
        self.len()
    }
}

impl ByteLen for Vec<u8> {
    fn byte_len(&self) -> usize {
        self.len()
    }
}

impl ByteLen for &[u8] {
    fn byte_len(&self) -> usize {
        self.len()
    }
}

/// Limits on one drained batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainLimits {
    /// Most values in one batch. Zero drains nothing.
    pub max_count: usize,
    /// Most bytes in one batch, counting each value as
    /// `byte_len + per_item_overhead`. A single value larger than this is
    /// drained alone, so that no value can block the queue forever (callers
    /// bound value size when they accept it).
    pub max_bytes: usize,
    /// Framing bytes added per value (4 for `paxos_core::batch`'s length
    /// prefix).
    pub per_item_overhead: usize,
}

/// What one value weighs in [`Consumer::drain_weighed_by`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Weight {
    /// Items the value holds.
    pub count: usize,
    /// Their bytes (without the per-item overhead).
    pub bytes: usize,
}

/// What one drain took.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Drained {
    /// Items taken (values, or their weight's count for
    /// [`Consumer::drain_weighed_by`]).
    pub count: usize,
    /// Their cost in bytes, as [`DrainLimits`] counts it.
    pub bytes: usize,
}

/// What [`Consumer::ready`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// At least one value can be drained now.
    Items,
    /// The queue is closed and every value was drained: nothing will come.
    Closed,
}

struct Shared<T> {
    ring: Ring<T>,
    /// Producers waiting for room.
    producer_waiters: WaitList,
    /// The consumer, waiting for values.
    consumer_waker: AtomicWaker,
    /// Set by the consumer before it sleeps; producers wake it when set.
    consumer_parked: AtomicBool,
    /// Live `Producer` handles; the last one to go closes the queue.
    producers: AtomicUsize,
}

impl<T> Shared<T> {
    fn try_push(&self, value: T) -> Result<(), TryPushError<T>> {
        match self.ring.try_push(value) {
            Ok(()) => {
                self.wake_consumer_after_publish();
                Ok(())
            }
            Err(PushError::Full(value)) => Err(TryPushError::Full(value)),
            Err(PushError::Closed(value)) => Err(TryPushError::Closed(value)),
        }
    }

    /// After a publish: wakes the consumer if it parked. The fence pairs with
    /// the one in `Consumer::poll_ready`: either the consumer's re-check sees
    /// our published stamp, or we see its `consumer_parked`.
    #[inline]
    fn wake_consumer_after_publish(&self) {
        fence(Ordering::SeqCst);
        if self.consumer_parked.load(Ordering::Relaxed)
            && self.consumer_parked.swap(false, Ordering::AcqRel)
        {
            self.consumer_waker.wake();
        }
    }

    fn close(&self) -> bool {
        let closed_now = self.ring.close();
        // Unconditional wakes: close is rare, and the RMWs inside the wait list
        // lock and the atomic waker order them after any registration that
        // could have missed the mark bit.
        self.producer_waiters.notify_all();
        self.consumer_waker.wake();
        closed_now
    }
}

/// Creates a queue of `capacity` slots.
///
/// Fails (without panicking) if `capacity` is zero or above
/// [`MAX_CAPACITY`](crate::MAX_CAPACITY).
pub fn bounded<T>(capacity: usize) -> Result<(Producer<T>, Consumer<T>), ConfigError> {
    check_capacity(capacity)?;
    let shared = Arc::new(Shared {
        ring: Ring::new(capacity),
        producer_waiters: WaitList::new(),
        consumer_waker: AtomicWaker::new(),
        consumer_parked: AtomicBool::new(false),
        producers: AtomicUsize::new(1),
    });
    Ok((
        Producer {
            shared: shared.clone(),
        },
        Consumer { shared },
    ))
}

/// The submitting side. Clone it for more producers; when the last clone is
/// dropped the queue closes.
pub struct Producer<T> {
    shared: Arc<Shared<T>>,
}

impl<T> fmt::Debug for Producer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field("len", &self.len())
            .field("capacity", &self.capacity())
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl<T> Clone for Producer<T> {
    fn clone(&self) -> Self {
        self.shared.producers.fetch_add(1, Ordering::Relaxed);
        Producer {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for Producer<T> {
    fn drop(&mut self) {
        if self.shared.producers.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.close();
        }
    }
}

impl<T> Producer<T> {
    /// Pushes `value` if there is room. Lock-free; never waits.
    pub fn try_push(&self, value: T) -> Result<(), TryPushError<T>> {
        let result = self.shared.try_push(value);
        ensures!(
            !matches!(result, Err(TryPushError::Closed(_))) || self.is_closed(),
            "Closed reported for an open queue"
        );
        result
    }

    /// Pushes `value`, waiting (without spinning) for room. Fails only if the
    /// queue is closed, before or while waiting.
    pub fn push(&self, value: T) -> Push<'_, T> {
        Push {
            shared: &self.shared,
            value: Some(value),
            key: WaitKey::default(),
        }
    }

    /// [`push`](Self::push), blocking the thread while it waits.
    #[cfg(not(paxos_loom))]
    pub fn push_blocking(&self, value: T) -> Result<(), Closed<T>> {
        crate::block_on::block_on(self.push(value))
    }

    /// Closes the queue: later pushes fail, waiting producers are woken with
    /// [`Closed`], and the consumer drains what is left, then sees
    /// [`Readiness::Closed`]. Returns whether this call closed it.
    pub fn close(&self) -> bool {
        let closed_now = self.shared.close();
        ensures!(self.is_closed());
        closed_now
    }

    /// Whether the queue is closed.
    pub fn is_closed(&self) -> bool {
        self.shared.ring.is_closed()
    }

    /// Values in the queue now (a snapshot under concurrency).
    pub fn len(&self) -> usize {
        self.shared.ring.len()
    }

    /// Whether the queue is empty now (a snapshot).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Slots in the queue.
    pub fn capacity(&self) -> usize {
        self.shared.ring.capacity()
    }
}

/// The future of [`Producer::push`].
#[must_use = "futures do nothing unless polled"]
pub struct Push<'a, T> {
    shared: &'a Shared<T>,
    /// `Some` until the future resolves.
    value: Option<T>,
    key: WaitKey,
}

// The value is never pinned in place: it is moved into the ring or back out.
impl<T> Unpin for Push<'_, T> {}

impl<T> fmt::Debug for Push<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Push")
            .field("pending", &self.value.is_some())
            .finish()
    }
}

impl<T> Future for Push<'_, T> {
    type Output = Result<(), Closed<T>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let value = this.value.take().expect("Push polled after it resolved");
        let value = match this.shared.try_push(value) {
            Ok(()) => return this.finish(Ok(())),
            Err(TryPushError::Closed(value)) => return this.finish(Err(Closed(value))),
            Err(TryPushError::Full(value)) => value,
        };
        // Register, then re-check: see `wait_list` for why no wake-up is lost.
        this.shared
            .producer_waiters
            .register(&mut this.key, cx.waker());
        match this.shared.try_push(value) {
            Ok(()) => this.finish(Ok(())),
            Err(TryPushError::Closed(value)) => this.finish(Err(Closed(value))),
            Err(TryPushError::Full(value)) => {
                this.value = Some(value);
                Poll::Pending
            }
        }
    }
}

impl<T> Push<'_, T> {
    fn finish(&mut self, result: Result<(), Closed<T>>) -> Poll<Result<(), Closed<T>>> {
        self.shared.producer_waiters.deregister(&mut self.key);
        Poll::Ready(result)
    }
}

impl<T> Drop for Push<'_, T> {
    fn drop(&mut self) {
        self.shared.producer_waiters.deregister(&mut self.key);
    }
}

/// The single draining side. Not `Clone`; every method takes `&mut self`, so
/// there is exactly one consumer by construction. Dropping it closes the
/// queue and drops the values still in it.
pub struct Consumer<T> {
    shared: Arc<Shared<T>>,
}

impl<T> fmt::Debug for Consumer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("len", &self.len())
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl<T> Consumer<T> {
    /// Takes the oldest value, if one is published.
    pub fn try_pop(&mut self) -> Option<T> {
        // SAFETY: `&mut self` on the unique consumer.
        let value = unsafe { self.shared.ring.try_pop() };
        if value.is_some() {
            self.shared.producer_waiters.notify_after_release();
        }
        value
    }

    /// Drains values in FIFO order into `sink` until the queue is empty or the
    /// next value would pass `limits` (as measured by `cost`, plus
    /// `limits.per_item_overhead`). Never blocks, never allocates.
    ///
    /// This is the form that feeds `paxos_core::batch::BatchBuilder` directly.
    pub fn drain_batch_by(
        &mut self,
        limits: DrainLimits,
        mut cost: impl FnMut(&T) -> usize,
        sink: impl FnMut(T),
    ) -> Drained {
        self.drain_weighed_by(
            limits,
            |value| Weight {
                count: 1,
                bytes: cost(value),
            },
            sink,
        )
    }

    /// [`drain_batch_by`](Self::drain_batch_by) for values that each stand
    /// for several items (a unit of requests submitted together): `weigh`
    /// says how many items a value holds and their bytes, and `limits`
    /// bounds the items (`max_count`, with `per_item_overhead` per item), not
    /// the values. A value is never split: the first value of a drain is
    /// taken whatever it weighs, so that none can block the queue forever
    /// (producers bound their values' weight).
    pub fn drain_weighed_by(
        &mut self,
        limits: DrainLimits,
        mut weigh: impl FnMut(&T) -> Weight,
        mut sink: impl FnMut(T),
    ) -> Drained {
        let mut drained = Drained::default();
        let mut values = 0usize;
        while drained.count < limits.max_count {
            // SAFETY: `&mut self` on the unique consumer.
            let Some(weight) = (unsafe { self.shared.ring.peek_with(&mut weigh) }) else {
                break;
            };
            let count = drained.count.saturating_add(weight.count);
            let total = drained.bytes.saturating_add(
                weight
                    .bytes
                    .saturating_add(limits.per_item_overhead.saturating_mul(weight.count)),
            );
            if values > 0 && (count > limits.max_count || total > limits.max_bytes) {
                break;
            }
            // SAFETY: `&mut self` on the unique consumer; the peek just saw a
            // published value, which only we can take.
            let Some(value) = (unsafe { self.shared.ring.try_pop() }) else {
                break;
            };
            values += 1;
            drained.count = count;
            drained.bytes = total;
            sink(value);
        }
        if values > 0 {
            self.shared.producer_waiters.notify_after_release();
        }
        ensures!(
            values <= 1 || drained.count <= limits.max_count,
            "a multi-value batch of {} items passed the {}-item limit",
            drained.count,
            limits.max_count
        );
        ensures!(
            values <= 1 || drained.bytes <= limits.max_bytes,
            "a multi-value batch of {} bytes passed the {}-byte limit",
            drained.bytes,
            limits.max_bytes
        );
        drained
    }

    /// [`drain_batch_by`](Self::drain_batch_by) measuring values with
    /// [`ByteLen`].
    pub fn drain_batch(&mut self, limits: DrainLimits, sink: impl FnMut(T)) -> Drained
    where
        T: ByteLen,
    {
        self.drain_batch_by(limits, |value| value.byte_len(), sink)
    }

    /// [`drain_batch`](Self::drain_batch) appending to `out` (reuse the vector
    /// to avoid allocation).
    pub fn drain_into(&mut self, limits: DrainLimits, out: &mut Vec<T>) -> Drained
    where
        T: ByteLen,
    {
        let old_len = out.len();
        let drained = self.drain_batch(limits, |value| out.push(value));
        ensures!(out.len() == old_len + drained.count);
        drained
    }

    /// Polls for readiness: `Ready(Items)` if a value is published,
    /// `Ready(Closed)` if the queue is closed and empty, else `Pending` with
    /// the waker registered (woken by the next publish or by close).
    pub fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Readiness> {
        if let Some(readiness) = self.readiness() {
            return Poll::Ready(readiness);
        }
        self.shared.consumer_waker.register(cx.waker());
        self.shared.consumer_parked.store(true, Ordering::Relaxed);
        // Pairs with the fence in `wake_consumer_after_publish`.
        fence(Ordering::SeqCst);
        match self.readiness() {
            Some(readiness) => {
                self.shared.consumer_parked.store(false, Ordering::Relaxed);
                Poll::Ready(readiness)
            }
            None => Poll::Pending,
        }
    }

    /// Waits until a value can be drained or the queue is closed and empty.
    pub fn ready(&mut self) -> ReadyFuture<'_, T> {
        ReadyFuture { consumer: self }
    }

    /// [`ready`](Self::ready), blocking the thread.
    #[cfg(not(paxos_loom))]
    pub fn ready_blocking(&mut self) -> Readiness {
        crate::block_on::block_on(self.ready())
    }

    fn readiness(&self) -> Option<Readiness> {
        // SAFETY: called only through `&self` of the unique consumer, and
        // `head_state` only reads.
        match unsafe { self.shared.ring.head_state() } {
            HeadState::Ready => Some(Readiness::Items),
            HeadState::ClosedAndEmpty => Some(Readiness::Closed),
            HeadState::Empty => None,
        }
    }

    /// Closes the queue (see [`Producer::close`]); values already in it can
    /// still be drained.
    pub fn close(&mut self) -> bool {
        let closed_now = self.shared.close();
        ensures!(self.is_closed());
        closed_now
    }

    /// Closes the queue and hands every value still in it to `sink`, waiting
    /// for producers that claimed a slot before the close to finish writing
    /// it. Afterwards the queue is closed and empty for good.
    pub fn close_and_drain(&mut self, mut sink: impl FnMut(T)) -> usize {
        self.shared.close();
        let backoff = Backoff::new();
        let mut count = 0;
        loop {
            // SAFETY: `&mut self` on the unique consumer.
            if let Some(value) = unsafe { self.shared.ring.try_pop() } {
                sink(value);
                count += 1;
                continue;
            }
            // SAFETY: as above.
            match unsafe { self.shared.ring.head_state() } {
                HeadState::ClosedAndEmpty => break,
                // A producer claimed the slot before the close and is still
                // writing it: a few instructions away, so wait briefly.
                HeadState::Empty | HeadState::Ready => backoff.snooze(),
            }
        }
        ensures!(self.readiness() == Some(Readiness::Closed));
        ensures!(self.is_empty());
        count
    }

    /// Whether the queue is closed (values may remain to drain).
    pub fn is_closed(&self) -> bool {
        self.shared.ring.is_closed()
    }

    /// Values in the queue now (a snapshot).
    pub fn len(&self) -> usize {
        self.shared.ring.len()
    }

    /// Whether the queue is empty now (a snapshot).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Slots in the queue.
    pub fn capacity(&self) -> usize {
        self.shared.ring.capacity()
    }
}

impl<T> Drop for Consumer<T> {
    fn drop(&mut self) {
        self.close_and_drain(drop);
    }
}

/// The future of [`Consumer::ready`].
#[must_use = "futures do nothing unless polled"]
pub struct ReadyFuture<'a, T> {
    consumer: &'a mut Consumer<T>,
}

impl<T> fmt::Debug for ReadyFuture<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReadyFuture")
    }
}

impl<T> Future for ReadyFuture<'_, T> {
    type Output = Readiness;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Readiness> {
        self.consumer.poll_ready(cx)
    }
}

#[cfg(all(test, not(paxos_loom)))]
mod tests {
    use super::*;
    use crate::test_util::CountingWaker;

    const NO_BYTE_LIMIT: DrainLimits = DrainLimits {
        max_count: usize::MAX,
        max_bytes: usize::MAX,
        per_item_overhead: 0,
    };

    #[test]
    fn bad_capacity_is_a_config_error() {
        assert_eq!(
            bounded::<u8>(0).unwrap_err(),
            ConfigError::Capacity {
                requested: 0,
                max: MAX_CAPACITY
            }
        );
        assert!(bounded::<u8>(MAX_CAPACITY + 1).is_err());
        assert!(bounded::<u8>(1).is_ok());
    }

    #[test]
    fn drain_respects_count_and_byte_limits() {
        let (producer, mut consumer) = bounded::<Vec<u8>>(16).unwrap();
        for len in [3, 3, 3, 10, 1] {
            producer.try_push(vec![0; len]).unwrap();
        }
        let mut out = Vec::new();
        let limits = DrainLimits {
            max_count: 2,
            max_bytes: 100,
            per_item_overhead: 4,
        };
        assert_eq!(
            consumer.drain_into(limits, &mut out),
            Drained {
                count: 2,
                bytes: 14
            }
        );
        // 3 + 4 fits in 12, 10 + 4 would not.
        let limits = DrainLimits {
            max_count: 10,
            max_bytes: 12,
            per_item_overhead: 4,
        };
        assert_eq!(
            consumer.drain_into(limits, &mut out),
            Drained { count: 1, bytes: 7 }
        );
        // An oversized value goes alone.
        assert_eq!(
            consumer.drain_into(limits, &mut out),
            Drained {
                count: 1,
                bytes: 14
            }
        );
        assert_eq!(
            consumer.drain_into(limits, &mut out),
            Drained { count: 1, bytes: 5 }
        );
        assert_eq!(consumer.drain_into(limits, &mut out), Drained::default());
        assert_eq!(
            out.iter().map(Vec::len).collect::<Vec<_>>(),
            [3, 3, 3, 10, 1]
        );
        let zero = DrainLimits {
            max_count: 0,
            ..limits
        };
        producer.try_push(vec![1]).unwrap();
        assert_eq!(consumer.drain_into(zero, &mut out), Drained::default());
    }

    /// Values standing for several items each (units of requests): the
    /// count limit is on items, a value is never split, and a unit heavier
    /// than the limits still leaves, alone.
    #[test]
    fn weighed_drain_bounds_items_and_bytes_and_never_splits_a_value() {
        let (producer, mut consumer) = bounded::<Vec<u8>>(16).unwrap();
        // Each value is a unit of `len` one-byte items.
        for len in [2, 3, 2, 9, 1] {
            producer.try_push(vec![0; len]).unwrap();
        }
        let weigh = |v: &Vec<u8>| Weight {
            count: v.len(),
            bytes: v.len(),
        };
        let mut out = Vec::new();
        let limits = DrainLimits {
            max_count: 6,
            max_bytes: 1000,
            per_item_overhead: 4,
        };
        // 2 + 3 items fit in 6; the next 2 would not.
        assert_eq!(
            consumer.drain_weighed_by(limits, weigh, |v| out.push(v)),
            Drained {
                count: 5,
                bytes: 25
            }
        );
        // 2 fits; 9 would pass the item limit: the drain stops before it.
        assert_eq!(
            consumer.drain_weighed_by(limits, weigh, |v| out.push(v)),
            Drained {
                count: 2,
                bytes: 10
            }
        );
        // Heavier than the limit, but first: it leaves alone.
        assert_eq!(
            consumer.drain_weighed_by(limits, weigh, |v| out.push(v)),
            Drained {
                count: 9,
                bytes: 45
            }
        );
        // Bytes bound units too: 1 item of 1 + 4 bytes does not fit in 4,
        // but goes alone as the first.
        let tight = DrainLimits {
            max_bytes: 4,
            ..limits
        };
        producer.try_push(vec![0; 1]).unwrap();
        assert_eq!(
            consumer.drain_weighed_by(tight, weigh, |v| out.push(v)),
            Drained { count: 1, bytes: 5 }
        );
        assert_eq!(
            consumer.drain_weighed_by(tight, weigh, |v| out.push(v)),
            Drained { count: 1, bytes: 5 }
        );
        assert_eq!(
            out.iter().map(Vec::len).collect::<Vec<_>>(),
            [2, 3, 2, 9, 1, 1]
        );
        assert_eq!(
            consumer.drain_weighed_by(limits, weigh, |v| out.push(v)),
            Drained::default()
        );
    }

    #[test]
    fn drain_wakes_a_producer_waiting_for_room() {
        let (producer, mut consumer) = bounded::<u32>(1).unwrap();
        producer.try_push(1).unwrap();
        let (counter, waker) = CountingWaker::new();
        let mut cx = Context::from_waker(&waker);
        let mut push = producer.push(2);
        assert!(Pin::new(&mut push).poll(&mut cx).is_pending());
        assert_eq!(consumer.try_pop(), Some(1));
        assert_eq!(counter.count(), 1);
        assert_eq!(Pin::new(&mut push).poll(&mut cx), Poll::Ready(Ok(())));
        assert_eq!(consumer.try_pop(), Some(2));
    }

    #[test]
    fn close_wakes_waiting_producers_and_returns_their_values() {
        let (producer, mut consumer) = bounded::<u32>(1).unwrap();
        producer.try_push(1).unwrap();
        let (counter, waker) = CountingWaker::new();
        let mut cx = Context::from_waker(&waker);
        let mut push = producer.push(2);
        assert!(Pin::new(&mut push).poll(&mut cx).is_pending());
        assert!(consumer.close());
        assert_eq!(counter.count(), 1);
        assert_eq!(
            Pin::new(&mut push).poll(&mut cx),
            Poll::Ready(Err(Closed(2)))
        );
        assert_eq!(producer.try_push(3), Err(TryPushError::Closed(3)));
        // What was queued before the close still drains, then Closed.
        assert_eq!(consumer.ready_blocking(), Readiness::Items);
        assert_eq!(consumer.try_pop(), Some(1));
        assert_eq!(consumer.ready_blocking(), Readiness::Closed);
    }

    #[test]
    fn consumer_is_woken_by_a_push_and_by_the_last_producer_leaving() {
        let (producer, mut consumer) = bounded::<u32>(4).unwrap();
        let (counter, waker) = CountingWaker::new();
        let mut cx = Context::from_waker(&waker);
        assert!(consumer.poll_ready(&mut cx).is_pending());
        producer.try_push(5).unwrap();
        assert_eq!(counter.count(), 1);
        assert_eq!(consumer.poll_ready(&mut cx), Poll::Ready(Readiness::Items));
        assert_eq!(consumer.try_pop(), Some(5));
        assert!(consumer.poll_ready(&mut cx).is_pending());
        let second = producer.clone();
        drop(producer);
        assert!(!consumer.is_closed(), "one producer is still alive");
        drop(second);
        assert!(counter.count() >= 2);
        assert_eq!(consumer.poll_ready(&mut cx), Poll::Ready(Readiness::Closed));
    }

    #[test]
    fn dropping_the_consumer_closes_the_queue() {
        let (producer, consumer) = bounded::<String>(2).unwrap();
        producer.try_push("queued".into()).unwrap();
        drop(consumer);
        assert!(producer.is_closed());
        assert!(producer.is_empty());
        assert_eq!(
            producer.push_blocking("late".into()),
            Err(Closed("late".into()))
        );
    }

    #[test]
    fn blocking_producers_and_consumer_move_every_value_in_order() {
        const PRODUCERS: u64 = 3;
        const PER_PRODUCER: u64 = 3000;
        let (producer, mut consumer) = bounded::<u64>(8).unwrap();
        let threads: Vec<_> = (0..PRODUCERS)
            .map(|p| {
                let producer = producer.clone();
                std::thread::spawn(move || {
                    for i in 0..PER_PRODUCER {
                        producer.push_blocking((p << 32) | i).unwrap();
                    }
                })
            })
            .collect();
        drop(producer);
        let mut next = [0u64; PRODUCERS as usize];
        let mut batch = Vec::new();
        let limits = DrainLimits {
            max_count: 5,
            ..NO_BYTE_LIMIT
        };
        let mut total = 0;
        while consumer.ready_blocking() == Readiness::Items {
            batch.clear();
            let drained = consumer.drain_batch_by(limits, |_| 8, |v| batch.push(v));
            assert!(drained.count <= 5);
            for v in &batch {
                let (p, i) = ((v >> 32) as usize, v & 0xffff_ffff);
                assert_eq!(i, next[p], "producer {p} reordered");
                next[p] += 1;
            }
            total += drained.count;
        }
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(total as u64, PRODUCERS * PER_PRODUCER);
        assert_eq!(next, [PER_PRODUCER; PRODUCERS as usize]);
    }

    #[test]
    fn byte_len_impls() {
        assert_eq!(Bytes::from_static(b"abc").byte_len(), 3);
        assert_eq!(vec![1u8; 4].byte_len(), 4);
        assert_eq!((&b"xy"[..]).byte_len(), 2);
        assert_eq!(TryPushError::Full(7).into_inner(), 7);
        assert_eq!(format!("{:?}", TryPushError::Closed(1)), "Closed(..)");
    }
}
