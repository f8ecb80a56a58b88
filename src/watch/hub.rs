//! `WatchHub`: the node's bounded history of recent change events and its live watchers.
//!
//! The state machine publishes each applied batch of changes while it still holds the state
//! write lock, so a reader that holds the state read lock sees the hub at exactly the state's
//! revision. Lock order: state lock, then `WatchHub::inner`, then a watcher's `queue`.
//! Publishing never waits: a watcher whose queue is full is cancelled, and its queue freed.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use tokio::sync::Notify;

use super::filter::{ObjectMeta, WatchFilter};
use super::wire::encode_event_chunk;
use crate::proto::v1 as pb;
use crate::store::StoredObject;
use crate::telemetry::Metrics;

/// Hub limits.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Most events kept in the history.
    pub history_events: usize,
    /// Most bytes of events kept in the history, as the memory they are estimated to hold.
    pub history_bytes: usize,
    /// Most revisions queued for one watcher before it is cancelled as too slow.
    pub watcher_queue: usize,
    /// Most concurrent watchers.
    pub max_watchers: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            history_events: 100_000,
            history_bytes: 64 << 20,
            watcher_queue: 1_024,
            max_watchers: 50_000,
        }
    }
}

/// One change event. It holds the object as the change left it (shared with the state,
/// not copied) and is encoded once, the first time a watcher needs it: a node no one
/// watches never pays for encoding, while its history still lets a watcher resume.
#[derive(Debug)]
pub struct PublishedEvent {
    object: StoredObject,
    kind: pb::EventType,
    revision: u64,
    /// Estimated memory held, for the history's byte bound.
    size: usize,
    meta: OnceLock<ObjectMeta>,
    chunk: OnceLock<Bytes>,
}

impl PublishedEvent {
    /// A `kind` event for `object` at `revision`.
    pub fn new(object: StoredObject, kind: pb::EventType, revision: u64) -> Self {
        Self {
            size: super::events::estimated_size(object.borrowed()),
            object,
            kind,
            revision,
            meta: OnceLock::new(),
            chunk: OnceLock::new(),
        }
    }

    /// What the filters look at.
    pub fn meta(&self) -> &ObjectMeta {
        self.meta
            .get_or_init(|| ObjectMeta::of(self.object.borrowed()))
    }

    /// The `WatchResponse.events` entry, shared by every receiver.
    pub fn chunk(&self) -> &Bytes {
        self.chunk.get_or_init(|| {
            encode_event_chunk(&super::events::event(
                self.object.borrowed(),
                self.kind,
                self.revision,
            ))
        })
    }
}

/// All events of one revision (one Raft entry), delivered together.
#[derive(Debug)]
pub struct RevisionBatch {
    /// The revision.
    pub revision: u64,
    /// Its events, in the order the command made them.
    pub events: Vec<PublishedEvent>,
    /// When this node published it (for `bowline_watch_send_lag_seconds`).
    pub published: std::time::Instant,
}

impl RevisionBatch {
    fn bytes(&self) -> usize {
        self.events.iter().map(|e| e.size).sum()
    }

    /// Whether any event of this revision passes `filter`.
    pub fn any_match(&self, filter: &WatchFilter) -> bool {
        self.events.iter().any(|e| filter.matches(e.meta()))
    }
}

/// Why a watcher was cancelled by the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelReason {
    /// Its queue filled up.
    SlowConsumer,
    /// A snapshot install replaced the state; the history no longer connects.
    HistoryReset,
    /// The node is shutting down.
    Shutdown,
}

impl CancelReason {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            CancelReason::SlowConsumer => "slow_consumer",
            CancelReason::HistoryReset => "history_reset",
            CancelReason::Shutdown => "shutdown",
        }
    }
}

