//! Nothing acknowledged is ever lost: SIGKILL every node while clients write, restart, and
//! check that every acknowledged write is there.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn killing_every_node_during_writes_loses_no_acknowledged_write() {
    kill_every_node_during_writes(Tuning::default(), false).await;
}

/// The applied state lives in memory: a restarted node rebuilds it from its latest snapshot
/// plus the log after it. Snapshots every 50 entries (and the log below them purged) make
/// every restart here go that way.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_restarted_after_snapshots_rebuilds_every_acknowledged_write() {
    kill_every_node_during_writes(
        Tuning {
            snapshot_every: 50,
            logs_to_keep: 10,
            ..Tuning::default()
        },
        true,
    )
    .await;
}

async fn kill_every_node_during_writes(tuning: Tuning, expect_snapshots: bool) {
    let mut cluster = Cluster::start_with(3, tuning).await;
    cluster.wait_for_leader().await;
    // Short timeouts so writers notice the crash quickly and stop.
    let client = cluster.client_with_timeouts(Duration::from_secs(2), Duration::from_secs(1));

    // Phase 1: four writers record every acknowledged write (bounded: at most 2,000 each).
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut writers = Vec::new();
    for w in 0..4 {
        let client = client.clone();
        let acknowledged = acknowledged.clone();
        writers.push(tokio::spawn(async move {
            let mut failures = 0;
            for i in 0..2_000 {
                let name = format!("w{w}-{i}");
                match register_service(&client, &name).await {
                    Ok(_) => acknowledged.lock().unwrap().push(name),
                    Err(_) => {
                        failures += 1;
                        if failures > 3 {
                            return;
                        }
                    }
                }
            }
        }));
    }

    // Phase 2: once writes are flowing, SIGKILL all three nodes at once.
    Cluster::eventually("at least 100 writes acknowledged", || {
        let n = acknowledged.lock().unwrap().len();
        async move { (n >= 100).then_some(()) }
    })
    .await;
    for i in 0..cluster.nodes.len() {
        cluster.kill(i);
    }
    for w in writers {
        w.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() >= 100);

    // Phase 3: restart every node from its data directory.
    for i in 0..cluster.nodes.len() {
        cluster.spawn(i);
    }
    cluster.wait_for_leader().await;
    if expect_snapshots {
        for i in 0..cluster.nodes.len() {
            let status = cluster.status(i).await.expect("status after restart");
            assert!(
                status.snapshot_index > 0 && status.purged_index > 0,
                "node {} restarted without a snapshot and a purged log: {status:?}",
                cluster.nodes[i].id
            );
        }
    }

    // Phase 4: every acknowledged write is present, on every node.
    for i in 0..cluster.nodes.len() {
        let names = service_names(&cluster.client_for(i)).await;
        let missing: Vec<_> = acknowledged.iter().filter(|n| !names.contains(n)).collect();
        assert!(
            missing.is_empty(),
            "node {} lost {} of {} acknowledged writes, e.g. {:?}",
            cluster.nodes[i].id,
            missing.len(),
            acknowledged.len(),
            &missing[..missing.len().min(5)]
        );
    }
}
