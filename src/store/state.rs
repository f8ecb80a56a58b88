//! In-memory indexes of the registry and config store, and the read views over them.

use imbl::OrdMap;
use serde::{Deserialize, Serialize};

use super::{Stored, StoredConfig};
use crate::model::{ConfigKind, Endpoint, Service};

/// `(namespace, service, endpoint id)`.
pub type EndpointKey = (String, String, String);

/// The whole replicated state of one node, as of `last_applied`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RegistryState {
    /// The store revision: log index of the last entry that changed an object. Entries that
    /// change nothing (rejected commands, blank and membership entries) leave it alone, as a
    /// failed etcd transaction leaves etcd's revision alone.
    pub revision: u64,
    /// Term of the leader whose health prober is current (see `Command::ClaimProber`).
    pub prober_term: u64,
    /// Services by `(namespace, name)`.
    pub services: OrdMap<(String, String), Stored<Service>>,
    /// Endpoints by `(namespace, service, id)`; the order groups a service's endpoints.
    pub endpoints: OrdMap<EndpointKey, Stored<Endpoint>>,
    /// Config objects by `(kind, namespace, name)`.
    pub configs: OrdMap<(ConfigKind, String, String), StoredConfig>,
}

impl RegistryState {
    /// One service.
    pub fn service(&self, namespace: &str, name: &str) -> Option<&Stored<Service>> {
        self.services
            .get(&(namespace.to_string(), name.to_string()))
    }

    /// Services in a namespace (all when empty) whose labels match the selector.
    pub fn list_services(
        &self,
        namespace: &str,
        selector: &std::collections::HashMap<String, String>,
    ) -> Vec<Stored<Service>> {
        self.services
            .iter()
            .filter(|((ns, _), _)| namespace.is_empty() || ns == namespace)
            .filter(|(_, s)| s.value.labels.includes(selector))
            .map(|(_, s)| s.clone())
            .collect()
    }

    /// One endpoint.
    pub fn endpoint(&self, namespace: &str, service: &str, id: &str) -> Option<&Stored<Endpoint>> {
        self.endpoints
            .get(&(namespace.to_string(), service.to_string(), id.to_string()))
    }

    /// Endpoints filtered by namespace and service (all when empty) and a label selector.
    pub fn list_endpoints(
        &self,
        namespace: &str,
        service: &str,
        selector: &std::collections::HashMap<String, String>,
    ) -> Vec<Stored<Endpoint>> {
        self.endpoints
            .iter()
            .filter(|((ns, svc, _), _)| {
                (namespace.is_empty() || ns == namespace) && (service.is_empty() || svc == service)
            })
            .filter(|(_, e)| e.value.labels.includes(selector))
            .map(|(_, e)| e.clone())
            .collect()
    }

    /// Endpoints of one service, in id order.
    pub fn endpoints_of(&self, namespace: &str, service: &str) -> Vec<EndpointKey> {
        self.endpoint_entries(namespace, service)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Endpoints of one service, in id order, without copying their keys: reading a
    /// service's health or its load assignment visits each endpoint once.
    pub fn service_endpoints<'a>(
        &'a self,
        namespace: &'a str,
        service: &'a str,
    ) -> impl Iterator<Item = &'a Stored<Endpoint>> + 'a {
        self.endpoint_entries(namespace, service).map(|(_, e)| e)
    }

    fn endpoint_entries<'a>(
        &'a self,
        namespace: &'a str,
        service: &'a str,
    ) -> impl Iterator<Item = (&'a EndpointKey, &'a Stored<Endpoint>)> + 'a {
        let start = (namespace.to_string(), service.to_string(), String::new());
        self.endpoints
            .range(start..)
            .take_while(move |((ns, svc, _), _)| ns == namespace && svc == service)
    }

    /// One config object.
    pub fn config(&self, kind: ConfigKind, namespace: &str, name: &str) -> Option<&StoredConfig> {
        self.configs
            .get(&(kind, namespace.to_string(), name.to_string()))
    }

    /// Config objects of a kind (all when `None`) in a namespace (all when empty).
    pub fn list_configs(&self, kind: Option<ConfigKind>, namespace: &str) -> Vec<StoredConfig> {
        self.configs
            .iter()
            .filter(|((k, ns, _), _)| {
                kind.is_none_or(|want| *k == want) && (namespace.is_empty() || ns == namespace)
            })
            .map(|(_, c)| c.clone())
            .collect()
    }

    /// Number of stored objects, for metrics and status.
    pub fn object_count(&self) -> usize {
        self.services.len() + self.endpoints.len() + self.configs.len()
    }
}
