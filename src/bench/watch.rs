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
    /// Watches per gRPC stream: Bowline's `WatchMany` and etcd's `Watch` both carry many
    /// watches on one stream, as etcd's own client does. 1 opens a stream per watcher
    /// (Bowline's server-streaming `Watch`).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub per_stream: u64,
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
    /// Watches per gRPC stream.
    pub per_stream: u64,
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
    let request = pb::WatchRequest {
        kinds: vec![pb::ObjectKind::Endpoint as i32],
        service: service.clone(),
        start_revision: Some(start),
        ..Default::default()
    };
    let per_stream = args.per_stream as usize;
    let mut tasks = Vec::new();
    for (s, first) in (0..watchers).step_by(per_stream).enumerate() {
        let channel = channels[s % channels.len()].clone();
        let count = per_stream.min(watchers - first);
        let ready = ready.clone();
        let request = request.clone();
        tasks.push(if per_stream == 1 {
            tokio::spawn(async move {
                vec![watch_one(channel, request, writes, deadline, &ready).await]
            })
        } else {
            tokio::spawn(async move {
                watch_many(channel, request, count, writes, deadline, &ready).await
            })
        });
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
        args.per_stream,
        tasks,
        &acked,
        write_latency,
        began,
    )
    .await
}

/// Received (revision, arrival) pairs of each watcher one task served.
type Received = tokio::task::JoinHandle<Vec<Vec<(u64, Instant)>>>;

/// One watcher on its own `Watch` stream.
async fn watch_one(
    channel: Channel,
    request: pb::WatchRequest,
    writes: usize,
    deadline: Instant,
    ready: &AtomicUsize,
) -> Vec<(u64, Instant)> {
    let mut received: Vec<(u64, Instant)> = Vec::with_capacity(writes);
    let response = WatchClient::new(channel).watch(request).await;
    ready.fetch_add(1, Ordering::Relaxed);
    let Ok(response) = response else {
        return received;
    };
    let mut stream = response.into_inner();
    // One timer for the whole stream: a timer per message made the client's own timer
    // bookkeeping a large part of its CPU at 10,000 watchers.
    let collect = async {
        while received.len() < writes {
            let Ok(Some(msg)) = stream.message().await else {
                break;
            };
            let now = Instant::now();
            received.extend(msg.events.iter().map(|e| (e.revision, now)));
        }
    };
    let _ = tokio::time::timeout_at(deadline.into(), collect).await;
    received
}

/// Which watches of one stream have started and which have all they will get.
struct Tally<'a> {
    announced: Vec<bool>,
    finished: Vec<bool>,
    unfinished: usize,
    writes: usize,
    ready: &'a AtomicUsize,
}

impl<'a> Tally<'a> {
    fn new(count: usize, writes: usize, ready: &'a AtomicUsize) -> Self {
        Self {
            announced: vec![false; count],
            finished: vec![false; count],
            unfinished: count,
            writes,
            ready,
        }
    }

    /// Watch `i` was created, or refused or ended (`canceled`).
    fn announced(&mut self, i: usize, canceled: bool) {
        if i >= self.announced.len() {
            return;
        }
        if !std::mem::replace(&mut self.announced[i], true) {
            self.ready.fetch_add(1, Ordering::Relaxed);
        }
        if canceled {
            self.finish(i);
        }
    }

    fn received(&mut self, i: usize, total: usize) {
        if total >= self.writes {
            self.finish(i);
        }
    }

    fn finish(&mut self, i: usize) {
        if !std::mem::replace(&mut self.finished[i], true) {
            self.unfinished -= 1;
        }
    }

    fn all_finished(&self) -> bool {
        self.unfinished == 0
    }

    /// Counts every watch not yet announced as ready, so the writer does not wait for a
    /// stream that failed.
    fn give_up(&mut self) {
        for i in 0..self.announced.len() {
            self.announced(i, true);
        }
    }
}

/// What a response of a multiplexed watch stream says about its watch, whichever system
/// sent it.
struct Header {
    /// The watch's index on the stream (its id minus one).
    index: Option<usize>,
    created: bool,
    canceled: bool,
}

/// Reads `count` watches multiplexed on one stream until each has `writes` events, ended,
/// or the deadline passed; `header` reads a response and appends its event revisions.
async fn read_multiplexed<M: prost::Message + Default + 'static>(
    mut stream: tonic::Streaming<M>,
    count: usize,
    writes: usize,
    deadline: Instant,
    ready: &AtomicUsize,
    header: impl Fn(&M, &mut Vec<u64>) -> Header,
) -> Vec<Vec<(u64, Instant)>> {
    let mut received: Vec<Vec<(u64, Instant)>> = vec![Vec::with_capacity(writes); count];
    let mut tally = Tally::new(count, writes, ready);
    let mut revisions = Vec::new();
    // One timer for the whole stream, as in `watch_one`.
    let collect = async {
        while !tally.all_finished() {
            let Ok(Some(msg)) = stream.message().await else {
                break;
            };
            let now = Instant::now();
            revisions.clear();
            let Header {
                index,
                created,
                canceled,
            } = header(&msg, &mut revisions);
            let Some(i) = index else {
                continue;
            };
            if created || canceled {
                tally.announced(i, canceled);
                continue;
            }
            if let Some(mine) = received.get_mut(i) {
                mine.extend(revisions.iter().map(|r| (*r, now)));
                tally.received(i, mine.len());
            }
        }
    };
    let _ = tokio::time::timeout_at(deadline.into(), collect).await;
    received
}

