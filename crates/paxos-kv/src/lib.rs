//! paxos-kv (being built).
