//! Fault injection: the chaos events of the fault phase (crashes,
//! partitions, leadership churn, pauses, weather, replays, membership
//! changes by a simulated operator) and the heal that starts the liveness
//! phase.

use crate::checker::Failure;
use crate::sim::{EventKind, OperatorChange, Phase, Sim};
use paxos_core::{Membership, ProposeError, ReplicaId, Slot};
use rand::Rng;
use std::collections::BTreeSet;

impl Sim {
    pub(crate) fn chaos_delay(&mut self) -> u64 {
        self.rng.gen_range(1..=2 * self.params.chaos_mean_us)
    }

    pub(crate) fn chaos(&mut self) -> Result<(), Failure> {
        if self.phase != Phase::Faults {
            return Ok(());
        }
        let at = self.now.plus_micros(self.chaos_delay());
        self.schedule(at, EventKind::Chaos);
        if self.cfg.clock_drift == crate::reads::ClockDrift::BeyondBound && self.rng.gen_bool(0.3) {
            // Beyond the bound, clock rates also change during the run.
            let i = self.rng.gen_range(0..self.nodes.len());
            let ppm = crate::reads::beyond_bound_rate(&mut self.rng);
            let now = self.now;
            self.nodes[i].clock.set_rate(now, ppm);
            self.trace(|| format!("r{} clock rate now {ppm} ppm", i + 1));
        }
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
                    .is_none_or(|i| self.nodes[i].run.is_none())
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
                let victim = alive.iter().copied().max_by_key(|i| {
                    (
                        self.nodes[*i].run.as_ref().map_or(0, |r| r.unsynced.len()),
                        std::cmp::Reverse(*i),
                    )
                });
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
                self.stability.excuse(self.now);
                let now = self.nodes[l].local(self.now);
                if let Some(run) = self.nodes[l].run.as_mut() {
                    let _ = run.node.relinquish(now, None);
                }
                self.trace(|| format!("r{} asked to relinquish", l + 1));
                self.drain(l)?;
            }
        } else if choose(w.veto) {
            let i = self.rng.gen_range(0..n);
            let vetoed = self.nodes.iter().filter(|n| n.vetoed).count();
            if self.nodes[i].vetoed || vetoed < veto_cap {
                self.faults.vetoes += 1;
                let now = self.nodes[i].local(self.now);
                let r = &mut self.nodes[i];
                r.vetoed = !r.vetoed;
                let allowed = !r.vetoed;
                if let Some(run) = r.run.as_mut() {
                    run.node.set_can_become_primary(now, allowed);
                }
                self.trace(|| format!("r{} can_become_primary = {allowed}", i + 1));
                self.drain(i)?;
            }
        } else if choose(w.pause) {
            let alive = self.alive();
            if !alive.is_empty() {
                let victim = match self.current_leader() {
                    Some(l) if self.rng.gen_bool(0.5) => l,
                    _ => alive[self.rng.gen_range(0..alive.len())],
                };
                let longest = 4 * self.nodes[victim].timing.election_min_us;
                let pause = self.rng.gen_range(1_000..=longest);
                self.faults.pauses += 1;
                self.nodes[victim].paused_until = self.now.plus_micros(pause);
                let until = self.nodes[victim].paused_until;
                self.stability.unsteady(victim, until);
                self.trace(|| format!("PAUSE r{} for {pause}us", victim + 1));
            }
        } else if choose(w.corrupt) {
            if let Some(f) = self.faulty {
                self.corrupt_medium(f)?;
            }
        } else if choose(w.replay) {
            let k = self.rng.gen_range(1..=8);
            self.trace(|| format!("REPLAY {k} old messages"));
            self.stability.excuse(self.now);
            self.replay(k);
        } else if choose(w.reconfigure) {
            if self.operator.is_none() {
                self.request_reconfiguration()?;
            }
        } else {
            self.faults.weather_changes += 1;
            self.stability.excuse(self.now);
            self.params.loss = [0.0, 0.01, 0.05, 0.2, 0.5][self.rng.gen_range(0..5)];
            self.params.duplicate = [0.0, 0.01, 0.1][self.rng.gen_range(0..3)];
            let (l, d) = (self.params.loss, self.params.duplicate);
            self.trace(|| format!("WEATHER loss {l} duplicate {d}"));
        }
        Ok(())
    }

    /// Corrupts the faulty replica's newest log records (or, sometimes, its
    /// newest checkpoint) on its medium and crashes it, so that its
    /// recovery finds the damage: it must repair from its peers before it
    /// votes again, and nothing acknowledged may be lost.
    fn corrupt_medium(&mut self, i: usize) -> Result<(), Failure> {
        let id = self.nodes[i].id;
        let at_checkpoint = self.rng.gen_bool(0.2);
        let what = match (&self.nodes[i].pm, at_checkpoint) {
            (Some(pm), false) => {
                // Somewhere in the first 256 KiB of the log area, where the
                // live records of a short run are.
                let bit = self.rng.gen_range(256 * 8..(256 + 256 * 1024) * 8);
                if pm.region.flip_bit(bit).is_err() {
                    return Ok(());
                }
                format!("bit {bit} of its persistent memory")
            }
            _ => {
                let dir = if at_checkpoint {
                    crate::storage::CHECKPOINT_DIR
                } else {
                    crate::storage::LOG_DIR
                };
                let disk = &self.nodes[i].disk;
                let Some(newest) = disk
                    .paths()
                    .into_iter()
                    .filter(|p| p.starts_with(dir))
                    .filter(|p| {
                        let name = p.to_string_lossy();
                        name.ends_with(".log") || name.ends_with(".ckpt")
                    })
                    .max()
                else {
                    return Ok(());
                };
                // Where the data ends: a preallocated log segment is zeros
                // after its newest record.
                let len = disk
                    .raw_contents(&newest)
                    .and_then(|raw| raw.iter().rposition(|b| *b != 0))
                    .map_or(0, |last| last as u64 + 1);
                if len == 0 {
                    return Ok(());
                }
                // The newest records: the last 4 KiB of data.
                let from = len.saturating_sub(4096);
                let bit = self.rng.gen_range(from * 8..len * 8);
                if disk.flip_bit(&newest, bit).is_err() {
                    return Ok(());
                }
                format!("bit {bit} of {}", newest.display())
            }
        };
        self.faults.media_corruptions += 1;
        self.trace(|| format!("CORRUPT {id}: flipped {what}"));
        self.crash(i)
    }

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
                self.nodes[i].joining = true;
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
    pub(crate) fn operator_ask(&mut self) -> Result<(), Failure> {
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
            self.stability.excuse(self.now);
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
        let now = self.nodes[l].local(self.now);
        let Some(run) = self.nodes[l].run.as_mut() else {
            return Ok(());
        };
        self.faults.reconfiguration_calls += 1;
        let result = run.node.change_configuration(now, target.clone());
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
                    crate::checker::FailureKind::ApiContract,
                    format!("{id} refused membership {target:?}: {e}"),
                ))
            }
        }
        self.drain(l)
    }

    fn set_partition(&mut self, groups: Option<Vec<u8>>, blocked: BTreeSet<(usize, usize)>) {
        self.note_cuts();
        self.net.partition_id += 1;
        self.net.groups = groups;
        self.net.blocked = blocked;
        self.note_cuts();
        let lasts = self
            .rng
            .gen_range(self.params.partition_min_us..=self.params.partition_max_us);
        let partition = self.net.partition_id;
        self.schedule(self.now.plus_micros(lasts), EventKind::Heal { partition });
    }

    /// Ends the fault phase: everything started so far runs, no partitions,
    /// no loss, no vetoes; the clients issue a few last requests.
    pub(crate) fn heal(&mut self) -> Result<(), Failure> {
        self.trace(|| "HEAL: liveness phase begins".to_string());
        if self.operator.is_some() {
            self.faults.changes_pending_at_heal += 1;
        }
        self.params = self.params.healed();
        self.note_cuts();
        self.net.partition_id += 1;
        self.net.groups = None;
        self.net.blocked.clear();
        for i in 0..self.nodes.len() {
            self.nodes[i].vetoed = false;
            self.nodes[i].paused_until = self.now;
            if !self.nodes[i].provisioned {
                continue;
            }
            if self.nodes[i].run.is_none() {
                self.start_replica(i)?;
            } else {
                let now = self.nodes[i].local(self.now);
                if let Some(run) = self.nodes[i].run.as_mut() {
                    run.node.set_can_become_primary(now, true);
                }
                self.drain(i)?;
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
        let chunk = self.nodes[0].timing.catchup_chunk.max(1) as u64;
        let behind = self
            .nodes
            .iter()
            .filter(|n| n.provisioned)
            .map(|n| {
                self.checker
                    .max_chosen()
                    .distance_since(n.run.as_ref().map_or(Slot::ZERO, |r| r.node.applied()))
            })
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
}
