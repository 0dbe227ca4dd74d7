//! paxos-core: the multi-Paxos protocol as a deterministic, sans-IO state
//! machine, in the style of quinn-proto and raft-rs's `RawNode`.
//!
//! A [`Replica`] is acceptor, proposer (leader) and learner in one. It never
//! reads a clock, touches a socket or a disk, spawns a thread or draws
//! randomness other than from the seed it was given: time comes in as
//! [`Time`], input as [`Message`]s and calls, and everything it wants done
//! comes out as [`Action`]s (send, persist, apply, status changed) that the
//! driver (the simulator in paxos-sim, or the node in paxos-kv) carries out
//! in order.
//!
//! # What it does
//!
//! - **Multi-Paxos with pipelining.** Up to `pipeline_window` decrees are in
//!   phase 2 at once (RSL allows one). Each decree carries a batch of
//!   requests ([`batch`]).
//! - **Phase 1 over every unchosen slot.** A new leader learns, from a quorum
//!   of acceptors and in bounded chunks, every accepted entry above its commit
//!   index, re-proposes the highest-ballot value of each slot and fills gaps
//!   with [`Value::Noop`]; it reports itself leader only once that recovered
//!   window is chosen.
//! - **Durability before acknowledgement.** `Promise` and `Accepted` (also a
//!   leader's own vote) leave only after the persist they depend on was
//!   reported with [`Replica::on_persisted`].
//! - **Learning with proof.** A follower applies a slot only if it holds the
//!   value accepted in the ballot the leader names as committing it;
//!   otherwise it fetches the chosen decree from any peer that has it.
//! - **Election** by randomized timeouts, with RSL's `CanBecomePrimary` veto,
//!   and leadership hand-off by [`Replica::relinquish_primary`]. A voter
//!   campaigns only after a **pre-vote** that a quorum granted: nobody
//!   granting heard a live leader within its minimum election timeout
//!   (*leader stickiness*), and the candidate is not behind any of them. A
//!   leader that has not heard from a quorum for an election timeout steps
//!   down (*check-quorum*). So leadership changes only when a fault calls
//!   for it; the simulator fails a run on an unforced leader change.
//! - **Reads without a log write** (the `reads` module of the replica):
//!   [`Replica::read_index`] hands the announced leader's reads a
//!   [`ReadTicket`] (a heartbeat round and the commit index); once
//!   [`Replica::read_confirmed`] reports the round confirmed by a quorum,
//!   a read served from a state applied through the ticket's slot is
//!   linearizable, with no assumption about clocks. Reads that arrive
//!   while a round is out share the next one. With
//!   [`Config::read_lease`], a confirmed round also grants a lease of
//!   `duration * (1 - ρ)` from when it was *sent* ([`ReadLease`]: clock
//!   rates within `ρ = max_drift_ppm` of real time), during which
//!   [`Replica::lease_read_index`] answers without a round; a new leader
//!   proposes nothing, and so announces itself, only `duration * (1 + ρ)`
//!   after its phase 1. Beyond the drift bound a deposed leader may serve
//!   stale lease reads; ReadIndex does not depend on it. The design and
//!   how it compares with LeaseGuard are in `docs/design/reads.md`.
//! - **Catch-up** in chunks from any peer's retained decrees, and below a
//!   peer's in-memory log from its storage ([`Action::ReadDecrees`], answered
//!   through [`Replica::on_decrees_read`]) until a checkpoint truncated
//!   them; when nobody has them anymore, [`Status::needs_snapshot`] says so.
//! - **Bounded everything**: window, accept horizon, retained decrees (in
//!   count and in bytes), chunk
//!   sizes, message sizes, and a [`codec`] that rejects oversize counts.
//! - **Messages** ([`msg`]): [`Message`] has one tuple variant per message,
//!   wrapping a struct of the same name (`Message::Accept(msg::Accept {
//!   .. })`) that its handler takes whole. The structs stay behind the
//!   `msg::` path because `msg::Accepted` (the phase 2b message) and
//!   [`Accepted`] (an accepted log entry) would clash at the root.
//!
//! - **Reconfiguration** with [`Replica::change_configuration`]: new voters
//!   join as learners and are promoted once caught up; each change is a
//!   [`Value::Reconfigure`] decree of its own that governs the slots above
//!   it, and a leader proposes nothing above an unchosen one (invariant 10
//!   in the replica module argues quorum intersection across the change).
//!   A removed leader hands over to the most caught-up new voter.
//! - **Health**: [`Replica::peer_status`] reports per-peer connectivity,
//!   lag, last contact and, on the leader, the applied index each peer
//!   reported on its heartbeat acks (RSL's `GetReplicasInformation`).
//!
//! # Invariants
//!
//! The protocol invariants are written out at the top of the replica module
//! (`src/replica/mod.rs`) and checked: the safety-critical ones with plain
//! `assert!` (never two values at one slot and ballot; a committed slot's
//! value never changes; a promise never goes down), the costlier ones as
//! `paxos-contracts` invariants after every public call (applies are
//! contiguous and keep up with commits, in-flight slots are exactly the slots
//! above the commit index, the window is respected).
//!
//! # Liveness
//!
//! Once a quorum of voters is up, connected and not vetoed, and nobody
//! among them hears a leader, the quorum's most caught-up eligible voter is
//! granted a pre-vote by all of it (split grants retry on the next
//! randomized timeout, as split votes do in Raft) and completes phase 1,
//! in chunks if need be (see the election module). A leader keeps its role
//! while a quorum acknowledges it within an election timeout.
//!
//! # Planted bugs (feature `planted-bugs`)
//!
//! The simulator proves that its checkers can fail by planting known
//! protocol bugs (`Replica::plant_bug`, `PlantedBug`). That code exists
//! only with the `planted-bugs` feature: without it the bug flags, the
//! `plant_bug` method and the `PlantedBug` type are not compiled, and each
//! check in the protocol code is `#[cfg]`'d out or the constant `false`, so
//! a build without the feature pays nothing and contains none of it.
//!
//! The feature is enabled only by paxos-sim: by its dev-dependency (its
//! teeth tests) and by its own `planted-bugs` feature (`paxos-sim
//! --features planted-bugs --plant-bug NAME`). Cargo unifies features
//! across one build, though, so `cargo build --release --workspace
//! --all-targets` (or `cargo test --release --workspace`) compiles the
//! `paxos-kv` binary against a paxos-core *with* the feature. A Cargo
//! feature cannot be forbidden to a dependent, so the binary checks instead:
//! [`PLANTED_BUGS_COMPILED`] says whether this build has the code, and the
//! `paxos-kv` binary refuses to start, naming the cause and the fix, when
//! it is `true` in a build without `debug_assertions` (a release build).
//! Debug builds (the workspace's tests, which spawn the binary) may carry
//! it: nothing in paxos-kv ever calls `plant_bug`, so the bugs stay off.
//! Production binaries are built with `cargo build --release -p paxos-kv`,
//! which never enables the feature.
//!
//! # Example
//!
//! A three-replica cluster, driven by a tiny synchronous loop in which
//! storage completes every persist at once and the network delivers every
//! message in order:
//!
//! ```
//! use paxos_core::{Action, Config, DurableState, Membership, Message, Replica, ReplicaId, Role, Slot, Time, Value};
//! use std::collections::VecDeque;
//!
//! let members = Membership::with_voters(vec![ReplicaId(1), ReplicaId(2), ReplicaId(3)]);
//! let mut replicas: Vec<Replica> = (1..=3)
//!     .map(|i| Replica::new(Config::new(ReplicaId(i), members.clone()), DurableState::default(), Slot::ZERO, i as u64, Time(0)))
//!     .collect();
//! let mut applied: Vec<Vec<Value>> = vec![Vec::new(); 3];
//! let mut now = Time(0);
//!
//! // Carries out every pending action; returns when nothing is left to do.
//! let mut drive = |replicas: &mut Vec<Replica>, applied: &mut Vec<Vec<Value>>, now: Time| {
//!     let mut network: VecDeque<(ReplicaId, ReplicaId, Message)> = VecDeque::new();
//!     loop {
//!         for i in 0..replicas.len() {
//!             while let Some(action) = replicas[i].poll_action() {
//!                 match action {
//!                     Action::Send { to, msg } => network.push_back((replicas[i].status().id, to, msg)),
//!                     // A real driver writes `entries` durably first.
//!                     Action::Persist { token, .. } => replicas[i].on_persisted(now, token),
//!                     Action::Apply { value, .. } => applied[i].push(value),
//!                     Action::StatusChanged(_) => {}
//!                     // A real driver reads decrees below the in-memory log
//!                     // back from storage; this one keeps no storage.
//!                     Action::ReadDecrees { peer, from, .. } => {
//!                         replicas[i].on_decrees_read(now, peer, from, None)
//!                     }
//!                 }
//!             }
//!         }
//!         match network.pop_front() {
//!             Some((from, to, msg)) => replicas[(to.0 - 1) as usize].handle_message(now, from, msg),
//!             None => return,
//!         }
//!     }
//! };
//!
//! // Let time pass until an election timeout elects a leader.
//! let leader = loop {
//!     now = now.plus_micros(10_000);
//!     for r in replicas.iter_mut() {
//!         if r.next_timer().is_some_and(|t| t <= now) {
//!             r.handle_tick(now);
//!         }
//!     }
//!     drive(&mut replicas, &mut applied, now);
//!     if let Some(i) = replicas.iter().position(|r| r.status().role == Role::Leader) {
//!         break i;
//!     }
//! };
//!
//! // Propose a batch of two requests; it is chosen and applied by the leader.
//! let batch = paxos_core::batch::encode([&b"set x 1"[..], &b"set y 2"[..]]);
//! let slot = replicas[leader].propose(now, Value::Requests(batch.clone())).unwrap();
//! assert_eq!(slot, Slot(1));
//! drive(&mut replicas, &mut applied, now);
//! assert_eq!(applied[leader], vec![Value::Requests(batch.clone())]);
//!
//! // The next heartbeat tells the followers that slot 1 is chosen.
//! now = now.plus_micros(60_000);
//! replicas[leader].handle_tick(now);
//! drive(&mut replicas, &mut applied, now);
//! assert!(applied.iter().all(|a| a == &vec![Value::Requests(batch.clone())]));
//! ```

#![warn(missing_docs)]
pub mod batch;
pub mod codec;
mod config;
pub mod msg;
mod replica;
mod types;

pub use codec::CodecError;
pub use config::{Config, ConfigError, ReadLease, MAX_DRIFT_PPM};
pub use msg::Message;
#[cfg(feature = "planted-bugs")]
pub use replica::PlantedBug;

/// Whether this build of paxos-core contains the planted-bug code (feature
/// `planted-bugs`, possibly switched on by Cargo's feature unification).
/// Release binaries must refuse to run when it is `true`; see the crate
/// docs.
pub const PLANTED_BUGS_COMPILED: bool = cfg!(feature = "planted-bugs");
pub use replica::{
    Action, PeerStatus, PersistToken, ProposeError, ReadTicket, RepairProgress, Replica, Role,
    Status,
};
pub use types::*;

#[cfg(test)]
mod tests;
