//! Which HTTP a client connection speaks, and hyper's connection that serves it.
//!
//! A connection that ALPN did not settle (cleartext, or TLS without ALPN) is HTTP/2 when it
//! starts with the HTTP/2 connection preface, HTTP/1 otherwise. The first read takes whatever
//! the client has sent, up to [`FIRST_READ`] bytes, and hyper is given
//! those bytes before the socket's next ones: a request head that arrived in one segment is
//! parsed from that one read, into hyper's first 8 KiB buffer.
//!
//! hyper-util's automatic builder, used before, read exactly the preface's 24 bytes first. hyper
//! then parsed a head from those 24 bytes, found it incomplete and read again: one more system
//! call per connection, and a read buffer grown from 8 KiB to 16 KiB, with a copy, kept for the
//! connection's life.

use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use hyper::body::{Body, Incoming};
use hyper::rt::bounds::Http2ServerConnExec;
use hyper::server::conn::{http1, http2};
use hyper::service::HttpService;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::io::poll_read_buf;

use crate::proxy::client_io::H2_PREFACE;
use crate::proxy::graceful::GracefulConn;

/// The most a connection's first read takes: a usual request head whole.
pub const FIRST_READ: usize = 4096;

/// The error a served connection ends with: hyper's, or the first read's.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// hyper's connection builders, one per HTTP version.
#[derive(Clone)]
pub struct Builders {
    pub http1: http1::Builder,
    pub http2: http2::Builder<TokioExecutor>,
}

pin_project_lite::pin_project! {
    /// An HTTP client connection: its first bytes awaited, then served by hyper (HTTP/1 with
    /// upgrades, or HTTP/2).
    pub struct Served<I, S>
    where
        S: HttpService<Incoming>,
    {
        #[pin]
        state: State<I, S>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<I, S>
    where
        S: HttpService<Incoming>,
    {
        Detecting {
            io: Option<I>,
            first: BytesMut,
            service: Option<S>,
            builders: Option<Builders>,
            // A graceful stop came before the first bytes: the connection ends unserved.
            stopped: bool,
        },
        Http1 {
            #[pin]
            conn: http1::UpgradeableConnection<TokioIo<Rewind<I>>, S>,
        },
        // Boxed: an HTTP/2 connection's state is about twice an HTTP/1 one's, and would
        // otherwise size every connection.
        Http2 {
            conn: Pin<Box<http2::Connection<TokioIo<Rewind<I>>, S, TokioExecutor>>>,
        },
    }
}

impl<I, S, B> Served<I, S>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    B: Body + 'static,
    B::Error: Into<BoxError>,
    TokioExecutor: Http2ServerConnExec<S::Future, B>,
{
    /// HTTP/1 or HTTP/2 on `io`, as its first bytes tell.
    pub fn detect(io: I, service: S, builders: Builders) -> Self {
        Served {
            state: State::Detecting {
                io: Some(io),
                first: BytesMut::with_capacity(FIRST_READ),
                service: Some(service),
                builders: Some(builders),
                stopped: false,
            },
        }
    }

    /// HTTP/1 (with upgrades) on `io` (chosen by ALPN).
    pub fn http1(io: I, service: S, builders: &Builders) -> Self {
        Served {
            state: Self::serving(false, Rewind::new(Bytes::new(), io), service, builders),
        }
    }

    /// HTTP/2 on `io` (chosen by ALPN).
    pub fn http2(io: I, service: S, builders: &Builders) -> Self {
        Served {
            state: Self::serving(true, Rewind::new(Bytes::new(), io), service, builders),
        }
    }

    /// hyper's connection serving `io`: HTTP/2, or HTTP/1 with upgrades.
    fn serving(http2: bool, io: Rewind<I>, service: S, builders: &Builders) -> State<I, S> {
        let io = TokioIo::new(io);
        if http2 {
            State::Http2 {
                conn: Box::pin(builders.http2.serve_connection(io, service)),
            }
        } else {
            State::Http1 {
                conn: builders.http1.serve_connection(io, service).with_upgrades(),
            }
        }
    }
}

impl<I, S, B> Future for Served<I, S>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    B: Body + 'static,
    B::Error: Into<BoxError>,
    TokioExecutor: Http2ServerConnExec<S::Future, B>,
{
    type Output = Result<(), BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Detecting {
                    io,
                    first,
                    service,
                    builders,
                    stopped,
                } => {
                    if *stopped {
                        return Poll::Ready(Ok(()));
                    }
                    let Some(socket) = io.as_mut() else {
                        return Poll::Ready(Ok(()));
                    };
                    let http2 = ready!(poll_detect(socket, first, cx))?;
                    let (Some(socket), Some(service), Some(builders)) =
                        (io.take(), service.take(), builders.take())
                    else {
                        return Poll::Ready(Ok(()));
                    };
                    let io = Rewind::new(first.split().freeze(), socket);
                    state.set(Self::serving(http2, io, service, &builders));
                }
                StateProj::Http1 { conn } => return conn.poll(cx).map_err(Into::into),
                StateProj::Http2 { conn } => return conn.as_mut().poll(cx).map_err(Into::into),
            }
        }
    }
}

impl<I, S, B> GracefulConn for Served<I, S>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    B: Body + 'static,
    B::Error: Into<BoxError>,
    TokioExecutor: Http2ServerConnExec<S::Future, B>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        match self.project().state.project() {
            StateProj::Detecting { stopped, .. } => *stopped = true,
            StateProj::Http1 { conn } => conn.graceful_shutdown(),
            StateProj::Http2 { conn } => conn.as_mut().graceful_shutdown(),
        }
    }
}

