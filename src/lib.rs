//! # wasp
//!
//! A WebAssembly-scriptable L4/L7 proxy and load balancer.
//!
//! # Layout
//!
//! ```text
//! config    TOML -> spanned tree -> validated model + diagnostics (`wasp check`)
//! routing   RequestView, the Router trait, ACL matchers, the native AclRouter
//! balance   the Balancer trait and one file per native algorithm
//! health    the server state table; active health checks (probes, rise/fall checker tasks)
//! plugin    the wasmtime host: engine, bindings, instance pools, limits, the Wasm-backed
//!           Router/Balancer/HealthCheck, and the one builder that picks native or Wasm
//! snapshot  the immutable Snapshot built from a Config, swapped atomically on reload
//! proxy     listeners, the HTTP request path, upstream forwarding, error responses, access log
//! runtime   process lifecycle: run, reload on SIGHUP, graceful stop
//! echo      the lab's echo server; demo: the reference lab in one process
//! ```
//!
//! Arrows point one way: config -> health -> routing/balance -> plugin -> snapshot -> proxy ->
//! runtime -> binary.
//! A lower module never names a higher one.
#![forbid(unsafe_code)]

pub mod balance;
pub mod config;
pub mod demo;
pub mod echo;
pub mod health;
pub mod plugin;
pub mod proxy;
pub mod routing;
pub mod runtime;
pub mod snapshot;
pub mod upstream;
