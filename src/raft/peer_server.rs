//! The peer network, server side: the tonic service on the peer port. It decodes, calls
//! openraft (or [`Consensus::execute_local`] for forwarded work) and encodes the result.

use tonic::{Request, Response, Status};

use super::codec;
use super::consensus::Consensus;
use super::network::ForwardRequest;
use crate::proto::peer::raft_peer_server::RaftPeer;
use crate::proto::peer::{NodeInfoRequest, NodeInfoResponse, PeerMessage};

/// The `RaftPeer` service.
pub struct PeerService {
    /// Where Raft and forwarded work go.
    pub consensus: Consensus,
    /// This node's own addresses, for `NodeInfo`.
    pub info: NodeInfoResponse,
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
        reply(&self.consensus.raft.append_entries(rpc).await)
    }

    async fn vote(&self, request: Request<PeerMessage>) -> Result<Response<PeerMessage>, Status> {
        let rpc = decode(request)?;
        reply(&self.consensus.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<PeerMessage>,
    ) -> Result<Response<PeerMessage>, Status> {
        let rpc = decode(request)?;
        reply(&self.consensus.raft.install_snapshot(rpc).await)
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
