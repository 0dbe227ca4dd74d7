//! Simulator throughput: one seed's run (fault phase + liveness phase),
//! which bounds how many seeds `cargo xtask sim --seeds N` gets through.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use paxos_sim::{run, SimConfig};

fn one_seed(c: &mut Criterion) {
    let mut group = c.benchmark_group("sim_run");
    for replicas in [3usize, 5] {
        let mut cfg = SimConfig::new(12_345);
        cfg.replicas = Some(replicas);
        cfg.steps = 5_000;
        let steps = run(&cfg).steps;
        group.throughput(Throughput::Elements(steps));
        group.bench_function(format!("{replicas}_replicas_5k_steps"), |b| {
            b.iter(|| run(&cfg));
        });
    }
    group.finish();
}

criterion_group!(benches, one_seed);
criterion_main!(benches);
