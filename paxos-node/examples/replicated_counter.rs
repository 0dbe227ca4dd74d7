//! A replicated counter: your own state machine on a three-replica cluster,
//! in one process, built from paxos-node and the I/O crates only.
//!
//! ```text
//! cargo run -p paxos-node --example replicated_counter
//! ```
//!
//! - **The application** ([`Counter`]) implements paxos-node's
//!   `StateMachine`: it executes `add` and `get` requests and snapshots
//!   itself. It knows nothing of Paxos.
//! - **Each replica** is one thread running a small driver ([`Replica`])
//!   around a sans-IO `paxos_node::Node`: it waits for a peer message, a
//!   client request or the node's timer, hands it to the node with the
//!   current time, and carries out the effects the node returns. Storage is
//!   paxos-log's `FileLog` (every persist of a round is appended, then one
//!   fsync covers them all) and `CheckpointStore`; the network is
//!   paxos-net's QUIC transport with mutual TLS on loopback, with
//!   certificates from `paxos_net::generate_cluster`.
//! - **The client** ([`Cluster::submit`]) sends a request to a replica and
//!   follows `NotPrimary` redirects to the leader.
//!
//! The run: increments through the leader; the leader is killed; another
//! replica takes over with the counter intact; the killed replica restarts
//! from its log and newest checkpoint and catches up. A production driver
//! does the same work with more threads (paxos-kv's event loop writes
//! checkpoints and waits for fsyncs off the loop).

use bytes::Bytes;
use paxos_core::{Membership, ReplicaId, Role, Time};
use paxos_log::checkpoint::CheckpointStore;
use paxos_log::{FileLog, LogOptions, ReplicaStorage};
use paxos_net::{Inbound, NodeIdentity, QuicConfig, QuicTransport, Transport};
use paxos_node::storage::{self, TransferSink};
use paxos_node::{
    AbortReason, BytesSnapshot, Decree, Effect, MemberAddrs, Node, NodeConfig, NodeStatus,
    Recovery, RequestKind, SnapshotError, StateMachine, TransferOp,
};
use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// A request's leader lost leadership before it learned whether the
/// request was chosen.
#[derive(Debug)]
struct OutcomeUnknown;

impl std::fmt::Display for OutcomeUnknown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("outcome unknown: the leader changed before the request's decree was learned")
    }
}

impl std::error::Error for OutcomeUnknown {}

// ----------------------------------------------------------------------
// The application: a counter.
// ----------------------------------------------------------------------

/// The replicated state machine: one signed 64-bit counter.
#[derive(Debug, Default)]
struct Counter {
    value: i64,
}

const ADD: u8 = 1;
const GET: u8 = 2;

/// A request adding `n`.
fn add(n: i64) -> Bytes {
    let mut request = vec![ADD];
    request.extend_from_slice(&n.to_le_bytes());
    Bytes::from(request)
}

/// A read. It goes through the log like a write, so it is linearizable.
fn get() -> Bytes {
    Bytes::from_static(&[GET])
}

impl StateMachine for Counter {
    type Snapshot = BytesSnapshot;

    /// Replies with the counter's value after the request.
    fn execute(&mut self, _decree: &Decree, request: &[u8]) -> Bytes {
        match request {
            [GET] => {}
            [ADD, n @ ..] => match <[u8; 8]>::try_from(n) {
                Ok(n) => self.value = self.value.wrapping_add(i64::from_le_bytes(n)),
                Err(_) => return Bytes::from_static(b"bad request"),
            },
            _ => return Bytes::from_static(b"bad request"),
        }
        Bytes::copy_from_slice(&self.value.to_le_bytes())
    }

    /// `GET` without the log (`Node::submit_read`); anything else is not
    /// a read.
    fn query(&self, request: &[u8]) -> Bytes {
        match request {
            [GET] => Bytes::copy_from_slice(&self.value.to_le_bytes()),
            _ => Bytes::from_static(b"not a read"),
        }
    }

