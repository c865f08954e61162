//! Routing decision cost (filled in with the ACL router).
fn main() {}
