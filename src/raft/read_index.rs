//! Read-index batching: one leadership confirmation answers every linearizable read that
//! arrived before it began.
//!
//! A read index is valid for a read if the leader confirmed its leadership (a heartbeat
//! round acknowledged by a quorum) *after* the read arrived. So while one confirmation is in
//! flight, newly arriving reads wait for the next one instead of starting their own; at most
//! two confirmations are ever outstanding per burst, and a node under 64 concurrent readers
//! does one heartbeat round per batch rather than one per read.

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::network::ConsensusError;

type Waiter = oneshot::Sender<Result<u64, ConsensusError>>;

/// After this long, a confirmation still in flight no longer holds back the next batch (it
/// still answers its own reads when it ends). Longer than a healthy heartbeat round by far,
/// shorter than an election.
const STALLED_AFTER: std::time::Duration = std::time::Duration::from_millis(200);

#[derive(Default)]
struct Queue {
    /// Reads waiting for a confirmation that has not started yet.
    waiting: Vec<Waiter>,
    /// Whether a driver task is running confirmations.
    driving: bool,
}

/// Coalesces concurrent read-index requests. Cheap to clone.
#[derive(Clone, Default)]
pub struct ReadIndexBatcher {
    queue: Arc<Mutex<Queue>>,
    /// Where the number of reads sharing each confirmation is recorded, if anywhere.
    batch_sizes: Option<prometheus::Histogram>,
}

impl ReadIndexBatcher {
    /// A batcher that records how many reads share each confirmation in `batch_sizes`.
    pub fn with_batch_sizes(batch_sizes: prometheus::Histogram) -> Self {
        Self {
            queue: Arc::default(),
            batch_sizes: Some(batch_sizes),
        }
    }

    /// Returns a read index confirmed after this call began. The `confirm` that
    /// `make_confirm` builds performs one confirmation; only a caller that finds no driver
    /// running builds it (most callers never pay for what it captures), and it is then
    /// called on a task of its own until no read is waiting.
    pub async fn read_index<M, F, Fut>(&self, make_confirm: M) -> Result<u64, ConsensusError>
    where
        M: FnOnce() -> F,
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Result<u64, ConsensusError>> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let start_driver = {
            let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            queue.waiting.push(tx);
            !std::mem::replace(&mut queue.driving, true)
        };
        if start_driver {
            let confirm = make_confirm();
            let queue = self.queue.clone();
            let batch_sizes = self.batch_sizes.clone();
            tokio::spawn(async move {
                loop {
                    // Reads already runnable join this batch first: a yielded task runs again
                    // only after the runtime's other ready tasks and a poll of its I/O
                    // driver. Each confirmation costs ~100 µs of CPU over the two nodes; at 64
                    // concurrent reads on a follower this took batches from ~14 reads to ~22.
                    tokio::task::yield_now().await;
                    let batch = {
                        let mut queue = queue.lock().unwrap_or_else(|e| e.into_inner());
                        if queue.waiting.is_empty() {
                            queue.driving = false;
                            return;
                        }
                        std::mem::take(&mut queue.waiting)
                    };
                    if let Some(sizes) = &batch_sizes {
                        sizes.observe(batch.len() as f64);
                    }
                    // Everyone in `batch` arrived before this confirmation starts.
                    let confirmation = confirm();
                    let (done_tx, done_rx) = oneshot::channel::<()>();
                    tokio::spawn(async move {
                        let result = confirmation.await;
                        for waiter in batch {
                            let _ = waiter.send(result.clone());
                        }
                        let _ = done_tx.send(());
                    });
                    // Normally the next batch waits for this one. But a confirmation can hang
                    // until the request timeout (a forward to a leader that was just paused or
                    // cut off), and reads arriving meanwhile, which a newly elected leader could
                    // answer at once, must not queue behind it.
                    let _ = tokio::time::timeout(STALLED_AFTER, done_rx).await;
                }
            });
        }
        rx.await.unwrap_or_else(|_| {
            Err(ConsensusError::ShuttingDown(
                "read-index confirmation was dropped".to_string(),
            ))
        })
    }
}

/// How long a follower that failed to confirm leadership is left out of the shortcut.
const SUSPECT_FOR: std::time::Duration = std::time::Duration::from_secs(2);

/// Picks the followers a leader asks to confirm its leadership for a read index: as few as
/// make a majority with the leader itself (one of the two followers of a three-node
/// cluster), where openraft's own round asks every follower and waits for the same majority.
/// The pick rotates so the work is shared, and skips followers that recently failed.
#[derive(Debug, Default)]
pub struct ConfirmationPicker {
    turn: usize,
    /// Followers that failed to confirm, until when they are left out.
    suspects: Vec<(super::NodeId, std::time::Instant)>,
}

