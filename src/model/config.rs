//! Typed per-service configuration: traffic routing, destination policy and
//! health checking. Each object is named after the service it configures.
//!
//! Optional settings are `Option`s (never `skip_serializing_if`) so the same
//! structs can be stored in the binary Raft log; document rendering strips
//! the resulting nulls instead.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::duration::DurationSpec;
use super::endpoint::{is_locality_part, HealthStatus};
use super::string_map::StringMap;
use super::validation::{
    entry_path, first_duplicate, is_dns_subdomain, is_http_token, validate_labels,
    validate_max_entries, validate_name, validate_range, ParseEnumError, ValidationError,
};

/// Most routes in one traffic policy.
pub const MAX_ROUTES: usize = 128;
/// Most weighted destinations in one route.
pub const MAX_DESTINATIONS: usize = 16;
/// Destination weight bounds (inclusive).
pub const DESTINATION_WEIGHT_RANGE: (u32, u32) = (1, 1000);
/// Most header matchers in one route match.
pub const MAX_HEADER_MATCHES: usize = 16;
/// Most hash policies in one route.
pub const MAX_HASH_POLICIES: usize = 8;
/// Most retry attempts per request.
pub const MAX_RETRY_ATTEMPTS: u32 = 10;
/// Most subsets in one destination policy.
pub const MAX_SUBSETS: usize = 32;
/// Most locality failover rules in one destination policy.
pub const MAX_LOCALITY_FAILOVER: usize = 32;
/// Upper bound of every circuit-breaker threshold.
pub const MAX_CIRCUIT_BREAKER_LIMIT: u32 = 1_000_000;
/// Longest path, path prefix, regex or header value.
pub const MAX_MATCH_LEN: usize = 1024;
/// Most expected statuses or headers in an HTTP health check.
pub const MAX_HTTP_CHECK_ENTRIES: usize = 32;
/// Health-check interval bounds (inclusive).
pub const HEALTH_CHECK_INTERVAL_RANGE: (DurationSpec, DurationSpec) = (
    DurationSpec::from_millis(100),
    DurationSpec::from_millis(60 * 60 * 1000),
);
/// Shortest `deregisterAfter`.
/// Consul's floor is one minute; ours is lower so that operators (and tests) can reap dead
/// endpoints quickly, while still well above any sane check interval.
pub const MIN_DEREGISTER_AFTER: DurationSpec = DurationSpec::from_secs(5);
/// Envoy's default healthy panic threshold, in percent.
pub const DEFAULT_PANIC_THRESHOLD: u32 = 50;

/// The kinds of configuration object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ConfigKind {
    /// Routing rules: [`TrafficPolicy`].
    TrafficPolicy,
    /// Upstream cluster settings: [`DestinationPolicy`].
    DestinationPolicy,
    /// Active health checking: [`HealthCheckSpec`].
    HealthCheck,
}

impl ConfigKind {
    /// All kinds, in declaration order.
    pub const ALL: [ConfigKind; 3] = [
        ConfigKind::TrafficPolicy,
        ConfigKind::DestinationPolicy,
        ConfigKind::HealthCheck,
    ];

    /// Canonical document spelling, e.g. `TrafficPolicy`.
    pub const fn as_str(self) -> &'static str {
        match self {
            ConfigKind::TrafficPolicy => "TrafficPolicy",
            ConfigKind::DestinationPolicy => "DestinationPolicy",
            ConfigKind::HealthCheck => "HealthCheck",
        }
    }

    /// Lowercase plural, as used in CLI commands and API paths.
    pub const fn plural(self) -> &'static str {
        match self {
            ConfigKind::TrafficPolicy => "trafficpolicies",
            ConfigKind::DestinationPolicy => "destinationpolicies",
            ConfigKind::HealthCheck => "healthchecks",
        }
    }
}

impl fmt::Display for ConfigKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ConfigKind {
    type Err = ParseEnumError;

    /// Accepts the singular or plural, in any letter case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ConfigKind::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(s) || k.plural().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                ParseEnumError::new("config kind", s, &ConfigKind::ALL.map(ConfigKind::as_str))
            })
    }
}

/// A configuration object's body, tagged by kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConfigSpec {
    /// Routing rules.
    TrafficPolicy(TrafficPolicy),
    /// Upstream cluster settings.
    DestinationPolicy(DestinationPolicy),
    /// Active health checking.
    HealthCheck(HealthCheckSpec),
}

impl ConfigSpec {
    /// Which kind this spec is.
    pub fn kind(&self) -> ConfigKind {
        match self {
            ConfigSpec::TrafficPolicy(_) => ConfigKind::TrafficPolicy,
            ConfigSpec::DestinationPolicy(_) => ConfigKind::DestinationPolicy,
            ConfigSpec::HealthCheck(_) => ConfigKind::HealthCheck,
        }
    }

    /// Checks the spec on its own; references to subsets and services are
    /// not resolved because that needs registry state.
    pub fn validate(&self) -> Result<(), ValidationError> {
        match self {
            ConfigSpec::TrafficPolicy(s) => s.validate(),
            ConfigSpec::DestinationPolicy(s) => s.validate(),
            ConfigSpec::HealthCheck(s) => s.validate(),
        }
    }
}

fn exactly_one(at: &str, options: &[(&str, bool)]) -> Result<(), ValidationError> {
    if options.iter().filter(|(_, set)| *set).count() == 1 {
        Ok(())
    } else {
        let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        Err(ValidationError::new(
            at,
            format!("must set exactly one of {}", names.join(", ")),
        ))
    }
}

fn positive(at: &str, d: DurationSpec) -> Result<(), ValidationError> {
    if d.as_millis() == 0 {
        Err(ValidationError::new(at, "must be greater than 0"))
    } else {
        Ok(())
    }
}

fn percent(at: &str, p: u32) -> Result<(), ValidationError> {
    validate_range(at, p, 0, 100)
}

fn max_len(at: &str, v: &str, max: usize) -> Result<(), ValidationError> {
    if v.len() > max {
        Err(ValidationError::new(
            at,
            format!("must be at most {max} bytes"),
        ))
    } else {
        Ok(())
    }
}

fn http_path(at: &str, v: &str) -> Result<(), ValidationError> {
    if !v.starts_with('/') {
        return Err(ValidationError::new(at, "must start with '/'"));
    }
    max_len(at, v, MAX_MATCH_LEN)
}

fn header_name(at: &str, v: &str) -> Result<(), ValidationError> {
    if is_http_token(v) {
        Ok(())
    } else {
        Err(ValidationError::new(
            at,
            "must be an HTTP header name (1-256 token characters, no spaces or ':' except a \
             leading pseudo-header ':')",
        ))
    }
}

fn must_be_true(at: &str, v: Option<bool>) -> Result<(), ValidationError> {
    if v == Some(false) {
        Err(ValidationError::new(at, "must be true when set"))
    } else {
        Ok(())
    }
}

fn default_destination_weight() -> u32 {
    1
}

