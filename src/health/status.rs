//! A service's health summary: endpoint counts, Envoy-style panic mode, and dependency
//! health. Pure; computed from the applied state when a service is read.

use crate::model::config::DEFAULT_PANIC_THRESHOLD;
use crate::model::{ConfigKind, ConfigSpec, HealthStatus, Service, DEFAULT_NAMESPACE};
use crate::store::RegistryState;

/// Health of one service as routing would see it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceHealth {
    /// Endpoints registered.
    pub total: u32,
    /// Endpoints that receive traffic: healthy, or not yet checked (as Envoy treats unknown).
    pub available: u32,
    /// Endpoints failing their checks.
    pub unhealthy: u32,
    /// Endpoints draining.
    pub draining: u32,
    /// The panic threshold in percent.
    pub panic_threshold: u32,
    /// Fewer than `panic_threshold` % are available: routing uses every endpoint.
    pub panic: bool,
    /// Dependencies that are missing or have no available endpoint.
    pub degraded_dependencies: Vec<String>,
}

fn counts(state: &RegistryState, namespace: &str, service: &str) -> (u32, u32, u32, u32) {
    let (mut total, mut available, mut unhealthy, mut draining) = (0, 0, 0, 0);
    for e in state.service_endpoints(namespace, service) {
        total += 1;
        match e.value.health.status {
            HealthStatus::Healthy | HealthStatus::Unknown => available += 1,
            HealthStatus::Unhealthy => unhealthy += 1,
            HealthStatus::Draining => draining += 1,
        }
    }
    (total, available, unhealthy, draining)
}

/// The health summary of `service`, a service in `state`.
pub fn service_health(state: &RegistryState, service: &Service) -> ServiceHealth {
    let namespace = if service.namespace.is_empty() {
        DEFAULT_NAMESPACE
    } else {
        &service.namespace
    };
    let name = &service.name;
    let (total, available, unhealthy, draining) = counts(state, namespace, name);
    let panic_threshold = match state
        .config(ConfigKind::HealthCheck, namespace, name)
        .map(|c| &*c.stored.value)
    {
        Some(ConfigSpec::HealthCheck(h)) => h.effective_panic_threshold(),
        _ => DEFAULT_PANIC_THRESHOLD,
    };
    let panic =
        total > 0 && u64::from(available) * 100 < u64::from(panic_threshold) * u64::from(total);
    let degraded_dependencies = service
        .depends_on
        .iter()
        .filter(|dep| {
            state.service(namespace, dep).is_none() || counts(state, namespace, dep).1 == 0
        })
        .cloned()
        .collect();
    ServiceHealth {
        total,
        available,
        unhealthy,
        draining,
        panic_threshold,
        panic,
        degraded_dependencies,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Command;
    use crate::model::{Endpoint, Health, Service};
    use crate::store::apply_command;

    fn service(name: &str, deps: &[&str]) -> Command {
        Command::RegisterService {
            service: Service {
                name: name.into(),
                namespace: "default".into(),
                ports: vec![],
                labels: Default::default(),
                metadata: Default::default(),
                depends_on: deps.iter().map(|d| d.to_string()).collect(),
            },
            expected_revision: None,
        }
    }

    fn endpoint(service: &str, id: &str, status: HealthStatus) -> Command {
        Command::UpsertEndpoint {
            endpoint: Endpoint {
                id: id.into(),
                service: service.into(),
                namespace: "default".into(),
                address: "127.0.0.1".into(),
                port: 80,
                labels: Default::default(),
                locality: Default::default(),
                weight: 1,
                priority: 0,
                ttl: None,
                health: Health {
                    status,
                    since_ms: 0,
                    reason: String::new(),
                },
            },
            expected_revision: None,
            keep_health: false,
        }
    }

    #[test]
    fn panic_below_the_threshold_and_degraded_dependencies() {
        let mut state = RegistryState::default();
        let commands = [
            service("web", &["db", "cache"]),
            service("db", &[]),
            endpoint("web", "a", HealthStatus::Healthy),
            endpoint("web", "b", HealthStatus::Unhealthy),
            endpoint("web", "c", HealthStatus::Unhealthy),
            endpoint("db", "d", HealthStatus::Unhealthy),
        ];
        for (i, c) in commands.into_iter().enumerate() {
            apply_command(&mut state, i as u64 + 1, c).0.unwrap();
        }
        let h = service_health(&state, &state.service("default", "web").unwrap().value);
        assert_eq!((h.total, h.available, h.unhealthy), (3, 1, 2));
        assert!(h.panic, "1 of 3 available is under 50%");
        assert_eq!(
            h.degraded_dependencies,
            vec!["db".to_string(), "cache".to_string()]
        );

        apply_command(&mut state, 10, endpoint("web", "b", HealthStatus::Unknown))
            .0
            .unwrap();
        apply_command(&mut state, 11, endpoint("db", "d", HealthStatus::Healthy))
            .0
            .unwrap();
        let h = service_health(&state, &state.service("default", "web").unwrap().value);
        assert!(!h.panic, "2 of 3 available");
        assert_eq!(h.degraded_dependencies, vec!["cache".to_string()]);
    }
}
