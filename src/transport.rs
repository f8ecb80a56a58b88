//! Server connections that coalesce HTTP/2 writes across streams.
//!
//! h2 writes a connection's frames when its connection task runs, and tokio runs a task
//! woken by the task it is running right after it. So when a revision wakes a hundred
//! watch streams on one connection, each stream's frame went out in a syscall of its own:
//! `perf stat` counted 162,000 `writev` for 177,000 watch events. [`CoalescingStream`]
//! accepts writes into a buffer and, the first time it is asked to flush, yields once
//! (waking itself) so that every stream already runnable adds its frames first; the next
//! flush writes them together. A lone response waits for one trip through the scheduler.
//!
//! [`CoalescingStream`] reports that it does not take vectored writes, though it would:
//! h2 then copies DATA frames below 1 KiB into its own buffer instead of chaining them, and
//! a chained frame must be written out before h2 buffers the next one. With chaining, every
//! put's 314-byte response cost its own deferral and `sendto`.
//!
//! [`CoalescingConnector`] gives outgoing connections (the Raft peers' clients) the same
//! treatment: a gRPC request's HEADERS, DATA and end of stream used to leave in three
//! `writev`s.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::codegen::http::Uri;
use tonic::transport::server::Connected;

/// Buffered bytes above which writes go to the socket before more are accepted.
const MAX_BUFFERED: usize = 256 * 1024;

/// A connection whose writes are buffered and flushed after one deferral.
#[derive(Debug)]
pub struct CoalescingStream<S> {
    inner: S,
    buf: Vec<u8>,
    /// Bytes of `buf` already written to `inner`.
    written: usize,
    /// The pending flush has already yielded once.
    deferred: bool,
}

impl<S> CoalescingStream<S> {
    /// Wraps an accepted connection.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            written: 0,
            deferred: false,
        }
    }
}

impl<S: AsyncWrite + Unpin> CoalescingStream<S> {
    /// Writes the buffer out (until the socket would block).
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.buf.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for CoalescingStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CoalescingStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(data)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        slices: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.buf.len() >= MAX_BUFFERED {
            ready!(self.poll_drain(cx))?;
        }
        let mut n = 0;
        for slice in slices {
            self.buf.extend_from_slice(slice);
            n += slice.len();
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        // See the module's documentation: h2 copies small frames only for non-vectored I/O.
        false
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.buf.len() > self.written && !self.deferred {
            // Let the other runnable streams of this connection add their frames first.
            self.deferred = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        ready!(self.poll_drain(cx))?;
        self.deferred = false;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: Connected> Connected for CoalescingStream<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// Connects to a gRPC endpoint over TCP with Nagle's algorithm off and writes coalesced,
/// for [`tonic::transport::Endpoint::connect_with_connector_lazy`].
#[derive(Debug, Clone, Copy, Default)]
pub struct CoalescingConnector;

type Connecting =
    Pin<Box<dyn Future<Output = io::Result<TokioIo<CoalescingStream<TcpStream>>>> + Send>>;

impl tonic::codegen::Service<Uri> for CoalescingConnector {
    type Response = TokioIo<CoalescingStream<TcpStream>>;
    type Error = io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(async move {
            let host = uri.host().ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("no host in {uri}"))
            })?;
            let port = uri.port_u16().unwrap_or(80);
            // An IPv6 literal comes bracketed in a URI.
            let host = host.trim_start_matches('[').trim_end_matches(']');
            // Worded as hyper's own connector words it: a write forwarded to a leader that
            // could not be connected to was never sent, and `Consensus::submit` retries it
            // only when the error says so.
            let stream = TcpStream::connect((host, port))
                .await
                .map_err(|e| io::Error::new(e.kind(), format!("tcp connect error: {e}")))?;
            stream.set_nodelay(true)?;
            Ok(TokioIo::new(CoalescingStream::new(stream)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn writes_reach_the_peer_only_when_flushed_and_then_all_together() {
        let (near, mut far) = tokio::io::duplex(1 << 20);
        let mut stream = CoalescingStream::new(near);
        stream.write_all(b"first ").await.unwrap();
        let n = stream
            .write_vectored(&[IoSlice::new(b"second "), IoSlice::new(b"third")])
            .await
            .unwrap();
        assert_eq!(n, 12, "a vectored write is taken whole");
        let mut probe = [0u8; 1];
        let nothing_yet =
            tokio::time::timeout(std::time::Duration::from_millis(20), far.read(&mut probe)).await;
        assert!(nothing_yet.is_err(), "bytes arrived before a flush");
        stream.flush().await.unwrap();
        let mut got = vec![0u8; 18];
        far.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"first second third");
    }

    #[tokio::test]
    async fn a_large_write_drains_the_buffer_instead_of_growing_it() {
        let (near, mut far) = tokio::io::duplex(4 * MAX_BUFFERED);
        let mut stream = CoalescingStream::new(near);
        let chunk = vec![7u8; MAX_BUFFERED];
        stream.write_all(&chunk).await.unwrap();
        stream.write_all(&chunk).await.unwrap();
        assert!(stream.buf.len() <= MAX_BUFFERED);
        stream.shutdown().await.unwrap();
        let mut all = Vec::new();
        far.read_to_end(&mut all).await.unwrap();
        assert_eq!(all.len(), 2 * MAX_BUFFERED);
    }

    #[tokio::test]
    async fn the_connector_reaches_a_listener_and_delivers_flushed_bytes() {
        use hyper::rt::Write;
        use tonic::codegen::Service;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let uri: Uri = format!("http://{addr}").parse().unwrap();
        let mut io = CoalescingConnector.call(uri).await.unwrap();
        let (mut far, _) = listener.accept().await.unwrap();
        std::future::poll_fn(|cx| Pin::new(&mut io).poll_write(cx, b"ping"))
            .await
            .unwrap();
        std::future::poll_fn(|cx| Pin::new(&mut io).poll_flush(cx))
            .await
            .unwrap();
        let mut got = [0u8; 4];
        far.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
    }

    #[tokio::test]
    async fn the_connector_fails_cleanly_when_nothing_listens() {
        use tonic::codegen::Service;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let uri: Uri = format!("http://{addr}").parse().unwrap();
        assert!(CoalescingConnector.call(uri).await.is_err());
    }

    #[tokio::test]
    async fn a_refused_connection_reads_as_a_tcp_connect_error() {
        use tonic_health::pb::health_client::HealthClient;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_with_connector_lazy(CoalescingConnector);
        let status = HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(status.message().contains("tcp connect error"), "{status:?}");
    }
}
