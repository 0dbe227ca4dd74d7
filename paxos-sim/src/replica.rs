//! Simulated replicas: each is a real `paxos_node::Node` over the real
//! `KvStore`, with paxos-log's real `FileLog` and checkpoint store on its
//! own simulated disk. This module starts them (recovering from that disk),
//! crashes them, and carries out their effects — the simulator's driver,
//! doing what paxos-kv's event loop does in production, with simulated time
//! and faults.

use crate::checker::{describe, majority, Failure, FailureKind};
use crate::params::FaultParams;
use crate::sim::{EventKind, Sim, SimNode};
use crate::state_machine::SimKv;
use crate::storage::{self, SimLog};
use bytes::Bytes;
use paxos_core::{
    Ballot, DurableState, Membership, PersistEntry, ReplicaId, Role, Slot, Status, Time, Value,
};
use paxos_kv::kv::KvSnapshot;
use paxos_log::checkpoint::CheckpointStore;
use paxos_log::sim_fs::{CrashPolicy, DiskOp, LatencyModel, SimFaults, SimFs};
use paxos_node::storage::TransferSink;
use paxos_node::{CheckpointJob, DecreesRead, Effect, NodeConfig, PersistId, Recovery, TransferOp};
use paxos_nvm::{SimRegion, SimRegionFaults};
use rand::rngs::SmallRng;
use rand::Rng;
use std::collections::VecDeque;
use std::hash::Hash;

/// The protocol timing and sizes every replica of a run shares, drawn from
/// the seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// Heartbeat interval.
    pub heartbeat_us: u64,
    /// Minimum election timeout (the maximum is twice this).
    pub election_min_us: u64,
    /// Decrees per catch-up and phase-1 chunk.
    pub catchup_chunk: usize,
    /// Largest checkpoint chunk a replica serves.
    pub transfer_chunk_bytes: usize,
}

impl Timing {
    /// Draws the timing of one run. Timers stay inside the envelope every
    /// consensus protocol needs (message delay well below the election
    /// timeout); ordinary delays reach at most an eighth of it. Slow
    /// messages still exceed it.
    pub fn draw(rng: &mut SmallRng, params: &FaultParams) -> Timing {
        let heartbeat_us = if rng.gen_bool(0.5) { 5_000 } else { 20_000 };
        Timing {
            heartbeat_us,
            election_min_us: (heartbeat_us * 5).max(params.delay_max_us * 8),
            catchup_chunk: [1usize, 4, 64][rng.gen_range(0..3)],
            transfer_chunk_bytes: [200usize, 4096, 1 << 20][rng.gen_range(0..3)],
        }
    }
}

/// A running incarnation of a replica.
pub(crate) struct Running {
    pub(crate) node: SimNode,
    pub(crate) log: SimLog,
    pub(crate) checkpoints: CheckpointStore,
    sink: TransferSink,
    /// Appended and not yet synced: persist id, sequence number, entries.
    pub(crate) unsynced: VecDeque<(PersistId, u64, Vec<PersistEntry>)>,
    /// A `SyncDone` event is scheduled.
    sync_scheduled: bool,
    /// The checkpoint being written in the background, if any.
    checkpoint: Option<CheckpointJob<KvSnapshot>>,
    /// The received checkpoint being finished, if any.
    finishing: Option<Slot>,
    /// Storage reads for peers' catch-up, in the order they complete: what
    /// to report, the last slot, most decrees, most bytes.
    decree_reads: VecDeque<(DecreesRead, Slot, usize, usize)>,
    /// The last slot the node reported applied (contiguity check).
    applied_through: Slot,
    /// The core status last seen (changes are checked).
    status: Option<Status>,
}

/// A replica's persistent memory, if its log lives there.
pub(crate) struct Pm {
    pub(crate) region: SimRegion,
    /// Formatted by a first start.
    formatted: bool,
}

/// One replica of the pool: its disk (and persistent memory) survive
/// crashes, its process does not.
pub(crate) struct Replica {
    pub(crate) id: ReplicaId,
    pub(crate) timing: Timing,
    /// The simulated disk: checkpoints, and the file log.
    pub(crate) disk: SimFs,
    /// Simulated persistent memory holding the log instead, for some.
    pub(crate) pm: Option<Pm>,
    pub(crate) run: Option<Running>,
    /// Bumped at every crash; events of an older incarnation are dropped.
    pub(crate) incarnation: u64,
    /// Everything this replica's log ever made durable (the checkers'
    /// ledger): synced appends, and what recovery found after a crash.
    pub(crate) ledger: DurableState,
    disk_busy_until: Time,
    timer: Option<Time>,
    timer_generation: u64,
    pub(crate) vetoed: bool,
    /// The process is frozen until then: its events wait.
    pub(crate) paused_until: Time,
    /// Started at least once (spares are not until a change adds them).
    pub(crate) provisioned: bool,
    /// The membership the replica is configured with: the initial one, or
    /// for a spare the voters of that time with itself a learner.
    pub(crate) base_membership: Membership,
    /// Provisioned to join (a spare): not being a member is not removal.
    pub(crate) joining: bool,
    /// This replica's clock: every input hands the node its reading.
    pub(crate) clock: crate::reads::Clock,
    /// How the node confirms linearizable reads.
    pub(crate) read_mode: paxos_node::ReadMode,
}

