//! Test-only plugin: a router that panics on requests whose path starts with `/fault`, and
//! otherwise answers `200 panicker ok` itself. Used by wasp's fault tests.

use wasp_plugin::{DirectResponse, Request, RouteDecision, Router};

struct Faulty;

impl Router for Faulty {
    fn route(req: Request) -> RouteDecision {
        if req.path.starts_with("/fault") {
            panic!("panicker: asked to fail on {}", req.path);
        }
        RouteDecision::Respond(DirectResponse::text(200, "panicker ok\n"))
    }
}

wasp_plugin::export_router!(Faulty);
