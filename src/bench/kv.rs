//! The side-by-side key-value workloads: one client abstraction over a Bowline node and an
//! etcd member, a closed-loop load generator, and the `put` and `read` suites, which run the
//! same workload against both systems, alternating, and print one table with the ratio.
//!
//! A Bowline "put" registers a service named after the key with the 256-byte value in its
//! metadata (one Raft entry, fsync'd on a majority, as an etcd put is); a "get" reads that
//! service back, linearizably (read index) or stale (the node's applied state).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;
use tonic::transport::Channel;
use tonic::Status;

use super::cluster::LocalCluster;
use super::etcd::{self, EtcdCluster};
use super::{micros_histogram, write_json, Latency};
use crate::proto::etcd::kv_client::KvClient as EtcdKv;
use crate::proto::etcd::{PutRequest, RangeRequest};
use crate::proto::v1 as pb;
use crate::proto::v1::cluster_client::ClusterClient;
use crate::proto::v1::registry_client::RegistryClient;

/// The systems compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum System {
    /// This project.
    Bowline,
    /// etcd 3.4 from the distribution.
    Etcd,
}

impl std::fmt::Display for System {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            System::Bowline => "bowline",
            System::Etcd => "etcd",
        })
    }
}

/// Flags shared by the side-by-side suites.
#[derive(Debug, Args, Clone)]
pub struct CompareArgs {
    /// Use an existing Bowline cluster (client addresses) instead of starting three nodes.
    #[arg(long, value_delimiter = ',')]
    pub bench_endpoints: Vec<String>,
    /// Use an existing etcd cluster (client addresses host:port) instead of starting three
    /// members of the distribution's `etcd` (or `$BOWLINE_ETCD`).
    #[arg(long, value_delimiter = ',')]
    pub etcd_endpoints: Vec<String>,
    /// Measure Bowline only (when etcd is not installed).
    #[arg(long)]
    pub no_etcd: bool,
    /// HTTP/2 connections each client spreads its requests over (the same for both systems).
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Write the results as JSON to this file as well.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// A small, fast run (for CI smoke tests).
    #[arg(long)]
    pub quick: bool,
    /// Extra flags for every Bowline node this run starts (for example
    /// `--serve-arg=--client-threads=1`).
    #[arg(long = "serve-arg", allow_hyphen_values = true)]
    pub serve_args: Vec<String>,
}

/// The Bowline write of `value` under `key`: a service named `key` whose metadata `v` is
/// `value` (one Raft entry, as an etcd put is).
pub fn value_service(key: &str, value: &str) -> pb::RegisterServiceRequest {
    pb::RegisterServiceRequest {
        service: Some(pb::Service {
            name: key.to_string(),
            metadata: [("v".to_string(), value.to_string())].into(),
            ..Default::default()
        }),
        expected_revision: None,
    }
}

/// The index (into `addrs`, Bowline client addresses) of the node that leads right now, if
/// one does and answers: each node is asked who leads and which node it is.
pub async fn bowline_leader_now(addrs: &[String]) -> Option<usize> {
    for (i, addr) in addrs.iter().enumerate() {
        let Ok(channel) = etcd::channel(addr) else {
            continue;
        };
        let mut client = ClusterClient::new(channel);
        let call = client.status(pb::StatusRequest {});
        if let Ok(Ok(status)) = tokio::time::timeout(Duration::from_millis(300), call).await {
            let status = status.into_inner();
            if status.leader_id != 0 && status.leader_id == status.node_id {
                return Some(i);
            }
        }
    }
    None
}

/// A client of one node of either system, spreading requests over a few connections.
#[derive(Clone)]
pub enum KvClient {
    /// A Bowline node.
    Bowline(Vec<RegistryClient<Channel>>),
    /// An etcd member.
    Etcd(Vec<EtcdKv<Channel>>),
}

impl KvClient {
    /// Connects (lazily) to `addr` with `connections` HTTP/2 connections.
    pub fn connect(system: System, addr: &str, connections: usize) -> anyhow::Result<KvClient> {
        let channels = (0..connections.max(1))
            .map(|_| etcd::channel(addr))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(match system {
            System::Bowline => {
                KvClient::Bowline(channels.into_iter().map(RegistryClient::new).collect())
            }
            System::Etcd => KvClient::Etcd(channels.into_iter().map(EtcdKv::new).collect()),
        })
    }

