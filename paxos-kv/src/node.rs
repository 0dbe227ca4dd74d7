//! The replica driver: a thin tokio shell around a sans-IO
//! [`paxos_node::Node`], connecting it to the network, the storage, the
//! checkpoint store and the clients.
//!
//! # Shape
//!
//! ```text
//!  clients ──submit──▶ [paxos-pipeline queue] ──drain──────────▶ ┐
//!  transport inbound ─────────────────────────────────────────▶ │ event loop task
//!  storage's writer thread ───durable sequence numbers───────▶ │ (owns the Node:
//!  timer (node.next_timer) ───────────────────────────────────▶ │  core, state
//!  control (operator calls, checkpoint/transfer completions) ─▶ ┘  machine, directory)
//!        │ Effect::Transmit → transport   Persist → storage.append
//!        │ (the log's writer thread reports each sync to the loop; a backend
//!        │ that cannot gets a durability waiter thread blocking in wait_durable)
//!        │ Complete/Abort → the client's completion handle
//!        │ SaveCheckpoint / ServeChunk / ReadDecrees / Transfer(Finish) /
//!        │ InstallCheckpoint (the restore) → background threads
//! ```
//!
//! Every decision — what to propose, how a request ends, when to
//! checkpoint, whom to fetch a checkpoint from — is made by the node; this
//! file only moves bytes and threads (the simulator runs the same node with
//! its own driver). One task owns the node, so the hot path takes no lock.
//! Every channel is bounded.
//!
//! # Exactly one outcome per request
//!
//! Each submitted request carries a `Completer` from paxos-pipeline, which
//! resolves exactly once by construction; the node decides which outcome
//! (see [`paxos_node::AbortReason`]): the reply, `NotPrimary` (never
//! proposed: retry elsewhere) or "outcome unknown" (proposed, fate not
//! learned here).
//!
//! # Reads
//!
//! Read-only requests ([`crate::command::CommandKind::Read`]) come through
//! a queue of their own and go to [`Node::submit_read`], never into a
//! decree: the node answers them with `StateMachine::query` on its applied
//! state. A [`ReadConsistency::Linearizable`] read is answered by the
//! leader only, once it confirmed that state is current (ReadIndex: a
//! heartbeat round to a quorum, then applied up to the commit index it
//! noted; or within a lease, see [`crate::config::ReadMode`]); its effect
//! point is the moment of that confirmation, between its invocation and
//! its response. A [`ReadConsistency::AtLeast`] read is answered by any
//! replica that has applied the slot (RSL's bounded staleness). Reads never
//! wait for room in the proposal window.
//!
//! # Checkpoints
//!
//! The node asks for a checkpoint every `checkpoint_every_decrees` applied
//! decrees; a background thread writes it with paxos-node's
//! [`paxos_node::storage::write_checkpoint`] into paxos-log's checkpoint
//! store (per-block CRC32C; temp file, fsync, verify, rename, fsync
//! directory; the newest two kept). A replica behind its peers' in-memory
//! logs catches up from the decrees they read back from their storage
//! (`Effect::ReadDecrees`, read off the loop, one bounded chunk at a time;
//! counted by `paxos_fetch_served_from_disk_total`); one behind everything
//! they still store (truncated by a checkpoint) receives a checkpoint chunk
//! by chunk and installs it in place: restored into a fresh store on a
//! blocking thread while the loop goes on serving (seconds at millions of
//! keys), then swapped in on the loop (`Node::install_restored`), the old
//! store dropped on a blocking thread.

use crate::kv::KvStore;
use crate::membership::PeerDirectory;
use crate::stages::{Point, StageRecorder};
use crate::submit_unit::{split_unit, InOrderUnit, ReadUnit, RequestCompletion, UnitReplies};
use bytes::{BufMut, Bytes, BytesMut};
use paxos_core::{DurableState, Membership, ProposeError, ReplicaId, Role, Slot, Time};
use paxos_log::checkpoint::CheckpointStore;
use paxos_log::histogram::{Log2Histogram, Log2Snapshot};
use paxos_log::{DurabilityEvent, ReplicaStorage};
use paxos_net::{Inbound, Transport};
use paxos_node::storage::{self as node_storage, TransferSink};
use paxos_node::{ClusterView, Effect, MemberAddrs, Node, PersistId, RequestKind, TransferOp};
use paxos_pipeline::{AbortReason, Completer, Outcome, Request, RequestConsumer, Submitter};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// The abort reason of a request that was proposed but whose fate this
/// replica did not learn. Servers must report it as "outcome unknown".
pub const OUTCOME_UNKNOWN: &str = "UNKNOWN outcome: leadership changed after the request was proposed; it may or may not be applied";
/// The abort reason of a request refused for its size.
pub const TOO_LARGE: &str = "ERR request larger than the batch limit";
const REFUSED: &str = "ERR proposal refused by the replica";

/// Most inbound messages handled per wake-up before acting on them.
const INBOUND_BURST: usize = 256;
/// Stop taking more inbound messages in a wake-up once it has run this
/// long, and act on what they caused (persist, reply) first: a follower
/// catching up on a backlog otherwise applied up to [`INBOUND_BURST`]
/// messages' decrees in one turn (20–84 ms at ten million keys while its
/// checkpoint ran) and every Accepted it owed waited behind them.
const INBOUND_BURST_TIME: Duration = Duration::from_millis(5);
/// The environment variable that plants a bug in a node, for tests that
/// must show they catch it. Only debug builds read it; the one bug is
/// `unconfirmed-reads`: every replica answers linearizable reads at once
/// from its own state, confirming neither that it leads nor that it has
/// applied every acknowledged write (what a node that trusted its own state
/// would do: a deposed leader that resumes from a pause, or a follower one
/// commit notice behind, serves an old value).
pub const PLANTED_BUG_ENV: &str = "PAXOS_KV_PLANTED_BUG";

/// Whether this process was asked to serve reads without confirmation
/// ([`PLANTED_BUG_ENV`]); never in a release build.
fn planted_unconfirmed_reads() -> bool {
    let planted = cfg!(debug_assertions)
        && std::env::var(PLANTED_BUG_ENV).is_ok_and(|v| v == "unconfirmed-reads");
    if planted {
        tracing::error!("PLANTED BUG: linearizable reads are served from local state without confirmation (stale reads possible)");
    }
    planted
}

/// Most reads handed to the node per wake-up.
const READ_BURST: usize = 4096;
/// Capacity of the durability-notification channel.
const NOTIFY_CAPACITY: usize = 4096;

/// Role as seen by clients, published by the loop.
const ROLE_FOLLOWER: u8 = 0;
const ROLE_CANDIDATE: u8 = 1;
const ROLE_LEADER: u8 = 2;

/// State the loop publishes for other tasks (INFO, redirects); plain
/// atomics, written only by the loop.
#[derive(Debug, Default)]
pub struct SharedStatus {
    role: AtomicU8,
    /// Leader id, 0 if unknown.
    leader: AtomicU32,
    ballot_round: AtomicU64,
    commit_index: AtomicU64,
    applied_index: AtomicU64,
    in_flight: AtomicU64,
    checkpoint_slot: AtomicU64,
    proposed_batches: AtomicU64,
    proposed_requests: AtomicU64,
    checkpoints_saved: AtomicU64,
    checkpoints_installed: AtomicU64,
    needs_snapshot: AtomicU8,
    /// Times this replica's role changed, as seen by the loop's publishes.
    role_changes: AtomicU64,
    /// Times the believed leader changed from one known leader to another
    /// (a spell of "no leader" in between is not a change by itself).
    leader_changes: AtomicU64,
    /// The last leader known (0: none yet), for `leader_changes`.
    last_known_leader: AtomicU32,
    /// 1 in lease mode, 0 with ReadIndex.
    read_lease: AtomicU8,
    pending_reads: AtomicU64,
    reads_served: AtomicU64,
    /// 1 while storage reports its log full and writes wait.
    log_full: AtomicU8,
    accepts_refused_log_full: AtomicU64,
    fetches_served_from_disk: AtomicU64,
    /// Membership, peers and address book; replaced (not edited) by the
    /// loop on its timer and on membership changes.
    cluster: std::sync::Mutex<Arc<ClusterView>>,
    /// Client requests per proposed decree (see [`record_decree_sizes`]).
    decree_requests: Log2Histogram,
}

