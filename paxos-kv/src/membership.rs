//! Keeping the QUIC transport's peer set in line with the membership, and
//! INFO's membership sections.
//!
//! The replicated address book and the last applied reconfiguration belong
//! to paxos-node's [`paxos_node::Directory`] (kept in every checkpoint); the
//! node says which peers the transport should reach
//! (`Effect::SetPeers`), and [`QuicPeers`] makes it so.

use paxos_core::ReplicaId;
pub use paxos_node::directory::{membership_text, ClusterView, MemberAddrs};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

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
        "# Membership\r\nmembership:{}\r\nmembership_slot:{}\r\nmembership_pending:{}\r\nremoved:{}\r\n",
        membership_text(&view.membership),
        view.membership_slot,
        view.pending.as_ref().map_or("none".into(), membership_text),
        u8::from(view.removed),
    );
    let ids = |v: &[ReplicaId]| {
        v.iter()
            .map(|r| r.0.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    match &view.repair {
        None => text.push_str("# Repair\r\nrepairing:0\r\n"),
        Some(r) => {
            let _ = write!(
                text,
                "# Repair\r\nrepairing:1\r\nrepair_waiting_for:{}\r\nrepair_untrusted:{}\r\nrepair_catching_up_to:{}\r\n",
                ids(&r.waiting_for),
                ids(&r.untrusted),
                r.catching_up_to.map_or("-".to_string(), |s| s.to_string()),
            );
        }
    }
    let _ = write!(text, "# Peers\r\npeers:{}\r\n", view.peers.len());
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
            opt(p.commit_index.map(|s| s.0)),
            opt(p.last_heard_us_ago.map(|us| us / 1000)),
            u8::from(p.can_become_primary),
            addr,
        );
    }
}
