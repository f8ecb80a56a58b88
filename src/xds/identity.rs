//! Who a proxy is, from the `node` of its first xDS request. The contract (also in
//! docs/xds.md): `node.cluster` or `metadata.service` names the service the proxy fronts;
//! `metadata.namespace` (default `default`); `metadata.outbound_port` (default 15001) is
//! the outbound HTTP listener; `metadata.inbound_port` and `metadata.app_port` add an
//! inbound listener; `metadata.proxyless: true` marks a proxyless gRPC client.

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::{value::Kind, Struct};

use super::translate::{ProxyIdentity, ProxyKind};
use crate::model::DEFAULT_NAMESPACE;

/// Default outbound listener port (Istio's convention).
pub const DEFAULT_OUTBOUND_PORT: u16 = 15001;

fn field<'a>(metadata: &'a Option<Struct>, key: &str) -> Option<&'a Kind> {
    metadata.as_ref()?.fields.get(key)?.kind.as_ref()
}

fn text(metadata: &Option<Struct>, key: &str) -> Option<String> {
    match field(metadata, key)? {
        Kind::StringValue(s) if !s.is_empty() => Some(s.clone()),
        Kind::NumberValue(n) => Some(format!("{n}")),
        _ => None,
    }
}

fn port(metadata: &Option<Struct>, key: &str) -> Result<Option<u16>, String> {
    match field(metadata, key) {
        None => Ok(None),
        Some(Kind::NumberValue(n)) if *n >= 1.0 && *n <= 65535.0 && n.fract() == 0.0 => {
            Ok(Some(*n as u16))
        }
        Some(Kind::StringValue(s)) => s
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .map(Some)
            .ok_or_else(|| format!("node.metadata.{key}: must be a port between 1 and 65535")),
        Some(_) => Err(format!(
            "node.metadata.{key}: must be a port between 1 and 65535"
        )),
    }
}

/// The identity of a proxy, or why its node is unusable.
pub fn identity(node: &Node) -> Result<ProxyIdentity, String> {
    let md = &node.metadata;
    let proxyless = matches!(field(md, "proxyless"), Some(Kind::BoolValue(true)))
        || matches!(field(md, "proxyless"), Some(Kind::StringValue(s)) if s == "true");
    let namespace = text(md, "namespace").unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
    let service =
        text(md, "service").or_else(|| (!node.cluster.is_empty()).then(|| node.cluster.clone()));
    let region = node
        .locality
        .as_ref()
        .map(|l| l.region.clone())
        .filter(|r| !r.is_empty());
    if proxyless {
        return Ok(ProxyIdentity {
            namespace,
            service,
            kind: ProxyKind::Proxyless,
            region,
        });
    }
    let outbound_port = port(md, "outbound_port")?.unwrap_or(DEFAULT_OUTBOUND_PORT);
    let inbound = match (port(md, "inbound_port")?, port(md, "app_port")?) {
        (Some(listen), Some(app)) => Some((listen, app)),
        (None, None) => None,
        _ => return Err("node.metadata: inbound_port and app_port go together".to_string()),
    };
    Ok(ProxyIdentity {
        namespace,
        service,
        kind: ProxyKind::Sidecar {
            outbound_port,
            inbound,
        },
        region,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::Value;

    fn node(cluster: &str, fields: &[(&str, Kind)]) -> Node {
        Node {
            id: "proxy-1".into(),
            cluster: cluster.into(),
            metadata: Some(Struct {
                fields: fields
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.to_string(),
                            Value {
                                kind: Some(v.clone()),
                            },
                        )
                    })
                    .collect(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn sidecar_and_proxyless_identities() {
        let id = identity(&node(
            "web",
            &[
                ("inbound_port", Kind::NumberValue(15006.0)),
                ("app_port", Kind::StringValue("8080".into())),
            ],
        ))
        .unwrap();
        assert_eq!(id.service.as_deref(), Some("web"));
        assert_eq!(
            id.kind,
            ProxyKind::Sidecar {
                outbound_port: 15001,
                inbound: Some((15006, 8080))
            }
        );
        let id = identity(&node("", &[("proxyless", Kind::BoolValue(true))])).unwrap();
        assert_eq!(id.kind, ProxyKind::Proxyless);
        assert_eq!(id.region, None);
        let mut located = node("web", &[]);
        located.locality = Some(envoy_types::pb::envoy::config::core::v3::Locality {
            region: "eu".into(),
            ..Default::default()
        });
        assert_eq!(identity(&located).unwrap().region.as_deref(), Some("eu"));
        assert!(identity(&node("web", &[("app_port", Kind::NumberValue(1.0))])).is_err());
        assert!(identity(&node(
            "web",
            &[("outbound_port", Kind::NumberValue(70000.0))]
        ))
        .is_err());
    }
}