fn default_percent() -> u32 {
    100
}

fn default_expected_statuses() -> Vec<u32> {
    vec![200]
}

// ---------------------------------------------------------------------------
// TrafficPolicy
// ---------------------------------------------------------------------------

/// Ordered routing rules for requests to a service; the first match wins.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficPolicy {
    /// Routes, evaluated in order (1..=128).
    #[serde(default)]
    pub routes: Vec<Route>,
}

impl TrafficPolicy {
    /// Checks every route; paths start at `spec`.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.routes.is_empty() || self.routes.len() > MAX_ROUTES {
            return Err(ValidationError::new(
                "spec.routes",
                format!("must have between 1 and {MAX_ROUTES} entries"),
            ));
        }
        for (i, r) in self.routes.iter().enumerate() {
            r.check(&format!("spec.routes[{i}]"))?;
        }
        Ok(())
    }
}

/// One routing rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Route {
    /// Which requests this route applies to.
    #[serde(rename = "match")]
    pub matcher: RouteMatch,
    /// Weighted targets (1..=16); traffic splits by relative weight.
    #[serde(default)]
    pub destinations: Vec<Destination>,
    /// Retry behaviour; proxy default when absent.
    #[serde(default)]
    pub retries: Option<RetryPolicy>,
    /// Whole-request timeout; proxy default when absent.
    #[serde(default)]
    pub timeout: Option<DurationSpec>,
    /// Consistent-hash inputs for ring_hash/maglev balancing.
    #[serde(default)]
    pub hash_policy: Vec<HashPolicy>,
    /// Fault injection for testing resilience.
    #[serde(default)]
    pub fault: Option<FaultInjection>,
    /// Shadow a share of traffic to another service.
    #[serde(default)]
    pub mirror: Option<Mirror>,
}

impl Route {
    fn check(&self, at: &str) -> Result<(), ValidationError> {
        self.matcher.check(&format!("{at}.match"))?;

        let field = format!("{at}.destinations");
        if self.destinations.is_empty() || self.destinations.len() > MAX_DESTINATIONS {
            return Err(ValidationError::new(
                field,
                format!("must have between 1 and {MAX_DESTINATIONS} entries"),
            ));
        }
        for (i, d) in self.destinations.iter().enumerate() {
            d.check(&format!("{field}[{i}]"))?;
        }
        if let Some((first, dup)) = first_duplicate(&self.destinations, |d| {
            (d.service.clone(), d.subset.clone())
        }) {
            return Err(ValidationError::new(
                format!("{field}[{dup}]"),
                format!("must be unique (same service and subset as {field}[{first}])"),
            ));
        }

        if let Some(r) = &self.retries {
            r.check(&format!("{at}.retries"))?;
        }
        if let Some(t) = self.timeout {
            positive(&format!("{at}.timeout"), t)?;
        }
        let field = format!("{at}.hashPolicy");
        validate_max_entries(&field, self.hash_policy.len(), MAX_HASH_POLICIES)?;
        for (i, h) in self.hash_policy.iter().enumerate() {
            h.check(&format!("{field}[{i}]"))?;
        }
        if let Some(f) = &self.fault {
            f.check(&format!("{at}.fault"))?;
        }
        if let Some(m) = &self.mirror {
            validate_name(&format!("{at}.mirror.service"), &m.service)?;
            percent(&format!("{at}.mirror.percent"), m.percent)?;
        }
        Ok(())
    }
}

/// Request predicate: exactly one path condition plus optional header conditions.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteMatch {
    /// Exact path.
    #[serde(default)]
    pub path: Option<String>,
    /// Path prefix; `/` matches everything.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// RE2 regular expression over the path (syntax checked by the proxy).
    #[serde(default)]
    pub path_regex: Option<String>,
    /// Header conditions; all must hold.
    #[serde(default)]
    pub headers: Vec<HeaderMatch>,
}

impl RouteMatch {
    fn check(&self, at: &str) -> Result<(), ValidationError> {
        exactly_one(
            at,
            &[
                ("path", self.path.is_some()),
                ("pathPrefix", self.path_prefix.is_some()),
                ("pathRegex", self.path_regex.is_some()),
            ],
        )?;
        if let Some(p) = &self.path {
            http_path(&format!("{at}.path"), p)?;
        }
        if let Some(p) = &self.path_prefix {
            http_path(&format!("{at}.pathPrefix"), p)?;
        }
        if let Some(r) = &self.path_regex {
            non_empty_pattern(&format!("{at}.pathRegex"), r)?;
        }
        let field = format!("{at}.headers");
        validate_max_entries(&field, self.headers.len(), MAX_HEADER_MATCHES)?;
        for (i, h) in self.headers.iter().enumerate() {
            h.check(&format!("{field}[{i}]"))?;
        }
        Ok(())
    }
}

fn non_empty_pattern(at: &str, v: &str) -> Result<(), ValidationError> {
    if v.is_empty() {
        return Err(ValidationError::new(at, "must not be empty"));
    }
    max_len(at, v, MAX_MATCH_LEN)
}

/// Condition on one request header; exactly one of the match forms is set.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderMatch {
    /// Header name (case-insensitive).
    pub name: String,
    /// Value equals this string.
    #[serde(default)]
    pub exact: Option<String>,
    /// Value starts with this string.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Value matches this RE2 regular expression.
    #[serde(default)]
    pub regex: Option<String>,
    /// Header is present with any value; only `true` is meaningful.
    #[serde(default)]
    pub present: Option<bool>,
}

impl HeaderMatch {
    fn check(&self, at: &str) -> Result<(), ValidationError> {
        header_name(&format!("{at}.name"), &self.name)?;
        exactly_one(
            at,
            &[
                ("exact", self.exact.is_some()),
                ("prefix", self.prefix.is_some()),
                ("regex", self.regex.is_some()),
                ("present", self.present.is_some()),
            ],
        )?;
        if let Some(v) = &self.exact {
            max_len(&format!("{at}.exact"), v, MAX_MATCH_LEN)?;
        }
        if let Some(v) = &self.prefix {
            non_empty_pattern(&format!("{at}.prefix"), v)?;
        }
        if let Some(v) = &self.regex {
            non_empty_pattern(&format!("{at}.regex"), v)?;
        }
        must_be_true(&format!("{at}.present"), self.present)
    }
}

/// A weighted traffic target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Destination {
    /// Target service; the configured service itself when absent.
    #[serde(default)]
    pub service: Option<String>,
    /// Subset of the target service; all endpoints when absent.
    #[serde(default)]
    pub subset: Option<String>,
    /// Relative weight, 1..=1000 (default 1).
    #[serde(default = "default_destination_weight")]
    pub weight: u32,
}

impl Destination {
    fn check(&self, at: &str) -> Result<(), ValidationError> {
        if let Some(s) = &self.service {
            validate_name(&format!("{at}.service"), s)?;
        }
        if let Some(s) = &self.subset {
            validate_name(&format!("{at}.subset"), s)?;
        }
        let (min, max) = DESTINATION_WEIGHT_RANGE;
        validate_range(&format!("{at}.weight"), self.weight, min, max)
    }
}

