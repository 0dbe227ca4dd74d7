//! paxos-core: the multi-Paxos protocol as a deterministic, sans-IO state machine.
//!
//! (Being built; see docs/design/core-api.md.)
pub mod batch;
pub mod codec;
mod config;
mod message;
mod replica;
mod types;

pub use config::{Config, ConfigError};
pub use message::Message;
#[cfg(feature = "planted-bugs")]
pub use replica::PlantedBug;
pub use replica::{Action, PersistToken, ProposeError, Replica, Role, Status};
pub use types::*;

#[cfg(test)]
mod tests;
