//! The RESP2 client front door over TCP.
//!
//! Each connection has a reader task and a writer task joined by a bounded
//! queue of pending replies, so replies leave in request order while many
//! requests of one connection are in consensus at once (pipelining). The
//! reader submits what it parsed from one socket read to the replica's
//! queues as it goes: the in-order requests together, and the reads that
//! skip the log (of one consistency) together, each as one unit of at
//! most [`crate::submit_unit::MAX_UNIT_REQUESTS`] requests and
//! [`crate::submit_unit::MAX_UNIT_BYTES`] bytes with one completion and one
//! message to the writer (`Gathered`); replies the reader produces itself
//! go one by one, in order with the units. The replica's loop drains the queue into batches, so requests
//! pipelined on one connection (and across connections) share decrees.
//!
//! Isolation: a malformed frame gets a RESP error and closes only that
//! connection (the framing is lost); a well-framed but bad command gets a
//! RESP error and the connection carries on. Connection count, pipelined
//! requests per connection and buffered bytes are bounded.
//!
//! Memory: the writer resolves replies as soon as they complete and counts
//! their bytes until the socket took them ([`crate::client_registry`]); the
//! reader takes no further request while its connection, or the node, is
//! over its reply limits, and a client that does not read its replies is
//! disconnected ([`crate::reply_limits`] has the policy). Replies leave by
//! vectored writes of the buffers they were built in ([`ReplyChain`]).
//!
//! Connections: `max_clients` ordinary slots, then a few operator-only
//! slots (see [`is_operator_command`]), then `-ERR max number of clients
//! reached`. A connection idle for the configured timeout, with no reply
//! outstanding, is closed.
//!
//! Writes go through the log ([`Replica::submit_in_order`]); reads (the commands
//! [`encode_command`] classifies as [`CommandKind::Read`]) skip it
//! ([`Replica::submit_reads`], or [`Replica::submit_in_order`] in a
//! pipeline that writes, see below): linearizable at the leader, or, on a
//! connection that sent `READONLY`, served by a follower from its own
//! state once it has applied every slot the connection observed (the
//! slot of each reply it got, writes' and reads' alike), so the client
//! never reads older state than it already saw.
//!
//! Order on one connection: requests pipelined on one connection take
//! effect in the order they were sent, as in Redis (`SET k v; GET k` reads
//! `v`, `GET k; SET k w` does not read `w`), although no read is written
//! to the log (`ConnOrder` keeps the counts):
//! - a read sent while a write of the connection (or a read behind one)
//!   is unanswered, or in a pipeline that has sent a write (until the
//!   connection has nothing in flight), goes in order with the writes
//!   ([`Replica::submit_in_order`]): through the same queue, into the
//!   batch the leader is filling, and is answered when that batch is
//!   applied, between the writes sent before it and those sent after it
//!   (`paxos_node::reads` has why that is linearizable); followers never
//!   see it;
//! - otherwise it skips the log ([`Replica::submit_reads`], with the other
//!   such reads of the same socket read), is confirmed
//!   by a heartbeat round (at once under a lease), and is answered from a
//!   state that includes every earlier request of the connection;
//! - a write sent while reads of the second kind are unanswered waits for
//!   them (the reader pauses for at most a heartbeat round trip), since
//!   such a read is answered from the state at the moment it is served,
//!   which must not include a later write.
//!
//! So unpipelined clients and read-only pipelines read without waiting
//! for a write, and a pipeline mixing reads and writes pays that wait at
//! most once per pipeline; its reads then cost a place in a batch, not a
//! log write.
//!
//! Writes, and reads without `READONLY`, on a follower are answered with
//! `-MOVED 0 <addr>` where `<addr>` is the leader's client address
//! (`-CLUSTERDOWN` if no leader is known); those requests were not
//! proposed. A request that was proposed
//! but whose fate is unknown (leadership changed) is answered with an
//! `-UNKNOWN ...` error: it may or may not have been applied.

use crate::client_registry::{ClientRegistry, ConnShared};
use crate::command::CommandKind;
use crate::config::Tuning;
use crate::kv::encode_command;
use crate::node::{error_reply, outcome_reply, ReadConsistency, Replica, Reply};
use crate::reply_chain::ReplyChain;
use crate::reply_limits::{self, OutputLimits, OutputVerdict};
use crate::resp::{self, RespLimits};
use crate::stages::Point;
use crate::submit_unit::{InOrderUnit, ReadUnit, UnitReplies};
use bytes::{Buf, Bytes, BytesMut};
use paxos_core::{ReplicaId, Role};
use paxos_node::RequestKind;
use paxos_pipeline::{AbortReason, CompletionHandle, Outcome};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};

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
    /// Operator slots, idle timeout and reply memory limits.
    pub clients: ClientLimits,
}

/// Connection and reply-memory limits (the `client_*` knobs of
/// [`Tuning`]; the policy is in [`crate::reply_limits`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientLimits {
    /// Operator-only connection slots beyond `max_clients`.
    pub admin_reserved: usize,
    /// Close a connection idle this long with no reply outstanding.
    pub idle_timeout: Option<Duration>,
    /// Per-client output limits.
    pub output: OutputLimits,
    /// Most unwritten reply bytes of all clients together.
    pub max_reply_bytes: usize,
}

impl ClientLimits {
    /// The limits a node's tuning asks for.
    pub fn from_tuning(t: &Tuning) -> ClientLimits {
        ClientLimits {
            admin_reserved: t.admin_reserved_clients,
            idle_timeout: (t.client_timeout_secs > 0)
                .then(|| Duration::from_secs(t.client_timeout_secs)),
            output: OutputLimits {
                hard_bytes: t.client_output_hard_limit_bytes,
                soft_bytes: t.client_output_soft_limit_bytes,
                soft_for: Duration::from_secs(t.client_output_soft_limit_secs),
            },
            max_reply_bytes: t.max_client_reply_bytes,
        }
    }
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits::from_tuning(&Tuning::default())
    }
}

/// What a client at the connection limit is told (Redis's text).
const MAX_CLIENTS_ERROR: &[u8] = b"-ERR max number of clients reached\r\n";

/// An operator-slot connection must send its first command within this
/// (the slots are few: one that sits idle must not hold one for long).
const OPERATOR_SLOT_IDLE: Duration = Duration::from_secs(10);

