//! `bowline bench failover`: writers at fixed concurrency, SIGKILL the leader (or, with
//! `--signal term`, stop it the planned way, as a rolling upgrade does), and measure the
//! write-unavailability gap (fault → acknowledgement of the first write sent after it) with
//! the same client timeout for both systems, repeated.
//!
//! The writer is the same for both: each attempt goes to the node that last answered, times
//! out after `--client-timeout-ms`, and on any error moves to the next node. Both systems'
//! followers forward writes to their leader, so any node is a valid first try.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use super::kv::{value_256, CompareArgs, System, Target};
use super::write_json;

/// Flags of `bowline bench failover`.
#[derive(Debug, Args)]
pub struct FailoverBenchArgs {
    /// Concurrent writers.
    #[arg(long, default_value_t = 16)]
    pub writers: usize,
    /// Leader kills per system.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Client timeout per write attempt, in milliseconds (the same for both systems).
    #[arg(long, default_value_t = 200)]
    pub client_timeout_ms: u64,
    /// How the leader is stopped: `kill` (SIGKILL, a crash) or `term` (SIGTERM, a planned
    /// stop, where both systems hand leadership to a follower first).
    #[arg(long, value_enum, default_value_t = StopSignal::Kill)]
    pub signal: StopSignal,
    /// Side-by-side flags.
    #[command(flatten)]
    pub compare: CompareArgs,
}

/// How `bench failover` stops the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StopSignal {
    /// SIGKILL: a crash.
    Kill,
    /// SIGTERM: a planned stop.
    Term,
}

/// One leader kill.
#[derive(Debug, Clone, Serialize)]
pub struct FailoverRun {
    /// Which system.
    pub system: System,
    /// Repetition, from 1.
    pub round: usize,
    /// Fault → first acknowledged write sent after the fault (ms); None if none came in 30 s.
    pub write_gap_ms: Option<u64>,
    /// Fault → a surviving node reports itself leader (ms), polled every 10 ms.
    pub new_leader_ms: Option<u64>,
    /// Writes acknowledged during the round.
    pub acknowledged: u64,
    /// Attempts that failed or timed out during the round.
    pub failed_attempts: u64,
}

/// Runs `bowline bench failover`.
pub async fn run(args: &FailoverBenchArgs) -> anyhow::Result<()> {
    if !args.compare.bench_endpoints.is_empty() || !args.compare.etcd_endpoints.is_empty() {
        anyhow::bail!("bench failover kills processes, so it starts its own clusters; drop --bench-endpoints/--etcd-endpoints");
    }
    let mut targets = Target::start_all(&args.compare, &[], &[]).await?;
    let repeat = if args.compare.quick {
        1
    } else {
        args.repeat.max(1)
    };
    let timeout = Duration::from_millis(args.client_timeout_ms.max(1));
    let mut runs = Vec::new();
    for round in 1..=repeat {
        // Alternate which system goes first.
        let order: Vec<usize> = if round % 2 == 1 {
            (0..targets.len()).collect()
        } else {
            (0..targets.len()).rev().collect()
        };
        for index in order {
            let target = &mut targets[index];
            eprintln!("bench: failover round {round} on {}", target.system);
            runs.push(one_round(target, round, args.writers, timeout, args.signal).await?);
        }
    }
    println!(
        "{:<8} {:>5} {:>12} {:>11} {:>8} {:>8}",
        "SYSTEM", "ROUND", "WRITE GAP", "NEW LEADER", "ACKED", "FAILED"
    );
    let ms = |v: Option<u64>| v.map_or("none".to_string(), |g| format!("{g} ms"));
    for r in &runs {
        println!(
            "{:<8} {:>5} {:>12} {:>11} {:>8} {:>8}",
            r.system.to_string(),
            r.round,
            ms(r.write_gap_ms),
            ms(r.new_leader_ms),
            r.acknowledged,
            r.failed_attempts
        );
    }
    println!(
        "client timeout per attempt: {} ms; writers: {}; leader stopped by SIG{}",
        args.client_timeout_ms,
        args.writers,
        match args.signal {
            StopSignal::Kill => "KILL",
            StopSignal::Term => "TERM",
        }
    );
    write_json(&args.compare.json, &runs)
}

