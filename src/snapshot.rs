//! The immutable [`Snapshot`]: everything derived from one validated config, ready for the
//! request path. A reload builds a new one and swaps it in with a single `ArcSwap::store`; a
//! request loads it once and keeps that `Arc` to the end.
//!
//! Run-time facts (health, in-flight counts, admin overrides) are not here: servers point into
//! the shared [`StateTable`], so they carry over from one snapshot to the next.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use rustc_hash::FxHashMap;

use crate::balance::Balancer;
use crate::config::acl::{AclRef, AclSpec, Fetch, IpNet};
use crate::config::{Config, Global, Mode, Observe, Redirect, SendProxy, Timeouts};
use crate::health::{BackendState, FrontendState, ServerKey, ServerState, StateTable};
use crate::plugin::PluginSet;
use crate::plugin::build::{DecisionError, build_balancer, build_router};
use crate::routing::Router;
use crate::tls::client::server_name;
use crate::tls::{TlsError, TlsListener};
use crate::upstream::{ClientCache, ClientKey, Pools, TlsKey};

/// Why a snapshot could not be built from a config that passed validation.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("frontend {frontend}: {source}")]
    Router {
        frontend: String,
        source: DecisionError,
    },
    #[error("backend {backend}: {source}")]
    Balancer {
        backend: String,
        source: DecisionError,
    },
    #[error("backend {backend}: server {server}: address {addr} is not a valid authority")]
    Authority {
        backend: String,
        server: String,
        addr: SocketAddr,
    },
    #[error("frontend {frontend}: bind {addr}: {source}")]
    Tls {
        frontend: String,
        addr: SocketAddr,
        source: TlsError,
    },
    #[error("backend {backend}: server {server}: {source}")]
    UpstreamTls {
        backend: String,
        server: String,
        source: TlsError,
    },
}

/// One frontend, ready to serve.
#[derive(Debug)]
pub struct Frontend {
    pub name: Arc<str>,
    pub binds: Vec<SocketAddr>,
    pub redirect: Option<Redirect>,
    pub router: Box<dyn Router>,
    pub mode: Mode,
    /// TCP mode: whether a rule reads `req.ssl_sni` or a router plugin decides (then the
    /// ClientHello is peeked for up to `inspect_delay`).
    pub inspects_sni: bool,
    pub inspect_delay: Duration,
    pub timeouts: Timeouts,
    pub forwardfor: bool,
    pub max_header_size: usize,
    /// The frontend's own `maxconn`; the accept loops read it from `state` once the snapshot
    /// is installed ([`Snapshot::apply_limits`]).
    pub maxconn: Option<u32>,
    /// Run-time state shared across snapshots: connections, counters.
    pub state: Arc<FrontendState>,
}

/// One backend, ready to serve.
#[derive(Debug)]
pub struct Backend {
    pub name: Arc<str>,
    pub mode: Mode,
    pub servers: Vec<Server>,
    pub balancer: Box<dyn Balancer>,
    pub timeouts: Timeouts,
    pub retries: u32,
    pub redispatch: bool,
    pub maxconn: Option<u32>,
    pub observe: Option<Observe>,
    pub error_limit: u32,
    /// Run-time state shared with the servers: in-flight count, queue, generation.
    pub state: Arc<BackendState>,
}

impl Backend {
    /// Whether any server could take a request if it had a free slot.
    pub fn any_usable(&self) -> bool {
        self.servers.iter().any(|s| s.state.usable())
    }

    /// Whether the backend as a whole is at its `maxconn`.
    pub fn is_full(&self) -> bool {
        self.maxconn.is_some_and(|m| self.state.active() >= m)
    }
}

/// One server of a backend.
#[derive(Debug)]
pub struct Server {
    pub name: Arc<str>,
    /// `ip:port`, prebuilt for request URIs.
    pub authority: Authority,
    /// `https` for a TLS server, else `http`.
    pub scheme: Scheme,
    /// Upstream connection pools, one per worker (shared by servers reached alike).
    pub pools: Pools,
    /// This server's key in `pools`.
    pub pool_key: usize,
    pub state: Arc<ServerState>,
    /// Whether active health checks run for it (passive checks only mark such servers down,
    /// since only a check brings them back).
    pub check: bool,
    /// TCP mode: the PROXY protocol header to send first.
    pub send_proxy: Option<SendProxy>,
}

