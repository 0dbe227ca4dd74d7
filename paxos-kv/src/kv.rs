//! The replicated state machine: a key-value map driven by the chosen log.
//!
//! Client commands (RESP argument lists) are validated and encoded once, on
//! the replica that receives them, into a compact binary *request*. Requests
//! are batched into decrees; every replica applies the same decrees in the
//! same slot order through [`StateMachine::apply`], which is deterministic:
//! the output of each request depends only on the request and the state
//! before it. The output of a request is the RESP reply the client gets,
//! ready to write to its socket.
//!
//! Request encoding (integers little-endian; `str` is `u32 len | bytes`):
//!
//! ```text
//! 0xFF tag…                 batch tag: identifies a proposal; no effect, empty output
//! 0x01 SET    str key, str value
//! 0x02 DEL    u32 n, n × str key
//! 0x03 INCR   str key
//! 0x04 MSET   u32 n, n × (str key, str value)
//! 0x05 GET    str key                (reads are ordered through the log)
//! 0x06 EXISTS u32 n, n × str key
//! 0x07 MGET   u32 n, n × str key
//! 0x20 ADMIN  …                  cluster administration, see [`crate::membership`]
//! ```
//!
//! A request that does not decode (it can only come from a corrupt or
//! foreign log) yields the same error output on every replica and changes
//! nothing, so replicas never diverge and never panic on it.

use crate::keymap::KeyMap;
use crate::membership::{ClusterState, OP_ADMIN};
use crate::resp;
use bytes::{BufMut, Bytes, BytesMut};
use paxos_core::{batch, Slot, Value};

/// Opcode of the batch tag request.
pub const OP_TAG: u8 = 0xFF;
const OP_SET: u8 = 1;
const OP_DEL: u8 = 2;
const OP_INCR: u8 = 3;
const OP_MSET: u8 = 4;
const OP_GET: u8 = 5;
const OP_EXISTS: u8 = 6;
const OP_MGET: u8 = 7;

/// Largest key accepted from a client.
pub const MAX_KEY_LEN: usize = 16 * 1024;
/// Largest value accepted from a client.
pub const MAX_VALUE_LEN: usize = 512 * 1024;

/// An application state machine replicated by paxos, in the spirit of RSL's
/// `RSLStateMachine`: it executes chosen decrees, saves and loads its state
/// for checkpoints, and hears about primary status changes.
pub trait StateMachine: Send + 'static {
    /// Executes the decree chosen at `slot`, which must be
    /// `applied_through() + 1`. For a batch of requests, pushes exactly one
    /// output per request onto `outputs`, in order; for a no-op or a
    /// reconfiguration, pushes nothing.
    fn apply(&mut self, slot: Slot, value: &Value, outputs: &mut Vec<Bytes>);

    /// The last slot executed (0 before any).
    fn applied_through(&self) -> Slot;

    /// The whole state, including `applied_through`, as self-checking bytes.
    fn snapshot(&self) -> Bytes;

    /// Replaces the state with a snapshot taken by [`StateMachine::snapshot`].
    /// On error the state is left unchanged.
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), SnapshotError>;

    /// This replica became primary (`true`) or stopped being primary.
    fn notify_status(&mut self, is_primary: bool);

    /// The replicated cluster state (address book, last reconfiguration),
    /// if this state machine keeps one. The node records applied
    /// reconfigurations in it and starts the core from it after a restart;
    /// without it, membership changes do not survive a restart.
    fn cluster(&self) -> Option<&ClusterState> {
        None
    }

    /// See [`StateMachine::cluster`].
    fn cluster_mut(&mut self) -> Option<&mut ClusterState> {
        None
    }
}

/// Why a snapshot could not be restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// The bytes are not a KV snapshot (wrong magic).
    #[error("not a paxos-kv snapshot (bad magic)")]
    BadHeader,
    /// A snapshot format this build does not know (written by a newer one).
    #[error(
        "paxos-kv snapshot format version {0} is not supported (this build reads versions 1 and 2)"
    )]
    UnknownVersion(u32),
    /// The checksum does not match the content.
    #[error("snapshot checksum mismatch: stored {stored:08x}, computed {computed:08x}")]
    Checksum {
        /// The checksum in the snapshot.
        stored: u32,
        /// The checksum of the bytes read.
        computed: u32,
    },
    /// The content ends early or has bytes left over.
    #[error("snapshot truncated or malformed at byte {0}")]
    Malformed(usize),
}

