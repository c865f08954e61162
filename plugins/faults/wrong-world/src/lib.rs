//! Test-only plugin: a balancer (it exports only `wasp:plugin/balancer`), for the test that
//! configures it as a router and expects `wasp check` to name the missing export.

use wasp_plugin::{Balancer, Request, ServerInfo};

struct First;

impl Balancer for First {
    fn pick(_backend: String, servers: Vec<ServerInfo>, _req: Request) -> Option<u32> {
        (!servers.is_empty()).then_some(0)
    }
}

wasp_plugin::export_balancer!(First);
