//! One connection to the proxy: who is on the other end, when it last moved a byte (idle
//! time), and its place among the proxy's connections, held until it (or the WebSocket tunnel
//! it became) ends.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use crate::status::Status;

/// Who is on the other end of a connection.
#[derive(Clone)]
pub(crate) struct Peer {
    pub(crate) ip: IpAddr,
    pub(crate) activity: Arc<Activity>,
    /// The connection's slot of the proxy's total: a WebSocket tunnel keeps it after the HTTP
    /// connection it came from has ended.
    pub(crate) slot: Arc<Held>,
}

/// When a connection last moved a byte, and how many of its requests are being answered.
#[derive(Debug)]
pub(crate) struct Activity {
    epoch: Instant,
    last_ms: AtomicU64,
    pub(crate) in_flight: AtomicUsize,
}

impl Activity {
    pub(crate) fn new() -> Self {
        Self {
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn quiet_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }

    /// Resolves once the connection has been idle for `limit`: no byte moved and no request in
    /// flight.
    pub(crate) async fn idle(&self, limit: Duration) {
        loop {
            let quiet = self.quiet_for();
            if quiet >= limit && self.in_flight.load(Ordering::Acquire) == 0 {
                return;
            }
            tokio::time::sleep(limit.saturating_sub(quiet).max(Duration::from_millis(100))).await;
        }
    }
}

/// A connection's stream that notes every byte it moves in its [`Activity`].
pub(crate) struct Watched {
    pub(crate) stream: TcpStream,
    pub(crate) activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// A connection's place in the proxy: its slot of the total, and its count in the metrics, held
/// until the connection (or the WebSocket tunnel it became) ends.
pub(crate) struct Held {
    _slot: OwnedSemaphorePermit,
    status: Arc<Status>,
}

impl Held {
    pub(crate) fn new(slot: OwnedSemaphorePermit, status: Arc<Status>) -> Self {
        status.metrics.proxy_connection(1);
        Self {
            _slot: slot,
            status,
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.status.metrics.proxy_connection(-1);
    }
}
