//! One simulated run: N real `paxos_core::Replica`s, simulated network,
//! disks, clients and time, driven by a discrete-event queue from one seed.

use crate::checker::{describe, Checker, Failure, FailureKind};
use crate::client::{request_bytes, Client, RequestState};
use crate::digest::Fnv64;
use crate::params::FaultParams;
use bytes::{Bytes, BytesMut};
use paxos_core::batch::{BatchBuilder, BatchLimits};
use paxos_core::{
    codec, Action, Ballot, Config, DurableState, Membership, Message, PersistEntry, PersistToken,
    ProposeError, Replica, ReplicaId, Role, Slot, Status, Time, Value,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::cell::RefCell;
use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// Called on every replica the simulator creates (at start and at each
/// restart), before it handles anything. Tests use it to plant bugs.
pub type ReplicaHook = Arc<dyn Fn(&mut Replica) + Send + Sync>;

/// Default number of events in the fault phase of one run.
pub const DEFAULT_STEPS: u64 = 15_000;

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
    /// Applied to every new replica.
    pub hook: Option<ReplicaHook>,
    /// Whether membership changes (and the spare replicas they use) are
    /// part of the run; `None` lets the seed choose.
    pub reconfigure: Option<bool>,
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
            .finish()
    }
}

/// How many faults of each kind a run injected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Replica crashes.
    pub crashes: u64,
    /// Crashes that hit a replica with persists outstanding.
    pub crashes_with_pending_persists: u64,
    /// Crashes that left a torn (partially durable) persist.
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
    /// Corrupted copies fed to the decoder.
    pub codec_fuzzed: u64,
    /// Checkpoints taken (each followed by `compact`).
    pub checkpoints: u64,
    /// State transfers to replicas that reported `needs_snapshot`.
    pub state_transfers: u64,
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
            + self.codec_fuzzed
            + self.pauses
            + self.reconfigurations_requested
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
        self.codec_fuzzed += o.codec_fuzzed;
        self.checkpoints += o.checkpoints;
        self.state_transfers += o.state_transfers;
        self.pauses += o.pauses;
        self.reconfigurations_requested += o.reconfigurations_requested;
        self.reconfigurations_completed += o.reconfigurations_completed;
        self.reconfiguration_calls += o.reconfiguration_calls;
        self.spares_started += o.spares_started;
        self.unrequested_membership_changes += o.unrequested_membership_changes;
        self.changes_pending_at_heal += o.changes_pending_at_heal;
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
    /// Distinct requests acknowledged to clients.
    pub acked_requests: u64,
    /// Faults injected.
    pub faults: FaultCounts,
    /// Hash of every processed event and every action; equal for two runs of
    /// one seed.
    pub digest: u64,
    /// Simulated time at the end.
    pub sim_time: Time,
    /// The seed's fault mix.
    pub params: FaultParams,
    /// The first violated property, if any, and when.
    pub failure: Option<(Failure, Time)>,
}

#[derive(Hash)]
enum EventKind {
    Deliver {
        from: usize,
        to: usize,
        bytes: Bytes,
    },
    PersistDone {
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
    StateTransfer {
        node: usize,
        incarnation: u64,
    },
    /// The operator (re)asks the leader for its membership change.
    Operator,
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

/// A batch proposed through one replica incarnation, awaiting its apply.
struct Proposal {
    client: usize,
    batch: Bytes,
    seqs: Vec<u64>,
}

struct Node {
    id: ReplicaId,
    config: Config,
    replica: Option<Replica>,
    /// Bumped at every crash; events of an older incarnation are dropped.
    incarnation: u64,
    /// What the disk holds. Survives crashes.
    durable: DurableState,
    /// Persists issued but not yet complete, oldest first.
    pending: VecDeque<(PersistToken, Vec<PersistEntry>)>,
    disk_busy_until: Time,
    last_token: Option<u64>,
    timer: Option<Time>,
    timer_generation: u64,
    /// The simulated state machine: slots applied by this incarnation.
    applied_through: Slot,
    status: Option<Status>,
    proposals: BTreeMap<Slot, Proposal>,
    vetoed: bool,
    /// The simulated state machine's durable checkpoint: it holds every slot
    /// up to here. A restart loads it (`applied_through = checkpoint`).
    checkpoint: Slot,
    /// A state transfer is scheduled for this incarnation.
    transfer_scheduled: bool,
    /// The process is frozen until then: its events wait.
    paused_until: Time,
    /// Started at least once (spares are not until a change adds them).
    provisioned: bool,
    /// The membership the replica was first started with: the initial one,
    /// or for a spare the voters of that time with itself a learner. Used at
    /// a restart from no checkpoint.
    base_membership: Membership,
    /// The simulated state machine's membership: `(slot, ballot, value)` of
    /// the last `Reconfigure` it applied (RSL keeps it in the state).
    sm_membership: Option<(Slot, Ballot, Membership)>,
    /// `sm_membership` as of `checkpoint`: what a restart hands the core
    /// as `Config::membership` and `membership_ballot`.
    checkpoint_membership: Option<(Slot, Ballot, Membership)>,
}

/// An operator's membership change: asked of whoever leads, again and
/// again, until the target is chosen.
struct OperatorChange {
    target: Membership,
    since: Time,
}

#[derive(PartialEq, Eq)]
enum Phase {
    Faults,
    Liveness { deadline: Time, events_left: u64 },
}

struct Net {
    /// Group of each replica while a partition is up.
    groups: Option<Vec<u8>>,
    /// Directed links that drop everything.
    blocked: BTreeSet<(usize, usize)>,
    partition_id: u64,
}

impl Net {
    fn connected(&self, from: usize, to: usize) -> bool {
        if from == to {
            return true;
        }
        if self.blocked.contains(&(from, to)) {
            return false;
        }
        match &self.groups {
            Some(g) => g[from] == g[to],
            None => true,
        }
    }
}

/// Retry a proposal that was not acknowledged within this simulated time.
const CLIENT_RETRY_US: u64 = 500_000;
const CLIENTS: usize = 3;

struct Sim {
    cfg: SimConfig,
    params: FaultParams,
    rng: SmallRng,
    now: Time,
    queue: BinaryHeap<Reverse<Event>>,
    next_seq: u64,
    nodes: Vec<Node>,
    net: Net,
    clients: Vec<Client>,
    checker: Checker,
    digest: Fnv64,
    faults: FaultCounts,
    steps: u64,
    phase: Phase,
    batch_limits: BatchLimits,
    /// Size of the initial voter set.
    initial_voters: usize,
    /// The membership change in progress, if any.
    operator: Option<OperatorChange>,
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
/// core failure: panics inside the core are caught and reported as
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
        let params = FaultParams::sample(&mut rng);
        let membership = Membership::with_voters((1..=n as u32).map(ReplicaId).collect());
        let heartbeat_us = if rng.gen_bool(0.5) { 5_000 } else { 20_000 };
        // Timers stay inside the envelope every consensus protocol needs
        // (message delay well below the election timeout); ordinary delays
        // reach at most an eighth of it. Slow messages still exceed it.
        let election_min_us = (heartbeat_us * 5).max(params.delay_max_us * 8);
        let catchup_chunk = [1usize, 4, 64][rng.gen_range(0..3)];
        let batch_limits = BatchLimits {
            max_requests: 16,
            max_bytes: 1024,
        };
        // Drawn from a generator of its own, after everything else: seeds
        // without reconfiguration run exactly as before it existed.
        let mut params = params;
        let mut reconfig_rng = SmallRng::seed_from_u64(cfg.seed ^ 0x7265_636f_6e66_6967);
        params.sample_reconfiguration(&mut reconfig_rng, cfg.reconfigure);
        // Two spares beyond the initial voters, for changes to draw from.
        let pool = if params.weights.reconfigure > 0 {
            n + 2
        } else {
            n
        };
        let nodes = (0..pool)
            .map(|i| {
                let id = ReplicaId(i as u32 + 1);
                let mut config = Config::new(id, membership.clone());
                config.pipeline_window = params.pipeline_window;
                config.batch_limits = batch_limits;
                config.heartbeat_interval_us = heartbeat_us;
                config.election_timeout_min_us = election_min_us;
                config.election_timeout_max_us = election_min_us * 2;
                config.catchup_chunk_decrees = catchup_chunk;
                config.retain_decrees = params.retain_decrees;
                Node {
                    id,
                    config,
                    replica: None,
                    incarnation: 0,
                    durable: DurableState::default(),
                    pending: VecDeque::new(),
                    disk_busy_until: Time(0),
                    last_token: None,
                    timer: None,
                    timer_generation: 0,
                    applied_through: 0,
                    status: None,
                    proposals: BTreeMap::new(),
                    vetoed: false,
                    checkpoint: 0,
                    transfer_scheduled: false,
                    paused_until: Time(0),
                    provisioned: i < n,
                    base_membership: membership.clone(),
                    sm_membership: None,
                    checkpoint_membership: None,
                }
            })
            .collect();
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
            net: Net {
                groups: None,
                blocked: BTreeSet::new(),
                partition_id: 0,
            },
            clients,
            checker: Checker::new(membership),
            digest: Fnv64::new(),
            faults: FaultCounts::default(),
            steps: 0,
            phase: Phase::Faults,
            batch_limits,
            initial_voters: n,
            operator: None,
        }
    }

