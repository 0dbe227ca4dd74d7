//! Redis compatibility through real clients: a three-node cluster of
//! `paxos-kv node` processes driven by the `redis` crate (a client library
//! that parses replies its own way), and by redis-cli and redis-benchmark
//! when they are installed (`apt-get install redis-tools`; CI installs
//! them; without them that part is skipped with a printed reason).

use paxos_kv::config::{StorageKind, Tuning};
use paxos_kv::procs::LocalCluster;
use redis::{Commands, ErrorKind, RedisResult, Value};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// A cluster and a connection to its leader (followers answer `MOVED`).
fn start() -> (LocalCluster, tempfile::TempDir, SocketAddr) {
    let dir = tempfile::tempdir().unwrap();
    let bin = Path::new(env!("CARGO_BIN_EXE_paxos-kv"));
    let cluster =
        LocalCluster::start(bin, dir.path(), 3, StorageKind::Memory, &Tuning::default()).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let leader = runtime
        .block_on(cluster.wait_for_leader(Duration::from_secs(20)))
        .unwrap();
    let addr = cluster.client_addr(leader);
    (cluster, dir, addr)
}

fn connect(addr: SocketAddr) -> redis::Connection {
    let client = redis::Client::open(format!("redis://{addr}/")).unwrap();
    let con = client
        .get_connection_with_timeout(Duration::from_secs(5))
        .unwrap();
    con.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    con
}

fn strings_and_expiry(con: &mut redis::Connection) {
    let _: () = redis::cmd("FLUSHALL").query(con).unwrap();
    let _: () = con.set("greeting", "hello").unwrap();
    assert_eq!(con.get::<_, String>("greeting").unwrap(), "hello");
    assert_eq!(con.append::<_, _, i64>("greeting", " world").unwrap(), 11);
    assert_eq!(con.strlen::<_, i64>("greeting").unwrap(), 11);
    assert!(con.exists::<_, bool>("greeting").unwrap());
    assert_eq!(
        con.exists::<_, i64>(&["greeting", "nope", "greeting"])
            .unwrap(),
        2
    );

    // SET options as redis-rs builds them, and the old-style commands.
    assert!(con.set_nx::<_, _, bool>("once", "1").unwrap());
    assert!(!con.set_nx::<_, _, bool>("once", "2").unwrap());
    let old: Option<String> = redis::cmd("SET")
        .arg("once")
        .arg("3")
        .arg("XX")
        .arg("GET")
        .query(con)
        .unwrap();
    assert_eq!(old.as_deref(), Some("1"));
    let refused: Option<String> = redis::cmd("SET")
        .arg("absent")
        .arg("v")
        .arg("XX")
        .query(con)
        .unwrap();
    assert_eq!(refused, None);
    assert_eq!(con.getset::<_, _, String>("once", "4").unwrap(), "3");
    assert_eq!(con.get_del::<_, String>("once").unwrap(), "4");
    assert_eq!(con.get::<_, Option<String>>("once").unwrap(), None);
    assert_eq!(con.incr::<_, _, i64>("counter", 5).unwrap(), 5);
    assert_eq!(con.decr::<_, _, i64>("counter", 7).unwrap(), -2);

    // TTLs: the leader's clock, in decrees.
    assert_eq!(con.ttl::<_, i64>("nope").unwrap(), -2);
    assert_eq!(con.ttl::<_, i64>("greeting").unwrap(), -1);
    assert!(con.expire::<_, bool>("greeting", 100).unwrap());
    let ttl: i64 = con.ttl("greeting").unwrap();
    assert!((99..=100).contains(&ttl), "ttl {ttl}");
    let pttl: i64 = con.pttl("greeting").unwrap();
    assert!((90_000..=100_000).contains(&pttl), "pttl {pttl}");
    assert!(con.persist::<_, bool>("greeting").unwrap());
    assert_eq!(con.ttl::<_, i64>("greeting").unwrap(), -1);
    let _: () = con.pset_ex("short", "lived", 200).unwrap();
    assert_eq!(
        con.get::<_, Option<String>>("short").unwrap().as_deref(),
        Some("lived")
    );
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(
        con.get::<_, Option<String>>("short").unwrap(),
        None,
        "expired"
    );
    assert_eq!(con.ttl::<_, i64>("short").unwrap(), -2);
    assert!(con.pexpire::<_, bool>("counter", 0).unwrap());
    assert!(
        !con.exists::<_, bool>("counter").unwrap(),
        "EXPIRE 0 deletes"
    );

    let dbsize: i64 = redis::cmd("DBSIZE").query(con).unwrap();
    assert_eq!(dbsize, 1, "only greeting is left (short was reclaimed)");
}

