//! Wire messages exchanged between replicas.
//!
//! [`Message`] is an enum of tuple variants, each wrapping a struct of the
//! same name defined here: `Message::Accept(msg::Accept { .. })`. A handler
//! takes its message's struct by value (`fn on_accept(&mut self, now, from,
//! m: msg::Accept)`), so a message's fields are named once, here, and not
//! repeated as positional arguments.
//!
//! The structs live in this `msg` module, and are always written with the
//! `msg::` prefix outside it, because two of the names are also vocabulary
//! types at the crate root: `msg::Accepted` is the phase 2b *message*, while
//! [`crate::Accepted`] is an accepted log *entry* (slot, ballot, value) that
//! `Promise` and `Decrees` carry.
//!
//! Every message that reports acceptor state (`Promise`, `Accepted`) is sent
//! only after the persist it depends on completed. Every message carrying a
//! ballot lets the receiver learn that the ballot exists (a leader that sees a
//! higher ballot steps down). See [`crate::codec`] for the binary encoding.

use crate::types::{self, Ballot, Slot, Value};

/// A message between two replicas.
///
/// `Debug` prints the wrapped struct only (`Prepare { ballot: .., from_slot:
/// .. }`), as the variant and the struct share their name.
#[derive(Clone, PartialEq, Eq)]
pub enum Message {
    /// Phase 1a. See [`Prepare`].
    Prepare(Prepare),
    /// Phase 1b. See [`Promise`].
    Promise(Promise),
    /// Phase 2a. See [`Accept`].
    Accept(Accept),
    /// Phase 2b. See [`Accepted`].
    Accepted(Accepted),
    /// Leader liveness and commit index. See [`Heartbeat`].
    Heartbeat(Heartbeat),
    /// Reply to a heartbeat. See [`HeartbeatAck`].
    HeartbeatAck(HeartbeatAck),
    /// Stale ballot. See [`Reject`].
    Reject(Reject),
    /// Catch-up request. See [`Fetch`].
    Fetch(Fetch),
    /// Catch-up reply. See [`Decrees`].
    Decrees(Decrees),
    /// Leadership hand-off. See [`TimeoutNow`].
    TimeoutNow(TimeoutNow),
    /// A repairing replica's question. See [`RepairQuery`].
    RepairQuery(RepairQuery),
    /// The answer. See [`RepairAnswer`].
    RepairAnswer(RepairAnswer),
    /// "Could I win an election?" See [`PreVote`].
    PreVote(PreVote),
    /// The answer. See [`PreVoteReply`].
    PreVoteReply(PreVoteReply),
}

/// Phase 1a: "promise `ballot`, and tell me what you accepted at slots
/// `>= from_slot`". A candidate sends one with `from_slot` = its commit
/// index + 1, then one more per chunk the acceptor announced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prepare {
    /// The candidate's ballot.
    pub ballot: Ballot,
    /// First slot the acceptor should report.
    pub from_slot: Slot,
}

/// Phase 1b: the acceptor promised `ballot` (durably) and reports its
/// accepted entries at slots `>= from_slot`, one chunk at a time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Promise {
    /// The promised ballot (equals the prepare's).
    pub ballot: Ballot,
    /// Echo of the prepare's `from_slot`: the first slot this chunk covers.
    pub from_slot: Slot,
    /// The acceptor's commit index (informational: lets the candidate
    /// know that it is behind).
    pub commit_index: Slot,
    /// The first slot the acceptor still holds in memory. If it is above
    /// `from_slot`, the chunk is incomplete and the candidate must not use
    /// it (it has to catch up first).
    pub log_start: Slot,
    /// Accepted entries in `[from_slot, next_from)`, in slot order.
    pub entries: Vec<types::Accepted>,
    /// `Some(s)`: more entries from slot `s` on; ask again with
    /// `Prepare { from_slot: s }`. `None`: this was the last chunk.
    pub next_from: Option<Slot>,
}

/// Phase 2a: "accept `value` at `slot` in `ballot`". Piggybacks the
/// leader's commit index, which names `ballot` as the ballot whose
/// accepted values up to `commit_index` are chosen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accept {
    /// The leader's ballot.
    pub ballot: Ballot,
    /// The slot.
    pub slot: Slot,
    /// The proposed value.
    pub value: Value,
    /// The leader's commit index.
    pub commit_index: Slot,
}

/// Phase 2b: the acceptor durably accepted the leader's value at `slot`.
/// (Not to be confused with [`crate::Accepted`], a log entry.)
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// The ballot of the accepted value.
    pub ballot: Ballot,
    /// The slot.
    pub slot: Slot,
    /// The acceptor's commit index (progress report for the leader).
    pub commit_index: Slot,
}

/// The leader is alive; slots up to `commit_index` are chosen, and an
/// entry accepted in `ballot` at such a slot holds the chosen value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    /// The leader's ballot.
    pub ballot: Ballot,
    /// The leader's commit index.
    pub commit_index: Slot,
    /// The leader's latest read round in `ballot` when it sent this: an
    /// acknowledgement echoing it proves the acknowledging voter had not
    /// promised a higher ballot after that round started (ReadIndex and
    /// leases, see the replica's `reads` module).
    pub read_round: u64,
}