/// A consistent-enough copy of the published status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    /// This replica.
    pub id: ReplicaId,
    /// Its role.
    pub role: Role,
    /// The leader it believes in.
    pub leader: Option<ReplicaId>,
    /// Round of its promised ballot.
    pub ballot_round: u64,
    /// Highest slot known chosen.
    pub commit_index: Slot,
    /// Highest slot applied to the state machine.
    pub applied_index: Slot,
    /// Decrees this node proposed that are not applied yet.
    pub in_flight: u64,
    /// Slot of the newest durable checkpoint (0: none).
    pub checkpoint_slot: Slot,
    /// Batches proposed since start.
    pub proposed_batches: u64,
    /// Client requests proposed since start.
    pub proposed_requests: u64,
    /// Checkpoints this node saved since start.
    pub checkpoints_saved: u64,
    /// Checkpoints it installed from peers (state transfers) since start.
    pub checkpoints_installed: u64,
    /// It misses decrees no peer retains and is fetching a checkpoint.
    pub needs_snapshot: bool,
    /// Times its role changed since start.
    pub role_changes: u64,
    /// Times the leader it believes in changed to another one since start.
    pub leader_changes: u64,
    /// How it confirms linearizable reads: `read_index` or `lease`.
    pub read_mode: &'static str,
    /// Reads waiting for a confirmation or for their slot to be applied.
    pub pending_reads: u64,
    /// Reads answered without the log since start.
    pub reads_served: u64,
    /// Storage reports its log full: new writes wait for a checkpoint to
    /// truncate it (see `paxos_node::Node::on_log_space`).
    pub log_full: bool,
    /// Accepts this replica did not vote on because its log was full,
    /// since start (the leader resends them).
    pub accepts_refused_log_full: u64,
    /// Catch-up chunks served to peers from storage (decrees below the
    /// in-memory log, read back from disk) since start.
    pub fetches_served_from_disk: u64,
}

/// Records the sizes of the `decrees` decrees proposed since the last
/// publish, which carried `requests` client requests between them. The loop
/// publishes after every event it handles, and an event usually proposes
/// one decree (the requests it drained), so this is usually exact; when one
/// event proposed several (a full pipeline window opening), each is
/// recorded at their mean size (the remainder spread one each), so counts
/// and sum stay exact either way.
fn record_decree_sizes(histogram: &Log2Histogram, decrees: u64, requests: u64) {
    if decrees == 0 {
        return;
    }
    let (mean, remainder) = (requests / decrees, requests % decrees);
    for i in 0..decrees {
        histogram.record(mean + u64::from(i < remainder));
    }
}

impl SharedStatus {
    fn snapshot(&self, id: ReplicaId) -> NodeStatus {
        let role = match self.role.load(Ordering::Relaxed) {
            ROLE_LEADER => Role::Leader,
            ROLE_CANDIDATE => Role::Candidate,
            _ => Role::Follower,
        };
        let leader = self.leader.load(Ordering::Relaxed);
        NodeStatus {
            id,
            role,
            leader: (leader != 0).then_some(ReplicaId(leader)),
            ballot_round: self.ballot_round.load(Ordering::Relaxed),
            commit_index: Slot(self.commit_index.load(Ordering::Relaxed)),
            applied_index: Slot(self.applied_index.load(Ordering::Relaxed)),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            checkpoint_slot: Slot(self.checkpoint_slot.load(Ordering::Relaxed)),
            proposed_batches: self.proposed_batches.load(Ordering::Relaxed),
            proposed_requests: self.proposed_requests.load(Ordering::Relaxed),
            checkpoints_saved: self.checkpoints_saved.load(Ordering::Relaxed),
            checkpoints_installed: self.checkpoints_installed.load(Ordering::Relaxed),
            needs_snapshot: self.needs_snapshot.load(Ordering::Relaxed) != 0,
            role_changes: self.role_changes.load(Ordering::Relaxed),
            leader_changes: self.leader_changes.load(Ordering::Relaxed),
            read_mode: if self.read_lease.load(Ordering::Relaxed) == 1 {
                "lease"
            } else {
                "read_index"
            },
            pending_reads: self.pending_reads.load(Ordering::Relaxed),
            reads_served: self.reads_served.load(Ordering::Relaxed),
            log_full: self.log_full.load(Ordering::Relaxed) != 0,
            accepts_refused_log_full: self.accepts_refused_log_full.load(Ordering::Relaxed),
            fetches_served_from_disk: self.fetches_served_from_disk.load(Ordering::Relaxed),
        }
    }

