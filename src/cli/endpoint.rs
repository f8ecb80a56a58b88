//! `bowline endpoint register|deregister`.

use clap::{Args, Subcommand};

use super::output::{endpoint_document, print_documents, OutputFormat};
use super::resources::parse_selector;
use super::{status_line, Ctx};
use crate::model::{Endpoint, DEFAULT_NAMESPACE};
use crate::proto::v1 as pb;

/// Endpoint subcommands.
#[derive(Debug, Subcommand)]
pub enum EndpointCommand {
    /// Register (or replace) an endpoint of a registered service.
    Register(RegisterArgs),
    /// Deregister an endpoint.
    Deregister(DeregisterArgs),
    /// Refresh a TTL endpoint (once, or every --every until Ctrl-C).
    Heartbeat(HeartbeatArgs),
}

/// Flags of `bowline endpoint heartbeat`.
#[derive(Debug, Args)]
pub struct HeartbeatArgs {
    /// Endpoint id.
    pub id: String,
    /// Service the endpoint belongs to.
    #[arg(short, long)]
    pub service: String,
    /// Namespace.
    #[arg(short, long, default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// Keep sending a heartbeat at this interval (e.g. 3s) until Ctrl-C.
    #[arg(long)]
    pub every: Option<crate::model::DurationSpec>,
}

/// Flags of `bowline endpoint register`.
#[derive(Debug, Args)]
pub struct RegisterArgs {
    /// Endpoint id (DNS-1123 subdomain), unique within the service.
    pub id: String,
    /// Service the endpoint belongs to.
    #[arg(short, long)]
    pub service: String,
    /// Namespace.
    #[arg(short, long, default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// IP address or DNS name.
    #[arg(long)]
    pub address: String,
    /// Port, 1..65535.
    #[arg(long)]
    pub port: u32,
    /// Labels `k=v[,k2=v2]` (for example `version=v1`).
    #[arg(short = 'l', long)]
    pub labels: Option<String>,
    /// Load-balancing weight, 1..128.
    #[arg(long, default_value_t = 1)]
    pub weight: u32,
    /// Priority, 0..127 (0 preferred).
    #[arg(long, default_value_t = 0)]
    pub priority: u32,
    /// Region of the locality.
    #[arg(long, default_value = "")]
    pub region: String,
    /// Zone of the locality.
    #[arg(long, default_value = "")]
    pub zone: String,
    /// Time to live (e.g. 10s): the endpoint turns unhealthy unless refreshed with
    /// `bowline endpoint heartbeat` within it.
    #[arg(long)]
    pub ttl: Option<crate::model::DurationSpec>,
    /// Initial health: healthy, unhealthy, draining or unknown.
    #[arg(long)]
    pub health: Option<String>,
    /// Register only if the endpoint's mod revision is R (0 = only if it does not exist).
    #[arg(long)]
    pub if_revision: Option<u64>,
}

/// Flags of `bowline endpoint deregister`.
#[derive(Debug, Args)]
pub struct DeregisterArgs {
    /// Endpoint id.
    pub id: String,
    /// Service the endpoint belongs to.
    #[arg(short, long)]
    pub service: String,
    /// Namespace.
    #[arg(short, long, default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// Deregister only if the endpoint's mod revision is still R.
    #[arg(long)]
    pub if_revision: Option<u64>,
}

/// A domain endpoint as an API request message.
pub fn endpoint_to_request(e: &Endpoint) -> pb::Endpoint {
    pb::Endpoint {
        id: e.id.clone(),
        service: e.service.clone(),
        namespace: e.namespace.clone(),
        address: e.address.clone(),
        port: e.port,
        labels: e.labels.clone().into_iter().collect(),
        locality: Some(pb::Locality {
            region: e.locality.region.clone(),
            zone: e.locality.zone.clone(),
            subzone: e.locality.subzone.clone(),
        }),
        weight: Some(e.weight),
        priority: e.priority,
        ttl_ms: e.ttl.map_or(0, |t| t.as_millis()),
        // An unset health in a file means "let the server decide", not "force unknown".
        health: (e.health.status != crate::model::HealthStatus::Unknown
            || !e.health.reason.is_empty())
        .then(|| pb::Health {
            status: e.health.status.to_string(),
            since_unix_ms: 0,
            reason: e.health.reason.clone(),
        }),
        create_revision: 0,
        mod_revision: 0,
    }
}

