//! Requests of one connection submitted together: one submit-queue entry
//! and one completion for everything in order that the RESP server parsed
//! from one socket read, instead of one of each per request.
//!
//! A pipelining client sends hundreds of commands per read. Submitted one
//! by one, each costs a push into the submit ring, a completion cell (an
//! allocation), a message to the connection's writer task and a wake-up of
//! it. An [`InOrderUnit`] gathers them (bounded by [`MAX_UNIT_REQUESTS`] and
//! [`MAX_UNIT_BYTES`]) and costs each of those once per unit.
//!
//! On the replica's loop, [`split_unit`] hands the node one
//! [`RequestCompletion`] per request, as before, so batching, in-order
//! reads and aborts are unchanged; the parts of one unit share a
//! [`UnitCollector`] that gathers their outcomes and resolves the unit's
//! completer once, with every outcome in request order, when the last part
//! is resolved or dropped.
//!
//! Exactly one outcome per request: each part resolves at most once
//! (resolving consumes it) and a part dropped unresolved leaves its place
//! empty, which the collector fills with [`AbortReason::Dropped`]; the unit's
//! completer resolves exactly once (when the collector is dropped, or
//! aborted as a whole with the queue: then every request of the unit gets
//! that abort).

use crate::node::Reply;
use bytes::Bytes;
use paxos_node::RequestKind;
use paxos_pipeline::{AbortReason, Completer, Outcome};
use std::sync::{Arc, OnceLock};

/// Most requests in one unit. A unit is never split across the loop's
/// drains, so this also bounds how far a drain passes the decree's count
/// limit (the node then opens a second decree).
pub const MAX_UNIT_REQUESTS: usize = 64;

/// Most request bytes in one unit (a unit's last request may pass it: a
/// unit closes once it reaches this). Keeps a read of a large buffer from
/// becoming one unbounded unit.
pub const MAX_UNIT_BYTES: usize = 64 * 1024;

/// The outcome of each request of a unit, in the order they were added.
pub type UnitReplies = Vec<Outcome<Reply>>;

/// Requests of one connection to be submitted in order, as one queue entry
/// (see the module docs).
#[derive(Debug, Default)]
pub struct InOrderUnit {
    requests: Vec<(Bytes, RequestKind)>,
    bytes: usize,
}

impl InOrderUnit {
    /// An empty unit.
    pub fn new() -> InOrderUnit {
        InOrderUnit::default()
    }

    /// A unit of one request.
    pub fn of_one(request: Bytes, kind: RequestKind) -> InOrderUnit {
        let mut unit = InOrderUnit::new();
        unit.push(request, kind);
        unit
    }

    /// Adds a request after those already in the unit. The caller closes a
    /// unit that [`is_full`](Self::is_full).
    pub fn push(&mut self, request: Bytes, kind: RequestKind) {
        self.bytes = self.bytes.saturating_add(request.len());
        self.requests.push((request, kind));
    }

    /// Requests in the unit.
    pub fn len(&self) -> usize {
        self.requests.len()
    }

    /// Whether the unit holds no request.
    pub fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }

    /// Request bytes in the unit.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether the unit must be submitted before another request is added.
    pub fn is_full(&self) -> bool {
        self.requests.len() >= MAX_UNIT_REQUESTS || self.bytes >= MAX_UNIT_BYTES
    }

    /// Takes the unit's requests, leaving it empty (its vector's room goes
    /// with them).
    pub fn take(&mut self) -> InOrderUnit {
        std::mem::take(self)
    }

    /// The requests, in order.
    pub fn into_requests(self) -> Vec<(Bytes, RequestKind)> {
        self.requests
    }
}

/// How the node resolves one request: its own completer, or its place in a
/// unit.
#[derive(Debug)]
pub enum RequestCompletion {
    /// A request submitted alone (reads that skip the log, directory
    /// commands).
    Alone(Completer<Reply>),
    /// The only request of a unit: no collector needed.
    SoleOfUnit(Completer<UnitReplies>),
    /// One request of a unit of several.
    InUnit(UnitPart),
}

impl RequestCompletion {
    /// Resolves the request as executed with `reply`.
    pub fn complete(self, reply: Reply) {
        self.resolve(Outcome::Completed(reply));
    }

