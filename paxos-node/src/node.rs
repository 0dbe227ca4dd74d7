//! [`Node`]: one replica of a replicated state machine, sans-IO.
//!
//! The node owns a `paxos_core::Replica`, the application's
//! [`StateMachine`] and the replicated [`Directory`], and everything in
//! between:
//!
//! - **Proposals to completions.** Client requests come in with a
//!   completion handle of the driver's choosing (`C`); the leader frames
//!   them into decrees ([`crate::framing`]), proposes them, and when a decree
//!   is applied settles each of its requests exactly once: `Complete` with
//!   the state machine's reply if the chosen value is the batch this node
//!   proposed at that slot, `Abort(OutcomeUnknown)` if another value took
//!   the slot or leadership was lost after proposing,
//!   `Abort(NotPrimary)` if it was never proposed.
//! - **Retry of stalled batches.** A batch the core refuses because the
//!   window is full or a `Reconfigure` is unchosen waits and is proposed
//!   as soon as the core accepts it; it is never failed for that.
//! - **Checkpoint scheduling.** Every `checkpoint_every` applied decrees a
//!   [`CheckpointJob`] goes to the driver; once it reports it durable, the
//!   core compacts below it (keeping `compact_retain` decrees).
//! - **Backpressure from a full log.** While storage reports its log full
//!   ([`Node::on_log_space`]) no new batch is proposed and no Accept is
//!   voted on (a follower would otherwise append what the leader sends until
//!   storage fails); a checkpoint and a truncation through it make the room.
//! - **State transfer.** A replica behind everything its peers retain
//!   fetches the newest checkpoint chunk by chunk from a peer, has it
//!   written and verified, installs it and restarts its core from it in
//!   place; peers serve chunks and take a fresh checkpoint when theirs would
//!   not help. The install never holds up the event loop, however large
//!   the state: see [State transfer installs](#state-transfer-installs).
//! - **Membership directory.** Applied `Reconfigure`s and registered
//!   addresses are recorded in the directory (kept in checkpoints), the
//!   core restarts in the right membership, and the transport's peer set
//!   follows ([`Effect::SetPeers`]).
//!
//! # Driving it
//!
//! Every input takes the current [`Time`]. After each input, drain
//! [`Node::poll_effect`] and carry out the effects in order; call
//! [`Node::handle_tick`] at [`Node::next_timer`]. The production driver
//! (paxos-kv's event loop) and the simulator (paxos-sim) do exactly this.
//!
//! # State transfer installs
//!
//! Restoring a received checkpoint reads and rebuilds the whole state (at
//! ten million keys, 1.27 GB and about five seconds), so it happens off
//! the event loop, in two phases:
//!
//! 1. Once the received checkpoint is durable and verified
//!    ([`Node::on_transfer_finished`]), the node issues
//!    [`Effect::InstallCheckpoint`]. The driver restores the checkpoint
//!    into a **fresh** state machine of its own making on another thread
//!    ([`crate::storage::restore_slot`]); the node's own state machine is
//!    not touched.
//! 2. Back on the event loop, the driver syncs the log, reads the durable
//!    state and calls [`Node::install_restored`], which swaps the fresh
//!    state machine in and restarts the core, and hands back the one no
//!    longer needed (the old one, to be dropped off the loop as well). A
//!    restore that failed is reported with [`Node::on_restore_failed`]
//!    instead: the node fetches again.
//!
//! In between, the node runs as before on its old state: it handles
//! ticks, peer messages and requests, votes, applies whatever it can learn
//! from the log, and serves reads. It starts no other transfer (one
//! install at a time: [`Node::installing`]) and no scheduled checkpoint
//! of the state about to be replaced. If it meanwhile applied up to the
//! checkpoint's slot some other way, the install is skipped and the fresh
//! state machine handed back.
//!
//! # Invariants
//!
//! - Every request handed in gets exactly one `Complete` or `Abort`.
//! - `Complete` only for a request whose decree was chosen and applied here.
//! - Decrees are applied in slot order, each once; `applied()` is the last.
//! - At most `core.pipeline_window` proposals of this node are in flight.
//! - A checkpoint at slot `s` describes exactly the state after applying
//!   slot `s` (state machine, directory, membership).
//! - At most one received checkpoint is being restored, and no transfer
//!   runs while it is.

use crate::config::NodeConfig;
use crate::directory::{membership_text, Directory, MemberAddrs};
use crate::effect::{AbortReason, CheckpointJob, DecreeTiming, Effect, PersistId, TransferOp};
use crate::framing::{self, DecreeKind, FramedBuilder, Header, ProposalTag, HEADER_LEN};
use crate::reads::{ReadConsistency, ReadMode, ReadQueue, RequestKind, Waiting};
use crate::state_machine::{Decree, StateMachine};
use crate::storage::{encode_node_section, Restored};
use crate::xfer::{self, XferMessage};
use crate::ClusterView;
use bytes::{Bytes, BytesMut};
use paxos_core::batch::BatchArena;
use paxos_core::{
    codec, Action, Ballot, DurableState, Membership, Message, ProposeError, ReplicaId, Role, Slot,
    Time, Value,
};
use paxos_log::checkpoint::{CheckpointMeta, Chunk};
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;

/// Why a node could not start or restart its core.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The core configuration is invalid.
    #[error("core configuration: {0}")]
    Config(#[from] paxos_core::ConfigError),
    /// A restored checkpoint does not match the state machine's position.
    #[error("checkpoint {path} covers slot {slot}, but {why}")]
    Checkpoint {
        /// The file.
        path: String,
        /// Its slot.
        slot: Slot,
        /// What is inconsistent.
        why: &'static str,
    },
}

/// What a node starts from: what storage recovered and the state machine
/// restored from the newest checkpoint (if any).
#[derive(Debug)]
pub struct Recovery<S> {
    /// The log's durable state.
    pub durable: DurableState,
    /// The state machine, restored from `checkpoint` if there is one.
    pub state_machine: S,
    /// The checkpoint it was restored from.
    pub checkpoint: Option<Restored>,
    /// Storage reported damage that may have lost acknowledged data (see
    /// `paxos_log::Damage::may_have_lost_acknowledged`): the core repairs
    /// before it votes again (paxos-core's invariant 11), and the node asks
    /// the driver to clear the damage record once that is done
    /// ([`Effect::ClearDamage`]).
    pub damaged: bool,
}

/// A node's status, for status pages and redirects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    /// This replica.
    pub id: ReplicaId,
    /// Its role.
    pub role: Role,
    /// The leader it believes in (for a replica that was removed: a voter
    /// to send clients to).
    pub leader: Option<ReplicaId>,
    /// Its promised ballot.
    pub ballot: Ballot,
    /// Highest slot known chosen.
    pub commit_index: Slot,
    /// Highest slot applied to the state machine.
    pub applied_index: Slot,
    /// Decrees this node proposed that are not applied yet.
    pub in_flight: usize,
    /// Slot of the newest durable checkpoint (0: none).
    pub checkpoint_slot: Slot,
    /// The replica misses decrees no peer retains and is fetching a
    /// checkpoint.
    pub needs_snapshot: bool,
    /// Batches proposed since start.
    pub proposed_batches: u64,
    /// Client requests proposed since start.
    pub proposed_requests: u64,
    /// Checkpoints this node saved since start.
    pub checkpoints_saved: u64,
    /// Checkpoints it installed from peers since start.
    pub checkpoints_installed: u64,
    /// A repair after storage damage, in progress.
    pub repair: Option<paxos_core::RepairProgress>,
    /// How this node confirms linearizable reads.
    pub read_mode: ReadMode,
    /// Reads waiting for a leadership confirmation or for the state
    /// machine to apply their slot.
    pub pending_reads: usize,
    /// Reads answered without the log since start.
    pub reads_served: u64,
    /// Storage reported its log full ([`paxos_log::LogSpace::Full`]): this
    /// node proposes nothing new until a truncation gives it room.
    pub log_full: bool,
    /// Accepts this node did not vote on because its log was full, since
    /// start: it stays out of quorums until a truncation gives it room.
    pub accepts_refused_while_full: u64,
    /// Catch-up chunks served to peers from storage (decrees below the
    /// core's in-memory log) since start.
    pub catchup_served_from_storage: u64,
}

/// Storage's log is full and nothing this node can do frees it: every
/// slot it applied is truncated and no checkpoint is running. The driver
/// must stop the replica (crash-stop) rather than wait forever.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the log is full ({live_bytes} live bytes, limit {limit_bytes}) and truncating through \
     every applied slot ({applied}) did not free it; the region is too small for the \
     decrees accepted but not yet applied: give it more room"
)]
pub struct LogFullError {
    /// Live bytes storage reported.
    pub live_bytes: u64,
    /// Its limit.
    pub limit_bytes: u64,
    /// The last slot applied (and truncated).
    pub applied: Slot,
}

/// Storage's log was reported full at `since` (see [`Node::on_log_space`]).
#[derive(Debug, Clone, Copy)]
struct LogFull {
    since: Time,
    /// When the last warning about it was logged.
    warned_at: Time,
    live_bytes: u64,
    limit_bytes: u64,
}

/// Least time between two warnings that writes wait for a full log.
const LOG_FULL_WARN_EVERY_US: u64 = 5_000_000;
/// Least time between two checkpoints a full log starts (one that failed
/// is retried this often, not at every tick).
const LOG_FULL_CHECKPOINT_RETRY_US: u64 = 1_000_000;

/// One batch this node proposed and has not yet seen applied.
#[derive(Debug)]
struct Proposal<C> {
    slot: Slot,
    tag: ProposalTag,
    completions: Vec<C>,
    batched: Time,
    proposed: Time,
    durable: Option<Time>,
    /// The persist of this leader's own vote for it (stage timing only).
    vote: Option<PersistId>,
    /// Reads riding in it (see [`crate::reads`]).
    reads: BatchReads<C>,
}