/// Runs `bowline endpoint …`.
pub async fn run(ctx: &Ctx, cmd: &EndpointCommand) -> anyhow::Result<()> {
    if let EndpointCommand::Heartbeat(a) = cmd {
        return heartbeat(ctx, a).await;
    }
    let (endpoint, verb, revision) = match cmd {
        EndpointCommand::Register(a) => {
            let request = pb::RegisterEndpointRequest {
                endpoint: Some(pb::Endpoint {
                    id: a.id.clone(),
                    service: a.service.clone(),
                    namespace: a.namespace.clone(),
                    address: a.address.clone(),
                    port: a.port,
                    labels: parse_selector(a.labels.as_deref())?,
                    locality: Some(pb::Locality {
                        region: a.region.clone(),
                        zone: a.zone.clone(),
                        subzone: String::new(),
                    }),
                    weight: Some(a.weight),
                    priority: a.priority,
                    ttl_ms: a.ttl.map_or(0, |t| t.as_millis()),
                    health: a.health.clone().map(|status| pb::Health {
                        status,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                expected_revision: a.if_revision,
            };
            let r = ctx
                .client
                .registry_write(|mut c| {
                    let request = request.clone();
                    async move { c.register_endpoint(request).await }
                })
                .await
                .map_err(|s| anyhow::anyhow!("register endpoint: {}", status_line(&s)))?;
            (
                r.endpoint.unwrap_or_default(),
                "registered",
                r.header.map_or(0, |h| h.revision),
            )
        }
        EndpointCommand::Deregister(a) => {
            let request = pb::DeregisterEndpointRequest {
                namespace: a.namespace.clone(),
                service: a.service.clone(),
                id: a.id.clone(),
                expected_revision: a.if_revision,
            };
            let r = ctx
                .client
                .registry_write(|mut c| {
                    let request = request.clone();
                    async move { c.deregister_endpoint(request).await }
                })
                .await
                .map_err(|s| anyhow::anyhow!("deregister endpoint: {}", status_line(&s)))?;
            (
                r.endpoint.unwrap_or_default(),
                "deregistered",
                r.header.map_or(0, |h| h.revision),
            )
        }
        EndpointCommand::Heartbeat(_) => unreachable!("handled above"),
    };
    match ctx.output {
        OutputFormat::Table => println!(
            "endpoint/{} {verb} (service {}/{}, revision {})",
            endpoint.id, endpoint.namespace, endpoint.service, revision
        ),
        format => print_documents(format, &[endpoint_document(&endpoint)], true)?,
    }
    Ok(())
}

async fn heartbeat(ctx: &Ctx, a: &HeartbeatArgs) -> anyhow::Result<()> {
    let request = pb::HeartbeatRequest {
        namespace: a.namespace.clone(),
        service: a.service.clone(),
        id: a.id.clone(),
    };
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    loop {
        let r = ctx
            .client
            .registry(|mut c| {
                let request = request.clone();
                async move { c.heartbeat(request).await }
            })
            .await
            .map_err(|s| anyhow::anyhow!("heartbeat: {}", status_line(&s)))?;
        if ctx.output == OutputFormat::Table {
            println!(
                "endpoint/{} heartbeat accepted (ttl {})",
                a.id,
                crate::model::DurationSpec::from_millis(r.ttl_ms)
            );
        }
        let Some(every) = a.every else { return Ok(()) };
        tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = tokio::time::sleep(every.as_std()) => {}
        }
    }
}
