//! One simulated run: N real replicas — each a `paxos_node::Node` over the
//! real `KvStore`, with paxos-log's real log and checkpoint store on a
//! simulated disk — with simulated network, clients and time, driven by a
//! discrete-event queue from one seed.
//!
//! This module holds the run itself (configuration, report, events, the
//! main loop, clients and the liveness phase); `replica.rs` starts,
//! crashes and drives replicas, `network.rs` carries messages and
//! `faults.rs` injects faults.

use crate::checker::{Checker, Failure, FailureKind};
use crate::client::{Client, History, RequestState};
use crate::digest::Fnv64;
use crate::params::FaultParams;
use crate::reads::{ClockDrift, LogFreeRead, ReadParams, SimReadMode};
use crate::replica::Replica;
use crate::state_machine::{SimKv, StateMachineBug};
use bytes::Bytes;
use paxos_core::{Membership, ReplicaId, Time};
use paxos_kv::lincheck::{self, OpKind, OpOutcome, Operation, Verdict};
use paxos_node::{ReadConsistency, RequestKind};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::cell::RefCell;
use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BinaryHeap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// The node type the simulator runs: the real KV state machine (possibly
/// with a planted bug, see [`crate::state_machine`]), with attempt ids as
/// completion handles.
pub type SimNode = paxos_node::Node<SimKv, u64>;

/// Called on every node the simulator creates (at start, at each restart),
/// before it handles anything. Tests use it to plant bugs.
pub type NodeHook = Arc<dyn Fn(&mut SimNode) + Send + Sync>;

/// Default number of events in the fault phase of one run.
pub const DEFAULT_STEPS: u64 = 15_000;

/// Search budget of the linearizability check, per key.
const LINCHECK_BUDGET: u64 = 2_000_000;

/// What to run.
#[derive(Clone)]
pub struct SimConfig {
    /// The seed that determines the whole run.
    pub seed: u64,
    /// Cluster size (3 or 5); `None` lets the seed choose.
    pub replicas: Option<usize>,
    /// Events processed in the fault phase.
    pub steps: u64,
    /// Simulated time the healed cluster gets to elect a leader and commit
    /// new requests everywhere.
    pub liveness_timeout_us: u64,
    /// New requests each client must get acknowledged after the heal.
    pub liveness_probes: u64,
    /// Hard cap on events in the liveness phase (guards against event storms).
    pub liveness_max_events: u64,
    /// Print every event.
    pub verbose: bool,
    /// Applied to every new node.
    pub hook: Option<NodeHook>,
    /// Whether membership changes (and the spare replicas they use) are
    /// part of the run; `None` lets the seed choose.
    pub reconfigure: Option<bool>,
    /// A bug planted in every replica's state machine (teeth tests).
    pub state_machine_bug: Option<StateMachineBug>,
    /// A planted driver bug: start a replica whose storage lost acknowledged
    /// data as if nothing was lost (no repair). Teeth test of the disk
    /// faults.
    pub ignore_storage_damage: bool,
    /// How `GET`s are served; `None` lets the seed choose (see `reads.rs`).
    pub reads: Option<SimReadMode>,
    /// Whether the replicas' clocks keep to their configured drift bound.
    pub clock_drift: ClockDrift,
}

impl SimConfig {
    /// Defaults for `seed`.
    pub fn new(seed: u64) -> SimConfig {
        SimConfig {
            seed,
            replicas: None,
            steps: DEFAULT_STEPS,
            liveness_timeout_us: 10_000_000,
            liveness_probes: 2,
            liveness_max_events: 400_000,
            verbose: false,
            hook: None,
            reconfigure: None,
            state_machine_bug: None,
            ignore_storage_damage: false,
            reads: None,
            clock_drift: ClockDrift::WithinBound,
        }
    }
}

impl std::fmt::Debug for SimConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimConfig")
            .field("seed", &self.seed)
            .field("replicas", &self.replicas)
            .field("steps", &self.steps)
            .field("liveness_timeout_us", &self.liveness_timeout_us)
            .field("hook", &self.hook.is_some())
            .field("reconfigure", &self.reconfigure)
            .field("reads", &self.reads)
            .field("clock_drift", &self.clock_drift)
            .finish()
    }
}

