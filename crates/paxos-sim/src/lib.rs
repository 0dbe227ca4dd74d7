//! paxos-sim (being built).
