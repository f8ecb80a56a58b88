//! Leader-run health checking. Only the leader probes: it starts after a barrier and a
//! fenced `ClaimProber` for its term, stops when it loses leadership, and commits only
//! transitions (batched per tick) through the Raft log.

pub mod checker;
pub mod heartbeat;
pub mod probe;
pub mod status;
pub mod tracker;

pub use checker::HealthChecker;
pub use heartbeat::HeartbeatTable;
