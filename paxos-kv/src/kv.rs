//! The replicated state machine: a key-value map driven by the chosen log.
//!
//! Client commands (RESP argument lists) are validated and encoded once, on
//! the replica that receives them, into a compact binary *request* (see
//! [`crate::command`] for the encoding). Requests are batched into decrees;
//! every replica applies the same decrees in the same slot order, and
//! paxos-node hands each request to [`KvStore`]'s
//! [`StateMachine::execute`], which is deterministic: the output of each
//! request depends only on the request, the decree's context and the state
//! before it. The output of a request is the RESP reply the client gets,
//! ready to write to its socket.
//!
//! # Time and expiry
//!
//! A key may have a deadline (`EXPIRE`, `SET ... EX`). The store's clock is
//! the largest decree time seen so far ([`Decree::time_us`], the proposing
//! leader's wall clock, in ms), so it is the same on every replica at every
//! slot and never goes back, even when a new leader's clock is behind the
//! old one's; no replica's own clock is ever read. A key whose deadline is
//! at or before the clock is absent for every command (expiry is lazy: the
//! command that meets such a key removes it first), and before each request
//! the store also reclaims up to [`RECLAIM_PER_REQUEST`] keys whose deadline
//! passed, earliest first, from the map's deadline index, so memory comes
//! back without any command touching the key and without a scan. The clock
//! and the deadlines are part of snapshots and of [`KvStore::state_digest`].
//! A decree with no time (0: the simulator, or logs from before decrees
//! carried one) leaves the clock where it is.
//!
//! A request that does not decode (it can only come from a corrupt or
//! foreign log) yields the same error output on every replica and changes
//! nothing, so replicas never diverge and never panic on it.

pub use crate::command::{encode_command, CommandError, CommandKind, MAX_KEY_LEN, MAX_VALUE_LEN};
use crate::command::{expire_if, set_flags, *};
use crate::glob::Pattern;
use crate::keymap::{key_digest, FrozenKeyMap, KeyMap};
use crate::resp;
use bytes::{Bytes, BytesMut};
use paxos_node::{Decree, SnapshotError, StateMachine};
use std::io::Read;

/// Keys past their deadline that each request reclaims before it runs (if
/// that many are due): enough to keep up with any expiry rate below a few
/// keys per request, and a bounded cost per request whatever the backlog.
pub const RECLAIM_PER_REQUEST: usize = 4;

