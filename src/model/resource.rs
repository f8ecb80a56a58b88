//! Kubernetes-style resource documents, as read by `bowline apply -f` and
//! written by `bowline get -o yaml|json`.
//!
//! The file shapes live in private DTOs so the stored domain types stay free
//! of attributes (`skip_serializing_if`, …) that a binary format cannot honour.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value as Json};
use serde_yaml::Value as Yaml;

use super::config::{ConfigKind, ConfigSpec};
use super::duration::DurationSpec;
use super::endpoint::{Endpoint, Health, HealthStatus, Locality};
use super::service::{Service, ServicePort, DEFAULT_NAMESPACE};
use super::string_map::StringMap;
use super::validation::{entry_path, validate_name, ValidationError};

/// The only `apiVersion` accepted and produced.
pub const API_VERSION: &str = "bowline/v1";
/// Every document `kind`, in the order they are listed in errors.
pub const KINDS: [&str; 5] = [
    "Service",
    "Endpoint",
    "TrafficPolicy",
    "DestinationPolicy",
    "HealthCheck",
];
const TOP_LEVEL_FIELDS: [&str; 5] = ["apiVersion", "kind", "metadata", "spec", "status"];

/// One object that can be applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Resource {
    /// A service definition.
    Service(Service),
    /// A service endpoint.
    Endpoint(Endpoint),
    /// Configuration for the service `name` in `namespace`.
    Config {
        /// Namespace of the configured service.
        namespace: String,
        /// Name of the configured service (document `metadata.name`).
        name: String,
        /// The configuration itself.
        spec: ConfigSpec,
    },
}

impl Resource {
    /// Document `kind`, e.g. `Service` or `TrafficPolicy`.
    pub fn kind(&self) -> &'static str {
        match self {
            Resource::Service(_) => "Service",
            Resource::Endpoint(_) => "Endpoint",
            Resource::Config { spec, .. } => spec.kind().as_str(),
        }
    }

    /// Document `metadata.name` (endpoint id for endpoints).
    pub fn name(&self) -> &str {
        match self {
            Resource::Service(s) => &s.name,
            Resource::Endpoint(e) => &e.id,
            Resource::Config { name, .. } => name,
        }
    }

    /// Document `metadata.namespace`.
    pub fn namespace(&self) -> &str {
        match self {
            Resource::Service(s) => &s.namespace,
            Resource::Endpoint(e) => &e.namespace,
            Resource::Config { namespace, .. } => namespace,
        }
    }

    /// Runs the validation of the contained object.
    pub fn validate(&self) -> Result<(), ValidationError> {
        match self {
            Resource::Service(s) => s.validate(),
            Resource::Endpoint(e) => e.validate(),
            Resource::Config {
                namespace,
                name,
                spec,
            } => {
                validate_name("metadata.name", name)?;
                validate_name("metadata.namespace", namespace)?;
                spec.validate()
            }
        }
    }
}

