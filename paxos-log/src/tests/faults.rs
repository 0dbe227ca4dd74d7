//! Fault injection against the file log: every fault [`SimFs`] injects is
//! detected by the log's checksums and either cured (a transient fault, by a
//! re-read) or reported as damage, never served; salvage keeps the longest
//! valid prefix and survives a crash at every point; and a randomized model
//! check runs the real log over a faulty disk with crashes and checks every
//! recovery, with a planted defect proving the check can fail.

use super::{accept, apply_all, ballot, salvage, segment_paths, sim};
use crate::codec::{RECORD_HEADER_LEN, SEGMENT_HEADER_LEN, STATE_PAYLOAD_LEN};
use crate::fs::SharedFs;
use crate::sim_fs::{CrashPolicy, FaultCounters, SimFaults, SimFs};
use crate::{CorruptionPolicy, FileLog, LogOptions, ReplicaStorage, StorageError, WriterMode};
use bytes::Bytes;
use paxos_core::{Accepted, DurableState, PersistEntry, Slot, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Bytes of one `accept(slot, _, 50)` frame and of the segment's start.
const FRAME_50: u64 = (RECORD_HEADER_LEN + 21 + 50) as u64;
const SEGMENT_START: u64 = (SEGMENT_HEADER_LEN + RECORD_HEADER_LEN + STATE_PAYLOAD_LEN) as u64;

/// A one-segment log of `n` 50-byte accepts, closed.
fn appends_of_50(n: u64) -> (SimFs, SharedFs, PathBuf, PathBuf, Vec<Vec<PersistEntry>>) {
    let (fs, shared, dir) = sim();
    let batches: Vec<Vec<PersistEntry>> = (1..=n).map(|s| vec![accept(Slot(s), 1, 50)]).collect();
    let (log, _) = FileLog::open_with(shared.clone(), &dir, LogOptions::default()).unwrap();
    for b in &batches {
        log.append(b).unwrap();
    }
    log.close().unwrap();
    let seg = segment_paths(&fs, &dir).pop().unwrap();
    (fs, shared, dir, seg, batches)
}

#[test]
fn transient_read_faults_during_recovery_are_cured_by_a_second_read() {
    for faults in [
        SimFaults {
            read_bit_flip_per_million: 150_000,
            ..SimFaults::default()
        },
        SimFaults {
            read_error_per_million: 150_000,
            ..SimFaults::default()
        },
    ] {
        let (fs, shared, dir, _seg, batches) = appends_of_50(6);
        let mut cured = 0;
        let mut detected = 0;
        for seed in 0..40 {
            fs.set_faults(SimFaults { seed, ..faults });
            // Refuse: opening changes nothing, so every seed sees one log.
            match FileLog::open_with(shared.clone(), &dir, LogOptions::default()) {
                Ok((log, state)) => {
                    assert_eq!(state, apply_all(&batches), "seed {seed}: {faults:?}");
                    assert!(log.recovery_damage().is_empty());
                    if log.recovery_report().transient_faults_cured > 0 {
                        cured += 1;
                    }
                    // Drop without writing: an inline-free close would sync
                    // nothing anyway, the log has no new appends.
                }
                // Both reads hit a fault: detected, reported, not served.
                Err(StorageError::Corrupt { .. }) => detected += 1,
                Err(e) => panic!("seed {seed}: unexpected {e}"),
            }
        }
        let c = fs.fault_counters();
        assert!(
            c.read_bit_flips + c.transient_read_errors > 0,
            "faults happened: {c:?}"
        );
        assert!(
            cured > 0,
            "some recoveries were cured by a re-read ({detected} refused)"
        );
        assert_eq!(c.latent_sector_errors, 0);
    }
}

#[test]
fn an_unreadable_sector_is_damage_at_its_offset_not_an_io_error() {
    let (fs, shared, dir, seg, batches) = appends_of_50(12);
    // Inside the eighth append, in the second sector.
    let bad = SEGMENT_START + 7 * FRAME_50 + 10;
    fs.make_unreadable(&seg, bad, 1).unwrap();
    let sector_start = bad / 512 * 512;
    assert_eq!(sector_start, 512);
    match FileLog::open_with(shared.clone(), &dir, LogOptions::default()) {
        Err(StorageError::Corrupt {
            file,
            offset,
            reason,
        }) => {
            assert_eq!(file, seg.display().to_string());
            assert_eq!(offset, sector_start);
            assert!(reason.contains("unreadable"), "{reason}");
        }
        other => panic!("expected damage, got {other:?}"),
    }
    let (log, state) = FileLog::open_with(shared.clone(), &dir, salvage()).unwrap();
    // Every append that ends before the bad sector is kept.
    let kept = ((sector_start - SEGMENT_START) / FRAME_50) as usize;
    assert_eq!(state, apply_all(&batches[..kept]));
    let d = &log.recovery_damage()[0];
    assert_eq!(
        (d.offset, d.last_kept_seq),
        (sector_start, Some(kept as u64))
    );
    assert!(fs.fault_counters().latent_read_failures >= 2, "read twice");
    // The cut removed the bad sector: the log is readable and writable again.
    log.append(&[PersistEntry::Commit(Slot(1))]).unwrap();
    log.close().unwrap();
    let (_log, state) = FileLog::open_with(shared, &dir, LogOptions::default()).unwrap();
    assert_eq!(state.accepted.len(), kept);
}

#[test]
fn a_misdirected_write_is_detected_and_never_served() {
    for seed in 0..12 {
        let (fs, shared, dir) = sim();
        let opts = LogOptions {
            segment_bytes: 4096,
            writer: WriterMode::Inline,
            ..LogOptions::default()
        };
        let (log, _) = FileLog::open_with(shared.clone(), &dir, opts.clone()).unwrap();
        let mut batches = Vec::new();
        for slot in 1..=40u64 {
            let b = vec![accept(Slot(slot), 1, 100)];
            log.append(&b).unwrap();
            batches.push(b);
            if slot == 25 {
                // Exactly one write goes astray.
                fs.set_faults(SimFaults {
                    seed,
                    misdirected_write_per_million: 1_000_000,
                    ..SimFaults::default()
                });
            }
            log.sync_queued().unwrap();
            fs.set_faults(SimFaults::default());
        }
        log.close().unwrap();
        assert!(fs.fault_counters().misdirected_writes >= 1);
        match FileLog::open_with(shared.clone(), &dir, opts.clone()) {
            Err(StorageError::Corrupt { .. }) => {}
            other => panic!("seed {seed}: a misdirected write went unnoticed: {other:?}"),
        }
        let (log, state) = FileLog::open_with(
            shared,
            &dir,
            LogOptions {
                on_corruption: CorruptionPolicy::Salvage,
                ..opts
            },
        )
        .unwrap();
        let m = log.durable_seq() as usize;
        assert!(m < batches.len(), "seed {seed}: something was lost");
        assert_eq!(state, apply_all(&batches[..m]), "seed {seed}");
        assert!(log.recovery_damage()[0].may_have_lost_acknowledged);
    }
}

/// Salvage writes its damage report first, so a crash at any point of it
/// (or of the recovery after it) still reports the damage, and the state is
/// always the kept prefix.
#[test]
fn a_crash_at_every_point_of_salvage_keeps_the_damage_reported() {
    let build = || {
        let (fs, shared, dir) = sim();
        let (log, _) = FileLog::open_with(shared.clone(), &dir, super::small_segments()).unwrap();
        let batches: Vec<Vec<PersistEntry>> =
            (1..=40).map(|s| vec![accept(Slot(s), 1, 200)]).collect();
        for b in &batches {
            log.append(b).unwrap();
        }
        log.close().unwrap();
        let segs = segment_paths(&fs, &dir);
        assert!(segs.len() >= 3);
        // Damage in the middle of the second segment.
        fs.flip_bit(&segs[1], 8 * 600).unwrap();
        (fs, shared, dir, batches)
    };
    let opts = LogOptions {
        segment_bytes: 4096,
        ..salvage()
    };
    let (fs, shared, dir, batches) = build();
    let before = fs.mutating_ops();
    let (log, want) = FileLog::open_with(shared, &dir, opts.clone()).unwrap();
    let kept = log.durable_seq();
    assert_eq!(want, apply_all(&batches[..kept as usize]));
    assert_eq!(log.recovery_damage().len(), 1);
    drop(log);
    let salvage_ops = fs.mutating_ops() - before;
    assert!(
        salvage_ops >= 6,
        "report, set-aside renames, copy, cut: {salvage_ops}"
    );
    for at in 0..salvage_ops {
        for policy in [
            CrashPolicy::LoseUnsynced,
            CrashPolicy::KeepUnsynced,
            CrashPolicy::Torn { seed: at },
        ] {
            let (fs, shared, dir, _) = build();
            fs.crash_after(at);
            assert!(FileLog::open_with(shared.clone(), &dir, opts.clone()).is_err());
            fs.crash(policy);
            let (log, state) = FileLog::open_with(shared.clone(), &dir, opts.clone())
                .unwrap_or_else(|e| panic!("crash at {at} {policy:?}: {e}"));
            let what = format!("crash at salvage op {at} with {policy:?}");
            assert_eq!(log.durable_seq(), kept, "{what}");
            assert_eq!(state, want, "{what}");
            let damage = log.recovery_damage();
            assert!(!damage.is_empty(), "{what}: the damage was forgotten");
            assert!(
                damage.iter().all(|d| d.may_have_lost_acknowledged),
                "{what}"
            );
            // And the log works on.
            log.append(&[PersistEntry::Commit(Slot(7))]).unwrap();
            log.close().unwrap();
            let (log, state) = FileLog::open_with(shared, &dir, opts.clone()).unwrap();
            assert_eq!(state.commit_index, Slot(7), "{what}");
            assert_eq!(log.recovery_damage(), damage, "{what}");
        }
    }
}

#[test]
fn crashes_alone_never_report_damage() {
    for seed in 0..30u64 {
        let (fs, shared, dir) = sim();
        let opts = LogOptions {
            segment_bytes: 4096,
            writer: WriterMode::Inline,
            ..salvage()
        };
        let (log, _) = FileLog::open_with(shared.clone(), &dir, opts.clone()).unwrap();
        fs.crash_after(seed * 3);
        for slot in 1..=60 {
            if log.append(&[accept(Slot(slot), 1, 150)]).is_err() || log.sync_queued().is_err() {
                break;
            }
        }
        drop(log);
        fs.crash(CrashPolicy::Torn { seed });
        let (log, _) = FileLog::open_with(shared, &dir, opts).unwrap();
        assert!(
            log.recovery_damage().is_empty(),
            "seed {seed}: a torn tail was reported as damage: {:?}",
            log.recovery_damage()
        );
    }
}

// ---------------------------------------------------------------------------
// The randomized model check.

/// Splitmix64, so the model check needs no generator crate and one seed is
/// one run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn random_batch(rng: &mut Rng) -> Vec<PersistEntry> {
    (0..rng.below(4))
        .map(|_| match rng.below(10) {
            0 => PersistEntry::Promise(ballot(rng.below(5))),
            1 => PersistEntry::Commit(Slot(rng.below(60))),
            2..=8 => {
                let len = rng.below(300) as usize;
                let fill = rng.next() as u8;
                PersistEntry::Accept(Accepted {
                    slot: Slot(1 + rng.below(60)),
                    ballot: ballot(rng.below(5)),
                    value: Value::Requests(Bytes::from(vec![fill; len])),
                })
            }
            _ => PersistEntry::Truncate(Slot(rng.below(40))),
        })
        .collect()
}

