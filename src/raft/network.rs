//! The peer network, client side: openraft's `RaftNetwork` over tonic, plus the forwarding
//! protocol a follower uses to hand work to the leader.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, Unreachable};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};
use tonic::transport::Channel;

use super::codec;
use super::log_store::FileLogStore;
use super::{NodeAddr, NodeId, TypeConfig};
use crate::command::{Command, CommandResult};
use crate::proto::peer::raft_peer_client::RaftPeerClient;
use crate::proto::peer::{NodeInfoRequest, NodeInfoResponse, PeerMessage};

/// Largest message accepted on the peer port (snapshot chunks are 3 MiB by default).
pub const MAX_PEER_MESSAGE_BYTES: usize = 64 << 20;

/// Work a follower forwards to the leader.
// Transient RPC values, encoded at once: boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ForwardRequest {
    /// A client write (batched with others on the leader).
    Write(Command),
    /// Confirm leadership and return the index a linearizable read must wait for.
    ReadIndex,
    /// Sent by a leader to a follower: does this node still hold `vote` (so has not voted
    /// for anyone in a later term)? One follower's yes, with the leader's own, is a majority
    /// of three for a read index. Answered by any node, never forwarded.
    ConfirmLeader(openraft::Vote<NodeId>),
    /// Add a non-voting member and wait for it to catch up.
    AddLearner {
        /// New member id.
        id: NodeId,
        /// Its addresses.
        node: NodeAddr,
    },
    /// Make a learner a voter.
    Promote(NodeId),
    /// Remove a member.
    Remove(NodeId),
    /// A TTL endpoint's heartbeat, for the leader's in-memory table.
    Heartbeat {
        /// Namespace.
        namespace: String,
        /// Service.
        service: String,
        /// Endpoint id.
        id: String,
    },
    /// Sent by a leader about to stop to its most up-to-date follower: campaign now.
    /// Answered by the node it is sent to, only while `leader` is the leader it follows.
    Campaign {
        /// The sender, which must be the receiver's leader.
        leader: NodeId,
    },
}

/// The leader's answer to a forwarded request.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ForwardReply {
    /// A write was committed and applied with `result`.
    Written {
        /// The store revision after it.
        revision: u64,
        /// What applying it returned.
        result: CommandResult,
    },
    /// Read index.
    ReadIndex(u64),
    /// The answer to `ConfirmLeader`.
    LeaderConfirmed(bool),
    /// A membership change was committed at `index`.
    MembershipChanged {
        /// Log index of the membership entry.
        index: u64,
    },
    /// The heartbeat was recorded by the leader.
    HeartbeatAccepted {
        /// The endpoint's TTL in milliseconds.
        ttl_ms: u64,
    },
    /// The answer to `Campaign`: whether this node started an election.
    Campaigning(bool),
}

/// Why a forwarded request failed. Also the typed error of [`Consensus`](super::consensus).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ConsensusError {
    /// This node is not the leader; the leader is given when known.
    #[error("not the leader (leader: {})", leader_desc(.leader_id, .leader_addr))]
    NotLeader {
        /// Leader id, if known.
        leader_id: Option<NodeId>,
        /// Leader peer address, if known.
        leader_addr: Option<String>,
    },
    /// No leader could be reached in time (an election is probably under way).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The change is not allowed (for example removing an unknown member).
    #[error("{0}")]
    Rejected(String),
    /// The node is shutting down or its Raft core stopped.
    #[error("node is shutting down: {0}")]
    ShuttingDown(String),
    /// The request names an object that does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// A forwarded write got no answer: it may or may not have been applied.
    #[error("outcome unknown: {0}")]
    Ambiguous(String),
}

fn leader_desc(id: &Option<NodeId>, addr: &Option<String>) -> String {
    match (id, addr) {
        (Some(id), Some(addr)) => format!("node {id} at {addr}"),
        (Some(id), None) => format!("node {id}"),
        _ => "unknown".to_string(),
    }
}

