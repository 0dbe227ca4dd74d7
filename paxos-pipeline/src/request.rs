//! The request pipeline: the submit queue carrying requests that each own a
//! [`Completer`], so every submitted request gets exactly one [`Outcome`].
//!
//! - [`Submitter::try_submit`] / [`Submitter::submit`] return a
//!   [`CompletionHandle`] only if the request entered the queue; otherwise the
//!   payload comes back and no handle exists.
//! - The [`RequestConsumer`] drains [`Request`]s; the consumer (paxos-core's
//!   proposer) keeps each request's completer until the request's decree is
//!   chosen and executed, then completes it, or aborts it.
//! - Shutdown: [`RequestConsumer::shutdown`] (also run on drop) closes the
//!   queue, which wakes every producer waiting for room (they get
//!   [`SubmitError::ShuttingDown`]), and aborts every request still queued
//!   with [`AbortReason::ShuttingDown`]. Requests the consumer already took
//!   are resolved by whoever holds their completers; a completer dropped
//!   unresolved yields [`AbortReason::Dropped`]. No handle can hang.

use std::fmt;
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::task::{Context, Poll};

use paxos_contracts::ensures;

use crate::completion::{completion, AbortReason, Completer, CompletionHandle, Outcome};
use crate::queue::{bounded, ByteLen, Closed, ConfigError, Consumer, Producer, Push, TryPushError};

/// One queued request: its payload and the completer that resolves it.
pub struct Request<T, O> {
    /// What the client submitted.
    pub payload: T,
    /// Resolves the client's handle; use it exactly once.
    pub completer: Completer<O>,
}

impl<T: fmt::Debug, O> fmt::Debug for Request<T, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("payload", &self.payload)
            .finish_non_exhaustive()
    }
}

impl<T: ByteLen, O> ByteLen for Request<T, O> {
    fn byte_len(&self) -> usize {
        self.payload.byte_len()
    }
}

/// Why a submit failed. The payload comes back, and no handle was created:
/// the request never entered the pipeline.
#[derive(PartialEq, Eq, thiserror::Error)]
pub enum SubmitError<T> {
    /// The queue is full (only from [`Submitter::try_submit`]).
    #[error("submit queue full")]
    Full(T),
    /// The pipeline is shutting down.
    #[error("shutting down")]
    ShuttingDown(T),
}

impl<T> SubmitError<T> {
    /// The payload that was not submitted.
    pub fn into_payload(self) -> T {
        match self {
            SubmitError::Full(payload) | SubmitError::ShuttingDown(payload) => payload,
        }
    }
}

impl<T> fmt::Debug for SubmitError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SubmitError::Full(_) => "Full(..)",
            SubmitError::ShuttingDown(_) => "ShuttingDown(..)",
        })
    }
}

/// Both ends of a new request pipeline.
pub type PipelineEnds<T, O> = (Submitter<T, O>, RequestConsumer<T, O>);

/// Creates a request pipeline whose queue holds `capacity` requests.
pub fn pipeline<T, O>(capacity: usize) -> Result<PipelineEnds<T, O>, ConfigError> {
    let (producer, consumer) = bounded(capacity)?;
    Ok((Submitter { producer }, RequestConsumer { consumer }))
}

/// The client-facing side: submits requests and hands back their handles.
/// Clone it for more submitting threads or tasks.
pub struct Submitter<T, O> {
    producer: Producer<Request<T, O>>,
}

impl<T, O> Clone for Submitter<T, O> {
    fn clone(&self) -> Self {
        Submitter {
            producer: self.producer.clone(),
        }
    }
}

impl<T, O> fmt::Debug for Submitter<T, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Submitter")
            .field("queue", &self.producer)
            .finish()
    }
}

fn unpack<T, O>(request: Request<T, O>) -> T {
    // The completer is dropped with its handle, which the caller never saw.
    request.payload
}

impl<T, O> Submitter<T, O> {
    /// Submits `payload` if the queue has room. Lock-free; never waits.
    pub fn try_submit(&self, payload: T) -> Result<CompletionHandle<O>, SubmitError<T>> {
        let (completer, handle) = completion();
        match self.producer.try_push(Request { payload, completer }) {
            Ok(()) => Ok(handle),
            Err(TryPushError::Full(request)) => Err(SubmitError::Full(unpack(request))),
            Err(TryPushError::Closed(request)) => Err(SubmitError::ShuttingDown(unpack(request))),
        }
    }

