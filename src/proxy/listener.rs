//! Listeners: accept connections and serve HTTP/1.1 and HTTP/2 (prior knowledge) on them,
//! after a TLS handshake on TLS binds.
//!
//! Every worker accepts on every listener, as HAProxy's threads do: each worker's runtime runs an
//! accept loop on its own descriptor of the one listening socket (a `dup`, so all workers share
//! the socket and its accept queue) and serves the connections it accepts to their end, on that
//! worker. The first worker to reach the queue takes the next connection (a busy worker comes
//! later), and no connection moves between threads. One shared socket rather than one
//! `SO_REUSEPORT` socket per worker: closing a listener then resets no connection left waiting
//! in one worker's queue, a port-0 bind needs no further binds to the port it got, and no other
//! process can join the port's group and take a share of the connections.
//!
//! On a TLS bind the handshake must complete within the frontend's `timeout.http_request`
//! (hyper and tokio-rustls have no handshake timeout); a failed or late handshake closes the
//! connection. ALPN decides the protocol: `h2` serves HTTP/2 only, `http/1.1` HTTP/1.1 only,
//! no ALPN either (prior knowledge). The certificate set is the listener's at handshake time;
//! an established connection keeps its session whatever is reloaded later.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustix::net::SocketFlags;
use rustls::server::Acceptor;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::LazyConfigAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::{DEFAULT_MAX_HEADER_SIZE, Mode};
use crate::counters::{OwnedSession, Reserved, Sessions};
use crate::health::FrontendState;
use crate::proxy::Proxy;
use crate::proxy::accept_proxy::{self, Announced, HeaderError};
use crate::proxy::canon::HostCache;
use crate::proxy::client_io::{BODY_408_LEN, ClientIo, ClientTimeouts, ConnShared};
use crate::proxy::detect::{Builders, Served};
use crate::proxy::graceful::{Graceful, Watcher};
use crate::proxy::headers::client_value;
use crate::proxy::http::{ConnInfo, serve};
use crate::proxy::timer::LazyTimer;
use crate::proxy::workers::{Placement, Workers};
use crate::proxy::{access, l4};
use crate::snapshot::ListenKey;
use crate::tls::TlsListener;

