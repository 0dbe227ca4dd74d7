//! Loom models of the submit queue, the completion path and the in-flight
//! window. They check the code that ships: `src/sync.rs` maps every atomic,
//! mutex and cell to loom's under `--cfg paxos_loom`.
//!
//! Run: `RUSTFLAGS="--cfg paxos_loom" CARGO_TARGET_DIR=target/loom cargo test
//! -p paxos-pipeline --release --test loom`.
#![cfg(paxos_loom)]

use loom::future::block_on;
use std::future::Future;

use loom::thread;
use paxos_pipeline::{
    bounded, completion, pipeline, AbortReason, DrainLimits, InFlightWindow, Outcome, Readiness,
    SubmitError, TryAcquireError, WindowClosed,
};

/// Explores every interleaving with at most two preemptions: enough for the
/// store-buffering races these models target, and fast.
fn model(f: impl Fn() + Sync + Send + 'static) {
    model_with_preemptions(2, f)
}

fn model_with_preemptions(bound: usize, f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(bound);
    builder.check(f);
}

/// Two producers race for the single slot of a capacity-one queue while the
/// consumer drains: both values arrive exactly once, the loser of the race
/// waits for room and is woken by the consumer, and the consumer's own wait
/// for work is woken by each publish and finally by the close that the last
/// producer's drop performs.
#[test]
fn concurrent_producers_against_the_consumer() {
    // Three threads with blocking waits on both sides: one preemption keeps
    // the model to seconds (two takes minutes); the two-thread races are
    // covered at bound 2 by the other models.
    model_with_preemptions(1, || {
        let (producer, mut consumer) = bounded::<u32>(1).unwrap();
        let other = producer.clone();
        let a = thread::spawn(move || block_on(producer.push(10)).unwrap());
        let b = thread::spawn(move || block_on(other.push(20)).unwrap());
        let mut seen = Vec::new();
        while block_on(consumer.ready()) == Readiness::Items {
            seen.extend(consumer.try_pop());
        }
        a.join().unwrap();
        b.join().unwrap();
        seen.sort_unstable();
        assert_eq!(seen, [10, 20]);
    });
}

/// Two producers publishing into a roomy queue in parallel: each value once,
/// no torn slot (loom checks every cell access).
#[test]
fn concurrent_try_push_publishes_every_value_once() {
    model(|| {
        let (producer, mut consumer) = bounded::<u32>(2).unwrap();
        let other = producer.clone();
        let a = thread::spawn(move || producer.try_push(1).unwrap());
        let b = thread::spawn(move || other.try_push(2).unwrap());
        let mut seen = Vec::new();
        while block_on(consumer.ready()) == Readiness::Items {
            let limits = DrainLimits {
                max_count: 8,
                max_bytes: 64,
                per_item_overhead: 0,
            };
            consumer.drain_batch_by(limits, |_| 4, |v| seen.push(v));
        }
        a.join().unwrap();
        b.join().unwrap();
        seen.sort_unstable();
        assert_eq!(seen, [1, 2]);
    });
}

/// Capacity one, a producer pushing two values: the second push waits for
/// room and is woken by the consumer's pop (no lost wake-up in either
/// direction).
#[test]
fn full_queue_backpressure_wakes_the_producer() {
    model(|| {
        let (producer, mut consumer) = bounded::<u32>(1).unwrap();
        let t = thread::spawn(move || {
            block_on(producer.push(1)).unwrap();
            block_on(producer.push(2)).unwrap();
        });
        let mut seen = Vec::new();
        while seen.len() < 2 {
            assert_eq!(block_on(consumer.ready()), Readiness::Items);
            seen.extend(consumer.try_pop());
        }
        t.join().unwrap();
        assert_eq!(seen, [1, 2]);
    });
}

