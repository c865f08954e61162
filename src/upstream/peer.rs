//! What an HTTP/2 server's settings allow, as its connection sees them: whether it accepts
//! extended CONNECT (RFC 8441, WebSocket over HTTP/2), and how many concurrent streams it
//! takes (`SETTINGS_MAX_CONCURRENT_STREAMS`, which the pool fills before it opens another
//! connection).
//!
//! A client must not send `:protocol` until the server has said, in its SETTINGS, that it
//! takes it (RFC 8441 3); the HTTP/2 library neither holds such a request back nor refuses
//! it. A server's SETTINGS frame is the first thing it sends (RFC 9113 3.4). hyper reads and
//! processes frames in a task of its own, and only the connection handle that wasp's task
//! drives can tell the settings. So the socket wakes that task whenever it has read bytes
//! ([`WakeOnRead`]), and the task publishes the settings after every poll ([`drive`]): on a
//! worker's single-threaded runtime hyper's task has finished with the frames by then. A
//! request that needs extended CONNECT waits for the server's first word
//! ([`Settings::allow_connect`]); the stream limit is read as it stands (before the first
//! SETTINGS, the HTTP/2 library's own assumption of 100).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::watch;

/// Whether a socket has read bytes yet, and who to wake each time it does.
#[derive(Default)]
pub(crate) struct Heard {
    read: AtomicBool,
    waker: AtomicWaker,
}

impl Heard {
    fn mark(&self) {
        self.read.store(true, Ordering::Relaxed);
        self.waker.wake();
    }

    fn is_read(&self) -> bool {
        self.read.load(Ordering::Relaxed)
    }
}

/// A socket that wakes its connection's driver each time it has read bytes.
pub(crate) struct WakeOnRead<S> {
    inner: S,
    heard: Arc<Heard>,
}

impl<S> WakeOnRead<S> {
    /// `inner`, and what its reads mark.
    pub(crate) fn new(inner: S) -> (Self, Arc<Heard>) {
        let heard = Arc::new(Heard::default());
        let io = WakeOnRead {
            inner,
            heard: Arc::clone(&heard),
        };
        (io, heard)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WakeOnRead<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.heard.mark();
        }
        polled
    }
}

crate::write_through::write_through!(WakeOnRead, inner);

/// What a connection reads off its HTTP/2 library after a poll.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Said {
    /// Whether the server allows extended CONNECT.
    pub(crate) extended_connect: bool,
    /// How many concurrent streams the server takes.
    pub(crate) max_streams: usize,
}

/// An HTTP/2 server's settings that requests need: whether it allows extended CONNECT
/// (`None` until its first SETTINGS has been read), and its stream limit as it stands.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    connect: watch::Receiver<Option<bool>>,
    max_streams: Arc<AtomicUsize>,
}

impl Settings {
    /// Whether the server allows extended CONNECT, once it has said (waiting for its first
    /// SETTINGS on a new connection; the caller bounds the wait). `false` also when the
    /// connection ended first.
    pub(crate) async fn allow_connect(&self) -> bool {
        let mut rx = self.connect.clone();
        rx.wait_for(Option::is_some)
            .await
            .is_ok_and(|known| *known == Some(true))
    }

    /// Waits until the server's first SETTINGS have been read, or the connection has ended.
    pub(crate) async fn known(&self) {
        let mut rx = self.connect.clone();
        let _ = rx.wait_for(Option::is_some).await;
    }

    /// How many concurrent streams the server takes on this connection, as last read.
    pub(crate) fn max_streams(&self) -> usize {
        self.max_streams.load(Ordering::Relaxed)
    }
}

