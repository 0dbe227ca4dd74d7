//! The RESP2 client front door over TCP.
//!
//! Each connection has a reader task and a writer task joined by a bounded
//! queue of pending replies, so replies leave in request order while many
//! requests of one connection are in consensus at once (pipelining). The
//! reader submits each request to the replica's queue as soon as it is
//! parsed; the replica's loop drains the queue into batches, so requests
//! pipelined on one connection (and across connections) share decrees.
//!
//! Isolation: a malformed frame gets a RESP error and closes only that
//! connection (the framing is lost); a well-framed but bad command gets a
//! RESP error and the connection carries on. Connection count, pipelined
//! requests per connection and buffered bytes are bounded.
//!
//! Writes and reads on a follower are answered with `-MOVED 0 <addr>` where
//! `<addr>` is the leader's client address (`-CLUSTERDOWN` if no leader is
//! known); those requests were not proposed. A request that was proposed
//! but whose fate is unknown (leadership changed) is answered with an
//! `-UNKNOWN ...` error: it may or may not have been applied.

use crate::kv::encode_command;
use crate::node::{error_reply, outcome_reply, Replica, Reply};
use crate::resp::{self, RespLimits};
use crate::stages::Point;
use bytes::{Buf, Bytes, BytesMut};
use paxos_core::{ReplicaId, Role};
use paxos_pipeline::CompletionHandle;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};

/// Server limits.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// RESP parsing limits per connection.
    pub limits: RespLimits,
    /// Most concurrent connections.
    pub max_clients: usize,
    /// Most requests one connection may have awaiting replies.
    pub max_pipelined: usize,
    /// Client address of each member, for redirects.
    pub members: Vec<(ReplicaId, String)>,
}

/// A reply owed to the client, in request order.
enum Pending {
    Ready(Bytes),
    /// Awaiting consensus; with the stage stamp of its arrival.
    Wait(CompletionHandle<Reply>, u64),
    /// An operator command running in its own task ([`crate::admin`]).
    Admin(tokio::sync::oneshot::Receiver<Bytes>),
    /// Flush what was written, then close (after a fatal protocol error or QUIT).
    Close,
}

/// Commands with at most this many arguments are handled without any
/// allocation for their argument list.
const INLINE_ARGS: usize = 8;

struct ServerState {
    replica: Replica,
    config: ServerConfig,
    connected: AtomicUsize,
}

impl ServerState {
    fn redirect(&self, id: ReplicaId) -> Option<String> {
        // The replicated address book knows members added at run time.
        if let Some(a) = self.replica.cluster().client_addr(id) {
            return Some(a.to_string());
        }
        self.config
            .members
            .iter()
            .find(|(m, _)| *m == id)
            .map(|(_, a)| a.clone())
    }
}

/// Accepts clients until the listener fails. Each connection runs in its
/// own tasks; a failing connection never affects the others.
pub async fn serve(
    listener: TcpListener,
    replica: Replica,
    config: ServerConfig,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(config.max_clients));
    let state = Arc::new(ServerState {
        replica,
        config,
        connected: AtomicUsize::new(0),
    });
    loop {
        let (mut socket, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and the like: back off, keep serving.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        match Arc::clone(&permits).try_acquire_owned() {
            Ok(permit) => {
                let state = Arc::clone(&state);
                tokio::spawn(async move {
                    state.connected.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = handle_connection(socket, Arc::clone(&state)).await {
                        tracing::debug!(%peer, error = %e, "client connection ended");
                    }
                    state.connected.fetch_sub(1, Ordering::Relaxed);
                    drop(permit);
                });
            }
            Err(_) => {
                tokio::spawn(async move {
                    let _ = socket
                        .write_all(b"-ERR max number of clients reached\r\n")
                        .await;
                });
            }
        }
    }
}

