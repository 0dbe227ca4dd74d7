//! The replica driver: the event loop that owns a `paxos_core::Replica`
//! and connects it to the network, the storage, the state machine and the
//! clients.
//!
//! # Shape
//!
//! ```text
//!  clients ──submit──▶ [paxos-pipeline queue] ──drain batch──▶ ┐
//!  transport inbound ─────────────────────────────────────────▶ │ event loop task
//!  durability waiter thread ──on_persisted tokens────────────▶ │ (owns Replica,
//!  timer (next_timer) ────────────────────────────────────────▶ │  state machine)
//!  control (relinquish, checkpoint done, shutdown) ───────────▶ ┘
//!        │ Send → transport.send   Persist → storage.append, then the waiter
//!        │ Apply → state machine, completing the proposer's clients
//! ```
//!
//! One task owns all protocol state, so the hot path takes no lock. Every
//! channel is bounded. Messages are encoded into one reused buffer.
//!
//! # Exactly one outcome per request
//!
//! Each submitted request carries a `Completer` from paxos-pipeline, which
//! resolves exactly once by construction. The loop resolves it:
//!
//! - `Completed(output)` when the decree holding it is applied here;
//! - `Aborted(NotPrimary)` when it was never proposed (this replica is not
//!   the leader): it will certainly never execute, so clients may retry
//!   elsewhere;
//! - `Aborted(Rejected(OUTCOME_UNKNOWN))` when it was proposed but this
//!   replica lost leadership (or the slot was filled by another value)
//!   before learning the result: the request may still be chosen by a
//!   later leader, so a client must not assume either way.
//!
//! A proposal is recognised when it is applied by comparing the applied
//! value with the proposed bytes. Every batch this node proposes starts with
//! a *tag* request (node id, a per-boot random nonce and a counter), so two
//! different proposals never have equal bytes even when their client
//! requests are identical.
//!
//! # Reads
//!
//! paxos-core has no read-index hook, so reads (GET, EXISTS, MGET) are
//! ordered through the log like writes: the read is a request in a decree
//! and is executed when that decree is applied. It is linearizable because
//! its effect point is its slot in the one total order of decrees, which
//! lies between its invocation (it was proposed after arriving) and its
//! response (it was applied before replying). Batching makes the cost one
//! shared decree per batch, not one per read.
//!
//! # Checkpoints
//!
//! Every `checkpoint_every_decrees` applied decrees the loop serializes the
//! state machine (this pauses the loop for that long) and a background
//! thread writes it with paxos-log's checkpoint store (per-block CRC32C;
//! temp file, fsync, verify, rename, fsync directory; the newest two kept). When it is durable the loop calls
//! `Replica::compact(slot - retain)`, keeping a margin of decrees so lagging
//! peers can still catch up from memory. On start-up the newest valid
//! checkpoint is loaded and the log tail after it is replayed by the core.
//! A replica behind everything its peers retain fetches a checkpoint from a
//! peer ([`crate::xfer`]) and restarts its core from it in place.

use crate::kv::{StateMachine, OP_TAG};
use crate::membership::{ClusterView, Directory, PeerDirectory};
use crate::stages::{Point, StageRecorder};
use bytes::{BufMut, Bytes, BytesMut};
use paxos_core::batch::{BatchBuilder, BatchLimits};
use paxos_core::{
    codec, Action, Ballot, DurableState, Membership, Message, PersistToken, ProposeError,
    Reconfiguration, ReplicaId, Role, Slot, Time, Value,
};
use paxos_log::checkpoint::{CheckpointMeta, CheckpointStore};
use paxos_log::{ReplicaStorage, StorageError};
use paxos_net::{Inbound, Transport};
use paxos_pipeline::{AbortReason, Completer, Outcome, Request, RequestConsumer, Submitter};
use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// The abort reason of a request that was proposed but whose fate this
/// replica did not learn. Servers must report it as "outcome unknown".
pub const OUTCOME_UNKNOWN: &str = "UNKNOWN outcome: leadership changed after the request was proposed; it may or may not be applied";
/// The abort reason of a request refused for its size.
pub const TOO_LARGE: &str = "ERR request larger than the batch limit";

/// Most inbound messages handled per wake-up before acting on them.
const INBOUND_BURST: usize = 256;
/// Capacity of the durability-notification and control channels.
const NOTIFY_CAPACITY: usize = 4096;
/// A transfer with no progress for this long is abandoned and retried.
const XFER_STALL: Duration = Duration::from_secs(2);

/// Tuning of the driver.
#[derive(Clone, Debug)]
pub struct DriverConfig {
    /// Most decrees this node has proposed and not yet seen applied.
    pub pipeline_window: usize,
    /// Per-decree limits (the tag request counts against them).
    pub batch_limits: BatchLimits,
    /// Checkpoint every this many decrees (0: never).
    pub checkpoint_every: u64,
    /// Where checkpoints go (None: no checkpoints).
    pub checkpoints: Option<CheckpointStore>,
    /// Decrees kept below a checkpoint when compacting, so lagging peers
    /// can still catch up from memory instead of needing a transfer.
    pub compact_retain: u64,
}

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
    /// Membership, peers and address book; replaced (not edited) by the
    /// loop on its timer and on membership changes.
    cluster: std::sync::Mutex<Arc<ClusterView>>,
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
            commit_index: self.commit_index.load(Ordering::Relaxed),
            applied_index: self.applied_index.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            checkpoint_slot: self.checkpoint_slot.load(Ordering::Relaxed),
            proposed_batches: self.proposed_batches.load(Ordering::Relaxed),
            proposed_requests: self.proposed_requests.load(Ordering::Relaxed),
        }
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

/// Requests to the loop from outside.
#[derive(Debug)]
enum Control {
    /// Hand over to the named replica, or to the most caught-up voter.
    Relinquish(Option<ReplicaId>, oneshot::Sender<Result<(), ProposeError>>),
    /// Give up the membership change in progress.
    AbandonChange(oneshot::Sender<Option<Membership>>),
    ChangeConfiguration(Membership, oneshot::Sender<Result<(), ProposeError>>),
    CheckpointDone(Slot),
    CheckpointFailed(String),
    Shutdown,
}

