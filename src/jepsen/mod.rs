//! `bowline jepsen`: a linearizability test in the manner of Jepsen. Clients pinned to the
//! nodes of a local cluster of real processes (three nodes, or `--nodes` 5 or 7) read and
//! write a handful of registers (a service's metadata value) while a nemesis kills, pauses
//! or cuts off nodes;
//! every operation is recorded with its invocation and return time, and the history of
//! each register is then checked for linearizability ([`checker`]).
//!
//! Writes whose outcome the client cannot know (a timeout, a dropped connection, an
//! ambiguous error) are recorded as such: the checker lets them take effect at any point
//! after their invocation, or never. Failed reads are dropped (they change nothing).

pub mod checker;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use serde::Serialize;
use tonic::transport::Channel;

use crate::bench::cluster::LocalCluster;
use crate::proto::v1 as pb;
use crate::proto::v1::registry_client::RegistryClient;
use checker::{check_register, Op, OpKind, Verdict};

/// How long the healed cluster has to answer the closing read of each register. Generous:
/// on a loaded machine a wiped follower may still be installing a snapshot.
const FINAL_READ_WITHIN: Duration = Duration::from_secs(30);

/// The faults the nemesis injects, in turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// SIGKILL the leader, restart it after the fault window.
    Kill,
    /// SIGSTOP the leader (a long pause), SIGCONT it after the fault window.
    Pause,
    /// SIGKILL a follower, restart it after the fault window.
    KillFollower,
    /// SIGKILL every node at once, restart them all.
    CrashAll,
    /// SIGKILL a follower, delete its data and restart it empty under the same id (it
    /// rejoins from the leader's snapshot and log).
    WipeFollower,
    /// Cut the leader off from its peers with iptables (needs root, `ip` and `iptables`).
    Partition,
    /// SIGTERM the leader (a planned stop: it hands leadership to a follower first),
    /// restart it after the fault window.
    Terminate,
}

/// Flags of `bowline jepsen`.
#[derive(Debug, Args)]
pub struct JepsenArgs {
    /// Faults to inject, in turn, each for --fault-ms with --fault-ms of calm between them.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "kill,pause")]
    pub nemesis: Vec<Fault>,
    /// Seconds of workload.
    #[arg(long, default_value_t = 30)]
    pub seconds: u64,
    /// Most operations in all (the run stops at this or --seconds, whichever comes first).
    #[arg(long, default_value_t = 200_000)]
    pub max_ops: usize,
    /// Cluster size: 3, 5 or 7 nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(3..=7))]
    pub nodes: u64,
    /// Concurrent clients; client i is pinned to node i mod --nodes.
    #[arg(long, default_value_t = 9)]
    pub clients: usize,
    /// Registers the clients share (fewer means more contention on each).
    #[arg(long, default_value_t = 6)]
    pub keys: usize,
    /// How long one fault lasts, and the calm between two, in milliseconds.
    #[arg(long, default_value_t = 2_000)]
    pub fault_ms: u64,
    /// Client timeout per operation, in milliseconds.
    #[arg(long, default_value_t = 500)]
    pub timeout_ms: u64,
    /// Write every operation as a JSON line to this file.
    #[arg(long)]
    pub history: Option<std::path::PathBuf>,
    /// Write the result as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Answered.
    Ok,
    /// Failed in a way that proves nothing changed (reads only: they change nothing).
    Fail,
    /// The client cannot know whether it took effect (writes).
    Unknown,
}

/// What an operation was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Set the register.
    Write,
    /// Read the register.
    Read,
}

/// One recorded operation.
#[derive(Debug, Clone, Serialize)]
pub struct Recorded {
    /// The client that ran it.
    pub client: usize,
    /// Register (service name).
    pub key: String,
    /// Write or read.
    pub kind: Kind,
    /// Value written, or read (`None`: the register was unset).
    pub value: Option<u32>,
    /// Microseconds since the run began, at invocation.
    pub invoke_us: u64,
    /// Microseconds since the run began, at the answer (`None` when unknown).
    pub complete_us: Option<u64>,
    /// Outcome.
    pub outcome: Outcome,
    /// The error, when there was one.
    pub error: Option<String>,
}

