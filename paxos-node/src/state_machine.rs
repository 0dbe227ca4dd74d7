//! The application state machine a node replicates, in the spirit of RSL's
//! `RSLStateMachine`: it executes the client requests of chosen decrees,
//! streams its state into checkpoints and restores from them, and hears
//! about primary status changes.
//!
//! The trait knows nothing of any particular application. The node frames
//! every decree itself (see [`crate::framing`]): a state machine is handed
//! only its own clients' request bytes, one at a time, in slot order, with
//! the decree's deterministic context ([`Decree`]).
//!
//! # Determinism
//!
//! Every replica executes the same requests in the same order with the same
//! [`Decree`] context, so `execute` must depend on nothing else (no clock,
//! no randomness, no iteration order of a randomly seeded hash map that
//! could leak into outputs or snapshots). Time, where an application needs
//! it (expiry, for instance), comes from [`Decree::time_us`]: the proposing
//! leader's clock, written into the decree, identical on every replica.
//!
//! # Snapshots are streams
//!
//! [`StateMachine::snapshot`] returns a [`Snapshot`]: a value that can be
//! moved to another thread and written out in bounded pieces with
//! [`Snapshot::write_to`] while the node goes on executing; restoring reads
//! from any [`std::io::Read`]. Neither side needs the whole state as one
//! buffer. (How cheap `snapshot` itself is depends on the implementation:
//! paxos-kv's table makes it O(1) by saving what later writes replace.)

use bytes::Bytes;
use paxos_core::{ReplicaId, Slot};

/// The deterministic context of the decree a request belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decree {
    /// The slot the decree was chosen at.
    pub slot: Slot,
    /// The replica that proposed it.
    pub proposer: ReplicaId,
    /// The proposer's clock when it proposed the decree, in microseconds
    /// since the Unix epoch (0 if the proposer had no wall clock, as in the
    /// simulator). The same on every replica: use it, never a local clock.
    pub time_us: u64,
}

/// A replicated application.
pub trait StateMachine: Send + 'static {
    /// A frozen view of the state that can be written out later, elsewhere.
    type Snapshot: Snapshot;

    /// Executes one client request of a chosen decree and returns the
    /// reply for the client that sent it. Deterministic (see the module
    /// docs). A request that does not decode must get an error reply and
    /// change nothing: it was chosen, so every replica executes it.
    fn execute(&mut self, decree: &Decree, request: &[u8]) -> Bytes;

    /// Answers a read-only request from the current state, without
    /// changing it: reads that skip the log ([`crate::reads`]) run here, on
    /// the leader (linearizable reads) or on any replica (bounded-staleness
    /// reads). It must return what `execute` would for the same request at
    /// this point, and change nothing observable (a read is never
    /// replicated, so a change would make the replicas diverge). A request
    /// that is not a read, or does not decode, gets an error reply.
    fn query(&self, request: &[u8]) -> Bytes;

    /// The state as of the last executed request, for a checkpoint.
    fn snapshot(&mut self) -> Self::Snapshot;

    /// Replaces the whole state with one read from `source` (what a
    /// [`Snapshot`] of this type wrote). The snapshot must be read to the
    /// end of `source`: bytes left over are an error. On any error the
    /// state is left as it was before the call (build the new state aside,
    /// swap it in last).
    fn restore(&mut self, source: &mut dyn std::io::Read) -> Result<(), SnapshotError>;

    /// This replica became primary (`true`) or stopped being primary.
    fn on_primary_change(&mut self, is_primary: bool) {
        let _ = is_primary;
    }
}

/// A state machine's state, detached from it, to be written out.
pub trait Snapshot: Send + 'static {
    /// Writes the whole snapshot into `out` in bounded pieces. The node
    /// calls it once per snapshot, so an implementation may give back what
    /// it has written as it goes (paxos-kv lets go of each part of its
    /// frozen view once written, so the live state stops copying that part)
    /// and refuse a second call.
    fn write_to(&mut self, out: &mut dyn std::io::Write) -> std::io::Result<()>;
}

/// Why a snapshot could not be restored.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Reading the source failed (for a checkpoint on disk: an I/O error or
    /// a block that failed its checksum).
    #[error("reading the snapshot: {0}")]
    Io(#[from] std::io::Error),
    /// The bytes are not a valid snapshot of this state machine.
    #[error("invalid snapshot: {0}")]
    Invalid(Box<dyn std::error::Error + Send + Sync>),
}

impl SnapshotError {
    /// An [`SnapshotError::Invalid`] from any error.
    pub fn invalid(e: impl std::error::Error + Send + Sync + 'static) -> SnapshotError {
        SnapshotError::Invalid(Box::new(e))
    }
}

/// A snapshot that is already one buffer (small state machines, tests).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BytesSnapshot(pub Bytes);

impl Snapshot for BytesSnapshot {
    fn write_to(&mut self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        // Bounded pieces, so a sink with per-write costs sees many small
        // writes rather than one huge one.
        for piece in self.0.chunks(64 * 1024) {
            out.write_all(piece)?;
        }
        Ok(())
    }
}