/// The embedding API (RSL's `ReplicateRequest` / status calls): a cheap,
/// cloneable handle to a running replica.
#[derive(Clone, Debug)]
pub struct Replica {
    id: ReplicaId,
    submitter: Submitter<Submitted, Reply>,
    status: Arc<SharedStatus>,
    control: mpsc::Sender<Control>,
    stages: Arc<StageRecorder>,
}

impl Replica {
    /// Replicates one request (a state-machine request encoding) and waits
    /// for its output. Fails fast with `NotPrimary` on a follower.
    pub async fn replicate(&self, request: Bytes) -> Result<Bytes, ReplicateError> {
        match self.submit(request) {
            Ok(handle) => handle
                .await
                .into_result()
                .map(|reply| reply.bytes)
                .map_err(ReplicateError::from_abort),
            Err(e) => Err(e),
        }
    }

    /// Submits without waiting for the outcome; the handle resolves exactly
    /// once. Used by the RESP server to keep a connection's replies in order.
    pub fn submit(
        &self,
        request: Bytes,
    ) -> Result<paxos_pipeline::CompletionHandle<Reply>, ReplicateError> {
        let status = &self.status;
        if status.role.load(Ordering::Relaxed) != ROLE_LEADER {
            let leader = status.leader.load(Ordering::Relaxed);
            return Err(ReplicateError::NotPrimary {
                leader: (leader != 0).then_some(ReplicaId(leader)),
            });
        }
        let queued_us = self.stages.stamp();
        let submitted = Submitted { request, queued_us };
        self.submitter.try_submit(submitted).map_err(|e| match e {
            paxos_pipeline::SubmitError::ShuttingDown(_) => ReplicateError::ShuttingDown,
            _ => ReplicateError::Overloaded,
        })
    }

    /// A read. Reads are ordered through the log (see the module docs), so
    /// this is [`Replica::replicate`] of a read request.
    pub async fn read(&self, request: Bytes) -> Result<Bytes, ReplicateError> {
        self.replicate(request).await
    }

    /// The write-path latency recorder (`INFO latency`).
    pub fn stages(&self) -> &Arc<StageRecorder> {
        &self.stages
    }

    /// The published status.
    pub fn status(&self) -> NodeStatus {
        self.status.snapshot(self.id)
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

/// One batch this node proposed and has not yet seen applied.
struct Proposal {
    slot: Slot,
    value: Bytes,
    completers: Vec<Completer<Reply>>,
    batched_us: u64,
    accept_us: u64,
    durable_us: u64,
    /// The persist of this proposal's own acceptance (stage timing only).
    token: Option<PersistToken>,
}

/// Everything the loop needs to start.
pub struct DriverParts<S: StateMachine> {
    /// The core configuration.
    pub core: paxos_core::Config,
    /// What storage recovered.
    pub durable: DurableState,
    /// The storage.
    pub storage: Arc<dyn ReplicaStorage>,
    /// The transport and its inbound channel.
    pub transport: Arc<dyn Transport>,
    /// Inbound peer messages.
    pub inbound: Inbound,
    /// The state machine, restored from the newest checkpoint if any.
    pub state_machine: S,
    /// Driver tuning.
    pub driver: DriverConfig,
    /// Capacity of the submit queue.
    pub submit_queue: usize,
    /// Seed for the core's randomized timeouts.
    pub seed: u64,
    /// Write-path latency recorder (off unless enabled).
    pub stages: Arc<StageRecorder>,
    /// Reads the storage's current durable state, to restart the core after
    /// installing a checkpoint received from a peer (None: no transfers).
    pub reload_durable: Option<DurableReloader>,
}

/// Reads a storage backend's current durable state.
pub type DurableReloader = Arc<dyn Fn() -> DurableState + Send + Sync>;

/// An incoming checkpoint transfer.
struct Transfer {
    peer: ReplicaId,
    /// 0 until the first chunk names it.
    slot: Slot,
    offset: u64,
    writer: Option<paxos_log::checkpoint::CheckpointWriter>,
    last_progress: Instant,
}

/// A request in the submit queue.
#[derive(Debug)]
pub struct Submitted {
    /// The state-machine request encoding.
    pub request: Bytes,
    /// Stage stamp when it was queued (0: timing off).
    pub queued_us: u64,
}

impl paxos_pipeline::ByteLen for Submitted {
    fn byte_len(&self) -> usize {
        self.request.len()
    }
}

/// A completed request's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The state machine's output (for KV: the RESP reply).
    pub bytes: Bytes,
    /// Stage stamp when it was applied (0: timing off).
    pub applied_us: u64,
}

/// Bytes of a value's payload (part of the Accept-encoding cache key).
fn value_len(value: &Value) -> usize {
    match value {
        Value::Requests(b) => b.len(),
        _ => 0,
    }
}

/// Starts the event loop on the current tokio runtime and the durability
/// waiter thread. Returns the handle and the loop's join handle (which ends
/// on shutdown or on a fatal storage error).
pub fn start<S: StateMachine>(
    parts: DriverParts<S>,
) -> anyhow::Result<(Replica, tokio::task::JoinHandle<anyhow::Result<()>>)> {
    start_with_peers(parts, Directory::default(), None)
}

/// [`start`], with the configured member addresses and a transport whose
/// peer set follows membership changes (see [`crate::membership`]).
pub fn start_with_peers<S: StateMachine>(
    mut parts: DriverParts<S>,
    directory: Directory,
    peer_directory: Option<Arc<dyn PeerDirectory>>,
) -> anyhow::Result<(Replica, tokio::task::JoinHandle<anyhow::Result<()>>)> {
    crate::membership::restart_membership(&mut parts.core, parts.state_machine.cluster());
    let id = parts.core.id;
    let (submitter, consumer) = paxos_pipeline::pipeline::<Submitted, Reply>(parts.submit_queue)
        .map_err(|e| anyhow::anyhow!("submit queue: {e:?}"))?;
    let status = Arc::new(SharedStatus::default());
    let (control_tx, control_rx) = mpsc::channel(64);
    let (persist_tx, persist_rx) = std::sync::mpsc::sync_channel::<u64>(NOTIFY_CAPACITY);
    let durability = Arc::new(Durability::default());
    let storage_for_waiter = Arc::clone(&parts.storage);
    let durability_for_waiter = Arc::clone(&durability);
    std::thread::Builder::new()
        .name(format!("durability-{id}"))
        .spawn(move || durability_waiter(storage_for_waiter, persist_rx, durability_for_waiter))?;
    let applied = parts.state_machine.applied_through();
    let start = Instant::now();
    let core_config = parts.core.clone();
    let replica =
        paxos_core::Replica::try_new(parts.core, parts.durable, applied, parts.seed, Time(0))
            .map_err(|e| anyhow::anyhow!("core config: {e}"))?;
    let mut nonce_bytes = [0u8; 8];
    nonce_bytes.copy_from_slice(&parts.seed.to_le_bytes());
    let event_loop = EventLoop {
        id,
        start,
        replica,
        sm: parts.state_machine,
        storage: parts.storage,
        transport: parts.transport,
        consumer,
        status: Arc::clone(&status),
        persist_tx,
        durability,
        outstanding: VecDeque::new(),
        control_tx: control_tx.clone(),
        driver: parts.driver,
        proposals: VecDeque::new(),
        stalled: None,
        outputs: Vec::new(),
        send_buf: BytesMut::with_capacity(64 * 1024),
        last_accept: None,
        tag_counter: 0,
        boot_nonce: u64::from_le_bytes(nonce_bytes) ^ (start.elapsed().as_nanos() as u64),
        is_leader: false,
        last_checkpoint: applied,
        checkpoint_running: false,
        checkpoint_slot: applied,
        completers: Vec::new(),
        stages: Arc::clone(&parts.stages),
        awaiting_persist: None,
        core_config,
        seed: parts.seed,
        reload_durable: parts.reload_durable,
        needs_snapshot: false,
        transfer: None,
        transfer_rotation: 0,
        directory,
        peer_directory,
        book_generation: u64::MAX,
        membership_slot: u64::MAX,
        was_member: false,
    };
    status.applied_index.store(applied, Ordering::Relaxed);
    status.checkpoint_slot.store(applied, Ordering::Relaxed);
    let mut event_loop = event_loop;
    event_loop.refresh_cluster(true);
    let join = tokio::spawn(event_loop.run(parts.inbound, control_rx));
    Ok((
        Replica {
            id,
            submitter,
            stages: parts.stages,
            status,
            control: control_tx,
        },
        join,
    ))
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
            let message = format!("storage failed to make append {seq} durable: {e}");
            *durability.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(message);
            durability.notify.notify_one();
            return;
        }
        durability.durable_seq.fetch_max(seq, Ordering::Release);
        durability.notify.notify_one();
    }
}