/// Everything one config says, compiled.
#[derive(Debug)]
pub struct Snapshot {
    pub config: Arc<Config>,
    pub global: Global,
    pub frontends: Vec<Frontend>,
    pub backends: Vec<Backend>,
    /// Looked up for every request: a fast hash (keys come from the configuration).
    by_bind: FxHashMap<ListenKey, Listen>,
}

/// What a listener serves: its frontend, TLS termination when configured, and the peers that
/// announce their clients with a PROXY protocol header.
#[derive(Debug)]
struct Listen {
    frontend: usize,
    tls: Option<Arc<TlsListener>>,
    accept_proxy: Option<Box<[IpNet]>>,
}

/// Identifies a listener across reloads: its configured address, plus the frontend's name when
/// the port is 0 (each such bind is its own ephemeral listener; any other address is one
/// socket whichever frontend owns it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ListenKey {
    pub addr: SocketAddr,
    pub frontend: Option<Arc<str>>,
}

impl ListenKey {
    pub fn new(frontend: &str, addr: SocketAddr) -> Self {
        Self {
            addr,
            frontend: (addr.port() == 0).then(|| Arc::from(frontend)),
        }
    }
}

/// Every listener a config asks for, with the frontend that owns it.
pub fn listen_keys(config: &Config) -> Vec<(ListenKey, &str)> {
    config
        .frontends
        .iter()
        .flat_map(|f| {
            f.binds
                .iter()
                .map(move |b| (ListenKey::new(&f.name, b.addr), f.name.as_str()))
        })
        .collect()
}

impl Snapshot {
    /// The index in `frontends` of the frontend that owns the listener `key`.
    pub fn frontend_index(&self, key: &ListenKey) -> Option<usize> {
        self.by_bind.get(key).map(|l| l.frontend)
    }

    /// The frontend that owns the listener `key`.
    pub fn frontend_for(&self, key: &ListenKey) -> Option<&Frontend> {
        self.frontend_index(key).map(|i| &self.frontends[i])
    }

    /// The TLS termination of the listener `key`, if it has one.
    pub fn tls_for(&self, key: &ListenKey) -> Option<&Arc<TlsListener>> {
        self.by_bind.get(key).and_then(|l| l.tls.as_ref())
    }

    /// Whether connections from `peer` to the listener `key` start with a PROXY protocol header
    /// (the bind's `accept_proxy` lists a network holding it).
    pub fn expects_proxy_header(&self, key: &ListenKey, peer: IpAddr) -> bool {
        self.by_bind
            .get(key)
            .and_then(|l| l.accept_proxy.as_deref())
            .is_some_and(|nets| nets.iter().any(|n| n.contains(peer)))
    }

    /// Makes each frontend's `maxconn` the one its connections are held to (the snapshot is
    /// the one serving now).
    pub fn apply_limits(&self) {
        for f in &self.frontends {
            f.state.sessions.set_limit(f.maxconn);
        }
    }

    /// Every TLS listener of this snapshot (to reload their certificates).
    pub fn tls_listeners(&self) -> impl Iterator<Item = &Arc<TlsListener>> {
        self.by_bind.values().filter_map(|l| l.tls.as_ref())
    }
}

