//! What a watch selects, and the per-object facts it is matched against. Pure.

use std::collections::BTreeSet;

use crate::model::{ConfigKind, StringMap};
use crate::store::{ObjectRef, Stored, StoredConfig};

/// Kinds of objects a watch can select.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WatchKind {
    /// Services.
    Service,
    /// Endpoints.
    Endpoint,
    /// One config kind.
    Config(ConfigKind),
}

/// The facts of one object that filters look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Kind of object.
    pub kind: WatchKind,
    /// Namespace.
    pub namespace: String,
    /// The service it belongs to (a service's own name; an endpoint's service; a config
    /// object's name).
    pub service: String,
    /// Its name (endpoint id for endpoints).
    pub name: String,
    /// Its labels (none for config objects).
    pub labels: StringMap,
}

impl ObjectMeta {
    /// Facts of a stored object.
    pub fn of(object: ObjectRef<'_>) -> ObjectMeta {
        match object {
            ObjectRef::Service(s) => Self::of_service(s),
            ObjectRef::Endpoint(e) => Self::of_endpoint(e),
            ObjectRef::Config(c) => Self::of_config(c),
        }
    }

    /// Facts of a service.
    pub fn of_service(s: &Stored<crate::model::Service>) -> ObjectMeta {
        ObjectMeta {
            kind: WatchKind::Service,
            namespace: s.value.namespace.clone(),
            service: s.value.name.clone(),
            name: s.value.name.clone(),
            labels: s.value.labels.clone(),
        }
    }

    /// Facts of an endpoint.
    pub fn of_endpoint(e: &Stored<crate::model::Endpoint>) -> ObjectMeta {
        ObjectMeta {
            kind: WatchKind::Endpoint,
            namespace: e.value.namespace.clone(),
            service: e.value.service.clone(),
            name: e.value.id.clone(),
            labels: e.value.labels.clone(),
        }
    }

    /// Facts of a config object.
    pub fn of_config(c: &StoredConfig) -> ObjectMeta {
        ObjectMeta {
            kind: WatchKind::Config(c.stored.value.kind()),
            namespace: c.namespace.clone(),
            service: c.name.clone(),
            name: c.name.clone(),
            labels: StringMap::new(),
        }
    }
}

/// A watch's selection. Empty fields select everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchFilter {
    /// Kinds; empty = all.
    pub kinds: BTreeSet<WatchKind>,
    /// Namespace; empty = all.
    pub namespace: String,
    /// Service; empty = all.
    pub service: String,
    /// Name prefix; empty = all.
    pub name_prefix: String,
    /// Labels that must all be present.
    pub labels: StringMap,
}

impl WatchFilter {
    /// Whether an object with these facts is selected.
    pub fn matches(&self, meta: &ObjectMeta) -> bool {
        (self.kinds.is_empty() || self.kinds.contains(&meta.kind))
            && (self.namespace.is_empty() || self.namespace == meta.namespace)
            && (self.service.is_empty() || self.service == meta.service)
            && meta.name.starts_with(&self.name_prefix)
            && meta.labels.includes(&self.labels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(kind: WatchKind, service: &str, name: &str, labels: &[(&str, &str)]) -> ObjectMeta {
        ObjectMeta {
            kind,
            namespace: "default".into(),
            service: service.into(),
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn an_empty_filter_selects_everything() {
        let f = WatchFilter::default();
        assert!(f.matches(&meta(WatchKind::Service, "web", "web", &[])));
        assert!(f.matches(&meta(
            WatchKind::Config(ConfigKind::HealthCheck),
            "db",
            "db",
            &[]
        )));
    }

    #[test]
    fn every_field_narrows_the_selection() {
        let f = WatchFilter {
            kinds: [WatchKind::Endpoint].into(),
            namespace: "default".into(),
            service: "web".into(),
            name_prefix: "web-v1".into(),
            labels: [("version".to_string(), "v1".to_string())].into(),
        };
        assert!(f.matches(&meta(
            WatchKind::Endpoint,
            "web",
            "web-v1-a",
            &[("version", "v1")]
        )));
        assert!(!f.matches(&meta(
            WatchKind::Service,
            "web",
            "web-v1-a",
            &[("version", "v1")]
        )));
        assert!(!f.matches(&meta(
            WatchKind::Endpoint,
            "db",
            "web-v1-a",
            &[("version", "v1")]
        )));
        assert!(!f.matches(&meta(
            WatchKind::Endpoint,
            "web",
            "web-v2-a",
            &[("version", "v1")]
        )));
        assert!(!f.matches(&meta(
            WatchKind::Endpoint,
            "web",
            "web-v1-a",
            &[("version", "v2")]
        )));
        let mut other_ns = meta(WatchKind::Endpoint, "web", "web-v1-a", &[("version", "v1")]);
        other_ns.namespace = "prod".into();
        assert!(!f.matches(&other_ns));
    }
}
