//! `WatchMany`: many watches on one bidirectional stream. Each watch is an ordinary watch
//! stream ([`super::stream`]) tagged with the id the client chose; the streams are merged
//! so that only the watches an event woke are polled, and the responses of many watches
//! leave in one HTTP/2 write instead of one stream's frame each.
//!
//! Nothing here buffers without bound: requests are read only when the response side is
//! polled, each request adds at most one queued answer, and a watch's own queue is bounded by
//! the hub, which cancels the watch (not the stream) when a slow client lets it fill.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::{BoxStream, FuturesUnordered};
use futures::{FutureExt, Stream, StreamExt};
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::Status;

use super::hub::{Subscription, WatchGroup, WatchHub};
use super::stream::{cancelled_status, drain_events, Drained, HeaderFn};
use super::wire::EncodedWatchResponse;
use crate::proto::v1::{watch_many_request, WatchManyRequest, WatchRequest};
use crate::telemetry::Metrics;

/// Most live watches on one stream.
pub const MAX_WATCHES_PER_STREAM: usize = 10_000;

/// Under a steady flow of events, the client's requests are looked at after this many
/// responses at the latest.
const REQUESTS_EVERY: u32 = 64;

/// How long an idle stream sleeps before it looks for watches owed a progress notice, when
/// none of its watches asks for less.
const IDLE_TICK: Duration = Duration::from_secs(3600);

/// A watch registered with the hub, ready to be served.
pub struct OpenedWatch {
    /// Its registration; the hub signals it through the stream's group.
    pub sub: Subscription,
    /// Responses to send before any event: `created`, then the listing, if any.
    pub initial: Vec<EncodedWatchResponse>,
    /// The highest revision the client has (start - 1, or the listing revision).
    pub position: u64,
    /// How often the watch gets a progress notice when idle.
    pub progress: Duration,
}

/// Validates, waits for a read barrier if needed, and registers one watch as slot `.1` of
/// group `.0`; or says why it cannot start.
pub type OpenWatch = Arc<
    dyn Fn(
            WatchRequest,
            (Arc<WatchGroup>, usize),
        ) -> BoxFuture<'static, Result<OpenedWatch, Status>>
        + Send
        + Sync,
>;

/// A response that ends watch `watch_id` with `status` (OK when the client cancelled it).
pub fn canceled_response(watch_id: u64, status: &Status) -> EncodedWatchResponse {
    let resume_revision = [
        super::stream::RESUME_REVISION_KEY,
        super::stream::OLDEST_REVISION_KEY,
    ]
    .iter()
    .find_map(|key| status.metadata().get(*key))
    .and_then(|v| v.to_str().ok())
    .and_then(|v| v.parse().ok())
    .unwrap_or(0);
    EncodedWatchResponse {
        watch_id,
        canceled: true,
        cancel_code: status.code() as i32,
        cancel_reason: status.message().to_string(),
        resume_revision,
        ..EncodedWatchResponse::default()
    }
}

/// One live watch of the stream.
struct LiveWatch {
    sub: Subscription,
    initial: VecDeque<EncodedWatchResponse>,
    position: u64,
    progress: Duration,
    /// When the watch is next owed a progress notice, unless it sent something meanwhile.
    next_progress: Instant,
    /// Something went out since `next_progress` was set.
    sent: bool,
}

enum SlotState {
    /// Waiting for its read barrier or registration; `serial` tells this create from a later
    /// one that reused the slot.
    Opening {
        serial: u64,
    },
    Live(Box<LiveWatch>),
}

struct Slot {
    watch_id: u64,
    state: SlotState,
}

type Opening = BoxFuture<'static, (usize, u64, Result<OpenedWatch, Status>)>;

/// What woke the multiplexer.
enum Woke {
    Signalled,
    Opened(Option<(usize, u64, Result<OpenedWatch, Status>)>),
    Request(Option<Result<WatchManyRequest, Status>>),
    Tick,
    Closed,
}