/// What kind of command a client sent, decided when it is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandKind {
    /// Changes state: goes through consensus.
    Write,
    /// Reads state: ordered through the log for linearizability.
    Read,
}

/// Why a client command was rejected before it reached consensus. The
/// `Display` text is the RESP error line (without the leading `-`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// Unknown command name.
    #[error("ERR unknown command '{0}'")]
    Unknown(String),
    /// Wrong number of arguments.
    #[error("ERR wrong number of arguments for '{0}' command")]
    Arity(&'static str),
    /// A key or value over the size limits.
    #[error("ERR key or value too large")]
    TooLarge,
}

fn put_str(out: &mut BytesMut, s: &[u8]) {
    out.put_u32_le(s.len() as u32);
    out.put_slice(s);
}

fn check_sizes<A: AsRef<[u8]>>(keys: &[A], values: &[A]) -> Result<(), CommandError> {
    if keys.iter().any(|k| k.as_ref().len() > MAX_KEY_LEN)
        || values.iter().any(|v| v.as_ref().len() > MAX_VALUE_LEN)
    {
        return Err(CommandError::TooLarge);
    }
    Ok(())
}

/// Validates a client command (`args[0]` is the name, case-insensitive) and
/// appends its request encoding to `out`. On error nothing is appended.
/// Arguments may be borrowed slices of the connection's read buffer, so a
/// parsed command costs no allocation.
pub fn encode_command<A: AsRef<[u8]>>(
    args: &[A],
    out: &mut BytesMut,
) -> Result<CommandKind, CommandError> {
    let Some((name, rest)) = args.split_first() else {
        return Err(CommandError::Arity(""));
    };
    let name = name.as_ref();
    let mut upper = [0u8; 8];
    let n = name.len().min(upper.len());
    upper[..n].copy_from_slice(&name[..n]);
    upper.make_ascii_uppercase();
    let name_up: &[u8] = if name.len() <= upper.len() {
        &upper[..n]
    } else {
        b""
    };
    let arity = |ok: bool, cmd: &'static str| {
        if ok {
            Ok(())
        } else {
            Err(CommandError::Arity(cmd))
        }
    };
    match name_up {
        b"SET" => {
            arity(rest.len() == 2, "set")?;
            check_sizes(&rest[..1], &rest[1..])?;
            out.put_u8(OP_SET);
            put_str(out, rest[0].as_ref());
            put_str(out, rest[1].as_ref());
            Ok(CommandKind::Write)
        }
        b"GET" => {
            arity(rest.len() == 1, "get")?;
            check_sizes(rest, &[])?;
            out.put_u8(OP_GET);
            put_str(out, rest[0].as_ref());
            Ok(CommandKind::Read)
        }
        b"INCR" => {
            arity(rest.len() == 1, "incr")?;
            check_sizes(rest, &[])?;
            out.put_u8(OP_INCR);
            put_str(out, rest[0].as_ref());
            Ok(CommandKind::Write)
        }
        b"DEL" | b"EXISTS" | b"MGET" => {
            let (op, cmd, kind) = match name_up {
                b"DEL" => (OP_DEL, "del", CommandKind::Write),
                b"EXISTS" => (OP_EXISTS, "exists", CommandKind::Read),
                _ => (OP_MGET, "mget", CommandKind::Read),
            };
            arity(!rest.is_empty(), cmd)?;
            check_sizes(rest, &[])?;
            out.put_u8(op);
            out.put_u32_le(rest.len() as u32);
            for k in rest {
                put_str(out, k.as_ref());
            }
            Ok(kind)
        }
        b"MSET" => {
            arity(!rest.is_empty() && rest.len() % 2 == 0, "mset")?;
            if rest.chunks(2).any(|kv| {
                kv[0].as_ref().len() > MAX_KEY_LEN || kv[1].as_ref().len() > MAX_VALUE_LEN
            }) {
                return Err(CommandError::TooLarge);
            }
            out.put_u8(OP_MSET);
            out.put_u32_le((rest.len() / 2) as u32);
            for kv in rest.chunks(2) {
                put_str(out, kv[0].as_ref());
                put_str(out, kv[1].as_ref());
            }
            Ok(CommandKind::Write)
        }
        _ => Err(CommandError::Unknown(
            String::from_utf8_lossy(&name[..name.len().min(64)]).into_owned(),
        )),
    }
}

