//! The native router: HAProxy-style `use_backend` rules over named ACLs, then the default backend.

/// Placeholder until the rule engine lands.
#[derive(Debug)]
pub struct AclRouter;

// TEMPORARY stand-in until the rule engine branch merges.
use crate::config::Frontend;
use crate::routing::{RequestView, RouteDecision, Router};

#[derive(Debug, thiserror::Error)]
#[error("unknown backend {0}")]
pub struct BuildError(String);

impl AclRouter {
    pub fn build(frontend: &Frontend, backend_index: impl Fn(&str) -> Option<usize>) -> Result<AclRouter, BuildError> {
        let _ = frontend.default_backend.as_deref().map(&backend_index);
        Ok(AclRouter)
    }
}

impl Router for AclRouter {
    fn route(&self, _req: &RequestView<'_>) -> RouteDecision {
        RouteDecision::Backend(0)
    }
}