/// Cached tonic channels to peers, keyed by peer address. Cheap to clone.
#[derive(Clone, Default)]
pub struct PeerClients {
    /// One lazily-connected channel per address; tonic reconnects it as needed.
    channels: Arc<Mutex<HashMap<String, RaftPeerClient<Channel>>>>,
    /// Channels for the read-index streams only, whose connections run on the runtime of
    /// whoever opens them (the client runtime, where the reads wait), not the Raft runtime.
    read_index_channels: Arc<Mutex<HashMap<String, RaftPeerClient<Channel>>>>,
    /// Per leader address, the stream this node's read-index requests take in turn. An
    /// async mutex: the turn lasts the whole exchange.
    read_index_streams: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<ReadIndexStream>>>>>,
    /// Where the channels' connection tasks run (the caller's runtime if unset).
    runtime: Option<tokio::runtime::Handle>,
}

impl PeerClients {
    /// Channels whose connections run on `runtime` (the Raft runtime), whoever asks first.
    pub fn on_runtime(runtime: tokio::runtime::Handle) -> Self {
        Self {
            channels: Arc::default(),
            read_index_channels: Arc::default(),
            read_index_streams: Arc::default(),
            runtime: Some(runtime),
        }
    }

    /// A client for `addr` (`host:port`).
    pub fn get(&self, addr: &str) -> Result<RaftPeerClient<Channel>, String> {
        Self::cached(&self.channels, addr, self.runtime.as_ref())
    }

    /// The client in `channels` for `addr`, made on first use with its connection on
    /// `runtime` (the caller's if `None`).
    fn cached(
        channels: &Mutex<HashMap<String, RaftPeerClient<Channel>>>,
        addr: &str,
        runtime: Option<&tokio::runtime::Handle>,
    ) -> Result<RaftPeerClient<Channel>, String> {
        let mut channels = channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(client) = channels.get(addr) {
            return Ok(client.clone());
        }
        let endpoint = Channel::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("bad peer address {addr}: {e}"))?
            .connect_timeout(Duration::from_millis(500))
            .http2_keep_alive_interval(Duration::from_secs(10));
        let _runtime = runtime.map(tokio::runtime::Handle::enter);
        let channel = endpoint.connect_with_connector_lazy(crate::transport::CoalescingConnector);
        let client = RaftPeerClient::new(channel)
            .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES);
        channels.insert(addr.to_string(), client.clone());
        Ok(client)
    }

    /// Sends a forwarded request to the peer at `addr`.
    pub async fn forward(
        &self,
        addr: &str,
        request: &ForwardRequest,
        timeout: Duration,
    ) -> Result<ForwardReply, ConsensusError> {
        if matches!(request, ForwardRequest::ReadIndex) {
            if let Some(reply) = self.read_index_on_stream(addr, timeout).await {
                return reply;
            }
        }
        let unavailable =
            |e: String| ConsensusError::Unavailable(format!("forward to {addr}: {e}"));
        let mut client = self.get(addr).map_err(unavailable)?;
        let payload = codec::encode(request).map_err(|e| unavailable(e.to_string()))?;
        let call = client.forward(PeerMessage { payload });
        let reply = tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| unavailable(format!("timed out after {timeout:?}")))?
            .map_err(|s| unavailable(s.message().to_string()))?;
        let reply: Result<ForwardReply, ConsensusError> =
            codec::decode(&reply.into_inner().payload).map_err(|e| unavailable(e.to_string()))?;
        reply
    }

    /// A read index from the leader at `addr` over the read-index stream; `None` when the
    /// stream is busy with another request (the batcher started a second confirmation
    /// behind a stalled one) or the leader has no such stream (an older version): the
    /// caller then makes a unary call.
    async fn read_index_on_stream(
        &self,
        addr: &str,
        timeout: Duration,
    ) -> Option<Result<ForwardReply, ConsensusError>> {
        let slot = {
            let mut streams = self
                .read_index_streams
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            match streams.get(addr) {
                Some(slot) => slot.clone(),
                None => streams.entry(addr.to_string()).or_default().clone(),
            }
        };
        let mut slot = slot.try_lock().ok()?;
        if slot.unsupported {
            return None;
        }
        let unavailable =
            |e: String| ConsensusError::Unavailable(format!("forward to {addr}: {e}"));
        let payload = match codec::encode(&ForwardRequest::ReadIndex) {
            Ok(payload) => payload,
            Err(e) => return Some(Err(unavailable(e.to_string()))),
        };
        let open = |requests| async move {
            let mut client = Self::cached(&self.read_index_channels, addr, None)
                .map_err(tonic::Status::unavailable)?;
            client.read_indexes(requests).await
        };
        let exchanged = tokio::time::timeout(timeout, async {
            next_reply(send(&mut slot.stream, PeerMessage { payload }, open).await?).await
        })
        .await;
        let status = match exchanged {
            Ok(Ok(reply)) => {
                return Some(
                    codec::decode::<Result<ForwardReply, ConsensusError>>(&reply.payload)
                        .map_err(|e| unavailable(e.to_string()))
                        .and_then(|reply| reply),
                )
            }
            Ok(Err(status)) => status,
            Err(_) => {
                slot.stream = None;
                return Some(Err(unavailable(format!("timed out after {timeout:?}"))));
            }
        };
        slot.stream = None;
        if status.code() == tonic::Code::Unimplemented {
            slot.unsupported = true;
            return None;
        }
        Some(Err(unavailable(status.message().to_string())))
    }

    /// Asks a peer who it is.
    pub async fn node_info(&self, addr: &str, timeout: Duration) -> Option<NodeInfoResponse> {
        let mut client = self.get(addr).ok()?;
        let reply = tokio::time::timeout(timeout, client.node_info(NodeInfoRequest {}))
            .await
            .ok()?
            .ok()?;
        Some(reply.into_inner())
    }
}