/// A cursor over one encoded request; every read is bounds-checked.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn u32(&mut self) -> Option<u32> {
        let b = self.buf.get(self.pos..self.pos + 4)?;
        self.pos += 4;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Option<u64> {
        let b = self.buf.get(self.pos..self.pos + 8)?;
        self.pos += 8;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Some(u64::from_le_bytes(a))
    }
    fn str(&mut self) -> Option<&'a [u8]> {
        let len = self.u32()? as usize;
        let s = self.buf.get(self.pos..self.pos.checked_add(len)?)?;
        self.pos += len;
        Some(s)
    }
    /// A count of items each at least `min_item` bytes long, checked against
    /// the bytes left so a corrupt count cannot cause a huge allocation.
    fn count(&mut self, min_item: usize) -> Option<usize> {
        let n = self.u32()? as usize;
        (n.saturating_mul(min_item) <= self.buf.len() - self.pos).then_some(n)
    }
    fn done(&self) -> bool {
        self.pos == self.buf.len()
    }
}

static REPLY_OK: &[u8] = b"+OK\r\n";
static REPLY_CORRUPT: &[u8] = b"-ERR corrupt request in log\r\n";
static REPLY_NOT_INT: &[u8] = b"-ERR value is not an integer or out of range\r\n";
static REPLY_OVERFLOW: &[u8] = b"-ERR increment or decrement would overflow\r\n";

/// The key-value map and the last slot applied to it.
#[derive(Debug, Default)]
pub struct KvStore {
    map: KeyMap,
    applied: Slot,
    is_primary: bool,
    /// Address book and last reconfiguration (replicated, checkpointed).
    cluster: ClusterState,
    /// Reused for building replies, so most replies cost one small copy.
    scratch: BytesMut,
}

impl KvStore {
    /// An empty store.
    pub fn new() -> Self {
        KvStore::default()
    }

    /// Reads a key directly (tests, tools).
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.map.get(key)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the store holds no keys.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Whether the last status notification said primary.
    pub fn is_primary(&self) -> bool {
        self.is_primary
    }

    /// Stores a copy of `value` under `key`. Overwriting an existing key
    /// (the common case) neither allocates a new key nor frees the old one,
    /// and an overwrite of the same size usually allocates nothing.
    fn set(&mut self, key: &[u8], value: &[u8]) {
        // Copied out of the decree buffer: a slice would pin the whole batch
        // in memory for as long as the key lives.
        self.map.set(key, value);
    }

    fn reply(&mut self, build: impl FnOnce(&mut BytesMut)) -> Bytes {
        build(&mut self.scratch);
        self.scratch.split().freeze()
    }

    /// Executes one request and returns its RESP reply.
    pub fn execute(&mut self, request: &[u8]) -> Bytes {
        self.execute_inner(request)
            .unwrap_or_else(|| Bytes::from_static(REPLY_CORRUPT))
    }

    fn execute_inner(&mut self, request: &[u8]) -> Option<Bytes> {
        let (&op, body) = request.split_first()?;
        let mut r = Reader { buf: body, pos: 0 };
        let out = match op {
            OP_TAG => Bytes::new(),
            OP_SET => {
                let (k, v) = (r.str()?, r.str()?);
                if !r.done() {
                    return None;
                }
                self.set(k, v);
                Bytes::from_static(REPLY_OK)
            }
            OP_MSET => {
                let n = r.count(8)?;
                let start = r.pos;
                for _ in 0..n {
                    r.str()?;
                    r.str()?;
                }
                if !r.done() {
                    return None;
                }
                // Validated the whole request first, so MSET is all-or-nothing.
                r.pos = start;
                for _ in 0..n {
                    let (k, v) = (r.str()?, r.str()?);
                    self.set(k, v);
                }
                Bytes::from_static(REPLY_OK)
            }
            OP_DEL | OP_EXISTS => {
                let n = r.count(4)?;
                let start = r.pos;
                for _ in 0..n {
                    r.str()?;
                }
                if !r.done() {
                    return None;
                }
                r.pos = start;
                let mut count = 0i64;
                for _ in 0..n {
                    let k = r.str()?;
                    let hit = if op == OP_DEL {
                        self.map.remove(k)
                    } else {
                        self.map.contains_key(k)
                    };
                    count += i64::from(hit);
                }
                self.reply(|o| resp::write_integer(o, count))
            }
            OP_INCR => {
                let k = r.str()?;
                if !r.done() {
                    return None;
                }
                let current = match self.map.get(k) {
                    None => Some(0i64),
                    Some(v) => std::str::from_utf8(v)
                        .ok()
                        .and_then(|s| s.parse::<i64>().ok()),
                };
                match current {
                    None => Bytes::from_static(REPLY_NOT_INT),
                    Some(c) => match c.checked_add(1) {
                        None => Bytes::from_static(REPLY_OVERFLOW),
                        Some(next) => {
                            self.map.set(k, next.to_string().as_bytes());
                            self.reply(|o| resp::write_integer(o, next))
                        }
                    },
                }
            }
            OP_GET => {
                let k = r.str()?;
                if !r.done() {
                    return None;
                }
                let v = self.map.get(k);
                resp::write_bulk(&mut self.scratch, v);
                self.scratch.split().freeze()
            }
            OP_MGET => {
                let n = r.count(4)?;
                let mut keys = Vec::with_capacity(n);
                for _ in 0..n {
                    keys.push(r.str()?);
                }
                if !r.done() {
                    return None;
                }
                let map = &self.map;
                let scratch = &mut self.scratch;
                resp::write_array_header(scratch, Some(n));
                for k in keys {
                    resp::write_bulk(scratch, map.get(k));
                }
                scratch.split().freeze()
            }
            OP_ADMIN => return self.cluster.execute(body),
            _ => return None,
        };
        Some(out)
    }
}

