//! paxos-kv: a replicated key-value node built on paxos.
pub mod kv;
pub mod lincheck;
pub mod resp;
