//! Requests of one connection submitted together: one submit-queue entry
//! and one completion for everything in order that the RESP server parsed
//! from one socket read, instead of one of each per request.
//!
//! A pipelining client sends hundreds of commands per read. Submitted one
//! by one, each costs a push into a submit ring, a completion cell (an
//! allocation), a message to the connection's writer task and a wake-up of
//! it. A [`RequestUnit`] gathers them (bounded by [`MAX_UNIT_REQUESTS`] and
//! [`MAX_UNIT_BYTES`]) and costs each of those once per unit. Two kinds go
//! this way, each through its own queue: an [`InOrderUnit`] (writes, and
//! reads answered in order with them) and a [`ReadUnit`] (reads that skip
//! the log, all of one consistency).
//!
//! On the replica's loop, [`split_unit`] hands the node one
//! [`RequestCompletion`] per request, as before, so batching, in-order
//! reads, read confirmation and aborts are unchanged; the parts of one
//! unit share a [`UnitCollector`] that gathers their outcomes and resolves
//! the unit's completer once, with every outcome in request order, when the
//! last part is resolved or dropped.
//!
//! Exactly one outcome per request: each part resolves at most once
//! (resolving consumes it) and a part dropped unresolved leaves its place
//! empty, which the collector fills with [`AbortReason::Dropped`]; the unit's
//! completer resolves exactly once (when the collector is dropped, or
//! aborted as a whole with the queue: then every request of the unit gets
//! that abort).
//!
//! A unit of one (an unpipelined client) allocates nothing beyond what a
//! request submitted alone did: its request is held inline, not in a
//! vector, and its outcome is [`UnitReplies::One`].

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
/// A unit of one needs no vector (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnitReplies {
    /// The outcome of a unit's only request.
    One(Outcome<Reply>),
    /// The outcomes of a unit's requests, in order.
    Many(Vec<Outcome<Reply>>),
}

impl UnitReplies {
    /// How many outcomes.
    pub fn len(&self) -> usize {
        match self {
            UnitReplies::One(_) => 1,
            UnitReplies::Many(outcomes) => outcomes.len(),
        }
    }

    /// Whether there is no outcome (only a unit of no request).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The outcomes, in request order.
    pub fn into_vec(self) -> Vec<Outcome<Reply>> {
        self.into_iter().collect()
    }
}

impl IntoIterator for UnitReplies {
    type Item = Outcome<Reply>;
    type IntoIter =
        std::iter::Chain<std::option::IntoIter<Outcome<Reply>>, std::vec::IntoIter<Outcome<Reply>>>;

    fn into_iter(self) -> Self::IntoIter {
        match self {
            UnitReplies::One(outcome) => Some(outcome).into_iter().chain(Vec::new()),
            UnitReplies::Many(outcomes) => None.into_iter().chain(outcomes),
        }
    }
}

/// Requests of one connection to be submitted as one queue entry, each
/// with its `tag` (see the module docs): its first request inline, the
/// rest in a vector allocated only for a second one.
#[derive(Debug)]
pub struct RequestUnit<Tag> {
    first: Option<(Bytes, Tag)>,
    rest: Vec<(Bytes, Tag)>,
    bytes: usize,
}

/// Writes, and reads answered in order with them, of one connection, in
/// the order sent ([`crate::node::Replica::submit_in_order`]).
pub type InOrderUnit = RequestUnit<RequestKind>;

/// Reads of one connection that skip the log, in the order sent, all of
/// one consistency ([`crate::node::Replica::submit_reads`]).
pub type ReadUnit = RequestUnit<()>;

impl<Tag> Default for RequestUnit<Tag> {
    fn default() -> Self {
        RequestUnit {
            first: None,
            rest: Vec::new(),
            bytes: 0,
        }
    }
}

impl<Tag> RequestUnit<Tag> {
    /// An empty unit.
    pub fn new() -> RequestUnit<Tag> {
        RequestUnit::default()
    }

    /// A unit of one request.
    pub fn of_one(request: Bytes, tag: Tag) -> RequestUnit<Tag> {
        let mut unit = RequestUnit::new();
        unit.push(request, tag);
        unit
    }

