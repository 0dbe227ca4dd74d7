//! Fault injection with real processes: a child appends to a file-backed
//! `NvmStorage` and reports each append after it returned; the parent
//! SIGKILLs it at a varying moment, reopens the region and checks that
//! every reported append survived, that the state is exactly a prefix of
//! the child's appends (no torn or mixed record), and then lets the next
//! child continue from the recovered state. The region is small, so kills
//! also land inside compactions.
//!
//! Two tests: `kill_recovery` on an msync-backed file (the default
//! backend off DAX), and `kill_recovery_emulated_pm` on emulated persistent
//! memory (a file on `/dev/shm` flushed with `clwb`/`clflushopt` + `sfence`
//! and never msynced), chosen the way an operator would with PMDK's
//! `PMEM_IS_PMEM_FORCE=1`: a SIGKILL loses no acknowledged append there
//! either, since the flushed stores are in the file's pages.
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
use paxos_nvm::storage::PMEM_IS_PMEM_FORCE;
use paxos_nvm::{Backend, NvmOptions, NvmStorage, RegionKind};

const CHILD_ENV: &str = "PAXOS_NVM_KILL_CHILD";
/// Exit status of a child whose region is not of the backend under test.
const WRONG_BACKEND_EXIT: i32 = 4;
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
        (slot.0 % 251) as u8;
        600 + (slot.0 % 7) as usize
    ]))
}

fn entries_for(slot: Slot) -> Vec<PersistEntry> {
    let ballot = Ballot::new(1, ReplicaId(1));
    let mut entries = vec![PersistEntry::Accept(Accepted {
        slot,
        ballot,
        value: value_for(slot),
    })];
    if slot.0 % COMMIT_EVERY == 0 {
        entries.push(PersistEntry::Commit(slot));
        entries.push(PersistEntry::Truncate(slot.saturating_sub(KEEP)));
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

/// Whether `kind` is the region the test `emulated` asked for.
fn is_expected_kind(kind: RegionKind, emulated: bool) -> bool {
    if emulated {
        matches!(kind, RegionKind::EmulatedPersistentMemory { .. })
    } else {
        kind == RegionKind::MsyncFile
    }
}

fn child(path: &Path) {
    // Backend::Auto: the parent chooses through PMEM_IS_PMEM_FORCE.
    let (storage, state) = NvmStorage::open(path, options()).expect("child opens the region");
    let emulated = std::env::var(PMEM_IS_PMEM_FORCE).is_ok_and(|v| v == "1");
    if !is_expected_kind(storage.region_kind(), emulated) {
        eprintln!("child: region is {}", storage.region_kind());
        std::process::exit(WRONG_BACKEND_EXIT);
    }
    let mut slot = last_slot(&state).next();
    loop {
        if let Err(e) = storage.append(&entries_for(slot)) {
            eprintln!("child: append of slot {slot} failed: {e}");
            std::process::exit(3);
        }
        // Only after `append` returned (durable): acknowledge.
        println!("{slot}");
        slot = slot.next();
    }
}

/// The state a crash after the append of `last` must recover.
fn expected_state(last: Slot) -> DurableState {
    let mut s = DurableState::default();
    Slot::FIRST
        .through(last)
        .for_each(|slot| entries_for(slot).iter().for_each(|e| s.apply(e)));
    s
}

fn parent(emulated: bool) {
    let shm = Path::new("/dev/shm");
    let dir = if emulated && shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .expect("tempdir");
    let path = dir.path().join("killed.nvm");
    let reopen_options = NvmOptions {
        backend: if emulated {
            Backend::EmulatedPm
        } else {
            Backend::MsyncFile
        },
        ..options()
    };
    let exe = std::env::current_exe().expect("current exe");
    let mut acknowledged: Slot = Slot::ZERO;
    let mut compactions_seen = false;
    for round in 0..6u64 {
        let mut child = Command::new(&exe)
            .env(CHILD_ENV, &path)
            .env(PMEM_IS_PMEM_FORCE, if emulated { "1" } else { "0" })
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("piped stdout");
        let reader = std::thread::spawn(move || {
            let mut last = Slot::ZERO;
            for line in BufReader::new(stdout).lines() {
                match line.ok().and_then(|l| l.trim().parse().ok().map(Slot)) {
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

        let (storage, state) = NvmStorage::open(&path, reopen_options.clone())
            .unwrap_or_else(|e| panic!("round {round}: recovery after SIGKILL failed: {e}"));
        assert!(is_expected_kind(storage.region_kind(), emulated));
        let last = last_slot(&state);
        assert!(
            last >= acknowledged,
            "round {round}: acknowledged append {acknowledged} lost (recovered up to {last})"
        );
        assert!(
            last <= acknowledged.next(),
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
        acknowledged > Slot(20),
        "children made too little progress ({acknowledged}) to test anything"
    );
    println!("kill_recovery (emulated pm: {emulated}): ok (wrapped the circular log: {compactions_seen})");
}

/// The tests' names as test runners list them, and whether each runs on
/// emulated persistent memory.
const TESTS: [(&str, bool); 2] = [
    ("kill_recovery", false),
    ("kill_recovery_emulated_pm", true),
];

/// What the arguments a test runner passes ask of this harness-less binary.
#[derive(Debug, PartialEq)]
enum Request {
    /// Print the test list, in libtest's `--list --format terse` form.
    List { ignored_only: bool },
    /// Run the tests whose names are selected (none: all filtered out).
    Run(Vec<&'static str>),
}

/// Speaks the part of libtest's command line that `cargo test` and
/// cargo-nextest use: nextest lists tests with `--list --format terse`
/// (then again with `--ignored`) and runs one with `--exact NAME
/// --nocapture`; `cargo test FILTER` passes a substring filter.
fn request(args: &[String]) -> Request {
    let flag = |f: &str| args.iter().any(|a| a == f);
    if flag("--list") {
        return Request::List {
            ignored_only: flag("--ignored"),
        };
    }
    let exact = flag("--exact");
    let mut filters = Vec::new();
    let mut rest = args.iter();
    while let Some(a) = rest.next() {
        if a.starts_with("--") {
            // Flags taking a separate value; skip the value.
            if matches!(
                a.as_str(),
                "--format" | "--test-threads" | "--skip" | "--color" | "--logfile"
            ) {
                rest.next();
            }
        } else {
            filters.push(a.as_str());
        }
    }
    let wanted = |name: &str| {
        filters.is_empty()
            || filters
                .iter()
                .any(|f| if exact { name == *f } else { name.contains(f) })
    };
    // These tests are not ignored, so `--ignored` alone selects nothing.
    if flag("--ignored") {
        return Request::Run(Vec::new());
    }
    Request::Run(
        TESTS
            .iter()
            .map(|(name, _)| *name)
            .filter(|name| wanted(name))
            .collect(),
    )
}

fn main() {
    if let Some(path) = std::env::var_os(CHILD_ENV) {
        return child(Path::new(&path));
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    match request(&args) {
        Request::List { ignored_only: true } => {}
        Request::List {
            ignored_only: false,
        } => TESTS.iter().for_each(|(name, _)| println!("{name}: test")),
        Request::Run(names) => {
            for (name, emulated) in TESTS {
                if names.contains(&name) {
                    parent(emulated);
                } else {
                    println!("{name}: filtered out");
                }
            }
        }
    }
}
