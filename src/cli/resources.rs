//! `bowline apply`, `get` and `delete`: resource-oriented commands over the API.

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;

use super::output::{
    ago, config_document, endpoint_document, labels_text, print_documents, print_table,
    service_document, OutputFormat,
};
use super::{status_line, Ctx};
use crate::api::convert::kind_to_proto;
use crate::model::resource::{parse_documents, Resource};
use crate::model::{ConfigKind, DEFAULT_NAMESPACE};
use crate::proto::v1 as pb;

/// What `get` and `delete` address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Services.
    Service,
    /// Endpoints.
    Endpoint,
    /// A typed config kind.
    Config(ConfigKind),
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "service" | "services" | "svc" => Ok(Kind::Service),
            "endpoint" | "endpoints" | "ep" => Ok(Kind::Endpoint),
            other => other.parse::<ConfigKind>().map(Kind::Config).map_err(|_| {
                format!(
                    "unknown kind `{s}`; expected one of: service, endpoint, trafficpolicy, destinationpolicy, healthcheck (plurals accepted)"
                )
            }),
        }
    }
}

/// Flags of `bowline apply`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// File to read (`-` for standard input); YAML or JSON, several documents allowed.
    #[arg(short = 'f', long = "filename")]
    pub file: PathBuf,
}

/// Flags of `bowline get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// service, endpoint, trafficpolicy, destinationpolicy or healthcheck (plurals accepted).
    pub kind: Kind,
    /// One object's name (endpoint id for endpoints); all when omitted.
    pub name: Option<String>,
    /// Namespace (all namespaces when listing without it).
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// Service of the endpoints.
    #[arg(short, long)]
    pub service: Option<String>,
    /// Label selector `k=v[,k2=v2]` for services and endpoints.
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
}

/// Flags of `bowline delete`.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// service, endpoint, trafficpolicy, destinationpolicy or healthcheck.
    pub kind: Kind,
    /// Name of the object (endpoint id for endpoints).
    pub name: String,
    /// Namespace.
    #[arg(short, long, default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// Service of the endpoint (required for endpoints).
    #[arg(short, long)]
    pub service: Option<String>,
    /// Delete only if the object's mod revision is still R (compare-and-set).
    #[arg(long)]
    pub if_revision: Option<u64>,
}

/// Parses `k=v,k2=v2`.
pub fn parse_selector(text: Option<&str>) -> anyhow::Result<HashMap<String, String>> {
    let mut out = HashMap::new();
    for part in text
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        let (k, v) = part
            .split_once('=')
            .with_context(|| format!("--selector: `{part}` is not key=value"))?;
        out.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(out)
}

fn api_err(what: &str) -> impl Fn(tonic::Status) -> anyhow::Error + '_ {
    move |s| anyhow::anyhow!("{what}: {}", status_line(&s))
}

/// Runs `bowline apply -f`.
pub async fn apply(ctx: &Ctx, args: &ApplyArgs) -> anyhow::Result<()> {
    let text = if args.file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("read standard input")?;
        text
    } else {
        std::fs::read_to_string(&args.file)
            .with_context(|| format!("read {}", args.file.display()))?
    };
    // Every document is parsed and validated before anything is written.
    let mut resources =
        parse_documents(&text).with_context(|| format!("{}", args.file.display()))?;
    if resources.is_empty() {
        bail!("{}: no documents", args.file.display());
    }
    // Services first, so endpoints in the same file find them.
    resources.sort_by_key(|r| match r {
        Resource::Service(_) => 0,
        Resource::Endpoint(_) => 1,
        Resource::Config { .. } => 2,
    });
    let mut results = Vec::new();
    for (done, resource) in resources.iter().enumerate() {
        let label = format!(
            "{}/{}",
            resource.kind().to_ascii_lowercase(),
            resource.name()
        );
        let revision = apply_one(ctx, resource).await.map_err(|e| {
            anyhow::anyhow!(
                "{label}: {e} ({done} of {} resources applied before this one)",
                resources.len()
            )
        })?;
        if ctx.output == OutputFormat::Table {
            println!("{label} configured (revision {revision})");
        } else {
            results.push(serde_json::json!({
                "kind": resource.kind(),
                "namespace": resource.namespace(),
                "name": resource.name(),
                "revision": revision,
            }));
        }
    }
    if ctx.output != OutputFormat::Table {
        print_documents(ctx.output, &results, false)?;
    }
    Ok(())
}

