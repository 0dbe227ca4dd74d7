//! Simulated clients: they run key-value operations against the real
//! `KvStore` through the replicas, and record a history for the
//! linearizability checker.
//!
//! A client keeps a bounded window of *requests* (logical operations) that
//! were not yet acknowledged. Each time it hands a request to a replica is
//! an *attempt*, a separate operation of the history: an attempt that got
//! a reply has a return time and an outcome; one whose outcome is unknown
//! (the replica said so, crashed, or did not answer in time) has neither —
//! it may or may not take effect, which is exactly what the linearizability
//! checker's "unknown outcome" means. An attempt refused with `NotPrimary`
//! was never proposed, so it is dropped from the history. The request is
//! re-queued after every attempt that did not get a reply.
//!
//! Operations touch a small key space so that they conflict: registers
//! (`SET` with a value unique to the request, some with a TTL that never
//! lapses in a run, `GET`, `DEL`) and counters
//! (`INCRBY` with a delta unique to the request, `GET`). Every write's
//! encoding is unique to its request (a `DEL` names a second, never-written
//! key unique to it), which [`History::to_check`] relies on.

use bytes::{Bytes, BytesMut};
use paxos_kv::kv::encode_command;
use paxos_kv::lincheck::{OpKind, OpOutcome, Operation};
use paxos_kv::resp::{self, Frame, RespLimits};
use rand::rngs::SmallRng;
use rand::Rng;
use std::collections::BTreeMap;

/// Register keys `r0..` and counter keys `n0..`.
pub const REGISTER_KEYS: u32 = 12;
/// Counter keys.
pub const COUNTER_KEYS: u32 = 4;
/// The TTL of the simulator's `SET ... PX` writes: ten days, far past the
/// simulated time of any run, so no such key expires while it is checked.
const TTL_NEVER_LAPSES_MS: &str = "864000000";

/// One logical operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    /// Its request encoding (what the state machine executes).
    pub request: Bytes,
    /// The key.
    pub key: Bytes,
    /// What it does, for the checker.
    pub kind: OpKind,
}

impl Op {
    /// Draws an operation for request `(client, seq)`.
    pub fn draw(rng: &mut SmallRng, client: u32, seq: u64) -> Op {
        let counter = rng.gen_bool(0.15);
        let key = if counter {
            format!("n{}", rng.gen_range(0..COUNTER_KEYS))
        } else {
            format!("r{}", rng.gen_range(0..REGISTER_KEYS))
        };
        let roll = rng.gen_range(0..10);
        let (args, kind): (Vec<Bytes>, OpKind) = match (counter, roll) {
            (_, 0..=3) => (vec!["GET".into(), key.clone().into()], OpKind::Read),
            (true, _) => {
                // A delta unique to the request (small, so counters never
                // overflow), so its encoding is unique too.
                let delta = i64::try_from(seq * 4 + u64::from(client % 4)).unwrap_or(1);
                (
                    vec![
                        "INCRBY".into(),
                        key.clone().into(),
                        delta.to_string().into(),
                    ],
                    OpKind::IncrBy(delta),
                )
            }
            (false, 4) => {
                // A second key unique to the request, which no operation
                // ever writes (so it never counts as deleted), makes the
                // encoding unique: `History::to_check` tells requests
                // apart by their bytes, and identical DELs from different
                // clients would merge into one wide window.
                let unique = format!("u{client}:{seq}");
                (
                    vec!["DEL".into(), key.clone().into(), unique.into()],
                    OpKind::Del,
                )
            }
            (false, _) => {
                // Unique per request, so the validity checker can tell
                // requests apart and a lost write shows up in reads.
                let value = Bytes::from(format!("c{client}:{seq}"));
                let mut args = vec!["SET".into(), key.clone().into(), value.clone()];
                if roll == 9 {
                    // A TTL far longer than any run: to the checkers still
                    // a plain write, but it puts deadlines (and their share
                    // of snapshots and digests) in every replica's state.
                    args.extend(["PX".into(), TTL_NEVER_LAPSES_MS.into()]);
                }
                (args, OpKind::Write(value))
            }
        };
        let mut out = BytesMut::new();
        encode_command(&args, &mut out).expect("the simulator's commands are valid");
        Op {
            request: out.freeze(),
            key: Bytes::from(key),
            kind,
        }
    }

