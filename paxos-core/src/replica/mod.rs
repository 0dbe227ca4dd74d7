//! The replica: acceptor, proposer (leader), learner and election in one
//! deterministic, sans-IO state machine.
//!
//! # Protocol invariants (what the code below maintains)
//!
//! Notation: `log[s]` is the acceptor's entry `(s, ballot, value)`; an entry
//! is a *vote*. A value is *chosen* at `s` once a quorum of voters durably
//! accepted it at `s` in one ballot.
//!
//! 1. **Promise monotonicity.** `promised` never decreases. A Prepare, Accept
//!    or Heartbeat below `promised` is answered with `Reject` and changes
//!    nothing.
//! 2. **One value per (slot, ballot).** An acceptor never holds two values
//!    for one slot and ballot (plain `assert!`). A leader proposes each slot
//!    at most once per ballot, and a ballot is led by one replica: the
//!    candidate persists `Promise(b)` *before* sending `Prepare(b)`, so a
//!    crashed candidate never reuses its ballot.
//! 3. **Durability before acknowledgement.** `Promise` and `Accepted` (also
//!    to itself: a leader's own vote) are released only after every persist
//!    issued so far completed (storage completes tokens in FIFO order).
//! 4. **Phase 1 covers every unchosen slot.** A candidate with commit index
//!    `c` asks for every entry at slots `> c`, in chunks. A promise is usable
//!    only if the acceptor still holds all its entries from `c + 1` on
//!    (`log_start <= c + 1`). Once a quorum of complete, usable promises is
//!    in, the leader re-proposes, for each slot up to the highest reported,
//!    the value of the highest-ballot entry reported, or `Noop` for a gap
//!    (slots up to a usable promise's commit index it learns as chosen, with
//!    that same value, instead of re-proposing them).
//!    It is announced as leader only when all of those slots are chosen.
//! 5. **Chosen entries.** Every entry at a slot `<= commit_index` holds the
//!    chosen value, under a ballot at least the one it was chosen in. Hence
//!    entries at committed slots may be written into any acceptor's log
//!    ("injected") without breaking Paxos: every vote at a ballot at or above
//!    the choosing ballot carries the chosen value. An entry is never
//!    replaced by one with a lower ballot, and a committed slot's value never
//!    changes (plain `assert!`).
//! 6. **Learning.** The leader advances `commit_index` over the contiguous
//!    prefix of slots with a quorum of `Accepted` in its ballot. A follower
//!    hearing `(ballot, commit_index)` from a leader marks slot `s` chosen only
//!    if its own entry at `s` was accepted in that very ballot (the leader
//!    proposed exactly one value per slot in it); otherwise it fetches the
//!    chosen decree from a peer. Persisted `Commit(c)` always follows the
//!    entries it covers.
//! 7. **Apply.** `Apply` is emitted in slot order, exactly once per slot per
//!    instance, for `applied_through + 1 ..= commit_index`.
//! 8. **Compacted slots.** An acceptor asked (at a ballot `>= promised`) to
//!    accept a slot below its `log_start` answers `Accepted` without
//!    recording anything: the slot is chosen, and such a "virtual vote" can
//!    never complete a quorum for another value (see `accept_entry`).
//! 9. **Bounds.** At most `pipeline_window` slots are proposed and unchosen;
//!    an acceptor accepts no slot above `commit_index + max_accept_ahead`;
//!    memory holds committed entries only for the last `retain_decrees`
//!    slots; promise and catch-up chunks hold at most `catchup_chunk_decrees`
//!    entries and stay under `max_message_bytes`.
//! 10. **Reconfiguration.** A `Reconfigure(m)` decree chosen at slot `s`
//!     governs every slot above `s`; slots up to `s` keep the membership in
//!     force before it. (It names the membership it replaces, `base`: if a
//!     later change took effect since it was proposed, it is chosen as a
//!     no-op, so a stale change found by a later phase 1 cannot revert a
//!     newer one. Every replica decides that from the same log.) So each slot has exactly one membership, and every
//!     quorum that decides it (phase 1 and phase 2 alike) is a majority of
//!     that membership's voters: quorum intersection holds slot by slot, for
//!     any change of voters, with no joint-consensus phase. What makes that
//!     true under pipelining:
//!     - A leader never has a slot above an unchosen `Reconfigure` in
//!       flight (fresh or re-proposed): it proposes nothing above it until
//!       it is chosen (`reconfig_slot`, plain `assert!`). So every slot a
//!       leader proposes is governed by the membership it knows.
//!     - Phase 1 results are used only for slots governed by the voters
//!       it asked: learning from promises stops at the first `Reconfigure`
//!       above the commit index, and re-proposing the recovered window at
//!       the first one that changes the voters. Slots above a `Reconfigure`
//!       that keeps the voters (a learner step) must be re-proposed: no new
//!       phase 1 follows it (the leader waits for it to be chosen first).
//!     - A replica switches membership when its commit index passes `s`
//!       (leader and followers alike). A leader whose voters changed stops
//!       leading in its ballot (checked: a leader's phase-1 voters are the
//!       voters in force) and runs phase 1 again among the new voters in a
//!       higher ballot, unless vetoed; one that was removed hands over to
//!       the most caught-up new voter and steps down.
//!     - Every election in `m` runs in a ballot above the one `s` is held
//!       under (the switch observes it; a restart from a checkpoint gets it
//!       from `Config::membership_ballot`), hence above every ballot in which
//!       an old-membership leader could have proposed a slot above `s` (any
//!       old leader in a higher ballot found the `Reconfigure` in its phase
//!       1 and stopped there). Votes such a leader left on new voters are
//!       therefore outranked by every vote of the new membership, and the
//!       highest-ballot rule of phase 1 stays sound.
//!     - A voter ignores non-members (a removed replica cannot disrupt it
//!       with elections), and a non-voter follows anyone: learners catch up
//!       before `change_configuration` promotes them.
//!
//! # Restart
//!
//! A replica restarts from `DurableState` plus the state machine's
//! `applied_through`. If `applied_through` exceeds the durable commit index
//! (the checkpoint raced ahead of the `Commit` record), the entries of those
//! slots might not be the chosen ones on disk, so they are dropped and
//! `Truncate(applied_through)` is persisted: the checkpoint covers them.

use crate::codec::accepted_len_hint;
use crate::config::Config;
use crate::message::Message;
use crate::types::{
    Accepted, Ballot, DurableState, Membership, PersistEntry, Reconfiguration, ReplicaId, Slot,
    Time, Value,
};
use paxos_contracts::{ensures, invariant, requires, snapshot};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, VecDeque};

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
    /// The membership in force for slots above `membership_slot`.
    pub membership: Membership,
    /// The slot of the `Reconfigure` decree that installed `membership` (0:
    /// the membership the replica was started with).
    pub membership_slot: Slot,
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
    /// A configuration change is in flight (proposed and not yet chosen, or
    /// waiting for new members to catch up): retry after it took effect.
    #[error("a configuration change is in flight")]
    ConfigChangeInFlight,
    /// The requested membership cannot be used.
    #[error("invalid membership: {why}")]
    BadMembership {
        /// What is wrong with it.
        why: &'static str,
    },
    /// `relinquish_primary` found no follower that may become primary.
    #[error("no eligible successor")]
    NoSuccessor,
}

/// What this replica knows about one peer: RSL's `GetReplicasInformation`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    /// The peer.
    pub id: ReplicaId,
    /// Whether it votes in the membership in force.
    pub voter: bool,
    /// The highest commit index it reported, if it was ever heard from.
    pub commit_index: Option<Slot>,
    /// How many slots it is behind this replica's commit index (0 if ahead
    /// or level; `None` if never heard from).
    pub lag: Option<u64>,
    /// Microseconds since it was last heard from, if ever.
    pub last_heard_us_ago: Option<u64>,
    /// Whether it was heard from within the minimum election timeout.
    pub connected: bool,
    /// Its `CanBecomePrimary` answer, as last reported.
    pub can_become_primary: bool,
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
    /// A leader keeps proposing above a `Reconfigure` it has not seen chosen
    /// (no drain), so votes of the old voters decide slots the new ones
    /// govern.
    ProposeAboveUnchosenReconfigure,
}

/// Which planted bugs are active (all false unless the `planted-bugs`
/// feature is on and `plant_bug` was called).
#[derive(Clone, Copy, Debug, Default)]
struct Bugs {
    skip_adopt_highest_accepted: bool,
    ack_before_persist: bool,
    quorum_half: bool,
    apply_unchecked_ballot: bool,
    propose_above_unchosen_reconfigure: bool,
}

/// What this replica knows about a peer.
#[derive(Clone, Copy, Debug)]
struct PeerInfo {
    commit_index: Slot,
    can_become_primary: bool,
    last_heard: Time,
}

/// Phase 1 progress with one acceptor.
#[derive(Clone, Copy, Debug)]
struct PromiseProgress {
    /// The `from_slot` of the next chunk expected.
    expect_from: Slot,
    /// All chunks received.
    complete: bool,
}

#[derive(Debug)]
struct CandidateState {
    ballot: Ballot,
    /// First slot phase 1 covers (commit index + 1 when it started).
    from_slot: Slot,
    progress: BTreeMap<ReplicaId, PromiseProgress>,
    /// Highest-ballot entry reported per slot.
    merged: BTreeMap<Slot, Accepted>,
    /// Highest commit index reported in a usable promise chunk: every slot
    /// up to it is chosen.
    max_usable_commit: Slot,
}

/// A slot this leader proposed and whose commit it has not yet passed.
#[derive(Debug)]
struct InFlight {
    value: Value,
    /// Voters (bit = index in `membership.voters`) whose durable `Accepted`
    /// arrived (this replica included, once its own persist completed).
    acks: u128,
    chosen: bool,
    sent_at: Time,
}

