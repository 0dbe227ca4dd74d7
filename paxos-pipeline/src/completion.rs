//! The completion path: one [`Completer`] and one [`CompletionHandle`] per
//! request, sharing one cell.
//!
//! # Exactly once, by construction
//!
//! - [`Completer::complete`] and [`Completer::abort`] take the completer by
//!   value, so a request cannot be resolved twice: the second call does not
//!   compile.
//! - Dropping a completer that was never used resolves the handle as
//!   [`Outcome::Aborted`]`(`[`AbortReason::Dropped`]`)`, so a lost completer
//!   can never leave a caller hanging.
//! - The handle yields the outcome once: it is a future that resolves once,
//!   and [`CompletionHandle::wait`] consumes it.
//!
//! # Memory ordering
//!
//! The cell's `state` word has four bits. The completer writes the outcome,
//! then sets `COMPLETE` with an AcqRel RMW; the handle reads the outcome only
//! after observing `COMPLETE` with Acquire. The waker cell belongs to the
//! handle while `WAKER_SET` is clear; once the handle sets `WAKER_SET`, only
//! shared reads of the waker happen (the completer's `wake_by_ref`, the
//! handle's `will_wake`) until the handle clears the bit again by an RMW that
//! did not see `COMPLETE`. Since all bits live in one word, their RMWs are
//! totally ordered, which is the whole argument.
//!
//! # Ownership and allocation
//!
//! The cell is one `Box` per request shared by exactly two owners, without a
//! reference count: each owner sets its own GONE bit (`COMPLETER_GONE`,
//! `HANDLE_GONE`) with a Release RMW after its last access, and the owner that
//! observes the other's GONE bit (with Acquire) frees the cell. In the common
//! case the completer completes and leaves in one CAS, and the handle, seeing
//! both `COMPLETE` and `COMPLETER_GONE` in one load, takes the outcome and
//! frees the cell with no RMW at all. The bench `roundtrip/*` measures the
//! path.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::ptr::NonNull;
use std::task::{Context, Poll, Waker};

use crate::sync::{AtomicUsize, Ordering, UnsafeCell};

/// How one request ended. Each request gets exactly one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<O> {
    /// The request was chosen and executed; this is its result.
    Completed(O),
    /// The request will never execute.
    Aborted(AbortReason),
}

impl<O> Outcome<O> {
    /// The output, or the abort reason as an error.
    pub fn into_result(self) -> Result<O, AbortReason> {
        match self {
            Outcome::Completed(output) => Ok(output),
            Outcome::Aborted(reason) => Err(reason),
        }
    }
}

/// Why a request was aborted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AbortReason {
    /// This replica is not the primary. `leader_hint` is the replica id
    /// (`paxos_core::ReplicaId`'s raw value) of the primary it believes in.
    #[error("not the primary; leader hint {leader_hint:?}")]
    NotPrimary {
        /// The believed primary, if known.
        leader_hint: Option<u32>,
    },
    /// The replica is shutting down; the request was not (or not known to be)
    /// chosen.
    #[error("shutting down")]
    ShuttingDown,
    /// The request's deadline passed before it was chosen.
    #[error("timed out")]
    Timeout,
    /// The completer was dropped without an outcome (a bug or a crash path in
    /// the consumer; the caller is still told, never left hanging).
    #[error("completer dropped without an outcome")]
    Dropped,
    /// The request was refused (for example: larger than the request limit).
    #[error("rejected: {0}")]
    Rejected(&'static str),
}

/// The completer stored the outcome.
const COMPLETE: usize = 0b0001;
/// The handle stored a waker in the cell.
const WAKER_SET: usize = 0b0010;
/// The handle is gone and will not touch the cell again.
const HANDLE_GONE: usize = 0b0100;
/// The completer is gone and will not touch the cell again.
const COMPLETER_GONE: usize = 0b1000;

