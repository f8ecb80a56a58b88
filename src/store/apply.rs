//! `apply_command`: the deterministic transition function of the replicated state.
//!
//! Inputs are the revision a change takes and the command; there is no
//! clock, randomness or I/O here, so every replica computes the same result and changes.

use std::sync::Arc;

use imbl::ordmap::Entry;

use super::{RegistryState, Stored, StoredConfig, StoredObject};
use crate::command::{Applied, ApplyError, Command, CommandResult};
use crate::model::{ConfigKind, ConfigSpec, Health, HealthStatus};

/// One object changed by a command, shared with the state (its value is reference-counted),
/// so publishing the change needs no second search of the state.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// The object as the command left it.
    Put(StoredObject),
    /// The object as it was before the command removed it.
    Removed(StoredObject),
}

/// Checks a compare-and-set guard against an object's current `mod_revision`
/// (`None` when the object does not exist).
///
/// `expected = None` always passes; `Some(0)` demands that the object not exist (create only);
/// `Some(r)` demands that it exist with `mod_revision == r`. This mirrors etcd's `Compare` on
/// `mod_revision` with `create_revision == 0` meaning absent.
///
/// `key` names the object in the error; it is only built when the guard fails.
pub fn check_revision(
    kind: &str,
    key: impl FnOnce() -> String,
    expected: Option<u64>,
    current: Option<u64>,
) -> Result<(), ApplyError> {
    match expected {
        None => Ok(()),
        Some(expected) if expected == current.unwrap_or(0) => Ok(()),
        Some(expected) => Err(ApplyError::RevisionMismatch {
            kind: kind.to_string(),
            key: key(),
            expected,
            current: current.unwrap_or(0),
        }),
    }
}

/// Applies `command` at `revision` (the store revision after it, if it changes anything).
/// On error the state is untouched and no change is returned.
///
/// The command is taken by value so that the objects it carries move into the state
/// instead of being copied: apply runs on every node for every write.
pub fn apply_command(
    state: &mut RegistryState,
    revision: u64,
    command: Command,
) -> (CommandResult, Vec<Change>) {
    match apply_inner(state, revision, command) {
        Ok((applied, changes)) => {
            if !changes.is_empty() {
                state.revision = revision;
            }
            (Ok(applied), changes)
        }
        Err(e) => (Err(e), Vec::new()),
    }
}

