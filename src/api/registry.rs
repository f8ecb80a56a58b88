//! `bowline.v1.Registry`: services and endpoints.

use tonic::{Request, Response, Status};

use super::convert::{
    endpoint_from_proto, endpoint_to_proto, object_key, service_from_proto, service_to_proto,
    service_with_status,
};
use super::{now_ms, ApiContext, ApiError};
use crate::command::{Applied, Command};
use crate::model::validation::{validate_name, validate_subdomain};
use crate::proto::v1::registry_server::Registry;
use crate::proto::v1::*;

/// The registry service.
pub struct RegistryService {
    /// Shared API plumbing.
    pub ctx: ApiContext,
}

fn unexpected(applied: Applied) -> ApiError {
    ApiError::Consensus(crate::raft::network::ConsensusError::Unavailable(format!(
        "unexpected apply result {applied:?}"
    )))
}

#[tonic::async_trait]
impl Registry for RegistryService {
    async fn register_service(
        &self,
        request: Request<RegisterServiceRequest>,
    ) -> Result<Response<RegisterServiceResponse>, Status> {
        self.ctx
            .observe("RegisterService", async {
                let r = request.into_inner();
                let service = service_from_proto(r.service)?;
                let (revision, result) = self
                    .ctx
                    .consensus
                    .write(Command::RegisterService {
                        service,
                        expected_revision: r.expected_revision,
                    })
                    .await?;
                match result? {
                    Applied::Service { service, .. } => Ok(RegisterServiceResponse {
                        header: self.ctx.header(revision),
                        service: Some(service_to_proto(&service)),
                    }),
                    other => Err(unexpected(other)),
                }
            })
            .await
    }

    async fn deregister_service(
        &self,
        request: Request<DeregisterServiceRequest>,
    ) -> Result<Response<DeregisterServiceResponse>, Status> {
        self.ctx
            .observe("DeregisterService", async {
                let r = request.into_inner();
                let (namespace, name) = object_key("namespace", "name", &r.namespace, &r.name)?;
                let (revision, result) = self
                    .ctx
                    .consensus
                    .write(Command::DeregisterService {
                        namespace,
                        name,
                        expected_revision: r.expected_revision,
                    })
                    .await?;
                match result? {
                    Applied::Service {
                        service,
                        endpoints_removed,
                    } => Ok(DeregisterServiceResponse {
                        header: self.ctx.header(revision),
                        service: Some(service_to_proto(&service)),
                        endpoints_removed,
                    }),
                    other => Err(unexpected(other)),
                }
            })
            .await
    }

    async fn get_service(
        &self,
        request: Request<GetServiceRequest>,
    ) -> Result<Response<GetServiceResponse>, Status> {
        self.ctx
            .observe("GetService", async {
                let r = request.into_inner();
                let (namespace, name) = object_key("namespace", "name", &r.namespace, &r.name)?;
                self.ctx.read_barrier(r.consistency).await?;
                let (found, revision) = self.ctx.applied.read(|state, revision| {
                    (
                        state
                            .service(&namespace, &name)
                            .map(|s| service_with_status(state, s)),
                        revision,
                    )
                });
                let service = found
                    .ok_or_else(|| ApiError::NotFound(format!("service {namespace}/{name}")))?;
                Ok(GetServiceResponse {
                    header: self.ctx.header(revision),
                    service: Some(service),
                })
            })
            .await
    }

    async fn list_services(
        &self,
        request: Request<ListServicesRequest>,
    ) -> Result<Response<ListServicesResponse>, Status> {
        self.ctx
            .observe("ListServices", async {
                let r = request.into_inner();
                if !r.namespace.is_empty() {
                    validate_name("namespace", &r.namespace)?;
                }
                self.ctx.read_barrier(r.consistency).await?;
                let (services, revision) = self.ctx.applied.read(|state, revision| {
                    let services: Vec<_> = state
                        .list_services(&r.namespace, &r.label_selector)
                        .iter()
                        .map(|s| service_with_status(state, s))
                        .collect();
                    (services, revision)
                });
                Ok(ListServicesResponse {
                    header: self.ctx.header(revision),
                    services,
                })
            })
            .await
    }

