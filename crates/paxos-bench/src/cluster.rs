//! Starts and stops a local paxos-kv cluster as separate processes, finds its
//! leader and reads the leader's latency breakdown.

use crate::loadgen::encode_command;
use anyhow::Context;
use bytes::BytesMut;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A running cluster. Dropping it kills every process it started.
pub struct Cluster {
    children: Vec<Child>,
    /// Client (RESP) addresses, by node index.
    pub client_addrs: Vec<SocketAddr>,
    _tempdir: Option<tempfile::TempDir>,
    /// Where the nodes keep configs, logs and data.
    pub dir: PathBuf,
}

impl Cluster {
    /// Writes configs with `paxos-kv init` and starts one `paxos-kv node`
    /// process per replica.
    pub fn start(
        kv_bin: &Path,
        replicas: usize,
        storage: &str,
        data_dir: Option<&Path>,
    ) -> anyhow::Result<Cluster> {
        let (tempdir, dir) = match data_dir {
            Some(d) => {
                std::fs::create_dir_all(d)?;
                (None, d.to_path_buf())
            }
            None => {
                let t = tempfile::Builder::new().prefix("paxos-bench-").tempdir()?;
                let p = t.path().to_path_buf();
                (Some(t), p)
            }
        };
        let status = Command::new(kv_bin)
            .args([
                "init",
                "--nodes",
                &replicas.to_string(),
                "--storage",
                storage,
                "--dir",
            ])
            .arg(&dir)
            .status()
            .context("running paxos-kv init")?;
        anyhow::ensure!(status.success(), "paxos-kv init failed ({status})");
        let mut cluster = Cluster {
            children: Vec::new(),
            client_addrs: Vec::new(),
            _tempdir: tempdir,
            dir: dir.clone(),
        };
        for i in 1..=replicas {
            let config = dir.join(format!("node{i}.toml"));
            let text = std::fs::read_to_string(&config)
                .with_context(|| format!("reading {}", config.display()))?;
            cluster
                .client_addrs
                .push(client_addr_of(&text).with_context(|| format!("{}", config.display()))?);
            let log = std::fs::File::create(dir.join(format!("node{i}.log")))?;
            let child = Command::new(kv_bin)
                .args(["node", "--config"])
                .arg(&config)
                .env("PAXOS_KV_STAGE_TIMING", "1")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .context("starting paxos-kv node")?;
            cluster.children.push(child);
        }
        Ok(cluster)
    }

