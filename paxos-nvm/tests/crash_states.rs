//! Crash-state exploration: every store, flush and fence the log performs is
//! recorded; at every prefix of the trace we build the crash images the PM
//! model allows (any subset of not-yet-durable 8-byte words persisted, each
//! word all or nothing, intermediate values included), recover from each,
//! and check the recovered log is the last committed state, or the state
//! being committed, and never a mix.

use bytes::Bytes;
use paxos_core::{Accepted, Ballot, Membership, PersistEntry, ReplicaId, Slot, Value};
use paxos_log::{ReplicaStorage, StorageError};
use paxos_nvm::crash_model::{PmEvent, PmState, RecordingRegion};
use paxos_nvm::layout::{CDB_OFFSET, DAMAGE_LEN, DAMAGE_OFFSET, LOG_AREA_OFFSET, META_OFFSETS};
use paxos_nvm::{LogError, NvmOptions, NvmStats, NvmStorage, PmLog, PmRegion, VolatileRegion};
use proptest::prelude::*;

const LOG_ID: u128 = 0x5eed;

#[derive(Clone, Debug)]
enum Op {
    Append(Vec<u8>),
    Commit,
    /// Advance the head by this fraction (of 255) of the committed bytes.
    AdvanceHead(u8),
    Abort,
}

/// The committed log as recovery must see it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Committed {
    head: u64,
    tail: u64,
    bytes: Vec<u8>,
}

fn committed_of<R: PmRegion>(log: &PmLog<R>) -> Committed {
    let htc = log.head_tail_capacity();
    Committed {
        head: htc.head,
        tail: htc.tail,
        bytes: log.read(htc.head, htc.tail - htc.head).unwrap(),
    }
}

/// One operation's span of trace events and the committed state around it.
struct Span<S> {
    start: usize,
    end: usize,
    before: S,
    after: S,
}

/// The states recovery may return after a crash once `k` events ran.
fn allowed_at<S: Clone>(spans: &[Span<S>], initial: &S, k: usize) -> Vec<S> {
    if let Some(s) = spans.iter().find(|s| s.start < k && k < s.end) {
        return vec![s.before.clone(), s.after.clone()];
    }
    let last_done = spans.iter().rev().find(|s| s.end <= k);
    vec![last_done.map_or_else(|| initial.clone(), |s| s.after.clone())]
}

#[derive(Default, Debug)]
struct Outcome {
    crash_points: usize,
    images: usize,
    /// Mid-operation crashes that recovered the old / the new state.
    mid_old: usize,
    mid_new: usize,
}

fn formatted_image(capacity: u64) -> Vec<u8> {
    let log = PmLog::setup(
        VolatileRegion::new((LOG_AREA_OFFSET + capacity) as usize),
        LOG_ID,
    )
    .unwrap();
    log.into_region().as_bytes().to_vec()
}

