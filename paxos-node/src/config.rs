//! Node configuration.

use crate::directory::AddressConfig;
use crate::reads::ReadMode;

/// How a node is set up. The protocol's own knobs (window, batch limits,
/// timers) are in [`NodeConfig::core`].
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The core's configuration (`core.id` is this replica;
    /// `core.pipeline_window` also bounds this node's proposals in flight;
    /// `core.batch_limits` bound each decree, its header included). Its
    /// membership is the bootstrap one; a restored checkpoint overrides it.
    pub core: paxos_core::Config,
    /// Take a checkpoint every this many applied decrees (0: never).
    pub checkpoint_every: u64,
    /// Also take one once the decrees applied since the last one carry this
    /// many payload bytes (0: no byte trigger). Bounds the log storage
    /// keeps, in bytes, whatever the batch sizes.
    pub checkpoint_every_bytes: u64,
    /// Whether the driver has a checkpoint store. Without one the node
    /// never asks to save, serve or receive checkpoints.
    pub checkpoints: bool,
    /// Decrees kept below a durable checkpoint when compacting, so that
    /// lagging peers can still catch up from memory (never more than the
    /// core still holds in memory, see `core.retain_bytes`).
    pub compact_retain: u64,
    /// A checkpoint transfer with no progress for this long (µs) is
    /// abandoned and retried with another peer.
    pub transfer_stall_us: u64,
    /// Largest chunk this node serves to a peer fetching a checkpoint.
    pub transfer_chunk_bytes: usize,
    /// The addresses this node was configured with.
    pub addresses: AddressConfig,
    /// Seeds the core's randomized timeouts.
    pub seed: u64,
    /// Distinguishes this boot's proposals from every other boot's (see
    /// [`crate::framing`]). Draw it from a real source of randomness or the
    /// clock in production; the simulator derives it from its seed.
    pub boot_nonce: u64,
    /// Wall-clock time (µs since the Unix epoch) at `Time(0)`: decrees
    /// carry `wall_clock_at_zero_us + now` as their time. 0 in simulation.
    pub wall_clock_at_zero_us: u64,
    /// Emit [`crate::Effect::Timing`] for every settled decree.
    pub stage_timing: bool,
    /// Emit [`crate::Effect::Applied`] for every applied decree.
    pub report_applies: bool,
    /// How linearizable reads are confirmed (see [`crate::reads`]). With
    /// [`ReadMode::Lease`] the node sets `core.read_lease` (a lease of
    /// `core.election_timeout_max_us`); every replica must agree on it.
    pub read_mode: ReadMode,
    /// Most reads a node holds waiting (for a round, for the state machine
    /// to catch up); more are refused (`AbortReason::Refused`).
    pub max_pending_reads: usize,
    /// Most request bytes of the reads a node holds waiting.
    pub max_pending_read_bytes: usize,
    /// A follower read (`ReadConsistency::AtLeast`) whose slot is not
    /// applied within this long (µs) is refused: ask another replica.
    pub read_wait_us: u64,
}

impl NodeConfig {
    /// The core configuration this node runs its core with: `core`, with
    /// the read lease that `read_mode` asks for.
    pub fn core_config(&self) -> paxos_core::Config {
        let mut core = self.core.clone();
        core.read_lease = match self.read_mode {
            ReadMode::ReadIndex => None,
            ReadMode::Lease { max_drift_ppm } => Some(paxos_core::ReadLease {
                // Longer than pre-vote stickiness alone protects (a voter
                // grants no pre-vote for the minimum election timeout after
                // hearing the leader), so the new leader's wait is what
                // makes it safe; and a leader cut off steps down
                // (check-quorum) about when its lease runs out.
                duration_us: core.election_timeout_max_us,
                max_drift_ppm,
            }),
        };
        core
    }

    /// Defaults around a core configuration.
    pub fn new(core: paxos_core::Config) -> NodeConfig {
        NodeConfig {
            core,
            checkpoint_every: 0,
            checkpoint_every_bytes: 0,
            checkpoints: false,
            compact_retain: 4096,
            transfer_stall_us: 2_000_000,
            transfer_chunk_bytes: crate::xfer::CHUNK_BYTES,
            addresses: AddressConfig::default(),
            seed: 0,
            boot_nonce: 0,
            wall_clock_at_zero_us: 0,
            stage_timing: false,
            report_applies: false,
            read_mode: ReadMode::ReadIndex,
            max_pending_reads: 1 << 16,
            max_pending_read_bytes: 64 << 20,
            read_wait_us: 1_000_000,
        }
    }
}