/// What the model knows: every append issued (in sequence order) and the
/// highest sequence number reported durable.
#[derive(Default)]
struct Model {
    issued: Vec<Vec<PersistEntry>>,
    acked: u64,
}

/// Totals over a model-check run, to show that the faults happened.
#[derive(Debug, Default)]
struct Observed {
    recoveries: u64,
    damaged_recoveries: u64,
    cured: u64,
    faults: FaultCounters,
}

/// The check after every recovery: the state is exactly the state after
/// the first `durable_seq` appends (a prefix: never a mix, never wrong
/// data), and that prefix holds every append reported durable unless
/// damage is reported. Then, as a replica would, it repairs (clears the
/// damage) and the model forgets what was lost.
fn check_recovered(
    log: &FileLog,
    state: &DurableState,
    model: &mut Model,
    seen: &mut Observed,
) -> Result<(), String> {
    let m = log.durable_seq();
    let damage = log.recovery_damage();
    seen.recoveries += 1;
    seen.cured += log.recovery_report().transient_faults_cured;
    if m as usize > model.issued.len() {
        return Err(format!(
            "recovered {m} appends, only {} issued",
            model.issued.len()
        ));
    }
    if *state != apply_all(&model.issued[..m as usize]) {
        return Err(format!(
            "the recovered state is not the state after appends 1..={m}"
        ));
    }
    if m < model.acked && damage.is_empty() {
        return Err(format!(
            "append {} was reported durable and is lost (recovered {m}) with no damage reported",
            model.acked
        ));
    }
    if !damage.is_empty() {
        seen.damaged_recoveries += 1;
        log.clear_damage()
            .map_err(|e| format!("clearing damage: {e}"))?;
    }
    model.issued.truncate(m as usize);
    // Whatever recovery read back is on the medium now.
    model.acked = m;
    Ok(())
}

