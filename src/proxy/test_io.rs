//! Sockets for the proxy's unit tests.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What a [`Counted`] socket saw.
#[derive(Debug, Default)]
pub struct Counts {
    /// Reads that brought bytes.
    reads: AtomicUsize,
    /// Shutdowns of the write side.
    shutdowns: AtomicUsize,
}

impl Counts {
    pub fn reads(&self) -> usize {
        self.reads.load(Ordering::Relaxed)
    }

    pub fn shutdowns(&self) -> usize {
        self.shutdowns.load(Ordering::Relaxed)
    }
}

/// A socket that counts its reads that brought bytes and its shutdowns.
#[derive(Debug)]
pub struct Counted<T> {
    io: T,
    counts: Arc<Counts>,
}

impl<T> Counted<T> {
    /// `io`, counted; the counts stay readable after the socket is gone.
    pub fn new(io: T) -> (Self, Arc<Counts>) {
        let counts = Arc::new(Counts::default());
        let counted = Counted {
            io,
            counts: Arc::clone(&counts),
        };
        (counted, counts)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.io).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            self.counts.reads.fetch_add(1, Ordering::Relaxed);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.counts.shutdowns.fetch_add(1, Ordering::Relaxed);
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
