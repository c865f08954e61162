//! `accept_proxy`: the PROXY protocol header (HAProxy's text v1 or binary v2) that a trusted
//! peer, such as an L4 load balancer, sends before its client's bytes to announce the client's
//! address.
//!
//! Only the header's own bytes are consumed. The socket is peeked until the header is complete,
//! then exactly its length is read, so whatever the client sent after it (a TLS ClientHello,
//! an HTTP request, the first bytes of a TCP protocol) stays in the socket for whoever reads
//! next. A header is at most [`V1_MAX`] bytes (v1) or [`V2_MAX`] bytes (v2, TLVs included);
//! anything larger, anything that is not a PROXY header, and a connection that closes before
//! the end of its header are errors, and the caller closes the connection without a word.
//!
//! A v2 `LOCAL` header (a load balancer's own health check, whatever its address block says),
//! v1 `UNKNOWN`, and v2 `PROXY` headers of a family other than TCP over IPv4 or IPv6 (UDP,
//! UNIX, unspecified) announce no client: the connection's own addresses stay, as in HAProxy.
//! TLVs are skipped, but must fill the header exactly.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use rustix::net::RecvFlags;
use tokio::io::{AsyncReadExt, Interest};
use tokio::net::TcpStream;

/// The longest v1 header, `\r\n` included (the protocol's own bound).
pub const V1_MAX: usize = 107;
/// The longest v2 header accepted: the 16-byte preamble, the addresses and the TLVs. The
/// protocol allows 64 KiB; a load balancer's TLVs (a connection id, an SNI, a VPC endpoint id)
/// fit in a few hundred bytes.
pub const V2_MAX: usize = 1024;
/// The first bytes of a v1 header.
const V1_PREFIX: &[u8] = b"PROXY ";
/// The first bytes of a v2 header.
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
/// A v2 header's fixed part: the signature, version and command, family and protocol, length.
const V2_PREAMBLE: usize = 16;

/// What a PROXY protocol header says about its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announced {
    /// The connection carries a client's, from `client` to `local` (the address it connected
    /// to, at the peer).
    Client {
        client: SocketAddr,
        local: SocketAddr,
    },
    /// The peer speaks for itself (v2 `LOCAL`, v1 `UNKNOWN`): the connection's own addresses
    /// apply.
    Local,
}

/// Why a connection from a trusted peer was refused.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("no PROXY protocol header")]
    Missing,
    #[error("PROXY protocol header longer than {0} bytes")]
    TooLong(usize),
    #[error("invalid PROXY protocol header: {0}")]
    Invalid(String),
    #[error("connection closed before the end of the PROXY protocol header")]
    Closed,
    /// Closed without sending a byte, as a load balancer's TCP health check does: not worth
    /// counting or logging above debug (HAProxy's `dontlognull`).
    #[error("connection closed before sending anything")]
    Silent,
    #[error("no complete PROXY protocol header within {0:?}")]
    TimedOut(Duration),
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] io::Error),
}

/// Reads the PROXY protocol header that must start `tcp`, within `timeout` (the frontend's
/// `timeout client`), and nothing after it.
pub async fn read_header(tcp: &mut TcpStream, timeout: Duration) -> Result<Announced, HeaderError> {
    match tokio::time::timeout(timeout, read(tcp)).await {
        Ok(result) => result,
        Err(_) => Err(HeaderError::TimedOut(timeout)),
    }
}