    /// Writes `value` under `key`; `lane` picks the connection.
    pub async fn put(&self, lane: usize, key: &str, value: &str) -> Result<(), Status> {
        match self {
            KvClient::Bowline(clients) => {
                let mut client = clients[lane % clients.len()].clone();
                client
                    .register_service(value_service(key, value))
                    .await
                    .map(|_| ())
            }
            KvClient::Etcd(clients) => {
                let mut client = clients[lane % clients.len()].clone();
                let request = PutRequest {
                    key: key.as_bytes().to_vec(),
                    value: value.as_bytes().to_vec(),
                    ..Default::default()
                };
                client.put(request).await.map(|_| ())
            }
        }
    }

    /// Reads `key`; fails with NOT_FOUND when it is absent.
    pub async fn get(&self, lane: usize, key: &str, linearizable: bool) -> Result<(), Status> {
        match self {
            KvClient::Bowline(clients) => {
                let mut client = clients[lane % clients.len()].clone();
                let consistency = if linearizable {
                    pb::Consistency::Linearizable
                } else {
                    pb::Consistency::Stale
                };
                let request = pb::GetServiceRequest {
                    name: key.to_string(),
                    consistency: consistency as i32,
                    ..Default::default()
                };
                client.get_service(request).await.map(|_| ())
            }
            KvClient::Etcd(clients) => {
                let mut client = clients[lane % clients.len()].clone();
                let request = RangeRequest {
                    key: key.as_bytes().to_vec(),
                    serializable: !linearizable,
                    ..Default::default()
                };
                let response = client.range(request).await?.into_inner();
                if response.kvs.is_empty() {
                    return Err(Status::not_found(format!("etcd has no key {key}")));
                }
                Ok(())
            }
        }
    }
}

/// One system under test: its nodes' clients, which one leads, and the cluster if this
/// process started it.
pub struct Target {
    /// Which system.
    pub system: System,
    /// Client addresses, one per node.
    pub addrs: Vec<String>,
    /// A client per node.
    pub nodes: Vec<KvClient>,
    /// A Bowline cluster this run started.
    pub bowline: Option<LocalCluster>,
    /// An etcd cluster this run started.
    pub etcd: Option<EtcdCluster>,
}

impl Target {
    /// Starts (or connects to) each system the flags ask for: Bowline first, then etcd.
    pub async fn start_all(
        args: &CompareArgs,
        bowline_flags: &[String],
        etcd_flags: &[String],
    ) -> anyhow::Result<Vec<Target>> {
        let mut targets = Vec::new();
        let (addrs, bowline) = if args.bench_endpoints.is_empty() {
            let flags: Vec<String> = bowline_flags
                .iter()
                .chain(&args.serve_args)
                .cloned()
                .collect();
            let cluster = LocalCluster::start(3, &flags).await?;
            (cluster.client_addrs.clone(), Some(cluster))
        } else {
            (args.bench_endpoints.clone(), None)
        };
        targets.push(Target::new(
            System::Bowline,
            addrs,
            bowline,
            None,
            args.connections,
        )?);
        if !args.no_etcd {
            let (addrs, etcd) = if args.etcd_endpoints.is_empty() {
                let cluster = EtcdCluster::start(3, etcd_flags).await?;
                (cluster.client_addrs.clone(), Some(cluster))
            } else {
                (args.etcd_endpoints.clone(), None)
            };
            targets.push(Target::new(
                System::Etcd,
                addrs,
                None,
                etcd,
                args.connections,
            )?);
        }
        Ok(targets)
    }

    fn new(
        system: System,
        addrs: Vec<String>,
        bowline: Option<LocalCluster>,
        etcd: Option<EtcdCluster>,
        connections: usize,
    ) -> anyhow::Result<Target> {
        let nodes = addrs
            .iter()
            .map(|a| KvClient::connect(system, a, connections))
            .collect::<anyhow::Result<_>>()?;
        Ok(Target {
            system,
            addrs,
            nodes,
            bowline,
            etcd,
        })
    }

