//! Simulated clients and the requests they submit.
//!
//! A request is identified by `(client, seq)`. Its bytes are a pure function
//! of that id (`request_bytes`), so the validity checker can tell a request a
//! client really sent from anything else that shows up in an applied batch.
//!
//! A client keeps a bounded window of requests that were not yet
//! acknowledged. It batches queued requests, hands the batch to the replica
//! it believes is leader, and re-queues requests whose proposal was
//! superseded, whose replica crashed, or that took too long.

use bytes::{BufMut, Bytes, BytesMut};
use paxos_core::Slot;
use std::collections::BTreeMap;

/// The identity of one client request.
pub type RequestId = (u32, u64);

/// The bytes of request `(client, seq)`: client, seq, then a padding whose
/// length and contents derive from the id (so request sizes vary).
pub fn request_bytes(client: u32, seq: u64) -> Bytes {
    let pad = ((seq.wrapping_mul(7) + u64::from(client)) % 24) as usize;
    let mut b = BytesMut::with_capacity(12 + pad);
    b.put_u32_le(client);
    b.put_u64_le(seq);
    for i in 0..pad {
        b.put_u8((seq as u8).wrapping_add(i as u8));
    }
    b.freeze()
}

/// Parses request bytes back into their id, if they are exactly what
/// [`request_bytes`] produces for that id.
pub fn parse_request(bytes: &[u8]) -> Option<RequestId> {
    if bytes.len() < 12 {
        return None;
    }
    let client = u32::from_le_bytes(bytes[0..4].try_into().ok()?);
    let seq = u64::from_le_bytes(bytes[4..12].try_into().ok()?);
    (request_bytes(client, seq) == bytes).then_some((client, seq))
}

/// Where an unacknowledged request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestState {
    /// Waiting to be put in a batch.
    Queued,
    /// Proposed at `slot` by replica index `replica` in its incarnation
    /// `incarnation`; re-queued if not acknowledged by `deadline_us`.
    InFlight {
        /// Replica index the batch went to.
        replica: usize,
        /// That replica's incarnation.
        incarnation: u64,
        /// The slot `propose` returned.
        slot: Slot,
        /// Simulated time after which the client gives up and retries.
        deadline_us: u64,
    },
}

/// One simulated client.
#[derive(Clone, Debug)]
pub struct Client {
    /// Client id (also the first field of each request).
    pub id: u32,
    /// The next sequence number to issue.
    pub next_seq: u64,
    /// Replica index this client sends to.
    pub believed_leader: usize,
    /// Requests issued but not yet acknowledged, by sequence number.
    pub waiting: BTreeMap<u64, RequestState>,
    /// Requests acknowledged so far.
    pub acked: u64,
    /// No request with this sequence number or above is issued (the
    /// liveness phase issues a fixed number of probes, then stops).
    pub issue_limit: u64,
}

impl Client {
    /// A client with nothing outstanding.
    pub fn new(id: u32, believed_leader: usize) -> Client {
        Client {
            id,
            next_seq: 1,
            believed_leader,
            waiting: BTreeMap::new(),
            acked: 0,
            issue_limit: u64::MAX,
        }
    }

    /// Issues new requests until `outstanding` are waiting (or the issue
    /// limit is reached).
    pub fn fill(&mut self, outstanding: usize) {
        while self.waiting.len() < outstanding && self.next_seq < self.issue_limit {
            self.waiting.insert(self.next_seq, RequestState::Queued);
            self.next_seq += 1;
        }
    }

    /// Re-queues in-flight requests whose deadline passed.
    pub fn expire(&mut self, now_us: u64) {
        for state in self.waiting.values_mut() {
            if let RequestState::InFlight { deadline_us, .. } = *state {
                if deadline_us <= now_us {
                    *state = RequestState::Queued;
                }
            }
        }
    }

    /// Re-queues in-flight requests that went to `replica` (any incarnation
    /// older than or equal to `incarnation`), e.g. because it crashed.
    pub fn requeue_replica(&mut self, replica: usize) {
        for state in self.waiting.values_mut() {
            if matches!(*state, RequestState::InFlight { replica: r, .. } if r == replica) {
                *state = RequestState::Queued;
            }
        }
    }

    /// Sequence numbers of up to `max` queued requests, oldest first.
    pub fn queued(&self, max: usize) -> Vec<u64> {
        self.waiting
            .iter()
            .filter(|(_, s)| **s == RequestState::Queued)
            .map(|(seq, _)| *seq)
            .take(max)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn request_bytes_roundtrip(client in any::<u32>(), seq in any::<u64>()) {
            prop_assert_eq!(parse_request(&request_bytes(client, seq)), Some((client, seq)));
        }

        #[test]
        fn arbitrary_bytes_are_not_requests_unless_canonical(raw in proptest::collection::vec(any::<u8>(), 0..40)) {
            if let Some((c, s)) = parse_request(&raw) {
                prop_assert_eq!(request_bytes(c, s).to_vec(), raw);
            }
        }
    }

    #[test]
    fn client_window_and_expiry() {
        let mut c = Client::new(7, 0);
        c.fill(3);
        assert_eq!(c.queued(10), vec![1, 2, 3]);
        c.waiting.insert(
            2,
            RequestState::InFlight {
                replica: 1,
                incarnation: 0,
                slot: 5,
                deadline_us: 100,
            },
        );
        assert_eq!(c.queued(10), vec![1, 3]);
        c.expire(99);
        assert_eq!(c.queued(10), vec![1, 3]);
        c.expire(100);
        assert_eq!(c.queued(10), vec![1, 2, 3]);
        c.waiting.insert(
            3,
            RequestState::InFlight {
                replica: 2,
                incarnation: 0,
                slot: 6,
                deadline_us: 500,
            },
        );
        c.requeue_replica(2);
        assert_eq!(c.queued(2), vec![1, 2]);
    }

    #[test]
    fn issue_limit_stops_new_requests() {
        let mut c = Client::new(1, 0);
        c.issue_limit = 3;
        c.fill(10);
        assert_eq!(c.queued(10), vec![1, 2]);
        c.waiting.clear();
        c.fill(10);
        assert!(c.waiting.is_empty());
    }
}
