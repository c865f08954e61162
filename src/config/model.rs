//! The validated configuration: plain domain types with every default applied.
//!
//! Nothing here refers to TOML or spans; `config::load` builds these only when the file has no
//! errors. Higher layers (routing, balance, snapshot, proxy) consume these types and nothing else
//! from the config module.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::acl::{AclSpec, Condition, IpNet};

/// Default limit for a request head (request line plus headers), as HAProxy's `tune.bufsize`.
pub const DEFAULT_MAX_HEADER_SIZE: usize = 64 * 1024;
/// Smallest `max_header_size` accepted: HAProxy's smallest sensible `tune.bufsize`.
pub const MIN_MAX_HEADER_SIZE: usize = 8192;
/// Largest `max_header_size` accepted: a head is buffered whole, so a limit past this is
/// none at all against a client sending an endless head.
pub const MAX_MAX_HEADER_SIZE: usize = 16 * 1024 * 1024;
/// The longest response head a server may send over HTTP/1.1, on live traffic (a longer one is
/// a 502) and to an HTTP health check (a failed check).
pub const SERVER_HEAD_MAX: usize = 64 * 1024;
/// Default number of extra attempts after a failed upstream connect.
pub const DEFAULT_RETRIES: u32 = 3;
/// Default grace period for in-flight requests on shutdown.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);
/// Default number of consecutive observed errors that mark a server down (`error_limit`).
pub const DEFAULT_ERROR_LIMIT: u32 = 10;
/// Largest server weight accepted, as in HAProxy.
pub const MAX_WEIGHT: u32 = 256;
/// Default `timeout tunnel`: how long a WebSocket tunnel may stay silent.
pub const DEFAULT_TUNNEL_TIMEOUT: Duration = Duration::from_secs(3600);
/// Default `inspect_delay` of a TCP frontend: how long to wait for a TLS ClientHello.
pub const DEFAULT_INSPECT_DELAY: Duration = Duration::from_secs(5);

/// A whole validated configuration file.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was read from (used for reloads and messages).
    pub path: PathBuf,
    pub global: Global,
    pub admin: Option<Admin>,
    pub frontends: Vec<Frontend>,
    pub backends: Vec<Backend>,
    /// `[plugin.NAME]` sections, in file order.
    pub plugins: Vec<Plugin>,
}

impl Config {
    pub fn backend(&self, name: &str) -> Option<&Backend> {
        self.backends.iter().find(|b| b.name == name)
    }

    pub fn plugin(&self, name: &str) -> Option<&Plugin> {
        self.plugins.iter().find(|p| p.name == name)
    }
}

/// `[global]`: process-wide settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Global {
    /// Tokio worker threads; `None` means one per CPU.
    pub workers: Option<usize>,
    pub log_format: LogFormat,
    /// Emit one access-log line per request (`access_log = false` turns it off).
    pub access_log: bool,
    /// How long in-flight requests may run after SIGTERM/SIGINT before the process exits.
    pub grace: Duration,
    /// The time slice worker threads ask the kernel's scheduler for (Linux 6.12+), if any.
    pub sched_slice: Option<Duration>,
    /// Pin each worker thread to one CPU: `cpu_affinity = "auto"` (`Some(true)`) or `"none"`
    /// (`Some(false)`); `None` (not set) pins when there is one worker per CPU
    /// ([`Workers::pin_by_default`](crate::proxy::workers::Workers::pin_by_default)).
    pub pin_workers: Option<bool>,
    /// The most client connections open at once (HAProxy's global `maxconn`); `None` derives
    /// it from the open-file limit ([`crate::limits::default_maxconn`]).
    pub maxconn: Option<usize>,
}

impl Default for Global {
    fn default() -> Self {
        Self {
            workers: None,
            log_format: LogFormat::Text,
            access_log: true,
            grace: DEFAULT_GRACE,
            sched_slice: None,
            pin_workers: None,
            maxconn: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Default `[admin] refresh`: how often the stats page reloads itself.
pub const DEFAULT_ADMIN_REFRESH: Duration = Duration::from_secs(10);

/// `[admin]`: the stats page / metrics / runtime API listener (TCP, a Unix socket, or both).
#[derive(Debug, Clone, PartialEq)]
pub struct Admin {
    /// TCP address; outside loopback only with `auth`.
    pub bind: Option<SocketAddr>,
    pub unix: Option<AdminUnix>,
    /// HTTP basic authentication for the TCP listener.
    pub auth: Option<AdminAuth>,
    /// The stats page's auto-refresh interval; zero turns it off.
    pub refresh: Duration,
}

/// `[admin] unix` and `mode`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminUnix {
    pub path: PathBuf,
    /// File permissions of the socket, e.g. 0o660.
    pub mode: u32,
}

/// `[admin] auth = { user, password }`.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminAuth {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminAuth")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// `mode`: HTTP proxying, or TCP (L4) relaying of whole connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Http,
    Tcp,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Http => "http",
            Mode::Tcp => "tcp",
        }
    }
}

