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

/// User plus system CPU time a process has used so far, in seconds; `None` when it cannot
/// be read (the process is gone, or this is not Linux).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ticks = stat_cpu_ticks(&stat)?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| ticks as f64 / hz as f64)
}

/// `utime + stime` from the text of `/proc/PID/stat`, in clock ticks. The fields are counted
/// after the last `)`, because the command name before it may hold spaces and parentheses.
fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let (_, after_name) = stat.rsplit_once(')')?;
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_read_after_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (raft log (sync) x) S 1 4242 4242 0 -1 4194560 \
                    900 0 0 0 1234 567 0 0 20 0 12 0 100 0 0";
        assert_eq!(stat_cpu_ticks(stat), Some(1234 + 567));
        assert_eq!(stat_cpu_ticks("4242 (cut short) S 1 2"), None);
        assert_eq!(stat_cpu_ticks("no name at all"), None);
    }

    #[test]
    fn cpu_time_reads_for_a_live_process_and_not_for_a_missing_one() {
        assert!(cpu_seconds(std::process::id()).is_some());
        assert_eq!(cpu_seconds(u32::MAX), None);
    }
}