    fn snapshot(&mut self) -> BytesSnapshot {
        BytesSnapshot(Bytes::copy_from_slice(&self.value.to_le_bytes()))
    }

    fn restore(&mut self, source: &mut dyn std::io::Read) -> Result<(), SnapshotError> {
        let mut value = [0u8; 8];
        source.read_exact(&mut value)?;
        // A snapshot is read to its end: anything after it is an error.
        if source.read(&mut [0u8; 1])? != 0 {
            return Err(SnapshotError::Invalid("bytes after the counter".into()));
        }
        self.value = i64::from_le_bytes(value);
        Ok(())
    }
}

// ----------------------------------------------------------------------
// A replica: the driver loop around a node.
// ----------------------------------------------------------------------

/// How a request ended, as its client sees it.
type Outcome = Result<Bytes, AbortReason>;
/// A request's completion handle: the node settles each exactly once.
type Completion = SyncSender<Outcome>;

/// What the rest of the program asks of a replica thread.
enum Command {
    /// A client request.
    Submit(Bytes, Completion),
    /// Report the node's status and the counter's value here.
    Peek(SyncSender<(NodeStatus, i64)>),
    /// Stop at once, as if the process died.
    Kill,
}

/// What wakes a replica up.
enum Event {
    Peer(ReplicaId, Bytes),
    Command(Command),
    Tick,
    Closed,
}

/// One replica: a node and the I/O it asks for.
struct Replica {
    node: Node<Counter, Completion>,
    log: FileLog,
    checkpoints: CheckpointStore,
    sink: TransferSink,
    transport: QuicTransport,
    inbound: Inbound,
    commands: tokio::sync::mpsc::Receiver<Command>,
    /// `Time(0)` for the node.
    start: Instant,
    /// Runs the transport; the loop waits on it for messages and timers.
    runtime: tokio::runtime::Handle,
}

impl Replica {
    fn now(&self) -> Time {
        Time(self.start.elapsed().as_micros() as u64)
    }

    /// The loop: wait, hand the event to the node, carry out its effects.
    fn run(mut self) -> Result<(), Error> {
        self.carry_out()?;
        loop {
            let event = self.next_event();
            let now = self.now();
            match event {
                Event::Peer(from, bytes) => self.node.handle_message(now, from, bytes),
                Event::Tick => self.node.handle_tick(now),
                Event::Command(Command::Submit(request, done)) => {
                    self.node.propose_requests(
                        now,
                        now,
                        &mut vec![(request, done, RequestKind::Write)],
                    );
                }
                Event::Command(Command::Peek(reply)) => {
                    let value = self.node.state_machine().value;
                    let _ = reply.send((self.node.status(), value));
                }
                Event::Command(Command::Kill) | Event::Closed => return Ok(()),
            }
            self.carry_out()?;
        }
    }

