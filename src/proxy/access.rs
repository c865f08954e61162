//! The access log: one line per request, written when its response has been sent (for a
//! switch of protocols, when the tunnel closes), or when the request is dropped without one (an
//! HTTP/2 client that reset its stream while the request waited for its server, the end of the
//! stop's grace period): then `status` is -1, as in HAProxy's log.
//!
//! Fields (stable keys): `client`, `frontend`, `backend`, `server`, `method`, `path`, `status`,
//! `bytes` (response body bytes sent), `complete` (false when the response was cut short), and
//! the timings in milliseconds: `t_request` (first byte of the request head to the head being
//! parsed), `t_connect` (upstream TCP connect; 0 on a reused pooled connection, absent when no
//! server was reached), `t_response` (request parsed to response headers ready) and `t_total`.
//!
//! The same moment counts the request for the stats page and metrics: its frontend, backend and
//! (last tried) server each get the status class, bytes and response time (`counters`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use tokio::time::Instant;

use crate::health::state::{ActiveGuard, FrontendState};
use crate::proxy::LocalSnapshot;
use crate::proxy::body::{End, Finish};
use crate::proxy::client_io::InFlight;
use crate::snapshot::Backend;
use crate::upstream::body::Reclaimable;
use crate::upstream::connect::ConnectTiming;

/// Tracing target of access-log events, for filtering (`RUST_LOG=wasp::access=off`).
pub const TARGET: &str = "wasp::access";

/// Everything known about a request by the time its response starts; finished (and logged)
/// when the response body ends. Also holds the request's in-flight guards, so counts drop
/// exactly when the response is over.
#[derive(Debug)]
pub struct Record {
    pub log: bool,
    pub client: SocketAddr,
    /// The snapshot serving the request, which the indices below point into (a worker's own
    /// handle on it: no counter shared with other workers is written per request).
    pub snapshot: LocalSnapshot,
    /// Index in `snapshot.frontends`; `None` until the listener's frontend is known.
    pub frontend: Option<usize>,
    /// Index in `snapshot.backends`.
    pub backend: Option<usize>,
    /// Index in the backend's servers of the last server tried.
    pub server: Option<usize>,
    pub method: Method,
    pub path: String,
    pub status: u16,
    /// The request's body on its way to servers, whose bytes read from the client are the
    /// request's bytes in (`None`: no body, or none forwarded).
    pub body: Option<Reclaimable>,
    pub head_started: Instant,
    pub received: Instant,
    /// When the request went to the last server tried, and the connection it went out on
    /// (set when the request has one, even if no answer came): `t_connect`.
    pub sent: Instant,
    pub connection: Option<ConnectTiming>,
    pub t_response: Option<Duration>,
    pub in_flight: Option<InFlight>,
    /// The in-flight unit of the last server tried (whose counters get the response).
    pub active: Option<ActiveGuard>,
    /// Counted and logged (by [`Finish::finish`], or when dropped without a response).
    pub done: bool,
}

/// A duration in milliseconds, to the microsecond (`2.628`, not `2.6283819999999998`).
pub(crate) fn ms(d: Duration) -> f64 {
    (d.as_micros() as f64) / 1000.0
}

impl Record {
    /// The connect of the connection the request went out on, or 0 on one that was open
    /// before (pooled, or shared over HTTP/2); `None` when no server was reached.
    fn t_connect(&self) -> Option<Duration> {
        let c = self.connection.as_ref()?;
        Some(if c.established >= self.sent {
            c.took
        } else {
            Duration::ZERO
        })
    }

    pub fn frontend_state(&self) -> Option<&Arc<FrontendState>> {
        self.frontend.map(|f| &self.snapshot.frontends[f].state)
    }

    fn backend(&self) -> Option<&Backend> {
        self.backend.map(|b| &self.snapshot.backends[b])
    }

    fn server_name(&self) -> Option<&str> {
        Some(&self.backend()?.servers.get(self.server?)?.name)
    }

