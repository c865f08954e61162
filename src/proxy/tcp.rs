//! L4 (TCP mode) building blocks: writing a PROXY protocol header, and reading the TLS server
//! name from a ClientHello without consuming it (for SNI routing without terminating TLS).
//! Relaying the bytes is [`crate::proxy::relay`]'s.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::config::SendProxy;
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

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncWriteExt, duplex};
    use tokio::time::Instant;

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
