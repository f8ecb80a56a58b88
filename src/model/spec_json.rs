//! Config specs as JSON in the resource-file shape: the form `spec_json` takes in the API.

use serde_json::Value;

use super::config::{ConfigKind, ConfigSpec, DestinationPolicy, HealthCheckSpec, TrafficPolicy};

/// Drops `null` members, so unset optional fields do not show up in output.
pub fn strip_nulls(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(strip_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

impl ConfigSpec {
    /// Parses a spec of `kind` from JSON; unknown fields are errors naming the field.
    pub fn from_json(kind: ConfigKind, json: &str) -> Result<ConfigSpec, String> {
        let parsed = match kind {
            ConfigKind::TrafficPolicy => {
                serde_json::from_str::<TrafficPolicy>(json).map(ConfigSpec::TrafficPolicy)
            }
            ConfigKind::DestinationPolicy => {
                serde_json::from_str::<DestinationPolicy>(json).map(ConfigSpec::DestinationPolicy)
            }
            ConfigKind::HealthCheck => {
                serde_json::from_str::<HealthCheckSpec>(json).map(ConfigSpec::HealthCheck)
            }
        };
        parsed.map_err(|e| e.to_string())
    }

    /// The spec as JSON in the resource-file shape.
    pub fn to_json(&self) -> String {
        let mut value = match self {
            ConfigSpec::TrafficPolicy(s) => serde_json::to_value(s),
            ConfigSpec::DestinationPolicy(s) => serde_json::to_value(s),
            ConfigSpec::HealthCheck(s) => serde_json::to_value(s),
        }
        .unwrap_or(Value::Null);
        strip_nulls(&mut value);
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_json_roundtrips_and_rejects_unknown_fields() {
        let json = r#"{"http":{"path":"/healthz","expectedStatuses":[200]},"interval":"1s","timeout":"500ms","healthyThreshold":2,"unhealthyThreshold":3}"#;
        let spec = ConfigSpec::from_json(ConfigKind::HealthCheck, json).unwrap();
        spec.validate().unwrap();
        let again = ConfigSpec::from_json(ConfigKind::HealthCheck, &spec.to_json()).unwrap();
        assert_eq!(spec, again);
        let err = ConfigSpec::from_json(ConfigKind::HealthCheck, r#"{"bogus":1}"#).unwrap_err();
        assert!(err.contains("bogus"), "{err}");
    }
}
