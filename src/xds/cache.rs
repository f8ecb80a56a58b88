//! Per-identity snapshots, built whole from one revision of the applied state, checked for
//! consistency before they are served, and shared by every stream with the same identity.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::translate::{check_consistency, translate, ProxyIdentity, XdsSnapshot};
use crate::raft::state_machine::AppliedState;
use crate::telemetry::Metrics;

/// A snapshot and the store revision it was built from.
#[derive(Debug, Clone)]
pub struct Built {
    /// Store revision.
    pub revision: u64,
    /// The resources.
    pub snapshot: Arc<XdsSnapshot>,
}

/// The cache. Cheap to clone.
#[derive(Clone)]
pub struct SnapshotCache {
    /// Where the state comes from.
    applied: AppliedState,
    /// Last good snapshot per identity (keyed by its Debug form).
    built: Arc<Mutex<HashMap<String, Built>>>,
    /// Build failures are counted.
    metrics: Metrics,
}

impl SnapshotCache {
    /// A cache over `applied`.
    pub fn new(applied: AppliedState, metrics: Metrics) -> Self {
        Self {
            applied,
            built: Arc::default(),
            metrics,
        }
    }

    /// The snapshot for `identity` at the current revision; if the current state cannot be
    /// translated consistently, the last good one (the proxy stays on it) or an error.
    pub fn get(&self, identity: &ProxyIdentity) -> Result<Built, String> {
        let key = format!("{identity:?}");
        let revision = self.applied.read(|_, revision| revision);
        if let Some(b) = self
            .built
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            if b.revision == revision {
                return Ok(b.clone());
            }
        }
        // Translation reads the state under its read lock: one revision, whole.
        let (result, revision) = self.applied.read(|state, revision| {
            (
                translate(state, identity).and_then(|s| check_consistency(&s).map(|_| s)),
                revision,
            )
        });
        let mut built = self.built.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(snapshot) => {
                let b = Built {
                    revision,
                    snapshot: Arc::new(snapshot),
                };
                built.insert(key, b.clone());
                Ok(b)
            }
            Err(e) => {
                self.metrics.xds_build_errors.inc();
                tracing::error!(error = %e, revision, "xDS snapshot rejected; proxies keep the last good config");
                built.get(&key).cloned().ok_or_else(|| e.to_string())
            }
        }
    }
}