/// State shared between the hub and one watch stream.
#[derive(Debug)]
pub struct WatcherShared {
    /// What the watcher selects.
    pub filter: WatchFilter,
    /// Revisions waiting to be sent; bounded by `HubConfig::watcher_queue`.
    pub queue: Mutex<VecDeque<Arc<RevisionBatch>>>,
    /// Set once, when the hub gives up on the watcher.
    pub cancelled: Mutex<Option<CancelReason>>,
    /// Wakes the stream when the queue or `cancelled` changes (a watcher on its own stream).
    pub notify: Notify,
    /// A watcher of a group (`WatchMany`): the group and its slot there.
    pub group: Option<(Arc<WatchGroup>, usize)>,
    /// Whether the slot is already on the group's ready list.
    pub listed: std::sync::atomic::AtomicBool,
}

impl WatcherShared {
    /// Tells whoever serves this watcher that its queue or `cancelled` changed.
    pub fn signal(&self) {
        match &self.group {
            None => self.notify.notify_one(),
            Some((group, slot)) => {
                if !self.listed.swap(true, std::sync::atomic::Ordering::AcqRel) {
                    group
                        .ready
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(*slot);
                    group.notify.notify_one();
                }
            }
        }
    }
}

/// Watchers served by one stream (`WatchMany`): publishing wakes the stream once and lists
/// which of its watchers have something, instead of waking a task per watcher.
#[derive(Debug, Default)]
pub struct WatchGroup {
    /// Slots whose watcher was signalled since the stream last looked.
    ready: Mutex<Vec<usize>>,
    /// Wakes the stream.
    pub notify: Notify,
}

impl WatchGroup {
    /// Takes the slots signalled so far. Each watcher's `listed` flag must be cleared (with
    /// [`WatchGroup::unlist`]) before its queue is read, so a later publish lists it again.
    pub fn take_ready(&self, into: &mut Vec<usize>) {
        std::mem::swap(
            &mut *self.ready.lock().unwrap_or_else(|e| e.into_inner()),
            into,
        );
    }

    /// Clears a watcher's listed flag before its queue is read.
    pub fn unlist(shared: &WatcherShared) {
        shared
            .listed
            .store(false, std::sync::atomic::Ordering::Release);
    }
}

/// Why a watch could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    /// The start revision is older than the history.
    #[error("revision {requested} has been compacted; the oldest revision this node can replay is {oldest}")]
    Compacted {
        /// What was asked for.
        requested: u64,
        /// The oldest start revision that would work.
        oldest: u64,
    },
    /// Too many watchers on this node.
    #[error("this node already serves {0} watchers")]
    TooManyWatchers(usize),
    /// The node is shutting down.
    #[error("node is shutting down; watch another node")]
    ShuttingDown,
}

/// A registered watcher: its shared state and the history to replay before live events.
pub struct Subscription {
    /// Registration id (for unsubscribe).
    pub id: u64,
    /// Shared with the hub.
    pub shared: Arc<WatcherShared>,
    /// History batches at or after the start revision, to send before the queue.
    pub replay: VecDeque<Arc<RevisionBatch>>,
    /// The hub's revision when the watcher was registered.
    pub revision: u64,
}

#[derive(Default)]
struct HubInner {
    /// Revision of the last published batch (the store revision).
    revision: u64,
    /// Events at or below this revision may be missing from the history.
    compacted: u64,
    /// Recent batches, oldest first.
    history: VecDeque<Arc<RevisionBatch>>,
    /// Events in `history`.
    history_events: usize,
    /// Bytes in `history`.
    history_bytes: usize,
    /// Live watchers by id.
    watchers: HashMap<u64, Arc<WatcherShared>>,
    /// Next watcher id.
    next_id: u64,
}

/// The hub. Shared as `Arc<WatchHub>`.
pub struct WatchHub {
    /// Limits.
    config: HubConfig,
    /// History and watchers; see the module doc for lock order.
    inner: Mutex<HubInner>,
    /// Watch metrics.
    metrics: Metrics,
    /// Becomes true at shutdown, so streams that outlive their watches (`WatchMany`) end too.
    closed: tokio::sync::watch::Sender<bool>,
}

impl WatchHub {
    /// A hub whose state starts at `revision`, with no history before it (history does not
    /// survive a restart).
    pub fn new(config: HubConfig, revision: u64, metrics: Metrics) -> Self {
        metrics.watch_history_oldest.set((revision + 1) as i64);
        Self {
            config,
            inner: Mutex::new(HubInner {
                revision,
                compacted: revision,
                ..HubInner::default()
            }),
            metrics,
            closed: tokio::sync::watch::Sender::new(false),
        }
    }

