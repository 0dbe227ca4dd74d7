//! Pipelined SET writers over the key space `key:0`..`key:<n-1>`: the scale
//! benchmark's bulk loader and its steady-phase writers.
//!
//! A writer holds one connection and keeps up to `depth` SETs in flight.
//! The loader writes each key once (connection `c` of `C` takes the keys
//! `c, c + C, ...`); a steady writer picks keys at random until told to
//! stop and records every write as a [`Sample`] (send time and latency on
//! the run's clock). An error reply is counted, never taken for a write.
//! After a leader change a writer follows `MOVED <addr>` once its pipeline
//! has drained, and backs off 10 ms after an error without one (`CLUSTERDOWN`
//! during an election), so that it measures the new leader instead of
//! spinning on errors.

use crate::loadgen::{encode_command, moved_to, parse_reply, Reply};
use crate::timeline::Sample;
use bytes::BytesMut;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What one writer did.
#[derive(Debug, Default)]
pub struct WriterReport {
    /// Successful SETs.
    pub ok: u64,
    /// Error replies.
    pub errors: u64,
    /// The first error reply or connection error, for diagnosis.
    pub first_error: Option<String>,
    /// Every successful write (steady writers only).
    pub samples: Vec<Sample>,
}

impl WriterReport {
    /// Adds another writer's report to this one (the first error seen
    /// stays first).
    pub fn absorb(&mut self, other: WriterReport) {
        self.ok += other.ok;
        self.errors += other.errors;
        self.first_error = self.first_error.take().or(other.first_error);
        self.samples.extend(other.samples);
    }
}

/// Where the next key comes from.
#[derive(Clone, Debug)]
pub enum Keys {
    /// Every `stride`-th key from `next` below `end`, once each.
    Stride {
        /// The next key.
        next: u64,
        /// Step between keys.
        stride: u64,
        /// One past the last key.
        end: u64,
    },
    /// Uniformly random keys below `n` (xorshift64), until stopped.
    Random {
        /// Key space size.
        n: u64,
        /// Generator state (never 0).
        state: u64,
    },
}

impl Keys {
    /// The next key, or `None` when a stride is done.
    pub fn next_key(&mut self) -> Option<u64> {
        match self {
            Keys::Stride { next, stride, end } => {
                let k = *next;
                (k < *end).then(|| {
                    *next = k.saturating_add(*stride);
                    k
                })
            }
            Keys::Random { n, state } => {
                let mut x = *state;
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *state = x;
                Some(x % (*n).max(1))
            }
        }
    }
}

/// Writes `keys` with `value_size`-byte values to `addr`, `depth` in
/// flight, until the keys run out or `stop` is set. With `origin`, every
/// write is recorded as a [`Sample`] relative to it.
pub async fn write_keys(
    addr: SocketAddr,
    mut keys: Keys,
    depth: usize,
    value_size: usize,
    stop: Arc<AtomicBool>,
    origin: Option<Instant>,
) -> WriterReport {
    let mut report = WriterReport::default();
    if let Err(e) = run(
        addr,
        &mut keys,
        depth.max(1),
        value_size,
        &stop,
        origin,
        &mut report,
    )
    .await
    {
        report.first_error.get_or_insert(format!("{e:#}"));
    }
    report
}