/// Pending connections the kernel queues per listener.
const BACKLOG: i32 = 1024;
/// HTTP/2 streams a client may have open at once.
const H2_MAX_STREAMS: u32 = 100;
/// HTTP/2 streams a connection may cause us to reset before it is closed.
const H2_MAX_LOCAL_RESETS: usize = 1024;
/// The HTTP/2 header list limit (SETTINGS_MAX_HEADER_LIST_SIZE) under the default head limit.
const H2_MAX_HEADER_LIST: usize = 16 * 1024;
/// Response bytes an HTTP/2 stream queues for its client beyond what has been written to the
/// socket. hyper's default, 400 KiB, let a client that grants large windows and then stops
/// reading its socket hold that much per stream until `timeout client`. Measured (release
/// build, loopback, 5 such connections of 100 streams each downloading from an HTTP/1.1
/// server): RSS grew by 391 MB with 400 KiB, 102 MB with 64 KiB; what remains per stream is
/// mostly the server connection's read buffer that the queued pieces share. A 1 GB download
/// with `curl --http2-prior-knowledge` on the same machine: median 932 MB/s with 400 KiB,
/// 903 MB/s with 64 KiB, 833 MB/s with 128 KiB (18 runs each, interleaved, ranges of about
/// 650 to 1300: no difference beyond the noise of a shared machine).
const H2_MAX_SEND_BUF: usize = 64 * 1024;
/// Pause after an accept error such as running out of file descriptors.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Binds a non-blocking listening socket (with `SO_REUSEADDR`, as a restart needs).
pub fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// A listener's running accept loops (one per worker); [`ListenerHandle::stop`] closes the
/// socket (open connections go on).
#[derive(Debug)]
pub struct ListenerHandle {
    /// Which configured bind this is.
    pub key: ListenKey,
    /// The address actually bound (differs when the configured port is 0).
    pub local: SocketAddr,
    /// Names this listener's connections in the stop registry ([`Graceful::stop_listener`]).
    pub id: u64,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl ListenerHandle {
    /// Stops accepting on every worker and waits until the socket is closed (every worker's
    /// descriptor of it), so that its address can be bound again at once.
    pub async fn stop(self) {
        self.stop.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
        tracing::info!(listener = %self.local, "listener closed");
    }
}

/// Starts accepting on `listener` for the listener `key`, on every one of `workers`.
pub fn spawn_listener(
    listener: std::net::TcpListener,
    key: ListenKey,
    proxy: Arc<Proxy>,
    workers: &Workers,
    graceful: Arc<Graceful>,
) -> io::Result<ListenerHandle> {
    let local = listener.local_addr()?;
    let stop = CancellationToken::new();
    // Unique for the life of the process (0 is no listener's).
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let tasks = workers.spawn_on_each(|me| {
        // Inside the worker's runtime context: the descriptor registers with that runtime.
        let socket = register(listener.try_clone()?)?;
        Ok(accept_loop(
            socket,
            me,
            workers.placement().clone(),
            local,
            key.clone(),
            Arc::clone(&proxy),
            Arc::clone(&graceful),
            id,
            stop.clone(),
        ))
    })?;
    // The workers hold their own descriptors; this one is closed here.
    drop(listener);
    Ok(ListenerHandle {
        key,
        local,
        id,
        stop,
        tasks,
    })
}

/// Worker `me`'s accept loop on its descriptor of the listening socket, until `stop`: serves
/// what it accepts on this worker, or on the worker `placement` picks instead.
#[allow(clippy::too_many_arguments)]
async fn accept_loop(
    listener: AsyncFd<std::net::TcpListener>,
    me: usize,
    placement: Placement,
    local: SocketAddr,
    key: ListenKey,
    proxy: Arc<Proxy>,
    graceful: Arc<Graceful>,
    id: u64,
    stop: CancellationToken,
) {
    loop {
        // At `maxconn` (the process's, or the frontend's own), stop accepting: new clients wait
        // in the listen queue.
        tokio::select! {
            _ = stop.cancelled() => break,
            () = graceful.room() => {}
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            () = proxy.room_on(&key) => {}
        }
        // The places under both limits are taken once a client is there to accept (under the
        // frontend's, on the frontend serving the listener then: a reload may have changed it
        // while this loop waited), so that loops of other workers and listeners cannot take
        // them too.
        let reserve = || {
            let watcher = graceful.reserve(id).ok_or(Full)?;
            let place = match proxy.frontend_state(&key) {
                Some(state) => Some(Sessions::reserve(state).ok_or(Full)?),
                None => None,
            };
            Ok((watcher, place))
        };
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = accept(&listener, reserve) => accepted,
        };
        match accepted {
            // Another loop took the last place first: wait for room again.
            Ok(None) => {}
            Ok(Some((tcp, client, (watcher, place)))) => {
                let session = place.map(Reserved::confirm);
                let (key, proxy) = (key.clone(), Arc::clone(&proxy));
                let (worker, load) = placement.place(me);
                // The socket registers with the event loop of the worker that serves it.
                let serve = async move {
                    let _load = load;
                    match TcpStream::from_std(tcp) {
                        Ok(tcp) => {
                            serve_connection(tcp, client, key, local, proxy, watcher, session)
                                .await;
                        }
                        Err(e) => tracing::warn!(%client, error = %e, "cannot adopt connection"),
                    }
                };
                if worker == me {
                    tokio::spawn(serve);
                } else {
                    placement.spawn_on(worker, serve);
                }
            }
            Err(e) => {
                tracing::warn!(listener = %local, error = %e, "accept failed");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                }
            }
        }
    }
}

/// Registers a worker's descriptor of a listening socket with that worker's event loop.
#[allow(unsafe_code)]
fn register(listener: std::net::TcpListener) -> io::Result<AsyncFd<std::net::TcpListener>> {
    // SAFETY: the listener owns its descriptor: it stays open, and the same, until the
    // `AsyncFd`, which owns the listener from here on, drops it.
    Ok(unsafe { AsyncFd::register_with_interest(listener, Interest::READABLE) }?)
}

/// No place is free under a frontend's `maxconn`.
struct Full;

/// Accepts a connection, non-blocking and not yet registered with any event loop: tokio's own
/// accept registers every socket with the accepting worker, and one handed to the other worker
/// then cost an `epoll_ctl` to take it out and one more to add it there. Once a client is
/// there, `reserve` takes its place (under a frontend's `maxconn`) before the accept; when it
/// finds none, nothing is accepted (`None`) and the client stays in the listen queue.
async fn accept<P>(
    listener: &AsyncFd<std::net::TcpListener>,
    mut reserve: impl FnMut() -> Result<P, Full>,
) -> io::Result<Option<(std::net::TcpStream, SocketAddr, P)>> {
    loop {
        let mut ready = listener.readable().await?;
        // Full: the readiness is kept, for when there is room.
        let Ok(place) = reserve() else {
            return Ok(None);
        };
        let accepted = ready.try_io(|listener| {
            rustix::net::acceptfrom_with(listener, SocketFlags::NONBLOCK | SocketFlags::CLOEXEC)
                .map_err(io::Error::from)
        });
        let Ok(accepted) = accepted else {
            // WouldBlock (another worker took the client): the readiness is cleared and the
            // place given back; wait for the next connection.
            continue;
        };
        let (fd, peer) = accepted?;
        let peer = peer
            .and_then(|peer| SocketAddr::try_from(peer).ok())
            .ok_or_else(|| io::Error::other("accepted a connection without an IP peer address"))?;
        return Ok(Some((std::net::TcpStream::from(fd), peer, place)));
    }
}

