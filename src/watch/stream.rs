//! One watch stream: the initial listing (if any), then history replay, then live events
//! from the watcher's queue, with progress notices when idle. Several queued revisions are
//! coalesced into one response; a revision is never split across responses.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tokio::time::Instant;
use tonic::Status;

use super::hub::{CancelReason, Subscription, WatchHub};
use super::wire::EncodedWatchResponse;
use crate::proto::v1::ResponseHeader;
use crate::telemetry::Metrics;

/// Metadata key with the revision a cancelled watch should resume from.
pub const RESUME_REVISION_KEY: &str = "bowline-resume-revision";
/// Metadata key with the oldest revision a watch can start from.
pub const OLDEST_REVISION_KEY: &str = "bowline-oldest-revision";

/// Most revisions coalesced into one response.
const MAX_REVISIONS_PER_RESPONSE: usize = 256;
/// Most event bytes in one response (a single large revision may exceed it).
const MAX_BYTES_PER_RESPONSE: usize = 1 << 20;

/// Builds the response header for a revision (node id, leader, term are the node's).
pub type HeaderFn = Arc<dyn Fn(u64) -> Option<ResponseHeader> + Send + Sync>;

/// A status with a revision in its metadata.
pub fn status_with_revision(
    code: tonic::Code,
    message: String,
    key: &'static str,
    revision: u64,
) -> Status {
    let mut status = Status::new(code, message);
    if let Ok(value) = revision.to_string().parse() {
        status.metadata_mut().insert(key, value);
    }
    status
}

/// The stream's state.
struct WatchState {
    hub: Arc<WatchHub>,
    sub: Subscription,
    /// Initial listing responses still to send.
    initial: VecDeque<EncodedWatchResponse>,
    /// Highest revision fully delivered (events, listing or progress).
    position: u64,
    progress_interval: Duration,
    /// When the next progress notice is due; moved forward whenever events are sent.
    next_progress: Instant,
    /// One timer for the stream's life, re-armed lazily: creating a timer per wake-up
    /// showed up in profiles with thousands of watchers.
    progress_timer: std::pin::Pin<Box<tokio::time::Sleep>>,
    header: HeaderFn,
    metrics: Metrics,
    done: bool,
}

impl Drop for WatchState {
    fn drop(&mut self) {
        self.hub.unsubscribe(self.sub.id);
    }
}

/// The status a watch ends with when the hub cancels it at `position`.
pub fn cancelled_status(reason: CancelReason, position: u64) -> Status {
    let resume = position + 1;
    match reason {
        CancelReason::SlowConsumer => status_with_revision(
            tonic::Code::ResourceExhausted,
            format!("watcher fell behind (its queue of revisions is full); resume from revision {resume}"),
            RESUME_REVISION_KEY,
            resume,
        ),
        CancelReason::HistoryReset => status_with_revision(
            tonic::Code::Aborted,
            format!(
                "this node replaced its state with a snapshot; resume from revision {resume} on another node, or list again"
            ),
            RESUME_REVISION_KEY,
            resume,
        ),
        CancelReason::Shutdown => status_with_revision(
            tonic::Code::Unavailable,
            format!("node is shutting down; resume from revision {resume} on another node"),
            RESUME_REVISION_KEY,
            resume,
        ),
    }
}

/// What a watcher has queued, as at most one response.
pub enum Drained {
    /// A response with events; `more` when limits left revisions queued.
    Events {
        /// The response.
        response: EncodedWatchResponse,
        /// Whether revisions are still queued.
        more: bool,
    },
    /// Nothing queued (revisions without a matching event only advanced `position`).
    Empty,
}

