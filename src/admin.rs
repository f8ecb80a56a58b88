//! The admin HTTP listener (`/metrics`, `/healthz`, `/readyz`) and the task that mirrors
//! Raft's own metrics into Prometheus gauges and the gRPC health service.

use std::future::Future;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use crate::app::NodeHandle;
use crate::raft::log_store::FileLogStore;

async fn metrics(
    State(node): State<NodeHandle>,
) -> (StatusCode, [(&'static str, &'static str); 1], String) {
    (
        StatusCode::OK,
        [("content-type", "text/plain; version=0.0.4")],
        node.metrics.render(),
    )
}

async fn healthz(State(node): State<NodeHandle>) -> (StatusCode, String) {
    match &node.consensus.raft.metrics().borrow().running_state {
        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
        Err(fatal) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("raft stopped: {fatal}\n"),
        ),
    }
}

async fn readyz(State(node): State<NodeHandle>) -> (StatusCode, String) {
    match node.is_ready() {
        (true, why) => (StatusCode::OK, format!("ready: {why}\n")),
        (false, why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

/// Serves the admin endpoints until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    node: NodeHandle,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(node);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(error = %e, "admin server failed");
    }
}

/// The least time between two passes of [`track_raft_metrics`].
const METRICS_SETTLE: std::time::Duration = std::time::Duration::from_millis(20);

/// Follows Raft's metrics channel and updates gauges and gRPC health; runs until aborted.
pub async fn track_raft_metrics(
    node: NodeHandle,
    log_store: FileLogStore,
    health: tonic_health::server::HealthReporter,
) {
    let mut rx = node.consensus.raft.metrics();
    let mut last_leader = None;
    let mut was_serving = None;
    loop {
        let m = rx.borrow_and_update().clone();
        let g = &node.metrics;
        g.raft_term.set(m.current_term as i64);
        g.raft_leader.set(m.current_leader.unwrap_or(0) as i64);
        let leading = m.current_leader == Some(node.consensus.id);
        g.raft_is_leader.set(leading as i64);
        let applied = m.last_applied.map_or(0, |l| l.index);
        let last = m.last_log_index.unwrap_or(0);
        g.raft_last_log_index.set(last as i64);
        g.raft_applied_index.set(applied as i64);
        g.raft_apply_lag.set(last.saturating_sub(applied) as i64);
        // openraft's metrics know the snapshot; reading it from sled here decoded the whole
        // snapshot on every applied entry, which once took half the leader's CPU.
        g.raft_snapshot_index
            .set(m.snapshot.map_or(0, |l| l.index) as i64);
        g.raft_purged_index.set(
            log_store
                .purged_index()
                .or(m.purged.map(|l| l.index))
                .unwrap_or(0) as i64,
        );
        g.store_objects
            .set(node.applied.read(|s, _| s.object_count()) as i64);
        if m.current_leader != last_leader {
            if last_leader.is_some() || m.current_leader.is_some() {
                g.raft_leader_changes.inc();
            }
            if leading {
                g.raft_elections_won.inc();
                tracing::info!(term = m.current_term, "became leader");
            } else if let Some(leader) = m.current_leader {
                tracing::info!(term = m.current_term, leader, "following");
            }
            last_leader = m.current_leader;
        }
        let serving = node.is_ready().0;
        if was_serving != Some(serving) {
            if serving {
                health
                    .set_service_status("", tonic_health::ServingStatus::Serving)
                    .await;
            } else {
                health
                    .set_service_status("", tonic_health::ServingStatus::NotServing)
                    .await;
            }
            was_serving = Some(serving);
        }
        // Raft publishes on state changes; the tick catches a leader quietly losing its
        // quorum, which changes readiness without a new metrics value.
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
        // openraft publishes after every turn of its core loop, thousands of times a second
        // under load; gauges and leader changes need no more than a few updates a second.
        tokio::time::sleep(METRICS_SETTLE).await;
    }
}