struct EventLoop<S: StateMachine> {
    id: ReplicaId,
    start: Instant,
    replica: paxos_core::Replica,
    sm: S,
    storage: Arc<dyn ReplicaStorage>,
    transport: Arc<dyn Transport>,
    consumer: RequestConsumer<Submitted, Reply>,
    status: Arc<SharedStatus>,
    persist_tx: std::sync::mpsc::SyncSender<u64>,
    durability: Arc<Durability>,
    /// Persist tokens issued and not yet reported, with their storage
    /// sequence numbers, in order.
    outstanding: VecDeque<(PersistToken, u64)>,
    control_tx: mpsc::Sender<Control>,
    driver: DriverConfig,
    /// In slot order.
    proposals: VecDeque<Proposal>,
    /// A batch the core refused with WindowFull, retried first.
    stalled: Option<(Bytes, Vec<Completer<Reply>>, u64)>,
    outputs: Vec<Bytes>,
    send_buf: BytesMut,
    /// The last Accept encoded, keyed by (ballot, slot, commit index, value
    /// length), reused for the same Accept to the next follower.
    last_accept: Option<((Ballot, Slot, Slot, usize), Bytes)>,
    tag_counter: u64,
    boot_nonce: u64,
    is_leader: bool,
    last_checkpoint: Slot,
    checkpoint_running: bool,
    checkpoint_slot: Slot,
    /// Reused vector for draining completers.
    completers: Vec<Completer<Reply>>,
    stages: Arc<StageRecorder>,
    /// Slot proposed last, whose own Persist is not yet identified (stage timing).
    awaiting_persist: Option<Slot>,
    core_config: paxos_core::Config,
    seed: u64,
    reload_durable: Option<DurableReloader>,
    /// The core said it needs a checkpoint from a peer.
    needs_snapshot: bool,
    transfer: Option<Transfer>,
    transfer_rotation: usize,
    /// Configured member addresses.
    directory: Directory,
    /// Keeps the transport's peers in line with the membership (None: fixed).
    peer_directory: Option<Arc<dyn PeerDirectory>>,
    /// The state machine's address-book generation last acted on.
    book_generation: u64,
    /// The membership slot last acted on.
    membership_slot: Slot,
    /// This replica was a member of the last membership acted on.
    was_member: bool,
}

impl<S: StateMachine> EventLoop<S> {
    fn now(&self) -> Time {
        Time(self.start.elapsed().as_micros() as u64)
    }