impl ConfirmationPicker {
    /// The followers to ask, or `None` when too few healthy followers are left (the caller
    /// then uses openraft's round). `voters` is a single (not joint) configuration.
    pub fn pick(
        &mut self,
        voters: &[super::NodeId],
        leader: super::NodeId,
        now: std::time::Instant,
    ) -> Option<Vec<super::NodeId>> {
        if !voters.contains(&leader) {
            return None;
        }
        let needed = voters.len() / 2;
        self.suspects.retain(|(_, until)| *until > now);
        let healthy: Vec<super::NodeId> = voters
            .iter()
            .copied()
            .filter(|v| *v != leader && !self.suspects.iter().any(|(s, _)| s == v))
            .collect();
        if healthy.len() < needed {
            return None;
        }
        self.turn = self.turn.wrapping_add(1);
        Some(
            (0..needed)
                .map(|k| healthy[(self.turn + k) % healthy.len()])
                .collect(),
        )
    }

    /// Leaves `follower` out for a while: it did not confirm (down, slow, or following
    /// another leader).
    pub fn suspect(&mut self, follower: super::NodeId, now: std::time::Instant) {
        self.suspects.retain(|(s, _)| *s != follower);
        self.suspects.push((follower, now + SUSPECT_FOR));
    }
}

/// Leadership this node held when it stopped, which openraft restores at start-up.
///
/// A leader restarted "without losing leadership" (say every node crashed and came back
/// before anyone campaigned) keeps its term, and openraft then takes the first entry of
/// that term as the read index floor, together with the commit index the node had saved,
/// which is written without fsync and may lag. Entries after both may have been committed
/// and acknowledged before the crash; a read must not be served before they are applied
/// again. Found by `bowline jepsen --nemesis crash-all`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestoredLeadership {
    /// The term this node led in when it stopped.
    pub term: u64,
    /// The last entry in its log then: every acknowledged write is at or below it.
    pub last_log_index: u64,
}

impl RestoredLeadership {
    /// From the vote and the last log index persisted at start-up: `Some` when this node
    /// was the committed leader of its term.
    pub fn detect(
        id: super::NodeId,
        vote: Option<&openraft::Vote<super::NodeId>>,
        last_log_index: Option<u64>,
    ) -> Option<Self> {
        let vote = vote?;
        (vote.is_committed() && vote.leader_id().voted_for() == Some(id)).then(|| Self {
            term: vote.leader_id().get_term(),
            last_log_index: last_log_index.unwrap_or(0),
        })
    }

