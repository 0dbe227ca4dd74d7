//! The replica: acceptor, proposer (leader), learner and election in one
//! deterministic, sans-IO state machine.
//!
//! # Layout
//!
//! This module holds the public types, the [`Replica`] struct, its public
//! entry points, message routing and the output plumbing (persist tokens,
//! durable-gated sends, self-delivery, status reports). Each role is an
//! `impl Replica` block of its own, matching the unit tests in `src/tests/`:
//!
//! - `acceptor`: Prepare/Promise, Accept/Accepted, admitting a leader.
//! - `accepted_log`: the in-memory entries, with their payload bytes counted.
//! - `proposer`: proposing, re-proposing the recovered window, counting
//!   votes, heartbeats and retransmission.
//! - `learner`: commit learning and `Apply` in slot order.
//! - `catchup`: fetching chosen decrees from peers; snapshot need.
//! - `election`: timers, phase 1, becoming leader, stepping down.
//! - `prevote`: pre-vote and leader stickiness before phase 1.
//! - `reads`: heartbeat rounds confirming ReadIndex reads, and leases.
//! - `relinquish`: handing the primary role to a successor.
//! - `reconfig`: membership change and switching memberships.
//! - `invariants`: `check_invariants`, run after every public call.
//! - `planted` (feature `planted-bugs` only): deliberate bugs for the
//!   simulator's teeth tests, read through `planted!(self, bug)`.
//!
//! Each module's doc names the invariants below that it maintains.
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
//!    slots, and applied ones only while the log's payload is within
//!    `retain_bytes`; promise and catch-up chunks hold at most `catchup_chunk_decrees`
//!    entries and stay under `max_message_bytes`, catch-up chunks also
//!    under `catchup_chunk_bytes` (one decree may exceed it).
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
//! 11. **Repair.** A replica started with `Config::repair` (its storage lost
//!     data it may have acknowledged) sends no `Promise` and no `Accepted`,
//!     never campaigns and takes no hand-off until it heard from every voter
//!     of every membership it learns of, raised its promise durably to the
//!     highest any of them promised, and learned every slot up to the
//!     highest any of them holds. See `repair.rs` for why that restores
//!     invariants 1-6 for it.
//!
//! # Restart
//!
//! A replica restarts from `DurableState` plus the state machine's
//! `applied_through`. If `applied_through` exceeds the durable commit index
//! (the checkpoint raced ahead of the `Commit` record), the entries of those
//! slots might not be the chosen ones on disk, so they are dropped and
//! `Truncate(applied_through)` is persisted: the checkpoint covers them.

/// `planted!(self, bug)`: whether planted bug `bug` (a field of
/// `planted::Bugs`) is on. Without the `planted-bugs` feature it expands to
/// the constant `false` and reads nothing: the field does not exist then.
#[cfg(feature = "planted-bugs")]
macro_rules! planted {
    ($replica:expr, $bug:ident) => {
        $replica.bugs.$bug
    };
}
#[cfg(not(feature = "planted-bugs"))]
macro_rules! planted {
    ($replica:expr, $bug:ident) => {
        false
    };
}

mod accepted_log;
mod acceptor;
mod catchup;
mod election;
mod invariants;
mod learner;
#[cfg(feature = "planted-bugs")]
mod planted;
mod prevote;
mod proposer;
mod reads;
mod reconfig;
mod relinquish;
mod repair;

