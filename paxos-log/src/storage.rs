//! The storage abstraction that paxos-core's `Persist` actions map onto.
//!
//! A backend (the file log in this crate, the persistent-memory log in
//! paxos-nvm, or an in-memory store for benchmarks) keeps a replica's
//! [`DurableState`](paxos_core::DurableState): the promised ballot, the accepted decree of each slot and
//! the commit point. It is written through [`ReplicaStorage::append`] and
//! rebuilt on start-up by the backend's own `open`, which returns the
//! recovered state.
//!
//! Durability is reported through sequence numbers: `append` returns the
//! sequence number of that append, and once `durable_seq() >= seq` (or
//! `wait_durable(seq)` returned `Ok`) every append up to `seq` is on stable
//! storage and survives a crash. Appends become durable in order. Many
//! appends may share one flush (group commit).

use paxos_core::{Accepted, PersistEntry, Slot};

/// Errors every storage backend reports.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// An I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the file.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Stored data failed validation. Never served silently.
    #[error("corruption in {file} at offset {offset}: {reason}")]
    Corrupt {
        /// The file (or region) holding the bad data.
        file: String,
        /// Byte offset of the bad record.
        offset: u64,
        /// What was wrong.
        reason: String,
    },
    /// The backend has no room for the append.
    #[error("storage full: {0}")]
    Full(String),
    /// A request outside what the backend holds (for example a read of a
    /// truncated slot).
    #[error("{0}")]
    OutOfRange(String),
    /// The backend was closed or its writer failed earlier; it accepts no
    /// more appends.
    #[error("storage closed: {0}")]
    Closed(String),
}

/// Durable replica state, written by appends and read for catch-up.
///
/// Implementations are shared between the replica's event loop and a
/// durability waiter, so they are `Send + Sync` and take `&self`.
pub trait ReplicaStorage: Send + Sync {
    /// Queues the entries of one persist action, in order, and returns the
    /// append's sequence number (strictly increasing, starting at 1).
    ///
    /// Returns without waiting for durability.
    fn append(&self, entries: &[PersistEntry]) -> Result<u64, StorageError>;

    /// The highest sequence number known durable (0 if none).
    fn durable_seq(&self) -> u64;

    /// Blocks until every append up to `seq` is durable, or fails if the
    /// backend cannot make it durable.
    fn wait_durable(&self, seq: u64) -> Result<(), StorageError>;

    /// Up to `max` accepted decrees with slots `>= from`, in slot order, as
    /// durable (or queued) now. Used to serve catch-up to lagging peers.
    fn read_accepted(&self, from: Slot, max: usize) -> Result<Vec<Accepted>, StorageError>;

    /// Lets the backend drop accepted decrees of slots up to and including
    /// `through`, which a checkpoint now covers. Equivalent to appending
    /// `PersistEntry::Truncate(through)`.
    fn truncate_through(&self, through: Slot) -> Result<u64, StorageError> {
        self.append(&[PersistEntry::Truncate(through)])
    }
}
