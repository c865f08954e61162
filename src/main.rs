//! The `wasp` binary: CLI parsing, tracing setup, then one library call.

fn main() {}
