//! Cross-section checks (backend references, listeners shared between sections, unused
//! backends) and the final step: `[defaults]` applied, a [`Config`] built when nothing is wrong.

use std::path::Path;

use crate::config::addr;
use crate::config::admin::RawAdmin;
use crate::config::backend::RawBackend;
use crate::config::diag::{Sink, did_you_mean, quoted_list};
use crate::config::frontend::RawFrontend;
use crate::config::model::{
    Backend, Balance, Bind, Config, DEFAULT_INSPECT_DELAY, DEFAULT_MAX_HEADER_SIZE,
    DEFAULT_RETRIES, Frontend, Mode, NamedAcl, Place, Plugin, PluginPlaces, PluginRole, Timeouts,
    UseBackend,
};
use crate::config::modes;
use crate::config::plugin::RawPlugin;
use crate::config::sections::{Defaults, Raw};
use crate::config::values::{At, PartialTimeouts, unknown_algorithm};

/// Runs the cross-section checks, then builds the config if no error was found at all; else
/// the `[plugin.*]` sections that were read (`wasp check` still loads their files).
pub(crate) fn build(raw: Raw, file: &Path, sink: &mut Sink<'_>) -> Result<Config, Vec<Plugin>> {
    check_backend_refs(&raw, sink);
    check_listeners(&raw, sink);
    modes::check(&raw, sink);
    if raw.frontends.is_empty() && raw.admin.is_none() && !sink.has_errors() {
        // HAProxy's "has no error but will not start (no listener)".
        sink.warning(0, "", "the configuration listens nowhere: no frontend and no [admin]")
            .help("wasp run does not start with it, nor reload to it (a file caught half-written reads as empty)");
    }
    let uses = check_plugin_refs(&raw, sink);
    let plugins = raw
        .plugins
        .into_iter()
        .filter_map(|p| plugin(p, file, &uses, sink))
        .collect();
    if sink.has_errors() {
        return Err(plugins);
    }
    let d = &raw.defaults;
    Ok(Config {
        path: file.to_owned(),
        global: raw.global.clone(),
        admin: raw.admin.map(RawAdmin::build),
        frontends: raw.frontends.into_iter().map(|f| frontend(f, d)).collect(),
        backends: raw.backends.into_iter().map(|b| backend(b, d)).collect(),
        plugins,
    })
}

/// A use of a plugin: by which role, where.
type Use = (String, PluginRole, Place);

/// Every `router`, `balance` and `check.judge` naming a plugin must name a `[plugin.*]`
/// section; each unused section gets a warning. Returns the uses, with their places.
fn check_plugin_refs(raw: &Raw, sink: &mut Sink<'_>) -> Vec<Use> {
    let names: Vec<&str> = raw.plugins.iter().map(|p| p.name.as_str()).collect();
    let mut uses: Vec<Use> = Vec::new();
    let mut record = |sink: &mut Sink<'_>, r: &At<String>, role| {
        let (line, col) = sink.position(r.at);
        let place = Place {
            line,
            col,
            key: r.path.clone(),
        };
        uses.push((r.value.clone(), role, place));
    };
    for f in &raw.frontends {
        let Some(r) = &f.router else { continue };
        if names.contains(&r.value.as_str()) {
            record(sink, r, PluginRole::Router);
        } else {
            unknown_plugin(sink, r, &names);
        }
    }
    let default_balance = raw.defaults.balance.as_ref();
    let balances = raw
        .backends
        .iter()
        .map(|b| b.balance.as_ref().or(default_balance));
    for (b, balance) in raw.backends.iter().zip(balances) {
        if let Some(At {
            value: Balance::Plugin(name),
            at,
            path,
        }) = balance
            && b.balance.is_some()
        {
            let r = At {
                value: name.clone(),
                at: *at,
                path: path.clone(),
            };
            if names.contains(&name.as_str()) {
                record(sink, &r, PluginRole::Balancer);
            } else {
                unknown_algorithm(sink, *at, path, name, &names);
            }
        }
        if let Some(j) = &b.judge {
            if names.contains(&j.value.as_str()) {
                record(sink, j, PluginRole::Health);
            } else {
                unknown_plugin(sink, j, &names);
            }
        }
    }
    if let Some(At {
        value: Balance::Plugin(name),
        at,
        path,
    }) = default_balance
    {
        if names.contains(&name.as_str()) {
            let r = At {
                value: name.clone(),
                at: *at,
                path: path.clone(),
            };
            record(sink, &r, PluginRole::Balancer);
        } else {
            unknown_algorithm(sink, *at, path, name, &names);
        }
    }
    for p in &raw.plugins {
        if !uses.iter().any(|(name, _, _)| *name == p.name) {
            sink.warning(p.at, &p.path, format!("plugin \"{}\" is not used", p.name))
                .help("use it with frontend router = \"NAME\", backend balance = \"NAME\" or check.judge = \"NAME\"");
        }
    }
    uses
}

