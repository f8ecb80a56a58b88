//! The ADS server (xDS v3), state-of-the-world and delta, served by every node from its
//! own applied state.
//!
//! Per stream and type it tracks what the proxy subscribed to, what was sent (version,
//! nonce) and what it ACKed or NACKed. Versions derive from the store revision, which is
//! the same on every node, so a proxy that reconnects elsewhere is not re-pushed what it
//! has. Pushes follow the state after a short debounce, in CDS, EDS, LDS, RDS order; a
//! cluster or assignment that disappears is kept until the proxy has ACKed the listeners
//! and routes that stop using it (make-before-break). A NACK leaves the proxy on its last
//! good config; the same content is not re-sent.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryService;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::google::protobuf::Any;
use futures::Stream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::cache::{resource_version, Built, SnapshotCache};
use super::identity::identity;
use super::registry::{ProxyRecord, ProxyRegistry};
use super::translate::{ProxyIdentity, CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE};
use super::{short_type, PUSH_ORDER};
use crate::raft::state_machine::AppliedState;
use crate::telemetry::Metrics;

/// Shared by every stream on a node.
#[derive(Clone)]
pub struct AdsServer {
    /// Snapshots per identity.
    pub cache: SnapshotCache,
    /// Revision notifications.
    pub applied: AppliedState,
    /// Connected proxies.
    pub registry: Arc<ProxyRegistry>,
    /// Metrics.
    pub metrics: Metrics,
    /// How long to wait after a change for more changes before pushing.
    pub debounce: Duration,
    /// This node's id (for status).
    pub node_id: u64,
}

fn is_wildcard_type(type_url: &str) -> bool {
    type_url == CLUSTER_TYPE || type_url == LISTENER_TYPE
}

/// What one stream knows about one type.
#[derive(Debug, Default)]
struct TypeState {
    /// Subscribed names; ignored when `wildcard`.
    names: BTreeSet<String>,
    /// Everything of the type.
    wildcard: bool,
    /// Version and nonce of the last response.
    sent_version: String,
    sent_nonce: String,
    /// When the last response was sent (for ACK latency).
    sent_at: Option<Instant>,
    /// Name → version of what the proxy has (as far as we know).
    sent: BTreeMap<String, String>,
    /// The proxy ACKed the last response.
    acked: bool,
    /// Kept past their removal from the state until listeners and routes are ACKed.
    retained: BTreeMap<String, Any>,
    /// Digest of the type's versions when this stream last compared them, if nothing
    /// about its selection changed since: a quick "nothing new for this type".
    compared_digest: Option<u64>,
}

impl TypeState {
    fn selected(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }
}

/// Per-stream state, shared by both protocol variants.
struct Session {
    server: AdsServer,
    stream_id: u64,
    identity: Option<ProxyIdentity>,
    types: HashMap<String, TypeState>,
    built: Option<Built>,
    nonce: u64,
    /// When the state changed and a push is due (debounced).
    dirty_since: Option<Instant>,
    /// Revision applied → when we noticed (for push latency).
    changed_at: Option<Instant>,
}

impl Session {
    fn new(server: AdsServer, stream: &'static str) -> Self {
        let stream_id = server.registry.open(ProxyRecord {
            stream,
            connected_at_ms: crate::api::now_ms(),
            ..Default::default()
        });
        server
            .metrics
            .xds_streams
            .with_label_values(&[stream])
            .inc();
        Self {
            server,
            stream_id,
            identity: None,
            types: HashMap::new(),
            built: None,
            nonce: 0,
            dirty_since: None,
            changed_at: None,
        }
    }

    async fn set_node(
        &mut self,
        node: Option<&envoy_types::pb::envoy::config::core::v3::Node>,
    ) -> Result<(), Status> {
        if self.identity.is_some() {
            return Ok(());
        }
        let node = node.ok_or_else(|| {
            Status::invalid_argument("node: required on the first request of a stream")
        })?;
        let id = identity(node).map_err(Status::invalid_argument)?;
        self.server.registry.update(self.stream_id, |r| {
            r.node_id = node.id.clone();
            r.cluster = node.cluster.clone();
        });
        self.identity = Some(id);
        self.refresh().await?;
        Ok(())
    }

