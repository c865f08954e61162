//! The validated configuration: plain domain types with every default applied.
//!
//! Nothing here refers to TOML or spans; `config::load` builds these only when the file has no
//! errors. Higher layers (routing, balance, snapshot, proxy) consume these types and nothing else
//! from the config module.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::acl::{AclSpec, Condition};

/// Default limit for a request head (request line plus headers), as HAProxy's `tune.bufsize`.
pub const DEFAULT_MAX_HEADER_SIZE: usize = 64 * 1024;
/// Smallest `max_header_size` accepted: HAProxy's smallest sensible `tune.bufsize`.
pub const MIN_MAX_HEADER_SIZE: usize = 8192;
/// Default number of extra attempts after a failed upstream connect.
pub const DEFAULT_RETRIES: u32 = 3;
/// Default grace period for in-flight requests on shutdown.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);
/// Largest server weight accepted, as in HAProxy.
pub const MAX_WEIGHT: u32 = 256;

/// A whole validated configuration file.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was read from (used for reloads and messages).
    pub path: PathBuf,
    pub global: Global,
    pub admin: Option<Admin>,
    pub frontends: Vec<Frontend>,
    pub backends: Vec<Backend>,
}

impl Config {
    pub fn backend(&self, name: &str) -> Option<&Backend> {
        self.backends.iter().find(|b| b.name == name)
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
}

impl Default for Global {
    fn default() -> Self {
        Self {
            workers: None,
            log_format: LogFormat::Text,
            access_log: true,
            grace: DEFAULT_GRACE,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// `[admin]`: the stats page / metrics / runtime API listener.
#[derive(Debug, Clone, PartialEq)]
pub struct Admin {
    pub bind: SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Http,
    Tcp,
}

/// Every timeout, resolved: `defaults.timeout` overlaid by the section's own `timeout` table.
///
/// Meanings are HAProxy's: `client` and `server` are inactivity timeouts, `connect` bounds one
/// upstream TCP connect, `http_request` bounds the arrival of a whole request head,
/// `http_keep_alive` bounds the wait for the next request on an idle keep-alive connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub client: Duration,
    pub server: Duration,
    pub connect: Duration,
    pub http_request: Duration,
    pub http_keep_alive: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            client: Duration::from_secs(30),
            server: Duration::from_secs(30),
            connect: Duration::from_secs(5),
            http_request: Duration::from_secs(10),
            http_keep_alive: Duration::from_secs(10),
        }
    }
}

/// `[frontend.NAME]`.
#[derive(Debug, Clone)]
pub struct Frontend {
    pub name: String,
    pub binds: Vec<SocketAddr>,
    pub mode: Mode,
    /// Named ACLs in file order.
    pub acls: Vec<NamedAcl>,
    /// `use_backend` rules in file order.
    pub rules: Vec<UseBackend>,
    pub default_backend: Option<String>,
    pub timeouts: Timeouts,
    /// Add `X-Forwarded-For/-Proto/-Host` (and drop client-supplied ones). Default true.
    pub forwardfor: bool,
    /// Largest accepted request head in bytes; larger heads get 431.
    pub max_header_size: usize,
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
    /// Extra attempts on another server after a failed connect.
    pub retries: u32,
    pub check: CheckParams,
}

/// The balancing algorithm of a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
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
}

/// A backend's `check` table (active health checks).
#[derive(Debug, Clone, PartialEq)]
pub struct CheckParams {
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    /// `"METHOD PATH"` for an HTTP check; `None` for a TCP connect check.
    pub http: Option<(http::Method, String)>,
}

impl Default for CheckParams {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(2),
            rise: 2,
            fall: 3,
            http: None,
        }
    }
}