    /// The traffic counters of the request's frontend, backend and (last tried) server.
    fn counted(&self) -> [Option<&crate::counters::Traffic>; 3] {
        [
            self.frontend_state().map(|f| &f.traffic),
            self.backend().map(|b| &b.state.traffic),
            self.active.as_ref().map(|a| &a.server().traffic),
        ]
    }

    /// Counts the response (a negative status counts as class "other": the request was counted
    /// when it arrived, was routed and was sent) and writes its line.
    fn count_and_log(&self, logged: i32, bytes: u64, complete: bool) {
        let status = u16::try_from(logged).unwrap_or(0);
        let bytes_in = self.body.as_ref().map_or(0, Reclaimable::received);
        for traffic in self.counted().into_iter().flatten() {
            traffic.count_response(status, bytes_in, bytes, self.t_response);
        }
        self.write(logged, bytes, complete);
    }

    /// Writes the request's line (when the access log is on).
    fn write(&self, logged: i32, bytes: u64, complete: bool) {
        if !self.log {
            return;
        }
        let now = Instant::now();
        tracing::info!(
            target: TARGET,
            client = %self.client,
            frontend = self.frontend_state().map_or("-", |f| f.name()),
            backend = self.backend_name(),
            server = self.server_name().unwrap_or("-"),
            method = self.method.as_str(),
            path = self.path.as_str(),
            status = logged,
            bytes,
            complete,
            t_request = ms(self.received.saturating_duration_since(self.head_started)),
            t_connect = self.t_connect().map(ms),
            t_response = self.t_response.map(ms),
            t_total = ms(now - self.head_started.min(self.received)),
        );
    }

    /// A switch of protocols the server accepted: its response is counted now, as HAProxy
    /// counts it; the request's line waits for the tunnel to close ([`Record::finish_tunnel`]).
    pub(crate) fn count_switch(&self) {
        for traffic in self.counted().into_iter().flatten() {
            traffic.count_response(self.status, 0, 0, self.t_response);
        }
    }

    /// The request's tunnel closed after `up` bytes from the client and `down` bytes to it
    /// (`clean`: both sides ended it, neither an error nor `timeout tunnel`): the bytes are
    /// counted, and the request's line is written as HAProxy writes a WebSocket's, at its
    /// end: `bytes` are the tunnel's bytes to the client, and `t_total` spans the tunnel.
    pub(crate) fn finish_tunnel(mut self: Box<Self>, up: u64, down: u64, clean: bool) {
        self.done = true;
        for traffic in self.counted().into_iter().flatten() {
            traffic.count_bytes(up, down);
        }
        self.write(i32::from(self.status), down, clean);
    }

    /// The name of the request's backend (`-` before one was chosen).
    pub(crate) fn backend_name(&self) -> &str {
        self.backend().map_or("-", |b| b.state.name())
    }
}

impl Finish for Record {
    fn finish(mut self: Box<Self>, bytes: u64, end: End) {
        self.done = true;
        if end == End::ServerFailed
            && let Some(active) = &self.active
        {
            // The server broke off its response body (closed, malformed, silent past
            // `timeout server`): its error, as HAProxy counts it (`eresp`).
            active.server().record_response_error();
        }
        self.count_and_log(i32::from(self.status), bytes, end == End::Complete);
    }
}

impl Drop for Record {
    /// A request dropped before its response started: counted (status class "other") and
    /// logged with status -1.
    fn drop(&mut self) {
        if !self.done {
            self.done = true;
            self.count_and_log(-1, 0, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::ms;

    #[test]
    fn milliseconds_print_to_the_microsecond() {
        assert_eq!(
            ms(Duration::from_nanos(2_628_381_999)).to_string(),
            "2628.381"
        );
        assert_eq!(ms(Duration::from_nanos(2_628_382)).to_string(), "2.628");
        assert_eq!(ms(Duration::ZERO).to_string(), "0");
    }
}
