//! `bowline bench watch`: N watchers on one service, spread over every node; a paced writer
//! updates that service's endpoints; for every write, the time from its acknowledgement to
//! its delivery at each watcher, and the events any watcher missed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;
use tonic::transport::Channel;

use super::cluster::LocalCluster;
use super::etcd::{self, EtcdCluster};
use super::kv::System;
use super::{micros_histogram, write_json, CommonArgs, Latency};
use crate::client::{Client, ClientOptions};
use crate::proto::etcd::watch_client::WatchClient as EtcdWatchClient;
use crate::proto::etcd::{watch_request, PutRequest, WatchCreateRequest};
use crate::proto::v1 as pb;
use crate::proto::v1::watch_client::WatchClient;

/// Flags of `bowline bench watch`.
#[derive(Debug, Args)]
pub struct WatchBenchArgs {
    /// Number of watchers (comma-separated for several runs, e.g. 1000,10000).
    #[arg(long, value_delimiter = ',', default_value = "1000")]
    pub watchers: Vec<usize>,
    /// Writes per run.
    #[arg(long, default_value_t = 200)]
    pub writes: usize,
    /// Writes per second.
    #[arg(long, default_value_t = 50)]
    pub rate: u64,
    /// HTTP/2 connections the watchers share (per node).
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Use an existing etcd cluster (client addresses host:port) instead of starting three
    /// members of the distribution's `etcd`.
    #[arg(long, value_delimiter = ',')]
    pub etcd_endpoints: Vec<String>,
    /// Measure Bowline only (when etcd is not installed).
    #[arg(long)]
    pub no_etcd: bool,
    /// Common flags.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// The result of one run.
#[derive(Debug, Serialize)]
pub struct WatchBenchResult {
    /// Which system.
    pub system: System,
    /// Watchers.
    pub watchers: usize,
    /// Writes made.
    pub writes: usize,
    /// Write acknowledgement latency.
    pub write_latency: Latency,
    /// Acknowledgement → delivery, over every (watcher, write).
    pub delivery: Latency,
    /// Deliveries expected but not received.
    pub missed: u64,
    /// Seconds from the first write to the last delivery.
    pub seconds: f64,
}

async fn register(
    client: &Client,
    request: pb::RegisterEndpointRequest,
) -> Result<u64, tonic::Status> {
    let r = client
        .registry_write(|mut c| {
            let request = request.clone();
            async move { c.register_endpoint(request).await }
        })
        .await?;
    Ok(r.header.map_or(0, |h| h.revision))
}

async fn one_run(
    endpoints: &[String],
    watchers: usize,
    args: &WatchBenchArgs,
) -> anyhow::Result<WatchBenchResult> {
    let client = Client::new(endpoints, ClientOptions::default()).map_err(anyhow::Error::msg)?;
    let service = format!("bench-watch-{watchers}");
    let request = pb::RegisterServiceRequest {
        service: Some(pb::Service {
            name: service.clone(),
            ports: vec![pb::ServicePort {
                name: "http".into(),
                port: 8080,
                protocol: "http".into(),
            }],
            ..Default::default()
        }),
        expected_revision: None,
    };
    let start = client
        .registry_write(|mut c| {
            let request = request.clone();
            async move { c.register_service(request).await }
        })
        .await?
        .header
        .map_or(0, |h| h.revision)
        + 1;

    // Channels: `connections` per node; watchers are spread round robin over all of them.
    let channels = watcher_channels(endpoints, args.connections)?;
    let ready = Arc::new(AtomicUsize::new(0));
    let writes = args.writes;
    let deadline = Instant::now() + Duration::from_secs(writes as u64 / args.rate.max(1) + 60);
    let mut tasks = Vec::with_capacity(watchers);
    for w in 0..watchers {
        let channel = channels[w % channels.len()].clone();
        let ready = ready.clone();
        let request = pb::WatchRequest {
            kinds: vec![pb::ObjectKind::Endpoint as i32],
            service: service.clone(),
            start_revision: Some(start),
            ..Default::default()
        };
        tasks.push(tokio::spawn(async move {
            let mut received: Vec<(u64, Instant)> = Vec::with_capacity(writes);
            let Ok(response) = WatchClient::new(channel).watch(request).await else {
                ready.fetch_add(1, Ordering::Relaxed);
                return received;
            };
            ready.fetch_add(1, Ordering::Relaxed);
            let mut stream = response.into_inner();
            while received.len() < writes {
                let remaining = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(remaining, stream.message()).await {
                    Ok(Ok(Some(msg))) => {
                        let now = Instant::now();
                        received.extend(msg.events.iter().map(|e| (e.revision, now)));
                    }
                    _ => break,
                }
            }
            received
        }));
    }
    wait_connected(&ready, watchers, deadline).await?;

    // Paced writes; the acknowledgement time of each revision is the reference.
    let mut acked: HashMap<u64, Instant> = HashMap::with_capacity(writes);
    let mut write_latency = micros_histogram();
    let interval = Duration::from_micros(1_000_000 / args.rate.max(1));
    let began = Instant::now();
    for i in 0..writes {
        let due = began + interval * i as u32;
        tokio::time::sleep_until(due.into()).await;
        let request = pb::RegisterEndpointRequest {
            endpoint: Some(pb::Endpoint {
                id: format!("e{}", i % 16),
                service: service.clone(),
                address: "127.0.0.1".into(),
                port: 10_000 + i as u32,
                weight: Some(1),
                ..Default::default()
            }),
            expected_revision: None,
        };
        let sent = Instant::now();
        let revision = register(&client, request).await?;
        let now = Instant::now();
        let _ = write_latency.record(now.duration_since(sent).as_micros().max(1) as u64);
        acked.insert(revision, now);
    }

    summarize(
        System::Bowline,
        watchers,
        tasks,
        &acked,
        write_latency,
        began,
    )
    .await
}

/// Received (revision, arrival) pairs of one watcher.
type Received = tokio::task::JoinHandle<Vec<(u64, Instant)>>;

/// Acknowledgement → delivery over every (watcher, write), and the deliveries missing.
async fn summarize(
    system: System,
    watchers: usize,
    tasks: Vec<Received>,
    acked: &HashMap<u64, Instant>,
    write_latency: hdrhistogram::Histogram<u64>,
    began: Instant,
) -> anyhow::Result<WatchBenchResult> {
    let writes = acked.len();
    let mut delivery = micros_histogram();
    let mut delivered = 0u64;
    let mut last_delivery = began;
    for task in tasks {
        let received = task.await?;
        for (revision, at) in received {
            if let Some(ack) = acked.get(&revision) {
                delivered += 1;
                last_delivery = last_delivery.max(at);
                // Delivery can beat the writer's own acknowledgement; count that as ~0.
                let us = at.saturating_duration_since(*ack).as_micros().max(1) as u64;
                let _ = delivery.record(us);
            }
        }
    }
    Ok(WatchBenchResult {
        system,
        watchers,
        writes,
        write_latency: Latency::from_micros(&write_latency),
        delivery: Latency::from_micros(&delivery),
        missed: (watchers * writes) as u64 - delivered,
        seconds: last_delivery.duration_since(began).as_secs_f64(),
    })
}

/// `connections` lazily connected channels per node, which the watchers share round robin.
fn watcher_channels(endpoints: &[String], connections: usize) -> anyhow::Result<Vec<Channel>> {
    let mut channels = Vec::new();
    for endpoint in endpoints {
        for _ in 0..connections.max(1) {
            channels.push(etcd::channel(endpoint)?);
        }
    }
    Ok(channels)
}

async fn wait_connected(
    ready: &AtomicUsize,
    watchers: usize,
    deadline: Instant,
) -> anyhow::Result<()> {
    while ready.load(Ordering::Relaxed) < watchers {
        if Instant::now() > deadline {
            anyhow::bail!("watchers did not all connect");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// The same run against etcd: one watch stream per watcher on the key prefix of one
/// "service", spread over every member; a paced writer puts keys under it.
async fn one_run_etcd(
    endpoints: &[String],
    watchers: usize,
    args: &WatchBenchArgs,
) -> anyhow::Result<WatchBenchResult> {
    let prefix = format!("bench-watch-{watchers}/");
    let channels = watcher_channels(endpoints, args.connections)?;
    let mut writer = crate::proto::etcd::kv_client::KvClient::new(channels[0].clone());
    let put = |i: usize| PutRequest {
        key: format!("{prefix}e{}", i % 16).into_bytes(),
        value: format!("127.0.0.1:{}", 10_000 + i).into_bytes(),
        ..Default::default()
    };
    let start = writer
        .put(put(0))
        .await?
        .into_inner()
        .header
        .map_or(0, |h| h.revision)
        + 1;
    let ready = Arc::new(AtomicUsize::new(0));
    let writes = args.writes;
    let deadline = Instant::now() + Duration::from_secs(writes as u64 / args.rate.max(1) + 60);
    let mut tasks = Vec::with_capacity(watchers);
    for w in 0..watchers {
        let channel = channels[w % channels.len()].clone();
        let ready = ready.clone();
        let create = WatchCreateRequest {
            key: prefix.clone().into_bytes(),
            // The prefix's range end: the last byte ('/') plus one.
            range_end: format!("bench-watch-{watchers}0").into_bytes(),
            start_revision: start as i64,
            ..Default::default()
        };
        tasks.push(tokio::spawn(async move {
            let mut received: Vec<(u64, Instant)> = Vec::with_capacity(writes);
            let request = crate::proto::etcd::WatchRequest {
                request_union: Some(watch_request::RequestUnion::CreateRequest(create)),
            };
            // The request stream stays open (a closed send side cancels etcd's watches).
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            let _ = tx.send(request).await;
            let outbound = tokio_stream::wrappers::ReceiverStream::new(rx);
            let response = EtcdWatchClient::new(channel).watch(outbound).await;
            ready.fetch_add(1, Ordering::Relaxed);
            let Ok(response) = response else {
                return received;
            };
            let mut stream = response.into_inner();
            while received.len() < writes {
                let remaining = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(remaining, stream.message()).await {
                    Ok(Ok(Some(msg))) => {
                        let now = Instant::now();
                        received.extend(
                            msg.events
                                .iter()
                                .filter_map(|e| e.kv.as_ref())
                                .map(|kv| (kv.mod_revision as u64, now)),
                        );
                    }
                    _ => break,
                }
            }
            drop(tx);
            received
        }));
    }
    wait_connected(&ready, watchers, deadline).await?;

    let mut acked: HashMap<u64, Instant> = HashMap::with_capacity(writes);
    let mut write_latency = micros_histogram();
    let interval = Duration::from_micros(1_000_000 / args.rate.max(1));
    let began = Instant::now();
    for i in 0..writes {
        tokio::time::sleep_until((began + interval * i as u32).into()).await;
        let sent = Instant::now();
        let revision = writer
            .put(put(i + 1))
            .await?
            .into_inner()
            .header
            .map_or(0, |h| h.revision);
        let now = Instant::now();
        let _ = write_latency.record(now.duration_since(sent).as_micros().max(1) as u64);
        acked.insert(revision as u64, now);
    }
    summarize(System::Etcd, watchers, tasks, &acked, write_latency, began).await
}

/// Runs `bowline bench watch`.
pub async fn run(args: &WatchBenchArgs) -> anyhow::Result<()> {
    let (cluster, endpoints) = if args.common.bench_endpoints.is_empty() {
        eprintln!("starting a local three-node cluster …");
        let cluster = LocalCluster::start(3, &[]).await?;
        let endpoints = cluster.client_addrs.clone();
        (Some(cluster), endpoints)
    } else {
        (None, args.common.bench_endpoints.clone())
    };
    let (etcd_cluster, etcd_endpoints) = if args.no_etcd {
        (None, Vec::new())
    } else if args.etcd_endpoints.is_empty() {
        let cluster = EtcdCluster::start(3, &[]).await?;
        let endpoints = cluster.client_addrs.clone();
        (Some(cluster), endpoints)
    } else {
        (None, args.etcd_endpoints.clone())
    };
    let watcher_counts: Vec<usize> = if args.common.quick {
        vec![100]
    } else {
        args.watchers.clone()
    };
    let mut results = Vec::new();
    for watchers in watcher_counts {
        let mut run_args_writes = args.writes;
        if args.common.quick {
            run_args_writes = run_args_writes.min(50);
        }
        eprintln!(
            "watch: {watchers} watchers, {run_args_writes} writes at {}/s …",
            args.rate
        );
        let quick_args = WatchBenchArgs {
            watchers: vec![watchers],
            writes: run_args_writes,
            rate: args.rate,
            connections: args.connections,
            etcd_endpoints: Vec::new(),
            no_etcd: args.no_etcd,
            common: args.common.clone(),
        };
        results.push(one_run(&endpoints, watchers, &quick_args).await?);
        if !etcd_endpoints.is_empty() {
            eprintln!("watch: the same on etcd …");
            results.push(one_run_etcd(&etcd_endpoints, watchers, &quick_args).await?);
        }
    }
    println!(
        "{:<8} {:>9} {:>7} {:>12} {:>12} {:>12} {:>12} {:>8}",
        "SYSTEM",
        "WATCHERS",
        "WRITES",
        "WRITE P99",
        "DELIV P50",
        "DELIV P99",
        "DELIV MAX",
        "MISSED"
    );
    for r in &results {
        println!(
            "{:<8} {:>9} {:>7} {:>10.2}ms {:>10.2}ms {:>10.2}ms {:>10.2}ms {:>8}",
            r.system.to_string(),
            r.watchers,
            r.writes,
            r.write_latency.p99_ms,
            r.delivery.p50_ms,
            r.delivery.p99_ms,
            r.delivery.max_ms,
            r.missed
        );
    }
    write_json(&args.common.json, &results)?;
    drop(cluster);
    drop(etcd_cluster);
    Ok(())
}
