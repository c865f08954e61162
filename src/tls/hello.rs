//! The server name of a TLS ClientHello, read without terminating TLS (`req.ssl_sni` in TCP
//! mode), as HAProxy reads it: any TLS version's hello, the name as the client wrote it.
//!
//! rustls' `Acceptor` parses a hello only as far as rustls would negotiate it, so a TLS 1.0 or
//! 1.1 hello, or a TLS 1.2 one without `signature_algorithms`, would have no name: in TLS
//! passthrough, the protocol is the server's business, not the proxy's. This reads the record
//! layer and the hello's fields up to the `server_name` extension (RFC 5246 7.4.1.2, RFC 6066
//! 3) and nothing more.

/// What the bytes read so far say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hello {
    /// A ClientHello may still come: read more.
    Incomplete,
    /// Not a TLS ClientHello (other bytes, another handshake message, a malformed one).
    NotHello,
    /// A complete ClientHello, with its `host_name` when it has one that is text.
    Complete(Option<String>),
}

const HANDSHAKE: u8 = 22;
const CLIENT_HELLO: u8 = 1;
const SERVER_NAME: u16 = 0;
const HOST_NAME: u8 = 0;

/// Parses `bytes`, the first bytes a client sent.
pub fn server_name(bytes: &[u8]) -> Hello {
    let message = match handshake_message(bytes) {
        Ok(m) => m,
        Err(hello) => return hello,
    };
    match hello_name(&message) {
        Some(name) => Hello::Complete(name),
        None => Hello::NotHello,
    }
}

/// The first handshake message, joined from the records it spans, once complete.
fn handshake_message(mut bytes: &[u8]) -> Result<Vec<u8>, Hello> {
    let mut message = Vec::new();
    loop {
        let Some(header) = bytes.get(..5) else {
            return Err(if header_may_be_tls(bytes) {
                Hello::Incomplete
            } else {
                Hello::NotHello
            });
        };
        if !header_may_be_tls(header) {
            return Err(Hello::NotHello);
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        let Some(fragment) = bytes.get(5..5 + len) else {
            return Err(Hello::Incomplete);
        };
        if len == 0 {
            return Err(Hello::NotHello);
        }
        message.extend_from_slice(fragment);
        bytes = &bytes[5 + len..];
        if message.len() >= 4 {
            if message[0] != CLIENT_HELLO {
                return Err(Hello::NotHello);
            }
            let body = usize::from(message[1]) << 16
                | usize::from(message[2]) << 8
                | usize::from(message[3]);
            if message.len() >= 4 + body {
                message.truncate(4 + body);
                return Ok(message);
            }
        }
    }
}

/// Whether a record header (or its start) can be a handshake record: type 22, major version 3.
fn header_may_be_tls(header: &[u8]) -> bool {
    header.first().is_none_or(|&t| t == HANDSHAKE) && header.get(1).is_none_or(|&v| v == 3)
}

/// A complete ClientHello message's `host_name`: `Some(None)` when it has none (or one that is
/// not text), `None` when the message is malformed.
fn hello_name(message: &[u8]) -> Option<Option<String>> {
    let mut r = Reader(&message[4..]);
    r.take(2 + 32)?; // legacy_version, random
    r.vec8()?; // session id
    r.vec16()?; // cipher suites
    r.vec8()?; // compression methods
    if r.0.is_empty() {
        return Some(None); // no extensions
    }
    let mut extensions = Reader(r.vec16()?);
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let data = extensions.vec16()?;
        if kind == SERVER_NAME {
            return host_name(data);
        }
    }
    Some(None)
}

/// The first `host_name` of a `server_name` extension.
fn host_name(data: &[u8]) -> Option<Option<String>> {
    let mut r = Reader(data);
    let mut list = Reader(r.vec16()?);
    while !list.0.is_empty() {
        let kind = list.u8()?;
        let name = list.vec16()?;
        if kind == HOST_NAME {
            let text = std::str::from_utf8(name)
                .ok()
                .filter(|n| !n.is_empty() && !n.chars().any(char::is_control));
            return Some(text.map(str::to_owned));
        }
    }
    Some(None)
}

