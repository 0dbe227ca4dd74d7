//! A slot for one task's [`Waker`], registered by one task and woken by any
//! thread: the consumer's wake-up when producers publish.
//!
//! The protocol is the well-known three-state one (`WAITING`, `REGISTERING`,
//! `WAKING`): a wake that races with a registration is never lost, because
//! whichever side finishes second sees the other's bit and wakes the newest
//! waker itself.

use std::task::Waker;

use crate::sync::{spin_loop_hint, AtomicUsize, Ordering, UnsafeCell};

/// Nobody touches the waker cell.
const WAITING: usize = 0;
/// The registrant owns the waker cell.
const REGISTERING: usize = 0b01;
/// A waker owns the waker cell (or wants to, while a registration runs).
const WAKING: usize = 0b10;

/// One task's waker, woken from any thread.
pub(crate) struct AtomicWaker {
    state: AtomicUsize,
    waker: UnsafeCell<Option<Waker>>,
}

// SAFETY: the waker cell is accessed only by the holder of the REGISTERING or
// WAKING bit, which the state machine hands to one thread at a time; `Waker`
// itself is Send + Sync.
unsafe impl Send for AtomicWaker {}
// SAFETY: as above.
unsafe impl Sync for AtomicWaker {}

impl AtomicWaker {
    pub(crate) fn new() -> Self {
        AtomicWaker {
            state: AtomicUsize::new(WAITING),
            waker: UnsafeCell::new(None),
        }
    }

    /// Stores `waker` to be woken by the next [`wake`](Self::wake).
    ///
    /// Called by one task at a time (the queue's single consumer). A `wake`
    /// that runs concurrently is not lost: `waker` is woken at once instead.
    pub(crate) fn register(&self, waker: &Waker) {
        match self
            .state
            .compare_exchange(WAITING, REGISTERING, Ordering::Acquire, Ordering::Acquire)
            .unwrap_or_else(|actual| actual)
        {
            WAITING => {
                // SAFETY: the REGISTERING bit gives this thread the cell.
                self.waker.with_mut(|cell| unsafe {
                    match &mut *cell {
                        Some(old) if old.will_wake(waker) => {}
                        slot => *slot = Some(waker.clone()),
                    }
                });
                // Release the cell; AcqRel so a waker that set WAKING meanwhile
                // is ordered before our take below.
                if let Err(actual) = self.state.compare_exchange(
                    REGISTERING,
                    WAITING,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    // A wake arrived while we held the cell: it left the waker
                    // to us. Take it, reset, and wake.
                    debug_assert_eq!(actual, REGISTERING | WAKING);
                    // SAFETY: the waking side saw REGISTERING and did not touch
                    // the cell; we still own it until the swap below.
                    let woken = self.waker.with_mut(|cell| unsafe { (*cell).take() });
                    self.state.swap(WAITING, Ordering::AcqRel);
                    if let Some(woken) = woken {
                        woken.wake();
                    }
                }
            }
            WAKING => {
                // A wake is in progress and will take the *old* waker; make sure
                // the new one runs too. The task will be polled again at once,
                // so give the waking thread its two instructions to finish.
                waker.wake_by_ref();
                spin_loop_hint();
            }
            other => {
                // Two concurrent registrations: the single consumer is `&mut`,
                // so this cannot happen; waking is the safe answer anyway.
                debug_assert!(false, "concurrent AtomicWaker::register (state {other})");
                waker.wake_by_ref();
            }
        }
    }

    /// Wakes the registered waker, if any, and clears it.
    pub(crate) fn wake(&self) {
        if let Some(waker) = self.take() {
            waker.wake();
        }
    }

    fn take(&self) -> Option<Waker> {
        match self.state.fetch_or(WAKING, Ordering::AcqRel) {
            WAITING => {
                // SAFETY: the WAKING bit on a WAITING state gives this thread
                // the cell.
                let waker = self.waker.with_mut(|cell| unsafe { (*cell).take() });
                self.state.fetch_and(!WAKING, Ordering::Release);
                waker
            }
            // REGISTERING: the registrant sees WAKING and wakes itself.
            // WAKING: another thread is already waking.
            _ => None,
        }
    }
}

#[cfg(all(test, not(paxos_loom)))]
mod tests {
    use super::*;
    use crate::test_util::CountingWaker;

    #[test]
    fn wake_without_registration_does_nothing() {
        let w = AtomicWaker::new();
        w.wake();
    }

    #[test]
    fn registered_waker_is_woken_once() {
        let (counter, waker) = CountingWaker::new();
        let w = AtomicWaker::new();
        w.register(&waker);
        w.wake();
        w.wake();
        assert_eq!(counter.count(), 1);
    }

    #[test]
    fn reregistering_replaces_the_waker() {
        let (first, first_waker) = CountingWaker::new();
        let (second, second_waker) = CountingWaker::new();
        let w = AtomicWaker::new();
        w.register(&first_waker);
        w.register(&second_waker);
        w.wake();
        assert_eq!((first.count(), second.count()), (0, 1));
    }
}