    /// The index of the current leader, waiting (up to `timeout`) for one.
    pub async fn leader(&self, timeout: Duration) -> anyhow::Result<usize> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(i) = self.leader_now().await {
                return Ok(i);
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!("{} has no leader", self.system);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The index of the node that leads right now, if one does and answers.
    pub async fn leader_now(&self) -> Option<usize> {
        match self.system {
            System::Etcd => match &self.etcd {
                Some(cluster) => cluster.leader().await,
                None => self.etcd_leader_by_status().await,
            },
            System::Bowline => bowline_leader_now(&self.addrs).await,
        }
    }

    async fn etcd_leader_by_status(&self) -> Option<usize> {
        use crate::proto::etcd::maintenance_client::MaintenanceClient;
        for (i, addr) in self.addrs.iter().enumerate() {
            let mut client = MaintenanceClient::new(etcd::channel(addr).ok()?);
            let call = client.status(crate::proto::etcd::StatusRequest {});
            if let Ok(Ok(status)) = tokio::time::timeout(Duration::from_millis(300), call).await {
                let status = status.into_inner();
                if status.header.is_some_and(|h| h.member_id == status.leader) {
                    return Some(i);
                }
            }
        }
        None
    }

    /// Process ids of the servers, when this run started them.
    fn server_pids(&self) -> Vec<u32> {
        let pids: Vec<u32> = match (&self.bowline, &self.etcd) {
            (Some(cluster), _) => (0..cluster.len()).map(|i| cluster.pid(i)).collect(),
            (_, Some(cluster)) => (0..self.addrs.len()).map(|i| cluster.pid(i)).collect(),
            _ => Vec::new(),
        };
        if pids.contains(&0) {
            // A member is down: its CPU cannot be counted, so none is.
            return Vec::new();
        }
        pids
    }

    /// A follower's index (any node that is not `leader`).
    pub fn follower_of(&self, leader: usize) -> usize {
        (leader + 1) % self.nodes.len()
    }
}

/// What one closed-loop run measured.
#[derive(Debug, Clone, Serialize)]
pub struct RunStats {
    /// Operations completed successfully.
    pub ops: u64,
    /// Operations that failed.
    pub errors: u64,
    /// Wall time of the run.
    pub seconds: f64,
    /// Successful operations per second.
    pub ops_per_sec: f64,
    /// Latency of successful operations.
    pub latency: Latency,
    /// The first error seen, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    /// CPU time per successful operation, when the run could read it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuPerOp>,
    /// The largest resident memory of one server process right after the run, in MiB
    /// (absent for a cluster this run did not start).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_mib: Option<f64>,
}

/// CPU time (user plus system) per successful operation, in microseconds. On a machine whose
/// cores the servers and the load generator share, this says what throughput alone cannot:
/// how much of the machine each system needs per operation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CpuPerOp {
    /// All of the system's server processes together (absent for a cluster this run did
    /// not start: its processes are not known here).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub servers_us: Option<f64>,
    /// The load generator: this process.
    pub client_us: f64,
}

/// CPU seconds used so far by each process in `pids` together; `None` if any cannot be
/// read (or there are none).
fn cpu_of(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&pid| super::cpu_seconds(pid)).sum()
}

/// The largest resident memory among `pids`, in MiB; `None` when there are none.
fn largest_rss_mib(pids: &[u32]) -> Option<f64> {
    pids.iter().map(|&pid| super::rss_mib(pid)).reduce(f64::max)
}

impl CpuPerOp {
    /// From CPU seconds read before and after a run of `ops` operations.
    fn between(
        servers: (Option<f64>, Option<f64>),
        client: (Option<f64>, Option<f64>),
        ops: u64,
    ) -> Option<CpuPerOp> {
        if ops == 0 {
            return None;
        }
        let per_op = |before: f64, after: f64| (after - before).max(0.0) * 1e6 / ops as f64;
        let (Some(client_before), Some(client_after)) = client else {
            return None;
        };
        Some(CpuPerOp {
            servers_us: match servers {
                (Some(before), Some(after)) => Some(per_op(before, after)),
                _ => None,
            },
            client_us: per_op(client_before, client_after),
        })
    }
}

