//! The Wasm-backed implementations of the decision traits: [`WasmRouter`] (`Router`),
//! [`WasmBalancer`] (`Balancer`) and [`WasmJudge`] (`HealthCheck`).
//!
//! Each turns the host's view into the WIT types, calls the plugin, and treats the answer as
//! untrusted input: an unknown backend, an index out of range or naming a server that cannot
//! take the request, an invalid status or header, an oversized response are decision errors,
//! handled like a trap or a timeout with the plugin's `on_error` policy: `fallback` takes the
//! native decision (the frontend's rules, round-robin, the native check), `deny` answers 503
//! (or judges the server down).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode};

use crate::balance::{Balancer, Denied, PickContext, candidates, eligible};
use crate::config::{AdminState, OnError, PluginRole};
use crate::health::result::{CheckResponse, HealthCheck, Observation, Outcome, Reason, Verdict};
use crate::health::{Health, ServerState};
use crate::plugin::bindings::health::{self as wit_health};
use crate::plugin::bindings::router::RouteDecision as WitDecision;
use crate::plugin::bindings::types::{self as wit, DirectResponse};
use crate::plugin::instance::{Fault, poll_once};
use crate::plugin::registry::Plugin;
use crate::plugin::store::printable;
use crate::routing::{AclRouter, ConnView, LocalResponse, RequestView, RouteDecision, Router};

/// Largest body of a response a router plugin sends itself.
pub const MAX_DIRECT_BODY: usize = 64 * 1024;
/// Most headers in such a response.
pub const MAX_DIRECT_HEADERS: usize = 64;
/// Largest total size of those headers (names and values).
pub const MAX_DIRECT_HEADER_BYTES: usize = 16 * 1024;
/// Longest reason a health plugin may give (longer ones are cut).
const MAX_REASON: usize = 200;

/// Runs `f` with the request as a plugin sees it. The WIT record borrows the view's own
/// strings (the ABI copies them into guest memory once); only the client address is
/// formatted, and header values that are not visible ASCII are converted lossily.
pub fn with_request<R>(v: &RequestView<'_>, f: impl FnOnce(wit::Request<'_>) -> R) -> R {
    let mut ip_text = IpText::default();
    let client_ip = ip_text.format(v.client.ip());
    let lossy: Vec<String>;
    let mut headers: Vec<(&str, &str)> = Vec::with_capacity(v.headers.len());
    if v.headers.values().all(|val| val.to_str().is_ok()) {
        for (name, val) in v.headers {
            headers.push((name.as_str(), val.to_str().unwrap_or_default()));
        }
    } else {
        lossy = v
            .headers
            .values()
            .map(|val| String::from_utf8_lossy(val.as_bytes()).into_owned())
            .collect();
        for ((name, _), val) in v.headers.iter().zip(&lossy) {
            headers.push((name.as_str(), val.as_str()));
        }
    }
    let req = wit::Request {
        method: v.method.as_str(),
        scheme: v.scheme,
        host: v.host,
        path: v.path,
        query: v.query.unwrap_or(""),
        headers: &headers,
        client_ip,
        client_port: v.client.port(),
        local_port: v.local_port,
        frontend: v.frontend,
        sni: (!v.sni.is_empty()).then_some(v.sni),
    };
    f(req)
}

/// An IP address formatted on the stack (the longest IPv6 text is 45 bytes).
struct IpText {
    buf: [u8; 48],
    len: usize,
}

impl Default for IpText {
    fn default() -> Self {
        Self {
            buf: [0; 48],
            len: 0,
        }
    }
}