struct Multiplexer {
    /// The client's requests; `None` once it half-closed its side.
    requests: Option<BoxStream<'static, Result<WatchManyRequest, Status>>>,
    hub: Arc<WatchHub>,
    /// The hub lists here which slots have something.
    group: Arc<WatchGroup>,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    /// Live watch ids and their slots.
    ids: HashMap<u64, usize>,
    opening: FuturesUnordered<Opening>,
    next_serial: u64,
    /// Slots to look at before asking the group again.
    pending: VecDeque<usize>,
    /// Reused buffer for the group's ready list.
    taken: Vec<usize>,
    /// Answers to requests (refusals, cancellations, progress notices), sent first.
    answers: VecDeque<EncodedWatchResponse>,
    open: OpenWatch,
    header: HeaderFn,
    metrics: Metrics,
    /// Wakes the stream to send progress notices.
    tick: std::pin::Pin<Box<tokio::time::Sleep>>,
    tick_every: Duration,
    /// The node's shutdown signal.
    closed: watch::Receiver<bool>,
    /// The node is shutting down: let every watch send its cancellation, then end.
    closing: bool,
    done: bool,
    /// Responses sent since requests were last looked at.
    sent_since_requests: u32,
}

impl Drop for Multiplexer {
    fn drop(&mut self) {
        self.metrics.watch_many_streams.dec();
        for slot in self.slots.iter().flatten() {
            if let SlotState::Live(watch) = &slot.state {
                self.hub.unsubscribe(watch.sub.id);
            }
        }
    }
}

impl Multiplexer {
    /// Queues the last answer for `watch_id`: refused, cancelled by the client, or unknown.
    fn answer_canceled(&mut self, watch_id: u64, status: &Status) {
        self.answers.push_back(canceled_response(watch_id, status));
    }

    fn release(&mut self, slot: usize) {
        if let Some(Slot { watch_id, state }) = self.slots[slot].take() {
            if let SlotState::Live(watch) = state {
                self.hub.unsubscribe(watch.sub.id);
            }
            self.ids.remove(&watch_id);
            self.free.push(slot);
        }
    }

    fn handle(&mut self, request: WatchManyRequest) {
        match request.request {
            Some(watch_many_request::Request::Create(create)) => {
                let id = create.watch_id;
                if id == 0 {
                    return self.answer_canceled(
                        id,
                        &Status::invalid_argument("watch_id: must be at least 1"),
                    );
                }
                if self.ids.contains_key(&id) {
                    return self.answer_canceled(
                        id,
                        &Status::invalid_argument(format!(
                            "watch_id: {id} is already in use on this stream"
                        )),
                    );
                }
                if self.ids.len() >= MAX_WATCHES_PER_STREAM {
                    return self.answer_canceled(
                        id,
                        &Status::resource_exhausted(format!(
                            "watch_id: this stream already carries {MAX_WATCHES_PER_STREAM} watches; open another stream"
                        )),
                    );
                }
                // An absent `watch` would decode as an empty request, which watches
                // everything: almost surely a client bug, and an expensive one.
                let Some(watch) = create.watch else {
                    return self.answer_canceled(
                        id,
                        &Status::invalid_argument(
                            "watch: is required (send an empty WatchRequest to watch everything)",
                        ),
                    );
                };
                let serial = self.next_serial;
                self.next_serial += 1;
                let slot = self.free.pop().unwrap_or_else(|| {
                    self.slots.push(None);
                    self.slots.len() - 1
                });
                self.slots[slot] = Some(Slot {
                    watch_id: id,
                    state: SlotState::Opening { serial },
                });
                self.ids.insert(id, slot);
                let opening = (self.open)(watch, (self.group.clone(), slot));
                self.opening
                    .push(Box::pin(async move { (slot, serial, opening.await) }));
            }
            Some(watch_many_request::Request::Cancel(cancel)) => {
                let id = cancel.watch_id;
                let status = match self.ids.get(&id) {
                    Some(&slot) => {
                        self.release(slot);
                        Status::ok("cancelled by the client")
                    }
                    None => {
                        Status::not_found(format!("watch_id: no live watch {id} on this stream"))
                    }
                };
                self.answer_canceled(id, &status);
            }
            None => self.answer_canceled(
                0,
                &Status::invalid_argument("request: must be create or cancel"),
            ),
        }
    }