use crate::config::Config;
use crate::msg::{self, Message};
use crate::types::{
    Accepted, Ballot, DurableState, Membership, PersistEntry, ReplicaId, Slot, Time, Value,
};
use catchup::FetchState;
use election::CandidateState;
use paxos_contracts::{ensures, requires, snapshot};
#[cfg(feature = "planted-bugs")]
pub use planted::PlantedBug;
use proposer::LeaderState;
use rand::rngs::SmallRng;
use rand::SeedableRng;
pub use reads::ReadTicket;
pub use repair::RepairProgress;
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
    /// Read the chosen decrees of slots `from ..= through` from storage
    /// (at most `max_decrees`, and within `max_bytes` of encoded size past
    /// the first: `ReplicaStorage::read_decrees` in paxos-log), then call
    /// [`Replica::on_decrees_read`] with `peer`, `from` and what was read
    /// (`None` if storage could not serve them). Emitted to serve a peer's
    /// catch-up below what this replica keeps in memory but above its last
    /// truncation; at most one is outstanding per peer. The read may run
    /// off the event loop: nothing waits for it.
    ReadDecrees {
        /// The peer the decrees are for.
        peer: ReplicaId,
        /// The first slot.
        from: Slot,
        /// The last slot that may be read (at most the commit index).
        through: Slot,
        /// Most decrees to read.
        max_decrees: usize,
        /// Most encoded bytes past the first decree.
        max_bytes: usize,
    },
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
    /// A repair in progress (invariant 11): the replica does not vote until
    /// it is done. `None` when it can vouch for its state.
    pub repair: Option<RepairProgress>,
    /// Payload bytes of the decrees held in memory (bounded by
    /// `retain_bytes` plus the unapplied ones).
    pub log_bytes: usize,
    /// The lowest slot whose decree may still be in memory: every decree
    /// below it was dropped (compacted, or trimmed by the retention bounds).
    pub retained_from: Slot,
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
    /// The highest applied index it reported on a heartbeat ack (so only
    /// the leader learns it), if it ever acknowledged one: a
    /// bounded-staleness read there reflects at least this slot. Never
    /// above `commit_index`.
    pub applied_index: Option<Slot>,
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

/// What this replica knows about a peer.
#[derive(Clone, Copy, Debug)]
struct PeerInfo {
    commit_index: Slot,
    /// `None` until the peer acknowledged a heartbeat (the only message
    /// that reports it). Never above `commit_index`.
    applied_index: Option<Slot>,
    can_become_primary: bool,
    last_heard: Time,
}

/// The role this replica plays, with that role's state.
#[derive(Debug)]
enum RoleState {
    Follower,
    Candidate(CandidateState),
    Leader(LeaderState),
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
    /// Planted bugs switched on by `plant_bug` (feature `planted-bugs` only).
    #[cfg(feature = "planted-bugs")]
    bugs: planted::Bugs,

    // Acceptor.
    promised: Ballot,
    /// In-memory entries: every accepted slot `>= log_start`.
    log: accepted_log::AcceptedLog,
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
    /// The last live leader or candidate heard from (or granted a pre-vote,
    /// or this replica itself when it asked for one or campaigned), and
    /// when: within the minimum election timeout of it, pre-votes of others
    /// are denied (leader stickiness, see `prevote`).
    last_contact: Option<(ReplicaId, Time)>,
    /// The pre-vote round in progress, if any.
    pre_vote: Option<prevote::PreVoteState>,
    /// The round of this replica's last pre-vote (each round is higher).
    last_pre_vote_round: u64,
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
    reported: Option<(Role, Option<ReplicaId>, bool, Slot, bool)>,
    /// A repair in progress (invariant 11), if storage lost data.
    repair: Option<repair::RepairState>,
}