/// One fault the nemesis injected.
#[derive(Debug, Clone, Serialize)]
pub struct FaultEvent {
    /// Which fault.
    pub fault: Fault,
    /// The node (1-based id) it hit; `None` for all nodes.
    pub node: Option<usize>,
    /// Milliseconds since the run began when it started.
    pub at_ms: u64,
    /// Milliseconds it lasted.
    pub lasted_ms: u64,
}

/// The verdict on one register.
#[derive(Debug, Clone, Serialize)]
pub struct KeyResult {
    /// Register.
    pub key: String,
    /// Operations checked on it (failed reads excluded).
    pub ops: usize,
    /// Whether its history is linearizable.
    pub linearizable: bool,
    /// When not: the operation to start looking at.
    pub culprit: Option<Recorded>,
}

/// The result of a run.
#[derive(Debug, Clone, Serialize)]
pub struct JepsenResult {
    /// Nodes in the cluster.
    pub nodes: u64,
    /// Read consistency tested (`--consistency`); stale is expected to fail the check.
    pub reads: &'static str,
    /// Acknowledged writes.
    pub writes_ok: usize,
    /// Writes with unknown outcome.
    pub writes_unknown: usize,
    /// Answered reads.
    pub reads_ok: usize,
    /// Failed reads (dropped from the check).
    pub reads_failed: usize,
    /// Faults injected.
    pub faults: Vec<FaultEvent>,
    /// Per register.
    pub keys: Vec<KeyResult>,
    /// Whether every register's history is linearizable.
    pub linearizable: bool,
}

/// A small xorshift generator: the workload needs cheap, seedable choices, not a crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn key_name(k: usize) -> String {
    format!("jepsen-register-{k}")
}

fn channel(addr: &str, timeout: Duration) -> anyhow::Result<Channel> {
    Ok(Channel::from_shared(format!("http://{addr}"))?
        .connect_timeout(timeout)
        .tcp_nodelay(true)
        .connect_lazy())
}

/// Sets `key` to `value`; `Err` says why the outcome is unknown.
async fn write_register(
    client: &mut RegistryClient<Channel>,
    key: &str,
    value: u32,
    timeout: Duration,
) -> Result<(), String> {
    let request = crate::bench::kv::value_service(key, &value.to_string());
    match tokio::time::timeout(timeout, client.register_service(request)).await {
        Ok(Ok(_)) => Ok(()),
        // Every failure counts as unknown: an error may come after the command was
        // proposed, and treating it as "did not happen" could hide a real anomaly.
        Ok(Err(status)) => Err(status.to_string()),
        Err(_) => Err("client timeout".to_string()),
    }
}

/// Reads `key`: `Ok(None)` when it was never written, `Err` when there was no answer.
async fn read_register(
    client: &mut RegistryClient<Channel>,
    key: &str,
    consistency: pb::Consistency,
    timeout: Duration,
) -> Result<Option<u32>, String> {
    let request = pb::GetServiceRequest {
        namespace: String::new(),
        name: key.to_string(),
        consistency: consistency as i32,
    };
    match tokio::time::timeout(timeout, client.get_service(request)).await {
        Ok(Ok(response)) => Ok(response
            .into_inner()
            .service
            .and_then(|s| s.metadata.get("v").and_then(|v| v.parse().ok()))),
        Ok(Err(status)) if status.code() == tonic::Code::NotFound => Ok(None),
        Ok(Err(status)) => Err(status.to_string()),
        Err(_) => Err("client timeout".to_string()),
    }
}

/// What one client does: where, on which registers, with what timeout.
#[derive(Clone)]
struct ClientPlan {
    addr: String,
    keys: usize,
    consistency: pb::Consistency,
    timeout: Duration,
    began: Instant,
    stop: Arc<AtomicBool>,
    /// Operations left to the whole run.
    budget: Arc<AtomicUsize>,
}

impl ClientPlan {
    fn micros(&self, t: Instant) -> u64 {
        t.duration_since(self.began).as_micros() as u64
    }

