//! The membership directory: the replicated address book of members and the
//! last reconfiguration applied, kept by the node (never by the application)
//! and written into every checkpoint; and the local view that merges it with
//! the addresses a node was configured with.
//!
//! # Why the address book is replicated
//!
//! A node added by reconfiguration must be reachable by every member, and a
//! node joining later must reach it too. Rather than editing every node's
//! config file, an operator first *registers* the new node's addresses
//! through the log (a directory decree, see [`crate::framing`]); every
//! replica applies it in slot order, so every replica knows the address
//! before the `Reconfigure` that makes the node a member is even proposed.
//!
//! Directory command encoding (one request of a directory decree):
//!
//! ```text
//! 0x01 REGISTER  u32 id | u32 len | peer addr text | u32 len | client addr text   (UTF-8 socket addresses)
//! ```
//!
//! Replies are empty on success and a UTF-8 error message otherwise.
//!
//! # The membership in force after a restart
//!
//! paxos-core's `Config::membership` must be the membership in force after
//! the checkpoint's slot, and `Config::membership_ballot`/`membership_slot`
//! the ballot and slot of the `Apply` that delivered the last applied
//! `Reconfigure`. The directory records them when the node applies a
//! `Reconfigure` ([`Directory::apply_reconfigure`]), so a checkpoint taken at
//! any slot carries the triple that is right for that slot
//! ([`Directory::restart_membership`]).

use bytes::{BufMut, Bytes, BytesMut};
use paxos_core::{Ballot, Membership, Reconfiguration, ReplicaId, Slot};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

const CMD_REGISTER: u8 = 0x01;
/// Longest address text accepted in a register command.
const MAX_ADDR_TEXT: usize = 128;
/// Most members the book may hold (bounds decoding).
pub const MAX_BOOK_ENTRIES: usize = 4096;

/// Where one member listens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberAddrs {
    /// Replica to replica (the transport).
    pub peer: SocketAddr,
    /// Clients; used in redirects to the leader.
    pub client: SocketAddr,
}

/// The last `Reconfigure` the node applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppliedReconfigure {
    /// Its slot (it governs the slots above).
    pub slot: Slot,
    /// The ballot of the `Apply` that delivered it.
    pub ballot: Ballot,
    /// The membership it installed.
    pub membership: Membership,
}

/// The replicated directory: part of every replica's state, checkpointed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Directory {
    book: BTreeMap<ReplicaId, MemberAddrs>,
    last_reconfigure: Option<AppliedReconfigure>,
    /// Bumped on every change of the book (local, not replicated): lets the
    /// node notice a change with one integer compare.
    generation: u64,
}

/// Encodes the command that registers `id`'s addresses.
pub fn encode_register(id: ReplicaId, addrs: MemberAddrs) -> Bytes {
    let mut out = BytesMut::with_capacity(64);
    out.put_u8(CMD_REGISTER);
    out.put_u32_le(id.0);
    for a in [addrs.peer.to_string(), addrs.client.to_string()] {
        out.put_u32_le(a.len() as u32);
        out.put_slice(a.as_bytes());
    }
    out.freeze()
}

/// A bounds-checked cursor; every read returns `None` past the end.
pub(crate) struct Cursor<'a> {
    pub(crate) buf: &'a [u8],
    pub(crate) pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.buf.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(s)
    }
    pub(crate) fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    pub(crate) fn u32(&mut self) -> Option<u32> {
        let b = self.take(4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub(crate) fn u64(&mut self) -> Option<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Some(u64::from_le_bytes(a))
    }
    fn str(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn addr(&mut self) -> Option<SocketAddr> {
        let text = self.str()?;
        if text.len() > MAX_ADDR_TEXT {
            return None;
        }
        std::str::from_utf8(text).ok()?.parse().ok()
    }
    pub(crate) fn ids(&mut self) -> Option<Vec<ReplicaId>> {
        let n = self.u32()? as usize;
        if n.saturating_mul(4) > self.buf.len() - self.pos {
            return None;
        }
        (0..n).map(|_| self.u32().map(ReplicaId)).collect()
    }
    pub(crate) fn done(&self) -> bool {
        self.pos == self.buf.len()
    }
}

/// Why a directory command failed. The `Display` text is the reply.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DirectoryError {
    /// The command does not decode.
    #[error("malformed directory command")]
    Malformed,
    /// Another current member already uses one of the addresses.
    #[error("address already registered for replica {0}")]
    AddressTaken(u32),
}

impl Directory {
    /// The replicated address book.
    pub fn book(&self) -> &BTreeMap<ReplicaId, MemberAddrs> {
        &self.book
    }

