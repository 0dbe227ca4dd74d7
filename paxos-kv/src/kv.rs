//! The replicated state machine: a key-value map driven by the chosen log.
//!
//! Client commands (RESP argument lists) are validated and encoded once, on
//! the replica that receives them, into a compact binary *request*. Requests
//! are batched into decrees; every replica applies the same decrees in the
//! same slot order, and paxos-node hands each request to
//! [`KvStore`]'s [`StateMachine::execute`], which is deterministic: the
//! output of each request depends only on the request and the state before
//! it. The output of a request is the RESP reply the client gets,
//! ready to write to its socket.
//!
//! Request encoding (integers little-endian; `str` is `u32 len | bytes`):
//!
//! ```text
//! 0x01 SET    str key, str value
//! 0x02 DEL    u32 n, n × str key
//! 0x03 INCR   str key
//! 0x04 MSET   u32 n, n × (str key, str value)
//! 0x05 GET    str key                (reads are ordered through the log)
//! 0x06 EXISTS u32 n, n × str key
//! 0x07 MGET   u32 n, n × str key
//! 0x08 INCRBY str key, i64 delta      (also DECR, DECRBY: a negated delta)
//! ```
//!
//! A request that does not decode (it can only come from a corrupt or
//! foreign log) yields the same error output on every replica and changes
//! nothing, so replicas never diverge and never panic on it.

use crate::keymap::{key_digest, FrozenKeyMap, KeyMap};
use crate::resp;
use bytes::{BufMut, Bytes, BytesMut};
use paxos_node::{Decree, SnapshotError, StateMachine};
use std::io::Read;

const OP_SET: u8 = 1;
const OP_DEL: u8 = 2;
const OP_INCR: u8 = 3;
const OP_MSET: u8 = 4;
const OP_GET: u8 = 5;
const OP_EXISTS: u8 = 6;
const OP_MGET: u8 = 7;
const OP_INCRBY: u8 = 8;

