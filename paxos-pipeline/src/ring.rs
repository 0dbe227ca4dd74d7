//! The bounded array ring under the submit queue: many producers, one
//! consumer.
//!
//! The design is Dmitry Vyukov's bounded queue with a sequence number
//! ("stamp") per slot, with the index encoding of crossbeam's array channel:
//! `head` and `tail` hold `lap | index`, where a *lap* counts trips around the
//! buffer, and the tail's `mark_bit` means *closed*.
//!
//! - A slot whose stamp equals `tail` is free for that tail: a producer claims
//!   it by CAS on `tail`, writes the value, then publishes it by storing
//!   `stamp = tail + 1` (Release).
//! - A slot whose stamp equals `head + 1` holds a published value: the consumer
//!   reads it (after an Acquire load of the stamp), then frees the slot for the
//!   next lap by storing `stamp = head + one_lap` (Release), then advances
//!   `head`.
//! - Closing sets the mark bit on `tail` with an RMW, so every later claim CAS
//!   fails: after `close` returns no value can enter, and the consumer can
//!   drain the ring to a definite end.
//!
//! Producers never take a lock and never wait for one another except to retry
//! a lost CAS. As with every Vyukov queue, a producer that is descheduled
//! between its claim and its publish holds up the consumer at that slot (not
//! other producers); the consumer then parks and that producer's publish
//! wakes it.

use std::mem::MaybeUninit;

use crate::sync::{AtomicUsize, Backoff, CachePadded, Ordering, UnsafeCell};

/// The largest capacity a ring accepts; keeps lap arithmetic far from overflow
/// and the allocation sane.
pub const MAX_CAPACITY: usize = 1 << 24;

struct Slot<T> {
    /// `lap | index` of the operation this slot waits for (see module docs).
    stamp: AtomicUsize,
    value: UnsafeCell<MaybeUninit<T>>,
}

/// Why a push failed; the value comes back.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PushError<T> {
    Full(T),
    Closed(T),
}

/// What the consumer finds at the head.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HeadState {
    /// A published value is ready.
    Ready,
    /// Nothing published yet; producers may still push (or one is mid-write).
    Empty,
    /// Closed, and every value that entered was taken.
    ClosedAndEmpty,
}

pub(crate) struct Ring<T> {
    /// Next slot the consumer reads. Written only by the consumer; read by
    /// producers to tell "full" from "consumer mid-pop".
    head: CachePadded<AtomicUsize>,
    /// Next slot a producer claims, plus `mark_bit` once closed.
    tail: CachePadded<AtomicUsize>,
    buffer: Box<[Slot<T>]>,
    cap: usize,
    /// `(cap + 1).next_power_of_two()`: the closed flag in `tail`, and one more
    /// than the largest index.
    mark_bit: usize,
    /// `2 * mark_bit`: the amount `lap` grows by per trip.
    one_lap: usize,
}

// SAFETY: values move between threads through the ring (so T: Send); slot
// access is arbitrated by the stamps as described in the module docs.
unsafe impl<T: Send> Send for Ring<T> {}
// SAFETY: as above; no `&T` is ever shared between threads.
unsafe impl<T: Send> Sync for Ring<T> {}

impl<T> Ring<T> {
    /// A ring of `cap` slots. `cap` must be in `1..=MAX_CAPACITY` (checked by
    /// the public constructors, which return an error instead).
    pub(crate) fn new(cap: usize) -> Self {
        assert!(
            (1..=MAX_CAPACITY).contains(&cap),
            "ring capacity {cap} out of range"
        );
        let mark_bit = (cap + 1).next_power_of_two();
        let one_lap = mark_bit * 2;
        let buffer = (0..cap)
            .map(|i| Slot {
                stamp: AtomicUsize::new(i),
                value: UnsafeCell::new(MaybeUninit::uninit()),
            })
            .collect();
        Ring {
            head: CachePadded::new(AtomicUsize::new(0)),
            tail: CachePadded::new(AtomicUsize::new(0)),
            buffer,
            cap,
            mark_bit,
            one_lap,
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.cap
    }

    /// The position after `pos` (wrapping to the next lap past the last slot).
    #[inline]
    fn next(&self, pos: usize) -> usize {
        let index = pos & (self.mark_bit - 1);
        if index + 1 < self.cap {
            pos + 1
        } else {
            (pos & !(self.one_lap - 1)).wrapping_add(self.one_lap)
        }
    }

    /// Pushes `value` unless the ring is full or closed. Lock-free.
    pub(crate) fn try_push(&self, value: T) -> Result<(), PushError<T>> {
        let backoff = Backoff::new();
        let mut tail = self.tail.load(Ordering::Relaxed);
        loop {
            if tail & self.mark_bit != 0 {
                return Err(PushError::Closed(value));
            }
            let slot = &self.buffer[tail & (self.mark_bit - 1)];
            // Acquire: pairs with the consumer's Release that freed the slot,
            // so our write below cannot race its read of the previous value.
            let stamp = slot.stamp.load(Ordering::Acquire);
            if stamp == tail {
                match self.tail.compare_exchange_weak(
                    tail,
                    self.next(tail),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        // SAFETY: the CAS made this thread the only owner of
                        // the slot for lap `tail`; the consumer reads it only
                        // after the Release store of `tail + 1` below.
                        slot.value
                            .with_mut(|cell| unsafe { cell.write(MaybeUninit::new(value)) });
                        slot.stamp.store(tail + 1, Ordering::Release);
                        return Ok(());
                    }
                    Err(current) => {
                        tail = current;
                        backoff.spin();
                    }
                }
            } else if stamp.wrapping_add(self.one_lap) == tail + 1 {
                // The slot still holds the value from the previous lap. Full,
                // unless the consumer has already moved past it.
                let head = self.head.load(Ordering::Acquire);
                if head.wrapping_add(self.one_lap) == tail {
                    return Err(PushError::Full(value));
                }
                backoff.spin();
                tail = self.tail.load(Ordering::Relaxed);
            } else {
                // Our view of `tail` is stale: another producer claimed it.
                backoff.snooze();
                tail = self.tail.load(Ordering::Relaxed);
            }
        }
    }

