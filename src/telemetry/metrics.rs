//! Prometheus metrics for one node, registered in a private registry (several nodes can run
//! in one test process without clashing).

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// Every metric a node exports. Cheap to clone (prometheus metrics are `Arc`s inside).
#[derive(Clone)]
pub struct Metrics {
    /// The registry `/metrics` renders.
    registry: Registry,
    /// gRPC requests by method and status code.
    pub api_requests: IntCounterVec,
    /// gRPC request latency by method.
    pub api_latency: HistogramVec,
    /// Current Raft term.
    pub raft_term: IntGauge,
    /// Current leader id (0 when unknown).
    pub raft_leader: IntGauge,
    /// 1 when this node is the leader.
    pub raft_is_leader: IntGauge,
    /// Index of the last log entry on this node.
    pub raft_last_log_index: IntGauge,
    /// Index of the last applied entry (the store revision).
    pub raft_applied_index: IntGauge,
    /// Index of the last snapshot.
    pub raft_snapshot_index: IntGauge,
    /// Index of the last purged log entry.
    pub raft_purged_index: IntGauge,
    /// Entries committed by the leader but not yet applied here (leader's view).
    pub raft_apply_lag: IntGauge,
    /// Leader changes seen by this node.
    pub raft_leader_changes: IntCounter,
    /// Elections this node won.
    pub raft_elections_won: IntCounter,
    /// Objects in the applied state.
    pub store_objects: IntGauge,
    /// Watches open on this node (each watch of a `WatchMany` stream counts).
    pub watch_active: IntGauge,
    /// `WatchMany` streams open on this node.
    pub watch_many_streams: IntGauge,
    /// Events sent to watchers.
    pub watch_events_sent: IntCounter,
    /// Progress notices sent to idle watchers.
    pub watch_progress_notices: IntCounter,
    /// Watchers cancelled, by reason.
    pub watch_cancellations: IntCounterVec,
    /// Events in the watch history.
    pub watch_history_events: IntGauge,
    /// Bytes in the watch history.
    pub watch_history_bytes: IntGauge,
    /// Oldest revision a watch can start from.
    pub watch_history_oldest: IntGauge,
    /// Health probes by kind and result.
    pub health_probes: IntCounterVec,
    /// Health probe latency by kind.
    pub health_probe_duration: HistogramVec,
    /// How late probes start relative to their schedule.
    pub health_schedule_lag: prometheus::Histogram,
    /// Time from a revision's publication on this node to a watch stream handing its
    /// response to the transport.
    pub watch_send_lag: prometheus::Histogram,
    /// Health transitions committed by this node's prober, by new status.
    pub health_transitions: IntCounterVec,
    /// 1 while this node runs the prober (only the leader does).
    pub health_prober_active: IntGauge,
    /// Endpoints the prober watches.
    pub health_targets: IntGauge,
    /// Health batches refused because a newer prober had claimed probing.
    pub health_stale_batches: IntCounter,
    /// xDS streams open, by protocol variant (sotw, delta).
    pub xds_streams: prometheus::IntGaugeVec,
    /// xDS responses sent, by type.
    pub xds_pushes: IntCounterVec,
    /// NACKs received, by type.
    pub xds_nacks: IntCounterVec,
    /// Time from a state change (revision applied here) to a response carrying it.
    pub xds_push_latency: prometheus::Histogram,
    /// Time from sending a response to its ACK.
    pub xds_ack_latency: prometheus::Histogram,
    /// Snapshots that failed translation or the consistency check.
    pub xds_build_errors: IntCounter,
    /// Client writes packed into each Raft entry this node proposed as leader.
    pub raft_proposal_commands: prometheus::Histogram,
    /// Linearizable reads on this node that shared one read-index request.
    pub read_index_batch_reads: prometheus::Histogram,
    /// Leadership confirmations for read indexes on this leader, by who confirmed: one
    /// follower (`follower`) or openraft's round to every follower (`raft`, which is also
    /// the round that takes or renews the read lease).
    pub read_index_confirmations: IntCounterVec,
    /// Read indexes this leader gave under its read lease, with no confirmation round.
    pub read_lease_reads: IntCounter,
}

