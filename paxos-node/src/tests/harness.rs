//! A small deterministic cluster of [`Node`]s for the unit tests.
//!
//! - [`Counter`]: a toy state machine (a running total plus the history of
//!   the requests it executed, so that replicas can be compared request by
//!   request, checkpoints included).
//! - [`Host`]: one node with what its driver would own: in-memory durable
//!   state that applies `Persist` entries to a `DurableState` and reports
//!   them durable in order (at once, or when the test says), a checkpoint
//!   store and transfer sink over a simulated disk, and a record of the
//!   effects tests look at.
//! - [`Sim`]: the hosts, an in-order network between them (links can be cut,
//!   chosen messages dropped), manual time, and the outcome of every request
//!   ([`Outcomes`] fails the test if one settles twice).
//!
//! Effects are carried out the way paxos-kv's driver carries them out, with
//! the same `storage` helpers. This is not the fault simulator (paxos-sim
//! drives nodes under random faults); it lets tests walk a few nodes through
//! a scripted scenario and look at every effect.

use crate::directory::MemberAddrs;
use crate::effect::{AbortReason, CheckpointJob, Effect, PersistId, TransferOp};
use crate::state_machine::{BytesSnapshot, Decree, SnapshotError, StateMachine};
use crate::storage::{self, Restored, TransferSink};
use crate::{xfer, Node, NodeConfig, Recovery};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use paxos_core::{
    Action, DurableState, Membership, PersistEntry, ProposeError, ReplicaId, Slot, Time, Value,
};
use paxos_log::checkpoint::CheckpointStore;
use paxos_log::sim_fs::SimFs;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;

/// Shorthand for a replica id.
pub fn id(n: u32) -> ReplicaId {
    ReplicaId(n)
}

/// Voters `1..=n`.
pub fn voters(n: u32) -> Membership {
    Membership::with_voters((1..=n).map(ReplicaId).collect())
}

/// The addresses replica `id` is configured with.
pub fn addrs(id: ReplicaId) -> MemberAddrs {
    let port = u16::try_from(id.0).expect("small ids");
    MemberAddrs {
        peer: SocketAddr::from(([127, 0, 0, 1], 7000 + port)),
        client: SocketAddr::from(([127, 0, 0, 1], 6000 + port)),
    }
}

/// A node configuration for `me` in a cluster bootstrapped as `membership`,
/// with checkpoints off (tests turn on what they need).
pub fn config(me: ReplicaId, membership: &Membership) -> NodeConfig {
    let core = paxos_core::Config::new(me, membership.clone());
    let mut c = NodeConfig::new(core);
    c.seed = 0x5EED_0000 + u64::from(me.0);
    c.boot_nonce = 0xB007_0000 + u64::from(me.0);
    c.addresses.configured = membership.all().map(|m| (m, addrs(m))).collect();
    c
}

// ----------------------------------------------------------------------
// The state machine.
// ----------------------------------------------------------------------

/// The reply to a request that does not decode.
pub const BAD_REQUEST: &[u8] = b"bad request";
/// Largest request a snapshot may hold (bounds what a corrupt length can
/// make a restore allocate).
const MAX_REQUEST_BYTES: usize = 1 << 20;

/// A request adding `n` to the counter, followed by `pad` filler bytes (so
/// that histories, and with them checkpoints, can span several transfer
/// chunks).
pub fn inc(n: u64, pad: usize) -> Bytes {
    let mut b = BytesMut::with_capacity(8 + pad);
    b.put_u64_le(n);
    b.put_bytes(0xA5, pad);
    b.freeze()
}

/// The total a reply reports.
pub fn total_of(reply: &[u8]) -> u64 {
    let bytes: [u8; 8] = reply.try_into().expect("a counter reply is 8 bytes");
    u64::from_le_bytes(bytes)
}

/// One request a [`Counter`] executed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Executed {
    /// The slot of its decree.
    pub slot: Slot,
    /// Who proposed the decree.
    pub proposer: ReplicaId,
    /// The request.
    pub request: Bytes,
}

/// The toy state machine: a running total of the requests' increments, and
/// every request executed with its decree's slot and proposer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    /// Sum of the increments.
    pub total: u64,
    /// Every request executed, in execution order.
    pub history: Vec<Executed>,
}

