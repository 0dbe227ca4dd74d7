//! The state machine the simulated replicas run: the real `KvStore`, with
//! optional planted bugs in it, so the tests can show that the state
//! checkers (equal digests at equal slots, linearizability of the clients'
//! history) fail when the replicated application misbehaves, even though
//! the replication below it is correct.

use bytes::Bytes;
use paxos_core::ReplicaId;
use paxos_kv::kv::{KvSnapshot, KvStore};
use paxos_node::{Decree, SnapshotError, StateMachine};
use std::collections::HashMap;

/// A deliberate bug in the simulated application.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StateMachineBug {
    /// `GET` answers the value the key held before its last `SET` (the same
    /// stale answer on every replica: the replicas agree, the clients see
    /// a stale read). Only the linearizability checker can tell.
    StaleReads,
    /// Replica 1 drops every 7th `SET` it executes: its state diverges from
    /// the others' while every replica applies the same decrees. Only the
    /// state-digest checker can tell.
    DivergeOnReplica1,
}

/// Request opcodes of paxos-kv's encoding (see `paxos_kv::kv`).
const OP_SET: u8 = 1;
const OP_GET: u8 = 5;

/// The key of a `SET`/`GET` request (`op | u32 len | key | ...`).
fn key_of(request: &[u8]) -> Option<&[u8]> {
    let len = u32::from_le_bytes(request.get(1..5)?.try_into().ok()?) as usize;
    request.get(5..5usize.checked_add(len)?)
}

/// `KvStore`, possibly with a planted bug.
#[derive(Debug, Default)]
pub struct SimKv {
    kv: KvStore,
    bug: Option<StateMachineBug>,
    replica: u32,
    /// For `StaleReads`: each key's value before its last `SET`.
    previous: HashMap<Vec<u8>, Option<Bytes>>,
    sets: u64,
}

impl SimKv {
    /// The KV of `replica`, with `bug` planted if any.
    pub fn new(replica: ReplicaId, bug: Option<StateMachineBug>) -> SimKv {
        let mut kv = KvStore::new();
        // The digest checker asks after every step: keep it O(1).
        kv.track_state_digest();
        SimKv {
            bug,
            replica: replica.0,
            kv,
            ..SimKv::default()
        }
    }

    /// The real store.
    pub fn kv(&self) -> &KvStore {
        &self.kv
    }
}

impl StateMachine for SimKv {
    type Snapshot = KvSnapshot;

    fn execute(&mut self, decree: &Decree, request: &[u8]) -> Bytes {
        match (self.bug, request.first()) {
            (Some(StateMachineBug::StaleReads), Some(&OP_SET)) => {
                if let Some(key) = key_of(request) {
                    let before = self.kv.get(key).map(Bytes::copy_from_slice);
                    self.previous.insert(key.to_vec(), before);
                }
            }
            (Some(StateMachineBug::StaleReads), Some(&OP_GET)) => {
                if let Some(stale) = key_of(request).and_then(|k| self.previous.get(k)) {
                    let mut out = bytes::BytesMut::new();
                    paxos_kv::resp::write_bulk(&mut out, stale.as_deref());
                    return out.freeze();
                }
            }
            (Some(StateMachineBug::DivergeOnReplica1), Some(&OP_SET)) if self.replica == 1 => {
                self.sets += 1;
                if self.sets % 7 == 0 {
                    return Bytes::from_static(b"+OK\r\n");
                }
            }
            _ => {}
        }
        StateMachine::execute(&mut self.kv, decree, request)
    }

    fn query(&self, request: &[u8]) -> Bytes {
        // The planted stale read bites reads that skip the log too.
        if let (Some(StateMachineBug::StaleReads), Some(&OP_GET)) = (self.bug, request.first()) {
            if let Some(stale) = key_of(request).and_then(|k| self.previous.get(k)) {
                let mut out = bytes::BytesMut::new();
                paxos_kv::resp::write_bulk(&mut out, stale.as_deref());
                return out.freeze();
            }
        }
        StateMachine::query(&self.kv, request)
    }

    fn snapshot(&mut self) -> KvSnapshot {
        self.kv.snapshot()
    }

    fn restore(&mut self, source: &mut dyn std::io::Read) -> Result<(), SnapshotError> {
        self.kv.restore(source)?;
        self.previous.clear();
        Ok(())
    }

    fn on_primary_change(&mut self, is_primary: bool) {
        self.kv.on_primary_change(is_primary);
    }
}
