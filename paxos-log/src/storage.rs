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
//!
//! # Damage
//!
//! Recovery tells a torn tail from damage. A torn tail is what a crash
//! leaves of writes that were never synced, so never acknowledged: it is cut
//! off silently. Damage is everything else that fails a check (a checksum
//! mismatch, an unreadable sector, a structural inconsistency) in bytes that
//! may have been durable. What a backend does about it is its
//! [`CorruptionPolicy`]: refuse to start ([`StorageError::Corrupt`]), or
//! salvage the longest valid prefix of appends and describe the loss as a
//! [`Damage`] ([`ReplicaStorage::recovery_damage`]). Both backends (the file
//! log here, the persistent-memory log in paxos-nvm) report through this one
//! type, and so does [`crate::checkpoint::CheckpointStore`] for checkpoints.

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

/// What recovery does when stored data fails its checks somewhere other than
/// a torn, never-synced tail.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CorruptionPolicy {
    /// Refuse to start: `open` fails with [`StorageError::Corrupt`] naming
    /// the file (or region) and offset, and changes nothing on disk. The
    /// safe default for a replica that cannot repair itself from its peers.
    #[default]
    Refuse,
    /// Keep the longest valid prefix of appends, set the damaged bytes aside
    /// (the file log renames damaged segments to `*.damaged`; a file-backed
    /// NVM region is copied to `<region>.damaged`), continue appending after
    /// the prefix, and report what was lost as a [`Damage`]. A replica that
    /// opens its storage this way must treat a reported damage with
    /// [`Damage::may_have_lost_acknowledged`] as the loss of promises and
    /// votes it may have sent, and repair from its peers before voting.
    Salvage,
}

/// Damage that recovery found and, under [`CorruptionPolicy::Salvage`],
/// salvaged around: where it is, why it failed, what was kept and what the
/// loss means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    /// The file or region holding the damaged bytes.
    pub location: String,
    /// Byte offset of the damage in `location` (for a persistent-memory log
    /// record: its virtual log position).
    pub offset: u64,
    /// What failed: a checksum, a read (EIO), a sequence check.
    pub reason: String,
    /// For a log: the sequence number of the last append whose effects the
    /// recovered state holds (0: none). Appends continue from the next one.
    /// `None` for damage outside a log (a checkpoint).
    pub last_kept_seq: Option<u64>,
    /// Whether anything that may have been acknowledged was lost, that is
    /// anything beyond a torn, never-synced tail. `true` is the signal to
    /// enter repair mode: the replica must assume it lost promises and
    /// votes. `false` only when recovery proved that the damaged bytes held
    /// nothing that was not also kept (say, a damaged metadata copy whose
    /// twin was intact and newest).
    pub may_have_lost_acknowledged: bool,
    /// Files set aside for inspection (renamed or copied to `*.damaged`).
    /// Later recoveries ignore them; an operator may inspect and delete them.
    pub set_aside: Vec<String>,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "damage in {} at offset {}: {}",
            self.location, self.offset, self.reason
        )?;
        if let Some(seq) = self.last_kept_seq {
            write!(f, "; kept appends through sequence {seq}")?;
        }
        if self.may_have_lost_acknowledged {
            write!(f, "; acknowledged data may be lost")?;
        }
        if !self.set_aside.is_empty() {
            write!(f, "; set aside: {}", self.set_aside.join(", "))?;
        }
        Ok(())
    }
}

/// Whether a log bounded in size has room for more decrees
/// ([`ReplicaStorage::space`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogSpace {
    /// Appends fit (also: the log is bounded only by the disk).
    #[default]
    Available,
    /// The live log (what a truncation has not yet dropped) is near what
    /// the log can hold: the replica should propose no new decrees until a
    /// checkpoint lets it truncate, or appends will soon fail with
    /// [`StorageError::Full`]. Appends still succeed meanwhile, so decrees
    /// already proposed (and a peer's accepts) keep being persisted.
    Full {
        /// Bytes of the live log, as of the last measurement.
        live_bytes: u64,
        /// The live log is reported full above this many bytes.
        limit_bytes: u64,
    },
}

impl LogSpace {
    /// Whether this is [`LogSpace::Full`].
    pub fn is_full(&self) -> bool {
        matches!(self, LogSpace::Full { .. })
    }
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

