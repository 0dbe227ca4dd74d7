//! Keeps paxos-core's planted bugs out of production: a release build of
//! the `paxos-kv` binary that contains them refuses to start.
//!
//! paxos-core compiles its deliberate protocol bugs (for the simulator's
//! teeth tests) only with its `planted-bugs` feature, and nothing here ever
//! plants one. But Cargo unifies features within one build, and paxos-sim
//! turns that feature on through a dev-dependency, so `cargo build --release
//! --workspace --all-targets` links this binary against a paxos-core that
//! contains the bug code. A feature cannot be forbidden to a dependent, so
//! the binary checks [`paxos_core::PLANTED_BUGS_COMPILED`] at start-up.
//!
//! Debug builds may carry the code (the workspace's tests spawn this binary
//! after a unified build); release builds (no `debug_assertions`) may not.

/// This release build contains paxos-core's planted-bug code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "this release build of paxos-kv was compiled with paxos-core's `planted-bugs` feature \
     (deliberate protocol bugs for the simulator's tests), most likely through Cargo feature \
     unification with paxos-sim's dev-dependencies (e.g. `cargo build --release --workspace \
     --all-targets`); refusing to start. Build the binary on its own: \
     `cargo build --release -p paxos-kv`"
)]
pub struct PlantedBugsInRelease;

/// Fails if this build must not run: a release build with planted bugs.
pub fn check() -> Result<(), PlantedBugsInRelease> {
    refuse_planted_bugs(paxos_core::PLANTED_BUGS_COMPILED, cfg!(debug_assertions))
}

/// The rule behind [`check`], for a build that does or does not contain the
/// planted-bug code and does or does not have `debug_assertions`.
pub fn refuse_planted_bugs(
    planted_bugs_compiled: bool,
    debug_assertions: bool,
) -> Result<(), PlantedBugsInRelease> {
    if planted_bugs_compiled && !debug_assertions {
        Err(PlantedBugsInRelease)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_release_build_with_planted_bugs_is_refused() {
        assert_eq!(refuse_planted_bugs(true, false), Err(PlantedBugsInRelease));
        assert_eq!(refuse_planted_bugs(true, true), Ok(()));
        assert_eq!(refuse_planted_bugs(false, false), Ok(()));
        assert_eq!(refuse_planted_bugs(false, true), Ok(()));
    }

    #[test]
    fn the_refusal_names_the_cause_and_the_fix() {
        let text = PlantedBugsInRelease.to_string();
        assert!(text.contains("planted-bugs"), "{text}");
        assert!(text.contains("cargo build --release -p paxos-kv"), "{text}");
    }
}