/// A cursor over one encoded request; every read is bounds-checked.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Option<u8> {
        let b = *self.buf.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }
    fn i64(&mut self) -> Option<i64> {
        let b = self.buf.get(self.pos..self.pos + 8)?;
        self.pos += 8;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Some(i64::from_le_bytes(a))
    }
    fn u64(&mut self) -> Option<u64> {
        self.i64().map(|n| n as u64)
    }
    fn u32(&mut self) -> Option<u32> {
        let b = self.buf.get(self.pos..self.pos + 4)?;
        self.pos += 4;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    /// The whole rest of a SCAN request: cursor, COUNT, TYPE filter and
    /// MATCH pattern (the log path and the off-log path read it alike).
    fn scan_args(&mut self) -> Option<(u64, u32, u8, Option<&'a [u8]>)> {
        let (cursor, count, type_filter) = (self.u64()?, self.u32()?, self.u8()?);
        let pattern = match self.u8()? {
            0 => None,
            1 => Some(self.str()?),
            _ => return None,
        };
        self.end()?;
        Some((cursor, count, type_filter, pattern))
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
    /// `Some(())` when the request ended exactly here.
    fn end(&self) -> Option<()> {
        self.done().then_some(())
    }
}

static REPLY_OK: &[u8] = b"+OK\r\n";
static REPLY_NIL: &[u8] = b"$-1\r\n";
static REPLY_ZERO: &[u8] = b":0\r\n";
static REPLY_ONE: &[u8] = b":1\r\n";
static REPLY_CORRUPT: &[u8] = b"-ERR corrupt request in log\r\n";
static REPLY_NOT_INT: &[u8] = b"-ERR value is not an integer or out of range\r\n";
static REPLY_OVERFLOW: &[u8] = b"-ERR increment or decrement would overflow\r\n";
static REPLY_TOO_BIG: &[u8] = b"-ERR string exceeds maximum allowed size (proto-max-bulk-len)\r\n";
static REPLY_NOT_READ: &[u8] = b"-ERR not a read-only command\r\n";

/// The key-value map.
#[derive(Debug, Default)]
pub struct KvStore {
    map: KeyMap,
    /// The largest decree time seen, in ms since the Unix epoch: "now" for
    /// expiry (see the module docs).
    clock_ms: u64,
    /// The local wall clock as the driver last set it, in ms
    /// ([`KvStore::set_read_clock_ms`]): reads that skip the log judge
    /// expiry by the later of this and `clock_ms`, so a key whose deadline
    /// passed expires for readers even when no write comes to move
    /// `clock_ms`. Never used by a decree (not part of the replicated state).
    read_clock_ms: u64,
    is_primary: bool,
    /// Reused for building replies, so most replies cost one small copy.
    scratch: BytesMut,
    /// The same for reads that skip the log (`query` takes `&self`).
    query_scratch: std::cell::RefCell<BytesMut>,
}

fn integer(n: bool) -> Bytes {
    Bytes::from_static(if n { REPLY_ONE } else { REPLY_ZERO })
}

impl KvStore {
    /// An empty store.
    pub fn new() -> Self {
        KvStore::default()
    }

    /// Reads a key directly (tests, tools), ignoring expiry.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.map.get(key)
    }

    /// Number of keys, counting those past their deadline that no request
    /// has reclaimed yet (as Redis's `DBSIZE` does).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the store holds no keys.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// How many keys have a deadline.
    pub fn expiring_len(&self) -> usize {
        self.map.deadlines_len()
    }

    /// The store's clock: the largest decree time seen, in ms.
    pub fn clock_ms(&self) -> u64 {
        self.clock_ms
    }

    /// Sets the clock reads that skip the log judge expiry by (the local
    /// wall clock in ms since the Unix epoch; see `read_clock_ms`).
    pub fn set_read_clock_ms(&mut self, ms: u64) {
        self.read_clock_ms = ms;
    }

    /// Whether the last status notification said primary.
    pub fn is_primary(&self) -> bool {
        self.is_primary
    }

    /// Stores a copy of `value` under `key`. Overwriting an existing key
    /// (the common case) neither allocates a new key nor frees the old one,
    /// and an overwrite of the same size usually allocates nothing. Keeps
    /// the key's deadline: callers that replace a value drop it.
    fn set(&mut self, key: &[u8], value: &[u8]) {
        // Copied out of the decree buffer: a slice would pin the whole batch
        // in memory for as long as the key lives.
        self.map.set(key, value);
    }

    /// A key's deadline, if it has one and it is still ahead of the clock.
    fn live_deadline(&self, key: &[u8]) -> Option<u64> {
        self.map.deadline(key).filter(|&d| d > self.clock_ms)
    }

    /// Removes `key` if its deadline has passed: every command calls this
    /// for each key it touches, so an expired key is absent for all of
    /// them. Copies nothing for a key without a deadline.
    fn expire_if_due(&mut self, key: &[u8]) {
        if self.map.deadline(key).is_some_and(|d| d <= self.clock_ms) {
            self.map.remove(key);
        }
    }

    /// Reclaims up to [`RECLAIM_PER_REQUEST`] keys whose deadline passed,
    /// earliest deadline first: deterministic, like everything here.
    fn reclaim_due(&mut self) {
        let mut key = std::mem::take(&mut self.scratch);
        for _ in 0..RECLAIM_PER_REQUEST {
            match self.map.first_deadline() {
                Some((deadline, k)) if deadline <= self.clock_ms => {
                    key.clear();
                    key.extend_from_slice(k);
                    self.map.remove(&key);
                }
                _ => break,
            }
        }
        key.clear();
        self.scratch = key;
    }

    /// Advances the clock to `time_us` (ignored when 0 or behind it) and
    /// executes one request: what [`StateMachine::execute`] does with the
    /// decree's time.
    pub fn execute_at(&mut self, time_us: u64, request: &[u8]) -> Bytes {
        self.clock_ms = self.clock_ms.max(time_us / 1000);
        self.reclaim_due();
        self.execute(request)
    }

    /// The RESP bulk reply carrying `key`'s value (nil if absent). A large
    /// value's reply is the stored buffer itself, shared, not copied (see
    /// [`crate::stored_value`]): however many replies of it are pending,
    /// the node holds its bytes once. A small one is copied into a reply.
    fn value_reply(&mut self, key: &[u8]) -> Bytes {
        if let Some(shared) = self.map.shared_bulk_reply(key) {
            return shared;
        }
        resp::write_bulk(&mut self.scratch, self.map.get(key));
        self.scratch.split().freeze()
    }

    fn reply(&mut self, build: impl FnOnce(&mut BytesMut)) -> Bytes {
        build(&mut self.scratch);
        self.scratch.split().freeze()
    }

    /// Executes one request at the current clock and returns its RESP reply.
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
                r.end()?;
                self.set(k, v);
                self.map.set_deadline(k, None);
                Bytes::from_static(REPLY_OK)
            }
            OP_SETX => {
                let (k, v, flags, expiry) = (r.str()?, r.str()?, r.u8()?, r.i64()?);
                r.end()?;
                self.execute_set(k, v, flags, expiry)?
            }
            OP_MSET => {
                let n = r.count(8)?;
                let start = r.pos;
                for _ in 0..n {
                    r.str()?;
                    r.str()?;
                }
                r.end()?;
                // Validated the whole request first, so MSET is all-or-nothing.
                r.pos = start;
                for _ in 0..n {
                    let (k, v) = (r.str()?, r.str()?);
                    self.set(k, v);
                    self.map.set_deadline(k, None);
                }
                Bytes::from_static(REPLY_OK)
            }
            OP_DEL | OP_EXISTS => {
                let n = r.count(4)?;
                let start = r.pos;
                for _ in 0..n {
                    r.str()?;
                }
                r.end()?;
                r.pos = start;
                let mut count = 0i64;
                for _ in 0..n {
                    let k = r.str()?;
                    self.expire_if_due(k);
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
                r.end()?;
                self.expire_if_due(k);
                let current = match self.map.get(k) {
                    None => Some(0i64),
                    Some(v) => parse_i64(v),
                };
                match current {
                    None => Bytes::from_static(REPLY_NOT_INT),
                    Some(c) => match c.checked_add(delta) {
                        None => Bytes::from_static(REPLY_OVERFLOW),
                        Some(next) => {
                            // Keeps the TTL, as Redis does.
                            self.map.set(k, resp::decimal_i64(next, &mut [0; 20]));
                            self.reply(|o| resp::write_integer(o, next))
                        }
                    },
                }
            }
            OP_GET | OP_GETDEL | OP_STRLEN => {
                let k = r.str()?;
                r.end()?;
                self.expire_if_due(k);
                let v = self.map.get(k);
                let out = if op == OP_STRLEN {
                    let len = v.map_or(0, <[u8]>::len) as i64;
                    resp::write_integer(&mut self.scratch, len);
                    self.scratch.split().freeze()
                } else {
                    self.value_reply(k)
                };
                if op == OP_GETDEL {
                    self.map.remove(k);
                }
                out
            }
            OP_MGET => {
                let n = r.count(4)?;
                let mut keys = Vec::with_capacity(n);
                for _ in 0..n {
                    keys.push(r.str()?);
                }
                r.end()?;
                for k in &keys {
                    self.expire_if_due(k);
                }
                let map = &self.map;
                let scratch = &mut self.scratch;
                resp::write_array_header(scratch, Some(n));
                for k in keys {
                    resp::write_bulk(scratch, map.get(k));
                }
                scratch.split().freeze()
            }
            OP_APPEND => {
                let (k, suffix) = (r.str()?, r.str()?);
                r.end()?;
                self.expire_if_due(k);
                let old = self.map.get(k).unwrap_or_default();
                let len = old.len() + suffix.len();
                if len > MAX_VALUE_LEN {
                    Bytes::from_static(REPLY_TOO_BIG)
                } else {
                    // Keeps the TTL, as Redis does.
                    let mut joined = Vec::with_capacity(len);
                    joined.extend_from_slice(old);
                    joined.extend_from_slice(suffix);
                    self.map.set(k, &joined);
                    self.reply(|o| resp::write_integer(o, len as i64))
                }
            }
            OP_DBSIZE => {
                r.end()?;
                let n = self.map.len() as i64;
                self.reply(|o| resp::write_integer(o, n))
            }
            OP_EXPIRE => {
                let (k, ttl, condition) = (r.str()?, r.i64()?, r.u8()?);
                r.end()?;
                self.execute_expire(k, ttl, condition)
            }
            OP_TTL => {
                let (k, in_ms) = (r.str()?, r.u8()?);
                r.end()?;
                self.expire_if_due(k);
                let ttl = if !self.map.contains_key(k) {
                    -2
                } else {
                    match self.live_deadline(k) {
                        None => -1,
                        Some(d) => {
                            let ms = d - self.clock_ms;
                            // Redis rounds TTL to the nearest second.
                            (if in_ms == 1 { ms } else { (ms + 500) / 1000 }) as i64
                        }
                    }
                };
                self.reply(|o| resp::write_integer(o, ttl))
            }
            OP_PERSIST => {
                let k = r.str()?;
                r.end()?;
                self.expire_if_due(k);
                integer(self.map.set_deadline(k, None).is_some())
            }
            OP_FLUSHALL => {
                r.end()?;
                self.flush_all();
                Bytes::from_static(REPLY_OK)
            }
            OP_KEYS => {
                let pattern = r.str()?;
                r.end()?;
                let mut out = std::mem::take(&mut self.scratch);
                let reply = self.keys_reply(pattern, self.clock_ms, &mut out);
                self.scratch = out;
                reply
            }
            OP_SCAN => {
                let (cursor, count, type_filter, pattern) = r.scan_args()?;
                let mut out = std::mem::take(&mut self.scratch);
                let reply =
                    self.scan_reply(cursor, count, type_filter, pattern, self.clock_ms, &mut out);
                self.scratch = out;
                reply?
            }
            _ => return None,
        };
        Some(out)
    }

    /// A read-only command against the current state, changing nothing
    /// ([`StateMachine::query`]): a key past its deadline reads as absent,
    /// as `expire_if_due` would make it, but is not removed.
    fn query_inner(&self, request: &[u8]) -> Option<Bytes> {
        let (&op, body) = request.split_first()?;
        let mut r = Reader { buf: body, pos: 0 };
        let clock = self.clock_ms.max(self.read_clock_ms);
        let found = |k: &[u8]| {
            self.map
                .find(k)
                .filter(|f| f.deadline.is_none_or(|d| d > clock))
        };
        let live = |k: &[u8]| found(k).map(|f| f.value());
        let mut scratch = self.query_scratch.borrow_mut();
        // Whatever an earlier query left (none does: each writes only once
        // its request parsed) is not part of this reply.
        scratch.clear();
        if scratch.capacity() < 4096 {
            scratch.reserve(64 * 1024);
        }
        let out = &mut *scratch;
        match op {
            OP_GET | OP_STRLEN => {
                let k = r.str()?;
                r.end()?;
                let f = found(k);
                if op == OP_STRLEN {
                    resp::write_integer(out, f.map_or(0, |f| f.value().len()) as i64);
                } else if let Some(shared) = f.as_ref().and_then(|f| f.shared_bulk_reply()) {
                    // A large value's reply is the stored buffer, shared
                    // (as `value_reply` on the log path).
                    return Some(shared);
                } else {
                    resp::write_bulk(out, f.map(|f| f.value()));
                }
            }
            OP_EXISTS => {
                let n = r.count(4)?;
                let mut count = 0i64;
                for _ in 0..n {
                    count += i64::from(live(r.str()?).is_some());
                }
                r.end()?;
                resp::write_integer(out, count);
            }
            OP_MGET => {
                let n = r.count(4)?;
                let start = r.pos;
                for _ in 0..n {
                    r.str()?;
                }
                r.end()?;
                r.pos = start;
                resp::write_array_header(out, Some(n));
                for _ in 0..n {
                    resp::write_bulk(out, live(r.str()?));
                }
            }
            OP_TTL => {
                let (k, in_ms) = (r.str()?, r.u8()?);
                r.end()?;
                let ttl = if live(k).is_none() {
                    -2
                } else {
                    // Live: any deadline is past `clock`.
                    match self.map.deadline(k) {
                        None => -1,
                        Some(d) => {
                            let ms = d - clock;
                            (if in_ms == 1 { ms } else { (ms + 500) / 1000 }) as i64
                        }
                    }
                };
                resp::write_integer(out, ttl);
            }
            OP_DBSIZE => {
                r.end()?;
                resp::write_integer(out, self.map.len() as i64);
            }
            OP_KEYS => {
                let pattern = r.str()?;
                r.end()?;
                return Some(self.keys_reply(pattern, clock, out));
            }
            OP_SCAN => {
                let (cursor, count, type_filter, pattern) = r.scan_args()?;
                return self.scan_reply(cursor, count, type_filter, pattern, clock, out);
            }
            _ => return Some(Bytes::from_static(REPLY_NOT_READ)),
        }
        Some(out.split().freeze())
    }

    /// `SETX`: `SET` with options, `SETNX`, `GETSET` (Redis's
    /// `setGenericCommand`). `None` for flags no encoder writes.
    fn execute_set(&mut self, k: &[u8], v: &[u8], flags: u8, expiry: i64) -> Option<Bytes> {
        use set_flags::*;
        let timed = flags & (TTL | AT);
        if flags >= REPLY_INT << 1 || flags & (NX | XX) == NX | XX || timed == TTL | AT {
            return None;
        }
        if timed != 0 && flags & KEEPTTL != 0 {
            return None;
        }
        if timed != 0 && !(1..=MAX_EXPIRY_MS).contains(&expiry) {
            return None;
        }
        self.expire_if_due(k);
        let exists = self.map.contains_key(k);
        let mut out = (flags & GET != 0).then(|| self.value_reply(k));
        let refused = (flags & NX != 0 && exists) || (flags & XX != 0 && !exists);
        if !refused {
            self.set(k, v);
            let deadline = match timed {
                TTL => Some(self.clock_ms.saturating_add(expiry as u64)),
                AT => Some(expiry as u64),
                _ => None,
            };
            if flags & KEEPTTL == 0 {
                self.map.set_deadline(k, deadline);
            }
            // An absolute time already past: set and gone at once (Redis
            // deletes it at once too).
            self.expire_if_due(k);
        }
        if flags & REPLY_INT != 0 {
            out = Some(integer(!refused));
        }
        Some(out.unwrap_or_else(|| Bytes::from_static(if refused { REPLY_NIL } else { REPLY_OK })))
    }

    /// `EXPIRE`/`PEXPIRE` (Redis 7's `expireGenericCommand`): `:1` when the
    /// deadline was set (or the key removed, for a deadline not after the
    /// clock), `:0` when the key is absent or the condition refused it.
    fn execute_expire(&mut self, k: &[u8], ttl: i64, condition: u8) -> Bytes {
        self.expire_if_due(k);
        if !self.map.contains_key(k) {
            return integer(false);
        }
        let deadline = (i128::from(self.clock_ms) + i128::from(ttl)).max(0) as u64;
        let current = self.live_deadline(k);
        let refused = (condition & expire_if::NX != 0 && current.is_some())
            || (condition & expire_if::XX != 0 && current.is_none())
            || (condition & expire_if::GT != 0 && current.is_none_or(|c| deadline <= c))
            || (condition & expire_if::LT != 0 && current.is_some_and(|c| deadline >= c));
        if refused {
            return integer(false);
        }
        if deadline <= self.clock_ms {
            self.map.remove(k);
        } else {
            self.map.set_deadline(k, Some(deadline));
        }
        integer(true)
    }

    /// `FLUSHALL`: a fresh map. Freeing a big old one is O(keys), so it is
    /// handed to a thread of its own rather than freed on the event loop
    /// (what Redis's `FLUSHALL ASYNC` does; a frozen view may share it
    /// anyway, and then only the last holder frees it).
    fn flush_all(&mut self) {
        let mut fresh = KeyMap::default();
        if self.map.content_digest().is_some() {
            fresh.track_content_digest();
        }
        let old = std::mem::replace(&mut self.map, fresh);
        if old.len() > 10_000 {
            let spawned = std::thread::Builder::new()
                .name("kv-flushall-free".into())
                .spawn(move || drop(old));
            // No thread to be had: free it here after all.
            drop(spawned);
        }
    }

    /// `KEYS pattern`: every live key that matches, in `SCAN` order. O(keys)
    /// on the event loop, as in Redis (whose docs warn against it in
    /// production); `SCAN` is the bounded way.
    fn keys_reply(&self, pattern: &[u8], clock: u64, scratch: &mut BytesMut) -> Bytes {
        let pattern = Pattern::new(pattern);
        let all = pattern.matches_everything();
        let mut keys: Vec<&[u8]> = Vec::new();
        self.map.scan(0, usize::MAX, |k, _, deadline| {
            if deadline.is_none_or(|d| d > clock) && (all || pattern.matches(k)) {
                keys.push(k);
            }
        });
        resp::write_array_header(scratch, Some(keys.len()));
        for k in keys {
            resp::write_bulk(scratch, Some(k));
        }
        scratch.split().freeze()
    }

    /// `SCAN`: the cursor is the CRC32C digest to resume from (0: the
    /// start; the reply's 0: done), so a full iteration returns every key
    /// that was present throughout exactly once (see [`KeyMap::scan`]).
    /// `COUNT` keys are examined per call (more if keys share a digest);
    /// `MATCH` and `TYPE` filter what was examined, so a call may return
    /// fewer keys, or none, before the iteration ends, as in Redis.
    fn scan_reply(
        &self,
        cursor: u64,
        count: u32,
        type_filter: u8,
        pattern: Option<&[u8]>,
        clock: u64,
        scratch: &mut BytesMut,
    ) -> Option<Bytes> {
        if count == 0 || type_filter > 2 {
            return None;
        }
        let Ok(from) = u32::try_from(cursor) else {
            return Some(error_reply(&CommandError::InvalidCursor));
        };
        let pattern = pattern
            .map(Pattern::new)
            .filter(|p| !p.matches_everything());
        let mut keys: Vec<&[u8]> = Vec::new();
        let next = self.map.scan(from, count as usize, |k, _, deadline| {
            if type_filter != 2
                && deadline.is_none_or(|d| d > clock)
                && pattern.as_ref().is_none_or(|p| p.matches(k))
            {
                keys.push(k);
            }
        });
        resp::write_array_header(scratch, Some(2));
        let mut digits = [0u8; 20];
        resp::write_bulk(
            scratch,
            Some(resp::decimal(u64::from(next.unwrap_or(0)), &mut digits)),
        );
        resp::write_array_header(scratch, Some(keys.len()));
        for k in keys {
            resp::write_bulk(scratch, Some(k));
        }
        Some(scratch.split().freeze())
    }
}