const SNAPSHOT_MAGIC: &[u8; 8] = b"PXKVSNAP";
/// Version 2 appends the cluster state; version 1 (no cluster state) is
/// still read.
const SNAPSHOT_VERSION: u32 = 2;

impl StateMachine for KvStore {
    fn apply(&mut self, slot: Slot, value: &Value, outputs: &mut Vec<Bytes>) {
        paxos_contracts::requires!(
            slot == self.applied + 1,
            "apply slot {} after {}",
            slot,
            self.applied
        );
        let before = paxos_contracts::snapshot!(outputs.len());
        if let Value::Requests(batch_bytes) = value {
            match batch::iter(batch_bytes) {
                Ok(requests) => {
                    outputs.reserve(requests.len());
                    for request in requests {
                        let out = self.execute(&request);
                        outputs.push(out);
                    }
                }
                Err(e) => {
                    // Same bytes on every replica, so every replica skips it.
                    tracing::error!(slot, error = %e, "chosen batch does not decode; skipped");
                }
            }
        }
        self.applied = slot;
        paxos_contracts::ensures!(
            match value {
                Value::Requests(b) =>
                    batch::iter(b).map(|i| i.len()).unwrap_or(0)
                        == outputs.len() - before.unwrap_or(0),
                _ => outputs.len() == before.unwrap_or(0),
            },
            "one output per request"
        );
    }

    fn applied_through(&self) -> Slot {
        self.applied
    }

    fn snapshot(&self) -> Bytes {
        // Sorted so that equal states give equal snapshot bytes on every replica.
        let mut entries: Vec<(&[u8], &[u8])> = self.map.iter().collect();
        entries.sort_unstable();
        let size: usize = 28
            + entries
                .iter()
                .map(|(k, v)| 8 + k.len() + v.len())
                .sum::<usize>();
        let mut out = BytesMut::with_capacity(size + 4);
        out.put_slice(SNAPSHOT_MAGIC);
        out.put_u32_le(SNAPSHOT_VERSION);
        out.put_u64_le(self.applied);
        out.put_u64_le(entries.len() as u64);
        for (k, v) in entries {
            put_str(&mut out, k);
            put_str(&mut out, v);
        }
        self.cluster.encode(&mut out);
        let crc = crc32c::crc32c(&out);
        out.put_u32_le(crc);
        out.freeze()
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), SnapshotError> {
        if snapshot.len() < 32 || &snapshot[..8] != SNAPSHOT_MAGIC {
            return Err(SnapshotError::BadHeader);
        }
        let (body, tail) = snapshot.split_at(snapshot.len() - 4);
        let stored = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
        let computed = crc32c::crc32c(body);
        if stored != computed {
            return Err(SnapshotError::Checksum { stored, computed });
        }
        let mut r = Reader { buf: body, pos: 8 };
        let malformed = |r: &Reader<'_>| SnapshotError::Malformed(r.pos);
        let version = r.u32().ok_or_else(|| malformed(&r))?;
        if version != 1 && version != SNAPSHOT_VERSION {
            return Err(SnapshotError::UnknownVersion(version));
        }
        let applied = r.u64().ok_or_else(|| malformed(&r))?;
        let count = r.u64().ok_or_else(|| malformed(&r))?;
        if count.saturating_mul(8) > (body.len() - r.pos) as u64 {
            return Err(malformed(&r));
        }
        let mut map = KeyMap::with_capacity(count as usize);
        for _ in 0..count {
            let k = r.str().ok_or_else(|| malformed(&r))?;
            let v = r.str().ok_or_else(|| malformed(&r))?;
            map.set(k, v);
        }
        let cluster = if version == 1 {
            ClusterState::default()
        } else {
            ClusterState::decode(body, &mut r.pos).ok_or_else(|| malformed(&r))?
        };
        if !r.done() {
            return Err(malformed(&r));
        }
        self.map = map;
        // A fresh generation, so the node re-reads the book.
        let generation = self.cluster.generation() + 1;
        self.cluster = cluster.with_generation(generation);
        self.applied = applied;
        Ok(())
    }