    /// What a client observed, from the state machine's RESP reply; `None`
    /// if the reply does not fit the operation (a checker failure).
    pub fn outcome(&self, reply: &[u8]) -> Option<OpOutcome> {
        let mut buf = BytesMut::from(reply);
        let frame = resp::parse(&mut buf, &RespLimits::default()).ok()??;
        if !buf.is_empty() {
            return None;
        }
        match (&self.kind, frame) {
            (OpKind::Read, Frame::Bulk(v)) => Some(OpOutcome::Read(v)),
            (OpKind::Write(_), Frame::Simple(s)) if &s[..] == b"OK" => Some(OpOutcome::Written),
            (OpKind::Incr | OpKind::IncrBy(_), Frame::Integer(n)) => {
                Some(OpOutcome::Incremented(n))
            }
            (OpKind::Incr | OpKind::IncrBy(_), Frame::Error(e))
                if e.starts_with(b"ERR value is not an integer") =>
            {
                Some(OpOutcome::IncrNotInteger)
            }
            (OpKind::Del, Frame::Integer(n)) => Some(OpOutcome::Deleted(n)),
            _ => None,
        }
    }
}

/// Where an unacknowledged request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestState {
    /// Waiting to be sent.
    Queued,
    /// Handed to replica index `replica` (in its incarnation
    /// `incarnation`) as attempt `attempt`; given up on at `deadline_us`.
    InFlight {
        /// The attempt id (the node's completion handle).
        attempt: u64,
        /// Replica index.
        replica: usize,
        /// That replica's incarnation.
        incarnation: u64,
        /// Simulated time after which the client gives up on the attempt.
        deadline_us: u64,
    },
}

/// A request not yet acknowledged.
#[derive(Clone, Debug)]
pub struct Pending {
    /// The operation.
    pub op: Op,
    /// Where it is.
    pub state: RequestState,
}

/// One simulated client.
#[derive(Clone, Debug)]
pub struct Client {
    /// Client id.
    pub id: u32,
    /// The next sequence number to issue.
    pub next_seq: u64,
    /// Replica index this client sends to.
    pub believed_leader: usize,
    /// Requests issued but not yet acknowledged, by sequence number.
    pub waiting: BTreeMap<u64, Pending>,
    /// Requests acknowledged so far.
    pub acked: u64,
    /// No request with this sequence number or above is issued (the
    /// liveness phase issues a fixed number of probes, then stops).
    pub issue_limit: u64,
    /// The highest slot any reply named: follower reads ask for at least
    /// this (so a client reads its own writes from any replica).
    pub seen_slot: paxos_core::Slot,
}

impl Client {
    /// A client with nothing outstanding.
    pub fn new(id: u32, believed_leader: usize) -> Client {
        Client {
            id,
            next_seq: 1,
            believed_leader,
            waiting: BTreeMap::new(),
            acked: 0,
            issue_limit: u64::MAX,
            seen_slot: paxos_core::Slot::ZERO,
        }
    }

    /// Issues new requests until `outstanding` are waiting (or the issue
    /// limit is reached); returns the new ones.
    pub fn fill(&mut self, rng: &mut SmallRng, outstanding: usize) -> Vec<Op> {
        let mut issued = Vec::new();
        while self.waiting.len() < outstanding && self.next_seq < self.issue_limit {
            let op = Op::draw(rng, self.id, self.next_seq);
            issued.push(op.clone());
            self.waiting.insert(
                self.next_seq,
                Pending {
                    op,
                    state: RequestState::Queued,
                },
            );
            self.next_seq += 1;
        }
        issued
    }

    /// Attempts whose deadline passed: re-queued, and returned so their
    /// history entries stay "outcome unknown".
    pub fn expire(&mut self, now_us: u64) -> Vec<u64> {
        let mut expired = Vec::new();
        for p in self.waiting.values_mut() {
            if let RequestState::InFlight {
                deadline_us,
                attempt,
                ..
            } = p.state
            {
                if deadline_us <= now_us {
                    p.state = RequestState::Queued;
                    expired.push(attempt);
                }
            }
        }
        expired
    }