/// Why a batch of documents was rejected. `index` is the 1-based position of
/// the offending document in the input (elements of a top-level list count
/// one each; empty documents count too).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ResourceError {
    /// The document could not be read into a resource.
    #[error("document {index}: {message}")]
    Parse {
        /// 1-based document position.
        index: usize,
        /// What was wrong, naming the offending field where possible.
        message: String,
    },
    /// The document was read but breaks a validation rule.
    #[error("document {index} ({kind} {name}): {error}")]
    Invalid {
        /// 1-based document position.
        index: usize,
        /// Document kind.
        kind: String,
        /// Document `metadata.name`.
        name: String,
        /// The broken rule (not a `source`: the message already includes it).
        error: ValidationError,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MetadataDoc {
    name: String,
    #[serde(default = "default_namespace")]
    namespace: String,
    #[serde(default)]
    labels: StringMap,
    #[serde(default)]
    service: Option<String>,
}

fn default_namespace() -> String {
    DEFAULT_NAMESPACE.to_string()
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ServiceSpecDoc {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    ports: Vec<ServicePort>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    depends_on: Vec<String>,
    #[serde(default, skip_serializing_if = "StringMap::is_empty")]
    metadata: StringMap,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct EndpointSpecDoc {
    address: String,
    port: u32,
    #[serde(default, skip_serializing_if = "StringMap::is_empty")]
    labels: StringMap,
    #[serde(default)]
    locality: Locality,
    #[serde(default = "default_endpoint_weight")]
    weight: u32,
    #[serde(default)]
    priority: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ttl: Option<DurationSpec>,
    /// Initial health; the server owns it afterwards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    health: Option<HealthStatus>,
}

fn default_endpoint_weight() -> u32 {
    1
}

/// Parses YAML (multi-document, `---`-separated) or JSON (one object or an
/// array of objects) into validated resources. Empty documents are skipped;
/// a top-level list in any document is treated as that many documents.
pub fn parse_documents(text: &str) -> Result<Vec<Resource>, ResourceError> {
    let mut resources = Vec::new();
    for (i, doc) in read_documents(text)?.into_iter().enumerate() {
        let index = i + 1;
        if let Some(r) = parse_document(index, doc)? {
            resources.push(r);
        }
    }
    Ok(resources)
}

fn read_documents(text: &str) -> Result<Vec<Yaml>, ResourceError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let trimmed = text.trim_start();
    let mut docs = Vec::new();
    // JSON goes through serde_json because YAML 1.1 trips on some valid JSON
    // (tab indentation); on failure fall back to YAML, whose flow syntax
    // (`{kind: Service, ...}`) also starts with a brace.
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        if let Ok(json) = serde_json::from_str::<Json>(text) {
            let yaml = serde_yaml::to_value(json).map_err(|e| ResourceError::Parse {
                index: 1,
                message: e.to_string(),
            })?;
            push_flattened(&mut docs, yaml);
            return Ok(docs);
        }
    }
    for de in serde_yaml::Deserializer::from_str(text) {
        let value = Yaml::deserialize(de).map_err(|e| ResourceError::Parse {
            index: docs.len() + 1,
            message: e.to_string(),
        })?;
        push_flattened(&mut docs, value);
    }
    Ok(docs)
}

fn push_flattened(docs: &mut Vec<Yaml>, value: Yaml) {
    match value {
        Yaml::Sequence(items) => docs.extend(items),
        other => docs.push(other),
    }
}

fn parse_document(index: usize, doc: Yaml) -> Result<Option<Resource>, ResourceError> {
    let parse_err = |message: String| ResourceError::Parse { index, message };
    let mut map = match doc {
        Yaml::Null => return Ok(None),
        Yaml::Mapping(m) => m,
        other => {
            return Err(parse_err(format!(
                "expected a mapping with apiVersion, kind, metadata and spec, found {}",
                yaml_type(&other)
            )))
        }
    };

    for key in map.keys() {
        let known = key.as_str().is_some_and(|k| TOP_LEVEL_FIELDS.contains(&k));
        if !known {
            return Err(parse_err(format!(
                "unknown field {}, expected one of {}",
                describe_key(key),
                quoted_list(&TOP_LEVEL_FIELDS)
            )));
        }
    }

    match map.get("apiVersion") {
        Some(Yaml::String(v)) if v == API_VERSION => {}
        Some(other) => {
            return Err(parse_err(format!(
                "apiVersion: unsupported value {}; expected \"{API_VERSION}\"",
                yaml_inline(other)
            )))
        }
        None => {
            return Err(parse_err(format!(
                "missing field `apiVersion` (expected \"{API_VERSION}\")"
            )))
        }
    }
    let kind = match map.get("kind") {
        Some(Yaml::String(k)) if KINDS.contains(&k.as_str()) => k.clone(),
        Some(other) => {
            return Err(parse_err(format!(
                "kind: unknown kind {}; expected one of: {}",
                yaml_inline(other),
                KINDS.join(", ")
            )))
        }
        None => {
            return Err(parse_err(format!(
                "missing field `kind` (expected one of: {})",
                KINDS.join(", ")
            )))
        }
    };

    let metadata = map
        .remove("metadata")
        .ok_or_else(|| parse_err("missing field `metadata`".to_string()))?;
    let label = match metadata.get("name").and_then(Yaml::as_str) {
        Some(name) => format!("{kind} {name}"),
        None => kind.clone(),
    };
    let metadata: MetadataDoc = serde_yaml::from_value(metadata)
        .map_err(|e| parse_err(format!("{label}: metadata: {e}")))?;
    // A missing or blank spec reads as an empty one so the kind's own defaults and
    // validation decide whether anything was required.
    let spec = match map.remove("spec") {
        None | Some(Yaml::Null) => Yaml::Mapping(Default::default()),
        Some(spec) => spec,
    };

    let invalid = |error: ValidationError| ResourceError::Invalid {
        index,
        kind: kind.clone(),
        name: metadata.name.clone(),
        error,
    };
    let spec_err = |e: String| parse_err(format!("{label}: {e}"));

    if kind != "Endpoint" && metadata.service.is_some() {
        return Err(invalid(ValidationError::new(
            "metadata.service",
            "is only allowed for kind Endpoint",
        )));
    }

    let resource = match kind.as_str() {
        "Service" => {
            let spec: ServiceSpecDoc = spec_of(spec).map_err(spec_err)?;
            Resource::Service(Service {
                name: metadata.name.clone(),
                namespace: metadata.namespace.clone(),
                ports: spec.ports,
                labels: metadata.labels.clone(),
                metadata: spec.metadata,
                depends_on: spec.depends_on,
            })
        }
        "Endpoint" => {
            let spec: EndpointSpecDoc = spec_of(spec).map_err(spec_err)?;
            let service = metadata.service.clone().ok_or_else(|| {
                invalid(ValidationError::new(
                    "metadata.service",
                    "is required for kind Endpoint",
                ))
            })?;
            let mut labels = spec.labels;
            // metadata.labels and spec.labels both describe the endpoint; merge
            // them, but refuse contradictory values rather than pick one.
            for (k, v) in &metadata.labels {
                match labels.get(k) {
                    Some(existing) if existing != v => {
                        return Err(invalid(ValidationError::new(
                            entry_path("metadata.labels", k),
                            format!("conflicts with {}", entry_path("spec.labels", k)),
                        )))
                    }
                    _ => {
                        labels.insert(k.clone(), v.clone());
                    }
                }
            }
            Resource::Endpoint(Endpoint {
                id: metadata.name.clone(),
                service,
                namespace: metadata.namespace.clone(),
                address: spec.address,
                port: spec.port,
                labels,
                locality: spec.locality,
                weight: spec.weight,
                priority: spec.priority,
                ttl: spec.ttl,
                health: Health {
                    status: spec.health.unwrap_or_default(),
                    since_ms: 0,
                    reason: String::new(),
                },
            })
        }
        other => {
            if !metadata.labels.is_empty() {
                return Err(invalid(ValidationError::new(
                    "metadata.labels",
                    format!("is not supported for kind {other}"),
                )));
            }
            let config_kind: ConfigKind = other.parse().expect("KINDS lists only known kinds");
            let spec = match config_kind {
                ConfigKind::TrafficPolicy => {
                    ConfigSpec::TrafficPolicy(spec_of(spec).map_err(spec_err)?)
                }
                ConfigKind::DestinationPolicy => {
                    ConfigSpec::DestinationPolicy(spec_of(spec).map_err(spec_err)?)
                }
                ConfigKind::HealthCheck => {
                    ConfigSpec::HealthCheck(spec_of(spec).map_err(spec_err)?)
                }
            };
            Resource::Config {
                namespace: metadata.namespace.clone(),
                name: metadata.name.clone(),
                spec,
            }
        }
    };
    resource.validate().map_err(invalid)?;
    Ok(Some(resource))
}

fn spec_of<T: serde::de::DeserializeOwned>(spec: Yaml) -> Result<T, String> {
    serde_yaml::from_value(spec).map_err(|e| format!("spec: {e}"))
}

fn yaml_type(v: &Yaml) -> &'static str {
    match v {
        Yaml::Null => "null",
        Yaml::Bool(_) => "a boolean",
        Yaml::Number(_) => "a number",
        Yaml::String(_) => "a string",
        Yaml::Sequence(_) => "a list",
        Yaml::Mapping(_) => "a mapping",
        Yaml::Tagged(_) => "a tagged value",
    }
}

