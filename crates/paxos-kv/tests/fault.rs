//! Multi-process fault test: a real 3-replica cluster of `paxos-kv node`
//! processes on loopback, concurrent clients, and a nemesis that kill -9s
//! and restarts replicas and SIGSTOPs / SIGCONTs them. The recorded history
//! must be linearizable and no acknowledged write may be lost.

use bytes::Bytes;
use paxos_kv::client::{moved_to, Client, ClientError};
use paxos_kv::config::{StorageKind, Tuning};
use paxos_kv::lincheck::{self, OpKind, OpOutcome, Operation, Verdict};
use paxos_kv::procs::LocalCluster;
use paxos_kv::resp::Frame;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const KEYS: usize = 6;
const CLIENTS: usize = 5;
const LOAD: Duration = Duration::from_secs(16);
const OP_TIMEOUT: Duration = Duration::from_millis(1500);

/// What a client learned from one request.
enum Answer {
    /// The request was certainly not executed (redirect / no leader).
    NotExecuted(Option<SocketAddr>),
    /// A reply the history records.
    Done(OpOutcome),
    /// No reply, or "outcome unknown".
    Unknown,
}

fn interpret(kind: &OpKind, reply: Result<Frame, ClientError>) -> Answer {
    let frame = match reply {
        Ok(f) => f,
        Err(_) => return Answer::Unknown,
    };
    if let Frame::Error(e) = &frame {
        if e.starts_with(b"MOVED") {
            return Answer::NotExecuted(moved_to(&frame));
        }
        if e.starts_with(b"CLUSTERDOWN") || e.starts_with(b"TRYAGAIN") {
            return Answer::NotExecuted(None);
        }
        if e.starts_with(b"ERR value is not an integer") {
            return Answer::Done(OpOutcome::IncrNotInteger);
        }
        return Answer::Unknown;
    }
    match (kind, frame) {
        (OpKind::Read, Frame::Bulk(v)) => Answer::Done(OpOutcome::Read(v)),
        (OpKind::Write(_), Frame::Simple(s)) if &s[..] == b"OK" => Answer::Done(OpOutcome::Written),
        (OpKind::Incr, Frame::Integer(n)) => Answer::Done(OpOutcome::Incremented(n)),
        (OpKind::Del, Frame::Integer(n)) => Answer::Done(OpOutcome::Deleted(n)),
        // A reply that does not fit the command: record as a read of
        // nonsense so the checker flags it, rather than hide it.
        (_, other) => Answer::Done(OpOutcome::Read(Some(Bytes::from(format!(
            "unexpected reply {other:?}"
        ))))),
    }
}

struct Shared {
    start: Instant,
    history: Mutex<Vec<Operation>>,
    /// Unique keys whose SET was acknowledged: (key, value).
    acked_unique: Mutex<Vec<(String, String)>>,
    stop: AtomicBool,
}

impl Shared {
    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
}

/// Sends one request, following redirects, until it is executed, unknown,
/// or the load phase ends. Returns the recorded operation, if any.
/// A client's view of the cluster: the addresses, its connection and the
/// node it currently talks to.
struct Session {
    addrs: Vec<SocketAddr>,
    conn: Option<(SocketAddr, Client)>,
    target: usize,
}