impl IpText {
    fn format(&mut self, ip: std::net::IpAddr) -> &str {
        use std::io::Write as _;
        let mut cursor = std::io::Cursor::new(&mut self.buf[..]);
        let _ = write!(cursor, "{ip}");
        self.len = usize::try_from(cursor.position()).unwrap_or(0);
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

/// Routes with a plugin; `defer` (and `fallback` on a fault) use the frontend's rules.
#[derive(Debug)]
pub struct WasmRouter {
    plugin: Arc<Plugin>,
    native: AclRouter,
    backends: HashMap<String, usize>,
}

impl WasmRouter {
    /// `backends` maps every backend name to its index in the snapshot.
    pub fn new(plugin: Arc<Plugin>, native: AclRouter, backends: HashMap<String, usize>) -> Self {
        Self {
            plugin,
            native,
            backends,
        }
    }

    /// The plugin's decision for `req`; `defer` takes the native one. A direct response is
    /// refused for a TCP connection (`respond` false): there is no HTTP to answer with.
    fn decide(
        &self,
        req: &RequestView<'_>,
        respond: bool,
        defer: impl FnOnce() -> RouteDecision,
    ) -> Result<RouteDecision, Fault> {
        let answer = with_request(req, |wit_req| {
            self.plugin.call(PluginRole::Router, |w| {
                let guest = w.router.as_ref()?;
                poll_once(guest.call_route(&mut w.store, wit_req))
            })
        })?;
        let decision = match answer {
            WitDecision::Backend(name) => match self.backends.get(&name) {
                Some(&i) => RouteDecision::Backend(i),
                // Only the frontend's mode's backends can be named.
                None => {
                    let mode = if respond { "http" } else { "tcp" };
                    return Err(self.invalid(format!("no {mode} backend \"{}\"", clip(&name))));
                }
            },
            WitDecision::Respond(_) if !respond => {
                return Err(self.invalid("a direct response to a TCP connection".to_owned()));
            }
            WitDecision::Respond(r) => {
                RouteDecision::Respond(Box::new(direct(r).map_err(|e| self.invalid(e))?))
            }
            WitDecision::Defer => defer(),
        };
        Ok(decision)
    }

    fn invalid(&self, why: String) -> Fault {
        let fault = Fault::Invalid(why);
        self.plugin.fault(PluginRole::Router, &fault);
        fault
    }
}

impl Router for WasmRouter {
    fn route(&self, req: &RequestView<'_>) -> RouteDecision {
        match self.decide(req, true, || self.native.route(req)) {
            Ok(d) => d,
            Err(_) => match self.plugin.on_error() {
                OnError::Fallback => self.native.route(req),
                OnError::Deny => RouteDecision::Deny,
            },
        }
    }

    /// A TCP-mode connection, shown to the plugin as a `CONNECT` request (see
    /// [`ConnView::as_request`]); `defer` and `fallback` use the frontend's rules.
    fn route_conn(&self, conn: &ConnView<'_>) -> RouteDecision {
        let no_headers = HeaderMap::new();
        let req = conn.as_request(&no_headers);
        match self.decide(&req, false, || self.native.route_conn(conn)) {
            Ok(d) => d,
            Err(_) => match self.plugin.on_error() {
                OnError::Fallback => self.native.route_conn(conn),
                OnError::Deny => RouteDecision::Deny,
            },
        }
    }
}

/// A plugin's direct response, validated with checked constructors and bounded in size.
/// Framing and hop-by-hop headers are dropped (the proxy frames the response itself).
pub fn direct(r: DirectResponse) -> Result<LocalResponse, String> {
    let status = StatusCode::from_u16(r.status)
        .ok()
        .filter(|s| (200..=599).contains(&s.as_u16()))
        .ok_or_else(|| format!("invalid status {}", r.status))?;
    if r.body.len() > MAX_DIRECT_BODY {
        return Err(format!(
            "response body of {} bytes is over the {MAX_DIRECT_BODY}-byte limit",
            r.body.len()
        ));
    }
    if r.headers.len() > MAX_DIRECT_HEADERS {
        return Err(format!(
            "{} headers is over the limit of {MAX_DIRECT_HEADERS}",
            r.headers.len()
        ));
    }
    let total: usize = r.headers.iter().map(|(n, v)| n.len() + v.len()).sum();
    if total > MAX_DIRECT_HEADER_BYTES {
        return Err(format!(
            "headers of {total} bytes are over the {MAX_DIRECT_HEADER_BYTES}-byte limit"
        ));
    }
    let mut headers = HeaderMap::with_capacity(r.headers.len());
    for (name, value) in r.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("invalid header name \"{}\"", clip(&name)))?;
        let value = HeaderValue::from_str(&value)
            .map_err(|_| format!("invalid value for header {name}"))?;
        if is_framing_or_hop(&name) {
            continue;
        }
        headers.append(name, value);
    }
    Ok(LocalResponse {
        status,
        headers,
        body: Bytes::from(r.body),
    })
}