/// The commands a connection in an operator slot may send: the `PAXOS.*`
/// operator commands, the ones that look at a node, and the per-connection
/// ones a client sends when it connects (redis-cli asks `COMMAND DOCS`,
/// client libraries `HELLO`, `CLIENT SETNAME`, `SELECT`): none of them
/// reaches the log.
pub fn is_operator_command(name: &[u8]) -> bool {
    crate::admin::is_admin(name)
        || [
            &b"INFO"[..],
            b"PING",
            b"QUIT",
            b"COMMAND",
            b"HELLO",
            b"CLIENT",
            b"CONFIG",
            b"SELECT",
            b"ECHO",
        ]
        .iter()
        .any(|c| name.eq_ignore_ascii_case(c))
}

/// What a connection's reader and writer share about the order of its
/// requests (see the module docs). The reader counts a request up when it
/// submits it; the writer counts it down once its reply is produced.
#[derive(Debug, Default)]
struct ConnOrder {
    /// The highest slot whose state a reply on this connection reflected.
    observed: AtomicU64,
    /// Requests submitted in order with the writes (writes, and reads
    /// behind them) not answered.
    in_order: AtomicU64,
    /// Reads that skipped the log, not answered.
    off_log: AtomicU64,
    /// Signalled when `off_log` drops to zero.
    off_log_done: tokio::sync::Notify,
    /// The pipeline in flight has sent a write: its reads go in order with
    /// the writes until the connection has nothing in flight (the reader's
    /// alone).
    mixed: std::sync::atomic::AtomicBool,
}

/// Which way a submitted request went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    InOrder,
    OffLog,
}

/// A reply owed to the client, in request order.
enum Pending {
    Ready(Bytes),
    /// The replies of a unit of requests submitted together: in-order ones
    /// (writes, and reads behind them) awaiting consensus, or reads that
    /// skipped the log awaiting their confirmation. How many requests, the
    /// stage stamp of the first one's arrival, and the way they went.
    Unit(CompletionHandle<UnitReplies>, usize, u64, Route),
    /// The request joined one of the connection's [`Gathered`] units (never
    /// sent to the writer: the unit is, once submitted).
    Gathered,
    /// A read that skips the log but cannot join the gathered reads (their
    /// consistency differs): they are submitted first (never sent to the
    /// writer).
    HeldRead(Bytes, ReadConsistency, u64),
    /// A write that must wait for the connection's unanswered off-log reads
    /// before it is submitted (never sent to the writer).
    HeldWrite(Bytes, u64),
    /// An operator command running in its own task ([`crate::admin`]).
    Admin(tokio::sync::oneshot::Receiver<Bytes>),
    /// Flush what was written, then close (after a fatal protocol error or QUIT).
    Close,
}

/// Commands with at most this many arguments are handled without any
/// allocation for their argument list.
const INLINE_ARGS: usize = 8;

/// Requests a connection's reader parsed and has not submitted yet: what
/// one socket read brought goes to the node as one unit and to the writer
/// as one message, not one of each per request (see
/// [`crate::submit_unit`]). Its requests already count as in flight
/// (`ConnOrder::in_order` or `ConnOrder::off_log`, and
/// `ConnShared::unresolved`), so later requests route and wait for room as
/// if they were submitted; the reader therefore submits the units before
/// it waits for anything, before it sends the writer anything else, when a
/// unit is full, and once the read's commands are parsed.
///
/// At most one of the two units holds requests: a read skips the log only
/// when nothing of the connection is in order (`in_order` counts the
/// gathered unit), and a write behind unanswered off-log reads (which the
/// gathered reads are) is held until they are answered, after they are
/// submitted. So submitting both, in either order, keeps request order.
struct Gathered {
    /// Writes, and reads in order with them.
    unit: InOrderUnit,
    /// Stage stamp of the first request's arrival.
    received_us: u64,
    /// Reads that skip the log, all of `reads_consistency`.
    reads: ReadUnit,
    /// The consistency every gathered read is answered at.
    reads_consistency: ReadConsistency,
    /// Stage stamp of the first gathered read's arrival.
    reads_received_us: u64,
}

impl Default for Gathered {
    fn default() -> Self {
        Gathered {
            unit: InOrderUnit::new(),
            received_us: 0,
            reads: ReadUnit::new(),
            reads_consistency: ReadConsistency::Linearizable,
            reads_received_us: 0,
        }
    }
}

impl Gathered {
    /// Whether a unit must be submitted before another request joins it.
    fn is_full(&self) -> bool {
        self.unit.is_full() || self.reads.is_full()
    }
}

/// The consistency a unit of reads at `gathered` and a read at `next` can
/// share, if any: linearizable with linearizable, and at least the higher
/// of two slots (a read answered from a later state than its connection
/// asked for is still no older than anything the connection saw, and every
/// read of the unit is answered from one state, so their order holds).
fn shared_consistency(gathered: ReadConsistency, next: ReadConsistency) -> Option<ReadConsistency> {
    use ReadConsistency::{AtLeast, Linearizable};
    match (gathered, next) {
        (Linearizable, Linearizable) => Some(Linearizable),
        (AtLeast(a), AtLeast(b)) => Some(AtLeast(a.max(b))),
        _ => None,
    }
}

struct ServerState {
    replica: Replica,
    config: ServerConfig,
    registry: Arc<ClientRegistry>,
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
    let registry = Arc::new(ClientRegistry::new(config.clients.max_reply_bytes));
    serve_with_registry(listener, replica, config, registry).await
}