/// How many faults of each kind a run injected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Replica crashes.
    pub crashes: u64,
    /// Crashes that hit a replica with appends not yet synced.
    pub crashes_with_pending_persists: u64,
    /// Crashes in the middle of a sync (a torn write).
    pub torn_persists: u64,
    /// Replica restarts.
    pub restarts: u64,
    /// Random two-group partitions.
    pub partitions: u64,
    /// Leader isolations.
    pub leader_isolations: u64,
    /// One-way link cuts.
    pub one_way_cuts: u64,
    /// Leader step-down requests.
    pub relinquishes: u64,
    /// CanBecomePrimary toggles.
    pub vetoes: u64,
    /// Network weather changes.
    pub weather_changes: u64,
    /// Messages lost (randomly or to a partition).
    pub messages_dropped: u64,
    /// Messages duplicated.
    pub messages_duplicated: u64,
    /// Old messages delivered again, much later.
    pub messages_replayed: u64,
    /// Corrupted copies fed to the decoder.
    pub codec_fuzzed: u64,
    /// Checkpoints written.
    pub checkpoints: u64,
    /// Checkpoints installed from a peer (state transfers).
    pub state_transfers: u64,
    /// Catch-up chunks a replica served from its storage (decrees its core
    /// no longer held in memory, read back from the log on disk or in
    /// persistent memory).
    pub fetches_served_from_disk: u64,
    /// Process pauses.
    pub pauses: u64,
    /// Membership changes an operator asked for.
    pub reconfigurations_requested: u64,
    /// Membership changes that took effect (target chosen).
    pub reconfigurations_completed: u64,
    /// `change_configuration` calls (an operator retries until in force).
    pub reconfiguration_calls: u64,
    /// Spare replicas started to join.
    pub spares_started: u64,
    /// `Reconfigure` decrees chosen that lead to no membership the operator
    /// wants now (neither its target nor a learner step towards it): a
    /// replica resumed an old, abandoned change. Not a safety violation;
    /// counted so that it shows.
    pub unrequested_membership_changes: u64,
    /// Runs whose operator still waited for a change when the liveness
    /// phase began (it must then complete in the healed cluster).
    pub changes_pending_at_heal: u64,
    /// Client operations checked for linearizability.
    pub operations_checked: u64,
    /// Replica starts whose log is paxos-nvm's, on simulated persistent
    /// memory (the others use paxos-log's file log).
    pub pm_log_starts: u64,
    /// Media faults planted on the faulty replica's disk or memory: bits
    /// flipped in its newest log records, sectors made unreadable.
    pub media_corruptions: u64,
    /// Starts that found damaged storage.
    pub damaged_starts: u64,
    /// Repairs completed after damage.
    pub repairs_completed: u64,
    /// Leader changes: a replica reported `Leader` under a ballot above the
    /// last reported leader's.
    pub leader_changes: u64,
    /// Leader changes that no fault forced (see `stability.rs`); each one
    /// fails the run.
    pub unforced_leader_changes: u64,
    /// Linearizable reads answered without the log (`submit_read`); they
    /// are in the history the linearizability checker checks.
    pub log_free_reads: u64,
    /// Follower reads answered and checked for bounded staleness.
    pub follower_reads: u64,
    /// Reads refused or redirected (retried).
    pub reads_refused: u64,
}

impl FaultCounts {
    /// Injected faults of all kinds (messages included).
    pub fn total(&self) -> u64 {
        self.crashes
            + self.torn_persists
            + self.partitions
            + self.leader_isolations
            + self.one_way_cuts
            + self.relinquishes
            + self.vetoes
            + self.weather_changes
            + self.messages_dropped
            + self.messages_duplicated
            + self.messages_replayed
            + self.codec_fuzzed
            + self.pauses
            + self.reconfigurations_requested
            + self.media_corruptions
    }

    /// Adds another run's counts.
    pub fn add(&mut self, o: &FaultCounts) {
        self.crashes += o.crashes;
        self.crashes_with_pending_persists += o.crashes_with_pending_persists;
        self.torn_persists += o.torn_persists;
        self.restarts += o.restarts;
        self.partitions += o.partitions;
        self.leader_isolations += o.leader_isolations;
        self.one_way_cuts += o.one_way_cuts;
        self.relinquishes += o.relinquishes;
        self.vetoes += o.vetoes;
        self.weather_changes += o.weather_changes;
        self.messages_dropped += o.messages_dropped;
        self.messages_duplicated += o.messages_duplicated;
        self.messages_replayed += o.messages_replayed;
        self.codec_fuzzed += o.codec_fuzzed;
        self.checkpoints += o.checkpoints;
        self.state_transfers += o.state_transfers;
        self.fetches_served_from_disk += o.fetches_served_from_disk;
        self.pauses += o.pauses;
        self.reconfigurations_requested += o.reconfigurations_requested;
        self.reconfigurations_completed += o.reconfigurations_completed;
        self.reconfiguration_calls += o.reconfiguration_calls;
        self.spares_started += o.spares_started;
        self.unrequested_membership_changes += o.unrequested_membership_changes;
        self.changes_pending_at_heal += o.changes_pending_at_heal;
        self.operations_checked += o.operations_checked;
        self.pm_log_starts += o.pm_log_starts;
        self.media_corruptions += o.media_corruptions;
        self.damaged_starts += o.damaged_starts;
        self.repairs_completed += o.repairs_completed;
        self.leader_changes += o.leader_changes;
        self.unforced_leader_changes += o.unforced_leader_changes;
        self.log_free_reads += o.log_free_reads;
        self.follower_reads += o.follower_reads;
        self.reads_refused += o.reads_refused;
    }
}

