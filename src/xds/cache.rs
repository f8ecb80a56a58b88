//! Per-identity snapshots, built whole from one revision of the applied state, checked for
//! consistency before they are served, and shared by every stream with the same identity.

use std::collections::{BTreeMap, HashMap};
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
    /// Type URL → name → resource version (a hash of its bytes), computed once per
    /// snapshot rather than once per stream.
    pub versions: Arc<HashMap<String, BTreeMap<String, String>>>,
    /// Type URL → digest of all its versions: streams skip a type whose digest is what they
    /// last pushed.
    pub digests: Arc<HashMap<String, u64>>,
}

fn digests_of(versions: &HashMap<String, BTreeMap<String, String>>) -> HashMap<String, u64> {
    use std::hash::{Hash, Hasher};
    versions
        .iter()
        .map(|(t, v)| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            v.hash(&mut h);
            (t.clone(), h.finish())
        })
        .collect()
}

/// A resource's version: a hash of its type and bytes, the same on every node.
pub fn resource_version(any: &envoy_types::pb::google::protobuf::Any) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    any.type_url.hash(&mut h);
    any.value.hash(&mut h);
    format!("{:016x}", h.finish())
}

fn versions_of(snapshot: &XdsSnapshot) -> HashMap<String, BTreeMap<String, String>> {
    super::PUSH_ORDER
        .iter()
        .map(|t| {
            let versions = snapshot
                .of_type(t)
                .map(|r| {
                    r.iter()
                        .map(|(n, a)| (n.clone(), resource_version(a)))
                        .collect()
                })
                .unwrap_or_default();
            (t.to_string(), versions)
        })
        .collect()
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
    /// One translation at a time: a change wakes every stream at once, and all but the
    /// first should wait for its result rather than translate the same state again.
    build_lock: Arc<tokio::sync::Mutex<()>>,
}

/// The part of an identity that changes the translation: sidecars without an inbound
/// listener all get the same config, whatever service they front.
fn cache_key(identity: &ProxyIdentity) -> String {
    match &identity.kind {
        super::translate::ProxyKind::Sidecar {
            outbound_port,
            inbound: None,
        } => {
            format!(
                "sidecar/{}/{outbound_port}/{:?}",
                identity.namespace, identity.region
            )
        }
        _ => format!("{identity:?}"),
    }
}

impl SnapshotCache {
    /// A cache over `applied`.
    pub fn new(applied: AppliedState, metrics: Metrics) -> Self {
        Self {
            applied,
            built: Arc::default(),
            metrics,
            build_lock: Arc::default(),
        }
    }

    /// The snapshot for `identity` at the current revision; if the current state cannot be
    /// translated consistently, the last good one (the proxy stays on it) or an error.
    pub async fn get(&self, identity: &ProxyIdentity) -> Result<Built, String> {
        let key = cache_key(identity);
        let cached = |revision: u64| {
            self.built
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&key)
                .filter(|b| b.revision == revision)
                .cloned()
        };
        let revision = self.applied.read(|_, revision| revision);
        if let Some(b) = cached(revision) {
            return Ok(b);
        }
        let _building = self.build_lock.lock().await;
        let revision = self.applied.read(|_, revision| revision);
        if let Some(b) = cached(revision) {
            return Ok(b);
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
                let versions = versions_of(&snapshot);
                let b = Built {
                    revision,
                    digests: Arc::new(digests_of(&versions)),
                    versions: Arc::new(versions),
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
