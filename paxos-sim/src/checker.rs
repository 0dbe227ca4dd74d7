//! The safety checkers. They see every `Apply` and `StatusChanged` action of
//! every replica incarnation and keep global state that survives crashes:
//!
//! - **Agreement**: one global map `slot -> value`. The first replica to
//!   apply a slot records its value; any later apply of that slot, by any
//!   replica, in any incarnation, must carry the same value.
//! - **Validity**: an applied `Requests` decree must be framed by paxos-node
//!   (a header naming a replica of the pool as proposer) and every request
//!   in it must be a request a client issued, byte for byte. `Noop` and
//!   `Reconfigure` are allowed.
//! - **Contiguity**: each replica incarnation applies slots
//!   `applied_through + 1, + 2, ...` with no gap and no repeat.
//! - **No lost acknowledged request**: a request is acknowledged when the
//!   node that proposed it completes it, naming the slot that executed it;
//!   that slot must hold the request. Agreement then pins it to that slot on
//!   every replica; the liveness phase additionally requires every live
//!   replica to apply through the highest acknowledged slot, and the
//!   linearizability check of the clients' history (with a final read of
//!   every key) fails if an acknowledged write is missing from the state.
//! - **Equal states at equal slots**: whenever a replica has applied through
//!   slot `s`, the digest of its state machine (the real `KvStore`) must
//!   equal that of every other replica that was at `s`.
//! - **One leader per ballot**: two replicas never report `Leader` under the
//!   same ballot, and a leader's ballot names the leader itself.
//! - **Quorum of the governing voters** (membership change): the chosen
//!   `Reconfigure` decrees say which membership governs each slot (the one
//!   installed by the last `Reconfigure` at a lower slot, else the initial
//!   one). Quorums are computed here, as a strict majority of the voter
//!   list, never with `Membership::quorum` (a checker must not reuse the
//!   code it checks). Every acceptor vote that reaches a simulated disk is recorded
//!   here, `(replica, slot, ballot) -> value`, when its persist completes
//!   (or when a crash leaves it on disk) and is never erased, so crashes,
//!   restarts and truncation cannot hide a vote nor invent one. Whenever any
//!   replica applies `value` at `slot`, some single ballot must hold votes
//!   for that value from a quorum of the *voters of the membership governing
//!   `slot`*; votes of learners, spares and removed replicas do not count.
//!   An acceptor never records two values at one slot and ballot.
//! - **Membership adoption**: a replica's reported membership, installed by
//!   the `Reconfigure` at `membership_slot`, is the one chosen there.

use crate::client::Executions;
use bytes::Bytes;
use paxos_core::{Ballot, Membership, ReplicaId, Slot, Status, Value};
use paxos_node::framing::{self, DecreeKind};
use std::collections::{BTreeMap, HashMap, HashSet};

/// A strict majority of `voters` voters: the smallest count two of which
/// always intersect. Written here, independently of `Membership::quorum`.
pub fn majority(voters: usize) -> usize {
    voters / 2 + 1
}

/// The kind of a violated property.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FailureKind {
    /// Two replicas applied different values at one slot.
    Agreement,
    /// A value was applied that no client proposed.
    Validity,
    /// A replica incarnation skipped or repeated a slot.
    NonContiguousApply,
    /// An acknowledged request went missing.
    LostAcknowledgedRequest,
    /// Two leaders in one ballot, or a leader under another replica's ballot.
    LeaderUniqueness,
    /// A message failed to decode or to re-encode identically, or exceeded
    /// the message size limit.
    Codec,
    /// An acceptor reply (Promise, Accepted) left before the state it
    /// reports was durable.
    Durability,
    /// The core broke its side of the API (token order, unknown peer, ...).
    ApiContract,
    /// The core panicked (an `assert!`, a contract, or a bug).
    Panic,
    /// A value was applied without durable votes from a quorum of the
    /// voters governing its slot in one ballot, an acceptor voted twice in
    /// one ballot, or a replica adopted a membership that was not chosen.
    Quorum,
    /// The healed cluster did not elect a leader and commit new requests in
    /// time.
    Liveness,
    /// Two replicas that applied through the same slot hold different
    /// state-machine states.
    StateDivergence,
    /// The clients' history of key-value operations is not linearizable.
    Linearizability,
    /// A new leader was elected while the previous one was alive, had a
    /// steady quorum and was slowed by no fault (see `stability.rs`).
    UnforcedLeaderChange,
    /// A follower read (`ReadConsistency::AtLeast`) answered with a value
    /// older than the slot it asked for (see `reads.rs`).
    BoundedStaleness,
}

