//! Proposal batching: concurrent writes on the leader share one Raft entry.
//!
//! openraft 0.9's core appends each proposal as its own entry and waits for that append's
//! fsync before it takes the next one, so one entry per write capped puts at one fsync (plus
//! the core's own work) per write: about 2,500 a second here at any concurrency. Packing the
//! writes that queued meanwhile into one entry pays that cost once per batch. Each command
//! still gets its own revision and result; apply runs them in order, as if proposed one by
//! one.
//!
//! At most [`MAX_IN_FLIGHT`] batches are proposed at once; while they are, new writes queue
//! and leave together in the next one. A lone write finds a free slot and is proposed at once,
//! so batching adds no latency at low load.

use std::sync::{Arc, Mutex};

use tokio::sync::{oneshot, Semaphore};

use super::network::ConsensusError;
use crate::command::{Command, CommandResult};

/// Batches proposed but not yet answered. More than one lets the next batch append while
/// the previous one replicates. Chosen while the leader still synced each entry inside
/// openraft's core: more than two then only queued entries there, each carrying fewer
/// writes, and two against four was faster at concurrency 16 in all four alternating pairs
/// (5,421-6,366 against 5,211-5,554 ops/s), 64 and 256 within the noise; eight was slower
/// everywhere. Since the leader's sync moved to its own thread, one, two and four measured
/// within the noise of each other (two rounds).
pub const MAX_IN_FLIGHT: usize = 2;
/// Most commands in one entry.
pub const MAX_BATCH_COMMANDS: usize = 512;
/// Most encoded command bytes in one entry (a larger command still goes, alone), so an entry
/// stays far below the peer message limit.
pub const MAX_BATCH_BYTES: usize = 1 << 20;

/// What a write gets back: the revision it was applied at, and its result.
pub type WriteOutcome = Result<(u64, CommandResult), ConsensusError>;
type Waiter = oneshot::Sender<WriteOutcome>;

struct Queue<T> {
    /// Writes waiting for a batch, with their encoded size.
    waiting: Vec<(T, usize, Waiter)>,
    /// Whether a driver task is forming batches.
    driving: bool,
}

impl<T> Default for Queue<T> {
    fn default() -> Self {
        Self {
            waiting: Vec::new(),
            driving: false,
        }
    }
}

impl<T> Queue<T> {
    /// Takes the oldest writes that fit in one batch.
    fn take_batch(&mut self) -> Vec<(T, usize, Waiter)> {
        let mut bytes = 0;
        let mut count = 0;
        for (_, size, _) in &self.waiting {
            if count == MAX_BATCH_COMMANDS || (count > 0 && bytes + size > MAX_BATCH_BYTES) {
                break;
            }
            bytes += size;
            count += 1;
        }
        self.waiting.drain(..count).collect()
    }
}

/// Gives each writer of a batch its result (in order), or every writer the batch's error;
/// a batch that answered some other number of writes fails them all as ambiguous.
fn answer(waiters: Vec<Waiter>, outcome: Result<Vec<(u64, CommandResult)>, ConsensusError>) {
    let count = waiters.len();
    let e = match outcome {
        Ok(results) if results.len() == count => {
            for (waiter, result) in waiters.into_iter().zip(results) {
                let _ = waiter.send(Ok(result));
            }
            return;
        }
        Ok(results) => ConsensusError::Ambiguous(format!(
            "a batch of {count} writes returned {} results",
            results.len()
        )),
        Err(e) => e,
    };
    for waiter in waiters {
        let _ = waiter.send(Err(e.clone()));
    }
}

/// Coalesces concurrent writes (commands, as `T`: the leader passes them encoded) into
/// batches. Cheap to clone.
pub struct ProposalBatcher<T = Command> {
    queue: Arc<Mutex<Queue<T>>>,
    in_flight: Arc<Semaphore>,
    /// Where each batch's size is recorded, if anywhere.
    batch_sizes: Option<prometheus::Histogram>,
}

impl<T> Clone for ProposalBatcher<T> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
            in_flight: self.in_flight.clone(),
            batch_sizes: self.batch_sizes.clone(),
        }
    }
}

impl<T> Default for ProposalBatcher<T> {
    fn default() -> Self {
        Self {
            queue: Arc::default(),
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            batch_sizes: None,
        }
    }
}

