//! Wasm plugins: the wasmtime host (see docs/plugins.md).
//!
//! ```text
//! bindings  the only bindgen! call: the WIT world's types, host imports and role exports
//! engine    the process's one Engine (pooling allocator, epoch interruption), its Linker
//!           (host imports + a minimal WASI: no files, network, env or clocks) and ticker
//! store     a Store's data: host functions, memory limiter, stdout/stderr to the log
//! shared    counters and a bounded key-value store shared by a plugin's instances
//! instance  compiled versions, warm instance pools, one bounded call, faults
//! registry  the configured plugins: load from config, commit, hot-load one, stats
//! adapt     WasmRouter, WasmBalancer, WasmJudge: the decision traits over a plugin
//! build     the one builder choosing native or Wasm decisions
//! check     `wasp check`'s plugin diagnostics
//! watch     the file watcher that hot-loads changed .wasm files
//! ```

pub mod adapt;
pub mod bindings;
pub mod build;
pub mod check;
pub mod engine;
pub mod instance;
pub mod registry;
pub mod scaffold;
pub mod shared;
pub mod store;
pub mod watch;

pub use instance::{Fault, LoadError};
pub use registry::{LivePlugin, Plugin, PluginError, PluginSet, Plugins, Reloaded};

#[cfg(test)]
pub(crate) mod test_plugins;

#[cfg(test)]
mod contract;
