//! Envoy xDS v3 from every node: pure translation of the applied state into Envoy
//! resources, per-proxy snapshots built whole from one revision and checked for
//! consistency, and the ADS server (state-of-the-world and delta).

pub mod ads;
pub mod bootstrap;
pub mod cache;
pub mod identity;
pub mod registry;
pub mod translate;

/// The four resource types, in the order updates are sent (make-before-break).
pub const PUSH_ORDER: [&str; 4] = [
    translate::CLUSTER_TYPE,
    translate::ENDPOINT_TYPE,
    translate::LISTENER_TYPE,
    translate::ROUTE_TYPE,
];

/// Short name of a type URL, for status and metrics.
pub fn short_type(type_url: &str) -> &'static str {
    match type_url {
        translate::CLUSTER_TYPE => "CDS",
        translate::ENDPOINT_TYPE => "EDS",
        translate::LISTENER_TYPE => "LDS",
        translate::ROUTE_TYPE => "RDS",
        _ => "other",
    }
}
