//! `bowline chaos`: fault scenarios against a local three-node cluster of real processes,
//! with the workloads users feel running throughout: writers that record every
//! acknowledged write (checked afterwards: none lost), a watcher per node (checked: gapless,
//! in order), and timings (time to a new leader, write-unavailability gap).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use futures::StreamExt;
use serde::Serialize;

use super::cluster::LocalCluster;
use crate::client::watch::WatchItem;
use crate::client::{Client, ClientOptions};
use crate::proto::v1 as pb;

/// Scenarios that run on processes. Network partitions need namespaces and are not here.
pub const SCENARIOS: [&str; 6] = [
    "kill-leader",
    "kill-follower",
    "pause-leader",
    "rolling-restart",
    "crash-all",
    "wipe-follower",
];

/// Flags of `bowline chaos`.
#[derive(Debug, Args)]
pub struct ChaosArgs {
    /// Scenarios to run (see --help of each in docs/chaos.md); none with --all.
    pub scenarios: Vec<String>,
    /// Run every scenario.
    #[arg(long)]
    pub all: bool,
    /// Repetitions of each scenario.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// Concurrent writers.
    #[arg(long, default_value_t = 16)]
    pub writers: usize,
    /// Client timeout per write attempt, in milliseconds.
    #[arg(long, default_value_t = 200)]
    pub client_timeout_ms: u64,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// Exit non-zero if any write was lost or any watch had a gap.
    #[arg(long)]
    pub check: bool,
}

/// What one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct ChaosResult {
    /// Scenario name.
    pub scenario: String,
    /// Acknowledged writes.
    pub acknowledged: usize,
    /// Acknowledged writes missing afterwards (must be 0).
    pub lost: usize,
    /// Acknowledged revisions a watcher never delivered, summed over watchers (must be 0).
    pub watch_gaps: usize,
    /// Events delivered twice or out of order, summed over watchers (must be 0).
    pub watch_disorder: usize,
    /// Fault → a leader other than the faulted one (ms), when the leader was hit.
    pub new_leader_ms: Option<u64>,
    /// Fault → first acknowledged write that started after the fault (ms).
    pub write_gap_ms: Option<u64>,
    /// Client timeout per attempt (ms).
    pub client_timeout_ms: u64,
}

/// (name, revision, started, acknowledged)
type Acks = Arc<Mutex<Vec<(String, u64, Instant, Instant)>>>;

async fn leader(client: &Client) -> Option<u64> {
    client
        .cluster(|mut c| async move { c.status(pb::StatusRequest {}).await })
        .await
        .ok()
        .map(|s| s.leader_id)
        .filter(|l| *l != 0)
}

