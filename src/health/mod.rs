//! Server health and run-time state.
//!
//! Owns the server state table: facts about each server that change while wasp runs (health,
//! admin state, effective weight, in-flight requests, counters) and must survive a config
//! reload. Entries are keyed by a stable id (backend name + server address), never by position.
//!
//! Also owns active health checks: probes (`probe`: TCP connect, HTTP request) produce
//! observations, a [`HealthCheck`] judges them (`result`), one checker task per server runs the
//! rise/fall state machine (`check`), and [`HealthCheckers`] starts, keeps, restarts and stops
//! those tasks as configs are loaded (`checkers`).

pub mod check;
pub mod checkers;
pub mod probe;
pub mod result;
pub mod state;

pub use checkers::{HealthCheckers, JudgeSpec};
pub use result::{CheckResult, HealthCheck, NativeCheck, Observation, Outcome, Reason, Verdict};
pub use state::{BackendState, FrontendState, Health, ServerKey, ServerState, StateTable};