/// The outcome of one run.
#[derive(Clone, Debug)]
pub struct RunReport {
    /// The seed.
    pub seed: u64,
    /// Cluster size (initial voters; spares not counted).
    pub replicas: usize,
    /// Replicas in the pool: the initial voters plus the spares that
    /// membership changes may add.
    pub pool: usize,
    /// Events processed (both phases).
    pub steps: u64,
    /// Distinct slots applied anywhere.
    pub commits: u64,
    /// Requests acknowledged to clients through the log (reads that skip
    /// it are counted in [`FaultCounts::log_free_reads`] and
    /// [`FaultCounts::follower_reads`]).
    pub acked_requests: u64,
    /// Faults injected.
    pub faults: FaultCounts,
    /// Hash of every processed event and every replica output; equal for
    /// two runs of one seed.
    pub digest: u64,
    /// Simulated time at the end.
    pub sim_time: Time,
    /// The seed's fault mix.
    pub params: FaultParams,
    /// The seed's read path and clocks.
    pub reads: ReadParams,
    /// The first violated property, if any, and when.
    pub failure: Option<(Failure, Time)>,
}

#[derive(Hash)]
pub(crate) enum EventKind {
    Deliver {
        from: usize,
        to: usize,
        bytes: Bytes,
    },
    /// A replica's disk finished the sync it was given.
    SyncDone {
        node: usize,
        incarnation: u64,
    },
    /// A replica's background checkpoint write is due.
    CheckpointDone {
        node: usize,
        incarnation: u64,
    },
    /// A received checkpoint's final verify-and-publish is due.
    TransferFinish {
        node: usize,
        incarnation: u64,
    },
    /// A replica's oldest storage read for a peer's catch-up is done.
    DecreesRead {
        node: usize,
        incarnation: u64,
    },
    Timer {
        node: usize,
        incarnation: u64,
        generation: u64,
    },
    ClientTick {
        client: usize,
    },
    Chaos,
    Restart {
        node: usize,
        incarnation: u64,
    },
    Heal {
        partition: u64,
    },
    /// The operator (re)asks the leader for its membership change.
    Operator,
}

impl EventKind {
    /// The replica the event is for, if any (its pauses hold it back).
    fn target(&self) -> Option<usize> {
        match self {
            EventKind::Deliver { to, .. } => Some(*to),
            EventKind::SyncDone { node, .. }
            | EventKind::CheckpointDone { node, .. }
            | EventKind::TransferFinish { node, .. }
            | EventKind::DecreesRead { node, .. }
            | EventKind::Timer { node, .. } => Some(*node),
            _ => None,
        }
    }
}

struct Event {
    at: Time,
    seq: u64,
    kind: EventKind,
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Event {}
impl PartialOrd for Event {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Event {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// An operator's membership change: asked of whoever leads, again and
/// again, until the target is chosen.
pub(crate) struct OperatorChange {
    pub(crate) target: Membership,
    pub(crate) since: Time,
}

#[derive(PartialEq, Eq)]
pub(crate) enum Phase {
    Faults,
    Liveness { deadline: Time, events_left: u64 },
}

/// Retry a request that was not acknowledged within this simulated time.
pub(crate) const CLIENT_RETRY_US: u64 = 500_000;
const CLIENTS: usize = 3;

pub(crate) struct Sim {
    pub(crate) cfg: SimConfig,
    pub(crate) params: FaultParams,
    pub(crate) rng: SmallRng,
    pub(crate) now: Time,
    queue: BinaryHeap<Reverse<Event>>,
    next_seq: u64,
    pub(crate) nodes: Vec<Replica>,
    pub(crate) net: crate::network::Net,
    pub(crate) clients: Vec<Client>,
    pub(crate) history: History,
    pub(crate) checker: Checker,
    pub(crate) digest: Fnv64,
    pub(crate) faults: FaultCounts,
    steps: u64,
    pub(crate) phase: Phase,
    /// Size of the initial voter set.
    pub(crate) initial_voters: usize,
    /// The membership change in progress, if any.
    pub(crate) operator: Option<OperatorChange>,
    /// The replica whose medium is faulty, if any (at most one).
    pub(crate) faulty: Option<usize>,
    /// The leader-stability checker.
    pub(crate) stability: crate::stability::Stability,
    /// The seed's read path and clocks.
    pub(crate) reads: ReadParams,
    /// The state after each slot, for follower reads.
    pub(crate) read_reference: crate::reads::ReadReference,
    /// Attempts that are reads skipping the log.
    pub(crate) log_free: BTreeMap<u64, crate::reads::LogFreeRead>,
}

thread_local! {
    /// While a run is in progress on this thread: the message of the first
    /// panic, captured by the hook instead of printed.
    static PANIC_CAPTURE: RefCell<Option<Option<String>>> = const { RefCell::new(None) };
}

/// Installs (once per process) a panic hook that captures the message and
/// location of panics raised inside a simulator run, so that failures are
/// reported once, with their seed, instead of scrolling by. Panics outside a
/// run go to the previous hook unchanged.
pub fn install_panic_capture() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let captured = PANIC_CAPTURE.with(|c| match c.borrow_mut().as_mut() {
                Some(slot) => {
                    if slot.is_none() {
                        *slot = Some(info.to_string());
                    }
                    true
                }
                None => false,
            });
            if !captured {
                previous(info);
            }
        }));
    });
}

