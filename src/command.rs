//! The replicated commands: what goes into the Raft log, and what applying one returns.
//!
//! The log outlives binaries, so the wire form is versioned: a [`Proposal`] wraps a
//! [`VersionedCommand`], and new commands are only ever appended as new variants. A node that
//! cannot decode an entry stops (the storage layer returns a fatal error) rather than guess.

use serde::{Deserialize, Serialize};

use crate::model::{ConfigKind, ConfigSpec, Endpoint, HealthStatus, Service};
use crate::store::{Stored, StoredConfig};

/// One entry's application payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    /// Wall-clock time at the proposer, in Unix milliseconds; `apply` never reads a clock, so
    /// every replica stamps the same time.
    pub proposed_at_ms: u64,
    /// What to do.
    pub command: VersionedCommand,
}

impl Proposal {
    /// Wraps the commands of one entry (see [`crate::raft::proposal_batch`]), stamping the
    /// proposer's clock. (`V1` and `Batch` entries are only read from older logs.)
    pub fn encoded(commands: EncodedBatch) -> Self {
        Self {
            proposed_at_ms: unix_millis_now(),
            command: VersionedCommand::Encoded(commands),
        }
    }
}

fn unix_millis_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Wire versions of [`Command`]. Never reorder or remove a variant.
// `V1` is only ever decoded from old logs; boxing it would change nothing that matters.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum VersionedCommand {
    /// The first command set.
    V1(Command),
    /// Several commands in one entry, applied in order, each at a revision of its own.
    Batch(Vec<Command>),
    /// Like `Batch`, kept in its encoding until applied.
    Encoded(EncodedBatch),
}

impl VersionedCommand {
    /// The commands, in the order they apply, owned (to move them into the state).
    pub fn into_commands(self) -> Result<Vec<Command>, bincode::error::DecodeError> {
        match self {
            VersionedCommand::V1(command) => Ok(vec![command]),
            VersionedCommand::Batch(commands) => Ok(commands),
            VersionedCommand::Encoded(batch) => batch.decode(),
        }
    }
}

/// The commands of one entry as the encoding of a `Vec<Command>`, built from commands
/// encoded one by one as they arrived.
///
/// An entry is written to the log, sent to each follower, read back for replication and
/// stored again by every follower before it is applied. As a `Vec<Command>` it was encoded
/// or decoded field by field at each of those steps, and cloned string by string; as bytes
/// each is a copy, and the commands are decoded once, when applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedBatch(bytes::Bytes);

impl EncodedBatch {
    /// Joins commands encoded one by one (with [`crate::raft::codec::encode`]) into the
    /// encoding of the `Vec<Command>` they make: the count, then each command.
    pub fn join(commands: &[bytes::Bytes]) -> Result<Self, bincode::error::EncodeError> {
        // A sequence's length is encoded as the u64 it converts to (bincode's `usize`).
        let count = crate::raft::codec::encode(&(commands.len() as u64))?;
        let mut bytes =
            Vec::with_capacity(count.len() + commands.iter().map(|c| c.len()).sum::<usize>());
        bytes.extend_from_slice(&count);
        for command in commands {
            bytes.extend_from_slice(command);
        }
        Ok(Self(bytes.into()))
    }

    /// The commands, decoded.
    pub fn decode(&self) -> Result<Vec<Command>, bincode::error::DecodeError> {
        crate::raft::codec::decode(&self.0)
    }
}

impl Serialize for EncodedBatch {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for EncodedBatch {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BytesVisitor;
        impl<'de> serde::de::Visitor<'de> for BytesVisitor {
            type Value = EncodedBatch;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("the bytes of an encoded command batch")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
                Ok(EncodedBatch(bytes::Bytes::copy_from_slice(v)))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Self::Value, E> {
                Ok(EncodedBatch(v.into()))
            }
        }
        deserializer.deserialize_byte_buf(BytesVisitor)
    }
}