async fn handle_connection(socket: TcpStream, state: Arc<ServerState>) -> std::io::Result<()> {
    let (mut rd, wr) = socket.into_split();
    let (tx, rx) = mpsc::channel::<Pending>(state.config.max_pipelined);
    let writer = tokio::spawn(write_replies(wr, rx, Arc::clone(&state)));
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut scratch = BytesMut::with_capacity(16 * 1024);
    let mut ranges = Vec::with_capacity(INLINE_ARGS);
    let mut session = crate::session::Session::new();
    let limits = state.config.limits;
    'read: loop {
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
        let n = rd.read_buf(&mut buf).await?;
        if n == 0 {
            break;
        }
        loop {
            match resp::parse_command(&buf, &limits, &mut ranges) {
                Ok(None) => break,
                Ok(Some(command)) => {
                    let received_us = state.replica.stages().stamp();
                    let (pending, len) = match command {
                        resp::Command::NotCommand { len } => (
                            Pending::Ready(error_bytes(
                                b"ERR protocol: expected an array of bulk strings",
                            )),
                            len,
                        ),
                        resp::Command::Args { len } => {
                            // Arguments are borrowed from the read buffer:
                            // parsing a command allocates nothing.
                            let frame = &buf[..len];
                            let mut inline: [&[u8]; INLINE_ARGS] = [&[]; INLINE_ARGS];
                            let spilled: Vec<&[u8]>;
                            let args: &[&[u8]] = if ranges.len() <= INLINE_ARGS {
                                for (slot, r) in inline.iter_mut().zip(&ranges) {
                                    *slot = &frame[r.clone()];
                                }
                                &inline[..ranges.len()]
                            } else {
                                spilled = ranges.iter().map(|r| &frame[r.clone()]).collect();
                                &spilled
                            };
                            (
                                execute(args, &state, &mut scratch, received_us, &mut session),
                                len,
                            )
                        }
                    };
                    buf.advance(len);
                    let close = matches!(pending, Pending::Close);
                    if tx.send(pending).await.is_err() || close {
                        break 'read;
                    }
                }
                Err(e) => {
                    let _ = tx
                        .send(Pending::Ready(error_bytes(e.to_string().as_bytes())))
                        .await;
                    let _ = tx.send(Pending::Close).await;
                    break 'read;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.await;
    Ok(())
}

fn error_bytes(text: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(text.len() + 3);
    resp::write_error(&mut out, text);
    out.freeze()
}

fn execute(
    args: &[&[u8]],
    state: &ServerState,
    scratch: &mut BytesMut,
    received_us: u64,
    session: &mut crate::session::Session,
) -> Pending {
    let name = &args[0];
    let is = |s: &[u8]| name.eq_ignore_ascii_case(s);
    if is(b"PING") {
        return Pending::Ready(match args.get(1).copied() {
            Some(msg) => {
                let mut out = BytesMut::new();
                resp::write_bulk(&mut out, Some(msg));
                out.freeze()
            }
            None => Bytes::from_static(b"+PONG\r\n"),
        });
    }
    if is(b"QUIT") {
        return Pending::Close;
    }
    if is(b"INFO") {
        let text = info_text(state, args.get(1).copied());
        let mut out = BytesMut::new();
        resp::write_bulk(&mut out, Some(text.as_bytes()));
        return Pending::Ready(out.freeze());
    }
    if crate::admin::is_admin(name) {
        // Rare: copying the arguments keeps the admin parser unchanged.
        let owned: Vec<Bytes> = args.iter().map(|a| Bytes::copy_from_slice(a)).collect();
        return match crate::admin::parse(&owned) {
            Ok(cmd) => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                let replica = state.replica.clone();
                tokio::spawn(async move {
                    let reply =
                        crate::admin::execute(cmd, replica, crate::admin::CHANGE_TIMEOUT).await;
                    let _ = tx.send(reply);
                });
                Pending::Admin(rx)
            }
            Err(e) => Pending::Ready(error_bytes(e.to_string().as_bytes())),
        };
    }
    if let Some(reply) = crate::session::execute(args, session) {
        return Pending::Ready(reply);
    }
    match encode_command(args, scratch) {
        Ok(_) => {
            let request = scratch.split().freeze();
            match state.replica.submit(request) {
                Ok(handle) => {
                    let stages = state.replica.stages();
                    stages.record(Point::Received, received_us, stages.stamp());
                    Pending::Wait(handle, received_us)
                }
                Err(e) => {
                    let mut out = BytesMut::new();
                    error_reply(&e, |id| state.redirect(id), &mut out);
                    Pending::Ready(out.freeze())
                }
            }
        }
        Err(e) => Pending::Ready(error_bytes(e.to_string().as_bytes())),
    }
}

async fn write_replies(
    mut wr: tokio::net::tcp::OwnedWriteHalf,
    mut rx: mpsc::Receiver<Pending>,
    state: Arc<ServerState>,
) -> std::io::Result<()> {
    let mut out = BytesMut::with_capacity(16 * 1024);
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(p) = next.take() {
            match p {
                Pending::Ready(b) => out.extend_from_slice(&b),
                Pending::Wait(handle, received_us) => {
                    // Flush finished replies before waiting on consensus.
                    if !out.is_empty() && !handle.is_resolved() {
                        wr.write_all(&out).await?;
                        out.clear();
                    }
                    let outcome = handle.await;
                    if let paxos_pipeline::Outcome::Completed(Reply { applied_us, .. }) = &outcome {
                        let stages = state.replica.stages();
                        stages.record_replied(received_us, *applied_us, stages.stamp());
                    }
                    outcome_reply(outcome, |id| state.redirect(id), &mut out);
                }
                Pending::Admin(rx) => {
                    if !out.is_empty() {
                        wr.write_all(&out).await?;
                        out.clear();
                    }
                    match rx.await {
                        Ok(reply) => out.extend_from_slice(&reply),
                        Err(_) => out.extend_from_slice(b"-ERR command aborted\r\n"),
                    }
                }
                Pending::Close => {
                    wr.write_all(&out).await?;
                    let _ = wr.shutdown().await;
                    return Ok(());
                }
            }
            next = rx.try_recv().ok();
        }
        if !out.is_empty() {
            wr.write_all(&out).await?;
            out.clear();
        }
    }
    Ok(())
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Leader => "leader",
        Role::Candidate => "candidate",
        Role::Follower => "follower",
    }
}

fn info_text(state: &ServerState, section: Option<&[u8]>) -> String {
    let s = state.replica.status();
    let mut text = String::with_capacity(512);
    if section.is_some_and(|sec| sec.eq_ignore_ascii_case(b"latency")) {
        return state.replica.stages().render();
    }
    let leader_addr = s.leader.and_then(|l| state.redirect(l)).unwrap_or_default();
    let _ = write!(
        text,
        "# Replication\r\nrole:{}\r\nid:{}\r\nleader_id:{}\r\nleader_addr:{}\r\nballot_round:{}\r\n\
         commit_index:{}\r\napplied_index:{}\r\nin_flight_decrees:{}\r\ncheckpoint_slot:{}\r\n\
         proposed_batches:{}\r\nproposed_requests:{}\r\n# Clients\r\nconnected_clients:{}\r\n",
        role_name(s.role),
        s.id.0,
        s.leader.map_or(0, |l| l.0),
        leader_addr,
        s.ballot_round,
        s.commit_index,
        s.applied_index,
        s.in_flight,
        s.checkpoint_slot,
        s.proposed_batches,
        s.proposed_requests,
        state.connected.load(Ordering::Relaxed),
    );
    crate::membership::write_info(&state.replica.cluster(), &mut text);
    text
}
