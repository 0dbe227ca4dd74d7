//! Replicated cluster state: the address book of members and the last
//! reconfiguration applied, kept by the state machine and in its
//! checkpoints; and keeping the QUIC transport's peer set in line with it.
//!
//! # Why the address book is replicated
//!
//! A node added by reconfiguration must be reachable by every member, and a
//! node joining later must reach it too. Rather than editing every node's
//! config file, the operator's `PAXOS.ADDNODE` first replicates a
//! *register* request through the log (`id -> peer addr, client addr`);
//! every replica applies it in slot order, so every replica knows the
//! address before the `Reconfigure` that makes the node a member is even
//! proposed. The book is part of the state machine's snapshot, so restarts
//! and checkpoint transfers carry it.
//!
//! Request encoding (inside the KV request stream, see [`crate::kv`]):
//!
//! ```text
//! 0x20 ADMIN  u8 sub-op, …
//!      0x01 REGISTER  u32 id, str peer_addr, str client_addr   (UTF-8 socket addresses)
//! ```
//!
//! # The membership in force after a restart
//!
//! paxos-core's `Config::membership` must be the membership in force after
//! the state machine's `applied_through`, and `Config::membership_ballot`
//! the ballot of the `Apply` that delivered the last applied `Reconfigure`.
//! The node records both here when it applies a `Reconfigure`
//! ([`ClusterState::record_reconfigure`]), so a checkpoint taken at any slot
//! carries the pair that is right for that slot.

use bytes::{BufMut, Bytes, BytesMut};
use paxos_core::{Ballot, Membership, Reconfiguration, ReplicaId, Slot};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

/// Opcode of an administrative request in the KV request encoding.
pub const OP_ADMIN: u8 = 0x20;
const ADMIN_REGISTER: u8 = 0x01;
/// Longest address text accepted in a register request.
const MAX_ADDR_TEXT: usize = 128;

/// Where one member listens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberAddrs {
    /// QUIC (UDP), replica to replica.
    pub peer: SocketAddr,
    /// RESP2 (TCP), clients; used in `-MOVED` redirects.
    pub client: SocketAddr,
}

/// The last `Reconfigure` the state machine applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppliedReconfigure {
    /// Its slot (it governs the slots above).
    pub slot: Slot,
    /// The ballot of the `Apply` that delivered it.
    pub ballot: Ballot,
    /// The membership it installed.
    pub membership: Membership,
}

/// The replicated cluster state (part of the state machine).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterState {
    book: BTreeMap<ReplicaId, MemberAddrs>,
    last_reconfigure: Option<AppliedReconfigure>,
    /// Bumped on every change of the book (local, not replicated): lets the
    /// node notice a change with one integer compare per apply.
    generation: u64,
}

static REPLY_OK: &[u8] = b"+OK\r\n";

/// Appends the request that registers `id`'s addresses.
pub fn encode_register(id: ReplicaId, addrs: MemberAddrs, out: &mut BytesMut) {
    out.put_u8(OP_ADMIN);
    out.put_u8(ADMIN_REGISTER);
    out.put_u32_le(id.0);
    for a in [addrs.peer.to_string(), addrs.client.to_string()] {
        out.put_u32_le(a.len() as u32);
        out.put_slice(a.as_bytes());
    }
}

/// A bounds-checked cursor.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.buf.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        let b = self.take(4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Option<u64> {
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
    fn ids(&mut self) -> Option<Vec<ReplicaId>> {
        let n = self.u32()? as usize;
        if n.saturating_mul(4) > self.buf.len() - self.pos {
            return None;
        }
        (0..n).map(|_| self.u32().map(ReplicaId)).collect()
    }
}

impl ClusterState {
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

    /// The same state with another generation (after a restore).
    pub fn with_generation(mut self, generation: u64) -> ClusterState {
        self.generation = generation;
        self
    }

