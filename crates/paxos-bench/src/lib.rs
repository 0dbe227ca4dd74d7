//! paxos-bench (being built).