fn faults(seed: u64) -> SimFaults {
    SimFaults {
        seed,
        read_bit_flip_per_million: 2_000,
        read_error_per_million: 2_000,
        latent_sector_error_per_million: 300,
        ..SimFaults::default()
    }
}

/// A file on the disk to damage: a segment most of the time.
fn victim(fs: &SimFs, dir: &Path, rng: &mut Rng) -> Option<PathBuf> {
    let segs = segment_paths(fs, dir);
    let all = fs.paths();
    let pool = if rng.below(5) == 0 { all } else { segs };
    (!pool.is_empty()).then(|| pool[rng.below(pool.len() as u64) as usize].clone())
}

/// One randomized run: appends, syncs, truncations, latent bit flips,
/// unreadable sectors, misdirected writes, transient read faults, crashes
/// (also during recovery), each recovery checked.
fn model_check(seed: u64, steps: usize, seen: &mut Observed) -> Result<(), String> {
    let mut rng = Rng(seed);
    let fs = SimFs::with_faults(faults(seed));
    let shared: SharedFs = Arc::new(fs.clone());
    let dir = PathBuf::from("/log");
    let opts = LogOptions {
        segment_bytes: 4096,
        writer: WriterMode::Inline,
        on_corruption: CorruptionPolicy::Salvage,
        ..LogOptions::default()
    };
    let mut model = Model::default();
    let open = |model: &mut Model, seen: &mut Observed| -> Result<FileLog, String> {
        let (log, state) = FileLog::open_with(shared.clone(), &dir, opts.clone())
            .map_err(|e| format!("recovery failed: {e}"))?;
        check_recovered(&log, &state, model, seen)?;
        Ok(log)
    };
    let mut log = open(&mut model, seen)?;
    for step in 0..steps {
        let at = |e: String| format!("step {step}: {e}");
        let mut crash = false;
        match rng.below(100) {
            0..=54 => {
                let batch = if rng.below(12) == 0 {
                    vec![PersistEntry::Truncate(Slot(rng.below(60)))]
                } else {
                    random_batch(&mut rng)
                };
                match log.append(&batch) {
                    Ok(seq) if seq == model.issued.len() as u64 + 1 => model.issued.push(batch),
                    Ok(seq) => return Err(at(format!("append got sequence {seq}"))),
                    Err(StorageError::Full(_)) => {}
                    Err(_) => crash = true,
                }
            }
            55..=74 => match log.sync_queued() {
                Ok(d) => model.acked = model.acked.max(d),
                Err(_) => crash = true,
            },
            75..=79 => {
                if let Some(path) = victim(&fs, &dir, &mut rng) {
                    if let Some(len) = fs.file_len(&path).filter(|l| *l > 0) {
                        fs.flip_bit(&path, rng.below(len * 8))
                            .map_err(|e| at(e.to_string()))?;
                    }
                }
            }
            80..=82 => {
                if let Some(path) = victim(&fs, &dir, &mut rng) {
                    if let Some(len) = fs.file_len(&path).filter(|l| *l > 0) {
                        let off = rng.below(len);
                        fs.make_unreadable(&path, off, 1 + rng.below(600))
                            .map_err(|e| at(e.to_string()))?;
                    }
                }
            }
            83..=86 => {
                let rate = if rng.below(2) == 0 { 0 } else { 100_000 };
                fs.set_faults(SimFaults {
                    misdirected_write_per_million: rate,
                    ..fs.faults()
                });
            }
            _ => {
                fs.crash_after(rng.below(10));
                crash = true;
                // Keep working until the disk goes down.
                for _ in 0..10 {
                    let batch = random_batch(&mut rng);
                    match log.append(&batch) {
                        Ok(_) => model.issued.push(batch),
                        Err(_) => break,
                    }
                    match log.sync_queued() {
                        Ok(d) => model.acked = model.acked.max(d),
                        Err(_) => break,
                    }
                }
            }
        }
        if crash {
            drop(log);
            let policy = match rng.below(3) {
                0 => CrashPolicy::LoseUnsynced,
                1 => CrashPolicy::KeepUnsynced,
                _ => CrashPolicy::Torn { seed: rng.next() },
            };
            fs.crash(policy);
            if rng.below(4) == 0 {
                // Crash during recovery too.
                fs.crash_after(rng.below(6));
                let _ = FileLog::open_with(shared.clone(), &dir, opts.clone());
                fs.crash(CrashPolicy::Torn { seed: rng.next() });
            }
            log = open(&mut model, seen).map_err(at)?;
        }
    }
    drop(log);
    fs.crash(CrashPolicy::LoseUnsynced);
    let log = open(&mut model, seen)?;
    drop(log);
    let c = fs.fault_counters();
    let f = &mut seen.faults;
    f.read_bit_flips += c.read_bit_flips;
    f.transient_read_errors += c.transient_read_errors;
    f.latent_sector_errors += c.latent_sector_errors;
    f.latent_read_failures += c.latent_read_failures;
    f.media_bit_flips += c.media_bit_flips;
    f.misdirected_writes += c.misdirected_writes;
    f.crashes += c.crashes;
    Ok(())
}

