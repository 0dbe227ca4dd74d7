//! `NvmStorage` on a [`SimRegion`] with faults: salvage around each kind of
//! damage, the damage record across crashes, and a randomized model check
//! (appends, group commits, truncations, crashes, media faults) with a
//! planted defect proving it can fail.

use crate::codec;
use crate::layout::{CDB_OFFSET, GLOBAL_OFFSET, LOG_AREA_OFFSET, META_OFFSETS};
use crate::record::RECORD_HEADER_LEN;
use crate::sim_region::{SimRegion, SimRegionCounters, SimRegionFaults};
use crate::{Backend, NvmOptions, NvmStorage, PmRegion};
use bytes::Bytes;
use paxos_core::{Accepted, Ballot, DurableState, PersistEntry, ReplicaId, Slot, Value};
use paxos_log::sim_fs::CrashPolicy;
use paxos_log::{CorruptionPolicy, ReplicaStorage, StorageError};

fn opts(policy: CorruptionPolicy) -> NvmOptions {
    NvmOptions {
        log_id: Some(0x51),
        max_append_bytes: 1 << 20,
        on_corruption: policy,
        ..NvmOptions::default()
    }
}

fn salvage() -> NvmOptions {
    opts(CorruptionPolicy::Salvage)
}

fn accept(slot: Slot, len: usize) -> PersistEntry {
    PersistEntry::Accept(Accepted {
        slot,
        ballot: Ballot::new(1, ReplicaId(1)),
        value: Value::Requests(Bytes::from(vec![slot.0 as u8 | 1; len])),
    })
}

fn apply_all(batches: &[Vec<PersistEntry>]) -> DurableState {
    let mut s = DurableState::default();
    batches.iter().flatten().for_each(|e| s.apply(e));
    s
}

/// Bytes one batch takes in the log.
fn framed(batch: &[PersistEntry]) -> u64 {
    let mut buf = Vec::new();
    codec::encode_batch(batch, &mut buf);
    RECORD_HEADER_LEN + buf.len() as u64
}

/// A formatted simulated region holding `n` appends (no compaction).
fn with_appends(n: u64) -> (SimRegion, Vec<Vec<PersistEntry>>) {
    let region = SimRegion::new(16 << 10, SimRegionFaults::default());
    let (s, _) =
        NvmStorage::format_region(Box::new(region.clone()), &salvage(), "sim".into()).unwrap();
    let batches: Vec<Vec<PersistEntry>> = (1..=n).map(|s| vec![accept(Slot(s), 40)]).collect();
    for b in &batches {
        s.append(b).unwrap();
    }
    assert_eq!(s.stats().compactions, 0);
    drop(s);
    (region, batches)
}

fn open(
    region: &SimRegion,
    options: &NvmOptions,
) -> Result<(NvmStorage, DurableState), StorageError> {
    NvmStorage::open_region(Box::new(region.clone()), options, "sim".into())
}

#[test]
fn a_damaged_record_is_cut_at_and_reported_until_cleared() {
    let (region, batches) = with_appends(6);
    // Inside the fourth record.
    let third_end: u64 = batches[..3].iter().map(|b| framed(b)).sum();
    region
        .flip_bit(8 * (LOG_AREA_OFFSET + third_end + 20))
        .unwrap();
    match open(&region, &opts(CorruptionPolicy::Refuse)) {
        Err(StorageError::Corrupt { offset, reason, .. }) => {
            assert_eq!(offset, third_end);
            assert!(reason.contains("on_corruption"), "{reason}");
        }
        other => panic!("expected damage, got {:?}", other.map(|(_, s)| s)),
    }
    let (s, state) = open(&region, &salvage()).unwrap();
    assert_eq!(state, apply_all(&batches[..3]));
    assert_eq!(s.durable_seq(), 3);
    let damage = s.recovery_damage();
    assert_eq!(damage.len(), 1);
    assert_eq!(
        (damage[0].offset, damage[0].last_kept_seq),
        (third_end, Some(3))
    );
    assert!(damage[0].may_have_lost_acknowledged && damage[0].set_aside.is_empty());
    assert_eq!(
        s.append(&[accept(Slot(9), 10)]).unwrap(),
        4,
        "appends continue after the prefix"
    );
    drop(s);
    // Reported again, under either policy, until cleared.
    let (s, state) = open(&region, &opts(CorruptionPolicy::Refuse)).unwrap();
    assert_eq!(state.accepted.len(), 4);
    let pending = s.recovery_damage();
    assert_eq!(pending.len(), 1);
    assert_eq!(
        (pending[0].offset, pending[0].last_kept_seq),
        (third_end, Some(3))
    );
    assert!(pending[0].may_have_lost_acknowledged);
    s.clear_damage().unwrap();
    assert!(s.recovery_damage().is_empty());
    drop(s);
    let (s, _) = open(&region, &opts(CorruptionPolicy::Refuse)).unwrap();
    assert!(s.recovery_damage().is_empty(), "cleared durably");
}

