//! Raft plumbing: openraft type configuration, the segment-file log store, the in-memory
//! state machine (snapshots in sled), and the peer network (client and server) over tonic.

// openraft's storage traits fix `StorageError` (large) as the error type; boxing it in our
// helpers would only add conversions at every call site.
#![allow(clippy::result_large_err)]

pub mod campaign;
pub mod codec;
pub mod compaction;
pub mod consensus;
pub mod failure;
pub mod log_store;
pub mod network;
pub mod peer_server;
pub mod proposal_batch;
pub mod read_index;
pub mod read_lease;
pub mod snapshot_file;
pub mod state_machine;

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::command::{EntryResults, Proposal};

/// Raft node id.
pub type NodeId = u64;

/// What the cluster membership records about a node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddr {
    /// `host:port` of the peer listener (Raft RPC). Always set.
    pub peer_addr: String,
    /// `host:port` of the client listener; empty for members named only by `--initial-cluster`
    /// (cluster status asks their peer port).
    pub client_addr: String,
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.peer_addr)
    }
}

openraft::declare_raft_types!(
    /// Bowline's openraft type configuration.
    pub TypeConfig:
        D = Proposal,
        R = EntryResults,
        NodeId = NodeId,
        Node = NodeAddr,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The Raft handle with our types.
pub type Raft = openraft::Raft<TypeConfig>;
/// A log entry with our types.
pub type Entry = openraft::Entry<TypeConfig>;
/// A log id with our node id type.
pub type LogId = openraft::LogId<NodeId>;
/// Raft's server metrics (vote, leader, membership).
pub type ServerMetrics = openraft::metrics::RaftServerMetrics<NodeId, NodeAddr>;
/// Storage errors with our node id type.
pub type StorageError = openraft::StorageError<NodeId>;
/// Membership as stored by the state machine.
pub type StoredMembership = openraft::StoredMembership<NodeId, NodeAddr>;
