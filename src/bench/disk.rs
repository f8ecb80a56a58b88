//! `bowline bench disk`: how big the data directories and the processes grow under a long
//! stream of writes. Writes overwrite a fixed set of keys, so the live state stays the same
//! size and any growth is history: Raft log not yet purged, snapshots, MVCC revisions.
//! Bowline runs with its defaults (snapshot every `--snapshot-every` entries, log purged
//! behind it); etcd with its defaults plus revision auto-compaction, as an operator would
//! run it for a long time.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde::Serialize;

use super::kv::{closed_loop, value_256, CompareArgs, System, Target};
use super::{rss_mib, write_json};

/// Flags of `bowline bench disk`.
#[derive(Debug, Args)]
pub struct DiskBenchArgs {
    /// Total writes per system.
    #[arg(long, default_value_t = 1_000_000)]
    pub writes: u64,
    /// Distinct keys the writes cycle over.
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// Concurrent writers.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Measurements per system (evenly spaced).
    #[arg(long, default_value_t = 10)]
    pub checkpoints: u64,
    /// etcd's `--auto-compaction-retention` (revisions) for this suite.
    #[arg(long, default_value_t = 10_000)]
    pub etcd_compaction_revisions: u64,
    /// Side-by-side flags.
    #[command(flatten)]
    pub compare: CompareArgs,
}

/// One measurement.
#[derive(Debug, Clone, Serialize)]
pub struct DiskPoint {
    /// Which system.
    pub system: System,
    /// Writes acknowledged so far.
    pub writes: u64,
    /// Largest data directory among the nodes, MiB.
    pub data_dir_mib: f64,
    /// Largest resident memory among the nodes, MiB.
    pub rss_mib: f64,
    /// Write throughput over the last stretch.
    pub ops_per_sec: f64,
}

/// Bytes under `path`, recursively.
pub fn dir_bytes(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Runs `bowline bench disk`.
pub async fn run(args: &DiskBenchArgs) -> anyhow::Result<()> {
    if !args.compare.bench_endpoints.is_empty() || !args.compare.etcd_endpoints.is_empty() {
        anyhow::bail!("bench disk measures data directories, so it starts its own clusters; drop --bench-endpoints/--etcd-endpoints");
    }
    let etcd_flags = [
        "--auto-compaction-mode=revision".to_string(),
        format!(
            "--auto-compaction-retention={}",
            args.etcd_compaction_revisions
        ),
    ];
    let targets = Target::start_all(&args.compare, &[], &etcd_flags).await?;
    let (writes, checkpoints) = if args.compare.quick {
        (2_000, 2)
    } else {
        (args.writes, args.checkpoints.max(1))
    };
    let keys = args.keys.max(1);
    let value = Arc::new(value_256());
    let mut points = Vec::new();
    for target in &targets {
        let leader = target.leader(Duration::from_secs(30)).await?;
        let per_checkpoint = writes.div_ceil(checkpoints);
        let mut done = 0;
        for checkpoint in 0..checkpoints {
            let client = target.nodes[leader].clone();
            let (value, offset) = (value.clone(), checkpoint * per_checkpoint);
            let stats = closed_loop(
                args.concurrency,
                per_checkpoint,
                Duration::from_secs(3600),
                move |w, seq| {
                    let (client, value) = (client.clone(), value.clone());
                    async move {
                        client
                            .put(w, &format!("disk-{}", (offset + seq) % keys), &value)
                            .await
                    }
                },
            )
            .await;
            done += stats.ops;
            let (dirs, pids): (Vec<_>, Vec<_>) = (0..target.nodes.len())
                .map(|i| match (&target.bowline, &target.etcd) {
                    (Some(c), _) => (c.data_dir(i), c.pid(i)),
                    (_, Some(c)) => (c.data_dir(i), c.pid(i)),
                    _ => (Default::default(), 0),
                })
                .unzip();
            let point = DiskPoint {
                system: target.system,
                writes: done,
                data_dir_mib: dirs
                    .iter()
                    .map(|d| dir_bytes(d) as f64 / 1048576.0)
                    .fold(0.0, f64::max),
                rss_mib: pids.iter().map(|p| rss_mib(*p)).fold(0.0, f64::max),
                ops_per_sec: stats.ops_per_sec,
            };
            eprintln!(
                "bench: disk {} {} writes: data dir {:.1} MiB, RSS {:.1} MiB, {:.0} writes/s",
                point.system, point.writes, point.data_dir_mib, point.rss_mib, point.ops_per_sec
            );
            points.push(point);
            if stats.errors > 0 && stats.ops == 0 {
                anyhow::bail!(
                    "{} stopped accepting writes: {}",
                    target.system,
                    stats.first_error.unwrap_or_default()
                );
            }
        }
    }
    println!(
        "{:<8} {:>10} {:>14} {:>9} {:>9}",
        "SYSTEM", "WRITES", "DATA DIR MiB", "RSS MiB", "WRITES/s"
    );
    for p in &points {
        println!(
            "{:<8} {:>10} {:>14.1} {:>9.1} {:>9.0}",
            p.system.to_string(),
            p.writes,
            p.data_dir_mib,
            p.rss_mib,
            p.ops_per_sec
        );
    }
    println!(
        "{keys} distinct keys, 256-byte values, concurrency {}",
        args.concurrency
    );
    write_json(&args.compare.json, &points)
}
