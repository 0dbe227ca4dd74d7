//! Property tests against a sequential model: random sequences of submit,
//! drain, complete, abort, drop and shutdown keep FIFO order, respect the
//! batch limits, and resolve every handle exactly once with the right
//! outcome.
#![cfg(not(paxos_loom))]

use std::collections::VecDeque;

use paxos_pipeline::{
    pipeline, AbortReason, ByteLen, Completer, CompletionHandle, DrainLimits, InFlightWindow,
    Outcome, SubmitError, TryAcquireError,
};
use proptest::prelude::*;

const CAPACITY: usize = 4;
const OVERHEAD: usize = 4;

#[derive(Debug, Clone, PartialEq)]
struct Payload {
    id: u64,
    len: usize,
}

impl ByteLen for Payload {
    fn byte_len(&self) -> usize {
        self.len
    }
}

#[derive(Debug, Clone)]
enum Op {
    Submit { len: usize },
    Drain { max_count: usize, max_bytes: usize },
    Complete { pick: usize },
    Abort { pick: usize },
    DropCompleter { pick: usize },
    DropHandle { pick: usize },
    Poll,
    Shutdown,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0usize..24).prop_map(|len| Op::Submit { len }),
        3 => (0usize..5, 0usize..48).prop_map(|(max_count, max_bytes)| Op::Drain { max_count, max_bytes }),
        2 => any::<usize>().prop_map(|pick| Op::Complete { pick }),
        1 => any::<usize>().prop_map(|pick| Op::Abort { pick }),
        1 => any::<usize>().prop_map(|pick| Op::DropCompleter { pick }),
        1 => any::<usize>().prop_map(|pick| Op::DropHandle { pick }),
        2 => Just(Op::Poll),
        1 => Just(Op::Shutdown),
    ]
}

/// A live handle and what the model says it must resolve to, once resolved.
struct Tracked {
    id: u64,
    handle: CompletionHandle<u64>,
    expected: Option<Outcome<u64>>,
    taken: bool,
}

