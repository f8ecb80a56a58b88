//! The leader's read lease: linearizable reads without a confirmation round while no other
//! node can have been elected.
//!
//! Why it is safe. A lease begins at `start`, taken just *before* openraft's own
//! leadership round (`get_read_log_id`) sends heartbeats. Every follower that acknowledges
//! one received it after `start`, and openraft 0.9 then makes it
//! - refuse votes to other candidates for the leader lease (`election_timeout_max`) after
//!   that heartbeat (and after its own start-up, should it restart), and
//! - wait at least that lease plus an election timeout before campaigning by its timer,
//!
//! while Bowline's prompt campaign (`campaign.rs`) waits `election_timeout_min` of silence
//! from the leader, counted from start-up too. The leader itself refuses votes while it may
//! hold a lease ([`ReadLease::admit_vote`]), which openraft does not do for a leader. So
//! until `start + min(those)` a new leader would need a vote from a majority that includes
//! the leader or an acknowledging follower, and none of them gives one: no other leader can
//! commit a write, and this leader's applied state holds every acknowledged write. The
//! lease lasts `election_timeout_min / 2` from `start`, so clocks may run apart by up to a
//! factor of two over it before the argument fails; a monotonic clock measures it.
//!
//! What ends a lease early: a vote granted by this node, a membership change or a
//! leadership hand-off ([`ReadLease::suspend`]), a change of term.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A lease acquisition in progress: what [`ReadLease::begin`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseAttempt {
    start: Instant,
    votes_granted: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Lease {
    until: Instant,
    term: u64,
    /// The read index the round that took the lease returned: every entry committed before
    /// this leader's term is at or below it.
    floor: u64,
}

#[derive(Debug, Default)]
struct LeaseState {
    /// Vote requests handed to Raft and not answered yet.
    votes_in_flight: u32,
    /// Votes Raft granted so far; a lease begun before a grant is void.
    votes_granted: u64,
    /// Until then this node refuses votes: it may be serving reads on a lease.
    hold_votes_until: Option<Instant>,
    lease: Option<Lease>,
    /// Running membership changes and hand-offs: no lease while any runs.
    suspended: u32,
    /// Whether a renewal is running.
    renewing: bool,
}

/// Shared by the read path and the peer service's vote handler. Cheap to clone. A disabled
/// lease never holds and never admits a read.
#[derive(Debug, Clone)]
pub struct ReadLease {
    state: Arc<Mutex<LeaseState>>,
    duration: Duration,
    enabled: bool,
}

impl ReadLease {
    /// A lease of `duration` from the start of each acquisition (half the shortest election
    /// timeout; see the module docs), or one that never holds.
    pub fn new(duration: Duration, enabled: bool) -> Self {
        Self {
            state: Arc::default(),
            duration,
            enabled,
        }
    }