/// Reads riding in a batch: each with the number of the batch's requests
/// that precede it, in that order.
type BatchReads<C> = Vec<(usize, Waiting<C>)>;

/// A framed batch the core refused for now (window full, or a
/// `Reconfigure` unchosen), proposed again first.
#[derive(Debug)]
struct Stalled<C> {
    value: Bytes,
    tag: ProposalTag,
    completions: Vec<C>,
    reads: BatchReads<C>,
    batched: Time,
}

/// The batch [`Node::propose_requests`] is filling.
struct OpenBatch<C> {
    builder: FramedBuilder,
    tag: ProposalTag,
    completions: Vec<C>,
    reads: BatchReads<C>,
}

/// An incoming checkpoint transfer.
#[derive(Debug)]
struct Transfer {
    peer: ReplicaId,
    /// 0 until the first chunk names it.
    slot: Slot,
    offset: u64,
    data_len: u64,
    last_progress: Time,
    /// When it was requested, for the transfer rate in the log.
    requested_at: Time,
    /// Every chunk was handed to the driver; waiting for `Finish`.
    finishing: bool,
    /// A write was requested, so there may be a partial file to abandon.
    started: bool,
    /// Chunks are requested up to here (the next request's offset).
    requested_to: u64,
    /// The peer's chunk length (its first chunk's), which places the
    /// requests after it; 0 until then.
    chunk_len: u64,
    /// Chunks that arrived ahead of `offset`, by offset (at most
    /// `transfer_window` of them).
    early: BTreeMap<u64, (CheckpointMeta, Chunk)>,
}

/// The Accept-encoding cache key: a (ballot, slot) pair names one value,
/// the commit index and length make a stale hit impossible.
type AcceptKey = (Ballot, Slot, Slot, usize);

/// One replica of a replicated state machine (see the module docs).
pub struct Node<S: StateMachine, C> {
    config: NodeConfig,
    id: ReplicaId,
    core: paxos_core::Replica,
    /// Bumped at every core restart; tags persists.
    epoch: u64,
    sm: S,
    applied: Slot,
    directory: Directory,
    effects: VecDeque<Effect<S::Snapshot, C>>,
    proposals: VecDeque<Proposal<C>>,
    stalled: VecDeque<Stalled<C>>,
    counter: u64,
    /// Reused per decree.
    outputs: Vec<Bytes>,
    send_buf: BytesMut,
    /// Decrees this leader builds are carved from it, so that a retained
    /// decree holds only its own bytes (see [`BatchArena`]).
    batch_arena: BatchArena,
    last_accept: Option<(AcceptKey, Bytes)>,
    status: paxos_core::Status,
    is_leader: bool,
    last_checkpoint_started: Slot,
    /// Payload bytes of the decrees applied since `last_checkpoint_started`.
    applied_bytes_since_checkpoint: u64,
    checkpoint_running: bool,
    /// When the running checkpoint was asked for, for its duration in the
    /// log (operators size `checkpoint_every_*` by it).
    checkpoint_started_at: Time,
    checkpoint_slot: Slot,
    needs_snapshot: bool,
    /// The last [`Effect::ReleaseLogMemory`] issued.
    log_memory_released: Slot,
    transfer: Option<Transfer>,
    transfer_rotation: usize,
    /// The received checkpoint the driver is restoring off the event loop
    /// ([`Effect::InstallCheckpoint`] issued, neither
    /// [`Node::install_restored`] nor [`Node::on_restore_failed`] reported
    /// yet). No other transfer starts meanwhile.
    installing: Option<Slot>,
    /// The persist id issued for the newest proposal's own vote is not yet
    /// identified (stage timing).
    awaiting_vote: Option<Slot>,
    /// The core is repairing (its storage reported damage).
    repairing: bool,
    /// When the last checkpoint failed (none since succeeded).
    checkpoint_failed_at: Option<Time>,
    /// Storage's log is full: propose nothing new (see [`Node::on_log_space`]).
    log_full: Option<LogFull>,
    /// The slot the last `Truncate` this node asked for covers.
    compacted_through: Slot,
    // Cluster-view bookkeeping.
    book: Arc<BTreeMap<ReplicaId, MemberAddrs>>,
    book_generation: u64,
    membership_slot_seen: Option<Slot>,
    was_member: bool,
    removed: bool,
    peers_sent: Option<BTreeMap<ReplicaId, SocketAddr>>,
    stats: NodeStatus,
    /// Reads waiting to be answered (see [`crate::reads`]).
    reads: ReadQueue<C>,
    /// Reads handed in with writes but ahead of any, waiting for the next
    /// batch this node opens (see [`Node::may_defer_reads`]).
    deferred_reads: BatchReads<C>,
    /// `PlantedBug::ReadsAtOnce`: reads handed in with writes are answered
    /// at once, from the state as it stands.
    #[cfg(feature = "planted-bugs")]
    planted_reads_at_once: bool,
}

impl<S: StateMachine, C> std::fmt::Debug for Node<S, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.id)
            .field("applied", &self.applied)
            .field("is_leader", &self.is_leader)
            .field("proposals", &self.proposals.len())
            .field("stalled", &self.stalled.len())
            .finish_non_exhaustive()
    }
}

impl<S: StateMachine, C> Node<S, C> {
    /// Starts a node from what its storage recovered. The core restarts in
    /// the membership the checkpoint's directory records (or the bootstrap
    /// one), at the checkpoint's slot.
    pub fn new(config: NodeConfig, recovery: Recovery<S>, now: Time) -> Result<Self, NodeError> {
        let Recovery {
            durable,
            state_machine,
            checkpoint,
            damaged,
        } = recovery;
        let (applied, directory) = match checkpoint {
            Some(r) => (r.meta.last_applied, r.directory),
            None => (Slot::ZERO, Directory::default()),
        };
        let mut core_config = config.core_config();
        directory.restart_membership(&mut core_config);
        core_config.repair = damaged;
        if damaged {
            tracing::warn!(
                "storage lost data this replica may have acknowledged: it does not vote until every voter answered and it learned every slot it may have voted on"
            );
        }
        let compacted_through = durable.truncated_through;
        let core = paxos_core::Replica::try_new(core_config, durable, applied, config.seed, now)?;
        let status = core.status();
        let id = config.core.id;
        let mut node = Node {
            id,
            core,
            epoch: 0,
            sm: state_machine,
            applied,
            directory,
            effects: VecDeque::new(),
            proposals: VecDeque::new(),
            stalled: VecDeque::new(),
            counter: 0,
            outputs: Vec::new(),
            send_buf: BytesMut::with_capacity(64 * 1024),
            batch_arena: BatchArena::new(),
            last_accept: None,
            status,
            is_leader: false,
            last_checkpoint_started: applied,
            applied_bytes_since_checkpoint: 0,
            checkpoint_running: false,
            checkpoint_started_at: Time::default(),
            checkpoint_slot: applied,
            needs_snapshot: false,
            log_memory_released: Slot::ZERO,
            transfer: None,
            transfer_rotation: 0,
            installing: None,
            awaiting_vote: None,
            repairing: damaged,
            checkpoint_failed_at: None,
            log_full: None,
            compacted_through,
            book: Arc::new(BTreeMap::new()),
            book_generation: u64::MAX,
            membership_slot_seen: None,
            was_member: false,
            removed: false,
            peers_sent: None,
            stats: NodeStatus {
                id,
                role: Role::Follower,
                leader: None,
                ballot: Ballot::ZERO,
                commit_index: Slot::ZERO,
                applied_index: applied,
                in_flight: 0,
                checkpoint_slot: applied,
                needs_snapshot: false,
                proposed_batches: 0,
                proposed_requests: 0,
                checkpoints_saved: 0,
                checkpoints_installed: 0,
                repair: None,
                read_mode: config.read_mode,
                pending_reads: 0,
                reads_served: 0,
                log_full: false,
                accepts_refused_while_full: 0,
                catchup_served_from_storage: 0,
            },
            reads: ReadQueue::new(config.max_pending_reads, config.max_pending_read_bytes),
            deferred_reads: Vec::new(),
            #[cfg(feature = "planted-bugs")]
            planted_reads_at_once: false,
            config,
        };
        node.refresh_cluster(true);
        node.process(now);
        Ok(node)
    }

    // ------------------------------------------------------------------
    // Inputs.
    // ------------------------------------------------------------------

    /// Whether the driver should hand in client requests now: this node
    /// leads, has room in its window and in its log, and nothing stalled.
    /// (Requests handed in otherwise are still settled correctly: refused
    /// with `NotPrimary` or queued behind the stalled ones.)
    pub fn wants_requests(&self) -> bool {
        !self.is_leader
            || (self.stalled.is_empty()
                && self.log_full.is_none()
                && self.proposals.len() < self.config.core.pipeline_window)
    }

    /// Most requests, and most request bytes, that fit one decree next to
    /// its header: drain at most this much per
    /// [`Node::propose_requests`] call. Every request costs 4 bytes of
    /// framing on top of its length.
    pub fn drain_limits(&self) -> (usize, usize) {
        let limits = self.config.core.batch_limits;
        (
            limits.max_requests.saturating_sub(1).max(1),
            limits.max_bytes.saturating_sub(4 + 4 + HEADER_LEN),
        )
    }