/// Shutdown while a submitter waits on a full queue: the submitter wakes with
/// ShuttingDown and its payload, and the queued request is aborted with
/// ShuttingDown. Nothing hangs, nothing is lost.
#[test]
fn shutdown_wakes_a_blocked_submitter_and_aborts_the_queued_request() {
    model(|| {
        let (submitter, mut consumer) = pipeline::<u32, u32>(1).unwrap();
        let queued = submitter.try_submit(1).unwrap();
        let t = thread::spawn(move || match block_on(submitter.submit(2)) {
            Err(SubmitError::ShuttingDown(2)) => {}
            other => panic!("expected ShuttingDown(2), got {other:?}"),
        });
        assert_eq!(consumer.shutdown(), 1);
        assert_eq!(
            block_on(queued),
            Outcome::Aborted(AbortReason::ShuttingDown)
        );
        t.join().unwrap();
    });
}

/// A submit racing with shutdown on a queue with room: either the submitter
/// is refused (payload back) or it gets a handle, and then that handle
/// resolves as ShuttingDown. No completion is lost.
#[test]
fn submit_racing_shutdown_never_loses_a_completion() {
    model(|| {
        let (submitter, mut consumer) = pipeline::<u32, u32>(1).unwrap();
        let t = thread::spawn(move || match block_on(submitter.submit(7)) {
            Ok(handle) => {
                assert_eq!(
                    block_on(handle),
                    Outcome::Aborted(AbortReason::ShuttingDown)
                );
            }
            Err(e) => assert_eq!(e.into_payload(), 7),
        });
        consumer.shutdown();
        t.join().unwrap();
    });
}

/// The completer on another thread resolves the handle exactly once, whether
/// it completes or is dropped, while the handle is being polled.
#[test]
fn completion_resolves_exactly_once() {
    model(|| {
        let (completer, handle) = completion::<u32>();
        let t = thread::spawn(move || completer.complete(5));
        assert_eq!(block_on(handle), Outcome::Completed(5));
        t.join().unwrap();
    });
    model(|| {
        let (completer, handle) = completion::<u32>();
        let t = thread::spawn(move || drop(completer));
        assert_eq!(block_on(handle), Outcome::Aborted(AbortReason::Dropped));
        t.join().unwrap();
    });
}

/// The handle dropped while the completer runs: whichever leaves second
/// frees the cell; loom checks every access to it happens before the free.
#[test]
fn completion_with_abandoned_handle() {
    model(|| {
        let (completer, handle) = completion::<String>();
        let t = thread::spawn(move || completer.complete("x".to_owned()));
        drop(handle);
        t.join().unwrap();
    });
}

/// The handle polls (registering a waker), then gives up and drops while the
/// completer takes its slow path (waking that waker): no access after free,
/// and the outcome is dropped once.
#[test]
fn completion_slow_path_racing_handle_drop() {
    model(|| {
        let (completer, mut handle) = completion::<String>();
        let t = thread::spawn(move || completer.complete("x".to_owned()));
        let waker = futures_noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        if std::pin::Pin::new(&mut handle).poll(&mut cx).is_ready() {
            t.join().unwrap();
            return;
        }
        drop(handle);
        t.join().unwrap();
    });
}

fn futures_noop_waker() -> std::task::Waker {
    std::task::Waker::noop().clone()
}

/// A proposer waiting on a full window is woken by a release on another
/// thread, or by close.
#[test]
fn window_release_and_close_wake_the_waiter() {
    model(|| {
        let window = InFlightWindow::new(1).unwrap();
        let held = window.try_acquire().unwrap();
        let t = thread::spawn(move || drop(held));
        let permit = block_on(window.acquire()).unwrap();
        assert_eq!(window.in_flight(), 1);
        drop(permit);
        t.join().unwrap();
        assert_eq!(window.in_flight(), 0);
    });
    model(|| {
        let window = InFlightWindow::new(1).unwrap();
        let _held = window.try_acquire().unwrap();
        let closer = window.clone();
        let t = thread::spawn(move || closer.close());
        assert_eq!(block_on(window.acquire()).map(drop), Err(WindowClosed));
        t.join().unwrap();
        assert_eq!(window.try_acquire().map(drop), Err(TryAcquireError::Closed));
    });
}
