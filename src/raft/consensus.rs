//! `Consensus`: the one door through which the API reaches Raft. Writes, read barriers and
//! membership changes run here when this node leads, and are forwarded to the leader over
//! the peer port when it does not, so clients may talk to any node.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::ChangeMembers;
use tokio::time::Instant;

use super::codec;
use super::network::{ConsensusError, ForwardReply, ForwardRequest, PeerClients};
use super::proposal_batch::ProposalBatcher;
use super::read_index::{ConfirmationPicker, ReadIndexBatcher, RestoredLeadership};
use super::read_lease::ReadLease;
use super::state_machine::AppliedState;
use super::{NodeAddr, NodeId, Raft};
use crate::command::{Command, CommandResult, EncodedBatch, Proposal};

/// A learner further behind than this is not promoted: as a voter it would slow commits or
/// cost the quorum.
const PROMOTE_MAX_LAG: u64 = 1_000;

/// How long a leader waits for a follower's leadership confirmation before it falls back
/// to openraft's round (a healthy one answers in about a millisecond here).
const CONFIRM_TIMEOUT: Duration = Duration::from_millis(50);

/// How long a membership change may take, including a learner's catch-up.
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(60);

/// Handle used by the API layer and the peer server. Cheap to clone.
#[derive(Clone)]
pub struct Consensus {
    /// This node's id.
    pub id: NodeId,
    /// The Raft instance.
    pub raft: Raft,
    /// Channels to peers, for forwarding.
    pub peers: PeerClients,
    /// Applied state, to wait for a read index.
    pub applied: AppliedState,
    /// How long a client request may wait for a leader and an answer.
    pub request_timeout: Duration,
    /// TTL heartbeats received while this node leads (read by the health prober).
    pub heartbeats: std::sync::Arc<crate::health::HeartbeatTable>,
    /// Shares leadership confirmations among concurrent read-index requests on the leader.
    pub read_batch: ReadIndexBatcher,
    /// Shares read-index requests among this node's concurrent linearizable reads (one
    /// forward to the leader for many reads on a follower). Separate from `read_batch`: a
    /// batch here runs through that one on the leader, and sharing a queue would deadlock.
    pub read_barrier_batch: ReadIndexBatcher,
    /// Packs concurrent writes on the leader into shared entries.
    pub write_batch: ProposalBatcher<bytes::Bytes>,
    /// The leadership openraft restored at start-up, if this node led when it stopped.
    pub restored: Option<RestoredLeadership>,
    /// Which followers confirm this leader's read indexes.
    pub confirmations: std::sync::Arc<std::sync::Mutex<ConfirmationPicker>>,
    /// Counts confirmations by who gave them.
    pub metrics: crate::telemetry::Metrics,
    /// Set while this leader hands leadership off: it takes no new writes, so that a
    /// follower can catch up with its log.
    pub handing_off: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Set once this node has begun to stop; it then never starts an election.
    pub stopping: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Lets this leader give read indexes without a confirmation round for a while after
    /// one (see `read_lease.rs`).
    pub read_lease: ReadLease,
}

/// How often a hand-off re-checks what Raft metrics do not announce (the write batcher
/// draining).
const HAND_OFF_POLL: Duration = Duration::from_millis(5);

/// Waits until `metrics` changes or `poll` passes, whichever is first; `false` once
/// `deadline` has passed or Raft has stopped.
async fn wait_for_change<T>(
    metrics: &mut tokio::sync::watch::Receiver<T>,
    deadline: Instant,
    poll: Duration,
) -> bool {
    let remaining = deadline.saturating_duration_since(Instant::now());
    if remaining.is_zero() {
        return false;
    }
    !matches!(
        tokio::time::timeout(remaining.min(poll), metrics.changed()).await,
        Ok(Err(_))
    )
}

fn not_leader<E>(
    f: openraft::error::ForwardToLeader<NodeId, NodeAddr>,
) -> Result<E, ConsensusError> {
    Err(ConsensusError::NotLeader {
        leader_id: f.leader_id,
        leader_addr: f.leader_node.map(|n| n.peer_addr),
    })
}