/// Runs `op(worker, seq)` from `concurrency` workers, each issuing its next operation when
/// the previous one finishes, until `max_ops` have been issued or `max_time` has passed.
pub async fn closed_loop<F, Fut>(
    concurrency: usize,
    max_ops: u64,
    max_time: Duration,
    op: F,
) -> RunStats
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), Status>> + Send + 'static,
{
    let op = Arc::new(op);
    let issued = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + max_time;
    let mut workers = Vec::new();
    for worker in 0..concurrency.max(1) {
        let (op, issued) = (op.clone(), issued.clone());
        workers.push(tokio::spawn(async move {
            let mut histogram = micros_histogram();
            let (mut errors, mut first_error) = (0u64, None);
            loop {
                let seq = issued.fetch_add(1, Ordering::Relaxed);
                if seq >= max_ops || Instant::now() >= deadline {
                    break;
                }
                let t0 = Instant::now();
                match op(worker, seq).await {
                    Ok(()) => {
                        let _ = histogram.record(t0.elapsed().as_micros().max(1) as u64);
                    }
                    Err(status) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| {
                            format!("{}: {}", status.code(), status.message())
                        });
                    }
                }
            }
            (histogram, errors, first_error)
        }));
    }
    let mut histogram = micros_histogram();
    let (mut errors, mut first_error) = (0, None);
    for worker in workers {
        if let Ok((h, e, f)) = worker.await {
            let _ = histogram.add(&h);
            errors += e;
            first_error = first_error.or(f);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    RunStats {
        ops: histogram.len(),
        errors,
        seconds,
        ops_per_sec: histogram.len() as f64 / seconds.max(1e-9),
        latency: Latency::from_micros(&histogram),
        first_error,
        cpu: None,
        rss_mib: None,
    }
}

/// A 256-byte value (printable, so it fits a metadata string).
pub fn value_256() -> String {
    "v".repeat(256)
}

/// One workload measured on every system.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// What ran, e.g. `put` or `read linearizable leader`.
    pub workload: String,
    /// Concurrent clients.
    pub concurrency: usize,
    /// Results per system.
    pub results: BTreeMap<String, RunStats>,
    /// Bowline's throughput over etcd's (when both ran).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub throughput_ratio: Option<f64>,
    /// With `--rounds` above 1: every round's results, in the order they ran. `results` and
    /// `throughput_ratio` above are then those of the median round.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rounds: Vec<BTreeMap<String, RunStats>>,
}

impl Comparison {
    fn new(workload: String, concurrency: usize, results: Vec<(System, RunStats)>) -> Comparison {
        let results: BTreeMap<String, RunStats> = results
            .into_iter()
            .map(|(s, r)| (s.to_string(), r))
            .collect();
        let throughput_ratio = ratio(&results);
        Comparison {
            workload,
            concurrency,
            results,
            throughput_ratio,
            rounds: Vec::new(),
        }
    }

    /// The median of several rounds of one workload: the round whose ratio is the median
    /// (the lower of the middle two for an even count), a real run rather than a blend of
    /// several, with every round kept beside it.
    fn median_of(mut runs: Vec<Comparison>) -> Option<Comparison> {
        if runs.len() <= 1 {
            return runs.pop();
        }
        let all: Vec<BTreeMap<String, RunStats>> = runs.iter().map(|r| r.results.clone()).collect();
        runs.sort_by(|a, b| rank(&a.results).total_cmp(&rank(&b.results)));
        let mut median = runs.swap_remove((runs.len() - 1) / 2);
        median.rounds = all;
        Some(median)
    }
}

/// Bowline's throughput over etcd's, when both ran.
fn ratio(results: &BTreeMap<String, RunStats>) -> Option<f64> {
    match (results.get("bowline"), results.get("etcd")) {
        (Some(b), Some(e)) if e.ops_per_sec > 0.0 => Some(b.ops_per_sec / e.ops_per_sec),
        _ => None,
    }
}

/// What a round is ranked by: the ratio when both systems ran, else the one system's
/// throughput.
fn rank(results: &BTreeMap<String, RunStats>) -> f64 {
    ratio(results).unwrap_or_else(|| results.values().next().map_or(0.0, |r| r.ops_per_sec))
}