/// A change to the replicated state. Validated before it is proposed; `apply` re-checks only
/// what depends on state (existence, compare-and-set). New variants go at the end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Create or replace a service.
    RegisterService {
        /// The service as the client sent it (validated).
        service: Service,
        /// Compare-and-set guard; see [`check_revision`](crate::store::check_revision).
        expected_revision: Option<u64>,
    },
    /// Remove a service and, with it, its endpoints.
    DeregisterService {
        /// Namespace of the service.
        namespace: String,
        /// Name of the service.
        name: String,
        /// Compare-and-set guard.
        expected_revision: Option<u64>,
    },
    /// Create or replace an endpoint of an existing service.
    UpsertEndpoint {
        /// The endpoint as the client sent it (validated).
        endpoint: Endpoint,
        /// Compare-and-set guard.
        expected_revision: Option<u64>,
        /// The client set no health: keep the current one (re-registration must not reset
        /// checks), or for a new endpoint use the service's `HealthCheck.initialStatus`.
        keep_health: bool,
    },
    /// Remove one endpoint.
    RemoveEndpoint {
        /// Namespace of the service.
        namespace: String,
        /// Service the endpoint belongs to.
        service: String,
        /// Endpoint id.
        id: String,
        /// Compare-and-set guard.
        expected_revision: Option<u64>,
    },
    /// Create or replace a typed config object.
    PutConfig {
        /// Namespace of the object.
        namespace: String,
        /// Name of the object (the service it applies to).
        name: String,
        /// The typed spec (validated); its kind is part of the key.
        spec: ConfigSpec,
        /// Compare-and-set guard.
        expected_revision: Option<u64>,
    },
    /// Remove a typed config object.
    DeleteConfig {
        /// Which kind of object.
        kind: ConfigKind,
        /// Namespace of the object.
        namespace: String,
        /// Name of the object.
        name: String,
        /// Compare-and-set guard.
        expected_revision: Option<u64>,
    },
    /// A new leader claims health probing for its term. Results proposed under an older
    /// term are refused from then on, so a deposed leader's probes never land.
    ClaimProber {
        /// The claiming leader's Raft term.
        term: u64,
    },
    /// Health transitions (and removals of endpoints unhealthy past `deregisterAfter`)
    /// observed by the prober of `term`, batched per tick.
    ApplyHealth {
        /// Term of the prober that observed them; must be the current claim.
        term: u64,
        /// Status changes.
        transitions: Vec<HealthTransition>,
        /// Endpoints to deregister.
        removals: Vec<EndpointRemoval>,
    },
}

/// One observed health change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthTransition {
    /// Namespace of the service.
    pub namespace: String,
    /// Service of the endpoint.
    pub service: String,
    /// Endpoint id.
    pub id: String,
    /// The new status.
    pub status: HealthStatus,
    /// Why (`HTTP 503`, `connect refused`, `timeout after 1s`, `TTL expired`, …).
    pub reason: String,
    /// When the prober decided, in Unix milliseconds.
    pub at_ms: u64,
}

/// One endpoint to remove after staying unhealthy too long.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointRemoval {
    /// Namespace of the service.
    pub namespace: String,
    /// Service of the endpoint.
    pub service: String,
    /// Endpoint id.
    pub id: String,
    /// The endpoint's health `since_ms` the prober saw; if it changed since, the removal
    /// is skipped (the endpoint recovered or was re-registered).
    pub unhealthy_since_ms: u64,
}

impl Command {
    /// Short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Command::RegisterService { .. } => "RegisterService",
            Command::DeregisterService { .. } => "DeregisterService",
            Command::UpsertEndpoint { .. } => "UpsertEndpoint",
            Command::RemoveEndpoint { .. } => "RemoveEndpoint",
            Command::PutConfig { .. } => "PutConfig",
            Command::DeleteConfig { .. } => "DeleteConfig",
            Command::ClaimProber { .. } => "ClaimProber",
            Command::ApplyHealth { .. } => "ApplyHealth",
        }
    }
}

/// What applying a command produced; identical on every replica.
pub type CommandResult = Result<Applied, ApplyError>;

