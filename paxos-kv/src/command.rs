//! Client commands on the key space: validated with Redis's rules and error
//! texts, then encoded once, on the replica that receives them, into the
//! compact binary *request* that a write sends through the log and that
//! [`crate::kv::KvStore`] executes on every replica (a read's request is
//! answered by `KvStore::query` on one replica, never logged).
//!
//! Request encoding (integers little-endian; `str` is `u32 len | bytes`):
//!
//! ```text
//! 0x01 SET     str key, str value     (plain SET: drops the key's TTL)
//! 0x02 DEL     u32 n, n × str key
//! 0x03 INCR    str key
//! 0x04 MSET    u32 n, n × (str key, str value)
//! 0x05 GET     str key                 (reads are never logged: `query`)
//! 0x06 EXISTS  u32 n, n × str key
//! 0x07 MGET    u32 n, n × str key
//! 0x08 INCRBY  str key, i64 delta      (also DECR, DECRBY: a negated delta)
//! 0x09 SETX    str key, str value, u8 flags, i64 expiry
//!              (SET with options, SETNX, GETSET, SETEX, PSETEX; flags:
//!              `set_flags`)
//! 0x0A GETDEL  str key
//! 0x0B APPEND  str key, str value
//! 0x0C STRLEN  str key
//! 0x0D DBSIZE
//! 0x0E SCAN    u64 cursor, u32 count, u8 type (0 any, 1 string, 2 none),
//!              u8 has pattern, [str pattern]
//! 0x0F KEYS    str pattern
//! 0x10 EXPIRE  str key, i64 ttl ms, u8 condition bits (`expire_if`)
//!              (EXPIRE sends seconds × 1000; PEXPIRE ms)
//! 0x11 TTL     str key, u8 in ms (PTTL 1, TTL 0)
//! 0x12 PERSIST str key
//! 0x13 FLUSHALL
//! ```
//!
//! Times in requests are *relative* (a TTL) or absolute Unix ms (`EXAT`,
//! `PXAT`); the executing replica turns a TTL into a deadline with the
//! decree's time, never its own clock (see [`crate::kv`]).
//!
//! Commands that are not about the key space (`COMMAND`, `HELLO`, `CLIENT`,
//! `CONFIG`, `SELECT`) are answered per connection by [`crate::session`]
//! and never reach the log.

use bytes::{BufMut, BytesMut};

pub(crate) const OP_SET: u8 = 0x01;
pub(crate) const OP_DEL: u8 = 0x02;
pub(crate) const OP_INCR: u8 = 0x03;
pub(crate) const OP_MSET: u8 = 0x04;
pub(crate) const OP_GET: u8 = 0x05;
pub(crate) const OP_EXISTS: u8 = 0x06;
pub(crate) const OP_MGET: u8 = 0x07;
pub(crate) const OP_INCRBY: u8 = 0x08;
pub(crate) const OP_SETX: u8 = 0x09;
pub(crate) const OP_GETDEL: u8 = 0x0A;
pub(crate) const OP_APPEND: u8 = 0x0B;
pub(crate) const OP_STRLEN: u8 = 0x0C;
pub(crate) const OP_DBSIZE: u8 = 0x0D;
pub(crate) const OP_SCAN: u8 = 0x0E;
pub(crate) const OP_KEYS: u8 = 0x0F;
pub(crate) const OP_EXPIRE: u8 = 0x10;
pub(crate) const OP_TTL: u8 = 0x11;
pub(crate) const OP_PERSIST: u8 = 0x12;
pub(crate) const OP_FLUSHALL: u8 = 0x13;

/// The flags byte of a `SETX` request.
pub(crate) mod set_flags {
    /// Only if the key does not exist.
    pub const NX: u8 = 1;
    /// Only if the key exists.
    pub const XX: u8 = 2;
    /// Reply with the old value.
    pub const GET: u8 = 4;
    /// Keep the key's TTL.
    pub const KEEPTTL: u8 = 8;
    /// The expiry is a TTL in ms.
    pub const TTL: u8 = 16;
    /// The expiry is a Unix time in ms.
    pub const AT: u8 = 32;
    /// Reply `:1`/`:0` (SETNX) instead of `+OK`/nil.
    pub const REPLY_INT: u8 = 64;
}

