//! The `paxos-kv` command: run a node, write a cluster's configs, or run
//! the self-contained demo.

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use paxos_kv::config::{NodeConfig, StorageKind, Tuning};
use paxos_kv::launch;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "paxos-kv",
    version,
    about = "Replicated key-value store over multi-Paxos (RESP2 clients, QUIC peers)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum StorageArg {
    File,
    Nvm,
    /// Not durable; benchmarks only.
    Memory,
}

impl From<StorageArg> for StorageKind {
    fn from(s: StorageArg) -> Self {
        match s {
            StorageArg::File => StorageKind::File,
            StorageArg::Nvm => StorageKind::Nvm,
            StorageArg::Memory => StorageKind::Memory,
        }
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one replica.
    Node {
        /// The node's TOML configuration.
        #[arg(long)]
        config: PathBuf,
    },
    /// Write certificates and one config per node for a loopback cluster.
    Init {
        /// Number of replicas.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Directory for configs, certificates and data.
        #[arg(long)]
        dir: PathBuf,
        /// Log backend.
        #[arg(long, value_enum, default_value = "file")]
        storage: StorageArg,
        /// Peers listen on base+i (UDP), clients on base+100+i (TCP). 0 picks free ports.
        #[arg(long, default_value_t = 0)]
        base_port: u16,
    },
    /// Start a local 3-replica cluster, load it, kill the leader, verify no acknowledged write was lost.
    Demo {
        /// Seconds of load before the leader is killed.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Concurrent closed-loop clients.
        #[arg(long, default_value_t = 32)]
        clients: usize,
        /// Log backend.
        #[arg(long, value_enum, default_value = "file")]
        storage: StorageArg,
        /// Keep the data directory (printed) instead of deleting it.
        #[arg(long)]
        keep: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Node { config } => {
            init_tracing("info");
            let config = NodeConfig::load(&config)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the tokio runtime")?;
            runtime.block_on(launch::run_node(config))
        }
        Command::Init {
            nodes,
            dir,
            storage,
            base_port,
        } => {
            anyhow::ensure!((1..=9).contains(&nodes), "--nodes must be between 1 and 9");
            let addrs = if base_port == 0 {
                launch::free_loopback_addrs(nodes)?
            } else {
                launch::fixed_loopback_addrs(nodes, base_port)?
            };
            let paths = launch::init_cluster(&dir, &addrs, storage.into(), &Tuning::default())?;
            for p in paths {
                println!("{}", p.display());
            }
            Ok(())
        }
        Command::Demo {
            seconds,
            clients,
            storage,
            keep,
        } => {
            init_tracing("warn");
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the tokio runtime")?;
            let options = paxos_kv::demo::DemoOptions {
                seconds,
                clients,
                storage: storage.into(),
                keep,
            };
            runtime.block_on(paxos_kv::demo::run(options))
        }
    }
}

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
