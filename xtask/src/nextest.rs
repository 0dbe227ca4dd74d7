//! The per-test time limit: checks on `.config/nextest.toml` and the
//! end-to-end self-test `cargo xtask nextest-selftest`.
//!
//! Every test runs under cargo-nextest with a `slow-timeout` that has a
//! `terminate-after`, so a hung test is killed and fails the run. Two checks
//! keep that true:
//!
//! 1. [`check_config`] (run by `cargo test -p xtask` and by the self-test):
//!    each profile the xtask commands use, and every override with a
//!    `slow-timeout`, terminates a slow test, with a limit of at most
//!    [`MAX_LIMIT`] and without `on-timeout = "pass"`.
//! 2. [`selftest`] (run by `cargo xtask ci`): runs the fixture
//!    `xtask/fixtures/nextest_timeout.rs` under that file with each profile
//!    and checks from nextest's report that the hanging test was terminated
//!    at its limit and failed the run, while a test slower than one period
//!    but within the limit passed.

use crate::limit::{self, Outcome};
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// The config file, relative to the workspace root.
pub const CONFIG: &str = ".config/nextest.toml";

/// The nextest profiles the xtask commands use: plain `cargo nextest run`,
/// `cargo xtask ci`, `cargo xtask verify`.
pub const PROFILES: [&str; 3] = ["default", "ci", "verify"];

/// No test may have a longer limit: past it a "limit" no longer bounds
/// what CI waits for.
pub const MAX_LIMIT: Duration = Duration::from_secs(30 * 60);

/// nextest's `grace-period` when a slow-timeout does not set one.
const DEFAULT_GRACE: Duration = Duration::from_secs(10);

/// The fixture: xtask's test binary built only with this feature.
const FIXTURE_FEATURE: &str = "xtask/nextest-timeout-fixture";
const FIXTURE_BINARY: &str = "nextest_timeout_fixture";
const FIXTURE_HANGS: &str = "hangs_forever";
const FIXTURE_SLOW: &str = "slow_but_within_the_limit";

/// nextest's exit code when tests failed (`NextestExitCode::TEST_RUN_FAILED`).
const NEXTEST_TEST_RUN_FAILED: i32 = 100;

/// A `slow-timeout` setting as the limit it sets.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limit {
    /// A test still running after `period × terminate_after` is terminated.
    pub period: Duration,
    pub terminate_after: u32,
    /// Between SIGTERM and SIGKILL.
    pub grace: Duration,
}

impl Limit {
    /// How long a test may run.
    pub fn total(&self) -> Duration {
        self.period * self.terminate_after
    }
}

/// Parses a humantime duration as nextest accepts them in practice:
/// `500ms`, `30s`, `2m`, `1h`, or several such parts (`1m 30s`).
fn parse_duration(text: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut parts = 0;
    for part in text.split_whitespace() {
        let split = part.find(|c: char| !c.is_ascii_digit())?;
        let (digits, unit) = part.split_at(split);
        let n: u64 = digits.parse().ok()?;
        total += match unit {
            "ms" => Duration::from_millis(n),
            "s" | "sec" | "secs" => Duration::from_secs(n),
            "m" | "min" | "mins" => Duration::from_secs(n * 60),
            "h" | "hr" | "hrs" => Duration::from_secs(n * 3600),
            _ => return None,
        };
        parts += 1;
    }
    (parts > 0).then_some(total)
}

