//! Fault injection with real processes: a child appends to a file-backed
//! `NvmStorage` and reports each append after it returned; the parent
//! SIGKILLs it at a varying moment, reopens the region and checks that
//! every reported append survived, that the state is exactly a prefix of
//! the child's appends (no torn or mixed record), and then lets the next
//! child continue from the recovered state. The region is small, so kills
//! also land inside compactions.
//!
//! `harness = false`: the same binary is the parent (no environment
//! variable) and the child (`PAXOS_NVM_KILL_CHILD=<path>`).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use paxos_core::{Accepted, Ballot, DurableState, PersistEntry, ReplicaId, Slot, Value};
use paxos_log::ReplicaStorage;
use paxos_nvm::{NvmOptions, NvmStorage};

const CHILD_ENV: &str = "PAXOS_NVM_KILL_CHILD";
const COMMIT_EVERY: u64 = 16;
const KEEP: u64 = 8;

fn options() -> NvmOptions {
    NvmOptions {
        region_bytes: paxos_nvm::storage::MIN_REGION_BYTES,
        log_id: Some(77),
        ..NvmOptions::default()
    }
}

fn value_for(slot: Slot) -> Value {
    Value::Requests(Bytes::from(vec![
        (slot % 251) as u8;
        600 + (slot % 7) as usize
    ]))
}

fn entries_for(slot: Slot) -> Vec<PersistEntry> {
    let ballot = Ballot::new(1, ReplicaId(1));
    let mut entries = vec![PersistEntry::Accept(Accepted {
        slot,
        ballot,
        value: value_for(slot),
    })];
    if slot % COMMIT_EVERY == 0 {
        entries.push(PersistEntry::Commit(slot));
        entries.push(PersistEntry::Truncate(slot - KEEP));
    }
    entries
}

fn last_slot(state: &DurableState) -> Slot {
    state
        .accepted
        .keys()
        .next_back()
        .copied()
        .unwrap_or(state.truncated_through)
}

fn child(path: &Path) {
    let (storage, state) = NvmStorage::open(path, options()).expect("child opens the region");
    let mut slot = last_slot(&state) + 1;
    loop {
        if let Err(e) = storage.append(&entries_for(slot)) {
            eprintln!("child: append of slot {slot} failed: {e}");
            std::process::exit(3);
        }
        // Only after `append` returned (durable): acknowledge.
        println!("{slot}");
        slot += 1;
    }
}

/// The state a crash after the append of `last` must recover.
fn expected_state(last: Slot) -> DurableState {
    let mut s = DurableState::default();
    (1..=last).for_each(|slot| entries_for(slot).iter().for_each(|e| s.apply(e)));
    s
}

fn parent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("killed.nvm");
    let exe = std::env::current_exe().expect("current exe");
    let mut acknowledged: Slot = 0;
    let mut compactions_seen = false;
    for round in 0..6u64 {
        let mut child = Command::new(&exe)
            .env(CHILD_ENV, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("piped stdout");
        let reader = std::thread::spawn(move || {
            let mut last = 0;
            for line in BufReader::new(stdout).lines() {
                match line.ok().and_then(|l| l.trim().parse::<Slot>().ok()) {
                    Some(s) => last = s,
                    None => break,
                }
            }
            last
        });
        // Wait for some progress, then kill at a varying moment.
        let start = Instant::now();
        std::thread::sleep(Duration::from_millis(150 + 70 * round));
        if let Ok(Some(status)) = child.try_wait() {
            panic!("round {round}: child exited by itself ({status}) instead of being killed");
        }
        child.kill().expect("SIGKILL child");
        let _ = child.wait();
        let reported = reader.join().expect("reader thread");
        acknowledged = acknowledged.max(reported);

        let (storage, state) = NvmStorage::open(&path, options())
            .unwrap_or_else(|e| panic!("round {round}: recovery after SIGKILL failed: {e}"));
        let last = last_slot(&state);
        assert!(
            last >= acknowledged,
            "round {round}: acknowledged append {acknowledged} lost (recovered up to {last})"
        );
        assert!(
            last <= acknowledged + 1,
            "round {round}: recovered {last}, never appended"
        );
        assert_eq!(
            state,
            expected_state(last),
            "round {round}: recovered state is not a prefix"
        );
        acknowledged = last;
        compactions_seen |= storage.stats().tail > storage.stats().capacity;
        println!(
            "round {round}: killed after {:?}, recovered through slot {last}, log {:?}",
            start.elapsed(),
            storage.stats()
        );
    }
    assert!(
        acknowledged > 20,
        "children made too little progress ({acknowledged}) to test anything"
    );
    println!("kill_recovery: ok (wrapped the circular log: {compactions_seen})");
}

fn main() {
    match std::env::var_os(CHILD_ENV) {
        Some(path) => child(Path::new(&path)),
        None => parent(),
    }
}