    /// Applies the `Reconfigure` chosen at `slot` (under `ballot`) as the
    /// core does: it installs its membership only if it was based on the
    /// membership in force (see `paxos_core::Reconfiguration`); otherwise
    /// it is a no-op. Returns whether it took effect.
    pub fn apply_reconfigure(&mut self, slot: Slot, ballot: Ballot, r: &Reconfiguration) -> bool {
        let in_force = self.last_reconfigure.as_ref().map_or(0, |l| l.slot);
        if !r.applies_to(in_force) {
            return false;
        }
        self.record_reconfigure(slot, ballot, r.membership.clone());
        true
    }

    /// Records that the `Reconfigure` of `membership` chosen at `slot` was
    /// applied under `ballot`. Call for every applied `Reconfigure`, in slot
    /// order, before a checkpoint of that slot is taken.
    pub fn record_reconfigure(&mut self, slot: Slot, ballot: Ballot, membership: Membership) {
        paxos_contracts::requires!(
            self.last_reconfigure.as_ref().is_none_or(|r| r.slot < slot),
            "reconfigurations are applied in slot order"
        );
        self.last_reconfigure = Some(AppliedReconfigure {
            slot,
            ballot,
            membership,
        });
    }

    /// Executes one admin request (`body` follows the [`OP_ADMIN`] byte) and
    /// returns its RESP reply, or `None` if it does not decode (the caller
    /// answers that as a corrupt request). Deterministic: depends only on the
    /// request and the replicated state.
    pub fn execute(&mut self, body: &[u8]) -> Option<Bytes> {
        let mut r = Cursor { buf: body, pos: 0 };
        match r.u8()? {
            ADMIN_REGISTER => {
                let id = ReplicaId(r.u32()?);
                let (peer, client) = (r.addr()?, r.addr()?);
                if r.pos != body.len() || id.0 == 0 {
                    return None;
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
                    return Some(Bytes::from(format!(
                        "-ERR address already registered for replica {}\r\n",
                        other.0
                    )));
                }
                self.book.insert(id, MemberAddrs { peer, client });
                self.generation += 1;
                Some(Bytes::from_static(REPLY_OK))
            }
            _ => None,
        }
    }

    /// Appends the snapshot encoding (deterministic: the book is ordered).
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
                out.put_u64_le(r.slot);
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

    /// Decodes what [`ClusterState::encode`] wrote, starting at `*pos`;
    /// advances `*pos`. `None` if malformed.
    pub fn decode(buf: &[u8], pos: &mut usize) -> Option<ClusterState> {
        let mut r = Cursor { buf, pos: *pos };
        let n = r.u32()? as usize;
        if n.saturating_mul(12) > buf.len() - r.pos {
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
                let slot = r.u64()?;
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
        *pos = r.pos;
        Some(ClusterState {
            book,
            last_reconfigure,
            generation: 0,
        })
    }
}

/// What the node knows about addresses: the members its config file lists
/// (the bootstrap cluster, or for a joining node the cluster it joins),
/// overlaid by the replicated book.
#[derive(Clone, Debug, Default)]
pub struct Directory {
    /// From the config file.
    pub configured: BTreeMap<ReplicaId, MemberAddrs>,
    /// The config file lists this node as a learner: it was provisioned to
    /// join, so not being a member (yet) does not mean it was removed.
    pub joining: bool,
}

impl Directory {
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

/// A transport whose peer set can change at run time.
pub trait PeerDirectory: Send + Sync + 'static {
    /// Makes the peer set `wanted`: adds the missing peers at once, moves
    /// peers whose address changed, and drops the others after a grace
    /// period (messages queued for them, such as a removed leader's
    /// hand-over, still go out).
    fn set_peers(&self, wanted: &BTreeMap<ReplicaId, SocketAddr>);
}

/// How long a peer that left the membership stays connected.
pub const REMOVED_PEER_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// [`PeerDirectory`] over paxos-net's QUIC transport.
#[derive(Debug)]
pub struct QuicPeers {
    transport: Arc<paxos_net::QuicTransport>,
    state: std::sync::Mutex<QuicPeersState>,
}

#[derive(Debug, Default)]
struct QuicPeersState {
    current: BTreeMap<ReplicaId, SocketAddr>,
    wanted: BTreeMap<ReplicaId, SocketAddr>,
}

impl QuicPeers {
    /// Wraps a transport started with `initial` as its peers.
    pub fn new(
        transport: Arc<paxos_net::QuicTransport>,
        initial: BTreeMap<ReplicaId, SocketAddr>,
    ) -> Arc<QuicPeers> {
        Arc::new(QuicPeers {
            transport,
            state: std::sync::Mutex::new(QuicPeersState {
                current: initial.clone(),
                wanted: initial,
            }),
        })
    }
}

impl PeerDirectory for Arc<QuicPeers> {
    fn set_peers(&self, wanted: &BTreeMap<ReplicaId, SocketAddr>) {
        let mut st = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if st.wanted == *wanted {
            return;
        }
        st.wanted = wanted.clone();
        for (id, addr) in wanted {
            match st.current.get(id) {
                Some(a) if a == addr => {}
                Some(_) => {
                    self.transport.remove_peer(*id);
                    add(&self.transport, &mut st.current, *id, *addr);
                }
                None => add(&self.transport, &mut st.current, *id, *addr),
            }
        }
        let leaving: Vec<ReplicaId> = st
            .current
            .keys()
            .filter(|id| !wanted.contains_key(id))
            .copied()
            .collect();
        if leaving.is_empty() {
            return;
        }
        let me = Arc::clone(self);
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            tokio::time::sleep(REMOVED_PEER_GRACE).await;
            let mut st = me
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for id in leaving {
                // Unless a later call wanted it back.
                if !st.wanted.contains_key(&id) && st.current.remove(&id).is_some() {
                    me.transport.remove_peer(id);
                }
            }
        });
    }
}

