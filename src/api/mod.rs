//! The gRPC services on the client port. Thin by design: convert and validate the request,
//! call [`Consensus`] or read the applied state, map errors in [`error`].

pub mod cluster;
pub mod config;
pub mod convert;
pub mod error;
pub mod proxies;
pub mod registry;
pub mod server;
pub mod watch;

use std::future::Future;
use std::time::Instant;

use tonic::{Response, Status};

use crate::proto::v1::{Consistency, ResponseHeader};
use crate::raft::consensus::Consensus;
use crate::raft::state_machine::AppliedState;
use crate::telemetry::Metrics;
pub use error::ApiError;

/// Largest request accepted on the client port (etcd uses 1.5 MiB).
pub const MAX_REQUEST_BYTES: usize = 1 << 20;

/// What every API service needs. Cheap to clone.
#[derive(Clone)]
pub struct ApiContext {
    /// Writes, read barriers, membership.
    pub consensus: Consensus,
    /// This node's applied state.
    pub applied: AppliedState,
    /// Request counters and latencies.
    pub metrics: Metrics,
    /// Raft's server metrics (vote, leader), for response headers. Held rather than asked
    /// of Raft per response: each fresh receiver costs two contended atomic updates, which
    /// showed up at 6 % of a node's CPU when thousands of watches were answered per write.
    pub server_metrics: tokio::sync::watch::Receiver<crate::raft::ServerMetrics>,
}

impl ApiContext {
    /// The header for an answer at `revision`.
    pub fn header(&self, revision: u64) -> Option<ResponseHeader> {
        // The server metrics change only with the vote or leader, so this read lock is not
        // contended by Raft's per-entry metrics updates.
        let server = self.server_metrics.borrow();
        Some(ResponseHeader {
            revision,
            node_id: self.consensus.id,
            leader_id: server.current_leader.unwrap_or(0),
            raft_term: server.vote.leader_id().get_term(),
        })
    }

    /// Waits until a read at the requested consistency may be served from local state.
    pub async fn read_barrier(&self, consistency: i32) -> Result<(), ApiError> {
        match Consistency::try_from(consistency) {
            Ok(Consistency::Stale) => Ok(()),
            Ok(Consistency::Linearizable | Consistency::Unspecified) => {
                self.consensus.read_barrier().await?;
                Ok(())
            }
            Err(_) => Err(crate::model::ValidationError::new(
                "consistency",
                "must be LINEARIZABLE or STALE",
            )
            .into()),
        }
    }

    /// Runs a handler, recording its outcome and latency, and maps its error to a status.
    pub async fn observe<T>(
        &self,
        method: &'static str,
        handler: impl Future<Output = Result<T, ApiError>>,
    ) -> Result<Response<T>, Status> {
        let started = Instant::now();
        let result = handler.await;
        let code = match &result {
            Ok(_) => tonic::Code::Ok,
            Err(e) => e.code(),
        };
        self.metrics
            .api_requests
            .with_label_values(&[method, code_label(code)])
            .inc();
        self.metrics
            .api_latency
            .with_label_values(&[method])
            .observe(started.elapsed().as_secs_f64());
        if let Err(e) = &result {
            tracing::debug!(method, error = %e, "request failed");
        }
        result.map(Response::new).map_err(Status::from)
    }
}

/// The status code as the `code` label spells it (the variant name), without formatting
/// a string per request.
fn code_label(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "Ok",
        Cancelled => "Cancelled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

/// Unix milliseconds now, for timestamps the proposer puts into commands.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::code_label;

    #[test]
    fn code_label_spells_every_status_code_as_its_variant_name() {
        for n in 0..=16 {
            let code = tonic::Code::from_i32(n);
            assert_eq!(code_label(code), format!("{code:?}"), "code {n}");
        }
    }
}
