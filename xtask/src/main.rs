//! xtask: project automation, run as `cargo xtask <command>`.
//!
//! - `ci`: formatting, clippy with `-D warnings`, the tidy checks, the whole
//!   test suite with contracts on (cargo-nextest, profile `ci`) and its doc
//!   tests, the contracts crate with checks off and on, the nextest
//!   time-limit self-test, and 2,000 simulator seeds. This is what `.ci/run`
//!   and the README run.
//! - `verify`: the long checks: proptest with 4096 cases, loom models (both
//!   under nextest, profile `verify`), 100,000 simulator seeds, and Miri
//!   where a toolchain has it. `--quick` runs a short version.
//! - `sim [ARGS]`: the deterministic simulator (`paxos-sim`), release build.
//! - `bench [ARGS]`: the cluster benchmark (`paxos-bench`), release build;
//!   `--keys N` runs its scale scenario.
//! - `tidy`: structural checks on the repository (see `tidy.rs`).
//! - `nextest-selftest`: shows that a hanging test fails within its limit
//!   (see `nextest.rs`).
//!
//! Invariants: every stage prints one summary line, and any failing stage
//! makes the command exit non-zero. No test of `ci` or `verify` runs without
//! a time limit: the tests run under cargo-nextest, whose
//! `.config/nextest.toml` terminates a test past its limit (checked by
//! `nextest.rs`); doc tests, the simulator and Miri, which nextest does not
//! run, run under a wall-clock limit for the whole command (`limit.rs`).
//! Building is never limited, only running.

mod limit;
mod nextest;
mod tidy;

use anyhow::{bail, Context, Result};
use limit::Outcome;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn main() {
    if let Err(e) = run() {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let cmd = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    let root = workspace_root();
    std::env::set_current_dir(&root).context("entering the workspace root")?;
    match cmd.as_str() {
        "ci" => ci(&rest),
        "verify" => verify(&rest),
        "sim" => cargo(
            &["run", "--release", "--quiet", "-p", "paxos-sim", "--"],
            &rest,
            &[],
        ),
        "bench" => {
            // The benchmark starts paxos-kv node processes: build that binary too.
            cargo(
                &[
                    "build",
                    "--release",
                    "--quiet",
                    "-p",
                    "paxos-kv",
                    "-p",
                    "paxos-bench",
                ],
                &[],
                &[],
            )?;
            cargo(
                &["run", "--release", "--quiet", "-p", "paxos-bench", "--"],
                &rest,
                &[],
            )
        }
        "tidy" => {
            let problems = tidy::check(&root)?;
            report_tidy(&problems)
        }
        "nextest-selftest" => nextest::selftest(&root),
        "" | "help" | "--help" | "-h" => {
            println!("{}", USAGE);
            Ok(())
        }
        other => bail!("unknown command `{other}`\n{USAGE}"),
    }
}

const USAGE: &str = "usage: cargo xtask <ci | verify [--quick] | sim [ARGS] | bench [ARGS] | tidy | nextest-selftest>
  ci                fmt check, clippy -D warnings, tidy, tests with contracts on (nextest,
                    per-test time limits) and doc tests, time-limit self-test, 2000 sim seeds
  verify            proptest (4096 cases), loom models, 100000 simulator seeds, miri if
                    available; --quick: 512 cases, 300 seeds
  sim               run the deterministic simulator, e.g. `cargo xtask sim --seeds 2000`
  bench             run the cluster benchmark, e.g. `cargo xtask bench --storage file`;
                    `--keys N`: the scale scenario (N keys, checkpoints, wiped follower)
  tidy              check crate layering, sans-IO core and test hygiene
  nextest-selftest  show that a hanging test is killed at its limit and fails the run";

fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(Path::to_path_buf).unwrap_or(manifest)
}

fn report_tidy(problems: &[String]) -> Result<()> {
    if problems.is_empty() {
        println!("tidy: ok");
        Ok(())
    } else {
        for p in problems {
            eprintln!("tidy: {p}");
        }
        bail!("tidy found {} problem(s)", problems.len())
    }
}

