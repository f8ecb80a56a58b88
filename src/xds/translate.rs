//! Pure translation of the registry state into Envoy xDS v3 resources.
//!
//! One call builds every resource a proxy needs at one revision: clusters (CDS), load
//! assignments (EDS), listeners (LDS) and route configurations (RDS). The output depends only
//! on the state and the proxy identity: maps are ordered, nothing reads a clock, so the same
//! input yields byte-identical packed resources.

use std::collections::{BTreeMap, HashMap};

use envoy_types::pb::envoy::config::cluster::v3::{
    circuit_breakers::Thresholds,
    cluster::{ClusterDiscoveryType, CommonLbConfig, DiscoveryType, EdsClusterConfig, LbPolicy},
    CircuitBreakers, Cluster, OutlierDetection as EnvoyOutlierDetection,
};
use envoy_types::pb::envoy::config::core::v3::{
    address, config_source::ConfigSourceSpecifier, socket_address, Address, AggregatedConfigSource,
    ApiVersion, ConfigSource, HealthStatus as EnvoyHealthStatus, Http2ProtocolOptions,
    Locality as EnvoyLocality, RuntimeFractionalPercent, SocketAddress,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint::HostIdentifier, ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint,
    LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::{
    filter, ApiListener, Filter, FilterChain, Listener,
};
use envoy_types::pb::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier,
    route::Action,
    route_action::{
        hash_policy::{self, PolicySpecifier},
        ClusterSpecifier, HashPolicy as EnvoyHashPolicy, MaxStreamDuration, RequestMirrorPolicy,
    },
    route_match::PathSpecifier,
    weighted_cluster::ClusterWeight,
    HeaderMatcher, RetryPolicy as EnvoyRetryPolicy, Route as EnvoyRoute, RouteAction,
    RouteConfiguration, RouteMatch as EnvoyRouteMatch, VirtualHost, WeightedCluster,
};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::{fault_delay, FaultDelay};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{
    fault_abort, FaultAbort, HttpFault,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, http_filter, HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    http_protocol_options::{
        explicit_http_config::ProtocolConfig, ExplicitHttpConfig, UpstreamProtocolOptions,
    },
    HttpProtocolOptions,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    string_matcher::MatchPattern, RegexMatcher, StringMatcher,
};
use envoy_types::pb::envoy::r#type::v3::{
    fractional_percent::DenominatorType, FractionalPercent, Percent,
};
use envoy_types::pb::google::protobuf::{Any, Duration, UInt32Value};
use envoy_types::util::pack_any;
use prost::{Message, Name};

use crate::model::config::{
    CircuitBreaker, Destination, FaultInjection, HashPolicy, HeaderMatch, Mirror, OutlierDetection,
    RetryPolicy, Route, RouteMatch,
};
use crate::model::{
    ConfigKind, ConfigSpec, DestinationPolicy, DurationSpec, Endpoint, HealthCheckSpec,
    HealthStatus, LoadBalancerPolicy, Protocol, RetryOn, Service, TrafficPolicy, DEFAULT_NAMESPACE,
};
use crate::store::RegistryState;

/// Type URL of clusters (CDS).
pub const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// Type URL of load assignments (EDS).
pub const ENDPOINT_TYPE: &str =
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
/// Type URL of listeners (LDS).
pub const LISTENER_TYPE: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
/// Type URL of route configurations (RDS).
pub const ROUTE_TYPE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";

/// Name of the sidecar's outbound listener and of its route configuration.
pub const OUTBOUND_HTTP: &str = "outbound_http";
/// Name of the sidecar's inbound listener.
pub const INBOUND_HTTP: &str = "inbound_http";
/// HTTP filter name of the fault filter (also the `typed_per_filter_config` key).
pub const FAULT_FILTER: &str = "envoy.filters.http.fault";
/// HTTP filter name of the router.
pub const ROUTER_FILTER: &str = "envoy.filters.http.router";
/// Network filter name of the HTTP connection manager.
pub const HCM_FILTER: &str = "envoy.filters.network.http_connection_manager";
/// `typed_extension_protocol_options` key of upstream HTTP options.
pub const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// Connect timeout when a destination policy sets none.
const DEFAULT_CONNECT_TIMEOUT: DurationSpec = DurationSpec::from_secs(1);
/// Retry conditions when a retry policy lists none: connection-level failures for HTTP
/// plus the gRPC codes that are safe to retry, so both sidecars and proxyless clients retry.
const DEFAULT_RETRY_ON: &str = "connect-failure,refused-stream,unavailable,cancelled";

/// Who a proxy is (from its xDS `node`): the contract documented for operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyKind {
    /// An Envoy sidecar: one outbound HTTP listener on `outbound_port` that routes by
    /// Host/authority to every service; if `inbound` is set, also an inbound listener on
    /// `inbound.0` forwarding to the local app on 127.0.0.1:`inbound.1`.
    Sidecar {
        /// Port of the outbound listener.
        outbound_port: u16,
        /// `(listen port, app port)` of the inbound listener.
        inbound: Option<(u16, u16)>,
    },
    /// A proxyless gRPC client: an `api_listener` per service, named after the xDS target.
    Proxyless,
}

/// Identity of one proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyIdentity {
    /// Namespace the proxy runs in.
    pub namespace: String,
    /// Service the proxy fronts, if any.
    pub service: Option<String>,
    /// Sidecar or proxyless.
    pub kind: ProxyKind,
    /// The proxy's region (`node.locality.region`), for `localityFailover`.
    pub region: Option<String>,
}

/// Failover rank of an endpoint region for a proxy: 0 for the proxy's own region, 1 for a
/// region its `localityFailover` rules fail over to, 2 for any other. Everything is rank 0
/// when the proxy has no region or the service no rules, so nothing changes for them.
fn failover_rank(
    proxy_region: Option<&str>,
    rules: &[crate::model::config::LocalityFailover],
    region: &str,
) -> u32 {
    match proxy_region {
        Some(own) if !rules.is_empty() => {
            if region == own {
                0
            } else if rules.iter().any(|r| r.from == own && r.to == region) {
                1
            } else {
                2
            }
        }
        _ => 0,
    }
}

/// Every resource of one type, by name, packed.
pub type Resources = BTreeMap<String, Any>;

/// The full config for one proxy at one revision.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct XdsSnapshot {
    /// Clusters (CDS).
    pub clusters: Resources,
    /// Load assignments (EDS).
    pub endpoints: Resources,
    /// Listeners (LDS).
    pub listeners: Resources,
    /// Route configurations (RDS).
    pub routes: Resources,
}

impl XdsSnapshot {
    /// Resources of a type URL (one of the four consts); None for an unknown type.
    pub fn of_type(&self, type_url: &str) -> Option<&Resources> {
        match type_url {
            CLUSTER_TYPE => Some(&self.clusters),
            ENDPOINT_TYPE => Some(&self.endpoints),
            LISTENER_TYPE => Some(&self.listeners),
            ROUTE_TYPE => Some(&self.routes),
            _ => None,
        }
    }
}

/// Why a snapshot could not be built or checked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    /// Resources reference each other inconsistently (or the state is corrupt).
    #[error("{0}")]
    Inconsistent(String),
    /// The configuration cannot be expressed as valid proxy config.
    #[error("{0}")]
    Invalid(String),
}

// ---------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------

/// Cluster of a whole service: `{service}.{namespace}`.
pub fn service_cluster_name(namespace: &str, service: &str) -> String {
    format!("{service}.{namespace}")
}

/// Cluster of one subset: `{service}.{namespace}|{subset}`.
pub fn subset_cluster_name(namespace: &str, service: &str, subset: &str) -> String {
    format!("{service}.{namespace}|{subset}")
}

/// Listener name (the xDS target) of a service for proxyless clients: the bare name in the
/// default namespace, `{service}.{namespace}` elsewhere.
pub fn proxyless_listener_name(namespace: &str, service: &str) -> String {
    if namespace == DEFAULT_NAMESPACE {
        service.to_string()
    } else {
        format!("{service}.{namespace}")
    }
}

/// Route configuration of a proxyless listener: `route/{listener name}`.
pub fn proxyless_route_name(listener: &str) -> String {
    format!("route/{listener}")
}

/// Static cluster of the sidecar's local application: `inbound|{app port}`.
pub fn inbound_cluster_name(app_port: u16) -> String {
    format!("inbound|{app_port}")
}

// ---------------------------------------------------------------------------
// Translation
// ---------------------------------------------------------------------------