fn is_framing_or_hop(name: &HeaderName) -> bool {
    [
        header::CONNECTION,
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::TE,
        header::TRAILER,
        header::UPGRADE,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
    ]
    .contains(name)
        || name.as_str() == "keep-alive"
}

/// At most 100 characters of plugin text, for messages.
/// A plugin's text quoted in a fault's message: its first 100 characters, control
/// characters escaped.
fn clip(s: &str) -> String {
    let head: String = s.chars().take(100).collect();
    printable(&head).into_owned()
}

/// Balances with a plugin, over the servers the shared eligibility rules allow.
#[derive(Debug)]
pub struct WasmBalancer {
    plugin: Arc<Plugin>,
    backend: String,
    servers: Vec<Arc<ServerState>>,
    names: Vec<String>,
    /// Each server's `ip:port`, as the plugin sees it.
    addresses: Vec<String>,
    /// The native algorithm for `on_error = "fallback"`.
    native: Box<dyn Balancer>,
}

impl WasmBalancer {
    pub fn new(
        plugin: Arc<Plugin>,
        backend: &str,
        servers: Vec<Arc<ServerState>>,
        names: Vec<String>,
        native: Box<dyn Balancer>,
    ) -> Self {
        let addresses = servers.iter().map(|s| s.key.addr.to_string()).collect();
        Self {
            plugin,
            backend: backend.to_owned(),
            servers,
            names,
            addresses,
            native,
        }
    }

    fn decide(&self, ctx: &PickContext<'_>) -> Result<Option<usize>, Fault> {
        // The same rules as every native algorithm: the tier in use, usable, below maxconn,
        // not tried yet. The plugin chooses among these only.
        let offered: Vec<usize> = candidates(&self.servers)
            .filter(|&i| eligible(&self.servers[i], i, ctx))
            .collect();
        if offered.is_empty() {
            return Ok(None);
        }
        let infos: Vec<wit::ServerInfo<'_>> = offered
            .iter()
            .map(|&i| server_info(&self.names[i], &self.addresses[i], &self.servers[i]))
            .collect();
        let answer = with_request(ctx.req, |req| {
            self.plugin.call(PluginRole::Balancer, |w| {
                let guest = w.balancer.as_ref()?;
                poll_once(guest.call_pick(&mut w.store, &self.backend, &infos, req))
            })
        })?;
        let Some(k) = answer else { return Ok(None) };
        let Some(&idx) = usize::try_from(k).ok().and_then(|k| offered.get(k)) else {
            return Err(self.invalid(format!(
                "server index {k} is out of range (0..{})",
                offered.len()
            )));
        };
        // State may have moved since the list was made: check again.
        if !eligible(&self.servers[idx], idx, ctx) {
            return Err(self.invalid(format!("server {} cannot take requests", self.names[idx])));
        }
        Ok(Some(idx))
    }

    fn invalid(&self, why: String) -> Fault {
        let fault = Fault::Invalid(why);
        self.plugin.fault(PluginRole::Balancer, &fault);
        fault
    }
}

impl Balancer for WasmBalancer {
    fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
        self.pick_or_deny(ctx).unwrap_or(None)
    }

    fn pick_or_deny(&self, ctx: &PickContext<'_>) -> Result<Option<usize>, Denied> {
        match self.decide(ctx) {
            Ok(pick) => Ok(pick),
            Err(_) => match self.plugin.on_error() {
                OnError::Fallback => Ok(self.native.pick(ctx)),
                OnError::Deny => Err(Denied),
            },
        }
    }
}

fn server_info<'a>(name: &'a str, address: &'a str, s: &ServerState) -> wit::ServerInfo<'a> {
    let state = match (s.admin(), s.health()) {
        (AdminState::Maint, _) => wit::ServerState::Maint,
        (AdminState::Drain, _) => wit::ServerState::Drain,
        (AdminState::Ready, Health::Down) => wit::ServerState::Down,
        (AdminState::Ready, Health::Up) => wit::ServerState::Up,
    };
    wit::ServerInfo {
        name,
        address,
        weight: s.weight(),
        state,
        healthy: s.usable(),
        active_connections: s.active(),
    }
}

/// Judges health checks with a plugin.
#[derive(Debug)]
pub struct WasmJudge {
    plugin: Arc<Plugin>,
    server: String,
    address: String,
    /// The native judgement for `on_error = "fallback"`.
    native: Box<dyn HealthCheck>,
}

