//! `[admin]`: the listener of the stats page, metrics and runtime API.
//!
//! The admin listener can change servers and reload the config, so it is loopback-only unless
//! protected: a TCP `bind` outside loopback needs `auth` (HTTP basic); a Unix socket (`unix`)
//! is protected by its file `mode` instead.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::addr::resolve_server;
use crate::config::diag::Sink;
use crate::config::model::{
    Admin, AdminAuth, AdminState, AdminUnix, DEFAULT_ADMIN_REFRESH, MAX_WEIGHT, Server,
};
use crate::config::values::{At, bind_one};
use crate::config::walk::Table;

/// File mode of the Unix socket when `mode` is not given: owner only.
pub(crate) const DEFAULT_SOCKET_MODE: u32 = 0o600;

#[derive(Debug, Default)]
pub(crate) struct RawAdmin {
    pub(crate) bind: Option<At<SocketAddr>>,
    unix: Option<PathBuf>,
    mode: Option<u32>,
    auth: Option<AdminAuth>,
    refresh: Option<Duration>,
}

impl RawAdmin {
    pub(crate) fn build(self) -> Admin {
        Admin {
            bind: self.bind.map(|b| b.value),
            unix: self.unix.map(|path| AdminUnix {
                path,
                mode: self.mode.unwrap_or(DEFAULT_SOCKET_MODE),
            }),
            auth: self.auth,
            refresh: self.refresh.unwrap_or(DEFAULT_ADMIN_REFRESH),
        }
    }
}

pub(crate) fn walk(mut t: Table<'_, '_>, sink: &mut Sink<'_>) -> RawAdmin {
    let bind_item = t.take("bind");
    let unix_item = t.take("unix");
    if bind_item.is_none() && unix_item.is_none() {
        sink.error(t.start(), t.path(), "missing required key \"bind\"")
            .help("add bind = \"127.0.0.1:8404\" (or unix = \"/run/wasp.sock\")");
    }
    let bind = bind_item.and_then(|i| bind_one(&i, sink));
    let unix = unix_item.and_then(|i| {
        let s = i.str(sink)?;
        if s.value.is_empty() {
            sink.error(s.start, &i.path, "empty socket path");
            return None;
        }
        Some(PathBuf::from(s.value))
    });
    let mode = t.take("mode").and_then(|i| {
        let s = i.str(sink)?;
        let parsed =
            (3..=4).contains(&s.value.len()) && s.value.bytes().all(|b| (b'0'..=b'7').contains(&b));
        match u32::from_str_radix(s.value, 8) {
            Ok(m) if parsed && m <= 0o777 => {
                if unix.is_none() {
                    sink.error(i.key_at, &i.path, "mode needs a Unix socket")
                        .help("add unix = \"/run/wasp.sock\", or remove mode");
                }
                Some(m)
            }
            _ => {
                sink.error(
                    s.start,
                    &i.path,
                    format!("invalid file mode \"{}\"", s.value),
                )
                .help("write octal permissions as a string, e.g. \"660\"");
                None
            }
        }
    });
    let auth = t.take("auth").and_then(|i| {
        let mut a = i.table(sink)?;
        let mut field = |key: &'static str, a: &mut Table<'_, '_>| {
            let item = a.require(sink, key)?;
            let s = item.str(sink)?;
            if s.value.is_empty() {
                sink.error(s.start, &item.path, format!("empty {key}"));
                return None;
            }
            if key == "user" && s.value.contains(':') {
                sink.error(s.start, &item.path, "user must not contain ':'")
                    .help("HTTP basic authentication separates user and password with ':'");
                return None;
            }
            Some(s.value.to_owned())
        };
        let user = field("user", &mut a);
        let password = field("password", &mut a);
        a.finish(sink);
        Some(AdminAuth {
            user: user?,
            password: password?,
        })
    });
    let refresh = t.take_duration(sink, "refresh");
    if let Some(b) = &bind
        && !b.value.ip().is_loopback()
        && auth.is_none()
    {
        sink.error(
            b.at,
            &b.path,
            format!(
                "admin listener on {} is reachable from other hosts without auth",
                b.value
            ),
        )
        .help(
            "add auth = { user = \"...\", password = \"...\" }, bind to 127.0.0.1, or serve the \
             admin API on a Unix socket: unix = \"/run/wasp.sock\", mode = \"660\"",
        );
    }
    t.finish(sink);
    RawAdmin {
        bind,
        unix,
        mode,
        auth,
        refresh,
    }
}

/// A server entry given at run time (the runtime API's "add server"), checked by the rules the
/// file's entries follow. Resolves `addr` (blocking: call it from `spawn_blocking`).
pub fn runtime_server(spec: ServerSpec) -> Result<Server, String> {
    let valid_name = !spec.name.is_empty()
        && spec
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if !valid_name {
        return Err(format!(
            "invalid server name \"{}\": names may contain letters, digits, '-', '_', '.' and ':'",
            spec.name
        ));
    }
    if spec.weight > MAX_WEIGHT {
        return Err(format!(
            "weight {} is out of range: expected 0..={MAX_WEIGHT}",
            spec.weight
        ));
    }
    if spec.maxconn == Some(0) {
        return Err("maxconn must be at least 1".to_owned());
    }
    let addr = resolve_server(&spec.addr).map_err(|e| match e.help() {
        Some(help) => format!("{e}; {help}"),
        None => e.to_string(),
    })?;
    Ok(Server {
        name: spec.name,
        addr_spec: spec.addr,
        addr,
        weight: spec.weight,
        check: spec.check,
        backup: spec.backup,
        maxconn: spec.maxconn,
        state: spec.state,
        send_proxy: None,
        // Set from the backend when the server is added to one.
        tls: None,
    })
}

/// What the runtime API's "add server" asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    pub name: String,
    pub addr: String,
    pub weight: u32,
    pub check: bool,
    pub backup: bool,
    pub maxconn: Option<u32>,
    pub state: AdminState,
}
