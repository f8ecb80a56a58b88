//! Bad input gets a clear error, the node stays up, and nothing changes.

mod common;

use std::io::Write;

use bowline::client::Client;
use bowline::proto::peer::raft_peer_client::RaftPeerClient;
use bowline::proto::peer::PeerMessage;
use bowline::proto::v1 as pb;
use common::*;
use tonic::Code;

/// Everything a client can observe of the state, to prove a failed call changed nothing.
async fn snapshot_of_state(
    client: &Client,
) -> (
    u64,
    Vec<pb::Service>,
    Vec<pb::Endpoint>,
    Vec<pb::ConfigObject>,
) {
    let services = client
        .registry(|mut c| async move { c.list_services(pb::ListServicesRequest::default()).await })
        .await
        .unwrap();
    let endpoints = client
        .registry(
            |mut c| async move { c.list_endpoints(pb::ListEndpointsRequest::default()).await },
        )
        .await
        .unwrap();
    let configs = client
        .config(|mut c| async move { c.list_configs(pb::ListConfigsRequest::default()).await })
        .await
        .unwrap();
    (
        services.header.unwrap().revision,
        services.services,
        endpoints.endpoints,
        configs.objects,
    )
}

async fn register_endpoint(
    client: &Client,
    endpoint: pb::Endpoint,
) -> Result<pb::RegisterEndpointResponse, tonic::Status> {
    let request = pb::RegisterEndpointRequest {
        endpoint: Some(endpoint),
        expected_revision: None,
    };
    client
        .registry_write(|mut c| {
            let request = request.clone();
            async move { c.register_endpoint(request).await }
        })
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_compare_and_set_fails_with_the_current_revision_and_changes_nothing() {
    let cluster = Cluster::start(3).await;
    let client = cluster.client();
    let first = register_service(&client, "web").await.unwrap();
    let second = register_service(&client, "web").await.unwrap();
    assert!(second > first);
    let before = snapshot_of_state(&client).await;

    // An update that expects the first revision: refused, naming the current one.
    let mut changed = service("web");
    changed.ports[0].port = 9999;
    let request = pb::RegisterServiceRequest {
        service: Some(changed),
        expected_revision: Some(first),
    };
    let err = client
        .registry_write(|mut c| {
            let request = request.clone();
            async move { c.register_service(request).await }
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message()
            .contains(&format!("current revision is {second}")),
        "{}",
        err.message()
    );
    assert_eq!(
        err.metadata()
            .get("bowline-current-revision")
            .unwrap()
            .to_str()
            .unwrap(),
        second.to_string()
    );

    // A delete with a stale revision is refused too; create-only (0) on an existing object as well.
    let err = client
        .registry_write(|mut c| async move {
            c.deregister_service(pb::DeregisterServiceRequest {
                namespace: "default".into(),
                name: "web".into(),
                expected_revision: Some(first),
            })
            .await
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let request = pb::RegisterServiceRequest {
        service: Some(service("web")),
        expected_revision: Some(0),
    };
    let err = client
        .registry_write(|mut c| {
            let request = request.clone();
            async move { c.register_service(request).await }
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    let after = snapshot_of_state(&client).await;
    assert_eq!(before.1, after.1, "a failed CAS changed a service");
    assert_eq!(after.1[0].ports[0].port, 8080);

    // And the right revision succeeds.
    let request = pb::RegisterServiceRequest {
        service: Some(service("web")),
        expected_revision: Some(second),
    };
    client
        .registry_write(|mut c| {
            let request = request.clone();
            async move { c.register_service(request).await }
        })
        .await
        .expect("CAS with the current revision");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_rejected_with_the_field_and_rule_and_changes_nothing() {
    let mut cluster = Cluster::start(3).await;
    let client = cluster.client();
    register_service(&client, "web").await.unwrap();
    let before = snapshot_of_state(&client).await;

    // Invalid service name.
    let mut bad = service("Bad_Name");
    bad.name = "Bad_Name".into();
    let request = pb::RegisterServiceRequest {
        service: Some(bad),
        expected_revision: None,
    };
    let err = client
        .registry_write(|mut c| {
            let request = request.clone();
            async move { c.register_service(request).await }
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message()
            .starts_with("service.name: must be a DNS-1123 label"),
        "{}",
        err.message()
    );

    // Ports 0 and 70000.
    for port in [0, 70_000] {
        let err = register_endpoint(&client, endpoint("web", "web-1", port))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(
            err.message()
                .starts_with("endpoint.port: must be between 1 and 65535"),
            "{}",
            err.message()
        );
    }

    // Weight 0.
    let mut zero_weight = endpoint("web", "web-1", 9000);
    zero_weight.weight = Some(0);
    let err = register_endpoint(&client, zero_weight).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message()
            .starts_with("endpoint.weight: must be between 1 and 128"),
        "{}",
        err.message()
    );

    // An endpoint of an unknown service: a state-dependent precondition.
    let err = register_endpoint(&client, endpoint("nope", "nope-1", 9000))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("endpoint.service") && err.message().contains("not registered"),
        "{}",
        err.message()
    );

    // An unknown config kind.
    let err = client
        .config_write(|mut c| async move {
            c.put_config(pb::PutConfigRequest {
                object: Some(pb::ConfigObject {
                    kind: 42,
                    name: "web".into(),
                    spec_json: "{}".into(),
                    ..Default::default()
                }),
                expected_revision: None,
            })
            .await
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("kind: must be one of"),
        "{}",
        err.message()
    );

    // A config spec with an unknown field.
    let err = client
        .config_write(|mut c| async move {
            c.put_config(pb::PutConfigRequest {
                object: Some(pb::ConfigObject {
                    kind: pb::ConfigKind::HealthCheck as i32,
                    name: "web".into(),
                    spec_json: r#"{"tcp":{},"interval":"1s","timeout":"500ms","healthyThreshold":1,"unhealthyThreshold":1,"bogus":true}"#.into(),
                    ..Default::default()
                }),
                expected_revision: None,
            })
            .await
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("bogus"), "{}", err.message());

    // A message over the size limit (1 MiB).
    let mut huge = service("huge");
    huge.metadata.insert("blob".into(), "x".repeat(2 << 20));
    let request = pb::RegisterServiceRequest {
        service: Some(huge),
        expected_revision: None,
    };
    let err = client
        .registry_write(|mut c| {
            let request = request.clone();
            async move { c.register_service(request).await }
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{:?}: {}",
        err.code(),
        err.message()
    );
    assert!(
        err.message().contains("too large") || err.message().contains("limit"),
        "{}",
        err.message()
    );

    // Metadata under the transport limit but over the domain limit (16 KiB).
    let mut fat = service("fat");
    for i in 0..40 {
        fat.metadata.insert(format!("k{i}"), "y".repeat(1000));
    }
    let request = pb::RegisterServiceRequest {
        service: Some(fat),
        expected_revision: None,
    };
    let err = client
        .registry_write(|mut c| {
            let request = request.clone();
            async move { c.register_service(request).await }
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("service.metadata"),
        "{}",
        err.message()
    );

    // Garbage bytes on every node's peer port: raw TCP, then a well-formed gRPC call whose
    // payload is garbage.
    for node in &cluster.nodes {
        let mut stream = std::net::TcpStream::connect(&node.peer_addr).unwrap();
        let _ = stream.write_all(b"\x00\xffGARBAGE not http/2 at all\r\n\r\n\x17\x03");
        drop(stream);
        let mut peer = RaftPeerClient::connect(format!("http://{}", node.peer_addr))
            .await
            .unwrap();
        for call in 0..4 {
            let message = PeerMessage {
                payload: vec![0xde, 0xad, 0xbe, 0xef, 0xff, 0xff, 0xff, 0xff, 0x0f],
            };
            let status = match call {
                0 => peer.append_entries(message).await,
                1 => peer.vote(message).await,
                2 => peer.install_snapshot(message).await,
                _ => peer.forward(message).await,
            }
            .unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        }
        // On the replication and read-index streams, a garbage request is answered with
        // the same error, which ends the stream.
        for stream in ["replicate", "read_indexes"] {
            let garbage = PeerMessage {
                payload: vec![0xde, 0xad, 0xbe, 0xef, 0xff, 0xff, 0xff, 0xff, 0x0f],
            };
            let requests = tokio_stream::iter(vec![garbage.clone(), garbage]);
            let mut replies = match stream {
                "replicate" => peer.replicate(requests).await,
                _ => peer.read_indexes(requests).await,
            }
            .unwrap()
            .into_inner();
            let status = replies.message().await.unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument, "{stream}: {status:?}");
            assert!(
                status.message().contains("not a valid peer message"),
                "{stream}: {status:?}"
            );
            assert!(
                matches!(replies.message().await, Ok(None) | Err(_)),
                "{stream}: the stream goes on after an error"
            );
        }
    }

    // Every node is still up and serving, and nothing changed.
    for i in 0..cluster.nodes.len() {
        assert!(cluster.is_running(i), "node {} died", cluster.nodes[i].id);
    }
    cluster.wait_for_leader().await;
    let after = snapshot_of_state(&client).await;
    assert_eq!(before, after, "rejected requests changed the state");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_client_port_routes_by_service_name_and_refuses_unknown_ones() {
    let mut cluster = Cluster::start(1).await;
    cluster.wait_for_leader().await;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", cluster.nodes[0].client_addr))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect to the client port");

    // The standard health service shares the port with Bowline's own; it turns SERVING once
    // the node is ready.
    let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
    Cluster::eventually("grpc.health.v1.Health/Check says SERVING", || {
        let channel = channel.clone();
        async move {
            let reply = tonic_health::pb::health_client::HealthClient::new(channel)
                .check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .expect("grpc.health.v1.Health/Check is served");
            (reply.into_inner().status == serving).then_some(())
        }
    })
    .await;
    let status = pb::cluster_client::ClusterClient::new(channel.clone())
        .status(pb::StatusRequest {})
        .await
        .expect("bowline.v1.Cluster/Status is served");
    assert_eq!(status.into_inner().leader_id, 1);

    // Unknown services and malformed paths: UNIMPLEMENTED, and the node keeps serving.
    for path in ["/bowline.v1.Nope/Get", "/bowline.v1.Registry", "/"] {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.expect("channel ready");
        let codec = tonic_prost::ProstCodec::<pb::StatusRequest, pb::StatusResponse>::default();
        let err = grpc
            .unary(
                tonic::Request::new(pb::StatusRequest {}),
                tonic::codegen::http::uri::PathAndQuery::from_static(path),
                codec,
            )
            .await
            .expect_err("no such service");
        assert_eq!(err.code(), Code::Unimplemented, "{path}: {err:?}");
    }
    let status = pb::cluster_client::ClusterClient::new(channel)
        .status(pb::StatusRequest {})
        .await
        .expect("still serving after unknown paths");
    assert_eq!(status.into_inner().node_id, 1);
}

/// The client port bounds the requests one connection may have open and announces the
/// bound in its HTTP/2 SETTINGS, so a conforming client queues the rest on its own side
/// instead of in the node's memory.
#[tokio::test(flavor = "multi_thread")]
async fn the_client_port_announces_how_many_requests_a_connection_may_have_open() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut cluster = Cluster::start(1).await;
    cluster.wait_for_leader().await;
    let mut socket = tokio::net::TcpStream::connect(&cluster.nodes[0].client_addr)
        .await
        .expect("connect to the client port");
    // The client connection preface, then an empty SETTINGS frame.
    socket
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .expect("send the preface");
    socket
        .write_all(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0])
        .await
        .expect("send SETTINGS");
    // The server's first frame is its SETTINGS: a 9-byte frame header, then 6-byte entries.
    let read_settings = async {
        let mut header = [0u8; 9];
        socket.read_exact(&mut header).await?;
        let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let mut payload = vec![0u8; len];
        socket.read_exact(&mut payload).await?;
        Ok::<_, std::io::Error>((header[3], payload))
    };
    let (frame_type, payload) = tokio::time::timeout(WAIT, read_settings)
        .await
        .expect("the server sends its SETTINGS")
        .expect("read the server's SETTINGS");
    assert_eq!(frame_type, 0x4, "the server's first frame is SETTINGS");
    let settings: Vec<(u16, u32)> = payload
        .chunks_exact(6)
        .map(|c| {
            (
                u16::from_be_bytes([c[0], c[1]]),
                u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
            )
        })
        .collect();
    const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    assert!(
        settings.contains(&(MAX_CONCURRENT_STREAMS, 1024)),
        "SETTINGS_MAX_CONCURRENT_STREAMS = 1024 among {settings:?}"
    );
}
