//! The peer network, server side: the tonic service on the peer port. It decodes, calls
//! openraft (or [`Consensus::execute_local`] for forwarded work) and encodes the result.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, VoteRequest, VoteResponse};
use tonic::{Request, Response, Status, Streaming};

use super::campaign::{elections_after_rejection, LeaderContact};
use super::codec;
use super::consensus::Consensus;
use super::network::ForwardRequest;
use super::{NodeId, TypeConfig};
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
    decode_message(&request.into_inner())
}

fn decode_message<T: serde::de::DeserializeOwned>(message: &PeerMessage) -> Result<T, Status> {
    // Garbage on the peer port is the caller's problem, never ours: reject, stay up.
    codec::decode(&message.payload)
        .map_err(|e| Status::invalid_argument(format!("payload: not a valid peer message: {e}")))
}

fn reply<T: serde::Serialize>(value: &T) -> Result<Response<PeerMessage>, Status> {
    reply_message(value).map(Response::new)
}

fn reply_message<T: serde::Serialize>(value: &T) -> Result<PeerMessage, Status> {
    let payload =
        codec::encode(value).map_err(|e| Status::internal(format!("encode reply: {e}")))?;
    Ok(PeerMessage { payload })
}

/// One append-entries request, from either the unary call or the replication stream.
async fn append_entries(
    consensus: &Consensus,
    leader_contact: &LeaderContact,
    rpc: AppendEntriesRequest<TypeConfig>,
) -> Result<PeerMessage, Status> {
    let result = consensus.raft.append_entries(rpc).await;
    if matches!(&result, Ok(r) if !matches!(r, AppendEntriesResponse::HigherVote(_))) {
        leader_contact.touch();
    }
    reply_message(&result)
}

/// Replies on a peer stream, one per request, in order.
pub type PeerReplies = Pin<Box<dyn Stream<Item = Result<PeerMessage, Status>> + Send>>;

/// Ends `replies` after its first error (a broken request, a reset stream), which goes to
/// the caller as the stream's status; the caller opens a new stream.
fn until_first_error(
    replies: impl Stream<Item = Result<PeerMessage, Status>> + Send + 'static,
) -> PeerReplies {
    Box::pin(replies.scan(false, |failed, reply| {
        let item = (!*failed).then(|| {
            *failed = reply.is_err();
            reply
        });
        futures::future::ready(item)
    }))
}

#[tonic::async_trait]
impl RaftPeer for PeerService {
    async fn append_entries(
        &self,
        request: Request<PeerMessage>,
    ) -> Result<Response<PeerMessage>, Status> {
        let rpc = decode(request)?;
        append_entries(&self.consensus, &self.leader_contact, rpc)
            .await
            .map(Response::new)
    }

    type ReplicateStream = PeerReplies;

    async fn replicate(
        &self,
        request: Request<Streaming<PeerMessage>>,
    ) -> Result<Response<Self::ReplicateStream>, Status> {
        let shared = Arc::new((self.consensus.clone(), self.leader_contact.clone()));
        // Each request is handled while the reply stream is polled, in the stream's own
        // task, and the next one is not read until its reply is out: one request at a time,
        // in order, and what a slow leader sends waits in HTTP/2 flow control, not here.
        let replies = request.into_inner().then(move |message| {
            let shared = shared.clone();
            async move {
                let rpc = decode_message(&message?)?;
                append_entries(&shared.0, &shared.1, rpc).await
            }
        });
        Ok(Response::new(until_first_error(replies)))
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

    type ReadIndexesStream = PeerReplies;

    async fn read_indexes(
        &self,
        request: Request<Streaming<PeerMessage>>,
    ) -> Result<Response<Self::ReadIndexesStream>, Status> {
        let consensus = Arc::new(self.consensus.clone());
        let replies = request.into_inner().then(move |message| {
            let consensus = consensus.clone();
            async move {
                let ForwardRequest::ReadIndex = decode_message(&message?)? else {
                    return Err(Status::invalid_argument(
                        "payload: only read-index requests go on this stream",
                    ));
                };
                reply_message(&consensus.execute_local(ForwardRequest::ReadIndex).await)
            }
        });
        Ok(Response::new(until_first_error(replies)))
    }

    async fn node_info(
        &self,
        _request: Request<NodeInfoRequest>,
    ) -> Result<Response<NodeInfoResponse>, Status> {
        Ok(Response::new(self.info.clone()))
    }
}
