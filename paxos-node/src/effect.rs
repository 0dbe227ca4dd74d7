//! What a [`crate::Node`] asks its driver to do.
//!
//! Effects come out of [`crate::Node::poll_effect`] in the order they must
//! be carried out. Each one is I/O the node cannot do itself (it is
//! sans-IO); the driver reports completions back through the node's input
//! methods. Nothing here blocks the node: a driver may carry out
//! `Persist`, `SaveCheckpoint` and `ServeChunk` in the background, as long
//! as persists complete in order.

use bytes::Bytes;
use paxos_core::{PersistEntry, PersistToken, ReplicaId, Slot, Time};
use paxos_log::checkpoint::{CheckpointMeta, Chunk};
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// Identifies one `Persist` effect. `epoch` changes whenever the node
/// restarts its core (after installing a checkpoint); completions of an
/// older epoch are ignored, so a driver never has to flush its queue of
/// outstanding persists at that moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PersistId {
    /// The core instance that issued it.
    pub epoch: u64,
    /// The core's token.
    pub token: PersistToken,
}

/// Identifies one [`Effect::ReadDecrees`]: report what was read with
/// [`crate::Node::on_decrees_read`]. Reads of an older `epoch` (a core
/// since replaced by a checkpoint install) are ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DecreesRead {
    /// The core instance that asked.
    pub epoch: u64,
    /// The peer whose fetch it serves.
    pub peer: ReplicaId,
    /// The first slot to read.
    pub from: Slot,
}

/// Why a request got no reply from the state machine. Exactly one of these
/// or a reply reaches every submitted request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbortReason {
    /// Never proposed: this replica is not the primary. It will certainly
    /// never execute, so the client may retry at the leader.
    NotPrimary {
        /// The primary this replica believes in.
        leader: Option<ReplicaId>,
    },
    /// Proposed, but this replica lost track of it (leadership changed, or
    /// the node restarted its core): it may or may not execute.
    OutcomeUnknown,
    /// Larger than a whole decree may be; never proposed.
    TooLarge,
    /// The core refused the proposal for another reason; never proposed.
    Refused,
    /// The node is shutting down; proposed or not is unknown.
    ShuttingDown,
}

/// Per-stage timestamps of one settled decree (with stage timing on).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecreeTiming {
    /// When the requests were drained into the decree.
    pub batched: Time,
    /// When the decree was handed to the core (its Accept went out).
    pub proposed: Time,
    /// When this leader's own vote became durable (`proposed` if unknown).
    pub durable: Time,
    /// When the decree was learned chosen and applied.
    pub applied: Time,
    /// Requests it carried.
    pub requests: u64,
}

/// A checkpoint transfer write, carried out by a
/// [`crate::storage::TransferSink`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TransferOp {
    /// Writes the next verified chunk of checkpoint `meta` (starting the
    /// file at offset 0). On failure report
    /// [`crate::Node::on_transfer_failed`].
    Write {
        /// What the checkpoint covers.
        meta: CheckpointMeta,
        /// Its total data bytes.
        data_len: u64,
        /// The chunk, continuing the data written so far.
        chunk: Chunk,
    },
    /// Verifies and publishes the checkpoint written; report
    /// [`crate::Node::on_transfer_finished`].
    Finish {
        /// Its slot.
        slot: Slot,
    },
    /// Drops a partial transfer (no file is left behind).
    Abandon,
}

/// A checkpoint to write: the node's metadata, its directory section and
/// the state machine's snapshot. Write it with
/// [`crate::storage::write_checkpoint`] (on a background thread in
/// production), then report [`crate::Node::on_checkpoint_saved`].
#[derive(Debug)]
pub struct CheckpointJob<P> {
    /// What it covers (its slot is `meta.last_applied`).
    pub meta: CheckpointMeta,
    /// The node's own section (directory), already encoded.
    pub node_section: Bytes,
    /// The application's state as of `meta.last_applied`.
    pub snapshot: P,
}

