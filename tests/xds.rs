//! xDS against real Envoy (from the pinned PyPI wheel) and real grpcio proxyless clients,
//! with a three-node Bowline cluster on loopback.

mod common;

use std::time::Duration;

use bowline::proto::v1 as pb;
use bowline::xds::bootstrap::{envoy_bootstrap, grpc_bootstrap, BootstrapOptions};
use common::mesh::{python_bin, Backend, Envoy};
use common::*;

fn endpoint_doc(id: &str, port: u16, version: &str) -> String {
    format!(
        "---\napiVersion: bowline/v1\nkind: Endpoint\nmetadata: {{name: {id}, service: web}}\nspec: {{address: 127.0.0.1, port: {port}, labels: {{version: {version}}}}}\n"
    )
}

fn split(v1: u32, v2: u32) -> String {
    format!(
        "apiVersion: bowline/v1\nkind: TrafficPolicy\nmetadata: {{name: web}}\nspec:\n  routes:\n    - match: {{pathPrefix: /}}\n      destinations: [{{subset: v1, weight: {v1}}}, {{subset: v2, weight: {v2}}}]\n      retries: {{attempts: 3, perTryTimeout: 300ms, retryOn: [5xx, connect-failure]}}\n      timeout: 1s\n"
    )
}

const MESH: &str = "apiVersion: bowline/v1
kind: Service
metadata: {name: web}
spec: {ports: [{name: http, port: 8080, protocol: http}]}
---
apiVersion: bowline/v1
kind: DestinationPolicy
metadata: {name: web}
spec:
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
  circuitBreaker: {maxConnections: 100, maxPendingRequests: 100, maxRequests: 1000, maxRetries: 3}
";

/// Starts an Envoy sidecar connected to every node of `cluster`.
async fn start_envoy(cluster: &Cluster, node_id: &str, delta: bool) -> Envoy {
    let (admin, listen) = (free_port(), free_port());
    let bootstrap = envoy_bootstrap(&BootstrapOptions {
        control_plane: cluster
            .nodes
            .iter()
            .map(|n| n.client_addr.clone())
            .collect(),
        node_id: node_id.to_string(),
        service: "client".to_string(),
        namespace: "default".to_string(),
        outbound_port: listen,
        inbound: None,
        admin_port: admin,
        delta,
        region: None,
    });
    Envoy::start(&bootstrap, admin, listen).await
}

