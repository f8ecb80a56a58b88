//! The client port's HTTP/2 server: hyper serves each accepted connection, and each request
//! goes straight to the gRPC service its path names.
//!
//! tonic's `Server` puts every request through a stack of tower layers before a service
//! sees it: a boxed clone of the connection's service, the peer address in a freshly
//! allocated extensions map, a tracing span, error recovery, a concurrency semaphore, a
//! grpc-timeout timer, and axum's router with its own clone and boxed future. Bowline uses
//! none of them on this port, and on a follower serving linearizable reads they were a
//! steady part of every request's cost (docs/benchmarks.md, twentieth session). What they
//! did that still matters is kept here:
//! - a connection has at most [`MAX_STREAMS_PER_CONNECTION`] requests in flight, now as
//!   HTTP/2's SETTINGS_MAX_CONCURRENT_STREAMS, so a client that wants more waits on its own
//!   side instead of in this node's memory;
//! - shutdown stops accepting, asks every connection to finish (GOAWAY) and waits for them;
//! - a path naming no service is answered UNIMPLEMENTED.
//!
//! A client that gives up on a request resets its stream, and hyper then drops the
//! handler's future, so no server-side deadline timer is needed for that.
//!
//! A connection's requests run inside the connection's own task ([`ConnectionTask`])
//! rather than a task each.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::task::AtomicWaker;
use futures::{FutureExt, Stream, StreamExt};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tonic::body::Body;
use tonic::codegen::{http, Service};
use tonic::server::NamedService;
use tonic::Status;

/// What a generated gRPC server returns for a request.
pub type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send + 'static>>;

type Handler = Box<dyn Fn(http::Request<Incoming>) -> ResponseFuture + Send + Sync>;

/// Requests (HTTP/2 streams) one client connection may have open at once; a watch stream
/// counts for as long as it is open. tonic's concurrency layer held 1024 calls per
/// connection until each call's response began, and queued the rest inside this node.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 1024;

/// After a failed accept (say the process is out of file descriptors), how long to wait
/// before the next: the listener would otherwise report the same error in a busy loop.
const ACCEPT_RETRY_AFTER: Duration = Duration::from_millis(20);

/// Dispatches requests to gRPC services by the service part of their path. Cheap to clone.
#[derive(Clone)]
pub struct GrpcRouter {
    routes: Arc<Vec<(&'static str, Handler)>>,
}

/// Collects the services a [`GrpcRouter`] serves.
#[derive(Default)]
pub struct GrpcRouterBuilder {
    routes: Vec<(&'static str, Handler)>,
}

impl GrpcRouterBuilder {
    /// Serves `service` (a generated gRPC server) under its fully qualified name.
    pub fn add_service<S>(mut self, service: S) -> Self
    where
        S: Service<
                http::Request<Incoming>,
                Response = http::Response<Body>,
                Error = Infallible,
                Future = ResponseFuture,
            > + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
    {
        // A generated server's `call` only clones its `Arc`'d handler into the future.
        let handler: Handler = Box::new(move |request| service.clone().call(request));
        self.routes.push((S::NAME, handler));
        self
    }