    fn opened(&mut self, slot: usize, serial: u64, outcome: Result<OpenedWatch, Status>) {
        let current = matches!(
            self.slots.get(slot),
            Some(Some(Slot { state: SlotState::Opening { serial: s }, .. })) if *s == serial
        );
        match outcome {
            // Cancelled while it was opening: the client has its answer already.
            Ok(opened) if !current => self.hub.unsubscribe(opened.sub.id),
            Err(_) if !current => {}
            Ok(opened) => {
                if opened.progress < self.tick_every {
                    self.tick_every = opened.progress;
                    let due = Instant::now() + opened.progress;
                    if due < self.tick.deadline() {
                        self.tick.as_mut().reset(due);
                    }
                }
                if let Some(Some(entry)) = self.slots.get_mut(slot) {
                    entry.state = SlotState::Live(Box::new(LiveWatch {
                        sub: opened.sub,
                        initial: opened.initial.into(),
                        position: opened.position,
                        progress: opened.progress,
                        next_progress: Instant::now() + opened.progress,
                        sent: false,
                    }));
                }
                self.pending.push_back(slot);
            }
            Err(status) => {
                let watch_id = self.slots[slot].as_ref().map_or(0, |s| s.watch_id);
                self.release(slot);
                self.answer_canceled(watch_id, &status);
            }
        }
    }

    /// The next response of the watch in `slot`, if it has one.
    fn drain(&mut self, slot: usize) -> Option<EncodedWatchResponse> {
        let Some(Some(Slot {
            watch_id,
            state: SlotState::Live(watch),
        })) = self.slots.get_mut(slot)
        else {
            return None;
        };
        let watch_id = *watch_id;
        WatchGroup::unlist(&watch.sub.shared);
        // A watch with more to send goes behind the others, so that one watch's listing or
        // replay does not hold up every other watch on the stream.
        if let Some(mut response) = watch.initial.pop_front() {
            response.watch_id = watch_id;
            self.pending.push_back(slot);
            return Some(response);
        }
        match drain_events(
            &mut watch.sub,
            &mut watch.position,
            &self.header,
            &self.metrics,
        ) {
            Drained::Events { mut response, more } => {
                watch.sent = true;
                if more {
                    self.pending.push_back(slot);
                }
                response.watch_id = watch_id;
                Some(response)
            }
            Drained::Empty => {
                let cancelled = *watch
                    .sub
                    .shared
                    .cancelled
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                let reason = cancelled?;
                let status = cancelled_status(reason, watch.position);
                self.release(slot);
                Some(canceled_response(watch_id, &status))
            }
        }
    }

    /// Queues progress notices for the idle watches that are owed one.
    fn progress(&mut self) {
        let now = Instant::now();
        for slot in self.slots.iter_mut().flatten() {
            let SlotState::Live(watch) = &mut slot.state else {
                continue;
            };
            if now < watch.next_progress || !watch.initial.is_empty() {
                continue;
            }
            watch.next_progress = now + watch.progress;
            if std::mem::take(&mut watch.sent) {
                continue;
            }
            if let Some(revision) = self.hub.idle_revision(watch.sub.id, &watch.sub.shared) {
                watch.position = watch.position.max(revision);
                self.metrics.watch_progress_notices.inc();
                self.answers.push_back(EncodedWatchResponse {
                    header: (self.header)(watch.position),
                    progress: true,
                    watch_id: slot.watch_id,
                    ..EncodedWatchResponse::default()
                });
            }
        }
        let due = now + self.tick_every;
        self.tick.as_mut().reset(due);
    }

