//! Bad input never panics and is refused: undecodable peer messages,
//! decrees that are not framed, checkpoints whose sections are corrupt.

use super::harness::{addrs, id, inc, voters, Counter, Sim};
use crate::directory::{encode_register, Directory};
use crate::effect::CheckpointJob;
use crate::framing::{DecreeKind, FramedBuilder, Header, ProposalTag, HEADER_LEN};
use crate::state_machine::BytesSnapshot;
use crate::storage::{self, CheckpointError, Restored};
use crate::xfer::{self, XferMessage};
use crate::NodeError;
use bytes::{BufMut, Bytes, BytesMut};
use paxos_core::batch::{self, BatchLimits};
use paxos_core::{codec, Ballot, Message, Role, Slot, Value};
use paxos_log::checkpoint::{CheckpointMeta, CheckpointStore, Chunk};
use paxos_log::sim_fs::SimFs;
use paxos_log::StorageError;
use std::sync::Arc;

/// A deterministic stream of pseudo-random numbers (splitmix64).
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Whether neither the core codec nor the transfer codec accepts `bytes`.
fn undecodable(bytes: &Bytes) -> bool {
    if xfer::is_xfer(bytes) {
        xfer::decode(bytes.clone()).is_err()
    } else {
        codec::decode(bytes.clone()).is_err()
    }
}

#[test]
fn malformed_peer_messages_are_dropped_and_change_nothing() {
    let mut sim = Sim::new(3);
    let leader = sim.elect();
    let follower = sim.hosts.keys().copied().find(|r| *r != leader).unwrap();
    let ids = sim.submit(leader, vec![inc(1, 40)]);
    let accept = sim
        .in_flight(leader, follower)
        .into_iter()
        .find(|b| matches!(codec::decode(b.clone()), Ok(Message::Accept(_))))
        .expect("the leader's Accept");
    assert!(sim.run_until(1_000_000, |s| s
        .hosts
        .values()
        .all(|h| h.counter().total == 1)));
    assert_eq!(sim.outcomes.total(ids[0]), 1);

    // Every proper prefix of real messages, and random bytes (some dressed
    // as core or transfer messages).
    let data = Bytes::from_static(b"checkpoint bytes");
    let chunk = xfer::encode(&XferMessage::Chunk {
        meta: CheckpointMeta {
            last_applied: Slot(9),
            ballot: Ballot::new(2, leader),
            membership: voters(3),
        },
        data_len: 100,
        chunk: Chunk {
            offset: 0,
            crc32c: crc32c::crc32c(&data),
            data,
        },
    });
    let request = xfer::encode(&XferMessage::Request {
        slot: Slot::ZERO,
        offset: 0,
        have: Slot::ZERO,
    });
    let mut garbage: Vec<Bytes> = Vec::new();
    for whole in [&accept, &chunk, &request] {
        garbage.extend((0..whole.len()).map(|cut| whole.slice(..cut)));
    }
    let mut noise = Noise(42);
    for _ in 0..3000 {
        let len = (noise.next() % 48) as usize;
        let mut b: Vec<u8> = (0..len).map(|_| noise.next() as u8).collect();
        match (b.first_mut(), noise.next() % 3) {
            (Some(first), 0) => *first = 1, // the core codec's version
            (Some(first), 1) => *first = xfer::XFER_MAGIC,
            _ => {}
        }
        garbage.push(Bytes::from(b));
    }
    // A chunk whose data was cut decodes (its checksum fails later); the
    // rest must not decode at all.
    let dropped: Vec<Bytes> = garbage.into_iter().filter(undecodable).collect();
    assert!(dropped.len() > 3000, "{} undecodable inputs", dropped.len());

    let before: Vec<_> = sim
        .hosts
        .values()
        .map(|h| (h.node.status(), h.counter().clone()))
        .collect();
    for (k, bytes) in dropped.iter().enumerate() {
        let to = [leader, follower][k % 2];
        let from = if to == leader { follower } else { leader };
        sim.deliver(from, to, bytes.clone());
        assert_eq!(sim.in_flight_len(), 0, "{bytes:?} made {to} send something");
    }
    let after: Vec<_> = sim
        .hosts
        .values()
        .map(|h| (h.node.status(), h.counter().clone()))
        .collect();
    assert_eq!(before, after);

    let more = sim.submit(leader, vec![inc(2, 0)]);
    assert!(sim.run_until(1_000_000, |s| s.outcomes.get(more[0]).is_some()));
    assert_eq!(sim.outcomes.total(more[0]), 3);
    sim.check_agreement().unwrap();
}