/// Reads big-endian fields off a slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (taken, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(taken)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    /// A vector with a one-byte length before it.
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let len = self.u8()?;
        self.take(len.into())
    }

    /// A vector with a two-byte length before it.
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let len = self.u16()?;
        self.take(len.into())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A ClientHello of `version` (e.g. 0x0301 for TLS 1.0) with these extensions, in one
    /// handshake message.
    pub(crate) fn hello_message(version: u16, extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = version.to_be_bytes().to_vec();
        body.extend([7u8; 32]); // random
        body.push(0); // no session id
        body.extend([0, 4, 0x00, 0x2f, 0x00, 0x35]); // two cipher suites
        body.extend([1, 0]); // null compression
        if !extensions.is_empty() {
            let mut ext = Vec::new();
            for (kind, data) in extensions {
                ext.extend(kind.to_be_bytes());
                ext.extend(u16::try_from(data.len()).unwrap().to_be_bytes());
                ext.extend(data);
            }
            body.extend(u16::try_from(ext.len()).unwrap().to_be_bytes());
            body.extend(ext);
        }
        let len = u32::try_from(body.len()).unwrap().to_be_bytes();
        let mut message = vec![CLIENT_HELLO, len[1], len[2], len[3]];
        message.extend(body);
        message
    }

    /// A `server_name` extension naming `name`.
    pub(crate) fn sni(name: &[u8]) -> (u16, Vec<u8>) {
        let mut entry = vec![HOST_NAME];
        entry.extend(u16::try_from(name.len()).unwrap().to_be_bytes());
        entry.extend(name);
        let mut data = u16::try_from(entry.len()).unwrap().to_be_bytes().to_vec();
        data.extend(entry);
        (SERVER_NAME, data)
    }

    /// `message` in handshake records of at most `piece` bytes each.
    pub(crate) fn records(message: &[u8], piece: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for fragment in message.chunks(piece) {
            out.extend([HANDSHAKE, 3, 1]);
            out.extend(u16::try_from(fragment.len()).unwrap().to_be_bytes());
            out.extend(fragment);
        }
        out
    }

    fn name(bytes: &[u8]) -> Hello {
        server_name(bytes)
    }

    #[test]
    fn the_name_of_any_tls_version_is_read_as_written() {
        for version in [0x0301, 0x0302, 0x0303] {
            let hello = records(&hello_message(version, &[sni(b"a.test")]), 16 * 1024);
            assert_eq!(name(&hello), Hello::Complete(Some("a.test".into())));
        }
        // Another extension first (signature_algorithms absent: a legal TLS 1.2 hello).
        let hello = hello_message(0x0303, &[(10, vec![0, 2, 0, 29]), sni(b"A.Test.")]);
        assert_eq!(
            name(&records(&hello, 16 * 1024)),
            Hello::Complete(Some("A.Test.".into()))
        );
        assert_eq!(
            name(&records(&hello_message(0x0303, &[sni(b"127.0.0.1")]), 100)),
            Hello::Complete(Some("127.0.0.1".into()))
        );
    }

    #[test]
    fn a_hello_without_a_text_name_has_none() {
        for hello in [
            hello_message(0x0303, &[]),
            hello_message(0x0303, &[(10, vec![0, 2, 0, 29])]),
            hello_message(0x0303, &[sni(b"")]),
            hello_message(0x0303, &[sni(b"a\x00b")]),
            hello_message(0x0303, &[sni(b"\xff\xfe")]),
        ] {
            assert_eq!(name(&records(&hello, 1000)), Hello::Complete(None));
        }
    }

    #[test]
    fn a_hello_split_anywhere_is_read_once_complete() {
        let message = hello_message(0x0301, &[sni(b"shop.example")]);
        for piece in [1, 3, 40, 1000] {
            let all = records(&message, piece);
            for cut in 0..all.len() {
                assert_eq!(name(&all[..cut]), Hello::Incomplete, "{piece}/{cut}");
            }
            assert_eq!(name(&all), Hello::Complete(Some("shop.example".into())));
            // What follows the hello does not matter.
            let mut more = all.clone();
            more.extend(b"\x17\x03\x03\x00\x01x");
            assert_eq!(name(&more), Hello::Complete(Some("shop.example".into())));
        }
    }

    #[test]
    fn other_bytes_are_no_hello() {
        let mut server_hello = hello_message(0x0303, &[]);
        server_hello[0] = 2;
        let mut truncated_ext = hello_message(0x0303, &[sni(b"a.test")]);
        let last = truncated_ext.len() - 1;
        truncated_ext[last - 16] = 0xff; // the extensions' length, past the message's end
        for bytes in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"\x80\x2e\x01\x03\x01",         // SSLv2-style hello
            b"\x15\x03\x03\x00\x02\x02\x28", // an alert record
            b"\x16\x02\x00\x00\x01",
            b"\x16\x03\x01\x00\x00",
            &records(&server_hello, 1000),
            &records(&truncated_ext, 1000),
        ] {
            assert_eq!(name(bytes), Hello::NotHello, "{bytes:?}");
        }
        assert_eq!(name(b""), Hello::Incomplete);
        assert_eq!(name(b"\x16"), Hello::Incomplete);
        assert_eq!(name(b"\x16\x03\x01\x02"), Hello::Incomplete);
    }
}
