//! Unit tests of the node, driven through the deterministic cluster in
//! [`harness`]: each scenario scripts the network, storage and time, and
//! checks the effects the nodes emit.

mod harness;

mod checkpoints;
mod directory;
mod harness_checks;
mod log_full;
mod malformed;
mod ordered_reads;
mod reads;
mod requests;
mod transfer;
