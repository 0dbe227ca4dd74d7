//! Wire messages exchanged between replicas.
//!
//! Every message that reports acceptor state (`Promise`, `Accepted`) is sent
//! only after the persist it depends on completed. Every message carrying a
//! ballot lets the receiver learn that the ballot exists (a leader that sees a
//! higher ballot steps down). See [`crate::codec`] for the binary encoding.

use crate::types::{Accepted, Ballot, Slot, Value};

/// A message between two replicas.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Phase 1a: "promise `ballot`, and tell me what you accepted at slots
    /// `>= from_slot`". A candidate sends one with `from_slot` = its commit
    /// index + 1, then one more per chunk the acceptor announced.
    Prepare {
        /// The candidate's ballot.
        ballot: Ballot,
        /// First slot the acceptor should report.
        from_slot: Slot,
    },
    /// Phase 1b: the acceptor promised `ballot` (durably) and reports its
    /// accepted entries at slots `>= from_slot`, one chunk at a time.
    Promise {
        /// The promised ballot (equals the prepare's).
        ballot: Ballot,
        /// Echo of the prepare's `from_slot`: the first slot this chunk covers.
        from_slot: Slot,
        /// The acceptor's commit index (informational: lets the candidate
        /// know that it is behind).
        commit_index: Slot,
        /// The first slot the acceptor still holds in memory. If it is above
        /// `from_slot`, the chunk is incomplete and the candidate must not use
        /// it (it has to catch up first).
        log_start: Slot,
        /// Accepted entries in `[from_slot, next_from)`, in slot order.
        entries: Vec<Accepted>,
        /// `Some(s)`: more entries from slot `s` on; ask again with
        /// `Prepare { from_slot: s }`. `None`: this was the last chunk.
        next_from: Option<Slot>,
    },
    /// Phase 2a: "accept `value` at `slot` in `ballot`". Piggybacks the
    /// leader's commit index, which names `ballot` as the ballot whose
    /// accepted values up to `commit_index` are chosen.
    Accept {
        /// The leader's ballot.
        ballot: Ballot,
        /// The slot.
        slot: Slot,
        /// The proposed value.
        value: Value,
        /// The leader's commit index.
        commit_index: Slot,
    },
    /// Phase 2b: the acceptor durably accepted the leader's value at `slot`.
    Accepted {
        /// The ballot of the accepted value.
        ballot: Ballot,
        /// The slot.
        slot: Slot,
        /// The acceptor's commit index (progress report for the leader).
        commit_index: Slot,
    },
    /// The leader is alive; slots up to `commit_index` are chosen, and an
    /// entry accepted in `ballot` at such a slot holds the chosen value.
    Heartbeat {
        /// The leader's ballot.
        ballot: Ballot,
        /// The leader's commit index.
        commit_index: Slot,
    },
    /// Reply to a heartbeat: progress and eligibility of the follower.
    HeartbeatAck {
        /// The heartbeat's ballot.
        ballot: Ballot,
        /// The follower's commit index.
        commit_index: Slot,
        /// Whether the follower's application allows it to become primary.
        can_become_primary: bool,
    },
    /// The receiver's ballot is stale: the sender promised `promised`.
    Reject {
        /// The ballot the sender promised, higher than the one it rejects.
        promised: Ballot,
    },
    /// Catch-up request: "send me chosen decrees from `from_slot` on".
    Fetch {
        /// The first slot wanted.
        from_slot: Slot,
    },
    /// Catch-up reply: chosen decrees from `from_slot` on, in slot order and
    /// contiguous. Empty if the sender has none of them.
    Decrees {
        /// Echo of the fetch's `from_slot`.
        from_slot: Slot,
        /// The sender's commit index.
        commit_index: Slot,
        /// The first slot the sender still holds; if above `from_slot`, the
        /// sender compacted the slots that were asked for.
        log_start: Slot,
        /// Chosen decrees (each with the ballot it was accepted in).
        decrees: Vec<Accepted>,
    },
    /// Sent by a leader that relinquishes: "start phase 1 now with a ballot
    /// above `ballot`". Honoured only from the current leader.
    TimeoutNow {
        /// The sender's (leader's) ballot.
        ballot: Ballot,
    },
}

impl Message {
    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Prepare { .. } => "prepare",
            Message::Promise { .. } => "promise",
            Message::Accept { .. } => "accept",
            Message::Accepted { .. } => "accepted",
            Message::Heartbeat { .. } => "heartbeat",
            Message::HeartbeatAck { .. } => "heartbeat-ack",
            Message::Reject { .. } => "reject",
            Message::Fetch { .. } => "fetch",
            Message::Decrees { .. } => "decrees",
            Message::TimeoutNow { .. } => "timeout-now",
        }
    }
}
