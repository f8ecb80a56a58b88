//! Bootstrap files for proxies: an Envoy bootstrap whose `xds_cluster` lists every
//! control-plane node (Envoy fails over between them), and a gRPC `GRPC_XDS_BOOTSTRAP`.

use serde_json::{json, Value};

/// What the proxy is.
#[derive(Debug, Clone)]
pub struct BootstrapOptions {
    /// Control-plane client addresses (`host:port`).
    pub control_plane: Vec<String>,
    /// `node.id`.
    pub node_id: String,
    /// The service the proxy fronts (`node.cluster`).
    pub service: String,
    /// Namespace.
    pub namespace: String,
    /// Outbound listener port.
    pub outbound_port: u16,
    /// Inbound listener and app ports.
    pub inbound: Option<(u16, u16)>,
    /// Envoy admin port (127.0.0.1).
    pub admin_port: u16,
    /// Use delta ADS.
    pub delta: bool,
    /// The proxy's region (`node.locality.region`), for `localityFailover`.
    pub region: Option<String>,
}

fn host_port(addr: &str) -> (String, u16) {
    match addr.rsplit_once(':') {
        Some((h, p)) => (
            h.trim_matches(|c| c == '[' || c == ']').to_string(),
            p.parse().unwrap_or(0),
        ),
        None => (addr.to_string(), 0),
    }
}

/// An Envoy bootstrap (JSON; Envoy also reads it as YAML).
pub fn envoy_bootstrap(o: &BootstrapOptions) -> Value {
    let endpoints: Vec<Value> = o
        .control_plane
        .iter()
        .map(|addr| {
            let (host, port) = host_port(addr);
            json!({"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}})
        })
        .collect();
    let all_ips = o
        .control_plane
        .iter()
        .all(|a| host_port(a).0.parse::<std::net::IpAddr>().is_ok());
    let mut metadata =
        json!({"service": o.service, "namespace": o.namespace, "outbound_port": o.outbound_port});
    if let Some((listen, app)) = o.inbound {
        metadata["inbound_port"] = json!(listen);
        metadata["app_port"] = json!(app);
    }
    let ads = json!({"ads": {}, "resource_api_version": "V3"});
    json!({
        "node": {"id": o.node_id, "cluster": o.service, "metadata": metadata, "locality": {"region": o.region.clone().unwrap_or_default()}},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": o.admin_port}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": if o.delta { "DELTA_GRPC" } else { "GRPC" },
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds_cluster"}}],
                "set_node_on_first_message_only": true
            },
            "cds_config": ads.clone(),
            "lds_config": ads
        },
        "static_resources": {"clusters": [{
            "name": "xds_cluster",
            "type": if all_ips { "STATIC" } else { "STRICT_DNS" },
            "connect_timeout": "1s",
            // xDS is gRPC: without HTTP/2 Envoy never leaves PRE_INITIALIZING.
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {
                        "connection_keepalive": {"interval": "5s", "timeout": "2s"}
                    }}
                }
            },
            "load_assignment": {"cluster_name": "xds_cluster", "endpoints": [{"lb_endpoints": endpoints}]}
        }]}
    })
}

/// A `GRPC_XDS_BOOTSTRAP` for proxyless gRPC clients.
pub fn grpc_bootstrap(o: &BootstrapOptions) -> Value {
    let servers: Vec<Value> = o
        .control_plane
        .iter()
        .map(|addr| json!({"server_uri": addr, "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}))
        .collect();
    json!({
        "xds_servers": servers,
        "node": {
            "id": o.node_id,
            "cluster": o.service,
            "metadata": {"proxyless": true, "namespace": o.namespace, "service": o.service},
            "locality": {"region": o.region.clone().unwrap_or_default()}
        }
    })
}
