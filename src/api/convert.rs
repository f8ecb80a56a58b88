//! Conversions between protobuf messages and domain types, with validation. Field paths in
//! errors are translated from resource-file paths (`spec.port`) to request paths
//! (`endpoint.port`) so a gRPC caller sees the name of the field it sent.

use crate::model::{
    ConfigKind, ConfigSpec, Endpoint, Health, HealthStatus, Locality, Protocol, Service,
    ServicePort, StringMap, ValidationError, DEFAULT_NAMESPACE,
};
use crate::proto::v1 as pb;
use crate::store::{Stored, StoredConfig};

fn snake_case(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Rewrites a resource-document path into the request's field path for `object`.
pub fn request_field(object: &str, doc_path: &str) -> String {
    let renamed = match doc_path.split_once('.') {
        Some(("metadata", "name")) if object == "endpoint" => "id".to_string(),
        Some(("metadata", rest)) | Some(("spec", rest)) => snake_case(rest),
        _ => snake_case(doc_path),
    };
    format!("{object}.{renamed}")
}

fn in_request(object: &str, e: ValidationError) -> ValidationError {
    ValidationError::new(request_field(object, &e.field), e.rule)
}

fn namespace_or_default(ns: &str) -> String {
    if ns.is_empty() {
        DEFAULT_NAMESPACE.to_string()
    } else {
        ns.to_string()
    }
}

fn sorted(map: std::collections::HashMap<String, String>) -> StringMap {
    map.into_iter().collect()
}

/// A model map as a message map, copied entry by entry.
fn to_message_map(map: &StringMap) -> std::collections::HashMap<String, String> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// Validates the namespace and name of a request that addresses an object by key; the
/// field names are those of the request message.
pub fn object_key(
    namespace_field: &str,
    name_field: &str,
    namespace: &str,
    name: &str,
) -> Result<(String, String), ValidationError> {
    let namespace = namespace_or_default(namespace);
    crate::model::validation::validate_name(namespace_field, &namespace)?;
    crate::model::validation::validate_name(name_field, name)?;
    Ok((namespace, name.to_string()))
}

/// A service from a request, validated.
pub fn service_from_proto(s: Option<pb::Service>) -> Result<Service, ValidationError> {
    let s = s.ok_or_else(|| ValidationError::new("service", "is required"))?;
    let mut ports = Vec::with_capacity(s.ports.len());
    for (i, p) in s.ports.iter().enumerate() {
        let protocol = if p.protocol.is_empty() {
            Protocol::Http
        } else {
            p.protocol.parse::<Protocol>().map_err(|e| {
                ValidationError::new(format!("service.ports[{i}].protocol"), e.to_string())
            })?
        };
        ports.push(ServicePort {
            name: p.name.clone(),
            port: p.port,
            protocol,
        });
    }
    let service = Service {
        name: s.name,
        namespace: namespace_or_default(&s.namespace),
        ports,
        labels: sorted(s.labels),
        metadata: sorted(s.metadata),
        depends_on: s.depends_on,
    };
    service.validate().map_err(|e| in_request("service", e))?;
    Ok(service)
}

/// A stored service as a response message.
pub fn service_to_proto(s: &Stored<Service>) -> pb::Service {
    pb::Service {
        name: s.value.name.clone(),
        namespace: s.value.namespace.clone(),
        ports: s
            .value
            .ports
            .iter()
            .map(|p| pb::ServicePort {
                name: p.name.clone(),
                port: p.port,
                protocol: p.protocol.to_string(),
            })
            .collect(),
        labels: to_message_map(&s.value.labels),
        metadata: to_message_map(&s.value.metadata),
        depends_on: s.value.depends_on.clone(),
        create_revision: s.create_revision,
        mod_revision: s.mod_revision,
        status: None,
    }
}

/// A stored service with its health summary, for reads.
pub fn service_with_status(
    state: &crate::store::RegistryState,
    s: &Stored<Service>,
) -> pb::Service {
    let h = crate::health::status::service_health(state, &s.value);
    pb::Service {
        status: Some(pb::ServiceStatus {
            total_endpoints: h.total,
            available_endpoints: h.available,
            unhealthy_endpoints: h.unhealthy,
            draining_endpoints: h.draining,
            panic_threshold: h.panic_threshold,
            panic: h.panic,
            degraded: !h.degraded_dependencies.is_empty(),
            degraded_dependencies: h.degraded_dependencies,
        }),
        ..service_to_proto(s)
    }
}

/// An endpoint from a request, validated. `now_ms` stamps the initial health transition
/// (the proposer's clock, per the design).
pub fn endpoint_from_proto(
    e: Option<pb::Endpoint>,
    now_ms: u64,
) -> Result<Endpoint, ValidationError> {
    let e = e.ok_or_else(|| ValidationError::new("endpoint", "is required"))?;
    let health = match &e.health {
        Some(h) if !h.status.is_empty() => Health {
            status: h
                .status
                .parse::<HealthStatus>()
                .map_err(|err| ValidationError::new("endpoint.health.status", err.to_string()))?,
            since_ms: now_ms,
            reason: if h.reason.is_empty() {
                "set at registration".to_string()
            } else {
                h.reason.clone()
            },
        },
        _ => Health {
            status: HealthStatus::Unknown,
            since_ms: now_ms,
            reason: "registered".to_string(),
        },
    };
    let locality = e.locality.clone().unwrap_or_default();
    let endpoint = Endpoint {
        id: e.id,
        service: e.service,
        namespace: namespace_or_default(&e.namespace),
        address: e.address,
        port: e.port,
        labels: sorted(e.labels),
        locality: Locality {
            region: locality.region,
            zone: locality.zone,
            subzone: locality.subzone,
        },
        weight: e.weight.unwrap_or(1),
        priority: e.priority,
        ttl: (e.ttl_ms > 0).then(|| crate::model::DurationSpec::from_millis(e.ttl_ms)),
        health,
    };
    endpoint
        .validate()
        .map_err(|err| in_request("endpoint", err))?;
    Ok(endpoint)
}

/// A stored endpoint as a response message.
pub fn endpoint_to_proto(e: &Stored<Endpoint>) -> pb::Endpoint {
    let v = &e.value;
    pb::Endpoint {
        id: v.id.clone(),
        service: v.service.clone(),
        namespace: v.namespace.clone(),
        address: v.address.clone(),
        port: v.port,
        labels: to_message_map(&v.labels),
        locality: Some(pb::Locality {
            region: v.locality.region.clone(),
            zone: v.locality.zone.clone(),
            subzone: v.locality.subzone.clone(),
        }),
        weight: Some(v.weight),
        priority: v.priority,
        ttl_ms: v.ttl.map_or(0, |t| t.as_millis()),
        health: Some(pb::Health {
            status: v.health.status.to_string(),
            since_unix_ms: v.health.since_ms,
            reason: v.health.reason.clone(),
        }),
        create_revision: e.create_revision,
        mod_revision: e.mod_revision,
    }
}

/// The domain kind for a protobuf kind; `UNSPECIFIED` is an error unless `allow_any`.
pub fn kind_from_proto(kind: i32, allow_any: bool) -> Result<Option<ConfigKind>, ValidationError> {
    match pb::ConfigKind::try_from(kind) {
        Ok(pb::ConfigKind::TrafficPolicy) => Ok(Some(ConfigKind::TrafficPolicy)),
        Ok(pb::ConfigKind::DestinationPolicy) => Ok(Some(ConfigKind::DestinationPolicy)),
        Ok(pb::ConfigKind::HealthCheck) => Ok(Some(ConfigKind::HealthCheck)),
        Ok(pb::ConfigKind::Unspecified) if allow_any => Ok(None),
        _ => Err(ValidationError::new(
            "kind",
            "must be one of TRAFFIC_POLICY, DESTINATION_POLICY, HEALTH_CHECK",
        )),
    }
}

/// The domain kind of a request that must name one.
pub fn required_kind(kind: i32) -> Result<ConfigKind, ValidationError> {
    kind_from_proto(kind, false)?.ok_or_else(|| {
        ValidationError::new(
            "kind",
            "must be one of TRAFFIC_POLICY, DESTINATION_POLICY, HEALTH_CHECK",
        )
    })
}

/// The protobuf kind for a domain kind.
pub fn kind_to_proto(kind: ConfigKind) -> pb::ConfigKind {
    match kind {
        ConfigKind::TrafficPolicy => pb::ConfigKind::TrafficPolicy,
        ConfigKind::DestinationPolicy => pb::ConfigKind::DestinationPolicy,
        ConfigKind::HealthCheck => pb::ConfigKind::HealthCheck,
    }
}

/// Largest `spec_json` accepted, so a config object cannot bloat every replica.
pub const MAX_SPEC_JSON_BYTES: usize = 64 * 1024;

/// A config object from a request: `(namespace, name, spec)`, validated.
pub fn config_from_proto(
    o: Option<pb::ConfigObject>,
) -> Result<(String, String, ConfigSpec), ValidationError> {
    let o = o.ok_or_else(|| ValidationError::new("object", "is required"))?;
    let kind = required_kind(o.kind)?;
    let (namespace, name) = object_key("object.namespace", "object.name", &o.namespace, &o.name)?;
    if o.spec_json.len() > MAX_SPEC_JSON_BYTES {
        return Err(ValidationError::new(
            "object.spec_json",
            format!("must be at most {MAX_SPEC_JSON_BYTES} bytes"),
        ));
    }
    let spec = ConfigSpec::from_json(kind, &o.spec_json)
        .map_err(|e| ValidationError::new("object.spec_json", e))?;
    // Paths inside the JSON keep its own (camelCase) spelling.
    spec.validate().map_err(|e| {
        let inner = e
            .field
            .strip_prefix("spec.")
            .unwrap_or(&e.field)
            .to_string();
        ValidationError::new(format!("object.spec_json.{inner}"), e.rule)
    })?;
    Ok((namespace, name, spec))
}

/// A stored config object as a response message.
pub fn config_to_proto(c: &StoredConfig) -> pb::ConfigObject {
    pb::ConfigObject {
        kind: kind_to_proto(c.stored.value.kind()) as i32,
        namespace: c.namespace.clone(),
        name: c.name.clone(),
        spec_json: c.stored.value.to_json(),
        create_revision: c.stored.create_revision,
        mod_revision: c.stored.mod_revision,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_paths_become_request_paths() {
        assert_eq!(request_field("endpoint", "metadata.name"), "endpoint.id");
        assert_eq!(request_field("endpoint", "spec.weight"), "endpoint.weight");
        assert_eq!(request_field("service", "metadata.name"), "service.name");
        assert_eq!(
            request_field("service", "spec.ports[0].port"),
            "service.ports[0].port"
        );
        assert_eq!(
            request_field("service", "spec.dependsOn[1]"),
            "service.depends_on[1]"
        );
    }

    fn endpoint(weight: Option<u32>, port: u32) -> pb::Endpoint {
        pb::Endpoint {
            id: "web-1".into(),
            service: "web".into(),
            address: "127.0.0.1".into(),
            port,
            weight,
            ..Default::default()
        }
    }

    #[test]
    fn weight_defaults_to_one_but_zero_is_rejected() {
        assert_eq!(
            endpoint_from_proto(Some(endpoint(None, 80)), 0)
                .unwrap()
                .weight,
            1
        );
        let e = endpoint_from_proto(Some(endpoint(Some(0), 80)), 0).unwrap_err();
        assert_eq!(e.field, "endpoint.weight");
    }

    #[test]
    fn port_out_of_range_names_the_field() {
        for port in [0, 70000] {
            let e = endpoint_from_proto(Some(endpoint(None, port)), 0).unwrap_err();
            assert_eq!(e.field, "endpoint.port");
            assert!(e.rule.contains("65535"), "{}", e.rule);
        }
    }

    #[test]
    fn unknown_protocol_is_rejected() {
        let s = pb::Service {
            name: "web".into(),
            ports: vec![pb::ServicePort {
                name: "http".into(),
                port: 80,
                protocol: "smtp".into(),
            }],
            ..Default::default()
        };
        let e = service_from_proto(Some(s)).unwrap_err();
        assert_eq!(e.field, "service.ports[0].protocol");
    }
}