    async fn run(
        mut self,
        mut inbound: Inbound,
        mut control_rx: mpsc::Receiver<Control>,
    ) -> anyhow::Result<()> {
        let timer = tokio::time::sleep(Duration::from_millis(1));
        tokio::pin!(timer);
        self.process_actions()?;
        loop {
            let deadline = match self.replica.next_timer() {
                Some(t) => self.start + Duration::from_micros(t.0),
                None => Instant::now() + Duration::from_millis(100),
            };
            timer
                .as_mut()
                .reset(tokio::time::Instant::from_std(deadline));
            let can_take_requests = !self.is_leader
                || (self.proposals.len() < self.driver.pipeline_window && self.stalled.is_none());
            // Unbiased: under sustained peer traffic a fixed order would
            // starve timers (heartbeats, elections), control messages and
            // client requests.
            tokio::select! {
                () = self.durability.notify.notified() => self.on_durable()?,
                msg = inbound.recv() => {
                    let Some((from, bytes)) = msg else { anyhow::bail!("transport closed") };
                    self.on_message(from, bytes);
                    let mut n = 0;
                    while n < INBOUND_BURST {
                        match inbound.try_recv() {
                            Ok((from, bytes)) => self.on_message(from, bytes),
                            Err(_) => break,
                        }
                        n += 1;
                    }
                }
                ctl = control_rx.recv() => {
                    match ctl {
                        None | Some(Control::Shutdown) => {
                            self.shutdown();
                            return Ok(());
                        }
                        Some(c) => self.on_control(c)?,
                    }
                }
                () = &mut timer => {
                    let now = self.now();
                    self.replica.handle_tick(now);
                    self.publish_status();
                    self.refresh_cluster(false);
                    if self.needs_snapshot {
                        self.request_checkpoint();
                    }
                }
                ready = self.consumer.ready(), if can_take_requests => {
                    if ready == paxos_pipeline::Readiness::Closed {
                        self.shutdown();
                        return Ok(());
                    }
                    self.take_requests();
                }
            }
            self.process_actions()?;
            // Proposals may have been freed by applies; fill the window again
            // without waiting for another wake-up.
            if self.is_leader && self.stalled.is_some() {
                self.retry_stalled();
                self.process_actions()?;
            }
        }
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
        let stamp = self.stages.stamp();
        while let Some(&(token, seq)) = self.outstanding.front() {
            if seq > durable {
                break;
            }
            self.outstanding.pop_front();
            if stamp != 0 {
                for p in self.proposals.iter_mut().filter(|p| p.token == Some(token)) {
                    p.durable_us = stamp;
                }
            }
            let now = self.now();
            self.replica.on_persisted(now, token);
        }
        Ok(())
    }

    fn on_message(&mut self, from: ReplicaId, bytes: Bytes) {
        if crate::xfer::is_xfer(&bytes) {
            match crate::xfer::decode(bytes) {
                Ok(msg) => self.on_xfer(from, msg),
                Err(e) => tracing::warn!(%from, error = %e, "dropping peer message"),
            }
            return;
        }
        match codec::decode(bytes) {
            Ok(msg) => {
                let now = self.now();
                self.replica.handle_message(now, from, msg);
            }
            Err(e) => tracing::warn!(%from, error = %e, "dropping undecodable peer message"),
        }
    }

    fn on_control(&mut self, c: Control) -> anyhow::Result<()> {
        match c {
            Control::Relinquish(successor, reply) => {
                let now = self.now();
                let result = match successor {
                    Some(to) => self.replica.relinquish_primary_to(now, to),
                    None => self.replica.relinquish_primary(now),
                };
                let _ = reply.send(result);
            }
            Control::AbandonChange(reply) => {
                let abandoned = self.replica.abandon_configuration_change();
                if let Some(m) = &abandoned {
                    tracing::warn!(target = %crate::membership::membership_text(m), "configuration change abandoned by an operator");
                }
                let _ = reply.send(abandoned);
            }
            Control::ChangeConfiguration(target, reply) => {
                let now = self.now();
                let result = self.replica.change_configuration(now, target.clone());
                match &result {
                    Ok(()) => {
                        tracing::info!(target = %crate::membership::membership_text(&target), "configuration change started")
                    }
                    Err(e) => tracing::warn!(error = %e, "configuration change refused"),
                }
                let _ = reply.send(result);
            }
            Control::CheckpointDone(slot) => {
                self.checkpoint_running = false;
                self.checkpoint_slot = slot;
                self.status.checkpoint_slot.store(slot, Ordering::Relaxed);
                let through = slot.saturating_sub(self.driver.compact_retain);
                if through > 0 {
                    self.replica.compact(through);
                }
                tracing::info!(slot, compacted_through = through, "checkpoint durable");
            }
            Control::CheckpointFailed(e) => {
                self.checkpoint_running = false;
                tracing::error!(error = %e, "checkpoint failed; will retry at the next interval");
            }
            Control::Shutdown => {}
        }
        Ok(())
    }

    fn shutdown(&mut self) {
        self.abort_pending();
        self.consumer.shutdown();
    }

    /// Ends every request this node holds: proposals in flight (their
    /// outcome is unknown) and a stalled batch (never proposed).
    fn abort_pending(&mut self) {
        for p in self.proposals.drain(..) {
            for c in p.completers {
                c.abort(AbortReason::Rejected(OUTCOME_UNKNOWN));
            }
        }
        if let Some((_, cs, _)) = self.stalled.take() {
            for c in cs {
                c.abort(AbortReason::NotPrimary { leader_hint: None });
            }
        }
    }

    /// Drains queued client requests into one batch and proposes it, or
    /// refuses them all when this replica is not the leader.
    fn take_requests(&mut self) {
        let limits = self.driver.batch_limits;
        if !self.is_leader {
            let hint = self.leader_hint();
            let mut aborted = 0usize;
            self.consumer.drain_batch_by(
                paxos_pipeline::DrainLimits {
                    max_count: 4096,
                    max_bytes: usize::MAX,
                    per_item_overhead: 0,
                },
                |r: &Request<Submitted, Reply>| r.payload.request.len(),
                |r| {
                    aborted += 1;
                    r.completer
                        .abort(AbortReason::NotPrimary { leader_hint: hint });
                },
            );
            return;
        }
        let mut builder = BatchBuilder::new(limits);
        let mut tag = [0u8; 21];
        tag[0] = OP_TAG;
        tag[1..5].copy_from_slice(&self.id.0.to_le_bytes());
        tag[5..13].copy_from_slice(&self.boot_nonce.to_le_bytes());
        tag[13..21].copy_from_slice(&self.tag_counter.to_le_bytes());
        self.tag_counter += 1;
        builder.push(&tag);
        let drain_limits = paxos_pipeline::DrainLimits {
            max_count: limits.max_requests.saturating_sub(1).max(1),
            max_bytes: limits.max_bytes.saturating_sub(builder.encoded_len()),
            per_item_overhead: 4,
        };
        let mut completers = std::mem::take(&mut self.completers);
        let mut oversized = Vec::new();
        let stages = Arc::clone(&self.stages);
        let batched_us = stages.stamp();
        let consumer = &mut self.consumer;
        // One stage-histogram lock for the whole drain, not one per request.
        stages.with_batch(|recorder| {
            consumer.drain_batch_by(
                drain_limits,
                |r: &Request<Submitted, Reply>| r.payload.request.len(),
                |r| {
                    if builder.fits(r.payload.request.len()) {
                        builder.push(&r.payload.request);
                        recorder.record(Point::Queued, r.payload.queued_us, batched_us);
                        completers.push(r.completer);
                    } else {
                        // Only a single request bigger than a whole batch gets
                        // here (drain respects the limits otherwise).
                        oversized.push(r.completer);
                    }
                },
            );
        });
        for c in oversized {
            c.abort(AbortReason::Rejected(TOO_LARGE));
        }
        if completers.is_empty() {
            self.completers = completers;
            return;
        }
        let batch = builder.finish();
        self.propose(batch, completers, batched_us);
    }

