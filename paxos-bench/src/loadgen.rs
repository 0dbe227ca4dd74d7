//! A closed-loop RESP load generator.
//!
//! Each client holds one TCP connection and keeps `depth` requests in flight
//! (depth 1 is the classic closed loop; more is Redis-style pipelining). A
//! request's latency runs from the moment its bytes are written to the moment
//! its reply is parsed. Every reply is checked: an error reply counts as an
//! error, never as a success.

use bytes::{Buf, BytesMut};
use hdrhistogram::Histogram;
use std::io::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What load to offer.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// Where to send requests (the leader's client address).
    pub target: SocketAddr,
    /// Concurrent connections.
    pub clients: usize,
    /// Requests in flight per connection.
    pub depth: usize,
    /// Value size in bytes for writes.
    pub value_bytes: usize,
    /// Percentage of requests that are writes (SET); the rest are GETs.
    pub write_percent: u8,
    /// How long to run.
    pub duration: Duration,
    /// Distinct keys per client.
    pub keys_per_client: u64,
}

/// What the load generator measured.
#[derive(Debug)]
pub struct LoadReport {
    /// Successful operations.
    pub ops: u64,
    /// Error replies (including redirects) and broken connections.
    pub errors: u64,
    /// The first error text seen, for diagnosis.
    pub first_error: Option<String>,
    /// Wall time of the measurement.
    pub elapsed: Duration,
    /// Latency of successful operations, in microseconds.
    pub latency_us: Histogram<u64>,
}

impl LoadReport {
    /// Operations per second.
    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// A latency quantile in microseconds.
    pub fn quantile_us(&self, q: f64) -> u64 {
        self.latency_us.value_at_quantile(q)
    }
}

/// The reply of one request, as far as the load generator cares.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+...`, `:n`, `$n` bulk or `$-1` nil: success.
    Ok,
    /// `-...`: the error text.
    Error(String),
}

/// Parses one RESP reply from the front of `buf`, consuming it; `None` when
/// more bytes are needed. Arrays are not expected from SET/GET and are an
/// error.
pub fn parse_reply(buf: &mut BytesMut) -> Result<Option<Reply>, String> {
    // The load generator shares the CPU with the cluster it measures, so a
    // reply costs no allocation unless it is an error.
    let Some(line_end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let kind = buf[0];
    let line = || String::from_utf8_lossy(&buf[1..line_end]).into_owned();
    match kind {
        b'+' | b':' => {
            buf.advance(line_end + 2);
            Ok(Some(Reply::Ok))
        }
        b'-' => {
            let text = line();
            buf.advance(line_end + 2);
            Ok(Some(Reply::Error(text)))
        }
        b'$' => {
            let len: i64 = std::str::from_utf8(&buf[1..line_end])
                .ok()
                .and_then(|l| l.parse().ok())
                .ok_or_else(|| format!("bad bulk length {:?}", line()))?;
            if len < 0 {
                buf.advance(line_end + 2);
                return Ok(Some(Reply::Ok));
            }
            let total = line_end + 2 + len as usize + 2;
            if buf.len() < total {
                return Ok(None);
            }
            buf.advance(total);
            Ok(Some(Reply::Ok))
        }
        other => Err(format!("unexpected reply type byte {other:#x}")),
    }
}

/// Appends a RESP command (an array of bulk strings) to `out`.
pub fn encode_command(out: &mut BytesMut, args: &[&[u8]]) {
    paxos_kv::resp::encode_command(args.iter().copied(), out);
}

/// Replaces `key`'s text after `prefix_len` bytes with `n` in decimal. The
/// generator shares the 2 cores with the cluster it measures, so every
/// cycle it spends per request is taken from the nodes: no `fmt` here.
fn set_key_suffix(key: &mut Vec<u8>, prefix_len: usize, n: u64) {
    key.truncate(prefix_len);
    key.extend_from_slice(paxos_kv::resp::decimal(n, &mut [0; 20]));
}

struct ClientResult {
    ops: u64,
    errors: u64,
    first_error: Option<String>,
    hist: Histogram<u64>,
}

/// Runs the load and returns what it measured.
pub async fn run(spec: LoadSpec) -> anyhow::Result<LoadReport> {
    anyhow::ensure!(
        spec.clients > 0 && spec.depth > 0,
        "clients and depth must be positive"
    );
    let start = Instant::now();
    let deadline = start + spec.duration;
    let mut tasks = Vec::with_capacity(spec.clients);
    for c in 0..spec.clients {
        let spec = spec.clone();
        tasks.push(tokio::spawn(async move {
            client(c as u64, spec, deadline).await
        }));
    }
    let mut report = LoadReport {
        ops: 0,
        errors: 0,
        first_error: None,
        elapsed: Duration::ZERO,
        latency_us: new_histogram(),
    };
    for t in tasks {
        let r = t.await??;
        report.ops += r.ops;
        report.errors += r.errors;
        if report.first_error.is_none() {
            report.first_error = r.first_error;
        }
        report.latency_us.add(&r.hist)?;
    }
    report.elapsed = start.elapsed();
    Ok(report)
}

/// A histogram of microseconds from 1 µs to 100 s with 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("static histogram bounds are valid")
}