fn add(
    transport: &paxos_net::QuicTransport,
    current: &mut BTreeMap<ReplicaId, SocketAddr>,
    id: ReplicaId,
    addr: SocketAddr,
) {
    match transport.add_peer(id, addr) {
        Ok(()) => {
            tracing::info!(peer = %id, %addr, "peer added");
            current.insert(id, addr);
        }
        Err(e) => tracing::warn!(peer = %id, %addr, error = %e, "cannot add peer"),
    }
}

/// What the node publishes about the cluster for INFO, `PAXOS.MEMBERS`,
/// redirects and the admin commands; refreshed on the node's timer and on
/// membership changes, never per request.
#[derive(Clone, Debug, Default)]
pub struct ClusterView {
    /// The membership in force.
    pub membership: Membership,
    /// The slot of the `Reconfigure` that installed it (0: the initial one).
    pub membership_slot: Slot,
    /// What this replica knows about every other member.
    pub peers: Vec<paxos_core::PeerStatus>,
    /// Effective address book (configured, overlaid by replicated).
    pub book: Arc<BTreeMap<ReplicaId, MemberAddrs>>,
    /// A change this replica (as leader) is still working towards.
    pub pending: Option<Membership>,
    /// This replica was a member and a reconfiguration removed it.
    pub removed: bool,
}

impl ClusterView {
    /// The client address of `id`, if known.
    pub fn client_addr(&self, id: ReplicaId) -> Option<SocketAddr> {
        self.book.get(&id).map(|a| a.client)
    }
}

/// Sets `config.membership` and `config.membership_ballot` from the last
/// reconfiguration the state machine applied (paxos-core's restart
/// contract); leaves them alone if it applied none.
pub fn restart_membership(config: &mut paxos_core::Config, cluster: Option<&ClusterState>) {
    if let Some(r) = cluster.and_then(ClusterState::last_reconfigure) {
        config.membership = r.membership.clone();
        config.membership_ballot = r.ballot;
        config.membership_slot = r.slot;
    }
}

