//! The one table that maps internal errors to gRPC status codes.
//!
//! Everything below the API layer returns typed errors; only this file decides what a client
//! sees. Messages name the field and the rule; compare-and-set failures carry the current
//! revision both in the message and in the `bowline-current-revision` metadata key.

use tonic::{Code, Status};

use crate::command::ApplyError;
use crate::model::ValidationError;
use crate::raft::network::ConsensusError;

/// Metadata key carrying the current revision of an object on a CAS failure.
pub const CURRENT_REVISION_KEY: &str = "bowline-current-revision";
/// Metadata key carrying the leader's id when a request could not be served here.
pub const LEADER_ID_KEY: &str = "bowline-leader-id";

/// An error on its way to a client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request broke a validation rule.
    #[error("{0}")]
    Invalid(#[from] ValidationError),
    /// A read named an object that does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// Applying the command failed deterministically.
    #[error("{0}")]
    Apply(#[from] ApplyError),
    /// Raft could not serve the request.
    #[error("{0}")]
    Consensus(#[from] ConsensusError),
}

impl ApiError {
    /// The gRPC code for this error.
    pub fn code(&self) -> Code {
        match self {
            ApiError::Invalid(_) => Code::InvalidArgument,
            ApiError::NotFound(_) => Code::NotFound,
            ApiError::Consensus(ConsensusError::NotFound(_)) => Code::NotFound,
            ApiError::Apply(ApplyError::NotFound { .. }) => Code::NotFound,
            ApiError::Apply(ApplyError::RevisionMismatch { .. }) => Code::FailedPrecondition,
            ApiError::Apply(ApplyError::FailedPrecondition(_)) => Code::FailedPrecondition,
            ApiError::Consensus(ConsensusError::Rejected(_)) => Code::FailedPrecondition,
            ApiError::Consensus(
                ConsensusError::NotLeader { .. }
                | ConsensusError::Unavailable(_)
                | ConsensusError::ShuttingDown(_),
            ) => Code::Unavailable,
            // Not UNAVAILABLE: clients retry that, and this write may already be applied.
            ApiError::Consensus(ConsensusError::Ambiguous(_)) => Code::DeadlineExceeded,
        }
    }
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Status {
        let mut status = Status::new(error.code(), error.to_string());
        match &error {
            ApiError::Apply(ApplyError::RevisionMismatch { current, .. }) => {
                if let Ok(value) = current.to_string().parse() {
                    status.metadata_mut().insert(CURRENT_REVISION_KEY, value);
                }
            }
            ApiError::Consensus(ConsensusError::NotLeader {
                leader_id: Some(id),
                ..
            }) => {
                if let Ok(value) = id.to_string().parse() {
                    status.metadata_mut().insert(LEADER_ID_KEY, value);
                }
            }
            _ => {}
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_maps_to_the_documented_code() {
        let cases: Vec<(ApiError, Code)> = vec![
            (
                ValidationError::new("service.name", "bad").into(),
                Code::InvalidArgument,
            ),
            (
                ApiError::NotFound("service default/web".into()),
                Code::NotFound,
            ),
            (
                ApplyError::RevisionMismatch {
                    kind: "service".into(),
                    key: "default/web".into(),
                    expected: 1,
                    current: 2,
                }
                .into(),
                Code::FailedPrecondition,
            ),
            (
                ApplyError::FailedPrecondition("x".into()).into(),
                Code::FailedPrecondition,
            ),
            (
                ConsensusError::NotLeader {
                    leader_id: Some(2),
                    leader_addr: None,
                }
                .into(),
                Code::Unavailable,
            ),
            (
                ConsensusError::Unavailable("x".into()).into(),
                Code::Unavailable,
            ),
            (
                ConsensusError::Rejected("x".into()).into(),
                Code::FailedPrecondition,
            ),
            (
                ConsensusError::Ambiguous("x".into()).into(),
                Code::DeadlineExceeded,
            ),
        ];
        for (error, code) in cases {
            assert_eq!(Status::from(error).code(), code);
        }
    }

    #[test]
    fn cas_failure_carries_the_current_revision() {
        let status = Status::from(ApiError::from(ApplyError::RevisionMismatch {
            kind: "service".into(),
            key: "default/web".into(),
            expected: 3,
            current: 7,
        }));
        assert_eq!(status.metadata().get(CURRENT_REVISION_KEY).unwrap(), "7");
        assert!(status.message().contains("current revision is 7"));
    }
}