fn scan_and_keys(con: &mut redis::Connection) {
    let _: () = redis::cmd("FLUSHALL").query(con).unwrap();
    let mut pipe = redis::pipe();
    for i in 0..500 {
        pipe.set(format!("user:{i}"), i).ignore();
    }
    for i in 0..50 {
        pipe.set(format!("item:{i}"), i).ignore();
    }
    let _: () = pipe.query(con).unwrap();
    let mut users: Vec<String> = con
        .scan_match::<_, String>("user:*")
        .unwrap()
        .collect::<RedisResult<_>>()
        .unwrap();
    users.sort();
    users.dedup();
    assert_eq!(users.len(), 500);
    let all: Vec<String> = con
        .scan::<String>()
        .unwrap()
        .collect::<RedisResult<_>>()
        .unwrap();
    assert_eq!(all.len(), 550, "a full SCAN returns each key once");
    let mut items: Vec<String> = con.keys("item:[1-2]?").unwrap();
    items.sort();
    assert_eq!(items.len(), 20);
    assert_eq!(items[0], "item:10");
    let dbsize: i64 = redis::cmd("DBSIZE").query(con).unwrap();
    assert_eq!(dbsize, 550);
}

fn connection_commands(con: &mut redis::Connection) {
    let _: () = redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg("compat-test")
        .query(con)
        .unwrap();
    let name: Option<String> = redis::cmd("CLIENT").arg("GETNAME").query(con).unwrap();
    assert_eq!(name.as_deref(), Some("compat-test"));
    let config: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("save")
        .query(con)
        .unwrap();
    assert_eq!(config, ["save", ""]);
    let config: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("appendonly")
        .query(con)
        .unwrap();
    assert_eq!(config, ["appendonly", "no"]);
    let hello: Value = redis::cmd("HELLO").arg(2).query(con).unwrap();
    let Value::Array(fields) = hello else {
        panic!("HELLO 2 is a flat array in RESP2: {hello:?}")
    };
    assert_eq!(fields.len(), 14);
    let err = redis::cmd("HELLO").arg(3).query::<Value>(con).unwrap_err();
    assert_eq!(err.code(), Some("NOPROTO"), "{err}");
    let _: () = redis::cmd("SELECT").arg(0).query(con).unwrap();
    let count: i64 = redis::cmd("COMMAND").arg("COUNT").query(con).unwrap();
    assert!(count > 25, "{count}");

    // Errors in Redis's words.
    let err: RedisResult<()> = redis::cmd("NOSUCHCMD").arg("a").arg("b").query(con);
    let err = err.unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::Server(redis::ServerErrorKind::ResponseError),
        "{err}"
    );
    assert_eq!(
        err.detail(),
        Some("unknown command 'NOSUCHCMD', with args beginning with: 'a' 'b' "),
        "{err}"
    );
    let err = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .arg("NX")
        .arg("XX")
        .query::<()>(con)
        .unwrap_err();
    assert_eq!(err.detail(), Some("syntax error"), "{err}");
    let err = redis::cmd("GET").query::<()>(con).unwrap_err();
    assert_eq!(
        err.detail(),
        Some("wrong number of arguments for 'get' command"),
        "{err}"
    );
}

