//! Transparent huge pages for the node's heap.
//!
//! Why: the KV store is a hash table of a few hundred thousand entries plus
//! one key and one value allocation each, tens of MiB touched at random. With
//! 4 KiB pages almost every SET misses the TLB as well as the cache (a page
//! walk on top of each of its 3–4 cache misses). On hosts where THP is in
//! `madvise` mode (the common default), glibc backs its heap with huge pages
//! only when started with `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`; tunables
//! are read once by the dynamic loader, so the only way to turn it on from
//! inside the program is to re-execute it with the variable set (as the JDK
//! launcher does for its own environment). Measured on the 2-core bench
//! machine: 2–12% more writes/s and 3–10% less CPU per write in each of three
//! interleaved A/B pairs (docs/BENCHMARKS.md).
//!
//! The node calls [`reexec_with_huge_pages`] first thing, before any thread
//! exists. It does nothing when huge pages are already in effect, when THP
//! is `always` (glibc's heap gets them anyway) or `never`, off glibc, when
//! the variable already names the tunable (which is also what stops a
//! second re-exec), or when `tuning.transparent_huge_pages = false`.

/// The glibc tunable that makes malloc `madvise(MADV_HUGEPAGE)` its heap.
const TUNABLE: &str = "glibc.malloc.hugetlb";

/// The `GLIBC_TUNABLES` value to re-execute with, or None to go on as is.
/// `current` is the variable's value, `thp_mode` the content of
/// `/sys/kernel/mm/transparent_hugepage/enabled` (e.g. `always [madvise] never`).
pub fn tunables_for(current: Option<&str>, thp_mode: &str) -> Option<String> {
    let selected = thp_mode
        .split_whitespace()
        .find(|w| w.starts_with('[') && w.ends_with(']'))?;
    if selected != "[madvise]" {
        return None;
    }
    match current {
        Some(c) if c.contains(TUNABLE) => None,
        Some(c) if !c.is_empty() => Some(format!("{c}:{TUNABLE}=1")),
        _ => Some(format!("{TUNABLE}=1")),
    }
}

/// Re-executes this program with glibc's huge-page tunable set, if that
/// would change anything (see the module docs). Returns only when it did
/// not re-execute; a failed exec is logged and the node runs on without
/// huge pages. Call before starting any thread.
pub fn reexec_with_huge_pages() {
    if !cfg!(all(target_os = "linux", target_env = "gnu")) {
        return;
    }
    let Ok(mode) = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled") else {
        return;
    };
    let current = std::env::var("GLIBC_TUNABLES").ok();
    let Some(tunables) = tunables_for(current.as_deref(), &mode) else {
        return;
    };
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("paxos-kv: not enabling huge pages (cannot find own executable: {e})");
            return;
        }
    };
    use std::os::unix::process::CommandExt;
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("GLIBC_TUNABLES", tunables)
        .exec();
    eprintln!("paxos-kv: not enabling huge pages (re-exec failed: {err})");
}

#[cfg(test)]
mod tests {
    use super::tunables_for;

    #[test]
    fn only_in_madvise_mode_and_only_once() {
        let madvise = "always [madvise] never\n";
        assert_eq!(
            tunables_for(None, madvise).as_deref(),
            Some("glibc.malloc.hugetlb=1")
        );
        assert_eq!(
            tunables_for(Some(""), madvise).as_deref(),
            Some("glibc.malloc.hugetlb=1")
        );
        // Other tunables are kept.
        assert_eq!(
            tunables_for(Some("glibc.malloc.arena_max=2"), madvise).as_deref(),
            Some("glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1")
        );
        // Already set (by the operator, or by our own re-exec): no loop, and
        // an explicit hugetlb=0 is respected.
        assert_eq!(tunables_for(Some("glibc.malloc.hugetlb=1"), madvise), None);
        assert_eq!(tunables_for(Some("glibc.malloc.hugetlb=0"), madvise), None);
        // THP always on (heap gets huge pages anyway), off, or unreadable.
        assert_eq!(tunables_for(None, "[always] madvise never"), None);
        assert_eq!(tunables_for(None, "always madvise [never]"), None);
        assert_eq!(tunables_for(None, ""), None);
    }
}