    /// The last `Reconfigure` applied, if any.
    pub fn last_reconfigure(&self) -> Option<&AppliedReconfigure> {
        self.last_reconfigure.as_ref()
    }

    /// Changes whenever the book changes.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Applies the `Reconfigure` chosen at `slot` (under `ballot`) as the
    /// core does: it installs its membership only if it was based on the
    /// membership in force (see `paxos_core::Reconfiguration`); otherwise it
    /// is a no-op. Returns whether it took effect.
    pub fn apply_reconfigure(&mut self, slot: Slot, ballot: Ballot, r: &Reconfiguration) -> bool {
        paxos_contracts::requires!(
            self.last_reconfigure.as_ref().is_none_or(|l| l.slot < slot),
            "reconfigurations are applied in slot order"
        );
        let in_force = self
            .last_reconfigure
            .as_ref()
            .map_or(Slot::ZERO, |l| l.slot);
        if !r.applies_to(in_force) {
            return false;
        }
        self.last_reconfigure = Some(AppliedReconfigure {
            slot,
            ballot,
            membership: r.membership.clone(),
        });
        true
    }

    /// Sets `config.membership`, `membership_ballot` and `membership_slot`
    /// from the last reconfiguration applied (paxos-core's restart
    /// contract); leaves them alone if none was.
    pub fn restart_membership(&self, config: &mut paxos_core::Config) {
        if let Some(r) = &self.last_reconfigure {
            config.membership = r.membership.clone();
            config.membership_ballot = r.ballot;
            config.membership_slot = r.slot;
        }
    }

    /// Executes one directory command. Deterministic: depends only on the
    /// command and the replicated state. A malformed command changes
    /// nothing.
    pub fn execute(&mut self, command: &[u8]) -> Result<(), DirectoryError> {
        let mut r = Cursor {
            buf: command,
            pos: 0,
        };
        match r.u8() {
            Some(CMD_REGISTER) => {
                let id = ReplicaId(r.u32().ok_or(DirectoryError::Malformed)?);
                let peer = r.addr().ok_or(DirectoryError::Malformed)?;
                let client = r.addr().ok_or(DirectoryError::Malformed)?;
                if !r.done() || id.0 == 0 {
                    return Err(DirectoryError::Malformed);
                }
                // Addresses of replicas that left may be reused.
                let member = |r: ReplicaId| {
                    self.last_reconfigure
                        .as_ref()
                        .is_none_or(|l| l.membership.contains(r))
                };
                let taken = self.book.iter().find(|(other, a)| {
                    **other != id
                        && member(**other)
                        && (a.peer == peer
                            || a.client == client
                            || a.peer == client
                            || a.client == peer)
                });
                if let Some((other, _)) = taken {
                    return Err(DirectoryError::AddressTaken(other.0));
                }
                if self.book.len() >= MAX_BOOK_ENTRIES && !self.book.contains_key(&id) {
                    return Err(DirectoryError::Malformed);
                }
                self.book.insert(id, MemberAddrs { peer, client });
                self.generation += 1;
                Ok(())
            }
            _ => Err(DirectoryError::Malformed),
        }
    }

    /// Appends the checkpoint encoding (deterministic: the book is ordered).
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u32_le(self.book.len() as u32);
        for (id, a) in &self.book {
            out.put_u32_le(id.0);
            for text in [a.peer.to_string(), a.client.to_string()] {
                out.put_u32_le(text.len() as u32);
                out.put_slice(text.as_bytes());
            }
        }
        match &self.last_reconfigure {
            None => out.put_u8(0),
            Some(r) => {
                out.put_u8(1);
                out.put_u64_le(r.slot.0);
                out.put_u64_le(r.ballot.round);
                out.put_u32_le(r.ballot.leader.0);
                for list in [&r.membership.voters, &r.membership.learners] {
                    out.put_u32_le(list.len() as u32);
                    for id in list {
                        out.put_u32_le(id.0);
                    }
                }
            }
        }
    }

    /// Decodes what [`Directory::encode`] wrote, exactly (no bytes left
    /// over). `None` if malformed.
    pub fn decode(buf: &[u8]) -> Option<Directory> {
        let mut r = Cursor { buf, pos: 0 };
        let n = r.u32()? as usize;
        if n > MAX_BOOK_ENTRIES || n.saturating_mul(12) > buf.len() - r.pos {
            return None;
        }
        let mut book = BTreeMap::new();
        for _ in 0..n {
            let id = ReplicaId(r.u32()?);
            let (peer, client) = (r.addr()?, r.addr()?);
            book.insert(id, MemberAddrs { peer, client });
        }
        let last_reconfigure = match r.u8()? {
            0 => None,
            1 => {
                let slot = Slot(r.u64()?);
                let round = r.u64()?;
                let leader = ReplicaId(r.u32()?);
                let voters = r.ids()?;
                let learners = r.ids()?;
                let membership = Membership { voters, learners };
                if !membership.is_well_formed() {
                    return None;
                }
                Some(AppliedReconfigure {
                    slot,
                    ballot: Ballot { round, leader },
                    membership,
                })
            }
            _ => return None,
        };
        if !r.done() {
            return None;
        }
        Some(Directory {
            book,
            last_reconfigure,
            generation: 0,
        })
    }

    /// Replaces this directory with one from a checkpoint, bumping the
    /// generation so the node re-reads the book.
    pub(crate) fn replace_with(&mut self, restored: Directory) {
        let generation = self.generation + 1;
        *self = Directory {
            generation,
            ..restored
        };
    }
}

