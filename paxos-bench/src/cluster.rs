//! Starts and stops a local paxos-kv cluster as separate processes (through
//! paxos-kv's own [`LocalCluster`], which the demo and the fault tests use
//! too), finds its stable leader and reads the leader's latency breakdown.

use anyhow::Context;
use paxos_kv::client::{info_field, Client};
use paxos_kv::config::{NvmBackend, StorageKind, Tuning};
use paxos_kv::procs::LocalCluster;
use paxos_kv::resp::Frame;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A running cluster. Dropping it stops every process it started.
pub struct Cluster {
    procs: LocalCluster,
    _tempdir: Option<tempfile::TempDir>,
    /// Where the nodes keep configs, logs and data.
    pub dir: PathBuf,
}

/// Parses a `--nvm-backend` name.
pub fn nvm_backend(name: &str) -> anyhow::Result<NvmBackend> {
    match name {
        "auto" => Ok(NvmBackend::Auto),
        "msync" => Ok(NvmBackend::Msync),
        "emulated-pm" => Ok(NvmBackend::EmulatedPm),
        other => anyhow::bail!("unknown nvm backend `{other}`: use auto, msync or emulated-pm"),
    }
}

/// Parses a `--storage` name.
pub fn storage_kind(name: &str) -> anyhow::Result<StorageKind> {
    match name {
        "file" => Ok(StorageKind::File),
        "nvm" => Ok(StorageKind::Nvm),
        "memory" => Ok(StorageKind::Memory),
        other => anyhow::bail!("unknown storage `{other}`: use file, nvm or memory"),
    }
}

impl Cluster {
    /// Writes configs and certificates and starts one `paxos-kv node`
    /// process per replica, with the per-stage latency timing on if asked.
    pub fn start(
        kv_bin: &Path,
        replicas: usize,
        storage: &str,
        data_dir: Option<&Path>,
        stage_timing: bool,
        tuning: &Tuning,
    ) -> anyhow::Result<Cluster> {
        let kind = storage_kind(storage)?;
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
        // The nodes inherit this process's environment. Stage timing reads
        // the clock and locks a histogram several times per request, so it
        // is on only when the breakdown is wanted.
        std::env::set_var(
            "PAXOS_KV_STAGE_TIMING",
            if stage_timing { "1" } else { "0" },
        );
        let procs = LocalCluster::start(kv_bin, &dir, replicas, kind, tuning)
            .context("starting paxos-kv nodes")?;
        Ok(Cluster {
            procs,
            _tempdir: tempdir,
            dir,
        })
    }

    /// The pid of each node process (index = node index), found by the
    /// config path on its command line; `None` for a node not found.
    pub fn node_pids(&self) -> Vec<Option<String>> {
        (0..self.procs.len())
            .map(|i| crate::cpu::pid_of_config(&self.dir.join(format!("node{}.toml", i + 1))))
            .collect()
    }

    /// The node processes, to kill, restart or query one of them.
    pub fn procs(&self) -> &LocalCluster {
        &self.procs
    }

    /// The node processes, mutably (kill -9, restart).
    pub fn procs_mut(&mut self) -> &mut LocalCluster {
        &mut self.procs
    }

    /// The index of the node serving clients at `addr`.
    pub fn index_of(&self, addr: SocketAddr) -> Option<usize> {
        self.procs.index_of(addr)
    }

    /// Polls every node's INFO until all of them name the same leader, with
    /// the same ballot, for several polls in a row: a leader found in the
    /// first election race at start-up may still be deposed a moment later.
    pub async fn wait_for_leader(&self, timeout: Duration) -> anyhow::Result<SocketAddr> {
        const STABLE_POLLS: usize = 5;
        let deadline = Instant::now() + timeout;
        let mut last: Option<(usize, String)> = None;
        let mut stable = 0;
        while Instant::now() < deadline {
            let mut leaders = Vec::new();
            let mut agreed = true;
            let mut ballot = String::new();
            let mut leader_id = None;
            for i in 0..self.procs.len() {
                let Some(info) = self.procs.info(i, Duration::from_millis(500)).await else {
                    agreed = false;
                    continue;
                };
                if info_field(&info, "role") == Some("leader") {
                    leaders.push(i);
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
                if let (true, Some((i, _))) = (stable >= STABLE_POLLS, &last) {
                    return Ok(self.procs.client_addr(*i));
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

/// Sends `INFO <section>` to `addr` and returns the text.
pub async fn info(addr: SocketAddr, section: &str) -> anyhow::Result<String> {
    let mut c = Client::connect(addr, Duration::from_secs(2)).await?;
    match c.cmd(&[b"INFO", section.as_bytes()]).await? {
        Frame::Bulk(Some(b)) => Ok(String::from_utf8_lossy(&b).into_owned()),
        Frame::Error(e) => anyhow::bail!("INFO {section}: {}", String::from_utf8_lossy(&e)),
        other => anyhow::bail!("INFO {section}: unexpected reply {other:?}"),
    }
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
    fn parses_stage_lines() {
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
        assert!(
            parse_stages("stage_x:p50=1,p99=2\n").is_empty(),
            "incomplete lines are skipped"
        );
    }

    #[test]
    fn storage_names_map_to_kinds() {
        assert_eq!(storage_kind("file").unwrap(), StorageKind::File);
        assert_eq!(storage_kind("nvm").unwrap(), StorageKind::Nvm);
        assert_eq!(storage_kind("memory").unwrap(), StorageKind::Memory);
        assert!(storage_kind("tape").is_err());
        for b in [NvmBackend::Auto, NvmBackend::Msync, NvmBackend::EmulatedPm] {
            assert_eq!(nvm_backend(b.name()).unwrap(), b);
        }
        assert!(nvm_backend("pmem").is_err());
    }
}