#[test]
fn random_faults_and_crashes_always_recover_a_prefix_and_report_loss() {
    let mut seen = Observed::default();
    for seed in 0..48 {
        if let Err(e) = model_check(seed, 160, &mut seen) {
            panic!("seed {seed}: {e}");
        }
    }
    let f = seen.faults;
    // The run exercised what it claims to.
    assert!(f.crashes > 100, "{seen:?}");
    assert!(
        f.media_bit_flips > 50 && f.misdirected_writes > 10,
        "{seen:?}"
    );
    assert!(
        f.latent_sector_errors > 20 && f.read_bit_flips > 0,
        "{seen:?}"
    );
    assert!(f.transient_read_errors > 0, "{seen:?}");
    assert!(seen.damaged_recoveries > 20 && seen.cured > 0, "{seen:?}");
}

/// The model check is sensitive: with the payload checksum skipped
/// (a planted defect), damaged payloads get through and it says so.
#[test]
fn the_model_check_catches_a_skipped_payload_checksum() {
    crate::codec::SKIP_PAYLOAD_CHECKSUM.with(|s| s.set(true));
    let mut seen = Observed::default();
    let failures: Vec<String> = (0..48)
        .filter_map(|seed| model_check(seed, 160, &mut seen).err())
        .collect();
    crate::codec::SKIP_PAYLOAD_CHECKSUM.with(|s| s.set(false));
    assert!(
        !failures.is_empty(),
        "damaged payloads were accepted and nothing noticed ({seen:?})"
    );
    assert!(
        failures.iter().any(|f| f.contains("not the state")),
        "{failures:?}"
    );
}

