//! A local cluster of `paxos-kv node` child processes, for the demo and the
//! multi-process fault tests. Every process it starts is stopped when it is
//! dropped (SIGCONT, then SIGKILL, then reaped), on success and on error.

use crate::client::{info_field, info_number, Client};
use crate::config::{StorageKind, Tuning};
use crate::launch::{self, NodeAddrs};
use crate::resp::Frame;
use anyhow::Context;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A set of node processes on loopback.
#[derive(Debug)]
pub struct LocalCluster {
    bin: PathBuf,
    dir: PathBuf,
    configs: Vec<PathBuf>,
    addrs: Vec<NodeAddrs>,
    children: Vec<Option<Child>>,
    stopped: Vec<bool>,
    /// Environment variables every node process gets.
    env: Vec<(String, String)>,
}

impl LocalCluster {
    /// Writes configs and certificates into `dir` and starts `n` nodes of
    /// the binary `bin`.
    pub fn start(
        bin: &Path,
        dir: &Path,
        n: usize,
        storage: StorageKind,
        tuning: &Tuning,
    ) -> anyhow::Result<LocalCluster> {
        let mut cluster = LocalCluster::new(bin, dir, n, storage, tuning)?;
        cluster.spawn_all()?;
        Ok(cluster)
    }

    /// [`LocalCluster::start`] without starting the nodes.
    pub fn new(
        bin: &Path,
        dir: &Path,
        n: usize,
        storage: StorageKind,
        tuning: &Tuning,
    ) -> anyhow::Result<LocalCluster> {
        let addrs = launch::free_loopback_addrs(n)?;
        let configs = launch::init_cluster(dir, &addrs, storage, tuning)?;
        Ok(LocalCluster {
            bin: bin.to_owned(),
            dir: dir.to_owned(),
            configs,
            addrs,
            children: (0..n).map(|_| None).collect(),
            stopped: vec![false; n],
            env: Vec::new(),
        })
    }

    /// Starts every node that is not running.
    pub fn spawn_all(&mut self) -> anyhow::Result<()> {
        for i in 0..self.len() {
            if self.children[i].is_none() {
                self.spawn(i)?;
            }
        }
        Ok(())
    }

    /// Gives every node started from now on the environment variable `key`.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.push((key.to_owned(), value.to_owned()));
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    /// Whether the cluster has no nodes.
    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    /// Node `i`'s client address (0-based index; replica id is i + 1).
    pub fn client_addr(&self, i: usize) -> SocketAddr {
        self.addrs[i].client
    }

    /// Node `i`'s metrics address (`GET /metrics`), if it serves one.
    pub fn metrics_addr(&self, i: usize) -> Option<SocketAddr> {
        self.addrs[i].metrics
    }

    /// Index of the node with this client address.
    pub fn index_of(&self, addr: SocketAddr) -> Option<usize> {
        self.addrs.iter().position(|a| a.client == addr)
    }

    /// Whether node `i` is running (started and not killed).
    pub fn is_running(&self, i: usize) -> bool {
        self.children[i].is_some()
    }