    fn propose(&mut self, batch: Bytes, completers: Vec<Completer<Reply>>, batched_us: u64) {
        let now = self.now();
        let n = completers.len() as u64;
        match self.replica.propose(now, Value::Requests(batch.clone())) {
            Ok(slot) => {
                self.status.proposed_batches.fetch_add(1, Ordering::Relaxed);
                self.status
                    .proposed_requests
                    .fetch_add(n, Ordering::Relaxed);
                self.proposals.push_back(Proposal {
                    slot,
                    value: batch,
                    completers,
                    batched_us,
                    accept_us: self.stages.stamp(),
                    durable_us: 0,
                    token: None,
                });
                if self.stages.is_enabled() {
                    self.awaiting_persist = Some(slot);
                }
                self.status
                    .in_flight
                    .store(self.proposals.len() as u64, Ordering::Relaxed);
            }
            // A Reconfigure is unchosen: nothing may be proposed above it
            // until it is, so wait exactly as for a full window.
            Err(ProposeError::WindowFull | ProposeError::ConfigChangeInFlight) => {
                self.stalled = Some((batch, completers, batched_us))
            }
            Err(ProposeError::NotLeader { leader }) => {
                let hint = leader.map(|l| l.0);
                for c in completers {
                    c.abort(AbortReason::NotPrimary { leader_hint: hint });
                }
            }
            Err(ProposeError::TooLarge { .. }) => {
                for c in completers {
                    c.abort(AbortReason::Rejected(TOO_LARGE));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "proposal refused");
                for c in completers {
                    c.abort(AbortReason::Rejected("ERR proposal refused by the replica"));
                }
            }
        }
    }

    fn retry_stalled(&mut self) {
        if self.proposals.len() >= self.driver.pipeline_window {
            return;
        }
        if let Some((batch, completers, batched_us)) = self.stalled.take() {
            self.propose(batch, completers, batched_us);
        }
    }

    fn leader_hint(&self) -> Option<u32> {
        let l = self.status.leader.load(Ordering::Relaxed);
        (l != 0).then_some(l)
    }

    fn process_actions(&mut self) -> anyhow::Result<()> {
        while let Some(action) = self.replica.poll_action() {
            match action {
                Action::Send { to, msg } => self.send(to, &msg),
                Action::Persist { token, entries } => {
                    if let Some(slot) = self.awaiting_persist {
                        let own_accept = entries.iter().any(
                            |e| matches!(e, paxos_core::PersistEntry::Accept(a) if a.slot == slot),
                        );
                        if own_accept {
                            self.awaiting_persist = None;
                            if let Some(p) =
                                self.proposals.iter_mut().rev().find(|p| p.slot == slot)
                            {
                                p.token = Some(token);
                            }
                        }
                    }
                    let seq = self.storage.append(&entries).map_err(|e| {
                        anyhow::anyhow!("storage append failed (stopping this replica): {e}")
                    })?;
                    self.outstanding.push_back((token, seq));
                    self.persist_tx
                        .send(seq)
                        .map_err(|_| anyhow::anyhow!("durability waiter stopped"))?;
                }
                Action::Apply {
                    slot,
                    ballot,
                    value,
                } => {
                    if let Value::Reconfigure(r) = &value {
                        self.record_reconfigure(slot, ballot, r);
                    }
                    self.apply(slot, value);
                    if self
                        .sm
                        .cluster()
                        .is_some_and(|c| c.generation() != self.book_generation)
                    {
                        self.refresh_cluster(true);
                    }
                }
                Action::StatusChanged(status) => self.on_status(status),
            }
        }
        Ok(())
    }

    fn send(&mut self, to: ReplicaId, msg: &Message) {
        let bytes = match msg {
            // The core sends the same Accept to every follower: encode it
            // (and copy its batch) once and share the bytes. A (ballot,
            // slot) pair names one value, so it identifies the encoding.
            Message::Accept(paxos_core::msg::Accept {
                ballot,
                slot,
                commit_index,
                value,
            }) => {
                let key = (*ballot, *slot, *commit_index, value_len(value));
                match &self.last_accept {
                    Some((k, encoded)) if *k == key => encoded.clone(),
                    _ => {
                        let encoded = self.encode(msg);
                        self.last_accept = Some((key, encoded.clone()));
                        encoded
                    }
                }
            }
            _ => self.encode(msg),
        };
        if let Err(e) = self.transport.send(to, bytes) {
            // Paxos tolerates loss; the core retransmits on its timers.
            tracing::debug!(%to, error = %e, "send dropped");
        }
    }

    fn encode(&mut self, msg: &Message) -> Bytes {
        codec::encode(msg, &mut self.send_buf);
        let bytes = self.send_buf.split().freeze();
        if self.send_buf.capacity() < 4096 {
            self.send_buf.reserve(64 * 1024);
        }
        bytes
    }

