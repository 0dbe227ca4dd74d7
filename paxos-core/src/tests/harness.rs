//! A tiny deterministic in-test cluster: synchronous message pump, in-memory
//! storage that completes persists in FIFO order, and a global check that no
//! two replicas ever apply different values at one slot.
//!
//! This is not the fault simulator (that is paxos-sim); it only gives the
//! unit tests a way to drive a few replicas through scripted scenarios.

use crate::codec;
use crate::{
    Action, Ballot, Config, DurableState, Membership, Message, PersistEntry, PersistToken, Replica,
    ReplicaId, Slot, Status, Time, Value,
};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

pub fn id(n: u32) -> ReplicaId {
    ReplicaId(n)
}

/// A `Reconfigure` to `m`, proposed on top of the membership installed at
/// slot `base`.
pub fn reconfigure(base: Slot, m: Membership) -> Value {
    Value::Reconfigure(crate::Reconfiguration {
        base,
        membership: m,
    })
}

pub fn req(text: &str) -> Value {
    Value::Requests(crate::batch::encode([text.as_bytes()]))
}

/// For tests that drive one replica by hand: answers every `PreVote` in
/// `sent` with a grant from its addressee, as a voter that hears no leader
/// and is not ahead would. Returns how many it granted.
pub fn grant_pre_votes(r: &mut Replica, now: Time, sent: &[(ReplicaId, Message)]) -> usize {
    let mut granted = 0;
    for (to, msg) in sent {
        if let Message::PreVote(crate::msg::PreVote { ballot, .. }) = msg {
            let reply = crate::msg::PreVoteReply {
                ballot: *ballot,
                granted: true,
                promised: Ballot::ZERO,
                commit_index: Slot::ZERO,
            };
            r.handle_message(now, *to, Message::PreVoteReply(reply));
            granted += 1;
        }
    }
    granted
}

pub struct Node {
    pub replica: Option<Replica>,
    pub config: Config,
    /// What storage made durable.
    pub durable: DurableState,
    /// Persists issued but not yet durable.
    pub pending: VecDeque<(PersistToken, Vec<PersistEntry>)>,
    /// Applied values of the current instance, in order.
    pub applied: Vec<(Slot, Value)>,
    /// The state machine's checkpoint (applied_through) survives restarts
    /// when `keep_applied` is set.
    pub applied_through: Slot,
    /// The last checkpoint the state machine wrote (survives every restart).
    pub checkpoint: Slot,
    pub statuses: Vec<Status>,
    /// Whether persists complete as soon as they are issued.
    pub auto_persist: bool,
    pub seed: u64,
    /// The membership the state machine last applied (slot, ballot, value),
    /// as a real state machine keeps it for its checkpoint.
    pub sm_membership: Option<(Slot, Ballot, Membership)>,
    /// `sm_membership` as of `checkpoint`.
    pub checkpoint_membership: Option<(Slot, Ballot, Membership)>,
}

impl Node {
    fn new(config: Config, seed: u64, now: Time) -> Node {
        let replica = Replica::new(
            config.clone(),
            DurableState::default(),
            Slot::ZERO,
            seed,
            now,
        );
        Node {
            replica: Some(replica),
            config,
            durable: DurableState::default(),
            pending: VecDeque::new(),
            applied: Vec::new(),
            applied_through: Slot::ZERO,
            checkpoint: Slot::ZERO,
            statuses: Vec::new(),
            auto_persist: true,
            seed,
            sm_membership: None,
            checkpoint_membership: None,
        }
    }

    /// The config to restart with when the state machine holds `m`.
    pub fn restart_config(&self, m: &Option<(Slot, Ballot, Membership)>) -> Config {
        let mut config = self.config.clone();
        if let Some((slot, ballot, membership)) = m {
            config.membership = membership.clone();
            config.membership_ballot = *ballot;
            config.membership_slot = *slot;
        }
        config
    }
}

/// A rule for [`Cluster::drop_rule`].
pub type DropRule = Box<dyn Fn(ReplicaId, ReplicaId, &Message) -> bool>;

