//! Operability: metrics, health and readiness endpoints, JSON logs, graceful SIGTERM.

mod common;

use bowline::proto::v1 as pb;
use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn admin_port_serves_metrics_health_and_readiness() {
    let cluster = Cluster::start(3).await;
    register_service(&cluster.client(), "web").await.unwrap();

    for node in &cluster.nodes {
        let (status, body) = http_get(&node.admin_addr, "/healthz").unwrap();
        assert_eq!(status, 200, "{body}");
        let (status, body) = Cluster::eventually("node ready", || {
            let r = http_get(&node.admin_addr, "/readyz");
            async move { r.filter(|(s, _)| *s == 200) }
        })
        .await;
        assert_eq!(status, 200, "{body}");
        let (status, metrics) = http_get(&node.admin_addr, "/metrics").unwrap();
        assert_eq!(status, 200);
        for name in [
            "bowline_raft_term",
            "bowline_raft_leader_id",
            "bowline_raft_applied_index",
            "bowline_raft_last_log_index",
            "bowline_raft_leader_changes_total",
            "bowline_store_objects",
        ] {
            assert!(
                metrics.contains(name),
                "node {} /metrics lacks {name}",
                node.id
            );
        }
    }
    // The request counter carries method and code labels, counted on the node that served it.
    let all: String = cluster
        .nodes
        .iter()
        .map(|n| http_get(&n.admin_addr, "/metrics").unwrap().1)
        .collect();
    assert!(
        all.contains("bowline_api_requests_total{code=\"Ok\",method=\"RegisterService\""),
        "no RegisterService request counted"
    );
    assert!(all.contains("bowline_api_request_duration_seconds_bucket"));
}

