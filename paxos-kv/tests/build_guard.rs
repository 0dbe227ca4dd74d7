//! The `paxos-kv` binary of this very build starts, or refuses to, exactly
//! as `build_guard` decides: it refuses only when paxos-core's planted-bug
//! code was compiled in (e.g. by feature unification with paxos-sim's
//! dev-dependencies) and `debug_assertions` are off. `cargo test -p
//! paxos-kv` checks that it starts; `cargo test --release --workspace`
//! (which unifies the feature) checks that it refuses.

use std::process::Command;

#[test]
fn the_binary_refuses_to_start_exactly_when_a_release_build_has_planted_bugs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new(env!("CARGO_BIN_EXE_paxos-kv"))
        .args(["init", "--nodes", "1", "--dir"])
        .arg(dir.path())
        .output()
        .expect("run paxos-kv");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let must_refuse = paxos_core::PLANTED_BUGS_COMPILED && !cfg!(debug_assertions);
    assert_eq!(
        out.status.success(),
        !must_refuse,
        "planted bugs compiled: {}, debug assertions: {}; status {}; stderr: {stderr}",
        paxos_core::PLANTED_BUGS_COMPILED,
        cfg!(debug_assertions),
        out.status
    );
    assert_eq!(stderr.contains("planted-bugs"), must_refuse, "{stderr}");
    if must_refuse {
        assert_eq!(out.status.code(), Some(2), "{stderr}");
    }
}
