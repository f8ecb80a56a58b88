//! `bowline.v1.Cluster`: status and membership changes.

use std::time::Duration;

use tonic::{Request, Response, Status};

use super::{ApiContext, ApiError};
use crate::model::ValidationError;
use crate::proto::v1::cluster_server::Cluster;
use crate::proto::v1::*;
use crate::raft::NodeAddr;

/// The cluster service.
pub struct ClusterService {
    /// Shared API plumbing.
    pub ctx: ApiContext,
}

/// How long status waits for each peer's `NodeInfo`.
const PEER_INFO_TIMEOUT: Duration = Duration::from_millis(300);

fn validate_addr(field: &str, addr: &str, required: bool) -> Result<(), ValidationError> {
    if addr.is_empty() && !required {
        return Ok(());
    }
    let valid = addr
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if valid {
        Ok(())
    } else {
        Err(ValidationError::new(
            field,
            "must be host:port with a port between 1 and 65535",
        ))
    }
}

impl ClusterService {
    /// The answer to a membership change committed at log `index`. The header carries the
    /// store revision like every other response: membership entries change no object, so
    /// a client following revisions never sees them jump to a log index.
    async fn membership_response(&self, index: u64) -> MembershipResponse {
        let revision = self.ctx.applied.read(|_, revision| revision);
        MembershipResponse {
            header: self.ctx.header(revision),
            members: self.members().await,
            log_index: index,
        }
    }

    async fn members(&self) -> Vec<Member> {
        let metrics = self.ctx.consensus.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership().clone();
        let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
        let replication = metrics.replication.clone().unwrap_or_default();
        let mut members = Vec::new();
        for (id, node) in membership.nodes() {
            let info = self
                .ctx
                .consensus
                .peers
                .node_info(&node.peer_addr, PEER_INFO_TIMEOUT);
            members.push((*id, node.clone(), info));
        }
        let mut out = Vec::with_capacity(members.len());
        for (id, node, info) in members {
            let info = info.await;
            let role = if Some(id) == metrics.current_leader {
                "leader"
            } else if voters.contains(&id) {
                "follower"
            } else {
                "learner"
            };
            out.push(Member {
                id,
                peer_addr: node.peer_addr.clone(),
                client_addr: info
                    .as_ref()
                    .map(|i| i.client_addr.clone())
                    .filter(|a| !a.is_empty())
                    .unwrap_or(node.client_addr.clone()),
                admin_addr: info
                    .as_ref()
                    .map(|i| i.admin_addr.clone())
                    .unwrap_or_default(),
                role: role.to_string(),
                voter: voters.contains(&id),
                matched_index: replication
                    .get(&id)
                    .and_then(|l| l.as_ref())
                    .map_or(0, |l| l.index),
                reachable: info.is_some(),
            });
        }
        out
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        self.ctx
            .observe("Status", async {
                let metrics = self.ctx.consensus.raft.metrics().borrow().clone();
                let role = match metrics.state {
                    openraft::ServerState::Leader => "leader",
                    openraft::ServerState::Follower => "follower",
                    openraft::ServerState::Learner => "learner",
                    openraft::ServerState::Candidate => "candidate",
                    openraft::ServerState::Shutdown => "shutdown",
                };
                let revision = self.ctx.applied.read(|_, revision| revision);
                Ok(StatusResponse {
                    header: self.ctx.header(revision),
                    leader_id: metrics.current_leader.unwrap_or(0),
                    term: metrics.current_term,
                    members: self.members().await,
                    last_log_index: metrics.last_log_index.unwrap_or(0),
                    applied_index: metrics.last_applied.map_or(0, |l| l.index),
                    snapshot_index: metrics.snapshot.map_or(0, |l| l.index),
                    purged_index: metrics.purged.map_or(0, |l| l.index),
                    node_id: self.ctx.consensus.id,
                    role: role.to_string(),
                })
            })
            .await
    }

    async fn add_learner(
        &self,
        request: Request<AddLearnerRequest>,
    ) -> Result<Response<MembershipResponse>, Status> {
        self.ctx
            .observe("AddLearner", async {
                let r = request.into_inner();
                if r.id == 0 {
                    return Err(ValidationError::new("id", "must be a positive node id").into());
                }
                validate_addr("peer_addr", &r.peer_addr, true)?;
                validate_addr("client_addr", &r.client_addr, false)?;
                validate_addr("admin_addr", &r.admin_addr, false)?;
                let (voters, learners) = self.ctx.consensus.voters_and_learners();
                if voters.contains(&r.id) || learners.contains(&r.id) {
                    return Err(ApiError::Consensus(
                        crate::raft::network::ConsensusError::Rejected(format!(
                            "node {} is already a member",
                            r.id
                        )),
                    ));
                }
                let index = self
                    .ctx
                    .consensus
                    .add_learner(
                        r.id,
                        NodeAddr {
                            peer_addr: r.peer_addr,
                            client_addr: r.client_addr,
                        },
                    )
                    .await?;
                Ok(self.membership_response(index).await)
            })
            .await
    }

    async fn promote(
        &self,
        request: Request<PromoteRequest>,
    ) -> Result<Response<MembershipResponse>, Status> {
        self.ctx
            .observe("Promote", async {
                let id = request.into_inner().id;
                let index = self.ctx.consensus.promote(id).await?;
                Ok(self.membership_response(index).await)
            })
            .await
    }

    async fn remove_member(
        &self,
        request: Request<RemoveMemberRequest>,
    ) -> Result<Response<MembershipResponse>, Status> {
        self.ctx
            .observe("RemoveMember", async {
                let id = request.into_inner().id;
                let index = self.ctx.consensus.remove(id).await?;
                Ok(self.membership_response(index).await)
            })
            .await
    }
}
