//! The short chaos run CI does on every submission: SIGKILL the leader of a three-node
//! cluster of real processes while 8 writers and a watcher per node run; fail on any lost
//! acknowledged write, watch gap or out-of-order event. Timings are reported, not asserted.

mod common;

#[test]
fn killing_the_leader_loses_no_write_and_leaves_no_watch_gap() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("chaos.json");
    let out = std::process::Command::new(common::bowline_bin())
        .args(["chaos", "kill-leader", "--writers", "8", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "chaos run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let r = &results[0];
    assert!(
        r["acknowledged"].as_u64().unwrap() > 0,
        "no write was acknowledged: {r}"
    );
    assert_eq!(r["lost"], 0, "{r}");
    assert_eq!(r["watch_gaps"], 0, "{r}");
    assert_eq!(r["watch_disorder"], 0, "{r}");
    assert!(
        r["new_leader_ms"].is_u64(),
        "no new leader was observed: {r}"
    );
}
