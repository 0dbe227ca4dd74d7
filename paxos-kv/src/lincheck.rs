//! A linearizability checker for key-value histories.
//!
//! The algorithm is Wing & Gong's search, with Lowe's memoization as in
//! Porcupine: walk the history's call and return events in time order; at
//! each call, try to linearize that operation now (the model must accept its
//! result); on reaching a return whose operation was not yet linearized,
//! backtrack. A cache of (set of linearized operations, model state) prunes
//! every configuration already explored, which makes the search practical
//! on real histories.
//!
//! Keys are independent registers, so a history is split per key and each
//! key is checked alone (linearizability is compositional).
//!
//! An operation whose outcome the client never learned (it timed out, the
//! connection broke, the server said the outcome is unknown) has no return
//! event: it may take effect at any point after its call, or never. Placing
//! it "at infinity" expresses both: linearized at the very end it is
//! invisible to every other operation.
//!
//! The search is bounded by a step budget; running out is reported as
//! [`Verdict::Inconclusive`], never as a pass.

use bytes::Bytes;
use std::collections::{HashMap, HashSet};

/// What an operation did to its key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// GET.
    Read,
    /// SET to this value.
    Write(Bytes),
    /// INCR.
    Incr,
    /// INCRBY (DECR and DECRBY too: a negative delta).
    IncrBy(i64),
    /// DEL.
    Del,
}

/// What the client observed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum OpOutcome {
    /// GET returned this value (`None`: the key was absent).
    Read(Option<Bytes>),
    /// SET returned OK.
    Written,
    /// INCR (or INCRBY) returned this new value.
    Incremented(i64),
    /// INCR (or INCRBY) failed because the value was not an integer.
    IncrNotInteger,
    /// DEL returned how many keys it removed (0 or 1).
    Deleted(i64),
    /// No answer: the operation may or may not have taken effect.
    Unknown,
}

/// One operation of a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    /// The client that ran it (for reports only).
    pub client: u32,
    /// The key it touched.
    pub key: Bytes,
    /// What it did.
    pub kind: OpKind,
    /// When the client sent it (any monotonic unit, e.g. ns).
    pub call: u64,
    /// When the client got the answer; `None` when the outcome is unknown.
    /// A time with an [`OpOutcome::Unknown`] outcome says the operation
    /// certainly took effect by then, with a result nobody observed (a
    /// checker that knows more than the client may say so).
    pub ret: Option<u64>,
    /// What the client observed; [`OpOutcome::Unknown`] if nothing.
    pub outcome: OpOutcome,
}

/// The result of checking a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every key's history is linearizable.
    Linearizable,
    /// This key's history has no linearization; these are its operations.
    NotLinearizable {
        /// The key.
        key: Bytes,
        /// The operations on it, in call order.
        operations: Vec<Operation>,
    },
    /// The search ran out of steps on this key before finding an answer.
    Inconclusive {
        /// The key.
        key: Bytes,
    },
}

/// Default search budget per key.
pub const DEFAULT_STEP_BUDGET: u64 = 5_000_000;

/// The register state of one key.
type State = Option<Bytes>;

fn as_integer(state: &State) -> Option<i64> {
    match state {
        None => Some(0),
        Some(v) => std::str::from_utf8(v).ok()?.parse().ok(),
    }
}

/// The sequential specification: if `op` may run with outcome `outcome` in
/// state `state`, the state after it.
fn step(state: &State, kind: &OpKind, outcome: &OpOutcome) -> Option<State> {
    match (kind, outcome) {
        (OpKind::Read, OpOutcome::Unknown) => Some(state.clone()),
        (OpKind::Read, OpOutcome::Read(v)) => (v == state).then(|| state.clone()),
        (OpKind::Write(v), OpOutcome::Written | OpOutcome::Unknown) => Some(Some(v.clone())),
        (OpKind::Incr | OpKind::IncrBy(_), outcome) => {
            let delta = match kind {
                OpKind::IncrBy(d) => *d,
                _ => 1,
            };
            match outcome {
                OpOutcome::Incremented(n) => {
                    let cur = as_integer(state)?;
                    (cur.checked_add(delta) == Some(*n)).then(|| Some(Bytes::from(n.to_string())))
                }
                OpOutcome::IncrNotInteger => as_integer(state).is_none().then(|| state.clone()),
                OpOutcome::Unknown => match as_integer(state).and_then(|c| c.checked_add(delta)) {
                    Some(n) => Some(Some(Bytes::from(n.to_string()))),
                    None => Some(state.clone()),
                },
                _ => None,
            }
        }
        (OpKind::Del, OpOutcome::Deleted(n)) => (*n == i64::from(state.is_some())).then_some(None),
        (OpKind::Del, OpOutcome::Unknown) => Some(None),
        _ => None,
    }
}

