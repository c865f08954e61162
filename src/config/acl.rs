//! ACL and condition syntax (HAProxy's `FETCH [-i] PATTERN...` and `if`/`unless` expressions):
//! parsed and validated at load time into [`AclSpec`] and [`Condition`].
