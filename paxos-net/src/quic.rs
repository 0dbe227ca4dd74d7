//! The QUIC transport: quinn endpoints, mutual TLS, one connection per peer
//! pair, one unidirectional stream per direction.
//!
//! # Connection topology
//!
//! For each pair of replicas the lower id dials and the higher id accepts,
//! so a pair shares exactly one connection. On it each side opens one
//! unidirectional stream for its messages and starts it with a hello frame
//! naming itself. A stream carries frames in order until the connection
//! breaks; the dialer then redials with exponential backoff (with jitter)
//! and the acceptor waits for the new connection. A newer connection from
//! the same peer replaces an older one (the peer restarted).
//!
//! # Tasks
//!
//! Per peer, one sender task owns the bounded queue's receiving end: it
//! gets (or waits for) a connection, opens the stream, and writes batches of
//! queued frames. Per connection, one receiver task reads the peer's stream
//! and delivers payloads to the shared bounded inbound channel. One task
//! accepts incoming connections and spawns a bounded number of handshake
//! tasks. All tasks stop when the transport is dropped or shut down.

use crate::certs::{replica_dns_name, CertError, NodeIdentity};
use crate::frame::{self, FrameDecoder, FrameError, MAX_PAYLOAD_CEILING};
use crate::tls::{self, PeerVerifier};
use crate::transport::{Inbound, PeerStats, SendError, Transport, TransportStats};
use bytes::{Bytes, BytesMut};
use paxos_contracts::{ensures, invariant, requires};
use paxos_core::ReplicaId;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint, RecvStream, VarInt};
use std::collections::BTreeMap;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, watch, Semaphore};
use tracing::{debug, info, warn};

/// Application close codes, visible to the peer in its connection error.
mod close_code {
    pub const SHUTDOWN: u32 = 1;
    pub const REJECTED: u32 = 2;
    pub const FRAME_ERROR: u32 = 3;
    pub const SUPERSEDED: u32 = 4;
    pub const SEND_FAILED: u32 = 5;
    pub const REMOVED: u32 = 6;
}

/// Messages up to this size are copied into the batch buffer; larger ones
/// are written as their own chunk, without a copy.
const COALESCE_LIMIT: usize = 4096;
/// Most messages taken from a peer's queue per stream write.
const MAX_BATCH_MESSAGES: usize = 512;
/// Largest chunk read from a stream at once.
const READ_CHUNK: usize = 64 * 1024;
/// Most incoming handshakes in progress at once; more are refused.
const MAX_PENDING_HANDSHAKES: usize = 32;

/// Configuration of a [`QuicTransport`].
#[derive(Debug, Clone)]
pub struct QuicConfig {
    /// This replica.
    pub local_id: ReplicaId,
    /// Certificate, key and cluster CA; `identity.id` must be `local_id`.
    pub identity: NodeIdentity,
    /// Every other replica at start, and the UDP address it listens on.
    /// [`QuicTransport::add_peer`] and [`QuicTransport::remove_peer`] change
    /// the set at run time.
    pub peers: BTreeMap<ReplicaId, SocketAddr>,
    /// Largest message accepted by `send` and from the network.
    pub max_message_size: usize,
    /// Most messages queued per peer.
    pub send_queue_messages: usize,
    /// Most bytes queued per peer.
    pub send_queue_bytes: usize,
    /// Capacity of the inbound channel (messages, all peers together).
    pub inbound_capacity: usize,
    /// First reconnect delay; doubles per failure up to `reconnect_max`.
    pub reconnect_initial: Duration,
    /// Longest reconnect delay.
    pub reconnect_max: Duration,
    /// Limit on a TLS handshake plus the peer's hello.
    pub handshake_timeout: Duration,
    /// A connection silent this long is dead (keep-alives are sent at a
    /// third of it).
    pub idle_timeout: Duration,
    /// Put a CRC-32C on every frame (QUIC's AEAD already protects the bytes).
    pub checksum: bool,
    /// Requested kernel send and receive buffer of the UDP socket. The
    /// default (~200 KiB) overflows when a leader's Accepts arrive in bursts
    /// at a busy follower, and every dropped datagram costs a QUIC loss
    /// recovery. The kernel caps it at `net.core.{r,w}mem_max`; the size
    /// granted is logged when it is smaller.
    pub socket_buffer_bytes: usize,
    /// Largest UDP payload MTU discovery may grow a connection's packets to.
    /// quinn's default stops at 1452 (Ethernet); a replica's Accept batch
    /// of tens of KiB then costs dozens of datagrams, each a syscall
    /// segment, an AEAD seal and open, and a receive wakeup on each side.
    /// Discovery probes upward from 1200 with don't-fragment set, so a high
    /// bound is safe on any path: on loopback or a jumbo-frame LAN it finds
    /// the large size, elsewhere it settles at the path MTU.
    pub max_udp_payload: u16,
}

