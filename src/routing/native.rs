//! The native router: HAProxy-style `use_backend` rules over named ACLs, then the default backend.

/// Placeholder until the rule engine lands.
#[derive(Debug)]
pub struct AclRouter;
