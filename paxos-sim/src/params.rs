//! Per-seed fault parameters ("swarm testing").
//!
//! Every seed draws its own fault mix: some seeds run a lossy network with
//! rare crashes, others a clean network with a leader that is isolated every
//! few hundred milliseconds, others a slow disk and frequent crashes while
//! persists are outstanding. Different bugs need different weather, and one
//! fixed mix tends to hide the bugs that need a fault to be rare (a quiet
//! period long enough for a leader to commit) or frequent (two crashes close
//! together). All values are drawn from the seed, so they are reproducible.

use rand::rngs::SmallRng;
use rand::Rng;

/// How often each kind of fault happens in one run, and how the simulated
/// network and disks behave. Times are in simulated microseconds.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultParams {
    /// Probability that one message is lost.
    pub loss: f64,
    /// Probability that one message is delivered twice.
    pub duplicate: f64,
    /// Shortest one-way network delay.
    pub delay_min_us: u64,
    /// Longest ordinary one-way network delay. Delays are drawn uniformly,
    /// so messages on one link overtake each other (reordering).
    pub delay_max_us: u64,
    /// Probability that a message is held back much longer than usual.
    pub slow_message: f64,
    /// Extra delay of a slow message, at most.
    pub slow_extra_us: u64,
    /// Shortest time a persist takes.
    pub persist_min_us: u64,
    /// Longest time a persist takes.
    pub persist_max_us: u64,
    /// Mean time between fault injections ("chaos" events).
    pub chaos_mean_us: u64,
    /// Relative weights of the fault kinds picked at each chaos event.
    pub weights: FaultWeights,
    /// Shortest downtime of a crashed replica before it restarts.
    pub downtime_min_us: u64,
    /// Longest downtime.
    pub downtime_max_us: u64,
    /// Shortest life of a partition before it heals.
    pub partition_min_us: u64,
    /// Longest life of a partition.
    pub partition_max_us: u64,
    /// Whether a crash may leave a prefix of the entries of an unacknowledged
    /// persist on disk (a torn multi-entry write), not only whole persists.
    pub torn_persists: bool,
    /// Probability that a message hop also feeds a corrupted copy of the
    /// message to the decoder (which must return an error, never panic; the
    /// corrupted copy is not delivered).
    pub codec_fuzz: f64,
    /// The core's pipeline window (1 is RSL's one-decree-in-flight mode).
    pub pipeline_window: usize,
    /// Committed decrees each replica keeps in memory for catch-up. Small
    /// values push lagging replicas into state transfer.
    pub retain_decrees: usize,
    /// paxos-core's `retain_bytes` (a batch here is at most 1 KiB, so the
    /// small values make the byte bound, not the decree bound, decide).
    pub retain_bytes: usize,
    /// Take a checkpoint (and compact below it) every this many applied
    /// slots (0: never; restarts then re-apply from slot 1).
    pub checkpoint_every: u64,
    /// paxos-node's `checkpoint_every_bytes` (0: decrees only).
    pub checkpoint_every_bytes: u64,
    /// One replica (at most) has a faulty medium: transient bit flips and
    /// read errors, latent unreadable sectors and misdirected writes in the
    /// background, and corruption of its newest records now and then.
    /// Never more than one: the protocol tolerates the loss of one
    /// replica's data, not of a quorum's.
    pub faulty_medium: bool,
    /// Mean time between submissions of one client.
    pub client_interval_us: u64,
    /// Most requests one client keeps outstanding.
    pub client_outstanding: usize,
    /// Most requests per batch a client builds.
    pub client_batch: usize,
}

/// Relative weights of the chaos actions. A weight of 0 disables a kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultWeights {
    /// Crash a random replica (or, half the time, the leader).
    pub crash: u32,
    /// Crash the replica with the most persists outstanding: a crash after a
    /// write was issued but before it was acknowledged.
    pub crash_persisting: u32,
    /// Split the replicas into two random groups.
    pub partition: u32,
    /// Cut the leader off from everyone.
    pub isolate_leader: u32,
    /// Block single directions of random links (asymmetric faults).
    pub one_way: u32,
    /// Ask the leader to step down.
    pub relinquish: u32,
    /// Toggle a replica's CanBecomePrimary veto.
    pub veto: u32,
    /// Redraw loss and duplication rates.
    pub weather: u32,
    /// Freeze a replica's process (a GC or VM pause): it handles nothing
    /// for a while, then resumes with a backlog, unaware time passed.
    pub pause: u32,
    /// Deliver a few messages from anywhere in the run's past again:
    /// stale ballots, duplicate `Accepted` and `Promise`, old catch-up
    /// answers, arriving very late.
    pub replay: u32,
    /// Corrupt the faulty replica's newest log records or checkpoint on
    /// its medium, and crash it (0 unless the seed has a faulty replica).
    pub corrupt: u32,
    /// Ask the leader to change the membership (an operator's
    /// `change_configuration`, retried until it is in force). Drawn apart
    /// from the other weights (see [`FaultParams::sample_reconfiguration`]):
    /// 0 also keeps the spare replicas out of the run.
    pub reconfigure: u32,
}

impl FaultWeights {
    /// The sum of all weights.
    pub fn total(&self) -> u32 {
        self.crash
            + self.crash_persisting
            + self.partition
            + self.isolate_leader
            + self.one_way
            + self.relinquish
            + self.veto
            + self.weather
            + self.pause
            + self.replay
            + self.corrupt
            + self.reconfigure
    }
}