/// Reads one `slow-timeout` value; `where_` names it in the problem.
fn read_slow_timeout(value: &toml::Value, where_: &str) -> Result<Limit, String> {
    let table = match value {
        toml::Value::String(period) => {
            return Err(format!(
                "{where_}: slow-timeout = \"{period}\" only marks tests slow; \
                 use {{ period = \"{period}\", terminate-after = N }} so a hung test is killed"
            ))
        }
        toml::Value::Table(t) => t,
        other => return Err(format!("{where_}: slow-timeout is not a table: {other}")),
    };
    let duration = |key: &str| -> Result<Option<Duration>, String> {
        match table.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .and_then(parse_duration)
                .map(Some)
                .ok_or_else(|| format!("{where_}: cannot read {key} = {v}")),
        }
    };
    let period =
        duration("period")?.ok_or_else(|| format!("{where_}: slow-timeout has no period"))?;
    let grace = duration("grace-period")?.unwrap_or(DEFAULT_GRACE);
    let terminate_after = match table.get("terminate-after") {
        None => {
            return Err(format!(
                "{where_}: slow-timeout has no terminate-after, so a hung test runs forever"
            ))
        }
        Some(v) => v
            .as_integer()
            .filter(|n| *n > 0)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| format!("{where_}: terminate-after = {v} is not a positive count"))?,
    };
    if let Some(v) = table.get("on-timeout") {
        if v.as_str() != Some("fail") {
            return Err(format!(
                "{where_}: on-timeout = {v}: a test that times out must fail"
            ));
        }
    }
    let limit = Limit {
        period,
        terminate_after,
        grace,
    };
    if limit.total().is_zero() || limit.total() > MAX_LIMIT {
        return Err(format!(
            "{where_}: limit {:?} is not within (0, {MAX_LIMIT:?}]",
            limit.total()
        ));
    }
    Ok(limit)
}

/// The overrides of `profile` as (filter, table) pairs.
fn overrides<'a>(
    config: &'a toml::Value,
    profile: &str,
) -> Vec<(&'a str, &'a toml::map::Map<String, toml::Value>)> {
    config
        .get("profile")
        .and_then(|p| p.get(profile))
        .and_then(|p| p.get("overrides"))
        .and_then(|o| o.as_array())
        .map(|list| {
            list.iter()
                .filter_map(|o| o.as_table())
                .map(|t| (t.get("filter").and_then(|f| f.as_str()).unwrap_or("?"), t))
                .collect()
        })
        .unwrap_or_default()
}

/// Problems with the time limits of `text` (a nextest config): each of
/// [`PROFILES`] must terminate slow tests (its own `slow-timeout` or the
/// default profile's; nextest's built-in one never terminates), and so must
/// every override that sets a `slow-timeout` in those profiles.
pub fn check_config(text: &str) -> Result<Vec<String>> {
    let config: toml::Value = text.parse().context("parsing the nextest config")?;
    let mut problems = Vec::new();
    let slow_timeout = |profile: &str| {
        config
            .get("profile")
            .and_then(|p| p.get(profile))
            .and_then(|p| p.get("slow-timeout"))
    };
    for profile in PROFILES {
        let has_table = config
            .get("profile")
            .and_then(|p| p.get(profile))
            .is_some_and(|p| p.is_table());
        if !has_table {
            problems.push(format!("profile.{profile} is missing"));
            continue;
        }
        match slow_timeout(profile).or_else(|| slow_timeout("default")) {
            None => problems.push(format!(
                "profile.{profile}: no slow-timeout, so nextest's built-in one applies, \
                 which never terminates a test"
            )),
            Some(v) => {
                if let Err(p) = read_slow_timeout(v, &format!("profile.{profile}")) {
                    problems.push(p);
                }
            }
        }
        for (filter, o) in overrides(&config, profile) {
            if let Some(v) = o.get("slow-timeout") {
                let where_ = format!("profile.{profile}.overrides (filter {filter:?})");
                if let Err(p) = read_slow_timeout(v, &where_) {
                    problems.push(p);
                }
            }
        }
    }
    Ok(problems)
}

/// The limit the default profile's overrides give the fixture.
fn fixture_limit(text: &str) -> Result<Limit> {
    let config: toml::Value = text.parse().context("parsing the nextest config")?;
    let (filter, o) = overrides(&config, "default")
        .into_iter()
        .find(|(filter, _)| filter.contains(FIXTURE_BINARY))
        .with_context(|| {
            format!("{CONFIG}: no override in profile.default names `{FIXTURE_BINARY}`")
        })?;
    let v = o
        .get("slow-timeout")
        .with_context(|| format!("{CONFIG}: the override {filter:?} sets no slow-timeout"))?;
    read_slow_timeout(v, filter).map_err(anyhow::Error::msg)
}