#[derive(Debug)]
struct LeaderState {
    ballot: Ballot,
    /// Recovered slots still to re-propose: `recover_next ..= recover_through`.
    recover_next: Slot,
    recover_through: Slot,
    /// Values found in phase 1 for the recovered slots.
    recovered: BTreeMap<Slot, Accepted>,
    /// The next slot to propose.
    next_slot: Slot,
    /// Every slot in `commit_index + 1 .. next_slot`.
    in_flight: BTreeMap<Slot, InFlight>,
    /// Whether the recovered window is chosen and `Leader` was reported.
    announced: bool,
    /// The slot of a `Reconfigure` this leader proposed (or re-proposed) and
    /// whose commit it has not yet passed. Nothing above it is proposed
    /// until it is chosen: the decree decides the membership of every
    /// later slot.
    reconfig_slot: Option<Slot>,
    /// When each voter last acknowledged this ballot.
    last_ack: BTreeMap<ReplicaId, Time>,
    /// The voters whose quorum granted this ballot's phase 1: a leader
    /// leads only while they are the voters in force.
    phase1_voters: Vec<ReplicaId>,
    elected_at: Time,
}

#[derive(Debug)]
enum RoleState {
    Follower,
    Candidate(CandidateState),
    Leader(LeaderState),
}

/// Catch-up progress.
#[derive(Debug, Default)]
struct FetchState {
    /// `(peer, from_slot, sent_at)` of the outstanding fetch.
    outstanding: Option<(ReplicaId, Slot, Time)>,
    /// When to start a fetch (a short delay lets in-flight accepts land).
    due: Option<Time>,
    /// Peers that answered that they cannot serve `commit_index + 1`: they
    /// compacted it or are behind themselves.
    unable: Vec<ReplicaId>,
    /// Whether one of `unable` compacted it (rather than being behind).
    any_compacted: bool,
    /// Round-robin cursor over peers.
    cursor: usize,
}

/// One multi-Paxos replica (acceptor, proposer and learner).
///
/// Drive it with `handle_message`, `handle_tick`, `propose` and
/// `on_persisted`; after each call drain `poll_action` and carry out every
/// action in order. See the crate docs for an example.
#[derive(Debug)]
pub struct Replica {
    config: Config,
    id: ReplicaId,
    /// The membership in force for every slot above `membership_slot` (and
    /// at least up to `commit_index + 1`).
    membership: Membership,
    /// The slot of the chosen `Reconfigure` that installed `membership`; 0
    /// for the one the replica was started with.
    membership_slot: Slot,
    /// Committed slots up to this one were checked for `Reconfigure`.
    config_scanned_through: Slot,
    /// Members of the membership replaced last: a removed leader may still
    /// hand over (`TimeoutNow`) and serve catch-up after the switch.
    previous_members: Vec<ReplicaId>,
    /// Every replica this one has known as a member or heard from (at most
    /// `MAX_KNOWN_REPLICAS`): whom a non-voter asks for news.
    known_replicas: std::collections::BTreeSet<ReplicaId>,
    /// Round-robin cursor over `known_replicas` for `probe_for_progress`.
    probe_cursor: usize,
    /// A membership the leader is working towards: new voters first join as
    /// learners and are promoted once they caught up.
    pending_target: Option<Membership>,
    rng: SmallRng,
    can_become_primary: bool,
    bugs: Bugs,

    // Acceptor.
    promised: Ballot,
    /// In-memory entries: every accepted slot `>= log_start`.
    log: BTreeMap<Slot, Accepted>,
    log_start: Slot,
    truncated_through: Slot,
    max_seen_round: u64,

    // Learner.
    commit_index: Slot,
    applied_index: Slot,
    /// Highest commit index heard of (may exceed what is known locally).
    known_commit: Slot,
    needs_snapshot: bool,
    fetch: FetchState,

    // Roles and timers.
    role: RoleState,
    leader: Option<ReplicaId>,
    election_deadline: Time,
    tick_due: Time,
    peers: BTreeMap<ReplicaId, PeerInfo>,
    /// Every member but this replica, in order.
    peer_ids: Vec<ReplicaId>,

    // Output plumbing.
    actions: VecDeque<Action>,
    persist_buf: Vec<PersistEntry>,
    /// The token the next `Persist` action gets. Tokens start at 1.
    next_token: u64,
    /// Every persist up to this token is durable.
    durable_token: u64,
    /// Messages waiting for a persist: `(token needed, to, msg)`.
    gated: VecDeque<(u64, ReplicaId, Message)>,
    /// Messages this replica sent to itself, handled before the call returns.
    self_inbox: VecDeque<Message>,
    reported: Option<(Role, Option<ReplicaId>, bool, Slot)>,
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
    ///
    /// `durable` is what storage recovered; `applied_through` is the last slot
    /// the state machine already holds (from its checkpoint; 0 if none).
    /// Decrees in `applied_through + 1 ..= durable.commit_index` are handed
    /// out again as `Apply` actions.
    ///
    /// `config.membership` must be the membership in force after
    /// `applied_through`: the initial one if no `Reconfigure` was applied,
    /// otherwise the last one applied (the state machine keeps it in its
    /// checkpoint). Reconfigurations among the recovered committed decrees
    /// are adopted here.
    ///
    /// # Panics
    ///
    /// If `config.validate()` fails; use [`Replica::try_new`] to get an error.
    pub fn new(
        config: Config,
        durable: DurableState,
        applied_through: Slot,
        seed: u64,
        now: Time,
    ) -> Replica {
        if let Err(e) = config.validate() {
            panic!("invalid paxos-core config: {e}");
        }
        let id = config.id;
        let membership = config.membership.clone();
        let DurableState {
            promised,
            accepted,
            commit_index: durable_commit,
            truncated_through,
        } = durable;
        let mut r = Replica {
            id,
            membership,
            membership_slot: config.membership_slot,
            config_scanned_through: applied_through,
            previous_members: Vec::new(),
            known_replicas: config.membership.all().filter(|r| *r != id).collect(),
            probe_cursor: 0,
            pending_target: None,
            rng: SmallRng::seed_from_u64(seed ^ (u64::from(id.0) << 32)),
            can_become_primary: true,
            bugs: Bugs::default(),
            promised,
            log: accepted,
            log_start: truncated_through + 1,
            truncated_through,
            max_seen_round: promised.round.max(config.membership_ballot.round),
            commit_index: durable_commit.max(applied_through),
            applied_index: applied_through,
            known_commit: durable_commit.max(applied_through),
            needs_snapshot: false,
            fetch: FetchState::default(),
            role: RoleState::Follower,
            leader: None,
            election_deadline: now,
            tick_due: now.plus_micros(config.heartbeat_interval_us),
            peers: BTreeMap::new(),
            peer_ids: config.membership.all().filter(|r| *r != id).collect(),
            actions: VecDeque::new(),
            persist_buf: Vec::new(),
            next_token: 1,
            durable_token: 0,
            gated: VecDeque::new(),
            self_inbox: VecDeque::new(),
            reported: None,
            config,
        };
        // Entries that storage kept but a checkpoint covers are not needed.
        r.log.retain(|s, _| *s > truncated_through);
        if applied_through > durable_commit && applied_through > truncated_through {
            // The checkpoint raced ahead of the Commit record: on-disk entries
            // of those slots may be stale votes, not the chosen values.
            r.truncated_through = applied_through;
            r.log = r.log.split_off(&(applied_through + 1));
            r.log_start = applied_through + 1;
            r.persist_buf.push(PersistEntry::Truncate(applied_through));
        }
        if r.truncated_through > applied_through {
            // Storage dropped slots the state machine never applied.
            r.needs_snapshot = true;
        }
        r.reset_election_timer(now);
        r.adopt_chosen_configs(now);
        r.apply_committed();
        r.finish(now);
        r.check_invariants();
        r
    }

    // ------------------------------------------------------------------
    // Public entry points.
    // ------------------------------------------------------------------

    /// Handles a message from a peer.
    ///
    /// Memberships change, and replicas learn of a change at different
    /// times, so who may say what is checked against this replica's view:
    ///
    /// - Chosen decrees (`Fetch`, `Decrees`) are facts: served to and taken
    ///   from anyone.
    /// - A `Prepare` is answered only by a voter, and only if the candidate
    ///   is a voter too: a removed replica that does not know it was removed
    ///   cannot disrupt the cluster with elections. Otherwise the Prepare is
    ///   used to catch up whichever side is behind (see `on_foreign_prepare`).
    /// - A voter ignores leader traffic (`Accept`, `Heartbeat`) and replies
    ///   from replicas outside its membership, but catches up from a sender
    ///   whose commit index is ahead: it may be the one that is stale.
    ///   `TimeoutNow` is also taken from members of the membership just
    ///   replaced (a removed leader hands over).
    /// - A non-voter (learner, joining or removed replica) listens to
    ///   everyone: its votes do not count, and it must follow whoever leads
    ///   while it catches up.
    ///
    /// Messages claiming to come from this replica are ignored.
    pub fn handle_message(&mut self, now: Time, from: ReplicaId, msg: Message) {
        let old_promised = snapshot!(self.promised);
        let old_commit = snapshot!(self.commit_index);
        if from != self.id {
            if self.known_replicas.len() < MAX_KNOWN_REPLICAS {
                self.known_replicas.insert(from);
            }
            self.route(now, from, msg);
        }
        self.finish(now);
        ensures!(
            self.promised >= old_promised.unwrap(),
            "promise went backwards"
        );
        ensures!(
            self.commit_index >= old_commit.unwrap(),
            "commit index went backwards"
        );
        self.check_invariants();
    }

    /// Runs timers: heartbeats and retransmissions (leader), prepare retries
    /// (candidate), elections, catch-up retries.
    pub fn handle_tick(&mut self, now: Time) {
        let old_promised = snapshot!(self.promised);
        if now >= self.tick_due {
            self.tick_due = now.plus_micros(self.config.heartbeat_interval_us);
            self.periodic(now);
        }
        if !matches!(self.role, RoleState::Leader(_)) && now >= self.election_deadline {
            if self.is_voter(self.id) {
                self.start_election(now);
            } else {
                self.probe_for_progress(now);
            }
        }
        if self.fetch.due.is_some_and(|due| now >= due) {
            self.fetch.due = None;
            self.start_fetch(now, None);
        }
        self.finish(now);
        ensures!(self.promised >= old_promised.unwrap());
        self.check_invariants();
    }