impl std::fmt::Display for FailureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            FailureKind::Agreement => "AGREEMENT",
            FailureKind::Validity => "VALIDITY",
            FailureKind::NonContiguousApply => "NON-CONTIGUOUS APPLY",
            FailureKind::LostAcknowledgedRequest => "LOST ACKNOWLEDGED REQUEST",
            FailureKind::LeaderUniqueness => "LEADER UNIQUENESS",
            FailureKind::Codec => "CODEC",
            FailureKind::Durability => "DURABILITY",
            FailureKind::ApiContract => "API CONTRACT",
            FailureKind::Panic => "PANIC",
            FailureKind::Quorum => "QUORUM OF GOVERNING VOTERS",
            FailureKind::Liveness => "LIVENESS",
            FailureKind::StateDivergence => "STATE DIVERGENCE",
            FailureKind::Linearizability => "LINEARIZABILITY",
            FailureKind::UnforcedLeaderChange => "UNFORCED LEADER CHANGE",
            FailureKind::BoundedStaleness => "BOUNDED STALENESS",
        };
        f.write_str(s)
    }
}

/// A violated property, with enough context to start debugging.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// What was violated.
    pub kind: FailureKind,
    /// Human-readable details.
    pub detail: String,
}

impl Failure {
    /// A failure of `kind` described by `detail`.
    pub fn new(kind: FailureKind, detail: impl Into<String>) -> Failure {
        Failure {
            kind,
            detail: detail.into(),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind, self.detail)
    }
}

/// Global checker state, shared by all replicas and kept across crashes.
#[derive(Debug, Default)]
pub struct Checker {
    /// The value chosen at each slot, as first applied, and who applied it.
    chosen: BTreeMap<Slot, (Value, ReplicaId)>,
    /// Every request encoding a client issued.
    issued: HashSet<Bytes>,
    /// Every request encoding executed in a chosen decree, and how often.
    applied: HashMap<Bytes, Executions>,
    /// Replicas of the pool (valid proposers).
    pool: Vec<ReplicaId>,
    /// Acknowledged attempts.
    acked: u64,
    /// The highest slot any request was acknowledged at.
    max_acked_slot: Slot,
    /// The leader reported for each ballot.
    leaders: BTreeMap<Ballot, ReplicaId>,
    /// State digest at each slot, and the replica that reported it first.
    digests: BTreeMap<Slot, (u64, ReplicaId)>,
    /// The membership before any `Reconfigure`.
    initial: Membership,
    /// Chosen `Reconfigure` decrees that took effect, by slot: each governs
    /// the slots above it up to the next one. (A chosen `Reconfigure` based
    /// on a membership no longer in force is a no-op and is not listed.)
    reconfigs: BTreeMap<Slot, Membership>,
    /// Every vote that reached a simulated disk, never erased:
    /// slot -> ballot -> replica -> value.
    votes: BTreeMap<Slot, BTreeMap<Ballot, BTreeMap<ReplicaId, Value>>>,
}

impl Checker {
    /// An empty checker for a cluster that starts with `initial`, over a
    /// pool of replicas `pool`.
    pub fn new(initial: Membership, pool: Vec<ReplicaId>) -> Checker {
        Checker {
            initial,
            pool,
            ..Checker::default()
        }
    }