/// Creates one [`PeerConnection`] per target for openraft.
#[derive(Clone, Default)]
pub struct PeerNetworkFactory {
    /// Shared channel cache.
    pub clients: PeerClients,
    /// This node's log, whose synced index caps the commit index sent to followers.
    pub log: Option<FileLogStore>,
}

impl RaftNetworkFactory<TypeConfig> for PeerNetworkFactory {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &NodeAddr) -> Self::Network {
        PeerConnection {
            target,
            addr: node.peer_addr.clone(),
            clients: self.clients.clone(),
            log: self.log.clone(),
            appends: 0,
            stream: None,
            owed: 0,
            confirmed: None,
            sent_commit: None,
            unary_only: false,
        }
    }
}

/// The read-index stream to one leader, or why there is none.
#[derive(Default)]
struct ReadIndexStream {
    stream: Option<OrderedStream>,
    /// The leader does not know `ReadIndexes` (an older version during an upgrade).
    unsupported: bool,
}

/// A long-lived stream on which each request gets exactly one reply, in order: a leader's
/// replication to one follower (`RaftPeer.Replicate`), a follower's read-index requests to
/// its leader (`RaftPeer.ReadIndexes`).
struct OrderedStream {
    requests: tokio::sync::mpsc::Sender<PeerMessage>,
    replies: tonic::Streaming<PeerMessage>,
}

/// Sends `message` on the stream in `slot`, opening one with `open` if there is none. A
/// caller that then fails to read its reply, or gives up on it, must empty the slot: the
/// reply it was owed would otherwise be taken for the next request's.
async fn send<F, Fut>(
    slot: &mut Option<OrderedStream>,
    message: PeerMessage,
    open: F,
) -> Result<&mut OrderedStream, tonic::Status>
where
    F: FnOnce(tokio_stream::wrappers::ReceiverStream<PeerMessage>) -> Fut,
    Fut: std::future::Future<
        Output = Result<tonic::Response<tonic::Streaming<PeerMessage>>, tonic::Status>,
    >,
{
    match slot {
        Some(stream) => {
            if stream.requests.send(message).await.is_err() {
                return Err(tonic::Status::unavailable("the stream closed"));
            }
            Ok(stream)
        }
        None => {
            let (requests, outbox) = tokio::sync::mpsc::channel(1);
            // Queued before the stream opens, so it leaves with the request headers.
            let _ = requests.try_send(message);
            let replies = open(tokio_stream::wrappers::ReceiverStream::new(outbox))
                .await?
                .into_inner();
            Ok(slot.insert(OrderedStream { requests, replies }))
        }
    }
}

/// The next reply on `stream`.
async fn next_reply(stream: &mut OrderedStream) -> Result<PeerMessage, tonic::Status> {
    stream
        .replies
        .message()
        .await?
        .ok_or_else(|| tonic::Status::unavailable("the stream ended"))
}

