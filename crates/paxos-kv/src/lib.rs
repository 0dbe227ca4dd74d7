//! paxos-kv: a replicated key-value node built on paxos.
pub mod config;
pub mod kv;
pub mod lincheck;
pub mod memstore;
pub mod resp;