struct Cell<O> {
    state: AtomicUsize,
    outcome: UnsafeCell<Option<Outcome<O>>>,
    waker: UnsafeCell<Option<Waker>>,
}

/// A pointer to a cell shared by exactly two owners, the completer and the
/// handle. Whichever leaves second frees it (see the module docs).
struct CellPtr<O> {
    ptr: NonNull<Cell<O>>,
    /// This pointer owns (half of) a `Cell<O>`, and may drop an `O`.
    _owns: PhantomData<Box<Cell<O>>>,
}

impl<O> CellPtr<O> {
    fn cell(&self) -> &Cell<O> {
        // SAFETY: the cell is freed only by the second owner to leave, and
        // this owner has not left while it holds `self`.
        unsafe { self.ptr.as_ref() }
    }

    /// Frees the cell. Called by the second owner to leave, after observing
    /// (with Acquire) the other owner's GONE bit.
    fn free(self) {
        // SAFETY: the cell came from `Box::into_raw` in `completion`; both
        // owners have left, the other one's accesses happen-before ours via
        // its Release RMW of its GONE bit, so nobody can touch it again.
        drop(unsafe { Box::from_raw(self.ptr.as_ptr()) });
    }
}

// SAFETY: the outcome moves from the completer's thread to the handle's
// (O: Send); the cell's fields are accessed only as the state protocol allows;
// wakers are Send + Sync.
unsafe impl<O: Send> Send for CellPtr<O> {}
// SAFETY: shared references to a completer or handle only read `state`.
unsafe impl<O: Send> Sync for CellPtr<O> {}

/// Creates a linked completer and handle for one request.
pub fn completion<O>() -> (Completer<O>, CompletionHandle<O>) {
    let cell = Box::new(Cell {
        state: AtomicUsize::new(0),
        outcome: UnsafeCell::new(None),
        waker: UnsafeCell::new(None),
    });
    let ptr = NonNull::from(Box::leak(cell));
    (
        Completer {
            cell: Some(CellPtr {
                ptr,
                _owns: PhantomData,
            }),
        },
        CompletionHandle {
            cell: Some(CellPtr {
                ptr,
                _owns: PhantomData,
            }),
        },
    )
}

/// Resolves one request. Consumed by resolving; dropping it unresolved
/// resolves the handle with [`AbortReason::Dropped`].
pub struct Completer<O> {
    /// `Some` until the completer resolves (only `Drop` sees `None`).
    cell: Option<CellPtr<O>>,
}

impl<O> fmt::Debug for Completer<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Completer")
            .field("handle_dropped", &self.is_abandoned())
            .finish()
    }
}

impl<O> Completer<O> {
    /// Resolves the request as executed with `output`.
    pub fn complete(self, output: O) {
        self.resolve(Outcome::Completed(output))
    }

    /// Resolves the request as aborted for `reason`.
    pub fn abort(self, reason: AbortReason) {
        self.resolve(Outcome::Aborted(reason))
    }

    /// Resolves the request with `outcome`.
    pub fn resolve(mut self, outcome: Outcome<O>) {
        if let Some(cell) = self.cell.take() {
            send(cell, outcome);
        }
    }

    /// Whether the handle was dropped, so nobody waits for the outcome. The
    /// request must still be resolved (or dropped); this only lets a consumer
    /// skip work such as building a reply.
    pub fn is_abandoned(&self) -> bool {
        self.cell
            .as_ref()
            .is_none_or(|cell| cell.cell().state.load(Ordering::Acquire) & HANDLE_GONE != 0)
    }
}

impl<O> Drop for Completer<O> {
    fn drop(&mut self) {
        if let Some(cell) = self.cell.take() {
            send(cell, Outcome::Aborted(AbortReason::Dropped));
        }
    }
}