    /// Polls every node's INFO until all of them name the same leader, with
    /// the same ballot, for several polls in a row: a leader found in the
    /// first election race at start-up may still be deposed a moment later.
    pub async fn wait_for_leader(&self, timeout: Duration) -> anyhow::Result<SocketAddr> {
        const STABLE_POLLS: usize = 5;
        let deadline = Instant::now() + timeout;
        let mut last: Option<(SocketAddr, String)> = None;
        let mut stable = 0;
        while Instant::now() < deadline {
            let mut leaders = Vec::new();
            let mut agreed = true;
            let mut ballot = String::new();
            let mut leader_id = None;
            for addr in &self.client_addrs {
                let Ok(info) = info(*addr, "").await else {
                    agreed = false;
                    continue;
                };
                if info_field(&info, "role") == Some("leader") {
                    leaders.push(*addr);
                    ballot = info_field(&info, "ballot_round")
                        .unwrap_or_default()
                        .to_string();
                }
                let named = info_field(&info, "leader_id").map(str::to_string);
                if leader_id.is_none() {
                    leader_id = named;
                } else if leader_id != named {
                    agreed = false;
                }
            }
            let now = match leaders.as_slice() {
                [one] if agreed => Some((*one, ballot)),
                _ => None,
            };
            if now.is_some() && now == last {
                stable += 1;
                if stable >= STABLE_POLLS {
                    return Ok(last.map(|(a, _)| a).unwrap_or(self.client_addrs[0]));
                }
            } else {
                stable = 0;
                last = now;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        anyhow::bail!(
            "no stable leader within {timeout:?}; node logs are in {}",
            self.dir.display()
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Reads `client_addr = "host:port"` from a node config.
fn client_addr_of(config: &str) -> anyhow::Result<SocketAddr> {
    let v: toml::Value = config.parse()?;
    let s = v
        .get("client_addr")
        .and_then(|a| a.as_str())
        .context("config has no client_addr")?;
    Ok(s.parse()?)
}

/// Sends `INFO [section]` and returns the bulk reply text.
pub async fn info(addr: SocketAddr, section: &str) -> anyhow::Result<String> {
    let mut s = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await??;
    let mut out = BytesMut::new();
    if section.is_empty() {
        encode_command(&mut out, &[b"INFO"]);
    } else {
        encode_command(&mut out, &[b"INFO", section.as_bytes()]);
    }
    s.write_all(&out).await?;
    let mut buf = Vec::new();
    let read = async {
        loop {
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                anyhow::bail!("connection closed before INFO reply");
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(text) = bulk_text(&buf)? {
                return Ok(text);
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(2), read).await?
}

fn bulk_text(buf: &[u8]) -> anyhow::Result<Option<String>> {
    let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    match buf.first() {
        Some(b'$') => {
            let len: usize = std::str::from_utf8(&buf[1..eol])?.parse()?;
            if buf.len() < eol + 2 + len {
                return Ok(None);
            }
            Ok(Some(
                String::from_utf8_lossy(&buf[eol + 2..eol + 2 + len]).into_owned(),
            ))
        }
        Some(b'-') => anyhow::bail!("{}", String::from_utf8_lossy(&buf[1..eol])),
        _ => anyhow::bail!("unexpected INFO reply"),
    }
}

/// The value of `name:value` in INFO text.
pub fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines().find_map(|l| {
        l.strip_prefix(name)
            .and_then(|r| r.strip_prefix(':'))
            .map(str::trim)
    })
}

/// One stage of a write's path through the leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    /// Stage name, e.g. `queued->batched`.
    pub name: String,
    /// Median, microseconds.
    pub p50_us: u64,
    /// 99th percentile, microseconds.
    pub p99_us: u64,
    /// 99.9th percentile, microseconds.
    pub p999_us: u64,
    /// Samples.
    pub count: u64,
}

/// Reads `INFO latency` from the leader: one line per stage,
/// `stage_<name>:p50=..,p99=..,p999=..,count=..`.
pub async fn latency_breakdown(leader: SocketAddr) -> anyhow::Result<Vec<Stage>> {
    let text = info(leader, "latency").await?;
    Ok(parse_stages(&text))
}

/// Parses the stage lines of `INFO latency`.
pub fn parse_stages(text: &str) -> Vec<Stage> {
    text.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("stage_")?.split_once(':')?;
            let get = |k: &str| -> Option<u64> {
                rest.split(',').find_map(|kv| {
                    kv.trim()
                        .strip_prefix(k)
                        .and_then(|v| v.strip_prefix('='))?
                        .parse()
                        .ok()
                })
            };
            Some(Stage {
                name: name.to_string(),
                p50_us: get("p50")?,
                p99_us: get("p99")?,
                p999_us: get("p999")?,
                count: get("count")?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_info_fields_and_stages() {
        let info = "# Replication\r\nrole:leader\r\ncommit_index:42\r\n";
        assert_eq!(info_field(info, "role"), Some("leader"));
        assert_eq!(info_field(info, "commit_index"), Some("42"));
        assert_eq!(info_field(info, "missing"), None);
        let stages = parse_stages(
            "# Latency\nstage_received->queued:p50=3,p99=10,p999=20,count=5\nother:1\n",
        );
        assert_eq!(
            stages,
            vec![Stage {
                name: "received->queued".into(),
                p50_us: 3,
                p99_us: 10,
                p999_us: 20,
                count: 5
            }]
        );
    }

    #[test]
    fn reads_bulk_and_error_replies() {
        assert_eq!(bulk_text(b"$5\r\nhello\r\n").unwrap(), Some("hello".into()));
        assert_eq!(bulk_text(b"$5\r\nhel").unwrap(), None);
        assert!(bulk_text(b"-ERR nope\r\n").is_err());
    }

    #[test]
    fn reads_client_addr_from_config() {
        assert_eq!(
            client_addr_of("id = 1\nclient_addr = \"127.0.0.1:7001\"\n").unwrap(),
            "127.0.0.1:7001".parse().unwrap()
        );
        assert!(client_addr_of("id = 1\n").is_err());
    }
}