/// Prints comparisons as one table: a row per workload, both systems side by side.
pub fn print_comparisons(rows: &[Comparison]) {
    println!(
        "{:<28} {:>5} | {:>9} {:>8} {:>8} {:>6} | {:>9} {:>8} {:>8} {:>6} | {:>7}",
        "WORKLOAD",
        "CONC",
        "BOWLINE/s",
        "p50 ms",
        "p99 ms",
        "errs",
        "ETCD/s",
        "p50 ms",
        "p99 ms",
        "errs",
        "RATIO"
    );
    let cells = |r: Option<&RunStats>| match r {
        Some(r) => format!(
            "{:>9.0} {:>8.2} {:>8.2} {:>6}",
            r.ops_per_sec, r.latency.p50_ms, r.latency.p99_ms, r.errors
        ),
        None => format!("{:>9} {:>8} {:>8} {:>6}", "-", "-", "-", "-"),
    };
    for row in rows {
        println!(
            "{:<28} {:>5} | {} | {} | {:>7}",
            row.workload,
            row.concurrency,
            cells(row.results.get("bowline")),
            cells(row.results.get("etcd")),
            row.throughput_ratio
                .map_or("-".to_string(), |r| format!("{r:.2}x"))
        );
    }
    print_cpu_per_op(rows);
    print_memory(rows);
    print_rounds(rows);
    for row in rows {
        for (system, r) in &row.results {
            if let Some(e) = &r.first_error {
                eprintln!(
                    "note: {} c={} on {system}: {} errors, first: {e}",
                    row.workload, row.concurrency, r.errors
                );
            }
        }
    }
}

/// Prints every round's ratio (or throughput, with one system) of workloads run in
/// several rounds, so the spread behind each median is in view.
fn print_rounds(rows: &[Comparison]) {
    let several: Vec<&Comparison> = rows.iter().filter(|r| r.rounds.len() > 1).collect();
    if several.is_empty() {
        return;
    }
    println!();
    for row in several {
        let ranks: Vec<String> = row
            .rounds
            .iter()
            .map(|results| match ratio(results) {
                Some(r) => format!("{r:.2}x"),
                None => format!("{:.0}/s", rank(results)),
            })
            .collect();
        println!(
            "{} c={}: {} rounds, in order: {}; the table shows the median",
            row.workload,
            row.concurrency,
            row.rounds.len(),
            ranks.join(" ")
        );
    }
}

/// Prints the CPU each system spent per operation, servers and load generator, when any
/// run could read it.
fn print_cpu_per_op(rows: &[Comparison]) {
    if !rows
        .iter()
        .any(|row| row.results.values().any(|r| r.cpu.is_some()))
    {
        return;
    }
    println!();
    println!(
        "{:<28} {:>5} | {:>15} {:>10} | {:>15} {:>10} | {:>7}",
        "CPU µs/op", "CONC", "BOWLINE SERVERS", "CLIENT", "ETCD SERVERS", "CLIENT", "RATIO"
    );
    let servers = |r: Option<&RunStats>| r.and_then(|r| r.cpu?.servers_us);
    let cells = |r: Option<&RunStats>| {
        let client = r.and_then(|r| r.cpu).map(|c| c.client_us);
        format!(
            "{:>15} {:>10}",
            servers(r).map_or("-".to_string(), |v| format!("{v:.1}")),
            client.map_or("-".to_string(), |v| format!("{v:.1}"))
        )
    };
    for row in rows {
        let (ours, theirs) = (row.results.get("bowline"), row.results.get("etcd"));
        // How many times less CPU Bowline's servers needed per operation.
        let ratio = match (servers(ours), servers(theirs)) {
            (Some(b), Some(e)) if b > 0.0 => format!("{:.2}x", e / b),
            _ => "-".to_string(),
        };
        println!(
            "{:<28} {:>5} | {} | {} | {:>7}",
            row.workload,
            row.concurrency,
            cells(ours),
            cells(theirs),
            ratio
        );
    }
}

/// Prints each system's largest server RSS after each workload's median round, when the
/// run started the servers: what the keys written so far cost each system in memory.
fn print_memory(rows: &[Comparison]) {
    let rss = |row: &Comparison, system: &str| row.results.get(system).and_then(|r| r.rss_mib);
    if !rows
        .iter()
        .any(|row| rss(row, "bowline").is_some() || rss(row, "etcd").is_some())
    {
        return;
    }
    println!();
    println!(
        "{:<28} {:>5} | {:>15} | {:>15}",
        "LARGEST MEMBER RSS MiB", "CONC", "BOWLINE", "ETCD"
    );
    let cell = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
    for row in rows {
        println!(
            "{:<28} {:>5} | {:>15} | {:>15}",
            row.workload,
            row.concurrency,
            cell(rss(row, "bowline")),
            cell(rss(row, "etcd"))
        );
    }
}