impl Replica {
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
            #[cfg(feature = "planted-bugs")]
            bugs: planted::Bugs::default(),
            promised,
            log: accepted_log::AcceptedLog::new(accepted),
            log_start: truncated_through.next(),
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
            // A replica that just started knows nothing of a leader that
            // may well be alive: it grants no pre-vote for a minimum
            // election timeout, as if it had just heard from one.
            last_contact: Some((id, now)),
            pre_vote: None,
            last_pre_vote_round: 0,
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
            repair: config.repair.then(|| {
                repair::RepairState::new(
                    config
                        .membership
                        .voters
                        .iter()
                        .copied()
                        .filter(|v| *v != id),
                )
            }),
            config,
        };
        // Entries that storage kept but a checkpoint covers are not needed.
        r.log.drop_through(truncated_through);
        if applied_through > durable_commit && applied_through > truncated_through {
            // The checkpoint raced ahead of the Commit record: on-disk entries
            // of those slots may be stale votes, not the chosen values.
            r.truncated_through = applied_through;
            r.log.drop_through(applied_through);
            r.log_start = applied_through.next();
            r.persist_buf.push(PersistEntry::Truncate(applied_through));
        }
        if r.truncated_through > applied_through {
            // Storage dropped slots the state machine never applied.
            r.needs_snapshot = true;
        }
        r.reset_election_timer(now);
        r.adopt_chosen_configs(now);
        r.apply_committed();
        r.repair_query();
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
            if self.is_voter(self.id) && !self.repairing() {
                self.on_election_timeout(now);
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
                self.leader_next_slot() == Some(slot.next()) && old_next.unwrap() == Some(*slot),
            Err(_) => self.leader_next_slot() == old_next.unwrap(),
        });
        self.check_invariants();
        result
    }

    /// A ticket for a linearizable read that skips the log (ReadIndex):
    /// serve the read once [`Replica::read_confirmed`] reports the
    /// ticket's round confirmed in its ballot and the state machine applied
    /// through `read_index`. Only the announced leader hands out tickets
    /// (`NotLeader` otherwise). Reads arriving while a round is outstanding
    /// share the next one. See the `reads` module for why this is safe.
    pub fn read_index(&mut self, now: Time) -> Result<ReadTicket, ProposeError> {
        let result = self.read_index_inner(now);
        self.finish(now);
        ensures!(result.is_err() || matches!(self.role, RoleState::Leader(_)));
        self.check_invariants();
        result
    }

    /// The announced leader's ballot and the highest read round a quorum
    /// confirmed in it; `None` on any other replica (tickets of an earlier
    /// ballot can never be confirmed: fail those reads).
    pub fn read_confirmed(&self) -> Option<(Ballot, u64)> {
        self.read_confirmed_inner()
    }

    /// With leases on (`Config::read_lease`): the slot a read may be served
    /// at right now without a round, if this replica is the announced
    /// leader and its lease holds at `now` (its clock).
    pub fn lease_read_index(&self, now: Time) -> Option<Slot> {
        self.lease_read_index_inner(now)
    }

    /// Storage answered an [`Action::ReadDecrees`] for `peer` from slot
    /// `from`: `Some(decrees)` as read (any number, contiguous from `from`),
    /// `None` if it could not serve them. The decrees are checked against
    /// what was asked for (contiguous from `from`, within the slots asked,
    /// at or below the commit index); a chunk that passes goes to `peer` as
    /// a `Decrees` reply, anything else is answered as if compacted, so the
    /// peer looks elsewhere or takes a checkpoint. An answer to no
    /// outstanding read is ignored.
    pub fn on_decrees_read(
        &mut self,
        now: Time,
        peer: ReplicaId,
        from: Slot,
        decrees: Option<Vec<Accepted>>,
    ) {
        self.on_decrees_read_inner(peer, from, decrees);
        self.finish(now);
        self.check_invariants();
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
                    applied_index: info.and_then(|p| p.applied_index),
                    lag: info.map(|p| self.commit_index.distance_since(p.commit_index)),
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
            repair: self.repair_progress(),
            log_bytes: self.log.payload_bytes(),
            retained_from: self.log_start,
        }
    }

    /// The first slot the in-memory log still holds (as
    /// [`Status::retained_from`], without building a whole status).
    pub fn retained_from(&self) -> Slot {
        self.log_start
    }

    /// Catch-up chunks this replica served to peers from storage (decrees
    /// below its in-memory log, read back through [`Action::ReadDecrees`])
    /// since it started.
    pub fn served_from_storage(&self) -> u64 {
        self.fetch.served_from_storage
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
            self.log.drop_through(through);
            self.log_start = self.log_start.max(through.next());
            self.persist_buf.push(PersistEntry::Truncate(through));
            self.flush_persist();
        }
        ensures!(self.log.keys().next().is_none_or(|s| *s > through));
        self.check_invariants();
    }

    // ------------------------------------------------------------------
    // Input routing and output plumbing.
    // ------------------------------------------------------------------

    /// Applies `handle_message`'s membership rules, then dispatches.
    fn route(&mut self, now: Time, from: ReplicaId, msg: Message) {
        let i_vote = self.is_voter(self.id);
        if self.repairing() {
            // Invariant 11: no vote, no candidacy, no hand-off; follow the
            // leaders' progress and fetch chosen decrees like a learner.
            match &msg {
                Message::Prepare(_) | Message::TimeoutNow(_) | Message::PreVote(_) => return,
                Message::Accept(msg::Accept { commit_index, .. }) => {
                    let commit_index = *commit_index;
                    self.on_foreign_progress(now, from, commit_index);
                    return;
                }
                _ => {}
            }
        }
        match &msg {
            Message::Fetch(_)
            | Message::Decrees(_)
            | Message::RepairQuery(_)
            | Message::RepairAnswer(_) => {}
            Message::Prepare(msg::Prepare { from_slot, .. }) => {
                if !i_vote || !self.is_voter(from) {
                    let from_slot = *from_slot;
                    self.on_foreign_prepare(now, from, from_slot);
                    return;
                }
            }
            // A pre-vote is a question between voters only; one from or to
            // a non-voter is a sign that one side is behind, as a Prepare is.
            Message::PreVote(msg::PreVote { commit_index, .. }) => {
                if !i_vote || !self.is_voter(from) {
                    let from_slot = commit_index.next();
                    self.on_foreign_prepare(now, from, from_slot);
                    return;
                }
            }
            Message::PreVoteReply(_) if !i_vote || !self.is_voter(from) => return,
            _ if !i_vote || self.membership.contains(from) => {}
            Message::TimeoutNow(_) if self.previous_members.contains(&from) => {}
            Message::Accept(msg::Accept { commit_index, .. })
            | Message::Heartbeat(msg::Heartbeat { commit_index, .. }) => {
                let commit_index = *commit_index;
                self.on_foreign_progress(now, from, commit_index);
                return;
            }
            _ => return,
        }
        self.dispatch(now, from, msg);
    }

    fn dispatch(&mut self, now: Time, from: ReplicaId, msg: Message) {
        match msg {
            Message::Prepare(m) => self.on_prepare(now, from, m),
            Message::Promise(m) => self.on_promise(now, from, m),
            Message::Accept(m) => self.on_accept(now, from, m),
            Message::Accepted(m) => self.on_accepted(now, from, m),
            Message::Heartbeat(m) => self.on_heartbeat(now, from, m),
            Message::HeartbeatAck(m) => self.on_heartbeat_ack(now, from, m),
            Message::Reject(m) => self.on_reject(now, m),
            Message::Fetch(m) => self.on_fetch(now, from, m),
            Message::Decrees(m) => self.on_decrees(now, from, m),
            Message::TimeoutNow(m) => self.on_timeout_now(now, from, m),
            Message::RepairQuery(m) => self.on_repair_query(from, m),
            Message::RepairAnswer(m) => self.on_repair_answer(from, m),
            Message::PreVote(m) => self.on_pre_vote(now, from, m),
            Message::PreVoteReply(m) => self.on_pre_vote_reply(now, from, m),
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
        self.check_repaired();
        let (role, leader) = self.role_and_leader();
        let now_reported = (
            role,
            leader,
            self.needs_snapshot,
            self.membership_slot,
            self.repairing(),
        );
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
        if needed <= self.durable_token || planted!(self, ack_before_persist) {
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
        #[cfg(feature = "planted-bugs")]
        if self.bugs.quorum_half {
            return (self.membership.voters.len() / 2).max(1);
        }
        self.membership.quorum()
    }

    fn is_voter(&self, id: ReplicaId) -> bool {
        self.membership.is_voter(id)
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
            applied_index: None,
            can_become_primary: true,
            last_heard: now,
        });
        info.commit_index = info.commit_index.max(commit_index);
        info.last_heard = now;
        if let Some(c) = can_become_primary {
            info.can_become_primary = c;
        }
    }

    /// Records the applied index `peer` reported with its commit index
    /// (after `note_peer` recorded that). Kept as the highest reported, as
    /// the commit index is: acks may arrive out of order, and a restarted
    /// peer replays its log up to its commit index at once.
    fn note_peer_applied(&mut self, peer: ReplicaId, applied_index: Slot) {
        let Some(info) = self.peers.get_mut(&peer) else {
            return;
        };
        // The codec refuses an ack whose applied index is above its commit
        // index, and the commit index recorded is the highest reported, so
        // the `min` changes nothing for a decoded ack; it keeps the bound
        // for messages built in memory (tests, the simulator).
        let applied_index = applied_index.min(info.commit_index);
        let recorded = info
            .applied_index
            .map_or(applied_index, |a| a.max(applied_index));
        info.applied_index = Some(recorded);
        ensures!(
            info.applied_index.is_some_and(|a| a <= info.commit_index),
            "a peer's recorded applied index never exceeds its recorded commit index"
        );
    }

    /// The heartbeat-interval timer: the current role's periodic work, then
    /// a retry of an unanswered fetch.
    fn periodic(&mut self, now: Time) {
        self.repair_query();
        match &self.role {
            RoleState::Leader(_) => self.leader_periodic(now),
            RoleState::Candidate(_) => self.resend_prepares(),
            RoleState::Follower => {}
        }
        self.retry_unanswered_fetch(now);
    }
}

/// Bound on `Replica::known_replicas` (peers are authenticated, so this only
/// guards memory against a misconfigured cluster).
const MAX_KNOWN_REPLICAS: usize = 2 * crate::config::MAX_VOTERS;
