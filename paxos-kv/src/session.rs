//! Connection-level commands: the ones clients and tools send about the
//! connection or the server rather than the key space — `COMMAND`,
//! `HELLO`, `CLIENT`, `CONFIG GET`, `SELECT`, `ECHO`. They are answered at
//! once from per-connection state ([`Session`]) and static tables: nothing
//! here goes through the log or reads the store.
//!
//! What is supported, and why that much:
//!
//! - `COMMAND`, `COMMAND COUNT`, `COMMAND INFO name...`, `COMMAND LIST`:
//!   the command table ([`COMMANDS`]) in Redis 7's reply layout.
//!   `COMMAND DOCS` answers an error on purpose: redis-cli then falls back
//!   to its built-in help table, which gives hints for every command
//!   (an empty `COMMAND DOCS` would leave it with none).
//! - `HELLO [2]`: the RESP2 server map as a flat array. This server speaks
//!   only RESP2, so `HELLO 3` gets `-NOPROTO`, as Redis answers a version
//!   it cannot speak; clients then stay on RESP2.
//! - `CLIENT SETNAME/GETNAME/ID/SETINFO`: what client libraries send when
//!   they connect.
//! - `CONFIG GET pattern...`: the few parameters benchmark tools ask about
//!   ([`CONFIG`]), matched as globs.
//! - `SELECT 0`: there is one database.
//! - `READONLY` / `READWRITE`: Redis Cluster's opt-in to reads from a
//!   replica. On a `READONLY` connection a follower serves reads from its
//!   own state, at least as fresh as everything the connection has seen
//!   (see [`Session::readonly`]); writes are still redirected.
//!
//! Errors use Redis's exact texts.

use crate::command::{parse_i64, CommandError};
use crate::glob::Pattern;
use crate::resp;
use bytes::{Bytes, BytesMut};
use std::sync::atomic::{AtomicU64, Ordering};

/// The server version reported by `HELLO` and `INFO`-like replies: the
/// Redis version whose command semantics and error texts this server
/// follows.
pub const REDIS_VERSION: &str = "7.0.0";

/// Per-connection state.
#[derive(Debug)]
pub struct Session {
    /// Unique among this process's connections (`CLIENT ID`).
    id: u64,
    /// `CLIENT SETNAME`'s name, if any.
    name: Option<Bytes>,
    /// `READONLY` was sent (and no `READWRITE` since).
    readonly: bool,
}

static NEXT_CLIENT_ID: AtomicU64 = AtomicU64::new(1);

impl Default for Session {
    fn default() -> Self {
        Session::new()
    }
}

impl Session {
    /// A new connection's state, with a fresh client id.
    pub fn new() -> Session {
        Session {
            id: NEXT_CLIENT_ID.fetch_add(1, Ordering::Relaxed),
            name: None,
            readonly: false,
        }
    }

    /// The connection's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The connection's name, if it set one.
    pub fn name(&self) -> Option<&[u8]> {
        self.name.as_deref()
    }

    /// Whether the client sent `READONLY` (Redis Cluster): it accepts reads
    /// served by a follower from its own applied state, as long as they
    /// reflect every slot this connection has observed.
    pub fn readonly(&self) -> bool {
        self.readonly
    }
}

/// One command of the table: what `COMMAND INFO` reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommandInfo {
    /// Lowercase name.
    pub name: &'static str,
    /// Redis arity: `n` exactly n arguments (with the name), `-n` at least.
    pub arity: i64,
    /// Redis flags.
    pub flags: &'static [&'static str],
    /// First key argument (0: none).
    pub first_key: i64,
    /// Last key argument (-1: the last argument).
    pub last_key: i64,
    /// Step between keys.
    pub step: i64,
}

const fn cmd(
    name: &'static str,
    arity: i64,
    flags: &'static [&'static str],
    keys: (i64, i64, i64),
) -> CommandInfo {
    CommandInfo {
        name,
        arity,
        flags,
        first_key: keys.0,
        last_key: keys.1,
        step: keys.2,
    }
}