/// [`serve`] with a client registry the caller also reads (the metrics
/// endpoint); it must have been made with `config.clients.max_reply_bytes`.
pub async fn serve_with_registry(
    listener: TcpListener,
    replica: Replica,
    config: ServerConfig,
    registry: Arc<ClientRegistry>,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(config.max_clients));
    let operator_slots = Arc::new(Semaphore::new(config.clients.admin_reserved));
    // Ends with this future (the node aborts the server on shutdown).
    let _sweeper = AbortOnDrop(tokio::spawn(Arc::clone(&registry).sweep()));
    let state = Arc::new(ServerState {
        replica,
        config,
        registry,
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
        let slot = match Arc::clone(&permits).try_acquire_owned() {
            Ok(permit) => Some((permit, false)),
            Err(_) => Arc::clone(&operator_slots)
                .try_acquire_owned()
                .ok()
                .map(|permit| (permit, true)),
        };
        match slot {
            Some((permit, operator_only)) => {
                let state = Arc::clone(&state);
                tokio::spawn(async move {
                    let conn = state.registry.register(reply_limits::initial_largest(
                        state.config.clients.output.soft_bytes,
                    ));
                    handle_connection(socket, Arc::clone(&state), &conn, operator_only).await;
                    tracing::debug!(%peer, conn = conn.id, "client connection ended");
                    state.registry.unregister(&conn);
                    drop(permit);
                });
            }
            None => {
                state
                    .registry
                    .stats
                    .rejected
                    .fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(1),
                        socket.write_all(MAX_CLIENTS_ERROR),
                    )
                    .await;
                });
            }
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Resolves once `closed` holds true.
async fn closed(closed: &mut watch::Receiver<bool>) {
    // An error means the sender is gone, which only happens with the
    // connection: closed as well.
    let _ = closed.wait_for(|&c| c).await;
}

/// Whether the connection is under its own limits: unwritten reply bytes
/// and requests awaiting replies (see the module docs).
fn conn_has_room(state: &ServerState, conn: &ConnShared) -> bool {
    let output = &state.config.clients.output;
    let window = reply_limits::pipelining_window(
        output.soft_bytes,
        conn.recent_largest_reply.load(Ordering::Relaxed),
        state.config.max_pipelined,
    );
    output.may_read(conn.unwritten.load(Ordering::Relaxed))
        && conn.unresolved.load(Ordering::Relaxed) < window
}

/// Whether the connection may take another request now, without waiting.
fn has_room(state: &ServerState, conn: &ConnShared) -> bool {
    conn_has_room(state, conn) && !state.registry.over_limit()
}

/// Waits until the connection may take another request (see the module
/// docs); false if it was closed meanwhile.
async fn wait_for_room(
    state: &ServerState,
    conn: &ConnShared,
    closed_rx: &mut watch::Receiver<bool>,
) -> bool {
    loop {
        let conn_ok = conn_has_room(state, conn);
        if conn_ok && !state.registry.over_limit() {
            // A closed connection is noticed by the next send or read.
            return true;
        }
        if *closed_rx.borrow() {
            return false;
        }
        if !conn_ok {
            tokio::select! {
                _ = conn.wake.notified() => {}
                _ = closed(closed_rx) => return false,
            }
        } else {
            tokio::select! {
                _ = state.registry.wait_below_limit() => {}
                _ = closed(closed_rx) => return false,
            }
        }
    }
}

async fn handle_connection(
    socket: TcpStream,
    state: Arc<ServerState>,
    conn: &Arc<ConnShared>,
    operator_only: bool,
) {
    let (mut rd, wr) = socket.into_split();
    let (tx, rx) = mpsc::channel::<Pending>(state.config.max_pipelined);
    let mut closed_rx = conn.closed.subscribe();
    let order = Arc::new(ConnOrder::default());
    let writer = tokio::spawn(write_replies(
        wr,
        rx,
        Arc::clone(&state),
        Arc::clone(conn),
        Arc::clone(&order),
    ));
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut scratch = BytesMut::with_capacity(16 * 1024);
    let mut ranges = Vec::with_capacity(INLINE_ARGS);
    let mut session = crate::session::Session::new();
    let mut gathered = Gathered::default();
    let limits = state.config.limits;
    let idle_timeout = if operator_only {
        Some(
            state
                .config
                .clients
                .idle_timeout
                .map_or(OPERATOR_SLOT_IDLE, |t| t.min(OPERATOR_SLOT_IDLE)),
        )
    } else {
        state.config.clients.idle_timeout
    };
    // One timer per connection, moved only when it fires: a read just
    // notes the time (no timer work per read).
    let idle_timer = tokio::time::sleep(idle_timeout.unwrap_or(Duration::MAX / 4));
    tokio::pin!(idle_timer);
    let mut last_read = Instant::now();
    'read: loop {
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
        let n = tokio::select! {
            r = rd.read_buf(&mut buf) => match r {
                Ok(n) => n,
                Err(e) => {
                    // Reset: nobody will read the replies either. (Not `?`:
                    // the connection is unregistered only after its writer
                    // ended, or its bytes would leave the total twice.)
                    tracing::debug!(conn = conn.id, error = %e, "client read failed");
                    conn.close();
                    break 'read;
                }
            },
            _ = closed(&mut closed_rx) => break 'read,
            () = &mut idle_timer, if idle_timeout.is_some() => {
                let timeout = idle_timeout.unwrap_or(Duration::MAX / 4);
                let now = Instant::now();
                // Idle: nothing read and no reply taken by the socket for
                // the timeout (a client that stopped reading its replies is
                // idle too, as in Redis), unless a request of it is still
                // in the node's hands.
                let idle_until = last_read.max(conn.last_write_progress()) + timeout;
                if now < idle_until || conn.awaits_the_node() {
                    idle_timer.as_mut().reset(idle_until.max(now + timeout / 8).into());
                    continue 'read;
                }
                state.registry.stats.idle_disconnects.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(conn = conn.id, "closing an idle client connection");
                break 'read;
            }
        };
        last_read = Instant::now();
        if n == 0 {
            break;
        }
        loop {
            match resp::parse_command(&buf, &limits, &mut ranges) {
                Ok(None) => {
                    // The read's commands are parsed: what they gathered
                    // goes now, before the reader waits for the socket.
                    if !submit_gathered(&mut gathered, &state, conn, &order, &tx).await {
                        break 'read;
                    }
                    break;
                }
                Ok(Some(command)) => {
                    // Backpressure: no new request while this client's (or
                    // every client's) unwritten replies are over the limit.
                    // The gathered requests count against the room: they go
                    // first, or nothing would free it.
                    if !has_room(&state, conn)
                        && (!submit_gathered(&mut gathered, &state, conn, &order, &tx).await
                            || !wait_for_room(&state, conn, &mut closed_rx).await)
                    {
                        break 'read;
                    }
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
                            if operator_only && !is_operator_command(args[0]) {
                                // An ordinary client in an operator slot:
                                // what it would have heard at the door.
                                let refusal = Bytes::from_static(MAX_CLIENTS_ERROR);
                                let _ =
                                    submit_gathered(&mut gathered, &state, conn, &order, &tx).await;
                                state.registry.add(conn, refusal.len());
                                let _ = tx.send(Pending::Ready(refusal)).await;
                                let _ = tx.send(Pending::Close).await;
                                break 'read;
                            }
                            (
                                execute(
                                    args,
                                    &state,
                                    &mut scratch,
                                    received_us,
                                    &mut session,
                                    &order,
                                    Gathering {
                                        gathered: &mut gathered,
                                        conn,
                                    },
                                ),
                                len,
                            )
                        }
                    };
                    buf.advance(len);
                    let pending = match pending {
                        Pending::HeldWrite(request, received_us) => {
                            // Nothing is gathered behind an unanswered
                            // off-log read (`execute` routes in order only
                            // once those are answered); submitting first
                            // keeps that true whatever the routing.
                            if !submit_gathered(&mut gathered, &state, conn, &order, &tx).await
                                || !reads_answered(&order, &mut closed_rx).await
                            {
                                break 'read;
                            }
                            gather(
                                Gathering {
                                    gathered: &mut gathered,
                                    conn,
                                },
                                request,
                                RequestKind::Write,
                                received_us,
                                &order,
                            )
                        }
                        Pending::HeldRead(request, consistency, received_us) => {
                            if !submit_gathered(&mut gathered, &state, conn, &order, &tx).await {
                                break 'read;
                            }
                            gather_read(
                                Gathering {
                                    gathered: &mut gathered,
                                    conn,
                                },
                                request,
                                consistency,
                                received_us,
                                &order,
                            )
                        }
                        other => other,
                    };
                    if matches!(pending, Pending::Gathered) {
                        if gathered.is_full()
                            && !submit_gathered(&mut gathered, &state, conn, &order, &tx).await
                        {
                            break 'read;
                        }
                        continue;
                    }
                    // Replies go to the writer in request order: the
                    // gathered requests came first.
                    if !submit_gathered(&mut gathered, &state, conn, &order, &tx).await {
                        break 'read;
                    }
                    // Produced replies count from now; the others once the
                    // writer has them.
                    match &pending {
                        Pending::Ready(b) => state.registry.add(conn, b.len()),
                        Pending::Admin(_) => {
                            conn.unresolved.fetch_add(1, Ordering::Relaxed);
                        }
                        Pending::Unit(..)
                        | Pending::Gathered
                        | Pending::HeldWrite(..)
                        | Pending::HeldRead(..)
                        | Pending::Close => {}
                    }
                    let close = matches!(pending, Pending::Close);
                    if tx.send(pending).await.is_err() || close {
                        break 'read;
                    }
                }
                Err(e) => {
                    let reply = error_bytes(e.to_string().as_bytes());
                    let _ = submit_gathered(&mut gathered, &state, conn, &order, &tx).await;
                    state.registry.add(conn, reply.len());
                    let _ = tx.send(Pending::Ready(reply)).await;
                    let _ = tx.send(Pending::Close).await;
                    break 'read;
                }
            }
        }
    }
    drop(tx);
    // Every exit path comes here: the connection is unregistered (and its
    // bytes leave the total) only once the writer is done with them.
    let _ = writer.await;
}