async fn read(tcp: &mut TcpStream) -> Result<Announced, HeaderError> {
    let mut buf = [0u8; V2_MAX];
    let len = loop {
        // Each round costs the task a unit of its cooperative budget, so it yields now and then
        // even if a socket's readiness could not be cleared: a timeout can still end it.
        tokio::task::consume_budget().await;
        let ready = tcp.ready(Interest::READABLE).await?;
        // The peek runs inside `try_io`: while the header is incomplete it answers WouldBlock,
        // which clears the socket's readiness (unless bytes arrived meanwhile), so the next
        // wait lasts until more bytes come. A plain peek would return the same bytes at once,
        // again and again, spinning until the rest arrives.
        let peeked = tcp.try_io(Interest::READABLE, || {
            let (n, _) = rustix::net::recv(&*tcp, &mut buf[..], RecvFlags::PEEK)?;
            match header_len(&buf[..n]) {
                Ok(Some(len)) => Ok(Ok(len)),
                Ok(None) if n == 0 => Ok(Err(HeaderError::Silent)),
                Ok(None) => Err(io::ErrorKind::WouldBlock.into()),
                Err(e) => Ok(Err(e)),
            }
        });
        match peeked {
            Ok(len) => break len?,
            // The peer closed its side: the bytes peeked are all there will be.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && ready.is_read_closed() => {
                return Err(HeaderError::Closed);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e.into()),
        }
    };
    // The peek showed `len` bytes of header: exactly these are taken off the socket.
    tcp.read_exact(&mut buf[..len]).await?;
    parse(&buf[..len])
}

/// The length of the PROXY header at the start of `bytes`: `None` while it may still be
/// incomplete, an error as soon as `bytes` cannot start one.
pub fn header_len(bytes: &[u8]) -> Result<Option<usize>, HeaderError> {
    let seen = |prefix: &[u8]| bytes.len().min(prefix.len());
    if bytes[..seen(V2_SIGNATURE)] == V2_SIGNATURE[..seen(V2_SIGNATURE)] {
        if bytes.len() < V2_PREAMBLE {
            return Ok(None);
        }
        let len = V2_PREAMBLE + usize::from(u16::from_be_bytes([bytes[14], bytes[15]]));
        return match len {
            _ if len > V2_MAX => Err(HeaderError::TooLong(V2_MAX)),
            _ if bytes.len() < len => Ok(None),
            _ => Ok(Some(len)),
        };
    }
    if bytes[..seen(V1_PREFIX)] != V1_PREFIX[..seen(V1_PREFIX)] {
        return Err(HeaderError::Missing);
    }
    let window = &bytes[..bytes.len().min(V1_MAX)];
    match window.iter().position(|&b| b == b'\n') {
        Some(end) if end > 0 && window[end - 1] == b'\r' => Ok(Some(end + 1)),
        // The line must end with CRLF: a bare LF is refused at once, as HAProxy does, rather
        // than waited on until the timeout.
        Some(_) => Err(HeaderError::Invalid("line not ended by CRLF".to_owned())),
        None if bytes.len() >= V1_MAX => Err(HeaderError::TooLong(V1_MAX)),
        None => Ok(None),
    }
}

/// What the complete header `header` (as [`header_len`] framed it) announces.
pub fn parse(header: &[u8]) -> Result<Announced, HeaderError> {
    // v1 and v2 headers carry the same address types.
    let addresses = if header.starts_with(V1_PREFIX) {
        match ppp::v1::Header::try_from(header)
            .map_err(invalid)?
            .addresses
        {
            ppp::v1::Addresses::Tcp4(a) => Endpoints::V4(a),
            ppp::v1::Addresses::Tcp6(a) => Endpoints::V6(a),
            ppp::v1::Addresses::Unknown => return Ok(Announced::Local),
        }
    } else {
        // As HAProxy reads it: the command first; a `LOCAL` header's address block, whatever
        // its family, says nothing, nor does a `PROXY` one of a family other than TCP over
        // IPv4 or IPv6 (UDP, UNIX, unspecified): both keep the connection's own addresses.
        match header[12] {
            0x20 => return Ok(Announced::Local),
            0x21 => {}
            v if v >> 4 != 2 => return Err(invalid(format!("unsupported version {}", v >> 4))),
            v => return Err(invalid(format!("unsupported command {}", v & 0x0f))),
        }
        if !matches!(header[13], 0x11 | 0x21) {
            return Ok(Announced::Local);
        }
        let parsed = ppp::v2::Header::try_from(header).map_err(invalid)?;
        // The TLVs must fill the rest of the header exactly (HAProxy refuses one that overruns it).
        for tlv in parsed.tlvs() {
            tlv.map_err(invalid)?;
        }
        match parsed.addresses {
            ppp::v2::Addresses::IPv4(a) => Endpoints::V4(a),
            ppp::v2::Addresses::IPv6(a) => Endpoints::V6(a),
            ppp::v2::Addresses::Unspecified | ppp::v2::Addresses::Unix(_) => {
                return Ok(Announced::Local);
            }
        }
    };
    let (client, local) = match addresses {
        Endpoints::V4(a) => (
            SocketAddr::from((a.source_address, a.source_port)),
            SocketAddr::from((a.destination_address, a.destination_port)),
        ),
        Endpoints::V6(a) => (
            SocketAddr::from((a.source_address, a.source_port)),
            SocketAddr::from((a.destination_address, a.destination_port)),
        ),
    };
    Ok(Announced::Client { client, local })
}