/// Flags of `bowline bench put`.
#[derive(Debug, Args)]
pub struct PutBenchArgs {
    /// Concurrencies to measure (closed loop, one in-flight request per client).
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    pub concurrency: Vec<usize>,
    /// Operations per run (a run also stops after --seconds).
    #[arg(long, default_value_t = 20_000)]
    pub ops: u64,
    /// Seconds per run at most.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Measure each workload this many times, alternating which system goes first; the
    /// table shows the median round, and every round's ratio is listed under it.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=100))]
    pub rounds: u16,
    /// Side-by-side flags.
    #[command(flatten)]
    pub compare: CompareArgs,
}

/// Measures one workload on every target, `rounds` times, alternating which system goes
/// first so neither always runs on a warmer (or more fragmented) machine; the result is the
/// median round, with every round kept. `first_round` continues the alternation across
/// workloads; `op` gets the round, so rounds that write can use keys of their own.
#[allow(clippy::too_many_arguments)]
async fn compare<F, Fut>(
    targets: &[Target],
    first_round: usize,
    rounds: usize,
    workload: String,
    concurrency: usize,
    ops: u64,
    time: Duration,
    op: F,
) -> Comparison
where
    F: Fn(&Target, usize) -> Box<dyn Fn(usize, u64) -> Fut + Send + Sync>,
    Fut: Future<Output = Result<(), Status>> + Send + 'static,
{
    let rounds = rounds.max(1);
    let mut runs = Vec::new();
    for round in first_round..first_round + rounds {
        let mut order: Vec<&Target> = targets.iter().collect();
        if round % 2 == 1 {
            order.reverse();
        }
        let mut results = Vec::new();
        for target in order {
            eprintln!(
                "bench: {workload} c={concurrency} on {} (round {} of {rounds})",
                target.system,
                round - first_round + 1
            );
            let run = op(target, round);
            let (servers, client) = (target.server_pids(), std::process::id());
            let cpu_before = (cpu_of(&servers), super::cpu_seconds(client));
            let mut stats = closed_loop(concurrency, ops, time, run).await;
            stats.cpu = CpuPerOp::between(
                (cpu_before.0, cpu_of(&servers)),
                (cpu_before.1, super::cpu_seconds(client)),
                stats.ops,
            );
            stats.rss_mib = largest_rss_mib(&servers);
            results.push((target.system, stats));
        }
        runs.push(Comparison::new(workload.clone(), concurrency, results));
    }
    Comparison::median_of(runs)
        .unwrap_or_else(|| Comparison::new(workload, concurrency, Vec::new()))
}

/// The entry of `per_target` (one per target, in `targets`' order) that belongs to `target`.
fn of_target<T: Copy>(targets: &[Target], per_target: &[T], target: &Target) -> T {
    per_target[targets
        .iter()
        .position(|x| x.system == target.system)
        .unwrap_or(0)]
}

/// Runs `bowline bench put`.
pub async fn run_put(args: &PutBenchArgs) -> anyhow::Result<()> {
    let targets = Target::start_all(&args.compare, &[], &[]).await?;
    let (ops, time) = if args.compare.quick {
        (500, Duration::from_secs(2))
    } else {
        (args.ops, Duration::from_secs(args.seconds))
    };
    let value = Arc::new(value_256());
    let mut rows = Vec::new();
    for (round, &concurrency) in args.concurrency.iter().enumerate() {
        let mut leaders = Vec::new();
        for t in &targets {
            leaders.push(t.leader(Duration::from_secs(30)).await?);
        }
        let rounds = usize::from(args.rounds);
        let row = compare(
            &targets,
            round * rounds,
            rounds,
            "put".into(),
            concurrency,
            ops,
            time,
            |t, round| {
                let client = t.nodes[of_target(&targets, &leaders, t)].clone();
                let value = value.clone();
                // Each round writes keys of its own: the workload is distinct keys, and a
                // later round must not turn into overwrites of an earlier one's.
                Box::new(move |worker, seq| {
                    let (client, value) = (client.clone(), value.clone());
                    async move {
                        client
                            .put(
                                worker,
                                &format!("put-c{concurrency}-r{round}-{seq}"),
                                &value,
                            )
                            .await
                    }
                })
            },
        )
        .await;
        rows.push(row);
    }
    print_comparisons(&rows);
    write_json(&args.compare.json, &rows)
}

