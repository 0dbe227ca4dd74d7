//! paxos-sim: a deterministic simulator that runs N real
//! [`paxos_core::Replica`]s under injected faults and checks that they stay
//! safe, and that they converge once the faults stop (in the style of
//! TigerBeetle's VOPR).
//!
//! # Determinism
//!
//! One `u64` seed determines the whole run. All randomness comes from one
//! `SmallRng` seeded with it (the fault mix, the network, the disks, the
//! clients, and the seeds handed to each `Replica::new`); time is simulated
//! ([`paxos_core::Time`], microseconds) and advanced by a discrete-event
//! queue ordered by `(time, insertion sequence)`; every map whose order can
//! influence behaviour is a `BTreeMap`. Every processed event and every
//! replica action is fed into an FNV-1a digest ([`RunReport::digest`]): two
//! runs of one seed produce the same digest (tested in `tests/determinism.rs`).
//!
//! # Fault model
//!
//! Each seed first draws its own fault mix ([`FaultParams`], "swarm
//! testing"), then a fault phase of `steps` events runs with:
//!
//! - **Network**: every message is encoded with `paxos_core::codec` on send
//!   and decoded on delivery (so the codec is on every hop). Messages are
//!   lost, duplicated, delayed by a random amount (so they reorder), and now
//!   and then held back for hundreds of milliseconds. Partitions come and go:
//!   random two-group splits, isolation of the current leader, and one-way
//!   link cuts; a partition also drops messages already in flight. Some
//!   hops also feed a corrupted copy to the decoder, which must return an
//!   error or a message, never panic (the corrupted copy is not delivered,
//!   since the protocol does not claim to survive undetected corruption).
//! - **Disks**: each replica has simulated durable storage, a
//!   [`paxos_core::DurableState`] built with `DurableState::apply`. A
//!   `Persist` completes after a random delay, in FIFO order, and only then
//!   is `on_persisted` called.
//! - **Crashes**: a crash drops the replica object and all persists that
//!   were not acknowledged, except that any prefix of them may have reached
//!   the disk (a crash between write and acknowledgement), and with torn
//!   writes enabled a prefix of the entries of the next one too. A restart
//!   builds a new `Replica` from the durable state with `applied_through = 0`
//!   and an empty state machine that re-applies from slot 1. Crashes target
//!   random replicas, the leader, or the replica with the most persists
//!   outstanding; usually at most a minority is down, sometimes one more.
//! - **Checkpoints and state transfer**: in some seeds each replica's state
//!   machine takes a checkpoint every few slots (durable at once) and calls
//!   `compact`; a restart then loads the checkpoint
//!   (`applied_through = checkpoint`). Seeds also vary `retain_decrees`, so
//!   lagging replicas may find that no peer still holds what they miss;
//!   when a replica reports `needs_snapshot`, the simulator copies the state
//!   machine of the most advanced live peer and restarts the replica on it
//!   (RSL's CopyStateFromReplica).
//! - **Leadership churn**: the leader is asked to `relinquish_primary`, and
//!   replicas' `CanBecomePrimary` veto is toggled (at most a minority vetoed).
//! - **Membership changes** (in about half the seeds, or as
//!   `--reconfigure always|never` says): the pool holds two spare replicas
//!   beyond the initial voters (3 + 2, or 5 + 2). A chaos action hands an
//!   operator a new voter set drawn from the pool: mostly the same size
//!   with one voter replaced (half of those in the shape of RSL's walk
//!   ABC -> BCD -> CDE -> ADE: drop the lowest voter, add the next id after
//!   the highest, cyclically), sometimes one voter more or fewer (between
//!   `max(n - 1, 3)` and `n + 1` voters). A spare starts when a change first
//!   needs it, with an empty disk and a membership in which it is a learner
//!   (the voters of that time). The operator asks whoever leads
//!   (`change_configuration`) every 20..100 ms until the target is chosen;
//!   `NotLeader` and `ConfigChangeInFlight` just mean "ask again". Only one
//!   change is pending at a time. Removed replicas keep running (they are
//!   crashed, restarted and partitioned like the others), and may be added
//!   back later with their old disk. Every other fault stays on meanwhile.
//!   Each simulated state machine remembers `(slot, ballot, membership)` of
//!   the last `Reconfigure` it applied, keeps it in its checkpoint, hands it
//!   over in a state transfer, and a restart passes it to the core as
//!   `Config::membership` / `membership_ballot` (the initial membership, or
//!   a spare's joining one, and `Ballot::ZERO` if none).
//! - **Clients**: three clients keep a bounded window of requests with
//!   unique ids, batch them with `paxos_core::batch` and `propose` them to the
//!   replica they believe leads; `NotLeader` redirects them, `WindowFull`
//!   and `ConfigChangeInFlight` make them retry at their next tick, and
//!   unacknowledged requests are retried after a timeout.
//!
//! Timers stay inside the timing envelope (the election timeout is at least
//! eight times the longest ordinary network delay); slow messages still
//! exceed it.
//!
//! Caps on simultaneous faults (at most a minority down, usually) are taken
//! against the voters of the newest chosen membership.
//!
//! Then the **liveness phase** heals everything (every replica started so
//! far restarted, partitions removed, no loss or duplication, no vetoes).
//! Each client issues a few new requests (probes) and then stops. A
//! membership change still pending at the heal is **not** abandoned: the
//! operator keeps asking until it is in force, and the run requires it to
//! complete (a change that cannot finish in a healthy cluster is a liveness
//! bug). Within a bounded simulated time (10 s, plus the time the replica
//! furthest behind needs at one catch-up chunk per round trip) the change
//! must be chosen, a
//! voter of the final membership must lead, every outstanding and new
//! request must be acknowledged, and every member of the final membership
//! (voters and learners) must run and apply through the highest
//! acknowledged slot and the slot that installed that membership. Removed
//! replicas and spares never used are not required to catch up. Otherwise
//! the seed fails with a liveness violation that lists each replica's role,
//! ballot, commit and applied index, membership and pending change.
//!
//! # Checkers
//!
//! After every action (see [`checker`]): **agreement** (one global
//! `slot -> value` map kept across crashes and restarts; no two applies of a
//! slot differ), **validity** (an applied batch is byte for byte a batch a
//! client proposed, made of requests clients issued; `Noop`/`Reconfigure`
//! allowed), **no lost acknowledged request** (an acknowledgement points at
//! the slot that holds the request, agreement pins it there, and the
//! liveness phase requires every replica to reach it), **contiguous
//! applies** per replica incarnation, **one leader per ballot**,
//! **durability before reply** (an acceptor's `Promise` or `Accepted` may
//! only be sent once the promise or accepted value it reports is on the
//! simulated disk), **quorum of the governing voters** (from the chosen
//! `Reconfigure` decrees the checker knows which membership governs each
//! slot; every vote that reaches a simulated disk is recorded when its
//! persist completes, or when a crash leaves it on disk, and never erased;
//! whenever any replica applies a value at a slot, one ballot must hold
//! durable votes for it from a quorum of *that slot's* voters, so votes of
//! learners, spares and removed replicas never count), **chosen implies a
//! durable quorum now** (at every apply, a quorum of the governing voters'
//! current disks holds that value there or has truncated the slot under a
//! checkpoint), **membership adoption** (a replica reports a membership
//! installed at slot s only if s holds that `Reconfigure`), the codec
//! round trip (decode then encode gives the same bytes; message size limit),
//! the core's API contract (increasing persist tokens, status of itself,
//! known peers) and, because this crate enables `paxos-contracts/contracts`,
//! every contract inside paxos-core. A panic in the core is caught and
//! reported as a failure of that seed.
//!
//! # Reproducing a seed
//!
//! `paxos-sim --seeds N` runs seeds `0..N` (or `S..S+N` with `--seed S`) and
//! prints, for every failing seed, the command that reruns it alone, e.g.
//! `cargo xtask sim --seed 1234` (which runs
//! `cargo run --release -p paxos-sim -- --seed 1234`). Add `-v` to print
//! every event of that run.
//!
//! # Invariants of this crate
//!
//! - The simulator never reads a clock, the environment or an unseeded RNG.
//! - Work is bounded: each client has a fixed request window; the event
//!   queue holds only what the replicas sent, persisted or armed (their own
//!   bounds apply), one pending tick per client, one chaos event and at most
//!   one operator retry (timer events superseded by a re-arm are dropped
//!   when they come due); the fault phase runs a fixed number of events and
//!   the liveness phase has both a simulated-time deadline and an event cap,
//!   so a run always ends.
//! - A core failure never takes the process down: panics are caught per run
//!   and reported with the seed.
//! - The simulator only uses paxos-core's public API (plus `plant_bug` via
//!   the test hook).
//! - A seed drawn without membership changes runs exactly as before they
//!   existed (no spares; the decision is drawn from a generator of its own),
//!   so old findings still reproduce.