    /// The membership that governs `slot`: installed by the last chosen
    /// `Reconfigure` below it, else the initial one. Exact for every slot
    /// up to one above the highest applied slot (applies are contiguous, so
    /// every lower slot was applied somewhere and is known here).
    pub fn governing(&self, slot: Slot) -> &Membership {
        self.reconfigs
            .range(..slot)
            .next_back()
            .map_or(&self.initial, |(_, m)| m)
    }

    /// The last membership chosen (applied anywhere) and its slot (0: the
    /// initial one).
    pub fn latest_membership(&self) -> (Slot, &Membership) {
        self.reconfigs
            .iter()
            .next_back()
            .map_or((Slot::ZERO, &self.initial), |(s, m)| (*s, m))
    }

    /// Records that `id`'s disk now holds a vote for `value` at `slot` in
    /// `ballot` (its persist completed, or a crash left it there).
    pub fn record_vote(
        &mut self,
        id: ReplicaId,
        slot: Slot,
        ballot: Ballot,
        value: &Value,
    ) -> Result<(), Failure> {
        let by_replica = self
            .votes
            .entry(slot)
            .or_default()
            .entry(ballot)
            .or_default();
        match by_replica.get(&id) {
            Some(earlier) if earlier != value => Err(Failure::new(
                FailureKind::Quorum,
                format!(
                    "{id} durably voted for two values at slot {slot} in ballot {ballot}: {} and {}",
                    describe(earlier),
                    describe(value)
                ),
            )),
            Some(_) => Ok(()),
            None => {
                by_replica.insert(id, value.clone());
                Ok(())
            }
        }
    }

    /// Checks that `value`, applied at `slot` by `id`, was durably voted for
    /// in one ballot by a quorum of the voters governing `slot`.
    pub fn check_quorum(&self, id: ReplicaId, slot: Slot, value: &Value) -> Result<(), Failure> {
        let governing = self.governing(slot);
        let quorum = majority(governing.voters.len());
        let mut best: Option<(Ballot, usize)> = None;
        if let Some(ballots) = self.votes.get(&slot) {
            for (ballot, by_replica) in ballots {
                let count = by_replica
                    .iter()
                    .filter(|(r, v)| governing.is_voter(**r) && *v == value)
                    .count();
                if count >= quorum {
                    return Ok(());
                }
                if best.is_none_or(|(_, c)| count > c) {
                    best = Some((*ballot, count));
                }
            }
        }
        let all_votes: Vec<String> = self
            .votes
            .get(&slot)
            .into_iter()
            .flat_map(|b| b.iter())
            .map(|(ballot, by_replica)| {
                let voters: Vec<String> = by_replica
                    .iter()
                    .map(|(r, v)| {
                        let mark = if v == value { "" } else { "(other value)" };
                        format!("{r}{mark}")
                    })
                    .collect();
                format!("{ballot}: [{}]", voters.join(" "))
            })
            .collect();
        Err(Failure::new(
            FailureKind::Quorum,
            format!(
                "{id} applied slot {slot} = {} but no ballot has durable votes for it from a quorum ({quorum}) of the governing voters {:?}; best {:?}; votes at that slot: {}",
                describe(value),
                governing.voters,
                best,
                all_votes.join(", ")
            ),
        ))
    }

    /// Records a request encoding a client issued.
    pub fn note_issued(&mut self, request: Bytes) {
        self.issued.insert(request);
    }

    /// Checks that replica `id`, applied through `slot`, holds a state
    /// machine with digest `digest` equal to any other replica's at `slot`.
    pub fn check_digest(&mut self, id: ReplicaId, slot: Slot, digest: u64) -> Result<(), Failure> {
        match self.digests.get(&slot) {
            Some((d, by)) if *d != digest => Err(Failure::new(
                FailureKind::StateDivergence,
                format!(
                    "{id} applied through slot {slot} holds state digest {digest:016x}, {by} held {d:016x} there"
                ),
            )),
            Some(_) => Ok(()),
            None => {
                self.digests.insert(slot, (digest, id));
                Ok(())
            }
        }
    }

