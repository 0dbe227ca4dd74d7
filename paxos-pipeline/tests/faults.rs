//! Fault injection: the consumer dies (panics) in the middle of a batch. No
//! handle may hang: requests it had taken resolve as Dropped, requests still
//! queued resolve as ShuttingDown (its drop runs during unwinding), and
//! submitters waiting for room wake with ShuttingDown.
#![cfg(not(paxos_loom))]

use std::time::Duration;

use bytes::Bytes;
use paxos_pipeline::{pipeline, AbortReason, DrainLimits, Outcome, SubmitError};

#[test]
fn a_consumer_panicking_mid_batch_resolves_every_request() {
    let (submitter, mut consumer) = pipeline::<Bytes, u64>(4).unwrap();
    let handles: Vec<_> = (0..4u8)
        .map(|i| submitter.try_submit(Bytes::from(vec![i; 8])).unwrap())
        .collect();
    // One more submitter waits for room that will never come.
    let waiting = {
        let submitter = submitter.clone();
        std::thread::spawn(move || submitter.submit_blocking(Bytes::from_static(b"late")))
    };
    std::thread::sleep(Duration::from_millis(10));

    let consumer_thread = std::thread::spawn(move || {
        let limits = DrainLimits {
            max_count: 2,
            max_bytes: 1 << 10,
            per_item_overhead: 4,
        };
        let mut taken = Vec::new();
        consumer.drain_batch(limits, |request| taken.push(request));
        // Complete the first, then crash holding the second's completer.
        let mut taken = taken.into_iter();
        let first = taken.next().unwrap();
        first.completer.complete(first.payload.len() as u64);
        let _second = taken.next().unwrap();
        panic!("injected consumer crash");
    });
    assert!(
        consumer_thread.join().is_err(),
        "the consumer must have crashed"
    );

    let outcomes: Vec<_> = handles.into_iter().map(|h| h.wait()).collect();
    assert_eq!(
        outcomes,
        [
            Outcome::Completed(8),
            Outcome::Aborted(AbortReason::Dropped),
            Outcome::Aborted(AbortReason::ShuttingDown),
            Outcome::Aborted(AbortReason::ShuttingDown),
        ]
    );
    // The crashed consumer may have freed room before it closed the queue, so
    // the late submitter was either refused, or admitted and then aborted.
    match waiting.join().unwrap() {
        Err(SubmitError::ShuttingDown(payload)) => assert_eq!(&payload[..], b"late"),
        Ok(handle) => assert_eq!(handle.wait(), Outcome::Aborted(AbortReason::ShuttingDown)),
        Err(other) => panic!("unexpected {other:?}"),
    }
    assert!(submitter.is_closed());
    assert!(matches!(
        submitter.try_submit(Bytes::new()),
        Err(SubmitError::ShuttingDown(_))
    ));
}