async fn one_round(
    target: &mut Target,
    round: usize,
    writers: usize,
    timeout: Duration,
    signal: StopSignal,
) -> anyhow::Result<FailoverRun> {
    let leader = target.leader(Duration::from_secs(60)).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let acks: Arc<Mutex<Vec<(Instant, Instant)>>> = Arc::default();
    let failed = Arc::new(AtomicUsize::new(0));
    let value = Arc::new(value_256());
    let mut tasks = Vec::new();
    for w in 0..writers.max(1) {
        let (nodes, stop, acks, failed, value) = (
            target.nodes.clone(),
            stop.clone(),
            acks.clone(),
            failed.clone(),
            value.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut node = w % nodes.len();
            for seq in 0..10_000_000u64 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let key = format!("failover-r{round}-w{w}-{seq}");
                let sent = Instant::now();
                match tokio::time::timeout(timeout, nodes[node].put(w, &key, &value)).await {
                    Ok(Ok(())) => acks
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((sent, Instant::now())),
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        node = (node + 1) % nodes.len();
                    }
                }
            }
        }));
    }
    // Let the writers reach a steady state before the fault.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let acked_before = acks.lock().unwrap_or_else(|e| e.into_inner()).len();
    let failed_before = failed.load(Ordering::Relaxed);
    let fault = Instant::now();
    match signal {
        StopSignal::Kill => kill(target, leader),
        StopSignal::Term => terminate(target, leader),
    }
    let deadline = fault + Duration::from_secs(30);
    let mut write_gap_ms = None;
    let mut new_leader_ms = None;
    while Instant::now() < deadline {
        if new_leader_ms.is_none() && target.leader_now().await.is_some_and(|l| l != leader) {
            new_leader_ms = Some(fault.elapsed().as_millis() as u64);
        }
        let first = acks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(sent, _)| *sent >= fault)
            .map(|(_, acked)| *acked)
            .min();
        if let Some(first) = first {
            write_gap_ms.get_or_insert(first.duration_since(fault).as_millis() as u64);
            if new_leader_ms.is_some() {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Keep writing through the new leader for a moment, then stop and heal.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    restart(target, leader).await?;
    let acknowledged = (acks.lock().unwrap_or_else(|e| e.into_inner()).len() - acked_before) as u64;
    Ok(FailoverRun {
        system: target.system,
        round,
        write_gap_ms,
        new_leader_ms,
        acknowledged,
        failed_attempts: (failed.load(Ordering::Relaxed) - failed_before) as u64,
    })
}

fn kill(target: &mut Target, node: usize) {
    if let Some(cluster) = target.bowline.as_mut() {
        cluster.kill(node);
    }
    if let Some(cluster) = target.etcd.as_mut() {
        cluster.kill(node);
    }
}

/// Sends SIGTERM and returns at once; `restart` reaps the process.
fn terminate(target: &mut Target, node: usize) {
    if let Some(cluster) = target.bowline.as_ref() {
        cluster.terminate(node);
    }
    if let Some(cluster) = target.etcd.as_ref() {
        cluster.terminate(node);
    }
}

async fn restart(target: &mut Target, node: usize) -> anyhow::Result<()> {
    // After SIGTERM the node has stopped (or is stopping) by now; make sure, and reap it.
    kill(target, node);
    if let Some(cluster) = target.bowline.as_mut() {
        cluster.spawn(node, &[])?;
        cluster.wait_ready(Duration::from_secs(60)).await?;
    }
    if let Some(cluster) = target.etcd.as_mut() {
        cluster.spawn(node)?;
        cluster.wait_leader(Duration::from_secs(60)).await?;
    }
    // The restarted node must have caught up before the next round can kill someone else.
    target.leader(Duration::from_secs(60)).await?;
    Ok(())
}