/// Most commit notices a replication stream leaves unanswered at once.
const MAX_OWED_REPLIES: usize = 32;

/// openraft's view of one peer.
pub struct PeerConnection {
    /// Peer id, for error reports.
    target: NodeId,
    /// Peer address.
    addr: String,
    /// Channel cache.
    clients: PeerClients,
    /// See [`PeerNetworkFactory::log`].
    log: Option<FileLogStore>,
    /// Append-entries calls made through this connection so far.
    appends: u64,
    /// The replication stream, once opened and while it works.
    stream: Option<OrderedStream>,
    /// Replies owed on the stream to commit notices sent without waiting for them.
    owed: usize,
    /// The last log id the follower confirmed holding, in a reply on this stream.
    confirmed: Option<openraft::LogId<NodeId>>,
    /// The highest commit index sent on this stream.
    sent_commit: Option<openraft::LogId<NodeId>>,
    /// The peer does not know `Replicate` (an older version during an upgrade).
    unary_only: bool,
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, NodeAddr, E>>;

impl PeerConnection {
    async fn call<Req, Resp, E>(
        &self,
        method: &'static str,
        request: &Req,
        option: &RPCOption,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: serde::de::DeserializeOwned,
        E: std::error::Error + serde::de::DeserializeOwned,
    {
        let mut client = self
            .clients
            .get(&self.addr)
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&std::io::Error::other(e))))?;
        let payload =
            codec::encode(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let message = PeerMessage { payload };
        let call = async {
            match method {
                "append_entries" => client.append_entries(message).await,
                "vote" => client.vote(message).await,
                _ => client.install_snapshot(message).await,
            }
        };
        let reply = match tokio::time::timeout(option.hard_ttl(), call).await {
            Err(_) => return Err(self.timed_out(method, option)),
            Ok(Err(status)) => return Err(self.failed(method, &status)),
            Ok(Ok(reply)) => reply.into_inner(),
        };
        self.decode_reply(&reply)
    }

    fn timed_out<E: std::error::Error>(
        &self,
        method: &str,
        option: &RPCOption,
    ) -> RPCError<NodeId, NodeAddr, E> {
        let error = std::io::Error::other(format!(
            "{method} to node {} timed out after {:?}",
            self.target,
            option.hard_ttl()
        ));
        RPCError::Network(NetworkError::new(&error))
    }

    fn failed<E: std::error::Error>(
        &self,
        method: &str,
        status: &tonic::Status,
    ) -> RPCError<NodeId, NodeAddr, E> {
        let error = std::io::Error::other(format!(
            "{method} to node {}: {}",
            self.target,
            status.message()
        ));
        if is_unreachable(status) {
            RPCError::Unreachable(Unreachable::new(&error))
        } else {
            RPCError::Network(NetworkError::new(&error))
        }
    }

    fn decode_reply<Resp, E>(&self, reply: &PeerMessage) -> RpcResult<Resp, E>
    where
        Resp: serde::de::DeserializeOwned,
        E: std::error::Error + serde::de::DeserializeOwned,
    {
        let decoded: Result<Resp, E> =
            codec::decode(&reply.payload).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        decoded
            .map_err(|e| RPCError::RemoteError(openraft::error::RemoteError::new(self.target, e)))
    }

    /// Sends one append-entries request on the replication stream, opening the stream
    /// first if there is none. A commit notice is only sent: `None`. Otherwise waits for
    /// the replies owed to earlier notices, then for this request's, and returns the
    /// reply to give openraft with whether the stream is spent (a notice was not answered
    /// with success, and that answer is given now; this request's reply is still owed).
    async fn replicate(
        &mut self,
        message: PeerMessage,
        notice: bool,
    ) -> Result<Option<(PeerMessage, bool)>, tonic::Status> {
        let (clients, addr, target) = (&self.clients, &self.addr, self.target);
        let stream = send(&mut self.stream, message, |requests| async move {
            let mut client = clients.get(addr).map_err(tonic::Status::unavailable)?;
            tracing::debug!(peer = target, "opening a replication stream");
            client.replicate(requests).await
        })
        .await?;
        if notice {
            self.owed += 1;
            return Ok(None);
        }
        while self.owed > 0 {
            let reply = next_reply(stream).await?;
            self.owed -= 1;
            let answer: Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>> =
                codec::decode(&reply.payload)
                    .map_err(|e| tonic::Status::internal(format!("bad reply: {e}")))?;
            if !matches!(
                answer,
                Ok(AppendEntriesResponse::Success | AppendEntriesResponse::PartialSuccess(_))
            ) {
                return Ok(Some((reply, true)));
            }
        }
        Ok(Some((next_reply(stream).await?, false)))
    }