    /// The number of distinct slots applied anywhere.
    pub fn chosen_slots(&self) -> u64 {
        self.chosen.len() as u64
    }

    /// The highest slot applied anywhere.
    pub fn max_chosen(&self) -> Slot {
        self.chosen
            .keys()
            .next_back()
            .copied()
            .unwrap_or(Slot::ZERO)
    }

    /// The number of acknowledged attempts.
    pub fn acked_requests(&self) -> u64 {
        self.acked
    }

    /// The highest slot any request was acknowledged at.
    pub fn max_acked_slot(&self) -> Slot {
        self.max_acked_slot
    }

    /// Checks one `Apply` of replica `id`, whose incarnation had applied
    /// through `applied_through` before it.
    pub fn on_apply(
        &mut self,
        id: ReplicaId,
        applied_through: Slot,
        slot: Slot,
        value: &Value,
        now_us: u64,
    ) -> Result<(), Failure> {
        if slot != applied_through.next() {
            return Err(Failure::new(
                FailureKind::NonContiguousApply,
                format!("{id} applied slot {slot} after slot {applied_through}"),
            ));
        }
        self.check_valid(id, slot, value)?;
        match self.chosen.get(&slot) {
            Some((first, by)) if first != value => Err(Failure::new(
                FailureKind::Agreement,
                format!(
                    "slot {slot}: {by} applied {} but {id} applied {}",
                    describe(first),
                    describe(value)
                ),
            )),
            Some(_) => Ok(()),
            None => {
                if let Value::Requests(b) = value {
                    if let Ok((_, requests)) = framing::parse(b) {
                        for r in requests {
                            let e = self.applied.entry(r).or_insert(Executions {
                                count: 0,
                                last_us: now_us,
                            });
                            e.count += 1;
                            e.last_us = now_us;
                        }
                    }
                }
                if let Value::Reconfigure(r) = value {
                    // Every slot below was applied somewhere already, so
                    // the membership in force at `slot` is known here.
                    let in_force = self
                        .reconfigs
                        .range(..slot)
                        .next_back()
                        .map_or(Slot::ZERO, |(s, _)| *s);
                    if r.applies_to(in_force) {
                        self.reconfigs.insert(slot, r.membership.clone());
                    }
                }
                self.chosen.insert(slot, (value.clone(), id));
                Ok(())
            }
        }
    }

    fn check_valid(&self, id: ReplicaId, slot: Slot, value: &Value) -> Result<(), Failure> {
        let Value::Requests(bytes) = value else {
            return Ok(());
        };
        let invalid = |why: String| {
            Failure::new(
                FailureKind::Validity,
                format!("{id} applied at slot {slot} {why}"),
            )
        };
        let (header, requests) =
            framing::parse(bytes).map_err(|e| invalid(format!("an unframed decree: {e}")))?;
        if !self.pool.contains(&header.tag.proposer) {
            return Err(invalid(format!(
                "a decree proposed by {}, not a replica",
                header.tag.proposer
            )));
        }
        if header.kind != DecreeKind::Client {
            return Err(invalid(
                "a directory decree, which the simulator never proposes".to_string(),
            ));
        }
        for r in requests {
            if !self.issued.contains(&r) {
                return Err(invalid(format!(
                    "a request no client issued ({} bytes)",
                    r.len()
                )));
            }
        }
        Ok(())
    }

    /// How often a request with this encoding was executed in chosen
    /// decrees; `None` if never.
    pub fn applied(&self, request: &Bytes) -> Option<Executions> {
        self.applied.get(request).copied()
    }

