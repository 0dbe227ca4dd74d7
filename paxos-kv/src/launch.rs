//! Putting a node together from its configuration: storage, checkpoint,
//! transport, replica loop and client server; and writing cluster configs.

use crate::config::{Member, NodeConfig, StorageKind, TlsPaths, Tuning};
use crate::kv::KvStore;
use crate::memstore::MemoryStorage;
use crate::node::{self, DriverParts, DurableReloader};
use crate::server::{self, ServerConfig};
use anyhow::Context;
use paxos_core::batch::BatchLimits;
use paxos_core::{DurableState, ReplicaId, Slot};
use paxos_log::ReplicaStorage;
use paxos_net::{NodeIdentity, QuicConfig, QuicTransport, Transport};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

/// An opened storage backend: the trait object, what it recovered, a
/// way to read its durable state again later (after a checkpoint install),
/// and its I/O counters for the metrics endpoint (file log only).
pub type OpenedStorage = (
    Arc<dyn ReplicaStorage>,
    DurableState,
    node::DurableReloader,
    Option<crate::metrics::LogStatsSource>,
);

/// Opens the configured storage and returns it with what it recovered.
pub fn open_storage(config: &NodeConfig) -> anyhow::Result<OpenedStorage> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let on_corruption = match config.recovery.on_corruption {
        crate::config::CorruptionMode::Repair => paxos_log::CorruptionPolicy::Salvage,
        crate::config::CorruptionMode::Refuse => paxos_log::CorruptionPolicy::Refuse,
    };
    Ok(match config.storage {
        StorageKind::File => {
            let dir = config.data_dir.join("log");
            let options = paxos_log::LogOptions {
                min_sync_interval: std::time::Duration::from_micros(
                    config.tuning.log_sync_interval_us,
                ),
                on_corruption,
                preallocate_segments: config.tuning.log_preallocate,
                ..paxos_log::LogOptions::default()
            };
            let (log, state) = paxos_log::FileLog::open(&dir, options)
                .with_context(|| format!("opening file log {}", dir.display()))?;
            let log = Arc::new(log);
            let reload_from = Arc::clone(&log);
            let reload: DurableReloader = Arc::new(move || {
                reload_from.sync_queued()?;
                Ok(reload_from.state())
            });
            let stats_from = Arc::clone(&log);
            let stats: crate::metrics::LogStatsSource = Arc::new(move || stats_from.stats());
            (log, state, reload, Some(stats))
        }
        StorageKind::Nvm => {
            let path = config.data_dir.join("nvm.region");
            let options = paxos_nvm::NvmOptions {
                // Validated: a size is known for storage = "nvm".
                region_bytes: config.tuning.nvm_region_size_mb().unwrap_or(0) << 20,
                backend: match config.tuning.nvm_backend {
                    crate::config::NvmBackend::Auto => paxos_nvm::Backend::Auto,
                    crate::config::NvmBackend::Msync => paxos_nvm::Backend::MsyncFile,
                    crate::config::NvmBackend::EmulatedPm => paxos_nvm::Backend::EmulatedPm,
                },
                on_corruption,
                ..paxos_nvm::NvmOptions::default()
            };
            let (log, state) = paxos_nvm::NvmStorage::open(&path, options)
                .with_context(|| format!("opening NVM region {}", path.display()))?;
            let log = Arc::new(log);
            let reload_from = Arc::clone(&log);
            let reload: DurableReloader = Arc::new(move || {
                reload_from.commit_pending()?;
                Ok(reload_from.state())
            });
            (log, state, reload, None)
        }
        StorageKind::Memory => {
            tracing::warn!("storage = \"memory\": NOTHING IS DURABLE; for benchmarks only");
            let store = Arc::new(MemoryStorage::new());
            let reload_from = Arc::clone(&store);
            (
                store,
                DurableState::default(),
                Arc::new(move || Ok(reload_from.state())),
                None,
            )
        }
    })
}

/// Reports what storage found damaged and decides whether the node must
/// repair before it votes (paxos-core's invariant 11).
fn storage_damage(config: &NodeConfig, storage: &dyn ReplicaStorage) -> anyhow::Result<bool> {
    let damage = storage.recovery_damage();
    for d in &damage {
        tracing::error!(damage = %d, "storage is damaged; the longest valid prefix was kept and the rest set aside");
    }
    let lost = damage.iter().any(|d| d.may_have_lost_acknowledged);
    if !lost {
        return Ok(false);
    }
    if config.recovery.unsafe_skip_repair {
        tracing::error!(
            "recovery.unsafe_skip_repair is set: starting as if nothing was lost. This replica may have forgotten promises and votes; chosen values may be lost or changed. Remove the setting once it runs"
        );
        storage
            .clear_damage()
            .context("clearing the damage record")?;
        return Ok(false);
    }
    tracing::warn!(
        "this replica lost data it may have acknowledged: it repairs from its peers (every voter must answer) before it votes again; INFO and the log show the progress. If no repair is possible (for example, a majority of the replicas is damaged), see [recovery] unsafe_skip_repair"
    );
    Ok(true)
}

