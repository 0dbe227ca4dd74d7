//! Replica configuration and its validation.

use crate::batch::BatchLimits;
use crate::types::{Ballot, Membership, ReplicaId, Slot};

/// Most voters a membership may have (votes are tracked in a 128-bit set).
pub const MAX_VOTERS: usize = 128;

/// Configuration of one replica. Build with [`Config::new`] and adjust fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// This replica.
    pub id: ReplicaId,
    /// The membership in force after the state machine's `applied_through`
    /// (see `Replica::new`): the initial one, or the one the last applied
    /// `Reconfigure` installed, as kept in the state machine's checkpoint.
    pub membership: Membership,
    /// The ballot the `Reconfigure` that installed `membership` was applied
    /// under (`Action::Apply`'s ballot); `Ballot::ZERO` for the initial
    /// membership. Elections in a membership run in ballots above the one
    /// that installed it (see the replica's invariant 10).
    pub membership_ballot: Ballot,
    /// The slot of the `Reconfigure` that installed `membership` (0 for the
    /// initial one): later changes name it as their base (see
    /// `Reconfiguration`).
    pub membership_slot: Slot,
    /// Most decrees proposed but not yet chosen (RSL: 1).
    pub pipeline_window: usize,
    /// Per-decree request count and byte limits; a proposed value larger than
    /// `batch_limits.max_bytes` is refused with `ProposeError::TooLarge`.
    pub batch_limits: BatchLimits,
    /// How often a leader sends heartbeats and retransmits unacknowledged
    /// accepts; also the retry period of prepares and catch-up fetches.
    pub heartbeat_interval_us: u64,
    /// Election timeouts are drawn uniformly from `[min, max)` with the
    /// injected seed.
    pub election_timeout_min_us: u64,
    /// See `election_timeout_min_us`.
    pub election_timeout_max_us: u64,
    /// Most decrees in one catch-up reply or one promise chunk.
    pub catchup_chunk_decrees: usize,
    /// Most bytes of decrees (as encoded) in one catch-up reply: a reply is
    /// cut before the decree that would take it past this, but always
    /// carries at least one decree. The replica that catches up applies a
    /// reply's decrees in one go, so this bounds that work; at 10M keys,
    /// replies cut only at `max_message_bytes` held a replica's event loop
    /// for up to 113 ms. Replies are also cut at `max_message_bytes`,
    /// whichever is smaller (so lowering that needs no change here).
    /// Promise chunks are not cut by this: a candidate merges them without
    /// applying, and each chunk costs phase 1 a round trip.
    pub catchup_chunk_bytes: usize,
    /// Committed decrees kept in memory (beyond the uncommitted ones) to serve
    /// catch-up and promises.
    pub retain_decrees: usize,
    /// Applied decrees are also dropped from memory, oldest first, while
    /// the in-memory log's payload exceeds this many bytes: a decree can
    /// hold a whole batch, so `retain_decrees` alone does not bound memory.
    /// Unapplied entries are always kept. Peers that need dropped decrees
    /// catch up by checkpoint.
    pub retain_bytes: usize,
    /// Upper bound on one encoded message. Promise and catch-up chunks are cut
    /// to stay below it; must leave room for one full batch.
    pub max_message_bytes: usize,
    /// An acceptor refuses to accept slots more than this far above its own
    /// commit index (it must catch up first). Bounds the uncommitted entries
    /// an acceptor holds. Must be at least `pipeline_window`.
    pub max_accept_ahead: usize,
    /// This replica's storage lost data it may have acknowledged (its log
    /// was damaged and salvaged): it starts by repairing, without voting,
    /// until it can vouch for its state again (invariant 11). Keep setting
    /// it on every restart until a start's repair completed (the status
    /// says so), as storage keeps the damage on record until then.
    pub repair: bool,
    /// Lease reads (`None`: off, reads confirm leadership per round, see
    /// `Replica::read_index`). Every replica of a cluster must agree on
    /// it: with leases on, a new leader waits out the longest lease an old
    /// one may still hold before it announces itself.
    pub read_lease: Option<ReadLease>,
}

/// The clock assumption that makes lease reads safe, and the lease's length.
///
/// Every replica's clock runs at a rate within `1 ± max_drift_ppm / 10^6`
/// of real time (a bound on the *rate*, not on the offset: clocks need not
/// agree on the time). A leader whose heartbeat round started at `t` (its
/// clock) and was acknowledged by a quorum in its ballot serves reads
/// locally until `t + duration_us * (1 - ρ)` on its clock, which is at most
/// `duration_us` of real time later; a new leader waits
/// `duration_us * (1 + ρ)` on its clock, at least `duration_us` of real
/// time, from the end of its phase 1 before it announces itself. Every
/// round a lease counts from was acknowledged by some voter of that phase
/// 1's quorum before it promised the new ballot, so the old lease has run
/// out when the new leader commits or serves anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadLease {
    /// The lease's length in real time, in µs. Also how long a new leader
    /// waits before serving (so keep it short of the election timeout:
    /// failover takes an election plus this).
    pub duration_us: u64,
    /// The largest clock rate error of any replica, in parts per million.
    pub max_drift_ppm: u32,
}

impl ReadLease {
    /// How long, on the leader's own clock, a lease lasts from the start of
    /// the round that confirmed it: `duration * (1 - ρ)`, rounded down.
    pub fn leader_local_us(&self) -> u64 {
        let ppm = u64::from(self.max_drift_ppm.min(MAX_DRIFT_PPM));
        (u128::from(self.duration_us) * u128::from(1_000_000 - ppm) / 1_000_000) as u64
    }