    /// Watchers registered now.
    pub fn watcher_count(&self) -> usize {
        self.lock().watchers.len()
    }

    /// Becomes true when the node shuts down its watches.
    pub fn closed(&self) -> tokio::sync::watch::Receiver<bool> {
        self.closed.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HubInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The revision the hub has published up to.
    pub fn revision(&self) -> u64 {
        self.lock().revision
    }

    /// Publishes the events of one revision. Never blocks on a watcher.
    pub fn publish(&self, revision: u64, events: Vec<PublishedEvent>) {
        let batch = Arc::new(RevisionBatch {
            revision,
            events,
            published: std::time::Instant::now(),
        });
        let mut inner = self.lock();
        inner.revision = revision;
        let mut cancelled = Vec::new();
        for (id, watcher) in &inner.watchers {
            if !batch.any_match(&watcher.filter) {
                continue;
            }
            let mut queue = watcher.queue.lock().unwrap_or_else(|e| e.into_inner());
            if queue.len() >= self.config.watcher_queue {
                // Free the backlog now rather than when the client finally disconnects.
                queue.clear();
                drop(queue);
                *watcher.cancelled.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(CancelReason::SlowConsumer);
                cancelled.push(*id);
            } else {
                queue.push_back(batch.clone());
                drop(queue);
            }
            watcher.signal();
        }
        for id in cancelled {
            inner.watchers.remove(&id);
            self.metrics
                .watch_cancellations
                .with_label_values(&[CancelReason::SlowConsumer.as_str()])
                .inc();
        }
        inner.history_events += batch.events.len();
        inner.history_bytes += batch.bytes();
        inner.history.push_back(batch);
        while inner.history_events > self.config.history_events
            || inner.history_bytes > self.config.history_bytes
        {
            let Some(oldest) = inner.history.pop_front() else {
                break;
            };
            inner.history_events -= oldest.events.len();
            inner.history_bytes -= oldest.bytes();
            inner.compacted = oldest.revision;
        }
        self.record(&inner);
    }

    fn record(&self, inner: &HubInner) {
        self.metrics.watch_active.set(inner.watchers.len() as i64);
        self.metrics
            .watch_history_events
            .set(inner.history_events as i64);
        self.metrics
            .watch_history_bytes
            .set(inner.history_bytes as i64);
        self.metrics
            .watch_history_oldest
            .set((inner.compacted + 1) as i64);
    }

    /// Registers a watcher for events with revision >= `start` (or, with `None`, after the
    /// current revision: the caller lists the state at [`Subscription::revision`] first and
    /// must hold the state read lock while calling this).
    pub fn subscribe(
        &self,
        filter: WatchFilter,
        start: Option<u64>,
    ) -> Result<Subscription, SubscribeError> {
        self.subscribe_in(filter, start, None)
    }

    /// [`WatchHub::subscribe`] for a watcher of a group, signalled through the group's slot.
    pub fn subscribe_in(
        &self,
        filter: WatchFilter,
        start: Option<u64>,
        group: Option<(Arc<WatchGroup>, usize)>,
    ) -> Result<Subscription, SubscribeError> {
        let mut inner = self.lock();
        if *self.closed.borrow() {
            return Err(SubscribeError::ShuttingDown);
        }
        if inner.watchers.len() >= self.config.max_watchers {
            return Err(SubscribeError::TooManyWatchers(inner.watchers.len()));
        }
        let replay = match start {
            Some(start) if start <= inner.compacted => {
                return Err(SubscribeError::Compacted {
                    requested: start,
                    oldest: inner.compacted + 1,
                })
            }
            Some(start) => inner
                .history
                .iter()
                .filter(|b| b.revision >= start)
                .cloned()
                .collect(),
            None => VecDeque::new(),
        };
        let shared = Arc::new(WatcherShared {
            filter,
            queue: Mutex::new(VecDeque::new()),
            cancelled: Mutex::new(None),
            notify: Notify::new(),
            group,
            listed: std::sync::atomic::AtomicBool::new(false),
        });
        let id = inner.next_id;
        inner.next_id += 1;
        inner.watchers.insert(id, shared.clone());
        self.record(&inner);
        Ok(Subscription {
            id,
            shared,
            replay,
            revision: inner.revision,
        })
    }

    /// Removes a watcher (its stream ended).
    pub fn unsubscribe(&self, id: u64) {
        let mut inner = self.lock();
        inner.watchers.remove(&id);
        self.record(&inner);
    }

    /// If the watcher is still registered and has nothing queued, the revision it has
    /// implicitly reached. A cancelled watcher's queue was emptied by the cancellation, not
    /// by delivery, so it has reached nothing.
    pub fn idle_revision(&self, id: u64, shared: &WatcherShared) -> Option<u64> {
        let inner = self.lock();
        if !inner.watchers.contains_key(&id) {
            return None;
        }
        let queue = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
        queue.is_empty().then_some(inner.revision)
    }

    fn cancel_all(&self, inner: &mut HubInner, reason: CancelReason) {
        for (_, watcher) in inner.watchers.drain() {
            watcher
                .queue
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
            *watcher.cancelled.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
            watcher.signal();
            self.metrics
                .watch_cancellations
                .with_label_values(&[reason.as_str()])
                .inc();
        }
    }

    /// The state was replaced by a snapshot at `revision`: drop the history and cancel every
    /// watcher, since events between their position and `revision` cannot be produced.
    pub fn reset(&self, revision: u64) {
        let mut inner = self.lock();
        inner.history.clear();
        inner.history_events = 0;
        inner.history_bytes = 0;
        inner.revision = revision;
        inner.compacted = revision;
        self.cancel_all(&mut inner, CancelReason::HistoryReset);
        self.record(&inner);
    }

    /// Ends every watch (node shutdown), so their streams close and the server can drain.
    pub fn shutdown(&self) {
        let mut inner = self.lock();
        self.closed.send_replace(true);
        self.cancel_all(&mut inner, CancelReason::Shutdown);
        self.record(&inner);
    }
}

/// A service change event on `service`, for tests.
#[cfg(test)]
pub(crate) fn test_event(service: &str) -> PublishedEvent {
    let value = crate::model::Service {
        name: service.into(),
        namespace: "default".into(),
        ports: Vec::new(),
        labels: Default::default(),
        metadata: Default::default(),
        depends_on: Vec::new(),
    };
    let stored = crate::store::Stored {
        value: Arc::new(value),
        create_revision: 1,
        mod_revision: 1,
    };
    PublishedEvent::new(StoredObject::Service(stored), pb::EventType::Put, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(service: &str) -> PublishedEvent {
        test_event(service)
    }

    fn hub(config: HubConfig) -> WatchHub {
        WatchHub::new(config, 0, Metrics::new(1).unwrap())
    }

    #[test]
    fn an_event_is_encoded_only_once_a_watcher_takes_it_and_then_only_once() {
        let hub = hub(HubConfig::default());
        hub.publish(1, vec![event("web")]);
        assert!(
            hub.lock().history[0].events[0].chunk.get().is_none(),
            "encoded with no watcher"
        );
        let sub = hub.subscribe(WatchFilter::default(), Some(1)).unwrap();
        let taken = &sub.replay[0].events[0];
        let (first, again) = (taken.chunk().clone(), taken.chunk().clone());
        assert_eq!(first.as_ptr(), again.as_ptr(), "encoded twice");
        // The chunk is one `WatchResponse.events` entry: the event for the object.
        let decoded = <pb::WatchResponse as prost::Message>::decode(first).unwrap();
        assert_eq!(decoded.events.len(), 1);
        let service = match &decoded.events[0].object {
            Some(pb::event::Object::Service(s)) => s.name.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(service, "web");
        assert_eq!(decoded.events[0].revision, 1);
        assert_eq!(taken.meta().service, "web");
    }

    #[test]
    fn replay_starts_at_the_requested_revision() {
        let hub = hub(HubConfig::default());
        for r in 1..=5 {
            hub.publish(r, vec![event("web")]);
        }
        let sub = hub.subscribe(WatchFilter::default(), Some(3)).unwrap();
        let revisions: Vec<u64> = sub.replay.iter().map(|b| b.revision).collect();
        assert_eq!(revisions, vec![3, 4, 5]);
        hub.publish(6, vec![event("web")]);
        assert_eq!(sub.shared.queue.lock().unwrap().len(), 1);
    }

    #[test]
    fn the_byte_bound_counts_what_each_event_holds_and_keeps_the_newest() {
        let small = test_event("web");
        let one = small.size;
        // The object, its encoding and its filter facts, each string with its overhead.
        assert!(one >= 512 + 4 * "web".len(), "{one}");
        let mut big = crate::model::Service::clone(match &small.object {
            StoredObject::Service(s) => &s.value,
            _ => unreachable!(),
        });
        big.metadata.insert("v".into(), "x".repeat(4096));
        let big = PublishedEvent::new(
            StoredObject::Service(crate::store::Stored {
                value: Arc::new(big),
                create_revision: 1,
                mod_revision: 1,
            }),
            pb::EventType::Put,
            1,
        );
        assert!(big.size >= one + 2 * 4096, "a large value counts twice");

        let hub = hub(HubConfig {
            history_bytes: 3 * one,
            ..HubConfig::default()
        });
        for r in 1..=10 {
            hub.publish(r, vec![event("web")]);
        }
        let kept: Vec<u64> = hub.lock().history.iter().map(|b| b.revision).collect();
        assert_eq!(kept, vec![8, 9, 10]);
    }

    #[test]
    fn a_start_before_the_history_is_out_of_range_with_the_oldest_revision() {
        let hub = hub(HubConfig {
            history_events: 3,
            ..HubConfig::default()
        });
        for r in 1..=10 {
            hub.publish(r, vec![event("web")]);
        }
        assert_eq!(
            hub.subscribe(WatchFilter::default(), Some(7)).err(),
            Some(SubscribeError::Compacted {
                requested: 7,
                oldest: 8
            })
        );
        assert!(hub.subscribe(WatchFilter::default(), Some(8)).is_ok());
    }

    #[test]
    fn a_full_queue_cancels_only_that_watcher_and_frees_its_backlog() {
        let hub = hub(HubConfig {
            watcher_queue: 4,
            ..HubConfig::default()
        });
        let slow = hub.subscribe(WatchFilter::default(), None).unwrap();
        let fast = hub.subscribe(WatchFilter::default(), None).unwrap();
        for r in 1..=5 {
            hub.publish(r, vec![event("web")]);
            fast.shared.queue.lock().unwrap().clear();
        }
        assert_eq!(
            *slow.shared.cancelled.lock().unwrap(),
            Some(CancelReason::SlowConsumer)
        );
        assert!(slow.shared.queue.lock().unwrap().is_empty());
        assert_eq!(*fast.shared.cancelled.lock().unwrap(), None);
        hub.publish(6, vec![event("web")]);
        assert_eq!(fast.shared.queue.lock().unwrap().len(), 1);
    }

    #[test]
    fn non_matching_events_are_not_queued() {
        let hub = hub(HubConfig::default());
        let filter = WatchFilter {
            service: "db".into(),
            ..WatchFilter::default()
        };
        let sub = hub.subscribe(filter, None).unwrap();
        hub.publish(1, vec![event("web")]);
        assert!(sub.shared.queue.lock().unwrap().is_empty());
        assert_eq!(hub.idle_revision(sub.id, &sub.shared), Some(1));
    }

    #[test]
    fn reset_cancels_every_watcher_and_compacts_the_history() {
        let hub = hub(HubConfig::default());
        hub.publish(1, vec![event("web")]);
        let sub = hub.subscribe(WatchFilter::default(), Some(1)).unwrap();
        hub.reset(100);
        assert_eq!(
            *sub.shared.cancelled.lock().unwrap(),
            Some(CancelReason::HistoryReset)
        );
        assert!(matches!(
            hub.subscribe(WatchFilter::default(), Some(50)),
            Err(SubscribeError::Compacted { oldest: 101, .. })
        ));
    }
}
