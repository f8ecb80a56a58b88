//! Bowline: a highly available service mesh control plane.
//!
//! Three or more nodes replicate a service registry and a config store through a Raft log
//! (openraft) persisted in sled. Every node serves reads; writes go through the leader.
//!
//! # Layout
//!
//! - [`model`]: domain types (services, endpoints, config objects) and validation; no I/O.
//! - [`command`]: the versioned commands stored in the Raft log.
//! - [`store`]: the pure, deterministic `apply(index, command)` and in-memory indexes.
//! - [`raft`]: openraft types, the segment-file log store, the in-memory state machine, the peer
//!   network, and [`raft::consensus::Consensus`], the one door to Raft (forwarding, read index).
//! - [`api`]: thin tonic services and the single error → status table.
//! - [`admin`]: the HTTP admin listener (metrics, health, readiness).
//! - [`app`]: wiring of one node and its shutdown.
//! - [`client`]: a Rust client with endpoint failover, used by the CLI and the tests.
//! - [`cli`]: the `bowline` command line.
//! - [`bench`]: `bowline bench` suites.
//! - [`watch`]: the watch hub, filters, pre-encoded events and watch streams.
//! - [`telemetry`]: metrics registry and logging.
//! - [`transport`]: server connections that coalesce HTTP/2 writes.
//! - [`proto`]: generated gRPC code.

pub mod admin;
pub mod api;
pub mod app;
pub mod bench;
pub mod cli;
pub mod client;
pub mod command;
pub mod health;
pub mod jepsen;
pub mod model;
pub mod proto;
pub mod raft;
pub mod runtime;
pub mod store;
pub mod telemetry;
pub mod transport;
pub mod watch;
pub mod xds;