fn error_bytes(text: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(text.len() + 3);
    resp::write_error(&mut out, text);
    out.freeze()
}

/// Where `execute` puts an in-order request: the reader's unit, and the
/// connection whose in-flight count it joins.
struct Gathering<'a> {
    gathered: &'a mut Gathered,
    conn: &'a ConnShared,
}

fn execute(
    args: &[&[u8]],
    state: &ServerState,
    scratch: &mut BytesMut,
    received_us: u64,
    session: &mut crate::session::Session,
    order: &ConnOrder,
    gathering: Gathering<'_>,
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
        Ok(kind) => {
            let request = scratch.split().freeze();
            let in_order = order.in_order.load(Ordering::Acquire);
            let off_log = order.off_log.load(Ordering::Acquire);
            if in_order == 0 && off_log == 0 {
                // Nothing of this connection in flight: a new pipeline.
                order.mixed.store(false, Ordering::Relaxed);
            }
            match kind {
                CommandKind::Write if off_log > 0 => {
                    order.mixed.store(true, Ordering::Relaxed);
                    Pending::HeldWrite(request, received_us)
                }
                CommandKind::Write => {
                    // Even if the unit is then refused (overload, not the
                    // leader): reads behind it going in order is always
                    // correct, and the mark lasts only while the connection
                    // has something in flight.
                    order.mixed.store(true, Ordering::Relaxed);
                    gather(gathering, request, RequestKind::Write, received_us, order)
                }
                // Behind a request in the log, or in a pipeline that mixes
                // reads and writes: in order with the writes (answered at its
                // place in a batch, not written to the log).
                CommandKind::Read if in_order > 0 || order.mixed.load(Ordering::Relaxed) => {
                    gather(gathering, request, RequestKind::Read, received_us, order)
                }
                // Skips the log: joins the connection's gathered reads when
                // it can share their consistency (the in-order unit is empty
                // here: `in_order` counts it).
                CommandKind::Read => {
                    let consistency = read_consistency(
                        state.replica.is_primary(),
                        session.readonly(),
                        order.observed.load(Ordering::Acquire),
                    );
                    let joinable = gathering.gathered.reads.is_empty()
                        || shared_consistency(gathering.gathered.reads_consistency, consistency)
                            .is_some();
                    if joinable {
                        gather_read(gathering, request, consistency, received_us, order)
                    } else {
                        Pending::HeldRead(request, consistency, received_us)
                    }
                }
            }
        }
        Err(e) => Pending::Ready(error_bytes(e.to_string().as_bytes())),
    }
}

/// Adds a request to the connection's gathered unit, in order with its
/// writes (a write, or a read that must stay in order behind one), and
/// counts it in flight from now (see [`Gathered`]).
fn gather(
    gathering: Gathering<'_>,
    request: Bytes,
    kind: RequestKind,
    received_us: u64,
    order: &ConnOrder,
) -> Pending {
    let Gathering { gathered, conn } = gathering;
    if gathered.unit.is_empty() {
        gathered.received_us = received_us;
    }
    gathered.unit.push(request, kind);
    order.in_order.fetch_add(1, Ordering::Relaxed);
    conn.unresolved.fetch_add(1, Ordering::Relaxed);
    Pending::Gathered
}

