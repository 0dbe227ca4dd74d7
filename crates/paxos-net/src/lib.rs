//! paxos-net (being built).