    fn publish(&self, s: &paxos_node::NodeStatus) {
        let role = match s.role {
            Role::Leader => ROLE_LEADER,
            Role::Candidate => ROLE_CANDIDATE,
            Role::Follower => ROLE_FOLLOWER,
        };
        // Only the loop writes, so swap-and-compare counts every change.
        if self.role.swap(role, Ordering::Relaxed) != role {
            self.role_changes.fetch_add(1, Ordering::Relaxed);
        }
        let leader = s.leader.map_or(0, |l| l.0);
        self.leader.store(leader, Ordering::Relaxed);
        if leader != 0 {
            let previous = self.last_known_leader.swap(leader, Ordering::Relaxed);
            if previous != 0 && previous != leader {
                self.leader_changes.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.ballot_round.store(s.ballot.round, Ordering::Relaxed);
        self.commit_index.store(s.commit_index.0, Ordering::Relaxed);
        self.applied_index
            .store(s.applied_index.0, Ordering::Relaxed);
        self.in_flight.store(s.in_flight as u64, Ordering::Relaxed);
        self.checkpoint_slot
            .store(s.checkpoint_slot.0, Ordering::Relaxed);
        let batches = self
            .proposed_batches
            .swap(s.proposed_batches, Ordering::Relaxed);
        let requests = self
            .proposed_requests
            .swap(s.proposed_requests, Ordering::Relaxed);
        record_decree_sizes(
            &self.decree_requests,
            s.proposed_batches.saturating_sub(batches),
            s.proposed_requests.saturating_sub(requests),
        );
        self.checkpoints_saved
            .store(s.checkpoints_saved, Ordering::Relaxed);
        self.checkpoints_installed
            .store(s.checkpoints_installed, Ordering::Relaxed);
        self.needs_snapshot
            .store(u8::from(s.needs_snapshot), Ordering::Relaxed);
        let lease = matches!(s.read_mode, paxos_node::ReadMode::Lease { .. });
        self.read_lease.store(u8::from(lease), Ordering::Relaxed);
        self.pending_reads
            .store(s.pending_reads as u64, Ordering::Relaxed);
        self.reads_served.store(s.reads_served, Ordering::Relaxed);
        self.log_full.store(u8::from(s.log_full), Ordering::Relaxed);
        self.accepts_refused_log_full
            .store(s.accepts_refused_while_full, Ordering::Relaxed);
        self.fetches_served_from_disk
            .store(s.catchup_served_from_storage, Ordering::Relaxed);
    }

    fn set_cluster(&self, view: ClusterView) {
        *self
            .cluster
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(view);
    }
}

/// Why a replicated request did not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplicateError {
    /// Not proposed: this replica is not the primary. Safe to retry at the
    /// leader.
    #[error("not the primary (leader: {leader:?})")]
    NotPrimary {
        /// The believed primary.
        leader: Option<ReplicaId>,
    },
    /// Proposed, fate unknown: it may or may not be applied.
    #[error("{0}")]
    OutcomeUnknown(&'static str),
    /// Refused before proposal (for example: too large).
    #[error("{0}")]
    Rejected(&'static str),
    /// The submit queue is full.
    #[error("overloaded: submit queue full")]
    Overloaded,
    /// The node is shutting down.
    #[error("shutting down")]
    ShuttingDown,
}

impl ReplicateError {
    /// Maps a pipeline abort to the client-facing error.
    pub fn from_abort(reason: AbortReason) -> Self {
        match reason {
            AbortReason::NotPrimary { leader_hint } => ReplicateError::NotPrimary {
                leader: leader_hint.filter(|&l| l != 0).map(ReplicaId),
            },
            AbortReason::Rejected(OUTCOME_UNKNOWN) => {
                ReplicateError::OutcomeUnknown(OUTCOME_UNKNOWN)
            }
            AbortReason::Rejected(why) => ReplicateError::Rejected(why),
            // A shutdown or a dropped completer may come after the proposal.
            AbortReason::ShuttingDown | AbortReason::Dropped | AbortReason::Timeout => {
                ReplicateError::OutcomeUnknown(
                    "UNKNOWN outcome: the replica stopped before the request completed",
                )
            }
        }
    }
}

/// The pipeline abort for a node's abort reason.
fn pipeline_abort(reason: paxos_node::AbortReason) -> AbortReason {
    use paxos_node::AbortReason as Node;
    match reason {
        Node::NotPrimary { leader } => AbortReason::NotPrimary {
            leader_hint: leader.map(|l| l.0),
        },
        Node::OutcomeUnknown => AbortReason::Rejected(OUTCOME_UNKNOWN),
        Node::TooLarge => AbortReason::Rejected(TOO_LARGE),
        Node::Refused => AbortReason::Rejected(REFUSED),
        Node::ShuttingDown => AbortReason::ShuttingDown,
    }
}

/// Requests to the loop from outside, and completions of its background
/// work.
#[derive(Debug)]
enum Control {
    /// Hand over to the named replica, or to the most caught-up voter.
    Relinquish(Option<ReplicaId>, oneshot::Sender<Result<(), ProposeError>>),
    /// Give up the membership change in progress.
    AbandonChange(oneshot::Sender<Option<Membership>>),
    ChangeConfiguration(Membership, oneshot::Sender<Result<(), ProposeError>>),
    /// A directory command (address registration), replicated as a decree.
    Directory(Bytes, Completer<Reply>),
    CheckpointSaved(Result<Slot, String>),
    TransferFinished(Result<Slot, String>),
    /// Serving a checkpoint found it damaged (it was set aside).
    CheckpointDamaged(Slot),
    /// A storage read for a peer's catch-up finished (`None`: storage
    /// could not serve it).
    DecreesRead(paxos_node::DecreesRead, Option<Vec<paxos_core::Accepted>>),
    /// Restoring a received checkpoint into a fresh store, off the loop,
    /// finished.
    Restored(RestoreDone),
    Shutdown,
}

/// A restore of a received checkpoint, run off the loop (see
/// [`EventLoop::install`]).
#[derive(Debug)]
struct RestoreDone {
    slot: Slot,
    /// The fresh store and what it was restored from, or why not.
    result: Result<Box<(KvStore, node_storage::Restored)>, String>,
    elapsed: Duration,
}

/// How fresh a read must be: [`ReadConsistency::Linearizable`] (the leader
/// only, after confirming it still leads, see
/// [`crate::config::ReadMode`]) or [`ReadConsistency::AtLeast`] a slot (any
/// replica that applied it; `READONLY` connections).
pub use paxos_node::ReadConsistency;

/// The embedding API (RSL's `ReplicateRequest` / status calls): a cheap,
/// cloneable handle to a running replica.
#[derive(Clone, Debug)]
pub struct Replica {
    id: ReplicaId,
    submitter: Submitter<Submitted, UnitReplies>,
    /// Reads, in a queue of their own: they never wait behind writes for
    /// room in the proposal window. One entry per unit of reads.
    reads: Submitter<ReadSubmitted, UnitReplies>,
    submit_queue_capacity: usize,
    status: Arc<SharedStatus>,
    control: mpsc::Sender<Control>,
    stages: Arc<StageRecorder>,
    /// [`PLANTED_BUG_ENV`] asked for reads without confirmation: a
    /// follower queues linearizable reads instead of redirecting them.
    planted_unconfirmed_reads: bool,
}

impl Replica {
    /// Replicates one request (a state-machine request encoding) and waits
    /// for its output. Fails fast with `NotPrimary` on a follower.
    pub async fn replicate(&self, request: Bytes) -> Result<Bytes, ReplicateError> {
        let outcome = self
            .submit_in_order(InOrderUnit::of_one(request, RequestKind::Write))?
            .await
            .into_result()
            .map_err(ReplicateError::from_abort)?
            .into_iter()
            .next()
            .unwrap_or(Outcome::Aborted(AbortReason::Dropped));
        outcome
            .into_result()
            .map(|reply| reply.bytes)
            .map_err(ReplicateError::from_abort)
    }

    /// Submits a unit of writes and linearizable read-only requests
    /// ([`RequestKind::Read`]) as one queue entry, in order with each other
    /// and with the units submitted before and after it (by this caller;
    /// the queue keeps their order): the leader answers a read at its place
    /// in a batch, between the writes around it, without writing it to the
    /// log (see `paxos_node::reads`). The handle resolves once, with every
    /// request's outcome in order (or aborted as a whole: then every
    /// request was). The RESP server sends what it parsed from one socket
    /// read this way (writes, and a pipeline's reads once it has sent a
    /// write). `NotPrimary` on a follower.
    pub fn submit_in_order(
        &self,
        unit: InOrderUnit,
    ) -> Result<paxos_pipeline::CompletionHandle<UnitReplies>, ReplicateError> {
        self.check_primary()?;
        let queued_us = self.stages.stamp();
        let submitted = Submitted { unit, queued_us };
        self.submitter.try_submit(submitted).map_err(|e| match e {
            paxos_pipeline::SubmitError::ShuttingDown(_) => ReplicateError::ShuttingDown,
            _ => ReplicateError::Overloaded,
        })
    }

    /// A linearizable read (a read-only request, see
    /// [`crate::command::CommandKind`]) and its output; `NotPrimary` on a
    /// follower.
    pub async fn read(&self, request: Bytes) -> Result<Bytes, ReplicateError> {
        self.read_with(request, ReadConsistency::Linearizable)
            .await
            .map(|reply| reply.bytes)
    }

    /// A read at `consistency`, and its output with the slot it observed.
    pub async fn read_with(
        &self,
        request: Bytes,
        consistency: ReadConsistency,
    ) -> Result<Reply, ReplicateError> {
        self.submit_reads(ReadUnit::of_one(request, ()), consistency)?
            .await
            .into_result()
            .map_err(ReplicateError::from_abort)?
            .into_iter()
            .next()
            .unwrap_or(Outcome::Aborted(AbortReason::Dropped))
            .into_result()
            .map_err(ReplicateError::from_abort)
    }

    /// Submits a unit of read-only requests of one `consistency` without
    /// waiting, as one entry of the read queue: the node takes them
    /// together (the linearizable ones share one confirmation round) and
    /// answers each from its applied state, never through the log. The
    /// handle resolves exactly once, with every read's outcome in order (or
    /// aborted as a whole: then every read was). The RESP server sends the
    /// reads that skip the log of one socket read this way. A linearizable
    /// unit on a follower fails fast with `NotPrimary`, as a write does.
    pub fn submit_reads(
        &self,
        unit: ReadUnit,
        consistency: ReadConsistency,
    ) -> Result<paxos_pipeline::CompletionHandle<UnitReplies>, ReplicateError> {
        if consistency == ReadConsistency::Linearizable && !self.planted_unconfirmed_reads {
            self.check_primary()?;
        }
        let submitted = ReadSubmitted { unit, consistency };
        self.reads.try_submit(submitted).map_err(|e| match e {
            paxos_pipeline::SubmitError::ShuttingDown(_) => ReplicateError::ShuttingDown,
            _ => ReplicateError::Overloaded,
        })
    }

    fn check_primary(&self) -> Result<(), ReplicateError> {
        let status = &self.status;
        if status.role.load(Ordering::Relaxed) != ROLE_LEADER {
            let leader = status.leader.load(Ordering::Relaxed);
            return Err(ReplicateError::NotPrimary {
                leader: (leader != 0).then_some(ReplicaId(leader)),
            });
        }
        Ok(())
    }

    /// Registers `id`'s addresses in the replicated directory (every replica
    /// learns them through the log). `Ok(Err(text))` if the directory
    /// refused (for instance: an address another member uses).
    pub async fn register_member(
        &self,
        id: ReplicaId,
        addrs: MemberAddrs,
    ) -> Result<Result<(), String>, ReplicateError> {
        let (completer, handle) = paxos_pipeline::completion();
        let command = paxos_node::directory::encode_register(id, addrs);
        self.control
            .send(Control::Directory(command, completer))
            .await
            .map_err(|_| ReplicateError::ShuttingDown)?;
        match handle.await.into_result() {
            Ok(reply) if reply.bytes.is_empty() => Ok(Ok(())),
            Ok(reply) => Ok(Err(String::from_utf8_lossy(&reply.bytes).into_owned())),
            Err(reason) => Err(ReplicateError::from_abort(reason)),
        }
    }

    /// The write-path latency recorder (`INFO latency`).
    pub fn stages(&self) -> &Arc<StageRecorder> {
        &self.stages
    }

    /// The published status.
    pub fn status(&self) -> NodeStatus {
        self.status.snapshot(self.id)
    }

    /// Client requests per decree this replica proposed, since start.
    pub fn decree_requests(&self) -> Log2Snapshot {
        self.status.decree_requests.snapshot()
    }

    /// Requests waiting in the submit queue now, and its capacity.
    pub fn submit_queue_depth(&self) -> (usize, usize) {
        (self.submitter.queued(), self.submit_queue_capacity)
    }

    /// Whether this replica is the primary now.
    pub fn is_primary(&self) -> bool {
        self.status.role.load(Ordering::Relaxed) == ROLE_LEADER
    }

    /// Asks the primary to hand leadership to another replica.
    pub async fn relinquish_primary(&self) -> Result<(), ReplicateError> {
        self.relinquish(None).await
    }

    /// Asks the primary to hand leadership to `successor`, which must be a
    /// voter that may lead and was heard from recently.
    pub async fn relinquish_primary_to(&self, successor: ReplicaId) -> Result<(), ReplicateError> {
        self.relinquish(Some(successor)).await
    }

    /// Gives up the membership change this replica leads, if any (a step
    /// already proposed still completes). Returns the abandoned target.
    pub async fn abandon_configuration_change(&self) -> Result<Option<Membership>, ReplicateError> {
        let (tx, rx) = oneshot::channel();
        self.control
            .send(Control::AbandonChange(tx))
            .await
            .map_err(|_| ReplicateError::ShuttingDown)?;
        rx.await.map_err(|_| ReplicateError::ShuttingDown)
    }

    async fn relinquish(&self, successor: Option<ReplicaId>) -> Result<(), ReplicateError> {
        let (tx, rx) = oneshot::channel();
        self.control
            .send(Control::Relinquish(successor, tx))
            .await
            .map_err(|_| ReplicateError::ShuttingDown)?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(ProposeError::NotLeader { leader })) => {
                Err(ReplicateError::NotPrimary { leader })
            }
            Ok(Err(_)) => Err(ReplicateError::Rejected("ERR no eligible successor")),
            Err(_) => Err(ReplicateError::ShuttingDown),
        }
    }

    /// The published cluster view: membership, peers, address book.
    pub fn cluster(&self) -> Arc<ClusterView> {
        Arc::clone(
            &self
                .status
                .cluster
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Asks the leader's core to move to `target` (paxos-core's
    /// `change_configuration`). The outer error means the loop is gone.
    pub async fn change_configuration(
        &self,
        target: Membership,
    ) -> Result<Result<(), ProposeError>, ReplicateError> {
        let (tx, rx) = oneshot::channel();
        self.control
            .send(Control::ChangeConfiguration(target, tx))
            .await
            .map_err(|_| ReplicateError::ShuttingDown)?;
        rx.await.map_err(|_| ReplicateError::ShuttingDown)
    }

    /// Stops the loop; pending requests end with an outcome-unknown abort.
    pub async fn shutdown(&self) {
        let _ = self.control.send(Control::Shutdown).await;
    }
}

/// Everything the loop needs to start.
pub struct DriverParts {
    /// The node's configuration.
    pub node: paxos_node::NodeConfig,
    /// What storage recovered, and the state machine restored from the
    /// newest checkpoint.
    pub recovery: paxos_node::Recovery<KvStore>,
    /// The storage.
    pub storage: Arc<dyn ReplicaStorage>,
    /// The transport.
    pub transport: Arc<dyn Transport>,
    /// Inbound peer messages.
    pub inbound: Inbound,
    /// Where checkpoints go (None: no checkpoints, no transfers).
    pub checkpoints: Option<CheckpointStore>,
    /// Capacity of the submit queue.
    pub submit_queue: usize,
    /// Write-path latency recorder (off unless enabled).
    pub stages: Arc<StageRecorder>,
    /// Reads the storage's current durable state, to restart the core after
    /// installing a checkpoint received from a peer (None: no transfers).
    pub reload_durable: Option<DurableReloader>,
}

/// Makes every append so far durable and returns the state they form: what
/// a core restarted in place (after installing a received checkpoint) must
/// start from. Not the state including unsynced appends: the new core would
/// take those for durable and acknowledge votes a crash can still lose.
pub type DurableReloader =
    Arc<dyn Fn() -> Result<DurableState, paxos_log::StorageError> + Send + Sync>;

/// An entry of the submit queue: requests (state-machine request
/// encodings) in order, each a write or a read answered in order with the
/// writes.
#[derive(Debug)]
pub struct Submitted {
    /// The requests.
    pub unit: InOrderUnit,
    /// Stage stamp when it was queued (0: timing off).
    pub queued_us: u64,
}

impl paxos_pipeline::ByteLen for Submitted {
    fn byte_len(&self) -> usize {
        self.unit.bytes()
    }
}

/// An entry of the read queue: reads (read-only state-machine request
/// encodings) of one connection, in order, all of one consistency.
#[derive(Debug)]
pub struct ReadSubmitted {
    /// The requests.
    pub unit: ReadUnit,
    /// How fresh its answer must be.
    pub consistency: ReadConsistency,
}

impl paxos_pipeline::ByteLen for ReadSubmitted {
    fn byte_len(&self) -> usize {
        self.unit.bytes()
    }
}

/// A completed request's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The state machine's output (for KV: the RESP reply).
    pub bytes: Bytes,
    /// The slot whose state it saw: a write's decree, or the applied slot
    /// a read was served at. A client that reads at least this slot
    /// elsewhere sees this request's effect.
    pub slot: Slot,
    /// Stage stamp when it was applied (0: timing off).
    pub applied_us: u64,
}

/// Starts the event loop on the current tokio runtime (and a durability
/// waiter thread if storage cannot report durability itself). Returns the handle and the loop's join handle (which ends
/// on shutdown or on a fatal storage error). With `peer_directory`, the
/// transport's peer set follows membership changes.
pub fn start(
    mut parts: DriverParts,
    peer_directory: Option<Arc<dyn PeerDirectory>>,
) -> anyhow::Result<(Replica, tokio::task::JoinHandle<anyhow::Result<()>>)> {
    let id = parts.node.core.id;
    let (submitter, consumer) =
        paxos_pipeline::pipeline::<Submitted, UnitReplies>(parts.submit_queue)
            .map_err(|e| anyhow::anyhow!("submit queue: {e:?}"))?;
    let submit_queue_capacity = consumer.capacity();
    let (reads, read_consumer) =
        paxos_pipeline::pipeline::<ReadSubmitted, UnitReplies>(parts.submit_queue)
            .map_err(|e| anyhow::anyhow!("read queue: {e:?}"))?;
    let status = Arc::new(SharedStatus::default());
    let (control_tx, control_rx) = mpsc::channel(64);
    let durability = Arc::new(Durability::default());
    // A backend with a writer thread tells the loop itself; otherwise a
    // waiter thread blocks in `wait_durable` for it.
    let listening = {
        let durability = Arc::clone(&durability);
        parts
            .storage
            .set_durability_listener(Arc::new(move |event| match event {
                DurabilityEvent::Durable(seq) => durability.published(seq),
                DurabilityEvent::Failed(why) => durability.failed(format!("storage failed: {why}")),
            }))
    };
    let persist_tx = if listening {
        None
    } else {
        let (persist_tx, persist_rx) = std::sync::mpsc::sync_channel::<u64>(NOTIFY_CAPACITY);
        let storage_for_waiter = Arc::clone(&parts.storage);
        let durability_for_waiter = Arc::clone(&durability);
        std::thread::Builder::new()
            .name(format!("durability-{id}"))
            .spawn(move || {
                durability_waiter(storage_for_waiter, persist_rx, durability_for_waiter)
            })?;
        Some(persist_tx)
    };
    let start = Instant::now();
    parts.node.checkpoints = parts.checkpoints.is_some() && parts.reload_durable.is_some();
    parts.node.stage_timing = parts.stages.is_enabled();
    if parts.node.wall_clock_at_zero_us == 0 {
        parts.node.wall_clock_at_zero_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as u64);
    }
    let wall_clock_at_zero_us = parts.node.wall_clock_at_zero_us;
    let node = Node::new(parts.node, parts.recovery, Time(0))
        .map_err(|e| anyhow::anyhow!("starting the node: {e}"))?;
    let planted_unconfirmed_reads = planted_unconfirmed_reads();
    let mut event_loop = EventLoop {
        start,
        node,
        storage: parts.storage,
        transport: parts.transport,
        consumer,
        read_consumer,
        status: Arc::clone(&status),
        persist_tx,
        durability,
        outstanding: VecDeque::new(),
        control_tx: control_tx.clone(),
        sink: parts.checkpoints.clone().map(TransferSink::new),
        checkpoints: parts.checkpoints,
        drained: Vec::new(),
        drained_reads: Vec::new(),
        stages: Arc::clone(&parts.stages),
        reload_durable: parts.reload_durable,
        peer_directory,
        planted_unconfirmed_reads,
        wall_clock_at_zero_us,
    };
    event_loop.carry_out()?;
    event_loop.publish();
    let join = tokio::spawn(event_loop.run(parts.inbound, control_rx));
    Ok((
        Replica {
            id,
            submitter,
            reads,
            submit_queue_capacity,
            stages: parts.stages,
            status,
            control: control_tx,
            planted_unconfirmed_reads,
        },
        join,
    ))
}

/// The crash-stop error for a failed append. A log out of room gets the
/// settings that size it named: the node stops proposing well before this
/// (`paxos_node::Node::on_log_space`), so it means the region cannot hold
/// what is accepted between two checkpoints.
fn append_failed(e: paxos_log::StorageError) -> anyhow::Error {
    match e {
        paxos_log::StorageError::Full(_) => anyhow::anyhow!(
            "storage append failed (stopping this replica): {e}; the log cannot hold what \
             this replica accepts between two checkpoints: raise tuning.nvm_region_mb (0: sized \
             from checkpoint_every_mb and log_memory_mb), or lower those"
        ),
        e => anyhow::anyhow!("storage append failed (stopping this replica): {e}"),
    }
}

/// A storage append taking longer than this (µs) on the event loop is
/// logged: it held up every client and peer message meanwhile.
const SLOW_APPEND_US: u64 = 10_000;

/// A turn of the event loop (one input and the effects it caused) taking
/// longer than this is logged, with what the turn handled: a write waiting
/// longer than this can then be told apart from a loop that was busy.
const SLOW_TURN: Duration = Duration::from_millis(20);

/// When an event-loop turn started, by the wall clock and by the loop
/// thread's CPU clock (a slow turn is logged with both).
#[derive(Clone, Copy)]
struct TurnStart {
    wall: Instant,
    /// The thread's CPU time at most [`CPU_CLOCK_EVERY`] before `wall`.
    cpu: Duration,
}

/// How stale a turn's starting CPU reading may be. Reading the thread's
/// CPU clock is a system call (0.5 µs on the bench VM, longer than many
/// turns), so the loop reads it at most once per this much wall time; a
/// slow turn's `cpu_ms` may then include up to this much from before it.
const CPU_CLOCK_EVERY: Duration = Duration::from_millis(1);

/// The loop thread's CPU clock, read at most once per [`CPU_CLOCK_EVERY`].
struct CpuClock {
    read_at: Instant,
    cpu: Duration,
}

impl CpuClock {
    fn new() -> CpuClock {
        CpuClock {
            read_at: Instant::now(),
            cpu: thread_cpu_time(),
        }
    }