    async fn refresh(&mut self) -> Result<(), Status> {
        let Some(identity) = &self.identity else {
            return Ok(());
        };
        let built = self
            .server
            .cache
            .get(identity)
            .await
            .map_err(Status::failed_precondition)?;
        self.built = Some(built);
        Ok(())
    }

    fn next_nonce(&mut self) -> String {
        self.nonce += 1;
        self.nonce.to_string()
    }

    fn version(&self) -> String {
        self.built.as_ref().map_or(0, |b| b.revision).to_string()
    }

    /// Resources of `type_url` the proxy should have now: the selected ones from the
    /// snapshot, plus retained ones.
    fn desired(&self, type_url: &str) -> BTreeMap<String, Any> {
        let Some(ts) = self.types.get(type_url) else {
            return BTreeMap::new();
        };
        let mut out: BTreeMap<String, Any> = self
            .built
            .as_ref()
            .and_then(|b| b.snapshot.of_type(type_url))
            .map(|all| {
                all.iter()
                    .filter(|(name, _)| ts.selected(name))
                    .map(|(n, a)| (n.clone(), a.clone()))
                    .collect()
            })
            .unwrap_or_default();
        for (name, any) in &ts.retained {
            out.entry(name.clone()).or_insert_with(|| any.clone());
        }
        out
    }

    /// Whether the type cannot have changed for this stream since it last compared.
    fn unchanged(&self, type_url: &str) -> bool {
        let digest = self
            .built
            .as_ref()
            .and_then(|b| b.digests.get(type_url).copied());
        self.types.get(type_url).is_some_and(|ts| {
            ts.retained.is_empty() && digest.is_some() && ts.compared_digest == digest
        })
    }

    fn mark_compared(&mut self, type_url: &str) {
        let digest = self
            .built
            .as_ref()
            .and_then(|b| b.digests.get(type_url).copied());
        if let Some(ts) = self.types.get_mut(type_url) {
            ts.compared_digest = digest;
        }
    }