/// The condition bits of an `EXPIRE` request (Redis 7's options; none:
/// always). XX goes with GT or LT; NX goes with nothing else.
pub(crate) mod expire_if {
    /// Only if the key has no TTL.
    pub const NX: u8 = 1;
    /// Only if the key has a TTL.
    pub const XX: u8 = 2;
    /// Only if the new deadline is later (no TTL counts as infinite).
    pub const GT: u8 = 4;
    /// Only if the new deadline is earlier (no TTL counts as infinite).
    pub const LT: u8 = 8;
}

/// Largest key accepted from a client.
pub const MAX_KEY_LEN: usize = 16 * 1024;
/// Largest value accepted from a client (and made by `APPEND`).
pub const MAX_VALUE_LEN: usize = 512 * 1024;
/// Largest TTL or absolute expiry time, in ms: far past any real clock
/// (2^62 ms is 146 million years), so a deadline computed from a decree's
/// time never overflows. Redis's bound is `i64::MAX - now`; both refuse
/// only absurd times, with the same error.
pub const MAX_EXPIRY_MS: i64 = 1 << 62;
/// `SCAN`'s `COUNT` is a hint; larger ones are cut to this, so one `SCAN`
/// visits a bounded number of keys on the event loop.
pub const MAX_SCAN_COUNT: u32 = 10_000;

/// What kind of command a client sent, decided when it is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandKind {
    /// Changes state: goes through consensus.
    Write,
    /// Reads state: answered without the log, linearizable at the leader
    /// (see [`crate::server`] for the two ways a read goes).
    Read,
}