    /// A turn starting now.
    fn turn_start(&mut self) -> TurnStart {
        let wall = Instant::now();
        if wall.duration_since(self.read_at) >= CPU_CLOCK_EVERY {
            self.read_at = wall;
            self.cpu = thread_cpu_time();
        }
        TurnStart {
            wall,
            cpu: self.cpu,
        }
    }
}

/// CPU time the calling thread has used (Linux; zero elsewhere): a system
/// call.
fn thread_cpu_time() -> Duration {
    #[cfg(target_os = "linux")]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: writes the timespec passed, nothing else.
        if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } == 0 {
            return Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
        }
    }
    Duration::ZERO
}

/// What the durability waiter publishes for the loop. The waiter never
/// blocks on the loop (it only stores and notifies), so the loop blocking on
/// a full persist queue can never deadlock with it.
#[derive(Debug, Default)]
struct Durability {
    /// Highest append sequence number known durable.
    durable_seq: AtomicU64,
    /// Set once if storage failed; the loop then stops (crash-stop).
    failure: std::sync::Mutex<Option<String>>,
    notify: tokio::sync::Notify,
}

impl Durability {
    /// Every append up to `seq` is durable.
    fn published(&self, seq: u64) {
        self.durable_seq.fetch_max(seq, Ordering::Release);
        self.notify.notify_one();
    }

