//! # wasp
//!
//! A WebAssembly-scriptable L4/L7 proxy and load balancer.
//!
//! # Layout
//!
//! ```text
//! limits    process limits set at start (the open-file limit) and the default maxconn they give
//!           (no dependencies)
//! clock     a worker's coarse clock: the last reading, refreshed on wake-up (no dependencies)
//! counters  per-worker sharded traffic counters (no dependencies)
//! tls       certs: PEM certificate, key and CA loading (below config, which checks the files
//!           with it); the rustls server config of a TLS bind with its SNI resolver; the rustls
//!           client config for TLS servers (used by health and upstream)
//! config    TOML -> spanned tree -> validated model + diagnostics (`wasp check`)
//! routing   RequestView, the Router trait, ACL matchers, the native AclRouter
//! balance   the Balancer trait and one file per native algorithm
//! health    the server state table; active health checks (probes, rise/fall checker tasks)
//! plugin    the wasmtime host: engine, bindings, instance pools, limits, the Wasm-backed
//!           Router/Balancer/HealthCheck, and the one builder that picks native or Wasm
//! snapshot  the immutable Snapshot built from a Config, swapped atomically on reload
//! proxy     listeners, the HTTP request path, upstream forwarding, error responses, access log
//! admin     the admin listener: stats page, /metrics, runtime API (through the Control trait
//!           the runtime implements); the `wasp ctl` client
//! upstream  connections to servers and their per-worker pools: HTTP/1.1 or HTTP/2, plain or TLS
//! runtime   process lifecycle: run, reload on SIGHUP, graceful stop; run-time server overlay;
//!           certificate reload when the files change
//! watch     debounced folder watching (plugin hot-loading, certificate reload)
//! write_through  `AsyncWrite` passed through, for socket wrappers that only read differently
//! echo      the lab's echo server; demo: the reference lab in one process
//! ```
//!
//! Arrows point one way: tls::certs -> config/counters/clock -> tls -> health -> routing/balance ->
//! upstream -> plugin -> snapshot -> proxy/admin -> runtime -> binary. (The runtime implements
//! admin's `Control` trait; admin never names it.)
//! A lower module never names a higher one.
// Denied, not forbidden: measured needs (`proxy::sched`: system calls the standard library
// and our dependencies do not wrap) allow it there, with SAFETY notes.
#![deny(unsafe_code)]

pub mod admin;
pub mod balance;
pub mod clock;
pub mod config;
pub mod counters;
pub mod demo;
pub mod echo;
pub mod health;
pub mod limits;
pub mod plugin;
pub mod proxy;
pub mod routing;
pub mod runtime;
pub mod snapshot;
pub mod tls;
pub mod upstream;
pub mod watch;
mod write_through;

#[cfg(test)]
pub(crate) mod test_log;