async fn run(
    addr: SocketAddr,
    keys: &mut Keys,
    depth: usize,
    value_size: usize,
    stop: &AtomicBool,
    origin: Option<Instant>,
    report: &mut WriterReport,
) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let value = vec![b'v'; value_size];
    let mut out = BytesMut::with_capacity(depth * (value_size + 64));
    let mut inbuf = BytesMut::with_capacity(64 * 1024);
    // Send time and key of every SET in flight; keys whose SET failed are
    // sent again before new ones, so that a leader change during the load
    // leaves no key out.
    let mut sent_at: VecDeque<(Instant, u64)> = VecDeque::with_capacity(depth);
    let mut retry: Vec<u64> = Vec::new();
    let mut key = Vec::with_capacity(32);
    let mut digits = [0u8; 20];
    let mut exhausted = false;
    // Where the last error pointed (a new leader), and whether errors came
    // back: both wait until every reply in flight is in.
    let mut redirect: Option<SocketAddr> = None;
    let mut back_off = false;
    loop {
        if sent_at.is_empty() {
            if let Some(to) = redirect.take() {
                stream = TcpStream::connect(to).await?;
                stream.set_nodelay(true)?;
                inbuf.clear();
            } else if std::mem::take(&mut back_off) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let hold = redirect.is_some() || back_off;
        out.clear();
        let now = Instant::now();
        while !hold && sent_at.len() < depth && !stop.load(Ordering::Relaxed) {
            let next = retry
                .pop()
                .or_else(|| (!exhausted).then(|| keys.next_key()).flatten());
            let Some(k) = next else {
                exhausted = true;
                break;
            };
            key.clear();
            key.extend_from_slice(b"key:");
            key.extend_from_slice(paxos_kv::resp::decimal(k, &mut digits));
            encode_command(&mut out, &[b"SET", &key, &value]);
            sent_at.push_back((now, k));
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
        }
        if sent_at.is_empty() {
            return Ok(());
        }
        if stream.read_buf(&mut inbuf).await? == 0 {
            anyhow::bail!("{addr} closed the connection");
        }
        let done = Instant::now();
        while let Some(reply) = parse_reply(&mut inbuf).map_err(anyhow::Error::msg)? {
            let (sent, k) = sent_at
                .pop_front()
                .ok_or_else(|| anyhow::anyhow!("a reply to nothing sent"))?;
            match reply {
                Reply::Ok => {
                    report.ok += 1;
                    if let Some(origin) = origin {
                        report.samples.push(Sample {
                            sent_us: sent.saturating_duration_since(origin).as_micros() as u64,
                            latency_us: done.duration_since(sent).as_micros() as u64,
                        });
                    }
                }
                Reply::Error(e) => {
                    report.errors += 1;
                    retry.push(k);
                    match moved_to(&e) {
                        Some(to) => redirect = Some(to),
                        None => back_off = true,
                    }
                    report.first_error.get_or_insert(e);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn absorbing_reports_sums_counts_and_keeps_the_first_error() {
        let report = |ok, errors, first_error: Option<&str>, sent_us| WriterReport {
            ok,
            errors,
            first_error: first_error.map(str::to_string),
            samples: vec![Sample {
                sent_us,
                latency_us: 1,
            }],
        };
        let mut all = WriterReport::default();
        all.absorb(report(3, 0, None, 1));
        all.absorb(report(2, 1, Some("first"), 2));
        all.absorb(report(1, 2, Some("second"), 3));
        assert_eq!((all.ok, all.errors), (6, 3));
        assert_eq!(all.first_error.as_deref(), Some("first"));
        assert_eq!(
            all.samples.iter().map(|s| s.sent_us).collect::<Vec<_>>(),
            [1, 2, 3]
        );
    }

    /// A RESP server on loopback answering each command with `reply(n)`,
    /// `n` counting the commands it got so far (from 0).
    async fn fake_server(reply: impl Fn(u64) -> Vec<u8> + Send + Sync + 'static) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let reply = Arc::new(reply);
        let seen = Arc::new(AtomicU64::new(0));
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let (reply, seen) = (Arc::clone(&reply), Arc::clone(&seen));
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    while let Ok(n @ 1..) = s.read(&mut buf).await {
                        // One reply per command: count the array headers.
                        let mut out = Vec::new();
                        for _ in buf[..n].iter().filter(|&&b| b == b'*') {
                            out.extend(reply(seen.fetch_add(1, Ordering::Relaxed)));
                        }
                        if s.write_all(&out).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    fn every_key_below(end: u64) -> Keys {
        Keys::Stride {
            next: 0,
            stride: 1,
            end,
        }
    }

    #[tokio::test]
    async fn a_redirect_is_followed_and_failed_keys_are_sent_again() {
        let leader = fake_server(|_| b"+OK\r\n".to_vec()).await;
        let moved = format!("-MOVED 0 {leader}\r\n").into_bytes();
        let deposed = fake_server(move |_| moved.clone()).await;
        let stop = Arc::new(AtomicBool::new(false));
        let r = write_keys(deposed, every_key_below(20), 4, 10, stop, None).await;
        assert_eq!(
            r.first_error.as_deref(),
            Some(format!("MOVED 0 {leader}").as_str())
        );
        assert_eq!(r.ok, 20, "every key written once it reached the leader");
        assert!(
            (1..=4).contains(&r.errors),
            "only the first pipeline failed: {}",
            r.errors
        );
    }

    #[tokio::test]
    async fn an_error_without_a_redirect_backs_off_and_retries() {
        let addr = fake_server(|n| {
            if n == 0 {
                b"-CLUSTERDOWN no leader elected yet\r\n".to_vec()
            } else {
                b"+OK\r\n".to_vec()
            }
        })
        .await;
        let stop = Arc::new(AtomicBool::new(false));
        let r = write_keys(addr, every_key_below(10), 1, 10, stop, Some(Instant::now())).await;
        assert_eq!((r.ok, r.errors), (10, 1));
        assert_eq!(r.samples.len(), 10, "one sample per successful write");
    }

    #[test]
    fn strides_cover_every_key_once() {
        let mut seen = Vec::new();
        for c in 0..3 {
            let mut k = Keys::Stride {
                next: c,
                stride: 3,
                end: 10,
            };
            while let Some(key) = k.next_key() {
                seen.push(key);
            }
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn random_keys_stay_in_range_and_vary() {
        let mut k = Keys::Random { n: 7, state: 42 };
        let keys: Vec<u64> = (0..1000).filter_map(|_| k.next_key()).collect();
        assert_eq!(keys.len(), 1000, "random keys never run out");
        assert!(keys.iter().all(|&x| x < 7));
        for v in 0..7 {
            assert!(keys.contains(&v), "key {v} never drawn");
        }
    }
}
