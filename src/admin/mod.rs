//! The control plane on the admin listener (`[admin]`): the stats page (`/`), `/stats.json`,
//! Prometheus `/metrics`, `/healthz`, and the runtime API under `/api/` (JSON over HTTP),
//! plus the HTTP client `wasp ctl` uses.
//!
//! `server` accepts connections (TCP and/or a Unix socket) on the control runtime and checks
//! HTTP basic auth (`auth`); `api` routes requests; `view` builds the one stats model that
//! `html` renders, `metrics` encodes and `/stats.json` serialises; `client` and `ctl` are the
//! command-line side.
//!
//! The admin module does not name the runtime: what it may change goes through the
//! [`Control`] trait, which the runtime implements.

pub mod api;
pub mod auth;
pub mod client;
pub mod ctl;
pub mod html;
pub mod metrics;
pub mod server;
pub mod view;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::Serialize;

use crate::config::{Diagnostic, ServerSpec, Severity};
use crate::plugin::{LivePlugin, Reloaded};
use crate::snapshot::Snapshot;

pub use server::{AdminError, AdminHandle, spawn_admin};

/// A boxed future, for the async methods of [`Control`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the admin API may see and change in a running proxy.
pub trait Control: Send + Sync + 'static {
    /// The live snapshot (servers' run-time state is reachable through it).
    fn snapshot(&self) -> Arc<Snapshot>;
    /// True once a graceful stop has begun.
    fn draining(&self) -> bool;
    /// Worker threads serving connections.
    fn workers(&self) -> usize;
    /// The most client connections open at once (`[global] maxconn`, or its default).
    fn maxconn(&self) -> usize;
    /// Client connections open now, on every listener (those of frontends a reload removed or
    /// renamed included).
    fn connections(&self) -> usize;
    /// Re-reads and applies the config file, as SIGHUP does.
    fn reload(&self) -> BoxFuture<'_, Result<(), ControlError>>;
    /// Adds a server to a backend at run time.
    fn add_server(
        &self,
        backend: String,
        spec: ServerSpec,
    ) -> BoxFuture<'_, Result<(), ControlError>>;
    /// Removes a server from a backend at run time.
    fn remove_server(
        &self,
        backend: String,
        server: String,
    ) -> BoxFuture<'_, Result<(), ControlError>>;
    /// The live plugins.
    fn plugins(&self) -> Vec<LivePlugin>;
    /// Hot-loads plugin `name` from its file, as a file change does.
    fn reload_plugin(&self, name: String) -> BoxFuture<'_, Result<Reloaded, ControlError>>;
}

/// Why a change through the admin API was refused.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The config file has errors; nothing changed.
    #[error("{message}")]
    Rejected {
        message: String,
        diagnostics: Vec<DiagnosticView>,
    },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    /// The change was valid but could not be carried out (e.g. a listener could not bind).
    #[error("{0}")]
    Failed(String),
    #[error("wasp is stopping")]
    Stopping,
}

/// A config diagnostic as the API reports it.
#[derive(Debug, Clone, Serialize)]
pub struct DiagnosticView {
    pub severity: &'static str,
    pub line: usize,
    pub col: usize,
    pub path: String,
    pub message: String,
    pub help: Option<String>,
    /// The line `wasp check` prints.
    pub text: String,
}

impl DiagnosticView {
    pub fn new(d: &Diagnostic, file: &std::path::Path) -> Self {
        Self {
            severity: match d.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
            },
            line: d.line,
            col: d.col,
            path: d.path.clone(),
            message: d.message.clone(),
            help: d.help.clone(),
            text: d.render(file).trim_end().to_owned(),
        }
    }
}
