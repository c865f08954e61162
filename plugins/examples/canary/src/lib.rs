//! `canary`: sends a share of clients, or any request carrying a chosen header, to a canary
//! backend; everything else is left to the frontend's native rules.
//!
//! Config: `backend = "canary"` (required), `percent = "10"` (0..=100, default 0), and
//! `header = "x-canary"` (optional: any request with this header goes to the canary).
//! A client is in the canary share when a hash of its IP address falls below `percent`, so
//! the same client always lands on the same side (sticky), on every instance and version.

use std::sync::OnceLock;

use wasp_plugin::{Request, RouteDecision, Router};

/// The parsed configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Canary {
    pub backend: String,
    pub percent: u64,
    pub header: Option<String>,
}

impl Canary {
    /// From config entries; `None` when `backend` is missing.
    pub fn from_config(get: impl Fn(&str) -> Option<String>) -> Option<Canary> {
        Some(Canary {
            backend: get("backend").filter(|b| !b.is_empty())?,
            percent: get("percent")
                .and_then(|p| p.trim().parse().ok())
                .unwrap_or(0u64)
                .min(100),
            header: get("header").filter(|h| !h.is_empty()),
        })
    }

    /// Whether this request goes to the canary backend.
    pub fn selects(&self, client_ip: &str, header_present: bool) -> bool {
        header_present || wasp_plugin::hash64(client_ip.as_bytes()) % 100 < self.percent
    }
}

fn canary() -> Option<&'static Canary> {
    static CANARY: OnceLock<Option<Canary>> = OnceLock::new();
    CANARY
        .get_or_init(|| Canary::from_config(wasp_plugin::config))
        .as_ref()
}

struct CanaryRouter;

impl Router for CanaryRouter {
    fn route(req: Request) -> RouteDecision {
        let Some(c) = canary() else {
            wasp_plugin::warn!("canary: no backend configured; deferring");
            return RouteDecision::Defer;
        };
        let flagged = c.header.as_deref().is_some_and(|h| req.header(h).is_some());
        if c.selects(&req.client_ip, flagged) {
            RouteDecision::Backend(c.backend.clone())
        } else {
            RouteDecision::Defer
        }
    }
}

wasp_plugin::export_router!(CanaryRouter);

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(percent: &str) -> Canary {
        Canary::from_config(|k| match k {
            "backend" => Some("canary".into()),
            "percent" => Some(percent.into()),
            "header" => Some("x-canary".into()),
            _ => None,
        })
        .unwrap()
    }

    #[test]
    fn share_of_clients_is_about_percent_and_sticky() {
        let c = conf("10");
        let ips: Vec<String> = (0..10_000)
            .map(|i| format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256))
            .collect();
        let selected = ips.iter().filter(|ip| c.selects(ip, false)).count();
        assert!((700..=1300).contains(&selected), "{selected} of 10000");
        for ip in &ips[..100] {
            assert_eq!(c.selects(ip, false), c.selects(ip, false));
        }
    }

    #[test]
    fn header_always_selects_and_bounds_hold() {
        assert!(conf("0").selects("1.2.3.4", true));
        assert!(!conf("0").selects("1.2.3.4", false));
        assert!(conf("100").selects("1.2.3.4", false));
        assert_eq!(conf("250").percent, 100);
        assert_eq!(conf("x").percent, 0);
        assert!(Canary::from_config(|_| None).is_none());
    }
}
