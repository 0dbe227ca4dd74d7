//! Unit tests per role, driving small in-test clusters.

mod acceptor;
mod catchup;
mod election;
pub(crate) mod harness;
mod learner;
#[cfg(feature = "planted-bugs")]
mod planted;
mod prevote;
mod proposer;
mod props;
mod reads;
mod reconfig;
mod relinquish;
mod repair;