fn error_reply(e: &CommandError) -> Bytes {
    let mut out = BytesMut::new();
    resp::write_error(&mut out, e.to_string().as_bytes());
    out.freeze()
}

const SNAPSHOT_MAGIC: &[u8; 8] = b"PXKVSNAP";
/// Version 5: version 4 plus expiry: the store's clock (`u64` ms) after
/// the version, and each entry followed by its deadline (`u64` ms, 0 for
/// none; a deadline is never 0, see [`crate::command::MAX_EXPIRY_MS`]).
const SNAPSHOT_VERSION: u32 = 5;
/// Version 4: entries in ascending `(CRC32C(key), key)` order, the order a
/// sharded [`KeyMap`] can write one shard at a time. Otherwise as version 3.
/// Still read (no clock, no deadlines).
const SNAPSHOT_VERSION_DIGEST_ORDER: u32 = 4;
/// Version 3: the map only (the applied slot and the cluster directory
/// belong to paxos-node's checkpoint section), entries in ascending key
/// order. Still read, so checkpoints written before version 4 restore.
const SNAPSHOT_VERSION_KEY_ORDER: u32 = 3;
/// Bytes of magic, version, clock and count (version 5).
const SNAPSHOT_HEADER: usize = 28;
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
/// clock, entry count, the entries (key, value, deadline) in ascending
/// `(CRC32C(key), key)` order (equal states give equal bytes on every
/// replica), CRC32C of everything before it.
///
/// Taking one ([`StateMachine::snapshot`]) shares the store's table and
/// copies nothing, O(1) on the node's event loop at any number of keys.
/// The encoding happens in [`write_to`](paxos_node::Snapshot::write_to)
/// (on the checkpoint thread), one shard at a time, in pieces of at most
/// 64 KiB. Meanwhile the first write to each key of a shard the write has
/// not reached saves that key's old state for the snapshot (see
/// [`crate::keymap`]), so the snapshot keeps the state it was taken in;
/// once the write has passed a shard, what was saved there is freed and
/// the store writes that shard as if no snapshot existed. A clone, or a
/// second snapshot taken while one is being written, is an owned copy
/// (O(state)): a node writes one checkpoint at a time.
#[derive(Clone, Debug, Default)]
pub struct KvSnapshot {
    map: FrozenKeyMap,
    clock_ms: u64,
    /// Set by the first write: the view is drained as it is written.
    written: bool,
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
        let mut entries = 0usize;
        let _ = self.map.visit(|k, v, _| {
            entries += 16 + k.len() + v.len();
            Ok::<(), ()>(())
        });
        SNAPSHOT_HEADER + SNAPSHOT_TRAILER + entries
    }

    /// The whole snapshot as one buffer (tests, tools, small states: a
    /// checkpoint streams it with `write_to` instead). Leaves `self` as it
    /// was (it visits the view without draining it). Panics if `write_to`
    /// already wrote this snapshot: a caller's mistake, not bad input.
    pub fn to_vec(&self) -> Vec<u8> {
        assert!(!self.written, "this snapshot was already written");
        let mut out = Vec::with_capacity(self.encoded_len());
        Self::encode_parts(self.clock_ms, self.map.len(), &mut out, |put| {
            self.map.visit(put)
        })
        .expect("writing into a Vec does not fail");
        out
    }

    /// Writes the snapshot, letting go of each shard of the view once it is
    /// written ([`FrozenKeyMap::drain`]): the store stops copying the shards
    /// already written, and what it deferred to them is freed as the write
    /// goes, not at its end. So it can be written once: a second call is an
    /// error, as is a view drained by a failed call.
    fn write(&mut self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        if self.written {
            return Err(std::io::Error::other(
                "this snapshot was already written: a snapshot is written once",
            ));
        }
        self.written = true;
        let (clock_ms, len) = (self.clock_ms, self.map.len());
        let map = &mut self.map;
        Self::encode_parts(clock_ms, len, out, |put| {
            map.drain(usize::MAX, put).map(|_| ())
        })
    }

    /// Encodes a snapshot of `len` keys at `clock_ms` into `out`, its
    /// entries listed by `entries` (which calls the visitor it is given
    /// once per entry, in order).
    fn encode_parts(
        clock_ms: u64,
        len: usize,
        out: &mut dyn std::io::Write,
        entries: impl FnOnce(
            &mut dyn FnMut(&[u8], &[u8], Option<u64>) -> std::io::Result<()>,
        ) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let mut w = ChunkedCrcWriter {
            out,
            buf: Vec::with_capacity(SNAPSHOT_WRITE_CHUNK),
            crc: 0,
        };
        w.put(SNAPSHOT_MAGIC)?;
        w.put(&SNAPSHOT_VERSION.to_le_bytes())?;
        w.put(&clock_ms.to_le_bytes())?;
        w.put(&(len as u64).to_le_bytes())?;
        entries(&mut |k, v, deadline| {
            w.put(&(k.len() as u32).to_le_bytes())?;
            w.put(k)?;
            w.put(&(v.len() as u32).to_le_bytes())?;
            w.put(v)?;
            w.put(&deadline.unwrap_or(0).to_le_bytes())
        })?;
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
        let sum = self
            .map
            .content_digest()
            .unwrap_or_else(|| self.map.walked_content_digest());
        (self.map.len() as u64)
            .wrapping_add(sum)
            .wrapping_add(self.clock_ms.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    /// Keeps [`KvStore::state_digest`] up to date on every write (and
    /// across restores), for a checker that asks after every step.
    pub fn track_state_digest(&mut self) {
        self.map.track_content_digest();
    }
}

impl StateMachine for KvStore {
    type Snapshot = KvSnapshot;

    fn execute(&mut self, decree: &Decree, request: &[u8]) -> Bytes {
        self.execute_at(decree.time_us, request)
    }

    fn query(&self, request: &[u8]) -> Bytes {
        self.query_inner(request)
            .unwrap_or_else(|| Bytes::from_static(REPLY_CORRUPT))
    }

    /// O(shards): shares the table's shards with the snapshot (see
    /// [`KvSnapshot`]); the encoding is left to `write_to`.
    fn snapshot(&mut self) -> KvSnapshot {
        KvSnapshot {
            map: self.map.freeze(),
            clock_ms: self.clock_ms,
            written: false,
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
        if ![
            SNAPSHOT_VERSION,
            SNAPSHOT_VERSION_DIGEST_ORDER,
            SNAPSHOT_VERSION_KEY_ORDER,
        ]
        .contains(&version)
        {
            return Err(SnapshotError::invalid(KvSnapshotError::UnknownVersion(
                version,
            )));
        }
        let with_expiry = version == SNAPSHOT_VERSION;
        let clock_ms = if with_expiry { r.u64()? } else { 0 };
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
            if version != SNAPSHOT_VERSION_KEY_ORDER {
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
            if with_expiry {
                let deadline = r.u64()?;
                if deadline != 0 {
                    map.set_deadline(&k, Some(deadline));
                }
            }
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
        self.clock_ms = clock_ms;
        Ok(())
    }

    fn on_primary_change(&mut self, is_primary: bool) {
        self.is_primary = is_primary;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use bytes::BufMut;

    fn put_str(out: &mut BytesMut, s: &[u8]) {
        out.put_u32_le(s.len() as u32);
        out.put_slice(s);
    }
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

    /// Issue #18: N pending GET replies of a large value hold its bytes
    /// once. Each reply is the stored buffer (the same address), and the
    /// value's holders count the table plus one per reply; GETDEL and
    /// SET ... GET hand out the buffer the same way, and a reply outlives
    /// the key it was read from.
    #[test]
    fn pending_get_replies_of_a_large_value_share_its_bytes_instead_of_copying_them() {
        let mut s = KvStore::new();
        let big = "v".repeat(MAX_VALUE_LEN);
        run(&mut s, &[&["SET", "big", &big]]);
        let mut expect = BytesMut::new();
        resp::write_bulk(&mut expect, Some(big.as_bytes()));
        let replies = run(&mut s, &vec![&["GET", "big"][..]; 1000]);
        assert!(replies.iter().all(|r| r[..] == expect[..]));
        assert!(replies.iter().all(|r| r.as_ptr() == replies[0].as_ptr()));
        let stored = |s: &KvStore| s.map.value_holders(b"big");
        assert_eq!(stored(&s), Some(1 + 1000), "the table and one per reply");
        drop(replies);
        assert_eq!(stored(&s), Some(1));
        // Reads that skip the log (`query`) share it the same way.
        let queried: Vec<Bytes> = (0..10)
            .map(|_| StateMachine::query(&s, &encode(&["GET", "big"])))
            .collect();
        assert!(queried.iter().all(|r| r[..] == expect[..]));
        assert_eq!(stored(&s), Some(1 + 10));
        drop(queried);

        // A small value is still copied into its reply.
        run(&mut s, &[&["SET", "small", "x"]]);
        assert_eq!(s.map.shared_bulk_reply(b"small"), None);

        let got = run(&mut s, &[&["SET", "big", "small now", "GET"]]).remove(0);
        assert_eq!(got[..], expect[..], "SET GET replies with the old value");
        run(&mut s, &[&["SET", "big", &big]]);
        let deleted = run(&mut s, &[&["GETDEL", "big"]]).remove(0);
        assert_eq!(deleted[..], expect[..]);
        assert_eq!(s.get(b"big"), None);
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
            encode_command(&args(&["FLUSHEVERYTHING", "a", "b"]), &mut out)
                .unwrap_err()
                .to_string(),
            "ERR unknown command 'FLUSHEVERYTHING', with args beginning with: 'a' 'b' "
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
            "ERR unknown command 'AVERYLONGCOMMANDNAME', with args beginning with: "
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

    /// Runs `cmds` in decrees stamped `time_ms`.
    fn run_at(store: &mut KvStore, time_ms: u64, cmds: &[&[&str]]) -> Vec<Bytes> {
        let decree = Decree {
            time_us: time_ms * 1000,
            ..DECREE
        };
        cmds.iter()
            .map(|c| StateMachine::execute(store, &decree, &encode(c)))
            .collect()
    }

    /// The replies of `cmds`, as text, run at `time_ms`.
    fn replies(store: &mut KvStore, time_ms: u64, cmds: &[&[&str]]) -> Vec<String> {
        run_at(store, time_ms, cmds)
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect()
    }

    fn encode_err(parts: &[&str]) -> String {
        let mut out = BytesMut::new();
        let e = encode_command(&args(parts), &mut out).unwrap_err();
        assert!(out.is_empty(), "nothing appended on error");
        e.to_string()
    }

    #[test]
    fn set_options_reply_like_redis() {
        let mut s = KvStore::new();
        let got = replies(
            &mut s,
            1_000,
            &[
                &["SET", "k", "v1", "NX"],
                &["SET", "k", "v2", "NX"],
                &["SET", "k", "v3", "XX"],
                &["SET", "absent", "v", "XX"],
                &["SET", "k", "v4", "GET"],
                &["SET", "new", "n", "GET"],
                &["SET", "k", "v5", "NX", "GET"],
                &["SET", "other", "o", "nx", "get"],
                &["SET", "k", "v6", "XX", "GET"],
                &["SETNX", "k", "x"],
                &["SETNX", "fresh", "x"],
                &["GETSET", "k", "v7"],
                &["GETSET", "nokey", "z"],
                &["GET", "k"],
            ],
        );
        assert_eq!(
            got,
            [
                "+OK\r\n",
                "$-1\r\n",
                "+OK\r\n",
                "$-1\r\n",
                "$2\r\nv3\r\n",
                "$-1\r\n",
                "$2\r\nv4\r\n",
                "$-1\r\n",
                "$2\r\nv4\r\n",
                ":0\r\n",
                ":1\r\n",
                "$2\r\nv6\r\n",
                "$-1\r\n",
                "$2\r\nv7\r\n",
            ]
        );
        assert_eq!(s.get(b"other"), Some(&b"o"[..]), "NX GET sets a new key");
    }

    #[test]
    fn set_option_errors_are_redis_errors() {
        let syntax = "ERR syntax error";
        for bad in [
            &["SET", "k", "v", "NX", "XX"][..],
            &["SET", "k", "v", "XX", "NX"],
            &["SET", "k", "v", "EX", "1", "PX", "1"],
            &["SET", "k", "v", "EX", "1", "KEEPTTL"],
            &["SET", "k", "v", "KEEPTTL", "EX", "1"],
            &["SET", "k", "v", "EX"],
            &["SET", "k", "v", "BOGUS"],
            &["SET", "k", "v", "EX", "abc", "NX", "XX"],
        ] {
            assert_eq!(encode_err(bad), syntax, "{bad:?}");
        }
        assert_eq!(
            encode_err(&["SET", "k", "v", "EX", "abc"]),
            "ERR value is not an integer or out of range"
        );
        for bad in [
            &["SET", "k", "v", "EX", "0"][..],
            &["SET", "k", "v", "PX", "-5"],
            &["SET", "k", "v", "EX", "9223372036854775"],
            &["SET", "k", "v", "PXAT", "0"],
        ] {
            assert_eq!(
                encode_err(bad),
                "ERR invalid expire time in 'set' command",
                "{bad:?}"
            );
        }
        assert_eq!(
            encode_err(&["SET", "k"]),
            "ERR wrong number of arguments for 'set' command"
        );
        assert_eq!(
            encode_err(&["GETDEL", "a", "b"]),
            "ERR wrong number of arguments for 'getdel' command"
        );
        assert_eq!(
            encode_err(&["DBSIZE", "x"]),
            "ERR wrong number of arguments for 'dbsize' command"
        );
        assert_eq!(encode_err(&["FLUSHALL", "NOW"]), syntax);
        // The same kind of expiry twice: the later counts, as in Redis.
        let mut s = KvStore::new();
        run_at(&mut s, 0, &[&["SET", "k", "v", "EX", "1", "EX", "5"]]);
        assert_eq!(replies(&mut s, 0, &[&["TTL", "k"]]), [":5\r\n"]);
    }

    /// A read that skips the log (`query`) answers what the same command
    /// through the log would, expired keys included, and changes nothing;
    /// writes are refused.
    #[test]
    fn queries_answer_like_executed_reads_and_change_nothing() {
        let mut s = KvStore::new();
        // More keys due than one request reclaims, b the last of them, so
        // that b is past its deadline but still in the table.
        for i in 0..RECLAIM_PER_REQUEST {
            let k = format!("due{i}");
            run_at(&mut s, 1_000, &[&["SET", &k, "v", "PX", "400"]]);
        }
        run_at(
            &mut s,
            1_000,
            &[
                &["SET", "a", "1"],
                &["SET", "b", "hello", "PX", "500"],
                &["SET", "c", "x", "EX", "100"],
            ],
        );
        run_at(&mut s, 2_000, &[&["SET", "z", "0"]]);
        let held = s.len();
        assert!(s.get(b"b").is_some(), "b is expired but not reclaimed yet");
        let reads: [&[&str]; 8] = [
            &["GET", "a"],
            &["GET", "b"],
            &["STRLEN", "a"],
            &["EXISTS", "a", "b", "c", "nope"],
            &["MGET", "a", "b", "c", "nope"],
            &["TTL", "c"],
            &["TTL", "b"],
            &["PTTL", "a"],
        ];
        let digest = s.state_digest();
        let queried: Vec<Bytes> = reads
            .iter()
            .map(|c| StateMachine::query(&s, &encode(c)))
            .collect();
        assert_eq!(s.state_digest(), digest, "a query changed the state");
        assert_eq!(s.len(), held, "a query reclaimed an expired key");
        let executed = run_at(&mut s, 2_000, &reads);
        assert_eq!(queried, executed);
        assert_eq!(&queried[1][..], REPLY_NIL);
        assert_eq!(
            &StateMachine::query(&s, &encode(&["SET", "a", "2"]))[..],
            REPLY_NOT_READ
        );
        assert_eq!(&StateMachine::query(&s, &[0xff, 1])[..], REPLY_NOT_READ);
        assert_eq!(&StateMachine::query(&s, &[])[..], REPLY_CORRUPT);
        assert_eq!(s.get(b"a"), Some(&b"1"[..]));
    }

    #[test]
    fn string_commands_reply_like_redis() {
        let mut s = KvStore::new();
        let got = replies(
            &mut s,
            0,
            &[
                &["APPEND", "a", "Hello"],
                &["APPEND", "a", " World"],
                &["STRLEN", "a"],
                &["STRLEN", "nope"],
                &["GETDEL", "a"],
                &["GETDEL", "a"],
                &["EXISTS", "a"],
                &["MSET", "x", "1", "y", "2"],
                &["EXISTS", "x", "x", "y", "z"],
                &["DBSIZE"],
                &["INCR", "x"],
                &["FLUSHALL"],
                &["DBSIZE"],
                &["GET", "y"],
            ],
        );
        assert_eq!(
            got,
            [
                ":5\r\n",
                ":11\r\n",
                ":11\r\n",
                ":0\r\n",
                "$11\r\nHello World\r\n",
                "$-1\r\n",
                ":0\r\n",
                "+OK\r\n",
                ":3\r\n",
                ":2\r\n",
                ":2\r\n",
                "+OK\r\n",
                ":0\r\n",
                "$-1\r\n",
            ]
        );
        let big = "x".repeat(MAX_VALUE_LEN);
        let got = replies(&mut s, 0, &[&["SET", "b", &big], &["APPEND", "b", "y"]]);
        assert_eq!(
            got[1],
            "-ERR string exceeds maximum allowed size (proto-max-bulk-len)\r\n"
        );
        assert_eq!(s.get(b"b").map(<[u8]>::len), Some(MAX_VALUE_LEN));
    }

    #[test]
    fn expiry_follows_the_decree_clock_only() {
        let mut s = KvStore::new();
        let got = replies(
            &mut s,
            10_000,
            &[
                &["SET", "k", "v", "PX", "1500"],
                &["PTTL", "k"],
                &["TTL", "k"],
                &["TTL", "nokey"],
                &["SET", "plain", "p"],
                &["TTL", "plain"],
            ],
        );
        assert_eq!(
            got,
            [
                "+OK\r\n",
                ":1500\r\n",
                ":2\r\n",
                ":-2\r\n",
                "+OK\r\n",
                ":-1\r\n"
            ]
        );
        // Just before the deadline, then at it.
        assert_eq!(replies(&mut s, 11_499, &[&["GET", "k"]]), ["$1\r\nv\r\n"]);
        assert_eq!(s.clock_ms(), 11_499);
        // A decree from a leader whose clock is behind moves nothing back.
        assert_eq!(replies(&mut s, 3_000, &[&["PTTL", "k"]]), [":1\r\n"]);
        assert_eq!(s.clock_ms(), 11_499);
        // Time 0 (no clock) leaves the clock where it is.
        assert_eq!(replies(&mut s, 0, &[&["PTTL", "k"]]), [":1\r\n"]);
        let got = replies(
            &mut s,
            11_500,
            &[
                &["GET", "k"],
                &["EXISTS", "k"],
                &["TTL", "k"],
                &["SET", "k", "again", "NX"],
                &["TTL", "k"],
            ],
        );
        assert_eq!(
            got,
            ["$-1\r\n", ":0\r\n", ":-2\r\n", "+OK\r\n", ":-1\r\n"],
            "an expired key is absent, and a SET makes it anew without a TTL"
        );
    }

    #[test]
    fn expire_persist_and_keepttl_follow_redis() {
        let mut s = KvStore::new();
        let got = replies(
            &mut s,
            1_000,
            &[
                &["EXPIRE", "nokey", "10"],
                &["SET", "k", "v"],
                &["EXPIRE", "k", "10"],
                &["PTTL", "k"],
                &["SET", "k", "v2", "KEEPTTL"],
                &["PTTL", "k"],
                &["INCR", "n"],
                &["PEXPIRE", "n", "500"],
                &["INCR", "n"],
                &["APPEND", "n", "0"],
                &["PTTL", "n"],
                &["PERSIST", "n"],
                &["PERSIST", "n"],
                &["TTL", "n"],
                &["SET", "k", "v3"],
                &["TTL", "k"],
                &["EXPIRE", "k", "0"],
                &["EXISTS", "k"],
                &["SET", "k", "v", "EX", "100"],
                &["PEXPIRE", "k", "-1"],
                &["EXISTS", "k"],
            ],
        );
        assert_eq!(
            got,
            [
                ":0\r\n",
                "+OK\r\n",
                ":1\r\n",
                ":10000\r\n",
                "+OK\r\n",
                ":10000\r\n",
                ":1\r\n",
                ":1\r\n",
                ":2\r\n",
                ":2\r\n",
                ":500\r\n",
                ":1\r\n",
                ":0\r\n",
                ":-1\r\n",
                "+OK\r\n",
                ":-1\r\n",
                ":1\r\n",
                ":0\r\n",
                "+OK\r\n",
                ":1\r\n",
                ":0\r\n",
            ]
        );
        assert_eq!(s.get(b"n"), Some(&b"20"[..]));
        // SET ... PXAT in the past: set and gone at once.
        let got = replies(
            &mut s,
            1_000,
            &[&["SET", "p", "v", "PXAT", "999"], &["EXISTS", "p"]],
        );
        assert_eq!(got, ["+OK\r\n", ":0\r\n"]);
        let got = replies(
            &mut s,
            1_000,
            &[&["SET", "p", "v", "EXAT", "5"], &["PTTL", "p"]],
        );
        assert_eq!(got, ["+OK\r\n", ":4000\r\n"]);
        let got = replies(
            &mut s,
            1_000,
            &[
                &["SETEX", "e", "3", "v"],
                &["PTTL", "e"],
                &["PSETEX", "e", "20", "w"],
                &["PTTL", "e"],
                &["GET", "e"],
            ],
        );
        assert_eq!(
            got,
            ["+OK\r\n", ":3000\r\n", "+OK\r\n", ":20\r\n", "$1\r\nw\r\n"]
        );
        assert_eq!(
            encode_err(&["SETEX", "e", "0", "v"]),
            "ERR invalid expire time in 'setex' command"
        );
        assert_eq!(
            encode_err(&["PSETEX", "e", "x", "v"]),
            "ERR value is not an integer or out of range"
        );
    }

    #[test]
    fn expire_conditions_follow_redis_7() {
        let mut s = KvStore::new();
        let got = replies(
            &mut s,
            0,
            &[
                &["SET", "k", "v"],
                &["EXPIRE", "k", "100", "XX"],
                &["EXPIRE", "k", "100", "GT"],
                &["EXPIRE", "k", "100", "LT"],
                &["EXPIRE", "k", "50", "NX"],
                &["EXPIRE", "k", "200", "LT"],
                &["EXPIRE", "k", "200", "gt"],
                &["EXPIRE", "k", "300", "XX", "GT"],
                &["TTL", "k"],
            ],
        );
        assert_eq!(
            got,
            [
                "+OK\r\n", ":0\r\n", ":0\r\n", ":1\r\n", ":0\r\n", ":0\r\n", ":1\r\n", ":1\r\n",
                ":300\r\n"
            ]
        );
        assert_eq!(
            encode_err(&["EXPIRE", "k", "1", "NX", "XX"]),
            "ERR NX and XX, GT or LT options at the same time are not compatible"
        );
        assert_eq!(
            encode_err(&["EXPIRE", "k", "1", "GT", "LT"]),
            "ERR GT and LT options at the same time are not compatible"
        );
        assert_eq!(
            encode_err(&["EXPIRE", "k", "1", "SOON"]),
            "ERR Unsupported option SOON"
        );
        assert_eq!(
            encode_err(&["EXPIRE", "k", "x"]),
            "ERR value is not an integer or out of range"
        );
        assert_eq!(
            encode_err(&["EXPIRE", "k", "9223372036854775807"]),
            "ERR invalid expire time in 'expire' command"
        );
        assert_eq!(
            encode_err(&["PEXPIRE", "k"]),
            "ERR wrong number of arguments for 'pexpire' command"
        );
    }

    #[test]
    fn due_keys_are_reclaimed_a_few_per_request_earliest_first() {
        let mut s = KvStore::new();
        for i in 0..10 {
            let ttl = (100 + i).to_string();
            run_at(&mut s, 0, &[&["SET", &format!("t{i}"), "v", "PX", &ttl]]);
        }
        run_at(&mut s, 0, &[&["SET", "keep", "v"]]);
        assert_eq!((s.len(), s.expiring_len()), (11, 10));
        // Nothing is due yet.
        run_at(&mut s, 99, &[&["GET", "keep"]]);
        assert_eq!(s.len(), 11);
        // All are due: each request reclaims a bounded number, earliest first.
        run_at(&mut s, 1_000, &[&["GET", "keep"]]);
        assert_eq!(s.len(), 11 - RECLAIM_PER_REQUEST);
        assert_eq!(s.get(b"t0"), None);
        assert!(s.get(b"t9").is_some());
        assert_eq!(
            replies(&mut s, 1_000, &[&["DBSIZE"]]),
            [format!(":{}\r\n", 11 - 2 * RECLAIM_PER_REQUEST)]
        );
        run_at(&mut s, 1_000, &[&["GET", "keep"][..]; 3]);
        assert_eq!((s.len(), s.expiring_len()), (1, 0));
    }

    #[test]
    fn ttls_and_the_clock_survive_snapshots_and_count_in_the_digest() {
        let mut s = KvStore::new();
        s.track_state_digest();
        run_at(
            &mut s,
            5_000,
            &[
                &["SET", "a", "1", "EX", "10"],
                &["SET", "b", "2"],
                &["SET", "c", "3", "PX", "1"],
            ],
        );
        let mut plain = KvStore::new();
        run_at(
            &mut plain,
            5_000,
            &[&["SET", "a", "1"], &["SET", "b", "2"], &["SET", "c", "3"]],
        );
        assert_ne!(s.state_digest(), plain.state_digest(), "TTLs count");
        let snap = snapshot_bytes(&mut s);
        let mut t = KvStore::new();
        restore(&mut t, &snap).unwrap();
        assert_eq!(t.clock_ms(), 5_000);
        assert_eq!(t.state_digest(), s.state_digest());
        assert_eq!(snapshot_bytes(&mut t), snap);
        assert_eq!(
            replies(&mut t, 0, &[&["PTTL", "a"], &["PTTL", "b"], &["PTTL", "c"]]),
            [":10000\r\n", ":-1\r\n", ":1\r\n"]
        );
        assert_eq!(
            replies(&mut t, 5_001, &[&["GET", "c"]]),
            ["$-1\r\n"],
            "the restored deadline still expires"
        );
        // The tracked digest follows deadline changes.
        let mut walked = KvStore::new();
        restore(&mut walked, &snapshot_bytes(&mut s)).unwrap();
        for cmd in [
            &["PERSIST", "a"][..],
            &["PEXPIRE", "b", "70"],
            &["SET", "a", "x", "KEEPTTL"],
            &["DEL", "b"],
        ] {
            run_at(&mut s, 5_000, &[cmd]);
            run_at(&mut walked, 5_000, &[cmd]);
            assert_eq!(s.map.content_digest(), Some(s.map.walked_content_digest()));
            assert_eq!(s.state_digest(), walked.state_digest(), "{cmd:?}");
        }
        // Older versions restore with no TTLs and clock 0.
        let v4 = encode_raw(
            SNAPSHOT_VERSION_DIGEST_ORDER,
            &in_digest_order(vec![(b"a", b"1"), (b"b", b"2")]),
        );
        restore(&mut t, &v4).unwrap();
        assert_eq!((t.len(), t.expiring_len(), t.clock_ms()), (2, 0, 0));
    }

    /// Every key present for a whole SCAN iteration is returned exactly
    /// once, whatever is written between the calls.
    #[test]
    fn scan_returns_every_lasting_key_once_across_writes() {
        let mut s = KvStore::new();
        let lasting: Vec<String> = (0..3_000).map(|i| format!("key:{i}")).collect();
        for k in &lasting {
            run(&mut s, &[&["SET", k, "v"]]);
        }
        let mut seen = std::collections::HashMap::<Vec<u8>, usize>::new();
        let mut cursor = "0".to_string();
        let mut calls = 0;
        loop {
            let reply = run(&mut s, &[&["SCAN", &cursor, "COUNT", "50"]]).remove(0);
            let mut buf = BytesMut::from(&reply[..]);
            let frame = resp::parse(&mut buf, &resp::RespLimits::default())
                .unwrap()
                .unwrap();
            let resp::Frame::Array(Some(parts)) = frame else {
                panic!("not an array: {reply:?}")
            };
            let [resp::Frame::Bulk(Some(next)), resp::Frame::Array(Some(keys))] = &parts[..] else {
                panic!("bad SCAN reply {reply:?}")
            };
            for k in keys {
                let resp::Frame::Bulk(Some(k)) = k else {
                    panic!()
                };
                *seen.entry(k.to_vec()).or_default() += 1;
            }
            // Churn: new keys, deletes and overwrites of churn keys.
            calls += 1;
            run(
                &mut s,
                &[
                    &["SET", &format!("churn:{calls}"), "x"],
                    &["DEL", &format!("churn:{}", calls / 2)],
                ],
            );
            cursor = String::from_utf8(next.to_vec()).unwrap();
            if cursor == "0" {
                break;
            }
        }
        assert!(
            calls > 3_000 / 50 / 2,
            "COUNT bounds each call: {calls} calls"
        );
        for k in &lasting {
            assert_eq!(seen.get(k.as_bytes()), Some(&1), "{k}");
        }
        assert!(seen.values().all(|&n| n == 1), "no key twice");
    }

    #[test]
    fn scan_and_keys_filter_by_pattern_type_and_expiry() {
        let mut s = KvStore::new();
        run_at(
            &mut s,
            100,
            &[
                &["MSET", "user:1", "a", "user:2", "b", "item:1", "c"],
                &["SET", "user:3", "d", "PX", "10"],
            ],
        );
        let keys = |s: &mut KvStore, t: u64, cmd: &[&str]| -> Vec<String> {
            let reply = run_at(s, t, &[cmd]).remove(0);
            let mut buf = BytesMut::from(&reply[..]);
            let mut frame = resp::parse(&mut buf, &resp::RespLimits::default())
                .unwrap()
                .unwrap();
            if let resp::Frame::Array(Some(mut parts)) = frame.clone() {
                if parts.len() == 2 && matches!(parts[1], resp::Frame::Array(_)) {
                    frame = parts.remove(1);
                }
            }
            let resp::Frame::Array(Some(items)) = frame else {
                panic!("{reply:?}")
            };
            let mut out: Vec<String> = items
                .into_iter()
                .map(|f| match f {
                    resp::Frame::Bulk(Some(b)) => String::from_utf8(b.to_vec()).unwrap(),
                    other => panic!("{other:?}"),
                })
                .collect();
            out.sort();
            out
        };
        assert_eq!(
            keys(&mut s, 100, &["KEYS", "user:*"]),
            ["user:1", "user:2", "user:3"]
        );
        assert_eq!(keys(&mut s, 100, &["KEYS", "*"]).len(), 4);
        assert_eq!(
            keys(&mut s, 100, &["KEYS", "user:[13]"]),
            ["user:1", "user:3"]
        );
        assert_eq!(
            keys(&mut s, 110, &["KEYS", "user:?"]),
            ["user:1", "user:2"],
            "expired"
        );
        assert_eq!(
            keys(&mut s, 110, &["SCAN", "0", "MATCH", "*:1", "COUNT", "1000"]),
            ["item:1", "user:1"]
        );
        assert_eq!(
            keys(&mut s, 110, &["SCAN", "0", "TYPE", "hash", "COUNT", "100"]).len(),
            0
        );
        assert_eq!(
            keys(
                &mut s,
                110,
                &["SCAN", "0", "TYPE", "string", "COUNT", "100"]
            )
            .len(),
            3
        );
        assert_eq!(encode_err(&["SCAN", "x"]), "ERR invalid cursor");
        assert_eq!(encode_err(&["SCAN", "-1"]), "ERR invalid cursor");
        assert_eq!(encode_err(&["SCAN", "0", "COUNT", "0"]), "ERR syntax error");
        assert_eq!(encode_err(&["SCAN", "0", "COUNT"]), "ERR syntax error");
        assert_eq!(
            encode_err(&["SCAN", "0", "COUNT", "x"]),
            "ERR value is not an integer or out of range"
        );
        assert_eq!(
            replies(&mut s, 110, &[&["SCAN", "99999999999"]]),
            ["-ERR invalid cursor\r\n"]
        );
        assert_eq!(
            replies(&mut KvStore::new(), 0, &[&["SCAN", "0"]]),
            ["*2\r\n$1\r\n0\r\n*0\r\n"]
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
    /// (Version 5: clock 0, no deadlines.)
    fn encode_raw(version: u32, entries: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut out = BytesMut::new();
        out.put_slice(SNAPSHOT_MAGIC);
        out.put_u32_le(version);
        if version == SNAPSHOT_VERSION {
            out.put_u64_le(0);
        }
        out.put_u64_le(entries.len() as u64);
        for (k, v) in entries {
            put_str(&mut out, k);
            put_str(&mut out, v);
            if version == SNAPSHOT_VERSION {
                out.put_u64_le(0);
            }
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
        let second_entry_at = (SNAPSHOT_HEADER + 16 + sorted[1].0.len() + sorted[1].1.len()) as u64;
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
        // Written once: the write let go of the view's shards as it went.
        let err = paxos_node::Snapshot::write_to(&mut snapshot, &mut Vec::new())
            .expect_err("a second write has nothing left to write");
        assert!(err.to_string().contains("written once"), "{err}");
    }

    #[test]
    fn taking_a_snapshot_saves_nothing_until_a_write() {
        let mut s = KvStore::new();
        for k in many_keys(10_000) {
            s.set(&k, b"v");
        }
        let snapshot = s.snapshot();
        assert_eq!(snapshot.len(), 10_000);
        assert_eq!(snapshot.map.saved_keys(), 0);
        run(
            &mut s,
            &[&["GET", "key:1"], &["EXISTS", "key:2"], &["DEL", "absent"]],
        );
        assert_eq!(
            snapshot.map.saved_keys(),
            0,
            "reads and a miss save nothing"
        );
        run(&mut s, &[&["SET", "key:1", "w"]]);
        assert_eq!(snapshot.map.saved_keys(), 1);
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
        // Before writing: the write lets go of the view as it goes.
        let (encoded_len, whole) = (snapshot.encoded_len(), snapshot.to_vec());
        let mut pieces = Pieces(Vec::new());
        paxos_node::Snapshot::write_to(&mut snapshot, &mut pieces).unwrap();
        assert!(pieces.0.len() > MAX_VALUE_LEN / SNAPSHOT_WRITE_CHUNK);
        assert!(pieces.0.iter().all(|p| p.len() <= SNAPSHOT_WRITE_CHUNK));
        let joined = pieces.0.concat();
        assert_eq!(joined.len(), encoded_len);
        assert_eq!(joined, whole);
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

        /// Random sequences of string and expiry commands, with the decree
        /// clock moving (sometimes backwards, which must change nothing),
        /// reply for reply against a plain model of Redis's semantics.
        #[test]
        fn encoded_commands_match_a_model(ops in proptest::collection::vec((0u8..14, 0u8..4, 0u8..50, 0u64..40), 1..80)) {
            let mut s = KvStore::new();
            // key -> (value, deadline)
            let mut model: std::collections::HashMap<Vec<u8>, (Vec<u8>, Option<u64>)> = std::collections::HashMap::new();
            let mut clock = 0u64;
            let mut time = 1_000u64;
            for (op, key, val, step) in ops {
                // Mostly forward, now and then back.
                time = if step == 0 { time.saturating_sub(30) } else { time + step };
                clock = clock.max(time);
                model.retain(|_, (_, d)| d.is_none_or(|d| d > clock));
                let k = format!("k{key}");
                let v = val.to_string();
                let ttl = (u64::from(val) + 1).to_string();
                let cmd: Vec<&str> = match op {
                    0 => vec!["SET", &k, &v],
                    1 => vec!["DEL", &k],
                    2 => vec!["INCR", &k],
                    3 => vec!["GET", &k],
                    4 => vec!["SET", &k, &v, "PX", &ttl],
                    5 => vec!["SET", &k, &v, "NX"],
                    6 => vec!["PEXPIRE", &k, &ttl],
                    7 => vec!["PTTL", &k],
                    8 => vec!["PERSIST", &k],
                    9 => vec!["APPEND", &k, &v],
                    10 => vec!["GETDEL", &k],
                    11 => vec!["SET", &k, &v, "XX", "GET", "KEEPTTL"],
                    12 => vec!["EXISTS", &k],
                    _ => vec!["DBSIZE"],
                };
                let out = run_at(&mut s, time, &[&cmd]).remove(0);
                let kb = k.clone().into_bytes();
                let bulk = |v: Option<&Vec<u8>>| {
                    let mut o = BytesMut::new();
                    resp::write_bulk(&mut o, v.map(|v| &v[..]));
                    String::from_utf8(o.to_vec()).unwrap()
                };
                let old = model.get(&kb).cloned();
                let expect: String = match op {
                    0 => { model.insert(kb, (v.clone().into_bytes(), None)); "+OK\r\n".into() }
                    1 => { model.remove(&kb); format!(":{}\r\n", u8::from(old.is_some())) }
                    2 => match old.as_ref().map_or(Ok(0), |(v, _)| String::from_utf8_lossy(v).parse::<i64>()) {
                        // Long runs of APPENDs make numbers too big to parse.
                        Err(_) => String::from_utf8_lossy(REPLY_NOT_INT).into_owned(),
                        Ok(n) => match n.checked_add(1) {
                            None => String::from_utf8_lossy(REPLY_OVERFLOW).into_owned(),
                            Some(n) => {
                                model.insert(kb, (n.to_string().into_bytes(), old.and_then(|o| o.1)));
                                format!(":{n}\r\n")
                            }
                        },
                    },
                    3 => bulk(old.as_ref().map(|o| &o.0)),
                    4 => { model.insert(kb, (v.clone().into_bytes(), Some(clock + u64::from(val) + 1))); "+OK\r\n".into() }
                    5 => {
                        if old.is_none() { model.insert(kb, (v.clone().into_bytes(), None)); "+OK\r\n".into() } else { "$-1\r\n".into() }
                    }
                    6 => match model.get_mut(&kb) {
                        Some(e) => { e.1 = Some(clock + u64::from(val) + 1); ":1\r\n".into() }
                        None => ":0\r\n".into(),
                    },
                    7 => match &old {
                        None => ":-2\r\n".into(),
                        Some((_, None)) => ":-1\r\n".into(),
                        Some((_, Some(d))) => format!(":{}\r\n", d - clock),
                    },
                    8 => match model.get_mut(&kb) {
                        Some(e) if e.1.is_some() => { e.1 = None; ":1\r\n".into() }
                        _ => ":0\r\n".into(),
                    },
                    9 => {
                        let (mut joined, d) = old.unwrap_or_default();
                        joined.extend_from_slice(v.as_bytes());
                        let len = joined.len();
                        model.insert(kb, (joined, d));
                        format!(":{len}\r\n")
                    }
                    10 => { model.remove(&kb); bulk(old.as_ref().map(|o| &o.0)) }
                    11 => {
                        if let Some((_, d)) = &old { model.insert(kb, (v.clone().into_bytes(), *d)); }
                        bulk(old.as_ref().map(|o| &o.0))
                    }
                    12 => format!(":{}\r\n", u8::from(old.is_some())),
                    _ => {
                        // DBSIZE counts keys not yet reclaimed: at least the live ones.
                        let n: usize = String::from_utf8_lossy(&out[1..out.len() - 2]).parse().unwrap();
                        prop_assert!(n >= model.len() && n <= model.len() + 4, "{} vs {}", n, model.len());
                        continue;
                    }
                };
                prop_assert_eq!(String::from_utf8_lossy(&out), expect, "{:?} at {}", cmd, time);
            }
        }
    }
}
