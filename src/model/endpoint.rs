//! Endpoints: concrete addresses serving a service, with locality and health.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::duration::DurationSpec;
use super::string_map::StringMap;
use super::validation::{
    is_dns_subdomain, validate_labels, validate_name, validate_range, validate_subdomain,
    ParseEnumError, ValidationError,
};

/// Longest region, zone or subzone name.
pub const MAX_LOCALITY_LEN: usize = 63;
/// Longest health reason, in bytes.
pub const MAX_HEALTH_REASON_BYTES: usize = 256;
/// Endpoint weight bounds (inclusive).
pub const ENDPOINT_WEIGHT_RANGE: (u32, u32) = (1, 128);
/// Highest (least preferred) endpoint priority.
pub const MAX_PRIORITY: u32 = 127;
/// Shortest accepted endpoint TTL.
pub const MIN_TTL: DurationSpec = DurationSpec::from_secs(1);

/// Where an endpoint runs; drives locality-aware load balancing and failover.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Locality {
    /// Region, e.g. `eu-west-1`; empty when unknown.
    pub region: String,
    /// Zone within the region; requires `region`.
    pub zone: String,
    /// Subzone within the zone (rack, node); requires `zone`.
    pub subzone: String,
}

impl Locality {
    /// Checks lengths, characters and that each level has its parent.
    /// `prefix` is the path of the locality itself, e.g. `spec.locality`.
    pub fn validate(&self, prefix: &str) -> Result<(), ValidationError> {
        for (name, value) in [
            ("region", &self.region),
            ("zone", &self.zone),
            ("subzone", &self.subzone),
        ] {
            if !is_locality_part(value) {
                return Err(ValidationError::new(
                    format!("{prefix}.{name}"),
                    "must be at most 63 characters of letters, digits, '.', '_', '-'",
                ));
            }
        }
        if !self.subzone.is_empty() && self.zone.is_empty() {
            return Err(ValidationError::new(
                format!("{prefix}.zone"),
                "must be set when subzone is set",
            ));
        }
        if !self.zone.is_empty() && self.region.is_empty() {
            return Err(ValidationError::new(
                format!("{prefix}.region"),
                "must be set when zone is set",
            ));
        }
        Ok(())
    }
}

pub(crate) fn is_locality_part(v: &str) -> bool {
    v.len() <= MAX_LOCALITY_LEN
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Health as last observed by checks or reported by the endpoint.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    /// Receives traffic.
    Healthy,
    /// Failing checks; receives no traffic.
    Unhealthy,
    /// Finishing in-flight work; receives no new traffic.
    Draining,
    /// Not yet checked.
    #[default]
    Unknown,
}

impl HealthStatus {
    /// All statuses, in declaration order.
    pub const ALL: [HealthStatus; 4] = [
        HealthStatus::Healthy,
        HealthStatus::Unhealthy,
        HealthStatus::Draining,
        HealthStatus::Unknown,
    ];

    /// The lowercase wire spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Healthy => "healthy",
            HealthStatus::Unhealthy => "unhealthy",
            HealthStatus::Draining => "draining",
            HealthStatus::Unknown => "unknown",
        }
    }
}

impl fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for HealthStatus {
    type Err = ParseEnumError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        HealthStatus::ALL
            .into_iter()
            .find(|h| h.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                ParseEnumError::new(
                    "health status",
                    s,
                    &HealthStatus::ALL.map(HealthStatus::as_str),
                )
            })
    }
}

/// Current health plus when and why it last changed.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    /// Current status.
    pub status: HealthStatus,
    /// Unix milliseconds of the last status transition; 0 if never set.
    pub since_ms: u64,
    /// Short explanation of the last transition, at most 256 bytes.
    pub reason: String,
}