async fn apply_one(ctx: &Ctx, resource: &Resource) -> anyhow::Result<u64> {
    let revision = match resource {
        Resource::Service(s) => {
            let request = pb::RegisterServiceRequest {
                service: Some(pb::Service {
                    name: s.name.clone(),
                    namespace: s.namespace.clone(),
                    ports: s
                        .ports
                        .iter()
                        .map(|p| pb::ServicePort {
                            name: p.name.clone(),
                            port: p.port,
                            protocol: p.protocol.to_string(),
                        })
                        .collect(),
                    labels: s.labels.clone().into_iter().collect(),
                    metadata: s.metadata.clone().into_iter().collect(),
                    depends_on: s.depends_on.clone(),
                    ..Default::default()
                }),
                expected_revision: None,
            };
            let r = ctx
                .client
                .registry_write(|mut c| {
                    let request = request.clone();
                    async move { c.register_service(request).await }
                })
                .await
                .map_err(|s| anyhow::anyhow!(status_line(&s)))?;
            r.header.map_or(0, |h| h.revision)
        }
        Resource::Endpoint(e) => {
            let request = pb::RegisterEndpointRequest {
                endpoint: Some(super::endpoint::endpoint_to_request(e)),
                expected_revision: None,
            };
            let r = ctx
                .client
                .registry_write(|mut c| {
                    let request = request.clone();
                    async move { c.register_endpoint(request).await }
                })
                .await
                .map_err(|s| anyhow::anyhow!(status_line(&s)))?;
            r.header.map_or(0, |h| h.revision)
        }
        Resource::Config {
            namespace,
            name,
            spec,
        } => {
            let request = pb::PutConfigRequest {
                object: Some(pb::ConfigObject {
                    kind: kind_to_proto(spec.kind()) as i32,
                    namespace: namespace.clone(),
                    name: name.clone(),
                    spec_json: spec.to_json(),
                    ..Default::default()
                }),
                expected_revision: None,
            };
            let r = ctx
                .client
                .config_write(|mut c| {
                    let request = request.clone();
                    async move { c.put_config(request).await }
                })
                .await
                .map_err(|s| anyhow::anyhow!(status_line(&s)))?;
            r.header.map_or(0, |h| h.revision)
        }
    };
    Ok(revision)
}