/// Runs one seed to completion and reports what happened. Never panics on a
/// replica failure: panics inside the replicas are caught and reported as
/// [`FailureKind::Panic`].
pub fn run(cfg: &SimConfig) -> RunReport {
    install_panic_capture();
    let mut sim = Sim::new(cfg.clone());
    PANIC_CAPTURE.with(|c| *c.borrow_mut() = Some(None));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sim.run_phases()));
    let captured = PANIC_CAPTURE.with(|c| c.borrow_mut().take()).flatten();
    let failure = match outcome {
        Ok(Ok(())) => None,
        Ok(Err(f)) => Some(f),
        Err(payload) => {
            let msg = captured.unwrap_or_else(|| {
                payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "non-string panic payload".to_string())
            });
            Some(Failure::new(FailureKind::Panic, msg))
        }
    };
    RunReport {
        seed: cfg.seed,
        replicas: sim.initial_voters,
        pool: sim.nodes.len(),
        steps: sim.steps,
        commits: sim.checker.chosen_slots(),
        acked_requests: sim.checker.acked_requests(),
        faults: sim.faults,
        digest: sim.digest.finish(),
        sim_time: sim.now,
        params: sim.params.clone(),
        reads: sim.reads.clone(),
        failure: failure.map(|f| (f, sim.now)),
    }
}

impl Sim {
    fn new(cfg: SimConfig) -> Sim {
        let mut rng = SmallRng::seed_from_u64(cfg.seed);
        // Always draw the size so that `--replicas N` equal to the drawn size
        // reproduces the seed's default run exactly.
        let drawn = if rng.gen_bool(0.5) { 3 } else { 5 };
        let n = cfg.replicas.unwrap_or(drawn);
        let mut params = FaultParams::sample(&mut rng);
        let membership = Membership::with_voters((1..=n as u32).map(ReplicaId).collect());
        let timing = crate::replica::Timing::draw(&mut rng, &params);
        let mut reconfig_rng = SmallRng::seed_from_u64(cfg.seed ^ 0x7265_636f_6e66_6967);
        params.sample_reconfiguration(&mut reconfig_rng, cfg.reconfigure);
        let mut media_rng = SmallRng::seed_from_u64(cfg.seed ^ 0x6d65_6469_6100_0000);
        params.sample_media_faults(&mut media_rng);
        let faulty = params.faulty_medium.then(|| media_rng.gen_range(0..n));
        // Two spares beyond the initial voters, for changes to draw from.
        let pool = if params.weights.reconfigure > 0 {
            n + 2
        } else {
            n
        };
        let reads = ReadParams::draw(cfg.seed, pool, cfg.reads, cfg.clock_drift);
        let mut nodes: Vec<Replica> = (0..pool)
            .map(|i| {
                let media_seed =
                    (cfg.seed ^ (0xD15C << 16) ^ i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                let faulty_here = faulty == Some(i);
                let disk = crate::replica::disk_for(&params, media_seed, faulty_here);
                // About one replica in four keeps its log in persistent
                // memory (paxos-nvm) instead of the file log.
                let pm = (media_seed >> 62 == 0)
                    .then(|| crate::replica::pm_for(media_seed, faulty_here));
                Replica::new(
                    ReplicaId(i as u32 + 1),
                    membership.clone(),
                    i < n,
                    timing,
                    disk,
                    pm,
                )
            })
            .collect();
        for (i, r) in nodes.iter_mut().enumerate() {
            r.clock = crate::reads::Clock::new(reads.rates_ppm[i]);
            r.read_mode = reads.mode.node_mode(reads.max_drift_ppm);
        }
        let ids = nodes.iter().map(|r| r.id).collect();
        let stability = crate::stability::Stability::new(nodes.len(), 2 * timing.election_min_us);
        let clients = (0..CLIENTS)
            .map(|c| Client::new(c as u32 + 1, rng.gen_range(0..n)))
            .collect();
        Sim {
            cfg,
            params,
            rng,
            now: Time(0),
            queue: BinaryHeap::new(),
            next_seq: 0,
            nodes,
            net: crate::network::Net::default(),
            clients,
            history: History::default(),
            checker: Checker::new(membership, ids),
            digest: Fnv64::new(),
            faults: FaultCounts::default(),
            steps: 0,
            phase: Phase::Faults,
            initial_voters: n,
            operator: None,
            faulty,
            stability,
            reads,
            read_reference: crate::reads::ReadReference::default(),
            log_free: BTreeMap::new(),
        }
    }

    pub(crate) fn schedule(&mut self, at: Time, kind: EventKind) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queue.push(Reverse(Event { at, seq, kind }));
    }

