//! paxos-node: one replica of a replicated state machine, as a sans-IO
//! layer between the protocol core and the I/O — the way quinn-proto's
//! `Endpoint` sits under quinn.
//!
//! # Role
//!
//! paxos-core decides *what is chosen*. Everything between that and a
//! running service lives here, written once and run unchanged by the
//! production driver (paxos-kv's tokio event loop) and by the deterministic
//! simulator (paxos-sim):
//!
//! - [`Node`] takes client submissions, peer messages, storage completions,
//!   timer ticks and checkpoint-transfer chunks — every input with the
//!   current `Time` — and returns [`Effect`]s to carry out: transmit,
//!   persist, complete or abort a request, save or serve or receive or
//!   install a checkpoint, reconnect peers, release decrees from storage's
//!   memory, and read a bounded chunk of decrees back from storage for a
//!   peer's catch-up (`Effect::ReadDecrees`, answered through
//!   [`Node::on_decrees_read`]).
//! - It owns proposal-to-completion matching, decree framing
//!   ([`framing`]), retry of stalled batches, checkpoint scheduling, state
//!   transfer ([`xfer`]) and the replicated membership [`directory`].
//! - **Reads that skip the log** ([`reads`]): [`Node::submit_read`] with
//!   [`ReadConsistency::Linearizable`] (the leader confirms its leadership
//!   per [`ReadMode`]: a heartbeat round, or a lease that assumes bounded
//!   clock drift) or [`ReadConsistency::AtLeast`] (bounded staleness on any
//!   replica), answered by [`StateMachine::query`] without a decree; or
//!   handed to [`Node::propose_requests`] with writes as
//!   [`RequestKind::Read`], answered at its place in the batch it rides in
//!   as that batch is applied (no bytes in the decree).
//! - **Backpressure from a full log**: after each append the driver passes
//!   what storage says of its room to [`Node::on_log_space`]; while it is
//!   full the node proposes nothing new (client batches wait, never fail)
//!   and votes on no Accept (it drops them: the leader resends), truncates
//!   through its newest checkpoint and takes another, and returns a
//!   [`LogFullError`] for the driver to crash-stop on only when nothing it
//!   applied is left to truncate.
//! - [`StateMachine`] is the application: it executes requests, streams its
//!   state into checkpoints and restores from them. It knows nothing of
//!   Paxos, and the node knows nothing of it beyond this trait.
//! - [`storage`] carries out the checkpoint effects on a paxos-log
//!   `CheckpointStore` over any file system (real or simulated), so the
//!   simulator runs the production checkpoint and restore code.
//!
//! To replicate your own state machine, depend on this crate plus the I/O
//! crates (paxos-log for durable storage, paxos-net for the transport) and
//! write a small driver loop; `examples/replicated_counter.rs` is a complete
//! three-replica one. `cargo run -p paxos-node --example replicated_counter`
//! runs it in one process: a counter state machine on three replicas (a
//! thread each, QUIC with mutual TLS on loopback, a `FileLog` and a
//! checkpoint store each in a temporary directory); it submits increments,
//! kills the leader, shows another one take over with the counter intact,
//! restarts the killed replica from its log and checkpoint, and exits.
//! `cargo test -p paxos-node` runs the same scenario.
//!
//! # Invariants
//!
//! - **Exactly one outcome per request.** Every request handed to a node
//!   gets one `Complete` or one `Abort`; `NotPrimary` only if it was never
//!   proposed (safe to retry elsewhere), `OutcomeUnknown` if it was proposed
//!   and this node lost track of it.
//! - **Acknowledge only what is chosen.** `Complete` is emitted only when
//!   the decree holding the request was chosen and applied here, and the
//!   chosen value is the very batch this node proposed at that slot
//!   (recognised by its unique [`framing::ProposalTag`]).
//! - **Slot order.** Decrees are applied in slot order, each exactly once
//!   per core instance; a checkpoint at slot `s` holds exactly the state
//!   after slot `s`.
//! - **Reads change nothing.** A read is answered by `query` from the
//!   state machine as it stands, or aborted (`NotPrimary`, `Refused`);
//!   an aborted read never executed, so it is always safe to retry. A
//!   linearizable read is answered only after its leadership round was
//!   confirmed (or under a lease) and the state applied the commit index
//!   recorded on its arrival.
//! - **Bounded.** At most `pipeline_window` proposals in flight, each
//!   within the batch limits; one checkpoint save and one transfer at a
//!   time; transfer chunks of bounded size; pending reads bounded in count
//!   and bytes.
//! - **No panics on input.** Peer messages, decrees, directory commands and
//!   checkpoint sections are validated; bad ones are dropped or refused
//!   with an error.

pub mod config;
pub mod directory;
pub mod effect;
pub mod framing;
pub mod node;
pub mod reads;
pub mod state_machine;
pub mod storage;
pub mod xfer;

pub use config::NodeConfig;
pub use directory::{ClusterView, Directory, MemberAddrs};
pub use effect::{
    AbortReason, CheckpointJob, DecreeTiming, DecreesRead, Effect, PersistId, TransferOp,
};
pub use node::{LogFullError, Node, NodeError, NodeStatus, Recovery};
pub use reads::{ReadConsistency, ReadMode, RequestKind};
pub use state_machine::{BytesSnapshot, Decree, Snapshot, SnapshotError, StateMachine};

#[cfg(test)]
mod tests;