/// Adds a read that skips the log to the connection's gathered reads (the
/// caller checked that it can share their consistency, or that there are
/// none), and counts it in flight from now (see [`Gathered`]).
fn gather_read(
    gathering: Gathering<'_>,
    request: Bytes,
    consistency: ReadConsistency,
    received_us: u64,
    order: &ConnOrder,
) -> Pending {
    let Gathering { gathered, conn } = gathering;
    if gathered.reads.is_empty() {
        gathered.reads_received_us = received_us;
        gathered.reads_consistency = consistency;
    } else {
        gathered.reads_consistency =
            shared_consistency(gathered.reads_consistency, consistency).unwrap_or(consistency);
    }
    gathered.reads.push(request, ());
    order.off_log.fetch_add(1, Ordering::Relaxed);
    conn.unresolved.fetch_add(1, Ordering::Relaxed);
    Pending::Gathered
}

/// Submits the gathered units, if any, and hands the writer what it owes
/// the client for them; false if the writer is gone.
async fn submit_gathered(
    gathered: &mut Gathered,
    state: &ServerState,
    conn: &ConnShared,
    order: &ConnOrder,
    tx: &mpsc::Sender<Pending>,
) -> bool {
    debug_assert!(
        gathered.unit.is_empty() || gathered.reads.is_empty(),
        "in-order requests and off-log reads gathered together"
    );
    if !gathered.unit.is_empty() {
        let pending = submit_unit(
            gathered.unit.take(),
            gathered.received_us,
            state,
            conn,
            order,
        );
        if tx.send(pending).await.is_err() {
            return false;
        }
    }
    if !gathered.reads.is_empty() {
        let pending = submit_read_unit(
            gathered.reads.take(),
            gathered.reads_consistency,
            gathered.reads_received_us,
            state,
            conn,
            order,
        );
        if tx.send(pending).await.is_err() {
            return false;
        }
    }
    true
}

/// Records each of `count` requests' arrival stage, now that they are
/// submitted.
fn record_received(state: &ServerState, count: usize, received_us: u64) {
    let stages = state.replica.stages();
    stages.record_n(Point::Received, received_us, stages.stamp(), count as u64);
}

/// One buffer holding `count` copies of the error reply for `e` (a refused
/// unit's replies, in order), counted against the connection's reply bytes.
fn refused_unit_replies(
    e: &crate::node::ReplicateError,
    count: usize,
    state: &ServerState,
    conn: &ConnShared,
) -> Pending {
    let reply = replicate_error_bytes(e, state);
    let mut replies = BytesMut::with_capacity(reply.len() * count);
    for _ in 0..count {
        replies.extend_from_slice(&reply);
    }
    let replies = replies.freeze();
    state.registry.add(conn, replies.len());
    Pending::Ready(replies)
}

/// Submits a unit of reads that skip the log. Refused (overload, a
/// linearizable unit off the leader, shutting down), each of its reads is
/// answered with the error, and none counts as in flight any more.
fn submit_read_unit(
    unit: ReadUnit,
    consistency: ReadConsistency,
    received_us: u64,
    state: &ServerState,
    conn: &ConnShared,
    order: &ConnOrder,
) -> Pending {
    let count = unit.len();
    match state.replica.submit_reads(unit, consistency) {
        Ok(handle) => {
            record_received(state, count, received_us);
            Pending::Unit(handle, count, received_us, Route::OffLog)
        }
        Err(e) => {
            // Answered now: a write held behind them may go.
            if order.off_log.fetch_sub(count as u64, Ordering::Release) == count as u64 {
                order.off_log_done.notify_one();
            }
            conn.unresolved.fetch_sub(count, Ordering::Relaxed);
            refused_unit_replies(&e, count, state, conn)
        }
    }
}

/// Submits a unit of in-order requests. Refused (overload, not the
/// leader, shutting down), each of its requests is answered with the
/// error, and none counts as in flight any more.
fn submit_unit(
    unit: InOrderUnit,
    received_us: u64,
    state: &ServerState,
    conn: &ConnShared,
    order: &ConnOrder,
) -> Pending {
    let count = unit.len();
    match state.replica.submit_in_order(unit) {
        Ok(handle) => {
            record_received(state, count, received_us);
            Pending::Unit(handle, count, received_us, Route::InOrder)
        }
        Err(e) => {
            order.in_order.fetch_sub(count as u64, Ordering::Release);
            conn.unresolved.fetch_sub(count, Ordering::Relaxed);
            refused_unit_replies(&e, count, state, conn)
        }
    }
}

/// Waits until the connection's off-log reads are all answered; false if
/// the connection closed meanwhile.
async fn reads_answered(order: &ConnOrder, closed_rx: &mut watch::Receiver<bool>) -> bool {
    loop {
        let notified = order.off_log_done.notified();
        tokio::pin!(notified);
        // Registered before the check, so a wake-up in between is kept.
        notified.as_mut().enable();
        if order.off_log.load(Ordering::Acquire) == 0 {
            return true;
        }
        tokio::select! {
            () = notified => {}
            _ = closed(closed_rx) => return false,
        }
    }
}

fn replicate_error_bytes(e: &crate::node::ReplicateError, state: &ServerState) -> Bytes {
    let mut out = BytesMut::new();
    error_reply(e, |id| state.redirect(id), &mut out);
    out.freeze()
}

/// How fresh a read must be: linearizable at the leader (whatever the
/// connection asked: the leader's own state is the freshest), at least the
/// connection's observed slot on a follower when it sent `READONLY`;
/// otherwise linearizable, which a follower refuses with a redirect.
fn read_consistency(is_primary: bool, readonly: bool, observed: u64) -> ReadConsistency {
    if readonly && !is_primary {
        ReadConsistency::AtLeast(paxos_core::Slot(observed))
    } else {
        ReadConsistency::Linearizable
    }
}

