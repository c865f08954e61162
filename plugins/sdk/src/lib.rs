//! # wasp-plugin: write wasp plugins in Rust
//!
//! A wasp plugin is a WebAssembly component that takes one or more of wasp's decisions:
//! routing a request to a backend ([`Router`]), picking a server of a backend ([`Balancer`]),
//! judging a health check ([`HealthJudge`]). With this crate a plugin is a trait impl and one
//! export macro per role:
//!
//! ```no_run
//! use wasp_plugin::{Request, RouteDecision, Router};
//!
//! struct ApiRouter;
//!
//! impl Router for ApiRouter {
//!     fn route(req: Request) -> RouteDecision {
//!         if req.path.starts_with("/api/") {
//!             RouteDecision::Backend("api".into())
//!         } else {
//!             RouteDecision::Defer // the frontend's own use_backend rules decide
//!         }
//!     }
//! }
//!
//! wasp_plugin::export_router!(ApiRouter);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2` and load it with
//!
//! ```toml
//! [plugin.api-router]
//! path = "target/wasm32-wasip2/release/api_router.wasm"
//!
//! [frontend.web]
//! router = "api-router"
//! ```
//!
//! A plugin exporting several roles invokes several export macros on the same type (or on
//! different types).
//!
//! ## What a plugin may rely on
//!
//! - Its configuration: [`config`] and [`config_all`] read the `config = { ... }` table of its
//!   `[plugin.NAME]` section. Parsing it once and caching the result in a static is fine: a
//!   new configuration always comes with new instances.
//! - Shared state: [`counter_add`], [`counter_get`], [`kv_get`], [`kv_set`] and [`kv_cas`] reach
//!   state held by the host, shared by every instance and every version of the plugin, which
//!   survives reloads. **Do not keep shared state in your own statics**: wasp runs many
//!   instances of a plugin at once (one or more per worker thread) and replaces them at any
//!   time (after a fault, after a number of calls, when their memory grows, on a new version).
//! - [`log`] and the `info!`-style helpers go to wasp's log, tagged with the plugin's name.
//!   `println!`/`eprintln!` work too (they go to the same log), but cost more.
//! - [`now_ns`]: a monotonic clock in nanoseconds. There is no file system, network,
//!   environment or wall clock.
//!
//! Every answer is checked by the host: an unknown backend, an index out of range, an
//! invalid status or header, a panic, running past the plugin's `timeout` or `memory` all cost
//! one decision, which the host then takes according to the plugin's `on_error` policy.

#![warn(missing_docs)]

/// The generated bindings, one module per plugin role (world). Use the re-exports at the
/// crate root instead.
#[doc(hidden)]
pub mod bindings {
    /// The `router-plugin` world; also the home of the shared types and host imports.
    pub mod router {
        wit_bindgen::generate!({
            world: "router-plugin",
            path: "../../wit",
            pub_export_macro: true,
            export_macro_name: "export",
        });
    }

    /// The `balancer-plugin` world.
    pub mod balancer {
        wit_bindgen::generate!({
            world: "balancer-plugin",
            path: "../../wit",
            pub_export_macro: true,
            export_macro_name: "export",
            with: {
                "wasp:plugin/types@0.1.0": crate::bindings::router::wasp::plugin::types,
                "wasp:plugin/host@0.1.0": crate::bindings::router::wasp::plugin::host,
            },
        });
    }

    /// The `health-plugin` world.
    pub mod health {
        wit_bindgen::generate!({
            world: "health-plugin",
            path: "../../wit",
            pub_export_macro: true,
            export_macro_name: "export",
            with: {
                "wasp:plugin/types@0.1.0": crate::bindings::router::wasp::plugin::types,
                "wasp:plugin/host@0.1.0": crate::bindings::router::wasp::plugin::host,
            },
        });
    }
}

use bindings::router::wasp::plugin::host as imports;

pub use bindings::balancer::exports::wasp::plugin::balancer::Guest as Balancer;
pub use bindings::health::exports::wasp::plugin::health::{
    CheckOutcome, CheckResponse, CheckResult, Guest as HealthJudge, Verdict,
};
pub use bindings::router::exports::wasp::plugin::router::{Guest as Router, RouteDecision};
pub use bindings::router::wasp::plugin::types::{
    DirectResponse, LogLevel, Request, ServerInfo, ServerState,
};

/// Exports `$ty` (which implements [`Router`]) as the plugin's router.
///
/// ```no_run
/// struct Everything;
/// impl wasp_plugin::Router for Everything {
///     fn route(_req: wasp_plugin::Request) -> wasp_plugin::RouteDecision {
///         wasp_plugin::RouteDecision::Backend("app".into())
///     }
/// }
/// wasp_plugin::export_router!(Everything);
/// ```
#[macro_export]
macro_rules! export_router {
    ($ty:ident) => {
        // Exported by the component only: on the host (`cargo test`) the plugin is a plain
        // crate whose trait impl its tests call directly.
        #[cfg(target_arch = "wasm32")]
        $crate::__export_router_plugin_impl!($ty with_types_in $crate::bindings::router);
        #[cfg(not(target_arch = "wasm32"))]
        const _: () = {
            let _ = <$ty as $crate::Router>::route;
        };
    };
}