impl QuicConfig {
    /// A configuration with default limits: 16 MiB messages, 1024 messages
    /// or 64 MiB queued per peer, 4096 inbound messages, reconnect backoff
    /// 50 ms to 2 s, 5 s handshake and idle timeouts, no frame checksum.
    pub fn new(identity: NodeIdentity, peers: BTreeMap<ReplicaId, SocketAddr>) -> Self {
        QuicConfig {
            local_id: identity.id,
            identity,
            peers,
            max_message_size: 16 << 20,
            send_queue_messages: 1024,
            send_queue_bytes: 64 << 20,
            inbound_capacity: 4096,
            reconnect_initial: Duration::from_millis(50),
            reconnect_max: Duration::from_secs(2),
            handshake_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(5),
            checksum: false,
            socket_buffer_bytes: 4 << 20,
            max_udp_payload: 65_527,
        }
    }

    fn validate(&self) -> Result<(), NetError> {
        let bad = |msg: String| Err(NetError::Config(msg));
        if self.identity.id != self.local_id {
            return bad(format!(
                "identity is for {} but local id is {}",
                self.identity.id, self.local_id
            ));
        }
        if self.peers.contains_key(&self.local_id) {
            return bad(format!(
                "peer list contains the local replica {}",
                self.local_id
            ));
        }
        if self.max_message_size == 0 || self.max_message_size > MAX_PAYLOAD_CEILING {
            return bad(format!(
                "max_message_size must be in 1..={MAX_PAYLOAD_CEILING}"
            ));
        }
        if self.max_udp_payload < 1200 {
            return bad("max_udp_payload must be at least 1200 (QUIC's minimum)".into());
        }
        if self.send_queue_messages == 0 || self.inbound_capacity == 0 {
            return bad("queue capacities must be positive".into());
        }
        if self.send_queue_bytes < self.max_message_size {
            return bad("send_queue_bytes must hold at least one maximum-size message".into());
        }
        if self.reconnect_initial.is_zero() || self.reconnect_max < self.reconnect_initial {
            return bad("need 0 < reconnect_initial <= reconnect_max".into());
        }
        if self.idle_timeout < Duration::from_millis(30) || self.handshake_timeout.is_zero() {
            return bad(
                "idle_timeout must be at least 30 ms and handshake_timeout positive".into(),
            );
        }
        Ok(())
    }
}

/// Errors starting a [`QuicTransport`].
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The configuration is inconsistent.
    #[error("invalid transport configuration: {0}")]
    Config(String),
    /// Certificates or keys are unusable.
    #[error(transparent)]
    Cert(#[from] CertError),
    /// The UDP socket could not be bound or used.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
}

/// Counters and queue of one peer, shared by `send` and the peer's tasks.
#[derive(Debug)]
struct PeerSlot {
    addr: SocketAddr,
    queue: mpsc::Sender<Bytes>,
    queued_bytes: AtomicUsize,
    sent: AtomicU64,
    dropped: AtomicU64,
    received: AtomicU64,
    connected: AtomicBool,
    connections: AtomicU64,
    /// Acceptor role: the newest connection this peer dialed to us.
    accepted: watch::Sender<Option<Connection>>,
    /// Set when the peer is removed: its tasks stop.
    removed: watch::Sender<bool>,
}

#[derive(Debug)]
struct Shared {
    local_id: ReplicaId,
    config: QuicConfig,
    /// Current peers. Read on every `send`; written only by `add_peer` and
    /// `remove_peer`.
    peers: RwLock<BTreeMap<ReplicaId, Arc<PeerSlot>>>,
    inbound: mpsc::Sender<(ReplicaId, Bytes)>,
    verifier: PeerVerifier,
    rejected_connections: AtomicU64,
    frame_errors: AtomicU64,
    shutdown: watch::Sender<bool>,
}

impl Shared {
    /// Whether `self` dials `peer` (else `peer` dials us).
    fn dials(&self, peer: ReplicaId) -> bool {
        self.local_id < peer
    }

    /// Spawns `task`, to be cancelled at shutdown.
    fn spawn(self: &Arc<Self>, task: impl Future<Output = ()> + Send + 'static) {
        let mut shutdown = self.shutdown.subscribe();
        tokio::spawn(async move {
            tokio::select! {
                _ = task => {}
                _ = shutdown.wait_for(|stopped| *stopped) => {}
            }
        });
    }

    /// Spawns `task`, to be cancelled at shutdown or when `slot`'s peer is
    /// removed.
    fn spawn_for_peer(
        self: &Arc<Self>,
        slot: &PeerSlot,
        task: impl Future<Output = ()> + Send + 'static,
    ) {
        let mut removed = slot.removed.subscribe();
        self.spawn(async move {
            tokio::select! {
                _ = task => {}
                _ = removed.wait_for(|removed| *removed) => {}
            }
        });
    }