/// Drives an HTTP/2 connection (`conn`, whose socket's reads mark `heard`) to its end,
/// publishing what `read` reads off it after every poll, which every read of the socket
/// brings about (the extended CONNECT setting only once the server has been heard from).
/// Returns the connection's outcome, and what requests read the settings from.
pub(crate) fn drive<C, T>(
    conn: C,
    heard: Arc<Heard>,
    read: fn(&C) -> Said,
) -> (impl Future<Output = T>, Settings)
where
    C: Future<Output = T>,
{
    let (tx, rx) = watch::channel(None);
    let mut conn = Box::pin(conn);
    let max_streams = Arc::new(AtomicUsize::new(read(conn.as_ref().get_ref()).max_streams));
    let settings = Settings {
        connect: rx,
        max_streams: Arc::clone(&max_streams),
    };
    let driven = std::future::poll_fn(move |cx| {
        heard.waker.register(cx.waker());
        let polled = conn.as_mut().poll(cx);
        let said = read(conn.as_ref().get_ref());
        if max_streams.load(Ordering::Relaxed) != said.max_streams {
            max_streams.store(said.max_streams, Ordering::Relaxed);
        }
        if heard.is_read() {
            let now = Some(said.extended_connect);
            tx.send_if_modified(|known| {
                let changed = *known != now;
                *known = now;
                changed
            });
        }
        polled
    });
    (driven, settings)
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A waker that counts its wake-ups.
    struct Counted(AtomicUsize);

    impl std::task::Wake for Counted {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[tokio::test]
    async fn every_read_with_bytes_wakes_the_driver() {
        let (mut near, far) = tokio::io::duplex(64);
        let (mut io, heard) = WakeOnRead::new(far);
        let driver = Arc::new(Counted(AtomicUsize::new(0)));
        let mut buf = [0u8; 8];
        let mut cx = Context::from_waker(Waker::noop());
        let mut empty = ReadBuf::new(&mut buf);
        heard.waker.register(&Waker::from(Arc::clone(&driver)));
        assert!(
            Pin::new(&mut io)
                .poll_read(&mut cx, &mut empty)
                .is_pending()
        );
        assert!(!heard.is_read());
        assert_eq!(driver.0.load(Ordering::Relaxed), 0, "no bytes, no wake-up");
        for (n, frame) in [&b"settings"[..], b"later"].into_iter().enumerate() {
            heard.waker.register(&Waker::from(Arc::clone(&driver)));
            near.write_all(frame).await.unwrap();
            assert_eq!(io.read(&mut buf).await.unwrap(), frame.len());
            assert!(heard.is_read());
            assert_eq!(driver.0.load(Ordering::Relaxed), n + 1);
        }
    }

    /// A stand-in connection: pending until told to end (then woken through `wake`), with
    /// settings the test changes.
    struct Conn {
        enabled: Arc<AtomicBool>,
        limit: Arc<AtomicUsize>,
        end: Arc<AtomicBool>,
        wake: Arc<AtomicWaker>,
    }

    impl Future for Conn {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.wake.register(cx.waker());
            if self.end.load(Ordering::Relaxed) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
    }

    fn setting(c: &Conn) -> Said {
        Said {
            extended_connect: c.enabled.load(Ordering::Relaxed),
            max_streams: c.limit.load(Ordering::Relaxed),
        }
    }

    #[tokio::test]
    async fn requests_wait_for_the_first_word_and_see_the_latest_setting() {
        let enabled = Arc::new(AtomicBool::new(true));
        let limit = Arc::new(AtomicUsize::new(100));
        let end = Arc::new(AtomicBool::new(false));
        let wake = Arc::new(AtomicWaker::new());
        let heard = Arc::new(Heard::default());
        let conn = Conn {
            enabled: Arc::clone(&enabled),
            limit: Arc::clone(&limit),
            end: Arc::clone(&end),
            wake: Arc::clone(&wake),
        };
        let (driven, settings) = drive(conn, Arc::clone(&heard), setting);
        let driver = tokio::spawn(driven);
        // Nothing heard yet: a request waits, even though the setting reads true.
        let waiting = tokio::spawn({
            let settings = settings.clone();
            async move { settings.allow_connect().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        // The stream limit reads as it stands, heard or not.
        assert_eq!(settings.max_streams(), 100);
        // The server's first bytes wake the driver, which publishes the settings.
        limit.store(2, Ordering::Relaxed);
        heard.mark();
        assert!(waiting.await.unwrap());
        assert_eq!(settings.max_streams(), 2);
        // A later SETTINGS turning it off is seen once the connection is polled again.
        enabled.store(false, Ordering::Relaxed);
        limit.store(7, Ordering::Relaxed);
        end.store(true, Ordering::Relaxed);
        wake.wake();
        driver.await.unwrap();
        assert!(!settings.allow_connect().await);
        assert_eq!(settings.max_streams(), 7);
        // A connection that ends before the server said anything allows nothing.
        let (never, unheard) = drive(
            Conn {
                enabled: Arc::new(AtomicBool::new(true)),
                limit: Arc::new(AtomicUsize::new(100)),
                end: Arc::new(AtomicBool::new(true)),
                wake: Arc::new(AtomicWaker::new()),
            },
            Arc::new(Heard::default()),
            setting,
        );
        never.await;
        assert!(!unheard.allow_connect().await);
    }
}
