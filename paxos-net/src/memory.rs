//! An in-process transport for tests: replicas joined to one
//! [`MemoryNetwork`] send straight into each other's bounded inbound queues.
//!
//! It keeps the [`Transport`] contract: `send` never blocks; a full receiver
//! queue drops the message (counted) and affects only sends to that
//! receiver; messages to one peer arrive in send order. It needs no tokio
//! runtime to send.

use crate::transport::{Inbound, PeerStats, SendError, Transport, TransportStats};
use bytes::Bytes;
use paxos_contracts::requires;
use paxos_core::ReplicaId;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use tokio::sync::mpsc;

type Mailbox = mpsc::Sender<(ReplicaId, Bytes)>;

/// A set of in-memory endpoints that can reach each other.
#[derive(Clone, Debug)]
pub struct MemoryNetwork {
    inner: Arc<NetworkInner>,
}

#[derive(Debug)]
struct NetworkInner {
    mailboxes: RwLock<BTreeMap<ReplicaId, Mailbox>>,
    inbound_capacity: usize,
    max_message: usize,
}

impl MemoryNetwork {
    /// A network whose endpoints each buffer at most `inbound_capacity`
    /// undelivered messages, of at most `max_message` bytes each.
    pub fn new(inbound_capacity: usize, max_message: usize) -> Self {
        requires!(
            inbound_capacity > 0,
            "a zero-capacity queue could never deliver"
        );
        MemoryNetwork {
            inner: Arc::new(NetworkInner {
                mailboxes: RwLock::new(BTreeMap::new()),
                inbound_capacity,
                max_message,
            }),
        }
    }

    /// Joins replica `id` to the network. Joining an id again replaces the
    /// old endpoint (a restart): messages queued for the old one are lost.
    pub fn join(&self, id: ReplicaId) -> (MemoryTransport, Inbound) {
        let (tx, rx) = mpsc::channel(self.inner.inbound_capacity);
        self.inner
            .mailboxes
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, tx);
        let transport = MemoryTransport {
            id,
            network: self.inner.clone(),
            counters: Mutex::new(BTreeMap::new()),
        };
        (transport, rx)
    }

    /// Removes replica `id` (a crash): sends to it fail as dropped.
    pub fn leave(&self, id: ReplicaId) {
        self.inner
            .mailboxes
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
    }
}

/// One endpoint of a [`MemoryNetwork`].
#[derive(Debug)]
pub struct MemoryTransport {
    id: ReplicaId,
    network: Arc<NetworkInner>,
    counters: Mutex<BTreeMap<ReplicaId, PeerStats>>,
}

impl MemoryTransport {
    fn count(&self, peer: ReplicaId, update: impl FnOnce(&mut PeerStats)) {
        let mut counters = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        update(counters.entry(peer).or_insert_with(|| PeerStats {
            peer,
            ..PeerStats::default()
        }));
    }
}

impl Transport for MemoryTransport {
    fn local_id(&self) -> ReplicaId {
        self.id
    }

    fn peers(&self) -> Vec<ReplicaId> {
        let mailboxes = self
            .network
            .mailboxes
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        mailboxes
            .keys()
            .copied()
            .filter(|&id| id != self.id)
            .collect()
    }

    fn max_message_size(&self) -> usize {
        self.network.max_message
    }

    fn send(&self, to: ReplicaId, message: Bytes) -> Result<(), SendError> {
        if message.len() > self.network.max_message {
            return Err(SendError::TooLarge {
                len: message.len(),
                max: self.network.max_message,
            });
        }
        if to == self.id {
            return Err(SendError::UnknownPeer(to));
        }
        let mailbox = {
            let mailboxes = self
                .network
                .mailboxes
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            mailboxes.get(&to).cloned()
        };
        let Some(mailbox) = mailbox else {
            // A crashed or never-joined peer: the network loses the message.
            self.count(to, |s| s.dropped += 1);
            return Err(SendError::QueueFull { peer: to });
        };
        match mailbox.try_send((self.id, message)) {
            Ok(()) => {
                self.count(to, |s| s.sent += 1);
                Ok(())
            }
            Err(_) => {
                self.count(to, |s| s.dropped += 1);
                Err(SendError::QueueFull { peer: to })
            }
        }
    }

    fn stats(&self) -> TransportStats {
        let counters = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        let peers = self
            .peers()
            .into_iter()
            .map(|peer| {
                let mut stats = counters.get(&peer).cloned().unwrap_or(PeerStats {
                    peer,
                    ..PeerStats::default()
                });
                stats.connected = true;
                stats
            })
            .collect();
        TransportStats {
            peers,
            ..TransportStats::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_arrive_in_order_with_the_sender_id() {
        let net = MemoryNetwork::new(16, 1024);
        let (a, _a_in) = net.join(ReplicaId(1));
        let (_b, mut b_in) = net.join(ReplicaId(2));
        for i in 0..10u8 {
            a.send(ReplicaId(2), Bytes::from(vec![i])).unwrap();
        }
        for i in 0..10u8 {
            let (from, msg) = b_in.try_recv().unwrap();
            assert_eq!(from, ReplicaId(1));
            assert_eq!(msg.as_ref(), &[i]);
        }
        assert_eq!(a.stats().peer(ReplicaId(2)).unwrap().sent, 10);
    }

    #[test]
    fn a_full_receiver_drops_without_blocking_others() {
        let net = MemoryNetwork::new(4, 1024);
        let (a, _a_in) = net.join(ReplicaId(1));
        let (_slow, _slow_in) = net.join(ReplicaId(2));
        let (_fast, mut fast_in) = net.join(ReplicaId(3));
        let mut full = 0;
        for _ in 0..10 {
            if a.send(ReplicaId(2), Bytes::from_static(b"x"))
                == Err(SendError::QueueFull { peer: ReplicaId(2) })
            {
                full += 1;
            }
            a.send(ReplicaId(3), Bytes::from_static(b"y")).unwrap();
            fast_in.try_recv().unwrap();
        }
        assert_eq!(full, 6);
        assert_eq!(a.stats().peer(ReplicaId(2)).unwrap().dropped, 6);
    }

    #[test]
    fn errors_for_oversized_self_and_departed_peers() {
        let net = MemoryNetwork::new(4, 8);
        let (a, _a_in) = net.join(ReplicaId(1));
        let (_b, _b_in) = net.join(ReplicaId(2));
        assert_eq!(
            a.send(ReplicaId(2), Bytes::from_static(b"123456789")),
            Err(SendError::TooLarge { len: 9, max: 8 })
        );
        assert_eq!(
            a.send(ReplicaId(1), Bytes::new()),
            Err(SendError::UnknownPeer(ReplicaId(1)))
        );
        net.leave(ReplicaId(2));
        assert!(a.send(ReplicaId(2), Bytes::new()).is_err());
        assert!(a.peers().is_empty());
    }

    #[test]
    fn broadcast_reaches_every_peer() {
        let net = MemoryNetwork::new(4, 64);
        let (a, _a_in) = net.join(ReplicaId(1));
        let (_b, mut b_in) = net.join(ReplicaId(2));
        let (_c, mut c_in) = net.join(ReplicaId(3));
        assert_eq!(a.broadcast(Bytes::from_static(b"hi")), 2);
        assert_eq!(b_in.try_recv().unwrap().1.as_ref(), b"hi");
        assert_eq!(c_in.try_recv().unwrap().1.as_ref(), b"hi");
    }
}