    /// Proposes `value` for the next slot and returns that slot.
    ///
    /// Only an announced leader accepts proposals. `Err(WindowFull)` means
    /// `pipeline_window` decrees are in flight: queue the value and retry
    /// after an `Apply`. The value is chosen at the returned slot only if an
    /// `Apply` for that slot carries it (a leader change may fill the slot
    /// with another value).
    pub fn propose(&mut self, now: Time, value: Value) -> Result<Slot, ProposeError> {
        let old_next = snapshot!(self.leader_next_slot());
        let result = self.propose_inner(now, value);
        self.finish(now);
        ensures!(match &result {
            Ok(slot) =>
                self.leader_next_slot() == Some(slot + 1) && old_next.unwrap() == Some(*slot),
            Err(_) => self.leader_next_slot() == old_next.unwrap(),
        });
        self.check_invariants();
        result
    }

    /// Storage made every persist up to and including `token` durable.
    ///
    /// A token that was never issued is a driver bug (contract); it is
    /// clamped to the last issued token in release builds.
    pub fn on_persisted(&mut self, now: Time, token: PersistToken) {
        requires!(
            token.0 < self.next_token,
            "token {} was never issued",
            token.0
        );
        let token = token.0.min(self.next_token - 1);
        if token > self.durable_token {
            self.durable_token = token;
        }
        self.release_gated();
        self.finish(now);
        self.check_invariants();
    }

    /// Hands leadership to the most caught-up follower that may become
    /// primary: it is told to start phase 1 at once (`TimeoutNow`) and this
    /// replica steps down to follower. No process exit is involved.
    pub fn relinquish_primary(&mut self, now: Time) -> Result<(), ProposeError> {
        let result = self.relinquish_inner(now, None);
        self.finish(now);
        ensures!(result.is_err() || !matches!(self.role, RoleState::Leader(_)));
        self.check_invariants();
        result
    }

    /// Moves the cluster to `target` (RSL's `ChangeConfiguration`).
    ///
    /// Only the announced leader accepts it, and only one change at a time
    /// (`ConfigChangeInFlight` otherwise). Replicas that `target` makes
    /// voters and that are not members yet first join as learners (a
    /// `Reconfigure` that keeps the voters), and are promoted by a second
    /// `Reconfigure` once each is within `pipeline_window` slots of the
    /// leader's commit index and was heard from recently; the leader drives
    /// this from its timer. Each step is a decree of its own, never batched
    /// with requests, and takes effect for the slots above it once chosen
    /// (see invariant 10). The change is done when [`Status::membership`]
    /// equals `target`; it is abandoned if this replica stops leading.
    ///
    /// A leader that `target` removes hands over to the most caught-up new
    /// voter once the change is chosen, and steps down.
    pub fn change_configuration(
        &mut self,
        now: Time,
        target: Membership,
    ) -> Result<(), ProposeError> {
        let wanted = snapshot!(target.clone());
        let result = self.change_configuration_inner(now, target);
        self.finish(now);
        ensures!(
            result.is_err()
                || self.pending_target.is_some()
                || Some(&self.membership) == wanted.as_ref(),
            "an accepted change is pending or already in force"
        );
        self.check_invariants();
        result
    }

    /// Hands leadership to `successor` (RSL has no such call; operators ask
    /// for it by name). It must be a voter other than this replica, allow
    /// becoming primary, and have been heard from within the minimum
    /// election timeout (`NoSuccessor` otherwise). It is brought up to date
    /// and starts phase 1 at once.
    pub fn relinquish_primary_to(
        &mut self,
        now: Time,
        successor: ReplicaId,
    ) -> Result<(), ProposeError> {
        let result = self.relinquish_inner(now, Some(successor));
        self.finish(now);
        ensures!(result.is_err() || !matches!(self.role, RoleState::Leader(_)));
        self.check_invariants();
        result
    }

    /// Gives up the membership change in progress: steps not yet proposed
    /// are not proposed (a `Reconfigure` already proposed still gets
    /// chosen). Returns the abandoned target, if there was one.
    pub fn abandon_configuration_change(&mut self) -> Option<Membership> {
        let abandoned = self.pending_target.take();
        ensures!(self.pending_target.is_none());
        abandoned
    }

    /// The membership change in progress, if this replica leads one.
    pub fn pending_configuration(&self) -> Option<&Membership> {
        self.pending_target.as_ref()
    }

    /// What this replica knows about every other member: RSL's
    /// `GetReplicasInformation`. Peers are heard from through the leader's
    /// heartbeats and their acknowledgements, so a follower knows the
    /// leader and the leader knows everyone.
    pub fn peer_status(&self, now: Time) -> Vec<PeerStatus> {
        self.peer_ids
            .iter()
            .map(|id| {
                let info = self.peers.get(id);
                PeerStatus {
                    id: *id,
                    voter: self.membership.is_voter(*id),
                    commit_index: info.map(|p| p.commit_index),
                    lag: info.map(|p| self.commit_index.saturating_sub(p.commit_index)),
                    last_heard_us_ago: info.map(|p| now.micros_since(p.last_heard)),
                    connected: info.is_some_and(|p| {
                        now.micros_since(p.last_heard) < self.config.election_timeout_min_us
                    }),
                    can_become_primary: info.is_none_or(|p| p.can_become_primary),
                }
            })
            .collect()
    }

    /// RSL's CanBecomePrimary veto: while `false` this replica never starts
    /// phase 1 (neither on timeout nor when asked to take over), and its
    /// heartbeat acks tell the leader so. A replica that already leads keeps
    /// leading; call [`Replica::relinquish_primary`] to hand over.
    pub fn set_can_become_primary(&mut self, allowed: bool) {
        self.can_become_primary = allowed;
        ensures!(self.can_become_primary == allowed);
    }

    /// The next action for the driver, in the order they must be carried out.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The current status.
    pub fn status(&self) -> Status {
        let (role, leader) = self.role_and_leader();
        Status {
            id: self.id,
            role,
            ballot: self.promised,
            leader,
            commit_index: self.commit_index,
            applied_index: self.applied_index,
            in_flight: match &self.role {
                RoleState::Leader(l) => l.in_flight.len(),
                _ => 0,
            },
            membership: self.membership.clone(),
            membership_slot: self.membership_slot,
            needs_snapshot: self.needs_snapshot,
        }
    }

    /// When `handle_tick` must next be called.
    pub fn next_timer(&self) -> Option<Time> {
        let mut t = self.tick_due;
        if !matches!(self.role, RoleState::Leader(_)) {
            t = t.min(self.election_deadline);
        }
        if let Some(due) = self.fetch.due {
            t = t.min(due);
        }
        Some(t)
    }

    /// The state machine's checkpoint covers slots `<= through`: drop them
    /// from memory and persist `Truncate(through)`. `through` must not exceed
    /// the applied index (contract; clamped otherwise).
    pub fn compact(&mut self, through: Slot) {
        requires!(
            through <= self.applied_index,
            "compact({through}) beyond applied {}",
            self.applied_index
        );
        let through = through.min(self.applied_index);
        if through > self.truncated_through {
            self.truncated_through = through;
            self.log = self.log.split_off(&(through + 1));
            self.log_start = self.log_start.max(through + 1);
            self.persist_buf.push(PersistEntry::Truncate(through));
            self.flush_persist();
        }
        ensures!(self.log.keys().next().is_none_or(|s| *s > through));
        self.check_invariants();
    }

    /// Plants a deliberate protocol bug (simulator teeth tests only).
    #[cfg(feature = "planted-bugs")]
    pub fn plant_bug(&mut self, bug: PlantedBug) {
        match bug {
            PlantedBug::SkipAdoptHighestAccepted => self.bugs.skip_adopt_highest_accepted = true,
            PlantedBug::AckBeforePersist => self.bugs.ack_before_persist = true,
            PlantedBug::QuorumHalf => self.bugs.quorum_half = true,
            PlantedBug::ApplyUncheckedBallot => self.bugs.apply_unchecked_ballot = true,
            PlantedBug::ProposeAboveUnchosenReconfigure => {
                self.bugs.propose_above_unchosen_reconfigure = true
            }
        }
    }

    // ------------------------------------------------------------------
    // Plumbing.
    // ------------------------------------------------------------------

    /// Applies `handle_message`'s membership rules, then dispatches.
    fn route(&mut self, now: Time, from: ReplicaId, msg: Message) {
        let i_vote = self.is_voter(self.id);
        match &msg {
            Message::Fetch { .. } | Message::Decrees { .. } => {}
            Message::Prepare { from_slot, .. } => {
                if !i_vote || !self.is_voter(from) {
                    let from_slot = *from_slot;
                    self.on_foreign_prepare(now, from, from_slot);
                    return;
                }
            }
            _ if !i_vote || self.membership.contains(from) => {}
            Message::TimeoutNow { .. } if self.previous_members.contains(&from) => {}
            Message::Accept { commit_index, .. } | Message::Heartbeat { commit_index, .. } => {
                let commit_index = *commit_index;
                self.on_foreign_progress(now, from, commit_index);
                return;
            }
            _ => return,
        }
        self.dispatch(now, from, msg);
    }

    /// A non-voter heard from no leader for an election timeout. It cannot
    /// campaign, and the voters may all believe it is someone else's job to
    /// tell it what happened (each replica learns a membership change at its
    /// own time). Ask the next replica it knows for the decrees after its
    /// commit index; an answer that carries a `Reconfigure` may make it a
    /// voter.
    fn probe_for_progress(&mut self, now: Time) {
        self.reset_election_timer(now);
        if self.fetch.outstanding.is_some() || self.known_replicas.is_empty() {
            return;
        }
        let i = self.probe_cursor % self.known_replicas.len();
        self.probe_cursor = self.probe_cursor.wrapping_add(1);
        if let Some(peer) = self.known_replicas.iter().nth(i).copied() {
            let from_slot = self.commit_index + 1;
            self.fetch.outstanding = Some((peer, from_slot, now));
            self.send(peer, Message::Fetch { from_slot });
        }
    }

    /// A Prepare this replica does not answer (it does not vote, or the
    /// candidate does not vote in its view). One side is probably behind:
    /// a candidate asks from `from_slot`, so it has every slot below it
    /// chosen; help whichever side lacks decrees.
    fn on_foreign_prepare(&mut self, now: Time, from: ReplicaId, from_slot: Slot) {
        if from_slot > self.commit_index + 1 {
            // Perhaps the candidate votes in a membership this replica has
            // not learned yet: catch up from it, then answer its retry.
            self.on_foreign_progress(now, from, from_slot - 1);
        } else if from_slot >= 1 && from_slot <= self.commit_index {
            // The candidate is behind (perhaps it was removed, or runs for a
            // membership already replaced): send it what it misses, so that
            // it learns the membership in force.
            self.on_fetch(from, from_slot);
        }
    }