    async fn register_endpoint(
        &self,
        request: Request<RegisterEndpointRequest>,
    ) -> Result<Response<RegisterEndpointResponse>, Status> {
        self.ctx
            .observe("RegisterEndpoint", async {
                let r = request.into_inner();
                let keep_health = r
                    .endpoint
                    .as_ref()
                    .is_none_or(|e| e.health.as_ref().is_none_or(|h| h.status.is_empty()));
                let endpoint = endpoint_from_proto(r.endpoint, now_ms())?;
                let (revision, result) = self
                    .ctx
                    .consensus
                    .write(Command::UpsertEndpoint {
                        endpoint,
                        expected_revision: r.expected_revision,
                        keep_health,
                    })
                    .await?;
                match result? {
                    Applied::Endpoint(endpoint) => Ok(RegisterEndpointResponse {
                        header: self.ctx.header(revision),
                        endpoint: Some(endpoint_to_proto(&endpoint)),
                    }),
                    other => Err(unexpected(other)),
                }
            })
            .await
    }

    async fn deregister_endpoint(
        &self,
        request: Request<DeregisterEndpointRequest>,
    ) -> Result<Response<DeregisterEndpointResponse>, Status> {
        self.ctx
            .observe("DeregisterEndpoint", async {
                let r = request.into_inner();
                let (namespace, service) =
                    object_key("namespace", "service", &r.namespace, &r.service)?;
                validate_subdomain("id", &r.id)?;
                let (revision, result) = self
                    .ctx
                    .consensus
                    .write(Command::RemoveEndpoint {
                        namespace,
                        service,
                        id: r.id,
                        expected_revision: r.expected_revision,
                    })
                    .await?;
                match result? {
                    Applied::Endpoint(endpoint) => Ok(DeregisterEndpointResponse {
                        header: self.ctx.header(revision),
                        endpoint: Some(endpoint_to_proto(&endpoint)),
                    }),
                    other => Err(unexpected(other)),
                }
            })
            .await
    }

    async fn get_endpoint(
        &self,
        request: Request<GetEndpointRequest>,
    ) -> Result<Response<GetEndpointResponse>, Status> {
        self.ctx
            .observe("GetEndpoint", async {
                let r = request.into_inner();
                let (namespace, service) =
                    object_key("namespace", "service", &r.namespace, &r.service)?;
                validate_subdomain("id", &r.id)?;
                self.ctx.read_barrier(r.consistency).await?;
                let (found, revision) = self.ctx.applied.read(|state, revision| {
                    (
                        state.endpoint(&namespace, &service, &r.id).cloned(),
                        revision,
                    )
                });
                let endpoint = found.ok_or_else(|| {
                    ApiError::NotFound(format!("endpoint {namespace}/{service}/{}", r.id))
                })?;
                Ok(GetEndpointResponse {
                    header: self.ctx.header(revision),
                    endpoint: Some(endpoint_to_proto(&endpoint)),
                })
            })
            .await
    }

    async fn list_endpoints(
        &self,
        request: Request<ListEndpointsRequest>,
    ) -> Result<Response<ListEndpointsResponse>, Status> {
        self.ctx
            .observe("ListEndpoints", async {
                let r = request.into_inner();
                if !r.namespace.is_empty() {
                    validate_name("namespace", &r.namespace)?;
                }
                if !r.service.is_empty() {
                    validate_name("service", &r.service)?;
                }
                self.ctx.read_barrier(r.consistency).await?;
                let (endpoints, revision) = self.ctx.applied.read(|state, revision| {
                    (
                        state.list_endpoints(&r.namespace, &r.service, &r.label_selector),
                        revision,
                    )
                });
                Ok(ListEndpointsResponse {
                    header: self.ctx.header(revision),
                    endpoints: endpoints.iter().map(endpoint_to_proto).collect(),
                })
            })
            .await
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        self.ctx
            .observe("Heartbeat", async {
                let r = request.into_inner();
                let (namespace, service) =
                    object_key("namespace", "service", &r.namespace, &r.service)?;
                validate_subdomain("id", &r.id)?;
                let ttl_ms = self
                    .ctx
                    .consensus
                    .heartbeat(namespace, service, r.id)
                    .await?;
                let revision = self.ctx.applied.read(|_, revision| revision);
                Ok(HeartbeatResponse {
                    header: self.ctx.header(revision),
                    ttl_ms,
                })
            })
            .await
    }
}