/// Runs `bowline get`.
pub async fn get(ctx: &Ctx, args: &GetArgs) -> anyhow::Result<()> {
    let selector = parse_selector(args.selector.as_deref())?;
    let single = args.name.is_some();
    match args.kind {
        Kind::Service => {
            let services = match &args.name {
                Some(name) => {
                    let request = pb::GetServiceRequest {
                        namespace: args.namespace.clone().unwrap_or_default(),
                        name: name.clone(),
                        consistency: ctx.consistency,
                    };
                    let r = ctx
                        .client
                        .registry(|mut c| {
                            let request = request.clone();
                            async move { c.get_service(request).await }
                        })
                        .await
                        .map_err(api_err("get service"))?;
                    r.service.into_iter().collect::<Vec<_>>()
                }
                None => {
                    let request = pb::ListServicesRequest {
                        namespace: args.namespace.clone().unwrap_or_default(),
                        label_selector: selector.clone(),
                        consistency: ctx.consistency,
                    };
                    ctx.client
                        .registry(|mut c| {
                            let request = request.clone();
                            async move { c.list_services(request).await }
                        })
                        .await
                        .map_err(api_err("list services"))?
                        .services
                }
            };
            if ctx.output == OutputFormat::Table {
                let rows = services
                    .iter()
                    .map(|s| {
                        let st = s.status.clone().unwrap_or_default();
                        let mut health = Vec::new();
                        if st.panic {
                            health.push(format!("panic (<{}% available)", st.panic_threshold));
                        }
                        if st.degraded {
                            health.push(format!(
                                "degraded ({} down)",
                                st.degraded_dependencies.join(",")
                            ));
                        }
                        vec![
                            s.namespace.clone(),
                            s.name.clone(),
                            s.ports
                                .iter()
                                .map(|p| format!("{}:{}/{}", p.name, p.port, p.protocol))
                                .collect::<Vec<_>>()
                                .join(","),
                            format!("{}/{}", st.available_endpoints, st.total_endpoints),
                            if health.is_empty() {
                                "ok".to_string()
                            } else {
                                health.join(", ")
                            },
                            labels_text(&s.labels),
                            s.mod_revision.to_string(),
                        ]
                    })
                    .collect::<Vec<_>>();
                print_table(
                    &[
                        "NAMESPACE",
                        "NAME",
                        "PORTS",
                        "ENDPOINTS",
                        "STATUS",
                        "LABELS",
                        "REVISION",
                    ],
                    &rows,
                );
            } else {
                let docs: Vec<_> = services.iter().map(service_document).collect();
                print_documents(ctx.output, &docs, single)?;
            }
        }
        Kind::Endpoint => {
            let endpoints = match &args.name {
                Some(id) => {
                    let service = args
                        .service
                        .clone()
                        .context("getting one endpoint needs --service")?;
                    let request = pb::GetEndpointRequest {
                        namespace: args.namespace.clone().unwrap_or_default(),
                        service,
                        id: id.clone(),
                        consistency: ctx.consistency,
                    };
                    let r = ctx
                        .client
                        .registry(|mut c| {
                            let request = request.clone();
                            async move { c.get_endpoint(request).await }
                        })
                        .await
                        .map_err(api_err("get endpoint"))?;
                    r.endpoint.into_iter().collect::<Vec<_>>()
                }
                None => {
                    let request = pb::ListEndpointsRequest {
                        namespace: args.namespace.clone().unwrap_or_default(),
                        service: args.service.clone().unwrap_or_default(),
                        label_selector: selector.clone(),
                        consistency: ctx.consistency,
                    };
                    ctx.client
                        .registry(|mut c| {
                            let request = request.clone();
                            async move { c.list_endpoints(request).await }
                        })
                        .await
                        .map_err(api_err("list endpoints"))?
                        .endpoints
                }
            };
            if ctx.output == OutputFormat::Table {
                let rows = endpoints
                    .iter()
                    .map(|e| {
                        let h = e.health.clone().unwrap_or_default();
                        vec![
                            e.namespace.clone(),
                            e.service.clone(),
                            e.id.clone(),
                            format!("{}:{}", e.address, e.port),
                            e.weight.unwrap_or(1).to_string(),
                            h.status,
                            ago(h.since_unix_ms),
                            h.reason,
                            labels_text(&e.labels),
                        ]
                    })
                    .collect::<Vec<_>>();
                print_table(
                    &[
                        "NAMESPACE",
                        "SERVICE",
                        "ID",
                        "ADDRESS",
                        "WEIGHT",
                        "HEALTH",
                        "SINCE",
                        "REASON",
                        "LABELS",
                    ],
                    &rows,
                );
            } else {
                let docs: Vec<_> = endpoints.iter().map(endpoint_document).collect();
                print_documents(ctx.output, &docs, single)?;
            }
        }
        Kind::Config(kind) => {
            let objects = match &args.name {
                Some(name) => {
                    let request = pb::GetConfigRequest {
                        kind: kind_to_proto(kind) as i32,
                        namespace: args.namespace.clone().unwrap_or_default(),
                        name: name.clone(),
                        consistency: ctx.consistency,
                    };
                    let r = ctx
                        .client
                        .config(|mut c| {
                            let request = request.clone();
                            async move { c.get_config(request).await }
                        })
                        .await
                        .map_err(api_err("get config"))?;
                    r.object.into_iter().collect::<Vec<_>>()
                }
                None => {
                    let request = pb::ListConfigsRequest {
                        kind: kind_to_proto(kind) as i32,
                        namespace: args.namespace.clone().unwrap_or_default(),
                        consistency: ctx.consistency,
                    };
                    ctx.client
                        .config(|mut c| {
                            let request = request.clone();
                            async move { c.list_configs(request).await }
                        })
                        .await
                        .map_err(api_err("list configs"))?
                        .objects
                }
            };
            if ctx.output == OutputFormat::Table {
                let rows = objects
                    .iter()
                    .map(|o| {
                        vec![
                            kind.as_str().to_string(),
                            o.namespace.clone(),
                            o.name.clone(),
                            o.create_revision.to_string(),
                            o.mod_revision.to_string(),
                        ]
                    })
                    .collect::<Vec<_>>();
                print_table(&["KIND", "NAMESPACE", "NAME", "CREATED", "REVISION"], &rows);
            } else {
                let docs: Vec<_> = objects.iter().map(config_document).collect();
                print_documents(ctx.output, &docs, single)?;
            }
        }
    }
    Ok(())
}

