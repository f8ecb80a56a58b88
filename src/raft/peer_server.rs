//! The peer network, server side: the tonic service on the peer port. It decodes, calls
//! openraft (or [`Consensus::execute_local`] for forwarded work) and encodes the result.

use std::sync::atomic::Ordering;
use std::time::Duration;

use openraft::raft::{AppendEntriesResponse, VoteRequest, VoteResponse};
use tonic::{Request, Response, Status};

use super::campaign::{elections_after_rejection, LeaderContact};
use super::codec;
use super::consensus::Consensus;
use super::network::ForwardRequest;
use super::NodeId;
use crate::proto::peer::raft_peer_server::RaftPeer;
use crate::proto::peer::{NodeInfoRequest, NodeInfoResponse, PeerMessage};

/// The `RaftPeer` service.
pub struct PeerService {
    /// Where Raft and forwarded work go.
    pub consensus: Consensus,
    /// This node's own addresses, for `NodeInfo`.
    pub info: NodeInfoResponse,
    /// When a leader last reached this node.
    pub leader_contact: LeaderContact,
    /// How long without a leader before this node may campaign right after rejecting a
    /// candidate (the shortest election timeout).
    pub campaign_quiet: Duration,
}

fn decode<T: serde::de::DeserializeOwned>(request: Request<PeerMessage>) -> Result<T, Status> {
    // Garbage on the peer port is the caller's problem, never ours: reject, stay up.
    codec::decode(&request.into_inner().payload)
        .map_err(|e| Status::invalid_argument(format!("payload: not a valid peer message: {e}")))
}

fn reply<T: serde::Serialize>(value: &T) -> Result<Response<PeerMessage>, Status> {
    let payload =
        codec::encode(value).map_err(|e| Status::internal(format!("encode reply: {e}")))?;
    Ok(Response::new(PeerMessage { payload }))
}

#[tonic::async_trait]
impl RaftPeer for PeerService {
    async fn append_entries(
        &self,
        request: Request<PeerMessage>,
    ) -> Result<Response<PeerMessage>, Status> {
        let rpc = decode(request)?;
        let result = self.consensus.raft.append_entries(rpc).await;
        if matches!(&result, Ok(r) if !matches!(r, AppendEntriesResponse::HigherVote(_))) {
            self.leader_contact.touch();
        }
        reply(&result)
    }

    async fn vote(&self, request: Request<PeerMessage>) -> Result<Response<PeerMessage>, Status> {
        let rpc: VoteRequest<NodeId> = decode(request)?;
        let Some(admitted) = self
            .consensus
            .read_lease
            .admit_vote(std::time::Instant::now())
        else {
            // This leader may be serving reads on its lease: no vote, and no campaign of our
            // own either. The log id only steers the candidate's back-off; the applied one
            // is close enough (openraft does not expose the last one).
            let refusal = {
                let metrics = self.consensus.raft.metrics();
                let metrics = metrics.borrow();
                VoteResponse::new(metrics.vote, metrics.last_applied, false)
            };
            tracing::debug!(candidate = ?rpc.vote.leader_id().voted_for(), "vote refused: read lease");
            return reply(&Ok::<_, openraft::error::RaftError<NodeId>>(refusal));
        };
        let result = self.consensus.raft.vote(rpc.clone()).await;
        admitted.answered(matches!(&result, Ok(r) if r.vote_granted));
        if let Ok(response) = &result {
            let elections = elections_after_rejection(
                &rpc,
                response,
                self.leader_contact.silent_for(),
                self.campaign_quiet,
            );
            // A stopping node never campaigns: it would take back the leadership it is
            // handing off.
            if elections > 0 && !self.consensus.stopping.load(Ordering::Relaxed) {
                tracing::info!(
                    candidate = ?rpc.vote.leader_id().voted_for(),
                    elections,
                    "rejected a candidate with a shorter log while the leader is silent; campaigning"
                );
                for _ in 0..elections {
                    if self.consensus.raft.trigger().elect().await.is_err() {
                        break;
                    }
                }
            }
        }
        reply(&result)
    }

    async fn install_snapshot(
        &self,
        request: Request<PeerMessage>,
    ) -> Result<Response<PeerMessage>, Status> {
        let rpc = decode(request)?;
        let result = self.consensus.raft.install_snapshot(rpc).await;
        if result.is_ok() {
            self.leader_contact.touch();
        }
        reply(&result)
    }

    async fn forward(
        &self,
        request: Request<PeerMessage>,
    ) -> Result<Response<PeerMessage>, Status> {
        let forwarded: ForwardRequest = decode(request)?;
        reply(&self.consensus.execute_local(forwarded).await)
    }

    async fn node_info(
        &self,
        _request: Request<NodeInfoRequest>,
    ) -> Result<Response<NodeInfoResponse>, Status> {
        Ok(Response::new(self.info.clone()))
    }
}