/// A header of kind `kind` by replica 1.
fn header_bytes(kind: u8) -> [u8; HEADER_LEN] {
    let mut h = Header {
        kind: DecreeKind::Client,
        tag: ProposalTag {
            proposer: id(1),
            nonce: 1,
            counter: 0,
        },
        time_us: 0,
    }
    .encode();
    h[0] = kind;
    h
}

fn framed(kind: DecreeKind, counter: u64, request: &[u8]) -> Value {
    let header = Header {
        kind,
        tag: ProposalTag {
            proposer: id(1),
            nonce: 1,
            counter,
        },
        time_us: 42,
    };
    let mut b = FramedBuilder::new(BatchLimits::default(), &header);
    assert!(b.push(request));
    Value::Requests(b.finish())
}

/// A peer running other software gets values chosen that are not framed
/// decrees: every node skips them the same way and goes on.
#[test]
fn unframed_decrees_are_skipped_by_every_node() {
    let mut sim = Sim::with_foreign(3, &[id(1)], |_| {});
    let nodes = [id(2), id(3)];
    for r in nodes {
        let now = sim.now;
        sim.host_mut(r).node.set_can_become_primary(now, false);
        sim.drain(r);
    }
    assert!(sim.run_until(10_000_000, |s| {
        s.foreign[&id(1)].replica.status().role == Role::Leader
            && nodes
                .iter()
                .all(|r| s.node(*r).status().leader == Some(id(1)))
    }));

    let mut bad_directory_command = BytesMut::new();
    bad_directory_command.put_u8(0x01);
    let values = [
        Value::Requests(Bytes::from_static(b"\x05")),
        Value::Requests(batch::encode(std::iter::empty::<&[u8]>())),
        Value::Requests(batch::encode([&b"no header"[..], &inc(1, 0)])),
        Value::Requests(batch::encode([&header_bytes(0xB7)[..], &inc(2, 0)])),
        framed(DecreeKind::Directory, 1, &bad_directory_command),
        framed(DecreeKind::Client, 2, &inc(5, 0)),
    ];
    let mut last: Slot = Slot::ZERO;
    for v in values {
        last = sim.propose_foreign(id(1), v).unwrap();
    }
    assert!(sim.run_until(1_000_000, |s| nodes
        .iter()
        .all(|r| s.node(*r).applied() >= last)));
    for r in nodes {
        let c = sim.counter(r);
        assert_eq!(c.total, 5, "{r} executed only the framed decree");
        assert_eq!(c.history.len(), 1);
        assert_eq!((c.history[0].slot, c.history[0].proposer), (last, id(1)));
        assert!(sim.node(r).directory().book().is_empty());
    }
    let chosen: Vec<Slot> = sim.foreign[&id(1)]
        .applied
        .iter()
        .map(|(s, _)| *s)
        .collect();
    assert_eq!(chosen.last(), Some(&last));
    assert_eq!(sim.outcomes.len(), 0, "no node proposed these");
}

fn meta(slot: Slot) -> CheckpointMeta {
    CheckpointMeta {
        last_applied: slot,
        ballot: Ballot::new(1, id(1)),
        membership: voters(3),
    }
}

/// A checkpoint store on a fresh simulated disk, with 4 KiB blocks.
fn store() -> (SimFs, CheckpointStore) {
    let fs = SimFs::new();
    let store = CheckpointStore::with_fs(Arc::new(fs.clone()), "/ckpt", 32, 4096).unwrap();
    (fs, store)
}

/// A counter with some history, and a directory with one entry.
fn sample() -> (Counter, Directory) {
    let mut c = Counter::default();
    for slot in 1..=3 {
        let decree = crate::Decree {
            slot: Slot(slot),
            proposer: id(2),
            time_us: 0,
        };
        crate::StateMachine::execute(&mut c, &decree, &inc(slot, 3000));
    }
    let mut d = Directory::default();
    d.execute(&encode_register(id(4), addrs(id(4)))).unwrap();
    (c, d)
}