    pub(crate) fn trace(&self, what: impl FnOnce() -> String) {
        if self.cfg.verbose {
            println!("{:>12} {}", self.now.0, what());
        }
    }

    fn run_phases(&mut self) -> Result<(), Failure> {
        self.trace(|| {
            let t = self.nodes[0].timing;
            format!(
                "seed {} with {} replicas; timing {t:?}; faults: {:?}",
                self.cfg.seed,
                self.nodes.len(),
                self.params
            )
        });
        for i in 0..self.initial_voters {
            self.start_replica(i)?;
        }
        for c in 0..self.clients.len() {
            let at = self
                .now
                .plus_micros(self.rng.gen_range(0..=self.params.client_interval_us));
            self.schedule(at, EventKind::ClientTick { client: c });
        }
        let at = self.now.plus_micros(self.chaos_delay());
        self.schedule(at, EventKind::Chaos);
        while self.steps < self.cfg.steps {
            self.step()?;
        }
        self.heal()?;
        loop {
            if self.liveness_reached() {
                self.trace(|| "liveness reached".to_string());
                return self.check_history();
            }
            let Phase::Liveness {
                deadline,
                events_left,
                ..
            } = &mut self.phase
            else {
                unreachable!("heal() entered the liveness phase");
            };
            if self.now > *deadline || *events_left == 0 {
                return Err(self.liveness_failure());
            }
            *events_left -= 1;
            self.step()?;
        }
    }

    fn step(&mut self) -> Result<(), Failure> {
        let Some(Reverse(ev)) = self.queue.pop() else {
            return Err(Failure::new(FailureKind::Liveness, "event queue ran empty"));
        };
        debug_assert!(ev.at >= self.now, "time never goes backwards");
        self.now = ev.at;
        self.steps += 1;
        ev.at.hash(&mut self.digest);
        ev.kind.hash(&mut self.digest);
        if let Some(t) = ev.kind.target() {
            let resume = self.nodes[t].paused_until;
            if resume > self.now {
                // The process is frozen: the event waits for it, in order.
                self.schedule(resume, ev.kind);
                return Ok(());
            }
        }
        match ev.kind {
            EventKind::Deliver { from, to, bytes } => self.deliver(from, to, bytes),
            EventKind::SyncDone { node, incarnation } => self.sync_done(node, incarnation),
            EventKind::CheckpointDone { node, incarnation } => {
                self.checkpoint_done(node, incarnation)
            }
            EventKind::TransferFinish { node, incarnation } => {
                self.transfer_finish(node, incarnation)
            }
            EventKind::DecreesRead { node, incarnation } => self.decrees_read(node, incarnation),
            EventKind::Timer {
                node,
                incarnation,
                generation,
            } => self.timer(node, incarnation, generation),
            EventKind::ClientTick { client } => self.client_tick(client),
            EventKind::Chaos => self.chaos(),
            EventKind::Restart { node, incarnation } => {
                if self.nodes[node].run.is_none() && self.nodes[node].incarnation == incarnation {
                    self.start_replica(node)?;
                }
                Ok(())
            }
            EventKind::Operator => self.operator_ask(),
            EventKind::Heal { partition } => {
                if partition == self.net.partition_id {
                    self.trace(|| "network healed".to_string());
                    self.note_cuts();
                    self.net.groups = None;
                    self.net.blocked.clear();
                }
                Ok(())
            }
        }
    }