/// Largest key accepted from a client.
pub const MAX_KEY_LEN: usize = 16 * 1024;
/// Largest value accepted from a client.
pub const MAX_VALUE_LEN: usize = 512 * 1024;

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
    /// An argument that must be an integer is not one.
    #[error("ERR value is not an integer or out of range")]
    NotAnInteger,
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
        b"INCRBY" | b"DECRBY" | b"DECR" => {
            let (cmd, with_delta) = match name_up {
                b"INCRBY" => ("incrby", true),
                b"DECRBY" => ("decrby", true),
                _ => ("decr", false),
            };
            arity(rest.len() == 1 + usize::from(with_delta), cmd)?;
            check_sizes(&rest[..1], &[])?;
            let delta = if with_delta {
                std::str::from_utf8(rest[1].as_ref())
                    .ok()
                    .and_then(|t| t.parse::<i64>().ok())
                    .ok_or(CommandError::NotAnInteger)?
            } else {
                1
            };
            let delta = if name_up == b"INCRBY" {
                delta
            } else {
                delta.checked_neg().ok_or(CommandError::NotAnInteger)?
            };
            out.put_u8(OP_INCRBY);
            put_str(out, rest[0].as_ref());
            out.put_i64_le(delta);
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
    fn i64(&mut self) -> Option<i64> {
        let b = self.buf.get(self.pos..self.pos + 8)?;
        self.pos += 8;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Some(i64::from_le_bytes(a))
    }
    fn u32(&mut self) -> Option<u32> {
        let b = self.buf.get(self.pos..self.pos + 4)?;
        self.pos += 4;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
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

/// The key-value map.
#[derive(Debug, Default)]
pub struct KvStore {
    map: KeyMap,
    is_primary: bool,
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
            OP_INCR | OP_INCRBY => {
                let k = r.str()?;
                let delta = if op == OP_INCRBY { r.i64()? } else { 1 };
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
                    Some(c) => match c.checked_add(delta) {
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
            _ => return None,
        };
        Some(out)
    }
}

const SNAPSHOT_MAGIC: &[u8; 8] = b"PXKVSNAP";
/// Version 4: entries in ascending `(CRC32C(key), key)` order, the order a
/// sharded [`KeyMap`] can write one shard at a time. Otherwise as version 3.
const SNAPSHOT_VERSION: u32 = 4;
/// Version 3: the map only (the applied slot and the cluster directory
/// belong to paxos-node's checkpoint section), entries in ascending key
/// order. Still read, so checkpoints written before version 4 restore.
const SNAPSHOT_VERSION_KEY_ORDER: u32 = 3;
/// Bytes of magic, version and count.
const SNAPSHOT_HEADER: usize = 20;
/// Bytes of the CRC32C trailer.
const SNAPSHOT_TRAILER: usize = 4;
/// Largest single write [`KvSnapshot`] hands its sink, so a sink with
/// per-write costs (a checkpoint block writer) sees bounded pieces and the
/// writer's buffer stays small whatever the values' sizes.
const SNAPSHOT_WRITE_CHUNK: usize = 64 * 1024;

/// Why bytes are not a KV snapshot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvSnapshotError {
    /// The bytes are not a KV snapshot (wrong magic).
    #[error("not a paxos-kv snapshot (bad magic)")]
    BadHeader,
    /// A snapshot format this build does not read.
    #[error(
        "paxos-kv snapshot format version {0} is not supported (this build reads versions 3 and 4)"
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
    /// The content ends early, or a length is out of range.
    #[error("snapshot truncated or malformed at byte {0}")]
    Malformed(u64),
    /// An entry is not after the one before it in the format's order: the
    /// entries are out of order, or a key is repeated. A writer never does
    /// that, and a repeated key would make the count a lie.
    #[error("snapshot entry at byte {0} is out of order or repeats a key")]
    OutOfOrder(u64),
}

/// A frozen KV state, to be written out on another thread: magic, version,
/// entry count, the entries in ascending `(CRC32C(key), key)` order (equal
/// states give equal bytes on every replica), CRC32C of everything before
/// it.
///
/// Taking one ([`StateMachine::snapshot`]) shares the store's shards and
/// copies no entry, so it costs microseconds on the node's event loop at
/// any number of keys. The encoding happens in [`write_to`](paxos_node::Snapshot::write_to)
/// (on the checkpoint thread), one shard at a time, in pieces of at most
/// 64 KiB. Meanwhile the store copies a shard the first time it writes to
/// it (see [`crate::keymap`]), so the snapshot keeps the state it was taken
/// in.
#[derive(Clone, Debug, Default)]
pub struct KvSnapshot {
    map: FrozenKeyMap,
}

impl KvSnapshot {
    /// Number of keys in the snapshot.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when the snapshot holds no keys.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// How many bytes [`write_to`](paxos_node::Snapshot::write_to) writes. Reads every entry's
    /// sizes (O(keys)): for the simulator's disk-latency model and tools,
    /// not the event loop.
    pub fn encoded_len(&self) -> usize {
        let entries: usize = self.map.iter().map(|(k, v)| 8 + k.len() + v.len()).sum();
        SNAPSHOT_HEADER + SNAPSHOT_TRAILER + entries
    }

    /// The whole snapshot as one buffer (tests, tools, small states: a
    /// checkpoint streams it with `write_to` instead).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.write(&mut out)
            .expect("writing into a Vec does not fail");
        out
    }

    fn write(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        let mut w = ChunkedCrcWriter {
            out,
            buf: Vec::with_capacity(SNAPSHOT_WRITE_CHUNK),
            crc: 0,
        };
        w.put(SNAPSHOT_MAGIC)?;
        w.put(&SNAPSHOT_VERSION.to_le_bytes())?;
        w.put(&(self.map.len() as u64).to_le_bytes())?;
        for (k, v) in self.map.entries() {
            w.put(&(k.len() as u32).to_le_bytes())?;
            w.put(k)?;
            w.put(&(v.len() as u32).to_le_bytes())?;
            w.put(v)?;
        }
        w.finish()
    }
}

impl paxos_node::Snapshot for KvSnapshot {
    fn write_to(&mut self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        self.write(out)
    }
}

/// Gathers small puts into writes of exactly [`SNAPSHOT_WRITE_CHUNK`]
/// bytes (the last one shorter) and checksums each chunk as it goes out,
/// which is faster than checksumming every 4-byte length on its own.
struct ChunkedCrcWriter<'a> {
    out: &'a mut dyn std::io::Write,
    buf: Vec<u8>,
    /// CRC32C of everything already written to `out`.
    crc: u32,
}

