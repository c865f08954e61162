//! ACL and condition syntax (HAProxy's `FETCH [-i] PATTERN...` and `if`/`unless` expressions):
//! parsed and validated at load time into [`AclSpec`] and [`Condition`].

/// A parsed ACL: a sample fetch, a match method, flags and patterns.
#[derive(Debug, Clone)]
pub struct AclSpec {}

/// A parsed `if`/`unless` condition over ACL names.
#[derive(Debug, Clone)]
pub struct Condition {}
