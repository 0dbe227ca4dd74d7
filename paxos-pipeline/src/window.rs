//! The in-flight window: at most `capacity` decrees proposed and not yet
//! chosen (or abandoned).
//!
//! The proposer acquires a [`WindowPermit`] before proposing a decree and
//! drops it when the decree commits or is abandoned. [`InFlightWindow::acquire`]
//! waits (without spinning) for a permit; closing the window wakes every
//! waiter with [`WindowClosed`].
//!
//! `state` packs `in_flight << 1 | CLOSED` into one word, so "count below
//! capacity and not closed" is decided and claimed by one CAS.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use paxos_contracts::{ensures, invariant};

use crate::queue::{check_capacity, ConfigError};
use crate::sync::{Arc, AtomicUsize, Ordering};
use crate::wait_list::{WaitKey, WaitList};

const CLOSED: usize = 1;
const ONE: usize = 2;

/// The window was closed (shutdown or loss of leadership).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("in-flight window closed")]
pub struct WindowClosed;

/// Why [`InFlightWindow::try_acquire`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TryAcquireError {
    /// Every permit is taken.
    #[error("in-flight window full")]
    Full,
    /// The window was closed.
    #[error("in-flight window closed")]
    Closed,
}

struct WindowInner {
    state: AtomicUsize,
    capacity: usize,
    waiters: WaitList,
}

/// A bounded count of decrees in flight. Cloning shares the window.
#[derive(Clone)]
pub struct InFlightWindow {
    inner: Arc<WindowInner>,
}

impl fmt::Debug for InFlightWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InFlightWindow")
            .field("in_flight", &self.in_flight())
            .field("capacity", &self.inner.capacity)
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl InFlightWindow {
    /// A window of `capacity` permits; fails if `capacity` is zero or too big.
    pub fn new(capacity: usize) -> Result<Self, ConfigError> {
        check_capacity(capacity)?;
        Ok(InFlightWindow {
            inner: Arc::new(WindowInner {
                state: AtomicUsize::new(0),
                capacity,
                waiters: WaitList::new(),
            }),
        })
    }

    /// Takes a permit if one is free.
    pub fn try_acquire(&self) -> Result<WindowPermit, TryAcquireError> {
        let result = self.inner.try_acquire();
        if result.is_ok() {
            invariant!(self.in_flight() <= self.inner.capacity);
        }
        result.map(|()| WindowPermit {
            inner: self.inner.clone(),
        })
    }

    /// Waits (without spinning) for a permit. Fails if the window is closed
    /// before or while waiting.
    pub fn acquire(&self) -> Acquire<'_> {
        Acquire {
            window: self,
            key: WaitKey::default(),
            done: false,
        }
    }

    /// [`acquire`](Self::acquire), blocking the thread.
    #[cfg(not(paxos_loom))]
    pub fn acquire_blocking(&self) -> Result<WindowPermit, WindowClosed> {
        crate::block_on::block_on(self.acquire())
    }

    /// Closes the window: later acquires fail and every waiter wakes with
    /// [`WindowClosed`]. Permits already held stay valid until dropped.
    pub fn close(&self) {
        self.inner.state.fetch_or(CLOSED, Ordering::AcqRel);
        self.inner.waiters.notify_all();
        ensures!(self.is_closed());
    }

    /// Whether the window is closed.
    pub fn is_closed(&self) -> bool {
        self.inner.state.load(Ordering::Acquire) & CLOSED != 0
    }

    /// Permits held now (a snapshot).
    pub fn in_flight(&self) -> usize {
        self.inner.state.load(Ordering::Acquire) >> 1
    }

    /// The most permits that can be held at once.
    pub fn capacity(&self) -> usize {
        self.inner.capacity
    }
}

impl WindowInner {
    fn try_acquire(&self) -> Result<(), TryAcquireError> {
        let mut state = self.state.load(Ordering::Relaxed);
        loop {
            if state & CLOSED != 0 {
                return Err(TryAcquireError::Closed);
            }
            if state >> 1 >= self.capacity {
                return Err(TryAcquireError::Full);
            }
            match self.state.compare_exchange_weak(
                state,
                state + ONE,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(()),
                Err(current) => state = current,
            }
        }
    }

    fn release(&self) {
        let previous = self.state.fetch_sub(ONE, Ordering::Release);
        assert!(
            previous >> 1 > 0,
            "window permit released with none in flight"
        );
        self.waiters.notify_after_release();
    }
}

/// One decree's place in the window; dropping it frees the place.
pub struct WindowPermit {
    inner: Arc<WindowInner>,
}

impl fmt::Debug for WindowPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WindowPermit")
    }
}

