//! Servers added and removed at run time (the runtime API), kept apart from the file's config
//! and laid over it whenever a snapshot is built, so that they survive reloads.
//!
//! The rule: **the file wins when it changes something; otherwise the run-time change stays.**
//!
//! - An added server is appended to its backend. It stays across reloads until the file
//!   itself defines a server of that name in that backend (the file's entry then replaces
//!   it), or the file drops the backend (the addition is dropped with it).
//! - A removed file server stays removed across reloads as long as the file's entry for it is
//!   unchanged. When a reload brings a different entry under that name (another address,
//!   weight, ...), or drops it, the removal is forgotten and the file's entry applies.

use std::collections::BTreeMap;

use crate::config::{Config, Server};

/// The run-time additions and removals, per backend.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overlay {
    /// Servers added, per backend, in the order they were added.
    added: BTreeMap<String, Vec<Server>>,
    /// File servers removed, per backend: the file's entry as it was when removed.
    removed: BTreeMap<String, Vec<Server>>,
}

/// Why a run-time change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OverlayError {
    #[error("no backend named \"{0}\"")]
    NoBackend(String),
    #[error("backend {backend} has no server named \"{server}\"")]
    NoServer { backend: String, server: String },
    #[error("backend {backend} already has a server named \"{server}\"")]
    Exists { backend: String, server: String },
    #[error("backend {0} would have no servers left")]
    LastServer(String),
}

impl Overlay {
    /// `base` with the additions and removals applied.
    pub fn apply(&self, base: &Config) -> Config {
        let mut config = base.clone();
        for b in &mut config.backends {
            if let Some(removed) = self.removed.get(&b.name) {
                b.servers.retain(|s| !removed.contains(s));
            }
            if let Some(added) = self.added.get(&b.name) {
                b.servers.extend(added.iter().cloned());
            }
        }
        config
    }

    /// This overlay adjusted to a new file config, by the rule in the module doc.
    pub fn rebased(&self, base: &Config) -> Overlay {
        let mut next = Overlay::default();
        for (backend, added) in &self.added {
            let Some(b) = base.backend(backend) else {
                continue;
            };
            let kept: Vec<Server> = added
                .iter()
                .filter(|s| !b.servers.iter().any(|f| f.name == s.name))
                .cloned()
                .collect();
            if !kept.is_empty() {
                next.added.insert(backend.clone(), kept);
            }
        }
        for (backend, removed) in &self.removed {
            let Some(b) = base.backend(backend) else {
                continue;
            };
            let kept: Vec<Server> = removed
                .iter()
                .filter(|s| b.servers.contains(s))
                .cloned()
                .collect();
            if !kept.is_empty() {
                next.removed.insert(backend.clone(), kept);
            }
        }
        next
    }

    /// Adds `server` to `backend` (of the config `base` plus this overlay).
    pub fn add(
        &mut self,
        base: &Config,
        backend: &str,
        server: Server,
    ) -> Result<(), OverlayError> {
        let effective = self.apply(base);
        let b = effective
            .backend(backend)
            .ok_or_else(|| OverlayError::NoBackend(backend.to_owned()))?;
        if b.servers.iter().any(|s| s.name == server.name) {
            return Err(OverlayError::Exists {
                backend: backend.to_owned(),
                server: server.name,
            });
        }
        // A server added at run time speaks TLS when its backend says so.
        let mut server = server;
        if server.tls.is_none() {
            server.tls = b.tls.as_ref().map(|t| t.for_server(&server.addr_spec));
        }
        // Re-adding a removed file server under its name: the file's entry is shadowed by the
        // new one, so the removal stays recorded and the addition is what serves.
        self.added
            .entry(backend.to_owned())
            .or_default()
            .push(server);
        Ok(())
    }