/// Every timeout, resolved: `defaults.timeout` overlaid by the section's own `timeout` table.
///
/// Meanings are HAProxy's: `client` and `server` are inactivity timeouts, `connect` bounds one
/// upstream TCP connect, `http_request` bounds the arrival of a whole request head,
/// `http_keep_alive` bounds the wait for the next request on an idle keep-alive connection,
/// `queue` how long a request may wait for a free connection slot (`maxconn`), `tunnel` the
/// idle timeout of a tunnel, replacing `client` and `server`: a WebSocket tunnel once the server
/// answered 101 ([`DEFAULT_TUNNEL_TIMEOUT`] when unset), a TCP-mode session once its server is
/// connected (only when set, as in HAProxy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub client: Duration,
    pub server: Duration,
    pub connect: Duration,
    pub http_request: Duration,
    pub http_keep_alive: Duration,
    pub queue: Duration,
    pub tunnel: Option<Duration>,
}

impl Timeouts {
    /// A WebSocket tunnel's idle timeout.
    pub fn websocket(&self) -> Duration {
        self.tunnel.unwrap_or(DEFAULT_TUNNEL_TIMEOUT)
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            client: Duration::from_secs(30),
            server: Duration::from_secs(30),
            connect: Duration::from_secs(5),
            http_request: Duration::from_secs(10),
            http_keep_alive: Duration::from_secs(10),
            queue: Duration::from_secs(5),
            tunnel: None,
        }
    }
}

/// One `bind` entry: an address, with TLS termination when `tls` is set.
#[derive(Debug, Clone, PartialEq)]
pub struct Bind {
    pub addr: SocketAddr,
    pub tls: Option<TlsConfig>,
    /// `accept_proxy`: the peers (never empty) whose connections start with a PROXY protocol
    /// header announcing the client's address; `None`: no peer sends one.
    pub accept_proxy: Option<Vec<IpNet>>,
}

/// `redirect`: what a frontend answers on its cleartext listeners instead of routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redirect {
    /// `redirect = "https"`: 301 (GET, HEAD) or 308 to the same host, path and query over
    /// https on the default port.
    Https,
}

/// `[frontend.NAME]`.
#[derive(Debug, Clone)]
pub struct Frontend {
    pub name: String,
    pub binds: Vec<Bind>,
    /// Requests on cleartext binds are redirected instead of routed.
    pub redirect: Option<Redirect>,
    pub mode: Mode,
    /// Named ACLs in file order.
    pub acls: Vec<NamedAcl>,
    /// `use_backend` rules in file order.
    pub rules: Vec<UseBackend>,
    pub default_backend: Option<String>,
    pub timeouts: Timeouts,
    /// TCP mode: how long to wait for the TLS ClientHello when a rule needs `req.ssl_sni`
    /// (HAProxy's `tcp-request inspect-delay`).
    pub inspect_delay: Duration,
    /// Add `X-Forwarded-For/-Proto/-Host` (and drop client-supplied ones). Default true.
    pub forwardfor: bool,
    /// Largest accepted request head in bytes; larger heads get 431.
    pub max_header_size: usize,
    /// A router plugin that takes the routing decision (`defer` falls back to the rules above).
    pub router: Option<String>,
    /// The most client connections open at once on this frontend's binds (HAProxy's frontend
    /// `maxconn`); past it they wait in the listen queue. `None`: only `[global] maxconn`.
    pub maxconn: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct NamedAcl {
    pub name: String,
    pub spec: AclSpec,
}

/// One `use_backend` rule: route to `backend` when `condition` holds (or, for `unless`, when
/// it does not).
#[derive(Debug, Clone)]
pub struct UseBackend {
    pub backend: String,
    pub condition: Condition,
    pub negate: bool,
}

/// `[backend.NAME]`.
#[derive(Debug, Clone)]
pub struct Backend {
    pub name: String,
    pub mode: Mode,
    pub balance: Balance,
    pub servers: Vec<Server>,
    pub timeouts: Timeouts,
    /// Extra attempts after a failed connect (or a lost idempotent request).
    pub retries: u32,
    /// Retry on another server (true, the default) or on the same one.
    pub redispatch: bool,
    /// Requests in flight to the whole backend at most; more wait in the queue.
    pub maxconn: Option<u32>,
    /// Passive health: what counts as a server error for `error_limit`.
    pub observe: Option<Observe>,
    /// Consecutive observed errors that mark a server down.
    pub error_limit: u32,
    pub check: CheckParams,
    /// The protocol spoken to the servers.
    pub proto: Proto,
    /// The backend's `tls` keys, inherited by servers added at run time.
    pub tls: Option<UpstreamTls>,
}

/// The HTTP version a backend speaks to its servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Proto {
    /// HTTP/1.1 (ALPN `http/1.1` over TLS).
    #[default]
    Http1,
    /// HTTP/2: prior knowledge (h2c) on cleartext, ALPN `h2` over TLS.
    H2,
}

