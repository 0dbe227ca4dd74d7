//! A closed-loop client workload for multi-process tests: clients that
//! follow redirects, record every operation for [`crate::lincheck`], and
//! remember acknowledged writes to keys of their own so a test can check
//! that none was lost. Used by the fault test and the membership test.

use crate::client::{moved_to, Client, ClientError};
use crate::lincheck::{OpKind, OpOutcome, Operation};
use crate::resp::Frame;
use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Keys shared by all clients (contended: what the checker works on).
pub const KEYS: usize = 6;
/// How long a client waits for one reply.
pub const OP_TIMEOUT: Duration = Duration::from_millis(1500);

/// What a client learned from one request.
pub enum Answer {
    /// The request was certainly not executed (redirect / no leader).
    NotExecuted(Option<SocketAddr>),
    /// A reply the history records.
    Done(OpOutcome),
    /// No reply, or "outcome unknown".
    Unknown,
}

pub fn interpret(kind: &OpKind, reply: Result<Frame, ClientError>) -> Answer {
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
        (OpKind::Incr | OpKind::IncrBy(_), Frame::Integer(n)) => {
            Answer::Done(OpOutcome::Incremented(n))
        }
        (OpKind::Del, Frame::Integer(n)) => Answer::Done(OpOutcome::Deleted(n)),
        // A reply that does not fit the command: record as a read of
        // nonsense so the checker flags it, rather than hide it.
        (_, other) => Answer::Done(OpOutcome::Read(Some(Bytes::from(format!(
            "unexpected reply {other:?}"
        ))))),
    }
}

pub struct Shared {
    /// When the run started (operation times are relative to it).
    pub start: Instant,
    /// Every recorded operation.
    pub history: Mutex<Vec<Operation>>,
    /// Unique keys whose SET was acknowledged: (key, value).
    pub acked_unique: Mutex<Vec<(String, String)>>,
    /// Set to end the load.
    pub stop: AtomicBool,
}

impl Shared {
    /// Nanoseconds since the start.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
}

/// Sends one request, following redirects, until it is executed, unknown,
/// or the load phase ends. Returns the recorded operation, if any.
/// A client's view of the cluster: the addresses, its connection and the
/// node it currently talks to.
pub struct Session {
    addrs: Vec<SocketAddr>,
    conn: Option<(SocketAddr, Client)>,
    target: usize,
}

pub async fn run_op(
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
        OpKind::IncrBy(d) => vec![
            b"INCRBY".to_vec(),
            key.as_bytes().to_vec(),
            d.to_string().into_bytes(),
        ],
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

pub async fn client_task(shared: Arc<Shared>, addrs: Vec<SocketAddr>, id: u32, seed: u64) {
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
                shared
                    .acked_unique
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push((key, value));
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
            shared
                .history
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(op);
        }
    }
}

impl Shared {
    /// A fresh run starting now.
    pub fn new() -> Arc<Shared> {
        Arc::new(Shared {
            start: Instant::now(),
            history: Mutex::new(Vec::new()),
            acked_unique: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        })
    }

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Session {
    /// A session over the nodes at `addrs`, starting at `addrs[first]`.
    pub fn new(addrs: Vec<SocketAddr>, first: usize) -> Session {
        Session {
            addrs,
            conn: None,
            target: first,
        }
    }
}

/// What the end-of-run checks found.
#[derive(Debug)]
pub struct Verdicts {
    /// Acknowledged unique writes not readable with their value:
    /// (key, value, what the read returned).
    pub lost: Vec<(String, String, OpOutcome)>,
    /// Acknowledged unique writes checked.
    pub acked: usize,
    /// The whole history, final reads included.
    pub history: Vec<Operation>,
}

/// After the load stopped: reads every shared key (into the history) and
/// every acknowledged unique write (which must read back its value).
pub async fn final_reads(shared: &Shared, addrs: Vec<SocketAddr>) -> Verdicts {
    let mut session = Session::new(addrs, 0);
    for k in 0..KEYS {
        let key = format!("k{k}");
        loop {
            let op = run_op(shared, &mut session, 99, &key, OpKind::Read, true).await;
            if let Some(op) = op {
                let done = op.ret.is_some();
                Shared::lock(&shared.history).push(op);
                if done {
                    break;
                }
            }
        }
    }
    let acked = Shared::lock(&shared.acked_unique).clone();
    let mut lost = Vec::new();
    for (key, value) in &acked {
        loop {
            let op = run_op(shared, &mut session, 99, key, OpKind::Read, true).await;
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
    Verdicts {
        lost,
        acked: acked.len(),
        history: Shared::lock(&shared.history).clone(),
    }
}