/// Checks a whole history, key by key.
pub fn check(history: &[Operation], step_budget: u64) -> Verdict {
    let mut by_key: HashMap<&Bytes, Vec<&Operation>> = HashMap::new();
    for op in history {
        // A read whose answer never arrived constrains nothing: leave it out
        // (it would only widen the search).
        if op.kind == OpKind::Read && op.ret.is_none() {
            continue;
        }
        by_key.entry(&op.key).or_default().push(op);
    }
    let mut keys: Vec<&Bytes> = by_key.keys().copied().collect();
    keys.sort();
    for key in keys {
        let ops = &by_key[key];
        match check_key(ops, step_budget) {
            Some(true) => {}
            Some(false) => {
                let mut operations: Vec<Operation> = ops.iter().map(|o| (*o).clone()).collect();
                operations.sort_by_key(|o| o.call);
                return Verdict::NotLinearizable {
                    key: key.clone(),
                    operations,
                };
            }
            None => return Verdict::Inconclusive { key: key.clone() },
        }
    }
    Verdict::Linearizable
}

/// One call or return event in the doubly linked event list.
#[derive(Clone, Copy, Debug)]
struct Event {
    op: usize,
    is_call: bool,
    /// For a call: the index of its return event (if any).
    matching: Option<usize>,
    prev: usize,
    next: usize,
}

const NIL: usize = usize::MAX;

