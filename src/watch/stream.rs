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

impl WatchState {
    fn cancelled_status(&self, reason: CancelReason) -> Status {
        let resume = self.position + 1;
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

    async fn next(&mut self) -> Option<Result<EncodedWatchResponse, Status>> {
        if self.done {
            return None;
        }
        if let Some(response) = self.initial.pop_front() {
            return Some(Ok(response));
        }
        loop {
            let mut events = Vec::new();
            let mut bytes = 0;
            let mut last_revision = None;
            // Publication time of the oldest live (not replayed) revision in this response.
            let mut oldest_live = None;
            for _ in 0..MAX_REVISIONS_PER_RESPONSE {
                if bytes >= MAX_BYTES_PER_RESPONSE {
                    break;
                }
                let (batch, live) = match self.sub.replay.pop_front() {
                    Some(batch) => (batch, false),
                    None => match self
                        .sub
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
                if batch.revision <= self.position {
                    continue;
                }
                for event in &batch.events {
                    if self.sub.shared.filter.matches(&event.meta) {
                        bytes += event.chunk.len();
                        events.push(event.chunk.clone());
                        if live {
                            oldest_live.get_or_insert(batch.published);
                        }
                    }
                }
                last_revision = Some(batch.revision);
            }
            if let Some(revision) = last_revision {
                self.position = revision;
                if !events.is_empty() {
                    self.metrics.watch_events_sent.inc_by(events.len() as u64);
                    if let Some(published) = oldest_live {
                        self.metrics
                            .watch_send_lag
                            .observe(published.elapsed().as_secs_f64());
                    }
                    self.next_progress = Instant::now() + self.progress_interval;
                    return Some(Ok(EncodedWatchResponse {
                        header: (self.header)(revision),
                        events,
                        ..EncodedWatchResponse::default()
                    }));
                }
                continue;
            }
            let cancelled = *self
                .sub
                .shared
                .cancelled
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(reason) = cancelled {
                self.done = true;
                return Some(Err(self.cancelled_status(reason)));
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