impl WasmJudge {
    pub fn new(
        plugin: Arc<Plugin>,
        server: &str,
        address: std::net::SocketAddr,
        native: Box<dyn HealthCheck>,
    ) -> Self {
        Self {
            plugin,
            server: server.to_owned(),
            address: address.to_string(),
            native,
        }
    }

    fn verdict(&self, passed: bool, detail: String) -> Verdict {
        Verdict {
            passed,
            reason: Reason::Judged {
                plugin: self.plugin.name.to_string(),
                passed,
                detail,
            },
        }
    }
}

impl HealthCheck for WasmJudge {
    fn judge(&self, observation: &Observation) -> Verdict {
        let headers: Vec<(String, String)> = match &observation.outcome {
            Outcome::Response(r) => r
                .headers
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            _ => Vec::new(),
        };
        let header_refs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let error;
        let check = wit_health::CheckResult {
            server: &self.server,
            address: &self.address,
            latency_ms: u32::try_from(observation.latency.as_millis()).unwrap_or(u32::MAX),
            outcome: match &observation.outcome {
                Outcome::Connected => wit_health::CheckOutcome::Connected,
                Outcome::Response(r) => {
                    wit_health::CheckOutcome::Response(check_response(r, &header_refs))
                }
                Outcome::Failed(e) => {
                    error = e.to_string();
                    wit_health::CheckOutcome::Failed(&error)
                }
            },
        };
        let answer = self.plugin.call(PluginRole::Health, move |w| {
            let guest = w.health.as_ref()?;
            poll_once(guest.call_judge(&mut w.store, check))
        });
        match answer {
            Ok(wit_health::Verdict::Up) => self.verdict(true, String::new()),
            Ok(wit_health::Verdict::Down(why)) => {
                let why: String = why.chars().take(MAX_REASON).collect();
                let why = printable(&why).into_owned();
                self.verdict(false, why)
            }
            Err(fault) => match self.plugin.on_error() {
                OnError::Fallback => self.native.judge(observation),
                OnError::Deny => self.verdict(false, format!("plugin fault: {}", fault.kind())),
            },
        }
    }

    fn may_block(&self) -> bool {
        true
    }
}

fn check_response<'a>(
    r: &'a CheckResponse,
    headers: &'a [(&'a str, &'a str)],
) -> wit_health::CheckResponse<'a> {
    wit_health::CheckResponse {
        status: r.status.as_u16(),
        headers,
        body_prefix: &r.body,
        body_complete: r.body_complete,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, headers: &[(&str, &str)], body: usize) -> DirectResponse {
        DirectResponse {
            status,
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).into(), (*v).into()))
                .collect(),
            body: vec![b'x'; body],
        }
    }

    #[test]
    fn ip_text_fits_every_address() {
        let mut t = IpText::default();
        assert_eq!(t.format("192.0.2.1".parse().unwrap()), "192.0.2.1");
        let long = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255";
        let ip: std::net::IpAddr = long.parse().unwrap();
        let mut t = IpText::default();
        assert_eq!(t.format(ip), ip.to_string());
    }

    #[test]
    fn direct_responses_are_validated() {
        let ok = direct(resp(
            418,
            &[
                ("x-a", "1"),
                ("content-length", "999"),
                ("connection", "close"),
            ],
            3,
        ))
        .unwrap();
        assert_eq!(ok.status.as_u16(), 418);
        assert_eq!(
            ok.headers.len(),
            1,
            "framing and hop-by-hop headers dropped"
        );
        assert_eq!(ok.body.len(), 3);
        for bad in [
            resp(99, &[], 0),
            resp(101, &[], 0),
            resp(600, &[], 0),
            resp(200, &[("bad name", "v")], 0),
            resp(200, &[("x", "a\r\nb")], 0),
            resp(200, &[], MAX_DIRECT_BODY + 1),
        ] {
            assert!(direct(bad).is_err());
        }
        let many: Vec<(String, String)> = (0..=MAX_DIRECT_HEADERS)
            .map(|i| (format!("x-{i}"), "v".into()))
            .collect();
        let r = DirectResponse {
            status: 200,
            headers: many,
            body: vec![],
        };
        assert!(direct(r).is_err());
    }
}
