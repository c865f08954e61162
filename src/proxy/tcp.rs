//! L4 (TCP mode) building blocks: relaying bytes both ways with HAProxy's idle timeouts and
//! half-close, writing a PROXY protocol header, and reading the TLS server name from a
//! ClientHello without consuming it (for SNI routing without terminating TLS).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::config::SendProxy;
use crate::proxy::timer::LazyTimer;
use crate::tls::hello::{self, Hello};

/// The PROXY protocol header announcing a connection from `client` to `local` (the address
/// the client connected to).
pub fn proxy_header(version: SendProxy, client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let (client, local) = same_family(client, local);
    match version {
        SendProxy::V1 => {
            let addresses: ppp::v1::Addresses = (client, local).into();
            addresses.to_string().into_bytes()
        }
        SendProxy::V2 => ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (client, local),
        )
        .build()
        .unwrap_or_default(),
    }
}

/// Both addresses in one family (IPv4-mapped IPv6 shown as IPv4, else both as IPv6), as the
/// PROXY protocol requires.
fn same_family(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    let canon = |s: SocketAddr| SocketAddr::new(s.ip().to_canonical(), s.port());
    let (a, b) = (canon(a), canon(b));
    match (a, b) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) | (SocketAddr::V6(_), SocketAddr::V6(_)) => (a, b),
        _ => {
            let v6 = |s: SocketAddr| match s {
                SocketAddr::V4(v4) => SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()),
                v6 => v6,
            };
            (v6(a), v6(b))
        }
    }
}

/// Reads the start of a TLS connection until its ClientHello is complete (at most `limit`
/// bytes, for at most `timeout`) and returns the server name it asks for, with every byte
/// read so far, to be sent on to the server untouched. A client silent for `idle` meanwhile
/// (`timeout client`) fails it with `TimedOut`, as HAProxy closes such a client without
/// connecting to a server.
pub async fn peek_sni<R: AsyncRead + Unpin>(
    stream: &mut R,
    limit: usize,
    timeout: Duration,
    idle: Duration,
) -> io::Result<(Option<String>, Vec<u8>)> {
    let mut buffered = Vec::with_capacity(1024);
    let read = async {
        loop {
            let mut chunk = [0u8; 2048];
            // Never past `limit`: a longer hello is no hello.
            let room = limit.saturating_sub(buffered.len()).min(chunk.len());
            let n = match tokio::time::timeout(idle, stream.read(&mut chunk[..room])).await {
                Ok(read) => read?,
                Err(_) => {
                    let e = io::Error::new(io::ErrorKind::TimedOut, "client timeout");
                    return Err(e);
                }
            };
            if n == 0 {
                return Ok::<_, io::Error>(None);
            }
            buffered.extend_from_slice(&chunk[..n]);
            match hello::server_name(&buffered) {
                Hello::Complete(name) => return Ok(name),
                Hello::Incomplete if buffered.len() < limit => continue,
                // Not TLS, or a hello too long or malformed: no name, bytes forwarded as they are.
                Hello::Incomplete | Hello::NotHello => return Ok(None),
            }
        }
    };
    let name = match tokio::time::timeout(timeout, read).await {
        Ok(result) => result?,
        Err(_) => None,
    };
    Ok((name, buffered))
}

/// Byte counts of a finished relay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Relayed {
    /// Client to server.
    pub up: u64,
    /// Server to client.
    pub down: u64,
}

/// Buffer per direction of a relay: large enough that a bulk transfer moves in few system
/// calls, small enough that many idle sessions cost little (two per session).
pub const RELAY_BUFFER: usize = 64 * 1024;

/// Relays bytes between `client` and `server` until both directions are closed. An EOF on one
/// side is passed on as a half-close (shutdown of the other side's write half) while the other
/// direction goes on. `client_idle` / `server_idle` are HAProxy's `timeout client` / `timeout
/// server`: the relay fails with `TimedOut` when a side that is expected to send stays silent
/// that long while nothing moves in the other direction either. The bytes read from each side
/// are counted whether the relay ends well or not.
pub async fn relay<C, S>(
    client: C,
    server: S,
    client_idle: Duration,
    server_idle: Duration,
) -> (Relayed, io::Result<()>)
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Activity::new();
    let mut client = Idle::new(client, client_idle, &activity, &activity.up);
    let mut server = Idle::new(server, server_idle, &activity, &activity.down);
    let result = tokio::io::copy_bidirectional_with_sizes(
        &mut client,
        &mut server,
        RELAY_BUFFER,
        RELAY_BUFFER,
    )
    .await;
    let relayed = Relayed {
        up: activity.up.load(Ordering::Relaxed),
        down: activity.down.load(Ordering::Relaxed),
    };
    (relayed, result.map(|_| ()))
}

/// When bytes last moved in either direction of a relay, and how many were read each way.
struct Activity {
    base: Instant,
    nanos: AtomicU64,
    /// Read from the client.
    up: AtomicU64,
    /// Read from the server.
    down: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            base: Instant::now(),
            nanos: AtomicU64::new(0),
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let nanos = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.nanos.store(nanos, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.base + Duration::from_nanos(self.nanos.load(Ordering::Relaxed))
    }
}

/// One side of a relay: reads time out after `idle` without traffic in either direction;
/// bytes read are added to `read`.
struct Idle<'a, T> {
    io: T,
    idle: Duration,
    activity: &'a Activity,
    read: &'a AtomicU64,
    timer: LazyTimer,
}