/// Runs `ops` on a recorded log, then recovers from crash images at every
/// prefix of the trace (at most `limit` images per prefix).
fn explore_log(capacity: u64, ops: &[Op], limit: usize, seed: u64) -> Result<Outcome, String> {
    let base = formatted_image(capacity);
    let (region, trace) = RecordingRegion::new(base.clone());
    let mut log = PmLog::start(region, Some(LOG_ID)).map_err(|e| e.to_string())?;
    let initial = committed_of(&log);
    let mut model_head = 0u64;
    let mut model_bytes: Vec<u8> = Vec::new();
    let mut tentative: Vec<u8> = Vec::new();
    let mut spans = Vec::new();
    for op in ops {
        let before = committed_of(&log);
        let start = trace.len();
        match op {
            Op::Append(data) => {
                let free = capacity - (model_bytes.len() + tentative.len()) as u64;
                match log.tentative_append(data) {
                    Ok(pos) => {
                        let expected = model_head + (model_bytes.len() + tentative.len()) as u64;
                        if pos != expected {
                            return Err(format!("append at {pos}, expected {expected}"));
                        }
                        tentative.extend_from_slice(data);
                    }
                    Err(LogError::OutOfSpace { .. }) if data.len() as u64 > free => {}
                    Err(e) => return Err(format!("append failed: {e}")),
                }
            }
            Op::Commit => {
                log.commit().map_err(|e| e.to_string())?;
                model_bytes.append(&mut tentative);
            }
            Op::AdvanceHead(frac) => {
                let n = model_bytes.len() * *frac as usize / 255;
                log.advance_head(model_head + n as u64)
                    .map_err(|e| e.to_string())?;
                model_head += n as u64;
                model_bytes.drain(..n);
            }
            Op::Abort => {
                log.abort_tentative();
                tentative.clear();
            }
        }
        let after = committed_of(&log);
        let model = Committed {
            head: model_head,
            tail: model_head + model_bytes.len() as u64,
            bytes: model_bytes.clone(),
        };
        if after != model {
            return Err(format!("live log {after:?} differs from model {model:?}"));
        }
        spans.push(Span {
            start,
            end: trace.len(),
            before,
            after,
        });
    }

    let events = trace.events();
    let mut pm = PmState::new(base);
    let mut out = Outcome::default();
    for k in 0..=events.len() {
        if k > 0 {
            pm.apply(&events[k - 1]);
        }
        let allowed = allowed_at(&spans, &initial, k);
        out.crash_points += 1;
        for (i, image) in pm
            .crash_images(limit, seed ^ (k as u64) << 20)
            .into_iter()
            .enumerate()
        {
            out.images += 1;
            let recovered = PmLog::start(VolatileRegion::from_bytes(image), Some(LOG_ID))
                .map_err(|e| format!("crash point {k}: recovery failed: {e}"))?;
            let got = committed_of(&recovered);
            if !allowed.contains(&got) {
                return Err(format!(
                    "crash point {k} ({:?}): recovered {got:?}, allowed {allowed:?}",
                    events.get(k.wrapping_sub(1))
                ));
            }
            if allowed.len() == 2 && allowed[0] != allowed[1] {
                if got == allowed[0] {
                    out.mid_old += 1;
                } else {
                    out.mid_new += 1;
                }
            }
            // The recovered log stays usable: append, commit, recover again.
            if i == 0 {
                let mut log = recovered;
                if log.free_space() >= 3 {
                    log.tentative_append(b"new").map_err(|e| e.to_string())?;
                    log.commit().map_err(|e| e.to_string())?;
                    let again =
                        PmLog::start(log.into_region(), Some(LOG_ID)).map_err(|e| e.to_string())?;
                    let htc = again.head_tail_capacity();
                    if again.read(htc.tail - 3, 3).map_err(|e| e.to_string())? != b"new" {
                        return Err(format!("crash point {k}: append after recovery lost"));
                    }
                }
            }
        }
    }
    Ok(out)
}

/// A fixed sequence, small enough to enumerate every crash image at every
/// point: appends that wrap, commits, a head advance and an abort.
#[test]
fn every_crash_image_of_a_wrapping_sequence_recovers_a_commit() {
    let ops = vec![
        Op::Append(vec![1; 20]),
        Op::Append(vec![2; 13]),
        Op::Commit,
        Op::AdvanceHead(200),
        Op::Append(vec![3; 40]), // wraps (capacity 64)
        Op::Abort,
        Op::Append(vec![4; 30]),
        Op::Commit,
        Op::AdvanceHead(255),
        Op::Append(vec![5; 9]),
        Op::Commit,
    ];
    let out = explore_log(64, &ops, 1 << 16, 1).unwrap();
    assert!(
        out.mid_old > 0 && out.mid_new > 0,
        "both outcomes reached mid-commit: {out:?}"
    );
    assert!(out.images > 1000, "exhaustive enumeration explored {out:?}");
}

