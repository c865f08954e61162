//! HTTP/1.1 `Upgrade` (WebSocket) through the proxy.
//!
//! An upgrade request is routed and balanced like any other request; only `Connection:
//! upgrade` and its `Upgrade` header survive the hop-by-hop stripping on the way to the server.
//! When the server answers `101 Switching Protocols`, the 101 goes back to the client and both
//! connections are handed over by hyper (`hyper::upgrade::on`) to a tunnel that relays bytes
//! both ways until either side closes, or nothing moves for the backend's `timeout tunnel`.
//! Any other answer is an ordinary response, and the client connection stays HTTP.
//!
//! Nothing the client sends after the request head reaches the server before the 101: hyper
//! keeps those bytes and hands them over with the upgraded connection (a 2026 Pingora advisory
//! was about forwarding them early). `Upgrade: h2c` is never forwarded.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Version, header};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::health::state::{ActiveGuard, BackendState, FrontendState};
use crate::proxy::client_io::InFlight;
use crate::proxy::headers::Scan;
use crate::proxy::relay::{Ending, relay};

/// The protocol an HTTP/1.1 request asks to switch to: `Connection` lists `upgrade` and an
/// `Upgrade` header names a protocol other than `h2c`. `scan` is the request's.
pub(crate) fn requested(version: Version, headers: &HeaderMap, scan: &Scan) -> Option<HeaderValue> {
    if version != Version::HTTP_11 || !scan.connection_upgrade || !scan.has_upgrade() {
        return None;
    }
    let proto = headers.get(header::UPGRADE)?;
    let h2c = proto
        .to_str()
        .is_ok_and(|p| p.split(',').any(|t| t.trim().eq_ignore_ascii_case("h2c")));
    (!h2c).then(|| proto.clone())
}

/// Puts `Connection: upgrade` and `Upgrade: proto` back after the hop-by-hop headers went.
pub(crate) fn restore(headers: &mut HeaderMap, proto: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, proto);
}

/// What a tunnel holds and counts while it is open.
pub(crate) struct Tunnel {
    /// Idle timeout: the backend's `timeout tunnel`.
    pub(crate) idle: Duration,
    /// Keeps the client connection "in a request", so its keep-alive timeout stays off.
    pub(crate) in_flight: Option<InFlight>,
    /// The server's in-flight unit (its `maxconn` and `leastconn` count the tunnel).
    pub(crate) active: Option<ActiveGuard>,
    pub(crate) frontend: Option<Arc<FrontendState>>,
    pub(crate) backend: Arc<BackendState>,
}

impl Tunnel {
    /// Waits for both sides to be handed over, then relays until the tunnel ends.
    pub(crate) fn spawn(self, client: OnUpgrade, server: OnUpgrade) {
        tokio::spawn(async move {
            let (client, server) = match tokio::join!(client, server) {
                (Ok(c), Ok(s)) => (c, s),
                (c, s) => {
                    let error = c.err().or(s.err()).map(|e| e.to_string());
                    tracing::debug!(backend = self.backend.name(), error, "upgrade abandoned");
                    return;
                }
            };
            // The client connection's session: hyper's serving of it ends with the hand-over,
            // the connection does not. (Its place under `maxconn` goes on through the socket's
            // state, which the upgraded connection holds.)
            let _session = self.frontend.as_deref().map(|f| f.sessions.hold());
            let (relayed, result) = relay(
                TokioIo::new(client),
                TokioIo::new(server),
                Vec::new(),
                (self.idle, self.idle),
                // The client's side may be TLS: its close_notify is sent at the shutdown.
                Ending::ShutdownBoth,
            )
            .await;
            let counted = [
                self.frontend.as_deref().map(|f| &f.traffic),
                Some(&self.backend.traffic),
                self.active.as_ref().map(|a| &a.server().traffic),
            ];
            for traffic in counted.into_iter().flatten() {
                traffic.count_bytes(relayed.up, relayed.down);
            }
            tracing::debug!(
                backend = self.backend.name(),
                bytes_in = relayed.up,
                bytes_out = relayed.down,
                error = result.err().map(|e| e.to_string()),
                "tunnel closed"
            );
            drop(self.in_flight);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn only_http11_upgrades_other_than_h2c() {
        let ws = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert_eq!(
            requested(Version::HTTP_11, &ws, &Scan::of(&ws))
                .as_ref()
                .map(|v| v.as_bytes()),
            Some(&b"websocket"[..])
        );
        assert_eq!(requested(Version::HTTP_10, &ws, &Scan::of(&ws)), None);
        let h2c = headers(&[("connection", "upgrade"), ("upgrade", "h2c")]);
        assert_eq!(requested(Version::HTTP_11, &h2c, &Scan::of(&h2c)), None);
        let no_token = headers(&[("connection", "keep-alive"), ("upgrade", "websocket")]);
        assert_eq!(
            requested(Version::HTTP_11, &no_token, &Scan::of(&no_token)),
            None
        );
        let no_proto = headers(&[("connection", "upgrade")]);
        assert_eq!(
            requested(Version::HTTP_11, &no_proto, &Scan::of(&no_proto)),
            None
        );
    }
}
