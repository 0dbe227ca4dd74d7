//! Node configuration, read from TOML.
//!
//! Every cluster member gets the same `[[members]]` list; each node's file
//! differs only in `id` (and its own paths). Example:
//!
//! ```toml
//! id = 1
//! storage = "file"            # "file" | "nvm" | "memory" (memory: NOT durable)
//! data_dir = "/var/lib/paxos-kv/r1"
//! peer_addr = "0.0.0.0:7001"        # where this node listens for replicas (QUIC/UDP)
//! client_addr = "0.0.0.0:6381"      # where this node listens for clients (RESP2/TCP)
//! metrics_addr = "127.0.0.1:9121"   # optional: Prometheus `GET /metrics` (absent: none)
//!
//! [tls]
//! cert = "certs/node-1.pem"
//! key = "certs/node-1.key"
//! ca = "certs/ca.pem"
//!
//! [[members]]                       # advertised addresses, one entry per voter
//! id = 1
//! peer_addr = "127.0.0.1:7001"     # QUIC, replica to replica
//! client_addr = "127.0.0.1:6381"   # RESP2, clients (used in -MOVED redirects)
//! # learner = true                 # a joining node lists itself as a learner
//!
//! `members` is the bootstrap membership. Once the cluster runs, membership
//! and member addresses are replicated state (`PAXOS.ADDNODE`,
//! `PAXOS.REMOVENODE`, see [`crate::membership`]) kept in checkpoints; a
//! restarted node uses them, not this list, which then only tells it whom
//! to contact first.
//!
//! [tuning]                          # optional; defaults shown by `Tuning::default`
//! pipeline_window = 64
//! nvm_backend = "auto"             # storage = "nvm": "auto" | "msync" | "emulated-pm"
//! nvm_region_mb = 0                # storage = "nvm": 0 sizes it from the checkpoint
//!                                  # settings (see Tuning::nvm_region_mb)
//! transparent_huge_pages = true    # re-exec with glibc's THP tunable (see crate::hugepages)
//! max_clients = 10000               # then `-ERR max number of clients reached`
//! admin_reserved_clients = 16       # extra slots for operator commands only
//! client_timeout_secs = 300         # close idle clients (0: never)
//! client_output_hard_limit_bytes = 67108864   # unwritten replies: disconnect past this
//! client_output_soft_limit_bytes = 16777216   # stop reading the client past this, and
//! client_output_soft_limit_secs = 10          # disconnect if past it this long
//! max_client_reply_bytes = 536870912          # all clients' unwritten replies together
//! read_mode = "read_index"         # or "lease"; the same on every member (see ReadMode)
//! max_clock_drift_ppm = 500        # lease mode's clock assumption (see Tuning)
//!
//! [recovery]                        # optional; what to do about damaged storage
//! on_corruption = "repair"         # or "refuse" (do not start)
//! unsafe_skip_repair = false       # see RecoveryConfig: accepts data loss
//! ```
//!
//! Loading never panics: every problem is a [`ConfigError`] naming the file
//! and the field.

use paxos_core::{Membership, ReplicaId};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Which durable store the replica's log lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    /// paxos-log's segmented file log (fsync group commit).
    File,
    /// paxos-nvm's persistent-memory log (a DAX or memory-mapped file).
    Nvm,
    /// In memory only, for benchmarks. NOT DURABLE: a crashed replica comes
    /// back empty, which is only safe while a majority never crashes together.
    Memory,
}

/// One cluster member.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    /// Replica id (non-zero, unique).
    pub id: u32,
    /// UDP address of its QUIC peer endpoint.
    pub peer_addr: SocketAddr,
    /// TCP address of its RESP2 client endpoint.
    pub client_addr: SocketAddr,
    /// A learner rather than a voter. A node joining a running cluster
    /// (`paxos-kv init --add-node`) lists itself as one: it starts outside
    /// the voters and is promoted by the leader (`PAXOS.ADDNODE`).
    #[serde(default)]
    pub learner: bool,
}

/// Paths of the TLS files for mutual authentication between replicas.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsPaths {
    /// This node's certificate (PEM).
    pub cert: PathBuf,
    /// This node's private key (PEM).
    pub key: PathBuf,
    /// The cluster CA certificate (PEM).
    pub ca: PathBuf,
}