impl Counter {
    /// The snapshot encoding: `total u64 | count u64 | count × (slot u64 |
    /// proposer u32 | len u32 | request)`.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        out.put_u64_le(self.total);
        out.put_u64_le(self.history.len() as u64);
        for e in &self.history {
            out.put_u64_le(e.slot.0);
            out.put_u32_le(e.proposer.0);
            out.put_u32_le(e.request.len() as u32);
            out.put_slice(&e.request);
        }
        out.freeze()
    }

    /// The state as of slot `slot`: what a checkpoint at `slot` holds.
    pub fn as_of(&self, slot: Slot) -> Counter {
        let history: Vec<Executed> = self
            .history
            .iter()
            .take_while(|e| e.slot <= slot)
            .cloned()
            .collect();
        let total = history
            .iter()
            .fold(0u64, |t, e| t.wrapping_add((&e.request[..8]).get_u64_le()));
        Counter { total, history }
    }

    /// Reads exactly what [`Counter::encode`] wrote, checking that the total
    /// is the sum of the history.
    fn decode(source: &mut dyn std::io::Read) -> Result<Counter, SnapshotError> {
        fn read<const N: usize>(source: &mut dyn std::io::Read) -> std::io::Result<[u8; N]> {
            let mut b = [0u8; N];
            source.read_exact(&mut b)?;
            Ok(b)
        }
        let total = u64::from_le_bytes(read(source)?);
        let count = u64::from_le_bytes(read(source)?);
        let mut history = Vec::new();
        let mut sum = 0u64;
        for _ in 0..count {
            let slot = Slot(u64::from_le_bytes(read(source)?));
            let proposer = ReplicaId(u32::from_le_bytes(read(source)?));
            let len = u32::from_le_bytes(read(source)?) as usize;
            if !(8..=MAX_REQUEST_BYTES).contains(&len) {
                return Err(invalid("request length out of range"));
            }
            let mut request = vec![0u8; len];
            source.read_exact(&mut request)?;
            sum = sum.wrapping_add((&request[..8]).get_u64_le());
            history.push(Executed {
                slot,
                proposer,
                request: Bytes::from(request),
            });
        }
        if sum != total {
            return Err(invalid("total is not the sum of the history"));
        }
        // The whole source is the snapshot (the trait's contract).
        if source.read(&mut [0u8; 1])? != 0 {
            return Err(invalid("bytes left after the snapshot"));
        }
        Ok(Counter { total, history })
    }
}

fn invalid(why: &'static str) -> SnapshotError {
    SnapshotError::Invalid(why.into())
}

impl StateMachine for Counter {
    type Snapshot = BytesSnapshot;

    fn execute(&mut self, decree: &Decree, request: &[u8]) -> Bytes {
        let Some(mut n) = request.get(..8) else {
            return Bytes::from_static(BAD_REQUEST);
        };
        if let Some(last) = self.history.last() {
            assert!(
                decree.slot >= last.slot,
                "slot {} executed after slot {}",
                decree.slot,
                last.slot
            );
        }
        self.total = self.total.wrapping_add(n.get_u64_le());
        self.history.push(Executed {
            slot: decree.slot,
            proposer: decree.proposer,
            request: Bytes::copy_from_slice(request),
        });
        Bytes::copy_from_slice(&self.total.to_le_bytes())
    }

    /// Any request reads the running total (a read adds nothing).
    fn query(&self, _request: &[u8]) -> Bytes {
        Bytes::copy_from_slice(&self.total.to_le_bytes())
    }

    fn snapshot(&mut self) -> BytesSnapshot {
        BytesSnapshot(self.encode())
    }

    fn restore(&mut self, source: &mut dyn std::io::Read) -> Result<(), SnapshotError> {
        *self = Counter::decode(source)?;
        Ok(())
    }
}

/// Checks agreement and slot order across replicas: every history is a
/// prefix of the longest one, and slots never go down within it.
pub fn check_agreement<'a>(
    replicas: impl IntoIterator<Item = (ReplicaId, &'a Counter)>,
) -> Result<(), String> {
    let replicas: Vec<_> = replicas.into_iter().collect();
    let Some((longest_id, longest)) = replicas.iter().max_by_key(|(_, c)| c.history.len()) else {
        return Ok(());
    };
    if let Some(w) = longest.history.windows(2).find(|w| w[1].slot < w[0].slot) {
        return Err(format!(
            "{longest_id} executed slot {} after slot {}",
            w[1].slot, w[0].slot
        ));
    }
    for (id, c) in &replicas {
        if longest.history[..c.history.len()] != c.history[..] {
            return Err(format!("{id}'s history is not a prefix of {longest_id}'s"));
        }
    }
    Ok(())
}

// ----------------------------------------------------------------------
// Outcomes.
// ----------------------------------------------------------------------

/// How a request ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `Effect::Complete` with this reply.
    Complete(Bytes),
    /// `Effect::Abort` for this reason.
    Abort(AbortReason),
}

/// The outcome of every request, by completion id. Recording a second
/// outcome for one id panics: every request gets exactly one.
#[derive(Debug, Default)]
pub struct Outcomes {
    settled: BTreeMap<u64, Outcome>,
}