async fn run_one(name: &str, args: &ChaosArgs, round: usize) -> anyhow::Result<ChaosResult> {
    let mut cluster = LocalCluster::start(3, &[]).await?;
    let endpoints = cluster.client_addrs.clone();
    let admin = Client::new(&endpoints, ClientOptions::default()).map_err(anyhow::Error::msg)?;
    let timeout = Duration::from_millis(args.client_timeout_ms.max(1));
    let writer_client = Client::new(
        &endpoints,
        ClientOptions {
            total_timeout: timeout,
            attempt_timeout: timeout,
            connect_timeout: timeout,
        },
    )
    .map_err(anyhow::Error::msg)?;

    // Watchers: one per node (that node first, failing over to the others).
    let mut watchers = Vec::new();
    for i in 0..endpoints.len() {
        let mut order = vec![endpoints[i].clone()];
        order.extend(
            endpoints
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, e)| e.clone()),
        );
        let client = Client::new(&order, ClientOptions::default()).map_err(anyhow::Error::msg)?;
        let events = Arc::new(Mutex::new(Vec::<u64>::new()));
        let sink = events.clone();
        let mut stream = client.watch(pb::WatchRequest {
            kinds: vec![pb::ObjectKind::Service as i32],
            start_revision: Some(1),
            progress_interval_ms: 500,
            ..Default::default()
        });
        let task = tokio::spawn(async move {
            while let Some(Ok(item)) = stream.next().await {
                if let WatchItem::Events(batch) = item {
                    sink.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .extend(batch.iter().map(|e| e.revision));
                }
            }
        });
        watchers.push((events, task));
    }

    // Writers: every acknowledged write is recorded with its revision and time.
    let acks: Acks = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..args.writers {
        let (client, acks, stop) = (writer_client.clone(), acks.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            for seq in 0..1_000_000u64 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                let name = format!("c{round}-w{w}-{seq}");
                let request = pb::RegisterServiceRequest {
                    service: Some(pb::Service {
                        name: name.clone(),
                        ..Default::default()
                    }),
                    expected_revision: None,
                };
                let started = Instant::now();
                match client
                    .registry_write(|mut c| {
                        let request = request.clone();
                        async move { c.register_service(request).await }
                    })
                    .await
                {
                    Ok(r) => acks.lock().unwrap_or_else(|e| e.into_inner()).push((
                        name,
                        r.header.map_or(0, |h| h.revision),
                        started,
                        Instant::now(),
                    )),
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        }));
    }

    tokio::time::sleep(Duration::from_secs(2)).await;
    let old_leader = leader(&admin).await.unwrap_or(1);
    let leader_index = (old_leader - 1) as usize;
    let follower_index = (leader_index + 1) % cluster.len();
    let fault = Instant::now();
    let mut new_leader_ms = None;
    let leader_hit = matches!(name, "kill-leader" | "pause-leader");
    match name {
        "kill-leader" => cluster.kill(leader_index),
        "kill-follower" => cluster.kill(follower_index),
        "pause-leader" => cluster.pause(leader_index),
        "crash-all" => {
            for i in 0..cluster.len() {
                cluster.kill(i);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            for i in 0..cluster.len() {
                cluster.spawn(i, &[])?;
            }
        }
        "wipe-follower" => {
            cluster.kill(follower_index);
            cluster.wipe(follower_index)?;
            cluster.spawn(follower_index, &["--initial-cluster-state=existing"])?;
        }
        "rolling-restart" => {
            for i in 0..cluster.len() {
                cluster.stop(i);
                cluster.spawn(i, &[])?;
                cluster.wait_ready(Duration::from_secs(30)).await?;
            }
        }
        other => anyhow::bail!("unknown scenario {other}; known: {}", SCENARIOS.join(", ")),
    }
    if leader_hit {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(l) = leader(&admin).await {
                if l != old_leader {
                    new_leader_ms = Some(fault.elapsed().as_millis() as u64);
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // Let the workload run through the fault, then heal.
    tokio::time::sleep(Duration::from_secs(4)).await;
    match name {
        "kill-leader" => cluster.spawn(leader_index, &[])?,
        "kill-follower" => cluster.spawn(follower_index, &[])?,
        "pause-leader" => cluster.resume(leader_index),
        _ => {}
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        let _ = w.await;
    }
    cluster.wait_ready(Duration::from_secs(60)).await?;

    // Check: every acknowledged write is there (linearizable listing).
    let acks = acks.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let listing = admin
        .registry(|mut c| async move { c.list_services(pb::ListServicesRequest::default()).await })
        .await?;
    let present: BTreeSet<String> = listing.services.into_iter().map(|s| s.name).collect();
    let lost = acks
        .iter()
        .filter(|(n, _, _, _)| !present.contains(n))
        .count();
    // Fault → the first acknowledgement of a write that was sent after the fault.
    let write_gap_ms = acks
        .iter()
        .filter(|(_, _, started, _)| *started >= fault)
        .map(|(_, _, _, acked)| *acked)
        .min()
        .map(|first| first.duration_since(fault).as_millis() as u64);

    // Check: each watcher delivered every acknowledged revision, once, in order.
    let acked: BTreeSet<u64> = acks.iter().map(|(_, r, _, _)| *r).collect();
    let last = acked.iter().next_back().copied().unwrap_or(0);
    let mut watch_gaps = 0;
    let mut watch_disorder = 0;
    for (events, task) in watchers {
        let deadline = Instant::now() + Duration::from_secs(30);
        while events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last()
            .copied()
            .unwrap_or(0)
            < last
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        task.abort();
        let seen = events.lock().unwrap_or_else(|e| e.into_inner()).clone();
        watch_disorder += seen.windows(2).filter(|w| w[1] <= w[0]).count();
        let seen: BTreeSet<u64> = seen.into_iter().collect();
        watch_gaps += acked.iter().filter(|r| !seen.contains(r)).count();
    }
    Ok(ChaosResult {
        scenario: name.to_string(),
        acknowledged: acks.len(),
        lost,
        watch_gaps,
        watch_disorder,
        new_leader_ms,
        write_gap_ms,
        client_timeout_ms: args.client_timeout_ms,
    })
}

/// Runs `bowline chaos`.
pub async fn run(args: &ChaosArgs) -> anyhow::Result<()> {
    let scenarios: Vec<String> = if args.all {
        SCENARIOS.iter().map(|s| s.to_string()).collect()
    } else {
        args.scenarios.clone()
    };
    if scenarios.is_empty() {
        anyhow::bail!("name a scenario ({}) or pass --all", SCENARIOS.join(", "));
    }
    let mut results = Vec::new();
    for name in &scenarios {
        for round in 0..args.repeat.max(1) {
            eprintln!("chaos: {name} (round {})", round + 1);
            results.push(run_one(name, args, round).await?);
        }
    }
    println!(
        "{:<16} {:>7} {:>5} {:>10} {:>9} {:>11} {:>10} {:>8}",
        "SCENARIO", "ACKED", "LOST", "WATCH GAPS", "DISORDER", "NEW LEADER", "WRITE GAP", "TIMEOUT"
    );
    let ms = |v: Option<u64>| v.map_or("-".to_string(), |v| format!("{v}ms"));
    for r in &results {
        println!(
            "{:<16} {:>7} {:>5} {:>10} {:>9} {:>11} {:>10} {:>6}ms",
            r.scenario,
            r.acknowledged,
            r.lost,
            r.watch_gaps,
            r.watch_disorder,
            ms(r.new_leader_ms),
            ms(r.write_gap_ms),
            r.client_timeout_ms
        );
    }
    super::write_json(&args.json, &results)?;
    if args.check
        && results
            .iter()
            .any(|r| r.lost > 0 || r.watch_gaps > 0 || r.watch_disorder > 0)
    {
        anyhow::bail!("a scenario lost acknowledged writes or had watch gaps");
    }
    Ok(())
}