    /// Storage failed for good.
    fn failed(&self, message: String) {
        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(message);
        self.notify.notify_one();
    }
}

/// Waits for storage durability in append order and publishes the highest
/// durable sequence number. Appends become durable in order, so waiting for
/// the newest queued sequence covers every older one (one wait per group
/// commit, not per append).
fn durability_waiter(
    storage: Arc<dyn ReplicaStorage>,
    rx: std::sync::mpsc::Receiver<u64>,
    durability: Arc<Durability>,
) {
    while let Ok(mut seq) = rx.recv() {
        while let Ok(newer) = rx.try_recv() {
            seq = seq.max(newer);
        }
        if let Err(e) = storage.wait_durable(seq) {
            durability.failed(format!("storage failed to make append {seq} durable: {e}"));
            return;
        }
        durability.published(seq);
    }
}

struct EventLoop {
    start: Instant,
    node: Node<KvStore, RequestCompletion>,
    storage: Arc<dyn ReplicaStorage>,
    transport: Arc<dyn Transport>,
    consumer: RequestConsumer<Submitted, UnitReplies>,
    read_consumer: RequestConsumer<ReadSubmitted, UnitReplies>,
    status: Arc<SharedStatus>,
    /// To the durability waiter thread, for backends that cannot call
    /// back (`None`: storage's durability listener wakes the loop).
    persist_tx: Option<std::sync::mpsc::SyncSender<u64>>,
    durability: Arc<Durability>,
    /// Persists handed to storage and not yet reported, with their storage
    /// sequence numbers, in order.
    outstanding: VecDeque<(PersistId, u64)>,
    control_tx: mpsc::Sender<Control>,
    checkpoints: Option<CheckpointStore>,
    sink: Option<TransferSink>,
    /// Reused for draining the submit queue.
    drained: Vec<(Bytes, RequestCompletion, RequestKind)>,
    /// Reused for draining the read queue.
    drained_reads: Vec<(Bytes, ReadConsistency, RequestCompletion)>,
    stages: Arc<StageRecorder>,
    reload_durable: Option<DurableReloader>,
    peer_directory: Option<Arc<dyn PeerDirectory>>,
    /// [`PLANTED_BUG_ENV`] asked for reads without confirmation.
    planted_unconfirmed_reads: bool,
    /// The wall clock at `start`, in µs since the Unix epoch.
    wall_clock_at_zero_us: u64,
}

impl EventLoop {
    fn now(&self) -> Time {
        Time(self.start.elapsed().as_micros() as u64)
    }

    /// [`EventLoop::now`], also handed to the store as the clock reads
    /// that skip the log judge expiry by (see `KvStore::set_read_clock_ms`):
    /// every path on which the node may answer a read takes it.
    fn clock(&mut self) -> Time {
        let now = self.now();
        let wall_ms = self.wall_clock_ms(now);
        self.node.state_machine_mut().set_read_clock_ms(wall_ms);
        now
    }

    /// The wall clock at `now`, in ms since the Unix epoch.
    fn wall_clock_ms(&self, now: Time) -> u64 {
        (self.wall_clock_at_zero_us + now.0) / 1000
    }