    /// The read index for a confirmation that returned `index` while the term was
    /// `term_before` when it began and `term_after` when it ended: raised to the restored
    /// log's end while this node still leads the restored term. A later term has its own
    /// blank entry after everything committed before, so openraft's index is enough there.
    pub fn floor(&self, index: u64, term_before: u64, term_after: u64) -> u64 {
        if term_before == self.term || term_after == self.term {
            index.max(self.last_log_index)
        } else {
            index
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vote(term: u64, node: u64, committed: bool) -> openraft::Vote<u64> {
        if committed {
            openraft::Vote::new_committed(term, node)
        } else {
            openraft::Vote::new(term, node)
        }
    }

    #[test]
    fn only_a_committed_vote_for_this_node_is_a_restored_leadership() {
        let led = RestoredLeadership::detect(1, Some(&vote(4, 1, true)), Some(90));
        assert_eq!(
            led,
            Some(RestoredLeadership {
                term: 4,
                last_log_index: 90
            })
        );
        assert_eq!(
            RestoredLeadership::detect(1, Some(&vote(4, 2, true)), Some(90)),
            None
        );
        assert_eq!(
            RestoredLeadership::detect(1, Some(&vote(4, 1, false)), Some(90)),
            None,
            "a candidate's vote for itself is not leadership"
        );
        assert_eq!(RestoredLeadership::detect(1, None, None), None);
    }

    #[test]
    fn the_pick_completes_a_majority_with_the_leader_and_rotates() {
        let mut picker = ConfirmationPicker::default();
        let now = std::time::Instant::now();
        let first = picker.pick(&[1, 2, 3], 1, now).unwrap();
        let second = picker.pick(&[1, 2, 3], 1, now).unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(second.len(), 1);
        assert_ne!(first, second, "the two followers take turns");
        assert!(!first.contains(&1) && !second.contains(&1));
        let five = picker.pick(&[1, 2, 3, 4, 5], 3, now).unwrap();
        assert_eq!(
            five.len(),
            2,
            "two followers and the leader make three of five"
        );
        assert!(!five.contains(&3));
        assert_eq!(
            picker.pick(&[1], 1, now),
            Some(vec![]),
            "a lone voter is a majority"
        );
        assert_eq!(
            picker.pick(&[2, 3], 1, now),
            None,
            "a leader that is not a voter"
        );
    }

    #[test]
    fn a_suspect_follower_is_skipped_until_its_time_is_up() {
        let mut picker = ConfirmationPicker::default();
        let now = std::time::Instant::now();
        picker.suspect(2, now);
        for _ in 0..4 {
            assert_eq!(picker.pick(&[1, 2, 3], 1, now), Some(vec![3]));
        }
        picker.suspect(3, now);
        assert_eq!(
            picker.pick(&[1, 2, 3], 1, now),
            None,
            "no healthy follower left"
        );
        let later = now + SUSPECT_FOR + std::time::Duration::from_millis(1);
        assert!(picker.pick(&[1, 2, 3], 1, later).is_some());
    }

    #[test]
    fn the_floor_holds_in_the_restored_term_only() {
        let restored = RestoredLeadership {
            term: 4,
            last_log_index: 90,
        };
        assert_eq!(restored.floor(70, 4, 4), 90, "stale commit index raised");
        assert_eq!(restored.floor(95, 4, 4), 95, "never lowered");
        assert_eq!(restored.floor(70, 4, 5), 90, "term moved during the check");
        assert_eq!(
            restored.floor(70, 5, 5),
            70,
            "a later term has its own blank entry"
        );
    }
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_reads_share_confirmations_and_each_gets_one_that_began_after_it() {
        let sizes = prometheus::Histogram::with_opts(prometheus::HistogramOpts::new("s", "s"))
            .expect("histogram");
        let batcher = ReadIndexBatcher::with_batch_sizes(sizes.clone());
        let confirmations = Arc::new(AtomicU64::new(0));
        let confirm = {
            let confirmations = confirmations.clone();
            move || {
                let confirmations = confirmations.clone();
                async move {
                    // The "index" is the confirmation's sequence number, taken when it begins.
                    let n = confirmations.fetch_add(1, Ordering::SeqCst) + 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Ok(n)
                }
            }
        };
        let mut reads = Vec::new();
        for _ in 0..50 {
            let (batcher, confirm, confirmations) =
                (batcher.clone(), confirm.clone(), confirmations.clone());
            reads.push(tokio::spawn(async move {
                let begun_before = confirmations.load(Ordering::SeqCst);
                let index = batcher.read_index(|| confirm).await.unwrap();
                (begun_before, index)
            }));
        }
        for read in reads {
            let (begun_before, index) = read.await.unwrap();
            assert!(
                index > begun_before,
                "a read was answered by a confirmation that began before it"
            );
        }
        let used = confirmations.load(Ordering::SeqCst);
        assert!(used <= 3, "50 concurrent reads took {used} confirmations");
        assert_eq!(sizes.get_sample_count(), used, "one size per confirmation");
        assert_eq!(sizes.get_sample_sum(), 50.0, "every read counted once");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_confirmation_does_not_hold_back_later_reads() {
        let batcher = ReadIndexBatcher::default();
        let calls = Arc::new(AtomicU64::new(0));
        let confirm = {
            let calls = calls.clone();
            move || {
                let calls = calls.clone();
                async move {
                    // The first confirmation hangs (an unreachable leader); later ones answer.
                    if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        Err(ConsensusError::Unavailable("timed out".into()))
                    } else {
                        Ok(7)
                    }
                }
            }
        };
        let stuck = {
            let (batcher, confirm) = (batcher.clone(), confirm.clone());
            tokio::spawn(async move { batcher.read_index(|| confirm).await })
        };
        // Let the first confirmation start, then read again.
        tokio::time::sleep(Duration::from_millis(10)).await;
        let started = tokio::time::Instant::now();
        let later = batcher.read_index(|| confirm).await;
        assert_eq!(later, Ok(7));
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "a later read waited {:?} behind a stalled confirmation",
            started.elapsed()
        );
        assert!(
            !stuck.is_finished(),
            "the stalled read is still waiting for its own answer"
        );
        assert!(stuck.await.unwrap().is_err());
    }

    #[tokio::test]
    async fn an_error_reaches_every_read_of_the_batch() {
        let batcher = ReadIndexBatcher::default();
        let result = batcher
            .read_index(|| || async { Err(ConsensusError::Unavailable("no quorum".into())) })
            .await;
        assert_eq!(result, Err(ConsensusError::Unavailable("no quorum".into())));
    }
}
