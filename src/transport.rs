//! Server connections that coalesce HTTP/2 writes across streams.
//!
//! h2 writes a connection's frames when its connection task runs, and tokio runs a task
//! woken by the task it is running right after it. So when a revision wakes a hundred
//! watch streams on one connection, each stream's frame went out in a syscall of its own:
//! `perf stat` counted 162,000 `writev` for 177,000 watch events. [`CoalescingStream`]
//! accepts writes into a buffer and, the first time it is asked to flush, yields once
//! (waking itself) so that every stream already runnable adds its frames first; the next
//! flush writes them together. A lone response waits for one trip through the scheduler.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
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
}