    /// Name → version of what the proxy should have (precomputed per snapshot).
    fn desired_versions(&self, type_url: &str) -> BTreeMap<String, String> {
        let Some(ts) = self.types.get(type_url) else {
            return BTreeMap::new();
        };
        let mut out: BTreeMap<String, String> = self
            .built
            .as_ref()
            .and_then(|b| b.versions.get(type_url))
            .map(|all| {
                all.iter()
                    .filter(|(name, _)| ts.selected(name))
                    .map(|(n, v)| (n.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default();
        for (name, any) in &ts.retained {
            out.entry(name.clone())
                .or_insert_with(|| resource_version(any));
        }
        out
    }

    /// One resource the proxy should have, by name.
    fn resource(&self, type_url: &str, name: &str) -> Option<Any> {
        self.built
            .as_ref()
            .and_then(|b| b.snapshot.of_type(type_url))
            .and_then(|r| r.get(name))
            .or_else(|| {
                self.types
                    .get(type_url)
                    .and_then(|ts| ts.retained.get(name))
            })
            .cloned()
    }

    /// Before pushing a new snapshot: clusters and assignments the proxy has that the new
    /// state drops are retained until listeners and routes catch up.
    fn retain_removed(&mut self, previous: Option<&Built>) {
        let Some(previous) = previous else { return };
        let Some(built) = self.built.clone() else {
            return;
        };
        for type_url in [CLUSTER_TYPE, ENDPOINT_TYPE] {
            let Some(current) = built.snapshot.of_type(type_url) else {
                continue;
            };
            let Some(old) = previous.snapshot.of_type(type_url) else {
                continue;
            };
            let Some(ts) = self.types.get_mut(type_url) else {
                continue;
            };
            for name in ts.sent.keys() {
                if !current.contains_key(name) {
                    if let Some(any) = old.get(name) {
                        ts.retained.insert(name.clone(), any.clone());
                    }
                }
            }
        }
    }

    /// Retained resources can go once listeners and routes are ACKed.
    fn release_retained(&mut self) -> bool {
        let settled = [LISTENER_TYPE, ROUTE_TYPE].iter().all(|t| {
            self.types
                .get(*t)
                .is_none_or(|ts| ts.acked || ts.sent_nonce.is_empty())
        });
        let mut released = false;
        if settled {
            for type_url in [CLUSTER_TYPE, ENDPOINT_TYPE] {
                if let Some(ts) = self.types.get_mut(type_url) {
                    if !ts.retained.is_empty() {
                        ts.retained.clear();
                        ts.compared_digest = None;
                        released = true;
                    }
                }
            }
        }
        released
    }

    /// Bookkeeping after a response went out: what the proxy now awaits an ACK for.
    fn mark_sent(&mut self, type_url: &str, version: String, nonce: String, count: usize) {
        let ts = self.types.entry(type_url.to_string()).or_default();
        ts.sent_version = version.clone();
        ts.sent_nonce = nonce.clone();
        ts.sent_at = Some(Instant::now());
        ts.acked = false;
        self.record_sent(type_url, &version, &nonce, count);
    }

    /// Moves to the current snapshot; false when there is nothing new to push. Clusters
    /// and assignments the new snapshot drops are retained (make-before-break).
    async fn advance(&mut self) -> bool {
        let previous = self.built.clone();
        if self.refresh().await.is_err() {
            return false;
        }
        if previous.as_ref().map(|b| b.revision) == self.built.as_ref().map(|b| b.revision) {
            return false;
        }
        self.retain_removed(previous.as_ref());
        true
    }

    fn record_sent(&mut self, type_url: &str, version: &str, nonce: &str, count: usize) {
        let short = short_type(type_url);
        self.server
            .metrics
            .xds_pushes
            .with_label_values(&[short])
            .inc();
        if let Some(at) = self.changed_at {
            self.server
                .metrics
                .xds_push_latency
                .observe(at.elapsed().as_secs_f64());
        }
        let (version, nonce) = (version.to_string(), nonce.to_string());
        self.server.registry.update(self.stream_id, |r| {
            let t = r.types.entry(short).or_default();
            t.sent_version = version;
            t.resources = count as u32;
            let _ = nonce;
        });
    }

    /// Handles ACK/NACK bookkeeping of a request; returns false for a stale nonce.
    fn on_reply(
        &mut self,
        type_url: &str,
        nonce: &str,
        version: &str,
        error: Option<String>,
    ) -> bool {
        let short = short_type(type_url);
        let Some(ts) = self.types.get_mut(type_url) else {
            return true;
        };
        if !nonce.is_empty() && nonce != ts.sent_nonce {
            // Normal in operation (a reply to an older response): ignore it.
            return false;
        }
        if nonce.is_empty() {
            return true;
        }
        let registry = self.server.registry.clone();
        match error {
            Some(message) => {
                ts.acked = false;
                self.server
                    .metrics
                    .xds_nacks
                    .with_label_values(&[short])
                    .inc();
                tracing::warn!(r#type = short, %message, "proxy rejected an xDS response; it keeps its last good config");
                registry.update(self.stream_id, |r| {
                    r.types.entry(short).or_default().last_nack = message
                });
            }
            None => {
                ts.acked = true;
                if let Some(at) = ts.sent_at.take() {
                    self.server
                        .metrics
                        .xds_ack_latency
                        .observe(at.elapsed().as_secs_f64());
                }
                let version = version.to_string();
                registry.update(self.stream_id, |r| {
                    r.types.entry(short).or_default().acked_version = version
                });
            }
        }
        true
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.server.registry.close(self.stream_id);
    }
}

// ---------------------------------------------------------------- state of the world

impl Session {
    /// Sends the type if what the proxy should have differs from what it was sent.
    async fn push_sotw(
        &mut self,
        type_url: &str,
        force: bool,
        tx: &mpsc::Sender<Result<DiscoveryResponse, Status>>,
    ) -> Result<(), ()> {
        let versions = self.desired_versions(type_url);
        let Some(ts) = self.types.get(type_url) else {
            return Ok(());
        };
        if !force && versions == ts.sent && !ts.sent_nonce.is_empty() {
            return Ok(());
        }
        let desired = self.desired(type_url);
        let version = self.version();
        let nonce = self.next_nonce();
        let count = desired.len();
        let response = DiscoveryResponse {
            version_info: version.clone(),
            resources: desired.into_values().collect(),
            type_url: type_url.to_string(),
            nonce: nonce.clone(),
            ..Default::default()
        };
        if tx.send(Ok(response)).await.is_err() {
            return Err(());
        }
        self.types.entry(type_url.to_string()).or_default().sent = versions;
        self.mark_sent(type_url, version, nonce, count);
        Ok(())
    }

    async fn on_sotw_request(
        &mut self,
        r: DiscoveryRequest,
        tx: &mpsc::Sender<Result<DiscoveryResponse, Status>>,
    ) -> Result<(), Status> {
        self.set_node(r.node.as_ref()).await?;
        if !PUSH_ORDER.contains(&r.type_url.as_str()) {
            return Ok(()); // a type we do not serve: leave the proxy waiting on it
        }
        let first = !self.types.contains_key(&r.type_url);
        let error = r.error_detail.as_ref().map(|e| e.message.clone());
        self.types.entry(r.type_url.clone()).or_default();
        if !self.on_reply(
            &r.type_url,
            &r.response_nonce,
            &r.version_info,
            error.clone(),
        ) {
            return Ok(());
        }
        let names: BTreeSet<String> = r.resource_names.iter().cloned().collect();
        let ts = self.types.entry(r.type_url.clone()).or_default();
        let wildcard = is_wildcard_type(&r.type_url) && (names.is_empty() || names.contains("*"));
        let changed = first || ts.names != names || ts.wildcard != wildcard;
        ts.names = names;
        ts.wildcard = wildcard;
        if error.is_some() {
            return Ok(()); // a NACK: never re-send the same content in a loop
        }
        if first && !r.version_info.is_empty() && r.version_info == self.version() {
            // Reconnected at the same revision (versions are the same on every node): the
            // proxy already has exactly this; remember it instead of re-pushing.
            let desired = self.desired(&r.type_url);
            let ts = self.types.entry(r.type_url.clone()).or_default();
            ts.sent = desired
                .iter()
                .map(|(n, a)| (n.clone(), resource_version(a)))
                .collect();
            ts.sent_version = r.version_info.clone();
            ts.acked = true;
            return Ok(());
        }
        if changed {
            self.push_sotw(&r.type_url, true, tx)
                .await
                .map_err(|_| Status::cancelled("stream closed"))?;
        }
        if self.release_retained() {
            for t in [CLUSTER_TYPE, ENDPOINT_TYPE] {
                self.push_sotw(t, false, tx)
                    .await
                    .map_err(|_| Status::cancelled("stream closed"))?;
            }
        }
        Ok(())
    }

    async fn on_state_change_sotw(
        &mut self,
        tx: &mpsc::Sender<Result<DiscoveryResponse, Status>>,
    ) -> Result<(), ()> {
        if !self.advance().await {
            return Ok(());
        }
        for type_url in PUSH_ORDER {
            self.push_sotw(type_url, false, tx).await?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- delta

impl Session {
    async fn push_delta(
        &mut self,
        type_url: &str,
        tx: &mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    ) -> Result<(), ()> {
        if self.unchanged(type_url) {
            return Ok(());
        }
        // Compare against the snapshot's precomputed versions without copying them: with
        // thousands of streams, only the changed names may cost anything per stream.
        let built = self.built.clone();
        let Some(ts) = self.types.get(type_url) else {
            return Ok(());
        };
        let empty = BTreeMap::new();
        let current = built
            .as_ref()
            .and_then(|b| b.versions.get(type_url))
            .unwrap_or(&empty);
        let mut changed: Vec<(String, String)> = current
            .iter()
            .filter(|(name, version)| ts.selected(name) && ts.sent.get(*name) != Some(*version))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        for (name, any) in &ts.retained {
            if !current.contains_key(name) {
                let version = resource_version(any);
                if ts.sent.get(name) != Some(&version) {
                    changed.push((name.clone(), version));
                }
            }
        }
        let removed: Vec<String> = ts
            .sent
            .keys()
            .filter(|n| {
                let wanted = ts.selected(n) && current.contains_key(*n);
                !(wanted || ts.retained.contains_key(*n))
            })
            .cloned()
            .collect();
        if changed.is_empty() && removed.is_empty() {
            self.mark_compared(type_url);
            return Ok(());
        }
        let updates: Vec<(String, String)> = changed.clone();
        let resources: Vec<Resource> = changed
            .into_iter()
            .filter_map(|(name, version)| {
                let any = self.resource(type_url, &name)?;
                Some(Resource {
                    name,
                    version,
                    resource: Some(any),
                    ..Default::default()
                })
            })
            .collect();
        let nonce = self.next_nonce();
        let version = self.version();
        let response = DeltaDiscoveryResponse {
            system_version_info: version.clone(),
            resources,
            type_url: type_url.to_string(),
            removed_resources: removed.clone(),
            nonce: nonce.clone(),
            ..Default::default()
        };
        let removed_names = removed;
        if tx.send(Ok(response)).await.is_err() {
            return Err(());
        }
        let ts = self.types.entry(type_url.to_string()).or_default();
        for (name, v) in updates {
            ts.sent.insert(name, v);
        }
        for name in &removed_names {
            ts.sent.remove(name);
        }
        let retained_now = !ts.retained.is_empty();
        let count = ts.sent.len();
        self.mark_sent(type_url, version, nonce, count);
        if !retained_now {
            self.mark_compared(type_url);
        }
        Ok(())
    }

    async fn on_delta_request(
        &mut self,
        r: DeltaDiscoveryRequest,
        tx: &mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    ) -> Result<(), Status> {
        self.set_node(r.node.as_ref()).await?;
        if !PUSH_ORDER.contains(&r.type_url.as_str()) {
            return Ok(());
        }
        let first = !self.types.contains_key(&r.type_url);
        let error = r.error_detail.as_ref().map(|e| e.message.clone());
        self.types.entry(r.type_url.clone()).or_default();
        if !self.on_reply(&r.type_url, &r.response_nonce, "", error.clone()) {
            return Ok(());
        }
        let ts = self.types.entry(r.type_url.clone()).or_default();
        if first {
            // An empty first subscription (or "*") on CDS/LDS means everything.
            ts.wildcard = is_wildcard_type(&r.type_url)
                && (r.resource_names_subscribe.is_empty()
                    || r.resource_names_subscribe.iter().any(|n| n == "*"));
            // After a reconnect the proxy says what it has: nothing it has is re-sent.
            ts.sent = r.initial_resource_versions.clone().into_iter().collect();
        }
        for name in &r.resource_names_subscribe {
            if name != "*" {
                ts.names.insert(name.clone());
            }
        }
        for name in &r.resource_names_unsubscribe {
            if name == "*" {
                ts.wildcard = false;
            }
            ts.names.remove(name);
            ts.sent.remove(name);
        }
        // The selection may have changed: compare everything on the next push.
        ts.compared_digest = None;
        if error.is_some() {
            return Ok(());
        }
        self.push_delta(&r.type_url, tx)
            .await
            .map_err(|_| Status::cancelled("stream closed"))?;
        if self.release_retained() {
            for t in [CLUSTER_TYPE, ENDPOINT_TYPE] {
                self.push_delta(t, tx)
                    .await
                    .map_err(|_| Status::cancelled("stream closed"))?;
            }
        }
        Ok(())
    }

    async fn on_state_change_delta(
        &mut self,
        tx: &mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    ) -> Result<(), ()> {
        if !self.advance().await {
            return Ok(());
        }
        for type_url in PUSH_ORDER {
            self.push_delta(type_url, tx).await?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- stream loops

type SotwStream = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;
type DeltaStream = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

/// Responses buffered per stream; a proxy that stops reading stalls only its own stream.
const STREAM_BUFFER: usize = 16;

/// The two protocol variants share one stream loop.
trait Variant: Send + 'static {
    type Request: Send + 'static;
    type Response: Send + 'static;
    /// `sotw` or `delta`, for status and metrics.
    const NAME: &'static str;
    fn on_request(
        session: &mut Session,
        request: Self::Request,
        tx: &mpsc::Sender<Result<Self::Response, Status>>,
    ) -> impl std::future::Future<Output = Result<(), Status>> + Send;
    fn on_change(
        session: &mut Session,
        tx: &mpsc::Sender<Result<Self::Response, Status>>,
    ) -> impl std::future::Future<Output = Result<(), ()>> + Send;
}

struct Sotw;
struct Delta;

impl Variant for Sotw {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;
    const NAME: &'static str = "sotw";
    async fn on_request(
        session: &mut Session,
        request: DiscoveryRequest,
        tx: &mpsc::Sender<Result<DiscoveryResponse, Status>>,
    ) -> Result<(), Status> {
        session.on_sotw_request(request, tx).await
    }
    async fn on_change(
        session: &mut Session,
        tx: &mpsc::Sender<Result<DiscoveryResponse, Status>>,
    ) -> Result<(), ()> {
        session.on_state_change_sotw(tx).await
    }
}

impl Variant for Delta {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;
    const NAME: &'static str = "delta";
    async fn on_request(
        session: &mut Session,
        request: DeltaDiscoveryRequest,
        tx: &mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    ) -> Result<(), Status> {
        session.on_delta_request(request, tx).await
    }
    async fn on_change(
        session: &mut Session,
        tx: &mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    ) -> Result<(), ()> {
        session.on_state_change_delta(tx).await
    }
}

impl AdsServer {
    /// Runs one stream: requests as they come, and pushes after each debounced change.
    fn serve<V: Variant>(
        &self,
        mut requests: Streaming<V::Request>,
    ) -> ReceiverStream<Result<V::Response, Status>>
    where
        Streaming<V::Request>: Send,
    {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let server = self.clone();
        tokio::spawn(async move {
            let mut session = Session::new(server.clone(), V::NAME);
            let mut revisions = server.applied.subscribe();
            loop {
                let deadline = session.dirty_since.map(|t| t + server.debounce);
                tokio::select! {
                    message = requests.message() => match message {
                        Ok(Some(r)) => {
                            if let Err(status) = V::on_request(&mut session, r, &tx).await {
                                let _ = tx.send(Err(status)).await;
                                break;
                            }
                        }
                        _ => break,
                    },
                    changed = revisions.changed() => {
                        if changed.is_err() { break; }
                        if session.dirty_since.is_none() {
                            session.dirty_since = Some(Instant::now());
                            session.changed_at = Some(Instant::now());
                        }
                    }
                    _ = tokio::time::sleep_until(deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))), if deadline.is_some() => {
                        session.dirty_since = None;
                        if V::on_change(&mut session, &tx).await.is_err() { break; }
                        session.changed_at = None;
                    }
                }
            }
            server
                .metrics
                .xds_streams
                .with_label_values(&[V::NAME])
                .dec();
        });
        ReceiverStream::new(rx)
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsServer {
    type StreamAggregatedResourcesStream = SotwStream;
    type DeltaAggregatedResourcesStream = DeltaStream;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        Ok(Response::new(Box::pin(
            self.serve::<Sotw>(request.into_inner()),
        )))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Ok(Response::new(Box::pin(
            self.serve::<Delta>(request.into_inner()),
        )))
    }
}
