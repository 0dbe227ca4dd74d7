//! paxos-kv: a replicated key-value node built on paxos.
pub mod kv;
pub mod resp;