    /// Waits for a peer message, a command, or the node's next timer.
    fn next_event(&mut self) -> Event {
        let deadline = self
            .node
            .next_timer()
            .map(|t| self.start + Duration::from_micros(t.0));
        let (inbound, commands) = (&mut self.inbound, &mut self.commands);
        self.runtime.block_on(async {
            let timer = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                message = inbound.recv() => match message {
                    Some((from, bytes)) => Event::Peer(from, bytes),
                    None => Event::Closed,
                },
                command = commands.recv() => command.map_or(Event::Closed, Event::Command),
                () = timer => Event::Tick,
            }
        })
    }

    /// Carries out every effect the node queued, in order. Persists are
    /// appended as they come; once the queue is empty one wait covers them
    /// all (durability is in order, so reporting the newest reports every
    /// earlier one), which may release more effects.
    fn carry_out(&mut self) -> Result<(), Error> {
        loop {
            let mut newest_persist = None;
            while let Some(effect) = self.node.poll_effect() {
                let now = self.now();
                match effect {
                    // Best effort: Paxos retransmits what is lost.
                    Effect::Transmit { to, bytes } => {
                        let _ = self.transport.send(to, bytes);
                    }
                    Effect::Persist { id, entries } => {
                        newest_persist = Some((id, self.log.append(&entries)?));
                    }
                    Effect::Complete {
                        completion, reply, ..
                    } => {
                        let _ = completion.send(Ok(reply));
                    }
                    Effect::Abort { completion, reason } => {
                        let _ = completion.send(Err(reason));
                    }
                    Effect::SaveCheckpoint(job) => {
                        // Inline for brevity; it blocks this replica while it
                        // writes, which a tiny counter does not notice.
                        let saved = storage::write_checkpoint(&self.checkpoints, job);
                        self.node
                            .on_checkpoint_saved(now, saved.map_err(|e| e.to_string()));
                    }
                    Effect::ServeChunk {
                        to,
                        slot,
                        offset,
                        max_bytes,
                    } => {
                        let served =
                            storage::serve_chunk(&self.checkpoints, slot, offset, max_bytes);
                        let _ = self
                            .transport
                            .send(to, paxos_node::xfer::encode(&served.reply));
                        if let Some(damaged) = served.damaged {
                            self.node.on_checkpoint_damaged(now, damaged);
                        }
                    }
                    Effect::Transfer(TransferOp::Finish { slot }) => {
                        let finished = self.sink.perform(TransferOp::Finish { slot });
                        let finished = finished.map(|s| s.unwrap_or(slot));
                        self.node
                            .on_transfer_finished(now, finished.map_err(|e| e.to_string()));
                    }
                    Effect::Transfer(op) => {
                        if let Err(e) = self.sink.perform(op) {
                            self.node.on_transfer_failed(now, e.to_string());
                        }
                    }
                    Effect::InstallCheckpoint { slot } => {
                        // Restored into a fresh counter, then swapped in.
                        // (The counter is tiny, so this example restores
                        // in line; a driver with a large state restores on
                        // another thread and keeps its loop running, as
                        // paxos-kv does.) A checkpoint that does not
                        // restore leaves the node's counter as it was; the
                        // node fetches another.
                        let mut fresh = Counter::default();
                        match storage::restore_slot(&self.checkpoints, slot, &mut fresh) {
                            Ok(restored) => {
                                // The core restarts from this and takes it
                                // all for durable: sync the queued appends
                                // first.
                                self.log.sync_queued()?;
                                let durable = self.log.state();
                                let (_unused, installed) = self
                                    .node
                                    .install_restored(now, durable, slot, fresh, restored);
                                if let Err(e) = installed {
                                    eprintln!("checkpoint {slot} not installed: {e}");
                                }
                            }
                            Err(e) => self.node.on_restore_failed(now, slot, e.to_string()),
                        }
                    }
                    Effect::SetPeers(wanted) => {
                        for (peer, addr) in &wanted {
                            if !self.transport.peers().contains(peer) {
                                self.transport.add_peer(*peer, *addr)?;
                            }
                        }
                        for peer in self.transport.peers() {
                            if !wanted.contains_key(&peer) {
                                self.transport.remove_peer(peer);
                            }
                        }
                    }
                    Effect::Timing(_) | Effect::Applied { .. } => {}
                    // The example keeps no damage record (its log refuses damage).
                    Effect::ClearDamage => {}
                    Effect::ReleaseLogMemory { through } => {
                        self.log.release_memory_through(through)
                    }
                    Effect::ReadDecrees {
                        read,
                        through,
                        max_decrees,
                        max_bytes,
                    } => {
                        // Inline for brevity: one bounded chunk.
                        let decrees = self
                            .log
                            .read_decrees(read.from, through, max_decrees, max_bytes)
                            .ok();
                        self.node.on_decrees_read(now, read, decrees);
                    }
                }
            }
            let Some((id, seq)) = newest_persist else {
                return Ok(());
            };
            self.log.wait_durable(seq)?;
            let now = self.now();
            self.node.on_persisted(now, id);
        }
    }
}

// ----------------------------------------------------------------------
// The cluster, and a client that follows redirects.
// ----------------------------------------------------------------------

struct Running {
    commands: tokio::sync::mpsc::Sender<Command>,
    thread: JoinHandle<Result<(), Error>>,
}

