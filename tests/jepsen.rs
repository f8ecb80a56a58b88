//! The linearizability check CI runs on every submission: `bowline jepsen` with clients
//! reading and writing registers on a three-node cluster of real processes while every
//! node crashes at once, the leader is SIGKILLed, paused and cut off (iptables in network
//! namespaces, needs root), and a follower is wiped and rejoins. Every register's history must be linearizable; and with stale
//! reads, the same run must be caught out, so the check is known to have teeth.

mod common;

use std::sync::Mutex;

/// The runs share two cores with everything they start; one at a time keeps them honest.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs `bowline jepsen ARGS --json F`; returns whether it exited 0 and its JSON result.
fn jepsen(args: &[&str]) -> (bool, serde_json::Value) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("jepsen.json");
    let out = std::process::Command::new(common::bowline_bin())
        .arg("jepsen")
        .args(args)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    println!("{}", String::from_utf8_lossy(&out.stdout));
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    let result = std::fs::read(&json)
        .map(|bytes| serde_json::from_slice(&bytes).unwrap())
        .unwrap_or_else(|e| {
            panic!(
                "no result written ({e}): {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    (out.status.success(), result)
}

#[test]
fn register_histories_stay_linearizable_through_crashes_kills_pauses_partitions_and_wipes() {
    let (ok, r) = jepsen(&[
        "--nemesis",
        "crash-all,kill,pause,partition,wipe-follower",
        "--fault-ms",
        "1500",
        "--seconds",
        "16",
    ]);
    assert!(ok, "bowline jepsen failed: {r:#}");
    assert_eq!(r["linearizable"], true, "{r:#}");
    assert!(r["writes_ok"].as_u64().unwrap() > 100, "{r:#}");
    assert!(r["reads_ok"].as_u64().unwrap() > 100, "{r:#}");
    let faults: Vec<&str> = r["faults"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["fault"].as_str().unwrap())
        .collect();
    assert_eq!(
        faults,
        ["crash-all", "kill", "pause", "partition", "wipe-follower"],
        "every fault must have been injected once: {r:#}"
    );
}

#[test]
fn register_histories_stay_linearizable_through_planned_leader_stops() {
    let (ok, r) = jepsen(&[
        "--nemesis",
        "terminate",
        "--fault-ms",
        "1000",
        "--seconds",
        "8",
    ]);
    assert!(ok, "bowline jepsen failed: {r:#}");
    assert_eq!(r["linearizable"], true, "{r:#}");
    assert!(r["writes_ok"].as_u64().unwrap() > 100, "{r:#}");
    let stops = r["faults"].as_array().unwrap().len();
    assert!(stops >= 2, "the leader was stopped {stops} times: {r:#}");
}

#[test]
fn stale_reads_are_caught_as_not_linearizable() {
    let (ok, r) = jepsen(&[
        "--consistency",
        "stale",
        "--nemesis",
        "pause",
        "--seconds",
        "5",
    ]);
    assert!(!ok, "stale reads passed the check: {r:#}");
    assert_eq!(r["linearizable"], false, "{r:#}");
    assert!(
        r["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["culprit"]["kind"] == "read"),
        "a stale read should be named as where to look: {r:#}"
    );
}

#[test]
fn an_even_or_out_of_range_cluster_size_is_refused_before_anything_starts() -> std::io::Result<()> {
    for nodes in ["4", "9"] {
        let out = std::process::Command::new(common::bowline_bin())
            .args(["jepsen", "--nodes", nodes, "--seconds", "1"])
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "--nodes {nodes} was accepted");
        assert!(stderr.contains("--nodes"), "{stderr}");
        assert!(
            !stderr.contains("starting"),
            "a cluster was started: {stderr}"
        );
    }
    Ok(())
}