impl Replica {
    pub(crate) fn new(
        id: ReplicaId,
        membership: Membership,
        provisioned: bool,
        timing: Timing,
        disk: SimFs,
        pm: Option<SimRegion>,
    ) -> Replica {
        Replica {
            id,
            timing,
            disk,
            pm: pm.map(|region| Pm {
                region,
                formatted: false,
            }),
            run: None,
            incarnation: 0,
            ledger: DurableState::default(),
            disk_busy_until: Time(0),
            timer: None,
            timer_generation: 0,
            vetoed: false,
            paused_until: Time(0),
            provisioned,
            base_membership: membership,
            joining: false,
            clock: crate::reads::Clock::new(0),
            read_mode: paxos_node::ReadMode::ReadIndex,
        }
    }

    /// This replica's clock at simulated time `global`.
    pub(crate) fn local(&self, global: Time) -> Time {
        self.clock.local(global)
    }

    fn node_config(&self, params: &FaultParams, seed: u64) -> NodeConfig {
        let t = self.timing;
        let mut core = paxos_core::Config::new(self.id, self.base_membership.clone());
        core.pipeline_window = params.pipeline_window;
        core.batch_limits = paxos_core::batch::BatchLimits {
            max_requests: 16,
            max_bytes: 1024,
        };
        core.heartbeat_interval_us = t.heartbeat_us;
        core.election_timeout_min_us = t.election_min_us;
        core.election_timeout_max_us = t.election_min_us * 2;
        core.catchup_chunk_decrees = t.catchup_chunk;
        core.retain_decrees = params.retain_decrees;
        core.retain_bytes = params.retain_bytes;
        let mut config = NodeConfig::new(core);
        config.checkpoint_every = params.checkpoint_every;
        config.checkpoint_every_bytes = params.checkpoint_every_bytes;
        config.checkpoints = true;
        config.compact_retain = 0;
        config.transfer_stall_us = 4 * t.election_min_us;
        config.transfer_chunk_bytes = t.transfer_chunk_bytes;
        config.addresses.joining = self.joining;
        config.seed = seed;
        config.boot_nonce = seed.rotate_left(29) ^ u64::from(self.id.0);
        // Decrees carry a wall-clock time (the KV store's expiry clock).
        // Each replica's clock is 1.5 s off the next one's, so a new leader
        // is often behind the old one: the store must keep its clock
        // monotonic, identically on every replica (the digest covers it).
        config.wall_clock_at_zero_us = SIM_EPOCH_US + u64::from(self.id.0) * 1_500_000;
        config.report_applies = true;
        config.read_mode = self.read_mode;
        config
    }
}

/// The simulated wall clock at time 0 (µs since the Unix epoch: 2020-09-13).
const SIM_EPOCH_US: u64 = 1_600_000_000_000_000;

/// Roughly how many bytes an entry takes in the log (for latency).
fn entry_bytes(e: &PersistEntry) -> usize {
    match e {
        PersistEntry::Accept(a) => 32 + a.value.payload_len(),
        _ => 32,
    }
}

/// Replica `i`'s disk: its latency follows the seed's disk speed (a base
/// cost per sync, and slow outliers up to the slowest persist), drawn from
/// a seed of its own.
pub(crate) fn disk_for(params: &FaultParams, seed: u64, faulty: bool) -> SimFs {
    // A faulty disk flips bits and fails reads now and then (transient:
    // a re-read cures them), and rarely loses a sector for good or writes
    // to the wrong place (latent: recovery finds the damage).
    let (flips, errors, latent, misdirected) = if faulty {
        (2_000, 2_000, 100, 200)
    } else {
        (0, 0, 0, 0)
    };
    SimFs::with_faults(SimFaults {
        seed,
        read_bit_flip_per_million: flips,
        read_error_per_million: errors,
        latent_sector_error_per_million: latent,
        misdirected_write_per_million: misdirected,
        latency: LatencyModel {
            read_us: 5,
            write_us: 1,
            sync_us: params.persist_min_us,
            metadata_us: 5,
            nanos_per_kib: 300,
            outlier_per_million: 300_000,
            outlier_max_us: params
                .persist_max_us
                .saturating_sub(params.persist_min_us)
                .max(1),
        },
        ..SimFaults::default()
    })
}