/// The cargo that runs xtask (so the same toolchain builds everything).
fn cargo_path() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// A cargo command with `base` then `extra` arguments and extra environment.
fn cargo_command(base: &[&str], extra: &[String], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(cargo_path());
    c.args(base).args(extra);
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

/// Runs cargo with `base` then `extra` arguments and extra environment.
fn cargo(base: &[&str], extra: &[String], env: &[(&str, &str)]) -> Result<()> {
    let status = cargo_command(base, extra, env)
        .status()
        .with_context(|| format!("running cargo {}", base.join(" ")))?;
    if !status.success() {
        bail!(
            "`cargo {} {}` failed ({status})",
            base.join(" "),
            extra.join(" ")
        );
    }
    Ok(())
}

/// Runs cargo like [`cargo`], but kills it with everything it started once
/// it has run for `limit` (see `limit.rs`).
fn cargo_within(
    limit: Duration,
    base: &[&str],
    extra: &[String],
    env: &[(&str, &str)],
) -> Result<()> {
    let what = format!("`cargo {} {}`", base.join(" "), extra.join(" "));
    let outcome = limit::run_within(&mut cargo_command(base, extra, env), limit, limit::GRACE)
        .with_context(|| format!("running {what}"))?;
    match outcome {
        Outcome::Exited(status) if status.success() => Ok(()),
        Outcome::Exited(status) => bail!("{what} failed ({status})"),
        Outcome::TimedOut => bail!(
            "{what} ran past its time limit of {}s and was killed",
            limit.as_secs()
        ),
        Outcome::Interrupted(signal) => interrupted(signal),
    }
}

/// The user interrupted a command (Ctrl-C): stop xtask as that signal would.
fn interrupted(signal: i32) -> ! {
    eprintln!("xtask: interrupted (signal {signal})");
    std::process::exit(128 + signal)
}

/// Runs one named stage, timing it and printing a summary line.
struct Stages {
    results: Vec<(String, Result<(), String>, f64)>,
}

impl Stages {
    fn new() -> Self {
        Stages {
            results: Vec::new(),
        }
    }

    fn run(&mut self, name: &str, f: impl FnOnce() -> Result<()>) {
        println!("==> {name}");
        let start = Instant::now();
        let r = f().map_err(|e| format!("{e:#}"));
        let secs = start.elapsed().as_secs_f64();
        match &r {
            Ok(()) => println!("--> {name}: ok ({secs:.1}s)"),
            Err(e) => println!("--> {name}: FAILED ({secs:.1}s): {e}"),
        }
        self.results.push((name.to_string(), r, secs));
    }

    fn finish(self, what: &str) -> Result<()> {
        println!("\n{what} summary:");
        let mut failed = 0;
        for (name, r, secs) in &self.results {
            match r {
                Ok(()) => println!("  ok      {name:<40} {secs:>7.1}s"),
                Err(_) => {
                    failed += 1;
                    println!("  FAILED  {name:<40} {secs:>7.1}s");
                }
            }
        }
        if failed > 0 {
            bail!("{failed} {what} stage(s) failed");
        }
        Ok(())
    }
}

/// How long the doc tests of one `cargo test --doc` may take. They are few
/// (7, about 4 s warm on the 2-core VM), but rustdoc compiles each one
/// inside the command, so the limit mostly covers compiling.
const DOC_TEST_LIMIT: Duration = Duration::from_secs(5 * 60);

/// Simulator seeds in `ci`, `verify` and `verify --quick`.
const CI_SEEDS: u64 = 2_000;
const VERIFY_SEEDS: u64 = 100_000;
const QUICK_SEEDS: u64 = 300;

/// The simulator's time limit. Since the simulator runs the whole replica
/// (paxos-node, the file and persistent-memory logs on simulated media, the
/// KV and its linearizability check), 2,000 seeds take about 62 s of CPU
/// (31 ms a seed) and 64-104 s of wall time on the shared 2-core VM; the
/// limit allows 100 ms a seed plus a minute (260 s for `ci`'s 2,000 seeds).
fn sim_limit(seeds: u64) -> Duration {
    Duration::from_secs(60) + Duration::from_millis(100) * u32::try_from(seeds).unwrap_or(u32::MAX)
}

/// Builds the simulator, then runs `seeds` seeds on every core under
/// [`sim_limit`]. paxos-sim runs seeds on `--jobs` threads (default 2); the
/// outcome of each seed does not depend on it.
fn simulator(seeds: u64) -> Result<()> {
    cargo(
        &["build", "--release", "--quiet", "-p", "paxos-sim"],
        &[],
        &[],
    )?;
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    cargo_within(
        sim_limit(seeds),
        &["run", "--release", "--quiet", "-p", "paxos-sim", "--"],
        &[
            "--seeds".into(),
            seeds.to_string(),
            "--jobs".into(),
            jobs.to_string(),
        ],
        &[],
    )
}

/// `cargo nextest run` with a profile of `.config/nextest.toml`, which gives
/// every test its time limit.
fn nextest(profile: &str, args: &[&str], env: &[(&str, &str)]) -> Result<()> {
    let extra: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    cargo(&["nextest", "run", "--profile", profile], &extra, env)
}

fn ci(args: &[String]) -> Result<()> {
    if let Some(a) = args.first() {
        bail!("`ci` takes no arguments (got `{a}`)");
    }
    let mut s = Stages::new();
    s.run("fmt", || {
        cargo(&["fmt", "--all", "--", "--check"], &[], &[])
    });
    s.run("clippy -D warnings", || {
        cargo(
            &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
            &[],
            &[],
        )
    });
    s.run("tidy", || {
        let problems = tidy::check(Path::new("."))?;
        report_tidy(&problems)
    });
    // Every crate's tests enable paxos-contracts' `contracts` feature through
    // their dev-dependency, so the workspace build has checks on.
    s.run("tests (contracts on, nextest)", || {
        nextest("ci", &["--workspace"], &[])
    });
    s.run("doc tests (contracts on)", || {
        cargo_within(DOC_TEST_LIMIT, &["test", "--workspace", "--doc"], &[], &[])
    });
    // Built alone, paxos-contracts has checks off unless asked.
    s.run("paxos-contracts (checks off)", || {
        nextest("ci", &["-p", "paxos-contracts"], &[])?;
        cargo_within(
            DOC_TEST_LIMIT,
            &["test", "-p", "paxos-contracts", "--doc"],
            &[],
            &[],
        )
    });
    s.run("paxos-contracts (checks on)", || {
        nextest(
            "ci",
            &["-p", "paxos-contracts", "--features", "contracts"],
            &[],
        )
    });
    s.run("nextest time-limit self-test", || {
        nextest::selftest(Path::new("."))
    });
    s.run(&format!("simulator, {CI_SEEDS} seeds"), || {
        simulator(CI_SEEDS)
    });
    s.finish("ci")
}

/// How long each Miri command may take (not measured: Miri needs a nightly
/// toolchain the development VM's default toolchain lacks).
const MIRI_LIMIT: Duration = Duration::from_secs(30 * 60);

fn verify(args: &[String]) -> Result<()> {
    let quick = args.iter().any(|a| a == "--quick");
    let cases = if quick { "512" } else { "4096" };
    let seeds = if quick { QUICK_SEEDS } else { VERIFY_SEEDS };
    let mut s = Stages::new();
    s.run(&format!("proptest, {cases} cases per property"), || {
        nextest(
            "verify",
            &[
                "--release",
                "-p",
                "paxos-core",
                "-p",
                "paxos-log",
                "-p",
                "paxos-nvm",
                "-p",
                "paxos-net",
                "-p",
                "paxos-pipeline",
                "-p",
                "paxos-kv",
            ],
            &[("PROPTEST_CASES", cases)],
        )
    });
    s.run("loom models (--cfg paxos_loom)", || {
        nextest(
            "verify",
            &["--release", "-p", "paxos-pipeline", "--test", "loom"],
            &[
                ("RUSTFLAGS", "--cfg paxos_loom"),
                ("CARGO_TARGET_DIR", "target/loom"),
            ],
        )
    });
    s.run(&format!("simulator, {seeds} seeds"), || simulator(seeds));
    s.run("miri (paxos-nvm pure logic, paxos-core batch)", || {
        let has_miri = Command::new(cargo_path())
            .args(["miri", "--version"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !has_miri {
            println!("miri: skipped: `cargo miri` is not installed (it needs a nightly toolchain)");
            return Ok(());
        }
        cargo_within(
            MIRI_LIMIT,
            &["miri", "test", "-p", "paxos-nvm", "--lib"],
            &[],
            &[],
        )?;
        cargo_within(
            MIRI_LIMIT,
            &["miri", "test", "-p", "paxos-core", "--lib", "batch"],
            &[],
            &[],
        )
    });
    s.finish("verify")
}