/// Appends INFO's `# Membership` and `# Peers` sections (RSL's
/// `GetReplicasInformation`): one line per peer with its role, whether it
/// was heard from within the election timeout, how many slots it is behind
/// this replica, and how long ago it was last heard from. A follower hears
/// only from the leader, so the leader's INFO is the one that knows
/// everyone.
pub fn write_info(view: &ClusterView, text: &mut String) {
    use std::fmt::Write;
    let _ = write!(
        text,
        "# Membership\r\nmembership:{}\r\nmembership_slot:{}\r\nmembership_pending:{}\r\nremoved:{}\r\n# Peers\r\npeers:{}\r\n",
        membership_text(&view.membership),
        view.membership_slot,
        view.pending.as_ref().map_or("none".into(), membership_text),
        u8::from(view.removed),
        view.peers.len(),
    );
    for p in &view.peers {
        let opt = |v: Option<u64>| v.map_or("-1".to_string(), |v| v.to_string());
        let addr = view
            .book
            .get(&p.id)
            .map_or("?".to_string(), |a| a.peer.to_string());
        let _ = write!(
            text,
            "peer_{}:role={},connected={},lag={},commit_index={},last_contact_ms={},can_lead={},addr={}\r\n",
            p.id.0,
            if p.voter { "voter" } else { "learner" },
            u8::from(p.connected),
            opt(p.lag),
            opt(p.commit_index),
            opt(p.last_heard_us_ago.map(|us| us / 1000)),
            u8::from(p.can_become_primary),
            addr,
        );
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
        fn arbitrary_admin_requests_and_snapshots_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..96)) {
            let (mut a, mut b) = (ClusterState::default(), ClusterState::default());
            // Deterministic: the same bytes give the same reply and state.
            prop_assert_eq!(a.execute(&raw), b.execute(&raw));
            prop_assert_eq!(a.book(), b.book());
            let mut pos = 0;
            let _ = ClusterState::decode(&raw, &mut pos);
            prop_assert!(pos <= raw.len());
        }
    }

    fn addrs(p: u16) -> MemberAddrs {
        MemberAddrs {
            peer: SocketAddr::from(([127, 0, 0, 1], p)),
            client: SocketAddr::from(([127, 0, 0, 1], p + 100)),
        }
    }

    fn register(id: u32, a: MemberAddrs) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode_register(ReplicaId(id), a, &mut out);
        out[1..].to_vec()
    }

    #[test]
    fn register_applies_and_refuses_taken_addresses() {
        let mut c = ClusterState::default();
        assert_eq!(&c.execute(&register(4, addrs(7004))).unwrap()[..], REPLY_OK);
        assert_eq!(c.generation(), 1);
        let reply = c.execute(&register(5, addrs(7004))).unwrap();
        assert!(reply.starts_with(b"-ERR address already registered for replica 4"));
        // Re-registering the same id moves it.
        assert_eq!(&c.execute(&register(4, addrs(7010))).unwrap()[..], REPLY_OK);
        assert_eq!(c.book()[&ReplicaId(4)], addrs(7010));
        // Once 4 is no longer a member, its addresses may be reused.
        c.record_reconfigure(
            3,
            Ballot::new(1, ReplicaId(1)),
            Membership::with_voters(vec![ReplicaId(1)]),
        );
        assert_eq!(&c.execute(&register(5, addrs(7010))).unwrap()[..], REPLY_OK);
        // Id 0 and trailing bytes are corrupt.
        assert!(c.execute(&register(0, addrs(7020))).is_none());
        let mut long = register(6, addrs(7030));
        long.push(0);
        assert!(c.execute(&long).is_none());
        assert!(c.execute(&[9]).is_none());
        assert!(c.execute(&[]).is_none());
    }

    #[test]
    fn snapshot_encoding_roundtrips() {
        let mut c = ClusterState::default();
        c.execute(&register(4, addrs(7004))).unwrap();
        c.record_reconfigure(
            9,
            Ballot::new(3, ReplicaId(2)),
            Membership {
                voters: vec![ReplicaId(1), ReplicaId(2)],
                learners: vec![ReplicaId(4)],
            },
        );
        let mut out = BytesMut::new();
        c.encode(&mut out);
        let mut pos = 0;
        let d = ClusterState::decode(&out, &mut pos).unwrap();
        assert_eq!(pos, out.len());
        assert_eq!(d.book(), c.book());
        assert_eq!(d.last_reconfigure(), c.last_reconfigure());
        for cut in 0..out.len() {
            let mut pos = 0;
            assert!(ClusterState::decode(&out[..cut], &mut pos).is_none());
        }
    }

    #[test]
    fn kv_snapshots_carry_the_cluster_state_and_read_version_1() {
        use crate::kv::{KvStore, SnapshotError, StateMachine};
        use paxos_core::Value;
        let mut kv = KvStore::new();
        let mut req = BytesMut::new();
        encode_register(ReplicaId(4), addrs(7004), &mut req);
        let mut outs = Vec::new();
        kv.apply(
            1,
            &Value::Requests(paxos_core::batch::encode([&req[..]])),
            &mut outs,
        );
        assert_eq!(&outs[0][..], REPLY_OK);
        let m = Membership::with_voters(vec![ReplicaId(1), ReplicaId(4)]);
        let r = paxos_core::Reconfiguration {
            base: 0,
            membership: m.clone(),
        };
        kv.apply(2, &Value::Reconfigure(r.clone()), &mut outs);
        assert!(kv
            .cluster_mut()
            .unwrap()
            .apply_reconfigure(2, Ballot::new(5, ReplicaId(1)), &r));
        // One based on a membership since replaced is a no-op.
        let stale = paxos_core::Reconfiguration {
            base: 0,
            membership: Membership::with_voters(vec![ReplicaId(9)]),
        };
        assert!(!kv.cluster_mut().unwrap().apply_reconfigure(
            3,
            Ballot::new(5, ReplicaId(1)),
            &stale
        ));
        let snap = kv.snapshot();
        let mut restored = KvStore::new();
        restored.restore(&snap).unwrap();
        let c = restored.cluster().unwrap();
        assert_eq!(c.book()[&ReplicaId(4)], addrs(7004));
        assert_eq!(c.last_reconfigure().unwrap().membership, m);
        assert_eq!(c.last_reconfigure().unwrap().slot, 2);
        assert_eq!(restored.snapshot(), snap);

        // A version 1 snapshot (no cluster state) of an empty store.
        let mut v1 = BytesMut::new();
        v1.put_slice(b"PXKVSNAP");
        v1.put_u32_le(1);
        v1.put_u64_le(7);
        v1.put_u64_le(0);
        let crc = crc32c::crc32c(&v1);
        v1.put_u32_le(crc);
        let mut old = KvStore::new();
        old.restore(&v1).unwrap();
        assert_eq!(old.applied_through(), 7);
        assert!(old.cluster().unwrap().last_reconfigure().is_none());

        // An unknown version is named in the error.
        let mut v9 = v1[..v1.len() - 4].to_vec();
        v9[8..12].copy_from_slice(&9u32.to_le_bytes());
        let crc = crc32c::crc32c(&v9);
        v9.extend_from_slice(&crc.to_le_bytes());
        let err = KvStore::new().restore(&v9).unwrap_err();
        assert_eq!(err, SnapshotError::UnknownVersion(9));
        assert!(err.to_string().contains("version 9 is not supported"));
    }

    #[test]
    fn a_node_outside_the_membership_keeps_its_configured_peers() {
        let mut dir = Directory::default();
        dir.configured.insert(ReplicaId(1), addrs(7001));
        dir.configured.insert(ReplicaId(2), addrs(7002));
        let mut replicated = BTreeMap::new();
        replicated.insert(ReplicaId(3), addrs(7003));
        let book = dir.merged(&replicated);
        let m = Membership::with_voters(vec![ReplicaId(2), ReplicaId(3)]);
        let ids = |p: BTreeMap<ReplicaId, SocketAddr>| p.keys().map(|r| r.0).collect::<Vec<_>>();
        assert_eq!(ids(dir.wanted_peers(ReplicaId(2), &m, &book)), vec![3]);
        assert_eq!(ids(dir.wanted_peers(ReplicaId(1), &m, &book)), vec![2, 3]);
    }
}