impl Outcomes {
    /// Records the outcome of request `id`.
    pub fn record(&mut self, id: u64, outcome: Outcome) {
        if let Some(first) = self.settled.get(&id) {
            panic!("request {id} settled twice: {first:?}, then {outcome:?}");
        }
        self.settled.insert(id, outcome);
    }

    /// The outcome of `id`, if it settled.
    pub fn get(&self, id: u64) -> Option<&Outcome> {
        self.settled.get(&id)
    }

    /// The total the reply to `id` reports; panics unless it completed.
    pub fn total(&self, id: u64) -> u64 {
        match self.get(id) {
            Some(Outcome::Complete(reply)) => total_of(reply),
            other => panic!("request {id} did not complete: {other:?}"),
        }
    }

    /// The abort reason of `id`; panics unless it was aborted.
    pub fn abort(&self, id: u64) -> AbortReason {
        match self.get(id) {
            Some(Outcome::Abort(reason)) => *reason,
            other => panic!("request {id} was not aborted: {other:?}"),
        }
    }

    /// How many requests settled.
    pub fn len(&self) -> usize {
        self.settled.len()
    }
}

// ----------------------------------------------------------------------
// Hosts.
// ----------------------------------------------------------------------

/// The node type the tests run: completions are request ids.
pub type TestNode = Node<Counter, u64>;

/// One node and what its driver owns.
pub struct Host {
    /// The node.
    pub node: TestNode,
    /// Its configuration (for restarts).
    pub config: NodeConfig,
    /// What storage made durable.
    pub durable: DurableState,
    /// Report persists durable as soon as they are issued (else they wait
    /// in `pending_persists` for [`Sim::flush_persists`]).
    pub persist_at_once: bool,
    /// Persists issued and not yet durable, in order.
    pub pending_persists: VecDeque<(PersistId, Vec<PersistEntry>)>,
    /// The checkpoint store.
    pub store: CheckpointStore,
    /// The simulated disk under `store` (for planting faults).
    pub fs: SimFs,
    sink: TransferSink,
    /// Write checkpoint jobs as soon as they are issued (else they wait in
    /// `held_jobs` for [`Sim::save_held_checkpoint`]).
    pub save_at_once: bool,
    /// Checkpoint jobs not yet written.
    pub held_jobs: VecDeque<CheckpointJob<BytesSnapshot>>,
    /// Slot of every `SaveCheckpoint` the node issued.
    pub checkpoints_requested: Vec<Slot>,
    /// Every `Transfer` op the node issued.
    pub transfer_ops: Vec<TransferOp>,
    /// Run `TransferOp::Finish` at once (else it waits in `held_finish`
    /// for [`Sim::finish_transfer`], as on a background thread).
    pub finish_at_once: bool,
    /// A finish not yet run.
    pub held_finish: Option<Slot>,
    /// The highest `ReleaseLogMemory` the node issued.
    pub log_memory_released: Slot,
    /// Restore and install a received checkpoint as soon as the node asks
    /// (else the `InstallCheckpoint` waits in `held_install` for
    /// [`Sim::install_held`] or [`Sim::fail_held_install`], as a restore
    /// running on a background thread).
    pub install_at_once: bool,
    /// An `InstallCheckpoint` not yet carried out.
    pub held_install: Option<Slot>,
    /// Slots of the checkpoints installed from peers.
    pub installed: Vec<Slot>,
    /// Why an `InstallCheckpoint` failed.
    pub install_errors: Vec<String>,
    /// Every `SetPeers` the node issued.
    pub peer_sets: Vec<BTreeMap<ReplicaId, SocketAddr>>,
}

impl Host {
    fn new(config: NodeConfig, now: Time) -> Host {
        let fs = SimFs::new();
        let store = CheckpointStore::with_fs(Arc::new(fs.clone()), "/checkpoints", 2, 4096)
            .expect("a checkpoint store on an empty simulated disk");
        let recovery = Recovery {
            durable: DurableState::default(),
            state_machine: Counter::default(),
            checkpoint: None,
            damaged: false,
        };
        let node = Node::new(config.clone(), recovery, now).expect("a valid test configuration");
        Host {
            node,
            config,
            durable: DurableState::default(),
            persist_at_once: true,
            pending_persists: VecDeque::new(),
            sink: TransferSink::new(store.clone()),
            store,
            fs,
            save_at_once: true,
            held_jobs: VecDeque::new(),
            checkpoints_requested: Vec::new(),
            transfer_ops: Vec::new(),
            finish_at_once: true,
            held_finish: None,
            log_memory_released: Slot::ZERO,
            install_at_once: true,
            held_install: None,
            installed: Vec::new(),
            install_errors: Vec::new(),
            peer_sets: Vec::new(),
        }
    }