    /// How long, on its own clock, a new leader waits before it announces
    /// itself: `duration * (1 + ρ)`, rounded up.
    pub fn successor_wait_us(&self) -> u64 {
        let ppm = u64::from(self.max_drift_ppm.min(MAX_DRIFT_PPM));
        (u128::from(self.duration_us) * u128::from(1_000_000 + ppm)).div_ceil(1_000_000) as u64
    }
}

/// Largest accepted `ReadLease::max_drift_ppm` (50%): beyond it a lease is
/// too short to be of use and a new leader waits too long.
pub const MAX_DRIFT_PPM: u32 = 500_000;

/// Why a configuration is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The membership lists are unsorted, overlapping or have no voter.
    #[error("membership is not well formed (sorted, disjoint, at least one voter)")]
    BadMembership,
    /// A numeric field is out of range.
    #[error("config field {field} is invalid: {why}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        why: &'static str,
    },
}

impl Config {
    /// A configuration with defaults suited to a LAN deployment: a 64-decree
    /// pipeline, 1 MiB batches, 50 ms heartbeats, 300-600 ms election
    /// timeouts.
    pub fn new(id: ReplicaId, membership: Membership) -> Config {
        Config {
            id,
            membership,
            membership_ballot: Ballot::ZERO,
            membership_slot: Slot::ZERO,
            pipeline_window: 64,
            batch_limits: BatchLimits::default(),
            heartbeat_interval_us: 50_000,
            election_timeout_min_us: 300_000,
            election_timeout_max_us: 600_000,
            catchup_chunk_decrees: 256,
            catchup_chunk_bytes: 1 << 20,
            retain_decrees: 4096,
            retain_bytes: 64 << 20,
            max_message_bytes: 8 << 20,
            max_accept_ahead: 256,
            repair: false,
            read_lease: None,
        }
    }

    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, why| Err(ConfigError::Invalid { field, why });
        if !self.membership.is_well_formed() {
            return Err(ConfigError::BadMembership);
        }
        if self.membership.voters.len() > MAX_VOTERS {
            return invalid("membership", "at most 128 voters");
        }
        if self.pipeline_window == 0 {
            return invalid("pipeline_window", "must be at least 1");
        }
        if self.max_accept_ahead < self.pipeline_window {
            return invalid("max_accept_ahead", "must be at least pipeline_window");
        }
        if self.heartbeat_interval_us == 0 {
            return invalid("heartbeat_interval_us", "must be positive");
        }
        if self.election_timeout_min_us <= self.heartbeat_interval_us
            || self.election_timeout_max_us <= self.election_timeout_min_us
        {
            return invalid("election_timeout_*_us", "need heartbeat < min < max");
        }
        if let Some(lease) = self.read_lease {
            if lease.max_drift_ppm > MAX_DRIFT_PPM {
                return invalid("read_lease.max_drift_ppm", "at most 500000 (50%)");
            }
            if lease.leader_local_us() <= self.heartbeat_interval_us {
                return invalid(
                    "read_lease.duration_us",
                    "the lease (less the drift) must outlast a heartbeat interval",
                );
            }
        }
        if self.catchup_chunk_decrees == 0 {
            return invalid("catchup_chunk_decrees", "must be at least 1");
        }
        if self.catchup_chunk_bytes == 0 {
            return invalid("catchup_chunk_bytes", "must be at least 1");
        }
        if self.batch_limits.max_requests == 0 || self.batch_limits.max_bytes == 0 {
            return invalid("batch_limits", "must allow at least one request");
        }
        if self.max_message_bytes < self.batch_limits.max_bytes.saturating_add(4096) {
            return invalid(
                "max_message_bytes",
                "must exceed batch_limits.max_bytes by 4 KiB",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three() -> Membership {
        Membership::with_voters(vec![ReplicaId(1), ReplicaId(2), ReplicaId(3)])
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(Config::new(ReplicaId(1), three()).validate(), Ok(()));
    }

    #[test]
    fn bad_configs_are_errors_not_panics() {
        let base = Config::new(ReplicaId(1), three());
        let mut c = base.clone();
        c.pipeline_window = 0;
        assert!(c.validate().is_err());
        let mut c = base.clone();
        c.max_accept_ahead = c.pipeline_window - 1;
        assert!(c.validate().is_err());
        let mut c = base.clone();
        c.election_timeout_max_us = c.election_timeout_min_us;
        assert!(c.validate().is_err());
        let mut c = base.clone();
        c.max_message_bytes = c.batch_limits.max_bytes;
        assert!(c.validate().is_err());
        let mut c = base.clone();
        c.membership = Membership {
            voters: vec![],
            learners: vec![],
        };
        assert_eq!(c.validate(), Err(ConfigError::BadMembership));
        let mut c = base.clone();
        c.catchup_chunk_decrees = 0;
        assert!(c.validate().is_err());
        let mut c = base;
        c.catchup_chunk_bytes = 0;
        assert!(c.validate().is_err());
    }

    #[test]
    fn catchup_chunk_bytes_may_exceed_a_lowered_message_bound() {
        // The transport may lower `max_message_bytes` below the default
        // chunk size; replies are then cut at the message bound.
        let mut c = Config::new(ReplicaId(1), three());
        c.batch_limits.max_bytes = 64;
        c.max_message_bytes = 8192;
        assert_eq!(c.validate(), Ok(()));
    }
}