/// Builds the whole snapshot from the state (pure, deterministic: same state → byte-identical
/// output).
pub fn translate(
    state: &RegistryState,
    proxy: &ProxyIdentity,
) -> Result<XdsSnapshot, TranslateError> {
    let mut snap = XdsSnapshot::default();

    // Clusters and load assignments: one per service and one per subset.
    for ((ns, name), stored) in &state.services {
        let service = &stored.value;
        let dp = destination_policy(state, ns, name)?;
        let hc = health_check(state, ns, name)?;
        let endpoints: Vec<&Endpoint> = state
            .service_endpoints(ns, name)
            .map(|e| &*e.value)
            .collect();

        let rules = dp
            .map(|d| d.locality_failover.as_slice())
            .unwrap_or_default();
        let rank = |region: &str| failover_rank(proxy.region.as_deref(), rules, region);
        let cluster_name = service_cluster_name(ns, name);
        let cluster = eds_cluster(&cluster_name, service, dp, hc);
        snap.clusters
            .insert(cluster_name.clone(), pack_any(cluster));
        let cla = load_assignment(&cluster_name, endpoints.iter().copied(), &rank);
        snap.endpoints.insert(cluster_name, pack_any(cla));

        for subset in dp.map(|d| d.subsets.as_slice()).unwrap_or_default() {
            let cluster_name = subset_cluster_name(ns, name, &subset.name);
            let cluster = eds_cluster(&cluster_name, service, dp, hc);
            snap.clusters
                .insert(cluster_name.clone(), pack_any(cluster));
            let members = endpoints
                .iter()
                .copied()
                .filter(|e| e.labels.includes(&subset.labels));
            let cla = load_assignment(&cluster_name, members, &rank);
            snap.endpoints.insert(cluster_name, pack_any(cla));
        }
    }

    match &proxy.kind {
        ProxyKind::Sidecar {
            outbound_port,
            inbound,
        } => {
            let mut virtual_hosts = Vec::with_capacity(state.services.len());
            for ((ns, name), stored) in &state.services {
                virtual_hosts.push(VirtualHost {
                    name: service_cluster_name(ns, name),
                    domains: sidecar_domains(&stored.value),
                    routes: service_routes(state, ns, name, false)?,
                    ..Default::default()
                });
            }
            let rc = RouteConfiguration {
                name: OUTBOUND_HTTP.to_string(),
                virtual_hosts,
                ..Default::default()
            };
            snap.routes.insert(OUTBOUND_HTTP.to_string(), pack_any(rc));

            let hcm = HttpConnectionManager {
                stat_prefix: OUTBOUND_HTTP.to_string(),
                http_filters: vec![fault_filter(), router_filter()],
                route_specifier: Some(RouteSpecifier::Rds(Rds {
                    config_source: Some(ads_config_source()),
                    route_config_name: OUTBOUND_HTTP.to_string(),
                })),
                ..Default::default()
            };
            let listener = socket_listener(OUTBOUND_HTTP, *outbound_port, hcm);
            snap.listeners
                .insert(OUTBOUND_HTTP.to_string(), pack_any(listener));

            if let Some((listen, app)) = inbound {
                let (listener, cluster) = inbound_resources(state, proxy, *listen, *app);
                snap.clusters
                    .insert(inbound_cluster_name(*app), pack_any(cluster));
                snap.listeners
                    .insert(INBOUND_HTTP.to_string(), pack_any(listener));
            }
        }
        ProxyKind::Proxyless => {
            for (ns, name) in state.services.keys() {
                let listener_name = proxyless_listener_name(ns, name);
                let route_name = proxyless_route_name(&listener_name);
                let rc = RouteConfiguration {
                    name: route_name.clone(),
                    virtual_hosts: vec![VirtualHost {
                        name: service_cluster_name(ns, name),
                        domains: vec!["*".to_string()],
                        routes: service_routes(state, ns, name, true)?,
                        ..Default::default()
                    }],
                    ..Default::default()
                };
                snap.routes.insert(route_name.clone(), pack_any(rc));

                let hcm = HttpConnectionManager {
                    stat_prefix: listener_name.clone(),
                    http_filters: vec![router_filter()],
                    route_specifier: Some(RouteSpecifier::Rds(Rds {
                        config_source: Some(ads_config_source()),
                        route_config_name: route_name,
                    })),
                    ..Default::default()
                };
                let listener = Listener {
                    name: listener_name.clone(),
                    api_listener: Some(ApiListener {
                        api_listener: Some(pack_any(hcm)),
                    }),
                    ..Default::default()
                };
                snap.listeners.insert(listener_name, pack_any(listener));
            }
        }
    }
    Ok(snap)
}

fn destination_policy<'a>(
    state: &'a RegistryState,
    ns: &str,
    name: &str,
) -> Result<Option<&'a DestinationPolicy>, TranslateError> {
    match state.config(ConfigKind::DestinationPolicy, ns, name) {
        None => Ok(None),
        Some(c) => match &*c.stored.value {
            ConfigSpec::DestinationPolicy(d) => Ok(Some(d)),
            other => Err(kind_mismatch(
                ConfigKind::DestinationPolicy,
                ns,
                name,
                other,
            )),
        },
    }
}

fn traffic_policy<'a>(
    state: &'a RegistryState,
    ns: &str,
    name: &str,
) -> Result<Option<&'a TrafficPolicy>, TranslateError> {
    match state.config(ConfigKind::TrafficPolicy, ns, name) {
        None => Ok(None),
        Some(c) => match &*c.stored.value {
            ConfigSpec::TrafficPolicy(t) => Ok(Some(t)),
            other => Err(kind_mismatch(ConfigKind::TrafficPolicy, ns, name, other)),
        },
    }
}

fn health_check<'a>(
    state: &'a RegistryState,
    ns: &str,
    name: &str,
) -> Result<Option<&'a HealthCheckSpec>, TranslateError> {
    match state.config(ConfigKind::HealthCheck, ns, name) {
        None => Ok(None),
        Some(c) => match &*c.stored.value {
            ConfigSpec::HealthCheck(h) => Ok(Some(h)),
            other => Err(kind_mismatch(ConfigKind::HealthCheck, ns, name, other)),
        },
    }
}

fn kind_mismatch(kind: ConfigKind, ns: &str, name: &str, found: &ConfigSpec) -> TranslateError {
    TranslateError::Inconsistent(format!(
        "config {kind} {ns}/{name} holds a {} spec",
        found.kind()
    ))
}

fn duration(d: DurationSpec) -> Duration {
    let ms = d.as_millis();
    Duration {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

fn u32_value(value: u32) -> UInt32Value {
    UInt32Value { value }
}

fn hundredths(numerator: u32) -> FractionalPercent {
    FractionalPercent {
        numerator,
        denominator: DenominatorType::Hundred as i32,
    }
}

fn ads_config_source() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

fn socket_address(ip: &str, port: u32) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

fn speaks_http2(service: &Service) -> bool {
    service
        .ports
        .iter()
        .any(|p| matches!(p.protocol, Protocol::Http2 | Protocol::Grpc))
}

fn http2_protocol_options() -> HashMap<String, Any> {
    let options = HttpProtocolOptions {
        upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
            ExplicitHttpConfig {
                protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(
                    Http2ProtocolOptions::default(),
                )),
            },
        )),
        ..Default::default()
    };
    // A single entry, so the HashMap's iteration order cannot affect the encoding.
    HashMap::from([(HTTP_PROTOCOL_OPTIONS.to_string(), pack_any(options))])
}

fn lb_policy(policy: LoadBalancerPolicy) -> LbPolicy {
    match policy {
        LoadBalancerPolicy::RoundRobin => LbPolicy::RoundRobin,
        LoadBalancerPolicy::LeastRequest => LbPolicy::LeastRequest,
        LoadBalancerPolicy::Random => LbPolicy::Random,
        LoadBalancerPolicy::RingHash => LbPolicy::RingHash,
        LoadBalancerPolicy::Maglev => LbPolicy::Maglev,
    }
}