    fn persist(&mut self, now: Time, id: PersistId, entries: Vec<PersistEntry>) {
        if self.persist_at_once {
            for e in &entries {
                self.durable.apply(e);
            }
            self.node.on_persisted(now, id);
        } else {
            self.pending_persists.push_back((id, entries));
        }
    }

    fn save(&mut self, now: Time, job: CheckpointJob<BytesSnapshot>) {
        let result = storage::write_checkpoint(&self.store, job).map_err(|e| e.to_string());
        self.node.on_checkpoint_saved(now, result);
    }

    fn transfer(&mut self, now: Time, op: TransferOp) {
        self.transfer_ops.push(op.clone());
        match op {
            TransferOp::Finish { slot } if !self.finish_at_once => {
                self.held_finish = Some(slot);
            }
            TransferOp::Finish { slot } => self.finish(now, slot),
            op => {
                if let Err(e) = self.sink.perform(op) {
                    self.node.on_transfer_failed(now, e.to_string());
                }
            }
        }
    }

    /// Verifies and publishes the received checkpoint `slot`, and reports it.
    fn finish(&mut self, now: Time, slot: Slot) {
        let result = self.sink.perform(TransferOp::Finish { slot });
        let result = result.map(|s| s.unwrap_or(slot)).map_err(|e| e.to_string());
        self.node.on_transfer_finished(now, result);
    }

    /// Restores received checkpoint `slot` into a fresh state machine (a
    /// driver does this off its event loop) and installs it, or reports the
    /// restore failed.
    fn install(&mut self, now: Time, slot: Slot) {
        let mut fresh = Counter::default();
        match storage::restore_slot(&self.store, slot, &mut fresh) {
            Ok(restored) => self.install_restored(now, slot, fresh, restored),
            Err(e) => {
                self.install_errors.push(e.to_string());
                self.node.on_restore_failed(now, slot, e.to_string());
            }
        }
    }

    /// Installs checkpoint `slot`, restored into `fresh`, restarting the
    /// node's core from the durable state, as a driver does.
    fn install_restored(&mut self, now: Time, slot: Slot, fresh: Counter, restored: Restored) {
        // As a driver must: sync what is queued first, so the restarted
        // core counts only durable votes. The old core's persists complete
        // into nothing (the node ignores their epoch).
        while let Some((_, entries)) = self.pending_persists.pop_front() {
            for e in &entries {
                self.durable.apply(e);
            }
        }
        let durable = self.durable.clone();
        let before = self.node.applied();
        let (_spare, result) = self
            .node
            .install_restored(now, durable, slot, fresh, restored);
        match result {
            Ok(()) if self.node.applied() != before => self.installed.push(slot),
            Ok(()) => {}
            Err(e) => self.install_errors.push(e.to_string()),
        }
    }

    /// The state machine.
    pub fn counter(&self) -> &Counter {
        self.node.state_machine()
    }
}

// ----------------------------------------------------------------------
// The cluster.
// ----------------------------------------------------------------------

/// Decides whether a message `(from, to, bytes)` is lost.
pub type DropRule = Box<dyn FnMut(ReplicaId, ReplicaId, &Bytes) -> bool>;

/// Most messages delivered, or timer rounds run, in one `run_until` before
/// the harness declares a livelock.
const STEP_LIMIT: usize = 2_000_000;

/// A bare paxos-core replica in the cluster: a peer running other software
/// (it proposes whatever values the test gives it, framed or not).
pub struct Foreign {
    /// The replica.
    pub replica: paxos_core::Replica,
    /// What it made durable.
    pub durable: DurableState,
    /// What it applied.
    pub applied: Vec<(Slot, Value)>,
}

/// Hosts, network, time and outcomes.
pub struct Sim {
    /// The current time.
    pub now: Time,
    /// The hosts by id.
    pub hosts: BTreeMap<ReplicaId, Host>,
    /// Bare cores by id.
    pub foreign: BTreeMap<ReplicaId, Foreign>,
    /// Messages sent and not yet delivered, in send order.
    in_flight: VecDeque<(ReplicaId, ReplicaId, Bytes)>,
    /// Directed links that lose every message.
    cut: BTreeSet<(ReplicaId, ReplicaId)>,
    /// Loses the messages it returns `true` for (checked at delivery).
    pub drop_rule: Option<DropRule>,
    /// Hosts whose timers do not run (a paused process).
    pub frozen: BTreeSet<ReplicaId>,
    /// Every request's outcome.
    pub outcomes: Outcomes,
    next_request: u64,
}