    /// Submits `payload`, waiting (without spinning) for room. Fails only
    /// with [`SubmitError::ShuttingDown`].
    pub fn submit(&self, payload: T) -> Submit<'_, T, O> {
        let (completer, handle) = completion();
        Submit {
            push: self.producer.push(Request { payload, completer }),
            handle: Some(handle),
        }
    }

    /// [`submit`](Self::submit), blocking the thread while it waits.
    #[cfg(not(paxos_loom))]
    pub fn submit_blocking(&self, payload: T) -> Result<CompletionHandle<O>, SubmitError<T>> {
        crate::block_on::block_on(self.submit(payload))
    }

    /// Starts shutdown from the submitting side: later submits fail and
    /// waiting submitters wake with [`SubmitError::ShuttingDown`].
    pub fn close(&self) -> bool {
        self.producer.close()
    }

    /// Whether the pipeline is shutting down.
    pub fn is_closed(&self) -> bool {
        self.producer.is_closed()
    }

    /// Requests queued now (a snapshot).
    pub fn queued(&self) -> usize {
        self.producer.len()
    }
}

/// The future of [`Submitter::submit`].
#[must_use = "futures do nothing unless polled"]
pub struct Submit<'a, T, O> {
    push: Push<'a, Request<T, O>>,
    /// `Some` until the future resolves.
    handle: Option<CompletionHandle<O>>,
}

impl<T, O> fmt::Debug for Submit<'_, T, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Submit").field("push", &self.push).finish()
    }
}

impl<T, O> Future for Submit<'_, T, O> {
    type Output = Result<CompletionHandle<O>, SubmitError<T>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        match Pin::new(&mut this.push).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) => Poll::Ready(Ok(this
                .handle
                .take()
                .expect("Submit polled after it resolved"))),
            Poll::Ready(Err(Closed(request))) => {
                this.handle = None;
                Poll::Ready(Err(SubmitError::ShuttingDown(unpack(request))))
            }
        }
    }
}

/// The proposer-facing side: drains requests into batches (everything of
/// [`Consumer`] is available through `Deref`) and shuts the pipeline down.
/// Dropping it runs [`shutdown`](Self::shutdown).
pub struct RequestConsumer<T, O> {
    consumer: Consumer<Request<T, O>>,
}

impl<T, O> fmt::Debug for RequestConsumer<T, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestConsumer")
            .field("queue", &self.consumer)
            .finish()
    }
}

impl<T, O> Deref for RequestConsumer<T, O> {
    type Target = Consumer<Request<T, O>>;

    fn deref(&self) -> &Self::Target {
        &self.consumer
    }
}

impl<T, O> DerefMut for RequestConsumer<T, O> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.consumer
    }
}

impl<T, O> RequestConsumer<T, O> {
    /// Aborts every queued request with `reason` (for example
    /// [`AbortReason::NotPrimary`] when this replica loses leadership) and
    /// returns how many. The queue stays open.
    pub fn abort_queued(&mut self, reason: AbortReason) -> usize {
        let mut aborted = 0;
        while let Some(request) = self.consumer.try_pop() {
            request.completer.abort(reason.clone());
            aborted += 1;
        }
        aborted
    }

    /// Closes the pipeline and aborts every request still queued with
    /// [`AbortReason::ShuttingDown`]; returns how many. Idempotent.
    pub fn shutdown(&mut self) -> usize {
        let aborted = self.consumer.close_and_drain(|request| {
            request
                .completer
                .resolve(Outcome::Aborted(AbortReason::ShuttingDown))
        });
        ensures!(self.consumer.is_closed() && self.consumer.is_empty());
        aborted
    }
}

impl<T, O> Drop for RequestConsumer<T, O> {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(all(test, not(paxos_loom)))]
mod tests {
    use super::*;
    use crate::queue::{DrainLimits, Readiness};
    use bytes::Bytes;

    const LIMITS: DrainLimits = DrainLimits {
        max_count: 64,
        max_bytes: 1 << 20,
        per_item_overhead: 4,
    };

    /// Everything an async driver moves between threads is `Send` (and the
    /// shared ends `Sync`), so it works on a multi-threaded executor.
    #[test]
    fn handles_and_futures_are_send() {
        fn send<T: Send>() {}
        fn sync<T: Sync>() {}
        send::<Submitter<Bytes, u64>>();
        sync::<Submitter<Bytes, u64>>();
        send::<RequestConsumer<Bytes, u64>>();
        send::<Submit<'static, Bytes, u64>>();
        send::<crate::CompletionHandle<u64>>();
        send::<crate::Completer<u64>>();
        sync::<crate::Completer<u64>>();
        send::<crate::Push<'static, u64>>();
        send::<crate::ReadyFuture<'static, u64>>();
        send::<crate::WindowPermit>();
        send::<crate::Acquire<'static>>();
        sync::<crate::InFlightWindow>();
    }

    #[test]
    fn submitted_requests_complete_with_their_outputs() {
        let (submitter, mut consumer) = pipeline::<Bytes, u64>(8).unwrap();
        let a = submitter.try_submit(Bytes::from_static(b"a")).unwrap();
        let b = submitter
            .submit_blocking(Bytes::from_static(b"bb"))
            .unwrap();
        let mut batch = Vec::new();
        assert_eq!(consumer.drain_into(LIMITS, &mut batch).count, 2);
        for (i, request) in batch.drain(..).enumerate() {
            request
                .completer
                .complete(i as u64 * 10 + request.payload.len() as u64);
        }
        assert_eq!(a.wait(), Outcome::Completed(1));
        assert_eq!(b.wait(), Outcome::Completed(12));
    }

