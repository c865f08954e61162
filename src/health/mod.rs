//! Server health and run-time state.
//!
//! Owns the server state table: facts about each server that change while wasp runs (health,
//! admin state, effective weight, in-flight requests, counters) and must survive a config
//! reload. Entries are keyed by a stable id (backend name + server address), never by position.

pub mod state;

pub use state::{BackendState, Health, ServerKey, ServerState, StateTable};