/// `redis-cli` and `redis-benchmark` against the leader, if installed.
fn redis_tools(addr: SocketAddr) {
    let port = addr.port().to_string();
    let cli = |args: &[&str]| -> Option<String> {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port])
            .args(args)
            .output()
            .ok()?;
        assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
        Some(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let Some(ok) = cli(&["SET", "cli-key", "v", "EX", "100"]) else {
        println!(
            "SKIPPED the redis-cli part: redis-cli is not installed (apt-get install redis-tools)"
        );
        return;
    };
    assert_eq!(ok.trim(), "OK");
    assert_eq!(cli(&["GET", "cli-key"]).unwrap().trim(), "v");
    let ttl: i64 = cli(&["TTL", "cli-key"]).unwrap().trim().parse().unwrap();
    assert!((99..=100).contains(&ttl));
    assert_eq!(cli(&["EXISTS", "cli-key", "nope"]).unwrap().trim(), "1");
    assert_eq!(
        cli(&["FOO", "bar"]).unwrap().trim(),
        "ERR unknown command 'FOO', with args beginning with: 'bar'"
    );
    // redis-cli's own SCAN loop, to the end of the iteration.
    assert_eq!(
        cli(&["--scan", "--pattern", "cli-*"]).unwrap().trim(),
        "cli-key"
    );
    assert_eq!(
        cli(&["--scan", "--pattern", "user:*"])
            .unwrap()
            .lines()
            .count(),
        500
    );
    // Without CONFIG GET, redis-benchmark warns that it could not fetch
    // the server's CONFIG; it must not any more.
    match Command::new("redis-benchmark")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            "set,get",
            "-n",
            "200",
            "-q",
        ])
        .output()
    {
        Err(e) => println!("SKIPPED the redis-benchmark part: {e}"),
        Ok(out) => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.status.success(), "{text}");
            assert!(!text.contains("WARNING"), "redis-benchmark warned: {text}");
            assert!(text.contains("SET:") && text.contains("GET:"), "{text}");
        }
    }
}

fn info(con: &mut redis::Connection) -> String {
    redis::cmd("INFO").query(con).unwrap()
}

fn info_number(con: &mut redis::Connection, field: &str) -> u64 {
    let text = info(con);
    paxos_kv::client::info_number(&text, field)
        .unwrap_or_else(|| panic!("INFO has no numeric {field}: {text}"))
}