    /// Forgets the replication stream and what it confirmed.
    fn drop_stream(&mut self) {
        self.stream = None;
        self.owed = 0;
        self.confirmed = None;
        self.sent_commit = None;
    }
}

/// Whether a failed call means the peer cannot be reached at all (no connection), which
/// openraft answers by pausing replication to it for [`PeerConnection::backoff`]. A slow or
/// failed reply over a live connection is only a network error, retried at the next
/// heartbeat: reported as unreachable, a busy follower's replication paused for 500 ms at a
/// time and its watchers saw events that much later.
fn is_unreachable(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unavailable
}

/// Pauses between attempts to reach a peer that cannot be reached: short at first, so a
/// restarted node catches up quickly, then at most every 500 ms (openraft's default).
fn unreachable_backoff() -> impl Iterator<Item = Duration> {
    [50, 100, 200, 400]
        .into_iter()
        .chain(std::iter::repeat(500))
        .map(Duration::from_millis)
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    fn backoff(&self) -> Backoff {
        Backoff::new(unreachable_backoff())
    }

    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, RaftError<NodeId>> {
        // A follower applies what it is told is committed; see `FileLogStore::clamp_commit`.
        if let Some(log) = &self.log {
            rpc.leader_commit = log.clamp_commit(rpc.leader_commit);
        }
        // openraft makes a connection per election and per leadership check, used once,
        // and one per follower for replication, used for every entry. Only the last is
        // worth a stream of its own.
        self.appends += 1;
        if self.unary_only || self.appends == 1 {
            return self.call("append_entries", &rpc, &option).await;
        }
        let payload = codec::encode(&rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        // A commit notice (no entries, a newer commit index, after a log id the follower
        // confirmed on this stream) is only sent: its reply would tell openraft nothing
        // but the time, and waiting for it held up the next entries by a round trip (a
        // third of all requests under load). Its reply is read before the next request's,
        // and anything but success is given to openraft then. Leadership checks and read
        // leases never take this path: openraft sends them on connections of their own.
        let notice = self.stream.is_some()
            && rpc.entries.is_empty()
            && rpc.prev_log_id.is_some()
            && rpc.prev_log_id == self.confirmed
            && rpc.leader_commit > self.sent_commit
            && self.owed < MAX_OWED_REPLIES;
        let holds = rpc.entries.last().map(|e| e.log_id).or(rpc.prev_log_id);
        let status = match tokio::time::timeout(
            option.hard_ttl(),
            self.replicate(PeerMessage { payload }, notice),
        )
        .await
        {
            Ok(Ok(None)) => {
                self.sent_commit = rpc.leader_commit;
                return Ok(AppendEntriesResponse::Success);
            }
            Ok(Ok(Some((reply, spent)))) => {
                let answer = self.decode_reply(&reply);
                if spent {
                    self.drop_stream();
                    return answer;
                }
                self.sent_commit = self.sent_commit.max(rpc.leader_commit);
                self.confirmed = match &answer {
                    Ok(AppendEntriesResponse::Success) => holds,
                    Ok(AppendEntriesResponse::PartialSuccess(matching)) => *matching,
                    _ => None,
                };
                return answer;
            }
            Ok(Err(status)) => status,
            Err(_) => {
                // The reply still owed on this stream would be taken for the next request's.
                self.drop_stream();
                return Err(self.timed_out("append_entries", &option));
            }
        };
        self.drop_stream();
        if status.code() == tonic::Code::Unimplemented {
            tracing::info!(
                peer = self.target,
                "the peer has no replication stream (an older version); using one call per request"
            );
            self.unary_only = true;
            return self.call("append_entries", &rpc, &option).await;
        }
        Err(self.failed("append_entries", &status))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>> {
        self.call("install_snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, RaftError<NodeId>> {
        self.call("vote", &rpc, &option).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::peer::raft_peer_server::{RaftPeer, RaftPeerServer};
    use std::sync::atomic::{AtomicU64, Ordering};
    use tonic::{Request, Response, Status, Streaming};

    /// A peer on a real socket that answers every append-entries with success and counts
    /// how each arrived. With `streams: false` it is a version without `Replicate`; with
    /// `silent_after` set, a replication stream stops replying after that many requests.
    #[derive(Clone, Default)]
    struct StubPeer {
        streams: bool,
        silent_after: Option<u64>,
        /// Answer commit notices (no entries, a commit index) on the stream with a higher
        /// vote, as a follower that has moved on to a new leader would.
        moved_on: bool,
        unary: Arc<AtomicU64>,
        streamed: Arc<AtomicU64>,
        opened: Arc<AtomicU64>,
    }

    fn answer(response: AppendEntriesResponse<NodeId>) -> PeerMessage {
        let reply: Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>> = Ok(response);
        PeerMessage {
            payload: codec::encode(&reply).unwrap(),
        }
    }

    fn success() -> PeerMessage {
        answer(AppendEntriesResponse::Success)
    }

    impl StubPeer {
        /// Whether this stub has `rpc`'s stream (counting it as opened) or answers as an
        /// older version would.
        fn open_stream(&self, rpc: &str) -> Result<(), Status> {
            if !self.streams {
                return Err(Status::unimplemented(format!("no {rpc} in this version")));
            }
            self.opened.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    fn read_index(index: u64) -> PeerMessage {
        let reply: Result<ForwardReply, ConsensusError> = Ok(ForwardReply::ReadIndex(index));
        PeerMessage {
            payload: codec::encode(&reply).unwrap(),
        }
    }

    type Replies =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<PeerMessage, Status>> + Send>>;

    #[tonic::async_trait]
    impl RaftPeer for StubPeer {
        async fn append_entries(
            &self,
            _: Request<PeerMessage>,
        ) -> Result<Response<PeerMessage>, Status> {
            self.unary.fetch_add(1, Ordering::SeqCst);
            Ok(Response::new(success()))
        }
        type ReplicateStream = Replies;
        async fn replicate(
            &self,
            request: Request<Streaming<PeerMessage>>,
        ) -> Result<Response<Replies>, Status> {
            use futures::StreamExt;
            self.open_stream("Replicate")?;
            let (streamed, silent_after) = (self.streamed.clone(), self.silent_after);
            let moved_on = self.moved_on;
            let mut seen = 0;
            let replies = request.into_inner().filter_map(move |message| {
                seen += 1;
                streamed.fetch_add(1, Ordering::SeqCst);
                let reply = match message {
                    Ok(_) if silent_after.is_some_and(|n| seen > n) => None,
                    Ok(m) if moved_on => {
                        let rpc: AppendEntriesRequest<TypeConfig> =
                            codec::decode(&m.payload).unwrap();
                        if rpc.entries.is_empty() && rpc.leader_commit.is_some() {
                            let vote = openraft::Vote::new(9, 3);
                            Some(Ok(answer(AppendEntriesResponse::HigherVote(vote))))
                        } else {
                            Some(Ok(success()))
                        }
                    }
                    Ok(_) => Some(Ok(success())),
                    Err(status) => Some(Err(status)),
                };
                futures::future::ready(reply)
            });
            Ok(Response::new(Box::pin(replies)))
        }
        async fn vote(&self, _: Request<PeerMessage>) -> Result<Response<PeerMessage>, Status> {
            Err(Status::unimplemented("stub"))
        }
        async fn install_snapshot(
            &self,
            _: Request<PeerMessage>,
        ) -> Result<Response<PeerMessage>, Status> {
            Err(Status::unimplemented("stub"))
        }
        async fn forward(&self, _: Request<PeerMessage>) -> Result<Response<PeerMessage>, Status> {
            self.unary.fetch_add(1, Ordering::SeqCst);
            Ok(Response::new(read_index(7)))
        }
        type ReadIndexesStream = Replies;
        async fn read_indexes(
            &self,
            request: Request<Streaming<PeerMessage>>,
        ) -> Result<Response<Replies>, Status> {
            use futures::StreamExt;
            self.open_stream("ReadIndexes")?;
            let streamed = self.streamed.clone();
            let replies = request.into_inner().map(move |message| {
                streamed.fetch_add(1, Ordering::SeqCst);
                message.map(|_| read_index(9))
            });
            Ok(Response::new(Box::pin(replies)))
        }
        async fn node_info(
            &self,
            _: Request<NodeInfoRequest>,
        ) -> Result<Response<NodeInfoResponse>, Status> {
            Err(Status::unimplemented("stub"))
        }
    }

    async fn listen(peer: StubPeer) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(RaftPeerServer::new(peer))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        addr
    }

    async fn serve(peer: StubPeer) -> PeerConnection {
        let node = NodeAddr {
            peer_addr: listen(peer).await,
            client_addr: String::new(),
        };
        PeerNetworkFactory::default().new_client(2, &node).await
    }

    /// A stub with the replication stream, `configure`d, and a connection to it that has
    /// made its first append (a unary call): the next one goes on the stream.
    async fn streaming(configure: impl FnOnce(&mut StubPeer)) -> (StubPeer, PeerConnection) {
        let mut peer = StubPeer {
            streams: true,
            ..StubPeer::default()
        };
        configure(&mut peer);
        let mut connection = serve(peer.clone()).await;
        assert!(append(&mut connection, 5_000).await, "the first append");
        (peer, connection)
    }

    async fn forwarded_read_index(clients: &PeerClients, addr: &str) -> u64 {
        match clients
            .forward(addr, &ForwardRequest::ReadIndex, Duration::from_secs(5))
            .await
        {
            Ok(ForwardReply::ReadIndex(index)) => index,
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn read_indexes_go_on_one_stream_and_fall_back_to_calls_for_an_older_leader() {
        let leader = StubPeer {
            streams: true,
            ..StubPeer::default()
        };
        let addr = listen(leader.clone()).await;
        let clients = PeerClients::default();
        for _ in 0..3 {
            assert_eq!(forwarded_read_index(&clients, &addr).await, 9);
        }
        assert_eq!(leader.streamed.load(Ordering::SeqCst), 3);
        assert_eq!(leader.opened.load(Ordering::SeqCst), 1);
        assert_eq!(leader.unary.load(Ordering::SeqCst), 0);

        let older = StubPeer::default();
        let addr = listen(older.clone()).await;
        for _ in 0..3 {
            assert_eq!(forwarded_read_index(&clients, &addr).await, 7);
        }
        assert_eq!(older.unary.load(Ordering::SeqCst), 3);
    }

    fn heartbeat() -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: openraft::Vote::new_committed(1, 1),
            prev_log_id: None,
            entries: Vec::new(),
            leader_commit: None,
        }
    }

    fn log_id(index: u64) -> openraft::LogId<NodeId> {
        openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), index)
    }

    /// An append after log index `prev` (held by the follower) with commit index `commit`.
    fn after(prev: u64, commit: Option<u64>) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            prev_log_id: Some(log_id(prev)),
            leader_commit: commit.map(log_id),
            ..heartbeat()
        }
    }

    async fn send_append(
        connection: &mut PeerConnection,
        rpc: AppendEntriesRequest<TypeConfig>,
        ttl_ms: u64,
    ) -> Option<AppendEntriesResponse<NodeId>> {
        let option = RPCOption::new(Duration::from_millis(ttl_ms));
        connection.append_entries(rpc, option).await.ok()
    }

    #[tokio::test]
    async fn a_commit_notice_is_not_waited_for_and_its_reply_is_read_before_the_next() {
        // The stream answers its first request only: a notice after it gets no reply.
        let (peer, mut connection) = streaming(|p| p.silent_after = Some(1)).await;
        let confirmed = send_append(&mut connection, after(5, None), 5_000).await;
        assert_eq!(confirmed, Some(AppendEntriesResponse::Success));
        // Unanswered, and yet at once: nobody waited for its reply.
        let notice = send_append(&mut connection, after(5, Some(5)), 200).await;
        assert_eq!(notice, Some(AppendEntriesResponse::Success));
        assert_eq!(connection.owed, 1);
        // Same commit index: a real request, which waits for the notice's reply first.
        let next = send_append(&mut connection, after(5, Some(5)), 200).await;
        assert_eq!(
            next, None,
            "a missing reply to a notice fails the next request"
        );
        assert!(connection.stream.is_none() && connection.owed == 0);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while peer.streamed.load(Ordering::SeqCst) < 3 {
            assert!(
                std::time::Instant::now() < deadline,
                "the notice never arrived"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_notice_answered_with_a_higher_vote_is_given_to_openraft_at_the_next_request() {
        let (peer, mut connection) = streaming(|p| p.moved_on = true).await;
        assert_eq!(
            send_append(&mut connection, after(5, None), 5_000).await,
            Some(AppendEntriesResponse::Success)
        );
        assert_eq!(
            send_append(&mut connection, after(5, Some(4)), 5_000).await,
            Some(AppendEntriesResponse::Success),
            "a notice"
        );
        assert_eq!(
            send_append(&mut connection, after(5, None), 5_000).await,
            Some(AppendEntriesResponse::HigherVote(openraft::Vote::new(9, 3))),
            "the notice's answer, given for the next request"
        );
        assert!(connection.stream.is_none(), "its own reply is still owed");
        // A request no notice precedes is always waited for.
        assert_eq!(
            send_append(&mut connection, after(5, Some(5)), 5_000).await,
            Some(AppendEntriesResponse::HigherVote(openraft::Vote::new(9, 3)))
        );
        assert_eq!(peer.opened.load(Ordering::SeqCst), 2);
    }

    async fn append(connection: &mut PeerConnection, ttl_ms: u64) -> bool {
        let option = RPCOption::new(Duration::from_millis(ttl_ms));
        matches!(
            connection.append_entries(heartbeat(), option).await,
            Ok(AppendEntriesResponse::Success)
        )
    }

    #[tokio::test]
    async fn a_connection_makes_its_first_append_as_a_call_and_streams_the_rest() {
        let peer = StubPeer {
            streams: true,
            ..StubPeer::default()
        };
        let mut connection = serve(peer.clone()).await;
        for _ in 0..5 {
            assert!(append(&mut connection, 5_000).await);
        }
        assert_eq!(peer.unary.load(Ordering::SeqCst), 1);
        assert_eq!(peer.streamed.load(Ordering::SeqCst), 4);
        assert_eq!(peer.opened.load(Ordering::SeqCst), 1, "one stream for all");
    }

    #[tokio::test]
    async fn a_peer_without_the_stream_gets_one_call_per_append() {
        let peer = StubPeer::default();
        let mut connection = serve(peer.clone()).await;
        for _ in 0..4 {
            assert!(append(&mut connection, 5_000).await);
        }
        assert!(connection.unary_only);
        assert_eq!(peer.unary.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_stream_that_timed_out_is_replaced_so_a_late_reply_is_never_misread() {
        let (peer, mut connection) = streaming(|p| p.silent_after = Some(1)).await;
        assert!(append(&mut connection, 5_000).await, "first on the stream");
        assert!(
            !append(&mut connection, 200).await,
            "the stream's second request gets no reply"
        );
        assert!(connection.stream.is_none());
        assert!(append(&mut connection, 5_000).await, "a new stream answers");
        assert_eq!(peer.opened.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn only_a_missing_connection_counts_as_unreachable() {
        assert!(is_unreachable(&tonic::Status::unavailable(
            "tcp connect error"
        )));
        for status in [
            tonic::Status::cancelled("request cancelled"),
            tonic::Status::deadline_exceeded("slow"),
            tonic::Status::internal("h2 protocol error"),
        ] {
            assert!(!is_unreachable(&status), "{status:?}");
        }
    }

    #[test]
    fn the_unreachable_backoff_starts_short_and_levels_off_at_half_a_second() {
        let pauses: Vec<u64> = unreachable_backoff()
            .take(7)
            .map(|d| d.as_millis() as u64)
            .collect();
        assert_eq!(pauses, vec![50, 100, 200, 400, 500, 500, 500]);
    }
}
