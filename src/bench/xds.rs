//! `bowline bench xds`: simulated ADS clients (real xDS v3 protocol, ACKing every response)
//! spread over the nodes; one endpoint changes at a time, and the time from the write's
//! commit to every client having received and ACKed the new assignment is measured.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::cluster::LocalCluster;
use super::{micros_histogram, write_json, CommonArgs, Latency};
use crate::client::{Client, ClientOptions};
use crate::proto::v1 as pb;
use crate::xds::translate::{CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE};

/// Flags of `bowline bench xds`.
#[derive(Debug, Args)]
pub struct XdsBenchArgs {
    /// Simulated proxies.
    #[arg(long, default_value_t = 1000)]
    pub proxies: usize,
    /// Endpoints in the registry (spread over 100 services).
    #[arg(long = "registry-endpoints", default_value_t = 10_000)]
    pub registry_endpoints: usize,
    /// Changes to measure.
    #[arg(long, default_value_t = 10)]
    pub changes: usize,
    /// Use state-of-the-world ADS instead of delta.
    #[arg(long)]
    pub sotw: bool,
    /// Connect every proxy to node 1 only (a single node's capacity).
    #[arg(long)]
    pub one_node: bool,
    /// Common flags.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// The result.
#[derive(Debug, Serialize)]
pub struct XdsBenchResult {
    /// Proxies.
    pub proxies: usize,
    /// Registry endpoints.
    pub registry_endpoints: usize,
    /// Protocol variant.
    pub stream: &'static str,
    /// Nodes the proxies were spread over.
    pub nodes: usize,
    /// Seconds until every proxy had ACKed its initial config.
    pub initial_sync_seconds: f64,
    /// Commit → every proxy received and ACKed the changed assignment.
    pub convergence: Latency,
    /// Changes a proxy never received.
    pub missed: u64,
    /// Sum of the nodes' RSS at the end, MiB.
    pub nodes_rss_mib: f64,
}

fn node(i: usize) -> Node {
    Node {
        id: format!("bench-proxy-{i}"),
        // Ten identities: a fleet of sidecars fronting ten services.
        cluster: format!("svc-{}", i % 10),
        ..Default::default()
    }
}

/// Received: (revision, when) for every EDS update.
type Log = Arc<Mutex<Vec<(u64, Instant)>>>;

async fn run_delta(channel: Channel, i: usize, synced: Arc<AtomicUsize>, log: Log) {
    let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(16);
    let Ok(response) = AggregatedDiscoveryServiceClient::new(channel)
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
    else {
        return;
    };
    let mut stream = response.into_inner();
    // EDS subscriptions follow the clusters, as Envoy does.
    for (k, type_url) in [CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE].iter().enumerate() {
        let subscribe = match *type_url {
            ROUTE_TYPE => vec!["outbound_http".to_string()],
            _ => vec![],
        };
        let _ = tx
            .send(DeltaDiscoveryRequest {
                node: (k == 0).then(|| node(i)),
                type_url: type_url.to_string(),
                resource_names_subscribe: subscribe,
                ..Default::default()
            })
            .await;
    }
    let mut acked = std::collections::HashSet::new();
    let mut counted = false;
    while let Ok(Some(r)) = stream.message().await {
        let now = Instant::now();
        let subscribe: Vec<String> = if r.type_url == CLUSTER_TYPE {
            r.resources.iter().map(|res| res.name.clone()).collect()
        } else {
            Vec::new()
        };
        let _ = tx
            .send(DeltaDiscoveryRequest {
                type_url: r.type_url.clone(),
                response_nonce: r.nonce.clone(),
                ..Default::default()
            })
            .await;
        if !subscribe.is_empty() {
            let _ = tx
                .send(DeltaDiscoveryRequest {
                    type_url: ENDPOINT_TYPE.to_string(),
                    resource_names_subscribe: subscribe,
                    ..Default::default()
                })
                .await;
        }
        acked.insert(r.type_url.clone());
        if !counted && acked.len() == 4 {
            counted = true;
            synced.fetch_add(1, Ordering::Relaxed);
        }
        if r.type_url == ENDPOINT_TYPE {
            if let Ok(revision) = r.system_version_info.parse() {
                log.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((revision, now));
            }
        }
    }
}

async fn run_sotw(channel: Channel, i: usize, synced: Arc<AtomicUsize>, log: Log) {
    let (tx, rx) = mpsc::channel::<DiscoveryRequest>(16);
    let Ok(response) = AggregatedDiscoveryServiceClient::new(channel)
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
    else {
        return;
    };
    let mut stream = response.into_inner();
    let _ = tx
        .send(DiscoveryRequest {
            node: Some(node(i)),
            type_url: CLUSTER_TYPE.to_string(),
            ..Default::default()
        })
        .await;
    let _ = tx
        .send(DiscoveryRequest {
            type_url: LISTENER_TYPE.to_string(),
            ..Default::default()
        })
        .await;
    let mut names: HashMap<String, Vec<String>> = HashMap::new();
    let mut acked = std::collections::HashSet::new();
    let mut counted = false;
    while let Ok(Some(r)) = stream.message().await {
        let now = Instant::now();
        // Cluster names to subscribe EDS to; the route name is fixed.
        if r.type_url == CLUSTER_TYPE && !names.contains_key(ENDPOINT_TYPE) {
            let clusters: Vec<String> = r
                .resources
                .iter()
                .filter_map(|a| {
                    <envoy_types::pb::envoy::config::cluster::v3::Cluster as prost::Message>::decode(a.value.as_slice())
                        .ok()
                        .map(|c| c.name)
                })
                .collect();
            names.insert(ENDPOINT_TYPE.to_string(), clusters.clone());
            let _ = tx
                .send(DiscoveryRequest {
                    type_url: ENDPOINT_TYPE.to_string(),
                    resource_names: clusters,
                    ..Default::default()
                })
                .await;
        }
        if r.type_url == LISTENER_TYPE && !names.contains_key(ROUTE_TYPE) {
            names.insert(ROUTE_TYPE.to_string(), vec!["outbound_http".into()]);
            let _ = tx
                .send(DiscoveryRequest {
                    type_url: ROUTE_TYPE.to_string(),
                    resource_names: vec!["outbound_http".into()],
                    ..Default::default()
                })
                .await;
        }
        let _ = tx
            .send(DiscoveryRequest {
                type_url: r.type_url.clone(),
                version_info: r.version_info.clone(),
                response_nonce: r.nonce.clone(),
                resource_names: names.get(&r.type_url).cloned().unwrap_or_default(),
                ..Default::default()
            })
            .await;
        acked.insert(r.type_url.clone());
        if !counted && acked.len() == 4 {
            counted = true;
            synced.fetch_add(1, Ordering::Relaxed);
        }
        if r.type_url == ENDPOINT_TYPE {
            if let Ok(revision) = r.version_info.parse() {
                log.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((revision, now));
            }
        }
    }
}

/// Runs `bowline bench xds`.
pub async fn run(args: &XdsBenchArgs) -> anyhow::Result<()> {
    let proxies = if args.common.quick {
        args.proxies.min(50)
    } else {
        args.proxies
    };
    let registry_endpoints = if args.common.quick {
        args.registry_endpoints.min(500)
    } else {
        args.registry_endpoints
    };
    eprintln!("starting a local three-node cluster …");
    let cluster = LocalCluster::start(3, &[]).await?;
    let client =
        Client::new(&cluster.client_addrs, ClientOptions::default()).map_err(anyhow::Error::msg)?;
    let services = 100usize;
    for s in 0..services {
        let request = pb::RegisterServiceRequest {
            service: Some(pb::Service {
                name: format!("svc-{s}"),
                ports: vec![pb::ServicePort {
                    name: "http".into(),
                    port: 8080,
                    protocol: "http".into(),
                }],
                ..Default::default()
            }),
            expected_revision: None,
        };
        client
            .registry_write(|mut c| {
                let request = request.clone();
                async move { c.register_service(request).await }
            })
            .await?;
    }
    eprintln!("registering {registry_endpoints} endpoints …");
    let register = move |i: usize, port: u32| pb::RegisterEndpointRequest {
        endpoint: Some(pb::Endpoint {
            id: format!("e{i}"),
            service: format!("svc-{}", i % services),
            address: format!("10.0.{}.{}", (i / 250) % 250, i % 250 + 1),
            port,
            weight: Some(1),
            ..Default::default()
        }),
        expected_revision: None,
    };
    let mut tasks = Vec::new();
    for w in 0..32usize {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while i < registry_endpoints {
                let request = register(i, 8080);
                client
                    .registry_write(|mut c| {
                        let request = request.clone();
                        async move { c.register_endpoint(request).await }
                    })
                    .await?;
                i += 32;
            }
            Ok::<(), tonic::Status>(())
        }));
    }
    for t in tasks {
        t.await??;
    }

    let nodes = if args.one_node {
        1
    } else {
        cluster.client_addrs.len()
    };
    let mut channels = Vec::new();
    for addr in &cluster.client_addrs[..nodes] {
        for _ in 0..8 {
            channels.push(
                Channel::from_shared(format!("http://{addr}"))?
                    .initial_stream_window_size(4 << 20)
                    .connect_lazy(),
            );
        }
    }
    let synced = Arc::new(AtomicUsize::new(0));
    let logs: Vec<Log> = (0..proxies).map(|_| Log::default()).collect();
    eprintln!(
        "connecting {proxies} {} ADS clients over {nodes} node(s) …",
        if args.sotw { "SotW" } else { "delta" }
    );
    let started = Instant::now();
    let mut handles = Vec::new();
    for (i, log) in logs.iter().enumerate() {
        let channel = channels[i % channels.len()].clone();
        let (synced, log) = (synced.clone(), log.clone());
        handles.push(if args.sotw {
            tokio::spawn(run_sotw(channel, i, synced, log))
        } else {
            tokio::spawn(run_delta(channel, i, synced, log))
        });
    }
    let deadline = Instant::now() + Duration::from_secs(180);
    while synced.load(Ordering::Relaxed) < proxies {
        if Instant::now() > deadline {
            anyhow::bail!(
                "only {} of {proxies} proxies synced",
                synced.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let initial_sync_seconds = started.elapsed().as_secs_f64();

    let mut convergence = micros_histogram();
    let mut missed = 0u64;
    for change in 0..args.changes {
        let request = register(change % registry_endpoints, 9000 + change as u32);
        let response = client
            .registry_write(|mut c| {
                let request = request.clone();
                async move { c.register_endpoint(request).await }
            })
            .await?;
        let committed = Instant::now();
        let revision = response.header.map_or(0, |h| h.revision);
        let wait_until = Instant::now() + Duration::from_secs(30);
        loop {
            let arrived: Vec<Option<Instant>> = logs
                .iter()
                .map(|l| {
                    l.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .iter()
                        .find(|(r, _)| *r >= revision)
                        .map(|(_, at)| *at)
                })
                .collect();
            if arrived.iter().all(Option::is_some) || Instant::now() > wait_until {
                for at in arrived {
                    match at {
                        Some(at) => {
                            let _ = convergence
                                .record(at.saturating_duration_since(committed).as_micros().max(1)
                                    as u64);
                        }
                        None => missed += 1,
                    }
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let result = XdsBenchResult {
        proxies,
        registry_endpoints,
        stream: if args.sotw { "sotw" } else { "delta" },
        nodes,
        initial_sync_seconds,
        convergence: Latency::from_micros(&convergence),
        missed,
        nodes_rss_mib: (0..3).map(|i| super::rss_mib(cluster.pid(i))).sum(),
    };
    println!(
        "{:>8} {:>9} {:>6} {:>6} {:>10} {:>10} {:>10} {:>10} {:>7} {:>9}",
        "PROXIES",
        "ENDPOINTS",
        "STREAM",
        "NODES",
        "SYNC",
        "CONV P50",
        "CONV P99",
        "CONV MAX",
        "MISSED",
        "RSS"
    );
    println!(
        "{:>8} {:>9} {:>6} {:>6} {:>9.2}s {:>8.1}ms {:>8.1}ms {:>8.1}ms {:>7} {:>6.0}MiB",
        result.proxies,
        result.registry_endpoints,
        result.stream,
        result.nodes,
        result.initial_sync_seconds,
        result.convergence.p50_ms,
        result.convergence.p99_ms,
        result.convergence.max_ms,
        result.missed,
        result.nodes_rss_mib
    );
    write_json(&args.common.json, &result)?;
    for h in handles {
        h.abort();
    }
    drop(cluster);
    Ok(())
}