    /// Removes the server `name` from `backend`; returns the entry removed.
    pub fn remove(
        &mut self,
        base: &Config,
        backend: &str,
        name: &str,
    ) -> Result<Server, OverlayError> {
        let effective = self.apply(base);
        let b = effective
            .backend(backend)
            .ok_or_else(|| OverlayError::NoBackend(backend.to_owned()))?;
        let Some(server) = b.servers.iter().find(|s| s.name == name) else {
            return Err(OverlayError::NoServer {
                backend: backend.to_owned(),
                server: name.to_owned(),
            });
        };
        if b.servers.len() == 1 {
            return Err(OverlayError::LastServer(backend.to_owned()));
        }
        if let Some(added) = self.added.get_mut(backend)
            && let Some(i) = added.iter().position(|s| s.name == name)
        {
            let server = added.remove(i);
            if added.is_empty() {
                self.added.remove(backend);
            }
            return Ok(server);
        }
        self.removed
            .entry(backend.to_owned())
            .or_default()
            .push(server.clone());
        Ok(server.clone())
    }

    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{AdminState, ServerSpec, runtime_server};

    fn config(servers: &str) -> Config {
        let src = format!(
            r#"
            [frontend.web]
            bind = "127.0.0.1:0"
            default_backend = "app"
            [backend.app]
            servers = [ {servers} ]
            "#
        );
        let (config, report) = crate::config::load_str(&src, Path::new("t.toml"));
        config.unwrap_or_else(|| panic!("{}", report.render()))
    }

    fn server(name: &str, port: u16) -> Server {
        runtime_server(ServerSpec {
            name: name.into(),
            addr: format!("127.0.0.1:{port}"),
            weight: 1,
            check: false,
            backup: false,
            maxconn: None,
            state: AdminState::Ready,
        })
        .unwrap()
    }

    fn names(c: &Config) -> Vec<&str> {
        c.backends[0]
            .servers
            .iter()
            .map(|s| s.name.as_str())
            .collect()
    }

    const TWO: &str =
        r#"{ name = "a", addr = "127.0.0.1:1" }, { name = "b", addr = "127.0.0.1:2" }"#;

    #[test]
    fn additions_and_removals_survive_an_unchanged_file() {
        let base = config(TWO);
        let mut o = Overlay::default();
        o.add(&base, "app", server("c", 3)).unwrap();
        o.remove(&base, "app", "a").unwrap();
        assert_eq!(names(&o.apply(&base)), ["b", "c"]);
        let reloaded = config(TWO);
        let o = o.rebased(&reloaded);
        assert_eq!(names(&o.apply(&reloaded)), ["b", "c"]);
    }

    #[test]
    fn the_file_wins_when_it_changes_the_server() {
        let base = config(TWO);
        let mut o = Overlay::default();
        o.add(&base, "app", server("c", 3)).unwrap();
        o.remove(&base, "app", "a").unwrap();
        // The file now defines "c" itself and gives "a" another address.
        let changed = config(
            r#"{ name = "a", addr = "127.0.0.1:9" }, { name = "b", addr = "127.0.0.1:2" },
               { name = "c", addr = "127.0.0.1:7" }"#,
        );
        let o = o.rebased(&changed);
        assert!(o.is_empty());
        let applied = o.apply(&changed);
        assert_eq!(names(&applied), ["a", "b", "c"]);
        assert_eq!(applied.backends[0].servers[2].addr.port(), 7);
    }

    #[test]
    fn refusals() {
        let base = config(r#"{ name = "a", addr = "127.0.0.1:1" }"#);
        let mut o = Overlay::default();
        assert_eq!(
            o.add(&base, "nope", server("x", 3)),
            Err(OverlayError::NoBackend("nope".into()))
        );
        assert!(matches!(
            o.add(&base, "app", server("a", 3)),
            Err(OverlayError::Exists { .. })
        ));
        assert_eq!(
            o.remove(&base, "app", "a"),
            Err(OverlayError::LastServer("app".into()))
        );
        assert!(matches!(
            o.remove(&base, "app", "zz"),
            Err(OverlayError::NoServer { .. })
        ));
        o.add(&base, "app", server("b", 2)).unwrap();
        o.remove(&base, "app", "b").unwrap();
        assert!(o.is_empty(), "removing an added server forgets it");
    }
}