/// Condition under which a request is retried (Envoy `retry_on` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RetryOn {
    /// Any 5xx response.
    #[serde(rename = "5xx")]
    FiveXx,
    /// 502, 503 or 504.
    GatewayError,
    /// Connection reset or no response.
    Reset,
    /// Connection failed to establish.
    ConnectFailure,
    /// Retriable 4xx (409).
    #[serde(rename = "retriable-4xx")]
    Retriable4xx,
    /// HTTP/2 REFUSED_STREAM.
    RefusedStream,
    /// Status codes configured on the proxy.
    RetriableStatusCodes,
    /// gRPC CANCELLED.
    Cancelled,
    /// gRPC DEADLINE_EXCEEDED.
    DeadlineExceeded,
    /// gRPC INTERNAL.
    Internal,
    /// gRPC RESOURCE_EXHAUSTED.
    ResourceExhausted,
    /// gRPC UNAVAILABLE.
    Unavailable,
}

/// How failed requests are retried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryPolicy {
    /// Retries after the first try, 0..=10.
    pub attempts: u32,
    /// Timeout of each try; the route timeout still bounds the total.
    #[serde(default)]
    pub per_try_timeout: Option<DurationSpec>,
    /// Conditions that trigger a retry; proxy default when empty.
    #[serde(default)]
    pub retry_on: Vec<RetryOn>,
}

impl RetryPolicy {
    fn check(&self, at: &str) -> Result<(), ValidationError> {
        validate_range(
            &format!("{at}.attempts"),
            self.attempts,
            0,
            MAX_RETRY_ATTEMPTS,
        )?;
        if let Some(t) = self.per_try_timeout {
            positive(&format!("{at}.perTryTimeout"), t)?;
        }
        if let Some((_, dup)) = first_duplicate(&self.retry_on, |r| *r) {
            return Err(ValidationError::new(
                format!("{at}.retryOn[{dup}]"),
                "must be unique",
            ));
        }
        Ok(())
    }
}

/// One input to a consistent hash; exactly one source is set.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HashPolicy {
    /// Hash on this request header's value.
    #[serde(default)]
    pub header: Option<String>,
    /// Hash on this cookie, which the proxy sets when `ttl` is given.
    #[serde(default)]
    pub cookie: Option<CookieHash>,
    /// Hash on the client address; only `true` is meaningful.
    #[serde(default)]
    pub source_ip: Option<bool>,
}

impl HashPolicy {
    fn check(&self, at: &str) -> Result<(), ValidationError> {
        exactly_one(
            at,
            &[
                ("header", self.header.is_some()),
                ("cookie", self.cookie.is_some()),
                ("sourceIp", self.source_ip.is_some()),
            ],
        )?;
        if let Some(h) = &self.header {
            header_name(&format!("{at}.header"), h)?;
        }
        if let Some(c) = &self.cookie {
            if !is_http_token(&c.name) || c.name.starts_with(':') {
                return Err(ValidationError::new(
                    format!("{at}.cookie.name"),
                    "must be a cookie name (1-256 token characters)",
                ));
            }
        }
        must_be_true(&format!("{at}.sourceIp"), self.source_ip)
    }
}

/// Cookie-based hashing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CookieHash {
    /// Cookie name.
    pub name: String,
    /// Lifetime of a proxy-generated cookie; none is generated when absent.
    #[serde(default)]
    pub ttl: Option<DurationSpec>,
}

/// Injected delays and aborts; at least one is set.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultInjection {
    /// Delay a share of requests.
    #[serde(default)]
    pub delay: Option<DelayFault>,
    /// Fail a share of requests.
    #[serde(default)]
    pub abort: Option<AbortFault>,
}

impl FaultInjection {
    fn check(&self, at: &str) -> Result<(), ValidationError> {
        if self.delay.is_none() && self.abort.is_none() {
            return Err(ValidationError::new(
                at,
                "must set at least one of delay, abort",
            ));
        }
        if let Some(d) = &self.delay {
            positive(&format!("{at}.delay.fixedDelay"), d.fixed_delay)?;
            percent(&format!("{at}.delay.percent"), d.percent)?;
        }
        if let Some(a) = &self.abort {
            validate_range(&format!("{at}.abort.httpStatus"), a.http_status, 200, 599)?;
            percent(&format!("{at}.abort.percent"), a.percent)?;
        }
        Ok(())
    }
}

/// Fixed delay before forwarding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DelayFault {
    /// How long to delay.
    pub fixed_delay: DurationSpec,
    /// Share of requests delayed, 0..=100 (default 100).
    #[serde(default = "default_percent")]
    pub percent: u32,
}

/// Immediate failure instead of forwarding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AbortFault {
    /// Status returned, 200..=599.
    pub http_status: u32,
    /// Share of requests aborted, 0..=100 (default 100).
    #[serde(default = "default_percent")]
    pub percent: u32,
}

/// Fire-and-forget copy of traffic to another service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mirror {
    /// Service receiving the copies.
    pub service: String,
    /// Share of requests mirrored, 0..=100 (default 100).
    #[serde(default = "default_percent")]
    pub percent: u32,
}

// ---------------------------------------------------------------------------
// DestinationPolicy
// ---------------------------------------------------------------------------

/// How clients connect to and balance across a service's endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationPolicy {
    /// Named endpoint groups that routes can target (at most 32).
    #[serde(default)]
    pub subsets: Vec<Subset>,
    /// Balancing algorithm; round robin when absent.
    #[serde(default)]
    pub load_balancer: Option<LoadBalancer>,
    /// Connection and request limits.
    #[serde(default)]
    pub circuit_breaker: Option<CircuitBreaker>,
    /// Ejection of misbehaving endpoints.
    #[serde(default)]
    pub outlier_detection: Option<OutlierDetection>,
    /// TCP connect timeout; proxy default when absent.
    #[serde(default)]
    pub connect_timeout: Option<DurationSpec>,
    /// Region to fail over to when a region has no healthy endpoints.
    #[serde(default)]
    pub locality_failover: Vec<LocalityFailover>,
}

impl DestinationPolicy {
    /// Checks every section; paths start at `spec`.
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_max_entries("spec.subsets", self.subsets.len(), MAX_SUBSETS)?;
        for (i, s) in self.subsets.iter().enumerate() {
            let at = format!("spec.subsets[{i}]");
            validate_name(&format!("{at}.name"), &s.name)?;
            if s.labels.is_empty() {
                return Err(ValidationError::new(
                    format!("{at}.labels"),
                    "must not be empty",
                ));
            }
            validate_labels(&format!("{at}.labels"), &s.labels)?;
        }
        if let Some((first, dup)) = first_duplicate(&self.subsets, |s| s.name.clone()) {
            return Err(ValidationError::new(
                format!("spec.subsets[{dup}].name"),
                format!("must be unique (also used by spec.subsets[{first}])"),
            ));
        }