struct Cluster {
    dir: PathBuf,
    runtime: tokio::runtime::Runtime,
    members: Membership,
    addrs: BTreeMap<ReplicaId, SocketAddr>,
    running: BTreeMap<ReplicaId, Running>,
    /// Where the client sends requests first.
    leader_guess: ReplicaId,
}

/// Microseconds since the Unix epoch.
fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_micros() as u64)
}

/// Binds `addr` again for a restarted replica. A killed process's socket
/// is freed at once; here the killed replica's endpoint lets go of it only
/// once its connections finished closing, so wait for that a little.
fn bind_again(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let give_up = Instant::now() + Duration::from_secs(5);
    loop {
        match UdpSocket::bind(addr) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < give_up => {
                std::thread::sleep(Duration::from_millis(20));
            }
            result => return result,
        }
    }
}

impl Cluster {
    /// Starts replica `id` from what its directory holds (nothing, the first
    /// time), on `socket` or a fresh socket bound to its address.
    fn start(&mut self, id: ReplicaId, socket: Option<UdpSocket>) -> Result<(), Error> {
        let dir = self.dir.join(format!("replica-{}", id.0));
        let (log, durable) = FileLog::open(dir.join("log"), LogOptions::default())?;
        let checkpoints = storage::open_checkpoints(&dir.join("checkpoints"))?;
        let mut counter = Counter::default();
        let checkpoint = storage::restore_newest(&checkpoints, &mut counter)?;

        let mut core = paxos_core::Config::new(id, self.members.clone());
        core.heartbeat_interval_us = 20_000;
        core.election_timeout_min_us = 150_000;
        core.election_timeout_max_us = 300_000;
        let mut config = NodeConfig::new(core);
        config.checkpoints = true;
        config.checkpoint_every = 10;
        config.transfer_stall_us = 1_000_000;
        // This example has no client port: redirects name replica ids.
        config.addresses.configured = self
            .addrs
            .iter()
            .map(|(r, a)| {
                (
                    *r,
                    MemberAddrs {
                        peer: *a,
                        client: *a,
                    },
                )
            })
            .collect();
        config.seed = unix_micros() ^ u64::from(id.0);
        config.boot_nonce = unix_micros().rotate_left(17) ^ u64::from(id.0);
        config.wall_clock_at_zero_us = unix_micros();
        let recovery = Recovery {
            durable,
            state_machine: counter,
            checkpoint,
            damaged: false,
        };
        let node = Node::new(config, recovery, Time(0))?;

        let identity = NodeIdentity::load_from_dir(&self.dir.join("certs"), id)?;
        let peers = self.addrs.iter().filter(|(r, _)| **r != id);
        let mut quic = QuicConfig::new(identity, peers.map(|(r, a)| (*r, *a)).collect());
        quic.reconnect_max = Duration::from_millis(200);
        quic.idle_timeout = Duration::from_secs(2);
        let socket = match socket {
            Some(s) => s,
            None => bind_again(self.addrs[&id])?,
        };
        let (transport, inbound) = {
            let _in_runtime = self.runtime.enter();
            QuicTransport::start(quic, socket)?
        };

        let (commands, commands_rx) = tokio::sync::mpsc::channel(64);
        let replica = Replica {
            node,
            log,
            sink: TransferSink::new(checkpoints.clone()),
            checkpoints,
            transport,
            inbound,
            commands: commands_rx,
            start: Instant::now(),
            runtime: self.runtime.handle().clone(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("replica-{}", id.0))
            .spawn(move || replica.run())?;
        self.running.insert(id, Running { commands, thread });
        Ok(())
    }

    /// Stops replica `id` at once (its thread returns; nothing is flushed
    /// that was not already durable).
    fn kill(&mut self, id: ReplicaId) -> Result<(), Error> {
        let Some(r) = self.running.remove(&id) else {
            return Ok(());
        };
        let _ = r.commands.blocking_send(Command::Kill);
        r.thread.join().map_err(|_| "replica thread panicked")?
    }

    /// The status and counter of replica `id`, if it runs.
    fn peek(&self, id: ReplicaId) -> Option<(NodeStatus, i64)> {
        let (reply, answer) = sync_channel(1);
        let r = self.running.get(&id)?;
        r.commands.blocking_send(Command::Peek(reply)).ok()?;
        answer.recv_timeout(Duration::from_secs(5)).ok()
    }

    /// The replica that leads now, if one does.
    fn leader(&self) -> Option<ReplicaId> {
        self.running
            .keys()
            .copied()
            .find(|id| self.peek(*id).is_some_and(|(s, _)| s.role == Role::Leader))
    }

    /// Submits `request` and returns the counter's value in the reply.
    /// `NotPrimary` means the request was never proposed, so it is safe to
    /// send it elsewhere: to the leader named, or, while there is none, to
    /// the next replica after a pause. Any other abort is returned, not
    /// retried (an `add` that may have executed must not run twice).
    /// Adds `n` exactly once and returns the counter after it; `before` is
    /// the counter before (this is the only client). An attempt whose
    /// leader lost leadership before it learned the outcome ends with
    /// `OutcomeUnknown`: the add may or may not have been chosen. Resending
    /// it blindly could add twice, so the client reads the counter through
    /// the log (a read is ordered after every earlier decree) and resends
    /// only if the add did not take effect.
    fn add_once(&mut self, n: i64, before: i64) -> Result<i64, Error> {
        for _ in 0..10 {
            match self.submit(add(n)) {
                Err(e) if e.is::<OutcomeUnknown>() => {
                    let now = self.read()?;
                    println!("add {n}: outcome unknown (leader changed); the counter reads {now}");
                    if now == before + n {
                        return Ok(now);
                    }
                    if now != before {
                        return Err(
                            format!("counter {now}: neither {before} nor {}", before + n).into(),
                        );
                    }
                }
                other => return other,
            }
        }
        Err(format!("add {n}: no outcome after 10 attempts").into())
    }

    /// Reads the counter through the log (retried: a read changes nothing).
    fn read(&mut self) -> Result<i64, Error> {
        for _ in 0..10 {
            match self.submit(get()) {
                Err(e) if e.is::<OutcomeUnknown>() => continue,
                other => return other,
            }
        }
        Err("read: no outcome after 10 attempts".into())
    }

    fn submit(&mut self, request: Bytes) -> Result<i64, Error> {
        let give_up = Instant::now() + Duration::from_secs(10);
        let mut target = self.leader_guess;
        while Instant::now() < give_up {
            let (done, outcome) = sync_channel(1);
            let sent = self.running.get(&target).is_some_and(|r| {
                r.commands
                    .blocking_send(Command::Submit(request.clone(), done))
                    .is_ok()
            });
            let redirect = match sent.then(|| outcome.recv_timeout(Duration::from_secs(5))) {
                Some(Ok(Ok(reply))) => {
                    self.leader_guess = target;
                    let value = <[u8; 8]>::try_from(&reply[..])
                        .map_err(|_| format!("unexpected reply {reply:?}"))?;
                    return Ok(i64::from_le_bytes(value));
                }
                Some(Ok(Err(AbortReason::NotPrimary { leader }))) => leader,
                Some(Ok(Err(AbortReason::OutcomeUnknown))) => return Err(OutcomeUnknown.into()),
                Some(Ok(Err(reason))) => return Err(format!("request failed: {reason:?}").into()),
                // Not running, or it stopped before answering.
                Some(Err(_)) | None => None,
            };
            target = match redirect {
                Some(leader) if leader != target && self.running.contains_key(&leader) => leader,
                _ => {
                    std::thread::sleep(Duration::from_millis(20));
                    let ids: Vec<ReplicaId> = self.running.keys().copied().collect();
                    let next = ids.iter().position(|r| *r == target).map_or(0, |i| i + 1);
                    ids[next % ids.len()]
                }
            };
        }
        Err("no leader answered within 10 s".into())
    }

    /// Waits until replica `id` applied as far as the leader.
    fn wait_caught_up(&self, id: ReplicaId) -> Result<(NodeStatus, i64), Error> {
        let give_up = Instant::now() + Duration::from_secs(10);
        while Instant::now() < give_up {
            let leader = self.leader().and_then(|l| self.peek(l));
            if let (Some((mine, value)), Some((theirs, _))) = (self.peek(id), leader) {
                if mine.applied_index == theirs.applied_index {
                    return Ok((mine, value));
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!("replica {} did not catch up within 10 s", id.0).into())
    }
}

impl Drop for Cluster {
    /// Stops every replica before the runtime their transports run on.
    fn drop(&mut self) {
        let ids: Vec<ReplicaId> = self.running.keys().copied().collect();
        for id in ids {
            if let Err(e) = self.kill(id) {
                eprintln!("replica {}: {e}", id.0);
            }
        }
    }
}

// ----------------------------------------------------------------------
// The run.
// ----------------------------------------------------------------------

/// Runs the whole scenario; returns the counter's final value.
fn run() -> Result<i64, Error> {
    let dir = tempfile::tempdir()?;
    let ids = [ReplicaId(1), ReplicaId(2), ReplicaId(3)];
    paxos_net::generate_cluster(&dir.path().join("certs"), &ids)?;
    let mut sockets = BTreeMap::new();
    for id in ids {
        sockets.insert(id, UdpSocket::bind("127.0.0.1:0")?);
    }
    let addrs = sockets
        .iter()
        .map(|(id, s)| Ok((*id, s.local_addr()?)))
        .collect::<Result<BTreeMap<_, _>, Error>>()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut cluster = Cluster {
        dir: dir.path().to_path_buf(),
        runtime,
        members: Membership::with_voters(ids.to_vec()),
        addrs,
        running: BTreeMap::new(),
        leader_guess: ids[0],
    };
    for (id, socket) in sockets {
        cluster.start(id, Some(socket))?;
    }
    println!(
        "3 replicas, QUIC with mutual TLS on {:?}; logs and checkpoints in {}",
        cluster.addrs.values().collect::<Vec<_>>(),
        dir.path().display()
    );

    let mut expected = 0;
    for n in 1..=10 {
        let value = cluster.add_once(n, expected)?;
        expected += n;
        println!("add {n:>3} -> {value}");
        assert_eq!(value, expected);
    }
    let old_leader = cluster.leader().ok_or("no leader")?;
    println!("killing the leader, replica {}", old_leader.0);
    cluster.kill(old_leader)?;

    let killed_at = Instant::now();
    let value = cluster.add_once(100, expected)?;
    expected += 100;
    let new_leader = cluster.leader().ok_or("no leader")?;
    println!(
        "replica {} took over in {} ms; the counter survived: add 100 -> {value}",
        new_leader.0,
        killed_at.elapsed().as_millis()
    );
    assert_eq!(value, expected);
    for n in 11..=15 {
        let value = cluster.add_once(n, expected)?;
        expected += n;
        println!("add {n:>3} -> {value}");
        assert_eq!(value, expected);
    }

    println!(
        "restarting replica {} from its log and newest checkpoint",
        old_leader.0
    );
    cluster.start(old_leader, None)?;
    cluster.wait_caught_up(old_leader)?;
    for id in ids {
        let (status, value) = cluster.peek(id).ok_or("a replica stopped")?;
        println!(
            "replica {}: {:?}, counter {value}, applied slot {}, newest checkpoint slot {}",
            id.0, status.role, status.applied_index, status.checkpoint_slot
        );
        assert_eq!(value, expected);
    }
    let value = cluster.read()?;
    println!("get -> {value}");
    assert_eq!(value, expected);
    Ok(value)
}

fn main() -> Result<(), Error> {
    run().map(|_| ())
}

#[cfg(test)]
mod tests {
    /// CI runs the example's scenario (`[[example]] test = true`).
    #[test]
    fn the_example_runs_to_the_end() {
        assert_eq!(super::run().unwrap(), 55 + 100 + 65);
    }
}