    pub(crate) fn index_of(&self, id: ReplicaId) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == id)
    }

    // ----- clients --------------------------------------------------------

    fn client_tick(&mut self, k: usize) -> Result<(), Failure> {
        let now = self.now;
        let n = self.nodes.len();
        let interval = self.params.client_interval_us;
        let next = now.plus_micros(self.rng.gen_range(interval / 2..=interval + interval / 2));
        self.schedule(next, EventKind::ClientTick { client: k });

        // Attempts that timed out stay "outcome unknown" in the history. A
        // client that waited in vain tries another replica next, as real
        // clients do (a leader cut off from its peers answers nothing, but
        // may not know it is deposed).
        // Now and then a client also asks a random replica who leads (a
        // reconnect, a load balancer): clients then spread over replicas
        // that disagree about the leader, as they do in a failover.
        if !self.clients[k].expire(now.0).is_empty() || self.rng.gen_bool(0.05) {
            self.clients[k].believed_leader = self.rng.gen_range(0..n);
        }
        let outstanding = self.params.client_outstanding;
        for op in self.clients[k].fill(&mut self.rng, outstanding) {
            self.checker.note_issued(op.request.clone());
            if op.kind != OpKind::Read {
                self.read_reference
                    .note_write(op.request.clone(), op.key.clone());
            }
        }
        let seqs = self.clients[k].queued(self.params.client_batch);
        if seqs.is_empty() {
            return Ok(());
        }
        let target = self.clients[k].believed_leader;
        if self.nodes[target].paused_until > now {
            // No answer from a frozen process; try again at the next tick.
            return Ok(());
        }
        if self.nodes[target].run.is_none() {
            self.clients[k].believed_leader = self.rng.gen_range(0..n);
            return Ok(());
        }
        let client_id = self.clients[k].id;
        let mut requests = Vec::with_capacity(seqs.len());
        let mut reads = Vec::new();
        for seq in seqs {
            let op = self.clients[k].waiting[&seq].op.clone();
            let log_free = self.reads.mode != SimReadMode::Log && op.kind == OpKind::Read;
            let in_order = log_free && self.reads.mode == SimReadMode::InOrder;
            let (to, consistency) = if log_free && !in_order {
                self.read_target(k, target)
            } else {
                (target, ReadConsistency::Linearizable)
            };
            let attempt = self.history.call(k, client_id, seq, &op, now.0);
            if let Some(p) = self.clients[k].waiting.get_mut(&seq) {
                p.state = RequestState::InFlight {
                    attempt,
                    replica: to,
                    incarnation: self.nodes[to].incarnation,
                    deadline_us: now.0 + CLIENT_RETRY_US,
                };
            }
            if log_free {
                let read = match consistency {
                    ReadConsistency::AtLeast(asked) => LogFreeRead::Follower { asked },
                    ReadConsistency::Linearizable => LogFreeRead::Linearizable {
                        applied_at_call: self.read_reference.through(),
                    },
                };
                self.log_free.insert(attempt, read);
                if in_order {
                    requests.push((op.request, attempt, RequestKind::Read));
                } else {
                    reads.push((to, op.request, consistency, attempt));
                }
            } else {
                requests.push((op.request, attempt, RequestKind::Write));
            }
        }
        let id = self.nodes[target].id;
        self.trace(|| {
            format!(
                "client {} sends {} requests to {id}, {} reads without the log",
                k + 1,
                requests.len(),
                reads.len()
            )
        });
        if !requests.is_empty() {
            let local = self.nodes[target].local(now);
            if let Some(run) = self.nodes[target].run.as_mut() {
                run.node.propose_requests(local, local, &mut requests);
            }
            self.drain(target)?;
        }
        // Reads that go to the same replica arrive together, as the
        // production driver hands them over (`submit_reads`: they share
        // one round).
        let mut reads = reads.into_iter().peekable();
        while let Some((to, request, consistency, attempt)) = reads.next() {
            let mut together = vec![(request, consistency, attempt)];
            while let Some((_, request, consistency, attempt)) =
                reads.next_if(|(next, ..)| *next == to)
            {
                together.push((request, consistency, attempt));
            }
            let local = self.nodes[to].local(now);
            if let Some(run) = self.nodes[to].run.as_mut() {
                run.node.submit_reads(local, &mut together);
            }
            self.drain(to)?;
        }
        Ok(())
    }

    /// Where a read that skips the log goes: a linearizable read to the
    /// believed leader, or (a share of them) a follower read, at least at
    /// the highest slot the client has seen, to any running replica.
    fn read_target(&mut self, k: usize, leader: usize) -> (usize, ReadConsistency) {
        let share = self.reads.follower_reads;
        if share > 0.0 && self.rng.gen_bool(share) {
            let now = self.now;
            let up: Vec<usize> = (0..self.nodes.len())
                .filter(|&r| self.nodes[r].run.is_some() && self.nodes[r].paused_until <= now)
                .collect();
            if !up.is_empty() {
                let to = up[self.rng.gen_range(0..up.len())];
                return (to, ReadConsistency::AtLeast(self.clients[k].seen_slot));
            }
        }
        (leader, ReadConsistency::Linearizable)
    }

    /// A read that skipped the log was answered: a linearizable one enters
    /// the history, a follower read is checked for bounded staleness.
    fn on_read_complete(
        &mut self,
        attempt: u64,
        read: LogFreeRead,
        reply: &Bytes,
        slot: paxos_core::Slot,
    ) -> Result<(), Failure> {
        let Some(a) = self.history.attempts.get(&attempt).cloned() else {
            // A follower read answered after its attempt left the history
            // (it was refused or redirected before): nothing to record.
            return Ok(());
        };
        let op = &self.history.ops[a.history];
        let (key, kind) = (op.key.clone(), op.kind.clone());
        let probe = crate::client::Op {
            request: Bytes::new(),
            key: key.clone(),
            kind,
        };
        let Some(outcome) = probe.outcome(reply) else {
            return Err(Failure::new(
                FailureKind::ApiContract,
                format!(
                    "read reply {:?} is not a GET reply",
                    String::from_utf8_lossy(reply)
                ),
            ));
        };
        match read {
            LogFreeRead::Follower { asked } => {
                self.read_reference.check(&key, asked, slot, &outcome)?;
                // Not linearizable by design: kept out of that check.
                self.history.never_proposed(attempt);
                self.faults.follower_reads += 1;
            }
            LogFreeRead::Linearizable { applied_at_call } => {
                crate::reads::check_fresh(&key, applied_at_call, slot)?;
                self.history.returned(attempt, self.now.0, outcome);
                self.faults.log_free_reads += 1;
            }
        }
        let client = &mut self.clients[a.client];
        client.seen_slot = client.seen_slot.max(slot);
        if client.waiting.remove(&a.seq).is_some() {
            client.acked += 1;
        }
        Ok(())
    }

    /// A reply reached the client of attempt `attempt`.
    pub(crate) fn on_complete(
        &mut self,
        attempt: u64,
        reply: &Bytes,
        slot: paxos_core::Slot,
    ) -> Result<(), Failure> {
        if let Some(read) = self.log_free.remove(&attempt) {
            return self.on_read_complete(attempt, read, reply, slot);
        }
        let Some(a) = self.history.attempts.get(&attempt).cloned() else {
            return Err(Failure::new(
                FailureKind::ApiContract,
                format!("a node completed attempt {attempt}, which was never handed to it"),
            ));
        };
        let op = match self.clients[a.client].waiting.get(&a.seq) {
            Some(p) => p.op.clone(),
            // Acknowledged by an earlier attempt already; still record this
            // attempt's outcome.
            None => crate::client::Op {
                request: Bytes::new(),
                key: self.history.ops[a.history].key.clone(),
                kind: self.history.ops[a.history].kind.clone(),
            },
        };
        let Some(outcome) = op.outcome(reply) else {
            return Err(Failure::new(
                FailureKind::ApiContract,
                format!(
                    "reply {:?} does not fit operation {:?}",
                    String::from_utf8_lossy(reply),
                    op.kind
                ),
            ));
        };
        self.history.returned(attempt, self.now.0, outcome);
        let request = if op.request.is_empty() {
            None
        } else {
            Some(op.request.clone())
        };
        if let Some(request) = request {
            self.checker.on_ack(&request, slot)?;
            let client = &mut self.clients[a.client];
            client.seen_slot = client.seen_slot.max(slot);
            if client.waiting.remove(&a.seq).is_some() {
                client.acked += 1;
            }
        }
        Ok(())
    }

    /// The node ended attempt `attempt` without a reply.
    pub(crate) fn on_abort(
        &mut self,
        from: usize,
        attempt: u64,
        reason: paxos_node::AbortReason,
    ) -> Result<(), Failure> {
        use paxos_node::AbortReason as R;
        if self.log_free.remove(&attempt).is_some() {
            // A read that skipped the log never executed, whatever the
            // reason: it leaves the history and is retried.
            self.faults.reads_refused += 1;
            let Some(a) = self.history.never_proposed(attempt) else {
                return Ok(());
            };
            if let R::NotPrimary { leader } = reason {
                let n = self.nodes.len();
                let hinted = leader.and_then(|l| self.index_of(l)).filter(|&l| l != from);
                self.clients[a.client].believed_leader =
                    hinted.unwrap_or_else(|| self.rng.gen_range(0..n));
            }
            self.clients[a.client].requeue_attempt(attempt);
            return Ok(());
        }
        let Some(a) = self.history.attempts.get(&attempt).cloned() else {
            return Err(Failure::new(
                FailureKind::ApiContract,
                format!("a node aborted attempt {attempt}, which was never handed to it"),
            ));
        };
        match reason {
            R::NotPrimary { leader } => {
                self.history.never_proposed(attempt);
                let n = self.nodes.len();
                let hinted = leader.and_then(|l| self.index_of(l)).filter(|&l| l != from);
                self.clients[a.client].believed_leader =
                    hinted.unwrap_or_else(|| self.rng.gen_range(0..n));
            }
            R::OutcomeUnknown | R::ShuttingDown => {}
            R::TooLarge | R::Refused => {
                return Err(Failure::new(
                    FailureKind::ApiContract,
                    format!("a node refused a small request: {reason:?}"),
                ))
            }
        }
        self.clients[a.client].requeue_attempt(attempt);
        Ok(())
    }

    // ----- liveness -------------------------------------------------------

    /// The healed cluster is done when: the operator's membership change (if
    /// one was in progress at the heal) is in force; a voter of the final
    /// membership leads; every request is acknowledged; and every member of
    /// the final membership (voters and learners; removed replicas and
    /// unused spares are not required) runs and applied through the highest
    /// acknowledged slot and the slot that installed the final membership.
    fn liveness_reached(&self) -> bool {
        if self.operator.is_some() {
            return false;
        }
        let (membership_slot, members) = self.checker.latest_membership();
        let leader = self
            .current_leader()
            .is_some_and(|l| members.is_voter(self.nodes[l].id));
        let requests_done = self
            .clients
            .iter()
            .all(|c| c.waiting.is_empty() && c.next_seq >= c.issue_limit);
        let target = self.checker.max_acked_slot().max(membership_slot);
        let caught_up = self
            .nodes
            .iter()
            .filter(|n| members.contains(n.id))
            .all(|n| n.run.as_ref().is_some_and(|r| r.node.applied() >= target));
        leader && requests_done && caught_up
    }

    /// The clients' history, closed by a read of every key from the state of
    /// a caught-up member at the end, must be linearizable: a lost
    /// acknowledged write, a stale read or a duplicated effect shows up here.
    fn check_history(&mut self) -> Result<(), Failure> {
        let (_, members) = self.checker.latest_membership();
        let Some(store) = self
            .nodes
            .iter()
            .filter(|n| members.contains(n.id))
            .filter_map(|n| n.run.as_ref())
            .max_by_key(|r| r.node.applied())
            .map(|r| r.node.state_machine().kv())
        else {
            return Ok(());
        };
        let end = self.now.0 + 1;
        let mut ops: Vec<Operation> = self
            .history
            .to_check(|request| self.checker.applied(request));
        let keys = (0..crate::client::REGISTER_KEYS)
            .map(|k| format!("r{k}"))
            .chain((0..crate::client::COUNTER_KEYS).map(|k| format!("n{k}")));
        for key in keys {
            let value = store.get(key.as_bytes()).map(Bytes::copy_from_slice);
            ops.push(Operation {
                client: 0,
                key: Bytes::from(key),
                kind: OpKind::Read,
                call: end,
                ret: Some(end),
                outcome: OpOutcome::Read(value),
            });
        }
        self.faults.operations_checked += ops.len() as u64;
        match lincheck::check(&ops, LINCHECK_BUDGET) {
            Verdict::Linearizable => Ok(()),
            Verdict::NotLinearizable { key, operations } => {
                let shown: Vec<String> = operations
                    .iter()
                    .rev()
                    .take(12)
                    .rev()
                    .map(|o| {
                        format!(
                            "c{} {:?} [{}..{:?}] -> {:?}",
                            o.client, o.kind, o.call, o.ret, o.outcome
                        )
                    })
                    .collect();
                Err(Failure::new(
                    FailureKind::Linearizability,
                    format!(
                        "key {:?}: {} operations have no linearization; the last ones: {}",
                        String::from_utf8_lossy(&key),
                        operations.len(),
                        shown.join("; ")
                    ),
                ))
            }
            Verdict::Inconclusive { key } => {
                let on_key: Vec<&Operation> = ops
                    .iter()
                    .filter(|o| o.key == key && !(o.kind == OpKind::Read && o.ret.is_none()))
                    .collect();
                let unknown = on_key.iter().filter(|o| o.ret.is_none()).count();
                if std::env::var_os("PAXOS_SIM_DEBUG_LINCHECK").is_some() {
                    for o in &on_key {
                        eprintln!("{o:?}");
                    }
                }
                Err(Failure::new(
                    FailureKind::Linearizability,
                    format!(
                        "key {:?}: the search ran out of its budget of {LINCHECK_BUDGET} steps on {} operations, {unknown} of them with an unknown outcome (inconclusive is not a pass)",
                        String::from_utf8_lossy(&key),
                        on_key.len()
                    ),
                ))
            }
        }
    }

    fn liveness_failure(&self) -> Failure {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| match &n.run {
                Some(r) => {
                    let s = r.node.core().status();
                    format!(
                        "{}: {:?} ballot {} leader {:?} commit {} applied {} needs_snapshot {} membership {:?}/{:?} from slot {} pending change {:?} (unsynced appends {})",
                        n.id,
                        s.role,
                        s.ballot,
                        s.leader,
                        s.commit_index,
                        r.node.applied(),
                        s.needs_snapshot,
                        s.membership.voters,
                        s.membership.learners,
                        s.membership_slot,
                        r.node.core().pending_configuration().map(|m| &m.voters),
                        r.unsynced.len()
                    )
                }
                None if !n.provisioned => format!("{}: spare, never started", n.id),
                None => format!("{}: down", n.id),
            })
            .collect();
        let unacked: Vec<String> = self
            .clients
            .iter()
            .map(|c| {
                format!(
                    "c{}: {} unacknowledged of {}",
                    c.id,
                    c.waiting.len(),
                    c.next_seq - 1
                )
            })
            .collect();
        Failure::new(
            FailureKind::Liveness,
            format!(
                "healed cluster did not converge within {}us: highest acknowledged slot {}; membership {:?} chosen at slot {}; operator still wants {:?}; clients: {}; replicas: {}",
                self.cfg.liveness_timeout_us,
                self.checker.max_acked_slot(),
                self.checker.latest_membership().1,
                self.checker.latest_membership().0,
                self.operator.as_ref().map(|o| &o.target.voters),
                unacked.join(", "),
                nodes.join("; ")
            ),
        )
    }
}