    fn apply(&mut self, slot: Slot, value: Value) {
        // Chosen is learned when the Apply action comes out of the core.
        let quorum_us = self.stages.stamp();
        self.outputs.clear();
        self.sm.apply(slot, &value, &mut self.outputs);
        let applied_us = self.stages.stamp();
        self.status.applied_index.store(slot, Ordering::Relaxed);
        let commit = self.status.commit_index.load(Ordering::Relaxed);
        if slot > commit {
            self.status.commit_index.store(slot, Ordering::Relaxed);
        }
        while let Some(front) = self.proposals.front() {
            if front.slot > slot {
                break;
            }
            let Some(p) = self.proposals.pop_front() else {
                break;
            };
            let ours = p.slot == slot && matches!(&value, Value::Requests(b) if *b == p.value);
            if ours && self.outputs.len() == p.completers.len() + 1 {
                // outputs[0] is the tag's (empty) output.
                if self.stages.is_enabled() {
                    let durable_us = if p.durable_us == 0 {
                        quorum_us
                    } else {
                        p.durable_us
                    };
                    // Every request of the decree shares these stamps: one
                    // lock for the whole batch, not four per request.
                    self.stages.record_decree(
                        [p.batched_us, p.accept_us, durable_us, quorum_us, applied_us],
                        p.completers.len() as u64,
                    );
                }
                for (c, out) in p.completers.into_iter().zip(self.outputs.drain(1..)) {
                    c.complete(Reply {
                        bytes: out,
                        applied_us,
                    });
                }
            } else {
                // Another value took the slot: ours was not chosen there. It
                // cannot be chosen elsewhere either, but say "unknown" rather
                // than lean on that.
                for c in p.completers {
                    c.abort(AbortReason::Rejected(OUTCOME_UNKNOWN));
                }
            }
        }
        self.status
            .in_flight
            .store(self.proposals.len() as u64, Ordering::Relaxed);
        self.maybe_checkpoint(slot);
    }

    fn on_status(&mut self, status: paxos_core::Status) {
        let was_leader = self.is_leader;
        self.is_leader = status.role == Role::Leader;
        let role = match status.role {
            Role::Leader => ROLE_LEADER,
            Role::Candidate => ROLE_CANDIDATE,
            Role::Follower => ROLE_FOLLOWER,
        };
        self.status.role.store(role, Ordering::Relaxed);
        self.status
            .leader
            .store(status.leader.map_or(0, |l| l.0), Ordering::Relaxed);
        self.status
            .ballot_round
            .store(status.ballot.round, Ordering::Relaxed);
        self.status
            .commit_index
            .store(status.commit_index, Ordering::Relaxed);
        if was_leader && !self.is_leader {
            for p in self.proposals.drain(..) {
                for c in p.completers {
                    c.abort(AbortReason::Rejected(OUTCOME_UNKNOWN));
                }
            }
            if let Some((_, cs, _)) = self.stalled.take() {
                let hint = status.leader.map(|l| l.0);
                for c in cs {
                    c.abort(AbortReason::NotPrimary { leader_hint: hint });
                }
            }
            self.status.in_flight.store(0, Ordering::Relaxed);
        }
        if was_leader != self.is_leader {
            tracing::info!(id = %self.id, leader = self.is_leader, ballot = %status.ballot, "primary status changed");
            self.sm.notify_status(self.is_leader);
        }
        if status.membership_slot != self.membership_slot {
            self.refresh_cluster(true);
        }
        if status.needs_snapshot && !self.needs_snapshot {
            tracing::warn!("behind the peers' retained log: fetching a checkpoint from a peer");
        }
        self.needs_snapshot = status.needs_snapshot;
    }

    fn publish_status(&mut self) {
        let s = self.replica.status();
        self.status
            .commit_index
            .store(s.commit_index, Ordering::Relaxed);
        self.status
            .ballot_round
            .store(s.ballot.round, Ordering::Relaxed);
    }

    /// Starts (or restarts a stalled) checkpoint transfer from a peer.
    fn request_checkpoint(&mut self) {
        if self.driver.checkpoints.is_none() || self.reload_durable.is_none() {
            return;
        }
        if self
            .transfer
            .as_ref()
            .is_some_and(|t| t.last_progress.elapsed() < XFER_STALL)
        {
            return;
        }
        let peers: Vec<ReplicaId> = self
            .replica
            .status()
            .membership
            .all()
            .filter(|&p| p != self.id)
            .collect();
        if peers.is_empty() {
            return;
        }
        // Prefer the leader; rotate through the others on retries.
        let leader = self.leader_hint().map(ReplicaId).filter(|&l| l != self.id);
        self.transfer_rotation += 1;
        let peer = match leader {
            Some(l) if self.transfer_rotation % 2 == 1 => l,
            _ => peers[self.transfer_rotation % peers.len()],
        };
        tracing::info!(%peer, "requesting a checkpoint");
        self.transfer = Some(Transfer {
            peer,
            slot: 0,
            offset: 0,
            writer: None,
            last_progress: Instant::now(),
        });
        let have = self.sm.applied_through();
        self.send_xfer(
            peer,
            &crate::xfer::XferMessage::Request {
                slot: 0,
                offset: 0,
                have,
            },
        );
    }

    fn send_xfer(&self, to: ReplicaId, msg: &crate::xfer::XferMessage) {
        if let Err(e) = self.transport.send(to, crate::xfer::encode(msg)) {
            tracing::debug!(%to, error = %e, "transfer message dropped");
        }
    }

    fn on_xfer(&mut self, from: ReplicaId, msg: crate::xfer::XferMessage) {
        use crate::xfer::XferMessage;
        match msg {
            XferMessage::Request { slot, offset, have } => {
                if slot == 0 && self.checkpoint_slot <= have {
                    // Our newest checkpoint would not help: the peer is past
                    // it but behind our retained log. Take a fresh one now;
                    // the peer asks again.
                    let applied = self.sm.applied_through();
                    if applied > have && !self.checkpoint_running {
                        self.start_checkpoint(applied);
                    }
                    self.send_xfer(from, &XferMessage::None { slot });
                    return;
                }
                let (Some(store), transport) =
                    (self.driver.checkpoints.clone(), Arc::clone(&self.transport))
                else {
                    self.send_xfer(from, &XferMessage::None { slot });
                    return;
                };
                // Disk reads off the loop; the transport is thread-safe.
                tokio::task::spawn_blocking(move || {
                    let reply =
                        serve_chunk(&store, slot, offset).unwrap_or(XferMessage::None { slot });
                    let _ = transport.send(from, crate::xfer::encode(&reply));
                });
            }
            XferMessage::None { .. } => {
                if self.transfer.as_ref().is_some_and(|t| t.peer == from) {
                    self.transfer = None;
                }
            }
            XferMessage::Chunk {
                meta,
                data_len,
                chunk,
            } => {
                if let Err(e) = self.on_chunk(from, meta, data_len, chunk) {
                    tracing::error!(%from, error = %e, "checkpoint transfer failed; will retry");
                    self.transfer = None;
                }
            }
        }
    }