    async fn run(
        mut self,
        mut inbound: Inbound,
        mut control_rx: mpsc::Receiver<Control>,
    ) -> anyhow::Result<()> {
        let timer = tokio::time::sleep(Duration::from_millis(1));
        tokio::pin!(timer);
        let mut cpu_clock = CpuClock::new();
        loop {
            let deadline = match self.node.next_timer() {
                Some(t) => self.start + Duration::from_micros(t.0),
                None => Instant::now() + Duration::from_millis(100),
            };
            timer
                .as_mut()
                .reset(tokio::time::Instant::from_std(deadline));
            let can_take_requests = self.node.wants_requests();
            // Unbiased: under sustained peer traffic a fixed order would
            // starve timers (heartbeats, elections), control messages and
            // client requests.
            let (turn_started, turn) = tokio::select! {
                () = self.durability.notify.notified() => {
                    let started = cpu_clock.turn_start();
                    self.on_durable()?;
                    (started, "durable")
                }
                msg = inbound.recv() => {
                    let started = cpu_clock.turn_start();
                    let Some((from, bytes)) = msg else { anyhow::bail!("transport closed") };
                    let now = self.clock();
                    self.node.handle_message(now, from, bytes);
                    let mut n = 0;
                    while n < INBOUND_BURST && started.wall.elapsed() < INBOUND_BURST_TIME {
                        match inbound.try_recv() {
                            Ok((from, bytes)) => self.node.handle_message(now, from, bytes),
                            Err(_) => break,
                        }
                        n += 1;
                    }
                    (started, "peer messages")
                }
                ctl = control_rx.recv() => {
                    let started = cpu_clock.turn_start();
                    match ctl {
                        None | Some(Control::Shutdown) => {
                            self.shutdown();
                            return Ok(());
                        }
                        Some(c) => self.on_control(c)?,
                    }
                    (started, "control")
                }
                () = &mut timer => {
                    let started = cpu_clock.turn_start();
                    let now = self.clock();
                    self.node.handle_tick(now);
                    self.status.set_cluster(self.node.cluster_view(now));
                    (started, "timer")
                }
                ready = self.consumer.ready(), if can_take_requests => {
                    let started = cpu_clock.turn_start();
                    if ready == paxos_pipeline::Readiness::Closed {
                        self.shutdown();
                        return Ok(());
                    }
                    self.take_requests();
                    (started, "client writes")
                }
                ready = self.read_consumer.ready() => {
                    let started = cpu_clock.turn_start();
                    if ready == paxos_pipeline::Readiness::Closed {
                        self.shutdown();
                        return Ok(());
                    }
                    self.take_reads();
                    (started, "client reads")
                }
            };
            self.carry_out()?;
            self.publish();
            let busy = turn_started.wall.elapsed();
            if busy > SLOW_TURN {
                // Nothing else runs on the loop meanwhile: every client and
                // peer waited this long. `cpu_ms` is what the turn itself
                // computed; well below `busy_ms`, the turn mostly waited
                // (for the CPU, a lock, or the disk) rather than worked.
                tracing::warn!(
                    busy_ms = busy.as_millis() as u64,
                    cpu_ms = thread_cpu_time()
                        .saturating_sub(turn_started.cpu)
                        .as_millis() as u64,
                    turn,
                    "an event loop turn held up every client and peer"
                );
            }
        }
    }

    fn publish(&self) {
        self.status.publish(&self.node.status());
    }