pub struct Cluster {
    pub nodes: BTreeMap<ReplicaId, Node>,
    /// Applied to each node's config (also to nodes added later).
    pub tweak: fn(&mut Config),
    /// Messages in flight, delivered in FIFO order.
    pub net: VecDeque<(ReplicaId, ReplicaId, Message)>,
    /// One-way network delay. 0 (the default): a message is delivered by
    /// the `pump` that follows its sending, with no time passing. Otherwise
    /// it waits in `delayed` until `advance` reaches its delivery time.
    pub latency_us: u64,
    /// Messages sent with `latency_us > 0`: (delivery time, from, to,
    /// message), in delivery order.
    pub delayed: VecDeque<(Time, ReplicaId, ReplicaId, Message)>,
    pub now: Time,
    /// Links (from, to) that drop everything.
    pub cut: BTreeSet<(ReplicaId, ReplicaId)>,
    /// Drops the messages it returns true for (from, to, message).
    pub drop_rule: Option<DropRule>,
    /// Every value any replica applied, per slot.
    pub chosen: BTreeMap<Slot, Value>,
    /// Count of messages delivered, by kind.
    pub delivered: BTreeMap<&'static str, usize>,
}

impl Cluster {
    pub fn new(n: u32, tweak: fn(&mut Config)) -> Cluster {
        let members = Membership::with_voters((1..=n).map(ReplicaId).collect());
        Cluster::with_membership(members, tweak)
    }

    fn config_for(rid: ReplicaId, members: &Membership, tweak: fn(&mut Config)) -> Config {
        let mut config = Config::new(rid, members.clone());
        config.heartbeat_interval_us = 10_000;
        config.election_timeout_min_us = 50_000;
        config.election_timeout_max_us = 100_000;
        config.pipeline_window = 8;
        config.max_accept_ahead = 32;
        tweak(&mut config);
        config
    }

    pub fn with_membership(members: Membership, tweak: fn(&mut Config)) -> Cluster {
        Cluster::with_membership_seeded(members, 0x5eed_0000, tweak)
    }

    /// `n` voters whose randomness (election timeouts) derives from `seed`.
    pub fn new_seeded(n: u32, seed: u64, tweak: fn(&mut Config)) -> Cluster {
        let members = Membership::with_voters((1..=n).map(ReplicaId).collect());
        Cluster::with_membership_seeded(members, seed, tweak)
    }

    fn with_membership_seeded(members: Membership, seed: u64, tweak: fn(&mut Config)) -> Cluster {
        let mut nodes = BTreeMap::new();
        for rid in members.all() {
            let config = Cluster::config_for(rid, &members, tweak);
            let seed = seed.wrapping_add(u64::from(rid.0));
            nodes.insert(rid, Node::new(config, seed, Time(0)));
        }
        let mut c = Cluster {
            nodes,
            tweak,
            net: VecDeque::new(),
            latency_us: 0,
            delayed: VecDeque::new(),
            now: Time(0),
            cut: BTreeSet::new(),
            drop_rule: None,
            chosen: BTreeMap::new(),
            delivered: BTreeMap::new(),
        };
        c.pump();
        c
    }

    /// Starts a new, empty replica `r` that believes `members` is the
    /// membership (it should not be a voter there: it joins as a learner).
    pub fn add_node(&mut self, r: ReplicaId, members: Membership) {
        assert!(!self.nodes.contains_key(&r));
        let config = Cluster::config_for(r, &members, self.tweak);
        let seed = 0x5eed_0000 + u64::from(r.0);
        self.nodes.insert(r, Node::new(config, seed, self.now));
        self.pump();
    }

    pub fn replica(&mut self, r: ReplicaId) -> &mut Replica {
        self.nodes
            .get_mut(&r)
            .and_then(|n| n.replica.as_mut())
            .expect("replica is up")
    }

    pub fn status(&self, r: ReplicaId) -> Status {
        self.nodes[&r]
            .replica
            .as_ref()
            .expect("replica is up")
            .status()
    }

    /// Whether `r` exists and is running (a member that was never started
    /// counts as down).
    pub fn is_up(&self, r: ReplicaId) -> bool {
        self.nodes.get(&r).is_some_and(|n| n.replica.is_some())
    }

    /// Drains every replica's actions and delivers messages until nothing
    /// is left to do (time does not move).
    pub fn pump(&mut self) {
        for _ in 0..1_000_000 {
            self.drain_actions();
            match self.net.pop_front() {
                Some((from, to, msg)) => self.deliver(from, to, msg),
                None => return,
            }
        }
        panic!("cluster did not quiesce");
    }

