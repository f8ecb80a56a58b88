//! A resumable watch: follows one logical watch across node failures. When its node dies
//! (or cancels the watch as too slow) it reconnects to another node and resumes from the
//! revision after the last one it delivered, so the caller sees no gap and no duplicate.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};

use super::{is_retryable, Client};
use crate::proto::v1 as pb;
use crate::proto::v1::watch_client::WatchClient;

/// What a watch delivers, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchItem {
    /// The selected objects as of `revision` (list-and-watch only), as PUT events.
    Listing {
        /// The revision of the listing; events follow from `revision + 1`.
        revision: u64,
        /// One PUT event per object, stamped with the object's mod revision.
        events: Vec<pb::Event>,
    },
    /// The events of one or more whole revisions, in revision order.
    Events(Vec<pb::Event>),
    /// Nothing selected changed up to `revision`.
    Progress(u64),
}

/// How long a watch keeps trying to reach some node before it gives up.
const GIVE_UP_AFTER: Duration = Duration::from_secs(60);

fn resumable(status: &Status) -> bool {
    // Aborted: the node's history was reset by a snapshot; ResourceExhausted: we were too
    // slow, or the node has too many watchers. Both can resume, here or elsewhere.
    is_retryable(status) || matches!(status.code(), Code::Aborted | Code::ResourceExhausted)
}

impl Client {
    /// Starts a resumable watch. With `request.start_revision` unset it lists first
    /// ([`WatchItem::Listing`]), then follows changes. The stream ends with an error only
    /// when no node can continue it (for example every node answers `OUT_OF_RANGE`).
    pub fn watch(&self, request: pb::WatchRequest) -> ReceiverStream<Result<WatchItem, Status>> {
        let (tx, rx) = mpsc::channel(64);
        let client = self.clone();
        tokio::spawn(async move { client.run_watch(request, tx).await });
        ReceiverStream::new(rx)
    }

    async fn run_watch(
        &self,
        request: pb::WatchRequest,
        tx: mpsc::Sender<Result<WatchItem, Status>>,
    ) {
        let n = self.channels.len();
        let mut index = self.preferred.load(std::sync::atomic::Ordering::Relaxed) % n;
        let mut next_start = request.start_revision;
        let mut last_success = tokio::time::Instant::now();
        let mut failures_in_a_row = 0usize;
        let mut out_of_range = 0usize;
        loop {
            let mut attempt = request.clone();
            attempt.start_revision = next_start;
            let mut listing = Vec::new();
            let error = match WatchClient::new(self.channels[index].clone())
                .watch(attempt)
                .await
            {
                Err(status) => status,
                Ok(response) => {
                    let mut stream = response.into_inner();
                    loop {
                        match stream.message().await {
                            Ok(Some(msg)) => {
                                last_success = tokio::time::Instant::now();
                                failures_in_a_row = 0;
                                out_of_range = 0;
                                let revision = msg.header.as_ref().map_or(0, |h| h.revision);
                                let item = if msg.initial {
                                    listing.extend(msg.events);
                                    continue;
                                } else if msg.synced {
                                    next_start = Some(revision + 1);
                                    WatchItem::Listing {
                                        revision,
                                        events: std::mem::take(&mut listing),
                                    }
                                } else if msg.progress {
                                    next_start = Some(next_start.unwrap_or(0).max(revision + 1));
                                    WatchItem::Progress(revision)
                                } else if let Some(last) = msg.events.last() {
                                    next_start = Some(last.revision + 1);
                                    WatchItem::Events(msg.events)
                                } else {
                                    continue;
                                };
                                if tx.send(Ok(item)).await.is_err() {
                                    return; // the caller stopped watching
                                }
                            }
                            Ok(None) => break Status::unavailable("watch stream ended"),
                            Err(status) => break status,
                        }
                    }
                }
            };
            if error.code() == Code::OutOfRange {
                // This node's history does not reach back far enough; another node's may.
                out_of_range += 1;
                if out_of_range >= n {
                    let _ = tx.send(Err(error)).await;
                    return;
                }
            } else if !resumable(&error) {
                let _ = tx.send(Err(error)).await;
                return;
            }
            if last_success.elapsed() > GIVE_UP_AFTER {
                let _ = tx
                    .send(Err(Status::unavailable(format!(
                        "no node could continue the watch for {GIVE_UP_AFTER:?}: {}",
                        error.message()
                    ))))
                    .await;
                return;
            }
            tracing::debug!(endpoint = %self.endpoints[index], error = %error.message(), "watch interrupted; resuming elsewhere");
            index = (index + 1) % n;
            failures_in_a_row += 1;
            if failures_in_a_row >= n {
                let backoff = Duration::from_millis(50 * (failures_in_a_row as u64).min(20));
                tokio::time::sleep(backoff).await;
            }
        }
    }
}