    fn schedule(&mut self, at: Time, kind: EventKind) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queue.push(Reverse(Event { at, seq, kind }));
    }

    fn trace(&self, what: impl FnOnce() -> String) {
        if self.cfg.verbose {
            println!("{:>12} {}", self.now.0, what());
        }
    }

    fn run_phases(&mut self) -> Result<(), Failure> {
        self.trace(|| {
            let c = &self.nodes[0].config;
            format!(
                "seed {} with {} replicas; core config: pipeline_window {}, heartbeat {}us, election timeout {}..{}us, catch-up chunk {}, retain {} decrees; faults: {:?}",
                self.cfg.seed,
                self.nodes.len(),
                c.pipeline_window,
                c.heartbeat_interval_us,
                c.election_timeout_min_us,
                c.election_timeout_max_us,
                c.catchup_chunk_decrees,
                c.retain_decrees,
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
                return Ok(());
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
        let target = match &ev.kind {
            EventKind::Deliver { to, .. } => Some(*to),
            EventKind::PersistDone { node, .. }
            | EventKind::Timer { node, .. }
            | EventKind::StateTransfer { node, .. } => Some(*node),
            _ => None,
        };
        if let Some(t) = target {
            let resume = self.nodes[t].paused_until;
            if resume > self.now {
                // The process is frozen: the event waits for it, in order.
                self.schedule(resume, ev.kind);
                return Ok(());
            }
        }
        match ev.kind {
            EventKind::Deliver { from, to, bytes } => self.deliver(from, to, bytes),
            EventKind::PersistDone { node, incarnation } => self.persist_done(node, incarnation),
            EventKind::Timer {
                node,
                incarnation,
                generation,
            } => {
                let n = &mut self.nodes[node];
                if n.incarnation != incarnation
                    || n.timer_generation != generation
                    || n.replica.is_none()
                {
                    return Ok(());
                }
                n.timer = None;
                let now = self.now;
                if let Some(r) = n.replica.as_mut() {
                    r.handle_tick(now);
                }
                self.after_interaction(node)
            }
            EventKind::ClientTick { client } => self.client_tick(client),
            EventKind::Chaos => self.chaos(),
            EventKind::Restart { node, incarnation } => {
                if self.nodes[node].replica.is_none() && self.nodes[node].incarnation == incarnation
                {
                    self.start_replica(node)?;
                }
                Ok(())
            }
            EventKind::StateTransfer { node, incarnation } => {
                self.state_transfer(node, incarnation)
            }
            EventKind::Operator => self.operator_ask(),
            EventKind::Heal { partition } => {
                if partition == self.net.partition_id {
                    self.trace(|| "network healed".to_string());
                    self.net.groups = None;
                    self.net.blocked.clear();
                }
                Ok(())
            }
        }
    }

    // ----- replicas -------------------------------------------------------

    fn start_replica(&mut self, i: usize) -> Result<(), Failure> {
        let seed: u64 = self.rng.gen();
        let now = self.now;
        let node = &mut self.nodes[i];
        node.provisioned = true;
        // The state machine comes back as of its checkpoint, membership
        // included: the core must be told the membership in force after
        // `applied_through` and the ballot its Reconfigure was applied in.
        node.sm_membership = node.checkpoint_membership.clone();
        let mut config = node.config.clone();
        match &node.checkpoint_membership {
            Some((slot, ballot, m)) => {
                config.membership = m.clone();
                config.membership_ballot = *ballot;
                config.membership_slot = *slot;
            }
            None => {
                config.membership = node.base_membership.clone();
                config.membership_ballot = Ballot::ZERO;
                config.membership_slot = 0;
            }
        }
        let mut replica =
            Replica::try_new(config, node.durable.clone(), node.checkpoint, seed, now).map_err(
                |e| {
                    Failure::new(
                        FailureKind::ApiContract,
                        format!("{} rejected the simulator's config: {e}", node.id),
                    )
                },
            )?;
        if let Some(hook) = &self.cfg.hook {
            hook(&mut replica);
        }
        replica.set_can_become_primary(!node.vetoed);
        node.replica = Some(replica);
        node.applied_through = node.checkpoint;
        node.transfer_scheduled = false;
        node.last_token = None;
        node.status = None;
        node.timer = None;
        node.proposals.clear();
        if node.incarnation > 0 {
            self.faults.restarts += 1;
        }
        let (id, promised, commit, checkpoint) = (
            node.id,
            node.durable.promised,
            node.durable.commit_index,
            node.checkpoint,
        );
        self.trace(|| {
            format!("{id} starts (durable promised {promised}, commit {commit}, checkpoint {checkpoint})")
        });
        self.after_interaction(i)
    }

    /// A replica reported `needs_snapshot`: it misses decrees no peer still
    /// holds. As RSL's CopyStateFromReplica does, copy the state machine of
    /// the most advanced live peer and restart on it. Its outstanding
    /// persists are allowed to finish first (a clean restart).
    fn state_transfer(&mut self, i: usize, incarnation: u64) -> Result<(), Failure> {
        let node = &self.nodes[i];
        if node.incarnation != incarnation || node.replica.is_none() {
            return Ok(());
        }
        let still_needed = node
            .replica
            .as_ref()
            .is_some_and(|r| r.status().needs_snapshot);
        if !still_needed {
            self.nodes[i].transfer_scheduled = false;
            return Ok(());
        }
        let donor = (0..self.nodes.len())
            .filter(|j| *j != i && self.nodes[*j].replica.is_some())
            .max_by_key(|j| (self.nodes[*j].applied_through, std::cmp::Reverse(*j)));
        let through = donor.map_or(0, |d| self.nodes[d].applied_through);
        // The copied state machine carries its membership: the last
        // Reconfigure the donor applied, or the initial membership if none.
        let transferred = donor.map(|d| {
            self.nodes[d].sm_membership.clone().unwrap_or((
                0,
                Ballot::ZERO,
                self.checker.governing(1).clone(),
            ))
        });
        if through <= node.applied_through {
            // Nobody is ahead yet: try again later.
            let at = self.now.plus_micros(50_000);
            self.schedule(
                at,
                EventKind::StateTransfer {
                    node: i,
                    incarnation,
                },
            );
            return Ok(());
        }
        self.faults.state_transfers += 1;
        let id = node.id;
        self.trace(|| {
            format!(
                "{id} STATE TRANSFER to slot {through} from r{}",
                donor.map_or(0, |d| d + 1)
            )
        });
        let pending = std::mem::take(&mut self.nodes[i].pending);
        for (_, entries) in &pending {
            self.make_durable(i, entries)?;
        }
        let node = &mut self.nodes[i];
        node.checkpoint = through;
        node.checkpoint_membership = transferred;
        node.replica = None;
        node.incarnation += 1;
        node.disk_busy_until = self.now;
        for c in &mut self.clients {
            c.requeue_replica(i);
        }
        self.start_replica(i)
    }

    fn crash(&mut self, i: usize) -> Result<(), Failure> {
        if self.nodes[i].replica.is_none() {
            return Ok(());
        }
        let torn_allowed = self.params.torn_persists;
        let pending = std::mem::take(&mut self.nodes[i].pending);
        // Persists that were issued but not acknowledged: any prefix of them
        // may have reached the disk before the crash (a crash between write
        // and acknowledgement), and with torn writes a prefix of the entries
        // of the next one too.
        let whole = self.rng.gen_range(0..=pending.len());
        let torn = if torn_allowed && whole < pending.len() {
            self.rng.gen_range(0..=pending[whole].1.len())
        } else {
            0
        };
        self.faults.crashes += 1;
        if !pending.is_empty() {
            self.faults.crashes_with_pending_persists += 1;
        }
        if torn > 0 && torn < pending[whole].1.len() {
            self.faults.torn_persists += 1;
        }
        for (_, entries) in pending.iter().take(whole) {
            self.make_durable(i, entries)?;
        }
        if whole < pending.len() {
            let torn_prefix: Vec<PersistEntry> =
                pending[whole].1.iter().take(torn).cloned().collect();
            self.make_durable(i, &torn_prefix)?;
        }
        let node = &mut self.nodes[i];
        node.replica = None;
        node.incarnation += 1;
        node.paused_until = Time(0);
        node.timer = None;
        node.status = None;
        node.proposals.clear();
        node.disk_busy_until = self.now;
        let incarnation = node.incarnation;
        let id = node.id;
        for c in &mut self.clients {
            c.requeue_replica(i);
        }
        let downtime = self
            .rng
            .gen_range(self.params.downtime_min_us..=self.params.downtime_max_us);
        self.trace(|| {
            format!("{id} CRASHES ({} pending persists, {whole} made durable, torn {torn}), down {downtime}us", pending.len())
        });
        self.schedule(
            self.now.plus_micros(downtime),
            EventKind::Restart {
                node: i,
                incarnation,
            },
        );
        Ok(())
    }

    /// Writes `entries` to node `i`'s simulated disk and records every vote
    /// among them with the quorum checker (which never forgets one).
    fn make_durable(&mut self, i: usize, entries: &[PersistEntry]) -> Result<(), Failure> {
        let id = self.nodes[i].id;
        for e in entries {
            self.nodes[i].durable.apply(e);
            if let PersistEntry::Accept(a) = e {
                self.checker.record_vote(id, a.slot, a.ballot, &a.value)?;
            }
        }
        Ok(())
    }

    /// Drains the replica's actions and re-arms its timer.
    fn after_interaction(&mut self, i: usize) -> Result<(), Failure> {
        loop {
            let Some(replica) = self.nodes[i].replica.as_mut() else {
                return Ok(());
            };
            let Some(action) = replica.poll_action() else {
                break;
            };
            self.handle_action(i, action)?;
        }
        let node = &mut self.nodes[i];
        let Some(replica) = node.replica.as_ref() else {
            return Ok(());
        };
        if let Some(t) = replica.next_timer() {
            // A timer at or before now fires on the next microsecond, so a
            // core that never advances its timer cannot freeze time.
            let at = t.max(self.now.plus_micros(1));
            if node.timer != Some(at) {
                node.timer = Some(at);
                node.timer_generation += 1;
                let (incarnation, generation) = (node.incarnation, node.timer_generation);
                self.schedule(
                    at,
                    EventKind::Timer {
                        node: i,
                        incarnation,
                        generation,
                    },
                );
            }
        }
        Ok(())
    }

    fn handle_action(&mut self, i: usize, action: Action) -> Result<(), Failure> {
        match action {
            Action::Send { to, msg } => self.send(i, to, &msg),
            Action::Persist { token, entries } => {
                let node = &mut self.nodes[i];
                if let Some(last) = node.last_token {
                    if token.0 <= last {
                        return Err(Failure::new(
                            FailureKind::ApiContract,
                            format!(
                                "{} issued persist token {} after {}",
                                node.id, token.0, last
                            ),
                        ));
                    }
                }
                node.last_token = Some(token.0);
                let took = self
                    .rng
                    .gen_range(self.params.persist_min_us..=self.params.persist_max_us);
                let done = node.disk_busy_until.max(self.now).plus_micros(took);
                node.disk_busy_until = done;
                let incarnation = node.incarnation;
                token.0.hash(&mut self.digest);
                entries.len().hash(&mut self.digest);
                node.pending.push_back((token, entries));
                self.schedule(
                    done,
                    EventKind::PersistDone {
                        node: i,
                        incarnation,
                    },
                );
                Ok(())
            }
            Action::Apply {
                slot,
                ballot,
                value,
            } => self.apply(i, slot, ballot, value),
            Action::StatusChanged(status) => {
                let id = self.nodes[i].id;
                if status.id != id {
                    return Err(Failure::new(
                        FailureKind::ApiContract,
                        format!("{id} reported the status of {}", status.id),
                    ));
                }
                self.trace(|| {
                    format!(
                        "{id} status {:?} ballot {} leader {:?} commit {} applied {} membership {:?}/{:?} from slot {}",
                        status.role,
                        status.ballot,
                        status.leader,
                        status.commit_index,
                        status.applied_index,
                        status.membership.voters,
                        status.membership.learners,
                        status.membership_slot
                    )
                });
                status.ballot.hash(&mut self.digest);
                self.checker.on_status(&status)?;
                let node = &mut self.nodes[i];
                if status.needs_snapshot && !node.transfer_scheduled {
                    node.transfer_scheduled = true;
                    let incarnation = node.incarnation;
                    let delay = self.rng.gen_range(1_000..=20_000);
                    self.schedule(
                        self.now.plus_micros(delay),
                        EventKind::StateTransfer {
                            node: i,
                            incarnation,
                        },
                    );
                }
                self.nodes[i].status = Some(status);
                Ok(())
            }
        }
    }

    fn apply(
        &mut self,
        i: usize,
        slot: Slot,
        ballot: paxos_core::Ballot,
        value: Value,
    ) -> Result<(), Failure> {
        let id = self.nodes[i].id;
        self.trace(|| {
            format!(
                "{id} applies slot {slot} ballot {ballot}: {}",
                describe(&value)
            )
        });
        slot.hash(&mut self.digest);
        value.hash(&mut self.digest);
        self.checker.check_quorum(id, slot, &value)?;
        self.check_chosen_is_durable(i, slot, &value)?;
        let (before_slot, before) = self.checker.latest_membership();
        let before = (before_slot, before.clone());
        self.checker
            .on_apply(id, self.nodes[i].applied_through, slot, &value)?;
        if let (Value::Reconfigure(r), true) =
            (&value, self.checker.latest_membership().0 > before.0)
        {
            let m = &r.membership;
            // A repeat of the membership in force changes nothing (two
            // leaders proposed the same step; both were chosen).
            let wanted = *m == before.1
                || self.operator.as_ref().is_some_and(|o| {
                    o.target == *m || (m.voters == before.1.voters && o.target.voters != m.voters)
                });
            if !wanted {
                self.faults.unrequested_membership_changes += 1;
                self.trace(|| {
                    format!(
                        "UNREQUESTED membership change at slot {slot}: {m:?} (operator wants {:?})",
                        self.operator.as_ref().map(|o| &o.target.voters)
                    )
                });
            }
        }
        self.nodes[i].applied_through = slot;
        if let Value::Reconfigure(r) = &value {
            // The state machine follows the core's rule: a change based on a
            // membership no longer in force is a no-op.
            let in_force = self.nodes[i].sm_membership.as_ref().map_or(0, |m| m.0);
            if r.applies_to(in_force) {
                self.nodes[i].sm_membership = Some((slot, ballot, r.membership.clone()));
            }
        }
        let every = self.params.checkpoint_every;
        if every > 0 && slot >= self.nodes[i].checkpoint + every {
            // The state machine saves a checkpoint (durably, at once), then
            // lets the core drop the decrees it covers.
            self.nodes[i].checkpoint = slot;
            self.nodes[i].checkpoint_membership = self.nodes[i].sm_membership.clone();
            self.faults.checkpoints += 1;
            if let Some(r) = self.nodes[i].replica.as_mut() {
                r.compact(slot);
            }
        }
        let p = self.nodes[i].proposals.remove(&slot);
        self.settle_proposal(i, slot, &value, p)
    }

    /// A value is chosen only once a quorum of acceptors *durably* accepted
    /// it, so whenever any replica applies `value` at `slot`, a quorum of the
    /// disks of the voters governing `slot` must hold that value there (or
    /// have truncated the slot under a checkpoint that covers it). Acceptors only ever replace
    /// a chosen slot's entry with the same value, so this stays true once
    /// true, and checking it at every apply catches a replica that counted
    /// votes that were not yet durable, or too few votes, even when no crash
    /// happens to expose it.
    fn check_chosen_is_durable(&self, i: usize, slot: Slot, value: &Value) -> Result<(), Failure> {
        let governing = self.checker.governing(slot);
        let holders = self
            .nodes
            .iter()
            .filter(|n| governing.is_voter(n.id))
            .filter(|n| {
                n.durable.truncated_through >= slot
                    || n.durable
                        .accepted
                        .get(&slot)
                        .is_some_and(|a| a.value == *value)
            })
            .count();
        let quorum = governing.quorum();
        if holders < quorum {
            return Err(Failure::new(
                FailureKind::Durability,
                format!(
                    "{} applied slot {slot} = {} but only {holders} disks of its governing voters {:?} hold that value there (quorum {quorum})",
                    self.nodes[i].id,
                    describe(value),
                    governing.voters
                ),
            ));
        }
        Ok(())
    }

    /// Acknowledges the requests of a proposal whose batch was chosen at
    /// its slot, or re-queues them if another value was.
    fn settle_proposal(
        &mut self,
        i: usize,
        slot: Slot,
        value: &Value,
        p: Option<Proposal>,
    ) -> Result<(), Failure> {
        let Some(p) = p else {
            return Ok(());
        };
        let client = &mut self.clients[p.client];
        let client_id = client.id;
        if *value == Value::Requests(p.batch) {
            for seq in &p.seqs {
                if client.waiting.remove(seq).is_some() {
                    client.acked += 1;
                }
                self.checker.on_ack((client_id, *seq), slot)?;
            }
        } else {
            // Superseded: another value was chosen at this slot.
            for seq in &p.seqs {
                if let Some(state) = client.waiting.get_mut(seq) {
                    if matches!(*state, RequestState::InFlight { replica, slot: s, .. } if replica == i && s == slot)
                    {
                        *state = RequestState::Queued;
                    }
                }
            }
        }
        Ok(())
    }

    fn persist_done(&mut self, i: usize, incarnation: u64) -> Result<(), Failure> {
        let now = self.now;
        let node = &mut self.nodes[i];
        if node.incarnation != incarnation || node.replica.is_none() {
            return Ok(());
        }
        let Some((token, entries)) = node.pending.pop_front() else {
            return Err(Failure::new(
                FailureKind::ApiContract,
                "simulator lost a pending persist",
            ));
        };
        self.make_durable(i, &entries)?;
        let node = &mut self.nodes[i];
        if let Some(r) = node.replica.as_mut() {
            r.on_persisted(now, token);
        }
        self.after_interaction(i)
    }

    // ----- network --------------------------------------------------------

    fn index_of(&self, id: ReplicaId) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == id)
    }

    fn send(&mut self, from: usize, to: ReplicaId, msg: &Message) -> Result<(), Failure> {
        let from_id = self.nodes[from].id;
        let Some(to_index) = self.index_of(to) else {
            return Err(Failure::new(
                FailureKind::ApiContract,
                format!("{from_id} sent to unknown replica {to}"),
            ));
        };
        self.check_durable_before_send(from, to, msg)?;
        let mut buf = BytesMut::new();
        codec::encode(msg, &mut buf);
        let bytes = buf.freeze();
        let limit = self.nodes[from].config.max_message_bytes;
        if bytes.len() > limit {
            return Err(Failure::new(
                FailureKind::Codec,
                format!(
                    "{from_id} sent a {}-byte message to {to}, limit {limit}: {msg:?}",
                    bytes.len()
                ),
            ));
        }
        if self.params.codec_fuzz > 0.0 && self.rng.gen_bool(self.params.codec_fuzz) {
            self.faults.codec_fuzzed += 1;
            let corrupted = self.corrupt(&bytes);
            // Must return, Ok or Err; a panic fails the run.
            let _ = codec::decode(corrupted);
        }
        if !self.net.connected(from, to_index) {
            self.faults.messages_dropped += 1;
            return Ok(());
        }
        if self.params.loss > 0.0 && self.rng.gen_bool(self.params.loss) {
            self.faults.messages_dropped += 1;
            return Ok(());
        }
        let copies = if self.params.duplicate > 0.0 && self.rng.gen_bool(self.params.duplicate) {
            self.faults.messages_duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut delay = self
                .rng
                .gen_range(self.params.delay_min_us..=self.params.delay_max_us);
            if self.params.slow_message > 0.0 && self.rng.gen_bool(self.params.slow_message) {
                delay += self.rng.gen_range(0..=self.params.slow_extra_us);
            }
            self.schedule(
                self.now.plus_micros(delay),
                EventKind::Deliver {
                    from,
                    to: to_index,
                    bytes: bytes.clone(),
                },
            );
        }
        Ok(())
    }

    /// Acceptor replies state what the acceptor did; they may only leave once
    /// that is on disk, or a crash could make the acceptor contradict them.
    fn check_durable_before_send(
        &self,
        from: usize,
        to: ReplicaId,
        msg: &Message,
    ) -> Result<(), Failure> {
        let node = &self.nodes[from];
        let durable = &node.durable;
        let violation = match msg {
            Message::Promise(paxos_core::msg::Promise { ballot, .. })
                if durable.promised < *ballot =>
            {
                Some(format!(
                    "Promise for ballot {ballot} while the disk holds promise {}",
                    durable.promised
                ))
            }
            // An acceptor that knows the slot is already chosen may vouch
            // for it in a new ballot without a fresh durable vote: a leader
            // that passed phase 1 can only propose the chosen value there, so
            // the "vote" cannot help choose anything else.
            Message::Accepted(paxos_core::msg::Accepted { ballot, slot, .. })
                if *slot > durable.truncated_through
                    && durable
                        .accepted
                        .get(slot)
                        .is_none_or(|a| a.ballot < *ballot)
                    && node
                        .replica
                        .as_ref()
                        .is_none_or(|r| r.status().commit_index < *slot) =>
            {
                Some(format!(
                    "Accepted for slot {slot} ballot {ballot} while the disk holds {:?}",
                    durable.accepted.get(slot).map(|a| a.ballot)
                ))
            }
            _ => None,
        };
        match violation {
            Some(v) => Err(Failure::new(
                FailureKind::Durability,
                format!("{} sent {to} a {v}", node.id),
            )),
            None => Ok(()),
        }
    }

    /// A damaged copy of an encoded message: truncated, bit-flipped, or
    /// extended with garbage.
    fn corrupt(&mut self, bytes: &Bytes) -> Bytes {
        let mut v = bytes.to_vec();
        match self.rng.gen_range(0..3) {
            0 => v.truncate(self.rng.gen_range(0..=v.len())),
            1 if !v.is_empty() => {
                for _ in 0..self.rng.gen_range(1..=4) {
                    let at = self.rng.gen_range(0..v.len());
                    v[at] ^= 1 << self.rng.gen_range(0..8);
                }
            }
            _ => {
                for _ in 0..self.rng.gen_range(1..=16) {
                    v.push(self.rng.gen());
                }
            }
        }
        Bytes::from(v)
    }

    fn deliver(&mut self, from: usize, to: usize, bytes: Bytes) -> Result<(), Failure> {
        if !self.net.connected(from, to) {
            // The partition appeared while the message was in flight.
            self.faults.messages_dropped += 1;
            return Ok(());
        }
        if self.nodes[to].replica.is_none() {
            return Ok(());
        }
        let (from_id, to_id) = (self.nodes[from].id, self.nodes[to].id);
        let msg = codec::decode(bytes.clone()).map_err(|e| {
            Failure::new(
                FailureKind::Codec,
                format!("{from_id} -> {to_id}: encoded message does not decode: {e}"),
            )
        })?;
        let mut again = BytesMut::new();
        codec::encode(&msg, &mut again);
        if again != bytes {
            return Err(Failure::new(
                FailureKind::Codec,
                format!("{from_id} -> {to_id}: decode then encode changed the bytes of {msg:?}"),
            ));
        }
        self.trace(|| format!("{to_id} <- {from_id} {}", show_message(&msg)));
        let now = self.now;
        if let Some(r) = self.nodes[to].replica.as_mut() {
            r.handle_message(now, from_id, msg);
        }
        self.after_interaction(to)
    }

    // ----- clients --------------------------------------------------------

    fn client_tick(&mut self, k: usize) -> Result<(), Failure> {
        let now = self.now;
        let n = self.nodes.len();
        let interval = self.params.client_interval_us;
        let next = now.plus_micros(self.rng.gen_range(interval / 2..=interval + interval / 2));
        self.schedule(next, EventKind::ClientTick { client: k });

        let client = &mut self.clients[k];
        client.expire(now.0);
        client.fill(self.params.client_outstanding);
        self.checker.note_issued(client.id, client.next_seq);
        let seqs = client.queued(self.params.client_batch);
        if seqs.is_empty() {
            return Ok(());
        }
        let target = client.believed_leader;
        if self.nodes[target].paused_until > now {
            // No answer from a frozen process; try again at the next tick.
            return Ok(());
        }
        if self.nodes[target].replica.is_none() {
            self.clients[k].believed_leader = self.rng.gen_range(0..n);
            return Ok(());
        }
        let mut builder = BatchBuilder::new(self.batch_limits);
        let mut batched = Vec::with_capacity(seqs.len());
        for seq in seqs {
            if !builder.push(&request_bytes(self.clients[k].id, seq)) {
                break;
            }
            batched.push(seq);
        }
        let batch = builder.finish();
        self.checker.note_proposed(batch.clone());
        let node = &mut self.nodes[target];
        let incarnation = node.incarnation;
        let Some(replica) = node.replica.as_mut() else {
            return Ok(());
        };
        let result = replica.propose(now, Value::Requests(batch.clone()));
        let id = node.id;
        self.trace(|| {
            format!(
                "client {} proposes {} requests via {id}: {result:?}",
                k + 1,
                batched.len()
            )
        });
        match result {
            Ok(slot) => {
                slot.hash(&mut self.digest);
                let proposal = Proposal {
                    client: k,
                    batch,
                    seqs: batched.clone(),
                };
                if let Some(old) = self.nodes[target].proposals.insert(slot, proposal) {
                    // The replica handed out this slot before (it lost and
                    // regained leadership): the old proposal is superseded.
                    let client = &mut self.clients[old.client];
                    for seq in old.seqs {
                        if let Some(state) = client.waiting.get_mut(&seq) {
                            if matches!(*state, RequestState::InFlight { replica, slot: s, .. } if replica == target && s == slot)
                            {
                                *state = RequestState::Queued;
                            }
                        }
                    }
                }
                let deadline_us = now.0 + CLIENT_RETRY_US;
                let client = &mut self.clients[k];
                for seq in batched {
                    client.waiting.insert(
                        seq,
                        RequestState::InFlight {
                            replica: target,
                            incarnation,
                            slot,
                            deadline_us,
                        },
                    );
                }
            }
            Err(ProposeError::NotLeader { leader }) => {
                let hinted = leader.and_then(|l| self.index_of(l));
                self.clients[k].believed_leader =
                    hinted.unwrap_or_else(|| self.rng.gen_range(0..n));
            }
            // A membership change is being chosen: like a full window, the
            // client retries at its next tick.
            Err(ProposeError::WindowFull | ProposeError::ConfigChangeInFlight) => {}
            Err(ProposeError::TooLarge { len, max }) => {
                return Err(Failure::new(
                    FailureKind::ApiContract,
                    format!("{id} rejected a {len}-byte batch as larger than {max} bytes, but batches are built within the configured limits"),
                ));
            }
            #[allow(unreachable_patterns)]
            Err(_) => {
                self.clients[k].believed_leader = self.rng.gen_range(0..n);
            }
        }
        self.after_interaction(target)
    }

    // ----- faults ---------------------------------------------------------

    fn chaos_delay(&mut self) -> u64 {
        self.rng.gen_range(1..=2 * self.params.chaos_mean_us)
    }

    fn alive(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].replica.is_some())
            .collect()
    }

    fn current_leader(&self) -> Option<usize> {
        (0..self.nodes.len()).find(|i| {
            self.nodes[*i].replica.is_some()
                && self.nodes[*i]
                    .status
                    .as_ref()
                    .is_some_and(|s| s.role == Role::Leader)
        })
    }

    fn chaos(&mut self) -> Result<(), Failure> {
        if self.phase != Phase::Faults {
            return Ok(());
        }
        let at = self.now.plus_micros(self.chaos_delay());
        self.schedule(at, EventKind::Chaos);
        let w = self.params.weights.clone();
        let mut pick = self.rng.gen_range(0..w.total());
        let n = self.nodes.len();
        // Caps on simultaneous faults are taken against the voters of the
        // newest membership (at most a minority of them down).
        let voters = self.checker.latest_membership().1.voters.clone();
        let minority = (voters.len() - 1) / 2;
        let down_voters = voters
            .iter()
            .filter(|v| {
                self.index_of(**v)
                    .is_none_or(|i| self.nodes[i].replica.is_none())
            })
            .count();
        let veto_cap = (self.initial_voters - 1) / 2;
        let mut choose = |weight: u32| {
            if pick < weight {
                true
            } else {
                pick -= weight;
                false
            }
        };
        if choose(w.crash) {
            let alive = self.alive();
            // Usually at most a minority is down; now and then one more, which
            // stalls the cluster until a restart (safety must still hold).
            let cap = minority + usize::from(self.rng.gen_bool(0.2));
            if down_voters < cap && !alive.is_empty() {
                let victim = match self.current_leader() {
                    Some(l) if self.rng.gen_bool(0.5) => l,
                    _ => alive[self.rng.gen_range(0..alive.len())],
                };
                self.crash(victim)?;
            }
        } else if choose(w.crash_persisting) {
            let alive = self.alive();
            if down_voters < minority + 1 {
                let victim = alive
                    .iter()
                    .copied()
                    .max_by_key(|i| (self.nodes[*i].pending.len(), std::cmp::Reverse(*i)));
                if let Some(v) = victim {
                    self.crash(v)?;
                }
            }
        } else if choose(w.partition) {
            let mut groups: Vec<u8> = (0..n).map(|_| self.rng.gen_range(0..2)).collect();
            if groups.iter().all(|g| *g == groups[0]) {
                let i = self.rng.gen_range(0..n);
                groups[i] ^= 1;
            }
            self.faults.partitions += 1;
            self.trace(|| format!("PARTITION {groups:?}"));
            self.set_partition(Some(groups), BTreeSet::new());
        } else if choose(w.isolate_leader) {
            let leader = self
                .current_leader()
                .unwrap_or_else(|| self.rng.gen_range(0..n));
            let groups = (0..n).map(|i| u8::from(i == leader)).collect();
            self.faults.leader_isolations += 1;
            self.trace(|| format!("ISOLATE r{}", leader + 1));
            self.set_partition(Some(groups), BTreeSet::new());
        } else if choose(w.one_way) {
            let mut blocked = BTreeSet::new();
            for _ in 0..self.rng.gen_range(1..=n) {
                let a = self.rng.gen_range(0..n);
                let b = self.rng.gen_range(0..n);
                if a != b {
                    blocked.insert((a, b));
                }
            }
            self.faults.one_way_cuts += 1;
            self.trace(|| format!("ONE-WAY CUTS {blocked:?}"));
            self.set_partition(None, blocked);
        } else if choose(w.relinquish) {
            if let Some(l) = self.current_leader() {
                self.faults.relinquishes += 1;
                let now = self.now;
                if let Some(r) = self.nodes[l].replica.as_mut() {
                    let _ = r.relinquish_primary(now);
                }
                self.trace(|| format!("r{} asked to relinquish", l + 1));
                self.after_interaction(l)?;
            }
        } else if choose(w.veto) {
            let i = self.rng.gen_range(0..n);
            let vetoed = self.nodes.iter().filter(|n| n.vetoed).count();
            if self.nodes[i].vetoed || vetoed < veto_cap {
                self.faults.vetoes += 1;
                let node = &mut self.nodes[i];
                node.vetoed = !node.vetoed;
                let allowed = !node.vetoed;
                if let Some(r) = node.replica.as_mut() {
                    r.set_can_become_primary(allowed);
                }
                self.trace(|| format!("r{} can_become_primary = {allowed}", i + 1));
                self.after_interaction(i)?;
            }
        } else if choose(w.pause) {
            let alive = self.alive();
            if !alive.is_empty() {
                let victim = match self.current_leader() {
                    Some(l) if self.rng.gen_bool(0.5) => l,
                    _ => alive[self.rng.gen_range(0..alive.len())],
                };
                let longest = 2 * self.nodes[victim].config.election_timeout_max_us;
                let pause = self.rng.gen_range(1_000..=longest);
                self.faults.pauses += 1;
                self.nodes[victim].paused_until = self.now.plus_micros(pause);
                self.trace(|| format!("PAUSE r{} for {pause}us", victim + 1));
            }
        } else if choose(w.reconfigure) {
            if self.operator.is_none() {
                self.request_reconfiguration()?;
            }
        } else {
            self.faults.weather_changes += 1;
            self.params.loss = [0.0, 0.01, 0.05, 0.2, 0.5][self.rng.gen_range(0..5)];
            self.params.duplicate = [0.0, 0.01, 0.1][self.rng.gen_range(0..3)];
            let (l, d) = (self.params.loss, self.params.duplicate);
            self.trace(|| format!("WEATHER loss {l} duplicate {d}"));
        }
        Ok(())
    }

    // ----- membership changes ----------------------------------------------

    /// Picks a new voter set from the pool and hands it to the operator:
    /// usually the same size with one voter replaced (half of those in the
    /// shape of RSL's walk ABC -> BCD -> CDE -> ADE: drop the lowest voter,
    /// add the next id after the highest, cyclically), sometimes one voter
    /// more or fewer. Spares the target needs are started first, as
    /// non-voters that know the current voters.
    fn request_reconfiguration(&mut self) -> Result<(), Failure> {
        let (_, current) = self.checker.latest_membership();
        let current = current.clone();
        let pool: Vec<ReplicaId> = self.nodes.iter().map(|n| n.id).collect();
        let outside: Vec<ReplicaId> = pool
            .iter()
            .copied()
            .filter(|r| !current.is_voter(*r))
            .collect();
        let mut voters = current.voters.clone();
        let smallest = self.initial_voters.saturating_sub(1).max(3);
        let largest = self.initial_voters + 1;
        let shape = self.rng.gen_range(0..10);
        if shape < 3 && voters.len() < largest && !outside.is_empty() {
            voters.push(outside[self.rng.gen_range(0..outside.len())]);
        } else if shape < 5 && voters.len() > smallest {
            voters.remove(self.rng.gen_range(0..voters.len()));
        } else if outside.is_empty() {
            return Ok(());
        } else if shape < 8 {
            // The walk: the next id after the highest voter, cyclically.
            let highest = *voters.last().expect("a membership has voters");
            let next = outside
                .iter()
                .copied()
                .find(|r| *r > highest)
                .unwrap_or(outside[0]);
            voters.remove(0);
            voters.push(next);
        } else {
            voters.remove(self.rng.gen_range(0..voters.len()));
            voters.push(outside[self.rng.gen_range(0..outside.len())]);
        }
        let target = Membership::with_voters(voters);
        if target == current {
            return Ok(());
        }
        for v in target.voters.clone() {
            let Some(i) = self.index_of(v) else { continue };
            if !self.nodes[i].provisioned {
                // A new machine joins: empty disk, not a voter, knows the
                // current voters (so it can follow whoever leads them).
                self.faults.spares_started += 1;
                self.nodes[i].base_membership = Membership {
                    voters: current.voters.clone(),
                    learners: vec![v],
                };
                self.trace(|| format!("{v} starts as a spare joining {:?}", current.voters));
                self.start_replica(i)?;
            }
        }
        self.faults.reconfigurations_requested += 1;
        self.trace(|| {
            format!(
                "OPERATOR wants voters {:?} (now {:?})",
                target.voters, current.voters
            )
        });
        self.operator = Some(OperatorChange {
            target,
            since: self.now,
        });
        self.operator_ask()
    }

    /// The operator's loop: until the target is chosen, ask whoever leads
    /// (`NotLeader` and `ConfigChangeInFlight` mean: ask again later).
    fn operator_ask(&mut self) -> Result<(), Failure> {
        let Some(op) = &self.operator else {
            return Ok(());
        };
        let (_, latest) = self.checker.latest_membership();
        if *latest == op.target {
            let took = self.now.micros_since(op.since);
            self.trace(|| {
                format!(
                    "OPERATOR: voters {:?} in force after {took}us",
                    latest.voters
                )
            });
            self.faults.reconfigurations_completed += 1;
            self.operator = None;
            return Ok(());
        }
        let target = op.target.clone();
        let retry = self.rng.gen_range(20_000..=100_000);
        self.schedule(self.now.plus_micros(retry), EventKind::Operator);
        let Some(l) = self.current_leader() else {
            return Ok(());
        };
        if self.nodes[l].paused_until > self.now {
            return Ok(());
        }
        let now = self.now;
        let Some(replica) = self.nodes[l].replica.as_mut() else {
            return Ok(());
        };
        self.faults.reconfiguration_calls += 1;
        let result = replica.change_configuration(now, target.clone());
        let id = self.nodes[l].id;
        self.trace(|| {
            format!(
                "OPERATOR asks {id} for voters {:?}: {result:?}",
                target.voters
            )
        });
        match result {
            Ok(())
            | Err(ProposeError::NotLeader { .. })
            | Err(ProposeError::ConfigChangeInFlight) => {}
            Err(e) => {
                return Err(Failure::new(
                    FailureKind::ApiContract,
                    format!("{id} refused membership {target:?}: {e}"),
                ))
            }
        }
        self.after_interaction(l)
    }

    fn set_partition(&mut self, groups: Option<Vec<u8>>, blocked: BTreeSet<(usize, usize)>) {
        self.net.partition_id += 1;
        self.net.groups = groups;
        self.net.blocked = blocked;
        let lasts = self
            .rng
            .gen_range(self.params.partition_min_us..=self.params.partition_max_us);
        let partition = self.net.partition_id;
        self.schedule(self.now.plus_micros(lasts), EventKind::Heal { partition });
    }

    // ----- liveness -------------------------------------------------------

    fn heal(&mut self) -> Result<(), Failure> {
        self.trace(|| "HEAL: liveness phase begins".to_string());
        if self.operator.is_some() {
            self.faults.changes_pending_at_heal += 1;
        }
        self.params = self.params.healed();
        self.net.partition_id += 1;
        self.net.groups = None;
        self.net.blocked.clear();
        for i in 0..self.nodes.len() {
            self.nodes[i].vetoed = false;
            self.nodes[i].paused_until = self.now;
            if !self.nodes[i].provisioned {
                continue;
            }
            if self.nodes[i].replica.is_none() {
                self.start_replica(i)?;
            } else {
                if let Some(r) = self.nodes[i].replica.as_mut() {
                    r.set_can_become_primary(true);
                }
                self.after_interaction(i)?;
            }
        }
        // Each client issues a few new requests (probes) and then stops, so
        // the healed cluster has a fixed amount of work to finish: every
        // outstanding and new request acknowledged, every replica applied
        // through the highest acknowledged slot.
        for c in &mut self.clients {
            c.issue_limit = c.next_seq + self.cfg.liveness_probes;
        }
        // A replica far behind (a spare that joined late in a long run) is
        // allowed the time it needs at the configured catch-up rate: one
        // chunk of decrees per round trip and persist.
        let chunk = self.nodes[0].config.catchup_chunk_decrees.max(1) as u64;
        let behind = self
            .nodes
            .iter()
            .filter(|n| n.provisioned)
            .map(|n| self.checker.max_chosen().saturating_sub(n.applied_through))
            .max()
            .unwrap_or(0);
        let per_chunk_us = 2 * self.params.delay_max_us + self.params.persist_max_us;
        let catch_up_us = behind.div_ceil(chunk) * per_chunk_us;
        self.phase = Phase::Liveness {
            deadline: self
                .now
                .plus_micros(self.cfg.liveness_timeout_us + catch_up_us),
            events_left: self.cfg.liveness_max_events,
        };
        Ok(())
    }

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
            .all(|n| n.replica.is_some() && n.applied_through >= target);
        leader && requests_done && caught_up
    }

    fn liveness_failure(&self) -> Failure {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| match &n.replica {
                Some(r) => {
                    let s = r.status();
                    format!(
                        "{}: {:?} ballot {} leader {:?} commit {} applied {} needs_snapshot {} membership {:?}/{:?} from slot {} pending change {:?} (pending persists {})",
                        n.id,
                        s.role,
                        s.ballot,
                        s.leader,
                        s.commit_index,
                        n.applied_through,
                        s.needs_snapshot,
                        s.membership.voters,
                        s.membership.learners,
                        s.membership_slot,
                        r.pending_configuration().map(|m| &m.voters),
                        n.pending.len()
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

/// A compact, readable rendering of a message for `-v` traces: request
/// batches are shown as request ids instead of raw bytes.
fn show_message(msg: &Message) -> String {
    let entries = |list: &[paxos_core::Accepted]| {
        list.iter()
            .map(|a| format!("{}@{}={}", a.slot, a.ballot, describe(&a.value)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match msg {
        Message::Accept(paxos_core::msg::Accept { ballot, slot, value, commit_index }) => {
            format!("Accept {{ ballot {ballot}, slot {slot}, value {}, commit {commit_index} }}", describe(value))
        }
        Message::Promise(paxos_core::msg::Promise { ballot, from_slot, commit_index, log_start, entries: e, next_from }) => format!(
            "Promise {{ ballot {ballot}, from {from_slot}, commit {commit_index}, log_start {log_start}, entries [{}], next {next_from:?} }}",
            entries(e)
        ),
        Message::Decrees(paxos_core::msg::Decrees { from_slot, commit_index, log_start, decrees }) => format!(
            "Decrees {{ from {from_slot}, commit {commit_index}, log_start {log_start}, decrees [{}] }}",
            entries(decrees)
        ),
        other => format!("{other:?}"),
    }
}