/// Performance knobs, all bounded.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Tuning {
    /// Most decrees proposed and not yet chosen.
    pub pipeline_window: usize,
    /// Most requests in one decree.
    pub max_batch_requests: usize,
    /// Most bytes in one decree.
    pub max_batch_bytes: usize,
    /// Capacity of the submit queue (requests waiting to be batched).
    pub submit_queue: usize,
    /// Leader heartbeat period.
    pub heartbeat_ms: u64,
    /// Election timeout, randomized in [min, max).
    pub election_timeout_min_ms: u64,
    /// See `election_timeout_min_ms`.
    pub election_timeout_max_ms: u64,
    /// Take a checkpoint every this many applied decrees (0: never).
    pub checkpoint_every_decrees: u64,
    /// Also take one once the decrees applied since the last carry this
    /// many MiB (0: no byte trigger). The log since the last checkpoint is
    /// kept by storage (in memory too, for the file and persistent-memory
    /// logs' indexes), so this bounds it in bytes whatever the batch sizes.
    pub checkpoint_every_mb: u64,
    /// Decrees kept in the log below a durable checkpoint, so that lagging
    /// or joining replicas can catch up from the log instead of needing a
    /// checkpoint transfer.
    pub compact_retain_decrees: u64,
    /// Most MiB of applied decrees each replica keeps in memory to serve
    /// catch-up (paxos-core's `retain_bytes`; it also keeps at most
    /// `compact_retain_decrees` of them). A replica further behind catches
    /// up by checkpoint transfer.
    pub log_memory_mb: u64,
    /// Most concurrent client connections (Redis's `maxclients`). Beyond
    /// it a new client gets `-ERR max number of clients reached`; the node
    /// raises its open-file limit to fit, or lowers this with a warning.
    pub max_clients: usize,
    /// Most requests one connection may have awaiting replies.
    pub max_pipelined_per_client: usize,
    /// Size of the persistent-memory region (storage = "nvm"), fixed when
    /// the region is created. 0 (the default) sizes it from the checkpoint
    /// settings: [`Tuning::AUTO_NVM_REGION_FACTOR`] times
    /// [`Tuning::live_log_mb`]. Smaller than
    /// [`Tuning::MIN_NVM_REGION_FACTOR`] times that is refused at startup.
    ///
    /// Why: the region is a circular log; a truncation frees it by moving
    /// its head (copying nothing), and only when an old record pins the
    /// head does it compact by rewriting its live part (the decrees since
    /// the last truncation) as one snapshot, which fits only while the
    /// live part is under half the region; the node
    /// stops taking writes (backpressure) once it passes 7/16, a sixteenth
    /// short of that for the decrees in flight. The live part peaks just
    /// before a checkpoint lets the node truncate, at about `live_log_mb`:
    /// three times that keeps the peak at a third of the region, clear of
    /// 7/16 (and of 6/16, past which the region compacts more often to
    /// measure it); four keeps it at a quarter, leaving room for the writes
    /// that arrive while a checkpoint is written.
    pub nvm_region_mb: u64,
    /// How the persistent-memory region is made durable (storage = "nvm").
    pub nvm_backend: NvmBackend,
    /// File log: least microseconds between the starts of two `fdatasync`s
    /// (group commit pacing, see `paxos_log::LogOptions::min_sync_interval`).
    pub log_sync_interval_us: u64,
    /// File log: create each log segment at its full size, zero-filled
    /// ahead of time, so appends write in place and their `fdatasync`s
    /// journal no size change (see
    /// `paxos_log::LogOptions::preallocate_segments`; off by default, see
    /// docs/BENCHMARKS.md).
    pub log_preallocate: bool,
    /// Threads of the node's async runtime (client connections, QUIC, the
    /// event loop). The file log's writer is a thread of its own.
    pub worker_threads: usize,
    /// Back the heap with transparent huge pages where the kernel offers
    /// them on request (see [`crate::hugepages`]).
    pub transparent_huge_pages: bool,
    /// Close a client connection when for this many seconds it sent
    /// nothing and its socket took no reply, unless a request of it is
    /// still in consensus (Redis's `timeout`; 0: never). A client that
    /// stopped reading its replies is idle too.
    /// Redis defaults to 0; idle connections hold client slots, so we
    /// reclaim them after 5 minutes.
    pub client_timeout_secs: u64,
    /// Connection slots beyond `max_clients` for operators: a connection in
    /// one may only send operator commands (`PAXOS.*`, `INFO`, `PING`,
    /// `QUIT`, and the per-connection ones a client sends on connecting,
    /// such as `COMMAND` and `HELLO`); anything else gets the max-clients
    /// error and is closed, so an operator gets in when ordinary clients
    /// have filled every slot.
    pub admin_reserved_clients: usize,
    /// A client whose replies not yet written to its socket exceed this
    /// many bytes is disconnected at once (the hard limit of Redis's
    /// `client-output-buffer-limit`).
    pub client_output_hard_limit_bytes: usize,
    /// Past this many unwritten reply bytes the node stops reading the
    /// client's requests (backpressure), and disconnects it if it stays
    /// past them for `client_output_soft_limit_secs` (the soft limit of
    /// `client-output-buffer-limit`).
    pub client_output_soft_limit_bytes: usize,
    /// See `client_output_soft_limit_bytes` (0: disconnect at once).
    pub client_output_soft_limit_secs: u64,
    /// Most unwritten reply bytes of all clients together (Redis's
    /// `maxmemory-clients`). Past it the node reads no client's requests
    /// and disconnects the clients holding the most reply bytes until it is
    /// below again.
    pub max_client_reply_bytes: usize,
    /// How the leader makes a read linearizable without writing a decree
    /// ([`ReadMode`]). Every member must use the same mode: a new leader
    /// waits out an old leader's lease only if it knows leases are in use.
    pub read_mode: ReadMode,
    /// The clock assumption of `read_mode = "lease"`: no two replicas'
    /// clocks advance at rates that differ by more than this many parts per
    /// million. A lease is shortened by this much, so the leader stops
    /// serving from it before any follower's election timer can fire. 500
    /// ppm is NTP's frequency tolerance (`MAXFREQ`); commodity oscillators
    /// drift 10-100 ppm. If clocks can drift further, lease reads can be
    /// stale: use `read_index`.
    pub max_clock_drift_ppm: u64,
}