impl<'a, T> Idle<'a, T> {
    fn new(io: T, idle: Duration, activity: &'a Activity, read: &'a AtomicU64) -> Self {
        Self {
            io,
            idle,
            activity,
            read,
            timer: LazyTimer::default(),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Idle<'_, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                this.activity.touch();
                let n = (buf.filled().len() - before) as u64;
                this.read.fetch_add(n, Ordering::Relaxed);
                Poll::Ready(r)
            }
            Poll::Pending => {
                let deadline = this.activity.last() + this.idle;
                if this.timer.poll_expired(deadline, cx) {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "idle timeout",
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Idle<'_, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let res = Pin::new(&mut this.io).poll_write(cx, buf);
        if matches!(res, Poll::Ready(Ok(_))) {
            this.activity.touch();
        }
        res
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncWriteExt, duplex};

    use super::*;

    #[test]
    fn proxy_headers_parse_back() {
        let client: SocketAddr = "192.0.2.1:40000".parse().unwrap();
        let local: SocketAddr = "[::ffff:198.51.100.2]:443".parse().unwrap();
        let v1 = proxy_header(SendProxy::V1, client, local);
        assert_eq!(v1, b"PROXY TCP4 192.0.2.1 198.51.100.2 40000 443\r\n");
        let v2 = proxy_header(SendProxy::V2, client, local);
        let parsed = ppp::v2::Header::try_from(&v2[..]).expect("a v2 header");
        assert_eq!(
            parsed.addresses,
            ppp::v2::Addresses::from((client, "198.51.100.2:443".parse::<SocketAddr>().unwrap()))
        );
        let mixed = proxy_header(
            SendProxy::V1,
            "[2001:db8::1]:1".parse().unwrap(),
            "10.0.0.1:2".parse().unwrap(),
        );
        assert_eq!(mixed, b"PROXY TCP6 2001:db8::1 ::ffff:10.0.0.1 1 2\r\n");
    }

    #[tokio::test]
    async fn relay_passes_half_close_and_counts_bytes() {
        let (client, mut client_peer) = duplex(64);
        let (server, mut server_peer) = duplex(64);
        let relay = tokio::spawn(relay(
            client,
            server,
            Duration::from_secs(5),
            Duration::from_secs(5),
        ));
        client_peer.write_all(b"ping").await.unwrap();
        client_peer.shutdown().await.unwrap();
        let mut got = Vec::new();
        server_peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"ping", "the client's EOF reached the server");
        // The other direction still works after the half-close.
        server_peer.write_all(b"pong!").await.unwrap();
        drop(server_peer);
        let mut back = Vec::new();
        client_peer.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"pong!");
        let (relayed, result) = relay.await.unwrap();
        result.unwrap();
        assert_eq!(relayed, Relayed { up: 4, down: 5 });
    }

    #[tokio::test(start_paused = true)]
    async fn silent_sides_time_out() {
        let (client, _client_peer) = duplex(64);
        let (server, _server_peer) = duplex(64);
        let start = Instant::now();
        let (_, result) = relay(
            client,
            server,
            Duration::from_secs(3),
            Duration::from_secs(5),
        )
        .await;
        let err = result.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(3),
            "the shorter idle timeout"
        );
    }

    #[tokio::test]
    async fn sni_is_read_from_a_client_hello_and_the_bytes_are_kept() {
        let (mut server_side, client_side) = duplex(16 * 1024);
        let config = rustls::ClientConfig::builder_with_provider(crate::tls::certs::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
        tokio::spawn(async move {
            let name = rustls::pki_types::ServerName::try_from("shop.example").unwrap();
            let _ = connector.connect(name, client_side).await;
        });
        let five = Duration::from_secs(5);
        let (name, bytes) = peek_sni(&mut server_side, 16 * 1024, five, five)
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("shop.example"));
        assert_eq!(bytes[0], 0x16, "a TLS handshake record, kept to forward");
        let (none, plain) = peek_sni(&mut &b"GET / HTTP/1.1\r\n\r\n"[..], 1024, five, five)
            .await
            .unwrap();
        assert_eq!((none, plain.len()), (None, 18));
    }

    /// A TLS 1.0 hello, which rustls would not read, sent in pieces: its name, and every byte.
    #[tokio::test]
    async fn the_name_of_an_old_hello_in_pieces_is_read() {
        use crate::tls::hello::tests::{hello_message, records, sni};
        let hello = records(&hello_message(0x0301, &[sni(b"legacy.example")]), 50);
        let (mut server_side, mut client_side) = duplex(16 * 1024);
        let sent = hello.clone();
        tokio::spawn(async move {
            for piece in sent.chunks(7) {
                client_side.write_all(piece).await.unwrap();
                tokio::task::yield_now().await;
            }
            client_side
        });
        let five = Duration::from_secs(5);
        let (name, bytes) = peek_sni(&mut server_side, 32 * 1024, five, five)
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("legacy.example"));
        assert_eq!(bytes, hello);
    }

    /// A client silent for `timeout client` while its hello is awaited is cut then, before
    /// `inspect_delay`, as HAProxy closes it; with the delay shorter, the delay ends the wait
    /// and the connection goes on without a name.
    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_cut_at_timeout_client_during_inspection() {
        let (mut server_side, mut client_side) = duplex(1024);
        client_side.write_all(b"\x16\x03\x01").await.unwrap();
        let start = Instant::now();
        let err = peek_sni(
            &mut server_side,
            1024,
            Duration::from_secs(3),
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), Duration::from_secs(1));

        let start = Instant::now();
        let (name, bytes) = peek_sni(
            &mut server_side,
            1024,
            Duration::from_secs(1),
            Duration::from_secs(3),
        )
        .await
        .unwrap();
        assert_eq!((name, bytes.len()), (None, 0));
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        drop(client_side);
    }
}
