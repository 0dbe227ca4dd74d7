//! `redis-benchmark` against the cluster's leader: a client nobody here
//! wrote. Runs it with `-q`, reads each test's requests per second and p50
//! from its output, and measures the CPU it used (polled from `/proc` while
//! it runs, so the figure covers everything but its last poll interval).

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

/// What to run.
#[derive(Clone, Debug)]
pub struct RedisBenchSpec {
    /// The leader's client address.
    pub target: SocketAddr,
    /// `-t`: the tests, e.g. `set,get`.
    pub tests: String,
    /// `-c`: connections.
    pub clients: usize,
    /// `-P`: pipelined requests per connection.
    pub pipeline: usize,
    /// `-n`: requests per test.
    pub requests: u64,
    /// `-d`: value size of SET.
    pub value_bytes: usize,
    /// `-r`: keys drawn at random from this many.
    pub keyspace: u64,
}

/// One test's result.
#[derive(Clone, Debug, PartialEq)]
pub struct TestResult {
    /// `SET`, `GET`, ...
    pub name: String,
    /// Requests per second.
    pub ops_per_sec: f64,
    /// Median latency in milliseconds, if printed.
    pub p50_ms: Option<f64>,
}

/// The command line for `spec`.
pub fn args(spec: &RedisBenchSpec) -> Vec<String> {
    [
        "-h".to_string(),
        spec.target.ip().to_string(),
        "-p".into(),
        spec.target.port().to_string(),
        "-t".into(),
        spec.tests.clone(),
        "-c".into(),
        spec.clients.to_string(),
        "-P".into(),
        spec.pipeline.to_string(),
        "-n".into(),
        spec.requests.to_string(),
        "-d".into(),
        spec.value_bytes.to_string(),
        "-r".into(),
        spec.keyspace.to_string(),
        "-q".into(),
    ]
    .into()
}

/// Runs redis-benchmark; returns its results and the CPU ticks it used.
pub fn run(spec: &RedisBenchSpec) -> anyhow::Result<(Vec<TestResult>, u64)> {
    let mut child = Command::new("redis-benchmark")
        .args(args(spec))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            anyhow::anyhow!("cannot run redis-benchmark (apt-get install redis-tools): {e}")
        })?;
    let pid = child.id().to_string();
    let mut ticks = 0;
    while child.try_wait()?.is_none() {
        if let Some(t) = crate::cpu::process_ticks(&pid) {
            ticks = t;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    anyhow::ensure!(out.status.success(), "redis-benchmark failed: {text}");
    let results = parse(&text);
    anyhow::ensure!(
        !results.is_empty(),
        "no results in redis-benchmark's output: {text}"
    );
    Ok((results, ticks))
}

/// Parses `-q` output: `GET: 123456.79 requests per second, p50=0.231 msec`
/// (one line per test; progress lines end in `\r` and are skipped).
pub fn parse(text: &str) -> Vec<TestResult> {
    text.split(['\n', '\r'])
        .filter_map(|line| {
            let (name, rest) = line.trim().split_once(": ")?;
            let (rate, rest) = rest.split_once(" requests per second")?;
            let ops_per_sec = rate.trim().parse().ok()?;
            let p50_ms = rest
                .split_once("p50=")
                .and_then(|(_, p)| p.split_whitespace().next()?.parse().ok());
            Some(TestResult {
                name: name.to_string(),
                ops_per_sec,
                p50_ms,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_quiet_output_and_skips_progress() {
        let text = "SET: rps=12.0 (overall: 1.0) avg_msec=1\r\
                    SET: 175438.59 requests per second, p50=2.167 msec\n\
                    GET: 401606.44 requests per second, p50=0.839 msec\n";
        assert_eq!(
            parse(text),
            [
                TestResult {
                    name: "SET".into(),
                    ops_per_sec: 175438.59,
                    p50_ms: Some(2.167)
                },
                TestResult {
                    name: "GET".into(),
                    ops_per_sec: 401606.44,
                    p50_ms: Some(0.839)
                }
            ]
        );
        assert!(parse("garbage\nmore: text\n").is_empty());
    }
}