/// TLS to a server.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UpstreamTls {
    /// CA bundle the server's certificate must chain to; `None` means the bundled Mozilla
    /// roots.
    pub ca: Option<PathBuf>,
    /// The name sent as SNI and verified against the certificate; `None` means the server's
    /// IP address (no SNI is sent for an address).
    pub sni: Option<String>,
    /// `false` only with `verify = "none"`: any certificate is accepted.
    pub verify: bool,
}

/// The balancing algorithm of a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Balance {
    /// Smooth weighted round-robin; weight changes take effect at once.
    RoundRobin,
    /// Weighted round-robin with the weights of the config.
    StaticRr,
    /// Fewest requests in flight relative to weight; round-robin among ties.
    LeastConn,
    /// Power of two random choices, weighted.
    Random,
    /// Consistent hash of the client address.
    Source,
    /// Consistent hash of the path (`whole`: path and query).
    Uri { whole: bool },
    /// Consistent hash of a request header; round-robin when it is absent.
    Hdr(http::HeaderName),
    /// The first server (in config order) with a free slot under its `maxconn`.
    First,
    /// A balancer plugin, by name; round-robin when it fails (`on_error = "fallback"`).
    Plugin(String),
}

/// Passive health checking: which failures of real traffic count against a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observe {
    /// Failed connects.
    Layer4,
    /// Failed connects and 5xx answers.
    Layer7,
}

/// The administrative state of a server (HAProxy's READY / DRAIN / MAINT).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AdminState {
    /// Takes traffic when healthy.
    #[default]
    Ready,
    /// Takes no new requests; those in flight finish.
    Drain,
    /// Out of service: no new requests, no health checks counted.
    Maint,
}

/// One `servers` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    pub name: String,
    /// The address as written (`node1:8080`), kept for logs and messages.
    pub addr_spec: String,
    /// The address it resolved to at load time.
    pub addr: SocketAddr,
    /// 0..=256; 0 takes no new requests.
    pub weight: u32,
    /// Whether active health checks run for this server.
    pub check: bool,
    /// Takes traffic only when no active (non-backup) server is usable.
    pub backup: bool,
    /// Requests in flight to this server at most; more wait in the backend's queue.
    pub maxconn: Option<u32>,
    /// The administrative state the server starts in.
    pub state: AdminState,
    /// TCP mode: the PROXY protocol header to send before the client's bytes.
    pub send_proxy: Option<SendProxy>,
    /// TLS to this server (`tls = true` on it or on its backend).
    pub tls: Option<UpstreamTls>,
}

/// `send_proxy` on a server: the PROXY protocol version to prepend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendProxy {
    V1,
    V2,
}

/// A backend's `check` table (active health checks).
#[derive(Debug, Clone, PartialEq)]
pub struct CheckParams {
    /// Between checks while the state is settled and up.
    pub interval: Duration,
    /// Between checks while a state change is in progress (defaults to `interval`).
    pub fastinter: Duration,
    /// Between checks while the server is down (defaults to `interval`).
    pub downinter: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    /// An HTTP check; `None` for a TCP connect check.
    pub http: Option<HttpCheck>,
    /// A health plugin that judges each check's result instead of `expect`.
    pub judge: Option<String>,
}