impl<T: Send + 'static> ProposalBatcher<T> {
    /// A batcher that records the number of commands of each batch in `batch_sizes`.
    pub fn with_batch_sizes(batch_sizes: prometheus::Histogram) -> Self {
        Self {
            batch_sizes: Some(batch_sizes),
            ..Self::default()
        }
    }

    /// Whether no write is queued or being proposed.
    pub fn is_idle(&self) -> bool {
        let queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        queue.waiting.is_empty()
            && !queue.driving
            && self.in_flight.available_permits() == MAX_IN_FLIGHT
    }

    /// Queues `command` (of `encoded_len` bytes) and waits for its outcome. `propose` proposes
    /// one batch and returns a result per command, in order; it is called by a driver task
    /// that whichever caller finds none running starts, until no write is waiting.
    ///
    /// A write that finds nothing queued and a batch slot free is proposed alone by its own
    /// caller: at low load the two task hand-offs of the driver path were most of what
    /// batching added to a write's latency.
    pub async fn write<F, Fut>(&self, command: T, encoded_len: usize, propose: F) -> WriteOutcome
    where
        F: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Vec<(u64, CommandResult)>, ConsensusError>>
            + Send
            + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let (start_driver, alone) = {
            let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            // Under the queue's lock, so a driver cannot take the slot in between and find
            // nothing to send. The semaphore's waiters (a driver) come first.
            let alone = queue
                .waiting
                .is_empty()
                .then(|| self.in_flight.clone().try_acquire_owned().ok())
                .flatten();
            match alone {
                Some(permit) => (false, Some((permit, command, tx))),
                None => {
                    queue.waiting.push((command, encoded_len, tx));
                    (!std::mem::replace(&mut queue.driving, true), None)
                }
            }
        };
        if let Some((permit, command, tx)) = alone {
            if let Some(sizes) = &self.batch_sizes {
                sizes.observe(1.0);
            }
            let outcome = propose(vec![command]).await;
            drop(permit);
            answer(vec![tx], outcome);
        }
        if start_driver {
            let queue = self.queue.clone();
            let in_flight = self.in_flight.clone();
            let propose = Arc::new(propose);
            let batch_sizes = self.batch_sizes.clone();
            tokio::spawn(async move {
                loop {
                    // The semaphore is never closed.
                    let Ok(permit) = in_flight.clone().acquire_owned().await else {
                        return;
                    };
                    let batch = {
                        let mut queue = queue.lock().unwrap_or_else(|e| e.into_inner());
                        if queue.waiting.is_empty() {
                            queue.driving = false;
                            return;
                        }
                        queue.take_batch()
                    };
                    if let Some(sizes) = &batch_sizes {
                        sizes.observe(batch.len() as f64);
                    }
                    let propose = propose.clone();
                    tokio::spawn(async move {
                        let (commands, waiters): (Vec<T>, Vec<Waiter>) =
                            batch.into_iter().map(|(c, _, w)| (c, w)).unzip();
                        let outcome = propose(commands).await;
                        drop(permit);
                        answer(waiters, outcome);
                    });
                }
            });
        }
        rx.await.unwrap_or_else(|_| {
            Err(ConsensusError::ShuttingDown(
                "the write batcher stopped".to_string(),
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn command(i: usize) -> Command {
        Command::ClaimProber { term: i as u64 }
    }

    #[tokio::test]
    async fn every_write_gets_its_own_result_in_order() {
        let batcher = ProposalBatcher::default();
        let mut tasks = Vec::new();
        for i in 0..200 {
            let batcher = batcher.clone();
            tasks.push(tokio::spawn(async move {
                batcher
                    .write(command(i), 10, |commands: Vec<Command>| async move {
                        tokio::task::yield_now().await;
                        Ok(commands
                            .iter()
                            .map(|c| match c {
                                Command::ClaimProber { term } => {
                                    (*term, Ok(crate::command::Applied::Nothing))
                                }
                                _ => (0, Ok(crate::command::Applied::Nothing)),
                            })
                            .collect())
                    })
                    .await
            }));
        }
        for (i, task) in tasks.into_iter().enumerate() {
            let (revision, result) = task.await.expect("task").expect("write");
            assert_eq!(revision, i as u64, "write {i} got another write's outcome");
            assert!(result.is_ok());
        }
    }

    #[tokio::test]
    async fn concurrent_writes_share_batches_and_respect_the_limits() {
        let sizes = prometheus::Histogram::with_opts(prometheus::HistogramOpts::new("s", "s"))
            .expect("histogram");
        let batcher = ProposalBatcher::with_batch_sizes(sizes.clone());
        let proposals = Arc::new(AtomicUsize::new(0));
        let largest = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for i in 0..2_000 {
            let batcher = batcher.clone();
            let proposals = proposals.clone();
            let largest = largest.clone();
            tasks.push(tokio::spawn(async move {
                batcher
                    .write(command(i), 100, move |commands: Vec<Command>| {
                        proposals.fetch_add(1, Ordering::SeqCst);
                        largest.fetch_max(commands.len(), Ordering::SeqCst);
                        async move {
                            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                            Ok(commands
                                .iter()
                                .map(|_| (1, Ok(crate::command::Applied::Nothing)))
                                .collect())
                        }
                    })
                    .await
            }));
        }
        for task in tasks {
            let (_, result) = task.await.expect("task").expect("write");
            assert!(result.is_ok());
        }
        let proposals = proposals.load(Ordering::SeqCst);
        assert!(proposals < 2_000, "{proposals} proposals for 2,000 writes");
        assert_eq!(
            sizes.get_sample_count(),
            proposals as u64,
            "one size per batch"
        );
        assert_eq!(sizes.get_sample_sum(), 2_000.0, "every write counted once");
        assert!(largest.load(Ordering::SeqCst) <= MAX_BATCH_COMMANDS);
    }

    #[tokio::test]
    async fn the_batcher_is_idle_only_when_no_write_is_queued_or_proposed() {
        let batcher = ProposalBatcher::default();
        assert!(batcher.is_idle());
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let released = Arc::new(tokio::sync::Mutex::new(Some(released)));
        let write = {
            let batcher = batcher.clone();
            tokio::spawn(async move {
                batcher
                    .write(command(1), 10, move |commands: Vec<Command>| {
                        let released = released.clone();
                        async move {
                            if let Some(rx) = released.lock().await.take() {
                                let _ = rx.await;
                            }
                            Ok(commands
                                .iter()
                                .map(|_| (1, Ok(crate::command::Applied::Nothing)))
                                .collect())
                        }
                    })
                    .await
            })
        };
        let busy = async {
            while batcher.is_idle() {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), busy)
            .await
            .expect("a queued write makes the batcher busy");
        let _ = release.send(());
        assert!(write.await.expect("task").is_ok());
        // The driver and the proposal release their hold right after answering.
        let idle = async {
            while !batcher.is_idle() {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), idle)
            .await
            .expect("the batcher becomes idle again");
    }

    #[tokio::test]
    async fn a_lone_write_is_proposed_by_its_own_task_and_a_queued_one_by_the_driver() {
        /// Writes `i` and reports which task proposed it; returns the writer's task.
        fn write_reporting_proposer(
            batcher: &ProposalBatcher,
            i: usize,
        ) -> (
            tokio::task::JoinHandle<tokio::task::Id>,
            oneshot::Receiver<Option<tokio::task::Id>>,
        ) {
            let (tx, rx) = oneshot::channel();
            let tx = Mutex::new(Some(tx));
            let batcher = batcher.clone();
            let writer = tokio::spawn(async move {
                let outcome = batcher
                    .write(command(i), 10, move |commands: Vec<Command>| {
                        let tx = tx.lock().unwrap().take();
                        async move {
                            if let Some(tx) = tx {
                                let _ = tx.send(tokio::task::try_id());
                            }
                            Ok(commands
                                .iter()
                                .map(|_| (1, Ok(crate::command::Applied::Nothing)))
                                .collect())
                        }
                    })
                    .await;
                assert!(outcome.is_ok());
                tokio::task::id()
            });
            (writer, rx)
        }

        let batcher = ProposalBatcher::default();
        let (writer, proposer) = write_reporting_proposer(&batcher, 1);
        let proposer = proposer.await.expect("proposed").expect("inside a task");
        assert_eq!(
            writer.await.expect("task"),
            proposer,
            "a lone write waits for no driver"
        );

        // With every slot taken, a write queues and the driver proposes it.
        let slots: Vec<_> = (0..MAX_IN_FLIGHT)
            .map(|_| {
                batcher
                    .in_flight
                    .clone()
                    .try_acquire_owned()
                    .expect("free slot")
            })
            .collect();
        let (writer, proposer) = write_reporting_proposer(&batcher, 2);
        let queued = async {
            while batcher.queue.lock().unwrap().waiting.is_empty() {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), queued)
            .await
            .expect("the write queues while no slot is free");
        drop(slots);
        let proposer = proposer.await.expect("proposed").expect("inside a task");
        assert_ne!(
            writer.await.expect("task"),
            proposer,
            "a queued write is proposed by the driver"
        );
    }

    #[tokio::test]
    async fn a_failed_batch_fails_each_of_its_writes() {
        let batcher = ProposalBatcher::default();
        let outcome = batcher
            .write(command(1), 10, |_commands: Vec<Command>| async {
                Err(ConsensusError::NotLeader {
                    leader_id: Some(2),
                    leader_addr: None,
                })
            })
            .await;
        assert!(matches!(outcome, Err(ConsensusError::NotLeader { .. })));
    }

    #[test]
    fn take_batch_bounds_bytes_but_always_takes_one() {
        let mut queue = Queue::default();
        for size in [MAX_BATCH_BYTES + 5, 10, MAX_BATCH_BYTES - 15, 10, 10] {
            let (tx, _rx) = oneshot::channel();
            queue.waiting.push((command(0), size, tx));
        }
        assert_eq!(queue.take_batch().len(), 1, "an oversized write goes alone");
        assert_eq!(
            queue.take_batch().len(),
            2,
            "10 + (MAX - 15) fits, 10 more does not"
        );
        assert_eq!(queue.take_batch().len(), 2);
        assert!(queue.take_batch().is_empty());
    }
}
