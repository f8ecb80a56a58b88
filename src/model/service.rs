//! Services: named, namespaced sets of ports that endpoints register under.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::string_map::StringMap;
use super::validation::{
    first_duplicate, validate_labels, validate_max_entries, validate_metadata, validate_name,
    validate_range, ParseEnumError, ValidationError,
};

/// Namespace used when a document or request does not name one.
pub const DEFAULT_NAMESPACE: &str = "default";
/// Most ports a service may declare.
pub const MAX_PORTS: usize = 64;
/// Most dependencies a service may declare.
pub const MAX_DEPENDS_ON: usize = 64;

/// Application protocol spoken on a port; decides which proxy filters apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1.
    Http,
    /// HTTP/2 (h2c or TLS).
    Http2,
    /// gRPC over HTTP/2.
    Grpc,
    /// Opaque TCP.
    Tcp,
}

impl Protocol {
    /// All protocols, in declaration order.
    pub const ALL: [Protocol; 4] = [
        Protocol::Http,
        Protocol::Http2,
        Protocol::Grpc,
        Protocol::Tcp,
    ];

    /// The lowercase wire spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Http2 => "http2",
            Protocol::Grpc => "grpc",
            Protocol::Tcp => "tcp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Protocol {
    type Err = ParseEnumError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Protocol::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| ParseEnumError::new("protocol", s, &Protocol::ALL.map(Protocol::as_str)))
    }
}

/// One port a service listens on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServicePort {
    /// DNS-1123 label, unique within the service.
    pub name: String,
    /// Port number, 1..=65535, unique within the service.
    pub port: u32,
    /// Protocol spoken on this port.
    pub protocol: Protocol,
}

/// A registered service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    /// DNS-1123 label, unique within the namespace.
    pub name: String,
    /// DNS-1123 label; [`DEFAULT_NAMESPACE`] when unspecified.
    pub namespace: String,
    /// Ports the service exposes.
    pub ports: Vec<ServicePort>,
    /// Selector-style labels (document `metadata.labels`).
    pub labels: StringMap,
    /// Free-form annotations (document `spec.metadata`).
    pub metadata: StringMap,
    /// Names of services in the same namespace this one calls.
    pub depends_on: Vec<String>,
}

impl Service {
    /// Checks every field; field paths are those of the resource document.
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_name("metadata.name", &self.name)?;
        validate_name("metadata.namespace", &self.namespace)?;
        validate_labels("metadata.labels", &self.labels)?;
        validate_metadata("spec.metadata", &self.metadata)?;

        validate_max_entries("spec.ports", self.ports.len(), MAX_PORTS)?;
        for (i, p) in self.ports.iter().enumerate() {
            validate_name(&format!("spec.ports[{i}].name"), &p.name)?;
            validate_range(&format!("spec.ports[{i}].port"), p.port, 1, 65535)?;
        }
        if let Some((first, dup)) = first_duplicate(&self.ports, |p| p.name.clone()) {
            return Err(ValidationError::new(
                format!("spec.ports[{dup}].name"),
                format!("must be unique (also used by spec.ports[{first}])"),
            ));
        }
        if let Some((first, dup)) = first_duplicate(&self.ports, |p| p.port) {
            return Err(ValidationError::new(
                format!("spec.ports[{dup}].port"),
                format!("must be unique (also used by spec.ports[{first}])"),
            ));
        }