/// A write this node could not encode: refused, never proposed.
fn cannot_encode(e: bincode::error::EncodeError) -> ConsensusError {
    ConsensusError::Rejected(format!("cannot encode: {e}"))
}

fn fatal(e: impl std::fmt::Display) -> ConsensusError {
    ConsensusError::ShuttingDown(e.to_string())
}

impl Consensus {
    /// The read index this leader may give now without a confirmation round, if its read
    /// lease holds: at least every entry committed before its term and every write it
    /// acknowledged (it acknowledges a write only after applying it). Starts a renewal when
    /// the lease runs low.
    fn leased_read_index(&self) -> Option<u64> {
        let term = self.leading_term()?;
        let read = self.read_lease.current(std::time::Instant::now(), term)?;
        if read.renew {
            let this = self.clone();
            tokio::spawn(async move {
                // Renewed or not (a vote in flight takes no lease), the next read may ask again.
                let _ = this.confirm_read_index().await;
                this.read_lease.renewal_done();
            });
        }
        self.metrics.read_lease_reads.inc();
        Some(read.floor.max(self.applied.applied_index()))
    }

    /// The current term, if this node leads in it (as Raft's server metrics say).
    fn leading_term(&self) -> Option<u64> {
        let metrics = self.raft.server_metrics();
        let metrics = metrics.borrow();
        (metrics.current_leader == Some(self.id)).then(|| metrics.vote.leader_id().get_term())
    }