fn unknown_plugin(sink: &mut Sink<'_>, r: &At<String>, names: &[&str]) {
    let help = match did_you_mean(&r.value, names) {
        Some(m) => format!("did you mean \"{m}\"?"),
        None if names.is_empty() => "no plugins are defined; add [plugin.NAME]".to_owned(),
        None => format!("defined plugins: {}", quoted_list(names)),
    };
    sink.error(r.at, &r.path, format!("unknown plugin \"{}\"", r.value))
        .help(help);
}

fn plugin(p: RawPlugin, file: &Path, uses: &[Use], sink: &mut Sink<'_>) -> Option<Plugin> {
    let written = p.file?;
    let base = file.parent().unwrap_or(Path::new("."));
    let joined = base.join(&written.value);
    let path = std::path::absolute(&joined).unwrap_or(joined);
    let (line, col) = sink.position(written.at);
    Some(Plugin {
        written: PluginPlaces {
            path: Place {
                line,
                col,
                key: written.path,
            },
            uses: uses
                .iter()
                .filter(|(name, _, _)| *name == p.name)
                .map(|(_, role, place)| (*role, place.clone()))
                .collect(),
        },
        name: p.name,
        path,
        config: p.config,
        timeout: p.timeout,
        memory: p.memory,
        on_error: p.on_error,
        recycle_after: p.recycle_after,
        recycle_memory: p.recycle_memory,
    })
}

fn check_backend_refs(raw: &Raw, sink: &mut Sink<'_>) {
    let names: Vec<&str> = raw.backends.iter().map(|b| b.name.as_str()).collect();
    let mut used = vec![false; names.len()];
    for f in &raw.frontends {
        let refs = f
            .default_backend
            .iter()
            .chain(f.rules.iter().filter_map(|r| r.backend.as_ref()));
        for r in refs {
            if let Some(i) = names.iter().position(|n| *n == r.value) {
                used[i] = true;
                continue;
            }
            let help = match did_you_mean(&r.value, &names) {
                Some(m) => format!("did you mean \"{m}\"?"),
                None if names.is_empty() => {
                    "no backends are defined; add [backend.NAME]".to_owned()
                }
                None => format!("defined backends: {}", quoted_list(&names)),
            };
            sink.error(r.at, &r.path, format!("unknown backend \"{}\"", r.value))
                .help(help);
        }
        if let (Some(own), Some(global)) = (&f.maxconn, raw.global.maxconn)
            && own.value as usize > global
        {
            sink.warning(
                own.at,
                &own.path,
                format!(
                    "maxconn {} is above [global] maxconn {global}: the global limit comes first",
                    own.value
                ),
            )
            .help("lower it, or raise [global] maxconn");
        }
        if !f.routes && f.router.is_none() {
            sink.warning(f.at, &f.path, "frontend has no backend").help(
                "every request will get 503; add default_backend = \"NAME\" or use_backend rules",
            );
        }
    }
    // A router plugin may send requests to any backend; a reference that could not be read
    // may name any backend too (its own error is reported).
    let unknown_uses = raw
        .frontends
        .iter()
        .any(|f| f.router.is_some() || f.refs_unread);
    for (b, used) in raw.backends.iter().zip(used) {
        if !used && !unknown_uses {
            sink.warning(
                b.at,
                &b.path,
                format!("backend \"{}\" is not used by any frontend", b.name),
            )
            .help("route to it with default_backend or use_backend, or remove it");
        }
    }
}

/// Two sections must not listen on the same address; reported at the later one in the file.
fn check_listeners(raw: &Raw, sink: &mut Sink<'_>) {
    let mut listeners: Vec<_> = raw
        .frontends
        .iter()
        .flat_map(|f| {
            f.binds
                .iter()
                .map(move |b| (&b.addr, format!("frontend \"{}\"", f.name)))
        })
        .chain(
            raw.admin
                .iter()
                .filter_map(|a| a.bind.as_ref())
                .map(|a| (a, "[admin]".to_owned())),
        )
        .collect();
    listeners.sort_by_key(|(b, _)| b.at);
    for (i, (b, owner)) in listeners.iter().enumerate() {
        let clash = listeners[..i]
            .iter()
            .find(|(prev, prev_owner)| prev_owner != owner && addr::overlaps(prev.value, b.value));
        if let Some((prev, prev_owner)) = clash {
            let message = if prev.value == b.value {
                format!("address {} is already bound by {prev_owner}", b.value)
            } else {
                format!(
                    "address {} overlaps {} bound by {prev_owner}",
                    b.value, prev.value
                )
            };
            sink.error(b.at, &b.path, message)
                .help(format!("first bound at {}", prev.path));
        }
    }
}