    /// Records that a request with encoding `request` was acknowledged as
    /// executed at `slot`, which must hold it.
    pub fn on_ack(&mut self, request: &Bytes, slot: Slot) -> Result<(), Failure> {
        let holds = match self.chosen.get(&slot) {
            Some((Value::Requests(b), _)) => framing::parse(b)
                .map(|(_, mut it)| it.any(|r| r == *request))
                .unwrap_or(false),
            _ => false,
        };
        if !holds {
            return Err(Failure::new(
                FailureKind::LostAcknowledgedRequest,
                format!(
                    "a request was acknowledged at slot {slot} which holds {}",
                    self.chosen
                        .get(&slot)
                        .map_or("nothing".to_string(), |(v, _)| describe(v))
                ),
            ));
        }
        self.acked += 1;
        self.max_acked_slot = self.max_acked_slot.max(slot);
        Ok(())
    }

    /// Checks a `StatusChanged` report.
    pub fn on_status(&mut self, status: &Status) -> Result<(), Failure> {
        if status.membership_slot > Slot::ZERO {
            if let Some((chosen, _)) = self.chosen.get(&status.membership_slot) {
                let installs = matches!(chosen, Value::Reconfigure(r)
                    if r.membership == status.membership
                        && self.reconfigs.contains_key(&status.membership_slot));
                if !installs {
                    return Err(Failure::new(
                        FailureKind::Quorum,
                        format!(
                            "{} adopted membership {:?} from slot {}, which holds {}",
                            status.id,
                            status.membership,
                            status.membership_slot,
                            describe(chosen)
                        ),
                    ));
                }
            }
        }
        if status.role != paxos_core::Role::Leader {
            return Ok(());
        }
        if status.ballot.leader != status.id {
            return Err(Failure::new(
                FailureKind::LeaderUniqueness,
                format!(
                    "{} reports Leader under ballot {} led by another replica",
                    status.id, status.ballot
                ),
            ));
        }
        match self.leaders.get(&status.ballot) {
            Some(other) if *other != status.id => Err(Failure::new(
                FailureKind::LeaderUniqueness,
                format!(
                    "{} and {} both lead ballot {}",
                    other, status.id, status.ballot
                ),
            )),
            _ => {
                self.leaders.insert(status.ballot, status.id);
                Ok(())
            }
        }
    }
}