    /// The accepted decrees of slots `from ..= through`, contiguous from
    /// `from` and in slot order, from wherever the backend keeps them (in
    /// memory, or on disk for values [`ReplicaStorage::release_memory_through`]
    /// let go of): at most `max_decrees`, and no more than `max_bytes` of
    /// encoded size ([`paxos_core::codec::accepted_len_hint`]) past the
    /// first. It stops at the first slot it does not hold. Serves catch-up
    /// of chosen decrees that a peer's core no longer keeps in memory but
    /// its storage still holds (above the last truncation), one bounded
    /// chunk per call. A slot at or below the truncation point is
    /// `OutOfRange`; so is a backend that cannot read back what it let go
    /// of.
    ///
    /// The default serves what [`ReplicaStorage::read_accepted`] serves:
    /// right for a backend that keeps every live value in memory.
    fn read_decrees(
        &self,
        from: Slot,
        through: Slot,
        max_decrees: usize,
        max_bytes: usize,
    ) -> Result<Vec<Accepted>, StorageError> {
        if from > through || max_decrees == 0 {
            return Ok(Vec::new());
        }
        let mut out = self.read_accepted(from, max_decrees)?;
        trim_to_chunk(&mut out, from, through, max_bytes);
        Ok(out)
    }

    /// Lets the backend drop accepted decrees of slots up to and including
    /// `through`, which a checkpoint now covers. Equivalent to appending
    /// `PersistEntry::Truncate(through)`.
    fn truncate_through(&self, through: Slot) -> Result<u64, StorageError> {
        self.append(&[PersistEntry::Truncate(through)])
    }

    /// The replica no longer needs accepted values of slots up to and
    /// including `through` served from memory (its core has let go of
    /// them; catch-up that far back is served by a checkpoint). A backend
    /// that keeps values in memory may drop them; they stay durable until
    /// truncated. The default keeps everything.
    fn release_memory_through(&self, through: Slot) {
        let _ = through;
    }

    /// Whether the log has room for more decrees. A log bounded in size
    /// (paxos-nvm's region) reports [`LogSpace::Full`] before appends start
    /// failing, so the replica can stop proposing and wait for a
    /// truncation instead of failing. The default: always room.
    fn space(&self) -> LogSpace {
        LogSpace::Available
    }

    /// Damage that recovery salvaged around and that is not cleared yet,
    /// oldest first (only under [`CorruptionPolicy::Salvage`]). Empty: the
    /// storage recovered intact (or keeps nothing across restarts).
    ///
    /// The list is durable: every later open reports it again until
    /// [`ReplicaStorage::clear_damage`], so a crash before the replica has
    /// repaired itself does not make it forget that it may have lost
    /// promises and votes.
    fn recovery_damage(&self) -> Vec<Damage> {
        Vec::new()
    }

    /// Durably forgets the damage [`ReplicaStorage::recovery_damage`]
    /// reports. The replica calls this once it has repaired what was lost
    /// from its peers (so it may vote again).
    fn clear_damage(&self) -> Result<(), StorageError> {
        Ok(())
    }

    /// Asks the backend to call `listener` whenever its durable sequence
    /// number moves, and once if it fails for good, from whatever thread
    /// made the appends durable. Returns `false` if the backend cannot (the
    /// default): the caller then learns of durability by blocking in
    /// [`ReplicaStorage::wait_durable`] on a thread of its own. A backend
    /// with a writer thread saves that thread and a wake-up per sync: the
    /// writer tells the replica's event loop itself.
    fn set_durability_listener(&self, listener: DurabilityListener) -> bool {
        let _ = listener;
        false
    }
}

/// What a storage backend reports to a [`DurabilityListener`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DurabilityEvent {
    /// Every append up to this sequence number is durable.
    Durable(u64),
    /// The backend failed for good (nothing more becomes durable).
    Failed(String),
}

/// See [`ReplicaStorage::set_durability_listener`]. Called with no lock of
/// the backend held; it must be quick and must not call back into the
/// backend's appends.
pub type DurabilityListener = std::sync::Arc<dyn Fn(DurabilityEvent) + Send + Sync>;
/// Cuts `decrees` (in slot order) to the chunk
/// [`ReplicaStorage::read_decrees`] returns: the contiguous run from `from`,
/// no slot above `through`, within `max_bytes` of encoded size past the
/// first.
pub(crate) fn trim_to_chunk(
    decrees: &mut Vec<Accepted>,
    from: Slot,
    through: Slot,
    max_bytes: usize,
) {
    let mut bytes = 0usize;
    let mut next = from;
    let keep = decrees
        .iter()
        .take_while(|a| {
            let size = paxos_core::codec::accepted_len_hint(a);
            let fits =
                a.slot == next && a.slot <= through && (next == from || bytes + size <= max_bytes);
            bytes += size;
            next = next.next();
            fits
        })
        .count();
    decrees.truncate(keep);
}