/// How a leader serves linearizable reads without ordering them through
/// the log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadMode {
    /// ReadIndex (the default): the leader notes its commit index, confirms
    /// it still leads with one heartbeat round to a quorum (shared by every
    /// read waiting at that moment), and answers once it has applied up to
    /// the noted index. Safe under any clock behaviour.
    #[default]
    ReadIndex,
    /// Lease reads: a leader that heard from a quorum within the lease
    /// answers at once from its applied state. Relies on
    /// `max_clock_drift_ppm` holding.
    Lease,
}

impl ReadMode {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ReadMode::ReadIndex => "read_index",
            ReadMode::Lease => "lease",
        }
    }
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            pipeline_window: 32,
            max_batch_requests: 2048,
            max_batch_bytes: 1 << 20,
            submit_queue: 16 * 1024,
            heartbeat_ms: 50,
            election_timeout_min_ms: 300,
            election_timeout_max_ms: 600,
            checkpoint_every_decrees: 20_000,
            checkpoint_every_mb: 128,
            compact_retain_decrees: 4096,
            log_memory_mb: 64,
            max_clients: 10_000,
            max_pipelined_per_client: 1024,
            nvm_region_mb: 0,
            nvm_backend: NvmBackend::Auto,
            log_sync_interval_us: 3000,
            log_preallocate: false,
            worker_threads: 2,
            transparent_huge_pages: true,
            client_timeout_secs: 300,
            admin_reserved_clients: 16,
            client_output_hard_limit_bytes: 64 << 20,
            client_output_soft_limit_bytes: 16 << 20,
            client_output_soft_limit_secs: 10,
            max_client_reply_bytes: 512 << 20,
            read_mode: ReadMode::ReadIndex,
            max_clock_drift_ppm: 500,
        }
    }
}

impl Tuning {
    /// `nvm_region_mb = 0` sizes the region at this many times
    /// [`Tuning::live_log_mb`].
    pub const AUTO_NVM_REGION_FACTOR: u64 = 4;
    /// A region smaller than this many times [`Tuning::live_log_mb`] is
    /// refused.
    pub const MIN_NVM_REGION_FACTOR: u64 = 3;

    /// MiB of log a replica keeps live at most between two truncations, as
    /// the checkpoint settings bound it: what it keeps below a checkpoint
    /// for lagging peers (at most `log_memory_mb`) plus what accumulates
    /// until the next checkpoint is durable (`checkpoint_every_mb`; without
    /// that byte trigger, `checkpoint_every_decrees` decrees of up to
    /// `max_batch_bytes` each). `None` if no checkpoint bounds it.
    pub fn live_log_mb(&self) -> Option<u64> {
        let by_decrees = (self.checkpoint_every_decrees != 0).then(|| {
            self.checkpoint_every_decrees
                .saturating_mul(self.max_batch_bytes as u64)
                .div_ceil(1 << 20)
        });
        let by_bytes = (self.checkpoint_every_mb != 0).then_some(self.checkpoint_every_mb);
        let between = match (by_bytes, by_decrees) {
            (Some(b), Some(d)) => b.min(d),
            (b, d) => b.or(d)?,
        };
        Some(between.saturating_add(self.log_memory_mb))
    }

    /// The persistent-memory region size in MiB: `nvm_region_mb`, or with
    /// 0, [`Tuning::AUTO_NVM_REGION_FACTOR`] times
    /// [`Tuning::live_log_mb`]. `None` for 0 when nothing bounds the log
    /// (refused by validation).
    pub fn nvm_region_size_mb(&self) -> Option<u64> {
        match self.nvm_region_mb {
            0 => self
                .live_log_mb()
                .map(|l| l.saturating_mul(Self::AUTO_NVM_REGION_FACTOR)),
            mb => Some(mb),
        }
    }

    /// Refuses a persistent-memory region too small for the live log the
    /// checkpoint settings allow (see [`Tuning::nvm_region_mb`]).
    fn validate_nvm_region(&self) -> Result<(), String> {
        let Some(live) = self.live_log_mb() else {
            return Err("storage = \"nvm\" needs checkpoints to bound its log: set \
                        tuning.checkpoint_every_mb (or checkpoint_every_decrees) above 0"
                .into());
        };
        let min = live.saturating_mul(Self::MIN_NVM_REGION_FACTOR);
        let size = self.nvm_region_size_mb().unwrap_or(0);
        if size < min {
            return Err(format!(
                "tuning.nvm_region_mb = {size} is too small for tuning.checkpoint_every_mb = {} \
                 and tuning.log_memory_mb = {}: the region must hold {}x the log kept between \
                 checkpoints ({live} MiB), at least {min} MiB (set nvm_region_mb = 0 to size it \
                 automatically at {} MiB, or lower checkpoint_every_mb / log_memory_mb)",
                self.checkpoint_every_mb,
                self.log_memory_mb,
                Self::MIN_NVM_REGION_FACTOR,
                live.saturating_mul(Self::AUTO_NVM_REGION_FACTOR),
            ));
        }
        if size > 1 << 20 {
            return Err(format!(
                "tuning.nvm_region_mb: the region would be {size} MiB, more than 1 TiB"
            ));
        }
        Ok(())
    }
}