/// What applying one entry produced: for each of its commands, in order, the store revision
/// after it and its result. Empty for blank and membership entries.
pub type EntryResults = Vec<(u64, CommandResult)>;

/// The successful outcome of a command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Applied {
    /// Nothing to report (blank and membership entries).
    Nothing,
    /// The service after the change (or before it, for a deregistration).
    Service {
        /// The stored service.
        service: Stored<Service>,
        /// Endpoints removed along with a deregistered service.
        endpoints_removed: u32,
    },
    /// The endpoint after the change (or before it, for a removal).
    Endpoint(Stored<Endpoint>),
    /// The config object after the change (or before it, for a deletion).
    Config(StoredConfig),
    /// Health applied: how many transitions and removals took effect (stale ones are
    /// skipped).
    Health {
        /// Transitions applied.
        transitions: u32,
        /// Endpoints removed.
        removals: u32,
    },
}

/// Why a command changed nothing. Deterministic: every replica reaches the same one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ApplyError {
    /// The object a command names does not exist.
    #[error("{kind} {key} not found")]
    NotFound {
        /// Kind of object.
        kind: String,
        /// `namespace/name` style key.
        key: String,
    },
    /// A compare-and-set guard did not hold.
    #[error("{kind} {key}: expected revision {expected}, current revision is {current}")]
    RevisionMismatch {
        /// Kind of object.
        kind: String,
        /// `namespace/name` style key.
        key: String,
        /// What the client expected.
        expected: u64,
        /// The object's current `mod_revision` (0 when it does not exist).
        current: u64,
    },
    /// A precondition on other state failed (for example an endpoint of an unknown service).
    #[error("{0}")]
    FailedPrecondition(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::codec;

    fn commands(n: u64) -> Vec<Command> {
        (0..n)
            .map(|i| Command::DeregisterService {
                namespace: "default".to_string(),
                name: format!("svc-{i}"),
                expected_revision: (i % 2 == 0).then_some(i),
            })
            .collect()
    }

    #[test]
    fn a_joined_batch_is_the_encoding_of_the_command_vector() {
        // 300 needs a multi-byte count, 0 and 1 the shortest.
        for n in [0, 1, 7, 300] {
            let commands = commands(n);
            let one_by_one: Vec<bytes::Bytes> = commands
                .iter()
                .map(|c| codec::encode(c).unwrap().into())
                .collect();
            let joined = EncodedBatch::join(&one_by_one).unwrap();
            assert_eq!(
                joined.0.as_ref(),
                codec::encode(&commands).unwrap().as_slice()
            );
            assert_eq!(joined.decode().unwrap(), commands);
        }
    }

    #[test]
    fn encoded_and_older_proposals_decode_to_the_same_commands() {
        let commands = commands(3);
        let encoded: Vec<bytes::Bytes> = commands
            .iter()
            .map(|c| codec::encode(c).unwrap().into())
            .collect();
        let proposal = Proposal::encoded(EncodedBatch::join(&encoded).unwrap());
        let bytes = codec::encode(&proposal).unwrap();
        let owned: Proposal = codec::decode(&bytes).unwrap();
        let borrowed: Proposal = codec::decode_borrowed(&bytes).unwrap();
        assert_eq!(owned, proposal);
        assert_eq!(borrowed, proposal);
        assert_eq!(owned.command.into_commands().unwrap(), commands);

        // Entries written by earlier versions still apply.
        let older = Proposal {
            proposed_at_ms: 1,
            command: VersionedCommand::Batch(commands.clone()),
        };
        let older: Proposal = codec::decode(&codec::encode(&older).unwrap()).unwrap();
        assert_eq!(older.command.into_commands().unwrap(), commands);
    }

    #[test]
    fn a_corrupt_batch_is_an_error_not_a_panic() {
        let batch = EncodedBatch(bytes::Bytes::from_static(&[5, 0, 1]));
        assert!(batch.decode().is_err());
        assert!(VersionedCommand::Encoded(batch).into_commands().is_err());
    }
}