fn pick<T: Copy>(rng: &mut SmallRng, choices: &[T]) -> T {
    choices[rng.gen_range(0..choices.len())]
}

/// A fault weight that is off in about a quarter of the seeds.
fn weight(rng: &mut SmallRng, max: u32) -> u32 {
    if rng.gen_bool(0.25) {
        0
    } else {
        rng.gen_range(1..=max)
    }
}

impl FaultParams {
    /// Draws one seed's fault mix.
    pub fn sample(rng: &mut SmallRng) -> FaultParams {
        let delay_min_us = pick(rng, &[20, 100, 500]);
        let delay_max_us = delay_min_us + pick(rng, &[200, 2_000, 10_000]);
        let persist_min_us = pick(rng, &[10, 100, 1_000]);
        let persist_max_us = persist_min_us + pick(rng, &[100, 2_000, 20_000]);
        let downtime_min_us = pick(rng, &[1_000, 50_000]);
        let partition_min_us = pick(rng, &[20_000, 100_000]);
        let mut weights = FaultWeights {
            crash: weight(rng, 10),
            crash_persisting: weight(rng, 10),
            partition: weight(rng, 10),
            isolate_leader: weight(rng, 10),
            one_way: weight(rng, 5),
            relinquish: weight(rng, 5),
            veto: weight(rng, 3),
            weather: weight(rng, 3),
            pause: weight(rng, 5),
            replay: weight(rng, 6),
            corrupt: 0,
            reconfigure: 0,
        };
        if weights.total() == 0 {
            weights.crash = 1;
        }
        FaultParams {
            loss: pick(rng, &[0.0, 0.0, 0.01, 0.05, 0.2]),
            duplicate: pick(rng, &[0.0, 0.01, 0.05, 0.2]),
            delay_min_us,
            delay_max_us,
            slow_message: pick(rng, &[0.0, 0.01, 0.05]),
            slow_extra_us: pick(rng, &[50_000, 300_000]),
            persist_min_us,
            persist_max_us,
            chaos_mean_us: pick(rng, &[20_000, 60_000, 150_000]),
            weights,
            downtime_min_us,
            downtime_max_us: downtime_min_us + pick(rng, &[10_000, 200_000, 1_000_000]),
            partition_min_us,
            partition_max_us: partition_min_us + pick(rng, &[100_000, 1_000_000]),
            torn_persists: rng.gen_bool(0.5),
            codec_fuzz: pick(rng, &[0.0, 0.02, 0.1]),
            pipeline_window: pick(rng, &[1, 2, 4, 8, 32]),
            retain_decrees: pick(rng, &[64, 512, 4096]),
            checkpoint_every: pick(rng, &[0, 0, 10, 50]),
            faulty_medium: false,
            client_interval_us: pick(rng, &[500, 2_000, 10_000]),
            client_outstanding: pick(rng, &[1, 4, 16]),
            client_batch: pick(rng, &[1, 3, 8]),
            // Drawn last, so that the draws above are those of older
            // binaries and regression seeds keep their scenario.
            retain_bytes: pick(rng, &[4 << 10, 64 << 10, 64 << 20]),
            checkpoint_every_bytes: pick(rng, &[0, 0, 16 << 10]),
        }
    }

    /// Decides whether this seed has a replica with a faulty medium, and
    /// how often its newest records are corrupted. Drawn from its own
    /// generator, like the membership changes.
    pub fn sample_media_faults(&mut self, rng: &mut SmallRng) {
        self.faulty_medium = rng.gen_bool(0.5);
        self.weights.corrupt = if self.faulty_medium {
            rng.gen_range(1..=6)
        } else {
            0
        };
    }

    /// Decides whether this seed changes membership, and how often. Drawn
    /// from its own generator after everything else, so that a seed without
    /// reconfiguration runs exactly as it did before reconfiguration existed
    /// (its old failures still reproduce). `forced` overrides the draw.
    pub fn sample_reconfiguration(&mut self, rng: &mut SmallRng, forced: Option<bool>) {
        let drawn = rng.gen_bool(0.5);
        let weight = rng.gen_range(2..=12);
        self.weights.reconfigure = if forced.unwrap_or(drawn) { weight } else { 0 };
    }

    /// A calm network for the liveness phase: nothing lost or duplicated and
    /// bounded delays. Disk speed is kept.
    pub fn healed(&self) -> FaultParams {
        FaultParams {
            loss: 0.0,
            duplicate: 0.0,
            slow_message: 0.0,
            codec_fuzz: 0.0,
            ..self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn sampled_params_are_sane_and_reproducible() {
        for seed in 0..200 {
            let a = FaultParams::sample(&mut SmallRng::seed_from_u64(seed));
            let b = FaultParams::sample(&mut SmallRng::seed_from_u64(seed));
            assert_eq!(a, b);
            assert!(a.delay_min_us < a.delay_max_us);
            assert!(a.persist_min_us < a.persist_max_us);
            assert!(a.downtime_min_us < a.downtime_max_us);
            assert!(a.partition_min_us < a.partition_max_us);
            assert!(a.weights.total() > 0);
            assert!((0.0..1.0).contains(&a.loss));
            assert!(a.pipeline_window >= 1);
        }
    }
}