proptest! {
    #[test]
    fn pipeline_matches_the_sequential_model(ops in proptest::collection::vec(op(), 1..80)) {
        let (submitter, mut consumer) = pipeline::<Payload, u64>(CAPACITY).unwrap();
        let mut next_id = 0u64;
        let mut model_queue: VecDeque<Payload> = VecDeque::new();
        let mut in_flight: Vec<(u64, Completer<u64>)> = Vec::new();
        let mut handles: Vec<Tracked> = Vec::new();
        let mut closed = false;
        let mut drained_order: Vec<u64> = Vec::new();
        let mut submitted_order: Vec<u64> = Vec::new();

        let resolve = |handles: &mut Vec<Tracked>, id: u64, outcome: Outcome<u64>| {
            if let Some(t) = handles.iter_mut().find(|t| t.id == id) {
                prop_assert!(t.expected.is_none(), "request {} resolved twice", id);
                t.expected = Some(outcome);
            }
            Ok(())
        };

        for op in ops {
            match op {
                Op::Submit { len } => {
                    let payload = Payload { id: next_id, len };
                    match submitter.try_submit(payload.clone()) {
                        Ok(handle) => {
                            prop_assert!(!closed && model_queue.len() < CAPACITY);
                            model_queue.push_back(payload);
                            submitted_order.push(next_id);
                            handles.push(Tracked { id: next_id, handle, expected: None, taken: false });
                        }
                        Err(SubmitError::Full(back)) => {
                            prop_assert!(!closed && model_queue.len() == CAPACITY);
                            prop_assert_eq!(back, payload);
                        }
                        Err(SubmitError::ShuttingDown(back)) => {
                            prop_assert!(closed);
                            prop_assert_eq!(back, payload);
                        }
                    }
                    next_id += 1;
                }
                Op::Drain { max_count, max_bytes } => {
                    // The model: take the longest FIFO prefix within the limits,
                    // an oversized head going alone.
                    let mut expected = Vec::new();
                    let mut bytes = 0;
                    for p in &model_queue {
                        if expected.len() == max_count { break; }
                        let cost = p.len + OVERHEAD;
                        if !expected.is_empty() && bytes + cost > max_bytes { break; }
                        bytes += cost;
                        expected.push(p.id);
                    }
                    let limits = DrainLimits { max_count, max_bytes, per_item_overhead: OVERHEAD };
                    let mut got = Vec::new();
                    let drained = consumer.drain_batch(limits, |request| {
                        got.push(request.payload.id);
                        in_flight.push((request.payload.id, request.completer));
                    });
                    prop_assert_eq!(&got, &expected);
                    prop_assert_eq!(drained.count, expected.len());
                    prop_assert_eq!(drained.bytes, bytes);
                    for _ in 0..got.len() { model_queue.pop_front(); }
                    drained_order.extend(got);
                }
                Op::Complete { pick } if !in_flight.is_empty() => {
                    let (id, completer) = in_flight.remove(pick % in_flight.len());
                    completer.complete(id * 7);
                    resolve(&mut handles, id, Outcome::Completed(id * 7))?;
                }
                Op::Abort { pick } if !in_flight.is_empty() => {
                    let (id, completer) = in_flight.remove(pick % in_flight.len());
                    completer.abort(AbortReason::Timeout);
                    resolve(&mut handles, id, Outcome::Aborted(AbortReason::Timeout))?;
                }
                Op::DropCompleter { pick } if !in_flight.is_empty() => {
                    let (id, completer) = in_flight.remove(pick % in_flight.len());
                    drop(completer);
                    resolve(&mut handles, id, Outcome::Aborted(AbortReason::Dropped))?;
                }
                Op::DropHandle { pick } if !handles.is_empty() => {
                    let t = handles.remove(pick % handles.len());
                    drop(t.handle);
                }
                Op::Poll => {
                    for t in handles.iter_mut() {
                        let got = t.handle.try_take();
                        match (&t.expected, t.taken) {
                            (Some(expected), false) => {
                                prop_assert_eq!(got.as_ref(), Some(expected));
                                t.taken = true;
                            }
                            _ => prop_assert!(got.is_none(), "request {} yielded a second or early outcome", t.id),
                        }
                    }
                }
                Op::Shutdown => {
                    let aborted = consumer.shutdown();
                    prop_assert_eq!(aborted, model_queue.len());
                    for p in model_queue.drain(..) {
                        resolve(&mut handles, p.id, Outcome::Aborted(AbortReason::ShuttingDown))?;
                    }
                    closed = true;
                }
                _ => {}
            }
        }

        // Wind down: the consumer loses its completers, then shuts down.
        for (id, completer) in in_flight.drain(..) {
            drop(completer);
            resolve(&mut handles, id, Outcome::Aborted(AbortReason::Dropped))?;
        }
        let aborted = consumer.shutdown();
        prop_assert_eq!(aborted, model_queue.len());
        for p in model_queue.drain(..) {
            resolve(&mut handles, p.id, Outcome::Aborted(AbortReason::ShuttingDown))?;
        }
        // Every surviving handle resolved exactly once, as the model says.
        for mut t in handles {
            let expected = t.expected.clone();
            prop_assert!(expected.is_some(), "request {} never resolved", t.id);
            if !t.taken {
                prop_assert_eq!(t.handle.try_take(), expected);
            }
            prop_assert!(t.handle.try_take().is_none());
        }
        // FIFO: drained ids are a prefix of the submission order.
        prop_assert_eq!(&drained_order[..], &submitted_order[..drained_order.len()]);
    }

    #[test]
    fn window_matches_a_counter(ops in proptest::collection::vec(any::<(bool, usize)>(), 1..60), capacity in 1usize..5) {
        let window = InFlightWindow::new(capacity).unwrap();
        let mut permits = Vec::new();
        for (acquire, pick) in ops {
            if acquire {
                match window.try_acquire() {
                    Ok(permit) => {
                        prop_assert!(permits.len() < capacity);
                        permits.push(permit);
                    }
                    Err(e) => {
                        prop_assert_eq!(e, TryAcquireError::Full);
                        prop_assert_eq!(permits.len(), capacity);
                    }
                }
            } else if !permits.is_empty() {
                permits.swap_remove(pick % permits.len());
            }
            prop_assert_eq!(window.in_flight(), permits.len());
        }
    }
}