    fn deliver(&mut self, from: ReplicaId, to: ReplicaId, msg: Message) {
        if self.cut.contains(&(from, to))
            || !self.is_up(to)
            || self
                .drop_rule
                .as_ref()
                .is_some_and(|drop| drop(from, to, &msg))
        {
            return;
        }
        // Every message goes through the codec, as on the real network.
        let frame = codec::encode_to_bytes(&msg);
        let msg = codec::decode(frame).expect("codec roundtrip");
        *self.delivered.entry(msg.kind()).or_default() += 1;
        let now = self.now;
        self.replica(to).handle_message(now, from, msg);
    }

    pub fn drain_actions(&mut self) {
        loop {
            let mut progressed = false;
            let ids: Vec<ReplicaId> = self.nodes.keys().copied().collect();
            for r in ids {
                while let Some(action) = self
                    .nodes
                    .get_mut(&r)
                    .and_then(|n| n.replica.as_mut())
                    .and_then(|x| x.poll_action())
                {
                    progressed = true;
                    self.perform(r, action);
                }
            }
            if !progressed {
                return;
            }
        }
    }

    fn perform(&mut self, r: ReplicaId, action: Action) {
        let now = self.now;
        match action {
            Action::Send { to, msg } => {
                assert_ne!(to, r, "a replica never sends to itself through the driver");
                if self.cut.contains(&(r, to)) {
                    // Dropped.
                } else if self.latency_us == 0 {
                    self.net.push_back((r, to, msg));
                } else {
                    let at = now.plus_micros(self.latency_us);
                    self.delayed.push_back((at, r, to, msg));
                }
            }
            Action::Persist { token, entries } => {
                let node = self.nodes.get_mut(&r).unwrap();
                if let Some((last, _)) = node.pending.back() {
                    assert!(token > *last, "tokens are issued in increasing order");
                }
                node.pending.push_back((token, entries));
                if node.auto_persist {
                    self.complete_persists(r);
                }
                let _ = now;
            }
            Action::Apply {
                slot,
                ballot,
                value,
            } => {
                let node = self.nodes.get_mut(&r).unwrap();
                if let Value::Reconfigure(rc) = &value {
                    // Like a real state machine: a change based on a
                    // membership no longer in force is a no-op.
                    let in_force = node.sm_membership.as_ref().map_or(Slot::ZERO, |m| m.0);
                    if rc.applies_to(in_force) {
                        node.sm_membership = Some((slot, ballot, rc.membership.clone()));
                    }
                }
                let expected = node
                    .applied
                    .last()
                    .map_or(node.applied_through.next(), |(s, _)| s.next());
                assert_eq!(slot, expected, "{r}: applies must be contiguous");
                node.applied.push((slot, value.clone()));
                match self.chosen.get(&slot) {
                    Some(v) => assert_eq!(*v, value, "SAFETY: two values applied at slot {slot}"),
                    None => {
                        self.chosen.insert(slot, value);
                    }
                }
            }
            Action::StatusChanged(s) => {
                assert_eq!(s.id, r);
                self.nodes.get_mut(&r).unwrap().statuses.push(s);
            }
            Action::ReadDecrees {
                peer,
                from,
                through,
                max_decrees,
                max_bytes: _,
            } => {
                // Storage serves what it made durable, contiguous from `from`.
                let node = self.nodes.get_mut(&r).unwrap();
                let mut next = from;
                let decrees: Vec<_> = node
                    .durable
                    .accepted
                    .range(from..=through)
                    .take(max_decrees)
                    .map(|(_, a)| a.clone())
                    .take_while(|a| {
                        let ok = a.slot == next;
                        next = next.next();
                        ok
                    })
                    .collect();
                let read = (!decrees.is_empty()).then_some(decrees);
                if let Some(rep) = node.replica.as_mut() {
                    rep.on_decrees_read(now, peer, from, read);
                }
            }
        }
    }

    /// Makes every pending persist of `r` durable and reports the last token.
    pub fn complete_persists(&mut self, r: ReplicaId) {
        let now = self.now;
        let node = self.nodes.get_mut(&r).unwrap();
        let mut last = None;
        while let Some((token, entries)) = node.pending.pop_front() {
            for e in &entries {
                node.durable.apply(e);
            }
            last = Some(token);
        }
        if let (Some(t), Some(rep)) = (last, node.replica.as_mut()) {
            rep.on_persisted(now, t);
        }
    }