        validate_max_entries("spec.dependsOn", self.depends_on.len(), MAX_DEPENDS_ON)?;
        for (i, dep) in self.depends_on.iter().enumerate() {
            let field = format!("spec.dependsOn[{i}]");
            validate_name(&field, dep)?;
            if *dep == self.name {
                return Err(ValidationError::new(
                    field,
                    "must not name the service itself",
                ));
            }
        }
        if let Some((first, dup)) = first_duplicate(&self.depends_on, |d| d.clone()) {
            return Err(ValidationError::new(
                format!("spec.dependsOn[{dup}]"),
                format!("must be unique (duplicates spec.dependsOn[{first}])"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> Service {
        Service {
            name: "web".into(),
            namespace: DEFAULT_NAMESPACE.into(),
            ports: vec![
                ServicePort {
                    name: "http".into(),
                    port: 8080,
                    protocol: Protocol::Http,
                },
                ServicePort {
                    name: "grpc".into(),
                    port: 9090,
                    protocol: Protocol::Grpc,
                },
            ],
            labels: [("team".to_string(), "shop".to_string())].into(),
            metadata: [(
                "owner".to_string(),
                "shop team <shop@example.com>".to_string(),
            )]
            .into(),
            depends_on: vec!["db".into(), "cache".into()],
        }
    }

    fn invalid(mutate: impl FnOnce(&mut Service)) -> ValidationError {
        let mut s = sample();
        mutate(&mut s);
        s.validate().unwrap_err()
    }

    #[test]
    fn valid_sample() {
        sample().validate().unwrap();
        let mut s = sample();
        s.ports.clear();
        s.depends_on.clear();
        s.validate().unwrap();
    }

    #[test]
    fn rules() {
        let e = invalid(|s| s.name = "Web".into());
        assert_eq!(e.field, "metadata.name");
        assert!(e.rule.contains("DNS-1123 label"));
        assert_eq!(
            invalid(|s| s.namespace = String::new()).field,
            "metadata.namespace"
        );
        assert_eq!(
            invalid(|s| {
                s.labels.insert("bad key".into(), "v".into());
            })
            .field,
            "metadata.labels[\"bad key\"]"
        );
        assert_eq!(
            invalid(|s| {
                s.metadata.insert("k".into(), "x".repeat(2000));
            })
            .field,
            "spec.metadata[\"k\"]"
        );

        let e = invalid(|s| s.ports[0].port = 0);
        assert_eq!(
            e.to_string(),
            "spec.ports[0].port: must be between 1 and 65535"
        );
        assert_eq!(
            invalid(|s| s.ports[1].port = 65536).field,
            "spec.ports[1].port"
        );
        assert_eq!(
            invalid(|s| s.ports[1].name = "Grpc".into()).field,
            "spec.ports[1].name"
        );
        let e = invalid(|s| s.ports[1].name = "http".into());
        assert_eq!(e.field, "spec.ports[1].name");
        assert!(e.rule.contains("unique"));
        let e = invalid(|s| s.ports[1].port = 8080);
        assert_eq!(e.field, "spec.ports[1].port");
        assert!(e.rule.contains("unique"));
        let e = invalid(|s| {
            s.ports = (1..=65)
                .map(|i| ServicePort {
                    name: format!("p{i}"),
                    port: i,
                    protocol: Protocol::Tcp,
                })
                .collect()
        });
        assert_eq!(e.field, "spec.ports");

        assert_eq!(
            invalid(|s| s.depends_on[1] = "DB".into()).field,
            "spec.dependsOn[1]"
        );
        let e = invalid(|s| s.depends_on[0] = "web".into());
        assert_eq!(e.field, "spec.dependsOn[0]");
        assert!(e.rule.contains("itself"));
        let e = invalid(|s| s.depends_on[1] = "db".into());
        assert_eq!(e.field, "spec.dependsOn[1]");
        assert!(e.rule.contains("unique"));
        let e = invalid(|s| s.depends_on = (0..65).map(|i| format!("d{i}")).collect());
        assert_eq!(e.field, "spec.dependsOn");
    }

    #[test]
    fn protocol_text() {
        for p in Protocol::ALL {
            assert_eq!(p.to_string().parse::<Protocol>().unwrap(), p);
            assert_eq!(serde_json::to_string(&p).unwrap(), format!("\"{p}\""));
        }
        assert_eq!("GRPC".parse::<Protocol>().unwrap(), Protocol::Grpc);
        let err = "udp".parse::<Protocol>().unwrap_err().to_string();
        assert_eq!(
            err,
            "unknown protocol \"udp\"; expected one of: http, http2, grpc, tcp"
        );
    }

    #[test]
    fn roundtrips() {
        let s = sample();
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Service>(&json).unwrap(), s);
        let cfg = bincode::config::standard();
        let bytes = bincode::serde::encode_to_vec(&s, cfg).unwrap();
        let (back, _): (Service, usize) = bincode::serde::decode_from_slice(&bytes, cfg).unwrap();
        assert_eq!(back, s);
    }
}