async fn client(id: u64, spec: LoadSpec, deadline: Instant) -> anyhow::Result<ClientResult> {
    let mut stream = TcpStream::connect(spec.target).await?;
    stream.set_nodelay(true)?;
    // A leader change answers `-MOVED <slot> <addr>`: once every reply of the
    // current pipeline is in, the client reconnects to the new leader.
    let mut redirect: Option<SocketAddr> = None;
    let value = vec![b'v'; spec.value_bytes];
    let mut out = BytesMut::with_capacity(spec.depth * (spec.value_bytes + 64));
    let mut inbuf = BytesMut::with_capacity(64 * 1024);
    let mut sent_at = std::collections::VecDeque::with_capacity(spec.depth);
    let mut res = ClientResult {
        ops: 0,
        errors: 0,
        first_error: None,
        hist: new_histogram(),
    };
    let mut n: u64 = 0;
    let mut key = Vec::with_capacity(32);
    let _ = write!(key, "k{id}:");
    let key_prefix_len = key.len();
    loop {
        // Refill the pipeline up to `depth`, unless time is up.
        if let Some(addr) = redirect.take_if(|_| sent_at.is_empty()) {
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    stream = s;
                    stream.set_nodelay(true)?;
                    inbuf.clear();
                }
                Err(e) => {
                    res.errors += 1;
                    res.first_error
                        .get_or_insert(format!("reconnecting to {addr}: {e}"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        let now = Instant::now();
        if now < deadline && redirect.is_none() {
            while sent_at.len() < spec.depth {
                set_key_suffix(&mut key, key_prefix_len, n % spec.keys_per_client.max(1));
                // A fixed, seed-free mix: request n is a write if its hash bucket is.
                let is_write =
                    (n.wrapping_mul(7919).wrapping_add(id)) % 100 < u64::from(spec.write_percent);
                if is_write {
                    encode_command(&mut out, &[b"SET", &key, &value]);
                } else {
                    encode_command(&mut out, &[b"GET", &key]);
                }
                sent_at.push_back(now);
                n += 1;
            }
            stream.write_all(&out).await?;
            out.clear();
        }
        if sent_at.is_empty() {
            break;
        }
        // Read at least one reply. Replies parsed from one read arrived
        // together, so one clock read times them all.
        let mut progressed = false;
        let mut received_at = Instant::now();
        while !progressed {
            loop {
                match parse_reply(&mut inbuf) {
                    Ok(Some(reply)) => {
                        let Some(t0) = sent_at.pop_front() else {
                            anyhow::bail!("server sent a reply nobody asked for");
                        };
                        progressed = true;
                        match reply {
                            Reply::Ok => {
                                res.ops += 1;
                                let us =
                                    received_at.saturating_duration_since(t0).as_micros().max(1)
                                        as u64;
                                res.hist.saturating_record(us);
                            }
                            Reply::Error(e) => {
                                if let Some(addr) = moved_to(&e) {
                                    redirect = Some(addr);
                                } else if e.starts_with("CLUSTERDOWN") {
                                    // No leader yet: back off instead of spinning.
                                    tokio::time::sleep(Duration::from_millis(20)).await;
                                }
                                res.errors += 1;
                                res.first_error.get_or_insert(e);
                            }
                        }
                    }
                    Ok(None) => break,
                    Err(e) => anyhow::bail!("protocol error from server: {e}"),
                }
            }
            if !progressed {
                let read = stream.read_buf(&mut inbuf).await?;
                if read == 0 {
                    anyhow::bail!("server closed the connection");
                }
                received_at = Instant::now();
            }
        }
    }
    Ok(res)
}

/// The address in a `MOVED <slot> <addr>` (or `MOVED <addr>`) error.
pub fn moved_to(error: &str) -> Option<SocketAddr> {
    let rest = error.strip_prefix("MOVED ")?;
    rest.split_whitespace().last()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_reply_kind_and_waits_for_more() {
        let mut b =
            BytesMut::from(&b"+OK\r\n$3\r\nabc\r\n$-1\r\n:5\r\n-MOVED 1.2.3.4:5\r\n$10\r\nab"[..]);
        assert_eq!(parse_reply(&mut b), Ok(Some(Reply::Ok)));
        assert_eq!(parse_reply(&mut b), Ok(Some(Reply::Ok)));
        assert_eq!(parse_reply(&mut b), Ok(Some(Reply::Ok)));
        assert_eq!(parse_reply(&mut b), Ok(Some(Reply::Ok)));
        assert_eq!(
            parse_reply(&mut b),
            Ok(Some(Reply::Error("MOVED 1.2.3.4:5".into())))
        );
        assert_eq!(parse_reply(&mut b), Ok(None), "incomplete bulk waits");
        assert_eq!(&b[..], b"$10\r\nab", "nothing consumed while incomplete");
        let mut bad = BytesMut::from(&b"*1\r\n"[..]);
        assert!(parse_reply(&mut bad).is_err());
    }

    #[test]
    fn reads_redirect_targets() {
        assert_eq!(
            moved_to("MOVED 0 127.0.0.1:7002"),
            Some("127.0.0.1:7002".parse().unwrap())
        );
        assert_eq!(
            moved_to("MOVED 127.0.0.1:7002"),
            Some("127.0.0.1:7002".parse().unwrap())
        );
        assert_eq!(moved_to("ERR nope"), None);
        assert_eq!(moved_to("MOVED 0 nowhere"), None);
    }

    #[test]
    fn key_suffixes_are_decimal() {
        let mut key = b"k7:".to_vec();
        for (n, want) in [
            (0u64, &b"k7:0"[..]),
            (42, b"k7:42"),
            (999, b"k7:999"),
            (u64::MAX, b"k7:18446744073709551615"),
        ] {
            set_key_suffix(&mut key, 3, n);
            assert_eq!(key, want);
        }
    }

    #[test]
    fn encodes_commands_as_bulk_arrays() {
        let mut out = BytesMut::new();
        encode_command(&mut out, &[b"SET", b"k", b"vv"]);
        assert_eq!(&out[..], b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\nvv\r\n");
    }

    /// A tiny in-test RESP server that answers +OK to every command, to show
    /// the generator keeps `depth` in flight and counts every reply.
    #[tokio::test]
    async fn counts_replies_against_a_local_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    loop {
                        let n = match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        // One reply per command: count the array headers.
                        let cmds = buf[..n].iter().filter(|&&b| b == b'*').count();
                        let reply = b"+OK\r\n".repeat(cmds);
                        if s.write_all(&reply).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let report = run(LoadSpec {
            target: addr,
            clients: 2,
            depth: 4,
            value_bytes: 10,
            write_percent: 100,
            duration: Duration::from_millis(200),
            keys_per_client: 10,
        })
        .await
        .unwrap();
        assert!(report.ops > 0);
        assert_eq!(report.errors, 0);
        assert_eq!(report.latency_us.len(), report.ops);
    }
}