/// Reply to a heartbeat: progress and eligibility of the follower.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeartbeatAck {
    /// The heartbeat's ballot.
    pub ballot: Ballot,
    /// The follower's commit index.
    pub commit_index: Slot,
    /// Every slot up to this one was handed to the follower's state
    /// machine: a bounded-staleness read there (`AtLeast(s)`, paxos-kv's
    /// `READONLY`) reflects at least this slot. Never above `commit_index`
    /// (a replica applies only what it knows chosen; the codec rejects a
    /// frame that claims more). Below it only while the follower waits for
    /// a checkpoint.
    pub applied_index: Slot,
    /// Whether the follower's application allows it to become primary.
    pub can_become_primary: bool,
    /// Echo of the heartbeat's `read_round`.
    pub read_round: u64,
}

/// The receiver's ballot is stale: the sender promised `promised`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reject {
    /// The ballot the sender promised, higher than the one it rejects.
    pub promised: Ballot,
}

/// Catch-up request: "send me chosen decrees from `from_slot` on".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetch {
    /// The first slot wanted.
    pub from_slot: Slot,
}

/// Catch-up reply: chosen decrees from `from_slot` on, in slot order and
/// contiguous. Empty if the sender has none of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decrees {
    /// Echo of the fetch's `from_slot`.
    pub from_slot: Slot,
    /// The sender's commit index.
    pub commit_index: Slot,
    /// The first slot the sender still holds; if above `from_slot`, the
    /// sender compacted the slots that were asked for.
    pub log_start: Slot,
    /// Chosen decrees (each with the ballot it was accepted in).
    pub decrees: Vec<types::Accepted>,
}

/// Sent by a leader that relinquishes: "start phase 1 now with a ballot
/// above `ballot`". Honoured only from the current leader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimeoutNow {
    /// The sender's (leader's) ballot.
    pub ballot: Ballot,
}

/// From a replica whose storage lost data it may have acknowledged (it is
/// repairing, invariant 11): "what did you promise, and how far does your
/// log reach?" Every replica answers, whatever its role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepairQuery {
    /// The asker's commit index (informational).
    pub commit_index: Slot,
}

/// The answer to a [`RepairQuery`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepairAnswer {
    /// The highest ballot the sender promised.
    pub promised: Ballot,
    /// The highest slot the sender holds an entry for (or its commit index,
    /// if higher).
    pub max_slot: Slot,
    /// The sender's commit index.
    pub commit_index: Slot,
    /// The voters of the sender's membership, and of every `Reconfigure`
    /// it accepted above its commit index: they must be asked too.
    pub voters: Vec<crate::ReplicaId>,
    /// The sender is repairing itself: its state may be incomplete.
    pub suspect: bool,
}

/// Pre-vote: a voter whose election timer ran out asks every voter
/// whether it would stand a chance before it raises any ballot. Nothing
/// is persisted and no promise changes on either side; see the election
/// module for when a voter grants one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreVote {
    /// Identifies this round of pre-votes (replies echo it): above every
    /// ballot the asker saw and every earlier round of its pre-votes. It
    /// is promised to nobody and not observed as a ballot.
    pub ballot: Ballot,
    /// The asker's commit index: phase 1 would start at the slot after it.
    pub commit_index: Slot,
}

/// The answer to a [`PreVote`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreVoteReply {
    /// Echo of the pre-vote's ballot.
    pub ballot: Ballot,
    /// Whether the sender would take part in the asker's phase 1: it heard
    /// from no other live leader or candidate within its minimum election
    /// timeout, the asker's commit index is not below its own, and it
    /// still holds every slot above the asker's commit index.
    pub granted: bool,
    /// The ballot the sender promised (a candidate campaigns above it).
    pub promised: Ballot,
    /// The sender's commit index (an asker that is behind catches up).
    pub commit_index: Slot,
}

impl Message {
    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Prepare(_) => "prepare",
            Message::Promise(_) => "promise",
            Message::Accept(_) => "accept",
            Message::Accepted(_) => "accepted",
            Message::Heartbeat(_) => "heartbeat",
            Message::HeartbeatAck(_) => "heartbeat-ack",
            Message::Reject(_) => "reject",
            Message::Fetch(_) => "fetch",
            Message::Decrees(_) => "decrees",
            Message::TimeoutNow(_) => "timeout-now",
            Message::RepairQuery(_) => "repair-query",
            Message::RepairAnswer(_) => "repair-answer",
            Message::PreVote(_) => "pre-vote",
            Message::PreVoteReply(_) => "pre-vote-reply",
        }
    }
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Message::Prepare(m) => m.fmt(f),
            Message::Promise(m) => m.fmt(f),
            Message::Accept(m) => m.fmt(f),
            Message::Accepted(m) => m.fmt(f),
            Message::Heartbeat(m) => m.fmt(f),
            Message::HeartbeatAck(m) => m.fmt(f),
            Message::Reject(m) => m.fmt(f),
            Message::Fetch(m) => m.fmt(f),
            Message::Decrees(m) => m.fmt(f),
            Message::TimeoutNow(m) => m.fmt(f),
            Message::RepairQuery(m) => m.fmt(f),
            Message::RepairAnswer(m) => m.fmt(f),
            Message::PreVote(m) => m.fmt(f),
            Message::PreVoteReply(m) => m.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ReplicaId;

    #[test]
    fn debug_prints_the_wrapped_struct_under_the_variant_name() {
        let m = Message::Prepare(Prepare {
            ballot: Ballot::new(3, ReplicaId(2)),
            from_slot: Slot(7),
        });
        assert_eq!(
            format!("{m:?}"),
            "Prepare { ballot: Ballot { round: 3, leader: ReplicaId(2) }, from_slot: Slot(7) }"
        );
        let m = Message::Fetch(Fetch { from_slot: Slot(9) });
        assert_eq!(format!("{m:?}"), "Fetch { from_slot: Slot(9) }");
    }
}