    /// Re-queues the requests in flight at replica `replica` (it crashed or
    /// restarted its core).
    pub fn requeue_replica(&mut self, replica: usize) {
        for p in self.waiting.values_mut() {
            if matches!(p.state, RequestState::InFlight { replica: r, .. } if r == replica) {
                p.state = RequestState::Queued;
            }
        }
    }

    /// Re-queues the request whose attempt is `attempt`, if it is still in
    /// flight with it.
    pub fn requeue_attempt(&mut self, attempt: u64) {
        for p in self.waiting.values_mut() {
            if matches!(p.state, RequestState::InFlight { attempt: a, .. } if a == attempt) {
                p.state = RequestState::Queued;
            }
        }
    }

    /// Sequence numbers of up to `max` queued requests, oldest first.
    pub fn queued(&self, max: usize) -> Vec<u64> {
        self.waiting
            .iter()
            .filter(|(_, p)| p.state == RequestState::Queued)
            .map(|(seq, _)| *seq)
            .take(max)
            .collect()
    }
}

/// How often a request encoding was executed in chosen decrees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Executions {
    /// Times executed (slots holding it, counting repeats within one).
    pub count: u32,
    /// When the last of those slots was first applied anywhere.
    pub last_us: u64,
}

/// One attempt, as the history and the clients know it.
#[derive(Clone, Debug)]
pub struct Attempt {
    /// Client index.
    pub client: usize,
    /// The request's sequence number.
    pub seq: u64,
    /// Index of its operation in the history.
    pub history: usize,
    /// The request encoding it sent.
    pub request: Bytes,
}

/// The history of every attempt, for the linearizability checker.
#[derive(Debug, Default)]
pub struct History {
    /// The operations, in call order.
    pub ops: Vec<Operation>,
    /// Attempt id -> attempt.
    pub attempts: BTreeMap<u64, Attempt>,
    /// The next attempt id.
    pub next_attempt: u64,
}

impl History {
    /// Records a call of `op` by `client` at `now`; returns the attempt id.
    pub fn call(&mut self, client: usize, client_id: u32, seq: u64, op: &Op, now: u64) -> u64 {
        let id = self.next_attempt;
        self.next_attempt += 1;
        self.attempts.insert(
            id,
            Attempt {
                client,
                seq,
                history: self.ops.len(),
                request: op.request.clone(),
            },
        );
        self.ops.push(Operation {
            client: client_id,
            key: op.key.clone(),
            kind: op.kind.clone(),
            call: now,
            ret: None,
            outcome: OpOutcome::Unknown,
        });
        id
    }

    /// Attempt `id` returned `outcome` at `now`.
    pub fn returned(&mut self, id: u64, now: u64, outcome: OpOutcome) -> Option<Attempt> {
        let a = self.attempts.get(&id)?.clone();
        let op = &mut self.ops[a.history];
        op.ret = Some(now);
        op.outcome = outcome;
        Some(a)
    }

    /// Attempt `id` was never proposed: it cannot take effect, so it leaves
    /// the history.
    pub fn never_proposed(&mut self, id: u64) -> Option<Attempt> {
        let a = self.attempts.remove(&id)?;
        Self::erase(&mut self.ops[a.history]);
        Some(a)
    }

    /// Turns an operation into a read with an unknown outcome, which
    /// constrains nothing (the checker leaves such reads out).
    fn erase(op: &mut Operation) {
        op.kind = OpKind::Read;
        op.ret = None;
        op.outcome = OpOutcome::Unknown;
    }