/// `Some(true)`: linearizable; `Some(false)`: not; `None`: budget exhausted.
fn check_key(ops: &[&Operation], mut budget: u64) -> Option<bool> {
    // Events sorted by time; at equal times calls come first, so operations
    // touching at one instant count as concurrent (the lenient reading).
    let mut order: Vec<(u64, u8, usize)> = Vec::with_capacity(ops.len() * 2);
    for (i, op) in ops.iter().enumerate() {
        order.push((op.call, 0, i));
        if let Some(r) = op.ret {
            order.push((r.max(op.call), 1, i));
        }
    }
    order.sort_unstable();
    // Index 0 is the head sentinel.
    let mut events = vec![Event {
        op: NIL,
        is_call: false,
        matching: None,
        prev: NIL,
        next: NIL,
    }];
    let mut call_event = vec![NIL; ops.len()];
    for &(_, kind, op) in &order {
        let idx = events.len();
        events.push(Event {
            op,
            is_call: kind == 0,
            matching: None,
            prev: idx - 1,
            next: NIL,
        });
        events[idx - 1].next = idx;
        if kind == 0 {
            call_event[op] = idx;
        } else {
            events[call_event[op]].matching = Some(idx);
        }
    }
    let mut returns_left = ops.iter().filter(|o| o.ret.is_some()).count();
    let words = ops.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, State)> = HashSet::new();
    let mut state: State = None;
    let mut stack: Vec<(usize, State)> = Vec::new();

    let unlink = |events: &mut Vec<Event>, i: usize| {
        let (p, n) = (events[i].prev, events[i].next);
        events[p].next = n;
        if n != NIL {
            events[n].prev = p;
        }
    };
    let relink = |events: &mut Vec<Event>, i: usize| {
        let (p, n) = (events[i].prev, events[i].next);
        events[p].next = i;
        if n != NIL {
            events[n].prev = i;
        }
    };

    // Symmetry breaking: operations that are identical (kind, outcome, call
    // and return) are interchangeable, so the search only ever linearizes
    // them in index order; otherwise k retries of one request would make it
    // explore k! equivalent orders (and 2^k equivalent cache entries).
    let mut twin_before = vec![NIL; ops.len()];
    {
        let mut seen: HashMap<(&OpKind, &OpOutcome, u64, Option<u64>), usize> = HashMap::new();
        for (i, op) in ops.iter().enumerate() {
            if let Some(prev) = seen.insert((&op.kind, &op.outcome, op.call, op.ret), i) {
                twin_before[i] = prev;
            }
        }
    }
    let is_linearized = |linearized: &[u64], i: usize| linearized[i / 64] & (1 << (i % 64)) != 0;

    let mut entry = events[0].next;
    loop {
        if returns_left == 0 {
            // Every completed operation is linearized; what remains are
            // unknown-outcome operations, which may simply not take effect.
            return Some(true);
        }
        if budget == 0 {
            return None;
        }
        budget -= 1;
        if entry != NIL && events[entry].is_call {
            let ev = events[entry];
            let op = ops[ev.op];
            let twin = twin_before[ev.op];
            if twin != NIL && !is_linearized(&linearized, twin) {
                // Its identical twin goes first.
                entry = ev.next;
                continue;
            }
            if let Some(next_state) = step(&state, &op.kind, &op.outcome) {
                linearized[ev.op / 64] |= 1 << (ev.op % 64);
                if cache.insert((linearized.clone(), next_state.clone())) {
                    stack.push((entry, std::mem::replace(&mut state, next_state)));
                    unlink(&mut events, entry);
                    if let Some(m) = ev.matching {
                        unlink(&mut events, m);
                        returns_left -= 1;
                    }
                    entry = events[0].next;
                    continue;
                }
                linearized[ev.op / 64] &= !(1 << (ev.op % 64));
            }
            entry = ev.next;
        } else {
            // A return whose operation is not linearized yet (or the end of
            // the list with returns still pending): undo the last choice.
            let Some((call, old_state)) = stack.pop() else {
                return Some(false);
            };
            state = old_state;
            let cev = events[call];
            linearized[cev.op / 64] &= !(1 << (cev.op % 64));
            if let Some(m) = cev.matching {
                relink(&mut events, m);
                returns_left += 1;
            }
            relink(&mut events, call);
            entry = cev.next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn op(client: u32, kind: OpKind, call: u64, ret: Option<u64>, outcome: OpOutcome) -> Operation {
        Operation {
            client,
            key: b("k"),
            kind,
            call,
            ret,
            outcome,
        }
    }

    fn w(c: u32, v: &str, call: u64, ret: u64) -> Operation {
        op(c, OpKind::Write(b(v)), call, Some(ret), OpOutcome::Written)
    }

    fn r(c: u32, v: Option<&str>, call: u64, ret: u64) -> Operation {
        op(c, OpKind::Read, call, Some(ret), OpOutcome::Read(v.map(b)))
    }

    fn ok(h: &[Operation]) -> bool {
        match check(h, DEFAULT_STEP_BUDGET) {
            Verdict::Linearizable => true,
            Verdict::NotLinearizable { .. } => false,
            Verdict::Inconclusive { .. } => panic!("inconclusive"),
        }
    }

    #[test]
    fn many_identical_retries_are_checked_quickly() {
        // 40 executions of one retried write, all in one window, around
        // another write: linearizable, and found within a small budget.
        let mut h: Vec<Operation> = (0..40).map(|_| w(1, "a", 0, 100)).collect();
        h.push(w(2, "b", 0, 100));
        h.push(r(3, Some("a"), 101, 102));
        assert_eq!(check(&h, 100_000), Verdict::Linearizable);
        h.push(r(3, Some("c"), 103, 104));
        assert!(matches!(
            check(&h, 100_000),
            Verdict::NotLinearizable { .. }
        ));
    }

    #[test]
    fn incrby_adds_its_delta_and_a_known_time_bounds_an_unobserved_effect() {
        let inc = |c, d, call, ret, n| {
            op(
                c,
                OpKind::IncrBy(d),
                call,
                Some(ret),
                OpOutcome::Incremented(n),
            )
        };
        assert!(ok(&[
            inc(1, 5, 0, 1, 5),
            inc(2, -2, 2, 3, 3),
            r(1, Some("3"), 4, 5)
        ]));
        assert!(!ok(&[inc(1, 5, 0, 1, 5), inc(2, -2, 2, 3, 4)]));
        // Took effect by time 3, result unobserved: a read after must see it.
        let unobserved = op(1, OpKind::IncrBy(7), 0, Some(3), OpOutcome::Unknown);
        assert!(ok(&[unobserved.clone(), r(2, Some("7"), 4, 5)]));
        assert!(
            !ok(&[unobserved, r(2, None, 4, 5)]),
            "it cannot have not happened"
        );
    }

    #[test]
    fn sequential_history_is_linearizable() {
        assert!(ok(&[
            w(1, "a", 0, 1),
            r(1, Some("a"), 2, 3),
            w(1, "b", 4, 5),
            r(2, Some("b"), 6, 7)
        ]));
    }

    #[test]
    fn stale_read_after_completed_write_is_not() {
        assert!(!ok(&[
            w(1, "a", 0, 1),
            w(1, "b", 2, 3),
            r(2, Some("a"), 4, 5)
        ]));
        assert!(!ok(&[r(1, Some("x"), 0, 1)]), "a value nobody wrote");
    }

    #[test]
    fn concurrent_write_may_be_seen_or_not() {
        assert!(ok(&[w(1, "a", 0, 10), r(2, Some("a"), 1, 2)]));
        assert!(ok(&[w(1, "a", 0, 10), r(2, None, 1, 2)]));
        // But once one reader saw it, a later reader must too.
        assert!(!ok(&[
            w(1, "a", 0, 10),
            r(2, Some("a"), 1, 2),
            r(3, None, 3, 4)
        ]));
    }

    #[test]
    fn unknown_outcome_may_or_may_not_apply() {
        let lost = op(1, OpKind::Write(b("a")), 0, None, OpOutcome::Unknown);
        assert!(ok(&[lost.clone(), r(2, None, 5, 6)]));
        assert!(ok(&[lost.clone(), r(2, Some("a"), 5, 6)]));
        // It cannot apply before it was called.
        assert!(!ok(&[
            r(2, Some("a"), 0, 1),
            op(1, OpKind::Write(b("a")), 2, None, OpOutcome::Unknown)
        ]));
        // Having applied, it cannot un-apply.
        assert!(!ok(&[lost, r(2, Some("a"), 5, 6), r(2, None, 7, 8)]));
    }

    #[test]
    fn increments_and_deletes_follow_the_register_model() {
        let incr =
            |c, call, ret, n| op(c, OpKind::Incr, call, Some(ret), OpOutcome::Incremented(n));
        assert!(ok(&[
            incr(1, 0, 5, 1),
            incr(2, 1, 6, 2),
            r(3, Some("2"), 7, 8)
        ]));
        assert!(!ok(&[incr(1, 0, 1, 1), incr(2, 2, 3, 1)]), "lost update");
        let unknown_incr = op(1, OpKind::Incr, 0, None, OpOutcome::Unknown);
        assert!(ok(&[unknown_incr.clone(), incr(2, 5, 6, 2)]));
        assert!(ok(&[unknown_incr, incr(2, 5, 6, 1)]));
        let del = |c, call, ret, n| op(c, OpKind::Del, call, Some(ret), OpOutcome::Deleted(n));
        assert!(ok(&[
            w(1, "a", 0, 1),
            del(2, 2, 3, 1),
            r(1, None, 4, 5),
            del(1, 6, 7, 0)
        ]));
        assert!(!ok(&[w(1, "a", 0, 1), del(2, 2, 3, 0)]));
        let not_int = op(1, OpKind::Incr, 2, Some(3), OpOutcome::IncrNotInteger);
        assert!(ok(&[w(1, "x", 0, 1), not_int.clone()]));
        assert!(!ok(&[w(1, "5", 0, 1), not_int]));
    }

    #[test]
    fn keys_are_checked_independently() {
        let mut other = r(2, Some("zz"), 0, 1);
        other.key = b("other");
        let h = [w(1, "a", 0, 1), other];
        assert!(
            matches!(check(&h, DEFAULT_STEP_BUDGET), Verdict::NotLinearizable { key, .. } if key == b("other"))
        );
    }

    #[test]
    fn budget_exhaustion_is_inconclusive_not_a_pass() {
        let h: Vec<Operation> = (0..40)
            .map(|i| w(i, &i.to_string(), 0, 100))
            .chain([r(99, Some("nope"), 101, 102)])
            .collect();
        assert!(matches!(check(&h, 1000), Verdict::Inconclusive { .. }));
    }

    proptest! {
        /// Histories produced by running operations one at a time against a
        /// real register, with each operation's interval stretched to overlap
        /// neighbours, are always linearizable.
        #[test]
        fn histories_from_a_sequential_register_pass(ops in proptest::collection::vec((0u8..4, 0u8..5, 0u64..100, 0u64..250, any::<bool>()), 1..30)) {
            let mut state: State = None;
            let mut history = Vec::new();
            for (i, (kind, val, pre, post, lost)) in ops.into_iter().enumerate() {
                // The operation takes effect at time 100*i; the client saw
                // it from (100*i - pre) to (100*i + post).
                let at = 100 * (i as u64 + 1);
                let kind = match kind { 0 => OpKind::Read, 1 => OpKind::Write(b(&val.to_string())), 2 if val % 2 == 0 => OpKind::Incr, 2 => OpKind::IncrBy(i64::from(val) - 2), _ => OpKind::Del };
                let outcome = match &kind {
                    OpKind::Read => OpOutcome::Read(state.clone()),
                    OpKind::Write(v) => { state = Some(v.clone()); OpOutcome::Written }
                    OpKind::Incr | OpKind::IncrBy(_) => {
                        let delta = if let OpKind::IncrBy(d) = kind { d } else { 1 };
                        match as_integer(&state) {
                            Some(c) => { let n = c + delta; state = Some(b(&n.to_string())); OpOutcome::Incremented(n) }
                            None => OpOutcome::IncrNotInteger,
                        }
                    }
                    OpKind::Del => { let n = i64::from(state.is_some()); state = None; OpOutcome::Deleted(n) }
                };
                let (ret, outcome) = if lost { (None, OpOutcome::Unknown) } else { (Some(at + post), outcome) };
                history.push(Operation { client: i as u32, key: b("k"), kind, call: at - pre, ret, outcome });
            }
            prop_assert_eq!(check(&history, DEFAULT_STEP_BUDGET), Verdict::Linearizable);
        }
    }
}
