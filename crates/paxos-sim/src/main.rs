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
    /// Print every event (use with one seed).
    #[arg(short, long)]
    verbose: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let seeds = args
        .seeds
        .unwrap_or(if args.seed.is_some() { 1 } else { 100 });
    let opts = RunOptions {
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
                opts.repro_command(r.seed)
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
            let (f, _) = r.failure.as_ref().map(|(f, t)| (f.kind, t)).unzip();
            println!(
                "  {}    # {}",
                opts.repro_command(r.seed),
                f.map(|k| k.to_string()).unwrap_or_default()
            );
        }
        ExitCode::FAILURE
    }
}