pub mod checker;
pub mod client;
pub mod digest;
mod faults;
mod network;
pub mod params;
mod replica;
pub mod runner;
mod show;
pub mod sim;
pub mod state_machine;
pub mod storage;

pub use checker::{Failure, FailureKind};
pub use params::{FaultParams, FaultWeights};
pub use replica::Timing;
pub use runner::{run_many, RunOptions, Summary};
pub use sim::{
    install_panic_capture, run, FaultCounts, NodeHook, RunReport, SimConfig, SimNode, DEFAULT_STEPS,
};
pub use state_machine::StateMachineBug;

/// Planted bugs by name, for `paxos-sim --plant-bug NAME` (feature
/// `planted-bugs`).
#[cfg(feature = "planted-bugs")]
pub mod planted {
    use paxos_core::PlantedBug;

    /// Every planted bug. The match in [`name`] is exhaustive, so a new
    /// variant fails to compile until it is listed there.
    pub const ALL: [PlantedBug; 5] = [
        PlantedBug::SkipAdoptHighestAccepted,
        PlantedBug::AckBeforePersist,
        PlantedBug::QuorumHalf,
        PlantedBug::ApplyUncheckedBallot,
        PlantedBug::ProposeAboveUnchosenReconfigure,
    ];

    /// The CLI name of a planted bug.
    pub fn name(bug: PlantedBug) -> &'static str {
        match bug {
            PlantedBug::SkipAdoptHighestAccepted => "skip-adopt-highest-accepted",
            PlantedBug::AckBeforePersist => "ack-before-persist",
            PlantedBug::QuorumHalf => "quorum-half",
            PlantedBug::ApplyUncheckedBallot => "apply-unchecked-ballot",
            PlantedBug::ProposeAboveUnchosenReconfigure => "propose-above-unchosen-reconfigure",
        }
    }

    /// The planted bug called `name`, if any.
    pub fn by_name(name: &str) -> Option<PlantedBug> {
        ALL.into_iter().find(|b| self::name(*b) == name)
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn names_round_trip() {
            for bug in super::ALL {
                assert_eq!(super::by_name(super::name(bug)), Some(bug));
            }
            assert_eq!(super::by_name("no-such-bug"), None);
        }
    }
}
