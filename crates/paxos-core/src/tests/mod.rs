//! Unit tests per role, driving small in-test clusters.

mod acceptor;
mod catchup;
mod election;
pub(crate) mod harness;
mod learner;
mod proposer;
mod props;
mod relinquish;