/// What a node knows about addresses: the members its configuration lists
/// (the bootstrap cluster, or for a joining node the cluster it joins),
/// overlaid by the replicated book.
#[derive(Clone, Debug, Default)]
pub struct AddressConfig {
    /// From the configuration.
    pub configured: BTreeMap<ReplicaId, MemberAddrs>,
    /// The configuration lists this node as a learner: it was provisioned
    /// to join, so not being a member (yet) does not mean it was removed.
    pub joining: bool,
}

impl AddressConfig {
    /// The effective book: replicated entries win over configured ones.
    pub fn merged(
        &self,
        replicated: &BTreeMap<ReplicaId, MemberAddrs>,
    ) -> BTreeMap<ReplicaId, MemberAddrs> {
        let mut all = self.configured.clone();
        all.extend(replicated.iter().map(|(k, v)| (*k, *v)));
        all
    }

    /// The peers replica `me` should be connected to under `membership`:
    /// every other member; and, while `me` is not a member (joining, or
    /// removed), also the configured members, so it can reach the cluster.
    pub fn wanted_peers(
        &self,
        me: ReplicaId,
        membership: &Membership,
        book: &BTreeMap<ReplicaId, MemberAddrs>,
    ) -> BTreeMap<ReplicaId, SocketAddr> {
        let mut ids: Vec<ReplicaId> = membership.all().collect();
        if !membership.contains(me) {
            ids.extend(self.configured.keys().copied());
        }
        ids.into_iter()
            .filter(|id| *id != me)
            .filter_map(|id| book.get(&id).map(|a| (id, a.peer)))
            .collect()
    }
}

/// What a node publishes about the cluster (for status pages, redirects and
/// operator commands); refreshed on the node's timer and on membership
/// changes, never per request.
#[derive(Clone, Debug, Default)]
pub struct ClusterView {
    /// The membership in force.
    pub membership: Membership,
    /// The slot of the `Reconfigure` that installed it (0: the initial one).
    pub membership_slot: Slot,
    /// What this replica knows about every other member: on the leader,
    /// each peer's commit and applied index as its heartbeat acks reported
    /// them; on a follower, the leader's commit index only.
    pub peers: Vec<paxos_core::PeerStatus>,
    /// Effective address book (configured, overlaid by replicated).
    pub book: Arc<BTreeMap<ReplicaId, MemberAddrs>>,
    /// A change this replica (as leader) is still working towards.
    pub pending: Option<Membership>,
    /// This replica was a member and a reconfiguration removed it.
    pub removed: bool,
    /// A repair after storage damage, in progress (it does not vote).
    pub repair: Option<paxos_core::RepairProgress>,
}

impl ClusterView {
    /// The client address of `id`, if known.
    pub fn client_addr(&self, id: ReplicaId) -> Option<SocketAddr> {
        self.book.get(&id).map(|a| a.client)
    }
}