const R: &[&str] = &["readonly", "fast"];
const W: &[&str] = &["write", "denyoom"];
const WF: &[&str] = &["write", "fast"];
const CONN: &[&str] = &["loading", "stale", "fast"];
const ONE: (i64, i64, i64) = (1, 1, 1);
const NONE: (i64, i64, i64) = (0, 0, 0);

/// Every command this server answers, in `COMMAND`'s layout (operator
/// commands, `PAXOS.*`, are not listed: they are not Redis commands).
pub const COMMANDS: &[CommandInfo] = &[
    cmd("get", 2, R, ONE),
    cmd("set", -3, W, ONE),
    cmd("setnx", 3, &["write", "denyoom", "fast"], ONE),
    cmd("getset", 3, &["write", "denyoom", "fast"], ONE),
    cmd("getdel", 2, WF, ONE),
    cmd("setex", 4, W, ONE),
    cmd("psetex", 4, W, ONE),
    cmd("mget", -2, R, (1, -1, 1)),
    cmd("mset", -3, W, (1, -1, 2)),
    cmd("del", -2, &["write"], (1, -1, 1)),
    cmd("exists", -2, R, (1, -1, 1)),
    cmd("incr", 2, &["write", "denyoom", "fast"], ONE),
    cmd("decr", 2, &["write", "denyoom", "fast"], ONE),
    cmd("incrby", 3, &["write", "denyoom", "fast"], ONE),
    cmd("decrby", 3, &["write", "denyoom", "fast"], ONE),
    cmd("append", 3, W, ONE),
    cmd("strlen", 2, R, ONE),
    cmd("expire", -3, WF, ONE),
    cmd("pexpire", -3, WF, ONE),
    cmd("ttl", 2, R, ONE),
    cmd("pttl", 2, R, ONE),
    cmd("persist", 2, WF, ONE),
    cmd("dbsize", 1, R, NONE),
    cmd("keys", 2, &["readonly"], NONE),
    cmd("scan", -2, &["readonly"], NONE),
    cmd("flushall", -1, &["write"], NONE),
    cmd("ping", -1, &["fast"], NONE),
    cmd("echo", 2, &["fast"], NONE),
    cmd("quit", -1, &["fast"], NONE),
    cmd("info", -1, &["loading", "stale"], NONE),
    cmd("command", -1, &["loading", "stale"], NONE),
    cmd("hello", -1, CONN, NONE),
    cmd("client", -2, &["loading", "stale"], NONE),
    cmd("config", -2, &["loading", "stale"], NONE),
    cmd("select", 2, CONN, NONE),
    cmd("readonly", 1, CONN, NONE),
    cmd("readwrite", 1, CONN, NONE),
];

/// `CONFIG GET`'s parameters: what redis-benchmark and client libraries
/// ask about, with the values that describe this server.
pub const CONFIG: &[(&str, &str)] = &[
    ("appendonly", "no"),
    ("databases", "1"),
    ("maxmemory", "0"),
    ("maxmemory-policy", "noeviction"),
    ("proto-max-bulk-len", "524288"),
    ("save", ""),
    ("timeout", "0"),
];

/// Answers `args` if it is a connection-level command; `None` hands it on
/// (to the key-space commands).
pub fn execute(args: &[&[u8]], session: &mut Session) -> Option<Bytes> {
    let name = args.first()?;
    let is = |word: &str| name.eq_ignore_ascii_case(word.as_bytes());
    let mut out = BytesMut::new();
    let result = if is("COMMAND") {
        command(args, &mut out)
    } else if is("HELLO") {
        hello(args, session, &mut out)
    } else if is("CLIENT") {
        client(args, session, &mut out)
    } else if is("CONFIG") {
        config(args, &mut out)
    } else if is("SELECT") {
        select(args, &mut out)
    } else if is("ECHO") {
        echo(args, &mut out)
    } else if is("READONLY") || is("READWRITE") {
        read_from_replicas(args, session, is("READONLY"), &mut out)
    } else {
        return None;
    };
    if let Err(e) = result {
        out.clear();
        resp::write_error(&mut out, e.as_bytes());
    }
    Some(out.freeze())
}

