//! paxos-log (being built).