#[tokio::test(flavor = "multi_thread")]
async fn write_batches_and_read_index_sharing_are_exported() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let leader = cluster.index_of(leader);
    let follower = (leader + 1) % cluster.nodes.len();
    let proposed = |cluster: &Cluster| -> f64 {
        cluster
            .nodes
            .iter()
            .filter_map(|n| http_get(&n.admin_addr, "/metrics"))
            .filter_map(|(_, m)| metric_sample(&m, "bowline_raft_proposal_commands_sum"))
            .sum()
    };
    let before = proposed(&cluster);
    for name in ["a", "b", "c"] {
        register_service(&cluster.client(), name).await.unwrap();
    }
    assert!(
        proposed(&cluster) >= before + 3.0,
        "three writes were not counted in bowline_raft_proposal_commands"
    );
    for i in [leader, follower] {
        let client = cluster.client_for(i);
        let read = get_service(&client, "a", pb::Consistency::Linearizable).await;
        assert!(read.unwrap().is_some());
        let (_, metrics) = http_get(&cluster.nodes[i].admin_addr, "/metrics").unwrap();
        let reads = metric_sample(&metrics, "bowline_read_index_batch_reads_sum").unwrap_or(0.0);
        assert!(
            reads >= 1.0,
            "node {i} counted no linearizable read: {reads}"
        );
    }
    let (_, metrics) = http_get(&cluster.nodes[leader].admin_addr, "/metrics").unwrap();
    let confirmations =
        metric_sample(&metrics, "bowline_read_index_confirmations_total").unwrap_or(0.0);
    assert!(confirmations >= 1.0, "the leader counted no confirmation");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_without_quorum_is_alive_but_not_ready() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    // Kill both other nodes: the survivor loses its quorum and, within an election
    // timeout, its leader.
    let survivor = cluster.index_of(leader);
    for i in 0..cluster.nodes.len() {
        if i != survivor {
            cluster.kill(i);
        }
    }
    let addr = cluster.nodes[survivor].admin_addr.clone();
    Cluster::eventually("survivor reports not ready", || {
        let r = http_get(&addr, "/readyz");
        async move { r.filter(|(s, _)| *s == 503).map(|_| ()) }
    })
    .await;
    assert_eq!(http_get(&addr, "/healthz").unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_on_the_leader_hands_leadership_to_a_follower_before_it_exits() {
    let mut cluster = Cluster::start(3).await;
    let old = cluster.wait_for_leader().await;
    let old_index = cluster.index_of(old);
    let old_term = cluster.status(old_index).await.unwrap().term;
    register_service(&cluster.client(), "before").await.unwrap();

    let status = cluster.terminate(old_index);
    assert!(status.success(), "SIGTERM exit: {status:?}");
    let log = std::fs::read_to_string(&cluster.nodes[old_index].log_file).unwrap();
    let successor: u64 = log
        .lines()
        .find_map(|l| l.split("handed leadership to node ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no hand-off in the old leader's log:\n{log}"));
    assert_ne!(successor, old);

    // The old leader exits only once the successor leads: asked at once, with no wait for
    // an election, the successor already says so. (A leader elected less than a lease ago
    // refuses the successor's first round, so the term may be more than one higher.)
    let status = cluster.status(cluster.index_of(successor)).await.unwrap();
    assert_eq!(
        status.leader_id, successor,
        "the successor does not lead yet"
    );
    assert!(status.term > old_term);
    register_service(&cluster.client(), "after").await.unwrap();
    let names = service_names(&cluster.client()).await;
    assert!(names.contains(&"before".to_string()) && names.contains(&"after".to_string()));
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_a_node_cleanly_and_it_restarts_with_its_data() {
    let mut cluster = Cluster::start(3).await;
    let client = cluster.client();
    register_service(&client, "kept").await.unwrap();
    let status = cluster.terminate(0);
    assert!(status.success(), "SIGTERM exit: {status:?}");
    let log = std::fs::read_to_string(&cluster.nodes[0].log_file).unwrap();
    assert!(log.contains("stopped"), "no clean stop in the log");

    cluster.spawn(0);
    let restarted = cluster.client_for(0);
    let found = get_service(
        &restarted,
        "kept",
        bowline::proto::v1::Consistency::Linearizable,
    )
    .await
    .unwrap();
    assert!(found.is_some());
}

#[test]
fn json_log_format_emits_one_json_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let peer = format!("127.0.0.1:{}", free_port());
    let mut child = std::process::Command::new(bowline_bin())
        .args(["--log-format", "json", "serve", "--id", "1"])
        .arg(format!("--data-dir={}", dir.path().join("n1").display()))
        .arg(format!("--peer-addr={peer}"))
        .arg(format!("--client-addr=127.0.0.1:{}", free_port()))
        .arg(format!("--admin-addr=127.0.0.1:{}", free_port()))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Read until the start-up line appears (bounded by the process's own output).
    use std::io::BufRead;
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufReader::new(stderr).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref().take(50) {
        let line = line.unwrap();
        let value: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let started = value["message"] == "node started";
        seen.push(value);
        if started {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        seen.iter()
            .any(|v| v["message"] == "node started" && v["level"] == "INFO"),
        "{seen:?}"
    );
}

#[tokio::test]
async fn client_threads_set_how_many_workers_serve_the_client_port() {
    // Not the default (one per CPU), so the flag must have taken effect.
    let threads = std::thread::available_parallelism().map_or(1, usize::from) + 1;
    let mut cluster = Cluster::start_with(
        1,
        Tuning {
            extra_args: vec![format!("--client-threads={threads}")],
            ..Tuning::default()
        },
    )
    .await;
    cluster.wait_for_leader().await;
    let client = cluster.client();
    register_service(&client, "threads").await.unwrap();
    let found = get_service(&client, "threads", pb::Consistency::Linearizable)
        .await
        .unwrap();
    assert!(found.is_some(), "the client port answered");
    let pid = cluster.nodes[0].child.as_ref().unwrap().id();
    // A thread that ends between the listing and the read (a blocking-pool thread timing
    // out) is skipped rather than failing the test.
    let names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|comm| comm.trim().to_string())
        .collect();
    assert_eq!(
        names.iter().filter(|name| *name == "client").count(),
        threads,
        "threads: {names:?}"
    );
}
