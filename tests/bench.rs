//! Smoke runs of the side-by-side benchmarks (`--quick`): each starts a real three-node
//! Bowline cluster and a real three-member etcd cluster (Debian's `etcd-server`, which
//! `scripts/test` installs) and drives both with the same client loop. These check that the
//! harness measures what it claims (both systems ran, no request failed, every figure is
//! present); the figures themselves are reported, never asserted.

mod common;

use serde_json::Value;

fn bench(args: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let out = std::process::Command::new(common::bowline_bin())
        .arg("bench")
        .args(args)
        .args(["--quick", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    println!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(
        out.status.success(),
        "bowline bench {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap()
}

fn assert_both_systems_ran_cleanly(rows: &Value) {
    let rows = rows.as_array().unwrap();
    assert!(!rows.is_empty());
    for row in rows {
        for system in ["bowline", "etcd"] {
            let r = &row["results"][system];
            assert!(
                r["ops"].as_u64().unwrap() > 0,
                "{system} did nothing: {row}"
            );
            assert_eq!(r["errors"], 0, "{system} had errors: {row}");
            assert!(r["latency"]["p99_ms"].as_f64().unwrap() > 0.0, "{row}");
            // The run started both clusters, so it knows their processes and counts their CPU.
            for side in ["servers_us", "client_us"] {
                assert!(
                    r["cpu"][side].as_f64().is_some_and(|us| us >= 0.0),
                    "{system} has no {side} CPU per operation: {row}"
                );
            }
            assert!(
                r["rss_mib"].as_f64().is_some_and(|mib| mib > 0.0),
                "{system} has no server memory: {row}"
            );
        }
        assert!(row["throughput_ratio"].as_f64().unwrap() > 0.0, "{row}");
    }
}

#[test]
fn put_bench_measures_bowline_and_etcd_side_by_side() {
    let rows = bench(&["put"]);
    assert_both_systems_ran_cleanly(&rows);
    let concurrencies: Vec<u64> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["concurrency"].as_u64().unwrap())
        .collect();
    assert_eq!(concurrencies, [1, 16, 64, 256]);
}

#[test]
fn put_bench_in_rounds_reports_the_median_round_and_keeps_every_round() {
    let rows = bench(&["put", "--concurrency", "16", "--rounds", "3"]);
    assert_both_systems_ran_cleanly(&rows);
    let row = &rows.as_array().unwrap()[0];
    let rounds = row["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 3, "{row}");
    let mut ratios: Vec<f64> = rounds
        .iter()
        .map(|r| {
            r["bowline"]["ops_per_sec"].as_f64().unwrap()
                / r["etcd"]["ops_per_sec"].as_f64().unwrap()
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    let median = row["throughput_ratio"].as_f64().unwrap();
    assert!(
        (median - ratios[1]).abs() < 1e-9,
        "median {median} of {ratios:?}"
    );
    for round in rounds {
        for system in ["bowline", "etcd"] {
            assert!(round[system]["ops"].as_u64().unwrap() > 0, "{round}");
            assert_eq!(round[system]["errors"], 0, "{round}");
        }
    }
}

#[test]
fn read_bench_covers_both_consistencies_on_leader_and_follower() {
    let rows = bench(&["read"]);
    assert_both_systems_ran_cleanly(&rows);
    let workloads: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["workload"].as_str().unwrap())
        .collect();
    assert_eq!(
        workloads,
        [
            "read linearizable leader",
            "read linearizable follower",
            "read stale leader",
            "read stale follower"
        ]
    );
}

#[test]
fn failover_bench_kills_each_leader_and_measures_the_write_gap() {
    let runs = bench(&["failover"]);
    let runs = runs.as_array().unwrap();
    for system in ["bowline", "etcd"] {
        let run = runs
            .iter()
            .find(|r| r["system"] == system)
            .unwrap_or_else(|| panic!("no {system} run: {runs:?}"));
        assert!(
            run["write_gap_ms"].is_u64(),
            "{system} never accepted a write after its leader was killed: {run}"
        );
        assert!(run["acknowledged"].as_u64().unwrap() > 0, "{run}");
    }
}

#[test]
fn disk_bench_reports_data_directory_and_memory_for_both() {
    let points = bench(&["disk"]);
    let points = points.as_array().unwrap();
    for system in ["bowline", "etcd"] {
        let last = points
            .iter()
            .rfind(|p| p["system"] == system)
            .unwrap_or_else(|| panic!("no {system} point: {points:?}"));
        assert_eq!(last["writes"], 2000, "{last}");
        assert!(last["data_dir_mib"].as_f64().unwrap() > 0.0, "{last}");
        assert!(last["rss_mib"].as_f64().unwrap() > 0.0, "{last}");
    }
}

#[test]
fn watch_bench_delivers_every_event_to_every_watcher_on_both_systems() {
    for per_stream in ["100", "1"] {
        let rows = bench(&["watch", "--per-stream", per_stream]);
        let rows = rows.as_array().unwrap();
        let systems: Vec<&str> = rows.iter().map(|r| r["system"].as_str().unwrap()).collect();
        assert_eq!(systems, ["bowline", "etcd"], "{rows:?}");
        for row in rows {
            assert_eq!(row["missed"], 0, "{row}");
            assert_eq!(row["per_stream"].as_u64().unwrap().to_string(), per_stream);
            assert!(row["writes"].as_u64().unwrap() > 0, "{row}");
            assert!(row["delivery"]["p99_ms"].as_f64().unwrap() > 0.0, "{row}");
        }
    }
}
