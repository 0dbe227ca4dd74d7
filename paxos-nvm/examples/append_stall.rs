//! Measures the longest `NvmStorage::append` under a replica-like workload
//! with periodic truncations: what the replica's event loop would wait for.
//!
//! Each append is `[Accept(slot, value), Commit(slot - 1)]`, as a leader
//! persists one decree. Every `--checkpoint-every-mb` of appended values a
//! checkpoint "starts" at the current slot; `--lag-mb` later it is durable
//! and the log is truncated through it less `--retain-mb` of decrees, as
//! paxos-node does with `checkpoint_every_mb`, `log_memory_mb` and a
//! checkpoint that takes a while to write. The defaults match paxos-kv's
//! defaults (a 768 MiB region from 128 MiB between checkpoints plus 64 MiB
//! retained).
//!
//! ```text
//! cargo run --release -p paxos-nvm --example append_stall -- \
//!     [--region-mb 768] [--value-bytes 4096] [--total-mb 4096] \
//!     [--checkpoint-every-mb 128] [--lag-mb 32] [--retain-mb 64] [--dir /dev/shm]
//! ```
//!
//! The region is emulated persistent memory (`clwb` + `sfence`) in a
//! temporary directory under `--dir` when the CPU has a flush instruction,
//! else an msync-backed file there.

use std::time::{Duration, Instant};

use bytes::Bytes;
use paxos_core::{Accepted, Ballot, PersistEntry, ReplicaId, Slot, Value};
use paxos_log::ReplicaStorage;
use paxos_nvm::{Backend, NvmOptions, NvmStorage};

struct Args {
    region_mb: u64,
    value_bytes: usize,
    total_mb: u64,
    checkpoint_every_mb: u64,
    lag_mb: u64,
    retain_mb: u64,
    dir: String,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        region_mb: 768,
        value_bytes: 4096,
        total_mb: 4096,
        checkpoint_every_mb: 128,
        lag_mb: 32,
        retain_mb: 64,
        dir: "/dev/shm".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let num = || {
            value
                .parse::<u64>()
                .map_err(|e| format!("{flag} {value}: {e}"))
        };
        match flag.as_str() {
            "--region-mb" => a.region_mb = num()?,
            "--value-bytes" => a.value_bytes = num()? as usize,
            "--total-mb" => a.total_mb = num()?,
            "--checkpoint-every-mb" => a.checkpoint_every_mb = num()?,
            "--lag-mb" => a.lag_mb = num()?,
            "--retain-mb" => a.retain_mb = num()?,
            "--dir" => a.dir = value,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if a.value_bytes == 0 || a.checkpoint_every_mb == 0 {
        return Err("--value-bytes and --checkpoint-every-mb must be positive".into());
    }
    Ok(a)
}

fn main() -> Result<(), String> {
    let args = parse_args()?;
    let dir = tempfile::tempdir_in(&args.dir).map_err(|e| format!("{}: {e}", args.dir))?;
    let backend = if paxos_nvm::region::CacheFlush::detect().is_some() {
        Backend::EmulatedPm
    } else {
        Backend::MsyncFile
    };
    let options = NvmOptions {
        region_bytes: args.region_mb << 20,
        backend,
        log_id: Some(1),
        ..NvmOptions::default()
    };
    let (storage, _) =
        NvmStorage::open(&dir.path().join("region.nvm"), options).map_err(|e| e.to_string())?;
    let value = Bytes::from(vec![0x5au8; args.value_bytes]);
    let per_mb = ((1u64 << 20) / args.value_bytes as u64).max(1);
    let appends = args.total_mb * per_mb;
    let checkpoint_every = args.checkpoint_every_mb * per_mb;
    let lag = args.lag_mb * per_mb;
    let retain = args.retain_mb * per_mb;
    let mut pending_checkpoint: Option<(u64, u64)> = None; // (slot, durable at)
    let (mut longest, mut longest_at) = (Duration::ZERO, 0u64);
    let (mut over_10ms, mut total) = (0u64, Duration::ZERO);
    let started = Instant::now();
    for slot in 1..=appends {
        let mut entries = vec![
            PersistEntry::Accept(Accepted {
                slot: Slot(slot),
                ballot: Ballot::new(1, ReplicaId(1)),
                value: Value::Requests(value.clone()),
            }),
            PersistEntry::Commit(Slot(slot - 1)),
        ];
        if slot % checkpoint_every == 0 && pending_checkpoint.is_none() {
            pending_checkpoint = Some((slot, slot + lag));
        }
        if let Some((at, durable)) = pending_checkpoint {
            if slot >= durable {
                pending_checkpoint = None;
                entries.push(PersistEntry::Truncate(Slot(at.saturating_sub(retain))));
            }
        }
        let t = Instant::now();
        storage.append(&entries).map_err(|e| e.to_string())?;
        let took = t.elapsed();
        total += took;
        over_10ms += u64::from(took > Duration::from_millis(10));
        if took > longest {
            (longest, longest_at) = (took, slot);
        }
    }
    let stats = storage.stats();
    println!(
        "{appends} appends of {} B values in {:.2} s ({backend:?}, region {} MiB): \
         mean {:.1} µs, longest {:.2} ms (append {longest_at}), {over_10ms} over 10 ms; \
         {} compactions; wrapped the region {:.1} times; {stats:?}",
        args.value_bytes,
        started.elapsed().as_secs_f64(),
        args.region_mb,
        total.as_secs_f64() * 1e6 / appends as f64,
        longest.as_secs_f64() * 1e3,
        stats.compactions,
        stats.tail as f64 / stats.capacity as f64,
    );
    assert_eq!(storage.durable_seq(), appends);
    Ok(())
}
