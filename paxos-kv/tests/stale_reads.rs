//! The stale-read nemesis, on a real 3-replica cluster of `paxos-kv node`
//! processes: the leader is SIGSTOPped, the others elect a new leader and
//! commit newer writes, and reads are sent to the paused old leader (they
//! wait in its sockets) before it gets SIGCONT. A replica that still
//! believes it leads must not answer them from its old state: ReadIndex
//! confirms leadership with a quorum first, a lease has run out (and the
//! new leader waited it out before serving). Meanwhile and afterwards
//! reads go to every replica and writes go on; every answered read must be
//! linearizable, in the default mode and in the lease mode. Some reads are
//! pipelined behind a write of the same connection, so the node answers
//! them in order with the writes (riding in the leader's batch) rather than
//! by a heartbeat round or a lease: those must be linearizable too.
//!
//! The test has teeth: with the planted bug `unconfirmed-reads` (a debug
//! build answers linearizable reads at once from whatever state the
//! replica has, see `paxos_kv::node::PLANTED_BUG_ENV`) the same schedule
//! must produce a stale read. Followers are then a commit notice behind the
//! acknowledged writes, so the readers that go to every replica see old
//! values in every run; whether the resumed old leader also answers its
//! queued reads before it hears of the new ballot (or its own check-quorum
//! timer deposes it) is a race inside that process, so the test does not
//! depend on it.

use bytes::Bytes;
use paxos_kv::client::Client;
use paxos_kv::config::{ReadMode, StorageKind, Tuning};
use paxos_kv::lincheck::{self, OpKind, OpOutcome, Operation, Verdict};
use paxos_kv::procs::LocalCluster;
use paxos_kv::workload::{self, Answer, Session, Shared};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

const KEY: &str = "x";
/// Connections opened to the leader before it is paused, each with one read
/// waiting in it when it resumes.
const QUEUED_READS: usize = 16;
/// How long the load goes on after the old leader resumes.
const AFTER_RESUME: Duration = Duration::from_secs(3);
/// The same with the planted bug: stale reads come at once, and a shorter
/// history keeps the checker's search short.
const AFTER_RESUME_PLANTED: Duration = Duration::from_secs(1);

/// What one run saw.
struct Run {
    history: Vec<Operation>,
    /// Reads the old leader answered with a value after it resumed.
    old_leader_answers: usize,
    /// Reads that returned a value older than a write acknowledged before
    /// they were sent: (read, the newest such write's value).
    stale: Vec<(Operation, u64)>,
}

fn value_of(op: &Operation) -> Option<u64> {
    match (&op.kind, &op.outcome) {
        (OpKind::Write(v), _) | (OpKind::Read, OpOutcome::Read(Some(v))) => {
            std::str::from_utf8(v).ok()?.parse().ok()
        }
        _ => None,
    }
}

/// Reads whose value is older than the newest write acknowledged before
/// they were sent (values only grow: one writer writes 1, 2, 3, ...).
fn stale_reads(history: &[Operation]) -> Vec<(Operation, u64)> {
    let acked: Vec<(u64, u64)> = history
        .iter()
        .filter(|o| matches!(o.kind, OpKind::Write(_)) && o.outcome == OpOutcome::Written)
        .filter_map(|o| Some((o.ret?, value_of(o)?)))
        .collect();
    history
        .iter()
        .filter(|o| o.kind == OpKind::Read && o.ret.is_some())
        .filter_map(|read| {
            let newest = acked
                .iter()
                .filter(|(ret, _)| *ret < read.call)
                .map(|(_, v)| *v)
                .max()?;
            let seen = value_of(read).unwrap_or(0);
            (seen < newest).then(|| (read.clone(), newest))
        })
        .collect()
}

fn record(shared: &Shared, op: Option<Operation>) -> Option<Operation> {
    if let Some(op) = &op {
        shared
            .history
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(op.clone());
    }
    op
}

/// Writes `value` through `session` until it is acknowledged.
async fn write_acked(shared: &Shared, session: &mut Session, value: u64) {
    loop {
        let op = workload::run_op(
            shared,
            session,
            0,
            KEY,
            OpKind::Write(Bytes::from(value.to_string())),
            true,
        )
        .await;
        if record(shared, op).is_some_and(|o| o.outcome == OpOutcome::Written) {
            return;
        }
    }
}

/// One GET on `client`, recorded if it was answered or may have executed.
async fn read_once(shared: &Shared, client: &mut Client, id: u32) -> Option<Operation> {
    let call = shared.now();
    let reply = tokio::time::timeout(workload::OP_TIMEOUT, client.cmd(&[b"GET", KEY.as_bytes()]))
        .await
        .unwrap_or(Err(paxos_kv::client::ClientError::Timeout));
    record_read(shared, id, call, reply)
}