/// Stores the outcome, wakes the handle if it waits, and leaves the cell.
fn send<O>(ptr: CellPtr<O>, outcome: Outcome<O>) {
    let cell = ptr.cell();
    // SAFETY: only the (single) completer writes the outcome, and only before
    // it sets COMPLETE; the handle reads it only after seeing COMPLETE.
    cell.outcome
        .with_mut(|slot| unsafe { *slot = Some(outcome) });
    let mut state = cell.state.load(Ordering::Acquire);
    loop {
        debug_assert_eq!(
            state & (COMPLETE | COMPLETER_GONE),
            0,
            "a cell completed twice"
        );
        if state & WAKER_SET != 0 && state & HANDLE_GONE == 0 {
            break;
        }
        // Fast path: no waker to wake, so complete and leave in one RMW.
        match cell.state.compare_exchange_weak(
            state,
            state | COMPLETE | COMPLETER_GONE,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => {
                if state & HANDLE_GONE != 0 {
                    ptr.free();
                }
                return;
            }
            Err(actual) => state = actual,
        }
    }
    // Slow path: a handle waits. Complete, wake it while we still own the
    // cell, then leave.
    let previous = cell.state.fetch_or(COMPLETE, Ordering::AcqRel);
    if previous & WAKER_SET != 0 && previous & HANDLE_GONE == 0 {
        // SAFETY: WAKER_SET was set when our RMW ran, so the handle stored a
        // waker and from now on only reads it (see module docs); the cell is
        // alive because we have not left.
        cell.waker.with(|waker| unsafe {
            if let Some(waker) = &*waker {
                waker.wake_by_ref();
            }
        });
    }
    let previous = cell.state.fetch_or(COMPLETER_GONE, Ordering::AcqRel);
    if previous & HANDLE_GONE != 0 {
        ptr.free();
    }
}

/// Waits for one request's [`Outcome`]. A future; or call
/// [`wait`](Self::wait) to block the thread.
#[must_use = "a handle is how the caller learns whether its request executed"]
pub struct CompletionHandle<O> {
    /// `None` once the outcome was taken.
    cell: Option<CellPtr<O>>,
}

impl<O> fmt::Debug for CompletionHandle<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompletionHandle")
            .field("resolved", &self.is_resolved())
            .finish()
    }
}

impl<O> CompletionHandle<O> {
    /// Whether the outcome is ready (or was taken already).
    pub fn is_resolved(&self) -> bool {
        self.cell
            .as_ref()
            .is_none_or(|cell| cell.cell().state.load(Ordering::Acquire) & COMPLETE != 0)
    }

    /// Takes the outcome if it is ready. Returns `None` if it is not, or if
    /// it was taken before.
    pub fn try_take(&mut self) -> Option<Outcome<O>> {
        let state = self.cell.as_ref()?.cell().state.load(Ordering::Acquire);
        if state & COMPLETE == 0 {
            return None;
        }
        Some(self.take_outcome(state))
    }

    /// Blocks the calling thread until the outcome arrives.
    #[cfg(not(paxos_loom))]
    pub fn wait(self) -> Outcome<O> {
        crate::block_on::block_on(self)
    }

    /// Takes the outcome and leaves the cell, after `state` (which has
    /// COMPLETE) was observed with Acquire.
    fn take_outcome(&mut self, state: usize) -> Outcome<O> {
        let ptr = self.cell.take().expect("take_outcome on a taken handle");
        let cell = ptr.cell();
        // SAFETY: COMPLETE was observed (Acquire), so the completer's write is
        // visible and it never touches the outcome again; we are the only
        // handle.
        let outcome = cell.outcome.with_mut(|slot| unsafe { (*slot).take() });
        let completer_gone = state & COMPLETER_GONE != 0
            || cell.state.fetch_or(HANDLE_GONE, Ordering::AcqRel) & COMPLETER_GONE != 0;
        if completer_gone {
            ptr.free();
        }
        outcome.expect("COMPLETE is set only after the outcome is written")
    }
}