    /// Advances time by `us` in steps, ticking replicas whose timers are due
    /// and delivering delayed messages whose time has come.
    pub fn advance(&mut self, us: u64) {
        let end = self.now.plus_micros(us);
        while self.now < end {
            let next = self
                .nodes
                .values()
                .filter_map(|n| n.replica.as_ref().and_then(|r| r.next_timer()))
                .chain(self.delayed.front().map(|(at, ..)| *at))
                .min()
                .unwrap_or(end)
                .min(end)
                .max(self.now);
            self.now = if next == self.now {
                self.now.plus_micros(1).min(end)
            } else {
                next
            };
            let now = self.now;
            let ids: Vec<ReplicaId> = self.nodes.keys().copied().collect();
            for r in ids {
                if let Some(rep) = self.nodes.get_mut(&r).unwrap().replica.as_mut() {
                    if rep.next_timer().is_some_and(|t| t <= now) {
                        rep.handle_tick(now);
                    }
                }
            }
            while self.delayed.front().is_some_and(|(at, ..)| *at <= now) {
                if let Some((_, from, to, msg)) = self.delayed.pop_front() {
                    self.net.push_back((from, to, msg));
                }
            }
            self.pump();
        }
    }

    /// Advances time until `pred` holds, at most `max_us`; returns whether it did.
    pub fn run_until(&mut self, max_us: u64, mut pred: impl FnMut(&Cluster) -> bool) -> bool {
        let end = self.now.plus_micros(max_us);
        while self.now < end {
            if pred(self) {
                return true;
            }
            self.advance(1_000);
        }
        pred(self)
    }

    /// The announced leader, if exactly one replica is.
    pub fn leader(&self) -> Option<ReplicaId> {
        let leaders: Vec<ReplicaId> = self
            .nodes
            .iter()
            .filter(|(_, n)| {
                n.replica
                    .as_ref()
                    .is_some_and(|r| r.status().role == crate::Role::Leader)
            })
            .map(|(r, _)| *r)
            .collect();
        if leaders.len() == 1 {
            Some(leaders[0])
        } else {
            None
        }
    }

    /// Every (replica, ballot) that ever reported itself leader, restarts
    /// included: a leader change is a second entry.
    pub fn leaderships(&self) -> BTreeSet<(ReplicaId, Ballot)> {
        self.nodes
            .iter()
            .flat_map(|(r, n)| {
                n.statuses
                    .iter()
                    .filter(|s| s.role == crate::Role::Leader)
                    .map(move |s| (*r, s.ballot))
            })
            .collect()
    }

    pub fn elect_any(&mut self) -> ReplicaId {
        assert!(
            self.run_until(2_000_000, |c| c.leader().is_some()),
            "no leader elected"
        );
        self.leader().unwrap()
    }

    /// Proposes through the current leader and runs until every up replica
    /// applied that slot.
    pub fn commit(&mut self, value: Value) -> Slot {
        let slot = self.propose_retrying(value);
        assert!(
            self.run_until(2_000_000, |c| c.all_applied(slot)),
            "slot {slot} not applied everywhere"
        );
        slot
    }

    /// Proposes through the current leader, waiting out a full window or a
    /// leader change.
    pub fn propose_retrying(&mut self, value: Value) -> Slot {
        for _ in 0..10_000 {
            let leader = self.elect_any();
            let now = self.now;
            match self.replica(leader).propose(now, value.clone()) {
                Ok(slot) => {
                    self.pump();
                    return slot;
                }
                Err(crate::ProposeError::WindowFull | crate::ProposeError::NotLeader { .. }) => {
                    self.advance(1_000)
                }
                Err(e) => panic!("propose: {e}"),
            }
        }
        panic!("could not propose");
    }

    /// Proposes through the leader and runs until the given replicas applied it.
    pub fn commit_on(&mut self, replicas: &[ReplicaId], value: Value) -> Slot {
        let leader = self.elect_any();
        let now = self.now;
        let slot = self.replica(leader).propose(now, value).expect("propose");
        self.pump();
        let rs = replicas.to_vec();
        assert!(
            self.run_until(2_000_000, |c| rs
                .iter()
                .all(|r| c.status(*r).applied_index >= slot)),
            "slot {slot} not applied on {replicas:?}"
        );
        slot
    }