    /// The history to check. The simulator knows more than the clients
    /// about attempts whose outcome they never learned, and uses it only
    /// where it is sound, to keep the search small. Every attempt of a
    /// request sends the same bytes, and every write (`SET`, `DEL`,
    /// `INCRBY`) is unique to its request, so its encoding names the request;
    /// `applied(request)` says how many times an encoding was executed (in
    /// chosen decrees) and when the last execution was applied. The `k`
    /// executions not accounted for by completed attempts came from `k` of
    /// the attempts whose outcome is unknown, each taking effect after its
    /// call and by then. So those attempts are replaced by `k` operations
    /// that took effect between the earliest of their calls and that time
    /// (a wider window than each really had: every true linearization stays
    /// possible), with results nobody observed; with `k = 0` they are left
    /// out. Attempts of encodings executed more often than that are kept as
    /// they are.
    pub fn to_check(&self, applied: impl Fn(&Bytes) -> Option<Executions>) -> Vec<Operation> {
        let mut unknown: std::collections::HashMap<&Bytes, Vec<usize>> =
            std::collections::HashMap::new();
        let mut completed: std::collections::HashMap<&Bytes, u32> =
            std::collections::HashMap::new();
        for a in self.attempts.values() {
            let op = &self.ops[a.history];
            if op.kind == OpKind::Read {
                continue;
            }
            if op.ret.is_some() {
                *completed.entry(&a.request).or_default() += 1;
            } else {
                unknown.entry(&a.request).or_default().push(a.history);
            }
        }
        let mut ops = self.ops.clone();
        for (request, mut histories) in unknown {
            let done = completed.get(request).copied().unwrap_or(0);
            let Some(e) = applied(request) else {
                histories.iter().for_each(|&h| Self::erase(&mut ops[h]));
                continue;
            };
            let extra = e.count.saturating_sub(done) as usize;
            if extra > histories.len() {
                continue;
            }
            histories.sort_by_key(|&h| ops[h].call);
            let earliest = ops[histories[0]].call;
            if e.last_us < earliest {
                continue;
            }
            for (i, &h) in histories.iter().enumerate() {
                if i < extra {
                    // It took effect by then; what it returned nobody saw.
                    ops[h].call = earliest;
                    ops[h].ret = Some(e.last_us);
                    ops[h].outcome = match ops[h].kind {
                        OpKind::Write(_) => OpOutcome::Written,
                        _ => OpOutcome::Unknown,
                    };
                } else {
                    Self::erase(&mut ops[h]);
                }
            }
        }
        ops
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn drawn_operations_parse_their_replies() {
        let mut rng = SmallRng::seed_from_u64(7);
        let mut kinds = std::collections::BTreeSet::new();
        for seq in 0..200 {
            let op = Op::draw(&mut rng, 1, seq);
            let reply: &[u8] = match &op.kind {
                OpKind::Read => b"$3\r\nabc\r\n",
                OpKind::Write(_) => b"+OK\r\n",
                OpKind::Incr | OpKind::IncrBy(_) => b":4\r\n",
                OpKind::Del => b":1\r\n",
            };
            assert!(op.outcome(reply).is_some(), "{op:?}");
            assert!(op.outcome(b"-ERR nope\r\n").is_none());
            assert!(op.outcome(b"").is_none());
            kinds.insert(format!("{:?}", std::mem::discriminant(&op.kind)));
        }
        assert_eq!(kinds.len(), 4, "every kind is drawn");
        // Writes from any client and sequence number never share bytes.
        let mut writes = std::collections::HashSet::new();
        for client in 0..4 {
            for seq in 0..300 {
                let op = Op::draw(&mut rng, client, seq);
                if op.kind != OpKind::Read {
                    assert!(writes.insert(op.request.clone()), "{op:?} repeats");
                }
            }
        }
        assert!(writes.len() > 500);
        let incr = Op {
            request: Bytes::new(),
            key: Bytes::from_static(b"n0"),
            kind: OpKind::Incr,
        };
        assert_eq!(
            incr.outcome(b"-ERR value is not an integer or out of range\r\n"),
            Some(OpOutcome::IncrNotInteger)
        );
    }

    #[test]
    fn client_window_expiry_and_requeue() {
        let mut rng = SmallRng::seed_from_u64(1);
        let mut c = Client::new(1, 0);
        assert_eq!(c.fill(&mut rng, 3).len(), 3);
        assert_eq!(c.queued(10), vec![1, 2, 3]);
        for (attempt, seq) in [(10, 1), (11, 2)] {
            c.waiting.get_mut(&seq).unwrap().state = RequestState::InFlight {
                attempt,
                replica: 0,
                incarnation: 0,
                deadline_us: 100 * attempt,
            };
        }
        assert_eq!(c.queued(10), vec![3]);
        assert_eq!(c.expire(1050), vec![10]);
        assert_eq!(c.queued(10), vec![1, 3]);
        c.requeue_replica(0);
        assert_eq!(c.queued(10), vec![1, 2, 3]);
        c.issue_limit = c.next_seq;
        assert!(c.fill(&mut rng, 10).is_empty(), "no issue past the limit");
    }
}