    /// Adds a request after those already in the unit. The caller closes a
    /// unit that [`is_full`](Self::is_full).
    pub fn push(&mut self, request: Bytes, tag: Tag) {
        self.bytes = self.bytes.saturating_add(request.len());
        if self.first.is_none() {
            self.first = Some((request, tag));
        } else {
            self.rest.push((request, tag));
        }
    }

    /// Requests in the unit.
    pub fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }

    /// Whether the unit holds no request.
    pub fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    /// Request bytes in the unit.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// What the unit weighs in the loop's drain: its requests and their
    /// bytes (the drain's limits count requests, not units).
    pub fn weight(&self) -> paxos_pipeline::Weight {
        paxos_pipeline::Weight {
            count: self.len(),
            bytes: self.bytes,
        }
    }

    /// Whether the unit must be submitted before another request is added.
    pub fn is_full(&self) -> bool {
        self.len() >= MAX_UNIT_REQUESTS || self.bytes >= MAX_UNIT_BYTES
    }

    /// Takes the unit's requests, leaving it empty (its vector's room goes
    /// with them).
    pub fn take(&mut self) -> RequestUnit<Tag> {
        std::mem::take(self)
    }

    /// The requests, in order.
    pub fn into_requests(self) -> impl Iterator<Item = (Bytes, Tag)> {
        self.first.into_iter().chain(self.rest)
    }
}

/// How the node resolves one request: its own completer, or its place in a
/// unit.
#[derive(Debug)]
pub enum RequestCompletion {
    /// A request submitted alone (directory commands).
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
            RequestCompletion::SoleOfUnit(completer) => {
                completer.complete(UnitReplies::One(outcome))
            }
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
            completer.complete(UnitReplies::Many(replies));
        }
    }
}

