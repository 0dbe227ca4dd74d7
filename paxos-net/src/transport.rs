//! The [`Transport`] trait shared by the QUIC, in-memory and fault-injecting
//! transports, with its error and statistics types.

use bytes::Bytes;
use paxos_core::ReplicaId;
use tokio::sync::mpsc;

/// Messages received from peers, in arrival order per peer. Bounded: when the
/// consumer falls behind, readers stop reading and QUIC flow control pushes
/// back on the senders, whose own bounded queues then drop.
pub type Inbound = mpsc::Receiver<(ReplicaId, Bytes)>;

/// Why a message was not queued for sending.
///
/// Only `QueueFull` is expected in normal operation (a slow or dead peer).
/// Paxos tolerates the loss: it retransmits on its own timers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The peer's bounded queue (count or bytes) is full; the message was
    /// dropped and counted in [`PeerStats::dropped`].
    #[error("send queue to {peer} is full; message dropped")]
    QueueFull {
        /// The destination.
        peer: ReplicaId,
    },
    /// The destination is not a configured peer.
    #[error("{0} is not a peer of this transport")]
    UnknownPeer(ReplicaId),
    /// The message exceeds the transport's maximum message size.
    #[error("message of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Message length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The transport has shut down.
    #[error("transport is closed")]
    Closed,
}

/// Counters for one peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerStats {
    /// The peer.
    pub peer: ReplicaId,
    /// Messages handed to the network (written to the stream).
    pub sent: u64,
    /// Messages dropped at send time: queue full, or lost with a broken
    /// connection, or dropped by fault injection.
    pub dropped: u64,
    /// Messages received from this peer and delivered to the inbound queue.
    pub received: u64,
    /// Messages waiting in the send queue now.
    pub queued: usize,
    /// Bytes waiting in the send queue now.
    pub queued_bytes: usize,
    /// Whether a connection to the peer is up now.
    pub connected: bool,
    /// Connections established to or from this peer so far.
    pub connections: u64,
}

/// Counters for a whole transport.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Per peer, ordered by id.
    pub peers: Vec<PeerStats>,
    /// Connections refused: bad or missing certificate, id mismatch, bad hello.
    pub rejected_connections: u64,
    /// Streams or connections closed because of a framing error.
    pub frame_errors: u64,
}

impl TransportStats {
    /// The counters of one peer.
    pub fn peer(&self, peer: ReplicaId) -> Option<&PeerStats> {
        self.peers.iter().find(|p| p.peer == peer)
    }
}

/// Sends opaque messages to peers, without blocking.
///
/// Messages are opaque [`Bytes`] (paxos-core's codec encodes them). Inbound
/// messages arrive on the [`Inbound`] receiver returned by each
/// transport's constructor.
///
/// Contract of every implementation:
/// - `send` never blocks and never waits for the network: it queues the
///   message in a bounded per-peer queue or fails at once;
/// - a slow or dead peer affects only its own queue;
/// - delivery is best effort: messages may be lost (queue full, connection
///   broken, fault injection). Messages that are delivered arrive in the
///   order they were sent to that peer, except under fault injection with a
///   changing delay.
pub trait Transport: Send + Sync + 'static {
    /// This replica's id.
    fn local_id(&self) -> ReplicaId;

    /// The peers this transport can send to, in id order.
    fn peers(&self) -> Vec<ReplicaId>;

    /// The largest message `send` accepts.
    fn max_message_size(&self) -> usize;

    /// Queues `message` for `to`, or fails at once.
    fn send(&self, to: ReplicaId, message: Bytes) -> Result<(), SendError>;

    /// Current counters.
    fn stats(&self) -> TransportStats;

    /// Queues `message` for every peer; returns how many queues took it.
    /// `Bytes` clones share the buffer, so this does not copy the message.
    fn broadcast(&self, message: Bytes) -> usize {
        self.peers()
            .into_iter()
            .filter(|&peer| self.send(peer, message.clone()).is_ok())
            .count()
    }
}

impl<T: Transport + ?Sized> Transport for std::sync::Arc<T> {
    fn local_id(&self) -> ReplicaId {
        (**self).local_id()
    }
    fn peers(&self) -> Vec<ReplicaId> {
        (**self).peers()
    }
    fn max_message_size(&self) -> usize {
        (**self).max_message_size()
    }
    fn send(&self, to: ReplicaId, message: Bytes) -> Result<(), SendError> {
        (**self).send(to, message)
    }
    fn stats(&self) -> TransportStats {
        (**self).stats()
    }
    fn broadcast(&self, message: Bytes) -> usize {
        (**self).broadcast(message)
    }
}