    /// Resolves the request as aborted for `reason`.
    pub fn abort(self, reason: AbortReason) {
        self.resolve(Outcome::Aborted(reason));
    }

    /// Resolves the request with `outcome`.
    pub fn resolve(self, outcome: Outcome<Reply>) {
        match self {
            RequestCompletion::Alone(completer) => completer.resolve(outcome),
            RequestCompletion::SoleOfUnit(completer) => completer.complete(vec![outcome]),
            RequestCompletion::InUnit(part) => part.resolve(outcome),
        }
    }
}

/// One request's place in a unit. Dropped unresolved, the request's outcome
/// is [`AbortReason::Dropped`].
#[derive(Debug)]
pub struct UnitPart {
    collector: Arc<UnitCollector>,
    index: usize,
}

impl UnitPart {
    fn resolve(self, outcome: Outcome<Reply>) {
        // Each index has exactly one part and resolving consumes it: the
        // place is empty here.
        let fresh = self.collector.outcomes[self.index].set(outcome).is_ok();
        debug_assert!(fresh, "a unit's place resolved twice");
    }
}

/// Gathers the outcomes of a unit's parts; resolves the unit when the last
/// part is gone.
#[derive(Debug)]
struct UnitCollector {
    /// One place per request, filled by its part.
    outcomes: Vec<OnceLock<Outcome<Reply>>>,
    /// `Some` until dropped.
    completer: Option<Completer<UnitReplies>>,
}

impl Drop for UnitCollector {
    fn drop(&mut self) {
        // Every part is gone (each held an `Arc` of this): every place is
        // final.
        let replies = std::mem::take(&mut self.outcomes)
            .into_iter()
            .map(|place| {
                place
                    .into_inner()
                    .unwrap_or(Outcome::Aborted(AbortReason::Dropped))
            })
            .collect();
        if let Some(completer) = self.completer.take() {
            completer.complete(replies);
        }
    }
}

