//! `bowline chaos`: fault scenarios against a local three-node cluster of real processes,
//! with the workloads users feel running throughout: writers that record every
//! acknowledged write (checked afterwards: none lost), a watcher per node (checked: gapless,
//! in order), HTTP load through a real Envoy (checked: no failed request), and timings (time
//! to a new leader, write-unavailability gap, time until health checking resumes and until
//! a config change reaches Envoy). Partition scenarios run each node in its own network
//! namespace and also check that the cut-off leader neither acknowledges writes nor serves
//! stale linearizable reads, and that it catches up after the cut heals.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use super::cluster::LocalCluster;
use super::dataplane::{envoy_from_env, DataPlane, LoadCounts};
use super::workloads::{
    read_while_cut, register_endpoint_until, wait_rejoined, write, ProbeTarget, Watcher, Writers,
    WAIT,
};
use crate::client::{Client, ClientOptions};
use crate::proto::v1 as pb;

/// Every scenario; the `partition-` ones need root and `ip`/`iptables`.
pub const SCENARIOS: [&str; 8] = [
    "kill-leader",
    "kill-follower",
    "pause-leader",
    "rolling-restart",
    "crash-all",
    "wipe-follower",
    "partition-leader",
    "partition-clients-both-sides",
];

/// How long a fault lasts before it is healed (longer than the election timeout).
const FAULT: Duration = Duration::from_secs(4);

/// The weight the config change gives backend 1 (it starts at 1).
const CHANGED_WEIGHT: u32 = 5;

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
    /// Exit non-zero if any write was lost, any watch had a gap, any request through Envoy
    /// failed, or a cut-off leader acknowledged a write or served a stale read.
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
    /// "ran", or why the data-plane workload did not run.
    pub data_plane: String,
    /// Requests sent through Envoy during the run (None when the data plane was skipped).
    pub requests: Option<u64>,
    /// Requests through Envoy without a 200 answer within 2 s (must be 0).
    pub failed_requests: Option<u64>,
    /// Fault → the first probe-driven health transition committed after it (ms).
    pub health_resume_ms: Option<u64>,
    /// Fault → acknowledgement of a weight change written right after the fault (ms).
    pub config_acked_ms: Option<u64>,
    /// Fault → that weight change shown by Envoy's admin `/clusters` (ms).
    pub config_to_envoy_ms: Option<u64>,
    /// Partitions: writes the cut-off node acknowledged while cut (must be 0).
    pub minority_acks: Option<usize>,
    /// Partitions: linearizable reads on the cut-off node that missed a write the majority
    /// had acknowledged before the read began (must be 0).
    pub stale_reads: Option<usize>,
    /// Partitions: linearizable reads on the cut-off node during the cut that failed or timed
    /// out, as they should.
    pub refused_reads: Option<usize>,
    /// Partitions: heal → the cut-off node serves a linearizable read with a write made by
    /// the majority during the cut (ms); None if it never did (a failure).
    pub rejoin_ms: Option<u64>,
}

impl ChaosResult {
    /// Why this run fails `--check`, if it does.
    fn violations(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut count = |what: &str, n: usize| {
            if n > 0 {
                out.push(format!("{n} {what}"));
            }
        };
        count("lost writes", self.lost);
        count("watch gaps", self.watch_gaps);
        count("events out of order", self.watch_disorder);
        count(
            "failed requests through Envoy",
            self.failed_requests.unwrap_or(0) as usize,
        );
        count(
            "writes acknowledged by the cut-off node",
            self.minority_acks.unwrap_or(0),
        );
        count("stale linearizable reads", self.stale_reads.unwrap_or(0));
        if is_partition(&self.scenario) && self.rejoin_ms.is_none() {
            out.push("the cut-off node never caught up".to_string());
        }
        out
    }
}

fn is_partition(scenario: &str) -> bool {
    scenario.starts_with("partition-")
}