/// Records a GET of [`KEY`] called at `call` that got `reply` (now), if it
/// was answered or may have executed.
fn record_read(
    shared: &Shared,
    id: u32,
    call: u64,
    reply: Result<paxos_kv::resp::Frame, paxos_kv::client::ClientError>,
) -> Option<Operation> {
    let ret = shared.now();
    let (ret, outcome) = match workload::interpret(&OpKind::Read, reply) {
        Answer::NotExecuted(_) => return None,
        Answer::Done(outcome) => (Some(ret), outcome),
        Answer::Unknown => (None, OpOutcome::Unknown),
    };
    record(
        shared,
        Some(Operation {
            client: id,
            key: Bytes::from_static(KEY.as_bytes()),
            kind: OpKind::Read,
            call,
            ret,
            outcome,
        }),
    )
}

/// A SET of a key of its own pipelined with a GET behind it on `client`:
/// the node answers such a GET in order with the writes (it rides in the
/// leader's batch, see `paxos_node::reads`), not by a heartbeat round or a
/// lease. Only the GET is recorded (the SET's key is not checked).
async fn read_behind_write(
    shared: &Shared,
    client: &mut Client,
    id: u32,
    n: u64,
) -> Option<Operation> {
    let own = format!("w:{id}:{n}");
    let set: [&[u8]; 3] = [b"SET", own.as_bytes(), b"v"];
    let get: [&[u8]; 2] = [b"GET", KEY.as_bytes()];
    let call = shared.now();
    let reply = tokio::time::timeout(workload::OP_TIMEOUT, client.pipeline([&set[..], &get[..]]))
        .await
        .unwrap_or(Err(paxos_kv::client::ClientError::Timeout))
        .and_then(|mut frames| frames.pop().ok_or(paxos_kv::client::ClientError::Closed));
    record_read(shared, id + BEHIND_WRITE, call, reply)
}

/// Added to the client id of a read sent behind a write, so the history
/// tells them apart.
const BEHIND_WRITE: u32 = 1000;