    /// One leadership confirmation; returns the read index it makes safe to serve. Takes
    /// (or renews) the read lease when it may.
    async fn confirm_read_index(&self) -> Result<u64, ConsensusError> {
        let term = || {
            self.raft
                .server_metrics()
                .borrow()
                .vote
                .leader_id()
                .get_term()
        };
        let term_before = term();
        let via = |path: &str| {
            self.metrics
                .read_index_confirmations
                .with_label_values(&[path])
                .inc()
        };
        // A lease needs openraft's own round: only its heartbeats make the followers refuse
        // other candidates for a while (see `read_lease.rs`).
        let lease_attempt = self
            .leading_term()
            .and_then(|_| self.read_lease.begin(std::time::Instant::now()));
        let shortcut = match lease_attempt {
            Some(_) => None,
            None => self.confirm_with_fewest_followers().await,
        };
        let index = match shortcut {
            Some(index) => {
                via("follower");
                index
            }
            None => match self.raft.get_read_log_id().await {
                Ok((read_log_id, _)) => {
                    via("raft");
                    let index = read_log_id.map_or(0, |l| l.index);
                    let term_after = term();
                    let floor = self
                        .restored
                        .map_or(index, |r| r.floor(index, term_before, term_after));
                    if let Some(attempt) = lease_attempt {
                        if term_after == term_before {
                            self.read_lease.complete(attempt, term_before, floor);
                        }
                    }
                    return Ok(floor);
                }
                Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                    return not_leader(f)
                }
                Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))) => {
                    return Err(ConsensusError::Unavailable(
                        "the leader cannot reach a quorum".to_string(),
                    ))
                }
                Err(e) => return Err(fatal(e)),
            },
        };
        Ok(self
            .restored
            .map_or(index, |r| r.floor(index, term_before, term())))
    }

    /// A read index confirmed by the fewest followers that make a majority with this leader
    /// (one of two in a three-node cluster). openraft's `get_read_log_id` sends a heartbeat
    /// to every follower, and each costs a follower ~95 µs of CPU, mostly waking its Raft
    /// thread. `None` when the shortcut does not apply (not leader, no entry of this term
    /// committed yet, a joint configuration) or a follower did not confirm: the caller then
    /// uses openraft's round.
    ///
    /// Safe for the same reason as a read index: this node is leader in term T when the core
    /// answers below, after every read of the batch arrived, and so is each asked follower
    /// when it answers. A leader of a later term needs a majority of votes, and every
    /// majority includes this node or an asked follower, which would then hold a later vote.
    async fn confirm_with_fewest_followers(&self) -> Option<u64> {
        let (id, picker) = (self.id, self.confirmations.clone());
        let (vote, index, asks) = self
            .raft
            .with_raft_state(move |st| {
                if st.server_state != openraft::ServerState::Leader {
                    return None;
                }
                let vote = *st.vote_ref();
                let committed = st.committed?;
                // Until an entry of this term commits, entries of earlier terms may be
                // committed beyond what this node knows: openraft's round handles that.
                if !vote.is_committed() || committed.leader_id.term != vote.leader_id().get_term() {
                    return None;
                }
                let effective = st.membership_state.effective();
                if effective.get_joint_config().len() != 1 {
                    return None;
                }
                let voters: Vec<NodeId> = effective.voter_ids().collect();
                let picked = picker.lock().unwrap_or_else(|e| e.into_inner()).pick(
                    &voters,
                    id,
                    std::time::Instant::now(),
                )?;
                let asks = picked
                    .into_iter()
                    .map(|f| effective.get_node(&f).map(|n| (f, n.peer_addr.clone())))
                    .collect::<Option<Vec<_>>>()?;
                Some((vote, committed.index, asks))
            })
            .await
            .ok()??;
        let ask = ForwardRequest::ConfirmLeader(vote);
        let replies = futures::future::join_all(
            asks.iter()
                .map(|(_, addr)| self.peers.forward(addr, &ask, CONFIRM_TIMEOUT)),
        )
        .await;
        let mut confirmed = true;
        for ((follower, _), reply) in asks.iter().zip(replies) {
            if !matches!(reply, Ok(ForwardReply::LeaderConfirmed(true))) {
                confirmed = false;
                self.confirmations
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .suspect(*follower, std::time::Instant::now());
            }
        }
        confirmed.then_some(index)
    }

    /// Whether this node holds `vote` now (answered in Raft's core, in order with votes it
    /// grants): the follower's half of [`Self::confirm_with_fewest_followers`].
    pub async fn holds_vote(&self, vote: openraft::Vote<NodeId>) -> bool {
        self.raft
            .with_raft_state(move |st| *st.vote_ref() == vote)
            .await
            .unwrap_or(false)
    }

    /// Proposes a command and waits until it is committed and applied; returns the store
    /// revision after it and the result of applying it.
    pub async fn write(&self, command: Command) -> Result<(u64, CommandResult), ConsensusError> {
        match self.submit(ForwardRequest::Write(command)).await? {
            ForwardReply::Written { revision, result } => Ok((revision, result)),
            other => Err(ConsensusError::Unavailable(format!(
                "unexpected reply {other:?}"
            ))),
        }
    }

    /// A linearizable read barrier: confirms a leader's read index and waits until this node
    /// has applied that far. Returns the revision the read may then be served at.
    pub async fn read_barrier(&self) -> Result<u64, ConsensusError> {
        if let Some(index) = self.leased_read_index() {
            return self.wait_applied(index).await;
        }
        // Built only by the read that starts a batch driver: a `Consensus` clone is a few
        // dozen reference counts, which was ~2 % of a follower's CPU when every read paid it.
        let request_read_index = || {
            let this = self.clone();
            move || {
                let this = this.clone();
                async move {
                    match this.submit(ForwardRequest::ReadIndex).await? {
                        ForwardReply::ReadIndex(index) => Ok(index),
                        other => Err(ConsensusError::Unavailable(format!(
                            "unexpected reply {other:?}"
                        ))),
                    }
                }
            }
        };
        let index = self
            .read_barrier_batch
            .read_index(request_read_index)
            .await?;
        self.wait_applied(index).await
    }

    /// Waits (within the request timeout) until this node has applied `index`; returns the
    /// store revision then.
    async fn wait_applied(&self, index: u64) -> Result<u64, ConsensusError> {
        match tokio::time::timeout(self.request_timeout, self.applied.wait_applied(index)).await {
            Ok(Ok(applied)) => Ok(applied),
            Ok(Err(_)) => Err(fatal("state machine stopped")),
            Err(_) => Err(ConsensusError::Unavailable(format!(
                "this node did not apply up to read index {index} within {:?}",
                self.request_timeout
            ))),
        }
    }

    /// Adds a learner and waits for it to catch up; returns the membership log index.
    pub async fn add_learner(&self, id: NodeId, node: NodeAddr) -> Result<u64, ConsensusError> {
        self.membership(ForwardRequest::AddLearner { id, node })
            .await
    }

    /// Promotes a learner to voter.
    pub async fn promote(&self, id: NodeId) -> Result<u64, ConsensusError> {
        self.membership(ForwardRequest::Promote(id)).await
    }

    /// Removes a member.
    pub async fn remove(&self, id: NodeId) -> Result<u64, ConsensusError> {
        self.membership(ForwardRequest::Remove(id)).await
    }

    /// Delivers a TTL heartbeat to the leader; returns the endpoint's TTL in milliseconds.
    pub async fn heartbeat(
        &self,
        namespace: String,
        service: String,
        id: String,
    ) -> Result<u64, ConsensusError> {
        match self
            .submit(ForwardRequest::Heartbeat {
                namespace,
                service,
                id,
            })
            .await?
        {
            ForwardReply::HeartbeatAccepted { ttl_ms } => Ok(ttl_ms),
            other => Err(ConsensusError::Unavailable(format!(
                "unexpected reply {other:?}"
            ))),
        }
    }

    async fn membership(&self, request: ForwardRequest) -> Result<u64, ConsensusError> {
        match self.submit(request).await? {
            ForwardReply::MembershipChanged { index } => Ok(index),
            other => Err(ConsensusError::Unavailable(format!(
                "unexpected reply {other:?}"
            ))),
        }
    }

    /// Hands leadership to the most up-to-date voter before this node stops: stops taking
    /// writes, waits (within `within`) until a voter has every entry this leader has, asks
    /// it to campaign, and waits until it leads. The old leader grants it its vote (its own
    /// vote is not renewed by followers, so openraft's lease has long expired, and its read
    /// lease is suspended first), which with the candidate's is a majority of three; so
    /// clients see a new leader after one vote round instead of an election timeout plus a
    /// vote round after a crash. Returns the new leader, or `None` when this node does not
    /// lead, no voter caught up, or the new leader did not appear in time; the node then
    /// stops anyway and the others elect as after a crash.
    pub async fn hand_off_leadership(&self, within: Duration) -> Option<NodeId> {
        self.stopping.store(true, Ordering::Relaxed);
        self.handing_off.store(true, Ordering::Relaxed);
        // The successor needs this node's vote, which a read lease would refuse.
        let _no_lease = self.read_lease.suspend();
        let handed = self.hand_off_to_caught_up_voter(within).await;
        if handed.is_none() {
            // Still leading (or nobody leads yet): serve writes for as long as this node runs.
            self.handing_off.store(false, Ordering::Relaxed);
        }
        handed
    }

    async fn hand_off_to_caught_up_voter(&self, within: Duration) -> Option<NodeId> {
        let deadline = Instant::now() + within;
        let mut metrics = self.raft.metrics();
        let (target, addr) = loop {
            {
                let m = metrics.borrow_and_update();
                if m.current_leader != Some(self.id) {
                    return None;
                }
                let membership = m.membership_config.membership();
                if membership.voter_ids().all(|v| v == self.id) {
                    return None;
                }
                // Writes accepted before the hand-off began are still being proposed; a
                // voter that matched the log before they were appended would be behind.
                if self.write_batch.is_idle() {
                    if let Some(found) = Self::caught_up_voter(&m, self.id) {
                        break found;
                    }
                }
            }
            if !wait_for_change(&mut metrics, deadline, HAND_OFF_POLL).await {
                return None;
            }
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        let ask = ForwardRequest::Campaign { leader: self.id };
        match self.peers.forward(&addr, &ask, remaining).await {
            Ok(ForwardReply::Campaigning(true)) => {}
            other => {
                tracing::warn!(target, reply = ?other, "leadership hand-off refused");
                return None;
            }
        }
        // Normally `target` wins; should the round fail, whoever the others elect will do.
        loop {
            if let Some(leader) = metrics
                .borrow_and_update()
                .current_leader
                .filter(|l| *l != self.id)
            {
                return Some(leader);
            }
            if !wait_for_change(&mut metrics, deadline, within).await {
                return None;
            }
        }
    }

    /// A voter other than `me` whose replicated log matches the leader's last entry, with
    /// its peer address.
    fn caught_up_voter(
        m: &openraft::RaftMetrics<NodeId, NodeAddr>,
        me: NodeId,
    ) -> Option<(NodeId, String)> {
        let membership = m.membership_config.membership();
        let progress = m.replication.as_ref()?;
        membership
            .voter_ids()
            .filter(|v| *v != me)
            .find(|v| progress.get(v).copied().flatten().map(|l| l.index) == m.last_log_index)
            .and_then(|v| membership.get_node(&v).map(|n| (v, n.peer_addr.clone())))
    }

    /// The leader as this node knows it.
    pub fn leader(&self) -> Option<(NodeId, Option<NodeAddr>)> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let leader = metrics.current_leader?;
        let node = metrics
            .membership_config
            .membership()
            .get_node(&leader)
            .cloned();
        Some((leader, node))
    }

    /// Runs `request` here if this node leads, else forwards it to the leader. Retries while
    /// there is no leader or the leader moves, until `request_timeout`.
    ///
    /// A write is retried only when the answer proves it was not proposed (not-leader), so a
    /// retry never applies a command twice; an ambiguous failure is returned as unavailable.
    async fn submit(&self, request: ForwardRequest) -> Result<ForwardReply, ConsensusError> {
        // Adding a learner waits for it to catch up, which can take a snapshot transfer.
        let timeout = match request {
            ForwardRequest::AddLearner { .. }
            | ForwardRequest::Promote(_)
            | ForwardRequest::Remove(_) => self.request_timeout.max(MEMBERSHIP_TIMEOUT),
            _ => self.request_timeout,
        };
        let deadline = Instant::now() + timeout;
        let is_write = matches!(request, ForwardRequest::Write(_));
        let mut last_error;
        loop {
            let attempt = match self.leader() {
                Some((leader, _)) if leader == self.id => match &request {
                    // The common case, without a copy of the command per attempt.
                    ForwardRequest::Write(command) => self.propose_write(command).await,
                    // Boxed like the forward below: membership changes make it large.
                    _ => Box::pin(self.execute_local(request.clone())).await,
                },
                Some((leader, Some(node))) => {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    // Boxed: the RPC's future is large, and inline it made every local write's
                    // future (moved whole into tonic's box) that much larger too.
                    let forward =
                        Box::pin(self.peers.forward(&node.peer_addr, &request, remaining));
                    match forward.await {
                        // Never connected: the write was not sent, so trying again is safe.
                        Err(ConsensusError::Unavailable(e))
                            if is_write && !e.contains("tcp connect error") =>
                        {
                            return Err(ConsensusError::Ambiguous(format!(
                                "leader {leader} did not answer; the write may or may not have been applied: {e}"
                            )))
                        }
                        other => other,
                    }
                }
                _ => Err(ConsensusError::Unavailable(
                    "no leader elected yet".to_string(),
                )),
            };
            match attempt {
                Ok(reply) => return Ok(reply),
                Err(
                    e @ (ConsensusError::Rejected(_)
                    | ConsensusError::ShuttingDown(_)
                    | ConsensusError::NotFound(_)),
                ) => return Err(e),
                Err(e) => last_error = e,
            }
            if Instant::now() >= deadline {
                return Err(match last_error {
                    ConsensusError::NotLeader { .. } => {
                        ConsensusError::Unavailable("leadership kept moving".to_string())
                    }
                    other => other,
                });
            }
            // Wait for a change of leader (or a short pause) before trying again.
            let mut metrics = self.raft.metrics();
            let _ = tokio::time::timeout(Duration::from_millis(50), metrics.changed()).await;
        }
    }

    /// Proposes a write on this node, which must be the leader, batched with concurrent ones.
    /// The command is encoded here, once: the entry carries the encoding to the log, to the
    /// followers and back to apply (see [`EncodedBatch`]).
    async fn propose_write(&self, command: &Command) -> Result<ForwardReply, ConsensusError> {
        if self.handing_off.load(Ordering::Relaxed) {
            // Not proposed, so the caller may safely retry it with the next leader.
            return Err(ConsensusError::NotLeader {
                leader_id: None,
                leader_addr: None,
            });
        }
        let encoded: bytes::Bytes = codec::encode(command).map_err(cannot_encode)?.into();
        let encoded_len = encoded.len();
        let raft = self.raft.clone();
        // Boxed: openraft's `client_write` future is a few kilobytes, and inline it made every
        // write's future (which tonic moves, and each layer moves again) that large: 4,352
        // bytes, copied several times per put.
        let propose = move |commands: Vec<bytes::Bytes>| {
            let raft = raft.clone();
            Box::pin(async move {
                let batch = EncodedBatch::join(&commands).map_err(cannot_encode)?;
                match raft.client_write(Proposal::encoded(batch)).await {
                    Ok(response) => Ok(response.data),
                    Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => not_leader(f),
                    Err(e) => Err(fatal(e)),
                }
            })
        };
        self.write_batch
            .write(encoded, encoded_len, propose)
            .await
            .map(|(revision, result)| ForwardReply::Written { revision, result })
    }

    /// Executes a request on this node, which must be the leader. Used for local requests and
    /// for requests forwarded by followers (which are never forwarded again, so a request
    /// cannot bounce between two nodes that disagree about who leads).
    pub async fn execute_local(
        &self,
        request: ForwardRequest,
    ) -> Result<ForwardReply, ConsensusError> {
        match request {
            ForwardRequest::Write(command) => self.propose_write(&command).await,
            // Answered by whichever node it is sent to (a follower, by design).
            ForwardRequest::ConfirmLeader(vote) => {
                Ok(ForwardReply::LeaderConfirmed(self.holds_vote(vote).await))
            }
            // Likewise. Only the leader this node follows may start an election here, so a
            // stray request cannot unseat a healthy leader.
            ForwardRequest::Campaign { leader } => {
                if self.leader().map(|(l, _)| l) != Some(leader) || leader == self.id {
                    return Ok(ForwardReply::Campaigning(false));
                }
                tracing::info!(
                    leader,
                    "the leader is stopping and asked this node to campaign"
                );
                self.raft.trigger().elect().await.map_err(fatal)?;
                Ok(ForwardReply::Campaigning(true))
            }
            ForwardRequest::ReadIndex => {
                if let Some(index) = self.leased_read_index() {
                    return Ok(ForwardReply::ReadIndex(index));
                }
                let confirm = || {
                    let this = self.clone();
                    move || {
                        let this = this.clone();
                        async move { this.confirm_read_index().await }
                    }
                };
                self.read_batch
                    .read_index(confirm)
                    .await
                    .map(ForwardReply::ReadIndex)
            }
            ForwardRequest::Heartbeat {
                namespace,
                service,
                id,
            } => {
                if self.leader().map(|(l, _)| l) != Some(self.id) {
                    return Err(ConsensusError::NotLeader {
                        leader_id: self.leader().map(|(l, _)| l),
                        leader_addr: self.leader().and_then(|(_, n)| n).map(|n| n.peer_addr),
                    });
                }
                let ttl = self.applied.read(|state, _| {
                    state
                        .endpoint(&namespace, &service, &id)
                        .map(|e| e.value.ttl)
                });
                match ttl {
                    None => Err(ConsensusError::NotFound(format!("endpoint {namespace}/{service}/{id}"))),
                    Some(None) => Err(ConsensusError::Rejected(format!(
                        "endpoint {namespace}/{service}/{id} has no ttl; register it with one to use heartbeats"
                    ))),
                    Some(Some(ttl)) => {
                        self.heartbeats.beat((namespace, service, id));
                        Ok(ForwardReply::HeartbeatAccepted { ttl_ms: ttl.as_millis() })
                    }
                }
            }
            ForwardRequest::AddLearner { id, node } => {
                let result = self.raft.add_learner(id, node, false).await;
                let reply = self.membership_result(result.map(|r| r.log_id.index))?;
                let ForwardReply::MembershipChanged { index } = reply else {
                    return Ok(reply);
                };
                self.wait_replicated(id, index).await?;
                Ok(reply)
            }
            ForwardRequest::Promote(id) => {
                let lag = {
                    let metrics = self.raft.metrics();
                    let m = metrics.borrow();
                    let matched = m
                        .replication
                        .as_ref()
                        .and_then(|r| r.get(&id).cloned().flatten())
                        .map(|l| l.index);
                    matched.map(|matched| m.last_log_index.unwrap_or(0).saturating_sub(matched))
                };
                if lag.is_none_or(|lag| lag > PROMOTE_MAX_LAG) {
                    return Err(ConsensusError::Rejected(format!(
                        "node {id} has not caught up with the leader ({}); is it running and reachable?",
                        lag.map_or("nothing replicated".to_string(), |lag| format!("{lag} entries behind"))
                    )));
                }
                let members = self.voters_and_learners();
                if !members.1.contains(&id) {
                    return Err(ConsensusError::Rejected(if members.0.contains(&id) {
                        format!("node {id} is already a voter")
                    } else {
                        format!("node {id} is not a learner; add it first")
                    }));
                }
                // A read lease is a quorum of one configuration.
                let _no_lease = self.read_lease.suspend();
                let result = self
                    .raft
                    .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                    .await;
                self.membership_result(result.map(|r| r.log_id.index))
            }
            ForwardRequest::Remove(id) => {
                let (voters, learners) = self.voters_and_learners();
                let change = if voters.contains(&id) {
                    if voters.len() == 1 {
                        return Err(ConsensusError::Rejected(format!(
                            "node {id} is the last voter; a cluster cannot remove its last voter"
                        )));
                    }
                    ChangeMembers::RemoveVoters(BTreeSet::from([id]))
                } else if learners.contains(&id) {
                    ChangeMembers::RemoveNodes(BTreeSet::from([id]))
                } else {
                    return Err(ConsensusError::Rejected(format!(
                        "node {id} is not a member"
                    )));
                };
                let _no_lease = self.read_lease.suspend();
                let result = self.raft.change_membership(change, false).await;
                self.membership_result(result.map(|r| r.log_id.index))
            }
        }
    }

    /// Waits until the leader has replicated at least `index` to `target` (a new learner has
    /// caught up, by log or by snapshot). openraft's own blocking `add_learner` returns early
    /// when the target is not reachable yet, which would let a caller promote a node that
    /// has nothing.
    async fn wait_replicated(&self, target: NodeId, index: u64) -> Result<(), ConsensusError> {
        let mut metrics = self.raft.metrics();
        let id = self.id;
        let caught_up = async move {
            let m = metrics.wait_for(|m| {
                m.current_leader != Some(self.id)
                    || m.replication
                        .as_ref()
                        .and_then(|r| r.get(&target))
                        .and_then(|matched| *matched)
                        .is_some_and(|matched| matched.index >= index)
            });
            m.await.map(|m| m.current_leader == Some(id))
        };
        match tokio::time::timeout(MEMBERSHIP_TIMEOUT, caught_up).await {
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) => Err(ConsensusError::Unavailable(format!(
                "lost leadership while node {target} was catching up; check `bowline cluster status`"
            ))),
            Ok(Err(_)) => Err(fatal("raft stopped")),
            Err(_) => Err(ConsensusError::Unavailable(format!(
                "node {target} was added as a learner but did not catch up within {MEMBERSHIP_TIMEOUT:?}; is it running and reachable?"
            ))),
        }
    }

    fn membership_result(
        &self,
        result: Result<u64, RaftError<NodeId, ClientWriteError<NodeId, NodeAddr>>>,
    ) -> Result<ForwardReply, ConsensusError> {
        match result {
            Ok(index) => Ok(ForwardReply::MembershipChanged { index }),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => not_leader(f),
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                Err(ConsensusError::Rejected(e.to_string()))
            }
            Err(e) => Err(fatal(e)),
        }
    }

    /// `(voters, learners)` of the current membership.
    pub fn voters_and_learners(&self) -> (BTreeSet<NodeId>, BTreeSet<NodeId>) {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let learners: BTreeSet<NodeId> = membership.learner_ids().collect();
        (voters, learners)
    }
}