/// Splits a drained unit into one `(request, completion, kind)` per
/// request, in order, appended to `out` (the node's input).
pub fn split_unit(
    unit: InOrderUnit,
    completer: Completer<UnitReplies>,
    out: &mut Vec<(Bytes, RequestCompletion, RequestKind)>,
) {
    let mut requests = unit.into_requests();
    match requests.len() {
        0 => completer.complete(Vec::new()),
        1 => {
            let (request, kind) = requests.pop().expect("one request");
            out.push((request, RequestCompletion::SoleOfUnit(completer), kind));
        }
        n => {
            let collector = Arc::new(UnitCollector {
                outcomes: (0..n).map(|_| OnceLock::new()).collect(),
                completer: Some(completer),
            });
            out.extend(
                requests
                    .into_iter()
                    .enumerate()
                    .map(|(index, (request, kind))| {
                        let part = UnitPart {
                            collector: Arc::clone(&collector),
                            index,
                        };
                        (request, RequestCompletion::InUnit(part), kind)
                    }),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use paxos_core::Slot;
    use paxos_pipeline::completion;

    fn reply(text: &'static str, slot: u64) -> Reply {
        Reply {
            bytes: Bytes::from_static(text.as_bytes()),
            slot: Slot(slot),
            applied_us: 0,
        }
    }

    fn unit_of(texts: &[&'static str]) -> InOrderUnit {
        let mut unit = InOrderUnit::new();
        for (i, t) in texts.iter().enumerate() {
            let kind = if i % 2 == 0 {
                RequestKind::Write
            } else {
                RequestKind::Read
            };
            unit.push(Bytes::from_static(t.as_bytes()), kind);
        }
        unit
    }

    #[test]
    fn a_unit_closes_at_its_count_or_byte_bound() {
        let mut unit = InOrderUnit::new();
        for _ in 0..MAX_UNIT_REQUESTS - 1 {
            unit.push(Bytes::from_static(b"x"), RequestKind::Write);
            assert!(!unit.is_full());
        }
        unit.push(Bytes::from_static(b"x"), RequestKind::Read);
        assert!(unit.is_full());
        assert_eq!(unit.len(), MAX_UNIT_REQUESTS);
        let taken = unit.take();
        assert!(unit.is_empty() && unit.bytes() == 0 && !unit.is_full());
        assert_eq!(taken.len(), MAX_UNIT_REQUESTS);

        unit.push(Bytes::from(vec![0; MAX_UNIT_BYTES - 1]), RequestKind::Write);
        assert!(!unit.is_full());
        unit.push(Bytes::from_static(b"y"), RequestKind::Write);
        assert!(unit.is_full(), "full at the byte bound");
        assert_eq!(unit.bytes(), MAX_UNIT_BYTES);
    }

    /// Parts resolved out of order (as reads and writes of different
    /// decrees are) still give the outcomes in request order, once.
    #[test]
    fn a_unit_resolves_once_with_every_outcome_in_request_order() {
        let (completer, mut handle) = completion();
        let mut out = Vec::new();
        split_unit(unit_of(&["a", "b", "c"]), completer, &mut out);
        assert_eq!(
            out.iter().map(|(r, _, k)| (&r[..], *k)).collect::<Vec<_>>(),
            [
                (&b"a"[..], RequestKind::Write),
                (&b"b"[..], RequestKind::Read),
                (&b"c"[..], RequestKind::Write)
            ]
        );
        let mut parts: Vec<_> = out.into_iter().map(|(_, c, _)| c).collect();
        let third = parts.pop().unwrap();
        let second = parts.pop().unwrap();
        let first = parts.pop().unwrap();
        third.complete(reply("C", 7));
        first.complete(reply("A", 6));
        assert!(handle.try_take().is_none(), "a part is still out");
        second.abort(AbortReason::NotPrimary {
            leader_hint: Some(2),
        });
        assert_eq!(
            handle.try_take(),
            Some(Outcome::Completed(vec![
                Outcome::Completed(reply("A", 6)),
                Outcome::Aborted(AbortReason::NotPrimary {
                    leader_hint: Some(2)
                }),
                Outcome::Completed(reply("C", 7)),
            ]))
        );
    }

    /// A part dropped unresolved (a crash path in the loop) still gives its
    /// request an outcome, and the unit still resolves.
    #[test]
    fn a_dropped_part_is_answered_dropped_and_the_unit_resolves() {
        let (completer, mut handle) = completion();
        let mut out = Vec::new();
        split_unit(unit_of(&["a", "b"]), completer, &mut out);
        let mut parts: Vec<_> = out.into_iter().map(|(_, c, _)| c).collect();
        let second = parts.pop().unwrap();
        drop(parts);
        assert!(handle.try_take().is_none());
        second.complete(reply("B", 3));
        assert_eq!(
            handle.try_take(),
            Some(Outcome::Completed(vec![
                Outcome::Aborted(AbortReason::Dropped),
                Outcome::Completed(reply("B", 3)),
            ]))
        );
    }

    #[test]
    fn a_unit_of_one_needs_no_collector_and_still_gives_one_outcome() {
        let (completer, mut handle) = completion();
        let mut out = Vec::new();
        split_unit(unit_of(&["a"]), completer, &mut out);
        let (_, part, _) = out.pop().unwrap();
        assert!(matches!(part, RequestCompletion::SoleOfUnit(_)));
        part.abort(AbortReason::ShuttingDown);
        assert_eq!(
            handle.try_take(),
            Some(Outcome::Completed(vec![Outcome::Aborted(
                AbortReason::ShuttingDown
            )]))
        );

        // Dropped unresolved: the unit's own completer says so.
        let (completer, mut handle) = completion();
        split_unit(unit_of(&["a"]), completer, &mut out);
        drop(out.pop());
        assert_eq!(
            handle.try_take(),
            Some(Outcome::Aborted(AbortReason::Dropped))
        );
    }

    #[test]
    fn an_empty_unit_resolves_at_once_with_no_outcome() {
        let (completer, mut handle) = completion();
        let mut out = Vec::new();
        split_unit(InOrderUnit::new(), completer, &mut out);
        assert!(out.is_empty());
        assert_eq!(handle.try_take(), Some(Outcome::Completed(Vec::new())));
    }
}