async fn serve_connection(
    mut tcp: TcpStream,
    peer: SocketAddr,
    bind: ListenKey,
    listening: SocketAddr,
    proxy: Arc<Proxy>,
    watcher: Watcher,
    session: Option<OwnedSession<FrontendState>>,
) {
    let mut snapshot = proxy.snapshot();
    let Some(frontend) = snapshot.frontend_for(&bind) else {
        return;
    };
    // Counted from the accept, as in HAProxy: a connection still sending its PROXY header or
    // its TLS handshake is open, and holds a place under `maxconn`. The accept loop counted it
    // on the frontend that served the listener then.
    let session = session.unwrap_or_else(|| Sessions::open_owned(Arc::clone(&frontend.state)));
    let state = Arc::clone(session.owner());
    let (mut client, mut local) = (peer, None);
    if snapshot.expects_proxy_header(&bind, peer.ip()) {
        // The header stands for the peer's client: everything below sees the client's address
        // (and the address it connected to) as if it had connected itself.
        let timeout = frontend.timeouts.client;
        drop(snapshot);
        // Boxed: its 1 KiB buffer would otherwise be part of every connection's task.
        match Box::pin(accept_proxy::read_header(&mut tcp, timeout)).await {
            Ok(Announced::Client {
                client: announced,
                local: to,
            }) => (client, local) = (announced, Some(to)),
            Ok(Announced::Local) => {}
            Err(HeaderError::Silent) => {
                tracing::debug!(%peer, frontend = state.name(), "connection closed before its PROXY header");
                return;
            }
            Err(e) => {
                state.traffic.count_error();
                tracing::info!(%peer, frontend = state.name(), error = %e, "PROXY header refused");
                return;
            }
        }
        snapshot = proxy.snapshot();
    }
    let Some(frontend) = snapshot.frontend_for(&bind) else {
        return;
    };
    if frontend.mode == Mode::Tcp {
        drop(snapshot);
        // The address the client connected to: the listener's, unless it listens on every
        // address (then the socket is asked which one).
        let local = local.unwrap_or_else(|| {
            if listening.ip().is_unspecified() {
                tcp.local_addr().unwrap_or(listening)
            } else {
                listening
            }
        });
        // Each path is boxed: a connection's task is as large as the largest path its future
        // may take, for as long as the connection lasts, so the task itself stays small.
        return Box::pin(l4::serve(tcp, client, local, bind, proxy, watcher)).await;
    }
    let _ = tcp.set_nodelay(true);
    let tls = snapshot.tls_for(&bind).map(Arc::clone);
    let conn = Connection {
        client,
        frontend: Arc::clone(&frontend.name),
        state: Arc::clone(&frontend.state),
        timeouts: ClientTimeouts {
            client: frontend.timeouts.client,
            http_request: frontend.timeouts.http_request,
            http_keep_alive: frontend.timeouts.http_keep_alive,
        },
        max_header_size: frontend.max_header_size,
        bind,
        local_port: local.map_or(listening.port(), |l| l.port()),
        proxy: Arc::clone(&proxy),
    };
    drop(snapshot);
    // Boxed, as the TCP-mode path above: inline, the HTTP path (3 KB) would size the task of
    // every TCP-mode session, and a TLS connection's (the handshake, the TLS stream; more than
    // twice a plain one's) that of every connection (docs/benchmarks.md).
    match tls {
        None => Box::pin(conn.serve(tcp, None, Alpn::None, watcher)).await,
        Some(tls) => Box::pin(conn.serve_tls(tcp, tls, watcher)).await,
    }
}

/// The protocol ALPN agreed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alpn {
    None,
    Http1,
    H2,
}

/// One accepted connection and what serving it needs from its frontend.
struct Connection {
    client: SocketAddr,
    frontend: Arc<str>,
    state: Arc<FrontendState>,
    timeouts: ClientTimeouts,
    max_header_size: usize,
    bind: ListenKey,
    /// The port of the listener the client connected to.
    local_port: u16,
    proxy: Arc<Proxy>,
}