    /// Reports, in order, every persist the storage made durable.
    fn on_durable(&mut self) -> anyhow::Result<()> {
        if let Some(e) = self
            .durability
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            // Crash-stop: a replica that cannot persist must not go on
            // acknowledging anything.
            anyhow::bail!(e);
        }
        let durable = self.durability.durable_seq.load(Ordering::Acquire);
        let mut last = None;
        while let Some(&(id, seq)) = self.outstanding.front() {
            if seq > durable {
                break;
            }
            self.outstanding.pop_front();
            last = Some(id);
        }
        // Durability is cumulative: reporting the newest covers the rest.
        if let Some(id) = last {
            let now = self.clock();
            self.node.on_persisted(now, id);
        }
        Ok(())
    }

    /// Acts on a control message. Fails only where the replica must stop
    /// (the log cannot be made durable for an install).
    fn on_control(&mut self, c: Control) -> anyhow::Result<()> {
        let now = self.now();
        match c {
            Control::Relinquish(successor, reply) => {
                let _ = reply.send(self.node.relinquish(now, successor));
            }
            Control::AbandonChange(reply) => {
                let _ = reply.send(self.node.abandon_configuration_change());
            }
            Control::ChangeConfiguration(target, reply) => {
                let _ = reply.send(self.node.change_configuration(now, target));
            }
            Control::Directory(command, completer) => {
                self.node
                    .propose_directory(now, command, RequestCompletion::Alone(completer));
            }
            Control::CheckpointSaved(result) => self.node.on_checkpoint_saved(now, result),
            Control::TransferFinished(result) => self.node.on_transfer_finished(now, result),
            Control::CheckpointDamaged(slot) => self.node.on_checkpoint_damaged(now, slot),
            Control::DecreesRead(read, decrees) => self.node.on_decrees_read(now, read, decrees),
            Control::Restored(done) => self.install_restored(done)?,
            Control::Shutdown => {}
        }
        self.status.set_cluster(self.node.cluster_view(now));
        Ok(())
    }

    fn shutdown(&mut self) {
        self.node.shutdown();
        let _ = self.carry_out();
        self.consumer.shutdown();
        self.read_consumer.shutdown();
    }

    /// Hands queued reads to the node, at most [`READ_BURST`] per wake-up
    /// so that reads cannot starve the rest of the loop (counted in reads,
    /// not units; a unit is never split, so a drain stops before one that
    /// would pass the bound), in one
    /// `submit_reads` call (they share one heartbeat round). The parts of
    /// one unit share its collector, as in-order units' do.
    fn take_reads(&mut self) {
        let limits = paxos_pipeline::DrainLimits {
            max_count: READ_BURST,
            max_bytes: usize::MAX,
            per_item_overhead: 0,
        };
        let now = self.clock();
        let node = &mut self.node;
        let unconfirmed = self.planted_unconfirmed_reads;
        let drained = &mut self.drained_reads;
        self.read_consumer.drain_weighed_by(
            limits,
            |r: &Request<ReadSubmitted, UnitReplies>| r.payload.unit.weight(),
            |r| {
                let ReadSubmitted { unit, consistency } = r.payload;
                if unconfirmed && consistency == ReadConsistency::Linearizable {
                    // The planted bug: no confirmation at all.
                    let mut parts = Vec::with_capacity(unit.len());
                    split_unit(unit, r.completer, &mut parts, |request, part, ()| {
                        (request, part)
                    });
                    for (request, part) in parts {
                        part.complete(Reply {
                            bytes: paxos_node::StateMachine::query(node.state_machine(), &request),
                            slot: node.applied(),
                            applied_us: 0,
                        });
                    }
                } else {
                    split_unit(unit, r.completer, drained, |request, part, ()| {
                        (request, consistency, part)
                    });
                }
            },
        );
        self.node.submit_reads(now, &mut self.drained_reads);
    }

    /// Drains queued client requests into the node (one decree's worth).
    fn take_requests(&mut self) {
        let (max_count, max_bytes) = self.node.drain_limits();
        let limits = paxos_pipeline::DrainLimits {
            max_count,
            max_bytes,
            per_item_overhead: 4,
        };
        let stages = Arc::clone(&self.stages);
        let batched_us = stages.stamp();
        let drained = &mut self.drained;
        // One stage-histogram lock for the whole drain, not one per request.
        // Limits count requests, not units; a unit is never split (the node
        // opens another decree for what does not fit).
        stages.with_batch(|recorder| {
            self.consumer.drain_weighed_by(
                limits,
                |r: &Request<Submitted, UnitReplies>| r.payload.unit.weight(),
                |r| {
                    recorder.record_n(
                        Point::Queued,
                        r.payload.queued_us,
                        batched_us,
                        r.payload.unit.len() as u64,
                    );
                    split_unit(
                        r.payload.unit,
                        r.completer,
                        drained,
                        |request, part, kind| (request, part, kind),
                    );
                },
            );
        });
        let now = self.now();
        self.node.propose_requests(now, now, &mut self.drained);
    }

    /// Carries out every effect the node has queued.
    fn carry_out(&mut self) -> anyhow::Result<()> {
        while let Some(effect) = self.node.poll_effect() {
            match effect {
                Effect::Transmit { to, bytes } => {
                    if let Err(e) = self.transport.send(to, bytes) {
                        // Paxos tolerates loss; the core retransmits on its timers.
                        tracing::debug!(%to, error = %e, "send dropped");
                    }
                }
                Effect::Persist { id, entries } => {
                    let before = self.now();
                    let seq = self.storage.append(&entries).map_err(append_failed)?;
                    let append_us = self.now().0.saturating_sub(before.0);
                    if append_us > SLOW_APPEND_US {
                        // The loop stalled for this long: every client and
                        // peer message waited (a log compaction, a slow disk).
                        tracing::warn!(
                            append_us,
                            entries = entries.len(),
                            "a storage append held up the event loop"
                        );
                    }
                    self.outstanding.push_back((id, seq));
                    if let Some(tx) = &self.persist_tx {
                        tx.send(seq)
                            .map_err(|_| anyhow::anyhow!("durability waiter stopped"))?;
                    }
                    // A log bounded in size says when it is nearly full, and
                    // the node holds new writes until a truncation (one
                    // short lock; the file log always has room).
                    let now = self.now();
                    self.node
                        .on_log_space(now, self.storage.space())
                        .map_err(|e| anyhow::anyhow!("stopping this replica: {e}"))?;
                }
                Effect::Complete {
                    completion,
                    reply,
                    slot,
                } => completion.complete(Reply {
                    bytes: reply,
                    slot,
                    applied_us: self.stages.stamp(),
                }),
                Effect::Abort { completion, reason } => completion.abort(pipeline_abort(reason)),
                Effect::SaveCheckpoint(job) => self.save_checkpoint(job),
                Effect::ServeChunk {
                    to,
                    slot,
                    offset,
                    max_bytes,
                } => {
                    let (Some(store), transport) =
                        (self.checkpoints.clone(), Arc::clone(&self.transport))
                    else {
                        continue;
                    };
                    let control = self.control_tx.clone();
                    // Disk reads off the loop; the transport is thread-safe.
                    tokio::task::spawn_blocking(move || {
                        let served = node_storage::serve_chunk(&store, slot, offset, max_bytes);
                        let _ = transport.send(to, paxos_node::xfer::encode(&served.reply));
                        if let Some(damaged) = served.damaged {
                            let _ = control.blocking_send(Control::CheckpointDamaged(damaged));
                        }
                    });
                }
                Effect::Transfer(op) => self.transfer(op),
                Effect::InstallCheckpoint { slot } => self.install(slot),
                Effect::SetPeers(peers) => {
                    if let Some(dir) = &self.peer_directory {
                        dir.set_peers(&peers);
                    }
                    let now = self.now();
                    self.status.set_cluster(self.node.cluster_view(now));
                }
                Effect::Applied { .. } => {}
                Effect::ReleaseLogMemory { through } => {
                    self.storage.release_memory_through(through)
                }
                Effect::ReadDecrees {
                    read,
                    through,
                    max_decrees,
                    max_bytes,
                } => {
                    let storage = Arc::clone(&self.storage);
                    let control = self.control_tx.clone();
                    // A disk read off the loop (one bounded chunk; the core
                    // keeps at most one outstanding per peer).
                    tokio::task::spawn_blocking(move || {
                        let decrees = storage
                            .read_decrees(read.from, through, max_decrees, max_bytes)
                            .map_err(|e| {
                                tracing::debug!(peer = %read.peer, from = %read.from, error = %e, "catch-up not served from storage")
                            })
                            .ok();
                        let _ = control.blocking_send(Control::DecreesRead(read, decrees));
                    });
                }
                Effect::ClearDamage => {
                    // The repair is done; a failure to forget the damage
                    // only means the next start repairs again.
                    match self.storage.clear_damage() {
                        Ok(()) => tracing::info!("storage damage record cleared"),
                        Err(e) => {
                            tracing::error!(error = %e, "clearing the damage record failed; the next start repairs again")
                        }
                    }
                }
                Effect::Timing(t) => self.stages.record_decree(
                    [t.batched, t.proposed, t.durable, t.applied, t.applied].map(|t| t.0.max(1)),
                    t.requests,
                ),
            }
        }
        Ok(())
    }

    /// Writes a checkpoint on a thread of its own; the result comes back as
    /// a control message.
    fn save_checkpoint(&mut self, job: paxos_node::CheckpointJob<crate::kv::KvSnapshot>) {
        let Some(store) = self.checkpoints.clone() else {
            return;
        };
        let control = self.control_tx.clone();
        let spawned = std::thread::Builder::new()
            .name("checkpoint".into())
            .spawn(move || {
                lower_this_threads_priority();
                let result = node_storage::write_checkpoint(&store, job).map_err(|e| e.to_string());
                let _ = control.blocking_send(Control::CheckpointSaved(result));
            });
        if let Err(e) = spawned {
            let now = self.now();
            self.node
                .on_checkpoint_saved(now, Err(format!("cannot start checkpoint thread: {e}")));
        }
    }

    /// Writes a received chunk inline (bounded: one chunk); verifies and
    /// publishes the finished checkpoint off the loop.
    fn transfer(&mut self, op: TransferOp) {
        let now = self.now();
        let Some(sink) = self.sink.as_mut() else {
            return;
        };
        match op {
            TransferOp::Finish { slot } => match sink.take_finish(slot) {
                Some(finish) => {
                    let control = self.control_tx.clone();
                    tokio::task::spawn_blocking(move || {
                        let result = finish.run().map_err(|e| e.to_string());
                        let _ = control.blocking_send(Control::TransferFinished(result));
                    });
                }
                None => self.node.on_transfer_finished(
                    now,
                    Err(format!("no transfer of checkpoint {slot} in progress")),
                ),
            },
            op => {
                if let Err(e) = sink.perform(op) {
                    self.node.on_transfer_failed(now, e.to_string());
                }
            }
        }
    }

    /// Restores checkpoint `slot` (received from a peer) into a fresh store
    /// on a blocking thread: at ten million keys that reads 1.27 GB and
    /// takes seconds, during which the loop goes on serving clients and
    /// peers with the old store. The result comes back as
    /// [`Control::Restored`] and is installed by
    /// [`EventLoop::install_restored`].
    fn install(&mut self, slot: Slot) {
        let Some(store) = self.checkpoints.clone() else {
            // Not reached: the node takes no transfers without a store.
            let now = self.now();
            self.node
                .on_restore_failed(now, slot, "no checkpoint store".into());
            return;
        };
        let control = self.control_tx.clone();
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let mut fresh = KvStore::new();
            let result = node_storage::restore_slot(&store, slot, &mut fresh)
                .map(|restored| Box::new((fresh, restored)))
                .map_err(|e| e.to_string());
            let done = RestoreDone {
                slot,
                result,
                elapsed: started.elapsed(),
            };
            // A loop that stopped meanwhile drops the store here, off it.
            let _ = control.blocking_send(Control::Restored(done));
        });
    }

    /// Installs a store restored off the loop (see [`EventLoop::install`])
    /// and restarts the node's core from it, without restarting the
    /// process; the store no longer needed (the old one, gigabytes maybe)
    /// is dropped on a blocking thread.
    fn install_restored(&mut self, done: RestoreDone) -> anyhow::Result<()> {
        let RestoreDone {
            slot,
            result,
            elapsed,
        } = done;
        let now = self.now();
        let (mut fresh, restored) = match result {
            Ok(restored) => *restored,
            Err(e) => {
                self.node.on_restore_failed(now, slot, e);
                return Ok(());
            }
        };
        let micros = elapsed.as_micros().max(1) as u64;
        tracing::info!(
            %slot,
            bytes = restored.data_len,
            duration_ms = micros / 1000,
            mb_per_s = restored.data_len / micros,
            "received checkpoint restored off the event loop"
        );
        let Some(reload) = &self.reload_durable else {
            // Not reached: the node takes no transfers without a reloader.
            self.node
                .on_restore_failed(now, slot, "no durable-state reloader".into());
            return Ok(());
        };
        // Waits for the log's pending group commit (one fsync): installs
        // are rare, and the new core must not count unsynced votes.
        let durable = reload().map_err(|e| {
            anyhow::anyhow!(
                "making the log durable before an install failed (stopping this replica): {e}"
            )
        })?;
        let now = self.now();
        // Reads answered as soon as it is in judge expiry by the wall clock
        // too, as the old store's did.
        fresh.set_read_clock_ms(self.wall_clock_ms(now));
        let (unneeded, result) = self
            .node
            .install_restored(now, durable, slot, fresh, restored);
        if let Err(e) = result {
            tracing::error!(error = %e, "installing a received checkpoint failed; will fetch again");
        }
        // Freeing a large store walks all of it.
        tokio::task::spawn_blocking(move || drop(unneeded));
        Ok(())
    }
}

/// Renders the reply payload of a [`ReplicateError`] as a RESP error line
/// (used by the server; `redirect` maps a leader id to its client address).
pub fn error_reply(
    e: &ReplicateError,
    redirect: impl Fn(ReplicaId) -> Option<String>,
    out: &mut BytesMut,
) {
    match e {
        ReplicateError::NotPrimary { leader: Some(l) } => match redirect(*l) {
            Some(addr) => {
                out.put_slice(b"-MOVED 0 ");
                out.put_slice(addr.as_bytes());
                out.put_slice(b"\r\n");
            }
            None => crate::resp::write_error(out, b"CLUSTERDOWN leader unknown"),
        },
        ReplicateError::NotPrimary { leader: None } => {
            crate::resp::write_error(out, b"CLUSTERDOWN no leader elected yet")
        }
        ReplicateError::Overloaded => {
            crate::resp::write_error(out, b"TRYAGAIN overloaded, retry later")
        }
        ReplicateError::ShuttingDown => {
            crate::resp::write_error(out, b"UNKNOWN outcome: replica shutting down")
        }
        ReplicateError::OutcomeUnknown(m) | ReplicateError::Rejected(m) => {
            crate::resp::write_error(out, m.as_bytes())
        }
    }
}