/// What the writer does next.
enum WriterStep {
    /// A reply the reader already counted (`Pending::Ready`).
    Counted(Bytes),
    /// A reply just produced (counted now).
    Produced(Bytes),
    /// The outcome of a unit of this many requests (each reply counted
    /// now), with the stage stamp of its arrival and the way it went.
    Unit(Outcome<UnitReplies>, usize, u64, Route),
    /// `Pending::Close`, or the reader is gone: write what is left, then end.
    Finish,
    /// The socket took this many bytes (or failed).
    Wrote(std::io::Result<usize>),
    /// The soft-limit period ran out: judge the connection again.
    Recheck,
    /// The connection was closed by the reader or the sweeper.
    Closed,
}

/// Takes the next reply in request order, waiting for it to be produced.
/// Cancel-safe: a reply being waited for stays in `head`.
async fn next_reply(head: &mut Option<Pending>, rx: &mut mpsc::Receiver<Pending>) -> WriterStep {
    if head.is_none() {
        match rx.recv().await {
            Some(p) => *head = Some(p),
            None => return WriterStep::Finish,
        }
    }
    let step = match head.as_mut() {
        Some(Pending::Ready(b)) => WriterStep::Counted(std::mem::take(b)),
        Some(Pending::Unit(handle, count, received_us, route)) => {
            WriterStep::Unit(handle.await, *count, *received_us, *route)
        }
        Some(Pending::Admin(rx)) => {
            WriterStep::Produced(rx.await.unwrap_or(Bytes::from_static(ADMIN_ABORTED)))
        }
        Some(
            Pending::Close | Pending::HeldWrite(..) | Pending::HeldRead(..) | Pending::Gathered,
        )
        | None => WriterStep::Finish,
    };
    *head = None;
    step
}

/// [`next_reply`] without waiting: None if the next reply is not produced
/// yet (or none was sent).
fn try_next_reply(
    head: &mut Option<Pending>,
    rx: &mut mpsc::Receiver<Pending>,
) -> Option<WriterStep> {
    if head.is_none() {
        match rx.try_recv() {
            Ok(p) => *head = Some(p),
            Err(mpsc::error::TryRecvError::Empty) => return None,
            Err(mpsc::error::TryRecvError::Disconnected) => return Some(WriterStep::Finish),
        }
    }
    let step = match head.as_mut()? {
        Pending::Ready(b) => WriterStep::Counted(std::mem::take(b)),
        Pending::Unit(handle, count, received_us, route) => {
            WriterStep::Unit(handle.try_take()?, *count, *received_us, *route)
        }
        Pending::Admin(rx) => WriterStep::Produced(match rx.try_recv() {
            Ok(reply) => reply,
            Err(tokio::sync::oneshot::error::TryRecvError::Empty) => return None,
            Err(tokio::sync::oneshot::error::TryRecvError::Closed) => {
                Bytes::from_static(ADMIN_ABORTED)
            }
        }),
        Pending::Close | Pending::HeldWrite(..) | Pending::HeldRead(..) | Pending::Gathered => {
            WriterStep::Finish
        }
    };
    *head = None;
    Some(step)
}

/// The reply to an operator command whose task went away.
const ADMIN_ABORTED: &[u8] = b"-ERR command aborted\r\n";

/// The reply bytes of a request's outcome. Raises the connection's
/// observed slot to the one the reply reflects, then counts the request
/// answered ([`ConnOrder`]).
fn outcome_bytes(
    outcome: paxos_pipeline::Outcome<Reply>,
    received_us: u64,
    route: Route,
    state: &ServerState,
    order: &ConnOrder,
) -> Bytes {
    if let paxos_pipeline::Outcome::Completed(reply) = &outcome {
        order.observed.fetch_max(reply.slot.0, Ordering::Release);
    }
    match route {
        Route::InOrder => {
            order.in_order.fetch_sub(1, Ordering::Release);
        }
        Route::OffLog => {
            if order.off_log.fetch_sub(1, Ordering::Release) == 1 {
                order.off_log_done.notify_one();
            }
        }
    }
    match outcome {
        // The state machine's buffer itself: no copy.
        paxos_pipeline::Outcome::Completed(reply) => {
            let stages = state.replica.stages();
            stages.record_replied(received_us, reply.applied_us, stages.stamp());
            reply.bytes
        }
        aborted => {
            let mut out = BytesMut::new();
            outcome_reply(aborted, |id| state.redirect(id), &mut out);
            out.freeze()
        }
    }
}

/// The reply bytes of each of a unit's `count` requests, in order, to
/// `reply` ([`outcome_bytes`] for each). A unit aborted as a whole (shut
/// down with the queue, or its completer dropped) gives each request that
/// abort.
fn unit_replies(
    outcome: Outcome<UnitReplies>,
    count: usize,
    received_us: u64,
    route: Route,
    state: &ServerState,
    order: &ConnOrder,
    mut reply: impl FnMut(Bytes),
) {
    match outcome {
        Outcome::Completed(replies) => {
            // The loop gives one outcome per request; should it ever give
            // fewer, the rest are still answered (and counted answered).
            let mut replies = replies.into_iter();
            for _ in 0..count {
                let outcome = replies
                    .next()
                    .unwrap_or(Outcome::Aborted(AbortReason::Dropped));
                reply(outcome_bytes(outcome, received_us, route, state, order));
            }
        }
        Outcome::Aborted(reason) => {
            for _ in 0..count {
                let outcome = Outcome::Aborted(reason.clone());
                reply(outcome_bytes(outcome, received_us, route, state, order));
            }
        }
    }
}

/// Unwritten bytes past which the writer writes before gathering more.
const FLUSH_AT: usize = 256 * 1024;