/// Why a client command was rejected before it reached consensus. The
/// `Display` text is the RESP error line (without the leading `-`),
/// exactly as Redis words it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// Unknown command name (the text is Redis's whole message).
    #[error("ERR unknown command '{name}', with args beginning with: {args}")]
    Unknown {
        /// The name, cut to 128 bytes.
        name: String,
        /// The first arguments, each quoted and followed by a space, cut
        /// to about 128 bytes.
        args: String,
    },
    /// Wrong number of arguments (the command's lowercase name).
    #[error("ERR wrong number of arguments for '{0}' command")]
    Arity(&'static str),
    /// A key or value over the size limits.
    #[error("ERR key or value too large")]
    TooLarge,
    /// An argument that must be an integer is not one.
    #[error("ERR value is not an integer or out of range")]
    NotAnInteger,
    /// Options that do not parse or do not go together.
    #[error("ERR syntax error")]
    Syntax,
    /// A TTL or expiry time out of range (the command's lowercase name).
    #[error("ERR invalid expire time in '{0}' command")]
    InvalidExpire(&'static str),
    /// A `SCAN` cursor that is not one this server hands out.
    #[error("ERR invalid cursor")]
    InvalidCursor,
    /// Any other fixed Redis error text (without `ERR `).
    #[error("ERR {0}")]
    Other(&'static str),
    /// An unknown `EXPIRE` option.
    #[error("ERR Unsupported option {0}")]
    UnsupportedOption(String),
}

impl CommandError {
    /// Redis's "unknown command" error for `args` (`args[0]` the name).
    pub fn unknown<A: AsRef<[u8]>>(args: &[A]) -> CommandError {
        let lossy =
            |b: &[u8], max: usize| String::from_utf8_lossy(&b[..b.len().min(max)]).into_owned();
        let name = args
            .first()
            .map_or(String::new(), |n| lossy(n.as_ref(), 128));
        // As Redis: quoted arguments while the text is under 128 bytes,
        // each cut to what is left of the 128.
        let mut quoted = String::new();
        for a in args.iter().skip(1) {
            if quoted.len() >= 128 {
                break;
            }
            let room = 128 - quoted.len();
            quoted.push('\'');
            quoted.push_str(&lossy(a.as_ref(), room));
            quoted.push_str("' ");
        }
        CommandError::Unknown { name, args: quoted }
    }
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

/// A decimal `i64`, as Redis's `string2ll` reads it (no spaces, no `+`).
pub(crate) fn parse_i64(arg: &[u8]) -> Option<i64> {
    if arg.first() == Some(&b'+') {
        return None;
    }
    std::str::from_utf8(arg).ok()?.parse().ok()
}

fn int_arg(arg: &[u8]) -> Result<i64, CommandError> {
    parse_i64(arg).ok_or(CommandError::NotAnInteger)
}

/// A TTL or Unix time in `unit_ms` milliseconds per unit, as ms: Redis
/// refuses non-positive ones for `SET` and overflowing ones everywhere.
fn expiry_ms(arg: &[u8], unit_ms: i64, cmd: &'static str) -> Result<i64, CommandError> {
    let n = int_arg(arg)?;
    n.checked_mul(unit_ms)
        .filter(|ms| (-MAX_EXPIRY_MS..=MAX_EXPIRY_MS).contains(ms))
        .ok_or(CommandError::InvalidExpire(cmd))
}

/// Whether `arg` equals `word` ignoring ASCII case.
fn is(arg: &[u8], word: &str) -> bool {
    arg.eq_ignore_ascii_case(word.as_bytes())
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
    let start = out.len();
    let result = encode_known(name_up, rest, out, arity);
    match result {
        Some(Ok(kind)) => Ok(kind),
        Some(Err(e)) => {
            out.truncate(start);
            Err(e)
        }
        None => Err(CommandError::unknown(args)),
    }
}

/// Encodes the command named `name_up` (uppercase); `None` if no such
/// command. On error the caller drops whatever was appended.
fn encode_known<A: AsRef<[u8]>>(
    name_up: &[u8],
    rest: &[A],
    out: &mut BytesMut,
    arity: impl Fn(bool, &'static str) -> Result<(), CommandError>,
) -> Option<Result<CommandKind, CommandError>> {
    let one_key = |op: u8, cmd: &'static str, kind: CommandKind, out: &mut BytesMut| {
        arity(rest.len() == 1, cmd)?;
        check_sizes(rest, &[])?;
        out.put_u8(op);
        put_str(out, rest[0].as_ref());
        Ok(kind)
    };
    Some(match name_up {
        b"SET" => encode_set(rest, out, &arity),
        b"SETNX" | b"GETSET" => (|| {
            let (cmd, flags) = if name_up == b"SETNX" {
                ("setnx", set_flags::NX | set_flags::REPLY_INT)
            } else {
                ("getset", set_flags::GET)
            };
            arity(rest.len() == 2, cmd)?;
            check_sizes(&rest[..1], &rest[1..])?;
            put_setx(out, rest[0].as_ref(), rest[1].as_ref(), flags, 0);
            Ok(CommandKind::Write)
        })(),
        b"SETEX" | b"PSETEX" => (|| {
            let (cmd, unit) = if name_up == b"SETEX" {
                ("setex", 1000)
            } else {
                ("psetex", 1)
            };
            arity(rest.len() == 3, cmd)?;
            check_sizes(&rest[..1], &rest[2..])?;
            let ttl = expiry_ms(rest[1].as_ref(), unit, cmd)?;
            if ttl <= 0 {
                return Err(CommandError::InvalidExpire(cmd));
            }
            put_setx(out, rest[0].as_ref(), rest[2].as_ref(), set_flags::TTL, ttl);
            Ok(CommandKind::Write)
        })(),
        b"GET" => one_key(OP_GET, "get", CommandKind::Read, out),
        b"GETDEL" => one_key(OP_GETDEL, "getdel", CommandKind::Write, out),
        b"STRLEN" => one_key(OP_STRLEN, "strlen", CommandKind::Read, out),
        b"PERSIST" => one_key(OP_PERSIST, "persist", CommandKind::Write, out),
        b"INCR" => one_key(OP_INCR, "incr", CommandKind::Write, out),
        b"TTL" | b"PTTL" => (|| {
            let in_ms = name_up == b"PTTL";
            one_key(
                OP_TTL,
                if in_ms { "pttl" } else { "ttl" },
                CommandKind::Read,
                out,
            )?;
            out.put_u8(u8::from(in_ms));
            Ok(CommandKind::Read)
        })(),
        b"INCRBY" | b"DECRBY" | b"DECR" => (|| {
            let (cmd, with_delta) = match name_up {
                b"INCRBY" => ("incrby", true),
                b"DECRBY" => ("decrby", true),
                _ => ("decr", false),
            };
            arity(rest.len() == 1 + usize::from(with_delta), cmd)?;
            check_sizes(&rest[..1], &[])?;
            let delta = if with_delta {
                int_arg(rest[1].as_ref())?
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
        })(),
        b"APPEND" => (|| {
            arity(rest.len() == 2, "append")?;
            check_sizes(&rest[..1], &rest[1..])?;
            out.put_u8(OP_APPEND);
            put_str(out, rest[0].as_ref());
            put_str(out, rest[1].as_ref());
            Ok(CommandKind::Write)
        })(),
        b"DEL" | b"EXISTS" | b"MGET" => (|| {
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
        })(),
        b"MSET" => (|| {
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
        })(),
        b"DBSIZE" => (|| {
            arity(rest.is_empty(), "dbsize")?;
            out.put_u8(OP_DBSIZE);
            Ok(CommandKind::Read)
        })(),
        b"FLUSHALL" => (|| {
            // ASYNC and SYNC are accepted: the map is dropped at once either
            // way (see `KvStore`).
            match rest {
                [] => {}
                [mode] if is(mode.as_ref(), "ASYNC") || is(mode.as_ref(), "SYNC") => {}
                _ => return Err(CommandError::Syntax),
            }
            out.put_u8(OP_FLUSHALL);
            Ok(CommandKind::Write)
        })(),
        b"KEYS" => (|| {
            arity(rest.len() == 1, "keys")?;
            check_sizes(rest, &[])?;
            out.put_u8(OP_KEYS);
            put_str(out, rest[0].as_ref());
            Ok(CommandKind::Read)
        })(),
        b"SCAN" => encode_scan(rest, out, &arity),
        b"EXPIRE" | b"PEXPIRE" => (|| {
            let (cmd, unit) = if name_up == b"EXPIRE" {
                ("expire", 1000)
            } else {
                ("pexpire", 1)
            };
            arity(rest.len() >= 2, cmd)?;
            check_sizes(&rest[..1], &[])?;
            let mut condition = 0u8;
            for opt in &rest[2..] {
                let opt = opt.as_ref();
                condition |= [
                    ("NX", expire_if::NX),
                    ("XX", expire_if::XX),
                    ("GT", expire_if::GT),
                    ("LT", expire_if::LT),
                ]
                .iter()
                .find(|(w, _)| is(opt, w))
                .map(|&(_, c)| c)
                .ok_or_else(|| {
                    CommandError::UnsupportedOption(
                        String::from_utf8_lossy(&opt[..opt.len().min(128)]).into_owned(),
                    )
                })?;
            }
            if condition & expire_if::NX != 0 && condition != expire_if::NX {
                return Err(CommandError::Other(
                    "NX and XX, GT or LT options at the same time are not compatible",
                ));
            }
            if condition & (expire_if::GT | expire_if::LT) == expire_if::GT | expire_if::LT {
                return Err(CommandError::Other(
                    "GT and LT options at the same time are not compatible",
                ));
            }
            // Options first, then the number, as Redis checks them.
            let ttl = expiry_ms(rest[1].as_ref(), unit, cmd)?;
            out.put_u8(OP_EXPIRE);
            put_str(out, rest[0].as_ref());
            out.put_i64_le(ttl);
            out.put_u8(condition);
            Ok(CommandKind::Write)
        })(),
        _ => return None,
    })
}

fn put_setx(out: &mut BytesMut, key: &[u8], value: &[u8], flags: u8, expiry: i64) {
    out.put_u8(OP_SETX);
    put_str(out, key);
    put_str(out, value);
    out.put_u8(flags);
    out.put_i64_le(expiry);
}

/// `SET key value [NX|XX] [GET] [EX s|PX ms|EXAT s|PXAT ms|KEEPTTL]`, with
/// Redis 7's rules: options in any order, NX with XX and two kinds of
/// expiry are syntax errors, and the expiry number is checked only after
/// every option parsed.
fn encode_set<A: AsRef<[u8]>>(
    rest: &[A],
    out: &mut BytesMut,
    arity: &impl Fn(bool, &'static str) -> Result<(), CommandError>,
) -> Result<CommandKind, CommandError> {
    use set_flags::*;
    arity(rest.len() >= 2, "set")?;
    check_sizes(&rest[..1], &rest[1..2])?;
    let (key, value) = (rest[0].as_ref(), rest[1].as_ref());
    if rest.len() == 2 {
        out.put_u8(OP_SET);
        put_str(out, key);
        put_str(out, value);
        return Ok(CommandKind::Write);
    }
    let mut flags = 0u8;
    // (unit in ms, absolute, the number)
    let mut expiry: Option<(i64, bool, &[u8])> = None;
    let mut i = 2;
    while i < rest.len() {
        let opt = rest[i].as_ref();
        let next = rest.get(i + 1).map(|a| a.as_ref());
        if is(opt, "NX") && flags & XX == 0 {
            flags |= NX;
        } else if is(opt, "XX") && flags & NX == 0 {
            flags |= XX;
        } else if is(opt, "GET") {
            flags |= GET;
        } else if is(opt, "KEEPTTL") && expiry.is_none() {
            flags |= KEEPTTL;
        } else if let (Some(n), Some((unit, at))) = (
            next,
            [
                ("EX", 1000, false),
                ("PX", 1, false),
                ("EXAT", 1000, true),
                ("PXAT", 1, true),
            ]
            .iter()
            .find(|(w, _, _)| is(opt, w))
            .map(|&(_, unit, at)| (unit, at)),
        ) {
            // Another kind of expiry, or KEEPTTL, already given: an error;
            // the same kind again: the later one counts (as Redis).
            if flags & KEEPTTL != 0 || expiry.is_some_and(|(u, a, _)| (u, a) != (unit, at)) {
                return Err(CommandError::Syntax);
            }
            expiry = Some((unit, at, n));
            i += 1;
        } else {
            return Err(CommandError::Syntax);
        }
        i += 1;
    }
    let mut when = 0i64;
    if let Some((unit, at, n)) = expiry {
        when = expiry_ms(n, unit, "set")?;
        if when <= 0 {
            return Err(CommandError::InvalidExpire("set"));
        }
        flags |= if at { AT } else { TTL };
    }
    put_setx(out, key, value, flags, when);
    Ok(CommandKind::Write)
}

/// `SCAN cursor [MATCH pattern] [COUNT count] [TYPE type]`.
fn encode_scan<A: AsRef<[u8]>>(
    rest: &[A],
    out: &mut BytesMut,
    arity: &impl Fn(bool, &'static str) -> Result<(), CommandError>,
) -> Result<CommandKind, CommandError> {
    arity(!rest.is_empty(), "scan")?;
    let cursor = std::str::from_utf8(rest[0].as_ref())
        .ok()
        .and_then(|c| c.parse::<u64>().ok())
        .ok_or(CommandError::InvalidCursor)?;
    let mut count = 10u32;
    let mut pattern: Option<&[u8]> = None;
    let mut type_filter = 0u8;
    let mut i = 1;
    while i < rest.len() {
        let opt = rest[i].as_ref();
        let Some(arg) = rest.get(i + 1).map(|a| a.as_ref()) else {
            return Err(CommandError::Syntax);
        };
        if is(opt, "COUNT") {
            let n = int_arg(arg)?;
            if n < 1 {
                return Err(CommandError::Syntax);
            }
            count = n.min(i64::from(MAX_SCAN_COUNT)) as u32;
        } else if is(opt, "MATCH") {
            if arg.len() > MAX_KEY_LEN {
                return Err(CommandError::TooLarge);
            }
            pattern = Some(arg);
        } else if is(opt, "TYPE") {
            // Every key is a string; another known type matches nothing.
            type_filter = if is(arg, "string") { 1 } else { 2 };
        } else {
            return Err(CommandError::Syntax);
        }
        i += 2;
    }
    out.put_u8(OP_SCAN);
    out.put_u64_le(cursor);
    out.put_u32_le(count);
    out.put_u8(type_filter);
    match pattern {
        Some(p) => {
            out.put_u8(1);
            put_str(out, p);
        }
        None => out.put_u8(0),
    }
    Ok(CommandKind::Read)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::COMMANDS;

    /// A valid invocation of every key-space command.
    const SAMPLES: &[&[&str]] = &[
        &["GET", "k"],
        &["SET", "k", "v"],
        &["SETNX", "k", "v"],
        &["GETSET", "k", "v"],
        &["GETDEL", "k"],
        &["SETEX", "k", "10", "v"],
        &["PSETEX", "k", "10", "v"],
        &["MGET", "a", "b"],
        &["MSET", "a", "1", "b", "2"],
        &["DEL", "a", "b"],
        &["EXISTS", "a", "b"],
        &["INCR", "n"],
        &["DECR", "n"],
        &["INCRBY", "n", "2"],
        &["DECRBY", "n", "2"],
        &["APPEND", "k", "v"],
        &["STRLEN", "k"],
        &["EXPIRE", "k", "10"],
        &["PEXPIRE", "k", "10"],
        &["TTL", "k"],
        &["PTTL", "k"],
        &["PERSIST", "k"],
        &["DBSIZE"],
        &["KEYS", "*"],
        &["SCAN", "0"],
        &["FLUSHALL"],
    ];

    /// Reads skip the log (they are served from one replica's state, never
    /// proposed), so a command classified `Read` that changed state would
    /// change it on one replica only. The classification must agree with
    /// the `readonly` flag the command table gives clients (which route
    /// `READONLY` traffic by it), and every key-space command must have one.
    #[test]
    fn read_only_commands_are_exactly_the_ones_flagged_readonly() {
        let mut out = BytesMut::new();
        let mut reads = Vec::new();
        for sample in SAMPLES {
            out.clear();
            let kind = encode_command(sample, &mut out)
                .unwrap_or_else(|e| panic!("{sample:?} is not a valid sample: {e}"));
            let name = sample[0].to_ascii_lowercase();
            let info = COMMANDS
                .iter()
                .find(|c| c.name == name)
                .unwrap_or_else(|| panic!("{name} missing from the command table"));
            assert_eq!(
                kind == CommandKind::Read,
                info.flags.contains(&"readonly"),
                "{name}: classified {kind:?}, flags {:?}",
                info.flags
            );
            if kind == CommandKind::Read {
                reads.push(name);
            }
        }
        assert_eq!(
            reads,
            ["get", "mget", "exists", "strlen", "ttl", "pttl", "dbsize", "keys", "scan"]
        );
        // Every command the table lists that is not connection-level has a
        // sample, so a new command cannot go unclassified here.
        for c in COMMANDS {
            let connection_level =
                crate::session::execute(&[c.name.as_bytes()], &mut crate::session::Session::new())
                    .is_some()
                    || ["ping", "quit", "info"].contains(&c.name);
            let sampled = SAMPLES.iter().any(|s| s[0].eq_ignore_ascii_case(c.name));
            assert!(connection_level || sampled, "{} has no sample", c.name);
        }
    }
}
