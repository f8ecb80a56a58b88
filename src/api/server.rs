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

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
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
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION);
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
            let connection = builder.serve_connection(TokioIo::new(io), router.clone());
            let mut drain = drain_rx.clone();
            tokio::spawn(async move {
                let mut connection = std::pin::pin!(connection);
                let result = tokio::select! {
                    result = connection.as_mut() => result,
                    _ = drain.changed() => {
                        connection.as_mut().graceful_shutdown();
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