/// The exploration is sensitive: a metadata swap that skips the flushes
/// and fences (CDB stored while the new copy may still be unpersisted)
/// yields crash images that recover to neither state.
#[test]
fn the_model_exposes_a_swap_without_fences() {
    let base = formatted_image(64);
    let (region, trace) = RecordingRegion::new(base.clone());
    let mut log = PmLog::start(region, Some(LOG_ID)).unwrap();
    log.tentative_append(&[7u8; 16]).unwrap();
    let mut region = log.into_region();
    // A broken commit: new metadata (head 0, length 16) into copy 1, then
    // the CDB flip, with no flush or fence in between.
    region.write(
        META_OFFSETS[1],
        &paxos_nvm::layout::LogMetadata {
            head: 0,
            length: 16,
        }
        .encode(),
    );
    region.write(CDB_OFFSET, &paxos_nvm::layout::CDB_TRUE.to_le_bytes());
    let mut pm = PmState::new(base);
    trace.events().iter().for_each(|e| pm.apply(e));
    let bad = pm
        .crash_images(1 << 16, 0)
        .into_iter()
        .filter(|img| PmLog::start(VolatileRegion::from_bytes(img.clone()), Some(LOG_ID)).is_err())
        .count();
    assert!(
        bad > 0,
        "a CDB flip racing its metadata must produce unrecoverable images"
    );
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => proptest::collection::vec(any::<u8>(), 1..70).prop_map(Op::Append),
        3 => Just(Op::Commit),
        2 => any::<u8>().prop_map(Op::AdvanceHead),
        1 => Just(Op::Abort),
    ]
}

proptest! {
    /// Random operation sequences over a small (wrapping) log: sampled crash
    /// images at every trace prefix recover a committed state.
    #[test]
    fn random_sequences_recover_the_last_commit_at_every_crash_point(
        ops in proptest::collection::vec(arb_op(), 1..20),
        capacity in 64u64..200,
        seed in any::<u64>(),
    ) {
        explore_log(capacity, &ops, 24, seed).map_err(TestCaseError::fail)?;
    }
}

// ---------------------------------------------------------------------------
// The same exploration one level up: NvmStorage appends, with compactions.

fn storage_opts() -> NvmOptions {
    NvmOptions {
        log_id: Some(LOG_ID),
        max_append_bytes: 1 << 20,
        ..NvmOptions::default()
    }
}

fn arb_entry() -> impl Strategy<Value = PersistEntry> {
    let ballot = (0u64..4, 0u32..3).prop_map(|(r, l)| Ballot::new(r, ReplicaId(l)));
    let value = prop_oneof![
        Just(Value::Noop),
        proptest::collection::vec(any::<u8>(), 0..60).prop_map(|v| Value::Requests(Bytes::from(v))),
        Just(Value::Reconfigure(paxos_core::Reconfiguration {
            base: Slot(3),
            membership: Membership::with_voters(vec![ReplicaId(1), ReplicaId(2)]),
        })),
    ];
    prop_oneof![
        1 => ballot.clone().prop_map(PersistEntry::Promise),
        5 => ((1u64..30).prop_map(Slot), ballot, value)
            .prop_map(|(slot, ballot, value)| PersistEntry::Accept(Accepted { slot, ballot, value })),
        1 => (0u64..30).prop_map(|s| PersistEntry::Commit(Slot(s))),
        1 => (0u64..30).prop_map(|s| PersistEntry::Truncate(Slot(s))),
    ]
}

#[derive(Clone, Debug)]
enum StorageOp {
    Append(Vec<PersistEntry>),
    /// `commit_pending` (a no-op without group commit).
    Sync,
}

/// One storage operation's span of events, the durable sequence number
/// before it, and the last sequence number and durable one after it.
struct SeqSpan {
    start: usize,
    end: usize,
    durable_before: usize,
    last_after: usize,
    durable_after: usize,
}