/// Exports `$ty` (which implements [`Balancer`]) as the plugin's balancer.
///
/// ```no_run
/// struct FirstOne;
/// impl wasp_plugin::Balancer for FirstOne {
///     fn pick(
///         _backend: String,
///         servers: Vec<wasp_plugin::ServerInfo>,
///         _req: wasp_plugin::Request,
///     ) -> Option<u32> {
///         (!servers.is_empty()).then_some(0)
///     }
/// }
/// wasp_plugin::export_balancer!(FirstOne);
/// ```
#[macro_export]
macro_rules! export_balancer {
    ($ty:ident) => {
        // Exported by the component only: on the host (`cargo test`) the plugin is a plain
        // crate whose trait impl its tests call directly.
        #[cfg(target_arch = "wasm32")]
        $crate::__export_balancer_plugin_impl!($ty with_types_in $crate::bindings::balancer);
        #[cfg(not(target_arch = "wasm32"))]
        const _: () = {
            let _ = <$ty as $crate::Balancer>::pick;
        };
    };
}

/// Exports `$ty` (which implements [`HealthJudge`]) as the plugin's health-check judge.
///
/// ```no_run
/// use wasp_plugin::{CheckOutcome, CheckResult, Verdict};
/// struct Fast;
/// impl wasp_plugin::HealthJudge for Fast {
///     fn judge(result: CheckResult) -> Verdict {
///         match result.outcome {
///             CheckOutcome::Failed(e) => Verdict::Down(e),
///             _ if result.latency_ms > 200 => Verdict::Down("too slow".into()),
///             _ => Verdict::Up,
///         }
///     }
/// }
/// wasp_plugin::export_health!(Fast);
/// ```
#[macro_export]
macro_rules! export_health {
    ($ty:ident) => {
        // Exported by the component only: on the host (`cargo test`) the plugin is a plain
        // crate whose trait impl its tests call directly.
        #[cfg(target_arch = "wasm32")]
        $crate::__export_health_plugin_impl!($ty with_types_in $crate::bindings::health);
        #[cfg(not(target_arch = "wasm32"))]
        const _: () = {
            let _ = <$ty as $crate::HealthJudge>::judge;
        };
    };
}

impl Request {
    /// The first value of header `name` (matched case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The value of cookie `name` from the `cookie` headers.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("cookie"))
            .flat_map(|(_, v)| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }
}

impl DirectResponse {
    /// A response with `status`, a `content-type: text/plain` header and `body`.
    pub fn text(status: u16, body: impl Into<String>) -> DirectResponse {
        DirectResponse {
            status,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: body.into().into_bytes(),
        }
    }
}

/// Logs `message` at `level` in wasp's log, tagged with the plugin's name. The host
/// rate-limits plugin logs.
pub fn log(level: LogLevel, message: &str) {
    imports::log(level, message);
}

/// Logs at info level, with `format!` arguments.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log($crate::LogLevel::Info, &format!($($arg)*)) };
}

/// Logs at warn level, with `format!` arguments.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log($crate::LogLevel::Warn, &format!($($arg)*)) };
}

/// Logs at debug level, with `format!` arguments.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => { $crate::log($crate::LogLevel::Debug, &format!($($arg)*)) };
}

/// Monotonic time in nanoseconds; only differences are meaningful.
pub fn now_ns() -> u64 {
    imports::now_ns()
}

/// The plugin's `config` entry `key`.
pub fn config(key: &str) -> Option<String> {
    imports::config_get(key)
}

/// Every `config` entry, sorted by key.
pub fn config_all() -> Vec<(String, String)> {
    imports::config_all()
}

/// Adds `delta` to the shared counter `name` and returns its new value.
pub fn counter_add(name: &str, delta: i64) -> i64 {
    imports::counter_add(name, delta)
}

/// The shared counter `name` (0 if never written).
pub fn counter_get(name: &str) -> i64 {
    imports::counter_get(name)
}

/// The shared value at `key`.
pub fn kv_get(key: &str) -> Option<Vec<u8>> {
    imports::kv_get(key)
}

/// Sets the shared value at `key`; false when the store's limits refused it.
pub fn kv_set(key: &str, value: &[u8]) -> bool {
    imports::kv_set(key, value)
}

/// Sets `key` to `new` only if its current value is `expected` (`None`: absent).
pub fn kv_cas(key: &str, expected: Option<&[u8]>, new: &[u8]) -> bool {
    imports::kv_cas(key, expected, new)
}

/// FNV-1a, 64 bits: a small stable hash for stickiness (the same on every instance, version
/// and host).
pub fn hash64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> Request {
        Request {
            method: "GET".into(),
            scheme: "http".into(),
            host: "example.com".into(),
            path: "/".into(),
            query: String::new(),
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).into(), (*v).into()))
                .collect(),
            client_ip: "127.0.0.1".into(),
            client_port: 4000,
            local_port: 80,
            frontend: "web".into(),
            sni: None,
        }
    }

    #[test]
    fn headers_and_cookies() {
        let r = req(&[("x-user", "ann"), ("cookie", "a=1; session=abc; b=2")]);
        assert_eq!(r.header("X-User"), Some("ann"));
        assert_eq!(r.header("absent"), None);
        assert_eq!(r.cookie("session"), Some("abc"));
        assert_eq!(r.cookie("b"), Some("2"));
        assert_eq!(r.cookie("c"), None);
    }

    #[test]
    fn hash_is_stable() {
        assert_eq!(hash64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(hash64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
