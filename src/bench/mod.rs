//! `bowline bench`: benchmarks that start what they need (or use `--endpoints`), report HDR
//! latency percentiles and throughput as a table and JSON. Benchmarks report numbers; they
//! never pass or fail on timing.

pub mod chaos;
pub mod cluster;
pub mod dataplane;
pub mod disk;
pub mod etcd;
pub mod failover;
pub mod health;
pub mod kv;
pub mod netns;
pub mod watch;
pub mod workloads;
pub mod xds;

use clap::{Args, Subcommand};
use serde::Serialize;

/// Benchmark suites.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Puts (256-byte values, distinct keys) at several concurrencies, beside etcd.
    Put(kv::PutBenchArgs),
    /// Linearizable and stale reads on the leader and a follower, beside etcd.
    Read(kv::ReadBenchArgs),
    /// Write gap after SIGKILL of the leader, beside etcd, with the same client timeout.
    Failover(failover::FailoverBenchArgs),
    /// Data directory size and memory under a long stream of writes, beside etcd.
    Disk(disk::DiskBenchArgs),
    /// Watch delivery latency: from a write's acknowledgement to its delivery at every watcher.
    Watch(watch::WatchBenchArgs),
    /// Health probing at scale: schedule lag, CPU and RSS of the probing leader.
    Health(health::HealthBenchArgs),
    /// xDS convergence: simulated ADS clients, commit → every proxy ACKed.
    Xds(xds::XdsBenchArgs),
}

/// Flags shared by every suite.
#[derive(Debug, Args, Clone)]
pub struct CommonArgs {
    /// Use an existing cluster (client addresses) instead of starting three local nodes.
    #[arg(long, value_delimiter = ',')]
    pub bench_endpoints: Vec<String>,
    /// Write the results as JSON to this file as well.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// A small, fast run (for CI smoke tests).
    #[arg(long)]
    pub quick: bool,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Maximum.
    pub max_ms: f64,
}

impl Latency {
    /// Summarizes a histogram of microseconds.
    pub fn from_micros(h: &hdrhistogram::Histogram<u64>) -> Latency {
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        }
    }
}

/// A new histogram for microsecond latencies up to an hour.
pub fn micros_histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// Runs `bowline bench …`.
pub async fn run(command: &BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Put(args) => kv::run_put(args).await,
        BenchCommand::Read(args) => kv::run_read(args).await,
        BenchCommand::Failover(args) => failover::run(args).await,
        BenchCommand::Disk(args) => disk::run(args).await,
        BenchCommand::Watch(args) => watch::run(args).await,
        BenchCommand::Health(args) => health::run(args).await,
        BenchCommand::Xds(args) => xds::run(args).await,
    }
}

/// Prints JSON results to stdout's companion file when asked.
pub fn write_json<T: Serialize>(
    path: &Option<std::path::PathBuf>,
    value: &T,
) -> anyhow::Result<()> {
    if let Some(path) = path {
        std::fs::write(path, serde_json::to_string_pretty(value)?)?;
        eprintln!("results written to {}", path.display());
    }
    Ok(())
}

/// Resident memory of a process, MiB (0 when unknown).
pub fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}