    /// Whether to run one more operation; the first client to find the budget spent ends
    /// the run (and with it the nemesis).
    fn take_one(&self) -> bool {
        if self.stop.load(Ordering::Relaxed) {
            return false;
        }
        let taken = self
            .budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok();
        if !taken {
            self.stop.store(true, Ordering::Relaxed);
        }
        taken
    }
}

/// One client: operations in a closed loop against its node until the plan says stop.
async fn client_loop(id: usize, plan: ClientPlan) -> anyhow::Result<Vec<Recorded>> {
    let mut client = RegistryClient::new(channel(&plan.addr, plan.timeout)?);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (id as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9));
    let mut history = Vec::new();
    let mut seq = 0u32;
    while plan.take_one() {
        let key = key_name(rng.next() as usize % plan.keys);
        let invoked = Instant::now();
        let (kind, value, outcome, error) = if rng.next().is_multiple_of(2) {
            seq += 1;
            // Unique across the run: the checker pins each read to the one write it saw.
            let value = (id as u32) * 1_000_000 + seq;
            match write_register(&mut client, &key, value, plan.timeout).await {
                Ok(()) => (Kind::Write, Some(value), Outcome::Ok, None),
                Err(e) => (Kind::Write, Some(value), Outcome::Unknown, Some(e)),
            }
        } else {
            match read_register(&mut client, &key, plan.consistency, plan.timeout).await {
                Ok(value) => (Kind::Read, value, Outcome::Ok, None),
                Err(e) => (Kind::Read, None, Outcome::Fail, Some(e)),
            }
        };
        let completed = Instant::now();
        history.push(Recorded {
            client: id,
            key,
            kind,
            value,
            invoke_us: plan.micros(invoked),
            complete_us: (outcome == Outcome::Ok).then(|| plan.micros(completed)),
            outcome,
            error,
        });
        if outcome == Outcome::Fail {
            // A node that is down answers at once; do not spin on it.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(history)
}

async fn wait_leader(cluster: &LocalCluster) -> Option<usize> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Some(i) = crate::bench::kv::bowline_leader_now(&cluster.client_addrs).await {
            return Some(i);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// Injects `faults` in turn until `stop`, each for `window`, with `window` of calm before
/// each; heals everything before returning.
async fn nemesis(
    cluster: &mut LocalCluster,
    faults: &[Fault],
    window: Duration,
    began: Instant,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Vec<FaultEvent>> {
    let mut events = Vec::new();
    let mut turn = 0;
    loop {
        let calm_until = Instant::now() + window;
        while Instant::now() < calm_until && !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if stop.load(Ordering::Relaxed) || faults.is_empty() {
            break;
        }
        let fault = faults[turn % faults.len()];
        turn += 1;
        let Some(leader) = wait_leader(cluster).await else {
            anyhow::bail!("no leader to inject {fault:?} into");
        };
        let target = match fault {
            Fault::KillFollower | Fault::WipeFollower => Some((leader + 1) % cluster.len()),
            Fault::CrashAll => None,
            _ => Some(leader),
        };
        let started = Instant::now();
        match (fault, target) {
            (Fault::Kill | Fault::KillFollower | Fault::WipeFollower, Some(i)) => cluster.kill(i),
            (Fault::Pause, Some(i)) => cluster.pause(i),
            (Fault::Partition, Some(i)) => cluster.isolate(i)?,
            (Fault::Terminate, Some(i)) => cluster.terminate(i),
            _ => (0..cluster.len()).for_each(|i| cluster.kill(i)),
        }
        // A fault lasts its window even when the run is ending: healing early would hide
        // what the window is for.
        tokio::time::sleep(window).await;
        match (fault, target) {
            (Fault::Kill | Fault::KillFollower, Some(i)) => cluster.spawn(i, &[])?,
            (Fault::Terminate, Some(i)) => {
                // Stopped by now; reap it (SIGKILL should it still be running).
                cluster.kill(i);
                cluster.spawn(i, &[])?;
            }
            (Fault::WipeFollower, Some(i)) => {
                cluster.wipe(i)?;
                cluster.spawn(i, &["--initial-cluster-state=existing"])?;
            }
            (Fault::Pause, Some(i)) => cluster.resume(i),
            (Fault::Partition, Some(i)) => cluster.heal(i)?,
            _ => {
                for i in 0..cluster.len() {
                    cluster.spawn(i, &[])?;
                }
            }
        }
        events.push(FaultEvent {
            fault,
            node: target.map(|i| i + 1),
            at_ms: started.duration_since(began).as_millis() as u64,
            lasted_ms: started.elapsed().as_millis() as u64,
        });
        eprintln!(
            "jepsen: {fault:?} on {} for {} ms",
            target.map_or("every node".to_string(), |i| format!("node {}", i + 1)),
            started.elapsed().as_millis()
        );
    }
    Ok(events)
}

/// Checks every register's history.
fn check(history: &[Recorded], keys: usize) -> Vec<KeyResult> {
    (0..keys)
        .map(key_name)
        .map(|key| {
            let recorded: Vec<&Recorded> = history
                .iter()
                .filter(|r| r.key == key && r.outcome != Outcome::Fail)
                .collect();
            let ops: Vec<Op> = recorded
                .iter()
                .map(|r| Op {
                    invoke: r.invoke_us,
                    complete: r.complete_us,
                    kind: match r.kind {
                        Kind::Write => OpKind::Write(r.value.unwrap_or_default()),
                        Kind::Read => OpKind::Read(r.value),
                    },
                })
                .collect();
            let verdict = check_register(&ops);
            KeyResult {
                key,
                ops: ops.len(),
                linearizable: verdict == Verdict::Linearizable,
                culprit: match verdict {
                    Verdict::Linearizable => None,
                    Verdict::NotLinearizable { op } => Some(recorded[op].clone()),
                },
            }
        })
        .collect()
}

/// Runs `bowline jepsen` with reads at `consistency` (the global `--consistency`; stale is
/// expected to fail), printing the result as `output` asks; fails when a history is not
/// linearizable or nothing was checked.
pub async fn run(
    args: &JepsenArgs,
    consistency: pb::Consistency,
    output: crate::cli::output::OutputFormat,
) -> anyhow::Result<()> {
    if args.keys == 0 || args.clients == 0 {
        anyhow::bail!("--keys and --clients must be at least 1");
    }
    if args.nodes.is_multiple_of(2) {
        anyhow::bail!("--nodes must be odd (3, 5 or 7): an even cluster tolerates no more failures than the odd one below it");
    }
    let partition = args.nemesis.contains(&Fault::Partition);
    if partition {
        crate::bench::netns::check_available()?;
    }
    eprintln!("jepsen: starting a {}-node cluster", args.nodes);
    let mut cluster = if partition {
        LocalCluster::start_partitionable(args.nodes, &[]).await?
    } else {
        LocalCluster::start(args.nodes, &[]).await?
    };
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    let began = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let plan = ClientPlan {
        addr: String::new(),
        keys: args.keys,
        consistency,
        timeout,
        began,
        stop: stop.clone(),
        budget: Arc::new(AtomicUsize::new(args.max_ops)),
    };
    let clients: Vec<_> = (0..args.clients)
        .map(|id| {
            let addr = cluster.client_addrs[id % cluster.len()].clone();
            tokio::spawn(client_loop(
                id,
                ClientPlan {
                    addr,
                    ..plan.clone()
                },
            ))
        })
        .collect();
    eprintln!(
        "jepsen: {} clients on {} registers for {} s, faults: {:?}",
        args.clients, args.keys, args.seconds, args.nemesis
    );
    let stopper = {
        let stop = stop.clone();
        let seconds = args.seconds;
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(seconds)).await;
            stop.store(true, Ordering::Relaxed);
        })
    };
    let faults = nemesis(
        &mut cluster,
        &args.nemesis,
        Duration::from_millis(args.fault_ms),
        began,
        stop.clone(),
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    stopper.abort();
    let mut history = Vec::new();
    for client in clients {
        history.extend(client.await??);
    }
    let faults = faults?;

    // A last linearizable read of every register on the healed cluster, so a write of
    // unknown outcome is pinned down one way or the other. Any node's linearizable read
    // pins it equally, so the attempts go round the nodes: one node still catching up
    // (a wiped follower installing a snapshot on a loaded machine) does not fail the run.
    cluster.wait_ready(Duration::from_secs(60)).await?;
    let mut last: Vec<RegistryClient<Channel>> = cluster
        .client_addrs
        .iter()
        .map(|addr| channel(addr, timeout).map(RegistryClient::new))
        .collect::<anyhow::Result<_>>()?;
    for k in 0..args.keys {
        let key = key_name(k);
        let deadline = Instant::now() + FINAL_READ_WITHIN;
        let mut errors: Vec<String> = vec![String::new(); last.len()];
        for attempt in 0usize.. {
            let node = attempt % last.len();
            let invoked = Instant::now();
            match read_register(
                &mut last[node],
                &key,
                pb::Consistency::Linearizable,
                timeout,
            )
            .await
            {
                Ok(value) => {
                    history.push(Recorded {
                        client: args.clients,
                        key: key.clone(),
                        kind: Kind::Read,
                        value,
                        invoke_us: plan.micros(invoked),
                        complete_us: Some(plan.micros(Instant::now())),
                        outcome: Outcome::Ok,
                        error: None,
                    });
                    break;
                }
                Err(e) => errors[node] = e,
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "the healed cluster did not answer a linearizable read of {key} within {:?}; \
                     last error from each node: {errors:?}",
                    FINAL_READ_WITHIN
                );
            }
            if node + 1 == last.len() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    history.sort_by_key(|r| r.invoke_us);

    if let Some(path) = &args.history {
        let mut out = String::new();
        for r in &history {
            out.push_str(&serde_json::to_string(r)?);
            out.push('\n');
        }
        std::fs::write(path, out)?;
    }
    let count = |kind: Kind, outcome: Outcome| {
        history
            .iter()
            .filter(|r| r.kind == kind && r.outcome == outcome)
            .count()
    };
    let keys = check(&history, args.keys);
    let result = JepsenResult {
        nodes: args.nodes,
        reads: if consistency == pb::Consistency::Stale {
            "stale"
        } else {
            "linearizable"
        },
        writes_ok: count(Kind::Write, Outcome::Ok),
        writes_unknown: count(Kind::Write, Outcome::Unknown),
        reads_ok: count(Kind::Read, Outcome::Ok),
        reads_failed: count(Kind::Read, Outcome::Fail),
        linearizable: keys.iter().all(|k| k.linearizable),
        faults,
        keys,
    };
    match output {
        crate::cli::output::OutputFormat::Table => print_result(&result),
        format => {
            crate::cli::output::print_documents(format, &[serde_json::to_value(&result)?], true)?
        }
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&result)?)?;
    }
    if result.writes_ok == 0 || result.reads_ok <= args.keys {
        anyhow::bail!("too few operations succeeded to check anything");
    }
    if !result.linearizable {
        anyhow::bail!("a register's history is not linearizable (see the culprit above)");
    }
    Ok(())
}

