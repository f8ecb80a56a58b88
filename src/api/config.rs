//! `bowline.v1.Config`: typed config objects (TrafficPolicy, DestinationPolicy, HealthCheck).

use tonic::{Request, Response, Status};

use super::convert::{
    config_from_proto, config_to_proto, kind_from_proto, object_key, required_kind,
};
use super::{ApiContext, ApiError};
use crate::command::{Applied, Command};
use crate::model::validation::validate_name;
use crate::proto::v1::config_server::Config;
use crate::proto::v1::*;

/// The config service.
pub struct ConfigService {
    /// Shared API plumbing.
    pub ctx: ApiContext,
}

fn expect_config(applied: Applied) -> Result<crate::store::StoredConfig, ApiError> {
    match applied {
        Applied::Config(c) => Ok(c),
        other => Err(ApiError::Consensus(
            crate::raft::network::ConsensusError::Unavailable(format!(
                "unexpected apply result {other:?}"
            )),
        )),
    }
}

#[tonic::async_trait]
impl Config for ConfigService {
    async fn put_config(
        &self,
        request: Request<PutConfigRequest>,
    ) -> Result<Response<PutConfigResponse>, Status> {
        self.ctx
            .observe("PutConfig", async {
                let r = request.into_inner();
                let (namespace, name, spec) = config_from_proto(r.object)?;
                let (revision, result) = self
                    .ctx
                    .consensus
                    .write(Command::PutConfig {
                        namespace,
                        name,
                        spec,
                        expected_revision: r.expected_revision,
                    })
                    .await?;
                let stored = expect_config(result?)?;
                Ok(PutConfigResponse {
                    header: self.ctx.header(revision),
                    object: Some(config_to_proto(&stored)),
                })
            })
            .await
    }

    async fn get_config(
        &self,
        request: Request<GetConfigRequest>,
    ) -> Result<Response<GetConfigResponse>, Status> {
        self.ctx
            .observe("GetConfig", async {
                let r = request.into_inner();
                let kind = required_kind(r.kind)?;
                let (namespace, name) = object_key("namespace", "name", &r.namespace, &r.name)?;
                self.ctx.read_barrier(r.consistency).await?;
                let (found, revision) = self.ctx.applied.read(|state, revision| {
                    (state.config(kind, &namespace, &name).cloned(), revision)
                });
                let stored = found.ok_or_else(|| {
                    ApiError::NotFound(format!("{} {namespace}/{name}", kind.as_str()))
                })?;
                Ok(GetConfigResponse {
                    header: self.ctx.header(revision),
                    object: Some(config_to_proto(&stored)),
                })
            })
            .await
    }

    async fn list_configs(
        &self,
        request: Request<ListConfigsRequest>,
    ) -> Result<Response<ListConfigsResponse>, Status> {
        self.ctx
            .observe("ListConfigs", async {
                let r = request.into_inner();
                let kind = kind_from_proto(r.kind, true)?;
                if !r.namespace.is_empty() {
                    validate_name("namespace", &r.namespace)?;
                }
                self.ctx.read_barrier(r.consistency).await?;
                let (objects, revision) = self
                    .ctx
                    .applied
                    .read(|state, revision| (state.list_configs(kind, &r.namespace), revision));
                Ok(ListConfigsResponse {
                    header: self.ctx.header(revision),
                    objects: objects.iter().map(config_to_proto).collect(),
                })
            })
            .await
    }

    async fn delete_config(
        &self,
        request: Request<DeleteConfigRequest>,
    ) -> Result<Response<DeleteConfigResponse>, Status> {
        self.ctx
            .observe("DeleteConfig", async {
                let r = request.into_inner();
                let kind = required_kind(r.kind)?;
                let (namespace, name) = object_key("namespace", "name", &r.namespace, &r.name)?;
                validate_name("object.name", &name)?;
                let (revision, result) = self
                    .ctx
                    .consensus
                    .write(Command::DeleteConfig {
                        kind,
                        namespace,
                        name,
                        expected_revision: r.expected_revision,
                    })
                    .await?;
                let stored = expect_config(result?)?;
                Ok(DeleteConfigResponse {
                    header: self.ctx.header(revision),
                    object: Some(config_to_proto(&stored)),
                })
            })
            .await
    }
}