    fn peers(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<ReplicaId, Arc<PeerSlot>>> {
        self.peers.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn peer(&self, id: ReplicaId) -> Option<Arc<PeerSlot>> {
        self.peers().get(&id).cloned()
    }

    /// Creates `id`'s queue and starts its sender task.
    fn add_peer(
        self: &Arc<Self>,
        endpoint: &Endpoint,
        id: ReplicaId,
        addr: SocketAddr,
    ) -> Result<(), NetError> {
        if id == self.local_id {
            return Err(NetError::Config(format!("{id} is the local replica")));
        }
        let (queue, queue_rx) = mpsc::channel(self.config.send_queue_messages);
        let slot = Arc::new(PeerSlot {
            addr,
            queue,
            queued_bytes: AtomicUsize::new(0),
            sent: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            received: AtomicU64::new(0),
            connected: AtomicBool::new(false),
            connections: AtomicU64::new(0),
            accepted: watch::channel(None).0,
            removed: watch::channel(false).0,
        });
        {
            let mut peers = self.peers.write().unwrap_or_else(PoisonError::into_inner);
            if peers.contains_key(&id) {
                return Err(NetError::Config(format!("{id} is already a peer")));
            }
            peers.insert(id, slot.clone());
        }
        let task = run_peer(self.clone(), endpoint.clone(), id, slot.clone(), queue_rx);
        self.spawn_for_peer(&slot, task);
        Ok(())
    }

    fn reject(&self, connection: &Connection, why: &str) {
        self.rejected_connections.fetch_add(1, Ordering::Relaxed);
        warn!(local = %self.local_id, remote = %connection.remote_address(), "rejecting connection: {why}");
        connection.close(VarInt::from_u32(close_code::REJECTED), why.as_bytes());
    }
}

/// Asks for `bytes` of kernel buffer in each direction. Best effort: the
/// kernel silently caps the request, so what it granted is read back and a
/// shortfall logged (raise `net.core.rmem_max` / `wmem_max` to lift it).
fn size_socket_buffers(socket: &std::net::UdpSocket, bytes: usize) {
    let sock = socket2::SockRef::from(socket);
    let _ = sock.set_recv_buffer_size(bytes);
    let _ = sock.set_send_buffer_size(bytes);
    // Linux reports twice the usable size (it counts bookkeeping overhead).
    let granted = |got: std::io::Result<usize>| got.map(|n| n / 2).unwrap_or(0);
    let (recv, send) = (
        granted(sock.recv_buffer_size()),
        granted(sock.send_buffer_size()),
    );
    if recv < bytes || send < bytes {
        info!(
            requested = bytes,
            recv,
            send,
            "UDP socket buffers smaller than requested (capped by net.core.rmem_max/wmem_max)"
        );
    }
}

/// The QUIC [`Transport`]. Dropping it stops every task and closes every
/// connection.
#[derive(Debug)]
pub struct QuicTransport {
    shared: Arc<Shared>,
    endpoint: Endpoint,
}

impl QuicTransport {
    /// Binds `listen` and starts connecting to the peers. Call from a tokio
    /// runtime.
    pub fn bind(config: QuicConfig, listen: SocketAddr) -> Result<(Self, Inbound), NetError> {
        let socket = std::net::UdpSocket::bind(listen)?;
        QuicTransport::start(config, socket)
    }

    /// Starts on an already bound UDP socket (tests bind port 0 first to
    /// learn every address). Call from a tokio runtime.
    pub fn start(
        config: QuicConfig,
        socket: std::net::UdpSocket,
    ) -> Result<(Self, Inbound), NetError> {
        config.validate()?;
        size_socket_buffers(&socket, config.socket_buffer_bytes);
        let transport_config = Arc::new(transport_config(&config));
        let server_crypto =
            QuicServerConfig::try_from(tls::rustls_server_config(&config.identity)?)
                .map_err(|e| NetError::Config(format!("QUIC server TLS: {e}")))?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server_config.transport_config(transport_config.clone());
        let client_crypto =
            QuicClientConfig::try_from(tls::rustls_client_config(&config.identity)?)
                .map_err(|e| NetError::Config(format!("QUIC client TLS: {e}")))?;
        let mut client_config = quinn::ClientConfig::new(Arc::new(client_crypto));
        client_config.transport_config(transport_config);

        let runtime = quinn::default_runtime().ok_or_else(|| {
            NetError::Config("QuicTransport must be started inside a tokio runtime".into())
        })?;
        let reset_key = Arc::new(tls::stateless_reset_key(&config.identity));
        let mut endpoint_config = quinn::EndpointConfig::new(reset_key);
        // quinn's default generator tags CIDs with a per-process random key
        // and ignores packets whose CID it cannot validate, which would stop
        // a restarted endpoint from resetting its predecessor's connections.
        endpoint_config.cid_generator(|| Box::new(RandomCidGenerator::default()));
        let mut endpoint = Endpoint::new(endpoint_config, Some(server_config), socket, runtime)?;
        endpoint.set_default_client_config(client_config);

        let (inbound_tx, inbound_rx) = mpsc::channel(config.inbound_capacity);
        let initial_peers = config.peers.clone();
        let shared = Arc::new(Shared {
            local_id: config.local_id,
            verifier: PeerVerifier::new(&config.identity.ca)?,
            config,
            peers: RwLock::new(BTreeMap::new()),
            inbound: inbound_tx,
            rejected_connections: AtomicU64::new(0),
            frame_errors: AtomicU64::new(0),
            shutdown: watch::channel(false).0,
        });
        for (id, addr) in initial_peers {
            shared.add_peer(&endpoint, id, addr)?;
        }
        shared.spawn(accept_loop(shared.clone(), endpoint.clone()));
        info!(local = %shared.local_id, addr = ?endpoint.local_addr().ok(), "paxos-net listening");
        Ok((QuicTransport { shared, endpoint }, inbound_rx))
    }

    /// Adds a peer at run time (a replica joining by reconfiguration). Its
    /// certificate must come from the same cluster CA. Fails if `id` is this
    /// replica or already a peer; to move a peer, remove it first.
    pub fn add_peer(&self, id: ReplicaId, addr: SocketAddr) -> Result<(), NetError> {
        let result = self.shared.add_peer(&self.endpoint, id, addr);
        ensures!(result.is_err() || self.shared.peers().contains_key(&id));
        result
    }

    /// Removes a peer at run time: drops its queue, stops its tasks, closes
    /// its connection, and refuses it from then on. Returns whether it was a
    /// peer.
    pub fn remove_peer(&self, id: ReplicaId) -> bool {
        let removed = self
            .shared
            .peers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
        let Some(slot) = removed else { return false };
        slot.removed.send_replace(true);
        if let Some(connection) = slot.accepted.send_replace(None) {
            connection.close(VarInt::from_u32(close_code::REMOVED), b"peer removed");
        }
        info!(local = %self.shared.local_id, peer = %id, "peer removed");
        ensures!(!self.shared.peers().contains_key(&id));
        true
    }

    /// The UDP address this endpoint listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Stops all tasks, closes all connections (peers see a clean close and
    /// reconnect at once) and waits briefly for the close to be sent.
    pub async fn shutdown(&self) {
        self.shared.shutdown.send_replace(true);
        self.endpoint
            .close(VarInt::from_u32(close_code::SHUTDOWN), b"shutdown");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}

impl Drop for QuicTransport {
    fn drop(&mut self) {
        self.shared.shutdown.send_replace(true);
        self.endpoint
            .close(VarInt::from_u32(close_code::SHUTDOWN), b"shutdown");
    }
}

impl Transport for QuicTransport {
    fn local_id(&self) -> ReplicaId {
        self.shared.local_id
    }

    fn peers(&self) -> Vec<ReplicaId> {
        self.shared.peers().keys().copied().collect()
    }

    fn max_message_size(&self) -> usize {
        self.shared.config.max_message_size
    }

    fn send(&self, to: ReplicaId, message: Bytes) -> Result<(), SendError> {
        let max = self.shared.config.max_message_size;
        if message.len() > max {
            return Err(SendError::TooLarge {
                len: message.len(),
                max,
            });
        }
        // The read guard is held only for this non-blocking call.
        let peers = self.shared.peers();
        let slot = peers.get(&to).ok_or(SendError::UnknownPeer(to))?;
        let len = message.len();
        // Reserve the bytes first so concurrent senders cannot together pass
        // the byte limit.
        let before = slot.queued_bytes.fetch_add(len, Ordering::AcqRel);
        if before + len > self.shared.config.send_queue_bytes {
            slot.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            slot.dropped.fetch_add(1, Ordering::Relaxed);
            return Err(SendError::QueueFull { peer: to });
        }
        match slot.queue.try_send(message) {
            Ok(()) => {
                // Holds under concurrent senders thanks to the reservation.
                invariant!(
                    slot.queued_bytes.load(Ordering::Acquire)
                        <= self.shared.config.send_queue_bytes
                );
                Ok(())
            }
            Err(err) => {
                slot.queued_bytes.fetch_sub(len, Ordering::AcqRel);
                match err {
                    mpsc::error::TrySendError::Full(_) => {
                        slot.dropped.fetch_add(1, Ordering::Relaxed);
                        Err(SendError::QueueFull { peer: to })
                    }
                    mpsc::error::TrySendError::Closed(_) => Err(SendError::Closed),
                }
            }
        }
    }

    fn stats(&self) -> TransportStats {
        let peers = self
            .shared
            .peers()
            .iter()
            .map(|(&peer, slot)| PeerStats {
                peer,
                sent: slot.sent.load(Ordering::Relaxed),
                dropped: slot.dropped.load(Ordering::Relaxed),
                received: slot.received.load(Ordering::Relaxed),
                queued: slot.queue.max_capacity() - slot.queue.capacity(),
                queued_bytes: slot.queued_bytes.load(Ordering::Relaxed),
                connected: slot.connected.load(Ordering::Relaxed),
                connections: slot.connections.load(Ordering::Relaxed),
            })
            .collect();
        TransportStats {
            peers,
            rejected_connections: self.shared.rejected_connections.load(Ordering::Relaxed),
            frame_errors: self.shared.frame_errors.load(Ordering::Relaxed),
        }
    }
}

/// Random 8-byte connection ids, valid for any process: lets a restarted
/// endpoint answer packets of its predecessor's connections with a stateless
/// reset (quinn rate-limits resets, and a reset is smaller than the packet
/// that caused it, so this cannot amplify).
struct RandomCidGenerator {
    rng: ring::rand::SystemRandom,
}

impl Default for RandomCidGenerator {
    fn default() -> Self {
        RandomCidGenerator {
            rng: ring::rand::SystemRandom::new(),
        }
    }
}

impl quinn::ConnectionIdGenerator for RandomCidGenerator {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        use ring::rand::SecureRandom;
        let mut bytes = [0u8; 8];
        if self.rng.fill(&mut bytes).is_err() {
            // The OS generator failing is near impossible; fall back to the
            // randomly keyed std hasher rather than panic.
            let random = std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish();
            bytes = random.to_le_bytes();
        }
        quinn::ConnectionId::new(&bytes)
    }

    fn cid_len(&self) -> usize {
        8
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

fn transport_config(config: &QuicConfig) -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    // One stream per direction; a peer may reopen one after the first ends.
    transport.max_concurrent_uni_streams(VarInt::from_u32(1));
    transport.max_concurrent_bidi_streams(VarInt::from_u32(0));
    transport.max_idle_timeout(quinn::IdleTimeout::try_from(config.idle_timeout).ok());
    transport.keep_alive_interval(Some(config.idle_timeout / 3));
    // Flow-control windows bound what a peer can make us buffer.
    let window = (config.max_message_size as u64 * 2).clamp(1 << 20, 64 << 20);
    transport.stream_receive_window(VarInt::from_u64(window).unwrap_or(VarInt::MAX));
    transport.receive_window(VarInt::from_u64(window).unwrap_or(VarInt::MAX));
    transport.send_window(window);
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(config.max_udp_payload);
    transport.mtu_discovery_config(Some(mtu));
    transport
}

/// A random factor in [0.75, 1.25) so redialling peers do not synchronise.
fn jitter(delay: Duration) -> Duration {
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let factor = 0.75 + (random % 1000) as f64 / 2000.0;
    delay.mul_f64(factor)
}

/// The sender task of one peer: connect, write batches, reconnect.
async fn run_peer(
    shared: Arc<Shared>,
    endpoint: Endpoint,
    peer: ReplicaId,
    slot: Arc<PeerSlot>,
    mut queue: mpsc::Receiver<Bytes>,
) {
    let mut accepted = slot.accepted.subscribe();
    let mut backoff = shared.config.reconnect_initial;
    loop {
        let connection = if shared.dials(peer) {
            match dial(&shared, &endpoint, peer, slot.addr).await {
                Ok(connection) => {
                    let task = receive_streams(
                        shared.clone(),
                        connection.clone(),
                        peer,
                        slot.clone(),
                        None,
                    );
                    shared.spawn_for_peer(&slot, task);
                    connection
                }
                Err(why) => {
                    debug!(local = %shared.local_id, %peer, "dial failed: {why}; retrying in {backoff:?}");
                    tokio::time::sleep(jitter(backoff)).await;
                    backoff = (backoff * 2).min(shared.config.reconnect_max);
                    continue;
                }
            }
        } else {
            let live = accepted
                .wait_for(|c| c.as_ref().is_some_and(|c| c.close_reason().is_none()))
                .await;
            match live {
                Ok(connection) => match connection.as_ref() {
                    Some(connection) => connection.clone(),
                    None => continue,
                },
                Err(_) => return,
            }
        };
        slot.connections.fetch_add(1, Ordering::Relaxed);
        slot.connected.store(true, Ordering::Relaxed);
        let began = tokio::time::Instant::now();
        let result = pump(&shared, &slot, &connection, &mut queue).await;
        slot.connected.store(false, Ordering::Relaxed);
        match result {
            Ok(()) => return, // The transport is gone.
            Err(why) => {
                debug!(local = %shared.local_id, %peer, "connection lost: {why}");
                connection.close(
                    VarInt::from_u32(close_code::SEND_FAILED),
                    b"send stream failed",
                );
                // Redial at once after a connection that lasted (a restarted
                // peer), but back off when connections keep dying young (a
                // peer that refuses us after the handshake), so a
                // misconfiguration cannot become a tight reconnect loop.
                if began.elapsed() >= shared.config.reconnect_max {
                    backoff = shared.config.reconnect_initial;
                } else if shared.dials(peer) {
                    tokio::time::sleep(jitter(backoff)).await;
                    backoff = (backoff * 2).min(shared.config.reconnect_max);
                }
            }
        }
    }
}

async fn dial(
    shared: &Shared,
    endpoint: &Endpoint,
    peer: ReplicaId,
    addr: SocketAddr,
) -> Result<Connection, String> {
    let connecting = endpoint
        .connect(addr, &replica_dns_name(peer))
        .map_err(|e| e.to_string())?;
    let connection = match tokio::time::timeout(shared.config.handshake_timeout, connecting).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(quinn::ConnectionError::TransportError(e))) => {
            // A TLS failure (wrong CA, wrong replica name) is a rejection.
            shared.rejected_connections.fetch_add(1, Ordering::Relaxed);
            warn!(local = %shared.local_id, %peer, %addr, "handshake with peer rejected: {e}");
            return Err(e.to_string());
        }
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err("handshake timed out".into()),
    };
    // rustls already checked the name; check again on what we actually got.
    let chain = tls::peer_chain(&connection).unwrap_or_default();
    if let Err(e) = shared.verifier.verify(&chain, peer) {
        let why = format!("server certificate is not {peer}'s: {e}");
        shared.reject(&connection, &why);
        return Err(why);
    }
    Ok(connection)
}

/// Writes the hello, then batches of queued messages, until the connection
/// fails (`Err`) or the queue closes because the transport is gone (`Ok`).
async fn pump(
    shared: &Shared,
    slot: &PeerSlot,
    connection: &Connection,
    queue: &mut mpsc::Receiver<Bytes>,
) -> Result<(), String> {
    let checksum = shared.config.checksum;
    let mut stream = connection.open_uni().await.map_err(|e| e.to_string())?;
    let mut buffer = BytesMut::with_capacity(64 * 1024);
    frame::encode_hello(&mut buffer, shared.local_id.0, checksum);
    stream
        .write_all_chunks(&mut [buffer.split().freeze()])
        .await
        .map_err(|e| e.to_string())?;
    let mut batch = Vec::with_capacity(MAX_BATCH_MESSAGES);
    let mut chunks = Vec::with_capacity(2 * MAX_BATCH_MESSAGES + 1);
    loop {
        let taken = tokio::select! {
            taken = queue.recv_many(&mut batch, MAX_BATCH_MESSAGES) => taken,
            reason = connection.closed() => return Err(reason.to_string()),
        };
        if taken == 0 {
            return Ok(());
        }
        let bytes: usize = batch.iter().map(Bytes::len).sum();
        slot.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
        encode_batch(&mut batch, &mut buffer, &mut chunks, checksum);
        if let Err(e) = stream.write_all_chunks(&mut chunks).await {
            // The batch is lost with the connection; Paxos retransmits.
            slot.dropped.fetch_add(taken as u64, Ordering::Relaxed);
            chunks.clear();
            return Err(e.to_string());
        }
        slot.sent.fetch_add(taken as u64, Ordering::Relaxed);
        chunks.clear();
    }
}

/// Turns queued messages into stream chunks: small frames coalesced into
/// one buffer (one write for many messages), large payloads passed through
/// as their own chunk after their header (no copy).
fn encode_batch(
    batch: &mut Vec<Bytes>,
    buffer: &mut BytesMut,
    chunks: &mut Vec<Bytes>,
    checksum: bool,
) {
    requires!(chunks.is_empty());
    let messages = batch.len();
    let payload: usize = batch.iter().map(Bytes::len).sum();
    for message in batch.drain(..) {
        if message.len() <= COALESCE_LIMIT {
            frame::encode_frame(buffer, 0, &message, checksum);
        } else {
            buffer.extend_from_slice(&frame::encode_header(0, &message, checksum));
            chunks.push(buffer.split().freeze());
            chunks.push(message);
        }
    }
    if !buffer.is_empty() {
        chunks.push(buffer.split().freeze());
    }
    ensures!(
        chunks.iter().map(Bytes::len).sum::<usize>() == payload + messages * frame::HEADER_LEN
    );
}

/// Accepts incoming connections, with a bound on handshakes in progress.
async fn accept_loop(shared: Arc<Shared>, endpoint: Endpoint) {
    let pending = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
    while let Some(incoming) = endpoint.accept().await {
        let Ok(permit) = pending.clone().try_acquire_owned() else {
            warn!(local = %shared.local_id, remote = %incoming.remote_address(), "too many handshakes in progress; refusing");
            incoming.refuse();
            continue;
        };
        let task_shared = shared.clone();
        shared.spawn(async move {
            let _permit = permit;
            let remote = incoming.remote_address();
            let connecting = match incoming.accept() {
                Ok(connecting) => connecting,
                Err(e) => return debug!(remote = %remote, "incoming connection failed: {e}"),
            };
            match tokio::time::timeout(task_shared.config.handshake_timeout, connecting).await {
                Ok(Ok(connection)) => admit(task_shared, connection).await,
                Ok(Err(e)) => {
                    // Typically a client without a valid certificate of our CA.
                    task_shared.rejected_connections.fetch_add(1, Ordering::Relaxed);
                    warn!(local = %task_shared.local_id, %remote, "incoming handshake rejected: {e}");
                }
                Err(_) => warn!(local = %task_shared.local_id, %remote, "incoming handshake timed out"),
            }
        });
    }
}

/// Reads an accepted connection's hello, checks that the claimed id is a
/// peer that dials us and that its certificate names that id, then hands the
/// connection to the peer's sender task and keeps reading the stream.
async fn admit(shared: Arc<Shared>, connection: Connection) {
    let hello = tokio::time::timeout(shared.config.handshake_timeout, async {
        let mut recv = connection.accept_uni().await.map_err(|e| e.to_string())?;
        let mut decoder = FrameDecoder::new(shared.config.max_message_size);
        let claimed = read_hello(&mut recv, &mut decoder)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>((recv, decoder, claimed))
    })
    .await;
    let (recv, decoder, claimed) = match hello {
        Ok(Ok(hello)) => hello,
        Ok(Err(why)) => return shared.reject(&connection, &format!("no valid hello: {why}")),
        Err(_) => return shared.reject(&connection, "no hello before the handshake timeout"),
    };
    let Some(slot) = shared.peer(claimed) else {
        return shared.reject(
            &connection,
            &format!("hello claims {claimed}, which is not a peer"),
        );
    };
    if shared.dials(claimed) {
        return shared.reject(
            &connection,
            &format!("{claimed} dialled us, but we dial it"),
        );
    }
    let chain = tls::peer_chain(&connection).unwrap_or_default();
    if let Err(e) = shared.verifier.verify(&chain, claimed) {
        return shared.reject(
            &connection,
            &format!("hello claims {claimed} but the certificate does not name it: {e}"),
        );
    }
    info!(local = %shared.local_id, peer = %claimed, remote = %connection.remote_address(), "peer connected");
    if let Some(old) = slot.accepted.send_replace(Some(connection.clone())) {
        if old.stable_id() != connection.stable_id() {
            old.close(
                VarInt::from_u32(close_code::SUPERSEDED),
                b"superseded by a newer connection",
            );
        }
    }
    // A peer removed while (or just before) it is being served is cut off.
    let mut removed = slot.removed.subscribe();
    let first = Some((recv, decoder));
    tokio::select! {
        _ = receive_streams(shared, connection.clone(), claimed, slot.clone(), first) => {}
        _ = removed.wait_for(|removed| *removed) => {
            connection.close(VarInt::from_u32(close_code::REMOVED), b"peer removed");
        }
    }
}

/// Reads frames until the first one, which must be a hello.
async fn read_hello(
    recv: &mut RecvStream,
    decoder: &mut FrameDecoder,
) -> Result<ReplicaId, StreamError> {
    loop {
        if let Some(frame) = decoder.next_frame()? {
            if !frame.is_hello() {
                return Err(StreamError::Protocol(
                    "stream does not start with a hello".into(),
                ));
            }
            return Ok(ReplicaId(frame.hello_id()?));
        }
        match recv.read_chunk(READ_CHUNK, true).await? {
            Some(chunk) => decoder.extend(&chunk.bytes),
            None => {
                decoder.finish()?;
                return Err(StreamError::Protocol(
                    "stream ended before its hello".into(),
                ));
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Read(#[from] quinn::ReadError),
    #[error("{0}")]
    Protocol(String),
    #[error("inbound channel closed")]
    InboundClosed,
}

/// Reads every stream `peer` opens on `connection` (one at a time), each
/// starting with a hello naming `peer`, and delivers the messages.
async fn receive_streams(
    shared: Arc<Shared>,
    connection: Connection,
    peer: ReplicaId,
    slot: Arc<PeerSlot>,
    mut first: Option<(RecvStream, FrameDecoder)>,
) {
    loop {
        let (mut recv, mut decoder) = match first.take() {
            Some(stream) => stream,
            None => {
                let Ok(mut recv) = connection.accept_uni().await else {
                    return;
                };
                let mut decoder = FrameDecoder::new(shared.config.max_message_size);
                match read_hello(&mut recv, &mut decoder).await {
                    Ok(id) if id == peer => (recv, decoder),
                    Ok(id) => {
                        return shared
                            .reject(&connection, &format!("hello claims {id}, expected {peer}"))
                    }
                    Err(e) => return stream_failed(&shared, &connection, peer, e),
                }
            }
        };
        match deliver(&shared, &slot, peer, &mut recv, &mut decoder).await {
            Ok(()) => continue,
            Err(StreamError::InboundClosed) => return,
            Err(e) => return stream_failed(&shared, &connection, peer, e),
        }
    }
}

fn stream_failed(shared: &Shared, connection: &Connection, peer: ReplicaId, error: StreamError) {
    match error {
        StreamError::Read(e) => debug!(local = %shared.local_id, %peer, "stream closed: {e}"),
        StreamError::InboundClosed => {}
        error => {
            shared.frame_errors.fetch_add(1, Ordering::Relaxed);
            warn!(local = %shared.local_id, %peer, "closing connection on a bad stream: {error}");
            connection.close(VarInt::from_u32(close_code::FRAME_ERROR), b"bad frame");
        }
    }
}

/// Delivers the frames of one stream until it ends cleanly.
async fn deliver(
    shared: &Shared,
    slot: &PeerSlot,
    peer: ReplicaId,
    recv: &mut RecvStream,
    decoder: &mut FrameDecoder,
) -> Result<(), StreamError> {
    loop {
        while let Some(frame) = decoder.next_frame()? {
            if frame.is_hello() {
                return Err(StreamError::Protocol(
                    "hello in the middle of a stream".into(),
                ));
            }
            shared
                .inbound
                .send((peer, frame.payload))
                .await
                .map_err(|_| StreamError::InboundClosed)?;
            slot.received.fetch_add(1, Ordering::Relaxed);
        }
        match recv.read_chunk(READ_CHUNK, true).await? {
            Some(chunk) => decoder.extend(&chunk.bytes),
            None => return Ok(decoder.finish()?),
        }
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Raw connections that misbehave on purpose, for rejection tests.
    use super::*;

    /// Dials `addr` as a client with `identity`, expecting server
    /// `server_id`, opens a stream, sends a hello claiming `claimed`, then
    /// writes `after_hello` verbatim and finishes the stream. Returns the
    /// connection for the caller to watch.
    pub(crate) async fn dial_raw(
        identity: &NodeIdentity,
        addr: SocketAddr,
        server_id: ReplicaId,
        claimed: ReplicaId,
        after_hello: &[u8],
    ) -> Result<Connection, String> {
        let client_crypto = QuicClientConfig::try_from(
            tls::rustls_client_config(identity).map_err(|e| e.to_string())?,
        )
        .map_err(|e| e.to_string())?;
        let local: SocketAddr = "127.0.0.1:0"
            .parse()
            .map_err(|e: std::net::AddrParseError| e.to_string())?;
        let mut endpoint = Endpoint::client(local).map_err(|e| e.to_string())?;
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(client_crypto)));
        let connection = endpoint
            .connect(addr, &replica_dns_name(server_id))
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let mut stream = connection.open_uni().await.map_err(|e| e.to_string())?;
        let mut buffer = BytesMut::new();
        frame::encode_hello(&mut buffer, claimed.0, false);
        buffer.extend_from_slice(after_hello);
        stream.write_all(&buffer).await.map_err(|e| e.to_string())?;
        stream.finish().map_err(|e| e.to_string())?;
        Ok(connection)
    }
}

#[cfg(test)]
mod tests {
    use super::size_socket_buffers;

    fn sysctl(name: &str) -> Option<usize> {
        std::fs::read_to_string(format!("/proc/sys/net/core/{name}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    #[test]
    fn socket_buffers_are_raised_up_to_the_kernel_cap() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let sock = socket2::SockRef::from(&socket);
        let before = sock.recv_buffer_size().unwrap();
        let want = 4 << 20;
        size_socket_buffers(&socket, want);
        let (Some(rmem_max), Some(wmem_max)) = (sysctl("rmem_max"), sysctl("wmem_max")) else {
            return; // not Linux: nothing to compare against
        };
        // Linux reports double the usable size.
        let recv = sock.recv_buffer_size().unwrap() / 2;
        let send = sock.send_buffer_size().unwrap() / 2;
        assert_eq!(recv, want.min(rmem_max), "recv buffer (was {before})");
        assert_eq!(send, want.min(wmem_max), "send buffer");
    }
}