/// One address serving a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// DNS-1123 subdomain, unique within the service (document `metadata.name`).
    pub id: String,
    /// Name of the service this endpoint serves (document `metadata.service`).
    pub service: String,
    /// Namespace of the service.
    pub namespace: String,
    /// IPv4/IPv6 literal or DNS-1123 host name.
    pub address: String,
    /// Port number, 1..=65535.
    pub port: u32,
    /// Labels used by subsets, e.g. `version: v1`.
    pub labels: StringMap,
    /// Where the endpoint runs.
    pub locality: Locality,
    /// Relative load-balancing weight, 1..=128.
    pub weight: u32,
    /// Failover priority, 0 (preferred) ..= 127.
    pub priority: u32,
    /// Expire the registration unless renewed within this time (1s..=24h).
    pub ttl: Option<DurationSpec>,
    /// Current health.
    pub health: Health,
}

impl Endpoint {
    /// Checks every field; field paths are those of the resource document.
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_subdomain("metadata.name", &self.id)?;
        validate_name("metadata.service", &self.service)?;
        validate_name("metadata.namespace", &self.namespace)?;
        if !is_valid_address(&self.address) {
            return Err(ValidationError::new(
                "spec.address",
                "must be an IPv4/IPv6 address or a DNS-1123 subdomain (at most 253 characters)",
            ));
        }
        validate_range("spec.port", self.port, 1, 65535)?;
        validate_labels("spec.labels", &self.labels)?;
        self.locality.validate("spec.locality")?;
        let (min_w, max_w) = ENDPOINT_WEIGHT_RANGE;
        validate_range("spec.weight", self.weight, min_w, max_w)?;
        validate_range("spec.priority", self.priority, 0, MAX_PRIORITY)?;
        if let Some(ttl) = self.ttl {
            validate_range("spec.ttl", ttl, MIN_TTL, DurationSpec::MAX)?;
        }
        if self.health.reason.len() > MAX_HEALTH_REASON_BYTES {
            return Err(ValidationError::new(
                "status.health.reason",
                format!("must be at most {MAX_HEALTH_REASON_BYTES} bytes"),
            ));
        }
        Ok(())
    }
}