impl Default for CheckParams {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(2),
            fastinter: Duration::from_secs(2),
            downinter: Duration::from_secs(2),
            timeout: Duration::from_secs(2),
            rise: 2,
            fall: 3,
            http: None,
            judge: None,
        }
    }
}

/// `check.http = "METHOD PATH"` with its `host` and `expect`.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpCheck {
    pub method: http::Method,
    pub path: String,
    /// `Host` header to send; the server's address when absent.
    pub host: Option<String>,
    /// Statuses that count as success, as inclusive ranges; default 200-399.
    pub expect: Vec<(u16, u16)>,
}

impl HttpCheck {
    pub fn expects(&self, status: u16) -> bool {
        self.expect
            .iter()
            .any(|&(lo, hi)| (lo..=hi).contains(&status))
    }
}

/// Default bound on one plugin call.
pub const DEFAULT_PLUGIN_TIMEOUT: Duration = Duration::from_millis(5);
/// Largest `timeout` a plugin may have: a decision is on the request path.
pub const MAX_PLUGIN_TIMEOUT: Duration = Duration::from_secs(1);
/// Smallest `timeout` a plugin may have: calls are timed by a 1 ms epoch tick, so a shorter
/// bound would cut calls that finish well within it.
pub const MIN_PLUGIN_TIMEOUT: Duration = Duration::from_millis(1);
/// Default cap on a plugin instance's linear memory.
pub const DEFAULT_PLUGIN_MEMORY: usize = 32 * 1024 * 1024;
/// Largest `memory` a plugin may have.
pub const MAX_PLUGIN_MEMORY: usize = 256 * 1024 * 1024;
/// Default number of calls after which a reused instance is replaced by a fresh one.
pub const DEFAULT_RECYCLE_AFTER: u64 = 100_000;
/// Default linear memory size past which a reused instance is replaced after its call.
pub const DEFAULT_RECYCLE_MEMORY: usize = 8 * 1024 * 1024;

/// `[plugin.NAME]`: a Wasm component and how to run it.
#[derive(Debug, Clone, PartialEq)]
pub struct Plugin {
    pub name: String,
    /// The `.wasm` file, absolute (a relative `path` is taken from the config file's folder).
    pub path: PathBuf,
    /// `config = { key = "value" }`, sorted by key.
    pub config: Vec<(String, String)>,
    /// Bound on one call (epoch deadline, 1 ms resolution).
    pub timeout: Duration,
    /// Cap on an instance's linear memory, in bytes.
    pub memory: usize,
    pub on_error: OnError,
    /// A reused instance is replaced after this many calls (1: a fresh instance per call).
    pub recycle_after: u64,
    /// A reused instance whose linear memory grew past this is replaced after its call.
    pub recycle_memory: usize,
    /// Where the section and its uses were written, for `wasp check`'s plugin diagnostics.
    pub written: PluginPlaces,
}

/// What a failed plugin call turns into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnError {
    /// The native default decision: the frontend's rules, round-robin, the native check.
    #[default]
    Fallback,
    /// 503 for a routing or balancing decision; DOWN for a health judgement.
    Deny,
}

impl OnError {
    /// As the config writes it.
    pub fn name(self) -> &'static str {
        match self {
            OnError::Fallback => "fallback",
            OnError::Deny => "deny",
        }
    }
}

/// The decisions a plugin can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PluginRole {
    Router,
    Balancer,
    Health,
}

/// A position in the config file (1-based line, column in characters) and its key path.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Place {
    pub line: usize,
    pub col: usize,
    pub key: String,
}

/// Where a plugin's `path` was written and where each role uses it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PluginPlaces {
    pub path: Place,
    pub uses: Vec<(PluginRole, Place)>,
}

pub use crate::tls::certs::CertFiles;

/// Whether a TLS listener asks clients for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAuth {
    /// No client certificate requested.
    #[default]
    None,
    /// Requested and verified when sent; clients without one are accepted.
    Optional,
    /// Required: clients without a valid certificate fail the handshake.
    Required,
}

/// TLS termination settings of one bind address.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    /// Certificates chosen by SNI; the first is the default.
    pub certs: Vec<CertFiles>,
    /// CA bundle verifying client certificates (with `client_auth`).
    pub client_ca: Option<PathBuf>,
    pub client_auth: ClientAuth,
}