    /// `from`, whose messages this replica does not otherwise take, has
    /// every slot through `peer_commit` chosen: fetch from it if behind.
    fn on_foreign_progress(&mut self, now: Time, from: ReplicaId, peer_commit: Slot) {
        if peer_commit <= self.commit_index {
            return;
        }
        self.known_commit = self.known_commit.max(peer_commit);
        if self.fetch.outstanding.is_none() && !matches!(self.role, RoleState::Leader(_)) {
            self.fetch.due = None;
            self.start_fetch(now, Some(from));
        }
    }

    fn dispatch(&mut self, now: Time, from: ReplicaId, msg: Message) {
        match msg {
            Message::Prepare { ballot, from_slot } => self.on_prepare(now, from, ballot, from_slot),
            Message::Promise {
                ballot,
                from_slot,
                commit_index,
                log_start,
                entries,
                next_from,
            } => self.on_promise(
                now,
                from,
                ballot,
                from_slot,
                commit_index,
                log_start,
                entries,
                next_from,
            ),
            Message::Accept {
                ballot,
                slot,
                value,
                commit_index,
            } => self.on_accept(now, from, ballot, slot, value, commit_index),
            Message::Accepted {
                ballot,
                slot,
                commit_index,
            } => self.on_accepted(now, from, ballot, slot, commit_index),
            Message::Heartbeat {
                ballot,
                commit_index,
            } => self.on_heartbeat(now, from, ballot, commit_index),
            Message::HeartbeatAck {
                ballot,
                commit_index,
                can_become_primary,
            } => self.on_heartbeat_ack(now, from, ballot, commit_index, can_become_primary),
            Message::Reject { promised } => self.on_reject(now, promised),
            Message::Fetch { from_slot } => self.on_fetch(from, from_slot),
            Message::Decrees {
                from_slot,
                commit_index,
                log_start,
                decrees,
            } => self.on_decrees(now, from, from_slot, commit_index, log_start, decrees),
            Message::TimeoutNow { ballot } => self.on_timeout_now(now, from, ballot),
        }
    }

    /// Ends every public call: handles self-addressed messages, issues the
    /// pending persist, reports status changes.
    fn finish(&mut self, now: Time) {
        // Self-delivery may release more self-delivery (e.g. a promise to
        // oneself that completes phase 1); bounded by the protocol, but cap it
        // anyway so that a bug cannot spin forever.
        let mut budget = 1_000_000usize;
        while let Some(msg) = self.self_inbox.pop_front() {
            self.dispatch(now, self.id, msg);
            budget -= 1;
            assert!(budget > 0, "self-delivery does not terminate");
        }
        self.flush_persist();
        let (role, leader) = self.role_and_leader();
        let now_reported = (role, leader, self.needs_snapshot, self.membership_slot);
        if self.reported != Some(now_reported) {
            self.reported = Some(now_reported);
            self.actions.push_back(Action::StatusChanged(self.status()));
        }
    }

    fn flush_persist(&mut self) {
        if self.persist_buf.is_empty() {
            return;
        }
        let token = self.next_token;
        self.next_token += 1;
        let entries = std::mem::take(&mut self.persist_buf);
        self.actions.push_back(Action::Persist {
            token: PersistToken(token),
            entries,
        });
    }

    fn persist(&mut self, entry: PersistEntry) {
        self.persist_buf.push(entry);
    }

    /// Sends a message that does not depend on durable state.
    fn send(&mut self, to: ReplicaId, msg: Message) {
        if to == self.id {
            self.self_inbox.push_back(msg);
        } else {
            self.actions.push_back(Action::Send { to, msg });
        }
    }

    /// Sends a message once everything persisted so far (including the
    /// entries buffered by this call) is durable.
    fn send_durable(&mut self, to: ReplicaId, msg: Message) {
        let needed = if self.persist_buf.is_empty() {
            self.next_token - 1
        } else {
            self.next_token
        };
        if needed <= self.durable_token || self.bugs.ack_before_persist {
            self.send(to, msg);
        } else {
            self.gated.push_back((needed, to, msg));
        }
    }

    fn release_gated(&mut self) {
        while let Some((needed, _, _)) = self.gated.front() {
            if *needed > self.durable_token {
                break;
            }
            if let Some((_, to, msg)) = self.gated.pop_front() {
                self.send(to, msg);
            }
        }
    }

    fn role_and_leader(&self) -> (Role, Option<ReplicaId>) {
        match &self.role {
            RoleState::Follower => (Role::Follower, self.leader),
            RoleState::Candidate(_) => (Role::Candidate, None),
            RoleState::Leader(l) if l.announced => (Role::Leader, Some(self.id)),
            RoleState::Leader(_) => (Role::Candidate, None),
        }
    }

    fn leader_next_slot(&self) -> Option<Slot> {
        match &self.role {
            RoleState::Leader(l) => Some(l.next_slot),
            _ => None,
        }
    }

    fn quorum(&self) -> usize {
        if self.bugs.quorum_half {
            (self.membership.voters.len() / 2).max(1)
        } else {
            self.membership.quorum()
        }
    }

    fn is_voter(&self, id: ReplicaId) -> bool {
        self.membership.is_voter(id)
    }

    fn reset_election_timer(&mut self, now: Time) {
        let lo = self.config.election_timeout_min_us;
        let hi = self.config.election_timeout_max_us;
        self.election_deadline = now.plus_micros(self.rng.gen_range(lo..hi));
    }

    fn observe(&mut self, ballot: Ballot) {
        self.max_seen_round = self.max_seen_round.max(ballot.round);
    }

    fn note_peer(
        &mut self,
        now: Time,
        peer: ReplicaId,
        commit_index: Slot,
        can_become_primary: Option<bool>,
    ) {
        let info = self.peers.entry(peer).or_insert(PeerInfo {
            commit_index,
            can_become_primary: true,
            last_heard: now,
        });
        info.commit_index = info.commit_index.max(commit_index);
        info.last_heard = now;
        if let Some(c) = can_become_primary {
            info.can_become_primary = c;
        }
    }

    /// Promises a higher ballot (durably) and steps down from any role held
    /// under a lower one.
    fn raise_promise(&mut self, now: Time, ballot: Ballot) {
        assert!(
            ballot > self.promised,
            "promise must only rise: {} -> {}",
            self.promised,
            ballot
        );
        self.promised = ballot;
        self.observe(ballot);
        self.persist(PersistEntry::Promise(ballot));
        if ballot.leader != self.id {
            // Another replica leads now: an operator's change in progress
            // here is abandoned (the caller sees it never completed).
            self.pending_target = None;
        }
        let demoted = match &self.role {
            RoleState::Candidate(c) => c.ballot < ballot,
            RoleState::Leader(l) => l.ballot < ballot,
            RoleState::Follower => false,
        };
        if demoted {
            self.step_down(now);
        }
    }

    fn step_down(&mut self, now: Time) {
        // A change an operator asked this leader for dies with its
        // leadership (it must not resume if this replica leads again).
        self.pending_target = None;
        self.role = RoleState::Follower;
        self.leader = None;
        self.reset_election_timer(now);
        self.request_fetch(now);
    }

    /// A valid message from the leader of `ballot` (== promised) arrived.
    fn follow(&mut self, now: Time, from: ReplicaId, ballot: Ballot) {
        if from == self.id || ballot.leader != from {
            return;
        }
        if !matches!(self.role, RoleState::Follower) {
            self.role = RoleState::Follower;
        }
        self.leader = Some(from);
        self.reset_election_timer(now);
    }

    // ------------------------------------------------------------------
    // Acceptor.
    // ------------------------------------------------------------------

    fn on_prepare(&mut self, now: Time, from: ReplicaId, ballot: Ballot, from_slot: Slot) {
        self.observe(ballot);
        if ballot < self.promised {
            self.send(
                from,
                Message::Reject {
                    promised: self.promised,
                },
            );
            return;
        }
        if !self.is_voter(self.id) || !self.is_voter(from) {
            // Only a Prepare to itself gets here unrouted: one released
            // after the membership changed under its candidacy. Stale.
            return;
        }
        if ballot > self.promised {
            self.raise_promise(now, ballot);
            if from != self.id {
                self.leader = None;
            }
        }
        if from != self.id {
            // Give the candidate time to finish phase 1 (also while it pulls
            // further chunks), rather than competing with it.
            self.reset_election_timer(now);
        }
        let from_slot = from_slot.max(1);
        let (entries, next_from) = if from_slot < self.log_start {
            (Vec::new(), None)
        } else {
            self.chunk(from_slot, Slot::MAX)
        };
        let msg = Message::Promise {
            ballot,
            from_slot,
            commit_index: self.commit_index,
            log_start: self.log_start,
            entries,
            next_from,
        };
        self.send_durable(from, msg);
        ensures!(self.promised == ballot);
    }

    /// Entries from `from_slot` through `through`, cut to the chunk limits.
    fn chunk(&self, from_slot: Slot, through: Slot) -> (Vec<Accepted>, Option<Slot>) {
        let max_bytes = self.config.max_message_bytes.saturating_sub(1024);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        if from_slot > through {
            return (out, None);
        }
        for (slot, entry) in self.log.range(from_slot..=through) {
            let size = accepted_len_hint(entry);
            if !out.is_empty()
                && (out.len() >= self.config.catchup_chunk_decrees || bytes + size > max_bytes)
            {
                return (out, Some(*slot));
            }
            bytes += size;
            out.push(entry.clone());
        }
        (out, None)
    }

    fn on_accept(
        &mut self,
        now: Time,
        from: ReplicaId,
        ballot: Ballot,
        slot: Slot,
        value: Value,
        leader_commit: Slot,
    ) {
        if !self.admit_leader_message(now, from, ballot) {
            return;
        }
        let accepted = self.accept_entry(slot, ballot, value);
        self.learn_commit(now, ballot, leader_commit);
        if accepted {
            let msg = Message::Accepted {
                ballot,
                slot,
                commit_index: self.commit_index,
            };
            self.send_durable(from, msg);
        }
    }

