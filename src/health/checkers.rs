//! [`HealthCheckers`]: the running checker tasks, one per checked server, kept in line with
//! the loaded config.
//!
//! On each config: a server whose check settings are unchanged keeps its checker (and its
//! rise/fall progress); one whose settings changed gets a new checker that resumes from the
//! server's current health; a server no longer checked loses its checker and counts as UP
//! again; a new server gets a checker. Health itself lives in the [`StateTable`], so it
//! survives all of these. Checkers started together have their first checks staggered.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{CheckParams, Config, UpstreamTls};
use crate::health::check::{Checker, CheckerHandle, Spread, spawn_checker};
use crate::health::probe::CheckProbe;
use crate::health::result::{HealthCheck, NativeCheck};
use crate::health::state::{Health, ServerKey, StateTable};

/// What a checker was started with; a different spec restarts it.
#[derive(Debug, Clone, PartialEq)]
struct Spec {
    backend: String,
    server: String,
    params: CheckParams,
    tls: Option<UpstreamTls>,
}

#[derive(Debug)]
struct Running {
    spec: Spec,
    /// Distinguishes successive checkers of the same server.
    id: u64,
    handle: CheckerHandle,
}

/// What a checker's judgement is built from.
#[derive(Debug, Clone, Copy)]
pub struct JudgeSpec<'a> {
    pub backend: &'a str,
    pub server: &'a str,
    pub addr: std::net::SocketAddr,
    pub params: &'a CheckParams,
}

/// Counts of what one [`HealthCheckers::update`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpdateSummary {
    pub started: usize,
    pub restarted: usize,
    pub kept: usize,
    pub stopped: usize,
}

/// The running checkers, by server. Dropping it stops them all.
#[derive(Debug)]
pub struct HealthCheckers {
    running: HashMap<ServerKey, Running>,
    next_id: u64,
    spread: Spread,
}

impl Default for HealthCheckers {
    fn default() -> Self {
        Self::new(Spread::random())
    }
}

impl HealthCheckers {
    /// An empty registry; `spread` seeds each checker's jitter and sets its size.
    pub fn new(spread: Spread) -> Self {
        Self {
            running: HashMap::new(),
            next_id: 0,
            spread,
        }
    }

    /// Starts, keeps, restarts and stops checkers to match `config`, judging with the native
    /// rules. Servers must already be in `states` (build the snapshot first). New tasks run
    /// on the current tokio runtime.
    pub fn update(&mut self, config: &Config, states: &StateTable) -> UpdateSummary {
        self.update_with(config, states, &|spec| {
            Box::new(NativeCheck::for_params(spec.params))
        })
    }

