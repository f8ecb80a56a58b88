//! Prompt elections after a leader dies, when the first candidate cannot win.
//!
//! openraft 0.9 has no pre-vote, and a follower that rejects a candidate for its shorter log
//! keeps its own term. After a leader crash the follower whose timer fires first campaigns
//! (term T+1); if the dead leader's last entries reached only the *other* follower, that
//! follower rejects it, then campaigns in T+1 itself when its own timer fires and is
//! rejected in turn (the first candidate already voted for itself in T+1). Only a third round
//! at T+2 elects someone: failover took 1.2–2 s instead of 0.7 s in one round of four
//! (docs/benchmarks.md).
//!
//! The fix is local to the follower with the longer log: when it rejects a candidate for its
//! log, and it has not heard from a leader for an election timeout itself, it campaigns at
//! once in a term above the candidate's. Elections never risk safety in Raft, only liveness,
//! and the quiet-leader check keeps a live leader from being disturbed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::raft::{VoteRequest, VoteResponse};

use super::NodeId;

/// Most elections one rejected candidate may prompt (a guard against a runaway term).
const MAX_ELECTIONS: u64 = 3;

/// When this node last heard from a leader (append-entries or snapshot), shared between the
/// peer service's handlers. Created at start-up.
#[derive(Debug, Clone)]
pub struct LeaderContact {
    origin: Instant,
    /// Milliseconds since `origin` of the last contact, plus one (0: never).
    last_ms: Arc<AtomicU64>,
}

impl Default for LeaderContact {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl LeaderContact {
    /// Records contact now.
    pub fn touch(&self) {
        let ms = self.origin.elapsed().as_millis() as u64 + 1;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// Time since the last contact, or since this process started if there was none: a
    /// node that just restarted may have promised a leader, before it crashed, to refuse
    /// other candidates for a while (a read lease relies on that; see `read_lease.rs`).
    pub fn silent_for(&self) -> Duration {
        match self.last_ms.load(Ordering::Relaxed) {
            0 => self.origin.elapsed(),
            ms => self
                .origin
                .elapsed()
                .saturating_sub(Duration::from_millis(ms - 1)),
        }
    }
}

/// How many elections this node should start right after answering `request` with
/// `response` (0: none). Each election moves the term up by one; the count brings this
/// node's term above the candidate's so that the candidate, which has voted for itself in
/// its own term, can still vote for us.
pub fn elections_after_rejection(
    request: &VoteRequest<NodeId>,
    response: &VoteResponse<NodeId>,
    silent_for: Duration,
    quiet: Duration,
) -> u64 {
    if response.vote_granted {
        return 0;
    }
    // Only when the rejection is ours to fix: this node has more log than the candidate.
    if response.last_log_id <= request.last_log_id {
        return 0;
    }
    // The leader must look gone from here too; otherwise its heartbeats will settle things.
    if silent_for < quiet {
        return 0;
    }
    let candidate_term = request.vote.leader_id().term;
    let my_term = response.vote.leader_id().term;
    if candidate_term < my_term {
        return 0;
    }
    (candidate_term - my_term + 1).min(MAX_ELECTIONS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, LogId, Vote};

    fn log_id(term: u64, index: u64) -> Option<LogId<NodeId>> {
        Some(LogId::new(CommittedLeaderId::new(term, 1), index))
    }

    fn request(term: u64, candidate: NodeId, last: Option<LogId<NodeId>>) -> VoteRequest<NodeId> {
        VoteRequest::new(Vote::new(term, candidate), last)
    }

    fn rejection(my_term: u64, last: Option<LogId<NodeId>>) -> VoteResponse<NodeId> {
        VoteResponse::new(Vote::new_committed(my_term, 1), last, false)
    }

    const QUIET: Duration = Duration::from_millis(250);

    #[test]
    fn a_node_with_more_log_and_no_leader_campaigns_above_the_candidates_term() {
        let n = elections_after_rejection(
            &request(4, 2, log_id(3, 10)),
            &rejection(3, log_id(3, 12)),
            Duration::from_millis(700),
            QUIET,
        );
        // Term 3 → 4 (the candidate's, lost) → 5 (above it).
        assert_eq!(n, 2);
    }

    #[test]
    fn a_node_that_still_hears_its_leader_does_not_campaign() {
        let n = elections_after_rejection(
            &request(4, 2, log_id(3, 10)),
            &rejection(3, log_id(3, 12)),
            Duration::from_millis(40),
            QUIET,
        );
        assert_eq!(n, 0);
    }

    #[test]
    fn a_rejection_for_any_reason_but_the_log_prompts_nothing() {
        // Same log: the candidate lost for its term or our lease, not for its log.
        let n = elections_after_rejection(
            &request(4, 2, log_id(3, 12)),
            &rejection(3, log_id(3, 12)),
            Duration::MAX,
            QUIET,
        );
        assert_eq!(n, 0);
        // A granted vote prompts nothing either.
        let granted = VoteResponse::new(Vote::new(4, 2), log_id(3, 9), true);
        let n = elections_after_rejection(
            &request(4, 2, log_id(3, 10)),
            &granted,
            Duration::MAX,
            QUIET,
        );
        assert_eq!(n, 0);
    }

    #[test]
    fn a_stale_candidate_prompts_nothing_and_a_runaway_term_is_capped() {
        let stale = elections_after_rejection(
            &request(2, 2, log_id(1, 3)),
            &rejection(3, log_id(3, 12)),
            Duration::MAX,
            QUIET,
        );
        assert_eq!(stale, 0);
        let runaway = elections_after_rejection(
            &request(40, 2, log_id(3, 10)),
            &rejection(3, log_id(3, 12)),
            Duration::MAX,
            QUIET,
        );
        assert_eq!(runaway, MAX_ELECTIONS);
    }

    #[test]
    fn leader_contact_reports_silence_since_the_last_touch() {
        let contact = LeaderContact::default();
        assert!(
            contact.silent_for() < Duration::from_secs(5),
            "counted from start-up before any contact"
        );
        contact.touch();
        assert!(contact.silent_for() < Duration::from_secs(5));
    }
}
