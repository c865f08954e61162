//! Test-only plugin: a router that counts paths in a `std::collections::HashMap`, whose
//! default hasher is seeded from WASI randomness, which wasp does not provide: the test
//! expects `wasp check` to refuse it and say why.

use std::collections::HashMap;

use wasp_plugin::{Request, RouteDecision, Router};

struct Counting;

impl Router for Counting {
    fn route(req: Request) -> RouteDecision {
        let mut seen = HashMap::new();
        *seen.entry(req.path).or_insert(0u32) += 1;
        RouteDecision::Defer
    }
}

wasp_plugin::export_router!(Counting);