impl Drop for WindowPermit {
    fn drop(&mut self) {
        self.inner.release();
    }
}

/// The future of [`InFlightWindow::acquire`].
#[must_use = "futures do nothing unless polled"]
pub struct Acquire<'a> {
    window: &'a InFlightWindow,
    key: WaitKey,
    done: bool,
}

impl fmt::Debug for Acquire<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acquire").field("done", &self.done).finish()
    }
}

impl Future for Acquire<'_> {
    type Output = Result<WindowPermit, WindowClosed>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        assert!(!this.done, "Acquire polled after it resolved");
        let inner = &this.window.inner;
        match inner.try_acquire() {
            Ok(()) => return this.finish(Ok(())),
            Err(TryAcquireError::Closed) => return this.finish(Err(WindowClosed)),
            Err(TryAcquireError::Full) => {}
        }
        // Register, then re-check: see `wait_list` for why no wake-up is lost.
        inner.waiters.register(&mut this.key, cx.waker());
        match inner.try_acquire() {
            Ok(()) => this.finish(Ok(())),
            Err(TryAcquireError::Closed) => this.finish(Err(WindowClosed)),
            Err(TryAcquireError::Full) => Poll::Pending,
        }
    }
}

impl Acquire<'_> {
    fn finish(
        &mut self,
        acquired: Result<(), WindowClosed>,
    ) -> Poll<Result<WindowPermit, WindowClosed>> {
        self.done = true;
        self.window.inner.waiters.deregister(&mut self.key);
        Poll::Ready(acquired.map(|()| WindowPermit {
            inner: self.window.inner.clone(),
        }))
    }
}

impl Drop for Acquire<'_> {
    fn drop(&mut self) {
        self.window.inner.waiters.deregister(&mut self.key);
    }
}

#[cfg(all(test, not(paxos_loom)))]
mod tests {
    use super::*;
    use crate::test_util::CountingWaker;

    #[test]
    fn permits_are_bounded_and_released_on_drop() {
        let window = InFlightWindow::new(2).unwrap();
        let a = window.try_acquire().unwrap();
        let b = window.try_acquire().unwrap();
        assert_eq!(window.try_acquire().unwrap_err(), TryAcquireError::Full);
        assert_eq!(window.in_flight(), 2);
        drop(a);
        assert_eq!(window.in_flight(), 1);
        let _c = window.try_acquire().unwrap();
        drop(b);
        assert_eq!(window.in_flight(), 1);
    }

    #[test]
    fn zero_or_huge_capacity_is_an_error_not_a_panic() {
        assert!(matches!(
            InFlightWindow::new(0),
            Err(ConfigError::Capacity { requested: 0, .. })
        ));
        assert!(InFlightWindow::new(usize::MAX).is_err());
    }

    #[test]
    fn waiting_acquire_is_woken_by_a_release() {
        let window = InFlightWindow::new(1).unwrap();
        let held = window.try_acquire().unwrap();
        let (counter, waker) = CountingWaker::new();
        let mut acquire = window.acquire();
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut acquire).poll(&mut cx).is_pending());
        drop(held);
        assert_eq!(counter.count(), 1, "release must wake the waiter");
        let permit = match Pin::new(&mut acquire).poll(&mut cx) {
            Poll::Ready(Ok(permit)) => permit,
            other => panic!("expected a permit, got {other:?}"),
        };
        assert_eq!(window.in_flight(), 1);
        drop(permit);
    }

    #[test]
    fn close_wakes_waiters_with_closed_and_blocks_new_permits() {
        let window = InFlightWindow::new(1).unwrap();
        let held = window.try_acquire().unwrap();
        let waiter = {
            let window = window.clone();
            std::thread::spawn(move || window.acquire_blocking().map(drop))
        };
        // Let the waiter park (not required for correctness: close wakes a
        // waiter whichever side runs first).
        std::thread::sleep(std::time::Duration::from_millis(10));
        window.close();
        assert_eq!(waiter.join().unwrap(), Err(WindowClosed));
        assert_eq!(window.try_acquire().unwrap_err(), TryAcquireError::Closed);
        drop(held);
        assert_eq!(window.in_flight(), 0);
    }

    #[test]
    fn dropped_acquire_leaves_no_waiter_behind() {
        let window = InFlightWindow::new(1).unwrap();
        let held = window.try_acquire().unwrap();
        let (_, waker) = CountingWaker::new();
        {
            let mut acquire = window.acquire();
            assert!(Pin::new(&mut acquire)
                .poll(&mut Context::from_waker(&waker))
                .is_pending());
            assert_eq!(window.inner.waiters.len(), 1);
        }
        assert_eq!(window.inner.waiters.len(), 0);
        drop(held);
    }
}