/// Splits a drained unit into one entry per request, in order, appended
/// to `out` (the node's input): `entry` makes it from the request, its
/// completion and its tag.
pub fn split_unit<Tag, Entry>(
    unit: RequestUnit<Tag>,
    completer: Completer<UnitReplies>,
    out: &mut Vec<Entry>,
    mut entry: impl FnMut(Bytes, RequestCompletion, Tag) -> Entry,
) {
    match unit.len() {
        0 => completer.complete(UnitReplies::Many(Vec::new())),
        1 => {
            if let Some((request, tag)) = unit.into_requests().next() {
                out.push(entry(
                    request,
                    RequestCompletion::SoleOfUnit(completer),
                    tag,
                ));
            }
        }
        n => {
            let collector = Arc::new(UnitCollector {
                outcomes: (0..n).map(|_| OnceLock::new()).collect(),
                completer: Some(completer),
            });
            out.reserve(n);
            for (index, (request, tag)) in unit.into_requests().enumerate() {
                let part = UnitPart {
                    collector: Arc::clone(&collector),
                    index,
                };
                out.push(entry(request, RequestCompletion::InUnit(part), tag));
            }
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

    /// The in-order loop's entry: request, completion, kind.
    fn entry(
        request: Bytes,
        completion: RequestCompletion,
        kind: RequestKind,
    ) -> (Bytes, RequestCompletion, RequestKind) {
        (request, completion, kind)
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
        split_unit(unit_of(&["a", "b", "c"]), completer, &mut out, entry);
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
            Some(Outcome::Completed(UnitReplies::Many(vec![
                Outcome::Completed(reply("A", 6)),
                Outcome::Aborted(AbortReason::NotPrimary {
                    leader_hint: Some(2)
                }),
                Outcome::Completed(reply("C", 7)),
            ])))
        );
    }

    /// A part dropped unresolved (a crash path in the loop) still gives its
    /// request an outcome, and the unit still resolves.
    #[test]
    fn a_dropped_part_is_answered_dropped_and_the_unit_resolves() {
        let (completer, mut handle) = completion();
        let mut out = Vec::new();
        split_unit(unit_of(&["a", "b"]), completer, &mut out, entry);
        let mut parts: Vec<_> = out.into_iter().map(|(_, c, _)| c).collect();
        let second = parts.pop().unwrap();
        drop(parts);
        assert!(handle.try_take().is_none());
        second.complete(reply("B", 3));
        assert_eq!(
            handle.try_take(),
            Some(Outcome::Completed(UnitReplies::Many(vec![
                Outcome::Aborted(AbortReason::Dropped),
                Outcome::Completed(reply("B", 3)),
            ])))
        );
    }

    #[test]
    fn a_unit_of_one_needs_no_collector_and_still_gives_one_outcome() {
        let (completer, mut handle) = completion();
        let mut out = Vec::new();
        split_unit(unit_of(&["a"]), completer, &mut out, entry);
        let (_, part, _) = out.pop().unwrap();
        assert!(matches!(part, RequestCompletion::SoleOfUnit(_)));
        part.abort(AbortReason::ShuttingDown);
        assert_eq!(
            handle.try_take(),
            Some(Outcome::Completed(UnitReplies::One(Outcome::Aborted(
                AbortReason::ShuttingDown
            ))))
        );

        // Dropped unresolved: the unit's own completer says so.
        let (completer, mut handle) = completion();
        split_unit(unit_of(&["a"]), completer, &mut out, entry);
        drop(out.pop());
        assert_eq!(
            handle.try_take(),
            Some(Outcome::Aborted(AbortReason::Dropped))
        );
    }

    /// An unpipelined client's unit costs no allocation of its own: its
    /// request is held inline and its outcome needs no vector.
    #[test]
    fn a_unit_of_one_allocates_no_vector() {
        let unit = ReadUnit::of_one(Bytes::from_static(b"g"), ());
        assert_eq!((unit.len(), unit.bytes()), (1, 1));
        assert_eq!(unit.rest.capacity(), 0, "a unit of one allocated a vector");
        let (completer, mut handle) = completion();
        let mut out = Vec::new();
        split_unit(unit, completer, &mut out, |request, part, ()| {
            (request, part)
        });
        let (request, part) = out.pop().unwrap();
        assert_eq!(&request[..], b"g");
        part.complete(reply("G", 4));
        let replies = match handle.try_take() {
            Some(Outcome::Completed(replies)) => replies,
            other => panic!("{other:?}"),
        };
        assert_eq!(replies, UnitReplies::One(Outcome::Completed(reply("G", 4))));
        assert_eq!(replies.len(), 1);
        assert_eq!(replies.into_vec(), [Outcome::Completed(reply("G", 4))]);
    }

    /// A unit of reads splits into the read loop's entries, in order, each
    /// with the unit's consistency, and resolves once in request order.
    #[test]
    fn a_unit_of_reads_splits_into_reads_of_its_consistency() {
        use paxos_core::Slot;
        use paxos_node::ReadConsistency;
        let mut unit = ReadUnit::new();
        for t in ["x", "y", "z"] {
            unit.push(Bytes::from_static(t.as_bytes()), ());
        }
        let consistency = ReadConsistency::AtLeast(Slot(9));
        let (completer, mut handle) = completion();
        let mut out = Vec::new();
        split_unit(unit, completer, &mut out, |request, part, ()| {
            (request, consistency, part)
        });
        assert_eq!(
            out.iter().map(|(r, c, _)| (&r[..], *c)).collect::<Vec<_>>(),
            [
                (&b"x"[..], consistency),
                (&b"y"[..], consistency),
                (&b"z"[..], consistency)
            ]
        );
        for (n, (_, _, part)) in out.into_iter().enumerate().rev() {
            part.complete(reply("R", n as u64));
        }
        let replies = match handle.try_take() {
            Some(Outcome::Completed(replies)) => replies.into_vec(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            replies,
            (0..3)
                .map(|n| Outcome::Completed(reply("R", n)))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn an_empty_unit_resolves_at_once_with_no_outcome() {
        let (completer, mut handle) = completion();
        let mut out = Vec::new();
        split_unit(InOrderUnit::new(), completer, &mut out, entry);
        assert!(out.is_empty());
        assert_eq!(
            handle.try_take(),
            Some(Outcome::Completed(UnitReplies::Many(Vec::new())))
        );
    }
}