    /// Records a vote for `(slot, ballot, value)` if the acceptor may cast
    /// it; returns whether it holds that vote now.
    fn accept_entry(&mut self, slot: Slot, ballot: Ballot, value: Value) -> bool {
        requires!(ballot == self.promised);
        if slot == 0 {
            return false;
        }
        if slot < self.log_start {
            // The slot is chosen and its entry compacted. Acknowledge without
            // recording (a "virtual vote"), so that a recovering leader that
            // re-proposes it is not stuck. Safe: the slot's first chosen
            // quorum Q voted for real; a proposal in a ballot above Q's
            // carries the chosen value anyway, and one in a lower ballot
            // cannot gather a quorum, because every quorum meets Q, whose
            // members promised Q's ballot and reject it (the `< promised`
            // check runs before this one).
            return true;
        }
        if slot
            > self
                .commit_index
                .saturating_add(self.config.max_accept_ahead as u64)
        {
            // Too far ahead: catch up first (bounds uncommitted entries).
            return false;
        }
        match self.log.get(&slot) {
            Some(existing) if existing.ballot == ballot => {
                assert!(
                    existing.value == value,
                    "acceptor asked to accept two values at slot {slot} in ballot {ballot}"
                );
                true
            }
            // A chosen entry injected under a higher ballot: never go down.
            Some(existing) if existing.ballot > ballot => false,
            existing => {
                if let Some(e) = existing {
                    assert!(
                        slot > self.commit_index || e.value == value,
                        "committed slot {slot} would change value in ballot {ballot}"
                    );
                }
                let entry = Accepted {
                    slot,
                    ballot,
                    value,
                };
                self.log.insert(slot, entry.clone());
                self.persist(PersistEntry::Accept(entry));
                true
            }
        }
    }

    /// Common start of a message from the leader of `ballot` (Accept,
    /// Heartbeat): a ballot below the promise is rejected and the message
    /// dropped (`false`); a higher one is promised durably; the sender is
    /// followed as leader.
    fn admit_leader_message(&mut self, now: Time, from: ReplicaId, ballot: Ballot) -> bool {
        self.observe(ballot);
        if ballot < self.promised {
            self.send(
                from,
                Message::Reject {
                    promised: self.promised,
                },
            );
            return false;
        }
        if ballot > self.promised {
            self.raise_promise(now, ballot);
        }
        self.follow(now, from, ballot);
        ensures!(self.promised == ballot);
        true
    }

    fn on_heartbeat(&mut self, now: Time, from: ReplicaId, ballot: Ballot, leader_commit: Slot) {
        if !self.admit_leader_message(now, from, ballot) {
            return;
        }
        self.note_peer(now, from, leader_commit, None);
        self.learn_commit(now, ballot, leader_commit);
        let msg = Message::HeartbeatAck {
            ballot,
            commit_index: self.commit_index,
            can_become_primary: self.can_become_primary && self.is_voter(self.id),
        };
        self.send(from, msg);
    }

    fn on_reject(&mut self, now: Time, promised: Ballot) {
        self.observe(promised);
        let stale = match &self.role {
            RoleState::Candidate(c) => c.ballot < promised,
            RoleState::Leader(l) => l.ballot < promised,
            RoleState::Follower => false,
        };
        if stale {
            self.step_down(now);
        }
    }

    // ------------------------------------------------------------------
    // Learner: commit, apply, catch-up.
    // ------------------------------------------------------------------

    /// The leader of `ballot` says slots `<= leader_commit` are chosen.
    fn learn_commit(&mut self, now: Time, ballot: Ballot, leader_commit: Slot) {
        self.known_commit = self.known_commit.max(leader_commit);
        if matches!(self.role, RoleState::Leader(_)) {
            return;
        }
        let before = self.commit_index;
        while self.commit_index < leader_commit {
            let next = self.commit_index + 1;
            match self.log.get(&next) {
                Some(e) if e.ballot == ballot || self.bugs.apply_unchecked_ballot => {
                    self.commit_index = next
                }
                _ => break,
            }
        }
        if self.commit_index > before {
            self.persist(PersistEntry::Commit(self.commit_index));
            self.adopt_chosen_configs(now);
            self.apply_committed();
        }
        if self.commit_index < self.known_commit {
            self.request_fetch(now);
        }
    }

    /// Records that `(slot, ballot, value)` is chosen, injecting the entry
    /// into the log if this acceptor holds no vote at least as high.
    fn learn_chosen(&mut self, slot: Slot, ballot: Ballot, value: Value) {
        if slot < self.log_start {
            return;
        }
        match self.log.get(&slot) {
            Some(e) if e.ballot >= ballot => {
                assert!(
                    e.value == value,
                    "slot {slot}: vote at ballot {} disagrees with the value chosen at ballot {ballot}",
                    e.ballot
                );
            }
            existing => {
                if let Some(e) = existing {
                    assert!(
                        slot > self.commit_index || e.value == value,
                        "committed slot {slot} would change value"
                    );
                }
                let entry = Accepted {
                    slot,
                    ballot,
                    value,
                };
                self.log.insert(slot, entry.clone());
                self.persist(PersistEntry::Accept(entry));
            }
        }
    }

    /// Emits `Apply` for every committed, unapplied slot, then trims memory.
    fn apply_committed(&mut self) {
        while self.applied_index < self.commit_index {
            let slot = self.applied_index + 1;
            let Some(entry) = self.log.get(&slot) else {
                // Only possible after a restart whose storage lost slots the
                // state machine lacks.
                self.needs_snapshot = true;
                break;
            };
            let action = Action::Apply {
                slot,
                ballot: entry.ballot,
                value: entry.value.clone(),
            };
            self.actions.push_back(action);
            self.applied_index = slot;
        }
        // Keep `retain_decrees` committed (and applied) decrees in memory.
        let keep_from = self
            .commit_index
            .saturating_sub(self.config.retain_decrees as u64)
            .min(self.applied_index)
            + 1;
        if keep_from > self.log_start {
            while let Some(first) = self.log.first_entry() {
                if *first.key() >= keep_from {
                    break;
                }
                first.remove();
            }
            self.log_start = keep_from;
        }
    }

    /// Starts a catch-up fetch soon, if behind and none is running.
    fn request_fetch(&mut self, now: Time) {
        if self.commit_index >= self.known_commit
            || self.fetch.outstanding.is_some()
            || self.fetch.due.is_some()
            || matches!(self.role, RoleState::Leader(_))
        {
            return;
        }
        // A short delay lets accepts still in flight arrive first.
        let delay = if self.known_commit - self.commit_index > self.config.pipeline_window as u64 {
            0
        } else {
            self.config.heartbeat_interval_us / 2
        };
        self.fetch.due = Some(now.plus_micros(delay));
    }

    /// Sends a fetch for `commit_index + 1` to `preferred`, or to the next
    /// peer that may hold it.
    fn start_fetch(&mut self, now: Time, preferred: Option<ReplicaId>) {
        self.fetch.outstanding = None;
        if self.commit_index >= self.known_commit || matches!(self.role, RoleState::Leader(_)) {
            return;
        }
        let others = self.peer_ids.clone();
        if others.is_empty() {
            return;
        }
        let usable = |r: &ReplicaId, me: &Replica| !me.fetch.unable.contains(r);
        let mut target = preferred.filter(|p| usable(p, self));
        if target.is_none() {
            let ahead_or_unknown = |l: &ReplicaId, me: &Replica| {
                me.peers
                    .get(l)
                    .is_none_or(|p| p.commit_index > me.commit_index)
            };
            target = self
                .leader
                .filter(|l| *l != self.id && usable(l, self) && ahead_or_unknown(l, self));
        }
        if target.is_none() {
            // Round-robin, preferring peers known to be ahead.
            for pass in 0..2 {
                for i in 0..others.len() {
                    let r = others[(self.fetch.cursor + i) % others.len()];
                    let ahead = self
                        .peers
                        .get(&r)
                        .is_some_and(|p| p.commit_index > self.commit_index);
                    if usable(&r, self) && (ahead || pass == 1) {
                        target = Some(r);
                        self.fetch.cursor = (self.fetch.cursor + i + 1) % others.len();
                        break;
                    }
                }
                if target.is_some() {
                    break;
                }
            }
        }
        match target {
            Some(peer) => {
                let from_slot = self.commit_index + 1;
                self.fetch.outstanding = Some((peer, from_slot, now));
                self.send(peer, Message::Fetch { from_slot });
            }
            None => {
                // No peer can serve the next slot. If one compacted it, only a
                // snapshot helps; ask everyone again later in case a peer
                // that was behind caught up meanwhile.
                if self.fetch.any_compacted {
                    self.needs_snapshot = true;
                }
                self.fetch.unable.clear();
                self.fetch.any_compacted = false;
                self.fetch.due = Some(now.plus_micros(self.config.election_timeout_max_us));
            }
        }
    }

    fn on_fetch(&mut self, from: ReplicaId, from_slot: Slot) {
        let from_slot = from_slot.max(1);
        let (decrees, _) = if from_slot < self.log_start {
            (Vec::new(), None)
        } else {
            self.chunk(from_slot, self.commit_index)
        };
        let msg = Message::Decrees {
            from_slot,
            commit_index: self.commit_index,
            log_start: self.log_start,
            decrees,
        };
        // Chosen decrees are facts; they need no durability of this replica.
        self.send(from, msg);
    }