/// Reads until the first bytes tell the HTTP/2 preface from anything else: `true` for HTTP/2.
/// An EOF first is HTTP/1's to handle (hyper closes the connection quietly).
fn poll_detect<I: AsyncRead + Unpin>(
    io: &mut I,
    first: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<bool>> {
    loop {
        if ready!(poll_read_buf(Pin::new(&mut *io), cx, first))? == 0 {
            return Poll::Ready(Ok(false));
        }
        let seen = first.len().min(H2_PREFACE.len());
        if first[..seen] != H2_PREFACE[..seen] {
            return Poll::Ready(Ok(false));
        }
        if seen == H2_PREFACE.len() {
            return Poll::Ready(Ok(true));
        }
    }
}

/// A socket whose first bytes were read already: reads give those again first.
#[derive(Debug)]
pub struct Rewind<I> {
    first: Bytes,
    io: I,
}

impl<I> Rewind<I> {
    fn new(first: Bytes, io: I) -> Self {
        Self { first, io }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewind<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.first.is_empty() {
            return Pin::new(&mut self.io).poll_read(cx, buf);
        }
        let n = self.first.len().min(buf.remaining());
        buf.put_slice(&self.first[..n]);
        self.first.advance(n);
        if self.first.is_empty() {
            // Not even an empty view may keep the first read's buffer alive.
            self.first = Bytes::new();
        }
        Poll::Ready(Ok(()))
    }
}

crate::write_through::write_through!(Rewind, io);

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http::{Request, Response};
    use http_body_util::Full;
    use hyper::service::service_fn;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    use super::*;
    use crate::proxy::test_io::Counted;

    fn builders() -> Builders {
        Builders {
            http1: http1::Builder::new(),
            http2: http2::Builder::new(TokioExecutor::new()),
        }
    }

    async fn hello(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
        Ok(Response::new(Full::new(Bytes::from(format!(
            "{} {}",
            req.version() == http::Version::HTTP_2,
            req.uri().path()
        )))))
    }

    /// A request head that arrived in one segment is served from one read of the socket,
    /// the read that told HTTP/1 from HTTP/2.
    #[tokio::test]
    async fn a_head_in_one_segment_takes_one_read() {
        let (mut client, server) = duplex(64 * 1024);
        let (io, counts) = Counted::new(server);
        let served = tokio::spawn(Served::detect(io, service_fn(hello), builders()));
        client
            .write_all(b"GET /one/read HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.ends_with("false /one/read"), "{answer}");
        served.await.unwrap().unwrap();
        assert_eq!(counts.reads(), 1);
    }

    /// The HTTP/2 preface is told apart however it is split, and anything that strays from it
    /// (even within its first bytes), or an EOF, is HTTP/1.
    /// Gives its pieces one per read, then EOF.
    struct Pieces(std::collections::VecDeque<&'static [u8]>);

    impl AsyncRead for Pieces {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if let Some(piece) = self.0.pop_front() {
                buf.put_slice(piece);
            }
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn the_preface_is_told_from_http1_however_it_arrives() {
        let detect = |pieces: &[&'static [u8]]| {
            let mut first = BytesMut::with_capacity(FIRST_READ);
            let mut io = Pieces(pieces.iter().copied().collect());
            let mut cx = Context::from_waker(std::task::Waker::noop());
            match poll_detect(&mut io, &mut first, &mut cx) {
                Poll::Ready(result) => result.unwrap(),
                Poll::Pending => panic!("undecided after {pieces:?}"),
            }
        };
        assert!(detect(&[H2_PREFACE]));
        assert!(detect(&[b"P", b"RI * HTTP/2.0\r\n", b"\r\nSM\r\n\r\n"]));
        assert!(!detect(&[b"GET / HTTP/1.1\r\n\r\n"]));
        assert!(!detect(&[b"P", b"OST / HTTP/1.1\r\n\r\n"]));
        assert!(!detect(&[b"PRI * HTTP/1.1\r\n\r\n"]));
        assert!(!detect(&[b"PRI"]));
    }

    /// The first bytes are read again first, then the socket's; once read, the first read's
    /// buffer is let go (an idle connection does not keep it).
    #[tokio::test]
    async fn the_first_bytes_come_first_and_are_then_let_go() {
        let first = Bytes::copy_from_slice(b"GET / HT");
        let probe = first.clone();
        let mut io = Rewind::new(first, Pieces([&b"TP/1.1"[..]].into()));
        let mut buf = [0u8; 5];
        io.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"GET /");
        assert!(!probe.is_unique());
        let mut rest = Vec::new();
        io.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b" HTTP/1.1");
        assert!(probe.is_unique());
    }

    /// A graceful stop before the first bytes ends the connection unserved.
    #[tokio::test]
    async fn a_stop_before_the_first_bytes_ends_the_connection() {
        let (_client, server) = duplex(1024);
        let mut served = std::pin::pin!(Served::detect(server, service_fn(hello), builders()));
        let pending = std::future::poll_fn(|cx| Poll::Ready(served.as_mut().poll(cx).is_pending()));
        assert!(pending.await);
        served.as_mut().graceful_shutdown();
        let ended = tokio::time::timeout(std::time::Duration::from_secs(10), served).await;
        ended.expect("the connection still waits").unwrap();
    }
}
