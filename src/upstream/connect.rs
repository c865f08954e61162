//! New connections to servers: TCP ([`tcp`], with the `connect` timeout and `TCP_NODELAY`),
//! then TLS when the server wants it. The handshake is part of the connect, bounded by the same
//! timeout, and its failure is a connect failure. Each connection remembers when and how fast
//! it was made ([`ConnectTiming`]).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::Authority;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf, Take};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Timing of the connect that created an upstream connection; every response received on that
/// connection carries it (`ResponseBody::timing`).
#[derive(Debug, Clone, Copy)]
pub struct ConnectTiming {
    /// When the connection was established.
    pub established: Instant,
    /// How long the connect took.
    pub took: Duration,
}

/// Why a connection to a server could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Tcp(Box<dyn std::error::Error + Send + Sync>),
    #[error("tls handshake: {0}")]
    Tls(io::Error),
    #[error("tls handshake timed out after {0:?}")]
    TlsTimeout(Duration),
    #[error("http handshake: {0}")]
    Handshake(hyper::Error),
    /// The HTTP/2 connection this request waited for (another request was making it) failed.
    #[error("the shared http/2 connection could not be made")]
    Shared,
}

/// What a connector needs to speak TLS to one server.
#[derive(Clone)]
struct TlsConnect {
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl std::fmt::Debug for TlsConnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConnect")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Makes connections to servers: TCP with a timeout, then TLS when configured.
#[derive(Debug, Clone)]
pub struct Connector {
    timeout: Duration,
    tls: Option<TlsConnect>,
}

impl Connector {
    pub fn new(connect_timeout: Duration) -> Self {
        Self {
            timeout: connect_timeout,
            tls: None,
        }
    }

    /// How long a connect may take.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn with_tls(
        mut self,
        config: Arc<rustls::ClientConfig>,
        name: ServerName<'static>,
    ) -> Self {
        self.tls = Some(TlsConnect {
            connector: TlsConnector::from(config),
            name,
        });
        self
    }

    /// Connects to the server at `authority`: the address its name resolved to at load.
    pub async fn connect(
        &self,
        authority: &Authority,
    ) -> Result<(Stream, ConnectTiming), ConnectError> {
        let start = Instant::now();
        let addr: SocketAddr = authority.as_str().parse().map_err(|_| {
            ConnectError::Tcp(format!("{authority} is not an address and port").into())
        })?;
        let tcp = tcp(addr, self.timeout)
            .await
            .map_err(|e| ConnectError::Tcp(e.into()))?;
        let stream = match &self.tls {
            None => Stream::Plain(tcp.take(u64::MAX)),
            Some(t) => {
                let handshake = t.connector.connect(t.name.clone(), tcp);
                match tokio::time::timeout_at(start + self.timeout, handshake).await {
                    Ok(Ok(s)) => Stream::Tls(Box::new(s.take(u64::MAX))),
                    Ok(Err(e)) => return Err(ConnectError::Tls(e)),
                    Err(_) => return Err(ConnectError::TlsTimeout(self.timeout)),
                }
            }
        };
        let established = Instant::now();
        let timing = ConnectTiming {
            established,
            took: established - start,
        };
        Ok((stream, timing))
    }
}

/// A TCP connection to `addr`, with `TCP_NODELAY`, made within `timeout` (TCP-mode sessions,
/// and HTTP servers through [`Connector`]). A connect the kernel completes at once, as on
/// loopback or to a server on the same host, is used at once: no wait for the event loop's
/// next round (the first bytes go out in the same pass) and no timer. Otherwise it waits, as
/// tokio's connect does, for the socket to become writable, then reads its error.
pub async fn tcp(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType, ipproto};
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::INET,
        SocketAddr::V6(_) => AddressFamily::INET6,
    };
    let flags = SocketFlags::NONBLOCK | SocketFlags::CLOEXEC;
    let fd = rustix::net::socket_with(family, SocketType::STREAM, flags, Some(ipproto::TCP))?;
    rustix::net::sockopt::set_tcp_nodelay(&fd, true)?;
    let in_progress = match rustix::net::connect(&fd, &addr) {
        Ok(()) => false,
        Err(rustix::io::Errno::INPROGRESS) => true,
        Err(e) => return Err(e.into()),
    };
    let stream = TcpStream::from_std(std::net::TcpStream::from(fd))?;
    // Connected already when it has a peer (ENOTCONN while the handshake goes on, or after it
    // failed: the wait below then returns at once with the error).
    if in_progress && stream.peer_addr().is_err() {
        match tokio::time::timeout(timeout, stream.writable()).await {
            Ok(ready) => ready?,
            Err(_) => {
                let e = format!("timed out after {timeout:?}");
                return Err(io::Error::new(io::ErrorKind::TimedOut, e));
            }
        }
        if let Some(e) = stream.take_error()? {
            return Err(e);
        }
    }
    Ok(stream)
}

