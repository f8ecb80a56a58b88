//! Wiring of one node: storage, Raft, the three listeners, background tasks, and an orderly
//! shutdown (stop accepting, finish in-flight requests, stop Raft, flush sled).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use openraft::SnapshotPolicy;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;

use crate::api::{self, ApiContext};
use crate::proto::peer::raft_peer_server::RaftPeerServer;
use crate::proto::peer::NodeInfoResponse;
use crate::proto::v1::cluster_server::ClusterServer;
use crate::proto::v1::config_server::ConfigServer;
use crate::proto::v1::proxies_server::ProxiesServer;
use crate::proto::v1::registry_server::RegistryServer;
use crate::proto::watch_wire::watch_server::WatchServer;
use crate::raft::campaign::LeaderContact;
use crate::raft::consensus::Consensus;
use crate::raft::log_store::FileLogStore;
use crate::raft::network::{PeerClients, PeerNetworkFactory, MAX_PEER_MESSAGE_BYTES};
use crate::raft::peer_server::PeerService;
use crate::raft::proposal_batch::ProposalBatcher;
use crate::raft::read_index::{ReadIndexBatcher, RestoredLeadership};
use crate::raft::read_lease::ReadLease;
use crate::raft::state_machine::{AppliedState, StateMachineStore};
use crate::raft::{NodeAddr, NodeId, Raft};
use crate::runtime::{DedicatedRuntime, RAFT_WORKER_THREADS};
use crate::telemetry::Metrics;
use crate::transport::CoalescingStream;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;

/// Whether this node bootstraps a new cluster or joins an existing one (etcd's
/// `--initial-cluster-state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterState {
    /// Members of `--initial-cluster` bootstrap it together on first start.
    New,
    /// The node waits to be added by `bowline cluster add`.
    Existing,
}

/// sled's page cache. Its default (1 GiB) let a node's RSS grow past 1 GiB under a long
/// stream of writes although the live state was a few MiB: the cache held the Raft log.
/// The state itself is in memory anyway (`RegistryState`), so the cache only speeds up log
/// reads for replication, which hit recent entries.
const SLED_CACHE_BYTES: u64 = 128 << 20;

/// How long a stopping leader tries to hand leadership to a follower (normally a few
/// milliseconds: a catch-up, one vote round and a heartbeat).
const HAND_OFF_TIMEOUT: Duration = Duration::from_secs(2);

/// Raft timing and log compaction.
#[derive(Debug, Clone)]
pub struct RaftTuning {
    /// Leader heartbeat interval.
    pub heartbeat_ms: u64,
    /// Lower bound of the randomized election timeout.
    pub election_timeout_min_ms: u64,
    /// Upper bound of the randomized election timeout.
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many new log entries.
    pub snapshot_every: u64,
    /// Log entries kept below the last snapshot (so a briefly lagging follower needs no
    /// snapshot).
    pub logs_to_keep: u64,
    /// Also build a snapshot once the log after the last one holds this many MiB (an entry
    /// carries a batch of writes, so entries alone do not bound the disk).
    pub snapshot_log_mib: u64,
    /// Also purge the log below the last snapshot beyond this many MiB.
    pub keep_log_mib: u64,
    /// Whether the leader serves linearizable reads on a lease (half the shortest election
    /// timeout after each confirmation round) instead of confirming every batch.
    pub read_lease: bool,
}

impl Default for RaftTuning {
    fn default() -> Self {
        // openraft 0.9 makes a follower that knew a leader wait the leader lease (the maximum
        // election timeout) *plus* a random election timeout before it campaigns, so a dead
        // leader is replaced after max + [min, max): 650-800 ms here, which keeps the write
        // gap after losing the leader under a second. Five missed heartbeats in a row are
        // still needed before anyone campaigns.
        Self {
            heartbeat_ms: 50,
            election_timeout_min_ms: 250,
            election_timeout_max_ms: 400,
            // etcd's defaults (snapshot-count 100,000; 5,000 entries kept for catch-up).
            // Every snapshot copies and encodes the whole state, so taking one every 10,000
            // entries cost a third of the put throughput and put 600 ms stalls into p99, and
            // keeping only 1,000 entries sent snapshots to followers briefly behind.
            snapshot_every: 100_000,
            logs_to_keep: 10_000,
            snapshot_log_mib: 64,
            keep_log_mib: 64,
            read_lease: true,
        }
    }
}

