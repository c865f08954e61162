//! TCP mode sessions: route a whole connection (on the client address, the port it connected
//! to and, when a rule asks for it, the TLS server name peeked from its ClientHello), pick a
//! server with the backend's algorithm, connect with retries, send the PROXY protocol header
//! and relay bytes both ways (`relay::relay`) until both sides are closed.
//!
//! Nothing the client sends is interpreted beyond the ClientHello, which is forwarded as it
//! came. A session that cannot be routed or connected is closed (TCP has no error answer).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use http::HeaderMap;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::config::SendProxy;
use crate::health::state::ActiveGuard;
use crate::proxy::Proxy;
use crate::proxy::access;
use crate::proxy::dispatch::{Event, choose, observe};
use crate::proxy::graceful::Watcher;
use crate::proxy::relay::{Ending, relay};
use crate::proxy::respond::Failure;
use crate::proxy::tcp::{peek_sni, proxy_header};
use crate::routing::{ConnView, RouteDecision};
use crate::snapshot::{Backend, Frontend, ListenKey};
use crate::upstream::connect;

/// Most bytes read while waiting for a complete ClientHello (a TLS record is at most 16 KiB
/// plus its header; a ClientHello spanning more than two records is not worth waiting for).
const CLIENT_HELLO_LIMIT: usize = 32 * 1024 + 10;

/// Why a TCP session ended without being relayed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("no backend for this connection")]
    NoBackend,
    #[error("no server available")]
    NoServer,
    #[error("every server stayed at its maxconn for timeout queue")]
    QueueTimeout,
    #[error("reading the client hello: {0}")]
    Inspect(io::Error),
    #[error("sending the first bytes to the server: {0}")]
    Send(io::Error),
}

/// A connected server and what the session needs of it after the snapshot is released.
struct Connected {
    stream: TcpStream,
    server: Arc<str>,
    send_proxy: Option<SendProxy>,
    active: ActiveGuard,
}

/// Serves one TCP-mode connection accepted on the listener `bind`, from `client` to `local`
/// (the connection's own addresses, or those its PROXY protocol header announced).
pub async fn serve(
    client_tcp: TcpStream,
    client: SocketAddr,
    local: SocketAddr,
    bind: ListenKey,
    proxy: Arc<Proxy>,
    watcher: Watcher,
) {
    // Held to the end: a graceful stop waits (up to its grace period) for open sessions.
    let _watcher = watcher;
    let snapshot = proxy.snapshot();
    let Some(frontend) = snapshot.frontend_for(&bind) else {
        return;
    };
    let frontend_state = Arc::clone(&frontend.state);
    let started = Instant::now();
    let log = snapshot.global.access_log;
    let mut client_tcp = client_tcp;
    let _ = client_tcp.set_nodelay(true);

    let head = if frontend.inspects_sni {
        peek_sni(
            &mut client_tcp,
            CLIENT_HELLO_LIMIT,
            frontend.inspect_delay,
            frontend.timeouts.client,
        )
        .await
    } else {
        Ok((None, Vec::new()))
    };
    let (sni, head) = match head {
        Ok(h) => h,
        Err(e) => {
            end_early(frontend, client, None, SessionError::Inspect(e), log);
            return;
        }
    };
    let view = ConnView {
        client,
        local,
        sni: sni.as_deref(),
        frontend: &frontend.name,
    };
    let backend = match frontend.router.route_conn(&view) {
        RouteDecision::Backend(i) => &snapshot.backends[i],
        _ => {
            end_early(frontend, client, None, SessionError::NoBackend, log);
            return;
        }
    };
    let connected = match connect(backend, &view).await {
        Ok(c) => c,
        Err(e) => {
            end_early(frontend, client, Some(backend), e, log);
            return;
        }
    };
    let server = connected.active.server();
    let mut first = match connected.send_proxy {
        Some(version) => proxy_header(version, client, local),
        None => Vec::new(),
    };
    first.extend_from_slice(&head);
    // HAProxy's `timeout tunnel`: once connected, a TCP session is a tunnel, and the tunnel
    // timeout (when set) replaces both idle timeouts.
    let (client_idle, server_idle) = match backend.timeouts.tunnel {
        Some(tunnel) => (tunnel, tunnel),
        None => (frontend.timeouts.client, backend.timeouts.server),
    };
    let frontend_name = Arc::clone(&frontend.name);
    let backend_state = Arc::clone(&backend.state);
    // Nothing below needs the snapshot: a long session must not keep an old config alive.
    drop(snapshot);

    let (mut relayed, result) = relay(
        client_tcp,
        connected.stream,
        first,
        (client_idle, server_idle),
        Ending::CloseLast,
    )
    .await;
    // The inspected hello came from the client: its bytes count (the PROXY header does not).
    relayed.up += head.len() as u64;
    frontend_state
        .traffic
        .count_session(relayed.up, relayed.down);
    backend_state
        .traffic
        .count_session(relayed.up, relayed.down);
    server.traffic.count_bytes(relayed.up, relayed.down);
    // A session that ends on a timeout or a reset was served: not a refused request (the
    // access log gives the error), as HAProxy keeps such aborts out of its request errors.
    if log {
        let error = result.as_ref().err().map(ToString::to_string);
        tracing::info!(
            target: access::TARGET,
            client = %client,
            frontend = &*frontend_name,
            backend = backend_state.name(),
            server = &*connected.server,
            mode = "tcp",
            sni = sni.as_deref(),
            bytes_in = relayed.up,
            bytes_out = relayed.down,
            t_total = access::ms(started.elapsed()),
            error,
            "session closed"
        );
    }
}

