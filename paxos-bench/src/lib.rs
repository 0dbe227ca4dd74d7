//! paxos-bench: cluster benchmarks for paxos-kv and the etcd comparison.
//!
//! `cargo xtask bench` builds paxos-kv and this crate in release mode and runs
//! the `paxos-bench` binary, which starts a 3-replica cluster as separate
//! processes on loopback, offers closed-loop load over the Redis protocol
//! ([`loadgen`]), prints ops/s with p50/p99/p999 latency and the per-stage
//! latency breakdown reported by the leader, the CPU time per operation of
//! every process ([`cpu`]), and optionally runs etcd with the
//! same workload in the same run ([`etcd`]). Every sweep is saved as data
//! ([`sweep`], `sweep-<storage>.json`) and drawn as latency against
//! throughput ([`sweepplot`], `sweep-<storage>.svg`); `paxos-bench plot
//! --from a.json,b.json --out c.svg` draws saved sweeps on one chart.
//! `--redis-benchmark TESTS`
//! drives the leader with `redis-benchmark` instead ([`redisbench`]).
//!
//! With `--keys N` the binary runs the scale scenario instead ([`scale`]):
//! bulk load and steady writers ([`keyload`]) timed per write
//! ([`timeline`]), checkpoints and transfers read from the node logs
//! ([`nodelog`]), RSS per node ([`procmem`]) and an SVG plot ([`plot`]).
//!
//! Invariants: numbers come from measured runs; an error reply is never
//! counted as a completed operation; every process the benchmark starts is
//! stopped when it ends.

pub mod cluster;
pub mod cpu;
pub mod etcd;
pub mod keyload;
pub mod loadgen;
pub mod nodelog;
pub mod plot;
pub mod procmem;
pub mod redisbench;
pub mod scale;
pub mod sweep;
pub mod sweepplot;
pub mod timeline;
