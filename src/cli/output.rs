//! Rendering of API objects for people (tables) and scripts (JSON, YAML), in the resource
//! document shape of `bowline apply -f` plus a `status` section.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::model::resource::{to_document, Resource};
use crate::model::{
    ConfigKind, ConfigSpec, DurationSpec, Endpoint, Health, Locality, Service, ServicePort,
};
use crate::proto::v1 as pb;

/// Output format of the CLI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns for people.
    Table,
    /// JSON (one object, or an array for lists).
    Json,
    /// YAML documents separated by `---` (can be fed back to `bowline apply -f`).
    Yaml,
}

/// A proto service as a resource document with status.
pub fn service_document(s: &pb::Service) -> Value {
    let service = Service {
        name: s.name.clone(),
        namespace: s.namespace.clone(),
        ports: s
            .ports
            .iter()
            .map(|p| ServicePort {
                name: p.name.clone(),
                port: p.port,
                protocol: p.protocol.parse().unwrap_or(crate::model::Protocol::Tcp),
            })
            .collect(),
        labels: s.labels.clone().into_iter().collect(),
        metadata: s.metadata.clone().into_iter().collect(),
        depends_on: s.depends_on.clone(),
    };
    let mut doc = to_document(&Resource::Service(service));
    doc["status"] = json!({"createRevision": s.create_revision, "modRevision": s.mod_revision});
    if let Some(st) = &s.status {
        doc["status"]["health"] = json!({
            "totalEndpoints": st.total_endpoints,
            "availableEndpoints": st.available_endpoints,
            "unhealthyEndpoints": st.unhealthy_endpoints,
            "drainingEndpoints": st.draining_endpoints,
            "panicThreshold": st.panic_threshold,
            "panic": st.panic,
            "degraded": st.degraded,
            "degradedDependencies": st.degraded_dependencies,
        });
    }
    doc
}

/// A proto endpoint as a resource document with status.
pub fn endpoint_document(e: &pb::Endpoint) -> Value {
    let health = e.health.clone().unwrap_or_default();
    let locality = e.locality.clone().unwrap_or_default();
    let endpoint = Endpoint {
        id: e.id.clone(),
        service: e.service.clone(),
        namespace: e.namespace.clone(),
        address: e.address.clone(),
        port: e.port,
        labels: e.labels.clone().into_iter().collect(),
        locality: Locality {
            region: locality.region,
            zone: locality.zone,
            subzone: locality.subzone,
        },
        weight: e.weight.unwrap_or(1),
        priority: e.priority,
        ttl: (e.ttl_ms > 0).then(|| DurationSpec::from_millis(e.ttl_ms)),
        health: Health {
            status: health.status.parse().unwrap_or_default(),
            since_ms: health.since_unix_ms,
            reason: health.reason,
        },
    };
    let mut doc = to_document(&Resource::Endpoint(endpoint));
    let status = doc
        .get("status")
        .cloned()
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}));
    let mut status = status.as_object().cloned().unwrap_or_default();
    status.insert("createRevision".into(), json!(e.create_revision));
    status.insert("modRevision".into(), json!(e.mod_revision));
    doc["status"] = Value::Object(status);
    doc
}

/// The domain kind of a proto config object.
pub fn config_kind(o: &pb::ConfigObject) -> Option<ConfigKind> {
    match pb::ConfigKind::try_from(o.kind).ok()? {
        pb::ConfigKind::TrafficPolicy => Some(ConfigKind::TrafficPolicy),
        pb::ConfigKind::DestinationPolicy => Some(ConfigKind::DestinationPolicy),
        pb::ConfigKind::HealthCheck => Some(ConfigKind::HealthCheck),
        pb::ConfigKind::Unspecified => None,
    }
}

/// A proto config object as a resource document with status.
pub fn config_document(o: &pb::ConfigObject) -> Value {
    let spec = config_kind(o).and_then(|kind| ConfigSpec::from_json(kind, &o.spec_json).ok());
    let mut doc = match spec {
        Some(spec) => to_document(&Resource::Config {
            namespace: o.namespace.clone(),
            name: o.name.clone(),
            spec,
        }),
        None => {
            json!({"metadata": {"name": o.name, "namespace": o.namespace}, "spec": o.spec_json})
        }
    };
    doc["status"] = json!({"createRevision": o.create_revision, "modRevision": o.mod_revision});
    doc
}

/// Prints documents as JSON or YAML; `single` prints one object rather than a list.
pub fn print_documents(format: OutputFormat, docs: &[Value], single: bool) -> anyhow::Result<()> {
    match format {
        OutputFormat::Json if single && docs.len() == 1 => {
            println!("{}", serde_json::to_string_pretty(&docs[0])?)
        }
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(docs)?),
        OutputFormat::Yaml => {
            for (i, doc) in docs.iter().enumerate() {
                if i > 0 {
                    println!("---");
                }
                print!("{}", serde_yaml::to_string(doc)?);
            }
        }
        OutputFormat::Table => unreachable!("tables are printed by the caller"),
    }
    Ok(())
}

/// Prints rows as aligned columns.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{:width$}   ", cell, width = widths[i]));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
}

/// `k=v,k2=v2` from a map, sorted.
pub fn labels_text(labels: &std::collections::HashMap<String, String>) -> String {
    let sorted: BTreeMap<_, _> = labels.iter().collect();
    sorted
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A Unix-millisecond time as "12s ago", "5m ago", ….
pub fn ago(unix_ms: u64) -> String {
    if unix_ms == 0 {
        return "-".to_string();
    }
    let now = crate::api::now_ms();
    let secs = now.saturating_sub(unix_ms) / 1000;
    match secs {
        0..=119 => format!("{secs}s ago"),
        120..=7199 => format!("{}m ago", secs / 60),
        7200..=172_799 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}