impl Connection {
    /// Makes the TLS handshake on `tcp` (within `timeout http_request`), then serves HTTP on it.
    async fn serve_tls(self, tcp: TcpStream, tls: Arc<TlsListener>, watcher: Watcher) {
        let handshake = async move {
            let start = LazyConfigAcceptor::new(Acceptor::default(), tcp).await?;
            let config = Arc::clone(tls.config_for(start.client_hello().alpn()));
            drop(tls);
            start.into_stream(config).await
        };
        let (client, frontend) = (self.client, &*self.frontend);
        let stream = match tokio::time::timeout(self.timeouts.http_request, handshake).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::debug!(client = %client, frontend, error = %e, "tls handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(client = %client, frontend, "tls handshake timed out");
                return;
            }
        };
        let (_, session) = stream.get_ref();
        let sni = session
            .server_name()
            .map(|n| Arc::from(n.to_ascii_lowercase()));
        let alpn = match session.alpn_protocol() {
            Some(b"h2") => Alpn::H2,
            Some(_) => Alpn::Http1,
            None => Alpn::None,
        };
        self.serve(stream, Some(sni), alpn, watcher).await;
    }

    /// Serves HTTP on `io`; `tls` is `Some(sni)` on a TLS connection.
    async fn serve<IO>(self, io: IO, tls: Option<Option<Arc<str>>>, alpn: Alpn, watcher: Watcher)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Connection {
            client,
            frontend,
            state,
            timeouts,
            max_header_size,
            bind,
            local_port,
            proxy,
        } = self;
        let conn =
            Arc::new(ConnShared::new(watcher.stop_handle()).counted_open(watcher.open_guard()));
        let io = ClientIo::new(io, Arc::clone(&conn), timeouts, alpn == Alpn::H2)
            .max_head(max_header_size);
        let info = Arc::new(ConnInfo {
            bind,
            client,
            local_port,
            scheme: if tls.is_some() { "https" } else { "http" },
            sni: tls.flatten(),
            conn: Arc::clone(&conn),
            proxy,
            h1_timer: Mutex::new(LazyTimer::default()),
            forwarded_for: client_value(client.ip()),
            host: HostCache::default(),
        });
        let service = service_fn(move |req| {
            let in_flight = info.conn.begin_request();
            serve(Arc::clone(&info), req, in_flight)
        });

        let mut http1 = http1::Builder::new();
        http1
            .keep_alive(true)
            // HAProxy's default (no `abortonclose`): a client that shuts down its sending side
            // after its request still gets the response. hyper's default instead reads while
            // a request is in flight, to close on such an EOF, and that read needs a fresh
            // 8 KiB buffer per request while the request still holds the last one.
            .half_close(true)
            // Head timeouts (with a 408) are ClientIo's; hyper's own would close silently.
            .header_read_timeout(None)
            .max_buf_size(max_header_size.max(8192))
            // Head and body copied into one buffer per write rather than writev (as the
            // upstream side does): measured cheaper per request (docs/benchmarks.md).
            .writev(false);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(H2_MAX_STREAMS)
            .max_header_list_size(h2_header_list_limit(max_header_size))
            .max_local_error_reset_streams(Some(H2_MAX_LOCAL_RESETS))
            .max_send_buf_size(H2_MAX_SEND_BUF)
            // WebSocket over HTTP/2 (RFC 8441), as HAProxy offers it (proxy::upgrade).
            .enable_connect_protocol();
        let builders = Builders { http1, http2 };
        // The version ALPN chose is the only one served on the connection (as HAProxy's);
        // without ALPN, HTTP/2 when the client starts with its preface, else HTTP/1. HTTP/1
        // is served with upgrades (WebSocket). The builders are gone before the connection
        // is served, so its task does not carry them, and the connection goes straight into
        // the watcher: a named local for it would take a second slot of its size in this
        // future (rustc keeps a local's slot until the end of its scope).
        let served = watcher
            .watch(match alpn {
                Alpn::H2 => Served::http2(io, service, &{ builders }),
                Alpn::Http1 => Served::http1(io, service, &{ builders }),
                Alpn::None => Served::detect(io, service, builders),
            })
            .await;

        if conn.timed_out_head() {
            connection_error(client, &state, 408, "request head timeout", BODY_408_LEN);
            return;
        }
        let Err(e) = served else { return };
        match e.downcast_ref::<hyper::Error>() {
            Some(he) if he.is_parse_too_large() => {
                connection_error(client, &state, 431, "request head too large", 0)
            }
            // hyper's own answers to these have no body.
            Some(he) if he.is_parse() => connection_error(client, &state, 400, &he.to_string(), 0),
            // HAProxy's `CR` (the client aborted while its request was arriving).
            Some(he) if he.is_incomplete_message() => {
                client_fault(client, &state, "client closed during the request head")
            }
            _ => match h2_protocol_error(&*e) {
                Some(error) => client_fault(client, &state, &error),
                None => {
                    tracing::debug!(client = %client, frontend = &*frontend, error = %e, "connection closed")
                }
            },
        }
    }
}