/// Runs `ops` on recorded storage, then recovers from crash images at every
/// trace prefix. The recovered state must be the state after some append
/// `j` (a prefix: never a mix), with `j` at least the durable sequence
/// number reported before the crash and at most the last append issued.
fn explore_storage(
    region_len: usize,
    ops: &[StorageOp],
    group: usize,
    limit: usize,
    seed: u64,
    then: &[StorageOp],
) -> Result<NvmStats, String> {
    let base = formatted_image(region_len as u64 - LOG_AREA_OFFSET);
    let (region, trace) = RecordingRegion::new(base.clone());
    let opts = NvmOptions {
        max_group_appends: group,
        ..storage_opts()
    };
    let (storage, initial) = NvmStorage::open_region(Box::new(region), &opts, "recorded".into())
        .map_err(|e| e.to_string())?;
    let mut states = vec![initial];
    let mut spans = Vec::new();
    for op in ops {
        let start = trace.len();
        let durable_before = storage.durable_seq() as usize;
        match op {
            StorageOp::Append(batch) => match storage.append(batch) {
                Ok(seq) => {
                    states.push(storage.state());
                    if seq as usize != states.len() - 1 {
                        return Err(format!(
                            "append returned {seq}, expected {}",
                            states.len() - 1
                        ));
                    }
                }
                Err(StorageError::Full(_)) => {}
                Err(e) => return Err(format!("append failed: {e}")),
            },
            StorageOp::Sync => {
                storage.commit_pending().map_err(|e| e.to_string())?;
            }
        }
        spans.push(SeqSpan {
            start,
            end: trace.len(),
            durable_before,
            last_after: states.len() - 1,
            durable_after: storage.durable_seq() as usize,
        });
    }
    let stats = storage.stats();
    let events: Vec<PmEvent> = trace.events();
    let mut pm = PmState::new(base);
    for k in 0..=events.len() {
        if k > 0 {
            pm.apply(&events[k - 1]);
        }
        let (lo, hi) = match spans.iter().find(|s| s.start < k && k < s.end) {
            Some(s) => (s.durable_before, s.last_after),
            None => spans
                .iter()
                .rev()
                .find(|s| s.end <= k)
                .map_or((0, 0), |s| (s.durable_after, s.last_after)),
        };
        for (i, image) in pm
            .crash_images(limit, seed ^ (k as u64) << 16)
            .into_iter()
            .enumerate()
        {
            let (recovered, got) = NvmStorage::open_region(
                Box::new(VolatileRegion::from_bytes(image)),
                &opts,
                "crash image".into(),
            )
            .map_err(|e| format!("crash point {k}: recovery failed: {e}"))?;
            if !recovered.recovery_damage().is_empty() {
                return Err(format!(
                    "crash point {k}: a crash image was reported as damage: {:?}",
                    recovered.recovery_damage()
                ));
            }
            if !states[lo..=hi].contains(&got) {
                let which = states.iter().position(|st| *st == got);
                return Err(format!(
                    "crash point {k}: recovered state of append {which:?}, allowed {lo}..={hi}: {got:?}"
                ));
            }
            // The recovered storage keeps working: `then` must succeed
            // (the callers pick a workload whose live state stays small).
            if i == 0 {
                for op in then {
                    if let StorageOp::Append(batch) = op {
                        recovered.append(batch).map_err(|e| {
                            format!("crash point {k}: append after recovery failed: {e}")
                        })?;
                    }
                }
            }
        }
    }
    Ok(stats)
}