    fn on_decrees(
        &mut self,
        now: Time,
        from: ReplicaId,
        from_slot: Slot,
        peer_commit: Slot,
        peer_log_start: Slot,
        decrees: Vec<Accepted>,
    ) {
        self.note_peer(now, from, peer_commit, None);
        self.known_commit = self.known_commit.max(peer_commit);
        if self
            .fetch
            .outstanding
            .is_some_and(|(p, s, _)| p == from && s == from_slot)
        {
            self.fetch.outstanding = None;
        }
        if matches!(self.role, RoleState::Leader(_)) {
            return;
        }
        let before = self.commit_index;
        for d in decrees {
            if d.slot <= self.commit_index {
                continue;
            }
            if d.slot != self.commit_index + 1 || d.slot > peer_commit {
                break;
            }
            self.learn_chosen(d.slot, d.ballot, d.value);
            self.commit_index = d.slot;
        }
        if self.commit_index > before {
            self.persist(PersistEntry::Commit(self.commit_index));
            self.adopt_chosen_configs(now);
            self.apply_committed();
            self.fetch.unable.clear();
            self.fetch.any_compacted = false;
            if self.truncated_through <= self.applied_index {
                self.needs_snapshot = false;
            }
        } else if from_slot == self.commit_index + 1 && !self.fetch.unable.contains(&from) {
            if peer_log_start > from_slot {
                self.fetch.unable.push(from);
                self.fetch.any_compacted = true;
            } else if peer_commit < from_slot {
                self.fetch.unable.push(from);
            }
        }
        if self.commit_index < self.known_commit && self.fetch.outstanding.is_none() {
            if self.commit_index > before {
                // Progress: keep pulling from the same peer.
                self.start_fetch(now, Some(from));
            } else if self.fetch.due.is_none() {
                // No progress: try the next peer after a pause, so that
                // replicas that lack the decrees are not asked in a tight loop.
                self.fetch.due = Some(now.plus_micros(self.config.heartbeat_interval_us / 2));
            }
        }
    }

    // ------------------------------------------------------------------
    // Election and phase 1.
    // ------------------------------------------------------------------