impl Sim {
    /// Voters `1..=n` with the default test configuration.
    pub fn new(n: u32) -> Sim {
        Sim::with(n, |_| {})
    }

    /// Voters `1..=n`, each configuration adjusted by `tweak`.
    pub fn with(n: u32, tweak: impl FnMut(&mut NodeConfig)) -> Sim {
        Sim::with_foreign(n, &[], tweak)
    }

    /// Voters `1..=n`, of which `foreign` are bare paxos-core replicas.
    pub fn with_foreign(
        n: u32,
        foreign: &[ReplicaId],
        mut tweak: impl FnMut(&mut NodeConfig),
    ) -> Sim {
        let membership = voters(n);
        let mut sim = Sim {
            now: Time(0),
            hosts: BTreeMap::new(),
            foreign: BTreeMap::new(),
            in_flight: VecDeque::new(),
            cut: BTreeSet::new(),
            drop_rule: None,
            frozen: BTreeSet::new(),
            outcomes: Outcomes::default(),
            next_request: 1,
        };
        for me in membership.all() {
            let mut c = config(me, &membership);
            tweak(&mut c);
            if foreign.contains(&me) {
                let replica = paxos_core::Replica::try_new(
                    c.core,
                    DurableState::default(),
                    Slot::ZERO,
                    c.seed,
                    sim.now,
                )
                .expect("a valid test configuration");
                let f = Foreign {
                    replica,
                    durable: DurableState::default(),
                    applied: Vec::new(),
                };
                sim.foreign.insert(me, f);
                sim.drain_foreign(me);
            } else {
                sim.add_host(c);
            }
        }
        sim
    }

    /// Starts one more node (for example one that will join).
    pub fn add_host(&mut self, config: NodeConfig) {
        let me = config.core.id;
        self.hosts.insert(me, Host::new(config, self.now));
        self.drain(me);
    }

    /// The host `id`.
    pub fn host(&self, id: ReplicaId) -> &Host {
        &self.hosts[&id]
    }

    /// The host `id`, to change.
    pub fn host_mut(&mut self, id: ReplicaId) -> &mut Host {
        self.hosts.get_mut(&id).expect("a host of the cluster")
    }

    /// The node `id`.
    pub fn node(&self, id: ReplicaId) -> &TestNode {
        &self.hosts[&id].node
    }

    /// The state machine of `id`.
    pub fn counter(&self, id: ReplicaId) -> &Counter {
        self.node(id).state_machine()
    }

    /// Every replica but `not`, in id order.
    pub fn others(&self, not: ReplicaId) -> Vec<ReplicaId> {
        self.hosts.keys().copied().filter(|r| *r != not).collect()
    }

    /// Runs until every request in `ids` has its outcome (at most 1 s of
    /// simulated time; panics otherwise).
    pub fn settle(&mut self, ids: &[u64]) {
        assert!(
            self.run_until(1_000_000, |s| ids
                .iter()
                .all(|id| s.outcomes.get(*id).is_some())),
            "not every request of {ids:?} settled within 1 s"
        );
    }

    // Network.

