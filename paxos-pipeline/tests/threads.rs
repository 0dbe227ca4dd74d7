//! Real threads through the whole pipeline: submitters block for room, the
//! consumer drains batches and completes each request on its own thread, and
//! every submitter gets back exactly its own result.
#![cfg(not(paxos_loom))]

use paxos_pipeline::{pipeline, DrainLimits, Outcome, Readiness};

#[test]
fn every_request_gets_its_own_result_exactly_once() {
    const SUBMITTERS: u64 = 4;
    const PER_SUBMITTER: u64 = 2_000;
    let (submitter, mut consumer) = pipeline::<u64, u64>(16).unwrap();
    let consumer_thread = std::thread::spawn(move || {
        let limits = DrainLimits {
            max_count: 7,
            max_bytes: usize::MAX,
            per_item_overhead: 0,
        };
        let mut batch = Vec::with_capacity(7);
        let mut completed = 0u64;
        while consumer.ready_blocking() == Readiness::Items {
            consumer.drain_batch_by(limits, |_| 8, |request| batch.push(request));
            for request in batch.drain(..) {
                request.completer.complete(request.payload * 2 + 1);
                completed += 1;
            }
        }
        completed
    });
    let submitters: Vec<_> = (0..SUBMITTERS)
        .map(|s| {
            let submitter = submitter.clone();
            std::thread::spawn(move || {
                // Keep up to 32 requests outstanding, then wait for the oldest.
                let mut outstanding = std::collections::VecDeque::new();
                for i in 0..PER_SUBMITTER {
                    let payload = s << 32 | i;
                    outstanding.push_back((payload, submitter.submit_blocking(payload).unwrap()));
                    if outstanding.len() == 32 {
                        let (payload, handle) = outstanding.pop_front().unwrap();
                        assert_eq!(handle.wait(), Outcome::Completed(payload * 2 + 1));
                    }
                }
                for (payload, handle) in outstanding {
                    assert_eq!(handle.wait(), Outcome::Completed(payload * 2 + 1));
                }
            })
        })
        .collect();
    drop(submitter);
    for s in submitters {
        s.join().unwrap();
    }
    // The last submitter clone is gone, so the queue closed and the consumer
    // finished.
    assert_eq!(consumer_thread.join().unwrap(), SUBMITTERS * PER_SUBMITTER);
}