    /// Closes the ring: every later push fails. Returns whether this call
    /// closed it (false if it was closed already).
    pub(crate) fn close(&self) -> bool {
        self.tail.fetch_or(self.mark_bit, Ordering::AcqRel) & self.mark_bit == 0
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.tail.load(Ordering::Acquire) & self.mark_bit != 0
    }

    /// Number of claimed slots (published or being written); a snapshot.
    pub(crate) fn len(&self) -> usize {
        let mut tail = self.tail.load(Ordering::Acquire) & !self.mark_bit;
        // A consistent pair is one where tail did not move while we read head.
        // Under a storm of pushes that may take a while: after a few tries,
        // settle for an approximate pair (this is a statistic, not a guard).
        for _ in 0..8 {
            let head = self.head.load(Ordering::Acquire);
            let again = self.tail.load(Ordering::Acquire) & !self.mark_bit;
            if again == tail {
                return self.distance(head, tail);
            }
            tail = again;
        }
        self.distance(self.head.load(Ordering::Acquire), tail)
            .min(self.cap)
    }

    /// Slots from `head` to `tail` (both without the mark bit).
    fn distance(&self, head: usize, tail: usize) -> usize {
        let hix = head & (self.mark_bit - 1);
        let tix = tail & (self.mark_bit - 1);
        if hix < tix {
            tix - hix
        } else if hix > tix {
            self.cap - hix + tix
        } else if tail == head {
            0
        } else {
            self.cap
        }
    }

    /// What is at the head. Consumer side.
    ///
    /// # Safety
    /// Only the ring's single consumer may call this (it reads `head` as its
    /// own).
    pub(crate) unsafe fn head_state(&self) -> HeadState {
        let head = self.head.load(Ordering::Relaxed);
        let slot = &self.buffer[head & (self.mark_bit - 1)];
        if slot.stamp.load(Ordering::Acquire) == head + 1 {
            return HeadState::Ready;
        }
        let tail = self.tail.load(Ordering::Acquire);
        if tail & self.mark_bit != 0 && tail & !self.mark_bit == head {
            HeadState::ClosedAndEmpty
        } else {
            HeadState::Empty
        }
    }

    /// Runs `f` on the published value at the head without taking it.
    ///
    /// # Safety
    /// Only the ring's single consumer may call this.
    pub(crate) unsafe fn peek_with<R>(&self, f: impl FnOnce(&T) -> R) -> Option<R> {
        let head = self.head.load(Ordering::Relaxed);
        let slot = &self.buffer[head & (self.mark_bit - 1)];
        if slot.stamp.load(Ordering::Acquire) != head + 1 {
            return None;
        }
        // SAFETY: stamp == head + 1 (Acquire) means the value is published and
        // no producer touches the slot until we free it; we are the only
        // consumer, so nobody else reads or takes it.
        Some(
            slot.value
                .with(|cell| f(unsafe { (*cell).assume_init_ref() })),
        )
    }

    /// Takes the published value at the head, if there is one.
    ///
    /// # Safety
    /// Only the ring's single consumer may call this.
    pub(crate) unsafe fn try_pop(&self) -> Option<T> {
        let head = self.head.load(Ordering::Relaxed);
        let slot = &self.buffer[head & (self.mark_bit - 1)];
        if slot.stamp.load(Ordering::Acquire) != head + 1 {
            return None;
        }
        // SAFETY: as in `peek_with`; after this read the slot is logically
        // empty and we free it below without reading it again.
        let value = slot
            .value
            .with_mut(|cell| unsafe { (*cell).assume_init_read() });
        // Release: our read of the value happens-before the next producer's
        // write, which Acquire-loads this stamp.
        slot.stamp
            .store(head.wrapping_add(self.one_lap), Ordering::Release);
        self.head.store(self.next(head), Ordering::Release);
        Some(value)
    }
}

