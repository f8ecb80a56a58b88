//! Heartbeats of TTL endpoints. They are not written to the Raft log: the leader keeps the
//! last heartbeat per endpoint in memory and commits only the transitions they cause.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::time::Instant;

use crate::store::EndpointKey;

/// Last heartbeat per endpoint, on the node that receives them (the leader).
#[derive(Debug, Default)]
pub struct HeartbeatTable {
    /// Endpoint → when its last heartbeat arrived. Short critical sections only.
    last: Mutex<HashMap<EndpointKey, Instant>>,
}

impl HeartbeatTable {
    /// Records a heartbeat now.
    pub fn beat(&self, key: EndpointKey) {
        self.last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, Instant::now());
    }

    /// When the endpoint last sent a heartbeat here.
    pub fn last(&self, key: &EndpointKey) -> Option<Instant> {
        self.last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .copied()
    }

    /// Forgets endpoints that no longer exist.
    pub fn retain(&self, keep: impl Fn(&EndpointKey) -> bool) {
        self.last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k, _| keep(k));
    }
}
