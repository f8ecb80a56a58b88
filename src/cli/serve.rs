//! `bowline serve`: run one node. Settings come from flags, then `BOWLINE_*` environment
//! variables, then a YAML config file (`--config`), then defaults.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use serde::Deserialize;

use crate::app::{run_node, ClusterState, NodeConfig, RaftTuning};

/// Flags of `bowline serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// YAML file with any of the settings below (keys in snake_case, e.g. `peer_addr`).
    #[arg(long, env = "BOWLINE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Node id: a positive integer, unique in the cluster.
    #[arg(long, env = "BOWLINE_ID")]
    pub id: Option<u64>,
    /// Take the node id from a StatefulSet-style host name: `NAME-N` gives id N+1.
    #[arg(long, env = "BOWLINE_ID_FROM_HOSTNAME", conflicts_with = "id")]
    pub id_from_hostname: bool,
    /// Data directory (Raft log segments, snapshots and Raft metadata).
    #[arg(long, env = "BOWLINE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Peer (Raft) address: listened on, and advertised to the other members. [default: 127.0.0.1:7201]
    #[arg(long, env = "BOWLINE_PEER_ADDR")]
    pub peer_addr: Option<String>,
    /// Client (gRPC API) address. [default: 127.0.0.1:7101]
    #[arg(long, env = "BOWLINE_CLIENT_ADDR")]
    pub client_addr: Option<String>,
    /// Admin (HTTP /metrics, /healthz, /readyz) address. [default: 127.0.0.1:7301]
    #[arg(long, env = "BOWLINE_ADMIN_ADDR")]
    pub admin_addr: Option<String>,
    /// Initial members as `id=peer_host:port,…` (every initial member gets the same list).
    #[arg(long, env = "BOWLINE_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// `new` to bootstrap with --initial-cluster; `existing` to wait for `bowline cluster add`.
    #[arg(long, env = "BOWLINE_INITIAL_CLUSTER_STATE", value_enum)]
    pub initial_cluster_state: Option<ClusterState>,
    /// Raft heartbeat interval in milliseconds. [default: 50]
    #[arg(long, env = "BOWLINE_HEARTBEAT_MS")]
    pub heartbeat_ms: Option<u64>,
    /// Minimum election timeout in milliseconds. [default: 250]
    #[arg(long, env = "BOWLINE_ELECTION_TIMEOUT_MIN_MS")]
    pub election_timeout_min_ms: Option<u64>,
    /// Maximum election timeout in milliseconds. [default: 400]
    #[arg(long, env = "BOWLINE_ELECTION_TIMEOUT_MAX_MS")]
    pub election_timeout_max_ms: Option<u64>,
    /// Build a snapshot (and purge the log below it) every N entries. [default: 100000]
    #[arg(long, env = "BOWLINE_SNAPSHOT_EVERY")]
    pub snapshot_every: Option<u64>,
    /// Log entries kept below the latest snapshot. [default: 10000]
    #[arg(long, env = "BOWLINE_LOGS_TO_KEEP")]
    pub logs_to_keep: Option<u64>,
    /// Also build a snapshot once the log since the last one holds this many MiB, or as much
    /// as the last snapshot if that is more (an entry carries a batch of writes). [default: 64]
    #[arg(long, env = "BOWLINE_SNAPSHOT_LOG_MIB")]
    pub snapshot_log_mib: Option<u64>,
    /// Also purge the log below the latest snapshot beyond this many MiB. [default: 64]
    #[arg(long, env = "BOWLINE_KEEP_LOG_MIB")]
    pub keep_log_mib: Option<u64>,
    /// Serve linearizable reads on the leader's read lease (`true`), which trusts that
    /// clocks run at about the same rate, or confirm leadership with a quorum for every
    /// batch of reads (`false`). [default: true]
    #[arg(long, env = "BOWLINE_READ_LEASE", value_name = "BOOL")]
    pub read_lease: Option<bool>,
    /// How long a client request may wait for a leader, in milliseconds. [default: 5000]
    #[arg(long, env = "BOWLINE_REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: Option<u64>,
    /// Watch history kept in memory, in events. [default: 100000]
    #[arg(long, env = "BOWLINE_WATCH_HISTORY_EVENTS")]
    pub watch_history_events: Option<usize>,
    /// Watch history kept in memory, in MiB. [default: 64]
    #[arg(long, env = "BOWLINE_WATCH_HISTORY_MIB")]
    pub watch_history_mib: Option<usize>,
    /// Revisions queued for one watcher before it is cancelled as too slow. [default: 1024]
    #[arg(long, env = "BOWLINE_WATCH_QUEUE")]
    pub watch_queue: Option<usize>,
    /// Most watch streams on this node. [default: 50000]
    #[arg(long, env = "BOWLINE_MAX_WATCHERS")]
    pub max_watchers: Option<usize>,
    /// Progress notice interval for idle watches, in milliseconds. [default: 5000]
    #[arg(long, env = "BOWLINE_WATCH_PROGRESS_MS")]
    pub watch_progress_ms: Option<u64>,
    /// xDS push debounce: wait this long after a change for more, in milliseconds. [default: 20]
    #[arg(long, env = "BOWLINE_XDS_DEBOUNCE_MS")]
    pub xds_debounce_ms: Option<u64>,
    /// Worker threads serving the client port (1-1024); lower it to hold a node that shares
    /// its machine to a part of the CPUs. [default: the number of CPUs]
    #[arg(long, env = "BOWLINE_CLIENT_THREADS")]
    pub client_threads: Option<usize>,
}

