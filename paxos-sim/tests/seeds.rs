//! A few hundred seeds with every fault class must pass all checkers.

use paxos_sim::{run_many, RunOptions};

#[test]
fn hundreds_of_seeds_pass_with_all_fault_classes() {
    let opts = RunOptions {
        start_seed: 1_000,
        seeds: 400,
        steps: 6_000,
        jobs: 2,
        ..RunOptions::default()
    };
    let summary = run_many(&opts, &|_| {});
    let failures: Vec<String> = summary
        .failures
        .iter()
        .map(|r| {
            format!(
                "{}: {}",
                opts.repro_command(r.seed),
                r.failure
                    .as_ref()
                    .map(|(f, _)| f.to_string())
                    .unwrap_or_default()
            )
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} failing seeds:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(summary.seeds_run, 400);
    let f = summary.faults;
    let classes = [
        ("crashes", f.crashes),
        (
            "crashes with pending persists",
            f.crashes_with_pending_persists,
        ),
        ("torn persists", f.torn_persists),
        ("restarts", f.restarts),
        ("partitions", f.partitions),
        ("leader isolations", f.leader_isolations),
        ("one-way cuts", f.one_way_cuts),
        ("relinquishes", f.relinquishes),
        ("vetoes", f.vetoes),
        ("weather changes", f.weather_changes),
        ("dropped messages", f.messages_dropped),
        ("duplicated messages", f.messages_duplicated),
        ("codec fuzz", f.codec_fuzzed),
        ("process pauses", f.pauses),
        ("replayed messages", f.messages_replayed),
        ("checkpoints", f.checkpoints),
        ("state transfers", f.state_transfers),
        ("logs on persistent memory", f.pm_log_starts),
        ("membership changes", f.reconfigurations_completed),
        ("spares started", f.spares_started),
    ];
    for (name, count) in classes {
        assert!(count > 0, "fault class {name} never happened: {f:?}");
    }
    assert!(
        summary.faults.operations_checked > 0,
        "the clients' history was checked for linearizability: {}",
        summary.line()
    );
    assert!(
        summary.commits > 0 && summary.acked_requests > 0,
        "{}",
        summary.line()
    );
    println!("{}", summary.line());
}
