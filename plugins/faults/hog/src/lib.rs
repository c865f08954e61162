//! Test-only plugin: a router that allocates without bound on requests whose path starts with `/fault`, and
//! otherwise answers `200 hog ok` itself. Used by wasp's fault tests.

use wasp_plugin::{DirectResponse, Request, RouteDecision, Router};

struct Faulty;

impl Router for Faulty {
    fn route(req: Request) -> RouteDecision {
        if req.path.starts_with("/fault") {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&mut hoard);
            }
        }
        RouteDecision::Respond(DirectResponse::text(200, "hog ok\n"))
    }
}

wasp_plugin::export_router!(Faulty);