fn print_result(r: &JepsenResult) {
    let mut by_fault: BTreeMap<String, usize> = BTreeMap::new();
    for f in &r.faults {
        *by_fault.entry(format!("{:?}", f.fault)).or_default() += 1;
    }
    println!(
        "{} nodes; writes: {} acknowledged, {} unknown; reads: {} answered, {} failed; faults: {}",
        r.nodes,
        r.writes_ok,
        r.writes_unknown,
        r.reads_ok,
        r.reads_failed,
        if by_fault.is_empty() {
            "none".to_string()
        } else {
            by_fault
                .iter()
                .map(|(f, n)| format!("{f} ×{n}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    println!("{:<22} {:>6}  VERDICT", "REGISTER", "OPS");
    for k in &r.keys {
        println!(
            "{:<22} {:>6}  {}",
            k.key,
            k.ops,
            if k.linearizable {
                "linearizable"
            } else {
                "NOT LINEARIZABLE"
            }
        );
        if let Some(c) = &k.culprit {
            println!(
                "  look from: client {} {:?} {:?} invoked at {} µs, answered at {:?} µs",
                c.client, c.kind, c.value, c.invoke_us, c.complete_us
            );
        }
    }
    println!(
        "{}",
        if r.linearizable {
            "result: linearizable"
        } else {
            "result: NOT linearizable"
        }
    );
}
