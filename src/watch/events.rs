//! Turning applied changes and state listings into watch events.

use super::filter::{ObjectMeta, WatchFilter, WatchKind};
use super::hub::PublishedEvent;
use crate::api::convert::{config_to_proto, endpoint_to_proto, service_to_proto};
use crate::model::{ConfigKind, ValidationError};
use crate::proto::v1 as pb;
use crate::store::{Change, ObjectRef, RegistryState};

/// The proto kind of a watch kind.
pub fn kind_to_proto(kind: WatchKind) -> pb::ObjectKind {
    match kind {
        WatchKind::Service => pb::ObjectKind::Service,
        WatchKind::Endpoint => pb::ObjectKind::Endpoint,
        WatchKind::Config(ConfigKind::TrafficPolicy) => pb::ObjectKind::TrafficPolicyObject,
        WatchKind::Config(ConfigKind::DestinationPolicy) => pb::ObjectKind::DestinationPolicyObject,
        WatchKind::Config(ConfigKind::HealthCheck) => pb::ObjectKind::HealthCheckObject,
    }
}

/// The watch kind of a proto kind.
pub fn kind_from_proto(kind: i32) -> Result<WatchKind, ValidationError> {
    match pb::ObjectKind::try_from(kind) {
        Ok(pb::ObjectKind::Service) => Ok(WatchKind::Service),
        Ok(pb::ObjectKind::Endpoint) => Ok(WatchKind::Endpoint),
        Ok(pb::ObjectKind::TrafficPolicyObject) => Ok(WatchKind::Config(ConfigKind::TrafficPolicy)),
        Ok(pb::ObjectKind::DestinationPolicyObject) => Ok(WatchKind::Config(ConfigKind::DestinationPolicy)),
        Ok(pb::ObjectKind::HealthCheckObject) => Ok(WatchKind::Config(ConfigKind::HealthCheck)),
        _ => Err(ValidationError::new(
            "kinds",
            "each must be one of SERVICE, ENDPOINT, TRAFFIC_POLICY_OBJECT, DESTINATION_POLICY_OBJECT, HEALTH_CHECK_OBJECT",
        )),
    }
}

/// An event for `object`.
pub fn event(object: ObjectRef<'_>, kind: pb::EventType, revision: u64) -> pb::Event {
    let (object_kind, object) = match object {
        ObjectRef::Service(s) => (
            pb::ObjectKind::Service,
            pb::event::Object::Service(service_to_proto(s)),
        ),
        ObjectRef::Endpoint(e) => (
            pb::ObjectKind::Endpoint,
            pb::event::Object::Endpoint(endpoint_to_proto(e)),
        ),
        ObjectRef::Config(c) => (
            kind_to_proto(WatchKind::Config(c.stored.value.kind())),
            pb::event::Object::Config(config_to_proto(c)),
        ),
    };
    pb::Event {
        r#type: kind as i32,
        kind: object_kind as i32,
        revision,
        object: Some(object),
    }
}

/// The changes one command made as published events, which share the objects with the
/// state.
pub fn published_events(revision: u64, changes: Vec<Change>) -> Vec<PublishedEvent> {
    changes
        .into_iter()
        .map(|change| match change {
            Change::Put(object) => PublishedEvent::new(object, pb::EventType::Put, revision),
            Change::Removed(object) => PublishedEvent::new(object, pb::EventType::Delete, revision),
        })
        .collect()
}

/// Roughly the memory `object`'s event can hold in the history: the object itself (kept
/// alive by the event once the state has replaced it), its encoding and its filter facts
/// once a watcher has needed them. Every string counts with its header and allocation,
/// every map entry with its share of a tree node; shared or not, so it errs high. Cheap:
/// nothing is copied or encoded to compute it.
pub fn estimated_size(object: ObjectRef<'_>) -> usize {
    /// A string held once in memory and once in the encoding.
    fn text(s: &str) -> usize {
        2 * s.len() + 48
    }
    fn map(m: &crate::model::StringMap) -> usize {
        m.iter().map(|(k, v)| text(k) + text(v) + 64).sum()
    }
    // The event, the object's `Arc` and struct, the filter facts' struct.
    const FIXED: usize = 512;
    match object {
        ObjectRef::Service(s) => {
            let v = &s.value;
            FIXED
                + 2 * (text(&v.name) + text(&v.namespace))
                + v.ports.iter().map(|p| text(&p.name) + 32).sum::<usize>()
                + 2 * map(&v.labels)
                + map(&v.metadata)
                + v.depends_on.iter().map(|d| text(d)).sum::<usize>()
        }
        ObjectRef::Endpoint(e) => {
            let v = &e.value;
            FIXED
                + 2 * (text(&v.id) + text(&v.service) + text(&v.namespace))
                + text(&v.address)
                + 2 * map(&v.labels)
                + text(&v.locality.region)
                + text(&v.locality.zone)
                + text(&v.locality.subzone)
        }
        // Config objects change rarely and have deep specs: twice their real encoding.
        ObjectRef::Config(c) => {
            let config = config_to_proto(c);
            FIXED
                + 2 * (text(&c.namespace) + text(&c.name))
                + 2 * prost::Message::encoded_len(&config)
        }
    }
}

/// Every object `filter` selects, as PUT events stamped with their mod revision.
pub fn listing(state: &RegistryState, filter: &WatchFilter) -> Vec<pb::Event> {
    let mut out = Vec::new();
    let wants = |kind: WatchKind| filter.kinds.is_empty() || filter.kinds.contains(&kind);
    if wants(WatchKind::Service) {
        for s in state.services.values() {
            if filter.matches(&ObjectMeta::of_service(s)) {
                out.push(event(
                    ObjectRef::Service(s),
                    pb::EventType::Put,
                    s.mod_revision,
                ));
            }
        }
    }
    if wants(WatchKind::Endpoint) {
        for e in state.endpoints.values() {
            if filter.matches(&ObjectMeta::of_endpoint(e)) {
                out.push(event(
                    ObjectRef::Endpoint(e),
                    pb::EventType::Put,
                    e.mod_revision,
                ));
            }
        }
    }
    for c in state.configs.values() {
        if filter.matches(&ObjectMeta::of_config(c)) {
            out.push(event(
                ObjectRef::Config(c),
                pb::EventType::Put,
                c.stored.mod_revision,
            ));
        }
    }
    out
}