/// `count` watchers on one `WatchMany` stream, with watch ids 1..=count.
async fn watch_many(
    channel: Channel,
    request: pb::WatchRequest,
    count: usize,
    writes: usize,
    deadline: Instant,
    ready: &AtomicUsize,
) -> Vec<Vec<(u64, Instant)>> {
    // The request side stays open: closing it would end the stream once the watches do.
    let (tx, rx) = tokio::sync::mpsc::channel(count);
    for id in 1..=count as u64 {
        let _ = tx
            .send(pb::WatchManyRequest {
                request: Some(pb::watch_many_request::Request::Create(
                    pb::WatchCreateRequest {
                        watch_id: id,
                        watch: Some(request.clone()),
                    },
                )),
            })
            .await;
    }
    let outbound = tokio_stream::wrappers::ReceiverStream::new(rx);
    let Ok(response) = WatchClient::new(channel).watch_many(outbound).await else {
        Tally::new(count, writes, ready).give_up();
        return vec![Vec::new(); count];
    };
    let received = read_multiplexed(
        response.into_inner(),
        count,
        writes,
        deadline,
        ready,
        |msg: &pb::WatchResponse, revisions| {
            revisions.extend(msg.events.iter().map(|e| e.revision));
            Header {
                index: (msg.watch_id as usize).checked_sub(1),
                created: msg.created,
                canceled: msg.canceled,
            }
        },
    )
    .await;
    drop(tx);
    received
}

/// Acknowledgement → delivery over every (watcher, write), and the deliveries missing.
async fn summarize(
    system: System,
    watchers: usize,
    per_stream: u64,
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
        for (revision, at) in task.await?.into_iter().flatten() {
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
        per_stream,
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
    let create = WatchCreateRequest {
        key: prefix.clone().into_bytes(),
        // The prefix's range end: the last byte ('/') plus one.
        range_end: format!("bench-watch-{watchers}0").into_bytes(),
        start_revision: start as i64,
        ..Default::default()
    };
    let per_stream = args.per_stream as usize;
    let mut tasks = Vec::new();
    for (s, first) in (0..watchers).step_by(per_stream).enumerate() {
        let channel = channels[s % channels.len()].clone();
        let count = per_stream.min(watchers - first);
        let ready = ready.clone();
        let create = create.clone();
        tasks.push(tokio::spawn(async move {
            etcd_watch_stream(channel, create, count, writes, deadline, &ready).await
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
    summarize(
        System::Etcd,
        watchers,
        args.per_stream,
        tasks,
        &acked,
        write_latency,
        began,
    )
    .await
}

/// `count` etcd watches on one `Watch` stream, with watch ids 1..=count (etcd 3.4 takes
/// the client's ids).
async fn etcd_watch_stream(
    channel: Channel,
    create: WatchCreateRequest,
    count: usize,
    writes: usize,
    deadline: Instant,
    ready: &AtomicUsize,
) -> Vec<Vec<(u64, Instant)>> {
    // The request stream stays open (a closed send side cancels etcd's watches).
    let (tx, rx) = tokio::sync::mpsc::channel(count);
    for id in 1..=count as i64 {
        let create = WatchCreateRequest {
            watch_id: id,
            ..create.clone()
        };
        let _ = tx
            .send(crate::proto::etcd::WatchRequest {
                request_union: Some(watch_request::RequestUnion::CreateRequest(create)),
            })
            .await;
    }
    let outbound = tokio_stream::wrappers::ReceiverStream::new(rx);
    let Ok(response) = EtcdWatchClient::new(channel).watch(outbound).await else {
        Tally::new(count, writes, ready).give_up();
        return vec![Vec::new(); count];
    };
    let received = read_multiplexed(
        response.into_inner(),
        count,
        writes,
        deadline,
        ready,
        |msg: &crate::proto::etcd::WatchResponse, revisions| {
            revisions.extend(
                msg.events
                    .iter()
                    .filter_map(|e| e.kv.as_ref())
                    .map(|kv| kv.mod_revision as u64),
            );
            Header {
                index: usize::try_from(msg.watch_id)
                    .ok()
                    .and_then(|id| id.checked_sub(1)),
                created: msg.created,
                canceled: msg.canceled,
            }
        },
    )
    .await;
    drop(tx);
    received
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
            per_stream: args.per_stream,
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
        "{:<8} {:>9} {:>10} {:>7} {:>12} {:>12} {:>12} {:>12} {:>8}",
        "SYSTEM",
        "WATCHERS",
        "PER STREAM",
        "WRITES",
        "WRITE P99",
        "DELIV P50",
        "DELIV P99",
        "DELIV MAX",
        "MISSED"
    );
    for r in &results {
        println!(
            "{:<8} {:>9} {:>10} {:>7} {:>10.2}ms {:>10.2}ms {:>10.2}ms {:>10.2}ms {:>8}",
            r.system.to_string(),
            r.watchers,
            r.per_stream,
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