fn write_raw(store: &CheckpointStore, slot: Slot, data: &[u8]) {
    let mut w = store.begin(meta(slot)).unwrap();
    w.write(data).unwrap();
    w.finish().unwrap();
}

fn write_good(store: &CheckpointStore, slot: Slot) {
    let (counter, directory) = sample();
    let job = CheckpointJob {
        meta: meta(slot),
        node_section: storage::encode_node_section(&directory),
        snapshot: BytesSnapshot(counter.encode()),
    };
    assert_eq!(storage::write_checkpoint(store, job).unwrap(), slot);
}

#[test]
fn corrupt_checkpoints_are_refused_and_leave_the_state_machine_alone() {
    let (fs, store) = store();
    let (counter, directory) = sample();
    write_good(&store, Slot(1));
    let mut restored_sm = Counter::default();
    let restored = storage::restore_slot(&store, Slot(1), &mut restored_sm).unwrap();
    assert_eq!(restored_sm, counter);
    assert_eq!(restored.directory.book(), directory.book());
    let data_len = store.open(Slot(1)).unwrap().info().data_len;
    assert_eq!(restored.data_len, data_len, "the bytes the restore read");
    let written = storage::encode_node_section(&directory).len() + counter.encode().len();
    assert!(data_len >= written as u64);

    let section = storage::encode_node_section(&directory);
    let body = counter.encode();
    let join = |parts: &[&[u8]]| parts.concat();
    let mut bad_crc = section.to_vec();
    *bad_crc.last_mut().unwrap() ^= 1;
    let garbage_dir = b"not a directory";
    let mut malformed_dir = b"PXNODE01".to_vec();
    malformed_dir.extend_from_slice(&(garbage_dir.len() as u32).to_le_bytes());
    malformed_dir.extend_from_slice(garbage_dir);
    malformed_dir.extend_from_slice(&crc32c::crc32c(garbage_dir).to_le_bytes());
    let mut wrong_total = counter.clone();
    wrong_total.total += 1;
    let node_section_cases: Vec<(Vec<u8>, &str)> = vec![
        (Vec::new(), "no node section"),
        (
            join(&[b"NOTANODE", &section[8..], &body]),
            "no node section",
        ),
        (
            join(&[b"PXNODE01", &u32::MAX.to_le_bytes(), &body]),
            "length out of range",
        ),
        (
            join(&[b"PXNODE01", &100u32.to_le_bytes(), b"short"]),
            "truncated",
        ),
        (join(&[&bad_crc, &body]), "checksum mismatch"),
        (join(&[&malformed_dir, &body]), "malformed"),
    ];
    let snapshot_cases: Vec<Vec<u8>> = vec![
        // The state machine must read its snapshot to the end: bytes left
        // over are its error, and it keeps its state.
        join(&[&section, &body, b"!"]),
        join(&[&section, &wrong_total.encode()]),
        join(&[&section, &body[..body.len() - 1]]),
        join(&[&section]),
    ];

    let mut slot = Slot(10);
    // What the state machine holds before each refused restore.
    let mut prior = Counter::default();
    let decree = crate::Decree {
        slot: Slot(7),
        proposer: id(3),
        time_us: 0,
    };
    crate::StateMachine::execute(&mut prior, &decree, &inc(99, 0));
    for (data, why) in node_section_cases {
        slot = slot.next();
        write_raw(&store, slot, &data);
        let mut sm = prior.clone();
        match storage::restore_slot(&store, slot, &mut sm) {
            Err(e @ CheckpointError::NodeSection { .. }) => {
                assert!(e.to_string().contains(why), "{slot}: {e}")
            }
            other => panic!("case {slot} ({why}): {other:?}"),
        }
        assert!(sm == prior, "case {slot} changed the state machine");
    }
    for data in snapshot_cases {
        slot = slot.next();
        write_raw(&store, slot, &data);
        let mut sm = prior.clone();
        let result = storage::restore_slot(&store, slot, &mut sm);
        assert!(
            matches!(result, Err(CheckpointError::Snapshot { .. })),
            "case {slot}: {result:?}"
        );
        assert!(sm == prior, "case {slot} changed the state machine");
    }

    // Media corruption is reported as such (file and offset), whether it hit
    // the node section's block or the snapshot's; the newest checkpoint
    // that verifies is used instead, and the skip reported.
    // in the node section's block, and in the snapshot's (the header takes
    // 64 bytes, blocks 4 KiB).
    for at_byte in [84, 6000] {
        slot = slot.next();
        write_good(&store, slot);
        let path = store.open(slot).unwrap().info().path.clone();
        fs.flip_bit(&path, at_byte * 8).unwrap();
        let mut sm = prior.clone();
        let result = storage::restore_slot(&store, slot, &mut sm);
        assert!(
            matches!(
                result,
                Err(CheckpointError::Storage(StorageError::Corrupt { .. }))
            ),
            "{result:?}"
        );
        assert!(sm == prior, "case {slot} changed the state machine");
    }
    let (fs2, fallback) = self::store();
    write_good(&fallback, Slot(5));
    write_good(&fallback, Slot(6));
    let path = fallback.open(Slot(6)).unwrap().info().path.clone();
    fs2.flip_bit(&path, fs2.file_len(&path).unwrap() / 2 * 8)
        .unwrap();
    let mut sm = prior.clone();
    let restored = storage::restore_newest(&fallback, &mut sm)
        .unwrap()
        .unwrap();
    assert_eq!(restored.meta.last_applied, Slot(5));
    assert_eq!(restored.skipped.len(), 1);
    assert_eq!(sm, counter);
}