    fn notify_status(&mut self, is_primary: bool) {
        self.is_primary = is_primary;
    }

    fn cluster(&self) -> Option<&ClusterState> {
        Some(&self.cluster)
    }

    fn cluster_mut(&mut self) -> Option<&mut ClusterState> {
        Some(&mut self.cluster)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A command's arguments as the server hands them over (shared by the
    /// admin tests).
    pub(crate) fn args(parts: &[&str]) -> Vec<Bytes> {
        parts
            .iter()
            .map(|p| Bytes::copy_from_slice(p.as_bytes()))
            .collect()
    }

    fn encode(parts: &[&str]) -> Bytes {
        let mut out = BytesMut::new();
        encode_command(&args(parts), &mut out).unwrap();
        out.freeze()
    }

    fn run(store: &mut KvStore, cmds: &[&[&str]]) -> Vec<Bytes> {
        let reqs: Vec<Bytes> = cmds.iter().map(|c| encode(c)).collect();
        let value = Value::Requests(batch::encode(reqs.iter().map(|r| &r[..])));
        let mut outs = Vec::new();
        let slot = store.applied_through() + 1;
        store.apply(slot, &value, &mut outs);
        outs
    }

    #[test]
    fn commands_execute_with_redis_replies() {
        let mut s = KvStore::new();
        let outs = run(
            &mut s,
            &[
                &["SET", "a", "1"],
                &["get", "a"],
                &["INCR", "a"],
                &["INCR", "n"],
                &["MSET", "x", "1", "y", "2"],
                &["MGET", "x", "nope", "y"],
                &["EXISTS", "x", "y", "z"],
                &["DEL", "x", "z"],
                &["GET", "x"],
                &["SET", "s", "abc"],
                &["INCR", "s"],
            ],
        );
        let text: Vec<&[u8]> = outs.iter().map(|b| &b[..]).collect();
        assert_eq!(
            text,
            vec![
                &b"+OK\r\n"[..],
                b"$1\r\n1\r\n",
                b":2\r\n",
                b":1\r\n",
                b"+OK\r\n",
                b"*3\r\n$1\r\n1\r\n$-1\r\n$1\r\n2\r\n",
                b":2\r\n",
                b":1\r\n",
                b"$-1\r\n",
                b"+OK\r\n",
                REPLY_NOT_INT,
            ]
        );
        assert_eq!(s.applied_through(), 1);
    }

    #[test]
    fn incr_overflow_is_an_error_not_a_wrap() {
        let mut s = KvStore::new();
        let max = i64::MAX.to_string();
        let outs = run(&mut s, &[&["SET", "k", &max], &["INCR", "k"]]);
        assert_eq!(&outs[1][..], REPLY_OVERFLOW);
        assert_eq!(s.get(b"k").unwrap(), max.as_bytes());
    }

    #[test]
    fn bad_commands_are_rejected_before_consensus() {
        let mut out = BytesMut::new();
        assert_eq!(
            encode_command(&args(&["FLUSHALL"]), &mut out),
            Err(CommandError::Unknown("FLUSHALL".into()))
        );
        assert_eq!(
            encode_command(&args(&["SET", "k"]), &mut out),
            Err(CommandError::Arity("set"))
        );
        assert_eq!(
            encode_command(&args(&["MSET", "k"]), &mut out),
            Err(CommandError::Arity("mset"))
        );
        assert_eq!(
            encode_command(&args(&["DEL"]), &mut out),
            Err(CommandError::Arity("del"))
        );
        assert_eq!(
            encode_command(&args(&["AVERYLONGCOMMANDNAME"]), &mut out)
                .unwrap_err()
                .to_string(),
            "ERR unknown command 'AVERYLONGCOMMANDNAME'"
        );
        let big = vec![
            Bytes::from_static(b"SET"),
            Bytes::from_static(b"k"),
            Bytes::from(vec![0u8; MAX_VALUE_LEN + 1]),
        ];
        assert_eq!(encode_command(&big, &mut out), Err(CommandError::TooLarge));
        assert!(out.is_empty(), "nothing appended on error");
        assert_eq!(
            encode_command(&args(&["exists", "a"]), &mut out),
            Ok(CommandKind::Read)
        );
    }

    #[test]
    fn noop_and_corrupt_batches_advance_without_outputs() {
        let mut s = KvStore::new();
        let mut outs = Vec::new();
        s.apply(1, &Value::Noop, &mut outs);
        s.apply(2, &Value::Requests(Bytes::from_static(&[9, 9])), &mut outs);
        assert!(outs.is_empty());
        assert_eq!(s.applied_through(), 2);
    }

    #[test]
    fn snapshot_roundtrips_and_detects_corruption() {
        let mut s = KvStore::new();
        run(
            &mut s,
            &[&["SET", "a", "1"], &["SET", "b", "2"], &["INCR", "c"]],
        );
        let snap = s.snapshot();
        let mut t = KvStore::new();
        t.restore(&snap).unwrap();
        assert_eq!(t.applied_through(), 1);
        assert_eq!(t.len(), 3);
        assert_eq!(t.snapshot(), snap, "same state, same bytes");
        let mut bad = snap.to_vec();
        bad[30] ^= 1;
        assert!(matches!(
            t.restore(&bad),
            Err(SnapshotError::Checksum { .. })
        ));
        assert_eq!(t.restore(b"nonsense"), Err(SnapshotError::BadHeader));
        assert_eq!(t.len(), 3, "failed restore leaves state unchanged");
    }

    proptest! {
        #[test]
        fn arbitrary_requests_never_panic_and_are_deterministic(reqs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..10)) {
            let value = Value::Requests(batch::encode(reqs.iter().map(|r| &r[..])));
            let (mut a, mut b) = (KvStore::new(), KvStore::new());
            let (mut oa, mut ob) = (Vec::new(), Vec::new());
            a.apply(1, &value, &mut oa);
            b.apply(1, &value, &mut ob);
            prop_assert_eq!(oa.len(), reqs.len());
            prop_assert_eq!(oa, ob);
            prop_assert_eq!(a.snapshot(), b.snapshot());
        }

        #[test]
        fn arbitrary_snapshot_bytes_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..128)) {
            let mut s = KvStore::new();
            let _ = s.restore(&raw);
        }

        #[test]
        fn encoded_commands_match_a_model(ops in proptest::collection::vec((0u8..4, 0u8..4, 0u8..50), 1..60)) {
            let mut s = KvStore::new();
            let mut model: std::collections::HashMap<Vec<u8>, Vec<u8>> = std::collections::HashMap::new();
            for (op, key, val) in ops {
                let k = format!("k{key}");
                let v = val.to_string();
                let cmd: Vec<&str> = match op { 0 => vec!["SET", &k, &v], 1 => vec!["DEL", &k], 2 => vec!["INCR", &k], _ => vec!["GET", &k] };
                let out = run(&mut s, &[&cmd]);
                match op {
                    0 => { model.insert(k.clone().into_bytes(), v.into_bytes()); }
                    1 => { model.remove(k.as_bytes()); }
                    2 => {
                        let next = model.get(k.as_bytes()).map(|v| String::from_utf8_lossy(v).parse::<i64>().unwrap()).unwrap_or(0) + 1;
                        let expect = format!(":{next}\r\n");
                        prop_assert_eq!(&out[0][..], expect.as_bytes());
                        model.insert(k.clone().into_bytes(), next.to_string().into_bytes());
                    }
                    _ => {
                        let mut expect = BytesMut::new();
                        resp::write_bulk(&mut expect, model.get(k.as_bytes()).map(|v| &v[..]));
                        prop_assert_eq!(&out[0][..], &expect[..]);
                    }
                }
            }
        }
    }
}