/// Most worker threads the client runtime may have.
const MAX_CLIENT_THREADS: usize = 1024;

/// The config file: the same settings as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServeFile {
    id: Option<u64>,
    data_dir: Option<PathBuf>,
    peer_addr: Option<String>,
    client_addr: Option<String>,
    admin_addr: Option<String>,
    initial_cluster: Option<String>,
    initial_cluster_state: Option<ClusterState>,
    heartbeat_ms: Option<u64>,
    election_timeout_min_ms: Option<u64>,
    election_timeout_max_ms: Option<u64>,
    snapshot_every: Option<u64>,
    logs_to_keep: Option<u64>,
    snapshot_log_mib: Option<u64>,
    keep_log_mib: Option<u64>,
    read_lease: Option<bool>,
    request_timeout_ms: Option<u64>,
    watch_history_events: Option<usize>,
    watch_history_mib: Option<usize>,
    watch_queue: Option<usize>,
    max_watchers: Option<usize>,
    watch_progress_ms: Option<u64>,
    xds_debounce_ms: Option<u64>,
    client_threads: Option<usize>,
}

/// Parses `1=host:port,2=host:port`.
pub fn parse_initial_cluster(text: &str) -> anyhow::Result<BTreeMap<u64, String>> {
    let mut members = BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .with_context(|| format!("--initial-cluster: `{part}` is not id=host:port"))?;
        let id: u64 = id
            .trim()
            .parse()
            .ok()
            .filter(|id| *id > 0)
            .with_context(|| format!("--initial-cluster: `{id}` is not a positive node id"))?;
        let addr = addr.trim();
        if addr
            .rsplit_once(':')
            .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        {
            bail!("--initial-cluster: `{addr}` is not host:port");
        }
        if members.insert(id, addr.to_string()).is_some() {
            bail!("--initial-cluster: node {id} is listed twice");
        }
    }
    Ok(members)
}

