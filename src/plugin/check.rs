//! `wasp check`'s plugin diagnostics: every plugin file is loaded as the proxy would load
//! it (compiled, linked, instantiated once), and each use is checked against its exports.

use crate::config::{Diagnostic, Place, Plugin, PluginRole, Severity};
use crate::plugin::instance::{Compiled, export_name};
use crate::plugin::registry::role_name;

/// One diagnostic per problem, at the `path` key of the plugin (a file that cannot be
/// loaded) or at the key that uses it (a missing export).
pub fn check(plugins: &[Plugin]) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for p in plugins {
        let file = p.path.display().to_string();
        let bytes = match std::fs::read(&p.path) {
            Ok(b) => b,
            Err(e) => {
                out.push(error(
                    &p.written.path,
                    format!("cannot read plugin {file}: {}", lowercase(&e.to_string())),
                    Some("build it with `cargo build --release --target wasm32-wasip2`, or fix the path (relative paths start at the config file's folder)".into()),
                ));
                continue;
            }
        };
        let compiled = match Compiled::new(&bytes) {
            Ok(c) => c,
            Err(e) => {
                out.push(error(
                    &p.written.path,
                    format!("plugin {file} {}", load_text(&e)),
                    load_help(&e),
                ));
                continue;
            }
        };
        for (role, place) in &p.written.uses {
            if compiled.exports(*role) {
                continue;
            }
            let has: Vec<&str> = compiled.roles().into_iter().map(export_name).collect();
            let has = if has.is_empty() {
                "it exports no wasp role".to_owned()
            } else {
                format!("it exports {}", has.join(", "))
            };
            out.push(error(
                place,
                format!(
                    "plugin \"{}\" does not export {} ({file})",
                    p.name,
                    export_name(*role)
                ),
                Some(format!(
                    "{has}; a {} plugin implements wasp_plugin::{} and calls wasp_plugin::{}!",
                    role_name(*role),
                    trait_name(*role),
                    macro_name(*role)
                )),
            ));
        }
    }
    out
}

fn load_text(e: &crate::plugin::LoadError) -> String {
    match e {
        crate::plugin::LoadError::NotWasm => "is not a wasm component (no \\0asm header)".into(),
        crate::plugin::LoadError::CoreModule => {
            "is a core wasm module, not a component; build it with `cargo build --release --target wasm32-wasip2`".into()
        }
        other => format!("cannot be loaded: {other}"),
    }
}

/// What to change when a plugin asks for something wasp does not give plugins (docs/plugins.md:
/// no file system, network, environment, clock or randomness).
fn load_help(e: &crate::plugin::LoadError) -> Option<String> {
    let crate::plugin::LoadError::Link(text) = e else {
        return None;
    };
    let help = if text.contains("wasi:random/") {
        "plugins have no randomness: std's HashMap and HashSet seed their hasher from it; use \
         BTreeMap, or a HashMap with a fixed hasher"
    } else if text.contains("wasi:clocks/") {
        "plugins have no clock (Instant, SystemTime, sleep); wasp_plugin::now_ns() is a \
         monotonic clock"
    } else if text.contains("wasi:") {
        "plugins have no file system, network or environment; what a plugin needs comes in its \
         request and its config table"
    } else {
        return None;
    };
    Some(help.to_owned())
}

fn trait_name(role: PluginRole) -> &'static str {
    match role {
        PluginRole::Router => "Router",
        PluginRole::Balancer => "Balancer",
        PluginRole::Health => "HealthJudge",
    }
}

fn macro_name(role: PluginRole) -> &'static str {
    match role {
        PluginRole::Router => "export_router",
        PluginRole::Balancer => "export_balancer",
        PluginRole::Health => "export_health",
    }
}

fn error(place: &Place, message: String, help: Option<String>) -> Diagnostic {
    Diagnostic {
        severity: Severity::Error,
        line: place.line,
        col: place.col,
        path: place.key.clone(),
        message,
        help,
    }
}

fn lowercase(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}