fn yaml_inline(v: &Yaml) -> String {
    match v {
        Yaml::String(s) => format!("{s:?}"),
        Yaml::Number(n) => n.to_string(),
        Yaml::Bool(b) => b.to_string(),
        other => yaml_type(other).to_string(),
    }
}

fn describe_key(key: &Yaml) -> String {
    match key.as_str() {
        Some(k) => format!("`{k}`"),
        None => yaml_inline(key),
    }
}

fn quoted_list(items: &[&str]) -> String {
    items
        .iter()
        .map(|i| format!("`{i}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Renders a resource in the document shape [`parse_documents`] reads, so
/// output can be edited and re-applied. Endpoints additionally carry a
/// server-owned `status` section, which is ignored on input.
pub fn to_document(r: &Resource) -> Json {
    match r {
        Resource::Service(s) => {
            let spec = ServiceSpecDoc {
                ports: s.ports.clone(),
                depends_on: s.depends_on.clone(),
                metadata: s.metadata.clone(),
            };
            json!({
                "apiVersion": API_VERSION,
                "kind": "Service",
                "metadata": metadata_json(&s.name, &s.namespace, &s.labels, None),
                "spec": to_json(&spec),
            })
        }
        Resource::Endpoint(e) => {
            let spec = EndpointSpecDoc {
                address: e.address.clone(),
                port: e.port,
                labels: e.labels.clone(),
                locality: e.locality.clone(),
                weight: e.weight,
                priority: e.priority,
                ttl: e.ttl,
                health: Some(e.health.status),
            };
            let mut spec = to_json(&spec);
            if let Some(Json::Object(loc)) = spec.get_mut("locality") {
                loc.retain(|_, v| v.as_str() != Some(""));
            }
            if let Json::Object(spec) = &mut spec {
                if spec.get("locality").is_some_and(|l| l == &json!({})) {
                    spec.remove("locality");
                }
            }
            let mut health = Map::new();
            health.insert("status".into(), json!(e.health.status));
            health.insert("sinceMs".into(), json!(e.health.since_ms));
            if !e.health.reason.is_empty() {
                health.insert("reason".into(), json!(e.health.reason));
            }
            json!({
                "apiVersion": API_VERSION,
                "kind": "Endpoint",
                "metadata": metadata_json(&e.id, &e.namespace, &StringMap::new(), Some(&e.service)),
                "spec": spec,
                "status": {"health": health},
            })
        }
        Resource::Config {
            namespace,
            name,
            spec,
        } => {
            let body = match spec {
                ConfigSpec::TrafficPolicy(s) => to_json(s),
                ConfigSpec::DestinationPolicy(s) => to_json(s),
                ConfigSpec::HealthCheck(s) => to_json(s),
            };
            json!({
                "apiVersion": API_VERSION,
                "kind": spec.kind().as_str(),
                "metadata": metadata_json(name, namespace, &StringMap::new(), None),
                "spec": prune(body),
            })
        }
    }
}

fn to_json<T: Serialize>(v: &T) -> Json {
    // Only maps with string keys, strings, numbers and bools reach here.
    serde_json::to_value(v).expect("document DTOs always serialize to JSON")
}

fn metadata_json(name: &str, namespace: &str, labels: &StringMap, service: Option<&str>) -> Json {
    let mut m = Map::new();
    m.insert("name".into(), json!(name));
    m.insert("namespace".into(), json!(namespace));
    if !labels.is_empty() {
        m.insert("labels".into(), json!(labels));
    }
    if let Some(s) = service {
        m.insert("service".into(), json!(s));
    }
    Json::Object(m)
}

/// Drops nulls (unset options) and empty lists (defaulted on input) so the
/// rendered document only shows what was configured. Empty objects stay:
/// `tcp: {}` is meaningful.
fn prune(v: Json) -> Json {
    match v {
        Json::Object(m) => Json::Object(
            m.into_iter()
                .filter_map(|(k, v)| {
                    let v = prune(v);
                    let empty = v.is_null() || v.as_array().is_some_and(Vec::is_empty);
                    (!empty).then_some((k, v))
                })
                .collect(),
        ),
        Json::Array(items) => Json::Array(items.into_iter().map(prune).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::{LoadBalancerPolicy, RetryOn};
    use crate::model::service::Protocol;

    const ALL_KINDS_YAML: &str = r#"
# leading comment, then an empty document
---
apiVersion: bowline/v1
kind: Service
metadata: {name: web, namespace: default, labels: {team: shop}}
spec:
  ports: [{name: http, port: 8080, protocol: http}, {name: grpc, port: 9090, protocol: grpc}]
  dependsOn: [db]
  metadata: {owner: "shop team"}
---
apiVersion: bowline/v1
kind: Endpoint
metadata: {name: web-1, namespace: default, labels: {team: shop}, service: web}
spec:
  address: 10.0.0.12
  port: 8080
  labels: {version: v1}
  locality: {region: eu, zone: eu-1a}
  weight: 10
  ttl: 30s
  health: healthy
---
---
apiVersion: bowline/v1
kind: TrafficPolicy
metadata: {name: web}
spec:
  routes:
    - match: {pathPrefix: /}
      destinations: [{subset: v1, weight: 80}, {subset: v2, weight: 20}]
      retries: {attempts: 3, perTryTimeout: 500ms, retryOn: [5xx, connect-failure]}
      timeout: 2s
      hashPolicy: [{header: x-user}]
      fault: {delay: {fixedDelay: 1s, percent: 10}, abort: {httpStatus: 503, percent: 5}}
      mirror: {service: web-shadow, percent: 10}
---
apiVersion: bowline/v1
kind: DestinationPolicy
metadata: {name: web, namespace: default}
spec:
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
  loadBalancer: {policy: ring_hash, hashOn: {header: x-user}}
  circuitBreaker: {maxConnections: 100, maxPendingRequests: 100, maxRequests: 1000, maxRetries: 3}
  outlierDetection: {consecutive5xx: 5, interval: 10s, baseEjectionTime: 30s, maxEjectionPercent: 50}
  connectTimeout: 1s
  localityFailover: [{from: eu, to: us}]
---
apiVersion: bowline/v1
kind: HealthCheck
metadata: {name: web}
spec:
  http: {path: /healthz, expectedStatuses: [200]}
  interval: 1s
  timeout: 500ms
  jitter: 100ms
  healthyThreshold: 2
  unhealthyThreshold: 3
  initialStatus: unknown
  deregisterAfter: 5m
"#;

    fn parse_err(text: &str) -> ResourceError {
        parse_documents(text).unwrap_err()
    }

    fn message(text: &str) -> String {
        match parse_err(text) {
            ResourceError::Parse { message, .. } => message,
            other => panic!("expected a parse error, got {other:?}"),
        }
    }

    const SERVICE_HEAD: &str = "apiVersion: bowline/v1\nkind: Service\nmetadata: {name: web}\n";

    #[test]
    fn parses_all_five_kinds() {
        let rs = parse_documents(ALL_KINDS_YAML).unwrap();
        let kinds: Vec<&str> = rs.iter().map(Resource::kind).collect();
        assert_eq!(kinds, KINDS);
        assert!(rs.iter().all(|r| r.name().starts_with("web")));
        assert!(rs.iter().all(|r| r.namespace() == "default"));

        let Resource::Service(s) = &rs[0] else {
            panic!()
        };
        assert_eq!(s.ports[1].protocol, Protocol::Grpc);
        assert_eq!(s.labels.get("team").map(String::as_str), Some("shop"));
        assert_eq!(s.depends_on, ["db"]);
        assert_eq!(
            s.metadata.get("owner").map(String::as_str),
            Some("shop team")
        );

        let Resource::Endpoint(e) = &rs[1] else {
            panic!()
        };
        assert_eq!(e.id, "web-1");
        assert_eq!(e.service, "web");
        assert_eq!(e.labels.len(), 2, "metadata.labels merge into spec.labels");
        assert_eq!(e.locality.zone, "eu-1a");
        assert_eq!((e.weight, e.priority), (10, 0));
        assert_eq!(e.ttl, Some(DurationSpec::from_secs(30)));
        assert_eq!(e.health.status, HealthStatus::Healthy);

        let Resource::Config {
            spec: ConfigSpec::TrafficPolicy(t),
            ..
        } = &rs[2]
        else {
            panic!()
        };
        assert_eq!(
            t.routes[0].retries.as_ref().unwrap().retry_on[0],
            RetryOn::FiveXx
        );
        let Resource::Config {
            spec: ConfigSpec::DestinationPolicy(d),
            ..
        } = &rs[3]
        else {
            panic!()
        };
        assert_eq!(
            d.load_balancer.as_ref().unwrap().policy,
            LoadBalancerPolicy::RingHash
        );
        let Resource::Config {
            spec: ConfigSpec::HealthCheck(h),
            ..
        } = &rs[4]
        else {
            panic!()
        };
        assert_eq!(h.deregister_after, Some(DurationSpec::from_secs(300)));
    }

    #[test]
    fn endpoint_defaults() {
        let rs = parse_documents(
            "apiVersion: bowline/v1\nkind: Endpoint\nmetadata: {name: e1, service: web}\n\
             spec: {address: 'web-1.pods.local', port: 80}",
        )
        .unwrap();
        let Resource::Endpoint(e) = &rs[0] else {
            panic!()
        };
        assert_eq!(e.namespace, DEFAULT_NAMESPACE);
        assert_eq!((e.weight, e.priority, e.ttl), (1, 0, None));
        assert_eq!(e.health, Health::default());
        assert_eq!(e.locality, Locality::default());
    }

    #[test]
    fn empty_input_and_empty_documents() {
        assert_eq!(parse_documents("").unwrap(), vec![]);
        assert_eq!(parse_documents("---\n---\n# nothing\n").unwrap(), vec![]);
        assert_eq!(parse_documents("[]").unwrap(), vec![]);
        assert_eq!(
            parse_documents(&format!("{SERVICE_HEAD}spec:\n"))
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            parse_documents(&format!("---\n{SERVICE_HEAD}---\n"))
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn json_input() {
        let one = r#"{"apiVersion": "bowline/v1", "kind": "Service",
            "metadata": {"name": "web"},
            "spec": {"ports": [{"name": "http", "port": 80, "protocol": "http2"}]}}"#;
        let rs = parse_documents(one).unwrap();
        let Resource::Service(s) = &rs[0] else {
            panic!()
        };
        assert_eq!(s.ports[0].protocol, Protocol::Http2);

        let many = format!(
            "[\n\t{one},\n\t{{\"apiVersion\": \"bowline/v1\", \"kind\": \"HealthCheck\", \
             \"metadata\": {{\"name\": \"web\"}}, \"spec\": {{\"tcp\": {{}}, \"interval\": \"2s\", \
             \"timeout\": \"500ms\", \"healthyThreshold\": 1, \"unhealthyThreshold\": 2}}}}\n]"
        );
        let rs = parse_documents(&many).unwrap();
        assert_eq!(rs.len(), 2);
        assert_eq!(rs[1].kind(), "HealthCheck");

        // YAML flow style starts with a brace too but is not JSON.
        let flow = "{apiVersion: bowline/v1, kind: Service, metadata: {name: web}}";
        assert_eq!(parse_documents(flow).unwrap().len(), 1);

        let bad = r#"[{"apiVersion": "bowline/v1", "kind": "Service", "metadata": {"name": "web"}}, {"kind": "Nope"}]"#;
        match parse_err(bad) {
            ResourceError::Parse { index, message } => {
                assert_eq!(index, 2);
                assert!(message.contains("apiVersion"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unknown_field_is_named() {
        let text = format!(
            "{SERVICE_HEAD}spec: {{ports: [{{name: http, port: 80, protocol: http}}], bogus: 1}}"
        );
        let err = parse_err(&text);
        let text = err.to_string();
        assert!(text.contains("bogus"), "{text}");
        assert!(
            text.starts_with("document 1: Service web: spec: "),
            "{text}"
        );

        let nested = format!(
            "{SERVICE_HEAD}spec: {{ports: [{{name: http, port: 80, protocol: http, tls: true}}]}}"
        );
        assert!(message(&nested).contains("tls"));

        let config = "apiVersion: bowline/v1\nkind: TrafficPolicy\nmetadata: {name: web}\n\
                      spec: {routes: [{match: {pathPrefix: /, method: GET}, destinations: [{}]}]}";
        assert!(message(config).contains("method"));

        let meta = "apiVersion: bowline/v1\nkind: Service\nmetadata: {name: web, annotations: {}}";
        let m = message(meta);
        assert!(m.contains("metadata") && m.contains("annotations"), "{m}");

        let top = format!("{SERVICE_HEAD}extra: 1");
        let m = message(&top);
        assert!(m.contains("unknown field `extra`"), "{m}");
    }

    #[test]
    fn kind_and_api_version_errors() {
        let m = message("apiVersion: bowline/v1\nkind: Gateway\nmetadata: {name: x}");
        assert!(m.contains("Gateway"), "{m}");
        for k in KINDS {
            assert!(m.contains(k), "{m}");
        }
        let m = message("apiVersion: bowline/v1\nmetadata: {name: x}");
        assert!(m.contains("kind") && m.contains("Service, Endpoint"), "{m}");

        let m = message("apiVersion: v1\nkind: Service\nmetadata: {name: x}");
        assert!(m.starts_with("apiVersion"), "{m}");
        assert!(m.contains("bowline/v1"), "{m}");
        let m = message("kind: Service\nmetadata: {name: x}");
        assert!(m.contains("apiVersion"), "{m}");

        assert!(message("apiVersion: bowline/v1\nkind: Service").contains("metadata"));
        assert!(message("apiVersion: bowline/v1\nkind: Service\nmetadata: {}").contains("name"));
        assert!(message("just a string").contains("expected a mapping"));
    }

    #[test]
    fn syntax_errors_report_the_document() {
        let text = format!("{SERVICE_HEAD}---\nkind: [unclosed\n");
        match parse_err(&text) {
            ResourceError::Parse { index, .. } => assert_eq!(index, 2),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn validation_errors_carry_context() {
        let text = format!(
            "{SERVICE_HEAD}---\n{SERVICE_HEAD}spec: {{ports: [{{name: http, port: 0, protocol: tcp}}]}}"
        )
        .replace("name: web}\nspec", "name: api}\nspec");
        let err = parse_err(&text);
        assert_eq!(
            err,
            ResourceError::Invalid {
                index: 2,
                kind: "Service".into(),
                name: "api".into(),
                error: ValidationError::new("spec.ports[0].port", "must be between 1 and 65535"),
            }
        );
        assert_eq!(
            err.to_string(),
            "document 2 (Service api): spec.ports[0].port: must be between 1 and 65535"
        );

        let text = "apiVersion: bowline/v1\nkind: TrafficPolicy\nmetadata: {name: web}\n\
                    spec: {routes: [{match: {path: /}, destinations: [{weight: 1}]}, \
                    {match: {path: /}, destinations: [{weight: 0}]}]}";
        let ResourceError::Invalid { error, .. } = parse_err(text) else {
            panic!()
        };
        assert_eq!(error.field, "spec.routes[1].destinations[0].weight");

        let missing_routes = "apiVersion: bowline/v1\nkind: TrafficPolicy\nmetadata: {name: web}";
        let ResourceError::Invalid { error, .. } = parse_err(missing_routes) else {
            panic!()
        };
        assert_eq!(error.field, "spec.routes");

        let bad_name = "apiVersion: bowline/v1\nkind: Service\nmetadata: {name: Web}";
        let ResourceError::Invalid { error, name, .. } = parse_err(bad_name) else {
            panic!()
        };
        assert_eq!(
            (error.field.as_str(), name.as_str()),
            ("metadata.name", "Web")
        );

        let bad_ns = "apiVersion: bowline/v1\nkind: HealthCheck\nmetadata: {name: web, namespace: A}\n\
                      spec: {tcp: {}, interval: 1s, timeout: 500ms, healthyThreshold: 1, unhealthyThreshold: 1}";
        let ResourceError::Invalid { error, .. } = parse_err(bad_ns) else {
            panic!()
        };
        assert_eq!(error.field, "metadata.namespace");
    }

    #[test]
    fn metadata_rules_per_kind() {
        let svc = "apiVersion: bowline/v1\nkind: Service\nmetadata: {name: web, service: web}";
        let ResourceError::Invalid { error, .. } = parse_err(svc) else {
            panic!()
        };
        assert_eq!(error.field, "metadata.service");

        let ep = "apiVersion: bowline/v1\nkind: Endpoint\nmetadata: {name: e1}\nspec: {address: 10.0.0.1, port: 80}";
        let ResourceError::Invalid { error, .. } = parse_err(ep) else {
            panic!()
        };
        assert_eq!(
            error.to_string(),
            "metadata.service: is required for kind Endpoint"
        );

        let conflict = "apiVersion: bowline/v1\nkind: Endpoint\n\
                        metadata: {name: e1, service: web, labels: {version: v2}}\n\
                        spec: {address: 10.0.0.1, port: 80, labels: {version: v1}}";
        let ResourceError::Invalid { error, .. } = parse_err(conflict) else {
            panic!()
        };
        assert_eq!(error.field, "metadata.labels[\"version\"]");

        let labelled = "apiVersion: bowline/v1\nkind: HealthCheck\nmetadata: {name: web, labels: {a: b}}\n\
                        spec: {tcp: {}, interval: 1s, timeout: 500ms, healthyThreshold: 1, unhealthyThreshold: 1}";
        let ResourceError::Invalid { error, .. } = parse_err(labelled) else {
            panic!()
        };
        assert_eq!(error.field, "metadata.labels");
    }

    #[test]
    fn strict_scalar_types() {
        let bare = "apiVersion: bowline/v1\nkind: Endpoint\nmetadata: {name: e1, service: web}\n\
                    spec: {address: 10.0.0.1, port: 80, ttl: 30}";
        let m = message(bare);
        assert!(
            m.contains("\"500ms\""),
            "a bare number must name the duration form: {m}"
        );

        let unit = bare.replace("ttl: 30", "ttl: 30us");
        assert!(message(&unit).contains("unsupported unit"));

        let health = bare.replace("ttl: 30", "health: sick");
        assert!(message(&health).contains("sick"));
    }

    #[test]
    fn documents_roundtrip() {
        let rs = parse_documents(ALL_KINDS_YAML).unwrap();
        let docs: Vec<Json> = rs.iter().map(to_document).collect();

        let as_json = serde_json::to_string_pretty(&docs).unwrap();
        assert!(!as_json.contains("null"), "{as_json}");
        assert_eq!(parse_documents(&as_json).unwrap(), rs);

        let as_yaml: String = docs
            .iter()
            .map(|d| format!("---\n{}", serde_yaml::to_string(d).unwrap()))
            .collect();
        assert_eq!(parse_documents(&as_yaml).unwrap(), rs);

        assert_eq!(docs[0]["apiVersion"], API_VERSION);
        assert_eq!(docs[0]["metadata"]["labels"]["team"], "shop");
        assert_eq!(docs[0]["spec"]["dependsOn"][0], "db");
        assert_eq!(docs[1]["metadata"]["service"], "web");
        assert_eq!(docs[1]["spec"]["ttl"], "30s");
        assert_eq!(docs[1]["spec"]["health"], "healthy");
        assert_eq!(
            docs[1]["spec"]["locality"],
            json!({"region": "eu", "zone": "eu-1a"})
        );
        assert_eq!(docs[1]["status"]["health"]["status"], "healthy");
        let route = &docs[2]["spec"]["routes"][0];
        assert_eq!(route["match"], json!({"pathPrefix": "/"}));
        assert_eq!(route["retries"]["perTryTimeout"], "500ms");
        assert_eq!(
            route["destinations"][0],
            json!({"subset": "v1", "weight": 80})
        );
        assert_eq!(docs[3]["spec"]["outlierDetection"]["consecutive5xx"], 5);
        assert_eq!(docs[3]["spec"]["metadata"], Json::Null);
    }

    #[test]
    fn empty_objects_survive_rendering() {
        let text = "apiVersion: bowline/v1\nkind: HealthCheck\nmetadata: {name: web}\n\
                    spec: {tcp: {}, interval: 1s, timeout: 500ms, healthyThreshold: 1, unhealthyThreshold: 1}";
        let rs = parse_documents(text).unwrap();
        let doc = to_document(&rs[0]);
        assert_eq!(doc["spec"]["tcp"], json!({}));
        assert!(doc["spec"].get("http").is_none());
        assert_eq!(parse_documents(&doc.to_string()).unwrap(), rs);
    }

    #[test]
    fn endpoint_status_is_rendered_but_ignored_on_input() {
        let rs = parse_documents(ALL_KINDS_YAML).unwrap();
        let Resource::Endpoint(mut e) = rs[1].clone() else {
            panic!()
        };
        e.health = Health {
            status: HealthStatus::Draining,
            since_ms: 42,
            reason: "shutting down".into(),
        };
        let doc = to_document(&Resource::Endpoint(e.clone()));
        assert_eq!(
            doc["status"]["health"],
            json!({"status": "draining", "sinceMs": 42, "reason": "shutting down"})
        );
        let Resource::Endpoint(back) = &parse_documents(&doc.to_string()).unwrap()[0] else {
            panic!()
        };
        assert_eq!(back.health.status, HealthStatus::Draining);
        assert_eq!((back.health.since_ms, back.health.reason.as_str()), (0, ""));
    }

    #[test]
    fn resources_roundtrip_through_serde() {
        let cfg = bincode::config::standard();
        for r in parse_documents(ALL_KINDS_YAML).unwrap() {
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(serde_json::from_str::<Resource>(&json).unwrap(), r);
            let bytes = bincode::serde::encode_to_vec(&r, cfg).unwrap();
            let (back, _): (Resource, usize) =
                bincode::serde::decode_from_slice(&bytes, cfg).unwrap();
            assert_eq!(back, r);
        }
        let err = ResourceError::Invalid {
            index: 1,
            kind: "Service".into(),
            name: "web".into(),
            error: ValidationError::new("metadata.name", "x"),
        };
        let json = serde_json::to_string(&err).unwrap();
        assert_eq!(serde_json::from_str::<ResourceError>(&json).unwrap(), err);
    }
}