/// Found by paxos-sim (seed 1642): damage in an empty segment loses
/// nothing; if the same place is written again and damaged again, the
/// second damage loses acknowledged appends, and the report must say so
/// even though it names the same file, offset and reason as the first.
#[test]
fn damage_repeated_at_one_place_keeps_the_worse_verdict() {
    let (fs, shared, dir) = sim();
    let opts = LogOptions {
        on_corruption: CorruptionPolicy::Salvage,
        ..LogOptions::default()
    };
    let (log, _) = FileLog::open_with(shared.clone(), &dir, opts.clone()).unwrap();
    log.close().unwrap();
    let seg = segment_paths(&fs, &dir).pop().unwrap();
    // The state record of the still empty segment.
    fs.flip_bit(&seg, (SEGMENT_HEADER_LEN as u64 + 4) * 8)
        .unwrap();
    let (log, _) = FileLog::open_with(shared.clone(), &dir, opts.clone()).unwrap();
    let first = log.recovery_damage();
    assert_eq!(first.len(), 1);
    assert!(!first[0].may_have_lost_acknowledged, "nothing was in it");
    log.append(&[accept(Slot(1), 1, 50)]).unwrap();
    log.wait_durable(log.durable_seq() + 1).unwrap();
    log.close().unwrap();
    let seg = segment_paths(&fs, &dir).pop().unwrap();
    fs.flip_bit(&seg, (SEGMENT_HEADER_LEN as u64 + 4) * 8)
        .unwrap();
    let (log, state) = FileLog::open_with(shared, &dir, opts).unwrap();
    assert!(state.accepted.is_empty(), "the acknowledged accept is gone");
    let damage = log.recovery_damage();
    assert!(
        damage.iter().any(|d| d.may_have_lost_acknowledged),
        "the report must say that acknowledged data may be lost: {damage:?}"
    );
}
