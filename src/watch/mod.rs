//! The watch hub: revisioned change events from the applied state, a bounded history,
//! and bounded per-watcher queues, served by every node from its own state.

pub mod events;
pub mod filter;
pub mod hub;
pub mod many;
pub mod stream;
pub mod wire;

pub use filter::{ObjectMeta, WatchFilter, WatchKind};
pub use hub::{HubConfig, WatchHub};