async fn run_op(
    shared: &Shared,
    session: &mut Session,
    client: u32,
    key: &str,
    kind: OpKind,
    final_phase: bool,
) -> Option<Operation> {
    let parts: Vec<Vec<u8>> = match &kind {
        OpKind::Read => vec![b"GET".to_vec(), key.as_bytes().to_vec()],
        OpKind::Write(v) => vec![b"SET".to_vec(), key.as_bytes().to_vec(), v.to_vec()],
        OpKind::Incr => vec![b"INCR".to_vec(), key.as_bytes().to_vec()],
        OpKind::Del => vec![b"DEL".to_vec(), key.as_bytes().to_vec()],
    };
    let parts: Vec<&[u8]> = parts.iter().map(|p| &p[..]).collect();
    let Session {
        addrs,
        conn,
        target,
    } = session;
    loop {
        if shared.stop.load(Ordering::Relaxed) && !final_phase {
            return None;
        }
        let addr = addrs[*target % addrs.len()];
        if conn.as_ref().is_none_or(|(a, _)| *a != addr) {
            match Client::connect(addr, OP_TIMEOUT).await {
                Ok(c) => *conn = Some((addr, c)),
                Err(_) => {
                    *target += 1;
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    continue;
                }
            }
        }
        let Some((_, c)) = conn.as_mut() else {
            continue;
        };
        let call = shared.now();
        let reply = c.cmd(&parts).await;
        let ret = shared.now();
        match interpret(&kind, reply) {
            Answer::NotExecuted(to) => match to.and_then(|a| addrs.iter().position(|x| *x == a)) {
                Some(i) => *target = i,
                None => {
                    *target += 1;
                    tokio::time::sleep(Duration::from_millis(30)).await;
                }
            },
            Answer::Done(outcome) => {
                return Some(Operation {
                    client,
                    key: Bytes::from(key.to_owned()),
                    kind,
                    call,
                    ret: Some(ret),
                    outcome,
                });
            }
            Answer::Unknown => {
                // The connection may still deliver the late reply: drop it.
                *conn = None;
                *target += 1;
                return Some(Operation {
                    client,
                    key: Bytes::from(key.to_owned()),
                    kind,
                    call,
                    ret: None,
                    outcome: OpOutcome::Unknown,
                });
            }
        }
    }
}