/// Converts an [`Outcome`] into the reply bytes for a client.
pub fn outcome_reply(
    outcome: Outcome<Reply>,
    redirect: impl Fn(ReplicaId) -> Option<String>,
    out: &mut BytesMut,
) {
    match outcome {
        Outcome::Completed(reply) => out.put_slice(&reply.bytes),
        Outcome::Aborted(reason) => error_reply(&ReplicateError::from_abort(reason), redirect, out),
    }
}

/// Gives the calling thread the nice value [`CHECKPOINT_NICE`]. A
/// checkpoint encodes and writes the whole state: seconds of CPU at
/// millions of keys, on every replica at about the same slot. On a machine
/// with fewer free cores than busy threads, at equal priority it took CPU
/// from the event loops (and their heartbeats) and cost the leader its
/// leadership; at a lower one it yields to them and only finishes later.
/// Linux keeps nice values per thread; elsewhere this does nothing.
fn lower_this_threads_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain syscalls on the calling thread, no memory passed.
        // Never raises the priority of a node started at a higher nice.
        let result = unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            let current = libc::getpriority(libc::PRIO_PROCESS, tid);
            libc::setpriority(libc::PRIO_PROCESS, tid, CHECKPOINT_NICE.max(current))
        };
        if result != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "could not lower the checkpoint thread's priority");
        }
    }
}

/// Nice value of the checkpoint writer thread (the loop runs at 0).
const CHECKPOINT_NICE: libc::c_int = 10;

#[cfg(test)]
mod tests {
    use super::*;

    /// What storage's writer thread (or the waiter) reports reaches the
    /// loop: the durable sequence only grows, each report leaves a wake-up
    /// for the loop, and a failure is kept for the loop to stop on.
    #[tokio::test]
    async fn durability_reports_wake_the_loop_and_keep_the_newest() {
        let d = Durability::default();
        d.published(5);
        tokio::time::timeout(Duration::from_secs(5), d.notify.notified())
            .await
            .expect("a report leaves a wake-up");
        d.published(3);
        assert_eq!(d.durable_seq.load(Ordering::Acquire), 5);
        d.failed("storage failed: disk gone".into());
        tokio::time::timeout(Duration::from_secs(5), d.notify.notified())
            .await
            .expect("a failure wakes the loop");
        assert_eq!(
            d.failure.lock().unwrap().as_deref(),
            Some("storage failed: disk gone")
        );
    }

    #[test]
    fn published_status_counts_role_and_leader_changes() {
        let shared = SharedStatus::default();
        let mut s = paxos_node::NodeStatus {
            id: ReplicaId(1),
            role: Role::Follower,
            leader: None,
            ballot: paxos_core::Ballot::default(),
            commit_index: Slot(0),
            applied_index: Slot(0),
            in_flight: 0,
            checkpoint_slot: Slot(0),
            needs_snapshot: false,
            proposed_batches: 0,
            proposed_requests: 0,
            checkpoints_saved: 2,
            checkpoints_installed: 1,
            repair: None,
            read_mode: paxos_node::ReadMode::default(),
            pending_reads: 0,
            reads_served: 0,
            log_full: false,
            accepts_refused_while_full: 0,
            catchup_served_from_storage: 0,
        };
        let publish = |s: &paxos_node::NodeStatus| {
            shared.publish(s);
            shared.snapshot(ReplicaId(1))
        };
        let out = publish(&s);
        assert_eq!((out.role_changes, out.leader_changes), (0, 0));
        assert_eq!((out.checkpoints_saved, out.checkpoints_installed), (2, 1));
        // The first leader learned is not a change; the same leader again,
        // or none for a while, is not either.
        s.leader = Some(ReplicaId(2));
        assert_eq!(publish(&s).leader_changes, 0);
        s.leader = None;
        s.role = Role::Candidate;
        let out = publish(&s);
        assert_eq!((out.role_changes, out.leader_changes), (1, 0));
        s.role = Role::Follower;
        s.leader = Some(ReplicaId(2));
        let out = publish(&s);
        assert_eq!((out.role_changes, out.leader_changes), (2, 0));
        s.role = Role::Leader;
        s.leader = Some(ReplicaId(1));
        s.needs_snapshot = true;
        let out = publish(&s);
        assert_eq!((out.role_changes, out.leader_changes), (3, 1));
        assert!(out.needs_snapshot);
        assert_eq!(publish(&s).role_changes, 3, "no change, no count");

        // Decree sizes: one decree of 7 requests, then three carrying 10
        // between them (recorded as 4, 3, 3), then nothing new.
        assert_eq!(shared.decree_requests.snapshot().count(), 0);
        s.proposed_batches = 1;
        s.proposed_requests = 7;
        publish(&s);
        s.proposed_batches = 4;
        s.proposed_requests = 17;
        publish(&s);
        publish(&s);
        let sizes = shared.decree_requests.snapshot();
        assert_eq!((sizes.count(), sizes.sum), (4, 17));
        assert_eq!(sizes.counts[3], 1, "7 in (4, 8]");
        assert_eq!(sizes.counts[2], 3, "4, 3 and 3 in (2, 4]");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_thread_cpu_clock_counts_work_and_not_sleep() {
        let start = CpuClock::new().turn_start();
        std::thread::sleep(Duration::from_millis(30));
        let slept = thread_cpu_time().saturating_sub(start.cpu);
        assert!(slept < Duration::from_millis(10), "sleeping used {slept:?}");
        // Spinning advances it (bounded in wall time, for a loaded host).
        let mut x = 0u64;
        while thread_cpu_time().saturating_sub(start.cpu) < Duration::from_millis(10) {
            assert!(
                start.wall.elapsed() < Duration::from_secs(20),
                "20 s of spinning did not register 10 ms of CPU"
            );
            x = std::hint::black_box(x.wrapping_add(1));
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_checkpoint_thread_runs_at_a_lower_priority_than_the_rest() {
        fn own_nice() -> libc::c_int {
            // SAFETY: plain syscalls on the calling thread.
            unsafe {
                let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
                libc::getpriority(libc::PRIO_PROCESS, tid)
            }
        }
        let before = own_nice();
        let lowered = std::thread::spawn(|| {
            lower_this_threads_priority();
            own_nice()
        })
        .join()
        .unwrap();
        assert_eq!(lowered, CHECKPOINT_NICE.max(before));
        assert_eq!(own_nice(), before, "only the calling thread is lowered");
    }

    #[test]
    fn every_node_abort_maps_to_a_client_error() {
        use paxos_node::AbortReason as N;
        let cases = [
            (
                N::NotPrimary {
                    leader: Some(ReplicaId(2)),
                },
                "MOVED",
            ),
            (N::NotPrimary { leader: None }, "CLUSTERDOWN"),
            (N::OutcomeUnknown, "UNKNOWN"),
            (N::TooLarge, "ERR request larger"),
            (N::Refused, "ERR proposal refused"),
            (N::ShuttingDown, "UNKNOWN"),
        ];
        for (reason, want) in cases {
            let mut out = BytesMut::new();
            outcome_reply(
                Outcome::Aborted(pipeline_abort(reason)),
                |_| Some("127.0.0.1:6002".to_string()),
                &mut out,
            );
            let text = String::from_utf8_lossy(&out);
            assert!(text.starts_with(&format!("-{want}")), "{reason:?}: {text}");
        }
    }

    #[test]
    fn errors_render_as_redirects_or_unknown() {
        let redirect = |id: ReplicaId| (id.0 == 2).then(|| "127.0.0.1:6002".to_string());
        let mut out = BytesMut::new();
        error_reply(
            &ReplicateError::NotPrimary {
                leader: Some(ReplicaId(2)),
            },
            redirect,
            &mut out,
        );
        assert_eq!(&out[..], b"-MOVED 0 127.0.0.1:6002\r\n");
        out.clear();
        outcome_reply(
            Outcome::Aborted(AbortReason::Rejected(OUTCOME_UNKNOWN)),
            redirect,
            &mut out,
        );
        assert!(out.starts_with(b"-UNKNOWN"));
        out.clear();
        outcome_reply(
            Outcome::Aborted(AbortReason::NotPrimary { leader_hint: None }),
            redirect,
            &mut out,
        );
        assert!(out.starts_with(b"-CLUSTERDOWN"));
    }
}