/// Runs `bowline delete`.
pub async fn delete(ctx: &Ctx, args: &DeleteArgs) -> anyhow::Result<()> {
    let (label, revision) = match args.kind {
        Kind::Service => {
            let request = pb::DeregisterServiceRequest {
                namespace: args.namespace.clone(),
                name: args.name.clone(),
                expected_revision: args.if_revision,
            };
            let r = ctx
                .client
                .registry_write(|mut c| {
                    let request = request.clone();
                    async move { c.deregister_service(request).await }
                })
                .await
                .map_err(api_err("delete service"))?;
            (
                format!(
                    "service/{} deleted ({} endpoints removed)",
                    args.name, r.endpoints_removed
                ),
                r.header.map_or(0, |h| h.revision),
            )
        }
        Kind::Endpoint => {
            let service = args
                .service
                .clone()
                .context("deleting an endpoint needs --service")?;
            let request = pb::DeregisterEndpointRequest {
                namespace: args.namespace.clone(),
                service,
                id: args.name.clone(),
                expected_revision: args.if_revision,
            };
            let r = ctx
                .client
                .registry_write(|mut c| {
                    let request = request.clone();
                    async move { c.deregister_endpoint(request).await }
                })
                .await
                .map_err(api_err("delete endpoint"))?;
            (
                format!("endpoint/{} deleted", args.name),
                r.header.map_or(0, |h| h.revision),
            )
        }
        Kind::Config(kind) => {
            let request = pb::DeleteConfigRequest {
                kind: kind_to_proto(kind) as i32,
                namespace: args.namespace.clone(),
                name: args.name.clone(),
                expected_revision: args.if_revision,
            };
            let r = ctx
                .client
                .config_write(|mut c| {
                    let request = request.clone();
                    async move { c.delete_config(request).await }
                })
                .await
                .map_err(api_err("delete config"))?;
            (
                format!(
                    "{}/{} deleted",
                    kind.as_str().to_ascii_lowercase(),
                    args.name
                ),
                r.header.map_or(0, |h| h.revision),
            )
        }
    };
    match ctx.output {
        OutputFormat::Table => println!("{label} (revision {revision})"),
        _ => print_documents(
            ctx.output,
            &[
                serde_json::json!({"deleted": args.name, "kind": format!("{:?}", args.kind), "revision": revision}),
            ],
            true,
        )?,
    }
    Ok(())
}