#[test]
fn an_unreadable_record_is_damage_not_an_error() {
    let (region, batches) = with_appends(5);
    let two: u64 = batches[..2].iter().map(|b| framed(b)).sum();
    region
        .make_unreadable(LOG_AREA_OFFSET + two + 30, 1)
        .unwrap();
    assert!(matches!(
        open(&region, &opts(CorruptionPolicy::Refuse)),
        Err(StorageError::Corrupt { .. })
    ));
    let (s, state) = open(&region, &salvage()).unwrap();
    assert_eq!(state, apply_all(&batches[..2]));
    assert!(s.recovery_damage()[0].reason.contains("unreadable"));
    // New appends overwrite (and so clear) the poisoned word.
    for slot in 10..14 {
        s.append(&[accept(Slot(slot), 40)]).unwrap();
    }
    drop(s);
    let (_, state) = open(&region, &salvage()).unwrap();
    assert_eq!(state.accepted.len(), 6);
}

#[test]
fn a_damaged_cdb_is_recovered_from_the_newer_copy_losing_nothing() {
    let (region, batches) = with_appends(4);
    region.flip_bit(8 * CDB_OFFSET + 5).unwrap();
    assert!(open(&region, &opts(CorruptionPolicy::Refuse)).is_err());
    let (s, state) = open(&region, &salvage()).unwrap();
    assert_eq!(state, apply_all(&batches));
    let d = &s.recovery_damage()[0];
    assert_eq!(d.offset, CDB_OFFSET);
    assert!(
        !d.may_have_lost_acknowledged,
        "both copies checked out: {d}"
    );
    s.clear_damage().unwrap();
    drop(s);
    let (s, _) = open(&region, &opts(CorruptionPolicy::Refuse)).unwrap();
    assert!(s.recovery_damage().is_empty(), "the CDB was repaired");
}

#[test]
fn a_damaged_active_copy_falls_back_to_its_twin() {
    let (region, batches) = with_appends(4);
    // Opening mirrors the metadata; one more commit makes the copies differ.
    let (s, _) = open(&region, &salvage()).unwrap();
    s.append(&[accept(Slot(20), 8)]).unwrap();
    drop(s);
    let cdb = {
        let mut w = [0u8; 8];
        region.read(CDB_OFFSET, &mut w).unwrap();
        u64::from_le_bytes(w)
    };
    let active = usize::from(cdb != crate::layout::CDB_FALSE);
    region.flip_bit(8 * META_OFFSETS[active] + 3).unwrap();
    let (s, state) = open(&region, &salvage()).unwrap();
    // The twin is the previous commit: the last append is gone.
    assert_eq!(state, apply_all(&batches));
    let d = &s.recovery_damage()[0];
    assert_eq!(d.offset, META_OFFSETS[active]);
    assert!(d.may_have_lost_acknowledged);
    assert_eq!(d.last_kept_seq, Some(4));
}

#[test]
fn damaged_global_metadata_formats_anew_and_open_copies_the_file_aside() {
    damaged_global_metadata_on_a_file(&tempfile::tempdir().unwrap(), Backend::MsyncFile);
}