/// How storage = "nvm" makes its region durable (`tuning.nvm_backend`, see
/// `paxos_nvm::Backend`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NvmBackend {
    /// `"auto"`: real persistent memory (`MAP_SYNC`, `clwb` + `sfence`)
    /// when the data directory is on a DAX file system, else msync. The
    /// environment variable `PMEM_IS_PMEM_FORCE=1` turns the fallback
    /// into `"emulated-pm"` (`0`: `"msync"`), as in PMDK.
    #[default]
    Auto,
    /// `"msync"`: always msync, even on DAX.
    Msync,
    /// `"emulated-pm"`: the persistent-memory flush path (`clwb` +
    /// `sfence`, no msync) on an ordinary shared mapping. Only as durable
    /// as the memory behind the file: on `/dev/shm` it survives a crashed
    /// or killed node, NOT a power loss or reboot.
    EmulatedPm,
}

impl NvmBackend {
    /// The name the config file uses.
    pub fn name(self) -> &'static str {
        match self {
            NvmBackend::Auto => "auto",
            NvmBackend::Msync => "msync",
            NvmBackend::EmulatedPm => "emulated-pm",
        }
    }
}

/// What a node does when its log or checkpoints turn out damaged
/// (checksum failures, unreadable sectors), in the `[recovery]` section.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecoveryConfig {
    /// `"repair"` (the default): keep the longest valid prefix of the log,
    /// set the damaged files aside, and repair what was lost from the peers
    /// before voting again (paxos-core's invariant 11). `"refuse"`: do not
    /// start; an operator inspects first.
    pub on_corruption: CorruptionMode,
    /// Start a damaged replica as if nothing was lost, skipping the repair.
    /// Only for when no repair is possible (the status and the log say why,
    /// for example: a majority of the replicas is damaged) and an operator
    /// decided to accept the loss: this replica may then have forgotten
    /// promises and votes, and chosen values may be lost or changed.
    pub unsafe_skip_repair: bool,
}

/// See [`RecoveryConfig::on_corruption`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CorruptionMode {
    /// Salvage and repair from the peers.
    #[default]
    Repair,
    /// Refuse to start.
    Refuse,
}

impl Default for RecoveryConfig {
    fn default() -> Self {
        RecoveryConfig {
            on_corruption: CorruptionMode::Repair,
            unsafe_skip_repair: false,
        }
    }
}