impl ServeArgs {
    /// Resolves flags, environment, file and defaults into a node configuration.
    pub fn resolve(&self) -> anyhow::Result<NodeConfig> {
        let file: ServeFile = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("read config file {}", path.display()))?;
                serde_yaml::from_str(&text)
                    .with_context(|| format!("config file {}", path.display()))?
            }
            None => ServeFile::default(),
        };
        let from_hostname = if self.id_from_hostname {
            Some(id_from_hostname(&hostname())?)
        } else {
            None
        };
        let id = self
            .id
            .or(from_hostname)
            .or(file.id)
            .context("--id is required (or --id-from-hostname, or `id` in --config)")?;
        if id == 0 {
            bail!("--id must be a positive integer");
        }
        let data_dir = self
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from(format!("bowline-data/node-{id}")));
        let peer_addr = self
            .peer_addr
            .clone()
            .or(file.peer_addr)
            .unwrap_or_else(|| "127.0.0.1:7201".into());
        let client_addr = self
            .client_addr
            .clone()
            .or(file.client_addr)
            .unwrap_or_else(|| "127.0.0.1:7101".into());
        let admin_addr = self
            .admin_addr
            .clone()
            .or(file.admin_addr)
            .unwrap_or_else(|| "127.0.0.1:7301".into());
        let initial_cluster = match self.initial_cluster.clone().or(file.initial_cluster) {
            Some(text) => parse_initial_cluster(&text)?,
            // A single node with no list bootstraps a cluster of one.
            None => BTreeMap::from([(id, peer_addr.clone())]),
        };
        let state = self
            .initial_cluster_state
            .or(file.initial_cluster_state)
            .unwrap_or(ClusterState::New);
        if state == ClusterState::New && !initial_cluster.contains_key(&id) {
            bail!("--initial-cluster does not list this node ({id}); use --initial-cluster-state existing to join a running cluster");
        }
        let defaults = RaftTuning::default();
        let raft = RaftTuning {
            heartbeat_ms: self
                .heartbeat_ms
                .or(file.heartbeat_ms)
                .unwrap_or(defaults.heartbeat_ms),
            election_timeout_min_ms: self
                .election_timeout_min_ms
                .or(file.election_timeout_min_ms)
                .unwrap_or(defaults.election_timeout_min_ms),
            election_timeout_max_ms: self
                .election_timeout_max_ms
                .or(file.election_timeout_max_ms)
                .unwrap_or(defaults.election_timeout_max_ms),
            snapshot_every: self
                .snapshot_every
                .or(file.snapshot_every)
                .unwrap_or(defaults.snapshot_every),
            logs_to_keep: self
                .logs_to_keep
                .or(file.logs_to_keep)
                .unwrap_or(defaults.logs_to_keep),
            snapshot_log_mib: self
                .snapshot_log_mib
                .or(file.snapshot_log_mib)
                .unwrap_or(defaults.snapshot_log_mib),
            keep_log_mib: self
                .keep_log_mib
                .or(file.keep_log_mib)
                .unwrap_or(defaults.keep_log_mib),
            read_lease: self
                .read_lease
                .or(file.read_lease)
                .unwrap_or(defaults.read_lease),
        };
        if raft.election_timeout_min_ms <= raft.heartbeat_ms
            || raft.election_timeout_max_ms <= raft.election_timeout_min_ms
        {
            bail!("raft timing: need heartbeat < election timeout min < election timeout max");
        }
        if raft.snapshot_every == 0 {
            bail!("--snapshot-every must be positive");
        }
        let request_timeout = Duration::from_millis(
            self.request_timeout_ms
                .or(file.request_timeout_ms)
                .unwrap_or(5000)
                .max(100),
        );
        let hub_defaults = crate::watch::HubConfig::default();
        let watch = crate::watch::HubConfig {
            history_events: self
                .watch_history_events
                .or(file.watch_history_events)
                .unwrap_or(hub_defaults.history_events)
                .max(1),
            history_bytes: self
                .watch_history_mib
                .or(file.watch_history_mib)
                .map_or(hub_defaults.history_bytes, |mib| mib.max(1) << 20),
            watcher_queue: self
                .watch_queue
                .or(file.watch_queue)
                .unwrap_or(hub_defaults.watcher_queue)
                .max(1),
            max_watchers: self
                .max_watchers
                .or(file.max_watchers)
                .unwrap_or(hub_defaults.max_watchers),
        };
        let watch_progress = Duration::from_millis(
            self.watch_progress_ms
                .or(file.watch_progress_ms)
                .unwrap_or(5000)
                .max(100),
        );
        let xds_debounce = Duration::from_millis(
            self.xds_debounce_ms
                .or(file.xds_debounce_ms)
                .unwrap_or(20)
                .min(10_000),
        );
        let client_threads = self
            .client_threads
            .or(file.client_threads)
            .unwrap_or_else(crate::runtime::default_client_threads);
        if !(1..=MAX_CLIENT_THREADS).contains(&client_threads) {
            bail!("--client-threads must be between 1 and {MAX_CLIENT_THREADS}");
        }
        Ok(NodeConfig {
            client_threads,
            xds_debounce,
            watch,
            watch_progress,
            id,
            data_dir,
            peer_addr,
            client_addr,
            admin_addr,
            initial_cluster,
            initial_cluster_state: state,
            raft,
            request_timeout,
        })
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// `bowline-2` → 3: the ordinal of a StatefulSet pod plus one (ids are positive).
pub fn id_from_hostname(hostname: &str) -> anyhow::Result<u64> {
    hostname
        .rsplit_once('-')
        .and_then(|(_, n)| n.parse::<u64>().ok())
        .map(|n| n + 1)
        .with_context(|| format!("--id-from-hostname: host name `{hostname}` does not end in -N"))
}

/// Resolves when SIGTERM or SIGINT arrives.
pub async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the node");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}

/// Runs `bowline serve`.
pub async fn run(args: &ServeArgs) -> anyhow::Result<()> {
    let config = args.resolve()?;
    run_node(config, shutdown_signal()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_cluster_parses_and_rejects_bad_entries() {
        let m = parse_initial_cluster("1=127.0.0.1:7201, 2=127.0.0.1:7202").unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[&2], "127.0.0.1:7202");
        assert!(parse_initial_cluster("1=127.0.0.1").is_err());
        assert!(parse_initial_cluster("0=127.0.0.1:1").is_err());
        assert!(parse_initial_cluster("1=a:1,1=b:2").is_err());
        assert!(parse_initial_cluster("x").is_err());
    }

    #[test]
    fn statefulset_host_names_give_ids() {
        assert_eq!(id_from_hostname("bowline-0").unwrap(), 1);
        assert_eq!(id_from_hostname("bowline-12").unwrap(), 13);
        assert!(id_from_hostname("bowline").is_err());
    }
}