/// The most one read from a server takes (HAProxy's buffers are 16 KiB). A read is what waits
/// for a client that does not read its response (`client_io`), and what an idle pooled
/// connection's buffer keeps: reads as large as the socket has ready (up to hyper's 64 KiB
/// limit) held 366 KiB per such client against 91 (docs/benchmarks.md).
const READ_PIECE: usize = 32 * 1024;

/// A connection to a server: plain TCP or TLS over TCP, read [`READ_PIECE`] at most at a time
/// (the `Take`'s limit is set for each read that needs it: [`read_at_most`]).
#[derive(Debug)]
pub enum Stream {
    Plain(Take<TcpStream>),
    Tls(Box<Take<TlsStream<TcpStream>>>),
}

/// One read of at most `max` bytes: through the [`Take`]'s limit only when `buf` has room for
/// more, else straight from the reader (the usual small read costs nothing extra). Used for
/// server reads ([`READ_PIECE`]) and for client reads that must stop at the head limit.
#[inline]
pub(crate) fn read_at_most<R: AsyncRead + Unpin>(
    r: &mut Take<R>,
    max: usize,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
) -> Poll<io::Result<()>> {
    if buf.remaining() <= max {
        return Pin::new(r.get_mut()).poll_read(cx, buf);
    }
    r.set_limit(max as u64);
    Pin::new(r).poll_read(cx, buf)
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => read_at_most(s, READ_PIECE, cx, buf),
            Stream::Tls(s) => read_at_most(s, READ_PIECE, cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s.get_mut()).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.get_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s.get_mut()).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.get_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s.get_mut()).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.get_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s.get_mut()).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.get_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.get_ref().is_write_vectored(),
            Stream::Tls(s) => s.get_ref().is_write_vectored(),
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    use super::*;

    #[tokio::test]
    async fn a_read_from_a_server_takes_one_piece_at_most() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        let len = 3 * READ_PIECE;
        // Written at once where the socket's buffer takes it all, in its own task where not.
        tokio::spawn(async move { server.write_all(&vec![b'x'; len]).await.unwrap() });
        let mut stream = Stream::Plain(tcp.take(u64::MAX));
        let mut buf = vec![0u8; 4 * READ_PIECE];
        let mut total = 0;
        while total < len {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0 && n <= READ_PIECE, "read {n} bytes");
            total += n;
        }
        // Each read is a fresh piece: the limit does not run down.
        assert_eq!(total, len);
    }

    #[tokio::test]
    async fn a_tcp_connect_on_loopback_is_made_at_once_with_nodelay() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stream = tcp(addr, Duration::from_secs(5)).await.unwrap();
        assert_eq!(stream.peer_addr().unwrap(), addr);
        assert!(stream.nodelay().unwrap());
        let (mut server, _) = listener.accept().await.unwrap();
        server.write_all(b"hi").await.unwrap();
        let mut got = [0u8; 2];
        let mut stream = stream;
        stream.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hi");
    }

    #[tokio::test]
    async fn a_refused_tcp_connect_is_an_error() {
        let addr = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        // The listener is gone: nothing listens there.
        let err = tcp(addr, Duration::from_secs(5)).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
    }

    /// A server whose listen queue is full drops the SYN: the connect waits, and ends at the
    /// timeout.
    #[tokio::test(start_paused = true)]
    async fn a_tcp_connect_that_gets_no_answer_times_out() {
        let listener =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        listener
            .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        // A queue of one connection, taken by the first.
        listener.listen(0).unwrap();
        let addr = listener.local_addr().unwrap().as_socket().unwrap();
        let _first = std::net::TcpStream::connect(addr).unwrap();
        let start = tokio::time::Instant::now();
        let err = tcp(addr, Duration::from_secs(3)).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(err.to_string(), "timed out after 3s");
        assert_eq!(start.elapsed(), Duration::from_secs(3));
    }
}