/// A counter whose medium fails while it restores: `on_restore` runs at the
/// start of each restore, after the store's survey verified the file.
struct FailingMedium {
    counter: Counter,
    on_restore: Box<dyn FnMut() + Send>,
}

impl crate::StateMachine for FailingMedium {
    type Snapshot = BytesSnapshot;

    fn execute(&mut self, decree: &crate::Decree, request: &[u8]) -> Bytes {
        self.counter.execute(decree, request)
    }

    fn query(&self, request: &[u8]) -> Bytes {
        self.counter.query(request)
    }

    fn snapshot(&mut self) -> BytesSnapshot {
        self.counter.snapshot()
    }

    fn restore(
        &mut self,
        source: &mut dyn std::io::Read,
    ) -> Result<(), crate::state_machine::SnapshotError> {
        (self.on_restore)();
        self.counter.restore(source)
    }
}

/// Writes checkpoint `slot` of a counter larger than one restore read (so
/// the restore reads the file in several pieces); returns the counter.
fn write_large(store: &CheckpointStore, slot: Slot) -> Counter {
    let mut c = Counter::default();
    for s in 1..=3 {
        let decree = crate::Decree {
            slot: Slot(s),
            proposer: id(2),
            time_us: 0,
        };
        crate::StateMachine::execute(&mut c, &decree, &inc(s, 600_000));
    }
    let job = CheckpointJob {
        meta: meta(slot),
        node_section: storage::encode_node_section(&Directory::default()),
        snapshot: BytesSnapshot(c.encode()),
    };
    assert_eq!(storage::write_checkpoint(store, job).unwrap(), slot);
    c
}

/// Makes 512 bytes near the end of checkpoint `slot` unreadable when the
/// state machine starts restoring (after the survey verified the file, and
/// after the restore's first read).
fn fail_late(fs: &SimFs, store: &CheckpointStore, slot: Slot) -> Box<dyn FnMut() + Send> {
    let path = store.open(slot).unwrap().info().path.clone();
    let at = fs.file_len(&path).unwrap() - 10_000;
    let fs = fs.clone();
    Box::new(move || {
        let _ = fs.make_unreadable(&path, at, 512);
    })
}