    fn on_chunk(
        &mut self,
        from: ReplicaId,
        meta: CheckpointMeta,
        data_len: u64,
        chunk: paxos_log::checkpoint::Chunk,
    ) -> anyhow::Result<()> {
        let Some(store) = self.driver.checkpoints.clone() else {
            return Ok(());
        };
        let Some(t) = self.transfer.as_mut().filter(|t| t.peer == from) else {
            return Ok(());
        };
        if t.slot == 0 {
            anyhow::ensure!(
                meta.last_applied > self.sm.applied_through(),
                "peer's checkpoint {} is not ahead of ours",
                meta.last_applied
            );
            t.slot = meta.last_applied;
            t.writer = Some(store.begin(meta.clone())?);
        }
        if meta.last_applied != t.slot || chunk.offset != t.offset {
            return Ok(()); // a duplicate or a stale reply
        }
        anyhow::ensure!(
            !chunk.data.is_empty() || t.offset >= data_len,
            "empty chunk before the end"
        );
        let writer = t
            .writer
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("no writer"))?;
        writer.write_chunk(&chunk)?;
        t.offset += chunk.data.len() as u64;
        t.last_progress = Instant::now();
        if t.offset < data_len {
            let (peer, slot, offset) = (t.peer, t.slot, t.offset);
            let have = self.sm.applied_through();
            self.send_xfer(
                peer,
                &crate::xfer::XferMessage::Request { slot, offset, have },
            );
            return Ok(());
        }
        let Some(done) = self.transfer.take() else {
            return Ok(());
        };
        if let Some(w) = done.writer {
            w.finish()?;
        }
        self.install_checkpoint(&store)
    }

    /// Restores the state machine from the newest local checkpoint and
    /// restarts the core from the storage's durable state and that slot,
    /// without restarting the process.
    fn install_checkpoint(&mut self, store: &CheckpointStore) -> anyhow::Result<()> {
        let Some(reload) = self.reload_durable.clone() else {
            return Ok(());
        };
        let slot = load_newest_checkpoint(store, &mut self.sm)?;
        let durable = reload();
        let now = self.now();
        let mut core_config = self.core_config.clone();
        crate::membership::restart_membership(&mut core_config, self.sm.cluster());
        self.replica =
            paxos_core::Replica::try_new(core_config, durable, slot, self.seed ^ slot, now)
                .map_err(|e| anyhow::anyhow!("restarting the core: {e}"))?;
        // Tokens of the old core instance are meaningless to the new one.
        self.outstanding.clear();
        self.abort_pending();
        self.is_leader = false;
        self.needs_snapshot = false;
        self.last_checkpoint = slot;
        self.checkpoint_slot = slot;
        self.status.role.store(ROLE_FOLLOWER, Ordering::Relaxed);
        self.status.applied_index.store(slot, Ordering::Relaxed);
        self.status.checkpoint_slot.store(slot, Ordering::Relaxed);
        self.status.in_flight.store(0, Ordering::Relaxed);
        tracing::info!(
            slot,
            "installed a checkpoint from a peer; the core restarted from it"
        );
        self.membership_slot = u64::MAX;
        self.refresh_cluster(true);
        Ok(())
    }

    /// Notes an applied `Reconfigure` in the state machine, so checkpoints
    /// from now on restart the core in the membership it installed.
    fn record_reconfigure(&mut self, slot: Slot, ballot: Ballot, r: &Reconfiguration) {
        if let Some(c) = self.sm.cluster_mut() {
            c.apply_reconfigure(slot, ballot, r);
        }
    }

    /// Republishes the cluster view; with `changed`, also reacts to a new
    /// membership or address book: the transport's peer set follows, and a
    /// removal of this replica is logged.
    fn refresh_cluster(&mut self, changed: bool) {
        let now = self.now();
        let status = self.replica.status();
        let generation = self.sm.cluster().map_or(0, |c| c.generation());
        let old = Arc::clone(
            &self
                .status
                .cluster
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let book_changed = generation != self.book_generation || old.book.is_empty();
        let membership_changed = status.membership_slot != self.membership_slot;
        let book = if book_changed {
            let empty = std::collections::BTreeMap::new();
            let replicated = self.sm.cluster().map_or(&empty, |c| c.book());
            Arc::new(self.directory.merged(replicated))
        } else {
            Arc::clone(&old.book)
        };
        // A core started from a checkpoint reports slot 0 for the
        // membership it was given; the state machine knows its slot.
        let membership_slot = match self.sm.cluster().and_then(|c| c.last_reconfigure()) {
            Some(r) if status.membership_slot == 0 && r.membership == status.membership => r.slot,
            _ => status.membership_slot,
        };
        let member = status.membership.contains(self.id);
        // A restarted node that is not a member was removed, unless it was
        // provisioned to join.
        let removed = !member && (old.removed || self.was_member || !self.directory.joining);
        if removed
            && status
                .leader
                .is_none_or(|l| l == self.id || !status.membership.contains(l))
        {
            // Nobody tells a removed replica who leads now: send clients to
            // a voter, which redirects them on if it does not lead.
            if let Some(v) = status.membership.voters.first() {
                self.status.leader.store(v.0, Ordering::Relaxed);
            }
        }
        if changed && (book_changed || membership_changed) {
            if membership_changed {
                tracing::info!(
                    slot = membership_slot,
                    membership = %crate::membership::membership_text(&status.membership),
                    "membership in force"
                );
                if removed {
                    tracing::warn!(
                        id = %self.id,
                        "this replica was REMOVED from the cluster: it takes no part any more and answers clients with redirects; stop it, or wipe its data and add it again"
                    );
                }
            }
            if let Some(dir) = &self.peer_directory {
                dir.set_peers(
                    &self
                        .directory
                        .wanted_peers(self.id, &status.membership, &book),
                );
            }
            self.book_generation = generation;
            self.membership_slot = status.membership_slot;
            self.was_member = member;
        }
        let view = ClusterView {
            peers: self.replica.peer_status(now),
            pending: self.replica.pending_configuration().cloned(),
            membership: status.membership,
            membership_slot,
            book,
            removed,
        };
        *self
            .status
            .cluster
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(view);
    }

    fn maybe_checkpoint(&mut self, slot: Slot) {
        let every = self.driver.checkpoint_every;
        if self.driver.checkpoints.is_none() {
            return;
        }
        if every == 0 || self.checkpoint_running || slot < self.last_checkpoint + every {
            return;
        }
        self.start_checkpoint(slot);
    }

    /// Snapshots the state machine (which is at `slot`) and writes it in
    /// the background.
    fn start_checkpoint(&mut self, slot: Slot) {
        let Some(store) = self.driver.checkpoints.clone() else {
            return;
        };
        self.last_checkpoint = slot;
        self.checkpoint_running = true;
        // Serializing pauses the loop for O(state); writing and fsync run in
        // the background so execution goes on meanwhile.
        let snapshot = self.sm.snapshot();
        let status = self.replica.status();
        let meta = CheckpointMeta {
            last_applied: slot,
            ballot: status.ballot,
            membership: status.membership,
        };
        let control = self.control_tx.clone();
        let spawned = std::thread::Builder::new()
            .name("checkpoint".into())
            .spawn(move || {
                let msg = match write_checkpoint(&store, meta, &snapshot) {
                    Ok(slot) => Control::CheckpointDone(slot),
                    Err(e) => Control::CheckpointFailed(e.to_string()),
                };
                let _ = control.blocking_send(msg);
            });
        if let Err(e) = spawned {
            self.checkpoint_running = false;
            tracing::error!(error = %e, "cannot start checkpoint thread");
        }
    }
}