/// A header's source and destination, in either family.
enum Endpoints {
    V4(ppp::v2::IPv4),
    V6(ppp::v2::IPv6),
}

/// A parser's complaint in wasp's words: lower case, no final period, and control characters
/// escaped (it may quote what the peer sent, such as `\r\n`, and a log line must stay one line).
fn invalid(e: impl std::fmt::Display) -> HeaderError {
    let text = e.to_string();
    let mut words = String::with_capacity(text.len());
    for (i, c) in text.trim_end_matches('.').chars().enumerate() {
        if c.is_control() {
            words.extend(c.escape_default());
        } else if i == 0 {
            words.extend(c.to_lowercase());
        } else {
            words.push(c);
        }
    }
    HeaderError::Invalid(words)
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::task::Poll;

    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    use super::*;
    use crate::config::SendProxy;
    use crate::proxy::tcp::proxy_header;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// A v2 header announcing `client` -> `local`, with `command` and a TLV of `tlv` bytes.
    fn v2(command: ppp::v2::Command, client: &str, local: &str, tlv: usize) -> Vec<u8> {
        ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | command,
            ppp::v2::Protocol::Stream,
            (addr(client), addr(local)),
        )
        .write_tlv(ppp::v2::Type::NoOp, &vec![0; tlv])
        .unwrap()
        .build()
        .unwrap()
    }

    #[test]
    fn a_header_is_framed_by_its_own_length_and_nothing_after_it() {
        let v1 = b"PROXY TCP4 192.0.2.1 198.51.100.2 40000 443\r\n";
        let mut bytes = v1.to_vec();
        bytes.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(header_len(&bytes).unwrap(), Some(v1.len()));
        // Every shorter start of it may still become a header.
        for n in 0..v1.len() {
            assert_eq!(header_len(&v1[..n]).unwrap(), None, "{n} bytes");
        }
        let v2 = v2(ppp::v2::Command::Proxy, "192.0.2.1:1", "198.51.100.2:2", 4);
        let mut bytes = v2.clone();
        bytes.extend_from_slice(&[0x16, 0x03, 0x01]);
        assert_eq!(header_len(&bytes).unwrap(), Some(v2.len()));
        for n in 0..v2.len() {
            assert_eq!(header_len(&v2[..n]).unwrap(), None, "{n} bytes");
        }
    }

    #[test]
    fn headers_longer_than_the_limits_are_refused() {
        // v1: the protocol's 107 bytes, line end included.
        let longest = format!("PROXY UNKNOWN {}\r\n", "x".repeat(V1_MAX - 16));
        assert_eq!(longest.len(), V1_MAX);
        assert_eq!(header_len(longest.as_bytes()).unwrap(), Some(V1_MAX));
        let longer = format!("PROXY UNKNOWN {}\r\n", "x".repeat(V1_MAX - 15));
        assert!(matches!(
            header_len(longer.as_bytes()),
            Err(HeaderError::TooLong(V1_MAX))
        ));
        // v2: the length field alone tells, before the rest arrives.
        let mut at_limit = v2(ppp::v2::Command::Proxy, "192.0.2.1:1", "192.0.2.2:2", 0);
        let fill = V2_MAX - at_limit.len();
        at_limit = v2(ppp::v2::Command::Proxy, "192.0.2.1:1", "192.0.2.2:2", fill);
        assert_eq!(at_limit.len(), V2_MAX);
        assert_eq!(header_len(&at_limit).unwrap(), Some(V2_MAX));
        let over = v2(
            ppp::v2::Command::Proxy,
            "192.0.2.1:1",
            "192.0.2.2:2",
            fill + 1,
        );
        assert!(matches!(
            header_len(&over[..V2_PREAMBLE]),
            Err(HeaderError::TooLong(V2_MAX))
        ));
    }

    #[test]
    fn bytes_that_cannot_start_a_header_are_refused_at_once() {
        for bytes in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"\x16\x03\x01",
            b"PROXZ",
            b"proxy TCP4",
            b"\r\n\r\n\0\r\nQUIX",
        ] {
            assert!(
                matches!(header_len(bytes), Err(HeaderError::Missing)),
                "{bytes:?}"
            );
        }
        // A v1 line is refused as soon as it ends without CR before its LF.
        for bytes in [
            &b"PROXY TCP4 192.0.2.1 198.51.100.2 40000 443\nGET"[..],
            b"PROXY \n",
        ] {
            assert!(
                matches!(header_len(bytes), Err(HeaderError::Invalid(_))),
                "{bytes:?}"
            );
        }
    }

    #[test]
    fn the_client_and_local_addresses_come_from_the_header() {
        let (client, local) = (addr("192.0.2.1:40000"), addr("198.51.100.2:443"));
        let expected = Announced::Client { client, local };
        for version in [SendProxy::V1, SendProxy::V2] {
            assert_eq!(
                parse(&proxy_header(version, client, local)).unwrap(),
                expected
            );
        }
        let (client6, local6) = (addr("[2001:db8::1]:1"), addr("[2001:db8::2]:2"));
        for version in [SendProxy::V1, SendProxy::V2] {
            assert_eq!(
                parse(&proxy_header(version, client6, local6)).unwrap(),
                Announced::Client {
                    client: client6,
                    local: local6
                }
            );
        }
        // TLVs are skipped.
        let with_tlv = v2(
            ppp::v2::Command::Proxy,
            "192.0.2.1:40000",
            "198.51.100.2:443",
            40,
        );
        assert_eq!(parse(&with_tlv).unwrap(), expected);
    }

    #[test]
    fn local_and_unknown_headers_announce_no_client() {
        let local = v2(ppp::v2::Command::Local, "192.0.2.1:1", "192.0.2.2:2", 0);
        assert_eq!(parse(&local).unwrap(), Announced::Local);
        assert_eq!(parse(b"PROXY UNKNOWN\r\n").unwrap(), Announced::Local);
        let unspec = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            ppp::v2::Addresses::Unspecified,
        )
        .build()
        .unwrap();
        assert_eq!(parse(&unspec).unwrap(), Announced::Local);
        // A datagram connection, or a family wasp does not know, keeps the connection's own
        // addresses as HAProxy keeps them; a LOCAL header says nothing whatever its family.
        let udp = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Datagram,
            (addr("192.0.2.1:1"), addr("192.0.2.2:2")),
        )
        .build()
        .unwrap();
        assert_eq!(parse(&udp).unwrap(), Announced::Local);
        for family in [0x00, 0x11, 0x12, 0x13, 0x41, 0xff] {
            let mut local = local.clone();
            local[13] = family;
            assert_eq!(parse(&local).unwrap(), Announced::Local, "{family:#x}");
        }
        let mut other = v2(ppp::v2::Command::Proxy, "192.0.2.1:1", "192.0.2.2:2", 0);
        other[13] = 0x41;
        assert_eq!(parse(&other).unwrap(), Announced::Local);
        // An empty LOCAL header: the preamble alone.
        assert_eq!(
            parse(b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00").unwrap(),
            Announced::Local
        );
    }

    #[test]
    fn malformed_headers_are_invalid() {
        let mut v3 = v2(ppp::v2::Command::Proxy, "192.0.2.1:1", "192.0.2.2:2", 0);
        v3[12] = 0x31;
        let mut command = v2(ppp::v2::Command::Proxy, "192.0.2.1:1", "192.0.2.2:2", 0);
        command[12] = 0x22;
        // A TLV announcing 80 bytes with 1 there, and 2 bytes too few for a TLV's own header.
        let mut overrun = v2(ppp::v2::Command::Proxy, "192.0.2.1:1", "192.0.2.2:2", 1);
        overrun[16 + 12 + 1..16 + 12 + 3].copy_from_slice(&80u16.to_be_bytes());
        let mut leftover = v2(ppp::v2::Command::Proxy, "192.0.2.1:1", "192.0.2.2:2", 0);
        leftover.extend_from_slice(&[1, 0]);
        let len = u16::from_be_bytes([leftover[14], leftover[15]]) + 2;
        leftover[14..16].copy_from_slice(&len.to_be_bytes());
        let mut short = v2(ppp::v2::Command::Proxy, "192.0.2.1:1", "192.0.2.2:2", 0);
        short.truncate(16 + 8);
        short[14..16].copy_from_slice(&8u16.to_be_bytes());
        for header in [
            &b"PROXY TCP4 192.0.2.1 192.0.2.2 1\r\n"[..],
            b"PROXY TCP4 2001:db8::1 192.0.2.2 1 2\r\n",
            b"PROXY TCP4 192.0.2.1 192.0.2.2 01 2\r\n",
            b"PROXY TCP5 192.0.2.1 192.0.2.2 1 2\r\n",
            // The parser quotes the line's end it wanted.
            b"PROXY TCP4 203.0.113.7 198.51.100.1 40000 8080 extra\r\n",
            &v3,
            &command,
            &overrun,
            &leftover,
            &short,
        ] {
            let e = parse(header).unwrap_err();
            assert!(!e.to_string().contains(['\r', '\n']), "one log line: {e}");
            assert!(
                matches!(&e, HeaderError::Invalid(m) if m.chars().next().is_some_and(char::is_lowercase)),
                "{header:?}: {e}"
            );
        }
    }

    /// A connected pair: (the accepted side, the client side).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        (accepted, client)
    }

    #[tokio::test]
    async fn a_header_in_two_pieces_is_awaited_and_the_bytes_after_it_are_left() {
        let (mut accepted, mut client) = pair().await;
        let header = b"PROXY TCP4 192.0.2.1 198.51.100.2 40000 443\r\n";
        client.write_all(&header[..20]).await.unwrap();
        // The first piece is in the socket before the header is read.
        let mut seen = [0u8; 64];
        while accepted.peek(&mut seen).await.unwrap() < 20 {}
        let announced = {
            let read = read_header(&mut accepted, Duration::from_secs(30));
            tokio::pin!(read);
            let first = std::future::poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx))).await;
            assert!(first.is_pending(), "an incomplete header is awaited");
            client.write_all(&header[20..]).await.unwrap();
            client.write_all(b"after").await.unwrap();
            client.shutdown().await.unwrap();
            read.await.unwrap()
        };
        assert_eq!(
            announced,
            Announced::Client {
                client: addr("192.0.2.1:40000"),
                local: addr("198.51.100.2:443")
            }
        );
        let mut rest = Vec::new();
        accepted.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"after");
    }

    #[tokio::test]
    async fn a_connection_closed_early_is_refused() {
        let (mut accepted, mut client) = pair().await;
        client.write_all(b"PROXY TCP4 192.0.2.1").await.unwrap();
        client.shutdown().await.unwrap();
        let e = read_header(&mut accepted, Duration::from_secs(30)).await;
        assert!(matches!(e, Err(HeaderError::Closed)), "{e:?}");
        let (mut accepted, client) = pair().await;
        drop(client);
        let e = read_header(&mut accepted, Duration::from_secs(30)).await;
        assert!(matches!(e, Err(HeaderError::Silent)), "{e:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_header_must_arrive_within_the_timeout() {
        let (mut accepted, mut client) = pair().await;
        client.write_all(b"PROXY TCP4 ").await.unwrap();
        let start = tokio::time::Instant::now();
        let e = read_header(&mut accepted, Duration::from_secs(7)).await;
        assert!(matches!(e, Err(HeaderError::TimedOut(_))), "{e:?}");
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(7),
            "the clock is paused"
        );
    }
}
