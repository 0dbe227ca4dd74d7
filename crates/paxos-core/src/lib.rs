//! paxos-core: the multi-Paxos protocol as a deterministic, sans-IO state machine.
//!
//! (Being built; see ARCHITECTURE.md.)
pub mod batch;
mod types;
pub use types::*;
