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
    /// Log line format (logs go to stderr). Text is coloured only when
    /// stderr is a terminal and NO_COLOR is not set.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (for log collectors).
    Json,
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
    /// Write certificates and one config per node for a loopback cluster;
    /// with --add-node, a config and certificate for one new node of the
    /// cluster already in --dir.
    Init {
        /// Number of replicas.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Provision one new replica with this id for the existing cluster in
        /// --dir (certificate signed by its CA; the node starts as a
        /// learner). Then start it and run `paxos-kv add-node`.
        #[arg(long)]
        add_node: Option<u32>,
        /// With --add-node: its QUIC (UDP) address (default: a free loopback port).
        #[arg(long, requires = "add_node")]
        peer_addr: Option<std::net::SocketAddr>,
        /// With --add-node: its RESP (TCP) address (default: a free loopback port).
        #[arg(long, requires = "add_node")]
        client_addr: Option<std::net::SocketAddr>,
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
    /// Make a running replica a voter: registers its addresses through the
    /// log, adds it as a learner, and returns once it caught up and votes.
    AddNode {
        /// Client address of any cluster node (redirects are followed).
        #[arg(long)]
        to: std::net::SocketAddr,
        /// The new replica's id.
        id: u32,
        /// Its QUIC (UDP) address.
        peer_addr: std::net::SocketAddr,
        /// Its RESP (TCP) address.
        client_addr: std::net::SocketAddr,
    },
    /// Remove a replica (the leader too: it hands over first).
    RemoveNode {
        /// Client address of any cluster node (redirects are followed).
        #[arg(long)]
        to: std::net::SocketAddr,
        /// The replica to remove.
        id: u32,
    },
    /// Make the leader hand over to a voter (the most caught-up one unless named).
    TransferLeader {
        /// Client address of any cluster node (redirects are followed).
        #[arg(long)]
        to: std::net::SocketAddr,
        /// The successor's replica id.
        id: Option<u32>,
    },
    /// Make the leader give up the membership change in progress.
    AbandonChange {
        /// Client address of any cluster node (redirects are followed).
        #[arg(long)]
        to: std::net::SocketAddr,
    },
    /// Print the membership and the members' addresses.
    Members {
        /// Client address of any cluster node.
        #[arg(long)]
        to: std::net::SocketAddr,
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
    if let Err(e) = paxos_kv::build_guard::check() {
        // The message is the whole story: no backtrace.
        eprintln!("error: {e}");
        std::process::exit(2);
    }
    match cli.command {
        Command::Node { config } => {
            let config = NodeConfig::load(&config)?;
            if config.tuning.transparent_huge_pages {
                // Before any thread exists: this may replace the process.
                paxos_kv::hugepages::reexec_with_huge_pages();
            }
            // Also before any thread exists (an arena limit binds only
            // arenas created after it).
            paxos_kv::malloc_arena::use_one_arena();
            init_tracing("info", cli.log_format);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(config.tuning.worker_threads)
                .enable_all()
                .build()
                .context("starting the tokio runtime")?;
            runtime.block_on(launch::run_node(config))
        }
        Command::Init {
            add_node: Some(id),
            dir,
            peer_addr,
            client_addr,
            ..
        } => {
            let addrs = match (peer_addr, client_addr) {
                (Some(peer), Some(client)) => Some(launch::NodeAddrs {
                    peer,
                    client,
                    metrics: None,
                }),
                (None, None) => None,
                _ => anyhow::bail!("give both --peer-addr and --client-addr, or neither"),
            };
            let (path, addrs) = paxos_kv::admin::provision_node(&dir, id, addrs)?;
            println!("{}", path.display());
            eprintln!(
                "start it with `paxos-kv node --config {}`, then run `paxos-kv add-node --to <any node's client addr> {id} {} {}`",
                path.display(),
                addrs.peer,
                addrs.client
            );
            Ok(())
        }
        Command::AddNode {
            to,
            id,
            peer_addr,
            client_addr,
        } => operator(
            to,
            vec![
                b"PAXOS.ADDNODE".to_vec(),
                id.to_string().into_bytes(),
                peer_addr.to_string().into_bytes(),
                client_addr.to_string().into_bytes(),
            ],
        ),
        Command::RemoveNode { to, id } => operator(
            to,
            vec![b"PAXOS.REMOVENODE".to_vec(), id.to_string().into_bytes()],
        ),
        Command::TransferLeader { to, id } => {
            let mut args = vec![b"PAXOS.TRANSFERLEADER".to_vec()];
            args.extend(id.map(|i| i.to_string().into_bytes()));
            operator(to, args)
        }
        Command::AbandonChange { to } => operator(to, vec![b"PAXOS.ABANDONCHANGE".to_vec()]),
        Command::Members { to } => operator(to, vec![b"PAXOS.MEMBERS".to_vec()]),
        Command::Init {
            nodes,
            dir,
            storage,
            base_port,
            add_node: None,
            ..
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
            init_tracing("warn", cli.log_format);
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

/// Sends an operator command (following redirects) and prints the reply.
fn operator(to: std::net::SocketAddr, args: Vec<Vec<u8>>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let parts: Vec<&[u8]> = args.iter().map(|a| &a[..]).collect();
    // The server bounds the wait for a change; allow a little more here.
    let timeout = paxos_kv::admin::CHANGE_TIMEOUT + std::time::Duration::from_secs(10);
    match runtime.block_on(paxos_kv::admin::call(to, &parts, timeout)) {
        Ok(reply) => {
            println!("{}", reply.replace("\r\n", "\n").trim_end());
            Ok(())
        }
        // The server's error text is the whole story: no backtrace.
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}

/// Logs to stderr, at `RUST_LOG`'s levels (else `default`).
fn init_tracing(default: &str, format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(use_colour(
                std::io::stderr().is_terminal(),
                std::env::var_os("NO_COLOR").as_deref(),
            ))
            .try_init(),
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    };
}

/// Colour codes only on a terminal (a log file or a pipe gets plain text),
/// and never when `NO_COLOR` is set to anything non-empty (no-color.org).
fn use_colour(is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    is_terminal && no_color.is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::use_colour;
    use std::ffi::OsStr;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(use_colour(true, None));
        assert!(use_colour(true, Some(OsStr::new(""))));
        assert!(!use_colour(true, Some(OsStr::new("1"))));
        assert!(!use_colour(false, None));
        assert!(!use_colour(false, Some(OsStr::new("1"))));
    }
}