/// One status line of nextest's human output, e.g.
/// `TIMEOUT [   3.020s] (2/2) xtask::nextest_timeout_fixture hangs_forever`.
#[derive(Debug, PartialEq)]
struct StatusLine<'a> {
    status: &'a str,
    duration: Duration,
    test: &'a str,
}

fn status_lines(output: &str) -> Vec<StatusLine<'_>> {
    output
        .lines()
        .filter_map(|line| {
            let line = line.trim();
            let (status, rest) = line.split_once(' ')?;
            if !status.chars().all(|c| c.is_ascii_uppercase()) {
                return None;
            }
            let rest = rest.trim_start().strip_prefix('[')?;
            let (secs, rest) = rest.split_once("s]")?;
            let secs: f64 = secs.trim().trim_start_matches('>').trim().parse().ok()?;
            let test = rest.split_whitespace().last()?;
            Some(StatusLine {
                status,
                duration: Duration::from_secs_f64(secs),
                test,
            })
        })
        .collect()
}

/// Judges one self-test run from nextest's exit code and output: the run
/// failed (exit code 100), the hanging test was reported TIMEOUT after at
/// least its limit and not much later, and the slow test passed. Returns a
/// one-line account of what happened.
fn judge(exit_code: Option<i32>, output: &str, limit: Limit) -> Result<String, String> {
    let lines = status_lines(output);
    let final_status = |test: &str| {
        lines
            .iter()
            .filter(|l| l.test == test && !matches!(l.status, "SLOW" | "TERMINATING"))
            .map(|l| (l.status, l.duration))
            .next()
    };
    let hang = final_status(FIXTURE_HANGS);
    let slow = final_status(FIXTURE_SLOW);
    // Terminating takes up to the grace period; allow for a loaded machine.
    let latest = limit.total() + limit.grace + Duration::from_secs(5);
    let mut problems = Vec::new();
    if exit_code != Some(NEXTEST_TEST_RUN_FAILED) {
        problems.push(format!(
            "nextest exited with {exit_code:?}, not {NEXTEST_TEST_RUN_FAILED} (tests failed)"
        ));
    }
    match hang {
        Some(("TIMEOUT", took)) if took >= limit.total() && took <= latest => {}
        Some(("TIMEOUT", took)) => problems.push(format!(
            "`{FIXTURE_HANGS}` timed out after {took:?}, not between its limit {:?} and {latest:?}",
            limit.total()
        )),
        Some((status, _)) => {
            problems.push(format!("`{FIXTURE_HANGS}` ended {status}, not TIMEOUT"))
        }
        None => problems.push(format!("nextest reported no result for `{FIXTURE_HANGS}`")),
    }
    match slow {
        Some(("PASS", _)) => {}
        Some((status, _)) => problems.push(format!(
            "`{FIXTURE_SLOW}` (slower than one period, within the limit) ended {status}, not PASS"
        )),
        None => problems.push(format!("nextest reported no result for `{FIXTURE_SLOW}`")),
    }
    if problems.is_empty() {
        let took = hang.map(|(_, d)| d).unwrap_or_default();
        Ok(format!(
            "`{FIXTURE_HANGS}` terminated after {:.1}s (limit {:?}) and failed the run; `{FIXTURE_SLOW}` passed",
            took.as_secs_f64(),
            limit.total()
        ))
    } else {
        Err(problems.join("; "))
    }
}

