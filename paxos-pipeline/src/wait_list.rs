//! Tasks waiting for room: producers on a full queue, proposers on a full
//! in-flight window.
//!
//! Waiting is the slow path, so the list itself sits behind a mutex; the fast
//! path of the releasing side (the consumer after a drain, a permit's drop) is
//! one `SeqCst` fence and one relaxed load of [`WaitList::has_waiters`].
//!
//! # No lost wake-up
//!
//! A waiter *registers, fences, then re-checks* its condition; a releaser
//! *changes the condition, fences, then checks for waiters*. With both
//! `fence(SeqCst)`s in the single total order of SeqCst fences, either the
//! waiter's fence comes first, and then the releaser's load sees
//! `has_waiters == true` and wakes it, or the releaser's fence comes first, and
//! then the waiter's re-check sees the released room. (Loom models this with
//! its supported `fence(SeqCst)`.)
//!
//! Every notification wakes *all* waiters; each re-checks and re-registers if
//! it lost the race. That costs a few spurious polls under contention but
//! makes cancellation trivially safe: a waiter dropped after being woken
//! cannot swallow a wake-up meant for another.

use std::task::Waker;

use crate::sync::{fence, lock, AtomicBool, Mutex, Ordering};

/// A waiter's registration: its id in the list, once it registered.
#[derive(Debug, Default)]
pub(crate) struct WaitKey(Option<u64>);

pub(crate) struct WaitList {
    /// True while `entries` may be non-empty. Written under the lock, read
    /// without it by releasers.
    has_waiters: AtomicBool,
    inner: Mutex<Waiters>,
}

struct Waiters {
    next_id: u64,
    /// One entry per pending future; bounded by the number of live waiting
    /// futures, each of which removes its entry when it completes or drops.
    entries: Vec<(u64, Waker)>,
}

impl WaitList {
    pub(crate) fn new() -> Self {
        WaitList {
            has_waiters: AtomicBool::new(false),
            inner: Mutex::new(Waiters {
                next_id: 0,
                entries: Vec::new(),
            }),
        }
    }

    /// Registers (or refreshes) the waker for `key`, then fences. The caller
    /// must re-check its condition after this returns.
    pub(crate) fn register(&self, key: &mut WaitKey, waker: &Waker) {
        {
            let mut waiters = lock(&self.inner);
            let existing = key.0.and_then(|id| {
                waiters
                    .entries
                    .iter_mut()
                    .find(|(entry_id, _)| *entry_id == id)
            });
            match existing {
                Some((_, stored)) => {
                    if !stored.will_wake(waker) {
                        *stored = waker.clone();
                    }
                }
                None => {
                    let id = waiters.next_id;
                    waiters.next_id += 1;
                    waiters.entries.push((id, waker.clone()));
                    key.0 = Some(id);
                }
            }
            self.has_waiters.store(true, Ordering::Relaxed);
        }
        // Pairs with the fence in `notify_after_release`.
        fence(Ordering::SeqCst);
    }

    /// Removes `key`'s entry, if it is still listed.
    pub(crate) fn deregister(&self, key: &mut WaitKey) {
        let Some(id) = key.0.take() else { return };
        let mut waiters = lock(&self.inner);
        if let Some(pos) = waiters
            .entries
            .iter()
            .position(|(entry_id, _)| *entry_id == id)
        {
            waiters.entries.swap_remove(pos);
        }
        if waiters.entries.is_empty() {
            self.has_waiters.store(false, Ordering::Relaxed);
        }
    }

    /// Called after room was released: wakes every waiter, if there are any.
    pub(crate) fn notify_after_release(&self) {
        // Pairs with the fence in `register`.
        fence(Ordering::SeqCst);
        if self.has_waiters.load(Ordering::Relaxed) {
            self.notify_all();
        }
    }

    /// Wakes every waiter now (used on release and on close).
    pub(crate) fn notify_all(&self) {
        let woken = {
            let mut waiters = lock(&self.inner);
            self.has_waiters.store(false, Ordering::Relaxed);
            std::mem::take(&mut waiters.entries)
        };
        // Wake outside the lock: a waker may run arbitrary code.
        for (_, waker) in woken {
            waker.wake();
        }
    }

    #[cfg(all(test, not(paxos_loom)))]
    pub(crate) fn len(&self) -> usize {
        lock(&self.inner).entries.len()
    }
}

#[cfg(all(test, not(paxos_loom)))]
mod tests {
    use super::*;
    use crate::test_util::CountingWaker;

    #[test]
    fn notify_wakes_every_registered_waiter_once() {
        let list = WaitList::new();
        let (a, wa) = CountingWaker::new();
        let (b, wb) = CountingWaker::new();
        let (mut ka, mut kb) = (WaitKey::default(), WaitKey::default());
        list.register(&mut ka, &wa);
        list.register(&mut kb, &wb);
        assert_eq!(list.len(), 2);
        list.notify_after_release();
        list.notify_after_release();
        assert_eq!((a.count(), b.count()), (1, 1));
        assert_eq!(list.len(), 0);
    }

    #[test]
    fn re_registering_keeps_one_entry_and_deregister_removes_it() {
        let list = WaitList::new();
        let (_, w1) = CountingWaker::new();
        let (c2, w2) = CountingWaker::new();
        let mut key = WaitKey::default();
        list.register(&mut key, &w1);
        list.register(&mut key, &w2);
        assert_eq!(list.len(), 1);
        list.deregister(&mut key);
        assert_eq!(list.len(), 0);
        list.notify_all();
        assert_eq!(c2.count(), 0);
        // Deregistering twice is harmless.
        list.deregister(&mut key);
    }

    #[test]
    fn release_without_waiters_takes_no_lock_and_wakes_nothing() {
        let list = WaitList::new();
        list.notify_after_release();
        assert!(!list.has_waiters.load(Ordering::Relaxed));
    }
}