/// Everything one node needs to start.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Raft node id (positive, unique in the cluster).
    pub id: NodeId,
    /// Where sled keeps the log and the state.
    pub data_dir: PathBuf,
    /// Peer listener (Raft RPC); also the address other members use.
    pub peer_addr: String,
    /// Client listener (gRPC API).
    pub client_addr: String,
    /// Admin listener (HTTP metrics and health).
    pub admin_addr: String,
    /// `id → peer address` of the initial members.
    pub initial_cluster: BTreeMap<NodeId, String>,
    /// Bootstrap or join.
    pub initial_cluster_state: ClusterState,
    /// Raft timing and compaction.
    pub raft: RaftTuning,
    /// How long a client request may wait for a leader and an answer.
    pub request_timeout: Duration,
    /// Watch history and queue limits.
    pub watch: crate::watch::HubConfig,
    /// How often an idle watch gets a progress notice, unless it asks otherwise.
    pub watch_progress: Duration,
    /// How long xDS waits after a change for more before pushing.
    pub xds_debounce: Duration,
    /// Worker threads of the runtime serving the client port.
    pub client_threads: usize,
}

/// A running node's handles, for in-process tests and the admin server.
#[derive(Clone)]
pub struct NodeHandle {
    /// Raft and forwarding.
    pub consensus: Consensus,
    /// Applied state.
    pub applied: AppliedState,
    /// Metrics.
    pub metrics: Metrics,
    /// A leader that has not heard from a quorum for this long is not ready: openraft 0.9
    /// keeps such a leader in place until it sees a higher term.
    pub quorum_ack_timeout_ms: u64,
}

impl NodeHandle {
    /// Ready means: a leader is known and this node has applied what it has in its log, so a
    /// stale read here is not far behind.
    pub fn is_ready(&self) -> (bool, String) {
        let m = self.consensus.raft.metrics().borrow().clone();
        let applied = m.last_applied.map_or(0, |l| l.index);
        let last = m.last_log_index.unwrap_or(0);
        let leading = m.current_leader == Some(self.consensus.id);
        match m.current_leader {
            None => (false, "no leader known".to_string()),
            Some(_)
                if leading
                    && m.millis_since_quorum_ack
                        .is_none_or(|ms| ms > self.quorum_ack_timeout_ms) =>
            {
                (
                    false,
                    match m.millis_since_quorum_ack {
                        Some(ms) => format!("leader without a quorum acknowledgement for {ms} ms"),
                        None => "leader that has not yet heard from a quorum".to_string(),
                    },
                )
            }
            Some(_) if last.saturating_sub(applied) > 1000 => {
                (false, format!("catching up: applied {applied} of {last}"))
            }
            Some(leader) => (true, format!("leader {leader}, applied {applied}")),
        }
    }
}

async fn bind(what: &str, addr: &str) -> anyhow::Result<TcpListener> {
    // A literal address needs no lookup, whose blocking-pool thread would linger beside the
    // runtime's workers.
    let socket: SocketAddr = match addr.parse() {
        Ok(socket) => socket,
        Err(_) => tokio::net::lookup_host(addr)
            .await
            .with_context(|| format!("resolve {what} address {addr}"))?
            .next()
            .with_context(|| format!("{what} address {addr} resolves to nothing"))?,
    };
    TcpListener::bind(socket)
        .await
        .with_context(|| format!("listen on {what} address {addr}"))
}