fn client(endpoints: &[String], attempt: Duration, total: Duration) -> anyhow::Result<Client> {
    Client::new(
        endpoints,
        ClientOptions {
            total_timeout: total,
            attempt_timeout: attempt,
            connect_timeout: attempt,
        },
    )
    .map_err(anyhow::Error::msg)
}

/// `endpoints` starting at `first`, then the others in order: where a client prefers to go.
fn starting_at(endpoints: &[String], first: usize) -> Vec<String> {
    (0..endpoints.len())
        .map(|k| endpoints[(first + k) % endpoints.len()].clone())
        .collect()
}

async fn leader(client: &Client) -> Option<u64> {
    client
        .cluster(|mut c| async move { c.status(pb::StatusRequest {}).await })
        .await
        .ok()
        .map(|s| s.leader_id)
        .filter(|l| *l != 0)
}

/// Fault → a node other than `old` reports a leader other than `old`.
async fn wait_new_leader(others: &[Client], old: u64, fault: Instant) -> Option<u64> {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        for c in others {
            if leader(c).await.is_some_and(|l| l != old) {
                return Some(fault.elapsed().as_millis() as u64);
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

fn ms_since(start: Instant, end: Option<Instant>) -> Option<u64> {
    end.map(|e| e.saturating_duration_since(start).as_millis() as u64)
}

async fn run_one(name: &str, args: &ChaosArgs, round: usize) -> anyhow::Result<ChaosResult> {
    if !SCENARIOS.contains(&name) {
        anyhow::bail!("unknown scenario {name}; known: {}", SCENARIOS.join(", "));
    }
    let partition = is_partition(name);
    let mut cluster = if partition {
        LocalCluster::start_partitionable(3, &[]).await?
    } else {
        LocalCluster::start(3, &[]).await?
    };
    let endpoints = cluster.client_addrs.clone();
    let n = endpoints.len();
    let admin = Client::new(&endpoints, ClientOptions::default()).map_err(anyhow::Error::msg)?;
    let short = Duration::from_millis(500);
    let pinned: Vec<Client> = (0..n)
        .map(|i| client(&endpoints[i..=i], short, short))
        .collect::<anyhow::Result<_>>()?;
    let setup_leader = (leader(&admin).await.unwrap_or(1) - 1) as usize;

    // Envoy attaches to a follower no scenario faults (unless the leader moves there), so
    // the data plane shows the mesh riding out a control-plane fault, not Envoy's reconnect.
    let envoy_node = (setup_leader + 2) % n;
    let mut data_plane = match envoy_from_env() {
        Some(envoy) => {
            let mut plane = DataPlane::start(&envoy, &admin, &endpoints[envoy_node]).await?;
            plane.start_load(2, Duration::from_millis(5));
            Some(plane)
        }
        None => {
            eprintln!("chaos: data-plane workload skipped: BOWLINE_ENVOY not set");
            None
        }
    };
    let probe_target = ProbeTarget::start(&admin, &cluster.host_ip()).await?;

    // Clients on both sides: a third of the writers and one watcher talk only to the node
    // that will be cut off, the rest only to the others. Otherwise writers and watchers are
    // spread over the nodes, failing over to the others.
    let both_sides = name == "partition-clients-both-sides";
    let majority: Vec<String> = (0..n)
        .filter(|i| *i != setup_leader)
        .map(|i| endpoints[i].clone())
        .collect();
    let preferred = |k: usize| -> Vec<String> {
        if !both_sides {
            starting_at(&endpoints, k % n)
        } else if k % n == setup_leader {
            vec![endpoints[setup_leader].clone()]
        } else {
            starting_at(&majority, k)
        }
    };
    let watchers = (0..n)
        .map(|i| Watcher::start(&preferred(i)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let timeout = Duration::from_millis(args.client_timeout_ms.max(1));
    let writer_clients = (0..args.writers)
        .map(|w| client(&preferred(w), timeout, timeout))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let writers = Writers::start(writer_clients, round);

    tokio::time::sleep(Duration::from_secs(2)).await;
    let old_leader = leader(&admin).await.unwrap_or(1);
    let leader_index = (old_leader - 1) as usize;
    if both_sides && leader_index != setup_leader {
        eprintln!(
            "chaos: the leader moved from node {} to {old_leader} before the cut; node {} (where the \
             minority clients are) is cut off all the same",
            setup_leader + 1,
            setup_leader + 1
        );
    }
    // The follower to fault is never Envoy's node (unless the leader moved there).
    let follower_index = (1..n)
        .map(|k| (leader_index + k) % n)
        .find(|i| *i != envoy_node)
        .unwrap_or((leader_index + 1) % n);
    let cut_node = if both_sides {
        setup_leader
    } else {
        leader_index
    };

    // Inject: the first disruptive step of each scenario, immediately.
    let injected = Instant::now();
    match name {
        "kill-leader" => cluster.kill(leader_index),
        "kill-follower" | "wipe-follower" => cluster.kill(follower_index),
        "pause-leader" => cluster.pause(leader_index),
        "crash-all" => (0..n).for_each(|i| cluster.kill(i)),
        "rolling-restart" => cluster.stop(0).await,
        _ => cluster.isolate(cut_node)?,
    }
    // The fault counts from when it is in force: a cut takes a few iptables runs and
    // crash-all three kills, and writes acknowledged meanwhile say nothing about the gap.
    // A rolling restart is in force from the first SIGTERM.
    let fault = if name == "rolling-restart" {
        injected
    } else {
        Instant::now()
    };
    probe_target.close();

    // Timings run alongside the rest of the scenario.
    let health_client = client(&endpoints, short, Duration::from_secs(2))?;
    let health = tokio::spawn(async move {
        ProbeTarget::wait_for(&health_client, "unhealthy", Instant::now() + WAIT).await
    });
    // The change goes out as an operator's client would send it: failing over at once
    // from a node that refuses, and, after a timeout (ambiguous, so the client returns it),
    // retried from the next node.
    let rotations = (0..n)
        .map(|i| client(&starting_at(&endpoints, i), short, Duration::from_secs(2)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let config = data_plane.as_ref().map(|plane| {
        let change = plane.reweighted(1, CHANGED_WEIGHT);
        let watch = plane.weight_watch(1, CHANGED_WEIGHT);
        let clients = rotations;
        tokio::spawn(async move {
            let deadline = Instant::now() + WAIT;
            register_endpoint_until(&clients, change, deadline)
                .await
                .ok()?;
            let acked = Instant::now();
            Some((acked, watch.wait(deadline).await))
        })
    });
    let healed = Arc::new(AtomicBool::new(false));
    let cut_reads = if partition {
        let others: Vec<String> = (0..n)
            .filter(|i| *i != cut_node)
            .map(|i| endpoints[i].clone())
            .collect();
        let majority = client(&others, Duration::from_secs(1), Duration::from_secs(3))?;
        let cut_off = pinned[cut_node].clone();
        Some(tokio::spawn(read_while_cut(
            majority,
            cut_off,
            round,
            healed.clone(),
        )))
    } else {
        None
    };

    // Follow-up steps of the multi-step scenarios.
    match name {
        "crash-all" => {
            tokio::time::sleep(Duration::from_millis(500)).await;
            for i in 0..n {
                cluster.spawn(i, &[])?;
            }
        }
        "wipe-follower" => {
            cluster.wipe(follower_index)?;
            cluster.spawn(follower_index, &["--initial-cluster-state=existing"])?;
        }
        "rolling-restart" => {
            cluster.spawn(0, &[])?;
            cluster.wait_ready(WAIT).await?;
            for i in 1..n {
                cluster.stop(i).await;
                cluster.spawn(i, &[])?;
                cluster.wait_ready(WAIT).await?;
            }
        }
        _ => {}
    }
    let leader_hit = matches!(name, "kill-leader" | "pause-leader") || partition;
    let new_leader_ms = if leader_hit {
        let hit = if partition { cut_node } else { leader_index };
        let others: Vec<Client> = (0..n)
            .filter(|i| *i != hit)
            .map(|i| pinned[i].clone())
            .collect();
        wait_new_leader(&others, hit as u64 + 1, fault).await
    } else {
        None
    };

    // Let the workload run through the fault, then heal.
    tokio::time::sleep(FAULT.saturating_sub(fault.elapsed())).await;
    let heal = Instant::now();
    match name {
        "kill-leader" => cluster.spawn(leader_index, &[])?,
        "kill-follower" => cluster.spawn(follower_index, &[])?,
        "pause-leader" => cluster.resume(leader_index),
        _ if partition => cluster.heal(cut_node)?,
        _ => {}
    }
    healed.store(true, Ordering::Relaxed);
    let mut markers = Vec::new();
    let (mut stale_reads, mut refused_reads, mut rejoin_ms) = (None, None, None);
    if let Some(task) = cut_reads {
        let seen = task.await?;
        let last = match seen.markers.last() {
            Some(m) => m.clone(),
            // The majority never acknowledged a write during the cut: write one now, so
            // the catch-up check still has something the cut-off node lacked.
            None => write(&admin, &format!("c{round}-marker-healed")).await?,
        };
        let (rejoined, stale_after) = wait_rejoined(&pinned[cut_node], &last).await;
        stale_reads = Some(seen.stale + stale_after);
        refused_reads = Some(seen.refused);
        rejoin_ms = ms_since(heal, rejoined);
        markers = seen.markers;
        markers.push(last);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let acks = writers.stop().await;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    let load = match data_plane.as_mut() {
        Some(plane) => {
            let load = plane.finish_load().await;
            if load.failed > 0 {
                eprintln!(
                    "chaos: {} of {} requests through Envoy failed, first: {:?}\nEnvoy log tail:\n{}",
                    load.failed,
                    load.requests,
                    load.first_failures,
                    plane.log_tail()
                );
            }
            Some(load)
        }
        None => None,
    };
    let health_resume_ms = ms_since(fault, health.await.ok().flatten());
    let (config_acked, config_in_envoy) = match config {
        Some(task) => task.await.ok().flatten().unzip(),
        None => (None, None),
    };
    let config_acked_ms = ms_since(fault, config_acked);
    let config_to_envoy_ms = ms_since(fault, config_in_envoy.flatten());

    // Check: every acknowledged write is there (linearizable listing).
    let listing = admin
        .registry(|mut c| async move { c.list_services(pb::ListServicesRequest::default()).await })
        .await?;
    let present: BTreeSet<String> = listing.services.into_iter().map(|s| s.name).collect();
    let lost = acks
        .iter()
        .chain(&markers)
        .filter(|a| !present.contains(&a.name))
        .count();
    // Fault → the first acknowledgement of a write that was sent after the fault.
    let write_gap_ms = acks
        .iter()
        .filter(|a| a.started >= fault)
        .map(|a| a.acked)
        .min()
        .map(|first| first.duration_since(fault).as_millis() as u64);
    // A write begun after the cut and acknowledged before the heal by the cut-off node
    // would have been committed without a majority.
    let minority_acks = partition.then(|| {
        acks.iter()
            .filter(|a| a.node == cut_node as u64 + 1 && a.started >= fault && a.acked < heal)
            .count()
    });

    // Check: each watcher delivered every acknowledged revision, once, in order.
    let acked: BTreeSet<u64> = acks.iter().chain(&markers).map(|a| a.revision).collect();
    let (mut watch_gaps, mut watch_disorder) = (0, 0);
    for watcher in watchers {
        let (gaps, disorder) = watcher.check(&acked).await;
        watch_gaps += gaps;
        watch_disorder += disorder;
    }
    let LoadCounts {
        requests, failed, ..
    } = load.clone().unwrap_or_default();
    Ok(ChaosResult {
        scenario: name.to_string(),
        acknowledged: acks.len(),
        lost,
        watch_gaps,
        watch_disorder,
        new_leader_ms,
        write_gap_ms,
        client_timeout_ms: args.client_timeout_ms,
        data_plane: if load.is_some() {
            "ran".to_string()
        } else {
            "skipped: BOWLINE_ENVOY not set".to_string()
        },
        requests: load.as_ref().map(|_| requests),
        failed_requests: load.as_ref().map(|_| failed),
        health_resume_ms,
        config_acked_ms,
        config_to_envoy_ms,
        minority_acks,
        stale_reads,
        refused_reads,
        rejoin_ms,
    })
}

fn print_table(results: &[ChaosResult]) {
    const HEADER: [&str; 12] = [
        "SCENARIO",
        "ACKED",
        "LOST",
        "GAPS",
        "DISORDER",
        "NEW LEADER",
        "WRITE GAP",
        "REQUESTS",
        "FAILED",
        "HEALTH",
        "CONFIG ACK/ENVOY",
        "CUT ACKS/STALE/REFUSED, REJOIN",
    ];
    let ms = |v: Option<u64>| v.map_or("-".to_string(), |v| format!("{v}ms"));
    let n = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    let rows: Vec<[String; 12]> = results
        .iter()
        .map(|r| {
            let cut = match (r.minority_acks, r.stale_reads, r.refused_reads) {
                (Some(a), Some(s), Some(f)) => format!("{a}/{s}/{f}, {}", ms(r.rejoin_ms)),
                _ => "-".to_string(),
            };
            [
                r.scenario.clone(),
                r.acknowledged.to_string(),
                r.lost.to_string(),
                r.watch_gaps.to_string(),
                r.watch_disorder.to_string(),
                ms(r.new_leader_ms),
                ms(r.write_gap_ms),
                n(r.requests),
                n(r.failed_requests),
                ms(r.health_resume_ms),
                format!("{}/{}", ms(r.config_acked_ms), ms(r.config_to_envoy_ms)),
                cut,
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..HEADER.len())
        .map(|c| {
            rows.iter()
                .map(|r| r[c].len())
                .fold(HEADER[c].len(), usize::max)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(c, (cell, w))| match c {
                0 => format!("{cell:<w$}"),
                _ => format!("{cell:>w$}"),
            })
            .collect();
        println!("{}", padded.join("  "));
    };
    line(HEADER.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
    println!(
        "write timeout {} ms per attempt; data plane: {}",
        results.first().map_or(0, |r| r.client_timeout_ms),
        results.first().map_or("-", |r| r.data_plane.as_str())
    );
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
    if scenarios.iter().any(|s| is_partition(s)) {
        super::netns::check_available()?;
    }
    let mut results = Vec::new();
    for name in &scenarios {
        for round in 0..args.repeat.max(1) {
            eprintln!("chaos: {name} (round {})", round + 1);
            // On Ctrl-C the run is dropped rather than the process killed, so the cluster's
            // processes, namespaces and iptables rules are removed by their Drop guards.
            let result = tokio::select! {
                result = run_one(name, args, round) => result?,
                _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted; cleaned up"),
            };
            results.push(result);
        }
    }
    print_table(&results);
    super::write_json(&args.json, &results)?;
    let failures: Vec<String> = results
        .iter()
        .filter_map(|r| {
            let v = r.violations();
            (!v.is_empty()).then(|| format!("{}: {}", r.scenario, v.join(", ")))
        })
        .collect();
    if args.check && !failures.is_empty() {
        anyhow::bail!("checks failed: {}", failures.join("; "));
    }
    Ok(())
}