/// Built-in defaults <- `[defaults].timeout` <- the section's own `timeout`. `http_keep_alive`
/// falls back to the resolved `http_request` and `queue` to the resolved `connect` when neither
/// table sets them, as in HAProxy.
pub(crate) fn resolve_timeouts(defaults: &PartialTimeouts, own: &PartialTimeouts) -> Timeouts {
    let base = Timeouts::default();
    let pick = |f: fn(&PartialTimeouts) -> Option<std::time::Duration>, fallback| {
        f(own).or(f(defaults)).unwrap_or(fallback)
    };
    let http_request = pick(|t| t.http_request, base.http_request);
    let connect = pick(|t| t.connect, base.connect);
    Timeouts {
        client: pick(|t| t.client, base.client),
        server: pick(|t| t.server, base.server),
        connect,
        http_request,
        http_keep_alive: pick(|t| t.http_keep_alive, http_request),
        queue: pick(|t| t.queue, connect),
        tunnel: own.tunnel.or(defaults.tunnel),
    }
}

fn frontend(f: RawFrontend, d: &Defaults) -> Frontend {
    Frontend {
        name: f.name,
        binds: f
            .binds
            .into_iter()
            .map(|b| Bind {
                addr: b.addr.value,
                tls: b.tls,
                accept_proxy: b.accept_proxy,
            })
            .collect(),
        redirect: f.redirect,
        mode: f.mode.or(d.mode).unwrap_or(Mode::Http),
        acls: f
            .acls
            .into_iter()
            .filter_map(|(name, spec)| Some(NamedAcl { name, spec: spec? }))
            .collect(),
        rules: f
            .rules
            .into_iter()
            .filter_map(|r| {
                Some(UseBackend {
                    backend: r.backend?.value,
                    condition: r.condition?,
                    negate: r.negate,
                })
            })
            .collect(),
        default_backend: f.default_backend.map(|b| b.value),
        timeouts: resolve_timeouts(&d.timeouts, &f.timeouts),
        inspect_delay: f.inspect_delay.unwrap_or(DEFAULT_INSPECT_DELAY),
        forwardfor: f.forwardfor.or(d.forwardfor).unwrap_or(true),
        max_header_size: f
            .max_header_size
            .or(d.max_header_size)
            .unwrap_or(DEFAULT_MAX_HEADER_SIZE),
        router: f.router.map(|r| r.value),
        maxconn: f.maxconn.map(|m| m.value),
    }
}

fn backend(b: RawBackend, d: &Defaults) -> Backend {
    Backend {
        name: b.name,
        mode: b.mode.or(d.mode).unwrap_or(Mode::Http),
        balance: b
            .balance
            .or_else(|| d.balance.clone())
            .map_or(Balance::RoundRobin, |a| a.value),
        servers: b.servers,
        timeouts: resolve_timeouts(&d.timeouts, &b.timeouts),
        retries: b.retries.or(d.retries).unwrap_or(DEFAULT_RETRIES),
        redispatch: b.redispatch.or(d.redispatch).unwrap_or(true),
        maxconn: b.maxconn,
        observe: b.observe,
        error_limit: b
            .error_limit
            .unwrap_or(crate::config::model::DEFAULT_ERROR_LIMIT),
        check: b.check,
        proto: b.proto.unwrap_or_default(),
        tls: b.tls,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::resolve_timeouts;
    use crate::config::model::Timeouts;
    use crate::config::values::PartialTimeouts;

    const fn s(n: u64) -> Option<Duration> {
        Some(Duration::from_secs(n))
    }

    #[test]
    fn timeouts_layer_builtin_defaults_section() {
        let none = PartialTimeouts::default();
        assert_eq!(resolve_timeouts(&none, &none), Timeouts::default());
        let defaults = PartialTimeouts {
            client: s(1),
            connect: s(2),
            ..none
        };
        let own = PartialTimeouts {
            client: s(3),
            server: s(4),
            ..none
        };
        let t = resolve_timeouts(&defaults, &own);
        assert_eq!(t.client, Duration::from_secs(3));
        assert_eq!(t.connect, Duration::from_secs(2));
        assert_eq!(t.server, Duration::from_secs(4));
        assert_eq!(t.http_request, Timeouts::default().http_request);
    }

    #[test]
    fn keep_alive_follows_http_request_unless_set() {
        let none = PartialTimeouts::default();
        let defaults = PartialTimeouts {
            http_request: s(7),
            ..none
        };
        assert_eq!(
            resolve_timeouts(&defaults, &none).http_keep_alive,
            Duration::from_secs(7)
        );
        let own = PartialTimeouts {
            http_request: s(3),
            ..none
        };
        assert_eq!(
            resolve_timeouts(&defaults, &own).http_keep_alive,
            Duration::from_secs(3)
        );
        let defaults = PartialTimeouts {
            http_request: s(7),
            http_keep_alive: s(1),
            ..none
        };
        assert_eq!(
            resolve_timeouts(&defaults, &own).http_keep_alive,
            Duration::from_secs(1)
        );
        let own = PartialTimeouts {
            http_keep_alive: s(9),
            ..none
        };
        assert_eq!(
            resolve_timeouts(&defaults, &own).http_keep_alive,
            Duration::from_secs(9)
        );
    }
}