/// Runs a node until Ctrl-C / SIGTERM or a fatal error.
pub async fn run_node(config: NodeConfig) -> anyhow::Result<()> {
    let id = config.replica_id();
    let (storage, durable, reload_durable, log_stats) = open_storage(&config)?;
    let damaged = storage_damage(&config, storage.as_ref())?;
    // A memory log forgets everything on restart, so a checkpoint would
    // only describe a state the log no longer agrees with: none for it.
    let checkpoints = if config.storage == StorageKind::Memory {
        None
    } else {
        let dir = config.data_dir.join("checkpoints");
        Some(
            paxos_node::storage::open_checkpoints(&dir)
                .with_context(|| format!("opening checkpoints in {}", dir.display()))?,
        )
    };
    let mut sm = KvStore::new();
    let restored = match &checkpoints {
        Some(store) => paxos_node::storage::restore_newest(store, &mut sm)
            .context("restoring the newest checkpoint")?,
        None => None,
    };
    if let Some(r) = &restored {
        for skipped in &r.skipped {
            tracing::error!(error = %skipped, "corrupt checkpoint skipped; an older one is used");
        }
        tracing::info!(slot = %r.meta.last_applied, path = %r.path.display(), keys = sm.len(), "loaded checkpoint");
    }
    tracing::info!(
        %id,
        checkpoint = %restored.as_ref().map_or(Slot::ZERO, |r| r.meta.last_applied),
        commit_index = %durable.commit_index,
        accepted = durable.accepted.len(),
        "recovered"
    );
    let identity = NodeIdentity::load(id, &config.tls.cert, &config.tls.key, &config.tls.ca)
        .context("loading TLS identity")?;
    let peers: BTreeMap<ReplicaId, SocketAddr> = config
        .members
        .iter()
        .filter(|m| m.id != config.id)
        .map(|m| (ReplicaId(m.id), m.peer_addr))
        .collect();
    let mut quic = QuicConfig::new(identity, peers.clone());
    // A restarted peer should be reachable again quickly: short reconnect
    // backoff, and dead connections noticed within ~2 s.
    quic.reconnect_max = std::time::Duration::from_millis(500);
    quic.idle_timeout = std::time::Duration::from_secs(2);
    let max_message = quic.max_message_size;
    let (transport, inbound) = QuicTransport::bind(quic, config.peer_addr)
        .with_context(|| format!("binding QUIC on {}", config.peer_addr))?;
    let transport = Arc::new(transport);
    // The peer set follows membership changes (members added at run time).
    let peer_directory: Arc<dyn crate::membership::PeerDirectory> = Arc::new(
        crate::membership::QuicPeers::new(Arc::clone(&transport), peers.clone()),
    );
    let addresses = paxos_node::directory::AddressConfig {
        configured: config
            .members
            .iter()
            .map(|m| {
                (
                    ReplicaId(m.id),
                    paxos_node::MemberAddrs {
                        peer: m.peer_addr,
                        client: m.client_addr,
                    },
                )
            })
            .collect(),
        joining: config.me().learner,
    };
    let transport: Arc<dyn Transport> = transport;

    let t = &config.tuning;
    // The bootstrap membership; the node replaces it with the one its
    // restored checkpoint's directory records, if any.
    let mut core = paxos_core::Config::new(id, config.initial_membership());
    core.pipeline_window = t.pipeline_window;
    core.batch_limits = BatchLimits {
        max_requests: t.max_batch_requests,
        max_bytes: t.max_batch_bytes,
    };
    core.heartbeat_interval_us = t.heartbeat_ms * 1000;
    core.election_timeout_min_us = t.election_timeout_min_ms * 1000;
    core.election_timeout_max_us = t.election_timeout_max_ms * 1000;
    core.max_message_bytes = core.max_message_bytes.min(max_message);
    core.max_accept_ahead = core.max_accept_ahead.max(t.pipeline_window);
    core.retain_bytes = usize::try_from(t.log_memory_mb << 20).unwrap_or(usize::MAX);
    let seed = seed_from_clock(id);
    let mut node_config = paxos_node::NodeConfig::new(core);
    node_config.checkpoint_every = t.checkpoint_every_decrees;
    node_config.checkpoint_every_bytes = t.checkpoint_every_mb << 20;
    node_config.compact_retain = t.compact_retain_decrees;
    node_config.read_mode = match t.read_mode {
        crate::config::ReadMode::ReadIndex => paxos_node::ReadMode::ReadIndex,
        crate::config::ReadMode::Lease => paxos_node::ReadMode::Lease {
            // Validated to at most 100000.
            max_drift_ppm: u32::try_from(t.max_clock_drift_ppm).unwrap_or(u32::MAX),
        },
    };
    node_config.addresses = addresses;
    node_config.seed = seed;
    node_config.boot_nonce = seed.rotate_left(17) ^ u64::from(std::process::id());
    let parts = DriverParts {
        node: node_config,
        recovery: paxos_node::Recovery {
            durable,
            state_machine: sm,
            checkpoint: restored,
            damaged,
        },
        storage,
        transport,
        inbound,
        checkpoints,
        submit_queue: t.submit_queue,
        stages: Arc::new(crate::stages::StageRecorder::from_env()),
        reload_durable: Some(reload_durable),
    };
    let (replica, mut event_loop) = node::start(parts, Some(peer_directory))?;
    let listener = tokio::net::TcpListener::bind(config.client_addr)
        .await
        .with_context(|| format!("binding client address {}", config.client_addr))?;
    let clients = server::ClientLimits::from_tuning(t);
    let max_clients = match crate::fdlimit::raise_nofile_limit() {
        Ok(nofile) => {
            let fit =
                crate::fdlimit::clients_that_fit(t.max_clients, clients.admin_reserved, nofile);
            if fit < t.max_clients {
                tracing::warn!(
                    max_clients = t.max_clients,
                    open_file_limit = nofile,
                    serving = fit,
                    "the open-file limit (ulimit -n, hard) leaves room for fewer clients than max_clients: raise it, or lower max_clients"
                );
            }
            fit
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-file limit; max_clients may not be reachable");
            t.max_clients
        }
    };
    let server_config = ServerConfig {
        limits: crate::resp::RespLimits::default(),
        max_clients,
        clients,
        max_pipelined: t.max_pipelined_per_client,
        members: config
            .members
            .iter()
            .map(|m| (ReplicaId(m.id), m.client_addr.to_string()))
            .collect(),
    };
    let client_registry = Arc::new(crate::client_registry::ClientRegistry::new(
        server_config.clients.max_reply_bytes,
    ));
    // The metrics endpoint reads what the loop and the server publish; it
    // ends with the node (aborted on drop). A replica that cannot bind it
    // still serves: its availability matters more than its monitoring, and
    // the error says why the scrapes fail.
    let metrics_listener = match config.metrics_addr {
        Some(addr) => match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => Some((addr, listener)),
            Err(e) => {
                tracing::error!(%id, metrics = %addr, error = %e, "cannot bind the metrics address; serving without metrics");
                None
            }
        },
        None => None,
    };
    let _metrics = match metrics_listener {
        Some((addr, listener)) => {
            let sources = crate::metrics::Sources {
                replica: replica.clone(),
                clients: Arc::clone(&client_registry),
                max_clients,
                log_stats,
            };
            tracing::info!(%id, metrics = %addr, "serving metrics");
            Some(crate::metrics::AbortOnDrop(tokio::spawn(
                crate::metrics::serve(listener, sources),
            )))
        }
        None => None,
    };
    tracing::info!(%id, client = %config.client_addr, peer = %config.peer_addr, "serving");
    let mut server = tokio::spawn(server::serve_with_registry(
        listener,
        replica.clone(),
        server_config,
        client_registry,
    ));
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = &mut event_loop => {
            server.abort();
            return match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => {
                    // In the log too, not only on stderr at exit: this is
                    // why clients were disconnected.
                    tracing::error!(error = format!("{e:#}"), "replica loop failed; the node stops");
                    Err(e.context("replica loop failed"))
                }
                Err(e) => Err(anyhow::anyhow!("replica loop panicked: {e}")),
            };
        }
        r = &mut server => {
            return Err(anyhow::anyhow!("client server stopped: {r:?}"));
        }
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; shutting down"),
        _ = sigterm.recv() => tracing::info!("terminated; shutting down"),
    }
    replica.shutdown().await;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), event_loop).await;
    server.abort();
    Ok(())
}