/// Takes the watcher's replay and queued revisions after `position` into one response,
/// coalescing up to the per-response limits; advances `position` past what it took.
pub fn drain_events(
    sub: &mut Subscription,
    position: &mut u64,
    header: &HeaderFn,
    metrics: &Metrics,
) -> Drained {
    loop {
        let mut events = Vec::new();
        let mut bytes = 0;
        let mut last_revision = None;
        let mut more = false;
        // Publication time of the oldest live (not replayed) revision in this response.
        let mut oldest_live = None;
        for taken in 0..=MAX_REVISIONS_PER_RESPONSE {
            if bytes >= MAX_BYTES_PER_RESPONSE || taken == MAX_REVISIONS_PER_RESPONSE {
                more = true;
                break;
            }
            let (batch, live) = match sub.replay.pop_front() {
                Some(batch) => (batch, false),
                None => match sub
                    .shared
                    .queue
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .pop_front()
                {
                    Some(batch) => (batch, true),
                    None => break,
                },
            };
            if batch.revision <= *position {
                continue;
            }
            for event in &batch.events {
                if sub.shared.filter.matches(event.meta()) {
                    let chunk = event.chunk();
                    bytes += chunk.len();
                    events.push(chunk.clone());
                    if live {
                        oldest_live.get_or_insert(batch.published);
                    }
                }
            }
            last_revision = Some(batch.revision);
        }
        let Some(revision) = last_revision else {
            return Drained::Empty;
        };
        *position = revision;
        if events.is_empty() {
            continue;
        }
        metrics.watch_events_sent.inc_by(events.len() as u64);
        if let Some(published) = oldest_live {
            metrics
                .watch_send_lag
                .observe(published.elapsed().as_secs_f64());
        }
        return Drained::Events {
            response: EncodedWatchResponse {
                header: header(revision),
                events,
                ..EncodedWatchResponse::default()
            },
            more,
        };
    }
}

impl WatchState {
    async fn next(&mut self) -> Option<Result<EncodedWatchResponse, Status>> {
        if self.done {
            return None;
        }
        if let Some(response) = self.initial.pop_front() {
            return Some(Ok(response));
        }
        loop {
            if let Drained::Events { response, .. } = drain_events(
                &mut self.sub,
                &mut self.position,
                &self.header,
                &self.metrics,
            ) {
                self.next_progress = Instant::now() + self.progress_interval;
                return Some(Ok(response));
            }
            let cancelled = *self
                .sub
                .shared
                .cancelled
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(reason) = cancelled {
                self.done = true;
                return Some(Err(cancelled_status(reason, self.position)));
            }
            tokio::select! {
                _ = self.sub.shared.notify.notified() => {}
                _ = self.progress_timer.as_mut() => {
                    if Instant::now() < self.next_progress {
                        // Events went out since the timer was armed: not idle yet.
                        let due = self.next_progress;
                        self.progress_timer.as_mut().reset(due);
                        continue;
                    }
                    self.next_progress = Instant::now() + self.progress_interval;
                    let due = self.next_progress;
                    self.progress_timer.as_mut().reset(due);
                    if let Some(revision) = self.hub.idle_revision(self.sub.id, &self.sub.shared) {
                        self.position = self.position.max(revision);
                        self.metrics.watch_progress_notices.inc();
                        return Some(Ok(EncodedWatchResponse {
                            header: (self.header)(self.position),
                            progress: true,
                            ..EncodedWatchResponse::default()
                        }));
                    }
                }
            }
        }
    }
}

/// The response stream of one watch. `position` is the highest revision the client has
/// (start - 1, or the listing revision); `initial` holds the listing responses, if any.
pub fn watch_stream(
    hub: Arc<WatchHub>,
    sub: Subscription,
    initial: Vec<EncodedWatchResponse>,
    position: u64,
    progress_interval: Duration,
    header: HeaderFn,
    metrics: Metrics,
) -> impl Stream<Item = Result<EncodedWatchResponse, Status>> + Send + 'static {
    let state = WatchState {
        hub,
        sub,
        initial: initial.into(),
        position,
        progress_interval,
        next_progress: Instant::now() + progress_interval,
        progress_timer: Box::pin(tokio::time::sleep(progress_interval)),
        header,
        metrics,
        done: false,
    };
    futures::stream::unfold(state, |mut state| async move {
        let item = state.next().await?;
        Some((item, state))
    })
}
