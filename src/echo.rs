//! The lab's echo server (`wasp echo`): answers every request with its own name and what it
//! received (method, path, query, version, headers, body size), as text, or as JSON when the
//! client asks for `application/json`. The demo and the tests use it as a backend.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What the echo server reports about a request.
#[derive(Debug, Serialize)]
pub struct Echo<'a> {
    pub server: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    /// After the first `?`; `None` (JSON `null`) when the target had none.
    pub query: Option<&'a str>,
    pub version: String,
    /// In arrival order; a JSON object (a repeated header's values joined with `, `).
    #[serde(serialize_with = "headers_as_object")]
    pub headers: Vec<(&'a str, String)>,
    pub body_bytes: u64,
}

fn headers_as_object<S: serde::Serializer>(
    headers: &[(&str, String)],
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut joined: Vec<(&str, String)> = Vec::new();
    for (name, value) in headers {
        match joined.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => {
                v.push_str(", ");
                v.push_str(value);
            }
            None => joined.push((name, value.clone())),
        }
    }
    let mut map = s.serialize_map(Some(joined.len()))?;
    for (name, value) in &joined {
        map.serialize_entry(name, value)?;
    }
    map.end()
}

impl Echo<'_> {
    fn text(&self) -> String {
        let mut out = format!("{}\n{} {}", self.server, self.method, self.path);
        if let Some(query) = self.query {
            out.push('?');
            out.push_str(query);
        }
        out.push(' ');
        out.push_str(&self.version);
        out.push('\n');
        for (name, value) in &self.headers {
            out.push_str(&format!("{name}: {value}\n"));
        }
        out.push_str(&format!("body: {} bytes\n", self.body_bytes));
        out
    }
}

/// Serves the echo answer on `listener` until `stop` is cancelled.
pub async fn serve_echo(name: Arc<str>, listener: TcpListener, stop: CancellationToken) {
    loop {
        let (tcp, _) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(server = &*name, error = %e, "echo: accept failed");
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let name = Arc::clone(&name);
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(Arc::clone(&name), req));
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(tcp), service);
            tokio::select! {
                _ = conn => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

/// Binds `addr` and serves the echo answer there until `stop` is cancelled.
pub async fn run_echo(
    name: &str,
    addr: SocketAddr,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(server = name, listener = %listener.local_addr()?, "echo server listening");
    serve_echo(Arc::from(name), listener, stop).await;
    Ok(())
}

async fn answer(
    name: Arc<str>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, mut body) = req.into_parts();
    let mut body_bytes = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => body_bytes += f.data_ref().map_or(0, |d| d.len() as u64),
            Err(_) => break,
        }
    }
    let echo = Echo {
        server: &name,
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query(),
        version: format!("{:?}", parts.version),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body_bytes,
    };
    let wants_json = parts
        .headers
        .get_all(header::ACCEPT)
        .iter()
        .any(|v| v.to_str().is_ok_and(|s| s.contains("application/json")));
    let (content_type, text) = if wants_json {
        (
            "application/json",
            serde_json::to_string_pretty(&echo).unwrap_or_default() + "\n",
        )
    } else {
        ("text/plain; charset=utf-8", echo.text())
    };
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(&name) {
        resp.headers_mut().insert("x-server", v);
    }
    Ok(resp)
}