    /// A lease that never holds (for tools and tests that do not serve reads).
    pub fn disabled() -> Self {
        Self::new(Duration::ZERO, false)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LeaseState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Called just before a leadership round that may take a lease: from now on this node
    /// refuses votes for one lease duration. `None` (no lease this round) while a vote is
    /// being decided (Raft may grant it after the round's heartbeats left) or leases are
    /// suspended.
    pub fn begin(&self, now: Instant) -> Option<LeaseAttempt> {
        if !self.enabled {
            return None;
        }
        let mut state = self.lock();
        if state.suspended > 0 || state.votes_in_flight > 0 {
            return None;
        }
        let hold = now + self.duration;
        state.hold_votes_until = Some(state.hold_votes_until.map_or(hold, |h| h.max(hold)));
        Some(LeaseAttempt {
            start: now,
            votes_granted: state.votes_granted,
        })
    }

    /// The round begun with `attempt` confirmed this node's leadership in `term`, with read
    /// index `floor`: reads may use the lease until one duration after the round began,
    /// unless a vote was granted or leases were suspended meanwhile.
    pub fn complete(&self, attempt: LeaseAttempt, term: u64, floor: u64) {
        let mut state = self.lock();
        if state.suspended > 0 || state.votes_granted != attempt.votes_granted {
            return;
        }
        let until = attempt.start + self.duration;
        if state
            .lease
            .is_some_and(|l| l.term == term && l.until >= until)
        {
            return;
        }
        state.lease = Some(Lease { until, term, floor });
    }

    /// A renewal round ended, whether or not it renewed the lease.
    pub fn renewal_done(&self) {
        self.lock().renewing = false;
    }

    /// The read index floor, if a lease for `term` holds at `now`. `renew` is set when the
    /// caller should start a renewal round (less than half the lease left and none running);
    /// it is then counted as running until [`Self::renewal_done`].
    pub fn current(&self, now: Instant, term: u64) -> Option<LeasedRead> {
        if !self.enabled {
            return None;
        }
        let mut state = self.lock();
        let lease = state.lease.filter(|l| l.term == term && l.until > now)?;
        let renew = !state.renewing && lease.until - now < self.duration / 2;
        if renew {
            state.renewing = true;
        }
        Some(LeasedRead {
            floor: lease.floor,
            renew,
        })
    }

    /// A vote request arrived: `None` means refuse it without asking Raft (this node may
    /// hold a lease). Otherwise pass it to Raft and report the answer on the returned
    /// admission; an admission dropped unanswered counts as a granted vote.
    pub fn admit_vote(&self, now: Instant) -> Option<AdmittedVote> {
        let mut state = self.lock();
        if state.hold_votes_until.is_some_and(|h| h > now) {
            return None;
        }
        state.votes_in_flight += 1;
        Some(AdmittedVote {
            state: self.state.clone(),
            answered: false,
        })
    }

    /// Ends the lease and stops taking new ones, and stops refusing votes, until the guard
    /// drops: for membership changes (a lease is a quorum of one configuration) and
    /// leadership hand-offs (the successor needs this node's vote).
    pub fn suspend(&self) -> LeaseSuspension {
        let mut state = self.lock();
        state.suspended += 1;
        state.lease = None;
        state.hold_votes_until = None;
        LeaseSuspension {
            state: self.state.clone(),
        }
    }
}

/// A vote request on its way through Raft.
#[derive(Debug)]
pub struct AdmittedVote {
    state: Arc<Mutex<LeaseState>>,
    answered: bool,
}

impl AdmittedVote {
    /// Raft answered: `granted` tells whether it gave its vote.
    pub fn answered(mut self, granted: bool) {
        self.finish(granted);
    }