fn seed_from_clock(id: ReplicaId) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos
        ^ (u64::from(std::process::id()) << 32)
        ^ u64::from(id.0).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Addresses for one node of a generated cluster.
#[derive(Clone, Copy, Debug)]
pub struct NodeAddrs {
    /// QUIC (UDP).
    pub peer: SocketAddr,
    /// RESP (TCP).
    pub client: SocketAddr,
    /// Prometheus endpoint (TCP), if any.
    pub metrics: Option<SocketAddr>,
}

/// Writes certificates into `dir/certs` and one `node<i>.toml` per node
/// into `dir` (data in `dir/node<i>`). Returns the config paths.
pub fn init_cluster(
    dir: &Path,
    addrs: &[NodeAddrs],
    storage: StorageKind,
    tuning: &Tuning,
) -> anyhow::Result<Vec<std::path::PathBuf>> {
    anyhow::ensure!(!addrs.is_empty(), "a cluster needs at least one node");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let ids: Vec<ReplicaId> = (1..=addrs.len() as u32).map(ReplicaId).collect();
    let cert_dir = dir.join("certs");
    let files = paxos_net::generate_cluster(&cert_dir, &ids).context("generating certificates")?;
    let members: Vec<Member> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| Member {
            id: i as u32 + 1,
            peer_addr: a.peer,
            client_addr: a.client,
            learner: false,
        })
        .collect();
    let mut paths = Vec::new();
    for (i, node_files) in files.nodes.iter().enumerate() {
        let id = i as u32 + 1;
        let config = NodeConfig {
            id,
            storage,
            data_dir: dir.join(format!("node{id}")),
            peer_addr: addrs[i].peer,
            client_addr: addrs[i].client,
            metrics_addr: addrs[i].metrics,
            tls: TlsPaths {
                cert: node_files.cert.clone(),
                key: node_files.key.clone(),
                ca: files.ca_cert.clone(),
            },
            members: members.clone(),
            tuning: tuning.clone(),
            recovery: crate::config::RecoveryConfig::default(),
        };
        let path = dir.join(format!("node{id}.toml"));
        std::fs::write(&path, config.to_toml())
            .with_context(|| format!("writing {}", path.display()))?;
        // Check what we wrote parses back, so `init` never leaves a bad file.
        NodeConfig::load(&path)?;
        paths.push(path);
    }
    Ok(paths)
}