/// Builds a snapshot from a validated config. Server state comes from (and is registered in)
/// `states`; upstream clients from `clients`; the plugins the config names from `plugins`
/// (empty when it names none).
pub fn build_snapshot(
    config: Arc<Config>,
    states: &StateTable,
    clients: &ClientCache,
    plugins: &PluginSet,
) -> Result<Snapshot, SnapshotError> {
    let mut backends = Vec::with_capacity(config.backends.len());
    for b in &config.backends {
        let mut servers = Vec::with_capacity(b.servers.len());
        for s in &b.servers {
            let key = ServerKey::of(&b.name, s);
            let authority =
                Authority::try_from(s.addr.to_string()).map_err(|_| SnapshotError::Authority {
                    backend: b.name.clone(),
                    server: s.name.clone(),
                    addr: s.addr,
                })?;
            let upstream_error = |source| SnapshotError::UpstreamTls {
                backend: b.name.clone(),
                server: s.name.clone(),
                source,
            };
            let tls = match &s.tls {
                Some(settings) => Some(TlsKey {
                    settings: settings.clone(),
                    name: server_name(settings, s.addr.ip()),
                    ca_pem: match &settings.ca {
                        Some(ca) => Some(std::fs::read(ca).map_err(|source| {
                            upstream_error(TlsError::Cert(crate::tls::certs::CertError::Read {
                                path: ca.clone(),
                                source,
                            }))
                        })?),
                        None => None,
                    },
                }),
                None => None,
            };
            let client = ClientKey {
                connect_timeout: b.timeouts.connect,
                proto: b.proto,
                tls,
            };
            let pools = clients.pools(&client).map_err(upstream_error)?;
            servers.push(Server {
                name: Arc::from(s.name.as_str()),
                pool_key: pools.key(&authority),
                authority,
                scheme: if s.tls.is_some() {
                    Scheme::HTTPS
                } else {
                    Scheme::HTTP
                },
                pools,
                state: states.server(key, s),
                check: s.check,
                send_proxy: s.send_proxy,
            });
        }
        let server_states: Vec<_> = servers.iter().map(|s| Arc::clone(&s.state)).collect();
        let balancer = build_balancer(b, &server_states, states.backend(&b.name), plugins)
            .map_err(|source| SnapshotError::Balancer {
                backend: b.name.clone(),
                source,
            })?;
        backends.push(Backend {
            name: Arc::from(b.name.as_str()),
            mode: b.mode,
            servers,
            balancer,
            timeouts: b.timeouts,
            retries: b.retries,
            redispatch: b.redispatch,
            maxconn: b.maxconn,
            observe: b.observe,
            error_limit: b.error_limit,
            state: states.backend(&b.name),
        });
    }

    let index: HashMap<String, usize> = config
        .backends
        .iter()
        .enumerate()
        .map(|(i, b)| (b.name.clone(), i))
        .collect();
    let mut frontends = Vec::with_capacity(config.frontends.len());
    let mut by_bind = FxHashMap::default();
    for (i, f) in config.frontends.iter().enumerate() {
        // A frontend routes to backends of its own mode only (`wasp check` holds its rules to
        // that; a router plugin naming another mode's backend makes an invalid decision).
        let same_mode: HashMap<String, usize> = index
            .iter()
            .filter(|(_, b)| config.backends[**b].mode == f.mode)
            .map(|(name, b)| (name.clone(), *b))
            .collect();
        let router =
            build_router(f, &same_mode, plugins).map_err(|source| SnapshotError::Router {
                frontend: f.name.clone(),
                source,
            })?;
        for bind in &f.binds {
            let tls = match &bind.tls {
                Some(settings) => Some(Arc::new(TlsListener::build(settings).map_err(
                    |source| SnapshotError::Tls {
                        frontend: f.name.clone(),
                        addr: bind.addr,
                        source,
                    },
                )?)),
                None => None,
            };
            by_bind.insert(
                ListenKey::new(&f.name, bind.addr),
                Listen {
                    frontend: i,
                    tls,
                    accept_proxy: bind.accept_proxy.as_deref().map(Box::from),
                },
            );
        }
        frontends.push(Frontend {
            name: Arc::from(f.name.as_str()),
            binds: f.binds.iter().map(|b| b.addr).collect(),
            redirect: f.redirect,
            router,
            mode: f.mode,
            // A router plugin may read the server name, so its connections are inspected too.
            inspects_sni: f.mode == Mode::Tcp
                && (f.router.is_some() || uses_fetch(f, &Fetch::SslSni)),
            inspect_delay: f.inspect_delay,
            timeouts: f.timeouts,
            forwardfor: f.forwardfor,
            max_header_size: f.max_header_size,
            maxconn: f.maxconn,
            state: states.frontend(&f.name),
        });
    }

    Ok(Snapshot {
        global: config.global.clone(),
        config,
        frontends,
        backends,
        by_bind,
    })
}

/// Whether an ACL of the frontend (named, or inline in a rule) reads `fetch`.
fn uses_fetch(f: &crate::config::Frontend, fetch: &Fetch) -> bool {
    let spec_uses = |spec: &AclSpec| spec.tests().iter().any(|t| t.fetch() == fetch);
    f.acls.iter().any(|a| spec_uses(&a.spec))
        || f.rules.iter().any(|r| {
            r.condition
                .alternatives()
                .iter()
                .flatten()
                .any(|t| matches!(&t.acl, AclRef::Inline { spec, .. } if spec_uses(spec)))
        })
}

/// Forgets the run-time state of servers that `config` no longer names. Called once a snapshot
/// built from `config` is live, so a rejected reload never loses state.
pub fn prune_states(config: &Config, states: &StateTable) {
    let keep: HashSet<ServerKey> = config
        .backends
        .iter()
        .flat_map(|b| b.servers.iter().map(|s| ServerKey::of(&b.name, s)))
        .collect();
    states.retain(|k| keep.contains(k));
    states.retain_frontends(|name| config.frontends.iter().any(|f| f.name == name));
}
