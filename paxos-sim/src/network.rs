//! The simulated network: the bytes a node transmits (encoded by the real
//! codecs) are lost, duplicated, delayed, reordered, cut by partitions, and
//! sometimes delivered again much later (replays of stale messages, with
//! old ballots). Every core message is checked on the way: it must decode,
//! re-encode to the same bytes, stay within the size limit, and — for an
//! acceptor's `Promise` or `Accepted` — report only what the sender's disk
//! already holds.

use crate::checker::{Failure, FailureKind};
use crate::sim::{EventKind, Sim};
use bytes::{Bytes, BytesMut};
use paxos_core::{codec, msg, Message, ReplicaId};
use rand::Rng;
use std::collections::BTreeSet;

/// Old messages kept for replays.
const ARCHIVE: usize = 512;

/// Connectivity and the replay archive.
#[derive(Debug, Default)]
pub(crate) struct Net {
    /// Group of each replica while a partition is up.
    pub(crate) groups: Option<Vec<u8>>,
    /// Directed links that drop everything.
    pub(crate) blocked: BTreeSet<(usize, usize)>,
    pub(crate) partition_id: u64,
    /// A sample of every message sent in the run (reservoir), for replays.
    archive: Vec<(usize, usize, Bytes)>,
    /// Messages offered to the archive so far.
    archived: u64,
}

impl Net {
    pub(crate) fn connected(&self, from: usize, to: usize) -> bool {
        if from == to {
            return true;
        }
        if self.blocked.contains(&(from, to)) {
            return false;
        }
        match &self.groups {
            Some(g) => g[from] == g[to],
            None => true,
        }
    }
}

impl Sim {
    /// Replica `from` transmits `bytes` to `to`.
    pub(crate) fn send(&mut self, from: usize, to: ReplicaId, bytes: Bytes) -> Result<(), Failure> {
        let from_id = self.nodes[from].id;
        let Some(to_index) = self.index_of(to) else {
            return Err(Failure::new(
                FailureKind::ApiContract,
                format!("{from_id} sent to unknown replica {to}"),
            ));
        };
        if !paxos_node::xfer::is_xfer(&bytes) {
            let msg = codec::decode(bytes.clone()).map_err(|e| {
                Failure::new(
                    FailureKind::Codec,
                    format!("{from_id} sent undecodable bytes to {to}: {e}"),
                )
            })?;
            self.check_durable_before_send(from, to, &msg)?;
            // The simulator keeps paxos-core's default message limit.
            let limit = paxos_core::Config::new(
                from_id,
                paxos_core::Membership::with_voters(vec![from_id]),
            )
            .max_message_bytes;
            if bytes.len() > limit {
                return Err(Failure::new(
                    FailureKind::Codec,
                    format!(
                        "{from_id} sent a {}-byte message to {to}, limit {limit}",
                        bytes.len()
                    ),
                ));
            }
        }
        if self.params.codec_fuzz > 0.0 && self.rng.gen_bool(self.params.codec_fuzz) {
            self.faults.codec_fuzzed += 1;
            let corrupted = self.corrupt(&bytes);
            // The decoders must return, Ok or Err, never panic. The copy is
            // not delivered: the transport (QUIC) guarantees integrity, and
            // the protocol does not claim to survive undetected corruption.
            let _ = codec::decode(corrupted.clone());
            let _ = paxos_node::xfer::decode(corrupted);
        }
        self.archive(from, to_index, &bytes);
        if !self.net.connected(from, to_index) {
            self.faults.messages_dropped += 1;
            return Ok(());
        }
        if self.params.loss > 0.0 && self.rng.gen_bool(self.params.loss) {
            self.faults.messages_dropped += 1;
            return Ok(());
        }
        let copies = if self.params.duplicate > 0.0 && self.rng.gen_bool(self.params.duplicate) {
            self.faults.messages_duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut delay = self
                .rng
                .gen_range(self.params.delay_min_us..=self.params.delay_max_us);
            if self.params.slow_message > 0.0 && self.rng.gen_bool(self.params.slow_message) {
                delay += self.rng.gen_range(0..=self.params.slow_extra_us);
            }
            self.schedule(
                self.now.plus_micros(delay),
                EventKind::Deliver {
                    from,
                    to: to_index,
                    bytes: bytes.clone(),
                },
            );
        }
        Ok(())
    }

    /// Keeps a uniform sample of every message of the run (reservoir
    /// sampling), so replays can bring back messages from long ago.
    fn archive(&mut self, from: usize, to: usize, bytes: &Bytes) {
        self.net.archived += 1;
        if self.net.archive.len() < ARCHIVE {
            self.net.archive.push((from, to, bytes.clone()));
        } else {
            let k = self.rng.gen_range(0..self.net.archived);
            if (k as usize) < ARCHIVE {
                self.net.archive[k as usize] = (from, to, bytes.clone());
            }
        }
    }