/// An error reply's text (without the `-`).
type Reply = Result<(), String>;

/// Redis's arity error; `cmd` is the lowercase name, `command|sub` for a
/// subcommand (as Redis 7 names them).
fn arity(cmd: &str) -> String {
    format!("ERR wrong number of arguments for '{cmd}' command")
}

fn unknown_subcommand(cmd: &str, sub: &[u8]) -> String {
    format!(
        "ERR unknown subcommand '{}'. Try {} HELP.",
        String::from_utf8_lossy(&sub[..sub.len().min(128)]),
        cmd
    )
}

fn write_info(out: &mut BytesMut, c: &CommandInfo) {
    resp::write_array_header(out, Some(10));
    resp::write_bulk(out, Some(c.name.as_bytes()));
    resp::write_integer(out, c.arity);
    resp::write_array_header(out, Some(c.flags.len()));
    for f in c.flags {
        resp::write_simple(out, f.as_bytes());
    }
    resp::write_integer(out, c.first_key);
    resp::write_integer(out, c.last_key);
    resp::write_integer(out, c.step);
    // ACL categories, tips, key specs, subcommands: none described.
    for _ in 0..4 {
        resp::write_array_header(out, Some(0));
    }
}

fn command(args: &[&[u8]], out: &mut BytesMut) -> Reply {
    let Some(sub) = args.get(1) else {
        resp::write_array_header(out, Some(COMMANDS.len()));
        for c in COMMANDS {
            write_info(out, c);
        }
        return Ok(());
    };
    let is = |w: &str| sub.eq_ignore_ascii_case(w.as_bytes());
    if is("COUNT") {
        if args.len() != 2 {
            return Err(arity("command|count"));
        }
        resp::write_integer(out, COMMANDS.len() as i64);
    } else if is("LIST") {
        if args.len() != 2 {
            return Err(arity("command|list"));
        }
        resp::write_array_header(out, Some(COMMANDS.len()));
        for c in COMMANDS {
            resp::write_bulk(out, Some(c.name.as_bytes()));
        }
    } else if is("INFO") {
        resp::write_array_header(out, Some(args.len() - 2));
        for name in &args[2..] {
            match COMMANDS
                .iter()
                .find(|c| name.eq_ignore_ascii_case(c.name.as_bytes()))
            {
                Some(c) => write_info(out, c),
                None => resp::write_array_header(out, None),
            }
        }
    } else {
        // DOCS included: see the module docs.
        return Err(unknown_subcommand("COMMAND", sub));
    }
    Ok(())
}

fn hello(args: &[&[u8]], session: &mut Session, out: &mut BytesMut) -> Reply {
    if let Some(version) = args.get(1) {
        let v =
            parse_i64(version).ok_or("ERR Protocol version is not an integer or out of range")?;
        if v != 2 {
            // Redis's reply to a version it does not speak (here: 3 too).
            return Err("NOPROTO unsupported protocol version".into());
        }
    }
    let mut name = None;
    let mut i = 2;
    while i < args.len() {
        let opt = args[i];
        let left = args.len() - i - 1;
        if opt.eq_ignore_ascii_case(b"AUTH") && left >= 2 {
            // No users or passwords here: any credentials are the default
            // user's, as on a Redis without `requirepass`.
            i += 3;
        } else if opt.eq_ignore_ascii_case(b"SETNAME") && left >= 1 {
            name = Some(args[i + 1]);
            i += 2;
        } else {
            return Err(format!(
                "ERR Syntax error in HELLO option '{}'",
                String::from_utf8_lossy(&opt[..opt.len().min(128)])
            ));
        }
    }
    if let Some(name) = name {
        set_name(session, name)?;
    }
    // Redis's HELLO map, flattened as RESP2 sends maps.
    let text = |out: &mut BytesMut, key: &str, value: &str| {
        resp::write_bulk(out, Some(key.as_bytes()));
        resp::write_bulk(out, Some(value.as_bytes()));
    };
    resp::write_array_header(out, Some(14));
    text(out, "server", "redis");
    text(out, "version", REDIS_VERSION);
    resp::write_bulk(out, Some(b"proto"));
    resp::write_integer(out, 2);
    resp::write_bulk(out, Some(b"id"));
    resp::write_integer(out, session.id as i64);
    text(out, "mode", "standalone");
    text(out, "role", "master");
    resp::write_bulk(out, Some(b"modules"));
    resp::write_array_header(out, Some(0));
    Ok(())
}