/// Reads skip the log at the leader; `READONLY` lets a follower serve them
/// from its own state (Redis Cluster's replica reads), never older than
/// what the connection already saw; `INFO` shows how fresh each replica is.
fn reads_off_the_log_and_on_replicas(cluster: &LocalCluster, leader_addr: SocketAddr) {
    let mut leader = connect(leader_addr);
    let _: () = leader.set("fr", "1").unwrap();
    let proposed = info_number(&mut leader, "proposed_requests");
    for _ in 0..50 {
        assert_eq!(leader.get::<_, String>("fr").unwrap(), "1");
        assert_eq!(leader.exists::<_, i64>("fr").unwrap(), 1);
    }
    assert_eq!(
        info_number(&mut leader, "proposed_requests"),
        proposed,
        "reads at the leader were proposed as decrees"
    );
    assert!(info_number(&mut leader, "reads_served") >= 100);
    let text = info(&mut leader);
    assert_eq!(
        paxos_kv::client::info_field(&text, "read_mode"),
        Some("read_index")
    );

    let leader_index = cluster.index_of(leader_addr).unwrap();
    let follower_index = (leader_index + 1) % cluster.len();
    let follower_addr = cluster.client_addr(follower_index);
    let mut follower = connect(follower_addr);
    // A follower redirects once it knows the leader.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while info_number(&mut follower, "leader_id") == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the follower learns no leader"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let moved = follower.get::<_, String>("fr").unwrap_err();
    assert_eq!(moved.code(), Some("MOVED"), "{moved}");
    let _: () = redis::cmd("READONLY").query(&mut follower).unwrap();
    // The follower has applied the write within a heartbeat or two; the
    // connection observed nothing yet, so until then an older answer is
    // allowed.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match follower.get::<_, Option<String>>("fr").unwrap().as_deref() {
            Some("1") => break,
            None if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            other => panic!("replica read of fr: {other:?}"),
        }
    }
    let before = info_number(&mut leader, "proposed_requests");
    assert_eq!(follower.strlen::<_, i64>("fr").unwrap(), 1);
    let _: () = leader.set("fr", "2").unwrap();
    // Reads on this connection never go back to before "1", and reach "2".
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match follower.get::<_, String>("fr").unwrap().as_str() {
            "2" => break,
            "1" if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            other => panic!("replica read went back or stalled: {other:?}"),
        }
    }
    assert_eq!(
        info_number(&mut leader, "proposed_requests"),
        before + 1,
        "replica reads reached the log (only the SET should have)"
    );
    let err = follower.set::<_, _, ()>("fr", "3").unwrap_err();
    assert_eq!(
        err.code(),
        Some("MOVED"),
        "writes still go to the leader: {err}"
    );
    let _: () = redis::cmd("READWRITE").query(&mut follower).unwrap();
    let err = follower.get::<_, String>("fr").unwrap_err();
    assert_eq!(
        err.code(),
        Some("MOVED"),
        "READWRITE ends replica reads: {err}"
    );

    // INFO `# Replicas`: each node's own applied slot, exact, and what it
    // heard of the others; the leader hears every replica's applied slot
    // (on its heartbeat acks, and INFO's snapshot is refreshed on the
    // node's timer). Every replica, seen from the leader and from itself,
    // reaches the slot of the last write: the leader applied it before it
    // answered, so its applied slot now is at least that.
    let last_write = info_number(&mut leader, "applied_index");
    assert!(last_write >= 2, "two writes were applied: {last_write}");
    let applied_of = |text: &str, replica: usize| -> (String, i64) {
        let id = format!("id={},", replica + 1);
        let count: usize = paxos_kv::client::info_number(text, "replicas")
            .unwrap_or_else(|| panic!("no replicas count: {text}"))
            as usize;
        let line = (0..count)
            .filter_map(|n| paxos_kv::client::info_field(text, &format!("replica{n}")))
            .find(|line| line.starts_with(&id))
            .unwrap_or_else(|| panic!("no line for replica {}: {text}", replica + 1));
        let applied = line
            .split(',')
            .find_map(|f| f.strip_prefix("applied="))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no applied slot: {line}"));
        (line.to_string(), applied)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let from_leader = info(&mut leader);
        let from_follower = info(&mut follower);
        let mut behind = None;
        for i in 0..cluster.len() {
            let (line, applied) = applied_of(&from_leader, i);
            assert!(
                line.contains(&format!("addr={}", cluster.client_addr(i))),
                "{line}"
            );
            assert_eq!(line.contains("self=1"), i == leader_index, "{line}");
            if applied < last_write as i64 {
                behind = Some(format!(
                    "the leader sees replica {} at slot {last_write}: {line}",
                    i + 1
                ));
            }
        }
        let (own, applied) = applied_of(&from_follower, follower_index);
        assert!(own.contains("self=1,role=follower"), "{own}");
        assert!(own.contains(&format!("addr={follower_addr}")), "{own}");
        if applied < last_write as i64 {
            behind = Some(format!("the follower applied slot {last_write}: {own}"));
        }
        match behind {
            None => break,
            Some(why) => assert!(std::time::Instant::now() < deadline, "{why}"),
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn real_clients_see_redis_semantics() {
    let (cluster, _dir, addr) = start();
    let mut con = connect(addr);
    strings_and_expiry(&mut con);
    scan_and_keys(&mut con);
    connection_commands(&mut con);
    redis_tools(addr);
    reads_off_the_log_and_on_replicas(&cluster, addr);
}