#[test]
fn damaged_global_metadata_on_emulated_pm_is_salvaged_the_same() {
    if crate::region::CacheFlush::detect().is_none() {
        return; // Emulated PM is refused; see the region tests.
    }
    damaged_global_metadata_on_a_file(&crate::storage::tests::shm_tempdir(), Backend::EmulatedPm);
}

fn damaged_global_metadata_on_a_file(dir: &tempfile::TempDir, backend: Backend) {
    let path = dir.path().join("r.nvm");
    let options = NvmOptions {
        region_bytes: crate::storage::MIN_REGION_BYTES,
        backend,
        ..salvage()
    };
    let (s, _) = NvmStorage::open(&path, options.clone()).unwrap();
    assert_eq!(
        matches!(
            s.region_kind(),
            crate::RegionKind::EmulatedPersistentMemory { .. }
        ),
        backend == Backend::EmulatedPm
    );
    for slot in 1..=3 {
        s.append(&[accept(Slot(slot), 20)]).unwrap();
    }
    drop(s);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[GLOBAL_OFFSET as usize + 20] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();
    let refuse = NvmOptions {
        on_corruption: CorruptionPolicy::Refuse,
        ..options.clone()
    };
    assert!(matches!(
        NvmStorage::open(&path, refuse),
        Err(StorageError::Corrupt { offset: 0, .. })
    ));
    let (s, state) = NvmStorage::open(&path, options.clone()).unwrap();
    assert_eq!(state, DurableState::default());
    let d = &s.recovery_damage()[0];
    assert_eq!(
        (d.last_kept_seq, d.may_have_lost_acknowledged),
        (Some(0), true)
    );
    let aside = dir.path().join("r.nvm.damaged");
    assert_eq!(d.set_aside, vec![aside.display().to_string()]);
    assert_eq!(
        std::fs::read(&aside).unwrap(),
        bytes,
        "the damaged region, as it was"
    );
    assert_eq!(s.append(&[accept(Slot(1), 5)]).unwrap(), 1);
    drop(s);
    let (s, state) = NvmStorage::open(&path, options).unwrap();
    assert_eq!(state.accepted.len(), 1);
    assert_eq!(s.recovery_damage().len(), 1, "still pending");
}

#[test]
fn transient_read_faults_are_cured_by_a_second_read() {
    let (region, batches) = with_appends(8);
    let (mut cured, mut refused) = (0, 0);
    for seed in 0..40 {
        region.set_faults(SimRegionFaults {
            seed,
            read_bit_flip_per_million: 5_000,
            ..SimRegionFaults::default()
        });
        let before = region.counters().read_bit_flips;
        match open(&region, &opts(CorruptionPolicy::Refuse)) {
            Ok((_, state)) => {
                assert_eq!(state, apply_all(&batches), "seed {seed}");
                cured += u64::from(region.counters().read_bit_flips > before);
            }
            Err(StorageError::Corrupt { .. }) => refused += 1,
            Err(e) => panic!("seed {seed}: {e}"),
        }
    }
    assert!(
        cured > 5,
        "{cured} opens saw flips and recovered anyway ({refused} refused)"
    );
}