/// A node's whole configuration.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This replica's id; must appear in `members`.
    pub id: u32,
    /// Log backend.
    pub storage: StorageKind,
    /// Directory for the log, checkpoints and the NVM region file.
    pub data_dir: PathBuf,
    /// Local UDP address to listen on for replicas.
    pub peer_addr: SocketAddr,
    /// Local TCP address to listen on for clients.
    pub client_addr: SocketAddr,
    /// Local TCP address of the Prometheus endpoint (`GET /metrics`, see
    /// [`crate::metrics`]); none if absent.
    #[serde(default)]
    pub metrics_addr: Option<SocketAddr>,
    /// TLS files.
    pub tls: TlsPaths,
    /// The bootstrap membership, this node included (voters, and learners
    /// marked `learner = true`).
    pub members: Vec<Member>,
    /// Knobs.
    #[serde(default)]
    pub tuning: Tuning,
    /// What to do about damaged storage.
    #[serde(default)]
    pub recovery: RecoveryConfig,
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The TOML does not parse or does not match the schema.
    #[error("invalid config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What toml/serde said (names the field and line).
        message: String,
    },
    /// The content parses but makes no sense.
    #[error("invalid config {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl NodeConfig {
    /// Reads and validates a TOML file.
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        NodeConfig::parse(&text, path)
    }

    /// Parses and validates TOML text; `path` is used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<NodeConfig, ConfigError> {
        let config: NodeConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        config.validate().map_err(|message| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        if self.id == 0 {
            return Err("id must be non-zero".into());
        }
        if self.members.is_empty() {
            return Err("members is empty".into());
        }
        let mut ids: Vec<u32> = self.members.iter().map(|m| m.id).collect();
        ids.sort_unstable();
        if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!("member id {} appears twice", w[0]));
        }
        if ids.contains(&0) {
            return Err("member ids must be non-zero".into());
        }
        if !ids.contains(&self.id) {
            return Err(format!("id {} is not in members", self.id));
        }
        if self.members.iter().all(|m| m.learner) {
            return Err("members has no voter (all are learners)".into());
        }
        let mut addrs: Vec<SocketAddr> = self
            .members
            .iter()
            .flat_map(|m| [m.peer_addr, m.client_addr])
            .collect();
        addrs.sort_unstable();
        if let Some(w) = addrs.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!("address {} is used twice", w[0]));
        }
        if let Some(metrics) = self.metrics_addr {
            if metrics == self.client_addr || metrics == self.peer_addr {
                return Err(format!(
                    "metrics_addr {metrics} is also this node's client or peer address"
                ));
            }
        }
        let t = &self.tuning;
        let check = |ok: bool, what: &str| {
            if ok {
                Ok(())
            } else {
                Err(format!("tuning.{what}"))
            }
        };
        check(
            (1..=4096).contains(&t.pipeline_window),
            "pipeline_window must be in 1..=4096",
        )?;
        check(
            (1..=65_536).contains(&t.max_batch_requests),
            "max_batch_requests must be in 1..=65536",
        )?;
        check(
            (1024..=64 << 20).contains(&t.max_batch_bytes),
            "max_batch_bytes must be in 1KiB..=64MiB",
        )?;
        check(
            (2..=1 << 20).contains(&t.submit_queue),
            "submit_queue must be in 2..=1048576",
        )?;
        check(t.heartbeat_ms >= 1, "heartbeat_ms must be at least 1")?;
        check(
            t.election_timeout_min_ms > t.heartbeat_ms && t.election_timeout_max_ms > t.election_timeout_min_ms,
            "election timeouts must satisfy heartbeat_ms < election_timeout_min_ms < election_timeout_max_ms",
        )?;
        check(
            (1..=256).contains(&t.worker_threads),
            "worker_threads must be in 1..=256",
        )?;
        check(
            t.log_sync_interval_us <= 1_000_000,
            "log_sync_interval_us must be at most 1000000",
        )?;
        check(
            t.compact_retain_decrees <= 1 << 24,
            "compact_retain_decrees must be at most 16777216",
        )?;
        check(
            t.checkpoint_every_mb <= 1 << 20,
            "checkpoint_every_mb must be at most 1048576",
        )?;
        check(
            (1..=1 << 20).contains(&t.log_memory_mb),
            "log_memory_mb must be in 1..=1048576",
        )?;
        check(
            (1..=100_000).contains(&t.max_clients),
            "max_clients must be in 1..=100000",
        )?;
        check(
            (1..=65_536).contains(&t.max_pipelined_per_client),
            "max_pipelined_per_client must be in 1..=65536",
        )?;
        check(
            t.nvm_region_mb <= 1 << 20,
            "nvm_region_mb must be in 0..=1048576 (0: sized automatically)",
        )?;
        if self.storage == StorageKind::Nvm {
            t.validate_nvm_region()?;
        }
        check(
            t.client_timeout_secs <= 365 * 86_400,
            "client_timeout_secs must be at most a year (0: never)",
        )?;
        check(
            t.admin_reserved_clients <= 1024,
            "admin_reserved_clients must be at most 1024",
        )?;
        // One reply (a value of up to 512 KiB plus framing) must fit under
        // the limits, or a client reading a large value could never be served.
        check(
            t.client_output_soft_limit_bytes >= 1 << 20
                && t.client_output_hard_limit_bytes >= t.client_output_soft_limit_bytes,
            "client output limits must satisfy 1MiB <= client_output_soft_limit_bytes <= client_output_hard_limit_bytes",
        )?;
        check(
            t.max_client_reply_bytes >= t.client_output_hard_limit_bytes
                && t.max_client_reply_bytes <= 1 << 40,
            "max_client_reply_bytes must be in client_output_hard_limit_bytes..=1TiB",
        )?;
        check(
            t.client_output_soft_limit_secs <= 86_400,
            "client_output_soft_limit_secs must be at most 86400",
        )?;
        check(
            (1..=100_000).contains(&t.max_clock_drift_ppm),
            "max_clock_drift_ppm must be in 1..=100000 (clocks never agree exactly; past 10% a lease is worthless)",
        )?;
        Ok(())
    }

    /// This node's member entry.
    pub fn me(&self) -> &Member {
        // validate() guarantees presence; fall back to the first member
        // rather than panic if a caller built the struct by hand.
        self.members
            .iter()
            .find(|m| m.id == self.id)
            .unwrap_or(&self.members[0])
    }

    /// The replica id.
    pub fn replica_id(&self) -> ReplicaId {
        ReplicaId(self.id)
    }

    /// The bootstrap membership `members` describes.
    pub fn initial_membership(&self) -> Membership {
        let ids = |learner: bool| {
            let mut v: Vec<ReplicaId> = self
                .members
                .iter()
                .filter(|m| m.learner == learner)
                .map(|m| ReplicaId(m.id))
                .collect();
            v.sort_unstable();
            v
        };
        Membership {
            voters: ids(false),
            learners: ids(true),
        }
    }

    /// The client address of a member, if it is one.
    pub fn client_addr_of(&self, id: ReplicaId) -> Option<SocketAddr> {
        self.members
            .iter()
            .find(|m| m.id == id.0)
            .map(|m| m.client_addr)
    }

    /// Renders a configuration as TOML (used by `init`).
    pub fn to_toml(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let storage = match self.storage {
            StorageKind::File => "file",
            StorageKind::Nvm => "nvm",
            StorageKind::Memory => "memory",
        };
        let _ = writeln!(
            s,
            "id = {}\nstorage = \"{}\"\ndata_dir = {}\npeer_addr = \"{}\"\nclient_addr = \"{}\"\n",
            self.id,
            storage,
            toml_path(&self.data_dir),
            self.peer_addr,
            self.client_addr
        );
        if let Some(metrics) = self.metrics_addr {
            let _ = writeln!(s, "metrics_addr = \"{metrics}\"\n");
        }
        let _ = writeln!(
            s,
            "[tls]\ncert = {}\nkey = {}\nca = {}\n",
            toml_path(&self.tls.cert),
            toml_path(&self.tls.key),
            toml_path(&self.tls.ca)
        );
        for m in &self.members {
            let _ = writeln!(
                s,
                "[[members]]\nid = {}\npeer_addr = \"{}\"\nclient_addr = \"{}\"{}\n",
                m.id,
                m.peer_addr,
                m.client_addr,
                if m.learner { "\nlearner = true" } else { "" }
            );
        }
        let t = &self.tuning;
        let _ = writeln!(
            s,
            "[tuning]\npipeline_window = {}\nmax_batch_requests = {}\nmax_batch_bytes = {}\nsubmit_queue = {}\n\
             heartbeat_ms = {}\nelection_timeout_min_ms = {}\nelection_timeout_max_ms = {}\n\
             checkpoint_every_decrees = {}\ncheckpoint_every_mb = {}\ncompact_retain_decrees = {}\nlog_memory_mb = {}\nmax_clients = {}\nmax_pipelined_per_client = {}\nnvm_region_mb = {}\nnvm_backend = \"{}\"\nlog_sync_interval_us = {}\nlog_preallocate = {}\nworker_threads = {}\ntransparent_huge_pages = {}\n\
             client_timeout_secs = {}\nadmin_reserved_clients = {}\nclient_output_hard_limit_bytes = {}\n\
             client_output_soft_limit_bytes = {}\nclient_output_soft_limit_secs = {}\nmax_client_reply_bytes = {}\n\
             read_mode = \"{}\"\nmax_clock_drift_ppm = {}",
            t.pipeline_window,
            t.max_batch_requests,
            t.max_batch_bytes,
            t.submit_queue,
            t.heartbeat_ms,
            t.election_timeout_min_ms,
            t.election_timeout_max_ms,
            t.checkpoint_every_decrees,
            t.checkpoint_every_mb,
            t.compact_retain_decrees,
            t.log_memory_mb,
            t.max_clients,
            t.max_pipelined_per_client,
            t.nvm_region_mb,
            t.nvm_backend.name(),
            t.log_sync_interval_us,
            t.log_preallocate,
            t.worker_threads,
            t.transparent_huge_pages,
            t.client_timeout_secs,
            t.admin_reserved_clients,
            t.client_output_hard_limit_bytes,
            t.client_output_soft_limit_bytes,
            t.client_output_soft_limit_secs,
            t.max_client_reply_bytes,
            t.read_mode.as_str(),
            t.max_clock_drift_ppm
        );
        let r = &self.recovery;
        let _ = writeln!(
            s,
            "\n[recovery]\non_corruption = \"{}\"\nunsafe_skip_repair = {}",
            match r.on_corruption {
                CorruptionMode::Repair => "repair",
                CorruptionMode::Refuse => "refuse",
            },
            r.unsafe_skip_repair
        );
        s
    }
}

