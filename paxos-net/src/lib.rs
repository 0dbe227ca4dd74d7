//! paxos-net: the transport between replicas.
//!
//! # Role
//!
//! paxos-core is sans-IO: it emits messages as opaque encoded [`Bytes`] and
//! consumes the ones peers sent. This crate moves those bytes between
//! replicas. It knows replica ids ([`ReplicaId`](paxos_core::ReplicaId))
//! and nothing of the protocol. It provides:
//!
//! - [`Transport`]: non-blocking `send(to, Bytes)` into a bounded per-peer
//!   queue, plus a bounded [`Inbound`] receiver of `(ReplicaId, Bytes)`;
//! - [`QuicTransport`]: quinn over rustls (ring provider, TLS 1.3), mutual
//!   TLS against a cluster CA, one connection per replica pair, reconnect
//!   with exponential backoff;
//! - [`MemoryTransport`]: the same contract in process, for tests;
//! - [`FaultyTransport`]: drop / delay / partition injection over any
//!   transport, switchable at run time through a [`FaultHandle`];
//! - [`certs`]: cluster CA and per-replica certificates (rcgen), PEM files.
//!
//! # Wire format
//!
//! Each side of a connection opens one unidirectional QUIC stream and writes
//! frames ([`frame`]): a 12-byte header (`b"PX"`, version 1, flags, payload
//! length u32 LE, optional CRC-32C) read in place with zerocopy, then the
//! payload. The first frame of every stream is a hello carrying the sender's
//! replica id. Payloads are capped (16 MiB by default, 64 MiB ceiling); the
//! cap is checked on the header alone, before anything is buffered.
//!
//! # Identity
//!
//! A replica's certificate carries the DNS name `replica-<id>.paxos`, signed
//! by the cluster CA. The lower id of a pair dials the higher one with that
//! server name, so rustls rejects a server that is not the expected replica.
//! The acceptor requires a client certificate chained to the CA, then
//! checks that it names the id claimed by the peer's hello. Every rejection
//! is logged (`warn`) and counted in [`TransportStats::rejected_connections`].
//!
//! # Ordering and loss
//!
//! Messages to one peer are written, in `send` order, to one stream, so
//! those that arrive arrive in order (per-peer FIFO) for the life of a
//! connection. Messages are lost when a queue is full, or when a connection
//! breaks (the batch being written and anything QUIC had not delivered). No
//! order holds across peers. Across a reconnect, the receiver may still be
//! delivering the last buffered messages of the old connection while the
//! first ones of the new connection arrive, so a few messages can be
//! reordered at that boundary.
//!
//! # Failure detection
//!
//! A clean shutdown closes connections, and peers redial at once. A killed
//! replica sends nothing; when it restarts on the same address, its
//! stateless-reset key (derived from its private key, so stable across
//! restarts) lets it reset its predecessor's connections on their first
//! packet, so peers reconnect without waiting for the idle timeout (5 s by
//! default, with keep-alives at a third of it). A replica that stays down is
//! detected by the idle timeout.
//!
//! Paxos needs none of this for safety: it tolerates loss, duplication (a
//! retransmission) and reordering, and retransmits on its own timers. FIFO
//! per peer is a liveness and efficiency nicety (pipelined accepts arrive in
//! slot order, so fewer gaps trigger recovery).
//!
//! # Invariants
//!
//! - `send` never blocks and never awaits the network.
//! - Memory is bounded: per peer at most `send_queue_messages` messages and
//!   `send_queue_bytes` bytes are queued; inbound at most `inbound_capacity`
//!   messages plus QUIC's flow-control windows; a decoder buffers at most one
//!   frame plus one 64 KiB read.
//! - A slow or dead peer fills only its own queue; sends to others go on.
//! - Nothing from the network panics: malformed, truncated, oversized frames
//!   and bad hellos close that connection with a logged error and are
//!   counted in [`TransportStats::frame_errors`].
//! - Crypto is ring only: configurations are built with an explicit ring
//!   `CryptoProvider`, never the process default.
//!
//! # Examples
//!
//! The in-memory transport, as tests use it:
//!
//! ```
//! use paxos_net::{Bytes, MemoryNetwork, Transport};
//! use paxos_core::ReplicaId;
//!
//! let network = MemoryNetwork::new(1024, 1 << 20);
//! let (a, _a_inbound) = network.join(ReplicaId(1));
//! let (_b, mut b_inbound) = network.join(ReplicaId(2));
//! a.send(ReplicaId(2), Bytes::from_static(b"prepare")).unwrap();
//! assert_eq!(b_inbound.try_recv().unwrap(), (ReplicaId(1), Bytes::from_static(b"prepare")));
//! ```
//!
//! A replica of a QUIC cluster whose certificates `init` wrote with
//! [`generate_cluster`]:
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use paxos_net::{NodeIdentity, QuicConfig, QuicTransport, Transport, Bytes};
//! use paxos_core::ReplicaId;
//! use std::path::Path;
//!
//! let dir = Path::new("/var/lib/paxos/certs");
//! paxos_net::generate_cluster(dir, &[ReplicaId(1), ReplicaId(2), ReplicaId(3)])?; // once, at init
//! let identity = NodeIdentity::load_from_dir(dir, ReplicaId(1))?;
//! let peers = [(ReplicaId(2), "10.0.0.2:7000".parse()?), (ReplicaId(3), "10.0.0.3:7000".parse()?)].into();
//! let (transport, mut inbound) = QuicTransport::bind(QuicConfig::new(identity, peers), "0.0.0.0:7000".parse()?)?;
//! transport.broadcast(Bytes::from_static(b"encoded message"));
//! while let Some((from, message)) = inbound.recv().await {
//!     // Hand (from, message) to paxos-core's codec and replica.
//! #   let _ = (from, message);
//! }
//! # Ok(()) }
//! ```

pub mod certs;
pub mod fault;
pub mod frame;
pub mod memory;
pub mod quic;
#[cfg(test)]
mod quic_tests;
mod tls;
pub mod transport;

pub use bytes::Bytes;
pub use certs::{generate_cluster, CertError, NodeIdentity};
pub use fault::{FaultCommand, FaultHandle, FaultStats, FaultyTransport};
pub use memory::{MemoryNetwork, MemoryTransport};
pub use quic::{NetError, QuicConfig, QuicTransport};
pub use tls::ALPN;
pub use transport::{Inbound, PeerStats, SendError, Transport, TransportStats};
