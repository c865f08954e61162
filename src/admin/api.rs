//! Routes of the admin listener.
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/` | the stats page (HTML) |
//! | GET | `/stats.json` | the same data as JSON |
//! | GET | `/metrics` | Prometheus text exposition format |
//! | GET | `/healthz` | 200 while serving, 503 once draining (no auth) |
//! | GET | `/api/frontends`, `/api/backends`, `/api/servers` | lists with state and counters |
//! | GET | `/api/servers/B/S` | one server |
//! | PATCH/POST | `/api/servers/B/S` | `{"state": "ready"\|"drain"\|"maint", "weight": N}` |
//! | POST | `/api/servers/B` | add a server: `{"name", "addr", "weight", "backup", "check", "maxconn", "state"}` |
//! | DELETE | `/api/servers/B/S` | remove a server |
//! | POST | `/api/reload` | reload the config file, as SIGHUP (422 with diagnostics when rejected) |
//! | GET | `/api/plugins` | live plugins: version, hash, roles, calls, errors, decision time |
//! | POST | `/api/plugins/NAME/reload` | hot-load NAME from its file (422 when the file is rejected) |
//!
//! Answers are JSON; errors are `{"error": "..."}` (plus `diagnostics` for a rejected reload).

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};

use crate::admin::server::Context;
use crate::admin::view::{admin_name, all_servers, server_view};
use crate::admin::{ControlError, auth, html, metrics};
use crate::config::{AdminState, MAX_WEIGHT, ServerSpec};
use crate::plugin::Reloaded;

/// Largest request body the API reads.
const MAX_BODY: usize = 64 * 1024;

type Answer = Response<Full<Bytes>>;

/// Serves one admin request. `tcp`: it came over TCP (auth applies), not the Unix socket.
pub(crate) async fn handle(ctx: &Context, req: Request<Incoming>, tcp: bool) -> Answer {
    let settings = ctx.settings.load_full();
    let path = req.uri().path().to_owned();
    if path == "/healthz" {
        return healthz(ctx);
    }
    if tcp
        && let Some(a) = &settings.auth
        && !auth::authorized(a, req.headers())
    {
        let mut resp = error(StatusCode::UNAUTHORIZED, "authentication required");
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"wasp admin\""),
        );
        return resp;
    }
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = req.method().clone();
    match (&method, segments.as_slice()) {
        (&Method::GET, [""]) => with_view(ctx, |view| {
            let page = html::render(view, settings.refresh);
            let mut resp = Response::new(Full::new(Bytes::from(page)));
            set_type(&mut resp, "text/html; charset=utf-8");
            resp
        }),
        (&Method::GET, ["stats.json"]) => with_view(ctx, |view| json(StatusCode::OK, view)),
        (&Method::GET, ["metrics"]) => with_view(ctx, |view| match metrics::encode(view) {
            Ok(text) => {
                let mut resp = Response::new(Full::new(Bytes::from(text)));
                set_type(&mut resp, metrics::CONTENT_TYPE);
                resp
            }
            Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics"),
        }),
        (&Method::GET, ["api", "frontends"]) => {
            with_view(ctx, |view| json(StatusCode::OK, &view.frontends))
        }
        (&Method::GET, ["api", "backends"]) => {
            with_view(ctx, |view| json(StatusCode::OK, &view.backends))
        }
        (&Method::GET, ["api", "servers"]) => {
            with_view(ctx, |view| json(StatusCode::OK, &all_servers(view)))
        }
        (&Method::GET, ["api", "servers", b, s]) => one_server(ctx, b, s),
        (&Method::PATCH | &Method::POST | &Method::PUT, ["api", "servers", b, s]) => {
            let (b, s) = (b.to_string(), s.to_string());
            match read_json::<SetServer>(req).await {
                Ok(change) => set_server(ctx, &b, &s, change),
                Err(resp) => *resp,
            }
        }
        (&Method::POST, ["api", "servers", b]) => {
            let b = b.to_string();
            match read_json::<AddServer>(req).await {
                Ok(add) => add_server(ctx, b, add).await,
                Err(resp) => *resp,
            }
        }
        (&Method::DELETE, ["api", "servers", b, s]) => {
            let Some(control) = ctx.control.upgrade() else {
                return stopping();
            };
            match control.remove_server(b.to_string(), s.to_string()).await {
                Ok(()) => {
                    tracing::warn!(
                        backend = b,
                        server = s,
                        "server {b}/{s} removed by the admin API"
                    );
                    json(StatusCode::OK, &Status { status: "removed" })
                }
                Err(e) => control_error(e),
            }
        }
        (&Method::POST, ["api", "reload"]) => {
            let Some(control) = ctx.control.upgrade() else {
                return stopping();
            };
            tracing::info!("admin API: reloading");
            // A rejected reload is logged where it is rejected.
            match control.reload().await {
                Ok(()) => json(StatusCode::OK, &Status { status: "reloaded" }),
                Err(e) => control_error(e),
            }
        }
        (&Method::GET, ["api", "plugins"]) => {
            with_view(ctx, |view| json(StatusCode::OK, &view.plugins))
        }
        (&Method::POST, ["api", "plugins", name, "reload"]) => {
            let Some(control) = ctx.control.upgrade() else {
                return stopping();
            };
            let name = name.to_string();
            tracing::info!(plugin = name, "admin API: reloading plugin {name}");
            match control.reload_plugin(name.clone()).await {
                Ok(reloaded) => {
                    let (status, version) = match reloaded {
                        Reloaded::Unchanged { version } => ("unchanged", version),
                        Reloaded::Swapped { version } => ("reloaded", version),
                    };
                    json(StatusCode::OK, &PluginReload { status, version })
                }
                Err(e) => control_error(e),
            }
        }
        (
            _,
            [""]
            | ["stats.json" | "metrics"]
            | [
                "api",
                "frontends" | "backends" | "servers" | "reload" | "plugins",
            ],
        )
        | (_, ["api", "servers", _] | ["api", "servers", _, _] | ["api", "plugins", _, "reload"]) => {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => error(StatusCode::NOT_FOUND, "no such page"),
    }
}

/// The answer to a plugin reload.
#[derive(Debug, Serialize)]
struct PluginReload {
    /// `reloaded` (a new version is live) or `unchanged` (the file had not changed).
    status: &'static str,
    /// The live version after the reload.
    version: u64,
}

fn healthz(ctx: &Context) -> Answer {
    let serving = ctx.control.upgrade().is_some_and(|c| !c.draining());
    let (status, text) = if serving {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    };
    let mut resp = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *resp.status_mut() = status;
    set_type(&mut resp, "text/plain");
    resp
}

fn with_view(ctx: &Context, f: impl FnOnce(&crate::admin::view::StatsView) -> Answer) -> Answer {
    match ctx.view() {
        Some((_, view)) => f(&view),
        None => stopping(),
    }
}

fn one_server(ctx: &Context, backend: &str, server: &str) -> Answer {
    let Some(control) = ctx.control.upgrade() else {
        return stopping();
    };
    let snapshot = control.snapshot();
    let rates = ctx
        .rates
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match server_view(&snapshot, &rates, backend, server) {
        Some(v) => json(StatusCode::OK, &v),
        None => no_server(backend, server),
    }
}

/// `PATCH /api/servers/B/S`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetServer {
    state: Option<String>,
    weight: Option<u32>,
}

/// `POST /api/servers/B`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddServer {
    name: String,
    addr: String,
    #[serde(default = "one")]
    weight: u32,
    #[serde(default)]
    backup: bool,
    #[serde(default)]
    check: bool,
    maxconn: Option<u32>,
    state: Option<String>,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Serialize)]
struct Status {
    status: &'static str,
}

#[derive(Debug, Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    diagnostics: Option<&'a [crate::admin::DiagnosticView]>,
}

fn parse_state(s: &str) -> Result<AdminState, String> {
    match s {
        "ready" => Ok(AdminState::Ready),
        "drain" => Ok(AdminState::Drain),
        "maint" => Ok(AdminState::Maint),
        _ => Err(format!(
            "unknown state \"{s}\": expected ready, drain or maint"
        )),
    }
}

fn set_server(ctx: &Context, backend: &str, server: &str, change: SetServer) -> Answer {
    let Some(control) = ctx.control.upgrade() else {
        return stopping();
    };
    // An unknown server is a 404 whatever the body says.
    let snapshot = control.snapshot();
    let Some((_, s)) = crate::admin::view::find_server(&snapshot, backend, server) else {
        return no_server(backend, server);
    };
    let state = match change.state.as_deref().map(parse_state).transpose() {
        Ok(s) => s,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    if let Some(w) = change.weight
        && w > MAX_WEIGHT
    {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("weight {w} is out of range: expected 0..={MAX_WEIGHT}"),
        );
    }
    if state.is_none() && change.weight.is_none() {
        return error(
            StatusCode::BAD_REQUEST,
            "nothing to change: give state and/or weight",
        );
    }
    if let Some(state) = state
        && s.state.set_admin(state)
    {
        tracing::warn!(
            backend,
            server,
            state = admin_name(state),
            "server {backend}/{server} set to {} by the admin API",
            admin_name(state)
        );
    }
    if let Some(w) = change.weight {
        s.state.set_weight(w);
        tracing::info!(
            backend,
            server,
            weight = w,
            "server {backend}/{server} weight set to {w} by the admin API"
        );
    }
    one_server(ctx, backend, server)
}

async fn add_server(ctx: &Context, backend: String, add: AddServer) -> Answer {
    let Some(control) = ctx.control.upgrade() else {
        return stopping();
    };
    let state = match add.state.as_deref().map(parse_state).transpose() {
        Ok(s) => s.unwrap_or_default(),
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    let name = add.name.clone();
    let spec = ServerSpec {
        name: add.name,
        addr: add.addr,
        weight: add.weight,
        check: add.check,
        backup: add.backup,
        maxconn: add.maxconn,
        state,
    };
    match control.add_server(backend.clone(), spec).await {
        Ok(()) => {
            tracing::warn!(backend = %backend, server = %name, "server {backend}/{name} added by the admin API");
            let mut resp = one_server(ctx, &backend, &name);
            if resp.status() == StatusCode::OK {
                *resp.status_mut() = StatusCode::CREATED;
            }
            resp
        }
        Err(e) => control_error(e),
    }
}

/// The request's JSON body, or the answer refusing it.
async fn read_json<T: serde::de::DeserializeOwned>(
    req: Request<Incoming>,
) -> Result<T, Box<Answer>> {
    let body = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|_| {
            Box::new(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body too large or broken",
            ))
        })?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            &format!("invalid JSON body: {e}"),
        ))
    })
}

fn control_error(e: ControlError) -> Answer {
    let status = match &e {
        ControlError::Rejected { .. } | ControlError::Failed(_) => StatusCode::UNPROCESSABLE_ENTITY,
        ControlError::NotFound(_) => StatusCode::NOT_FOUND,
        ControlError::Conflict(_) => StatusCode::CONFLICT,
        ControlError::Invalid(_) => StatusCode::BAD_REQUEST,
        ControlError::Stopping => StatusCode::SERVICE_UNAVAILABLE,
    };
    let message = e.to_string();
    let diagnostics = match &e {
        ControlError::Rejected { diagnostics, .. } => Some(diagnostics.as_slice()),
        _ => None,
    };
    json(
        status,
        &ErrorBody {
            error: &message,
            diagnostics,
        },
    )
}

fn no_server(backend: &str, server: &str) -> Answer {
    error(
        StatusCode::NOT_FOUND,
        &format!("no server {backend}/{server}"),
    )
}

fn stopping() -> Answer {
    error(StatusCode::SERVICE_UNAVAILABLE, "wasp is stopping")
}

fn error(status: StatusCode, message: &str) -> Answer {
    json(
        status,
        &ErrorBody {
            error: message,
            diagnostics: None,
        },
    )
}

fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Answer {
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_else(|_| b"{}".to_vec());
    body.push(b'\n');
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    set_type(&mut resp, "application/json");
    resp
}

fn set_type(resp: &mut Answer, content_type: &'static str) {
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}
