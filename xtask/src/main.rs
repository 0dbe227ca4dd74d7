//! xtask: project automation, run as `cargo xtask <command>`.
//!
//! - `ci`: formatting, clippy with `-D warnings`, the whole test suite with
//!   contracts on, the contracts crate with checks off, the tidy checks and a
//!   short simulator run. This is what `.ci/run` and the README run.
//! - `verify`: the long checks: proptest with many cases, loom models, the
//!   simulator over many seeds, and Miri where a toolchain has it.
//! - `sim [ARGS]`: the deterministic simulator (`paxos-sim`), release build.
//! - `bench [ARGS]`: the cluster benchmark (`paxos-bench`), release build.
//! - `tidy`: structural checks on the repository (see `tidy.rs`).
//!
//! Invariant: every stage prints one summary line, and any failing stage makes
//! the command exit non-zero.

mod tidy;

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

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
        "" | "help" | "--help" | "-h" => {
            println!("{}", USAGE);
            Ok(())
        }
        other => bail!("unknown command `{other}`\n{USAGE}"),
    }
}

const USAGE: &str = "usage: cargo xtask <ci | verify [--quick] | sim [ARGS] | bench [ARGS] | tidy>
  ci       fmt check, clippy -D warnings, tests with contracts on, tidy, short sim
  verify   proptest (many cases), loom models, simulator (many seeds), miri if available
  sim      run the deterministic simulator, e.g. `cargo xtask sim --seeds 2000`
  bench    run the cluster benchmark, e.g. `cargo xtask bench --storage file`
  tidy     check crate layering, sans-IO core and test hygiene";

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

/// Runs cargo with `base` then `extra` arguments and extra environment.
fn cargo(base: &[&str], extra: &[String], env: &[(&str, &str)]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut c = Command::new(cargo);
    c.args(base).args(extra);
    for (k, v) in env {
        c.env(k, v);
    }
    let status = c
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
    s.run("tests (contracts on)", || {
        cargo(&["test", "--workspace"], &[], &[])
    });
    s.run("paxos-contracts (checks off)", || {
        cargo(&["test", "-p", "paxos-contracts"], &[], &[])
    });
    s.run("paxos-contracts (checks on)", || {
        cargo(
            &["test", "-p", "paxos-contracts", "--features", "contracts"],
            &[],
            &[],
        )
    });
    s.run("simulator, 200 seeds", || {
        cargo(
            &["run", "--release", "--quiet", "-p", "paxos-sim", "--"],
            &["--seeds".into(), "200".into()],
            &[],
        )
    });
    s.finish("ci")
}

fn verify(args: &[String]) -> Result<()> {
    let quick = args.iter().any(|a| a == "--quick");
    let cases = if quick { "512" } else { "4096" };
    let seeds = if quick { "300" } else { "2000" };
    let mut s = Stages::new();
    s.run(&format!("proptest, {cases} cases per property"), || {
        cargo(
            &[
                "test",
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
            &[],
            &[("PROPTEST_CASES", cases)],
        )
    });
    s.run("loom models (--cfg paxos_loom)", || {
        cargo(
            &[
                "test",
                "--release",
                "-p",
                "paxos-pipeline",
                "--test",
                "loom",
            ],
            &[],
            &[
                ("RUSTFLAGS", "--cfg paxos_loom"),
                ("CARGO_TARGET_DIR", "target/loom"),
            ],
        )
    });
    s.run(&format!("simulator, {seeds} seeds"), || {
        cargo(
            &["run", "--release", "--quiet", "-p", "paxos-sim", "--"],
            &["--seeds".into(), seeds.into()],
            &[],
        )
    });
    s.run("miri (paxos-nvm pure logic, paxos-core batch)", || {
        let has_miri = Command::new("cargo")
            .args(["miri", "--version"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !has_miri {
            println!("miri: skipped: `cargo miri` is not installed (it needs a nightly toolchain)");
            return Ok(());
        }
        cargo(&["miri", "test", "-p", "paxos-nvm", "--lib"], &[], &[])?;
        cargo(
            &["miri", "test", "-p", "paxos-core", "--lib", "batch"],
            &[],
            &[],
        )
    });
    s.finish("verify")
}