fn set_name(session: &mut Session, name: &[u8]) -> Reply {
    // Redis allows printable ASCII without spaces.
    if name.iter().any(|&b| !(b'!'..=b'~').contains(&b)) {
        return Err(
            "ERR Client names cannot contain spaces, newlines or special characters.".into(),
        );
    }
    session.name = (!name.is_empty()).then(|| Bytes::copy_from_slice(name));
    Ok(())
}

fn client(args: &[&[u8]], session: &mut Session, out: &mut BytesMut) -> Reply {
    let Some(sub) = args.get(1) else {
        return Err(arity("client"));
    };
    let is = |w: &str| sub.eq_ignore_ascii_case(w.as_bytes());
    if is("SETNAME") {
        let [_, _, name] = args else {
            return Err(arity("client|setname"));
        };
        set_name(session, name)?;
        resp::write_simple(out, b"OK");
    } else if is("GETNAME") {
        if args.len() != 2 {
            return Err(arity("client|getname"));
        }
        resp::write_bulk(out, session.name());
    } else if is("ID") {
        if args.len() != 2 {
            return Err(arity("client|id"));
        }
        resp::write_integer(out, session.id as i64);
    } else if is("SETINFO") {
        // Client libraries announce their name and version; nothing here
        // reports them, so they are accepted and dropped.
        if args.len() != 4 {
            return Err(arity("client|setinfo"));
        }
        let attr = args[2];
        if !attr.eq_ignore_ascii_case(b"LIB-NAME") && !attr.eq_ignore_ascii_case(b"LIB-VER") {
            return Err(format!(
                "ERR Unrecognized option '{}'",
                String::from_utf8_lossy(&attr[..attr.len().min(128)])
            ));
        }
        resp::write_simple(out, b"OK");
    } else {
        return Err(unknown_subcommand("CLIENT", sub));
    }
    Ok(())
}

fn config(args: &[&[u8]], out: &mut BytesMut) -> Reply {
    let Some(sub) = args.get(1) else {
        return Err(arity("config"));
    };
    if !sub.eq_ignore_ascii_case(b"GET") {
        return Err(unknown_subcommand("CONFIG", sub));
    }
    if args.len() < 3 {
        return Err(arity("config|get"));
    }
    let patterns: Vec<Pattern> = args[2..].iter().map(|p| Pattern::new(p)).collect();
    // Each parameter once, however many patterns match it.
    let matching: Vec<&(&str, &str)> = CONFIG
        .iter()
        .filter(|(name, _)| patterns.iter().any(|p| p.matches(name.as_bytes())))
        .collect();
    resp::write_array_header(out, Some(matching.len() * 2));
    for (name, value) in matching {
        resp::write_bulk(out, Some(name.as_bytes()));
        resp::write_bulk(out, Some(value.as_bytes()));
    }
    Ok(())
}

fn select(args: &[&[u8]], out: &mut BytesMut) -> Reply {
    let [_, index] = args else {
        return Err(arity("select"));
    };
    match parse_i64(index) {
        None => Err(CommandError::NotAnInteger.to_string()),
        Some(0) => {
            resp::write_simple(out, b"OK");
            Ok(())
        }
        Some(_) => Err("ERR DB index is out of range".into()),
    }
}

fn read_from_replicas(
    args: &[&[u8]],
    session: &mut Session,
    readonly: bool,
    out: &mut BytesMut,
) -> Reply {
    if args.len() != 1 {
        return Err(arity(if readonly { "readonly" } else { "readwrite" }));
    }
    session.readonly = readonly;
    resp::write_simple(out, b"OK");
    Ok(())
}