/// Waits until Envoy's split over `n` requests is within `tolerance` of `expected`
/// (fractions per backend name, and nothing else answering).
async fn wait_for_split(
    envoy: &Envoy,
    expected: &[(&str, f64)],
    n: usize,
    tolerance: f64,
) -> std::collections::BTreeMap<String, usize> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let counts = envoy.distribution("web", n);
        let ok = expected.iter().all(|(name, share)| {
            let got = *counts.get(*name).unwrap_or(&0) as f64 / n as f64;
            (got - share).abs() <= tolerance
        }) && counts
            .keys()
            .all(|k| expected.iter().any(|(name, _)| name == k));
        if ok {
            return counts;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "split never converged to {expected:?}: last {counts:?}\n{}",
            envoy.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn proxies(cluster: &Cluster) -> Vec<pb::ProxyStatus> {
    let mut out = Vec::new();
    for node in &cluster.nodes {
        // Short timeouts: a node the test killed should not stall the survey for long.
        let options = bowline::client::ClientOptions {
            total_timeout: Duration::from_secs(2),
            attempt_timeout: Duration::from_secs(2),
            ..Default::default()
        };
        let client =
            bowline::client::Client::new(std::slice::from_ref(&node.client_addr), options).unwrap();
        if let Ok(r) = client
            .with_failover(|ch| async move {
                pb::proxies_client::ProxiesClient::new(ch)
                    .list_proxies(pb::ListProxiesRequest {})
                    .await
                    .map(tonic::Response::into_inner)
            })
            .await
        {
            out.extend(r.proxies);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn envoy_follows_weighted_splits_endpoint_changes_and_policies() {
    let cluster = Cluster::start(3).await;
    let client = cluster.client();
    let v1 = Backend::start("v1").await;
    let v2 = Backend::start("v2").await;
    let v2b = Backend::start("v2b").await;
    apply(&client, MESH).await;
    apply(
        &client,
        &(endpoint_doc("web-v1", v1.port, "v1") + &endpoint_doc("web-v2", v2.port, "v2")),
    )
    .await;
    apply(&client, &split(80, 20)).await;
    let envoys = [
        start_envoy(&cluster, "envoy-a", false).await,
        start_envoy(&cluster, "envoy-b", false).await,
    ];

    // Phase 1: 80/20 over ~1,000 requests, within a few points, on both Envoys.
    for envoy in &envoys {
        wait_for_split(envoy, &[("v1", 0.8), ("v2", 0.2)], 1000, 0.05).await;
    }
    // Phase 2: 50/50 takes effect.
    apply(&client, &split(50, 50)).await;
    for envoy in &envoys {
        wait_for_split(envoy, &[("v1", 0.5), ("v2", 0.5)], 1000, 0.06).await;
    }
    // Phase 3: a new v2 endpoint joins the subset; then the old one is marked unhealthy
    // and stops receiving traffic; then it is removed.
    apply(&client, &endpoint_doc("web-v2b", v2b.port, "v2")).await;
    wait_for_split(
        &envoys[0],
        &[("v1", 0.5), ("v2", 0.25), ("v2b", 0.25)],
        800,
        0.07,
    )
    .await;
    let mut unhealthy = endpoint("web", "web-v2", u32::from(v2.port));
    unhealthy.labels = [("version".to_string(), "v2".to_string())].into();
    unhealthy.health = Some(pb::Health {
        status: "unhealthy".into(),
        ..Default::default()
    });
    let request = pb::RegisterEndpointRequest {
        endpoint: Some(unhealthy),
        expected_revision: None,
    };
    client
        .registry_write(|mut c| {
            let request = request.clone();
            async move { c.register_endpoint(request).await }
        })
        .await
        .unwrap();
    wait_for_split(&envoys[0], &[("v1", 0.5), ("v2b", 0.5)], 600, 0.08).await;
    client
        .registry_write(|mut c| async move {
            c.deregister_endpoint(pb::DeregisterEndpointRequest {
                namespace: String::new(),
                service: "web".into(),
                id: "web-v2".into(),
                expected_revision: None,
            })
            .await
        })
        .await
        .unwrap();
    wait_for_split(&envoys[1], &[("v1", 0.5), ("v2b", 0.5)], 600, 0.08).await;

    // Phase 4: retries, timeout and the circuit breaker are in Envoy's config...
    let dump = envoys[0].admin("/config_dump?include_eds");
    assert!(
        dump.contains("\"num_retries\": 3"),
        "retries missing from config_dump"
    );
    assert!(
        dump.contains("\"per_try_timeout\": \"0.300s\""),
        "per-try timeout missing"
    );
    assert!(
        dump.contains("\"timeout\": \"1s\""),
        "route timeout missing"
    );
    assert!(
        dump.contains("\"max_connections\": 100"),
        "circuit breaker missing"
    );
    // ...and behave: with all traffic on v1 and a second v1 replica, a replica answering
    // 503 is retried onto the healthy one, so no request fails.
    let v1b = Backend::start("v1b").await;
    apply(&client, &endpoint_doc("web-v1b", v1b.port, "v1")).await;
    apply(
        &client,
        &split(100, 0)
            .replace("weight: 0", "weight: 1")
            .replace("weight: 100", "weight: 1000"),
    )
    .await;
    wait_for_split(&envoys[0], &[("v1", 0.5), ("v1b", 0.5)], 400, 0.1).await;
    v1.fail_status
        .store(503, std::sync::atomic::Ordering::Relaxed);
    let before = v1.hits.load(std::sync::atomic::Ordering::Relaxed);
    let counts = envoys[0].distribution("web", 50);
    // Every request must be answered by a healthy backend. v2 keeps a weight of 1 in 1,001
    // (a split needs it), so about one run in twenty sends a request there: that is an
    // answer too, not a failure.
    let healthy = ["v1b", "v2b"]
        .iter()
        .map(|b| counts.get(*b).copied().unwrap_or(0))
        .sum::<usize>();
    assert_eq!(healthy, 50, "a failed attempt was not retried: {counts:?}");
    assert!(
        v1.hits.load(std::sync::atomic::Ordering::Relaxed) > before,
        "the failing replica was never tried"
    );
    v1.fail_status
        .store(0, std::sync::atomic::Ordering::Relaxed);
    // A slow backend times out: a policy with a 500ms timeout and no retries gives 504.
    apply(
        &client,
        "apiVersion: bowline/v1\nkind: TrafficPolicy\nmetadata: {name: web}\nspec:\n  routes:\n    - match: {pathPrefix: /}\n      destinations: [{subset: v1, weight: 1}]\n      timeout: 500ms\n",
    )
    .await;
    Cluster::eventually("timeout policy in Envoy", || {
        let dump = envoys[0].admin("/config_dump");
        async move { dump.contains("\"timeout\": \"0.500s\"").then_some(()) }
    })
    .await;
    for b in [&v1, &v1b, &v2b] {
        b.delay_ms.store(1500, std::sync::atomic::Ordering::Relaxed);
    }
    let (status, _) = envoys[0].request("web", "/").unwrap();
    assert_eq!(status, 504, "a slow backend must time out");
    for b in [&v1, &v1b, &v2b] {
        b.delay_ms.store(0, std::sync::atomic::Ordering::Relaxed);
    }

    // Phase 5: both proxies show up in proxy status with every type ACKed.
    let status = proxies(&cluster).await;
    for id in ["envoy-a", "envoy-b"] {
        let p = status
            .iter()
            .find(|p| p.node_id == id)
            .unwrap_or_else(|| panic!("{id} not in {status:?}"));
        for t in &p.types {
            assert!(t.last_nack.is_empty(), "{id} NACKed {t:?}");
        }
        assert_eq!(p.types.len(), 4, "{p:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn envoy_keeps_serving_when_its_control_plane_node_dies_and_follows_the_next_change() {
    let mut cluster = Cluster::start(3).await;
    let client = cluster.client();
    let v1 = Backend::start("v1").await;
    let v2 = Backend::start("v2").await;
    apply(&client, MESH).await;
    apply(
        &client,
        &(endpoint_doc("web-v1", v1.port, "v1") + &endpoint_doc("web-v2", v2.port, "v2")),
    )
    .await;
    apply(&client, &split(50, 50)).await;
    let envoy = start_envoy(&cluster, "envoy-f", false).await;
    wait_for_split(&envoy, &[("v1", 0.5), ("v2", 0.5)], 400, 0.1).await;

    // Which node serves it? SIGKILL that one while requests flow.
    let serving = Cluster::eventually("envoy connected", || {
        let cluster = &cluster;
        async move {
            proxies(cluster)
                .await
                .into_iter()
                .find(|p| p.node_id == "envoy-f")
                .map(|p| p.control_plane_node)
        }
    })
    .await;
    let index = cluster.index_of(serving);
    cluster.kill(index);
    let mut failures = 0;
    for _ in 0..300 {
        match envoy.request("web", "/") {
            Some((200, _)) => {}
            _ => failures += 1,
        }
    }
    assert_eq!(
        failures, 0,
        "requests to healthy backends failed while the control plane failed over"
    );

    // Envoy reconnects to a surviving node, and the next change reaches it.
    cluster.wait_for_leader().await;
    apply(&client, &split(100, 0).replace("weight: 0", "weight: 1")).await;
    wait_for_split(&envoy, &[("v1", 1.0)], 200, 0.02).await;
    let p = proxies(&cluster)
        .await
        .into_iter()
        .find(|p| p.node_id == "envoy-f")
        .expect("reconnected");
    assert_ne!(p.control_plane_node, serving);
}

#[tokio::test(flavor = "multi_thread")]
async fn delta_xds_envoy_follows_changes() {
    let cluster = Cluster::start(3).await;
    let client = cluster.client();
    let v1 = Backend::start("v1").await;
    let v2 = Backend::start("v2").await;
    apply(&client, MESH).await;
    apply(
        &client,
        &(endpoint_doc("web-v1", v1.port, "v1") + &endpoint_doc("web-v2", v2.port, "v2")),
    )
    .await;
    apply(&client, &split(80, 20)).await;
    let envoy = start_envoy(&cluster, "envoy-delta", true).await;
    wait_for_split(&envoy, &[("v1", 0.8), ("v2", 0.2)], 1000, 0.05).await;
    apply(&client, &split(20, 80)).await;
    wait_for_split(&envoy, &[("v1", 0.2), ("v2", 0.8)], 1000, 0.05).await;
    let p = proxies(&cluster)
        .await
        .into_iter()
        .find(|p| p.node_id == "envoy-delta")
        .unwrap();
    assert_eq!(p.stream, "delta");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_config_envoy_rejects_shows_as_a_nack_and_traffic_continues() {
    let cluster = Cluster::start(3).await;
    let client = cluster.client();
    let v1 = Backend::start("v1").await;
    let v2 = Backend::start("v2").await;
    apply(&client, MESH).await;
    apply(
        &client,
        &(endpoint_doc("web-v1", v1.port, "v1") + &endpoint_doc("web-v2", v2.port, "v2")),
    )
    .await;
    apply(&client, &split(50, 50)).await;
    let envoy = start_envoy(&cluster, "envoy-n", false).await;
    wait_for_split(&envoy, &[("v1", 0.5), ("v2", 0.5)], 400, 0.1).await;

    // A regex RE2 cannot compile passes Bowline's validation but Envoy rejects the routes.
    apply(
        &client,
        "apiVersion: bowline/v1\nkind: TrafficPolicy\nmetadata: {name: web}\nspec:\n  routes:\n    - match: {pathRegex: \"(unclosed\"}\n      destinations: [{subset: v1, weight: 1}]\n",
    )
    .await;
    let nack = Cluster::eventually("NACK visible in proxy status", || {
        let cluster = &cluster;
        async move {
            proxies(cluster)
                .await
                .into_iter()
                .find(|p| p.node_id == "envoy-n")?
                .types
                .into_iter()
                .find(|t| !t.last_nack.is_empty())
        }
    })
    .await;
    assert_eq!(nack.r#type, "RDS");
    // Envoy stays on its last good config: 50/50 still.
    wait_for_split(&envoy, &[("v1", 0.5), ("v2", 0.5)], 400, 0.1).await;
    // The CLI shows it too.
    let (code, out, _) = cli(&cluster, &["proxy", "status"], None);
    assert_eq!(code, 0);
    assert!(out.contains("envoy-n") && out.contains("RDS:"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_proxyless_grpc_client_round_robins_and_follows_a_weighted_change() {
    let cluster = Cluster::start(3).await;
    let client = cluster.client();
    apply(
        &client,
        "apiVersion: bowline/v1\nkind: Service\nmetadata: {name: greeter}\nspec: {ports: [{name: grpc, port: 50051, protocol: grpc}]}\n---\napiVersion: bowline/v1\nkind: DestinationPolicy\nmetadata: {name: greeter}\nspec:\n  subsets: [{name: a, labels: {version: a}}, {name: b, labels: {version: b}}]\n",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let bootstrap = dir.path().join("bootstrap.json");
    let doc = grpc_bootstrap(&BootstrapOptions {
        control_plane: cluster
            .nodes
            .iter()
            .map(|n| n.client_addr.clone())
            .collect(),
        node_id: "grpc-client".into(),
        service: "caller".into(),
        namespace: "default".into(),
        outbound_port: 0,
        inbound: None,
        admin_port: 0,
        delta: false,
        region: None,
    });
    std::fs::write(&bootstrap, doc.to_string()).unwrap();

    // Three gRPC backends (Python, grpcio) answering with their name.
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/grpc_xds_client.py");
    let mut servers = std::process::Command::new(python_bin())
        .arg(&script)
        .arg("serve")
        .args(ports.iter().map(|p| p.to_string()))
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    for (i, port) in ports.iter().enumerate() {
        let mut e = endpoint("greeter", &format!("g{i}"), u32::from(*port));
        e.labels = [(
            "version".to_string(),
            if i < 2 { "a" } else { "b" }.to_string(),
        )]
        .into();
        let request = pb::RegisterEndpointRequest {
            endpoint: Some(e),
            expected_revision: None,
        };
        client
            .registry_write(|mut c| {
                let request = request.clone();
                async move { c.register_endpoint(request).await }
            })
            .await
            .unwrap();
    }
    // One client process, one channel, driven line by line.
    let mut caller = std::process::Command::new(python_bin())
        .arg(&script)
        .arg("call")
        .arg("xds:///greeter")
        .env("GRPC_XDS_BOOTSTRAP", &bootstrap)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = caller.stdin.take().unwrap();
    let mut output = std::io::BufReader::new(caller.stdout.take().unwrap());
    let mut call = |n: usize| -> std::collections::BTreeMap<String, usize> {
        use std::io::{BufRead, Write};
        writeln!(input, "{n}").unwrap();
        let mut line = String::new();
        output.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad client output {line:?}: {e}"))
    };
    // The node serving this client may apply the registrations a moment after the leader
    // acknowledged them: wait until the client has been sent all three.
    let deadline = std::time::Instant::now() + WAIT;
    while call(30).len() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "the client never saw all three backends"
        );
    }
    // No TrafficPolicy: round robin over all three.
    let counts = call(90);
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(
        counts.values().all(|c| (20..=40).contains(c)),
        "not round robin: {counts:?}"
    );
    // A weighted change: everything to subset b, followed by the same channel.
    apply(
        &client,
        "apiVersion: bowline/v1\nkind: TrafficPolicy\nmetadata: {name: greeter}\nspec:\n  routes:\n    - match: {pathPrefix: /}\n      destinations: [{subset: b, weight: 1}]\n",
    )
    .await;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let counts = call(20);
        if counts.keys().collect::<Vec<_>>() == vec!["g2"] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the gRPC client never followed the change: {counts:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = caller.kill();
    let _ = caller.wait();
    let _ = servers.kill();
    let _ = servers.wait();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_circuit_breaker_sheds_load_beyond_its_limits() {
    let cluster = Cluster::start(3).await;
    let client = cluster.client();
    let slow = Backend::start("slow").await;
    slow.delay_ms
        .store(800, std::sync::atomic::Ordering::Relaxed);
    apply(
        &client,
        "apiVersion: bowline/v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: [{name: http, port: 8080, protocol: http}]}\n---\napiVersion: bowline/v1\nkind: DestinationPolicy\nmetadata: {name: web}\nspec:\n  circuitBreaker: {maxConnections: 1, maxPendingRequests: 1, maxRequests: 1, maxRetries: 1}\n",
    )
    .await;
    apply(&client, &endpoint_doc("web-slow", slow.port, "v1")).await;
    let envoy = start_envoy(&cluster, "envoy-cb", false).await;
    Cluster::eventually("the slow backend is routable", || {
        let r = envoy.request("web", "/");
        async move { r.filter(|(s, _)| *s == 200).map(|_| ()) }
    })
    .await;

    // Eight concurrent requests against limits of one active and one pending: Envoy
    // answers the overflow itself with 503 at once instead of queueing it.
    let port = envoy.listen_port;
    let handles: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                write!(
                    s,
                    "GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n"
                )
                .unwrap();
                let mut response = String::new();
                let _ = s.read_to_string(&mut response);
                response
            })
        })
        .collect();
    let responses: Vec<String> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ok = responses
        .iter()
        .filter(|r| r.starts_with("HTTP/1.1 200"))
        .count();
    let shed = responses
        .iter()
        .filter(|r| {
            r.starts_with("HTTP/1.1 503") && r.to_ascii_lowercase().contains("x-envoy-overloaded")
        })
        .count();
    assert!(ok >= 1, "nothing got through: {responses:?}");
    assert!(
        shed >= 1,
        "the circuit breaker never tripped: {responses:?}"
    );
    assert_eq!(ok + shed, 8, "{responses:?}");
}