    /// The router.
    pub fn build(self) -> GrpcRouter {
        GrpcRouter {
            routes: Arc::new(self.routes),
        }
    }
}

impl GrpcRouter {
    /// A router with no services yet.
    pub fn builder() -> GrpcRouterBuilder {
        GrpcRouterBuilder::default()
    }
}

impl hyper::service::Service<http::Request<Incoming>> for GrpcRouter {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn call(&self, request: http::Request<Incoming>) -> ResponseFuture {
        let named = service_name(request.uri().path());
        match self.routes.iter().find(|(name, _)| Some(*name) == named) {
            Some((_, handler)) => handler(request),
            None => {
                let status = Status::unimplemented(format!(
                    "no gRPC service serves {}",
                    request.uri().path()
                ));
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

/// The service part of a gRPC path, `/package.Service/Method`.
fn service_name(path: &str) -> Option<&str> {
    let (service, _method) = path.strip_prefix('/')?.split_once('/')?;
    Some(service)
}

/// Serves HTTP/2 connections from `incoming` with `router` until `shutdown` completes, then
/// stops accepting (the listener closes with `incoming`), asks every open connection to
/// finish the requests it has and waits until all have closed.
pub async fn serve<I, IO>(router: GrpcRouter, incoming: I, shutdown: impl Future<Output = ()>)
where
    I: Stream<Item = std::io::Result<IO>>,
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (drain_tx, drain_rx) = watch::channel(());
    {
        let mut incoming = std::pin::pin!(incoming);
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                () = &mut shutdown => break,
                accepted = incoming.next() => accepted,
            };
            let io = match accepted {
                None => break,
                Some(Ok(io)) => io,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "accepting a client connection failed");
                    tokio::time::sleep(ACCEPT_RETRY_AFTER).await;
                    continue;
                }
            };
            let mut connection = ConnectionTask::new(io, router.clone());
            let mut drain = drain_rx.clone();
            tokio::spawn(async move {
                let result = tokio::select! {
                    result = &mut connection => result,
                    _ = drain.changed() => {
                        connection.graceful_shutdown();
                        connection.await
                    }
                };
                if let Err(e) = result {
                    tracing::debug!(error = %e, "client connection ended with an error");
                }
                // `drain` is dropped here: the server's drain counts this connection done.
            });
        }
    }
    let _ = drain_tx.send(());
    drop(drain_rx);
    drain_tx.closed().await;
}

type StreamFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Passes one poll of a connection may make over its socket and requests before it lets
/// other tasks run: this many, or one per open request if more.
const MIN_PASSES_PER_POLL: usize = 8;

/// hyper's executor for one connection's requests: instead of a task each, they join the
/// connection's own task ([`ConnectionTask`]).
#[derive(Clone, Default)]
struct ConnectionRequests {
    shared: Arc<RequestsShared>,
}

#[derive(Default)]
struct RequestsShared {
    /// Requests hyper started that the connection's task has not taken up yet.
    started: Mutex<Vec<StreamFuture>>,
    /// The connection's task.
    task: AtomicWaker,
    /// The connection's task is being polled, and looks at `started` and `woken` before it
    /// returns, so there is no need to wake it.
    polling: AtomicBool,
    /// Something the task polls (the connection or one of its requests) was woken, or a
    /// request started, since the task last looked.
    woken: AtomicBool,
}

impl RequestsShared {
    fn take_started(&self) -> Vec<StreamFuture> {
        std::mem::take(&mut *self.started.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Whether anything was woken since the last call.
    fn take_woken(&self) -> bool {
        self.woken.swap(false, Ordering::SeqCst)
    }
}

/// The waker the connection and its requests are polled with: while the task is being
/// polled a wake-up only marks that another pass is due; otherwise it wakes the task.
impl futures::task::ArcWake for RequestsShared {
    fn wake_by_ref(shared: &Arc<Self>) {
        // SeqCst here and in `poll`: each side stores, then loads what the other stores,
        // and at least one of them must see the other's store.
        shared.woken.store(true, Ordering::SeqCst);
        if !shared.polling.load(Ordering::SeqCst) {
            shared.task.wake();
        }
    }
}

impl<F> hyper::rt::Executor<F> for ConnectionRequests
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, request: F) {
        // A request that panicked would otherwise take its connection's other requests
        // down with it; as a task of its own, only it ended.
        let request = std::panic::AssertUnwindSafe(request)
            .catch_unwind()
            .map(|_| ());
        self.shared
            .started
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::pin(request));
        futures::task::ArcWake::wake_by_ref(&self.shared);
    }
}

type Http2Connection<IO> =
    hyper::server::conn::http2::Connection<TokioIo<IO>, GrpcRouter, ConnectionRequests>;

