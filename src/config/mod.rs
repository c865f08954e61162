//! Configuration: TOML text -> spanned tree -> validated [`Config`] + diagnostics.
//!
//! Owns the file format (the contract in DESIGN.md), every diagnostic `wasp check` prints, and
//! the domain types the rest of the crate is built from (`model`).

pub mod acl;
pub mod model;

pub use model::*;
