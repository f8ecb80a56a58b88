//! `bowline.v1.Watch`: validates the request, registers the watcher with the node's hub
//! (listing the current state first when no start revision is given) and returns the stream.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::ApiContext;
use crate::model::validation::{validate_labels, validate_name};
use crate::model::ValidationError;
use crate::proto::v1::{WatchManyRequest, WatchRequest};
use crate::proto::watch_wire::watch_server::Watch;
use crate::watch::events::{kind_from_proto, listing};
use crate::watch::hub::SubscribeError;
use crate::watch::hub::WatchGroup;
use crate::watch::many::{multiplex, OpenWatch, OpenedWatch};
use crate::watch::stream::{status_with_revision, watch_stream, HeaderFn, OLDEST_REVISION_KEY};
use crate::watch::wire::{encode_event_chunk, EncodedWatchResponse};
use crate::watch::WatchFilter;

/// Events per response in the initial listing.
const LISTING_CHUNK: usize = 500;

/// The watch service.
#[derive(Clone)]
pub struct WatchService {
    /// Shared API plumbing.
    pub ctx: ApiContext,
    /// Progress interval when the request does not set one.
    pub default_progress: Duration,
}

fn filter_from(request: &WatchRequest) -> Result<WatchFilter, ValidationError> {
    let mut filter = WatchFilter::default();
    for kind in &request.kinds {
        filter.kinds.insert(kind_from_proto(*kind)?);
    }
    if !request.namespace.is_empty() {
        validate_name("namespace", &request.namespace)?;
    }
    if !request.service.is_empty() {
        validate_name("service", &request.service)?;
    }
    if request.name_prefix.len() > 253 {
        return Err(ValidationError::new(
            "name_prefix",
            "must be at most 253 characters",
        ));
    }
    let labels = request
        .label_selector
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    validate_labels("label_selector", &labels)?;
    filter.namespace = request.namespace.clone();
    filter.service = request.service.clone();
    filter.name_prefix = request.name_prefix.clone();
    filter.labels = labels;
    Ok(filter)
}

fn subscribe_error(e: SubscribeError) -> Status {
    match e {
        SubscribeError::Compacted { oldest, .. } => status_with_revision(
            tonic::Code::OutOfRange,
            e.to_string(),
            OLDEST_REVISION_KEY,
            oldest,
        ),
        SubscribeError::TooManyWatchers(_) => Status::resource_exhausted(e.to_string()),
        SubscribeError::ShuttingDown => Status::unavailable(e.to_string()),
    }
}

type WatchResponseStream = Pin<Box<dyn Stream<Item = Result<EncodedWatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = WatchResponseStream;
    type WatchManyStream = WatchResponseStream;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let opened = self.open(request.into_inner(), "Watch", None).await?;
        Ok(Response::new(Box::pin(watch_stream(
            self.ctx.applied.hub().clone(),
            opened.sub,
            opened.initial,
            opened.position,
            opened.progress,
            self.header_fn(),
            self.ctx.metrics.clone(),
        ))))
    }

    async fn watch_many(
        &self,
        request: Request<tonic::Streaming<WatchManyRequest>>,
    ) -> Result<Response<Self::WatchManyStream>, Status> {
        let service = self.clone();
        let open: OpenWatch = Arc::new(move |request, group| {
            let service = service.clone();
            Box::pin(async move { service.open(request, "WatchMany", Some(group)).await })
        });
        let requests = request.into_inner().boxed();
        Ok(Response::new(Box::pin(multiplex(
            requests,
            self.ctx.applied.hub().clone(),
            open,
            self.header_fn(),
            self.ctx.metrics.clone(),
        ))))
    }
}

impl WatchService {
    fn header_fn(&self) -> HeaderFn {
        let ctx = self.ctx.clone();
        Arc::new(move |revision| ctx.header(revision))
    }

    /// Starts one watch (counted under `method`). A watch of a `WatchMany` stream (`group`)
    /// is signalled through the group and begins with a `created` response.
    async fn open(
        &self,
        request: WatchRequest,
        method: &str,
        group: Option<(Arc<WatchGroup>, usize)>,
    ) -> Result<OpenedWatch, Status> {
        // A listing reflects every write acknowledged before the watch began, as a
        // linearizable List would (on a follower that has not yet applied them it waits).
        // Watching from a known revision needs no leader, so it works during a failover.
        let barrier = match request.start_revision {
            None => self
                .ctx
                .consensus
                .read_barrier()
                .await
                .map(|_| ())
                .map_err(|e| Status::from(super::error::ApiError::from(e))),
            Some(_) => Ok(()),
        };
        let outcome = barrier.and_then(|()| self.start(request, group));
        let code = match &outcome {
            Ok(_) => tonic::Code::Ok,
            Err(s) => s.code(),
        };
        self.ctx
            .metrics
            .api_requests
            .with_label_values(&[method, &format!("{code:?}")])
            .inc();
        outcome
    }

    fn start(
        &self,
        request: WatchRequest,
        group: Option<(Arc<WatchGroup>, usize)>,
    ) -> Result<OpenedWatch, Status> {
        let filter = filter_from(&request).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let progress = match request.progress_interval_ms {
            0 => self.default_progress,
            ms => Duration::from_millis(u64::from(ms).clamp(100, 3_600_000)),
        };
        let hub = self.ctx.applied.hub().clone();
        let announce = group.is_some();
        let (subscription, listed, position) = match request.start_revision {
            Some(0) => {
                return Err(Status::invalid_argument(
                    "start_revision: must be at least 1 (omit it to list and watch)",
                ))
            }
            Some(start) => {
                let sub = hub
                    .subscribe_in(filter, Some(start), group.clone())
                    .map_err(subscribe_error)?;
                (sub, Vec::new(), start - 1)
            }
            None => {
                // The listing and the registration happen under the state read lock, so the
                // listing is exactly the state at the revision live events continue from.
                let (sub, events, revision) = self.ctx.applied.read(|state, revision| {
                    let sub = hub.subscribe_in(filter.clone(), None, group.clone());
                    (sub, listing(state, &filter), revision)
                });
                let sub = sub.map_err(subscribe_error)?;
                let mut initial: Vec<EncodedWatchResponse> = events
                    .chunks(LISTING_CHUNK)
                    .map(|chunk| EncodedWatchResponse {
                        header: self.ctx.header(revision),
                        events: chunk.iter().map(encode_event_chunk).collect(),
                        initial: true,
                        ..EncodedWatchResponse::default()
                    })
                    .collect();
                initial.push(EncodedWatchResponse {
                    header: self.ctx.header(revision),
                    synced: true,
                    ..EncodedWatchResponse::default()
                });
                (sub, initial, revision)
            }
        };
        // A watch of a WatchMany stream first says it is registered.
        let created = announce.then(|| EncodedWatchResponse {
            header: self.ctx.header(position),
            created: true,
            ..EncodedWatchResponse::default()
        });
        let initial = created.into_iter().chain(listed).collect();
        Ok(OpenedWatch {
            sub: subscription,
            initial,
            position,
            progress,
        })
    }
}
