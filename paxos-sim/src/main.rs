//! `paxos-sim`: runs the deterministic simulator over many seeds.
//!
//! ```text
//! paxos-sim --seeds 2000            # seeds 0..2000 on 2 threads
//! paxos-sim --seed 1234 -v          # one seed, every event printed
//! ```

use clap::Parser;
use paxos_sim::{run_many, RunOptions, RunReport, DEFAULT_STEPS};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(name = "paxos-sim", about = "Deterministic simulator for paxos-core")]
struct Args {
    /// Number of seeds to run. Defaults to 1 when --seed is given, else 100.
    #[arg(long)]
    seeds: Option<u64>,
    /// First seed (alone: run just this seed).
    #[arg(long)]
    seed: Option<u64>,
    /// Cluster size; by default each seed picks 3 or 5.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(["3", "5"]))]
    replicas: Option<String>,
    /// Events in the fault phase of each run.
    #[arg(long, default_value_t = DEFAULT_STEPS)]
    steps: u64,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    jobs: usize,
    /// Membership changes: `always`, `never`, or `seed` (each seed draws
    /// whether it changes membership; about half do).
    #[arg(long, default_value = "seed", value_parser = clap::builder::PossibleValuesParser::new(["always", "never", "seed"]))]
    reconfigure: String,
    /// How `GET`s are served: through the log, without it in ReadIndex or
    /// lease mode, or in order with the writes (`in-order`; `seed`: each
    /// seed draws one).
    #[arg(long, default_value = "seed", value_parser = clap::builder::PossibleValuesParser::new(["log", "read-index", "lease", "in-order", "seed"]))]
    reads: String,
    /// `within`: every replica's clock keeps to the drift bound the nodes
    /// are configured with; `beyond`: clocks run up to 90% off while the
    /// nodes assume 0.1% (lease mode may then serve stale reads).
    #[arg(long, default_value = "within", value_parser = clap::builder::PossibleValuesParser::new(["within", "beyond"]))]
    clock_drift: String,
    /// Print every event (use with one seed).
    #[arg(short, long)]
    verbose: bool,
    /// Plant a known bug in every replica (e.g. `quorum-half`) to watch the
    /// checkers catch it.
    #[cfg(feature = "planted-bugs")]
    #[arg(long)]
    plant_bug: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let seeds = args
        .seeds
        .unwrap_or(if args.seed.is_some() { 1 } else { 100 });
    #[allow(unused_mut)]
    let mut opts = RunOptions {
        start_seed: args.seed.unwrap_or(0),
        seeds,
        replicas: args
            .replicas
            .as_deref()
            .map(|r| if r == "5" { 5 } else { 3 }),
        steps: args.steps,
        jobs: if args.verbose { 1 } else { args.jobs.max(1) },
        verbose: args.verbose,
        hook: None,
        stop_on_failure: false,
        reconfigure: match args.reconfigure.as_str() {
            "always" => Some(true),
            "never" => Some(false),
            _ => None,
        },
        reads: match args.reads.as_str() {
            "log" => Some(paxos_sim::SimReadMode::Log),
            "read-index" => Some(paxos_sim::SimReadMode::ReadIndex),
            "lease" => Some(paxos_sim::SimReadMode::Lease),
            "in-order" => Some(paxos_sim::SimReadMode::InOrder),
            _ => None,
        },
        clock_drift: if args.clock_drift == "beyond" {
            paxos_sim::ClockDrift::BeyondBound
        } else {
            paxos_sim::ClockDrift::WithinBound
        },
    };
    // How a failing seed is rerun: `cargo xtask sim --seed S ...`, or the
    // planted-bug variant of it.
    #[allow(unused_mut)]
    let mut repro_prefix = "cargo xtask sim".to_string();
    #[allow(unused_mut)]
    let mut repro_suffix = String::new();
    #[cfg(feature = "planted-bugs")]
    if let Some(name) = args.plant_bug.as_deref() {
        let Some(bug) = paxos_sim::planted::by_name(name) else {
            let names: Vec<&str> = paxos_sim::planted::ALL
                .iter()
                .map(|b| paxos_sim::planted::name(*b))
                .collect();
            eprintln!("unknown planted bug {name:?}; known: {}", names.join(", "));
            return ExitCode::FAILURE;
        };
        opts.hook = Some(std::sync::Arc::new(move |n: &mut paxos_sim::SimNode| {
            n.plant_core_bug(bug)
        }));
        repro_prefix = "cargo run --release -p paxos-sim --features planted-bugs --".to_string();
        repro_suffix = format!(" --plant-bug {name}");
    }
    let repro = |seed: u64| {
        opts.repro_command(seed)
            .replacen("cargo xtask sim", &repro_prefix, 1)
            + &repro_suffix
    };
    let single = seeds == 1;
    let print = |r: &RunReport| {
        if let Some((f, at)) = &r.failure {
            eprintln!(
                "seed {} FAILED at t={}us after {} steps ({} replicas): {f}\n  reproduce: {}",
                r.seed,
                at.0,
                r.steps,
                r.replicas,
                repro(r.seed)
            );
        } else if single {
            println!(
                "seed {}: ok, {} replicas, {} steps, {} commits, {} acknowledged, {} faults, digest {:016x}",
                r.seed,
                r.replicas,
                r.steps,
                r.commits,
                r.acked_requests,
                r.faults.total(),
                r.digest
            );
        }
    };
    let summary = run_many(&opts, &print);
    println!("{}", summary.line());
    if summary.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        println!("failing seeds (rerun one with the command shown):");
        for r in &summary.failures {
            let kind = r
                .failure
                .as_ref()
                .map(|(f, _)| f.kind.to_string())
                .unwrap_or_default();
            println!("  {}    # {kind}", repro(r.seed));
        }
        ExitCode::FAILURE
    }
}