impl ChunkedCrcWriter<'_> {
    fn put(&mut self, mut bytes: &[u8]) -> std::io::Result<()> {
        while !bytes.is_empty() {
            let room = SNAPSHOT_WRITE_CHUNK - self.buf.len();
            let (now, later) = bytes.split_at(room.min(bytes.len()));
            self.buf.extend_from_slice(now);
            bytes = later;
            if self.buf.len() == SNAPSHOT_WRITE_CHUNK {
                self.flush_buf()?;
            }
        }
        Ok(())
    }

    fn flush_buf(&mut self) -> std::io::Result<()> {
        self.crc = crc32c::crc32c_append(self.crc, &self.buf);
        self.out.write_all(&self.buf)?;
        self.buf.clear();
        Ok(())
    }

    /// Writes what is buffered and the trailer: the CRC32C of all of it.
    fn finish(mut self) -> std::io::Result<()> {
        self.flush_buf()?;
        self.out.write_all(&self.crc.to_le_bytes())
    }
}

/// Reads a snapshot stream while checksumming it.
struct CrcReader<'a> {
    inner: &'a mut dyn Read,
    crc: u32,
    pos: u64,
}

impl CrcReader<'_> {
    fn exact(&mut self, buf: &mut [u8]) -> Result<(), SnapshotError> {
        self.inner.read_exact(buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => {
                SnapshotError::invalid(KvSnapshotError::Malformed(self.pos))
            }
            _ => SnapshotError::Io(e),
        })?;
        self.crc = crc32c::crc32c_append(self.crc, buf);
        self.pos += buf.len() as u64;
        Ok(())
    }
    fn u32(&mut self) -> Result<u32, SnapshotError> {
        let mut b = [0u8; 4];
        self.exact(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    fn u64(&mut self) -> Result<u64, SnapshotError> {
        let mut b = [0u8; 8];
        self.exact(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    /// A length-prefixed string of at most `max` bytes, into `buf`.
    fn str_into(&mut self, max: usize, buf: &mut Vec<u8>) -> Result<(), SnapshotError> {
        let at = self.pos;
        let len = self.u32()? as usize;
        if len > max {
            return Err(SnapshotError::invalid(KvSnapshotError::Malformed(at)));
        }
        buf.resize(len, 0);
        self.exact(buf)
    }
}

impl KvStore {
    /// An order-independent digest of the map's contents, equal on two
    /// stores exactly when they hold the same keys and values (up to hash
    /// collisions). O(1) after [`KvStore::track_state_digest`], else
    /// O(state): for checkers, not the hot path.
    pub fn state_digest(&self) -> u64 {
        let sum = self.map.content_digest().unwrap_or_else(|| {
            self.map.iter().fold(0u64, |acc, (k, v)| {
                acc.wrapping_add(crate::keymap::entry_digest(k, v))
            })
        });
        (self.map.len() as u64).wrapping_add(sum)
    }

    /// Keeps [`KvStore::state_digest`] up to date on every write (and
    /// across restores), for a checker that asks after every step.
    pub fn track_state_digest(&mut self) {
        self.map.track_content_digest();
    }
}

impl StateMachine for KvStore {
    type Snapshot = KvSnapshot;

    fn execute(&mut self, _decree: &Decree, request: &[u8]) -> Bytes {
        KvStore::execute(self, request)
    }

    /// O(shards): shares the table's shards with the snapshot (see
    /// [`KvSnapshot`]); the encoding is left to `write_to`.
    fn snapshot(&mut self) -> KvSnapshot {
        KvSnapshot {
            map: self.map.freeze(),
        }
    }

    fn restore(&mut self, source: &mut dyn Read) -> Result<(), SnapshotError> {
        let mut r = CrcReader {
            inner: source,
            crc: 0,
            pos: 0,
        };
        let mut magic = [0u8; 8];
        r.exact(&mut magic)?;
        if &magic != SNAPSHOT_MAGIC {
            return Err(SnapshotError::invalid(KvSnapshotError::BadHeader));
        }
        let version = r.u32()?;
        if version != SNAPSHOT_VERSION && version != SNAPSHOT_VERSION_KEY_ORDER {
            return Err(SnapshotError::invalid(KvSnapshotError::UnknownVersion(
                version,
            )));
        }
        let count = r.u64()?;
        // Built aside and swapped in at the end, so a failed restore leaves
        // the state as it was. The capacity hint is capped: a corrupt count
        // must not allocate.
        let mut map = KeyMap::with_capacity(count.min(1 << 20) as usize);
        let (mut k, mut v) = (Vec::new(), Vec::new());
        // Each key must sort strictly after the one before it, in the
        // version's order (version 3: the key alone, so the digest is
        // taken as 0). That refuses repeated keys, which would make the
        // count disagree with the state, and keeps one encoding per state.
        let order_digest = |key: &[u8]| {
            if version == SNAPSHOT_VERSION {
                key_digest(key)
            } else {
                0
            }
        };
        let (mut previous_key, mut previous_digest) = (Vec::new(), 0u32);
        for i in 0..count {
            let at = r.pos;
            r.str_into(MAX_KEY_LEN, &mut k)?;
            r.str_into(MAX_VALUE_LEN, &mut v)?;
            let digest = order_digest(&k);
            if i > 0 && (digest, &k[..]) <= (previous_digest, &previous_key[..]) {
                return Err(SnapshotError::invalid(KvSnapshotError::OutOfOrder(at)));
            }
            map.set(&k, &v);
            // The previous key's buffer is reused for the next key.
            std::mem::swap(&mut k, &mut previous_key);
            previous_digest = digest;
        }
        let computed = r.crc;
        let mut tail = [0u8; 4];
        r.inner.read_exact(&mut tail).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => {
                SnapshotError::invalid(KvSnapshotError::Malformed(r.pos))
            }
            _ => SnapshotError::Io(e),
        })?;
        let stored = u32::from_le_bytes(tail);
        if stored != computed {
            return Err(SnapshotError::invalid(KvSnapshotError::Checksum {
                stored,
                computed,
            }));
        }
        let mut extra = [0u8; 1];
        match r.inner.read(&mut extra) {
            Ok(0) => {}
            Ok(_) => {
                return Err(SnapshotError::invalid(KvSnapshotError::Malformed(
                    r.pos + 4,
                )))
            }
            Err(e) => return Err(SnapshotError::Io(e)),
        }
        if self.map.content_digest().is_some() {
            map.track_content_digest();
        }
        self.map = map;
        Ok(())
    }

    fn on_primary_change(&mut self, is_primary: bool) {
        self.is_primary = is_primary;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use paxos_core::Slot;
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

    const DECREE: Decree = Decree {
        slot: Slot(1),
        proposer: paxos_core::ReplicaId(1),
        time_us: 0,
    };

    fn run(store: &mut KvStore, cmds: &[&[&str]]) -> Vec<Bytes> {
        cmds.iter()
            .map(|c| StateMachine::execute(store, &DECREE, &encode(c)))
            .collect()
    }

    fn snapshot_bytes(store: &mut KvStore) -> Vec<u8> {
        store.snapshot().to_vec()
    }

    fn restore(store: &mut KvStore, mut bytes: &[u8]) -> Result<(), KvSnapshotError> {
        store.restore(&mut bytes).map_err(|e| match e {
            SnapshotError::Invalid(inner) => inner
                .downcast_ref::<KvSnapshotError>()
                .cloned()
                .expect("a KvSnapshotError"),
            SnapshotError::Io(e) => panic!("unexpected I/O error {e}"),
        })
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
    }

    #[test]
    fn incrby_decr_and_decrby_count_by_their_deltas() {
        let mut s = KvStore::new();
        let outs = run(
            &mut s,
            &[
                &["INCRBY", "n", "10"],
                &["DECR", "n"],
                &["decrby", "n", "-5"],
                &["INCRBY", "n", "-20"],
                &["SET", "t", "x"],
                &["INCRBY", "t", "1"],
            ],
        );
        let text: Vec<&[u8]> = outs.iter().map(|b| &b[..]).collect();
        assert_eq!(
            text,
            vec![
                &b":10\r\n"[..],
                b":9\r\n",
                b":14\r\n",
                b":-6\r\n",
                b"+OK\r\n",
                REPLY_NOT_INT
            ]
        );
        let mut out = BytesMut::new();
        for bad in [
            &["INCRBY", "n", "x"][..],
            &["INCRBY", "n", "1.5"],
            &["DECRBY", "n", "-9223372036854775808"],
        ] {
            assert_eq!(
                encode_command(&args(bad), &mut out),
                Err(CommandError::NotAnInteger),
                "{bad:?}"
            );
        }
        assert_eq!(
            encode_command(&args(&["INCRBY", "n"]), &mut out),
            Err(CommandError::Arity("incrby"))
        );
        assert_eq!(
            encode_command(&args(&["DECR", "n", "1"]), &mut out),
            Err(CommandError::Arity("decr"))
        );
        assert!(out.is_empty(), "nothing appended on error");
        let max = i64::MAX.to_string();
        let outs = run(
            &mut s,
            &[
                &["SET", "m", &max],
                &["INCRBY", "m", "1"],
                &["DECRBY", "m", "1"],
            ],
        );
        assert_eq!(&outs[1][..], REPLY_OVERFLOW);
        assert_eq!(&outs[2][..], format!(":{}\r\n", i64::MAX - 1).as_bytes());
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
    fn corrupt_requests_get_an_error_and_change_nothing() {
        let mut s = KvStore::new();
        run(&mut s, &[&["SET", "a", "1"]]);
        for raw in [&[][..], &[9, 9], &[OP_SET, 1, 0, 0, 0]] {
            assert_eq!(
                &StateMachine::execute(&mut s, &DECREE, raw)[..],
                REPLY_CORRUPT
            );
        }
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn snapshot_roundtrips_and_detects_corruption() {
        let mut s = KvStore::new();
        run(
            &mut s,
            &[&["SET", "a", "1"], &["SET", "b", "2"], &["INCR", "c"]],
        );
        let snap = snapshot_bytes(&mut s);
        let mut t = KvStore::new();
        restore(&mut t, &snap).unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(snapshot_bytes(&mut t), snap, "same state, same bytes");
        assert_eq!(t.state_digest(), s.state_digest());
        let mut bad = snap.to_vec();
        let last_value_byte = bad.len() - 5;
        bad[last_value_byte] ^= 1;
        assert!(matches!(
            restore(&mut t, &bad),
            Err(KvSnapshotError::Checksum { .. })
        ));
        assert_eq!(
            restore(&mut t, b"nonsensenonsense"),
            Err(KvSnapshotError::BadHeader)
        );
        for cut in 0..snap.len() {
            assert!(restore(&mut t, &snap[..cut]).is_err(), "cut at {cut}");
            assert_eq!(t.state_digest(), s.state_digest(), "cut at {cut}");
        }
        let mut longer = snap.to_vec();
        longer.push(0);
        assert_eq!(
            restore(&mut t, &longer),
            Err(KvSnapshotError::Malformed(snap.len() as u64)),
            "bytes left over are refused"
        );
        let mut v9 = snap.to_vec();
        v9[8..12].copy_from_slice(&9u32.to_le_bytes());
        let err = restore(&mut t, &v9).unwrap_err();
        assert_eq!(err, KvSnapshotError::UnknownVersion(9));
        assert!(err.to_string().contains("version 9 is not supported"));
        assert_eq!(t.len(), 3, "failed restore leaves state unchanged");
        assert_eq!(t.state_digest(), s.state_digest());
    }

    /// A snapshot in `version`'s layout of `entries`, in the order given,
    /// with a correct checksum: for the order and compatibility tests.
    fn encode_raw(version: u32, entries: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut out = BytesMut::new();
        out.put_slice(SNAPSHOT_MAGIC);
        out.put_u32_le(version);
        out.put_u64_le(entries.len() as u64);
        for (k, v) in entries {
            put_str(&mut out, k);
            put_str(&mut out, v);
        }
        let crc = crc32c::crc32c(&out);
        out.put_u32_le(crc);
        out.to_vec()
    }

    /// `entries` in version 4's order, ascending (CRC32C(key), key).
    fn in_digest_order<'a>(mut entries: Vec<(&'a [u8], &'a [u8])>) -> Vec<(&'a [u8], &'a [u8])> {
        entries.sort_by_key(|(k, _)| (key_digest(k), *k));
        entries
    }

    #[test]
    fn entries_out_of_order_or_repeated_are_refused_and_change_nothing() {
        let mut t = KvStore::new();
        t.set(b"kept", b"state");
        let before = t.state_digest();
        let sorted = in_digest_order(vec![(b"a", b"1"), (b"b", b"2"), (b"c", b"3")]);
        let good = encode_raw(SNAPSHOT_VERSION, &sorted);
        assert_eq!(
            snapshot_bytes(&mut {
                let mut s = KvStore::new();
                s.set(b"a", b"1");
                s.set(b"b", b"2");
                s.set(b"c", b"3");
                s
            }),
            good,
            "the writer writes this order"
        );
        let swapped = encode_raw(SNAPSHOT_VERSION, &[sorted[1], sorted[0], sorted[2]]);
        let second_entry_at = (SNAPSHOT_HEADER + 8 + sorted[1].0.len() + sorted[1].1.len()) as u64;
        assert_eq!(
            restore(&mut t, &swapped),
            Err(KvSnapshotError::OutOfOrder(second_entry_at))
        );
        let repeated = encode_raw(SNAPSHOT_VERSION, &[sorted[0], sorted[1], sorted[1]]);
        assert!(matches!(
            restore(&mut t, &repeated),
            Err(KvSnapshotError::OutOfOrder(_))
        ));
        assert_eq!(t.state_digest(), before, "failed restores change nothing");
        assert_eq!(t.get(b"kept"), Some(&b"state"[..]));
        restore(&mut t, &good).unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(t.get(b"kept"), None);
    }

    #[test]
    fn version_3_snapshots_in_key_order_still_restore() {
        let entries: [(&[u8], &[u8]); 3] = [(b"", b"empty key"), (b"a", b""), (b"b", b"2")];
        let mut t = KvStore::new();
        restore(&mut t, &encode_raw(SNAPSHOT_VERSION_KEY_ORDER, &entries)).unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(t.get(b""), Some(&b"empty key"[..]));
        assert_eq!(t.get(b"a"), Some(&b""[..]));
        let mut reversed = entries;
        reversed.reverse();
        assert!(matches!(
            restore(&mut t, &encode_raw(SNAPSHOT_VERSION_KEY_ORDER, &reversed)),
            Err(KvSnapshotError::OutOfOrder(_))
        ));
        assert_eq!(t.len(), 3);
        // Rewritten as version 4 from now on.
        assert_eq!(
            snapshot_bytes(&mut t),
            encode_raw(SNAPSHOT_VERSION, &in_digest_order(entries.to_vec()))
        );
    }

    /// Keys that land in many different shards.
    fn many_keys(n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| format!("key:{i}").into_bytes()).collect()
    }

    fn contents(store: &KvStore) -> std::collections::BTreeMap<Vec<u8>, Vec<u8>> {
        store
            .map
            .iter()
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect()
    }

    #[test]
    fn a_snapshot_writes_the_state_it_was_taken_in_while_the_store_moves_on() {
        let mut s = KvStore::new();
        let keys = many_keys(20_000);
        for k in &keys {
            s.set(k, k);
        }
        let at_snapshot = contents(&s);
        let mut snapshot = s.snapshot();
        // Overwrites of the same size and of another size, deletes, new
        // keys (some long enough to live on the heap): across most shards.
        for (i, k) in keys.iter().enumerate() {
            match i % 4 {
                0 => s.set(k, &vec![b'x'; k.len()]),
                1 => s.set(k, b"a longer value than the key was"),
                2 => assert!(s.map.remove(k)),
                _ => {}
            }
        }
        for i in 0..5_000 {
            s.set(
                format!("new key, long enough for the heap: {i}").as_bytes(),
                b"new",
            );
        }
        let live = contents(&s);
        assert_ne!(live, at_snapshot);

        let mut written = Vec::new();
        paxos_node::Snapshot::write_to(&mut snapshot, &mut written).unwrap();
        let mut t = KvStore::new();
        restore(&mut t, &written).unwrap();
        assert_eq!(contents(&t), at_snapshot, "the snapshot kept the old state");
        assert_eq!(contents(&s), live, "the store has the new state");
        assert_eq!(snapshot_bytes(&mut t), written, "one encoding per state");
    }

    #[test]
    fn taking_a_snapshot_copies_no_shard_until_a_write() {
        let mut s = KvStore::new();
        for k in many_keys(10_000) {
            s.set(&k, b"v");
        }
        let snapshot = s.snapshot();
        assert_eq!(snapshot.len(), 10_000);
        assert_eq!(
            snapshot.map.shards_shared_with(&s.map),
            crate::keymap::SHARDS
        );
        run(
            &mut s,
            &[&["GET", "key:1"], &["EXISTS", "key:2"], &["DEL", "absent"]],
        );
        assert_eq!(
            snapshot.map.shards_shared_with(&s.map),
            crate::keymap::SHARDS,
            "reads and a miss copy nothing"
        );
        run(&mut s, &[&["SET", "key:1", "w"]]);
        assert_eq!(
            snapshot.map.shards_shared_with(&s.map),
            crate::keymap::SHARDS - 1
        );
    }

    #[test]
    fn equal_states_write_identical_bytes_whatever_the_insertion_order() {
        let keys = many_keys(3_000);
        // Two stores: two different SipHash seeds, two insertion orders.
        let (mut a, mut b) = (KvStore::new(), KvStore::new());
        for k in &keys {
            a.set(k, b"value");
        }
        a.set(b"temporary", b"x");
        assert!(a.map.remove(b"temporary"));
        for k in keys.iter().rev() {
            b.set(k, b"a different size first");
            b.set(k, b"value");
        }
        assert_eq!(snapshot_bytes(&mut a), snapshot_bytes(&mut b));
        b.set(b"one more", b"");
        assert_ne!(snapshot_bytes(&mut a), snapshot_bytes(&mut b));
    }

    /// Every write the snapshot hands its sink is at most 64 KiB, even for
    /// values larger than that, and the pieces add up to the snapshot.
    #[test]
    fn snapshots_are_written_in_pieces_of_at_most_64_kib() {
        struct Pieces(Vec<Vec<u8>>);
        impl std::io::Write for Pieces {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.push(buf.to_vec());
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut s = KvStore::new();
        s.set(b"big", &vec![7u8; MAX_VALUE_LEN]);
        for k in many_keys(2_000) {
            s.set(&k, &[1u8; 100]);
        }
        let mut snapshot = s.snapshot();
        let mut pieces = Pieces(Vec::new());
        paxos_node::Snapshot::write_to(&mut snapshot, &mut pieces).unwrap();
        assert!(pieces.0.len() > MAX_VALUE_LEN / SNAPSHOT_WRITE_CHUNK);
        assert!(pieces.0.iter().all(|p| p.len() <= SNAPSHOT_WRITE_CHUNK));
        let joined = pieces.0.concat();
        assert_eq!(joined.len(), snapshot.encoded_len());
        assert_eq!(joined, snapshot.to_vec());
        let mut t = KvStore::new();
        restore(&mut t, &joined).unwrap();
        assert_eq!(t.state_digest(), s.state_digest());
    }

    #[test]
    fn the_digest_tells_states_apart() {
        let (mut a, mut b) = (KvStore::new(), KvStore::new());
        run(&mut a, &[&["SET", "x", "1"], &["SET", "y", "2"]]);
        run(&mut b, &[&["SET", "y", "2"], &["SET", "x", "1"]]);
        assert_eq!(
            a.state_digest(),
            b.state_digest(),
            "order of writes does not matter"
        );
        run(&mut b, &[&["SET", "x", "3"]]);
        assert_ne!(a.state_digest(), b.state_digest());
        run(&mut b, &[&["SET", "x", "1"], &["SET", "z", ""]]);
        assert_ne!(
            a.state_digest(),
            b.state_digest(),
            "an empty value is still a key"
        );
    }

    proptest! {
        #[test]
        fn arbitrary_requests_never_panic_and_are_deterministic(reqs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..10)) {
            let (mut a, mut b) = (KvStore::new(), KvStore::new());
            let oa: Vec<Bytes> = reqs.iter().map(|r| StateMachine::execute(&mut a, &DECREE, r)).collect();
            let ob: Vec<Bytes> = reqs.iter().map(|r| StateMachine::execute(&mut b, &DECREE, r)).collect();
            prop_assert_eq!(oa, ob);
            prop_assert_eq!(snapshot_bytes(&mut a), snapshot_bytes(&mut b));
        }

        #[test]
        fn arbitrary_snapshot_bytes_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..128)) {
            let mut s = KvStore::new();
            let _ = s.restore(&mut &raw[..]);
        }

        #[test]
        fn snapshots_round_trip_any_state(entries in proptest::collection::vec((proptest::collection::vec(any::<u8>(), 0..24), proptest::collection::vec(any::<u8>(), 0..64)), 0..40)) {
            let mut s = KvStore::new();
            for (k, v) in &entries {
                s.set(k, v);
            }
            let snap = snapshot_bytes(&mut s);
            let mut t = KvStore::new();
            t.restore(&mut &snap[..]).unwrap();
            prop_assert_eq!(t.len(), s.len());
            for (k, _) in &entries {
                prop_assert_eq!(t.get(k), s.get(k));
            }
            prop_assert_eq!(t.state_digest(), s.state_digest());
        }

        /// Any state made by sets and deletes (empty keys and values, keys
        /// past the inline limit) survives snapshot and restore exactly.
        #[test]
        fn snapshots_round_trip_any_sequence_of_sets_and_deletes(ops in proptest::collection::vec(
            (
                any::<bool>(),
                prop_oneof![
                    // Few distinct keys, some past the inline limit, so ops collide.
                    (0u8..4, 0usize..4).prop_map(|(b, size)| {
                        vec![b; [0, 1, crate::keymap::INLINE_KEY, crate::keymap::INLINE_KEY + 9][size]]
                    }),
                    proptest::collection::vec(any::<u8>(), 0..40),
                ],
                proptest::collection::vec(any::<u8>(), 0..40),
            ),
            0..80,
        )) {
            let mut s = KvStore::new();
            let mut model = std::collections::BTreeMap::new();
            for (is_set, k, v) in ops {
                if is_set {
                    s.set(&k, &v);
                    model.insert(k, v);
                } else {
                    prop_assert_eq!(s.map.remove(&k), model.remove(&k).is_some());
                }
            }
            let snap = snapshot_bytes(&mut s);
            prop_assert_eq!(snap.len(), s.snapshot().encoded_len());
            let mut t = KvStore::new();
            t.set(b"to be replaced", b"");
            restore(&mut t, &snap).unwrap();
            prop_assert_eq!(contents(&t), model);
            prop_assert_eq!(snapshot_bytes(&mut t), snap);
        }

        /// The tracked digest (O(1) per write) always equals the one
        /// computed by walking the map, through sets, overwrites of either
        /// size, deletes, frozen views and a restore.
        #[test]
        fn the_tracked_state_digest_equals_the_walked_one(ops in proptest::collection::vec(
            (0u8..3, 0u8..6, proptest::collection::vec(any::<u8>(), 0..8)),
            0..60,
        )) {
            let mut tracked = KvStore::new();
            tracked.set(b"before tracking", b"x");
            tracked.track_state_digest();
            let mut walked = KvStore::new();
            walked.set(b"before tracking", b"x");
            let mut frozen = Vec::new();
            for (op, key, value) in ops {
                let k = [key];
                match op {
                    0 => { tracked.set(&k, &value); walked.set(&k, &value); }
                    1 => { prop_assert_eq!(tracked.map.remove(&k), walked.map.remove(&k)); }
                    _ => frozen.push(tracked.snapshot()),
                }
                prop_assert!(tracked.map.content_digest().is_some());
                prop_assert_eq!(tracked.state_digest(), walked.state_digest());
            }
            let snap = snapshot_bytes(&mut walked);
            let mut other = KvStore::new();
            other.set(b"to be replaced", b"y");
            other.track_state_digest();
            restore(&mut other, &snap).unwrap();
            prop_assert!(other.map.content_digest().is_some(), "a restore keeps tracking");
            prop_assert_eq!(other.state_digest(), walked.state_digest());
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