    pub fn all_applied(&self, slot: Slot) -> bool {
        self.nodes
            .values()
            .filter(|n| n.replica.is_some())
            .all(|n| n.replica.as_ref().unwrap().status().applied_index >= slot)
    }

    /// Whether every up replica that the leader's membership includes applied
    /// `slot` (removed replicas are not kept up to date).
    pub fn members_applied(&self, slot: Slot) -> bool {
        let Some(leader) = self.leader() else {
            return false;
        };
        let members = self.status(leader).membership;
        self.nodes
            .iter()
            .filter(|(r, n)| n.replica.is_some() && members.contains(**r))
            .all(|(_, n)| n.replica.as_ref().unwrap().status().applied_index >= slot)
    }

    pub fn isolate(&mut self, r: ReplicaId) {
        let ids: Vec<ReplicaId> = self.nodes.keys().copied().collect();
        for o in ids {
            if o != r {
                self.cut.insert((r, o));
                self.cut.insert((o, r));
            }
        }
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// Crashes `r`: its memory and its unfinished persists are lost.
    pub fn crash(&mut self, r: ReplicaId) {
        let node = self.nodes.get_mut(&r).unwrap();
        node.replica = None;
        node.pending.clear();
        self.net.retain(|(from, to, _)| *from != r && *to != r);
        self.delayed
            .retain(|(_, from, to, _)| *from != r && *to != r);
    }

    /// Restarts `r` from its durable state. The state machine restarts from
    /// its last checkpoint, or with everything it applied if `keep_applied`.
    pub fn restart(&mut self, r: ReplicaId, keep_applied: bool) {
        let now = self.now;
        let node = self.nodes.get_mut(&r).unwrap();
        node.seed += 1000;
        if keep_applied {
            node.applied_through = node
                .applied
                .last()
                .map_or(node.applied_through, |(s, _)| *s);
        } else {
            node.applied_through = node.checkpoint;
            node.sm_membership = node.checkpoint_membership.clone();
        }
        node.applied.clear();
        let config = node.restart_config(&node.sm_membership);
        node.replica = Some(Replica::new(
            config,
            node.durable.clone(),
            node.applied_through,
            node.seed,
            now,
        ));
        self.pump();
    }

    /// Emulates installing the most advanced peer's checkpoint on `r` (the
    /// real transfer is a later issue): `r` restarts with its state machine
    /// at that peer's applied index and storage truncated there.
    pub fn install_snapshot(&mut self, r: ReplicaId) {
        let (through, membership) = self
            .nodes
            .iter()
            .filter(|(o, n)| **o != r && n.replica.is_some())
            .map(|(_, n)| {
                (
                    n.replica.as_ref().unwrap().status().applied_index,
                    n.sm_membership.clone(),
                )
            })
            .max_by_key(|(s, _)| *s)
            .unwrap_or((Slot::ZERO, None));
        self.crash(r);
        let now = self.now;
        let node = self.nodes.get_mut(&r).unwrap();
        node.durable.apply(&PersistEntry::Truncate(through));
        node.durable.apply(&PersistEntry::Commit(through));
        node.applied_through = through;
        node.checkpoint = through;
        node.sm_membership = membership.clone();
        node.checkpoint_membership = membership;
        node.applied.clear();
        node.seed += 1000;
        let config = node.restart_config(&node.sm_membership);
        node.replica = Some(Replica::new(
            config,
            node.durable.clone(),
            through,
            node.seed,
            now,
        ));
    }

    /// The state machine of `r` checkpoints what it applied; the replica
    /// compacts up to there.
    pub fn checkpoint_and_compact(&mut self, r: ReplicaId) {
        let node = self.nodes.get_mut(&r).unwrap();
        let Some(rep) = node.replica.as_mut() else {
            return;
        };
        let through = rep.status().applied_index;
        node.checkpoint = through;
        node.checkpoint_membership = node.sm_membership.clone();
        rep.compact(through);
    }

    pub fn applied_values(&self, r: ReplicaId) -> Vec<Value> {
        self.nodes[&r]
            .applied
            .iter()
            .map(|(_, v)| v.clone())
            .collect()
    }
}