/// The damage record is written before anything else changes, so a crash
/// at any point of a salvage leaves the damage reported and the state a
/// prefix no longer than the one salvage keeps.
#[test]
fn a_crash_at_every_point_of_salvage_keeps_the_damage_reported() {
    let build = || {
        let (region, batches) = with_appends(6);
        let two: u64 = batches[..2].iter().map(|b| framed(b)).sum();
        region.flip_bit(8 * (LOG_AREA_OFFSET + two + 20)).unwrap();
        (region, batches)
    };
    for at in 0..40 {
        for policy in [
            CrashPolicy::LoseUnsynced,
            CrashPolicy::KeepUnsynced,
            CrashPolicy::Torn { seed: at },
        ] {
            let (region, batches) = build();
            region.crash_after(at);
            let interrupted = open(&region, &salvage()).is_err();
            let region = region.crash(policy);
            let (s, state) = open(&region, &salvage()).unwrap();
            let what = format!("crash at op {at} with {policy:?} (interrupted: {interrupted})");
            assert_eq!(state, apply_all(&batches[..2]), "{what}");
            assert_eq!(s.durable_seq(), 2, "{what}");
            assert!(
                !s.recovery_damage().is_empty(),
                "{what}: the damage was forgotten"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// The randomized model check.

/// Splitmix64: one seed, one run.
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
    (0..1 + rng.below(3))
        .map(|_| match rng.below(10) {
            0 => PersistEntry::Promise(Ballot::new(rng.below(5), ReplicaId(1))),
            1 => PersistEntry::Commit(Slot(rng.below(60))),
            2 => PersistEntry::Truncate(Slot(rng.below(50))),
            _ => accept(Slot(1 + rng.below(60)), rng.below(120) as usize),
        })
        .collect()
}

#[derive(Debug, Default)]
struct Observed {
    recoveries: u64,
    damaged_recoveries: u64,
    compactions: u64,
    head_advances: u64,
    faults: SimRegionCounters,
}

#[derive(Default)]
struct Model {
    issued: Vec<Vec<PersistEntry>>,
    acked: u64,
}

/// After every recovery: the state is exactly the state after the first
/// `durable_seq` appends, which include every append reported durable
/// unless damage is reported. Then the replica "repairs" (clears damage).
fn check(
    s: &NvmStorage,
    state: &DurableState,
    model: &mut Model,
    seen: &mut Observed,
) -> Result<(), String> {
    let m = s.durable_seq();
    let damage = s.recovery_damage();
    seen.recoveries += 1;
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
            "append {} was durable and is lost (recovered {m}) with no damage reported",
            model.acked
        ));
    }
    if !damage.is_empty() {
        seen.damaged_recoveries += 1;
        s.clear_damage()
            .map_err(|e| format!("clearing damage: {e}"))?;
    }
    model.issued.truncate(m as usize);
    model.acked = m;
    Ok(())
}

