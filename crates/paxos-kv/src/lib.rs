//! paxos-kv: a replicated key-value node built on paxos.
pub mod client;
pub mod config;
pub mod demo;
pub mod kv;
pub mod launch;
pub mod lincheck;
pub mod memstore;
pub mod node;
pub mod procs;
pub mod resp;
pub mod server;