impl<O> Future for CompletionHandle<O> {
    type Output = Outcome<O>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome<O>> {
        let this = &mut *self;
        let cell = this
            .cell
            .as_ref()
            .expect("CompletionHandle polled after it resolved")
            .cell();
        let state = cell.state.load(Ordering::Acquire);
        if state & COMPLETE != 0 {
            return Poll::Ready(this.take_outcome(state));
        }
        if state & WAKER_SET != 0 {
            // SAFETY: while WAKER_SET is set only shared reads of the waker
            // happen.
            let same = cell.waker.with(|waker| unsafe {
                (*waker).as_ref().is_some_and(|w| w.will_wake(cx.waker()))
            });
            if same {
                return Poll::Pending;
            }
            // Take the waker cell back before replacing the waker.
            let state = cell.state.fetch_and(!WAKER_SET, Ordering::AcqRel);
            if state & COMPLETE != 0 {
                return Poll::Ready(this.take_outcome(state));
            }
        }
        // WAKER_SET is clear and only this handle sets it, so a completer that
        // runs now will not read the waker: the cell is ours.
        // SAFETY: as just argued.
        cell.waker
            .with_mut(|waker| unsafe { *waker = Some(cx.waker().clone()) });
        let state = cell.state.fetch_or(WAKER_SET, Ordering::AcqRel);
        if state & COMPLETE != 0 {
            return Poll::Ready(this.take_outcome(state));
        }
        Poll::Pending
    }
}

impl<O> Drop for CompletionHandle<O> {
    fn drop(&mut self) {
        if let Some(ptr) = self.cell.take() {
            let previous = ptr.cell().state.fetch_or(HANDLE_GONE, Ordering::AcqRel);
            if previous & COMPLETER_GONE != 0 {
                ptr.free();
            }
        }
    }
}

#[cfg(all(test, not(paxos_loom)))]
mod tests {
    use super::*;
    use crate::test_util::CountingWaker;

    fn poll_once<O>(handle: &mut CompletionHandle<O>, waker: &Waker) -> Poll<Outcome<O>> {
        Pin::new(handle).poll(&mut Context::from_waker(waker))
    }

    #[test]
    fn complete_before_poll_is_ready_at_once() {
        let (completer, mut handle) = completion::<u32>();
        completer.complete(7);
        assert!(handle.is_resolved());
        let (_, waker) = CountingWaker::new();
        assert_eq!(
            poll_once(&mut handle, &waker),
            Poll::Ready(Outcome::Completed(7))
        );
    }

    #[test]
    fn complete_after_poll_wakes_the_latest_waker_once() {
        let (completer, mut handle) = completion::<u32>();
        let (first, first_waker) = CountingWaker::new();
        let (second, second_waker) = CountingWaker::new();
        assert_eq!(poll_once(&mut handle, &first_waker), Poll::Pending);
        assert_eq!(poll_once(&mut handle, &second_waker), Poll::Pending);
        completer.abort(AbortReason::NotPrimary {
            leader_hint: Some(3),
        });
        assert_eq!((first.count(), second.count()), (0, 1));
        assert_eq!(
            poll_once(&mut handle, &second_waker),
            Poll::Ready(Outcome::Aborted(AbortReason::NotPrimary {
                leader_hint: Some(3)
            }))
        );
    }

    #[test]
    fn dropped_completer_aborts_with_dropped() {
        let (completer, handle) = completion::<u32>();
        drop(completer);
        assert_eq!(handle.wait(), Outcome::Aborted(AbortReason::Dropped));
    }

    #[test]
    fn completer_sees_an_abandoned_handle() {
        let (completer, handle) = completion::<String>();
        assert!(!completer.is_abandoned());
        drop(handle);
        assert!(completer.is_abandoned());
        // Completing into the void is fine and frees the output.
        completer.complete("unread".to_owned());
    }