        if let Some(lb) = &self.load_balancer {
            if let Some(h) = &lb.hash_on {
                if !matches!(
                    lb.policy,
                    LoadBalancerPolicy::RingHash | LoadBalancerPolicy::Maglev
                ) {
                    return Err(ValidationError::new(
                        "spec.loadBalancer.hashOn",
                        "is only allowed when policy is ring_hash or maglev",
                    ));
                }
                h.check("spec.loadBalancer.hashOn")?;
            }
        }

        if let Some(cb) = &self.circuit_breaker {
            for (name, value) in [
                ("maxConnections", cb.max_connections),
                ("maxPendingRequests", cb.max_pending_requests),
                ("maxRequests", cb.max_requests),
                ("maxRetries", cb.max_retries),
            ] {
                if let Some(v) = value {
                    validate_range(
                        &format!("spec.circuitBreaker.{name}"),
                        v,
                        1,
                        MAX_CIRCUIT_BREAKER_LIMIT,
                    )?;
                }
            }
        }

        if let Some(od) = &self.outlier_detection {
            if let Some(n) = od.consecutive_5xx {
                validate_range("spec.outlierDetection.consecutive5xx", n, 1, 1000)?;
            }
            if let Some(d) = od.interval {
                positive("spec.outlierDetection.interval", d)?;
            }
            if let Some(d) = od.base_ejection_time {
                positive("spec.outlierDetection.baseEjectionTime", d)?;
            }
            if let Some(p) = od.max_ejection_percent {
                percent("spec.outlierDetection.maxEjectionPercent", p)?;
            }
        }

        if let Some(t) = self.connect_timeout {
            positive("spec.connectTimeout", t)?;
        }

        validate_max_entries(
            "spec.localityFailover",
            self.locality_failover.len(),
            MAX_LOCALITY_FAILOVER,
        )?;
        for (i, f) in self.locality_failover.iter().enumerate() {
            let at = format!("spec.localityFailover[{i}]");
            for (name, region) in [("from", &f.from), ("to", &f.to)] {
                if region.is_empty() || !is_locality_part(region) {
                    return Err(ValidationError::new(
                        format!("{at}.{name}"),
                        "must be a region name (1-63 characters of letters, digits, '.', '_', '-')",
                    ));
                }
            }
            if f.from == f.to {
                return Err(ValidationError::new(
                    format!("{at}.to"),
                    "must differ from `from`",
                ));
            }
        }
        if let Some((first, dup)) =
            first_duplicate(&self.locality_failover, |f| (f.from.clone(), f.to.clone()))
        {
            return Err(ValidationError::new(
                format!("spec.localityFailover[{dup}]"),
                format!("must be unique (duplicates spec.localityFailover[{first}])"),
            ));
        }
        Ok(())
    }
}

/// A named group of endpoints selected by labels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subset {
    /// DNS-1123 label, unique within the policy.
    pub name: String,
    /// Endpoints whose labels include all of these belong to the subset.
    #[serde(default)]
    pub labels: StringMap,
}

/// Load-balancing algorithm.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalancerPolicy {
    /// Rotate through endpoints.
    #[default]
    RoundRobin,
    /// Prefer endpoints with fewer active requests.
    LeastRequest,
    /// Pick uniformly at random.
    Random,
    /// Consistent hashing on a ring (sticky sessions).
    RingHash,
    /// Maglev consistent hashing.
    Maglev,
}

/// Load-balancer settings.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancer {
    /// Algorithm (default round_robin).
    #[serde(default)]
    pub policy: LoadBalancerPolicy,
    /// Default hash input for ring_hash/maglev when routes set none.
    #[serde(default)]
    pub hash_on: Option<HashPolicy>,
}

/// Limits beyond which requests fail fast; each absent limit uses the proxy default.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CircuitBreaker {
    /// Concurrent connections, 1..=1000000.
    #[serde(default)]
    pub max_connections: Option<u32>,
    /// Requests queued waiting for a connection, 1..=1000000.
    #[serde(default)]
    pub max_pending_requests: Option<u32>,
    /// Concurrent requests, 1..=1000000.
    #[serde(default)]
    pub max_requests: Option<u32>,
    /// Concurrent retries, 1..=1000000.
    #[serde(default)]
    pub max_retries: Option<u32>,
}

/// Passive health checking: eject endpoints that keep failing.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    /// Consecutive 5xx responses before ejection, 1..=1000.
    #[serde(default, rename = "consecutive5xx")]
    pub consecutive_5xx: Option<u32>,
    /// How often ejection decisions are made.
    #[serde(default)]
    pub interval: Option<DurationSpec>,
    /// Minimum ejection time; grows with repeated ejections.
    #[serde(default)]
    pub base_ejection_time: Option<DurationSpec>,
    /// Most endpoints that may be ejected at once, 0..=100 percent.
    #[serde(default)]
    pub max_ejection_percent: Option<u32>,
}

/// Failover from one region to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityFailover {
    /// Region whose clients fail over.
    pub from: String,
    /// Region they fail over to.
    pub to: String,
}

// ---------------------------------------------------------------------------
// HealthCheck
// ---------------------------------------------------------------------------

/// Active health checking of a service's endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthCheckSpec {
    /// HTTP check; exactly one of `http`, `tcp`, `grpc` is set.
    #[serde(default)]
    pub http: Option<HttpHealthCheck>,
    /// TCP connect check.
    #[serde(default)]
    pub tcp: Option<TcpHealthCheck>,
    /// gRPC health-protocol check.
    #[serde(default)]
    pub grpc: Option<GrpcHealthCheck>,
    /// Time between checks, 100ms..=1h.
    pub interval: DurationSpec,
    /// Time to wait for a check, greater than 0 and at most `interval`.
    pub timeout: DurationSpec,
    /// Random extra delay per check, at most `interval`.
    #[serde(default)]
    pub jitter: Option<DurationSpec>,
    /// Consecutive successes before marking healthy, 1..=100.
    pub healthy_threshold: u32,
    /// Consecutive failures before marking unhealthy, 1..=100.
    pub unhealthy_threshold: u32,
    /// Status of newly registered endpoints before their first check.
    #[serde(default)]
    pub initial_status: Option<HealthStatus>,
    /// Remove endpoints that stay unhealthy this long (at least 5s).
    #[serde(default)]
    pub deregister_after: Option<DurationSpec>,
    /// Percentage of routable endpoints below which routing ignores health and uses every
    /// endpoint (Envoy's panic mode), 0..=100; default 50.
    #[serde(default)]
    pub panic_threshold: Option<u32>,
}

impl HealthCheckSpec {
    /// The panic threshold in percent (Envoy's default, 50, when unset).
    pub fn effective_panic_threshold(&self) -> u32 {
        self.panic_threshold.unwrap_or(DEFAULT_PANIC_THRESHOLD)
    }
}

