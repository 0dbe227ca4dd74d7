//! paxos-kv: a replicated key-value node built on paxos, and the
//! `paxos-kv` binary (`node`, `init`, `demo`, and the operator commands
//! `add-node`, `remove-node`, `transfer-leader`, `members`).
//!
//! # Role
//!
//! This crate composes the engine into a service: a replica driver
//! ([`node`]) owns one `paxos_core::Replica` and connects it to a durable log
//! (paxos-log's file log, paxos-nvm's persistent-memory log, or the
//! non-durable [`memstore`]), to peers over paxos-net's mutually
//! authenticated QUIC transport, to client requests batched through
//! paxos-pipeline's submit queue, and to a state machine ([`kv::KvStore`]
//! behind the RSL-like [`paxos_node::StateMachine`] trait). Clients speak RESP2
//! ([`resp`], [`server`]) with Redis's commands and error texts: key-space
//! commands are validated and encoded by [`command`]; writes are executed
//! through the log, reads skip it ([`node`] has how), connection-level ones (`HELLO`, `CLIENT`, `CONFIG GET`,
//! `COMMAND`) are answered per connection by [`session`]; [`glob`] matches
//! Redis patterns. [`node::Replica`] is the embedding API.
//! [`lincheck`] checks recorded histories for linearizability, [`procs`]
//! runs multi-process clusters for the demo and the fault tests, and
//! [`workload`] is their recording client load.
//! [`membership`] keeps the replicated address book and the last applied
//! reconfiguration (in the state machine and its checkpoints) and makes the
//! transport's peer set follow membership changes; [`admin`] is the
//! operator command set (`PAXOS.ADDNODE` and friends) and its CLI side.
//! The server bounds what clients make a node hold: [`reply_limits`]
//! decides (per-client output limits, the node-wide total, the pipelining
//! window, when to trim the heap), [`client_registry`] counts and sweeps,
//! [`reply_chain`] writes replies without copying them, and
//! [`stored_value`] is the table's 8-byte value handle (owned by
//! [`keymap`]'s written rules, so a checkpoint's shard copy shares values
//! without touching them), which lets a GET's reply of a large value share
//! the stored bytes instead of copying them; [`fdlimit`] makes
//! room for `max_clients` in the open-file limit. [`metrics`] serves
//! Prometheus `GET /metrics` on `metrics_addr` from what the loop and the
//! server publish.
//!
//! # Invariants
//!
//! - **Exactly one outcome per request.** Every submitted request is
//!   completed with its output once its decree is applied, or aborted:
//!   `NotPrimary` only if it was never proposed (safe to retry elsewhere),
//!   "outcome unknown" if it was proposed and this replica lost track of it.
//! - **Acknowledge only what is chosen.** A client hears success only after
//!   its decree was chosen (the core sends acceptances only after the
//!   storage reported them durable) and applied here.
//! - **Linearizable reads.** Reads skip the log: the leader answers them
//!   after confirming with a quorum that it still leads (or within a lease
//!   bounded by the configured clock drift), from a state that includes
//!   every write acknowledged before they were sent. Replica reads
//!   (`READONLY`) are never older than what their connection has seen.
//! - **Deterministic state machine.** Applying the same decrees gives the
//!   same outputs and the same snapshot bytes on every replica; a malformed
//!   request yields the same error everywhere and changes nothing.
//! - **Bounded.** Submit queue, per-connection pipelining, RESP frame sizes,
//!   connection count, batch size and the in-flight window are all bounded,
//!   and so are the reply bytes a node holds for its clients, per client and
//!   in total ([`reply_limits`], [`client_registry`]): a client that does not
//!   read its replies is disconnected, idle ones after a timeout.
//! - **No panics on input.** RESP bytes, decoded requests, peer messages,
//!   snapshots and configuration files are validated and rejected with
//!   errors; tests feed each of them arbitrary bytes.
//! - **Crash-stop on storage failure.** A replica whose log cannot persist
//!   stops rather than acknowledge anything.
//! - **No planted bugs in production.** A release build of the binary that
//!   contains paxos-core's `planted-bugs` code refuses to start
//!   ([`build_guard`]).
pub mod admin;
pub mod build_guard;
pub mod client;
pub mod client_registry;
pub mod command;
pub mod config;
pub mod demo;
pub mod fdlimit;
pub mod glob;
pub mod hugepages;
pub mod keymap;
pub mod kv;
pub mod launch;
pub mod lincheck;
pub mod malloc_arena;
pub mod membership;
pub mod memstore;
pub mod metrics;
pub mod node;
pub mod procs;
pub mod reply_chain;
pub mod reply_limits;
pub mod resp;
pub mod server;
pub mod session;
/// Latency breakdown of the write path (written by the integrator): the node
/// stamps each `stages::Point` and `INFO latency` renders it.
pub mod stages;
pub mod stored_value;
pub mod submit_unit;
pub mod workload;