/// Membership as text: `voters=1,2,3 learners=4`.
pub fn membership_text(m: &Membership) -> String {
    let list = |v: &[ReplicaId]| {
        v.iter()
            .map(|r| r.0.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    format!("voters={} learners={}", list(&m.voters), list(&m.learners))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn arbitrary_commands_and_encodings_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..96)) {
            let (mut a, mut b) = (Directory::default(), Directory::default());
            // Deterministic: the same bytes give the same result and state.
            prop_assert_eq!(a.execute(&raw), b.execute(&raw));
            prop_assert_eq!(a.book(), b.book());
            let _ = Directory::decode(&raw);
        }
    }

    pub(crate) fn addrs(p: u16) -> MemberAddrs {
        MemberAddrs {
            peer: SocketAddr::from(([127, 0, 0, 1], p)),
            client: SocketAddr::from(([127, 0, 0, 1], p + 100)),
        }
    }

    fn reconfigure(base: Slot, voters: &[u32]) -> Reconfiguration {
        Reconfiguration {
            base,
            membership: Membership::with_voters(voters.iter().map(|v| ReplicaId(*v)).collect()),
        }
    }

    #[test]
    fn register_applies_and_refuses_taken_addresses() {
        let mut d = Directory::default();
        assert_eq!(
            d.execute(&encode_register(ReplicaId(4), addrs(7004))),
            Ok(())
        );
        assert_eq!(d.generation(), 1);
        assert_eq!(
            d.execute(&encode_register(ReplicaId(5), addrs(7004))),
            Err(DirectoryError::AddressTaken(4))
        );
        // Re-registering the same id moves it.
        assert_eq!(
            d.execute(&encode_register(ReplicaId(4), addrs(7010))),
            Ok(())
        );
        assert_eq!(d.book()[&ReplicaId(4)], addrs(7010));
        // Once 4 is no longer a member, its addresses may be reused.
        assert!(d.apply_reconfigure(
            Slot(3),
            Ballot::new(1, ReplicaId(1)),
            &reconfigure(Slot::ZERO, &[1])
        ));
        assert_eq!(
            d.execute(&encode_register(ReplicaId(5), addrs(7010))),
            Ok(())
        );
        // Id 0, trailing bytes and unknown commands are malformed.
        assert_eq!(
            d.execute(&encode_register(ReplicaId(0), addrs(7020))),
            Err(DirectoryError::Malformed)
        );
        let mut long = encode_register(ReplicaId(6), addrs(7030)).to_vec();
        long.push(0);
        assert_eq!(d.execute(&long), Err(DirectoryError::Malformed));
        assert_eq!(d.execute(&[9]), Err(DirectoryError::Malformed));
        assert_eq!(d.execute(&[]), Err(DirectoryError::Malformed));
    }

    #[test]
    fn a_stale_reconfigure_is_a_no_op() {
        let mut d = Directory::default();
        assert!(d.apply_reconfigure(
            Slot(2),
            Ballot::new(5, ReplicaId(1)),
            &reconfigure(Slot::ZERO, &[1, 4])
        ));
        // Based on the initial membership, since replaced at slot 2.
        assert!(!d.apply_reconfigure(
            Slot(3),
            Ballot::new(5, ReplicaId(1)),
            &reconfigure(Slot::ZERO, &[9])
        ));
        let mut config = paxos_core::Config::new(
            ReplicaId(1),
            Membership::with_voters(vec![ReplicaId(1), ReplicaId(2), ReplicaId(3)]),
        );
        d.restart_membership(&mut config);
        assert_eq!(
            config.membership,
            Membership::with_voters(vec![ReplicaId(1), ReplicaId(4)])
        );
        assert_eq!(config.membership_slot, Slot(2));
        assert_eq!(config.membership_ballot, Ballot::new(5, ReplicaId(1)));
    }

    #[test]
    fn encoding_round_trips_and_every_truncation_is_refused() {
        let mut d = Directory::default();
        d.execute(&encode_register(ReplicaId(4), addrs(7004)))
            .unwrap();
        let r = Reconfiguration {
            base: Slot::ZERO,
            membership: Membership {
                voters: vec![ReplicaId(1), ReplicaId(2)],
                learners: vec![ReplicaId(4)],
            },
        };
        assert!(d.apply_reconfigure(Slot(9), Ballot::new(3, ReplicaId(2)), &r));
        let mut out = BytesMut::new();
        d.encode(&mut out);
        let back = Directory::decode(&out).unwrap();
        assert_eq!(back.book(), d.book());
        assert_eq!(back.last_reconfigure(), d.last_reconfigure());
        for cut in 0..out.len() {
            assert!(Directory::decode(&out[..cut]).is_none());
        }
        let mut longer = out.to_vec();
        longer.push(0);
        assert!(Directory::decode(&longer).is_none());
    }

    #[test]
    fn a_node_outside_the_membership_keeps_its_configured_peers() {
        let mut config = AddressConfig::default();
        config.configured.insert(ReplicaId(1), addrs(7001));
        config.configured.insert(ReplicaId(2), addrs(7002));
        let mut replicated = BTreeMap::new();
        replicated.insert(ReplicaId(3), addrs(7003));
        let book = config.merged(&replicated);
        let m = Membership::with_voters(vec![ReplicaId(2), ReplicaId(3)]);
        let ids = |p: BTreeMap<ReplicaId, SocketAddr>| p.keys().map(|r| r.0).collect::<Vec<_>>();
        assert_eq!(ids(config.wanted_peers(ReplicaId(2), &m, &book)), vec![3]);
        assert_eq!(
            ids(config.wanted_peers(ReplicaId(1), &m, &book)),
            vec![2, 3]
        );
    }
}
