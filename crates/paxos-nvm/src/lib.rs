//! paxos-nvm (being built).