    /// [`HealthCheckers::update`], with `judge` building each new checker's judgement.
    pub fn update_with(
        &mut self,
        config: &Config,
        states: &StateTable,
        judge: &dyn Fn(&JudgeSpec<'_>) -> Box<dyn HealthCheck>,
    ) -> UpdateSummary {
        let mut wanted: HashMap<ServerKey, Spec> = HashMap::new();
        for b in &config.backends {
            for s in b.servers.iter().filter(|s| s.check) {
                let key = ServerKey::of(&b.name, s);
                wanted.entry(key).or_insert_with(|| Spec {
                    backend: b.name.clone(),
                    server: s.name.clone(),
                    params: b.check.clone(),
                    tls: s.tls.clone(),
                });
            }
        }

        let mut summary = UpdateSummary::default();
        let gone: Vec<ServerKey> = self
            .running
            .keys()
            .filter(|k| !wanted.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            if let Some(old) = self.running.remove(&key) {
                drop(old.handle);
                summary.stopped += 1;
                // A server that stays but is no longer checked counts as up, as in HAProxy.
                if let Some(state) = states.get(&key)
                    && state.set_health(Health::Up)
                {
                    tracing::warn!(
                        backend = %old.spec.backend,
                        server = %old.spec.server,
                        addr = %key.addr,
                        check = "checks disabled",
                        state = "UP",
                        "server {}/{} is UP: checks disabled",
                        old.spec.backend,
                        old.spec.server,
                    );
                }
            }
        }

        let mut to_start: Vec<(ServerKey, Spec)> = Vec::new();
        for (key, spec) in wanted {
            match self.running.get(&key) {
                Some(r) if r.spec == spec => summary.kept += 1,
                Some(_) => {
                    summary.restarted += 1;
                    to_start.push((key, spec));
                }
                None => {
                    summary.started += 1;
                    to_start.push((key, spec));
                }
            }
        }
        // Stable order, so that the stagger follows the config's backends and addresses.
        to_start.sort_by(|a, b| (&a.0.backend, a.0.addr).cmp(&(&b.0.backend, b.0.addr)));
        let count = to_start.len();
        for (index, (key, spec)) in to_start.into_iter().enumerate() {
            let Some(state) = states.get(&key) else {
                tracing::debug!(backend = %key.backend, addr = %key.addr, "no state for checked server");
                continue;
            };
            let first = self.spread.first_delay(spec.params.interval, index, count);
            let checker = Checker {
                backend: Arc::from(spec.backend.as_str()),
                server: Arc::from(spec.server.as_str()),
                probe: CheckProbe::build(
                    key.addr,
                    spec.params.timeout,
                    spec.params.http.as_ref(),
                    spec.tls.as_ref(),
                ),
                judge: Arc::from(judge(&JudgeSpec {
                    backend: &spec.backend,
                    server: &spec.server,
                    addr: key.addr,
                    params: &spec.params,
                })),
                params: spec.params.clone(),
                state,
                spread: Spread::new(self.spread.next_u64(), self.spread.percent()),
            };
            let handle = spawn_checker(checker, first);
            self.next_id += 1;
            // Replacing an old entry drops (stops) its checker.
            self.running.insert(
                key,
                Running {
                    spec,
                    id: self.next_id,
                    handle,
                },
            );
        }
        summary
    }

    /// Number of running checkers.
    pub fn len(&self) -> usize {
        self.running.len()
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// An id of the checker running for `key`; it changes when the checker is restarted.
    pub fn checker_id(&self, key: &ServerKey) -> Option<u64> {
        self.running.get(key).map(|r| r.id)
    }

    /// Stops every checker and waits (at most `limit`) for their tasks to end.
    pub async fn shutdown(&mut self, limit: Duration) {
        let handles: Vec<CheckerHandle> = self.running.drain().map(|(_, r)| r.handle).collect();
        let all = async {
            for h in handles {
                h.stop().await;
            }
        };
        let _ = tokio::time::timeout(limit, all).await;
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(backend_check: &str, servers: &str) -> Config {
        let src = format!(
            r#"
            [frontend.web]
            bind = "127.0.0.1:0"
            default_backend = "app"
            [backend.app]
            check = {{ {backend_check} }}
            servers = [ {servers} ]
            "#
        );
        let (config, report) = crate::config::load_str(&src, Path::new("test.toml"));
        config.unwrap_or_else(|| panic!("{}", report.render()))
    }

    /// Registers every server of `config` in `states`, as building a snapshot does.
    fn register(config: &Config, states: &StateTable) {
        for b in &config.backends {
            for s in &b.servers {
                let key = ServerKey::of(&b.name, s);
                states.server(key, s);
            }
        }
    }

    /// The key of the server at `port` in these tests' configs (a at 1, b at 2, c at 3, d at 4).
    fn key(port: u16) -> ServerKey {
        let name = ["a", "b", "c", "d"][usize::from(port) - 1];
        ServerKey {
            backend: "app".into(),
            server: name.into(),
            addr: ([127, 0, 0, 1], port).into(),
        }
    }

    const TWO: &str = r#"{ name = "a", addr = "127.0.0.1:1", check = true },
                         { name = "b", addr = "127.0.0.1:2", check = true },
                         { name = "c", addr = "127.0.0.1:3" }"#;

    #[tokio::test(start_paused = true)]
    async fn reloads_keep_restart_start_and_stop_checkers() {
        let states = StateTable::new();
        let mut checkers = HealthCheckers::new(Spread::none());
        let first = config(r#"interval = "1h""#, TWO);
        register(&first, &states);
        let summary = checkers.update(&first, &states);
        assert_eq!(
            (summary.started, checkers.len()),
            (2, 2),
            "only check = true"
        );
        let (a, b) = (checkers.checker_id(&key(1)), checkers.checker_id(&key(2)));
        assert!(checkers.checker_id(&key(3)).is_none());

        let same = checkers.update(&first, &states);
        assert_eq!(same.kept, 2);
        assert_eq!(
            (checkers.checker_id(&key(1)), checkers.checker_id(&key(2))),
            (a, b),
            "unchanged parameters keep their checker"
        );

        states.get(&key(1)).unwrap().set_health(Health::Down);
        let changed = config(r#"interval = "2h""#, TWO);
        register(&changed, &states);
        let summary = checkers.update(&changed, &states);
        assert_eq!(summary.restarted, 2);
        assert_ne!(
            checkers.checker_id(&key(1)),
            a,
            "changed parameters restart"
        );
        assert!(
            !states.get(&key(1)).unwrap().is_up(),
            "a restarted checker keeps the health"
        );

        let fewer = config(
            r#"interval = "2h""#,
            r#"{ name = "a", addr = "127.0.0.1:1" },
               { name = "d", addr = "127.0.0.1:4", check = true }"#,
        );
        register(&fewer, &states);
        let summary = checkers.update(&fewer, &states);
        assert_eq!((summary.stopped, summary.started), (2, 1));
        assert!(checkers.checker_id(&key(1)).is_none());
        assert!(checkers.checker_id(&key(4)).is_some());
        assert!(
            states.get(&key(1)).unwrap().is_up(),
            "a server no longer checked counts as up"
        );

        checkers.shutdown(Duration::from_secs(1)).await;
        assert!(checkers.is_empty());
    }

    /// A server renamed is another server (its own state, as HAProxy's server state follows
    /// its name): its checker stops, and the new one's starts.
    #[tokio::test(start_paused = true)]
    async fn a_renamed_server_is_another_server() {
        let states = StateTable::new();
        let mut checkers = HealthCheckers::new(Spread::none());
        let before = config("", r#"{ name = "a", addr = "127.0.0.1:1", check = true }"#);
        register(&before, &states);
        checkers.update(&before, &states);
        let after = config("", r#"{ name = "z", addr = "127.0.0.1:1", check = true }"#);
        register(&after, &states);
        let summary = checkers.update(&after, &states);
        assert_eq!((summary.stopped, summary.started), (1, 1));
        checkers.shutdown(Duration::from_secs(1)).await;
    }
}
