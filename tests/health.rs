//! Leader-run health checking against real backends (HTTP, TCP and gRPC servers this test
//! flips between healthy and unhealthy) and real `bowline` processes.

mod common;

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use bowline::client::watch::WatchItem;
use bowline::client::Client;
use bowline::proto::v1 as pb;
use common::*;
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tonic::Code;

/// An HTTP/1.1 server answering every request with the current status (keep-alive).
struct HttpBackend {
    port: u16,
    status: Arc<AtomicU16>,
    _task: JoinHandle<()>,
}

impl HttpBackend {
    async fn start() -> HttpBackend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let status = Arc::new(AtomicU16::new(200));
        let shared = status.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let status = shared.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut pending = Vec::new();
                    loop {
                        let Ok(n) = socket.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        pending.extend_from_slice(&buf[..n]);
                        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                            pending.drain(..end + 4);
                            let code = status.load(Ordering::Relaxed);
                            let reply = format!("HTTP/1.1 {code} X\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok");
                            if socket.write_all(reply.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        HttpBackend {
            port,
            status,
            _task: task,
        }
    }

    fn set(&self, code: u16) {
        self.status.store(code, Ordering::Relaxed);
    }
}

/// A TCP listener that can be closed (connect refused) and reopened on the same port.
struct TcpBackend {
    port: u16,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl TcpBackend {
    async fn start() -> TcpBackend {
        let port = free_port();
        let backend = TcpBackend {
            port,
            task: Mutex::new(None),
        };
        backend.up().await;
        backend
    }

    async fn up(&self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .unwrap();
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                drop(socket);
            }
        });
        *self.task.lock().unwrap() = Some(task);
    }

    async fn down(&self) {
        let task = self.task.lock().unwrap().take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }
}

/// A gRPC server with the standard health service.
struct GrpcBackend {
    port: u16,
    reporter: tonic_health::server::HealthReporter,
    _task: JoinHandle<()>,
}

impl GrpcBackend {
    async fn start() -> GrpcBackend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await;
        });
        GrpcBackend {
            port,
            reporter,
            _task: task,
        }
    }

    async fn set(&self, serving: bool) {
        let status = if serving {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        };
        self.reporter.set_service_status("", status).await;
    }
}

