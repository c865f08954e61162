//! `wasp plugin new`: a new plugin crate that builds with one
//! `cargo build --release --target wasm32-wasip2`, and the config lines that load it.

use std::path::{Path, PathBuf};

use crate::config::PluginRole;

/// Where the SDK is in the wasp source tree this binary was built from.
pub fn default_sdk() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/sdk")
}

/// Why a plugin crate could not be created.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    #[error(
        "invalid plugin name \"{0}\": use lower-case letters, digits, '-' and '_', starting with a letter"
    )]
    Name(String),
    #[error("{0} already exists")]
    Exists(PathBuf),
    #[error(
        "the plugin SDK is not at {0}; pass --sdk PATH (the plugins/sdk folder of wasp's source)"
    )]
    Sdk(PathBuf),
    #[error("cannot write {path}: {error}")]
    Write {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// What was created.
#[derive(Debug, Clone)]
pub struct Scaffolded {
    pub dir: PathBuf,
    /// The component the build produces.
    pub wasm: PathBuf,
    /// What to tell the user: how to build and load it.
    pub instructions: String,
}

/// Creates crate `name` in `parent/name` for `role`, depending on the SDK at `sdk`.
pub fn new_plugin(
    name: &str,
    role: PluginRole,
    parent: &Path,
    sdk: &Path,
) -> Result<Scaffolded, ScaffoldError> {
    let valid = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid {
        return Err(ScaffoldError::Name(name.to_owned()));
    }
    let sdk = std::path::absolute(sdk).unwrap_or_else(|_| sdk.to_path_buf());
    if !sdk.join("Cargo.toml").is_file() {
        return Err(ScaffoldError::Sdk(sdk));
    }
    let parent = std::path::absolute(parent).unwrap_or_else(|_| parent.to_path_buf());
    let dir = parent.join(name);
    if dir.exists() {
        return Err(ScaffoldError::Exists(dir));
    }
    let write = |path: PathBuf, text: String| {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).map_err(|error| ScaffoldError::Write {
                path: d.to_path_buf(),
                error,
            })?;
        }
        std::fs::write(&path, text).map_err(|error| ScaffoldError::Write { path, error })
    };
    write(dir.join("Cargo.toml"), manifest(name, &sdk))?;
    write(dir.join("src/lib.rs"), source(name, role))?;
    write(dir.join(".gitignore"), "/target\n".to_owned())?;
    let wasm = dir
        .join("target/wasm32-wasip2/release")
        .join(format!("{}.wasm", name.replace('-', "_")));
    let instructions = instructions(name, role, &dir, &wasm);
    Ok(Scaffolded {
        dir,
        wasm,
        instructions,
    })
}

fn manifest(name: &str, sdk: &Path) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib", "rlib"]

[dependencies]
wasp-plugin = {{ path = "{sdk}" }}

# Small and fast; function names are kept so that wasp can log a fault's backtrace.
[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
strip = "debuginfo"

# A workspace of its own, so that it builds wherever it is.
[workspace]
"#,
        sdk = sdk.display().to_string().replace('\\', "/")
    )
}

fn source(name: &str, role: PluginRole) -> String {
    match role {
        PluginRole::Router => format!(
            r#"//! {name}: a wasp router plugin.
//!
//! Build: `cargo build --release --target wasm32-wasip2`. See wasp's docs/plugins.md.

use wasp_plugin::{{DirectResponse, Request, RouteDecision, Router}};

struct Plugin;

impl Router for Plugin {{
    fn route(req: Request) -> RouteDecision {{
        // Answer /hello here; let the frontend's own rules (use_backend, default_backend)
        // decide everything else. `RouteDecision::Backend("name".into())` picks a backend.
        if req.path == "/hello" {{
            return RouteDecision::Respond(DirectResponse::text(200, "hello from {name}\n"));
        }}
        RouteDecision::Defer
    }}
}}

wasp_plugin::export_router!(Plugin);

#[cfg(test)]
mod tests {{
    use super::*;

    fn request(path: &str) -> Request {{
        Request {{
            method: "GET".into(),
            scheme: "http".into(),
            host: "example.com".into(),
            path: path.into(),
            query: String::new(),
            headers: Vec::new(),
            client_ip: "127.0.0.1".into(),
            client_port: 40000,
            local_port: 80,
            frontend: "web".into(),
            sni: None,
        }}
    }}

    #[test]
    fn hello_is_answered_and_the_rest_deferred() {{
        assert!(matches!(Plugin::route(request("/hello")), RouteDecision::Respond(_)));
        assert!(matches!(Plugin::route(request("/")), RouteDecision::Defer));
    }}
}}
"#
        ),
        PluginRole::Balancer => format!(
            r#"//! {name}: a wasp balancer plugin.
//!
//! Build: `cargo build --release --target wasm32-wasip2`. See wasp's docs/plugins.md.

use wasp_plugin::{{Balancer, Request, ServerInfo}};

struct Plugin;

impl Balancer for Plugin {{
    /// `servers` are the servers that may take this request (healthy, below their
    /// maxconn, not tried yet); answer an index into it, or `None`.
    fn pick(_backend: String, servers: Vec<ServerInfo>, _req: Request) -> Option<u32> {{
        // Fewest requests in flight per unit of weight.
        let best = servers
            .iter()
            .enumerate()
            .min_by_key(|(_, s)| u64::from(s.active_connections) * 1000 / u64::from(s.weight.max(1)))?;
        u32::try_from(best.0).ok()
    }}
}}

wasp_plugin::export_balancer!(Plugin);
"#
        ),
        PluginRole::Health => format!(
            r#"//! {name}: a wasp health-check plugin (`check.judge = "{name}"`).
//!
//! Build: `cargo build --release --target wasm32-wasip2`. See wasp's docs/plugins.md.

use wasp_plugin::{{CheckOutcome, CheckResult, HealthJudge, Verdict}};

struct Plugin;

impl HealthJudge for Plugin {{
    fn judge(check: CheckResult) -> Verdict {{
        match check.outcome {{
            CheckOutcome::Connected => Verdict::Up,
            CheckOutcome::Response(r) if (200..400).contains(&r.status) => Verdict::Up,
            CheckOutcome::Response(r) => Verdict::Down(format!("status {{}}", r.status)),
            CheckOutcome::Failed(e) => Verdict::Down(e),
        }}
    }}
}}

wasp_plugin::export_health!(Plugin);
"#
        ),
    }
}

fn instructions(name: &str, role: PluginRole, dir: &Path, wasm: &Path) -> String {
    let (use_line, role_name) = match role {
        PluginRole::Router => (
            format!("[frontend.YOUR_FRONTEND]\nrouter = \"{name}\""),
            "router",
        ),
        PluginRole::Balancer => (
            format!("[backend.YOUR_BACKEND]\nbalance = \"{name}\""),
            "balancer",
        ),
        PluginRole::Health => (
            format!(
                "[backend.YOUR_BACKEND]\ncheck = {{ http = \"GET /health\", judge = \"{name}\" }}"
            ),
            "health",
        ),
    };
    format!(
        "created {role_name} plugin {name} in {dir}\n\
         \n\
         build it:\n\
         \x20 cd {dir} && cargo build --release --target wasm32-wasip2\n\
         \n\
         load it (in your wasp config):\n\
         \n\
         [plugin.{name}]\n\
         path = \"{wasm}\"\n\
         config = {{}}\n\
         \n\
         {use_line}\n",
        dir = dir.display(),
        wasm = wasm.display(),
    )
}
