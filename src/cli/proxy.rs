//! `bowline proxy bootstrap|status`.

use clap::{Args, Subcommand};

use super::output::{print_documents, print_table, OutputFormat};
use super::{status_line, Ctx};
use crate::proto::v1 as pb;
use crate::xds::bootstrap::{envoy_bootstrap, grpc_bootstrap, BootstrapOptions};

/// Proxy subcommands.
#[derive(Debug, Subcommand)]
pub enum ProxyCommand {
    /// Print an Envoy bootstrap (or, with --grpc, a GRPC_XDS_BOOTSTRAP) listing every
    /// control-plane node in --endpoints.
    Bootstrap(BootstrapArgs),
    /// Every proxy connected to every node: versions sent and ACKed per type, last NACK.
    Status,
}

/// Flags of `bowline proxy bootstrap`.
#[derive(Debug, Args)]
pub struct BootstrapArgs {
    /// The service the proxy fronts (its node.cluster).
    #[arg(long)]
    pub service: String,
    /// Namespace.
    #[arg(short, long, default_value = crate::model::DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// node.id (default: SERVICE-sidecar, or SERVICE-grpc).
    #[arg(long)]
    pub node_id: Option<String>,
    /// Outbound HTTP listener port.
    #[arg(long, default_value_t = crate::xds::identity::DEFAULT_OUTBOUND_PORT)]
    pub listen_port: u16,
    /// Inbound listener port (with --app-port): traffic for this service's local app.
    #[arg(long, requires = "app_port")]
    pub inbound_port: Option<u16>,
    /// The local app's port, behind the inbound listener.
    #[arg(long, requires = "inbound_port")]
    pub app_port: Option<u16>,
    /// Envoy admin port on 127.0.0.1.
    #[arg(long, default_value_t = 15000)]
    pub admin_port: u16,
    /// Use delta xDS (DELTA_GRPC) instead of state-of-the-world.
    #[arg(long)]
    pub delta: bool,
    /// Print a GRPC_XDS_BOOTSTRAP for proxyless gRPC clients instead.
    #[arg(long)]
    pub grpc: bool,
    /// The proxy's region (node.locality.region): with a DestinationPolicy's
    /// localityFailover, endpoints in this region are preferred, then its failover regions.
    #[arg(long)]
    pub region: Option<String>,
}

/// Runs `bowline proxy …`.
pub async fn run(ctx: &Ctx, cmd: &ProxyCommand) -> anyhow::Result<()> {
    match cmd {
        ProxyCommand::Bootstrap(a) => {
            let options = BootstrapOptions {
                control_plane: ctx.client.endpoints().to_vec(),
                node_id: a.node_id.clone().unwrap_or_else(|| {
                    format!("{}-{}", a.service, if a.grpc { "grpc" } else { "sidecar" })
                }),
                service: a.service.clone(),
                namespace: a.namespace.clone(),
                outbound_port: a.listen_port,
                inbound: a.inbound_port.zip(a.app_port),
                admin_port: a.admin_port,
                delta: a.delta,
                region: a.region.clone(),
            };
            let doc = if a.grpc {
                grpc_bootstrap(&options)
            } else {
                envoy_bootstrap(&options)
            };
            match ctx.output {
                OutputFormat::Yaml => print!("{}", serde_yaml::to_string(&doc)?),
                _ => println!("{}", serde_json::to_string_pretty(&doc)?),
            }
        }
        ProxyCommand::Status => {
            let mut proxies = Vec::new();
            let mut errors = Vec::new();
            for i in 0..ctx.client.endpoints().len() {
                let pinned = ctx.client.pinned(i);
                match pinned
                    .with_failover(|ch| async move {
                        crate::proto::v1::proxies_client::ProxiesClient::new(ch)
                            .list_proxies(pb::ListProxiesRequest {})
                            .await
                            .map(tonic::Response::into_inner)
                    })
                    .await
                {
                    Ok(r) => proxies.extend(r.proxies),
                    Err(s) => errors.push(format!(
                        "{}: {}",
                        ctx.client.endpoints()[i],
                        status_line(&s)
                    )),
                }
            }
            if proxies.is_empty() && !errors.is_empty() {
                anyhow::bail!("proxy status: {}", errors.join("; "));
            }
            for e in &errors {
                eprintln!("warning: {e}");
            }
            match ctx.output {
                OutputFormat::Table => {
                    let rows = proxies
                        .iter()
                        .map(|p| {
                            let t = |name: &str| {
                                p.types.iter().find(|t| t.r#type == name).map_or(
                                    "-".to_string(),
                                    |t| {
                                        if t.acked_version == t.sent_version {
                                            format!("{} ✓", t.acked_version)
                                        } else {
                                            format!(
                                                "{} (sent {})",
                                                if t.acked_version.is_empty() {
                                                    "-"
                                                } else {
                                                    &t.acked_version
                                                },
                                                t.sent_version
                                            )
                                        }
                                    },
                                )
                            };
                            let nack = p
                                .types
                                .iter()
                                .filter(|t| !t.last_nack.is_empty())
                                .map(|t| format!("{}: {}", t.r#type, t.last_nack))
                                .collect::<Vec<_>>()
                                .join("; ");
                            vec![
                                p.node_id.clone(),
                                p.cluster.clone(),
                                p.control_plane_node.to_string(),
                                p.stream.clone(),
                                t("CDS"),
                                t("EDS"),
                                t("LDS"),
                                t("RDS"),
                                if nack.is_empty() {
                                    "-".to_string()
                                } else {
                                    nack
                                },
                            ]
                        })
                        .collect::<Vec<_>>();
                    print_table(
                        &[
                            "PROXY",
                            "SERVICE",
                            "NODE",
                            "STREAM",
                            "CDS",
                            "EDS",
                            "LDS",
                            "RDS",
                            "LAST NACK",
                        ],
                        &rows,
                    );
                }
                format => {
                    let docs: Vec<serde_json::Value> = proxies
                        .iter()
                        .map(|p| {
                            serde_json::json!({
                                "nodeId": p.node_id, "service": p.cluster, "controlPlaneNode": p.control_plane_node,
                                "stream": p.stream, "connectedAtMs": p.connected_at_ms,
                                "types": p.types.iter().map(|t| serde_json::json!({
                                    "type": t.r#type, "sentVersion": t.sent_version, "ackedVersion": t.acked_version,
                                    "lastNack": t.last_nack, "resources": t.resources,
                                })).collect::<Vec<_>>(),
                            })
                        })
                        .collect();
                    print_documents(format, &docs, false)?;
                }
            }
        }
    }
    Ok(())
}