    async fn next(&mut self) -> Option<Result<EncodedWatchResponse, Status>> {
        loop {
            if self.done {
                return None;
            }
            if let Some(answer) = self.answers.pop_front() {
                return Some(Ok(answer));
            }
            // Requests are otherwise read only when nothing is waiting to be sent; under a
            // steady flood of events, look at them now and then so a cancel is not starved.
            self.sent_since_requests += 1;
            if self.sent_since_requests >= REQUESTS_EVERY && !self.closing {
                self.sent_since_requests = 0;
                if let Some(requests) = self.requests.as_mut() {
                    match requests.next().now_or_never() {
                        Some(Some(Ok(request))) => {
                            self.handle(request);
                            continue;
                        }
                        Some(Some(Err(_))) => self.done = true,
                        Some(None) => self.requests = None,
                        None => {}
                    }
                    if self.done {
                        continue;
                    }
                }
            }
            while let Some(slot) = self.pending.pop_front() {
                if let Some(response) = self.drain(slot) {
                    return Some(Ok(response));
                }
            }
            self.group.take_ready(&mut self.taken);
            if !self.taken.is_empty() {
                self.pending.extend(self.taken.drain(..));
                continue;
            }
            if self.ids.is_empty() {
                if self.closing {
                    self.done = true;
                    return Some(Err(Status::unavailable(
                        "node is shutting down; watch another node",
                    )));
                }
                // Half-closed by the client with nothing left to send: the stream is over.
                self.requests.as_ref()?;
            }
            let reading = self.requests.is_some() && !self.closing;
            let opening = !self.opening.is_empty();
            let closing = self.closing;
            let woke = tokio::select! {
                biased;
                _ = self.group.notify.notified() => Woke::Signalled,
                opened = self.opening.next(), if opening => Woke::Opened(opened),
                request = async {
                    match self.requests.as_mut() {
                        Some(requests) => requests.next().await,
                        None => None,
                    }
                }, if reading => Woke::Request(request),
                _ = self.tick.as_mut() => Woke::Tick,
                _ = self.closed.wait_for(|closed| *closed), if !closing => Woke::Closed,
            };
            match woke {
                Woke::Signalled | Woke::Opened(None) => {}
                Woke::Opened(Some((slot, serial, outcome))) => self.opened(slot, serial, outcome),
                Woke::Request(Some(Ok(request))) => self.handle(request),
                // The client went away or sent garbage: nobody is left to answer.
                Woke::Request(Some(Err(_))) => self.done = true,
                Woke::Request(None) => self.requests = None,
                Woke::Tick => self.progress(),
                Woke::Closed => self.closing = true,
            }
        }
    }
}