    /// Client requests for the state machine, each with its completion
    /// handle and its kind; drains `requests`. On the leader they become
    /// one or more decrees, each [`RequestKind::Read`] riding at its place
    /// in the batch open when it comes (see [`crate::reads`]); elsewhere
    /// each is aborted with `NotPrimary`. `batched` is when the driver took
    /// them (stage timing; pass `now` otherwise).
    pub fn propose_requests(
        &mut self,
        now: Time,
        batched: Time,
        requests: &mut Vec<(Bytes, C, RequestKind)>,
    ) {
        if requests.is_empty() {
            return;
        }
        if !self.is_leader {
            let leader = self.leader_hint();
            for (_, c, _) in requests.drain(..) {
                self.effects.push_back(Effect::Abort {
                    completion: c,
                    reason: AbortReason::NotPrimary { leader },
                });
            }
            return;
        }
        let mut builder: Option<OpenBatch<C>> = None;
        for (request, completion, kind) in requests.drain(..) {
            #[cfg(feature = "planted-bugs")]
            if kind == RequestKind::Read && self.planted_reads_at_once {
                // The planted bug: answered from the state as it stands, not
                // at its place in a chosen batch.
                self.answer_read(Waiting {
                    request,
                    completion,
                });
                continue;
            }
            if kind == RequestKind::Read && builder.is_none() && self.may_defer_reads() {
                // Reads ahead of any write: they ride the next batch this
                // node opens, rather than a decree of their own.
                self.deferred_reads.push((
                    0,
                    Waiting {
                        request,
                        completion,
                    },
                ));
                continue;
            }
            if kind == RequestKind::Write
                && builder
                    .as_ref()
                    .is_some_and(|o| !o.builder.fits(request.len()))
            {
                if let Some(open) = builder.take() {
                    self.propose_open(now, open, batched);
                }
            }
            let open = builder.get_or_insert_with(|| self.open_batch(now));
            match kind {
                RequestKind::Read => {
                    let before = open.completions.len();
                    open.reads.push((
                        before,
                        Waiting {
                            request,
                            completion,
                        },
                    ));
                }
                RequestKind::Write => {
                    if open.builder.push(&request) {
                        open.completions.push(completion);
                    } else {
                        // Bigger than a whole decree: it can never be proposed.
                        self.effects.push_back(Effect::Abort {
                            completion,
                            reason: AbortReason::TooLarge,
                        });
                    }
                }
            }
        }
        if let Some(open) = builder {
            self.propose_open(now, open, batched);
        }
        self.process(now);
    }

    /// Opens the next client batch, with the deferred reads first (they
    /// arrived before anything it will hold).
    fn open_batch(&mut self, now: Time) -> OpenBatch<C> {
        let header = self.next_header(now, DecreeKind::Client);
        let limits = self.config.core.batch_limits;
        OpenBatch {
            builder: FramedBuilder::new_in(limits, &header, &mut self.batch_arena),
            tag: header.tag,
            completions: Vec::new(),
            reads: std::mem::take(&mut self.deferred_reads),
        }
    }

    /// Whether reads handed in ahead of any write may wait for the next
    /// batch: a batch of this node's is in flight (or stalled), so one will
    /// be applied soon and [`Node::flush_deferred_reads`] proposes a batch
    /// for them when none is left; and not too many wait already.
    fn may_defer_reads(&self) -> bool {
        (!self.proposals.is_empty() || !self.stalled.is_empty())
            && self.deferred_reads.len() < self.config.core.batch_limits.max_requests
    }

    /// Proposes the deferred reads as a batch of their own once nothing of
    /// this node's is in flight or stalled (no batch would come for them
    /// otherwise); returns whether it did.
    fn flush_deferred_reads(&mut self, now: Time) -> bool {
        if self.deferred_reads.is_empty()
            || !self.is_leader
            || !self.proposals.is_empty()
            || !self.stalled.is_empty()
        {
            return false;
        }
        let open = self.open_batch(now);
        self.propose_open(now, open, now);
        true
    }

    /// Finishes a batch and proposes it, unless it holds no request and no
    /// read (then it only hands the chunk's room back). A batch of reads
    /// alone is proposed as a decree of no requests: see [`crate::reads`].
    fn propose_open(&mut self, now: Time, open: OpenBatch<C>, batched: Time) {
        let decree = open.builder.finish_in(&mut self.batch_arena);
        if !open.completions.is_empty() || !open.reads.is_empty() {
            self.propose_framed(now, decree, open.tag, open.completions, open.reads, batched);
        }
    }

    /// A command for the replicated directory (see
    /// [`crate::directory::encode_register`]), proposed as a decree of its
    /// own. Its reply is empty on success, an error message otherwise.
    pub fn propose_directory(&mut self, now: Time, command: Bytes, completion: C) {
        if !self.is_leader {
            let leader = self.leader_hint();
            self.effects.push_back(Effect::Abort {
                completion,
                reason: AbortReason::NotPrimary { leader },
            });
            return;
        }
        let header = self.next_header(now, DecreeKind::Directory);
        let limits = self.config.core.batch_limits;
        let mut b = FramedBuilder::new_in(limits, &header, &mut self.batch_arena);
        let fits = b.push(&command);
        let decree = b.finish_in(&mut self.batch_arena);
        if !fits {
            self.effects.push_back(Effect::Abort {
                completion,
                reason: AbortReason::TooLarge,
            });
            return;
        }
        self.propose_framed(now, decree, header.tag, vec![completion], Vec::new(), now);
        self.process(now);
    }

    /// A read that skips the log (see [`crate::reads`]): answered by
    /// [`StateMachine::query`] with `Effect::Complete` (its `slot` is the
    /// last slot the state machine had applied), or aborted: `NotPrimary`
    /// for a linearizable read on a replica that is not the leader or that
    /// stopped leading before confirming it, `Refused` beyond the pending
    /// reads' bounds or for a follower read whose slot did not arrive in
    /// `read_wait_us`. An aborted read never executed: retry it anywhere.
    pub fn submit_read(
        &mut self,
        now: Time,
        request: Bytes,
        consistency: ReadConsistency,
        completion: C,
    ) {
        let mut round = None;
        if self.take_read(now, request, consistency, completion, &mut round) {
            self.process(now);
        }
    }

    /// Reads that arrived together, each as [`Node::submit_read`] would
    /// take it; drains `reads`. The linearizable ones share one heartbeat
    /// round (started now, after every one of them arrived, so it confirms
    /// them all), where one `submit_read` each would put all but the first
    /// in the round after.
    pub fn submit_reads(&mut self, now: Time, reads: &mut Vec<(Bytes, ReadConsistency, C)>) {
        let mut round = None;
        let mut process = false;
        for (request, consistency, completion) in reads.drain(..) {
            process |= self.take_read(now, request, consistency, completion, &mut round);
        }
        if process {
            self.process(now);
        }
    }