/// Refuses to start a data directory under a different node id: mixing up two nodes' data
/// would silently corrupt the cluster.
fn check_identity(data_dir: &std::path::Path, id: NodeId) -> anyhow::Result<()> {
    let path = data_dir.join("node-id");
    match std::fs::read_to_string(&path) {
        Ok(existing) => {
            let existing: NodeId = existing.trim().parse().context("parse node-id file")?;
            if existing != id {
                bail!(
                    "data directory {} belongs to node {existing}, not node {id}",
                    data_dir.display()
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::write(&path, format!("{id}\n")).context("write node-id file")
        }
        Err(e) => Err(e).context("read node-id file"),
    }
}

/// Runs one node until `shutdown` resolves, then stops it cleanly.
pub async fn run_node(
    config: NodeConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    if config.id == 0 {
        bail!("--id must be a positive integer");
    }
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("create data directory {}", config.data_dir.display()))?;
    check_identity(&config.data_dir, config.id)?;

    // Bind first, so a busy port fails fast before any Raft state changes.
    let raft_runtime = DedicatedRuntime::start("raft", RAFT_WORKER_THREADS)?;
    let client_runtime = DedicatedRuntime::start("client", config.client_threads)?;
    // The peer listener belongs to the Raft runtime's reactor, like the connections it accepts.
    let peer_addr = config.peer_addr.clone();
    let peer_listener = raft_runtime
        .run(async move { bind("peer", &peer_addr).await })
        .await??;
    // Likewise the client listener and the client runtime.
    let client_addr = config.client_addr.clone();
    let client_listener = client_runtime
        .run(async move { bind("client", &client_addr).await })
        .await??;
    let admin_listener = bind("admin", &config.admin_addr).await?;

    let db = sled::Config::new()
        .path(config.data_dir.join("db"))
        .cache_capacity(SLED_CACHE_BYTES)
        .open()
        .with_context(|| format!("open sled database in {}", config.data_dir.display()))?;
    let metrics = Metrics::new(config.id).context("register metrics")?;
    let log_store = FileLogStore::open(&config.data_dir.join("raft-log"), &db, config.id)
        .map_err(|e| anyhow::anyhow!("open raft log: {e}"))?;
    let state_machine = StateMachineStore::open_with(
        &db,
        &config.data_dir.join("snapshots"),
        config.watch.clone(),
        metrics.clone(),
    )
    .map_err(|e| anyhow::anyhow!("open state machine: {e}"))?
    .apply_only_synced(log_store.durable_index());
    let applied = state_machine.applied_state();
    let snapshot_bytes = state_machine.snapshot_bytes();
    let peers = PeerClients::on_runtime(raft_runtime.handle().clone());

    let raft_config = openraft::Config {
        cluster_name: "bowline".to_string(),
        heartbeat_interval: config.raft.heartbeat_ms,
        election_timeout_min: config.raft.election_timeout_min_ms,
        election_timeout_max: config.raft.election_timeout_max_ms,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(config.raft.snapshot_every),
        max_in_snapshot_log_to_keep: config.raft.logs_to_keep,
        install_snapshot_timeout: 2_000,
        ..Default::default()
    }
    .validate()
    .context("raft configuration")?;
    let network = PeerNetworkFactory {
        clients: peers.clone(),
        log: Some(log_store.clone()),
    };
    let restored = {
        use openraft::storage::RaftLogStorage;
        let mut probe = log_store.clone();
        let vote = probe
            .read_vote()
            .await
            .map_err(|e| anyhow::anyhow!("read raft vote: {e}"))?;
        let last = probe
            .get_log_state()
            .await
            .map_err(|e| anyhow::anyhow!("read raft log state: {e}"))?
            .last_log_id
            .map(|l| l.index);
        RestoredLeadership::detect(config.id, vote.as_ref(), last)
    };
    if let Some(r) = restored {
        tracing::info!(
            term = r.term,
            last_log_index = r.last_log_index,
            "restarting as the leader of term {}; reads wait for the log it had",
            r.term
        );
    }
    let (id, logs, states) = (config.id, log_store.clone(), state_machine.clone());
    let raft = raft_runtime
        .run(async move { Raft::new(id, Arc::new(raft_config), network, logs, states).await })
        .await?
        .context("start raft")?;

    {
        // Followers learn a commit index capped at what this node has synced; once a cap
        // has applied and the sync has caught up, a heartbeat tells them the rest at once.
        let (raft, log) = (raft.clone(), log_store.clone());
        raft_runtime.handle().spawn(async move {
            loop {
                log.commit_capped_then_synced().await;
                if raft.trigger().heartbeat().await.is_err() {
                    return;
                }
            }
        });
    }
    if config.initial_cluster_state == ClusterState::New
        && config.initial_cluster.contains_key(&config.id)
        && !raft.is_initialized().await.context("raft state")?
    {
        // Every initial member proposes the identical membership (client addresses are
        // learned later through NodeInfo), so the entry at index 0 is the same everywhere.
        let members: BTreeMap<NodeId, NodeAddr> = config
            .initial_cluster
            .iter()
            .map(|(id, peer)| {
                (
                    *id,
                    NodeAddr {
                        peer_addr: peer.clone(),
                        client_addr: String::new(),
                    },
                )
            })
            .collect();
        match raft.initialize(members).await {
            Ok(()) => {
                tracing::info!(members = ?config.initial_cluster, "bootstrapped a new cluster")
            }
            Err(e) => tracing::info!(error = %e, "cluster already initialized"),
        }
    }

    let consensus = Consensus {
        id: config.id,
        raft: raft.clone(),
        peers: peers.clone(),
        applied: applied.clone(),
        request_timeout: config.request_timeout,
        heartbeats: Arc::new(crate::health::HeartbeatTable::default()),
        read_batch: Default::default(),
        read_barrier_batch: ReadIndexBatcher::with_batch_sizes(
            metrics.read_index_batch_reads.clone(),
        ),
        write_batch: ProposalBatcher::with_batch_sizes(metrics.raft_proposal_commands.clone()),
        restored,
        confirmations: Default::default(),
        metrics: metrics.clone(),
        handing_off: Default::default(),
        stopping: Default::default(),
        read_lease: ReadLease::new(
            Duration::from_millis(config.raft.election_timeout_min_ms / 2),
            config.raft.read_lease,
        ),
    };
    let node = NodeHandle {
        consensus: consensus.clone(),
        applied: applied.clone(),
        metrics: metrics.clone(),
        quorum_ack_timeout_ms: config.raft.election_timeout_max_ms,
    };
    let ctx = ApiContext {
        server_metrics: consensus.raft.server_metrics(),
        consensus: consensus.clone(),
        applied: applied.clone(),
        metrics: metrics.clone(),
    };

    // One signal fans out to every server.
    let (stop_tx, stop_rx) = watch::channel(false);
    // The peer port stops last, after Raft: until then the others must still reach this
    // node (new connections included) to vote for a successor and forward requests to it.
    let (peer_stop_tx, peer_stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    let peer_service = PeerService {
        consensus: consensus.clone(),
        info: NodeInfoResponse {
            node_id: config.id,
            peer_addr: config.peer_addr.clone(),
            client_addr: config.client_addr.clone(),
            admin_addr: config.admin_addr.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        },
        leader_contact: LeaderContact::default(),
        campaign_quiet: Duration::from_millis(config.raft.election_timeout_min_ms),
    };
    let peer_server = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .concurrency_limit_per_connection(1024)
        .add_service(
            RaftPeerServer::new(peer_service)
                .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(accepted_without_nagle(peer_listener), stopped(peer_stop_rx));

    let ads = crate::xds::ads::AdsServer {
        cache: crate::xds::cache::SnapshotCache::new(applied.clone(), metrics.clone()),
        applied: applied.clone(),
        registry: Arc::new(crate::xds::registry::ProxyRegistry::default()),
        metrics: metrics.clone(),
        debounce: config.xds_debounce,
        node_id: config.id,
    };
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let client_routes = api::server::GrpcRouter::builder()
        .add_service(health_service)
        .add_service(
            RegistryServer::new(api::registry::RegistryService { ctx: ctx.clone() })
                .max_decoding_message_size(api::MAX_REQUEST_BYTES),
        )
        .add_service(
            ConfigServer::new(api::config::ConfigService { ctx: ctx.clone() })
                .max_decoding_message_size(api::MAX_REQUEST_BYTES),
        )
        .add_service(
            ClusterServer::new(api::cluster::ClusterService { ctx: ctx.clone() })
                .max_decoding_message_size(api::MAX_REQUEST_BYTES),
        )
        .add_service(
            AggregatedDiscoveryServiceServer::new(ads.clone())
                .max_decoding_message_size(api::MAX_REQUEST_BYTES)
                .max_encoding_message_size(64 << 20),
        )
        .add_service(ProxiesServer::new(api::proxies::ProxiesService {
            ctx: ctx.clone(),
            registry: ads.registry.clone(),
        }))
        .add_service(
            WatchServer::new(api::watch::WatchService {
                ctx: ctx.clone(),
                default_progress: config.watch_progress,
            })
            .max_decoding_message_size(api::MAX_REQUEST_BYTES),
        )
        .build();
    let client_server = api::server::serve(
        client_routes,
        accepted_without_nagle(client_listener),
        stopped(stop_rx.clone()),
    );

    let admin_server = crate::admin::serve(admin_listener, node.clone(), stopped(stop_rx.clone()));
    let compaction_task = tokio::spawn(crate::raft::compaction::compact_by_size(
        raft.clone(),
        log_store.clone(),
        crate::raft::compaction::LogSizeLimits {
            snapshot_after_bytes: config.raft.snapshot_log_mib << 20,
            keep_below_snapshot_bytes: config.raft.keep_log_mib << 20,
        },
        snapshot_bytes,
    ));
    let metrics_task = tokio::spawn(crate::admin::track_raft_metrics(
        node.clone(),
        log_store.clone(),
        health_reporter,
    ));

    tracing::info!(
        id = config.id,
        peer = %config.peer_addr,
        client = %config.client_addr,
        admin = %config.admin_addr,
        data_dir = %config.data_dir.display(),
        "node started"
    );

    let health_task = tokio::spawn(
        crate::health::HealthChecker {
            consensus: consensus.clone(),
            metrics: metrics.clone(),
            heartbeats: consensus.heartbeats.clone(),
            quorum_timeout_ms: config.raft.election_timeout_max_ms,
        }
        .supervise(stop_rx.clone()),
    );
    let peer_task = raft_runtime.handle().spawn(peer_server);
    let client_task = client_runtime.handle().spawn(client_server);
    let admin_task = tokio::spawn(admin_server);

    // A node whose Raft core or log sync failed can no longer apply or acknowledge
    // anything: it stops as on SIGTERM (a leader still hands off), then exits with the
    // reason (`raft/failure.rs`).
    let failure = crate::raft::failure::node_failure(raft.metrics(), log_store.failure());
    let failed = tokio::select! {
        () = shutdown => None,
        reason = failure => Some(reason),
    };
    match &failed {
        None => tracing::info!("shutting down: draining requests"),
        Some(reason) => tracing::error!(%reason, "stopping: this node can no longer serve"),
    }
    let _ = stop_tx.send(true);
    // Watch streams never end on their own: end them (clients resume elsewhere) so the
    // client server can drain.
    applied.hub().shutdown();
    // The prober stops before Raft does, so no probe result is proposed during shutdown.
    let _ = tokio::time::timeout(Duration::from_secs(5), health_task).await;
    // A leader hands off first, while client requests drain in the background: writes that
    // reach it meanwhile are refused as not-leader, which every caller retries with the
    // successor. This node must not win the election it starts for its successor.
    raft.runtime_config().elect(false);
    match consensus.hand_off_leadership(HAND_OFF_TIMEOUT).await {
        Some(to) => tracing::info!(to, "handed leadership to node {to}"),
        None if consensus.leader().map(|(l, _)| l) == Some(config.id) => {
            tracing::warn!("could not hand leadership off; the others will elect after a timeout")
        }
        None => {}
    }
    // Client requests drain; the peer port stays up meanwhile so in-flight writes can still
    // be forwarded and commit.
    let drain = Duration::from_secs(5);
    let _ = tokio::time::timeout(drain, client_task).await;
    let _ = tokio::time::timeout(drain, admin_task).await;
    if let Err(e) = raft.shutdown().await {
        tracing::warn!(error = %e, "raft shutdown");
    }
    let _ = peer_stop_tx.send(true);
    let _ = tokio::time::timeout(drain, peer_task).await;
    metrics_task.abort();
    compaction_task.abort();
    drop(client_runtime);
    drop(raft_runtime);
    let flushed = db.flush_async().await.context("flush sled on shutdown");
    match (failed, flushed) {
        (None, Ok(_)) => {
            tracing::info!("stopped");
            Ok(())
        }
        (None, Err(e)) => Err(e),
        (Some(reason), Ok(_)) => Err(anyhow::anyhow!(reason)),
        // On a full or failing disk the flush fails too; the exit names the first failure,
        // the one an operator must fix.
        (Some(reason), Err(e)) => {
            tracing::error!(error = format!("{e:#}"), "stopping");
            Err(anyhow::anyhow!(reason))
        }
    }
}

/// Accepted connections with Nagle's algorithm off. The builder's `tcp_nodelay` only applies
/// to listeners tonic binds itself; on ours, small responses waited for the peer's delayed
/// ACK, costing every request about 40 ms.
/// Their writes are coalesced across streams (see [`crate::transport`]).
fn accepted_without_nagle(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<CoalescingStream<tokio::net::TcpStream>>> {
    use futures::TryStreamExt;
    TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .map_ok(CoalescingStream::new)
}