/// `cargo xtask nextest-selftest`: checks the config, then runs the fixture
/// under it with each profile and judges nextest's report.
pub fn selftest(root: &Path) -> Result<()> {
    let text =
        std::fs::read_to_string(root.join(CONFIG)).with_context(|| format!("reading {CONFIG}"))?;
    let problems = check_config(&text)?;
    if !problems.is_empty() {
        bail!("{CONFIG}:\n  {}", problems.join("\n  "));
    }
    let limit = fixture_limit(&text)?;
    let base = [
        "nextest",
        "run",
        "--workspace",
        "--features",
        FIXTURE_FEATURE,
        "--color",
        "never",
    ];
    // Building is not under test: do it first, without a limit.
    crate::cargo(&base, &["--no-run".into()], &[])?;
    let filter = format!("package(xtask) & binary({FIXTURE_BINARY})");
    let out_dir = tempfile::tempdir().context("creating a temporary directory")?;
    for profile in PROFILES {
        let log = out_dir.path().join(format!("{profile}.log"));
        let file = std::fs::File::create(&log)?;
        let mut cmd = Command::new(crate::cargo_path());
        cmd.args(base)
            .args(["--profile", profile, "--no-fail-fast", "-E", &filter])
            .stdout(file.try_clone()?)
            .stderr(file);
        let start = Instant::now();
        // The fixture's limit, plus listing the test binaries.
        let outcome = limit::run_within(&mut cmd, Duration::from_secs(120), limit::GRACE)
            .context("running cargo nextest")?;
        let output = std::fs::read_to_string(&log)?;
        let exit_code = match outcome {
            Outcome::Exited(status) => status.code(),
            Outcome::TimedOut => bail!(
                "profile {profile}: nextest did not finish in {:?}: the limit did not stop the hanging test\n{output}",
                start.elapsed()
            ),
            Outcome::Interrupted(signal) => crate::interrupted(signal),
        };
        match judge(exit_code, &output, limit) {
            Ok(account) => println!("nextest-selftest: profile {profile}: ok: {account}"),
            Err(problem) => bail!("profile {profile}: {problem}\nnextest's output:\n{output}"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repository_config() -> String {
        std::fs::read_to_string(crate::workspace_root().join(CONFIG)).unwrap()
    }

    #[test]
    fn the_repository_config_limits_every_test_in_every_profile() {
        let text = repository_config();
        let problems = check_config(&text).unwrap();
        assert!(problems.is_empty(), "{problems:#?}");
        // CI runs every test once: a flaky test fails, it is not retried.
        let config: toml::Value = text.parse().unwrap();
        let ci = &config["profile"]["ci"];
        assert_eq!(ci.get("retries").and_then(|r| r.as_integer()), Some(0));
        assert_eq!(ci.get("fail-fast").and_then(|f| f.as_bool()), Some(false));
        // The self-test's fixture has a short limit, below a slow test's
        // 1.2 s sleep times terminate-after.
        let fixture = fixture_limit(&text).unwrap();
        assert!(fixture.period < Duration::from_millis(1_200), "{fixture:?}");
        assert!(
            fixture.total() > Duration::from_millis(1_200),
            "{fixture:?}"
        );
        assert!(fixture.total() <= Duration::from_secs(10), "{fixture:?}");
    }

    #[test]
    fn a_profile_without_termination_is_caught() {
        let base = "[profile.ci]\n[profile.verify]\n";
        let problems = |text: &str| check_config(&format!("{text}\n{base}")).unwrap().join("\n");
        // Nothing set: nextest's built-in slow-timeout never terminates.
        assert!(problems("[profile.default]").contains("never terminates"));
        // A period alone only marks tests slow.
        assert!(problems("[profile.default]\nslow-timeout = \"30s\"").contains("only marks"));
        assert!(
            problems("[profile.default]\nslow-timeout = { period = \"30s\" }")
                .contains("no terminate-after")
        );
        assert!(problems(
            "[profile.default]\nslow-timeout = { period = \"30s\", terminate-after = 2, on-timeout = \"pass\" }"
        )
        .contains("must fail"));
        assert!(problems(
            "[profile.default]\nslow-timeout = { period = \"1h\", terminate-after = 4 }"
        )
        .contains("is not within"));
        // A good default makes all three profiles good.
        assert_eq!(
            problems("[profile.default]\nslow-timeout = { period = \"30s\", terminate-after = 4 }"),
            ""
        );
    }

    #[test]
    fn a_profile_or_override_that_drops_termination_is_caught() {
        let good = "[profile.default]\nslow-timeout = { period = \"10s\", terminate-after = 3 }\n[profile.verify]\n";
        // The ci profile's own slow-timeout replaces the default's.
        let p = check_config(&format!("{good}[profile.ci]\nslow-timeout = \"10s\"\n")).unwrap();
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("profile.ci:"), "{p:?}");
        // Overrides are checked in every profile; the default profile's
        // apply to all of them.
        for profile in PROFILES {
            let p = check_config(&format!(
                "{good}[profile.ci]\n[[profile.{profile}.overrides]]\nfilter = \"test(x)\"\nslow-timeout = {{ period = \"5s\" }}\n"
            ))
            .unwrap();
            assert_eq!(p.len(), 1, "{p:?}");
            assert!(
                p[0].starts_with(&format!("profile.{profile}.overrides (filter \"test(x)\")")),
                "{p:?}"
            );
        }
        // A missing profile is a problem of its own.
        let p = check_config(good).unwrap();
        assert_eq!(p, ["profile.ci is missing"]);
    }

    #[test]
    fn durations_parse_like_nextest_writes_them() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("1m 30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_duration(""), None);
        assert_eq!(parse_duration("30"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration("3 weeks"), None);
    }

    /// nextest 0.9.143's output for the fixture under the ci profile.
    const TIMED_OUT_RUN: &str = "\
────────────
 Nextest run ID 85bc61e9-b191-4598-8930-7151420071ff with nextest profile: ci
    Starting 2 tests across 1 binary
        SLOW [>  1.000s] (───) xtask::nextest_timeout_fixture slow_but_within_the_limit
        SLOW [>  1.000s] (───) xtask::nextest_timeout_fixture hangs_forever
        PASS [   1.212s] (1/2) xtask::nextest_timeout_fixture slow_but_within_the_limit
        SLOW [>  2.000s] (───) xtask::nextest_timeout_fixture hangs_forever
 TERMINATING [>  3.000s] (───) xtask::nextest_timeout_fixture hangs_forever
     TIMEOUT [   3.020s] (2/2) xtask::nextest_timeout_fixture hangs_forever
  stdout ───

    running 1 test

    (test timed out)

────────────
     Summary [   3.021s] 2 tests run: 1 passed (1 slow), 1 timed out, 0 skipped
        SLOW [   1.212s] (1/2) xtask::nextest_timeout_fixture slow_but_within_the_limit
     TIMEOUT [   3.020s] (2/2) xtask::nextest_timeout_fixture hangs_forever
error: test run failed
";

    const FIXTURE: Limit = Limit {
        period: Duration::from_secs(1),
        terminate_after: 3,
        grace: Duration::from_secs(1),
    };

    #[test]
    fn a_terminated_hang_passes_the_judge() {
        let account = judge(Some(100), TIMED_OUT_RUN, FIXTURE).unwrap();
        assert!(account.contains("terminated after 3.0s"), "{account}");
    }

    #[test]
    fn the_judge_fails_a_run_where_the_limit_did_not_work() {
        // The run passed: the failure was not reported.
        assert!(judge(Some(0), TIMED_OUT_RUN, FIXTURE)
            .unwrap_err()
            .contains("exited with Some(0)"));
        // The hang ended some other way than by the limit.
        let failed = TIMED_OUT_RUN.replace("TIMEOUT [   3.020s]", "FAIL [   0.020s]");
        assert!(judge(Some(100), &failed, FIXTURE)
            .unwrap_err()
            .contains("ended FAIL, not TIMEOUT"));
        // Terminated far later than the limit says.
        let late = TIMED_OUT_RUN.replace("TIMEOUT [   3.020s]", "TIMEOUT [  60.000s]");
        assert!(judge(Some(100), &late, FIXTURE)
            .unwrap_err()
            .contains("not between"));
        // A slow test within the limit must pass.
        let slow_killed = TIMED_OUT_RUN.replace(
            "PASS [   1.212s] (1/2) xtask::nextest_timeout_fixture slow_but_within_the_limit",
            "TIMEOUT [   1.212s] (1/2) xtask::nextest_timeout_fixture slow_but_within_the_limit",
        );
        assert!(judge(Some(100), &slow_killed, FIXTURE)
            .unwrap_err()
            .contains("not PASS"));
        // No report at all.
        assert!(judge(Some(100), "error: building failed", FIXTURE)
            .unwrap_err()
            .contains("no result"));
    }
}
