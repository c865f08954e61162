//! The one builder that knows both native and Wasm decision implementations exist: a
//! frontend's router, a backend's balancer, a checked server's judge. Everything else sees
//! only the `Router`, `Balancer` and `HealthCheck` traits. With no plugin configured, the
//! native implementations are returned as they are: no Wasm code is on any path.

use std::collections::HashMap;
use std::sync::Arc;

use crate::balance::{self, Balancer};
use crate::config::{self, Balance};
use crate::health::result::{HealthCheck, NativeCheck};
use crate::health::{BackendState, JudgeSpec, ServerState};
use crate::plugin::adapt::{WasmBalancer, WasmJudge, WasmRouter};
use crate::plugin::registry::PluginSet;
use crate::routing::{AclRouter, BuildError, Router};

/// Why a decision could not be built.
#[derive(Debug, thiserror::Error)]
pub enum DecisionError {
    #[error(transparent)]
    Rules(#[from] BuildError),
    #[error("plugin \"{0}\" is not loaded")]
    PluginMissing(String),
}

/// The router of frontend `f`: its ACL rules, or a plugin deferring to them.
/// `backends` maps backend names to snapshot indexes.
pub fn build_router(
    f: &config::Frontend,
    backends: &HashMap<String, usize>,
    plugins: &PluginSet,
) -> Result<Box<dyn Router>, DecisionError> {
    let native = AclRouter::build(f, |name| backends.get(name).copied())?;
    let Some(name) = &f.router else {
        return Ok(Box::new(native));
    };
    let plugin = plugins
        .get(name)
        .ok_or_else(|| DecisionError::PluginMissing(name.clone()))?;
    Ok(Box::new(WasmRouter::new(
        Arc::clone(plugin),
        native,
        backends.clone(),
    )))
}

/// The balancer of backend `b`: its native algorithm, or a plugin with round-robin as the
/// fallback.
pub fn build_balancer(
    b: &config::Backend,
    servers: &[Arc<ServerState>],
    state: Arc<BackendState>,
    plugins: &PluginSet,
) -> Result<Box<dyn Balancer>, DecisionError> {
    let native = balance::build_balancer(b, servers, state);
    let Balance::Plugin(name) = &b.balance else {
        return Ok(native);
    };
    let plugin = plugins
        .get(name)
        .ok_or_else(|| DecisionError::PluginMissing(name.clone()))?;
    let names = b.servers.iter().map(|s| s.name.clone()).collect();
    Ok(Box::new(WasmBalancer::new(
        Arc::clone(plugin),
        &b.name,
        servers.to_vec(),
        names,
        native,
    )))
}

/// The judge of one checked server: HAProxy's rules (`expect`), or a plugin with those
/// rules as the fallback.
pub fn build_judge(spec: &JudgeSpec<'_>, plugins: &PluginSet) -> Box<dyn HealthCheck> {
    let native = Box::new(NativeCheck::for_params(spec.params));
    let Some(name) = &spec.params.judge else {
        return native;
    };
    match plugins.get(name) {
        Some(plugin) => Box::new(WasmJudge::new(
            Arc::clone(plugin),
            spec.server,
            spec.addr,
            native,
        )),
        None => {
            tracing::error!(
                backend = spec.backend,
                plugin = name,
                "health plugin is not loaded; using the native check"
            );
            native
        }
    }
}