impl HealthCheckSpec {
    /// Checks every field; paths start at `spec`.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.tcp.is_none() && self.http.is_none() && self.grpc.is_none() {
            return Err(ValidationError::new(
                "spec",
                "must set exactly one of http, tcp, grpc (a plain TCP check is `tcp: {}`)",
            ));
        }
        exactly_one(
            "spec",
            &[
                ("http", self.http.is_some()),
                ("tcp", self.tcp.is_some()),
                ("grpc", self.grpc.is_some()),
            ],
        )?;
        if let Some(h) = &self.http {
            h.check("spec.http")?;
        }
        if let Some(g) = &self.grpc {
            max_len("spec.grpc.service", &g.service, 256)?;
        }

        let (min, max) = HEALTH_CHECK_INTERVAL_RANGE;
        validate_range("spec.interval", self.interval, min, max)?;
        // A probe that may take as long as the interval would overlap the next one.
        if self.timeout.as_millis() == 0 || self.timeout >= self.interval {
            return Err(ValidationError::new(
                "spec.timeout",
                format!(
                    "must be greater than 0 and less than interval ({})",
                    self.interval
                ),
            ));
        }
        if let Some(j) = self.jitter {
            if j > self.interval {
                return Err(ValidationError::new(
                    "spec.jitter",
                    format!("must be at most interval ({})", self.interval),
                ));
            }
        }
        validate_range("spec.healthyThreshold", self.healthy_threshold, 1, 100)?;
        validate_range("spec.unhealthyThreshold", self.unhealthy_threshold, 1, 100)?;
        if let Some(p) = self.panic_threshold {
            validate_range("spec.panicThreshold", p, 0, 100)?;
        }
        if let Some(d) = self.deregister_after {
            if d < MIN_DEREGISTER_AFTER {
                return Err(ValidationError::new(
                    "spec.deregisterAfter",
                    format!("must be at least {MIN_DEREGISTER_AFTER}"),
                ));
            }
        }
        Ok(())
    }
}

/// HTTP GET health check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpHealthCheck {
    /// Request path; must start with `/`.
    pub path: String,
    /// Statuses counted as healthy (default `[200]`), each 100..=599.
    #[serde(default = "default_expected_statuses")]
    pub expected_statuses: Vec<u32>,
    /// Host header; the endpoint address when absent.
    #[serde(default)]
    pub host: Option<String>,
    /// Extra request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