    /// Starts node `i` (again), appending its stderr to `node<i>.log`.
    pub fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        anyhow::ensure!(self.children[i].is_none(), "node {} already running", i + 1);
        let log_path = self.dir.join(format!("node{}.log", i + 1));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let child = Command::new(&self.bin)
            .arg("node")
            .arg("--config")
            .arg(&self.configs[i])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        self.children[i] = Some(child);
        self.stopped[i] = false;
        Ok(())
    }

    /// Provisions replica `id` for this cluster (config and a certificate
    /// of the cluster CA, see [`crate::admin::provision_node`]) without
    /// starting it, and returns its index (`id - 1`). A new id must be the
    /// next one; an existing one must be stopped, and gets its data wiped
    /// and its addresses kept (a removed replica rejoining).
    pub fn provision(&mut self, id: u32) -> anyhow::Result<usize> {
        let i = (id as usize)
            .checked_sub(1)
            .context("replica ids start at 1")?;
        anyhow::ensure!(
            i <= self.len(),
            "provision replica {} first",
            self.len() + 1
        );
        if i < self.len() {
            anyhow::ensure!(!self.is_running(i), "stop replica {id} first");
            let data = self.dir.join(format!("node{id}"));
            if data.exists() {
                std::fs::remove_dir_all(&data)
                    .with_context(|| format!("wiping {}", data.display()))?;
            }
        }
        let reuse = self.addrs.get(i).copied();
        let (config, addrs) = crate::admin::provision_node(&self.dir, id, reuse)?;
        if i == self.len() {
            self.configs.push(config);
            self.addrs.push(addrs);
            self.children.push(None);
            self.stopped.push(false);
        } else {
            self.configs[i] = config;
        }
        Ok(i)
    }

    /// Node `i`'s peer (QUIC) address.
    pub fn peer_addr(&self, i: usize) -> SocketAddr {
        self.addrs[i].peer
    }

    /// kill -9 node `i` and reap it.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut child) = self.children[i].take() {
            self.signal(&child, libc::SIGCONT);
            let _ = child.kill();
            let _ = child.wait();
        }
        self.stopped[i] = false;
    }

    /// SIGSTOP node `i` (it freezes: a "slow" or partitioned replica).
    pub fn pause(&mut self, i: usize) {
        if let Some(child) = &self.children[i] {
            self.signal(child, libc::SIGSTOP);
            self.stopped[i] = true;
        }
    }

    /// SIGCONT node `i`.
    pub fn resume(&mut self, i: usize) {
        if let Some(child) = &self.children[i] {
            self.signal(child, libc::SIGCONT);
        }
        self.stopped[i] = false;
    }

    /// Whether node `i` is paused.
    pub fn is_paused(&self, i: usize) -> bool {
        self.stopped[i]
    }

    fn signal(&self, child: &Child, sig: libc::c_int) {
        let Ok(pid) = libc::pid_t::try_from(child.id()) else {
            return;
        };
        // SAFETY: kill(2) has no memory-safety preconditions; the pid is our
        // own un-reaped child, so it cannot have been recycled.
        unsafe {
            libc::kill(pid, sig);
        }
    }

    /// Stops node `i` gracefully (SIGTERM, then SIGKILL after a grace period).
    pub fn terminate(&mut self, i: usize) {
        if let Some(mut child) = self.children[i].take() {
            self.signal(&child, libc::SIGCONT);
            self.signal(&child, libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(3);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
    }

    /// Stops every node.
    pub fn stop_all(&mut self) {
        for i in 0..self.len() {
            self.terminate(i);
        }
    }

    /// Node `i`'s resident set size in bytes (`VmRSS`), if it runs.
    pub fn rss_bytes(&self, i: usize) -> Option<u64> {
        let pid = self.children[i].as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()?;
        Some(kib * 1024)
    }

    /// `INFO` of node `i`, if it answers within `timeout`.
    pub async fn info(&self, i: usize, timeout: Duration) -> Option<String> {
        let mut c = Client::connect(self.client_addr(i), timeout).await.ok()?;
        match c.cmd(&[b"INFO"]).await.ok()? {
            Frame::Bulk(Some(b)) => String::from_utf8(b.to_vec()).ok(),
            _ => None,
        }
    }

    /// Waits until a running node reports `role:leader`; returns its index.
    pub async fn wait_for_leader(&self, timeout: Duration) -> anyhow::Result<usize> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            for i in 0..self.len() {
                if !self.is_running(i) || self.is_paused(i) {
                    continue;
                }
                if let Some(info) = self.info(i, Duration::from_millis(300)).await {
                    if info_field(&info, "role") == Some("leader") {
                        return Ok(i);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!(
            "no leader within {timeout:?}; node logs are in {}",
            self.dir.display()
        )
    }

    /// The lines of every node's log that say who led, what was
    /// checkpointed and what went wrong (leader changes, checkpoints,
    /// warnings and errors), prefixed with the node, for failure messages.
    pub fn events(&self) -> String {
        let mut out = String::new();
        for i in 0..self.len() {
            let path = self.dir.join(format!("node{}.log", i + 1));
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            for line in text.lines().filter(|l| {
                [
                    "primary status changed",
                    "checkpoint durable",
                    "WARN",
                    "ERROR",
                ]
                .iter()
                .any(|p| l.contains(p))
            }) {
                out.push_str(&format!("node{}: {line}\n", i + 1));
            }
        }
        out
    }

    /// A leader that kept its role and ballot for `hold` (a cold start or
    /// a node that connected late may still move leadership at first),
    /// with that ballot's round; gives up after `timeout`.
    pub async fn stable_leader(
        &self,
        hold: Duration,
        timeout: Duration,
    ) -> anyhow::Result<(usize, u64)> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let leader = self
                .wait_for_leader(deadline.saturating_duration_since(Instant::now()))
                .await?;
            let Some(first) = self.info(leader, Duration::from_secs(5)).await else {
                continue;
            };
            tokio::time::sleep(hold).await;
            let Some(then) = self.info(leader, Duration::from_secs(5)).await else {
                continue;
            };
            let held = match (
                info_number(&first, "ballot_round"),
                info_number(&then, "ballot_round"),
            ) {
                (Some(before), Some(after)) => (before == after).then_some(after),
                _ => None,
            };
            if let (Some(round), Some("leader")) = (held, info_field(&then, "role")) {
                return Ok((leader, round));
            }
        }
        anyhow::bail!(
            "no leader held its ballot for {hold:?} within {timeout:?}; node logs are in {}",
            self.dir.display()
        )
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for i in 0..self.len() {
            self.kill9(i);
        }
    }
}

/// A fresh temporary directory named `prefix…`, in `/dev/shm` where there is
/// one (memory: an nvm region there is emulated persistent memory, and the
/// msync backend is cheap on tmpfs), else in the usual temporary directory.
pub fn memory_backed_tempdir(prefix: &str) -> std::io::Result<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    let mut builder = tempfile::Builder::new();
    builder.prefix(prefix);
    if shm.is_dir() {
        builder.tempdir_in(shm)
    } else {
        builder.tempdir()
    }
}