    #[test]
    fn try_take_yields_once() {
        let (completer, mut handle) = completion::<u32>();
        assert_eq!(handle.try_take(), None);
        completer.complete(1);
        assert_eq!(handle.try_take(), Some(Outcome::Completed(1)));
        assert_eq!(handle.try_take(), None);
        assert!(handle.is_resolved());
    }

    #[test]
    fn wait_blocks_until_another_thread_completes() {
        let (completer, handle) = completion::<u64>();
        let t = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            completer.complete(42);
        });
        assert_eq!(handle.wait(), Outcome::Completed(42));
        t.join().unwrap();
    }

    /// Counts drops, to show each outcome is dropped exactly once whichever
    /// owner leaves last (a double free or a leak would show here and under
    /// valgrind).
    #[derive(Debug)]
    struct DropCounted(std::sync::Arc<std::sync::atomic::AtomicUsize>);
    impl Drop for DropCounted {
        fn drop(&mut self) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn every_leave_order_drops_the_outcome_once() {
        use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
        let drops = std::sync::Arc::new(AtomicUsize::new(0));
        let make = || DropCounted(drops.clone());
        let (_, waker) = CountingWaker::new();
        // 1. complete, then take (fast path on both sides).
        let (c, mut h) = completion();
        c.complete(make());
        drop(h.try_take());
        drop(h);
        assert_eq!(drops.load(SeqCst), 1);
        // 2. handle dropped first, then complete: the completer frees.
        let (c, h) = completion();
        drop(h);
        c.complete(make());
        assert_eq!(drops.load(SeqCst), 2);
        // 3. complete, then drop the handle untaken: the handle frees.
        let (c, h) = completion();
        c.complete(make());
        drop(h);
        assert_eq!(drops.load(SeqCst), 3);
        // 4. poll (waker set), complete (slow path), take.
        let (c, mut h) = completion();
        assert!(poll_once(&mut h, &waker).is_pending());
        c.complete(make());
        assert!(matches!(
            poll_once(&mut h, &waker),
            Poll::Ready(Outcome::Completed(_))
        ));
        assert_eq!(drops.load(SeqCst), 4);
        // 5. poll, then drop the handle, then complete.
        let (c, mut h) = completion();
        assert!(poll_once(&mut h, &waker).is_pending());
        drop(h);
        c.complete(make());
        assert_eq!(drops.load(SeqCst), 5);
        // 6. poll, complete, drop the handle untaken.
        let (c, mut h) = completion();
        assert!(poll_once(&mut h, &waker).is_pending());
        c.complete(make());
        drop(h);
        assert_eq!(drops.load(SeqCst), 6);
        // 7. both dropped, never completed: no outcome to drop.
        let (c, h) = completion::<DropCounted>();
        drop(c);
        drop(h);
        assert_eq!(drops.load(SeqCst), 6);
    }

    #[test]
    fn completions_across_threads_drop_each_outcome_once() {
        use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
        let drops = std::sync::Arc::new(AtomicUsize::new(0));
        let pairs: Vec<_> = (0..500).map(|_| completion::<DropCounted>()).collect();
        let (completers, handles): (Vec<_>, Vec<_>) = pairs.into_iter().unzip();
        let counter = drops.clone();
        let t = std::thread::spawn(move || {
            for c in completers {
                c.complete(DropCounted(counter.clone()));
            }
        });
        for (i, h) in handles.into_iter().enumerate() {
            if i % 3 == 0 {
                drop(h);
            } else {
                assert!(matches!(h.wait(), Outcome::Completed(_)));
            }
        }
        t.join().unwrap();
        assert_eq!(drops.load(SeqCst), 500);
    }

    #[test]
    fn outcome_into_result() {
        assert_eq!(Outcome::Completed(3).into_result(), Ok(3));
        assert_eq!(
            Outcome::<u8>::Aborted(AbortReason::Timeout).into_result(),
            Err(AbortReason::Timeout)
        );
        assert_eq!(AbortReason::ShuttingDown.to_string(), "shutting down");
    }
}