/// A short description of a value for failure messages.
pub fn describe(value: &Value) -> String {
    match value {
        Value::Noop => "Noop".to_string(),
        Value::Reconfigure(r) => format!(
            "Reconfigure({:?} on top of slot {})",
            r.membership.voters, r.base
        ),
        Value::Requests(b) => match framing::parse(b) {
            Ok((h, requests)) => {
                let n = requests.len();
                format!(
                    "{:?} decree #{} of {} ({n} requests)",
                    h.kind, h.tag.counter, h.tag.proposer
                )
            }
            Err(e) => format!("Requests(<unframed: {e}>)"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use paxos_core::batch::BatchLimits;
    use paxos_node::framing::{FramedBuilder, Header, ProposalTag};

    fn r(i: u32) -> ReplicaId {
        ReplicaId(i)
    }

    fn checker() -> Checker {
        Checker::new(
            Membership::with_voters(vec![r(1), r(2), r(3)]),
            vec![r(1), r(2), r(3)],
        )
    }

    fn request(n: u8) -> Bytes {
        Bytes::from(vec![n; 3])
    }

    /// A decree as a node frames it, proposed by `proposer`.
    fn framed(proposer: u32, kind: DecreeKind, requests: &[Bytes]) -> Value {
        let header = Header {
            kind,
            tag: ProposalTag {
                proposer: r(proposer),
                nonce: 1,
                counter: u64::from(requests.first().map_or(0, |r| r[0])),
            },
            time_us: 0,
        };
        let mut b = FramedBuilder::new(BatchLimits::default(), &header);
        for q in requests {
            assert!(b.push(q));
        }
        Value::Requests(b.finish())
    }

    #[test]
    fn quorums_are_strict_majorities() {
        assert_eq!(
            [1, 2, 3, 4, 5, 6, 7].map(majority),
            [1, 2, 2, 3, 3, 4, 4],
            "two majorities of the same voters always intersect"
        );
    }

    #[test]
    fn agreement_is_checked_across_replicas() {
        let mut c = checker();
        c.note_issued(request(1));
        c.note_issued(request(2));
        let a = framed(1, DecreeKind::Client, &[request(1)]);
        let b = framed(1, DecreeKind::Client, &[request(2)]);
        c.on_apply(r(1), Slot::ZERO, Slot(1), &a, 0).unwrap();
        c.on_apply(r(2), Slot::ZERO, Slot(1), &a, 0).unwrap();
        let err = c.on_apply(r(3), Slot::ZERO, Slot(1), &b, 0).unwrap_err();
        assert_eq!(err.kind, FailureKind::Agreement);
        assert!(
            err.detail.contains("decree #1") && err.detail.contains("decree #2"),
            "{err}"
        );
    }

    #[test]
    fn only_votes_of_the_governing_voters_count() {
        let b = |round| Ballot::new(round, r(1));
        let mut c = checker();
        // Slot 1 moves the voters to {2, 3, 4}; it is governed by {1, 2, 3}.
        let next = Membership::with_voters(vec![r(2), r(3), r(4)]);
        let reconf = Value::Reconfigure(paxos_core::Reconfiguration {
            base: Slot::ZERO,
            membership: next.clone(),
        });
        c.record_vote(r(1), Slot(1), b(1), &reconf).unwrap();
        assert_eq!(
            c.check_quorum(r(1), Slot(1), &reconf).unwrap_err().kind,
            FailureKind::Quorum
        );
        c.record_vote(r(2), Slot(1), b(1), &reconf).unwrap();
        c.check_quorum(r(1), Slot(1), &reconf).unwrap();
        c.on_apply(r(1), Slot::ZERO, Slot(1), &reconf, 0).unwrap();
        assert_eq!(c.governing(Slot(1)).voters, vec![r(1), r(2), r(3)]);
        assert_eq!(c.governing(Slot(2)), &next);
        assert_eq!(c.latest_membership(), (Slot(1), &next));
        // Slot 2: votes of 1 (removed) and 2 are not a quorum of {2, 3, 4}.
        c.record_vote(r(1), Slot(2), b(1), &Value::Noop).unwrap();
        c.record_vote(r(2), Slot(2), b(1), &Value::Noop).unwrap();
        assert_eq!(
            c.check_quorum(r(2), Slot(2), &Value::Noop)
                .unwrap_err()
                .kind,
            FailureKind::Quorum
        );
        // Votes in two different ballots do not add up either.
        c.record_vote(r(4), Slot(2), b(2), &Value::Noop).unwrap();
        assert!(c.check_quorum(r(2), Slot(2), &Value::Noop).is_err());
        c.record_vote(r(4), Slot(2), b(1), &Value::Noop).unwrap();
        c.check_quorum(r(2), Slot(2), &Value::Noop).unwrap();
        // One value per replica, slot and ballot.
        assert_eq!(
            c.record_vote(r(4), Slot(2), b(1), &reconf)
                .unwrap_err()
                .kind,
            FailureKind::Quorum
        );
    }

    #[test]
    fn an_adopted_membership_must_be_the_chosen_one() {
        let mut c = checker();
        let next = Membership::with_voters(vec![r(2), r(3), r(4)]);
        let reconf = Value::Reconfigure(paxos_core::Reconfiguration {
            base: Slot::ZERO,
            membership: next.clone(),
        });
        c.on_apply(r(1), Slot::ZERO, Slot(1), &reconf, 0).unwrap();
        let status = |m: Membership| Status {
            id: r(2),
            role: paxos_core::Role::Follower,
            ballot: Ballot::ZERO,
            leader: None,
            commit_index: Slot(1),
            applied_index: Slot(1),
            in_flight: 0,
            membership: m,
            membership_slot: Slot(1),
            needs_snapshot: false,
            repair: None,
            log_bytes: 0,
            retained_from: Slot(1),
        };
        c.on_status(&status(next)).unwrap();
        let wrong = Membership::with_voters(vec![r(1), r(2), r(4)]);
        assert_eq!(
            c.on_status(&status(wrong)).unwrap_err().kind,
            FailureKind::Quorum
        );
    }

    #[test]
    fn gaps_and_repeats_are_caught() {
        let mut c = checker();
        c.on_apply(r(1), Slot::ZERO, Slot(1), &Value::Noop, 0)
            .unwrap();
        assert_eq!(
            c.on_apply(r(1), Slot(1), Slot(3), &Value::Noop, 0)
                .unwrap_err()
                .kind,
            FailureKind::NonContiguousApply
        );
        assert_eq!(
            c.on_apply(r(1), Slot(1), Slot(1), &Value::Noop, 0)
                .unwrap_err()
                .kind,
            FailureKind::NonContiguousApply
        );
    }

    #[test]
    fn unissued_requests_and_foreign_decrees_are_invalid() {
        let mut c = checker();
        c.note_issued(request(1));
        let kind = |c: &mut Checker, v: &Value| {
            c.on_apply(r(1), Slot::ZERO, Slot(1), v, 0)
                .unwrap_err()
                .kind
        };
        let unissued = framed(1, DecreeKind::Client, &[request(1), request(9)]);
        assert_eq!(kind(&mut c, &unissued), FailureKind::Validity);
        let stranger = framed(7, DecreeKind::Client, &[request(1)]);
        assert_eq!(kind(&mut c, &stranger), FailureKind::Validity);
        let directory = framed(1, DecreeKind::Directory, &[request(1)]);
        assert_eq!(kind(&mut c, &directory), FailureKind::Validity);
        let unframed = Value::Requests(paxos_core::batch::encode([&request(1)[..]]));
        assert_eq!(kind(&mut c, &unframed), FailureKind::Validity);
        c.on_apply(
            r(1),
            Slot::ZERO,
            Slot(1),
            &framed(1, DecreeKind::Client, &[request(1)]),
            0,
        )
        .unwrap();
        c.on_apply(r(1), Slot(1), Slot(2), &Value::Noop, 0).unwrap();
    }

    #[test]
    fn acks_must_point_at_a_slot_holding_the_request() {
        let mut c = checker();
        c.note_issued(request(1));
        c.note_issued(request(2));
        c.on_apply(
            r(1),
            Slot::ZERO,
            Slot(1),
            &framed(1, DecreeKind::Client, &[request(1), request(2)]),
            0,
        )
        .unwrap();
        c.on_ack(&request(2), Slot(1)).unwrap();
        assert_eq!(c.max_acked_slot(), Slot(1));
        assert_eq!(
            c.on_ack(&request(3), Slot(1)).unwrap_err().kind,
            FailureKind::LostAcknowledgedRequest
        );
        assert_eq!(
            c.on_ack(&request(1), Slot(2)).unwrap_err().kind,
            FailureKind::LostAcknowledgedRequest
        );
    }

    #[test]
    fn different_states_at_one_slot_are_divergence() {
        let mut c = checker();
        c.check_digest(r(1), Slot(5), 0xAB).unwrap();
        c.check_digest(r(2), Slot(5), 0xAB).unwrap();
        c.check_digest(r(2), Slot(6), 0xCD).unwrap();
        assert_eq!(
            c.check_digest(r(3), Slot(5), 0xAC).unwrap_err().kind,
            FailureKind::StateDivergence
        );
    }
}