/// Picks a server and connects to it; a failed connect (refused, or over `timeout connect`)
/// is retried on the next server up to `retries` times, as in HTTP mode.
async fn connect(backend: &Backend, conn: &ConnView<'_>) -> Result<Connected, SessionError> {
    // Balancers read a request; a connection offers its client address (for `source`) and
    // nothing to hash besides (`uri` and `hdr` backends balance round-robin in TCP mode).
    let headers = HeaderMap::new();
    let view = conn.as_request(&headers);
    let attempts = backend.retries as usize + 1;
    let mut tried: Vec<usize> = Vec::new();
    let mut previous = None;
    let queue_deadline = Instant::now() + backend.timeouts.queue;
    for n in 0..attempts {
        let idx = choose(backend, &view, &mut tried, previous, queue_deadline)
            .await
            .map_err(|f| match f {
                Failure::QueueTimeout => SessionError::QueueTimeout,
                _ => SessionError::NoServer,
            })?;
        let server = &backend.servers[idx];
        let active = server.state.begin_request();
        let addr = server.state.key.addr;
        let error = match connect::tcp(addr, backend.timeouts.connect).await {
            Ok(stream) => {
                observe(backend, server, Event::Answered { error: false });
                return Ok(Connected {
                    stream,
                    server: Arc::clone(&server.name),
                    send_proxy: server.send_proxy,
                    active,
                });
            }
            Err(e) => e.to_string(),
        };
        server.state.record_connect_failure();
        if server.state.should_log_failure() {
            tracing::warn!(
                backend = &*backend.name,
                server = &*server.name,
                error,
                "connect to {addr} failed"
            );
        }
        observe(backend, server, Event::ConnectFailed);
        tried.push(idx);
        previous = Some(idx);
        if n + 1 < attempts {
            server.state.record_retry();
        }
    }
    Err(SessionError::NoServer)
}

/// Counts and logs a session closed before any byte was relayed.
fn end_early(
    frontend: &Frontend,
    client: SocketAddr,
    backend: Option<&Backend>,
    error: SessionError,
    log: bool,
) {
    frontend.state.traffic.count_session(0, 0);
    frontend.state.traffic.count_error();
    if let Some(b) = backend {
        b.state.traffic.count_session(0, 0);
    }
    if log {
        tracing::info!(
            target: access::TARGET,
            client = %client,
            frontend = &*frontend.name,
            backend = backend.map_or("-", |b| &*b.name),
            mode = "tcp",
            error = %error,
            "session refused"
        );
    }
}