async fn client_task(shared: Arc<Shared>, addrs: Vec<SocketAddr>, id: u32, seed: u64) {
    let mut rng = SmallRng::seed_from_u64(seed ^ u64::from(id));
    let mut session = Session {
        addrs,
        conn: None,
        target: id as usize,
    };
    let mut n = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        n += 1;
        let roll = rng.gen_range(0..100);
        if roll < 15 {
            // A write to a key of its own, verified at the end.
            let key = format!("u:{id}:{n}");
            let value = format!("{id}-{n}");
            let op = run_op(
                &shared,
                &mut session,
                id,
                &key,
                OpKind::Write(Bytes::from(value.clone())),
                false,
            )
            .await;
            if let Some(Operation { ret: Some(_), .. }) = op {
                shared.acked_unique.lock().unwrap().push((key, value));
            }
            continue;
        }
        let key = format!("k{}", rng.gen_range(0..KEYS));
        let kind = match roll {
            15..=54 => OpKind::Read,
            55..=84 => OpKind::Write(Bytes::from((u64::from(id) * 1_000_000 + n).to_string())),
            85..=94 => OpKind::Incr,
            _ => OpKind::Del,
        };
        if let Some(op) = run_op(&shared, &mut session, id, &key, kind, false).await {
            shared.history.lock().unwrap().push(op);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linearizable_and_no_acked_write_lost_under_kill9_and_sigstop() {
    let seed: u64 = std::env::var("PAXOS_KV_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            t.as_nanos() as u64 ^ u64::from(std::process::id())
        });
    println!("fault test seed {seed} (set PAXOS_KV_FAULT_SEED to replay the nemesis schedule)");
    let dir = tempfile::Builder::new()
        .prefix("paxos-kv-fault-")
        .tempdir()
        .unwrap();
    // Frequent checkpoints so restarts exercise checkpoint + log-tail recovery.
    let tuning = Tuning {
        checkpoint_every_decrees: 300,
        ..Tuning::default()
    };
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_paxos-kv"));
    let mut cluster = LocalCluster::start(bin, dir.path(), 3, StorageKind::File, &tuning).unwrap();
    cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .unwrap();
    let addrs: Vec<SocketAddr> = (0..cluster.len()).map(|i| cluster.client_addr(i)).collect();

    let shared = Arc::new(Shared {
        start: Instant::now(),
        history: Mutex::new(Vec::new()),
        acked_unique: Mutex::new(Vec::new()),
        stop: AtomicBool::new(false),
    });
    let clients: Vec<_> = (0..CLIENTS as u32)
        .map(|id| tokio::spawn(client_task(Arc::clone(&shared), addrs.clone(), id, seed)))
        .collect();

    // Nemesis: one fault at a time, so a majority is always there to make
    // progress; the leader is the favourite victim.
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut faults = Vec::new();
    let load_end = Instant::now() + LOAD;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    while Instant::now() + Duration::from_secs(3) < load_end {
        let leader = cluster.wait_for_leader(Duration::from_secs(10)).await.ok();
        let victim = match leader {
            Some(l) if rng.gen_bool(0.7) => l,
            _ => rng.gen_range(0..cluster.len()),
        };
        if rng.gen_bool(0.5) {
            faults.push(format!("kill -9 r{}", victim + 1));
            cluster.kill9(victim);
            tokio::time::sleep(Duration::from_millis(rng.gen_range(300..1200))).await;
            cluster.spawn(victim).unwrap();
        } else {
            faults.push(format!("SIGSTOP r{}", victim + 1));
            cluster.pause(victim);
            tokio::time::sleep(Duration::from_millis(rng.gen_range(500..1500))).await;
            cluster.resume(victim);
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(500..1500))).await;
    }
    let remaining = load_end.saturating_duration_since(Instant::now());
    tokio::time::sleep(remaining).await;
    shared.stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    println!("nemesis: {}", faults.join(", "));

    // Healed cluster: final reads of every key join the history.
    cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .unwrap();
    let mut session = Session {
        addrs: addrs.clone(),
        conn: None,
        target: 0,
    };
    for k in 0..KEYS {
        let key = format!("k{k}");
        loop {
            let op = run_op(&shared, &mut session, 99, &key, OpKind::Read, true).await;
            if let Some(op) = op {
                let done = op.ret.is_some();
                shared.history.lock().unwrap().push(op);
                if done {
                    break;
                }
            }
        }
    }

    // Every acknowledged unique write is readable.
    let acked = shared.acked_unique.lock().unwrap().clone();
    let mut lost = Vec::new();
    for (key, value) in &acked {
        loop {
            let op = run_op(&shared, &mut session, 99, key, OpKind::Read, true).await;
            if let Some(Operation {
                ret: Some(_),
                outcome,
                ..
            }) = op
            {
                if outcome != OpOutcome::Read(Some(Bytes::from(value.clone()))) {
                    lost.push((key.clone(), value.clone(), outcome));
                }
                break;
            }
        }
    }

    let history = shared.history.lock().unwrap().clone();
    let completed = history.iter().filter(|o| o.ret.is_some()).count();
    let unknown = history.len() - completed;
    println!(
        "history: {} operations ({completed} completed, {unknown} unknown outcome), {} acknowledged unique writes",
        history.len(),
        acked.len()
    );
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    assert!(
        completed >= 200,
        "too little progress under faults: {completed} completed operations"
    );
    assert!(
        acked.len() >= 20,
        "too few acknowledged unique writes: {}",
        acked.len()
    );
    let verdict = lincheck::check(&history, 20_000_000);
    if verdict != Verdict::Linearizable {
        let _ = dir.keep();
    }
    match verdict {
        Verdict::Linearizable => {}
        Verdict::NotLinearizable { key, operations } => {
            panic!(
                "history of {key:?} is not linearizable (seed {seed}); operations: {operations:#?}"
            )
        }
        Verdict::Inconclusive { key } => {
            panic!("checker ran out of budget on {key:?} (seed {seed})")
        }
    }

    // The checker has teeth on this very history: one stale or invented
    // read must be caught.
    let mut tampered = history.clone();
    let victim = tampered
        .iter()
        .position(|o| {
            o.kind == OpKind::Read
                && matches!(o.outcome, OpOutcome::Read(Some(_)))
                && o.ret.is_some()
        })
        .expect("history has a completed read of a present key");
    tampered[victim].outcome = OpOutcome::Read(Some(Bytes::from_static(b"never written")));
    assert!(
        matches!(
            lincheck::check(&tampered, 20_000_000),
            Verdict::NotLinearizable { .. }
        ),
        "the checker missed an invented read"
    );
    cluster.stop_all();
}
