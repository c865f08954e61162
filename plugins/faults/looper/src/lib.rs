//! Test-only plugin: a router that loops forever on requests whose path starts with `/fault`, and
//! otherwise answers `200 looper ok` itself. Used by wasp's fault tests.

use wasp_plugin::{DirectResponse, Request, RouteDecision, Router};

struct Faulty;

impl Router for Faulty {
    fn route(req: Request) -> RouteDecision {
        if req.path.starts_with("/fault") {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        RouteDecision::Respond(DirectResponse::text(200, "looper ok\n"))
    }
}

wasp_plugin::export_router!(Faulty);