    /// Takes one read (see [`Node::submit_read`]); `round` is the ticket
    /// of the round the reads taken with it share, got at the first that
    /// needs one. Returns whether the node must then run
    /// [`Node::process`] (to send the round's heartbeats, or serve it).
    fn take_read(
        &mut self,
        now: Time,
        request: Bytes,
        consistency: ReadConsistency,
        completion: C,
        round: &mut Option<paxos_core::ReadTicket>,
    ) -> bool {
        if !self.reads.admits(request.len()) {
            self.effects.push_back(Effect::Abort {
                completion,
                reason: AbortReason::Refused,
            });
            return false;
        }
        let read = Waiting {
            request,
            completion,
        };
        match consistency {
            ReadConsistency::AtLeast(slot) if slot <= self.applied => self.answer_read(read),
            ReadConsistency::AtLeast(slot) => {
                let deadline = now.plus_micros(self.config.read_wait_us);
                self.reads.push_at_least(slot, deadline, read);
            }
            ReadConsistency::Linearizable => {
                if !self.is_leader {
                    let leader = self.leader_hint();
                    self.effects.push_back(Effect::Abort {
                        completion: read.completion,
                        reason: AbortReason::NotPrimary { leader },
                    });
                    return false;
                }
                if let Some(index) = self.core.lease_read_index(now) {
                    if index <= self.applied {
                        self.answer_read(read);
                    } else {
                        self.reads.push_applying(index, read);
                    }
                    return false;
                }
                let ticket = match round {
                    Some(t) => Ok(*t),
                    None => self.core.read_index(now),
                };
                match ticket {
                    Ok(t) => {
                        *round = Some(t);
                        self.reads
                            .push_confirming(t.ballot, t.round, t.read_index, read);
                    }
                    Err(ProposeError::NotLeader { leader }) => {
                        self.effects.push_back(Effect::Abort {
                            completion: read.completion,
                            reason: AbortReason::NotPrimary { leader },
                        });
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "read refused");
                        self.effects.push_back(Effect::Abort {
                            completion: read.completion,
                            reason: AbortReason::Refused,
                        });
                    }
                }
                return true;
            }
        }
        false
    }

    /// A message from a peer (core protocol or checkpoint transfer).
    /// Undecodable bytes are dropped (and logged): nothing from the
    /// network can make a node panic.
    pub fn handle_message(&mut self, now: Time, from: ReplicaId, bytes: Bytes) {
        if xfer::is_xfer(&bytes) {
            match xfer::decode(bytes) {
                Ok(msg) => self.on_xfer(now, from, msg),
                Err(e) => tracing::warn!(%from, error = %e, "dropping peer message"),
            }
        } else {
            match codec::decode(bytes) {
                // A full log takes no more accepted values: each would be
                // one more append into a log that storage already said
                // cannot hold more (the nvm region runs out of room soon
                // after and the append fails: a crash-stop). Not voting is
                // always safe (it is a lost message); the leader resends,
                // and once a checkpoint lets this node truncate, storage
                // reports room and it votes again. Everything else (commit
                // indexes, catch-up, elections) still flows, so what it
                // accepted before can be chosen, applied and checkpointed.
                Ok(Message::Accept(_)) if self.log_full.is_some() => {
                    self.stats.accepts_refused_while_full += 1;
                }
                Ok(msg) => self.core.handle_message(now, from, msg),
                Err(e) => tracing::warn!(%from, error = %e, "dropping undecodable peer message"),
            }
        }
        self.process(now);
    }

    /// Runs timers: the core's, and state transfer's.
    pub fn handle_tick(&mut self, now: Time) {
        self.core.handle_tick(now);
        self.process(now);
        if self.log_full.is_some() {
            self.relieve_log(now);
            self.warn_log_full(now);
        }
        self.expire_follower_reads(now);
        if self.needs_snapshot {
            self.request_checkpoint(now);
        } else if self.transfer.as_ref().is_some_and(|t| self.stalled(t, now)) {
            // The core caught up from a peer's log meanwhile: a transfer it
            // no longer needs is not retried, and its deadline must go.
            tracing::info!("caught up without the checkpoint; stalled transfer dropped");
            self.abandon_transfer();
        }
        self.refresh_cluster(false);
    }

    /// When [`Node::handle_tick`] must next be called.
    pub fn next_timer(&self) -> Option<Time> {
        let core = self.core.next_timer();
        // A transfer that is finishing waits for the driver, not a timer.
        let transfer = self
            .transfer
            .as_ref()
            .filter(|t| !t.finishing)
            .map(|t| t.last_progress.plus_micros(self.config.transfer_stall_us));
        [core, transfer, self.reads.next_deadline()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Storage made the persist `id` (and every earlier one) durable.
    pub fn on_persisted(&mut self, now: Time, id: PersistId) {
        if id.epoch != self.epoch {
            return; // issued by a core instance that was since replaced
        }
        self.core.on_persisted(now, id.token);
        if self.config.stage_timing {
            for p in &mut self.proposals {
                if p.durable.is_none() && p.vote.is_some_and(|v| v <= id) {
                    p.durable = Some(now);
                }
            }
        }
        self.process(now);
    }

    /// What storage says about its room, after an append
    /// ([`paxos_log::ReplicaStorage::space`]; the driver asks after every
    /// append, which is cheap).
    ///
    /// While the log is full this node proposes nothing new: client batches
    /// wait (the driver stops handing them in, [`Node::wants_requests`]),
    /// never fail for it, and decrees already proposed go on to be chosen
    /// and applied. To make room it truncates through its newest checkpoint
    /// at once (keeping nothing below it for lagging peers) and takes a new
    /// checkpoint if it applied past that one, retrying a failed one every
    /// second; a warning says every few seconds why writes wait. Once
    /// storage has room again, proposing resumes.
    ///
    /// Fails if the log is full with everything this node applied already
    /// truncated and no checkpoint running: waiting would not help, and
    /// the driver must stop the replica (crash-stop) with this error.
    pub fn on_log_space(
        &mut self,
        now: Time,
        space: paxos_log::LogSpace,
    ) -> Result<(), LogFullError> {
        match space {
            paxos_log::LogSpace::Available => {
                if let Some(full) = self.log_full.take() {
                    tracing::info!(
                        waited_ms = now.micros_since(full.since) / 1000,
                        "the log has room again; proposing resumes"
                    );
                    self.process(now);
                }
                Ok(())
            }
            paxos_log::LogSpace::Full {
                live_bytes,
                limit_bytes,
            } => {
                match &mut self.log_full {
                    Some(full) => {
                        full.live_bytes = live_bytes;
                        full.limit_bytes = limit_bytes;
                    }
                    None => {
                        self.log_full = Some(LogFull {
                            since: now,
                            warned_at: now,
                            live_bytes,
                            limit_bytes,
                        });
                        tracing::warn!(
                            live_bytes,
                            limit_bytes,
                            checkpoint_slot = %self.checkpoint_slot,
                            applied = %self.applied,
                            "the log is full: new writes wait until a checkpoint lets it \
                             truncate (clients are not failed; if this recurs, the region is \
                             too small for the write rate, or checkpoints are too slow)"
                        );
                    }
                }
                let stuck = !self.relieve_log(now)
                    && !self.checkpoint_running
                    && self.compacted_through >= self.applied
                    && self.proposals.is_empty()
                    && self.status.commit_index <= self.applied;
                if stuck {
                    return Err(LogFullError {
                        live_bytes,
                        limit_bytes,
                        applied: self.applied,
                    });
                }
                Ok(())
            }
        }
    }

    /// Truncates what the newest checkpoint covers, or starts a checkpoint
    /// that will let it truncate more; returns whether it did either.
    fn relieve_log(&mut self, now: Time) -> bool {
        if self.checkpoint_slot > self.compacted_through && self.checkpoint_slot <= self.applied {
            self.compact(self.checkpoint_slot);
            self.process(now);
            return true;
        }
        let retry_due = self
            .checkpoint_failed_at
            .is_none_or(|t| now.micros_since(t) >= LOG_FULL_CHECKPOINT_RETRY_US);
        if self.config.checkpoints
            && !self.checkpoint_running
            && self.applied > self.checkpoint_slot
            && retry_due
        {
            self.start_checkpoint(now);
            return true;
        }
        false
    }

    /// Logs, at most every few seconds, that writes wait for a full log.
    fn warn_log_full(&mut self, now: Time) {
        let checkpoint_running = self.checkpoint_running;
        let Some(full) = &mut self.log_full else {
            return;
        };
        if now.micros_since(full.warned_at) < LOG_FULL_WARN_EVERY_US {
            return;
        }
        full.warned_at = now;
        tracing::warn!(
            waiting_ms = now.micros_since(full.since) / 1000,
            live_bytes = full.live_bytes,
            limit_bytes = full.limit_bytes,
            checkpoint_running,
            "writes still wait for room in the full log (a checkpoint must finish so \
             that it can truncate)"
        );
    }

    /// Has the core drop decrees through `through` and persist the
    /// truncation.
    fn compact(&mut self, through: Slot) {
        self.core.compact(through);
        self.compacted_through = self.compacted_through.max(through);
    }

    /// Storage answered the [`Effect::ReadDecrees`] `read`: the decrees it
    /// read (`None`: it could not serve them). The core checks them and
    /// answers the peer.
    pub fn on_decrees_read(
        &mut self,
        now: Time,
        read: crate::effect::DecreesRead,
        decrees: Option<Vec<paxos_core::Accepted>>,
    ) {
        if read.epoch != self.epoch {
            return; // asked by a core instance that was since replaced
        }
        let before = self.core.served_from_storage();
        self.core
            .on_decrees_read(now, read.peer, read.from, decrees);
        if self.core.served_from_storage() > before {
            self.stats.catchup_served_from_storage += 1;
        }
        self.process(now);
    }

    /// The driver finished a [`CheckpointJob`]: `Ok(slot)` once it is
    /// durable, `Err` with a description otherwise (retried at the next
    /// interval).
    pub fn on_checkpoint_saved(&mut self, now: Time, result: Result<Slot, String>) {
        self.checkpoint_running = false;
        match result {
            Ok(slot) => {
                self.checkpoint_failed_at = None;
                self.checkpoint_slot = self.checkpoint_slot.max(slot);
                self.stats.checkpoints_saved += 1;
                // Storage keeps `compact_retain` decrees below the
                // checkpoint for lagging peers, but no more than the core
                // still holds in memory (bounded in bytes by
                // `core.retain_bytes`): catch-up is served from there.
                let memory_from = self.core.status().retained_from;
                let through = if self.log_full.is_some() {
                    // Room in the log comes first: lagging peers catch up
                    // from the checkpoint instead.
                    slot
                } else {
                    slot.saturating_sub(self.config.compact_retain)
                        .max(Slot(memory_from.0.saturating_sub(1)))
                        .min(slot)
                };
                if through > Slot::ZERO && through <= self.applied {
                    self.compact(through);
                }
                tracing::info!(
                    %slot,
                    compacted_through = %through,
                    duration_ms = now.micros_since(self.checkpoint_started_at) / 1000,
                    "checkpoint durable"
                );
                // One that came due while this one ran starts now, not
                // with the next decree (which may be long in coming).
                self.maybe_checkpoint(now, self.applied);
            }
            Err(e) => {
                self.checkpoint_failed_at = Some(now);
                tracing::error!(error = %e, "checkpoint failed; will retry at the next interval")
            }
        }
        self.process(now);
    }

    /// A [`TransferOp::Write`] failed: the transfer starts over.
    pub fn on_transfer_failed(&mut self, now: Time, error: String) {
        tracing::error!(error = %error, "checkpoint transfer failed; will retry");
        self.abandon_transfer();
        self.process(now);
    }

    /// Serving checkpoint `slot` to a peer found it damaged, and the store
    /// set it aside ([`crate::storage::Served::damaged`]). The state it held
    /// is still in memory: take a fresh checkpoint now, so that peers can
    /// be served again and a restart does not fall back to an older
    /// checkpoint below the compacted log.
    pub fn on_checkpoint_damaged(&mut self, now: Time, slot: Slot) {
        tracing::error!(%slot, "a checkpoint of ours was found damaged while serving it; taking a fresh one");
        if self.config.checkpoints && !self.checkpoint_running && self.applied > Slot::ZERO {
            self.start_checkpoint(now);
        }
        self.process(now);
    }

    /// A [`TransferOp::Finish`] completed: `Ok(slot)` once the received
    /// checkpoint is durable and verified.
    pub fn on_transfer_finished(&mut self, now: Time, result: Result<Slot, String>) {
        let transfer = self.transfer.take();
        match result {
            // Only a transfer this node started can finish, and none starts
            // while an install is pending: a driver reporting one anyway
            // must not get a second restore going.
            Ok(slot) if self.installing.is_some() => tracing::warn!(
                %slot,
                installing = ?self.installing,
                "a transfer finished while another checkpoint is being restored; not installed"
            ),
            Ok(slot) if slot > self.applied => {
                if let Some(t) = transfer {
                    let micros = now.micros_since(t.requested_at).max(1);
                    tracing::info!(
                        %slot,
                        peer = %t.peer,
                        bytes = t.data_len,
                        duration_ms = micros / 1000,
                        mb_per_s = t.data_len / micros,
                        "checkpoint received from a peer"
                    );
                }
                // The driver restores it off the event loop; until it
                // reports back, the node runs on its old state and starts
                // no other transfer.
                self.installing = Some(slot);
                self.effects.push_back(Effect::InstallCheckpoint { slot })
            }
            Ok(slot) => tracing::info!(
                %slot,
                applied = %self.applied,
                "received checkpoint is no longer ahead; not installed"
            ),
            Err(e) => {
                tracing::error!(error = %e, "received checkpoint failed verification; will retry")
            }
        }
        self.process(now);
    }

    /// Installs checkpoint `slot`, received from a peer, which the driver
    /// restored into the fresh state machine `fresh` off the event loop
    /// after [`Effect::InstallCheckpoint`] (with
    /// [`crate::storage::restore_slot`], which returned `restored`). The
    /// node swaps `fresh` in, adopts the checkpoint's slot and directory,
    /// drops every pending request (their outcome is unknown), fails the
    /// reads waiting for a round of the old core, and restarts the core
    /// from `durable` at that slot.
    ///
    /// Returns the state machine the node no longer needs, with the
    /// outcome: the **old** one when the checkpoint was installed (it may
    /// hold gigabytes: drop it off the event loop too), or `fresh` itself
    /// when it was not — because the node meanwhile applied up to `slot`
    /// some other way (`Ok`, nothing touched: a checkpoint behind the node
    /// would take its state back, see paxos-sim FINDINGS F11), or because
    /// the checkpoint does not match (`Err`, nothing touched; the node
    /// fetches again if it still needs one).
    ///
    /// `durable` must be the storage's state with **every append so far
    /// made durable** (sync the log first, e.g. `FileLog::sync_queued`),
    /// read after the restore, since the old core went on voting during
    /// it: the new core takes all of it for durable and answers a repeated
    /// Accept from it at once, so a vote still waiting for its sync would
    /// be acknowledged before it is on disk. Persists issued before the
    /// install complete into the old core and are ignored.
    ///
    /// A driver installs what the node asked for: `slot` must be the
    /// pending [`Effect::InstallCheckpoint`]'s, if one is pending.
    pub fn install_restored(
        &mut self,
        now: Time,
        durable: DurableState,
        slot: Slot,
        fresh: S,
        restored: Restored,
    ) -> (S, Result<(), NodeError>) {
        paxos_contracts::requires!(
            self.installing.is_none_or(|pending| pending == slot),
            "checkpoint {slot} installed while checkpoint {:?} is the one being restored",
            self.installing
        );
        if self.installing == Some(slot) {
            self.installing = None;
        }
        let (spare, result) = self.swap_in_restored(now, durable, slot, fresh, restored);
        paxos_contracts::ensures!(
            result.is_err() || self.applied >= slot,
            "an install that succeeded leaves the node at its slot or past it"
        );
        paxos_contracts::ensures!(
            self.installing != Some(slot),
            "the install of checkpoint {slot} is settled"
        );
        if result.is_err() {
            self.fetch_again(now);
        }
        self.process(now);
        (spare, result)
    }

    /// [`Node::install_restored`] once the pending install is settled.
    fn swap_in_restored(
        &mut self,
        now: Time,
        durable: DurableState,
        slot: Slot,
        fresh: S,
        restored: Restored,
    ) -> (S, Result<(), NodeError>) {
        if slot <= self.applied {
            tracing::info!(
                %slot,
                applied = %self.applied,
                "received checkpoint is no longer ahead; not installed"
            );
            return (fresh, Ok(()));
        }
        if restored.meta.last_applied != slot {
            let mismatch = NodeError::Checkpoint {
                path: restored.path.display().to_string(),
                slot: restored.meta.last_applied,
                why: "another checkpoint was asked for",
            };
            return (fresh, Err(mismatch));
        }
        let mut core_config = self.config.core_config();
        restored.directory.restart_membership(&mut core_config);
        // A repair in progress goes on in the new core instance.
        core_config.repair = self.repairing;
        // What storage truncated (the new core may truncate through the
        // checkpoint too; erring low only costs a redundant truncation).
        let truncated_through = durable.truncated_through;
        // The new core is built before anything changes, so that a core
        // that cannot start leaves the node whole on the old one.
        let core = match paxos_core::Replica::try_new(
            core_config,
            durable,
            slot,
            self.config.seed ^ slot.0,
            now,
        ) {
            Ok(core) => core,
            Err(e) => return (fresh, Err(e.into())),
        };
        self.directory.replace_with(restored.directory);
        self.compacted_through = truncated_through;
        self.core = core;
        let old = std::mem::replace(&mut self.sm, fresh);
        self.epoch += 1;
        self.abort_all(AbortReason::OutcomeUnknown);
        // The new core leads nothing: reads waiting for a round of the old
        // one fail now (confirmed ones are answered once applied).
        self.fail_unconfirmed_reads();
        self.applied = slot;
        // Not primary, as the fresh state machine was never told it is.
        self.is_leader = false;
        self.needs_snapshot = false;
        self.transfer = None;
        self.last_checkpoint_started = slot;
        self.applied_bytes_since_checkpoint = 0;
        self.checkpoint_slot = self.checkpoint_slot.max(slot);
        self.status = self.core.status();
        self.stats.checkpoints_installed += 1;
        self.membership_slot_seen = None;
        tracing::info!(
            %slot,
            "installed a checkpoint from a peer; the core restarted from it"
        );
        self.refresh_cluster(true);
        (old, Ok(()))
    }

    /// Restoring checkpoint `slot` after [`Effect::InstallCheckpoint`]
    /// failed off the event loop (`error` says why). The driver's fresh
    /// state machine is discarded and the node's own is untouched; if the
    /// node still misses what no peer retains, it fetches a checkpoint
    /// again at once (from the next peer in turn, in case this one's was
    /// bad).
    pub fn on_restore_failed(&mut self, now: Time, slot: Slot, error: String) {
        paxos_contracts::requires!(
            self.installing.is_none_or(|pending| pending == slot),
            "restore of checkpoint {slot} reported while checkpoint {:?} is the one being restored",
            self.installing
        );
        if self.installing != Some(slot) {
            tracing::warn!(%slot, error = %error, "a restore this node did not ask for failed; ignored");
            return;
        }
        self.installing = None;
        tracing::error!(%slot, error = %error, "restoring a received checkpoint failed; the state is unchanged, fetching again");
        self.fetch_again(now);
        self.process(now);
    }

    /// The checkpoint being restored off the event loop: between
    /// [`Effect::InstallCheckpoint`] and [`Node::install_restored`] or
    /// [`Node::on_restore_failed`].
    pub fn installing(&self) -> Option<Slot> {
        self.installing
    }

    /// Hands leadership to `successor`, or to the most caught-up voter.
    pub fn relinquish(
        &mut self,
        now: Time,
        successor: Option<ReplicaId>,
    ) -> Result<(), ProposeError> {
        let result = match successor {
            Some(to) => self.core.relinquish_primary_to(now, to),
            None => self.core.relinquish_primary(now),
        };
        self.process(now);
        result
    }

    /// Starts moving the cluster to `target` (paxos-core's
    /// `change_configuration`).
    pub fn change_configuration(
        &mut self,
        now: Time,
        target: Membership,
    ) -> Result<(), ProposeError> {
        let result = self.core.change_configuration(now, target.clone());
        match &result {
            Ok(()) => {
                tracing::info!(target = %membership_text(&target), "configuration change started")
            }
            Err(e) => tracing::warn!(error = %e, "configuration change refused"),
        }
        self.process(now);
        result
    }

    /// Gives up the membership change this node leads, if any.
    pub fn abandon_configuration_change(&mut self) -> Option<Membership> {
        let abandoned = self.core.abandon_configuration_change();
        if let Some(m) = &abandoned {
            tracing::warn!(target = %membership_text(m), "configuration change abandoned by an operator");
        }
        abandoned
    }

    /// RSL's CanBecomePrimary veto.
    pub fn set_can_become_primary(&mut self, now: Time, allowed: bool) {
        self.core.set_can_become_primary(allowed);
        self.process(now);
    }

    /// Plants a deliberate protocol bug in the core (simulator teeth tests
    /// only; compiled only with the `planted-bugs` feature).
    #[cfg(feature = "planted-bugs")]
    pub fn plant_core_bug(&mut self, bug: paxos_core::PlantedBug) {
        if bug == paxos_core::PlantedBug::ReadsAtOnce {
            self.planted_reads_at_once = true;
        }
        self.core.plant_bug(bug);
    }

    /// Ends every request the node holds (shutdown): proposed ones with
    /// `ShuttingDown` (their outcome is unknown), stalled ones with
    /// `NotPrimary` (never proposed).
    pub fn shutdown(&mut self) {
        self.abort_all(AbortReason::ShuttingDown);
        self.abort_reads(AbortReason::ShuttingDown);
    }

    // ------------------------------------------------------------------
    // Outputs and accessors.
    // ------------------------------------------------------------------

    /// The next effect to carry out.
    pub fn poll_effect(&mut self) -> Option<Effect<S::Snapshot, C>> {
        self.effects.pop_front()
    }

    /// The state machine.
    pub fn state_machine(&self) -> &S {
        &self.sm
    }

    /// The state machine, for driver-side settings that are not replicated
    /// state (paxos-kv's read clock).
    pub fn state_machine_mut(&mut self) -> &mut S {
        &mut self.sm
    }

    /// The last slot applied.
    pub fn applied(&self) -> Slot {
        self.applied
    }

    /// The replicated directory as of `applied()`.
    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    /// The protocol core (read-only: status, peers).
    pub fn core(&self) -> &paxos_core::Replica {
        &self.core
    }

    /// Whether this node is the announced leader.
    pub fn is_leader(&self) -> bool {
        self.is_leader
    }

    /// The leader to send clients to: the believed leader, or for a
    /// replica that was removed, a voter of the membership in force.
    pub fn leader_hint(&self) -> Option<ReplicaId> {
        let leader = self.status.leader;
        if self.removed
            && leader.is_none_or(|l| l == self.id || !self.status.membership.contains(l))
        {
            return self.status.membership.voters.first().copied();
        }
        leader
    }

    /// The node's status.
    pub fn status(&self) -> NodeStatus {
        let core = &self.status;
        NodeStatus {
            role: if self.is_leader {
                Role::Leader
            } else {
                core.role
            },
            leader: self.leader_hint(),
            ballot: core.ballot,
            commit_index: core.commit_index.max(self.applied),
            applied_index: self.applied,
            in_flight: self.proposals.len(),
            checkpoint_slot: self.checkpoint_slot,
            needs_snapshot: self.needs_snapshot,
            repair: self.core.repair_progress(),
            pending_reads: self.reads.len(),
            log_full: self.log_full.is_some(),
            ..self.stats.clone()
        }
    }

    /// Membership, peers and addresses, for status pages and operators.
    pub fn cluster_view(&self, now: Time) -> ClusterView {
        let status = &self.status;
        let membership_slot = match self.directory.last_reconfigure() {
            // A core started from a checkpoint reports slot 0 for the
            // membership it was given; the directory knows its slot.
            Some(r)
                if status.membership_slot == Slot::ZERO && r.membership == status.membership =>
            {
                r.slot
            }
            _ => status.membership_slot,
        };
        ClusterView {
            membership: status.membership.clone(),
            membership_slot,
            peers: self.core.peer_status(now),
            book: Arc::clone(&self.book),
            pending: self.core.pending_configuration().cloned(),
            removed: self.removed,
            // Read from the core: progress does not change its status.
            repair: self.core.repair_progress(),
        }
    }

    // ------------------------------------------------------------------
    // Internals.
    // ------------------------------------------------------------------

    fn next_header(&mut self, now: Time, kind: DecreeKind) -> Header {
        let tag = ProposalTag {
            proposer: self.id,
            nonce: self.config.boot_nonce,
            counter: self.counter,
        };
        self.counter += 1;
        Header {
            kind,
            tag,
            time_us: if self.config.wall_clock_at_zero_us == 0 {
                0
            } else {
                self.config.wall_clock_at_zero_us + now.0
            },
        }
    }

    /// Proposes a framed batch, or queues it behind the stalled ones.
    fn propose_framed(
        &mut self,
        now: Time,
        value: Bytes,
        tag: ProposalTag,
        completions: Vec<C>,
        reads: BatchReads<C>,
        batched: Time,
    ) {
        let stalled = Stalled {
            value,
            tag,
            completions,
            reads,
            batched,
        };
        if self.stalled.is_empty() {
            if let Some(refused) = self.try_propose(now, stalled) {
                self.stalled.push_back(refused);
            }
        } else {
            self.stalled.push_back(stalled);
        }
    }

    /// Hands one batch to the core; returns it if the core cannot take it
    /// yet.
    fn try_propose(&mut self, now: Time, s: Stalled<C>) -> Option<Stalled<C>> {
        if self.proposals.len() >= self.config.core.pipeline_window || self.log_full.is_some() {
            return Some(s);
        }
        let n = s.completions.len() as u64;
        match self.core.propose(now, Value::Requests(s.value.clone())) {
            Ok(slot) => {
                self.stats.proposed_batches += 1;
                self.stats.proposed_requests += n;
                if self.config.stage_timing {
                    self.awaiting_vote = Some(slot);
                }
                self.proposals.push_back(Proposal {
                    slot,
                    tag: s.tag,
                    completions: s.completions,
                    reads: s.reads,
                    batched: s.batched,
                    proposed: now,
                    durable: None,
                    vote: None,
                });
                None
            }
            // A Reconfigure is unchosen: nothing may be proposed above it
            // until it is, so wait exactly as for a full window.
            Err(ProposeError::WindowFull | ProposeError::ConfigChangeInFlight) => Some(s),
            Err(ProposeError::NotLeader { leader }) => {
                self.abort_batch(s.completions, s.reads, AbortReason::NotPrimary { leader });
                None
            }
            Err(ProposeError::TooLarge { .. }) => {
                self.abort_batch(s.completions, s.reads, AbortReason::TooLarge);
                None
            }
            Err(e) => {
                tracing::error!(error = %e, "proposal refused");
                self.abort_batch(s.completions, s.reads, AbortReason::Refused);
                None
            }
        }
    }

    /// Ends a batch's requests with `reason`, and the reads riding in it
    /// with `NotPrimary` (a read never executed, so its outcome is never
    /// unknown) or, if the batch could never be proposed, with `reason`.
    fn abort_batch(&mut self, completions: Vec<C>, reads: BatchReads<C>, reason: AbortReason) {
        for completion in completions {
            self.effects.push_back(Effect::Abort { completion, reason });
        }
        let read_reason = match reason {
            AbortReason::OutcomeUnknown => AbortReason::NotPrimary {
                leader: self.leader_hint(),
            },
            other => other,
        };
        for (_, read) in reads {
            self.effects.push_back(Effect::Abort {
                completion: read.completion,
                reason: read_reason,
            });
        }
    }

    /// Proposes stalled batches while the core takes them; returns whether
    /// any was proposed.
    fn retry_stalled(&mut self, now: Time) -> bool {
        let mut any = false;
        while self.is_leader {
            let Some(s) = self.stalled.pop_front() else {
                break;
            };
            match self.try_propose(now, s) {
                None => any = true,
                Some(refused) => {
                    self.stalled.push_front(refused);
                    break;
                }
            }
        }
        any
    }

    /// Carries out the core's actions until it has none left and nothing
    /// stalled can be proposed.
    fn process(&mut self, now: Time) {
        loop {
            while let Some(action) = self.core.poll_action() {
                match action {
                    Action::Send { to, msg } => {
                        let bytes = self.encode(&msg);
                        self.effects.push_back(Effect::Transmit { to, bytes });
                    }
                    Action::Persist { token, entries } => {
                        let id = PersistId {
                            epoch: self.epoch,
                            token,
                        };
                        if let Some(slot) = self.awaiting_vote {
                            let own_vote = entries.iter().any(
                                |e| matches!(e, paxos_core::PersistEntry::Accept(a) if a.slot == slot),
                            );
                            if own_vote {
                                self.awaiting_vote = None;
                                if let Some(p) =
                                    self.proposals.iter_mut().rev().find(|p| p.slot == slot)
                                {
                                    p.vote = Some(id);
                                }
                            }
                        }
                        self.effects.push_back(Effect::Persist { id, entries });
                    }
                    Action::Apply {
                        slot,
                        ballot,
                        value,
                    } => self.apply(now, slot, ballot, value),
                    Action::StatusChanged(status) => self.on_status(status),
                    Action::ReadDecrees {
                        peer,
                        from,
                        through,
                        max_decrees,
                        max_bytes,
                    } => self.effects.push_back(Effect::ReadDecrees {
                        read: crate::effect::DecreesRead {
                            epoch: self.epoch,
                            peer,
                            from,
                        },
                        through,
                        max_decrees,
                        max_bytes,
                    }),
                }
            }
            // Storage need not keep in memory what the core has let go of
            // (the core drops applied decrees past `retain_bytes` without a
            // status change, so this is checked on every pass).
            let released = Slot(self.core.retained_from().0.saturating_sub(1));
            if released > self.log_memory_released {
                self.log_memory_released = released;
                self.effects
                    .push_back(Effect::ReleaseLogMemory { through: released });
            }
            if !self.flush_deferred_reads(now) && !self.retry_stalled(now) {
                break;
            }
        }
        self.serve_reads();
    }

    /// Answers a read from the state machine as it stands.
    fn answer_read(&mut self, read: Waiting<C>) {
        self.answer_read_at(read, self.applied);
    }

    /// Answers a read from the state machine as it stands, naming `slot`
    /// as the one it saw: for a read riding in the batch being applied at
    /// `slot`, that slot (a replica that applied it has all the read saw).
    fn answer_read_at(&mut self, read: Waiting<C>, slot: Slot) {
        let reply = self.sm.query(&read.request);
        self.stats.reads_served += 1;
        self.effects.push_back(Effect::Complete {
            completion: read.completion,
            reply,
            slot,
        });
    }

    /// Moves confirmed reads on and answers every read whose slot is
    /// applied; fails reads whose leadership can no longer be confirmed.
    fn serve_reads(&mut self) {
        match self.core.read_confirmed() {
            Some((ballot, confirmed)) => {
                while let Some((b, round, index, _)) = self.reads.confirming.front() {
                    if *b != ballot {
                        self.fail_front_confirming();
                    } else if *round <= confirmed {
                        let index = *index;
                        if let Some((_, _, _, read)) = self.reads.confirming.pop_front() {
                            self.reads.applying.push_back((index, read));
                        }
                    } else {
                        break;
                    }
                }
            }
            None => self.fail_unconfirmed_reads(),
        }
        while self
            .reads
            .applying
            .front()
            .is_some_and(|(index, _)| *index <= self.applied)
        {
            if let Some((_, read)) = self.reads.applying.pop_front() {
                self.reads.removed(&read);
                self.answer_read(read);
            }
        }
        while let Some(entry) = self.reads.at_least.first_entry() {
            if entry.key().0 > self.applied {
                break;
            }
            let read = entry.remove();
            self.reads.removed(&read);
            self.answer_read(read);
        }
        self.reads.prune_deadlines();
        paxos_contracts::ensures!(self
            .reads
            .applying
            .front()
            .is_none_or(|(index, _)| *index > self.applied));
    }

    fn fail_front_confirming(&mut self) {
        if let Some((_, _, _, read)) = self.reads.confirming.pop_front() {
            self.reads.removed(&read);
            let leader = self.leader_hint();
            self.effects.push_back(Effect::Abort {
                completion: read.completion,
                reason: AbortReason::NotPrimary { leader },
            });
        }
    }

    /// Fails every read still waiting for a leadership confirmation: this
    /// replica stopped leading (or restarted its core) before it came.
    fn fail_unconfirmed_reads(&mut self) {
        while !self.reads.confirming.is_empty() {
            self.fail_front_confirming();
        }
    }

    /// Ends every waiting read with `reason`.
    fn abort_reads(&mut self, reason: AbortReason) {
        let mut all: Vec<Waiting<C>> = Vec::with_capacity(self.reads.len());
        all.extend(self.reads.confirming.drain(..).map(|(_, _, _, r)| r));
        all.extend(self.reads.applying.drain(..).map(|(_, r)| r));
        all.extend(std::mem::take(&mut self.reads.at_least).into_values());
        self.reads.deadlines.clear();
        for read in all {
            self.reads.removed(&read);
            self.effects.push_back(Effect::Abort {
                completion: read.completion,
                reason,
            });
        }
    }

    /// Refuses the follower reads whose slot did not arrive in time.
    fn expire_follower_reads(&mut self, now: Time) {
        while let Some((at, key)) = self.reads.deadlines.front() {
            if *at > now {
                break;
            }
            let key = *key;
            self.reads.deadlines.pop_front();
            if let Some(read) = self.reads.at_least.remove(&key) {
                self.reads.removed(&read);
                self.effects.push_back(Effect::Abort {
                    completion: read.completion,
                    reason: AbortReason::Refused,
                });
            }
        }
    }

    fn encode(&mut self, msg: &Message) -> Bytes {
        // The core sends the same Accept to every follower: encode it (and
        // copy its batch) once and share the bytes.
        if let Message::Accept(paxos_core::msg::Accept {
            ballot,
            slot,
            commit_index,
            value,
        }) = msg
        {
            let key = (*ballot, *slot, *commit_index, value.payload_len());
            if let Some((k, encoded)) = &self.last_accept {
                if *k == key {
                    return encoded.clone();
                }
            }
            let encoded = self.encode_fresh(msg);
            self.last_accept = Some((key, encoded.clone()));
            return encoded;
        }
        self.encode_fresh(msg)
    }

    fn encode_fresh(&mut self, msg: &Message) -> Bytes {
        codec::encode(msg, &mut self.send_buf);
        let bytes = self.send_buf.split().freeze();
        if self.send_buf.capacity() < 4096 {
            self.send_buf.reserve(64 * 1024);
        }
        bytes
    }

    fn transmit_xfer(&mut self, to: ReplicaId, msg: &XferMessage) {
        self.effects.push_back(Effect::Transmit {
            to,
            bytes: xfer::encode(msg),
        });
    }

    /// Applies the decree chosen at `slot` and settles this node's
    /// proposals up to it.
    fn apply(&mut self, now: Time, slot: Slot, ballot: Ballot, value: Value) {
        paxos_contracts::requires!(
            slot == self.applied.next(),
            "apply of slot {} after {}",
            slot,
            self.applied
        );
        self.outputs.clear();
        self.applied_bytes_since_checkpoint = self
            .applied_bytes_since_checkpoint
            .saturating_add(value.payload_len() as u64);
        let mut chosen_tag = None;
        match &value {
            Value::Requests(bytes) => match framing::parse(bytes) {
                Ok((header, requests)) => {
                    chosen_tag = Some(header.tag);
                    let decree = Decree {
                        slot,
                        proposer: header.tag.proposer,
                        time_us: header.time_us,
                    };
                    match header.kind {
                        DecreeKind::Client => {
                            // Reads riding in this batch, if it is ours: each
                            // is answered after the requests that preceded it.
                            let reads = match self.proposals.front_mut() {
                                Some(p) if p.slot == slot && p.tag == header.tag => {
                                    std::mem::take(&mut p.reads)
                                }
                                _ => Vec::new(),
                            };
                            let mut reads = reads.into_iter().peekable();
                            for (executed, request) in requests.enumerate() {
                                while let Some((_, read)) =
                                    reads.next_if(|(before, _)| *before == executed)
                                {
                                    self.answer_read_at(read, slot);
                                }
                                let reply = self.sm.execute(&decree, &request);
                                self.outputs.push(reply);
                            }
                            for (_, read) in reads {
                                self.answer_read_at(read, slot);
                            }
                        }
                        DecreeKind::Directory => {
                            for command in requests {
                                let reply = match self.directory.execute(&command) {
                                    Ok(()) => Bytes::new(),
                                    Err(e) => Bytes::from(e.to_string()),
                                };
                                self.outputs.push(reply);
                            }
                        }
                    }
                }
                // The same bytes on every replica, so every replica skips it.
                Err(e) => {
                    tracing::error!(%slot, error = %e, "chosen decree is not framed; skipped")
                }
            },
            Value::Reconfigure(r) => {
                self.directory.apply_reconfigure(slot, ballot, r);
            }
            Value::Noop => {}
        }
        self.applied = slot;
        // Reported before the requests settle, so an observer knows the
        // decree before it hears of any reply it produced.
        if self.config.report_applies {
            self.effects.push_back(Effect::Applied {
                slot,
                ballot,
                value,
            });
        }
        self.settle(now, slot, chosen_tag);
        if self.directory.generation() != self.book_generation {
            self.refresh_cluster(true);
        }
        self.maybe_checkpoint(now, slot);
        paxos_contracts::ensures!(self.proposals.front().is_none_or(|p| p.slot > slot));
    }

    /// Settles every proposal at or below `slot`: the one at `slot`
    /// completes if the chosen value is ours, every other one ends with
    /// `OutcomeUnknown`.
    fn settle(&mut self, now: Time, slot: Slot, chosen: Option<ProposalTag>) {
        while self.proposals.front().is_some_and(|p| p.slot <= slot) {
            let Some(p) = self.proposals.pop_front() else {
                break;
            };
            let ours = p.slot == slot
                && chosen == Some(p.tag)
                && self.outputs.len() == p.completions.len();
            if ours {
                // Apply answered them, between the batch's requests.
                assert!(p.reads.is_empty(), "reads left in an applied batch");
                if self.config.stage_timing {
                    self.effects.push_back(Effect::Timing(DecreeTiming {
                        batched: p.batched,
                        proposed: p.proposed,
                        durable: p.durable.unwrap_or(p.proposed),
                        applied: now,
                        requests: p.completions.len() as u64,
                    }));
                }
                for (completion, reply) in p.completions.into_iter().zip(self.outputs.drain(..)) {
                    self.effects.push_back(Effect::Complete {
                        completion,
                        reply,
                        slot,
                    });
                }
            } else {
                // Another value took the slot: ours was not chosen there. It
                // cannot be chosen elsewhere either, but say "unknown"
                // rather than lean on that.
                self.abort_batch(p.completions, p.reads, AbortReason::OutcomeUnknown);
            }
        }
    }

    fn on_status(&mut self, status: paxos_core::Status) {
        let was_leader = self.is_leader;
        self.is_leader = status.role == Role::Leader;
        if was_leader && !self.is_leader {
            let leader = status.leader;
            self.abort_proposals(
                AbortReason::OutcomeUnknown,
                AbortReason::NotPrimary { leader },
            );
        }
        if was_leader != self.is_leader {
            tracing::info!(id = %self.id, leader = self.is_leader, ballot = %status.ballot, "primary status changed");
            self.sm.on_primary_change(self.is_leader);
        }
        match (&status.repair, self.repairing) {
            (None, true) => {
                tracing::info!("repair done: every slot this replica may have voted on is chosen and known here; it votes again");
                self.repairing = false;
                self.effects.push_back(Effect::ClearDamage);
            }
            (Some(p), _) if self.status.repair.as_ref() != Some(p) => {
                tracing::warn!(
                    waiting_for = ?p.waiting_for,
                    repairing_too = ?p.untrusted,
                    catching_up_to = ?p.catching_up_to,
                    "repair in progress: every voter must answer (and not be repairing itself) before this replica votes again"
                );
            }
            _ => {}
        }
        if status.needs_snapshot && !self.needs_snapshot {
            tracing::warn!("behind the peers' retained log: fetching a checkpoint from a peer");
        }
        self.needs_snapshot = status.needs_snapshot;
        let membership_changed = self.membership_slot_seen != Some(status.membership_slot);
        self.status = status;
        if membership_changed {
            self.refresh_cluster(true);
        }
    }

    /// Ends every proposal in flight with `proposed` and every stalled
    /// batch with `stalled`.
    fn abort_proposals(&mut self, proposed: AbortReason, stalled: AbortReason) {
        while let Some(p) = self.proposals.pop_front() {
            self.abort_batch(p.completions, p.reads, proposed);
        }
        while let Some(s) = self.stalled.pop_front() {
            self.abort_batch(s.completions, s.reads, stalled);
        }
        // Never in a batch: never executed.
        let deferred = std::mem::take(&mut self.deferred_reads);
        self.abort_batch(Vec::new(), deferred, stalled);
    }

    fn abort_all(&mut self, proposed: AbortReason) {
        let leader = self.leader_hint();
        self.abort_proposals(proposed, AbortReason::NotPrimary { leader });
    }

    /// Starts a checkpoint every `checkpoint_every` decrees or every
    /// `checkpoint_every_bytes` of decree payload, whichever comes first.
    /// The bytes matter as much as the decrees: storage keeps every decree
    /// above its compaction point, so the log since the last checkpoint is
    /// memory (and disk) that only a checkpoint gives back.
    fn maybe_checkpoint(&mut self, now: Time, slot: Slot) {
        let every = self.config.checkpoint_every;
        let every_bytes = self.config.checkpoint_every_bytes;
        let due_by_decrees =
            every != 0 && slot >= self.last_checkpoint_started.saturating_add(every);
        let due_by_bytes = every_bytes != 0 && self.applied_bytes_since_checkpoint >= every_bytes;
        // While a received checkpoint is restored, the state it replaces
        // is not worth a checkpoint: it would be older than the received
        // one (already durable in the store, which keeps the newest), and
        // cost a full snapshot write racing the restore for disk and CPU.
        // (A full log still starts one, `relieve_log`: it needs the
        // truncation.)
        if !self.config.checkpoints
            || self.checkpoint_running
            || self.installing.is_some()
            || !(due_by_decrees || due_by_bytes)
        {
            return;
        }
        self.start_checkpoint(now);
    }

    /// Asks the driver to save the state as of `applied()`.
    fn start_checkpoint(&mut self, now: Time) {
        let slot = self.applied;
        self.checkpoint_started_at = now;
        self.last_checkpoint_started = slot;
        self.applied_bytes_since_checkpoint = 0;
        self.checkpoint_running = true;
        // The membership in force after `slot` is the one the directory
        // recorded when it applied the last Reconfigure up to `slot` (the
        // core may already have switched to a later one it committed).
        let membership = self.directory.last_reconfigure().map_or_else(
            || self.config.core.membership.clone(),
            |r| r.membership.clone(),
        );
        let meta = CheckpointMeta {
            last_applied: slot,
            ballot: self.status.ballot,
            membership,
        };
        let job = CheckpointJob {
            meta,
            node_section: encode_node_section(&self.directory),
            snapshot: self.sm.snapshot(),
        };
        self.effects.push_back(Effect::SaveCheckpoint(job));
    }

    /// Starts (or restarts a stalled) checkpoint transfer from a peer.
    fn request_checkpoint(&mut self, now: Time) {
        // A checkpoint received is being restored: it ends the need (or,
        // failing, fetches again), and a second transfer meanwhile would
        // only fetch the same state again while the first is restored.
        if !self.config.checkpoints || self.installing.is_some() {
            return;
        }
        if let Some(t) = &self.transfer {
            if !self.stalled(t, now) {
                return;
            }
            tracing::warn!(peer = %t.peer, offset = t.offset, "checkpoint transfer stalled; retrying");
            self.abandon_transfer();
        }
        let peers: Vec<ReplicaId> = self
            .status
            .membership
            .all()
            .filter(|&p| p != self.id)
            .collect();
        if peers.is_empty() {
            return;
        }
        // The leader first (it is the most likely to hold a recent
        // checkpoint), then every other member in turn on retries: a peer
        // whose checkpoint cannot be served must not be asked forever.
        let leader = self.status.leader.filter(|&l| l != self.id);
        let order: Vec<ReplicaId> = leader
            .into_iter()
            .chain(peers.iter().copied().filter(|&p| Some(p) != leader))
            .collect();
        let peer = order[self.transfer_rotation % order.len()];
        self.transfer_rotation = self.transfer_rotation.wrapping_add(1);
        tracing::info!(%peer, "requesting a checkpoint");
        self.transfer = Some(Transfer {
            peer,
            slot: Slot::ZERO,
            offset: 0,
            data_len: 0,
            last_progress: now,
            requested_at: now,
            finishing: false,
            started: false,
            requested_to: 0,
            chunk_len: 0,
            early: BTreeMap::new(),
        });
        let have = self.applied;
        self.transmit_xfer(
            peer,
            &XferMessage::Request {
                slot: Slot::ZERO,
                offset: 0,
                have,
            },
        );
    }

    /// Whether transfer `t` made no progress for `transfer_stall_us` (one
    /// whose last step the driver is carrying out never stalls).
    fn stalled(&self, t: &Transfer, now: Time) -> bool {
        !t.finishing && now.micros_since(t.last_progress) >= self.config.transfer_stall_us
    }

    /// An install that did not happen: a core still missing what no peer
    /// retains fetches a checkpoint now rather than at its next tick.
    fn fetch_again(&mut self, now: Time) {
        if self.needs_snapshot {
            self.request_checkpoint(now);
        }
    }

    fn abandon_transfer(&mut self) {
        if let Some(t) = self.transfer.take() {
            if t.started {
                self.effects
                    .push_back(Effect::Transfer(TransferOp::Abandon));
            }
        }
    }

    fn on_xfer(&mut self, now: Time, from: ReplicaId, msg: XferMessage) {
        match msg {
            XferMessage::Request { slot, offset, have } => {
                if !self.config.checkpoints {
                    self.transmit_xfer(from, &XferMessage::None { slot });
                } else if slot == Slot::ZERO && self.checkpoint_slot <= have {
                    // Our newest checkpoint would not help: the peer is past
                    // it but behind our retained log. Take a fresh one now;
                    // the peer asks again.
                    // (Not while restoring a received checkpoint: once it is
                    // installed, the peer is served from that one.)
                    if self.applied > have && !self.checkpoint_running && self.installing.is_none()
                    {
                        self.start_checkpoint(now);
                    }
                    self.transmit_xfer(from, &XferMessage::None { slot });
                } else {
                    self.effects.push_back(Effect::ServeChunk {
                        to: from,
                        slot,
                        offset,
                        max_bytes: self.config.transfer_chunk_bytes,
                    });
                }
            }
            XferMessage::None { .. } => {
                if self
                    .transfer
                    .as_ref()
                    .is_some_and(|t| t.peer == from && !t.finishing)
                {
                    self.abandon_transfer();
                }
            }
            XferMessage::Chunk {
                meta,
                data_len,
                chunk,
            } => self.on_chunk(now, from, meta, data_len, chunk),
        }
    }

    fn on_chunk(
        &mut self,
        now: Time,
        from: ReplicaId,
        meta: CheckpointMeta,
        data_len: u64,
        chunk: Chunk,
    ) {
        let applied = self.applied;
        let window = self.config.transfer_window.max(1) as u64;
        let Some(t) = self
            .transfer
            .as_mut()
            .filter(|t| t.peer == from && !t.finishing)
        else {
            return;
        };
        if !chunk.is_intact() {
            tracing::warn!(%from, "checkpoint chunk failed its checksum; dropped");
            return;
        }
        if t.slot == Slot::ZERO {
            if meta.last_applied <= applied {
                tracing::info!(%from, slot = %meta.last_applied, %applied, "peer's checkpoint is not ahead of ours");
                self.abandon_transfer();
                return;
            }
            if chunk.offset != 0 {
                return; // a stale reply to an earlier transfer
            }
            t.slot = meta.last_applied;
            t.data_len = data_len;
            t.chunk_len = chunk.data.len() as u64;
            t.requested_to = t.chunk_len;
        }
        if meta.last_applied != t.slot || data_len != t.data_len {
            return; // a stale reply
        }
        if chunk.offset != t.offset {
            // Ahead of the next one expected: keep it (within the window)
            // until the chunks before it arrive. Behind: a duplicate.
            let ahead = chunk.offset > t.offset
                && chunk.offset < t.offset + window * t.chunk_len.max(1)
                && t.early.len() < window as usize;
            if ahead {
                t.early.insert(chunk.offset, (meta, chunk));
            }
            return;
        }
        // Hand over this chunk and every buffered one that now follows.
        let mut next = Some((meta, chunk));
        while let Some((meta, chunk)) = next.take() {
            let len = chunk.data.len() as u64;
            if len == 0 && t.offset < data_len {
                tracing::error!(%from, "empty checkpoint chunk before the end; retrying");
                self.abandon_transfer();
                return;
            }
            t.offset += len;
            t.last_progress = now;
            t.started = true;
            self.effects.push_back(Effect::Transfer(TransferOp::Write {
                meta,
                data_len,
                chunk,
            }));
            next = t.early.remove(&t.offset);
        }
        t.early.retain(|&offset, _| offset > t.offset);
        let (slot, offset) = (t.slot, t.offset);
        if offset >= data_len {
            t.finishing = true;
            t.early.clear();
            self.effects
                .push_back(Effect::Transfer(TransferOp::Finish { slot }));
            return;
        }
        // Keep `window` chunks requested ahead of what was handed over. A
        // peer that serves shorter chunks than its first (it restarted
        // with another chunk size) leaves gaps; the transfer then stalls
        // and is retried.
        let mut requests = Vec::new();
        let limit = offset + window * t.chunk_len.max(1);
        if t.requested_to < offset {
            t.requested_to = offset;
        }
        while t.requested_to < data_len && t.requested_to < limit {
            requests.push(t.requested_to);
            t.requested_to += t.chunk_len.max(1);
        }
        for offset in requests {
            self.transmit_xfer(
                from,
                &XferMessage::Request {
                    slot,
                    offset,
                    have: applied,
                },
            );
        }
    }

    /// Republishes the cached book; with `changed`, also reacts to a new
    /// membership or address book: the transport's peer set follows, and a
    /// removal of this replica is logged.
    fn refresh_cluster(&mut self, changed: bool) {
        let generation = self.directory.generation();
        let book_changed = generation != self.book_generation;
        if book_changed {
            self.book = Arc::new(self.config.addresses.merged(self.directory.book()));
        }
        let status = &self.status;
        let member = status.membership.contains(self.id);
        // A restarted node that is not a member was removed, unless it was
        // provisioned to join.
        self.removed =
            !member && (self.removed || self.was_member || !self.config.addresses.joining);
        let membership_changed = self.membership_slot_seen != Some(status.membership_slot);
        if !(changed && (book_changed || membership_changed)) {
            return;
        }
        if membership_changed {
            tracing::info!(
                slot = %status.membership_slot,
                membership = %membership_text(&status.membership),
                "membership in force"
            );
            if self.removed {
                tracing::warn!(
                    id = %self.id,
                    "this replica was REMOVED from the cluster: it takes no part any more and answers clients with redirects; stop it, or wipe its data and add it again"
                );
            }
        }
        let wanted = self
            .config
            .addresses
            .wanted_peers(self.id, &status.membership, &self.book);
        if self.peers_sent.as_ref() != Some(&wanted) {
            self.peers_sent = Some(wanted.clone());
            self.effects.push_back(Effect::SetPeers(wanted));
        }
        self.book_generation = generation;
        self.membership_slot_seen = Some(status.membership_slot);
        self.was_member = member;
    }
}