impl<T> Drop for Ring<T> {
    fn drop(&mut self) {
        // `&mut self`: no producer or consumer is left, so every claimed slot
        // was published. Drop the values from head to tail.
        let mut head = self.head.load(Ordering::Relaxed);
        let tail = self.tail.load(Ordering::Relaxed) & !self.mark_bit;
        while head != tail {
            let slot = &self.buffer[head & (self.mark_bit - 1)];
            // SAFETY: exclusive access; slots in [head, tail) hold published
            // values that were never taken.
            slot.value
                .with_mut(|cell| unsafe { (*cell).assume_init_drop() });
            head = self.next(head);
        }
    }
}

#[cfg(all(test, not(paxos_loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize as StdAtomicUsize;
    use std::sync::Arc as StdArc;

    #[test]
    fn fifo_wraps_many_laps() {
        let ring = Ring::new(3);
        let mut next_in = 0u32;
        let mut next_out = 0u32;
        for round in 0..50 {
            let n = 1 + round % 3;
            for _ in 0..n {
                ring.try_push(next_in).unwrap();
                next_in += 1;
            }
            assert_eq!(ring.len(), n as usize);
            for _ in 0..n {
                // SAFETY: this test is the only consumer.
                assert_eq!(unsafe { ring.try_pop() }, Some(next_out));
                next_out += 1;
            }
            // SAFETY: single consumer.
            assert_eq!(unsafe { ring.head_state() }, HeadState::Empty);
        }
    }

    #[test]
    fn full_and_closed_return_the_value() {
        let ring = Ring::new(2);
        ring.try_push(1).unwrap();
        ring.try_push(2).unwrap();
        assert_eq!(ring.try_push(3), Err(PushError::Full(3)));
        assert_eq!(ring.len(), 2);
        assert!(ring.close());
        assert!(!ring.close(), "second close reports it was closed already");
        assert_eq!(ring.try_push(4), Err(PushError::Closed(4)));
        // SAFETY: single consumer.
        unsafe {
            assert_eq!(ring.head_state(), HeadState::Ready);
            assert_eq!(ring.peek_with(|v| *v * 10), Some(10));
            assert_eq!(ring.try_pop(), Some(1));
            assert_eq!(ring.try_pop(), Some(2));
            assert_eq!(ring.try_pop(), None);
            assert_eq!(ring.head_state(), HeadState::ClosedAndEmpty);
        }
    }

    #[test]
    fn capacity_one_alternates() {
        let ring = Ring::new(1);
        for i in 0..10 {
            ring.try_push(i).unwrap();
            assert!(matches!(ring.try_push(99), Err(PushError::Full(99))));
            // SAFETY: single consumer.
            assert_eq!(unsafe { ring.try_pop() }, Some(i));
        }
    }

    #[test]
    fn drop_releases_unconsumed_values_exactly_once() {
        struct Counted(StdArc<StdAtomicUsize>);
        impl Drop for Counted {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        let drops = StdArc::new(StdAtomicUsize::new(0));
        {
            let ring = Ring::new(4);
            for _ in 0..6 {
                let _ = ring.try_push(Counted(drops.clone()));
            }
            // Two were rejected as Full and dropped by the caller.
            assert_eq!(drops.load(Ordering::Relaxed), 2);
            // SAFETY: single consumer.
            drop(unsafe { ring.try_pop() });
            assert_eq!(drops.load(Ordering::Relaxed), 3);
        }
        assert_eq!(drops.load(Ordering::Relaxed), 6);
    }

    #[test]
    fn threads_deliver_every_value_in_per_producer_order() {
        let ring = StdArc::new(Ring::new(8));
        let producers: Vec<_> = (0..3u64)
            .map(|p| {
                let ring = ring.clone();
                std::thread::spawn(move || {
                    for i in 0..2000u64 {
                        let mut v = (p << 32) | i;
                        loop {
                            match ring.try_push(v) {
                                Ok(()) => break,
                                Err(PushError::Full(back)) => {
                                    v = back;
                                    std::thread::yield_now();
                                }
                                Err(PushError::Closed(_)) => unreachable!("never closed"),
                            }
                        }
                    }
                })
            })
            .collect();
        let mut next = [0u64; 3];
        let mut received = 0;
        while received < 6000 {
            // SAFETY: this thread is the only consumer.
            match unsafe { ring.try_pop() } {
                Some(v) => {
                    let (p, i) = ((v >> 32) as usize, v & 0xffff_ffff);
                    assert_eq!(i, next[p], "producer {p} out of order");
                    next[p] += 1;
                    received += 1;
                }
                None => std::thread::yield_now(),
            }
        }
        for p in producers {
            p.join().unwrap();
        }
        assert_eq!(next, [2000; 3]);
    }
}