fn circuit_breakers(cb: &CircuitBreaker) -> CircuitBreakers {
    CircuitBreakers {
        thresholds: vec![Thresholds {
            max_connections: cb.max_connections.map(u32_value),
            max_pending_requests: cb.max_pending_requests.map(u32_value),
            max_requests: cb.max_requests.map(u32_value),
            max_retries: cb.max_retries.map(u32_value),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn outlier_detection(od: &OutlierDetection) -> EnvoyOutlierDetection {
    EnvoyOutlierDetection {
        consecutive_5xx: od.consecutive_5xx.map(u32_value),
        interval: od.interval.map(duration),
        base_ejection_time: od.base_ejection_time.map(duration),
        max_ejection_percent: od.max_ejection_percent.map(u32_value),
        ..Default::default()
    }
}

/// An EDS cluster fed over ADS, shaped by the service's destination policy and health check.
fn eds_cluster(
    name: &str,
    service: &Service,
    dp: Option<&DestinationPolicy>,
    hc: Option<&HealthCheckSpec>,
) -> Cluster {
    let connect_timeout = dp
        .and_then(|d| d.connect_timeout)
        .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
    let policy = dp
        .and_then(|d| d.load_balancer.as_ref())
        .map(|lb| lb.policy)
        .unwrap_or_default();
    Cluster {
        name: name.to_string(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            eds_config: Some(ads_config_source()),
            service_name: name.to_string(),
        }),
        connect_timeout: Some(duration(connect_timeout)),
        lb_policy: lb_policy(policy) as i32,
        circuit_breakers: dp
            .and_then(|d| d.circuit_breaker.as_ref())
            .map(circuit_breakers),
        outlier_detection: dp
            .and_then(|d| d.outlier_detection.as_ref())
            .map(outlier_detection),
        common_lb_config: hc.map(|h| CommonLbConfig {
            healthy_panic_threshold: Some(Percent {
                value: f64::from(h.effective_panic_threshold()),
            }),
            ..Default::default()
        }),
        typed_extension_protocol_options: if speaks_http2(service) {
            http2_protocol_options()
        } else {
            HashMap::new()
        },
        ..Default::default()
    }
}

fn envoy_health(status: HealthStatus) -> EnvoyHealthStatus {
    match status {
        HealthStatus::Healthy => EnvoyHealthStatus::Healthy,
        HealthStatus::Unhealthy => EnvoyHealthStatus::Unhealthy,
        HealthStatus::Draining => EnvoyHealthStatus::Draining,
        HealthStatus::Unknown => EnvoyHealthStatus::Unknown,
    }
}

/// Groups endpoints by (region, zone, subzone, priority); within a group by id.
///
/// Priorities are renumbered densely (0, 1, 2, … in the order of the endpoint priorities):
/// gRPC rejects a load assignment whose priorities have gaps or do not start at 0 (which a
/// subset easily produces), and for Envoy only their order matters.
///
/// Endpoints registered by host name are left out: EDS carries IP literals only, and Envoy
/// rejects the whole assignment (keeping the cluster stale) over one host name.
fn load_assignment<'a>(
    cluster_name: &str,
    endpoints: impl Iterator<Item = &'a Endpoint>,
    rank: &dyn Fn(&str) -> u32,
) -> ClusterLoadAssignment {
    type Group<'a> = BTreeMap<(&'a str, &'a str, &'a str, u32), Vec<&'a Endpoint>>;
    let mut groups: Group<'a> = BTreeMap::new();
    for e in endpoints.filter(|e| e.address.parse::<std::net::IpAddr>().is_ok()) {
        let l = &e.locality;
        // The endpoint's own priority first, then the proxy's locality failover order.
        let priority = e.priority * 3 + rank(&l.region);
        groups
            .entry((&l.region, &l.zone, &l.subzone, priority))
            .or_default()
            .push(e);
    }
    let dense: BTreeMap<u32, u32> = groups
        .keys()
        .map(|k| k.3)
        .collect::<std::collections::BTreeSet<u32>>()
        .into_iter()
        .zip(0..)
        .collect();
    let endpoints = groups
        .into_iter()
        .map(|((region, zone, subzone, priority), mut members)| {
            members.sort_by(|a, b| a.id.cmp(&b.id));
            let weight: u32 = members.iter().map(|e| e.weight).sum();
            LocalityLbEndpoints {
                locality: Some(EnvoyLocality {
                    region: region.to_string(),
                    zone: zone.to_string(),
                    sub_zone: subzone.to_string(),
                }),
                lb_endpoints: members
                    .iter()
                    .map(|e| LbEndpoint {
                        health_status: envoy_health(e.health.status) as i32,
                        load_balancing_weight: Some(u32_value(e.weight)),
                        host_identifier: Some(HostIdentifier::Endpoint(EnvoyEndpoint {
                            address: Some(socket_address(&e.address, e.port)),
                            ..Default::default()
                        })),
                        ..Default::default()
                    })
                    .collect(),
                load_balancing_weight: Some(u32_value(weight)),
                priority: dense[&priority],
                ..Default::default()
            }
        })
        .collect();
    ClusterLoadAssignment {
        cluster_name: cluster_name.to_string(),
        endpoints,
        ..Default::default()
    }
}

/// Host/authority forms that reach a service through the sidecar. Bare names only in the
/// default namespace, so no two virtual hosts share a domain.
fn sidecar_domains(service: &Service) -> Vec<String> {
    let qualified = format!("{}.{}", service.name, service.namespace);
    let mut bases = Vec::with_capacity(2);
    if service.namespace == DEFAULT_NAMESPACE {
        bases.push(service.name.clone());
    }
    bases.push(qualified);
    let mut domains = bases.clone();
    for port in &service.ports {
        for base in &bases {
            domains.push(format!("{base}:{}", port.port));
        }
    }
    domains
}

fn typed_filter<M: Message + Name>(name: &str, config: M) -> HttpFilter {
    HttpFilter {
        name: name.to_string(),
        config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(config))),
        ..Default::default()
    }
}

fn router_filter() -> HttpFilter {
    typed_filter(ROUTER_FILTER, Router::default())
}

fn fault_filter() -> HttpFilter {
    typed_filter(FAULT_FILTER, HttpFault::default())
}

