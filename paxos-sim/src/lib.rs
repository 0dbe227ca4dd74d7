//! paxos-sim: a deterministic simulator that runs N whole replicas — the
//! real `paxos_node::Node` over the real `KvStore`, with paxos-log's real
//! file log (or paxos-nvm's real persistent-memory log) and checkpoint
//! store on simulated media — under injected faults, and checks that they
//! stay safe and converge once the faults stop (in the style of
//! TigerBeetle's VOPR, which runs the real replica on a simulated disk).
//!
//! # What runs for real
//!
//! Everything but the media, the network and time: paxos-core's replica,
//! paxos-node's proposal settling, decree framing, checkpoint scheduling,
//! chunked state transfer, membership directory and repair after storage
//! damage, paxos-log's `FileLog` (in its thread-free inline mode) and
//! `CheckpointStore`, paxos-nvm's `NvmStorage`, and the KV state machine
//! with its snapshots. The simulator is only their driver (it carries out
//! the node's effects, as paxos-kv's event loop does in production; see
//! `replica.rs`) and the fault injector. It keeps no copy of any of that
//! logic.
//!
//! # Determinism
//!
//! One `u64` seed determines the whole run. All randomness comes from
//! `SmallRng`s seeded from it (the fault mix, the network, the media, the
//! clients, and the seeds handed to each node); time is simulated
//! ([`paxos_core::Time`], microseconds) and advanced by a discrete-event
//! queue ordered by `(time, insertion sequence)`; the storage code runs on
//! the simulator's thread with no clock reads; every map whose order can
//! influence behaviour is a `BTreeMap`. Every processed event and every
//! replica output is fed into an FNV-1a digest ([`RunReport::digest`]): two
//! runs of one seed produce the same digest (tested in `tests/determinism.rs`).
//!
//! # Fault model
//!
//! Each seed first draws its own fault mix ([`FaultParams`], "swarm
//! testing"), then a fault phase of `steps` events runs with:
//!
//! - **Network**: every message is encoded by the real codecs on send and
//!   decoded on delivery. Messages are lost, duplicated, delayed by a random
//!   amount (so they reorder), now and then held back for hundreds of
//!   milliseconds, and **replayed** much later (a reservoir sample of the
//!   whole run's messages: stale ballots, duplicate `Accepted` and
//!   `Promise`, old catch-up answers). Partitions come and go: random
//!   two-group splits, isolation of the current leader, and one-way link
//!   cuts. Some hops also feed a corrupted copy to the decoders, which must
//!   return an error or a message, never panic (the copy is not delivered:
//!   the transport guarantees integrity).
//! - **Media**: each replica has its own simulated disk (paxos-log's
//!   `SimFs`) with a seeded latency model; about one in four keeps its log
//!   on simulated persistent memory (paxos-nvm's `SimRegion`) instead. A
//!   crash loses what was not synced (or flushed and fenced), keeps it, or
//!   keeps a torn prefix; a crash may also hit in the middle of a sync. In
//!   about half the seeds **one** replica (never more: the protocol
//!   tolerates the loss of one replica's data, not a quorum's) has a faulty
//!   medium: transient bit flips and read errors, latent unreadable sectors,
//!   misdirected writes, and now and then a bit flipped in its newest log
//!   records or checkpoint followed by a crash. Its storage salvages what it
//!   can vouch for and reports the damage; the node then repairs from its
//!   peers before it votes again (paxos-core's invariant 11).
//! - **Crashes and restarts**: the process and its memory are gone; a
//!   restart recovers from the medium with the production recovery code and
//!   restores the newest checkpoint. Crashes target random replicas, the
//!   leader, or the replica with the most appends not yet synced; usually at
//!   most a minority is down, sometimes one more.
//! - **Checkpoints and state transfer**: nodes checkpoint every few slots
//!   (in some seeds) and compact behind them; seeds vary how much log peers
//!   retain, so lagging replicas fetch decrees their peers read back from
//!   the log on their medium (below the peers' in-memory logs, after the
//!   medium's read latency; counted as "catch-up chunks served from disk"),
//!   or, behind a checkpoint, fetch the checkpoint chunk by chunk over the
//!   simulated network and install it in place.
//! - **Leadership churn**: relinquish requests, `CanBecomePrimary` vetoes
//!   (at most a minority), and process pauses.
//! - **Membership changes** (about half the seeds, or as `--reconfigure`
//!   says): two spare replicas beyond the initial voters; a simulated
//!   operator asks whoever leads for a new voter set (often RSL's walk
//!   ABC -> BCD -> CDE -> ADE) until it is in force.
//! - **Clients**: three clients run KV operations on a small key space
//!   through the node they believe leads — `SET` with values unique to the
//!   request (some with a TTL too long to lapse), `GET`, `DEL`, and
//!   `INCRBY` with unique deltas — and record a
//!   history: every attempt's call, and its return and reply if it got one.
//!   `NotPrimary` redirects them; requests whose outcome is unknown are
//!   retried as new attempts.
//!
//! - **Reads** (`reads.rs`): each seed draws whether `GET`s go through the
//!   log or through `Node::submit_read` with the nodes in ReadIndex or
//!   lease mode (`--reads`); then a share of them are follower reads
//!   (`AtLeast` the highest slot the client saw) sent to any replica.
//!   Clients that time out, and now and then others, ask a random replica
//!   who leads, so clients disagree about the leader during a failover.
//! - **Clocks**: every replica's clock runs at its own rate within the
//!   drift bound the nodes are configured with, or, with
//!   `--clock-drift beyond`, up to 90% off and changing during the run.
//! - **Time in decrees**: each replica's wall clock is 1.5 s off the next
//!   one's, so after a failover the new leader's decrees are often stamped
//!   earlier than the old one's; the KV store's expiry clock must stay
//!   monotonic and identical everywhere (the state digest covers it).
//!
//! Timers stay inside the timing envelope (the election timeout is at least
//! eight times the longest ordinary network delay); slow messages still
//! exceed it.
//!
//! Then the **liveness phase** heals everything (every replica restarted,
//! no partitions, loss or vetoes; each client issues a few probes and
//! stops). Within a bounded simulated time a pending membership change must
//! complete, a voter of the final membership must lead, every request must
//! be acknowledged, and every member must apply through the highest
//! acknowledged slot; otherwise the seed fails with a liveness violation
//! listing each replica's state.
//!
//! # Checkers
//!
//! After every step (see [`checker`]): **agreement**, **validity** (every
//! applied decree is framed by a node of the pool and holds only requests
//! clients issued), **contiguous applies**, **one leader per ballot**,
//! **durability before reply** (a `Promise` or `Accepted` only once what it
//! reports was synced), **quorum of the governing voters** (votes recorded
//! when synced, never erased; quorums computed by the checker itself, not
//! with `Membership::quorum`), **chosen implies a durable quorum** at every
//! apply, **membership adoption**, **acknowledgements point at slots that
//! hold the request**, **equal state-machine digests at equal applied
//! slots** (the real `KvStore`), **no unforced leader change** (a new leader
//! while the previous one was up, kept a steady quorum and was slowed by no
//! fault for two election timeouts; defined in `stability.rs`; counted in
//! [`FaultCounts::leader_changes`]), the codec round trip, the node's API
//! contract, every contract inside paxos-core and paxos-node,
//! **read freshness** (a linearizable read that skipped the log is answered
//! from a state holding every slot applied anywhere before it was called)
//! and **bounded staleness** of follower reads (against a reference state
//! per slot), both in `reads.rs`. At the end:
//! **linearizability** of the clients' whole history (paxos-kv's checker),
//! closed by a read of every key from a caught-up replica, so a lost
//! acknowledged write or a stale read fails the seed. Planted bugs in the
//! core (feature `planted-bugs`), in the state machine
//! ([`StateMachineBug`]) and in the driver (skipping the repair after
//! damage) prove each checker can fail (`tests/teeth.rs`).
//!
//! # Reproducing a seed
//!
//! `paxos-sim --seeds N` runs seeds `0..N` (or `S..S+N` with `--seed S`) and
//! prints, for every failing seed, the command that reruns it alone, e.g.
//! `cargo xtask sim --seed 1234`. Add `-v` to print every event of that run.
//!
//! # Invariants of this crate
//!
//! - The simulator never reads a clock, the environment or an unseeded RNG,
//!   and runs every replica on its own thread of control (no threads).
//! - Work is bounded: each client has a fixed request window; the fault
//!   phase runs a fixed number of events and the liveness phase has both a
//!   simulated-time deadline and an event cap, so a run always ends.
//! - A replica failure never takes the process down: panics are caught per
//!   run and reported with the seed.
//! - The simulator drives paxos-node only through its public API, the one
//!   paxos-kv's event loop uses.