async fn add_endpoint(client: &Client, service: &str, id: &str, port: u16, ttl_ms: u64) {
    let mut e = endpoint(service, id, u32::from(port));
    e.ttl_ms = ttl_ms;
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

/// The endpoint's health as node `i` sees it right now (a stale, local read).
async fn health_on(cluster: &Cluster, i: usize, service: &str, id: &str) -> Option<pb::Health> {
    let client = cluster.client_for(i);
    let request = pb::GetEndpointRequest {
        namespace: String::new(),
        service: service.into(),
        id: id.into(),
        consistency: pb::Consistency::Stale as i32,
    };
    client
        .registry(|mut c| {
            let request = request.clone();
            async move { c.get_endpoint(request).await }
        })
        .await
        .ok()?
        .endpoint?
        .health
}

/// Waits until every running node reports `status` for the endpoint; returns the reason.
async fn wait_status_everywhere(
    cluster: &mut Cluster,
    service: &str,
    id: &str,
    status: &str,
) -> String {
    let running: Vec<usize> = (0..cluster.nodes.len())
        .filter(|i| cluster.is_running(*i))
        .collect();
    let mut reason = String::new();
    for i in running {
        let cluster = &*cluster;
        reason = Cluster::eventually(
            &format!("{service}/{id} {status} on node {}", cluster.nodes[i].id),
            || async move {
                health_on(cluster, i, service, id)
                    .await
                    .filter(|h| h.status == status)
                    .map(|h| h.reason)
            },
        )
        .await;
    }
    reason
}

const CHECKS: &str = "
apiVersion: bowline/v1
kind: Service
metadata: {name: web}
---
apiVersion: bowline/v1
kind: Service
metadata: {name: db}
---
apiVersion: bowline/v1
kind: Service
metadata: {name: rpc}
---
apiVersion: bowline/v1
kind: HealthCheck
metadata: {name: web}
spec: {http: {path: /healthz, expectedStatuses: [200]}, interval: 200ms, timeout: 150ms, healthyThreshold: 2, unhealthyThreshold: 2}
---
apiVersion: bowline/v1
kind: HealthCheck
metadata: {name: db}
spec: {tcp: {}, interval: 200ms, timeout: 150ms, healthyThreshold: 2, unhealthyThreshold: 2}
---
apiVersion: bowline/v1
kind: HealthCheck
metadata: {name: rpc}
spec: {grpc: {service: \"\"}, interval: 200ms, timeout: 150ms, healthyThreshold: 2, unhealthyThreshold: 2}
";

#[tokio::test(flavor = "multi_thread")]
async fn every_probe_kind_detects_failure_and_recovery_on_every_node_and_in_a_watch() {
    let mut cluster = Cluster::start(3).await;
    let client = cluster.client();
    let http = HttpBackend::start().await;
    let tcp = TcpBackend::start().await;
    let grpc = GrpcBackend::start().await;
    apply(&client, CHECKS).await;

    // A watch on a follower, on endpoints only.
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.nodes.iter().position(|n| n.id != leader).unwrap();
    let mut watch = cluster.client_for(follower).watch(pb::WatchRequest {
        kinds: vec![pb::ObjectKind::Endpoint as i32],
        ..Default::default()
    });
    // The listing comes first; only what follows it arrives as events.
    let listing = tokio::time::timeout(WAIT, watch.next())
        .await
        .expect("watch listing")
        .unwrap()
        .unwrap();
    assert!(
        matches!(listing, WatchItem::Listing { .. }),
        "expected the listing first, got {listing:?}"
    );

    add_endpoint(&client, "web", "web-1", http.port, 0).await;
    add_endpoint(&client, "db", "db-1", tcp.port, 0).await;
    add_endpoint(&client, "rpc", "rpc-1", grpc.port, 0).await;

    // Phase 1: all healthy after the healthy threshold.
    for (svc, id) in [("web", "web-1"), ("db", "db-1"), ("rpc", "rpc-1")] {
        wait_status_everywhere(&mut cluster, svc, id, "healthy").await;
    }
    // Phase 2: break every backend; each is reported unhealthy with the probe's reason.
    http.set(503);
    tcp.down().await;
    grpc.set(false).await;
    assert_eq!(
        wait_status_everywhere(&mut cluster, "web", "web-1", "unhealthy").await,
        "HTTP 503"
    );
    assert_eq!(
        wait_status_everywhere(&mut cluster, "db", "db-1", "unhealthy").await,
        "connect refused"
    );
    assert_eq!(
        wait_status_everywhere(&mut cluster, "rpc", "rpc-1", "unhealthy").await,
        "NOT_SERVING"
    );
    // Phase 3: recovery.
    http.set(200);
    tcp.up().await;
    grpc.set(true).await;
    assert_eq!(
        wait_status_everywhere(&mut cluster, "web", "web-1", "healthy").await,
        "HTTP 200"
    );
    assert_eq!(
        wait_status_everywhere(&mut cluster, "db", "db-1", "healthy").await,
        "connected"
    );
    assert_eq!(
        wait_status_everywhere(&mut cluster, "rpc", "rpc-1", "healthy").await,
        "SERVING"
    );

    // The watch saw, for each endpoint: registered (unknown) → healthy → unhealthy → healthy.
    let mut seen: std::collections::HashMap<String, Vec<String>> = Default::default();
    let deadline = tokio::time::Instant::now() + WAIT;
    while seen.values().map(|v| v.len()).sum::<usize>() < 12 {
        let item = tokio::time::timeout_at(deadline, watch.next())
            .await
            .expect("watch events")
            .unwrap()
            .unwrap();
        if let WatchItem::Events(events) = item {
            for e in events {
                if let Some(pb::event::Object::Endpoint(ep)) = e.object {
                    seen.entry(ep.id)
                        .or_default()
                        .push(ep.health.unwrap().status);
                }
            }
        }
    }
    for id in ["web-1", "db-1", "rpc-1"] {
        assert_eq!(
            seen[id],
            vec!["unknown", "healthy", "unhealthy", "healthy"],
            "{id}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_leader_takes_over_probing_and_reflects_every_flip() {
    let mut cluster = Cluster::start(3).await;
    let client = cluster.client();
    let backends = [
        HttpBackend::start().await,
        HttpBackend::start().await,
        HttpBackend::start().await,
    ];
    apply(&client, CHECKS).await;
    for (i, b) in backends.iter().enumerate() {
        add_endpoint(&client, "web", &format!("web-{i}"), b.port, 0).await;
    }
    for i in 0..3 {
        wait_status_everywhere(&mut cluster, "web", &format!("web-{i}"), "healthy").await;
    }

    // Flip backends while the leader is SIGKILLed.
    backends[0].set(500);
    backends[1].set(500);
    let leader = cluster.wait_for_leader().await;
    cluster.kill(cluster.index_of(leader));
    backends[1].set(200);
    backends[2].set(503);
    let new_leader = cluster.wait_for_leader().await;
    assert_ne!(new_leader, leader);

    // Every flip's final state is reflected on the survivors.
    assert_eq!(
        wait_status_everywhere(&mut cluster, "web", "web-0", "unhealthy").await,
        "HTTP 500"
    );
    wait_status_everywhere(&mut cluster, "web", "web-1", "healthy").await;
    assert_eq!(
        wait_status_everywhere(&mut cluster, "web", "web-2", "unhealthy").await,
        "HTTP 503"
    );

    // Exactly one node probes: the new leader.
    let probing: Vec<u64> = cluster
        .nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != cluster.index_of(leader))
        .filter(|(_, n)| {
            http_get(&n.admin_addr, "/metrics").is_some_and(|(_, body)| {
                body.lines()
                    .any(|l| l.starts_with("bowline_health_prober_active") && l.ends_with(" 1"))
            })
        })
        .map(|(_, n)| n.id)
        .collect();
    assert_eq!(probing, vec![new_leader]);

    // The old leader comes back as a follower and does not probe; statuses hold.
    let old = cluster.index_of(leader);
    cluster.spawn(old);
    cluster.wait_for_leader().await;
    wait_status_everywhere(&mut cluster, "web", "web-2", "unhealthy").await;
    let metrics = http_get(&cluster.nodes[old].admin_addr, "/metrics")
        .map(|(_, b)| b)
        .unwrap_or_default();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("bowline_health_prober_active") && l.ends_with(" 0")),
        "the restarted old leader must not probe"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_ttl_endpoint_turns_unhealthy_and_is_deregistered() {
    let mut cluster = Cluster::start(3).await;
    let client = cluster.client();
    apply(
        &client,
        "apiVersion: bowline/v1\nkind: Service\nmetadata: {name: jobs}\n---\napiVersion: bowline/v1\nkind: HealthCheck\nmetadata: {name: jobs}\nspec: {tcp: {}, interval: 1s, timeout: 500ms, healthyThreshold: 1, unhealthyThreshold: 1, deregisterAfter: 5s}\n",
    )
    .await;
    add_endpoint(&client, "jobs", "worker-1", 9, 1_000).await;
    let beat = || {
        let client = client.clone();
        async move {
            client
                .registry(|mut c| async move {
                    c.heartbeat(pb::HeartbeatRequest {
                        namespace: String::new(),
                        service: "jobs".into(),
                        id: "worker-1".into(),
                    })
                    .await
                })
                .await
        }
    };

    // Heartbeats (through any node) keep it healthy; they are not written to the log.
    let r = beat().await.expect("heartbeat");
    assert_eq!(r.ttl_ms, 1_000);
    let reason = wait_status_everywhere(&mut cluster, "jobs", "worker-1", "healthy").await;
    assert_eq!(reason, "heartbeat received");

    // Silence: unhealthy after the TTL, then removed after deregisterAfter.
    let reason = wait_status_everywhere(&mut cluster, "jobs", "worker-1", "unhealthy").await;
    assert_eq!(reason, "TTL expired: no heartbeat for 1s");
    for i in 0..cluster.nodes.len() {
        let cluster = &cluster;
        Cluster::eventually(
            "endpoint deregistered after deregisterAfter",
            || async move {
                let client = cluster.client_for(i);
                let r = client
                    .registry(|mut c| async move {
                        c.get_endpoint(pb::GetEndpointRequest {
                            namespace: String::new(),
                            service: "jobs".into(),
                            id: "worker-1".into(),
                            consistency: pb::Consistency::Stale as i32,
                        })
                        .await
                    })
                    .await;
                matches!(r, Err(ref s) if s.code() == Code::NotFound).then_some(())
            },
        )
        .await;
    }

    // A heartbeat for an endpoint without a TTL, or an unknown one, is refused clearly.
    add_endpoint(&client, "jobs", "no-ttl", 9, 0).await;
    let err = client
        .registry(|mut c| async move {
            c.heartbeat(pb::HeartbeatRequest {
                namespace: String::new(),
                service: "jobs".into(),
                id: "no-ttl".into(),
            })
            .await
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("has no ttl"), "{}", err.message());
    let err = beat().await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread")]
async fn panic_mode_and_degraded_dependencies_show_in_service_status() {
    let mut cluster = Cluster::start(3).await;
    let client = cluster.client();
    let up = HttpBackend::start().await;
    let down = HttpBackend::start().await;
    down.set(503);
    apply(
        &client,
        "apiVersion: bowline/v1\nkind: Service\nmetadata: {name: db}\n---\napiVersion: bowline/v1\nkind: Service\nmetadata: {name: web}\nspec: {dependsOn: [db]}\n---\napiVersion: bowline/v1\nkind: HealthCheck\nmetadata: {name: web}\nspec: {http: {path: /}, interval: 200ms, timeout: 150ms, healthyThreshold: 1, unhealthyThreshold: 1, panicThreshold: 50}\n---\napiVersion: bowline/v1\nkind: HealthCheck\nmetadata: {name: db}\nspec: {http: {path: /}, interval: 200ms, timeout: 150ms, healthyThreshold: 1, unhealthyThreshold: 1}\n",
    )
    .await;
    add_endpoint(&client, "web", "web-a", up.port, 0).await;
    add_endpoint(&client, "web", "web-b", down.port, 0).await;
    add_endpoint(&client, "web", "web-c", down.port, 0).await;
    add_endpoint(&client, "db", "db-a", down.port, 0).await;
    wait_status_everywhere(&mut cluster, "web", "web-a", "healthy").await;
    wait_status_everywhere(&mut cluster, "web", "web-b", "unhealthy").await;
    wait_status_everywhere(&mut cluster, "web", "web-c", "unhealthy").await;
    wait_status_everywhere(&mut cluster, "db", "db-a", "unhealthy").await;

    let status = |client: Client| async move {
        client
            .registry(|mut c| async move {
                c.get_service(pb::GetServiceRequest {
                    namespace: String::new(),
                    name: "web".into(),
                    consistency: 0,
                })
                .await
            })
            .await
            .unwrap()
            .service
            .unwrap()
            .status
            .unwrap()
    };
    let s = status(client.clone()).await;
    assert_eq!(
        (
            s.total_endpoints,
            s.available_endpoints,
            s.unhealthy_endpoints
        ),
        (3, 1, 2)
    );
    assert!(s.panic, "1 of 3 available is below 50%: {s:?}");
    assert!(
        s.degraded && s.degraded_dependencies == vec!["db".to_string()],
        "{s:?}"
    );

    // The CLI shows the same.
    let (code, out, _) = cli(&cluster, &["get", "services"], None);
    assert_eq!(code, 0);
    assert!(
        out.contains("panic (<50% available), degraded (db down)"),
        "{out}"
    );

    // Recovery clears both.
    down.set(200);
    wait_status_everywhere(&mut cluster, "db", "db-a", "healthy").await;
    wait_status_everywhere(&mut cluster, "web", "web-b", "healthy").await;
    wait_status_everywhere(&mut cluster, "web", "web-c", "healthy").await;
    let s = status(client.clone()).await;
    assert!(!s.panic && !s.degraded, "{s:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_health_specs_are_rejected_with_the_field() {
    let cluster = Cluster::start(1).await;
    let client = cluster.client();
    let cases = [
        (
            r#"{"tcp":{},"interval":"0ms","timeout":"1ms","healthyThreshold":1,"unhealthyThreshold":1}"#,
            "spec_json.interval",
        ),
        (
            r#"{"tcp":{},"interval":"1s","timeout":"1s","healthyThreshold":1,"unhealthyThreshold":1}"#,
            "spec_json.timeout",
        ),
        (
            r#"{"tcp":{},"interval":"1s","timeout":"2s","healthyThreshold":1,"unhealthyThreshold":1}"#,
            "spec_json.timeout",
        ),
        (
            r#"{"exec":{},"interval":"1s","timeout":"500ms","healthyThreshold":1,"unhealthyThreshold":1}"#,
            "exec",
        ),
        (
            r#"{"tcp":{},"interval":"1s","timeout":"500ms","healthyThreshold":0,"unhealthyThreshold":1}"#,
            "spec_json.healthyThreshold",
        ),
        (
            r#"{"tcp":{},"interval":"1s","timeout":"500ms","healthyThreshold":1,"unhealthyThreshold":0}"#,
            "spec_json.unhealthyThreshold",
        ),
    ];
    for (spec, field) in cases {
        let request = pb::PutConfigRequest {
            object: Some(pb::ConfigObject {
                kind: pb::ConfigKind::HealthCheck as i32,
                name: "web".into(),
                spec_json: spec.into(),
                ..Default::default()
            }),
            expected_revision: None,
        };
        let err = client
            .config_write(|mut c| {
                let request = request.clone();
                async move { c.put_config(request).await }
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{spec}");
        assert!(err.message().contains(field), "{spec}: {}", err.message());
    }
    let r = client
        .config(|mut c| async move { c.list_configs(pb::ListConfigsRequest::default()).await })
        .await
        .unwrap();
    assert!(r.objects.is_empty(), "a rejected spec was stored");
}