/// The HTTP/2 header list limit for a frontend whose request heads may be `max_header_size`
/// bytes: 16 KiB, or the head limit when that is lower. The default head limit (64 KiB, sized
/// like HAProxy's buffer) is not asked for by anyone; a head limit raised above it is, and
/// applies to HTTP/2 as well (a client sending big cookies or tokens sends them over both).
fn h2_header_list_limit(max_header_size: usize) -> u32 {
    let limit = if max_header_size > DEFAULT_MAX_HEADER_SIZE {
        max_header_size
    } else {
        max_header_size.min(H2_MAX_HEADER_LIST)
    };
    u32::try_from(limit).unwrap_or(u32::MAX)
}

/// The HTTP/2 protocol error a client made that ended its connection (a GOAWAY wasp sent),
/// for its log line: a malformed request the HTTP/2 library refused before wasp saw it.
fn h2_protocol_error(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut source = Some(e);
    while let Some(err) = source {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            let ours = h2.is_go_away() && !h2.is_remote();
            return (ours && h2.reason() != Some(h2::Reason::NO_ERROR))
                .then(|| format!("HTTP/2 protocol error: {h2}"));
        }
        source = err.source();
    }
    None
}

/// Logs (status -1: no response) and counts as an error a request the client broke off or
/// malformed past answering, as HAProxy logs `<BADREQ>` and counts a request error.
fn client_fault(client: SocketAddr, state: &FrontendState, error: &str) {
    state.traffic.count_error();
    let frontend = state.name();
    tracing::info!(target: access::TARGET, client = %client, frontend, status = -1, error, "request refused");
}

/// Logs and counts a request hyper refused before wasp saw it (hyper already answered it).
fn connection_error(
    client: SocketAddr,
    state: &FrontendState,
    status: u16,
    error: &str,
    bytes_out: u64,
) {
    state.traffic.count_exchange(status, 0, bytes_out, None);
    state.traffic.count_error();
    let frontend = state.name();
    tracing::info!(target: access::TARGET, client = %client, frontend, status, error, "request refused");
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[test]
    fn h2_header_list_limit_is_16k_unless_the_head_limit_says_otherwise() {
        assert_eq!(h2_header_list_limit(DEFAULT_MAX_HEADER_SIZE), 16 * 1024);
        assert_eq!(h2_header_list_limit(32 * 1024), 16 * 1024);
        // Lower head limit: never more over HTTP/2.
        assert_eq!(h2_header_list_limit(8192), 8192);
        // Raised above the default: big heads are wanted, over HTTP/2 too.
        assert_eq!(h2_header_list_limit(128 * 1024), 128 * 1024);
    }

    /// An accepted socket comes with its peer's address, non-blocking, and registered with no
    /// event loop yet (the worker that serves it registers it).
    #[tokio::test]
    async fn accept_gives_a_plain_non_blocking_socket_and_its_peer() {
        let listener = register(bind("127.0.0.1:0".parse().unwrap()).unwrap()).unwrap();
        let addr = listener.get_ref().local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (accepted, peer, ()) = accept(&listener, || Ok(())).await.unwrap().unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        let err = (&accepted).read(&mut [0u8; 8]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        // Not registered with this runtime: it registers here without complaint, and works.
        let mut accepted = TcpStream::from_std(accepted).unwrap();
        let mut client = client;
        client.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        accepted.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
    }

    /// With no place free, a waiting client is left in the listen queue, and taken with its
    /// place once there is one.
    #[tokio::test]
    async fn accept_takes_nothing_without_a_place() {
        let listener = register(bind("127.0.0.1:0".parse().unwrap()).unwrap()).unwrap();
        let addr = listener.get_ref().local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let mut asked = 0;
        let full = accept(&listener, || {
            asked += 1;
            Err::<(), _>(Full)
        })
        .await
        .unwrap();
        assert!(full.is_none());
        assert_eq!(asked, 1, "asked once the client was there");
        let (_, peer, place) = accept(&listener, || Ok("place")).await.unwrap().unwrap();
        assert_eq!(
            peer,
            client.local_addr().unwrap(),
            "the same client, still queued"
        );
        assert_eq!(place, "place");
    }
}
