//! `paxos-bench`: the cluster benchmark run by `cargo xtask bench`.
//!
//! Starts a 3-replica paxos-kv cluster as separate processes on loopback
//! (QUIC between replicas, the chosen storage, fsync on for `file`), offers
//! closed-loop Redis-protocol load to the leader, prints ops/s and
//! p50/p99/p999 latency, then the per-stage latency breakdown the leader
//! measured, and optionally etcd under the same workload.
//!
//! With `--keys N` it runs the scale scenario instead ([`scale`]): N keys
//! loaded, steady writes across checkpoints, a wiped and a restarted
//! follower, and a latency plot.

use anyhow::Context;
use clap::Parser;
use paxos_bench::{cluster, cpu, etcd, loadgen, scale, sweep, sweepplot};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(about = "Benchmark a local 3-replica paxos-kv cluster (and etcd side by side)")]
#[command(args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Storage backend of the replicas: file (fsync on), nvm, or memory (not durable).
    #[arg(long, default_value = "file")]
    storage: String,
    /// Concurrent client connections (comma-separated list for a sweep).
    #[arg(long, default_value = "64", value_delimiter = ',')]
    clients: Vec<usize>,
    /// Requests in flight per connection (Redis-style pipelining).
    #[arg(long, default_value_t = 16)]
    depth: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Percentage of writes; the rest are GETs (0: GET-only).
    #[arg(long, default_value_t = 100)]
    write_percent: u8,
    /// How the replicas serve linearizable reads: `read_index` or `lease`
    /// (paxos-kv `tuning.read_mode`).
    #[arg(long, default_value = "read_index")]
    read_mode: String,
    /// Drive the leader with `redis-benchmark -t TESTS` (e.g. `set,get`)
    /// instead of the built-in load generator: `-c` is the first
    /// `--clients`, `-P` is `--depth`, `-d` is `--value-size`.
    #[arg(long)]
    redis_benchmark: Option<String>,
    /// redis-benchmark: requests per test (`-n`).
    #[arg(long, default_value_t = 1_000_000)]
    requests: u64,
    /// redis-benchmark: random keys drawn from this many (`-r`).
    #[arg(long, default_value_t = 100_000)]
    keyspace: u64,
    /// Seconds per measurement point (default 10); with `--keys`, seconds of
    /// steady writing before the faults (default 30).
    #[arg(long)]
    duration: Option<u64>,
    /// Run the scale scenario with this many keys instead of the sweep.
    #[arg(long)]
    keys: Option<u64>,
    /// Scale scenario: loader connections (64 SETs in flight each).
    #[arg(long, default_value_t = 4)]
    load_clients: usize,
    /// Scale scenario: steady-phase writer connections (`--depth` SETs in
    /// flight each).
    #[arg(long, default_value_t = 8)]
    writers: usize,
    /// Where the plots go: the sweep's `sweep-<storage>.svg` and `.json`
    /// (and `sweep-etcd.json` with `--compare etcd`), or the scale
    /// scenario's latency plot.
    #[arg(long, default_value = "target/bench")]
    out_dir: PathBuf,
    /// Replicas in the cluster.
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// Measure and print the per-stage latency breakdown on the leader
    /// (costs the nodes a few clock reads and histogram updates per request).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    breakdown: bool,
    /// Also run a peer with the same workload: `etcd`.
    #[arg(long)]
    compare: Option<String>,
    /// With `--compare etcd`: etcd's client counts, one request in flight
    /// each (comma-separated; default: `--clients`). etcd peaks at far more
    /// clients than paxos-kv needs, so best against best takes its own list.
    #[arg(long, value_delimiter = ',')]
    etcd_clients: Option<Vec<usize>>,
    /// With `--compare etcd`: seconds per etcd point (default: `--duration`).
    /// etcd's load generator counts its clients' connection setup in the
    /// point, so thousands of clients need longer points than paxos-kv.
    #[arg(long)]
    etcd_duration: Option<u64>,
    /// Decrees the leader keeps in flight (paxos-kv `tuning.pipeline_window`;
    /// default: paxos-kv's default).
    #[arg(long)]
    pipeline_window: Option<usize>,
    /// Most requests per decree (paxos-kv `tuning.max_batch_requests`;
    /// default: paxos-kv's default).
    #[arg(long)]
    max_batch_requests: Option<usize>,
    /// Checkpoint every this many applied decrees, 0 for never (paxos-kv
    /// `tuning.checkpoint_every_decrees`; default: paxos-kv's default).
    #[arg(long)]
    checkpoint_every_decrees: Option<u64>,
    /// Also checkpoint once this many MiB were applied since the last, 0
    /// for no byte trigger (paxos-kv `tuning.checkpoint_every_mb`;
    /// default: paxos-kv's default).
    #[arg(long)]
    checkpoint_every_mb: Option<u64>,
    /// Least microseconds between two log syncs of a node (paxos-kv
    /// `tuning.log_sync_interval_us`; default: paxos-kv's default).
    #[arg(long)]
    log_sync_interval_us: Option<u64>,
    /// Preallocate the file log's segments (paxos-kv
    /// `tuning.log_preallocate`; default: paxos-kv's default).
    #[arg(long, action = clap::ArgAction::Set)]
    log_preallocate: Option<bool>,
    /// Async runtime threads per node (paxos-kv `tuning.worker_threads`;
    /// default: paxos-kv's default).
    #[arg(long)]
    worker_threads: Option<usize>,
    /// Let the nodes back their heaps with transparent huge pages (paxos-kv
    /// `tuning.transparent_huge_pages`).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    huge_pages: bool,
    /// The paxos-kv binary (default: next to this binary).
    #[arg(long)]
    kv_bin: Option<PathBuf>,
    /// Where the replicas keep their data (default: a fresh temp directory).
    /// A directory on `/dev/shm` puts the nvm regions in memory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// With `--storage nvm`: auto, msync or emulated-pm (paxos-kv
    /// `tuning.nvm_backend`; emulated-pm is only as durable as the memory
    /// behind `--data-dir`).
    #[arg(long, default_value = "auto")]
    nvm_backend: String,
    /// With `--storage nvm`: each replica's region size in MiB (paxos-kv
    /// `tuning.nvm_region_mb`; default: sized from the checkpoint
    /// settings). At least 3x `checkpoint_every_mb` + `log_memory_mb`.
    #[arg(long)]
    nvm_region_mb: Option<u64>,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Draw saved sweeps (`sweep-*.json`) on one chart, e.g. file, nvm,
    /// memory and etcd.
    Plot {
        /// The saved sweeps, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        from: Vec<PathBuf>,
        /// The SVG to write.
        #[arg(long)]
        out: PathBuf,
        /// The chart's title.
        #[arg(long, default_value = "paxos-bench: latency against throughput")]
        title: String,
    },
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Command::Plot { from, out, title }) = &args.command {
        sweepplot::plot_saved(from, out, title)?;
        println!("wrote {}", out.display());
        return Ok(());
    }
    anyhow::ensure!(
        ["file", "nvm", "memory"].contains(&args.storage.as_str()),
        "--storage must be file, nvm or memory"
    );
    if let Some(peer) = &args.compare {
        anyhow::ensure!(peer == "etcd", "--compare supports only `etcd`");
    }
    let kv_bin = match &args.kv_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("paxos-kv"),
    };
    anyhow::ensure!(
        kv_bin.exists(),
        "paxos-kv binary not found at {}; run through `cargo xtask bench`, which builds it",
        kv_bin.display()
    );
    let mut tuning = paxos_kv::config::Tuning::default();
    if let Some(w) = args.pipeline_window {
        tuning.pipeline_window = w;
    }
    if let Some(n) = args.max_batch_requests {
        tuning.max_batch_requests = n;
    }
    tuning.transparent_huge_pages = args.huge_pages;
    if let Some(n) = args.worker_threads {
        tuning.worker_threads = n;
    }
    if let Some(us) = args.log_sync_interval_us {
        tuning.log_sync_interval_us = us;
    }
    if let Some(on) = args.log_preallocate {
        tuning.log_preallocate = on;
    }
    if let Some(n) = args.checkpoint_every_decrees {
        tuning.checkpoint_every_decrees = n;
    }
    if let Some(n) = args.checkpoint_every_mb {
        tuning.checkpoint_every_mb = n;
    }
    tuning.read_mode = match args.read_mode.as_str() {
        "read_index" => paxos_kv::config::ReadMode::ReadIndex,
        "lease" => paxos_kv::config::ReadMode::Lease,
        other => anyhow::bail!("--read-mode must be read_index or lease, not {other}"),
    };
    tuning.nvm_backend = cluster::nvm_backend(&args.nvm_backend)?;
    if let Some(mb) = args.nvm_region_mb {
        tuning.nvm_region_mb = mb;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if let Some(keys) = args.keys {
        return run_scale(&args, keys, &kv_bin, &tuning, &rt);
    }
    let duration = args.duration.unwrap_or(10);
    println!(
        "paxos-bench: {} replicas, storage={}{}, read_mode={}, value={} B, writes={}%, depth={}, {} s per point",
        args.replicas,
        args.storage,
        if args.storage == "nvm" {
            format!(" ({})", tuning.nvm_backend.name())
        } else {
            String::new()
        },
        args.read_mode,
        args.value_size,
        args.write_percent,
        args.depth,
        duration
    );
    let mut points = Vec::new();
    {
        let cluster = cluster::Cluster::start(
            &kv_bin,
            args.replicas,
            &args.storage,
            args.data_dir.as_deref(),
            args.breakdown,
            &tuning,
        )
        .context("starting the paxos-kv cluster")?;
        let leader = rt.block_on(cluster.wait_for_leader(Duration::from_secs(30)))?;
        println!("cluster up; leader client address {leader}");
        let node_pids = cluster.node_pids();
        let leader_index = cluster.index_of(leader);
        if let Some(tests) = &args.redis_benchmark {
            return run_redis_benchmark(&args, tests, leader, &node_pids, leader_index);
        }
        for &clients in &args.clients {
            let spec = loadgen::LoadSpec {
                target: leader,
                clients,
                depth: args.depth,
                value_bytes: args.value_size,
                write_percent: args.write_percent,
                duration: Duration::from_secs(duration),
                keys_per_client: 1000,
            };
            let cpu_before = cpu::CpuSnapshot::take(&node_pids);
            let report = rt.block_on(loadgen::run(spec))?;
            let cpu_after = cpu::CpuSnapshot::take(&node_pids);
            println!(
                "paxos clients={clients} depth={} ops/s={:.0} p50={}us p99={}us p999={}us errors={}{}",
                args.depth,
                report.ops_per_sec(),
                report.quantile_us(0.5),
                report.quantile_us(0.99),
                report.quantile_us(0.999),
                report.errors,
                report.first_error.as_deref().map(|e| format!(" (first: {e})")).unwrap_or_default()
            );
            let cpu = cpu_before.per_op(&cpu_after, report.ops, leader_index);
            let load_average = sweep::load_average();
            println!(
                "  {} load_average={}",
                cpu.line(),
                load_average.map_or("?".into(), |l| format!("{l:.2}"))
            );
            points.push(sweep::SweepPoint {
                clients,
                depth: args.depth,
                ops_per_sec: report.ops_per_sec(),
                p50_us: report.quantile_us(0.5),
                p99_us: report.quantile_us(0.99),
                p999_us: report.quantile_us(0.999),
                errors: report.errors,
                cpu: Some(sweep::CpuPerOp::from_report(&cpu)),
                load_average,
            });
        }
        if args.breakdown {
            match rt.block_on(cluster::latency_breakdown(leader)) {
                Ok(stages) if !stages.is_empty() => print_breakdown(&stages),
                Ok(_) => println!("latency breakdown: the leader reported no stages (start nodes with tracing of stages on)"),
                Err(e) => println!("latency breakdown unavailable: {e:#}"),
            }
        }
    }
    let storage = if args.storage == "nvm" {
        format!("nvm ({})", tuning.nvm_backend.name())
    } else {
        args.storage.clone()
    };
    let ours = sweep::Sweep {
        label: format!("paxos-kv {storage}"),
        system: "paxos-kv".into(),
        storage,
        value_bytes: args.value_size,
        write_percent: args.write_percent,
        seconds_per_point: duration,
        finished_unix_s: sweep::unix_now(),
        points,
    };
    let peer = if args.compare.is_some() {
        run_etcd(&args, duration, &ours)
    } else {
        None
    };
    let mut sweeps = vec![ours];
    sweeps.extend(peer);
    for path in sweepplot::write_outputs(&args.out_dir, &args.storage, &sweeps)? {
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// etcd under the same workload, at `--etcd-clients`; `None` (with the
/// reason printed) when it could not run, so the paxos-kv results still
/// get written.
fn run_etcd(args: &Args, duration: u64, ours: &sweep::Sweep) -> Option<sweep::Sweep> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let peer_dir = etcd::default_peer_dir(&root);
    let clients = args.etcd_clients.as_ref().unwrap_or(&args.clients);
    // bench.sh runs every point in one go; the load average is read at its end.
    let duration = args.etcd_duration.unwrap_or(duration);
    let points = match etcd::run(&peer_dir, clients, duration, args.value_size) {
        Ok(points) => points,
        Err(e) => {
            println!("etcd comparison skipped: {e:#}");
            return None;
        }
    };
    let load_average = sweep::load_average();
    for p in &points {
        println!(
            "etcd  clients={} ops/s={:.0} p50={}us p99={}us p999={}us",
            p.clients, p.ops_per_sec, p.p50_us, p.p99_us, p.p999_us
        );
        if let Some(same) = ours.at_in_flight(p.clients) {
            println!(
                "ratio paxos/etcd at {} requests in flight (paxos {}): {:.1}x",
                p.clients,
                same.concurrency_label(),
                same.ops_per_sec / p.ops_per_sec.max(1.0)
            );
        }
    }
    let peer = sweep::Sweep {
        label: "etcd".into(),
        system: "etcd".into(),
        storage: "etcd (WAL, fsync)".into(),
        value_bytes: args.value_size,
        write_percent: 100,
        seconds_per_point: duration,
        finished_unix_s: sweep::unix_now(),
        points: points
            .iter()
            .map(|p| sweep::SweepPoint::from_etcd(p, load_average))
            .collect(),
    };
    if let Some(line) = sweep::best_vs_best(ours, &peer) {
        println!("{line}");
    }
    Some(peer)
}

/// The scale scenario, on a cluster without stage timing.
fn run_scale(
    args: &Args,
    keys: u64,
    kv_bin: &std::path::Path,
    tuning: &paxos_kv::config::Tuning,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<()> {
    anyhow::ensure!(keys > 0, "--keys must be positive");
    anyhow::ensure!(
        args.compare.is_none(),
        "--compare runs with the throughput sweep, not with --keys"
    );
    let spec = scale::ScaleSpec {
        keys,
        value_size: args.value_size,
        steady: Duration::from_secs(args.duration.unwrap_or(30)),
        load_clients: args.load_clients.max(1),
        load_depth: 64,
        writers: args.writers.max(1),
        writer_depth: args.depth,
        out_dir: args.out_dir.clone(),
        catch_up_timeout: Duration::from_secs(600),
    };
    println!(
        "paxos-bench scale: {keys} keys x {} B, storage={}, checkpoint_every_decrees={}, checkpoint_every_mb={}, log_memory_mb={}",
        spec.value_size,
        args.storage,
        tuning.checkpoint_every_decrees,
        tuning.checkpoint_every_mb,
        tuning.log_memory_mb
    );
    let mut cluster = cluster::Cluster::start(
        kv_bin,
        args.replicas,
        &args.storage,
        args.data_dir.as_deref(),
        false,
        tuning,
    )
    .context("starting the paxos-kv cluster")?;
    rt.block_on(scale::run(&mut cluster, &spec))
}

/// `redis-benchmark` against the leader, with the nodes' and its own CPU
/// per request.
fn run_redis_benchmark(
    args: &Args,
    tests: &str,
    leader: std::net::SocketAddr,
    node_pids: &[Option<String>],
    leader_index: Option<usize>,
) -> anyhow::Result<()> {
    use paxos_bench::redisbench;
    let mut spec = redisbench::RedisBenchSpec {
        target: leader,
        tests: tests.to_string(),
        clients: args.clients.first().copied().unwrap_or(50),
        pipeline: args.depth,
        requests: args.requests,
        value_bytes: args.value_size,
        keyspace: args.keyspace,
    };
    println!("redis-benchmark {}", redisbench::args(&spec).join(" "));
    // One test per run, so each gets its own CPU figures.
    for test in tests.split(',') {
        spec.tests = test.to_string();
        let cpu_before = cpu::CpuSnapshot::take(node_pids);
        let (results, client_ticks) = redisbench::run(&spec)?;
        let cpu_after = cpu::CpuSnapshot::take(node_pids);
        for r in &results {
            let mut report = cpu_before.per_op(&cpu_after, spec.requests, leader_index);
            // The client is redis-benchmark, not this process.
            report.loadgen = Some(client_ticks as f64 / 100.0 * 1e6 / spec.requests as f64);
            println!(
                "redis-benchmark {} ops/s={:.0} p50={} read_mode={} clients={} pipeline={}",
                r.name,
                r.ops_per_sec,
                r.p50_ms
                    .map_or("?".to_string(), |ms| format!("{:.0}us", ms * 1000.0)),
                args.read_mode,
                spec.clients,
                spec.pipeline,
            );
            println!("  {} (loadgen: redis-benchmark)", report.line());
        }
    }
    Ok(())
}

fn print_breakdown(stages: &[cluster::Stage]) {
    println!("latency breakdown (leader, per write, microseconds):");
    println!(
        "  {:<28} {:>8} {:>8} {:>8} {:>10}",
        "stage", "p50", "p99", "p999", "count"
    );
    for s in stages {
        println!(
            "  {:<28} {:>8} {:>8} {:>8} {:>10}",
            s.name, s.p50_us, s.p99_us, s.p999_us, s.count
        );
    }
    if let Some(top) = stages
        .iter()
        .filter(|s| s.name != "total")
        .max_by_key(|s| s.p50_us)
    {
        println!(
            "biggest contributor at p50: {} ({} us)",
            top.name, top.p50_us
        );
    }
}