    fn start_election(&mut self, now: Time) {
        self.reset_election_timer(now);
        if !self.can_become_primary || !self.is_voter(self.id) || self.needs_snapshot {
            return;
        }
        let round = self.promised.round.max(self.max_seen_round) + 1;
        let ballot = Ballot::new(round, self.id);
        // Persisted before any Prepare leaves (send_durable), so that a crash
        // never lets this replica lead the same ballot twice.
        self.raise_promise(now, ballot);
        let from_slot = self.commit_index + 1;
        self.role = RoleState::Candidate(CandidateState {
            ballot,
            from_slot,
            progress: BTreeMap::new(),
            merged: BTreeMap::new(),
            max_usable_commit: 0,
        });
        self.leader = None;
        let voters = self.membership.voters.clone();
        for v in voters {
            self.send_durable(v, Message::Prepare { ballot, from_slot });
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_promise(
        &mut self,
        now: Time,
        from: ReplicaId,
        ballot: Ballot,
        from_slot: Slot,
        peer_commit: Slot,
        peer_log_start: Slot,
        entries: Vec<Accepted>,
        next_from: Option<Slot>,
    ) {
        self.observe(ballot);
        if from != self.id {
            self.note_peer(now, from, peer_commit, None);
        }
        let voter = self.is_voter(from);
        let quorum = self.quorum();
        let RoleState::Candidate(c) = &mut self.role else {
            return;
        };
        if c.ballot != ballot || !voter {
            return;
        }
        let start = c.from_slot;
        let progress = c.progress.entry(from).or_insert(PromiseProgress {
            expect_from: start,
            complete: false,
        });
        if progress.complete || progress.expect_from != from_slot {
            return; // duplicate or out of order
        }
        if peer_log_start > from_slot {
            // The acceptor dropped entries phase 1 needs: this candidate is
            // behind. Catch up from it; the election retries later.
            self.known_commit = self.known_commit.max(peer_commit);
            self.request_fetch(now);
            return;
        }
        c.max_usable_commit = c.max_usable_commit.max(peer_commit);
        let limit = next_from.unwrap_or(Slot::MAX);
        let mut ask_next = None;
        match next_from {
            Some(n) if n > from_slot => {
                progress.expect_from = n;
                ask_next = Some(n);
            }
            Some(_) => {} // a chunk that does not advance: wait for the retry
            None => progress.complete = true,
        }
        for e in entries {
            if e.slot < from_slot || e.slot >= limit {
                continue; // malformed chunk: ignore the stray entry
            }
            match c.merged.get(&e.slot) {
                Some(m) if m.ballot >= e.ballot => {
                    invariant!(
                        m.ballot != e.ballot || m.value == e.value,
                        "two values at one slot and ballot"
                    );
                }
                _ => {
                    c.merged.insert(e.slot, e);
                }
            }
        }
        let complete = c.progress.values().filter(|p| p.complete).count();
        self.known_commit = self.known_commit.max(peer_commit);
        // Phase 1 is making progress: do not restart it on the election
        // timeout while chunks keep arriving (a long unchosen tail takes
        // many chunks).
        self.reset_election_timer(now);
        if let Some(n) = ask_next {
            // Our promise of `ballot` is durable: the first Prepare left.
            self.send(
                from,
                Message::Prepare {
                    ballot,
                    from_slot: n,
                },
            );
        }
        if complete >= quorum {
            self.become_leader(now);
        }
    }

    fn become_leader(&mut self, now: Time) {
        let RoleState::Candidate(c) = std::mem::replace(&mut self.role, RoleState::Follower) else {
            return;
        };
        requires!(c.ballot == self.promised);
        let mut recovered = c.merged;
        if self.bugs.skip_adopt_highest_accepted {
            // Planted bug: forget what the promises reported (but keep the
            // window's extent, so slots get overwritten with Noop).
            for e in recovered.values_mut() {
                e.value = Value::Noop;
            }
        }
        // Slots up to a usable promise's commit index are chosen, and the
        // highest-ballot entry a complete quorum reported for such a slot is
        // its chosen value (every vote at or above the choosing ballot
        // carries it, and the quorum meets the choosing one): learn them
        // instead of re-proposing them.
        //
        // This holds only for slots governed by the membership the promises
        // came from: learning stops right after a `Reconfigure`, since the
        // slots above it are decided by the new voters' quorums.
        let before = self.commit_index;
        while self.commit_index < c.max_usable_commit {
            let slot = self.commit_index + 1;
            let Some(e) = recovered.get(&slot) else { break };
            let (ballot, value) = (e.ballot, e.value.clone());
            let is_reconfig = matches!(value, Value::Reconfigure(_));
            self.learn_chosen(slot, ballot, value);
            self.commit_index = slot;
            if is_reconfig {
                break;
            }
        }
        if self.commit_index > before {
            self.known_commit = self.known_commit.max(self.commit_index);
            self.persist(PersistEntry::Commit(self.commit_index));
            let voters_before = self.membership.voters.clone();
            self.adopt_chosen_configs(now);
            self.apply_committed();
            if self.membership.voters != voters_before {
                // Phase 1 ran with the old voters; it says nothing about
                // the slots the new ones govern. Start over with them.
                self.start_election(now);
                return;
            }
        }
        recovered = recovered.split_off(&(self.commit_index + 1));
        // Re-propose up to the first `Reconfigure` that changes the voters
        // at most: the slots above it belong to the voters it installs, whose
        // quorums this phase 1 did not ask. They are recovered by the
        // election that follows once it is chosen. A `Reconfigure` that
        // keeps the voters (a learner step) leaves the slots above it to the
        // voters this phase 1 asked, so they are re-proposed like any other:
        // dropping them would let this leader propose fresh values over
        // slots that may be chosen (found by paxos-sim seed 52).
        // `drain_recovery` proposes nothing above it until it is chosen.
        // A `Reconfigure` whose base will not be in force where it lands is
        // a no-op (see `Reconfiguration`), so it is followed like any value.
        let mut voters = self.membership.voters.clone();
        let mut in_force_slot = self.membership_slot;
        let mut cut = None;
        for e in recovered.values() {
            let Value::Reconfigure(r) = &e.value else {
                continue;
            };
            if !r.applies_to(in_force_slot) {
                continue;
            }
            if r.membership.voters != voters {
                cut = Some(e.slot);
                break;
            }
            voters = r.membership.voters.clone();
            in_force_slot = e.slot;
        }
        if let Some(s) = cut {
            recovered.split_off(&(s + 1));
        }
        let recover_next = self.commit_index + 1;
        let recover_through = recovered
            .keys()
            .next_back()
            .copied()
            .unwrap_or(0)
            .max(self.commit_index);
        self.fetch = FetchState::default();
        self.leader = None;
        self.role = RoleState::Leader(LeaderState {
            ballot: c.ballot,
            recover_next,
            recover_through,
            recovered,
            next_slot: recover_next,
            in_flight: BTreeMap::new(),
            announced: false,
            reconfig_slot: None,
            last_ack: BTreeMap::new(),
            phase1_voters: self.membership.voters.clone(),
            elected_at: now,
        });
        self.drain_recovery(now);
        self.maybe_announce();
        // Tell everyone at once (also stops their elections).
        self.broadcast_heartbeat();
    }

    fn on_timeout_now(&mut self, now: Time, from: ReplicaId, ballot: Ballot) {
        self.observe(ballot);
        if ballot == self.promised
            && ballot.leader == from
            && matches!(self.role, RoleState::Follower)
        {
            self.start_election(now);
        }
    }

    // ------------------------------------------------------------------
    // Leader (proposer).
    // ------------------------------------------------------------------

    fn propose_inner(&mut self, now: Time, value: Value) -> Result<Slot, ProposeError> {
        let window = self.config.pipeline_window as u64;
        let max_bytes = self.config.batch_limits.max_bytes;
        let commit = self.commit_index;
        let leader = self.leader;
        let RoleState::Leader(l) = &self.role else {
            return Err(ProposeError::NotLeader { leader });
        };
        if !l.announced {
            return Err(ProposeError::NotLeader { leader: None });
        }
        if l.reconfig_slot.is_some() && !self.bugs.propose_above_unchosen_reconfigure {
            return Err(ProposeError::ConfigChangeInFlight);
        }
        if let Value::Reconfigure(r) = &value {
            check_membership(&r.membership)?;
            if !r.applies_to(self.membership_slot) {
                return Err(ProposeError::BadMembership {
                    why: "based on a membership that is no longer in force",
                });
            }
        }
        let len = value.payload_len();
        if len > max_bytes {
            return Err(ProposeError::TooLarge {
                len,
                max: max_bytes,
            });
        }
        if l.next_slot - 1 - commit >= window {
            return Err(ProposeError::WindowFull);
        }
        let slot = l.next_slot;
        self.propose_at(now, slot, value);
        Ok(slot)
    }

    /// Proposes `value` at `slot` (the leader's next slot) in its ballot.
    fn propose_at(&mut self, now: Time, slot: Slot, value: Value) {
        let commit_index = self.commit_index;
        let RoleState::Leader(l) = &mut self.role else {
            return;
        };
        assert_eq!(
            slot, l.next_slot,
            "a leader proposes slots in order, each once per ballot"
        );
        assert!(
            l.reconfig_slot.is_none() || self.bugs.propose_above_unchosen_reconfigure,
            "nothing is proposed above an unchosen Reconfigure"
        );
        let ballot = l.ballot;
        l.next_slot = slot + 1;
        if matches!(value, Value::Reconfigure(_)) {
            l.reconfig_slot = Some(slot);
        }
        l.in_flight.insert(
            slot,
            InFlight {
                value: value.clone(),
                acks: 0,
                chosen: false,
                sent_at: now,
            },
        );
        // Our own vote: recorded now, counted when its persist completes.
        if self.accept_entry(slot, ballot, value.clone()) {
            self.send_durable(
                self.id,
                Message::Accepted {
                    ballot,
                    slot,
                    commit_index,
                },
            );
        }
        for i in 0..self.peer_ids.len() {
            let p = self.peer_ids[i];
            self.send(
                p,
                Message::Accept {
                    ballot,
                    slot,
                    value: value.clone(),
                    commit_index,
                },
            );
        }
    }

    /// Re-proposes recovered slots while the window has room.
    fn drain_recovery(&mut self, now: Time) {
        let window = self.config.pipeline_window as u64;
        loop {
            let commit = self.commit_index;
            let RoleState::Leader(l) = &mut self.role else {
                return;
            };
            if l.recover_next > l.recover_through
                || l.next_slot - 1 - commit >= window
                || l.reconfig_slot.is_some()
            {
                return;
            }
            let slot = l.recover_next;
            l.recover_next += 1;
            let value = l.recovered.remove(&slot).map_or(Value::Noop, |e| e.value);
            self.propose_at(now, slot, value);
        }
    }

    fn maybe_announce(&mut self) {
        let commit = self.commit_index;
        if let RoleState::Leader(l) = &mut self.role {
            if l.reconfig_slot.is_some_and(|s| s <= commit) {
                l.reconfig_slot = None;
            }
        }
        self.announce_if_recovered();
    }

    fn announce_if_recovered(&mut self) {
        let commit = self.commit_index;
        if let RoleState::Leader(l) = &mut self.role {
            if !l.announced && l.recover_next > l.recover_through && commit >= l.recover_through {
                l.announced = true;
            }
        }
    }

    fn on_accepted(
        &mut self,
        now: Time,
        from: ReplicaId,
        ballot: Ballot,
        slot: Slot,
        peer_commit: Slot,
    ) {
        self.observe(ballot);
        if from != self.id {
            self.note_peer(now, from, peer_commit, None);
        }
        let quorum = self.quorum();
        let Ok(voter_index) = self.membership.voters.binary_search(&from) else {
            return;
        };
        let RoleState::Leader(l) = &mut self.role else {
            return;
        };
        if l.ballot != ballot {
            return;
        }
        l.last_ack.insert(from, now);
        if let Some(f) = l.in_flight.get_mut(&slot) {
            f.acks |= 1u128 << voter_index;
            if f.acks.count_ones() as usize >= quorum {
                f.chosen = true;
            }
        }
        self.advance_leader_commit(now);
    }

    fn advance_leader_commit(&mut self, now: Time) {
        let before = self.commit_index;
        loop {
            let RoleState::Leader(l) = &mut self.role else {
                return;
            };
            let ballot = l.ballot;
            let Some(first) = l.in_flight.first_entry() else {
                break;
            };
            if !first.get().chosen {
                break;
            }
            let slot = *first.key();
            let f = first.remove();
            assert_eq!(
                slot,
                self.commit_index + 1,
                "in-flight slots are contiguous above the commit index"
            );
            self.learn_chosen(slot, ballot, f.value);
            self.commit_index = slot;
        }
        if self.commit_index > before {
            self.known_commit = self.known_commit.max(self.commit_index);
            self.persist(PersistEntry::Commit(self.commit_index));
            // May re-elect (voters changed) or hand over (removed).
            self.adopt_chosen_configs(now);
            self.apply_committed();
            self.maybe_announce();
            self.drain_recovery(now);
            self.maybe_announce();
            self.advance_pending_target(now);
        }
    }

    fn on_heartbeat_ack(
        &mut self,
        now: Time,
        from: ReplicaId,
        ballot: Ballot,
        peer_commit: Slot,
        can: bool,
    ) {
        self.observe(ballot);
        self.note_peer(now, from, peer_commit, Some(can));
        let voter = self.is_voter(from);
        if let RoleState::Leader(l) = &mut self.role {
            if l.ballot == ballot && voter {
                l.last_ack.insert(from, now);
            }
        }
    }

    fn broadcast_heartbeat(&mut self) {
        let RoleState::Leader(l) = &self.role else {
            return;
        };
        let msg = Message::Heartbeat {
            ballot: l.ballot,
            commit_index: self.commit_index,
        };
        for i in 0..self.peer_ids.len() {
            let p = self.peer_ids[i];
            self.send(p, msg.clone());
        }
    }

    fn periodic(&mut self, now: Time) {
        match &self.role {
            RoleState::Leader(_) => self.leader_periodic(now),
            RoleState::Candidate(c) => {
                // Re-ask voters whose promise chunks are missing.
                let ballot = c.ballot;
                let mut resend = Vec::new();
                for v in &self.membership.voters {
                    match c.progress.get(v) {
                        Some(p) if p.complete => {}
                        Some(p) => resend.push((*v, p.expect_from)),
                        None => resend.push((*v, c.from_slot)),
                    }
                }
                for (v, from_slot) in resend {
                    self.send_durable(v, Message::Prepare { ballot, from_slot });
                }
            }
            RoleState::Follower => {}
        }
        // Retry a fetch that got no answer.
        if let Some((peer, _, sent_at)) = self.fetch.outstanding {
            if now.micros_since(sent_at) >= 2 * self.config.heartbeat_interval_us {
                // Unanswered: try another peer (the silent one becomes
                // eligible again once every peer was tried).
                self.fetch.outstanding = None;
                if !self.fetch.unable.contains(&peer) {
                    self.fetch.unable.push(peer);
                }
                self.start_fetch(now, None);
            }
        }
    }

    fn leader_periodic(&mut self, now: Time) {
        self.broadcast_heartbeat();
        let quorum = self.quorum();
        let hb = self.config.heartbeat_interval_us;
        let lease = self.config.election_timeout_max_us;
        let commit_index = self.commit_index;
        let me = self.id;
        let voters = self.membership.voters.clone();
        let RoleState::Leader(l) = &mut self.role else {
            return;
        };
        // Retransmit accepts that some voter has not acknowledged.
        let ballot = l.ballot;
        let mut resend = Vec::new();
        for (slot, f) in l.in_flight.iter_mut() {
            if f.chosen || now.micros_since(f.sent_at) < hb {
                continue;
            }
            f.sent_at = now;
            for (i, v) in voters.iter().enumerate() {
                if *v != me && f.acks & (1u128 << i) == 0 {
                    resend.push((
                        *v,
                        Message::Accept {
                            ballot,
                            slot: *slot,
                            value: f.value.clone(),
                            commit_index,
                        },
                    ));
                }
            }
        }
        // Step down if a quorum has not been heard from for a whole
        // election timeout: proposals could not commit anyway, and clients
        // should look for the new leader.
        let heard = voters
            .iter()
            .filter(|v| {
                **v == me
                    || l.last_ack
                        .get(v)
                        .is_some_and(|t| now.micros_since(*t) < lease)
            })
            .count();
        let lost_quorum = now.micros_since(l.elected_at) >= lease && heard < quorum;
        for (to, msg) in resend {
            self.send(to, msg);
        }
        if lost_quorum {
            self.step_down(now);
        } else {
            self.advance_pending_target(now);
        }
    }

    /// Hands over to `successor`, or (if `None`) to the most caught-up
    /// eligible voter.
    fn relinquish_inner(
        &mut self,
        now: Time,
        successor: Option<ReplicaId>,
    ) -> Result<(), ProposeError> {
        let RoleState::Leader(l) = &self.role else {
            return Err(ProposeError::NotLeader {
                leader: self.leader,
            });
        };
        if !l.announced {
            return Err(ProposeError::NotLeader { leader: None });
        }
        let ballot = l.ballot;
        let successor = match successor {
            Some(r) => Some(r).filter(|r| self.may_succeed(now, *r)),
            None => self.pick_successor(now),
        }
        .ok_or(ProposeError::NoSuccessor)?;
        self.pending_target = None;
        self.hand_over(now, ballot, successor);
        Ok(())
    }

    /// Whether `r` may take over from this replica now: another voter that
    /// may lead and was heard from recently (a hand-off to a dead replica
    /// would leave the cluster leaderless until an election timeout).
    fn may_succeed(&self, now: Time, r: ReplicaId) -> bool {
        r != self.id
            && self.is_voter(r)
            && self.peers.get(&r).is_some_and(|p| {
                p.can_become_primary
                    && now.micros_since(p.last_heard) < self.config.election_timeout_min_us
            })
    }

    /// The most caught-up voter that `may_succeed`.
    fn pick_successor(&self, now: Time) -> Option<ReplicaId> {
        self.membership
            .voters
            .iter()
            .copied()
            .filter(|v| self.may_succeed(now, *v))
            .max_by_key(|v| (self.peers[v].commit_index, std::cmp::Reverse(*v)))
    }

    /// Steps down in favour of `successor`: it is brought up to date and told
    /// to start phase 1 at once.
    fn hand_over(&mut self, now: Time, ballot: Ballot, successor: ReplicaId) {
        let msg = Message::Heartbeat {
            ballot,
            commit_index: self.commit_index,
        };
        self.send(successor, msg);
        self.send(successor, Message::TimeoutNow { ballot });
        self.step_down(now);
        // Do not compete with the successor right away.
        self.election_deadline = self
            .election_deadline
            .plus_micros(self.config.election_timeout_max_us);
    }

    // ------------------------------------------------------------------
    // Reconfiguration.
    // ------------------------------------------------------------------

    fn change_configuration_inner(
        &mut self,
        now: Time,
        target: Membership,
    ) -> Result<(), ProposeError> {
        check_membership(&target)?;
        let leader = self.leader;
        let RoleState::Leader(l) = &self.role else {
            return Err(ProposeError::NotLeader { leader });
        };
        if !l.announced {
            return Err(ProposeError::NotLeader { leader: None });
        }
        if l.reconfig_slot.is_some() || self.pending_target.is_some() {
            return Err(ProposeError::ConfigChangeInFlight);
        }
        if target == self.membership {
            return Ok(());
        }
        self.pending_target = Some(target);
        self.advance_pending_target(now);
        Ok(())
    }

    /// Proposes the next step towards `pending_target` if one is due: new
    /// voters join as learners first, and the target itself is proposed once
    /// they caught up.
    fn advance_pending_target(&mut self, now: Time) {
        let Some(target) = self.pending_target.clone() else {
            return;
        };
        let RoleState::Leader(l) = &self.role else {
            return;
        };
        if !l.announced || l.reconfig_slot.is_some() {
            return;
        }
        if target == self.membership {
            self.pending_target = None;
            return;
        }
        let current = &self.membership;
        let newcomers: Vec<ReplicaId> = target
            .voters
            .iter()
            .copied()
            .filter(|r| !current.is_voter(*r))
            .collect();
        let step = if newcomers.iter().any(|r| !current.contains(*r)) {
            // Step 1: same voters, newcomers as learners.
            let mut learners: Vec<ReplicaId> = current
                .learners
                .iter()
                .copied()
                .chain(newcomers.iter().copied())
                .collect();
            learners.sort_unstable();
            learners.dedup();
            Membership {
                voters: current.voters.clone(),
                learners,
            }
        } else if newcomers.iter().all(|r| self.caught_up(now, *r)) {
            target
        } else {
            return; // wait for the learners to catch up
        };
        let step = Reconfiguration {
            base: self.membership_slot,
            membership: step,
        };
        match self.propose_inner(now, Value::Reconfigure(step)) {
            Ok(_) => {}
            // Retried from the timer once the window drains.
            Err(ProposeError::WindowFull) => {}
            Err(e) => {
                // Cannot happen for a leader that checked the target; give
                // up rather than retry forever.
                debug_assert!(false, "reconfiguration step refused: {e}");
                self.pending_target = None;
            }
        }
    }

    /// Whether learner `r` is close enough to be promoted without stalling
    /// the new quorum.
    fn caught_up(&self, now: Time, r: ReplicaId) -> bool {
        self.peers.get(&r).is_some_and(|p| {
            p.commit_index + self.config.pipeline_window as u64 >= self.commit_index
                && now.micros_since(p.last_heard) < self.config.election_timeout_min_us
        })
    }

    /// Adopts every `Reconfigure` chosen at the slots committed since the
    /// last call, in slot order. Must run before `apply_committed` trims the
    /// entries from memory.
    fn adopt_chosen_configs(&mut self, now: Time) {
        if self.config_scanned_through >= self.commit_index {
            return;
        }
        let from = (self.config_scanned_through + 1).max(self.log_start);
        if from > self.commit_index {
            // Everything newly committed was compacted (covered by the
            // checkpoint, whose membership the driver passed in).
            self.config_scanned_through = self.commit_index;
            return;
        }
        let found: Vec<(Slot, Ballot, Reconfiguration)> = self
            .log
            .range(from..=self.commit_index)
            .filter_map(|(slot, e)| match &e.value {
                Value::Reconfigure(r) => Some((*slot, e.ballot, r.clone())),
                _ => None,
            })
            .collect();
        self.config_scanned_through = self.commit_index;
        for (slot, ballot, r) in found {
            // One proposed on top of a membership since replaced is a no-op.
            if r.applies_to(self.membership_slot) {
                self.switch_membership(now, slot, ballot, r.membership);
            }
        }
        ensures!(self.membership_slot <= self.commit_index);
    }

    /// `m`, chosen at `slot` (held here under `ballot`), governs every slot
    /// above `slot` from now on.
    fn switch_membership(&mut self, now: Time, slot: Slot, ballot: Ballot, m: Membership) {
        requires!(slot > self.membership_slot && slot <= self.commit_index);
        // Invariant 10: every election in `m` runs above this ballot.
        self.observe(ballot);
        if !m.is_well_formed() || m.voters.is_empty() {
            // A chosen decree is a fact: a malformed one (never proposed by
            // this code, which checks) is ignored rather than trusted.
            return;
        }
        let voters_changed = m.voters != self.membership.voters;
        let old = std::mem::replace(&mut self.membership, m);
        self.membership_slot = slot;
        self.previous_members = old
            .all()
            .filter(|r| !self.membership.contains(*r))
            .collect();
        for r in self.membership.all() {
            if r != self.id && self.known_replicas.len() < MAX_KNOWN_REPLICAS {
                self.known_replicas.insert(r);
            }
        }
        self.peer_ids = self.membership.all().filter(|r| *r != self.id).collect();
        let members = self.membership.clone();
        self.peers.retain(|r, _| members.contains(*r));
        if self.pending_target.as_ref() == Some(&self.membership) {
            self.pending_target = None;
        }
        if !voters_changed {
            return;
        }
        match &self.role {
            RoleState::Leader(l) => {
                invariant!(
                    l.in_flight.is_empty() || self.bugs.propose_above_unchosen_reconfigure,
                    "nothing is in flight above a chosen Reconfigure"
                );
                let ballot = l.ballot;
                // Tell old and new members at once that the change is
                // chosen, in the ballot their votes for it were cast in (so
                // that they can learn it without a fetch): new voters switch
                // and answer the coming Prepare, removed ones stop
                // campaigning.
                let hb = Message::Heartbeat {
                    ballot,
                    commit_index: self.commit_index,
                };
                let mut told: Vec<ReplicaId> = self.peer_ids.clone();
                told.extend(self.previous_members.iter().copied());
                for r in told {
                    if r != self.id {
                        self.send(r, hb.clone());
                    }
                }
                if self.is_voter(self.id) {
                    // Its ballot's phase 1 asked the old voters: it must
                    // not lead the new ones in it. Phase 1 in the new voters,
                    // in a higher ballot (unless vetoed: then another voter
                    // takes over); the change in progress (if any) continues
                    // once elected.
                    let pending = self.pending_target.take();
                    self.step_down(now);
                    self.start_election(now);
                    if matches!(self.role, RoleState::Candidate(_)) {
                        self.pending_target = pending;
                    }
                } else {
                    self.pending_target = None;
                    match self.pick_successor(now) {
                        Some(successor) => self.hand_over(now, ballot, successor),
                        None => self.step_down(now),
                    }
                }
            }
            RoleState::Candidate(_) => {
                // Its phase 1 asked the old voters.
                self.step_down(now);
                if self.is_voter(self.id) {
                    self.start_election(now);
                }
            }
            RoleState::Follower => {}
        }
    }

    // ------------------------------------------------------------------
    // Invariants (checked at the end of every public call when contracts
    // are on).
    // ------------------------------------------------------------------

    fn check_invariants(&self) {
        if !paxos_contracts::ENABLED {
            return;
        }
        invariant!(
            self.needs_snapshot || self.applied_index == self.commit_index,
            "apply keeps up with commit"
        );
        invariant!(
            self.known_commit >= self.commit_index || matches!(self.role, RoleState::Leader(_))
        );
        invariant!(self.log_start > self.truncated_through);
        invariant!(self.log.keys().next().is_none_or(|s| *s >= self.log_start));
        // Checked slot by slot over the most recent 4 committed slots (older
        // ones were checked when they were recent; entries leave memory only
        // from the front), so that the check stays cheap.
        let check_from = self.log_start.max(self.commit_index.saturating_sub(4));
        invariant!(
            self.needs_snapshot
                || (check_from..=self.commit_index)
                    .all(|s| self.log.get(&s).is_some_and(|e| e.slot == s))
                || self.log_start > self.commit_index,
            "every committed slot in memory has its entry"
        );
        invariant!(self
            .gated
            .iter()
            .zip(self.gated.iter().skip(1))
            .all(|(a, b)| a.0 <= b.0));
        match &self.role {
            RoleState::Leader(l) => {
                invariant!(
                    l.ballot == self.promised,
                    "a leader holds the highest promise"
                );
                invariant!(l.ballot.leader == self.id);
                invariant!(
                    l.phase1_voters == self.membership.voters,
                    "a leader leads only the voters its phase 1 asked"
                );
                invariant!(
                    // Distinct sorted keys with these ends and this count
                    // are exactly the range: O(log n) instead of O(window).
                    l.in_flight.len() as u64 == l.next_slot - 1 - self.commit_index
                        && l.in_flight
                            .first_key_value()
                            .is_none_or(|(s, _)| *s == self.commit_index + 1)
                        && l.in_flight
                            .last_key_value()
                            .is_none_or(|(s, _)| *s == l.next_slot - 1),
                    "in-flight slots are exactly commit_index+1 .. next_slot"
                );
                invariant!(
                    l.in_flight.len() <= self.config.pipeline_window,
                    "pipeline window exceeded"
                );
                invariant!(!l.announced || l.recover_next > l.recover_through);
            }
            RoleState::Candidate(c) => {
                invariant!(c.ballot.leader == self.id && c.ballot <= self.promised);
            }
            RoleState::Follower => {}
        }
    }
}

/// Bound on `Replica::known_replicas` (peers are authenticated, so this only
/// guards memory against a misconfigured cluster).
const MAX_KNOWN_REPLICAS: usize = 2 * crate::config::MAX_VOTERS;

/// Why `m` cannot be proposed as a membership, if it cannot.
fn check_membership(m: &Membership) -> Result<(), ProposeError> {
    if m.voters.is_empty() {
        return Err(ProposeError::BadMembership {
            why: "at least one voter",
        });
    }
    if m.voters.len() > crate::config::MAX_VOTERS {
        return Err(ProposeError::BadMembership {
            why: "at most 128 voters",
        });
    }
    if !m.is_well_formed() {
        return Err(ProposeError::BadMembership {
            why: "voters and learners sorted, without duplicates, disjoint",
        });
    }
    Ok(())
}
