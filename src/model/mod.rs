//! Domain types and validation; no I/O.
//!
//! Everything here is pure data plus checks, shared by the API, the Raft
//! state machine and the CLI. Validation errors name the field path of the
//! resource document so they can be shown to users unchanged.

pub mod config;
pub mod duration;
pub mod endpoint;
pub mod resource;
pub mod service;
pub mod string_map;
pub mod validation;

pub use config::{
    ConfigKind, ConfigSpec, DestinationPolicy, HealthCheckSpec, LoadBalancerPolicy, RetryOn,
    TrafficPolicy,
};
pub use duration::{DurationSpec, ParseDurationError};
pub use endpoint::{Endpoint, Health, HealthStatus, Locality};
pub use resource::{parse_documents, to_document, Resource, ResourceError, API_VERSION, KINDS};
pub use service::{Protocol, Service, ServicePort, DEFAULT_NAMESPACE};
pub use string_map::StringMap;
pub use validation::{ParseEnumError, ValidationError};
pub mod spec_json;
