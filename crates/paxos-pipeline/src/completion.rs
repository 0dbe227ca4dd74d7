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
//! The cell's `state` word has three bits. The completer writes the outcome,
//! then sets `COMPLETE` with an AcqRel RMW; the handle reads the outcome only
//! after observing `COMPLETE` with Acquire. The waker cell belongs to the
//! handle while `WAKER_SET` is clear; once the handle sets `WAKER_SET`, only
//! shared reads of the waker happen (the completer's `wake_by_ref`, the
//! handle's `will_wake`) until the handle clears the bit again by an RMW that
//! did not see `COMPLETE`. Since all three bits live in one word, their RMWs
//! are totally ordered, which is the whole argument.
//!
//! # Allocation
//!
//! One `Arc` per request (the cell, about 64 bytes plus the outcome). The
//! bench `submit/pipeline_roundtrip` measures it.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use crate::sync::{Arc, AtomicUsize, Ordering, UnsafeCell};

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
const COMPLETE: usize = 0b001;
/// The handle stored a waker in the cell.
const WAKER_SET: usize = 0b010;
/// The handle is gone; nobody will read the outcome.
const HANDLE_DROPPED: usize = 0b100;

struct Cell<O> {
    state: AtomicUsize,
    outcome: UnsafeCell<Option<Outcome<O>>>,
    waker: UnsafeCell<Option<Waker>>,
}

// SAFETY: access to `outcome` and `waker` follows the state protocol in the
// module docs; the outcome moves from the completer's thread to the handle's
// (O: Send), and wakers are Send + Sync.
unsafe impl<O: Send> Send for Cell<O> {}
// SAFETY: as above.
unsafe impl<O: Send> Sync for Cell<O> {}

/// Creates a linked completer and handle for one request.
pub fn completion<O>() -> (Completer<O>, CompletionHandle<O>) {
    let cell = Arc::new(Cell {
        state: AtomicUsize::new(0),
        outcome: UnsafeCell::new(None),
        waker: UnsafeCell::new(None),
    });
    (
        Completer {
            cell: Some(cell.clone()),
        },
        CompletionHandle { cell: Some(cell) },
    )
}

/// Resolves one request. Consumed by resolving; dropping it unresolved
/// resolves the handle with [`AbortReason::Dropped`].
pub struct Completer<O> {
    /// `Some` until the completer resolves (only `Drop` sees `None`).
    cell: Option<Arc<Cell<O>>>,
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
            send(&cell, outcome);
        }
    }

    /// Whether the handle was dropped, so nobody waits for the outcome. The
    /// request must still be resolved (or dropped); this only lets a consumer
    /// skip work such as building a reply.
    pub fn is_abandoned(&self) -> bool {
        self.cell
            .as_ref()
            .is_none_or(|cell| cell.state.load(Ordering::Acquire) & HANDLE_DROPPED != 0)
    }
}

impl<O> Drop for Completer<O> {
    fn drop(&mut self) {
        if let Some(cell) = self.cell.take() {
            send(&cell, Outcome::Aborted(AbortReason::Dropped));
        }
    }
}

fn send<O>(cell: &Cell<O>, outcome: Outcome<O>) {
    // SAFETY: only the (single) completer writes the outcome, and only before
    // it sets COMPLETE; the handle reads it only after seeing COMPLETE.
    cell.outcome
        .with_mut(|slot| unsafe { *slot = Some(outcome) });
    let previous = cell.state.fetch_or(COMPLETE, Ordering::AcqRel);
    debug_assert_eq!(previous & COMPLETE, 0, "a cell completed twice");
    if previous & WAKER_SET != 0 && previous & HANDLE_DROPPED == 0 {
        // SAFETY: WAKER_SET was set when our RMW ran, so the handle stored a
        // waker and from now on only reads it (see module docs).
        cell.waker.with(|waker| unsafe {
            if let Some(waker) = &*waker {
                waker.wake_by_ref();
            }
        });
    }
}

/// Waits for one request's [`Outcome`]. A future; or call
/// [`wait`](Self::wait) to block the thread.
#[must_use = "a handle is how the caller learns whether its request executed"]
pub struct CompletionHandle<O> {
    /// `None` once the outcome was taken.
    cell: Option<Arc<Cell<O>>>,
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
            .is_none_or(|cell| cell.state.load(Ordering::Acquire) & COMPLETE != 0)
    }

    /// Takes the outcome if it is ready. Returns `None` if it is not, or if
    /// it was taken before.
    pub fn try_take(&mut self) -> Option<Outcome<O>> {
        let cell = self.cell.as_ref()?;
        if cell.state.load(Ordering::Acquire) & COMPLETE == 0 {
            return None;
        }
        Some(self.take_outcome())
    }

    /// Blocks the calling thread until the outcome arrives.
    #[cfg(not(paxos_loom))]
    pub fn wait(self) -> Outcome<O> {
        crate::block_on::block_on(self)
    }

    /// Takes the outcome after COMPLETE was observed with Acquire.
    fn take_outcome(&mut self) -> Outcome<O> {
        let cell = self.cell.take().expect("take_outcome on a taken handle");
        // SAFETY: COMPLETE was observed (Acquire), so the completer's write is
        // visible and it never touches the outcome again; we are the only
        // handle.
        let outcome = cell.outcome.with_mut(|slot| unsafe { (*slot).take() });
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
            .expect("CompletionHandle polled after it resolved");
        let state = cell.state.load(Ordering::Acquire);
        if state & COMPLETE != 0 {
            return Poll::Ready(this.take_outcome());
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
                return Poll::Ready(this.take_outcome());
            }
        }
        // WAKER_SET is clear and only this handle sets it, so a completer that
        // runs now will not read the waker: the cell is ours.
        // SAFETY: as just argued.
        cell.waker
            .with_mut(|waker| unsafe { *waker = Some(cx.waker().clone()) });
        let state = cell.state.fetch_or(WAKER_SET, Ordering::AcqRel);
        if state & COMPLETE != 0 {
            return Poll::Ready(this.take_outcome());
        }
        Poll::Pending
    }
}

impl<O> Drop for CompletionHandle<O> {
    fn drop(&mut self) {
        if let Some(cell) = &self.cell {
            cell.state.fetch_or(HANDLE_DROPPED, Ordering::AcqRel);
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