fn arb_storage_op() -> impl Strategy<Value = StorageOp> {
    prop_oneof![
        6 => proptest::collection::vec(arb_entry(), 1..4).prop_map(StorageOp::Append),
        1 => Just(StorageOp::Sync),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Crashing anywhere inside NvmStorage appends, including inside
    /// compactions and group commits, recovers the state after some append
    /// between the last one reported durable and the last one issued.
    #[test]
    fn storage_recovers_a_prefix_no_older_than_durable_seq(
        ops in proptest::collection::vec(arb_storage_op(), 1..40),
        group in prop_oneof![Just(1usize), 2usize..6],
        seed in any::<u64>(),
    ) {
        explore_storage(2048, &ops, group, 6, seed, &[]).map_err(TestCaseError::fail)?;
    }
}

/// A sequence long enough to advance the head at many truncations and to
/// compact several times (the live state here is too big for the head to
/// keep the log under half the region), explored with sampling; after
/// every recovery the same workload runs again and must not fail (a crash
/// between a compaction's or a head advance's commit and its move of the
/// head must not wedge the log).
#[test]
fn crashes_inside_compactions_and_head_advances_recover_a_consistent_state() {
    let b = Ballot::new(1, ReplicaId(1));
    let ops: Vec<StorageOp> = (1..=60u64)
        .map(|n| {
            let slot = Slot(n);
            let mut batch = vec![PersistEntry::Accept(Accepted {
                slot,
                ballot: b,
                value: Value::Requests(Bytes::from(vec![n as u8; 20])),
            })];
            if n % 8 == 0 {
                batch.push(PersistEntry::Commit(slot));
                batch.push(PersistEntry::Truncate(slot.saturating_sub(4)));
            }
            StorageOp::Append(batch)
        })
        .collect();
    for (group, seed) in [(1, 99), (3, 100)] {
        let stats = explore_storage(2048, &ops, group, 8, seed, &ops).unwrap();
        assert!(
            stats.compactions >= 3 && stats.head_advances >= 3,
            "group {group}: {stats:?}"
        );
    }
}

/// The steady state: truncations keep the live state small, so every one
/// moves the head and nothing is ever compacted; crashing anywhere inside
/// (between the head-advance record's commit and the head's move
/// included) recovers a consistent state, with and without group commit.
#[test]
fn crashes_inside_head_advances_without_compaction_recover_a_consistent_state() {
    let b = Ballot::new(2, ReplicaId(3));
    let ops: Vec<StorageOp> = (1..=48u64)
        .map(|n| {
            let slot = Slot(n);
            let mut batch = vec![PersistEntry::Accept(Accepted {
                slot,
                ballot: b,
                value: Value::Requests(Bytes::from(vec![n as u8; 16])),
            })];
            if n % 4 == 0 {
                batch.push(PersistEntry::Commit(slot));
                batch.push(PersistEntry::Truncate(slot.saturating_sub(2)));
            }
            if n % 12 == 0 {
                batch.insert(0, PersistEntry::Promise(Ballot::new(n, ReplicaId(1))));
            }
            StorageOp::Append(batch)
        })
        .collect();
    for (group, seed) in [(1, 7), (4, 8)] {
        let stats = explore_storage(2048, &ops, group, 8, seed, &ops).unwrap();
        assert_eq!(stats.compactions, 0, "group {group}: {stats:?}");
        assert!(stats.head_advances >= 10, "group {group}: {stats:?}");
        assert!(stats.tail > stats.capacity, "wrapped: {stats:?}");
    }
}

// ---------------------------------------------------------------------------
// Corruption: flipped bytes are detected where they matter, ignored where
// recovery never reads.

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn flipped_bytes_are_detected_or_harmless(
        batches in proptest::collection::vec(proptest::collection::vec(arb_entry(), 1..3), 1..15),
        at in any::<prop::sample::Index>(),
        mask in 1u8..=255,
    ) {
        let (storage, _) = NvmStorage::format_region(
            Box::new(VolatileRegion::new(2048)), &storage_opts(), "t".into()).unwrap();
        for b in &batches {
            let _ = storage.append(b);
        }
        let expected = storage.state();
        let stats = storage.stats();
        let region = storage.into_region();
        let mut image = vec![0u8; region.len() as usize];
        region.read(0, &mut image).unwrap();
        let cdb = u64::from_le_bytes(image[CDB_OFFSET as usize..][..8].try_into().unwrap());
        let active = usize::from(cdb != paxos_nvm::layout::CDB_FALSE);
        let offset = at.index(image.len());
        let checked = offset < CDB_OFFSET as usize + 8
            || (META_OFFSETS[active] as usize..META_OFFSETS[active] as usize + 32).contains(&offset)
            || (stats.head..stats.tail)
                .any(|p| (LOG_AREA_OFFSET + p % stats.capacity) as usize == offset);
        let damage_record = (DAMAGE_OFFSET as usize..DAMAGE_OFFSET as usize + DAMAGE_LEN).contains(&offset);
        image[offset] ^= mask;
        let result = NvmStorage::open_region(
            Box::new(VolatileRegion::from_bytes(image)), &storage_opts(), "t".into());
        match result {
            Err(StorageError::Corrupt { .. }) => prop_assert!(checked, "byte {} is never read", offset),
            Ok((storage, state)) => {
                prop_assert!(!checked, "flip at checked byte {} went unnoticed", offset);
                prop_assert_eq!(state, expected);
                // A flip in the (empty) damage record reads as damage
                // pending: never silence.
                prop_assert_eq!(storage.recovery_damage().is_empty(), !damage_record);
            }
            Err(e) => prop_assert!(false, "unexpected error {}", e),
        }
    }
}
