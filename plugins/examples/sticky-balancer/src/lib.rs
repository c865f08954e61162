//! `sticky-balancer`: consistent hashing on a cookie or a header, round-robin when the
//! request has neither.
//!
//! Config: `cookie = "session"` and/or `header = "x-user"` (the cookie is tried first).
//! The hash is rendezvous hashing over server *names*: a key stays on its server while that
//! server is a candidate, and only the keys of a server that leaves move. Round-robin uses a
//! counter held by the host, so it is shared by every instance of the plugin.

use std::sync::OnceLock;

use wasp_plugin::{Balancer, Request, ServerInfo};

/// Where the stickiness key comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeySource {
    pub cookie: Option<String>,
    pub header: Option<String>,
}

impl KeySource {
    /// The key of `req`, if it has one.
    pub fn key<'r>(&self, req: &'r Request) -> Option<&'r str> {
        let from_cookie = self.cookie.as_deref().and_then(|c| req.cookie(c));
        from_cookie
            .or_else(|| self.header.as_deref().and_then(|h| req.header(h)))
            .filter(|k| !k.is_empty())
    }
}

/// Rendezvous (highest random weight) hashing: the server whose hash of (name, key) is the
/// highest.
pub fn rendezvous(servers: &[ServerInfo], key: &str) -> Option<usize> {
    servers
        .iter()
        .enumerate()
        .max_by_key(|(_, s)| {
            let mut bytes = Vec::with_capacity(s.name.len() + key.len() + 1);
            bytes.extend_from_slice(s.name.as_bytes());
            bytes.push(0);
            bytes.extend_from_slice(key.as_bytes());
            mix(wasp_plugin::hash64(&bytes))
        })
        .map(|(i, _)| i)
}

/// SplitMix64's finalizer: FNV alone leaves the high bits of similar inputs correlated,
/// which skews a highest-hash choice.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn source() -> &'static KeySource {
    static SOURCE: OnceLock<KeySource> = OnceLock::new();
    SOURCE.get_or_init(|| KeySource {
        cookie: wasp_plugin::config("cookie"),
        header: wasp_plugin::config("header"),
    })
}

struct Sticky;

impl Balancer for Sticky {
    fn pick(backend: String, servers: Vec<ServerInfo>, req: Request) -> Option<u32> {
        if servers.is_empty() {
            return None;
        }
        let index = match source().key(&req) {
            Some(key) => rendezvous(&servers, key)?,
            None => {
                let n = wasp_plugin::counter_add(&format!("rr:{backend}"), 1);
                (n.unsigned_abs() % servers.len() as u64) as usize
            }
        };
        u32::try_from(index).ok()
    }
}

wasp_plugin::export_balancer!(Sticky);

#[cfg(test)]
mod tests {
    use super::*;
    use wasp_plugin::ServerState;

    fn servers(names: &[&str]) -> Vec<ServerInfo> {
        names
            .iter()
            .map(|n| ServerInfo {
                name: (*n).into(),
                address: "127.0.0.1:1".into(),
                weight: 1,
                state: ServerState::Up,
                healthy: true,
                active_connections: 0,
            })
            .collect()
    }

    #[test]
    fn keys_stick_and_only_a_removed_servers_keys_move() {
        let all = servers(&["a", "b", "c", "d"]);
        let without_c = servers(&["a", "b", "d"]);
        let mut moved = 0;
        for k in 0..1000 {
            let key = format!("user-{k}");
            let before = &all[rendezvous(&all, &key).unwrap()].name;
            assert_eq!(before, &all[rendezvous(&all, &key).unwrap()].name);
            let after = &without_c[rendezvous(&without_c, &key).unwrap()].name;
            if before != after {
                assert_eq!(before, "c");
                moved += 1;
            }
        }
        assert!((150..=350).contains(&moved), "{moved}");
        assert_eq!(rendezvous(&[], "k"), None);
    }

    #[test]
    fn cookie_first_then_header() {
        let src = KeySource {
            cookie: Some("session".into()),
            header: Some("x-user".into()),
        };
        let mut req = Request {
            method: "GET".into(),
            scheme: "http".into(),
            host: "h".into(),
            path: "/".into(),
            query: String::new(),
            headers: vec![("x-user".into(), "ann".into())],
            client_ip: "127.0.0.1".into(),
            client_port: 1,
            local_port: 80,
            frontend: "f".into(),
            sni: None,
        };
        assert_eq!(src.key(&req), Some("ann"));
        req.headers.push(("cookie".into(), "session=s1".into()));
        assert_eq!(src.key(&req), Some("s1"));
        req.headers.clear();
        assert_eq!(src.key(&req), None);
    }
}