    /// Cuts every link to and from `id`.
    pub fn isolate(&mut self, id: ReplicaId) {
        for &other in self.hosts.keys() {
            if other != id {
                self.cut.insert((id, other));
                self.cut.insert((other, id));
            }
        }
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// Delivers a message to `to` now, bypassing the network.
    pub fn deliver(&mut self, from: ReplicaId, to: ReplicaId, bytes: Bytes) {
        let now = self.now;
        if let Some(f) = self.foreign.get_mut(&to) {
            // A bare core speaks only the core protocol.
            if let Ok(msg) = paxos_core::codec::decode(bytes) {
                f.replica.handle_message(now, from, msg);
            }
            self.drain_foreign(to);
            return;
        }
        self.host_mut(to).node.handle_message(now, from, bytes);
        self.drain(to);
    }

    /// Messages in flight from `from` to `to`, oldest first.
    pub fn in_flight(&self, from: ReplicaId, to: ReplicaId) -> Vec<Bytes> {
        self.in_flight
            .iter()
            .filter(|(f, t, _)| *f == from && *t == to)
            .map(|(_, _, b)| b.clone())
            .collect()
    }

    /// How many messages are in flight.
    pub fn in_flight_len(&self) -> usize {
        self.in_flight.len()
    }

    /// Delivers queued messages (and those their handling sends) until
    /// none is left.
    pub fn deliver_all(&mut self) {
        let mut steps = 0;
        while let Some((from, to, bytes)) = self.in_flight.pop_front() {
            steps += 1;
            assert!(steps < STEP_LIMIT, "messages never stop flowing");
            if let Some(rule) = self.drop_rule.as_mut() {
                if rule(from, to, &bytes) {
                    continue;
                }
            }
            let exists = self.hosts.contains_key(&to) || self.foreign.contains_key(&to);
            if self.cut.contains(&(from, to)) || !exists {
                continue;
            }
            self.deliver(from, to, bytes);
        }
    }

    // Time.

    /// Runs for `micros` of simulated time.
    pub fn run_for(&mut self, micros: u64) {
        self.run_until(micros, |_| false);
    }

    /// Delivers messages and runs timers until `done` holds (returns true)
    /// or `max_micros` of simulated time passed (returns `done`).
    pub fn run_until(&mut self, max_micros: u64, mut done: impl FnMut(&Sim) -> bool) -> bool {
        let deadline = self.now.plus_micros(max_micros);
        for _ in 0..STEP_LIMIT {
            self.deliver_all();
            if done(self) {
                return true;
            }
            let hosts = self
                .hosts
                .iter()
                .filter(|(id, _)| !self.frozen.contains(id))
                .filter_map(|(_, h)| h.node.next_timer());
            let foreign = self.foreign.values().filter_map(|f| f.replica.next_timer());
            let next = hosts.chain(foreign).min();
            match next {
                Some(t) if t <= deadline => {
                    self.now = self.now.max(t);
                    self.tick_due();
                }
                _ => {
                    self.now = self.now.max(deadline);
                    return done(self);
                }
            }
        }
        panic!("timers never stop firing at {:?}", self.now);
    }

    fn tick_due(&mut self) {
        let now = self.now;
        let due: Vec<ReplicaId> = self
            .hosts
            .iter()
            .filter(|(id, h)| {
                !self.frozen.contains(id) && h.node.next_timer().is_some_and(|t| t <= now)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.host_mut(id).node.handle_tick(now);
            self.drain(id);
        }
        let due: Vec<ReplicaId> = self
            .foreign
            .iter()
            .filter(|(_, f)| f.replica.next_timer().is_some_and(|t| t <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            if let Some(f) = self.foreign.get_mut(&id) {
                f.replica.handle_tick(now);
            }
            self.drain_foreign(id);
        }
    }

    // Leaders.

    /// Proposes `value` on the bare core `id`.
    pub fn propose_foreign(&mut self, id: ReplicaId, value: Value) -> Result<Slot, ProposeError> {
        let now = self.now;
        let f = self
            .foreign
            .get_mut(&id)
            .expect("a bare core of the cluster");
        let result = f.replica.propose(now, value);
        self.drain_foreign(id);
        result
    }

    /// Carries out a bare core's actions (persists durable at once).
    fn drain_foreign(&mut self, id: ReplicaId) {
        let now = self.now;
        let Some(f) = self.foreign.get_mut(&id) else {
            return;
        };
        while let Some(action) = f.replica.poll_action() {
            match action {
                Action::Send { to, msg } => {
                    self.in_flight
                        .push_back((id, to, paxos_core::codec::encode_to_bytes(&msg)));
                }
                Action::Persist { token, entries } => {
                    for e in &entries {
                        f.durable.apply(e);
                    }
                    f.replica.on_persisted(now, token);
                }
                Action::Apply { slot, value, .. } => f.applied.push((slot, value)),
                Action::StatusChanged(_) => {}
                Action::ReadDecrees { peer, from, .. } => {
                    f.replica.on_decrees_read(now, peer, from, None)
                }
            }
        }
    }

    /// Asks node `id` to move the cluster to `target`.
    pub fn change_configuration(
        &mut self,
        id: ReplicaId,
        target: Membership,
    ) -> Result<(), ProposeError> {
        let now = self.now;
        let result = self.host_mut(id).node.change_configuration(now, target);
        self.drain(id);
        result
    }

    /// Restarts node `id` from what its storage holds: the durable state
    /// (persists not yet durable are lost) and the newest checkpoint, with a
    /// fresh boot nonce.
    pub fn restart(&mut self, id: ReplicaId) {
        let now = self.now;
        let host = self.host_mut(id);
        host.pending_persists.clear();
        host.held_jobs.clear();
        host.held_finish = None;
        host.held_install = None;
        // A restarted process's storage keeps every value in memory again.
        host.log_memory_released = Slot::ZERO;
        let mut state_machine = Counter::default();
        let checkpoint = storage::restore_newest(&host.store, &mut state_machine)
            .expect("the newest checkpoint restores");
        host.config.boot_nonce += 1;
        let recovery = Recovery {
            durable: host.durable.clone(),
            state_machine,
            checkpoint,
            damaged: false,
        };
        host.node = Node::new(host.config.clone(), recovery, now).expect("the node restarts");
        host.sink = TransferSink::new(host.store.clone());
        self.drain(id);
    }

    /// The nodes that believe they lead.
    pub fn leaders(&self) -> Vec<ReplicaId> {
        self.hosts
            .iter()
            .filter(|(_, h)| h.node.is_leader())
            .map(|(id, _)| *id)
            .collect()
    }

    /// The leader every node of `among` follows, if they agree on one that
    /// is among them and leads.
    pub fn agreed_leader(&self, among: &[ReplicaId]) -> Option<ReplicaId> {
        let leader = self.node(*among.first()?).status().leader?;
        let agreed = among.contains(&leader)
            && self.node(leader).is_leader()
            && among
                .iter()
                .all(|m| self.node(*m).status().leader == Some(leader));
        agreed.then_some(leader)
    }

    /// Runs until every host agrees on one leader; returns it.
    pub fn elect(&mut self) -> ReplicaId {
        let all: Vec<ReplicaId> = self.hosts.keys().copied().collect();
        self.elect_among(&all)
    }

    /// Runs until the hosts `among` agree on a leader among them.
    pub fn elect_among(&mut self, among: &[ReplicaId]) -> ReplicaId {
        assert!(
            self.run_until(10_000_000, |s| s.agreed_leader(among).is_some()),
            "no leader agreed among {among:?} within 10 s"
        );
        self.agreed_leader(among).expect("just agreed")
    }

    // Requests.

    /// Hands `requests` to node `to` in one `propose_requests` call; returns
    /// their completion ids.
    pub fn submit(&mut self, to: ReplicaId, requests: Vec<Bytes>) -> Vec<u64> {
        let writes = requests
            .into_iter()
            .map(|r| (r, crate::RequestKind::Write))
            .collect();
        self.submit_kinds(to, writes)
    }

    /// Hands writes and reads (each with its kind) to node `to` in one
    /// `propose_requests` call; returns their completion ids.
    pub fn submit_kinds(
        &mut self,
        to: ReplicaId,
        requests: Vec<(Bytes, crate::RequestKind)>,
    ) -> Vec<u64> {
        let first = self.next_request;
        self.next_request += requests.len() as u64;
        let ids: Vec<u64> = (first..self.next_request).collect();
        let mut batch: Vec<(Bytes, u64, crate::RequestKind)> = requests
            .into_iter()
            .zip(ids.iter().copied())
            .map(|((r, kind), id)| (r, id, kind))
            .collect();
        let now = self.now;
        self.host_mut(to)
            .node
            .propose_requests(now, now, &mut batch);
        assert!(batch.is_empty(), "propose_requests drains its input");
        self.drain(to);
        ids
    }

    /// Hands a read to node `to` (`Node::submit_read`); returns its
    /// completion id.
    pub fn submit_read(&mut self, to: ReplicaId, consistency: crate::ReadConsistency) -> u64 {
        let request = self.next_request;
        self.next_request += 1;
        let now = self.now;
        self.host_mut(to)
            .node
            .submit_read(now, Bytes::from_static(b"read"), consistency, request);
        self.drain(to);
        request
    }

    /// Hands `n` linearizable reads to node `to` in one
    /// `Node::submit_reads` call; returns their completion ids.
    pub fn submit_reads(&mut self, to: ReplicaId, n: usize) -> Vec<u64> {
        let first = self.next_request;
        self.next_request += n as u64;
        let ids: Vec<u64> = (first..self.next_request).collect();
        let mut reads: Vec<_> = ids
            .iter()
            .map(|id| {
                (
                    Bytes::from_static(b"read"),
                    crate::ReadConsistency::Linearizable,
                    *id,
                )
            })
            .collect();
        let now = self.now;
        self.host_mut(to).node.submit_reads(now, &mut reads);
        assert!(reads.is_empty(), "submit_reads drains its input");
        self.drain(to);
        ids
    }

    /// Hands a directory command to node `to`; returns its completion id.
    pub fn submit_directory(&mut self, to: ReplicaId, command: Bytes) -> u64 {
        let request = self.next_request;
        self.next_request += 1;
        let now = self.now;
        self.host_mut(to)
            .node
            .propose_directory(now, command, request);
        self.drain(to);
        request
    }

    // Storage.

    /// Makes every pending persist of `id` durable and reports the newest.
    pub fn flush_persists(&mut self, id: ReplicaId) {
        let now = self.now;
        let host = self.host_mut(id);
        let mut newest = None;
        while let Some((persist, entries)) = host.pending_persists.pop_front() {
            for e in &entries {
                host.durable.apply(e);
            }
            newest = Some(persist);
        }
        if let Some(persist) = newest {
            host.node.on_persisted(now, persist);
        }
        self.drain(id);
    }

    /// Writes the oldest held checkpoint job of `id` and reports it.
    pub fn save_held_checkpoint(&mut self, id: ReplicaId) -> Slot {
        let now = self.now;
        let host = self.host_mut(id);
        let job = host.held_jobs.pop_front().expect("a held checkpoint job");
        let slot = job.meta.last_applied;
        host.save(now, job);
        self.drain(id);
        slot
    }

    /// Runs the held transfer finish of `id` and reports it.
    pub fn finish_transfer(&mut self, id: ReplicaId) {
        let now = self.now;
        let host = self.host_mut(id);
        let slot = host.held_finish.take().expect("a held transfer finish");
        host.finish(now, slot);
        self.drain(id);
    }

    /// Restores and installs the held `InstallCheckpoint` of `id`; returns
    /// its slot.
    pub fn install_held(&mut self, id: ReplicaId) -> Slot {
        let now = self.now;
        let host = self.host_mut(id);
        let slot = host.held_install.take().expect("a held install");
        host.install(now, slot);
        self.drain(id);
        slot
    }

    /// Reports the held `InstallCheckpoint` of `id` as a restore that
    /// failed with `error`; returns its slot.
    pub fn fail_held_install(&mut self, id: ReplicaId, error: &str) -> Slot {
        let now = self.now;
        let host = self.host_mut(id);
        let slot = host.held_install.take().expect("a held install");
        host.node.on_restore_failed(now, slot, error.to_string());
        self.drain(id);
        slot
    }

    /// Carries out every effect node `id` has queued.
    pub fn drain(&mut self, id: ReplicaId) {
        let now = self.now;
        let Some(host) = self.hosts.get_mut(&id) else {
            return;
        };
        while let Some(effect) = host.node.poll_effect() {
            match effect {
                Effect::Transmit { to, bytes } => self.in_flight.push_back((id, to, bytes)),
                Effect::Persist {
                    id: persist,
                    entries,
                } => host.persist(now, persist, entries),
                Effect::Complete {
                    completion, reply, ..
                } => self.outcomes.record(completion, Outcome::Complete(reply)),
                Effect::Abort { completion, reason } => {
                    self.outcomes.record(completion, Outcome::Abort(reason))
                }
                Effect::SaveCheckpoint(job) => {
                    host.checkpoints_requested.push(job.meta.last_applied);
                    if host.save_at_once {
                        host.save(now, job);
                    } else {
                        host.held_jobs.push_back(job);
                    }
                }
                Effect::ServeChunk {
                    to,
                    slot,
                    offset,
                    max_bytes,
                } => {
                    let served = storage::serve_chunk(&host.store, slot, offset, max_bytes);
                    self.in_flight
                        .push_back((id, to, xfer::encode(&served.reply)));
                    if let Some(damaged) = served.damaged {
                        host.node.on_checkpoint_damaged(now, damaged);
                    }
                }
                Effect::Transfer(op) => host.transfer(now, op),
                Effect::InstallCheckpoint { slot } if !host.install_at_once => {
                    assert!(
                        host.held_install.is_none(),
                        "{id} asked for a second install before the first was reported"
                    );
                    host.held_install = Some(slot);
                }
                Effect::InstallCheckpoint { slot } => host.install(now, slot),
                Effect::SetPeers(peers) => host.peer_sets.push(peers),
                Effect::ReleaseLogMemory { through } => {
                    assert!(
                        through > host.log_memory_released,
                        "{id} released {through} after {}: releases only rise",
                        host.log_memory_released
                    );
                    assert!(
                        through <= host.node.applied(),
                        "{id} released {through}, beyond applied {}",
                        host.node.applied()
                    );
                    host.log_memory_released = through;
                }
                Effect::ReadDecrees {
                    read,
                    through,
                    max_decrees,
                    ..
                } => {
                    // Storage serves what it made durable, contiguous.
                    let mut next = read.from;
                    let decrees: Vec<_> = host
                        .durable
                        .accepted
                        .range(read.from..=through)
                        .take(max_decrees)
                        .map(|(_, a)| a.clone())
                        .take_while(|a| {
                            let ok = a.slot == next;
                            next = next.next();
                            ok
                        })
                        .collect();
                    let decrees = (!decrees.is_empty()).then_some(decrees);
                    host.node.on_decrees_read(now, read, decrees);
                }
                Effect::Timing(_) | Effect::Applied { .. } | Effect::ClearDamage => {}
            }
        }
    }

    /// Checks agreement and slot order across every host.
    pub fn check_agreement(&self) -> Result<(), String> {
        check_agreement(self.hosts.iter().map(|(id, h)| (*id, h.counter())))
    }
}