/// A path as a TOML string literal, escaped by the toml crate.
fn toml_path(p: &Path) -> String {
    toml::Value::String(p.display().to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
id = 2
storage = "file"
data_dir = "/tmp/x"
peer_addr = "0.0.0.0:7002"
client_addr = "0.0.0.0:6002"
[tls]
cert = "c.pem"
key = "k.pem"
ca = "ca.pem"
[[members]]
id = 1
peer_addr = "127.0.0.1:7001"
client_addr = "127.0.0.1:6001"
[[members]]
id = 2
peer_addr = "127.0.0.1:7002"
client_addr = "127.0.0.1:6002"
[[members]]
id = 3
peer_addr = "127.0.0.1:7003"
client_addr = "127.0.0.1:6003"
"#;

    fn parse(text: &str) -> Result<NodeConfig, ConfigError> {
        NodeConfig::parse(text, Path::new("node.toml"))
    }

    #[test]
    fn good_config_parses_with_defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.me().client_addr, "127.0.0.1:6002".parse().unwrap());
        assert_eq!(c.tuning, Tuning::default());
        assert_eq!(c.storage, StorageKind::File);
        assert_eq!(parse(&c.to_toml()).unwrap(), c, "to_toml round-trips");
    }

    #[test]
    fn nvm_backend_parses_round_trips_and_rejects_unknown_names() {
        for (name, backend) in [
            ("auto", NvmBackend::Auto),
            ("msync", NvmBackend::Msync),
            ("emulated-pm", NvmBackend::EmulatedPm),
        ] {
            let text = format!("{GOOD}\n[tuning]\nnvm_backend = \"{name}\"\n");
            let c = parse(&text).unwrap();
            assert_eq!(c.tuning.nvm_backend, backend);
            assert_eq!(parse(&c.to_toml()).unwrap(), c, "to_toml keeps {name}");
        }
        let bad = format!("{GOOD}\n[tuning]\nnvm_backend = \"pmem\"\n");
        let e = parse(&bad).unwrap_err().to_string();
        assert!(e.contains("nvm_backend") || e.contains("pmem"), "{e}");
    }

    #[test]
    fn metrics_addr_is_optional_round_trips_and_must_be_its_own() {
        assert_eq!(parse(GOOD).unwrap().metrics_addr, None);
        let with = GOOD.replace(
            "client_addr = \"0.0.0.0:6002\"",
            "client_addr = \"0.0.0.0:6002\"\nmetrics_addr = \"127.0.0.1:9121\"",
        );
        let c = parse(&with).unwrap();
        assert_eq!(c.metrics_addr, Some("127.0.0.1:9121".parse().unwrap()));
        assert_eq!(
            parse(&c.to_toml()).unwrap(),
            c,
            "to_toml keeps metrics_addr"
        );
        let clash = GOOD.replace(
            "client_addr = \"0.0.0.0:6002\"",
            "client_addr = \"0.0.0.0:6002\"\nmetrics_addr = \"0.0.0.0:6002\"",
        );
        let e = parse(&clash).unwrap_err().to_string();
        assert!(e.contains("metrics_addr 0.0.0.0:6002"), "{e}");
        let bad = GOOD.replace(
            "client_addr = \"0.0.0.0:6002\"",
            "client_addr = \"0.0.0.0:6002\"\nmetrics_addr = \"nowhere\"",
        );
        let e = parse(&bad).unwrap_err().to_string();
        assert!(e.contains("metrics_addr"), "{e}");
    }

    /// storage = "nvm": a region too small for the log kept between
    /// checkpoints is refused with both settings and the minimum named;
    /// 0 (the default) sizes it from them.
    #[test]
    fn an_nvm_region_too_small_for_the_checkpoint_settings_is_refused() {
        let nvm = GOOD.replace("storage = \"file\"", "storage = \"nvm\"");
        let with = |tuning: &str| parse(&format!("{nvm}\n[tuning]\n{tuning}\n"));
        // The defaults: 128 MiB between checkpoints plus 64 kept below one.
        let c = parse(&nvm).unwrap();
        assert_eq!(c.tuning.nvm_region_mb, 0, "sized automatically by default");
        assert_eq!(c.tuning.live_log_mb(), Some(192));
        assert_eq!(c.tuning.nvm_region_size_mb(), Some(4 * 192));
        // The old default of 256 MiB is what dropped clients under load.
        let e = with("nvm_region_mb = 256").unwrap_err().to_string();
        for needle in [
            "nvm_region_mb = 256",
            "checkpoint_every_mb = 128",
            "log_memory_mb = 64",
            "at least 576 MiB",
        ] {
            assert!(e.contains(needle), "{needle:?} missing from: {e}");
        }
        assert!(with("nvm_region_mb = 576").is_ok());
        let c = with("nvm_region_mb = 24\ncheckpoint_every_mb = 4\nlog_memory_mb = 4").unwrap();
        assert_eq!(c.tuning.nvm_region_size_mb(), Some(24));
        assert!(with("nvm_region_mb = 23\ncheckpoint_every_mb = 4\nlog_memory_mb = 4").is_err());
        // Without a byte trigger, decrees of up to max_batch_bytes bound it.
        let c = with("checkpoint_every_mb = 0\ncheckpoint_every_decrees = 10\nlog_memory_mb = 6")
            .unwrap();
        assert_eq!(c.tuning.live_log_mb(), Some(10 + 6));
        // Nothing bounds the log without checkpoints.
        let e = with("checkpoint_every_mb = 0\ncheckpoint_every_decrees = 0")
            .unwrap_err()
            .to_string();
        assert!(e.contains("checkpoint_every_mb"), "{e}");
        // Only storage = "nvm" is held to it.
        assert!(parse(&format!("{GOOD}\n[tuning]\nnvm_region_mb = 1\n")).is_ok());
        let c = parse(&nvm).unwrap();
        assert_eq!(parse(&c.to_toml()).unwrap(), c, "to_toml round-trips the 0");
    }

    #[test]
    fn the_docker_compose_configs_load() {
        let files = [
            include_str!("../../docs/deploy/compose/node1.toml"),
            include_str!("../../docs/deploy/compose/node2.toml"),
            include_str!("../../docs/deploy/compose/node3.toml"),
        ];
        let compose = include_str!("../../docs/deploy/docker-compose.yml");
        for (i, text) in files.iter().enumerate() {
            let c = parse(text).unwrap();
            assert_eq!(c.id, i as u32 + 1);
            assert_eq!(c.members.len(), 3);
            assert_eq!(c.metrics_addr, Some("0.0.0.0:9121".parse().unwrap()));
            assert!(c.tls.cert.ends_with(format!("replica-{}.pem", i + 1)));
            // Redirects name what the host publishes for each member, not
            // the container-internal address it listens on.
            for m in &c.members {
                let host_port = 6380 + m.id;
                assert_eq!(
                    m.client_addr,
                    format!("127.0.0.1:{host_port}").parse().unwrap()
                );
                assert!(
                    compose.contains(&format!("ports: [\"{host_port}:6379\"")),
                    "the compose file publishes node{}'s 6379 as {host_port}",
                    m.id
                );
            }
        }
    }

    #[test]
    fn bad_configs_give_clear_errors() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "storage = \"file\"",
                "storage = \"tape\"",
                "unknown variant `tape`",
            ),
            ("id = 2", "id = 9", "id 9 is not in members"),
            ("id = 2", "id = 0", "id must be non-zero"),
            ("id = 3\npeer", "id = 2\npeer", "member id 2 appears twice"),
            (
                "127.0.0.1:7003",
                "127.0.0.1:7002",
                "address 127.0.0.1:7002 is used twice",
            ),
            ("127.0.0.1:7003", "not-an-address", "invalid socket address"),
            (
                "data_dir = \"/tmp/x\"",
                "data_dir = \"/tmp/x\"\nbogus = 1",
                "unknown field `bogus`",
            ),
            (
                "ca = \"ca.pem\"",
                "ca = \"ca.pem\"\n[tuning]\npipeline_window = 0",
                "pipeline_window must be in",
            ),
            (
                "ca = \"ca.pem\"",
                "ca = \"ca.pem\"\n[tuning]\nheartbeat_ms = 500",
                "heartbeat_ms < election_timeout_min_ms",
            ),
            (
                "ca = \"ca.pem\"",
                "ca = \"ca.pem\"\n[tuning]\nclient_output_soft_limit_bytes = 1000",
                "1MiB <= client_output_soft_limit_bytes",
            ),
            (
                "ca = \"ca.pem\"",
                "ca = \"ca.pem\"\n[tuning]\nmax_client_reply_bytes = 1048576",
                "max_client_reply_bytes must be in",
            ),
            ("[tls]", "[tlz]", "unknown field `tlz`"),
            (
                "ca = \"ca.pem\"",
                "ca = \"ca.pem\"\n[tuning]\nread_mode = \"fast\"",
                "unknown variant `fast`, expected `read_index` or `lease`",
            ),
            (
                "ca = \"ca.pem\"",
                "ca = \"ca.pem\"\n[tuning]\nmax_clock_drift_ppm = 0",
                "max_clock_drift_ppm must be in 1..=100000",
            ),
        ];
        for (from, to, expect) in cases {
            let text = GOOD.replacen(from, to, 1);
            assert_ne!(text, GOOD, "case {to} did not change the text");
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains(expect), "{to}: got {err}");
            assert!(err.contains("node.toml"), "error names the file: {err}");
        }
    }

    #[test]
    fn read_mode_defaults_to_read_index_and_round_trips() {
        assert_eq!(parse(GOOD).unwrap().tuning.read_mode, ReadMode::ReadIndex);
        let lease = GOOD.replacen(
            "ca = \"ca.pem\"",
            "ca = \"ca.pem\"\n[tuning]\nread_mode = \"lease\"\nmax_clock_drift_ppm = 200",
            1,
        );
        let c = parse(&lease).unwrap();
        assert_eq!(c.tuning.read_mode, ReadMode::Lease);
        assert_eq!(c.tuning.max_clock_drift_ppm, 200);
        assert_eq!(
            parse(&c.to_toml()).unwrap(),
            c,
            "to_toml keeps the read mode"
        );
    }

    #[test]
    fn a_joining_node_lists_itself_as_a_learner() {
        let text = GOOD.replacen(
            "client_addr = \"127.0.0.1:6002\"",
            "client_addr = \"127.0.0.1:6002\"\nlearner = true",
            1,
        );
        let c = parse(&text).unwrap();
        let m = c.initial_membership();
        assert_eq!(m.voters, vec![ReplicaId(1), ReplicaId(3)]);
        assert_eq!(m.learners, vec![ReplicaId(2)]);
        assert!(m.is_well_formed());
        assert_eq!(parse(&c.to_toml()).unwrap(), c, "to_toml keeps learner");
        let all_learners = text
            .replace("id = 1\npeer", "id = 1\nlearner = true\npeer")
            .replace("id = 3\npeer", "id = 3\nlearner = true\npeer");
        let err = parse(&all_learners).unwrap_err().to_string();
        assert!(err.contains("no voter"), "{err}");
    }

    #[test]
    fn missing_file_is_an_error() {
        let err = NodeConfig::load(Path::new("/nonexistent/node.toml")).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }));
    }
}