#[test]
fn a_checkpoint_that_fails_while_restoring_is_set_aside_for_an_older_one() {
    let (fs, store) = store();
    let older = write_large(&store, Slot(5));
    write_large(&store, Slot(6));
    // Both restore attempts of checkpoint 6 fail (the sector stays bad).
    let mut sm = FailingMedium {
        counter: Counter::default(),
        on_restore: fail_late(&fs, &store, Slot(6)),
    };
    let restored = storage::restore_newest(&store, &mut sm).unwrap().unwrap();
    assert_eq!(restored.meta.last_applied, Slot(5), "the older checkpoint");
    assert_eq!(sm.counter, older);
    assert_eq!(restored.skipped.len(), 1, "{:?}", restored.skipped);
    assert!(
        restored.skipped[0].contains("set aside"),
        "{:?}",
        restored.skipped
    );
    assert_eq!(store.list().unwrap(), vec![Slot(5)], "6 was set aside");

    // When every checkpoint fails so, there is none to start from (the
    // node then fetches one from a peer), and the state machine is as it
    // was.
    let (fs, store) = self::store();
    write_large(&store, Slot(7));
    let mut sm = FailingMedium {
        counter: Counter::default(),
        on_restore: fail_late(&fs, &store, Slot(7)),
    };
    assert!(storage::restore_newest(&store, &mut sm).unwrap().is_none());
    assert_eq!(sm.counter, Counter::default());
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn a_checkpoint_behind_the_node_is_not_installed() {
    let mut sim = Sim::new(3);
    let leader = sim.elect();
    for n in [1, 1] {
        let ids = sim.submit(leader, vec![inc(n, 0)]);
        assert!(sim.run_until(1_000_000, |s| s.outcomes.get(ids[0]).is_some()));
    }
    let applied = sim.node(leader).applied();
    assert!(applied > Slot(1));
    let now = sim.now;
    let durable = sim.host(leader).durable.clone();
    let state = sim.counter(leader).clone();
    // What a driver restored; told apart from the node's own by its total.
    let fresh = Counter {
        total: 7_777,
        history: Vec::new(),
    };
    let restored_at = |slot: Slot| Restored {
        meta: meta(slot),
        directory: Directory::default(),
        path: "/ckpt/restored".into(),
        data_len: 0,
        skipped: Vec::new(),
    };
    // Behind the node: nothing is touched, the fresh state machine comes
    // back to be dropped.
    let (spare, result) = sim.host_mut(leader).node.install_restored(
        now,
        durable.clone(),
        Slot(1),
        fresh.clone(),
        restored_at(Slot(1)),
    );
    assert!(result.is_ok(), "{result:?}");
    assert!(spare == fresh, "the fresh state machine is handed back");
    assert!(
        sim.counter(leader) == &state,
        "the node's state is untouched"
    );
    // Ahead of the node, but the restore brought back another slot.
    let (spare, result) = sim.host_mut(leader).node.install_restored(
        now,
        durable,
        applied.plus(5),
        fresh.clone(),
        restored_at(Slot(1)),
    );
    assert!(
        matches!(result, Err(NodeError::Checkpoint { slot: Slot(1), .. })),
        "{result:?}"
    );
    assert!(spare == fresh, "the fresh state machine is handed back");
    assert!(
        sim.counter(leader) == &state,
        "the node's state is untouched"
    );
    assert_eq!(sim.node(leader).applied(), applied);
    assert!(sim.node(leader).is_leader());
    let more = sim.submit(leader, vec![inc(2, 0)]);
    assert!(sim.run_until(1_000_000, |s| s.outcomes.get(more[0]).is_some()));
    assert_eq!(sim.outcomes.total(more[0]), 4);
}

#[test]
fn serving_a_damaged_checkpoint_sets_it_aside_and_says_so() {
    let (fs, store) = store();
    write_good(&store, Slot(5));
    write_good(&store, Slot(6));
    let served = storage::serve_chunk(&store, Slot::ZERO, 0, usize::MAX);
    assert!(matches!(served.reply, XferMessage::Chunk { .. }));
    assert_eq!(served.damaged, None);

    let path = store.open(Slot(6)).unwrap().info().path.clone();
    fs.make_unreadable(&path, 0, fs.file_len(&path).unwrap())
        .unwrap();
    let served = storage::serve_chunk(&store, Slot::ZERO, 0, usize::MAX);
    assert!(
        matches!(served.reply, XferMessage::None { slot: Slot::ZERO }),
        "{:?}",
        served.reply
    );
    assert_eq!(served.damaged, Some(Slot(6)));
    assert_eq!(store.list().unwrap(), vec![Slot(5)], "6 was set aside");
    // The older one is offered next.
    let served = storage::serve_chunk(&store, Slot::ZERO, 0, usize::MAX);
    match served.reply {
        XferMessage::Chunk { meta, .. } => assert_eq!(meta.last_applied, Slot(5)),
        other => panic!("{other:?}"),
    }
    // A checkpoint it does not hold is refused, and nothing is damaged.
    let served = storage::serve_chunk(&store, Slot(9), 0, usize::MAX);
    assert!(matches!(served.reply, XferMessage::None { .. }));
    assert_eq!(served.damaged, None);
}