fn socket_listener(name: &str, port: u16, hcm: HttpConnectionManager) -> Listener {
    Listener {
        name: name.to_string(),
        address: Some(socket_address("0.0.0.0", u32::from(port))),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: HCM_FILTER.to_string(),
                config_type: Some(filter::ConfigType::TypedConfig(pack_any(hcm))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The inbound listener (inline routes to the local app) and its static cluster.
fn inbound_resources(
    state: &RegistryState,
    proxy: &ProxyIdentity,
    listen: u16,
    app: u16,
) -> (Listener, Cluster) {
    let cluster_name = inbound_cluster_name(app);
    let http2 = proxy
        .service
        .as_deref()
        .and_then(|s| state.service(&proxy.namespace, s))
        .is_some_and(|s| speaks_http2(&s.value));
    let cluster = Cluster {
        name: cluster_name.clone(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
        connect_timeout: Some(duration(DEFAULT_CONNECT_TIMEOUT)),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: cluster_name.clone(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(HostIdentifier::Endpoint(EnvoyEndpoint {
                        address: Some(socket_address("127.0.0.1", u32::from(app))),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        typed_extension_protocol_options: if http2 {
            http2_protocol_options()
        } else {
            HashMap::new()
        },
        ..Default::default()
    };
    let routes = RouteConfiguration {
        name: INBOUND_HTTP.to_string(),
        virtual_hosts: vec![VirtualHost {
            name: "inbound".to_string(),
            domains: vec!["*".to_string()],
            routes: vec![prefix_route("/", &cluster_name)],
            ..Default::default()
        }],
        ..Default::default()
    };
    let hcm = HttpConnectionManager {
        stat_prefix: INBOUND_HTTP.to_string(),
        http_filters: vec![router_filter()],
        route_specifier: Some(RouteSpecifier::RouteConfig(routes)),
        ..Default::default()
    };
    (socket_listener(INBOUND_HTTP, listen, hcm), cluster)
}

fn prefix_route(prefix: &str, cluster: &str) -> EnvoyRoute {
    EnvoyRoute {
        r#match: Some(EnvoyRouteMatch {
            path_specifier: Some(PathSpecifier::Prefix(prefix.to_string())),
            ..Default::default()
        }),
        action: Some(Action::Route(RouteAction {
            cluster_specifier: Some(ClusterSpecifier::Cluster(cluster.to_string())),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// The routes of one service: its traffic policy's, in order, or a catch-all to its cluster.
/// `proxyless` also expresses timeouts the way gRPC reads them (`max_stream_duration`).
fn service_routes(
    state: &RegistryState,
    ns: &str,
    name: &str,
    proxyless: bool,
) -> Result<Vec<EnvoyRoute>, TranslateError> {
    let Some(policy) = traffic_policy(state, ns, name)? else {
        return Ok(vec![prefix_route("/", &service_cluster_name(ns, name))]);
    };
    policy
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| route(state, ns, name, i, r, proxyless))
        .collect()
}

fn route(
    state: &RegistryState,
    ns: &str,
    name: &str,
    index: usize,
    r: &Route,
    proxyless: bool,
) -> Result<EnvoyRoute, TranslateError> {
    let at = format!("TrafficPolicy {ns}/{name} routes[{index}]");
    let total: u64 = r.destinations.iter().map(|d| u64::from(d.weight)).sum();
    if r.destinations.is_empty() || total == 0 {
        return Err(TranslateError::Invalid(format!(
            "{at}: total destination weight is 0"
        )));
    }
    let mut weighted = Vec::with_capacity(r.destinations.len());
    for (i, d) in r.destinations.iter().enumerate() {
        let cluster = destination_cluster(state, ns, name, d)
            .map_err(|e| TranslateError::Invalid(format!("{at}.destinations[{i}]: {e}")))?;
        weighted.push((cluster, d.weight));
    }
    let cluster_specifier = if weighted.len() == 1 {
        let (cluster, _) = weighted.remove(0);
        ClusterSpecifier::Cluster(cluster)
    } else {
        ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: weighted
                .into_iter()
                .map(|(name, weight)| ClusterWeight {
                    name,
                    weight: Some(u32_value(weight)),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    };

    let mut hash_policy: Vec<EnvoyHashPolicy> = r.hash_policy.iter().map(to_hash_policy).collect();
    if hash_policy.is_empty() {
        // The destination policy's default hash input, for ring_hash/maglev balancing.
        let first = &r.destinations[0];
        let target = first.service.as_deref().unwrap_or(name);
        if let Some(h) = destination_policy(state, ns, target)?
            .and_then(|d| d.load_balancer.as_ref())
            .and_then(|lb| lb.hash_on.as_ref())
        {
            hash_policy.push(to_hash_policy(h));
        }
    }

    let request_mirror_policies = match &r.mirror {
        Some(m) => vec![mirror_policy(state, ns, m)
            .map_err(|e| TranslateError::Invalid(format!("{at}.mirror: {e}")))?],
        None => Vec::new(),
    };

    let action = RouteAction {
        cluster_specifier: Some(cluster_specifier),
        timeout: r.timeout.map(duration),
        // gRPC ignores `timeout` and bounds a call by `max_stream_duration` instead; Envoy would
        // apply both, so sidecars get only `timeout`.
        max_stream_duration: r.timeout.filter(|_| proxyless).map(|t| MaxStreamDuration {
            max_stream_duration: Some(duration(t)),
            ..Default::default()
        }),
        retry_policy: r.retries.as_ref().map(retry_policy),
        hash_policy,
        request_mirror_policies,
        ..Default::default()
    };

    let typed_per_filter_config = match &r.fault {
        // A single entry, so the HashMap's iteration order cannot affect the encoding.
        Some(f) => HashMap::from([(FAULT_FILTER.to_string(), pack_any(fault(f)))]),
        None => HashMap::new(),
    };

    Ok(EnvoyRoute {
        name: format!("{name}.{ns}/{index}"),
        r#match: Some(route_match(&r.matcher)),
        action: Some(Action::Route(action)),
        typed_per_filter_config,
        ..Default::default()
    })
}

fn destination_cluster(
    state: &RegistryState,
    ns: &str,
    this: &str,
    d: &Destination,
) -> Result<String, String> {
    let target = d.service.as_deref().unwrap_or(this);
    if state.service(ns, target).is_none() {
        return Err(format!("service {ns}/{target} is not registered"));
    }
    match &d.subset {
        None => Ok(service_cluster_name(ns, target)),
        Some(subset) => {
            let known = destination_policy(state, ns, target)
                .map_err(|e| e.to_string())?
                .is_some_and(|dp| dp.subsets.iter().any(|s| &s.name == subset));
            if known {
                Ok(subset_cluster_name(ns, target, subset))
            } else {
                Err(format!(
                    "subset {subset:?} is not defined in the DestinationPolicy of {ns}/{target}"
                ))
            }
        }
    }
}

fn mirror_policy(
    state: &RegistryState,
    ns: &str,
    m: &Mirror,
) -> Result<RequestMirrorPolicy, String> {
    if state.service(ns, &m.service).is_none() {
        return Err(format!("service {ns}/{} is not registered", m.service));
    }
    Ok(RequestMirrorPolicy {
        cluster: service_cluster_name(ns, &m.service),
        runtime_fraction: Some(RuntimeFractionalPercent {
            default_value: Some(hundredths(m.percent)),
            ..Default::default()
        }),
        ..Default::default()
    })
}

fn route_match(m: &RouteMatch) -> EnvoyRouteMatch {
    let path_specifier = if let Some(p) = &m.path {
        PathSpecifier::Path(p.clone())
    } else if let Some(r) = &m.path_regex {
        PathSpecifier::SafeRegex(regex(r))
    } else {
        // Validation guarantees exactly one path condition; a missing one matches everything.
        PathSpecifier::Prefix(m.path_prefix.clone().unwrap_or_else(|| "/".to_string()))
    };
    EnvoyRouteMatch {
        path_specifier: Some(path_specifier),
        headers: m.headers.iter().map(header_matcher).collect(),
        ..Default::default()
    }
}

fn regex(r: &str) -> RegexMatcher {
    RegexMatcher {
        regex: r.to_string(),
        ..Default::default()
    }
}

fn header_matcher(h: &HeaderMatch) -> HeaderMatcher {
    let string_match = |p: MatchPattern| {
        HeaderMatchSpecifier::StringMatch(StringMatcher {
            match_pattern: Some(p),
            ..Default::default()
        })
    };
    let spec = if let Some(v) = &h.exact {
        string_match(MatchPattern::Exact(v.clone()))
    } else if let Some(v) = &h.prefix {
        string_match(MatchPattern::Prefix(v.clone()))
    } else if let Some(v) = &h.regex {
        string_match(MatchPattern::SafeRegex(regex(v)))
    } else {
        HeaderMatchSpecifier::PresentMatch(true)
    };
    HeaderMatcher {
        name: h.name.clone(),
        header_match_specifier: Some(spec),
        ..Default::default()
    }
}

fn retry_on(r: RetryOn) -> &'static str {
    match r {
        RetryOn::FiveXx => "5xx",
        RetryOn::GatewayError => "gateway-error",
        RetryOn::Reset => "reset",
        RetryOn::ConnectFailure => "connect-failure",
        RetryOn::Retriable4xx => "retriable-4xx",
        RetryOn::RefusedStream => "refused-stream",
        RetryOn::RetriableStatusCodes => "retriable-status-codes",
        RetryOn::Cancelled => "cancelled",
        RetryOn::DeadlineExceeded => "deadline-exceeded",
        RetryOn::Internal => "internal",
        RetryOn::ResourceExhausted => "resource-exhausted",
        RetryOn::Unavailable => "unavailable",
    }
}

fn retry_policy(r: &RetryPolicy) -> EnvoyRetryPolicy {
    let retry_on = if r.retry_on.is_empty() {
        DEFAULT_RETRY_ON.to_string()
    } else {
        r.retry_on
            .iter()
            .map(|c| retry_on(*c))
            .collect::<Vec<_>>()
            .join(",")
    };
    EnvoyRetryPolicy {
        retry_on,
        num_retries: Some(u32_value(r.attempts)),
        per_try_timeout: r.per_try_timeout.map(duration),
        ..Default::default()
    }
}

fn to_hash_policy(h: &HashPolicy) -> EnvoyHashPolicy {
    let spec = if let Some(header) = &h.header {
        PolicySpecifier::Header(hash_policy::Header {
            header_name: header.clone(),
            ..Default::default()
        })
    } else if let Some(cookie) = &h.cookie {
        PolicySpecifier::Cookie(hash_policy::Cookie {
            name: cookie.name.clone(),
            ttl: cookie.ttl.map(duration),
            ..Default::default()
        })
    } else {
        PolicySpecifier::ConnectionProperties(hash_policy::ConnectionProperties { source_ip: true })
    };
    EnvoyHashPolicy {
        policy_specifier: Some(spec),
        ..Default::default()
    }
}

fn fault(f: &FaultInjection) -> HttpFault {
    HttpFault {
        delay: f.delay.as_ref().map(|d| FaultDelay {
            percentage: Some(hundredths(d.percent)),
            fault_delay_secifier: Some(fault_delay::FaultDelaySecifier::FixedDelay(duration(
                d.fixed_delay,
            ))),
        }),
        abort: f.abort.as_ref().map(|a| FaultAbort {
            percentage: Some(hundredths(a.percent)),
            error_type: Some(fault_abort::ErrorType::HttpStatus(a.http_status)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------
// Consistency
// ---------------------------------------------------------------------------

fn unpack<M: Message + Name + Default>(
    kind: &str,
    name: &str,
    any: &Any,
) -> Result<M, TranslateError> {
    if any.type_url != M::type_url() {
        return Err(TranslateError::Inconsistent(format!(
            "{kind} {name:?} has type {}, expected {}",
            any.type_url,
            M::type_url()
        )));
    }
    M::decode(any.value.as_slice())
        .map_err(|e| TranslateError::Invalid(format!("{kind} {name:?} does not decode: {e}")))
}

fn check_route_clusters(
    clusters: &Resources,
    rc: &RouteConfiguration,
) -> Result<(), TranslateError> {
    let missing = |c: &str| {
        if clusters.contains_key(c) {
            Ok(())
        } else {
            Err(TranslateError::Inconsistent(format!(
                "route configuration {:?} references missing cluster {c:?}",
                rc.name
            )))
        }
    };
    for vh in &rc.virtual_hosts {
        for r in &vh.routes {
            let Some(Action::Route(action)) = &r.action else {
                continue;
            };
            match &action.cluster_specifier {
                Some(ClusterSpecifier::Cluster(c)) => missing(c)?,
                Some(ClusterSpecifier::WeightedClusters(w)) => {
                    for cw in &w.clusters {
                        missing(&cw.name)?;
                    }
                }
                _ => {}
            }
            for m in &action.request_mirror_policies {
                missing(&m.cluster)?;
            }
        }
    }
    Ok(())
}

fn check_hcm(snapshot: &XdsSnapshot, listener: &str, any: &Any) -> Result<(), TranslateError> {
    let hcm: HttpConnectionManager = unpack("listener filter of", listener, any)?;
    match &hcm.route_specifier {
        Some(RouteSpecifier::Rds(rds)) if !snapshot.routes.contains_key(&rds.route_config_name) => {
            return Err(TranslateError::Inconsistent(format!(
                "listener {listener:?} references missing route configuration {:?}",
                rds.route_config_name
            )));
        }
        Some(RouteSpecifier::RouteConfig(rc)) => check_route_clusters(&snapshot.clusters, rc)?,
        _ => {}
    }
    Ok(())
}

/// Checks references: every route's cluster exists in `clusters`, every EDS cluster has an
/// entry in `endpoints` (an empty ClusterLoadAssignment is fine), every RDS name a listener uses
/// exists in `routes`. Also checks that every resource has the right type and its map key.
pub fn check_consistency(snapshot: &XdsSnapshot) -> Result<(), TranslateError> {
    let key_mismatch = |kind: &str, key: &str, name: &str| {
        TranslateError::Inconsistent(format!("{kind} stored as {key:?} is named {name:?}"))
    };
    for (key, any) in &snapshot.clusters {
        let c: Cluster = unpack("cluster", key, any)?;
        if c.name != *key {
            return Err(key_mismatch("cluster", key, &c.name));
        }
        if c.cluster_discovery_type == Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)) {
            let service = c
                .eds_cluster_config
                .as_ref()
                .map(|e| e.service_name.as_str())
                .filter(|s| !s.is_empty())
                .unwrap_or(key);
            if !snapshot.endpoints.contains_key(service) {
                return Err(TranslateError::Inconsistent(format!(
                    "EDS cluster {key:?} has no load assignment {service:?}"
                )));
            }
        }
    }
    for (key, any) in &snapshot.endpoints {
        let cla: ClusterLoadAssignment = unpack("load assignment", key, any)?;
        if cla.cluster_name != *key {
            return Err(key_mismatch("load assignment", key, &cla.cluster_name));
        }
    }
    for (key, any) in &snapshot.routes {
        let rc: RouteConfiguration = unpack("route configuration", key, any)?;
        if rc.name != *key {
            return Err(key_mismatch("route configuration", key, &rc.name));
        }
        check_route_clusters(&snapshot.clusters, &rc)?;
    }
    for (key, any) in &snapshot.listeners {
        let l: Listener = unpack("listener", key, any)?;
        if l.name != *key {
            return Err(key_mismatch("listener", key, &l.name));
        }
        if let Some(hcm) = l
            .api_listener
            .as_ref()
            .and_then(|a| a.api_listener.as_ref())
        {
            check_hcm(snapshot, key, hcm)?;
        }
        for chain in &l.filter_chains {
            for f in &chain.filters {
                if let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type {
                    if any.type_url == HttpConnectionManager::type_url() {
                        check_hcm(snapshot, key, any)?;
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Command;
    use crate::model::config::{
        AbortFault, CookieHash, DelayFault, LoadBalancer, Subset, TcpHealthCheck,
    };
    use crate::model::{Health, Locality, ServicePort};
    use crate::store::apply_command;

    fn apply(state: &mut RegistryState, command: Command) {
        let index = state.revision + 1;
        apply_command(state, index, command).0.unwrap();
    }

    fn service(state: &mut RegistryState, ns: &str, name: &str, ports: &[(u32, Protocol)]) {
        let service = Service {
            name: name.into(),
            namespace: ns.into(),
            ports: ports
                .iter()
                .map(|(port, protocol)| ServicePort {
                    name: format!("p{port}"),
                    port: *port,
                    protocol: *protocol,
                })
                .collect(),
            labels: Default::default(),
            metadata: Default::default(),
            depends_on: Vec::new(),
        };
        apply(
            state,
            Command::RegisterService {
                service,
                expected_revision: None,
            },
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn endpoint(
        state: &mut RegistryState,
        name: &str,
        id: &str,
        address: &str,
        (region, zone): (&str, &str),
        weight: u32,
        priority: u32,
        version: &str,
        status: HealthStatus,
    ) {
        let endpoint = Endpoint {
            id: id.into(),
            service: name.into(),
            namespace: "default".into(),
            address: address.into(),
            port: 8080,
            labels: [("version".to_string(), version.to_string())].into(),
            locality: Locality {
                region: region.into(),
                zone: zone.into(),
                subzone: String::new(),
            },
            weight,
            priority,
            ttl: None,
            health: Health {
                status,
                since_ms: 0,
                reason: String::new(),
            },
        };
        apply(
            state,
            Command::UpsertEndpoint {
                endpoint,
                expected_revision: None,
                keep_health: false,
            },
        );
    }

    fn put(state: &mut RegistryState, ns: &str, name: &str, spec: ConfigSpec) {
        apply(
            state,
            Command::PutConfig {
                namespace: ns.into(),
                name: name.into(),
                spec,
                expected_revision: None,
            },
        );
    }

    fn subsets() -> Vec<Subset> {
        ["v1", "v2"]
            .into_iter()
            .map(|v| Subset {
                name: v.into(),
                labels: [("version".to_string(), v.to_string())].into(),
            })
            .collect()
    }

    fn health_check(panic_threshold: Option<u32>) -> HealthCheckSpec {
        HealthCheckSpec {
            http: None,
            tcp: Some(TcpHealthCheck {}),
            grpc: None,
            interval: DurationSpec::from_secs(5),
            timeout: DurationSpec::from_secs(1),
            jitter: None,
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            initial_status: None,
            deregister_after: None,
            panic_threshold,
        }
    }

    fn dest(service: Option<&str>, subset: Option<&str>, weight: u32) -> Destination {
        Destination {
            service: service.map(Into::into),
            subset: subset.map(Into::into),
            weight,
        }
    }

    fn simple_route(prefix: &str, destinations: Vec<Destination>) -> Route {
        Route {
            matcher: RouteMatch {
                path_prefix: Some(prefix.into()),
                ..Default::default()
            },
            destinations,
            retries: None,
            timeout: None,
            hash_policy: Vec::new(),
            fault: None,
            mirror: None,
        }
    }

    /// `web` (http, subsets v1/v2, full destination policy, health check), `grpc-api` (grpc),
    /// `shadow` (http), `api` in namespace `shop`.
    fn mesh() -> RegistryState {
        let mut state = RegistryState::default();
        service(&mut state, "default", "web", &[(8080, Protocol::Http)]);
        service(&mut state, "default", "grpc-api", &[(9090, Protocol::Grpc)]);
        service(&mut state, "default", "shadow", &[(8080, Protocol::Http)]);
        service(&mut state, "shop", "api", &[(80, Protocol::Http)]);
        let h = HealthStatus::Healthy;
        endpoint(
            &mut state,
            "web",
            "a",
            "10.0.0.1",
            ("eu", "eu-1a"),
            2,
            0,
            "v1",
            h,
        );
        let u = HealthStatus::Unhealthy;
        endpoint(
            &mut state,
            "web",
            "b",
            "10.0.0.2",
            ("eu", "eu-1a"),
            3,
            0,
            "v1",
            u,
        );
        let d = HealthStatus::Draining;
        endpoint(
            &mut state,
            "web",
            "c",
            "10.0.0.3",
            ("us", "us-1"),
            5,
            1,
            "v2",
            d,
        );
        let k = HealthStatus::Unknown;
        endpoint(
            &mut state,
            "web",
            "d",
            "10.0.0.4",
            ("eu", "eu-1a"),
            7,
            0,
            "v2",
            k,
        );
        put(
            &mut state,
            "default",
            "web",
            ConfigSpec::DestinationPolicy(DestinationPolicy {
                subsets: subsets(),
                load_balancer: Some(LoadBalancer {
                    policy: LoadBalancerPolicy::RingHash,
                    hash_on: Some(HashPolicy {
                        header: Some("x-user".into()),
                        ..Default::default()
                    }),
                }),
                circuit_breaker: Some(CircuitBreaker {
                    max_connections: Some(100),
                    max_pending_requests: Some(10),
                    max_requests: Some(1000),
                    max_retries: Some(3),
                }),
                outlier_detection: Some(OutlierDetection {
                    consecutive_5xx: Some(5),
                    interval: Some(DurationSpec::from_secs(10)),
                    base_ejection_time: Some(DurationSpec::from_secs(30)),
                    max_ejection_percent: Some(50),
                }),
                connect_timeout: Some(DurationSpec::from_millis(250)),
                locality_failover: Vec::new(),
            }),
        );
        put(
            &mut state,
            "default",
            "web",
            ConfigSpec::HealthCheck(health_check(Some(30))),
        );
        state
    }

    fn sidecar() -> ProxyIdentity {
        ProxyIdentity {
            namespace: "default".into(),
            service: Some("web".into()),
            kind: ProxyKind::Sidecar {
                outbound_port: 15001,
                inbound: None,
            },
            region: None,
        }
    }

    fn proxyless() -> ProxyIdentity {
        ProxyIdentity {
            namespace: "default".into(),
            service: None,
            kind: ProxyKind::Proxyless,
            region: None,
        }
    }

    fn decode<M: Message + Name + Default>(any: &Any) -> M {
        assert_eq!(any.type_url, M::type_url());
        M::decode(any.value.as_slice()).unwrap()
    }

    fn translated(state: &RegistryState, proxy: &ProxyIdentity) -> XdsSnapshot {
        let snap = translate(state, proxy).unwrap();
        check_consistency(&snap).unwrap();
        snap
    }

    fn cluster(snap: &XdsSnapshot, name: &str) -> Cluster {
        decode(&snap.clusters[name])
    }

    fn cla(snap: &XdsSnapshot, name: &str) -> ClusterLoadAssignment {
        decode(&snap.endpoints[name])
    }

    fn route_config(snap: &XdsSnapshot, name: &str) -> RouteConfiguration {
        decode(&snap.routes[name])
    }

    fn vhost<'a>(rc: &'a RouteConfiguration, name: &str) -> &'a VirtualHost {
        rc.virtual_hosts.iter().find(|v| v.name == name).unwrap()
    }

    fn action(r: &EnvoyRoute) -> &RouteAction {
        match &r.action {
            Some(Action::Route(a)) => a,
            other => panic!("not a route action: {other:?}"),
        }
    }

    fn hcm_of(listener: &Listener) -> HttpConnectionManager {
        match &listener.filter_chains[0].filters[0].config_type {
            Some(filter::ConfigType::TypedConfig(any)) => decode(any),
            other => panic!("no typed config: {other:?}"),
        }
    }

    fn rds_name(hcm: &HttpConnectionManager) -> &str {
        match &hcm.route_specifier {
            Some(RouteSpecifier::Rds(rds)) => {
                assert_eq!(rds.config_source, Some(ads_config_source()));
                &rds.route_config_name
            }
            other => panic!("not RDS: {other:?}"),
        }
    }

    fn filter_names(hcm: &HttpConnectionManager) -> Vec<&str> {
        hcm.http_filters.iter().map(|f| f.name.as_str()).collect()
    }

    #[test]
    fn of_type_maps_type_urls() {
        let snap = translated(&mesh(), &sidecar());
        assert_eq!(snap.of_type(CLUSTER_TYPE), Some(&snap.clusters));
        assert_eq!(snap.of_type(ENDPOINT_TYPE), Some(&snap.endpoints));
        assert_eq!(snap.of_type(LISTENER_TYPE), Some(&snap.listeners));
        assert_eq!(snap.of_type(ROUTE_TYPE), Some(&snap.routes));
        assert_eq!(snap.of_type("type.googleapis.com/x.Y"), None);
        assert_eq!(Cluster::type_url(), CLUSTER_TYPE);
        assert_eq!(ClusterLoadAssignment::type_url(), ENDPOINT_TYPE);
        assert_eq!(Listener::type_url(), LISTENER_TYPE);
        assert_eq!(RouteConfiguration::type_url(), ROUTE_TYPE);
    }

    #[test]
    fn clusters_per_service_and_subset_follow_destination_policy() {
        let snap = translated(&mesh(), &sidecar());
        let names: Vec<&str> = snap.clusters.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "api.shop",
                "grpc-api.default",
                "shadow.default",
                "web.default",
                "web.default|v1",
                "web.default|v2"
            ]
        );
        for name in ["web.default", "web.default|v1", "web.default|v2"] {
            let c = cluster(&snap, name);
            assert_eq!(c.name, name);
            assert_eq!(
                c.cluster_discovery_type,
                Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32))
            );
            let eds = c.eds_cluster_config.unwrap();
            assert_eq!(eds.service_name, name);
            assert_eq!(eds.eds_config, Some(ads_config_source()));
            assert_eq!(
                c.connect_timeout,
                Some(Duration {
                    seconds: 0,
                    nanos: 250_000_000
                })
            );
            assert_eq!(c.lb_policy, LbPolicy::RingHash as i32);
            let t = &c.circuit_breakers.unwrap().thresholds[0];
            assert_eq!(t.max_connections, Some(u32_value(100)));
            assert_eq!(t.max_pending_requests, Some(u32_value(10)));
            assert_eq!(t.max_requests, Some(u32_value(1000)));
            assert_eq!(t.max_retries, Some(u32_value(3)));
            let od = c.outlier_detection.unwrap();
            assert_eq!(od.consecutive_5xx, Some(u32_value(5)));
            assert_eq!(od.interval.unwrap().seconds, 10);
            assert_eq!(od.base_ejection_time.unwrap().seconds, 30);
            assert_eq!(od.max_ejection_percent, Some(u32_value(50)));
            let panic = c.common_lb_config.unwrap().healthy_panic_threshold.unwrap();
            assert_eq!(panic.value, 30.0);
            assert!(c.typed_extension_protocol_options.is_empty());
        }

        // No policies: defaults, no panic threshold, no limits.
        let c = cluster(&snap, "shadow.default");
        assert_eq!(c.lb_policy, LbPolicy::RoundRobin as i32);
        assert_eq!(c.connect_timeout.unwrap().seconds, 1);
        assert_eq!(c.circuit_breakers, None);
        assert_eq!(c.outlier_detection, None);
        assert_eq!(c.common_lb_config, None);

        // gRPC upstreams speak HTTP/2.
        let c = cluster(&snap, "grpc-api.default");
        let any = &c.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS];
        let opts: HttpProtocolOptions = decode(any);
        assert!(matches!(
            opts.upstream_protocol_options,
            Some(UpstreamProtocolOptions::ExplicitHttpConfig(
                ExplicitHttpConfig {
                    protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(_))
                }
            ))
        ));
    }

    #[test]
    fn panic_threshold_defaults_to_fifty_with_a_health_check() {
        let mut state = mesh();
        put(
            &mut state,
            "default",
            "shadow",
            ConfigSpec::HealthCheck(health_check(None)),
        );
        let snap = translated(&state, &sidecar());
        let c = cluster(&snap, "shadow.default");
        let panic = c.common_lb_config.unwrap().healthy_panic_threshold.unwrap();
        assert_eq!(panic.value, 50.0);
    }

    fn addresses(l: &LocalityLbEndpoints) -> Vec<(String, u32, i32, u32)> {
        l.lb_endpoints
            .iter()
            .map(|e| {
                let Some(HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
                    panic!("no endpoint");
                };
                let Some(address::Address::SocketAddress(sa)) =
                    ep.address.as_ref().and_then(|a| a.address.clone())
                else {
                    panic!("no socket address");
                };
                let Some(socket_address::PortSpecifier::PortValue(port)) = sa.port_specifier else {
                    panic!("no port");
                };
                (
                    sa.address,
                    port,
                    e.health_status,
                    e.load_balancing_weight.map_or(0, |w| w.value),
                )
            })
            .collect()
    }

    #[test]
    fn load_assignments_group_by_locality_and_priority() {
        let snap = translated(&mesh(), &sidecar());
        let all = cla(&snap, "web.default");
        assert_eq!(all.cluster_name, "web.default");
        assert_eq!(all.endpoints.len(), 2);

        let eu = &all.endpoints[0];
        let locality = eu.locality.clone().unwrap();
        assert_eq!(
            (locality.region.as_str(), locality.zone.as_str()),
            ("eu", "eu-1a")
        );
        assert_eq!(eu.priority, 0);
        assert_eq!(eu.load_balancing_weight, Some(u32_value(2 + 3 + 7)));
        assert_eq!(
            addresses(eu),
            [
                (
                    "10.0.0.1".into(),
                    8080,
                    EnvoyHealthStatus::Healthy as i32,
                    2
                ),
                (
                    "10.0.0.2".into(),
                    8080,
                    EnvoyHealthStatus::Unhealthy as i32,
                    3
                ),
                (
                    "10.0.0.4".into(),
                    8080,
                    EnvoyHealthStatus::Unknown as i32,
                    7
                ),
            ]
        );

        let us = &all.endpoints[1];
        assert_eq!(us.locality.clone().unwrap().region, "us");
        assert_eq!(us.priority, 1);
        assert_eq!(us.load_balancing_weight, Some(u32_value(5)));
        assert_eq!(
            addresses(us),
            [(
                "10.0.0.3".into(),
                8080,
                EnvoyHealthStatus::Draining as i32,
                5
            )]
        );

        // Subsets hold only their members.
        let v1 = cla(&snap, "web.default|v1");
        assert_eq!(v1.endpoints.len(), 1);
        assert_eq!(v1.endpoints[0].load_balancing_weight, Some(u32_value(5)));
        assert_eq!(addresses(&v1.endpoints[0]).len(), 2);
        let v2 = cla(&snap, "web.default|v2");
        let v2_addresses: Vec<String> = v2
            .endpoints
            .iter()
            .flat_map(addresses)
            .map(|a| a.0)
            .collect();
        assert_eq!(v2_addresses, ["10.0.0.4", "10.0.0.3"]);

        // The v2 subset's priorities are 0 (d) and 1 (c); a subset of only priority-1
        // endpoints is renumbered to start at 0.
        assert_eq!(
            v2.endpoints.iter().map(|l| l.priority).collect::<Vec<_>>(),
            [0, 1]
        );
        let mut state = mesh();
        let c = HealthStatus::Healthy;
        endpoint(
            &mut state,
            "shadow",
            "x",
            "10.0.1.1",
            ("eu", "a"),
            1,
            7,
            "v1",
            c,
        );
        endpoint(
            &mut state,
            "shadow",
            "y",
            "10.0.1.2",
            ("eu", "b"),
            1,
            3,
            "v1",
            c,
        );
        endpoint(
            &mut state,
            "shadow",
            "z",
            "10.0.1.3",
            ("eu", "b"),
            1,
            7,
            "v1",
            c,
        );
        let snap = translated(&state, &sidecar());
        let shadow = cla(&snap, "shadow.default");
        let got: Vec<(String, u32)> = shadow
            .endpoints
            .iter()
            .map(|l| (l.locality.clone().unwrap().zone, l.priority))
            .collect();
        assert_eq!(got, [("a".into(), 1), ("b".into(), 0), ("b".into(), 1)]);

        // Host names cannot go into EDS.
        let mut state = mesh();
        let h = HealthStatus::Healthy;
        endpoint(
            &mut state,
            "shadow",
            "n",
            "shadow-1.internal",
            ("", ""),
            1,
            0,
            "v1",
            h,
        );
        endpoint(
            &mut state,
            "shadow",
            "v6",
            "2001:db8::1",
            ("", ""),
            1,
            0,
            "v1",
            h,
        );
        let snap = translated(&state, &sidecar());
        let shadow = cla(&snap, "shadow.default");
        assert_eq!(shadow.endpoints.len(), 1);
        assert_eq!(addresses(&shadow.endpoints[0])[0].0, "2001:db8::1");

        // A service without endpoints still has an (empty) assignment.
        let snap = translated(&mesh(), &sidecar());
        assert!(cla(&snap, "shadow.default").endpoints.is_empty());
    }

    fn full_policy() -> TrafficPolicy {
        let mut canary = simple_route(
            "/api",
            vec![dest(None, Some("v1"), 80), dest(None, Some("v2"), 20)],
        );
        canary.matcher.headers = vec![
            HeaderMatch {
                name: "x-env".into(),
                exact: Some("prod".into()),
                ..Default::default()
            },
            HeaderMatch {
                name: "x-pre".into(),
                prefix: Some("ab".into()),
                ..Default::default()
            },
            HeaderMatch {
                name: "x-re".into(),
                regex: Some("a.*".into()),
                ..Default::default()
            },
            HeaderMatch {
                name: "x-any".into(),
                present: Some(true),
                ..Default::default()
            },
        ];
        canary.retries = Some(RetryPolicy {
            attempts: 3,
            per_try_timeout: Some(DurationSpec::from_millis(1500)),
            retry_on: vec![RetryOn::FiveXx, RetryOn::ConnectFailure],
        });
        canary.timeout = Some(DurationSpec::from_secs(10));
        canary.hash_policy = vec![
            HashPolicy {
                header: Some("x-user".into()),
                ..Default::default()
            },
            HashPolicy {
                cookie: Some(CookieHash {
                    name: "session".into(),
                    ttl: Some(DurationSpec::from_secs(60)),
                }),
                ..Default::default()
            },
            HashPolicy {
                source_ip: Some(true),
                ..Default::default()
            },
        ];
        canary.fault = Some(FaultInjection {
            delay: Some(DelayFault {
                fixed_delay: DurationSpec::from_millis(500),
                percent: 10,
            }),
            abort: Some(AbortFault {
                http_status: 503,
                percent: 5,
            }),
        });
        canary.mirror = Some(Mirror {
            service: "shadow".into(),
            percent: 25,
        });

        let mut exact = simple_route("/", vec![dest(Some("shadow"), None, 1)]);
        exact.matcher = RouteMatch {
            path: Some("/exact".into()),
            ..Default::default()
        };
        let mut regex = simple_route("/", vec![dest(None, None, 1)]);
        regex.matcher = RouteMatch {
            path_regex: Some("/r/[0-9]+".into()),
            ..Default::default()
        };
        regex.retries = Some(RetryPolicy {
            attempts: 2,
            per_try_timeout: None,
            retry_on: Vec::new(),
        });
        TrafficPolicy {
            routes: vec![
                canary,
                exact,
                regex,
                simple_route("/", vec![dest(None, None, 1)]),
            ],
        }
    }

    #[test]
    fn traffic_policy_becomes_routes() {
        let mut state = mesh();
        let policy = full_policy();
        policy.validate().unwrap();
        put(
            &mut state,
            "default",
            "web",
            ConfigSpec::TrafficPolicy(policy),
        );
        let snap = translated(&state, &sidecar());
        let rc = route_config(&snap, OUTBOUND_HTTP);
        let routes = &vhost(&rc, "web.default").routes;
        assert_eq!(routes.len(), 4);

        // Route 0: headers, 80/20 split, retries, timeout, hashing, fault, mirror.
        let r = &routes[0];
        let m = r.r#match.as_ref().unwrap();
        assert_eq!(m.path_specifier, Some(PathSpecifier::Prefix("/api".into())));
        let specs: Vec<_> = m
            .headers
            .iter()
            .map(|h| (h.name.as_str(), h.header_match_specifier.clone().unwrap()))
            .collect();
        let sm = |p| {
            HeaderMatchSpecifier::StringMatch(StringMatcher {
                match_pattern: Some(p),
                ignore_case: false,
            })
        };
        assert_eq!(
            specs,
            [
                ("x-env", sm(MatchPattern::Exact("prod".into()))),
                ("x-pre", sm(MatchPattern::Prefix("ab".into()))),
                ("x-re", sm(MatchPattern::SafeRegex(regex("a.*")))),
                ("x-any", HeaderMatchSpecifier::PresentMatch(true)),
            ]
        );
        let a = action(r);
        let Some(ClusterSpecifier::WeightedClusters(w)) = &a.cluster_specifier else {
            panic!("not weighted: {:?}", a.cluster_specifier);
        };
        let split: Vec<(&str, u32)> = w
            .clusters
            .iter()
            .map(|c| (c.name.as_str(), c.weight.unwrap().value))
            .collect();
        assert_eq!(split, [("web.default|v1", 80), ("web.default|v2", 20)]);
        let retry = a.retry_policy.as_ref().unwrap();
        assert_eq!(retry.retry_on, "5xx,connect-failure");
        assert_eq!(retry.num_retries, Some(u32_value(3)));
        assert_eq!(
            retry.per_try_timeout,
            Some(Duration {
                seconds: 1,
                nanos: 500_000_000
            })
        );
        assert_eq!(a.timeout.unwrap().seconds, 10);
        assert_eq!(a.max_stream_duration, None);
        let hashes: Vec<_> = a
            .hash_policy
            .iter()
            .map(|h| h.policy_specifier.clone().unwrap())
            .collect();
        assert_eq!(hashes.len(), 3);
        assert!(matches!(&hashes[0], PolicySpecifier::Header(h) if h.header_name == "x-user"));
        assert!(matches!(&hashes[1], PolicySpecifier::Cookie(c)
            if c.name == "session" && c.ttl.unwrap().seconds == 60));
        assert!(matches!(
            &hashes[2],
            PolicySpecifier::ConnectionProperties(p) if p.source_ip
        ));
        let fault: HttpFault = decode(&r.typed_per_filter_config[FAULT_FILTER]);
        let delay = fault.delay.unwrap();
        assert_eq!(delay.percentage, Some(hundredths(10)));
        assert_eq!(
            delay.fault_delay_secifier,
            Some(fault_delay::FaultDelaySecifier::FixedDelay(Duration {
                seconds: 0,
                nanos: 500_000_000
            }))
        );
        let abort = fault.abort.unwrap();
        assert_eq!(abort.percentage, Some(hundredths(5)));
        assert_eq!(
            abort.error_type,
            Some(fault_abort::ErrorType::HttpStatus(503))
        );
        assert_eq!(a.request_mirror_policies.len(), 1);
        let mirror = &a.request_mirror_policies[0];
        assert_eq!(mirror.cluster, "shadow.default");
        let fraction = mirror.runtime_fraction.as_ref().unwrap();
        assert_eq!(fraction.default_value, Some(hundredths(25)));

        // Route 1: exact path to another service; no extras.
        let r = &routes[1];
        assert_eq!(
            r.r#match.as_ref().unwrap().path_specifier,
            Some(PathSpecifier::Path("/exact".into()))
        );
        let a = action(r);
        assert_eq!(
            a.cluster_specifier,
            Some(ClusterSpecifier::Cluster("shadow.default".into()))
        );
        assert_eq!(a.retry_policy, None);
        assert_eq!(a.timeout, None);
        assert!(a.request_mirror_policies.is_empty());
        assert!(r.typed_per_filter_config.is_empty());
        // No route hash policy: the target's destination policy `hashOn` does not apply to
        // another service...
        assert!(a.hash_policy.is_empty());

        // Route 2: regex path, default retry conditions, and web's default hash input.
        let r = &routes[2];
        assert_eq!(
            r.r#match.as_ref().unwrap().path_specifier,
            Some(PathSpecifier::SafeRegex(regex("/r/[0-9]+")))
        );
        let a = action(r);
        assert_eq!(a.retry_policy.as_ref().unwrap().retry_on, DEFAULT_RETRY_ON);
        assert_eq!(
            a.retry_policy.as_ref().unwrap().num_retries,
            Some(u32_value(2))
        );
        assert!(matches!(
            &a.hash_policy[0].policy_specifier,
            Some(PolicySpecifier::Header(h)) if h.header_name == "x-user"
        ));
        assert_eq!(
            a.cluster_specifier,
            Some(ClusterSpecifier::Cluster("web.default".into()))
        );
    }

    #[test]
    fn services_without_policy_get_a_catch_all_route() {
        let snap = translated(&mesh(), &sidecar());
        let rc = route_config(&snap, OUTBOUND_HTTP);
        let routes = &vhost(&rc, "shadow.default").routes;
        assert_eq!(routes.len(), 1);
        assert_eq!(routes[0], prefix_route("/", "shadow.default"));
        let routes = &vhost(&rc, "api.shop").routes;
        assert_eq!(routes[0], prefix_route("/", "api.shop"));
    }

    #[test]
    fn sidecar_outbound_listener_and_domains() {
        let snap = translated(&mesh(), &sidecar());
        assert_eq!(snap.listeners.keys().collect::<Vec<_>>(), [OUTBOUND_HTTP]);
        assert_eq!(snap.routes.keys().collect::<Vec<_>>(), [OUTBOUND_HTTP]);
        let listener: Listener = decode(&snap.listeners[OUTBOUND_HTTP]);
        assert_eq!(listener.name, OUTBOUND_HTTP);
        assert_eq!(listener.address, Some(socket_address("0.0.0.0", 15001)));
        assert_eq!(listener.filter_chains.len(), 1);
        assert_eq!(listener.filter_chains[0].filters[0].name, HCM_FILTER);
        let hcm = hcm_of(&listener);
        assert_eq!(hcm.stat_prefix, OUTBOUND_HTTP);
        assert_eq!(rds_name(&hcm), OUTBOUND_HTTP);
        assert_eq!(filter_names(&hcm), [FAULT_FILTER, ROUTER_FILTER]);
        let Some(http_filter::ConfigType::TypedConfig(fault)) = &hcm.http_filters[0].config_type
        else {
            panic!("untyped fault filter");
        };
        let _: HttpFault = decode(fault);
        let Some(http_filter::ConfigType::TypedConfig(router)) = &hcm.http_filters[1].config_type
        else {
            panic!("untyped router filter");
        };
        let _: Router = decode(router);

        let rc = route_config(&snap, OUTBOUND_HTTP);
        let names: Vec<&str> = rc.virtual_hosts.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "grpc-api.default",
                "shadow.default",
                "web.default",
                "api.shop"
            ]
        );
        assert_eq!(
            vhost(&rc, "web.default").domains,
            ["web", "web.default", "web:8080", "web.default:8080"]
        );
        assert_eq!(vhost(&rc, "api.shop").domains, ["api.shop", "api.shop:80"]);
        let mut all: Vec<&String> = rc.virtual_hosts.iter().flat_map(|v| &v.domains).collect();
        let count = all.len();
        all.sort();
        all.dedup();
        assert_eq!(
            all.len(),
            count,
            "domains must be unique across virtual hosts"
        );
    }

    #[test]
    fn sidecar_inbound_listener_forwards_to_the_app() {
        let mut proxy = sidecar();
        proxy.kind = ProxyKind::Sidecar {
            outbound_port: 15001,
            inbound: Some((15006, 8080)),
        };
        let snap = translated(&mesh(), &proxy);
        let listener: Listener = decode(&snap.listeners[INBOUND_HTTP]);
        assert_eq!(listener.address, Some(socket_address("0.0.0.0", 15006)));
        let hcm = hcm_of(&listener);
        assert_eq!(filter_names(&hcm), [ROUTER_FILTER]);
        let Some(RouteSpecifier::RouteConfig(rc)) = &hcm.route_specifier else {
            panic!("inbound routes must be inline");
        };
        assert_eq!(rc.virtual_hosts[0].domains, ["*"]);
        assert_eq!(
            rc.virtual_hosts[0].routes,
            [prefix_route("/", "inbound|8080")]
        );

        let c = cluster(&snap, "inbound|8080");
        assert_eq!(
            c.cluster_discovery_type,
            Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32))
        );
        let la = c.load_assignment.unwrap();
        assert_eq!(la.cluster_name, "inbound|8080");
        assert_eq!(addresses(&la.endpoints[0])[0].0, "127.0.0.1");
        assert_eq!(addresses(&la.endpoints[0])[0].1, 8080);
        assert!(c.typed_extension_protocol_options.is_empty());
        // Not an EDS cluster, so it needs no load assignment resource.
        assert!(!snap.endpoints.contains_key("inbound|8080"));

        // A gRPC app is reached over HTTP/2.
        proxy.service = Some("grpc-api".into());
        let snap = translated(&mesh(), &proxy);
        let c = cluster(&snap, "inbound|8080");
        assert!(c
            .typed_extension_protocol_options
            .contains_key(HTTP_PROTOCOL_OPTIONS));
    }

    #[test]
    fn proxyless_listeners_and_routes() {
        let mut state = mesh();
        put(
            &mut state,
            "default",
            "web",
            ConfigSpec::TrafficPolicy(full_policy()),
        );
        let snap = translated(&state, &proxyless());
        assert_eq!(
            snap.listeners.keys().collect::<Vec<_>>(),
            ["api.shop", "grpc-api", "shadow", "web"]
        );
        assert_eq!(
            snap.routes.keys().collect::<Vec<_>>(),
            [
                "route/api.shop",
                "route/grpc-api",
                "route/shadow",
                "route/web"
            ]
        );
        for (listener_name, route_name) in [("web", "route/web"), ("api.shop", "route/api.shop")] {
            let listener: Listener = decode(&snap.listeners[listener_name]);
            assert_eq!(listener.name, listener_name);
            assert!(listener.address.is_none());
            assert!(listener.filter_chains.is_empty());
            let hcm: HttpConnectionManager = decode(
                listener
                    .api_listener
                    .unwrap()
                    .api_listener
                    .as_ref()
                    .unwrap(),
            );
            assert_eq!(rds_name(&hcm), route_name);
            assert_eq!(filter_names(&hcm), [ROUTER_FILTER]);
            let rc = route_config(&snap, route_name);
            assert_eq!(rc.virtual_hosts.len(), 1);
            assert_eq!(rc.virtual_hosts[0].domains, ["*"]);
        }
        let rc = route_config(&snap, "route/web");
        assert_eq!(rc.virtual_hosts[0].routes.len(), 4);
        // gRPC reads the call timeout from max_stream_duration.
        let a = action(&rc.virtual_hosts[0].routes[0]);
        assert_eq!(a.timeout.unwrap().seconds, 10);
        let msd = a.max_stream_duration.as_ref().unwrap();
        assert_eq!(msd.max_stream_duration.unwrap().seconds, 10);
        let rc = route_config(&snap, "route/api.shop");
        assert_eq!(rc.virtual_hosts[0].routes, [prefix_route("/", "api.shop")]);
    }

    #[test]
    fn consistency_catches_dangling_references() {
        let mut state = mesh();
        put(
            &mut state,
            "default",
            "web",
            ConfigSpec::TrafficPolicy(full_policy()),
        );
        let good = translated(&state, &sidecar());

        let mut snap = good.clone();
        snap.clusters.remove("web.default|v2");
        let err = check_consistency(&snap).unwrap_err();
        assert!(matches!(&err, TranslateError::Inconsistent(m) if m.contains("web.default|v2")));

        let mut snap = good.clone();
        snap.clusters.remove("shadow.default");
        let err = check_consistency(&snap).unwrap_err();
        assert!(err.to_string().contains("shadow.default"), "{err}");

        let mut snap = good.clone();
        snap.endpoints.remove("web.default|v1");
        let err = check_consistency(&snap).unwrap_err();
        assert!(err.to_string().contains("no load assignment"), "{err}");

        let mut snap = good.clone();
        snap.routes.clear();
        let err = check_consistency(&snap).unwrap_err();
        assert!(
            err.to_string().contains("missing route configuration"),
            "{err}"
        );

        let proxyless = translated(&state, &proxyless());
        let mut snap = proxyless.clone();
        snap.routes.remove("route/shadow");
        let err = check_consistency(&snap).unwrap_err();
        assert!(err.to_string().contains("route/shadow"), "{err}");

        let mut snap = good.clone();
        let any = snap.clusters["web.default"].clone();
        snap.clusters.insert("other".into(), any);
        let err = check_consistency(&snap).unwrap_err();
        assert!(err.to_string().contains("is named"), "{err}");

        let mut snap = good;
        let any = snap.routes[OUTBOUND_HTTP].clone();
        snap.clusters.insert("web.default".into(), any);
        assert!(matches!(
            check_consistency(&snap),
            Err(TranslateError::Inconsistent(_))
        ));
    }

    #[test]
    fn unknown_subsets_services_and_zero_weights_are_invalid() {
        let with_policy = |policy: TrafficPolicy| {
            let mut state = mesh();
            put(
                &mut state,
                "default",
                "web",
                ConfigSpec::TrafficPolicy(policy),
            );
            state
        };
        let one = |d: Destination| TrafficPolicy {
            routes: vec![simple_route("/", vec![d])],
        };

        for proxy in [sidecar(), proxyless()] {
            let state = with_policy(one(dest(None, Some("v3"), 1)));
            let err = translate(&state, &proxy).unwrap_err();
            assert!(
                matches!(&err, TranslateError::Invalid(m) if m.contains("\"v3\"")),
                "{err}"
            );
        }

        // A subset of another service must be defined by that service's policy.
        let state = with_policy(one(dest(Some("shadow"), Some("v1"), 1)));
        let err = translate(&state, &sidecar()).unwrap_err();
        assert!(err.to_string().contains("default/shadow"), "{err}");

        let state = with_policy(one(dest(Some("nope"), None, 1)));
        let err = translate(&state, &sidecar()).unwrap_err();
        assert!(
            matches!(&err, TranslateError::Invalid(m) if m.contains("default/nope")),
            "{err}"
        );

        let state = with_policy(TrafficPolicy {
            routes: vec![simple_route(
                "/",
                vec![dest(None, Some("v1"), 0), dest(None, Some("v2"), 0)],
            )],
        });
        let err = translate(&state, &sidecar()).unwrap_err();
        assert!(
            matches!(&err, TranslateError::Invalid(m) if m.contains("weight is 0")),
            "{err}"
        );

        let mut policy = one(dest(None, None, 1));
        policy.routes[0].mirror = Some(Mirror {
            service: "ghost".into(),
            percent: 100,
        });
        let err = translate(&with_policy(policy), &sidecar()).unwrap_err();
        assert!(err.to_string().contains("mirror"), "{err}");
    }

    #[test]
    fn translation_is_deterministic() {
        let mut state = mesh();
        put(
            &mut state,
            "default",
            "web",
            ConfigSpec::TrafficPolicy(full_policy()),
        );
        let mut proxy = sidecar();
        proxy.kind = ProxyKind::Sidecar {
            outbound_port: 15001,
            inbound: Some((15006, 8080)),
        };
        for proxy in [proxy, proxyless()] {
            let a = translate(&state, &proxy).unwrap();
            let b = translate(&state.clone(), &proxy).unwrap();
            assert_eq!(a, b);
            for type_url in [CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE] {
                let (a, b) = (a.of_type(type_url).unwrap(), b.of_type(type_url).unwrap());
                for (name, any) in a {
                    assert_eq!(any.value, b[name].value, "{type_url} {name}");
                }
            }
        }
    }

    #[test]
    fn durations_convert_exactly() {
        assert_eq!(
            duration(DurationSpec::from_millis(61_001)),
            Duration {
                seconds: 61,
                nanos: 1_000_000
            }
        );
        assert_eq!(duration(DurationSpec::ZERO), Duration::default());
    }

    #[test]
    fn locality_failover_orders_priorities_by_the_proxy_region() {
        let mut state = RegistryState::default();
        service(&mut state, "default", "web", &[(8080, Protocol::Http)]);
        let h = HealthStatus::Healthy;
        endpoint(
            &mut state,
            "web",
            "eu-a",
            "10.0.0.1",
            ("eu", "eu-1a"),
            1,
            0,
            "v1",
            h,
        );
        endpoint(
            &mut state,
            "web",
            "us-a",
            "10.0.0.2",
            ("us", "us-1a"),
            1,
            0,
            "v1",
            h,
        );
        endpoint(
            &mut state,
            "web",
            "ap-a",
            "10.0.0.3",
            ("ap", "ap-1a"),
            1,
            0,
            "v1",
            h,
        );
        put(
            &mut state,
            "default",
            "web",
            ConfigSpec::DestinationPolicy(DestinationPolicy {
                locality_failover: vec![crate::model::config::LocalityFailover {
                    from: "eu".into(),
                    to: "us".into(),
                }],
                ..Default::default()
            }),
        );
        let priorities = |region: Option<&str>| -> Vec<(String, u32)> {
            let proxy = ProxyIdentity {
                region: region.map(String::from),
                ..sidecar()
            };
            let snap = translated(&state, &proxy);
            let mut out: Vec<(String, u32)> = cla(&snap, "web.default")
                .endpoints
                .iter()
                .map(|l| (l.locality.clone().unwrap().region, l.priority))
                .collect();
            out.sort();
            out
        };
        // A proxy in eu: its own region first, then the failover region, then the rest.
        assert_eq!(
            priorities(Some("eu")),
            [
                ("ap".to_string(), 2),
                ("eu".to_string(), 0),
                ("us".to_string(), 1)
            ]
        );
        // A proxy in us has no rule: its own region first, every other region next.
        assert_eq!(
            priorities(Some("us")),
            [
                ("ap".to_string(), 1),
                ("eu".to_string(), 1),
                ("us".to_string(), 0)
            ]
        );
        // Without a region, locality does not change priorities.
        assert_eq!(
            priorities(None),
            [
                ("ap".to_string(), 0),
                ("eu".to_string(), 0),
                ("us".to_string(), 0)
            ]
        );
    }
}
