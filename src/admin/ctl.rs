//! `wasp ctl`: the runtime API from the command line, with human tables by default and the
//! API's JSON with `--json`.

use std::path::PathBuf;

use http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::admin::client::{AdminClient, ClientError, Target};

/// Options and command of `wasp ctl`.
#[derive(Debug, clap::Args)]
pub struct CtlArgs {
    /// Admin listener address (host:port).
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "127.0.0.1:8404",
        env = "WASP_ADMIN"
    )]
    pub admin: String,
    /// Admin Unix socket (instead of --admin).
    #[arg(long, value_name = "PATH", env = "WASP_ADMIN_SOCKET")]
    pub unix: Option<PathBuf>,
    /// User for HTTP basic auth ([admin] auth).
    #[arg(long, env = "WASP_ADMIN_USER")]
    pub user: Option<String>,
    /// Password for HTTP basic auth (prefer the environment variable).
    #[arg(long, env = "WASP_ADMIN_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum CtlCommand {
    /// Every server with its status, weight and traffic.
    Servers,
    /// Every backend.
    Backends,
    /// Every frontend.
    Frontends,
    /// Change a server: `set server BACKEND/SERVER state ready|drain|maint` or `... weight N`.
    Set {
        #[command(subcommand)]
        what: SetCommand,
    },
    /// Add a server to a backend: `add server BACKEND NAME ADDR [--weight N] [--backup]`.
    Add {
        #[command(subcommand)]
        what: AddCommand,
    },
    /// Remove a server: `del server BACKEND/SERVER`.
    Del {
        #[command(subcommand)]
        what: DelCommand,
    },
    /// Reload the config file (as SIGHUP; prints the diagnostics when it is rejected), or
    /// hot-load one plugin: `reload plugin NAME`.
    Reload {
        #[command(subcommand)]
        what: Option<ReloadCommand>,
    },
    /// Every live plugin with its version, calls, errors and decision time.
    Plugins,
    /// Whether wasp is serving (healthz).
    Health,
}

