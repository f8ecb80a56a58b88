//! Watches against real processes: identical sequences on every node, resume and
//! compaction, failover of the resumable client, slow-watcher cancellation, and catch-up.

mod common;

use bowline::client::watch::WatchItem;
use bowline::client::{Client, ClientOptions};
use bowline::proto::v1 as pb;
use bowline::proto::v1::watch_client::WatchClient;
use common::*;
use futures::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

/// `(revision, type, kind, key)` of an event: what two watchers must agree on.
type EventKey = (u64, i32, i32, String);

fn key(event: &pb::Event) -> EventKey {
    let name = match &event.object {
        Some(pb::event::Object::Service(s)) => format!("{}/{}", s.namespace, s.name),
        Some(pb::event::Object::Endpoint(e)) => format!("{}/{}/{}", e.namespace, e.service, e.id),
        Some(pb::event::Object::Config(c)) => format!("{}/{}/{}", c.kind, c.namespace, c.name),
        None => String::new(),
    };
    (event.revision, event.r#type, event.kind, name)
}

/// Reads a watch until it has delivered everything up to `revision`; returns the events.
async fn events_until(
    stream: &mut ReceiverStream<Result<WatchItem, tonic::Status>>,
    revision: u64,
) -> (Vec<pb::Event>, Option<(u64, Vec<pb::Event>)>) {
    let mut events = Vec::new();
    let mut listing = None;
    let mut reached = 0;
    let deadline = tokio::time::Instant::now() + WAIT;
    while reached < revision {
        let item = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("watch reached the revision in time")
            .expect("watch stream open")
            .expect("watch item");
        match item {
            WatchItem::Listing { revision, events } => {
                reached = revision;
                listing = Some((revision, events));
            }
            WatchItem::Events(batch) => {
                reached = batch.last().unwrap().revision;
                events.extend(batch);
            }
            WatchItem::Progress(r) => reached = reached.max(r),
        }
    }
    (events, listing)
}

fn watch_all(start: Option<u64>) -> pb::WatchRequest {
    pb::WatchRequest {
        start_revision: start,
        progress_interval_ms: 200,
        ..Default::default()
    }
}

async fn put_config(client: &Client, name: &str) -> u64 {
    let request = pb::PutConfigRequest {
        object: Some(pb::ConfigObject {
            kind: pb::ConfigKind::DestinationPolicy as i32,
            name: name.into(),
            spec_json: r#"{"loadBalancer":{"policy":"least_request"}}"#.into(),
            ..Default::default()
        }),
        expected_revision: None,
    };
    let r = client
        .config_write(|mut c| {
            let request = request.clone();
            async move { c.put_config(request).await }
        })
        .await
        .unwrap();
    r.header.unwrap().revision
}

async fn register_endpoint(client: &Client, service: &str, id: &str) -> u64 {
    let request = pb::RegisterEndpointRequest {
        endpoint: Some(endpoint(service, id, 9000)),
        expected_revision: None,
    };
    let r = client
        .registry_write(|mut c| {
            let request = request.clone();
            async move { c.register_endpoint(request).await }
        })
        .await
        .unwrap();
    r.header.unwrap().revision
}

async fn deregister_service(client: &Client, name: &str) -> u64 {
    let r = client
        .registry_write(|mut c| async move {
            c.deregister_service(pb::DeregisterServiceRequest {
                namespace: "default".into(),
                name: name.into(),
                expected_revision: None,
            })
            .await
        })
        .await
        .unwrap();
    r.header.unwrap().revision
}

/// A mixed workload (no health checks, so the leader's prober adds no events); returns the
/// last revision.
async fn mixed_workload(client: &Client, services: usize) -> u64 {
    let mut last = 0;
    for s in 0..services {
        let name = format!("svc-{s}");
        register_service(client, &name).await.unwrap();
        for e in 0..3 {
            register_endpoint(client, &name, &format!("{name}-{e}")).await;
        }
        last = put_config(client, &name).await;
        if s % 4 == 3 {
            // A cascade: three endpoint deletes and a service delete share one revision.
            last = deregister_service(client, &name).await;
        }
    }
    last
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watch_on_every_node_sees_the_same_sequence_of_events() {
    let cluster = Cluster::start(3).await;
    // Phase 1: one watch pinned to each node (two of them followers), from revision 1.
    let mut streams: Vec<_> = (0..3)
        .map(|i| cluster.client_for(i).watch(watch_all(Some(1))))
        .collect();

    // Phase 2: a mixed workload of a few hundred writes.
    let last = mixed_workload(&cluster.client(), 50).await;
    assert!(last >= 250);

    // Phase 3: every node delivered the same events, in revision order, each once.
    let mut sequences = Vec::new();
    for stream in &mut streams {
        let (events, _) = events_until(stream, last).await;
        sequences.push(events.iter().map(key).collect::<Vec<_>>());
    }
    assert_eq!(sequences[0], sequences[1], "node 1 and node 2 disagree");
    assert_eq!(sequences[0], sequences[2], "node 1 and node 3 disagree");
    let revisions: Vec<u64> = sequences[0].iter().map(|k| k.0).collect();
    assert!(
        revisions.windows(2).all(|w| w[0] <= w[1]),
        "events out of order"
    );
    let unique: std::collections::HashSet<_> = sequences[0].iter().collect();
    assert_eq!(unique.len(), sequences[0].len(), "duplicate events");
    // 50 services, 150 endpoints, 50 configs put; 12 cascades of 3 endpoints + 1 service.
    assert_eq!(sequences[0].len(), 50 + 150 + 50 + 12 * 4);
    let service_delete = sequences[0]
        .iter()
        .rev()
        .find(|k| k.1 == pb::EventType::Delete as i32 && k.2 == pb::ObjectKind::Service as i32)
        .unwrap()
        .0;
    let cascade = sequences[0]
        .iter()
        .filter(|k| k.0 == service_delete)
        .count();
    assert_eq!(cascade, 4, "one entry's changes share a revision");
}

#[tokio::test(flavor = "multi_thread")]
async fn resuming_mid_history_replays_exactly_the_rest_and_a_compacted_start_is_out_of_range() {
    let cluster = Cluster::start_with(
        3,
        Tuning {
            extra_args: vec!["--watch-history-events=100".into()],
            ..Tuning::default()
        },
    )
    .await;
    let client = cluster.client();
    let mut revisions = Vec::new();
    for i in 0..150 {
        revisions.push(register_service(&client, &format!("s{i}")).await.unwrap());
    }
    let last = *revisions.last().unwrap();

    // From a revision in the middle of the history: exactly the events at or after it.
    let middle = revisions[100];
    let mut stream = cluster.client_for(1).watch(watch_all(Some(middle)));
    let (events, _) = events_until(&mut stream, last).await;
    let got: Vec<u64> = events.iter().map(|e| e.revision).collect();
    assert_eq!(got, revisions[100..].to_vec());

    // From a compacted revision: OUT_OF_RANGE naming the oldest revision still held.
    let mut raw = WatchClient::connect(format!("http://{}", cluster.nodes[1].client_addr))
        .await
        .unwrap();
    let err = match raw.watch(watch_all(Some(revisions[10]))).await {
        Err(status) => status,
        Ok(response) => response.into_inner().message().await.unwrap_err(),
    };
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    let oldest: u64 = err
        .metadata()
        .get("bowline-oldest-revision")
        .expect("oldest revision in metadata")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        oldest > revisions[10] && oldest <= revisions[50],
        "oldest {oldest}"
    );
    assert!(
        err.message().contains(&oldest.to_string()),
        "{}",
        err.message()
    );
    // Starting at the oldest revision held works.
    assert!(raw.watch(watch_all(Some(oldest))).await.is_ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_resumable_client_survives_its_follower_being_killed_mid_burst() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.nodes.iter().position(|n| n.id != leader).unwrap();
    register_service(&cluster.client(), "seed").await.unwrap();

    // The watch starts on the follower (first endpoint) and may fail over to the others.
    let mut endpoints = vec![cluster.nodes[follower].client_addr.clone()];
    endpoints.extend(
        cluster
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != follower)
            .map(|(_, n)| n.client_addr.clone()),
    );
    let watcher = Client::new(&endpoints, ClientOptions::default()).unwrap();
    let mut stream = watcher.watch(watch_all(None));
    let first = tokio::time::timeout(WAIT, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let WatchItem::Listing {
        revision: listed_at,
        events: listed,
    } = first
    else {
        panic!("expected the listing first, got {first:?}");
    };
    assert_eq!(listed.len(), 1);

    // A write burst through the other nodes; the follower is SIGKILLed in the middle of it.
    let others: Vec<String> = endpoints[1..].to_vec();
    let writer = Client::new(&others, ClientOptions::default()).unwrap();
    let mut acknowledged = Vec::new();
    for i in 0..300 {
        if i == 100 {
            cluster.kill(follower);
        }
        acknowledged.push(
            register_service(&writer, &format!("burst-{i}"))
                .await
                .expect("write"),
        );
    }
    let last = *acknowledged.last().unwrap();

    // Every event exactly once, in order, across the failover.
    let (events, _) = events_until(&mut stream, last).await;
    let got: Vec<u64> = events.iter().map(|e| e.revision).collect();
    assert!(got.iter().all(|r| *r > listed_at));
    assert_eq!(got, acknowledged, "gap or duplicate across the failover");

    // And it matches a linearizable listing taken afterwards.
    let names = service_names(&writer).await;
    assert_eq!(names.len(), 301);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watcher_that_never_reads_is_cancelled_while_others_keep_up() {
    let cluster = Cluster::start_with(
        3,
        Tuning {
            extra_args: vec!["--watch-queue=8".into()],
            ..Tuning::default()
        },
    )
    .await;
    let node = &cluster.nodes[0];

    // A client with a tiny HTTP/2 window that opens a watch and never reads it.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", node.client_addr))
        .unwrap()
        .initial_stream_window_size(16 * 1024)
        .initial_connection_window_size(16 * 1024)
        .connect()
        .await
        .unwrap();
    let mut slow_stream = WatchClient::new(channel)
        .watch(watch_all(Some(1)))
        .await
        .unwrap()
        .into_inner();

    // A well-behaved watcher on the same node.
    let mut fast = cluster.client_for(0).watch(watch_all(Some(1)));

    // Writes with ~8 KiB of metadata each, so the slow client's window fills at once.
    let client = cluster.client();
    let mut last = 0;
    for i in 0..80 {
        let mut s = service(&format!("big-{i}"));
        s.metadata.insert("blob".into(), "z".repeat(1000));
        for k in 0..8 {
            s.metadata.insert(format!("k{k}"), "y".repeat(1000));
        }
        let request = pb::RegisterServiceRequest {
            service: Some(s),
            expected_revision: None,
        };
        let r = client
            .registry_write(|mut c| {
                let request = request.clone();
                async move { c.register_service(request).await }
            })
            .await
            .unwrap();
        last = r.header.unwrap().revision;
    }

    // The fast watcher has everything.
    let (events, _) = events_until(&mut fast, last).await;
    assert_eq!(events.len(), 80);

    // The node cancelled the slow one (a counter, not a timing) and holds no queue for it.
    let metrics = Cluster::eventually("slow watcher cancelled", || {
        let m = http_get(&node.admin_addr, "/metrics").map(|(_, body)| body);
        async move {
            m.filter(|body| {
                body.contains("bowline_watch_cancellations_total{reason=\"slow_consumer\"")
            })
        }
    })
    .await;
    assert_eq!(
        metric_sample(&metrics, "bowline_watch_active"),
        Some(1.0),
        "only the fast watcher remains registered"
    );

    // When the slow client finally reads, it gets what was in flight, then RESOURCE_EXHAUSTED
    // with the revision to resume from.
    let mut seen = 0;
    let err = loop {
        match tokio::time::timeout(WAIT, slow_stream.message())
            .await
            .unwrap()
        {
            Ok(Some(msg)) => seen += msg.events.len(),
            Ok(None) => panic!("stream ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    let resume: u64 = err
        .metadata()
        .get("bowline-resume-revision")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(seen < 80, "the slow watcher was not cut off");
    assert!(
        resume >= 1 && resume <= last,
        "resume {resume}, last {last}, seen {seen}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watch_on_a_restarted_node_waits_for_what_it_has_not_applied() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.nodes.iter().position(|n| n.id != leader).unwrap();
    let client = cluster.client();
    let before = register_service(&client, "before").await.unwrap();

    // The follower misses 200 writes.
    cluster.kill(follower);
    let writer = Client::new(
        &cluster
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != follower)
            .map(|(_, n)| n.client_addr.clone())
            .collect::<Vec<_>>(),
        ClientOptions::default(),
    )
    .unwrap();
    let mut missed = Vec::new();
    for i in 0..200 {
        missed.push(
            register_service(&writer, &format!("missed-{i}"))
                .await
                .unwrap(),
        );
    }

    // Restart it and watch it immediately, from the first revision it missed.
    cluster.spawn(follower);
    let pinned = cluster.client_for(follower);
    let mut stream = pinned.watch(watch_all(Some(before + 1)));
    let (events, _) = events_until(&mut stream, *missed.last().unwrap()).await;
    let got: Vec<u64> = events.iter().map(|e| e.revision).collect();
    assert_eq!(
        got, missed,
        "the catching-up node skipped or repeated events"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watch_across_a_snapshot_install_ends_out_of_range_never_with_a_gap() {
    let mut cluster = Cluster::start_with(
        3,
        Tuning {
            snapshot_every: 20,
            logs_to_keep: 0,
            ..Tuning::default()
        },
    )
    .await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.nodes.iter().position(|n| n.id != leader).unwrap();
    let before = register_service(&cluster.client(), "before").await.unwrap();

    // The follower misses enough writes that the leader purges them: it must take a snapshot.
    cluster.kill(follower);
    let writer = Client::new(
        &cluster
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != follower)
            .map(|(_, n)| n.client_addr.clone())
            .collect::<Vec<_>>(),
        ClientOptions::default(),
    )
    .unwrap();
    let mut last = 0;
    for i in 0..100 {
        last = register_service(&writer, &format!("missed-{i}"))
            .await
            .unwrap();
    }
    cluster.spawn(follower);

    // A watch pinned to that node from the first missed revision: it may start before or
    // after the snapshot lands, but it must end with OUT_OF_RANGE, not skip revisions.
    let mut stream = cluster
        .client_for(follower)
        .watch(watch_all(Some(before + 1)));
    let mut expected = before + 1;
    let error = loop {
        let item = tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("watch item in time");
        match item {
            Some(Ok(WatchItem::Events(events))) => {
                for e in events {
                    assert_eq!(
                        e.revision, expected,
                        "the watch skipped revisions across a snapshot"
                    );
                    expected += 1;
                }
            }
            Some(Ok(_)) => {}
            Some(Err(status)) => break status,
            None => panic!("stream ended without an error"),
        }
        assert!(expected <= last + 1);
    };
    assert_eq!(error.code(), Code::OutOfRange, "{error:?}");

    // After the install the node keeps the store revision across a restart: a stale read
    // may lag while it re-applies its log, but never falls back to 0 (the revision must be
    // persisted with the installed state), and it reaches the last write.
    cluster.kill(follower);
    cluster.spawn(follower);
    Cluster::eventually("restarted node reports the last revision", || {
        let pinned = cluster.client_for(follower);
        async move {
            let r = pinned
                .registry(|mut c| async move {
                    c.list_services(pb::ListServicesRequest {
                        consistency: pb::Consistency::Stale as i32,
                        ..Default::default()
                    })
                    .await
                })
                .await
                .ok()?;
            let revision = r.header.unwrap().revision;
            assert_ne!(
                revision, 0,
                "the store revision was lost across the restart"
            );
            (revision == last).then_some(())
        }
    })
    .await;
}

fn create(watch_id: u64, watch: pb::WatchRequest) -> pb::WatchManyRequest {
    pb::WatchManyRequest {
        request: Some(pb::watch_many_request::Request::Create(
            pb::WatchCreateRequest {
                watch_id,
                watch: Some(watch),
            },
        )),
    }
}

/// Reads a `WatchMany` stream until `done` says so; returns every response.
async fn responses_until(
    stream: &mut tonic::Streaming<pb::WatchResponse>,
    mut done: impl FnMut(&pb::WatchResponse) -> bool,
) -> Vec<pb::WatchResponse> {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut got = Vec::new();
    loop {
        let response = tokio::time::timeout_at(deadline, stream.message())
            .await
            .expect("the awaited response came in time")
            .expect("stream healthy")
            .expect("stream open");
        let finished = done(&response);
        got.push(response);
        if finished {
            return got;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_many_multiplexes_listing_live_refused_and_cancelled_watches_on_one_stream() {
    let mut cluster = Cluster::start(3).await;
    let client = cluster.client();
    register_service(&client, "alpha").await.unwrap();
    register_service(&client, "beta").await.unwrap();
    let listed = register_endpoint(&client, "alpha", "a-0").await;

    // Node 3, a follower unless it won the election: every node serves WatchMany.
    let (requests, rx) = tokio::sync::mpsc::channel(16);
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", cluster.nodes[2].client_addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut stream = WatchClient::new(channel)
        .watch_many(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let on = |service: &str, start: Option<u64>| pb::WatchRequest {
        service: service.into(),
        kinds: vec![pb::ObjectKind::Endpoint as i32],
        start_revision: start,
        ..Default::default()
    };
    requests.send(create(1, on("alpha", None))).await.unwrap();
    requests
        .send(create(2, on("beta", Some(listed + 1))))
        .await
        .unwrap();
    let bad = pb::WatchRequest {
        namespace: "Not_A_Label".into(),
        ..Default::default()
    };
    requests.send(create(3, bad)).await.unwrap();
    requests.send(create(2, on("beta", None))).await.unwrap();

    // Until each watch has said what it will say at start (progress notices aside).
    let mut expected: std::collections::HashSet<(u64, &str)> = [
        (1, "created"),
        (1, "initial"),
        (1, "synced"),
        (2, "created"),
        (2, "canceled"),
        (3, "canceled"),
    ]
    .into();
    let got = responses_until(&mut stream, |r| {
        let what = if r.created {
            "created"
        } else if r.initial {
            "initial"
        } else if r.synced {
            "synced"
        } else if r.canceled {
            "canceled"
        } else {
            "other"
        };
        expected.remove(&(r.watch_id, what));
        expected.is_empty()
    })
    .await;
    let find = |pred: &dyn Fn(&pb::WatchResponse) -> bool| {
        got.iter()
            .find(|r| pred(r))
            .cloned()
            .unwrap_or_else(|| panic!("{got:?}"))
    };
    let created = find(&|r| r.watch_id == 1 && r.created);
    assert_eq!(created.header.unwrap().revision, listed);
    let listing = find(&|r| r.watch_id == 1 && r.initial);
    assert_eq!(
        listing.events.len(),
        1,
        "the listing holds alpha's endpoint"
    );
    find(&|r| r.watch_id == 1 && r.synced);
    find(&|r| r.watch_id == 2 && r.created);
    let refused = find(&|r| r.watch_id == 3 && r.canceled);
    assert_eq!(refused.cancel_code, Code::InvalidArgument as i32);
    assert!(
        refused.cancel_reason.starts_with("namespace"),
        "{refused:?}"
    );
    let duplicate = find(&|r| r.watch_id == 2 && r.canceled);
    assert_eq!(duplicate.cancel_code, Code::InvalidArgument as i32);
    assert!(duplicate.cancel_reason.contains("already in use"));

    // Live events reach each watch under its own id.
    let beta = register_endpoint(&client, "beta", "b-0").await;
    let alpha = register_endpoint(&client, "alpha", "a-1").await;
    let mut events: Vec<(u64, u64)> = Vec::new();
    responses_until(&mut stream, |r| {
        events.extend(r.events.iter().map(|e| (r.watch_id, e.revision)));
        events.len() >= 2
    })
    .await;
    // Each watch keeps its own order; between watches the stream may interleave.
    events.sort_unstable();
    assert_eq!(events, [(1, alpha), (2, beta)]);

    // Cancelling watch 2 ends it alone: its next event never comes, watch 1's does.
    let cancel = pb::WatchManyRequest {
        request: Some(pb::watch_many_request::Request::Cancel(
            pb::WatchCancelRequest { watch_id: 2 },
        )),
    };
    requests.send(cancel).await.unwrap();
    let got = responses_until(&mut stream, |r| r.canceled).await;
    let cancelled = got.last().unwrap();
    assert_eq!((cancelled.watch_id, cancelled.cancel_code), (2, 0));
    register_endpoint(&client, "beta", "b-1").await;
    let alpha = register_endpoint(&client, "alpha", "a-2").await;
    let got = responses_until(&mut stream, |r| !r.events.is_empty()).await;
    assert!(got.iter().all(|r| r.watch_id == 1), "{got:?}");
    assert_eq!(got.last().unwrap().events[0].revision, alpha);

    // The node counts the stream once and its remaining live watch once.
    let metrics = http_get(&cluster.nodes[2].admin_addr, "/metrics")
        .map(|(_, body)| body)
        .unwrap();
    assert_eq!(
        metric_sample(&metrics, "bowline_watch_many_streams"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric_sample(&metrics, "bowline_watch_active"),
        Some(1.0),
        "{metrics}"
    );

    // The node stopping ends watch 1 with where to resume, then the stream itself.
    let reader = tokio::spawn(async move {
        let mut rest = Vec::new();
        let end = loop {
            match tokio::time::timeout(WAIT, stream.message()).await {
                Ok(Ok(Some(r))) => rest.push(r),
                Ok(Ok(None)) => break Code::Ok,
                Ok(Err(status)) => break status.code(),
                Err(_) => break Code::DeadlineExceeded,
            }
        };
        (rest, end)
    });
    let status = tokio::task::spawn_blocking(move || {
        let status = cluster.terminate(2);
        (status, cluster)
    })
    .await
    .unwrap();
    assert!(status.0.success());
    let (rest, end) = reader.await.unwrap();
    let ended = rest.iter().find(|r| r.canceled).expect("watch 1 cancelled");
    assert_eq!(ended.watch_id, 1);
    assert_eq!(ended.cancel_code, Code::Unavailable as i32);
    assert_eq!(ended.resume_revision, alpha + 1);
    assert_eq!(end, Code::Unavailable, "{rest:?}");
    drop(requests);
}
