//! After the fault phase the healed cluster must elect a leader and commit
//! new requests on every replica within bounded simulated time.

use paxos_sim::{run, FailureKind, SimConfig};

#[test]
fn a_fault_free_cluster_converges() {
    for replicas in [3, 5] {
        let mut cfg = SimConfig::new(5);
        cfg.replicas = Some(replicas);
        cfg.steps = 0;
        let r = run(&cfg);
        assert!(r.failure.is_none(), "{replicas} replicas: {:?}", r.failure);
        // Reads that skip the log are answered without an acknowledged
        // decree: they count as answered probes too.
        let answered = r.acked_requests + r.faults.log_free_reads + r.faults.follower_reads;
        assert!(
            answered >= 2 * 3,
            "each of 3 clients got its probes answered: {r:?}"
        );
        assert!(r.commits > 0);
    }
}

#[test]
fn healed_clusters_converge_after_faults() {
    for seed in 300..312 {
        let mut cfg = SimConfig::new(seed);
        cfg.steps = 2_000;
        let r = run(&cfg);
        assert!(r.failure.is_none(), "seed {seed}: {:?}", r.failure);
        assert!(r.acked_requests > 0);
    }
}

#[test]
fn the_liveness_check_fails_a_cluster_that_cannot_converge_in_time() {
    // With no fault phase and a deadline shorter than one election timeout,
    // no leader can exist yet: the checker must say so, not pass vacuously.
    let mut cfg = SimConfig::new(9);
    cfg.steps = 0;
    cfg.liveness_timeout_us = 1_000;
    let r = run(&cfg);
    let (failure, _) = r.failure.expect("liveness must fail");
    assert_eq!(failure.kind, FailureKind::Liveness, "{failure}");
    assert!(failure.detail.contains("did not converge"), "{failure}");
}