/// Replica `i`'s persistent memory (for the replicas whose log lives
/// there): fast, with rare slow outliers.
pub(crate) fn pm_for(seed: u64, faulty: bool) -> SimRegion {
    let mut faults = SimRegionFaults {
        seed,
        read_bit_flip_per_million: if faulty { 20 } else { 0 },
        unreadable_word_per_million: if faulty { 1 } else { 0 },
        ..SimRegionFaults::default()
    };
    faults.latency.outlier_per_million = 10_000;
    SimRegion::new(storage::REGION_BYTES, faults)
}

fn storage_failure(id: ReplicaId, what: &str, e: impl std::fmt::Display) -> Failure {
    Failure::new(
        FailureKind::Durability,
        format!("{id}: {what} failed on a disk that only lost unsynced data: {e}"),
    )
}

impl Sim {
    pub(crate) fn alive(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].run.is_some())
            .collect()
    }

    pub(crate) fn current_leader(&self) -> Option<usize> {
        (0..self.nodes.len()).find(|i| {
            self.nodes[*i]
                .run
                .as_ref()
                .is_some_and(|r| r.node.is_leader())
        })
    }

    /// Starts (or restarts) replica `i` from its disk: the real log
    /// recovery, the real checkpoint restore, a new node.
    pub(crate) fn start_replica(&mut self, i: usize) -> Result<(), Failure> {
        let seed: u64 = self.rng.gen();
        let now = self.now;
        self.stability.unsteady(i, now);
        let id = self.nodes[i].id;
        self.nodes[i].provisioned = true;
        let disk = self.nodes[i].disk.clone();
        let opened = match &mut self.nodes[i].pm {
            None => SimLog::open(&disk),
            Some(pm) => {
                let opened = SimLog::open_nvm(&pm.region, pm.formatted);
                pm.formatted = true;
                self.faults.pm_log_starts += 1;
                opened
            }
        };
        let (log, durable) = opened.map_err(|e| storage_failure(id, "log recovery", e))?;
        let damage = log.damage();
        let damaged =
            damage.iter().any(|d| d.may_have_lost_acknowledged) && !self.cfg.ignore_storage_damage;
        if !damage.is_empty() {
            self.faults.damaged_starts += 1;
            let first = damage[0].to_string();
            self.trace(|| format!("{id} storage DAMAGED ({} reports): {first}", damage.len()));
        }
        let checkpoints = storage::open_checkpoints(&disk)
            .map_err(|e| storage_failure(id, "opening the checkpoint store", e))?;
        let mut sm = SimKv::new(id, self.cfg.state_machine_bug);
        let restored = paxos_node::storage::restore_newest(&checkpoints, &mut sm)
            .map_err(|e| storage_failure(id, "checkpoint restore", e))?;
        // What recovery found is on the disk now, whether or not its sync
        // was ever reported.
        for a in durable.accepted.values() {
            let keep = self.nodes[i]
                .ledger
                .accepted
                .get(&a.slot)
                .is_some_and(|l| l.ballot > a.ballot);
            if !keep {
                self.nodes[i].ledger.accepted.insert(a.slot, a.clone());
            }
            self.checker.record_vote(id, a.slot, a.ballot, &a.value)?;
        }
        let ledger = &mut self.nodes[i].ledger;
        ledger.promised = ledger.promised.max(durable.promised);
        let config = self.nodes[i].node_config(&self.params, seed);
        let checkpoint_slot = restored
            .as_ref()
            .map_or(Slot::ZERO, |r| r.meta.last_applied);
        let (promised, commit) = (durable.promised, durable.commit_index);
        let mut node = SimNode::new(
            config,
            Recovery {
                durable,
                state_machine: sm,
                checkpoint: restored,
                damaged,
            },
            self.nodes[i].local(now),
        )
        .map_err(|e| {
            Failure::new(
                FailureKind::ApiContract,
                format!("{id} could not start: {e}"),
            )
        })?;
        if let Some(hook) = &self.cfg.hook {
            hook(&mut node);
        }
        let vetoed = self.nodes[i].vetoed;
        node.set_can_become_primary(self.nodes[i].local(now), !vetoed);
        // The node re-applies the log from its checkpoint on: its reports
        // continue from there.
        let applied = checkpoint_slot;
        let r = &mut self.nodes[i];
        r.run = Some(Running {
            node,
            log,
            sink: TransferSink::new(checkpoints.clone()),
            checkpoints,
            unsynced: VecDeque::new(),
            sync_scheduled: false,
            checkpoint: None,
            finishing: None,
            decree_reads: VecDeque::new(),
            applied_through: applied,
            status: None,
        });
        r.timer = None;
        r.disk_busy_until = now;
        if r.incarnation > 0 {
            self.faults.restarts += 1;
        }
        self.trace(|| {
            format!("{id} starts (durable promised {promised}, commit {commit}, checkpoint {checkpoint_slot})")
        });
        self.drain(i)
    }

    /// Crashes replica `i`: its process and everything in memory are gone;
    /// its disk keeps what was synced, and a crash policy decides what of
    /// the rest survives. Sometimes the crash hits in the middle of a sync
    /// (a torn write).
    pub(crate) fn crash(&mut self, i: usize) -> Result<(), Failure> {
        let Some(run) = self.nodes[i].run.take() else {
            return Ok(());
        };
        let unsynced = run.unsynced.len();
        self.faults.crashes += 1;
        if unsynced > 0 {
            self.faults.crashes_with_pending_persists += 1;
            if self.params.torn_persists && self.rng.gen_bool(0.5) {
                // The medium dies a few operations into the sync.
                self.faults.torn_persists += 1;
                let ops = self.rng.gen_range(0..4);
                match &self.nodes[i].pm {
                    Some(pm) => pm.region.crash_after(ops),
                    None => self.nodes[i].disk.crash_after(ops),
                }
                let _ = run.log.sync();
            }
        }
        drop(run);
        let policy = match self.rng.gen_range(0..3) {
            0 => CrashPolicy::LoseUnsynced,
            1 => CrashPolicy::KeepUnsynced,
            _ => CrashPolicy::Torn {
                seed: self.rng.gen(),
            },
        };
        self.nodes[i].disk.crash(policy);
        if let Some(pm) = &mut self.nodes[i].pm {
            pm.region = pm.region.crash(policy);
        }
        let r = &mut self.nodes[i];
        r.incarnation += 1;
        self.stability.unsteady(i, self.now);
        self.stability.not_leader(i, self.now);
        r.paused_until = Time(0);
        r.timer = None;
        r.disk_busy_until = self.now;
        let (id, incarnation) = (r.id, r.incarnation);
        for c in &mut self.clients {
            c.requeue_replica(i);
        }
        let downtime = self
            .rng
            .gen_range(self.params.downtime_min_us..=self.params.downtime_max_us);
        self.trace(|| {
            format!("{id} CRASHES ({unsynced} unsynced appends, {policy:?}), down {downtime}us")
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

    pub(crate) fn timer(
        &mut self,
        i: usize,
        incarnation: u64,
        generation: u64,
    ) -> Result<(), Failure> {
        let now = self.nodes[i].local(self.now);
        let r = &mut self.nodes[i];
        if r.incarnation != incarnation || r.timer_generation != generation {
            return Ok(());
        }
        let Some(run) = r.run.as_mut() else {
            return Ok(());
        };
        r.timer = None;
        run.node.handle_tick(now);
        self.drain(i)
    }

    /// The disk finished syncing: everything appended so far is durable.
    pub(crate) fn sync_done(&mut self, i: usize, incarnation: u64) -> Result<(), Failure> {
        let now = self.nodes[i].local(self.now);
        let r = &mut self.nodes[i];
        if r.incarnation != incarnation {
            return Ok(());
        }
        let Some(run) = r.run.as_mut() else {
            return Ok(());
        };
        run.sync_scheduled = false;
        if let Some(pid) = self.sync_now(i)? {
            if let Some(run) = self.nodes[i].run.as_mut() {
                run.node.on_persisted(now, pid);
            }
        }
        self.drain(i)
    }

    /// Syncs replica `i`'s log now and records what became durable (the
    /// ledger, the votes); returns the newest persist that did.
    fn sync_now(&mut self, i: usize) -> Result<Option<PersistId>, Failure> {
        let id = self.nodes[i].id;
        let Some(run) = self.nodes[i].run.as_mut() else {
            return Ok(None);
        };
        if run.unsynced.is_empty() {
            return Ok(None);
        }
        let durable = run
            .log
            .sync()
            .map_err(|e| storage_failure(id, "a sync", e))?;
        let mut reported = None;
        let mut made_durable = Vec::new();
        while run
            .unsynced
            .front()
            .is_some_and(|(_, seq, _)| *seq <= durable)
        {
            if let Some((pid, _, entries)) = run.unsynced.pop_front() {
                reported = Some(pid);
                made_durable.push(entries);
            }
        }
        for entries in made_durable {
            for e in &entries {
                self.nodes[i].ledger.apply(e);
                if let PersistEntry::Accept(a) = e {
                    self.checker.record_vote(id, a.slot, a.ballot, &a.value)?;
                }
            }
        }
        Ok(reported)
    }

    /// The background checkpoint write is done: write it (the real
    /// checkpoint code, on the simulated disk) and tell the node.
    pub(crate) fn checkpoint_done(&mut self, i: usize, incarnation: u64) -> Result<(), Failure> {
        let now = self.nodes[i].local(self.now);
        let id = self.nodes[i].id;
        let r = &mut self.nodes[i];
        if r.incarnation != incarnation {
            return Ok(());
        }
        let Some(run) = r.run.as_mut() else {
            return Ok(());
        };
        let Some(job) = run.checkpoint.take() else {
            return Ok(());
        };
        let result = paxos_node::storage::write_checkpoint(&run.checkpoints, job);
        match result {
            Ok(slot) => {
                self.faults.checkpoints += 1;
                run.node.on_checkpoint_saved(now, Ok(slot));
            }
            // The faulty medium may spoil a checkpoint as it is written: its
            // verification catches that, and the node retries later.
            Err(e) if self.faulty == Some(i) => {
                run.node.on_checkpoint_saved(now, Err(e.to_string()));
            }
            Err(e) => return Err(storage_failure(id, "writing a checkpoint", e)),
        }
        self.drain(i)
    }

    /// A received checkpoint's final verify, sync and rename is done.
    pub(crate) fn transfer_finish(&mut self, i: usize, incarnation: u64) -> Result<(), Failure> {
        let now = self.nodes[i].local(self.now);
        let r = &mut self.nodes[i];
        if r.incarnation != incarnation {
            return Ok(());
        }
        let Some(run) = r.run.as_mut() else {
            return Ok(());
        };
        let Some(slot) = run.finishing.take() else {
            return Ok(());
        };
        let result = run
            .sink
            .perform(TransferOp::Finish { slot })
            .map(|s| s.unwrap_or(slot))
            .map_err(|e| e.to_string());
        run.node.on_transfer_finished(now, result);
        self.drain(i)
    }

    /// Replica `i`'s oldest storage read for a peer's catch-up is done: read
    /// the chunk from its log now (a truncation since it was asked makes it
    /// fail, as it would in production) and hand it to the node.
    pub(crate) fn decrees_read(&mut self, i: usize, incarnation: u64) -> Result<(), Failure> {
        let now = self.nodes[i].local(self.now);
        let r = &mut self.nodes[i];
        if r.incarnation != incarnation {
            return Ok(());
        }
        let Some(run) = r.run.as_mut() else {
            return Ok(());
        };
        let Some((read, through, max_decrees, max_bytes)) = run.decree_reads.pop_front() else {
            return Ok(());
        };
        let decrees = run
            .log
            .read_decrees(read.from, through, max_decrees, max_bytes)
            .ok();
        let before = run.node.status().catchup_served_from_storage;
        run.node.on_decrees_read(now, read, decrees);
        if run.node.status().catchup_served_from_storage > before {
            self.faults.fetches_served_from_disk += 1;
        }
        self.drain(i)
    }

    /// When a disk operation of `bytes` issued now on replica `i`'s disk
    /// completes: the disk's own latency model (drawn from the seed), after
    /// whatever it is still busy with.
    fn disk_latency(&mut self, i: usize, bytes: usize) -> Time {
        let r = &mut self.nodes[i];
        let took = r.disk.latency_us(DiskOp::Write, bytes) + r.disk.latency_us(DiskOp::Sync, 0);
        self.disk_done(i, took)
    }

    /// When a log sync of `bytes` issued now on replica `i` completes: on
    /// the medium the log lives on.
    fn log_latency(&mut self, i: usize, bytes: usize) -> Time {
        let took = match &self.nodes[i].pm {
            Some(pm) => {
                pm.region.latency_us(DiskOp::Write, bytes) + pm.region.latency_us(DiskOp::Sync, 0)
            }
            None => return self.disk_latency(i, bytes),
        };
        self.disk_done(i, took)
    }

    fn disk_done(&mut self, i: usize, took: u64) -> Time {
        let r = &mut self.nodes[i];
        let done = r.disk_busy_until.max(self.now).plus_micros(took.max(1));
        r.disk_busy_until = done;
        done
    }

    /// Carries out every effect replica `i`'s node queued, checks what they
    /// reveal, and re-arms its timer.
    pub(crate) fn drain(&mut self, i: usize) -> Result<(), Failure> {
        loop {
            let Some(run) = self.nodes[i].run.as_mut() else {
                return Ok(());
            };
            let Some(effect) = run.node.poll_effect() else {
                break;
            };
            self.carry_out(i, effect)?;
        }
        self.check_status(i)?;
        let Some(run) = self.nodes[i].run.as_ref() else {
            return Ok(());
        };
        let (applied, digest) = (
            run.node.applied(),
            run.node.state_machine().kv().state_digest(),
        );
        let id = self.nodes[i].id;
        self.checker.check_digest(id, applied, digest)?;
        let r = &mut self.nodes[i];
        let Some(run) = r.run.as_ref() else {
            return Ok(());
        };
        if let Some(t) = run.node.next_timer() {
            // The node's timer is on its own clock. A timer at or before now
            // fires on the next microsecond, so a node that never advances
            // its timer cannot freeze time.
            let at = r.clock.global(t).max(self.now.plus_micros(1));
            if r.timer != Some(at) {
                r.timer = Some(at);
                r.timer_generation += 1;
                let (incarnation, generation) = (r.incarnation, r.timer_generation);
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

    fn carry_out(&mut self, i: usize, effect: Effect<KvSnapshot, u64>) -> Result<(), Failure> {
        let id = self.nodes[i].id;
        match effect {
            Effect::Transmit { to, bytes } => self.send(i, to, bytes),
            Effect::Persist { id: pid, entries } => {
                let now = self.nodes[i].local(self.now);
                let Some(run) = self.nodes[i].run.as_mut() else {
                    return Ok(());
                };
                if run.unsynced.back().is_some_and(|(p, _, _)| *p >= pid) {
                    return Err(Failure::new(
                        FailureKind::ApiContract,
                        format!("{id} issued persist {pid:?} after a later one"),
                    ));
                }
                let seq = run
                    .log
                    .append(&entries)
                    .map_err(|e| storage_failure(id, "an append", e))?;
                pid.token.0.hash(&mut self.digest);
                entries.len().hash(&mut self.digest);
                run.unsynced.push_back((pid, seq, entries));
                // As the production driver does after every append: a log
                // bounded in size holds new writes while it is nearly full.
                run.node
                    .on_log_space(now, run.log.space())
                    .map_err(|e| Failure::new(FailureKind::Liveness, format!("{id}: {e}")))?;
                if !run.sync_scheduled {
                    run.sync_scheduled = true;
                    let bytes = run
                        .unsynced
                        .back()
                        .map_or(0, |(_, _, e)| e.iter().map(entry_bytes).sum());
                    let at = self.log_latency(i, bytes);
                    let incarnation = self.nodes[i].incarnation;
                    self.schedule(
                        at,
                        EventKind::SyncDone {
                            node: i,
                            incarnation,
                        },
                    );
                }
                Ok(())
            }
            Effect::Complete {
                completion,
                reply,
                slot,
            } => self.on_complete(completion, &reply, slot),
            Effect::Abort { completion, reason } => self.on_abort(i, completion, reason),
            Effect::SaveCheckpoint(job) => {
                let Some(run) = self.nodes[i].run.as_mut() else {
                    return Ok(());
                };
                if run.checkpoint.is_some() {
                    return Err(Failure::new(
                        FailureKind::ApiContract,
                        format!("{id} asked for a checkpoint while one was being written"),
                    ));
                }
                let bytes = job.snapshot.encoded_len();
                run.checkpoint = Some(job);
                let at = self.disk_latency(i, bytes);
                let incarnation = self.nodes[i].incarnation;
                self.schedule(
                    at,
                    EventKind::CheckpointDone {
                        node: i,
                        incarnation,
                    },
                );
                Ok(())
            }
            Effect::ServeChunk {
                to,
                slot,
                offset,
                max_bytes,
            } => {
                let Some(run) = self.nodes[i].run.as_ref() else {
                    return Ok(());
                };
                let served =
                    paxos_node::storage::serve_chunk(&run.checkpoints, slot, offset, max_bytes);
                if let Some(damaged) = served.damaged {
                    let now = self.nodes[i].local(self.now);
                    if let Some(run) = self.nodes[i].run.as_mut() {
                        run.node.on_checkpoint_damaged(now, damaged);
                    }
                }
                self.send(i, to, paxos_node::xfer::encode(&served.reply))
            }
            Effect::Transfer(op) => {
                let now = self.nodes[i].local(self.now);
                let Some(run) = self.nodes[i].run.as_mut() else {
                    return Ok(());
                };
                match op {
                    TransferOp::Finish { slot } => {
                        run.finishing = Some(slot);
                        let at = self.disk_latency(i, 0);
                        let incarnation = self.nodes[i].incarnation;
                        self.schedule(
                            at,
                            EventKind::TransferFinish {
                                node: i,
                                incarnation,
                            },
                        );
                    }
                    op => {
                        if let Err(e) = run.sink.perform(op) {
                            run.node.on_transfer_failed(now, e.to_string());
                        }
                    }
                }
                Ok(())
            }
            Effect::InstallCheckpoint { slot } => {
                let now = self.nodes[i].local(self.now);
                let bug = self.cfg.state_machine_bug;
                let Some(run) = self.nodes[i].run.as_mut() else {
                    return Ok(());
                };
                let before = run.node.applied();
                // The two phases a driver runs, here back to back: restore
                // into a fresh state machine (paxos-kv does it off its event
                // loop), then hand it to the node. The fresh one carries the
                // same planted bug as the one it replaces.
                let mut fresh = SimKv::new(id, bug);
                let restored =
                    match paxos_node::storage::restore_slot(&run.checkpoints, slot, &mut fresh) {
                        Ok(restored) => restored,
                        // A faulty medium may spoil the received checkpoint
                        // between its verification and the restore: the node
                        // keeps its state and fetches again.
                        Err(e) if self.faulty == Some(i) => {
                            run.node.on_restore_failed(now, slot, e.to_string());
                            return Ok(());
                        }
                        Err(e) => {
                            return Err(Failure::new(
                                FailureKind::ApiContract,
                                format!("{id} could not restore checkpoint {slot}: {e}"),
                            ))
                        }
                    };
                // The node restarts its core from this state and takes all
                // of it for durable: sync what is still queued first (as
                // paxos-kv does), and account for it as synced.
                self.sync_now(i)?;
                let Some(run) = self.nodes[i].run.as_mut() else {
                    return Ok(());
                };
                let durable = run.log.state();
                let (_spare, installed) = run
                    .node
                    .install_restored(now, durable, slot, fresh, restored);
                if let Err(e) = installed {
                    return Err(Failure::new(
                        FailureKind::ApiContract,
                        format!("{id} could not install checkpoint {slot}: {e}"),
                    ));
                }
                if run.node.applied() != before {
                    run.applied_through = slot;
                    self.faults.state_transfers += 1;
                    self.trace(|| {
                        format!("{id} INSTALLED a checkpoint at slot {slot} from a peer")
                    });
                }
                Ok(())
            }
            Effect::ReadDecrees {
                read,
                through,
                max_decrees,
                max_bytes,
            } => {
                let Some(run) = self.nodes[i].run.as_mut() else {
                    return Ok(());
                };
                run.decree_reads
                    .push_back((read, through, max_decrees, max_bytes));
                // A read of the chunk on the log's medium, after whatever
                // the disk is still busy with.
                let took = match &self.nodes[i].pm {
                    Some(pm) => pm.region.latency_us(DiskOp::Read, max_bytes.min(1 << 16)),
                    None => self.nodes[i]
                        .disk
                        .latency_us(DiskOp::Read, max_bytes.min(1 << 16)),
                };
                let at = self.disk_done(i, took);
                let incarnation = self.nodes[i].incarnation;
                self.schedule(
                    at,
                    EventKind::DecreesRead {
                        node: i,
                        incarnation,
                    },
                );
                Ok(())
            }
            Effect::SetPeers(_) | Effect::Timing(_) => Ok(()),
            Effect::ReleaseLogMemory { through } => {
                if let Some(run) = self.nodes[i].run.as_ref() {
                    run.log.release_memory_through(through);
                }
                Ok(())
            }
            Effect::ClearDamage => {
                let Some(run) = self.nodes[i].run.as_ref() else {
                    return Ok(());
                };
                run.log
                    .clear_damage()
                    .map_err(|e| storage_failure(id, "clearing the damage record", e))?;
                self.faults.repairs_completed += 1;
                self.trace(|| format!("{id} REPAIRED: it votes again"));
                Ok(())
            }
            Effect::Applied {
                slot,
                ballot,
                value,
            } => self.on_applied(i, slot, ballot, value),
        }
    }

    fn on_applied(
        &mut self,
        i: usize,
        slot: Slot,
        ballot: Ballot,
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
        let applied_through = self.nodes[i]
            .run
            .as_ref()
            .map_or(Slot::ZERO, |r| r.applied_through);
        self.checker
            .on_apply(id, applied_through, slot, &value, self.now.0)?;
        self.read_reference.on_apply(slot, &value)?;
        if let Some(run) = self.nodes[i].run.as_mut() {
            run.applied_through = slot;
        }
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
        Ok(())
    }

    /// A value is chosen only once a quorum of acceptors *durably* accepted
    /// it, so whenever any replica applies `value` at `slot`, the ledgers of
    /// a majority of the voters governing `slot` must hold that value there
    /// (or have truncated the slot under a checkpoint that covers it).
    /// Acceptors only ever replace a chosen slot's entry with the same
    /// value, so this stays true once true, and checking it at every apply
    /// catches a replica that counted votes that were not yet durable, or
    /// too few votes, even when no crash happens to expose it.
    fn check_chosen_is_durable(&self, i: usize, slot: Slot, value: &Value) -> Result<(), Failure> {
        let governing = self.checker.governing(slot);
        let holders = self
            .nodes
            .iter()
            .filter(|n| governing.is_voter(n.id))
            .filter(|n| {
                n.ledger.truncated_through >= slot
                    || n.ledger
                        .accepted
                        .get(&slot)
                        .is_some_and(|a| a.value == *value)
            })
            .count();
        let quorum = majority(governing.voters.len());
        if holders < quorum {
            let disks: Vec<String> =
                self.nodes
                    .iter()
                    .filter(|n| governing.is_voter(n.id))
                    .map(|n| {
                        format!(
                            "{}: {}",
                            n.id,
                            n.ledger.accepted.get(&slot).map_or(
                                "nothing".to_string(),
                                |a| format!("{} at {}", describe(&a.value), a.ballot)
                            )
                        )
                    })
                    .collect();
            return Err(Failure::new(
                FailureKind::Durability,
                format!(
                    "{} applied slot {slot} = {} but only {holders} disks of its governing voters {:?} hold that value there (quorum {quorum}); they hold: {}",
                    self.nodes[i].id,
                    describe(value),
                    governing.voters,
                    disks.join(", ")
                ),
            ));
        }
        Ok(())
    }

    /// Checks and traces a change of replica `i`'s core status.
    fn check_status(&mut self, i: usize) -> Result<(), Failure> {
        let id = self.nodes[i].id;
        let Some(run) = self.nodes[i].run.as_mut() else {
            return Ok(());
        };
        let status = run.node.core().status();
        if run.status.as_ref() == Some(&status) {
            return Ok(());
        }
        run.status = Some(status.clone());
        if status.id != id {
            return Err(Failure::new(
                FailureKind::ApiContract,
                format!("{id} reported the status of {}", status.id),
            ));
        }
        if status.role == Role::Leader {
            status.ballot.hash(&mut self.digest);
        }
        if status.repair.is_some() {
            self.stability.unsteady(i, self.now);
        }
        self.trace(|| {
            format!(
                "{id} status {:?} ballot {} leader {:?} commit {} applied {} membership {:?}/{:?} from slot {}{}",
                status.role,
                status.ballot,
                status.leader,
                status.commit_index,
                status.applied_index,
                status.membership.voters,
                status.membership.learners,
                status.membership_slot,
                if status.needs_snapshot { " NEEDS SNAPSHOT" } else { "" }
            )
        });
        self.checker.on_status(&status)?;
        if status.role == Role::Leader {
            self.check_leader_change(i, status.ballot)?;
        } else {
            self.stability.not_leader(i, self.now);
        }
        Ok(())
    }

    /// Marks every link cut right now in the stability checker (called
    /// before and after each change of the network's cuts).
    pub(crate) fn note_cuts(&mut self) {
        let n = self.nodes.len();
        for a in 0..n {
            for b in 0..n {
                if a != b && !self.net.connected(a, b) {
                    self.stability.cut(a, b, self.now);
                }
            }
        }
    }

    /// Counts a leader change, and fails the run if no fault forced it
    /// (see `stability.rs` for the definition).
    fn check_leader_change(&mut self, i: usize, ballot: paxos_core::Ballot) -> Result<(), Failure> {
        let now = self.now;
        // What holds right now counts as "at some moment of the window".
        self.note_cuts();
        if self.params.loss > 0.0 || self.params.slow_message > 0.0 || self.operator.is_some() {
            self.stability.excuse(now);
        }
        for k in 0..self.nodes.len() {
            let r = &self.nodes[k];
            if r.run.is_none() || r.paused_until > now {
                self.stability.unsteady(k, now);
                self.stability.not_leader(k, now);
            }
        }
        let voters: Vec<usize> = self
            .checker
            .latest_membership()
            .1
            .voters
            .iter()
            .filter_map(|v| self.index_of(*v))
            .collect();
        let before = self.stability.changes;
        let unforced = self.stability.on_leader(i, ballot, now, &voters);
        self.faults.leader_changes += self.stability.changes - before;
        let Some((p, old)) = unforced else {
            return Ok(());
        };
        self.faults.unforced_leader_changes += 1;
        let (new_id, old_id) = (self.nodes[i].id, self.nodes[p].id);
        self.trace(|| format!("UNFORCED LEADER CHANGE {old_id} ({old}) -> {new_id} ({ballot})"));
        Err(Failure::new(
            FailureKind::UnforcedLeaderChange,
            format!(
                "{new_id} became leader in {ballot} while {old_id} led in {old} with a steady quorum and no fault for the last two election timeouts"
            ),
        ))
    }

    /// Hands the node a request with a fresh transport payload (used by the
    /// network for deliveries).
    pub(crate) fn deliver_to_node(
        &mut self,
        to: usize,
        from: ReplicaId,
        bytes: Bytes,
    ) -> Result<(), Failure> {
        let now = self.nodes[to].local(self.now);
        if let Some(run) = self.nodes[to].run.as_mut() {
            run.node.handle_message(now, from, bytes);
        }
        self.drain(to)
    }
}