/// Sleeps until `at`, or forever if there is none.
async fn sleep_until_or_never(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Writes a connection's replies in request order. It takes each reply as
/// soon as it is produced, while earlier ones are still being written, so
/// that every reply the node holds for the client is counted; it enforces
/// the client's output limits and ends the connection past them.
async fn write_replies(
    mut wr: tokio::net::tcp::OwnedWriteHalf,
    mut rx: mpsc::Receiver<Pending>,
    state: Arc<ServerState>,
    conn: Arc<ConnShared>,
    order: Arc<ConnOrder>,
) {
    let limits = state.config.clients.output;
    let idle_timeout = state.config.clients.idle_timeout;
    let registry = &state.registry;
    let mut closed_rx = conn.closed.subscribe();
    let mut chain = ReplyChain::new();
    let mut head: Option<Pending> = None;
    let mut finishing = false;
    let mut over_soft_since = None;
    let mut recheck_at: Option<Instant> = None;
    let mut largest = conn.recent_largest_reply.load(Ordering::Relaxed);
    'write: loop {
        if finishing && chain.is_empty() {
            let _ = wr.shutdown().await;
            break;
        }
        // Once the reader is gone nothing else times the connection out:
        // the last replies get the idle timeout to leave.
        let flush_by = idle_timeout
            .filter(|_| finishing)
            .map(|t| conn.last_write_progress() + t);
        if flush_by.is_some_and(|at| Instant::now() >= at) {
            break 'write;
        }
        let wake_at = match (recheck_at, flush_by) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // Replies already produced are gathered before a write (a decree
        // completes many requests of a pipelining client at once: one
        // write for all of them, not one each), up to FLUSH_AT bytes; past
        // that the write comes first. Both branches stay live either way,
        // so a socket that takes nothing never stops the counting.
        let step = if chain.len() < FLUSH_AT {
            tokio::select! {
                biased;
                _ = closed(&mut closed_rx) => WriterStep::Closed,
                step = next_reply(&mut head, &mut rx), if !finishing => step,
                r = chain.write_to(&mut wr), if !chain.is_empty() => WriterStep::Wrote(r),
                _ = sleep_until_or_never(wake_at) => WriterStep::Recheck,
            }
        } else {
            tokio::select! {
                biased;
                _ = closed(&mut closed_rx) => WriterStep::Closed,
                r = chain.write_to(&mut wr) => WriterStep::Wrote(r),
                step = next_reply(&mut head, &mut rx), if !finishing => step,
                _ = sleep_until_or_never(wake_at) => WriterStep::Recheck,
            }
        };
        // Take this step, and then every reply already produced behind it
        // without going round the select (one decree completes many), and
        // account for them at once.
        let (mut produced, mut produced_bytes) = (0, 0);
        let mut step = Some(step);
        while let Some(this) = step.take() {
            match this {
                WriterStep::Counted(b) => chain.push(b),
                WriterStep::Produced(b) => {
                    largest = reply_limits::decayed_largest(largest, b.len());
                    produced += 1;
                    produced_bytes += b.len();
                    chain.push(b);
                }
                WriterStep::Unit(outcome, count, received_us, route) => {
                    unit_replies(outcome, count, received_us, route, &state, &order, |b| {
                        largest = reply_limits::decayed_largest(largest, b.len());
                        produced += 1;
                        produced_bytes += b.len();
                        chain.push(b);
                    });
                }
                WriterStep::Finish => finishing = true,
                WriterStep::Wrote(Ok(n)) => {
                    registry.written(&conn, n);
                    conn.note_write_progress();
                    conn.wake.notify_one();
                }
                WriterStep::Wrote(Err(e)) => {
                    tracing::debug!(conn = conn.id, error = %e, "client write failed");
                    break 'write;
                }
                WriterStep::Recheck => {}
                WriterStep::Closed => break 'write,
            }
            if (produced > 0 || !chain.is_empty()) && !finishing && chain.len() < FLUSH_AT {
                step = try_next_reply(&mut head, &mut rx);
            }
        }
        if produced > 0 {
            conn.recent_largest_reply.store(largest, Ordering::Relaxed);
            registry.add(&conn, produced_bytes);
            conn.unresolved.fetch_sub(produced, Ordering::Relaxed);
            conn.wake.notify_one();
        }
        match limits.check(
            conn.unwritten.load(Ordering::Relaxed),
            &mut over_soft_since,
            Instant::now,
        ) {
            OutputVerdict::Keep { recheck_at: at } => recheck_at = at,
            OutputVerdict::Disconnect(which) => {
                registry
                    .stats
                    .output_limit_disconnects
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    conn = conn.id,
                    unwritten = conn.unwritten.load(Ordering::Relaxed),
                    limit = ?which,
                    "disconnecting a client that does not read its replies (client output limit)"
                );
                break 'write;
            }
        }
    }
    // Wakes the reader if it waits; what is unwritten leaves the total when
    // the connection is unregistered.
    conn.close();
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
    let stats = &state.registry.stats;
    let _ = write!(
        text,
        "# Replication\r\nrole:{}\r\nid:{}\r\nleader_id:{}\r\nleader_addr:{}\r\nballot_round:{}\r\n\
         commit_index:{}\r\napplied_index:{}\r\nin_flight_decrees:{}\r\ncheckpoint_slot:{}\r\n\
         proposed_batches:{}\r\nproposed_requests:{}\r\nread_mode:{}\r\nreads_served:{}\r\n\
         pending_reads:{}\r\n# Clients\r\nconnected_clients:{}\r\n\
         maxclients:{}\r\nadmin_reserved_clients:{}\r\nrejected_connections:{}\r\n\
         client_reply_bytes:{}\r\nmax_client_reply_bytes:{}\r\nclient_output_limit_disconnects:{}\r\n\
         client_reply_memory_disconnects:{}\r\nclient_idle_disconnects:{}\r\nclient_heap_trims:{}\r\n",
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
        s.read_mode,
        s.reads_served,
        s.pending_reads,
        state.registry.len(),
        state.config.max_clients,
        state.config.clients.admin_reserved,
        stats.rejected.load(Ordering::Relaxed),
        state.registry.total_unwritten(),
        state.registry.reply_limit,
        stats.output_limit_disconnects.load(Ordering::Relaxed),
        stats.memory_shed_disconnects.load(Ordering::Relaxed),
        stats.idle_disconnects.load(Ordering::Relaxed),
        stats.heap_trims.load(Ordering::Relaxed),
    );
    let cluster = state.replica.cluster();
    write_replicas(&s, &cluster, |id| state.redirect(id), &mut text);
    crate::membership::write_info(&cluster, &mut text);
    text
}

