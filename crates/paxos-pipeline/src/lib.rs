//! paxos-pipeline (being built).