/// One client connection and every request on it, polled as one task.
///
/// hyper spawns a task per request. A batch of linearizable reads released by one read
/// index then woke two dozen tasks at once; the runtime woke its other worker to steal
/// half of them, and the two took turns on the connection's HTTP/2 lock to send their
/// responses. Here a request's wake-up wakes its connection's task, which polls the
/// requests that are ready and then writes their responses together. A connection's
/// requests share one worker at a time, as in Envoy, where a connection's streams all run
/// on its worker thread; a node with many connections still uses every worker.
struct ConnectionTask<IO: AsyncRead + AsyncWrite + Send + Unpin + 'static> {
    connection: Pin<Box<Http2Connection<IO>>>,
    /// The connection's own result, once it has ended (its requests may still be running).
    ended: Option<Result<(), hyper::Error>>,
    requests: FuturesUnordered<StreamFuture>,
    /// What the connection's executor and wakers share with this task.
    shared: Arc<RequestsShared>,
}

impl<IO: AsyncRead + AsyncWrite + Send + Unpin + 'static> ConnectionTask<IO> {
    fn new(io: IO, router: GrpcRouter) -> Self {
        let executor = ConnectionRequests::default();
        let mut builder = hyper::server::conn::http2::Builder::new(executor.clone());
        builder
            .timer(TokioTimer::new())
            .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
            // gRPC has no use for a Date header, which hyper would encode into every response.
            .auto_date_header(false);
        ConnectionTask {
            connection: Box::pin(builder.serve_connection(TokioIo::new(io), router)),
            ended: None,
            requests: FuturesUnordered::new(),
            shared: executor.shared,
        }
    }

    /// Sends GOAWAY: the requests already started finish, no new one is accepted.
    fn graceful_shutdown(&mut self) {
        if self.ended.is_none() {
            self.connection.as_mut().graceful_shutdown();
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Send + Unpin + 'static> Future for ConnectionTask<IO> {
    type Output = Result<(), hyper::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let ConnectionTask {
            connection,
            ended,
            requests,
            shared,
        } = &mut *self;
        shared.task.register(cx.waker());
        shared.polling.store(true, Ordering::SeqCst);
        let waker = futures::task::waker_ref(shared);
        let mut inner = Context::from_waker(&waker);
        // Poll whatever was woken, requests first so that the connection then writes
        // what they sent in one go, and go round while polling woke more (a response
        // that was given send capacity, a request the connection read) within a bound.
        // FuturesUnordered itself hands back control once two of its futures woke
        // themselves while being polled, as responses waiting for capacity do; with a
        // hundred watch streams on a connection, letting that end the task's turn sent the
        // connection to the back of the run queue every couple of streams.
        let mut passes = 0;
        let settled = loop {
            let _ = shared.take_woken();
            while let Poll::Ready(Some(())) = requests.poll_next_unpin(&mut inner) {}
            if ended.is_none() {
                if let Poll::Ready(result) = connection.as_mut().poll(&mut inner) {
                    *ended = Some(result);
                }
            }
            requests.extend(shared.take_started());
            if !shared.take_woken() {
                break true;
            }
            passes += 1;
            if passes > MIN_PASSES_PER_POLL.max(requests.len()) {
                break false;
            }
        };
        shared.polling.store(false, Ordering::SeqCst);
        // Woken after the last look, or the bound was hit: come back after the other tasks
        // had their turn.
        if !settled || shared.woken.load(Ordering::SeqCst) {
            cx.waker().wake_by_ref();
        }
        match ended.take() {
            Some(result) if requests.is_empty() => Poll::Ready(result),
            not_done => {
                *ended = not_done;
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::service_name;

    #[test]
    fn the_service_is_the_path_up_to_the_method() {
        assert_eq!(
            service_name("/bowline.v1.Registry/GetService"),
            Some("bowline.v1.Registry")
        );
        assert_eq!(
            service_name("/grpc.health.v1.Health/Check"),
            Some("grpc.health.v1.Health")
        );
    }

    #[test]
    fn a_path_without_service_and_method_names_nothing() {
        assert_eq!(service_name(""), None);
        assert_eq!(service_name("/"), None);
        assert_eq!(service_name("/bowline.v1.Registry"), None);
        assert_eq!(service_name("bowline.v1.Registry/GetService"), None);
    }
}