fn model_check(seed: u64, steps: usize, seen: &mut Observed) -> Result<(), String> {
    let mut rng = Rng(seed);
    let faults = SimRegionFaults {
        seed,
        ..SimRegionFaults::default()
    };
    let mut region = SimRegion::new(8 << 10, faults);
    let options = NvmOptions {
        max_group_appends: 1 + rng.below(4) as usize,
        ..salvage()
    };
    let open = |region: &SimRegion, model: &mut Model, seen: &mut Observed| {
        let (s, state) = NvmStorage::open_region(Box::new(region.clone()), &options, "sim".into())
            .map_err(|e| format!("recovery failed: {e}"))?;
        check(&s, &state, model, seen)?;
        Ok::<_, String>(s)
    };
    let mut model = Model::default();
    let (mut s, _) = NvmStorage::format_region(Box::new(region.clone()), &options, "sim".into())
        .map_err(|e| e.to_string())?;
    for step in 0..steps {
        let mut crash = false;
        match rng.below(100) {
            0..=59 => {
                let batch = random_batch(&mut rng);
                match s.append(&batch) {
                    Ok(seq) if seq == model.issued.len() as u64 + 1 => {
                        model.issued.push(batch);
                        model.acked = model.acked.max(s.durable_seq());
                    }
                    Ok(seq) => return Err(format!("step {step}: append got sequence {seq}")),
                    Err(StorageError::Full(_)) => {}
                    Err(_) => {
                        // Written or not: a crash decides.
                        model.issued.push(batch);
                        crash = true;
                    }
                }
            }
            60..=69 => match s.commit_pending() {
                Ok(d) => model.acked = model.acked.max(d),
                Err(_) => crash = true,
            },
            70..=77 => {
                // Bit rot, mostly in the live log, sometimes anywhere.
                let st = s.stats();
                let bit = if rng.below(4) > 0 && st.tail > st.head {
                    let pos = st.head + rng.below(st.tail - st.head);
                    8 * (LOG_AREA_OFFSET + pos % st.capacity) + rng.below(8)
                } else {
                    rng.below(region.len() * 8)
                };
                region.flip_bit(bit).map_err(|e| e.to_string())?;
            }
            78..=80 => {
                let st = s.stats();
                let at = if st.tail > st.head {
                    LOG_AREA_OFFSET + (st.head + rng.below(st.tail - st.head)) % st.capacity
                } else {
                    rng.below(region.len())
                };
                region
                    .make_unreadable(at, 1 + rng.below(16))
                    .map_err(|e| e.to_string())?;
            }
            81..=84 => {
                let on = rng.below(2) == 0;
                region.set_faults(SimRegionFaults {
                    read_bit_flip_per_million: if on { 300 } else { 0 },
                    unreadable_word_per_million: if on { 30 } else { 0 },
                    ..region.faults()
                });
            }
            _ => {
                region.crash_after(rng.below(14));
                crash = true;
                for _ in 0..10 {
                    let batch = random_batch(&mut rng);
                    match s.append(&batch) {
                        Ok(_) => {
                            model.issued.push(batch);
                            model.acked = model.acked.max(s.durable_seq());
                        }
                        Err(StorageError::Full(_)) => {}
                        Err(_) => {
                            model.issued.push(batch);
                            break;
                        }
                    }
                }
            }
        }
        if crash {
            seen.compactions += s.stats().compactions;
            seen.head_advances += s.stats().head_advances;
            drop(s);
            let policy = match rng.below(3) {
                0 => CrashPolicy::LoseUnsynced,
                1 => CrashPolicy::KeepUnsynced,
                _ => CrashPolicy::Torn { seed: rng.next() },
            };
            region = region.crash(policy);
            if rng.below(4) == 0 {
                // A crash during recovery (and salvage) too.
                region.crash_after(rng.below(10));
                let _ = NvmStorage::open_region(Box::new(region.clone()), &options, "sim".into());
                region = region.crash(CrashPolicy::Torn { seed: rng.next() });
            }
            s = open(&region, &mut model, seen).map_err(|e| format!("step {step}: {e}"))?;
        }
    }
    seen.compactions += s.stats().compactions;
    seen.head_advances += s.stats().head_advances;
    drop(s);
    region = region.crash(CrashPolicy::LoseUnsynced);
    drop(open(&region, &mut model, seen)?);
    let c = region.counters();
    let f = &mut seen.faults;
    f.read_bit_flips += c.read_bit_flips;
    f.unreadable_words += c.unreadable_words;
    f.unreadable_reads += c.unreadable_reads;
    f.media_bit_flips += c.media_bit_flips;
    f.crashes += c.crashes;
    Ok(())
}

#[test]
fn random_faults_and_crashes_always_recover_a_prefix_and_report_loss() {
    let mut seen = Observed::default();
    for seed in 0..48 {
        if let Err(e) = model_check(seed, 200, &mut seen) {
            panic!("seed {seed}: {e}");
        }
    }
    let f = seen.faults;
    assert!(f.crashes > 100 && f.media_bit_flips > 100, "{seen:?}");
    assert!(f.unreadable_words > 20 && f.read_bit_flips > 0, "{seen:?}");
    assert!(
        seen.damaged_recoveries > 20 && seen.compactions > 20 && seen.head_advances > 60,
        "{seen:?}"
    );
}

/// The model check is sensitive: with record checksums skipped (a planted
/// defect), damaged records get through and it says so.
#[test]
fn the_model_check_catches_a_skipped_record_checksum() {
    crate::record::SKIP_RECORD_CHECKSUM.with(|s| s.set(true));
    let mut seen = Observed::default();
    let failures: Vec<String> = (0..48)
        .filter_map(|seed| model_check(seed, 200, &mut seen).err())
        .collect();
    crate::record::SKIP_RECORD_CHECKSUM.with(|s| s.set(false));
    assert!(
        failures.iter().any(|f| f.contains("not the state")),
        "damaged records were accepted and nothing noticed: {failures:?}"
    );
}