/// One thing for the driver to do.
#[derive(Debug)]
pub enum Effect<P, C> {
    /// Send `bytes` to peer `to` (best effort: Paxos tolerates loss).
    Transmit {
        /// The peer.
        to: ReplicaId,
        /// The encoded message.
        bytes: Bytes,
    },
    /// Make `entries` durable, in order and after every earlier `Persist`,
    /// then call [`crate::Node::on_persisted`] with `id`.
    Persist {
        /// What to report.
        id: PersistId,
        /// The records.
        entries: Vec<PersistEntry>,
    },
    /// A request's reply: it executed in the decree chosen at `slot`; or a
    /// read's ([`crate::Node::submit_read`]): it was answered from the
    /// state after `slot`.
    Complete {
        /// The request's completion handle.
        completion: C,
        /// The state machine's reply.
        reply: Bytes,
        /// The slot of the decree that executed it (a client that wants to
        /// read its own writes from a replica can ask for this slot).
        slot: Slot,
    },
    /// A request that got no reply, and why.
    Abort {
        /// The request's completion handle.
        completion: C,
        /// Why.
        reason: AbortReason,
    },
    /// Write a checkpoint.
    SaveCheckpoint(CheckpointJob<P>),
    /// Send peer `to` the chunk of checkpoint `slot` (0: the newest) at
    /// `offset`: [`crate::storage::serve_chunk`] builds the reply; if it
    /// reports the checkpoint damaged, call
    /// [`crate::Node::on_checkpoint_damaged`].
    ServeChunk {
        /// The requesting peer.
        to: ReplicaId,
        /// The checkpoint (0: the newest).
        slot: Slot,
        /// Byte offset in its data.
        offset: u64,
        /// Largest chunk to send.
        max_bytes: usize,
    },
    /// Carry out a checkpoint-transfer write.
    Transfer(TransferOp),
    /// A checkpoint received from a peer is durable and verified: restore
    /// it, **off the event loop** (it may take seconds), into a fresh state
    /// machine of the driver's making with [`crate::storage::restore_slot`];
    /// the node's own state machine stays in use meanwhile. Then, back on
    /// the loop, sync the log and call [`crate::Node::install_restored`]
    /// with the durable state, the fresh state machine and what the restore
    /// returned, and drop the state machine it hands back off the loop too;
    /// or, if the restore failed, call [`crate::Node::on_restore_failed`].
    /// The node keeps running in between and starts no other transfer
    /// until one of the two is called (see the module docs of
    /// [`crate::node`]).
    InstallCheckpoint {
        /// Its slot.
        slot: Slot,
    },
    /// The core finished repairing after storage damage: tell the storage
    /// to forget the damage it kept on record (`clear_damage`), so the next
    /// start does not repair again.
    ClearDamage,
    /// The core holds no decree at or below `through` any more (they are
    /// applied, and past its `retain_bytes`): storage may stop keeping their
    /// values in memory (`ReplicaStorage::release_memory_through`). They
    /// stay durable until a checkpoint truncates them, and catch-up that far
    /// back reads them from there ([`Effect::ReadDecrees`]). `through` only
    /// rises.
    ReleaseLogMemory {
        /// The highest slot released.
        through: Slot,
    },
    /// Read the accepted decrees of slots `read.from ..= through` from
    /// storage (`ReplicaStorage::read_decrees` with these bounds: one
    /// bounded chunk), then report them, or `None` if storage could not
    /// serve them, with [`crate::Node::on_decrees_read`]. Serves a peer's
    /// catch-up below the core's in-memory log; the read may run on another
    /// thread (nothing waits for it), and at most one per peer is
    /// outstanding.
    ReadDecrees {
        /// What to report.
        read: DecreesRead,
        /// The last slot to read.
        through: Slot,
        /// Most decrees to read.
        max_decrees: usize,
        /// Most encoded bytes past the first decree.
        max_bytes: usize,
    },
    /// The transport should connect to exactly these peers.
    SetPeers(BTreeMap<ReplicaId, SocketAddr>),
    /// Stage timestamps of a decree this node proposed (stage timing on).
    Timing(DecreeTiming),
    /// The decree chosen at `slot` was applied here (only with
    /// [`crate::NodeConfig::report_applies`]: checkers and change-data
    /// capture).
    Applied {
        /// The slot.
        slot: Slot,
        /// The ballot it was applied under.
        ballot: paxos_core::Ballot,
        /// The chosen value.
        value: paxos_core::Value,
    },
}