/// Flags of `bowline bench read`.
#[derive(Debug, Args)]
pub struct ReadBenchArgs {
    /// Concurrent clients.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Keys written first and then read at random.
    #[arg(long, default_value_t = 1000)]
    pub keys: u64,
    /// Operations per run (a run also stops after --seconds).
    #[arg(long, default_value_t = 20_000)]
    pub ops: u64,
    /// Seconds per run at most.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Which reads to measure.
    #[arg(long, value_delimiter = ',', default_value = "linearizable,stale")]
    pub reads: Vec<ReadConsistency>,
    /// Which nodes to read from.
    #[arg(long, value_delimiter = ',', default_value = "leader,follower")]
    pub from: Vec<ReadNode>,
    /// Measure each workload this many times, alternating which system goes first; the
    /// table shows the median round, and every round's ratio is listed under it.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=100))]
    pub rounds: u16,
    /// Side-by-side flags.
    #[command(flatten)]
    pub compare: CompareArgs,
}

/// The read consistencies `bench read` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReadConsistency {
    /// Read index (Bowline) or quorum read (etcd).
    Linearizable,
    /// The node's own state (Bowline) or a serializable read (etcd).
    Stale,
}

/// The node `bench read` reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReadNode {
    /// The current leader.
    Leader,
    /// A follower.
    Follower,
}