fn apply_inner(
    state: &mut RegistryState,
    revision: u64,
    command: Command,
) -> Result<(Applied, Vec<Change>), ApplyError> {
    match command {
        Command::RegisterService {
            service,
            expected_revision,
        } => {
            let key = (service.namespace.clone(), service.name.clone());
            // One search of the map for both the guard and the write.
            let slot = state.services.entry(key);
            let existing = match &slot {
                Entry::Occupied(o) => Some(o.get()),
                Entry::Vacant(_) => None,
            };
            check_revision(
                "service",
                || format!("{}/{}", service.namespace, service.name),
                expected_revision,
                existing.map(|s| s.mod_revision),
            )?;
            let stored = Stored {
                create_revision: existing.map_or(revision, |s| s.create_revision),
                value: Arc::new(service),
                mod_revision: revision,
            };
            match slot {
                Entry::Occupied(mut o) => {
                    o.insert(stored.clone());
                }
                Entry::Vacant(v) => {
                    v.insert(stored.clone());
                }
            }
            Ok((
                Applied::Service {
                    service: stored.clone(),
                    endpoints_removed: 0,
                },
                vec![Change::Put(StoredObject::Service(stored))],
            ))
        }
        Command::DeregisterService {
            namespace,
            name,
            expected_revision,
        } => {
            let key = (namespace, name);
            let display = || format!("{}/{}", key.0, key.1);
            let Some(existing) = state.services.get(&key) else {
                return Err(ApplyError::NotFound {
                    kind: "service".into(),
                    key: display(),
                });
            };
            check_revision(
                "service",
                display,
                expected_revision,
                Some(existing.mod_revision),
            )?;
            let Some(removed) = state.services.remove(&key) else {
                return Err(ApplyError::NotFound {
                    kind: "service".into(),
                    key: display(),
                });
            };
            let endpoint_keys = state.endpoints_of(&key.0, &key.1);
            let mut changes = Vec::with_capacity(endpoint_keys.len() + 1);
            // Endpoints go first, so a watcher never sees an endpoint outlive its service.
            for ek in &endpoint_keys {
                let Some(endpoint) = state.endpoints.remove(ek) else {
                    continue;
                };
                changes.push(Change::Removed(StoredObject::Endpoint(endpoint)));
            }
            changes.push(Change::Removed(StoredObject::Service(removed.clone())));
            Ok((
                Applied::Service {
                    service: removed,
                    endpoints_removed: endpoint_keys.len() as u32,
                },
                changes,
            ))
        }
        Command::UpsertEndpoint {
            endpoint,
            expected_revision,
            keep_health,
        } => {
            if state
                .service(&endpoint.namespace, &endpoint.service)
                .is_none()
            {
                return Err(ApplyError::FailedPrecondition(format!(
                    "endpoint.service: service {}/{} is not registered",
                    endpoint.namespace, endpoint.service
                )));
            }
            let key = (
                endpoint.namespace.clone(),
                endpoint.service.clone(),
                endpoint.id.clone(),
            );
            let existing = state.endpoints.get(&key);
            check_revision(
                "endpoint",
                || format!("{}/{}/{}", key.0, key.1, key.2),
                expected_revision,
                existing.map(|e| e.mod_revision),
            )?;
            let mut value = endpoint;
            if keep_health {
                match existing {
                    Some(e) => value.health = e.value.health.clone(),
                    None => {
                        let initial = state
                            .config(ConfigKind::HealthCheck, &value.namespace, &value.service)
                            .and_then(|c| match &*c.stored.value {
                                ConfigSpec::HealthCheck(h) => h.initial_status,
                                _ => None,
                            });
                        if let Some(status) = initial {
                            value.health.status = status;
                            value.health.reason =
                                "initial status from the health check".to_string();
                        }
                    }
                }
            }
            let stored = Stored {
                value: Arc::new(value),
                create_revision: existing.map_or(revision, |e| e.create_revision),
                mod_revision: revision,
            };
            state.endpoints.insert(key, stored.clone());
            Ok((
                Applied::Endpoint(stored.clone()),
                vec![Change::Put(StoredObject::Endpoint(stored))],
            ))
        }
        Command::RemoveEndpoint {
            namespace,
            service,
            id,
            expected_revision,
        } => {
            let display = || format!("{namespace}/{service}/{id}");
            let key = (namespace.clone(), service.clone(), id.clone());
            let Some(existing) = state.endpoints.get(&key) else {
                return Err(ApplyError::NotFound {
                    kind: "endpoint".into(),
                    key: display(),
                });
            };
            check_revision(
                "endpoint",
                display,
                expected_revision,
                Some(existing.mod_revision),
            )?;
            let Some(removed) = state.endpoints.remove(&key) else {
                return Err(ApplyError::NotFound {
                    kind: "endpoint".into(),
                    key: display(),
                });
            };
            Ok((
                Applied::Endpoint(removed.clone()),
                vec![Change::Removed(StoredObject::Endpoint(removed))],
            ))
        }
        Command::PutConfig {
            namespace,
            name,
            spec,
            expected_revision,
        } => {
            let kind = spec.kind();
            let key = (kind, namespace.clone(), name.clone());
            let existing = state.configs.get(&key);
            check_revision(
                kind.as_str(),
                || format!("{namespace}/{name}"),
                expected_revision,
                existing.map(|c| c.stored.mod_revision),
            )?;
            let stored = StoredConfig {
                namespace: namespace.clone(),
                name: name.clone(),
                stored: Stored {
                    value: Arc::new(spec),
                    create_revision: existing.map_or(revision, |c| c.stored.create_revision),
                    mod_revision: revision,
                },
            };
            state.configs.insert(key, stored.clone());
            Ok((
                Applied::Config(stored.clone()),
                vec![Change::Put(StoredObject::Config(stored))],
            ))
        }
        Command::DeleteConfig {
            kind,
            namespace,
            name,
            expected_revision,
        } => {
            let display = || format!("{namespace}/{name}");
            let key = (kind, namespace.clone(), name.clone());
            let Some(existing) = state.configs.get(&key) else {
                return Err(ApplyError::NotFound {
                    kind: kind.as_str().to_string(),
                    key: display(),
                });
            };
            check_revision(
                kind.as_str(),
                display,
                expected_revision,
                Some(existing.stored.mod_revision),
            )?;
            let Some(removed) = state.configs.remove(&key) else {
                return Err(ApplyError::NotFound {
                    kind: kind.as_str().to_string(),
                    key: display(),
                });
            };
            Ok((
                Applied::Config(removed.clone()),
                vec![Change::Removed(StoredObject::Config(removed))],
            ))
        }
        Command::ClaimProber { term } => {
            // A term has one leader, so an equal claim can only come from that leader again:
            // restarted quickly, it keeps its term (openraft restores its vote) and must be
            // able to resume probing. Only older terms are fenced out.
            if term < state.prober_term {
                return Err(ApplyError::FailedPrecondition(format!(
                    "prober term {term} is older than the current claim {}",
                    state.prober_term
                )));
            }
            state.prober_term = term;
            Ok((Applied::Nothing, Vec::new()))
        }
        Command::ApplyHealth {
            term,
            transitions,
            removals,
        } => {
            if term != state.prober_term {
                // A deposed leader's results: a newer leader has claimed probing.
                return Err(ApplyError::FailedPrecondition(format!(
                    "health results from prober term {term}, but term {} now probes",
                    state.prober_term
                )));
            }
            let mut changes = Vec::new();
            let mut applied_transitions = 0;
            for t in transitions {
                let key = (t.namespace.clone(), t.service.clone(), t.id.clone());
                let Some(stored) = state.endpoints.get_mut(&key) else {
                    continue; // removed since the probe: nothing to do
                };
                if stored.value.health.status == t.status {
                    continue;
                }
                Arc::make_mut(&mut stored.value).health = Health {
                    status: t.status,
                    since_ms: t.at_ms,
                    reason: t.reason,
                };
                stored.mod_revision = revision;
                applied_transitions += 1;
                changes.push(Change::Put(StoredObject::Endpoint(stored.clone())));
            }
            let mut applied_removals = 0;
            for r in removals {
                let key = (r.namespace.clone(), r.service.clone(), r.id.clone());
                let still_unhealthy = state.endpoints.get(&key).is_some_and(|e| {
                    e.value.health.status == HealthStatus::Unhealthy
                        && e.value.health.since_ms == r.unhealthy_since_ms
                });
                if !still_unhealthy {
                    continue;
                }
                let Some(removed) = state.endpoints.remove(&key) else {
                    continue;
                };
                applied_removals += 1;
                changes.push(Change::Removed(StoredObject::Endpoint(removed)));
            }
            Ok((
                Applied::Health {
                    transitions: applied_transitions,
                    removals: applied_removals,
                },
                changes,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Endpoint, Service};

    fn service(name: &str) -> Service {
        Service {
            name: name.to_string(),
            namespace: "default".to_string(),
            ports: Vec::new(),
            labels: Default::default(),
            metadata: Default::default(),
            depends_on: Vec::new(),
        }
    }

    fn endpoint(service: &str, id: &str) -> Endpoint {
        Endpoint {
            id: id.to_string(),
            service: service.to_string(),
            namespace: "default".to_string(),
            address: "127.0.0.1".to_string(),
            port: 9000,
            labels: Default::default(),
            locality: Default::default(),
            weight: 1,
            priority: 0,
            ttl: None,
            health: Default::default(),
        }
    }

    fn register(
        state: &mut RegistryState,
        index: u64,
        name: &str,
        expected: Option<u64>,
    ) -> CommandResult {
        apply_command(
            state,
            index,
            Command::RegisterService {
                service: service(name),
                expected_revision: expected,
            },
        )
        .0
    }

    #[test]
    fn register_stamps_create_and_mod_revision() {
        let mut state = RegistryState::default();
        register(&mut state, 5, "web", None).unwrap();
        register(&mut state, 9, "web", None).unwrap();
        let s = state.service("default", "web").unwrap();
        assert_eq!((s.create_revision, s.mod_revision), (5, 9));
        assert_eq!(state.revision, 9);
    }

    #[test]
    fn stale_expected_revision_fails_and_changes_nothing() {
        let mut state = RegistryState::default();
        register(&mut state, 5, "web", None).unwrap();
        register(&mut state, 6, "web", None).unwrap();
        let before = state.clone();
        let err = register(&mut state, 7, "web", Some(5)).unwrap_err();
        assert_eq!(
            err,
            ApplyError::RevisionMismatch {
                kind: "service".into(),
                key: "default/web".into(),
                expected: 5,
                current: 6
            }
        );
        assert_eq!(state, before);
    }

    #[test]
    fn expected_zero_means_create_only() {
        let mut state = RegistryState::default();
        register(&mut state, 3, "web", Some(0)).unwrap();
        assert!(matches!(
            register(&mut state, 4, "web", Some(0)),
            Err(ApplyError::RevisionMismatch { current: 3, .. })
        ));
    }

    #[test]
    fn endpoint_of_unknown_service_is_rejected() {
        let mut state = RegistryState::default();
        let (result, changes) = apply_command(
            &mut state,
            1,
            Command::UpsertEndpoint {
                endpoint: endpoint("web", "a"),
                expected_revision: None,
                keep_health: false,
            },
        );
        assert!(
            matches!(result, Err(ApplyError::FailedPrecondition(m)) if m.contains("endpoint.service"))
        );
        assert!(changes.is_empty());
        assert!(state.endpoints.is_empty());
        assert_eq!(
            state.revision, 0,
            "a rejected command must not move the revision"
        );
    }

    #[test]
    fn deregister_service_removes_its_endpoints_only() {
        let mut state = RegistryState::default();
        register(&mut state, 1, "web", None).unwrap();
        register(&mut state, 2, "web2", None).unwrap();
        for (i, (svc, id)) in [("web", "a"), ("web", "b"), ("web2", "c")]
            .iter()
            .enumerate()
        {
            apply_command(
                &mut state,
                3 + i as u64,
                Command::UpsertEndpoint {
                    endpoint: endpoint(svc, id),
                    expected_revision: None,
                    keep_health: false,
                },
            )
            .0
            .unwrap();
        }
        let (result, changes) = apply_command(
            &mut state,
            10,
            Command::DeregisterService {
                namespace: "default".into(),
                name: "web".into(),
                expected_revision: None,
            },
        );
        assert!(matches!(
            result,
            Ok(Applied::Service {
                endpoints_removed: 2,
                ..
            })
        ));
        assert_eq!(changes.len(), 3);
        assert_eq!(state.endpoints.len(), 1);
        assert!(state.endpoint("default", "web2", "c").is_some());
    }

    #[test]
    fn removing_a_missing_object_is_not_found() {
        let mut state = RegistryState::default();
        let (result, _) = apply_command(
            &mut state,
            1,
            Command::RemoveEndpoint {
                namespace: "default".into(),
                service: "web".into(),
                id: "a".into(),
                expected_revision: None,
            },
        );
        assert!(matches!(result, Err(ApplyError::NotFound { .. })));
    }

    fn transition(id: &str, status: HealthStatus, at_ms: u64) -> crate::command::HealthTransition {
        crate::command::HealthTransition {
            namespace: "default".into(),
            service: "web".into(),
            id: id.into(),
            status,
            reason: "test".into(),
            at_ms,
        }
    }

    fn with_endpoint() -> RegistryState {
        let mut state = RegistryState::default();
        register(&mut state, 1, "web", None).unwrap();
        apply_command(
            &mut state,
            2,
            Command::UpsertEndpoint {
                endpoint: endpoint("web", "a"),
                expected_revision: None,
                keep_health: false,
            },
        )
        .0
        .unwrap();
        state
    }

    #[test]
    fn a_leader_restarted_in_its_own_term_may_claim_probing_again_but_an_older_term_may_not() {
        let mut state = RegistryState::default();
        apply_command(&mut state, 1, Command::ClaimProber { term: 4 })
            .0
            .unwrap();
        // The same leader, back within term 4 after a crash.
        let (again, _) = apply_command(&mut state, 2, Command::ClaimProber { term: 4 });
        assert!(again.is_ok(), "{again:?}");
        let (older, _) = apply_command(&mut state, 3, Command::ClaimProber { term: 3 });
        assert!(
            matches!(older, Err(ApplyError::FailedPrecondition(ref m)) if m.contains("older")),
            "{older:?}"
        );
        assert_eq!(state.prober_term, 4);
    }

    #[test]
    fn health_from_a_deposed_prober_never_lands() {
        let mut state = with_endpoint();
        apply_command(&mut state, 3, Command::ClaimProber { term: 2 })
            .0
            .unwrap();
        apply_command(&mut state, 4, Command::ClaimProber { term: 3 })
            .0
            .unwrap();
        // The term-2 leader's results arrive after term 3 claimed probing: refused.
        let (result, changes) = apply_command(
            &mut state,
            5,
            Command::ApplyHealth {
                term: 2,
                transitions: vec![transition("a", HealthStatus::Unhealthy, 100)],
                removals: vec![],
            },
        );
        assert!(matches!(result, Err(ApplyError::FailedPrecondition(_))));
        assert!(changes.is_empty());
        assert_eq!(
            state
                .endpoint("default", "web", "a")
                .unwrap()
                .value
                .health
                .status,
            HealthStatus::Unknown
        );
        // An older claim cannot take probing back either.
        assert!(
            apply_command(&mut state, 6, Command::ClaimProber { term: 2 })
                .0
                .is_err()
        );
        // The current prober's results land, and bump the endpoint's revision.
        let (result, changes) = apply_command(
            &mut state,
            7,
            Command::ApplyHealth {
                term: 3,
                transitions: vec![transition("a", HealthStatus::Unhealthy, 100)],
                removals: vec![],
            },
        );
        assert!(matches!(
            result,
            Ok(Applied::Health {
                transitions: 1,
                removals: 0
            })
        ));
        assert_eq!(changes.len(), 1);
        let e = state.endpoint("default", "web", "a").unwrap();
        assert_eq!(
            (
                e.value.health.status,
                e.value.health.since_ms,
                e.mod_revision
            ),
            (HealthStatus::Unhealthy, 100, 7)
        );
    }

    #[test]
    fn a_removal_is_skipped_when_the_endpoint_recovered_meanwhile() {
        let mut state = with_endpoint();
        apply_command(&mut state, 3, Command::ClaimProber { term: 1 })
            .0
            .unwrap();
        let health = |state: &mut RegistryState, index, status, at| {
            apply_command(
                state,
                index,
                Command::ApplyHealth {
                    term: 1,
                    transitions: vec![transition("a", status, at)],
                    removals: vec![],
                },
            )
            .0
            .unwrap()
        };
        health(&mut state, 4, HealthStatus::Unhealthy, 100);
        health(&mut state, 5, HealthStatus::Healthy, 200);
        let removal = crate::command::EndpointRemoval {
            namespace: "default".into(),
            service: "web".into(),
            id: "a".into(),
            unhealthy_since_ms: 100,
        };
        let (result, _) = apply_command(
            &mut state,
            6,
            Command::ApplyHealth {
                term: 1,
                transitions: vec![],
                removals: vec![removal.clone()],
            },
        );
        assert!(matches!(result, Ok(Applied::Health { removals: 0, .. })));
        assert!(state.endpoint("default", "web", "a").is_some());
        health(&mut state, 7, HealthStatus::Unhealthy, 300);
        let (result, changes) = apply_command(
            &mut state,
            8,
            Command::ApplyHealth {
                term: 1,
                transitions: vec![],
                removals: vec![crate::command::EndpointRemoval {
                    unhealthy_since_ms: 300,
                    ..removal
                }],
            },
        );
        assert!(matches!(result, Ok(Applied::Health { removals: 1, .. })));
        assert!(matches!(changes[0], Change::Removed(_)));
        assert!(state.endpoint("default", "web", "a").is_none());
    }

    #[test]
    fn re_registration_keeps_health_unless_the_client_sets_it() {
        let mut state = with_endpoint();
        apply_command(&mut state, 3, Command::ClaimProber { term: 1 })
            .0
            .unwrap();
        apply_command(
            &mut state,
            4,
            Command::ApplyHealth {
                term: 1,
                transitions: vec![transition("a", HealthStatus::Healthy, 100)],
                removals: vec![],
            },
        )
        .0
        .unwrap();
        let mut moved = endpoint("web", "a");
        moved.port = 9999;
        apply_command(
            &mut state,
            5,
            Command::UpsertEndpoint {
                endpoint: moved,
                expected_revision: None,
                keep_health: true,
            },
        )
        .0
        .unwrap();
        let e = state.endpoint("default", "web", "a").unwrap();
        assert_eq!(
            (e.value.port, e.value.health.status),
            (9999, HealthStatus::Healthy)
        );
    }

    /// The state's maps are persistent (`imbl`) maps since snapshots stopped being encoded
    /// under the state lock; a node upgraded from a version with std `BTreeMap`s must still
    /// load the snapshots that version wrote, and its peers the ones it sends.
    #[test]
    fn a_snapshot_encodes_exactly_as_it_did_with_std_btree_maps() {
        use std::collections::BTreeMap;

        #[derive(serde::Serialize, serde::Deserialize)]
        struct RegistryStateWithStdMaps {
            revision: u64,
            prober_term: u64,
            services: BTreeMap<(String, String), Stored<Service>>,
            endpoints: BTreeMap<crate::store::state::EndpointKey, Stored<Endpoint>>,
            configs: BTreeMap<(ConfigKind, String, String), StoredConfig>,
        }

        let mut state = RegistryState::default();
        register(&mut state, 1, "web", None).unwrap();
        register(&mut state, 2, "api", None).unwrap();
        for (index, id) in [(3, "a"), (4, "b")] {
            apply_command(
                &mut state,
                index,
                Command::UpsertEndpoint {
                    endpoint: endpoint("web", id),
                    expected_revision: None,
                    keep_health: false,
                },
            )
            .0
            .unwrap();
        }
        let std_maps = RegistryStateWithStdMaps {
            revision: state.revision,
            prober_term: state.prober_term,
            services: state.services.clone().into_iter().collect(),
            endpoints: state.endpoints.clone().into_iter().collect(),
            configs: state.configs.clone().into_iter().collect(),
        };
        let written_before = crate::raft::codec::encode(&std_maps).unwrap();
        assert_eq!(crate::raft::codec::encode(&state).unwrap(), written_before);
        let loaded: RegistryState = crate::raft::codec::decode(&written_before).unwrap();
        assert_eq!(loaded, state);
    }
}
