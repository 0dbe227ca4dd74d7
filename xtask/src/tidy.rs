//! Structural checks on the repository, run by `cargo xtask tidy`, by
//! `cargo xtask ci`, and as `cargo test -p xtask`.
//!
//! 1. **Layering.** Each crate's workspace dependencies in its Cargo.toml are
//!    exactly the ones its `**Depends on:**` line in ARCHITECTURE.md names, and
//!    every workspace member has a section there. Dev-dependencies may not
//!    create a cycle.
//! 2. **Sans-IO core.** paxos-core does not depend on tokio and its sources
//!    use no `std::time`, `std::net`, `std::thread`, `std::fs`, tokio or
//!    clock reads.
//! 3. **Test hygiene.** No test anywhere is marked ignored.
//! 4. **Docs.** Every crate's root file opens with a `//!` doc comment.
//! 5. **Layout.** Every workspace member is a directory at the top level of
//!    the workspace, next to `Cargo.toml` (as the design card lists them),
//!    and there is no `crates/` folder.

use anyhow::{Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A workspace member: its name, directory and internal dependencies.
#[derive(Debug)]
struct Member {
    name: String,
    dir: PathBuf,
    deps: BTreeSet<String>,
    dev_deps: BTreeSet<String>,
}

/// Runs every check and returns the problems found (empty when tidy).
pub fn check(root: &Path) -> Result<Vec<String>> {
    let members = members(root)?;
    let mut problems = Vec::new();
    check_layering(root, &members, &mut problems)?;
    check_sans_io_core(&members, &mut problems)?;
    check_no_ignored_tests(root, &mut problems)?;
    check_crate_docs(&members, &mut problems)?;
    check_layout(root, &members, &mut problems);
    Ok(problems)
}

fn members(root: &Path) -> Result<Vec<Member>> {
    let text = std::fs::read_to_string(root.join("Cargo.toml")).context("reading Cargo.toml")?;
    let manifest: toml::Value = text.parse().context("parsing Cargo.toml")?;
    let paths = manifest
        .get("workspace")
        .and_then(|w| w.get("members"))
        .and_then(|m| m.as_array())
        .context("Cargo.toml has no [workspace] members")?;
    let mut out = Vec::new();
    for p in paths {
        let rel = p.as_str().context("a workspace member is not a string")?;
        let dir = root.join(rel);
        let path = dir.join("Cargo.toml");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let m: toml::Value = text
            .parse()
            .with_context(|| format!("parsing {}", path.display()))?;
        let name = m
            .get("package")
            .and_then(|p| p.get("name"))
            .and_then(|n| n.as_str())
            .with_context(|| format!("{} has no package name", path.display()))?
            .to_string();
        let mut deps = BTreeSet::new();
        let mut dev_deps = BTreeSet::new();
        collect_internal(&m, &mut deps, &mut dev_deps);
        if let Some(targets) = m.get("target").and_then(|t| t.as_table()) {
            for t in targets.values() {
                collect_internal(t, &mut deps, &mut dev_deps);
            }
        }
        out.push(Member {
            name,
            dir,
            deps,
            dev_deps,
        });
    }
    Ok(out)
}

fn check_layout(root: &Path, members: &[Member], problems: &mut Vec<String>) {
    for m in members {
        let top_level = m
            .dir
            .strip_prefix(root)
            .is_ok_and(|rel| rel.components().count() == 1);
        if !top_level {
            problems.push(format!(
                "{}: workspace member `{}` is not a top-level directory of the workspace",
                m.dir.display(),
                m.name
            ));
        }
    }
    if root.join("crates").exists() {
        problems.push("crates/: members live at the top level of the workspace".into());
    }
}

fn is_internal(name: &str) -> bool {
    name.starts_with("paxos-") || name == "xtask"
}

fn collect_internal(
    table: &toml::Value,
    deps: &mut BTreeSet<String>,
    dev_deps: &mut BTreeSet<String>,
) {
    for key in ["dependencies", "build-dependencies", "dev-dependencies"] {
        let set = if key == "dev-dependencies" {
            &mut *dev_deps
        } else {
            &mut *deps
        };
        if let Some(t) = table.get(key).and_then(|d| d.as_table()) {
            set.extend(t.keys().filter(|k| is_internal(k)).cloned());
        }
    }
}

/// Parses `### name` sections and their `**Depends on:**` lines.
fn documented_deps(architecture: &str) -> BTreeMap<String, Option<BTreeSet<String>>> {
    let mut out = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in architecture.lines() {
        if let Some(h) = line.strip_prefix("### ") {
            let name = h.trim().trim_matches('`').to_string();
            out.insert(name.clone(), None);
            current = Some(name);
        } else if let Some(rest) = line.trim().strip_prefix("**Depends on:**") {
            if let Some(name) = &current {
                let deps: BTreeSet<String> = rest
                    .split(|c: char| c == ',' || c.is_whitespace())
                    .map(|w| w.trim_matches(|c: char| c == '`' || c == '.' || c == ';'))
                    .filter(|w| is_internal(w))
                    .map(str::to_string)
                    .collect();
                out.insert(name.clone(), Some(deps));
            }
        }
    }
    out
}

fn check_layering(root: &Path, members: &[Member], problems: &mut Vec<String>) -> Result<()> {
    let arch =
        std::fs::read_to_string(root.join("ARCHITECTURE.md")).context("reading ARCHITECTURE.md")?;
    let documented = documented_deps(&arch);
    for m in members {
        match documented.get(&m.name) {
            None => problems.push(format!("ARCHITECTURE.md has no `### {}` section", m.name)),
            Some(None) => problems.push(format!(
                "ARCHITECTURE.md's `{}` section has no **Depends on:** line",
                m.name
            )),
            Some(Some(doc)) if doc != &m.deps => problems.push(format!(
                "{}: Cargo.toml depends on {:?} but ARCHITECTURE.md says {:?}",
                m.name, m.deps, doc
            )),
            Some(Some(_)) => {}
        }
    }
    // Normal dependencies must form a DAG (cargo enforces it), and a
    // dev-dependency must not reach back to the crate that uses it.
    let by_name: BTreeMap<&str, &Member> = members.iter().map(|m| (m.name.as_str(), m)).collect();
    for m in members {
        for d in &m.dev_deps {
            if d != &m.name && reaches(&by_name, d, &m.name) {
                problems.push(format!(
                    "{}: dev-dependency {} depends back on {}",
                    m.name, d, m.name
                ));
            }
        }
    }
    Ok(())
}

fn reaches(by_name: &BTreeMap<&str, &Member>, from: &str, target: &str) -> bool {
    let mut stack = vec![from.to_string()];
    let mut seen = BTreeSet::new();
    while let Some(n) = stack.pop() {
        if n == target {
            return true;
        }
        if !seen.insert(n.clone()) {
            continue;
        }
        if let Some(m) = by_name.get(n.as_str()) {
            stack.extend(m.deps.iter().cloned());
        }
    }
    false
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') {
                rust_files(&path, out)?;
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
    Ok(())
}

fn check_sans_io_core(members: &[Member], problems: &mut Vec<String>) -> Result<()> {
    let Some(core) = members.iter().find(|m| m.name == "paxos-core") else {
        problems.push("no paxos-core member".into());
        return Ok(());
    };
    let manifest = std::fs::read_to_string(core.dir.join("Cargo.toml"))?;
    if manifest
        .lines()
        .any(|l| l.trim_start().starts_with("tokio"))
    {
        problems.push("paxos-core must not depend on tokio".into());
    }
    // Built from parts so that this file does not trip its own check.
    let banned: Vec<String> = [
        ["std::", "time"],
        ["std::", "net"],
        ["std::", "thread"],
        ["std::", "fs"],
        ["tok", "io"],
        ["Instant::", "now"],
        ["System", "Time"],
    ]
    .iter()
    .map(|p| p.concat())
    .collect();
    let mut files = Vec::new();
    rust_files(&core.dir.join("src"), &mut files)?;
    // Test code may use threads and clocks; production code may not. Tests
    // live in `src/tests/` or after a top-level `#[cfg(test)]`.
    files.retain(|f| !f.components().any(|c| c.as_os_str() == "tests"));
    for f in files {
        let text = std::fs::read_to_string(&f)?;
        for (i, line) in text.lines().enumerate() {
            if line.starts_with("#[cfg(test)]") {
                break;
            }
            let code = line.split("//").next().unwrap_or("");
            for b in &banned {
                if code.contains(b.as_str()) {
                    problems.push(format!(
                        "{}:{}: paxos-core is sans-IO but uses `{b}`",
                        f.display(),
                        i + 1
                    ));
                }
            }
        }
    }
    Ok(())
}

fn check_no_ignored_tests(root: &Path, problems: &mut Vec<String>) -> Result<()> {
    let needle = ["#[", "ignore"].concat();
    let mut files = Vec::new();
    for m in members(root)? {
        rust_files(&m.dir, &mut files)?;
    }
    for f in files {
        let text = std::fs::read_to_string(&f)?;
        for (i, line) in text.lines().enumerate() {
            if line.contains(needle.as_str()) {
                problems.push(format!(
                    "{}:{}: ignored test; fix it or delete it",
                    f.display(),
                    i + 1
                ));
            }
        }
    }
    Ok(())
}

fn check_crate_docs(members: &[Member], problems: &mut Vec<String>) -> Result<()> {
    for m in members {
        let lib = m.dir.join("src/lib.rs");
        let main = m.dir.join("src/main.rs");
        let root_file = if lib.exists() { lib } else { main };
        let text = std::fs::read_to_string(&root_file)
            .with_context(|| format!("reading {}", root_file.display()))?;
        if !text.trim_start().starts_with("//!") {
            problems.push(format!(
                "{}: must open with a //! doc comment on the crate's role and invariants",
                root_file.display()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> PathBuf {
        crate::workspace_root()
    }

    #[test]
    fn repository_is_tidy() {
        let problems = check(&root()).unwrap();
        assert!(
            problems.is_empty(),
            "tidy problems:\n{}",
            problems.join("\n")
        );
    }

    #[test]
    fn detects_a_member_below_the_top_level() {
        let root = tempdir();
        std::fs::create_dir_all(root.join("crates/paxos-x")).unwrap();
        let member = |name: &str, dir: PathBuf| Member {
            name: name.into(),
            dir,
            deps: BTreeSet::new(),
            dev_deps: BTreeSet::new(),
        };
        let mut problems = Vec::new();
        check_layout(
            &root,
            &[
                member("paxos-x", root.join("crates/paxos-x")),
                member("paxos-y", root.join("paxos-y")),
            ],
            &mut problems,
        );
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("`paxos-x` is not a top-level directory"));
        assert!(problems[1].starts_with("crates/"));
    }

    #[test]
    fn parses_depends_on_lines() {
        let doc = "### `a-crate`\ntext\n**Depends on:** `paxos-core`, `paxos-log`.\n### paxos-b\n**Depends on:** nothing in the workspace.\n### paxos-c\n";
        let d = documented_deps(doc);
        assert_eq!(
            d["a-crate"],
            Some(["paxos-core".to_string(), "paxos-log".to_string()].into())
        );
        assert_eq!(d["paxos-b"], Some(BTreeSet::new()));
        assert_eq!(d["paxos-c"], None);
    }

    #[test]
    fn detects_a_layering_violation() {
        let m = |name: &str, deps: &[&str]| Member {
            name: name.into(),
            dir: PathBuf::new(),
            deps: deps.iter().map(|s| s.to_string()).collect(),
            dev_deps: BTreeSet::new(),
        };
        let members = [
            m("paxos-core", &["paxos-kv"]),
            m("paxos-kv", &["paxos-core"]),
        ];
        let by_name: BTreeMap<&str, &Member> =
            members.iter().map(|m| (m.name.as_str(), m)).collect();
        assert!(reaches(&by_name, "paxos-kv", "paxos-core"));
        assert!(!reaches(&by_name, "paxos-kv", "paxos-sim"));
    }

    #[test]
    fn core_sources_are_checked_for_io() {
        // The banned list is built from parts; make sure it really contains
        // the strings it means to ban.
        let dir = tempdir();
        std::fs::create_dir_all(dir.join("src")).unwrap();
        std::fs::write(dir.join("Cargo.toml"), "[dependencies]\ntokio = \"1\"\n").unwrap();
        std::fs::write(
            dir.join("src/lib.rs"),
            "use std::time::Instant;\n// std::net in a comment is fine\n",
        )
        .unwrap();
        let members = vec![Member {
            name: "paxos-core".into(),
            dir: dir.clone(),
            deps: BTreeSet::new(),
            dev_deps: BTreeSet::new(),
        }];
        let mut problems = Vec::new();
        check_sans_io_core(&members, &mut problems).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("tokio"));
        assert!(problems[1].contains(":1:"));
    }

    /// A fresh directory per call: tests run in parallel in one process.
    fn tempdir() -> PathBuf {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let d = std::env::temp_dir().join(format!("xtask-tidy-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }
}