pub mod checker;
pub mod client;
pub mod digest;
mod faults;
mod network;
pub mod params;
pub mod reads;
mod replica;
pub mod runner;
mod show;
pub mod sim;
mod stability;
pub mod state_machine;
pub mod storage;

pub use checker::{Failure, FailureKind};
pub use params::{FaultParams, FaultWeights};
pub use reads::{ClockDrift, ReadParams, SimReadMode};
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
    pub const ALL: [PlantedBug; 9] = [
        PlantedBug::SkipAdoptHighestAccepted,
        PlantedBug::AckBeforePersist,
        PlantedBug::QuorumHalf,
        PlantedBug::ApplyUncheckedBallot,
        PlantedBug::ProposeAboveUnchosenReconfigure,
        PlantedBug::SkipPreVote,
        PlantedBug::LeaseNoWait,
        PlantedBug::DiskChunkOffByOne,
        PlantedBug::ReadsAtOnce,
    ];

    /// The CLI name of a planted bug.
    pub fn name(bug: PlantedBug) -> &'static str {
        match bug {
            PlantedBug::SkipAdoptHighestAccepted => "skip-adopt-highest-accepted",
            PlantedBug::AckBeforePersist => "ack-before-persist",
            PlantedBug::QuorumHalf => "quorum-half",
            PlantedBug::ApplyUncheckedBallot => "apply-unchecked-ballot",
            PlantedBug::ProposeAboveUnchosenReconfigure => "propose-above-unchosen-reconfigure",
            PlantedBug::SkipPreVote => "skip-pre-vote",
            PlantedBug::LeaseNoWait => "lease-no-wait",
            PlantedBug::DiskChunkOffByOne => "disk-chunk-off-by-one",
            PlantedBug::ReadsAtOnce => "reads-at-once",
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
