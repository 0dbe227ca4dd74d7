//! One source for production and loom.
//!
//! Production code names its synchronisation primitives through this module.
//! Under `--cfg paxos_loom` they are loom's instrumented versions, so the loom
//! models in `tests/loom.rs` check the very code that ships.

#[cfg(paxos_loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicBool, AtomicUsize};
#[cfg(paxos_loom)]
pub(crate) use loom::sync::{Arc, Mutex, MutexGuard};

#[cfg(not(paxos_loom))]
pub(crate) use std::sync::atomic::{fence, AtomicBool, AtomicUsize};
#[cfg(not(paxos_loom))]
pub(crate) use std::sync::{Arc, Mutex, MutexGuard};

pub(crate) use std::sync::atomic::Ordering;

/// Locks `mutex`, ignoring poisoning: every critical section in this crate
/// leaves its data consistent before any call that could panic.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(paxos_loom)]
pub(crate) use loom::cell::UnsafeCell;

/// `std::cell::UnsafeCell` with loom's closure API, so that loom can track
/// every access to the cell's contents.
#[cfg(not(paxos_loom))]
#[derive(Debug)]
pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

#[cfg(not(paxos_loom))]
impl<T> UnsafeCell<T> {
    pub(crate) const fn new(value: T) -> Self {
        UnsafeCell(std::cell::UnsafeCell::new(value))
    }

    /// Runs `f` with a shared pointer to the contents.
    #[inline(always)]
    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    /// Runs `f` with an exclusive pointer to the contents.
    #[inline(always)]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

/// Exponential backoff for contended retry loops.
///
/// Under loom a spin would never let another modelled thread run, so every
/// step yields to loom's scheduler instead.
#[cfg(not(paxos_loom))]
pub(crate) struct Backoff(crossbeam_utils::Backoff);

#[cfg(not(paxos_loom))]
impl Backoff {
    #[inline]
    pub(crate) fn new() -> Self {
        Backoff(crossbeam_utils::Backoff::new())
    }

    /// After a lost race (a failed CAS): spin briefly.
    #[inline]
    pub(crate) fn spin(&self) {
        self.0.spin()
    }

    /// While waiting for another thread to finish a step: spin, then yield.
    #[inline]
    pub(crate) fn snooze(&self) {
        self.0.snooze()
    }
}

#[cfg(paxos_loom)]
pub(crate) struct Backoff;

#[cfg(paxos_loom)]
impl Backoff {
    pub(crate) fn new() -> Self {
        Backoff
    }

    pub(crate) fn spin(&self) {
        loom::thread::yield_now()
    }

    pub(crate) fn snooze(&self) {
        loom::thread::yield_now()
    }
}

pub(crate) use crossbeam_utils::CachePadded;

/// A hint that this thread waits for another's next step (a spin-loop hint;
/// under loom, a yield, so the model lets the other thread run).
#[inline]
pub(crate) fn spin_loop_hint() {
    #[cfg(not(paxos_loom))]
    std::hint::spin_loop();
    #[cfg(paxos_loom)]
    loom::thread::yield_now();
}
