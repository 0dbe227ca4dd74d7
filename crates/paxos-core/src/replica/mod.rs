//! The replica state machine (skeleton: public API only; behaviour follows).

use crate::config::Config;
use crate::message::Message;
use crate::types::{Ballot, DurableState, Membership, PersistEntry, ReplicaId, Slot, Time, Value};
use std::collections::VecDeque;

/// Identifies one `Action::Persist`. Issued in increasing order; storage
/// completes them in that order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PersistToken(pub u64);

/// What the driver must do next. Drain with [`Replica::poll_action`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send a message to a peer. Messages that depend on durable state are
    /// emitted only after the Persist they depend on was reported by
    /// `on_persisted`.
    Send {
        /// The peer.
        to: ReplicaId,
        /// The message.
        msg: Message,
    },
    /// Make these entries durable, in order, then call `on_persisted(token)`.
    /// Storage completes tokens in the order they were issued.
    Persist {
        /// The token to report.
        token: PersistToken,
        /// The entries, to be applied in order.
        entries: Vec<PersistEntry>,
    },
    /// The decree at `slot` is chosen: apply it. Emitted strictly in slot
    /// order, exactly once per slot per `Replica` instance, starting at
    /// `applied_through + 1`.
    Apply {
        /// The slot.
        slot: Slot,
        /// The ballot the replica holds the chosen value under.
        ballot: Ballot,
        /// The chosen value.
        value: Value,
    },
    /// Role, leader, membership or snapshot need changed.
    StatusChanged(Status),
}

/// The role of a replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Accepts the leader's proposals.
    Follower,
    /// Running phase 1, or leading but still re-proposing the recovered window.
    Candidate,
    /// Phase 1 done and the recovered window chosen: accepts proposals.
    Leader,
}

/// A snapshot of a replica's state, for the application and for tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// This replica.
    pub id: ReplicaId,
    /// Its role.
    pub role: Role,
    /// The highest ballot it promised.
    pub ballot: Ballot,
    /// The leader it follows (itself when `role == Leader`), if known.
    pub leader: Option<ReplicaId>,
    /// Every slot up to this one is chosen and its value known here.
    pub commit_index: Slot,
    /// Every slot up to this one was handed out in `Action::Apply` (or was
    /// covered by the state machine's checkpoint).
    pub applied_index: Slot,
    /// Decrees proposed by this leader and not yet chosen.
    pub in_flight: usize,
    /// The membership in force.
    pub membership: Membership,
    /// The replica is behind and no peer still holds the decrees it misses:
    /// it needs a snapshot (checkpoint) from a peer.
    pub needs_snapshot: bool,
}

/// Why a proposal (or a leadership hand-off) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// This replica is not the announced leader.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader this replica follows, if known.
        leader: Option<ReplicaId>,
    },
    /// `pipeline_window` decrees are already in flight; retry after one is chosen.
    #[error("the pipeline window is full")]
    WindowFull,
    /// The value exceeds `batch_limits.max_bytes`.
    #[error("value of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// The value's payload size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Reconfiguration is not supported yet.
    #[error("reconfiguration is not supported yet")]
    Unsupported,
    /// `relinquish_primary` found no follower that may become primary.
    #[error("no eligible successor")]
    NoSuccessor,
}

/// Deliberate protocol bugs, compiled only with the `planted-bugs` feature,
/// so that the simulator can show it catches each of them.
#[cfg(feature = "planted-bugs")]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PlantedBug {
    /// Phase 1 ignores the values reported in promises and fills the recovered
    /// window with Noop.
    SkipAdoptHighestAccepted,
    /// Promise and Accepted are sent before the persist they depend on completed.
    AckBeforePersist,
    /// A quorum is `N/2` votes instead of `N/2 + 1`.
    QuorumHalf,
    /// A follower applies whatever it accepted at a committed slot, without
    /// checking that it was accepted in the ballot the leader named.
    ApplyUncheckedBallot,
}

/// One multi-Paxos replica (acceptor, proposer and learner).
#[derive(Debug)]
pub struct Replica {
    config: Config,
    promised: Ballot,
    commit_index: Slot,
    applied_index: Slot,
    actions: VecDeque<Action>,
}

impl Replica {
    /// Starts a replica from what storage recovered, or explains why the
    /// configuration is unusable.
    pub fn try_new(
        config: Config,
        durable: DurableState,
        applied_through: Slot,
        seed: u64,
        now: Time,
    ) -> Result<Replica, crate::config::ConfigError> {
        config.validate()?;
        Ok(Replica::new(config, durable, applied_through, seed, now))
    }

    /// Starts a replica from what storage recovered.
    pub fn new(
        config: Config,
        durable: DurableState,
        applied_through: Slot,
        _seed: u64,
        _now: Time,
    ) -> Replica {
        Replica {
            config,
            promised: durable.promised,
            commit_index: durable.commit_index.max(applied_through),
            applied_index: applied_through,
            actions: VecDeque::new(),
        }
    }

    /// Handles a message from a peer.
    pub fn handle_message(&mut self, _now: Time, _from: ReplicaId, _msg: Message) {}

    /// Runs timers: heartbeats, elections, retransmissions.
    pub fn handle_tick(&mut self, _now: Time) {}

    /// Proposes a value (leader only).
    pub fn propose(&mut self, _now: Time, _value: Value) -> Result<Slot, ProposeError> {
        Err(ProposeError::NotLeader { leader: None })
    }

    /// Storage made every persist up to `token` durable.
    pub fn on_persisted(&mut self, _now: Time, _token: PersistToken) {}

    /// Hands leadership to the most caught-up follower.
    pub fn relinquish_primary(&mut self, _now: Time) -> Result<(), ProposeError> {
        Err(ProposeError::NotLeader { leader: None })
    }

    /// RSL's CanBecomePrimary veto.
    pub fn set_can_become_primary(&mut self, _allowed: bool) {}

    /// The next action for the driver.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The current status.
    pub fn status(&self) -> Status {
        Status {
            id: self.config.id,
            role: Role::Follower,
            ballot: self.promised,
            leader: None,
            commit_index: self.commit_index,
            applied_index: self.applied_index,
            in_flight: 0,
            membership: self.config.membership.clone(),
            needs_snapshot: false,
        }
    }

    /// When `handle_tick` must next be called.
    pub fn next_timer(&self) -> Option<Time> {
        None
    }

    /// Drops slots up to `through` (covered by a checkpoint).
    pub fn compact(&mut self, _through: Slot) {}

    /// Plants a deliberate bug (simulator teeth tests only).
    #[cfg(feature = "planted-bugs")]
    pub fn plant_bug(&mut self, _bug: PlantedBug) {}
}