#[derive(Debug, clap::Subcommand)]
pub enum SetCommand {
    Server {
        /// BACKEND/SERVER
        target: String,
        /// `state` or `weight`
        #[arg(value_parser = ["state", "weight"])]
        field: String,
        /// ready|drain|maint for state, 0..=256 for weight
        value: String,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum AddCommand {
    Server {
        backend: String,
        name: String,
        /// host:port
        addr: String,
        #[arg(long, default_value_t = 1)]
        weight: u32,
        #[arg(long)]
        backup: bool,
        /// Run active health checks (the backend's check settings).
        #[arg(long)]
        check: bool,
        #[arg(long)]
        maxconn: Option<u32>,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum ReloadCommand {
    /// Hot-load a plugin from its file.
    Plugin { name: String },
}

#[derive(Debug, clap::Subcommand)]
pub enum DelCommand {
    Server {
        /// BACKEND/SERVER
        target: String,
    },
}

/// Why `wasp ctl` failed.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The API answered with an error (its message, and diagnostics for a reload).
    #[error("{0}")]
    Api(String),
    #[error("{0}")]
    Usage(String),
}

/// Runs one `wasp ctl` command; returns what to print on stdout.
pub async fn run(args: &CtlArgs) -> Result<String, CtlError> {
    let target = match &args.unix {
        Some(p) => Target::Unix(p.clone()),
        None => Target::Tcp(args.admin.clone()),
    };
    let mut client = AdminClient::new(target);
    if let Some(user) = &args.user {
        client = client.with_auth(user, args.password.as_deref().unwrap_or(""));
    }
    let (method, path, body) = request(&args.command)?;
    let (status, bytes) = client.call(method, &path, body.as_ref()).await?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    if matches!(args.command, CtlCommand::Health) {
        return if status.is_success() {
            Ok(text)
        } else {
            Err(CtlError::Api(text.trim_end().to_owned()))
        };
    }
    let value: Value = serde_json::from_str(&text)
        .map_err(|_| CtlError::Api(format!("{status}: {}", text.trim_end())))?;
    if !status.is_success() {
        return Err(CtlError::Api(api_error(status, &value)));
    }
    if args.json {
        return Ok(text);
    }
    Ok(match &args.command {
        CtlCommand::Servers => servers_table(&value),
        CtlCommand::Backends => backends_table(&value),
        CtlCommand::Frontends => frontends_table(&value),
        CtlCommand::Set { .. } | CtlCommand::Add { .. } => {
            servers_table(&Value::Array(vec![value]))
        }
        CtlCommand::Del {
            what: DelCommand::Server { target },
        } => format!("removed {target}\n"),
        CtlCommand::Reload { what: None } => "reloaded\n".to_owned(),
        CtlCommand::Reload {
            what: Some(ReloadCommand::Plugin { name }),
        } => format!(
            "plugin {name}: {} (version {})\n",
            n(&value["status"]),
            n(&value["version"])
        ),
        CtlCommand::Plugins => plugins_table(&value),
        CtlCommand::Health => text,
    })
}

fn split_target(target: &str) -> Result<(&str, &str), CtlError> {
    target
        .split_once('/')
        .filter(|(b, s)| !b.is_empty() && !s.is_empty() && !s.contains('/'))
        .ok_or_else(|| CtlError::Usage(format!("expected BACKEND/SERVER, got \"{target}\"")))
}

fn request(command: &CtlCommand) -> Result<(Method, String, Option<Value>), CtlError> {
    Ok(match command {
        CtlCommand::Servers => (Method::GET, "/api/servers".into(), None),
        CtlCommand::Backends => (Method::GET, "/api/backends".into(), None),
        CtlCommand::Frontends => (Method::GET, "/api/frontends".into(), None),
        CtlCommand::Reload { what: None } => (Method::POST, "/api/reload".into(), None),
        CtlCommand::Reload {
            what: Some(ReloadCommand::Plugin { name }),
        } => (Method::POST, format!("/api/plugins/{name}/reload"), None),
        CtlCommand::Plugins => (Method::GET, "/api/plugins".into(), None),
        CtlCommand::Health => (Method::GET, "/healthz".into(), None),
        CtlCommand::Set {
            what:
                SetCommand::Server {
                    target,
                    field,
                    value,
                },
        } => {
            let (b, s) = split_target(target)?;
            let body = if field == "weight" {
                let w: u32 = value.parse().map_err(|_| {
                    CtlError::Usage(format!("weight must be a number, got \"{value}\""))
                })?;
                json!({ "weight": w })
            } else {
                json!({ "state": value })
            };
            (Method::PATCH, format!("/api/servers/{b}/{s}"), Some(body))
        }
        CtlCommand::Add {
            what:
                AddCommand::Server {
                    backend,
                    name,
                    addr,
                    weight,
                    backup,
                    check,
                    maxconn,
                },
        } => (
            Method::POST,
            format!("/api/servers/{backend}"),
            Some(json!({
                "name": name, "addr": addr, "weight": weight, "backup": backup,
                "check": check, "maxconn": maxconn,
            })),
        ),
        CtlCommand::Del {
            what: DelCommand::Server { target },
        } => {
            let (b, s) = split_target(target)?;
            (Method::DELETE, format!("/api/servers/{b}/{s}"), None)
        }
    })
}

fn api_error(status: StatusCode, value: &Value) -> String {
    let mut out = value["error"]
        .as_str()
        .map_or_else(|| status.to_string(), ToOwned::to_owned);
    if let Some(diags) = value["diagnostics"].as_array() {
        for d in diags {
            if let Some(t) = d["text"].as_str() {
                out.push('\n');
                out.push_str(t);
            }
        }
    }
    out
}

/// Left-aligned columns, two spaces apart.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                l.push_str("  ");
            }
            l.push_str(cell);
            let pad = widths[i].saturating_sub(cell.chars().count());
            l.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

fn n(v: &Value) -> String {
    match v {
        Value::Number(x) => {
            if let Some(f) = x.as_f64().filter(|_| x.is_f64()) {
                format!("{f:.1}")
            } else {
                x.to_string()
            }
        }
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn servers_table(value: &Value) -> String {
    let empty = Vec::new();
    let rows: Vec<Vec<String>> = value
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|s| {
            let check = match s["last_check"]["result"].as_str() {
                Some(r) => r.to_owned(),
                None if s["checked"] == Value::Bool(true) => "pending".into(),
                None => "-".into(),
            };
            vec![
                format!("{}/{}", n(&s["backend"]), n(&s["name"])),
                n(&s["addr"]),
                n(&s["status"]),
                n(&s["weight"]),
                n(&s["sessions"]["current"]),
                n(&s["sessions"]["total"]),
                n(&s["rate"]),
                n(&s["traffic"]["responses"]["2xx"]),
                n(&s["traffic"]["responses"]["5xx"]),
                n(&s["traffic"]["errors"]),
                check,
                format!("{}s", n(&s["last_change_seconds"])),
            ]
        })
        .collect();
    table(
        &[
            "SERVER",
            "ADDR",
            "STATUS",
            "WEIGHT",
            "CUR",
            "TOTAL",
            "RATE",
            "2XX",
            "5XX",
            "ERRORS",
            "LAST CHECK",
            "CHANGED",
        ],
        &rows,
    )
}

fn backends_table(value: &Value) -> String {
    let empty = Vec::new();
    let rows: Vec<Vec<String>> = value
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|b| {
            let total = b["servers"].as_array().map_or(0, Vec::len);
            vec![
                n(&b["name"]),
                n(&b["status"]),
                n(&b["balance"]),
                format!("{}/{total}", n(&b["servers_up"])),
                n(&b["sessions"]["current"]),
                n(&b["queued"]),
                n(&b["traffic"]["requests"]),
                n(&b["rate"]),
                n(&b["traffic"]["responses"]["5xx"]),
                n(&b["traffic"]["retries"]),
                n(&b["traffic"]["errors"]),
            ]
        })
        .collect();
    table(
        &[
            "BACKEND", "STATUS", "BALANCE", "UP", "CUR", "QUEUE", "REQUESTS", "RATE", "5XX",
            "RETRIES", "ERRORS",
        ],
        &rows,
    )
}

fn frontends_table(value: &Value) -> String {
    let empty = Vec::new();
    let rows: Vec<Vec<String>> = value
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|f| {
            let binds = f["binds"]
                .as_array()
                .map(|a| a.iter().map(n).collect::<Vec<_>>().join(","))
                .unwrap_or_default();
            vec![
                n(&f["name"]),
                binds,
                n(&f["sessions"]["current"]),
                n(&f["sessions"]["total"]),
                n(&f["traffic"]["requests"]),
                n(&f["rate"]),
                n(&f["traffic"]["errors"]),
            ]
        })
        .collect();
    table(
        &[
            "FRONTEND",
            "BIND",
            "CONN",
            "CONN TOTAL",
            "REQUESTS",
            "RATE",
            "ERRORS",
        ],
        &rows,
    )
}

fn plugins_table(value: &Value) -> String {
    let empty = Vec::new();
    let rows: Vec<Vec<String>> = value
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|p| {
            let roles = p["roles"]
                .as_array()
                .map(|a| a.iter().map(n).collect::<Vec<_>>().join(","))
                .unwrap_or_default();
            vec![
                n(&p["name"]),
                n(&p["version"]),
                n(&p["hash"]),
                roles,
                n(&p["calls"]),
                n(&p["avg_decision_us"]),
                n(&p["errors"]),
                n(&p["timeouts"]),
                n(&p["traps"]),
                n(&p["rejected_loads"]),
            ]
        })
        .collect();
    table(
        &[
            "PLUGIN", "VERSION", "HASH", "ROLES", "CALLS", "AVG US", "ERRORS", "TIMEOUTS", "TRAPS",
            "REJECTED",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let t = table(
            &["A", "LONGER"],
            &[
                vec!["xyz".into(), "1".into()],
                vec!["q".into(), "22".into()],
            ],
        );
        assert_eq!(t, "A    LONGER\nxyz  1\nq    22\n");
    }

    #[test]
    fn targets_need_a_slash() {
        assert!(split_target("items/s1").is_ok());
        assert!(split_target("items").is_err());
        assert!(split_target("/s1").is_err());
    }
}