/// Loopback addresses with ports that were free a moment ago.
pub fn free_loopback_addrs(n: usize) -> anyhow::Result<Vec<NodeAddrs>> {
    let mut out = Vec::with_capacity(n);
    // Hold every socket until all are chosen so no port is picked twice.
    let mut held = Vec::new();
    for _ in 0..n {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0")?;
        let tcp = std::net::TcpListener::bind("127.0.0.1:0")?;
        let metrics = std::net::TcpListener::bind("127.0.0.1:0")?;
        out.push(NodeAddrs {
            peer: udp.local_addr()?,
            client: tcp.local_addr()?,
            metrics: Some(metrics.local_addr()?),
        });
        held.push((udp, tcp, metrics));
    }
    Ok(out)
}

/// Fixed loopback addresses: peers on `base+i`, clients on `base+100+i`.
pub fn fixed_loopback_addrs(n: usize, base: u16) -> anyhow::Result<Vec<NodeAddrs>> {
    (1..=n)
        .map(|i| {
            let peer = base.checked_add(i as u16).context("port out of range")?;
            let client = base
                .checked_add(100 + i as u16)
                .context("port out of range")?;
            Ok(NodeAddrs {
                peer: SocketAddr::from(([127, 0, 0, 1], peer)),
                client: SocketAddr::from(([127, 0, 0, 1], client)),
                metrics: None,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_writes_loadable_configs_and_certs() {
        let dir = tempfile::tempdir().unwrap();
        let addrs = free_loopback_addrs(3).unwrap();
        let paths =
            init_cluster(dir.path(), &addrs, StorageKind::File, &Tuning::default()).unwrap();
        assert_eq!(paths.len(), 3);
        for (i, p) in paths.iter().enumerate() {
            let c = NodeConfig::load(p).unwrap();
            assert_eq!(c.id, i as u32 + 1);
            assert_eq!(c.members.len(), 3);
            assert_eq!(c.metrics_addr, addrs[i].metrics);
            NodeIdentity::load(c.replica_id(), &c.tls.cert, &c.tls.key, &c.tls.ca).unwrap();
        }
    }
}