fn is_valid_address(address: &str) -> bool {
    if address.parse::<IpAddr>().is_ok() {
        return true;
    }
    // All-numeric names like "10.0.0.300" are mistyped IPs, not host names.
    let numeric = address.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    !numeric && is_dns_subdomain(address)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> Endpoint {
        Endpoint {
            id: "web-1.pod".into(),
            service: "web".into(),
            namespace: "default".into(),
            address: "10.0.0.12".into(),
            port: 8080,
            labels: [("version".to_string(), "v1".to_string())].into(),
            locality: Locality {
                region: "eu".into(),
                zone: "eu-1a".into(),
                subzone: "rack_7".into(),
            },
            weight: 10,
            priority: 0,
            ttl: Some(DurationSpec::from_secs(30)),
            health: Health {
                status: HealthStatus::Healthy,
                since_ms: 1_700_000_000_000,
                reason: "passed 2 checks".into(),
            },
        }
    }

    fn invalid(mutate: impl FnOnce(&mut Endpoint)) -> ValidationError {
        let mut e = sample();
        mutate(&mut e);
        e.validate().unwrap_err()
    }

    fn valid(mutate: impl FnOnce(&mut Endpoint)) {
        let mut e = sample();
        mutate(&mut e);
        e.validate().unwrap();
    }

    #[test]
    fn valid_variants() {
        valid(|_| {});
        valid(|e| e.address = "::1".into());
        valid(|e| e.address = "2001:db8::1".into());
        valid(|e| e.address = "web-1.default.svc.cluster.local".into());
        valid(|e| e.locality = Locality::default());
        valid(|e| {
            e.locality.zone.clear();
            e.locality.subzone.clear();
        });
        valid(|e| {
            e.weight = 128;
            e.priority = 127;
            e.ttl = None;
        });
        valid(|e| e.ttl = Some(DurationSpec::MAX));
        valid(|e| e.port = 65535);
    }

    #[test]
    fn rules() {
        assert_eq!(invalid(|e| e.id = "Web".into()).field, "metadata.name");
        assert_eq!(invalid(|e| e.id = "a".repeat(254)).field, "metadata.name");
        assert_eq!(
            invalid(|e| e.service = "web.x".into()).field,
            "metadata.service"
        );
        assert_eq!(
            invalid(|e| e.namespace = "-".into()).field,
            "metadata.namespace"
        );
        for bad in ["10.0.0.300", "[::1]", "", "host_name", "a..b", "Host"] {
            assert_eq!(
                invalid(|e| e.address = bad.into()).field,
                "spec.address",
                "{bad}"
            );
        }
        assert_eq!(invalid(|e| e.port = 0).field, "spec.port");
        assert_eq!(invalid(|e| e.port = 70000).field, "spec.port");
        assert_eq!(
            invalid(|e| {
                e.labels.insert("k".into(), "a b".into());
            })
            .field,
            "spec.labels[\"k\"]"
        );
        let e = invalid(|e| e.weight = 0);
        assert_eq!(e.to_string(), "spec.weight: must be between 1 and 128");
        assert_eq!(invalid(|e| e.weight = 129).field, "spec.weight");
        assert_eq!(
            invalid(|e| e.priority = 128).to_string(),
            "spec.priority: must be between 0 and 127"
        );
        let e = invalid(|e| e.ttl = Some(DurationSpec::from_millis(999)));
        assert_eq!(e.to_string(), "spec.ttl: must be between 1s and 24h");
        assert_eq!(
            invalid(|e| e.ttl = Some(DurationSpec::from_millis(DurationSpec::MAX.0 + 1))).field,
            "spec.ttl"
        );
        assert_eq!(
            invalid(|e| e.health.reason = "x".repeat(257)).field,
            "status.health.reason"
        );
    }

    #[test]
    fn locality_rules() {
        assert_eq!(
            invalid(|e| e.locality.zone.clear()).to_string(),
            "spec.locality.zone: must be set when subzone is set"
        );
        assert_eq!(
            invalid(|e| {
                e.locality.region.clear();
                e.locality.subzone.clear();
            })
            .to_string(),
            "spec.locality.region: must be set when zone is set"
        );
        assert_eq!(
            invalid(|e| e.locality.region = "eu west".into()).field,
            "spec.locality.region"
        );
        assert_eq!(
            invalid(|e| e.locality.subzone = "r".repeat(64)).field,
            "spec.locality.subzone"
        );
    }

    #[test]
    fn health_status_text() {
        for h in HealthStatus::ALL {
            assert_eq!(h.to_string().parse::<HealthStatus>().unwrap(), h);
            assert_eq!(serde_json::to_string(&h).unwrap(), format!("\"{h}\""));
        }
        assert_eq!(
            "Draining".parse::<HealthStatus>().unwrap(),
            HealthStatus::Draining
        );
        assert!("sick"
            .parse::<HealthStatus>()
            .unwrap_err()
            .to_string()
            .contains("healthy, unhealthy, draining, unknown"));
        assert_eq!(HealthStatus::default(), HealthStatus::Unknown);
    }

    #[test]
    fn roundtrips() {
        for ep in [sample(), {
            let mut e = sample();
            e.ttl = None;
            e
        }] {
            let json = serde_json::to_string(&ep).unwrap();
            assert_eq!(serde_json::from_str::<Endpoint>(&json).unwrap(), ep);
            let cfg = bincode::config::standard();
            let bytes = bincode::serde::encode_to_vec(&ep, cfg).unwrap();
            let (back, used): (Endpoint, usize) =
                bincode::serde::decode_from_slice(&bytes, cfg).unwrap();
            assert_eq!(back, ep);
            assert_eq!(used, bytes.len());
        }
    }
}