/// Runs `bowline bench read`: linearizable and stale reads against the leader and a follower.
pub async fn run_read(args: &ReadBenchArgs) -> anyhow::Result<()> {
    let targets = Target::start_all(&args.compare, &[], &[]).await?;
    let (ops, time, keys) = if args.compare.quick {
        (1000, Duration::from_secs(2), 100)
    } else {
        (
            args.ops,
            Duration::from_secs(args.seconds),
            args.keys.max(1),
        )
    };
    let value = value_256();
    for t in &targets {
        let leader = t.leader(Duration::from_secs(30)).await?;
        let client = t.nodes[leader].clone();
        let value = Arc::new(value.clone());
        let load = closed_loop(16, keys, Duration::from_secs(120), move |w, seq| {
            let (client, value) = (client.clone(), value.clone());
            async move { client.put(w, &format!("read-{seq}"), &value).await }
        })
        .await;
        if load.ops < keys {
            anyhow::bail!(
                "could not load {keys} keys into {}: {}",
                t.system,
                load.first_error.unwrap_or_default()
            );
        }
    }
    let mut rows = Vec::new();
    let mut round = 0;
    for consistency in [ReadConsistency::Linearizable, ReadConsistency::Stale] {
        if !args.reads.contains(&consistency) {
            continue;
        }
        let linearizable = consistency == ReadConsistency::Linearizable;
        for node in [ReadNode::Leader, ReadNode::Follower] {
            if !args.from.contains(&node) {
                continue;
            }
            let on_leader = node == ReadNode::Leader;
            let mut nodes = Vec::new();
            for t in &targets {
                let leader = t.leader(Duration::from_secs(30)).await?;
                nodes.push(if on_leader {
                    leader
                } else {
                    t.follower_of(leader)
                });
            }
            let workload = format!(
                "read {} {}",
                if linearizable {
                    "linearizable"
                } else {
                    "stale"
                },
                if on_leader { "leader" } else { "follower" }
            );
            let rounds = usize::from(args.rounds);
            let row = compare(
                &targets,
                round * rounds,
                rounds,
                workload,
                args.concurrency,
                ops,
                time,
                |t, _round| {
                    let client = t.nodes[of_target(&targets, &nodes, t)].clone();
                    Box::new(move |worker, seq| {
                        let client = client.clone();
                        async move {
                            client
                                .get(
                                    worker,
                                    &format!("read-{}", seq.wrapping_mul(7919) % keys),
                                    linearizable,
                                )
                                .await
                        }
                    })
                },
            )
            .await;
            rows.push(row);
            round += 1;
        }
    }
    print_comparisons(&rows);
    write_json(&args.compare.json, &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_per_op_divides_what_each_side_spent_by_the_operations() {
        let cpu = CpuPerOp::between((Some(1.0), Some(1.5)), (Some(2.0), Some(2.2)), 10_000)
            .expect("both sides read");
        assert!((cpu.servers_us.expect("servers read") - 50.0).abs() < 1e-9);
        assert!((cpu.client_us - 20.0).abs() < 1e-9);
    }

    #[test]
    fn cpu_per_op_leaves_out_what_it_could_not_read() {
        let unknown_servers = CpuPerOp::between((None, Some(1.0)), (Some(0.0), Some(0.1)), 100);
        assert_eq!(unknown_servers.and_then(|c| c.servers_us), None);
        assert!(
            unknown_servers.is_some(),
            "the client's own CPU is still known"
        );
        assert_eq!(
            CpuPerOp::between((Some(0.0), Some(1.0)), (None, Some(1.0)), 100),
            None
        );
        assert_eq!(
            CpuPerOp::between((Some(0.0), Some(1.0)), (Some(0.0), Some(1.0)), 0),
            None,
            "no operation, no figure per operation"
        );
    }

    fn stats(ops_per_sec: f64) -> RunStats {
        RunStats {
            ops: 1,
            errors: 0,
            seconds: 1.0,
            ops_per_sec,
            latency: Latency {
                count: 1,
                p50_ms: 1.0,
                p99_ms: 1.0,
                max_ms: 1.0,
            },
            first_error: None,
            cpu: None,
            rss_mib: None,
        }
    }

    /// A round in which Bowline did `ours` ops/s and etcd (if given) `theirs`.
    fn round(ours: f64, theirs: Option<f64>) -> Comparison {
        let mut results = vec![(System::Bowline, stats(ours))];
        if let Some(theirs) = theirs {
            results.push((System::Etcd, stats(theirs)));
        }
        Comparison::new("put".into(), 64, results)
    }

    fn median_ratio(rounds: Vec<Comparison>) -> Option<f64> {
        Comparison::median_of(rounds).and_then(|c| c.throughput_ratio)
    }

    #[test]
    fn the_median_round_is_a_real_round_and_every_round_is_kept() {
        let rounds = vec![
            round(1970.0, Some(1000.0)),
            round(1750.0, Some(1000.0)),
            round(1830.0, Some(1000.0)),
        ];
        let median = Comparison::median_of(rounds).expect("three rounds");
        assert_eq!(median.throughput_ratio, Some(1.83));
        assert_eq!(median.results["bowline"].ops_per_sec, 1830.0);
        let kept: Vec<f64> = median
            .rounds
            .iter()
            .map(|r| r["bowline"].ops_per_sec)
            .collect();
        assert_eq!(kept, [1970.0, 1750.0, 1830.0], "in the order they ran");
    }

    #[test]
    fn an_even_count_takes_the_lower_middle_round_and_one_round_is_itself() {
        let four = [4.0, 1.0, 3.0, 2.0]
            .map(|r| round(r * 1000.0, Some(1000.0)))
            .to_vec();
        assert_eq!(median_ratio(four), Some(2.0));
        let one = Comparison::median_of(vec![round(1500.0, Some(1000.0))]).expect("one");
        assert_eq!(one.throughput_ratio, Some(1.5));
        assert!(one.rounds.is_empty(), "a single round lists no rounds");
        assert!(Comparison::median_of(Vec::new()).is_none());
    }

    #[test]
    fn without_etcd_rounds_rank_by_throughput() {
        let rounds = vec![round(300.0, None), round(100.0, None), round(200.0, None)];
        let median = Comparison::median_of(rounds).expect("three rounds");
        assert_eq!(median.throughput_ratio, None);
        assert_eq!(median.results["bowline"].ops_per_sec, 200.0);
    }

    #[test]
    fn no_server_processes_means_no_server_cpu() {
        assert_eq!(cpu_of(&[]), None);
        assert_eq!(cpu_of(&[std::process::id(), u32::MAX]), None);
        assert!(cpu_of(&[std::process::id()]).is_some());
    }

    #[test]
    fn memory_is_absent_without_processes_and_a_gone_process_counts_as_nothing() {
        assert_eq!(largest_rss_mib(&[]), None);
        let own = largest_rss_mib(&[std::process::id()]).unwrap();
        assert!(own > 0.0, "{own}");
        // A process that is gone counts as nothing, so it never hides a live one.
        assert!(largest_rss_mib(&[u32::MAX, std::process::id()]).is_some_and(|mib| mib > 0.0));
    }
}