fn echo(args: &[&[u8]], out: &mut BytesMut) -> Reply {
    let [_, message] = args else {
        return Err(arity("echo"));
    };
    resp::write_bulk(out, Some(message));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(session: &mut Session, parts: &[&str]) -> Vec<u8> {
        let args: Vec<&[u8]> = parts.iter().map(|p| p.as_bytes()).collect();
        execute(&args, session).expect("a session command").to_vec()
    }

    #[test]
    fn other_commands_are_handed_on() {
        let mut s = Session::new();
        assert_eq!(execute(&[b"GET", b"k"], &mut s), None);
        assert_eq!(execute(&[b"PING"], &mut s), None);
    }

    #[test]
    fn config_get_answers_what_redis_benchmark_asks() {
        let mut s = Session::new();
        assert_eq!(
            run(&mut s, &["CONFIG", "GET", "save"]),
            b"*2\r\n$4\r\nsave\r\n$0\r\n\r\n"
        );
        assert_eq!(
            run(&mut s, &["config", "get", "appendonly"]),
            b"*2\r\n$10\r\nappendonly\r\n$2\r\nno\r\n"
        );
        assert_eq!(run(&mut s, &["CONFIG", "GET", "nosuch"]), b"*0\r\n");
        let both = run(&mut s, &["CONFIG", "GET", "save", "s*"]);
        assert_eq!(
            both, b"*2\r\n$4\r\nsave\r\n$0\r\n\r\n",
            "each parameter once"
        );
        let all = String::from_utf8(run(&mut s, &["CONFIG", "GET", "*"])).unwrap();
        assert!(all.starts_with(&format!("*{}\r\n", CONFIG.len() * 2)));
        assert_eq!(
            run(&mut s, &["CONFIG", "SET", "save", ""]),
            b"-ERR unknown subcommand 'SET'. Try CONFIG HELP.\r\n"
        );
        assert_eq!(
            run(&mut s, &["CONFIG", "GET"]),
            b"-ERR wrong number of arguments for 'config|get' command\r\n"
        );
    }

    #[test]
    fn hello_speaks_resp2_only() {
        let mut s = Session::new();
        let two = String::from_utf8(run(&mut s, &["HELLO", "2"])).unwrap();
        let id = s.id();
        assert_eq!(
            two,
            format!(
                "*14\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$5\r\n7.0.0\r\n\
                 $5\r\nproto\r\n:2\r\n$2\r\nid\r\n:{id}\r\n$4\r\nmode\r\n$10\r\nstandalone\r\n\
                 $4\r\nrole\r\n$6\r\nmaster\r\n$7\r\nmodules\r\n*0\r\n"
            )
        );
        assert_eq!(run(&mut s, &["HELLO"]), two.as_bytes());
        assert_eq!(
            run(&mut s, &["HELLO", "3"]),
            b"-NOPROTO unsupported protocol version\r\n"
        );
        assert_eq!(
            run(&mut s, &["HELLO", "x"]),
            b"-ERR Protocol version is not an integer or out of range\r\n"
        );
        assert_eq!(
            run(&mut s, &["HELLO", "2", "BOGUS"]),
            b"-ERR Syntax error in HELLO option 'BOGUS'\r\n"
        );
        run(
            &mut s,
            &["HELLO", "2", "AUTH", "default", "pw", "SETNAME", "me"],
        );
        assert_eq!(s.name(), Some(&b"me"[..]));
    }

    #[test]
    fn client_names_are_per_connection() {
        let (mut a, mut b) = (Session::new(), Session::new());
        assert_ne!(a.id(), b.id());
        assert_eq!(run(&mut a, &["CLIENT", "GETNAME"]), b"$-1\r\n");
        assert_eq!(run(&mut a, &["client", "setname", "worker-1"]), b"+OK\r\n");
        assert_eq!(run(&mut a, &["CLIENT", "GETNAME"]), b"$8\r\nworker-1\r\n");
        assert_eq!(run(&mut b, &["CLIENT", "GETNAME"]), b"$-1\r\n");
        assert_eq!(
            run(&mut a, &["CLIENT", "SETNAME", "has space"]),
            b"-ERR Client names cannot contain spaces, newlines or special characters.\r\n"
        );
        assert_eq!(run(&mut a, &["CLIENT", "SETNAME", ""]), b"+OK\r\n");
        assert_eq!(run(&mut a, &["CLIENT", "GETNAME"]), b"$-1\r\n");
        assert_eq!(
            run(&mut a, &["CLIENT", "ID"]),
            format!(":{}\r\n", a.id()).as_bytes()
        );
        assert_eq!(
            run(&mut a, &["CLIENT", "SETINFO", "LIB-NAME", "redis-rs"]),
            b"+OK\r\n"
        );
        assert_eq!(
            run(&mut a, &["CLIENT", "KILL", "x"]),
            b"-ERR unknown subcommand 'KILL'. Try CLIENT HELP.\r\n"
        );
        assert_eq!(
            run(&mut a, &["CLIENT", "SETNAME"]),
            b"-ERR wrong number of arguments for 'client|setname' command\r\n"
        );
    }

    #[test]
    fn readonly_and_readwrite_switch_replica_reads() {
        let mut s = Session::new();
        assert!(!s.readonly(), "a connection starts without replica reads");
        assert_eq!(run(&mut s, &["readonly"]), b"+OK\r\n");
        assert!(s.readonly());
        assert_eq!(run(&mut s, &["READWRITE"]), b"+OK\r\n");
        assert!(!s.readonly());
        assert_eq!(
            run(&mut s, &["READONLY", "x"]),
            b"-ERR wrong number of arguments for 'readonly' command\r\n"
        );
        assert!(!s.readonly(), "a refused READONLY changes nothing");
    }

    #[test]
    fn select_and_echo() {
        let mut s = Session::new();
        assert_eq!(run(&mut s, &["SELECT", "0"]), b"+OK\r\n");
        assert_eq!(
            run(&mut s, &["SELECT", "1"]),
            b"-ERR DB index is out of range\r\n"
        );
        assert_eq!(
            run(&mut s, &["SELECT", "x"]),
            b"-ERR value is not an integer or out of range\r\n"
        );
        assert_eq!(
            run(&mut s, &["SELECT"]),
            b"-ERR wrong number of arguments for 'select' command\r\n"
        );
        assert_eq!(run(&mut s, &["ECHO", "hi"]), b"$2\r\nhi\r\n");
    }

    #[test]
    fn command_describes_the_table() {
        let mut s = Session::new();
        assert_eq!(
            run(&mut s, &["COMMAND", "COUNT"]),
            format!(":{}\r\n", COMMANDS.len()).as_bytes()
        );
        assert_eq!(
            run(&mut s, &["COMMAND", "INFO", "get", "nosuch"]),
            b"*2\r\n*10\r\n$3\r\nget\r\n:2\r\n*2\r\n+readonly\r\n+fast\r\n:1\r\n:1\r\n:1\r\n\
              *0\r\n*0\r\n*0\r\n*0\r\n*-1\r\n"
        );
        let all = run(&mut s, &["COMMAND"]);
        assert!(all.starts_with(format!("*{}\r\n*10\r\n", COMMANDS.len()).as_bytes()));
        assert_eq!(
            run(&mut s, &["COMMAND", "DOCS"]),
            b"-ERR unknown subcommand 'DOCS'. Try COMMAND HELP.\r\n"
        );
        // Every data command in the table is one the encoder knows, with
        // the arity the table claims.
        for c in COMMANDS {
            let mut out = BytesMut::new();
            let args: Vec<Vec<u8>> = std::iter::once(c.name.as_bytes().to_vec())
                .chain((1..c.arity.unsigned_abs()).map(|_| b"1".to_vec()))
                .collect();
            if let Err(CommandError::Unknown { .. }) =
                crate::command::encode_command(&args, &mut out)
            {
                let as_refs: Vec<&[u8]> = args.iter().map(|a| &a[..]).collect();
                let mut session = Session::new();
                assert!(
                    execute(&as_refs, &mut session).is_some()
                        || ["ping", "quit", "info"].contains(&c.name),
                    "{} is in the table but nothing answers it",
                    c.name
                );
            }
        }
    }
}