impl HttpHealthCheck {
    fn check(&self, at: &str) -> Result<(), ValidationError> {
        http_path(&format!("{at}.path"), &self.path)?;
        let field = format!("{at}.expectedStatuses");
        if self.expected_statuses.is_empty() {
            return Err(ValidationError::new(field, "must not be empty"));
        }
        validate_max_entries(&field, self.expected_statuses.len(), MAX_HTTP_CHECK_ENTRIES)?;
        for (i, s) in self.expected_statuses.iter().enumerate() {
            validate_range(&format!("{field}[{i}]"), *s, 100, 599)?;
        }
        if let Some(h) = &self.host {
            // Allow "host" or "host:port"; the port part is checked loosely.
            let name = h.rsplit_once(':').map_or(h.as_str(), |(n, _)| n);
            if !is_dns_subdomain(name) {
                return Err(ValidationError::new(
                    format!("{at}.host"),
                    "must be a DNS-1123 subdomain, optionally followed by ':port'",
                ));
            }
        }
        let field = format!("{at}.headers");
        validate_max_entries(&field, self.headers.len(), MAX_HTTP_CHECK_ENTRIES)?;
        for (k, v) in &self.headers {
            header_name(&entry_path(&field, k), k)?;
            if v.len() > MAX_MATCH_LEN || v.chars().any(|c| c.is_control()) {
                return Err(ValidationError::new(
                    entry_path(&field, k),
                    format!(
                        "value must be at most {MAX_MATCH_LEN} bytes without control characters"
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// TCP connect health check; it has no settings.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpHealthCheck {}

/// gRPC health-checking-protocol check.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcHealthCheck {
    /// Service name sent in the check; empty asks about the whole server.
    #[serde(default)]
    pub service: String,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const TRAFFIC_YAML: &str = r#"
routes:
  - match: {pathPrefix: /}
    destinations: [{subset: v1, weight: 80}, {subset: v2, weight: 20}]
    retries: {attempts: 3, perTryTimeout: 500ms, retryOn: [5xx, connect-failure]}
    timeout: 2s
    hashPolicy: [{header: x-user}]
    fault: {delay: {fixedDelay: 1s, percent: 10}, abort: {httpStatus: 503, percent: 5}}
    mirror: {service: web-shadow, percent: 10}
  - match: {path: /exact, headers: [{name: x-user, exact: bob}, {name: x-canary, present: true}]}
    destinations: [{service: other, weight: 1}]
  - match: {pathRegex: "^/a.*", headers: [{name: x-a, prefix: b}, {name: x-b, regex: "c+"}]}
    destinations: [{}]
    hashPolicy: [{cookie: {name: session, ttl: 1h}}, {sourceIp: true}]
"#;

    pub(crate) const DESTINATION_YAML: &str = r#"
subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
loadBalancer: {policy: ring_hash, hashOn: {header: x-user}}
circuitBreaker: {maxConnections: 100, maxPendingRequests: 100, maxRequests: 1000, maxRetries: 3}
outlierDetection: {consecutive5xx: 5, interval: 10s, baseEjectionTime: 30s, maxEjectionPercent: 50}
connectTimeout: 1s
localityFailover: [{from: eu, to: us}]
"#;

    pub(crate) const HEALTH_YAML: &str = r#"
http: {path: /healthz, expectedStatuses: [200], host: web.internal, headers: {x-probe: bowline}}
interval: 1s
timeout: 500ms
jitter: 100ms
healthyThreshold: 2
unhealthyThreshold: 3
initialStatus: unknown
deregisterAfter: 5m
"#;

    fn traffic() -> TrafficPolicy {
        serde_yaml::from_str(TRAFFIC_YAML).unwrap()
    }
    fn destination() -> DestinationPolicy {
        serde_yaml::from_str(DESTINATION_YAML).unwrap()
    }
    fn health() -> HealthCheckSpec {
        serde_yaml::from_str(HEALTH_YAML).unwrap()
    }

    fn tp_err(mutate: impl FnOnce(&mut TrafficPolicy)) -> ValidationError {
        let mut t = traffic();
        mutate(&mut t);
        t.validate().unwrap_err()
    }
    fn dp_err(mutate: impl FnOnce(&mut DestinationPolicy)) -> ValidationError {
        let mut d = destination();
        mutate(&mut d);
        d.validate().unwrap_err()
    }
    fn hc_err(mutate: impl FnOnce(&mut HealthCheckSpec)) -> ValidationError {
        let mut h = health();
        mutate(&mut h);
        h.validate().unwrap_err()
    }

    #[test]
    fn kinds() {
        for (text, kind) in [
            ("TrafficPolicy", ConfigKind::TrafficPolicy),
            ("trafficpolicy", ConfigKind::TrafficPolicy),
            ("TrafficPolicies", ConfigKind::TrafficPolicy),
            ("destinationpolicy", ConfigKind::DestinationPolicy),
            ("DESTINATIONPOLICIES", ConfigKind::DestinationPolicy),
            ("healthcheck", ConfigKind::HealthCheck),
            ("HealthChecks", ConfigKind::HealthCheck),
        ] {
            assert_eq!(text.parse::<ConfigKind>().unwrap(), kind, "{text}");
        }
        for k in ConfigKind::ALL {
            assert_eq!(k.to_string(), k.as_str());
            assert_eq!(k.as_str().parse::<ConfigKind>().unwrap(), k);
        }
        let err = "route".parse::<ConfigKind>().unwrap_err().to_string();
        assert!(
            err.contains("TrafficPolicy, DestinationPolicy, HealthCheck"),
            "{err}"
        );
    }

    #[test]
    fn samples_parse_and_validate() {
        let t = traffic();
        t.validate().unwrap();
        let r = &t.routes[0];
        assert_eq!(r.matcher.path_prefix.as_deref(), Some("/"));
        assert_eq!(r.destinations[1].weight, 20);
        let retries = r.retries.as_ref().unwrap();
        assert_eq!(
            retries.retry_on,
            vec![RetryOn::FiveXx, RetryOn::ConnectFailure]
        );
        assert_eq!(
            retries.per_try_timeout,
            Some(DurationSpec::from_millis(500))
        );
        assert_eq!(
            r.fault
                .as_ref()
                .unwrap()
                .abort
                .as_ref()
                .unwrap()
                .http_status,
            503
        );
        assert_eq!(
            t.routes[2].destinations[0].weight, 1,
            "weight defaults to 1"
        );
        assert_eq!(t.routes[2].destinations[0].subset, None);

        let d = destination();
        d.validate().unwrap();
        assert_eq!(
            d.load_balancer.as_ref().unwrap().policy,
            LoadBalancerPolicy::RingHash
        );
        assert_eq!(
            d.outlier_detection.as_ref().unwrap().consecutive_5xx,
            Some(5)
        );

        let h = health();
        h.validate().unwrap();
        assert_eq!(h.initial_status, Some(HealthStatus::Unknown));

        let tcp: HealthCheckSpec = serde_yaml::from_str(
            "tcp: {}\ninterval: 100ms\ntimeout: 99ms\nhealthyThreshold: 1\nunhealthyThreshold: 100",
        )
        .unwrap();
        tcp.validate().unwrap();
        let grpc: HealthCheckSpec = serde_yaml::from_str(
            "grpc: {service: \"\"}\ninterval: 1h\ntimeout: 1s\nhealthyThreshold: 1\nunhealthyThreshold: 1",
        )
        .unwrap();
        grpc.validate().unwrap();
        let http: HealthCheckSpec = serde_yaml::from_str(
            "http: {path: /}\ninterval: 1s\ntimeout: 500ms\nhealthyThreshold: 1\nunhealthyThreshold: 1",
        )
        .unwrap();
        assert_eq!(http.http.as_ref().unwrap().expected_statuses, vec![200]);
        http.validate().unwrap();
    }

    #[test]
    fn every_retry_on_value_parses() {
        let all = "[5xx, gateway-error, reset, connect-failure, retriable-4xx, refused-stream, \
                   retriable-status-codes, cancelled, deadline-exceeded, internal, \
                   resource-exhausted, unavailable]";
        let parsed: Vec<RetryOn> = serde_yaml::from_str(all).unwrap();
        assert_eq!(parsed.len(), 12);
        let back = serde_json::to_string(&parsed).unwrap();
        assert!(
            back.contains("\"5xx\"") && back.contains("\"retriable-4xx\""),
            "{back}"
        );
        let err = serde_yaml::from_str::<Vec<RetryOn>>("[4xx]").unwrap_err();
        assert!(err.to_string().contains("4xx"), "{err}");
    }

    #[test]
    fn unknown_fields_are_named() {
        let err = serde_yaml::from_str::<TrafficPolicy>(
            "routes: [{match: {pathPrefix: /}, destinations: [{weight: 1, wieght: 2}]}]",
        )
        .unwrap_err();
        assert!(err.to_string().contains("wieght"), "{err}");
        let err = serde_yaml::from_str::<HealthCheckSpec>(
            "tcp: {port: 1}\ninterval: 1s\ntimeout: 1s\nhealthyThreshold: 1\nunhealthyThreshold: 1",
        )
        .unwrap_err();
        assert!(err.to_string().contains("port"), "{err}");
    }

    #[test]
    fn route_rules() {
        let e = tp_err(|t| t.routes.clear());
        assert_eq!(
            e.to_string(),
            "spec.routes: must have between 1 and 128 entries"
        );
        let e = tp_err(|t| t.routes = vec![t.routes[1].clone(); 129]);
        assert_eq!(e.field, "spec.routes");

        let e = tp_err(|t| t.routes[0].matcher.path_prefix = None);
        assert_eq!(
            e.to_string(),
            "spec.routes[0].match: must set exactly one of path, pathPrefix, pathRegex"
        );
        let e = tp_err(|t| t.routes[0].matcher.path = Some("/a".into()));
        assert_eq!(e.field, "spec.routes[0].match");
        let e = tp_err(|t| t.routes[1].matcher.path = Some("exact".into()));
        assert_eq!(
            e.to_string(),
            "spec.routes[1].match.path: must start with '/'"
        );
        let e = tp_err(|t| t.routes[0].matcher.path_prefix = Some("/".repeat(1025)));
        assert_eq!(e.field, "spec.routes[0].match.pathPrefix");
        let e = tp_err(|t| t.routes[2].matcher.path_regex = Some(String::new()));
        assert_eq!(e.field, "spec.routes[2].match.pathRegex");

        let e = tp_err(|t| t.routes[1].matcher.headers[0].exact = None);
        assert_eq!(e.field, "spec.routes[1].match.headers[0]");
        assert!(e.rule.contains("exact, prefix, regex, present"));
        let e = tp_err(|t| t.routes[1].matcher.headers[0].regex = Some("x".into()));
        assert_eq!(e.field, "spec.routes[1].match.headers[0]");
        let e = tp_err(|t| t.routes[1].matcher.headers[1].present = Some(false));
        assert_eq!(e.field, "spec.routes[1].match.headers[1].present");
        let e = tp_err(|t| t.routes[1].matcher.headers[0].name = "x user".into());
        assert_eq!(e.field, "spec.routes[1].match.headers[0].name");
        let e = tp_err(|t| t.routes[2].matcher.headers[0].prefix = Some(String::new()));
        assert_eq!(e.field, "spec.routes[2].match.headers[0].prefix");
        let e = tp_err(|t| {
            t.routes[1].matcher.headers = vec![t.routes[1].matcher.headers[0].clone(); 17]
        });
        assert_eq!(e.field, "spec.routes[1].match.headers");

        let e = tp_err(|t| t.routes[1].destinations.clear());
        assert_eq!(
            e.to_string(),
            "spec.routes[1].destinations: must have between 1 and 16 entries"
        );
        let e = tp_err(|t| {
            t.routes[0].destinations = (0..17)
                .map(|i| Destination {
                    service: None,
                    subset: Some(format!("s{i}")),
                    weight: 1,
                })
                .collect()
        });
        assert_eq!(e.field, "spec.routes[0].destinations");
        let e = tp_err(|t| t.routes[1].destinations[0].weight = 0);
        assert_eq!(
            e.to_string(),
            "spec.routes[1].destinations[0].weight: must be between 1 and 1000"
        );
        let e = tp_err(|t| t.routes[0].destinations[1].weight = 1001);
        assert_eq!(e.field, "spec.routes[0].destinations[1].weight");
        let e = tp_err(|t| t.routes[0].destinations[1].subset = Some("V2".into()));
        assert_eq!(e.field, "spec.routes[0].destinations[1].subset");
        let e = tp_err(|t| t.routes[1].destinations[0].service = Some("x_y".into()));
        assert_eq!(e.field, "spec.routes[1].destinations[0].service");
        let e = tp_err(|t| t.routes[0].destinations[1].subset = Some("v1".into()));
        assert_eq!(e.field, "spec.routes[0].destinations[1]");
        assert!(e.rule.contains("unique"));
    }

    #[test]
    fn route_policy_rules() {
        fn retries(t: &mut TrafficPolicy) -> &mut RetryPolicy {
            t.routes[0].retries.as_mut().unwrap()
        }
        let e = tp_err(|t| retries(t).attempts = 11);
        assert_eq!(
            e.to_string(),
            "spec.routes[0].retries.attempts: must be between 0 and 10"
        );
        let mut ok = traffic();
        retries(&mut ok).attempts = 0;
        ok.validate().unwrap();
        let e = tp_err(|t| retries(t).per_try_timeout = Some(DurationSpec::ZERO));
        assert_eq!(e.field, "spec.routes[0].retries.perTryTimeout");
        let e = tp_err(|t| retries(t).retry_on.push(RetryOn::FiveXx));
        assert_eq!(e.field, "spec.routes[0].retries.retryOn[2]");
        let e = tp_err(|t| t.routes[0].timeout = Some(DurationSpec::ZERO));
        assert_eq!(
            e.to_string(),
            "spec.routes[0].timeout: must be greater than 0"
        );

        let e = tp_err(|t| t.routes[0].hash_policy[0].source_ip = Some(true));
        assert_eq!(
            e.to_string(),
            "spec.routes[0].hashPolicy[0]: must set exactly one of header, cookie, sourceIp"
        );
        let e = tp_err(|t| t.routes[0].hash_policy[0] = HashPolicy::default());
        assert_eq!(e.field, "spec.routes[0].hashPolicy[0]");
        let e = tp_err(|t| t.routes[2].hash_policy[1].source_ip = Some(false));
        assert_eq!(e.field, "spec.routes[2].hashPolicy[1].sourceIp");
        let e = tp_err(|t| t.routes[0].hash_policy[0].header = Some(String::new()));
        assert_eq!(e.field, "spec.routes[0].hashPolicy[0].header");
        let e = tp_err(|t| t.routes[2].hash_policy[0].cookie.as_mut().unwrap().name = "a;b".into());
        assert_eq!(e.field, "spec.routes[2].hashPolicy[0].cookie.name");
        let e = tp_err(|t| t.routes[0].hash_policy = vec![t.routes[0].hash_policy[0].clone(); 9]);
        assert_eq!(e.field, "spec.routes[0].hashPolicy");

        fn fault(t: &mut TrafficPolicy) -> &mut FaultInjection {
            t.routes[0].fault.as_mut().unwrap()
        }
        let e = tp_err(|t| *fault(t) = FaultInjection::default());
        assert_eq!(
            e.to_string(),
            "spec.routes[0].fault: must set at least one of delay, abort"
        );
        let e = tp_err(|t| fault(t).delay.as_mut().unwrap().percent = 101);
        assert_eq!(
            e.to_string(),
            "spec.routes[0].fault.delay.percent: must be between 0 and 100"
        );
        let e = tp_err(|t| fault(t).delay.as_mut().unwrap().fixed_delay = DurationSpec::ZERO);
        assert_eq!(e.field, "spec.routes[0].fault.delay.fixedDelay");
        let e = tp_err(|t| fault(t).abort.as_mut().unwrap().http_status = 199);
        assert_eq!(
            e.to_string(),
            "spec.routes[0].fault.abort.httpStatus: must be between 200 and 599"
        );
        let e = tp_err(|t| fault(t).abort.as_mut().unwrap().http_status = 600);
        assert_eq!(e.field, "spec.routes[0].fault.abort.httpStatus");
        let e = tp_err(|t| fault(t).abort.as_mut().unwrap().percent = 101);
        assert_eq!(e.field, "spec.routes[0].fault.abort.percent");

        let e = tp_err(|t| t.routes[0].mirror.as_mut().unwrap().service = "Shadow".into());
        assert_eq!(e.field, "spec.routes[0].mirror.service");
        let e = tp_err(|t| t.routes[0].mirror.as_mut().unwrap().percent = 101);
        assert_eq!(e.field, "spec.routes[0].mirror.percent");
    }

    #[test]
    fn destination_policy_rules() {
        DestinationPolicy::default().validate().unwrap();
        let e = dp_err(|d| {
            d.subsets = (0..33)
                .map(|i| Subset {
                    name: format!("s{i}"),
                    labels: [("v".to_string(), i.to_string())].into(),
                })
                .collect()
        });
        assert_eq!(e.to_string(), "spec.subsets: must have at most 32 entries");
        let e = dp_err(|d| d.subsets[1].name = "v1".into());
        assert_eq!(e.field, "spec.subsets[1].name");
        assert!(e.rule.contains("unique"));
        let e = dp_err(|d| d.subsets[0].name = "V1".into());
        assert_eq!(e.field, "spec.subsets[0].name");
        let e = dp_err(|d| d.subsets[0].labels.clear());
        assert_eq!(e.to_string(), "spec.subsets[0].labels: must not be empty");
        let e = dp_err(|d| {
            d.subsets[1].labels.insert("v".into(), "a b".into());
        });
        assert_eq!(e.field, "spec.subsets[1].labels[\"v\"]");

        let e =
            dp_err(|d| d.load_balancer.as_mut().unwrap().policy = LoadBalancerPolicy::LeastRequest);
        assert_eq!(
            e.to_string(),
            "spec.loadBalancer.hashOn: is only allowed when policy is ring_hash or maglev"
        );
        let mut ok = destination();
        ok.load_balancer.as_mut().unwrap().policy = LoadBalancerPolicy::Maglev;
        ok.validate().unwrap();
        ok.load_balancer = Some(LoadBalancer {
            policy: LoadBalancerPolicy::Random,
            hash_on: None,
        });
        ok.validate().unwrap();
        let e = dp_err(|d| d.load_balancer.as_mut().unwrap().hash_on = Some(HashPolicy::default()));
        assert_eq!(e.field, "spec.loadBalancer.hashOn");

        let e = dp_err(|d| d.circuit_breaker.as_mut().unwrap().max_connections = Some(0));
        assert_eq!(
            e.to_string(),
            "spec.circuitBreaker.maxConnections: must be between 1 and 1000000"
        );
        let e = dp_err(|d| d.circuit_breaker.as_mut().unwrap().max_retries = Some(1_000_001));
        assert_eq!(e.field, "spec.circuitBreaker.maxRetries");
        let mut ok = destination();
        ok.circuit_breaker = Some(CircuitBreaker::default());
        ok.validate().unwrap();

        fn od(d: &mut DestinationPolicy) -> &mut OutlierDetection {
            d.outlier_detection.as_mut().unwrap()
        }
        let e = dp_err(|d| od(d).consecutive_5xx = Some(0));
        assert_eq!(e.field, "spec.outlierDetection.consecutive5xx");
        let e = dp_err(|d| od(d).max_ejection_percent = Some(101));
        assert_eq!(
            e.to_string(),
            "spec.outlierDetection.maxEjectionPercent: must be between 0 and 100"
        );
        let e = dp_err(|d| od(d).interval = Some(DurationSpec::ZERO));
        assert_eq!(e.field, "spec.outlierDetection.interval");
        let e = dp_err(|d| od(d).base_ejection_time = Some(DurationSpec::ZERO));
        assert_eq!(e.field, "spec.outlierDetection.baseEjectionTime");
        let e = dp_err(|d| d.connect_timeout = Some(DurationSpec::ZERO));
        assert_eq!(e.field, "spec.connectTimeout");

        let e = dp_err(|d| d.locality_failover[0].to = "eu".into());
        assert_eq!(e.field, "spec.localityFailover[0].to");
        let e = dp_err(|d| d.locality_failover[0].from = String::new());
        assert_eq!(e.field, "spec.localityFailover[0].from");
        let e = dp_err(|d| d.locality_failover.push(d.locality_failover[0].clone()));
        assert_eq!(e.field, "spec.localityFailover[1]");
    }

    #[test]
    fn health_check_rules() {
        let e = hc_err(|h| h.http = None);
        assert_eq!(e.field, "spec");
        assert!(e.rule.contains("exactly one of http, tcp, grpc"));
        let e = hc_err(|h| h.tcp = Some(TcpHealthCheck {}));
        assert_eq!(
            e.to_string(),
            "spec: must set exactly one of http, tcp, grpc"
        );

        let e = hc_err(|h| h.interval = DurationSpec::from_millis(99));
        assert_eq!(e.to_string(), "spec.interval: must be between 100ms and 1h");
        let e = hc_err(|h| h.interval = DurationSpec::from_millis(3_600_001));
        assert_eq!(e.field, "spec.interval");
        let e = hc_err(|h| h.timeout = DurationSpec::ZERO);
        assert_eq!(e.field, "spec.timeout");
        let e = hc_err(|h| h.timeout = DurationSpec::from_millis(1_000));
        assert_eq!(
            e.to_string(),
            "spec.timeout: must be greater than 0 and less than interval (1s)"
        );
        let e = hc_err(|h| h.panic_threshold = Some(101));
        assert_eq!(e.field, "spec.panicThreshold");
        let e = hc_err(|h| h.jitter = Some(DurationSpec::from_secs(2)));
        assert_eq!(e.field, "spec.jitter");
        let e = hc_err(|h| h.healthy_threshold = 0);
        assert_eq!(
            e.to_string(),
            "spec.healthyThreshold: must be between 1 and 100"
        );
        let e = hc_err(|h| h.unhealthy_threshold = 101);
        assert_eq!(e.field, "spec.unhealthyThreshold");
        let e = hc_err(|h| h.deregister_after = Some(DurationSpec::from_secs(4)));
        assert_eq!(e.to_string(), "spec.deregisterAfter: must be at least 5s");

        fn http(h: &mut HealthCheckSpec) -> &mut HttpHealthCheck {
            h.http.as_mut().unwrap()
        }
        let e = hc_err(|h| http(h).path = "healthz".into());
        assert_eq!(e.field, "spec.http.path");
        let e = hc_err(|h| http(h).expected_statuses.clear());
        assert_eq!(e.field, "spec.http.expectedStatuses");
        let e = hc_err(|h| http(h).expected_statuses.push(600));
        assert_eq!(
            e.to_string(),
            "spec.http.expectedStatuses[1]: must be between 100 and 599"
        );
        let e = hc_err(|h| http(h).host = Some("bad host".into()));
        assert_eq!(e.field, "spec.http.host");
        let mut ok = health();
        http(&mut ok).host = Some("web.internal:8080".into());
        ok.validate().unwrap();
        let e = hc_err(|h| {
            http(h).headers.insert("bad header".into(), "v".into());
        });
        assert_eq!(e.field, "spec.http.headers[\"bad header\"]");
        let e = hc_err(|h| {
            http(h).headers.insert("x".into(), "a\nb".into());
        });
        assert_eq!(e.field, "spec.http.headers[\"x\"]");

        let e = hc_err(|h| {
            h.http = None;
            h.grpc = Some(GrpcHealthCheck {
                service: "s".repeat(257),
            });
        });
        assert_eq!(e.field, "spec.grpc.service");
    }

    #[test]
    fn config_spec_roundtrips() {
        let cfg = bincode::config::standard();
        for spec in [
            ConfigSpec::TrafficPolicy(traffic()),
            ConfigSpec::DestinationPolicy(destination()),
            ConfigSpec::HealthCheck(health()),
            ConfigSpec::DestinationPolicy(DestinationPolicy::default()),
        ] {
            assert_eq!(
                spec.kind().as_str(),
                match &spec {
                    ConfigSpec::TrafficPolicy(_) => "TrafficPolicy",
                    ConfigSpec::DestinationPolicy(_) => "DestinationPolicy",
                    ConfigSpec::HealthCheck(_) => "HealthCheck",
                }
            );
            spec.validate().unwrap();
            let json = serde_json::to_string(&spec).unwrap();
            assert_eq!(
                serde_json::from_str::<ConfigSpec>(&json).unwrap(),
                spec,
                "{json}"
            );
            let bytes = bincode::serde::encode_to_vec(&spec, cfg).unwrap();
            let (back, used): (ConfigSpec, usize) =
                bincode::serde::decode_from_slice(&bytes, cfg).unwrap();
            assert_eq!(back, spec);
            assert_eq!(used, bytes.len());
        }
    }
}