/// The response stream of one `WatchMany` call.
pub fn multiplex(
    requests: BoxStream<'static, Result<WatchManyRequest, Status>>,
    hub: Arc<WatchHub>,
    open: OpenWatch,
    header: HeaderFn,
    metrics: Metrics,
) -> impl Stream<Item = Result<EncodedWatchResponse, Status>> + Send + 'static {
    let closed = hub.closed();
    let closing = *closed.borrow();
    // Counted down when the stream's state is dropped: at its end or when the client goes.
    metrics.watch_many_streams.inc();
    let state = Multiplexer {
        requests: Some(requests),
        hub,
        group: Arc::new(WatchGroup::default()),
        slots: Vec::new(),
        free: Vec::new(),
        ids: HashMap::new(),
        opening: FuturesUnordered::new(),
        next_serial: 0,
        pending: VecDeque::new(),
        taken: Vec::new(),
        answers: VecDeque::new(),
        open,
        header,
        metrics,
        tick: Box::pin(tokio::time::sleep(IDLE_TICK)),
        tick_every: IDLE_TICK,
        closed,
        closing,
        done: false,
        sent_since_requests: 0,
    };
    futures::stream::unfold(state, |mut state| async move {
        let item = state.next().await?;
        Some((item, state))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::v1::{WatchCancelRequest, WatchCreateRequest};
    use crate::watch::filter::WatchFilter;
    use crate::watch::hub::{test_event, HubConfig, PublishedEvent};

    fn create(watch_id: u64, service: &str) -> Result<WatchManyRequest, Status> {
        Ok(WatchManyRequest {
            request: Some(watch_many_request::Request::Create(WatchCreateRequest {
                watch_id,
                watch: Some(WatchRequest {
                    service: service.into(),
                    progress_interval_ms: 100,
                    ..WatchRequest::default()
                }),
            })),
        })
    }

    fn cancel(watch_id: u64) -> Result<WatchManyRequest, Status> {
        Ok(WatchManyRequest {
            request: Some(watch_many_request::Request::Cancel(WatchCancelRequest {
                watch_id,
            })),
        })
    }

    fn event(service: &str) -> Vec<PublishedEvent> {
        vec![test_event(service)]
    }

    /// Registers watches on the service named in the request from the hub's next revision,
    /// announcing them; refuses service "bad" as the API would.
    fn opener(hub: Arc<WatchHub>) -> OpenWatch {
        Arc::new(move |request: WatchRequest, group| {
            let hub = hub.clone();
            Box::pin(async move {
                if request.service == "bad" {
                    return Err(Status::invalid_argument("service: must be a DNS label"));
                }
                let filter = WatchFilter {
                    service: request.service.clone(),
                    ..WatchFilter::default()
                };
                let sub = hub
                    .subscribe_in(filter, None, Some(group))
                    .map_err(|e| Status::unavailable(e.to_string()))?;
                let position = sub.revision;
                Ok(OpenedWatch {
                    sub,
                    initial: vec![EncodedWatchResponse {
                        created: true,
                        ..EncodedWatchResponse::default()
                    }],
                    position,
                    progress: Duration::from_millis(u64::from(request.progress_interval_ms)),
                })
            })
        })
    }

    type Requests = futures::channel::mpsc::UnboundedSender<Result<WatchManyRequest, Status>>;
    type Responses =
        std::pin::Pin<Box<dyn Stream<Item = Result<EncodedWatchResponse, Status>> + Send>>;

    fn start(config: HubConfig) -> (Arc<WatchHub>, Requests, Responses) {
        let hub = Arc::new(WatchHub::new(config, 0, Metrics::new(1).unwrap()));
        let (requests, stream) = open_stream(&hub, Metrics::new(1).unwrap());
        (hub, requests, stream)
    }

    fn open_stream(hub: &Arc<WatchHub>, metrics: Metrics) -> (Requests, Responses) {
        let (requests, rx) = futures::channel::mpsc::unbounded();
        let header: HeaderFn = Arc::new(|_| None);
        let stream = multiplex(
            rx.boxed(),
            hub.clone(),
            opener(hub.clone()),
            header,
            metrics,
        );
        (requests, Box::pin(stream))
    }

    /// Watch 1 on "web" and watch 2 on "db", both registered.
    async fn watch_web_and_db(requests: &Requests, stream: &mut Responses) {
        requests.unbounded_send(create(1, "web")).unwrap();
        requests.unbounded_send(create(2, "db")).unwrap();
        assert_eq!(take_ok(stream, 2).await.len(), 2);
    }

    async fn take(stream: &mut Responses, n: usize) -> Vec<Result<EncodedWatchResponse, Status>> {
        let mut out = Vec::new();
        for _ in 0..n {
            match tokio::time::timeout(Duration::from_secs(5), stream.next()).await {
                Ok(Some(item)) => out.push(item),
                _ => break,
            }
        }
        out
    }

    async fn take_ok(stream: &mut Responses, n: usize) -> Vec<EncodedWatchResponse> {
        take(stream, n)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect()
    }

    #[tokio::test]
    async fn each_watch_gets_its_events_under_its_own_id_and_a_refusal_leaves_the_others_alone() {
        let (hub, requests, mut stream) = start(HubConfig::default());
        for request in [
            create(1, "web"),
            create(2, "bad"),
            create(1, "web"),
            create(0, "web"),
            create(3, "web"),
            create(4, "db"),
            Ok(WatchManyRequest {
                request: Some(watch_many_request::Request::Create(WatchCreateRequest {
                    watch_id: 5,
                    watch: None,
                })),
            }),
        ] {
            requests.unbounded_send(request).unwrap();
        }
        let got = take_ok(&mut stream, 7).await;
        let mut created: Vec<u64> = got
            .iter()
            .filter(|r| r.created)
            .map(|r| r.watch_id)
            .collect();
        created.sort_unstable();
        assert_eq!(created, [1, 3, 4], "{got:?}");
        let refused: Vec<(u64, i32, &str)> = got
            .iter()
            .filter(|r| r.canceled)
            .map(|r| (r.watch_id, r.cancel_code, r.cancel_reason.as_str()))
            .collect();
        assert_eq!(refused.len(), 4, "{refused:?}");
        assert!(refused.contains(&(
            5,
            3,
            "watch: is required (send an empty WatchRequest to watch everything)"
        )));
        assert!(refused.contains(&(2, 3, "service: must be a DNS label")));
        assert!(refused.contains(&(1, 3, "watch_id: 1 is already in use on this stream")));
        assert!(refused.contains(&(0, 3, "watch_id: must be at least 1")));

        hub.publish(1, event("web"));
        hub.publish(2, event("db"));
        let mut got: Vec<(u64, usize)> = take_ok(&mut stream, 3)
            .await
            .iter()
            .map(|r| (r.watch_id, r.events.len()))
            .collect();
        got.sort_unstable();
        assert_eq!(got, [(1, 1), (3, 1), (4, 1)]);
    }

    #[tokio::test]
    async fn open_streams_are_counted_until_they_are_dropped() {
        let hub = Arc::new(WatchHub::new(
            HubConfig::default(),
            0,
            Metrics::new(1).unwrap(),
        ));
        let metrics = Metrics::new(1).unwrap();
        let (requests_a, mut a) = open_stream(&hub, metrics.clone());
        let (_requests_b, b) = open_stream(&hub, metrics.clone());
        assert_eq!(metrics.watch_many_streams.get(), 2);
        requests_a.unbounded_send(create(1, "web")).unwrap();
        assert!(take_ok(&mut a, 1).await[0].created);
        drop(b);
        assert_eq!(metrics.watch_many_streams.get(), 1);
        drop(a);
        assert_eq!(metrics.watch_many_streams.get(), 0);
        assert_eq!(
            hub.watcher_count(),
            0,
            "the dropped stream's watch is unsubscribed"
        );
    }

    #[tokio::test]
    async fn a_cancelled_watch_stops_and_its_id_can_be_used_again() {
        let (hub, requests, mut stream) = start(HubConfig::default());
        requests.unbounded_send(create(7, "web")).unwrap();
        let first = take_ok(&mut stream, 1).await;
        assert!(first[0].created && first[0].watch_id == 7);
        requests.unbounded_send(cancel(7)).unwrap();
        requests.unbounded_send(cancel(8)).unwrap();
        let got = take_ok(&mut stream, 2).await;
        assert!(got[0].canceled && got[0].watch_id == 7 && got[0].cancel_code == 0);
        assert!(got[1].canceled && got[1].watch_id == 8);
        assert_eq!(got[1].cancel_code, tonic::Code::NotFound as i32);
        hub.publish(1, event("web"));
        requests.unbounded_send(create(7, "web")).unwrap();
        let got = take_ok(&mut stream, 1).await;
        assert!(got[0].created && got[0].watch_id == 7, "{got:?}");
        // The new watch 7 starts after revision 1: it gets 2, never the old watch's 1.
        hub.publish(2, event("web"));
        let got = take_ok(&mut stream, 1).await;
        assert_eq!(got[0].header, None);
        assert_eq!((got[0].watch_id, got[0].events.len()), (7, 1));
        // Half-closing with a live watch keeps the stream open; cancelling the last one ends it.
        requests.unbounded_send(cancel(7)).unwrap();
        drop(requests);
        let got = take(&mut stream, 2).await;
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].as_ref().unwrap().canceled);
        assert_eq!(hub.watcher_count(), 0, "cancelled watches are unregistered");
    }

    #[tokio::test]
    async fn a_slow_watch_is_cancelled_with_where_to_resume_and_the_stream_carries_on() {
        let (hub, requests, mut stream) = start(HubConfig {
            watcher_queue: 2,
            ..HubConfig::default()
        });
        watch_web_and_db(&requests, &mut stream).await;
        // Nobody reads the stream while "web" gets three revisions.
        for revision in 1..=3 {
            hub.publish(revision, event("web"));
        }
        hub.publish(4, event("db"));
        let got = take_ok(&mut stream, 2).await;
        let ended = got.iter().find(|r| r.watch_id == 1).unwrap();
        assert!(ended.canceled);
        assert_eq!(ended.cancel_code, tonic::Code::ResourceExhausted as i32);
        assert_eq!(ended.resume_revision, 1);
        let db = got.iter().find(|r| r.watch_id == 2).unwrap();
        assert_eq!(db.events.len(), 1);
    }

    #[tokio::test]
    async fn a_watch_with_a_backlog_takes_turns_with_the_others() {
        let (hub, requests, mut stream) = start(HubConfig::default());
        watch_web_and_db(&requests, &mut stream).await;
        // Both watches idle, nothing owed: the stream has nothing to send.
        let idle = tokio::time::timeout(Duration::from_millis(50), stream.next()).await;
        assert!(idle.is_err(), "{idle:?}");
        // More revisions than one response carries for "web", then one for "db".
        for revision in 1..=300 {
            hub.publish(revision, event("web"));
        }
        hub.publish(301, event("db"));
        let got: Vec<(u64, usize)> = take_ok(&mut stream, 3)
            .await
            .iter()
            .map(|r| (r.watch_id, r.events.len()))
            .collect();
        assert_eq!(got, [(1, 256), (2, 1), (1, 44)]);
    }

    #[tokio::test]
    async fn a_cancel_is_read_while_events_keep_the_stream_busy() {
        let (hub, requests, mut stream) = start(HubConfig::default());
        for id in 1..=200 {
            requests.unbounded_send(create(id, "web")).unwrap();
        }
        assert_eq!(take_ok(&mut stream, 200).await.len(), 200);
        hub.publish(1, event("web"));
        requests.unbounded_send(cancel(7)).unwrap();
        let got = take_ok(&mut stream, 200).await;
        let answered = got
            .iter()
            .position(|r| r.canceled && r.watch_id == 7)
            .expect("the cancel is answered");
        assert!(
            answered < 199,
            "answered only once every event was out: {answered}"
        );
        assert!(
            !got[answered..]
                .iter()
                .any(|r| r.watch_id == 7 && !r.canceled),
            "no event for a watch after its cancel"
        );
    }

    #[tokio::test]
    async fn an_idle_watch_gets_progress_notices() {
        let (hub, requests, mut stream) = start(HubConfig::default());
        requests.unbounded_send(create(5, "web")).unwrap();
        assert!(take_ok(&mut stream, 1).await[0].created);
        hub.publish(9, event("db"));
        let got = take_ok(&mut stream, 1).await;
        assert!(got[0].progress && got[0].watch_id == 5, "{got:?}");
    }

    #[tokio::test]
    async fn shutdown_cancels_every_watch_then_ends_the_stream_with_unavailable() {
        let (hub, requests, mut stream) = start(HubConfig::default());
        watch_web_and_db(&requests, &mut stream).await;
        assert_eq!(hub.watcher_count(), 2);
        hub.shutdown();
        let got = take(&mut stream, 4).await;
        assert_eq!(got.len(), 3, "{got:?}");
        for r in &got[..2] {
            let r = r.as_ref().unwrap();
            assert!(r.canceled);
            assert_eq!(r.cancel_code, tonic::Code::Unavailable as i32);
        }
        assert_eq!(
            got[2].as_ref().unwrap_err().code(),
            tonic::Code::Unavailable
        );
        drop(requests);
    }
}
