//! `bowline.v1.Proxies`: the proxies connected to this node's ADS server.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::ApiContext;
use crate::proto::v1::proxies_server::Proxies;
use crate::proto::v1::{ListProxiesRequest, ListProxiesResponse};
use crate::xds::registry::ProxyRegistry;

/// The proxies service.
pub struct ProxiesService {
    /// Shared API plumbing.
    pub ctx: ApiContext,
    /// The node's stream registry.
    pub registry: Arc<ProxyRegistry>,
}

#[tonic::async_trait]
impl Proxies for ProxiesService {
    async fn list_proxies(
        &self,
        _request: Request<ListProxiesRequest>,
    ) -> Result<Response<ListProxiesResponse>, Status> {
        self.ctx
            .observe("ListProxies", async {
                let revision = self.ctx.applied.read(|_, revision| revision);
                Ok(ListProxiesResponse {
                    header: self.ctx.header(revision),
                    proxies: self.registry.list(self.ctx.consensus.id),
                })
            })
            .await
    }
}