async fn nemesis(read_mode: ReadMode, planted_bug: bool) -> Run {
    let dir = tempfile::Builder::new()
        .prefix("paxos-kv-stale-")
        .tempdir()
        .unwrap();
    let tuning = Tuning {
        read_mode,
        ..Tuning::default()
    };
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_paxos-kv"));
    let mut cluster = LocalCluster::new(bin, dir.path(), 3, StorageKind::File, &tuning).unwrap();
    if planted_bug {
        cluster.set_env(paxos_kv::node::PLANTED_BUG_ENV, "unconfirmed-reads");
    }
    cluster.spawn_all().unwrap();
    let (old, _) = cluster
        .stable_leader(Duration::from_secs(1), Duration::from_secs(30))
        .await
        .unwrap();
    let addrs: Vec<SocketAddr> = (0..cluster.len()).map(|i| cluster.client_addr(i)).collect();
    let others: Vec<SocketAddr> = (0..cluster.len())
        .filter(|&i| i != old)
        .map(|i| addrs[i])
        .collect();
    let shared = Shared::new();
    let mut writer = Session::new(addrs.clone(), old);
    write_acked(&shared, &mut writer, 1).await;
    // Reads of the first value at the old leader while it leads.
    let mut at_old = Client::connect(addrs[old], Duration::from_secs(5))
        .await
        .unwrap();
    let first = read_once(&shared, &mut at_old, 1).await;
    assert!(
        first.is_some_and(|o| o.outcome == OpOutcome::Read(Some(Bytes::from_static(b"1")))),
        "the leader reads its own write"
    );
    let mut queued = Vec::new();
    for _ in 0..QUEUED_READS {
        queued.push(
            Client::connect(addrs[old], Duration::from_secs(5))
                .await
                .unwrap(),
        );
    }

    cluster.pause(old);
    let mut writer = Session::new(others.clone(), 0);
    write_acked(&shared, &mut writer, 2).await;
    // Sent now, answered (if at all) once the old leader runs again: each
    // was sent after value 2 was acknowledged.
    let mut waiting = Vec::new();
    for (n, mut client) in queued.into_iter().enumerate() {
        let shared = Arc::clone(&shared);
        waiting.push(tokio::spawn(async move {
            let id = 100 + n as u32;
            // Half of them behind a write of their own, in order with it.
            let op = if n % 2 == 0 {
                read_once(&shared, &mut client, id).await
            } else {
                read_behind_write(&shared, &mut client, id, 0).await
            };
            op.is_some_and(|o| o.ret.is_some())
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    cluster.resume(old);

    // Writes go on (3, 4, ...), reads go to every replica, and to the old
    // leader on fresh connections, until AFTER_RESUME has passed.
    let writer_task = {
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let mut value = 3;
            while !shared.stop.load(Ordering::Relaxed) {
                write_acked(&shared, &mut writer, value).await;
                value += 1;
            }
        })
    };
    let mut readers = Vec::new();
    for (i, &addr) in addrs.iter().enumerate() {
        let shared = Arc::clone(&shared);
        readers.push(tokio::spawn(async move {
            let mut answered = 0;
            while !shared.stop.load(Ordering::Relaxed) {
                let Ok(mut c) = Client::connect(addr, Duration::from_secs(1)).await else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                for k in 0..20u64 {
                    let id = 10 + i as u32;
                    // Every fourth read rides behind a write of its own.
                    let op = if k % 4 == 3 {
                        read_behind_write(&shared, &mut c, id, k).await
                    } else {
                        read_once(&shared, &mut c, id).await
                    };
                    if op.is_some_and(|o| o.ret.is_some()) {
                        answered += 1;
                    }
                }
                // A breath between bursts: three readers spinning flat out
                // on 2 cores (debug builds, tests beside this one) would
                // starve the nodes rather than test them.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            answered
        }));
    }
    tokio::time::sleep(if planted_bug {
        AFTER_RESUME_PLANTED
    } else {
        AFTER_RESUME
    })
    .await;
    shared.stop.store(true, Ordering::Relaxed);
    let mut old_leader_answers = 0;
    for w in waiting {
        old_leader_answers += usize::from(w.await.unwrap());
    }
    let mut answered = Vec::new();
    for r in readers {
        answered.push(r.await.unwrap());
    }
    old_leader_answers += answered[old];
    writer_task.await.unwrap();
    let history = shared
        .history
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let reads = history.iter().filter(|o| o.kind == OpKind::Read).count();
    println!(
        "{read_mode:?} (planted bug: {planted_bug}): {} operations, {reads} reads, answered per replica {answered:?}, {old_leader_answers} answered by the old leader r{}",
        history.len(),
        old + 1
    );
    assert!(
        answered.iter().sum::<usize>() >= 20,
        "too few reads answered: {answered:?}"
    );
    let behind_writes = history
        .iter()
        .filter(|o| o.client >= BEHIND_WRITE && o.ret.is_some())
        .count();
    assert!(
        behind_writes >= 5,
        "only {behind_writes} reads behind a write were answered"
    );
    let stale = stale_reads(&history);
    cluster.stop_all();
    if stale.is_empty() == planted_bug {
        // The unexpected outcome (stale reads without the planted bug, or
        // none with it): kept for a look at the node logs.
        let _ = dir.keep();
    }
    Run {
        history,
        old_leader_answers,
        stale,
    }
}

fn assert_no_stale_read(run: &Run) {
    assert!(
        run.stale.is_empty(),
        "stale reads (read, newest value acknowledged before it was sent): {:#?}",
        run.stale
    );
    match lincheck::check(&run.history, 20_000_000) {
        Verdict::Linearizable => {}
        other => panic!("history not linearizable: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_old_leader_serves_no_stale_read_with_read_index() {
    assert_no_stale_read(&nemesis(ReadMode::ReadIndex, false).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_old_leader_serves_no_stale_read_with_leases() {
    assert_no_stale_read(&nemesis(ReadMode::Lease, false).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_served_without_confirmation_are_caught_stale() {
    let run = nemesis(ReadMode::ReadIndex, true).await;
    println!("the planted bug served {} stale reads", run.stale.len());
    assert!(
        !run.stale.is_empty(),
        "the planted bug served no stale read (answers from the old leader: {}): the nemesis lacks teeth",
        run.old_leader_answers
    );
    let started = std::time::Instant::now();
    let verdict = lincheck::check(&run.history, 20_000_000);
    println!(
        "checked {} operations in {:?}: {}",
        run.history.len(),
        started.elapsed(),
        match &verdict {
            Verdict::Linearizable => "linearizable",
            Verdict::NotLinearizable { .. } => "not linearizable",
            Verdict::Inconclusive { .. } => "inconclusive",
        }
    );
    assert!(
        !matches!(verdict, Verdict::Linearizable),
        "the checker passed a history with a stale read"
    );
}