/// Buckets for request and probe latencies, in seconds (0.5 ms to 5 s).
fn request_buckets() -> Vec<f64> {
    vec![
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    ]
}

/// Buckets for batch sizes (1 to 512, the most commands one entry takes).
fn batch_buckets() -> Vec<f64> {
    vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0]
}

/// Registers `metric` and returns it. Both steps fail only on a programming error (an
/// invalid or duplicate constant name, which every test that starts a node would hit);
/// the error stops start-up with a message rather than a panic.
fn register<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: prometheus::Result<M>,
) -> prometheus::Result<M> {
    let metric = metric?;
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

fn gauge(registry: &Registry, name: &str, help: &str) -> prometheus::Result<IntGauge> {
    register(registry, IntGauge::new(name, help))
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    buckets: Vec<f64>,
) -> prometheus::Result<prometheus::Histogram> {
    register(
        registry,
        prometheus::Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)),
    )
}

fn counter(registry: &Registry, name: &str, help: &str) -> prometheus::Result<IntCounter> {
    register(registry, IntCounter::new(name, help))
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new(node_id: u64) -> prometheus::Result<Self> {
        let registry = Registry::new_custom(
            Some("bowline".to_string()),
            Some(
                [("node".to_string(), node_id.to_string())]
                    .into_iter()
                    .collect(),
            ),
        )?;
        let api_requests = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "api_requests_total",
                    "gRPC requests by method and status code",
                ),
                &["method", "code"],
            ),
        )?;
        let api_latency = register(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "api_request_duration_seconds",
                    "gRPC request latency by method",
                )
                .buckets(request_buckets()),
                &["method"],
            ),
        )?;
        let watch_cancellations = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "watch_cancellations_total",
                    "Watchers cancelled by the node, by reason",
                ),
                &["reason"],
            ),
        )?;
        let health_probes = register(
            &registry,
            IntCounterVec::new(
                Opts::new("health_probes_total", "Health probes by kind and result"),
                &["kind", "result"],
            ),
        )?;
        let health_probe_duration = register(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "health_probe_duration_seconds",
                    "Health probe latency by kind",
                )
                .buckets(request_buckets()),
                &["kind"],
            ),
        )?;
        let health_schedule_lag = histogram(
            &registry,
            "health_schedule_lag_seconds",
            "How late health probes start",
            vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ],
        )?;
        let watch_send_lag = histogram(
            &registry,
            "watch_send_lag_seconds",
            "Revision published on this node to its watch response handed to the transport",
            vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ],
        )?;
        let raft_proposal_commands = histogram(
            &registry,
            "raft_proposal_commands",
            "Client writes packed into each Raft entry this node proposed as leader",
            batch_buckets(),
        )?;
        let read_index_batch_reads = histogram(
            &registry,
            "read_index_batch_reads",
            "Linearizable reads on this node that shared one read-index request",
            batch_buckets(),
        )?;
        let read_index_confirmations = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "read_index_confirmations_total",
                    "Leadership confirmations for read indexes on this leader, by who confirmed",
                ),
                &["via"],
            ),
        )?;
        let health_transitions = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "health_transitions_total",
                    "Health transitions committed by this node's prober",
                ),
                &["status"],
            ),
        )?;
        let xds_streams = register(
            &registry,
            prometheus::IntGaugeVec::new(
                Opts::new("xds_streams", "xDS streams open, by protocol variant"),
                &["stream"],
            ),
        )?;
        let xds_pushes = register(
            &registry,
            IntCounterVec::new(
                Opts::new("xds_pushes_total", "xDS responses sent, by type"),
                &["type"],
            ),
        )?;
        let xds_nacks = register(
            &registry,
            IntCounterVec::new(
                Opts::new("xds_nacks_total", "xDS NACKs received, by type"),
                &["type"],
            ),
        )?;
        let latency_buckets = vec![
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        ];
        let xds_push_latency = histogram(
            &registry,
            "xds_push_latency_seconds",
            "State change to xDS response sent",
            latency_buckets.clone(),
        )?;
        let xds_ack_latency = histogram(
            &registry,
            "xds_ack_latency_seconds",
            "xDS response sent to its ACK",
            latency_buckets,
        )?;
        Ok(Self {
            xds_streams,
            xds_pushes,
            xds_nacks,
            xds_push_latency,
            xds_ack_latency,
            xds_build_errors: counter(
                &registry,
                "xds_build_errors_total",
                "xDS snapshots that failed translation or the consistency check",
            )?,
            health_probes,
            health_probe_duration,
            health_schedule_lag,
            watch_send_lag,
            raft_proposal_commands,
            read_index_batch_reads,
            read_index_confirmations,
            read_lease_reads: counter(
                &registry,
                "read_lease_reads_total",
                "Read indexes this leader gave under its read lease, with no confirmation round",
            )?,
            health_transitions,
            health_prober_active: gauge(
                &registry,
                "health_prober_active",
                "1 while this node runs the health prober",
            )?,
            health_targets: gauge(
                &registry,
                "health_targets",
                "Endpoints the health prober watches",
            )?,
            health_stale_batches: counter(
                &registry,
                "health_stale_batches_total",
                "Health batches refused because a newer prober claimed probing",
            )?,
            watch_active: gauge(
                &registry,
                "watch_active",
                "Watches open on this node (each watch of a WatchMany stream counts)",
            )?,
            watch_many_streams: gauge(
                &registry,
                "watch_many_streams",
                "WatchMany streams open on this node",
            )?,
            watch_events_sent: counter(
                &registry,
                "watch_events_sent_total",
                "Events sent to watchers",
            )?,
            watch_progress_notices: counter(
                &registry,
                "watch_progress_notices_total",
                "Progress notices sent",
            )?,
            watch_cancellations,
            watch_history_events: gauge(
                &registry,
                "watch_history_events",
                "Events in the watch history",
            )?,
            watch_history_bytes: gauge(
                &registry,
                "watch_history_bytes",
                "Estimated bytes of memory the events in the watch history hold",
            )?,
            watch_history_oldest: gauge(
                &registry,
                "watch_history_oldest_revision",
                "Oldest revision a watch can start from",
            )?,
            api_requests,
            api_latency,
            raft_term: gauge(&registry, "raft_term", "Current Raft term")?,
            raft_leader: gauge(
                &registry,
                "raft_leader_id",
                "Current leader id, 0 when unknown",
            )?,
            raft_is_leader: gauge(&registry, "raft_is_leader", "1 when this node leads")?,
            raft_last_log_index: gauge(
                &registry,
                "raft_last_log_index",
                "Index of the last log entry",
            )?,
            raft_applied_index: gauge(
                &registry,
                "raft_applied_index",
                "Index of the last applied log entry",
            )?,
            raft_snapshot_index: gauge(
                &registry,
                "raft_snapshot_index",
                "Index of the last snapshot",
            )?,
            raft_purged_index: gauge(
                &registry,
                "raft_purged_index",
                "Index of the last purged log entry",
            )?,
            raft_apply_lag: gauge(
                &registry,
                "raft_apply_lag",
                "Log entries present but not yet applied",
            )?,
            raft_leader_changes: counter(
                &registry,
                "raft_leader_changes_total",
                "Leader changes seen by this node",
            )?,
            raft_elections_won: counter(
                &registry,
                "raft_elections_won_total",
                "Elections this node won",
            )?,
            store_objects: gauge(&registry, "store_objects", "Objects in the applied state")?,
            registry,
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        let encoder = TextEncoder::new();
        if encoder
            .encode(&self.registry.gather(), &mut buffer)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}