/// Reads one chunk of checkpoint `slot` (0: the newest) for a peer.
fn serve_chunk(
    store: &CheckpointStore,
    slot: Slot,
    offset: u64,
) -> Option<crate::xfer::XferMessage> {
    let slots = store.list().ok()?;
    let slot = if slot == 0 {
        *slots.last()?
    } else {
        slots.into_iter().find(|&s| s == slot)?
    };
    let reader = store.open(slot).ok()?;
    let info = reader.info().clone();
    let len = usize::try_from(info.data_len.saturating_sub(offset))
        .unwrap_or(usize::MAX)
        .min(crate::xfer::CHUNK_BYTES);
    let chunk = store.read_chunk(slot, offset, len).ok()?;
    Some(crate::xfer::XferMessage::Chunk {
        meta: info.meta,
        data_len: info.data_len,
        chunk,
    })
}

/// Number of checkpoints kept on disk (the newest may turn out unreadable).
pub const CHECKPOINTS_KEPT: usize = 2;

/// Opens the checkpoint store in `dir` (paxos-log's format: per-block
/// CRC32C, temp file + fsync + verify + rename).
pub fn open_checkpoints(dir: &Path) -> Result<CheckpointStore, StorageError> {
    CheckpointStore::new(dir, CHECKPOINTS_KEPT)
}

/// Writes one checkpoint of `snapshot` (which covers slots through
/// `meta.last_applied`) durably.
pub fn write_checkpoint(
    store: &CheckpointStore,
    meta: CheckpointMeta,
    snapshot: &[u8],
) -> Result<Slot, StorageError> {
    let slot = meta.last_applied;
    let mut writer = store.begin(meta)?;
    writer.write(snapshot)?;
    writer.finish()?;
    Ok(slot)
}

/// Restores `sm` from the newest checkpoint that verifies (newer corrupt
/// ones are skipped and reported by the store). Returns the slot it covers
/// (0: none). A checkpoint whose content does not restore is an error:
/// silently starting from an older state would replay a log that may
/// already be truncated past it.
pub fn load_newest_checkpoint<S: StateMachine>(
    store: &CheckpointStore,
    sm: &mut S,
) -> anyhow::Result<Slot> {
    let Some(latest) = store.latest()? else {
        return Ok(0);
    };
    for e in &latest.skipped {
        tracing::error!(error = %e, "corrupt checkpoint skipped; an older one is used");
    }
    let info = latest.reader.info().clone();
    let mut bytes = Vec::with_capacity(usize::try_from(info.data_len).unwrap_or(0).min(1 << 30));
    latest.reader.copy_to(&mut bytes)?;
    sm.restore(&bytes)
        .map_err(|e| anyhow::anyhow!("checkpoint {} does not restore: {e}", info.path.display()))?;
    anyhow::ensure!(
        sm.applied_through() == info.meta.last_applied,
        "checkpoint {} claims slot {} but its content is at slot {}",
        info.path.display(),
        info.meta.last_applied,
        sm.applied_through()
    );
    tracing::info!(slot = info.meta.last_applied, path = %info.path.display(), "loaded checkpoint");
    Ok(info.meta.last_applied)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::KvStore;

    #[test]
    fn checkpoints_roundtrip_through_the_log_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_checkpoints(dir.path()).unwrap();
        let mut fresh = KvStore::new();
        assert_eq!(
            load_newest_checkpoint(&store, &mut fresh).unwrap(),
            0,
            "no checkpoint yet"
        );
        let mut sm = KvStore::new();
        let mut outs = Vec::new();
        let meta = |slot| CheckpointMeta {
            last_applied: slot,
            ballot: paxos_core::Ballot::new(1, ReplicaId(1)),
            membership: paxos_core::Membership::with_voters(vec![ReplicaId(1)]),
        };
        for slot in 1..=3 {
            let mut req = BytesMut::new();
            crate::kv::encode_command(
                &[Bytes::from_static(b"INCR"), Bytes::from_static(b"n")],
                &mut req,
            )
            .unwrap();
            let batch = paxos_core::batch::encode([&req[..]]);
            sm.apply(slot, &Value::Requests(batch), &mut outs);
            write_checkpoint(&store, meta(slot), &sm.snapshot()).unwrap();
        }
        assert_eq!(
            store.list().unwrap().len(),
            CHECKPOINTS_KEPT,
            "old checkpoints pruned"
        );
        assert_eq!(load_newest_checkpoint(&store, &mut fresh).unwrap(), 3);
        assert_eq!(fresh.get(b"n").unwrap(), b"3");
        // A checkpoint whose name says one slot and content another is refused.
        write_checkpoint(&store, meta(9), &sm.snapshot()).unwrap();
        assert!(load_newest_checkpoint(&store, &mut KvStore::new()).is_err());
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