/// INFO's `# Replicas`: where a `READONLY` client can read and how fresh
/// each replica is, as this node knows it. `replicas:<n>` counts the lines
/// that follow, `replica0` (`self=1`) first: this node, exact (its own
/// applied and commit index, `last_contact_ms=0`). Then one line per peer
/// with what this node last heard from it, `last_contact_ms` ago: the
/// leader hears every peer's applied and commit index on its heartbeat
/// acks; a follower hears only the leader's commit index (its `applied`
/// is `-1`, unknown). `-1` is "never heard". Reported slots are the
/// highest heard, so a replica that restarted since may be briefly below
/// them while it replays its log; a `READONLY` read there waits for the
/// slot it asks for anyway.
fn write_replicas(
    me: &crate::node::NodeStatus,
    cluster: &paxos_node::ClusterView,
    client_addr: impl Fn(ReplicaId) -> Option<String>,
    text: &mut String,
) {
    let addr = |id| client_addr(id).unwrap_or_else(|| "?".to_string());
    let _ = write!(
        text,
        "# Replicas\r\nreplicas:{}\r\nreplica0:id={},self=1,role={},addr={},applied={},commit_index={},last_contact_ms=0\r\n",
        cluster.peers.len() + 1,
        me.id.0,
        role_name(me.role),
        addr(me.id),
        me.applied_index,
        me.commit_index,
    );
    let opt = |v: Option<u64>| v.map_or("-1".to_string(), |v| v.to_string());
    for (n, p) in cluster.peers.iter().enumerate() {
        let role = if me.leader == Some(p.id) {
            "leader"
        } else if p.voter {
            "follower"
        } else {
            "learner"
        };
        let _ = write!(
            text,
            "replica{}:id={},self=0,role={role},addr={},applied={},commit_index={},last_contact_ms={}\r\n",
            n + 1,
            p.id.0,
            addr(p.id),
            opt(p.applied_index.map(|s| s.0)),
            opt(p.commit_index.map(|c| c.0)),
            opt(p.last_heard_us_ago.map(|us| us / 1000)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use paxos_core::Slot;

    /// A follower's `# Replicas`: its own line exact, the leader's with the
    /// commit index it heard and no applied index (only acks carry one),
    /// a peer never heard from all `-1`; parseable like Redis INFO.
    #[test]
    fn info_replicas_lists_each_replicas_applied_slot_as_known_here() {
        use paxos_core::{PeerStatus, ReplicaId, Role};
        let me = crate::node::NodeStatus {
            id: ReplicaId(2),
            role: Role::Follower,
            leader: Some(ReplicaId(1)),
            ballot_round: 3,
            commit_index: Slot(2210),
            applied_index: Slot(2207),
            in_flight: 0,
            checkpoint_slot: Slot(0),
            proposed_batches: 0,
            proposed_requests: 0,
            checkpoints_saved: 0,
            checkpoints_installed: 0,
            needs_snapshot: false,
            role_changes: 0,
            leader_changes: 0,
            read_mode: "read_index",
            pending_reads: 0,
            reads_served: 0,
            log_full: false,
            accepts_refused_log_full: 0,
            fetches_served_from_disk: 0,
        };
        let peer =
            |id, applied: Option<u64>, commit: Option<u64>, ago_us: Option<u64>| PeerStatus {
                id: ReplicaId(id),
                voter: true,
                commit_index: commit.map(Slot),
                applied_index: applied.map(Slot),
                lag: None,
                last_heard_us_ago: ago_us,
                connected: ago_us.is_some(),
                can_become_primary: true,
            };
        let cluster = paxos_node::ClusterView {
            peers: vec![
                peer(1, None, Some(2210), Some(12_400)),
                peer(3, Some(2209), Some(2209), None),
                peer(4, None, None, None),
            ],
            ..Default::default()
        };
        let mut text = String::new();
        write_replicas(
            &me,
            &cluster,
            |id| (id.0 != 4).then(|| format!("127.0.0.1:600{}", id.0)),
            &mut text,
        );
        assert_eq!(
            text,
            "# Replicas\r\nreplicas:4\r\n\
             replica0:id=2,self=1,role=follower,addr=127.0.0.1:6002,applied=2207,commit_index=2210,last_contact_ms=0\r\n\
             replica1:id=1,self=0,role=leader,addr=127.0.0.1:6001,applied=-1,commit_index=2210,last_contact_ms=12\r\n\
             replica2:id=3,self=0,role=follower,addr=127.0.0.1:6003,applied=2209,commit_index=2209,last_contact_ms=-1\r\n\
             replica3:id=4,self=0,role=follower,addr=?,applied=-1,commit_index=-1,last_contact_ms=-1\r\n"
        );
        let line = crate::client::info_field(&text, "replica2").unwrap();
        assert_eq!(
            line.split(',').find_map(|f| f.strip_prefix("applied=")),
            Some("2209")
        );
    }

    #[test]
    fn reads_share_a_unit_only_at_a_consistency_that_serves_each() {
        use ReadConsistency::{AtLeast, Linearizable};
        assert_eq!(
            shared_consistency(Linearizable, Linearizable),
            Some(Linearizable)
        );
        assert_eq!(
            shared_consistency(AtLeast(Slot(3)), AtLeast(Slot(8))),
            Some(AtLeast(Slot(8))),
            "the higher observed slot serves the earlier read too"
        );
        assert_eq!(
            shared_consistency(AtLeast(Slot(8)), AtLeast(Slot(3))),
            Some(AtLeast(Slot(8)))
        );
        assert_eq!(shared_consistency(Linearizable, AtLeast(Slot(1))), None);
        assert_eq!(shared_consistency(AtLeast(Slot(1)), Linearizable), None);
    }

    #[test]
    fn only_a_readonly_connection_to_a_follower_reads_locally() {
        use ReadConsistency::{AtLeast, Linearizable};
        // (is_primary, readonly, observed) -> consistency
        assert_eq!(read_consistency(true, false, 7), Linearizable);
        assert_eq!(
            read_consistency(true, true, 7),
            Linearizable,
            "the leader's reads are linearizable even for READONLY clients"
        );
        assert_eq!(
            read_consistency(false, false, 7),
            Linearizable,
            "without READONLY a follower redirects (linearizable is refused there)"
        );
        assert_eq!(read_consistency(false, true, 7), AtLeast(Slot(7)));
        assert_eq!(read_consistency(false, true, 0), AtLeast(Slot(0)));
    }
}