    fn finish(&mut self, granted: bool) {
        if std::mem::replace(&mut self.answered, true) {
            return;
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.votes_in_flight = state.votes_in_flight.saturating_sub(1);
        if granted {
            state.votes_granted += 1;
            state.lease = None;
        }
    }
}

impl Drop for AdmittedVote {
    fn drop(&mut self) {
        // Cancelled after Raft may have seen the request: assume the worst.
        self.finish(true);
    }
}

/// What a leased read may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeasedRead {
    /// Serve at this index or later.
    pub floor: u64,
    /// Start a renewal round now.
    pub renew: bool,
}

/// Leases are suspended until this drops.
#[derive(Debug)]
pub struct LeaseSuspension {
    state: Arc<Mutex<LeaseState>>,
}

impl Drop for LeaseSuspension {
    fn drop(&mut self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.suspended = state.suspended.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_millis(100);

    fn lease() -> ReadLease {
        ReadLease::new(LEASE, true)
    }

    /// A lease taken in term 3 by a round begun at the returned instant, with floor 10.
    fn held_lease() -> (ReadLease, Instant) {
        let lease = lease();
        let t0 = Instant::now();
        let attempt = lease.begin(t0).expect("nothing blocks a first round");
        lease.complete(attempt, 3, 10);
        (lease, t0)
    }

    #[test]
    fn a_completed_round_grants_reads_until_one_duration_after_it_began() {
        let lease = lease();
        let t0 = Instant::now();
        let attempt = lease.begin(t0).unwrap();
        assert_eq!(lease.current(t0, 3), None, "no lease before the round ends");
        lease.complete(attempt, 3, 40);
        let read = lease.current(t0 + Duration::from_millis(10), 3).unwrap();
        assert_eq!(read.floor, 40);
        assert!(!read.renew, "plenty of lease left");
        assert_eq!(lease.current(t0 + LEASE, 3), None, "expired");
        assert_eq!(
            lease.current(t0 + Duration::from_millis(10), 4),
            None,
            "another term"
        );
    }

    #[test]
    fn the_node_refuses_votes_from_the_start_of_a_round_for_one_duration() {
        let lease = lease();
        let t0 = Instant::now();
        lease.admit_vote(t0).expect("no round yet").answered(false);
        let _attempt = lease.begin(t0).unwrap();
        assert!(lease.admit_vote(t0 + Duration::from_millis(99)).is_none());
        assert!(lease.admit_vote(t0 + LEASE).is_some());
    }

    #[test]
    fn no_lease_is_taken_while_a_vote_is_being_decided() {
        let lease = lease();
        let t0 = Instant::now();
        let vote = lease.admit_vote(t0).unwrap();
        assert_eq!(lease.begin(t0), None, "Raft may still grant the vote");
        vote.answered(false);
        assert!(lease.begin(t0).is_some());
    }

    #[test]
    fn a_vote_granted_during_the_round_voids_it_and_ends_a_lease() {
        let (lease, t0) = held_lease();
        assert!(lease.current(t0, 3).is_some());
        // The hold has passed; a vote goes through and is granted.
        let later = t0 + LEASE;
        let second = lease.begin(later).unwrap();
        let after_hold = later + LEASE;
        lease.admit_vote(after_hold).unwrap().answered(true);
        assert_eq!(lease.current(after_hold, 3), None);
        lease.complete(second, 3, 12);
        assert_eq!(
            lease.current(later + Duration::from_millis(1), 3),
            None,
            "the round began before the grant"
        );
    }

    #[test]
    fn a_suspension_ends_the_lease_lifts_the_hold_and_blocks_new_leases_until_dropped() {
        let (lease, t0) = held_lease();
        let suspension = lease.suspend();
        assert_eq!(lease.current(t0, 3), None);
        lease
            .admit_vote(t0)
            .expect("a successor may win this node's vote")
            .answered(false);
        assert_eq!(lease.begin(t0), None);
        drop(suspension);
        let attempt = lease.begin(t0).unwrap();
        lease.complete(attempt, 3, 11);
        assert_eq!(lease.current(t0, 3).map(|r| r.floor), Some(11));
    }

    #[test]
    fn a_round_that_completes_during_a_suspension_takes_no_lease() {
        let lease = lease();
        let t0 = Instant::now();
        let attempt = lease.begin(t0).unwrap();
        let suspension = lease.suspend();
        lease.complete(attempt, 3, 10);
        drop(suspension);
        assert_eq!(lease.current(t0, 3), None);
    }

    #[test]
    fn one_renewal_is_asked_for_once_half_the_lease_is_gone() {
        let (lease, t0) = held_lease();
        let late = t0 + Duration::from_millis(60);
        assert!(lease.current(late, 3).unwrap().renew);
        assert!(
            !lease.current(late, 3).unwrap().renew,
            "one renewal at a time"
        );
        lease.renewal_done();
        assert!(lease.current(late, 3).unwrap().renew, "asked again");
        let renewal = lease.begin(late).unwrap();
        lease.complete(renewal, 3, 20);
        lease.renewal_done();
        let read = lease.current(t0 + Duration::from_millis(70), 3).unwrap();
        assert_eq!(read.floor, 20);
        assert!(!read.renew, "the renewed lease has plenty left");
    }

    #[test]
    fn a_vote_dropped_before_its_answer_counts_as_granted() {
        let (lease, t0) = held_lease();
        let later = t0 + LEASE;
        let vote = lease.admit_vote(later).unwrap();
        drop(vote);
        assert!(lease.begin(later).is_some(), "no vote in flight any more");
        let renewal = lease.begin(later).unwrap();
        lease.complete(renewal, 3, 11);
        assert!(lease.current(later, 3).is_some());
        let t1 = later + LEASE * 2;
        let stale = lease.begin(t1).unwrap();
        drop(lease.admit_vote(t1 + LEASE).unwrap());
        lease.complete(stale, 3, 12);
        assert_eq!(
            lease.current(t1 + Duration::from_millis(1), 3),
            None,
            "the dropped vote may have been granted"
        );
    }

    #[test]
    fn a_disabled_lease_never_holds_votes_or_admits_reads() {
        let lease = ReadLease::new(LEASE, false);
        let t0 = Instant::now();
        assert_eq!(lease.begin(t0), None);
        assert!(lease.admit_vote(t0).is_some());
        assert_eq!(lease.current(t0, 1), None);
    }
}