    /// Delivers up to `n` archived messages again, soon: stale ballots,
    /// duplicate `Accepted` and `Promise`, old catch-up answers.
    pub(crate) fn replay(&mut self, n: usize) {
        if self.net.archive.is_empty() {
            return;
        }
        for _ in 0..n {
            let k = self.rng.gen_range(0..self.net.archive.len());
            let (from, to, bytes) = self.net.archive[k].clone();
            self.faults.messages_replayed += 1;
            let delay = self.rng.gen_range(0..=self.params.delay_max_us);
            self.schedule(
                self.now.plus_micros(delay),
                EventKind::Deliver { from, to, bytes },
            );
        }
    }

    /// Acceptor replies state what the acceptor did; they may only leave once
    /// that is on disk, or a crash could make the acceptor contradict them.
    fn check_durable_before_send(
        &self,
        from: usize,
        to: ReplicaId,
        msg: &Message,
    ) -> Result<(), Failure> {
        let node = &self.nodes[from];
        let durable = &node.ledger;
        let violation = match msg {
            Message::Promise(msg::Promise { ballot, .. }) if durable.promised < *ballot => {
                Some(format!(
                    "Promise for ballot {ballot} while the disk holds promise {}",
                    durable.promised
                ))
            }
            // An acceptor that knows the slot is already chosen may vouch
            // for it in a new ballot without a fresh durable vote: a leader
            // that passed phase 1 can only propose the chosen value there, so
            // the "vote" cannot help choose anything else.
            Message::Accepted(msg::Accepted { ballot, slot, .. })
                if *slot > durable.truncated_through
                    && durable
                        .accepted
                        .get(slot)
                        .is_none_or(|a| a.ballot < *ballot)
                    && node
                        .run
                        .as_ref()
                        .is_none_or(|r| r.node.core().status().commit_index < *slot) =>
            {
                Some(format!(
                    "Accepted for slot {slot} ballot {ballot} while the disk holds {:?}",
                    durable.accepted.get(slot).map(|a| a.ballot)
                ))
            }
            _ => None,
        };
        match violation {
            Some(v) => Err(Failure::new(
                FailureKind::Durability,
                format!("{} sent {to} a {v}", node.id),
            )),
            None => Ok(()),
        }
    }

    /// A damaged copy of an encoded message: truncated, bit-flipped, or
    /// extended with garbage.
    fn corrupt(&mut self, bytes: &Bytes) -> Bytes {
        let mut v = bytes.to_vec();
        match self.rng.gen_range(0..3) {
            0 => v.truncate(self.rng.gen_range(0..=v.len())),
            1 if !v.is_empty() => {
                for _ in 0..self.rng.gen_range(1..=4) {
                    let at = self.rng.gen_range(0..v.len());
                    v[at] ^= 1 << self.rng.gen_range(0..8);
                }
            }
            _ => {
                for _ in 0..self.rng.gen_range(1..=16) {
                    v.push(self.rng.gen());
                }
            }
        }
        Bytes::from(v)
    }

    pub(crate) fn deliver(&mut self, from: usize, to: usize, bytes: Bytes) -> Result<(), Failure> {
        if !self.net.connected(from, to) {
            // The partition appeared while the message was in flight.
            self.faults.messages_dropped += 1;
            return Ok(());
        }
        if self.nodes[to].run.is_none() {
            return Ok(());
        }
        let (from_id, to_id) = (self.nodes[from].id, self.nodes[to].id);
        if !paxos_node::xfer::is_xfer(&bytes) {
            let msg = codec::decode(bytes.clone()).map_err(|e| {
                Failure::new(
                    FailureKind::Codec,
                    format!("{from_id} -> {to_id}: encoded message does not decode: {e}"),
                )
            })?;
            let mut again = BytesMut::new();
            codec::encode(&msg, &mut again);
            if again != bytes {
                return Err(Failure::new(
                    FailureKind::Codec,
                    format!(
                        "{from_id} -> {to_id}: decode then encode changed the bytes of {msg:?}"
                    ),
                ));
            }
            self.trace(|| format!("{to_id} <- {from_id} {}", crate::show::message(&msg)));
        } else {
            self.trace(|| {
                let shown = match paxos_node::xfer::decode(bytes.clone()) {
                    Ok(paxos_node::xfer::XferMessage::Request { slot, offset, have }) => {
                        format!("Request {{ checkpoint {slot} (0: newest), offset {offset}, have {have} }}")
                    }
                    Ok(paxos_node::xfer::XferMessage::Chunk {
                        meta,
                        data_len,
                        chunk,
                    }) => format!(
                        "Chunk {{ checkpoint {}, offset {}, {} of {data_len} bytes }}",
                        meta.last_applied,
                        chunk.offset,
                        chunk.data.len()
                    ),
                    Ok(paxos_node::xfer::XferMessage::None { slot }) => {
                        format!("None {{ checkpoint {slot} }}")
                    }
                    Err(e) => format!("undecodable ({e})"),
                };
                format!(
                    "{to_id} <- {from_id} checkpoint transfer {shown} ({} bytes)",
                    bytes.len()
                )
            });
        }
        self.deliver_to_node(to, from_id, bytes)
    }
}