    #[test]
    fn full_queue_returns_the_payload_without_a_handle() {
        let (submitter, _consumer) = pipeline::<&'static str, ()>(1).unwrap();
        let _first = submitter.try_submit("one").unwrap();
        let err = submitter.try_submit("two").unwrap_err();
        assert_eq!(err.into_payload(), "two");
        assert_eq!(submitter.queued(), 1);
    }

    #[test]
    fn shutdown_aborts_queued_requests_and_wakes_waiting_submitters() {
        let (submitter, mut consumer) = pipeline::<u32, u32>(1).unwrap();
        let queued = submitter.try_submit(1).unwrap();
        let waiting = {
            let submitter = submitter.clone();
            std::thread::spawn(move || submitter.submit_blocking(2).map(drop))
        };
        std::thread::sleep(std::time::Duration::from_millis(10));
        assert_eq!(consumer.shutdown(), 1);
        match waiting.join().unwrap() {
            // The queue stays full until the close, so the waiter cannot get
            // in first: it must be refused, with its payload back.
            Err(SubmitError::ShuttingDown(2)) => {}
            other => panic!("expected ShuttingDown(2), got {other:?}"),
        }
        assert_eq!(queued.wait(), Outcome::Aborted(AbortReason::ShuttingDown));
        assert!(matches!(
            submitter.try_submit(3),
            Err(SubmitError::ShuttingDown(3))
        ));
        assert_eq!(consumer.shutdown(), 0, "shutdown is idempotent");
        assert_eq!(consumer.ready_blocking(), Readiness::Closed);
    }

    #[test]
    fn dropping_the_consumer_aborts_with_shutting_down() {
        let (submitter, consumer) = pipeline::<u32, u32>(4).unwrap();
        let handle = submitter.try_submit(1).unwrap();
        drop(consumer);
        assert_eq!(handle.wait(), Outcome::Aborted(AbortReason::ShuttingDown));
    }

    #[test]
    fn abort_queued_uses_the_given_reason_and_keeps_the_queue_open() {
        let (submitter, mut consumer) = pipeline::<u32, u32>(4).unwrap();
        let h1 = submitter.try_submit(1).unwrap();
        let h2 = submitter.try_submit(2).unwrap();
        let reason = AbortReason::NotPrimary {
            leader_hint: Some(2),
        };
        assert_eq!(consumer.abort_queued(reason.clone()), 2);
        assert_eq!(h1.wait(), Outcome::Aborted(reason.clone()));
        assert_eq!(h2.wait(), Outcome::Aborted(reason));
        assert!(submitter.try_submit(3).is_ok());
    }

    #[test]
    fn a_completer_lost_by_the_consumer_resolves_as_dropped() {
        let (submitter, mut consumer) = pipeline::<u32, u32>(4).unwrap();
        let handle = submitter.try_submit(1).unwrap();
        drop(consumer.try_pop());
        assert_eq!(handle.wait(), Outcome::Aborted(AbortReason::Dropped));
    }

    #[test]
    fn drain_feeds_a_batch_builder_without_allocating_per_request() {
        // A stand-in for paxos_core::batch::BatchBuilder's framing (this crate
        // must not depend on paxos-core): u32 count | (u32 len | bytes)*.
        let (submitter, mut consumer) = pipeline::<Bytes, usize>(8).unwrap();
        let handles: Vec<_> = [&b"x"[..], b"yy", b"zzz"]
            .iter()
            .map(|p| submitter.try_submit(Bytes::copy_from_slice(p)).unwrap())
            .collect();
        let mut encoded = Vec::with_capacity(64);
        encoded.extend_from_slice(&0u32.to_le_bytes());
        let mut completers = Vec::with_capacity(8);
        let limits = DrainLimits {
            max_count: 8,
            max_bytes: 64 - 4,
            per_item_overhead: 4,
        };
        let drained = consumer.drain_batch(limits, |request| {
            encoded.extend_from_slice(&(request.payload.len() as u32).to_le_bytes());
            encoded.extend_from_slice(&request.payload);
            completers.push(request.completer);
        });
        encoded[..4].copy_from_slice(&(drained.count as u32).to_le_bytes());
        assert_eq!(
            drained,
            crate::Drained {
                count: 3,
                bytes: 18
            }
        );
        assert_eq!(encoded.len(), 4 + drained.bytes);
        for (slot, completer) in completers.into_iter().enumerate() {
            completer.complete(slot);
        }
        let outputs: Vec<_> = handles.into_iter().map(|h| h.wait()).collect();
        assert_eq!(
            outputs,
            [
                Outcome::Completed(0),
                Outcome::Completed(1),
                Outcome::Completed(2)
            ]
        );
    }
}
