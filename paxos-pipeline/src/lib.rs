//! paxos-pipeline: the lock-free submit and batching path in front of the
//! proposer.
//!
//! # Role
//!
//! Client tasks submit requests; the proposer (paxos-core's pipelining
//! driver) drains them into decree-sized batches and later resolves each
//! request exactly once. RSL's contract, that every `ReplicateRequest` gets
//! exactly one `Execute` or `Abort`, is enforced here by types. This crate is
//! generic: it knows nothing of Paxos, ballots or the batch encoding.
//!
//! - [`bounded`] / [`Producer`] / [`Consumer`]: a bounded queue, many
//!   producers, one consumer. Submitting is lock-free ([`Producer::try_push`]);
//!   a full queue gives the value back, or [`Producer::push`] waits for room
//!   without spinning. The consumer drains in FIFO order into batches limited
//!   by count and bytes ([`Consumer::drain_batch_by`], which can feed
//!   `paxos_core::batch::BatchBuilder` without allocating) and waits for work
//!   with [`Consumer::ready`].
//! - [`pipeline`] / [`Submitter`] / [`RequestConsumer`]: the same queue
//!   carrying [`Request`]s, each with a [`Completer`] whose
//!   [`CompletionHandle`] the submitter holds.
//! - [`InFlightWindow`]: at most N decrees proposed and not yet chosen.
//! - [`block_on`]: a tiny executor for the `*_blocking` variants.
//!
//! # Invariants
//!
//! 1. **Bounded.** The queue never holds more than its capacity; the window
//!    never hands out more than its capacity of permits; a drained batch never
//!    exceeds its count limit, nor its byte limit unless it is one oversized
//!    value (which then travels alone rather than blocking the queue).
//! 2. **FIFO.** Values leave in the order their slots were claimed, so each
//!    producer's values leave in the order it pushed them.
//! 3. **Nothing lost, nothing duplicated.** A value whose push returned `Ok`
//!    is drained exactly once (or dropped exactly once with the queue); a
//!    value whose push failed is returned to the caller.
//! 4. **Exactly one outcome.** A completer resolves at most once because
//!    resolving consumes it, and at least once because dropping it resolves
//!    the handle with [`AbortReason::Dropped`].
//! 5. **No lost wake-up.** A producer waiting for room, a proposer waiting
//!    for a window permit, and the consumer waiting for work are each woken by
//!    the release they wait for, or by closing; closing wakes all of them.
//! 6. **Closed means closed.** After close returns, no push succeeds, and
//!    [`Consumer::close_and_drain`] reaches a definite end; the request
//!    consumer aborts what was queued with [`AbortReason::ShuttingDown`].
//!
//! # Memory ordering
//!
//! - *Publishing a value* (ring, Vyukov's per-slot stamps): a producer claims
//!   a slot by CAS on `tail`, writes the value, then stores the slot's stamp
//!   with Release; the consumer loads the stamp with Acquire before reading
//!   the value. Freeing a slot mirrors this: the consumer's Release store of
//!   the next-lap stamp orders its read before the next producer's write,
//!   which Acquire-loads that stamp. Each slot is therefore owned by exactly
//!   one side at a time, and `UnsafeCell` access never races.
//! - *Closing* sets a mark bit on `tail` by RMW; a claim is a CAS on the same
//!   word, so no claim can succeed after the close in `tail`'s modification
//!   order, which is what makes the final drain definite.
//! - *Waking across two locations* ("I changed X, do you wait?" against "I
//!   wait, did X change?") is the store-buffering pattern, which
//!   acquire/release cannot solve. Both sides issue `fence(SeqCst)` between
//!   their store and their load, so in the total order of SeqCst fences one
//!   of them sees the other's store. Used for producer → parked consumer
//!   ([`Consumer::poll_ready`]), and consumer → waiting producers and permit
//!   release → waiting proposers (`wait_list`). Loom supports `fence(SeqCst)`
//!   (it models SeqCst *accesses* only as AcqRel), so the models check exactly
//!   this argument.
//! - *Completion* keeps its flags in one word, so their RMWs are totally
//!   ordered; the cell has two owners and no reference count, and whichever
//!   leaves second (seeing the other's GONE bit with Acquire) frees it; see
//!   [the `completion` module](mod@crate::completion).
//!
//! # Allocation
//!
//! The queue and the window allocate once, at creation. Each request
//! allocates one completion cell (a `Box`, freed by the last of its two
//! owners); draining allocates nothing (`drain_batch_by` hands values to a
//! callback). Waiting futures add an entry to a waiter list only while they
//! wait for room.
//!
//! # Loom
//!
//! All synchronisation goes through the private `sync` module, which maps to
//! loom's types under `--cfg paxos_loom`. Run the models with
//! `RUSTFLAGS="--cfg paxos_loom" CARGO_TARGET_DIR=target/loom cargo test -p
//! paxos-pipeline --release --test loom`.

mod atomic_waker;
#[cfg(not(paxos_loom))]
mod block_on;
pub mod completion;
mod queue;
mod request;
mod ring;
mod sync;
#[cfg(all(test, not(paxos_loom)))]
mod test_util;
mod wait_list;
mod window;

#[cfg(not(paxos_loom))]
pub use block_on::block_on;
pub use completion::{completion, AbortReason, Completer, CompletionHandle, Outcome};
pub use queue::{
    bounded, ByteLen, Closed, ConfigError, Consumer, DrainLimits, Drained, Producer, Push,
    Readiness, ReadyFuture, TryPushError, Weight,
};
pub use request::{
    pipeline, PipelineEnds, Request, RequestConsumer, Submit, SubmitError, Submitter,
};
pub use ring::MAX_CAPACITY;
pub use window::{Acquire, InFlightWindow, TryAcquireError, WindowClosed, WindowPermit};
